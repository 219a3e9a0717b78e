//! Semantic validation of Istio configuration: the rules beyond the CRD
//! schema. A pure layer over `api` and `model`: the admission webhook
//! answers `kubectl apply` with it, status writes its verdict on every
//! object, and later `mesh analyze` reads a whole cluster with it.
//!
//! Each kind implements [`Validate`], which returns [`Finding`]s:
//! - [`Severity::Error`]s are what Istio's own validation rejects (today's
//!   Istio for `networking.istio.io` and `security.istio.io`, Istio 1.4 for
//!   `rbac.istio.io`, Istio 1.1 for `authentication.istio.io`); the
//!   webhook denies the object.
//! - [`Severity::Warning`]s are legal configuration that will not do what
//!   the user probably means (a subset no DestinationRule defines, weights
//!   that do not add up to 100, a binding to a missing role, a second
//!   mesh-wide PeerAuthentication that Istio ignores); the webhook admits
//!   the object and returns them as admission warnings. Checks that need to
//!   know what the cluster holds read a [`Context`]; those that compare an
//!   object with others of its kind by name are [`Validate::validate_named`].
//!
//! Every message says what is wrong and how to fix it, and every finding
//! names the field with the user's YAML names, e.g.
//! `spec.http[0].route[1].weight`; [`render`] makes the one line users see.
//!
//! Host names and durations mean here what they mean to translation: both
//! read them with the model's grammar ([`crate::model::host`],
//! [`crate::model::duration`]), so a warning about a host names the host
//! Envoy would be configured for. Nothing here knows the index: callers
//! build the [`Context`] from the index's state ([`Context::of`]).

mod common;
mod destination_rule;
mod gateway;
pub mod inventory;
mod peer_authentication;
mod policy;
mod rbac;
mod request_authentication;
mod service_entry;
mod sidecar;
#[cfg(test)]
mod tests;
mod virtual_service;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::cluster_rbac_config::ClusterRbacConfigSpec;
use crate::api::destination_rule::DestinationRuleSpec;
use crate::api::gateway::GatewaySpec;
use crate::api::mesh_policy::MeshPolicySpec;
use crate::api::peer_authentication::PeerAuthenticationSpec;
use crate::api::policy::PolicySpec;
use crate::api::rbac_config::RbacConfigSpec;
use crate::api::request_authentication::RequestAuthenticationSpec;
use crate::api::service_entry::ServiceEntrySpec;
use crate::api::service_role::ServiceRoleSpec;
use crate::api::service_role_binding::ServiceRoleBindingSpec;
use crate::api::sidecar::SidecarSpec;
use crate::api::virtual_service::VirtualServiceSpec;
use crate::model::mtls::{MtlsMode, MtlsPolicies};
use crate::model::protocol::Protocol;
use crate::model::rbac::matches_any as rbac_matches;
use crate::model::{ClusterState, ObjectKey, Workload, host};

/// Whether a finding stops the object from being admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Istio rejects this configuration; so does the webhook.
    Error,
    /// Legal, but probably not what the user means; admitted with a warning.
    Warning,
}

/// One problem found in an object's spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    /// The offending field, with YAML names and indexes, e.g.
    /// `spec.http[0].route[1].weight`, or `spec` for the whole spec.
    pub field: String,
    /// The problem and its fix, e.g. `timeout "10" is not a duration: ...`.
    pub message: String,
}

impl Finding {
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Whether any finding is an error, i.e. the object must be rejected.
pub fn has_errors(findings: &[Finding]) -> bool {
    findings.iter().any(Finding::is_error)
}

/// The line users see for a finding, e.g. `VirtualService default/reviews:
/// spec.http[0].route: weights add up to 90, not 100: ...`. A cluster-scoped
/// object (empty namespace) is named without one.
pub fn render(kind: &str, namespace: &str, name: &str, f: &Finding) -> String {
    if namespace.is_empty() {
        format!("{kind} {name}: {f}")
    } else {
        format!("{kind} {namespace}/{name}: {f}")
    }
}

/// What the cluster holds, for the checks that compare an object with the
/// rest of the configuration (all of which give warnings). The caller builds
/// it from the index's state ([`Context::of`]), or part by part.
///
/// Each part is either unknown, and the checks that need it are skipped
/// (`Context::default()` knows nothing), or known, once anything was added
/// to it or [`Context::empty`] declared it known and empty. Start from
/// `Context::empty()` when the index is synced, so that an empty cluster
/// still gets its warnings.
#[derive(Clone, Debug, Default)]
pub struct Context {
    /// Service host names (FQDNs): Kubernetes Services and other known
    /// hosts such as ServiceEntry hosts.
    services: Option<BTreeSet<String>>,
    /// FQDNs of the Services with a TCP port (not HTTP): RBAC rules that
    /// need HTTP are dropped there.
    tcp_services: BTreeSet<String>,
    /// Which mutual TLS the cluster's policies switch on, when known.
    mtls: Option<MtlsPolicies>,
    /// Subsets by DestinationRule host (resolved to an FQDN, may be a
    /// wildcard): (namespace of the rule, subset name).
    subsets: Option<BTreeMap<String, BTreeSet<(String, String)>>>,
    /// ServiceRoles as (namespace, name).
    service_roles: Option<BTreeSet<(String, String)>>,
    /// Istio's root namespace (MeshConfig `rootNamespace`), where a policy
    /// without a selector is mesh-wide.
    root_namespace: Option<String>,
    /// PeerAuthentications without a selector (or with empty matchLabels),
    /// by namespace: (name, creationTimestamp).
    namespace_wide_peer_authentications: Option<BTreeMap<String, Vec<NamespaceWide>>>,
    /// Policies with targets, by namespace: (name, [(Service, [port])]),
    /// a port as `9080` or `name:http`, none for every port.
    targeted_policies: Option<BTreeMap<String, Vec<Targeted>>>,
    /// Names of the Sidecars without a workloadSelector, by namespace.
    namespace_wide_sidecars: Option<BTreeMap<String, BTreeSet<String>>>,
    /// Gateways as (namespace, name); None when unknown (no warning then).
    gateways: Option<BTreeSet<ObjectKey>>,
}

/// A PeerAuthentication without a selector: (name, creationTimestamp).
type NamespaceWide = (String, Option<String>);

/// A Policy with targets: (name, [(Service, [port])]).
type Targeted = (String, Vec<(String, Vec<String>)>);

impl Context {
    /// A context that knows the cluster holds no Services, DestinationRules
    /// or ServiceRoles (yet): add what it does hold.
    pub fn empty() -> Self {
        Context {
            services: Some(BTreeSet::new()),
            tcp_services: BTreeSet::new(),
            mtls: None,
            subsets: Some(BTreeMap::new()),
            service_roles: Some(BTreeSet::new()),
            root_namespace: None,
            namespace_wide_peer_authentications: Some(BTreeMap::new()),
            targeted_policies: Some(BTreeMap::new()),
            namespace_wide_sidecars: Some(BTreeMap::new()),
            gateways: None,
        }
    }

    /// What the cluster holds, known in full: its Services, the subsets of
    /// its DestinationRules and its ServiceRoles. For a synced index.
    pub fn of(state: ClusterState<'_>) -> Self {
        let mut ctx = Context::empty();
        for svc in state.services.values() {
            ctx.add_service(&svc.key.namespace, &svc.key.name);
            let tcp = svc.ports.iter().any(|p| {
                let protocol = Protocol::infer(&p.name, p.app_protocol.as_deref(), &p.protocol);
                protocol.is_captured() && !protocol.is_http()
            });
            if tcp {
                ctx.add_tcp_service(&svc.key.namespace, &svc.key.name);
            }
        }
        // ServiceEntry hosts are services too (the mesh view's, by the same
        // grammar): before the DestinationRules, whose hosts resolve against them.
        for entry in state.service_entries.values() {
            ctx.add_service_entry(&entry.spec);
        }
        for dr in state.destination_rules.values() {
            ctx.add_destination_rule(&dr.key.namespace, &dr.spec);
        }
        for role in state.service_roles.values() {
            ctx.add_service_role(&role.key.namespace, &role.key.name);
        }
        for pa in state.peer_authentications.values() {
            ctx.add_peer_authentication(&pa.key.namespace, &pa.key.name, pa.created.as_deref(), &pa.spec);
        }
        for p in state.policies.values() {
            ctx.add_policy(&p.key.namespace, &p.key.name, &p.spec);
        }
        for s in state.sidecars.values() {
            ctx.add_sidecar(&s.key.namespace, &s.key.name, &s.spec);
        }
        ctx.gateways = Some(BTreeSet::new());
        for g in state.gateways.values() {
            ctx.add_gateway(&g.key.namespace, &g.key.name);
        }
        ctx.set_root_namespace(&state.mesh_config.root_namespace);
        ctx.mtls = Some(MtlsPolicies::build(state));
        ctx
    }

    /// Whether `namespace`'s sidecars take only plaintext, by the policies
    /// for the namespace or the mesh (a workload's own may differ); None
    /// when unknown.
    fn plaintext_namespace(&self, namespace: &str) -> Option<bool> {
        let any_pod = Workload { key: ObjectKey::new(namespace, ""), ..Workload::default() };
        Some(self.mtls.as_ref()?.inbound_mode(&any_pod, 0) == MtlsMode::Disable)
    }

    /// Istio's root namespace, where a policy without a selector is mesh-wide.
    pub fn set_root_namespace(&mut self, namespace: &str) -> &mut Self {
        self.root_namespace = Some(namespace.to_string());
        self
    }

    /// A PeerAuthentication, `name` in `namespace`, created at `created`
    /// (RFC 3339) when known; only those without a selector are kept.
    pub fn add_peer_authentication(
        &mut self,
        namespace: &str,
        name: &str,
        created: Option<&str>,
        spec: &PeerAuthenticationSpec,
    ) -> &mut Self {
        let selects = spec.selector.as_ref().is_some_and(|s| !s.match_labels.is_empty());
        let known = self.namespace_wide_peer_authentications.get_or_insert_with(BTreeMap::new);
        if !selects {
            let entry = known.entry(namespace.to_string()).or_default();
            entry.retain(|(n, _)| n != name);
            entry.push((name.to_string(), created.map(String::from)));
        }
        self
    }

    /// A Gateway, `name` in `namespace`: once one is added, a
    /// VirtualService naming any other is warned about.
    pub fn add_gateway(&mut self, namespace: &str, name: &str) -> &mut Self {
        self.gateways.get_or_insert_with(BTreeSet::new).insert(ObjectKey::new(namespace, name));
        self
    }

    /// The same, not knowing which Gateways exist: nothing is said of them.
    pub fn without_gateways(mut self) -> Self {
        self.gateways = None;
        self
    }

    /// Whether the Gateway exists; None when unknown.
    fn gateway_exists(&self, gateway: &ObjectKey) -> Option<bool> {
        Some(self.gateways.as_ref()?.contains(gateway))
    }

    /// A Sidecar, `name` in `namespace`; only those without a
    /// workloadSelector are kept.
    pub fn add_sidecar(&mut self, namespace: &str, name: &str, spec: &SidecarSpec) -> &mut Self {
        let known = self.namespace_wide_sidecars.get_or_insert_with(BTreeMap::new);
        if spec.workload_selector.is_none() {
            known.entry(namespace.to_string()).or_default().insert(name.to_string());
        }
        self
    }

    /// The names of `namespace`'s Sidecars without a workloadSelector;
    /// `None` when unknown.
    fn namespace_wide_sidecars(&self, namespace: &str) -> Option<Vec<&str>> {
        let known = self.namespace_wide_sidecars.as_ref()?;
        Some(known.get(namespace).map(|n| n.iter().map(String::as_str).collect()).unwrap_or_default())
    }

    /// An Istio 1.1 Policy, `name` in `namespace`; only its targets are kept.
    pub fn add_policy(&mut self, namespace: &str, name: &str, spec: &PolicySpec) -> &mut Self {
        let known = self.targeted_policies.get_or_insert_with(BTreeMap::new);
        if !spec.targets.is_empty() {
            let targets = spec
                .targets
                .iter()
                .map(|t| (t.name.clone(), t.ports.iter().map(policy::port_ref).collect()))
                .collect();
            let entry = known.entry(namespace.to_string()).or_default();
            entry.retain(|(n, _)| n != name);
            entry.push((name.to_string(), targets));
        }
        self
    }

    /// The PeerAuthentications without a selector of `namespace`; `None`
    /// when unknown.
    fn namespace_wide_peer_authentications(&self, namespace: &str) -> Option<&[NamespaceWide]> {
        let known = self.namespace_wide_peer_authentications.as_ref()?;
        Some(known.get(namespace).map(Vec::as_slice).unwrap_or_default())
    }

    /// The Policies with targets of `namespace`; `None` when unknown.
    fn targeted_policies(&self, namespace: &str) -> Option<&[Targeted]> {
        let known = self.targeted_policies.as_ref()?;
        Some(known.get(namespace).map(Vec::as_slice).unwrap_or_default())
    }

    /// A Kubernetes Service, `name` in `namespace`.
    pub fn add_service(&mut self, namespace: &str, name: &str) -> &mut Self {
        let fqdn = host::service_fqdn(name, namespace);
        self.services.get_or_insert_with(BTreeSet::new).insert(fqdn);
        self
    }

    /// A Service with a TCP (not HTTP) port.
    pub fn add_tcp_service(&mut self, namespace: &str, name: &str) -> &mut Self {
        self.tcp_services.insert(host::service_fqdn(name, namespace));
        self
    }

    /// The known services (FQDNs) that `patterns` (RBAC's wildcards) name;
    /// `None` when services are unknown.
    fn services_named(&self, patterns: &[String]) -> Option<Vec<&str>> {
        let services = self.services.as_ref()?;
        Some(services.iter().filter(|s| rbac_matches(s, patterns)).map(String::as_str).collect())
    }

    /// The services with a TCP port among those `patterns` name.
    fn tcp_services_named(&self, patterns: &[String]) -> Vec<&str> {
        self.tcp_services.iter().filter(|s| rbac_matches(s, patterns)).map(String::as_str).collect()
    }

    /// A host the mesh knows other than as a Kubernetes Service, such as a
    /// ServiceEntry host ("www.googleapis.com"); may be a wildcard.
    pub fn add_host(&mut self, host: &str) -> &mut Self {
        self.services.get_or_insert_with(BTreeSet::new).insert(host.to_string());
        self
    }

    /// The hosts of a ServiceEntry, as the mesh view names its services
    /// (lower case, no trailing dot); those with a port that is not HTTP
    /// count as TCP services.
    pub fn add_service_entry(&mut self, spec: &ServiceEntrySpec) -> &mut Self {
        let tcp = spec.ports.iter().any(|p| {
            !p.protocol.as_deref().and_then(Protocol::parse).is_some_and(|protocol| protocol.is_http())
        });
        for raw in &spec.hosts {
            let host = raw.strip_suffix('.').unwrap_or(raw).to_ascii_lowercase();
            if tcp {
                self.tcp_services.insert(host.clone());
            }
            self.add_host(&host);
        }
        self
    }

    /// The subsets a DestinationRule in `namespace` defines. Its host is
    /// resolved with [`Context::resolve_host`], so add the Services first.
    pub fn add_destination_rule(&mut self, namespace: &str, rule: &DestinationRuleSpec) -> &mut Self {
        let host = self.resolve_host(&rule.host, namespace);
        let entry = self.subsets.get_or_insert_with(BTreeMap::new).entry(host).or_default();
        entry.extend(rule.subsets.iter().map(|s| (namespace.to_string(), s.name.clone())));
        self
    }

    /// A ServiceRole, `name` in `namespace`.
    pub fn add_service_role(&mut self, namespace: &str, name: &str) -> &mut Self {
        self.service_roles
            .get_or_insert_with(BTreeSet::new)
            .insert((namespace.to_string(), name.to_string()));
        self
    }

    /// Resolves a host written in an object of `namespace` as translation
    /// does ([`host::resolve`], knowing this context's Services).
    pub fn resolve_host(&self, host: &str, namespace: &str) -> String {
        host::resolve(host, namespace, |fqdn| self.services.as_ref().is_some_and(|s| s.contains(fqdn)))
    }

    /// Whether some known service has `fqdn` (a resolved, non-wildcard
    /// host); `None` when services are unknown.
    fn service_exists(&self, fqdn: &str) -> Option<bool> {
        let services = self.services.as_ref()?;
        Some(
            services.contains(fqdn)
                || services.iter().any(|s| host::is_wildcard(s) && host::subset_of(fqdn, s)),
        )
    }

    /// Whether every one of `hosts` (written in `namespace`) is a known
    /// Service without a TCP or TLS port; `None` when services are unknown.
    fn only_http_services(&self, hosts: &[String], namespace: &str) -> Option<bool> {
        let services = self.services.as_ref()?;
        Some(
            !hosts.is_empty()
                && hosts.iter().all(|h| {
                    let fqdn = self.resolve_host(h, namespace);
                    !host::is_wildcard(&fqdn)
                        && services.contains(&fqdn)
                        && !self.tcp_services.contains(&fqdn)
                }),
        )
    }

    /// Whether a DestinationRule for `fqdn` defines `subset`; `None` when
    /// DestinationRules are unknown.
    fn subset_exists(&self, fqdn: &str, subset: &str) -> Option<bool> {
        let rules = self.subsets.as_ref()?;
        Some(rules.iter().any(|(host, subsets)| {
            host::subset_of(fqdn, host) && subsets.iter().any(|(_, name)| name == subset)
        }))
    }

    /// Whether ServiceRole `namespace/name` exists; `None` when unknown.
    fn service_role_exists(&self, namespace: &str, name: &str) -> Option<bool> {
        let roles = self.service_roles.as_ref()?;
        Some(roles.contains(&(namespace.to_string(), name.to_string())))
    }
}

/// The semantic checks of one kind's spec.
pub trait Validate {
    /// Checks a spec for an object in `namespace` ("" for cluster-scoped
    /// kinds). Findings come in the order of the fields they name.
    fn validate(&self, namespace: &str, ctx: &Context) -> Vec<Finding>;

    /// The checks that need the object's name too: the rules on its name
    /// that depend on the spec, and how it competes with other objects of
    /// its kind (of two mesh-wide policies, which applies). None by default.
    fn validate_named(&self, _namespace: &str, _name: &str, _ctx: &Context) -> Vec<Finding> {
        Vec::new()
    }
}

impl Validate for PeerAuthenticationSpec {
    fn validate(&self, namespace: &str, ctx: &Context) -> Vec<Finding> {
        let mut out = common::Out::default();
        peer_authentication::check(self, namespace, ctx, &mut out);
        out.findings
    }

    fn validate_named(&self, namespace: &str, name: &str, ctx: &Context) -> Vec<Finding> {
        let mut out = common::Out::default();
        peer_authentication::check_siblings(self, namespace, name, ctx, &mut out);
        out.findings
    }
}

impl Validate for RequestAuthenticationSpec {
    fn validate(&self, namespace: &str, ctx: &Context) -> Vec<Finding> {
        let mut out = common::Out::default();
        request_authentication::check(self, namespace, ctx, &mut out);
        out.findings
    }
}

impl Validate for PolicySpec {
    fn validate(&self, _namespace: &str, _ctx: &Context) -> Vec<Finding> {
        let mut out = common::Out::default();
        policy::check(self, false, &mut out);
        out.findings
    }

    fn validate_named(&self, namespace: &str, name: &str, ctx: &Context) -> Vec<Finding> {
        let mut out = common::Out::default();
        policy::check_policy_name(self, name, &mut out);
        policy::check_siblings(self, namespace, name, ctx, &mut out);
        out.findings
    }
}

impl Validate for MeshPolicySpec {
    fn validate(&self, _namespace: &str, _ctx: &Context) -> Vec<Finding> {
        let mut out = common::Out::default();
        policy::check(self, true, &mut out);
        out.findings
    }
}

impl Validate for VirtualServiceSpec {
    fn validate(&self, namespace: &str, ctx: &Context) -> Vec<Finding> {
        let mut out = common::Out::default();
        virtual_service::check(self, namespace, ctx, &mut out);
        out.findings
    }
}

impl Validate for DestinationRuleSpec {
    fn validate(&self, namespace: &str, ctx: &Context) -> Vec<Finding> {
        let mut out = common::Out::default();
        destination_rule::check(self, namespace, ctx, &mut out);
        out.findings
    }
}

impl Validate for GatewaySpec {
    fn validate(&self, _namespace: &str, _ctx: &Context) -> Vec<Finding> {
        let mut out = common::Out::default();
        gateway::check(self, &mut out);
        out.findings
    }
}

impl Validate for ServiceEntrySpec {
    fn validate(&self, namespace: &str, _ctx: &Context) -> Vec<Finding> {
        let mut out = common::Out::default();
        service_entry::check(self, namespace, &mut out);
        out.findings
    }
}

impl Validate for SidecarSpec {
    fn validate(&self, _namespace: &str, _ctx: &Context) -> Vec<Finding> {
        let mut out = common::Out::default();
        sidecar::check(self, &mut out);
        out.findings
    }

    fn validate_named(&self, namespace: &str, name: &str, ctx: &Context) -> Vec<Finding> {
        let mut out = common::Out::default();
        sidecar::check_siblings(self, namespace, name, ctx, &mut out);
        out.findings
    }
}

impl Validate for ServiceRoleSpec {
    fn validate(&self, _namespace: &str, ctx: &Context) -> Vec<Finding> {
        let mut out = common::Out::default();
        rbac::check_service_role(self, ctx, &mut out);
        out.findings
    }
}

impl Validate for ServiceRoleBindingSpec {
    fn validate(&self, namespace: &str, ctx: &Context) -> Vec<Finding> {
        let mut out = common::Out::default();
        rbac::check_binding(self, namespace, ctx, &mut out);
        out.findings
    }
}

/// For both ClusterRbacConfig and RbacConfig, which share the spec.
impl Validate for RbacConfigSpec {
    fn validate(&self, _namespace: &str, _ctx: &Context) -> Vec<Finding> {
        let mut out = common::Out::default();
        rbac::check_rbac_config(self, &mut out);
        out.findings
    }
}

impl Validate for ClusterRbacConfigSpec {
    fn validate(&self, namespace: &str, ctx: &Context) -> Vec<Finding> {
        self.0.validate(namespace, ctx)
    }
}

/// The rules on an object's name: Istio only reads a ClusterRbacConfig,
/// RbacConfig or MeshPolicy named "default" (an error), and RbacConfig is
/// deprecated (a warning).
pub fn check_name(kind: &str, name: &str) -> Vec<Finding> {
    let mut out = common::Out::default();
    if matches!(kind, "ClusterRbacConfig" | "RbacConfig" | "MeshPolicy") && name != "default" {
        out.err(
            "metadata.name",
            format!(
                "a {kind} must be named \"default\", not {name:?}: rename it, as Istio ignores any other"
            ),
        );
    }
    if kind == "RbacConfig" {
        out.warn(
            "kind",
            "RbacConfig is deprecated: use a ClusterRbacConfig named \"default\" with the same spec instead",
        );
    }
    out.findings
}

/// The fields of a parsed spec that mesh accepts but does not apply, as
/// warnings ([`inventory`]). The spec is read back as mesh stores it, so a
/// field written under its protobuf name is named by its JSON name.
pub fn unapplied_fields<S: Serialize>(kind: &str, spec: &S) -> Vec<Finding> {
    match serde_json::to_value(spec) {
        Ok(value) => inventory::unapplied(kind, &value),
        Err(e) => vec![Finding {
            severity: Severity::Warning,
            field: "spec".into(),
            message: format!("{}: mesh cannot read the spec back ({e})", inventory::NOT_APPLIED),
        }],
    }
}

/// Validates an object of any supported kind from its parts, as the
/// webhook receives it: parses `spec` (a parse error is one error finding,
/// at the field that did not fit), applies the name rules and the kind's
/// [`Validate`], and, when nothing is wrong, warns about each field that is
/// set but not applied ([`unapplied_fields`]). Other kinds give no findings.
pub fn validate_object(
    kind: &str,
    namespace: &str,
    name: &str,
    spec: &serde_json::Value,
    ctx: &Context,
) -> Vec<Finding> {
    fn run<S: DeserializeOwned + Serialize + Validate>(
        kind: &str,
        spec: &serde_json::Value,
        namespace: &str,
        name: &str,
        ctx: &Context,
    ) -> Vec<Finding> {
        match serde_path_to_error::deserialize::<_, S>(spec) {
            Ok(spec) => {
                let mut findings = spec.validate(namespace, ctx);
                findings.extend(spec.validate_named(namespace, name, ctx));
                if !has_errors(&findings) {
                    findings.extend(unapplied_fields(kind, &spec));
                }
                findings
            }
            Err(e) => {
                let path = e.path().to_string();
                let field = if path == "." { "spec".to_string() } else { format!("spec.{path}") };
                let message = format!("{}: fix the value to match the field's schema", e.inner());
                vec![Finding { severity: Severity::Error, field, message }]
            }
        }
    }
    let mut findings = check_name(kind, name);
    findings.extend(match kind {
        "VirtualService" => run::<VirtualServiceSpec>(kind, spec, namespace, name, ctx),
        "DestinationRule" => run::<DestinationRuleSpec>(kind, spec, namespace, name, ctx),
        "Gateway" => run::<GatewaySpec>(kind, spec, namespace, name, ctx),
        "ServiceEntry" => run::<ServiceEntrySpec>(kind, spec, namespace, name, ctx),
        "Sidecar" => run::<SidecarSpec>(kind, spec, namespace, name, ctx),
        "ServiceRole" => run::<ServiceRoleSpec>(kind, spec, namespace, name, ctx),
        "ServiceRoleBinding" => run::<ServiceRoleBindingSpec>(kind, spec, namespace, name, ctx),
        "ClusterRbacConfig" | "RbacConfig" => run::<RbacConfigSpec>(kind, spec, namespace, name, ctx),
        "PeerAuthentication" => run::<PeerAuthenticationSpec>(kind, spec, namespace, name, ctx),
        "RequestAuthentication" => run::<RequestAuthenticationSpec>(kind, spec, namespace, name, ctx),
        "Policy" => run::<PolicySpec>(kind, spec, namespace, name, ctx),
        "MeshPolicy" => run::<MeshPolicySpec>(kind, spec, namespace, name, ctx),
        _ => Vec::new(),
    });
    findings
}

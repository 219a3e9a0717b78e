//! `mesh analyze`: what is wrong with a mesh's configuration as a whole,
//! with Istio's analyzer codes and message format, so users read the
//! findings they know from `istioctl analyze`. Pure: it reads a
//! [`ClusterState`] (built by the caller from files, the live cluster, or
//! both) and the validation rules the webhook applies to each object.
//!
//! The analyzers:
//! - IST0106 SchemaValidationError: an object the webhook would refuse;
//! - IST0101 ReferencedResourceNotFound: a VirtualService naming a Gateway,
//!   a host or a host's subset the cluster does not hold;
//! - IST0102 NamespaceNotInjected: a namespace without a decision on
//!   injection;
//! - IST0109 ConflictingMeshGatewayVirtualServiceHosts: two VirtualServices
//!   for one host on the sidecars;
//! - IST0118 PortNameIsNotUnderNamingConvention: a Service port whose
//!   protocol neither its name nor its `appProtocol` says.

pub mod cli;
pub mod load;
#[cfg(any(test, feature = "e2e"))]
pub mod testdata;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;

use crate::api::virtual_service::{Destination, VirtualServiceSpec};
use crate::model::gateway::gateway_key;
use crate::model::host;
use crate::model::mesh::MESH_GATEWAY;
use crate::model::protocol::Protocol;
use crate::model::{ClusterState, Config, ObjectKey};
use crate::validate::{self, Context, Severity};

/// How bad a finding is, as Istio ranks them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Level {
    Info,
    Warning,
    Error,
}

impl Level {
    /// Istio's names, any case.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.to_ascii_lowercase().as_str() {
            "info" => Ok(Level::Info),
            "warning" => Ok(Level::Warning),
            "error" => Ok(Level::Error),
            _ => Err(format!("level {text:?}: expected Info, Warning or Error")),
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Info => "Info",
            Level::Warning => "Warning",
            Level::Error => "Error",
        })
    }
}

/// One finding, about one object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Finding {
    pub level: Level,
    /// Istio's code, e.g. `IST0101`.
    pub code: &'static str,
    /// Istio's name for the check, e.g. `ReferencedResourceNotFound`.
    pub check: &'static str,
    pub kind: &'static str,
    /// Empty for a cluster-scoped object (a Namespace).
    pub namespace: String,
    pub name: String,
    pub message: String,
}

impl fmt::Display for Finding {
    /// Istio's format: `Error [IST0101] (VirtualService reviews.default) …`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let object = if self.namespace.is_empty() {
            self.name.clone()
        } else {
            format!("{}.{}", self.name, self.namespace)
        };
        write!(f, "{} [{}] ({} {}) {}", self.level, self.code, self.kind, object, self.message)
    }
}

/// Kubernetes' own namespaces, which the mesh never injects.
const SYSTEM_NAMESPACES: [&str; 4] = ["kube-system", "kube-public", "kube-node-lease", "local-path-storage"];

/// Every finding about `state`, in a stable order (level, then code and
/// object); `mesh_namespace` is where the mesh itself runs.
pub fn analyze(state: ClusterState<'_>, mesh_namespace: &str) -> Vec<Finding> {
    let mut findings = Vec::new();
    schema(state, &mut findings);
    referenced_resources(state, &mut findings);
    namespaces_not_injected(state, mesh_namespace, &mut findings);
    conflicting_mesh_hosts(state, &mut findings);
    port_names(state, mesh_namespace, &mut findings);
    findings.sort_by(|a, b| {
        (std::cmp::Reverse(a.level), a.code, a.kind, &a.namespace, &a.name, &a.message).cmp(&(
            std::cmp::Reverse(b.level),
            b.code,
            b.kind,
            &b.namespace,
            &b.name,
            &b.message,
        ))
    });
    findings
}

fn finding(
    level: Level,
    (code, check): (&'static str, &'static str),
    kind: &'static str,
    key: &ObjectKey,
    message: String,
) -> Finding {
    Finding { level, code, check, kind, namespace: key.namespace.clone(), name: key.name.clone(), message }
}

const SCHEMA: (&str, &str) = ("IST0106", "SchemaValidationError");
const NOT_FOUND: (&str, &str) = ("IST0101", "ReferencedResourceNotFound");
const NOT_INJECTED: (&str, &str) = ("IST0102", "NamespaceNotInjected");
const CONFLICTING_HOSTS: (&str, &str) = ("IST0109", "ConflictingMeshGatewayVirtualServiceHosts");
const PORT_NAME: (&str, &str) = ("IST0118", "PortNameIsNotUnderNamingConvention");

/// IST0106: each Istio object the validating webhook would refuse, with
/// the webhook's message (its field and the fix). The webhook's warnings
/// are left to it: `kubectl apply` shows them.
fn schema(state: ClusterState<'_>, out: &mut Vec<Finding>) {
    let context = Context::of(state);
    let mut check = |kind: &'static str, key: &ObjectKey, spec: serde_json::Result<serde_json::Value>| {
        let Ok(spec) = spec else { return };
        for problem in validate::validate_object(kind, &key.namespace, &key.name, &spec, &context) {
            if problem.severity == Severity::Error {
                out.push(finding(
                    Level::Error,
                    SCHEMA,
                    kind,
                    key,
                    format!("{}: {}", problem.field, problem.message),
                ));
            }
        }
    };
    macro_rules! each {
        ($store:expr, $kind:literal) => {
            for config in $store.values() {
                check($kind, &config.key, serde_json::to_value(&config.spec));
            }
        };
    }
    each!(state.virtual_services, "VirtualService");
    each!(state.destination_rules, "DestinationRule");
    each!(state.gateways, "Gateway");
    each!(state.service_entries, "ServiceEntry");
    each!(state.sidecars, "Sidecar");
    each!(state.peer_authentications, "PeerAuthentication");
    each!(state.request_authentications, "RequestAuthentication");
}

/// The hosts the registry knows: Services and ServiceEntry hosts (FQDNs,
/// and the entries' own names, wildcards included).
fn registry_hosts(state: ClusterState<'_>) -> BTreeSet<String> {
    let mut hosts: BTreeSet<String> =
        state.services.values().map(|s| host::service_fqdn(&s.key.name, &s.key.namespace)).collect();
    for entry in state.service_entries.values() {
        hosts.extend(entry.spec.hosts.iter().map(|h| host::normalize(h)));
    }
    hosts
}

/// The subsets each host's DestinationRules declare, by the host as resolved.
fn declared_subsets(
    state: ClusterState<'_>,
    is_service: &dyn Fn(&str) -> bool,
) -> BTreeMap<String, BTreeSet<String>> {
    let mut subsets: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for rule in state.destination_rules.values() {
        let host = host::resolve(&rule.spec.host, &rule.key.namespace, is_service);
        subsets.entry(host).or_default().extend(rule.spec.subsets.iter().map(|s| s.name.clone()));
    }
    subsets
}

/// Every destination a VirtualService's rules send to (mirrors included).
fn destinations(spec: &VirtualServiceSpec) -> Vec<&Destination> {
    let mut out: Vec<&Destination> = Vec::new();
    for rule in &spec.http {
        out.extend(rule.route.iter().map(|r| &r.destination));
        out.extend(rule.mirror.iter());
    }
    out.extend(spec.tcp.iter().flat_map(|r| r.route.iter().map(|d| &d.destination)));
    out.extend(spec.tls.iter().flat_map(|r| r.route.iter().map(|d| &d.destination)));
    out
}

/// IST0101: a VirtualService's Gateway, destination host or subset that
/// the cluster does not hold.
fn referenced_resources(state: ClusterState<'_>, out: &mut Vec<Finding>) {
    let hosts = registry_hosts(state);
    let is_service = |fqdn: &str| hosts.contains(fqdn);
    let subsets = declared_subsets(state, &is_service);
    for vs in state.virtual_services.values() {
        let key = &vs.key;
        for gateway in &vs.spec.gateways {
            let Some(named) = gateway_key(gateway, &key.namespace) else { continue };
            if state.gateways.get(&named).is_none() {
                let message = format!("Referenced gateway not found: {gateway:?}");
                out.push(finding(Level::Error, NOT_FOUND, "VirtualService", key, message));
            }
        }
        let mut seen = BTreeSet::new();
        for destination in destinations(&vs.spec) {
            let resolved = host::resolve(&destination.host, &key.namespace, is_service);
            let known = hosts.iter().any(|h| host::subset_of(&resolved, h) || h == &resolved);
            if !known && seen.insert(destination.host.clone()) {
                let message = format!("Referenced host not found: {:?}", destination.host);
                out.push(finding(Level::Error, NOT_FOUND, "VirtualService", key, message));
            }
            let Some(subset) = destination.subset.as_deref().filter(|s| !s.is_empty()) else { continue };
            let declared = subsets.get(&resolved).is_some_and(|s| s.contains(subset));
            if !declared && seen.insert(format!("{}+{subset}", destination.host)) {
                let message = format!(
                    "Referenced host+subset in destinationrule not found: \"{}+{subset}\"",
                    destination.host
                );
                out.push(finding(Level::Error, NOT_FOUND, "VirtualService", key, message));
            }
        }
    }
}

/// IST0102: a namespace (not Kubernetes' own, nor the mesh's) with no
/// `istio-injection` label either way, as Istio reports it.
fn namespaces_not_injected(state: ClusterState<'_>, mesh_namespace: &str, out: &mut Vec<Finding>) {
    for namespace in state.namespaces.values() {
        let name = namespace.name.as_str();
        if SYSTEM_NAMESPACES.contains(&name) || name == mesh_namespace {
            continue;
        }
        let decided =
            namespace.labels.contains_key("istio-injection") || namespace.labels.contains_key("istio.io/rev");
        if !decided {
            let message = format!(
                "The namespace is not enabled for Istio injection. Run 'kubectl label namespace {name} \
                 istio-injection=enabled' to enable it, or 'kubectl label namespace {name} istio-injection=disabled' \
                 to explicitly mark it as not needing injection."
            );
            out.push(finding(Level::Warning, NOT_INJECTED, "Namespace", &ObjectKey::new("", name), message));
        }
    }
}

/// IST0109: hosts that two or more VirtualServices bound to the sidecars
/// (no `gateways`, or `mesh` among them) both route: only one is applied.
fn conflicting_mesh_hosts(state: ClusterState<'_>, out: &mut Vec<Finding>) {
    let hosts = registry_hosts(state);
    let is_service = |fqdn: &str| hosts.contains(fqdn);
    let mut by_host: BTreeMap<String, Vec<&Config<VirtualServiceSpec>>> = BTreeMap::new();
    for vs in state.virtual_services.values() {
        let on_mesh = vs.spec.gateways.is_empty() || vs.spec.gateways.iter().any(|g| g == MESH_GATEWAY);
        if !on_mesh {
            continue;
        }
        let resolved: BTreeSet<String> =
            vs.spec.hosts.iter().map(|h| host::resolve(h, &vs.key.namespace, is_service)).collect();
        for host in resolved {
            by_host.entry(host).or_default().push(vs);
        }
    }
    for (host, services) in by_host.iter().filter(|(_, v)| v.len() > 1) {
        let names: Vec<String> =
            services.iter().map(|v| format!("{}/{}", v.key.namespace, v.key.name)).collect();
        for vs in services {
            let message = format!(
                "The VirtualServices {} associated with mesh gateway define the same host {host} which can lead to \
                 undefined behavior. This can be fixed by merging the conflicting VirtualServices into a single resource.",
                names.join(",")
            );
            out.push(finding(Level::Error, CONFLICTING_HOSTS, "VirtualService", &vs.key, message));
        }
    }
}

/// IST0118: Service ports whose protocol Istio cannot tell from their name
/// or `appProtocol` (it would have to sniff; the mesh treats them as TCP).
/// The mesh's own Services are left out (its gateway's `status-port` is
/// Istio's name for that port).
fn port_names(state: ClusterState<'_>, mesh_namespace: &str, out: &mut Vec<Finding>) {
    for service in state.services.values().filter(|s| s.key.namespace != mesh_namespace) {
        for port in &service.ports {
            let protocol = Protocol::infer(&port.name, port.app_protocol.as_deref(), &port.protocol);
            if protocol == Protocol::Unknown {
                let message = format!(
                    "Port name {} (port: {}, targetPort: {}) doesn't follow the naming convention of Istio port.",
                    port.name,
                    port.port,
                    port.target_port.as_deref().unwrap_or(&port.port.to_string())
                );
                out.push(finding(Level::Info, PORT_NAME, "Service", &service.key, message));
            }
        }
    }
}

#[cfg(test)]
mod tests;

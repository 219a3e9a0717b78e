//! Istio's role-based access control (`rbac.istio.io/v1alpha1`), resolved
//! for one service as Istio 1.4's Pilot did it: whether RBAC is on for the
//! service, and which roles apply with which bindings. [`RbacPolicies`] is
//! built once per push from the index's [`ClusterState`] (owned, so
//! translation reads it outside the index's lock); translation turns an
//! [`Authorization`] into Envoy's RBAC filters. docs/security.md
//! ("Authorization") is the user's version of these rules.
//!
//! - The switch is the ClusterRbacConfig named `default`; without one, the
//!   older namespaced RbacConfig named `default` (the oldest, if several
//!   namespaces hold one). Other names are ignored, as Istio ignores them.
//! - `mode`: OFF (or no switch) leaves every service open; ON enforces
//!   everywhere; ON_WITH_INCLUSION only for the services (by FQDN) and
//!   namespaces listed; ON_WITH_EXCLUSION everywhere but those.
//! - Where RBAC is on, a request is allowed only when some role's rule
//!   and one of its bindings' subjects match it: no role, no access.
//! - A role applies to the service's namespace. A binding grants its
//!   `roleRef` (or `role`: a name in its namespace, `/name` in the root
//!   namespace) or its inline `actions`; a role no binding grants allows
//!   nothing.
//! - `enforcementMode: PERMISSIVE` on the switch makes every binding a
//!   shadow one; `mode: PERMISSIVE` on a binding makes that binding a
//!   shadow one: its decisions are counted by Envoy, never enforced.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{ClusterState, Config};
use crate::api::rbac_config::{RbacConfigMode, RbacConfigSpec, RbacConfigTarget};
use crate::api::service_role::AccessRule;
use crate::api::service_role_binding::{EnforcementMode, ServiceRoleBindingSpec, Subject};

/// The name Istio reads the RBAC switch under.
pub const SWITCH_NAME: &str = "default";

/// The roles and bindings of the mesh, and the switch that says where they
/// are enforced.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RbacPolicies {
    switch: Option<RbacConfigSpec>,
    root_namespace: String,
    /// ServiceRole rules by namespace and name.
    roles: BTreeMap<String, BTreeMap<String, Vec<AccessRule>>>,
    /// Bindings by namespace, by name.
    bindings: BTreeMap<String, Vec<Binding>>,
}

#[derive(Clone, Debug, PartialEq)]
struct Binding {
    name: String,
    grants: Grant,
    subjects: Vec<Subject>,
    shadow: bool,
}

/// What a binding grants.
#[derive(Clone, Debug, PartialEq)]
enum Grant {
    /// A ServiceRole, by namespace and name.
    Role { namespace: String, name: String },
    /// The binding's own `actions`.
    Inline(Vec<AccessRule>),
}

/// RBAC as it applies to one service: the policies its sidecar enforces.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Authorization {
    /// The switch's `enforcementMode: PERMISSIVE`: nothing is enforced,
    /// every policy only counted.
    pub shadow_only: bool,
    /// By policy name: the role's name (`/name` for a root namespace role,
    /// `binding/<name>` for a binding's inline actions).
    pub policies: BTreeMap<String, RolePolicy>,
}

/// One role and the subjects its bindings grant it to.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RolePolicy {
    pub rules: Vec<AccessRule>,
    /// Subjects of enforced bindings.
    pub enforced: Vec<Subject>,
    /// Subjects of bindings in `mode: PERMISSIVE` (all of them when the
    /// switch is permissive).
    pub shadow: Vec<Subject>,
}

impl RbacPolicies {
    pub fn build(state: ClusterState<'_>) -> Self {
        let cluster = state
            .cluster_rbac_configs
            .values()
            .find(|c| c.key.name == SWITCH_NAME)
            .map(|c| RbacConfigSpec::from(c.spec.clone()));
        let switch = cluster.or_else(|| {
            state
                .rbac_configs
                .values()
                .filter(|c| c.key.name == SWITCH_NAME)
                .min_by(|a, b| a.age_order().cmp(&b.age_order()))
                .map(|c| c.spec.clone())
        });
        let mut roles: BTreeMap<String, BTreeMap<String, Vec<AccessRule>>> = BTreeMap::new();
        for role in state.service_roles.values() {
            roles
                .entry(role.key.namespace.clone())
                .or_default()
                .insert(role.key.name.clone(), role.spec.rules.clone());
        }
        let root_namespace = state.mesh_config.root_namespace.clone();
        let mut bindings: BTreeMap<String, Vec<Binding>> = BTreeMap::new();
        for binding in state.service_role_bindings.values() {
            if let Some(b) = Binding::of(binding, &root_namespace) {
                bindings.entry(binding.key.namespace.clone()).or_default().push(b);
            }
        }
        RbacPolicies { switch, root_namespace, roles, bindings }
    }

    /// Whether RBAC is enforced (or, permissive, counted) for the service
    /// `host` (its FQDN) in `namespace`.
    pub fn enabled(&self, host: &str, namespace: &str) -> bool {
        let Some(switch) = &self.switch else { return false };
        let listed = |target: &Option<RbacConfigTarget>| {
            target.as_ref().is_some_and(|t| {
                t.namespaces.iter().any(|n| n == namespace) || t.services.iter().any(|s| s == host)
            })
        };
        match switch.mode.unwrap_or_default() {
            RbacConfigMode::Off => false,
            RbacConfigMode::On => true,
            RbacConfigMode::OnWithInclusion => listed(&switch.inclusion),
            RbacConfigMode::OnWithExclusion => !listed(&switch.exclusion),
        }
    }

    /// The policies for the service `host` in `namespace`; None when RBAC
    /// is off for it (its sidecar gets no RBAC filter at all).
    pub fn authorization(&self, host: &str, namespace: &str) -> Option<Authorization> {
        if !self.enabled(host, namespace) {
            return None;
        }
        let shadow_only =
            self.switch.as_ref().and_then(|s| s.enforcement_mode) == Some(EnforcementMode::Permissive);
        let mut policies: BTreeMap<String, RolePolicy> = BTreeMap::new();
        for binding in self.bindings.get(namespace).into_iter().flatten() {
            let (name, rules) = match &binding.grants {
                Grant::Role { namespace: role_ns, name } => {
                    let Some(rules) = self.roles.get(role_ns).and_then(|r| r.get(name)) else { continue };
                    let policy = if *role_ns == *namespace { name.clone() } else { format!("/{name}") };
                    (policy, rules)
                }
                Grant::Inline(rules) => (format!("binding/{}", binding.name), rules),
            };
            let policy = policies
                .entry(name)
                .or_insert_with(|| RolePolicy { rules: rules.clone(), ..RolePolicy::default() });
            if binding.shadow || shadow_only {
                policy.shadow.extend(binding.subjects.iter().cloned());
            } else {
                policy.enforced.extend(binding.subjects.iter().cloned());
            }
        }
        Some(Authorization { shadow_only, policies })
    }

    /// The mesh's root namespace, where `role: /name` looks.
    pub fn root_namespace(&self) -> &str {
        &self.root_namespace
    }
}

/// Istio's match of a value against RBAC patterns: `*` matches anything,
/// `x*` a prefix, `*x` a suffix, anything else exactly.
pub fn matches_any(value: &str, patterns: &[String]) -> bool {
    patterns.iter().any(|p| {
        p == "*"
            || p == value
            || p.strip_suffix('*').is_some_and(|prefix| value.starts_with(prefix))
            || p.strip_prefix('*').is_some_and(|suffix| value.ends_with(suffix))
    })
}

/// Whether a rule uses a field only an HTTP request has (hosts, paths,
/// methods, a `request.headers` constraint): on a TCP port Istio drops
/// such a rule, so it grants nothing there.
pub fn rule_is_http_only(rule: &AccessRule) -> bool {
    !(rule.hosts.is_empty()
        && rule.not_hosts.is_empty()
        && rule.paths.is_empty()
        && rule.not_paths.is_empty()
        && rule.methods.is_empty()
        && rule.not_methods.is_empty())
        || rule.constraints.iter().any(|c| c.key.as_deref().unwrap_or("").starts_with("request.headers"))
}

/// Whether a subject uses a field only an HTTP request has (groups,
/// `request.*` properties, the deprecated `source.user`): dropped on a
/// TCP port, as Istio does.
pub fn subject_is_http_only(subject: &Subject) -> bool {
    subject.group.as_deref().is_some_and(|g| !g.is_empty())
        || !subject.groups.is_empty()
        || !subject.not_groups.is_empty()
        || subject.properties.keys().any(|k| k.starts_with("request.") || k == "source.user")
}

impl Binding {
    /// A binding as it grants; None when it names no role (validation
    /// rejects those; one stored before the webhook ran grants nothing).
    fn of(config: &Config<ServiceRoleBindingSpec>, root_namespace: &str) -> Option<Self> {
        let spec = &config.spec;
        let namespace = &config.key.namespace;
        let role_ref = spec.role_ref.as_ref().and_then(|r| r.name.as_deref()).filter(|n| !n.is_empty());
        let role = spec.role.as_deref().filter(|r| !r.is_empty());
        let grants = match (role_ref, role) {
            (Some(name), _) => Grant::Role { namespace: namespace.clone(), name: name.to_string() },
            (None, Some(role)) => match role.strip_prefix('/') {
                Some("") => return None,
                Some(name) => Grant::Role { namespace: root_namespace.to_string(), name: name.to_string() },
                None => Grant::Role { namespace: namespace.clone(), name: role.to_string() },
            },
            (None, None) if !spec.actions.is_empty() => Grant::Inline(spec.actions.clone()),
            (None, None) => return None,
        };
        Some(Binding {
            name: config.key.name.clone(),
            grants,
            subjects: spec.subjects.clone(),
            shadow: spec.mode == Some(EnforcementMode::Permissive),
        })
    }
}

#[cfg(test)]
mod tests;

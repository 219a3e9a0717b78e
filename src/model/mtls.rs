//! Which mutual TLS a workload's sidecar accepts on an inbound port, from
//! the policies that switch it: today's `PeerAuthentication` and Istio 1.1's
//! `Policy` and `MeshPolicy`. [`MtlsPolicies`] is built once from the
//! index's [`ClusterState`] (owned, so translation reads it outside the
//! index's lock) and answers [`MtlsPolicies::inbound_mode`] per workload and
//! port. docs/security.md ("Policies that switch mutual TLS") is the user's
//! version of the rules below.
//!
//! PeerAuthentication, as Istio's `ComposePeerAuthentication`:
//! - levels: mesh (the root namespace, no selector), namespace (no
//!   selector; an empty `matchLabels` counts as none), workload (a selector
//!   matching the pod's labels, in the pod's namespace; one with a selector
//!   in the root namespace is ignored, as Istio ignores it);
//! - at each level the oldest wins (creationTimestamp, then name);
//! - mesh, then namespace, then workload override the mode in turn; UNSET
//!   (or no `mtls`) keeps the level above's; PERMISSIVE at the top;
//! - the workload policy's `portLevelMtls` entry for the port wins over its
//!   `mtls`, and its UNSET means the workload's result.
//!
//! Istio 1.1 (its Pilot's `AuthenticationPolicyForWorkload`):
//! - a Policy with targets applies when it names a Service of the pod's
//!   namespace that selects the pod and serves this port (a Service port
//!   whose targetPort on the pod, by number or container port name, is the
//!   port), and its `ports` are empty or name that Service port by number
//!   or name; of several, the first by name;
//! - else the namespace's Policy without targets (Istio's validation names
//!   it `default`; of several, the first by name);
//! - else the MeshPolicy named `default`;
//! - the policy's first `peers` entry with `mtls` gives the mode (STRICT
//!   unless `mode: PERMISSIVE`; `allowTls` is not modelled); a policy with
//!   no such entry means no mutual TLS at all: DISABLE, as Istio 1.1 set up
//!   no TLS for it.
//!
//! Both generations, as Istio 1.5 did while it served both: when any
//! PeerAuthentication applies to the workload (at any level), the 1.1
//! policies are not read for it; otherwise they decide; when neither
//! applies, PERMISSIVE.

use std::collections::BTreeMap;

use serde::Serialize;

use super::mesh::is_subset;
use super::{ClusterState, Config, Workload};
use crate::api::peer_authentication::{PeerAuthenticationSpec, PeerMtlsMode, PeerMutualTls};
use crate::api::policy::{MutualTlsMode, PolicySpec};

/// What an inbound port of a sidecar accepts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum MtlsMode {
    /// Plaintext only.
    Disable,
    /// Mutual TLS or plaintext: Istio's default.
    #[default]
    Permissive,
    /// Mutual TLS only.
    Strict,
}

/// The mode of a PeerAuthentication level: None for UNSET (inherit).
fn peer_mode(mtls: Option<&PeerMutualTls>) -> Option<MtlsMode> {
    match mtls?.mode? {
        PeerMtlsMode::Unset => None,
        PeerMtlsMode::Disable => Some(MtlsMode::Disable),
        PeerMtlsMode::Permissive => Some(MtlsMode::Permissive),
        PeerMtlsMode::Strict => Some(MtlsMode::Strict),
    }
}

/// The mode an Istio 1.1 policy asks for.
fn policy_mode(spec: &PolicySpec) -> MtlsMode {
    match spec.mutual_tls().map(|m| m.mode.unwrap_or_default()) {
        None => MtlsMode::Disable,
        Some(MutualTlsMode::Strict) => MtlsMode::Strict,
        Some(MutualTlsMode::Permissive) => MtlsMode::Permissive,
    }
}

/// The winning PeerAuthentication without a selector of one namespace
/// (the mesh's, in the root namespace): its mode, None for UNSET.
#[derive(Clone, Debug, PartialEq)]
struct Level {
    mode: Option<MtlsMode>,
}

/// A PeerAuthentication with a selector.
#[derive(Clone, Debug, PartialEq)]
struct WorkloadPolicy {
    match_labels: BTreeMap<String, String>,
    mode: Option<MtlsMode>,
    /// By container port; None for UNSET. Keys that are no port are dropped
    /// (validation rejects them).
    ports: BTreeMap<u16, Option<MtlsMode>>,
}

/// An Istio 1.1 Policy with targets.
#[derive(Clone, Debug, PartialEq)]
struct TargetedPolicy {
    targets: Vec<Target>,
    spec: PolicySpec,
}

#[derive(Clone, Debug, PartialEq)]
struct Target {
    service: String,
    /// Service ports by number or name; empty: every port.
    ports: Vec<PortRef>,
}

#[derive(Clone, Debug, PartialEq)]
enum PortRef {
    Number(u32),
    Name(String),
}

/// A Service as targets read it: who it selects, and its ports.
#[derive(Clone, Debug, PartialEq)]
struct ServicePorts {
    name: String,
    selector: BTreeMap<String, String>,
    /// (port, name, targetPort as written).
    ports: Vec<(u16, String, Option<String>)>,
}

/// What one namespace holds of both generations.
#[derive(Clone, Debug, Default, PartialEq)]
struct Namespace {
    peer: Option<Level>,
    /// Oldest first.
    workload_peers: Vec<WorkloadPolicy>,
    /// The first Policy without targets by name.
    policy_default: Option<PolicySpec>,
    /// Policies with targets, by name.
    targeted: Vec<TargetedPolicy>,
    services: Vec<ServicePorts>,
}

/// The policies that switch mutual TLS, indexed by namespace; see the
/// module's documentation for the rules.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MtlsPolicies {
    mesh_peer: Option<Level>,
    mesh_policy: Option<PolicySpec>,
    namespaces: BTreeMap<String, Namespace>,
}

impl MtlsPolicies {
    /// Reads the PeerAuthentications, Policies, the MeshPolicy and the
    /// Services of `state`; the root namespace is `state.mesh_config`'s.
    pub fn build(state: ClusterState<'_>) -> Self {
        let root = state.mesh_config.root_namespace.as_str();
        let mut out = MtlsPolicies::default();

        let mut peers: Vec<&Config<PeerAuthenticationSpec>> = state.peer_authentications.values().collect();
        peers.sort_by(|a, b| a.age_order().cmp(&b.age_order()));
        for pa in peers {
            let ns = pa.key.namespace.as_str();
            let labels = pa.spec.selector.as_ref().map(|s| &s.match_labels).filter(|l| !l.is_empty());
            let mode = peer_mode(pa.spec.mtls.as_ref());
            match labels {
                None if ns == root => {
                    out.mesh_peer.get_or_insert(Level { mode });
                }
                None => {
                    out.namespace(ns).peer.get_or_insert(Level { mode });
                }
                // Istio ignores workload policies in the root namespace.
                Some(_) if ns == root => {}
                Some(labels) => {
                    let ports = pa
                        .spec
                        .port_level_mtls
                        .iter()
                        .filter_map(|(port, mtls)| Some((port.parse::<u16>().ok()?, peer_mode(Some(mtls)))))
                        .collect();
                    out.namespace(ns).workload_peers.push(WorkloadPolicy {
                        match_labels: labels.clone(),
                        mode,
                        ports,
                    });
                }
            }
        }

        // Name order, as Istio 1.1's store listed them.
        for policy in state.policies.values() {
            let ns = out.namespace(&policy.key.namespace);
            if policy.spec.targets.is_empty() {
                ns.policy_default.get_or_insert_with(|| policy.spec.clone());
                continue;
            }
            let targets = policy
                .spec
                .targets
                .iter()
                .map(|t| Target {
                    service: t.name.clone(),
                    ports: t
                        .ports
                        .iter()
                        .filter_map(|p| match (&p.number, &p.name) {
                            (Some(n), _) => Some(PortRef::Number(*n)),
                            (None, Some(name)) => Some(PortRef::Name(name.clone())),
                            (None, None) => None,
                        })
                        .collect(),
                })
                .collect();
            ns.targeted.push(TargetedPolicy { targets, spec: policy.spec.clone() });
        }
        out.mesh_policy =
            state.mesh_policies.values().find(|p| p.key.name == MESH_POLICY_NAME).map(|p| p.spec.0.clone());

        // Only namespaces with a targeted Policy need their Services.
        for svc in state.services.values() {
            let Some(ns) = out.namespaces.get_mut(&svc.key.namespace) else { continue };
            if ns.targeted.is_empty() {
                continue;
            }
            ns.services.push(ServicePorts {
                name: svc.key.name.clone(),
                selector: svc.selector.clone(),
                ports: svc.ports.iter().map(|p| (p.port, p.name.clone(), p.target_port.clone())).collect(),
            });
        }
        out
    }

    fn namespace(&mut self, name: &str) -> &mut Namespace {
        self.namespaces.entry(name.to_string()).or_default()
    }

    /// The mode of `workload`'s inbound `port`: the container port its
    /// sidecar's inbound listener serves (a Service's targetPort).
    pub fn inbound_mode(&self, workload: &Workload, port: u16) -> MtlsMode {
        let ns = self.namespaces.get(&workload.key.namespace);
        if let Some(mode) = self.peer_authentication_mode(ns, workload, port) {
            return mode;
        }
        if let Some(policy) = self.istio_1_1_policy(ns, workload, port) {
            return policy_mode(policy);
        }
        MtlsMode::Permissive
    }

    /// Istio's PeerAuthentication composition; None when no
    /// PeerAuthentication applies to the workload at any level.
    fn peer_authentication_mode(
        &self,
        ns: Option<&Namespace>,
        workload: &Workload,
        port: u16,
    ) -> Option<MtlsMode> {
        let namespace_level = ns.and_then(|n| n.peer.as_ref());
        let workload_level =
            ns.and_then(|n| n.workload_peers.iter().find(|w| is_subset(&w.match_labels, &workload.labels)));
        if self.mesh_peer.is_none() && namespace_level.is_none() && workload_level.is_none() {
            return None;
        }
        let mut mode = MtlsMode::Permissive;
        for level in [self.mesh_peer.as_ref(), namespace_level] {
            if let Some(m) = level.and_then(|l| l.mode) {
                mode = m;
            }
        }
        if let Some(w) = workload_level {
            mode = w.mode.unwrap_or(mode);
            if let Some(port_mode) = w.ports.get(&port) {
                mode = port_mode.unwrap_or(mode);
            }
        }
        Some(mode)
    }

    /// The Istio 1.1 Policy (or MeshPolicy) that applies to `workload`'s
    /// inbound `port`, whatever PeerAuthentication says: its `origins`
    /// are read from it ([`super::jwt`]).
    pub fn policy_1_1(&self, workload: &Workload, port: u16) -> Option<&PolicySpec> {
        self.istio_1_1_policy(self.namespaces.get(&workload.key.namespace), workload, port)
    }

    /// Istio 1.1's lookup; None when no Policy or MeshPolicy applies.
    fn istio_1_1_policy<'a>(
        &'a self,
        ns: Option<&'a Namespace>,
        workload: &Workload,
        port: u16,
    ) -> Option<&'a PolicySpec> {
        if let Some(ns) = ns {
            let targeted = ns.targeted.iter().find(|p| {
                p.targets.iter().any(|t| {
                    ns.services.iter().any(|svc| svc.name == t.service && serves(svc, t, workload, port))
                })
            });
            if let Some(policy) = targeted {
                return Some(&policy.spec);
            }
            if let Some(policy) = &ns.policy_default {
                return Some(policy);
            }
        }
        self.mesh_policy.as_ref()
    }
}

/// The name Istio reads a MeshPolicy (and a namespace's Policy without
/// targets) under.
pub const MESH_POLICY_NAME: &str = "default";

/// Whether `svc` selects `workload` and serves its `port` on a Service
/// port the target names (any, when it names none).
fn serves(svc: &ServicePorts, target: &Target, workload: &Workload, port: u16) -> bool {
    if svc.selector.is_empty() || !is_subset(&svc.selector, &workload.labels) {
        return false;
    }
    svc.ports.iter().any(|(number, name, target_port)| {
        let on_pod = match target_port.as_deref() {
            None | Some("") => Some(*number),
            Some(t) => t.parse::<u16>().ok().or_else(|| workload.named_ports.get(t).copied()),
        };
        on_pod == Some(port)
            && (target.ports.is_empty()
                || target.ports.iter().any(|p| match p {
                    PortRef::Number(n) => *n == u32::from(*number),
                    PortRef::Name(n) => n == name,
                }))
    })
}

#[cfg(test)]
mod tests;

//! ServiceEntries as services of the mesh view, as Istio's
//! `serviceregistry/serviceentry/conversion.go` makes them: each host of
//! an entry is a service of its own (`ServiceView`, named by the host),
//! with the entry's ports, addresses, visibility and endpoints, and an
//! [`EntryView`] saying what a Kubernetes Service does not have: how its
//! endpoints are found (`resolution`), whether it is in the mesh
//! (`location`), its addresses and the identities its servers present.
//!
//! Endpoints, per port (the endpoint's port is its `ports` entry for the
//! port's name, else the port's `targetPort`, else its number):
//! - STATIC: the `endpoints`' addresses, with their labels (subsets select
//!   on them; `security.istio.io/tlsMode: istio` marks one with a sidecar,
//!   as for pods, and, as in Istio, so does a `serviceAccount` when that
//!   label is absent);
//! - DNS and DNS_ROUND_ROBIN: the `endpoints`' addresses (names or IPs),
//!   or, with none, each host itself, resolved by Envoy;
//! - NONE: none; the proxy connects to the connection's original
//!   destination;
//! - `workloadSelector`: the pods of the entry's namespace whose labels
//!   match, by their IPs and labels, healthy when Ready.
//!
//! Where the model differs from Istio: a host that is also a Kubernetes
//! Service's name stays the Service, as in Istio, but without the entry's
//! `subjectAltNames`, the one thing Istio adds to it; of two
//! entries with the same host the oldest wins (Istio keeps one per
//! namespace); an endpoint's `locality` and `network` are not read (they
//! stay pending in the inventory). Its `weight` is its share, as Istio's
//! `LbWeight`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::mesh::{EndpointView, Health, PortView, ServiceView, TLS_MODE_ISTIO, TLS_MODE_LABEL, is_subset};
use super::protocol::Protocol;
use super::telemetry::WorkloadLabels;
use super::visibility::ExportTo;
use super::{ClusterState, Config};
use crate::api::service_entry::{Location, Resolution, ServiceEntrySpec, ServicePort};

/// What a ServiceEntry's service has that a Kubernetes Service has not.
#[derive(Clone, Debug, PartialEq)]
pub struct EntryView {
    /// How the proxy finds the endpoints (Istio's default: NONE).
    pub resolution: Resolution,
    /// Istio's default: MESH_EXTERNAL.
    pub location: Location,
    /// Virtual IPs and CIDR blocks, as written: connections to them on a
    /// port of the entry are this service's. Empty: the service is
    /// reached by name (HTTP Host, TLS SNI) or, for other TCP, by port.
    pub addresses: Vec<String>,
    /// Identities a MESH_INTERNAL server's certificate may carry, besides
    /// the SPIFFE IDs of its endpoints' ServiceAccounts.
    pub subject_alt_names: Vec<String>,
}

impl EntryView {
    /// Outside the mesh: reached without the mesh's mutual TLS (a
    /// DestinationRule's `tls` may still originate TLS).
    pub fn is_external(&self) -> bool {
        self.location == Location::MeshExternal
    }
}

/// How a cluster of a service finds its endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Discovery {
    /// Sent by the control plane (EDS): Kubernetes Services, STATIC entries.
    Eds,
    /// The connection's original destination (NONE).
    OriginalDestination,
    /// Every address DNS gives for each endpoint (DNS).
    StrictDns,
    /// The first address DNS gives (DNS_ROUND_ROBIN).
    LogicalDns,
}

impl Discovery {
    pub fn of(entry: Option<&EntryView>) -> Discovery {
        match entry.map(|e| e.resolution) {
            None | Some(Resolution::Static) => Discovery::Eds,
            Some(Resolution::None) => Discovery::OriginalDestination,
            Some(Resolution::Dns) => Discovery::StrictDns,
            Some(Resolution::DnsRoundRobin) => Discovery::LogicalDns,
        }
    }

    /// Resolved by Envoy: the endpoints go inline in the cluster.
    pub fn is_dns(self) -> bool {
        matches!(self, Discovery::StrictDns | Discovery::LogicalDns)
    }
}

/// The services of every ServiceEntry of `state`, one per host, oldest
/// entry first for a host two entries name; hosts for which `taken` is
/// true (Kubernetes Services) are left out.
pub fn services(state: ClusterState<'_>, taken: impl Fn(&str) -> bool) -> Vec<ServiceView> {
    let mut entries: Vec<&Config<ServiceEntrySpec>> = state.service_entries.values().collect();
    entries.sort_by(|a, b| a.age_order().cmp(&b.age_order()));
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for config in entries {
        for view in entry_services(config, state) {
            if !taken(&view.hostname) && seen.insert(view.hostname.clone()) {
                out.push(view);
            }
        }
    }
    out
}

/// A pod a `workloadSelector` picks.
struct SelectedPod<'a> {
    ip: &'a str,
    health: Health,
    labels: Arc<BTreeMap<String, String>>,
    workload: Arc<WorkloadLabels>,
    service_account: &'a str,
}

/// The services of one entry, one per host.
fn entry_services(config: &Config<ServiceEntrySpec>, state: ClusterState<'_>) -> Vec<ServiceView> {
    let spec = &config.spec;
    let namespace = &config.key.namespace;
    let entry = EntryView {
        resolution: spec.resolution.unwrap_or(Resolution::None),
        location: spec.location.unwrap_or(Location::MeshExternal),
        addresses: spec.addresses.clone(),
        subject_alt_names: spec.subject_alt_names.clone(),
    };
    let selected: Vec<SelectedPod> = match &spec.workload_selector {
        Some(selector) => state
            .workloads
            .values()
            .filter(|w| w.key.namespace == *namespace && is_subset(&selector.labels, &w.labels))
            .filter_map(|w| {
                Some(SelectedPod {
                    ip: w.ip.as_deref()?,
                    health: if w.ready { Health::Healthy } else { Health::Unhealthy },
                    labels: Arc::new(w.labels.clone()),
                    workload: Arc::new(WorkloadLabels::new(&w.workload_name, &w.key.namespace, &w.labels)),
                    service_account: &w.service_account,
                })
            })
            .collect(),
        None => Vec::new(),
    };
    let mut service_accounts: BTreeSet<String> =
        spec.endpoints.iter().filter_map(|e| e.service_account.clone()).collect();
    service_accounts
        .extend(selected.iter().map(|p| p.service_account.to_string()).filter(|sa| !sa.is_empty()));

    let mut out = Vec::new();
    for raw_host in &spec.hosts {
        let hostname = normalized(raw_host);
        if hostname.is_empty() {
            continue;
        }
        let ports = spec
            .ports
            .iter()
            .filter_map(|port| {
                let number = u16::try_from(port.number?).ok().filter(|n| *n != 0)?;
                let endpoints = port_endpoints(spec, &entry, port, number, &hostname, &selected);
                Some(PortView {
                    name: port.name.clone().unwrap_or_default(),
                    port: number,
                    protocol: protocol(port),
                    target_port: port.target_port.map(|t| t.to_string()),
                    endpoints,
                })
            })
            .collect();
        out.push(ServiceView {
            key: config.key.clone(),
            hostname,
            cluster_ip: None,
            ports,
            selector: BTreeMap::new(),
            export_to: ExportTo::parse(&spec.export_to, namespace),
            service_accounts: service_accounts.clone(),
            entry: Some(entry.clone()),
        });
    }
    out
}

/// A host as the entry names it, in the form host names are compared in:
/// lower case, without a trailing dot.
fn normalized(host: &str) -> String {
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

/// A port's protocol by Istio's name (`HTTP`, `HTTPS`, `TLS`, `TCP`...);
/// one it does not know is TCP, as Istio treats it.
fn protocol(port: &ServicePort) -> Protocol {
    port.protocol.as_deref().and_then(Protocol::parse).unwrap_or(Protocol::Tcp)
}

/// The endpoints of one port of one host, by the entry's resolution.
fn port_endpoints(
    spec: &ServiceEntrySpec,
    entry: &EntryView,
    port: &ServicePort,
    number: u16,
    hostname: &str,
    selected: &[SelectedPod<'_>],
) -> Vec<EndpointView> {
    let name = port.name.as_deref().unwrap_or_default();
    let target = port.target_port.and_then(|t| u16::try_from(t).ok()).filter(|t| *t != 0).unwrap_or(number);
    let mut out: Vec<EndpointView> = match entry.resolution {
        Resolution::None => return Vec::new(),
        _ if spec.workload_selector.is_some() => selected
            .iter()
            .map(|pod| EndpointView {
                address: pod.ip.to_string(),
                port: target,
                health: pod.health,
                pod: None,
                labels: pod.labels.clone(),
                workload: Some(pod.workload.clone()),
                weight: None,
            })
            .collect(),
        Resolution::Dns | Resolution::DnsRoundRobin if spec.endpoints.is_empty() => {
            // A wildcard host is no name DNS can answer.
            if hostname.starts_with('*') {
                return Vec::new();
            }
            vec![EndpointView {
                address: hostname.to_string(),
                port: target,
                health: Health::Healthy,
                pod: None,
                labels: Arc::new(BTreeMap::new()),
                workload: None,
                weight: None,
            }]
        }
        _ => spec
            .endpoints
            .iter()
            .filter_map(|e| {
                let address = e.address.clone().filter(|a| !a.is_empty() && !a.starts_with("unix://"))?;
                let port = e.ports.get(name).and_then(|p| u16::try_from(*p).ok()).filter(|p| *p != 0);
                let mut labels = e.labels.clone();
                // Istio's getTLSModeFromWorkloadEntry: an endpoint with a
                // ServiceAccount runs a sidecar unless its label says otherwise.
                if e.service_account.as_deref().is_some_and(|sa| !sa.is_empty()) {
                    labels.entry(TLS_MODE_LABEL.to_string()).or_insert_with(|| TLS_MODE_ISTIO.to_string());
                }
                Some(EndpointView {
                    address,
                    port: port.unwrap_or(target),
                    health: Health::Healthy,
                    pod: None,
                    labels: Arc::new(labels),
                    workload: None,
                    weight: e.weight.filter(|w| *w > 0),
                })
            })
            .collect(),
    };
    // DNS keeps the order written (DNS_ROUND_ROBIN takes the first);
    // EDS assignments list endpoints by address, as for Services.
    if entry.resolution == Resolution::Static {
        out.sort_by(|a, b| (&a.address, a.port).cmp(&(&b.address, b.port)));
        out.dedup_by(|a, b| a.address == b.address && a.port == b.port);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{Index, Pods, ServiceEntries, Services};
    use crate::model::mesh::MeshView;
    use crate::testing::objects;

    fn view_of(yamls: &[&str]) -> MeshView {
        let mut index = Index::new(Default::default());
        for yaml in yamls {
            index.apply::<ServiceEntries>(&objects::from_yaml(yaml));
        }
        index.apply::<Services>(&objects::service("reviews").port("http", 9080).build());
        MeshView::build(index.state())
    }

    const STATIC: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: db, namespace: vm, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  hosts: [db.example.com, DB2.example.com.]
  addresses: [192.168.10.0/24]
  ports:
  - {number: 5432, protocol: TCP, name: pg, targetPort: 15432}
  - {number: 8080, protocol: HTTP, name: http}
  location: MESH_INTERNAL
  resolution: STATIC
  endpoints:
  - {address: 10.1.0.2, ports: {pg: 6543}, labels: {version: v2}, serviceAccount: db}
  - {address: 10.1.0.1, labels: {version: v1}}
  subjectAltNames: ["spiffe://example.org/db"]
  exportTo: ["."]
"#;

    #[test]
    fn each_host_is_a_service_with_the_entrys_ports_and_endpoints() {
        let view = view_of(&[STATIC]);
        let db = view.service("db.example.com").expect("db.example.com");
        // Host names compare in lower case, without the trailing dot.
        let db2 = view.service("db2.example.com").expect("db2.example.com");
        assert_eq!(db.ports, db2.ports);
        let entry = db.entry.as_ref().expect("an entry");
        assert_eq!(entry.addresses, ["192.168.10.0/24"]);
        assert_eq!(entry.subject_alt_names, ["spiffe://example.org/db"]);
        assert!(!entry.is_external());
        assert_eq!(Discovery::of(Some(entry)), Discovery::Eds);
        assert_eq!(db.service_accounts, BTreeSet::from(["db".to_string()]));
        let pg = db.port(5432).expect("5432");
        assert_eq!(pg.protocol, Protocol::Tcp);
        // By address; the endpoint's own port for the port's name, else the targetPort.
        let endpoints: Vec<(&str, u16, Option<&String>)> =
            pg.endpoints.iter().map(|e| (e.address.as_str(), e.port, e.labels.get("version"))).collect();
        assert_eq!(
            endpoints,
            [("10.1.0.1", 15432, Some(&"v1".to_string())), ("10.1.0.2", 6543, Some(&"v2".to_string()))]
        );
        // The endpoint with a ServiceAccount is taken to run a sidecar, as in Istio.
        let tls_modes: Vec<Option<&String>> =
            pg.endpoints.iter().map(|e| e.labels.get(TLS_MODE_LABEL)).collect();
        assert_eq!(tls_modes, [None, Some(&TLS_MODE_ISTIO.to_string())]);
        assert_eq!(db.port(8080).expect("8080").protocol, Protocol::Http);
        assert_eq!(db.port(8080).expect("8080").endpoints[0].port, 8080);
        // exportTo "." keeps it in its namespace.
        assert!(db.export_to.visible_to("vm") && !db.export_to.visible_to("default"));
    }

    #[test]
    fn dns_without_endpoints_resolves_the_host_and_none_has_no_endpoints() {
        let dns = r#"
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: api, namespace: default}
spec:
  hosts: [api.example.com, "*.wild.example.com"]
  ports: [{number: 443, protocol: TLS, name: tls}]
  resolution: DNS
"#;
        let none = r#"
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: any, namespace: default}
spec:
  hosts: [any.example.com]
  ports: [{number: 80, protocol: HTTP, name: http}]
"#;
        let view = view_of(&[dns, none]);
        let api = view.service("api.example.com").expect("api");
        assert_eq!(Discovery::of(api.entry.as_ref()), Discovery::StrictDns);
        assert!(api.entry.as_ref().is_some_and(EntryView::is_external));
        let endpoints = &api.port(443).expect("443").endpoints;
        assert_eq!(endpoints.len(), 1);
        assert_eq!((endpoints[0].address.as_str(), endpoints[0].port), ("api.example.com", 443));
        assert!(view.service("*.wild.example.com").expect("wildcard").ports[0].endpoints.is_empty());
        let any = view.service("any.example.com").expect("any");
        assert_eq!(Discovery::of(any.entry.as_ref()), Discovery::OriginalDestination);
        assert!(any.ports[0].endpoints.is_empty());
    }

    #[test]
    fn a_workload_selector_takes_the_namespaces_matching_pods() {
        let selector = r#"
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: vms, namespace: vm}
spec:
  hosts: [vm.example.com]
  ports: [{number: 80, protocol: HTTP, name: http, targetPort: 8080}]
  location: MESH_INTERNAL
  resolution: STATIC
  workloadSelector: {labels: {app: vm}}
"#;
        let mut index = Index::new(Default::default());
        index.apply::<ServiceEntries>(&objects::from_yaml(selector));
        for (ns, name, ip, app) in
            [("vm", "a", "10.0.0.1", "vm"), ("vm", "b", "10.0.0.2", "other"), ("x", "c", "10.0.0.3", "vm")]
        {
            let mut pod = objects::pod(name).ip(ip).labels(&[("app", app)]).service_account("vm-sa").build();
            pod.metadata.namespace = Some(ns.to_string());
            index.apply::<Pods>(&pod);
        }
        let view = MeshView::build(index.state());
        let vm = view.service("vm.example.com").expect("vm");
        let endpoints: Vec<(&str, u16)> =
            vm.ports[0].endpoints.iter().map(|e| (e.address.as_str(), e.port)).collect();
        assert_eq!(endpoints, [("10.0.0.1", 8080)]);
        assert_eq!(vm.service_accounts, BTreeSet::from(["vm-sa".to_string()]));
    }

    #[test]
    fn a_kubernetes_service_keeps_its_host_and_the_oldest_entry_wins_a_shared_one() {
        let older = r#"
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: older, namespace: a, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  hosts: [shared.example.com, reviews.default.svc.cluster.local]
  ports: [{number: 80, protocol: HTTP, name: http}]
"#;
        let newer = r#"
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: newer, namespace: b, creationTimestamp: "2025-01-01T00:00:00Z"}
spec:
  hosts: [shared.example.com]
  ports: [{number: 81, protocol: HTTP, name: http}]
"#;
        let view = view_of(&[newer, older]);
        assert_eq!(view.service("shared.example.com").expect("shared").key.name, "older");
        let reviews = view.service("reviews.default.svc.cluster.local").expect("reviews");
        assert!(reviews.entry.is_none(), "the Service keeps its host");
    }
}

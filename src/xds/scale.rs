//! How a push scales: 2,000 simulated proxies in process, over the state
//! machines, with 1,000 services' worth of resources (a cluster, its
//! endpoints and a virtual host each), in 10 scopes of 200 proxies.
//! Ignored by default; run with
//! `cargo test --release --lib xds::scale -- --ignored --nocapture`.

use std::sync::Arc;
use std::time::Instant;

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route, route_action, route_match,
};
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};

use prost::Message;

use super::delta::DeltaStream;
use super::generator::{Generator, PushContext, ScopeCache};
use super::proxy::{Proxy, ProxyId};
use super::resource_type::ResourceType;
use super::snapshot::{Resource, ResourceSet, Resources, Snapshot};
use super::sotw::SotwStream;
use crate::index::{Changes, ClusterSnapshot, Index};

const SERVICES: usize = 1000;
const PROXIES: usize = 2000;
const SCOPES: usize = 10;
const PORTS: usize = 10;

fn socket(ip: String, port: u32) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip,
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

fn cluster_name(service: usize) -> String {
    format!("outbound|{}||svc-{service}.ns-{}.svc.cluster.local", 9080 + service % PORTS, service % SCOPES)
}

/// The outbound part every proxy of a scope shares; `generation` changes
/// one service's endpoints.
struct Outbound {
    clusters: Arc<ResourceSet>,
    endpoints: Arc<ResourceSet>,
    routes: Arc<ResourceSet>,
}

fn outbound(generation: u32) -> Outbound {
    let clusters = (0..SERVICES).map(|s| {
        let name = cluster_name(s);
        let c = Cluster {
            name: name.clone(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Eds as i32,
            )),
            connect_timeout: Some(crate::translate::seconds(10)),
            ..Default::default()
        };
        Arc::new(Resource::of(name, &c))
    });
    let endpoints = (0..SERVICES).map(|s| {
        let name = cluster_name(s);
        let bump = if s == 0 { generation } else { 0 };
        let cla = ClusterLoadAssignment {
            cluster_name: name.clone(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: (0..3)
                    .map(|i| LbEndpoint {
                        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                            address: Some(socket(format!("10.{}.{}.{}", s / 250, s % 250, i + bump), 9080)),
                            ..Default::default()
                        })),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        };
        Arc::new(Resource::of(name, &cla))
    });
    let routes = (0..PORTS).map(|p| {
        let services: Vec<usize> = (0..SERVICES).filter(|s| s % PORTS == p).collect();
        let config = RouteConfiguration {
            name: (9080 + p).to_string(),
            virtual_hosts: services
                .iter()
                .map(|s| VirtualHost {
                    name: format!("svc-{s}:{}", 9080 + p),
                    domains: vec![format!("svc-{s}"), format!("svc-{s}.ns-{}.svc.cluster.local", s % SCOPES)],
                    routes: vec![Route {
                        r#match: Some(RouteMatch {
                            path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                            ..Default::default()
                        }),
                        action: Some(route::Action::Route(RouteAction {
                            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster_name(
                                *s,
                            ))),
                            ..Default::default()
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        Arc::new(
            Resource::of(config.name.clone(), &config)
                .depending_on(services.iter().map(|s| cluster_name(*s))),
        )
    });
    Outbound {
        clusters: Arc::new(ResourceSet::new(clusters)),
        endpoints: Arc::new(ResourceSet::new(endpoints)),
        routes: Arc::new(ResourceSet::new(routes)),
    }
}

/// A generator like the translation's: the outbound part per scope, built
/// once per push, and a small part of the proxy's own.
struct Fake {
    generation: u32,
}

struct FakeContext {
    generation: u32,
    scopes: ScopeCache<String, Outbound>,
}

impl Generator for Fake {
    fn prepare(&self, _cluster: &ClusterSnapshot, _changes: &Changes) -> Arc<dyn PushContext> {
        Arc::new(FakeContext { generation: self.generation, scopes: ScopeCache::default() })
    }
}

impl PushContext for FakeContext {
    fn generate(&self, proxy: &Proxy) -> Snapshot {
        let scope = self.scopes.get_or_build(proxy.id.namespace.clone(), || outbound(self.generation));
        let inbound = Cluster { name: format!("inbound|9080||{}", proxy.id.pod), ..Default::default() };
        let own = Arc::new(ResourceSet::new([Arc::new(Resource::of(inbound.name.clone(), &inbound))]));
        Snapshot::new()
            .with_resources(ResourceType::Cluster, Resources::from_parts([scope.clusters.clone(), own]))
            .with_resources(ResourceType::Endpoint, Resources::from(scope.endpoints.clone()))
            .with_resources(ResourceType::Route, Resources::from(scope.routes.clone()))
    }
}

fn proxies() -> Vec<Proxy> {
    (0..PROXIES)
        .map(|i| Proxy {
            id: ProxyId {
                kind: super::proxy::ProxyKind::Sidecar,
                ip: format!("10.200.{}.{}", i / 250, i % 250).parse().expect("ip"),
                pod: format!("pod-{i}"),
                namespace: format!("ns-{}", i % SCOPES),
            },
            identity: super::auth::tests::identity(),
        })
        .collect()
}

fn generate_all(generator: &Fake, proxies: &[Proxy]) -> Vec<Arc<Snapshot>> {
    let context = generator.prepare(&Index::new(Default::default()).snapshot(), &Changes::everything());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = proxies.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let parts: Vec<_> = proxies
            .chunks(chunk)
            .map(|part| {
                let context = &context;
                scope.spawn(move || part.iter().map(|p| Arc::new(context.generate(p))).collect::<Vec<_>>())
            })
            .collect();
        parts.into_iter().flat_map(|h| h.join().expect("generation")).collect()
    })
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A SotW Envoy: asks for clusters, endpoints (all), routes (all), ACKs
/// everything, until quiet. Returns the bytes it received.
fn sotw_converge(stream: &mut SotwStream, first: bool) -> usize {
    let eds: Vec<String> = (0..SERVICES).map(cluster_name).collect();
    let rds: Vec<String> = (0..PORTS).map(|p| (9080 + p).to_string()).collect();
    let mut pending = if first {
        vec![
            DiscoveryRequest { type_url: ResourceType::Cluster.type_url().into(), ..Default::default() },
            DiscoveryRequest {
                type_url: ResourceType::Endpoint.type_url().into(),
                resource_names: eds.clone(),
                ..Default::default()
            },
            DiscoveryRequest {
                type_url: ResourceType::Route.type_url().into(),
                resource_names: rds.clone(),
                ..Default::default()
            },
        ]
    } else {
        Vec::new()
    };
    let mut responses = Vec::new();
    let mut bytes = 0;
    loop {
        for request in pending.drain(..) {
            responses.extend(stream.on_request(&request).expect("valid").responses);
        }
        if responses.is_empty() {
            return bytes;
        }
        for response in responses.drain(..) {
            bytes += response.resource_bytes();
            let names = match response.type_url.served() {
                Some(ResourceType::Endpoint) => eds.clone(),
                Some(ResourceType::Route) => rds.clone(),
                _ => Vec::new(),
            };
            pending.push(DiscoveryRequest {
                type_url: response.type_url.as_str().into(),
                version_info: response.version_info.clone(),
                response_nonce: response.nonce.clone(),
                resource_names: names,
                ..Default::default()
            });
        }
    }
}

fn delta_converge(stream: &mut DeltaStream, first: bool) -> usize {
    let eds: Vec<String> = (0..SERVICES).map(cluster_name).collect();
    let rds: Vec<String> = (0..PORTS).map(|p| (9080 + p).to_string()).collect();
    let subscribe = |resource_type: ResourceType, names: &[String]| DeltaDiscoveryRequest {
        type_url: resource_type.type_url().into(),
        resource_names_subscribe: names.to_vec(),
        ..Default::default()
    };
    let mut pending = if first {
        vec![
            subscribe(ResourceType::Cluster, &[]),
            subscribe(ResourceType::Endpoint, &eds),
            subscribe(ResourceType::Route, &rds),
        ]
    } else {
        Vec::new()
    };
    let mut responses = Vec::new();
    let mut bytes = 0;
    loop {
        for request in pending.drain(..) {
            responses.extend(stream.on_request(&request).expect("valid").responses);
        }
        if responses.is_empty() {
            return bytes;
        }
        for response in responses.drain(..) {
            bytes += response.resource_bytes();
            pending.push(DeltaDiscoveryRequest {
                type_url: response.type_url.as_str().into(),
                response_nonce: response.nonce.clone(),
                ..Default::default()
            });
        }
    }
}

#[test]
#[ignore = "a measurement: run with --ignored --nocapture, in release"]
fn a_full_push_to_2000_proxies() {
    let proxies = proxies();
    let rss0 = rss_kib();

    let started = Instant::now();
    let snapshots = generate_all(&Fake { generation: 0 }, &proxies);
    let generated = started.elapsed();
    let rss1 = rss_kib();
    let shared_bytes: usize = [ResourceType::Cluster, ResourceType::Endpoint, ResourceType::Route]
        .iter()
        .map(|t| snapshots[0].resources(*t).iter().map(|r| r.value().len()).sum::<usize>())
        .sum::<usize>()
        * SCOPES;
    let per_proxy: usize = snapshots[0].resource_types().map(|t| snapshots[0].resources(t).len()).sum();

    // Half the proxies on SotW, half on Delta.
    let half = PROXIES / 2;
    let started = Instant::now();
    let mut sotw: Vec<SotwStream> = snapshots[..half].iter().map(|s| SotwStream::new(s.clone())).collect();
    let mut delta: Vec<DeltaStream> = snapshots[half..].iter().map(|s| DeltaStream::new(s.clone())).collect();
    let mut wire = 0usize;
    for stream in &mut sotw {
        wire += sotw_converge(stream, true);
    }
    let rss_sotw = rss_kib();
    for stream in &mut delta {
        wire += delta_converge(stream, true);
    }
    let delivered = started.elapsed();
    let rss2 = rss_kib();

    // One endpoint change in a service every proxy sees. Each ACK is
    // decoded from its bytes, as the server reads it: a SotW ACK repeats
    // the names the proxy subscribed to, a Delta ACK names nothing.
    let started = Instant::now();
    let next = generate_all(&Fake { generation: 1 }, &proxies);
    let regenerated = started.elapsed();
    let sotw_names: Vec<String> = (0..SERVICES).map(cluster_name).collect();
    let (mut sotw_bytes, mut delta_bytes) = (0, 0);
    // The client's side (encoding each ACK) is timed apart and left out.
    let mut client = std::time::Duration::ZERO;
    let started = Instant::now();
    for (stream, snapshot) in sotw.iter_mut().zip(&next[..half]) {
        let step = stream.on_snapshot(snapshot.clone());
        sotw_bytes += step.responses.iter().map(|r| r.resource_bytes()).sum::<usize>();
        for response in step.responses {
            let encoding = Instant::now();
            let ack = DiscoveryRequest {
                type_url: response.type_url.as_str().into(),
                version_info: response.version_info.clone(),
                response_nonce: response.nonce.clone(),
                resource_names: sotw_names.clone(),
                ..Default::default()
            }
            .encode_to_vec();
            client += encoding.elapsed();
            stream.on_request(&DiscoveryRequest::decode(ack.as_slice()).expect("decodes")).expect("valid");
        }
    }
    let sotw_time = started.elapsed() - client;
    client = std::time::Duration::ZERO;
    let started = Instant::now();
    for (stream, snapshot) in delta.iter_mut().zip(&next[half..]) {
        let step = stream.on_snapshot(snapshot.clone());
        delta_bytes += step.responses.iter().map(|r| r.resource_bytes()).sum::<usize>();
        for response in step.responses {
            let encoding = Instant::now();
            let ack = DeltaDiscoveryRequest {
                type_url: response.type_url.as_str().into(),
                response_nonce: response.nonce.clone(),
                ..Default::default()
            }
            .encode_to_vec();
            client += encoding.elapsed();
            stream
                .on_request(&DeltaDiscoveryRequest::decode(ack.as_slice()).expect("decodes"))
                .expect("valid");
        }
    }
    let delta_time = started.elapsed() - client;
    let incremental = sotw_time + delta_time;

    println!("proxies: {PROXIES} ({SCOPES} scopes), services: {SERVICES}, resources per proxy: {per_proxy}");
    println!("distinct encoded resource bytes (shared): {:.1} MiB", shared_bytes as f64 / 1048576.0);
    println!("generate all snapshots: {generated:?}; RSS +{:.1} MiB", (rss1 - rss0) as f64 / 1024.0);
    println!(
        "full push over the state machines (1000 SotW + 1000 Delta, with ACKs): {delivered:?}; {:.1} MiB of resources in responses; RSS +{:.1} MiB for stream state (SotW +{:.1} MiB, Delta +{:.1} MiB)",
        wire as f64 / 1048576.0,
        rss2.saturating_sub(rss1) as f64 / 1024.0,
        rss_sotw.saturating_sub(rss1) as f64 / 1024.0,
        rss2.saturating_sub(rss_sotw) as f64 / 1024.0
    );
    println!(
        "one endpoint change: regenerate {regenerated:?}; deliver + ACK {incremental:?} (SotW {sotw_time:?} for {half} proxies, Delta {delta_time:?} for {half}, ACKs decoded from their bytes; encoding them, the client's work, left out); SotW sends {:.1} KiB/proxy, Delta {:.2} KiB/proxy",
        sotw_bytes as f64 / 1024.0 / half as f64,
        delta_bytes as f64 / 1024.0 / half as f64
    );
    assert_eq!(per_proxy, 2 * SERVICES + 1 + PORTS);
    // Both protocols send only the changed ClusterLoadAssignment (under
    // 1 KiB), not the 1,000 a proxy subscribed to (over 100 KiB).
    assert!(sotw_bytes < half * 1024, "SotW sends only the changed endpoints");
    assert!(delta_bytes < half * 1024, "Delta sends only the changed endpoints");
}

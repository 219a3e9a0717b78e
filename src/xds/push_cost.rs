//! What one push costs the controller with the real generator: 1,000
//! Services (3 endpoints each, one port), 2,000 pods in their namespace
//! over 4 ServiceAccounts, a DestinationRule with two subsets and an 80/20
//! VirtualService on the first Service: the objects `make bench-xds`
//! creates. Each kind of change is made 5 times; the figures are the
//! median time to prepare the push (the mesh view, what the changes
//! reach) and to generate the snapshots of the proxies it reaches, on one
//! thread. Ignored by default (it prints figures and asserts only what a
//! push must do); run with
//! `cargo test --release --lib xds::push_cost -- --ignored --nocapture`.

use std::time::{Duration, Instant};

use super::auth::tests::identity;
use super::generator::Generator;
use super::mesh::MeshGenerator;
use super::proxy::{Proxy, ProxyId};
use crate::index::{Changes, DestinationRules, EndpointSlices, Index, Pods, Services, VirtualServices};
use crate::testing::objects::{self, endpoint_slice, from_yaml};

const SERVICES: usize = 1000;
const PROXIES: usize = 2000;
const NAMESPACE: &str = "bench";

fn service_ip(i: usize) -> String {
    format!("10.96.{}.{}", i / 250, i % 250 + 1)
}

fn slice(service: usize, generation: usize) -> k8s_openapi::api::discovery::v1::EndpointSlice {
    let ips: Vec<String> = (0..3)
        .map(|e| format!("10.200.{}.{}", service / 80, (service % 80) * 3 + e + generation % 7))
        .collect();
    let endpoints: Vec<(&str, Option<&str>)> = ips.iter().map(|ip| (ip.as_str(), None)).collect();
    endpoint_slice(NAMESPACE, &format!("svc-{service:04}"), &format!("svc-{service:04}-x"), 9080, &endpoints)
}

fn pod(i: usize, version: &str) -> k8s_openapi::api::core::v1::Pod {
    let mut pod = objects::pod(&format!("pod-{i:05}"))
        .labels(&[("app", "load"), ("version", version)])
        .ip(&format!("10.244.{}.{}", i / 250, i % 250 + 1))
        .service_account(&format!("sa-{}", i % 4))
        .build();
    pod.metadata.namespace = Some(NAMESPACE.into());
    pod
}

fn virtual_service(weight: u32) -> kube::api::DynamicObject {
    from_yaml(&format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: svc-0000, namespace: {NAMESPACE}}}\n\
         spec:\n  hosts: [svc-0000]\n  http:\n  - route:\n    - destination: {{host: svc-0000, subset: v1}}\n      weight: {weight}\n\
         \x20   - destination: {{host: svc-0000, subset: v2}}\n      weight: {}\n",
        100 - weight
    ))
}

fn mesh() -> Index {
    let mut index = Index::new(Default::default());
    for i in 0..SERVICES {
        let service = objects::service(&format!("svc-{i:04}"))
            .namespace(NAMESPACE)
            .cluster_ip(&service_ip(i))
            .port("http", 9080);
        index.apply::<Services>(&service.build());
        index.apply::<EndpointSlices>(&slice(i, 0));
    }
    for i in 0..PROXIES {
        index.apply::<Pods>(&pod(i, "v1"));
    }
    index.apply::<DestinationRules>(&destination_rule(1000));
    index.apply::<VirtualServices>(&virtual_service(80));
    index
}

/// svc-0000's subsets v1 and v2, with a connection limit.
fn destination_rule(max_connections: u32) -> kube::api::DynamicObject {
    from_yaml(&format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: svc-0000, namespace: {NAMESPACE}}}\n\
         spec:\n  host: svc-0000\n  trafficPolicy: {{connectionPool: {{tcp: {{maxConnections: {max_connections}}}}}}}\n\
         \x20 subsets:\n  - {{name: v1, labels: {{version: v1}}}}\n  - {{name: v2, labels: {{version: v2}}}}\n"
    ))
}

fn proxies() -> Vec<Proxy> {
    (0..PROXIES)
        .map(|i| {
            let id = format!(
                "sidecar~10.244.{}.{}~pod-{i:05}.{NAMESPACE}~{NAMESPACE}.svc.cluster.local",
                i / 250,
                i % 250 + 1
            );
            Proxy { id: ProxyId::parse(&id).expect("a node id"), identity: identity() }
        })
        .collect()
}

/// One push from the index's changes, or as if everything had changed
/// (what every push did before pushes followed changes): (prepare,
/// generate, proxies reached).
fn push(
    generator: &MeshGenerator,
    index: &mut Index,
    proxies: &[Proxy],
    everything: bool,
) -> (Duration, Duration, usize) {
    let started = Instant::now();
    let mut changes = index.take_changes();
    if everything {
        changes = Changes::everything();
    }
    let context = generator.prepare(&index.snapshot(), &changes);
    let prepared = started.elapsed();
    let started = Instant::now();
    let mut reached = 0;
    for proxy in proxies.iter().filter(|p| context.affects(p)) {
        std::hint::black_box(context.generate(proxy));
        reached += 1;
    }
    (prepared, started.elapsed(), reached)
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

#[test]
#[ignore = "prints figures: cargo test --release --lib xds::push_cost -- --ignored --nocapture"]
fn push_cost() {
    let mut index = mesh();
    let proxies = proxies();
    // Two generators over the same index, one following the changes, one
    // told each time that everything changed; each push of the one is
    // followed by the same push of the other, so both see the same state.
    let (following, rebuilding) = (MeshGenerator::default(), MeshGenerator::default());
    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1e3);
    let mut measure = |what: &str, expect_reached: usize, change: &mut dyn FnMut(&mut Index, usize)| {
        let (mut prepare, mut generate, mut whole) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..5 {
            change(&mut index, round);
            let (p, g, reached) = push(&following, &mut index, &proxies, false);
            assert_eq!(reached, expect_reached, "{what}: proxies reached");
            prepare.push(p);
            generate.push(g);
            let (p, g, _) = push(&rebuilding, &mut index, &proxies, true);
            whole.push(p + g);
        }
        let (p, g, w) = (median(prepare), median(generate), median(whole));
        println!(
            "push_cost: {what}: prepare {}, generate {} for {expect_reached} proxies, total {}; \
             rebuilding everything {} ({:.1}x)",
            ms(p),
            ms(g),
            ms(p + g),
            ms(w),
            w.as_secs_f64() / (p + g).as_secs_f64().max(1e-9)
        );
    };
    let all = proxies.len();
    measure("every object new (the first push; then a Service added)", all, &mut |index, round| {
        if round > 0 {
            let service = objects::service(&format!("extra-{round}")).namespace(NAMESPACE).port("http", 9080);
            index.apply::<Services>(&service.cluster_ip(&format!("10.97.0.{round}")).build());
        }
    });
    measure("a VirtualService's weights", all, &mut |index, round| {
        index.apply::<VirtualServices>(&virtual_service(if round % 2 == 0 { 20 } else { 80 }));
    });
    measure("a DestinationRule's connection limit", all, &mut |index, round| {
        index.apply::<DestinationRules>(&destination_rule(1001 + round as u32));
    });
    measure("one EndpointSlice", all, &mut |index, round| {
        index.apply::<EndpointSlices>(&slice(1 + round, 1 + round));
    });
    measure("one pod's labels", 1, &mut |index, round| {
        index.apply::<Pods>(&pod(7, if round % 2 == 0 { "v2" } else { "v1" }));
    });
    measure("nothing", 0, &mut |_, _| {});
}

#[test]
#[ignore = "prints figures: cargo test --release --lib xds::push_cost -- --ignored --nocapture"]
fn snapshot_bytes_with_and_without_metrics() {
    use crate::model::MeshConfig;
    use crate::model::telemetry::Settings;
    use crate::xds::resource_type::ResourceType;
    let proxy = &proxies()[0];
    let mut totals = Vec::new();
    for metrics in [false, true] {
        let telemetry = Settings { metrics, ..Settings::default() };
        let index = mesh().with_mesh_config(MeshConfig { telemetry, ..MeshConfig::default() });
        let snapshot =
            MeshGenerator::default().prepare(&index.snapshot(), &Changes::everything()).generate(proxy);
        let bytes = |t: ResourceType| snapshot.resources(t).iter().map(|r| r.value().len()).sum::<usize>();
        let per_type: Vec<String> =
            ResourceType::ALL.iter().map(|t| format!("{t} {:.1} KiB", bytes(*t) as f64 / 1024.0)).collect();
        let total: usize = ResourceType::ALL.iter().map(|t| bytes(*t)).sum();
        println!(
            "snapshot bytes, {SERVICES} Services, metrics {}: {} (total {:.1} KiB)",
            if metrics { "on" } else { "off" },
            per_type.join(", "),
            total as f64 / 1024.0
        );
        totals.push(total);
    }
    assert!(totals[1] > totals[0], "the metrics' loggers are in the listeners");
}

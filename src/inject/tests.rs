//! Injection as a pure function, checked against golden files
//! (`MESH_UPDATE_GOLDEN=1 cargo test --lib inject` rewrites them; review the diff).

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use pretty_assertions::assert_eq;

use super::*;

const MESH_NS: &str = "mesh-system";

fn injector() -> Injector {
    Injector::new(InjectArgs::default(), MESH_NS)
}

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/inject/testdata").join(name)
}

fn read_pod(name: &str) -> Pod {
    let text = std::fs::read_to_string(testdata(name)).expect("test pod");
    serde_yaml_ng::from_str(&text).expect("a pod")
}

fn enabled() -> BTreeMap<String, String> {
    BTreeMap::from([(NAMESPACE_LABEL.to_string(), "enabled".to_string())])
}

fn injected(pod: &Pod, namespace: &str) -> Pod {
    let labels = enabled();
    let ns = NamespaceInfo { name: namespace, labels: Some(&labels) };
    match injector().inject(pod, &ns).expect("injects") {
        Outcome::Injected(patch) => patched(pod, &patch).expect("the patch applies"),
        Outcome::Skipped(why) => panic!("skipped: {why}"),
    }
}

/// Compares with the golden file, or writes it when asked to.
fn golden(name: &str, pod: &Pod) {
    let mut value = serde_json::to_value(pod).unwrap();
    // The bootstrap is checked on its own below; in YAML it is one long line.
    if let Some(b) =
        value.pointer_mut(&format!("/metadata/annotations/{}", BOOTSTRAP_ANNOTATION.replace('/', "~1")))
    {
        *b = serde_json::Value::String("<bootstrap>".into());
    }
    let actual = serde_yaml_ng::to_string(&value).unwrap();
    let path = testdata(&format!("{name}.golden.yaml"));
    if std::env::var_os("MESH_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} missing: run with MESH_UPDATE_GOLDEN=1", path.display()));
    assert_eq!(expected, actual, "{} differs", path.display());
}

#[test]
fn a_bookinfo_pod_matches_its_golden_file() {
    let pod = injected(&read_pod("details.yaml"), "default");
    golden("details", &pod);
}

#[test]
fn every_annotation_shows_in_the_golden_file() {
    let pod = injected(&read_pod("annotated.yaml"), "shop");
    golden("annotated", &pod);
    // Our init containers come before the pod's own.
    let names: Vec<_> = pod.spec.unwrap().init_containers.unwrap().into_iter().map(|c| c.name).collect();
    assert_eq!(names, ["istio-init", "istio-proxy", "migrate"]);
}

#[test]
fn the_bootstrap_annotation_is_the_bootstrap() {
    let pod = injected(&read_pod("details.yaml"), "default");
    let text = &pod.metadata.annotations.unwrap()[BOOTSTRAP_ANNOTATION];
    let parsed: serde_json::Value = serde_json::from_str(text).unwrap();
    assert_eq!(parsed, bootstrap::bootstrap(&InjectArgs::default().proxy_xds_address));
}

#[test]
fn injecting_an_injected_pod_changes_nothing() {
    let once = injected(&read_pod("details.yaml"), "default");
    let labels = enabled();
    let ns = NamespaceInfo { name: "default", labels: Some(&labels) };
    let twice = injector().inject(&once, &ns).unwrap();
    assert_eq!(twice, Outcome::Skipped(Skip::AlreadyInjected));
    // A proxy container alone (annotation stripped) is enough to tell.
    let mut stripped = once.clone();
    stripped.metadata.annotations.as_mut().unwrap().remove(annotations::STATUS);
    assert_eq!(injector().inject(&stripped, &ns).unwrap(), twice);
}

fn decision(
    pod_label: Option<&str>,
    pod_annotation: Option<&str>,
    ns_label: Option<&str>,
    ns: &str,
) -> Option<Skip> {
    let mut pod = read_pod("details.yaml");
    if let Some(v) = pod_label {
        pod.metadata.labels.get_or_insert_default().insert(annotations::INJECT.into(), v.into());
    }
    if let Some(v) = pod_annotation {
        pod.metadata.annotations.get_or_insert_default().insert(annotations::INJECT.into(), v.into());
    }
    let labels: BTreeMap<String, String> =
        ns_label.map(|v| (NAMESPACE_LABEL.to_string(), v.to_string())).into_iter().collect();
    skip_reason(&pod, &NamespaceInfo { name: ns, labels: Some(&labels) }, MESH_NS)
}

#[test]
fn who_gets_injected() {
    assert_eq!(decision(None, None, Some("enabled"), "default"), None);
    assert_eq!(decision(None, None, None, "default"), Some(Skip::NotEnabled));
    assert_eq!(decision(Some("false"), None, Some("enabled"), "default"), Some(Skip::OptedOut));
    assert_eq!(decision(None, Some("false"), Some("enabled"), "default"), Some(Skip::OptedOut));
    assert_eq!(decision(Some("true"), None, None, "default"), None, "a pod may opt in");
    assert_eq!(decision(None, Some("true"), None, "default"), None);
    assert_eq!(decision(Some("true"), None, Some("disabled"), "default"), Some(Skip::NotEnabled));
    assert_eq!(decision(None, None, Some("enabled"), "kube-system"), Some(Skip::SystemNamespace));
    assert_eq!(decision(Some("true"), None, Some("enabled"), MESH_NS), Some(Skip::SystemNamespace));
}

#[test]
fn host_network_pods_are_left_alone() {
    let mut pod = read_pod("details.yaml");
    pod.spec.as_mut().unwrap().host_network = Some(true);
    let labels = enabled();
    assert_eq!(
        skip_reason(&pod, &NamespaceInfo { name: "default", labels: Some(&labels) }, MESH_NS),
        Some(Skip::HostNetwork)
    );
}

#[test]
fn a_bad_annotation_refuses_the_pod_naming_it() {
    let mut pod = read_pod("details.yaml");
    pod.metadata.annotations.get_or_insert_default().insert(annotations::PROXY_CPU.into(), "lots".into());
    let labels = enabled();
    let err = injector()
        .inject(&pod, &NamespaceInfo { name: "default", labels: Some(&labels) })
        .unwrap_err()
        .to_string();
    assert!(err.contains("sidecar.istio.io/proxyCPU") && err.contains("\"lots\""), "{err}");
}

#[test]
fn a_volume_name_clash_is_an_error_not_a_broken_pod() {
    let mut pod = read_pod("details.yaml");
    pod.spec.as_mut().unwrap().volumes =
        Some(vec![k8s_openapi::api::core::v1::Volume { name: "istio-token".into(), ..Default::default() }]);
    let labels = enabled();
    let err = injector().inject(&pod, &NamespaceInfo { name: "default", labels: Some(&labels) }).unwrap_err();
    assert!(err.to_string().contains("istio-token"), "{err}");
}

/// The patch only adds: everything the pod had is still there, unchanged
/// (these pods have no probes to rewrite).
#[test]
fn the_patch_only_adds() {
    for (file, ns) in [("details.yaml", "default"), ("annotated.yaml", "shop")] {
        let before = read_pod(file);
        let after = injected(&before, ns);
        let (b, a) = (before.spec.clone().unwrap(), after.spec.clone().unwrap());
        assert_eq!(b.containers, a.containers, "{file}");
        let own_init = &a.init_containers.unwrap()[2..];
        assert_eq!(b.init_containers.unwrap_or_default(), own_init, "{file}");
        let volumes = a.volumes.unwrap();
        assert_eq!(
            b.volumes.clone().unwrap_or_default(),
            volumes[..b.volumes.map_or(0, |v| v.len())],
            "{file}"
        );
        for (k, v) in before.metadata.annotations.iter().flatten() {
            assert_eq!(after.metadata.annotations.as_ref().unwrap().get(k), Some(v), "{file}: {k}");
        }
        // One label is added: Istio's mark of a pod with a sidecar, which
        // tells clients to send it mutual TLS.
        let mut labels = before.metadata.labels.clone().unwrap_or_default();
        labels.insert("security.istio.io/tlsMode".into(), "istio".into());
        assert_eq!(Some(labels), after.metadata.labels, "{file}");
    }
}

/// kube-inject on a Deployment gives the template what the webhook gives the pod.
#[test]
fn kube_inject_matches_the_webhook() {
    let pod = read_pod("details.yaml");
    let webhook = serde_json::to_value(injected(&pod, "default")).unwrap();
    let deployment = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: details-v1, namespace: default}}\n\
         spec:\n  selector: {{matchLabels: {{app: details}}}}\n  template:\n{}",
        serde_yaml_ng::to_string(&serde_json::json!({
            "metadata": serde_json::to_value(&pod.metadata).unwrap(),
            "spec": serde_json::to_value(&pod.spec).unwrap(),
        }))
        .unwrap()
        .lines()
        .map(|l| format!("    {l}\n"))
        .collect::<String>()
    );
    let service = "apiVersion: v1\nkind: Service\nmetadata: {name: details}\nspec: {ports: [{port: 9080}]}\n";
    let text = format!("{service}---\n{deployment}");
    let (out, reports) = offline::inject_yaml(&text, &injector()).unwrap();
    assert_eq!(reports, [offline::Report { object: "Deployment default/details-v1".into(), injected: true }]);
    let docs: Vec<serde_json::Value> = serde_yaml_ng::Deserializer::from_str(&out)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    assert_eq!(docs[0], serde_yaml_ng::from_str::<serde_json::Value>(service).unwrap(), "others untouched");
    let template = &docs[1]["spec"]["template"];
    assert_eq!(template["metadata"], webhook["metadata"]);
    assert_eq!(template["spec"], webhook["spec"]);

    // And running it again changes nothing.
    let (again, reports) = offline::inject_yaml(&out, &injector()).unwrap();
    assert_eq!(again, out);
    assert!(!reports[0].injected);
}

#[test]
fn kube_inject_keeps_fields_it_does_not_know() {
    let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  futureField: 7\n  containers: [{name: app, image: busybox}]\n";
    let (out, _) = offline::inject_yaml(text, &injector()).unwrap();
    assert!(out.contains("futureField: 7"), "{out}");
    assert!(out.contains("istio-proxy"), "{out}");
}

#[test]
fn kube_inject_names_the_object_it_cannot_inject() {
    let text = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\nspec:\n  template:\n    metadata:\n      annotations: {sidecar.istio.io/logLevel: loud}\n    spec: {containers: [{name: app, image: busybox}]}\n";
    let err = offline::inject_yaml(text, &injector()).unwrap_err().to_string();
    assert!(err.contains("Deployment shop/web") && err.contains("logLevel"), "{err}");
}

/// The pod's containers' probes after injection, by container and field.
fn probes_of(pod: &Pod) -> BTreeMap<(String, &'static str), k8s_openapi::api::core::v1::Probe> {
    let mut out = BTreeMap::new();
    for c in &pod.spec.as_ref().unwrap().containers {
        for kind in probes::ProbeKind::ALL {
            let probe = match kind {
                probes::ProbeKind::Readiness => &c.readiness_probe,
                probes::ProbeKind::Liveness => &c.liveness_probe,
                probes::ProbeKind::Startup => &c.startup_probe,
            };
            if let Some(p) = probe {
                out.insert((c.name.clone(), kind.field()), p.clone());
            }
        }
    }
    out
}

fn proxy_env(pod: &Pod, name: &str) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let proxy = spec.init_containers.iter().flatten().find(|c| c.name == PROXY_CONTAINER)?;
    proxy.env.iter().flatten().find(|e| e.name == name)?.value.clone()
}

fn bootstrap_of(pod: &Pod) -> serde_json::Value {
    serde_json::from_str(&pod.metadata.annotations.as_ref().unwrap()[BOOTSTRAP_ANNOTATION]).unwrap()
}

#[test]
fn a_pod_with_probes_matches_its_golden_file() {
    let pod = injected(&read_pod("probes.yaml"), "shop");
    golden("probes", &pod);
}

#[test]
fn probes_are_rewritten_to_envoy_keeping_their_timing() {
    let before = read_pod("probes.yaml");
    let after = injected(&before, "shop");
    let (old, new) = (probes_of(&before), probes_of(&after));
    let rewritten = [
        ("web", "readinessProbe", "/app-health/web/readyz"),
        ("web", "livenessProbe", "/app-health/web/livez"),
        ("api", "readinessProbe", "/app-health/api/readyz"),
        ("api", "livenessProbe", "/app-health/api/livez"),
    ];
    for (container, field, path) in rewritten {
        let key = (container.to_string(), field);
        let (was, now) = (&old[&key], &new[&key]);
        let http = now.http_get.as_ref().unwrap_or_else(|| panic!("{key:?}: {now:?}"));
        assert_eq!(http.port, IntOrString::Int(15020), "{key:?}");
        assert_eq!(http.path.as_deref(), Some(path), "{key:?}");
        assert_eq!(http.scheme.as_deref(), Some("HTTP"), "{key:?}");
        assert!(http.http_headers.is_none() && http.host.is_none(), "{key:?}: {http:?}");
        assert!(now.tcp_socket.is_none() && now.grpc.is_none() && now.exec.is_none(), "{key:?}");
        let timing = |p: &k8s_openapi::api::core::v1::Probe| {
            (
                p.initial_delay_seconds,
                p.period_seconds,
                p.timeout_seconds,
                p.success_threshold,
                p.failure_threshold,
            )
        };
        assert_eq!(timing(now), timing(was), "{key:?}");
    }
    assert_eq!(new[&("web".to_string(), "readinessProbe")].period_seconds, Some(3));
    // Exec runs in the container and another host is not the pod: untouched.
    for key in [("web".to_string(), "startupProbe"), ("api".to_string(), "startupProbe")] {
        assert_eq!(old[&key], new[&key], "{key:?}");
    }
    // Nothing else of the containers changed.
    let without_probes = |pod: &Pod| {
        let mut containers = pod.spec.as_ref().unwrap().containers.clone();
        for c in &mut containers {
            (c.readiness_probe, c.liveness_probe, c.startup_probe) = (None, None, None);
        }
        containers
    };
    assert_eq!(without_probes(&before), without_probes(&after));
}

#[test]
fn the_originals_are_recorded_on_the_sidecar_with_named_ports_resolved() {
    let pod = injected(&read_pod("probes.yaml"), "shop");
    let recorded: serde_json::Value =
        serde_json::from_str(&proxy_env(&pod, probes::PROBERS_ENV).expect("ISTIO_KUBE_APP_PROBERS")).unwrap();
    assert_eq!(
        recorded,
        serde_json::json!({
            "/app-health/web/readyz": {
                "httpGet": {"path": "/health?full=1", "port": 9080, "httpHeaders": [{"name": "X-Probe", "value": "100%"}]},
                "timeoutSeconds": 4,
            },
            "/app-health/web/livez": {"tcpSocket": {"port": 9080}, "timeoutSeconds": 1},
            "/app-health/api/readyz": {"grpc": {"port": 9090, "service": "ready"}, "timeoutSeconds": 1},
            "/app-health/api/livez": {
                "httpGet": {"scheme": "HTTPS", "port": 8443, "httpHeaders": [{"name": "Host", "value": "api.shop.example"}]},
                "timeoutSeconds": 1,
            },
        })
    );
}

#[test]
fn the_bootstrap_serves_each_rewritten_probe() {
    let pod = injected(&read_pod("probes.yaml"), "shop");
    let bootstrap = bootstrap_of(&pod);
    let listeners = bootstrap["static_resources"]["listeners"].as_array().unwrap();
    let health = listeners.iter().find(|l| l["name"] == "app-health").expect("the app-health listener");
    assert_eq!(health["address"]["socket_address"]["port_value"], 15020);
    let hcm = &health["filter_chains"][0]["filters"][0]["typed_config"];
    let routes = hcm["route_config"]["virtual_hosts"][0]["routes"].as_array().unwrap();
    let paths: Vec<_> = routes.iter().map(|r| r["match"]["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["/app-health/web/readyz", "/app-health/api/livez"], "httpGet probes are forwarded");
    assert_eq!(routes[0]["route"]["prefix_rewrite"], "/health?full=1");
    assert_eq!(routes[0]["route"]["timeout"], "4s");
    assert_eq!(routes[0]["route"]["host_rewrite_header"], bootstrap::PROBE_HOST_HEADER);
    let added = &routes[0]["request_headers_to_add"];
    assert_eq!(added[0]["header"], serde_json::json!({"key": "X-Probe", "value": "100%%"}));
    assert_eq!(added[1]["header"]["value"], "%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%:9080");
    assert_eq!(routes[1]["route"]["host_rewrite_literal"], "api.shop.example");

    // tcpSocket and grpc: the health_check filter, over a cluster Envoy checks.
    let checked: Vec<_> = hcm["http_filters"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["name"] == "envoy.filters.http.health_check")
        .map(|f| {
            let c = &f["typed_config"];
            assert_eq!(c["pass_through_mode"], false);
            (
                c["headers"][0]["string_match"]["exact"].as_str().unwrap(),
                c["cluster_min_healthy_percentages"].clone(),
            )
        })
        .collect();
    assert_eq!(
        checked,
        [
            ("/app-health/web/livez", serde_json::json!({"app-health|web|livez": {"value": 100.0}})),
            ("/app-health/api/readyz", serde_json::json!({"app-health|api|readyz": {"value": 100.0}})),
        ]
    );
    let clusters = bootstrap["static_resources"]["clusters"].as_array().unwrap();
    let cluster =
        |name: &str| clusters.iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("{name}"));
    let tcp = cluster("app-health|web|livez");
    let endpoint = &tcp["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"];
    assert_eq!(endpoint["socket_address"], serde_json::json!({"address": "127.0.0.1", "port_value": 9080}));
    let check = &tcp["health_checks"][0];
    assert_eq!((check["interval"].as_str(), check["no_traffic_interval"].as_str()), (Some("7s"), Some("7s")));
    assert_eq!(check["tcp_health_check"], serde_json::json!({}));
    let grpc = cluster("app-health|api|readyz");
    let check = &grpc["health_checks"][0]["grpc_health_check"];
    assert_eq!(check["service_name"], "ready");
    assert_eq!(check["authority"], "127.0.0.1:9090");
    let https = cluster("app-health|api|livez");
    assert_eq!(https["transport_socket"]["name"], "envoy.transport_sockets.tls");
    assert!(https["transport_socket"]["typed_config"].get("common_tls_context").is_none(), "not verified");
}

#[test]
fn rewriting_is_off_with_istios_annotation() {
    let mut pod = read_pod("probes.yaml");
    pod.metadata
        .annotations
        .get_or_insert_default()
        .insert(annotations::REWRITE_PROBES.into(), "false".into());
    let after = injected(&pod, "shop");
    assert_eq!(pod.spec.as_ref().unwrap().containers, after.spec.as_ref().unwrap().containers);
    assert_eq!(proxy_env(&after, probes::PROBERS_ENV), None);
    assert_eq!(bootstrap_of(&after), bootstrap::bootstrap(&InjectArgs::default().proxy_xds_address));
}

#[test]
fn a_pod_without_probes_keeps_the_plain_bootstrap_and_no_record() {
    let before = read_pod("details.yaml");
    let after = injected(&before, "default");
    assert_eq!(before.spec.as_ref().unwrap().containers, after.spec.as_ref().unwrap().containers);
    assert_eq!(proxy_env(&after, probes::PROBERS_ENV), None);
    let listeners = bootstrap_of(&after)["static_resources"]["listeners"].clone();
    assert!(listeners.as_array().unwrap().iter().all(|l| l["name"] != "app-health"), "{listeners}");
}

#[test]
fn probes_that_cannot_be_resolved_or_reach_the_sidecar_stay_as_they_are() {
    let mut pod = read_pod("details.yaml");
    let c = &mut pod.spec.as_mut().unwrap().containers[0];
    c.readiness_probe = Some(k8s_openapi::api::core::v1::Probe {
        http_get: Some(k8s_openapi::api::core::v1::HTTPGetAction {
            port: IntOrString::String("nope".into()),
            ..Default::default()
        }),
        ..Default::default()
    });
    c.liveness_probe = Some(k8s_openapi::api::core::v1::Probe {
        tcp_socket: Some(k8s_openapi::api::core::v1::TCPSocketAction {
            port: IntOrString::Int(15021),
            ..Default::default()
        }),
        ..Default::default()
    });
    let after = injected(&pod, "default");
    assert_eq!(pod.spec.as_ref().unwrap().containers, after.spec.as_ref().unwrap().containers);
    assert_eq!(proxy_env(&after, probes::PROBERS_ENV), None);
}

#[test]
fn a_probe_envoy_cannot_forward_refuses_the_pod_naming_it() {
    let mut pod = read_pod("probes.yaml");
    let web = &mut pod.spec.as_mut().unwrap().containers[0];
    web.readiness_probe.as_mut().unwrap().http_get.as_mut().unwrap().path = Some("/health\n".into());
    let labels = enabled();
    let err = injector().inject(&pod, &NamespaceInfo { name: "shop", labels: Some(&labels) }).unwrap_err();
    let err = err.to_string();
    assert!(
        err.contains("container web")
            && err.contains("readinessProbe")
            && err.contains(annotations::REWRITE_PROBES),
        "{err}"
    );
}

/// Envoy loads the bootstrap of a pod with every kind of probe.
#[test]
fn envoy_accepts_the_bootstrap_with_probe_routes() {
    let pod = injected(&read_pod("probes.yaml"), "shop");
    let dir = crate::testing::TempDir::new("probes-validate");
    let mut bootstrap = bootstrap_of(&pod);
    // The files the pod mounts, here in a folder of the test's.
    let grpc = &mut bootstrap["dynamic_resources"]["ads_config"]["grpc_services"][0]["google_grpc"];
    grpc["channel_credentials"]["ssl_credentials"]["root_certs"]["filename"] =
        serde_json::json!(dir.write("root-cert.pem", "not read when validating"));
    grpc["call_credentials"][0]["from_plugin"]["typed_config"]["secret_data"]["filename"] =
        serde_json::json!(dir.write("istio-token", "token"));
    let path = dir.write("envoy.json", bootstrap.to_string());
    let out = std::process::Command::new(crate::testing::envoy_binary())
        .args(["--mode", "validate", "--log-level", "warn", "-c"])
        .arg(&path)
        .output()
        .expect("run envoy");
    assert!(
        out.status.success(),
        "Envoy refused the bootstrap:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Not vacuous: an active health check without its interval is refused.
    let clusters = bootstrap["static_resources"]["clusters"].as_array_mut().unwrap();
    let tcp = clusters.iter_mut().find(|c| c["name"] == "app-health|web|livez").unwrap();
    tcp["health_checks"][0].as_object_mut().unwrap().remove("interval");
    let path = dir.write("broken.json", bootstrap.to_string());
    let out = std::process::Command::new(crate::testing::envoy_binary())
        .args(["--mode", "validate", "--log-level", "warn", "-c"])
        .arg(&path)
        .output()
        .expect("run envoy");
    assert!(!out.status.success(), "Envoy accepted a health check without an interval");
}

/// A port free on loopback now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One GET with HTTP/1.1: the status, or None when nothing answered.
fn status_of(port: u16, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5))).ok()?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: kube-probe/1.35\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

/// Waits (up to 20 s) until `path` answers `want`, then checks it keeps
/// answering it for `hold` (so a one-off answer does not pass).
fn answers(envoy: &mut Envoy, port: u16, path: &str, want: u16, hold: std::time::Duration) {
    let start = std::time::Instant::now();
    let mut last = None;
    while start.elapsed() < std::time::Duration::from_secs(20) {
        assert!(envoy.child.try_wait().unwrap().is_none(), "Envoy exited:\n{}", envoy.log());
        last = status_of(port, path);
        if last == Some(want) {
            let held = std::time::Instant::now();
            while held.elapsed() < hold {
                assert_eq!(status_of(port, path), Some(want), "{path} changed its answer");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("{path}: wanted {want}, last answer {last:?}; Envoy's log:\n{}", envoy.log());
}

/// Envoy, killed when dropped.
struct Envoy {
    child: std::process::Child,
    log: PathBuf,
}

impl Envoy {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A stand-in app on loopback: answers every GET with `status`, and keeps
/// the last request it got. Stops when dropped.
struct App {
    port: u16,
    status: std::sync::Arc<std::sync::atomic::AtomicU16>,
    last_request: std::sync::Arc<std::sync::Mutex<String>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl App {
    fn start() -> Self {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let app = App {
            port: listener.local_addr().unwrap().port(),
            status: Default::default(),
            last_request: Default::default(),
            stop: Default::default(),
        };
        app.status.store(200, Ordering::SeqCst);
        let (status, last, stop) = (app.status.clone(), app.last_request.clone(), app.stop.clone());
        std::thread::spawn(move || {
            // Bounded: the test is over long before.
            let start = std::time::Instant::now();
            while !stop.load(Ordering::SeqCst) && start.elapsed() < std::time::Duration::from_secs(120) {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    continue;
                };
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(2)));
                let mut buf = [0u8; 4096];
                let n = conn.read(&mut buf).unwrap_or(0);
                *last.lock().unwrap() = String::from_utf8_lossy(&buf[..n]).into_owned();
                let code = status.load(Ordering::SeqCst);
                let _ = conn.write_all(
                    format!("HTTP/1.1 {code} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes(),
                );
            }
        });
        app
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A gRPC health server (grpc.health.v1.Health/Check) on loopback that
/// answers every check with `status` (1 SERVING, 2 NOT_SERVING) and keeps
/// the service asked for. Stops with the test process, or after 2 minutes.
struct GrpcHealth {
    port: u16,
    status: std::sync::Arc<std::sync::atomic::AtomicU8>,
    service: std::sync::Arc<std::sync::Mutex<String>>,
}

impl GrpcHealth {
    fn start() -> Self {
        use std::sync::atomic::Ordering;

        use http_body_util::BodyExt;

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let health = GrpcHealth {
            port: listener.local_addr().unwrap().port(),
            status: Default::default(),
            service: Default::default(),
        };
        health.status.store(1, Ordering::SeqCst);
        let (status, service) = (health.status.clone(), health.service.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let serve = async {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else { continue };
                        let (status, service) = (status.clone(), service.clone());
                        let answer = hyper::service::service_fn(
                            move |request: http::Request<hyper::body::Incoming>| {
                                let (status, service) = (status.clone(), service.clone());
                                async move {
                                    // HealthCheckRequest { service = 1 }, after the 5-byte gRPC prefix.
                                    let body = request
                                        .into_body()
                                        .collect()
                                        .await
                                        .map(|b| b.to_bytes())
                                        .unwrap_or_default();
                                    let name = body.get(7..).map(|b| String::from_utf8_lossy(b).into_owned());
                                    *service.lock().unwrap() = name.unwrap_or_default();
                                    // HealthCheckResponse { status = 1 }.
                                    let message = vec![0, 0, 0, 0, 2, 0x08, status.load(Ordering::SeqCst)];
                                    let mut trailers = http::HeaderMap::new();
                                    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                                    // A stream of frames: no content-length, as gRPC servers answer.
                                    let frames: [Result<_, std::convert::Infallible>; 2] = [
                                        Ok(hyper::body::Frame::data(bytes::Bytes::from(message))),
                                        Ok(hyper::body::Frame::trailers(trailers)),
                                    ];
                                    let body = http_body_util::StreamBody::new(futures::stream::iter(frames));
                                    let response = http::Response::builder()
                                        .header("content-type", "application/grpc")
                                        .body(body)
                                        .unwrap();
                                    Ok::<_, std::convert::Infallible>(response)
                                }
                            },
                        );
                        tokio::spawn(
                            hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                                .serve_connection(hyper_util::rt::TokioIo::new(stream), answer),
                        );
                    }
                };
                let _ = tokio::time::timeout(std::time::Duration::from_secs(120), serve).await;
            });
        });
        health
    }
}

/// A real Envoy with a pod's bootstrap answers the rewritten probes from
/// the app itself: httpGet gets the app's own status, with the original
/// path, query, headers and Host; tcpSocket is 200 only while the port
/// accepts connections; grpc only while the server answers SERVING.
#[test]
fn envoy_answers_the_rewritten_probes_from_the_app() {
    use std::sync::atomic::Ordering;
    let app = App::start();
    let health = GrpcHealth::start();
    let (tcp_port, grpc_port) = (free_port(), free_port());
    let text = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: probed, namespace: shop}}\nspec:\n  containers:\n  - name: web\n    image: busybox\n    ports: [{{name: http, containerPort: {}}}]\n    readinessProbe: {{httpGet: {{path: '/health?full=1', port: http, httpHeaders: [{{name: X-Probe, value: '100%'}}]}}, periodSeconds: 1}}\n    livenessProbe: {{tcpSocket: {{port: {tcp_port}}}, periodSeconds: 1}}\n    startupProbe: {{grpc: {{port: {grpc_port}}}, periodSeconds: 1}}\n  - name: rpc\n    image: busybox\n    readinessProbe: {{grpc: {{port: {}, service: reviews}}, periodSeconds: 1}}\n",
        app.port, health.port
    );
    let pod = injected(&serde_yaml_ng::from_str(&text).unwrap(), "shop");
    let mut bootstrap = bootstrap_of(&pod);

    // The static part alone, on ports of the test's: no controller here.
    let listen = free_port();
    bootstrap.as_object_mut().unwrap().remove("dynamic_resources");
    bootstrap["admin"]["address"]["socket_address"]["port_value"] = serde_json::json!(0);
    let statics = &mut bootstrap["static_resources"];
    let listeners = statics["listeners"].as_array_mut().unwrap();
    listeners.retain(|l| l["name"] == "app-health");
    listeners[0]["address"]["socket_address"] =
        serde_json::json!({"address": "127.0.0.1", "port_value": listen});
    let dir = crate::testing::TempDir::new("probes-envoy");
    let config = dir.write("envoy.json", bootstrap.to_string());
    let log = dir.0.join("envoy.log");
    let child = std::process::Command::new(crate::testing::envoy_binary())
        .arg("-c")
        .arg(&config)
        .args(["--disable-hot-restart", "--base-id-path", "/dev/null", "--concurrency", "1"])
        .args(["--log-level", "warn", "--component-log-level", "hc:debug"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start envoy");
    let envoy = &mut Envoy { child, log };
    let hold = std::time::Duration::from_millis(2500);

    // httpGet: the app's status, and the request as the kubelet would send it.
    answers(envoy, listen, "/app-health/web/readyz", 200, std::time::Duration::ZERO);
    let request = app.last_request.lock().unwrap().to_ascii_lowercase();
    assert!(request.starts_with("get /health?full=1 http/1.1\r\n"), "{request}");
    assert!(request.contains("\r\nx-probe: 100%\r\n"), "{request}");
    assert!(request.contains(&format!("\r\nhost: 127.0.0.1:{}\r\n", app.port)), "{request}");
    assert!(request.contains("\r\nuser-agent: kube-probe/1.35\r\n"), "{request}");
    assert!(
        !request.contains("x-envoy-") && !request.contains("x-request-id"),
        "Envoy's own headers: {request}"
    );
    app.status.store(503, Ordering::SeqCst);
    answers(envoy, listen, "/app-health/web/readyz", 503, std::time::Duration::ZERO);
    app.status.store(404, Ordering::SeqCst);
    answers(envoy, listen, "/app-health/web/readyz", 404, std::time::Duration::ZERO);

    // tcpSocket: nothing listens, then something does, then it stops.
    answers(envoy, listen, "/app-health/web/livez", 503, hold);
    let listener = std::net::TcpListener::bind(("127.0.0.1", tcp_port)).unwrap();
    answers(envoy, listen, "/app-health/web/livez", 200, hold);
    drop(listener);
    answers(envoy, listen, "/app-health/web/livez", 503, hold);

    // grpc: no server, never SERVING; a server, only while SERVING, for the probe's service.
    answers(envoy, listen, "/app-health/web/startupz", 503, hold);
    answers(envoy, listen, "/app-health/rpc/readyz", 200, hold);
    assert_eq!(health.service.lock().unwrap().as_str(), "reviews");
    health.status.store(2, Ordering::SeqCst);
    answers(envoy, listen, "/app-health/rpc/readyz", 503, hold);
    health.status.store(1, Ordering::SeqCst);
    answers(envoy, listen, "/app-health/rpc/readyz", 200, std::time::Duration::ZERO);
    // Nothing else is served.
    assert_eq!(status_of(listen, "/app-health/other/readyz"), Some(404));
}

/// `mesh kube-inject` rewrites the probes as the webhook does.
#[test]
fn kube_inject_rewrites_probes_as_the_webhook_does() {
    let text = std::fs::read_to_string(testdata("probes.yaml")).unwrap();
    let (out, reports) = offline::inject_yaml(&text, &injector()).unwrap();
    assert!(reports[0].injected);
    let offline: serde_json::Value = serde_yaml_ng::from_str(&out).unwrap();
    let webhook = serde_json::to_value(injected(&read_pod("probes.yaml"), "shop")).unwrap();
    assert_eq!(offline["spec"], webhook["spec"]);
    assert_eq!(offline["metadata"]["annotations"], webhook["metadata"]["annotations"]);
}

#[test]
fn a_gateway_pod_gets_envoy_as_a_router_in_its_own_container() {
    let pod = read_pod("gateway.yaml");
    // The chart's gateways are in the mesh's own namespace, and opt in.
    let gateway = injected(&pod, MESH_NS);
    golden("gateway", &gateway);
    let spec = gateway.spec.as_ref().expect("a spec");
    assert!(spec.init_containers.is_none(), "no traffic capture, no native sidecar");
    assert_eq!(spec.containers.len(), 1);
    let proxy = &spec.containers[0];
    assert_eq!(proxy.image.as_deref(), Some(InjectArgs::default().proxy_image.as_str()));
    let args = proxy.args.as_ref().expect("args");
    let node = &args[args.iter().position(|a| a == "--service-node").expect("a node id") + 1];
    assert!(node.starts_with("router~$(INSTANCE_IP)~$(POD_NAME).$(POD_NAMESPACE)~"), "{node}");
    let ports: Vec<i32> = proxy.ports.iter().flatten().map(|p| p.container_port).collect();
    assert_eq!(ports, [15090, 80, 443], "its own ports kept");
    assert!(
        !gateway.metadata.labels.as_ref().unwrap().contains_key(crate::translate::tls::TLS_MODE_LABEL),
        "a gateway serves no mutual TLS inbound: clients must not send it"
    );
    // Injecting it again changes nothing.
    let labels = enabled();
    let ns = NamespaceInfo { name: MESH_NS, labels: Some(&labels) };
    assert_eq!(injector().inject(&gateway, &ns), Ok(Outcome::Skipped(Skip::AlreadyInjected)));
}

#[test]
fn the_gateway_template_needs_its_container_and_other_templates_are_refused() {
    let labels = enabled();
    let ns = NamespaceInfo { name: "default", labels: Some(&labels) };
    let mut pod = read_pod("gateway.yaml");
    pod.spec.as_mut().unwrap().containers[0].name = "gateway".into();
    let err = injector().inject(&pod, &ns).expect_err("no istio-proxy container");
    assert!(err.to_string().contains("no container named istio-proxy"), "{err}");
    let mut pod = read_pod("details.yaml");
    pod.metadata
        .annotations
        .get_or_insert_default()
        .insert(annotations::TEMPLATES.into(), "grpc-agent".into());
    let err = injector().inject(&pod, &ns).expect_err("unknown template");
    assert!(
        err.to_string().contains("inject.istio.io/templates") && err.to_string().contains("gateway"),
        "{err}"
    );
    // In the mesh's namespace only an opted-in gateway is injected.
    let mut pod = read_pod("gateway.yaml");
    pod.metadata.labels.as_mut().unwrap().remove(annotations::INJECT);
    let mesh = NamespaceInfo { name: MESH_NS, labels: Some(&labels) };
    assert_eq!(injector().inject(&pod, &mesh), Ok(Outcome::Skipped(Skip::SystemNamespace)));
}

#[test]
fn a_pods_trace_sampling_goes_into_its_bootstraps_runtime() {
    let args = InjectArgs::default();
    let annotated =
        [(annotations::PROXY_CONFIG.to_string(), "tracing:\n  sampling: 25\n".to_string())].into();
    let options = annotations::proxy_options(&annotated, &args).unwrap();
    assert_eq!(options.trace_sampling, Some(25.0));
    // The pod's bootstrap carries it.
    let mut pod = read_pod("details.yaml");
    pod.metadata.annotations.get_or_insert_default().extend(annotated);
    let pod = injected(&pod, "default");
    let bootstrap: serde_json::Value = serde_json::from_str(
        pod.metadata.annotations.as_ref().and_then(|a| a.get(BOOTSTRAP_ANNOTATION)).expect("the bootstrap"),
    )
    .unwrap();
    assert_eq!(
        bootstrap["layered_runtime"]["layers"][0]["static_layer"]["tracing.random_sampling"]["numerator"],
        250_000
    );
    let bootstrap = bootstrap::with_trace_sampling(bootstrap::bootstrap("mesh.mesh-system.svc:15012"), 25.0);
    let layer = &bootstrap["layered_runtime"]["layers"][0]["static_layer"]["tracing.random_sampling"];
    assert_eq!(layer["numerator"], 250_000);
    assert_eq!(layer["denominator"], "MILLION");
    for bad in ["tracing: {sampling: 150}", "tracing: {sampling: lots}", "tracing: ["] {
        let refused = [(annotations::PROXY_CONFIG.to_string(), bad.to_string())].into();
        let error = annotations::proxy_options(&refused, &args).expect_err(bad).to_string();
        assert!(error.contains(annotations::PROXY_CONFIG), "{error}");
    }
    let other =
        [(annotations::PROXY_CONFIG.to_string(), "holdApplicationUntilProxyStarts: true".to_string())].into();
    assert_eq!(annotations::proxy_options(&other, &args).unwrap().trace_sampling, None);
}

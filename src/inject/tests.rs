//! Injection as a pure function, checked against golden files
//! (`MESH_UPDATE_GOLDEN=1 cargo test --lib inject` rewrites them; review the diff).

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::Pod;
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

/// The patch only adds: everything the pod had is still there, unchanged.
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

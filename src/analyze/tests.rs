use serde::Deserialize;
use serde_json::{Value, json};

use super::*;
use crate::index::Index;
use crate::testing::bookinfo::{NAMESPACE, bookinfo};
use crate::testing::conformance::bookinfo_dir;

/// Bookinfo's platform with `default` labelled for injection.
fn injected_bookinfo() -> Index {
    let mut index = bookinfo();
    let namespace = json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": NAMESPACE, "labels": {"istio-injection": "enabled"}}});
    assert!(index.apply_value(namespace));
    index
}

/// Applies YAML documents as `kubectl apply -n default` would.
fn apply(index: &mut Index, yaml: &str) {
    for document in serde_yaml_ng::Deserializer::from_str(yaml) {
        let mut value = Value::deserialize(document).expect("YAML");
        if value.is_null() {
            continue;
        }
        if value.pointer("/metadata/namespace").is_none() && value["kind"] != "Namespace" {
            value["metadata"]["namespace"] = json!(NAMESPACE);
        }
        let kind = value["kind"].clone();
        assert!(index.apply_value(value), "{kind} not applied");
    }
}

fn found(index: &Index) -> Vec<String> {
    analyze(index.state(), "mesh-system").iter().map(ToString::to_string).collect()
}

/// Each of Istio's networking samples on Bookinfo with its rules
/// (`destination-rule-all.yaml`), as Istio's tasks apply them.
#[test]
fn istios_unmodified_networking_samples_have_no_finding() {
    let dir = bookinfo_dir().join("networking");
    let rules = std::fs::read_to_string(dir.join("destination-rule-all.yaml")).expect("the rules");
    let mut files: Vec<_> =
        std::fs::read_dir(&dir).expect("the samples").map(|e| e.expect("an entry").path()).collect();
    files.sort();
    // cert-manager's sample routes to cert-manager's own Service, which Bookinfo does not run.
    let files: Vec<_> = files.into_iter().filter(|f| !f.ends_with("certmanager-gateway.yaml")).collect();
    assert!(files.len() >= 20, "{files:?}");
    for file in files {
        let mut index = injected_bookinfo();
        apply(&mut index, &rules);
        apply(&mut index, &std::fs::read_to_string(&file).expect("a sample"));
        assert_eq!(found(&index), Vec::<String>::new(), "{}", file.display());
    }
}

/// One broken file per kind of finding, on top of Bookinfo with its rules:
/// exactly the findings the file announces.
#[test]
fn each_broken_file_gets_the_findings_it_announces_with_istios_codes() {
    let files = super::testdata::broken_files();
    assert!(files.len() >= 7, "a file per finding: {files:?}");
    for (file, expected) in files {
        let mut index = injected_bookinfo();
        apply(
            &mut index,
            &std::fs::read_to_string(bookinfo_dir().join("networking/destination-rule-all.yaml")).unwrap(),
        );
        apply(&mut index, &std::fs::read_to_string(&file).unwrap());
        let findings = found(&index);
        assert_eq!(findings.len(), expected.len(), "{}: {findings:#?}", file.display());
        for (finding, wanted) in findings.iter().zip(&expected) {
            assert!(finding.starts_with(wanted.as_str()), "{}:\n{finding}\nwanted {wanted}", file.display());
        }
    }
}

#[test]
fn levels_read_as_istio_writes_them() {
    assert_eq!(Level::parse("Warning"), Ok(Level::Warning));
    assert_eq!(Level::parse("error"), Ok(Level::Error));
    assert!(Level::parse("fatal").is_err());
    assert!(Level::Error > Level::Warning && Level::Warning > Level::Info);
}

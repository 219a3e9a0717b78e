//! Istio's Bookinfo samples, unmodified (the conformance data), read at
//! test time by the round-trip tests of every kind and the translation
//! tests. They are not part of the repository: `MESH_CONFORMANCE_DIR`
//! says where they are ([`crate::testing::conformance`], which the
//! end-to-end tests read too).

use serde::Deserialize;
use serde_json::Value;

pub use crate::testing::conformance::bookinfo_dir as dir;

/// Every document of an Istio `kind` across the sample files, as
/// (file name, document).
pub fn of_kind(kind: &str) -> Vec<(String, Value)> {
    let samples = dir();
    let mut files: Vec<_> = ["networking", "rbac"]
        .iter()
        .flat_map(|sub| {
            let path = samples.join(sub);
            std::fs::read_dir(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        })
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).expect("sample file");
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = Value::deserialize(doc).unwrap_or_else(|e| panic!("{name}: {e}"));
            let api = value.get("apiVersion").and_then(Value::as_str).unwrap_or("");
            if value.get("kind").and_then(Value::as_str) == Some(kind) && api.contains(".istio.io/") {
                out.push((name.clone(), value));
            }
        }
    }
    out
}

/// Renames protobuf field names to their JSON names anywhere in `v`, as
/// the mesh does when it reads an object back.
pub fn to_json_names(v: &mut Value, names: &[(&str, &str)]) {
    match v {
        Value::Object(map) => {
            for (json, proto) in names {
                if let Some(x) = map.remove(*proto) {
                    map.insert((*json).to_string(), x);
                }
            }
            map.values_mut().for_each(|x| to_json_names(x, names));
        }
        Value::Array(items) => items.iter_mut().for_each(|x| to_json_names(x, names)),
        _ => {}
    }
}

//! Schema helpers shared by the kind files: Istio's way of writing a protobuf
//! `oneof` in a structural OpenAPI schema, and the multi-version CRD assembly.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use schemars::Schema;
use serde_json::{Value, json};

/// Adds Istio's encoding of a protobuf `oneof` to an object schema: at most
/// one of `fields` may be set. Structural schemas forbid declaring properties
/// inside `oneOf`, so each branch only names a `required` field, and one more
/// branch accepts the object when none of them is set.
///
/// Kind files call it from a `#[schemars(transform = ...)]` function, e.g.
/// `fn string_match_oneof(s: &mut Schema) { one_of(s, &["exact", "prefix", "regex"]) }`.
pub fn one_of(schema: &mut Schema, fields: &[&str]) {
    let Some(obj) = schema.as_object_mut() else {
        return;
    };
    let each: Vec<Value> = fields.iter().map(|f| json!({ "required": [f] })).collect();
    let mut branches = vec![json!({ "not": { "anyOf": each.clone() } })];
    branches.extend(each);
    // Two oneofs on one message must both hold: the second goes under allOf.
    match obj.remove("oneOf") {
        None => {
            obj.insert("oneOf".into(), Value::Array(branches));
        }
        Some(previous) => {
            let all = obj.entry("allOf").or_insert_with(|| json!([]));
            if let Some(all) = all.as_array_mut() {
                all.push(json!({ "oneOf": previous }));
                all.push(json!({ "oneOf": branches }));
            }
        }
    }
}

/// Serves one stored version under more names: Istio serves its networking
/// kinds as v1alpha3 (stored), v1beta1 and v1 with one schema, so objects
/// written under any of them are the same object.
pub fn also_served_as(mut crd: CustomResourceDefinition, versions: &[&str]) -> CustomResourceDefinition {
    let Some(stored) = crd.spec.versions.first().cloned() else {
        return crd;
    };
    for v in versions {
        let mut extra = stored.clone();
        extra.name = (*v).to_string();
        extra.storage = false;
        extra.served = true;
        crd.spec.versions.push(extra);
    }
    crd
}

/// Istio read these kinds with protobuf's JSON parser, which also accepts a
/// field under its protobuf name (`enforcement_mode` for `enforcementMode`),
/// and Istio's own samples use that spelling. The serde side takes these
/// names as aliases; this declares them in the schema too, so the API server
/// keeps them instead of pruning them. Each pair is (JSON name, proto name);
/// the copy gets a description pointing at the JSON name, which is what the
/// object reads back with once the mesh has rewritten it.
pub fn accept_proto_names(schema: &mut Schema, names: &[(&str, &str)]) {
    let Some(props) = schema.get_mut("properties").and_then(|p| p.as_object_mut()) else {
        return;
    };
    for (json, proto) in names {
        let Some(mut copy) = props.get(*json).cloned() else {
            continue;
        };
        if let Some(obj) = copy.as_object_mut() {
            obj.insert(
                "description".into(),
                format!(
                    "Same as {json}, under its protobuf field name, as Istio's own \
                     YAML sometimes spells it. Prefer {json}; do not set both."
                )
                .into(),
            );
        }
        props.insert((*proto).to_string(), copy);
    }
}

/// Drops an enum's own description from its schema, for enums used only as
/// optional fields: kube hoists an `Option<Enum>`'s inner schema over the
/// field's, so the type's description would replace the field's doc comment
/// in `kubectl explain`.
pub fn field_doc_only(schema: &mut Schema) {
    schema.remove("description");
}

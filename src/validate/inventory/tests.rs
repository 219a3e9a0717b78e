//! The inventory held to the CRD schemas, and what it reports for objects.

use std::collections::BTreeSet;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use serde_json::json;

use super::*;

/// Every field path of a CRD schema under `spec`, as the table writes them.
fn schema_fields(schema: &JSONSchemaProps, path: &str, out: &mut Vec<String>) {
    for (name, prop) in schema.properties.iter().flatten() {
        let here = format!("{path}.{name}");
        out.push(here.clone());
        field_children(prop, &here, out);
    }
}

fn field_children(prop: &JSONSchemaProps, path: &str, out: &mut Vec<String>) {
    if let Some(JSONSchemaPropsOrArray::Schema(items)) = &prop.items {
        return schema_fields(items, &format!("{path}[]"), out);
    }
    if let Some(JSONSchemaPropsOrBool::Schema(values)) = &prop.additional_properties {
        return field_children(values, &format!("{path}{{}}"), out);
    }
    schema_fields(prop, path, out);
}

/// (kind, path) of every field the CRDs serve.
fn served_fields() -> BTreeSet<(String, String)> {
    let mut all = BTreeSet::new();
    for crd in crate::api::crds() {
        let kind = crd.spec.names.kind.clone();
        for version in &crd.spec.versions {
            let root = version.schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref()).expect("a schema");
            let spec = root.properties.as_ref().and_then(|p| p.get("spec")).expect("a spec");
            let mut paths = Vec::new();
            schema_fields(spec, "spec", &mut paths);
            all.extend(paths.into_iter().map(|p| (kind.clone(), p)));
        }
    }
    all
}

fn table() -> Inventory {
    Inventory::parse(TABLE).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn every_served_field_has_a_line_and_every_line_a_field() {
    let listed: BTreeSet<(String, String)> =
        table().fields().map(|(k, p, _)| (k.to_string(), p.to_string())).collect();
    let served = served_fields();
    let missing: Vec<String> =
        served.difference(&listed).map(|(k, p)| format!("[{k}] {p}  pending")).collect();
    let stale: Vec<String> = listed.difference(&served).map(|(k, p)| format!("[{k}] {p}")).collect();
    assert!(
        missing.is_empty(),
        "fields the CRDs serve that src/validate/inventory.txt does not list; add each under its kind, \
         as pending until a test proves it applied:\n{}",
        missing.join("\n")
    );
    assert!(stale.is_empty(), "inventory.txt lists fields no CRD serves:\n{}", stale.join("\n"));
}

#[test]
fn every_applied_field_names_a_test_that_exists() {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut problems = Vec::new();
    for (kind, path, state) in table().fields() {
        let State::Applied { test } = state else { continue };
        let Some((file, function)) = test.split_once("::") else {
            problems.push(format!("[{kind}] {path}: {test:?} is not file::function"));
            continue;
        };
        let source = std::fs::read_to_string(format!("{root}/{file}")).unwrap_or_default();
        let declared = source.lines().any(|l| l.trim_start().starts_with(&format!("fn {function}(")));
        // A test function: the line before the declaration is #[test].
        let is_test =
            source.lines().collect::<Vec<_>>().windows(2).any(|w| {
                w[0].trim() == "#[test]" && w[1].trim_start().starts_with(&format!("fn {function}("))
            });
        if !declared || !is_test {
            problems.push(format!("[{kind}] {path}: no #[test] fn {function} in {file}"));
        }
    }
    assert!(problems.is_empty(), "applied fields without their proof:\n{}", problems.join("\n"));
}

#[test]
fn aliases_name_a_field_of_their_kind_that_is_no_alias() {
    let inventory = table();
    for (kind, path, state) in inventory.fields() {
        if let State::Alias { of } = state {
            let target = inventory.line(kind, of);
            assert!(
                matches!(target, Some(State::Applied { .. } | State::Pending { .. })),
                "[{kind}] {path} is an alias of {of}, which is not a field of its own"
            );
        }
    }
}

#[test]
fn the_compiled_table_reads_and_bad_lines_are_named() {
    assert!(Inventory::get().fields().count() > 500);
    let e = Inventory::parse("spec.hosts applied x::y").unwrap_err();
    assert!(e.to_string().contains("line 1") && e.to_string().contains("[Kind]"), "{e}");
    let e = Inventory::parse("[VirtualService]\nspec.hosts applied").unwrap_err();
    assert!(e.to_string().contains("names no test"), "{e}");
    let e = Inventory::parse("[VirtualService]\nspec.hosts done x").unwrap_err();
    assert!(e.to_string().contains("unknown state"), "{e}");
    let e = Inventory::parse("[A]\nspec.a pending\nspec.a pending").unwrap_err();
    assert!(e.to_string().contains("line 3") && e.to_string().contains("twice"), "{e}");
}

fn fields(findings: &[Finding]) -> Vec<&str> {
    findings.iter().map(|f| f.field.as_str()).collect()
}

#[test]
fn routing_by_match_and_weight_is_fully_applied() {
    let spec = json!({"hosts": ["reviews"], "gateways": ["mesh"], "http": [
        {"name": "jason", "match": [{"headers": {"end-user": {"exact": "jason"}}, "uri": {"prefix": "/"}}],
         "route": [{"destination": {"host": "reviews", "subset": "v2"}}], "timeout": "5s"},
        {"route": [{"destination": {"host": "reviews", "subset": "v1"}, "weight": 80},
                   {"destination": {"host": "reviews", "subset": "v3", "port": {"number": 9080}}, "weight": 20}]}
    ]});
    assert_eq!(unapplied("VirtualService", &spec), vec![]);
    let rule = json!({"host": "reviews", "subsets": [{"name": "v1", "labels": {"version": "v1"}}],
                      "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"}}});
    assert_eq!(unapplied("DestinationRule", &rule), vec![]);
}

#[test]
fn each_unapplied_field_is_named_where_it_is_set_once() {
    let spec = json!({"hosts": ["ratings"], "http": [
        {"route": [{"destination": {"host": "ratings"}}]},
        {"fault": {"delay": {"fixedDelay": "7s", "percentage": {"value": 100}}},
         "retries": {"attempts": 3},
         "match": [{"headers": {"end-user": {"exact": "jason"}}, "statPrefix": "x"}],
         "route": [{"destination": {"host": "ratings"}, "headers": {"request": {"set": {"a": "b"}}}}]}
    ]});
    let found = unapplied("VirtualService", &spec);
    assert_eq!(fields(&found), Vec::<&str>::new(), "every field here is applied");
    // A DestinationRule's unapplied parts, each named where it is set.
    let rule = json!({"host": "ratings", "trafficPolicy": {"proxyProtocol": {"version": "V1"}},
                      "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                                  {"name": "v2", "labels": {"version": "v2"},
                                   "trafficPolicy": {"proxyProtocol": {}, "loadBalancer": {"simple": "RANDOM"}}}]});
    let found = unapplied("DestinationRule", &rule);
    assert_eq!(
        fields(&found),
        ["spec.subsets[1].trafficPolicy.proxyProtocol", "spec.trafficPolicy.proxyProtocol"]
    );
    assert!(found.iter().all(|f| f.severity == Severity::Warning && f.message.starts_with(NOT_APPLIED)));
}

#[test]
fn unapplied_destination_tls_is_named_with_what_it_means() {
    // The TLS modes are applied; a certificate by credentialName is not.
    let rule = json!({"host": "*.local", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}},
                      "subsets": [{"name": "v1", "labels": {"version": "v1"},
                                   "trafficPolicy": {"tls": {"mode": "SIMPLE", "credentialName": "v1-cert"}, "proxyProtocol": {}}}]});
    let found = unapplied("DestinationRule", &rule);
    assert_eq!(
        fields(&found),
        ["spec.subsets[0].trafficPolicy.proxyProtocol", "spec.subsets[0].trafficPolicy.tls.credentialName"]
    );
    assert!(found[1].message.contains("clientCertificate and privateKey"), "{}", found[1].message);
}

#[test]
fn authorization_kinds_are_applied_field_by_field() {
    let config = json!({"mode": "ON_WITH_EXCLUSION", "exclusion": {"namespaces": ["a"], "services": ["b"]},
                        "enforcementMode": "PERMISSIVE"});
    for kind in ["ClusterRbacConfig", "RbacConfig"] {
        assert_eq!(fields(&unapplied(kind, &config)), Vec::<String>::new(), "{kind}");
    }
    let role = json!({"rules": [{"services": ["*"], "hosts": ["h"], "notPaths": ["/p"], "methods": ["GET"],
                      "notPorts": [1], "constraints": [{"key": "destination.labels[app]", "values": ["a"]}]}]});
    assert_eq!(fields(&unapplied("ServiceRole", &role)), Vec::<String>::new());
    let binding = json!({"subjects": [{"user": "*", "namespaces": ["n"], "notIps": ["10.0.0.1"], "groups": ["g"],
                         "properties": {"source.ip": "10.0.0.0/8"}}],
                         "roleRef": {"kind": "ServiceRole", "name": "r"}, "mode": "PERMISSIVE"});
    assert_eq!(fields(&unapplied("ServiceRoleBinding", &binding)), Vec::<String>::new());
}

#[test]
fn gateways_bound_by_name_are_applied_and_a_gateways_unapplied_fields_named() {
    let spec = json!({"hosts": ["*"], "gateways": ["bookinfo-gateway", "mesh"],
                      "http": [{"match": [{"gateways": ["bookinfo-gateway"]}], "route": [{"destination": {"host": "a"}}]}]});
    assert_eq!(fields(&unapplied("VirtualService", &spec)), Vec::<String>::new());
    let gateway = json!({"selector": {"istio": "ingressgateway"}, "servers": [
        {"port": {"number": 443, "name": "https", "protocol": "HTTPS"}, "hosts": ["*"], "bind": "10.0.0.1",
         "tls": {"mode": "SIMPLE", "credentialName": "c", "minProtocolVersion": "TLSV1_3"}}]});
    let found = unapplied("Gateway", &gateway);
    assert_eq!(fields(&found), ["spec.servers[0].bind", "spec.servers[0].tls.minProtocolVersion"]);
    // Servers no listener serves yet are named by value.
    let unserved = json!({"servers": [
        {"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]},
        {"port": {"number": 15443, "name": "tls", "protocol": "TLS"}, "hosts": ["*.local"], "tls": {"mode": "AUTO_PASSTHROUGH"}},
        {"port": {"number": 9443, "name": "tls-term", "protocol": "TLS"}, "hosts": ["*"],
         "tls": {"mode": "SIMPLE", "serverCertificate": "/c", "privateKey": "/k"}}]});
    let found = unapplied("Gateway", &unserved);
    assert_eq!(fields(&found), ["spec.servers"]);
    assert!(
        found[0]
            .message
            .contains("servers[1] (TLS, AUTO_PASSTHROUGH), servers[2] (TLS, SIMPLE) get no listener"),
        "{}",
        found[0].message
    );
}

#[test]
fn maps_are_walked_by_key_and_unknown_fields_are_never_claimed() {
    let spec = json!({"hosts": ["a"], "http": [{"match": [{"headers": {"x": {"exact": "1"}}}],
                      "route": [{"destination": {"host": "a"}}], "someday": true}]});
    let found = unapplied("VirtualService", &spec);
    assert_eq!(fields(&found), ["spec.http[0].someday"]);
    assert!(found[0].message.contains("does not know"));
    let found = unapplied("NoSuchKind", &json!({"a": 1}));
    assert_eq!(fields(&found), ["spec.a"]);
}

#[test]
fn the_summary_lists_fields_with_their_reasons() {
    let rule = json!({"host": "a", "trafficPolicy": {"proxyProtocol": {}, "tls": {"mode": "SIMPLE", "credentialName": "c"}}});
    let s = summary(&unapplied("DestinationRule", &rule));
    assert!(s.starts_with(NOT_APPLIED), "{s}");
    assert!(
        s.contains("spec.trafficPolicy.proxyProtocol (")
            && s.contains("; spec.trafficPolicy.tls.credentialName ("),
        "{s}"
    );
}

#[test]
fn a_sidecar_ingress_unix_endpoint_is_named_and_loopback_is_not() {
    let listener = |endpoint: &str| json!({"ingress": [{"port": {"number": 80, "protocol": "HTTP"}, "defaultEndpoint": endpoint}]});
    let found = unapplied("Sidecar", &listener("unix:///var/run/app.sock"));
    assert_eq!(fields(&found), ["spec.ingress[0].defaultEndpoint"]);
    assert!(found[0].message.contains("unix:// endpoint is not served"), "{}", found[0].message);
    assert_eq!(fields(&unapplied("Sidecar", &listener("127.0.0.1:8080"))), Vec::<String>::new());
}

#[test]
fn a_sidecar_capture_mode_none_is_named_and_iptables_is_not() {
    let listener = |mode: &str| {
        json!({"egress": [{"hosts": ["./*"], "captureMode": mode}],
                                        "ingress": [{"port": {"number": 80, "protocol": "HTTP"}, "captureMode": mode}]})
    };
    let found = unapplied("Sidecar", &listener("NONE"));
    assert_eq!(fields(&found), ["spec.egress[0].captureMode", "spec.ingress[0].captureMode"]);
    assert!(found[0].message.contains("NONE is not applied"), "{}", found[0].message);
    for mode in ["DEFAULT", "IPTABLES"] {
        assert_eq!(fields(&unapplied("Sidecar", &listener(mode))), Vec::<String>::new(), "{mode}");
    }
}

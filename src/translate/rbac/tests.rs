//! The translation's shape: which policies reach which filter, the TCP
//! dropping, and the enforced and shadow rules. `table` runs the decision
//! table against a real Envoy.

mod table;

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::listener::v3::filter;
use envoy_types::pb::envoy::config::rbac::v3::{Permission, Rbac, permission};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use prost::Message;
use serde_json::json;

use super::*;
use crate::model::rbac::RolePolicy;

fn labels() -> BTreeMap<String, String> {
    [("app".to_string(), "ratings".to_string()), ("version".to_string(), "v1".to_string())].into()
}

fn with_destination<T>(f: impl FnOnce(&Destination) -> T) -> T {
    let labels = labels();
    f(&Destination {
        host: "ratings.default.svc.cluster.local",
        name: "ratings",
        namespace: "default",
        service_account: "bookinfo-ratings",
        labels: &labels,
    })
}

fn rule(value: serde_json::Value) -> AccessRule {
    serde_json::from_value(value).expect("a rule")
}

fn subject(value: serde_json::Value) -> Subject {
    serde_json::from_value(value).expect("a subject")
}

fn auth(rules: Vec<AccessRule>, enforced: Vec<Subject>, shadow: Vec<Subject>) -> Authorization {
    Authorization {
        shadow_only: false,
        policies: [("r".to_string(), RolePolicy { rules, enforced, shadow })].into(),
    }
}

/// The HTTP filter's enforced and shadow rules.
fn http(auth: &Authorization) -> (Option<Rbac>, Option<Rbac>) {
    let filter = with_destination(|d| http_filter(auth, d));
    assert_eq!(filter.name, HTTP_RBAC);
    let Some(http_filter::ConfigType::TypedConfig(config)) = filter.config_type else {
        panic!("typed config")
    };
    let config = HttpRbac::decode(config.value.as_slice()).expect("an HTTP RBAC config");
    (config.rules, config.shadow_rules)
}

/// The network filter's enforced and shadow rules.
fn tcp(auth: &Authorization) -> (Option<Rbac>, Option<Rbac>) {
    let filter = with_destination(|d| network_rbac_filter(auth, d));
    assert_eq!(filter.name, NETWORK_RBAC);
    let Some(filter::ConfigType::TypedConfig(config)) = filter.config_type else { panic!("typed config") };
    let config = NetworkRbac::decode(config.value.as_slice()).expect("a network RBAC config");
    assert_eq!(config.stat_prefix, NETWORK_STAT_PREFIX);
    (config.rules, config.shadow_rules)
}

/// How many permissions and principals the enforced policy `r` has (None
/// when it was dropped).
fn counts(rules: &Option<Rbac>) -> Option<(usize, usize)> {
    let rules = rules.as_ref().expect("enforced rules");
    assert_eq!(rules.action, rbac::Action::Allow as i32);
    rules.policies.get("r").map(|p| (p.permissions.len(), p.principals.len()))
}

#[test]
fn tcp_drops_rules_with_http_only_fields_as_istio_does() {
    let anyone = vec![subject(json!({"user": "*"}))];
    for field in [
        json!({"hosts": ["a.example.com"]}),
        json!({"notHosts": ["a.example.com"]}),
        json!({"paths": ["/a"]}),
        json!({"notPaths": ["/a"]}),
        json!({"methods": ["GET"]}),
        json!({"notMethods": ["GET"]}),
        json!({"constraints": [{"key": "request.headers[x-a]", "values": ["1"]}]}),
    ] {
        let mut value = json!({"services": ["*"]});
        value.as_object_mut().expect("an object").extend(field.as_object().expect("an object").clone());
        let a = auth(vec![rule(value)], anyone.clone(), vec![]);
        assert_eq!(counts(&http(&a).0), Some((1, 1)), "HTTP keeps {field}");
        assert_eq!(counts(&tcp(&a).0), None, "TCP drops {field}");
    }
    for field in [
        json!({"ports": [3306]}),
        json!({"notPorts": [9080]}),
        json!({"constraints": [{"key": "destination.ip", "values": ["10.0.0.0/8"]}]}),
        json!({"constraints": [{"key": "destination.port", "values": ["3306"]}]}),
        json!({"constraints": [{"key": "destination.labels[app]", "values": ["ratings"]}]}),
    ] {
        let mut value = json!({"services": ["*"]});
        value.as_object_mut().expect("an object").extend(field.as_object().expect("an object").clone());
        let a = auth(vec![rule(value)], anyone.clone(), vec![]);
        assert_eq!(counts(&tcp(&a).0), Some((1, 1)), "TCP keeps {field}");
    }
}

#[test]
fn tcp_drops_subjects_with_http_only_fields_and_keeps_the_others() {
    let rules = vec![rule(json!({"services": ["*"]}))];
    let http_only = [
        json!({"group": "admin"}),
        json!({"groups": ["admin"]}),
        json!({"notGroups": ["banned"]}),
        json!({"properties": {"request.auth.principal": "iss/sub"}}),
        json!({"properties": {"request.auth.audiences": "api"}}),
        json!({"properties": {"request.auth.presenter": "web"}}),
        json!({"properties": {"request.auth.claims[email]": "a@example.com"}}),
        json!({"properties": {"source.user": "cluster.local/ns/default/sa/a"}}),
    ];
    let kept = [
        json!({"user": "cluster.local/ns/default/sa/a"}),
        json!({"names": ["cluster.local/ns/default/sa/a"]}),
        json!({"notNames": ["cluster.local/ns/default/sa/a"]}),
        json!({"namespaces": ["default"]}),
        json!({"notNamespaces": ["default"]}),
        json!({"ips": ["10.0.0.1"]}),
        json!({"notIps": ["10.0.0.0/8"]}),
        json!({"properties": {"source.ip": "10.0.0.1"}}),
        json!({"properties": {"source.namespace": "default"}}),
        json!({"properties": {"source.principal": "cluster.local/ns/default/sa/a"}}),
    ];
    for s in &http_only {
        let a = auth(rules.clone(), vec![subject(s.clone())], vec![]);
        assert_eq!(counts(&http(&a).0), Some((1, 1)), "HTTP keeps {s}");
        assert_eq!(counts(&tcp(&a).0), None, "TCP drops {s}");
    }
    for s in &kept {
        let a = auth(rules.clone(), vec![subject(s.clone())], vec![]);
        assert_eq!(counts(&tcp(&a).0), Some((1, 1)), "TCP keeps {s}");
    }
    // A role keeps the subjects TCP can check.
    let mixed = auth(rules, vec![subject(http_only[0].clone()), subject(kept[0].clone())], vec![]);
    assert_eq!(counts(&tcp(&mixed).0), Some((1, 1)));
    assert_eq!(counts(&http(&mixed).0), Some((1, 2)));
}

#[test]
fn rules_for_other_services_or_pods_are_left_out() {
    let anyone = vec![subject(json!({"user": "*"}))];
    for (value, applies) in [
        (json!({"services": ["ratings.default.svc.cluster.local"]}), true),
        (json!({"services": ["ratings*"]}), true),
        (json!({"services": ["*.default.svc.cluster.local"]}), true),
        (json!({"services": ["ratings"]}), false),
        (json!({"services": ["reviews*"]}), false),
        (
            json!({"services": ["*"], "constraints": [{"key": "destination.labels[version]", "values": ["v2"]}]}),
            false,
        ),
        (
            json!({"services": ["*"], "constraints": [{"key": "destination.labels[track]", "values": ["*"]}]}),
            false,
        ),
        (json!({"services": ["*"], "constraints": [{"key": "destination.name", "values": ["rat*"]}]}), true),
        (
            json!({"services": ["*"], "constraints": [{"key": "destination.namespace", "values": ["prod"]}]}),
            false,
        ),
        (
            json!({"services": ["*"], "constraints": [{"key": "destination.user", "values": ["bookinfo-ratings"]}]}),
            true,
        ),
        (
            json!({"services": ["*"], "constraints": [{"key": "destination.user", "values": ["bookinfo-reviews"]}]}),
            false,
        ),
    ] {
        let a = auth(vec![rule(value.clone())], anyone.clone(), vec![]);
        let expected = applies.then_some((1, 1));
        assert_eq!(counts(&http(&a).0), expected, "{value}");
        assert_eq!(counts(&tcp(&a).0), expected, "{value}");
    }
}

#[test]
fn no_policy_denies_everything_and_no_permissive_binding_means_no_shadow_rules() {
    let (rules, shadow) = http(&Authorization::default());
    assert_eq!(rules.expect("enforced rules, empty").policies.len(), 0);
    assert_eq!(shadow, None);
    let (rules, shadow) = tcp(&Authorization::default());
    assert_eq!(rules.expect("enforced rules, empty").policies.len(), 0);
    assert_eq!(shadow, None);
    // A role without subjects is left out.
    let a = auth(vec![rule(json!({"services": ["*"]}))], vec![], vec![]);
    assert_eq!(counts(&http(&a).0), None);
}

#[test]
fn permissive_bindings_go_to_the_shadow_rules() {
    let a = auth(
        vec![rule(json!({"services": ["*"]}))],
        vec![subject(json!({"user": "a"}))],
        vec![subject(json!({"user": "b"})), subject(json!({"user": "c"}))],
    );
    for (rules, shadow) in [http(&a), tcp(&a)] {
        assert_eq!(counts(&rules), Some((1, 1)));
        let shadow = shadow.expect("shadow rules");
        assert_eq!(shadow.policies["r"].principals.len(), 2);
    }
    // Only a permissive binding: nothing enforced grants, the shadow counts.
    let only = auth(vec![rule(json!({"services": ["*"]}))], vec![], vec![subject(json!({"user": "b"}))]);
    let (rules, shadow) = http(&only);
    assert_eq!(rules.expect("enforced rules").policies.len(), 0);
    assert_eq!(shadow.expect("shadow rules").policies.len(), 1);
}

#[test]
fn the_permissive_switch_leaves_only_shadow_rules() {
    let mut a = auth(vec![rule(json!({"services": ["*"]}))], vec![], vec![subject(json!({"user": "a"}))]);
    a.shadow_only = true;
    for (rules, shadow) in [http(&a), tcp(&a)] {
        assert_eq!(rules, None, "nothing enforced");
        assert_eq!(shadow.expect("shadow rules").policies.len(), 1);
    }
    let empty = Authorization { shadow_only: true, ..Authorization::default() };
    let (rules, shadow) = http(&empty);
    assert_eq!(rules, None);
    assert_eq!(shadow.expect("shadow rules, empty").policies.len(), 0);
}

/// The rule's `and_rules`, from the single permission of policy `r`.
fn and_rules(rules: &Option<Rbac>) -> Vec<Permission> {
    let permission = &rules.as_ref().expect("rules").policies["r"].permissions[0];
    match &permission.rule {
        Some(permission::Rule::AndRules(set)) => set.rules.clone(),
        other => panic!("an and_rules permission, got {other:?}"),
    }
}

#[test]
fn paths_match_the_whole_path_header() {
    let a = auth(
        vec![rule(json!({"services": ["*"], "paths": ["/ratings*"]}))],
        vec![subject(json!({"user": "*"}))],
        vec![],
    );
    let rules = and_rules(&http(&a).0);
    let Some(permission::Rule::OrRules(set)) = &rules[0].rule else {
        panic!("an or_rules, got {:?}", rules[0])
    };
    let Some(permission::Rule::Header(header)) = &set.rules[0].rule else {
        panic!("a header, got {:?}", set.rules[0])
    };
    assert_eq!(header.name, ":path");
    assert_eq!(header.header_match_specifier, header_matcher("x", "/ratings*").header_match_specifier);
}

//! Validation and translation read Istio's grammar alike: tables of host
//! names, durations and `gateways` lists, each run through validation
//! (the webhook's and status's verdict, from a [`Context`] of the index)
//! and through translation (the [`MeshView`] of the same index, and the
//! Envoy configuration made from it), with both answers compared to the
//! expected one. A warning that contradicts what Envoy gets fails here.

use std::time::Duration;

use envoy_types::pb::envoy::config::route::v3::{Route, route, route_action};
use serde_json::{Value, json};

use crate::index::{DestinationRules, Index, Services, VirtualServices};
use crate::model::mesh::{MeshView, ScopeKey};
use crate::testing::objects::{self, config};
use crate::translate::parse_duration;
use crate::translate::sidecar::{Outbound, outbound};
use crate::validate::{Context, Finding, validate_object};

const REVIEWS: &str = "reviews.default.svc.cluster.local";

/// Services `default/reviews` and `prod/ratings`, HTTP on 9080.
fn cluster() -> Index {
    let mut index = Index::new(Default::default());
    for (n, (namespace, name)) in [("default", "reviews"), ("prod", "ratings")].into_iter().enumerate() {
        let ip = format!("10.96.0.{}", 10 + n);
        index.apply::<Services>(
            &objects::service(name).namespace(namespace).cluster_ip(&ip).port("http", 9080).build(),
        );
    }
    index
}

/// Validation's verdict on an object, as the webhook gives it, with the
/// context built from the index as the webhook builds it.
fn validate(index: &Index, kind: &str, namespace: &str, spec: &Value) -> Vec<Finding> {
    validate_object(kind, namespace, "under-test", spec, &Context::of(index.state()))
}

/// Translation's verdict: the outbound configuration of a sidecar in `default`.
fn translate(index: &Index) -> (MeshView, Outbound) {
    let view = MeshView::build(index.state());
    let scope = ScopeKey { namespace: "default".into(), labels: Default::default(), sidecar: None };
    let out = outbound(&view, &scope);
    (view, out)
}

/// The routes of a Service's virtual host on port 9080.
fn routes<'a>(out: &'a Outbound, host: &str) -> &'a [Route] {
    let name = format!("{host}:9080");
    let config =
        out.routes.iter().find(|r| r.name == name).unwrap_or_else(|| panic!("route configuration {name}"));
    &config
        .virtual_hosts
        .iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("virtual host {name}"))
        .routes
}

fn action(route: &Route) -> Option<&route_action::ClusterSpecifier> {
    match &route.action {
        Some(route::Action::Route(a)) => a.cluster_specifier.as_ref(),
        _ => None,
    }
}

#[test]
fn hosts_resolve_alike_in_validation_and_translation() {
    // (host as written, namespace of the VirtualService, what it means, whether it is a Service)
    let table = [
        ("ratings.prod", "default", "ratings.prod.svc.cluster.local", true),
        ("Ratings.Prod.", "default", "ratings.prod.svc.cluster.local", true),
        ("ratings.prod.svc", "default", "ratings.prod.svc.cluster.local", true),
        ("ratings.prod.svc.cluster.local", "default", "ratings.prod.svc.cluster.local", true),
        ("ratings.prod.svc.cluster.local.", "default", "ratings.prod.svc.cluster.local", true),
        ("ratings", "prod", "ratings.prod.svc.cluster.local", true),
        ("RATINGS", "prod", "ratings.prod.svc.cluster.local", true),
        ("reviews.default", "prod", REVIEWS, true),
        ("ratings", "default", "ratings.default.svc.cluster.local", false),
        ("nobody.prod", "default", "nobody.prod", false),
        ("ratings.prod.svc.cluster", "default", "ratings.prod.svc.cluster", false),
        ("example.com", "default", "example.com", false),
    ];
    for (written, namespace, meaning, is_service) in table {
        let mut index = cluster();
        let case = format!("{written:?} in namespace {namespace}");

        // The same name, resolved by each side.
        let ctx = Context::of(index.state());
        let view = MeshView::build(index.state());
        assert_eq!(ctx.resolve_host(written, namespace), meaning, "validation: {case}");
        assert_eq!(view.resolve_host(written, namespace), meaning, "translation: {case}");

        // A route to it from the reviews Service: validation warns that it
        // fails exactly when translation sends a 503 instead of the Service.
        let spec = json!({
            "hosts": [REVIEWS],
            "http": [{"route": [{"destination": {"host": written, "port": {"number": 9080}}}]}],
        });
        let findings = validate(&index, "VirtualService", namespace, &spec);
        assert!(!findings.iter().any(Finding::is_error), "{case}: {findings:?}");
        let warned = findings.iter().any(|f| {
            f.field == "spec.http[0].route[0].destination.host"
                && f.message.contains(&format!("no Service {meaning} "))
        });
        index.apply::<VirtualServices>(&config::<crate::api::VirtualService>(
            namespace,
            "under-test",
            spec.clone(),
        ));
        let (_, out) = translate(&index);
        let first = &routes(&out, REVIEWS)[0];
        let routed = match action(first) {
            Some(route_action::ClusterSpecifier::Cluster(c)) => {
                assert_eq!(*c, format!("outbound|9080||{meaning}"), "{case}");
                true
            }
            _ => {
                assert!(
                    matches!(first.action, Some(route::Action::DirectResponse(ref d)) if d.status == 503),
                    "{case}: {first:?}"
                );
                false
            }
        };
        assert_eq!((warned, routed), (!is_service, is_service), "{case}: warned {warned}, routed {routed}");
    }
}

#[test]
fn a_virtual_service_binds_to_the_hosts_validation_knows() {
    // (hosts entry, namespace, whether it names a Service)
    let table = [
        ("reviews", "default", true),
        ("Reviews.", "default", true),
        ("reviews.default", "prod", true),
        ("reviews.default.svc", "prod", true),
        ("reviews", "prod", false),
        ("reviews.prod", "default", false),
    ];
    for (written, namespace, is_service) in table {
        let mut index = cluster();
        let case = format!("{written:?} in namespace {namespace}");
        let spec = json!({
            "hosts": [written],
            "http": [{"route": [{"destination": {"host": REVIEWS}, "weight": 100}], "timeout": "7s"}],
        });
        let findings = validate(&index, "VirtualService", namespace, &spec);
        let warned =
            findings.iter().any(|f| f.field == "spec.hosts[0]" && f.message.starts_with("no Service "));
        index.apply::<VirtualServices>(&config::<crate::api::VirtualService>(
            namespace,
            "under-test",
            spec.clone(),
        ));
        let (_, out) = translate(&index);
        // The rule's timeout shows whether the VirtualService took the Service's routes.
        let bound = match &routes(&out, REVIEWS)[0].action {
            Some(route::Action::Route(a)) => a.timeout.is_some_and(|t| t.seconds == 7),
            other => panic!("{case}: {other:?}"),
        };
        assert_eq!((warned, bound), (!is_service, is_service), "{case}: {findings:?}");
    }
}

#[test]
fn durations_read_alike_in_validation_and_translation() {
    // (timeout as written, its value; None: not a duration)
    let ms = Duration::from_millis;
    let table = [
        ("10s", Some(ms(10_000))),
        ("0.5s", Some(ms(500))),
        (".5s", Some(ms(500))),
        ("1.5m", Some(ms(90_000))),
        ("1m30s", Some(ms(90_000))),
        ("1h", Some(ms(3_600_000))),
        ("100ms", Some(ms(100))),
        ("0.001s", Some(ms(1))),
        ("+2s", Some(ms(2_000))),
        ("2000000us", Some(ms(2_000))),
        ("10", None),
        ("", None),
        (" 10s", None),
        ("10 s", None),
        ("1e3s", None),
        ("5 minutes", None),
        ("1.2.3s", None),
    ];
    for (written, value) in table {
        let mut index = cluster();
        let spec = json!({
            "hosts": ["reviews"],
            "http": [{"route": [{"destination": {"host": "reviews"}}], "timeout": written}],
        });
        let findings = validate(&index, "VirtualService", "default", &spec);
        let refused = findings
            .iter()
            .any(|f| f.field == "spec.http[0].timeout" && f.message.contains("is not a duration"));
        assert_eq!(refused, value.is_none(), "validation of {written:?}: {findings:?}");
        if value.is_some() {
            assert!(findings.is_empty(), "{written:?}: {findings:?}");
        }

        let envoy = |d: Duration| (d.as_secs() as i64, d.subsec_nanos() as i32);
        assert_eq!(
            parse_duration(written).map(|d| (d.seconds, d.nanos)),
            value.map(envoy),
            "translation of {written:?}"
        );
        index.apply::<VirtualServices>(&config::<crate::api::VirtualService>(
            "default",
            "under-test",
            spec.clone(),
        ));
        let (_, out) = translate(&index);
        let timeout = match &routes(&out, REVIEWS)[0].action {
            Some(route::Action::Route(a)) => a.timeout.map(|t| (t.seconds, t.nanos)),
            other => panic!("{written:?}: {other:?}"),
        };
        // What does not parse leaves Istio's default: no timeout (0s).
        assert_eq!(timeout, Some(value.map(envoy).unwrap_or((0, 0))), "Envoy's timeout for {written:?}");
    }
}

#[test]
fn cookie_ttls_read_alike_in_validation_and_translation() {
    // (ttl as written, what Envoy gets; the finding validation gives)
    let table = [
        ("3600s", Some((3600, 0)), None),
        ("1h", Some((3600, 0)), None),
        ("0s", Some((0, 0)), None),
        ("0", Some((0, 0)), None),
        ("-1s", None, Some("is negative")),
        ("3600", None, Some("is not a duration")),
    ];
    for (written, ttl, finding) in table {
        let mut index = cluster();
        let spec = json!({
            "host": "reviews",
            "trafficPolicy": {"loadBalancer": {"consistentHash": {"httpCookie": {"name": "session", "ttl": written}}}},
        });
        let findings = validate(&index, "DestinationRule", "default", &spec);
        let said: Vec<_> = findings.iter().filter(|f| f.field.ends_with("httpCookie.ttl")).collect();
        match finding {
            None => assert!(said.is_empty(), "{written:?}: {findings:?}"),
            Some(text) => assert!(said.iter().any(|f| f.message.contains(text)), "{written:?}: {findings:?}"),
        }

        index.apply::<DestinationRules>(&config::<crate::api::DestinationRule>(
            "default",
            "under-test",
            spec.clone(),
        ));
        let (_, out) = translate(&index);
        let policy = match &routes(&out, REVIEWS)[0].action {
            Some(route::Action::Route(a)) => a.hash_policy.clone(),
            other => panic!("{written:?}: {other:?}"),
        };
        use route_action::hash_policy::PolicySpecifier;
        let got = match policy.first().and_then(|p| p.policy_specifier.as_ref()) {
            Some(PolicySpecifier::Cookie(c)) => c.ttl.map(|t| (t.seconds, t.nanos)),
            other => panic!("{written:?}: {other:?}"),
        };
        assert_eq!(got, ttl, "Envoy's cookie ttl for {written:?}");
    }
}

#[test]
fn the_mesh_gateway_means_the_sidecars_to_both() {
    // (gateways, whether sidecars apply the VirtualService)
    let table: [(&[&str], bool); 4] = [
        (&[], true),
        (&["mesh"], true),
        (&["istio-system/ingress", "mesh"], true),
        (&["istio-system/ingress"], false),
    ];
    for (gateways, for_sidecars) in table {
        let mut index = cluster();
        // sourceLabels only work for sidecars: validation warns when the
        // rule cannot reach one.
        let spec = json!({
            "hosts": ["reviews"],
            "gateways": gateways,
            "http": [{"match": [{"sourceLabels": {"app": "productpage"}}],
                      "route": [{"destination": {"host": "reviews"}}], "timeout": "7s"}],
        });
        let findings = validate(&index, "VirtualService", "default", &spec);
        let warned = findings.iter().any(|f| f.message.contains("only work for sidecars"));
        index.apply::<VirtualServices>(&config::<crate::api::VirtualService>(
            "default",
            "under-test",
            spec.clone(),
        ));
        let (view, _) = translate(&index);
        let scope = ScopeKey {
            namespace: "default".into(),
            labels: [("app".to_string(), "productpage".to_string())].into(),
            sidecar: None,
        };
        let service = view.service(REVIEWS).expect("reviews");
        let bound = view.virtual_service_for(&scope, service).is_some();
        assert_eq!((warned, bound), (!for_sidecars, for_sidecars), "gateways {gateways:?}: {findings:?}");
    }
}

/// A Sidecar egress host: validation warns exactly when translation
/// imports nothing by it (a short name is never completed).
#[test]
fn egress_hosts_read_alike_in_validation_and_translation() {
    // (egress host of a Sidecar in `default`, whether reviews is imported)
    let cases = [
        ("./reviews.default.svc.cluster.local", true),
        ("./Reviews.default.svc.cluster.local.", true),
        ("./*", true),
        ("*/*.default.svc.cluster.local", true),
        ("./reviews", false),
        ("default/reviews", false),
        ("prod/*", false),
    ];
    for (host, imported) in cases {
        let mut index = cluster();
        let spec = json!({"egress": [{"hosts": [host]}]});
        index.apply::<crate::index::Sidecars>(&config::<crate::api::Sidecar>(
            "default",
            "under-test",
            spec.clone(),
        ));
        let findings = validate(&index, "Sidecar", "default", &spec);
        let warned = findings.iter().any(|f| f.message.contains("is not a full name"));
        let (view, out) = {
            let view = MeshView::build(index.state());
            let proxy =
                crate::model::mesh::ProxyContext { namespace: "default".into(), ..Default::default() };
            let out = outbound(&view, &view.scope(&proxy));
            (view, out)
        };
        assert!(view.service(REVIEWS).is_some());
        let got = out.clusters.iter().any(|c| c.name == format!("outbound|9080||{REVIEWS}"));
        assert_eq!(got, imported, "{host}: imported");
        let short = host.split_once('/').is_some_and(|(_, h)| h != "*" && !h.contains('.'));
        assert_eq!(warned, short, "{host}: warned {findings:?}");
        if warned {
            assert!(!got, "{host}: a warned host imports nothing");
        }
    }
}

//! One positive and one negative case per rule, written as YAML specs, and
//! the Bookinfo samples, which must pass cleanly.

use std::sync::OnceLock;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::*;
use crate::api::samples;

type Vs = VirtualServiceSpec;
type Dr = DestinationRuleSpec;
type Role = ServiceRoleSpec;
type Binding = ServiceRoleBindingSpec;
type Config = RbacConfigSpec;

const NS: &str = "default";

fn ns_of(doc: &Value) -> &str {
    doc["metadata"]["namespace"].as_str().unwrap_or(NS)
}

/// Bookinfo's cluster: its four Services in `default`, the subsets of
/// destination-rule-all.yaml, the sample ServiceRoles, and the ServiceEntry
/// host of egress-rule-google-apis.yaml.
fn bookinfo() -> &'static Context {
    static CTX: OnceLock<Context> = OnceLock::new();
    CTX.get_or_init(|| {
        let mut ctx = Context::empty();
        for svc in ["productpage", "details", "reviews", "ratings"] {
            ctx.add_service(NS, svc);
        }
        for (file, doc) in samples::of_kind("DestinationRule") {
            if file == "destination-rule-all.yaml" {
                let spec: Dr = serde_json::from_value(doc["spec"].clone()).unwrap();
                ctx.add_destination_rule(ns_of(&doc), &spec);
            }
        }
        for (_, doc) in samples::of_kind("ServiceRole") {
            ctx.add_service_role(ns_of(&doc), doc["metadata"]["name"].as_str().unwrap());
        }
        ctx.add_host("www.googleapis.com");
        ctx
    })
}

fn findings<T: DeserializeOwned + Validate>(yaml: &str) -> Vec<Finding> {
    let spec: T = serde_yaml_ng::from_str(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    spec.validate(NS, bookinfo())
}

fn list(findings: &[Finding]) -> String {
    findings.iter().map(|f| format!("  {:?} {f}\n", f.severity)).collect()
}

/// Some error's `field: message` contains `fragment`.
#[track_caller]
fn assert_rejects<T: DeserializeOwned + Validate>(yaml: &str, fragment: &str) {
    let f = findings::<T>(yaml);
    assert!(
        f.iter().any(|f| f.is_error() && f.to_string().contains(fragment)),
        "expected an error containing {fragment:?}, got:\n{}",
        list(&f)
    );
}

/// No errors, and some warning's `field: message` contains `fragment`.
#[track_caller]
fn assert_warns<T: DeserializeOwned + Validate>(yaml: &str, fragment: &str) {
    let f = findings::<T>(yaml);
    assert!(
        !has_errors(&f) && f.iter().any(|f| !f.is_error() && f.to_string().contains(fragment)),
        "expected only warnings, one containing {fragment:?}, got:\n{}",
        list(&f)
    );
}

/// No findings at all.
#[track_caller]
fn assert_accepts<T: DeserializeOwned + Validate>(yaml: &str) {
    let f = findings::<T>(yaml);
    assert!(f.is_empty(), "expected no findings, got:\n{}", list(&f));
}

/// A VirtualService for `reviews` with one HTTP rule: `rule` is the rule's
/// YAML, indented as a list item's fields (4 spaces).
fn vs_rule(rule: &str) -> String {
    format!("hosts: [reviews]\nhttp:\n  - {}\n", rule.trim_start())
}

const ROUTE: &str = "    route:\n    - destination: {host: reviews, subset: v1}\n";

// ------------------------------------------------------------- Bookinfo

#[test]
fn bookinfo_samples_have_no_errors_and_no_unexpected_warnings() {
    let mut checked = 0;
    for kind in [
        "VirtualService",
        "DestinationRule",
        "ServiceRole",
        "ServiceRoleBinding",
        "ClusterRbacConfig",
        "RbacConfig",
    ] {
        for (file, doc) in samples::of_kind(kind) {
            let name = doc["metadata"]["name"].as_str().unwrap();
            let found = validation_only(validate_object(kind, ns_of(&doc), name, &doc["spec"], bookinfo()));
            assert!(!has_errors(&found), "{file} {kind} {name}:\n{}", list(&found));
            // The cert-manager sample routes a gateway to a Service that is
            // not part of Bookinfo; the fault-injection sample has a second
            // catch-all rule that is never used (Istio warns about it too).
            if file != "certmanager-gateway.yaml" && file != "fault-injection-details-v1.yaml" {
                assert!(found.is_empty(), "{file} {kind} {name}:\n{}", list(&found));
            }
            checked += 1;
        }
    }
    assert!(checked >= 40, "only {checked} samples found");
}

/// The findings of validation rules, without the fields the inventory
/// reports as not applied (inventory's own tests cover those).
fn validation_only(found: Vec<Finding>) -> Vec<Finding> {
    found.into_iter().filter(|f| !f.message.starts_with(inventory::NOT_APPLIED)).collect()
}

#[test]
fn bookinfo_samples_name_exactly_the_fields_mesh_does_not_apply() {
    let mut seen = Vec::new();
    for kind in
        ["VirtualService", "DestinationRule", "ServiceRole", "ServiceRoleBinding", "ClusterRbacConfig"]
    {
        for (file, doc) in samples::of_kind(kind) {
            let name = doc["metadata"]["name"].as_str().unwrap();
            let found = validate_object(kind, ns_of(&doc), name, &doc["spec"], bookinfo());
            for f in found.iter().filter(|f| f.message.starts_with(inventory::NOT_APPLIED)) {
                seen.push(format!("{file} {kind} {name} {}", f.field));
            }
        }
    }
    let rbac_roles = [
        "details-reviews-policy-permissive",
        "details-reviews-policy",
        "mongodb-policy",
        "namespace-policy",
        "productpage-policy",
        "ratings-policy",
    ];
    let mut expected: Vec<String> = [
        "bookinfo-gateway.yaml VirtualService bookinfo spec.gateways",
        "certmanager-gateway.yaml VirtualService cert-manager spec.gateways",
        "fault-injection-details-v1.yaml VirtualService details spec.http[0].fault",
        "virtual-service-ratings-test-abort.yaml VirtualService ratings spec.http[0].fault",
        "virtual-service-ratings-test-delay.yaml VirtualService ratings spec.http[0].fault",
        "destination-rule-all-mtls.yaml DestinationRule productpage spec.trafficPolicy.tls",
        "destination-rule-all-mtls.yaml DestinationRule reviews spec.trafficPolicy.tls",
        "destination-rule-all-mtls.yaml DestinationRule ratings spec.trafficPolicy.tls",
        "destination-rule-all-mtls.yaml DestinationRule details spec.trafficPolicy.tls",
        "egress-rule-google-apis.yaml DestinationRule originate-tls-for-googleapis spec.trafficPolicy.portLevelSettings[0].tls",
        "details-reviews-policy-permissive.yaml ServiceRoleBinding bind-details-reviews spec.mode",
        "rbac-config-ON.yaml ClusterRbacConfig default spec.inclusion",
        "rbac-config-ON.yaml ClusterRbacConfig default spec.mode",
        "rbac-config-on-mongodb.yaml ClusterRbacConfig default spec.inclusion",
        "rbac-config-on-mongodb.yaml ClusterRbacConfig default spec.mode",
        "rbac-config-on-permissive.yaml ClusterRbacConfig default spec.enforcementMode",
        "rbac-config-on-permissive.yaml ClusterRbacConfig default spec.inclusion",
        "rbac-config-on-permissive.yaml ClusterRbacConfig default spec.mode",
    ]
    .map(String::from)
    .into();
    // Every ServiceRole and ServiceRoleBinding: authorization is not enforced yet.
    for file in rbac_roles {
        let pick = |kind: &str, fields: &[&str]| {
            samples::of_kind(kind)
                .into_iter()
                .filter(|(f, _)| f == &format!("{file}.yaml"))
                .flat_map(|(f, doc)| {
                    let name = doc["metadata"]["name"].as_str().unwrap_or_default().to_string();
                    fields.iter().map(move |field| format!("{f} {kind} {name} {field}")).collect::<Vec<_>>()
                })
                .collect::<Vec<_>>()
        };
        expected.extend(pick("ServiceRole", &["spec.rules"]));
        expected.extend(pick("ServiceRoleBinding", &["spec.roleRef", "spec.subjects"]));
    }
    seen.sort();
    expected.sort();
    pretty_assertions::assert_eq!(seen, expected);
}

#[test]
fn the_fault_injection_sample_has_an_unreachable_rule() {
    let (_, doc) = samples::of_kind("VirtualService")
        .into_iter()
        .find(|(file, _)| file == "fault-injection-details-v1.yaml")
        .expect("fault-injection-details-v1.yaml");
    let found = validation_only(validate_object("VirtualService", NS, "details", &doc["spec"], bookinfo()));
    assert_eq!(found.len(), 1, "{}", list(&found));
    assert!(found[0].field == "spec.http[1]" && found[0].message.contains("never used"), "{}", list(&found));
}

#[test]
fn the_gateway_sample_for_a_missing_service_only_warns_about_it() {
    let (_, doc) = samples::of_kind("VirtualService")
        .into_iter()
        .find(|(file, _)| file == "certmanager-gateway.yaml")
        .expect("certmanager-gateway.yaml");
    let found = validation_only(validate_object(
        "VirtualService",
        ns_of(&doc),
        "cert-manager",
        &doc["spec"],
        bookinfo(),
    ));
    assert_eq!(found.len(), 1, "{}", list(&found));
    assert!(
        found[0].message.contains("cert-manager-resolver.istio-system.svc.cluster.local"),
        "{}",
        list(&found)
    );
}

// ------------------------------------------------------------------ API

#[test]
fn render_names_kind_object_field_and_message() {
    let f =
        Finding { severity: Severity::Warning, field: "spec.http[0].route".into(), message: "m: fix".into() };
    assert_eq!(
        render("VirtualService", "default", "reviews", &f),
        "VirtualService default/reviews: spec.http[0].route: m: fix"
    );
    assert_eq!(
        render("ClusterRbacConfig", "", "default", &f),
        "ClusterRbacConfig default: spec.http[0].route: m: fix"
    );
}

#[test]
fn validate_object_reports_parse_errors_at_the_field() {
    let spec = serde_json::json!({"hosts": ["reviews"], "http": [{"timeout": 5}]});
    let found = validate_object("VirtualService", NS, "reviews", &spec, bookinfo());
    assert_eq!(found.len(), 1, "{}", list(&found));
    assert!(found[0].is_error() && found[0].field == "spec.http[0].timeout", "{}", list(&found));
    assert!(validate_object("Gateway", NS, "gw", &spec, bookinfo()).is_empty());
}

#[test]
fn rbac_configs_must_be_named_default_and_rbac_config_is_deprecated() {
    let spec = serde_json::json!({"mode": "OFF"});
    let found = validate_object("ClusterRbacConfig", "", "mine", &spec, bookinfo());
    assert!(found.iter().any(|f| f.is_error() && f.field == "metadata.name"), "{}", list(&found));
    assert!(
        validation_only(validate_object("ClusterRbacConfig", "", "default", &spec, bookinfo())).is_empty()
    );
    let found = validate_object("RbacConfig", NS, "default", &spec, bookinfo());
    assert!(
        !has_errors(&found) && found.iter().any(|f| f.message.contains("deprecated")),
        "{}",
        list(&found)
    );
}

#[test]
fn an_unknown_context_skips_the_cluster_checks() {
    let spec: Vs =
        serde_yaml_ng::from_str(&vs_rule("route:\n    - destination: {host: nowhere, subset: v9}\n"))
            .unwrap();
    assert!(spec.validate(NS, &Context::default()).is_empty());
    assert!(!spec.validate(NS, &Context::empty()).is_empty());
}

#[test]
fn hosts_resolve_by_the_model_grammar() {
    let ctx = bookinfo();
    assert_eq!(ctx.resolve_host("reviews", "default"), "reviews.default.svc.cluster.local");
    assert_eq!(ctx.resolve_host("Reviews.", "default"), "reviews.default.svc.cluster.local");
    assert_eq!(ctx.resolve_host("reviews.default", "other"), "reviews.default.svc.cluster.local");
    // No Service default/nobody: a DNS name as written.
    assert_eq!(ctx.resolve_host("nobody.default", "other"), "nobody.default");
    assert_eq!(ctx.resolve_host("reviews.default.svc", "other"), "reviews.default.svc.cluster.local");
    assert_eq!(ctx.resolve_host("example.com", "default"), "example.com");
    assert_eq!(ctx.resolve_host("*.example.com", "default"), "*.example.com");
    assert_eq!(ctx.resolve_host("10.0.0.1", "default"), "10.0.0.1");
}

// --------------------------------------------------------- shared checks

#[test]
fn regexes_get_a_light_re2_check() {
    let check = |re: &str| {
        let mut out = common::Out::default();
        common::check_regex(&mut out, "x", re);
        out.findings.is_empty()
    };
    for good in
        ["^/api/v[0-9]+$", "a|b", "(?i)foo", "x{2,3}", "[]a]", "[[:alpha:]]+", "a*?", "{literal}", "\\d+"]
    {
        assert!(check(good), "{good}");
    }
    for bad in ["(", ")", "[a", "*a", "a**", "(?=x)", "(?<!x)", "\\1", "a\\", "x{3,2}", ""] {
        assert!(!check(bad), "{bad}");
    }
}

// ------------------------------------------------------ VirtualService

#[test]
fn vs_hosts_must_be_dns_names() {
    assert_rejects::<Vs>(
        "hosts: [\"reviews_v1\"]\nhttp: [{route: [{destination: {host: reviews}}]}]",
        "spec.hosts[0]: host \"reviews_v1\" is not a valid host name",
    );
    assert_rejects::<Vs>(
        "hosts: [\"a.*.com\"]\nhttp: [{route: [{destination: {host: reviews}}]}]",
        "not a valid host name",
    );
    assert_accepts::<Vs>(
        "hosts: [reviews, reviews.default.svc.cluster.local]\nhttp: [{route: [{destination: {host: reviews}}]}]",
    );
}

#[test]
fn vs_wildcard_host_needs_gateways_only() {
    assert_rejects::<Vs>(
        "hosts: [\"*\"]\nhttp: [{route: [{destination: {host: reviews}}]}]",
        "only allowed in a VirtualService bound to gateways only",
    );
    assert_accepts::<Vs>(
        "hosts: [\"*\"]\ngateways: [bookinfo-gateway]\nhttp: [{route: [{destination: {host: reviews}}]}]",
    );
}

#[test]
fn vs_hosts_must_not_overlap() {
    let yaml = "hosts: [\"*.example.com\", a.example.com]\ngateways: [gw]\nhttp: [{route: [{destination: {host: reviews}}]}]";
    assert_rejects::<Vs>(yaml, "spec.hosts[1]: \"a.example.com\" overlaps \"*.example.com\"");
    assert_accepts::<Vs>(
        "hosts: [a.example.com, b.example.com]\ngateways: [gw]\nhttp: [{route: [{destination: {host: reviews}}]}]",
    );
}

#[test]
fn vs_needs_rules() {
    assert_rejects::<Vs>("hosts: [reviews]", "spec: the VirtualService has no rules");
}

#[test]
fn vs_delegates_have_no_gateways_tls_or_tcp() {
    assert_rejects::<Vs>(
        "gateways: [gw]\nhttp: [{route: [{destination: {host: reviews}}]}]",
        "spec.gateways: a VirtualService without hosts is a delegate",
    );
    assert_rejects::<Vs>(
        "tcp: [{route: [{destination: {host: reviews}}]}]",
        "spec.tcp: a delegate VirtualService",
    );
    assert_accepts::<Vs>("http: [{route: [{destination: {host: reviews}}]}]");
}

#[test]
fn vs_delegation_is_one_level_deep() {
    assert_rejects::<Vs>(
        "http: [{delegate: {name: other}}]",
        "spec.http[0].delegate: a delegate VirtualService cannot delegate again",
    );
    assert_accepts::<Vs>(&vs_rule("delegate: {name: reviews-delegate, namespace: default}"));
}

#[test]
fn vs_root_rules_only_delegate() {
    assert_rejects::<Vs>(
        &vs_rule(&format!("delegate: {{name: d}}\n{ROUTE}")),
        "spec.http[0].route: a rule that delegates takes its routes from the delegate",
    );
    assert_warns::<Vs>(&vs_rule("delegate: {namespace: default}"), "set delegate.name");
}

#[test]
fn vs_redirect_excludes_route_fault_rewrite_and_direct_response() {
    assert_rejects::<Vs>(
        &vs_rule(&format!("redirect: {{uri: /new}}\n{ROUTE}")),
        "spec.http[0].route: a rule that redirects cannot also have route",
    );
    assert_rejects::<Vs>(
        &vs_rule("redirect: {uri: /new}\n    rewrite: {uri: /x}"),
        "cannot also have rewrite",
    );
    assert_accepts::<Vs>(&vs_rule(
        "redirect: {uri: /new, authority: example.com, redirectCode: 301, scheme: https}",
    ));
}

#[test]
fn vs_direct_response_excludes_route_and_needs_a_valid_status() {
    assert_rejects::<Vs>(
        &vs_rule(&format!("directResponse: {{status: 503}}\n{ROUTE}")),
        "a rule with directResponse cannot also have route",
    );
    assert_rejects::<Vs>(
        &vs_rule("directResponse: {status: 600}"),
        "spec.http[0].directResponse.status: HTTP status 600 is out of range",
    );
    assert_rejects::<Vs>(
        &vs_rule("directResponse: {status: 200, body: {bytes: \"not base64!\"}}"),
        "bytes is not base64",
    );
    assert_accepts::<Vs>(&vs_rule("directResponse: {status: 503, body: {string: unavailable}}"));
}

#[test]
fn vs_large_direct_responses() {
    let big = "x".repeat(200 * 1024);
    assert_warns::<Vs>(
        &vs_rule(&format!("directResponse: {{status: 200, body: {{string: {big}}}}}")),
        "keep it under 100KB",
    );
    let huge = "x".repeat(2 * 1024 * 1024);
    assert_rejects::<Vs>(
        &vs_rule(&format!("directResponse: {{status: 200, body: {{string: {huge}}}}}")),
        "under 1MB",
    );
}

#[test]
fn vs_rules_need_somewhere_to_go() {
    assert_rejects::<Vs>(&vs_rule("timeout: 5s"), "spec.http[0]: the rule does not say where requests go");
    assert_accepts::<Vs>(&vs_rule(&format!("timeout: 5s\n{ROUTE}")));
}

#[test]
fn vs_mirror_and_mirrors_are_exclusive() {
    let rule =
        format!("mirror: {{host: ratings}}\n    mirrors: [{{destination: {{host: details}}}}]\n{ROUTE}");
    assert_rejects::<Vs>(&vs_rule(&rule), "mirror and mirrors are both set");
    let ok = format!("mirrors: [{{destination: {{host: details}}, percentage: {{value: 5}}}}]\n{ROUTE}");
    assert_accepts::<Vs>(&vs_rule(&ok));
}

#[test]
fn vs_mirror_percentages() {
    assert_rejects::<Vs>(
        &vs_rule(&format!("mirror: {{host: ratings}}\n    mirrorPercent: 150\n{ROUTE}")),
        "mirrorPercent 150 is over 100",
    );
    assert_warns::<Vs>(
        &vs_rule(&format!("mirror: {{host: ratings}}\n    mirrorPercent: 50\n{ROUTE}")),
        "mirrorPercent is deprecated",
    );
    assert_rejects::<Vs>(
        &vs_rule(&format!("mirror: {{host: ratings}}\n    mirrorPercentage: {{value: 120}}\n{ROUTE}")),
        "mirror percentage 120 is out of range",
    );
    assert_accepts::<Vs>(&vs_rule(&format!(
        "mirror: {{host: ratings}}\n    mirrorPercentage: {{value: 50}}\n{ROUTE}"
    )));
}

#[test]
fn vs_header_match_names() {
    let m = |name: &str| vs_rule(&format!("match: [{{headers: {{\"{name}\": {{exact: x}}}}}}]\n{ROUTE}"));
    assert_rejects::<Vs>(
        &m("x user"),
        "spec.http[0].match[0].headers[\"x user\"]: \"x user\" is not a valid header name",
    );
    assert_warns::<Vs>(&m("X-User"), "write \"x-user\"");
    assert_warns::<Vs>(&m("uri"), "match it with the uri field instead");
    assert_accepts::<Vs>(&m("x-user"));
}

#[test]
fn vs_jwt_claim_routes_need_gateways() {
    let m = "match: [{headers: {\"@request.auth.claims.group\": {exact: admin}}}]";
    assert_rejects::<Vs>(
        &vs_rule(&format!("{m}\n{ROUTE}")),
        "routing on a JWT claim (@request.auth.claims.group) only works on gateways",
    );
    let gw = format!("hosts: [reviews.example.com]\ngateways: [gw]\nhttp:\n  - {m}\n{ROUTE}");
    assert_accepts::<Vs>(&gw);
}

#[test]
fn vs_string_matches() {
    let m = |sm: &str| vs_rule(&format!("match: [{sm}]\n{ROUTE}"));
    assert_rejects::<Vs>(&m("{headers: {x-a: {prefix: \"\"}}}"), "the prefix is empty");
    assert_accepts::<Vs>(&m("{uri: {prefix: \"\"}}"));
    assert_rejects::<Vs>(
        &m("{uri: {exact: /a, prefix: /b}}"),
        "spec.http[0].match[0].uri: exact and prefix are all set",
    );
    assert_rejects::<Vs>(
        &m("{uri: {regex: \"/(a\"}}"),
        "spec.http[0].match[0].uri.regex: \"/(a\" is not a valid RE2 regex",
    );
    assert_rejects::<Vs>(&m("{queryParams: {v: {regex: \"(?!x)\"}}}"), "look-around");
    assert_accepts::<Vs>(&m(
        "{uri: {regex: \"^/api/v[0-9]+/.*$\"}, method: {exact: GET}, queryParams: {v: {exact: \"1\"}}}",
    ));
    // Istio reads withoutHeaders regex "*" as "present".
    assert_accepts::<Vs>(&m("{withoutHeaders: {x-debug: {regex: \"*\"}}}"));
}

#[test]
fn vs_match_ports_labels_gateways_and_namespaces() {
    let m = |sm: &str| vs_rule(&format!("match: [{sm}]\n{ROUTE}"));
    assert_rejects::<Vs>(&m("{port: 70000}"), "spec.http[0].match[0].port: port 70000 is out of range");
    assert_rejects::<Vs>(&m("{sourceLabels: {\"-app\": x}}"), "is not a valid label key");
    assert_rejects::<Vs>(&m("{sourceLabels: {app: \"a b\"}}"), "is not a valid label value");
    assert_rejects::<Vs>(
        &m("{sourceNamespace: Bad_NS}"),
        "sourceNamespace: \"Bad_NS\" is not a namespace name",
    );
    assert_rejects::<Vs>(&m("{gateways: [\"istio-system/Bad_Gw\"]}"), "is not a valid gateway name");
    assert_warns::<Vs>(&m("{gateways: [mesh, gw.istio-system]}"), "write \"istio-system/gw\"");
    assert_accepts::<Vs>(&m(
        "{port: 9080, sourceLabels: {app: productpage}, sourceNamespace: default, gateways: [mesh]}",
    ));
}

#[test]
fn vs_source_matches_only_work_for_sidecars() {
    let yaml = format!(
        "hosts: [reviews.example.com]\ngateways: [gw]\nhttp:\n  - match: [{{sourceLabels: {{app: x}}}}]\n{ROUTE}"
    );
    assert_warns::<Vs>(&yaml, "only work for sidecars");
    let mesh = format!(
        "hosts: [reviews]\ngateways: [gw, mesh]\nhttp:\n  - match: [{{sourceLabels: {{app: x}}}}]\n{ROUTE}"
    );
    assert_accepts::<Vs>(&mesh);
}

#[test]
fn vs_header_operations() {
    let h = |ops: &str| vs_rule(&format!("headers: {ops}\n{ROUTE}"));
    assert_rejects::<Vs>(&h("{request: {set: {\":path\": /x}}}"), "\":path\" is a pseudo-header");
    assert_rejects::<Vs>(&h("{response: {set: {host: x}}}"), "the Host header cannot be changed here");
    assert_rejects::<Vs>(
        &h("{request: {remove: [\"\"]}}"),
        "spec.http[0].headers.request.remove[0]: a header name is empty",
    );
    assert_rejects::<Vs>(&h("{request: {add: {x-a: \"50%\"}}}"), "has a lone '%'");
    assert_rejects::<Vs>(&h("{request: {add: {x-a: \"%abc%\"}}}"), "not an Envoy variable");
    assert_accepts::<Vs>(&h(
        "{request: {set: {x-a: \"100%%\", x-b: \"%HOSTNAME%\", \":authority\": a.example.com}}, response: {remove: [x-internal]}}",
    ));
    let route_level = vs_rule(
        "route:\n    - destination: {host: reviews}\n      headers: {response: {add: {\":status\": \"200\"}}}",
    );
    assert_rejects::<Vs>(&route_level, "spec.http[0].route[0].headers.response.add[\":status\"]");
}

#[test]
fn vs_authority_is_rewritten_once() {
    let rule = format!(
        "rewrite: {{authority: a.example.com}}\n    headers: {{request: {{set: {{host: b.example.com}}}}}}\n{ROUTE}"
    );
    assert_rejects::<Vs>(&vs_rule(&rule), "the authority is already rewritten to \"a.example.com\"");
    assert_accepts::<Vs>(&vs_rule(&format!("rewrite: {{authority: a.example.com}}\n{ROUTE}")));
}

#[test]
fn vs_cors_policy() {
    let c = |cors: &str| vs_rule(&format!("corsPolicy: {cors}\n{ROUTE}"));
    assert_rejects::<Vs>(
        &c("{allowMethods: [get]}"),
        "spec.http[0].corsPolicy.allowMethods[0]: \"get\" is not an HTTP method",
    );
    assert_rejects::<Vs>(&c("{maxAge: 1.5s}"), "maxAge \"1.5s\" is not whole seconds");
    assert_rejects::<Vs>(&c("{allowOrigins: [{exact: \"\"}]}"), "the origin match is empty");
    assert_rejects::<Vs>(&c("{allowHeaders: [\"x y\"]}"), "is not a valid header name");
    assert_warns::<Vs>(&c("{allowOrigin: [\"https://a.example.com\"]}"), "allowOrigin is deprecated");
    assert_accepts::<Vs>(&c(
        "{allowOrigins: [{exact: \"https://a.example.com\"}, {regex: \"https://.*[.]example[.]org\"}], allowMethods: [GET, POST], allowHeaders: [\"*\"], exposeHeaders: [x-trace], maxAge: 24h}",
    ));
}

#[test]
fn vs_fault_injection() {
    let f = |fault: &str| vs_rule(&format!("fault: {fault}\n{ROUTE}"));
    assert_rejects::<Vs>(&f("{}"), "spec.http[0].fault: the fault injects nothing");
    assert_rejects::<Vs>(
        &f("{abort: {httpStatus: 700}}"),
        "spec.http[0].fault.abort.httpStatus: HTTP status 700 is out of range",
    );
    assert_rejects::<Vs>(&f("{abort: {grpcStatus: BROKEN}}"), "\"BROKEN\" is not a gRPC status");
    assert_rejects::<Vs>(
        &f("{abort: {http2Error: REFUSED_STREAM}}"),
        "HTTP/2 error aborts are not supported",
    );
    assert_rejects::<Vs>(
        &f("{abort: {httpStatus: 503, percentage: {value: 150}}}"),
        "fault.abort.percentage.value: percentage 150 is out of range",
    );
    assert_rejects::<Vs>(
        &f("{delay: {fixedDelay: \"10\"}}"),
        "\"10\" is not a duration: write a number with a unit (ms, s, m or h), e.g. \"10s\"",
    );
    assert_rejects::<Vs>(&f("{delay: {fixedDelay: 0.5ms}}"), "shorter than 1ms");
    assert_rejects::<Vs>(&f("{delay: {exponentialDelay: 1s}}"), "exponentialDelay is not supported yet");
    assert_rejects::<Vs>(&f("{delay: {fixedDelay: 1s, percent: 101}}"), "percentage 101 is out of range");
    assert_warns::<Vs>(
        &f("{abort: {httpStatus: 503, percent: 50}}"),
        "100% of requests are aborted, not 50%",
    );
    assert_warns::<Vs>(&f("{abort: {percentage: {value: 10}}}"), "the abort has no error to return");
    assert_accepts::<Vs>(&f(
        "{abort: {grpcStatus: UNAVAILABLE, percentage: {value: 0.1}}, delay: {fixedDelay: 7s, percentage: {value: 100}}}",
    ));
}

#[test]
fn vs_faults_turn_off_timeouts_and_retries() {
    assert_warns::<Vs>(
        &vs_rule(&format!("fault: {{abort: {{httpStatus: 503}}}}\n    timeout: 2s\n{ROUTE}")),
        "timeout and retries are not applied",
    );
}

#[test]
fn vs_redirects() {
    assert_rejects::<Vs>(&vs_rule("redirect: {}"), "spec.http[0].redirect: the redirect changes nothing");
    assert_rejects::<Vs>(&vs_rule("redirect: {uri: /x, redirectCode: 200}"), "200 is not a redirect code");
    assert_rejects::<Vs>(&vs_rule("redirect: {scheme: ftp}"), "scheme \"ftp\" is not allowed");
    assert_rejects::<Vs>(&vs_rule("redirect: {port: 0}"), "port 0 is out of range");
    assert_accepts::<Vs>(&vs_rule("redirect: {derivePort: FROM_REQUEST_PORT}"));
}

#[test]
fn vs_retries() {
    let r = |retries: &str| vs_rule(&format!("retries: {retries}\n{ROUTE}"));
    assert_rejects::<Vs>(&r("{attempts: -1}"), "attempts -1 is negative");
    assert_rejects::<Vs>(&r("{attempts: 0, perTryTimeout: 2s}"), "attempts is 0 (retries disabled)");
    assert_rejects::<Vs>(
        &r("{attempts: 3, retryOn: \"5xx,sometimes\"}"),
        "\"sometimes\" is not a retryOn policy",
    );
    assert_rejects::<Vs>(
        &r("{attempts: 3, perTryTimeout: 2}"),
        "spec.http[0].retries.perTryTimeout: \"2\" is not a duration",
    );
    assert_accepts::<Vs>(&r(
        "{attempts: 3, perTryTimeout: 2s, retryOn: \"5xx,connect-failure,503\", backoff: 25ms}",
    ));
}

#[test]
fn vs_rewrites() {
    let r = |rw: &str| vs_rule(&format!("rewrite: {rw}\n{ROUTE}"));
    assert_rejects::<Vs>(
        &r("{uri: /a, uriRegexRewrite: {match: \"^/a\", rewrite: /b}}"),
        "uri and uriRegexRewrite are both set",
    );
    assert_rejects::<Vs>(&r("{}"), "the rewrite changes nothing");
    assert_rejects::<Vs>(
        &r("{uriRegexRewrite: {match: \"^/a\"}}"),
        "uriRegexRewrite needs both match and rewrite",
    );
    assert_rejects::<Vs>(
        &r("{uriRegexRewrite: {match: \"^/a(\", rewrite: /b}}"),
        "rewrite.uriRegexRewrite.match",
    );
    assert_accepts::<Vs>(&r(
        "{uriRegexRewrite: {match: \"^/service/([^/]+)(/.*)$\", rewrite: \"\\\\2/instance/\\\\1\"}}",
    ));
}

#[test]
fn vs_destinations() {
    let d = |dest: &str| vs_rule(&format!("route: [{{destination: {dest}}}]"));
    assert_rejects::<Vs>(
        &d("{host: \"*\"}"),
        "spec.http[0].route[0].destination.host: \"*\" is not a destination",
    );
    assert_rejects::<Vs>(
        &d("{host: \"bad host\"}"),
        "destination host \"bad host\" is not a valid host name",
    );
    assert_rejects::<Vs>(&d("{host: reviews, subset: V_1}"), "subset name \"V_1\" is not a DNS label");
    assert_rejects::<Vs>(
        &d("{host: reviews, port: {number: 0}}"),
        "destination.port.number: port 0 is out of range",
    );
    assert_accepts::<Vs>(&d("{host: reviews.default.svc.cluster.local, subset: v2, port: {number: 9080}}"));
}

#[test]
fn vs_weights() {
    let w = |a: &str, b: &str| {
        vs_rule(&format!(
            "route:\n    - destination: {{host: reviews, subset: v1}}\n      {a}\n    - destination: {{host: reviews, subset: v2}}\n      {b}"
        ))
    };
    assert_rejects::<Vs>(
        &w("weight: -10", "weight: 110"),
        "spec.http[0].route[0].weight: weight -10 is negative",
    );
    assert_rejects::<Vs>(
        &w("weight: 0", "weight: 0"),
        "spec.http[0].route: the destinations' weights add up to 0",
    );
    assert_rejects::<Vs>(&w("", ""), "weights add up to 0");
    assert_warns::<Vs>(&w("weight: 80", "weight: 10"), "spec.http[0].route: weights add up to 90, not 100");
    assert_warns::<Vs>(&w("weight: 100", ""), "spec.http[0].route[1].weight: this destination has no weight");
    assert_accepts::<Vs>(&w("weight: 80", "weight: 20"));
    let tcp = "hosts: [reviews]\ntcp:\n- route:\n  - {destination: {host: reviews}, weight: 30}\n  - {destination: {host: ratings}, weight: 30}";
    assert_warns::<Vs>(tcp, "spec.tcp[0].route: weights add up to 60");
}

#[test]
fn vs_timeouts() {
    assert_rejects::<Vs>(
        &vs_rule(&format!("timeout: \"10\"\n{ROUTE}")),
        "spec.http[0].timeout: \"10\" is not a duration",
    );
    assert_rejects::<Vs>(&vs_rule(&format!("timeout: 1500us\n{ROUTE}")), "finer than a millisecond");
    assert_accepts::<Vs>(&vs_rule(&format!("timeout: 1h30m\n{ROUTE}")));
    assert_accepts::<Vs>(&vs_rule(&format!("timeout: 1.5s\n{ROUTE}")));
}

const TLS_VS: &str = "hosts: [\"*.bookinfo.com\"]\ngateways: [bookinfo-gateway]\ntls:\n";

#[test]
fn vs_tls_rules() {
    assert_rejects::<Vs>(
        &format!("{TLS_VS}- match: []\n  route: [{{destination: {{host: productpage}}}}]"),
        "spec.tls[0].match: a tls rule needs at least one match",
    );
    assert_rejects::<Vs>(
        &format!("{TLS_VS}- match: [{{sniHosts: []}}]\n  route: [{{destination: {{host: productpage}}}}]"),
        "the tls match has no sniHosts",
    );
    assert_rejects::<Vs>(
        &format!(
            "{TLS_VS}- match: [{{sniHosts: [login.example.com]}}]\n  route: [{{destination: {{host: productpage}}}}]"
        ),
        "SNI host \"login.example.com\" is not among the VirtualService's hosts",
    );
    assert_rejects::<Vs>(
        &format!("{TLS_VS}- match: [{{sniHosts: [a.bookinfo.com]}}]"),
        "spec.tls[0].route: the tls rule has no route",
    );
    assert_rejects::<Vs>(
        &format!(
            "{TLS_VS}- match: [{{sniHosts: [a.bookinfo.com], destinationSubnets: [10.0.0.0/33]}}]\n  route: [{{destination: {{host: productpage}}}}]"
        ),
        "is not a valid CIDR block",
    );
    assert_warns::<Vs>(
        &format!(
            "{TLS_VS}- match: [{{sniHosts: [10.0.0.1]}}]\n  route: [{{destination: {{host: productpage}}}}]"
        ),
        "SNI does not allow",
    );
    assert_accepts::<Vs>(&format!(
        "{TLS_VS}- match: [{{sniHosts: [login.bookinfo.com], port: 443}}]\n  route: [{{destination: {{host: productpage}}}}]"
    ));
}

#[test]
fn vs_tcp_rules() {
    assert_rejects::<Vs>(
        "hosts: [ratings]\ntcp: [{match: [{port: 27017}]}]",
        "spec.tcp[0].route: the tcp rule has no route",
    );
    assert_rejects::<Vs>(
        "hosts: [ratings]\ntcp: [{match: [{sourceSubnet: 10.0.0.300}], route: [{destination: {host: ratings}}]}]",
        "spec.tcp[0].match[0].sourceSubnet",
    );
    assert_accepts::<Vs>(
        "hosts: [ratings]\ntcp: [{match: [{port: 27017, destinationSubnets: [10.0.0.0/8, \"::1\"]}], route: [{destination: {host: ratings, port: {number: 27017}}}]}]",
    );
}

#[test]
fn vs_export_to() {
    let e = |export: &str| {
        format!(
            "hosts: [reviews]\nexportTo: {export}\nhttp: [{{route: [{{destination: {{host: reviews}}}}]}}]"
        )
    };
    assert_rejects::<Vs>(
        &e("[\"~\"]"),
        "spec.exportTo[0]: \"~\" (export to no one) is only for ServiceEntries",
    );
    assert_rejects::<Vs>(
        &e("[\".\", default]"),
        "spec.exportTo[1]: \".\" and \"default\" both mean this namespace (default)",
    );
    assert_rejects::<Vs>(&e("[\"*\", other]"), "\"*\" already exports to every namespace");
    assert_rejects::<Vs>(&e("[Bad_NS]"), "is not \".\", \"*\" or a namespace name");
    assert_rejects::<Vs>(&e("[a, a]"), "\"a\" is listed twice");
    assert_accepts::<Vs>(&e("[\".\", other]"));
}

#[test]
fn vs_unreachable_rules() {
    let yaml = format!(
        "hosts: [reviews]\nhttp:\n  - route: [{{destination: {{host: reviews}}}}]\n  - match: [{{uri: {{prefix: /a}}}}]\n{ROUTE}"
    );
    assert_warns::<Vs>(&yaml, "spec.http[1]: this rule is never used: spec.http[0] before it has no match");
    let dup = format!(
        "hosts: [reviews]\nhttp:\n  - match: [{{uri: {{prefix: /a}}}}]\n{ROUTE}  - match: [{{name: again, uri: {{prefix: /a}}}}, {{uri: {{prefix: /b}}}}]\n{ROUTE}  - match: [{{uri: {{prefix: /a}}}}]\n{ROUTE}"
    );
    assert_warns::<Vs>(
        &dup,
        "spec.http[1].match[0]: this match is never used: spec.http[0] has the same match",
    );
    assert_warns::<Vs>(&dup, "spec.http[2]: this rule is never used: its matches are all in earlier rules");
}

#[test]
fn vs_warns_about_subsets_no_destination_rule_defines() {
    assert_warns::<Vs>(
        &vs_rule("route: [{destination: {host: reviews, subset: v4}}]"),
        "spec.http[0].route[0].destination.subset: subset v4 is not defined by any DestinationRule for \
         reviews.default.svc.cluster.local: add it to a DestinationRule's subsets, or traffic to it gets 503",
    );
    assert_warns::<Vs>(
        &vs_rule("route: [{destination: {host: productpage, subset: v2}}]"),
        "subset v2 is not defined",
    );
    assert_accepts::<Vs>(&vs_rule("route: [{destination: {host: ratings.default, subset: v2-mysql}}]"));
}

#[test]
fn vs_warns_about_hosts_and_destinations_without_services() {
    assert_warns::<Vs>(
        "hosts: [shipping]\nhttp: [{route: [{destination: {host: reviews}}]}]",
        "spec.hosts[0]: no Service shipping.default.svc.cluster.local exists",
    );
    assert_warns::<Vs>(
        &vs_rule("route: [{destination: {host: shipping}}]"),
        "spec.http[0].route[0].destination.host: no Service shipping.default.svc.cluster.local exists",
    );
    // Wildcards, IP addresses and gateway-only hosts are not services.
    assert_accepts::<Vs>(
        "hosts: [\"*.example.com\", 10.0.0.1]\nhttp: [{route: [{destination: {host: reviews}}]}]",
    );
    assert_accepts::<Vs>(
        "hosts: [shop.example.com]\ngateways: [gw]\nhttp: [{route: [{destination: {host: reviews}}]}]",
    );
}

// ------------------------------------------------------ DestinationRule

#[test]
fn dr_host() {
    assert_rejects::<Dr>(
        "host: \"reviews..default\"",
        "spec.host: host \"reviews..default\" is not a valid host name",
    );
    assert_warns::<Dr>("host: shipping", "spec.host: no Service shipping.default.svc.cluster.local exists");
    assert_accepts::<Dr>("host: \"*.default.svc.cluster.local\"");
    assert_accepts::<Dr>("host: reviews");
}

#[test]
fn dr_traffic_policies_are_not_empty() {
    assert_rejects::<Dr>(
        "host: reviews\ntrafficPolicy: {}",
        "spec.trafficPolicy: the traffic policy is empty",
    );
    assert_rejects::<Dr>(
        "host: reviews\nsubsets: [{name: v1, trafficPolicy: {}}]",
        "spec.subsets[0].trafficPolicy: the traffic policy is empty",
    );
    assert_rejects::<Dr>(
        "host: reviews\ntrafficPolicy: {tunnel: {targetHost: egress.example.com, targetPort: 443}, proxyProtocol: {version: V1}}",
        "tunnel and proxyProtocol are both set",
    );
}

#[test]
fn dr_tunnels() {
    assert_rejects::<Dr>(
        "host: reviews\ntrafficPolicy: {tunnel: {protocol: GET, targetHost: egress.example.com, targetPort: 443}}",
        "tunnel protocol \"GET\" is not supported",
    );
    assert_rejects::<Dr>(
        "host: reviews\ntrafficPolicy: {tunnel: {targetHost: \"bad host\", targetPort: 0}}",
        "neither a host name nor an IP address",
    );
    assert_accepts::<Dr>(
        "host: reviews\ntrafficPolicy: {tunnel: {protocol: CONNECT, targetHost: 10.0.0.1, targetPort: 3128}}",
    );
}

#[test]
fn dr_connection_pools() {
    let cp = |pool: &str| format!("host: reviews\ntrafficPolicy: {{connectionPool: {pool}}}");
    assert_rejects::<Dr>(&cp("{}"), "the connection pool is empty");
    assert_rejects::<Dr>(
        &cp("{tcp: {maxConnections: -1}}"),
        "spec.trafficPolicy.connectionPool.tcp.maxConnections: -1 is negative",
    );
    assert_rejects::<Dr>(&cp("{http: {http2MaxRequests: -5}}"), "http2MaxRequests: -5 is negative");
    assert_rejects::<Dr>(&cp("{tcp: {connectTimeout: 30}}"), "connectTimeout: \"30\" is not a duration");
    assert_rejects::<Dr>(
        &cp("{http: {h2UpgradePolicy: UPGRADE, useClientProtocol: true}}"),
        "useClientProtocol contradicts h2UpgradePolicy",
    );
    assert_accepts::<Dr>(&cp(
        "{tcp: {maxConnections: 100, connectTimeout: 30ms, tcpKeepalive: {time: 7200s, interval: 75s}}, http: {http1MaxPendingRequests: 10, idleTimeout: 1h, h2UpgradePolicy: UPGRADE}}",
    ));
}

#[test]
fn dr_outlier_detection() {
    let od = |o: &str| format!("host: reviews\ntrafficPolicy: {{outlierDetection: {o}}}");
    assert_rejects::<Dr>(
        &od("{consecutiveLocalOriginFailures: 5}"),
        "set splitExternalLocalOriginErrors: true",
    );
    assert_rejects::<Dr>(
        &od("{maxEjectionPercent: 150}"),
        "maxEjectionPercent: percentage 150 is out of range",
    );
    assert_rejects::<Dr>(&od("{baseEjectionTime: \"30\"}"), "e.g. \"30s\"");
    assert_warns::<Dr>(&od("{consecutiveErrors: 5}"), "consecutiveErrors is deprecated");
    assert_accepts::<Dr>(&od(
        "{consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s, maxEjectionPercent: 50, splitExternalLocalOriginErrors: true, consecutiveLocalOriginFailures: 3}",
    ));
}

#[test]
fn dr_load_balancers() {
    let lb = |l: &str| format!("host: reviews\ntrafficPolicy: {{loadBalancer: {l}}}");
    assert_rejects::<Dr>(
        &lb("{simple: RANDOM, consistentHash: {useSourceIp: true}}"),
        "simple and consistentHash are both set",
    );
    assert_rejects::<Dr>(
        &lb("{consistentHash: {httpHeaderName: x-user, useSourceIp: true}}"),
        "httpHeaderName and useSourceIp are all set",
    );
    assert_rejects::<Dr>(
        &lb("{consistentHash: {httpCookie: {name: \"\", ttl: 0s}}}"),
        "the cookie has no name",
    );
    assert_rejects::<Dr>(
        &lb("{consistentHash: {useSourceIp: true, maglev: {tableSize: 1000}}}"),
        "tableSize 1000 is not a prime number",
    );
    assert_rejects::<Dr>(
        &lb("{consistentHash: {useSourceIp: true, maglev: {}}}"),
        "maglev needs a tableSize",
    );
    assert_rejects::<Dr>(
        &lb("{consistentHash: {useSourceIp: true, maglev: {tableSize: 65537}, ringHash: {}}}"),
        "ringHash and maglev are both set",
    );
    assert_rejects::<Dr>(
        &lb(
            "{consistentHash: {useSourceIp: true, minimumRingSize: 1024, ringHash: {minimumRingSize: 1024}}}",
        ),
        "minimumRingSize cannot be combined",
    );
    assert_rejects::<Dr>(
        &lb("{simple: ROUND_ROBIN, warmupDurationSecs: \"60\"}"),
        "warmupDurationSecs: \"60\" is not a duration",
    );
    assert_warns::<Dr>(
        &lb("{consistentHash: {useSourceIp: true, minimumRingSize: 1024}}"),
        "minimumRingSize is deprecated",
    );
    assert_warns::<Dr>(
        &lb("{consistentHash: {useSourceIp: false}}"),
        "consistentHash has nothing to hash on",
    );
    assert_accepts::<Dr>(&lb(
        "{consistentHash: {httpCookie: {name: session, ttl: 3600s}, maglev: {tableSize: 65537}}}",
    ));
    assert_accepts::<Dr>(&lb("{simple: LEAST_REQUEST, warmup: {duration: 60s}}"));
}

#[test]
fn dr_locality_load_balancing() {
    let l = |s: &str| {
        format!(
            "host: reviews\ntrafficPolicy: {{outlierDetection: {{consecutive5xxErrors: 5}}, loadBalancer: {{localityLbSetting: {s}}}}}"
        )
    };
    assert_rejects::<Dr>(
        &l(
            "{distribute: [{from: \"us-east/*\", to: {\"us-east/*\": 100}}], failover: [{from: us-east, to: us-west}]}",
        ),
        "distribute and failover are both set",
    );
    assert_rejects::<Dr>(
        &l("{distribute: [{from: \"us-east/*\", to: {\"us-east/*\": 80, \"us-west/*\": 10}}]}"),
        "the weights add up to 90: make them add up to 100",
    );
    assert_rejects::<Dr>(
        &l("{distribute: [{from: \"us-east/*/x\", to: {\"us-east/*\": 100}}]}"),
        "may have one '*' only, at the end",
    );
    assert_rejects::<Dr>(&l("{failover: [{from: us-east, to: us-east}]}"), "to itself does nothing");
    assert_rejects::<Dr>(
        &l("{failover: [{from: us-east, to: us-west}], failoverPriority: [topology.kubernetes.io/zone]}"),
        "cannot be in failoverPriority too",
    );
    assert_accepts::<Dr>(&l(
        "{distribute: [{from: \"us-east/zone1/*\", to: {\"us-east/zone1/*\": 80, \"us-east/zone2/*\": 20}}]}",
    ));
    assert_warns::<Dr>(
        "host: reviews\ntrafficPolicy: {loadBalancer: {localityLbSetting: {failover: [{from: us-east, to: us-west}]}}}",
        "add an outlierDetection policy",
    );
}

#[test]
fn dr_client_tls() {
    let t = |tls: &str| format!("host: reviews\ntrafficPolicy: {{tls: {tls}}}");
    assert_rejects::<Dr>(
        &t("{mode: MUTUAL}"),
        "spec.trafficPolicy.tls.clientCertificate: MUTUAL TLS needs a client certificate",
    );
    assert_rejects::<Dr>(&t("{mode: MUTUAL, clientCertificate: /c.pem}"), "MUTUAL TLS needs a private key");
    assert_rejects::<Dr>(
        &t("{mode: SIMPLE, credentialName: cred, caCertificates: /ca.pem}"),
        "with credentialName, the certificates come from that Secret",
    );
    assert_rejects::<Dr>(
        &t("{mode: SIMPLE, insecureSkipVerify: true, subjectAltNames: [a]}"),
        "insecureSkipVerify turns off the server check",
    );
    assert_warns::<Dr>(
        &t("{mode: ISTIO_MUTUAL, clientCertificate: /c.pem}"),
        "ISTIO_MUTUAL uses the mesh's own certificates",
    );
    assert_accepts::<Dr>(&t(
        "{mode: MUTUAL, clientCertificate: /c.pem, privateKey: /k.pem, caCertificates: /ca.pem, sni: reviews.example.com}",
    ));
    assert_accepts::<Dr>(&t("{mode: SIMPLE, credentialName: reviews-cred}"));
}

#[test]
fn dr_port_level_settings() {
    let p = |s: &str| format!("host: reviews\ntrafficPolicy: {{portLevelSettings: [{s}]}}");
    assert_rejects::<Dr>(
        &p("{tls: {mode: SIMPLE}}"),
        "spec.trafficPolicy.portLevelSettings[0].port: the port-level policy has no port",
    );
    assert_rejects::<Dr>(&p("{port: {number: 9080}}"), "the port-level policy is empty");
    assert_rejects::<Dr>(&p("{port: {number: 99999}, tls: {mode: SIMPLE}}"), "port 99999 is out of range");
    assert_rejects::<Dr>(
        &p("{port: {number: 9080}, connectionPool: {tcp: {maxConnections: -1}}}"),
        "portLevelSettings[0].connectionPool.tcp.maxConnections",
    );
    assert_accepts::<Dr>(&p("{port: {number: 9080}, loadBalancer: {simple: RANDOM}}"));
}

#[test]
fn dr_subsets() {
    assert_rejects::<Dr>(
        "host: reviews\nsubsets: [{name: v1}, {name: v1}]",
        "spec.subsets[1].name: subset \"v1\" is defined twice",
    );
    assert_rejects::<Dr>("host: reviews\nsubsets: [{name: V_1}]", "subset name \"V_1\" is not a DNS label");
    assert_rejects::<Dr>("host: reviews\nsubsets: [{name: \"\"}]", "the subset has no name");
    assert_rejects::<Dr>(
        "host: reviews\nsubsets: [{name: v1, labels: {version: \"v 1\"}}]",
        "spec.subsets[0].labels[\"version\"]",
    );
    assert_accepts::<Dr>(
        "host: reviews\nsubsets: [{name: v1, labels: {version: v1, example.com/tier: web}}]",
    );
}

#[test]
fn dr_export_to_and_workload_selectors() {
    assert_rejects::<Dr>(
        "host: reviews\nworkloadSelector: {matchLabels: {app: x}}\nexportTo: [\"*\"]",
        "a DestinationRule with a workloadSelector applies in its own namespace only",
    );
    assert_rejects::<Dr>(
        "host: reviews\nworkloadSelector: {matchLabels: {app: \"x*\"}}",
        "wildcards are not supported in selectors",
    );
    assert_warns::<Dr>("host: reviews\nworkloadSelector: {}", "selects every workload in the namespace");
    assert_accepts::<Dr>(
        "host: reviews\nworkloadSelector: {matchLabels: {app: productpage}}\nexportTo: [\".\"]",
    );
}

// ---------------------------------------------------------- ServiceRole

#[test]
fn role_needs_rules_with_services() {
    assert_rejects::<Role>("rules: []", "spec.rules: the ServiceRole has no rules");
    assert_rejects::<Role>("rules: [{methods: [GET]}]", "spec.rules[0].services: the rule names no services");
    assert_accepts::<Role>("rules: [{services: [\"*\"], methods: [GET]}]");
}

#[test]
fn role_regular_and_not_fields_are_exclusive() {
    assert_rejects::<Role>(
        "rules: [{services: [\"*\"], methods: [GET], notMethods: [DELETE]}]",
        "methods and notMethods are both set",
    );
    assert_rejects::<Role>(
        "rules: [{services: [\"*\"], ports: [80], not_ports: [81]}]",
        "ports and notPorts are both set",
    );
    assert_accepts::<Role>(
        "rules: [{services: [\"*\"], paths: [\"/books/*\"], notPaths: [\"/books/secret\"]}]",
    );
}

#[test]
fn role_ports_are_in_range() {
    assert_rejects::<Role>(
        "rules: [{services: [\"*\"], ports: [70000]}]",
        "spec.rules[0].ports[0]: port 70000 is out of range",
    );
    assert_accepts::<Role>("rules: [{services: [\"*\"], ports: [9080]}]");
}

#[test]
fn role_constraints() {
    let c = |constraint: &str| {
        format!("rules: [{{services: [\"*\"], ports: [80], constraints: [{constraint}]}}]")
    };
    assert_rejects::<Role>(
        &c("{values: [v1]}"),
        "spec.rules[0].constraints[0].key: the constraint has no key",
    );
    assert_rejects::<Role>(&c("{key: \"destination.labels[version]\"}"), "the constraint has no values");
    assert_rejects::<Role>(
        &c("{key: destination.port, values: [\"80\"]}"),
        "destination.port repeats the rule's ports field",
    );
    assert_warns::<Role>(
        &c("{key: source.namespace, values: [default]}"),
        "\"source.namespace\" is not a supported constraint key",
    );
    assert_accepts::<Role>(&c("{key: \"destination.labels[version]\", values: [v1]}"));
    assert_accepts::<Role>(&c(
        "{key: \"experimental.envoy.filters.network.mysql_proxy[db.table]\", values: [\"[update]\"]}",
    ));
    assert_warns::<Role>(
        "rules: [{services: [\"*\"], constraints: [{key: destination.port, values: [http]}]}]",
        "\"http\" is not a port number",
    );
}

#[test]
fn role_methods_are_upper_case() {
    assert_warns::<Role>("rules: [{services: [\"*\"], methods: [get]}]", "write \"GET\"");
}

// --------------------------------------------------- ServiceRoleBinding

const ROLE_REF: &str = "roleRef: {kind: ServiceRole, name: productpage-viewer}";

#[test]
fn binding_subjects() {
    assert_rejects::<Binding>(
        &format!("subjects: []\n{ROLE_REF}"),
        "spec.subjects: the binding has no subjects",
    );
    assert_rejects::<Binding>(
        &format!("subjects: [{{user: alice}}, {{}}]\n{ROLE_REF}"),
        "spec.subjects[1]: the subject is empty",
    );
    assert_rejects::<Binding>(
        &format!("subjects: [{{names: [\"*\"]}}]\n{ROLE_REF}"),
        "spec.subjects[0].names[0]: \"*\" is not allowed in names",
    );
    assert_rejects::<Binding>(
        &format!("subjects: [{{namespaces: [a], properties: {{source.namespace: b}}}}]\n{ROLE_REF}"),
        "source.namespace repeats the subject's namespaces field",
    );
    assert_warns::<Binding>(
        &format!("subjects: [{{properties: {{source.name: x}}}}]\n{ROLE_REF}"),
        "\"source.name\" is not a supported property key",
    );
    assert_accepts::<Binding>(&format!(
        "subjects: [{{user: \"*\"}}, {{not_names: [cluster.local/ns/x/sa/y], namespaces: [default]}}, {{properties: {{\"request.auth.claims[iss]\": \"https://a.example.com\"}}}}]\n{ROLE_REF}"
    ));
}

#[test]
fn binding_role_references() {
    assert_rejects::<Binding>("subjects: [{user: \"*\"}]", "spec.roleRef: the binding names no role");
    assert_rejects::<Binding>(
        "subjects: [{user: \"*\"}]\nroleRef: {kind: ClusterRole, name: x}",
        "spec.roleRef.kind: roleRef.kind is \"ClusterRole\"",
    );
    assert_rejects::<Binding>(
        "subjects: [{user: \"*\"}]\nroleRef: {kind: ServiceRole}",
        "spec.roleRef.name: roleRef has no name",
    );
    assert_rejects::<Binding>(
        &format!("subjects: [{{user: \"*\"}}]\n{ROLE_REF}\nrole: productpage-viewer"),
        "roleRef and role are all set",
    );
    assert_rejects::<Binding>("subjects: [{user: \"*\"}]\nrole: /", "role \"/\" names no ServiceRole");
    assert_accepts::<Binding>("subjects: [{user: \"*\"}]\nrole: /mesh-viewer");
    assert_accepts::<Binding>("subjects: [{user: \"*\"}]\nactions: [{methods: [GET]}]");
}

#[test]
fn binding_warns_about_missing_roles() {
    assert_warns::<Binding>(
        "subjects: [{user: \"*\"}]\nroleRef: {kind: ServiceRole, name: ghost}",
        "spec.roleRef.name: ServiceRole default/ghost does not exist, so this binding grants nothing",
    );
    assert_warns::<Binding>(
        "subjects: [{user: \"*\"}]\nrole: ghost",
        "ServiceRole default/ghost does not exist",
    );
    assert_accepts::<Binding>(&format!("subjects: [{{user: \"*\"}}]\n{ROLE_REF}\nmode: PERMISSIVE"));
}

// ------------------------------------------------------------ RbacConfig

#[test]
fn rbac_config_modes_need_their_lists() {
    assert_rejects::<Config>(
        "mode: ON_WITH_INCLUSION",
        "spec.inclusion: mode ON_WITH_INCLUSION needs inclusion",
    );
    assert_rejects::<Config>(
        "mode: ON_WITH_EXCLUSION",
        "spec.exclusion: mode ON_WITH_EXCLUSION needs exclusion",
    );
    assert_accepts::<Config>("mode: ON_WITH_INCLUSION\ninclusion: {namespaces: [default]}");
    assert_accepts::<Config>("mode: ON_WITH_EXCLUSION\nexclusion: {}");
    assert_accepts::<Config>("mode: 'ON'\nenforcement_mode: PERMISSIVE");
}

#[test]
fn rbac_config_lists_outside_their_mode_are_ignored() {
    assert_warns::<Config>(
        "mode: 'ON'\ninclusion: {namespaces: [default]}",
        "inclusion is ignored unless mode is ON_WITH_INCLUSION",
    );
    assert_warns::<Config>(
        "exclusion: {namespaces: [kube-system]}",
        "exclusion is ignored unless mode is ON_WITH_EXCLUSION",
    );
    assert_warns::<Config>("mode: ON_WITH_INCLUSION\ninclusion: {}", "RBAC is enforced nowhere");
}

#[test]
fn cluster_rbac_config_validates_its_inner_spec() {
    let spec: ClusterRbacConfigSpec = serde_yaml_ng::from_str("mode: ON_WITH_INCLUSION").unwrap();
    assert!(has_errors(&spec.validate("", bookinfo())));
}

// ------------------------------------------------------------ cases.yaml

/// The namespace of every case in cases.yaml (the end-to-end test makes one
/// of that name).
const CASES_NS: &str = "cases";

/// One case of cases.yaml; the file's header says what each field means.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Case {
    name: String,
    kind: String,
    spec: Value,
    expect: Expect,
    fragment: String,
    object_name: Option<String>,
    #[serde(default)]
    schema: bool,
    fill: Option<usize>,
}

#[derive(serde::Deserialize, Clone, Copy, Debug, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Expect {
    Reject,
    Warn,
    Accept,
}

impl Case {
    /// The spec with every "FILL" string replaced by `fill` times "x".
    fn spec(&self) -> Value {
        fn fill(v: &mut Value, n: usize) {
            match v {
                Value::String(s) if s == "FILL" => *s = "x".repeat(n),
                Value::Array(items) => items.iter_mut().for_each(|i| fill(i, n)),
                Value::Object(fields) => fields.values_mut().for_each(|f| fill(f, n)),
                _ => {}
            }
        }
        let mut spec = self.spec.clone();
        if let Some(n) = self.fill {
            fill(&mut spec, n);
        }
        spec
    }

    /// The object's namespace, as the webhook gets it: none for cluster-scoped kinds.
    fn namespace(&self) -> &'static str {
        if self.kind == "ClusterRbacConfig" { "" } else { CASES_NS }
    }

    fn object_name(&self) -> &str {
        self.object_name.as_deref().unwrap_or(&self.name)
    }

    /// Why the case does not hold, if it does not.
    fn problem(&self, ctx: &Context) -> Option<String> {
        let (namespace, name) = (self.namespace(), self.object_name());
        let found = validate_object(&self.kind, namespace, name, &self.spec(), ctx);
        let rendered = |error: bool| -> Vec<String> {
            found
                .iter()
                .filter(|f| f.is_error() == error)
                .map(|f| render(&self.kind, namespace, name, f))
                .collect()
        };
        let (errors, warnings) = (rendered(true), rendered(false));
        // The webhook cuts warnings at 256 characters (admission::shorten).
        let shown = |w: &String| -> String {
            if w.len() <= 256 {
                return w.clone();
            }
            let mut end = 253;
            while !w.is_char_boundary(end) {
                end -= 1;
            }
            w[..end].to_string()
        };
        let holds = match self.expect {
            Expect::Reject => errors.iter().any(|e| e.contains(&self.fragment)),
            Expect::Warn => errors.is_empty() && warnings.iter().any(|w| shown(w).contains(&self.fragment)),
            Expect::Accept => errors.is_empty(),
        };
        (!holds).then(|| {
            format!(
                "{} ({:?} {:?}): got\n    errors: {errors:#?}\n    warnings: {warnings:#?}",
                self.name, self.expect, self.fragment
            )
        })
    }
}

fn cases() -> Vec<Case> {
    serde_yaml_ng::from_str(include_str!("cases.yaml")).expect("cases.yaml reads")
}

/// The cluster every case assumes; e2e/tests/webhook.rs makes the same.
fn cases_context() -> Context {
    let mut ctx = Context::empty();
    for svc in ["reviews", "ratings", "details", "productpage"] {
        ctx.add_service(CASES_NS, svc);
    }
    let rule: Dr = serde_yaml_ng::from_str(
        "host: reviews\nsubsets:\n- {name: v1, labels: {version: v1}}\n- {name: v2, labels: {version: v2}}\n- {name: v3, labels: {version: v3}}",
    )
    .expect("DestinationRule");
    ctx.add_destination_rule(CASES_NS, &rule);
    ctx.add_service_role(CASES_NS, "viewer");
    ctx
}

#[test]
fn every_case_in_cases_yaml_holds() {
    let cases = cases();
    let ctx = cases_context();
    let problems: Vec<String> = cases.iter().filter_map(|c| c.problem(&ctx)).collect();
    assert!(
        problems.is_empty(),
        "{} of {} cases do not hold:\n{}",
        problems.len(),
        cases.len(),
        problems.join("\n")
    );
}

#[test]
fn cases_yaml_is_well_formed() {
    let cases = cases();
    let kinds = [
        "VirtualService",
        "DestinationRule",
        "ServiceRole",
        "ServiceRoleBinding",
        "ClusterRbacConfig",
        "RbacConfig",
    ];
    let mut names = std::collections::BTreeSet::new();
    for c in &cases {
        let kebab = !c.name.is_empty()
            && c.name.len() <= 63
            && c.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !c.name.starts_with('-')
            && !c.name.ends_with('-');
        assert!(kebab, "{}: the name is not kebab-case (a DNS label)", c.name);
        assert!(names.insert(c.name.as_str()), "{}: the name is used twice", c.name);
        assert!(kinds.contains(&c.kind.as_str()), "{}: unknown kind {}", c.name, c.kind);
        assert!(c.spec.is_object(), "{}: the spec is not a mapping", c.name);
        assert_eq!(c.fragment.is_empty(), c.expect == Expect::Accept, "{}: fragment", c.name);
        assert!(!c.schema || c.expect == Expect::Reject, "{}: a schema case must reject", c.name);
    }
    // Every kind and outcome is represented.
    for kind in kinds {
        assert!(cases.iter().any(|c| c.kind == kind && c.expect == Expect::Reject), "no {kind} rejected");
    }
    for expect in [Expect::Reject, Expect::Warn, Expect::Accept] {
        assert!(cases.iter().any(|c| c.expect == expect), "no {expect:?} case");
    }
}

//! The validation API (rendering, parse errors, the cluster context), the
//! Bookinfo samples, which must pass cleanly, and the runner of cases.yaml,
//! the one home of the per-rule cases (at least one each, positive and
//! negative).

use std::sync::OnceLock;

use serde_json::Value;

use super::*;
use crate::api::samples;

type Vs = VirtualServiceSpec;
type Dr = DestinationRuleSpec;

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

fn list(findings: &[Finding]) -> String {
    findings.iter().map(|f| format!("  {:?} {f}\n", f.severity)).collect()
}

/// Every kind validation knows.
const KINDS: [&str; 13] = [
    "VirtualService",
    "DestinationRule",
    "Gateway",
    "ServiceEntry",
    "Sidecar",
    "ServiceRole",
    "ServiceRoleBinding",
    "ClusterRbacConfig",
    "RbacConfig",
    "PeerAuthentication",
    "RequestAuthentication",
    "Policy",
    "MeshPolicy",
];

// ------------------------------------------------------------- Bookinfo

#[test]
fn bookinfo_samples_have_no_errors_and_no_unexpected_warnings() {
    let mut checked = 0;
    for kind in KINDS {
        for (file, doc) in samples::of_kind(kind) {
            let name = doc["metadata"]["name"].as_str().unwrap();
            let found = validation_only(validate_object(kind, ns_of(&doc), name, &doc["spec"], bookinfo()));
            assert!(!has_errors(&found), "{file} {kind} {name}:\n{}", list(&found));
            // The cert-manager sample routes a gateway to a Service that is
            // not part of Bookinfo; the fault-injection sample has a second
            // catch-all rule that is never used (Istio warns about it too).
            // The MongoDB policy names a Service Bookinfo does not deploy.
            let unexpected =
                ["certmanager-gateway.yaml", "fault-injection-details-v1.yaml", "mongodb-policy.yaml"];
            if !unexpected.contains(&file.as_str()) {
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
    for kind in [
        "VirtualService",
        "DestinationRule",
        "Gateway",
        "ServiceEntry",
        "ServiceRole",
        "ServiceRoleBinding",
        "ClusterRbacConfig",
    ] {
        for (file, doc) in samples::of_kind(kind) {
            let name = doc["metadata"]["name"].as_str().unwrap();
            let found = validate_object(kind, ns_of(&doc), name, &doc["spec"], bookinfo());
            for f in found.iter().filter(|f| f.message.starts_with(inventory::NOT_APPLIED)) {
                seen.push(format!("{file} {kind} {name} {}", f.field));
            }
        }
    }
    // Authorization, Bookinfo's Gateways and its ServiceEntry sample are
    // applied: no sample names a field.
    let mut expected: Vec<String> = Vec::new();
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
    assert_eq!(found.len(), 2, "{}", list(&found));
    // Its abort sets Istio 1.1's `percent`, which mesh reads as 1.1 did.
    assert!(
        found
            .iter()
            .any(|f| f.field == "spec.http[0].fault.abort.percent" && f.message.contains("Istio 1.1")),
        "{}",
        list(&found)
    );
    assert!(
        found.iter().any(|f| f.field == "spec.http[1]" && f.message.contains("never used")),
        "{}",
        list(&found)
    );
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
    assert!(validate_object("WorkloadEntry", NS, "we", &spec, bookinfo()).is_empty());
}

#[test]
fn an_unknown_context_skips_the_cluster_checks() {
    let spec: Vs = serde_yaml_ng::from_str(
        "hosts: [reviews]\nhttp: [{route: [{destination: {host: nowhere, subset: v9}}]}]",
    )
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

// ------------------------------------------------------------ RbacConfig

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
    Clean,
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
        if matches!(self.kind.as_str(), "ClusterRbacConfig" | "MeshPolicy") { "" } else { CASES_NS }
    }

    fn object_name(&self) -> &str {
        self.object_name.as_deref().unwrap_or(&self.name)
    }

    /// Why the case does not hold, if it does not.
    fn problem(&self, ctx: &Context) -> Option<String> {
        let (namespace, name) = (self.namespace(), self.object_name());
        let found = validate_object(&self.kind, namespace, name, &self.spec(), ctx);
        // A clean case may still name fields mesh does not apply yet (the
        // inventory's warning); the other kinds do not look at it either.
        let found = validation_only(found);
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
            Expect::Clean => errors.is_empty() && warnings.is_empty(),
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
    for svc in ["reviews", "ratings", "details", "productpage", "echo"] {
        ctx.add_service(CASES_NS, svc);
    }
    ctx.add_tcp_service(CASES_NS, "echo");
    let rule: Dr = serde_yaml_ng::from_str(
        "host: reviews\nsubsets:\n- {name: v1, labels: {version: v1}}\n- {name: v2, labels: {version: v2}}\n- {name: v3, labels: {version: v3}}",
    )
    .expect("DestinationRule");
    ctx.add_destination_rule(CASES_NS, &rule);
    ctx.add_service_role(CASES_NS, "viewer");
    let namespace_wide: PeerAuthenticationSpec =
        serde_yaml_ng::from_str("mtls: {mode: PERMISSIVE}").expect("PeerAuthentication");
    ctx.add_peer_authentication(CASES_NS, "default", Some("2026-01-01T00:00:00Z"), &namespace_wide);
    let reviews: PolicySpec =
        serde_yaml_ng::from_str("targets: [{name: reviews, ports: [{number: 9080}]}]\npeers: [{mtls: {}}]")
            .expect("Policy");
    ctx.add_policy(CASES_NS, "reviews-mtls", &reviews);
    ctx.set_root_namespace(crate::model::DEFAULT_ROOT_NAMESPACE);
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
    let mut names = std::collections::BTreeSet::new();
    for c in &cases {
        let kebab = !c.name.is_empty()
            && c.name.len() <= 63
            && c.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !c.name.starts_with('-')
            && !c.name.ends_with('-');
        assert!(kebab, "{}: the name is not kebab-case (a DNS label)", c.name);
        assert!(names.insert(c.name.as_str()), "{}: the name is used twice", c.name);
        assert!(KINDS.contains(&c.kind.as_str()), "{}: unknown kind {}", c.name, c.kind);
        assert!(c.spec.is_object(), "{}: the spec is not a mapping", c.name);
        let plain = matches!(c.expect, Expect::Accept | Expect::Clean);
        assert_eq!(c.fragment.is_empty(), plain, "{}: fragment", c.name);
        assert!(!c.schema || c.expect == Expect::Reject, "{}: a schema case must reject", c.name);
    }
    // Every kind and outcome is represented.
    for kind in KINDS {
        assert!(cases.iter().any(|c| c.kind == kind && c.expect == Expect::Reject), "no {kind} rejected");
    }
    for expect in [Expect::Reject, Expect::Warn, Expect::Accept, Expect::Clean] {
        assert!(cases.iter().any(|c| c.expect == expect), "no {expect:?} case");
    }
}

// ------------------------------------------------------------- Sidecars

#[test]
fn a_second_namespace_wide_sidecar_is_warned_about() {
    let spec: SidecarSpec = serde_yaml_ng::from_str("egress: [{hosts: [\"./*\"]}]").expect("a Sidecar spec");
    let json = serde_json::to_value(&spec).unwrap();
    let mut ctx = Context::empty();
    ctx.add_sidecar("prod", "default", &spec);
    // The one already there, updated: no other.
    assert!(validation_only(validate_object("Sidecar", "prod", "default", &json, &ctx)).is_empty());
    // A second one without a selector.
    let found = validation_only(validate_object("Sidecar", "prod", "second", &json, &ctx));
    assert_eq!(found.len(), 1, "{}", list(&found));
    assert!(
        found[0].field == "spec.workloadSelector"
            && found[0].message.starts_with("Sidecar default also has no workloadSelector in this namespace"),
        "{}",
        list(&found)
    );
    // One with a selector, or in another namespace, is not its sibling.
    let selecting =
        serde_json::json!({"workloadSelector": {"labels": {"app": "a"}}, "egress": [{"hosts": ["./*"]}]});
    assert!(validation_only(validate_object("Sidecar", "prod", "a", &selecting, &ctx)).is_empty());
    assert!(validation_only(validate_object("Sidecar", "dev", "x", &json, &ctx)).is_empty());
    // Unknown to a context that knows nothing.
    assert!(validation_only(validate_object("Sidecar", "prod", "y", &json, &Context::default())).is_empty());
}

// ------------------------------------------- policies that switch mutual TLS

fn peer_authentication(yaml: &str) -> PeerAuthenticationSpec {
    serde_yaml_ng::from_str(yaml).expect("a PeerAuthentication spec")
}

/// A context that knows the root namespace istio-system and holds
/// mesh-wide PeerAuthentication `first`, created at T0.
fn mesh_wide_context() -> Context {
    let mut ctx = Context::empty();
    ctx.set_root_namespace("istio-system");
    let spec = peer_authentication("mtls: {mode: STRICT}");
    ctx.add_peer_authentication("istio-system", "first", Some("2026-01-01T00:00:00Z"), &spec);
    ctx
}

#[test]
fn a_second_mesh_wide_peer_authentication_is_told_which_one_applies() {
    let mut ctx = mesh_wide_context();
    let spec = peer_authentication("mtls: {mode: DISABLE}");
    let json = serde_json::to_value(&spec).unwrap();
    // Being created, it is the newest: the one already there applies.
    let found = validation_only(validate_object("PeerAuthentication", "istio-system", "second", &json, &ctx));
    assert_eq!(found.len(), 1, "{}", list(&found));
    assert!(
        found[0].message.contains("in the root namespace (mesh-wide)")
            && found[0].message.contains("Istio applies only the oldest, first, and ignores this one"),
        "{}",
        list(&found)
    );
    // An update of an older object: it applies, and says so.
    ctx.add_peer_authentication("istio-system", "second", Some("2025-12-31T00:00:00Z"), &spec);
    let found = validation_only(validate_object("PeerAuthentication", "istio-system", "second", &json, &ctx));
    assert!(
        found[0].message.contains("this one applies, being the oldest; Istio ignores first"),
        "{}",
        list(&found)
    );
    // Same age: by name.
    let mut ctx = mesh_wide_context();
    ctx.add_peer_authentication("istio-system", "a-second", Some("2026-01-01T00:00:00Z"), &spec);
    let found =
        validation_only(validate_object("PeerAuthentication", "istio-system", "a-second", &json, &ctx));
    assert!(found[0].message.contains("this one applies"), "{}", list(&found));
    // The object itself, alone, is no duplicate; a workload policy neither.
    let found = validation_only(validate_object("PeerAuthentication", "istio-system", "first", &json, &ctx));
    assert!(!found.iter().any(|f| f.message.contains("first")), "{}", list(&found));
    let selecting = serde_json::json!({"selector": {"matchLabels": {"app": "a"}}});
    let found = validation_only(validate_object("PeerAuthentication", "other", "x", &selecting, &ctx));
    assert!(found.is_empty(), "{}", list(&found));
}

#[test]
fn a_selector_in_the_root_namespace_is_ignored_by_istio() {
    let ctx = mesh_wide_context();
    let spec =
        serde_json::json!({"selector": {"matchLabels": {"app": "reviews"}}, "mtls": {"mode": "STRICT"}});
    let found =
        validation_only(validate_object("PeerAuthentication", "istio-system", "reviews", &spec, &ctx));
    assert_eq!(found.len(), 1, "{}", list(&found));
    assert!(
        found[0].field == "spec.selector" && found[0].message.contains("Istio ignores"),
        "{}",
        list(&found)
    );
    // Elsewhere it is a workload policy like any other.
    let found = validation_only(validate_object("PeerAuthentication", "default", "reviews", &spec, &ctx));
    assert!(found.is_empty(), "{}", list(&found));
}

#[test]
fn an_unknown_context_skips_the_duplicate_checks() {
    let spec = serde_json::json!({"mtls": {"mode": "STRICT"}});
    let found =
        validation_only(validate_object("PeerAuthentication", "cases", "x", &spec, &Context::default()));
    assert!(found.is_empty(), "{}", list(&found));
    let policy = serde_json::json!({"targets": [{"name": "reviews"}]});
    let found = validation_only(validate_object("Policy", "cases", "x", &policy, &Context::default()));
    assert!(found.is_empty(), "{}", list(&found));
}

#[test]
fn status_and_admission_agree_on_the_name_rules() {
    // validate_object (the webhook) and the kind's Validate plus check_name (status) see the same.
    let spec: MeshPolicySpec = serde_yaml_ng::from_str("peers: [{mtls: {}}]").unwrap();
    let mut by_parts = spec.validate("", bookinfo());
    by_parts.extend(spec.validate_named("", "mesh", bookinfo()));
    by_parts.extend(check_name("MeshPolicy", "mesh"));
    let whole = validate_object("MeshPolicy", "", "mesh", &serde_json::to_value(&spec).unwrap(), bookinfo());
    assert!(has_errors(&by_parts) && has_errors(&whole), "{}", list(&whole));
}

#[test]
fn a_subject_read_from_certificates_warns_where_mutual_tls_is_disabled() {
    use crate::index::PeerAuthentications;
    let binding = serde_json::json!({
        "subjects": [{"user": "cluster.local/ns/default/sa/bookinfo-productpage"}, {"user": "*"}, {"ips": ["10.0.0.0/8"]}],
        "roleRef": {"kind": "ServiceRole", "name": "details-reviews-viewer"},
    });
    let mut index = crate::testing::bookinfo::bookinfo();
    let warnings = |index: &crate::index::Index| -> Vec<String> {
        validate_object("ServiceRoleBinding", NS, "b", &binding, &Context::of(index.state()))
            .into_iter()
            .filter(|f| f.message.contains("mutual TLS is DISABLE"))
            .map(|f| f.field)
            .collect()
    };
    // PERMISSIVE by default: mesh sidecars have certificates.
    assert!(warnings(&index).is_empty());
    let disable: kube::api::DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "security.istio.io/v1beta1", "kind": "PeerAuthentication",
        "metadata": {"name": "default", "namespace": NS},
        "spec": {"mtls": {"mode": "DISABLE"}},
    }))
    .unwrap();
    index.apply::<PeerAuthentications>(&disable);
    // Only the subject that needs a certificate; `*` and addresses match plaintext callers.
    assert_eq!(warnings(&index), ["spec.subjects[0].user"]);
}

#[test]
fn a_virtual_service_naming_a_gateway_that_does_not_exist_is_warned_about() {
    let spec = serde_json::json!({"hosts": ["productpage"], "gateways": ["bookinfo-gateway", "istio-system/edge", "mesh"],
        "http": [{"match": [{"gateways": ["missing"]}], "route": [{"destination": {"host": "productpage"}}]}]});
    // Gateways unknown: nothing to say.
    let unknown = validation_only(validate_object("VirtualService", NS, "v", &spec, bookinfo()));
    assert!(unknown.iter().all(|f| !f.message.contains("no Gateway")), "{}", list(&unknown));
    let mut ctx = bookinfo().clone();
    ctx.add_gateway(NS, "bookinfo-gateway");
    let found = validation_only(validate_object("VirtualService", NS, "v", &spec, &ctx));
    let missing: Vec<&str> =
        found.iter().filter(|f| f.message.contains("no Gateway")).map(|f| f.field.as_str()).collect();
    assert_eq!(missing, ["spec.gateways[1]", "spec.http[0].match[0].gateways[0]"], "{}", list(&found));
    assert!(found.iter().all(|f| f.severity == Severity::Warning), "{}", list(&found));
    assert!(
        found.iter().any(|f| f.message.contains("no Gateway istio-system/edge exists")),
        "{}",
        list(&found)
    );
}

#[test]
fn a_service_entry_host_is_a_service_virtual_services_and_destination_rules_may_name() {
    use crate::index::ServiceEntries;
    let mut index = crate::testing::bookinfo::bookinfo();
    let vs = serde_json::json!({"hosts": ["api.example.com"], "http": [{"route": [{"destination": {"host": "api.example.com"}}]}]});
    let dr = serde_json::json!({"host": "api.example.com", "trafficPolicy": {"tls": {"mode": "SIMPLE"}}});
    let missing = |index: &crate::index::Index| -> Vec<String> {
        let ctx = Context::of(index.state());
        let mut found = validate_object("VirtualService", NS, "api", &vs, &ctx);
        found.extend(validate_object("DestinationRule", NS, "api", &dr, &ctx));
        found.into_iter().filter(|f| f.message.contains("no Service")).map(|f| f.field).collect()
    };
    assert_eq!(
        missing(&index).len(),
        3,
        "without the entry: the VirtualService's host and destination, the rule's host"
    );
    index.apply::<ServiceEntries>(&crate::testing::objects::from_yaml(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: api, namespace: default}\n\
         spec:\n  hosts: [api.example.com]\n  ports: [{number: 443, name: https, protocol: HTTPS}]\n  resolution: DNS\n",
    ));
    assert!(missing(&index).is_empty(), "{:?}", missing(&index));
}

//! The JWT filter's configuration, decoded; the trigger rules' route
//! matches are run (with the `regex` crate, RE2's syntax for these) on
//! paths and held to Istio 1.1's own reading of trigger rules
//! ([`triggered`], after its `AuthnUtils::ShouldValidateJwtPerPath`).
//! src/translate/tests/jwt.rs runs the filter in a real Envoy.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::data_source;
use envoy_types::pb::envoy::config::route::v3::header_matcher;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::{
    JwtAuthentication, JwtRequirement, jwt_provider, jwt_requirement, requirement_rule,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher;
use prost::Message;
use serde_json::json;

use super::*;

fn provider(issuer: &str, keys: Keys) -> JwtProvider {
    JwtProvider {
        issuer: issuer.into(),
        audiences: vec![],
        keys,
        from_headers: vec![],
        from_params: vec![],
        forward: false,
        payload_header: None,
        trigger_rules: vec![],
    }
}

fn decode(policy: &JwtPolicy, fetched: &BTreeMap<String, String>) -> JwtAuthentication {
    let filter = filter(policy, fetched).expect("a filter");
    assert_eq!(filter.name, JWT_FILTER);
    let Some(http_filter::ConfigType::TypedConfig(config)) = filter.config_type else {
        panic!("typed config")
    };
    JwtAuthentication::decode(config.value.as_slice()).expect("decodes")
}

fn inline_keys(config: &JwtAuthentication, name: &str) -> String {
    match &config.providers[name].jwks_source_specifier {
        Some(jwt_provider::JwksSourceSpecifier::LocalJwks(source)) => match &source.specifier {
            Some(data_source::Specifier::InlineString(s)) => s.clone(),
            other => panic!("{other:?}"),
        },
        other => panic!("keys are always inline: {other:?}"),
    }
}

/// A requirement as text: `a`, `any(a,b,missing)`, `any(a,missing-or-failed)`.
fn show(r: &JwtRequirement) -> String {
    match r.requires_type.as_ref().expect("a requirement") {
        jwt_requirement::RequiresType::ProviderName(name) => name.clone(),
        jwt_requirement::RequiresType::AllowMissing(_) => "missing".into(),
        jwt_requirement::RequiresType::AllowMissingOrFailed(_) => "missing-or-failed".into(),
        jwt_requirement::RequiresType::RequiresAny(any) => {
            format!("any({})", any.requirements.iter().map(show).collect::<Vec<_>>().join(","))
        }
        other => panic!("{other:?}"),
    }
}

fn rule_requirement(rule: &RequirementRule) -> String {
    match &rule.requirement_type {
        Some(requirement_rule::RequirementType::Requires(r)) => show(r),
        None => "none".into(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn request_authentication_accepts_any_provider_or_no_token() {
    let mut a = provider("a.example", Keys::Inline("{\"keys\":[]}".into()));
    a.audiences = vec!["bookinfo".into()];
    a.from_headers = vec![("x-jwt".into(), "Token ".into())];
    a.from_params = vec!["t".into()];
    a.forward = true;
    a.payload_header = Some("x-payload".into());
    let b = provider("b.example", Keys::Uri("https://b.example/keys".into()));
    let policy = JwtPolicy { providers: vec![a, b], requirement: Requirement::AllowMissing };
    let fetched = BTreeMap::from([("https://b.example/keys".to_string(), "{\"keys\":[1]}".to_string())]);
    let config = decode(&policy, &fetched);
    assert!(config.bypass_cors_preflight);
    assert_eq!(config.rules.len(), 1);
    assert_eq!(rule_requirement(&config.rules[0]), "any(origins-0,origins-1,missing)");
    let p = &config.providers["origins-0"];
    assert_eq!(p.issuer, "a.example");
    assert_eq!(p.audiences, ["bookinfo"]);
    assert_eq!(
        (p.from_headers[0].name.as_str(), p.from_headers[0].value_prefix.as_str()),
        ("x-jwt", "Token ")
    );
    assert_eq!(p.from_params, ["t"]);
    assert!(p.forward);
    assert_eq!(p.forward_payload_header, "x-payload");
    for name in ["origins-0", "origins-1"] {
        assert_eq!(config.providers[name].payload_in_metadata, JWT_PAYLOAD_METADATA);
    }
    assert_eq!(inline_keys(&config, "origins-0"), "{\"keys\":[]}");
    assert_eq!(inline_keys(&config, "origins-1"), "{\"keys\":[1]}", "the fetched keys, inline");
}

#[test]
fn keys_never_fetched_are_keys_no_token_verifies_with() {
    let policy = JwtPolicy {
        providers: vec![provider("a", Keys::Uri("https://a/keys".into())), provider("b", Keys::None)],
        requirement: Requirement::AllowMissing,
    };
    let config = decode(&policy, &BTreeMap::new());
    assert_eq!(inline_keys(&config, "origins-0"), NO_KEYS);
    assert_eq!(inline_keys(&config, "origins-1"), NO_KEYS);
    let keys: serde_json::Value = serde_json::from_str(NO_KEYS).expect("JSON");
    assert_eq!(keys["keys"][0]["kty"], "RSA");
}

#[test]
fn istio_1_1_origins_are_required_or_optional() {
    let one = JwtPolicy { providers: vec![provider("a", Keys::None)], requirement: Requirement::Required };
    let config = decode(&one, &BTreeMap::new());
    assert!(!config.bypass_cors_preflight);
    assert_eq!(config.rules.iter().map(rule_requirement).collect::<Vec<_>>(), ["origins-0"]);
    let two = JwtPolicy {
        providers: vec![provider("a", Keys::None), provider("b", Keys::None)],
        requirement: Requirement::Optional,
    };
    let config = decode(&two, &BTreeMap::new());
    assert_eq!(
        config.rules.iter().map(rule_requirement).collect::<Vec<_>>(),
        ["any(origins-0,origins-1,missing-or-failed)"]
    );
    let none = JwtPolicy { providers: vec![], requirement: Requirement::Required };
    assert!(filter(&none, &BTreeMap::new()).is_none());
}

/// What the filter requires of a request to `path` (with its query):
/// the first rule whose `:path` conditions all hold, as Envoy picks it.
fn required_on(config: &JwtAuthentication, path: &str) -> String {
    for rule in &config.rules {
        let m = rule.r#match.as_ref().expect("a match");
        let holds = m.headers.iter().all(|h| {
            assert_eq!(h.name, ":path");
            let Some(header_matcher::HeaderMatchSpecifier::StringMatch(s)) = &h.header_match_specifier else {
                panic!("a string match")
            };
            let Some(string_matcher::MatchPattern::SafeRegex(re)) = &s.match_pattern else {
                panic!("a regex")
            };
            let re = regex::Regex::new(&format!("^(?:{})$", re.regex)).expect("a valid regex");
            re.is_match(path) != h.invert_match
        });
        if holds {
            return rule_requirement(rule);
        }
    }
    "none".into()
}

/// Istio 1.1's string match of a path (a regex matches the whole path).
fn matches(m: &StringMatch, path: &str) -> bool {
    match (&m.exact, &m.prefix, &m.suffix, &m.regex) {
        (Some(exact), ..) => path == exact,
        (_, Some(prefix), ..) => path.starts_with(prefix.as_str()),
        (_, _, Some(suffix), _) => path.ends_with(suffix.as_str()),
        (.., Some(re)) => regex::Regex::new(&format!("^(?:{re})$")).expect("a regex").is_match(path),
        _ => false,
    }
}

/// Whether Istio 1.1 checked a token on `path`: no trigger rules, or a
/// rule none of whose excluded paths match and, when it has included
/// paths, one of them does.
fn triggered(rules: &[TriggerRule], path: &str) -> bool {
    rules.is_empty()
        || rules.iter().any(|rule| {
            !rule.excluded_paths.iter().any(|m| matches(m, path))
                && (rule.included_paths.is_empty() || rule.included_paths.iter().any(|m| matches(m, path)))
        })
}

/// What Istio 1.1 required on `path`: any of the providers whose trigger
/// rules match it (the query string cut off).
fn istio_1_1(policy: &JwtPolicy, path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let names: Vec<String> = policy
        .providers
        .iter()
        .enumerate()
        .filter(|(_, p)| triggered(&p.trigger_rules, path))
        .map(|(i, _)| format!("origins-{i}"))
        .collect();
    match names.len() {
        0 => "none".into(),
        1 => names[0].clone(),
        _ => format!("any({})", names.join(",")),
    }
}

#[test]
fn trigger_rules_require_exactly_the_providers_istio_1_1_checked_on_each_path() {
    let rules =
        |v: serde_json::Value| -> Vec<TriggerRule> { serde_json::from_value(v).expect("trigger rules") };
    let mut health = provider("health", Keys::None);
    health.trigger_rules = rules(json!([{"excludedPaths": [
        {"exact": "/health"}, {"prefix": "/status/"}, {"suffix": ".png"}, {"regex": "/internal/[a-z]+"},
    ]}]));
    let mut api = provider("api", Keys::None);
    api.trigger_rules = rules(json!([
        {"includedPaths": [{"prefix": "/api/"}, {"suffix": ".json"}], "excludedPaths": [{"exact": "/api/public"}]},
        {"includedPaths": [{"exact": "/admin"}]},
    ]));
    let mut regex = provider("regex", Keys::None);
    regex.trigger_rules = rules(json!([{"includedPaths": [{"regex": "/v[0-9]+/.*"}]}]));
    let always = provider("always", Keys::None);
    let paths = [
        "/",
        "/health",
        "/health?x=1",
        "/healthz",
        "/status/",
        "/status/x",
        "/api/",
        "/api/x",
        "/api/public",
        "/api/public?x",
        "/api/publicx",
        "/data.json",
        "/data.json?q=1",
        "/x.json/y",
        "/admin",
        "/admin/",
        "/admin?a=b",
        "/img/a.png",
        "/img/a.png?x=1",
        "/a.pngx",
        "/internal/abc",
        "/internal/abc?x",
        "/internal/1",
        "/internal/",
        "/v1/x",
        "/v12/",
        "/vx/",
        "/a.b",
        "/a+b",
        "/api/x?next=/health",
    ];
    let providers = [health, api, regex, always];
    // Every subset of the four, in the order given.
    for bits in 1u32..16 {
        let chosen: Vec<JwtProvider> = providers
            .iter()
            .enumerate()
            .filter(|(b, _)| bits & (1 << b) != 0)
            .map(|(_, p)| p.clone())
            .collect();
        let policy = JwtPolicy { providers: chosen, requirement: Requirement::Required };
        let config = decode(&policy, &BTreeMap::new());
        for path in paths {
            let oracle = istio_1_1(&policy, path);
            assert_eq!(required_on(&config, path), oracle, "providers {bits:04b}, path {path}");
        }
    }
}

#[test]
fn path_regexes_take_the_path_literally() {
    assert_eq!(
        path_regex(&StringMatch { exact: Some("/a.b".into()), ..Default::default() }),
        "\\/a\\.b(?:[?#].*)?"
    );
    assert_eq!(path_regex(&StringMatch { prefix: Some("/a+".into()), ..Default::default() }), "\\/a\\+.*");
}

#[test]
fn too_many_trigger_conditions_check_every_provider_on_every_path() {
    // Six providers with 30 included paths each: 30^6 combinations.
    let paths: Vec<serde_json::Value> = (0..30).map(|n| json!({"prefix": format!("/p{n}/")})).collect();
    let many: Vec<TriggerRule> = serde_json::from_value(json!([{"includedPaths": paths}])).unwrap();
    let providers: Vec<JwtProvider> = (0..6)
        .map(|n| {
            let mut p = provider(&format!("issuer-{n}"), Keys::None);
            p.trigger_rules = many.clone();
            p
        })
        .collect();
    let policy = JwtPolicy { providers, requirement: Requirement::Required };
    let config = decode(&policy, &BTreeMap::new());
    assert_eq!(config.rules.len(), 1, "one rule for every path");
    assert_eq!(
        rule_requirement(&config.rules[0]),
        "any(origins-0,origins-1,origins-2,origins-3,origins-4,origins-5)"
    );
}

//! The JWT filter ([`crate::translate::jwt`]) in a real Envoy 1.40, with
//! real requests: one listener per policy on 127.0.0.1, each an HTTP
//! connection manager with the filter before the router, whose one route
//! answers 200 with the verified token's `sub` and `groups` read back from
//! the filter's dynamic metadata (the contract the RBAC filter reads), and
//! the request headers the application would get (`x-seen-*`).
//! Tokens are ES256, signed here with keys made at run time.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, Route, RouteConfiguration, RouteMatch, VirtualHost, route, route_match,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, http_connection_manager, http_filter,
};
use serde_json::{Value, json};

use super::envoy::{Running, base_bootstrap, get};
use crate::api::policy::TriggerRule;
use crate::model::jwt::{JwtPolicy, JwtProvider, Keys, Requirement};
use crate::testing::TempDir;
use crate::testing::jwt::{Signer, claims};
use crate::translate::jwt::{JWT_FILTER, JWT_PAYLOAD_METADATA, filter};
use crate::translate::{address, any};

const ISSUER: &str = "https://issuer.example";
const AUDIENCE: &str = "bookinfo";
const KEYS_URI: &str = "https://issuer.example/jwks.json";

/// A listener on 127.0.0.1 (a port of the kernel's choosing) whose
/// requests meet `jwt` and then a 200 with the payload's claims.
fn listener(name: &str, jwt: HttpFilter) -> Listener {
    let metadata = |claim: &str| format!("%DYNAMIC_METADATA({JWT_FILTER}:{JWT_PAYLOAD_METADATA}:{claim})%");
    let header = |key: &str, value: String| HeaderValueOption {
        header: Some(HeaderValue { key: key.into(), value, ..Default::default() }),
        ..Default::default()
    };
    let routes = RouteConfiguration {
        name: name.into(),
        virtual_hosts: vec![VirtualHost {
            name: name.into(),
            domains: vec!["*".into()],
            routes: vec![Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                action: Some(route::Action::DirectResponse(DirectResponseAction {
                    status: 200,
                    ..Default::default()
                })),
                response_headers_to_add: vec![
                    header("x-jwt-sub", metadata("sub")),
                    header("x-jwt-groups", metadata("groups")),
                    header("x-seen-authorization", "%REQ(authorization)%".into()),
                    header("x-seen-assertion", "%REQ(x-jwt-assertion)%".into()),
                    header("x-seen-payload", "%REQ(x-jwt-payload)%".into()),
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let router = HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(any(&Router::default()))),
        ..Default::default()
    };
    let manager = HttpConnectionManager {
        stat_prefix: name.into(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(routes)),
        http_filters: vec![jwt, router],
        ..Default::default()
    };
    Listener {
        name: name.into(),
        address: Some(address("127.0.0.1", 0)),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(filter::ConfigType::TypedConfig(any(&manager))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn provider(keys: Keys) -> JwtProvider {
    JwtProvider {
        issuer: ISSUER.into(),
        audiences: vec![AUDIENCE.into()],
        keys,
        from_headers: vec![],
        from_params: vec![],
        forward: false,
        payload_header: None,
        trigger_rules: vec![],
    }
}

/// An Envoy running one listener per (name, policy); their addresses.
struct Fixture {
    envoy: Running,
    addresses: BTreeMap<String, String>,
    _dir: TempDir,
}

impl Fixture {
    fn start(policies: &[(&str, JwtPolicy)], fetched: &BTreeMap<String, String>) -> Self {
        let listeners = policies
            .iter()
            .map(|(name, policy)| listener(name, filter(policy, fetched).expect("a JWT filter")))
            .collect();
        let dir = TempDir::new("jwt");
        let mut envoy = Running::start(&dir, &base_bootstrap(listeners, vec![]));
        let admin = envoy.admin.clone();
        let wanted = policies.len();
        let addresses = envoy.wait_for("every listener to be bound", || {
            let text = get(&admin, "/listeners?format=json")?;
            let status: Value = serde_json::from_str(&text).ok()?;
            let bound: BTreeMap<String, String> = status["listener_statuses"]
                .as_array()?
                .iter()
                .filter_map(|l| {
                    let socket = &l["local_address"]["socket_address"];
                    let port = socket["port_value"].as_u64().filter(|p| *p != 0)?;
                    Some((l["name"].as_str()?.to_string(), format!("127.0.0.1:{port}")))
                })
                .collect();
            (bound.len() == wanted).then_some(bound)
        });
        Self { envoy, addresses, _dir: dir }
    }

    /// GET `path` on the listener `name`, with the headers given: the
    /// status and the `sub` and `groups` the route read from the metadata.
    fn get(&self, name: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
        let (status, seen) = self.request(name, path, headers);
        (status, seen["x-jwt-sub"].clone(), seen["x-jwt-groups"].clone())
    }

    /// The status and every `x-` header of the answer (empty when unset).
    fn request(&self, name: &str, path: &str, headers: &[(&str, &str)]) -> (u16, BTreeMap<String, String>) {
        let url = format!("http://{}{path}", self.addresses[name]);
        let mut request = ureq::get(&url);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = request.config().http_status_as_error(false).build().call().unwrap_or_else(|e| {
            panic!("{name} {path}: {e}\n{}", self.envoy.log_text());
        });
        let header =
            |h: &str| response.headers().get(h).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let seen =
            ["x-jwt-sub", "x-jwt-groups", "x-seen-authorization", "x-seen-assertion", "x-seen-payload"]
                .into_iter()
                .map(|h| (h.to_string(), header(h)))
                .collect();
        (response.status().as_u16(), seen)
    }

    fn status(&self, name: &str, path: &str, headers: &[(&str, &str)]) -> u16 {
        self.get(name, path, headers).0
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// RequestAuthentication: a valid token reaches the service with its
/// claims in the metadata; none passes without them; expired, wrongly
/// signed, wrong issuer: 401; wrong audience: 403 (Envoy's answer). Keys never fetched refuse even
/// a valid token; fetched ones (inline, as the controller sends them)
/// verify it.
#[test]
fn a_real_envoy_enforces_request_authentication() {
    let signer = Signer::generate("k1");
    let forger = Signer::generate("k1");
    let request =
        |keys| JwtPolicy { providers: vec![provider(keys)], requirement: Requirement::AllowMissing };
    let fetched = BTreeMap::from([(KEYS_URI.to_string(), signer.jwks())]);
    // fromHeaders, fromParams, outputPayloadToHeader, forwardOriginalToken.
    let mut located = provider(Keys::Inline(signer.jwks()));
    located.from_headers = vec![("x-jwt-assertion".into(), "Token ".into())];
    located.from_params = vec!["jwt".into()];
    located.payload_header = Some("x-jwt-payload".into());
    located.forward = true;
    let envoy = Fixture::start(
        &[
            ("inline", request(Keys::Inline(signer.jwks()))),
            ("fetched", request(Keys::Uri(KEYS_URI.into()))),
            ("never-fetched", request(Keys::Uri("https://other.example/jwks.json".into()))),
            ("located", JwtPolicy { providers: vec![located], requirement: Requirement::AllowMissing }),
        ],
        &fetched,
    );
    let valid = bearer(&signer.token(&claims(ISSUER, AUDIENCE, "alice", false)));
    let expired = bearer(&signer.token(&claims(ISSUER, AUDIENCE, "alice", true)));
    let forged = bearer(&forger.token(&claims(ISSUER, AUDIENCE, "alice", false)));
    let other_issuer = bearer(&signer.token(&claims("https://evil.example", AUDIENCE, "alice", false)));
    let other_audience = bearer(&signer.token(&claims(ISSUER, "other", "alice", false)));

    for name in ["inline", "fetched"] {
        let (status, sub, groups) = envoy.get(name, "/productpage", &[("authorization", &valid)]);
        assert_eq!((status, sub.as_str()), (200, "alice"), "{name}: a valid token");
        assert!(groups.contains("reviewers"), "{name}: the claims are in the metadata: {groups}");
        assert_eq!(
            envoy.get(name, "/productpage", &[]),
            (200, String::new(), String::new()),
            "{name}: no token"
        );
        for (what, token) in
            [("expired", &expired), ("wrongly signed", &forged), ("of another issuer", &other_issuer)]
        {
            assert_eq!(
                envoy.status(name, "/productpage", &[("authorization", token)]),
                401,
                "{name}: {what}"
            );
        }
        // Envoy (and so Istio) answers a token for another audience with
        // 403, "Audiences in Jwt are not allowed".
        assert_eq!(envoy.status(name, "/productpage", &[("authorization", &other_audience)]), 403, "{name}");
        // The default places: the Authorization header, or access_token.
        let token = valid.trim_start_matches("Bearer ");
        assert_eq!(envoy.status(name, &format!("/productpage?access_token={token}"), &[]), 200, "{name}");
    }
    assert_eq!(envoy.status("never-fetched", "/", &[("authorization", &valid)]), 401, "keys never fetched");
    assert_eq!(envoy.status("never-fetched", "/", &[]), 200, "no token still passes");

    // The token is removed once verified, unless forwardOriginalToken.
    let (_, seen) = envoy.request("inline", "/", &[("authorization", &valid)]);
    assert_eq!(seen["x-seen-authorization"], "", "not forwarded");
    let token = valid.trim_start_matches("Bearer ");
    let assertion = format!("Token {token}");
    let (status, seen) = envoy.request("located", "/", &[("x-jwt-assertion", &assertion)]);
    assert_eq!((status, seen["x-jwt-sub"].as_str()), (200, "alice"), "fromHeaders with its prefix");
    assert_eq!(seen["x-seen-assertion"], assertion, "forwardOriginalToken keeps it");
    let payload: Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &seen["x-seen-payload"])
            .expect("outputPayloadToHeader: base64url"),
    )
    .expect("the payload, as JSON");
    assert_eq!(payload["sub"], "alice", "outputPayloadToHeader");
    assert_eq!(envoy.get("located", &format!("/?jwt={token}"), &[]).1, "alice", "fromParams");
    assert_eq!(envoy.status("located", "/", &[("authorization", &valid)]), 200, "not read from elsewhere");
    assert_eq!(envoy.get("located", "/", &[("authorization", &valid)]).1, "", "so no end user");
    let forged_assertion = format!("Token {}", forged.trim_start_matches("Bearer "));
    assert_eq!(envoy.status("located", "/", &[("x-jwt-assertion", &forged_assertion)]), 401);
}

/// Istio 1.1 origins: a token is required (401 without), except on paths
/// the trigger rules exclude; jwtHeaders and jwtParams say where it is;
/// with originIsOptional none is required and a bad one is not refused,
/// but only a valid one sets the claims.
#[test]
fn a_real_envoy_enforces_istio_1_1_origins() {
    let signer = Signer::generate("k1");
    let forger = Signer::generate("k1");
    let trigger: Vec<TriggerRule> =
        serde_json::from_value(json!([{"excludedPaths": [{"exact": "/health"}, {"prefix": "/static/"}]}]))
            .expect("trigger rules");
    let mut located = provider(Keys::Uri(KEYS_URI.into()));
    located.from_headers = vec![("x-jwt-assertion".into(), String::new())];
    located.from_params = vec!["token".into()];
    located.trigger_rules = trigger;
    located.forward = true;
    let envoy = Fixture::start(
        &[
            ("required", JwtPolicy { providers: vec![located.clone()], requirement: Requirement::Required }),
            ("optional", JwtPolicy { providers: vec![located], requirement: Requirement::Optional }),
        ],
        &BTreeMap::from([(KEYS_URI.to_string(), signer.jwks())]),
    );
    let valid = signer.token(&claims(ISSUER, AUDIENCE, "bob", false));
    let expired = signer.token(&claims(ISSUER, AUDIENCE, "bob", true));
    let forged = forger.token(&claims(ISSUER, AUDIENCE, "bob", false));

    assert_eq!(envoy.status("required", "/api", &[]), 401, "no token");
    assert_eq!(envoy.get("required", "/api", &[("x-jwt-assertion", &valid)]).0, 200);
    let (_, seen) = envoy.request("required", "/api", &[("x-jwt-assertion", &valid)]);
    assert_eq!(seen["x-jwt-sub"], "bob");
    assert_eq!(seen["x-seen-assertion"], valid, "Istio 1.1 kept the token");
    assert_eq!(envoy.status("required", &format!("/api?token={valid}"), &[]), 200, "jwtParams");
    assert_eq!(
        envoy.status("required", "/api", &[("authorization", &bearer(&valid))]),
        401,
        "not a jwtHeader"
    );
    assert_eq!(envoy.status("required", "/api", &[("x-jwt-assertion", &expired)]), 401, "expired");
    assert_eq!(envoy.status("required", "/api", &[("x-jwt-assertion", &forged)]), 401, "wrongly signed");
    for excluded in ["/health", "/health?probe=1", "/static/app.js"] {
        assert_eq!(envoy.status("required", excluded, &[]), 200, "{excluded}: excluded by the trigger rules");
    }
    assert_eq!(envoy.status("required", "/healthz", &[]), 401, "/healthz is not /health");

    assert_eq!(envoy.get("optional", "/api", &[]), (200, String::new(), String::new()), "optional: no token");
    assert_eq!(
        envoy.get("optional", "/api", &[("x-jwt-assertion", &forged)]).1,
        "",
        "optional: forged, no claims"
    );
    assert_eq!(envoy.status("optional", "/api", &[("x-jwt-assertion", &expired)]), 200, "optional: expired");
    assert_eq!(envoy.get("optional", "/api", &[("x-jwt-assertion", &valid)]).1, "bob", "optional: valid");
}

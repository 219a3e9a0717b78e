//! Route operations (rewrite, redirect, direct responses, CORS, header
//! operations, Istio 1.1's header fields, `statPrefix`, delegation) on
//! Bookinfo's reviews: what the routes hold, and a real Envoy 1.40
//! accepting all of it (`--mode validate`).

use envoy_types::pb::envoy::config::core::v3::data_source;
use envoy_types::pb::envoy::config::route::v3::{Route, redirect_action, route, route_action};
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use prost::{Message, Name};
use serde_json::json;

use super::envoy::assert_envoy_accepts;
use super::{NAMESPACE, bookinfo, mesh_view, permissive, productpage};
use crate::index::{DestinationRules, Index, VirtualServices};
use crate::testing::objects::{self, config};
use crate::translate::route::CORS_FILTER;
use crate::translate::sidecar::{inbound, outbound};

const REVIEWS: &str = "reviews.default.svc.cluster.local";

fn vs(index: &mut Index, name: &str, spec: serde_json::Value) {
    index.apply::<VirtualServices>(&config::<crate::api::VirtualService>(NAMESPACE, name, spec));
}

/// Reviews with every route operation, and a delegate for `/delegated`.
fn operations() -> Index {
    let mut index = bookinfo();
    index.apply::<DestinationRules>(&objects::dr("reviews").versions().build());
    vs(
        &mut index,
        "reviews",
        json!({"hosts": ["reviews"], "http": [
            {"name": "rewrite", "match": [{"uri": {"prefix": "/old"}, "statPrefix": "old-api"}],
             "rewrite": {"uri": "/new", "authority": "reviews.internal"},
             "headers": {"request": {"set": {"x-set": "1"}, "add": {"x-add": "2"}, "remove": ["x-gone"]},
                         "response": {"set": {"x-resp": "3"}, "add": {"x-resp-add": "4"}, "remove": ["server"]}},
             "route": [{"destination": {"host": "reviews", "subset": "v1"},
                        "headers": {"request": {"set": {"x-dest": "v1"}}}}]},
            {"name": "regex", "match": [{"uri": {"regex": "^/svc/([^/]+)(/.*)$"}}],
             "rewrite": {"uriRegexRewrite": {"match": "^/svc/([^/]+)(/.*)$", "rewrite": "\\2/instance/\\1"}},
             "route": [{"destination": {"host": "reviews", "subset": "v2"}}]},
            {"name": "moved", "match": [{"uri": {"exact": "/moved"}}],
             "redirect": {"uri": "/here", "authority": "elsewhere.example", "derivePort": "FROM_REQUEST_PORT",
                          "scheme": "https", "redirectCode": 307}},
            {"name": "bad-code", "match": [{"uri": {"exact": "/bad"}}],
             "redirect": {"uri": "/x", "redirectCode": 304}},
            {"name": "blob", "match": [{"uri": {"exact": "/blob"}}],
             "directResponse": {"status": 200, "body": {"bytes": "aGVsbG8="}}},
            {"name": "cors", "match": [{"uri": {"prefix": "/cors"}}],
             "corsPolicy": {"allowOrigins": [{"exact": "https://a.example"}, {"regex": "https://.*\\.b\\.example"}],
                            "allowMethods": ["GET", "POST"], "allowHeaders": ["x-foo"],
                            "exposeHeaders": ["x-bar"], "maxAge": "24h", "allowCredentials": true,
                            "unmatchedPreflights": "IGNORE"},
             "route": [{"destination": {"host": "reviews", "subset": "v3"}}]},
            {"name": "legacy", "match": [{"uri": {"prefix": "/legacy"}}],
             "corsPolicy": {"allowOrigin": ["*"]},
             "appendHeaders": {"x-legacy": "1.0"}, "removeResponseHeaders": ["x-secret"],
             "route": [{"destination": {"host": "reviews", "subset": "v1"}, "weight": 50,
                        "appendRequestHeaders": {"x-weighted": "v1", "host": "v1.internal"}},
                       {"destination": {"host": "reviews", "subset": "v2"}, "weight": 50,
                        "headers": {"response": {"remove": ["x-v2"]}}}]},
            {"name": "root", "match": [{"uri": {"prefix": "/delegated"}}], "delegate": {"name": "reviews-delegate"}},
            {"name": "gone", "match": [{"uri": {"prefix": "/gone"}}], "delegate": {"name": "no-such-vs"}},
            {"name": "rest", "route": [{"destination": {"host": "reviews", "subset": "v1"}}]}
        ]}),
    );
    vs(
        &mut index,
        "reviews-delegate",
        json!({"http": [
            {"name": "d1", "match": [{"uri": {"prefix": "/delegated/v2"}}],
             "route": [{"destination": {"host": "reviews", "subset": "v2"}}]},
            {"name": "d2", "match": [{"uri": {"prefix": "/outside"}}],
             "route": [{"destination": {"host": "reviews", "subset": "v3"}}]},
            {"name": "d3", "route": [{"destination": {"host": "reviews", "subset": "v3"}}]}
        ]}),
    );
    index
}

fn reviews_routes(index: &Index) -> Vec<Route> {
    let view = mesh_view(index);
    let out = outbound(&view, &view.scope(&productpage(index)));
    let name = format!("{REVIEWS}:9080");
    let config = out.routes.iter().find(|r| r.name == name).expect("reviews' routes");
    config.virtual_hosts.iter().find(|v| v.name == name).expect("reviews' virtual host").routes.clone()
}

fn named<'a>(routes: &'a [Route], name: &str) -> &'a Route {
    routes.iter().find(|r| r.name == name).unwrap_or_else(|| panic!("no route {name}"))
}

fn forward(route: &Route) -> &envoy_types::pb::envoy::config::route::v3::RouteAction {
    match &route.action {
        Some(route::Action::Route(action)) => action,
        other => panic!("{}: {other:?}", route.name),
    }
}

#[test]
fn route_operations_translate_as_istio_does() {
    let routes = reviews_routes(&operations());
    let names: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        ["rewrite", "regex", "moved", "bad-code", "blob", "cors", "legacy", "root-d1", "root-d3", "rest"],
        "the delegate's rules sit in the root rule's place, one outside its prefix and a missing delegate dropped"
    );

    let rewrite = named(&routes, "rewrite");
    assert_eq!(rewrite.stat_prefix, "old-api");
    let action = forward(rewrite);
    assert_eq!(action.prefix_rewrite, "/new");
    assert_eq!(
        action.host_rewrite_specifier,
        Some(route_action::HostRewriteSpecifier::HostRewriteLiteral("reviews.internal".into()))
    );
    let keys = |v: &[envoy_types::pb::envoy::config::core::v3::HeaderValueOption]| -> Vec<String> {
        v.iter().map(|o| o.header.as_ref().map(|h| h.key.clone()).unwrap_or_default()).collect()
    };
    assert_eq!(
        keys(&rewrite.request_headers_to_add),
        ["x-set", "x-add", "x-dest"],
        "rule's, then destination's"
    );
    assert_eq!(rewrite.request_headers_to_remove, ["x-gone"]);
    assert_eq!(keys(&rewrite.response_headers_to_add), ["x-resp", "x-resp-add"]);
    assert_eq!(rewrite.response_headers_to_remove, ["server"]);

    let regex = forward(named(&routes, "regex")).regex_rewrite.clone().expect("a regex rewrite");
    assert_eq!(regex.substitution, "\\2/instance/\\1");

    let Some(route::Action::Redirect(moved)) = &named(&routes, "moved").action else { panic!("a redirect") };
    assert_eq!(moved.port_redirect, 9080, "FROM_REQUEST_PORT is the Service port the route serves");
    assert_eq!(moved.host_redirect, "elsewhere.example");
    assert_eq!(moved.response_code, redirect_action::RedirectResponseCode::TemporaryRedirect as i32);
    assert_eq!(
        moved.path_rewrite_specifier,
        Some(redirect_action::PathRewriteSpecifier::PathRedirect("/here".into()))
    );
    let Some(route::Action::DirectResponse(bad)) = &named(&routes, "bad-code").action else { panic!() };
    assert_eq!(bad.status, 503);

    let Some(route::Action::DirectResponse(blob)) = &named(&routes, "blob").action else { panic!() };
    assert_eq!(
        blob.body.as_ref().and_then(|b| b.specifier.clone()),
        Some(data_source::Specifier::InlineBytes(b"hello".to_vec()))
    );

    let cors = named(&routes, "cors").typed_per_filter_config.get(CORS_FILTER).expect("a CORS policy");
    assert_eq!(cors.type_url, CorsPolicy::type_url());
    let cors = CorsPolicy::decode(cors.value.as_slice()).expect("decodes");
    assert_eq!(cors.allow_origin_string_match.len(), 2);
    assert_eq!((cors.allow_methods.as_str(), cors.max_age.as_str()), ("GET,POST", "86400"));
    assert_eq!(cors.forward_not_matching_preflights.map(|b| b.value), Some(false));

    let legacy = named(&routes, "legacy");
    let legacy_cors =
        CorsPolicy::decode(legacy.typed_per_filter_config[CORS_FILTER].value.as_slice()).expect("decodes");
    assert_eq!(
        legacy_cors.allow_origin_string_match[0].match_pattern,
        Some(MatchPattern::Exact("*".into())),
        "1.1's \"*\", which Envoy's filter reads as any origin"
    );
    assert_eq!(keys(&legacy.request_headers_to_add), ["x-legacy"]);
    assert_eq!(legacy.response_headers_to_remove, ["x-secret"]);
    let Some(route_action::ClusterSpecifier::WeightedClusters(weighted)) = &forward(legacy).cluster_specifier
    else {
        panic!("weighted")
    };
    assert_eq!(keys(&weighted.clusters[0].request_headers_to_add), ["x-weighted"]);
    assert!(
        weighted.clusters[0].host_rewrite_specifier.is_some(),
        "a destination's host header is its authority"
    );
    assert_eq!(weighted.clusters[1].response_headers_to_remove, ["x-v2"]);

    let d1 = named(&routes, "root-d1");
    assert_eq!(
        forward(d1).cluster_specifier,
        Some(route_action::ClusterSpecifier::Cluster(format!("outbound|9080|v2|{REVIEWS}")))
    );
    let d3 = named(&routes, "root-d3");
    assert_eq!(
        d3.r#match.as_ref().and_then(|m| m.path_specifier.clone()),
        Some(envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier::Prefix(
            "/delegated".into()
        )),
        "a delegate rule without matches takes the root's"
    );
}

#[test]
fn envoy_accepts_every_route_operation() {
    let index = operations();
    let view = mesh_view(&index);
    let proxy = productpage(&index);
    let out = outbound(&view, &view.scope(&proxy));
    let inb = inbound(&view, &proxy, permissive);
    assert_envoy_accepts("the route operations", &out, &inb);
}

//! End-user authentication as Envoy's JWT filter
//! (`envoy.filters.http.jwt_authn`), placed on an inbound HTTP chain
//! before the RBAC filter: [`filter`] turns a port's
//! [`JwtPolicy`](crate::model::jwt::JwtPolicy) into it.
//!
//! - One provider per issuer rule, named `origins-<n>` as Istio named
//!   them. Its keys are always inline (`local_jwks`): a policy's own
//!   `jwks`, or the key set the controller fetched from `jwksUri`, so a
//!   sidecar needs no route to the issuer. Keys never fetched are a key
//!   set no token verifies with ([`NO_KEYS`]): such tokens are refused,
//!   never let through.
//! - Every provider writes the verified payload to the request's dynamic
//!   metadata under [`JWT_FILTER`], key [`JWT_PAYLOAD_METADATA`]: the
//!   RBAC filter's `request.auth.*` conditions ([`super::rbac`]) read its
//!   claims from there.
//! - RequestAuthentication: one rule for every path, any provider or no
//!   token at all (`allow_missing`); a token no provider verifies is 401.
//! - Istio 1.1 origins: per path, the providers whose trigger rules match
//!   it are required (any of them); with `originIsOptional`, verified but
//!   not required (`allow_missing_or_failed`); where none matches,
//!   nothing is checked. Envoy's rules are first-match route matches, so
//!   each set of triggered providers, largest first, gets the matches
//!   that select exactly its paths: conjunctions of `:path` regexes
//!   (negated for excluded paths) that ignore the query string, as Istio
//!   1.1 did.

use std::collections::{BTreeMap, HashMap};

use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
use envoy_types::pb::envoy::config::route::v3::{HeaderMatcher, RouteMatch, header_matcher, route_match};
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::{
    JwtAuthentication, JwtHeader, JwtProvider as EnvoyProvider, JwtRequirement, JwtRequirementOrList,
    RequirementRule, jwt_provider, jwt_requirement, requirement_rule,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher, string_matcher};
use envoy_types::pb::google::protobuf::Empty;

use super::any;
use crate::api::policy::{StringMatch, TriggerRule};
use crate::model::jwt::{JwtPolicy, JwtProvider, Keys, Requirement};

/// The JWT filter's name, under which it writes the verified payload.
pub const JWT_FILTER: &str = "envoy.filters.http.jwt_authn";

/// The key of the verified payload in [`JWT_FILTER`]'s dynamic metadata.
pub const JWT_PAYLOAD_METADATA: &str = "jwt_payload";

/// A key set no token verifies with, for issuers whose keys were never
/// fetched: one RSA key whose modulus is no one's, so Envoy accepts the
/// configuration and refuses every token (as Istio's Pilot did with its
/// own stand-in key).
pub const NO_KEYS: &str = concat!(
    r#"{"keys":[{"kty":"RSA","alg":"RS256","kid":"mesh-keys-not-fetched","e":"AQAB","n":""#,
    "ww1uzzCR8lO0FXbXOJn6W7wdft9AoQJjxCWG50ipCmvMLY7vULESc9Q1lvdYuRp73D2e_2DBIoPkRaYHaMkqi-xNrg9w0TKT9F",
    "W2F3jZOpv8Xb4fgOFCowRlxieI6UqrDG3OL5DxUrMUddY3mPlauxx93j-gAWLDJIXmR6gJasssje5PsBFy0zSV9le4GXrbPJ3-",
    "X8AhguNEpQZnyCmK60ytDm_QMZLzVLUWd9g5mvtcvR5_4EGiA2TFJofoSaoLbM0uj_BRshN01TaX-Fm6G3zdPp8AYcIjhOVGpw",
    "hpyiuM7U6vEHHSM5T1VrcYedo7nP1evyCB4kOkBWbHKInqjw",
    r#""}]}"#
);

/// More rules than this for one port's trigger rules, and every
/// conditional provider is checked on every path instead (stricter,
/// never looser).
const MAX_RULES: usize = 256;

/// The same for more providers with trigger rules than this on one port.
const MAX_CONDITIONAL: usize = 6;

/// The JWT filter for a port with `policy`; `fetched` holds the key sets
/// the controller fetched, by URL. None when the policy names no issuer.
pub fn filter(policy: &JwtPolicy, fetched: &BTreeMap<String, String>) -> Option<HttpFilter> {
    if policy.providers.is_empty() {
        return None;
    }
    let providers: HashMap<String, EnvoyProvider> =
        policy.providers.iter().enumerate().map(|(i, p)| (provider_name(i), provider(p, fetched))).collect();
    let config = JwtAuthentication {
        providers,
        rules: rules(policy),
        // Istio's RequestAuthentication lets CORS preflights through
        // unauthenticated; Istio 1.1's filter checked them.
        bypass_cors_preflight: policy.requirement == Requirement::AllowMissing,
        ..Default::default()
    };
    Some(HttpFilter {
        name: JWT_FILTER.to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(any(&config))),
        ..Default::default()
    })
}

fn provider_name(i: usize) -> String {
    format!("origins-{i}")
}

fn provider(p: &JwtProvider, fetched: &BTreeMap<String, String>) -> EnvoyProvider {
    let keys = match &p.keys {
        Keys::Inline(jwks) => jwks.clone(),
        Keys::Uri(uri) => fetched.get(uri).cloned().unwrap_or_else(|| NO_KEYS.to_string()),
        Keys::None => NO_KEYS.to_string(),
    };
    EnvoyProvider {
        issuer: p.issuer.clone(),
        audiences: p.audiences.clone(),
        forward: p.forward,
        from_headers: p
            .from_headers
            .iter()
            .map(|(name, prefix)| JwtHeader { name: name.clone(), value_prefix: prefix.clone() })
            .collect(),
        from_params: p.from_params.clone(),
        forward_payload_header: p.payload_header.clone().unwrap_or_default(),
        payload_in_metadata: JWT_PAYLOAD_METADATA.to_string(),
        jwks_source_specifier: Some(jwt_provider::JwksSourceSpecifier::LocalJwks(DataSource {
            specifier: Some(data_source::Specifier::InlineString(keys)),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// The requirement when the providers `names` are the ones that apply.
fn requirement(names: &[usize], requirement: Requirement) -> Option<JwtRequirement> {
    let mut any: Vec<JwtRequirement> = names
        .iter()
        .map(|i| JwtRequirement {
            requires_type: Some(jwt_requirement::RequiresType::ProviderName(provider_name(*i))),
        })
        .collect();
    if any.is_empty() {
        return None;
    }
    match requirement {
        Requirement::Required => {}
        Requirement::AllowMissing => any.push(JwtRequirement {
            requires_type: Some(jwt_requirement::RequiresType::AllowMissing(Empty {})),
        }),
        Requirement::Optional => any.push(JwtRequirement {
            requires_type: Some(jwt_requirement::RequiresType::AllowMissingOrFailed(Empty {})),
        }),
    }
    if any.len() == 1 {
        return any.pop();
    }
    Some(JwtRequirement {
        requires_type: Some(jwt_requirement::RequiresType::RequiresAny(JwtRequirementOrList {
            requirements: any,
        })),
    })
}

fn rule(matcher: RouteMatch, requires: Option<JwtRequirement>) -> RequirementRule {
    RequirementRule {
        r#match: Some(matcher),
        requirement_type: requires.map(requirement_rule::RequirementType::Requires),
    }
}

fn every_path() -> RouteMatch {
    RouteMatch { path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())), ..Default::default() }
}

/// One `:path` condition: the path (query and fragment aside) matches
/// `m`, or with `negated` does not.
#[derive(Clone, Debug, PartialEq)]
struct Literal<'a> {
    m: &'a StringMatch,
    negated: bool,
}

fn rules(policy: &JwtPolicy) -> Vec<RequirementRule> {
    let (always, conditional): (Vec<usize>, Vec<usize>) =
        (0..policy.providers.len()).partition(|i| policy.providers[*i].trigger_rules.is_empty());
    let everywhere = || {
        let mut all = always.clone();
        all.extend(&conditional);
        all.sort();
        vec![rule(every_path(), requirement(&all, policy.requirement))]
    };
    if conditional.len() > MAX_CONDITIONAL {
        return everywhere();
    }
    let mut out = Vec::new();
    // Sets of conditional providers, largest first: a path reaching a set's
    // rules has none of the larger sets triggered, so exactly this one.
    let mut sets: Vec<Vec<usize>> = (1u64..(1u64 << conditional.len()))
        .map(|bits| {
            conditional.iter().enumerate().filter(|(b, _)| bits & (1 << b) != 0).map(|(_, i)| *i).collect()
        })
        .collect();
    sets.sort_by_key(|s: &Vec<usize>| std::cmp::Reverse(s.len()));
    for set in sets {
        // Counted before they are built: a policy's trigger rules must not
        // make the controller build millions of them.
        let count = set.iter().fold(1usize, |n, i| {
            n.saturating_mul(triggered_terms(&policy.providers[*i].trigger_rules).len())
        });
        if out.len().saturating_add(count) > MAX_RULES {
            return everywhere();
        }
        let terms = set.iter().fold(vec![Vec::<Literal>::new()], |terms, i| {
            let options = triggered_terms(&policy.providers[*i].trigger_rules);
            terms.iter().flat_map(|t| options.iter().map(move |o| [t.clone(), o.clone()].concat())).collect()
        });
        let mut names = always.clone();
        names.extend(&set);
        names.sort();
        for term in terms {
            out.push(rule(conjunction(&term), requirement(&names, policy.requirement)));
        }
    }
    out.push(rule(every_path(), requirement(&always, policy.requirement)));
    out
}

/// The conjunctions whose union is "the trigger rules match the path":
/// per rule, its excluded paths negated, and one of its included paths
/// (when it has any).
fn triggered_terms(rules: &[TriggerRule]) -> Vec<Vec<Literal<'_>>> {
    rules
        .iter()
        .flat_map(|r| {
            let excluded: Vec<Literal> =
                r.excluded_paths.iter().map(|m| Literal { m, negated: true }).collect();
            if r.included_paths.is_empty() {
                return vec![excluded];
            }
            r.included_paths
                .iter()
                .map(|m| {
                    let mut term = excluded.clone();
                    term.push(Literal { m, negated: false });
                    term
                })
                .collect()
        })
        .collect()
}

fn conjunction(term: &[Literal]) -> RouteMatch {
    RouteMatch {
        headers: term
            .iter()
            .map(|l| HeaderMatcher {
                name: ":path".into(),
                invert_match: l.negated,
                header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(
                    StringMatcher {
                        match_pattern: Some(string_matcher::MatchPattern::SafeRegex(RegexMatcher {
                            regex: path_regex(l.m),
                            ..Default::default()
                        })),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            })
            .collect(),
        ..every_path()
    }
}

/// What follows the path in `:path`: a query or a fragment.
const REST: &str = "(?:[?#].*)?";

/// A regex for `:path` that holds when its path part matches `m` as
/// Istio 1.1 matched paths (query and fragment cut off first; a regex
/// matching the whole path).
fn path_regex(m: &StringMatch) -> String {
    if let Some(exact) = &m.exact {
        return format!("{}{REST}", escape(exact));
    }
    if let Some(prefix) = &m.prefix {
        return format!("{}.*", escape(prefix));
    }
    if let Some(suffix) = &m.suffix {
        return format!("[^?#]*{}{REST}", escape(suffix));
    }
    if let Some(regex) = &m.regex {
        return format!("(?:{regex}){REST}");
    }
    // An empty match matches nothing (validation rejects it).
    "[^\\s\\S]".to_string()
}

/// `text` as an RE2 literal: ASCII punctuation escaped.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii_punctuation() {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests;

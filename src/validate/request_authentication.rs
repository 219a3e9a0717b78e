//! security.istio.io RequestAuthentication, as today's Istio validates it
//! (`ValidateRequestAuthentication`): selector keys without wildcards, and
//! per JWT rule an issuer, non-empty audiences, an http(s) jwksUri with a
//! host, an inline jwks that parses as a key set, and non-empty header and
//! parameter names; plus warnings for what would surprise: an empty
//! selector, a rule with no keys at all, and an issuer listed twice.

use std::collections::BTreeSet;

use crate::api::request_authentication::{JwtRule, RequestAuthenticationSpec};

use super::Context;
use super::common::*;
use crate::model::jwt::check_key_set;

pub(super) fn check(spec: &RequestAuthenticationSpec, namespace: &str, ctx: &Context, out: &mut Out) {
    let in_root = ctx.root_namespace.as_deref() == Some(namespace);
    if let Some(selector) = &spec.selector {
        check_selector_labels(&selector.match_labels, in_root, out);
    }
    let mut issuers = BTreeSet::new();
    for (i, rule) in spec.jwt_rules.iter().enumerate() {
        let p = format!("spec.jwtRules[{i}]");
        check_rule(&p, rule, out);
        if !rule.issuer.is_empty() && !issuers.insert(rule.issuer.as_str()) {
            out.warn(
                format!("{p}.issuer"),
                format!(
                    "issuer {:?} has another rule in this policy: a token is accepted when either rule \
                     verifies it; merge them into one rule",
                    rule.issuer
                ),
            );
        }
    }
}

fn check_rule(p: &str, rule: &JwtRule, out: &mut Out) {
    if rule.issuer.is_empty() {
        out.err(
            format!("{p}.issuer"),
            "the rule has no issuer: set it to the tokens' iss claim, e.g. \"https://accounts.example.com\"",
        );
    }
    for (i, audience) in rule.audiences.iter().enumerate() {
        if audience.is_empty() {
            out.err(format!("{p}.audiences[{i}]"), "an audience is empty: write one, or remove the entry");
        }
    }
    let uri = rule.jwks_uri.as_deref().filter(|u| !u.is_empty());
    if let Some(uri) = uri
        && let Err(problem) = jwks_uri_host(uri)
    {
        out.err(
            format!("{p}.jwksUri"),
            format!("{uri:?} {problem}: write e.g. \"https://accounts.example.com/.well-known/jwks.json\""),
        );
    }
    match rule.jwks.as_deref().filter(|j| !j.is_empty()) {
        Some(jwks) => {
            if let Err(problem) = check_key_set(jwks) {
                out.err(
                    format!("{p}.jwks"),
                    format!("the key set is not a JSON Web Key Set ({problem}): write {{\"keys\": [...]}}"),
                );
            }
            if uri.is_some() {
                out.warn(
                    format!("{p}.jwksUri"),
                    "jwks is set too and wins: the keys at jwksUri are not used; remove one of them",
                );
            }
        }
        None if uri.is_none() => out.warn(
            p,
            "the rule has neither jwksUri nor jwks, so every token of this issuer is refused (401): mesh \
             does not discover keys from the issuer's OpenID configuration as Istio does; set jwksUri",
        ),
        None => {}
    }
    for (i, header) in rule.from_headers.iter().enumerate() {
        if header.name.is_empty() {
            out.err(format!("{p}.fromHeaders[{i}].name"), "the header name is empty: write one, e.g. x-jwt");
        }
    }
    for (i, param) in rule.from_params.iter().enumerate() {
        if param.is_empty() {
            out.err(
                format!("{p}.fromParams[{i}]"),
                "the query parameter name is empty: write one, or remove it",
            );
        }
    }
    if let Some(header) = rule.output_payload_to_header.as_deref()
        && (header.is_empty() || !header.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    {
        out.err(
            format!("{p}.outputPayloadToHeader"),
            format!("{header:?} is not a header name: use letters, digits, '-' and '_', e.g. x-jwt-payload"),
        );
    }
}

/// The host of an http(s) URL, as Istio's `ParseJwksURI` requires one.
pub(super) fn jwks_uri_host(uri: &str) -> Result<&str, &'static str> {
    let rest = uri
        .strip_prefix("https://")
        .or_else(|| uri.strip_prefix("http://"))
        .ok_or("is not an http or https URL")?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() {
        return Err("has no host");
    }
    Ok(host)
}

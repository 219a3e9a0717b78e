//! Which JSON Web Tokens a workload's sidecar verifies on an inbound port,
//! from today's `RequestAuthentication` and Istio 1.1's `origins` of
//! `Policy` and `MeshPolicy`. [`JwtPolicies`] is built once per push from
//! the index's [`ClusterState`]; [`JwtPolicies::inbound`] answers per
//! workload and port with a [`JwtPolicy`], which `translate::jwt` turns
//! into Envoy's JWT filter. docs/security.md ("End-user authentication")
//! is the user's version of these rules.
//!
//! RequestAuthentication, as Istio's `GetJwtPoliciesForWorkload`: every
//! one of the workload's namespace and of the root namespace whose
//! selector is empty or matches the pod's labels applies, and their rules
//! add up (sorted by issuer, as Istio sorts them). A request without a
//! token passes; one whose token no rule verifies is refused.
//!
//! Istio 1.1: the Policy (or MeshPolicy) that applies to the port, found
//! as for mutual TLS ([`MtlsPolicies::policy_1_1`]); its origins are read
//! only when no RequestAuthentication rule applies to the workload, as
//! Istio 1.5 fell back to them while it served both. A request must carry
//! a token that one origin whose trigger rules match the path verifies,
//! unless `originIsOptional`, or no origin's trigger rules match the path.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::mesh::is_subset;
use super::mtls::MtlsPolicies;
use super::{ClusterState, Workload};
use crate::api::policy::{Jwt, PolicySpec, TriggerRule};
use crate::api::request_authentication::JwtRule;

/// Where an issuer's public keys come from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Keys {
    /// A JSON Web Key Set written in the policy.
    Inline(String),
    /// A URL the controller fetches the key set from.
    Uri(String),
    /// Neither: no token of the issuer can be verified.
    None,
}

/// One issuer whose tokens a sidecar verifies.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JwtProvider {
    pub issuer: String,
    /// Accepted `aud` values; empty: any.
    pub audiences: Vec<String>,
    pub keys: Keys,
    /// Headers the token is read from: (name, prefix before the token).
    pub from_headers: Vec<(String, String)>,
    /// Query parameters the token is read from. With no header either,
    /// Envoy's default: `Authorization: Bearer` and `access_token`.
    pub from_params: Vec<String>,
    /// Keep the token in the request passed to the application.
    pub forward: bool,
    /// A header the verified payload is passed to the application in.
    pub payload_header: Option<String>,
    /// Istio 1.1's trigger rules: the paths the token is checked on;
    /// empty: every path.
    pub trigger_rules: Vec<TriggerRule>,
}

/// What a request with no valid token gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Requirement {
    /// RequestAuthentication: no token passes, an invalid one is refused.
    AllowMissing,
    /// Istio 1.1 origins: a valid token is required (where a provider's
    /// trigger rules match the path).
    Required,
    /// Istio 1.1 with `originIsOptional`: tokens are verified (a valid one
    /// sets the request's end-user identity) but none is required.
    Optional,
}

/// The JWT verification of one inbound port.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JwtPolicy {
    pub providers: Vec<JwtProvider>,
    pub requirement: Requirement,
}

/// A RequestAuthentication as workloads read it.
#[derive(Clone, Debug, PartialEq)]
struct Selecting {
    /// Empty: every workload (of the namespace, or of the mesh in the root one).
    match_labels: BTreeMap<String, String>,
    rules: Vec<JwtRule>,
}

/// The policies that set end-user authentication; see the module's
/// documentation for the rules.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JwtPolicies {
    root: String,
    /// RequestAuthentications by namespace, in name order.
    request: BTreeMap<String, Vec<Selecting>>,
}

impl JwtPolicies {
    /// Reads the RequestAuthentications of `state`; Istio 1.1's policies
    /// are read through the [`MtlsPolicies`] handed to [`Self::inbound`].
    pub fn build(state: ClusterState<'_>) -> Self {
        let mut out =
            JwtPolicies { root: state.mesh_config.root_namespace.clone(), request: BTreeMap::new() };
        for ra in state.request_authentications.values() {
            out.request.entry(ra.key.namespace.clone()).or_default().push(Selecting {
                match_labels: ra.spec.selector.as_ref().map(|s| s.match_labels.clone()).unwrap_or_default(),
                rules: ra.spec.jwt_rules.clone(),
            });
        }
        out
    }

    /// What `workload`'s inbound `port` (the container port) verifies;
    /// None: no JWT filter.
    pub fn inbound(&self, mtls: &MtlsPolicies, workload: &Workload, port: u16) -> Option<JwtPolicy> {
        let ns = workload.key.namespace.as_str();
        let namespaces: &[&str] = if ns == self.root { &[ns] } else { &[ns, &self.root] };
        let mut rules: Vec<&JwtRule> = namespaces
            .iter()
            .filter_map(|n| self.request.get(*n))
            .flatten()
            .filter(|s| is_subset(&s.match_labels, &workload.labels))
            .flat_map(|s| &s.rules)
            .collect();
        if !rules.is_empty() {
            // Stable: rules of one issuer keep their order.
            rules.sort_by(|a, b| a.issuer.cmp(&b.issuer));
            return Some(JwtPolicy {
                providers: rules.into_iter().map(request_provider).collect(),
                requirement: Requirement::AllowMissing,
            });
        }
        origins(mtls.policy_1_1(workload, port)?)
    }
}

fn request_provider(rule: &JwtRule) -> JwtProvider {
    JwtProvider {
        issuer: rule.issuer.clone(),
        audiences: rule.audiences.clone(),
        keys: keys(rule.jwks.as_deref(), rule.jwks_uri.as_deref()),
        from_headers: rule
            .from_headers
            .iter()
            .map(|h| (h.name.clone(), h.prefix.clone().unwrap_or_default()))
            .collect(),
        from_params: rule.from_params.clone(),
        forward: rule.forward_original_token.unwrap_or(false),
        payload_header: rule.output_payload_to_header.clone().filter(|h| !h.is_empty()),
        trigger_rules: Vec::new(),
    }
}

/// Istio 1.1's origins of a policy; None when it has none.
fn origins(policy: &PolicySpec) -> Option<JwtPolicy> {
    let providers: Vec<JwtProvider> =
        policy.origins.iter().filter_map(|o| o.jwt.as_ref()).map(origin_provider).collect();
    if providers.is_empty() {
        return None;
    }
    let requirement = if policy.origin_is_optional.unwrap_or(false) {
        Requirement::Optional
    } else {
        Requirement::Required
    };
    Some(JwtPolicy { providers, requirement })
}

/// Istio 1.1 kept the token in the request (`forward: true`) and read
/// `jwtHeaders` without a prefix.
fn origin_provider(jwt: &Jwt) -> JwtProvider {
    JwtProvider {
        issuer: jwt.issuer.clone().unwrap_or_default(),
        audiences: jwt.audiences.clone(),
        keys: keys(jwt.jwks.as_deref(), jwt.jwks_uri.as_deref()),
        from_headers: jwt.jwt_headers.iter().map(|h| (h.clone(), String::new())).collect(),
        from_params: jwt.jwt_params.clone(),
        forward: true,
        payload_header: None,
        trigger_rules: jwt.trigger_rules.clone(),
    }
}

/// A key set Envoy can load: a JSON object with a non-empty list of
/// `keys`, each of them a key Envoy's JWT library can build (the fields
/// its type needs, base64url, of the curve's size). Envoy refuses a
/// listener whose JWT filter holds a set with no key or a broken one, so
/// inline sets, fetched ones and validation all go through this check.
/// Whether an EC point is on its curve is not checked.
pub fn check_key_set(jwks: &str) -> Result<(), String> {
    let value: serde_json::Value = serde_json::from_str(jwks).map_err(|e| format!("not JSON: {e}"))?;
    let keys = value.get("keys").and_then(|k| k.as_array()).ok_or("no \"keys\" list")?;
    if keys.is_empty() {
        return Err("the \"keys\" list is empty".into());
    }
    for (i, key) in keys.iter().enumerate() {
        check_key(key).map_err(|problem| format!("key {i} {problem}"))?;
    }
    Ok(())
}

fn check_key(key: &serde_json::Value) -> Result<(), String> {
    use base64::Engine;
    let field = |name: &str| -> Result<Vec<u8>, String> {
        let text = key.get(name).and_then(|v| v.as_str()).ok_or(format!("has no \"{name}\""))?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text.trim_end_matches('='))
            .map_err(|_| format!("has a \"{name}\" that is not base64url"))?;
        if bytes.is_empty() {
            return Err(format!("has an empty \"{name}\""));
        }
        Ok(bytes)
    };
    let sized = |name: &str, size: usize| -> Result<(), String> {
        let bytes = field(name)?;
        if bytes.len() != size {
            return Err(format!("has a \"{name}\" of {} bytes, not {size}", bytes.len()));
        }
        Ok(())
    };
    match key.get("kty").and_then(|k| k.as_str()) {
        None => Err("has no \"kty\"".into()),
        Some("RSA") => field("n").and(field("e")).map(drop),
        Some("EC") => {
            let size = match key.get("crv").and_then(|c| c.as_str()) {
                Some("P-256") => 32,
                Some("P-384") => 48,
                Some("P-521") => 66,
                other => return Err(format!("has curve {other:?}, not P-256, P-384 or P-521")),
            };
            sized("x", size).and(sized("y", size))
        }
        Some("oct") => field("k").map(drop),
        Some("OKP") => match key.get("crv").and_then(|c| c.as_str()) {
            Some("Ed25519") => sized("x", 32),
            other => Err(format!("has curve {other:?}, not Ed25519")),
        },
        Some(other) => Err(format!("has type {other:?}, not RSA, EC, oct or OKP")),
    }
}

/// Inline keys win over a URL, as in Istio; inline keys Envoy could not
/// load verify no token (validation refuses them; an object applied
/// without the webhook still must not break the listener).
fn keys(jwks: Option<&str>, uri: Option<&str>) -> Keys {
    match (jwks.filter(|j| !j.is_empty()), uri.filter(|u| !u.is_empty())) {
        (Some(jwks), _) if check_key_set(jwks).is_err() => Keys::None,
        (Some(jwks), _) => Keys::Inline(jwks.to_string()),
        (None, Some(uri)) => Keys::Uri(uri.to_string()),
        (None, None) => Keys::None,
    }
}

/// Every key set URL a policy of `state` names where no inline keys win:
/// what the controller fetches.
pub fn jwks_uris(state: ClusterState<'_>) -> BTreeSet<String> {
    let request = state
        .request_authentications
        .values()
        .flat_map(|ra| &ra.spec.jwt_rules)
        .map(|r| keys(r.jwks.as_deref(), r.jwks_uri.as_deref()));
    let policies =
        state.policies.values().map(|p| &p.spec).chain(state.mesh_policies.values().map(|p| &p.spec.0));
    let origins = policies
        .flat_map(|p| &p.origins)
        .filter_map(|o| o.jwt.as_ref())
        .map(|j| keys(j.jwks.as_deref(), j.jwks_uri.as_deref()));
    request
        .chain(origins)
        .filter_map(|k| match k {
            Keys::Uri(uri) => Some(uri),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests;

//! Who may open a stream. A sidecar proves who it is with its projected
//! ServiceAccount token (audience `mesh-ca`), sent as
//! `authorization: Bearer <token>`; an [`Authenticator`] turns the token
//! into a [`TokenIdentity`] (the Kubernetes one, [`super::tokenreview`],
//! asks the API server with a TokenReview). [`authorize`] then checks, with
//! no I/O, that the node id names the very pod the token is bound to, as
//! the index knows it. Certificates are handed out on this stream later,
//! so a proxy must never get configuration for another pod.
//!
//! Every refusal is a [`Rejection`]: its message says why, for the proxy's
//! log and ours, and its [`Rejection::reason`] is a bounded metric label.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use futures::future::BoxFuture;

use super::proxy::{NodeIdError, ProxyId};
use crate::model::{ObjectKey, Workload};

/// The audience of the tokens sidecars present to the control plane.
pub const AUDIENCE: &str = "mesh-ca";

/// What a reviewed token says about its bearer: a ServiceAccount, and the
/// pod the token is bound to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenIdentity {
    pub namespace: String,
    pub service_account: String,
    pub pod_name: String,
    pub pod_uid: String,
}

impl TokenIdentity {
    pub fn pod(&self) -> ObjectKey {
        ObjectKey::new(&self.namespace, &self.pod_name)
    }
}

/// Turns a bearer token into the identity it proves.
pub trait Authenticator: Send + Sync + 'static {
    /// Reviews `token`; a refusal says why.
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<TokenIdentity, Rejection>>;
}

/// Why a stream was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error(
        "no `authorization: Bearer <token>` metadata: the sidecar must send its projected ServiceAccount token (audience {AUDIENCE}); check the bootstrap's call_credentials and credentials_factory_name"
    )]
    MissingToken,
    #[error("the `authorization` metadata is not `Bearer <token>`")]
    MalformedAuthorization,
    #[error("the stream ended or stalled before its first request")]
    NoRequest,
    #[error("the stream's first request carries no node: the sidecar must announce its node id")]
    NoNode,
    #[error(transparent)]
    MalformedNodeId(#[from] NodeIdError),
    #[error("the API server did not accept the token: {0}")]
    InvalidToken(String),
    #[error(
        "the token is not for audience `{AUDIENCE}` (it is for {0:?}): mount a projected token with that audience"
    )]
    WrongAudience(Vec<String>),
    #[error("the token belongs to `{0}`, not to a ServiceAccount")]
    NotServiceAccount(String),
    #[error(
        "the token of `{0}` is not bound to a pod: mount a projected ServiceAccount token, not a Secret's"
    )]
    NotBoundToPod(String),
    #[error(
        "cannot review the token: {0} (is the API server reachable, and may the controller create tokenreviews?)"
    )]
    ReviewFailed(String),
    #[error("token is bound to pod {token}, but the node id names {node}")]
    PodMismatch { token: ObjectKey, node: ObjectKey },
    #[error("pod {0} is unknown to the control plane (not yet seen, or deleted)")]
    UnknownPod(ObjectKey),
    #[error(
        "token is bound to pod {pod} with uid {token}, but that pod has uid {index}: the token belongs to an earlier pod of the same name"
    )]
    UidMismatch { pod: ObjectKey, token: String, index: String },
    #[error("token is for ServiceAccount {namespace}/{token}, but pod {pod} runs as {pod_account}")]
    ServiceAccountMismatch { pod: ObjectKey, namespace: String, token: String, pod_account: String },
    #[error("the node id gives pod {pod} the IP {node}, but its IP is {index}")]
    IpMismatch { pod: ObjectKey, node: IpAddr, index: String },
    #[error("no workload certificate for this proxy: {0}")]
    NoCertificate(String),
    #[error(
        "this controller has not read everything from the API server yet (waiting for: {0}); it serves no partial view: the proxy retries, and may reach another replica"
    )]
    NotSynced(String),
}

/// How a refusal is reported to the proxy, in gRPC terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No usable credentials: gRPC Unauthenticated.
    Unauthenticated,
    /// The request itself is malformed: gRPC InvalidArgument.
    InvalidArgument,
    /// Credentials were checked and refused: gRPC PermissionDenied.
    PermissionDenied,
    /// The control plane could not check them: gRPC Unavailable (retry).
    Unavailable,
}

impl Rejection {
    /// A short, bounded label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::MissingToken => "missing_token",
            Rejection::MalformedAuthorization => "malformed_authorization",
            Rejection::NoRequest => "no_request",
            Rejection::NoNode => "no_node",
            Rejection::MalformedNodeId(_) => "malformed_node_id",
            Rejection::InvalidToken(_) => "invalid_token",
            Rejection::WrongAudience(_) => "wrong_audience",
            Rejection::NotServiceAccount(_) => "not_service_account",
            Rejection::NotBoundToPod(_) => "not_bound_to_pod",
            Rejection::ReviewFailed(_) => "review_failed",
            Rejection::PodMismatch { .. } => "pod_mismatch",
            Rejection::UnknownPod(_) => "unknown_pod",
            Rejection::UidMismatch { .. } => "uid_mismatch",
            Rejection::ServiceAccountMismatch { .. } => "service_account_mismatch",
            Rejection::IpMismatch { .. } => "ip_mismatch",
            Rejection::NoCertificate(_) => "no_certificate",
            Rejection::NotSynced(_) => "not_synced",
        }
    }

    pub fn refusal(&self) -> Refusal {
        match self {
            Rejection::MissingToken | Rejection::MalformedAuthorization => Refusal::Unauthenticated,
            Rejection::NoRequest | Rejection::NoNode | Rejection::MalformedNodeId(_) => {
                Refusal::InvalidArgument
            }
            Rejection::ReviewFailed(_) | Rejection::NoCertificate(_) | Rejection::NotSynced(_) => {
                Refusal::Unavailable
            }
            _ => Refusal::PermissionDenied,
        }
    }
}

/// The token in an `authorization` metadata value.
pub fn bearer_token(authorization: Option<&str>) -> Result<&str, Rejection> {
    let value = authorization.ok_or(Rejection::MissingToken)?;
    let token = value.strip_prefix("Bearer ").ok_or(Rejection::MalformedAuthorization)?.trim();
    if token.is_empty() {
        return Err(Rejection::MalformedAuthorization);
    }
    Ok(token)
}

/// Whether the proxy `id`, whose token proved `identity`, may have this
/// stream: the node id names the token's pod, and that pod, as the index
/// holds it (`workload`), is the same object (uid), runs as the same
/// ServiceAccount and, when its IP is known, has the node id's IP.
pub fn authorize(
    id: &ProxyId,
    identity: &TokenIdentity,
    workload: Option<&Workload>,
) -> Result<(), Rejection> {
    let node = ObjectKey::new(&id.namespace, &id.pod);
    let token = identity.pod();
    if node != token {
        return Err(Rejection::PodMismatch { token, node });
    }
    let workload = workload.ok_or_else(|| Rejection::UnknownPod(node.clone()))?;
    if workload.uid != identity.pod_uid {
        return Err(Rejection::UidMismatch {
            pod: node,
            token: identity.pod_uid.clone(),
            index: workload.uid.clone(),
        });
    }
    if workload.service_account != identity.service_account {
        return Err(Rejection::ServiceAccountMismatch {
            pod: node,
            namespace: identity.namespace.clone(),
            token: identity.service_account.clone(),
            pod_account: workload.service_account.clone(),
        });
    }
    if let Some(ip) = &workload.ip
        && ip.parse::<IpAddr>().ok() != Some(id.ip)
    {
        return Err(Rejection::IpMismatch { pod: node, node: id.ip, index: ip.clone() });
    }
    Ok(())
}

/// Remembers successful reviews for a short while, so a reconnect storm
/// (every sidecar after a control plane restart) costs one TokenReview per
/// token, not one per stream. Entries are keyed by the token's SHA-256 and
/// live until the token expires or [`TokenCache::TTL`], whichever is
/// first. Refusals are not remembered.
///
/// While the API server cannot be asked (the review fails, rather than
/// refusing the token), a token reviewed within [`TokenCache::STALE`] is
/// still accepted, until it expires: proxies that reconnect during an API
/// server outage are served, as their configuration and certificates come
/// from the controller's memory anyway.
pub struct TokenCache {
    inner: Arc<dyn Authenticator>,
    entries: Mutex<HashMap<Vec<u8>, Review>>,
}

/// A successful review: trusted without asking until `fresh`, and while
/// the API server cannot be asked, until `stale`.
struct Review {
    identity: TokenIdentity,
    fresh: SystemTime,
    stale: SystemTime,
}

impl TokenCache {
    /// How long a review is trusted at most: a revoked token (its pod
    /// deleted) is refused again after this long; [`authorize`] still
    /// checks the pod on every stream meanwhile.
    pub const TTL: Duration = Duration::from_secs(60);
    /// How long a review still counts while the API server cannot be
    /// asked (never beyond the token's expiry).
    pub const STALE: Duration = Duration::from_secs(3600);
    /// Entries kept at most; beyond, new reviews are not remembered.
    pub const CAPACITY: usize = 10_000;

    pub fn new(inner: Arc<dyn Authenticator>) -> Self {
        Self { inner, entries: Mutex::new(HashMap::new()) }
    }

    async fn authenticate_at(&self, token: &str, now: SystemTime) -> Result<TokenIdentity, Rejection> {
        let key = digest(token);
        if let Some(key) = &key
            && let Some(identity) = self.lookup(key, now, |review| review.fresh)
        {
            return Ok(identity);
        }
        let identity = match self.inner.authenticate(token).await {
            Ok(identity) => identity,
            Err(Rejection::ReviewFailed(why)) => {
                let stale = key.as_deref().and_then(|key| self.lookup(key, now, |review| review.stale));
                return stale.ok_or(Rejection::ReviewFailed(why));
            }
            Err(refused) => return Err(refused),
        };
        if let Some(key) = key {
            let expiry = expiry(token);
            let until = |life: Duration| expiry.map_or(now + life, |exp| exp.min(now + life));
            let review =
                Review { identity: identity.clone(), fresh: until(Self::TTL), stale: until(Self::STALE) };
            self.remember(key, review, now);
        }
        Ok(identity)
    }

    fn lookup(
        &self,
        key: &[u8],
        now: SystemTime,
        until: impl Fn(&Review) -> SystemTime,
    ) -> Option<TokenIdentity> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.get(key).filter(|review| now < until(review)).map(|review| review.identity.clone())
    }

    fn remember(&self, key: Vec<u8>, review: Review, now: SystemTime) {
        if review.fresh <= now {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= Self::CAPACITY {
            entries.retain(|_, review| now < review.stale);
        }
        if entries.len() < Self::CAPACITY {
            entries.insert(key, review);
        }
    }
}

impl Authenticator for TokenCache {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<TokenIdentity, Rejection>> {
        Box::pin(self.authenticate_at(token, SystemTime::now()))
    }
}

/// SHA-256 of the token, from the TLS library the server already uses
/// (also the key of the /debug views' answers, in `monitoring`).
pub fn digest(token: &str) -> Option<Vec<u8>> {
    let suite = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256.tls13()?;
    Some(suite.common.hash_provider.hash(token.as_bytes()).as_ref().to_vec())
}

/// The `exp` claim of a JWT, unverified: the API server has just checked
/// the token; this only keeps the cache and the stream from outliving it.
fn expiry(token: &str) -> Option<SystemTime> {
    claim(token, "exp")
}

/// A time claim (`exp`, `iat`) of a JWT, unverified.
fn claim(token: &str, name: &str) -> Option<SystemTime> {
    let payload = token.split('.').nth(1)?;
    let bytes =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let seconds = claims.get(name)?.as_u64()?;
    UNIX_EPOCH.checked_add(Duration::from_secs(seconds))
}

/// When a stream authenticated by `token` must end, so the proxy reconnects
/// with the token the kubelet has refreshed by then: at 90% of the token's
/// life (the kubelet replaces it at 80%), and at least [`MIN_STREAM_LIFE`]
/// after `now`, so a token near its end does not make a reconnect loop
/// (the next review refuses it once it has expired). `None` when the token
/// says nothing of its expiry.
pub fn stream_deadline(token: &str, now: SystemTime) -> Option<SystemTime> {
    let exp = expiry(token)?;
    let issued = claim(token, "iat").filter(|iat| *iat <= now).unwrap_or(now);
    let life = exp.duration_since(issued).unwrap_or_default();
    let recycle = issued + life.mul_f64(0.9);
    Some(recycle.max(now + MIN_STREAM_LIFE))
}

/// The shortest life [`stream_deadline`] gives a stream.
pub const MIN_STREAM_LIFE: Duration = Duration::from_secs(5);

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    pub(crate) fn identity() -> TokenIdentity {
        TokenIdentity {
            namespace: "default".into(),
            service_account: "bookinfo-productpage".into(),
            pod_name: "productpage-v1-x".into(),
            pod_uid: "uid-1".into(),
        }
    }

    pub(crate) fn workload() -> Workload {
        Workload {
            key: ObjectKey::new("default", "productpage-v1-x"),
            uid: "uid-1".into(),
            service_account: "bookinfo-productpage".into(),
            ip: Some("10.1.2.3".into()),
            ..Default::default()
        }
    }

    fn proxy(pod: &str) -> ProxyId {
        ProxyId::parse(&format!("sidecar~10.1.2.3~{pod}.default~default.svc.cluster.local")).expect("valid")
    }

    #[test]
    fn the_pods_own_sidecar_is_authorized() {
        assert_eq!(authorize(&proxy("productpage-v1-x"), &identity(), Some(&workload())), Ok(()));
        // A gateway's Envoy proves the same: its pod, by its pod's token.
        let router = ProxyId::parse("router~10.1.2.3~productpage-v1-x.default~default.svc.cluster.local")
            .expect("valid");
        assert_eq!(authorize(&router, &identity(), Some(&workload())), Ok(()));
        let other =
            ProxyId::parse("router~10.1.2.3~other-pod.default~default.svc.cluster.local").expect("valid");
        assert!(authorize(&other, &identity(), Some(&workload())).is_err());
        // The IP may not be known yet.
        let no_ip = Workload { ip: None, ..workload() };
        assert_eq!(authorize(&proxy("productpage-v1-x"), &identity(), Some(&no_ip)), Ok(()));
    }

    #[test]
    fn a_token_for_another_pod_is_refused_with_both_names() {
        let err = authorize(&proxy("details-v1-y"), &identity(), Some(&workload())).unwrap_err();
        assert_eq!(err.reason(), "pod_mismatch");
        assert_eq!(err.refusal(), Refusal::PermissionDenied);
        assert_eq!(
            err.to_string(),
            "token is bound to pod default/productpage-v1-x, but the node id names default/details-v1-y"
        );
    }

    #[test]
    fn the_pod_must_be_the_indexed_one() {
        let id = proxy("productpage-v1-x");
        let err = authorize(&id, &identity(), None).unwrap_err();
        assert_eq!(err.reason(), "unknown_pod");

        let recreated = Workload { uid: "uid-2".into(), ..workload() };
        let err = authorize(&id, &identity(), Some(&recreated)).unwrap_err();
        assert_eq!(err.reason(), "uid_mismatch");
        assert!(err.to_string().contains("uid-2"), "{err}");

        let other_account = Workload { service_account: "default".into(), ..workload() };
        let err = authorize(&id, &identity(), Some(&other_account)).unwrap_err();
        assert_eq!(err.reason(), "service_account_mismatch");
        assert!(err.to_string().contains("runs as default"), "{err}");

        let moved = Workload { ip: Some("10.9.9.9".into()), ..workload() };
        let err = authorize(&id, &identity(), Some(&moved)).unwrap_err();
        assert_eq!(err.reason(), "ip_mismatch");
        assert!(err.to_string().contains("10.9.9.9"), "{err}");
    }

    #[test]
    fn the_authorization_metadata_must_be_a_bearer_token() {
        assert_eq!(bearer_token(Some("Bearer abc")), Ok("abc"));
        assert_eq!(bearer_token(None), Err(Rejection::MissingToken));
        assert_eq!(bearer_token(Some("Basic abc")), Err(Rejection::MalformedAuthorization));
        assert_eq!(bearer_token(Some("Bearer  ")), Err(Rejection::MalformedAuthorization));
        assert_eq!(Rejection::MissingToken.refusal(), Refusal::Unauthenticated);
    }

    /// The API server's reviews, counted; `down` makes them fail as when
    /// it cannot be reached.
    #[derive(Default)]
    struct FakeApi {
        calls: AtomicUsize,
        down: std::sync::atomic::AtomicBool,
    }

    impl Authenticator for FakeApi {
        fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<TokenIdentity, Rejection>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let result = if self.down.load(Ordering::SeqCst) {
                Err(Rejection::ReviewFailed("connection refused".into()))
            } else if token.starts_with("good") {
                Ok(identity())
            } else {
                Err(Rejection::InvalidToken("no".into()))
            };
            Box::pin(async move { result })
        }
    }

    fn jwt(exp: u64) -> String {
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{{\"exp\":{exp}}}"));
        format!("good.{claims}.sig")
    }

    fn jwt_issued(iat: u64, exp: u64) -> String {
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(format!("{{\"iat\":{iat},\"exp\":{exp}}}"));
        format!("good.{claims}.sig")
    }

    #[test]
    fn a_stream_ends_at_nine_tenths_of_its_tokens_life() {
        let at = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        // An hour-long token issued at 1000: the kubelet refreshes it at
        // 3880, the stream ends at 4240, the token expires at 4600.
        let token = jwt_issued(1000, 4600);
        assert_eq!(stream_deadline(&token, at(1500)), Some(at(4240)));
        // Without `iat`, the life counts from now.
        assert_eq!(stream_deadline(&jwt(2000), at(1000)), Some(at(1900)));
        // A token about to expire still gets a few seconds.
        assert_eq!(stream_deadline(&token, at(4590)), Some(at(4590) + MIN_STREAM_LIFE));
        assert_eq!(stream_deadline("not-a-jwt", at(0)), None);
    }

    #[tokio::test]
    async fn reviews_are_remembered_until_the_token_expires_or_a_minute_passes() {
        let inner = Arc::new(FakeApi::default());
        let cache = TokenCache::new(inner.clone());
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let calls = || inner.calls.load(Ordering::SeqCst);

        // A token valid for an hour: remembered for a minute.
        let long = jwt(1_000_000 + 3600);
        cache.authenticate_at(&long, t0).await.expect("ok");
        cache.authenticate_at(&long, t0 + Duration::from_secs(59)).await.expect("ok");
        assert_eq!(calls(), 1);
        cache.authenticate_at(&long, t0 + Duration::from_secs(61)).await.expect("ok");
        assert_eq!(calls(), 2);

        // A token expiring in ten seconds: remembered for ten seconds.
        let short = jwt(1_000_000 + 10);
        cache.authenticate_at(&short, t0).await.expect("ok");
        cache.authenticate_at(&short, t0 + Duration::from_secs(9)).await.expect("ok");
        assert_eq!(calls(), 3);
        cache.authenticate_at(&short, t0 + Duration::from_secs(11)).await.expect("ok");
        assert_eq!(calls(), 4);

        // Refusals are asked again every time.
        for _ in 0..2 {
            cache.authenticate_at("bad", t0).await.expect_err("refused");
        }
        assert_eq!(calls(), 6);
    }

    #[tokio::test]
    async fn while_the_api_server_cannot_be_asked_a_recent_review_still_counts() {
        let api = Arc::new(FakeApi::default());
        let cache = TokenCache::new(api.clone());
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let at = |s: u64| t0 + Duration::from_secs(s);
        let reviewed = jwt(1_000_000 + 7200);
        let short = jwt(1_000_000 + 600);
        cache.authenticate_at(&reviewed, t0).await.expect("reviewed");
        cache.authenticate_at(&short, t0).await.expect("reviewed");

        api.down.store(true, Ordering::SeqCst);
        // Past the minute, the review is asked again and cannot be: the
        // last good one is used, up to an hour and never past expiry.
        assert!(cache.authenticate_at(&reviewed, at(120)).await.is_ok());
        assert!(cache.authenticate_at(&reviewed, at(3599)).await.is_ok());
        let after_an_hour = cache.authenticate_at(&reviewed, at(3601)).await;
        assert!(matches!(after_an_hour, Err(Rejection::ReviewFailed(_))), "{after_an_hour:?}");
        assert!(cache.authenticate_at(&short, at(599)).await.is_ok());
        assert!(matches!(cache.authenticate_at(&short, at(601)).await, Err(Rejection::ReviewFailed(_))));
        // A token never reviewed is not let in.
        let unknown = jwt(1_000_000 + 7200).replace("good", "good2");
        assert!(matches!(cache.authenticate_at(&unknown, at(120)).await, Err(Rejection::ReviewFailed(_))));

        // Once the API server answers again, it is asked again.
        api.down.store(false, Ordering::SeqCst);
        assert!(cache.authenticate_at(&reviewed, at(130)).await.is_ok(), "asked again and accepted");
    }
}

//! Who may read the controller's /debug views. They show every proxy's
//! configuration (and, once secrets are served, which certificates each
//! holds), so they answer only callers the Kubernetes API authorizes, the
//! way the kubelet and aggregated API servers delegate it: the caller sends
//! `Authorization: Bearer <token>`; a [`Reviewer`] asks the API server who
//! the token belongs to (a TokenReview, for the API server's own
//! audiences) and whether that user may `get` the view's path as a
//! non-resource URL (a SubjectAccessReview). The ClusterRole `mesh-debug`
//! of the chart grants `get` on `/debug/*`; cluster-admin has it too.
//!
//! [`DebugAccess`] turns those answers into a [`Decision`] with no I/O of
//! its own, and remembers who was allowed or refused for
//! [`DebugAccess::TTL`], so a dashboard polling a view costs the API server
//! a review every few seconds, not one per request. The kube calls are in
//! [`super::review`]. /healthz, /readyz and /metrics never come here: the
//! kubelet and Prometheus read them without credentials.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use futures::future::BoxFuture;

/// Who a token belongs to, as the API server said: what a
/// SubjectAccessReview asks about.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct User {
    pub username: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

/// Why a review gave no answer about the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReviewError {
    /// The API server does not accept the token (unknown, expired, for
    /// another audience); its reason.
    NotAuthenticated(String),
    /// The API server could not be asked, or refused the controller's
    /// review itself.
    Unavailable(String),
}

/// Asks the API server about a caller.
pub trait Reviewer: Send + Sync + 'static {
    /// Who `token` belongs to (TokenReview).
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<User, ReviewError>>;
    /// Whether `user` may `get` the non-resource URL `path` (SubjectAccessReview).
    fn may_get<'a>(&'a self, user: &'a User, path: &'a str) -> BoxFuture<'a, Result<bool, ReviewError>>;
}

/// What becomes of one request for a /debug view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Answered: the API server authorized `user`.
    Allowed { user: String },
    /// No `Authorization` header.
    NoToken,
    /// An `Authorization` header that is not `Bearer <token>`.
    NotBearer,
    /// The API server did not accept the token; its reason.
    InvalidToken(String),
    /// The token is valid, but its user may not get `path`.
    Forbidden { user: String, path: String },
    /// The API server could not be asked; nothing was decided.
    Unavailable(String),
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allowed { .. })
    }
}

/// The ClusterRole name the chart gives by default; refusals name the one
/// the controller was told (`--debug-cluster-role`).
pub const DEBUG_CLUSTER_ROLE: &str = "mesh-debug";

/// The /debug views' gate: [`Reviewer`] answers, remembered briefly.
pub struct DebugAccess {
    reviewer: Arc<dyn Reviewer>,
    cluster_role: String,
    /// By the token's SHA-256 and the path: who the caller is, whether
    /// allowed, and until when this is trusted.
    answers: Mutex<HashMap<(Vec<u8>, String), Remembered>>,
}

#[derive(Clone)]
struct Remembered {
    user: String,
    allowed: bool,
    until: Instant,
}

impl DebugAccess {
    /// How long an answer is trusted: a revoked binding or token is
    /// refused again after this long.
    pub const TTL: Duration = Duration::from_secs(10);
    /// Answers kept at most; beyond, new answers are not remembered.
    pub const CAPACITY: usize = 1_000;

    /// `cluster_role` is named in refusals: what to bind to be let in.
    pub fn new(reviewer: Arc<dyn Reviewer>, cluster_role: impl Into<String>) -> Self {
        Self { reviewer, cluster_role: cluster_role.into(), answers: Mutex::new(HashMap::new()) }
    }

    /// Whether the caller whose `Authorization` header is `authorization`
    /// may get `path` (the request's path, without its query).
    pub async fn check(&self, authorization: Option<&str>, path: &str) -> Decision {
        self.check_at(authorization, path, Instant::now()).await
    }

    async fn check_at(&self, authorization: Option<&str>, path: &str, now: Instant) -> Decision {
        let token = match bearer(authorization) {
            Ok(token) => token,
            Err(refused) => return refused,
        };
        let key = crate::xds::auth::digest(token).map(|digest| (digest, path.to_string()));
        if let Some(key) = &key
            && let Some(answer) = self.lookup(key, now)
        {
            return decision(answer.user, answer.allowed, path);
        }
        let user = match self.reviewer.authenticate(token).await {
            Ok(user) => user,
            Err(ReviewError::NotAuthenticated(why)) => return Decision::InvalidToken(why),
            Err(ReviewError::Unavailable(why)) => return Decision::Unavailable(why),
        };
        let allowed = match self.reviewer.may_get(&user, path).await {
            Ok(allowed) => allowed,
            Err(ReviewError::NotAuthenticated(why) | ReviewError::Unavailable(why)) => {
                return Decision::Unavailable(why);
            }
        };
        if let Some(key) = key {
            self.remember(
                key,
                Remembered { user: user.username.clone(), allowed, until: now + Self::TTL },
                now,
            );
        }
        decision(user.username, allowed, path)
    }

    fn lookup(&self, key: &(Vec<u8>, String), now: Instant) -> Option<Remembered> {
        let answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        answers.get(key).filter(|a| now < a.until).cloned()
    }

    fn remember(&self, key: (Vec<u8>, String), answer: Remembered, now: Instant) {
        let mut answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        if answers.len() >= Self::CAPACITY {
            answers.retain(|_, a| now < a.until);
        }
        if answers.len() < Self::CAPACITY {
            answers.insert(key, answer);
        }
    }

    /// The HTTP answer to a request that is not allowed: the status and a
    /// message saying what to do.
    pub fn refusal(&self, decision: &Decision) -> (StatusCode, String) {
        let role = &self.cluster_role;
        let send = format!(
            "send `Authorization: Bearer <token>` with a Kubernetes token of a user allowed to get /debug/* \
             (cluster-admin, or a user bound to ClusterRole {role}; for a ServiceAccount: `kubectl create token <name> -n <namespace>`)"
        );
        match decision {
            Decision::Allowed { .. } => (StatusCode::OK, String::new()),
            Decision::NoToken => (StatusCode::UNAUTHORIZED, format!("no token: {send}\n")),
            Decision::NotBearer => (
                StatusCode::UNAUTHORIZED,
                format!("the Authorization header is not a bearer token: {send}\n"),
            ),
            Decision::InvalidToken(why) => (
                StatusCode::UNAUTHORIZED,
                format!("the API server did not accept the token ({why}): {send}\n"),
            ),
            Decision::Forbidden { user, path } => (
                StatusCode::FORBIDDEN,
                format!(
                    "user {user:?} may not get {path}: bind ClusterRole {role} to it, e.g. \
                     `kubectl create clusterrolebinding <name> --clusterrole={role} {}`\n",
                    binding_subject(user)
                ),
            ),
            Decision::Unavailable(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "cannot check who may read the debug views: {why} (is the API server reachable, and may \
                     the controller create tokenreviews and subjectaccessreviews?)\n"
                ),
            ),
        }
    }
}

/// The token of an `Authorization` header (the scheme is case-insensitive).
fn bearer(authorization: Option<&str>) -> Result<&str, Decision> {
    let value = authorization.ok_or(Decision::NoToken)?.trim();
    let (scheme, token) = value.split_once(' ').ok_or(Decision::NotBearer)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(Decision::NotBearer);
    }
    Ok(token)
}

fn decision(user: String, allowed: bool, path: &str) -> Decision {
    if allowed { Decision::Allowed { user } } else { Decision::Forbidden { user, path: path.to_string() } }
}

/// How `kubectl create clusterrolebinding` names `user`.
fn binding_subject(user: &str) -> String {
    match user.strip_prefix("system:serviceaccount:").and_then(|rest| rest.split_once(':')) {
        Some((namespace, name)) => format!("--serviceaccount={namespace}:{name}"),
        None => format!("--user={user}"),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A reviewer with fixed answers: token `admin` is allowed everything,
    /// `viewer` only /debug/syncz, `nobody` nothing; `down` finds the API
    /// server unreachable; any other token is not accepted. Counts calls.
    #[derive(Default)]
    pub(crate) struct FixedReviewer {
        pub reviews: AtomicUsize,
    }

    impl FixedReviewer {
        pub fn calls(&self) -> usize {
            self.reviews.load(Ordering::SeqCst)
        }
    }

    impl Reviewer for FixedReviewer {
        fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<User, ReviewError>> {
            self.reviews.fetch_add(1, Ordering::SeqCst);
            let answer = match token {
                "admin" | "viewer" | "nobody" => Ok(User {
                    username: format!("system:serviceaccount:tools:{token}"),
                    ..Default::default()
                }),
                "down" => Err(ReviewError::Unavailable("connection refused".into())),
                _ => Err(ReviewError::NotAuthenticated("invalid bearer token".into())),
            };
            Box::pin(async move { answer })
        }

        fn may_get<'a>(&'a self, user: &'a User, path: &'a str) -> BoxFuture<'a, Result<bool, ReviewError>> {
            self.reviews.fetch_add(1, Ordering::SeqCst);
            let name = user.username.rsplit(':').next().unwrap_or_default();
            let allowed = name == "admin" || (name == "viewer" && path == "/debug/syncz");
            Box::pin(async move { Ok(allowed) })
        }
    }

    fn access() -> (Arc<FixedReviewer>, DebugAccess) {
        let reviewer = Arc::new(FixedReviewer::default());
        (reviewer.clone(), DebugAccess::new(reviewer, DEBUG_CLUSTER_ROLE))
    }

    #[tokio::test]
    async fn without_a_bearer_token_the_answer_is_401_saying_what_to_send() {
        let (reviewer, access) = access();
        for (header, expected) in [
            (None, Decision::NoToken),
            (Some("Basic YWxpY2U6c2VjcmV0"), Decision::NotBearer),
            (Some("Bearer "), Decision::NotBearer),
            (Some("admin"), Decision::NotBearer),
        ] {
            let decision = access.check(header, "/debug/syncz").await;
            assert_eq!(decision, expected, "{header:?}");
            let (status, message) = access.refusal(&decision);
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            assert!(message.contains("Authorization: Bearer <token>"), "{message}");
            assert!(message.contains("ClusterRole mesh-debug"), "{message}");
        }
        assert_eq!(reviewer.calls(), 0, "no review without a token");

        let decision = access.check(Some("Bearer forged"), "/debug/syncz").await;
        assert_eq!(decision, Decision::InvalidToken("invalid bearer token".into()));
        let (status, message) = access.refusal(&decision);
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(message.contains("did not accept the token (invalid bearer token)"), "{message}");
    }

    #[tokio::test]
    async fn an_authorized_user_is_let_in_and_any_other_gets_403_naming_user_path_and_role() {
        let (_, access) = access();
        assert_eq!(
            access.check(Some("Bearer admin"), "/debug/config_dump").await,
            Decision::Allowed { user: "system:serviceaccount:tools:admin".into() }
        );
        // The scheme is case-insensitive.
        assert!(access.check(Some("bearer viewer"), "/debug/syncz").await.is_allowed());

        // Allowed one path is not allowed another.
        let decision = access.check(Some("Bearer viewer"), "/debug/config_dump").await;
        assert_eq!(
            decision,
            Decision::Forbidden {
                user: "system:serviceaccount:tools:viewer".into(),
                path: "/debug/config_dump".into()
            }
        );
        let (status, message) = access.refusal(&decision);
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(
            message,
            "user \"system:serviceaccount:tools:viewer\" may not get /debug/config_dump: bind ClusterRole \
             mesh-debug to it, e.g. `kubectl create clusterrolebinding <name> --clusterrole=mesh-debug \
             --serviceaccount=tools:viewer`\n"
        );
        assert_eq!(binding_subject("alice"), "--user=alice");

        // Another role name, as the chart may be told.
        let named = DebugAccess::new(Arc::new(FixedReviewer::default()), "ops-debug");
        let (_, message) = named.refusal(&named.check(Some("Bearer nobody"), "/debug/configz").await);
        assert!(message.contains("--clusterrole=ops-debug"), "{message}");
    }

    #[tokio::test]
    async fn an_unreachable_api_server_is_503_and_not_remembered() {
        let (reviewer, access) = access();
        let decision = access.check(Some("Bearer down"), "/debug/syncz").await;
        assert_eq!(decision, Decision::Unavailable("connection refused".into()));
        let (status, message) = access.refusal(&decision);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(message.contains("subjectaccessreviews"), "{message}");
        access.check(Some("Bearer down"), "/debug/syncz").await;
        assert_eq!(reviewer.calls(), 2, "asked again");
    }

    #[tokio::test]
    async fn answers_are_remembered_for_ten_seconds_per_token_and_path() {
        let (reviewer, access) = access();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);

        // Allowed: one TokenReview and one SubjectAccessReview, then none for 10 s.
        for s in [0, 3, 9] {
            assert!(access.check_at(Some("Bearer admin"), "/debug/syncz", at(s)).await.is_allowed());
        }
        assert_eq!(reviewer.calls(), 2);
        assert!(access.check_at(Some("Bearer admin"), "/debug/syncz", at(10)).await.is_allowed());
        assert_eq!(reviewer.calls(), 4, "asked again after 10 s");

        // Refused is remembered too; another path is another question.
        for s in [0, 5] {
            let decision = access.check_at(Some("Bearer viewer"), "/debug/configz", at(s)).await;
            assert!(matches!(decision, Decision::Forbidden { .. }), "{decision:?}");
        }
        assert_eq!(reviewer.calls(), 6);
        assert!(access.check_at(Some("Bearer viewer"), "/debug/syncz", at(5)).await.is_allowed());
        assert_eq!(reviewer.calls(), 8);

        // A token the API server did not accept is asked about every time.
        for _ in 0..2 {
            access.check_at(Some("Bearer forged"), "/debug/syncz", at(0)).await;
        }
        assert_eq!(reviewer.calls(), 10);
    }

    #[tokio::test]
    async fn the_memory_is_bounded() {
        let (reviewer, access) = access();
        let t0 = Instant::now();
        for i in 0..DebugAccess::CAPACITY + 5 {
            access.check_at(Some("Bearer admin"), &format!("/debug/{i}"), t0).await;
        }
        assert_eq!(access.answers.lock().unwrap().len(), DebugAccess::CAPACITY);
        // Beyond capacity nothing is remembered, but answers stay right.
        let before = reviewer.calls();
        assert!(access.check_at(Some("Bearer admin"), "/debug/new", t0).await.is_allowed());
        assert!(access.check_at(Some("Bearer admin"), "/debug/new", t0).await.is_allowed());
        assert_eq!(reviewer.calls(), before + 4);
        // Once the old answers expire, they make room.
        let later = t0 + DebugAccess::TTL;
        assert!(access.check_at(Some("Bearer admin"), "/debug/new", later).await.is_allowed());
        assert_eq!(access.answers.lock().unwrap().len(), 1);
    }
}

//! The Kubernetes [`Authenticator`]: a TokenReview asks the API server
//! whether a sidecar's token is valid for audience `mesh-ca`, and for whom.
//! Only tokens of a ServiceAccount that are bound to a pod (projected
//! tokens, which carry the pod's name and uid) are accepted.
//!
//! This is the only file of `xds` that talks to the API server. The
//! controller needs RBAC `create` on `tokenreviews` (group
//! `authentication.k8s.io`).

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::{Api, PostParams};

use super::auth::{AUDIENCE, Authenticator, Rejection, TokenIdentity};

/// `user.extra` keys the API server fills for pod-bound tokens.
const POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const POD_UID: &str = "authentication.kubernetes.io/pod-uid";
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// Reviews tokens with the API server.
#[derive(Clone)]
pub struct KubeAuthenticator {
    api: Api<TokenReview>,
}

impl KubeAuthenticator {
    pub fn new(client: kube::Client) -> Self {
        Self { api: Api::all(client) }
    }

    async fn review(&self, token: &str) -> Result<TokenIdentity, Rejection> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![AUDIENCE.to_string()]),
            },
            ..Default::default()
        };
        let answer = self
            .api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Rejection::ReviewFailed(e.to_string()))?;
        identity_of(&answer.status.unwrap_or_default())
    }
}

impl Authenticator for KubeAuthenticator {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<TokenIdentity, Rejection>> {
        Box::pin(self.review(token))
    }
}

/// What the API server's answer proves, or why it proves nothing usable.
pub fn identity_of(status: &TokenReviewStatus) -> Result<TokenIdentity, Rejection> {
    if status.authenticated != Some(true) {
        let why =
            status.error.clone().filter(|e| !e.is_empty()).unwrap_or_else(|| "not authenticated".into());
        return Err(Rejection::InvalidToken(why));
    }
    let audiences = status.audiences.clone().unwrap_or_default();
    if !audiences.iter().any(|a| a == AUDIENCE) {
        return Err(Rejection::WrongAudience(audiences));
    }
    let user = status.user.clone().unwrap_or_default();
    let username = user.username.unwrap_or_default();
    let (namespace, service_account) = username
        .strip_prefix(SERVICE_ACCOUNT_PREFIX)
        .and_then(|rest| rest.split_once(':'))
        .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty() && !sa.contains(':'))
        .ok_or_else(|| Rejection::NotServiceAccount(username.clone()))?;
    let extra = user.extra.unwrap_or_default();
    let single = |key: &str| match extra.get(key).map(Vec::as_slice) {
        Some([value]) if !value.is_empty() => Some(value.clone()),
        _ => None,
    };
    let (Some(pod_name), Some(pod_uid)) = (single(POD_NAME), single(POD_UID)) else {
        return Err(Rejection::NotBoundToPod(username.clone()));
    };
    Ok(TokenIdentity {
        namespace: namespace.to_string(),
        service_account: service_account.to_string(),
        pod_name,
        pod_uid,
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::authentication::v1::UserInfo;

    use super::*;

    fn status() -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(true),
            audiences: Some(vec!["mesh-ca".into()]),
            user: Some(UserInfo {
                username: Some("system:serviceaccount:default:bookinfo-productpage".into()),
                extra: Some(
                    [
                        (POD_NAME.to_string(), vec!["productpage-v1-x".to_string()]),
                        (POD_UID.to_string(), vec!["uid-1".to_string()]),
                    ]
                    .into(),
                ),
                ..Default::default()
            }),
            error: None,
        }
    }

    #[test]
    fn a_pod_bound_service_account_token_proves_its_pod() {
        assert_eq!(
            identity_of(&status()),
            Ok(TokenIdentity {
                namespace: "default".into(),
                service_account: "bookinfo-productpage".into(),
                pod_name: "productpage-v1-x".into(),
                pod_uid: "uid-1".into(),
            })
        );
    }

    #[test]
    fn refusals_say_why() {
        let not_valid = TokenReviewStatus {
            authenticated: Some(false),
            error: Some("token has expired".into()),
            ..status()
        };
        assert_eq!(identity_of(&not_valid), Err(Rejection::InvalidToken("token has expired".into())));

        let other_audience =
            TokenReviewStatus { audiences: Some(vec!["https://kubernetes.default.svc".into()]), ..status() };
        assert_eq!(identity_of(&other_audience).unwrap_err().reason(), "wrong_audience");
        let no_audience = TokenReviewStatus { audiences: None, ..status() };
        assert_eq!(identity_of(&no_audience).unwrap_err().reason(), "wrong_audience");

        let mut person = status();
        person.user.as_mut().unwrap().username = Some("alice".into());
        assert_eq!(identity_of(&person), Err(Rejection::NotServiceAccount("alice".into())));

        let mut unbound = status();
        unbound.user.as_mut().unwrap().extra = None;
        let err = identity_of(&unbound).unwrap_err();
        assert_eq!(err.reason(), "not_bound_to_pod");
        assert!(err.to_string().contains("system:serviceaccount:default:bookinfo-productpage"), "{err}");

        let mut no_uid = status();
        no_uid.user.as_mut().unwrap().extra.as_mut().unwrap().remove(POD_UID);
        assert_eq!(identity_of(&no_uid).unwrap_err().reason(), "not_bound_to_pod");
    }
}

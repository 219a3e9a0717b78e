//! The Kubernetes [`Reviewer`] of the /debug views: a TokenReview (no
//! audience given, so the API server's own: the tokens `kubectl` and
//! `kubectl create token` give users, not the sidecars' `mesh-ca` ones),
//! then a SubjectAccessReview of `get` on the view's path as a
//! non-resource URL.
//!
//! This is the only file of `monitoring` that talks to the API server. The
//! controller needs RBAC `create` on `tokenreviews` (group
//! `authentication.k8s.io`) and `subjectaccessreviews` (group
//! `authorization.k8s.io`).

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec, SubjectAccessReviewStatus,
};
use kube::api::{Api, PostParams};

use super::access::{ReviewError, Reviewer, User};

/// Reviews callers with the API server.
#[derive(Clone)]
pub struct KubeReviewer {
    tokens: Api<TokenReview>,
    access: Api<SubjectAccessReview>,
}

impl KubeReviewer {
    pub fn new(client: kube::Client) -> Self {
        Self { tokens: Api::all(client.clone()), access: Api::all(client) }
    }

    async fn review_token(&self, token: &str) -> Result<User, ReviewError> {
        let review = TokenReview {
            spec: TokenReviewSpec { token: Some(token.to_string()), audiences: None },
            ..Default::default()
        };
        let answer = self
            .tokens
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| ReviewError::Unavailable(format!("TokenReview: {e}")))?;
        user_of(&answer.status.unwrap_or_default())
    }

    async fn review_access(&self, user: &User, path: &str) -> Result<bool, ReviewError> {
        let answer = self
            .access
            .create(&PostParams::default(), &access_review(user, path))
            .await
            .map_err(|e| ReviewError::Unavailable(format!("SubjectAccessReview: {e}")))?;
        Ok(allowed(&answer.status.unwrap_or_default()))
    }
}

impl Reviewer for KubeReviewer {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<User, ReviewError>> {
        Box::pin(self.review_token(token))
    }

    fn may_get<'a>(&'a self, user: &'a User, path: &'a str) -> BoxFuture<'a, Result<bool, ReviewError>> {
        Box::pin(self.review_access(user, path))
    }
}

/// The user a TokenReview's answer names, or why it names none.
fn user_of(status: &TokenReviewStatus) -> Result<User, ReviewError> {
    if status.authenticated != Some(true) {
        let why =
            status.error.clone().filter(|e| !e.is_empty()).unwrap_or_else(|| "not authenticated".into());
        return Err(ReviewError::NotAuthenticated(why));
    }
    let user = status.user.clone().unwrap_or_default();
    let username = user.username.unwrap_or_default();
    if username.is_empty() {
        return Err(ReviewError::NotAuthenticated("the token names no user".into()));
    }
    Ok(User {
        username,
        uid: user.uid.unwrap_or_default(),
        groups: user.groups.unwrap_or_default(),
        extra: user.extra.unwrap_or_default(),
    })
}

/// May `user` get the non-resource URL `path`: asked as the user, with
/// everything the TokenReview said about them (groups carry most roles).
fn access_review(user: &User, path: &str) -> SubjectAccessReview {
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.username.clone()),
            uid: Some(user.uid.clone()).filter(|uid| !uid.is_empty()),
            groups: Some(user.groups.clone()),
            extra: Some(user.extra.clone()),
            non_resource_attributes: Some(NonResourceAttributes {
                path: Some(path.to_string()),
                verb: Some("get".into()),
            }),
            resource_attributes: None,
        },
        ..Default::default()
    }
}

/// Allowed only when the authorizer said so; a denial, no opinion or an
/// evaluation error all refuse.
fn allowed(status: &SubjectAccessReviewStatus) -> bool {
    status.allowed && status.denied != Some(true)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::authentication::v1::UserInfo;

    use super::*;

    #[test]
    fn a_token_review_names_the_user_with_groups_and_extra() {
        let status = TokenReviewStatus {
            authenticated: Some(true),
            user: Some(UserInfo {
                username: Some("system:serviceaccount:tools:dashboard".into()),
                uid: Some("u-1".into()),
                groups: Some(vec!["system:serviceaccounts".into(), "system:authenticated".into()]),
                extra: Some([("k".to_string(), vec!["v".to_string()])].into()),
            }),
            ..Default::default()
        };
        let user = user_of(&status).expect("authenticated");
        assert_eq!(user.username, "system:serviceaccount:tools:dashboard");

        let review = access_review(&user, "/debug/config_dump");
        let spec = &review.spec;
        assert_eq!(spec.user.as_deref(), Some("system:serviceaccount:tools:dashboard"));
        assert_eq!(spec.uid.as_deref(), Some("u-1"));
        assert_eq!(spec.groups.as_ref().map(Vec::len), Some(2));
        assert_eq!(spec.extra.as_ref().and_then(|e| e.get("k")), Some(&vec!["v".to_string()]));
        let url = spec.non_resource_attributes.as_ref().expect("a non-resource URL");
        assert_eq!((url.path.as_deref(), url.verb.as_deref()), (Some("/debug/config_dump"), Some("get")));
        assert!(spec.resource_attributes.is_none());
    }

    #[test]
    fn an_unauthenticated_token_says_why() {
        let expired = TokenReviewStatus {
            authenticated: Some(false),
            error: Some("token has expired".into()),
            ..Default::default()
        };
        assert_eq!(user_of(&expired), Err(ReviewError::NotAuthenticated("token has expired".into())));
        assert_eq!(
            user_of(&TokenReviewStatus::default()),
            Err(ReviewError::NotAuthenticated("not authenticated".into()))
        );
    }

    #[test]
    fn only_an_explicit_allow_lets_in() {
        let status = |allowed, denied| SubjectAccessReviewStatus { allowed, denied, ..Default::default() };
        assert!(allowed(&status(true, None)));
        assert!(allowed(&status(true, Some(false))));
        assert!(!allowed(&status(false, None)));
        assert!(!allowed(&status(false, Some(true))));
        assert!(!allowed(&status(true, Some(true))));
    }
}

//! Who the commands are to the controller's /debug views: a bearer token
//! the controller has the API server review (docs/security.md). In order:
//! `--token`/`MESH_TOKEN`; the kubeconfig's current user's token (inline,
//! its tokenFile, or printed by its exec plugin, run as kubectl runs it);
//! for a user with none (the local cluster's admin has a client
//! certificate, which a plain HTTP port cannot check), a short-lived token
//! of the chart's ServiceAccount `mesh-debug`, bound to the ClusterRole of
//! the same name, which only users allowed to create its tokens get.

use std::future::Future;

use anyhow::Context;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use kube::config::{AuthInfo, ExecConfig, Kubeconfig, KubeconfigError};
use secrecy::ExposeSecret;

/// The chart's ServiceAccount bound to ClusterRole mesh-debug.
pub const DEBUG_SERVICE_ACCOUNT: &str = "mesh-debug";
/// How long a token made for [`DEBUG_SERVICE_ACCOUNT`] lives.
const DEBUG_TOKEN_SECONDS: i64 = 600;

/// What to do when there is no token to send.
pub const TOKEN_HINT: &str = "pass --token (or set MESH_TOKEN) with a Kubernetes token of a user allowed to get /debug/*: \
bind ClusterRole mesh-debug to a ServiceAccount (`kubectl create clusterrolebinding <name> --clusterrole=mesh-debug \
--serviceaccount=<namespace>:<name>`) and use `--token \"$(kubectl create token <name> -n <namespace>)\"`";

/// The bearer token: `given`, else the kubeconfig user's, else what
/// `service_account` makes (for a kubeconfig user without a token).
pub async fn resolve<F, Fut>(
    given: Option<String>,
    kubeconfig: Result<Kubeconfig, KubeconfigError>,
    service_account: F,
) -> anyhow::Result<String>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = anyhow::Result<String>>,
{
    if let Some(token) = given {
        let token = token.trim();
        anyhow::ensure!(!token.is_empty(), "--token (or MESH_TOKEN) is empty: {TOKEN_HINT}");
        return bearer(token);
    }
    let config = kubeconfig
        .map_err(|e| anyhow::anyhow!("no --token, and no kubeconfig to take one from ({e}): {TOKEN_HINT}"))?;
    match kubeconfig_token(&config)? {
        UserToken::Token(token) => bearer(&token),
        UserToken::None { user, how } => match service_account().await {
            Ok(token) => bearer(&token),
            Err(e) => anyhow::bail!(
                "the kubeconfig's current user {user:?} has {how}, and no token of ServiceAccount \
                 {DEBUG_SERVICE_ACCOUNT} could be made for it ({e:#}): {TOKEN_HINT}"
            ),
        },
    }
}

/// A token of the ServiceAccount [`DEBUG_SERVICE_ACCOUNT`] in `namespace`
/// (the API server's own audiences, which the controller reviews for).
pub async fn service_account_token(client: &kube::Client, namespace: &str) -> anyhow::Result<String> {
    let request = TokenRequest {
        spec: TokenRequestSpec { expiration_seconds: Some(DEBUG_TOKEN_SECONDS), ..Default::default() },
        ..Default::default()
    };
    let made = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(DEBUG_SERVICE_ACCOUNT, &PostParams::default(), &request)
        .await
        .with_context(|| format!("creating a token of {namespace}/{DEBUG_SERVICE_ACCOUNT}"))?;
    made.status.map(|s| s.token).filter(|t| !t.is_empty()).context("the API server returned no token")
}

/// `token` if it can be a bearer token: one word of visible ASCII (so it
/// cannot end the header it is sent in).
pub fn bearer(token: &str) -> anyhow::Result<String> {
    anyhow::ensure!(
        !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic()),
        "the token is not a bearer token (one word of visible ASCII characters): {TOKEN_HINT}"
    );
    Ok(token.to_string())
}

/// What the kubeconfig's current user holds.
#[derive(Debug, PartialEq, Eq)]
pub enum UserToken {
    Token(String),
    /// No token: `how` the user authenticates instead.
    None {
        user: String,
        how: &'static str,
    },
}

/// The token of the kubeconfig's current user: inline, from its tokenFile,
/// or printed by its exec plugin (as kubectl runs it, non-interactively).
pub fn kubeconfig_token(config: &Kubeconfig) -> anyhow::Result<UserToken> {
    let context_name = config.current_context.as_deref().unwrap_or_default();
    let context = config
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.as_ref())
        .with_context(|| {
            format!("the kubeconfig's current context {context_name:?} is not in it: {TOKEN_HINT}")
        })?;
    let user_name = context.user.as_deref().unwrap_or_default();
    let user: Option<&AuthInfo> =
        config.auth_infos.iter().find(|u| u.name == user_name).and_then(|u| u.auth_info.as_ref());
    let Some(user) = user else {
        anyhow::bail!("the kubeconfig's current user {user_name:?} is not in it: {TOKEN_HINT}");
    };
    if let Some(token) = &user.token {
        return Ok(UserToken::Token(token.expose_secret().trim().to_string()));
    }
    if let Some(file) = &user.token_file {
        let token = std::fs::read_to_string(file)
            .with_context(|| format!("reading the kubeconfig user's tokenFile {file}"))?;
        return Ok(UserToken::Token(token.trim().to_string()));
    }
    if let Some(exec) = &user.exec {
        return exec_token(exec).map(UserToken::Token);
    }
    let how = if user.client_certificate.is_some() || user.client_certificate_data.is_some() {
        "a client certificate, which the controller's plain HTTP port cannot check"
    } else {
        "no token"
    };
    Ok(UserToken::None { user: user_name.to_string(), how })
}

/// Runs a kubeconfig exec plugin and reads the token of the ExecCredential it prints.
fn exec_token(exec: &ExecConfig) -> anyhow::Result<String> {
    let program = exec.command.as_deref().context("the kubeconfig user's exec plugin names no command")?;
    let api_version = exec.api_version.as_deref().unwrap_or("client.authentication.k8s.io/v1");
    let info = serde_json::json!({
        "apiVersion": api_version,
        "kind": "ExecCredential",
        "spec": {"interactive": false},
    });
    let mut command = std::process::Command::new(program);
    command.args(exec.args.iter().flatten()).env("KUBERNETES_EXEC_INFO", info.to_string());
    for pair in exec.env.iter().flatten() {
        if let (Some(name), Some(value)) = (pair.get("name"), pair.get("value")) {
            command.env(name, value);
        }
    }
    let out = command
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running the kubeconfig user's exec plugin {program}"))?;
    anyhow::ensure!(
        out.status.success(),
        "the kubeconfig user's exec plugin {program} failed ({}): {TOKEN_HINT}",
        out.status
    );
    let credential: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("the exec plugin {program} did not print an ExecCredential"))?;
    credential["status"]["token"]
        .as_str()
        .filter(|t| !t.trim().is_empty())
        .map(|t| t.trim().to_string())
        .with_context(|| {
            format!("the exec plugin {program} gave no token (a client certificate?): {TOKEN_HINT}")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kubeconfig(user: &str) -> Kubeconfig {
        let yaml = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: here\n\
             contexts: [{{name: here, context: {{cluster: c, user: me}}}}]\n\
             clusters: [{{name: c, cluster: {{server: 'https://127.0.0.1:6443'}}}}]\n\
             users: [{{name: me, user: {user}}}]\n"
        );
        Kubeconfig::from_yaml(&yaml).expect("a kubeconfig")
    }

    fn token(user: &str) -> String {
        match kubeconfig_token(&kubeconfig(user)).expect("a token") {
            UserToken::Token(token) => token,
            other => panic!("no token: {other:?}"),
        }
    }

    async fn unused() -> anyhow::Result<String> {
        anyhow::bail!("not asked")
    }

    #[test]
    fn the_kubeconfig_users_token_is_sent_from_wherever_it_keeps_it() {
        assert_eq!(token("{token: abc.def}"), "abc.def");

        let file = std::env::temp_dir().join(format!("mesh-token-{}", std::process::id()));
        std::fs::write(&file, "from-file\n").expect("a token file");
        assert_eq!(token(&format!("{{tokenFile: {}}}", file.display())), "from-file");
        std::fs::remove_file(&file).expect("removed");

        // An exec plugin, run as kubectl runs it: it prints an ExecCredential.
        let plugin = r#"{exec: {apiVersion: client.authentication.k8s.io/v1, command: sh, args: [-c, 'test -n "$KUBERNETES_EXEC_INFO" && echo "{\"status\": {\"token\": \"$WHO\"}}"'], env: [{name: WHO, value: from-exec}]}}"#;
        assert_eq!(token(plugin), "from-exec");
    }

    #[tokio::test]
    async fn a_user_without_a_token_gets_the_service_accounts_or_an_error_that_says_what_to_pass() {
        let cert = || Ok(kubeconfig("{client-certificate: /pki/admin.crt, client-key: /pki/admin.key}"));
        let made = resolve(None, cert(), || async { Ok("sa-token".to_string()) }).await;
        assert_eq!(made.expect("the ServiceAccount's"), "sa-token");
        let err = resolve(None, cert(), || async { anyhow::bail!("forbidden") }).await.expect_err("none");
        let err = format!("{err:#}");
        assert!(err.contains("\"me\" has a client certificate") && err.contains("forbidden"), "{err}");
        assert!(err.contains("--token") && err.contains("kubectl create token"), "{err}");

        // Given or found, the ServiceAccount is not asked.
        assert_eq!(resolve(Some(" t0k ".into()), cert(), unused).await.expect("given"), "t0k");
        let with_token = Ok(kubeconfig("{token: abc}"));
        assert_eq!(resolve(None, with_token, unused).await.expect("the user's"), "abc");

        let failing =
            Ok(kubeconfig("{exec: {apiVersion: client.authentication.k8s.io/v1, command: 'false'}}"));
        let err = resolve(None, failing, unused).await.expect_err("the plugin failed").to_string();
        assert!(err.contains("exec plugin false failed"), "{err}");

        let err = resolve(Some("  ".into()), cert(), unused).await.expect_err("empty").to_string();
        assert!(err.contains("--token (or MESH_TOKEN) is empty"), "{err}");
        assert!(bearer("a\r\nX-Other: 1").is_err(), "a token cannot add a header");
        assert!(bearer("eyJhbGciOi.abc-_~+/=").is_ok());
    }
}

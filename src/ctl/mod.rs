//! How the operator's commands (`mesh proxy-status`, `proxy-config`,
//! `version`) reach the controller and the proxies. As istioctl does, they
//! find them through the current kubeconfig: each controller replica (the
//! pods labelled `app.kubernetes.io/name=mesh` in the mesh's namespace) and
//! a sidecar's Envoy admin port (loopback only, in its pod) are reached by
//! port-forward through the API server, the way `kubectl port-forward`
//! reaches them. `--controller` addresses skip the discovery: a replica's
//! monitoring port reached directly.
//!
//! - [`token`]: who the commands are to the controller's /debug views;
//! - [`envoy`]: the `proxy-config` tables, from Envoy's own config dump;
//! - [`commands`]: the commands themselves.

pub mod commands;
pub mod envoy;
pub mod token;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::config::Kubeconfig;
use tokio::io::{AsyncRead, AsyncWrite};

/// The controller's monitoring port: /metrics, /version, /debug/*.
pub const MONITORING_PORT: u16 = 15014;
/// A sidecar's Envoy admin port (loopback only, in its pod).
pub const ENVOY_ADMIN_PORT: u16 = crate::inject::bootstrap::ADMIN_PORT;
/// The labels that select the controller's pods (the chart's `mesh.selector`).
pub const CONTROLLER_SELECTOR: &str = "app.kubernetes.io/name=mesh";
/// How long one answer may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the commands find the cluster and the controller, and who they are.
#[derive(clap::Args, Clone, Debug)]
pub struct Access {
    /// The controller's monitoring address (`http://host:15014`); with
    /// several replicas, each of them (repeat the flag, or separate with
    /// commas). Without it, every controller pod in --mesh-namespace is
    /// asked, through the kubeconfig's API server (port-forward). Every
    /// proxy is connected to one replica, which alone knows its state.
    #[arg(long, env = "MESH_CONTROLLER", value_delimiter = ',')]
    pub controller: Vec<String>,
    /// A Kubernetes bearer token of a user allowed to get /debug/*
    /// (ClusterRole mesh-debug, or cluster-admin). Without it, the current
    /// kubeconfig user's token (its token, tokenFile or exec plugin); a
    /// user with none (a client certificate) gets a 10-minute token of the
    /// chart's ServiceAccount mesh-debug, if allowed to create one.
    #[arg(long, env = "MESH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The kubeconfig (default: KUBECONFIG, else ~/.kube/config).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The namespace the mesh is installed in (the chart's release namespace).
    #[arg(long, short = 'i', env = "MESH_SYSTEM_NAMESPACE", default_value = "mesh-system")]
    pub mesh_namespace: String,
    /// The client, made once: a command (or the dashboard, per click) asks
    /// the API server several times.
    #[arg(skip)]
    client: ClientCell,
}

/// A kube client made on first use.
#[derive(Clone, Default)]
struct ClientCell(std::sync::Arc<tokio::sync::OnceCell<kube::Client>>);

impl std::fmt::Debug for ClientCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.initialized() { "ClientCell(made)" } else { "ClientCell(not yet)" })
    }
}

impl Access {
    /// The kubeconfig: `--kubeconfig`, else the default one.
    fn read_kubeconfig(&self) -> Result<Kubeconfig, kube::config::KubeconfigError> {
        match &self.kubeconfig {
            Some(path) => Kubeconfig::read_from(path),
            None => Kubeconfig::read(),
        }
    }

    /// A client of the kubeconfig's API server (in a pod with no
    /// kubeconfig, the pod's own).
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let client = self.client.0.get_or_try_init(|| async {
            let config = match self.read_kubeconfig() {
                Ok(kubeconfig) => {
                    kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?
                }
                Err(e) if self.kubeconfig.is_some() => return Err(e).context("reading --kubeconfig"),
                Err(_) => kube::Config::infer().await.context("no kubeconfig, and not in a pod")?,
            };
            anyhow::Ok(kube::Client::try_from(config)?)
        });
        Ok(client.await?.clone())
    }

    /// The namespace of the kubeconfig's current context, else `default`.
    pub fn default_namespace(&self) -> String {
        self.read_kubeconfig()
            .ok()
            .and_then(|config| {
                let current = config.current_context.clone()?;
                config.contexts.into_iter().find(|c| c.name == current)?.context?.namespace
            })
            .unwrap_or_else(|| "default".into())
    }

    /// Every controller replica to ask: the `--controller` addresses, else
    /// the running controller pods.
    pub async fn controllers(&self) -> anyhow::Result<Vec<Target>> {
        if !self.controller.is_empty() {
            return Ok(self.controller.iter().cloned().map(Target::Address).collect());
        }
        let client = self.client().await?;
        let ns = &self.mesh_namespace;
        let pods = Api::<Pod>::namespaced(client.clone(), ns)
            .list(&ListParams::default().labels(CONTROLLER_SELECTOR))
            .await
            .with_context(|| {
                format!("listing the controller's pods ({CONTROLLER_SELECTOR}) in namespace {ns}")
            })?;
        let running: Vec<Target> = pods
            .items
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .filter_map(|p| p.metadata.name.clone())
            .map(|name| Target::Pod {
                client: client.clone(),
                namespace: ns.clone(),
                name,
                port: MONITORING_PORT,
            })
            .collect();
        anyhow::ensure!(
            !running.is_empty(),
            "no controller pod ({CONTROLLER_SELECTOR}) runs in namespace {ns}: is the mesh installed \
             there? (--mesh-namespace; or give --controller http://<address>:{MONITORING_PORT})"
        );
        Ok(running)
    }

    /// The bearer token to show the controller's /debug views.
    pub async fn token(&self) -> anyhow::Result<String> {
        let kubeconfig = self.read_kubeconfig();
        token::resolve(self.token.clone(), kubeconfig, || async {
            token::service_account_token(&self.client().await?, &self.mesh_namespace).await
        })
        .await
    }
}

/// Where one request goes.
#[derive(Clone)]
pub enum Target {
    /// An address the user gave: `http://host:port`.
    Address(String),
    /// A pod's port, by port-forward through the API server.
    Pod { client: kube::Client, namespace: String, name: String, port: u16 },
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Address(base) => write!(f, "{base}"),
            Target::Pod { namespace, name, port, .. } => write!(f, "pod {namespace}/{name} port {port}"),
        }
    }
}

impl Target {
    /// The body of a 200 answer to `GET path`, with `token` as the bearer.
    pub async fn get(&self, path: &str, token: Option<&str>) -> anyhow::Result<String> {
        let answer = match self {
            Target::Address(base) => {
                let authority = base
                    .strip_prefix("http://")
                    .with_context(|| {
                        format!(
                            "--controller {base:?} must be an http:// address, like http://127.0.0.1:15014"
                        )
                    })?
                    .trim_end_matches('/');
                let authority = authority.split('/').next().unwrap_or(authority);
                let address =
                    if authority.contains(':') { authority.to_string() } else { format!("{authority}:80") };
                let connect = tokio::net::TcpStream::connect(&address);
                let tcp = tokio::time::timeout(Duration::from_secs(5), connect)
                    .await
                    .map_err(|_| anyhow::anyhow!("timed out"))
                    .and_then(|connected| Ok(connected?))
                    .with_context(|| format!("cannot reach {base} (is the controller running there?)"))?;
                http_get(tcp, authority, path, token).await
            }
            Target::Pod { client, namespace, name, port } => {
                let mut forward = Api::<Pod>::namespaced(client.clone(), namespace)
                    .portforward(name, &[*port])
                    .await
                    .with_context(|| format!("port-forward to {self}"))?;
                let stream = forward.take_stream(*port).with_context(|| format!("port-forward to {self}"))?;
                let answer = http_get(stream, &format!("localhost:{port}"), path, token).await;
                forward.abort();
                answer
            }
        };
        answer.with_context(|| format!("GET {path} of {self}"))
    }
}

/// One HTTP/1.1 GET over `io`; the body of a 200 answer, else an error
/// with the status and the body.
async fn http_get<S>(io: S, host: &str, path: &str, token: Option<&str>) -> anyhow::Result<String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let exchange = async {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
        let driver = tokio::spawn(connection);
        let mut request = http::Request::get(path)
            .header(http::header::HOST, host)
            .header(http::header::ACCEPT, "application/json");
        if let Some(token) = token {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let response = sender.send_request(request.body(Empty::<Bytes>::new())?).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        driver.abort();
        anyhow::Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    let (status, body) = tokio::time::timeout(ANSWER_TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow::anyhow!("no answer in 30 s"))??;
    anyhow::ensure!(status == http::StatusCode::OK, "answered {status}: {}", body.trim());
    Ok(body)
}

/// A pod as the commands name it: `name`, `name.namespace`,
/// `namespace/name`, or a Deployment's (`deploy/name[.namespace]`, its
/// first running pod); `namespace` where the name gives none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodRef {
    Pod { namespace: String, name: String },
    Deployment { namespace: String, name: String },
}

impl PodRef {
    pub fn parse(text: &str, namespace: &str) -> anyhow::Result<Self> {
        let label = |s: &str| {
            !s.is_empty()
                && s.len() <= 253
                && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        };
        let with_namespace = |s: &str| match s.split_once('.') {
            Some((name, ns)) => (ns.to_string(), name.to_string()),
            None => (namespace.to_string(), s.to_string()),
        };
        let parsed = match text.split_once('/') {
            Some(("deploy" | "deployment" | "deployments", rest)) => {
                let (namespace, name) = with_namespace(rest);
                PodRef::Deployment { namespace, name }
            }
            Some(("pod" | "pods" | "po", rest)) => {
                let (namespace, name) = with_namespace(rest);
                PodRef::Pod { namespace, name }
            }
            Some((namespace, name)) => PodRef::Pod { namespace: namespace.into(), name: name.into() },
            None => {
                let (namespace, name) = with_namespace(text);
                PodRef::Pod { namespace, name }
            }
        };
        let (PodRef::Pod { namespace, name } | PodRef::Deployment { namespace, name }) = &parsed;
        anyhow::ensure!(
            label(namespace) && label(name),
            "{text:?} is not a pod: write name[.namespace], namespace/name or deploy/name[.namespace]"
        );
        Ok(parsed)
    }

    /// `namespace/name` of the pod: a Deployment's first running pod, by name.
    pub async fn resolve(&self, client: &kube::Client) -> anyhow::Result<(String, String)> {
        let (namespace, name) = match self {
            PodRef::Pod { namespace, name } => return Ok((namespace.clone(), name.clone())),
            PodRef::Deployment { namespace, name } => (namespace, name),
        };
        let deployment = Api::<Deployment>::namespaced(client.clone(), namespace)
            .get(name)
            .await
            .with_context(|| format!("deployment {namespace}/{name}"))?;
        let labels = deployment.spec.and_then(|s| s.selector.match_labels).unwrap_or_default();
        let selector: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let pods = Api::<Pod>::namespaced(client.clone(), namespace)
            .list(&ListParams::default().labels(&selector.join(",")))
            .await
            .with_context(|| format!("the pods of deployment {namespace}/{name}"))?;
        let mut running: Vec<String> = pods
            .items
            .into_iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .filter_map(|p| p.metadata.name)
            .collect();
        running.sort();
        let first = running
            .into_iter()
            .next()
            .with_context(|| format!("deployment {namespace}/{name} has no running pod"))?;
        Ok((namespace.clone(), first))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_are_named_as_kubectl_and_istioctl_name_them() {
        let pod = |ns: &str, name: &str| PodRef::Pod { namespace: ns.into(), name: name.into() };
        assert_eq!(PodRef::parse("productpage-v1-x", "default").unwrap(), pod("default", "productpage-v1-x"));
        assert_eq!(PodRef::parse("p.shop", "default").unwrap(), pod("shop", "p"));
        assert_eq!(PodRef::parse("shop/p", "default").unwrap(), pod("shop", "p"));
        assert_eq!(PodRef::parse("pod/p", "ns").unwrap(), pod("ns", "p"));
        assert_eq!(
            PodRef::parse("deploy/reviews-v1.shop", "default").unwrap(),
            PodRef::Deployment { namespace: "shop".into(), name: "reviews-v1".into() }
        );
        for bad in ["", "/p", "Shop/p", "p?x=1", "deploy/", "a/b/c"] {
            let err = PodRef::parse(bad, "default").expect_err(bad).to_string();
            assert!(err.contains("is not a pod"), "{bad}: {err}");
        }
    }
}

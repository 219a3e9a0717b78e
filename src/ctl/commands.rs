//! The commands that read the controller's and the proxies' state.

use std::io::Write;

use anyhow::Context;
use serde_json::Value;

use super::envoy::{self, Kind};
use super::{Access, ENVOY_ADMIN_PORT, PodRef, Target};
use crate::xds::debug::{self, SyncStatus};

/// How `proxy-config` and `version` print.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Tables (istioctl's `short`).
    #[default]
    Short,
    /// JSON: for `proxy-config`, the resources as Envoy's config dump holds them.
    Json,
}

fn print(text: &str) -> anyhow::Result<()> {
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(())
}

/// The proxies connected to each controller replica, from their
/// /debug/syncz. A replica that does not answer is reported on stderr and
/// left out, so the others' proxies still show; none answering is an error.
pub async fn sync_statuses(access: &Access) -> anyhow::Result<Vec<SyncStatus>> {
    let controllers = access.controllers().await?;
    let token = access.token().await?;
    let (statuses, failures) = ask_syncz(&controllers, &token).await;
    if failures.len() == controllers.len() {
        return Err(failures.into_iter().next().unwrap_or_else(|| anyhow::anyhow!("no controller to ask")));
    }
    for failure in failures {
        eprintln!("mesh: warning: {failure:#} (its proxies are not shown)");
    }
    Ok(statuses)
}

/// Every controller's /debug/syncz, merged; what failed, by controller.
pub async fn ask_syncz(controllers: &[Target], token: &str) -> (Vec<SyncStatus>, Vec<anyhow::Error>) {
    let mut statuses = Vec::new();
    let mut failures = Vec::new();
    for controller in controllers {
        let answer = controller.get("/debug/syncz", Some(token)).await.and_then(|body| {
            serde_json::from_str::<Vec<SyncStatus>>(&body)
                .with_context(|| format!("/debug/syncz of {controller} is not a list of proxies"))
        });
        match answer {
            Ok(mut more) => statuses.append(&mut more),
            Err(e) => failures.push(e),
        }
    }
    (statuses, failures)
}

/// `mesh proxy-status`: the table of every replica's /debug/syncz.
pub async fn proxy_status(access: &Access) -> anyhow::Result<()> {
    let statuses = sync_statuses(access).await?;
    print(&debug::status_table(&statuses))
}

/// `namespace/name` of the pod `pod` names.
async fn pod_key(access: &Access, pod: &str, namespace: Option<&str>) -> anyhow::Result<(String, String)> {
    let namespace = namespace.map(str::to_string).unwrap_or_else(|| access.default_namespace());
    match PodRef::parse(pod, &namespace)? {
        PodRef::Pod { namespace, name } => Ok((namespace, name)),
        deployment => deployment.resolve(&access.client().await?).await,
    }
}

/// `mesh proxy-config secret`: the workload certificate of the pod's
/// proxy, as the controller issued it, from /debug/syncz.
pub async fn proxy_secret(access: &Access, pod: &str, namespace: Option<&str>) -> anyhow::Result<()> {
    let (namespace, name) = pod_key(access, pod, namespace).await?;
    let key = format!("{namespace}/{name}");
    let statuses = sync_statuses(access).await?;
    let table = debug::secret_table(&statuses, &key).with_context(|| {
        format!("no proxy of pod {key} is connected to the controller (see `mesh proxy-status`)")
    })?;
    print(&table)
}

/// `mesh proxy-config authz`: the RBAC policies of the pod's inbound
/// listener, from the /debug/config_dump of the replica it is connected to.
pub async fn proxy_authz(access: &Access, pod: &str, namespace: Option<&str>) -> anyhow::Result<()> {
    let (namespace, name) = pod_key(access, pod, namespace).await?;
    let key = format!("{namespace}/{name}");
    let token = access.token().await?;
    let mut last = None;
    for controller in access.controllers().await? {
        let dump =
            controller.get(&format!("/debug/config_dump?proxy={key}"), Some(&token)).await.and_then(|body| {
                serde_json::from_str::<Value>(&body)
                    .with_context(|| format!("/debug/config_dump of {controller} is not JSON"))
            });
        match dump {
            Ok(dump) => {
                let listener = debug::inbound_listener(&dump).with_context(|| {
                    format!("the proxy of pod {key} holds no inbound listener yet (see `mesh proxy-status`)")
                })?;
                return print(&debug::authz_table(&listener));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no controller to ask")))
}

/// `mesh proxy-config cluster|listener|route|endpoint|all`: what the pod's
/// Envoy holds, from its own config dump (`kinds`: one, or all four).
pub async fn proxy_config(
    access: &Access,
    kinds: &[Kind],
    pod: &str,
    namespace: Option<&str>,
    output: Output,
) -> anyhow::Result<()> {
    let (namespace, name) = pod_key(access, pod, namespace).await?;
    let target = Target::Pod { client: access.client().await?, namespace, name, port: ENVOY_ADMIN_PORT };
    let body = target
        .get(envoy::CONFIG_DUMP_PATH, None)
        .await
        .context("reading the pod's Envoy config dump (is the pod injected, and its istio-proxy running?)")?;
    let dump: Value = serde_json::from_str(&body).context("Envoy's config dump is not JSON")?;
    let text = match output {
        Output::Short => {
            let tables: Vec<String> = kinds.iter().map(|k| k.table(&envoy::resources(&dump, *k))).collect();
            tables.join("\n")
        }
        Output::Json if kinds.len() == 1 => {
            serde_json::to_string_pretty(&envoy::resources(&dump, kinds[0]))? + "\n"
        }
        Output::Json => {
            let all: serde_json::Map<String, Value> = kinds
                .iter()
                .map(|k| (format!("{k:?}").to_lowercase(), Value::Array(envoy::resources(&dump, *k))))
                .collect();
            serde_json::to_string_pretty(&all)? + "\n"
        }
    };
    print(&text)
}

/// The version this binary is, as the controller's /version says it too.
pub fn client_version() -> Value {
    serde_json::json!({"version": crate::VERSION})
}

/// `mesh version`: this binary's version and, with `remote`, each
/// controller replica's (from its open /version).
pub async fn version(access: &Access, remote: bool, output: Output) -> anyhow::Result<()> {
    let mut replicas = Vec::new();
    if remote {
        for controller in access.controllers().await? {
            let answer = controller.get("/version", None).await.and_then(|body| {
                serde_json::from_str::<Value>(&body)
                    .with_context(|| format!("/version of {controller} is not JSON"))
            });
            match answer {
                Ok(v) => replicas.push((controller.to_string(), v)),
                Err(e) => eprintln!("mesh: warning: {e:#}"),
            }
        }
    }
    let text = match output {
        Output::Json => {
            let control: Vec<Value> = replicas
                .iter()
                .map(|(at, v)| serde_json::json!({"controller": at, "version": v["version"]}))
                .collect();
            let mut all = serde_json::json!({"client": client_version()});
            if remote {
                all["controlPlane"] = Value::Array(control);
            }
            serde_json::to_string_pretty(&all)? + "\n"
        }
        Output::Short => {
            let mut text = format!("client version: {}\n", crate::VERSION);
            if remote {
                let control: Vec<String> = replicas
                    .iter()
                    .map(|(at, v)| format!("{} ({at})", v["version"].as_str().unwrap_or("?")))
                    .collect();
                let control =
                    if control.is_empty() { "none answered".to_string() } else { control.join(", ") };
                text.push_str(&format!("control plane version: {control}\n"));
            }
            text
        }
    };
    print(&text)?;
    anyhow::ensure!(!remote || !replicas.is_empty(), "no controller replica answered");
    Ok(())
}

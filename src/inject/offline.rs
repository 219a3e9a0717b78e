//! `mesh kube-inject`: injection without the webhook, over the pod
//! templates of YAML files. It runs the webhook's own path: the pure
//! `inject` gives a JSON patch, applied to the document as read, so fields
//! this program does not know survive and the result is what the API server
//! would store after the webhook.

use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;
use serde_json::Value;

use super::{InjectArgs, Injector, NamespaceInfo, Outcome};

/// What kube-inject did with one pod or pod template.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// `Kind namespace/name` of the document.
    pub object: String,
    /// False when the pod was left alone (opted out, already injected, ...).
    pub injected: bool,
}

/// Injects every pod template of a multi-document YAML text; other
/// documents pass through. Returns the new text and what happened to each
/// template; a template that cannot be injected is an error naming it.
pub fn inject_yaml(text: &str, injector: &Injector) -> anyhow::Result<(String, Vec<Report>)> {
    let mut out = Vec::new();
    let mut reports = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(doc).map_err(|e| anyhow::anyhow!("document {}: {e}", i + 1))?;
        if value.is_null() {
            continue;
        }
        let mut value = value;
        inject_object(&mut value, injector, &mut reports)?;
        out.push(serde_yaml_ng::to_string(&value)?);
    }
    Ok((out.join("---\n"), reports))
}

/// Where a kind keeps its pod template.
fn template_path(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" | "Job" | "ReplicationController" => {
            &["spec", "template"]
        }
        "CronJob" => &["spec", "jobTemplate", "spec", "template"],
        _ => return None,
    })
}

fn inject_object(object: &mut Value, injector: &Injector, reports: &mut Vec<Report>) -> anyhow::Result<()> {
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
    if kind == "List" {
        for item in object.get_mut("items").and_then(Value::as_array_mut).into_iter().flatten() {
            inject_object(item, injector, reports)?;
        }
        return Ok(());
    }
    let meta = |v: &Value, key: &str| {
        v.pointer(&format!("/metadata/{key}")).and_then(Value::as_str).map(String::from)
    };
    let namespace = meta(object, "namespace").unwrap_or_else(|| "default".into());
    let name = format!("{kind} {namespace}/{}", meta(object, "name").unwrap_or_default());
    let target = if kind == "Pod" {
        Some(&mut *object)
    } else if let Some(path) = template_path(&kind) {
        path.iter().try_fold(&mut *object, |v, key| v.get_mut(*key))
    } else {
        None
    };
    let Some(target) = target else { return Ok(()) };
    let ns = NamespaceInfo { name: &namespace, labels: None };
    let injected = inject_pod_value(target, &ns, injector).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    reports.push(Report { object: name, injected });
    Ok(())
}

/// Injects one pod (or pod template: the same metadata and spec) in place.
/// Ok(false) when the pod was left alone.
fn inject_pod_value(
    target: &mut Value,
    namespace: &NamespaceInfo<'_>,
    injector: &Injector,
) -> Result<bool, String> {
    let pod: Pod = serde_json::from_value(target.clone()).map_err(|e| format!("not a pod template: {e}"))?;
    match injector.inject(&pod, namespace).map_err(|e| e.to_string())? {
        Outcome::Skipped(_) => Ok(false),
        Outcome::Injected(patch) => {
            let patch = patch.to_json_patch().map_err(|e| e.to_string())?;
            json_patch::patch(target, &patch).map_err(|e| format!("applying the injection: {e}"))?;
            Ok(true)
        }
    }
}

/// The arguments of `mesh kube-inject`.
#[derive(clap::Args, Debug, Clone)]
pub struct KubeInjectArgs {
    /// The file to read ("-" for standard input).
    #[arg(short = 'f', long = "filename")]
    pub filename: String,

    /// Where to write the result (default: standard output).
    #[arg(short = 'o', long = "output")]
    pub output: Option<std::path::PathBuf>,

    /// The mesh's namespace, never injected.
    #[arg(long, env = "POD_NAMESPACE", default_value = "mesh-system")]
    pub mesh_namespace: String,

    #[command(flatten)]
    pub inject: InjectArgs,
}

/// Runs `mesh kube-inject`.
pub fn run(args: KubeInjectArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::Read;
    let text = if args.filename == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).context("reading standard input")?;
        s
    } else {
        std::fs::read_to_string(&args.filename).with_context(|| format!("reading {}", args.filename))?
    };
    let (out, reports) = inject_yaml(&text, &Injector::new(args.inject, args.mesh_namespace))?;
    if reports.is_empty() {
        eprintln!("mesh kube-inject: no pod or pod template found in {}", args.filename);
    }
    for r in reports.iter().filter(|r| !r.injected) {
        eprintln!("mesh kube-inject: {} left alone (opted out or already injected)", r.object);
    }
    match &args.output {
        Some(path) => std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))?,
        None => print!("{out}"),
    }
    Ok(())
}

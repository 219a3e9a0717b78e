//! `mesh analyze`'s command line, in the spirit of `istioctl analyze`:
//! files are analyzed as if applied on top of the live cluster (or alone
//! with `--use-kube=false`), findings print in Istio's format, and the exit
//! code says whether any reached `--failure-threshold`.

use std::io::Write;
use std::path::PathBuf;

use super::{Finding, Level, analyze, load};
use crate::index::Index;

/// The exit code when a finding reaches the failure threshold (istioctl's).
pub const FOUND_ISSUES: u8 = 79;

#[derive(clap::Args, Debug)]
pub struct AnalyzeArgs {
    /// YAML files or directories to analyze, as if applied to the cluster.
    pub files: Vec<PathBuf>,
    /// Read the live cluster too (through the kubeconfig); false: the files alone.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub use_kube: bool,
    /// The kubeconfig (default: KUBECONFIG, else ~/.kube/config).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Only the findings about objects of this namespace (and the namespace itself).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Where the mesh runs (never reported as not injected).
    #[arg(long, default_value = "mesh-system")]
    pub mesh_namespace: String,
    /// The lowest level that makes the exit code 79: Info, Warning or Error.
    #[arg(long, default_value = "Error", value_parser = Level::parse)]
    pub failure_threshold: Level,
    /// The lowest level printed.
    #[arg(long, default_value = "Info", value_parser = Level::parse)]
    pub output_threshold: Level,
    /// log (Istio's lines), json or yaml.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Log)]
    pub output: Output,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Output {
    Log,
    Json,
    Yaml,
}

/// Runs the analysis; Ok(true) when a finding reached the failure threshold.
pub async fn run(args: AnalyzeArgs) -> anyhow::Result<bool> {
    anyhow::ensure!(
        args.use_kube || !args.files.is_empty(),
        "nothing to analyze: name files, or leave --use-kube on to read the cluster"
    );
    let mut index = Index::new(Default::default());
    if args.use_kube {
        let config = match &args.kubeconfig {
            Some(path) => {
                let kubeconfig = kube::config::Kubeconfig::read_from(path)?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?
            }
            None => kube::Config::infer().await?,
        };
        let client = kube::Client::try_from(config)?;
        load::list_cluster(&client, &mut index).await?;
    }
    let objects = load::read_files(&args.files)?;
    let mut skipped = std::collections::BTreeMap::<String, usize>::new();
    // A namespaced object written without a namespace goes where `kubectl
    // apply -n` would put it.
    let default_namespace = args.namespace.clone().unwrap_or_else(|| "default".to_string());
    for mut object in objects {
        let kind = object.get("kind").and_then(|k| k.as_str()).unwrap_or("(no kind)").to_string();
        let cluster_scoped = ["Namespace", "ClusterRbacConfig", "MeshPolicy"].contains(&kind.as_str());
        if !cluster_scoped
            && object.pointer("/metadata/namespace").is_none()
            && object["metadata"].is_object()
        {
            object["metadata"]["namespace"] = serde_json::Value::String(default_namespace.clone());
        }
        if !index.apply_value(object) {
            *skipped.entry(kind).or_default() += 1;
        }
    }
    if !skipped.is_empty() {
        let counts: Vec<String> = skipped.iter().map(|(kind, n)| format!("{n} {kind}")).collect();
        eprintln!(
            "mesh analyze: not analyzed (kinds the mesh does not read, or malformed): {}",
            counts.join(", ")
        );
    }
    let findings: Vec<Finding> = analyze(index.state(), &args.mesh_namespace)
        .into_iter()
        .filter(|f| match &args.namespace {
            Some(ns) => &f.namespace == ns || (f.kind == "Namespace" && &f.name == ns),
            None => true,
        })
        .collect();
    let shown: Vec<&Finding> = findings.iter().filter(|f| f.level >= args.output_threshold).collect();
    let mut out = std::io::stdout().lock();
    match args.output {
        Output::Log if shown.is_empty() => {
            let what = if args.files.is_empty() {
                "the cluster".to_string()
            } else {
                "the configuration".to_string()
            };
            writeln!(out, "\u{2714} No validation issues found when analyzing {what}.")?;
        }
        Output::Log => {
            for finding in &shown {
                writeln!(out, "{finding}")?;
            }
        }
        Output::Json => writeln!(out, "{}", serde_json::to_string_pretty(&shown)?)?,
        Output::Yaml => write!(out, "{}", serde_yaml_ng::to_string(&shown)?)?,
    }
    Ok(findings.iter().any(|f| f.level >= args.failure_threshold))
}

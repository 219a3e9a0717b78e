//! Where `mesh analyze` reads configuration: YAML files (every document an
//! object of a kind the controller keeps; others are counted and left
//! out) and the live cluster (every kind the controller watches, listed
//! once), both into an [`Index`] as the controller holds them.

use std::path::{Path, PathBuf};

use anyhow::Context;
use kube::api::ListParams;
use serde::Deserialize;

use crate::index::kinds::Watched;
use crate::index::{
    ClusterRbacConfigs, DestinationRules, EndpointSlices, Gateways, Index, MeshPolicies, Namespaces,
    PeerAuthentications, Pods, Policies, RbacConfigs, RequestAuthentications, ServiceEntries,
    ServiceRoleBindings, ServiceRoles, Services, Sidecars, VirtualServices,
};

/// The objects of `paths` (files, or directories read for `.yaml`, `.yml`
/// and `.json` files, in name order), in the order written.
pub fn read_files(paths: &[PathBuf]) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut files = Vec::new();
    for path in paths {
        collect(path, &mut files)?;
    }
    let mut objects = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        for (i, document) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
            let value = serde_json::Value::deserialize(document)
                .with_context(|| format!("{}: document {} is not YAML", file.display(), i + 1))?;
            match value {
                serde_json::Value::Null => {}
                // A `kind: List` holds its objects in `items`.
                serde_json::Value::Object(ref map)
                    if map.get("kind").and_then(|k| k.as_str()) == Some("List") =>
                {
                    objects.extend(map.get("items").and_then(|i| i.as_array()).cloned().unwrap_or_default());
                }
                value => objects.push(value),
            }
        }
    }
    Ok(objects)
}

fn collect(path: &Path, files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("{}: no such file or directory", path.display()))?;
    if !meta.is_dir() {
        files.push(path.to_path_buf());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("reading the directory {}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for entry in entries {
        let yaml =
            entry.extension().and_then(|e| e.to_str()).is_some_and(|e| ["yaml", "yml", "json"].contains(&e));
        if entry.is_dir() || yaml {
            collect(&entry, files)?;
        }
    }
    Ok(())
}

/// Lists every kind the analyzers read from the cluster into `index`. A
/// kind the API server does not serve (Istio's CRDs not installed) is
/// empty; any other failure is an error.
pub async fn list_cluster(client: &kube::Client, index: &mut Index) -> anyhow::Result<()> {
    async fn list<K: Watched>(client: &kube::Client, index: &mut Index) -> anyhow::Result<()>
    where
        K::Object: serde::de::DeserializeOwned,
    {
        match K::api(client.clone()).list(&ListParams::default()).await {
            Ok(list) => {
                for object in &list.items {
                    index.apply::<K>(object);
                }
                Ok(())
            }
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(e) => Err(anyhow::Error::new(e).context(format!("listing {}s", K::NAME))),
        }
    }
    list::<Namespaces>(client, index).await?;
    list::<Services>(client, index).await?;
    list::<EndpointSlices>(client, index).await?;
    list::<Pods>(client, index).await?;
    list::<VirtualServices>(client, index).await?;
    list::<DestinationRules>(client, index).await?;
    list::<Gateways>(client, index).await?;
    list::<ServiceEntries>(client, index).await?;
    list::<Sidecars>(client, index).await?;
    list::<PeerAuthentications>(client, index).await?;
    list::<RequestAuthentications>(client, index).await?;
    list::<Policies>(client, index).await?;
    list::<MeshPolicies>(client, index).await?;
    list::<ServiceRoles>(client, index).await?;
    list::<ServiceRoleBindings>(client, index).await?;
    list::<ClusterRbacConfigs>(client, index).await?;
    list::<RbacConfigs>(client, index).await?;
    Ok(())
}

//! A pod's volumes as folders under the pod's state folder, bind-mounted
//! into each container by the sandbox: emptyDir, hostPath, configMap,
//! secret, downwardAPI and projected (ServiceAccount tokens from the
//! TokenRequest API, bound to the pod, refreshed before they expire as the
//! kubelet does). `sync` is called again periodically so configMap and
//! secret changes reach running pods.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, DownwardAPIVolumeFile, KeyToPath, Pod, Secret, ServiceAccount, Volume,
};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};

use crate::environment;

/// One file of a volume: contents and mode.
type Files = BTreeMap<String, (Vec<u8>, u32)>;

/// A token the node holds for a projected volume.
#[derive(Debug, Clone)]
struct Token {
    bytes: Vec<u8>,
    issued: Timestamp,
    expires: Timestamp,
}

impl Token {
    /// The kubelet's rule: refresh once 80% of the lifetime has passed, or
    /// after 24 hours (`max_age`, which tests shorten).
    fn due(&self, now: Timestamp, max_age: i64) -> bool {
        let life = self.expires.as_second() - self.issued.as_second();
        let age = now.as_second() - self.issued.as_second();
        age * 10 >= life * 8 || age >= max_age
    }
}

pub struct Volumes {
    root: PathBuf,
    /// Tokens older than this are replaced even if 80% of their life has not passed.
    token_max_age: i64,
    /// Files written per volume, to remove keys that disappear.
    written: BTreeMap<String, BTreeSet<String>>,
    tokens: BTreeMap<(String, String), Token>,
    /// hostPath volumes are the host's own folders.
    host_paths: BTreeMap<String, PathBuf>,
}

impl Volumes {
    pub fn new(root: PathBuf, token_max_age: Option<u64>) -> Self {
        let token_max_age = token_max_age.map(|s| s as i64).unwrap_or(24 * 3600);
        Self {
            root,
            token_max_age,
            written: BTreeMap::new(),
            tokens: BTreeMap::new(),
            host_paths: BTreeMap::new(),
        }
    }

    /// The folder a volume is mounted from.
    pub fn path(&self, volume: &str) -> PathBuf {
        self.host_paths.get(volume).cloned().unwrap_or_else(|| self.root.join(volume))
    }

    /// Creates or refreshes every volume of the pod.
    pub async fn sync(&mut self, client: &Client, pod: &Pod, host_ip: &str) -> Result<()> {
        for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            self.sync_one(client, pod, host_ip, volume)
                .await
                .with_context(|| format!("volume {}", volume.name))?;
        }
        Ok(())
    }

    async fn sync_one(&mut self, client: &Client, pod: &Pod, host_ip: &str, volume: &Volume) -> Result<()> {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let dir = self.root.join(&volume.name);
        if volume.empty_dir.is_some() {
            if !dir.exists() {
                std::fs::create_dir_all(&dir)?;
                // Any container user may write an emptyDir.
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))?;
            }
            return Ok(());
        }
        if let Some(host) = &volume.host_path {
            self.host_paths.insert(volume.name.clone(), PathBuf::from(&host.path));
            return Ok(());
        }
        let mut files = Files::new();
        if let Some(cm) = &volume.config_map {
            let mode = cm.default_mode.unwrap_or(0o644) as u32;
            let data = config_map(client, &namespace, &cm.name, cm.optional.unwrap_or(false)).await?;
            select(&mut files, data, cm.items.as_deref(), mode, cm.optional.unwrap_or(false))?;
        } else if let Some(s) = &volume.secret {
            let mode = s.default_mode.unwrap_or(0o644) as u32;
            let name = s.secret_name.clone().unwrap_or_default();
            let data = secret(client, &namespace, &name, s.optional.unwrap_or(false)).await?;
            select(&mut files, data, s.items.as_deref(), mode, s.optional.unwrap_or(false))?;
        } else if let Some(d) = &volume.downward_api {
            let mode = d.default_mode.unwrap_or(0o644) as u32;
            downward(&mut files, pod, host_ip, d.items.as_deref().unwrap_or_default(), mode)?;
        } else if let Some(p) = &volume.projected {
            let mode = p.default_mode.unwrap_or(0o644) as u32;
            for source in p.sources.iter().flatten() {
                if let Some(t) = &source.service_account_token {
                    let key = (volume.name.clone(), t.path.clone());
                    let now = Timestamp::now();
                    let token = match self.tokens.get(&key) {
                        Some(token) if !token.due(now, self.token_max_age) => token.clone(),
                        _ => {
                            let token =
                                request_token(client, pod, t.audience.clone(), t.expiration_seconds).await?;
                            tracing::info!(volume = %volume.name, path = %t.path, expires = %token.expires, "token issued");
                            self.tokens.insert(key, token.clone());
                            token
                        }
                    };
                    files.insert(t.path.clone(), (token.bytes, mode));
                }
                if let Some(cm) = &source.config_map {
                    let optional = cm.optional.unwrap_or(false);
                    let data = config_map(client, &namespace, &cm.name, optional).await?;
                    select(&mut files, data, cm.items.as_deref(), mode, optional)?;
                }
                if let Some(s) = &source.secret {
                    let optional = s.optional.unwrap_or(false);
                    let data = secret(client, &namespace, &s.name, optional).await?;
                    select(&mut files, data, s.items.as_deref(), mode, optional)?;
                }
                if let Some(d) = &source.downward_api {
                    downward(&mut files, pod, host_ip, d.items.as_deref().unwrap_or_default(), mode)?;
                }
                if source.cluster_trust_bundle.is_some() || source.pod_certificate.is_some() {
                    bail!(
                        "projected clusterTrustBundle and podCertificate sources are not supported by this node"
                    );
                }
            }
        } else {
            bail!(
                "this node supports emptyDir, hostPath, configMap, secret, downwardAPI and projected volumes"
            );
        }
        let previous = self.written.remove(&volume.name).unwrap_or_default();
        let now: BTreeSet<String> = files.keys().cloned().collect();
        write_files(&dir, &files, previous.difference(&now))?;
        self.written.insert(volume.name.clone(), now);
        Ok(())
    }
}

async fn config_map(
    client: &Client,
    ns: &str,
    name: &str,
    optional: bool,
) -> Result<BTreeMap<String, Vec<u8>>> {
    match Api::<ConfigMap>::namespaced(client.clone(), ns).get_opt(name).await? {
        Some(cm) => {
            let mut data: BTreeMap<String, Vec<u8>> =
                cm.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
            data.extend(cm.binary_data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)));
            Ok(data)
        }
        None if optional => Ok(BTreeMap::new()),
        None => bail!("configmap {ns}/{name} not found"),
    }
}

async fn secret(client: &Client, ns: &str, name: &str, optional: bool) -> Result<BTreeMap<String, Vec<u8>>> {
    match Api::<Secret>::namespaced(client.clone(), ns).get_opt(name).await? {
        Some(s) => {
            let mut data: BTreeMap<String, Vec<u8>> =
                s.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
            data.extend(s.string_data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())));
            Ok(data)
        }
        None if optional => Ok(BTreeMap::new()),
        None => bail!("secret {ns}/{name} not found"),
    }
}

/// Every key as a file, or only the listed items at their paths.
fn select(
    files: &mut Files,
    data: BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    mode: u32,
    optional: bool,
) -> Result<()> {
    match items {
        None => files.extend(data.into_iter().map(|(k, v)| (k, (v, mode)))),
        Some(items) => {
            for item in items {
                match data.get(&item.key) {
                    Some(v) => {
                        files.insert(
                            item.path.clone(),
                            (v.clone(), item.mode.map(|m| m as u32).unwrap_or(mode)),
                        );
                    }
                    None if optional => {}
                    None => bail!("key {} not found", item.key),
                }
            }
        }
    }
    Ok(())
}

fn downward(
    files: &mut Files,
    pod: &Pod,
    host_ip: &str,
    items: &[DownwardAPIVolumeFile],
    mode: u32,
) -> Result<()> {
    for item in items {
        let own =
            pod.spec.as_ref().and_then(|s| s.containers.first()).map(|c| c.name.clone()).unwrap_or_default();
        let value = if let Some(f) = &item.field_ref {
            environment::field(pod, f, host_ip)?
        } else if let Some(r) = &item.resource_field_ref {
            environment::resource(pod, &own, r)?
        } else {
            bail!("downwardAPI item {} has neither fieldRef nor resourceFieldRef", item.path)
        };
        files.insert(item.path.clone(), (value.into_bytes(), item.mode.map(|m| m as u32).unwrap_or(mode)));
    }
    Ok(())
}

/// A token for the pod's ServiceAccount, bound to the pod (so it dies with
/// it, and a TokenReview names the pod), as the kubelet requests them.
async fn request_token(
    client: &Client,
    pod: &Pod,
    audience: Option<String>,
    seconds: Option<i64>,
) -> Result<Token> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let sa =
        pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or_else(|| "default".into());
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: audience.into_iter().filter(|a| !a.is_empty()).collect(),
            // The API server's minimum is 10 minutes; the kubelet defaults to an hour.
            expiration_seconds: Some(seconds.unwrap_or(3600).max(600)),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..Default::default()
    };
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &namespace);
    let issued = Timestamp::now();
    let response = api
        .create_token_request(&sa, &PostParams::default(), &request)
        .await
        .with_context(|| format!("requesting a token for serviceaccount {namespace}/{sa}"))?;
    let status = response.status.context("TokenRequest without status")?;
    Ok(Token { bytes: status.token.into_bytes(), issued, expires: status.expiration_timestamp.0 })
}

/// Writes each file atomically (a reader never sees half a file; the
/// folder, not the file, is what containers mount) and removes `stale` ones.
fn write_files<'a>(dir: &Path, files: &Files, stale: impl Iterator<Item = &'a String>) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    for (rel, (bytes, mode)) in files {
        if rel.split('/').any(|part| part == "..") || rel.starts_with('/') {
            bail!("volume path {rel:?} leaves the volume");
        }
        let path = dir.join(rel);
        if std::fs::read(&path).is_ok_and(|old| &old == bytes) {
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let tmp = path.with_extension("localnode-tmp");
        std::fs::write(&tmp, bytes)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(*mode))?;
        std::fs::rename(&tmp, &path)?;
    }
    for rel in stale {
        let _ = std::fs::remove_file(dir.join(rel));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_refreshed_at_eighty_percent_of_their_life() {
        let issued = Timestamp::from_second(1_000).unwrap();
        let token = Token { bytes: vec![], issued, expires: Timestamp::from_second(1_600).unwrap() };
        assert!(!token.due(Timestamp::from_second(1_479).unwrap(), 86400));
        assert!(token.due(Timestamp::from_second(1_480).unwrap(), 86400));
        assert!(token.due(Timestamp::from_second(1_030).unwrap(), 30));
    }

    #[test]
    fn writes_replace_and_remove_files() {
        let dir = std::env::temp_dir().join(format!("volumes-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut files = Files::new();
        files.insert("a".into(), (b"1".to_vec(), 0o600));
        files.insert("sub/b".into(), (b"2".to_vec(), 0o644));
        write_files(&dir, &files, std::iter::empty()).unwrap();
        assert_eq!(std::fs::read(dir.join("sub/b")).unwrap(), b"2");
        assert_eq!(std::fs::metadata(dir.join("a")).unwrap().permissions().mode() & 0o777, 0o600);
        let stale = ["a".to_string()];
        files.remove("a");
        write_files(&dir, &files, stale.iter()).unwrap();
        assert!(!dir.join("a").exists());
        let mut escape = Files::new();
        escape.insert("../x".into(), (vec![], 0o644));
        assert!(write_files(&dir, &escape, std::iter::empty()).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

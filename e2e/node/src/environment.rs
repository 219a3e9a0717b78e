//! A container's environment, built as the kubelet builds it: Service
//! links, then `envFrom`, then `env` (each value may use `$(VAR)` of the
//! ones before), and `$(VAR)` expansion of command and args.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, ObjectFieldSelector, Pod, ResourceFieldSelector, Secret,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::{Api, Client};

/// A Service as container environment variables see it.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceLink {
    pub namespace: String,
    pub name: String,
    pub cluster_ip: String,
    /// (port name, port, protocol)
    pub ports: Vec<(String, i32, String)>,
}

/// Expands `$(VAR)` from `vars`; `$$` is a literal `$`; an undefined
/// reference is left as written (Kubernetes' rules).
pub fn expand(input: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('(')
            && let Some(end) = body.find(')')
        {
            let name = &body[..end];
            match vars.get(name) {
                Some(v) => out.push_str(v),
                None => out.push_str(&rest[i..i + 2 + end + 1]),
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// `FOO_SERVICE_HOST` and friends for each Service, as docker links did.
pub fn service_variables(links: &[ServiceLink]) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    for svc in links {
        let prefix = svc.name.to_uppercase().replace('-', "_");
        let Some((_, first_port, _)) = svc.ports.first() else { continue };
        vars.insert(format!("{prefix}_SERVICE_HOST"), svc.cluster_ip.clone());
        vars.insert(format!("{prefix}_SERVICE_PORT"), first_port.to_string());
        for (name, port, protocol) in &svc.ports {
            if !name.is_empty() {
                vars.insert(
                    format!("{prefix}_SERVICE_PORT_{}", name.to_uppercase().replace('-', "_")),
                    port.to_string(),
                );
            }
            let proto = protocol.to_lowercase();
            let base = format!("{prefix}_PORT_{port}_{}", protocol.to_uppercase());
            vars.insert(base.clone(), format!("{proto}://{}:{port}", svc.cluster_ip));
            vars.insert(format!("{base}_PROTO"), proto);
            vars.insert(format!("{base}_PORT"), port.to_string());
            vars.insert(format!("{base}_ADDR"), svc.cluster_ip.clone());
        }
        vars.insert(
            format!("{prefix}_PORT"),
            format!("{}://{}:{first_port}", svc.ports[0].2.to_lowercase(), svc.cluster_ip),
        );
    }
    vars
}

/// What a fieldRef may name.
pub fn field(pod: &Pod, selector: &ObjectFieldSelector, host_ip: &str) -> Result<String> {
    let meta = &pod.metadata;
    let path = selector.field_path.as_str();
    let from_map = |map: &Option<BTreeMap<String, String>>, key: &str| {
        map.as_ref().and_then(|m| m.get(key)).cloned().unwrap_or_default()
    };
    let status = pod.status.as_ref();
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => {
            pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or_else(|| "default".into())
        }
        "status.hostIP" => host_ip.to_string(),
        "status.podIP" => status.and_then(|s| s.pod_ip.clone()).unwrap_or_default(),
        "status.podIPs" => status.and_then(|s| s.pod_ip.clone()).unwrap_or_default(),
        "metadata.labels" | "metadata.annotations" => {
            let map = if path == "metadata.labels" { &meta.labels } else { &meta.annotations };
            map.iter().flatten().map(|(k, v)| format!("{k}=\"{v}\"\n")).collect()
        }
        _ => {
            let key = |prefix: &str| {
                path.strip_prefix(prefix).and_then(|r| r.strip_suffix("']")).map(str::to_string)
            };
            if let Some(k) = key("metadata.labels['") {
                from_map(&meta.labels, &k)
            } else if let Some(k) = key("metadata.annotations['") {
                from_map(&meta.annotations, &k)
            } else {
                bail!("fieldRef {path} is not supported")
            }
        }
    })
}

/// What a resourceFieldRef may name; limits fall back to the node's capacity.
pub fn resource(pod: &Pod, own: &str, selector: &ResourceFieldSelector) -> Result<String> {
    let name = selector.container_name.as_deref().unwrap_or(own);
    let container = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter().chain(s.init_containers.iter().flatten()))
        .find(|c| c.name == name)
        .with_context(|| format!("resourceFieldRef names unknown container {name}"))?;
    let resources = container.resources.clone().unwrap_or_default();
    let (kind, what) = selector.resource.split_once('.').context("resourceFieldRef.resource")?;
    let quantity = match kind {
        "limits" => resources.limits.as_ref().and_then(|m| m.get(what)).cloned(),
        "requests" => resources.requests.as_ref().and_then(|m| m.get(what)).cloned(),
        _ => bail!("resourceFieldRef {}", selector.resource),
    };
    let default = if what == "cpu" { crate::node::CAPACITY_CPU } else { crate::node::CAPACITY_MEMORY };
    let value = parse_quantity(&quantity.unwrap_or_else(|| Quantity(default.into())).0)?;
    let divisor = parse_quantity(&selector.divisor.clone().unwrap_or_else(|| Quantity("1".into())).0)?;
    // The kubelet rounds up: 250m of CPU is 1 core.
    Ok(((value / divisor).ceil() as i64).to_string())
}

/// A Kubernetes quantity as a plain number (cores, bytes).
pub fn parse_quantity(q: &str) -> Result<f64> {
    const SUFFIXES: &[(&str, f64)] = &[
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("m", 0.001),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
    ];
    for (suffix, factor) in SUFFIXES {
        if let Some(n) = q.strip_suffix(suffix) {
            return Ok(n.parse::<f64>().with_context(|| format!("quantity {q}"))? * factor);
        }
    }
    q.parse::<f64>().with_context(|| format!("quantity {q}"))
}

/// The full environment of one container, in the kubelet's order.
pub async fn build(
    client: &Client,
    pod: &Pod,
    container: &Container,
    links: &[ServiceLink],
    host_ip: &str,
) -> Result<BTreeMap<String, String>> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let enable_links = pod.spec.as_ref().and_then(|s| s.enable_service_links).unwrap_or(true);
    let visible: Vec<ServiceLink> = links
        .iter()
        .filter(|l| {
            (l.namespace == namespace && enable_links) || (l.namespace == "default" && l.name == "kubernetes")
        })
        .cloned()
        .collect();
    let mut vars = service_variables(&visible);
    vars.insert("PATH".into(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    vars.insert("HOSTNAME".into(), pod.metadata.name.clone().unwrap_or_default());

    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            match configmaps.get_opt(&r.name).await? {
                Some(cm) => {
                    for (k, v) in cm.data.unwrap_or_default() {
                        vars.insert(format!("{prefix}{k}"), v);
                    }
                }
                None if r.optional == Some(true) => {}
                None => bail!("configmap {namespace}/{} not found", r.name),
            }
        }
        if let Some(r) = &from.secret_ref {
            match secrets.get_opt(&r.name).await? {
                Some(s) => {
                    for (k, v) in s.data.unwrap_or_default() {
                        vars.insert(format!("{prefix}{k}"), String::from_utf8_lossy(&v.0).into_owned());
                    }
                }
                None if r.optional == Some(true) => {}
                None => bail!("secret {namespace}/{} not found", r.name),
            }
        }
    }
    for env in container.env.iter().flatten() {
        let value = match (&env.value, &env.value_from) {
            (Some(v), _) => expand(v, &vars),
            (None, Some(from)) => {
                if let Some(f) = &from.field_ref {
                    field(pod, f, host_ip)?
                } else if let Some(r) = &from.resource_field_ref {
                    resource(pod, &container.name, r)?
                } else if let Some(r) = &from.config_map_key_ref {
                    let cm = configmaps.get_opt(&r.name).await?;
                    match cm.and_then(|c| c.data).and_then(|d| d.get(&r.key).cloned()) {
                        Some(v) => v,
                        None if r.optional == Some(true) => continue,
                        None => {
                            bail!("env {}: configmap {namespace}/{} has no key {}", env.name, r.name, r.key)
                        }
                    }
                } else if let Some(r) = &from.secret_key_ref {
                    let s = secrets.get_opt(&r.name).await?;
                    match s.and_then(|s| s.data).and_then(|d| d.get(&r.key).cloned()) {
                        Some(v) => String::from_utf8_lossy(&v.0).into_owned(),
                        None if r.optional == Some(true) => continue,
                        None => bail!("env {}: secret {namespace}/{} has no key {}", env.name, r.name, r.key),
                    }
                } else {
                    String::new()
                }
            }
            (None, None) => String::new(),
        };
        vars.insert(env.name.clone(), value);
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn expands_like_kubernetes() {
        let v = vars(&[("A", "1"), ("B", "two")]);
        assert_eq!(expand("$(A)-$(B)", &v), "1-two");
        assert_eq!(expand("$$(A)", &v), "$(A)");
        assert_eq!(expand("$(MISSING) $(A", &v), "$(MISSING) $(A");
        assert_eq!(expand("cost $5", &v), "cost $5");
    }

    #[test]
    fn service_links_like_docker() {
        let links = [ServiceLink {
            namespace: "default".into(),
            name: "reviews-api".into(),
            cluster_ip: "10.96.0.7".into(),
            ports: vec![("http".into(), 9080, "TCP".into())],
        }];
        let v = service_variables(&links);
        assert_eq!(v["REVIEWS_API_SERVICE_HOST"], "10.96.0.7");
        assert_eq!(v["REVIEWS_API_SERVICE_PORT"], "9080");
        assert_eq!(v["REVIEWS_API_SERVICE_PORT_HTTP"], "9080");
        assert_eq!(v["REVIEWS_API_PORT_9080_TCP_ADDR"], "10.96.0.7");
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("250m").unwrap(), 0.25);
        assert_eq!(parse_quantity("128Mi").unwrap(), 134217728.0);
        assert_eq!(parse_quantity("2").unwrap(), 2.0);
    }
}

//! What the control plane shows about its proxies: /debug/syncz (every
//! connected proxy, and per resource type the version it was sent, the
//! version it acknowledged and its latest refusal), /debug/config_dump
//! (what one proxy holds), and `mesh proxy-status`, the table of syncz
//! (istioctl's layout).
//!
//! envoy-types has no JSON mapping of its protos, so config_dump gives,
//! per resource, its name, version, the clusters it names, its size and
//! its encoded bytes in base64, with Rust's debug print of the decoded
//! message for reading. Secrets carry private keys: their bodies are never
//! shown.

use std::collections::BTreeMap;
use std::time::SystemTime;

use base64::Engine;
use envoy_types::pb::envoy::config::{
    cluster::v3::Cluster, endpoint::v3::ClusterLoadAssignment, listener::v3::Listener,
    route::v3::RouteConfiguration,
};
use prost::Message;
use serde::{Deserialize, Serialize};

use super::push::{Connection, Connections};
use super::resource_type::ResourceType;

/// One proxy in /debug/syncz.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SyncStatus {
    /// The node id.
    pub proxy: String,
    /// `namespace/name` of the pod.
    pub pod: String,
    pub namespace: String,
    pub name: String,
    /// The controller replica serving it.
    pub controller: String,
    /// `SotW` or `Delta`.
    pub protocol: String,
    /// RFC 3339.
    pub connected_since: String,
    /// By type label (`cds`, `lds`, `eds`, `rds`, `sds`).
    pub types: BTreeMap<String, TypeSync>,
}

/// One resource type of one proxy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TypeSync {
    pub type_url: String,
    /// The version last sent, if any.
    pub sent: Option<String>,
    /// The version last acknowledged, if any.
    pub acked: Option<String>,
    /// How many resources the proxy holds (or is being sent).
    pub resources: usize,
    /// The latest refusal, if the proxy's latest answer was one.
    pub nack: Option<NackStatus>,
    /// The latest refusal ever on this stream, even if fixed since.
    pub last_nack: Option<NackStatus>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NackStatus {
    pub version: String,
    /// Envoy's error message.
    pub error: String,
    /// RFC 3339; empty when unknown.
    #[serde(default)]
    pub at: String,
}

/// /debug/syncz: every connected proxy.
pub fn syncz(connections: &Connections) -> Vec<SyncStatus> {
    connections.list().iter().map(|c| sync_status(connections.instance(), c)).collect()
}

fn sync_status(controller: &str, connection: &Connection) -> SyncStatus {
    let report = connection.report();
    let types = report
        .types
        .iter()
        .map(|(resource_type, status)| {
            let last_nack = report.last_nack.get(resource_type).map(|n| NackStatus {
                version: n.version.clone(),
                error: n.error.clone(),
                at: rfc3339(n.at),
            });
            let nack = status.nack.as_ref().map(|n| NackStatus {
                version: n.version.clone(),
                error: n.error.clone(),
                at: last_nack
                    .as_ref()
                    .filter(|l| l.version == n.version)
                    .map(|l| l.at.clone())
                    .unwrap_or_default(),
            });
            let sync = TypeSync {
                type_url: resource_type.type_url().to_string(),
                sent: status.sent.clone(),
                acked: status.acked.clone(),
                resources: status.resources,
                nack,
                last_nack,
            };
            (resource_type.label().to_string(), sync)
        })
        .collect();
    let pod = connection.pod();
    SyncStatus {
        proxy: connection.node_id.clone(),
        pod: pod.to_string(),
        namespace: pod.namespace,
        name: pod.name,
        controller: controller.to_string(),
        protocol: connection.protocol.name().to_string(),
        connected_since: rfc3339(connection.connected_since),
        types,
    }
}

/// /debug/config_dump for the proxies named `proxy` (a node id, or
/// `namespace/pod`, or `pod.namespace`): what each holds, by type.
pub fn config_dump(connections: &Connections, proxy: &str) -> Option<serde_json::Value> {
    let found = connections.find(proxy);
    if found.is_empty() {
        return None;
    }
    let dumps: Vec<_> = found
        .iter()
        .map(|connection| {
            let report = connection.report();
            let types: serde_json::Map<String, serde_json::Value> = report
                .holding
                .iter()
                .map(|(resource_type, resources)| {
                    let items: Vec<_> = resources
                        .iter()
                        .map(|r| {
                            let mut item = serde_json::json!({
                                "name": r.name,
                                "version": r.version,
                                "bytes": r.value().len(),
                            });
                            if !r.depends_on.is_empty() {
                                item["depends_on"] = serde_json::json!(r.depends_on);
                            }
                            if *resource_type != ResourceType::Secret {
                                item["base64"] =
                                    base64::engine::general_purpose::STANDARD.encode(r.value()).into();
                                if let Some(text) = decoded(*resource_type, r.value()) {
                                    item["debug"] = text.into();
                                }
                            }
                            item
                        })
                        .collect();
                    let value = serde_json::json!({
                        "type_url": resource_type.type_url(),
                        "version": resources.version(),
                        "resources": items,
                    });
                    (resource_type.label().to_string(), value)
                })
                .collect();
            serde_json::json!({
                "status": sync_status(connections.instance(), connection),
                "config": types,
            })
        })
        .collect();
    Some(serde_json::Value::Array(dumps))
}

/// Rust's debug print of a resource (secrets are never shown: they hold
/// private keys).
fn decoded(resource_type: ResourceType, bytes: &[u8]) -> Option<String> {
    match resource_type {
        ResourceType::Listener => Listener::decode(bytes).ok().map(|m| format!("{m:?}")),
        ResourceType::Cluster => Cluster::decode(bytes).ok().map(|m| format!("{m:?}")),
        ResourceType::Endpoint => ClusterLoadAssignment::decode(bytes).ok().map(|m| format!("{m:?}")),
        ResourceType::Route => RouteConfiguration::decode(bytes).ok().map(|m| format!("{m:?}")),
        ResourceType::Secret => None,
    }
}

fn rfc3339(at: SystemTime) -> String {
    time::OffsetDateTime::from(at).format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// The columns of `mesh proxy-status`, in istioctl's order.
const COLUMNS: [&str; 4] = ["cds", "lds", "eds", "rds"];

/// One cell: SYNCED, STALE (sent, not acknowledged yet), NACKED (the
/// latest answer was a refusal) or NOT SENT, with the first characters of
/// the version.
pub fn cell(sync: Option<&TypeSync>) -> String {
    let short = |v: &str| v.chars().take(8).collect::<String>();
    let Some(sync) = sync else { return "NOT SENT".into() };
    match (&sync.sent, &sync.acked, &sync.nack) {
        (_, _, Some(nack)) => format!("NACKED ({})", short(&nack.version)),
        (None, _, None) => "NOT SENT".into(),
        (Some(sent), Some(acked), None) if sent == acked => format!("SYNCED ({})", short(sent)),
        (Some(sent), _, None) => format!("STALE ({})", short(sent)),
    }
}

/// The table `mesh proxy-status` prints.
pub fn status_table(statuses: &[SyncStatus]) -> String {
    let mut rows: Vec<Vec<String>> = vec![
        ["NAME", "CDS", "LDS", "EDS", "RDS", "PROTOCOL", "CONTROLLER"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
    ];
    let mut sorted: Vec<&SyncStatus> = statuses.iter().collect();
    sorted.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    for status in sorted {
        let mut row = vec![format!("{}.{}", status.name, status.namespace)];
        row.extend(COLUMNS.iter().map(|c| cell(status.types.get(*c))));
        row.push(status.protocol.clone());
        row.push(status.controller.clone());
        rows.push(row);
    }
    let widths: Vec<usize> =
        (0..rows[0].len()).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sync(sent: Option<&str>, acked: Option<&str>, nack: Option<&str>) -> TypeSync {
        TypeSync {
            sent: sent.map(Into::into),
            acked: acked.map(Into::into),
            nack: nack.map(|v| NackStatus { version: v.into(), error: "bad".into(), at: String::new() }),
            ..Default::default()
        }
    }

    #[test]
    fn cells_say_synced_stale_nacked_or_not_sent() {
        assert_eq!(
            cell(Some(&sync(Some("0123456789abcdef"), Some("0123456789abcdef"), None))),
            "SYNCED (01234567)"
        );
        assert_eq!(
            cell(Some(&sync(Some("bbbbbbbbbbbbbbbb"), Some("aaaaaaaaaaaaaaaa"), None))),
            "STALE (bbbbbbbb)"
        );
        assert_eq!(cell(Some(&sync(Some("bbbbbbbbbbbbbbbb"), None, None))), "STALE (bbbbbbbb)");
        assert_eq!(cell(Some(&sync(Some("b"), Some("a"), Some("cccccccccc")))), "NACKED (cccccccc)");
        assert_eq!(cell(Some(&sync(None, None, None))), "NOT SENT");
        assert_eq!(cell(None), "NOT SENT");
    }

    #[test]
    fn the_table_lines_up_like_istioctls() {
        let status = SyncStatus {
            proxy: "sidecar~10.0.0.1~productpage-v1-x.default~default.svc.cluster.local".into(),
            pod: "default/productpage-v1-x".into(),
            namespace: "default".into(),
            name: "productpage-v1-x".into(),
            controller: "mesh-7d9f".into(),
            protocol: "Delta".into(),
            connected_since: "2025-01-01T00:00:00Z".into(),
            types: [
                ("cds".to_string(), sync(Some("aaaaaaaaaaaa"), Some("aaaaaaaaaaaa"), None)),
                ("lds".to_string(), sync(Some("bbbbbbbbbbbb"), None, None)),
            ]
            .into(),
        };
        let table = status_table(std::slice::from_ref(&status));
        let expected = "\
NAME                       CDS                 LDS                EDS        RDS        PROTOCOL   CONTROLLER
productpage-v1-x.default   SYNCED (aaaaaaaa)   STALE (bbbbbbbb)   NOT SENT   NOT SENT   Delta      mesh-7d9f
";
        assert_eq!(table, expected);
        // What syncz serves, the CLI reads back.
        let json = serde_json::to_string(std::slice::from_ref(&status)).unwrap();
        assert_eq!(serde_json::from_str::<Vec<SyncStatus>>(&json).unwrap(), [status]);
    }
}

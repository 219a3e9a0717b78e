//! What the control plane shows about its proxies: /debug/syncz (every
//! connected proxy, and per resource type the version it was sent, the
//! version it acknowledged and its latest refusal), /debug/config_dump
//! (what one proxy holds), and `mesh proxy-status`, the table of syncz
//! (istioctl's layout).
//!
//! envoy-types has no JSON mapping of its protos, so config_dump gives,
//! per resource, its name, version, the clusters it names, its size and
//! its encoded bytes in base64, with Rust's debug print of the decoded
//! message for reading. Secrets carry private keys: a secret is shown only
//! as [`redacted`] makes it (certificates and names kept, every piece of
//! key material replaced by [`REDACTED`]), and never as its bytes.

use std::collections::BTreeMap;
use std::time::SystemTime;

use base64::Engine;
use envoy_types::pb::envoy::config::{
    cluster::v3::Cluster,
    core::v3::{DataSource, data_source},
    endpoint::v3::ClusterLoadAssignment,
    listener::v3::{Listener, filter},
    rbac::v3::Rbac,
    route::v3::RouteConfiguration,
};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    Secret, TlsCertificate, private_key_provider, secret,
};
use prost::Message;
use serde::{Deserialize, Serialize};

use super::push::{Connection, Connections};
use super::resource_type::ResourceType;
use crate::translate::passthrough::VIRTUAL_INBOUND;
use crate::translate::rbac::{HTTP_RBAC, NETWORK_RBAC};

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
    /// The workload certificate last issued to the stream (no key).
    #[serde(default)]
    pub certificate: Option<CertificateStatus>,
}

/// A proxy's workload certificate, as `mesh proxy-config secret` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CertificateStatus {
    pub spiffe_id: String,
    /// Hex, colon-separated.
    pub serial: String,
    /// RFC 3339.
    pub not_before: String,
    /// RFC 3339.
    pub not_after: String,
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
        certificate: report.certificate.map(|c| CertificateStatus {
            spiffe_id: c.spiffe_id,
            serial: c.serial,
            not_before: rfc3339(c.not_before.into()),
            not_after: rfc3339(c.not_after.into()),
        }),
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
                            // A secret's bytes hold its key: only its redacted print is shown.
                            if *resource_type == ResourceType::Secret {
                                item["redacted"] = true.into();
                            } else {
                                item["base64"] =
                                    base64::engine::general_purpose::STANDARD.encode(r.value()).into();
                            }
                            if let Some(text) = decoded(*resource_type, r.value()) {
                                item["debug"] = text.into();
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

/// Rust's debug print of a resource; a secret's, once [`redacted`].
fn decoded(resource_type: ResourceType, bytes: &[u8]) -> Option<String> {
    match resource_type {
        ResourceType::Listener => Listener::decode(bytes).ok().map(|m| format!("{m:?}")),
        ResourceType::Cluster => Cluster::decode(bytes).ok().map(|m| format!("{m:?}")),
        ResourceType::Endpoint => ClusterLoadAssignment::decode(bytes).ok().map(|m| format!("{m:?}")),
        ResourceType::Route => RouteConfiguration::decode(bytes).ok().map(|m| format!("{m:?}")),
        ResourceType::Secret => Secret::decode(bytes).ok().map(|m| format!("{:?}", redacted(m))),
    }
}

/// What a debug view shows in place of secret material.
pub const REDACTED: &str = "[redacted]";

/// `secret` as a debug view may show it: names, certificate chains, trust
/// bundles and OCSP staples as they are; every inline piece of secret
/// material (a private key, a PKCS#12 bundle, its password, a private key
/// provider's configuration, session ticket keys, a generic secret such
/// as an HMAC key) replaced by [`REDACTED`]. A file name or environment
/// variable stays: it says where the material is, not what it is.
pub fn redacted(mut secret: Secret) -> Secret {
    match &mut secret.r#type {
        Some(secret::Type::TlsCertificate(certificate)) => redact_certificate(certificate),
        Some(secret::Type::SessionTicketKeys(keys)) => keys.keys.iter_mut().for_each(redact),
        Some(secret::Type::GenericSecret(generic)) => {
            generic.secret.iter_mut().for_each(redact);
            generic.secrets.values_mut().for_each(redact);
        }
        // Trust bundles and how peers are verified: nothing secret.
        Some(secret::Type::ValidationContext(_)) | None => {}
    }
    secret
}

fn redact_certificate(certificate: &mut TlsCertificate) {
    for source in [&mut certificate.private_key, &mut certificate.pkcs12, &mut certificate.password] {
        source.iter_mut().for_each(redact);
    }
    if let Some(provider) = &mut certificate.private_key_provider
        && let Some(private_key_provider::ConfigType::TypedConfig(config)) = &mut provider.config_type
    {
        // The provider's configuration may carry key material of its own.
        config.value = REDACTED.as_bytes().to_vec();
    }
}

fn redact(source: &mut DataSource) {
    if let Some(data_source::Specifier::InlineBytes(_) | data_source::Specifier::InlineString(_)) =
        source.specifier
    {
        source.specifier = Some(data_source::Specifier::InlineString(REDACTED.to_string()));
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
/// `mesh proxy-config secret`: the workload certificate of each proxy of
/// `pod` (`namespace/name` or `name.namespace`), with the secrets it
/// acknowledged. `None` when no such proxy is connected.
pub fn secret_table(statuses: &[SyncStatus], pod: &str) -> Option<String> {
    let mine: Vec<&SyncStatus> =
        statuses.iter().filter(|s| s.pod == pod || format!("{}.{}", s.name, s.namespace) == pod).collect();
    if mine.is_empty() {
        return None;
    }
    let mut rows: Vec<Vec<String>> = vec![
        ["RESOURCE NAME", "SPIFFE ID", "SERIAL NUMBER", "NOT BEFORE", "NOT AFTER", "SDS"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
    ];
    for status in mine {
        let sds = cell(status.types.get("sds"));
        match &status.certificate {
            Some(c) => rows.push(vec![
                "default".into(),
                c.spiffe_id.clone(),
                c.serial.clone(),
                c.not_before.clone(),
                c.not_after.clone(),
                sds,
            ]),
            None => rows.push(vec!["default".into(), "-".into(), "-".into(), "-".into(), "-".into(), sds]),
        }
    }
    Some(aligned(rows))
}

/// The inbound listener a proxy holds, from its /debug/config_dump
/// (`dump`, one entry per connection of the pod: the first that holds one).
pub fn inbound_listener(dump: &serde_json::Value) -> Option<Listener> {
    dump.as_array()?.iter().find_map(|connection| {
        let resources = connection["config"][ResourceType::Listener.label()]["resources"].as_array()?;
        let inbound = resources.iter().find(|r| r["name"] == VIRTUAL_INBOUND)?;
        let bytes = base64::engine::general_purpose::STANDARD.decode(inbound["base64"].as_str()?).ok()?;
        Listener::decode(bytes.as_slice()).ok()
    })
}

/// `mesh proxy-config authz`: per inbound port and chain, the RBAC filter
/// the proxy enforces (its policies by name; none at all denies every
/// request) and the shadow policies it only counts.
pub fn authz_table(inbound: &Listener) -> String {
    let mut rows: Vec<Vec<String>> = vec![
        ["PORT", "CHAIN", "FILTER", "ENFORCED POLICIES", "SHADOW POLICIES"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
    ];
    let names = |rules: Option<&Rbac>| match rules {
        None => "-".to_string(),
        Some(r) if r.policies.is_empty() => "(none: every request denied)".to_string(),
        Some(r) => {
            let mut names: Vec<&str> = r.policies.keys().map(String::as_str).collect();
            names.sort_unstable();
            names.join(",")
        }
    };
    for chain in &inbound.filter_chains {
        let Some(port) = chain.filter_chain_match.as_ref().and_then(|m| m.destination_port.as_ref()) else {
            continue;
        };
        let transport = if chain.transport_socket.is_some() { "mtls" } else { "plaintext" };
        let mut found = false;
        for filter in &chain.filters {
            let Some(filter::ConfigType::TypedConfig(config)) = &filter.config_type else { continue };
            if filter.name == NETWORK_RBAC {
                if let Ok(rbac) = NetworkRbac::decode(config.value.as_slice()) {
                    rows.push(vec![
                        port.value.to_string(),
                        transport.into(),
                        "tcp".into(),
                        names(rbac.rules.as_ref()),
                        names(rbac.shadow_rules.as_ref()),
                    ]);
                    found = true;
                }
            } else if let Ok(manager) = HttpConnectionManager::decode(config.value.as_slice()) {
                for http in manager.http_filters.iter().filter(|f| f.name == HTTP_RBAC) {
                    let Some(http_filter::ConfigType::TypedConfig(config)) = &http.config_type else {
                        continue;
                    };
                    if let Ok(rbac) = HttpRbac::decode(config.value.as_slice()) {
                        rows.push(vec![
                            port.value.to_string(),
                            transport.into(),
                            "http".into(),
                            names(rbac.rules.as_ref()),
                            names(rbac.shadow_rules.as_ref()),
                        ]);
                        found = true;
                    }
                }
            }
        }
        if !found {
            rows.push(vec![
                port.value.to_string(),
                transport.into(),
                "-".into(),
                "RBAC off: open".into(),
                "-".into(),
            ]);
        }
    }
    aligned(rows)
}

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
    aligned(rows)
}

/// Rows as columns padded to their widest cell, three spaces apart.
pub fn aligned(rows: Vec<Vec<String>>) -> String {
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
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        GenericSecret, PrivateKeyProvider, TlsSessionTicketKeys,
    };
    use envoy_types::pb::google::protobuf::Any;

    use super::*;
    use crate::ca::{Authority, Root, SpiffeId};
    use crate::translate::secret::{root_secret, workload_secret};
    use crate::xds::auth::tests::identity;
    use crate::xds::protocol::Protocol;
    use crate::xds::snapshot::Resources;
    use crate::xds::{Proxy, ProxyId};

    /// The base64 body of a PEM block, joined: what must never leak.
    fn pem_body(pem: &str) -> String {
        pem.lines().filter(|l| !l.starts_with("-----")).collect()
    }

    #[test]
    fn config_dump_shows_a_workload_certificate_and_not_a_byte_of_its_key() {
        let now = time::OffsetDateTime::now_utc();
        let root = Root::generate("cluster.local", now).expect("a root");
        let authority = Authority::from_root(&root, now).expect("a CA");
        let id = SpiffeId::new("cluster.local", "default", "bookinfo-productpage").expect("an id");
        let leaf = authority.issue_workload(&id, time::Duration::hours(24), now).expect("a leaf");
        let secrets =
            [workload_secret(&leaf.cert_chain_pem, &leaf.key_pem), root_secret(authority.trust_bundle_pem())];

        let connections = Connections::new("mesh-0");
        let node_id = "sidecar~10.1.2.3~productpage-v1-x.default~default.svc.cluster.local";
        let proxy = Proxy { id: ProxyId::parse(node_id).expect("valid"), identity: identity() };
        let registered = connections.register(proxy, node_id.to_string(), Protocol::Delta);
        registered.connection.update_report(|report| {
            let held = secrets.iter().map(|s| (s.name.clone(), crate::translate::any(s)));
            report.holding.insert(ResourceType::Secret, Resources::new(held));
        });

        let dump = config_dump(&connections, "default/productpage-v1-x").expect("the proxy is connected");
        let text = dump.to_string();
        let sds = &dump[0]["config"]["sds"]["resources"];
        assert_eq!(sds.as_array().map(Vec::len), Some(2), "{dump:#}");
        assert_eq!(sds[0]["name"], "ROOTCA");
        assert_eq!(sds[1]["name"], "default");
        assert_eq!(sds[1]["redacted"], true);
        assert!(sds[1].get("base64").is_none(), "a secret's bytes are shown: {dump:#}");
        let shown = sds[1]["debug"].as_str().expect("the secret is shown, redacted");
        assert!(shown.contains(REDACTED), "{shown}");

        // Every certificate of the chain and of the bundle is there to read...
        for pem in [leaf.cert_chain_pem.as_str(), authority.trust_bundle_pem()] {
            for line in pem.lines().filter(|l| !l.starts_with("-----")) {
                assert!(text.contains(line), "certificate line {line:?} is missing");
            }
        }
        // ...and nothing of the key's PEM, but what it shares with the
        // certificates (algorithm identifiers, the public key).
        assert!(!text.contains("PRIVATE KEY"), "{text}");
        let key = pem_body(&leaf.key_pem);
        let public = format!("{}{}", pem_body(&leaf.cert_chain_pem), pem_body(authority.trust_bundle_pem()));
        for line in leaf.key_pem.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!text.contains(line), "the dump shows the key's line {line:?}");
        }
        for at in 0..=key.len() - 16 {
            let piece = &key[at..at + 16];
            assert!(!text.contains(piece) || public.contains(piece), "the dump shows the key's {piece:?}");
        }
        // The private scalar itself, in any form a print could take.
        let der = base64::engine::general_purpose::STANDARD.decode(&key).expect("PEM base64");
        let at = der.windows(5).position(|w| w == [0x02, 0x01, 0x01, 0x04, 0x20]).expect("an EC key") + 5;
        let scalar = &der[at..at + 32];
        let hex: String = scalar.iter().map(|b| format!("{b:02x}")).collect();
        let decimal = format!("{scalar:?}");
        let decimal = decimal.trim_matches(['[', ']']);
        for form in [hex.as_str(), decimal, &base64::engine::general_purpose::STANDARD.encode(scalar)] {
            assert!(!text.contains(form), "the dump shows the private scalar as {form}");
        }
    }

    #[test]
    fn every_kind_of_secret_material_is_redacted() {
        let inline = |s: &str| DataSource {
            specifier: Some(data_source::Specifier::InlineString(s.into())),
            ..Default::default()
        };
        let marker = inline(REDACTED);
        let certificate = redacted(Secret {
            name: "default".into(),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: Some(inline("CHAIN")),
                private_key: Some(DataSource {
                    specifier: Some(data_source::Specifier::InlineBytes(b"KEY".to_vec())),
                    ..Default::default()
                }),
                pkcs12: Some(inline("PKCS12")),
                password: Some(inline("PASSWORD")),
                ocsp_staple: Some(inline("STAPLE")),
                private_key_provider: Some(PrivateKeyProvider {
                    provider_name: "hsm".into(),
                    config_type: Some(private_key_provider::ConfigType::TypedConfig(Any {
                        type_url: "type.googleapis.com/hsm.Config".into(),
                        value: b"PIN".to_vec(),
                    })),
                    fallback: false,
                }),
                ..Default::default()
            })),
        });
        let shown = format!("{certificate:?}");
        for secret in ["KEY", "PKCS12", "PASSWORD", "PIN"] {
            assert!(!shown.contains(&format!("\"{secret}\"")), "{secret} shown: {shown}");
        }
        let Some(secret::Type::TlsCertificate(c)) = certificate.r#type else { panic!("still a certificate") };
        assert_eq!(c.certificate_chain, Some(inline("CHAIN")));
        assert_eq!(c.ocsp_staple, Some(inline("STAPLE")));
        for source in [c.private_key, c.pkcs12, c.password] {
            assert_eq!(source.as_ref(), Some(&marker));
        }
        assert_eq!(c.private_key_provider.as_ref().map(|p| p.provider_name.as_str()), Some("hsm"));

        let tickets = redacted(Secret {
            name: "tickets".into(),
            r#type: Some(secret::Type::SessionTicketKeys(TlsSessionTicketKeys {
                keys: vec![inline("T1"), inline("T2")],
            })),
        });
        assert_eq!(
            tickets.r#type,
            Some(secret::Type::SessionTicketKeys(TlsSessionTicketKeys {
                keys: vec![marker.clone(), marker.clone()]
            }))
        );

        let hmac = redacted(Secret {
            name: "hmac".into(),
            r#type: Some(secret::Type::GenericSecret(GenericSecret {
                secret: Some(inline("HMAC")),
                secrets: [("token".to_string(), inline("OTHER"))].into(),
            })),
        });
        let shown = format!("{hmac:?}");
        assert!(!shown.contains("HMAC") && !shown.contains("OTHER"), "{shown}");

        // Where material is read from is no secret: a file name stays.
        let file = DataSource {
            specifier: Some(data_source::Specifier::Filename("/etc/certs/key.pem".into())),
            ..Default::default()
        };
        let from_file = redacted(Secret {
            name: "file".into(),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                private_key: Some(file.clone()),
                ..Default::default()
            })),
        });
        let Some(secret::Type::TlsCertificate(c)) = from_file.r#type else { panic!("still a certificate") };
        assert_eq!(c.private_key, Some(file));
    }

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
            certificate: None,
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

    #[test]
    fn the_secret_table_shows_a_proxys_certificate_and_never_a_key() {
        let status = SyncStatus {
            proxy: "sidecar~10.0.0.1~productpage-v1-x.default~default.svc.cluster.local".into(),
            pod: "default/productpage-v1-x".into(),
            namespace: "default".into(),
            name: "productpage-v1-x".into(),
            controller: "mesh-7d9f".into(),
            protocol: "SotW".into(),
            connected_since: "2025-01-01T00:00:00Z".into(),
            types: [("sds".to_string(), sync(Some("cccccccccccc"), Some("cccccccccccc"), None))].into(),
            certificate: Some(CertificateStatus {
                spiffe_id: "spiffe://cluster.local/ns/default/sa/bookinfo-productpage".into(),
                serial: "0a:1b".into(),
                not_before: "2025-01-01T00:00:00Z".into(),
                not_after: "2025-01-02T00:00:00Z".into(),
            }),
        };
        let statuses = std::slice::from_ref(&status);
        let expected = "\
RESOURCE NAME   SPIFFE ID                                                   SERIAL NUMBER   NOT BEFORE             NOT AFTER              SDS
default         spiffe://cluster.local/ns/default/sa/bookinfo-productpage   0a:1b           2025-01-01T00:00:00Z   2025-01-02T00:00:00Z   SYNCED (cccccccc)
";
        assert_eq!(secret_table(statuses, "default/productpage-v1-x").as_deref(), Some(expected));
        assert_eq!(secret_table(statuses, "productpage-v1-x.default").as_deref(), Some(expected));
        assert_eq!(secret_table(statuses, "default/details-v1-y"), None);
    }
}

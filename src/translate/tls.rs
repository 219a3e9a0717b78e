//! Transport security between sidecars, as Istio sets it up, so a mesh
//! sidecar and an Istio one could talk to each other:
//!
//! - **client side** ([`auto_mtls_matches`], [`client_transport_socket`]):
//!   with no DestinationRule `tls`, a cluster sends mutual TLS to the
//!   endpoints whose pod has a sidecar (its endpoint carries
//!   `tlsMode: istio` in the transport socket match metadata, from the
//!   pod label `security.istio.io/tlsMode` the injector sets) and plaintext
//!   to the others: Istio's auto mTLS. The client presents the `default`
//!   secret, checks the server's chain against `ROOTCA` and its SPIFFE ID
//!   against the Service's ServiceAccounts, and sends Istio's SNI
//!   (`outbound_.<port>_.<subset>_.<host>`) and ALPN (`istio-peer-exchange`,
//!   `istio`). A DestinationRule's `tls` replaces this: `ISTIO_MUTUAL`
//!   (mTLS to every endpoint), `DISABLE` (plaintext), `SIMPLE` and `MUTUAL`
//!   (TLS origination with files mounted in the sidecar).
//! - **server side** ([`inbound_mtls`]): a port in PERMISSIVE mode has a
//!   filter chain for TLS with Istio's ALPN (mutual TLS, the peer's chain
//!   checked against `ROOTCA`) beside its plaintext chain; in STRICT only
//!   the TLS chain; in DISABLE only plaintext.
//!
//! - **gateway servers** ([`gateway_server_tls`]): an HTTPS server's TLS
//!   terminated as Istio's `buildGatewayListenerTLSContext`: a
//!   `credentialName` as the SDS secret `kubernetes://<name>` (and, for
//!   MUTUAL, its CA as `kubernetes://<name>-cacert`), 1.1's files as file
//!   data sources, ISTIO_MUTUAL with the workload's own `default` and
//!   `ROOTCA`.
//!
//! Secrets are always named, never inlined: the xDS layer serves
//! `default` and `ROOTCA` for the stream's own identity
//! ([`super::secret`]).

use envoy_types::pb::envoy::config::cluster::v3::cluster::TransportSocketMatch;
use envoy_types::pb::envoy::config::core::v3::{DataSource, TransportSocket, data_source, transport_socket};
use envoy_types::pb::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
    SubjectAltNameMatcher, TlsCertificate, TlsParameters, UpstreamTlsContext, common_tls_context,
    subject_alt_name_matcher, tls_parameters,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use envoy_types::pb::google::protobuf::{BoolValue, Struct, Value, value};

use super::any;
use super::cluster::ads_config_source;
use super::secret::{CREDENTIAL_PREFIX, ROOT_SECRET, WORKLOAD_SECRET};
use crate::api::destination_rule::{ClientTlsSettings, TlsMode};
use crate::api::gateway::{ServerTlsMode, ServerTlsSettings};
use crate::model::credential::CA_SUFFIX;

/// The SDS names of a gateway server's certificate and of the CA its
/// client certificates are checked with: `kubernetes://<credentialName>`
/// and `kubernetes://<credentialName>-cacert`, as Istio names them.
pub fn credential_secret_names(credential_name: &str) -> (String, String) {
    let name = if credential_name.starts_with(CREDENTIAL_PREFIX) {
        credential_name.to_string()
    } else {
        format!("{CREDENTIAL_PREFIX}{credential_name}")
    };
    let ca = format!("{name}{CA_SUFFIX}");
    (name, ca)
}

/// The transport socket that terminates a gateway server's TLS, offering
/// `alpn`; None for a mode that does not terminate (PASSTHROUGH,
/// AUTO_PASSTHROUGH) or a SIMPLE/MUTUAL server with neither a
/// `credentialName` nor certificate files (validation refuses it).
pub fn gateway_server_tls(tls: &ServerTlsSettings, alpn: &[&str]) -> Option<TransportSocket> {
    let mode = tls.mode?;
    let mut common = CommonTlsContext {
        tls_params: Some(tls12_or_later()),
        alpn_protocols: alpn.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let verifies = matches!(mode, ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual);
    let credential = tls.credential_name.as_deref().filter(|n| !n.is_empty());
    match mode {
        ServerTlsMode::Passthrough | ServerTlsMode::AutoPassthrough => return None,
        ServerTlsMode::IstioMutual => {
            common.tls_certificate_sds_secret_configs = vec![sds(WORKLOAD_SECRET)];
            common.validation_context_type = Some(
                common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(sds(ROOT_SECRET)),
            );
        }
        ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual => {
            if let Some(credential) = credential {
                let (certificate, ca) = credential_secret_names(credential);
                common.tls_certificate_sds_secret_configs = vec![sds(&certificate)];
                if verifies {
                    common.validation_context_type = Some(
                        common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(sds(&ca)),
                    );
                }
            } else {
                let (certificate, key) = (tls.server_certificate.as_deref()?, tls.private_key.as_deref()?);
                common.tls_certificates = vec![TlsCertificate {
                    certificate_chain: Some(file(certificate)),
                    private_key: Some(file(key)),
                    ..Default::default()
                }];
                if verifies {
                    let ca = tls.ca_certificates.as_deref().filter(|c| !c.is_empty())?;
                    common.validation_context_type =
                        Some(common_tls_context::ValidationContextType::ValidationContext(
                            CertificateValidationContext { trusted_ca: Some(file(ca)), ..Default::default() },
                        ));
                }
            }
        }
    }
    let context = DownstreamTlsContext {
        require_client_certificate: Some(BoolValue {
            value: matches!(mode, ServerTlsMode::Mutual | ServerTlsMode::IstioMutual),
        }),
        common_tls_context: Some(common),
        ..Default::default()
    };
    Some(TransportSocket {
        name: TLS_SOCKET.to_string(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(&context))),
    })
}

/// The pod label Istio's injector sets on pods with a sidecar, and its
/// value (the model's: ServiceEntry endpoints carry it too).
pub use crate::model::mesh::{TLS_MODE_ISTIO, TLS_MODE_LABEL};

/// The metadata key Envoy matches transport sockets on.
pub const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";

/// What a mesh client offers: Istio's in-mesh ALPN.
pub const CLIENT_ALPN: [&str; 2] = ["istio-peer-exchange", "istio"];

/// Every ALPN value Istio's clients send in the mesh; a server's mTLS chain
/// matches on them, so other TLS (the application's own) passes through.
pub const MESH_ALPN: [&str; 5] =
    ["istio-peer-exchange", "istio", "istio-http/1.0", "istio-http/1.1", "istio-h2"];

/// Where Debian (and the mesh's Envoy image) keeps the system's trusted roots,
/// used to verify a server when a DestinationRule asks for TLS without
/// `caCertificates`.
pub const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

const TLS_SOCKET: &str = "envoy.transport_sockets.tls";
const RAW_SOCKET: &str = "envoy.transport_sockets.raw_buffer";

/// Istio's SNI for in-mesh mTLS: `outbound_.<port>_.<subset>_.<host>`
/// (`outbound_.9080_._.reviews...` for the whole Service).
pub fn mesh_sni(port: u16, subset: &str, host: &str) -> String {
    format!("outbound_.{port}_.{subset}_.{host}")
}

/// The SPIFFE ID of a ServiceAccount: what a peer's certificate carries.
pub fn spiffe_id(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
}

/// The endpoint metadata (a namespace of it) that selects the mTLS
/// transport socket.
pub fn istio_endpoint_metadata() -> (String, Struct) {
    let fields = [("tlsMode".to_string(), string_value(TLS_MODE_ISTIO))].into();
    (TRANSPORT_SOCKET_MATCH.to_string(), Struct { fields })
}

/// Istio's auto mTLS: mutual TLS to endpoints with a sidecar, plaintext to the rest.
pub fn auto_mtls_matches(sni: &str, peer_ids: &[String]) -> Vec<TransportSocketMatch> {
    vec![
        TransportSocketMatch {
            name: "tlsMode-istio".to_string(),
            r#match: Some(Struct { fields: [("tlsMode".to_string(), string_value(TLS_MODE_ISTIO))].into() }),
            transport_socket: Some(upstream_socket(&istio_mutual(sni, peer_ids))),
        },
        TransportSocketMatch {
            name: "tlsMode-disabled".to_string(),
            r#match: Some(Struct::default()),
            transport_socket: Some(raw_buffer()),
        },
    ]
}

/// The transport socket a DestinationRule's `tls` asks for; `None` for
/// plaintext (`DISABLE`). `sni` and `peer_ids` are the mesh defaults
/// `ISTIO_MUTUAL` uses when the rule names none.
pub fn client_transport_socket(
    tls: &ClientTlsSettings,
    sni: &str,
    peer_ids: &[String],
) -> Option<TransportSocket> {
    let mode = tls.mode.unwrap_or(TlsMode::Disable);
    let context = match mode {
        TlsMode::Disable => return None,
        TlsMode::IstioMutual => {
            let sni = tls.sni.as_deref().unwrap_or(sni);
            let ids: Vec<String> = if tls.subject_alt_names.is_empty() {
                peer_ids.to_vec()
            } else {
                tls.subject_alt_names.clone()
            };
            istio_mutual(sni, &ids)
        }
        TlsMode::Simple | TlsMode::Mutual => originate(tls, mode == TlsMode::Mutual),
    };
    Some(upstream_socket(&context))
}

/// TLS origination to a server outside the mesh's identities: verified
/// against `caCertificates` (or the system's roots) unless
/// `insecureSkipVerify`; with the client certificate for `MUTUAL`.
fn originate(tls: &ClientTlsSettings, mutual: bool) -> UpstreamTlsContext {
    let validation = (!tls.insecure_skip_verify.unwrap_or(false)).then(|| CertificateValidationContext {
        trusted_ca: Some(file(tls.ca_certificates.as_deref().unwrap_or(SYSTEM_ROOTS))),
        match_typed_subject_alt_names: any_san(&tls.subject_alt_names),
        ..Default::default()
    });
    let certificates = match (mutual, &tls.client_certificate, &tls.private_key) {
        (true, Some(chain), Some(key)) => vec![TlsCertificate {
            certificate_chain: Some(file(chain)),
            private_key: Some(file(key)),
            ..Default::default()
        }],
        _ => Vec::new(),
    };
    UpstreamTlsContext {
        sni: tls.sni.clone().unwrap_or_default(),
        common_tls_context: Some(CommonTlsContext {
            tls_params: Some(tls12_or_later()),
            tls_certificates: certificates,
            validation_context_type: validation
                .map(common_tls_context::ValidationContextType::ValidationContext),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Mutual TLS with the mesh's own certificate, checking the server's chain
/// against the mesh root and, when known, its SPIFFE ID.
fn istio_mutual(sni: &str, peer_ids: &[String]) -> UpstreamTlsContext {
    UpstreamTlsContext {
        sni: sni.to_string(),
        common_tls_context: Some(CommonTlsContext {
            tls_params: Some(tls12_or_later()),
            alpn_protocols: CLIENT_ALPN.iter().map(|s| s.to_string()).collect(),
            tls_certificate_sds_secret_configs: vec![sds(WORKLOAD_SECRET)],
            validation_context_type: Some(
                common_tls_context::ValidationContextType::CombinedValidationContext(
                    common_tls_context::CombinedCertificateValidationContext {
                        default_validation_context: Some(CertificateValidationContext {
                            match_typed_subject_alt_names: uri_sans(peer_ids),
                            ..Default::default()
                        }),
                        validation_context_sds_secret_config: Some(sds(ROOT_SECRET)),
                        ..Default::default()
                    },
                ),
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The server side of mutual TLS on an inbound port: the workload's own
/// certificate, a client certificate required and checked against the
/// mesh root. `alpn` is what the server negotiates (HTTP ports: h2 and
/// HTTP/1.1; TCP: none).
pub fn inbound_mtls(alpn: &[&str]) -> TransportSocket {
    let context = DownstreamTlsContext {
        require_client_certificate: Some(BoolValue { value: true }),
        common_tls_context: Some(CommonTlsContext {
            tls_params: Some(tls12_or_later()),
            alpn_protocols: alpn.iter().map(|s| s.to_string()).collect(),
            tls_certificate_sds_secret_configs: vec![sds(WORKLOAD_SECRET)],
            validation_context_type: Some(
                common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(sds(ROOT_SECRET)),
            ),
            ..Default::default()
        }),
        ..Default::default()
    };
    TransportSocket {
        name: TLS_SOCKET.to_string(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(&context))),
    }
}

fn upstream_socket(context: &UpstreamTlsContext) -> TransportSocket {
    TransportSocket {
        name: TLS_SOCKET.to_string(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(context))),
    }
}

fn raw_buffer() -> TransportSocket {
    TransportSocket {
        name: RAW_SOCKET.to_string(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(&RawBuffer {}))),
    }
}

fn sds(name: &str) -> SdsSecretConfig {
    SdsSecretConfig { name: name.to_string(), sds_config: Some(ads_config_source()) }
}

fn tls12_or_later() -> TlsParameters {
    TlsParameters {
        tls_minimum_protocol_version: tls_parameters::TlsProtocol::TlSv12.into(),
        ..Default::default()
    }
}

fn file(path: &str) -> DataSource {
    DataSource { specifier: Some(data_source::Specifier::Filename(path.to_string())), ..Default::default() }
}

fn exact(value: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::Exact(value.to_string())),
        ..Default::default()
    }
}

/// SPIFFE IDs, matched as URI SANs.
fn uri_sans(ids: &[String]) -> Vec<SubjectAltNameMatcher> {
    ids.iter()
        .map(|id| SubjectAltNameMatcher {
            san_type: subject_alt_name_matcher::SanType::Uri.into(),
            matcher: Some(exact(id)),
            ..Default::default()
        })
        .collect()
}

/// Names a DestinationRule lists, which may be DNS names or URIs: each
/// matched as either, as Istio matches `subjectAltNames`.
fn any_san(names: &[String]) -> Vec<SubjectAltNameMatcher> {
    let kinds = [subject_alt_name_matcher::SanType::Dns, subject_alt_name_matcher::SanType::Uri];
    names
        .iter()
        .flat_map(|name| {
            kinds.iter().map(move |kind| SubjectAltNameMatcher {
                san_type: (*kind).into(),
                matcher: Some(exact(name)),
                ..Default::default()
            })
        })
        .collect()
}

pub(super) fn string_value(text: &str) -> Value {
    Value { kind: Some(value::Kind::StringValue(text.to_string())) }
}

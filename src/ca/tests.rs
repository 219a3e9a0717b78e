//! End-to-end tests of the CA: roots, plugged-in chains, issuance and every cacerts error.
//! Time is fixed, keys are fresh; the one RSA key is a test-only fixture (ring cannot generate
//! RSA keys).

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ED25519,
};
use time::{Duration, OffsetDateTime};
use x509_parser::extensions::ParsedExtension;
use x509_parser::oid_registry::{OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER, OID_X509_EXT_SUBJECT_ALT_NAME};

use super::cert::{certificates, encode_pem, parse};
use super::*;

const TD: &str = "cluster.local";
const RSA_KEY_PKCS1: &str = include_str!("testdata/rsa2048-pkcs1.pem");

/// 2025-06-01T00:00:00Z.
fn t0() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_748_736_000).unwrap()
}

fn workload_id() -> SpiffeId {
    SpiffeId::new(TD, "default", "bookinfo-productpage").unwrap()
}

/// A CA certificate (self-signed or not) in the shape operators make them.
struct TestCa {
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca_params(cn: &str, not_before: OffsetDateTime, not_after: OffsetDateTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Example Corp");
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before;
    params.not_after = not_after;
    params
}

fn default_params(cn: &str) -> CertificateParams {
    ca_params(cn, t0() - Duration::days(30), t0() + Duration::days(365))
}

fn self_signed(params: CertificateParams) -> TestCa {
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    TestCa { cert_pem: cert.pem(), key_pem: key.serialize_pem(), issuer: Issuer::new(params, key) }
}

fn signed(params: CertificateParams, key: KeyPair, by: &TestCa) -> TestCa {
    let cert = params.signed_by(&key, &by.issuer).unwrap();
    TestCa { cert_pem: cert.pem(), key_pem: key.serialize_pem(), issuer: Issuer::new(params, key) }
}

fn intermediate(by: &TestCa) -> TestCa {
    signed(default_params("Example Intermediate CA"), KeyPair::generate().unwrap(), by)
}

/// Istio's layout: cert-chain.pem = ca-cert.pem followed by root-cert.pem.
fn cacerts(ca: &TestCa, chain: &[&TestCa], root: &TestCa) -> CaCerts {
    CaCerts {
        ca_cert: ca.cert_pem.clone(),
        ca_key: ca.key_pem.clone(),
        root_cert: root.cert_pem.clone(),
        cert_chain: chain.iter().map(|c| c.cert_pem.as_str()).collect(),
    }
}

fn secret_data(c: &CaCerts) -> BTreeMap<String, ByteString> {
    [(CA_CERT, &c.ca_cert), (CA_KEY, &c.ca_key), (ROOT_CERT, &c.root_cert), (CERT_CHAIN, &c.cert_chain)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
        .collect()
}

/// Verifies each certificate is signed by the next and the last by itself; returns the chain.
fn verify_chain(chain_pem: &str) -> Vec<CertInfo> {
    let ders = certificates("chain", chain_pem).unwrap();
    for link in ders.windows(2) {
        let child = parse("chain", 0, &link[0]).unwrap();
        let parent = parse("chain", 1, &link[1]).unwrap();
        child.verify_signature(Some(parent.public_key())).unwrap();
        assert_eq!(child.issuer().as_raw(), parent.subject().as_raw(), "issuer name of {}", child.subject());
    }
    let root = parse("chain", ders.len() - 1, ders.last().unwrap()).unwrap();
    root.verify_signature(None).unwrap();
    CertInfo::chain_from_pem(chain_pem).unwrap()
}

fn assert_key_matches_leaf(leaf: &Leaf) {
    let key = KeyPair::from_pem(&leaf.key_pem).unwrap();
    let ders = certificates("leaf", &leaf.cert_chain_pem).unwrap();
    let cert = parse("leaf", 0, &ders[0]).unwrap();
    assert_eq!(key.public_key_raw(), cert.public_key().subject_public_key.data.as_ref());
}

fn load_err(c: &CaCerts) -> CaError {
    Authority::from_cacerts(c, t0()).unwrap_err()
}

// ---- generated root ----

#[test]
fn generated_root_round_trips() {
    let root = Root::generate(TD, t0()).unwrap();
    assert!(root.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8 key");
    let info = CertInfo::from_pem(&root.cert_pem).unwrap();
    assert!(info.is_ca);
    assert_eq!(info.common_name.as_deref(), Some("mesh root CA"));
    assert!(info.subject.contains("O=cluster.local"), "{}", info.subject);
    assert_eq!(info.subject, info.issuer, "self-signed");
    assert_eq!(info.not_before, t0() - BACKDATE);
    assert_eq!(info.not_after, t0() + ROOT_LIFETIME);

    let ders = certificates("root", &root.cert_pem).unwrap();
    let cert = parse("root", 0, &ders[0]).unwrap();
    cert.verify_signature(None).unwrap();
    let usage = cert.key_usage().unwrap().unwrap().value;
    assert!(usage.key_cert_sign() && usage.crl_sign());
    assert!(cert.basic_constraints().unwrap().unwrap().value.ca);

    let ca = Authority::from_root(&root, t0()).unwrap();
    assert_eq!(ca.origin(), CaOrigin::Generated);
    assert_eq!(ca.ca_cert(), &info);
    assert_eq!(ca.trust_bundle_pem(), root.cert_pem.replace("\r\n", "\n"));
    // A later process loads the stored root years on, within its lifetime.
    assert!(Authority::from_root(&root, t0() + Duration::days(3000)).is_ok());
}

#[test]
fn generated_root_rejects_bad_trust_domain() {
    let err = Root::generate("Cluster Local", t0()).unwrap_err();
    assert!(matches!(err, CaError::InvalidName { kind: "trust domain", .. }), "{err}");
}

#[test]
fn stored_root_that_does_not_match_its_key_is_refused() {
    let mut root = Root::generate(TD, t0()).unwrap();
    root.key_pem = KeyPair::generate().unwrap().serialize_pem();
    let err = Authority::from_root(&root, t0()).unwrap_err();
    assert!(matches!(err, CaError::KeyMismatch { origin: CaOrigin::Generated }), "{err}");
    assert!(err.to_string().contains("delete it so that a new root is generated"), "{err}");
}

#[test]
fn authority_is_shareable_across_tasks() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Authority>();
}

// ---- serving certificates ----

#[test]
fn serving_certificate_verifies_against_the_root() {
    let root = Root::generate(TD, t0()).unwrap();
    let ca = Authority::from_root(&root, t0()).unwrap();
    let names = service_dns_names("mesh", "mesh-system", TD);
    assert_eq!(names, ["mesh.mesh-system.svc.cluster.local", "mesh.mesh-system.svc"]);
    let leaf = ca.issue_serving(&names, DEFAULT_LEAF_LIFETIME, t0()).unwrap();

    let chain = verify_chain(&leaf.cert_chain_pem);
    assert_eq!(chain.len(), 2, "leaf + root");
    assert_eq!(chain[1], CertInfo::from_pem(&root.cert_pem).unwrap());
    let info = &chain[0];
    assert_eq!(info, &leaf.cert);
    assert!(!info.is_ca);
    assert_eq!(info.dns_names, names);
    assert!(info.uris.is_empty());
    assert_eq!(info.common_name.as_deref(), Some("mesh.mesh-system.svc.cluster.local"));
    assert_eq!(info.not_after - info.not_before, DEFAULT_LEAF_LIFETIME + BACKDATE);

    let ders = certificates("leaf", &leaf.cert_chain_pem).unwrap();
    let cert = parse("leaf", 0, &ders[0]).unwrap();
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && !eku.client_auth);
    let usage = cert.key_usage().unwrap().unwrap().value;
    assert!(usage.digital_signature() && !usage.key_cert_sign());
    assert!(!cert.basic_constraints().unwrap().unwrap().value.ca);
    assert!(cert.get_extension_unique(&OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER).unwrap().is_some());
    assert_key_matches_leaf(&leaf);

    // A fresh key every time.
    let again = ca.issue_serving(&names, DEFAULT_LEAF_LIFETIME, t0()).unwrap();
    assert_ne!(again.key_pem, leaf.key_pem);
}

#[test]
fn serving_certificate_input_errors() {
    let ca = Authority::from_root(&Root::generate(TD, t0()).unwrap(), t0()).unwrap();
    let none: [&str; 0] = [];
    assert!(matches!(ca.issue_serving(&none, DEFAULT_LEAF_LIFETIME, t0()), Err(CaError::NoDnsNames)));
    for bad in ["Mesh.svc", "mesh..svc", "*.mesh.svc", "mesh svc", ""] {
        let err = ca.issue_serving(&["ok.svc", bad], DEFAULT_LEAF_LIFETIME, t0()).unwrap_err();
        assert!(matches!(err, CaError::InvalidName { kind: "DNS name", .. }), "{bad:?}: {err}");
    }
    for lifetime in [Duration::ZERO, Duration::hours(-1)] {
        let err = ca.issue_serving(&["ok.svc"], lifetime, t0()).unwrap_err();
        assert!(matches!(err, CaError::InvalidLifetime(_)), "{err}");
    }
}

// ---- workload certificates ----

#[test]
fn workload_certificate_carries_the_spiffe_id_and_both_usages() {
    let ca = Authority::from_root(&Root::generate(TD, t0()).unwrap(), t0()).unwrap();
    let leaf = ca.issue_workload(&workload_id(), DEFAULT_LEAF_LIFETIME, t0()).unwrap();
    let chain = verify_chain(&leaf.cert_chain_pem);
    let info = &chain[0];
    assert_eq!(info.uris, ["spiffe://cluster.local/ns/default/sa/bookinfo-productpage"]);
    assert!(info.dns_names.is_empty());
    assert_eq!(info.subject, "");
    assert_eq!(info.common_name, None);
    assert_eq!(info.not_after, t0() + DEFAULT_LEAF_LIFETIME);

    let ders = certificates("leaf", &leaf.cert_chain_pem).unwrap();
    let cert = parse("leaf", 0, &ders[0]).unwrap();
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    let san = cert.get_extension_unique(&OID_X509_EXT_SUBJECT_ALT_NAME).unwrap().unwrap();
    assert!(san.critical, "an empty subject requires a critical SAN");
    assert!(matches!(san.parsed_extension(), ParsedExtension::SubjectAlternativeName(_)));
    assert_key_matches_leaf(&leaf);

    let short = ca.issue_workload(&workload_id(), Duration::hours(1), t0()).unwrap();
    assert_eq!(short.cert.not_after, t0() + Duration::hours(1));
}

#[test]
fn leaves_end_with_their_ca_and_are_refused_after_it() {
    let root = self_signed(ca_params("Short Root", t0() - Duration::days(1), t0() + Duration::hours(2)));
    // A self-signed plugged-in CA: ca-cert.pem is the root.
    let ca = Authority::from_cacerts(&cacerts(&root, &[], &root), t0()).unwrap();
    let leaf = ca.issue_workload(&workload_id(), DEFAULT_LEAF_LIFETIME, t0()).unwrap();
    assert_eq!(leaf.cert.not_after, t0() + Duration::hours(2));
    let err =
        ca.issue_workload(&workload_id(), DEFAULT_LEAF_LIFETIME, t0() + Duration::hours(3)).unwrap_err();
    assert!(matches!(err, CaError::Expired { file: CA_CERT, .. }), "{err}");
}

// ---- plugged-in CA ----

#[test]
fn plugged_in_intermediate_issues_a_full_chain() {
    let root = self_signed(default_params("Example Root CA"));
    let int = intermediate(&root);
    let c = CaCerts::from_secret_data(&secret_data(&cacerts(&int, &[&int, &root], &root))).unwrap();
    let ca = Authority::from_cacerts(&c, t0()).unwrap();
    assert_eq!(ca.origin(), CaOrigin::PluggedIn);
    assert_eq!(ca.ca_cert().common_name.as_deref(), Some("Example Intermediate CA"));
    assert_eq!(ca.trust_bundle_pem(), root.cert_pem.replace("\r\n", "\n"));

    let leaf = ca.issue_workload(&workload_id(), DEFAULT_LEAF_LIFETIME, t0()).unwrap();
    let chain = verify_chain(&leaf.cert_chain_pem);
    let names: Vec<_> = chain.iter().map(|c| c.common_name.clone()).collect();
    assert_eq!(
        names,
        [None, Some("Example Intermediate CA".to_string()), Some("Example Root CA".to_string())],
        "leaf -> intermediate -> root, root not repeated"
    );
    assert_key_matches_leaf(&leaf);
}

#[test]
fn plugged_in_chain_variants() {
    let root = self_signed(default_params("Example Root CA"));
    let int1 = intermediate(&root);
    let int2 = signed(default_params("Example Issuing CA"), KeyPair::generate().unwrap(), &int1);
    let expected = ["Example Issuing CA", "Example Intermediate CA", "Example Root CA"];

    // cert-chain.pem without ca-cert and without the root: both are added.
    // With everything, in Istio's order: nothing is repeated.
    for chain in [vec![&int1], vec![&int2, &int1], vec![&int2, &int1, &root]] {
        let ca = Authority::from_cacerts(&cacerts(&int2, &chain, &root), t0()).unwrap();
        let leaf = ca.issue_serving(&["a.b.svc"], DEFAULT_LEAF_LIFETIME, t0()).unwrap();
        let names: Vec<_> =
            verify_chain(&leaf.cert_chain_pem)[1..].iter().map(|c| c.common_name.clone().unwrap()).collect();
        assert_eq!(names, expected, "cert-chain.pem of {} certificates", chain.len());
    }

    // No cert-chain.pem at all when the root signed ca-cert directly.
    let mut data = secret_data(&cacerts(&int1, &[], &root));
    data.remove(CERT_CHAIN);
    let ca = Authority::from_cacerts(&CaCerts::from_secret_data(&data).unwrap(), t0()).unwrap();
    let leaf = ca.issue_workload(&workload_id(), DEFAULT_LEAF_LIFETIME, t0()).unwrap();
    assert_eq!(verify_chain(&leaf.cert_chain_pem).len(), 3);

    // A trust bundle of two roots (mid root rotation) publishes both.
    let other_root = self_signed(default_params("Next Root CA"));
    let mut c = cacerts(&int1, &[&int1], &root);
    c.root_cert = format!("{}{}", other_root.cert_pem, root.cert_pem);
    let ca = Authority::from_cacerts(&c, t0()).unwrap();
    assert_eq!(CertInfo::chain_from_pem(ca.trust_bundle_pem()).unwrap().len(), 2);
    let leaf = ca.issue_workload(&workload_id(), DEFAULT_LEAF_LIFETIME, t0()).unwrap();
    assert_eq!(verify_chain(&leaf.cert_chain_pem)[2].common_name.as_deref(), Some("Example Root CA"));
}

#[test]
fn plugged_in_rsa_intermediate_with_pkcs1_key() {
    let root = self_signed(default_params("Example Root CA"));
    // rcgen on ring reads only PKCS#8, so the fixture goes through the loader under test.
    let rsa = super::key::load("fixture", RSA_KEY_PKCS1).unwrap();
    let mut int = signed(default_params("Example RSA Intermediate"), rsa, &root);
    int.key_pem = RSA_KEY_PKCS1.to_string();
    let ca = Authority::from_cacerts(&cacerts(&int, &[&int, &root], &root), t0()).unwrap();
    let leaf = ca.issue_workload(&workload_id(), DEFAULT_LEAF_LIFETIME, t0()).unwrap();
    assert_eq!(verify_chain(&leaf.cert_chain_pem).len(), 3);
}

#[test]
fn plugged_in_ec_intermediate_with_sec1_key() {
    let root = self_signed(default_params("Example Root CA"));
    let mut int = intermediate(&root);
    let pkcs8 = KeyPair::from_pem(&int.key_pem).unwrap().serialize_der();
    int.key_pem = encode_pem("EC PRIVATE KEY", &pkcs8_private_key(&pkcs8));
    let ca = Authority::from_cacerts(&cacerts(&int, &[&int, &root], &root), t0()).unwrap();
    let leaf = ca.issue_workload(&workload_id(), DEFAULT_LEAF_LIFETIME, t0()).unwrap();
    assert_eq!(verify_chain(&leaf.cert_chain_pem).len(), 3);
}

// ---- plugged-in errors, one per mistake ----

#[test]
fn missing_files() {
    let root = self_signed(default_params("Example Root CA"));
    let int = intermediate(&root);
    for file in [CA_CERT, CA_KEY, ROOT_CERT] {
        let mut data = secret_data(&cacerts(&int, &[&int, &root], &root));
        data.remove(file);
        let err = CaCerts::from_secret_data(&data).unwrap_err();
        assert!(matches!(err, CaError::MissingFile { file: f } if f == file), "{err}");
        data.insert(file.to_string(), ByteString(b"  \n".to_vec()));
        assert!(matches!(CaCerts::from_secret_data(&data), Err(CaError::MissingFile { .. })));
    }
}

#[test]
fn key_that_does_not_match_ca_cert() {
    let root = self_signed(default_params("Example Root CA"));
    let int = intermediate(&root);
    let mut c = cacerts(&int, &[&int, &root], &root);
    c.ca_key = root.key_pem.clone();
    let err = load_err(&c);
    assert!(matches!(err, CaError::KeyMismatch { origin: CaOrigin::PluggedIn }), "{err}");
    assert_eq!(
        err.to_string(),
        "cacerts: ca-key.pem does not match ca-cert.pem: put the intermediate's own key in ca-key.pem"
    );
}

#[test]
fn ca_cert_that_is_not_a_ca() {
    let root = self_signed(default_params("Example Root CA"));
    let mut params = default_params("Not A CA");
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let leaf = signed(params, KeyPair::generate().unwrap(), &root);
    let err = load_err(&cacerts(&leaf, &[&leaf, &root], &root));
    assert!(matches!(err, CaError::NotCa { .. }), "{err}");
    assert!(err.to_string().contains("CN=Not A CA"), "{err}");
}

#[test]
fn ca_cert_without_key_cert_sign() {
    let root = self_signed(default_params("Example Root CA"));
    let mut params = default_params("No Signing");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let int = signed(params, KeyPair::generate().unwrap(), &root);
    let err = load_err(&cacerts(&int, &[&int, &root], &root));
    assert!(matches!(err, CaError::CannotSign { .. }), "{err}");
}

#[test]
fn ca_cert_expired_or_not_yet_valid() {
    let root = self_signed(default_params("Example Root CA"));
    let params = ca_params("Old Intermediate", t0() - Duration::days(400), t0() - Duration::days(1));
    let old = signed(params, KeyPair::generate().unwrap(), &root);
    let err = load_err(&cacerts(&old, &[&old, &root], &root));
    assert!(matches!(err, CaError::Expired { file: CA_CERT, .. }), "{err}");
    assert!(err.to_string().contains("expired at 2025-05-31T00:00:00Z"), "{err}");

    let params = ca_params("Future Intermediate", t0() + Duration::days(1), t0() + Duration::days(400));
    let future = signed(params, KeyPair::generate().unwrap(), &root);
    let err = load_err(&cacerts(&future, &[&future, &root], &root));
    assert!(matches!(err, CaError::NotYetValid { file: CA_CERT, .. }), "{err}");
}

#[test]
fn expired_root_is_reported() {
    let root = self_signed(ca_params("Old Root", t0() - Duration::days(400), t0() - Duration::days(1)));
    let params = default_params("Example Intermediate CA");
    let int = signed(params, KeyPair::generate().unwrap(), &root);
    let err = load_err(&cacerts(&int, &[&int], &root));
    assert!(matches!(err, CaError::Expired { file: ROOT_CERT, .. }), "{err}");
}

#[test]
fn chain_out_of_order() {
    let root = self_signed(default_params("Example Root CA"));
    let int1 = intermediate(&root);
    let int2 = signed(default_params("Example Issuing CA"), KeyPair::generate().unwrap(), &int1);
    let err = load_err(&cacerts(&int2, &[&int2, &root, &int1], &root));
    assert!(matches!(err, CaError::ChainBroken { .. }), "{err}");
    assert!(err.to_string().contains("CN=Example Issuing CA is not signed by"), "{err}");
}

#[test]
fn chain_that_does_not_lead_to_root_cert() {
    let root = self_signed(default_params("Example Root CA"));
    let stranger = self_signed(default_params("Unrelated Root CA"));
    let int = intermediate(&root);
    let err = load_err(&cacerts(&int, &[&int], &stranger));
    assert!(matches!(err, CaError::ChainDoesNotReachRoot { .. }), "{err}");
    assert!(err.to_string().contains("put the root that issued it in root-cert.pem"), "{err}");
}

#[test]
fn unsupported_key_type() {
    let root = self_signed(default_params("Example Root CA"));
    let ed = KeyPair::generate_for(&PKCS_ED25519).unwrap();
    let int = signed(default_params("Ed25519 Intermediate"), ed, &root);
    let err = load_err(&cacerts(&int, &[&int, &root], &root));
    assert!(matches!(&err, CaError::UnsupportedKey { found, .. } if found == "Ed25519"), "{err}");
    assert!(err.to_string().contains("use ECDSA P-256 (recommended)"), "{err}");
}

#[test]
fn unreadable_material() {
    let root = self_signed(default_params("Example Root CA"));
    let int = intermediate(&root);
    let good = cacerts(&int, &[&int, &root], &root);

    let mut c = good.clone();
    c.ca_key = encode_pem("ENCRYPTED PRIVATE KEY", &[0x30, 0x00]);
    assert!(matches!(load_err(&c), CaError::EncryptedKey { .. }));

    let mut c = good.clone();
    c.ca_cert = c.ca_key.clone();
    assert!(matches!(load_err(&c), CaError::NoCertificate { .. }));

    let mut c = good.clone();
    c.root_cert = "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n".into();
    assert!(matches!(load_err(&c), CaError::Pem { .. } | CaError::BadCertificate { .. }));

    let mut data = secret_data(&good);
    data.insert(CA_CERT.to_string(), ByteString(vec![0xff, 0xfe]));
    assert!(matches!(CaCerts::from_secret_data(&data), Err(CaError::Pem { .. })));
}

#[test]
fn debug_output_hides_keys() {
    let root = Root::generate(TD, t0()).unwrap();
    let ca = Authority::from_root(&root, t0()).unwrap();
    let leaf = ca.issue_workload(&workload_id(), DEFAULT_LEAF_LIFETIME, t0()).unwrap();
    let c = CaCerts { ca_key: root.key_pem.clone(), ..CaCerts::default() };
    for shown in [format!("{root:?}"), format!("{ca:?}"), format!("{leaf:?}"), format!("{c:?}")] {
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
    }
}

// ---- DER helpers: turn a PKCS#8 key back into the older encodings operators have ----

/// The contents of a DER TLV at the start of `input`, and what follows it.
fn tlv(input: &[u8]) -> (u8, &[u8], &[u8]) {
    let tag = input[0];
    let (len, header) = match input[1] {
        n if n < 0x80 => (n as usize, 2),
        n => {
            let count = (n & 0x7f) as usize;
            let len = input[2..2 + count].iter().fold(0usize, |acc, &b| acc << 8 | b as usize);
            (len, 2 + count)
        }
    };
    (tag, &input[header..header + len], &input[header + len..])
}

/// The algorithm-specific key inside PKCS#8 (SEC1 for EC, PKCS#1 for RSA).
fn pkcs8_private_key(pkcs8: &[u8]) -> Vec<u8> {
    let (_, body, _) = tlv(pkcs8);
    let (_, _version, rest) = tlv(body);
    let (_, _algorithm, rest) = tlv(rest);
    let (tag, key, _) = tlv(rest);
    assert_eq!(tag, 0x04);
    key.to_vec()
}

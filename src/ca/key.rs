//! Loading a CA's private key, and telling which key types the CA can sign with.
//!
//! rcgen on ring only reads PKCS#8, but cert-manager and older OpenSSL write SEC1
//! (`EC PRIVATE KEY`) and PKCS#1 (`RSA PRIVATE KEY`); both are wrapped into PKCS#8 here
//! rather than asking users to convert.

use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_RSA_SHA256};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_EC_P521, OID_PKCS1_RSAENCRYPTION,
    OID_SIG_ED448, OID_SIG_ED25519,
};
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use super::cert::blocks;
use super::error::CaError;

// DER of the AlgorithmIdentifier contents (inside the SEQUENCE) that PKCS#8 needs.
const ALG_EC_P256: &[u8] = &[
    0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, // id-ecPublicKey
    0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, // prime256v1
];
const ALG_EC_P384: &[u8] = &[
    0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, // id-ecPublicKey
    0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22, // secp384r1
];
const ALG_RSA: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, // rsaEncryption
    0x05, 0x00, // NULL parameters
];

// ring signs with RSA keys of this size only.
const RSA_BITS: std::ops::RangeInclusive<usize> = 2048..=8192;

/// Checks that a certificate's public key is of a type the CA can sign with; `Err` describes
/// the type found, for [`CaError::UnsupportedKey`].
pub(crate) fn check_supported(spki: &SubjectPublicKeyInfo<'_>) -> Result<(), String> {
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
        return match curve {
            Some(c) if c == OID_EC_P256 || c == OID_NIST_EC_P384 => Ok(()),
            Some(c) if c == OID_NIST_EC_P521 => Err("ECDSA P-521".to_string()),
            Some(c) => Err(format!("ECDSA (curve {c})")),
            None => Err("ECDSA (unnamed curve)".to_string()),
        };
    }
    if *alg == OID_PKCS1_RSAENCRYPTION {
        return match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => {
                let bits = rsa_bits(rsa.modulus);
                if RSA_BITS.contains(&bits) { Ok(()) } else { Err(format!("RSA {bits}-bit")) }
            }
            _ => Err("RSA (unreadable)".to_string()),
        };
    }
    if *alg == OID_SIG_ED25519 {
        return Err("Ed25519".to_string());
    }
    if *alg == OID_SIG_ED448 {
        return Err("Ed448".to_string());
    }
    Err(format!("algorithm {alg}"))
}

/// Loads the first private key in `pem`; `what` names the file in errors.
pub(crate) fn load(what: &str, pem: &str) -> Result<KeyPair, CaError> {
    // Legacy OpenSSL encryption keeps the `RSA PRIVATE KEY` label and adds these headers.
    if pem.contains("Proc-Type: 4,ENCRYPTED") {
        return Err(CaError::EncryptedKey { what: what.to_string() });
    }
    for block in blocks(what, pem)? {
        let candidates: Vec<Vec<u8>> = match block.label.as_str() {
            "PRIVATE KEY" => vec![block.contents],
            // SEC1 does not always name its curve; ring rejects the wrong one, so try both.
            "EC PRIVATE KEY" => {
                vec![pkcs8(ALG_EC_P256, &block.contents), pkcs8(ALG_EC_P384, &block.contents)]
            }
            "RSA PRIVATE KEY" => vec![pkcs8(ALG_RSA, &block.contents)],
            "ENCRYPTED PRIVATE KEY" => return Err(CaError::EncryptedKey { what: what.to_string() }),
            // e.g. the `EC PARAMETERS` block `openssl ecparam -genkey` writes first.
            _ => continue,
        };
        let mut last_error = None;
        for der in candidates {
            match KeyPair::try_from(der.as_slice()) {
                Ok(key) => return check_algorithm(what, key),
                Err(e) => last_error = Some(e),
            }
        }
        let reason = last_error.map_or_else(|| "unreadable".to_string(), |e| e.to_string());
        return Err(CaError::BadKey { what: what.to_string(), reason });
    }
    Err(CaError::NoPrivateKey { what: what.to_string() })
}

fn check_algorithm(what: &str, key: KeyPair) -> Result<KeyPair, CaError> {
    let alg = key.algorithm();
    if alg == &PKCS_ECDSA_P256_SHA256 || alg == &PKCS_ECDSA_P384_SHA384 || alg == &PKCS_RSA_SHA256 {
        Ok(key)
    } else {
        Err(CaError::UnsupportedKey { what: what.to_string(), found: format!("{alg:?}") })
    }
}

fn rsa_bits(modulus: &[u8]) -> usize {
    let Some(start) = modulus.iter().position(|&b| b != 0) else { return 0 };
    (modulus.len() - start) * 8 - modulus[start].leading_zeros() as usize
}

/// `PrivateKeyInfo ::= SEQUENCE { version 0, AlgorithmIdentifier, OCTET STRING key }`.
fn pkcs8(algorithm: &[u8], private_key: &[u8]) -> Vec<u8> {
    let mut body = vec![0x02, 0x01, 0x00];
    body.extend(der(0x30, algorithm));
    body.extend(der(0x04, private_key));
    der(0x30, &body)
}

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::cert::encode_pem;

    #[test]
    fn der_lengths() {
        assert_eq!(der(0x04, &[1, 2]), vec![0x04, 2, 1, 2]);
        assert_eq!(&der(0x04, &[0; 200])[..3], &[0x04, 0x81, 200]);
        assert_eq!(&der(0x04, &[0; 300])[..4], &[0x04, 0x82, 0x01, 0x2c]);
    }

    #[test]
    fn rsa_bits_ignores_sign_byte() {
        let mut modulus = vec![0x00, 0x80];
        modulus.extend([0u8; 255]);
        assert_eq!(rsa_bits(&modulus), 2048);
        assert_eq!(rsa_bits(&[0x01, 0x00]), 9);
    }

    #[test]
    fn loads_pkcs8_and_skips_other_blocks() {
        let key = KeyPair::generate().unwrap();
        let pem = format!("{}{}", encode_pem("EC PARAMETERS", &[0x06, 0x00]), key.serialize_pem());
        let loaded = load("ca-key.pem", &pem).unwrap();
        assert_eq!(loaded.public_key_raw(), key.public_key_raw());
    }

    #[test]
    fn refuses_encrypted_and_missing_keys() {
        let encrypted = encode_pem("ENCRYPTED PRIVATE KEY", &[0x30, 0x00]);
        assert!(matches!(load("k", &encrypted), Err(CaError::EncryptedKey { .. })));
        let legacy =
            "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n\n-----END RSA PRIVATE KEY-----\n";
        assert!(matches!(load("k", legacy), Err(CaError::EncryptedKey { .. })));
        let cert_only = encode_pem("CERTIFICATE", &[0x30, 0x00]);
        assert!(matches!(load("k", &cert_only), Err(CaError::NoPrivateKey { .. })));
        let junk = encode_pem("PRIVATE KEY", &[0x30, 0x00]);
        assert!(matches!(load("k", &junk), Err(CaError::BadKey { .. })));
    }
}

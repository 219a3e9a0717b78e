//! What can go wrong in the CA, each with a hint at the fix: most of these reach an operator
//! who plugged in their own CA and needs to know which file to change.

use std::fmt;

use time::{Duration, OffsetDateTime};

use super::cert::rfc3339;

/// Where the CA material came from; errors use it to name the right fix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaOrigin {
    /// The mesh's own self-signed root, generated earlier and stored by the caller.
    Generated,
    /// The user's CA from Istio's `cacerts` Secret.
    PluggedIn,
}

impl CaOrigin {
    fn key_mismatch_fix(self) -> &'static str {
        match self {
            Self::Generated => "the stored root is corrupt; delete it so that a new root is generated",
            Self::PluggedIn => "put the intermediate's own key in ca-key.pem",
        }
    }

    fn renew_fix(self) -> &'static str {
        match self {
            Self::Generated => "delete the stored root so that a new one is generated",
            Self::PluggedIn => "renew it and update the cacerts Secret",
        }
    }
}

impl fmt::Display for CaOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Generated => "generated root",
            Self::PluggedIn => "cacerts",
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    #[error("invalid {kind} {value:?}: {rule}")]
    InvalidName { kind: &'static str, value: String, rule: &'static str },

    #[error(
        "invalid SPIFFE ID {value:?}: {reason}; \
         expected spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"
    )]
    InvalidSpiffeId { value: String, reason: &'static str },

    #[error("certificate lifetime must be positive, got {0}")]
    InvalidLifetime(Duration),

    #[error("a serving certificate needs at least one DNS name")]
    NoDnsNames,

    #[error("{what}: malformed PEM ({reason}): expected '-----BEGIN ...-----' blocks with base64 bodies")]
    Pem { what: String, reason: String },

    #[error("{what}: no certificate found: expected at least one '-----BEGIN CERTIFICATE-----' block")]
    NoCertificate { what: String },

    #[error(
        "{what}: certificate #{index} is not valid X.509 ({reason}): export it again as a PEM certificate"
    )]
    BadCertificate { what: String, index: usize, reason: String },

    #[error(
        "{what}: no private key found: expected '-----BEGIN PRIVATE KEY-----' (PKCS#8), \
         'EC PRIVATE KEY' (SEC1) or 'RSA PRIVATE KEY' (PKCS#1)"
    )]
    NoPrivateKey { what: String },

    #[error(
        "{what}: the private key is encrypted: store it unencrypted, \
         e.g. `openssl pkcs8 -topk8 -nocrypt -in encrypted.pem -out ca-key.pem`"
    )]
    EncryptedKey { what: String },

    #[error(
        "{what}: the private key cannot be loaded ({reason}): use an unencrypted ECDSA P-256/P-384 \
         or RSA (2048 to 8192 bits) key in PKCS#8, SEC1 or PKCS#1 PEM"
    )]
    BadKey { what: String, reason: String },

    #[error(
        "{what}: {found} keys are not supported: use ECDSA P-256 (recommended), ECDSA P-384 \
         or RSA with 2048 to 8192 bits"
    )]
    UnsupportedKey { what: String, found: String },

    #[error(
        "cacerts: {file} is missing or empty: the Secret needs ca-cert.pem, ca-key.pem and \
         root-cert.pem, plus cert-chain.pem when ca-cert.pem is not signed by the root directly"
    )]
    MissingFile { file: &'static str },

    #[error("{origin}: ca-key.pem does not match ca-cert.pem: {}", .origin.key_mismatch_fix())]
    KeyMismatch { origin: CaOrigin },

    #[error(
        "{origin}: ca-cert.pem ({subject}) is not a CA certificate (basicConstraints CA:true is \
         missing): issue it as a CA, e.g. with openssl's v3_ca or v3_intermediate_ca extensions"
    )]
    NotCa { origin: CaOrigin, subject: String },

    #[error(
        "{origin}: ca-cert.pem ({subject}) may not sign certificates (its keyUsage lacks \
         keyCertSign): reissue it with keyUsage keyCertSign, cRLSign"
    )]
    CannotSign { origin: CaOrigin, subject: String },

    #[error(
        "{origin}: {file} ({subject}) is not valid before {}; it is now {}: check the clocks, \
         or use a certificate whose notBefore has passed",
        rfc3339(.not_before), rfc3339(.now)
    )]
    NotYetValid {
        origin: CaOrigin,
        file: &'static str,
        subject: String,
        not_before: OffsetDateTime,
        now: OffsetDateTime,
    },

    #[error(
        "{origin}: {file} ({subject}) expired at {}; it is now {}: {}",
        rfc3339(.not_after), rfc3339(.now), .origin.renew_fix()
    )]
    Expired {
        origin: CaOrigin,
        file: &'static str,
        subject: String,
        not_after: OffsetDateTime,
        now: OffsetDateTime,
    },

    #[error(
        "cacerts: the chain is broken: {child} is not signed by the next certificate, {parent} \
         ({reason}): list cert-chain.pem in order from ca-cert.pem up to the root"
    )]
    ChainBroken { child: String, parent: String, reason: String },

    #[error(
        "cacerts: the chain from ca-cert.pem ends at {last}, which no certificate in root-cert.pem \
         signed: put the root that issued it in root-cert.pem, or add the missing intermediates \
         to cert-chain.pem"
    )]
    ChainDoesNotReachRoot { last: String },

    #[error(
        "{origin}: the subject of ca-cert.pem ({subject}) cannot be copied exactly into issued \
         certificates ({reason}), so they would not chain to it: reissue ca-cert.pem with a subject \
         of single-valued attributes, each type at most once"
    )]
    SubjectNotReproducible { origin: CaOrigin, subject: String, reason: String },

    #[error("certificate signing failed ({0}): the CA key may be unusable; check ca-key.pem")]
    Sign(#[source] rcgen::Error),
}

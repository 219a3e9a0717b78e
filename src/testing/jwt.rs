//! JSON Web Tokens for tests: an ES256 key made at run time ([`Signer`]),
//! its key set as an issuer publishes it, and tokens it signs. Used by the
//! unit tests and, through `#[path]`, by the end-to-end tests; so it needs
//! nothing of the crate.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};

/// An issuer's signing key.
pub struct Signer {
    key: EcdsaKeyPair,
    kid: String,
}

impl Signer {
    /// A fresh P-256 key named `kid`.
    pub fn generate(kid: &str) -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("a key");
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).expect("a key");
        Self { key, kid: kid.to_string() }
    }

    /// The public key as a JSON Web Key Set.
    pub fn jwks(&self) -> String {
        // An uncompressed point: 0x04, then x and y, 32 bytes each.
        let point = self.key.public_key().as_ref();
        json!({"keys": [{
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        }]})
        .to_string()
    }

    /// A token with `claims`, signed by this key.
    pub fn token(&self, claims: &Value) -> String {
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": self.kid});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self.key.sign(&SystemRandom::new(), input.as_bytes()).expect("signs");
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Claims of a token from `issuer` for `audience` about `subject`, valid
/// for an hour from now (or expired an hour ago).
pub fn claims(issuer: &str, audience: &str, subject: &str, expired: bool) -> Value {
    let now = now();
    let (iat, exp) = if expired { (now - 7200, now - 3600) } else { (now, now + 3600) };
    json!({"iss": issuer, "aud": audience, "sub": subject, "iat": iat, "exp": exp, "groups": ["reviewers"]})
}

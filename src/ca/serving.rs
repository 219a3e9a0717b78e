//! The certificate the controller's own TLS servers present (the webhooks'
//! HTTPS and the xDS server), replaceable while they run: each handshake
//! asks this resolver, so a renewed certificate is used by the next
//! connection without a restart or a dropped request. `app` issues it from
//! the [`Authority`](super::Authority) and installs it here at half life.

use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The certificate the servers present, replaceable while they run.
#[derive(Debug, Default)]
pub struct ServingCert(RwLock<Option<Arc<CertifiedKey>>>);

#[derive(Debug, thiserror::Error)]
pub enum ServingCertError {
    #[error("serving certificate chain: {0}")]
    Chain(String),
    #[error("serving certificate key: {0}")]
    Key(String),
}

impl ServingCert {
    /// Installs a new certificate chain and key (PEM); the next handshake uses it.
    pub fn set(&self, chain_pem: &str, key_pem: &str) -> Result<(), ServingCertError> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| ServingCertError::Chain(e.to_string()))?;
        if chain.is_empty() {
            return Err(ServingCertError::Chain("no certificate in the PEM".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| ServingCertError::Key(e.to_string()))?;
        let signing = provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| ServingCertError::Key(e.to_string()))?;
        let certified = Arc::new(CertifiedKey::new(chain, signing));
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Some(certified);
        Ok(())
    }

    pub fn is_set(&self) -> bool {
        self.0.read().unwrap_or_else(|p| p.into_inner()).is_some()
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The crypto provider of every server the controller runs (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

//! Which mutual TLS a workload's sidecar accepts on an inbound port.

use serde::Serialize;

/// What an inbound port of a sidecar accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum MtlsMode {
    /// Plaintext only.
    Disable,
    /// Mutual TLS or plaintext.
    Permissive,
    /// Mutual TLS only.
    Strict,
}

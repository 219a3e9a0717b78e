//! Reading certificates: PEM blocks in and out, and [`CertInfo`], the few facts about a
//! certificate that the rotation policy, the tests and the caller's logs need.

use std::fmt;

use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

use super::error::CaError;

/// A parsed view of one certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// RFC 4514-style subject, e.g. `CN=mesh root CA, O=cluster.local`; empty for workloads.
    pub subject: String,
    pub issuer: String,
    pub common_name: Option<String>,
    /// Hex, colon-separated, as `openssl x509 -serial` would show it.
    pub serial: String,
    pub dns_names: Vec<String>,
    /// URI SANs, e.g. `spiffe://cluster.local/ns/default/sa/bookinfo`.
    pub uris: Vec<String>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub is_ca: bool,
}

impl CertInfo {
    /// The first certificate of a PEM bundle (for a chain, the leaf).
    pub fn from_pem(pem: &str) -> Result<Self, CaError> {
        let ders = certificates("certificate", pem)?;
        // `certificates` never returns an empty list.
        let first = ders.first().ok_or_else(|| CaError::NoCertificate { what: "certificate".into() })?;
        Self::from_der(first)
    }

    /// Every certificate of a PEM bundle, in order.
    pub fn chain_from_pem(pem: &str) -> Result<Vec<Self>, CaError> {
        certificates("certificate chain", pem)?.iter().map(|der| Self::from_der(der)).collect()
    }

    pub(crate) fn from_der(der: &[u8]) -> Result<Self, CaError> {
        Ok(Self::from_x509(&parse("certificate", 0, der)?))
    }

    pub(crate) fn from_x509(cert: &X509Certificate<'_>) -> Self {
        let mut dns_names = Vec::new();
        let mut uris = Vec::new();
        // A malformed SAN extension shows as no SANs: this view is for logs and checks, and a
        // certificate we could not otherwise parse has already been rejected.
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(dns) => dns_names.push((*dns).to_string()),
                    GeneralName::URI(uri) => uris.push((*uri).to_string()),
                    _ => {}
                }
            }
        }
        let common_name =
            cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_string);
        Self {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            common_name,
            serial: cert.raw_serial_as_string(),
            dns_names,
            uris,
            not_before: cert.validity().not_before.to_datetime(),
            not_after: cert.validity().not_after.to_datetime(),
            is_ca: cert.is_ca(),
        }
    }

    pub fn lifetime(&self) -> Duration {
        self.not_after - self.not_before
    }
}

impl fmt::Display for CertInfo {
    /// One line for logs: `subject="..." sans=[...] valid 2025-01-01T00:00:00Z..2025-01-02T00:00:00Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sans: Vec<&str> = self.dns_names.iter().chain(&self.uris).map(String::as_str).collect();
        write!(
            f,
            "subject={:?} sans=[{}] valid {}..{}{}",
            self.subject,
            sans.join(", "),
            rfc3339(&self.not_before),
            rfc3339(&self.not_after),
            if self.is_ca { " CA" } else { "" }
        )
    }
}

/// The DER of every `CERTIFICATE` block in `pem`, at least one; other blocks are skipped.
pub(crate) fn certificates(what: &str, pem: &str) -> Result<Vec<Vec<u8>>, CaError> {
    let ders: Vec<Vec<u8>> = blocks(what, pem)?
        .into_iter()
        .filter(|block| block.label == "CERTIFICATE")
        .map(|block| block.contents)
        .collect();
    if ders.is_empty() {
        return Err(CaError::NoCertificate { what: what.to_string() });
    }
    Ok(ders)
}

pub(crate) fn blocks(what: &str, pem: &str) -> Result<Vec<Pem>, CaError> {
    Pem::iter_from_buffer(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CaError::Pem { what: what.to_string(), reason: e.to_string() })
}

pub(crate) fn parse<'a>(what: &str, index: usize, der: &'a [u8]) -> Result<X509Certificate<'a>, CaError> {
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, cert)) => Ok(cert),
        Err(e) => Err(CaError::BadCertificate { what: what.to_string(), index, reason: e.to_string() }),
    }
}

/// PEM-encodes `der` with 64-column base64 lines, as OpenSSL writes it.
pub(crate) fn encode_pem(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 0x3f) as usize]));
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    // base64 is ASCII, so every 64-byte slice is on a char boundary.
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// `2025-01-02T03:04:05Z`: readable in errors and logs without time's formatting feature.
pub(crate) fn rfc3339(t: &OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Whole seconds: what X.509 can encode, so values we return match the certificate exactly.
pub(crate) fn truncate_to_second(t: OffsetDateTime) -> OffsetDateTime {
    t - Duration::nanoseconds(i64::from(t.nanosecond()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trips_through_the_parser() {
        for len in 0..200usize {
            let der: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            let pem = encode_pem("TEST", &der);
            let parsed = blocks("test", &pem).unwrap();
            assert_eq!(parsed.len(), 1);
            assert_eq!(parsed[0].label, "TEST");
            assert_eq!(parsed[0].contents, der, "length {len}");
        }
    }

    #[test]
    fn rfc3339_is_utc_and_zero_padded() {
        // 2025-01-02T01:04:05.9Z, seen from UTC+2.
        let t = OffsetDateTime::from_unix_timestamp(1_735_779_845).unwrap() + Duration::milliseconds(900);
        let t = t.to_offset(time::UtcOffset::from_hms(2, 0, 0).unwrap());
        assert_eq!(rfc3339(&t), "2025-01-02T01:04:05Z");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(matches!(CertInfo::from_pem("hello"), Err(CaError::NoCertificate { .. })));
        let bad = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(CertInfo::from_pem(bad), Err(CaError::BadCertificate { .. })));
    }
}

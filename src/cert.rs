//! Certificates as certherd sees them: PEM in, the few facts the plan,
//! the report and the verifier need out (serial, SHA-256, validity, names,
//! key type). Parsing is done by x509-parser.

use std::fmt;

use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};
use x509_parser::time::ASN1Time;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::config::KeyType;

/// Facts about one certificate (the leaf, usually).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Serial number, lower-case hex without leading zeros stripped.
    pub serial: String,
    /// Lower-case hex SHA-256 of the DER encoding.
    pub sha256: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// DNS names from the subjectAltName extension, lower-cased, in order.
    pub domains: Vec<String>,
    /// The subject public key's type, when it is one certherd issues.
    pub key_type: Option<KeyType>,
    /// The authority key identifier, when the certificate has one (with the
    /// serial it names the certificate to the CA's renewal information).
    pub authority_key_id: Option<Vec<u8>>,
}

impl CertInfo {
    pub fn lifetime(&self) -> ::time::Duration {
        self.not_after - self.not_before
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("no PEM certificate found")]
    NoCertificate,
    #[error("malformed PEM: {0}")]
    Pem(String),
    #[error("malformed certificate: {0}")]
    Der(String),
}

/// Every `CERTIFICATE` block of a PEM text, in order.
pub fn pem_certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let blocks = ::pem::parse_many(pem).map_err(|e| CertError::Pem(e.to_string()))?;
    let certs: Vec<_> = blocks
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(|b| CertificateDer::from(b.into_contents()))
        .collect();
    if certs.is_empty() {
        return Err(CertError::NoCertificate);
    }
    Ok(certs)
}

const PEM_BEGIN: &str = "-----BEGIN CERTIFICATE-----\n";
const PEM_END: &str = "-----END CERTIFICATE-----\n";

/// `text` split into its blocks (each block's text and DER) when it is
/// nothing but `CERTIFICATE` blocks exactly as [`der_to_pem`] writes them
/// (LF, 64-character lines of canonical base64, no headers, nothing between
/// blocks); `None` for anything else, which then takes the general parser.
/// For such text, `der_to_pem(der) == block text`, so the result is the same.
fn canonical_blocks(text: &str) -> Option<Vec<(&str, Vec<u8>)>> {
    use base64::Engine;
    let mut blocks = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let body = rest.strip_prefix(PEM_BEGIN)?;
        let end = body.find("-----")?;
        let (b64, after) = body.split_at(end);
        let after = after.strip_prefix(PEM_END)?;
        // Lines of exactly 64 characters, the last one 1 to 64, each ending in LF.
        let lines = b64.strip_suffix('\n')?.split('\n');
        let mut data = String::with_capacity(b64.len());
        let mut last_short = false;
        for line in lines {
            if last_short || line.is_empty() || line.len() > 64 {
                return None;
            }
            last_short = line.len() < 64;
            data.push_str(line);
        }
        // The standard engine rejects non-canonical padding and trailing bits,
        // so encoding `der` again gives back exactly `data`.
        let der = base64::engine::general_purpose::STANDARD
            .decode(data.as_bytes())
            .ok()?;
        let len = text.len() - rest.len();
        let block_len = rest.len() - after.len();
        blocks.push((&text[len..len + block_len], der));
        rest = after;
    }
    if blocks.is_empty() {
        None
    } else {
        Some(blocks)
    }
}

pub fn der_to_pem(der: &[u8]) -> String {
    ::pem::encode_config(
        &::pem::Pem::new("CERTIFICATE", der.to_vec()),
        ::pem::EncodeConfig::new().set_line_ending(::pem::LineEnding::LF),
    )
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Parse one DER certificate into the facts certherd uses.
pub fn info(der: &[u8]) -> Result<CertInfo, CertError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| CertError::Der(e.to_string()))?;
    let tbs = &cert.tbs_certificate;
    let mut domains = Vec::new();
    if let Ok(Some(san)) = tbs.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(d) = name {
                domains.push(d.to_ascii_lowercase());
            }
        }
    }
    let not_before = asn1_time(tbs.validity.not_before)?;
    let not_after = asn1_time(tbs.validity.not_after)?;
    let authority_key_id = cert
        .iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        });
    Ok(CertInfo {
        serial: hex::encode(tbs.raw_serial()),
        sha256: sha256_hex(der),
        not_before,
        not_after,
        domains,
        key_type: key_type(tbs.public_key()),
        authority_key_id,
    })
}

fn asn1_time(t: ASN1Time) -> Result<OffsetDateTime, CertError> {
    OffsetDateTime::from_unix_timestamp(t.timestamp())
        .map_err(|e| CertError::Der(format!("validity out of range: {e}")))
}

fn key_type(spki: &SubjectPublicKeyInfo<'_>) -> Option<KeyType> {
    match spki.parsed().ok()? {
        x509_parser::public_key::PublicKey::EC(point) => match point.key_size() {
            256 => Some(KeyType::EcdsaP256),
            384 => Some(KeyType::EcdsaP384),
            _ => None,
        },
        x509_parser::public_key::PublicKey::RSA(rsa) => match rsa.key_size() {
            2048 => Some(KeyType::Rsa2048),
            3072 => Some(KeyType::Rsa3072),
            4096 => Some(KeyType::Rsa4096),
            _ => None,
        },
        _ => None,
    }
}

/// RFC 3339 with a `Z`, seconds precision: how times appear in output.
pub fn rfc3339(t: OffsetDateTime) -> String {
    let t = t.to_offset(::time::UtcOffset::UTC);
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

/// A PEM private key. Its `Debug` prints nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyPem(String);

impl KeyPem {
    pub fn new(pem: String) -> Self {
        KeyPem(pem)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for KeyPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyPem(<redacted>)")
    }
}

/// A certificate with its key: what is stored, deployed and verified.
#[derive(Debug, Clone, PartialEq)]
pub struct Bundle {
    pub key: KeyPem,
    /// The leaf alone, PEM.
    pub leaf_pem: String,
    /// The intermediates (issuer first), PEM; may be empty.
    pub chain_pem: String,
    pub info: CertInfo,
}

impl Bundle {
    /// Build from the key and the PEM chain a CA returned (leaf first).
    pub fn from_chain(key: KeyPem, chain: &str) -> Result<Bundle, CertError> {
        if let Some(blocks) = canonical_blocks(chain) {
            // Already in the form `der_to_pem` writes (what the state
            // directory holds): the text is kept as it is, not re-encoded.
            let info = info(&blocks[0].1)?;
            return Ok(Bundle {
                key,
                leaf_pem: blocks[0].0.to_string(),
                chain_pem: blocks[1..].iter().map(|(text, _)| *text).collect(),
                info,
            });
        }
        let certs = pem_certificates(chain)?;
        let info = info(&certs[0])?;
        let leaf_pem = der_to_pem(&certs[0]);
        let chain_pem = certs[1..].iter().map(|c| der_to_pem(c)).collect();
        Ok(Bundle {
            key,
            leaf_pem,
            chain_pem,
            info,
        })
    }

    pub fn fullchain_pem(&self) -> String {
        format!("{}{}", self.leaf_pem, self.chain_pem)
    }

    /// Key then full chain: the single-file form HAProxy and others read.
    pub fn combined_pem(&self) -> String {
        let key = self.key.expose();
        let sep = if key.ends_with('\n') { "" } else { "\n" };
        format!("{key}{sep}{}", self.fullchain_pem())
    }

    /// DER of the intermediates, issuer first.
    pub fn chain_der(&self) -> Vec<CertificateDer<'static>> {
        if self.chain_pem.trim().is_empty() {
            return Vec::new();
        }
        pem_certificates(&self.chain_pem).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The general path of `Bundle::from_chain`, for comparison.
    fn general(key: KeyPem, chain: &str) -> Result<Bundle, CertError> {
        let certs = pem_certificates(chain)?;
        Ok(Bundle {
            key,
            info: info(&certs[0])?,
            leaf_pem: der_to_pem(&certs[0]),
            chain_pem: certs[1..].iter().map(|c| der_to_pem(c)).collect(),
        })
    }

    fn chain() -> (String, String) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["a.test".to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        (leaf.pem(), ca_pem)
    }

    #[test]
    fn canonical_fast_path_gives_what_the_general_parser_gives() {
        let (leaf, ca) = chain();
        let leaf = der_to_pem(&pem_certificates(&leaf).unwrap()[0]);
        let ca = der_to_pem(&pem_certificates(&ca).unwrap()[0]);
        let key = || KeyPem::new("k".into());
        let crlf = |s: &str| s.replace('\n', "\r\n");
        let inputs = [
            leaf.clone(),
            format!("{leaf}{ca}"),
            format!("{leaf}{ca}{ca}"),
            // Not canonical: the general parser decides.
            crlf(&format!("{leaf}{ca}")),
            format!("junk\n{leaf}{ca}"),
            format!("{leaf}\n{ca}"),
            format!("{leaf}{ca}trailing"),
            leaf.trim_end().to_string(),
            leaf.replacen('\n', "\n\n", 2),
            leaf.replace("CERTIFICATE", "PRIVATE KEY"),
            format!("{leaf}{}", ca.replace("CERTIFICATE", "X509 CRL")),
            String::new(),
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n".into(),
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into(),
        ];
        for (i, input) in inputs.iter().enumerate() {
            let fast = Bundle::from_chain(key(), input).map_err(|e| e.to_string());
            let slow = general(key(), input).map_err(|e| e.to_string());
            assert_eq!(fast, slow, "input {i}");
        }
        assert!(canonical_blocks(&format!("{leaf}{ca}")).is_some());
        assert!(canonical_blocks(&crlf(&leaf)).is_none());
    }
}

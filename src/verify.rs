//! Proof by handshake: connect to a target's endpoint with the configured
//! SNI, take the certificate chain it serves, and compare the leaf's SHA-256
//! with the certificate certherd holds. What is served is observed, not
//! trusted: the handshake accepts any certificate, and the comparison is the
//! check.
//!
//! With `starttls`, the plaintext exchange that asks for TLS comes first
//! ([`starttls`]); the handshake then runs on the same connection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde::Serialize;
use tokio::net::TcpStream;

use crate::cert::{sha256_hex, Bundle};
use crate::config::{Starttls, VerifyConfig};

pub mod starttls;

/// What a target was found to serve.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Verdict {
    /// It serves the current certificate.
    Current {
        served_sha256: String,
        chain_complete: bool,
    },
    /// It serves another certificate.
    Stale {
        expected_sha256: String,
        served_sha256: String,
    },
    /// The handshake could not complete.
    Unreachable { error: String },
}

impl Verdict {
    pub fn is_current(&self) -> bool {
        matches!(self, Verdict::Current { .. })
    }
    pub fn state(&self) -> &'static str {
        match self {
            Verdict::Current { .. } => "current",
            Verdict::Stale { .. } => "stale",
            Verdict::Unreachable { .. } => "unreachable",
        }
    }
    pub fn served_sha256(&self) -> Option<&str> {
        match self {
            Verdict::Current { served_sha256, .. } | Verdict::Stale { served_sha256, .. } => {
                Some(served_sha256)
            }
            Verdict::Unreachable { .. } => None,
        }
    }
    /// Why it is not current, in words; `None` when current.
    pub fn problem(&self) -> Option<String> {
        match self {
            Verdict::Current { .. } => None,
            Verdict::Stale {
                expected_sha256,
                served_sha256,
            } => Some(format!(
                "serves {served_sha256}, expected {expected_sha256}"
            )),
            Verdict::Unreachable { error } => Some(error.clone()),
        }
    }
}

/// One handshake (after the STARTTLS exchange, when `starttls` is set): the
/// chain the endpoint serves (leaf first).
pub async fn fetch_chain(
    connect: &str,
    server_name: &str,
    starttls: Option<Starttls>,
    timeout: Duration,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|e| format!("invalid server name {server_name:?}: {e}"))?;
    // The STARTTLS step in progress, for the message when time runs out.
    let step = std::sync::Mutex::new("");
    let attempt = async {
        let mut tcp = TcpStream::connect(connect)
            .await
            .map_err(|e| format!("connect to {connect}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        if let Some(proto) = starttls {
            starttls::negotiate(proto, connect, &mut tcp, &step).await?;
            *step.lock().expect("step") = "";
        }
        let tls = tokio_rustls::TlsConnector::from(Arc::new(observing_config()))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake with {connect} (SNI {server_name}): {e}"))?;
        let (_, conn) = tls.get_ref();
        conn.peer_certificates()
            .filter(|c| !c.is_empty())
            .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
            .ok_or_else(|| format!("{connect} presented no certificate"))
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| match (starttls, *step.lock().expect("step")) {
            (Some(proto), step) if !step.is_empty() => Err(format!(
                "{} {connect}: no answer within {timeout:?} while {step}",
                proto.as_str()
            )),
            _ => Err(format!(
                "no TLS handshake with {connect} within {timeout:?}"
            )),
        })
}

/// Compare what `cfg.connect` serves with `expected`, retrying until it
/// serves it or `cfg.timeout` has passed (a reload takes a moment).
pub async fn verify(cfg: &VerifyConfig, expected: &Bundle) -> Verdict {
    verify_within(cfg, expected, cfg.timeout).await
}

/// As [`verify`], with another overall deadline (`status` uses a short one).
pub async fn verify_within(cfg: &VerifyConfig, expected: &Bundle, total: Duration) -> Verdict {
    let deadline = Instant::now() + total;
    let mut delay = Duration::from_millis(50);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // Whole tenths of a second: the error then says "within 2s", not
        // "within 1.999999719s".
        let per_try = round_up_to_tenths(left).clamp(Duration::from_millis(100), PER_TRY);
        let mut verdict = handshake(cfg, expected, per_try).await;
        if verdict.is_current() {
            // A server that was just reloaded can still hand a new connection
            // to an old worker for a moment (nginx keeps them accepting for
            // 100 ms): confirm with a second handshake after that.
            tokio::time::sleep(CONFIRM_AFTER).await;
            verdict = handshake(cfg, expected, per_try).await;
            if verdict.is_current() {
                return verdict;
            }
        }
        if Instant::now() + delay >= deadline {
            return verdict;
        }
        tokio::time::sleep(delay).await;
        // A reload takes effect within a second or so: keep looking often
        // (a handshake is cheap) so that a rollout waits no longer than it must.
        delay = (delay * 2).min(MAX_RETRY_DELAY);
    }
}

/// The longest pause between two handshakes while waiting for a target.
const MAX_RETRY_DELAY: Duration = Duration::from_millis(400);

/// The longest one handshake attempt may take.
const PER_TRY: Duration = Duration::from_secs(5);

fn round_up_to_tenths(d: Duration) -> Duration {
    let tenths = d.as_nanos().div_ceil(100_000_000);
    Duration::from_millis(u64::try_from(tenths).unwrap_or(u64::MAX / 100) * 100)
}

/// The pause between the two handshakes that must both show the current certificate.
const CONFIRM_AFTER: Duration = Duration::from_millis(250);

async fn handshake(cfg: &VerifyConfig, expected: &Bundle, timeout: Duration) -> Verdict {
    match fetch_chain(&cfg.connect, &cfg.server_name, cfg.starttls, timeout).await {
        Ok(chain) => judge(&chain, expected),
        Err(error) => Verdict::Unreachable { error },
    }
}

/// Compare a served chain with the expected bundle.
pub fn judge(served: &[CertificateDer<'_>], expected: &Bundle) -> Verdict {
    let served_sha256 = sha256_hex(&served[0]);
    if served_sha256 != expected.info.sha256 {
        return Verdict::Stale {
            expected_sha256: expected.info.sha256.clone(),
            served_sha256,
        };
    }
    let intermediates = expected.chain_der();
    let chain_complete = intermediates
        .iter()
        .all(|want| served[1..].iter().any(|got| got.as_ref() == want.as_ref()));
    Verdict::Current {
        served_sha256,
        chain_complete,
    }
}

fn observing_config() -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Observe(provider)))
        .with_no_client_auth()
}

/// Accepts any certificate (it is compared afterwards), but still checks
/// the handshake signatures so the peer holds the key it presents.
#[derive(Debug)]
struct Observe(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Observe {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempt_timeouts_are_whole_tenths() {
        let t = |ns: u64| round_up_to_tenths(Duration::from_nanos(ns));
        assert_eq!(t(1_999_999_719), Duration::from_secs(2));
        assert_eq!(t(2_000_000_000), Duration::from_secs(2));
        assert_eq!(t(2_000_000_001), Duration::from_millis(2100));
        assert_eq!(t(0), Duration::ZERO);
    }
}

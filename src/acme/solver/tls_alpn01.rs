//! tls-alpn-01 (RFC 8737) through a built-in TLS listener: for each
//! identifier being validated it serves a self-signed certificate naming
//! the identifier and carrying the critical acmeIdentifier extension
//! (§3) with SHA-256 of the key authorization, and it negotiates only the
//! `acme-tls/1` protocol (§4). One listener per address, shared by every
//! certificate in the run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::{ChallengeData, SolverError};

/// The ALPN protocol of RFC 8737 §6.2.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

type Certs = Arc<Mutex<HashMap<String, Arc<CertifiedKey>>>>;

struct Listener {
    certs: Certs,
    task: JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Default)]
pub struct TlsAlpn01 {
    listeners: tokio::sync::Mutex<HashMap<String, Listener>>,
}

fn bind_error(addr: &str, source: std::io::Error) -> SolverError {
    SolverError::Bind {
        kind: "tls-alpn-01",
        addr: addr.to_string(),
        source,
    }
}

impl TlsAlpn01 {
    pub async fn present(&self, listen: &str, ch: &ChallengeData) -> Result<(), SolverError> {
        let key = challenge_certificate(ch)?;
        let mut listeners = self.listeners.lock().await;
        if !listeners.contains_key(listen) {
            listeners.insert(listen.to_string(), start(listen).await?);
        }
        listeners[listen]
            .certs
            .lock()
            .unwrap()
            .insert(ch.domain.to_ascii_lowercase(), Arc::new(key));
        Ok(())
    }

    pub async fn cleanup(&self, listen: &str, ch: &ChallengeData) {
        if let Some(l) = self.listeners.lock().await.get(listen) {
            l.certs
                .lock()
                .unwrap()
                .remove(&ch.domain.to_ascii_lowercase());
        }
    }

    pub async fn preflight(&self, listen: &str) -> Result<(), SolverError> {
        if self.listeners.lock().await.contains_key(listen) {
            return Ok(());
        }
        TcpListener::bind(listen)
            .await
            .map(drop)
            .map_err(|e| bind_error(listen, e))
    }
}

/// The self-signed validation certificate of RFC 8737 §3.
fn challenge_certificate(ch: &ChallengeData) -> Result<CertifiedKey, SolverError> {
    let fail = |message: String| SolverError::AlpnCertificate {
        domain: ch.domain.clone(),
        message,
    };
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| fail(e.to_string()))?;
    let mut params =
        rcgen::CertificateParams::new(vec![ch.domain.clone()]).map_err(|e| fail(e.to_string()))?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(&ch.digest)];
    let cert = params.self_signed(&key).map_err(|e| fail(e.to_string()))?;
    let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&der)
        .map_err(|e| fail(e.to_string()))?;
    Ok(CertifiedKey::new(vec![cert.der().clone()], signing))
}

#[derive(Debug)]
struct BySni(Certs);

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Listener")
    }
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // Only a validation handshake gets a certificate (RFC 8737 §4).
        let alpn_ok = hello.alpn()?.any(|p| p == ACME_TLS_ALPN);
        if !alpn_ok {
            return None;
        }
        let name = hello.server_name()?.to_ascii_lowercase();
        self.0.lock().unwrap().get(&name).cloned()
    }
}

async fn start(listen: &str) -> Result<Listener, SolverError> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| bind_error(listen, e))?;
    let certs: Certs = Arc::default();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .expect("TLS versions")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(BySni(certs.clone())));
    config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // The validation is the handshake itself; then the connection ends.
                if let Ok(Ok(mut tls)) = tokio::time::timeout(
                    std::time::Duration::from_secs(10),
                    acceptor.accept(stream),
                )
                .await
                {
                    use tokio::io::AsyncWriteExt;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    tracing::debug!(%listen, "tls-alpn-01 listener listening");
    Ok(Listener { certs, task })
}

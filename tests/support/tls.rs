//! TLS evidence and throwaway certificates: what an endpoint serves, checked
//! independently of certherd, and rcgen certificates for test services.

use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Hex SHA-256 of the DER of the first certificate in `pem` (the leaf of a
/// full chain). Panics if `pem` holds no certificate.
pub fn leaf_sha256_of_pem(pem: &str) -> String {
    let leaf = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .expect("no CERTIFICATE block in PEM")
        .expect("unparsable CERTIFICATE block in PEM");
    sha256_hex(&leaf)
}

/// The ring crypto provider, which every TLS client here uses explicitly.
pub fn ring_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Hex SHA-256 of the leaf certificate (DER) that `addr` (`host:port`) serves
/// when asked for `sni` (a DNS name, or an IP address, for which no SNI is
/// sent). Any certificate is accepted; the handshake signature is still
/// checked, so the server holds the key. Connect and handshake are bounded.
pub fn served_leaf_sha256(addr: &str, sni: &str) -> Result<String, String> {
    let chain = served_chain_sha256(addr, sni)?;
    Ok(chain.into_iter().next().expect("non-empty chain"))
}

/// Like [`served_leaf_sha256`], for every certificate served: leaf first, then
/// the intermediates in the order the server sent them.
pub fn served_chain_sha256(addr: &str, sni: &str) -> Result<Vec<String>, String> {
    const TIMEOUT: Duration = Duration::from_secs(5);
    let deadline = Instant::now() + TIMEOUT;
    let server_name =
        ServerName::try_from(sni.to_owned()).map_err(|e| format!("bad SNI name {sni:?}: {e}"))?;
    let provider = ring_provider();
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert(provider)))
        .with_no_client_auth();
    let socket_addr = addr
        .to_socket_addrs()
        .map_err(|e| format!("resolve {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("resolve {addr}: no address"))?;
    let mut sock = TcpStream::connect_timeout(&socket_addr, TIMEOUT)
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    sock.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    sock.set_write_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut conn = ClientConnection::new(Arc::new(config), server_name)
        .map_err(|e| format!("TLS client for {addr}: {e}"))?;
    while conn.is_handshaking() {
        if Instant::now() >= deadline {
            return Err(format!(
                "TLS handshake with {addr} (SNI {sni}): not within {TIMEOUT:?}"
            ));
        }
        conn.complete_io(&mut sock)
            .map_err(|e| format!("TLS handshake with {addr} (SNI {sni}): {e}"))?;
    }
    let chain: Vec<String> = conn
        .peer_certificates()
        .ok_or_else(|| format!("{addr} (SNI {sni}) sent no certificate"))?
        .iter()
        .map(|der| sha256_hex(der))
        .collect();
    if chain.is_empty() {
        return Err(format!(
            "{addr} (SNI {sni}) sent an empty certificate chain"
        ));
    }
    // Be polite, so the server does not log an aborted connection.
    conn.send_close_notify();
    let _ = conn.complete_io(&mut sock);
    Ok(chain)
}

/// Accepts whatever certificate the server presents (the point is to see it),
/// but still verifies the handshake signature with the presented key.
#[derive(Debug)]
struct AcceptAnyServerCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
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
        verify_tls12_signature(
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
        verify_tls13_signature(
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

/// A rustls client config (ring) trusting only the certificates in the PEM
/// files `roots`.
pub fn client_config_trusting(roots: &[&Path]) -> ClientConfig {
    let mut store = RootCertStore::empty();
    for path in roots {
        let pem = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.unwrap_or_else(|e| panic!("parse {}: {e}", path.display()));
            store
                .add(cert)
                .unwrap_or_else(|e| panic!("trust {}: {e}", path.display()));
        }
    }
    assert!(!store.is_empty(), "no certificates in {roots:?}");
    ClientConfig::builder_with_provider(ring_provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(store)
        .with_no_client_auth()
}

/// A reqwest client (rustls with ring, no proxy, 10 s timeout) trusting only
/// the certificates in the PEM files `roots`.
pub fn https_client_trusting(roots: &[&Path]) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_preconfigured(client_config_trusting(roots))
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("build reqwest client")
}

/// A certificate and its private key, both PEM, plus the certificate's DER.
pub struct TestCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

impl TestCert {
    /// A self-signed leaf (not a CA) for `names` (DNS names or IP addresses),
    /// valid from an hour ago for 30 days, with an ECDSA P-256 key.
    pub fn self_signed(names: &[&str]) -> TestCert {
        let key = KeyPair::generate().expect("generate key");
        let cert = leaf_params(names).self_signed(&key).expect("self-sign");
        TestCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    /// Hex SHA-256 of the certificate's DER: what [`served_leaf_sha256`] reports.
    pub fn sha256(&self) -> String {
        sha256_hex(&self.der)
    }
}

/// A throwaway certificate authority that issues server certificates.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pub cert_pem: String,
}

impl TestCa {
    /// A self-signed CA (ECDSA P-256) named `common_name`.
    pub fn new(common_name: &str) -> TestCa {
        let key = KeyPair::generate().expect("generate CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        set_validity(&mut params);
        let cert = params.self_signed(&key).expect("self-sign CA");
        TestCa {
            issuer: Issuer::new(params, key),
            cert_pem: cert.pem(),
        }
    }

    /// A leaf for `names` (DNS names or IP addresses): not a CA, serverAuth,
    /// valid from an hour ago for 30 days; `cert_pem` holds the leaf only.
    pub fn issue(&self, names: &[&str]) -> TestCert {
        let key = KeyPair::generate().expect("generate leaf key");
        let cert = leaf_params(names)
            .signed_by(&key, &self.issuer)
            .expect("sign leaf");
        TestCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}

fn leaf_params(names: &[&str]) -> CertificateParams {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names.clone()).expect("leaf params");
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().map_or("certherd test", |n| n.as_str()),
    );
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    set_validity(&mut params);
    params
}

fn set_validity(params: &mut CertificateParams) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(30);
}

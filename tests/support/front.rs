//! What the HTTPS proxies in front of a [`Pebble`] share ([`super::ari`],
//! [`super::faultproxy`]): a listener on loopback with a TLS certificate
//! from a test CA of its own (for `trust_roots`), a runtime that stops when
//! the proxy is dropped, and Pebble as the proxy reaches it.

use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::process::ScratchDir;
use super::tls::{https_client_trusting, ring_provider, TestCa};
use super::Pebble;

/// Pebble, as a proxy forwards to it.
pub struct Upstream {
    pub client: reqwest::Client,
    /// `https://127.0.0.1:PORT`, Pebble's listener.
    pub base: String,
    /// The directory's path (`/dir`).
    pub directory_path: String,
    /// Pebble's directory, as it answered it.
    pub directory: serde_json::Value,
}

/// The proxy's listener and runtime; stopped on drop.
pub struct Front {
    addr: SocketAddr,
    root: PathBuf,
    directory_path: String,
    runtime: Option<tokio::runtime::Runtime>,
    acceptor: tokio_rustls::TlsAcceptor,
    listener: Option<tokio::net::TcpListener>,
    _dir: ScratchDir,
}

impl Front {
    /// Binds a loopback port with a certificate for `localhost` and
    /// `127.0.0.1` from a new test CA named after `what`, and reads
    /// Pebble's directory. Nothing is served before [`Front::serve`].
    pub fn bind(pebble: &Pebble, what: &str) -> (Front, Upstream) {
        let dir = ScratchDir::new(&format!("certherd-{what}-"));
        let ca = TestCa::new(&format!("certherd test CA for the {what}"));
        let leaf = ca.issue(&["localhost", "127.0.0.1"]);
        let root = dir.path().join(format!("{what}-root.pem"));
        std::fs::write(&root, &ca.cert_pem).expect("write the proxy's root");

        let certs =
            vec![CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).expect("leaf PEM")];
        let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key PEM");
        let mut tls = rustls::ServerConfig::builder_with_provider(ring_provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("proxy TLS config");
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("proxy runtime");
        let directory_url = pebble.directory_url();
        let (base, directory_path) = split_url(&directory_url);
        let client = https_client_trusting(&[pebble.ca_tls_root_path()]);
        let directory = runtime.block_on(async {
            client
                .get(&directory_url)
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .expect("Pebble's directory")
                .bytes()
                .await
                .expect("Pebble's directory")
        });
        let directory: serde_json::Value =
            serde_json::from_slice(&directory).expect("Pebble's directory is JSON");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let front = Front {
            addr,
            root,
            directory_path: directory_path.clone(),
            runtime: Some(runtime),
            acceptor,
            listener: Some(listener),
            _dir: dir,
        };
        let upstream = Upstream {
            client,
            base,
            directory_path,
            directory,
        };
        (front, upstream)
    }

    /// Serves every connection (TLS, HTTP/1.1) with `handler`, which gets
    /// the connection's socket (to reset it) and the request.
    pub fn serve<F, Fut, B, E>(&mut self, handler: F)
    where
        F: Fn(RawFd, Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Response<B>, E>> + Send + 'static,
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let listener = self.listener.take().expect("a proxy is served once");
        let acceptor = self.acceptor.clone();
        let runtime = self.runtime.as_ref().expect("running");
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let fd = stream.as_raw_fd();
                let (acceptor, handler) = (acceptor.clone(), handler.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| handler(fd, req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
    }

    /// The directory through the proxy: `https://127.0.0.1:PORT/dir`.
    pub fn directory_url(&self) -> String {
        format!("https://{}{}", self.addr, self.directory_path)
    }

    /// The root that signed the proxy's TLS certificate (for `trust_roots`).
    pub fn tls_root_path(&self) -> &Path {
        &self.root
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Sends a request as the client made it (method, path, headers, body) to
/// Pebble at `base`, with the client's `Host`: Pebble builds every URL it
/// hands out from it, so they name the proxy, and it checks a JWS `url`
/// against it.
pub async fn forward(
    client: &reqwest::Client,
    base: &str,
    parts: &hyper::http::request::Parts,
    path: &str,
    body: bytes::Bytes,
) -> reqwest::Result<reqwest::Response> {
    let host = parts
        .headers
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let mut request = client
        .request(parts.method.clone(), format!("{base}{path}"))
        .header(hyper::header::HOST, host)
        .body(body);
    for (k, v) in parts.headers.iter() {
        if !matches!(
            k.as_str(),
            "host" | "content-length" | "connection" | "transfer-encoding"
        ) {
            request = request.header(k, v);
        }
    }
    request.send().await
}

/// `https://host:port/path` → (`https://host:port`, `/path`).
pub fn split_url(url: &str) -> (String, String) {
    let after_scheme = url.find("://").expect("absolute URL") + 3;
    match url[after_scheme..].find('/') {
        Some(i) => (
            url[..after_scheme + i].to_string(),
            url[after_scheme + i..].to_string(),
        ),
        None => (url.to_string(), "/".to_string()),
    }
}

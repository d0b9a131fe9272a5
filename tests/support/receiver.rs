//! An HTTPS receiver on loopback for the `webhook` target: a throwaway CA
//! issues its certificate (for 127.0.0.1), it records every request and
//! answers from a script — one [`Reply`] per request, the last repeated.
//! It runs on its own tokio runtime thread, so synchronous tests can use it;
//! dropping it stops the runtime.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::TestCa;

/// What the receiver answers to one request.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    /// Answer with the first 40 characters of the posted key's second line,
    /// as a careless receiver quoting its input would.
    pub echo_key: bool,
}

impl Reply {
    pub fn status(status: u16, body: &str) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: body.to_string(),
            echo_key: false,
        }
    }

    pub fn header(mut self, name: &'static str, value: &str) -> Reply {
        self.headers.push((name, value.to_string()));
        self
    }
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub path: String,
    pub headers: http::HeaderMap,
    pub body: serde_json::Value,
}

pub struct Receiver {
    addr: SocketAddr,
    ca_path: PathBuf,
    got: Arc<Mutex<Vec<Received>>>,
    _runtime: tokio::runtime::Runtime,
}

impl Receiver {
    /// Starts on a free loopback port; its CA's certificate is written to
    /// `dir/receiver-ca.pem`.
    pub fn start(dir: &Path, script: Vec<Reply>) -> Receiver {
        assert!(!script.is_empty(), "a receiver needs at least one reply");
        let ca = TestCa::new("certherd test receiver CA");
        let leaf = ca.issue(&["127.0.0.1"]);
        let ca_path = dir.join("receiver-ca.pem");
        fs::write(&ca_path, &ca.cert_pem).unwrap();
        let certs = vec![CertificateDer::from(leaf.der.clone())];
        let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
        let tls = rustls::ServerConfig::builder_with_provider(super::tls::ring_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let record = got.clone();
        let script = Arc::new(script);
        runtime.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, record, script) = (acceptor.clone(), record.clone(), script.clone());
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let (record, script) = (record.clone(), script.clone());
                            async move {
                                let path = req.uri().path().to_string();
                                let headers = req.headers().clone();
                                let bytes = req.into_body().collect().await.unwrap().to_bytes();
                                let body = serde_json::from_slice(&bytes)
                                    .unwrap_or(serde_json::Value::Null);
                                let mut got = record.lock().unwrap();
                                let reply = script[got.len().min(script.len() - 1)].clone();
                                let text = if reply.echo_key {
                                    let key = body["key"].as_str().unwrap_or_default();
                                    let line = key.lines().nth(1).unwrap_or_default();
                                    format!("rejected: {}", &line[..line.len().min(40)])
                                } else {
                                    reply.body.clone()
                                };
                                got.push(Received {
                                    at: Instant::now(),
                                    path,
                                    headers,
                                    body,
                                });
                                let mut rsp = hyper::Response::builder().status(reply.status);
                                for (k, v) in &reply.headers {
                                    rsp = rsp.header(*k, v);
                                }
                                rsp.body(Full::new(Bytes::from(text)))
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Receiver {
            addr,
            ca_path,
            got,
            _runtime: runtime,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    /// The receiver's CA certificate, for `trust_roots`.
    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }

    pub fn got(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }
}

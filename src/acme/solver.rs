//! Challenge solvers (RFC 8555 §8). A solver makes one challenge answerable
//! (`present`) and takes it away again (`cleanup`). The order code calls
//! `cleanup` for every challenge it presented, whatever happened in between.
//!
//! - http-01 through the built-in responder (§8.3): one small HTTP server
//!   per `listen` address, shared by every certificate in the run, that
//!   answers `/.well-known/acme-challenge/<token>` with the key authorization.
//! - http-01 through a webroot: a file per token under
//!   `<webroot>/.well-known/acme-challenge/`, served by the operator's web
//!   server, removed afterwards.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::Solver;

/// What a solver needs to make one challenge answerable.
#[derive(Debug, Clone)]
pub struct ChallengeData {
    /// The identifier being validated, e.g. `www.example.com`.
    pub domain: String,
    pub token: String,
    /// `token.thumbprint`, what http-01 serves.
    pub key_authorization: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SolverError {
    #[error("http-01 responder cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("webroot {path}: {source}")]
    Webroot {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

type Tokens = Arc<Mutex<HashMap<String, String>>>;

struct Responder {
    tokens: Tokens,
    task: JoinHandle<()>,
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Every solver of one run. Responders start on first use and stop when
/// this is dropped; webroot files still present then (the run was
/// interrupted) are removed.
#[derive(Default)]
pub struct Solvers {
    responders: tokio::sync::Mutex<HashMap<String, Responder>>,
    webroot_files: Mutex<std::collections::HashSet<PathBuf>>,
}

impl Drop for Solvers {
    fn drop(&mut self) {
        let files = self
            .webroot_files
            .get_mut()
            .map(std::mem::take)
            .unwrap_or_default();
        for p in files {
            remove_challenge_file(&p);
        }
    }
}

fn remove_challenge_file(p: &Path) {
    if let Err(e) = std::fs::remove_file(p) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %p.display(), error = %e, "could not remove http-01 challenge file");
        }
    }
}

impl Solvers {
    pub fn new() -> Self {
        Self::default()
    }

    pub async fn present(&self, solver: &Solver, ch: &ChallengeData) -> Result<(), SolverError> {
        match solver {
            Solver::Http01Listen { listen } => {
                let mut responders = self.responders.lock().await;
                if !responders.contains_key(listen) {
                    responders.insert(listen.clone(), start_responder(listen).await?);
                }
                let r = &responders[listen];
                r.tokens
                    .lock()
                    .unwrap()
                    .insert(ch.token.clone(), ch.key_authorization.clone());
                Ok(())
            }
            Solver::Http01Webroot { webroot } => {
                let dir = challenge_dir(webroot);
                let err = |source| SolverError::Webroot {
                    path: dir.clone(),
                    source,
                };
                crate::store::fsutil::create_dir_all_mode(&dir, 0o755).map_err(err)?;
                let file = dir.join(&ch.token);
                self.webroot_files.lock().unwrap().insert(file.clone());
                crate::store::fsutil::write_atomic(&file, ch.key_authorization.as_bytes(), 0o644)
                    .map_err(err)
            }
        }
    }

    /// Undo `present`. Never fails: what cannot be removed is logged.
    pub async fn cleanup(&self, solver: &Solver, ch: &ChallengeData) {
        match solver {
            Solver::Http01Listen { listen } => {
                if let Some(r) = self.responders.lock().await.get(listen) {
                    r.tokens.lock().unwrap().remove(&ch.token);
                }
            }
            Solver::Http01Webroot { webroot } => {
                let p = challenge_dir(webroot).join(&ch.token);
                remove_challenge_file(&p);
                self.webroot_files.lock().unwrap().remove(&p);
            }
        }
    }

    /// Prove the solver could work, changing nothing that outlives the call:
    /// the port can be bound, the webroot is writable.
    pub async fn preflight(&self, solver: &Solver) -> Result<(), SolverError> {
        match solver {
            Solver::Http01Listen { listen } => {
                if self.responders.lock().await.contains_key(listen) {
                    return Ok(());
                }
                TcpListener::bind(listen.as_str())
                    .await
                    .map(drop)
                    .map_err(|source| SolverError::Bind {
                        addr: listen.clone(),
                        source,
                    })
            }
            Solver::Http01Webroot { webroot } => {
                // The challenge directory may not exist yet: check the deepest existing ancestor.
                let dir = challenge_dir(webroot);
                let existing = dir.ancestors().find(|p| p.exists()).unwrap_or(webroot);
                writable_dir(existing).map_err(|source| SolverError::Webroot {
                    path: existing.to_path_buf(),
                    source,
                })
            }
        }
    }
}

pub fn challenge_dir(webroot: &Path) -> PathBuf {
    webroot.join(".well-known").join("acme-challenge")
}

/// `access(W_OK|X_OK)` on a directory: can files be created in it?
pub fn writable_dir(dir: &Path) -> std::io::Result<()> {
    if !dir.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "not a directory",
        ));
    }
    rustix::fs::access(
        dir,
        rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK,
    )
    .map_err(std::io::Error::from)
}

async fn start_responder(listen: &str) -> Result<Responder, SolverError> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| SolverError::Bind {
            addr: listen.to_string(),
            source,
        })?;
    let tokens: Tokens = Arc::default();
    let shared = tokens.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let tokens = shared.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let tokens = tokens.clone();
                    async move { Ok::<_, Infallible>(answer(&tokens, req.uri().path())) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    tracing::debug!(%listen, "http-01 responder listening");
    Ok(Responder { tokens, task })
}

fn answer(tokens: &Tokens, path: &str) -> hyper::Response<Full<Bytes>> {
    let found = path
        .strip_prefix("/.well-known/acme-challenge/")
        .and_then(|t| tokens.lock().unwrap().get(t).cloned());
    match found {
        Some(ka) => hyper::Response::builder()
            .header("content-type", "application/octet-stream")
            .body(Full::new(Bytes::from(ka)))
            .unwrap(),
        None => hyper::Response::builder()
            .status(404)
            .body(Full::new(Bytes::from_static(b"not found\n")))
            .unwrap(),
    }
}

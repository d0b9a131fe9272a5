//! http-01 (RFC 8555 §8.3).
//!
//! - Through the built-in responder: one small HTTP server per `listen`
//!   address, shared by every certificate in the run, that answers
//!   `/.well-known/acme-challenge/<token>` with the key authorization.
//! - Through a webroot: a file per token under
//!   `<webroot>/.well-known/acme-challenge/`, served by the operator's web
//!   server, removed afterwards — on drop too, if the run was interrupted.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::{writable_dir, ChallengeData, SolverError};

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

#[derive(Default)]
pub struct Http01 {
    responders: tokio::sync::Mutex<HashMap<String, Responder>>,
    webroot_files: Mutex<HashSet<PathBuf>>,
}

impl Drop for Http01 {
    fn drop(&mut self) {
        self.cleanup_all();
    }
}

fn bind_error(addr: &str, source: std::io::Error) -> SolverError {
    SolverError::Bind {
        kind: "http-01",
        addr: addr.to_string(),
        source,
    }
}

impl Http01 {
    pub async fn present_listen(
        &self,
        listen: &str,
        ch: &ChallengeData,
    ) -> Result<(), SolverError> {
        let mut responders = self.responders.lock().await;
        if !responders.contains_key(listen) {
            responders.insert(listen.to_string(), start_responder(listen).await?);
        }
        responders[listen]
            .tokens
            .lock()
            .unwrap()
            .insert(ch.token.clone(), ch.key_authorization.clone());
        Ok(())
    }

    pub async fn cleanup_listen(&self, listen: &str, ch: &ChallengeData) {
        if let Some(r) = self.responders.lock().await.get(listen) {
            r.tokens.lock().unwrap().remove(&ch.token);
        }
    }

    pub fn present_webroot(&self, webroot: &Path, ch: &ChallengeData) -> Result<(), SolverError> {
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

    pub fn cleanup_webroot(&self, webroot: &Path, ch: &ChallengeData) {
        let p = challenge_dir(webroot).join(&ch.token);
        remove_challenge_file(&p);
        self.webroot_files.lock().unwrap().remove(&p);
    }

    /// Remove every webroot file still present.
    pub fn cleanup_all(&self) {
        let files =
            std::mem::take(&mut *self.webroot_files.lock().unwrap_or_else(|e| e.into_inner()));
        for p in files {
            remove_challenge_file(&p);
        }
    }

    /// The port can be bound (or is already ours).
    pub async fn preflight_listen(&self, listen: &str) -> Result<(), SolverError> {
        if self.responders.lock().await.contains_key(listen) {
            return Ok(());
        }
        TcpListener::bind(listen)
            .await
            .map(drop)
            .map_err(|e| bind_error(listen, e))
    }
}

/// The webroot is writable (the challenge directory may not exist yet:
/// check the deepest existing ancestor).
pub fn preflight_webroot(webroot: &Path) -> Result<(), SolverError> {
    let dir = challenge_dir(webroot);
    let existing = dir.ancestors().find(|p| p.exists()).unwrap_or(webroot);
    writable_dir(existing).map_err(|source| SolverError::Webroot {
        path: existing.to_path_buf(),
        source,
    })
}

fn remove_challenge_file(p: &Path) {
    if let Err(e) = std::fs::remove_file(p) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %p.display(), error = %e, "could not remove http-01 challenge file");
        }
    }
}

pub fn challenge_dir(webroot: &Path) -> PathBuf {
    webroot.join(".well-known").join("acme-challenge")
}

async fn start_responder(listen: &str) -> Result<Responder, SolverError> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| bind_error(listen, e))?;
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
    tracing::debug!(path, found = found.is_some(), "http-01 request");
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

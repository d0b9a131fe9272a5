//! Challenge solvers (RFC 8555 §8). A solver makes one challenge answerable
//! (`present`) and takes it away again (`cleanup`).
//!
//! # Contract
//! - The order code presents every challenge of an order, then calls
//!   [`Solvers::wait_ready`] (dns-01 waits there until every authoritative
//!   server answers), then tells the CA.
//! - `cleanup` is called for every challenge presented, whatever happened
//!   in between; it never fails (what cannot be undone is logged).
//! - [`Solvers::cleanup_all`] undoes whatever is still presented: the
//!   command calls it when interrupted, after dropping the run.
//! - `preflight` proves a solver could work and changes nothing that
//!   outlives the call.

pub mod dns01;
pub mod http01;
pub mod tls_alpn01;

use std::path::PathBuf;

use crate::config::Solver;

/// What a solver needs to make one challenge answerable.
#[derive(Clone)]
pub struct ChallengeData {
    /// The identifier being validated, e.g. `www.example.com` or `*.example.com`.
    pub domain: String,
    pub token: String,
    /// `token.thumbprint`, what http-01 serves.
    pub key_authorization: String,
    /// base64url(SHA-256(key authorization)), the dns-01 TXT value.
    pub dns_value: String,
    /// SHA-256(key authorization), the tls-alpn-01 acmeIdentifier.
    pub digest: [u8; 32],
}

impl std::fmt::Debug for ChallengeData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChallengeData")
            .field("domain", &self.domain)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SolverError {
    #[error("{kind} listener cannot listen on {addr}: {source}")]
    Bind {
        kind: &'static str,
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
    #[error("tls-alpn-01 certificate for {domain}: {message}")]
    AlpnCertificate { domain: String, message: String },
    #[error("dns-01: {0}")]
    Dns(String),
    /// A dns-01 failure with its cause; the message carries the whole chain.
    #[error("dns-01: {}", crate::acme::http::error_chain(.0))]
    Dns01(#[source] crate::dns::DnsError),
}

/// Every solver of one run.
#[derive(Default)]
pub struct Solvers {
    http: http01::Http01,
    alpn: tls_alpn01::TlsAlpn01,
    dns: dns01::Dns01Solver,
}

impl Solvers {
    pub fn new() -> Self {
        Self::default()
    }

    pub async fn present(&self, solver: &Solver, ch: &ChallengeData) -> Result<(), SolverError> {
        match solver {
            Solver::Http01Listen { listen } => self.http.present_listen(listen, ch).await,
            Solver::Http01Webroot { webroot } => self.http.present_webroot(webroot, ch),
            Solver::TlsAlpn01 { listen } => self.alpn.present(listen, ch).await,
            Solver::Dns01(cfg) => self.dns.present(cfg, ch).await,
        }
    }

    /// Wait until the challenges an order presented can be validated
    /// (dns-01: until every authoritative server answers its records).
    pub async fn wait_ready(
        &self,
        presented: &[(&Solver, ChallengeData)],
    ) -> Result<(), SolverError> {
        let dns: Vec<(&crate::config::Dns01, &ChallengeData)> = presented
            .iter()
            .filter_map(|(s, ch)| match s {
                Solver::Dns01(cfg) => Some((cfg, ch)),
                _ => None,
            })
            .collect();
        if dns.is_empty() {
            return Ok(());
        }
        self.dns.wait_propagated(&dns).await
    }

    pub async fn cleanup(&self, solver: &Solver, ch: &ChallengeData) {
        match solver {
            Solver::Http01Listen { listen } => self.http.cleanup_listen(listen, ch).await,
            Solver::Http01Webroot { webroot } => self.http.cleanup_webroot(webroot, ch),
            Solver::TlsAlpn01 { listen } => self.alpn.cleanup(listen, ch).await,
            Solver::Dns01(cfg) => self.dns.cleanup(cfg, ch).await,
        }
    }

    /// Undo whatever is still presented (an interrupted run).
    pub async fn cleanup_all(&self) {
        self.http.cleanup_all();
        self.dns.cleanup_all().await;
    }

    /// `domain`: a name the solver will prove, when one is known (dns-01
    /// checks its TSIG key against that name's zone).
    pub async fn preflight(
        &self,
        solver: &Solver,
        domain: Option<&str>,
    ) -> Result<(), SolverError> {
        match solver {
            Solver::Http01Listen { listen } => self.http.preflight_listen(listen).await,
            Solver::Http01Webroot { webroot } => http01::preflight_webroot(webroot),
            Solver::TlsAlpn01 { listen } => self.alpn.preflight(listen).await,
            Solver::Dns01(cfg) => dns01::preflight(cfg, domain).await,
        }
    }
}

/// `access(W_OK|X_OK)` on a directory: can files be created in it?
pub fn writable_dir(dir: &std::path::Path) -> std::io::Result<()> {
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

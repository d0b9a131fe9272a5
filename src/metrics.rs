//! Prometheus metrics: per certificate (expiry, renewal time, the CA's
//! renewal window, last renewal, consecutive failures), per target
//! (verification state, last successful verification), and ACME requests by
//! outcome.
//!
//! Built on `prometheus-client` (the Prometheus organisation's client).
//! [`Metrics`] holds the registry; `certherd run` serves it over HTTP
//! ([`Metrics::serve`]), the one-shot commands write it as a node_exporter
//! textfile ([`Metrics::write_textfile`]).
//!
//! A one-shot command lives for one pass, but "last renewal", "consecutive
//! failures" and "last verified" span many: they are kept in a small
//! [`History`] (JSON in the state directory) that each pass updates from its
//! [`Report`](crate::report::Report).
//!
//! # Metrics
//!
//! | name | type | labels |
//! |---|---|---|
//! | `certherd_certificate_expiration_timestamp_seconds` | gauge | `certificate` |
//! | `certherd_certificate_renewal_timestamp_seconds` | gauge | `certificate` |
//! | `certherd_certificate_ari_window_start_timestamp_seconds` | gauge | `certificate` |
//! | `certherd_certificate_ari_window_end_timestamp_seconds` | gauge | `certificate` |
//! | `certherd_certificate_last_renewal_timestamp_seconds` | gauge | `certificate` |
//! | `certherd_certificate_consecutive_renewal_failures` | gauge | `certificate` |
//! | `certherd_target_verification_state` | gauge | `certificate`, `target`, `state` |
//! | `certherd_target_last_verified_timestamp_seconds` | gauge | `certificate`, `target` |
//! | `certherd_acme_requests_total` | counter | `outcome` |
//! | `certherd_last_update_timestamp_seconds` | gauge | |
//!
//! A timestamp that is not known (no certificate yet, no ARI window, never
//! verified) has no series rather than a made-up value.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::cert::rfc3339;
use crate::config::Config;
use crate::report::{Report, Status, TargetAction};

/// `Content-Type` of [`Metrics::render`] (Prometheus text format 0.0.4).
pub const TEXT_CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
/// `Content-Type` of [`Metrics::render_openmetrics`].
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How one ACME HTTP request (one attempt, retries counted apart) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AcmeOutcome {
    /// 1xx–3xx.
    Success,
    /// 429: the CA's rate limit.
    RateLimited,
    /// Other 4xx (including `badNonce`, which the client retries).
    ClientError,
    /// 5xx.
    ServerError,
    /// No complete response: connection, TLS, timeout, truncated body.
    NetworkError,
}

impl AcmeOutcome {
    pub const ALL: [AcmeOutcome; 5] = [
        AcmeOutcome::Success,
        AcmeOutcome::RateLimited,
        AcmeOutcome::ClientError,
        AcmeOutcome::ServerError,
        AcmeOutcome::NetworkError,
    ];

    pub fn from_status(status: u16) -> AcmeOutcome {
        match status {
            429 => AcmeOutcome::RateLimited,
            400..=499 => AcmeOutcome::ClientError,
            500..=599 => AcmeOutcome::ServerError,
            _ => AcmeOutcome::Success,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AcmeOutcome::Success => "success",
            AcmeOutcome::RateLimited => "rate_limited",
            AcmeOutcome::ClientError => "client_error",
            AcmeOutcome::ServerError => "server_error",
            AcmeOutcome::NetworkError => "network_error",
        }
    }
}

impl EncodeLabelValue for AcmeOutcome {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder,
    ) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: AcmeOutcome,
}

/// ACME requests of this process, shared by every [`Metrics`]: the ACME
/// client counts into it without being handed a `Metrics`.
static ACME_REQUESTS: LazyLock<Family<OutcomeLabels, Counter>> = LazyLock::new(|| {
    let family = Family::<OutcomeLabels, Counter>::default();
    // Every outcome shows from the start, at 0: a rate() over a series
    // that appears only with the first failure misses that failure.
    for outcome in AcmeOutcome::ALL {
        let _ = family.get_or_create(&OutcomeLabels { outcome });
    }
    family
});

/// Count one ACME HTTP request (called by the ACME client for every attempt).
pub fn acme_request(outcome: AcmeOutcome) {
    ACME_REQUESTS
        .get_or_create(&OutcomeLabels { outcome })
        .inc();
}

/// A target's verification state, as `status` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum TargetState {
    /// It serves (or, unverified over the network, holds) the current certificate.
    Current,
    /// It serves another certificate.
    Stale,
    /// The check could not complete.
    Unreachable,
    /// Not checked, or nothing to compare with.
    #[default]
    Unverified,
}

impl TargetState {
    pub const ALL: [TargetState; 4] = [
        TargetState::Current,
        TargetState::Stale,
        TargetState::Unreachable,
        TargetState::Unverified,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            TargetState::Current => "current",
            TargetState::Stale => "stale",
            TargetState::Unreachable => "unreachable",
            TargetState::Unverified => "unverified",
        }
    }
    pub fn parse(s: &str) -> Option<TargetState> {
        TargetState::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// What the metrics say about one certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertState {
    /// The current certificate's notAfter; `None` when there is none yet.
    pub not_after: Option<OffsetDateTime>,
    /// When certherd renews it.
    pub renew_at: Option<OffsetDateTime>,
    /// The CA's suggested renewal window (ARI), when it gave one.
    pub ari_window: Option<(OffsetDateTime, OffsetDateTime)>,
    /// The last successful renewal.
    pub last_renewal: Option<OffsetDateTime>,
    /// Failed renewals since the last success.
    pub consecutive_failures: u32,
}

/// What the store and the plan know about a certificate after a pass: the
/// lead's half of [`CertState`] (the other half is [`History`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertFacts {
    pub name: String,
    /// Of the current certificate (after the pass); `None` when there is none.
    pub not_before: Option<OffsetDateTime>,
    pub not_after: Option<OffsetDateTime>,
    pub renew_at: Option<OffsetDateTime>,
    pub ari_window: Option<(OffsetDateTime, OffsetDateTime)>,
    /// Due and not renewed by this pass (its renewal failed, or was not tried).
    pub still_due: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CertLabels {
    certificate: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TargetLabels {
    certificate: String,
    target: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TargetStateLabels {
    certificate: String,
    target: String,
    state: String,
}

/// The registry and its metrics. Cheap to clone (one shared registry);
/// `Send + Sync`.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    expiration: Family<CertLabels, Gauge>,
    renewal: Family<CertLabels, Gauge>,
    ari_start: Family<CertLabels, Gauge>,
    ari_end: Family<CertLabels, Gauge>,
    last_renewal: Family<CertLabels, Gauge>,
    failures: Family<CertLabels, Gauge>,
    target_state: Family<TargetStateLabels, Gauge>,
    target_verified: Family<TargetLabels, Gauge>,
    last_update: Gauge,
    /// The series set: certificate → its targets (to remove them again).
    known: Mutex<BTreeMap<String, BTreeSet<String>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn set_or_remove(
    family: &Family<CertLabels, Gauge>,
    labels: &CertLabels,
    t: Option<OffsetDateTime>,
) {
    match t {
        Some(t) => {
            family.get_or_create(labels).set(t.unix_timestamp());
        }
        None => {
            family.remove(labels);
        }
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let expiration = Family::<CertLabels, Gauge>::default();
        let renewal = Family::<CertLabels, Gauge>::default();
        let ari_start = Family::<CertLabels, Gauge>::default();
        let ari_end = Family::<CertLabels, Gauge>::default();
        let last_renewal = Family::<CertLabels, Gauge>::default();
        let failures = Family::<CertLabels, Gauge>::default();
        let target_state = Family::<TargetStateLabels, Gauge>::default();
        let target_verified = Family::<TargetLabels, Gauge>::default();
        let last_update = Gauge::default();
        let s = Unit::Seconds;
        registry.register_with_unit(
            "certherd_certificate_expiration_timestamp",
            "The current certificate's notAfter, as a Unix timestamp",
            s.clone(),
            expiration.clone(),
        );
        registry.register_with_unit(
            "certherd_certificate_renewal_timestamp",
            "When certherd renews the certificate, as a Unix timestamp",
            s.clone(),
            renewal.clone(),
        );
        registry.register_with_unit(
            "certherd_certificate_ari_window_start_timestamp",
            "Start of the renewal window the CA suggests (ACME Renewal Information, RFC 9773)",
            s.clone(),
            ari_start.clone(),
        );
        registry.register_with_unit(
            "certherd_certificate_ari_window_end_timestamp",
            "End of the renewal window the CA suggests (ACME Renewal Information, RFC 9773)",
            s.clone(),
            ari_end.clone(),
        );
        registry.register_with_unit(
            "certherd_certificate_last_renewal_timestamp",
            "When the certificate was last renewed successfully, as a Unix timestamp",
            s.clone(),
            last_renewal.clone(),
        );
        registry.register(
            "certherd_certificate_consecutive_renewal_failures",
            "Renewals of the certificate that failed since the last one that succeeded",
            failures.clone(),
        );
        registry.register(
            "certherd_target_verification_state",
            "1 for the target's verification state (current, stale, unreachable or \
             unverified), 0 for the other states",
            target_state.clone(),
        );
        registry.register_with_unit(
            "certherd_target_last_verified_timestamp",
            "When a handshake last saw the target serve the current certificate",
            s.clone(),
            target_verified.clone(),
        );
        registry.register(
            "certherd_acme_requests",
            "ACME HTTP requests by outcome (each attempt of a retried request counts)",
            ACME_REQUESTS.clone(),
        );
        registry.register_with_unit(
            "certherd_last_update_timestamp",
            "When certherd last updated these metrics after a pass (0: not yet)",
            s,
            last_update.clone(),
        );
        Metrics {
            inner: Arc::new(Inner {
                registry,
                expiration,
                renewal,
                ari_start,
                ari_end,
                last_renewal,
                failures,
                target_state,
                target_verified,
                last_update,
                known: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, BTreeSet<String>>> {
        self.inner
            .known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Set every series of certificate `name`; a `None` removes its series.
    pub fn record_certificate(&self, name: &str, state: &CertState) {
        let i = &self.inner;
        let l = CertLabels {
            certificate: name.to_string(),
        };
        set_or_remove(&i.expiration, &l, state.not_after);
        set_or_remove(&i.renewal, &l, state.renew_at);
        set_or_remove(&i.ari_start, &l, state.ari_window.map(|w| w.0));
        set_or_remove(&i.ari_end, &l, state.ari_window.map(|w| w.1));
        set_or_remove(&i.last_renewal, &l, state.last_renewal);
        i.failures
            .get_or_create(&l)
            .set(i64::from(state.consecutive_failures));
        self.known().entry(name.to_string()).or_default();
    }

    /// Set a target's state (1 for `state`, 0 for the other states) and the
    /// time of its last successful verification.
    pub fn record_target(
        &self,
        cert: &str,
        target: &str,
        state: TargetState,
        last_verified: Option<OffsetDateTime>,
    ) {
        let i = &self.inner;
        for s in TargetState::ALL {
            let l = TargetStateLabels {
                certificate: cert.to_string(),
                target: target.to_string(),
                state: s.as_str().to_string(),
            };
            i.target_state.get_or_create(&l).set(i64::from(s == state));
        }
        let l = TargetLabels {
            certificate: cert.to_string(),
            target: target.to_string(),
        };
        match last_verified {
            Some(t) => {
                i.target_verified.get_or_create(&l).set(t.unix_timestamp());
            }
            None => {
                i.target_verified.remove(&l);
            }
        }
        self.known()
            .entry(cert.to_string())
            .or_default()
            .insert(target.to_string());
    }

    /// Remove every series of a target.
    pub fn forget_target(&self, cert: &str, target: &str) {
        let i = &self.inner;
        for s in TargetState::ALL {
            i.target_state.remove(&TargetStateLabels {
                certificate: cert.to_string(),
                target: target.to_string(),
                state: s.as_str().to_string(),
            });
        }
        i.target_verified.remove(&TargetLabels {
            certificate: cert.to_string(),
            target: target.to_string(),
        });
        if let Some(targets) = self.known().get_mut(cert) {
            targets.remove(target);
        }
    }

    /// Remove every series of a certificate and of its targets.
    pub fn forget_certificate(&self, name: &str) {
        let targets = self.known().get(name).cloned().unwrap_or_default();
        for t in targets {
            self.forget_target(name, &t);
        }
        self.record_certificate(name, &CertState::default());
        self.inner.failures.remove(&CertLabels {
            certificate: name.to_string(),
        });
        self.known().remove(name);
    }

    /// Remove the series of certificates and targets the configuration no
    /// longer has (after a reload of `certherd run`'s configuration).
    pub fn retain(&self, config: &Config) {
        let known = self.known().clone();
        for (cert, targets) in known {
            match config.certificate(&cert) {
                None => self.forget_certificate(&cert),
                Some(c) => {
                    for t in targets {
                        if !c.targets.iter().any(|x| x.name == t) {
                            self.forget_target(&cert, &t);
                        }
                    }
                }
            }
        }
    }

    /// Bring every series up to date after a pass: each configured
    /// certificate from `facts` (by name; one missing reads as "no
    /// certificate") and `history`, each of its targets from `history`;
    /// series of certificates and targets no longer configured are removed.
    ///
    /// The last renewal is the history's, or, when certherd has recorded
    /// none, the current certificate's notBefore.
    pub fn update(
        &self,
        config: &Config,
        history: &History,
        facts: &[CertFacts],
        now: OffsetDateTime,
    ) {
        for cert in &config.certificates {
            let f = facts.iter().find(|f| f.name == cert.name);
            let h = history.certificates.get(&cert.name);
            let state = CertState {
                not_after: f.and_then(|f| f.not_after),
                renew_at: f.and_then(|f| f.renew_at),
                ari_window: f.and_then(|f| f.ari_window),
                last_renewal: h
                    .and_then(|h| parse_time(h.last_renewal.as_deref()))
                    .or(f.and_then(|f| f.not_before)),
                consecutive_failures: h.map_or(0, |h| h.consecutive_failures),
            };
            self.record_certificate(&cert.name, &state);
            for t in &cert.targets {
                let th = h.and_then(|h| h.targets.get(&t.name));
                let state = th
                    .and_then(|th| TargetState::parse(&th.state))
                    .unwrap_or_default();
                let verified = th.and_then(|th| parse_time(th.last_verified.as_deref()));
                self.record_target(&cert.name, &t.name, state, verified);
            }
        }
        self.retain(config);
        self.inner.last_update.set(now.unix_timestamp());
    }

    /// The Prometheus text exposition format (0.0.4): what node_exporter's
    /// textfile collector reads, and what every scraper accepts.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.inner.registry)
            .expect("writing to a String does not fail");
        out
    }

    /// The OpenMetrics text format (served to scrapers that ask for it).
    pub fn render_openmetrics(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.inner.registry)
            .expect("writing to a String does not fail");
        out
    }

    /// Write [`Metrics::render`] to `path` atomically (temp file in the same
    /// folder, renamed over it), mode 0644: node_exporter never reads half a file.
    pub fn write_textfile(&self, path: &Path) -> io::Result<()> {
        crate::store::fsutil::write_atomic(path, self.render().as_bytes(), 0o644)
    }

    /// Serve `GET /metrics` on `listen` until `shutdown` completes. Binding
    /// happens before this returns (an address in use is an error here);
    /// the server then runs on its own task.
    pub async fn serve<F>(&self, listen: SocketAddr, shutdown: F) -> io::Result<MetricsServer>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let local_addr = listener.local_addr()?;
        let metrics = self.clone();
        let task = tokio::spawn(serve_loop(listener, metrics, shutdown));
        tracing::info!(listen = %local_addr, "serving metrics at /metrics");
        Ok(MetricsServer { local_addr, task })
    }
}

/// A running metrics server.
#[derive(Debug)]
pub struct MetricsServer {
    local_addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl MetricsServer {
    /// The address it listens on (the real port when `listen` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
    /// Wait until it has stopped (after the shutdown future completed).
    pub async fn join(self) {
        let _ = self.task.await;
    }
    /// Stop it now.
    pub fn abort(&self) {
        self.task.abort();
    }
}

/// Connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 32;
/// A client must send its request headers within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

async fn serve_loop<F>(listener: tokio::net::TcpListener, metrics: Metrics, shutdown: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    // Dropped at shutdown, which ends every open connection.
    let mut conns = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        while conns.try_join_next().is_some() {}
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            a = async {
                let slot = slots.clone().acquire_owned().await;
                (listener.accept().await, slot)
            } => a,
        };
        let (stream, slot) = match accepted {
            (Ok((stream, _)), Ok(slot)) => (stream, slot),
            (Err(e), _) => {
                tracing::warn!(error = %e, "metrics server: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            (_, Err(_)) => break,
        };
        let metrics = metrics.clone();
        conns.spawn(async move {
            let _slot = slot;
            let svc = hyper::service::service_fn(move |req| {
                let rsp = respond(&metrics, &req);
                async move { Ok::<_, std::convert::Infallible>(rsp) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
    tracing::debug!("metrics server stopped");
}

fn respond<B>(metrics: &Metrics, req: &hyper::Request<B>) -> hyper::Response<Full<Bytes>> {
    let reply = |status: u16, ctype: &str, body: String| {
        hyper::Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, ctype)
            .body(Full::new(Bytes::from(body)))
            .expect("a valid response")
    };
    if req.uri().path() != "/metrics" {
        return reply(
            404,
            "text/plain; charset=utf-8",
            "not found: certherd serves its metrics at /metrics\n".into(),
        );
    }
    if req.method() != http::Method::GET {
        let mut rsp = reply(
            405,
            "text/plain; charset=utf-8",
            "method not allowed: use GET\n".into(),
        );
        rsp.headers_mut()
            .insert(http::header::ALLOW, http::HeaderValue::from_static("GET"));
        return rsp;
    }
    let openmetrics = req
        .headers()
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    if openmetrics {
        reply(200, OPENMETRICS_CONTENT_TYPE, metrics.render_openmetrics())
    } else {
        reply(200, TEXT_CONTENT_TYPE, metrics.render())
    }
}

/// What the metrics remember between passes (and between one-shot
/// commands): per certificate the last renewal and the failures since, per
/// target its last state and last successful verification.
///
/// Kept as JSON beside the certificates ([`History::path`]), written
/// atomically. A damaged file is logged and read as empty: metrics never
/// stop a renewal.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    #[serde(default)]
    pub certificates: BTreeMap<String, CertHistory>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertHistory {
    /// RFC 3339.
    #[serde(default)]
    pub last_renewal: Option<String>,
    /// RFC 3339.
    #[serde(default)]
    pub last_failure: Option<String>,
    #[serde(default)]
    pub consecutive_failures: u32,
    #[serde(default)]
    pub targets: BTreeMap<String, TargetHistory>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetHistory {
    /// current | stale | unreachable | unverified
    pub state: String,
    /// RFC 3339: when a handshake last saw the current certificate.
    #[serde(default)]
    pub last_verified: Option<String>,
}

fn parse_time(s: Option<&str>) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s?, &time::format_description::well_known::Rfc3339).ok()
}

impl History {
    /// `<state_dir>/ca/<namespace>/metrics.json`: beside the CA's
    /// certificates, like everything else that belongs to them.
    pub fn path(state_dir: &Path, directory_url: &str) -> PathBuf {
        crate::store::namespace_file(state_dir, directory_url, "metrics.json")
    }

    /// The history at `path`; empty when there is none (or it is damaged,
    /// which is logged).
    pub fn load(path: &Path) -> History {
        crate::store::read_json(path)
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot read the metrics history; starting afresh");
                None
            })
            .unwrap_or_default()
    }

    /// Write it atomically (mode 0600; the folder is created 0700 if missing).
    pub fn save(&self, path: &Path) -> io::Result<()> {
        crate::store::write_json(path, self)
    }

    /// Take in what a pass did: renewals and failures, and each target's
    /// verification. A dry run changes nothing.
    pub fn record_report(&mut self, report: &Report, now: OffsetDateTime) {
        use crate::report::Issuance;
        if report.dry_run {
            return;
        }
        let now_s = rfc3339(now);
        for c in &report.certificates {
            let h = self.certificates.entry(c.name.clone()).or_default();
            match &c.issuance {
                Issuance::Renewed { .. } => {
                    h.last_renewal = Some(now_s.clone());
                    h.consecutive_failures = 0;
                }
                Issuance::Failed { .. } => {
                    h.last_failure = Some(now_s.clone());
                    h.consecutive_failures = h.consecutive_failures.saturating_add(1);
                }
                Issuance::NotDue | Issuance::NotAsked | Issuance::Rehearsed { .. } => {}
            }
            for t in &c.targets {
                let th = h.targets.entry(t.name.clone()).or_default();
                match &t.verdict {
                    Some(v) => {
                        th.state = v.state().to_string();
                        if v.is_current() {
                            th.last_verified = Some(now_s.clone());
                        }
                    }
                    // A failed deployment says nothing about what is served.
                    None if matches!(t.action, TargetAction::Failed { .. }) => {
                        if th.state.is_empty() {
                            th.state = TargetState::Unverified.as_str().to_string();
                        }
                    }
                    None => th.state = TargetState::Unverified.as_str().to_string(),
                }
            }
        }
    }

    /// Take in what `status` saw: each target's state; a handshake that saw
    /// the current certificate counts as a verification.
    pub fn record_status(&mut self, status: &Status, now: OffsetDateTime) {
        let now_s = rfc3339(now);
        for c in &status.certificates {
            let h = self.certificates.entry(c.name.clone()).or_default();
            for t in &c.targets {
                let th = h.targets.entry(t.name.clone()).or_default();
                th.state = t.state.to_string();
                if t.state == "current" && t.served_sha256.is_some() {
                    th.last_verified = Some(now_s.clone());
                }
            }
        }
    }

    /// Drop what belongs to certificates and targets no longer configured.
    pub fn retain(&mut self, config: &Config) {
        self.certificates
            .retain(|name, h| match config.certificate(name) {
                None => false,
                Some(c) => {
                    h.targets
                        .retain(|t, _| c.targets.iter().any(|x| &x.name == t));
                    true
                }
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn acme_outcomes_by_status() {
        assert_eq!(AcmeOutcome::from_status(200), AcmeOutcome::Success);
        assert_eq!(AcmeOutcome::from_status(201), AcmeOutcome::Success);
        assert_eq!(AcmeOutcome::from_status(400), AcmeOutcome::ClientError);
        assert_eq!(AcmeOutcome::from_status(429), AcmeOutcome::RateLimited);
        assert_eq!(AcmeOutcome::from_status(503), AcmeOutcome::ServerError);
    }

    #[test]
    fn unknown_values_have_no_series() {
        let m = Metrics::new();
        m.record_certificate(
            "a",
            &CertState {
                not_after: Some(datetime!(2027-02-26 15:00 UTC)),
                ..CertState::default()
            },
        );
        let text = m.render();
        assert!(text.contains(
            "certherd_certificate_expiration_timestamp_seconds{certificate=\"a\"} 1803654000\n"
        ));
        assert!(!text.contains("certherd_certificate_renewal_timestamp_seconds{"));
        assert!(text
            .contains("certherd_certificate_consecutive_renewal_failures{certificate=\"a\"} 0\n"));
        // Setting None later removes the series again.
        m.record_certificate("a", &CertState::default());
        assert!(!m
            .render()
            .contains("certherd_certificate_expiration_timestamp_seconds{"));
    }

    #[test]
    fn forgetting_a_certificate_removes_its_targets() {
        let m = Metrics::new();
        m.record_certificate("a", &CertState::default());
        m.record_target("a", "web1", TargetState::Stale, None);
        m.record_target("b", "web2", TargetState::Current, None);
        m.forget_certificate("a");
        let text = m.render();
        assert!(!text.contains("certificate=\"a\""), "{text}");
        assert!(text.contains("certificate=\"b\""), "{text}");
    }

    #[test]
    fn history_counts_failures_until_a_success() {
        use crate::report::{CertReport, Issuance};
        let now = datetime!(2027-01-01 00:00 UTC);
        let cert = |issuance| CertReport {
            name: "a".into(),
            domains: vec!["a.example".into()],
            due: Some("due".into()),
            issuance,
            rollout: None,
            targets: vec![],
        };
        let failed = Report {
            dry_run: false,
            certificates: vec![cert(Issuance::Failed { error: "x".into() })],
        };
        let mut h = History::default();
        h.record_report(&failed, now);
        h.record_report(&failed, now);
        assert_eq!(h.certificates["a"].consecutive_failures, 2);
        // A dry run changes nothing.
        h.record_report(
            &Report {
                dry_run: true,
                ..failed
            },
            now,
        );
        assert_eq!(h.certificates["a"].consecutive_failures, 2);
        let renewed = Report {
            dry_run: false,
            certificates: vec![cert(Issuance::Renewed {
                serial: "01".into(),
                sha256: "ab".into(),
                not_after: "2027-04-01T00:00:00Z".into(),
            })],
        };
        h.record_report(&renewed, now);
        assert_eq!(h.certificates["a"].consecutive_failures, 0);
        assert_eq!(
            h.certificates["a"].last_renewal.as_deref(),
            Some("2027-01-01T00:00:00Z")
        );
    }
}

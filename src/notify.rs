//! Telling people: `notify:` sends an event — a certificate `renewed`, a
//! target's deployment failed (`deploy_failed`), a target that does not
//! serve the current certificate (`verify_mismatch`), a certificate that
//! expires soon and is still not renewed (`expiring`) — to webhooks (JSON,
//! or Slack-compatible `{"text": ...}`) and programs.
//!
//! A notifier that fails is logged and never fails the command: renewals,
//! deployments and their exit codes do not depend on who could be told.
//!
//! `expiring` repeats, with back-off ([`repeat_after`]), until the
//! certificate is renewed; [`ExpiryAlerts`] remembers what was sent (JSON in
//! the state directory) so that one-shot commands run by a timer back off too.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::cert::rfc3339;
use crate::config::{
    Config, EventKind, NotifierConfig, NotifierKind, Text, WebhookConfig, WebhookFormat,
};
use crate::metrics::CertFacts;
use crate::report::{Issuance, Report, TargetAction};
use crate::verify::Verdict;

/// Attempts per webhook delivery (connection errors, timeouts, 408, 429, 5xx
/// are retried).
pub const WEBHOOK_ATTEMPTS: u32 = 3;
/// Wait before the second attempt; doubled for each further one.
pub const WEBHOOK_FIRST_RETRY: Duration = Duration::from_secs(1);
/// How much of a failing receiver's answer is kept for the log.
const ANSWER_LIMIT: usize = 200;

/// Something worth telling. Serialized (with `host`, `time` and `message`
/// added) as the webhook's JSON body: `{"event": "renewed", "certificate":
/// ..., ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Renewed {
        certificate: String,
        domains: Vec<String>,
        serial: String,
        /// RFC 3339.
        not_after: String,
    },
    DeployFailed {
        certificate: String,
        domains: Vec<String>,
        target: String,
        error: String,
    },
    VerifyMismatch {
        certificate: String,
        domains: Vec<String>,
        target: String,
        /// `stale` (serves another certificate) or `unreachable` (no handshake).
        state: String,
        expected_sha256: Option<String>,
        served_sha256: Option<String>,
        error: Option<String>,
    },
    Expiring {
        certificate: String,
        domains: Vec<String>,
        /// RFC 3339.
        not_after: String,
        /// Whole days left, rounded down; negative once expired.
        days_left: i64,
    },
}

impl Event {
    pub fn kind(&self) -> EventKind {
        match self {
            Event::Renewed { .. } => EventKind::Renewed,
            Event::DeployFailed { .. } => EventKind::DeployFailed,
            Event::VerifyMismatch { .. } => EventKind::VerifyMismatch,
            Event::Expiring { .. } => EventKind::Expiring,
        }
    }

    /// `renewed`, `deploy_failed`, `verify_mismatch` or `expiring`.
    pub fn name(&self) -> &'static str {
        self.kind().as_str()
    }

    pub fn certificate(&self) -> &str {
        match self {
            Event::Renewed { certificate, .. }
            | Event::DeployFailed { certificate, .. }
            | Event::VerifyMismatch { certificate, .. }
            | Event::Expiring { certificate, .. } => certificate,
        }
    }

    pub fn domains(&self) -> &[String] {
        match self {
            Event::Renewed { domains, .. }
            | Event::DeployFailed { domains, .. }
            | Event::VerifyMismatch { domains, .. }
            | Event::Expiring { domains, .. } => domains,
        }
    }

    pub fn target(&self) -> Option<&str> {
        match self {
            Event::DeployFailed { target, .. } | Event::VerifyMismatch { target, .. } => {
                Some(target)
            }
            Event::Renewed { .. } | Event::Expiring { .. } => None,
        }
    }

    /// One line for a person (without the `certherd on HOST:` prefix).
    pub fn summary(&self) -> String {
        let c = self.certificate();
        let domains = self.domains().join(", ");
        match self {
            Event::Renewed {
                serial, not_after, ..
            } => format!("{c} [{domains}] renewed: serial {serial}, expires {not_after}"),
            Event::DeployFailed { target, error, .. } => {
                format!("{c}: deployment to target {target} FAILED: {error}")
            }
            Event::VerifyMismatch {
                target,
                state,
                expected_sha256,
                served_sha256,
                error,
                ..
            } => match (served_sha256, expected_sha256) {
                (Some(served), Some(expected)) if state == "stale" => format!(
                    "{c}: target {target} serves another certificate (sha256 {served}, \
                     expected {expected})"
                ),
                _ => format!(
                    "{c}: target {target} could not be verified ({state}): {}",
                    error.as_deref().unwrap_or("no handshake")
                ),
            },
            Event::Expiring {
                not_after,
                days_left,
                ..
            } => match days_left {
                d if *d < 0 => {
                    format!("{c} [{domains}] EXPIRED at {not_after} and is not renewed")
                }
                1 => format!(
                    "{c} [{domains}] expires in 1 day, at {not_after}, and is not renewed yet"
                ),
                d => format!(
                    "{c} [{domains}] expires in {d} days, at {not_after}, and is not renewed yet"
                ),
            },
        }
    }

    /// The message sent as Slack `text` and `CERTHERD_MESSAGE`.
    pub fn message(&self, host: &str) -> String {
        format!("certherd on {host}: {}", self.summary())
    }

    /// The webhook's JSON body (`format: json`) and `CERTHERD_JSON`.
    pub fn json(&self, host: &str, now: OffsetDateTime) -> serde_json::Value {
        #[derive(Serialize)]
        struct Payload<'a> {
            #[serde(flatten)]
            event: &'a Event,
            host: &'a str,
            time: String,
            message: String,
        }
        serde_json::to_value(Payload {
            event: self,
            host,
            time: rfc3339(now),
            message: self.message(host),
        })
        .expect("an event serializes")
    }

    /// What an `exec` notifier finds in its environment.
    pub fn env(&self, host: &str, now: OffsetDateTime) -> Vec<(String, String)> {
        let mut env = vec![
            ("CERTHERD_EVENT", self.name().to_string()),
            ("CERTHERD_CERTIFICATE", self.certificate().to_string()),
            ("CERTHERD_DOMAINS", self.domains().join(" ")),
            ("CERTHERD_HOST", host.to_string()),
            ("CERTHERD_MESSAGE", self.message(host)),
            ("CERTHERD_JSON", self.json(host, now).to_string()),
        ];
        match self {
            Event::Renewed {
                serial, not_after, ..
            } => {
                env.push(("CERTHERD_SERIAL", serial.clone()));
                env.push(("CERTHERD_NOT_AFTER", not_after.clone()));
            }
            Event::DeployFailed { target, error, .. } => {
                env.push(("CERTHERD_TARGET", target.clone()));
                env.push(("CERTHERD_ERROR", error.clone()));
            }
            Event::VerifyMismatch {
                target,
                state,
                expected_sha256,
                served_sha256,
                error,
                ..
            } => {
                env.push(("CERTHERD_TARGET", target.clone()));
                env.push(("CERTHERD_STATE", state.clone()));
                let optional = [
                    ("CERTHERD_EXPECTED_SHA256", expected_sha256),
                    ("CERTHERD_SERVED_SHA256", served_sha256),
                    ("CERTHERD_ERROR", error),
                ];
                for (k, v) in optional {
                    if let Some(v) = v {
                        env.push((k, v.clone()));
                    }
                }
            }
            Event::Expiring {
                not_after,
                days_left,
                ..
            } => {
                env.push(("CERTHERD_NOT_AFTER", not_after.clone()));
                env.push(("CERTHERD_DAYS_LEFT", days_left.to_string()));
            }
        }
        env.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }
}

/// The events a pass gives rise to: every renewal, every failed deployment,
/// every verification that did not see the current certificate (`stale`,
/// `unreachable`). A dry run gives none. (`expiring` comes from [`ExpiryAlerts`].)
pub fn events_from_report(report: &Report) -> Vec<Event> {
    if report.dry_run {
        return Vec::new();
    }
    let mut events = Vec::new();
    for c in &report.certificates {
        if let Issuance::Renewed {
            serial, not_after, ..
        } = &c.issuance
        {
            events.push(Event::Renewed {
                certificate: c.name.clone(),
                domains: c.domains.clone(),
                serial: serial.clone(),
                not_after: not_after.clone(),
            });
        }
        for t in &c.targets {
            if let TargetAction::Failed { error } = &t.action {
                events.push(Event::DeployFailed {
                    certificate: c.name.clone(),
                    domains: c.domains.clone(),
                    target: t.name.clone(),
                    error: error.clone(),
                });
            }
            match &t.verdict {
                Some(Verdict::Stale {
                    expected_sha256,
                    served_sha256,
                }) => events.push(Event::VerifyMismatch {
                    certificate: c.name.clone(),
                    domains: c.domains.clone(),
                    target: t.name.clone(),
                    state: "stale".to_string(),
                    expected_sha256: Some(expected_sha256.clone()),
                    served_sha256: Some(served_sha256.clone()),
                    error: None,
                }),
                Some(Verdict::Unreachable { error }) => events.push(Event::VerifyMismatch {
                    certificate: c.name.clone(),
                    domains: c.domains.clone(),
                    target: t.name.clone(),
                    state: "unreachable".to_string(),
                    expected_sha256: None,
                    served_sha256: None,
                    error: Some(error.clone()),
                }),
                Some(Verdict::Current { .. }) | None => {}
            }
        }
    }
    events
}

/// This machine's name, for messages (`certherd on HOST: ...`).
pub fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// How [`Notifiers::send_all`] went, for logs and tests; failures were
/// logged already.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendSummary {
    /// (notifier, event) pairs delivered.
    pub delivered: usize,
    /// (notifier, event) pairs that failed after every attempt.
    pub failed: usize,
}

/// The configured notifiers, ready to send.
#[derive(Debug)]
pub struct Notifiers {
    notifiers: Vec<Notifier>,
    host: String,
    first_retry: Duration,
}

#[derive(Debug)]
struct Notifier {
    config: NotifierConfig,
    /// For webhooks: the HTTP client, or why it could not be built (then
    /// every delivery fails with that reason, logged).
    client: Option<Result<reqwest::Client, String>>,
}

impl Notifiers {
    /// Build the notifiers of `notify:`. Never fails: a webhook whose HTTP
    /// client cannot be set up reports that on each delivery.
    pub fn new(configs: &[NotifierConfig]) -> Notifiers {
        let notifiers = configs
            .iter()
            .map(|c| {
                let client = match &c.kind {
                    NotifierKind::Webhook(w) => Some(webhook_client(w)),
                    NotifierKind::Exec(_) => None,
                };
                Notifier {
                    config: c.clone(),
                    client,
                }
            })
            .collect();
        Notifiers {
            notifiers,
            host: hostname(),
            first_retry: WEBHOOK_FIRST_RETRY,
        }
    }

    /// Use `host` in messages instead of this machine's name.
    pub fn with_host(mut self, host: impl Into<String>) -> Notifiers {
        self.host = host.into();
        self
    }

    /// Wait `first` before a webhook's second attempt (doubling after);
    /// [`WEBHOOK_FIRST_RETRY`] by default.
    pub fn with_first_retry(mut self, first: Duration) -> Notifiers {
        self.first_retry = first;
        self
    }

    pub fn is_empty(&self) -> bool {
        self.notifiers.is_empty()
    }

    /// The `expiring_days` of every notifier that takes `expiring` events,
    /// for [`ExpiryAlerts::check`].
    pub fn expiring_thresholds(&self) -> Vec<u32> {
        self.notifiers
            .iter()
            .filter(|n| n.config.wants(EventKind::Expiring))
            .map(|n| n.config.expiring_days)
            .collect()
    }

    /// Send every event to every notifier that takes it (an `expiring`
    /// event only to those whose `expiring_days` it is under). Notifiers
    /// work concurrently, each through its events in order. Every failure is
    /// logged with the notifier and the event; none is returned.
    pub async fn send_all(&self, events: &[Event]) -> SendSummary {
        if events.is_empty() || self.notifiers.is_empty() {
            return SendSummary::default();
        }
        let now = OffsetDateTime::now_utc();
        let per_notifier = self.notifiers.iter().map(|n| async move {
            let mut summary = SendSummary::default();
            for e in events.iter().filter(|e| n.takes(e)) {
                match self.send_one(n, e, now).await {
                    Ok(how) => {
                        summary.delivered += 1;
                        tracing::info!(notifier = %n.config.name, event = e.name(), certificate = e.certificate(), "notified ({how})");
                    }
                    Err(error) => {
                        summary.failed += 1;
                        tracing::warn!(notifier = %n.config.name, event = e.name(), certificate = e.certificate(), %error, "notification failed");
                    }
                }
            }
            summary
        });
        futures_util::future::join_all(per_notifier)
            .await
            .into_iter()
            .fold(SendSummary::default(), |a, b| SendSummary {
                delivered: a.delivered + b.delivered,
                failed: a.failed + b.failed,
            })
    }

    async fn send_one(
        &self,
        n: &Notifier,
        e: &Event,
        now: OffsetDateTime,
    ) -> Result<String, String> {
        match &n.config.kind {
            NotifierKind::Webhook(w) => {
                let client = match &n.client {
                    Some(Ok(c)) => c,
                    Some(Err(e)) => return Err(e.clone()),
                    None => return Err("no HTTP client".to_string()),
                };
                let body = match w.format {
                    WebhookFormat::Json => e.json(&self.host, now),
                    WebhookFormat::Slack => {
                        serde_json::json!({ "text": slack_escape(&e.message(&self.host)) })
                    }
                };
                post(client, w, &body.to_string(), self.first_retry).await
            }
            NotifierKind::Exec(cmd) => {
                let outcome = crate::process::run(&cmd.argv, &e.env(&self.host, now), cmd.timeout)
                    .await
                    .map_err(|err| err.to_string())?;
                if outcome.success() {
                    Ok(outcome.summary())
                } else {
                    Err(outcome.summary())
                }
            }
        }
    }
}

impl Notifier {
    fn takes(&self, e: &Event) -> bool {
        if !self.config.wants(e.kind()) {
            return false;
        }
        match e {
            Event::Expiring { days_left, .. } => *days_left < i64::from(self.config.expiring_days),
            _ => true,
        }
    }
}

/// Slack's three escapes (`&`, `<`, `>`), so that a message is shown as written.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A client like the ACME one: Mozilla's roots plus the webhook's
/// `trust_roots`, certificates always checked, no redirects followed (a
/// redirect would carry the headers elsewhere).
fn webhook_client(w: &WebhookConfig) -> Result<reqwest::Client, String> {
    let tls = crate::acme::http::tls_config(&w.trust_roots).map_err(|e| e.to_string())?;
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(w.timeout)
        .timeout(w.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("certherd/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("HTTP client: {}", crate::acme::http::error_chain(&e)))
}

/// How to name the webhook's URL in a message: a secret URL is never shown.
fn url_shown(url: &Text) -> String {
    match url {
        Text::Plain(u) => u.clone(),
        Text::Secret(s) => format!("the URL from {}", s.origin()),
    }
}

/// POST `body` with bounded retries; `Ok` says how it went, `Err` why not.
async fn post(
    client: &reqwest::Client,
    w: &WebhookConfig,
    body: &str,
    first_retry: Duration,
) -> Result<String, String> {
    let mut delay = first_retry;
    let mut attempt = 1;
    loop {
        let mut rb = client
            .post(w.url.expose())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
        for (name, value) in &w.headers {
            let mut v = http::HeaderValue::from_str(value.expose())
                .map_err(|_| format!("header `{name}` has an invalid value"))?;
            v.set_sensitive(value.is_secret());
            rb = rb.header(name.as_str(), v);
        }
        let (problem, retry) = match rb.send().await {
            Ok(rsp) if rsp.status().is_success() => {
                return Ok(format!(
                    "HTTP {} after {attempt} attempt(s)",
                    rsp.status().as_u16()
                ));
            }
            Ok(rsp) => {
                let status = rsp.status();
                let answer = rsp.text().await.unwrap_or_default();
                let answer: String = answer.trim().chars().take(ANSWER_LIMIT).collect();
                let retry = status.is_server_error() || matches!(status.as_u16(), 408 | 429);
                let problem = if answer.is_empty() {
                    format!("HTTP {status}")
                } else {
                    format!("HTTP {status}: {answer}")
                };
                (problem, retry)
            }
            // Without the URL: it may be a secret.
            Err(e) => (crate::acme::http::error_chain(&e.without_url()), true),
        };
        if !retry || attempt >= WEBHOOK_ATTEMPTS {
            return Err(format!(
                "POST to {}: {problem} (after {attempt} attempt(s))",
                url_shown(&w.url)
            ));
        }
        tracing::debug!(attempt, wait_ms = delay.as_millis() as u64, %problem, "webhook delivery failed; retrying");
        tokio::time::sleep(delay).await;
        delay *= 2;
        attempt += 1;
    }
}

/// How long after the `sent`-th `expiring` alert for a certificate the next
/// one goes out: 1 h, 2 h, 4 h, … doubling, at most 24 h.
pub fn repeat_after(sent: u32) -> Duration {
    const HOUR: u64 = 3600;
    let hours = 1u64 << sent.saturating_sub(1).min(5);
    Duration::from_secs((hours * HOUR).min(24 * HOUR))
}

/// What was sent about one certificate that is expiring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertState {
    /// RFC 3339.
    pub first_sent: String,
    /// RFC 3339.
    pub last_sent: String,
    /// Alerts sent since the first, or since the last escalation.
    pub sent: u32,
    /// The smallest `expiring_days` the certificate was under at the last
    /// alert: crossing a smaller one (a notifier that wants to know later,
    /// e.g. a pager at 3 days) sends at once.
    pub level_days: u32,
}

/// The `expiring` alerts in progress, per certificate, kept across passes
/// and commands ([`ExpiryAlerts::path`]) so that the back-off survives a
/// one-shot `renew` run by a timer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpiryAlerts {
    #[serde(default)]
    pub certificates: BTreeMap<String, AlertState>,
}

fn parse_time(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

impl ExpiryAlerts {
    /// `<state_dir>/ca/<namespace>/alerts.json`.
    pub fn path(state_dir: &Path, directory_url: &str) -> PathBuf {
        crate::store::namespace_file(state_dir, directory_url, "alerts.json")
    }

    /// The alerts at `path`; none when there is no file (or a damaged one,
    /// which is logged: alerts then start over).
    pub fn load(path: &Path) -> ExpiryAlerts {
        crate::store::read_json(path)
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot read the alert state; starting afresh");
                None
            })
            .unwrap_or_default()
    }

    /// Write it atomically (mode 0600; the folder is created 0700 if missing).
    pub fn save(&self, path: &Path) -> io::Result<()> {
        crate::store::write_json(path, self)
    }

    /// Decide about one certificate after a pass: an `expiring` event when it
    /// has less than one of `thresholds` days left (the notifiers'
    /// `expiring_days`), is `still_due` (due, and this pass did not renew
    /// it), and the back-off allows; the alert is cleared (resolved) as soon
    /// as either stops being true.
    pub fn check(
        &mut self,
        cert: &str,
        domains: &[String],
        not_after: Option<OffsetDateTime>,
        still_due: bool,
        now: OffsetDateTime,
        thresholds: &[u32],
    ) -> Option<Event> {
        let level = not_after.filter(|_| still_due).and_then(|na| {
            let remaining = na - now;
            thresholds
                .iter()
                .copied()
                .filter(|days| remaining < time::Duration::days(i64::from(*days)))
                .min()
        });
        let Some((not_after, level)) = not_after.zip(level) else {
            if self.certificates.remove(cert).is_some() {
                tracing::info!(certificate = cert, "expiry alert resolved");
            }
            return None;
        };
        let now_s = rfc3339(now);
        let send = match self.certificates.get_mut(cert) {
            None => {
                self.certificates.insert(
                    cert.to_string(),
                    AlertState {
                        first_sent: now_s,
                        last_sent: rfc3339(now),
                        sent: 1,
                        level_days: level,
                    },
                );
                true
            }
            Some(s) if level < s.level_days => {
                *s = AlertState {
                    last_sent: now_s,
                    sent: 1,
                    level_days: level,
                    ..s.clone()
                };
                true
            }
            Some(s) => {
                let last = parse_time(&s.last_sent).unwrap_or(OffsetDateTime::UNIX_EPOCH);
                let due = last + repeat_after(s.sent);
                if now >= due {
                    s.last_sent = now_s;
                    s.sent = s.sent.saturating_add(1);
                    true
                } else {
                    false
                }
            }
        };
        send.then(|| Event::Expiring {
            certificate: cert.to_string(),
            domains: domains.to_vec(),
            not_after: rfc3339(not_after),
            days_left: (not_after - now).whole_seconds().div_euclid(86_400),
        })
    }

    /// [`ExpiryAlerts::check`] for every configured certificate (the facts
    /// of the pass, by name; a certificate without facts is left as it
    /// was), and forget certificates no longer configured.
    pub fn check_all(
        &mut self,
        config: &Config,
        facts: &[CertFacts],
        now: OffsetDateTime,
        thresholds: &[u32],
    ) -> Vec<Event> {
        self.certificates
            .retain(|name, _| config.certificate(name).is_some());
        let mut events = Vec::new();
        for cert in &config.certificates {
            let Some(f) = facts.iter().find(|f| f.name == cert.name) else {
                continue;
            };
            if let Some(e) = self.check(
                &cert.name,
                &cert.domains,
                f.not_after,
                f.still_due,
                now,
                thresholds,
            ) {
                events.push(e);
            }
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn repeat_schedule() {
        let table = [
            (0, 1),
            (1, 1),
            (2, 2),
            (3, 4),
            (4, 8),
            (5, 16),
            (6, 24),
            (7, 24),
            (100, 24),
        ];
        for (sent, hours) in table {
            assert_eq!(
                repeat_after(sent),
                Duration::from_secs(hours * 3600),
                "after {sent} alerts"
            );
        }
    }

    /// A certificate 10 days from expiry whose renewals keep failing,
    /// checked every 30 minutes for two days: alerts at 0 h, 1 h, 3 h, 7 h,
    /// 15 h, 31 h, 55 h…; then a pager's 3-day threshold; then renewed.
    #[test]
    fn expiring_alerts_back_off_escalate_and_resolve() {
        let start = datetime!(2027-01-01 00:00 UTC);
        let not_after = start + time::Duration::days(10);
        let domains = ["a.example".to_string()];
        let mut alerts = ExpiryAlerts::default();
        let mut sent_at = Vec::new();
        for half_hours in 0..(48 * 2) {
            let now = start + time::Duration::minutes(30 * half_hours);
            if let Some(e) = alerts.check("a", &domains, Some(not_after), true, now, &[14, 3]) {
                let Event::Expiring { days_left, .. } = e else {
                    panic!("{e:?}")
                };
                assert!((8..=10).contains(&days_left), "{days_left}");
                sent_at.push(half_hours as f64 / 2.0);
            }
        }
        assert_eq!(sent_at, [0.0, 1.0, 3.0, 7.0, 15.0, 31.0]);

        // A day later, the 24 h repeat; just over 3 days left, nothing new...
        let now = not_after - time::Duration::days(3) - time::Duration::hours(2);
        assert!(alerts
            .check("a", &domains, Some(not_after), true, now, &[14, 3])
            .is_some());
        let now = not_after - time::Duration::days(3) - time::Duration::minutes(1);
        assert!(alerts
            .check("a", &domains, Some(not_after), true, now, &[14, 3])
            .is_none());
        // ...just under: at once.
        let now = not_after - time::Duration::days(3) + time::Duration::minutes(1);
        let e = alerts
            .check("a", &domains, Some(not_after), true, now, &[14, 3])
            .expect("escalation is sent at once");
        assert_eq!(
            e,
            Event::Expiring {
                certificate: "a".into(),
                domains: domains.to_vec(),
                not_after: "2027-01-11T00:00:00Z".into(),
                days_left: 2,
            }
        );
        assert_eq!(alerts.certificates["a"].level_days, 3);
        assert_eq!(alerts.certificates["a"].sent, 1);
        assert_eq!(alerts.certificates["a"].first_sent, "2027-01-01T00:00:00Z");

        // Renewed: resolved, and a later problem starts over.
        assert!(alerts
            .check("a", &domains, Some(not_after), false, now, &[14, 3])
            .is_none());
        assert!(alerts.certificates.is_empty());
    }

    #[test]
    fn no_alert_when_not_due_or_far_from_expiry_or_never_issued() {
        let now = datetime!(2027-01-01 00:00 UTC);
        let mut alerts = ExpiryAlerts::default();
        let soon = Some(now + time::Duration::days(5));
        let later = Some(now + time::Duration::days(20));
        assert!(alerts.check("a", &[], soon, false, now, &[14]).is_none());
        assert!(alerts.check("a", &[], later, true, now, &[14]).is_none());
        assert!(alerts.check("a", &[], None, true, now, &[14]).is_none());
        assert!(alerts.check("a", &[], soon, true, now, &[]).is_none());
        assert!(alerts.certificates.is_empty());
    }

    #[test]
    fn an_expired_certificate_has_negative_days_left() {
        let now = datetime!(2027-01-01 12:00 UTC);
        let mut alerts = ExpiryAlerts::default();
        let e = alerts
            .check(
                "a",
                &["a.example".to_string()],
                Some(datetime!(2027-01-01 00:00 UTC)),
                true,
                now,
                &[14],
            )
            .unwrap();
        assert_eq!(
            e.summary(),
            "a [a.example] EXPIRED at 2027-01-01T00:00:00Z and is not renewed"
        );
        let Event::Expiring { days_left, .. } = e else {
            unreachable!()
        };
        assert_eq!(days_left, -1);
    }

    #[test]
    fn slack_text_is_escaped() {
        assert_eq!(slack_escape("a <b> & c"), "a &lt;b&gt; &amp; c");
    }
}

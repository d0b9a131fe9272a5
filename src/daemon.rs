//! `certherd run`: the always-on agent. A schedule around the same pass as
//! `renew`: renew what is due, bring every target to the current
//! certificate, verify.
//!
//! ```text
//!   start ─▶ READY ─▶ pass ─▶ compute next wake ─▶ sleep ─▶ pass ─▶ …
//!                      ▲            SIGHUP: reload the configuration (a broken one is logged, the old one kept)
//!                      └─────────── SIGTERM/SIGINT: stop; a write in progress finishes; exit 0
//! ```
//!
//! The next wake is the earliest of: a certificate's renewal time (from
//! the same plan `renew` uses), a retry after a failed pass (exponential
//! backoff, capped, never past the certificate's expiry), and the next
//! verification round (`check_interval` plus a random share of `jitter`).
//! Between wakes the agent sleeps: no polling (a systemd watchdog, when the
//! unit asks for one, is the only periodic wake-up).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::signal::unix::{signal, SignalKind};

use crate::acme::solver::Solvers;
use crate::cert::rfc3339;
use crate::config::Config;
use crate::observe::{Kind, Observer};
use crate::pipeline::{self, RenewOptions};
use crate::plan;
use crate::report::Report;
use crate::store::Store;
use crate::systemd;

/// The first retry after a failure; it doubles with each failure after that.
const RETRY_FIRST: Duration = Duration::from_secs(60);
/// The longest wait between retries.
const RETRY_CAP: Duration = Duration::from_secs(4 * 3600);
/// A failing certificate is retried at the latest this long before it expires.
const EXPIRY_MARGIN: Duration = Duration::from_secs(3600);
/// How long an interrupted pass may spend removing its challenges.
const CLEANUP_LIMIT: Duration = Duration::from_secs(30);

/// What the agent will do next, and when.
#[derive(Debug, Clone, PartialEq)]
pub struct Wake {
    pub at: OffsetDateTime,
    pub reason: String,
}

/// A certificate whose last pass failed.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub count: u32,
    pub retry_at: OffsetDateTime,
}

/// The delay before retry number `count` (1 for the first failure).
pub fn retry_delay(count: u32) -> Duration {
    let factor = 2u32.saturating_pow(count.saturating_sub(1).min(16));
    RETRY_FIRST.saturating_mul(factor).min(RETRY_CAP)
}

/// When to retry a certificate that failed for the `count`th time at `now`:
/// after the backoff, but never later than shortly before it expires.
pub fn retry_at(
    count: u32,
    now: OffsetDateTime,
    not_after: Option<OffsetDateTime>,
) -> OffsetDateTime {
    let backoff = now + retry_delay(count);
    match not_after {
        Some(na) if na - EXPIRY_MARGIN < backoff => {
            (na - EXPIRY_MARGIN).max(now + RETRY_FIRST.min(retry_delay(count)))
        }
        _ => backoff,
    }
}

/// What the schedule needs to know of one stored certificate.
#[derive(Debug, Clone)]
pub struct Known {
    pub info: crate::cert::CertInfo,
    /// The CA's renewal window (ARI) for it, when one is stored.
    pub ari: Option<plan::AriWindow>,
    /// When to ask the CA for its window again.
    pub ari_next_fetch: Option<OffsetDateTime>,
}

/// The next wake: pure, from what the store holds, the failures so far,
/// `now` and a jitter sample in `[0, jitter)`.
pub fn next_wake(
    config: &Config,
    current: &HashMap<String, Known>,
    failures: &HashMap<String, Failure>,
    now: OffsetDateTime,
    jitter: Duration,
) -> Wake {
    let mut wake = Wake {
        at: now + config.renewal.check_interval + jitter,
        reason: "verify every target".to_string(),
    };
    for cert in &config.certificates {
        let candidate = if let Some(f) = failures.get(&cert.name) {
            Wake {
                at: f.retry_at,
                reason: format!("retry {} (failed {} time(s))", cert.name, f.count),
            }
        } else {
            let known = current.get(&cert.name);
            let p = plan::plan_with_ari(
                cert,
                known.map(|k| &k.info),
                known.and_then(|k| k.ari.as_ref()),
                now,
                false,
            );
            let fetch = known
                .and_then(|k| k.ari_next_fetch)
                .filter(|_| cert.renewal.ari)
                .map(|at| Wake {
                    at,
                    reason: format!("ask the CA for the renewal window of {}", cert.name),
                });
            let renew = match (&p.due, p.renew_at) {
                (Some(why), _) => Some(Wake {
                    at: now,
                    reason: format!("renew {}: {why}", cert.name),
                }),
                (None, Some(at)) => Some(Wake {
                    at,
                    reason: format!("renew {}", cert.name),
                }),
                (None, None) => None,
            };
            match [renew, fetch].into_iter().flatten().min_by_key(|w| w.at) {
                Some(w) => w,
                None => continue,
            }
        };
        if candidate.at < wake.at {
            wake = candidate;
        }
    }
    wake
}

/// The current certificates and their stored renewal windows, read without a lock.
fn current_infos(config: &Config) -> HashMap<String, Known> {
    let store = Store::open_readonly(&config.state_dir, &config.acme.directory);
    config
        .certificates
        .iter()
        .filter_map(|c| match store.current(&c.name) {
            Ok(Some(b)) => {
                let record = store
                    .ari_record(&c.name)
                    .ok()
                    .flatten()
                    .filter(|r| r.sha256 == b.info.sha256);
                let known = Known {
                    ari: record.as_ref().and_then(crate::acme::ari::window),
                    ari_next_fetch: record.as_ref().and_then(|r| crate::acme::ari::parse_time(&r.next_fetch)),
                    info: b.info,
                };
                Some((c.name.clone(), known))
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(certificate = %c.name, error = %e, "cannot read the stored certificate");
                None
            }
        })
        .collect()
}

fn jitter_sample(config: &Config) -> Duration {
    let max = config.renewal.jitter;
    if max.is_zero() {
        Duration::ZERO
    } else {
        max.mul_f64(rand::random::<f64>())
    }
}

/// Update the failures after a pass: a certificate whose renewal or any of
/// whose targets failed is retried with backoff; a good pass clears it.
fn record_pass(
    report: &Report,
    current: &HashMap<String, Known>,
    failures: &mut HashMap<String, Failure>,
    now: OffsetDateTime,
) {
    for c in &report.certificates {
        if c.ok() {
            if failures.remove(&c.name).is_some() {
                tracing::info!(certificate = %c.name, "recovered");
            }
            continue;
        }
        let count = failures.get(&c.name).map_or(1, |f| f.count + 1);
        let at = retry_at(count, now, current.get(&c.name).map(|k| k.info.not_after));
        tracing::warn!(certificate = %c.name, failures = count, retry_at = %rfc3339(at), "pass failed; will retry");
        failures.insert(
            c.name.clone(),
            Failure {
                count,
                retry_at: at,
            },
        );
    }
}

fn summary(report: &Report) -> String {
    use crate::report::Issuance;
    let renewed = report
        .certificates
        .iter()
        .filter(|c| matches!(c.issuance, Issuance::Renewed { .. }))
        .count();
    let failed = report.certificates.iter().filter(|c| !c.ok()).count();
    format!(
        "{renewed} renewed, {failed} with failures, {} checked",
        report.certificates.len()
    )
}

/// Run the agent until SIGTERM or SIGINT. Returns the exit code.
pub async fn run(config_path: &Path, mut config: Config, solvers: &Solvers) -> u8 {
    let notifier = Arc::new(systemd::Notifier::from_env());
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let watchdog = systemd::watchdog_interval().map(|every| {
        let n = notifier.clone();
        tokio::spawn(async move {
            loop {
                n.send("WATCHDOG=1");
                tokio::time::sleep(every).await;
            }
        })
    });

    // One observer for the agent's life: its metrics are what /metrics serves.
    let observer = Observer::new();
    let metrics_server = match config.metrics.as_ref().and_then(|m| m.listen) {
        Some(listen) => match observer
            .metrics()
            .serve(listen, std::future::pending::<()>())
            .await
        {
            Ok(server) => {
                tracing::info!(%listen, "serving metrics at /metrics");
                Some(server)
            }
            Err(e) => {
                tracing::error!(%listen, error = %e, "cannot serve metrics");
                return 1;
            }
        },
        None => None,
    };
    let mut failures: HashMap<String, Failure> = HashMap::new();
    // The first pass comes at once: it renews what is due and verifies every target.
    let mut wake = Wake {
        at: OffsetDateTime::now_utc(),
        reason: "start: renew what is due, verify every target".to_string(),
    };
    tracing::info!(certificates = config.certificates.len(), "agent started");
    notifier.status(&format!("next: {} at {}", wake.reason, rfc3339(wake.at)));
    notifier.ready();

    let code = loop {
        let sleep = (wake.at - OffsetDateTime::now_utc()).max(time::Duration::ZERO);
        let sleep = Duration::try_from(sleep).unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = hup.recv() => {
                notifier.reloading();
                match crate::config::load(config_path) {
                    Ok(new) => {
                        tracing::info!(path = %config_path.display(), certificates = new.certificates.len(), "configuration reloaded");
                        failures.retain(|name, _| new.certificate(name).is_some());
                        config = new;
                        wake = Wake { at: OffsetDateTime::now_utc(), reason: "configuration reloaded".into() };
                    }
                    Err(errors) => {
                        for e in &errors.errors {
                            tracing::error!(error = %e, "the new configuration is invalid; still running on the previous one");
                        }
                    }
                }
                notifier.ready();
                notifier.status(&format!("next: {} at {}", wake.reason, rfc3339(wake.at)));
                continue;
            }
            _ = term.recv() => break 0,
            _ = int.recv() => break 0,
        }

        tracing::info!(reason = %wake.reason, "pass started");
        notifier.status(&format!("working: {}", wake.reason));
        let opts = RenewOptions::default();
        let pass = pipeline::renew(&config, &opts, solvers);
        let outcome = tokio::select! {
            outcome = pass => outcome,
            _ = term.recv() => { interrupted(solvers, "SIGTERM").await; break 0 }
            _ = int.recv() => { interrupted(solvers, "SIGINT").await; break 0 }
        };
        let now = OffsetDateTime::now_utc();
        let current = current_infos(&config);
        match outcome {
            Ok(report) => {
                tracing::info!(summary = %summary(&report), "pass finished");
                record_pass(&report, &current, &mut failures, now);
                observer.after_report(&config, &report, Kind::Renew).await;
            }
            Err(e) => {
                // The whole pass could not run (state directory locked, unreadable, …).
                tracing::error!(error = %crate::acme::http::error_chain(&e), "pass failed");
                for c in &config.certificates {
                    let count = failures.get(&c.name).map_or(1, |f| f.count + 1);
                    let at = retry_at(count, now, current.get(&c.name).map(|k| k.info.not_after));
                    failures.insert(
                        c.name.clone(),
                        Failure {
                            count,
                            retry_at: at,
                        },
                    );
                }
            }
        }
        wake = next_wake(&config, &current, &failures, now, jitter_sample(&config));
        tracing::info!(at = %rfc3339(wake.at), reason = %wake.reason, "next action");
        notifier.status(&format!("next: {} at {}", wake.reason, rfc3339(wake.at)));
    };
    notifier.stopping();
    if let Some(w) = watchdog {
        w.abort();
    }
    if let Some(server) = metrics_server {
        server.abort();
    }
    tracing::info!("agent stopped");
    code
}

async fn interrupted(solvers: &Solvers, signal: &str) {
    tracing::info!(
        signal,
        "stopping: the pass in progress is cut short after its current step"
    );
    if tokio::time::timeout(CLEANUP_LIMIT, solvers.cleanup_all())
        .await
        .is_err()
    {
        tracing::warn!("challenge cleanup did not finish within {CLEANUP_LIMIT:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let mins: Vec<u64> = (1..=10).map(|n| retry_delay(n).as_secs() / 60).collect();
        assert_eq!(mins, [1, 2, 4, 8, 16, 32, 64, 128, 240, 240]);
        assert_eq!(retry_delay(u32::MAX), RETRY_CAP);
    }

    #[test]
    fn a_retry_never_waits_past_the_expiry() {
        let now = datetime!(2026-01-01 0:00 UTC);
        // Far from expiry: the backoff.
        assert_eq!(
            retry_at(3, now, Some(now + time::Duration::days(10))),
            now + time::Duration::minutes(4)
        );
        // Expiring in 90 minutes: the 4-hour backoff is cut to expiry minus the margin.
        assert_eq!(
            retry_at(9, now, Some(now + time::Duration::minutes(90))),
            now + time::Duration::minutes(30)
        );
        // Already expired: still backs off (at least the first delay).
        assert_eq!(
            retry_at(9, now, Some(now - time::Duration::days(1))),
            now + time::Duration::minutes(1)
        );
    }

    fn config() -> Config {
        let yaml = "acme: { directory: https://ca.test/dir }\n\
                    renewal: { check_interval: 6h, jitter: 0s }\n\
                    challenges: { s: { type: http-01, listen: \"127.0.0.1:80\" } }\n\
                    certificates:\n  a: { domains: [a.test], challenge: s }\n";
        crate::config::load_str(
            yaml,
            std::path::Path::new("/etc/certherd/certherd.yaml"),
            &|_| None,
        )
        .unwrap()
    }

    fn known(
        now: OffsetDateTime,
        ari: Option<plan::AriWindow>,
        next_fetch: Option<OffsetDateTime>,
    ) -> HashMap<String, Known> {
        let info = crate::cert::CertInfo {
            serial: "01".into(),
            sha256: "00".into(),
            not_before: now - time::Duration::days(10),
            not_after: now + time::Duration::days(80),
            domains: vec!["a.test".into()],
            key_type: Some(crate::config::KeyType::EcdsaP256),
            authority_key_id: None,
        };
        HashMap::from([(
            "a".to_string(),
            Known {
                info,
                ari,
                ari_next_fetch: next_fetch,
            },
        )])
    }

    #[test]
    fn the_next_wake_is_the_earliest_action() {
        let cfg = config();
        let now = datetime!(2026-01-01 0:00 UTC);
        let none = HashMap::new();
        // Nothing stored: due at once.
        let w = next_wake(&cfg, &none, &none_failures(), now, Duration::ZERO);
        assert_eq!(
            (w.at, w.reason.as_str()),
            (now, "renew a: no certificate yet")
        );
        // Fresh certificate: the next verification round.
        let w = next_wake(
            &cfg,
            &known(now, None, None),
            &none_failures(),
            now,
            Duration::from_secs(60),
        );
        assert_eq!(
            (w.at, w.reason.as_str()),
            (now + time::Duration::minutes(361), "verify every target")
        );
        // An ARI moment before the round wins.
        let ari = plan::AriWindow {
            start: now + time::Duration::hours(1),
            end: now + time::Duration::hours(3),
            renew_at: now + time::Duration::hours(2),
        };
        let w = next_wake(
            &cfg,
            &known(now, Some(ari), None),
            &none_failures(),
            now,
            Duration::ZERO,
        );
        assert_eq!(
            (w.at, w.reason.as_str()),
            (now + time::Duration::hours(2), "renew a")
        );
        // Asking the CA again comes first when sooner.
        let w = next_wake(
            &cfg,
            &known(now, Some(ari), Some(now + time::Duration::minutes(30))),
            &none_failures(),
            now,
            Duration::ZERO,
        );
        assert_eq!(
            (w.at, w.reason.as_str()),
            (
                now + time::Duration::minutes(30),
                "ask the CA for the renewal window of a"
            )
        );
        // A failure's retry replaces the certificate's own schedule.
        let failures = HashMap::from([(
            "a".to_string(),
            Failure {
                count: 2,
                retry_at: now + time::Duration::minutes(2),
            },
        )]);
        let w = next_wake(&cfg, &none, &failures, now, Duration::ZERO);
        assert_eq!(
            (w.at, w.reason.as_str()),
            (
                now + time::Duration::minutes(2),
                "retry a (failed 2 time(s))"
            )
        );
    }

    fn none_failures() -> HashMap<String, Failure> {
        HashMap::new()
    }
}

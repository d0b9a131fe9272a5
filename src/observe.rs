//! After a pass: what the outside world is told. The history of renewals
//! and verifications, the Prometheus metrics (the textfile of one-shot
//! commands, or the agent's `/metrics`) and the notifications. Nothing here
//! changes the outcome of a pass: a failure is logged, never fatal.

use time::OffsetDateTime;

use crate::config::Config;
use crate::metrics::{CertFacts, History, Metrics};
use crate::notify::{events_from_report, ExpiryAlerts, Notifiers};
use crate::report::{Report, Status};
use crate::store::Store;

/// What each configured certificate looks like now, from the store and the plan.
pub fn facts(config: &Config, now: OffsetDateTime) -> Vec<CertFacts> {
    let store = Store::open_readonly(&config.state_dir, &config.acme.directory);
    config
        .certificates
        .iter()
        .map(|c| {
            let current = store.current(&c.name).ok().flatten();
            let info = current.as_ref().map(|b| &b.info);
            let window = match info {
                Some(i) if c.renewal.ari => store
                    .ari_record(&c.name)
                    .ok()
                    .flatten()
                    .filter(|r| r.sha256 == i.sha256)
                    .as_ref()
                    .and_then(crate::acme::ari::window),
                _ => None,
            };
            let plan = crate::plan::plan_with_ari(c, info, window.as_ref(), now, false);
            CertFacts {
                name: c.name.clone(),
                not_before: info.map(|i| i.not_before),
                not_after: info.map(|i| i.not_after),
                renew_at: plan.renew_at,
                ari_window: window.map(|w| (w.start, w.end)),
                still_due: plan.due.is_some(),
            }
        })
        .collect()
}

/// Whether anything consumes what an observer produces: without `metrics:`
/// and `notify:` a pass reads and writes nothing more.
fn observed(config: &Config) -> bool {
    config.metrics.is_some() || !config.notify.is_empty()
}

/// Which command produced a report: it decides what may be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `renew` and the agent's passes: history and alerts are saved.
    Renew,
    /// `deploy`: history saved, no expiry alerts.
    Deploy,
    /// `verify`: nothing written to the state directory.
    Verify,
}

/// One per process; the agent keeps it across passes (its `/metrics`).
#[derive(Clone, Default)]
pub struct Observer {
    metrics: Metrics,
}

impl Observer {
    pub fn new() -> Observer {
        Observer::default()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// After `renew`, `deploy`, `verify` or an agent pass (never a dry run).
    pub async fn after_report(&self, config: &Config, report: &Report, kind: Kind) {
        if report.dry_run || !observed(config) {
            return;
        }
        let now = OffsetDateTime::now_utc();
        let facts = facts(config, now);
        let history_path = History::path(&config.state_dir, &config.acme.directory);
        let mut history = History::load(&history_path);
        history.record_report(report, now);
        history.retain(config);
        if kind != Kind::Verify {
            if let Err(e) = history.save(&history_path) {
                tracing::warn!(path = %history_path.display(), error = %e, "cannot save the metrics history");
            }
        }
        self.metrics.update(config, &history, &facts, now);
        self.write_textfile(config);

        let notifiers = Notifiers::new(&config.notify);
        let mut events = events_from_report(report);
        if kind == Kind::Renew {
            let alerts_path = ExpiryAlerts::path(&config.state_dir, &config.acme.directory);
            let mut alerts = ExpiryAlerts::load(&alerts_path);
            events.extend(alerts.check_all(config, &facts, now, &notifiers.expiring_thresholds()));
            if let Err(e) = alerts.save(&alerts_path) {
                tracing::warn!(path = %alerts_path.display(), error = %e, "cannot save the expiry alert state");
            }
        }
        if !events.is_empty() {
            notifiers.send_all(&events).await;
        }
    }

    /// After `status`: metrics only; nothing written to the state directory.
    pub fn after_status(&self, config: &Config, status: &Status) {
        if !observed(config) {
            return;
        }
        let now = OffsetDateTime::now_utc();
        let mut history = History::load(&History::path(&config.state_dir, &config.acme.directory));
        history.record_status(status, now);
        history.retain(config);
        self.metrics
            .update(config, &history, &facts(config, now), now);
        self.write_textfile(config);
    }

    fn write_textfile(&self, config: &Config) {
        if let Some(path) = config.metrics.as_ref().and_then(|m| m.textfile.as_ref()) {
            if let Err(e) = self.metrics.write_textfile(path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot write the metrics textfile");
            }
        }
    }
}

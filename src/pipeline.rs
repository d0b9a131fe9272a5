//! One pass of certherd, top to bottom:
//!
//! ```text
//! plan ─▶ issue (every due certificate, concurrently) ─▶ store ─▶ deploy ─▶ verify ─▶ report
//! ```
//!
//! A failed order stores nothing and deploys nothing new: the previous
//! certificate stays in place in the store and on every target. One
//! target failing is a result in the report, never an early return.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::acme::{self, ari, http::AcmeHttp, solver::Solvers, IssueError, OrderRequest};
use crate::cert::{rfc3339, Bundle};
use crate::config::{CertificateConfig, Config, OnFailure, TargetConfig, TargetKind};
use crate::deploy::{self, BundleFiles};
use crate::plan::{self, CertPlan};
use crate::report::{
    AriStatus, CertReport, CertStatus, Issuance, Report, Rollback, Status, TargetAction,
    TargetReport, TargetStatus,
};
use crate::store::{AriRecord, Store, StoreError, TargetRecord};
use crate::verify::{self, Verdict};

/// How long a writer waits for another certherd to release the state directory.
pub const LOCK_WAIT: Duration = Duration::from_secs(10);
/// Orders worked at once.
const ORDER_CONCURRENCY: usize = 32;
const NO_CERTIFICATE: &str = "no certificate yet: run `certherd renew` first";
/// Certificates whose targets are worked at once.
const CERT_CONCURRENCY: usize = 8;
/// Targets deployed at once within a certificate.
const TARGET_CONCURRENCY: usize = 8;
/// How long a CA found to offer no ARI is believed before its directory
/// is read again.
const ARI_SUPPORT_RECHECK: time::Duration = time::Duration::days(1);
/// The quick look `renew` takes at a target it does not need to change.
const QUICK_VERIFY: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("--cert {0:?}: no certificate of that name in the configuration")]
    UnknownCert(String),
    #[error("--target {0:?}: no target of that name in the selected certificates")]
    UnknownTarget(String),
    #[error("{0}")]
    Tls(#[from] acme::http::TlsSetupError),
}

impl RunError {
    /// The command line named something that does not exist: nothing was attempted.
    pub fn is_usage(&self) -> bool {
        matches!(self, RunError::UnknownCert(_) | RunError::UnknownTarget(_))
    }
}

#[derive(Debug, Clone, Default)]
pub struct RenewOptions {
    pub dry_run: bool,
    pub force: bool,
    pub certs: Vec<String>,
}

fn select<'c>(
    config: &'c Config,
    names: &[String],
) -> Result<Vec<&'c CertificateConfig>, RunError> {
    if names.is_empty() {
        return Ok(config.certificates.iter().collect());
    }
    names
        .iter()
        .map(|n| {
            config
                .certificate(n)
                .ok_or_else(|| RunError::UnknownCert(n.clone()))
        })
        .collect()
}

/// `renew`: plan, issue what is due, store, deploy, verify.
///
/// `solvers` outlives the run so that an interrupted run's challenges can
/// still be cleaned up ([`Solvers::cleanup_all`]).
pub async fn renew(
    config: &Config,
    opts: &RenewOptions,
    solvers: &Solvers,
) -> Result<Report, RunError> {
    let selected = select(config, &opts.certs)?;
    if opts.dry_run {
        return rehearse(config, &selected, opts.force, solvers).await;
    }
    let store = Store::open(&config.state_dir, &config.acme.directory, LOCK_WAIT)?;
    let now = OffsetDateTime::now_utc();

    let names: Vec<&str> = selected.iter().map(|c| c.name.as_str()).collect();
    let mut currents = store.current_all(&names)?;
    // The CA's renewal windows (ARI), fetched where the stored ones are
    // missing or old, before anything is planned.
    let aris = ari_states(config, &selected, &currents, &store, true, now, !opts.force).await;
    let plans: Vec<CertPlan> = selected
        .iter()
        .enumerate()
        .map(|(i, cert)| {
            plan::plan_with_ari(
                cert,
                currents[i].as_ref().map(|b| &b.info),
                aris[i].window().as_ref(),
                now,
                opts.force,
            )
        })
        .collect();
    for p in &plans {
        match &p.due {
            Some(why) => tracing::info!(certificate = %p.name, reason = %why, "due"),
            None => {
                tracing::info!(certificate = %p.name, renew_at = %p.renew_at.map(rfc3339).unwrap_or_default(), "not due")
            }
        }
    }

    let due: Vec<(usize, OrderRequest)> = selected
        .iter()
        .enumerate()
        .filter(|(i, _)| plans[*i].due.is_some())
        .map(|(i, cert)| {
            let replaces = aris[i].cert_id.clone();
            (
                i,
                order_request(config, cert, currents[i].as_ref(), replaces),
            )
        })
        .collect();
    let issued = issue_all(config, &config.acme.directory, Some(&store), &due, solvers).await?;

    // Store what was issued, then bring every certificate's targets to it.
    let mut staged = Vec::new();
    for (i, cert) in selected.iter().enumerate() {
        let (issuance, renewed) = match issued.iter().find(|(j, _)| *j == i) {
            None => (Issuance::NotDue, false),
            Some((_, Err(e))) => {
                tracing::error!(certificate = %cert.name, error = %e, "renewal failed; the previous certificate stays in place");
                let error = e.to_string();
                (Issuance::Failed { error }, false)
            }
            Some((_, Ok(bundle))) => {
                if let Err(e) = store.install(&cert.name, bundle, OffsetDateTime::now_utc()) {
                    // A full or read-only state directory: the issued
                    // certificate is lost, the previous one stays current.
                    tracing::error!(certificate = %cert.name, error = %e, "the new certificate could not be stored; the previous certificate stays in place");
                    let error = format!("storing the new certificate: {e}");
                    staged.push((i, *cert, Issuance::Failed { error }, false));
                    continue;
                }
                tracing::info!(certificate = %cert.name, serial = %bundle.info.serial, not_after = %rfc3339(bundle.info.not_after), "renewed and stored");
                currents[i] = Some(bundle.clone());
                let renewed = Issuance::Renewed {
                    serial: bundle.info.serial.clone(),
                    sha256: bundle.info.sha256.clone(),
                    not_after: rfc3339(bundle.info.not_after),
                };
                (renewed, true)
            }
        };
        staged.push((i, cert, issuance, renewed));
    }
    let store = &store;
    let currents = &currents;
    let plans = &plans;
    let reports: Vec<Result<CertReport, RunError>> = stream::iter(staged)
        .map(|(i, cert, issuance, renewed)| async move {
            // `--force` renews every selected certificate, and a renewed one
            // goes to every target; when the renewal failed, the targets
            // are only checked, as on any run (no reload of every service
            // for the certificate it already has).
            let mode = DeployMode::Renew { renewed };
            let targets = deploy_certificate(store, cert, currents[i].as_ref(), mode, &[]).await?;
            Ok(CertReport::new(
                cert,
                plans[i].due.as_ref().map(|d| d.to_string()),
                issuance,
                targets,
            ))
        })
        .buffered(CERT_CONCURRENCY)
        .collect()
        .await;
    let reports = reports.into_iter().collect::<Result<Vec<_>, _>>()?;
    Ok(Report {
        dry_run: false,
        certificates: reports,
    })
}

/// What ARI knows of one selected certificate.
#[derive(Debug, Clone, Default)]
struct AriState {
    /// The current certificate's ARI identifier (with `renewal.ari`).
    cert_id: Option<String>,
    /// The CA's window for the current certificate.
    record: Option<AriRecord>,
}

impl AriState {
    fn window(&self) -> Option<plan::AriWindow> {
        self.record.as_ref().and_then(ari::window)
    }
}

/// The ARI state of every selected certificate that has a current one and
/// `renewal.ari`: its identifier, and its window from the store, refreshed
/// from the CA (`fetch`) where missing, for another certificate, or past
/// its `Retry-After`. Fetched windows are stored when `save`. Nothing here
/// fails the run: problems are logged and the threshold still applies.
async fn ari_states(
    config: &Config,
    selected: &[&CertificateConfig],
    currents: &[Option<Bundle>],
    store: &Store,
    save: bool,
    now: OffsetDateTime,
    fetch: bool,
) -> Vec<AriState> {
    let mut states = vec![AriState::default(); selected.len()];
    let mut candidates = Vec::new();
    let mut index = Vec::new();
    for (i, cert) in selected.iter().enumerate() {
        let Some(bundle) = &currents[i] else { continue };
        if !cert.renewal.ari {
            continue;
        }
        let cert_id = ari::cert_id_of(&bundle.info);
        let cert_id = match cert_id {
            Ok(id) => id,
            Err(why) => {
                tracing::debug!(certificate = %cert.name, %why, "no ARI identifier; planned by the renewal threshold");
                continue;
            }
        };
        states[i].cert_id = Some(cert_id.clone());
        if !fetch {
            continue;
        }
        let stored = store.ari_record(&cert.name).unwrap_or_else(|e| {
            tracing::warn!(certificate = %cert.name, error = %e, "ignoring the stored ARI window");
            None
        });
        candidates.push(ari::Candidate {
            name: cert.name.clone(),
            sha256: bundle.info.sha256.clone(),
            cert_id,
            stored,
        });
        index.push(i);
    }
    if candidates.is_empty() {
        return states;
    }
    // A CA whose directory offered no ARI is asked again after a day, not
    // on every pass (a pass with nothing due then needs no network).
    let unsupported_since = store
        .ari_unsupported_since()
        .and_then(|t| OffsetDateTime::parse(&t, &Rfc3339).ok());
    if unsupported_since.is_some_and(|t| now - t < ARI_SUPPORT_RECHECK && t <= now) {
        return states;
    }
    let refreshed = ari::refresh(
        &config.acme.trust_roots,
        &config.acme.directory,
        &candidates,
        now,
    )
    .await;
    if save {
        let unsupported = refreshed
            .iter()
            .all(|r| matches!(r, ari::Refreshed::Unsupported));
        let memo = unsupported.then(|| rfc3339(now));
        if memo.is_some() || unsupported_since.is_some() {
            if let Err(e) = store.save_ari_unsupported(memo) {
                tracing::warn!(error = %e, "could not record whether the CA offers ARI");
            }
        }
    }
    for (k, r) in refreshed.into_iter().enumerate() {
        let i = index[k];
        if let (ari::Refreshed::Fetched(record), true) = (&r, save) {
            if let Err(e) = store.save_ari_record(&selected[i].name, record) {
                tracing::warn!(certificate = %selected[i].name, error = %e, "could not store the ARI window");
            }
        }
        states[i].record = r.record().cloned();
    }
    states
}

fn order_request<'c>(
    config: &'c Config,
    cert: &'c CertificateConfig,
    current: Option<&Bundle>,
    replaces: Option<String>,
) -> OrderRequest<'c> {
    let reuse_key = match current {
        Some(b) if cert.reuse_key && b.info.key_type == Some(cert.key) => Some(b.key.clone()),
        _ => None,
    };
    OrderRequest {
        cert,
        solvers: &config.challenges,
        profile: config.acme.profile.as_deref(),
        reuse_key,
        replaces,
    }
}

/// Issue every requested certificate against `directory`: one account,
/// every order created first, then all worked concurrently. The account is
/// saved to `store` when one is given (a dry run keeps it in memory).
async fn issue_all(
    config: &Config,
    directory: &str,
    store: Option<&Store>,
    due: &[(usize, OrderRequest<'_>)],
    solvers: &Solvers,
) -> Result<Vec<(usize, Result<Bundle, IssueError>)>, RunError> {
    if due.is_empty() {
        return Ok(Vec::new());
    }
    let http = AcmeHttp::new(&config.acme.trust_roots, acme::http::RetryPolicy::default())?;
    let readonly;
    let account_store = match store {
        Some(s) => s,
        None => {
            readonly = Store::open_readonly(&config.state_dir, directory);
            &readonly
        }
    };
    let stored = account_store.account()?;
    let account = match acme::account(&config.acme, directory, stored.as_deref(), &http).await {
        Ok((account, new_creds)) => {
            if let (Some(s), Some(json)) = (store, new_creds) {
                s.save_account(&json)?;
                tracing::info!(directory, "ACME account created and stored");
            }
            account
        }
        Err(e) => {
            // Every due certificate fails with the account's error.
            let cause = match e {
                IssueError::Account { cause, .. } => cause,
                other => other.to_string(),
            };
            return Ok(due
                .iter()
                .map(|(i, _)| {
                    let e = IssueError::Account {
                        directory: directory.to_string(),
                        cause: cause.clone(),
                    };
                    (*i, Err(e))
                })
                .collect());
        }
    };
    // Phase one: create every order. Phase two: work them all.
    let orders: Vec<_> = stream::iter(due.iter())
        .map(|(i, req)| {
            let account = &account;
            async move { (*i, req, acme::new_order(account, req).await) }
        })
        .buffered(ORDER_CONCURRENCY)
        .collect()
        .await;
    let results = stream::iter(orders)
        .map(|(i, req, order)| {
            let account = &account;
            async move {
                let result = match order {
                    Ok(mut order) => acme::complete_order(account, &mut order, req, solvers).await,
                    Err(e) => Err(e),
                };
                (i, result)
            }
        })
        .buffer_unordered(ORDER_CONCURRENCY)
        .collect()
        .await;
    Ok(results)
}

/// `renew --dry-run`: the plan, a full order for every selected certificate
/// against the dry-run directory (result discarded), and every target's
/// preflight. Writes nothing anywhere.
async fn rehearse(
    config: &Config,
    selected: &[&CertificateConfig],
    force: bool,
    solvers: &Solvers,
) -> Result<Report, RunError> {
    let store = Store::open_readonly(&config.state_dir, &config.acme.directory);
    let now = OffsetDateTime::now_utc();
    let directory = &config.acme.dry_run_directory;
    // Every solver a selected certificate uses is preflighted before any
    // order starts (a built-in listener then proves it can bind its port).
    let mut solver_problems: BTreeMap<&str, String> = BTreeMap::new();
    for name in selected.iter().flat_map(|c| c.challenge.solver_names()) {
        if solver_problems.contains_key(name) {
            continue;
        }
        let domain = selected
            .iter()
            .flat_map(|c| {
                c.domains
                    .iter()
                    .filter(|d| c.challenge.solver_for(d) == Some(name))
            })
            .next()
            .map(String::as_str);
        let problem = match config.challenges.get(name) {
            Some(s) => solvers
                .preflight(s, domain)
                .await
                .err()
                .map(|e| e.to_string()),
            None => Some("not defined".to_string()),
        };
        solver_problems.insert(name, problem.unwrap_or_default());
    }
    let names: Vec<&str> = selected.iter().map(|c| c.name.as_str()).collect();
    let currents = store.current_all(&names)?;
    // The real CA's windows, fetched but not stored.
    let aris = ari_states(config, selected, &currents, &store, false, now, !force).await;
    let mut plans: Vec<CertPlan> = Vec::new();
    let mut due = Vec::new();
    let mut failed_preflight = Vec::new();
    for (i, cert) in selected.iter().enumerate() {
        let current = &currents[i];
        plans.push(plan::plan_with_ari(
            cert,
            current.as_ref().map(|b| &b.info),
            aris[i].window().as_ref(),
            now,
            force,
        ));
        let problems: Vec<String> = cert
            .challenge
            .solver_names()
            .filter(|n| !solver_problems[n].is_empty())
            .map(|n| format!("challenge {n:?}: {}", solver_problems[n]))
            .collect();
        if problems.is_empty() {
            // Never `replaces`: the certificate of a rehearsal is thrown away.
            due.push((i, order_request(config, cert, current.as_ref(), None)));
        } else {
            failed_preflight.push((i, problems.join("; ")));
        }
    }
    let issued = issue_all(config, directory, None, &due, solvers).await?;

    let mut reports = Vec::new();
    for (i, cert) in selected.iter().enumerate() {
        let issuance = match issued.iter().find(|(j, _)| *j == i) {
            Some((_, Ok(b))) => Issuance::Rehearsed {
                directory: directory.clone(),
                serial: b.info.serial.clone(),
            },
            Some((_, Err(e))) => Issuance::Failed {
                error: format!("test order against {directory}: {e}"),
            },
            None => {
                let (_, problems) = failed_preflight
                    .iter()
                    .find(|(j, _)| *j == i)
                    .expect("preflight failed");
                Issuance::Failed {
                    error: format!("solver preflight: {problems}"),
                }
            }
        };
        // Every target is checked, in the order of the rollout's waves.
        let targets: Vec<TargetReport> =
            stream::iter(selected_waves(cert, &[]).into_iter().flatten())
                .map(|(t, wave)| async move {
                    let problems = deploy::preflight(t).await;
                    let action = if problems.is_empty() {
                        TargetAction::PreflightPassed
                    } else {
                        TargetAction::PreflightFailed { problems }
                    };
                    TargetReport {
                        wave,
                        ..TargetReport::new(t, action)
                    }
                })
                .buffered(cert.rollout.max_parallel)
                .collect()
                .await;
        reports.push(CertReport::new(
            cert,
            plans[i].due.as_ref().map(|d| d.to_string()),
            issuance,
            targets,
        ));
    }
    Ok(Report {
        dry_run: true,
        certificates: reports,
    })
}

#[derive(Debug, Clone, Copy)]
enum DeployMode {
    /// `renew`: push where the target lacks the current certificate.
    Renew { renewed: bool },
    /// `deploy`: push unconditionally.
    Always,
}

/// The targets of `cert` selected by `only` (all when empty), wave by
/// wave, each with its wave number when there is more than one wave.
fn selected_waves<'c>(
    cert: &'c CertificateConfig,
    only: &[String],
) -> Vec<Vec<(&'c TargetConfig, Option<usize>)>> {
    let waves: Vec<Vec<&TargetConfig>> = cert
        .waves()
        .into_iter()
        .map(|w| {
            w.into_iter()
                .filter(|t| only.is_empty() || only.contains(&t.name))
                .collect::<Vec<_>>()
        })
        .filter(|w| !w.is_empty())
        .collect();
    let numbered = waves.len() > 1;
    waves
        .into_iter()
        .enumerate()
        .map(|(i, w)| {
            w.into_iter()
                .map(|t| (t, numbered.then_some(i + 1)))
                .collect()
        })
        .collect()
}

/// Bring every target of `cert` to the current certificate and verify it,
/// following the certificate's `rollout`: wave after wave, at most
/// `max_parallel` targets at once; a wave starts when every target of the
/// one before is deployed and verified. With `on_failure: halt` a failed
/// target stops the rollout after its wave; with `rollback: true` a failed
/// target gets the certificate it held before back.
async fn deploy_certificate(
    store: &Store,
    cert: &CertificateConfig,
    current: Option<&Bundle>,
    mode: DeployMode,
    only: &[String],
) -> Result<Vec<TargetReport>, RunError> {
    let waves = selected_waves(cert, only);
    let Some(bundle) = current else {
        // `renew` already reports why there is none; `deploy` was asked for one.
        let action = match mode {
            DeployMode::Renew { .. } => TargetAction::NothingToDeploy,
            DeployMode::Always => TargetAction::Failed {
                error: NO_CERTIFICATE.to_string(),
            },
        };
        return Ok(waves
            .iter()
            .flatten()
            .map(|(t, wave)| TargetReport {
                wave: *wave,
                ..TargetReport::new(t, action.clone())
            })
            .collect());
    };
    let files = BundleFiles {
        dir: store
            .current_dir(&cert.name)?
            .expect("a current certificate has a directory"),
    };
    let rollout = &cert.rollout;
    let bundle = Arc::new(bundle.clone());
    let mut out = Vec::new();
    let mut halted: Option<String> = None;
    for (w, wave) in waves.iter().enumerate() {
        if let Some(reason) = &halted {
            out.extend(wave.iter().map(|(t, wave)| TargetReport {
                wave: *wave,
                ..TargetReport::new(
                    t,
                    TargetAction::NotReached {
                        reason: reason.clone(),
                    },
                )
            }));
            continue;
        }
        let mut records = Vec::new();
        for (t, _) in wave {
            records.push(store.target_record(&cert.name, &t.name)?);
        }
        let results: Vec<(TargetReport, Option<TargetRecord>)> =
            stream::iter(wave.iter().zip(records))
                .map(|((t, wave), before)| {
                    let (bundle, files) = (bundle.clone(), files.clone());
                    async move {
                        let outcome =
                            one_target(&cert.name, t, &bundle, &files, before.clone(), mode).await;
                        let (mut report, mut record) = (outcome.report, outcome.record);
                        if rollout.rollback && outcome.changed && !report.ok() {
                            let (rollback, restored) =
                                roll_back(store, &cert.name, t, &bundle, before.as_ref()).await;
                            record = Some(restored);
                            report.rollback = Some(rollback);
                        }
                        report.wave = *wave;
                        (report, record)
                    }
                })
                .buffered(rollout.max_parallel)
                .collect()
                .await;
        let mut failed = Vec::new();
        for (report, record) in results {
            if let Some(record) = record {
                // The target is as the report says whether or not this is
                // remembered; without the record the next run deploys again.
                if let Err(e) = store.save_target_record(&cert.name, &report.name, &record) {
                    tracing::error!(certificate = %cert.name, target = %report.name, error = %e, "could not record the target's state; the next run deploys to it again");
                }
            }
            if !report.ok() {
                failed.push(report.name.clone());
            }
            out.push(report);
        }
        let later = w + 1 < waves.len();
        if !failed.is_empty() && later && rollout.on_failure == OnFailure::Halt {
            let reason = format!(
                "the rollout halted after wave {} because {} failed",
                w + 1,
                failed.join(", ")
            );
            tracing::error!(certificate = %cert.name, wave = w + 1, failed = %failed.join(", "), "rollout halted; later waves are not touched");
            halted = Some(reason);
        }
    }
    Ok(out)
}

/// What one target's deployment did.
struct TargetOutcome {
    report: TargetReport,
    /// The record to store for the target, when something was attempted.
    record: Option<TargetRecord>,
    /// The target's files (or its service) may have changed: there is
    /// something to roll back.
    changed: bool,
}

async fn one_target(
    cert_name: &str,
    t: &TargetConfig,
    bundle: &Bundle,
    files: &BundleFiles,
    previous: Option<TargetRecord>,
    mode: DeployMode,
) -> TargetOutcome {
    let mut report = TargetReport::new(t, TargetAction::Checked);
    let push = match mode {
        DeployMode::Always => true,
        DeployMode::Renew { renewed } => {
            let moved = previous.as_ref().is_some_and(|r| {
                r.destination
                    .as_ref()
                    .is_some_and(|d| *d != deploy::destination(t))
            });
            if moved {
                tracing::info!(certificate = %cert_name, target = %t.name, "the target's configuration names another place than its last deployment; deploying");
            }
            let recorded = !moved
                && previous.as_ref().is_some_and(|r| {
                    r.last_error.is_none()
                        && r.deployed_sha256.as_deref() == Some(&bundle.info.sha256)
                });
            let lacks = match deploy::holds(t, bundle) {
                Some(holds) => !holds || !recorded,
                None => !recorded,
            };
            let mut push = renewed || lacks;
            if !push {
                report.action = TargetAction::Unchanged;
                // It should serve the certificate already; if it does not, push again.
                if let Some(v) = &t.verify {
                    let verdict =
                        verify::verify_within(v, bundle, QUICK_VERIFY.min(v.timeout)).await;
                    if verdict.is_current() {
                        report.verdict = Some(verdict);
                        return TargetOutcome {
                            report,
                            record: None,
                            changed: false,
                        };
                    }
                    tracing::warn!(certificate = %cert_name, target = %t.name, problem = %verdict.problem().unwrap_or_default(), "target does not serve the current certificate; deploying again");
                    push = true;
                } else {
                    return TargetOutcome {
                        report,
                        record: None,
                        changed: false,
                    };
                }
            }
            push
        }
    };
    let mut record = None;
    if push {
        match push_and_reload(cert_name, t, bundle, files, &mut report).await {
            Ok(()) => {
                tracing::info!(certificate = %cert_name, target = %t.name, sha256 = %bundle.info.sha256, "deployed");
                report.action = TargetAction::Deployed;
                record = Some(TargetRecord {
                    deployed_sha256: Some(bundle.info.sha256.clone()),
                    deployed_at: Some(rfc3339(OffsetDateTime::now_utc())),
                    last_error: None,
                    destination: Some(deploy::destination(t)),
                });
            }
            Err(failure) => {
                tracing::error!(certificate = %cert_name, target = %t.name, error = %failure.error, "deployment failed");
                report.action = TargetAction::Failed {
                    error: failure.error.clone(),
                };
                let failed = TargetRecord {
                    last_error: Some(failure.error),
                    ..previous.unwrap_or(TargetRecord {
                        deployed_sha256: None,
                        deployed_at: None,
                        last_error: None,
                        destination: None,
                    })
                };
                return TargetOutcome {
                    report,
                    record: Some(failed),
                    changed: failure.changed,
                };
            }
        }
    }
    if let Some(v) = &t.verify {
        let verdict = verify::verify(v, bundle).await;
        match &verdict {
            Verdict::Current {
                chain_complete: true,
                ..
            } => {
                tracing::info!(certificate = %cert_name, target = %t.name, "verified: serves the current certificate")
            }
            Verdict::Current { .. } => tracing::warn!(
                certificate = %cert_name,
                target = %t.name,
                "serves the current certificate, but without its intermediates: clients that lack them will fail"
            ),
            other => {
                tracing::error!(certificate = %cert_name, target = %t.name, state = other.state(), problem = %other.problem().unwrap_or_default(), "verification failed");
                // Remembered, so that the next `renew` deploys again.
                if let Some(r) = record.as_mut() {
                    r.last_error = Some(format!(
                        "verification {}: {}",
                        other.state(),
                        other.problem().unwrap_or_default()
                    ));
                }
            }
        }
        report.verdict = Some(verdict);
    }
    TargetOutcome {
        report,
        record,
        changed: push,
    }
}

/// Give `t` back the certificate it held before this run (`before`), from
/// the versions the store keeps, and verify it serves that one. Returns
/// what happened and the record to store: the target is marked failed
/// either way, so the next `renew` deploys the current certificate again.
async fn roll_back(
    store: &Store,
    cert_name: &str,
    t: &TargetConfig,
    current: &Bundle,
    before: Option<&TargetRecord>,
) -> (Rollback, TargetRecord) {
    let mut rollback = Rollback {
        sha256: None,
        error: None,
        reload: None,
        verdict: None,
    };
    let failed = |why: String| TargetRecord {
        deployed_sha256: None,
        deployed_at: None,
        last_error: Some(why),
        destination: None,
    };
    let Some(previous_sha) = before.and_then(|r| r.deployed_sha256.clone()) else {
        let why = "no rollback: certherd has no record of an earlier certificate on this target"
            .to_string();
        tracing::error!(certificate = %cert_name, target = %t.name, "{why}");
        rollback.error = Some(why.clone());
        return (rollback, failed(why));
    };
    rollback.sha256 = Some(previous_sha.clone());
    if previous_sha == current.info.sha256 {
        let why =
            "no rollback: the certificate the target held before is the current one".to_string();
        rollback.error = Some(why.clone());
        return (rollback, failed(why));
    }
    let (dir, previous) = match store.version_with_sha256(cert_name, &previous_sha) {
        Ok(Some(found)) => found,
        Ok(None) => {
            let why = format!(
                "no rollback: certificate {previous_sha} is no longer in the state directory \
                 (it keeps the current and {} previous versions)",
                crate::store::KEEP_PREVIOUS
            );
            rollback.error = Some(why.clone());
            return (rollback, failed(why));
        }
        Err(e) => {
            let why = format!("no rollback: {e}");
            rollback.error = Some(why.clone());
            return (rollback, failed(why));
        }
    };
    tracing::warn!(certificate = %cert_name, target = %t.name, sha256 = %previous_sha, "rolling back to the previous certificate");
    let mut scratch = TargetReport::new(t, TargetAction::Checked);
    let files = BundleFiles { dir };
    if let Err(failure) = push_and_reload(cert_name, t, &previous, &files, &mut scratch).await {
        tracing::error!(certificate = %cert_name, target = %t.name, error = %failure.error, "rollback failed");
        rollback.reload = scratch.reload;
        rollback.error = Some(failure.error.clone());
        return (
            rollback,
            failed(format!(
                "rollback to {previous_sha} failed: {}",
                failure.error
            )),
        );
    }
    rollback.reload = scratch.reload;
    if let Some(v) = &t.verify {
        let verdict = verify::verify(v, &previous).await;
        if verdict.is_current() {
            tracing::info!(certificate = %cert_name, target = %t.name, sha256 = %previous_sha, "rolled back: serves the previous certificate");
        } else {
            tracing::error!(certificate = %cert_name, target = %t.name, state = verdict.state(), problem = %verdict.problem().unwrap_or_default(), "rolled back, but the previous certificate is not served either");
        }
        rollback.verdict = Some(verdict);
    }
    let record = TargetRecord {
        deployed_sha256: Some(previous_sha.clone()),
        deployed_at: Some(rfc3339(OffsetDateTime::now_utc())),
        last_error: Some(format!(
            "certificate {} failed on this target; rolled back to {previous_sha}",
            current.info.sha256
        )),
        destination: Some(deploy::destination(t)),
    };
    (rollback, record)
}

/// A push that did not work, and whether it got far enough to change the
/// target (written, then the reload failed).
struct PushFailure {
    error: String,
    changed: bool,
}

async fn push_and_reload(
    cert_name: &str,
    t: &TargetConfig,
    bundle: &Bundle,
    files: &BundleFiles,
    report: &mut TargetReport,
) -> Result<(), PushFailure> {
    let _service = deploy::service_lock(t).await;
    let deployed = deploy::deploy(cert_name, t, bundle, files)
        .await
        .map_err(|e| PushFailure {
            error: e.to_string(),
            // An exec target's command may have done part of its work.
            changed: matches!(t.kind, crate::config::TargetKind::Exec(_)),
        })?;
    report.command = deployed.command;
    match deploy::reload(t).await {
        Ok(outcome) => {
            report.reload = outcome;
            Ok(())
        }
        Err(e) => Err(PushFailure {
            error: e.to_string(),
            changed: true,
        }),
    }
}

/// `deploy`: push the current certificate to the selected targets and verify.
pub async fn deploy_cmd(
    config: &Config,
    certs: &[String],
    targets: &[String],
) -> Result<Report, RunError> {
    let selected = select(config, certs)?;
    for t in targets {
        if !selected
            .iter()
            .any(|c| c.targets.iter().any(|x| &x.name == t))
        {
            return Err(RunError::UnknownTarget(t.clone()));
        }
    }
    let store = Store::open(&config.state_dir, &config.acme.directory, LOCK_WAIT)?;
    let mut reports = Vec::new();
    for cert in selected {
        let current = store.current(&cert.name)?;
        let targets =
            deploy_certificate(&store, cert, current.as_ref(), DeployMode::Always, targets).await?;
        reports.push(CertReport::new(cert, None, Issuance::NotAsked, targets));
    }
    Ok(Report {
        dry_run: false,
        certificates: reports,
    })
}

/// `verify`: handshake every target that has `verify`.
pub async fn verify_cmd(config: &Config, certs: &[String]) -> Result<Report, RunError> {
    let selected = select(config, certs)?;
    let store = Store::open_readonly(&config.state_dir, &config.acme.directory);
    let mut reports = Vec::new();
    for cert in selected {
        let current = store.current(&cert.name)?;
        let current = current.as_ref();
        let targets: Vec<TargetReport> =
            stream::iter(cert.targets.iter().filter(|t| t.verify.is_some()))
                .map(|t| async move {
                    let (action, verdict) = match current {
                        Some(b) => {
                            let v = t.verify.as_ref().expect("filtered");
                            (TargetAction::Checked, Some(verify::verify(v, b).await))
                        }
                        None => (
                            TargetAction::Failed {
                                error: NO_CERTIFICATE.to_string(),
                            },
                            None,
                        ),
                    };
                    TargetReport {
                        verdict,
                        ..TargetReport::new(t, action)
                    }
                })
                .buffered(TARGET_CONCURRENCY)
                .collect()
                .await;
        reports.push(CertReport::new(cert, None, Issuance::NotAsked, targets));
    }
    Ok(Report {
        dry_run: false,
        certificates: reports,
    })
}

/// How long `status` waits for one endpoint.
const STATUS_VERIFY: Duration = Duration::from_secs(5);

/// `status`: what is stored, when it is due, what each target has.
/// `offline` does no network I/O.
pub async fn status(config: &Config, offline: bool) -> Result<Status, RunError> {
    let store = Store::open_readonly(&config.state_dir, &config.acme.directory);
    let now = OffsetDateTime::now_utc();
    let names: Vec<&str> = config
        .certificates
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    let currents = store.current_all(&names)?;
    let mut certs = Vec::new();
    for (cert, current) in config.certificates.iter().zip(currents) {
        // The stored window of the current certificate; `status` fetches nothing.
        let record = match &current {
            Some(b) if cert.renewal.ari => store
                .ari_record(&cert.name)
                .ok()
                .flatten()
                .filter(|r| r.sha256 == b.info.sha256),
            _ => None,
        };
        let window = record.as_ref().and_then(ari::window);
        let p = plan::plan_with_ari(
            cert,
            current.as_ref().map(|b| &b.info),
            window.as_ref(),
            now,
            false,
        );
        let current_ref = current.as_ref();
        let mut targets: Vec<TargetStatus> = stream::iter(&cert.targets)
            .map(|t| target_status(t, current_ref, offline))
            .buffered(TARGET_CONCURRENCY)
            .collect()
            .await;
        for t in &mut targets {
            // What the last deployment left behind (a failure, a rollback).
            if let Ok(Some(record)) = store.target_record(&cert.name, &t.name) {
                t.deployed_sha256 = record.deployed_sha256;
                t.last_error = record.last_error;
            }
        }
        let info = current.as_ref().map(|b| &b.info);
        certs.push(CertStatus {
            name: cert.name.clone(),
            domains: cert.domains.clone(),
            serial: info.map(|i| i.serial.clone()),
            sha256: info.map(|i| i.sha256.clone()),
            not_before: info.map(|i| rfc3339(i.not_before)),
            not_after: info.map(|i| rfc3339(i.not_after)),
            key_type: info.and_then(|i| i.key_type).map(|k| k.to_string()),
            due: p.due.is_some(),
            due_reason: p.due.map(|d| d.to_string()),
            renew_at: p.renew_at.map(rfc3339),
            ari: record.filter(|_| window.is_some()).map(|r| AriStatus {
                window_start: r.window_start,
                window_end: r.window_end,
                renew_at: r.renew_at,
                explanation_url: r.explanation_url,
                fetched_at: r.fetched_at,
                next_fetch: r.next_fetch,
            }),
            targets,
        });
    }
    Ok(Status {
        certificates: certs,
    })
}

async fn target_status(t: &TargetConfig, current: Option<&Bundle>, offline: bool) -> TargetStatus {
    let mut s = TargetStatus {
        name: t.name.clone(),
        state: "unverified",
        served_sha256: None,
        chain_complete: None,
        error: None,
        deployed_sha256: None,
        last_error: None,
    };
    let Some(bundle) = current else {
        return s;
    };
    match (&t.verify, offline) {
        (Some(v), false) => {
            // Never longer than the target's own `verify.timeout`.
            let verdict = verify::verify_within(v, bundle, STATUS_VERIFY.min(v.timeout)).await;
            s.state = verdict.state();
            s.served_sha256 = verdict.served_sha256().map(str::to_string);
            s.error = verdict.problem();
            if let Verdict::Current { chain_complete, .. } = verdict {
                s.chain_complete = Some(chain_complete);
            }
        }
        _ => {
            // Local files can be compared without the network.
            if let Some(holds) = deploy::holds(t, bundle) {
                s.state = if holds { "current" } else { "stale" };
                if !holds {
                    let laid_out = match &t.kind {
                        TargetKind::File(f) => deploy::file::laid_out(f),
                        _ => true,
                    };
                    s.error = Some(if laid_out {
                        "its files do not hold the current certificate".into()
                    } else {
                        "its files are not laid out as its `layout` says".into()
                    });
                }
            }
        }
    }
    s
}

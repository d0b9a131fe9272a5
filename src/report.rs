//! Outcomes per certificate and per target, collected rather than returned
//! early, then printed for a human or as JSON, and mapped to the exit code
//! at the edge.

use serde::Serialize;

use crate::cert::rfc3339;
use crate::process::CommandOutcome;
use crate::verify::Verdict;

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub dry_run: bool,
    pub certificates: Vec<CertReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CertReport {
    pub name: String,
    pub domains: Vec<String>,
    /// Why it was due; `None` when not due.
    pub due: Option<String>,
    pub issuance: Issuance,
    /// How the targets are rolled out, when `rollout:` is configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout: Option<String>,
    pub targets: Vec<TargetReport>,
}

/// What happened on the ACME side.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Issuance {
    /// Not due, nothing ordered.
    NotDue,
    /// Not part of this command (deploy, verify).
    NotAsked,
    Renewed {
        serial: String,
        sha256: String,
        not_after: String,
    },
    /// `--dry-run`: the order against the dry-run directory succeeded; its
    /// certificate was thrown away.
    Rehearsed {
        directory: String,
        serial: String,
    },
    Failed {
        error: String,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetReport {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub action: TargetAction,
    pub command: Option<CommandOutcome>,
    pub reload: Option<CommandOutcome>,
    pub verdict: Option<Verdict>,
    /// The rollout wave (1-based) the target was in, when the certificate
    /// has more than one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wave: Option<usize>,
    /// What restoring the target's previous certificate did (`rollback: true`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback: Option<Rollback>,
}

/// A failed target given back the certificate it held before.
#[derive(Debug, Clone, Serialize)]
pub struct Rollback {
    /// The certificate it was given back, when one was known.
    pub sha256: Option<String>,
    /// Why the rollback did not happen or did not work; `None`: restored
    /// (and, with `verify`, verified on it).
    pub error: Option<String>,
    pub reload: Option<CommandOutcome>,
    /// The handshake against the restored certificate.
    pub verdict: Option<Verdict>,
}

impl Rollback {
    pub fn ok(&self) -> bool {
        self.error.is_none() && self.verdict.as_ref().is_none_or(Verdict::is_current)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum TargetAction {
    /// The current certificate was written (and reloaded).
    Deployed,
    /// It already held the current certificate; nothing written.
    Unchanged,
    /// There is no certificate to deploy yet.
    NothingToDeploy,
    Failed {
        error: String,
    },
    /// `--dry-run`: every check passed.
    PreflightPassed,
    PreflightFailed {
        problems: Vec<String>,
    },
    /// Only verified (the `verify` command).
    Checked,
    /// Left alone: an earlier wave of the rollout failed with
    /// `on_failure: halt`.
    NotReached {
        reason: String,
    },
}

impl TargetReport {
    /// A report for `target` with only its action known so far.
    pub fn new(target: &crate::config::TargetConfig, action: TargetAction) -> TargetReport {
        TargetReport {
            name: target.name.clone(),
            kind: target.kind.type_name(),
            action,
            command: None,
            reload: None,
            verdict: None,
            wave: None,
            rollback: None,
        }
    }

    /// The target holds (and, with `verify`, serves) the current
    /// certificate, or passed its preflight. A rolled-back target is not
    /// ok: it serves the previous certificate.
    pub fn ok(&self) -> bool {
        let action_ok = !matches!(
            self.action,
            TargetAction::Failed { .. }
                | TargetAction::PreflightFailed { .. }
                | TargetAction::NotReached { .. }
        ) && self.rollback.is_none();
        action_ok && self.verdict.as_ref().is_none_or(Verdict::is_current)
    }
}

impl CertReport {
    pub fn new(
        cert: &crate::config::CertificateConfig,
        due: Option<String>,
        issuance: Issuance,
        targets: Vec<TargetReport>,
    ) -> CertReport {
        CertReport {
            name: cert.name.clone(),
            domains: cert.domains.clone(),
            due,
            issuance,
            rollout: (cert.rollout != crate::config::Rollout::default())
                .then(|| rollout_text(cert)),
            targets,
        }
    }

    pub fn ok(&self) -> bool {
        !matches!(self.issuance, Issuance::Failed { .. })
            && self.targets.iter().all(TargetReport::ok)
    }
}

impl Report {
    pub fn ok(&self) -> bool {
        self.certificates.iter().all(CertReport::ok)
    }

    /// The human summary: a line per certificate, a line per target.
    pub fn human(&self) -> String {
        let mut out = String::new();
        if self.dry_run {
            out.push_str("dry run: nothing was written, no reload was run\n");
        }
        for c in &self.certificates {
            let head = match &c.issuance {
                Issuance::NotDue => "not due".to_string(),
                Issuance::NotAsked => "current certificate".to_string(),
                Issuance::Renewed {
                    serial, not_after, ..
                } => {
                    format!(
                        "renewed ({}): serial {serial}, expires {not_after}",
                        c.due.as_deref().unwrap_or("due")
                    )
                }
                Issuance::Rehearsed { directory, serial } => {
                    let due = match &c.due {
                        Some(why) => format!("due: {why}"),
                        None => "not due".to_string(),
                    };
                    format!("{due}; test order against {directory} succeeded (serial {serial}, discarded)")
                }
                Issuance::Failed { error } => format!("renewal FAILED: {error}"),
            };
            out.push_str(&format!("{} [{}]: {head}\n", c.name, c.domains.join(", ")));
            if let Some(r) = &c.rollout {
                out.push_str(&format!("  rollout: {r}\n"));
            }
            for t in &c.targets {
                let wave = t.wave.map(|w| format!(", wave {w}")).unwrap_or_default();
                out.push_str(&format!(
                    "  {} ({}{wave}): {}\n",
                    t.name,
                    t.kind,
                    target_line(t)
                ));
            }
        }
        out
    }
}

/// `rollout:` in a line: "wave 1: web1; wave 2: lb1, lb2; at most 8 at
/// once; halt on failure; rollback".
fn rollout_text(cert: &crate::config::CertificateConfig) -> String {
    let r = &cert.rollout;
    let waves = cert.waves();
    let mut parts: Vec<String> = if waves.len() > 1 {
        waves
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let names: Vec<&str> = w.iter().map(|t| t.name.as_str()).collect();
                format!("wave {}: {}", i + 1, names.join(", "))
            })
            .collect()
    } else {
        vec!["one wave".to_string()]
    };
    parts.push(format!("at most {} at once", r.max_parallel));
    parts.push(match r.on_failure {
        crate::config::OnFailure::Halt => "halt on failure".to_string(),
        crate::config::OnFailure::Continue => "continue on failure".to_string(),
    });
    if r.rollback {
        parts.push("roll back failed targets".to_string());
    }
    parts.join("; ")
}

fn target_line(t: &TargetReport) -> String {
    let mut parts = Vec::new();
    match &t.action {
        TargetAction::Deployed => parts.push("deployed".to_string()),
        TargetAction::Unchanged => parts.push("already held the current certificate".to_string()),
        TargetAction::NothingToDeploy => {
            parts.push("nothing deployed: no certificate yet".to_string())
        }
        TargetAction::Failed { error } => parts.push(format!("FAILED: {error}")),
        TargetAction::PreflightPassed => parts.push("preflight passed".to_string()),
        TargetAction::PreflightFailed { problems } => {
            parts.push(format!("preflight FAILED: {}", problems.join("; ")))
        }
        TargetAction::Checked => {}
        TargetAction::NotReached { reason } => parts.push(format!("NOT REACHED: {reason}")),
    }
    if let Some(r) = &t.reload {
        parts.push(format!("reload {}", r.summary()));
    }
    match &t.verdict {
        Some(Verdict::Current {
            served_sha256,
            chain_complete,
        }) => parts.push(format!(
            "verified: serves {served_sha256}{}",
            if *chain_complete {
                ""
            } else {
                " (served chain INCOMPLETE)"
            }
        )),
        Some(v) => parts.push(format!(
            "verification {}: {}",
            v.state().to_uppercase(),
            v.problem().unwrap_or_default()
        )),
        None => {}
    }
    if let Some(r) = &t.rollback {
        let to = r.sha256.as_deref().unwrap_or("-");
        match (&r.error, &r.verdict) {
            (Some(e), _) => parts.push(format!("rollback FAILED: {e}")),
            (None, Some(v)) if v.is_current() => {
                parts.push(format!("ROLLED BACK to {to}, verified: serves it"))
            }
            (None, Some(v)) => parts.push(format!(
                "ROLLED BACK to {to}, but verification {}: {}",
                v.state().to_uppercase(),
                v.problem().unwrap_or_default()
            )),
            (None, None) => parts.push(format!("ROLLED BACK to {to}")),
        }
    }
    parts.join("; ")
}

/// `status --json`, in the shape the interface fixes.
#[derive(Debug, Serialize)]
pub struct Status {
    pub certificates: Vec<CertStatus>,
}

#[derive(Debug, Serialize)]
pub struct CertStatus {
    pub name: String,
    pub domains: Vec<String>,
    pub serial: Option<String>,
    pub sha256: Option<String>,
    pub not_before: Option<String>,
    pub not_after: Option<String>,
    /// The current certificate's key type, e.g. `ecdsa-p256`.
    pub key_type: Option<String>,
    pub due: bool,
    pub due_reason: Option<String>,
    pub renew_at: Option<String>,
    /// The CA's renewal window for the current certificate (ARI), as last
    /// fetched; `null` without one.
    pub ari: Option<AriStatus>,
    pub targets: Vec<TargetStatus>,
}

/// The CA's suggested renewal window (RFC 9773); times are RFC 3339.
#[derive(Debug, Serialize)]
pub struct AriStatus {
    pub window_start: String,
    pub window_end: String,
    /// The moment chosen inside the window.
    pub renew_at: String,
    pub explanation_url: Option<String>,
    pub fetched_at: String,
    /// When the window is asked for again.
    pub next_fetch: String,
}

#[derive(Debug, Serialize)]
pub struct TargetStatus {
    pub name: String,
    /// current | stale | unreachable | unverified
    pub state: &'static str,
    pub served_sha256: Option<String>,
    pub chain_complete: Option<bool>,
    pub error: Option<String>,
    /// The certificate certherd last deployed to the target.
    pub deployed_sha256: Option<String>,
    /// Why the last deployment to the target failed (or was rolled back);
    /// the next `renew` deploys again.
    pub last_error: Option<String>,
}

impl Status {
    /// Every target either current or unverified.
    pub fn ok(&self) -> bool {
        self.certificates
            .iter()
            .flat_map(|c| &c.targets)
            .all(|t| matches!(t.state, "current" | "unverified"))
    }

    pub fn human(&self, now: time::OffsetDateTime) -> String {
        let mut out = String::new();
        for c in &self.certificates {
            let life = match (&c.not_after, &c.serial) {
                (Some(na), Some(_)) => {
                    let days = time::OffsetDateTime::parse(
                        na,
                        &time::format_description::well_known::Rfc3339,
                    )
                    .map(|t| (t - now).whole_days())
                    .unwrap_or(0);
                    let window = match &c.ari {
                        Some(a) => format!(
                            " (CA renewal window {} to {})",
                            a.window_start, a.window_end
                        ),
                        None => String::new(),
                    };
                    format!(
                        "expires {na} ({days} days left), renew at {}{window}",
                        c.renew_at.as_deref().unwrap_or("-")
                    )
                }
                _ => "no certificate yet".to_string(),
            };
            let due = match &c.due_reason {
                Some(r) if c.due => format!("; DUE: {r}"),
                _ => String::new(),
            };
            out.push_str(&format!(
                "{} [{}]: {life}{due}\n",
                c.name,
                c.domains.join(", ")
            ));
            for t in &c.targets {
                let why = t
                    .error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default();
                out.push_str(&format!("  {}: {}{why}\n", t.name, t.state));
                if let (Some(e), false) = (&t.last_error, t.state == "current") {
                    out.push_str(&format!("    last deployment failed: {e}\n"));
                }
            }
        }
        out
    }
}

pub fn time_str(t: time::OffsetDateTime) -> String {
    rfc3339(t)
}

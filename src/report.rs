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
        }
    }

    pub fn ok(&self) -> bool {
        let action_ok = !matches!(
            self.action,
            TargetAction::Failed { .. } | TargetAction::PreflightFailed { .. }
        );
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
            for t in &c.targets {
                out.push_str(&format!("  {} ({}): {}\n", t.name, t.kind, target_line(t)));
            }
        }
        out
    }
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
            }
        }
        out
    }
}

pub fn time_str(t: time::OffsetDateTime) -> String {
    rfc3339(t)
}

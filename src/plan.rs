//! What is due and why: a pure function of the configuration, what the
//! store holds, and `now`. `renew --dry-run` prints exactly this, and a
//! real run acts on exactly this.

use std::fmt;

use time::OffsetDateTime;

use crate::cert::{rfc3339, CertInfo};
use crate::config::{CertificateConfig, Threshold};

#[derive(Debug, Clone, PartialEq)]
pub enum Reason {
    NoCertificate,
    Forced,
    DomainsChanged {
        stored: Vec<String>,
        configured: Vec<String>,
    },
    KeyTypeChanged {
        stored: String,
        configured: String,
    },
    /// The renewal time has come (or the certificate has already expired).
    Expiring {
        renew_at: OffsetDateTime,
        not_after: OffsetDateTime,
    },
    /// The moment chosen in the CA's suggested renewal window (ARI,
    /// RFC 9773) has come; a window already over when it was fetched
    /// means "renew now".
    AriWindow {
        renew_at: OffsetDateTime,
        window_start: OffsetDateTime,
        window_end: OffsetDateTime,
    },
}

/// The CA's suggested renewal window for the current certificate (ARI,
/// RFC 9773) and the moment chosen inside it, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AriWindow {
    pub start: OffsetDateTime,
    pub end: OffsetDateTime,
    /// Chosen uniformly at random in `[start, end)` when the window was
    /// fetched; the fetch time itself when the window was already over.
    pub renew_at: OffsetDateTime,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NoCertificate => f.write_str("no certificate yet"),
            Reason::Forced => f.write_str("--force"),
            Reason::DomainsChanged { stored, configured } => write!(
                f,
                "domains changed: certificate has [{}], configuration has [{}]",
                stored.join(", "),
                configured.join(", ")
            ),
            Reason::KeyTypeChanged { stored, configured } => {
                write!(
                    f,
                    "key type changed: certificate has {stored}, configuration has {configured}"
                )
            }
            Reason::Expiring {
                renew_at,
                not_after,
            } => write!(
                f,
                "renewal time {} reached (expires {})",
                rfc3339(*renew_at),
                rfc3339(*not_after)
            ),
            Reason::AriWindow {
                renew_at,
                window_start,
                window_end,
            } if renew_at >= window_end => write!(
                f,
                "the CA asks for renewal now (ARI window {} to {} has passed)",
                rfc3339(*window_start),
                rfc3339(*window_end)
            ),
            Reason::AriWindow {
                renew_at,
                window_start,
                window_end,
            } => write!(
                f,
                "renewal time {} in the CA's window {} to {} reached (ARI)",
                rfc3339(*renew_at),
                rfc3339(*window_start),
                rfc3339(*window_end)
            ),
        }
    }
}

/// The plan for one certificate.
#[derive(Debug, Clone, PartialEq)]
pub struct CertPlan {
    pub name: String,
    /// `Some(reason)` when the certificate is due.
    pub due: Option<Reason>,
    /// When the current certificate becomes due: by its lifetime, or at
    /// the moment chosen in the CA's window when that is earlier; `None`
    /// without a certificate.
    pub renew_at: Option<OffsetDateTime>,
    /// The CA's window that was taken into account (`renewal.ari`).
    pub ari: Option<AriWindow>,
}

/// When `info` becomes due under `threshold`.
pub fn renew_at(info: &CertInfo, threshold: Threshold) -> OffsetDateTime {
    match threshold {
        Threshold::Remaining(d) => info.not_after - d,
        Threshold::Share(share) => info.not_after - info.lifetime() * share,
    }
}

fn sorted(v: &[String]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|d| d.to_ascii_lowercase()).collect();
    v.sort();
    v.dedup();
    v
}

/// The plan without the CA's renewal window: see [`plan_with_ari`].
pub fn plan_certificate(
    cfg: &CertificateConfig,
    current: Option<&CertInfo>,
    now: OffsetDateTime,
    force: bool,
) -> CertPlan {
    plan_with_ari(cfg, current, None, now, force)
}

/// The plan for one certificate. `ari` is the CA's window for `current`
/// (the caller matches it to the certificate); it counts only with
/// `renewal.ari`. The threshold stays a safety net: the certificate is due
/// when either says so, and the reason shown is the one reached first.
pub fn plan_with_ari(
    cfg: &CertificateConfig,
    current: Option<&CertInfo>,
    ari: Option<&AriWindow>,
    now: OffsetDateTime,
    force: bool,
) -> CertPlan {
    let threshold = current.map(|c| renew_at(c, cfg.renewal.before_expiry));
    let ari = match current {
        Some(_) if cfg.renewal.ari => ari.copied(),
        _ => None,
    };
    let renew_at = match (threshold, ari) {
        (Some(t), Some(a)) => Some(t.min(a.renew_at)),
        (t, _) => t,
    };
    let due = match current {
        None => Some(Reason::NoCertificate),
        Some(_) if force => Some(Reason::Forced),
        Some(c) if sorted(&c.domains) != sorted(&cfg.domains) => Some(Reason::DomainsChanged {
            stored: c.domains.clone(),
            configured: cfg.domains.clone(),
        }),
        Some(c) if c.key_type != Some(cfg.key) => Some(Reason::KeyTypeChanged {
            stored: c
                .key_type
                .map(|k| k.to_string())
                .unwrap_or_else(|| "another type".into()),
            configured: cfg.key.to_string(),
        }),
        Some(c) => {
            let threshold = threshold.expect("set with current");
            let expiring = Reason::Expiring {
                renew_at: threshold,
                not_after: c.not_after,
            };
            match ari {
                Some(a) if now >= a.renew_at && a.renew_at < threshold => Some(Reason::AriWindow {
                    renew_at: a.renew_at,
                    window_start: a.start,
                    window_end: a.end,
                }),
                _ if now >= threshold => Some(expiring),
                Some(a) if now >= a.renew_at => Some(Reason::AriWindow {
                    renew_at: a.renew_at,
                    window_start: a.start,
                    window_end: a.end,
                }),
                _ => None,
            }
        }
    };
    CertPlan {
        name: cfg.name.clone(),
        due,
        renew_at,
        ari,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ChallengeChoice, KeyType, RenewalPolicy};
    use std::time::Duration;
    use time::macros::datetime;

    fn cfg(domains: &[&str], key: KeyType, t: Threshold) -> CertificateConfig {
        CertificateConfig {
            name: "example".into(),
            domains: domains.iter().map(|d| d.to_string()).collect(),
            key,
            reuse_key: false,
            challenge: ChallengeChoice::All("standalone".into()),
            renewal: RenewalPolicy {
                before_expiry: t,
                ..RenewalPolicy::default()
            },
            targets: vec![],
            rollout: Default::default(),
        }
    }

    fn info(domains: &[&str], key: KeyType) -> CertInfo {
        CertInfo {
            serial: "01".into(),
            sha256: "00".into(),
            not_before: datetime!(2026-01-01 0:00 UTC),
            not_after: datetime!(2026-04-01 0:00 UTC), // 90 days
            domains: domains.iter().map(|d| d.to_string()).collect(),
            key_type: Some(key),
            authority_key_id: None,
        }
    }

    const DAY: Duration = Duration::from_secs(86400);

    #[test]
    fn table() {
        use KeyType::*;
        let share = Threshold::Share(1.0 / 3.0); // 30 of 90 days
        let thirty = Threshold::Remaining(30 * DAY);
        let ex = ["example.com", "www.example.com"];
        struct Row {
            what: &'static str,
            cfg: CertificateConfig,
            cur: Option<CertInfo>,
            now: OffsetDateTime,
            force: bool,
            due: Option<&'static str>,
        }
        let rows = [
            Row { what: "never issued", cfg: cfg(&ex, EcdsaP256, share), cur: None, now: datetime!(2026-01-02 0:00 UTC), force: false, due: Some("no certificate yet") },
            Row { what: "fresh", cfg: cfg(&ex, EcdsaP256, share), cur: Some(info(&ex, EcdsaP256)), now: datetime!(2026-01-02 0:00 UTC), force: false, due: None },
            Row { what: "one second before the share threshold", cfg: cfg(&ex, EcdsaP256, share), cur: Some(info(&ex, EcdsaP256)), now: datetime!(2026-03-01 23:59:59 UTC), force: false, due: None },
            Row { what: "at the share threshold", cfg: cfg(&ex, EcdsaP256, share), cur: Some(info(&ex, EcdsaP256)), now: datetime!(2026-03-02 0:00 UTC), force: false, due: Some("renewal time 2026-03-02T00:00:00Z reached (expires 2026-04-01T00:00:00Z)") },
            Row { what: "duration threshold not reached", cfg: cfg(&ex, EcdsaP256, thirty), cur: Some(info(&ex, EcdsaP256)), now: datetime!(2026-03-01 0:00 UTC), force: false, due: None },
            Row { what: "duration threshold reached", cfg: cfg(&ex, EcdsaP256, thirty), cur: Some(info(&ex, EcdsaP256)), now: datetime!(2026-03-02 0:00 UTC), force: false, due: Some("renewal time 2026-03-02T00:00:00Z reached (expires 2026-04-01T00:00:00Z)") },
            Row { what: "expired", cfg: cfg(&ex, EcdsaP256, thirty), cur: Some(info(&ex, EcdsaP256)), now: datetime!(2026-05-01 0:00 UTC), force: false, due: Some("renewal time 2026-03-02T00:00:00Z reached (expires 2026-04-01T00:00:00Z)") },
            Row { what: "domain added", cfg: cfg(&["example.com", "www.example.com", "api.example.com"], EcdsaP256, share), cur: Some(info(&ex, EcdsaP256)), now: datetime!(2026-01-02 0:00 UTC), force: false, due: Some("domains changed: certificate has [example.com, www.example.com], configuration has [example.com, www.example.com, api.example.com]") },
            Row { what: "domains reordered is not a change", cfg: cfg(&["www.example.com", "example.com"], EcdsaP256, share), cur: Some(info(&ex, EcdsaP256)), now: datetime!(2026-01-02 0:00 UTC), force: false, due: None },
            Row { what: "key type changed", cfg: cfg(&ex, Rsa2048, share), cur: Some(info(&ex, EcdsaP256)), now: datetime!(2026-01-02 0:00 UTC), force: false, due: Some("key type changed: certificate has ecdsa-p256, configuration has rsa-2048") },
            Row { what: "forced", cfg: cfg(&ex, EcdsaP256, share), cur: Some(info(&ex, EcdsaP256)), now: datetime!(2026-01-02 0:00 UTC), force: true, due: Some("--force") },
        ];
        for r in rows {
            let p = plan_certificate(&r.cfg, r.cur.as_ref(), r.now, r.force);
            assert_eq!(
                p.due.as_ref().map(|d| d.to_string()).as_deref(),
                r.due,
                "{}",
                r.what
            );
        }
    }

    #[test]
    fn ari_table() {
        use KeyType::*;
        let share = Threshold::Share(1.0 / 3.0); // renew at 2026-03-02
        let ex = ["example.com", "www.example.com"];
        let window = |start, end, renew_at| AriWindow {
            start,
            end,
            renew_at,
        };
        // A window in February, the moment chosen on the 10th.
        let feb = window(
            datetime!(2026-02-05 0:00 UTC),
            datetime!(2026-02-15 0:00 UTC),
            datetime!(2026-02-10 0:00 UTC),
        );
        // Fetched on 2026-01-20 after the window had passed: renew now.
        let passed = window(
            datetime!(2026-01-10 0:00 UTC),
            datetime!(2026-01-11 0:00 UTC),
            datetime!(2026-01-20 0:00 UTC),
        );
        // Later than the threshold (a CA may suggest that): the threshold wins.
        let late = window(
            datetime!(2026-03-10 0:00 UTC),
            datetime!(2026-03-12 0:00 UTC),
            datetime!(2026-03-11 0:00 UTC),
        );
        struct Row {
            what: &'static str,
            ari_on: bool,
            key: KeyType,
            window: Option<AriWindow>,
            now: OffsetDateTime,
            force: bool,
            due: Option<&'static str>,
            renew_at: &'static str,
        }
        let rows = [
            Row { what: "before the chosen moment", ari_on: true, key: EcdsaP256, window: Some(feb), now: datetime!(2026-02-09 23:59:59 UTC), force: false, due: None, renew_at: "2026-02-10T00:00:00Z" },
            Row { what: "at the chosen moment", ari_on: true, key: EcdsaP256, window: Some(feb), now: datetime!(2026-02-10 0:00 UTC), force: false, due: Some("renewal time 2026-02-10T00:00:00Z in the CA's window 2026-02-05T00:00:00Z to 2026-02-15T00:00:00Z reached (ARI)"), renew_at: "2026-02-10T00:00:00Z" },
            Row { what: "a window that had passed when fetched", ari_on: true, key: EcdsaP256, window: Some(passed), now: datetime!(2026-01-20 0:00 UTC), force: false, due: Some("the CA asks for renewal now (ARI window 2026-01-10T00:00:00Z to 2026-01-11T00:00:00Z has passed)"), renew_at: "2026-01-20T00:00:00Z" },
            Row { what: "renewal.ari: false ignores the window", ari_on: false, key: EcdsaP256, window: Some(feb), now: datetime!(2026-02-20 0:00 UTC), force: false, due: None, renew_at: "2026-03-02T00:00:00Z" },
            Row { what: "no window: the threshold alone", ari_on: true, key: EcdsaP256, window: None, now: datetime!(2026-03-02 0:00 UTC), force: false, due: Some("renewal time 2026-03-02T00:00:00Z reached (expires 2026-04-01T00:00:00Z)"), renew_at: "2026-03-02T00:00:00Z" },
            Row { what: "a window after the threshold: the threshold is the safety net", ari_on: true, key: EcdsaP256, window: Some(late), now: datetime!(2026-03-02 0:00 UTC), force: false, due: Some("renewal time 2026-03-02T00:00:00Z reached (expires 2026-04-01T00:00:00Z)"), renew_at: "2026-03-02T00:00:00Z" },
            Row { what: "both passed: the earlier one is the reason", ari_on: true, key: EcdsaP256, window: Some(feb), now: datetime!(2026-03-05 0:00 UTC), force: false, due: Some("renewal time 2026-02-10T00:00:00Z in the CA's window 2026-02-05T00:00:00Z to 2026-02-15T00:00:00Z reached (ARI)"), renew_at: "2026-02-10T00:00:00Z" },
            Row { what: "--force comes first", ari_on: true, key: EcdsaP256, window: Some(passed), now: datetime!(2026-01-20 0:00 UTC), force: true, due: Some("--force"), renew_at: "2026-01-20T00:00:00Z" },
            Row { what: "a key type change comes first", ari_on: true, key: Rsa2048, window: Some(passed), now: datetime!(2026-01-20 0:00 UTC), force: false, due: Some("key type changed: certificate has ecdsa-p256, configuration has rsa-2048"), renew_at: "2026-01-20T00:00:00Z" },
        ];
        for r in rows {
            let mut c = cfg(&ex, r.key, share);
            c.renewal.ari = r.ari_on;
            let cur = info(&ex, EcdsaP256);
            let p = plan_with_ari(&c, Some(&cur), r.window.as_ref(), r.now, r.force);
            assert_eq!(
                p.due.as_ref().map(|d| d.to_string()).as_deref(),
                r.due,
                "{}",
                r.what
            );
            assert_eq!(
                p.renew_at.map(rfc3339).as_deref(),
                Some(r.renew_at),
                "{}",
                r.what
            );
            assert_eq!(p.ari, r.window.filter(|_| r.ari_on), "{}", r.what);
        }
        // Without a certificate a window means nothing.
        let p = plan_with_ari(
            &cfg(&ex, EcdsaP256, share),
            None,
            Some(&feb),
            datetime!(2026-02-20 0:00 UTC),
            false,
        );
        assert_eq!(p.due, Some(Reason::NoCertificate));
        assert_eq!((p.renew_at, p.ari), (None, None));
    }

    #[test]
    fn renew_at_by_share_and_duration() {
        let i = info(&["a.example"], KeyType::EcdsaP256);
        assert_eq!(
            renew_at(&i, Threshold::Share(0.5)),
            datetime!(2026-02-15 0:00 UTC)
        );
        assert_eq!(
            renew_at(&i, Threshold::Remaining(10 * DAY)),
            datetime!(2026-03-22 0:00 UTC)
        );
    }
}

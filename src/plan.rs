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
        }
    }
}

/// The plan for one certificate.
#[derive(Debug, Clone, PartialEq)]
pub struct CertPlan {
    pub name: String,
    /// `Some(reason)` when the certificate is due.
    pub due: Option<Reason>,
    /// When the current certificate becomes due by its lifetime; `None` without one.
    pub renew_at: Option<OffsetDateTime>,
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

pub fn plan_certificate(
    cfg: &CertificateConfig,
    current: Option<&CertInfo>,
    now: OffsetDateTime,
    force: bool,
) -> CertPlan {
    let renew_at = current.map(|c| renew_at(c, cfg.renewal.before_expiry));
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
        Some(c) if now >= renew_at.expect("set with current") => Some(Reason::Expiring {
            renew_at: renew_at.expect("set with current"),
            not_after: c.not_after,
        }),
        Some(_) => None,
    };
    CertPlan {
        name: cfg.name.clone(),
        due,
        renew_at,
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

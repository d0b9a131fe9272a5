//! ACME Renewal Information (ARI, RFC 9773): the CA's suggested renewal
//! window for each certificate.
//!
//! - The window is a plain, unauthenticated GET of `{renewalInfo}/{certID}`
//!   (§4.1): no account, no nonce, no JWS. `renewalInfo` is read from the
//!   CA's directory; a directory without it means the CA offers no ARI.
//! - `certID` is `base64url(AKI keyIdentifier) "." base64url(serial DER)`
//!   ([`encode_cert_id`]); a certificate without an authority key
//!   identifier has none, and is planned by its threshold alone.
//! - The moment to renew is chosen uniformly at random inside the window
//!   (§4.2, [`choose`]) and kept while the CA answers the same window; a
//!   window already over means now.
//! - The window is fetched again after the CA's `Retry-After`, clamped to
//!   [`MIN_POLL`] .. [`MAX_POLL`] (§4.3.2), or after [`DEFAULT_POLL`]
//!   without one ([`poll_interval`]).
//! - A failed fetch is logged and changes nothing: the previous window for
//!   the same certificate, if any, still counts, and the threshold always does.

use std::borrow::Cow;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use futures_util::stream::{self, StreamExt};
use instant_acme::CertificateIdentifier;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::acme::http::{self, AcmeHttp, RetryPolicy};
use crate::cert::rfc3339;
use crate::plan::AriWindow;
use crate::store::AriRecord;

/// A `Retry-After` shorter than this is taken as this.
pub const MIN_POLL: Duration = Duration::from_secs(60);
/// A `Retry-After` longer than this is taken as this.
pub const MAX_POLL: Duration = Duration::from_secs(24 * 3600);
/// How long a window is trusted when the CA sends no `Retry-After`.
pub const DEFAULT_POLL: Duration = Duration::from_secs(6 * 3600);
/// Windows fetched at once.
const FETCH_CONCURRENCY: usize = 16;

/// The certificate identifier of RFC 9773 §4.1 from the DER contents of
/// the authority key identifier's `keyIdentifier` and of the serial number
/// (its encoded bytes, leading zero included).
pub fn encode_cert_id(key_identifier: &[u8], serial: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!("{}.{}", b64.encode(key_identifier), b64.encode(serial))
}

/// The certificate identifier of a leaf (DER); an error says why it has none.
pub fn cert_id(leaf_der: &[u8]) -> Result<String, String> {
    let info = crate::cert::info(leaf_der).map_err(|e| e.to_string())?;
    cert_id_of(&info)
}

/// [`cert_id`] from what [`crate::cert::info`] already decoded.
pub fn cert_id_of(info: &crate::cert::CertInfo) -> Result<String, String> {
    let key_identifier = info
        .authority_key_id
        .as_deref()
        .ok_or("the certificate has no authority key identifier")?;
    let serial = hex::decode(&info.serial).map_err(|e| format!("serial: {e}"))?;
    Ok(encode_cert_id(key_identifier, &serial))
}

/// [`cert_id`] as instant-acme's identifier, for `replaces` on an order.
pub fn identifier(cert_id: &str) -> Option<CertificateIdentifier<'static>> {
    let (aki, serial) = cert_id.split_once('.')?;
    Some(CertificateIdentifier {
        authority_key_identifier: Cow::Owned(aki.to_string()),
        serial: Cow::Owned(serial.to_string()),
    })
}

/// The moment to renew in `[start, end)`, at `sample` (in `[0, 1)`) of the
/// way through (RFC 9773 §4.2); `now` when the window is already over.
pub fn choose(
    start: OffsetDateTime,
    end: OffsetDateTime,
    now: OffsetDateTime,
    sample: f64,
) -> OffsetDateTime {
    if end <= now {
        return now;
    }
    let sample = sample.clamp(0.0, 1.0);
    let at = start + (end - start) * sample;
    // Rounding must not leave the window.
    at.min(end - time::Duration::nanoseconds(1)).max(start)
}

/// When to ask again, from the CA's `Retry-After` (RFC 9773 §4.3.2).
pub fn poll_interval(retry_after: Option<Duration>) -> Duration {
    match retry_after {
        Some(d) => d.clamp(MIN_POLL, MAX_POLL),
        None => DEFAULT_POLL,
    }
}

/// A `renewalInfo` response (RFC 9773 §4.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuggestedWindow {
    pub start: OffsetDateTime,
    pub end: OffsetDateTime,
    pub explanation_url: Option<String>,
}

/// Parse a `renewalInfo` body. A window whose end is not after its start is
/// invalid and treated as no answer (§4.2).
pub fn parse(body: &[u8]) -> Result<SuggestedWindow, String> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Body {
        suggested_window: Window,
        #[serde(rename = "explanationURL")]
        explanation_url: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Window {
        start: String,
        end: String,
    }
    let b: Body =
        serde_json::from_slice(body).map_err(|e| format!("not a renewalInfo object: {e}"))?;
    let time =
        |s: &str| OffsetDateTime::parse(s, &Rfc3339).map_err(|e| format!("bad time {s:?}: {e}"));
    let (start, end) = (
        time(&b.suggested_window.start)?,
        time(&b.suggested_window.end)?,
    );
    if end <= start {
        return Err(format!(
            "invalid window: it ends ({}) before it starts ({})",
            b.suggested_window.end, b.suggested_window.start
        ));
    }
    Ok(SuggestedWindow {
        start,
        end,
        explanation_url: b.explanation_url,
    })
}

/// The `renewalInfo` URL of the CA's directory; `None` when it offers no ARI.
pub async fn renewal_info_url(http: &AcmeHttp, directory: &str) -> Result<Option<String>, String> {
    let answer = http.get(directory).await.map_err(|e| e.to_string())?;
    if !answer.status.is_success() {
        return Err(format!("{directory}: HTTP {}", answer.status));
    }
    let dir: serde_json::Value = serde_json::from_slice(&answer.body)
        .map_err(|e| format!("{directory}: not a directory: {e}"))?;
    Ok(dir
        .get("renewalInfo")
        .and_then(|v| v.as_str())
        .map(|s| s.trim_end_matches('/').to_string()))
}

/// One certificate's window and when to ask again.
pub async fn fetch(
    http: &AcmeHttp,
    renewal_info: &str,
    cert_id: &str,
) -> Result<(SuggestedWindow, Duration), String> {
    let url = format!("{renewal_info}/{cert_id}");
    let answer = http.get(&url).await.map_err(|e| e.to_string())?;
    if !answer.status.is_success() {
        let detail = serde_json::from_slice::<serde_json::Value>(&answer.body)
            .ok()
            .and_then(|p| p.get("detail").and_then(|d| d.as_str()).map(str::to_string))
            .map(|d| format!(": {d}"))
            .unwrap_or_default();
        return Err(format!("{url}: HTTP {}{detail}", answer.status));
    }
    let window = parse(&answer.body).map_err(|e| format!("{url}: {e}"))?;
    Ok((window, poll_interval(http::retry_after(&answer.headers))))
}

/// The record of a fetched window. The moment chosen before is kept when
/// the CA answers the same window for the same certificate (choosing again
/// at every poll would pull renewals towards the window's start).
pub fn record(
    previous: Option<&AriRecord>,
    sha256: &str,
    cert_id: &str,
    window: &SuggestedWindow,
    poll: Duration,
    now: OffsetDateTime,
    sample: f64,
) -> AriRecord {
    let (start, end) = (rfc3339(window.start), rfc3339(window.end));
    let kept =
        previous.filter(|p| p.sha256 == sha256 && p.window_start == start && p.window_end == end);
    let renew_at = match kept {
        Some(p) => p.renew_at.clone(),
        None => rfc3339(choose(window.start, window.end, now, sample)),
    };
    AriRecord {
        sha256: sha256.to_string(),
        cert_id: cert_id.to_string(),
        window_start: start,
        window_end: end,
        renew_at,
        explanation_url: window.explanation_url.clone(),
        fetched_at: rfc3339(now),
        next_fetch: rfc3339(now + poll),
    }
}

pub fn parse_time(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

/// The planning view of a stored record; `None` if it does not parse.
pub fn window(record: &AriRecord) -> Option<AriWindow> {
    Some(AriWindow {
        start: parse_time(&record.window_start)?,
        end: parse_time(&record.window_end)?,
        renew_at: parse_time(&record.renew_at)?,
    })
}

/// Whether the stored record for a certificate is missing, belongs to
/// another certificate, or is past its time to ask again.
pub fn needs_fetch(stored: Option<&AriRecord>, sha256: &str, now: OffsetDateTime) -> bool {
    match stored {
        Some(r) if r.sha256 == sha256 => {
            window(r).is_none() || parse_time(&r.next_fetch).is_none_or(|t| now >= t)
        }
        _ => true,
    }
}

/// One certificate whose window may be refreshed.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub name: String,
    /// The current certificate's SHA-256.
    pub sha256: String,
    pub cert_id: String,
    /// What the store holds for this certificate name (any certificate).
    pub stored: Option<AriRecord>,
}

/// A candidate's window after [`refresh`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refreshed {
    /// The CA offers no ARI (its directory has no `renewalInfo`).
    Unsupported,
    /// No window for this certificate: none stored and the fetch failed.
    None,
    /// The stored record still holds (or the fetch failed and it is kept).
    Stored(AriRecord),
    /// Fetched now: to be stored.
    Fetched(AriRecord),
}

impl Refreshed {
    pub fn record(&self) -> Option<&AriRecord> {
        match self {
            Refreshed::Stored(r) | Refreshed::Fetched(r) => Some(r),
            _ => None,
        }
    }
}

/// Bring every candidate's window up to date: the stored record when it
/// still holds, otherwise a fetch from the CA at `directory`. Never fails:
/// what cannot be fetched is logged (`ARI fetch failed`) and the stored
/// record for the same certificate, if any, is kept.
pub async fn refresh(
    trust_roots: &[PathBuf],
    directory: &str,
    candidates: &[Candidate],
    now: OffsetDateTime,
) -> Vec<Refreshed> {
    let stored = |c: &Candidate| match &c.stored {
        Some(r) if r.sha256 == c.sha256 && window(r).is_some() => Refreshed::Stored(r.clone()),
        _ => Refreshed::None,
    };
    if !candidates
        .iter()
        .any(|c| needs_fetch(c.stored.as_ref(), &c.sha256, now))
    {
        return candidates.iter().map(stored).collect();
    }
    let failed_all = |error: &str| -> Vec<Refreshed> {
        candidates
            .iter()
            .map(|c| {
                if needs_fetch(c.stored.as_ref(), &c.sha256, now) {
                    tracing::warn!(certificate = %c.name, %error, "ARI fetch failed; the renewal threshold still applies");
                }
                stored(c)
            })
            .collect()
    };
    let client = match AcmeHttp::new(trust_roots, RetryPolicy::default()) {
        Ok(c) => c,
        Err(e) => return failed_all(&e.to_string()),
    };
    let base = match renewal_info_url(&client, directory).await {
        Ok(Some(base)) => base,
        Ok(None) => {
            tracing::debug!(directory, "the CA offers no renewal information (ARI)");
            return vec![Refreshed::Unsupported; candidates.len()];
        }
        Err(e) => return failed_all(&format!("reading the directory: {e}")),
    };
    stream::iter(candidates)
        .map(|c| {
            let (client, base) = (&client, &base);
            async move {
                if !needs_fetch(c.stored.as_ref(), &c.sha256, now) {
                    return stored(c);
                }
                match fetch(client, base, &c.cert_id).await {
                    Ok((window, poll)) => {
                        let previous = c.stored.as_ref();
                        let r = record(previous, &c.sha256, &c.cert_id, &window, poll, now, rand::random());
                        tracing::info!(
                            certificate = %c.name,
                            window_start = %r.window_start,
                            window_end = %r.window_end,
                            renew_at = %r.renew_at,
                            next_fetch = %r.next_fetch,
                            "ARI: the CA's renewal window"
                        );
                        Refreshed::Fetched(r)
                    }
                    Err(error) => {
                        tracing::warn!(certificate = %c.name, %error, "ARI fetch failed; the renewal threshold still applies");
                        stored(c)
                    }
                }
            }
        })
        .buffered(FETCH_CONCURRENCY)
        .collect()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn cert_id_of_the_rfc_example() {
        // RFC 9773 §4.1.
        let aki = [
            0x69, 0x88, 0x5B, 0x6B, 0x87, 0x46, 0x40, 0x41, 0xE1, 0xB3, 0x7B, 0x84, 0x7B, 0xA0,
            0xAE, 0x2C, 0xDE, 0x01, 0xC8, 0xD4,
        ];
        let serial = [0x00, 0x87, 0x65, 0x43, 0x21];
        let id = encode_cert_id(&aki, &serial);
        assert_eq!(id, "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE");
        let ident = identifier(&id).unwrap();
        assert_eq!(ident.to_string(), id);
    }

    #[test]
    fn cert_id_of_an_issued_certificate_matches_instant_acme() {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.key_identifier_method = rcgen::KeyIdMethod::PreSpecified(vec![7; 20]);
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let mut leaf = rcgen::CertificateParams::new(vec!["a.test".to_string()]).unwrap();
        leaf.use_authority_key_identifier_extension = true;
        // A serial whose first byte has the top bit set: DER adds a zero.
        leaf.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x87, 0x65, 0x43, 0x21]));
        let cert = leaf.signed_by(&key, &issuer).unwrap();
        let id = cert_id(cert.der()).unwrap();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        assert_eq!(id, format!("{}.AIdlQyE", b64.encode([7u8; 20])));

        // Self-signed without the extension: no identifier, and it says why.
        let plain = rcgen::CertificateParams::new(vec!["a.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert_eq!(
            cert_id(plain.der()).unwrap_err(),
            "the certificate has no authority key identifier"
        );
    }

    #[test]
    fn the_moment_is_inside_the_window_and_now_when_it_is_over() {
        let start = datetime!(2026-03-01 0:00 UTC);
        let end = datetime!(2026-03-03 0:00 UTC);
        let before = datetime!(2026-02-01 0:00 UTC);
        assert_eq!(choose(start, end, before, 0.0), start);
        assert_eq!(
            choose(start, end, before, 0.5),
            datetime!(2026-03-02 0:00 UTC)
        );
        let last = choose(start, end, before, 1.0);
        assert!(
            last < end && last > datetime!(2026-03-02 23:59 UTC),
            "{last}"
        );
        for _ in 0..1000 {
            let at = choose(start, end, before, rand::random());
            assert!(start <= at && at < end, "{at}");
        }
        // Started but not over: still uniform over the whole window (a
        // moment already past means renew at once).
        let inside = datetime!(2026-03-02 0:00 UTC);
        assert_eq!(
            choose(start, end, inside, 0.25),
            datetime!(2026-03-01 12:00 UTC)
        );
        // Over: now.
        let after = datetime!(2026-04-01 0:00 UTC);
        assert_eq!(choose(start, end, after, 0.5), after);
        assert_eq!(choose(start, end, end, 0.5), end);
    }

    #[test]
    fn retry_after_is_clamped() {
        assert_eq!(poll_interval(None), DEFAULT_POLL);
        assert_eq!(poll_interval(Some(Duration::ZERO)), MIN_POLL);
        assert_eq!(poll_interval(Some(Duration::from_secs(1))), MIN_POLL);
        assert_eq!(
            poll_interval(Some(Duration::from_secs(3600))),
            Duration::from_secs(3600)
        );
        assert_eq!(
            poll_interval(Some(Duration::from_secs(86400 * 30))),
            MAX_POLL
        );
    }

    #[test]
    fn renewal_info_bodies() {
        let w = parse(
            br#"{"suggestedWindow": {"start": "2025-01-02T04:00:00Z", "end": "2025-01-03T04:00:00Z"},
                 "explanationURL": "https://acme.example.com/docs/ari"}"#,
        )
        .unwrap();
        assert_eq!(w.start, datetime!(2025-01-02 4:00 UTC));
        assert_eq!(w.end, datetime!(2025-01-03 4:00 UTC));
        assert_eq!(
            w.explanation_url.as_deref(),
            Some("https://acme.example.com/docs/ari")
        );
        let inverted = parse(
            br#"{"suggestedWindow": {"start": "2025-01-03T04:00:00Z", "end": "2025-01-03T04:00:00Z"}}"#,
        );
        assert!(inverted.unwrap_err().starts_with("invalid window"));
        assert!(parse(b"{}").is_err());
    }

    #[test]
    fn the_chosen_moment_is_kept_while_the_window_stays() {
        let now = datetime!(2026-02-01 0:00 UTC);
        let w = SuggestedWindow {
            start: datetime!(2026-03-01 0:00 UTC),
            end: datetime!(2026-03-03 0:00 UTC),
            explanation_url: None,
        };
        let hour = Duration::from_secs(3600);
        let first = record(None, "aa", "x.y", &w, hour, now, 0.5);
        assert_eq!(first.renew_at, "2026-03-02T00:00:00Z");
        assert_eq!(first.next_fetch, "2026-02-01T01:00:00Z");
        let later = now + time::Duration::hours(2);
        let again = record(Some(&first), "aa", "x.y", &w, hour, later, 0.0);
        assert_eq!(again.renew_at, first.renew_at);
        assert_eq!(again.fetched_at, "2026-02-01T02:00:00Z");
        // Another certificate, or another window: chosen anew.
        let other = record(Some(&first), "bb", "x.z", &w, hour, later, 0.0);
        assert_eq!(other.renew_at, "2026-03-01T00:00:00Z");
        let moved = SuggestedWindow {
            end: datetime!(2026-03-05 0:00 UTC),
            ..w.clone()
        };
        let moved = record(Some(&first), "aa", "x.y", &moved, hour, later, 0.0);
        assert_eq!(moved.renew_at, "2026-03-01T00:00:00Z");

        assert!(!needs_fetch(Some(&first), "aa", now));
        assert!(needs_fetch(
            Some(&first),
            "aa",
            now + time::Duration::hours(1)
        ));
        assert!(needs_fetch(Some(&first), "bb", now));
        assert!(needs_fetch(None, "aa", now));
        assert_eq!(
            window(&first),
            Some(AriWindow {
                start: w.start,
                end: w.end,
                renew_at: datetime!(2026-03-02 0:00 UTC),
            })
        );
    }
}

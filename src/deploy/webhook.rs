//! The `webhook` target: the bundle, private key included, POSTed as one
//! JSON document to an HTTPS receiver (plain HTTP only to a loopback
//! address; the configuration refuses anything else).
//!
//! Connection errors, timeouts, 408, 429 and 5xx are retried, at most
//! [`ATTEMPTS`] times, waiting [`FIRST_RETRY`] and doubling, or what the
//! receiver's `Retry-After` asks; a `Retry-After` longer than [`MAX_WAIT`]
//! ends the retries. Redirects are not followed (they would carry the key
//! and the headers elsewhere). A failure reports the receiver's status and
//! the start of its answer — never the key, even if the receiver echoes it.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::acme::http::{error_chain, retry_after, tls_config};
use crate::cert::{rfc3339, Bundle};
use crate::config::{Text, WebhookTarget};

/// Attempts per deployment.
pub const ATTEMPTS: u32 = 4;
/// Wait before the second attempt; doubled for each further one.
pub const FIRST_RETRY: Duration = Duration::from_millis(500);
/// The longest wait between attempts certherd accepts from `Retry-After`.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// How much of a failing receiver's answer the report keeps.
const ANSWER_LIMIT: usize = 300;

/// The JSON document POSTed. No `Debug`: it holds the private key.
#[derive(Serialize)]
struct Payload<'a> {
    /// The certificate's name in the configuration.
    name: &'a str,
    /// The target's name.
    target: &'a str,
    domains: &'a [String],
    not_before: String,
    not_after: String,
    serial: &'a str,
    /// Hex SHA-256 of the leaf's DER.
    sha256: &'a str,
    cert: &'a str,
    chain: &'a str,
    fullchain: String,
    key: &'a str,
}

#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error("HTTP client: {0}")]
    Client(String),
    #[error("the receiver answered HTTP {status}{answer} (after {attempts} attempt(s))")]
    Status {
        status: http::StatusCode,
        /// `: <start of the body>`, or empty.
        answer: String,
        attempts: u32,
    },
    #[error(
        "the receiver answered HTTP {status} and asked to retry after {wait:?}, longer than \
         certherd waits (after {attempts} attempt(s))"
    )]
    RetryTooLate {
        status: http::StatusCode,
        wait: Duration,
        attempts: u32,
    },
    #[error("{cause} (after {attempts} attempt(s))")]
    Network { cause: String, attempts: u32 },
}

/// A failed deployment to a `webhook` target.
#[derive(Debug, thiserror::Error)]
#[error("webhook target {target:?}: POST to {url}: {problem}")]
pub struct Error {
    pub target: String,
    /// The URL, or where a secret URL came from.
    pub url: String,
    #[source]
    pub problem: Problem,
}

/// How to name the URL in a message: a secret URL is never shown.
fn url_shown(url: &Text) -> String {
    match url {
        Text::Plain(u) => u.clone(),
        Text::Secret(s) => format!("the URL from {}", s.origin()),
    }
}

fn client(w: &WebhookTarget) -> Result<reqwest::Client, Problem> {
    let tls = tls_config(&w.trust_roots).map_err(|e| Problem::Client(e.to_string()))?;
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .tcp_nodelay(true)
        .connect_timeout(w.timeout)
        .timeout(w.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("certherd/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Problem::Client(error_chain(&e)))
}

/// The request body: the bundle as JSON.
pub fn body(cert_name: &str, target: &str, b: &Bundle) -> Vec<u8> {
    let p = Payload {
        name: cert_name,
        target,
        domains: &b.info.domains,
        not_before: rfc3339(b.info.not_before),
        not_after: rfc3339(b.info.not_after),
        serial: &b.info.serial,
        sha256: &b.info.sha256,
        cert: &b.leaf_pem,
        chain: &b.chain_pem,
        fullchain: b.fullchain_pem(),
        key: b.key.expose(),
    };
    serde_json::to_vec(&p).expect("the payload serializes")
}

/// The receiver's answer as the report may show it: one line, cut, and
/// withheld entirely if it quotes any part of the private key.
pub fn shown_answer(answer: &str, key_pem: &str) -> String {
    let quotes_key = answer.contains("PRIVATE KEY")
        || key_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .filter_map(|l| l.get(..16))
            .any(|part| answer.contains(part));
    if quotes_key {
        return "<the answer quotes the private key; not shown>".to_string();
    }
    let one = answer.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.chars().count() > ANSWER_LIMIT {
        format!("{}…", one.chars().take(ANSWER_LIMIT).collect::<String>())
    } else {
        one
    }
}

/// POST the bundle, with bounded retries.
pub async fn deploy(
    cert_name: &str,
    target: &str,
    w: &WebhookTarget,
    b: &Bundle,
) -> Result<(), Error> {
    post(cert_name, target, w, b)
        .await
        .map_err(|problem| Error {
            target: target.to_string(),
            url: url_shown(&w.url),
            problem,
        })
}

async fn post(cert_name: &str, target: &str, w: &WebhookTarget, b: &Bundle) -> Result<(), Problem> {
    let client = client(w)?;
    let body = body(cert_name, target, b);
    let mut delay = FIRST_RETRY;
    let mut attempt = 1;
    loop {
        let mut rb = client
            .post(w.url.expose())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body.clone());
        for (name, value) in &w.headers {
            let mut v = http::HeaderValue::from_str(value.expose())
                .map_err(|_| Problem::Client(format!("header `{name}` has an invalid value")))?;
            v.set_sensitive(value.is_secret());
            rb = rb.header(name.as_str(), v);
        }
        let (problem, wait) = match rb.send().await {
            Ok(rsp) if rsp.status().is_success() => {
                tracing::debug!(
                    target,
                    attempt,
                    status = rsp.status().as_u16(),
                    "webhook took the certificate"
                );
                return Ok(());
            }
            Ok(rsp) => {
                let status = rsp.status();
                let asked = retry_after(rsp.headers());
                let answer = rsp.text().await.unwrap_or_default();
                let answer = shown_answer(answer.trim(), b.key.expose());
                let answer = if answer.is_empty() {
                    String::new()
                } else {
                    format!(": {answer}")
                };
                let retry = status.is_server_error() || matches!(status.as_u16(), 408 | 429);
                match asked {
                    Some(wait) if retry && wait > MAX_WAIT && attempt < ATTEMPTS => {
                        return Err(Problem::RetryTooLate {
                            status,
                            wait,
                            attempts: attempt,
                        })
                    }
                    _ => {}
                }
                let problem = Problem::Status {
                    status,
                    answer,
                    attempts: attempt,
                };
                (problem, retry.then(|| asked.unwrap_or(delay)))
            }
            // Without the URL: it may be a secret.
            Err(e) => {
                let cause = error_chain(&e.without_url());
                (
                    Problem::Network {
                        cause,
                        attempts: attempt,
                    },
                    Some(delay),
                )
            }
        };
        let Some(wait) = wait.filter(|_| attempt < ATTEMPTS) else {
            return Err(problem);
        };
        tracing::debug!(target, attempt, wait_ms = wait.as_millis() as u64, %problem, "webhook delivery failed; retrying");
        tokio::time::sleep(wait).await;
        delay = (delay * 2).min(MAX_WAIT);
        attempt += 1;
    }
}

/// For `--dry-run`, without sending anything: the trust roots load, the
/// receiver accepts a connection, and an `https://` receiver's certificate
/// is trusted for its name.
pub async fn preflight(w: &WebhookTarget) -> Vec<String> {
    let shown = url_shown(&w.url);
    let url = match reqwest::Url::parse(w.url.expose()) {
        Ok(u) => u,
        Err(_) => return vec![format!("{shown} is not a valid URL")],
    };
    let tls = match tls_config(&w.trust_roots) {
        Ok(t) => t,
        Err(e) => return vec![e.to_string()],
    };
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
        return vec![format!("{shown} names no host")];
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let check = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("cannot connect to {shown}: {e}"))?;
        if url.scheme() != "https" {
            return Ok(());
        }
        let name = rustls_pki_types::ServerName::try_from(host.clone())
            .map_err(|e| format!("{shown}: {e}"))?;
        tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(name, tcp)
            .await
            .map(|_| ())
            .map_err(|e| format!("TLS with {shown}: {}", error_chain(&e)))
    };
    match tokio::time::timeout(w.timeout, check).await {
        Ok(Ok(())) => Vec::new(),
        Ok(Err(problem)) => vec![problem],
        Err(_) => vec![format!("{shown} did not answer within {:?}", w.timeout)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle() -> Bundle {
        crate::store::tests::bundle(&["a.test"], time::OffsetDateTime::now_utc(), 90)
    }

    #[test]
    fn the_body_holds_every_part_of_the_bundle() {
        let b = bundle();
        let v: serde_json::Value = serde_json::from_slice(&body("site", "hook", &b)).unwrap();
        assert_eq!(v["name"], "site");
        assert_eq!(v["target"], "hook");
        assert_eq!(v["domains"], serde_json::json!(["a.test"]));
        assert_eq!(v["serial"], b.info.serial.as_str());
        assert_eq!(v["sha256"], b.info.sha256.as_str());
        assert_eq!(v["key"], b.key.expose());
        assert_eq!(v["fullchain"], b.fullchain_pem().as_str());
        assert_eq!(v["not_after"], rfc3339(b.info.not_after).as_str());
    }

    #[test]
    fn an_answer_that_quotes_the_key_is_withheld() {
        let b = bundle();
        let line = b.key.expose().lines().nth(1).unwrap();
        let echoed = format!("{{\"error\":\"bad key {}\"}}", &line[..20]);
        assert_eq!(
            shown_answer(&echoed, b.key.expose()),
            "<the answer quotes the private key; not shown>"
        );
        assert_eq!(
            shown_answer("no\n  such   thing", b.key.expose()),
            "no such thing"
        );
        let long = "x".repeat(1000);
        assert_eq!(
            shown_answer(&long, b.key.expose()).chars().count(),
            ANSWER_LIMIT + 1
        );
    }
}

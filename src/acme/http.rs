//! The HTTP client under instant-acme (its `HttpClient` seam): reqwest with
//! TCP_NODELAY, the operator's `trust_roots` on top of the Mozilla roots,
//! and bounded retries with backoff for what is worth retrying — 5xx, 429,
//! connection errors, truncated bodies — honouring `Retry-After` up to a cap.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::RETRY_AFTER;
use http_body_util::{BodyExt, Full};
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};

/// How retries are spaced and bounded. Every ACME request gets at most
/// `attempts` tries; a `Retry-After` longer than `max_wait` ends the retries.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub first_delay: Duration,
    pub max_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 4,
            first_delay: Duration::from_millis(250),
            max_wait: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("trust root {path}: {message}")]
    Root { path: String, message: String },
    #[error("HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// Build the rustls configuration for talking to the CA: Mozilla's roots
/// plus every certificate in the `trust_roots` files.
pub fn tls_config(trust_roots: &[impl AsRef<Path>]) -> Result<rustls::ClientConfig, TlsSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for path in trust_roots {
        let path = path.as_ref();
        let root_err = |message: String| TlsSetupError::Root {
            path: path.display().to_string(),
            message,
        };
        let pem = std::fs::read_to_string(path).map_err(|e| root_err(e.to_string()))?;
        let certs = crate::cert::pem_certificates(&pem).map_err(|e| root_err(e.to_string()))?;
        for c in certs {
            roots.add(c).map_err(|e| root_err(e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[derive(Clone)]
pub struct AcmeHttp {
    client: reqwest::Client,
    policy: RetryPolicy,
}

impl AcmeHttp {
    pub fn new(
        trust_roots: &[impl AsRef<Path>],
        policy: RetryPolicy,
    ) -> Result<Self, TlsSetupError> {
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls_config(trust_roots)?)
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("certherd/", env!("CARGO_PKG_VERSION")))
            .no_proxy()
            .build()?;
        Ok(AcmeHttp { client, policy })
    }

    async fn send(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Result<BytesResponse, instant_acme::Error> {
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let mut delay = self.policy.first_delay;
        let mut attempt = 1;
        loop {
            let mut rb = self
                .client
                .request(parts.method.clone(), parts.uri.to_string())
                .body(body.clone());
            for (k, v) in parts.headers.iter() {
                rb = rb.header(k, v);
            }
            let outcome = match rb.send().await {
                Ok(rsp) => {
                    let status = rsp.status();
                    let headers = rsp.headers().clone();
                    match rsp.bytes().await {
                        Ok(bytes) => Ok((status, headers, bytes)),
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            };
            let wait = match &outcome {
                Ok((status, headers, _)) if status.is_server_error() || status.as_u16() == 429 => {
                    retry_after(headers).map(Some).unwrap_or(Some(delay))
                }
                Ok(_) => None,
                Err(_) => Some(delay),
            };
            let retry = match wait {
                Some(w) if attempt < self.policy.attempts && w <= self.policy.max_wait => Some(w),
                _ => None,
            };
            match (retry, outcome) {
                (Some(w), outcome) => {
                    let what = match &outcome {
                        Ok((s, _, _)) => format!("HTTP {s}"),
                        Err(e) => error_chain(e),
                    };
                    tracing::debug!(url = %parts.uri, attempt, wait_ms = w.as_millis() as u64, "ACME request failed ({what}); retrying");
                    tokio::time::sleep(w).await;
                    delay = (delay * 2).min(self.policy.max_wait);
                    attempt += 1;
                }
                (None, Ok((status, headers, bytes))) => {
                    let mut rsp = http::Response::new(Full::new(bytes));
                    *rsp.status_mut() = status;
                    *rsp.headers_mut() = headers;
                    return Ok(BytesResponse::from(rsp));
                }
                (None, Err(e)) => {
                    return Err(instant_acme::Error::Other(Box::new(RequestFailed {
                        url: parts.uri.to_string(),
                        attempts: attempt,
                        cause: error_chain(&e),
                    })))
                }
            }
        }
    }
}

/// A request that could not be completed, after every retry.
#[derive(Debug, thiserror::Error)]
#[error("{url}: {cause} (after {attempts} attempts)")]
pub struct RequestFailed {
    pub url: String,
    pub attempts: u32,
    pub cause: String,
}

/// An error and its sources, joined: reqwest's own Display hides the cause.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        src = cause.source();
    }
    s
}

/// `Retry-After` as seconds or an HTTP date (RFC 9110 §10.2.3).
fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate(v)?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

fn httpdate(v: &str) -> Option<SystemTime> {
    let fmt = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let dt = time::PrimitiveDateTime::parse(v, fmt).ok()?.assume_utc();
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(dt.unix_timestamp().try_into().ok()?))
}

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let this = self.clone();
        Box::pin(async move { this.send(req).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_and_date() {
        let mut h = http::HeaderMap::new();
        h.insert(RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        h.insert(RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }
}

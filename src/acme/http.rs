//! The HTTP client under instant-acme (its `HttpClient` seam): reqwest with
//! TCP_NODELAY, the operator's `trust_roots` on top of the Mozilla roots,
//! and bounded retries with backoff for what is worth retrying — 5xx, 429,
//! connection errors, truncated bodies — honouring `Retry-After` up to a cap.
//!
//! A `Retry-After` the CA sends holds every request of the client until it
//! has passed, not only the one that got it: concurrent orders do not keep
//! knocking while the CA has asked for a pause. A 5xx or 429 without one
//! holds them for the backoff of the request that got it. An answer that still says
//! "later" (5xx, 429) once the retries are spent is an error
//! ([`RequestFailed`]) with the status, the CA's problem document and the
//! number of attempts, so the report says what the CA said.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::RETRY_AFTER;
use http_body_util::{BodyExt, Full};
use instant_acme::{BodyWrapper, BytesResponse, HttpClient, Problem};

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
    /// No request is sent before this moment: the latest `Retry-After`.
    hold: Arc<std::sync::Mutex<Option<tokio::time::Instant>>>,
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
        Ok(AcmeHttp {
            client,
            policy,
            hold: Arc::default(),
        })
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
        let url = parts.uri.to_string();
        let fin = self
            .execute(&parts.method, &url, &parts.headers, body)
            .await
            .map_err(|e| instant_acme::Error::Other(Box::new(e)))?;
        if is_retryable(fin.status) {
            // Still "later" after every retry: say what the CA said, rather
            // than leave instant-acme to read the body as what it expected.
            return Err(instant_acme::Error::Other(Box::new(self.refused(url, fin))));
        }
        let mut rsp = http::Response::new(Full::new(fin.body));
        *rsp.status_mut() = fin.status;
        *rsp.headers_mut() = fin.headers;
        Ok(BytesResponse::from(rsp))
    }

    /// The error for an answer that is still a 5xx or 429 when retrying ends.
    fn refused(&self, url: String, fin: Final) -> RequestFailed {
        let problem = serde_json::from_slice::<Problem>(&fin.body)
            .ok()
            .filter(|p| p.r#type.is_some() || p.detail.is_some());
        let mut cause = format!("HTTP {}", fin.status);
        if let Some(p) = &problem {
            cause.push_str(": ");
            cause.push_str(p.detail.as_deref().unwrap_or("no detail"));
            if let Some(t) = &p.r#type {
                cause.push_str(&format!(" ({t})"));
            }
        }
        if let Some(wait) = retry_after(&fin.headers).filter(|w| *w > self.policy.max_wait) {
            cause.push_str(&format!(
                "; the CA asks to retry after {}s, longer than the {}s certherd waits",
                wait.as_secs(),
                self.policy.max_wait.as_secs()
            ));
        }
        RequestFailed {
            url,
            attempts: fin.attempts,
            cause,
            status: Some(fin.status.as_u16()),
            problem,
        }
    }

    /// A plain GET with the same retries as every ACME request: for what
    /// needs no JWS (the directory, ARI's `renewalInfo`). Any status is
    /// returned once the retries are done; only a request that never got
    /// an answer is an error.
    pub async fn get(&self, url: &str) -> Result<Answer, RequestFailed> {
        let fin = self
            .execute(
                &http::Method::GET,
                url,
                &http::HeaderMap::new(),
                Bytes::new(),
            )
            .await?;
        Ok(Answer {
            status: fin.status,
            headers: fin.headers,
            body: fin.body,
        })
    }

    async fn execute(
        &self,
        method: &http::Method,
        url: &str,
        headers: &http::HeaderMap,
        body: Bytes,
    ) -> Result<Final, RequestFailed> {
        let mut delay = self.policy.first_delay;
        let mut attempt = 1;
        loop {
            let hold = *self.hold.lock().expect("hold");
            if let Some(until) = hold {
                tokio::time::sleep_until(until).await;
            }
            let mut rb = self.client.request(method.clone(), url).body(body.clone());
            for (k, v) in headers.iter() {
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
            crate::metrics::acme_request(match &outcome {
                Ok((status, _, _)) => crate::metrics::AcmeOutcome::from_status(status.as_u16()),
                Err(_) => crate::metrics::AcmeOutcome::NetworkError,
            });
            let wait = match &outcome {
                Ok((status, headers, _)) if is_retryable(*status) => match retry_after(headers) {
                    Some(asked) => {
                        if asked <= self.policy.max_wait {
                            self.hold_until(tokio::time::Instant::now() + asked);
                        }
                        Some(asked)
                    }
                    None => {
                        // No word from the CA on how long: the others back
                        // off with this request rather than knock meanwhile.
                        self.hold_until(tokio::time::Instant::now() + delay);
                        Some(delay)
                    }
                },
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
                    tracing::debug!(
                        url,
                        attempt,
                        wait_ms = w.as_millis() as u64,
                        "ACME request failed ({what}); retrying"
                    );
                    tokio::time::sleep(w).await;
                    delay = (delay * 2).min(self.policy.max_wait);
                    attempt += 1;
                }
                (None, Ok((status, headers, body))) => {
                    return Ok(Final {
                        status,
                        headers,
                        body,
                        attempts: attempt,
                    })
                }
                (None, Err(e)) => {
                    return Err(RequestFailed {
                        url: url.to_string(),
                        attempts: attempt,
                        cause: error_chain(&e),
                        status: None,
                        problem: None,
                    })
                }
            }
        }
    }

    /// Hold every request of this client until `until` (the later of it
    /// and any hold already set).
    fn hold_until(&self, until: tokio::time::Instant) {
        let mut hold = self.hold.lock().expect("hold");
        if hold.is_none_or(|h| h < until) {
            *hold = Some(until);
        }
    }
}

/// Worth asking again: the server failed or asked for a pause.
fn is_retryable(status: http::StatusCode) -> bool {
    status.is_server_error() || status == http::StatusCode::TOO_MANY_REQUESTS
}

/// The last answer to a request, and how many attempts it took.
struct Final {
    status: http::StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
    attempts: u32,
}

/// What a plain GET got back.
#[derive(Debug)]
pub struct Answer {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// A request that could not be completed, after every retry: no answer,
/// or (from the `HttpClient` seam) an answer that still says "later".
#[derive(Debug, thiserror::Error)]
#[error(
    "{url}: {cause} (after {attempts} {})",
    if *attempts == 1 { "attempt" } else { "attempts" }
)]
pub struct RequestFailed {
    pub url: String,
    pub attempts: u32,
    pub cause: String,
    /// The last answer's HTTP status, when there was an answer.
    pub status: Option<u16>,
    /// The CA's problem document (RFC 8555 §6.7), when the last answer had one.
    pub problem: Option<Problem>,
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
pub fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
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
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A loopback HTTP server answering request N with `answers[N]`
    /// (status, Retry-After), the last answer repeating. Returns its URL and
    /// the request counter.
    async fn server(answers: Vec<(u16, Option<&'static str>)>) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/dir", listener.local_addr().unwrap());
        let count = Arc::new(AtomicUsize::new(0));
        let counter = count.clone();
        let answers = Arc::new(answers);
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (counter, answers) = (counter.clone(), answers.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| {
                        let n = counter.fetch_add(1, Ordering::SeqCst);
                        let (status, retry_after) = answers[n.min(answers.len() - 1)];
                        let mut rsp = hyper::Response::builder().status(status);
                        if let Some(r) = retry_after {
                            rsp = rsp.header("retry-after", r);
                        }
                        async move { rsp.body(Full::new(Bytes::from_static(b"{}"))) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (url, count)
    }

    fn client() -> AcmeHttp {
        let policy = RetryPolicy {
            attempts: 4,
            first_delay: Duration::from_millis(10),
            max_wait: Duration::from_secs(2),
        };
        AcmeHttp::new(&[] as &[&Path], policy).unwrap()
    }

    async fn get(c: &AcmeHttp, url: &str) -> Result<u16, instant_acme::Error> {
        let req = http::Request::get(url)
            .body(BodyWrapper::from(Vec::new()))
            .unwrap();
        c.send(req).await.map(|r| r.parts.status.as_u16())
    }

    /// A first request in the background; once its answer has set the
    /// client's hold, a second one. Their statuses, and how long after the
    /// first started the second got its answer.
    async fn a_second_request_during_the_hold(c: &AcmeHttp, url: &str) -> (u16, u16, Duration) {
        let start = std::time::Instant::now();
        let first = tokio::spawn({
            let (c, url) = (c.clone(), url.to_string());
            async move { get(&c, &url).await.unwrap() }
        });
        while c.hold.lock().unwrap().is_none() {
            assert!(start.elapsed() < Duration::from_secs(5), "no hold was set");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let second = get(c, url).await.unwrap();
        let waited = start.elapsed();
        (first.await.unwrap(), second, waited)
    }

    #[tokio::test]
    async fn server_errors_are_retried_until_success() {
        let (url, count) = server(vec![(503, Some("0")), (500, None), (200, None)]).await;
        assert_eq!(get(&client(), &url).await.unwrap(), 200);
        assert_eq!(count.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn retries_are_bounded_and_the_last_status_is_the_error() {
        let (url, count) = server(vec![(500, None)]).await;
        let err = get(&client(), &url).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{url}: HTTP 500 Internal Server Error (after 4 attempts)")
        );
        assert_eq!(count.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_retry_after_beyond_the_cap_is_not_waited_for() {
        let (url, count) = server(vec![(429, Some("3600"))]).await;
        let start = std::time::Instant::now();
        let err = get(&client(), &url).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{url}: HTTP 429 Too Many Requests; the CA asks to retry after 3600s, \
                 longer than the 2s certherd waits (after 1 attempt)"
            )
        );
        assert_eq!(count.load(Ordering::SeqCst), 1);
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_retry_after_holds_every_request_of_the_client() {
        let (url, count) = server(vec![(503, Some("1")), (200, None)]).await;
        // A second request while the first waits out the CA's Retry-After.
        let (first, second, waited) = a_second_request_during_the_hold(&client(), &url).await;
        assert_eq!(second, 200);
        assert!(
            waited >= Duration::from_secs(1),
            "the second request went out during the pause"
        );
        assert_eq!(first, 200);
        assert_eq!(count.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_server_error_without_retry_after_holds_the_others_for_its_backoff() {
        let (url, count) = server(vec![(503, None), (200, None)]).await;
        let policy = RetryPolicy {
            attempts: 4,
            first_delay: Duration::from_millis(500),
            max_wait: Duration::from_secs(2),
        };
        let c = AcmeHttp::new(&[] as &[&Path], policy).unwrap();
        let (first, second, waited) = a_second_request_during_the_hold(&c, &url).await;
        assert_eq!(second, 200);
        assert!(
            waited >= Duration::from_millis(500),
            "the second request went out during the first one's backoff"
        );
        assert_eq!(first, 200);
        assert_eq!(count.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_problem_document_is_named() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/new-order", listener.local_addr().unwrap());
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|_req| async {
                        let body = r#"{"type":"urn:ietf:params:acme:error:rateLimited","detail":"too many new orders","status":429}"#;
                        hyper::Response::builder()
                            .status(429)
                            .header("content-type", "application/problem+json")
                            .body(Full::new(Bytes::from_static(body.as_bytes())))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        let err = get(&client(), &url).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{url}: HTTP 429 Too Many Requests: too many new orders \
                 (urn:ietf:params:acme:error:rateLimited) (after 4 attempts)"
            )
        );
        let instant_acme::Error::Other(inner) = &err else {
            panic!("{err:?}")
        };
        let failed = inner.downcast_ref::<RequestFailed>().unwrap();
        assert_eq!(failed.status, Some(429));
        assert_eq!(
            failed.problem.as_ref().and_then(|p| p.r#type.as_deref()),
            Some("urn:ietf:params:acme:error:rateLimited")
        );
    }

    #[tokio::test]
    async fn retry_after_is_honoured() {
        let (url, count) = server(vec![(503, Some("1")), (200, None)]).await;
        let start = std::time::Instant::now();
        assert_eq!(get(&client(), &url).await.unwrap(), 200);
        assert_eq!(count.load(Ordering::SeqCst), 2);
        assert!(start.elapsed() >= Duration::from_secs(1));
    }

    #[tokio::test]
    async fn client_errors_are_not_retried() {
        let (url, count) = server(vec![(404, None), (200, None)]).await;
        assert_eq!(get(&client(), &url).await.unwrap(), 404);
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn connection_refused_names_the_url_and_attempts() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/dir");
        let err = get(&client(), &url).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("{url}: error sending request")),
            "{text}"
        );
        assert!(
            text.ends_with("Connection refused (os error 111) (after 4 attempts)"),
            "{text}"
        );
    }

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

//! A fault-injecting HTTPS proxy in front of a [`Pebble`]'s ACME API.
//!
//! certherd reaches it through `acme.directory` ([`FaultProxy::directory_url`])
//! and `trust_roots` ([`FaultProxy::tls_root_path`]). Every request is
//! forwarded to Pebble unchanged, with the client's `Host`: Pebble builds
//! every URL it hands out (directory, `Location`, `Link`, order and
//! authorization URLs) from it, so they all point back at the proxy, and a
//! JWS signed for the proxy's URL is the one Pebble expects (as in
//! [`super::ari`]).
//!
//! A test scripts faults with [`FaultProxy::inject`]: for the requests that
//! match a method and a path prefix ([`FaultProxy::path`] names Pebble's
//! resources), the Nth, the first N or all of them get a [`Fault`] instead
//! of (or on the way to) Pebble's answer. Faults that answer without
//! forwarding (status, reset) never reach Pebble, so the request's nonce is
//! still good when the client repeats it.
//!
//! Every request is recorded with the moment it arrived and what was done
//! to it ([`FaultProxy::requests`]), so tests can count attempts and
//! measure their spacing.

use std::convert::Infallible;
use std::os::fd::RawFd;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Method, Request, Response};

use super::front::{forward, split_url, Front};
use super::Pebble;

/// What the proxy does to a matching request.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Answer this status without asking Pebble, with `Retry-After:
    /// <seconds>` when given. The body is plain text, as a load balancer in
    /// front of a CA would send.
    Status {
        status: u16,
        retry_after: Option<u64>,
    },
    /// 429 with an RFC 8555 §6.7 `rateLimited` problem document carrying
    /// `detail`, and `Retry-After: <seconds>` when given.
    RateLimited {
        detail: String,
        retry_after: Option<u64>,
    },
    /// Read the request, then reset the connection (TCP RST) without an answer.
    Reset,
    /// Wait this long, then forward.
    Delay(Duration),
    /// Forward, then send the head (with the full `Content-Length`) and only
    /// the first half of Pebble's body before closing the connection.
    Truncate,
}

impl Fault {
    pub fn status(status: u16) -> Fault {
        Fault::Status {
            status,
            retry_after: None,
        }
    }

    pub fn status_retry_after(status: u16, seconds: u64) -> Fault {
        Fault::Status {
            status,
            retry_after: Some(seconds),
        }
    }

    pub fn rate_limited(detail: &str, retry_after: Option<u64>) -> Fault {
        Fault::RateLimited {
            detail: detail.to_string(),
            retry_after,
        }
    }

    fn label(&self) -> String {
        match self {
            Fault::Status { status, .. } => status.to_string(),
            Fault::RateLimited { .. } => "429".to_string(),
            Fault::Reset => "reset".to_string(),
            Fault::Delay(d) => format!("delay {d:?}"),
            Fault::Truncate => "truncated".to_string(),
        }
    }
}

/// Which of the matching requests a fault applies to (counted from 1).
#[derive(Clone, Copy, Debug)]
pub enum When {
    Nth(usize),
    FirstN(usize),
    Always,
}

struct Rule {
    method: Method,
    path_prefix: String,
    when: When,
    fault: Fault,
    matched: usize,
}

/// One request the proxy saw.
#[derive(Clone, Debug)]
pub struct Seen {
    /// When it arrived (its head was read).
    pub at: Instant,
    pub method: Method,
    pub path: String,
    /// The fault applied, or `None` when it went to Pebble untouched.
    pub fault: Option<String>,
    /// The status the client was sent (Pebble's or the fault's); `None`
    /// when the connection was reset.
    pub status: Option<u16>,
}

#[derive(Default)]
struct State {
    rules: Vec<Rule>,
    seen: Vec<Seen>,
}

struct Shared {
    state: Mutex<State>,
    upstream: reqwest::Client,
    /// `https://127.0.0.1:PORT`, Pebble's listener.
    pebble_base: String,
    /// Pebble's directory, for [`FaultProxy::path`].
    directory: serde_json::Value,
    directory_path: String,
}

/// The proxy; stopped on drop.
pub struct FaultProxy {
    shared: Arc<Shared>,
    front: Front,
}

impl FaultProxy {
    /// Starts the proxy in front of `pebble`, with no fault scripted.
    pub fn start(pebble: &Pebble) -> FaultProxy {
        let (mut front, upstream) = Front::bind(pebble, "fault-proxy");
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            upstream: upstream.client,
            pebble_base: upstream.base,
            directory: upstream.directory,
            directory_path: upstream.directory_path,
        });
        let serving = shared.clone();
        front.serve(move |fd, req| {
            let shared = serving.clone();
            async move { handle(&shared, fd, req).await }
        });
        FaultProxy { shared, front }
    }

    /// The directory through the proxy: `https://127.0.0.1:PORT/dir`.
    pub fn directory_url(&self) -> String {
        self.front.directory_url()
    }

    /// The root that signed the proxy's TLS certificate (for `trust_roots`).
    pub fn tls_root_path(&self) -> &Path {
        self.front.tls_root_path()
    }

    /// The path of one of Pebble's resources: `directory`, or a directory
    /// key such as `newNonce`, `newAccount`, `newOrder`. Pebble's order,
    /// authorization, challenge, finalize and certificate URLs start with
    /// `/my-order/`, `/authZ/`, `/chalZ/`, `/finalize-order/` and `/certZ/`.
    pub fn path(&self, resource: &str) -> String {
        if resource == "directory" {
            return self.shared.directory_path.clone();
        }
        let url = self.shared.directory[resource]
            .as_str()
            .unwrap_or_else(|| panic!("no {resource:?} in Pebble's directory"));
        split_url(url).1
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().expect("proxy state")
    }

    /// Apply `fault` to the requests with `method` whose path starts with
    /// `path_prefix`, as `when` says. The first rule that applies wins.
    pub fn inject(&self, method: Method, path_prefix: &str, when: When, fault: Fault) {
        self.state().rules.push(Rule {
            method,
            path_prefix: path_prefix.to_string(),
            when,
            fault,
            matched: 0,
        });
    }

    /// Remove every scripted fault.
    pub fn clear(&self) {
        self.state().rules.clear();
    }

    /// Every request so far, in order of arrival.
    pub fn requests(&self) -> Vec<Seen> {
        self.state().seen.clone()
    }

    /// The requests with `method` whose path starts with `path_prefix`.
    pub fn requests_to(&self, method: Method, path_prefix: &str) -> Vec<Seen> {
        self.requests()
            .into_iter()
            .filter(|s| s.method == method && s.path.starts_with(path_prefix))
            .collect()
    }

    /// Forget the requests seen so far.
    pub fn forget_requests(&self) {
        self.state().seen.clear();
    }
}

/// The most requests of `seen` that fall within any one window of `window`.
pub fn most_within(seen: &[Seen], window: Duration) -> usize {
    let mut best = 0;
    for (i, first) in seen.iter().enumerate() {
        let n = seen[i..]
            .iter()
            .take_while(|s| s.at.duration_since(first.at) < window)
            .count();
        best = best.max(n);
    }
    best
}

/// The time between consecutive requests of `seen`.
pub fn gaps(seen: &[Seen]) -> Vec<Duration> {
    seen.windows(2)
        .map(|w| w[1].at.duration_since(w[0].at))
        .collect()
}

type Body = BoxBody<Bytes, std::io::Error>;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// Which fault, if any, applies to this request; the request is recorded
/// (at the index returned).
fn decide(shared: &Shared, method: &Method, path: &str) -> (usize, Option<Fault>) {
    let mut state = shared.state.lock().expect("proxy state");
    let mut chosen = None;
    for rule in &mut state.rules {
        if rule.method != *method || !path.starts_with(&rule.path_prefix) {
            continue;
        }
        rule.matched += 1;
        let applies = match rule.when {
            When::Nth(n) => rule.matched == n,
            When::FirstN(n) => rule.matched <= n,
            When::Always => true,
        };
        if applies && chosen.is_none() {
            chosen = Some(rule.fault.clone());
        }
    }
    state.seen.push(Seen {
        at: Instant::now(),
        method: method.clone(),
        path: path.to_string(),
        fault: chosen.as_ref().map(Fault::label),
        status: None,
    });
    (state.seen.len() - 1, chosen)
}

fn record_status(shared: &Shared, index: usize, status: u16) {
    if let Some(seen) = shared
        .state
        .lock()
        .expect("proxy state")
        .seen
        .get_mut(index)
    {
        seen.status = Some(status);
    }
}

/// Close with a TCP RST rather than a FIN: `SO_LINGER` with a zero timeout.
fn reset_on_close(fd: RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `fd` is the connection's socket, open while its request is served.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
}

#[derive(Debug)]
struct Aborted;

impl std::fmt::Display for Aborted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection reset by the fault proxy")
    }
}

impl std::error::Error for Aborted {}

async fn handle(
    shared: &Shared,
    fd: RawFd,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, Aborted> {
    let (parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let (index, fault) = decide(shared, &parts.method, &path);
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();

    match &fault {
        Some(Fault::Status {
            status,
            retry_after,
        }) => {
            let mut rsp = Response::builder()
                .status(*status)
                .header("content-type", "text/plain");
            if let Some(s) = retry_after {
                rsp = rsp.header("retry-after", s.to_string());
            }
            record_status(shared, index, *status);
            let text = format!("fault proxy: HTTP {status}\n");
            return Ok(rsp.body(full(text)).expect("status response"));
        }
        Some(Fault::RateLimited {
            detail,
            retry_after,
        }) => {
            let problem = serde_json::json!({
                "type": "urn:ietf:params:acme:error:rateLimited",
                "detail": detail,
                "status": 429,
            });
            record_status(shared, index, 429);
            let mut rsp = Response::builder()
                .status(429)
                .header("content-type", "application/problem+json");
            if let Some(s) = retry_after {
                rsp = rsp.header("retry-after", s.to_string());
            }
            return Ok(rsp
                .body(full(problem.to_string()))
                .expect("rate limit response"));
        }
        Some(Fault::Reset) => {
            reset_on_close(fd);
            return Err(Aborted);
        }
        Some(Fault::Delay(d)) => tokio::time::sleep(*d).await,
        Some(Fault::Truncate) | None => {}
    }

    let upstream = match forward(&shared.upstream, &shared.pebble_base, &parts, &path, body).await {
        Ok(r) => r,
        Err(e) => {
            record_status(shared, index, 502);
            return Ok(Response::builder()
                .status(502)
                .body(full(format!("fault proxy: Pebble: {e}\n")))
                .expect("502"));
        }
    };
    let status = upstream.status();
    record_status(shared, index, status.as_u16());
    let headers = upstream.headers().clone();
    let bytes = upstream.bytes().await.unwrap_or_default();

    let mut rsp = Response::builder().status(status.as_u16());
    for (k, v) in headers.iter() {
        if !matches!(
            k.as_str(),
            "content-length" | "connection" | "transfer-encoding"
        ) {
            rsp = rsp.header(k, v);
        }
    }
    if fault == Some(Fault::Truncate) && bytes.len() > 1 {
        // The head promises every byte; half of them come, then the end.
        // The pause lets the head and the first half reach the client
        // before the connection goes down.
        use futures_util::StreamExt;
        let half = bytes.slice(..bytes.len() / 2);
        let first = futures_util::stream::iter([Ok(Frame::data(half))]);
        let end = futures_util::stream::once(async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Err(std::io::Error::other("truncated by the fault proxy"))
        });
        let stream = StreamBody::new(first.chain(end));
        return Ok(rsp
            .header("content-length", bytes.len().to_string())
            .body(BodyExt::boxed(stream))
            .expect("truncated response"));
    }
    Ok(rsp.body(full(bytes)).expect("forwarded response"))
}

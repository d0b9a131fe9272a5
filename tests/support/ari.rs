//! A small ACME server speaking RFC 9773 (ARI) and ACME profiles in front
//! of a [`Pebble`], which (Debian's 2.4) has neither.
//!
//! - Every request is forwarded to Pebble unchanged (same method, path,
//!   headers and body; JWS POSTs are not touched, so their signatures hold).
//!   The client's `Host` header is passed on: Pebble builds every URL it
//!   hands out (directory, `Location`, `Link`, order and authorization
//!   URLs) from it, so they all point at the proxy, and it checks a JWS
//!   `url` against it, so the URL the client signed is the one Pebble
//!   expects.
//! - The directory gets `renewalInfo: https://<proxy>/renewal-info`
//!   ([`AriProxy::set_offer_ari`] turns that off) and, when a test asks,
//!   `meta.profiles` ([`AriProxy::set_profiles`]).
//! - `GET /renewal-info/<certID>` answers the window a test chose, for one
//!   certificate or for all ([`AriProxy::answer_for`], [`AriProxy::answer_all`]),
//!   with its `Retry-After`; every certID asked for is recorded.
//! - Every newOrder payload is decoded and recorded
//!   ([`AriProxy::new_orders`]). Pebble 2.4 ignores the `replaces` and
//!   `profile` fields (Go's JSON decoding skips unknown fields); the proxy
//!   reflects both into the order objects it returns, as RFC 9773 §5 asks
//!   of a server (instant-acme checks `replaces` comes back). With
//!   [`AriProxy::set_reject_replaces`] an order with `replaces` is refused
//!   with `alreadyReplaced` instead.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::path::Path;
use std::sync::{Arc, Mutex};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use time::OffsetDateTime;

use super::front::{forward, split_url, Front};
use super::Pebble;

/// What `GET /renewal-info/<certID>` answers.
#[derive(Clone, Debug)]
pub enum RenewalInfoAnswer {
    /// 200 with this window, `Retry-After: <seconds>` when given.
    Window {
        start: OffsetDateTime,
        end: OffsetDateTime,
        retry_after: Option<u64>,
        explanation_url: Option<String>,
    },
    /// This status with a problem document.
    Status(u16),
}

#[derive(Default)]
struct State {
    offer_ari: bool,
    profiles: Option<BTreeMap<String, String>>,
    reject_replaces: bool,
    answers: HashMap<String, RenewalInfoAnswer>,
    answer_all: Option<RenewalInfoAnswer>,
    renewal_info_requests: Vec<String>,
    new_orders: Vec<serde_json::Value>,
    /// Order path → the fields reflected into it (`replaces`, `profile`).
    order_fields: HashMap<String, serde_json::Map<String, serde_json::Value>>,
}

struct Shared {
    state: Mutex<State>,
    upstream: reqwest::Client,
    /// `https://127.0.0.1:PORT`, Pebble's listener.
    pebble_base: String,
    new_order_path: String,
    directory_path: String,
}

/// The proxy; stopped on drop.
pub struct AriProxy {
    shared: Arc<Shared>,
    front: Front,
}

impl AriProxy {
    /// Starts the proxy in front of `pebble`, offering ARI and no profiles,
    /// answering 404 for every certificate until told otherwise.
    pub fn start(pebble: &Pebble) -> AriProxy {
        let (mut front, upstream) = Front::bind(pebble, "ari-proxy");
        let new_order = upstream.directory["newOrder"]
            .as_str()
            .expect("newOrder in the directory");
        let (_, new_order_path) = split_url(new_order);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                offer_ari: true,
                ..State::default()
            }),
            upstream: upstream.client,
            pebble_base: upstream.base,
            new_order_path,
            directory_path: upstream.directory_path,
        });
        let serving = shared.clone();
        front.serve(move |_fd, req| {
            let shared = serving.clone();
            async move { Ok::<_, Infallible>(handle(&shared, req).await) }
        });
        AriProxy { shared, front }
    }

    /// The directory through the proxy: `https://127.0.0.1:PORT/dir`.
    pub fn directory_url(&self) -> String {
        self.front.directory_url()
    }

    /// The root that signed the proxy's TLS certificate (for `trust_roots`).
    pub fn tls_root_path(&self) -> &Path {
        self.front.tls_root_path()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().expect("proxy state")
    }

    /// Whether the directory offers `renewalInfo` (default: yes).
    pub fn set_offer_ari(&self, on: bool) {
        self.state().offer_ari = on;
    }

    /// Offer these profiles (name → description) in `meta.profiles`.
    pub fn set_profiles(&self, profiles: &[(&str, &str)]) {
        self.state().profiles = Some(
            profiles
                .iter()
                .map(|(n, d)| (n.to_string(), d.to_string()))
                .collect(),
        );
    }

    /// Refuse every order that carries `replaces` (`alreadyReplaced`).
    pub fn set_reject_replaces(&self, on: bool) {
        self.state().reject_replaces = on;
    }

    /// Answer this for every certificate without an answer of its own.
    pub fn answer_all(&self, answer: RenewalInfoAnswer) {
        self.state().answer_all = Some(answer);
    }

    /// Answer this for one certificate identifier.
    pub fn answer_for(&self, cert_id: &str, answer: RenewalInfoAnswer) {
        self.state().answers.insert(cert_id.to_string(), answer);
    }

    /// Every certID asked for, in order.
    pub fn renewal_info_requests(&self) -> Vec<String> {
        self.state().renewal_info_requests.clone()
    }

    /// Every newOrder payload, decoded, in order.
    pub fn new_orders(&self) -> Vec<serde_json::Value> {
        self.state().new_orders.clone()
    }
}

fn problem(status: u16, kind: &str, detail: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({
        "type": format!("urn:ietf:params:acme:error:{kind}"),
        "detail": detail,
        "status": status,
    });
    Response::builder()
        .status(status)
        .header("content-type", "application/problem+json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("problem response")
}

fn renewal_info(shared: &Shared, cert_id: &str) -> Response<Full<Bytes>> {
    let answer = {
        let mut state = shared.state.lock().expect("proxy state");
        state.renewal_info_requests.push(cert_id.to_string());
        state
            .answers
            .get(cert_id)
            .or(state.answer_all.as_ref())
            .cloned()
    };
    let rfc3339 = |t: OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .expect("RFC 3339")
    };
    match answer {
        None => problem(404, "malformed", "no such certificate"),
        Some(RenewalInfoAnswer::Status(status)) => {
            problem(status, "serverInternal", "renewal information unavailable")
        }
        Some(RenewalInfoAnswer::Window {
            start,
            end,
            retry_after,
            explanation_url,
        }) => {
            let mut body = serde_json::json!({
                "suggestedWindow": {"start": rfc3339(start), "end": rfc3339(end)},
            });
            if let Some(url) = explanation_url {
                body["explanationURL"] = url.into();
            }
            let mut rsp = Response::builder()
                .status(200)
                .header("content-type", "application/json");
            if let Some(secs) = retry_after {
                rsp = rsp.header("retry-after", secs.to_string());
            }
            rsp.body(Full::new(Bytes::from(body.to_string())))
                .expect("renewalInfo response")
        }
    }
}

/// The decoded payload of a flattened JWS.
fn jws_payload(body: &[u8]) -> Option<serde_json::Value> {
    let jws: serde_json::Value = serde_json::from_slice(body).ok()?;
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(jws["payload"].as_str()?)
        .ok()?;
    serde_json::from_slice(&payload).ok()
}

async fn handle(shared: &Shared, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return problem(400, "malformed", &format!("reading the body: {e}")),
    };
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    if parts.method == hyper::Method::GET {
        if let Some(cert_id) = path.strip_prefix("/renewal-info/") {
            return renewal_info(shared, cert_id);
        }
    }
    let host = parts
        .headers
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost")
        .to_string();

    // A new order: record what it asks for; refuse `replaces` if told to.
    let mut reflect = serde_json::Map::new();
    if parts.method == hyper::Method::POST && path == shared.new_order_path {
        let payload = jws_payload(&body).unwrap_or(serde_json::Value::Null);
        for field in ["replaces", "profile"] {
            if let Some(v) = payload.get(field) {
                reflect.insert(field.to_string(), v.clone());
            }
        }
        let reject = {
            let mut state = shared.state.lock().expect("proxy state");
            state.new_orders.push(payload);
            state.reject_replaces && reflect.contains_key("replaces")
        };
        if reject {
            return problem(
                409,
                "alreadyReplaced",
                "the certificate has already been replaced",
            );
        }
    }

    // Forward, with the client's Host: Pebble's URLs then name the proxy.
    let upstream = match forward(&shared.upstream, &shared.pebble_base, &parts, &path, body).await {
        Ok(r) => r,
        Err(e) => return problem(502, "serverInternal", &format!("Pebble: {e}")),
    };
    let status = upstream.status();
    let headers = upstream.headers().clone();
    let mut bytes = upstream.bytes().await.unwrap_or_default();

    let location_path = headers
        .get(hyper::header::LOCATION)
        .and_then(|l| l.to_str().ok())
        .map(|l| split_url(l).1);
    let edit = |bytes: &Bytes, f: &dyn Fn(&mut serde_json::Value)| -> Bytes {
        match serde_json::from_slice::<serde_json::Value>(bytes) {
            Ok(mut v) if v.is_object() => {
                f(&mut v);
                Bytes::from(v.to_string())
            }
            _ => bytes.clone(),
        }
    };
    if parts.method == hyper::Method::GET && path == shared.directory_path && status.is_success() {
        let (offer_ari, profiles) = {
            let state = shared.state.lock().expect("proxy state");
            (state.offer_ari, state.profiles.clone())
        };
        bytes = edit(&bytes, &|dir| {
            if offer_ari {
                dir["renewalInfo"] = format!("https://{host}/renewal-info").into();
            }
            if let Some(profiles) = &profiles {
                if !dir["meta"].is_object() {
                    dir["meta"] = serde_json::json!({});
                }
                dir["meta"]["profiles"] = serde_json::json!(profiles);
            }
        });
    } else if parts.method == hyper::Method::POST && status.is_success() {
        // Reflect `replaces` and `profile` into the new order and every
        // later fetch of it.
        let fields = if path == shared.new_order_path {
            if let Some(order) = &location_path {
                shared
                    .state
                    .lock()
                    .expect("proxy state")
                    .order_fields
                    .insert(order.clone(), reflect.clone());
            }
            Some(reflect)
        } else {
            shared
                .state
                .lock()
                .expect("proxy state")
                .order_fields
                .get(&path)
                .cloned()
        };
        if let Some(fields) = fields.filter(|f| !f.is_empty()) {
            bytes = edit(&bytes, &|order| {
                for (k, v) in &fields {
                    order[k] = v.clone();
                }
            });
        }
    }

    let mut rsp =
        Response::builder().status(StatusCode::from_u16(status.as_u16()).expect("status"));
    for (k, v) in headers.iter() {
        if !matches!(
            k.as_str(),
            "content-length" | "connection" | "transfer-encoding"
        ) {
            rsp = rsp.header(k, v);
        }
    }
    rsp.body(Full::new(bytes)).expect("forwarded response")
}

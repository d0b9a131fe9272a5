//! Metrics and notifications, from the configuration to the wire: the
//! Prometheus text parsed back line by line, the metrics server scraped over
//! real HTTP, the node_exporter textfile, webhooks delivered to a real
//! receiver on loopback (JSON and Slack), a failing receiver retried and
//! never fatal, an exec notifier's environment, and the expiry alerts kept
//! across runs.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use time::macros::datetime;
use time::OffsetDateTime;

use certherd::config::{load_str, Config};
use certherd::metrics::{
    acme_request, AcmeOutcome, CertFacts, CertState, History, Metrics, TargetState,
};
use certherd::notify::{events_from_report, Event, ExpiryAlerts, Notifiers};
use certherd::report::{CertReport, Issuance, Report, TargetAction, TargetReport};
use certherd::verify::Verdict;

const PATH: &str = "/etc/certherd/certherd.yaml";
const TOKEN: &str = "Bearer s3cr3t-hook-token";

fn env(name: &str) -> Option<String> {
    (name == "HOOK_TOKEN").then(|| TOKEN.to_string())
}

/// A configuration with two certificates (`site` with targets `web` and
/// `edge`, `other` with none), and `more` (top-level sections) before them.
fn config(more: &str) -> Config {
    let src = format!(
        "\
acme:
  directory: letsencrypt
{more}
challenges:
  standalone: {{ type: http-01, listen: \"[::]:80\" }}
certificates:
  site:
    domains: [site.example, www.site.example]
    challenge: standalone
    targets:
      - {{ name: web, type: file, fullchain: /etc/ssl/site.pem, verify: {{ connect: \"127.0.0.1:443\" }} }}
      - {{ name: edge, type: exec, command: [push] }}
  other:
    domains: [other.example]
    challenge: standalone
"
    );
    load_str(&src, Path::new(PATH), &env).unwrap_or_else(|e| panic!("{e}"))
}

// ---------------------------------------------------------------------------
// The Prometheus text format, parsed back.

#[derive(Debug, Default)]
struct Exposition {
    /// Family name → type.
    types: BTreeMap<String, String>,
    helps: BTreeMap<String, String>,
    /// `name{labels}` (labels sorted, as written by `key`) → value.
    samples: BTreeMap<String, f64>,
}

fn key(name: &str, labels: &[(&str, &str)]) -> String {
    let mut labels = labels.to_vec();
    labels.sort();
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{name}{{{}}}", inner.join(","))
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Parse the Prometheus text format (0.0.4) strictly: every line must be a
/// HELP, a TYPE or a sample of a family whose TYPE came first; label values
/// are unescaped; no sample appears twice.
fn parse(text: &str) -> Exposition {
    assert!(text.ends_with('\n'), "ends with a newline: {text:?}");
    let mut e = Exposition::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect(line);
            assert!(is_metric_name(name), "{line}");
            assert!(e.helps.insert(name.into(), help.into()).is_none(), "{line}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').expect(line);
            assert!(is_metric_name(name), "{line}");
            assert!(
                matches!(
                    ty,
                    "counter" | "gauge" | "histogram" | "summary" | "untyped"
                ),
                "{line}"
            );
            assert!(e.helps.contains_key(name), "HELP before TYPE: {line}");
            assert!(e.types.insert(name.into(), ty.into()).is_none(), "{line}");
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment: {line}");
        // name{a="x",b="y"} value
        let (series, value) = line.rsplit_once(' ').expect(line);
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
        let (name, labels) = match series.split_once('{') {
            None => (series, Vec::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect(line);
                (name, parse_labels(body, line))
            }
        };
        assert!(is_metric_name(name), "{line}");
        assert!(e.types.contains_key(name), "sample without TYPE: {line}");
        let labels: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert!(
            e.samples.insert(key(name, &labels), value).is_none(),
            "duplicate: {line}"
        );
    }
    e
}

fn parse_labels(body: &str, line: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let (k, after) = rest.split_once("=\"").expect(line);
        assert!(is_metric_name(k), "label name in {line}");
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next().expect(line) {
                (i, '"') => break i,
                (_, '\\') => match chars.next().expect(line).1 {
                    'n' => value.push('\n'),
                    c @ ('\\' | '"') => value.push(c),
                    c => panic!("bad escape \\{c} in {line}"),
                },
                (_, c) => value.push(c),
            }
        };
        out.push((k.to_string(), value));
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
    out
}

fn t(s: OffsetDateTime) -> f64 {
    s.unix_timestamp() as f64
}

/// The metrics of one certificate with everything known, one target stale.
fn sample_metrics() -> Metrics {
    let m = Metrics::new();
    m.record_certificate(
        "site",
        &CertState {
            not_after: Some(datetime!(2027-02-26 15:00 UTC)),
            renew_at: Some(datetime!(2027-01-27 15:00 UTC)),
            ari_window: Some((
                datetime!(2027-01-25 00:00 UTC),
                datetime!(2027-01-27 00:00 UTC),
            )),
            last_renewal: Some(datetime!(2026-11-28 15:00 UTC)),
            consecutive_failures: 2,
        },
    );
    m.record_target(
        "site",
        "web",
        TargetState::Stale,
        Some(datetime!(2026-12-01 00:00 UTC)),
    );
    m.record_target("site", "edge", TargetState::Unverified, None);
    m
}

#[test]
fn rendered_metrics_parse_back_with_the_values_set() {
    let m = sample_metrics();
    acme_request(AcmeOutcome::ServerError);
    let e = parse(&m.render());

    let c = [("certificate", "site")];
    let expect = [
        (
            "certherd_certificate_expiration_timestamp_seconds",
            t(datetime!(2027-02-26 15:00 UTC)),
        ),
        (
            "certherd_certificate_renewal_timestamp_seconds",
            t(datetime!(2027-01-27 15:00 UTC)),
        ),
        (
            "certherd_certificate_ari_window_start_timestamp_seconds",
            t(datetime!(2027-01-25 00:00 UTC)),
        ),
        (
            "certherd_certificate_ari_window_end_timestamp_seconds",
            t(datetime!(2027-01-27 00:00 UTC)),
        ),
        (
            "certherd_certificate_last_renewal_timestamp_seconds",
            t(datetime!(2026-11-28 15:00 UTC)),
        ),
        ("certherd_certificate_consecutive_renewal_failures", 2.0),
    ];
    for (name, value) in expect {
        assert_eq!(e.types[name], "gauge", "{name}");
        assert_eq!(e.samples[&key(name, &c)], value, "{name}");
    }
    for (target, state) in [("web", "stale"), ("edge", "unverified")] {
        for s in ["current", "stale", "unreachable", "unverified"] {
            let k = key(
                "certherd_target_verification_state",
                &[("certificate", "site"), ("target", target), ("state", s)],
            );
            assert_eq!(e.samples[&k], f64::from(u8::from(s == state)), "{k}");
        }
    }
    assert_eq!(
        e.samples[&key(
            "certherd_target_last_verified_timestamp_seconds",
            &[("certificate", "site"), ("target", "web")]
        )],
        t(datetime!(2026-12-01 00:00 UTC))
    );
    // Never verified: no series rather than a made-up time.
    assert!(!e.samples.contains_key(&key(
        "certherd_target_last_verified_timestamp_seconds",
        &[("certificate", "site"), ("target", "edge")]
    )));
    // The counter: `_total` on every line, every outcome present from the start.
    assert_eq!(e.types["certherd_acme_requests_total"], "counter");
    for outcome in AcmeOutcome::ALL {
        assert!(e.samples.contains_key(&key(
            "certherd_acme_requests_total",
            &[("outcome", outcome.as_str())]
        )));
    }
    assert!(
        e.samples[&key(
            "certherd_acme_requests_total",
            &[("outcome", "server_error")]
        )] >= 1.0
    );
    // Every family has HELP text; every name follows the conventions.
    for name in e.types.keys() {
        assert!(name.starts_with("certherd_"), "{name}");
        assert!(!e.helps[name].is_empty(), "{name}");
        if name.contains("timestamp") {
            assert!(name.ends_with("_timestamp_seconds"), "{name}");
        }
    }

    // The OpenMetrics rendering carries the same families and ends with # EOF.
    let om = m.render_openmetrics();
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(om.contains("# UNIT certherd_certificate_expiration_timestamp_seconds seconds\n"));
    assert!(om.contains("# TYPE certherd_acme_requests counter\n"));
}

#[test]
fn metrics_update_from_configuration_history_and_facts() {
    let config = config("");
    let now = datetime!(2027-01-10 00:00 UTC);
    let mut history = History::default();
    let report = Report {
        dry_run: false,
        certificates: vec![CertReport::new(
            &config.certificates[0],
            Some("renewal time reached".into()),
            Issuance::Failed {
                error: "rate limited".into(),
            },
            vec![
                TargetReport {
                    verdict: Some(Verdict::Current {
                        served_sha256: "aa".into(),
                        chain_complete: true,
                    }),
                    ..TargetReport::new(&config.certificates[0].targets[0], TargetAction::Unchanged)
                },
                TargetReport::new(
                    &config.certificates[0].targets[1],
                    TargetAction::Failed {
                        error: "push exited 1".into(),
                    },
                ),
            ],
        )],
    };
    history.record_report(&report, now);
    history.record_report(&report, now);

    // Persisted and read back as it was.
    let dir = tempfile::tempdir().unwrap();
    let path = History::path(dir.path(), "https://acme-v02.api.letsencrypt.org/directory");
    assert!(path.ends_with("ca/acme-v02.api.letsencrypt.org_directory/metrics.json"));
    history.save(&path).unwrap();
    assert_eq!(mode(&path), 0o600);
    let history = History::load(&path);
    assert_eq!(history.certificates["site"].consecutive_failures, 2);

    let m = Metrics::new();
    // A certificate removed from the configuration since: its series go.
    m.record_certificate("gone", &CertState::default());
    m.record_target("site", "removed-target", TargetState::Current, None);
    let facts = [CertFacts {
        name: "site".into(),
        not_before: Some(datetime!(2026-11-28 15:00 UTC)),
        not_after: Some(datetime!(2027-02-26 15:00 UTC)),
        renew_at: Some(datetime!(2027-01-27 15:00 UTC)),
        ari_window: None,
        still_due: true,
    }];
    m.update(&config, &history, &facts, now);
    let e = parse(&m.render());
    let site = [("certificate", "site")];
    assert_eq!(
        e.samples[&key("certherd_certificate_consecutive_renewal_failures", &site)],
        2.0
    );
    // No renewal recorded by certherd: the certificate's notBefore stands in.
    assert_eq!(
        e.samples[&key("certherd_certificate_last_renewal_timestamp_seconds", &site)],
        t(datetime!(2026-11-28 15:00 UTC))
    );
    assert!(!e.samples.contains_key(&key(
        "certherd_certificate_ari_window_start_timestamp_seconds",
        &site
    )));
    // `web` was seen current just now; `edge` failed and was never verified.
    let state = |target: &str, s: &str| {
        e.samples[&key(
            "certherd_target_verification_state",
            &[("certificate", "site"), ("target", target), ("state", s)],
        )]
    };
    assert_eq!(state("web", "current"), 1.0);
    assert_eq!(state("edge", "unverified"), 1.0);
    assert_eq!(
        e.samples[&key(
            "certherd_target_last_verified_timestamp_seconds",
            &[("certificate", "site"), ("target", "web")]
        )],
        t(now)
    );
    // `other` has no certificate: only its failure count (0).
    let other = [("certificate", "other")];
    assert_eq!(
        e.samples[&key("certherd_certificate_consecutive_renewal_failures", &other)],
        0.0
    );
    assert!(!e.samples.contains_key(&key(
        "certherd_certificate_expiration_timestamp_seconds",
        &other
    )));
    let text = m.render();
    assert!(!text.contains("gone"), "{text}");
    assert!(!text.contains("removed-target"), "{text}");
    assert_eq!(
        e.samples["certherd_last_update_timestamp_seconds{}"],
        t(now)
    );
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn textfile_is_written_atomically_with_the_rendered_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("certherd.prom");
    let m = sample_metrics();
    m.write_textfile(&path).unwrap();
    let first = std::fs::read_to_string(&path).unwrap();
    parse(&first);
    assert_eq!(mode(&path), 0o644);
    assert!(first
        .contains("certherd_certificate_consecutive_renewal_failures{certificate=\"site\"} 2\n"));

    // Rewritten whole; nothing but the file is left in the folder
    // (node_exporter reads every *.prom file there).
    m.record_certificate(
        "site",
        &CertState {
            consecutive_failures: 0,
            ..CertState::default()
        },
    );
    m.write_textfile(&path).unwrap();
    let second = std::fs::read_to_string(&path).unwrap();
    assert_eq!(second, m.render());
    assert!(second
        .contains("certherd_certificate_consecutive_renewal_failures{certificate=\"site\"} 0\n"));
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["certherd.prom"]);

    // A folder that does not exist is an error to report, not a panic.
    assert!(m
        .write_textfile(&dir.path().join("missing/certherd.prom"))
        .is_err());
}

#[tokio::test]
async fn metrics_are_served_over_http_and_parse() {
    let m = sample_metrics();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = m
        .serve("127.0.0.1:0".parse().unwrap(), async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    let addr = server.local_addr();
    assert_ne!(addr.port(), 0);
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/metrics");

    let rsp = client.get(&url).send().await.unwrap();
    assert_eq!(rsp.status(), 200);
    assert_eq!(
        rsp.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let e = parse(&rsp.text().await.unwrap());
    assert_eq!(
        e.samples[&key(
            "certherd_certificate_consecutive_renewal_failures",
            &[("certificate", "site")]
        )],
        2.0
    );

    // A value set after the server started shows in the next scrape.
    m.record_certificate(
        "site",
        &CertState {
            consecutive_failures: 5,
            ..CertState::default()
        },
    );
    let e = parse(&client.get(&url).send().await.unwrap().text().await.unwrap());
    assert_eq!(
        e.samples[&key(
            "certherd_certificate_consecutive_renewal_failures",
            &[("certificate", "site")]
        )],
        5.0
    );

    // Prometheus asks for OpenMetrics first.
    let rsp = client
        .get(&url)
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        rsp.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(rsp.text().await.unwrap().ends_with("# EOF\n"));

    let rsp = client.get(format!("http://{addr}/")).send().await.unwrap();
    assert_eq!(rsp.status(), 404);
    let rsp = client.post(&url).send().await.unwrap();
    assert_eq!(rsp.status(), 405);
    assert_eq!(rsp.headers()["allow"], "GET");

    // Shut down: the task ends and the port is closed.
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server.join())
        .await
        .expect("the server stops");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn serving_on_a_port_in_use_is_an_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let err = Metrics::new()
        .serve(taken.local_addr().unwrap(), std::future::pending())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
}

// ---------------------------------------------------------------------------
// Notifications.

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: http::HeaderMap,
    body: serde_json::Value,
}

/// An HTTP receiver on loopback answering every request with `status`.
struct Receiver {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    async fn start(status: u16) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let record = got.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let record = record.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let record = record.clone();
                            async move {
                                let path = req.uri().path().to_string();
                                let headers = req.headers().clone();
                                let bytes = req.into_body().collect().await.unwrap().to_bytes();
                                let body = serde_json::from_slice(&bytes)
                                    .unwrap_or(serde_json::Value::Null);
                                record.lock().unwrap().push(Received {
                                    path,
                                    headers,
                                    body,
                                });
                                hyper::Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::from_static(b"receiver says no")))
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Receiver { addr, got }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn got(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }
}

fn renewed() -> Event {
    Event::Renewed {
        certificate: "site".into(),
        domains: vec!["site.example".into(), "www.site.example".into()],
        serial: "03a1".into(),
        not_after: "2027-02-26T15:00:00Z".into(),
    }
}

fn deploy_failed() -> Event {
    Event::DeployFailed {
        certificate: "site".into(),
        domains: vec!["site.example".into(), "www.site.example".into()],
        target: "edge".into(),
        error: "`push` exited 1: <no route>".into(),
    }
}

#[tokio::test]
async fn webhook_delivers_json_with_its_headers() {
    let rx = Receiver::start(204).await;
    let config = config(&format!(
        "notify:\n  - type: webhook\n    url: {}\n    headers: {{ Authorization: {{ env: HOOK_TOKEN }}, X-Source: certherd }}\n    events: [renewed, deploy_failed]\n",
        rx.url("/hook")
    ));
    let notifiers = Notifiers::new(&config.notify).with_host("host1");
    let expiring = Event::Expiring {
        certificate: "site".into(),
        domains: vec!["site.example".into()],
        not_after: "2027-02-26T15:00:00Z".into(),
        days_left: 3,
    };
    let summary = notifiers
        .send_all(&[renewed(), expiring, deploy_failed()])
        .await;
    assert_eq!((summary.delivered, summary.failed), (2, 0));

    let got = rx.got();
    assert_eq!(got.len(), 2, "expiring is not among its events");
    let first = &got[0];
    assert_eq!(first.path, "/hook");
    assert_eq!(first.headers["authorization"], TOKEN);
    assert_eq!(first.headers["x-source"], "certherd");
    assert_eq!(first.headers["content-type"], "application/json");
    let mut body = first.body.clone();
    let time = body["time"].take();
    assert!(
        OffsetDateTime::parse(
            time.as_str().unwrap(),
            &time::format_description::well_known::Rfc3339
        )
        .is_ok(),
        "{time}"
    );
    assert_eq!(
        body,
        serde_json::json!({
            "event": "renewed",
            "certificate": "site",
            "domains": ["site.example", "www.site.example"],
            "serial": "03a1",
            "not_after": "2027-02-26T15:00:00Z",
            "host": "host1",
            "time": null,
            "message": "certherd on host1: site [site.example, www.site.example] renewed: \
                        serial 03a1, expires 2027-02-26T15:00:00Z",
        })
    );
    assert_eq!(got[1].body["event"], "deploy_failed");
    assert_eq!(got[1].body["target"], "edge");
    assert_eq!(got[1].body["error"], "`push` exited 1: <no route>");
}

#[tokio::test]
async fn slack_format_sends_text() {
    let rx = Receiver::start(200).await;
    let config = config(&format!(
        "notify:\n  - {{ type: webhook, format: slack, url: \"{}\" }}\n",
        rx.url("/services/T0/B0/x")
    ));
    let summary = Notifiers::new(&config.notify)
        .with_host("host1")
        .send_all(&[deploy_failed()])
        .await;
    assert_eq!(summary.delivered, 1);
    assert_eq!(
        rx.got()[0].body,
        serde_json::json!({
            "text": "certherd on host1: site: deployment to target edge FAILED: \
                     `push` exited 1: &lt;no route&gt;"
        })
    );
}

#[tokio::test]
async fn expiring_reaches_only_notifiers_whose_threshold_it_is_under() {
    let chat = Receiver::start(200).await;
    let pager = Receiver::start(200).await;
    let config = config(&format!(
        "notify:\n  - {{ type: webhook, url: \"{}\", expiring_days: 14 }}\n  - {{ type: webhook, url: \"{}\", events: [expiring], expiring_days: 3 }}\n",
        chat.url("/chat"),
        pager.url("/pager"),
    ));
    let notifiers = Notifiers::new(&config.notify);
    assert_eq!(notifiers.expiring_thresholds(), [14, 3]);
    let expiring = |days_left| Event::Expiring {
        certificate: "site".into(),
        domains: vec!["site.example".into()],
        not_after: "2027-02-26T15:00:00Z".into(),
        days_left,
    };
    notifiers.send_all(&[expiring(10)]).await;
    assert_eq!((chat.got().len(), pager.got().len()), (1, 0));
    notifiers.send_all(&[expiring(2)]).await;
    assert_eq!((chat.got().len(), pager.got().len()), (2, 1));
    assert_eq!(pager.got()[0].body["days_left"], 2);
}

/// A receiver that fails is retried, then given up on; the notifiers after
/// it still get their events and `send_all` returns normally.
#[tokio::test]
async fn a_failing_webhook_is_retried_logged_and_not_fatal() {
    let failing = Receiver::start(500).await;
    let bad_request = Receiver::start(400).await;
    let working = Receiver::start(200).await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let config = config(&format!(
        "notify:\n  - {{ type: webhook, url: \"{}\" }}\n  - {{ type: webhook, url: \"{}\" }}\n  - {{ type: webhook, url: \"http://{closed}/x\", timeout: 2s }}\n  - {{ type: webhook, url: \"{}\" }}\n",
        failing.url("/down"),
        bad_request.url("/bad"),
        working.url("/up"),
    ));
    let notifiers = Notifiers::new(&config.notify).with_first_retry(Duration::from_millis(20));
    let start = std::time::Instant::now();
    let summary = notifiers.send_all(&[renewed(), deploy_failed()]).await;
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_eq!((summary.delivered, summary.failed), (2, 6));
    // 3 attempts for each of two events on a 500; no retry on a 400.
    assert_eq!(failing.got().len(), 6);
    assert_eq!(bad_request.got().len(), 2);
    assert_eq!(working.got().len(), 2);
}

#[tokio::test]
async fn exec_notifier_gets_the_event_in_its_environment() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("env.txt");
    let config = config(&format!(
        "notify:\n  - type: exec\n    command: [sh, -c, 'env | grep ^CERTHERD_ | sort >> \"$1\"; echo >> \"$1\"', sh, {}]\n  - type: exec\n    name: broken\n    command: [/nonexistent/page-oncall]\n  - type: exec\n    name: failing\n    command: [sh, -c, 'echo paging failed >&2; exit 3']\n",
        out.display()
    ));
    let notifiers = Notifiers::new(&config.notify).with_host("host1");
    let mismatch = Event::VerifyMismatch {
        certificate: "site".into(),
        domains: vec!["site.example".into()],
        target: "web".into(),
        state: "stale".into(),
        expected_sha256: Some("aa11".into()),
        served_sha256: Some("bb22".into()),
        error: None,
    };
    let summary = notifiers.send_all(&[renewed(), mismatch]).await;
    assert_eq!((summary.delivered, summary.failed), (2, 4));
    let text = std::fs::read_to_string(&out).unwrap();
    let runs: Vec<&str> = text.split("\n\n").filter(|r| !r.is_empty()).collect();
    assert_eq!(runs.len(), 2, "{text}");
    let vars = |run: &str| -> BTreeMap<String, String> {
        run.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let first = vars(runs[0]);
    assert_eq!(first["CERTHERD_EVENT"], "renewed");
    assert_eq!(first["CERTHERD_CERTIFICATE"], "site");
    assert_eq!(first["CERTHERD_DOMAINS"], "site.example www.site.example");
    assert_eq!(first["CERTHERD_SERIAL"], "03a1");
    assert_eq!(first["CERTHERD_NOT_AFTER"], "2027-02-26T15:00:00Z");
    assert_eq!(first["CERTHERD_HOST"], "host1");
    assert_eq!(
        first["CERTHERD_MESSAGE"],
        "certherd on host1: site [site.example, www.site.example] renewed: serial 03a1, \
         expires 2027-02-26T15:00:00Z"
    );
    let json: serde_json::Value = serde_json::from_str(&first["CERTHERD_JSON"]).unwrap();
    assert_eq!(json["event"], "renewed");
    let second = vars(runs[1]);
    assert_eq!(second["CERTHERD_EVENT"], "verify_mismatch");
    assert_eq!(second["CERTHERD_TARGET"], "web");
    assert_eq!(second["CERTHERD_STATE"], "stale");
    assert_eq!(second["CERTHERD_EXPECTED_SHA256"], "aa11");
    assert_eq!(second["CERTHERD_SERVED_SHA256"], "bb22");
    assert!(!second.contains_key("CERTHERD_ERROR"));
}

#[test]
fn events_come_from_what_the_pass_did() {
    let config = config("");
    let site = &config.certificates[0];
    let report = Report {
        dry_run: false,
        certificates: vec![
            CertReport::new(
                site,
                Some("renewal time reached".into()),
                Issuance::Renewed {
                    serial: "03a1".into(),
                    sha256: "cc".into(),
                    not_after: "2027-02-26T15:00:00Z".into(),
                },
                vec![
                    TargetReport {
                        verdict: Some(Verdict::Stale {
                            expected_sha256: "cc".into(),
                            served_sha256: "dd".into(),
                        }),
                        ..TargetReport::new(&site.targets[0], TargetAction::Deployed)
                    },
                    TargetReport::new(
                        &site.targets[1],
                        TargetAction::Failed {
                            error: "`push` exited 1".into(),
                        },
                    ),
                ],
            ),
            CertReport::new(
                &config.certificates[1],
                None,
                Issuance::Failed { error: "no".into() },
                vec![TargetReport {
                    verdict: Some(Verdict::Unreachable {
                        error: "connection refused".into(),
                    }),
                    ..TargetReport::new(&site.targets[0], TargetAction::Checked)
                }],
            ),
        ],
    };
    let events = events_from_report(&report);
    let names: Vec<&str> = events.iter().map(Event::name).collect();
    assert_eq!(
        names,
        [
            "renewed",
            "verify_mismatch",
            "deploy_failed",
            "verify_mismatch"
        ]
    );
    assert_eq!(
        events[1],
        Event::VerifyMismatch {
            certificate: "site".into(),
            domains: vec!["site.example".into(), "www.site.example".into()],
            target: "web".into(),
            state: "stale".into(),
            expected_sha256: Some("cc".into()),
            served_sha256: Some("dd".into()),
            error: None,
        }
    );
    assert_eq!(
        events[3].summary(),
        "other: target web could not be verified (unreachable): connection refused"
    );
    // A dry run tells nobody anything.
    let rehearsal = Report {
        dry_run: true,
        ..report
    };
    assert!(events_from_report(&rehearsal).is_empty());
}

/// The expiry alerts of one-shot runs: kept in the state directory, backed
/// off between runs, cleared once renewed.
#[test]
fn expiry_alerts_persist_between_runs() {
    let config = config("notify:\n  - { type: exec, command: [page] }\n");
    let dir = tempfile::tempdir().unwrap();
    let path = ExpiryAlerts::path(dir.path(), &config.acme.directory);
    let thresholds = Notifiers::new(&config.notify).expiring_thresholds();
    assert_eq!(thresholds, [14]);
    let start = datetime!(2027-01-01 00:00 UTC);
    let facts = |still_due| {
        vec![CertFacts {
            name: "site".into(),
            not_after: Some(start + time::Duration::days(5)),
            still_due,
            ..CertFacts::default()
        }]
    };
    let run = |hours: i64, still_due: bool| -> Vec<Event> {
        let mut alerts = ExpiryAlerts::load(&path);
        let now = start + time::Duration::hours(hours);
        let events = alerts.check_all(&config, &facts(still_due), now, &thresholds);
        alerts.save(&path).unwrap();
        events
    };
    let first = run(0, true);
    assert_eq!(
        first,
        [Event::Expiring {
            certificate: "site".into(),
            domains: vec!["site.example".into(), "www.site.example".into()],
            not_after: "2027-01-06T00:00:00Z".into(),
            days_left: 5,
        }]
    );
    assert_eq!(mode(&path), 0o600);
    assert!(run(0, true).is_empty(), "not again right away");
    assert_eq!(run(1, true).len(), 1, "again after an hour");
    assert!(run(2, true).is_empty(), "then after two more");
    assert_eq!(run(3, true).len(), 1);
    assert!(run(4, false).is_empty(), "renewed");
    assert!(ExpiryAlerts::load(&path).certificates.is_empty());
    assert_eq!(run(5, true).len(), 1, "a new problem alerts at once");
}

// ---------------------------------------------------------------------------
// With real orders: a `renew` pass against Pebble feeding the metrics
// textfile and the notifiers, wired as the commands wire them.

/// One pass of `renew`, then what the command does after it: the facts from
/// the store and the plan, the history, the textfile, the expiry alerts and
/// the notifications. A receiver that answers 500 to everything is retried
/// and given up on; the renewal stands and the other receiver gets the events.
#[tokio::test(flavor = "multi_thread")]
async fn a_real_renewal_feeds_the_textfile_and_survives_a_failing_webhook() {
    use certherd::acme::solver::Solvers;
    use certherd::pipeline::{self, RenewOptions};
    use certherd::store::Store;

    let pebble =
        tokio::task::spawn_blocking(|| support::Pebble::start(support::PebbleOptions::default()))
            .await
            .unwrap();
    let down = Receiver::start(500).await;
    let up = Receiver::start(200).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("out")).unwrap();
    std::fs::create_dir(d.join("prom")).unwrap();
    let textfile = d.join("prom/certherd.prom");
    let src = format!(
        "\
state_dir: {state}
acme:
  directory: {directory}
  trust_roots: [{root}]
metrics:
  textfile: {textfile}
notify:
  - {{ type: webhook, name: down, url: \"{down}\" }}
  - {{ type: webhook, name: up, url: \"{up}\", events: [renewed, deploy_failed] }}
challenges:
  standalone: {{ type: http-01, listen: \"127.0.0.1:{http}\" }}
certificates:
  site:
    domains: [site.certherd.test]
    challenge: standalone
    targets:
      - {{ name: files, type: file, fullchain: {out}/site.pem, key: {out}/site.key }}
      - {{ name: edge, type: exec, command: [sh, -c, \"echo unreachable CDN >&2; exit 1\"] }}
",
        state = d.join("state").display(),
        directory = pebble.directory_url(),
        root = pebble.ca_tls_root_path().display(),
        textfile = textfile.display(),
        down = down.url("/down"),
        up = up.url("/up"),
        http = pebble.http_port(),
        out = d.join("out").display(),
    );
    let config = load_str(&src, &d.join("certherd.yaml"), &env).unwrap_or_else(|e| panic!("{e}"));

    let report = pipeline::renew(&config, &RenewOptions::default(), &Solvers::new())
        .await
        .unwrap();
    let site = &report.certificates[0];
    assert!(
        matches!(site.issuance, Issuance::Renewed { .. }),
        "{}",
        report.human()
    );
    assert!(!report.ok(), "the exec target fails: {}", report.human());

    // What the command does after the pass.
    let now = OffsetDateTime::now_utc();
    let store = Store::open_readonly(&config.state_dir, &config.acme.directory);
    let facts: Vec<CertFacts> = config
        .certificates
        .iter()
        .map(|c| {
            let current = store.current(&c.name).unwrap();
            let info = current.as_ref().map(|b| &b.info);
            let plan = certherd::plan::plan_certificate(c, info, now, false);
            CertFacts {
                name: c.name.clone(),
                not_before: info.map(|i| i.not_before),
                not_after: info.map(|i| i.not_after),
                renew_at: plan.renew_at,
                ari_window: None,
                still_due: plan.due.is_some(),
            }
        })
        .collect();
    let history_path = History::path(&config.state_dir, &config.acme.directory);
    let mut history = History::load(&history_path);
    history.record_report(&report, now);
    history.retain(&config);
    history.save(&history_path).unwrap();
    let metrics = Metrics::new();
    metrics.update(&config, &history, &facts, now);
    metrics
        .write_textfile(config.metrics.as_ref().unwrap().textfile.as_ref().unwrap())
        .unwrap();
    let notifiers = Notifiers::new(&config.notify).with_first_retry(Duration::from_millis(20));
    let alerts_path = ExpiryAlerts::path(&config.state_dir, &config.acme.directory);
    let mut alerts = ExpiryAlerts::load(&alerts_path);
    let mut events = events_from_report(&report);
    events.extend(alerts.check_all(&config, &facts, now, &notifiers.expiring_thresholds()));
    alerts.save(&alerts_path).unwrap();
    let summary = notifiers.send_all(&events).await;

    // The textfile.
    let e = parse(&std::fs::read_to_string(&textfile).unwrap());
    let c = [("certificate", "site")];
    assert_eq!(
        e.samples[&key("certherd_certificate_expiration_timestamp_seconds", &c)],
        t(facts[0].not_after.unwrap())
    );
    assert_eq!(
        e.samples[&key("certherd_certificate_renewal_timestamp_seconds", &c)],
        t(facts[0].renew_at.unwrap())
    );
    assert_eq!(
        e.samples[&key("certherd_certificate_last_renewal_timestamp_seconds", &c)],
        t(now)
    );
    assert_eq!(
        e.samples[&key("certherd_certificate_consecutive_renewal_failures", &c)],
        0.0
    );
    let state = |target: &str, s: &str| {
        e.samples[&key(
            "certherd_target_verification_state",
            &[("certificate", "site"), ("target", target), ("state", s)],
        )]
    };
    assert_eq!(state("files", "unverified"), 1.0);
    assert_eq!(state("edge", "unverified"), 1.0);
    assert!(
        e.samples[&key("certherd_acme_requests_total", &[("outcome", "success")])] >= 5.0,
        "directory, nonce, account, order, authorization, challenge, finalize, certificate"
    );

    // The notifications: renewed + deploy_failed to both; the one that
    // answers 500 tried three times each, then given up on.
    assert_eq!(
        events.iter().map(Event::name).collect::<Vec<_>>(),
        ["renewed", "deploy_failed"]
    );
    assert_eq!((summary.delivered, summary.failed), (2, 2));
    assert_eq!(down.got().len(), 6);
    let got = up.got();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].body["event"], "renewed");
    assert_eq!(got[0].body["certificate"], "site");
    assert_eq!(got[1].body["event"], "deploy_failed");
    assert_eq!(got[1].body["target"], "edge");
    assert!(
        got[1].body["error"]
            .as_str()
            .unwrap()
            .contains("unreachable CDN"),
        "{}",
        got[1].body
    );
    // Nothing is expiring: no alert state.
    assert!(ExpiryAlerts::load(&alerts_path).certificates.is_empty());
    drop(store);
    tokio::task::spawn_blocking(move || drop(pebble))
        .await
        .unwrap();
}

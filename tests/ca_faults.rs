//! Faults in the CA path, end to end against a real Pebble behind a
//! fault-injecting proxy ([`support::faultproxy`]): transient faults are
//! retried within bounds and the renewal succeeds; persistent ones fail
//! the renewal within bounded time and attempts, the report names what the
//! CA said, and the previous certificate stays current everywhere.

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hyper::Method;
use support::faultproxy::{gaps, most_within, Fault, FaultProxy, Seen, When};
use support::run::{stored_sha256, Run, Setup};
use support::{sha256_tree, Pebble, PebbleOptions};

/// A CA with the proxy in front, and a configuration for one certificate
/// (or `certs` of them) with a file target each.
struct Env {
    proxy: FaultProxy,
    setup: Setup,
    // Dropped last: the proxy forwards to it.
    _pebble: Pebble,
}

impl Env {
    fn start(opts: PebbleOptions, certs: usize) -> Env {
        let pebble = Pebble::start(opts);
        let proxy = FaultProxy::start(&pebble);
        let setup = Setup::new();
        let mut yaml = format!(
            "state_dir: {state}\nacme:\n  directory: {dir}\n  contact: [ops@certherd.test]\n  trust_roots: [{root}]\nchallenges:\n  standalone:\n    type: http-01\n    listen: \"127.0.0.1:{http}\"\ncertificates:\n",
            state = setup.state_dir().display(),
            dir = proxy.directory_url(),
            root = proxy.tls_root_path().display(),
            http = pebble.http_port(),
        );
        for i in 0..certs {
            let name = if i == 0 {
                "site".to_string()
            } else {
                format!("site{i}")
            };
            let out = setup.dir.path().join("out").join(&name);
            std::fs::create_dir_all(&out).unwrap();
            yaml.push_str(&format!(
                "  {name}:\n    domains: [{name}.certherd.test]\n    challenge: standalone\n    targets:\n      - name: files\n        type: file\n        fullchain: {}/fullchain.pem\n        key: {}/privkey.pem\n",
                out.display(),
                out.display()
            ));
        }
        setup.write_config(&yaml);
        Env {
            proxy,
            setup,
            _pebble: pebble,
        }
    }

    fn out_dir(&self) -> PathBuf {
        self.setup.dir.path().join("out")
    }

    /// `certherd <args>` and how long it took.
    fn run(&self, args: &[&str]) -> (Run, Duration) {
        let start = Instant::now();
        let run = self.setup.run(args);
        (run, start.elapsed())
    }

    fn new_orders(&self) -> Vec<Seen> {
        self.proxy
            .requests_to(Method::POST, &self.proxy.path("newOrder"))
    }
}

fn statuses(seen: &[Seen]) -> Vec<Option<u16>> {
    seen.iter().map(|s| s.status).collect()
}

fn faults(seen: &[Seen]) -> Vec<Option<&str>> {
    seen.iter().map(|s| s.fault.as_deref()).collect()
}

/// The report line of the certificate `site`.
fn site_line(run: &Run) -> &str {
    run.stdout
        .lines()
        .find(|l| l.starts_with("site [site.certherd.test]: "))
        .unwrap_or_else(|| panic!("no line for site:\n{}", run.stdout))
}

/// A first issuance with `fault` applied, as `when` says, to the requests
/// with `method` to `path`: it succeeds, and the certificate is stored and
/// deployed.
fn issue_through(
    env: &Env,
    method: Method,
    path: &str,
    when: When,
    fault: Fault,
) -> (Run, Duration) {
    env.proxy.inject(method, path, when, fault);
    // `-v`: the retries are logged at debug level.
    let (run, took) = env.run(&["-v", "renew"]);
    run.assert_code(0);
    let line = site_line(&run);
    assert!(
        line.starts_with("site [site.certherd.test]: renewed (no certificate yet): serial "),
        "{line}"
    );
    let sha = stored_sha256(&env.setup);
    let deployed = std::fs::read_to_string(env.out_dir().join("site/fullchain.pem")).unwrap();
    assert_eq!(support::leaf_sha256_of_pem(&deployed), sha);
    (run, took)
}

#[test]
fn one_503_with_retry_after_is_waited_out_then_the_order_goes_through() {
    let env = Env::start(PebbleOptions::default(), 1);
    let new_order = env.proxy.path("newOrder");
    issue_through(
        &env,
        Method::POST,
        &new_order,
        When::Nth(1),
        Fault::status_retry_after(503, 1),
    );
    let seen = env.new_orders();
    assert_eq!(statuses(&seen), [Some(503), Some(201)]);
    let gap = gaps(&seen)[0];
    assert!(
        gap >= Duration::from_secs(1),
        "asked again after {gap:?}, before the Retry-After of 1s"
    );
    assert!(gap < Duration::from_secs(5), "waited {gap:?}");
}

#[test]
fn one_500_is_retried_after_a_short_backoff() {
    let env = Env::start(PebbleOptions::default(), 1);
    issue_through(
        &env,
        Method::POST,
        "/finalize-order/",
        When::Nth(1),
        Fault::status(500),
    );
    let seen = env.proxy.requests_to(Method::POST, "/finalize-order/");
    assert_eq!(statuses(&seen), [Some(500), Some(200)]);
    let gap = gaps(&seen)[0];
    // The first backoff step of the retry policy (250 ms), with a margin.
    assert!(gap >= Duration::from_millis(200), "retried after {gap:?}");
    assert!(gap < Duration::from_secs(5), "retried after {gap:?}");
}

#[test]
fn one_reset_connection_is_retried() {
    let env = Env::start(PebbleOptions::default(), 1);
    let new_order = env.proxy.path("newOrder");
    let (run, _) = issue_through(&env, Method::POST, &new_order, When::Nth(1), Fault::Reset);
    // A reset, not an orderly close.
    assert!(
        run.stderr
            .contains("Connection reset by peer (os error 104)); retrying"),
        "{}",
        run.stderr
    );
    let seen = env.new_orders();
    assert_eq!(faults(&seen), [Some("reset"), None]);
    assert_eq!(statuses(&seen), [None, Some(201)]);
}

#[test]
fn one_truncated_body_is_retried() {
    let env = Env::start(PebbleOptions::default(), 1);
    // The certificate download: Pebble answered it, half of it arrived.
    let (run, _) = issue_through(&env, Method::POST, "/certZ/", When::Nth(1), Fault::Truncate);
    // The head arrived, the body did not: an error reading the body.
    assert!(
        run.stderr
            .contains("ACME request failed (error decoding response body for url ("),
        "{}",
        run.stderr
    );
    let seen = env.proxy.requests_to(Method::POST, "/certZ/");
    // The repeat carries the nonce Pebble already took (badNonce, 400);
    // instant-acme signs again with a fresh one.
    assert_eq!(faults(&seen), [Some("truncated"), None, None]);
    assert_eq!(statuses(&seen), [Some(200), Some(400), Some(200)]);
}

#[test]
fn a_slow_answer_within_the_timeout_is_waited_for_not_repeated() {
    let env = Env::start(PebbleOptions::default(), 1);
    let new_order = env.proxy.path("newOrder");
    let (_, took) = issue_through(
        &env,
        Method::POST,
        &new_order,
        When::Nth(1),
        Fault::Delay(Duration::from_secs(3)),
    );
    assert_eq!(statuses(&env.new_orders()), [Some(201)]);
    assert!(took >= Duration::from_secs(3), "{took:?}");
}

/// A first certificate, issued and deployed without faults; returns its
/// SHA-256 and the target files as they are.
fn issued(env: &Env) -> (String, BTreeMap<PathBuf, String>) {
    env.run(&["renew"]).0.assert_code(0);
    env.proxy.forget_requests();
    (stored_sha256(&env.setup), sha256_tree(&env.out_dir()))
}

/// After a failed `renew --force`: the previous certificate is still the
/// current one, and the target's files still hold it.
fn assert_previous_kept(env: &Env, sha: &str, files: &BTreeMap<PathBuf, String>) {
    assert_eq!(stored_sha256(&env.setup), sha);
    assert_eq!(&sha256_tree(&env.out_dir()), files, "target files changed");
    let status = support::run::status_json(&env.setup, &["--offline"]);
    assert_eq!(status["certificates"][0]["targets"][0]["state"], "current");
}

#[test]
fn persistent_503_fails_after_bounded_attempts_and_keeps_the_previous_certificate() {
    let env = Env::start(PebbleOptions::default(), 1);
    let (sha, files) = issued(&env);
    let new_order = env.proxy.path("newOrder");
    env.proxy
        .inject(Method::POST, &new_order, When::Always, Fault::status(503));
    let (run, took) = env.run(&["renew", "--force"]);
    run.assert_code(1);
    assert_eq!(
        site_line(&run),
        format!(
            "site [site.certherd.test]: renewal FAILED: creating the order failed: \
             {}{new_order}: HTTP 503 Service Unavailable (after 4 attempts)",
            env.proxy
                .directory_url()
                .trim_end_matches(&env.proxy.path("directory"))
        )
    );
    // `--force` asked for a new certificate; none came, so the target is
    // only checked, not written (or reloaded) again with the old one.
    assert!(
        run.stdout
            .contains("  files (file): already held the current certificate"),
        "{}",
        run.stdout
    );
    let seen = env.new_orders();
    assert_eq!(statuses(&seen), [Some(503); 4]);
    // Backoff, not hammering: 250 ms, 500 ms, 1 s apart.
    let g = gaps(&seen);
    for (gap, least) in g.iter().zip([200, 450, 950]) {
        assert!(*gap >= Duration::from_millis(least), "gaps {g:?}");
    }
    assert!(
        most_within(&seen, Duration::from_secs(1)) <= 3,
        "gaps {g:?}"
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert_previous_kept(&env, &sha, &files);
}

#[test]
fn persistent_503_on_the_directory_names_it() {
    let env = Env::start(PebbleOptions::default(), 1);
    let (sha, files) = issued(&env);
    env.proxy.inject(
        Method::GET,
        &env.proxy.path("directory"),
        When::Always,
        Fault::status(503),
    );
    let (run, _) = env.run(&["renew", "--force"]);
    run.assert_code(1);
    let dir = env.proxy.directory_url();
    assert_eq!(
        site_line(&run),
        format!(
            "site [site.certherd.test]: renewal FAILED: ACME account at {dir}: \
             {dir}: HTTP 503 Service Unavailable (after 4 attempts)"
        )
    );
    assert_eq!(
        env.proxy
            .requests_to(Method::GET, &env.proxy.path("directory"))
            .len(),
        4
    );
    assert_previous_kept(&env, &sha, &files);
}

const RATE_LIMIT: &str =
    "too many certificates (5) already issued for this exact set of identifiers in the last 168h0m0s";

#[test]
fn persistent_rate_limit_is_reported_with_the_cas_problem() {
    let env = Env::start(PebbleOptions::default(), 1);
    let (sha, files) = issued(&env);
    let new_order = env.proxy.path("newOrder");
    env.proxy.inject(
        Method::POST,
        &new_order,
        When::Always,
        Fault::rate_limited(RATE_LIMIT, Some(1)),
    );
    let (run, took) = env.run(&["renew", "--force"]);
    run.assert_code(1);
    let line = site_line(&run);
    assert!(
        line.ends_with(&format!(
            "{new_order}: HTTP 429 Too Many Requests: {RATE_LIMIT} \
             (urn:ietf:params:acme:error:rateLimited) (after 4 attempts)"
        )),
        "{line}"
    );
    let seen = env.new_orders();
    assert_eq!(statuses(&seen), [Some(429); 4]);
    let g = gaps(&seen);
    assert!(
        g.iter().all(|gap| *gap >= Duration::from_secs(1)),
        "asked again before the Retry-After of 1s: {g:?}"
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert_previous_kept(&env, &sha, &files);
}

#[test]
fn a_retry_after_beyond_the_cap_is_not_waited_for() {
    let env = Env::start(PebbleOptions::default(), 1);
    let (sha, files) = issued(&env);
    let new_order = env.proxy.path("newOrder");
    env.proxy.inject(
        Method::POST,
        &new_order,
        When::Always,
        Fault::rate_limited(RATE_LIMIT, Some(3600)),
    );
    let (run, took) = env.run(&["renew", "--force"]);
    run.assert_code(1);
    let line = site_line(&run);
    assert!(
        line.ends_with(&format!(
            "{new_order}: HTTP 429 Too Many Requests: {RATE_LIMIT} \
             (urn:ietf:params:acme:error:rateLimited); the CA asks to retry after 3600s, \
             longer than the 60s certherd waits (after 1 attempt)"
        )),
        "{line}"
    );
    assert_eq!(env.new_orders().len(), 1, "asked again despite Retry-After");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_previous_kept(&env, &sha, &files);
}

#[test]
fn a_rate_limited_ca_is_not_hammered_by_concurrent_orders() {
    let env = Env::start(PebbleOptions::default(), 5);
    env.run(&["renew"]).0.assert_code(0);
    env.proxy.forget_requests();
    let new_order = env.proxy.path("newOrder");
    env.proxy.inject(
        Method::POST,
        &new_order,
        When::Always,
        Fault::rate_limited(RATE_LIMIT, Some(1)),
    );
    let (run, took) = env.run(&["renew", "--force"]);
    run.assert_code(1);
    let failed = run
        .stdout
        .lines()
        .filter(|l| {
            l.contains("renewal FAILED: creating the order failed: ") && l.contains(RATE_LIMIT)
        })
        .count();
    assert_eq!(failed, 5, "{}", run.stdout);
    let seen = env.new_orders();
    assert_eq!(seen.len(), 5 * 4, "four attempts per order");
    // No more than one request per order within any second.
    let most = most_within(&seen, Duration::from_secs(1));
    assert!(most <= 5, "{most} newOrder requests within one second");
    assert!(took < Duration::from_secs(20), "took {took:?}");
}

#[test]
fn half_of_all_nonces_rejected_never_fails_an_issuance() {
    let env = Env::start(
        PebbleOptions {
            nonce_reject: 50,
            ..PebbleOptions::default()
        },
        5,
    );
    let mut shas = Vec::new();
    for args in [&["renew"][..], &["renew", "--force"], &["renew", "--force"]] {
        let (run, _) = env.run(args);
        run.assert_code(0);
        let status = support::run::status_json(&env.setup, &["--offline"]);
        for c in status["certificates"].as_array().unwrap() {
            shas.push(c["sha256"].as_str().unwrap().to_string());
        }
    }
    shas.sort();
    shas.dedup();
    assert_eq!(shas.len(), 15, "every run renewed every certificate");
    let rejected = env
        .proxy
        .requests()
        .iter()
        .filter(|s| s.status == Some(400))
        .count();
    assert!(
        rejected > 0,
        "Pebble rejected no nonce: the test proves nothing"
    );
}

/// Pebble offers no ARI: a pass finds that out from the directory and
/// remembers it for a day, so a pass with nothing due does not contact
/// the CA at all.
#[test]
fn a_pass_with_nothing_due_does_not_contact_a_ca_without_ari() {
    let env = Env::start(PebbleOptions::default(), 2);
    env.run(&["renew"]).0.assert_code(0);
    // The first pass with certificates to ask about reads the directory.
    env.proxy.forget_requests();
    let (first, _) = env.run(&["renew"]);
    first.assert_code(0);
    assert_eq!(
        env.proxy.requests().len(),
        1,
        "one directory read: {:?}",
        env.proxy.requests()
    );
    let memo = std::fs::read_dir(env.setup.state_dir().join("ca"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join("ari-unsupported.json");
    assert!(memo.exists(), "the first pass remembers the CA has no ARI");
    env.proxy.forget_requests();
    let (second, _) = env.run(&["renew"]);
    second.assert_code(0);
    assert!(
        second.stdout.contains("site [site.certherd.test]: not due"),
        "{}",
        second.stdout
    );
    assert_eq!(env.proxy.requests().len(), 0, "{:?}", env.proxy.requests());

    // `--force` orders (and so talks to the CA) whatever the memo says.
    let (forced, _) = env.run(&["renew", "--force", "--cert", "site"]);
    forced.assert_code(0);
    assert!(!env.new_orders().is_empty());
}

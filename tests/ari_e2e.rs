//! ARI (RFC 9773) and ACME profiles, through the certherd binary against
//! Pebble behind the ARI proxy of `support::ari` (Debian's Pebble 2.4 has
//! neither).

mod support;

use std::path::PathBuf;

use base64::Engine;
use support::ari::{AriProxy, RenewalInfoAnswer};
use support::run::{config, status_json, stored_sha256, web_deployed_line, Setup, SITE};
use support::{Nginx, Pebble, PebbleOptions};
use time::OffsetDateTime;

struct Env {
    // Dropped in this order: proxy, then Pebble.
    proxy: AriProxy,
    pebble: Pebble,
    nginx: Nginx,
    setup: Setup,
}

impl Env {
    fn start() -> Env {
        let pebble = Pebble::start(PebbleOptions::default());
        let proxy = AriProxy::start(&pebble);
        Env {
            proxy,
            pebble,
            nginx: Nginx::start(),
            setup: Setup::new(),
        }
    }

    /// The usual configuration, with the proxy as the CA; `top` is added
    /// at the top level (e.g. a `renewal:` section).
    fn config(&self, top: &str) -> String {
        let yaml = config(&self.pebble, &self.nginx, &self.setup, "")
            .replace(&self.pebble.directory_url(), &self.proxy.directory_url())
            .replace(
                &self.pebble.ca_tls_root_path().display().to_string(),
                &self.proxy.tls_root_path().display().to_string(),
            );
        yaml.replacen("challenges:\n", &format!("{top}challenges:\n"), 1)
    }

    fn write_config(&self, top: &str) {
        self.setup.write_config(&self.config(top));
    }

    fn cert_dir(&self) -> PathBuf {
        self.setup
            .state_dir()
            .join("ca")
            .join(certherd::store::namespace(&self.proxy.directory_url()))
            .join("certs/site")
    }

    fn ari_json_path(&self) -> PathBuf {
        self.cert_dir().join("ari.json")
    }

    fn ari_json(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.ari_json_path()).expect("ari.json");
        serde_json::from_str(&text).expect("ari.json is JSON")
    }

    fn current_leaf_pem(&self) -> String {
        std::fs::read_to_string(self.cert_dir().join("current/cert.pem")).expect("current leaf")
    }
}

/// The certificate's ARI identifier (RFC 9773 §4.1), computed here without
/// certherd: base64url of the AKI keyIdentifier, ".", base64url of the
/// serial's DER bytes.
fn cert_id_of(pem: &str) -> String {
    let der = ::pem::parse(pem).expect("PEM").into_contents();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("certificate");
    let aki = cert
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })
        .expect("Pebble's certificates carry an AKI");
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}",
        b64.encode(aki),
        b64.encode(cert.tbs_certificate.raw_serial())
    )
}

fn rfc3339(t: OffsetDateTime) -> String {
    certherd::cert::rfc3339(t)
}

fn parse_time(s: &serde_json::Value) -> OffsetDateTime {
    OffsetDateTime::parse(
        s.as_str().expect("a time"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("RFC 3339")
}

/// A window from `start` to `end` hours from now, whole seconds.
fn window(start: i64, end: i64, retry_after: Option<u64>) -> (RenewalInfoAnswer, String, String) {
    let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    let (s, e) = (
        now + time::Duration::hours(start),
        now + time::Duration::hours(end),
    );
    let answer = RenewalInfoAnswer::Window {
        start: s,
        end: e,
        retry_after,
        explanation_url: Some("https://ca.test/why".into()),
    };
    (answer, rfc3339(s), rfc3339(e))
}

#[test]
fn a_window_in_the_future_places_no_order_and_status_shows_it() {
    let env = Env::start();
    env.write_config("");
    env.setup.run(&["renew"]).assert_code(0);
    assert_eq!(env.proxy.new_orders().len(), 1);
    // No certificate yet, nothing to ask about.
    assert!(env.proxy.renewal_info_requests().is_empty());
    let id = cert_id_of(&env.current_leaf_pem());

    let (answer, start, end) = window(24 * 10, 24 * 11, Some(3600));
    env.proxy.answer_all(answer);
    let run = env.setup.run(&["renew"]);
    run.assert_code(0);
    assert!(
        run.stdout
            .contains(&format!("site [{SITE}, www.{SITE}]: not due")),
        "{}",
        run.stdout
    );
    assert_eq!(env.proxy.new_orders().len(), 1, "no order placed");
    assert_eq!(env.proxy.renewal_info_requests(), vec![id.clone()]);

    let status = status_json(&env.setup, &["--offline"]);
    let c = &status["certificates"][0];
    assert_eq!(c["due"], false);
    assert_eq!(c["due_reason"], serde_json::Value::Null);
    let ari = &c["ari"];
    assert_eq!(ari["window_start"], start.as_str());
    assert_eq!(ari["window_end"], end.as_str());
    assert_eq!(ari["explanation_url"], "https://ca.test/why");
    let chosen = parse_time(&ari["renew_at"]);
    assert!(
        parse_time(&ari["window_start"]) <= chosen && chosen < parse_time(&ari["window_end"]),
        "{ari}"
    );
    // The CA's moment comes long before the threshold: it is the renewal time.
    assert_eq!(c["renew_at"], ari["renew_at"]);
    assert_eq!(
        parse_time(&ari["next_fetch"]) - parse_time(&ari["fetched_at"]),
        time::Duration::hours(1)
    );
    // The record belongs to the current certificate.
    let record = env.ari_json();
    assert_eq!(record["sha256"], stored_sha256(&env.setup).as_str());
    assert_eq!(record["cert_id"], id.as_str());

    let human = env.setup.run(&["status", "--offline"]);
    human.assert_code(0);
    assert!(
        human.stdout.contains(&format!(
            "renew at {} (CA renewal window {start} to {end})\n",
            ari["renew_at"].as_str().unwrap()
        )),
        "{}",
        human.stdout
    );
}

#[test]
fn a_window_in_the_past_renews_deploys_and_verifies_at_once_with_replaces() {
    let env = Env::start();
    env.write_config("");
    env.setup.run(&["renew"]).assert_code(0);
    let old_sha = stored_sha256(&env.setup);
    let old_id = cert_id_of(&env.current_leaf_pem());
    let (answer, start, end) = window(-48, -24, Some(3600));
    env.proxy.answer_for(&old_id, answer);
    let reason = format!("the CA asks for renewal now (ARI window {start} to {end} has passed)");

    // A rehearsal sees the same reason, writes nothing, and does not
    // claim to replace the certificate.
    let dry = env.setup.run(&["renew", "--dry-run"]);
    dry.assert_code(0);
    assert!(
        dry.stdout.contains(&format!("due: {reason}; test order")),
        "{}",
        dry.stdout
    );
    assert!(!env.ari_json_path().exists(), "a dry run stores nothing");
    let orders = env.proxy.new_orders();
    assert_eq!(orders.len(), 2);
    assert_eq!(orders[1].get("replaces"), None, "{}", orders[1]);
    assert_eq!(env.proxy.renewal_info_requests(), vec![old_id.clone()]);
    assert_eq!(stored_sha256(&env.setup), old_sha);

    let run = env.setup.run(&["renew"]);
    run.assert_code(0);
    assert!(
        run.stdout.contains(&format!(
            "site [{SITE}, www.{SITE}]: renewed ({reason}): serial"
        )),
        "{}",
        run.stdout
    );
    let new_sha = stored_sha256(&env.setup);
    assert_ne!(new_sha, old_sha);
    assert!(
        run.stdout
            .contains(&web_deployed_line(&env.nginx, &new_sha)),
        "{}",
        run.stdout
    );
    assert_eq!(env.nginx.served_sha256().unwrap(), new_sha);
    let orders = env.proxy.new_orders();
    assert_eq!(orders.len(), 3);
    assert_eq!(orders[2]["replaces"], old_id.as_str());
    assert_eq!(
        orders[2]["identifiers"], orders[0]["identifiers"],
        "the same names"
    );

    // The stored window is the old certificate's: the new one has none yet.
    assert_eq!(env.ari_json()["sha256"], old_sha.as_str());
    let status = status_json(&env.setup, &["--offline"]);
    let c = &status["certificates"][0];
    assert_eq!(c["due"], false);
    assert_eq!(c["ari"], serde_json::Value::Null);
}

#[test]
fn retry_after_is_respected_and_clamped() {
    let env = Env::start();
    env.write_config("");
    env.setup.run(&["renew"]).assert_code(0);
    let (answer, _, _) = window(24 * 10, 24 * 11, Some(3600));
    env.proxy.answer_all(answer);

    env.setup.run(&["renew"]).assert_code(0);
    assert_eq!(env.proxy.renewal_info_requests().len(), 1);
    let first = env.ari_json();
    assert_eq!(
        parse_time(&first["next_fetch"]) - parse_time(&first["fetched_at"]),
        time::Duration::hours(1)
    );

    // Within the hour: the stored window is used, the CA is not asked.
    env.setup.run(&["renew"]).assert_code(0);
    assert_eq!(env.proxy.renewal_info_requests().len(), 1);
    env.setup.run(&["status"]).assert_code(0);
    assert_eq!(
        env.proxy.renewal_info_requests().len(),
        1,
        "status fetches nothing"
    );

    // Once the time to ask again has passed, it asks again; the window is
    // unchanged, so is the moment chosen in it. A Retry-After of one
    // second is taken as one minute.
    let mut record = first.clone();
    record["next_fetch"] = "2000-01-01T00:00:00Z".into();
    std::fs::write(env.ari_json_path(), record.to_string()).unwrap();
    env.proxy.answer_all(RenewalInfoAnswer::Window {
        start: parse_time(&first["window_start"]),
        end: parse_time(&first["window_end"]),
        retry_after: Some(1),
        explanation_url: None,
    });
    env.setup.run(&["renew"]).assert_code(0);
    assert_eq!(env.proxy.renewal_info_requests().len(), 2);
    let second = env.ari_json();
    assert_eq!(second["renew_at"], first["renew_at"]);
    assert_eq!(
        parse_time(&second["next_fetch"]) - parse_time(&second["fetched_at"]),
        time::Duration::minutes(1)
    );
}

#[test]
fn the_order_carries_the_configured_profile() {
    let env = Env::start();
    env.proxy
        .set_profiles(&[("classic", "the usual 90 days"), ("shortlived", "six days")]);
    let yaml = env.config("").replacen(
        "  contact: [ops@certherd.test]\n",
        "  contact: [ops@certherd.test]\n  profile: shortlived\n",
        1,
    );
    env.setup.write_config(&yaml);
    env.setup.run(&["renew"]).assert_code(0);
    let orders = env.proxy.new_orders();
    assert_eq!(orders.len(), 1);
    assert_eq!(orders[0]["profile"], "shortlived");
    assert_eq!(
        env.nginx.served_sha256().unwrap(),
        stored_sha256(&env.setup)
    );
}

#[test]
fn a_failing_ari_fetch_leaves_the_threshold_in_charge() {
    let env = Env::start();
    env.write_config("");
    env.setup.run(&["renew"]).assert_code(0);
    let old_sha = stored_sha256(&env.setup);
    env.proxy.answer_all(RenewalInfoAnswer::Status(500));

    // Not due by the threshold: nothing happens, and the failure is logged.
    let quiet = env.setup.run(&["renew"]);
    quiet.assert_code(0);
    assert!(
        quiet.stderr.contains("ARI fetch failed"),
        "{}",
        quiet.stderr
    );
    assert!(quiet.stderr.contains("HTTP 500"), "{}", quiet.stderr);
    assert!(!env.ari_json_path().exists());
    assert_eq!(env.proxy.new_orders().len(), 1);

    // Due by the threshold: renewed all the same.
    env.write_config("renewal:\n  before_expiry: 36500d\n");
    let run = env.setup.run(&["renew"]);
    run.assert_code(0);
    assert!(run.stderr.contains("ARI fetch failed"), "{}", run.stderr);
    assert!(
        run.stdout.contains(&format!(
            "site [{SITE}, www.{SITE}]: renewed (renewal time "
        )),
        "{}",
        run.stdout
    );
    let new_sha = stored_sha256(&env.setup);
    assert_ne!(new_sha, old_sha);
    assert_eq!(env.nginx.served_sha256().unwrap(), new_sha);
}

#[test]
fn ari_false_asks_nothing_and_replaces_nothing() {
    let env = Env::start();
    env.write_config("renewal:\n  ari: false\n");
    env.setup.run(&["renew"]).assert_code(0);
    let (answer, _, _) = window(-48, -24, Some(3600));
    env.proxy.answer_all(answer);

    let run = env.setup.run(&["renew"]);
    run.assert_code(0);
    assert!(run.stdout.contains("not due"), "{}", run.stdout);
    env.setup.run(&["renew", "--force"]).assert_code(0);
    assert!(env.proxy.renewal_info_requests().is_empty());
    let orders = env.proxy.new_orders();
    assert_eq!(orders.len(), 2);
    assert_eq!(orders[1].get("replaces"), None, "{}", orders[1]);
    assert!(!env.ari_json_path().exists());
    let status = status_json(&env.setup, &["--offline"]);
    assert_eq!(status["certificates"][0]["ari"], serde_json::Value::Null);
}

#[test]
fn a_refused_replaces_is_ordered_again_without_it() {
    let env = Env::start();
    env.write_config("");
    env.setup.run(&["renew"]).assert_code(0);
    let old_id = cert_id_of(&env.current_leaf_pem());
    let (answer, _, _) = window(-48, -24, None);
    env.proxy.answer_all(answer);
    env.proxy.set_reject_replaces(true);

    let run = env.setup.run(&["renew"]);
    run.assert_code(0);
    assert!(
        run.stdout.contains("renewed (the CA asks for renewal now"),
        "{}",
        run.stdout
    );
    assert!(
        run.stderr
            .contains("the CA did not accept `replaces`; ordering again without it"),
        "{}",
        run.stderr
    );
    let orders = env.proxy.new_orders();
    assert_eq!(orders.len(), 3);
    assert_eq!(orders[1]["replaces"], old_id.as_str());
    assert_eq!(orders[2].get("replaces"), None, "{}", orders[2]);
    assert_eq!(
        env.nginx.served_sha256().unwrap(),
        stored_sha256(&env.setup)
    );
}

#[test]
fn a_ca_without_ari_gets_neither_fetches_nor_replaces() {
    let env = Env::start();
    env.proxy.set_offer_ari(false);
    env.write_config("");
    env.setup.run(&["renew"]).assert_code(0);
    let (answer, _, _) = window(-48, -24, Some(3600));
    env.proxy.answer_all(answer);

    let run = env.setup.run(&["renew"]);
    run.assert_code(0);
    assert!(run.stdout.contains("not due"), "{}", run.stdout);
    assert!(!run.stderr.contains("ARI fetch failed"), "{}", run.stderr);
    env.setup.run(&["renew", "--force"]).assert_code(0);
    assert!(env.proxy.renewal_info_requests().is_empty());
    let orders = env.proxy.new_orders();
    assert_eq!(orders.len(), 2);
    assert_eq!(orders[1].get("replaces"), None, "{}", orders[1]);
    assert!(!env.ari_json_path().exists());
}

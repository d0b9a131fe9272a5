//! The dns-01 `exec` hooks in `examples/dns-hooks/powerdns/`, run the way
//! certherd runs them (argv, no shell, `CERTHERD_DNS_*` in the environment)
//! against a real PowerDNS Authoritative server started per test.

mod support;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

use support::powerdns::{PowerDns, ZONE};
use support::process::run_with_timeout;
use support::{free_port, ScratchDir};

const FQDN: &str = "_acme-challenge.example.test.";
/// Key authorization digests as a CA would ask for them (base64url SHA-256):
/// one for `example.test`, one for `*.example.test`.
const APEX: &str = "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0";
const WILDCARD: &str = "gxH1wtBZ5kJ0OV4zc9QY6qvC8dE1Gk2rTaM3nPyLsUw";
const HOOK_TIMEOUT: Duration = Duration::from_secs(30);

fn hook(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples/dns-hooks/powerdns")
        .join(name)
}

/// Runs hook `name` (`add` or `remove`) as certherd does: the program itself,
/// no shell, with `CERTHERD_DNS_*` set. The environment is otherwise only
/// `PATH` and `env`, so nothing ambient (proxies, a developer's `PDNS_*`)
/// changes what it does.
fn run_hook(name: &str, env: &[(String, String)], fqdn: &str, zone: &str, value: &str) -> Output {
    let mut cmd = Command::new(hook(name));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("CERTHERD_DNS_FQDN", fqdn)
        .env("CERTHERD_DNS_VALUE", value)
        .env("CERTHERD_DNS_ZONE", zone)
        .envs(env.iter().map(|(k, v)| (k, v)));
    run_with_timeout(&mut cmd, HOOK_TIMEOUT).unwrap_or_else(|e| panic!("hook {name}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs a hook that must succeed, and returns its stdout.
#[track_caller]
fn ok(pdns: &PowerDns, name: &str, value: &str) -> String {
    let out = run_hook(name, &pdns.hook_env(), FQDN, ZONE, value);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{name} {value}: {out:?}\nstderr: {}\n{}",
        text(&out.stderr),
        pdns.describe_log()
    );
    assert_eq!(text(&out.stderr), "", "{name} {value}: nothing on stderr");
    let stdout = text(&out.stdout);
    assert!(
        !stdout.contains(pdns.api_key()),
        "{name} printed the API key: {stdout}"
    );
    stdout
}

/// Runs a hook that must fail with exit status 1, and returns its stderr.
#[track_caller]
fn fails(name: &str, env: &[(String, String)], fqdn: &str, zone: &str) -> String {
    let out = run_hook(name, env, fqdn, zone, APEX);
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{name}: {out:?}\nstderr: {stderr}"
    );
    assert_eq!(
        stderr.lines().count(),
        1,
        "{name}: one line on stderr: {stderr}"
    );
    stderr
}

fn quoted(value: &str) -> String {
    format!("\"{value}\"")
}

#[test]
fn apex_and_wildcard_values_share_the_name_and_each_goes_alone() {
    let pdns = PowerDns::start();
    assert_eq!(pdns.txt(FQDN), Vec::<String>::new(), "nothing there yet");

    let stdout = ok(&pdns, "add", APEX);
    assert_eq!(
        stdout,
        format!("added {FQDN} TXT \"{APEX}\" to zone {ZONE}\n")
    );
    assert_eq!(pdns.txt(FQDN), [APEX]);

    ok(&pdns, "add", WILDCARD);
    let mut both = vec![APEX, WILDCARD];
    both.sort();
    assert_eq!(pdns.txt(FQDN), both, "both values served at once");
    assert_eq!(
        pdns.api_txt(FQDN),
        Some((60, vec![quoted(APEX), quoted(WILDCARD)])),
        "one RRset of two records, TTL PDNS_TTL's default"
    );

    let stdout = ok(&pdns, "remove", APEX);
    assert_eq!(
        stdout,
        format!("removed {FQDN} TXT \"{APEX}\" from zone {ZONE}\n")
    );
    assert_eq!(pdns.txt(FQDN), [WILDCARD], "the other value stays");

    ok(&pdns, "remove", WILDCARD);
    assert_eq!(pdns.txt(FQDN), Vec::<String>::new());
    assert_eq!(pdns.api_txt(FQDN), None, "the RRset is gone");

    // Idempotent add: the same value twice is one record.
    ok(&pdns, "add", APEX);
    let stdout = ok(&pdns, "add", APEX);
    assert_eq!(
        stdout,
        format!("{FQDN} TXT \"{APEX}\" is already in zone {ZONE}\n")
    );
    assert_eq!(pdns.api_txt(FQDN), Some((60, vec![quoted(APEX)])));
    assert_eq!(pdns.txt(FQDN), [APEX]);

    // Idempotent remove: a value that is not there changes nothing.
    let stdout = ok(&pdns, "remove", WILDCARD);
    assert_eq!(
        stdout,
        format!("{FQDN} TXT \"{WILDCARD}\" is not in zone {ZONE}\n")
    );
    assert_eq!(pdns.api_txt(FQDN), Some((60, vec![quoted(APEX)])));
    ok(&pdns, "remove", APEX);
    ok(&pdns, "remove", APEX);
    assert_eq!(pdns.api_txt(FQDN), None);
    assert_eq!(pdns.txt(FQDN), Vec::<String>::new());
}

#[test]
fn records_made_outside_certherd_and_their_ttl_are_kept() {
    let pdns = PowerDns::start();
    pdns.set_txt(FQDN, 300, &["\"set by hand\""]);

    ok(&pdns, "add", APEX);
    assert_eq!(
        pdns.api_txt(FQDN),
        Some((300, vec![quoted(APEX), "\"set by hand\"".to_owned()]))
    );
    ok(&pdns, "remove", APEX);
    assert_eq!(
        pdns.api_txt(FQDN),
        Some((300, vec!["\"set by hand\"".to_owned()]))
    );
}

/// certherd may publish a name's and its wildcard's values at the same time;
/// each hook reads the RRset and writes it whole, so the hooks serialise
/// themselves (flock on their directory) or one value would be lost.
#[test]
fn concurrent_adds_and_removes_at_one_name_lose_nothing() {
    let pdns = PowerDns::start();
    for round in 0..3 {
        thread::scope(|s| {
            for value in [APEX, WILDCARD] {
                s.spawn(|| ok(&pdns, "add", value));
            }
        });
        let mut both = vec![APEX, WILDCARD];
        both.sort();
        assert_eq!(pdns.txt(FQDN), both, "round {round}: both values served");
        thread::scope(|s| {
            for value in [APEX, WILDCARD] {
                s.spawn(|| ok(&pdns, "remove", value));
            }
        });
        assert_eq!(pdns.api_txt(FQDN), None, "round {round}: all removed");
    }
}

#[test]
fn api_key_from_a_file() {
    let pdns = PowerDns::start();
    let dir = ScratchDir::new("certherd-pdns-key-");
    let key_file = dir.path().join("api-key");
    std::fs::write(&key_file, format!("{}\n", pdns.api_key())).unwrap();
    let env = [
        ("PDNS_API_URL".to_owned(), pdns.api_url()),
        (
            "PDNS_API_KEY_FILE".to_owned(),
            key_file.display().to_string(),
        ),
    ];

    let out = run_hook("add", &env, FQDN, ZONE, APEX);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(pdns.txt(FQDN), [APEX]);
    let out = run_hook("remove", &env, FQDN, ZONE, APEX);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(pdns.txt(FQDN), Vec::<String>::new());
}

#[test]
fn a_wrong_api_key_fails_naming_the_zone_and_401_without_printing_the_key() {
    let pdns = PowerDns::start();
    let wrong_key = format!("wrong-{}", pdns.api_key());
    let env = [
        ("PDNS_API_URL".to_owned(), pdns.api_url()),
        ("PDNS_API_KEY".to_owned(), wrong_key.clone()),
    ];
    let url = format!(
        "{}/api/v1/servers/localhost/zones/{ZONE}?rrset_name={FQDN}&rrset_type=TXT",
        pdns.api_url()
    );
    for name in ["add", "remove"] {
        let stderr = fails(name, &env, FQDN, ZONE);
        assert_eq!(
            stderr,
            format!(
                "powerdns-{name}: zone {ZONE}: GET {url} answered HTTP 401: Unauthorized; \
                 check PDNS_API_KEY or PDNS_API_KEY_FILE against the server's api-key\n"
            )
        );
        assert!(!stderr.contains(&wrong_key), "{name} printed the key");
    }
    assert_eq!(pdns.api_txt(FQDN), None, "nothing was written");
}

#[test]
fn a_zone_powerdns_does_not_have_fails_naming_it() {
    let pdns = PowerDns::start();
    let zone = "nope.test.";
    let fqdn = "_acme-challenge.nope.test.";
    let url = format!(
        "{}/api/v1/servers/localhost/zones/{zone}?rrset_name={fqdn}&rrset_type=TXT",
        pdns.api_url()
    );
    for name in ["add", "remove"] {
        let stderr = fails(name, &pdns.hook_env(), fqdn, zone);
        assert_eq!(
            stderr,
            format!(
                "powerdns-{name}: zone {zone}: GET {url} answered HTTP 404: Not Found; \
                 PowerDNS server \"localhost\" at {} has no zone {zone} \
                 (or PDNS_SERVER_ID is wrong)\n",
                pdns.api_url()
            )
        );
    }
}

#[test]
fn an_unreachable_api_fails_quickly_naming_the_zone() {
    // Nobody listens on this port: connection refused.
    let api_url = format!("http://127.0.0.1:{}", free_port());
    let env = [
        ("PDNS_API_URL".to_owned(), api_url.clone()),
        (
            "PDNS_API_KEY".to_owned(),
            "certherd-test-unused-key".to_owned(),
        ),
    ];
    let started = Instant::now();
    let stderr = fails("add", &env, FQDN, ZONE);
    assert!(started.elapsed() < HOOK_TIMEOUT, "bounded");
    let prefix = format!(
        "powerdns-add: zone {ZONE}: GET {api_url}/api/v1/servers/localhost/zones/{ZONE}\
         ?rrset_name={FQDN}&rrset_type=TXT failed: curl: (7) "
    );
    assert!(stderr.starts_with(&prefix), "{stderr:?}");
    assert!(!stderr.contains("certherd-test-unused-key"), "{stderr}");
}

#[test]
fn a_name_outside_the_zone_or_missing_configuration_fails_before_any_request() {
    let env = [
        ("PDNS_API_URL".to_owned(), "http://127.0.0.1:9".to_owned()),
        ("PDNS_API_KEY".to_owned(), "k".to_owned()),
    ];
    let stderr = fails("add", &env, "_acme-challenge.other.test.", ZONE);
    assert_eq!(
        stderr,
        format!("powerdns-add: zone {ZONE}: _acme-challenge.other.test. is not inside it\n")
    );
    let stderr = fails("remove", &env[..1], FQDN, ZONE);
    assert_eq!(
        stderr,
        format!("powerdns-remove: zone {ZONE}: set PDNS_API_KEY or PDNS_API_KEY_FILE\n")
    );
}

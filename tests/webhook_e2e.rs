//! The `webhook` target end to end: a real Pebble issues, certherd POSTs the
//! bundle as JSON to an HTTPS receiver with a private CA, with its secret
//! header from the environment; a 503 is retried after the receiver's
//! Retry-After, a 400 is reported with the receiver's status and answer.

mod support;

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use support::receiver::{Receiver, Reply};
use support::run::{site_config, stored_dir, Run, Setup, SITE};
use support::{certherd_cmd, Pebble, PebbleOptions};

const TOKEN: &str = "Bearer webhook-token-never-logged";

fn webhook_target(name: &str, rx: &Receiver) -> String {
    format!(
        "      - name: {name}
        type: webhook
        url: {url}
        headers: {{ Authorization: {{ env: HOOK_TOKEN }} }}
        trust_roots: [{ca}]
        timeout: 5s
",
        url = rx.url("/certs"),
        ca = rx.ca_path().display(),
    )
}

fn config(pebble: &Pebble, setup: &Setup, targets: &str) -> String {
    site_config(pebble, setup, &[SITE, &format!("www.{SITE}")], targets)
}

fn run_with_token(setup: &Setup, args: &[&str]) -> Run {
    let out = certherd_cmd()
        .arg("--config")
        .arg(setup.config_path())
        .args(args)
        .env("HOOK_TOKEN", TOKEN)
        .output()
        .expect("run certherd");
    Run::from(out)
}

/// A new folder in the scratch directory (each receiver writes its CA there).
fn subdir(setup: &Setup, name: &str) -> PathBuf {
    let dir = setup.dir.path().join(name);
    fs::create_dir(&dir).unwrap();
    dir
}

#[test]
fn renew_posts_the_bundle_and_retries_a_503_after_its_retry_after() {
    let pebble = Pebble::start(PebbleOptions::default());
    let setup = Setup::new();
    let rx = Receiver::start(
        setup.dir.path(),
        vec![
            Reply::status(503, "busy").header("Retry-After", "1"),
            Reply::status(204, ""),
        ],
    );
    setup.write_config(&config(&pebble, &setup, &webhook_target("vault", &rx)));

    let run = run_with_token(&setup, &["renew"]);
    run.assert_code(0);
    assert!(
        run.stdout.contains("  vault (webhook): deployed"),
        "{}",
        run.stdout
    );
    let got = rx.got();
    assert_eq!(got.len(), 2, "one 503, then the delivery");
    let waited = got[1].at - got[0].at;
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_secs(5),
        "the retry waited {waited:?}, not the receiver's Retry-After of 1s"
    );
    for r in &got {
        assert_eq!(r.path, "/certs");
        assert_eq!(r.headers["authorization"], TOKEN);
        assert_eq!(r.headers["content-type"], "application/json");
    }

    // The document: what the state directory holds, field by field.
    let body = &got[1].body;
    let stored = stored_dir(&setup);
    let read = |f: &str| fs::read_to_string(stored.join(f)).unwrap();
    let status = run_with_token(&setup, &["status", "--json", "--offline"]);
    let status: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    let status = &status["certificates"][0];
    assert_eq!(body["name"], "site");
    assert_eq!(body["target"], "vault");
    assert_eq!(
        body["domains"],
        serde_json::json!([SITE, format!("www.{SITE}")])
    );
    assert_eq!(body["serial"], status["serial"]);
    assert_eq!(body["sha256"], status["sha256"]);
    assert_eq!(body["not_after"], status["not_after"]);
    assert_eq!(body["key"], read("privkey.pem").as_str());
    assert_eq!(body["fullchain"], read("fullchain.pem").as_str());
    assert_eq!(
        format!(
            "{}{}",
            body["cert"].as_str().unwrap(),
            body["chain"].as_str().unwrap()
        ),
        read("fullchain.pem")
    );
    assert_eq!(
        support::leaf_sha256_of_pem(body["cert"].as_str().unwrap()),
        status["sha256"].as_str().unwrap()
    );
    assert_eq!(body, &got[0].body, "the retry sent the same document");
    let all = run.all();
    assert!(!all.contains("PRIVATE KEY"), "{all}");
    assert!(!all.contains("never-logged"), "{all}");
}

#[test]
fn a_permanent_400_is_reported_with_the_receivers_answer_and_others_proceed() {
    let pebble = Pebble::start(PebbleOptions::default());
    let setup = Setup::new();
    let refusing = Receiver::start(
        setup.dir.path(),
        vec![Reply::status(400, "unknown tenant \"edge\"\n")],
    );
    let echoing = Receiver::start(
        &subdir(&setup, "echo"),
        vec![Reply {
            echo_key: true,
            ..Reply::status(422, "")
        }],
    );
    let working = Receiver::start(&subdir(&setup, "working"), vec![Reply::status(200, "ok")]);
    let targets = [
        webhook_target("refusing", &refusing),
        webhook_target("echoing", &echoing),
        webhook_target("working", &working),
    ]
    .concat();
    setup.write_config(&config(&pebble, &setup, &targets));

    let run = run_with_token(&setup, &["renew"]);
    run.assert_code(1);
    let out = run.all();
    for expected in [
        format!(
            "  refusing (webhook): FAILED: webhook target \"refusing\": POST to {}: the receiver \
             answered HTTP 400 Bad Request: unknown tenant \"edge\" (after 1 attempt(s))",
            refusing.url("/certs")
        ),
        format!(
            "  echoing (webhook): FAILED: webhook target \"echoing\": POST to {}: the receiver \
             answered HTTP 422 Unprocessable Entity: <the answer quotes the private key; not \
             shown> (after 1 attempt(s))",
            echoing.url("/certs")
        ),
        "  working (webhook): deployed".to_string(),
    ] {
        assert!(out.contains(&expected), "{expected}\nnot in:\n{out}");
    }
    assert_eq!(refusing.got().len(), 1, "a 400 is not retried");
    assert_eq!(working.got().len(), 1);
    let key = fs::read_to_string(stored_dir(&setup).join("privkey.pem")).unwrap();
    let key_line = key.lines().nth(1).unwrap();
    assert!(!out.contains(&key_line[..20]), "{out}");
    assert!(!out.contains("never-logged"), "{out}");

    // The failed targets are tried again by the next renew; the one that
    // took the certificate is not.
    let again = run_with_token(&setup, &["renew"]);
    again.assert_code(1);
    assert_eq!(refusing.got().len(), 2);
    assert_eq!(working.got().len(), 1);
}

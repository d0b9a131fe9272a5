//! tls-alpn-01 and per-domain solvers, issued by a real Pebble.

mod support;

use support::run::{status_json, Setup};
use support::{Pebble, PebbleOptions};

fn base(pebble: &Pebble, setup: &Setup) -> String {
    format!(
        "state_dir: {}\nacme:\n  directory: {}\n  trust_roots: [{}]\nchallenges:\n  standalone:\n    type: http-01\n    listen: \"127.0.0.1:{}\"\n  alpn:\n    type: tls-alpn-01\n    listen: \"127.0.0.1:{}\"\n",
        setup.state_dir().display(),
        pebble.directory_url(),
        pebble.ca_tls_root_path().display(),
        pebble.http_port(),
        pebble.tls_port(),
    )
}

#[test]
fn tls_alpn01_issues_through_the_built_in_listener() {
    let pebble = Pebble::start(PebbleOptions::default());
    let setup = Setup::new();
    setup.write_config(&format!(
        "{}certificates:\n  alpn:\n    domains: [alpn.certherd.test, www.alpn.certherd.test]\n    challenge: alpn\n",
        base(&pebble, &setup)
    ));
    let dry = setup.run(&["renew", "--dry-run"]);
    dry.assert_code(0);
    assert!(dry.stdout.contains("test order against"), "{}", dry.stdout);
    let run = setup.run(&["renew"]);
    run.assert_code(0);
    assert!(
        run.stdout.contains(
            "alpn [alpn.certherd.test, www.alpn.certherd.test]: renewed (no certificate yet)"
        ),
        "{}",
        run.stdout
    );
    let status = status_json(&setup, &["--offline"]);
    assert_eq!(status["certificates"][0]["due"], false);
}

#[test]
fn per_domain_solvers_share_one_order() {
    let pebble = Pebble::start(PebbleOptions::default());
    let setup = Setup::new();
    setup.write_config(&format!(
        "{}certificates:\n  mixed:\n    domains: [a.certherd.test, b.certherd.test, c.certherd.test]\n    challenge: {{ b.certherd.test: alpn, \"*\": standalone }}\n",
        base(&pebble, &setup)
    ));
    setup.run(&["renew"]).assert_code(0);
    let status = status_json(&setup, &["--offline"]);
    assert_eq!(
        status["certificates"][0]["domains"],
        serde_json::json!(["a.certherd.test", "b.certherd.test", "c.certherd.test"])
    );
    assert_eq!(status["certificates"][0]["due"], false);

    // If the listener for b cannot be reached, the order fails naming b and tls-alpn-01.
    let broken = std::fs::read_to_string(setup.config_path())
        .unwrap()
        .replace(
            &format!("127.0.0.1:{}\"\ncertificates", pebble.tls_port()),
            &format!("127.0.0.1:{}\"\ncertificates", support::free_port()),
        );
    setup.write_config(&broken);
    let run = setup.run(&["renew", "--force"]);
    run.assert_code(1);
    assert!(
        run.stdout
            .contains("renewal FAILED: tls-alpn-01 challenge for b.certherd.test failed: "),
        "{}",
        run.stdout
    );
}

#[test]
fn dry_run_preflight_names_a_port_that_cannot_be_bound() {
    let pebble = Pebble::start(PebbleOptions::default());
    let setup = Setup::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let yaml = base(&pebble, &setup).replace(
        &format!("127.0.0.1:{}\"\n", pebble.tls_port()),
        &format!("127.0.0.1:{port}\"\n"),
    );
    setup.write_config(&format!(
        "{yaml}certificates:\n  alpn:\n    domains: [alpn.certherd.test]\n    challenge: alpn\n"
    ));
    let run = setup.run(&["renew", "--dry-run"]);
    run.assert_code(1);
    assert_eq!(
        run.stdout,
        format!(
            "dry run: nothing was written, no reload was run\nalpn [alpn.certherd.test]: renewal FAILED: solver preflight: challenge \"alpn\": tls-alpn-01 listener cannot listen on 127.0.0.1:{port}: Address already in use (os error 98)\n"
        )
    );
    drop(taken);
}

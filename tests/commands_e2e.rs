//! `deploy`, `verify`, `status`, renewal reasons, EAB, file ownership and
//! secrecy — each against a real Pebble and nginx.

mod support;

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use support::run::{
    config, key_material, status_json, stored_sha256, web_deployed_line, Setup, SITE,
};
use support::{certherd_cmd, Nginx, Pebble, PebbleOptions};

#[test]
fn status_before_the_first_certificate() {
    let pebble = Pebble::start(PebbleOptions::default());
    let nginx = Nginx::start();
    let setup = Setup::new();
    setup.write_config(&config(&pebble, &nginx, &setup, ""));
    let run = setup.run(&["status", "--json"]);
    run.assert_code(0);
    let status: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        status,
        serde_json::json!({"certificates": [{
            "name": "site",
            "domains": [SITE, format!("www.{SITE}")],
            "serial": null, "sha256": null, "not_before": null, "not_after": null,
            "key_type": null,
            "due": true, "due_reason": "no certificate yet", "renew_at": null, "ari": null,
            "targets": [{"name": "web", "state": "unverified", "served_sha256": null, "chain_complete": null, "error": null, "deployed_sha256": null, "last_error": null}]
        }]})
    );
    let human = setup.run(&["status"]);
    human.assert_code(0);
    assert_eq!(
        human.stdout,
        format!("site [{SITE}, www.{SITE}]: no certificate yet; DUE: no certificate yet\n  web: unverified\n")
    );
}

#[test]
fn a_certificate_near_expiry_is_renewed_and_status_says_why() {
    let pebble = Pebble::start(PebbleOptions::default());
    let nginx = Nginx::start();
    let setup = Setup::new();
    setup.write_config(&config(&pebble, &nginx, &setup, ""));
    setup.run(&["renew"]).assert_code(0);

    // Replace the current certificate with one 80 days into a 90-day life
    // (same names, same key type): the default threshold (33 %) is passed.
    let store = certherd::store::Store::open(
        &setup.state_dir(),
        &pebble.directory_url(),
        Duration::from_secs(5),
    )
    .unwrap();
    let key = certherd::acme::keys::generate(certherd::config::KeyType::EcdsaP256).unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec![SITE.to_string(), format!("www.{SITE}")]).unwrap();
    let not_before = time::OffsetDateTime::now_utc() - time::Duration::days(80);
    params.not_before = not_before;
    params.not_after = not_before + time::Duration::days(90);
    let short = params.self_signed(&key).unwrap();
    let bundle = certherd::cert::Bundle::from_chain(
        certherd::cert::KeyPem::new(key.serialize_pem()),
        &short.pem(),
    )
    .unwrap();
    store
        .install("site", &bundle, time::OffsetDateTime::now_utc())
        .unwrap();
    drop(store);

    let status = status_json(&setup, &["--offline"]);
    let c = &status["certificates"][0];
    assert_eq!(c["due"], true);
    assert_eq!(c["sha256"], bundle.info.sha256.as_str());
    let renew_at = certherd::cert::rfc3339(certherd::plan::renew_at(
        &bundle.info,
        certherd::config::Threshold::Share(0.33),
    ));
    assert_eq!(c["renew_at"], renew_at.as_str());
    assert_eq!(
        c["due_reason"],
        format!(
            "renewal time {renew_at} reached (expires {})",
            certherd::cert::rfc3339(bundle.info.not_after)
        )
        .as_str()
    );
    // The target holds the Pebble certificate, not the short one.
    assert_eq!(c["targets"][0]["state"], "stale");

    let run = setup.run(&["renew"]);
    run.assert_code(0);
    assert!(
        run.stdout.contains(&format!(
            "site [{SITE}, www.{SITE}]: renewed (renewal time {renew_at} reached"
        )),
        "{}",
        run.stdout
    );
    let sha = stored_sha256(&setup);
    assert_ne!(sha, bundle.info.sha256);
    assert_eq!(nginx.served_sha256().unwrap(), sha);
    assert_eq!(
        status_json(&setup, &["--offline"])["certificates"][0]["due"],
        false
    );
}

#[test]
fn changed_domains_are_a_reason_to_renew() {
    let pebble = Pebble::start(PebbleOptions::default());
    let nginx = Nginx::start();
    let setup = Setup::new();
    let yaml = config(&pebble, &nginx, &setup, "");
    setup.write_config(&yaml);
    setup.run(&["renew"]).assert_code(0);
    setup.write_config(&yaml.replace(
        &format!("domains: [{SITE}, www.{SITE}]"),
        &format!("domains: [{SITE}, www.{SITE}, api.{SITE}]"),
    ));
    let run = setup.run(&["renew"]);
    run.assert_code(0);
    assert!(run.stdout.contains(&format!(
        "renewed (domains changed: certificate has [{SITE}, www.{SITE}], configuration has [{SITE}, www.{SITE}, api.{SITE}])"
    )), "{}", run.stdout);
    let status = status_json(&setup, &[]);
    assert_eq!(status["certificates"][0]["targets"][0]["state"], "current");
}

#[test]
fn verify_finds_a_stale_target_and_deploy_repairs_it() {
    let pebble = Pebble::start(PebbleOptions::default());
    let nginx = Nginx::start();
    let setup = Setup::new();
    setup.write_config(&config(&pebble, &nginx, &setup, "").replace("timeout: 10s", "timeout: 1s"));
    setup.run(&["renew"]).assert_code(0);
    let sha = stored_sha256(&setup);

    // Someone restores an old certificate and reloads.
    restore_placeholder(&nginx);

    let verify = setup.run(&["verify"]);
    verify.assert_code(1);
    assert_eq!(
        verify.stdout,
        format!(
            "site [{SITE}, www.{SITE}]: current certificate\n  web (file): verification STALE: serves {}, expected {sha}\n",
            nginx.placeholder().sha256()
        )
    );
    let status = status_json(&setup, &[]);
    assert_eq!(
        status["certificates"][0]["targets"][0],
        serde_json::json!({"name": "web", "state": "stale", "served_sha256": nginx.placeholder().sha256(), "chain_complete": null,
            "error": format!("serves {}, expected {sha}", nginx.placeholder().sha256()),
            "deployed_sha256": sha, "last_error": null})
    );

    // Selecting what does not exist is a command-line error: nothing attempted.
    let bad = setup.run(&["deploy", "--target", "nope"]);
    bad.assert_code(2);
    assert_eq!(
        bad.stderr.trim_end(),
        "certherd: --target \"nope\": no target of that name in the selected certificates"
    );
    let bad = setup.run(&["renew", "--cert", "nope"]);
    bad.assert_code(2);
    assert_eq!(
        bad.stderr.trim_end(),
        "certherd: --cert \"nope\": no certificate of that name in the configuration"
    );

    let deploy = setup.run(&["deploy", "--cert", "site", "--target", "web"]);
    deploy.assert_code(0);
    assert!(
        deploy.stdout.contains(&web_deployed_line(&nginx, &sha)),
        "{}",
        deploy.stdout
    );
    assert_eq!(nginx.served_sha256().unwrap(), sha);
    setup.run(&["verify"]).assert_code(0);
}

#[test]
fn a_target_that_lost_the_certificate_is_redeployed_by_renew() {
    let pebble = Pebble::start(PebbleOptions::default());
    let nginx = Nginx::start();
    let setup = Setup::new();
    setup.write_config(&config(&pebble, &nginx, &setup, ""));
    setup.run(&["renew"]).assert_code(0);
    let sha = stored_sha256(&setup);
    restore_placeholder(&nginx);

    let run = setup.run(&["renew"]);
    run.assert_code(0);
    assert!(run.stdout.contains("not due"), "{}", run.stdout);
    assert!(
        run.stdout.contains(&web_deployed_line(&nginx, &sha)),
        "{}",
        run.stdout
    );
    assert_eq!(nginx.served_sha256().unwrap(), sha);
}

#[test]
fn external_account_binding_and_no_secret_in_any_output() {
    const KID: &str = "kid-1";
    // A base64url HMAC key, as a CA hands it out.
    const HMAC: &str = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";
    let pebble = Pebble::start(PebbleOptions {
        eab: Some((KID.into(), HMAC.into())),
        ..PebbleOptions::default()
    });
    let nginx = Nginx::start();
    let setup = Setup::new();
    let plain = config(&pebble, &nginx, &setup, "");

    // Without EAB the CA refuses the account, and says so.
    setup.write_config(&plain);
    let refused = setup.run(&["renew"]);
    refused.assert_code(1);
    assert!(
        refused
            .stdout
            .contains("urn:ietf:params:acme:error:externalAccountRequired"),
        "{}",
        refused.stdout
    );

    let with_eab = plain.replace(
        "  contact: [ops@certherd.test]\n",
        &format!("  contact: [ops@certherd.test]\n  eab: {{ key_id: {KID}, hmac_key: {{ env: CERTHERD_TEST_EAB }} }}\n"),
    );
    setup.write_config(&with_eab);
    let mut outputs = Vec::new();
    let mut last_stdout = String::new();
    for args in [
        &["-vv", "renew"][..],
        &["--log-format", "json", "-vv", "renew", "--force"][..],
        &["-vv", "renew", "--dry-run", "--force"][..],
        &["-vv", "status"][..],
        &["-vv", "status", "--json"][..],
    ] {
        let out = certherd_cmd()
            .env("CERTHERD_TEST_EAB", HMAC)
            .arg("--config")
            .arg(setup.config_path())
            .args(args)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(0), "{args:?}\n{text}");
        outputs.push(text);
        last_stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    }
    assert!(
        outputs[1].lines().filter(|l| l.starts_with('{')).count() > 3,
        "JSON log lines:\n{}",
        outputs[1]
    );
    let status: serde_json::Value = serde_json::from_str(&last_stdout).unwrap();
    assert_eq!(status["certificates"][0]["targets"][0]["state"], "current");
    assert_eq!(
        nginx.served_sha256().unwrap(),
        status["certificates"][0]["sha256"].as_str().unwrap()
    );

    // Secrets: the EAB key, the certificate key, the account key.
    let account: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            walk(&setup.state_dir())
                .into_iter()
                .find(|p| p.ends_with("account.json"))
                .expect("stored account"),
        )
        .unwrap(),
    )
    .unwrap();
    let account_key = account["key_pkcs8"]
        .as_str()
        .expect("account key")
        .to_string();
    let cert_key = key_material(&nginx.key_path());
    for text in &outputs {
        for (what, secret) in [
            ("EAB HMAC key", HMAC),
            ("account key", &account_key[..40]),
            ("certificate key", &cert_key[..40]),
        ] {
            assert!(!text.contains(secret), "{what} in output:\n{text}");
        }
        assert!(!text.contains("PRIVATE KEY"), "{text}");
    }
}

#[test]
fn file_target_owner_group_and_mode() {
    let pebble = Pebble::start(PebbleOptions::default());
    let nginx = Nginx::start();
    let setup = Setup::new();
    let out = setup.dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let extra = format!(
        "      - name: copy\n        type: file\n        cert: {o}/cert.pem\n        chain: {o}/chain.pem\n        key: {o}/key.pem\n        combined: {o}/combined.pem\n        mode: \"0640\"\n        owner: nobody\n        group: nogroup\n",
        o = out.display()
    );
    setup.write_config(&config(&pebble, &nginx, &setup, &extra));
    setup.run(&["renew"]).assert_code(0);
    let uid = |name: &str| {
        let out = std::process::Command::new("id")
            .args(["-u", name])
            .output()
            .unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .parse::<u32>()
            .unwrap()
    };
    let gid = {
        let out = std::process::Command::new("getent")
            .args(["group", "nogroup"])
            .output()
            .unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .split(':')
            .nth(2)
            .unwrap()
            .parse::<u32>()
            .unwrap()
    };
    for (file, mode) in [
        ("cert.pem", 0o644),
        ("chain.pem", 0o644),
        ("key.pem", 0o640),
        ("combined.pem", 0o640),
    ] {
        let m = std::fs::metadata(out.join(file)).unwrap();
        assert_eq!(
            (m.mode() & 0o777, m.uid(), m.gid()),
            (mode, uid("nobody"), gid),
            "{file}"
        );
    }
    // combined = key + leaf + chain; cert + chain = what nginx serves.
    let read = |f: &str| std::fs::read_to_string(out.join(f)).unwrap();
    assert_eq!(
        read("combined.pem"),
        format!(
            "{}{}{}",
            read("key.pem"),
            read("cert.pem"),
            read("chain.pem")
        )
    );
    assert_eq!(
        format!("{}{}", read("cert.pem"), read("chain.pem")),
        std::fs::read_to_string(nginx.cert_path()).unwrap()
    );
    assert_eq!(
        read("key.pem"),
        std::fs::read_to_string(nginx.key_path()).unwrap()
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() && !p.is_symlink() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn sigterm_mid_order_removes_challenge_files_and_stores_nothing() {
    let pebble = Pebble::start(PebbleOptions::default());
    let nginx = Nginx::start();
    let setup = Setup::new();
    let webroot = setup.dir.path().join("webroot");
    std::fs::create_dir(&webroot).unwrap();
    // Pebble's validation connects here and gets no answer: the order hangs.
    let black_hole = std::net::TcpListener::bind(("127.0.0.1", pebble.http_port())).unwrap();
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for c in black_hole.incoming().take(8) {
            conns.push(c);
        }
        std::thread::sleep(Duration::from_secs(30));
    });
    let yaml = config(&pebble, &nginx, &setup, "").replace(
        &format!("    listen: \"127.0.0.1:{}\"", pebble.http_port()),
        &format!("    webroot: {}", webroot.display()),
    );
    setup.write_config(&yaml);
    let child = certherd_cmd()
        .arg("--config")
        .arg(setup.config_path())
        .arg("renew")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let challenges = webroot.join(".well-known/acme-challenge");
    support::process::poll_until(
        "a challenge file in the webroot",
        Duration::from_secs(10),
        || match std::fs::read_dir(&challenges).map(|d| d.count()) {
            Ok(n) if n > 0 => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .unwrap();
    // SAFETY: kill(2) on the pid of a child we spawned and have not waited for.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let start = std::time::Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?} to stop",
        start.elapsed()
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.lines().last().unwrap(),
        "certherd: interrupted by SIGTERM; stopped before finishing"
    );
    let left: Vec<_> = std::fs::read_dir(&challenges).unwrap().collect();
    assert!(left.is_empty(), "challenge files left: {left:?}");
    assert_eq!(
        status_json(&setup, &["--offline"])["certificates"][0]["serial"],
        serde_json::Value::Null
    );
    assert_eq!(nginx.served_sha256().unwrap(), nginx.placeholder().sha256());
    drop(held);
}

#[test]
fn an_incomplete_served_chain_is_reported() {
    let pebble = Pebble::start(PebbleOptions::default());
    let nginx = Nginx::start();
    let setup = Setup::new();
    // `cert` is the leaf alone: nginx then serves no intermediate.
    setup.write_config(&config(&pebble, &nginx, &setup, "").replacen(
        "        fullchain: ",
        "        cert: ",
        1,
    ));
    let run = setup.run(&["renew"]);
    run.assert_code(0);
    let sha = stored_sha256(&setup);
    assert!(
        run.stdout
            .contains(&format!("verified: serves {sha} (served chain INCOMPLETE)")),
        "{}",
        run.stdout
    );
    let status = status_json(&setup, &[]);
    assert_eq!(
        status["certificates"][0]["targets"][0]["chain_complete"],
        false
    );
}

#[test]
fn deploy_and_verify_without_a_certificate_fail_and_say_why() {
    let pebble = Pebble::start(PebbleOptions::default());
    let nginx = Nginx::start();
    let setup = Setup::new();
    setup.write_config(&config(&pebble, &nginx, &setup, ""));
    for cmd in ["deploy", "verify"] {
        let run = setup.run(&[cmd]);
        run.assert_code(1);
        assert_eq!(
            run.stdout,
            format!("site [{SITE}, www.{SITE}]: current certificate\n  web (file): FAILED: no certificate yet: run `certherd renew` first\n"),
            "{cmd}"
        );
    }
    assert_eq!(nginx.served_sha256().unwrap(), nginx.placeholder().sha256());
}

#[test]
fn a_profile_the_ca_does_not_offer_is_an_error_not_ignored() {
    let pebble = Pebble::start(PebbleOptions::default());
    let nginx = Nginx::start();
    let setup = Setup::new();
    setup.write_config(&config(&pebble, &nginx, &setup, "").replace(
        "  contact: [ops@certherd.test]\n",
        "  contact: [ops@certherd.test]\n  profile: shortlived\n",
    ));
    let run = setup.run(&["renew"]);
    run.assert_code(1);
    assert!(run.stdout.contains(&format!(
        "site [{SITE}, www.{SITE}]: renewal FAILED: the CA does not offer the profile \"shortlived\" set in acme.profile (it offers: none)"
    )), "{}", run.stdout);
}

#[test]
fn the_account_is_created_once_and_reused() {
    let pebble = Pebble::start(PebbleOptions::default());
    let nginx = Nginx::start();
    let setup = Setup::new();
    setup.write_config(&config(&pebble, &nginx, &setup, ""));
    let first = setup.run(&["renew"]);
    first.assert_code(0);
    assert!(
        first.stderr.contains("ACME account created and stored"),
        "{}",
        first.stderr
    );
    let account = walk(&setup.state_dir())
        .into_iter()
        .find(|p| p.ends_with("account.json"))
        .unwrap();
    assert_eq!(std::fs::metadata(&account).unwrap().mode() & 0o777, 0o600);
    let before = std::fs::read(&account).unwrap();
    let again = setup.run(&["renew", "--force"]);
    again.assert_code(0);
    assert!(
        !again.stderr.contains("ACME account created"),
        "{}",
        again.stderr
    );
    assert_eq!(std::fs::read(&account).unwrap(), before);
}

/// Someone puts the old certificate back and reloads nginx. nginx lets the
/// previous workers accept connections for about 100 ms after a reload:
/// wait until only the new ones answer.
fn restore_placeholder(nginx: &Nginx) {
    nginx.install_cert(nginx.placeholder());
    nginx.reload();
    nginx.wait_until_serving(&nginx.placeholder().sha256(), Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));
    nginx.wait_until_serving(&nginx.placeholder().sha256(), Duration::from_secs(5));
}

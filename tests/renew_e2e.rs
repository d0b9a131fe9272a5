//! End to end against a real Pebble and a real nginx: `renew` issues,
//! stores, deploys, reloads and proves by handshake; the failures an
//! operator meets leave the previous certificate in place.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::run::{
    config, key_material, mode, status_json, stored_sha256, web_deployed_line, Setup, SITE,
};
use support::{free_port, sha256_tree, Nginx, Pebble, PebbleOptions};

#[test]
fn renew_issues_deploys_reloads_and_proves_it() {
    let pebble = Pebble::start(PebbleOptions::default());
    let nginx = Nginx::start();
    let setup = Setup::new();
    let exec_log = setup.dir.path().join("exec.env");
    let script = setup.dir.path().join("push.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nenv | grep ^CERTHERD_ | sort > {}\n",
            exec_log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let exec_target = format!(
        "      - name: cdn\n        type: exec\n        command: [{}]\n",
        script.display()
    );
    setup.write_config(&config(&pebble, &nginx, &setup, &exec_target));
    setup.run(&["check"]).assert_code(0);
    let placeholder = nginx.placeholder().sha256();
    let reloads_before = nginx.reload_count();

    // First run: issue, store, deploy, reload, verify.
    let first = setup.run(&["renew"]);
    first.assert_code(0);
    let sha = stored_sha256(&setup);
    assert_ne!(sha, placeholder);
    assert_eq!(
        nginx.served_sha256().unwrap(),
        sha,
        "nginx serves the new certificate"
    );
    assert!(
        first.stdout.contains(
            "site [site.certherd.test, www.site.certherd.test]: renewed (no certificate yet)"
        ),
        "{}",
        first.stdout
    );
    assert!(
        first.stdout.contains(&web_deployed_line(&nginx, &sha)),
        "{}",
        first.stdout
    );
    assert!(
        first.stdout.contains("  cdn (exec): deployed"),
        "{}",
        first.stdout
    );
    assert_eq!(nginx.reload_count(), reloads_before + 1);
    assert_eq!(mode(&nginx.key_path()), 0o600);
    assert_eq!(mode(&nginx.cert_path()), 0o644);
    // The served chain is complete: leaf and Pebble's intermediate.
    let served = support::served_chain_sha256(&nginx.addr(), SITE).unwrap();
    assert_eq!(served.len(), 2, "leaf + intermediate");

    // The exec target got the certificate's facts and paths.
    let env = std::fs::read_to_string(&exec_log).unwrap();
    assert!(env.contains("CERTHERD_NAME=site\n"), "{env}");
    assert!(env.contains("CERTHERD_TARGET=cdn\n"), "{env}");
    assert!(
        env.contains(&format!("CERTHERD_DOMAINS={SITE} www.{SITE}\n")),
        "{env}"
    );
    assert!(env.contains(&format!("CERTHERD_SHA256={sha}\n")), "{env}");
    let fullchain = env
        .lines()
        .find_map(|l| l.strip_prefix("CERTHERD_FULLCHAIN="))
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(fullchain).unwrap(),
        std::fs::read_to_string(nginx.cert_path()).unwrap()
    );
    let key_path = env
        .lines()
        .find_map(|l| l.strip_prefix("CERTHERD_KEY="))
        .unwrap();
    assert_eq!(mode(Path::new(key_path)), 0o600, "stored key is private");

    // status: the certificate and a current target.
    let status = status_json(&setup, &[]);
    let c = &status["certificates"][0];
    assert_eq!(c["name"], "site");
    assert_eq!(
        c["domains"],
        serde_json::json!([SITE, format!("www.{SITE}")])
    );
    assert_eq!(c["due"], false);
    assert_eq!(c["sha256"], sha.as_str());
    assert_eq!(
        c["targets"][0],
        serde_json::json!({"name": "web", "state": "current", "served_sha256": sha, "chain_complete": true, "error": null,
            "deployed_sha256": sha, "last_error": null})
    );
    assert_eq!(c["targets"][1]["state"], "unverified");

    // Second run: nothing due, no order, no reload.
    let second = setup.run(&["renew"]);
    second.assert_code(0);
    assert!(
        second
            .stdout
            .contains("site [site.certherd.test, www.site.certherd.test]: not due"),
        "{}",
        second.stdout
    );
    assert!(
        second
            .stdout
            .contains("  web (file): already held the current certificate; verified"),
        "{}",
        second.stdout
    );
    assert_eq!(stored_sha256(&setup), sha);
    assert_eq!(
        nginx.reload_count(),
        reloads_before + 1,
        "no reload when nothing changed"
    );

    // --force: a new certificate everywhere.
    let forced = setup.run(&["renew", "--force"]);
    forced.assert_code(0);
    let sha2 = stored_sha256(&setup);
    assert_ne!(sha2, sha);
    assert_eq!(nginx.served_sha256().unwrap(), sha2);
    assert!(
        forced.stdout.contains("renewed (--force)"),
        "{}",
        forced.stdout
    );

    // No private key material in any output.
    let key = key_material(&nginx.key_path());
    for run in [&first, &second, &forced] {
        let all = run.all();
        assert!(!all.contains("PRIVATE KEY"), "{all}");
        assert!(!all.contains(&key[..40]), "{all}");
    }
}

#[test]
fn dry_run_changes_nothing_and_runs_no_reload() {
    let pebble = Pebble::start(PebbleOptions::default());
    let nginx = Nginx::start();
    let setup = Setup::new();
    setup.write_config(&config(&pebble, &nginx, &setup, ""));

    // Before anything was issued: the state directory is not even created.
    let fresh = setup.run(&["renew", "--dry-run"]);
    fresh.assert_code(0);
    assert!(
        !setup.state_dir().exists(),
        "dry run created the state directory"
    );
    assert!(
        fresh
            .stdout
            .contains("dry run: nothing was written, no reload was run"),
        "{}",
        fresh.stdout
    );
    assert!(
        fresh
            .stdout
            .contains("due: no certificate yet; test order against"),
        "{}",
        fresh.stdout
    );
    assert!(
        fresh.stdout.contains("  web (file): preflight passed"),
        "{}",
        fresh.stdout
    );

    setup.run(&["renew"]).assert_code(0);
    let state_before = sha256_tree(&setup.state_dir());
    let site_before = sha256_tree(nginx.cert_path().parent().unwrap());
    let reloads = nginx.reload_count();
    let served = stored_sha256(&setup);
    nginx.wait_until_serving(&served, Duration::from_secs(5));

    for args in [
        &["renew", "--dry-run"][..],
        &["renew", "--dry-run", "--force"][..],
    ] {
        let run = setup.run(args);
        run.assert_code(0);
        assert!(run.stdout.contains("test order against"), "{}", run.stdout);
        assert_eq!(
            sha256_tree(&setup.state_dir()),
            state_before,
            "state directory changed"
        );
        assert_eq!(
            sha256_tree(nginx.cert_path().parent().unwrap()),
            site_before,
            "target files changed"
        );
        assert_eq!(nginx.reload_count(), reloads, "nginx was reloaded");
        assert_eq!(nginx.served_sha256().unwrap(), served);
    }
}

#[test]
fn dry_run_fails_when_a_real_run_would() {
    let pebble = Pebble::start(PebbleOptions::default());
    let mut nginx = Nginx::start();
    let setup = Setup::new();
    let broken = format!(
        "      - name: broken\n        type: file\n        fullchain: {}/missing/site.pem\n        reload: [/nonexistent/reload-tool]\n",
        setup.dir.path().display()
    );
    setup.write_config(&config(&pebble, &nginx, &setup, &broken));
    nginx.stop();
    let run = setup.run(&["renew", "--dry-run"]);
    run.assert_code(1);
    let missing_dir = setup.dir.path().join("missing");
    assert!(run.stdout.contains(&format!(
        "  web (file): preflight FAILED: verify endpoint {} is unreachable: Connection refused (os error 111)",
        nginx.addr()
    )), "{}", run.stdout);
    assert!(run.stdout.contains(&format!(
        "  broken (file): preflight FAILED: cannot write files in {}: not a directory; reload command \"/nonexistent/reload-tool\" is not an executable file",
        missing_dir.display()
    )), "{}", run.stdout);
    assert!(!setup.state_dir().exists());
}

#[test]
fn issuance_survives_half_of_all_nonces_rejected() {
    let pebble = Pebble::start(PebbleOptions {
        nonce_reject: 50,
        ..PebbleOptions::default()
    });
    let nginx = Nginx::start();
    let setup = Setup::new();
    setup.write_config(&config(&pebble, &nginx, &setup, ""));
    setup.run(&["renew"]).assert_code(0);
    setup.run(&["renew", "--force"]).assert_code(0);
    assert_eq!(nginx.served_sha256().unwrap(), stored_sha256(&setup));
}

#[test]
fn ca_unreachable_keeps_the_previous_certificate_everywhere() {
    let mut pebble = Pebble::start(PebbleOptions::default());
    let nginx = Nginx::start();
    let setup = Setup::new();
    setup.write_config(&config(&pebble, &nginx, &setup, ""));
    setup.run(&["renew"]).assert_code(0);
    let sha = stored_sha256(&setup);
    let state = sha256_tree(&setup.state_dir());
    pebble.stop();

    let run = setup.run(&["renew", "--force"]);
    run.assert_code(1);
    let expected = format!(
        "site [site.certherd.test, www.site.certherd.test]: renewal FAILED: ACME account at {dir}: {dir}: error sending request for url ({dir}): client error (Connect): tcp connect error: Connection refused (os error 111) (after 4 attempts)",
        dir = pebble.directory_url()
    );
    assert!(
        run.stdout.contains(&expected),
        "expected {expected}\n--- got\n{}",
        run.stdout
    );
    assert_eq!(stored_sha256(&setup), sha);
    assert_eq!(nginx.served_sha256().unwrap(), sha);
    // Target records may be refreshed, but no certificate version changed.
    let versions = |t: &std::collections::BTreeMap<PathBuf, String>| {
        t.iter()
            .filter(|(p, _)| p.to_string_lossy().contains("/certs/"))
            .map(|(p, h)| (p.clone(), h.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(versions(&sha256_tree(&setup.state_dir())), versions(&state));
}

#[test]
fn failing_challenge_names_the_domain_and_keeps_the_previous_certificate() {
    let pebble = Pebble::start(PebbleOptions::default());
    let nginx = Nginx::start();
    let setup = Setup::new();
    let good = config(&pebble, &nginx, &setup, "");
    setup.write_config(&good);
    setup.run(&["renew"]).assert_code(0);
    let sha = stored_sha256(&setup);

    // The responder now listens where Pebble does not look.
    let wrong = good.replace(
        &format!("127.0.0.1:{}", pebble.http_port()),
        &format!("127.0.0.1:{}", free_port()),
    );
    setup.write_config(&wrong);
    let run = setup.run(&["renew", "--force"]);
    run.assert_code(1);
    assert!(run.stdout.contains("site [site.certherd.test, www.site.certherd.test]: renewal FAILED: http-01 challenge for "), "{}", run.stdout);
    assert!(
        run.stdout
            .contains("(urn:ietf:params:acme:error:connection)"),
        "{}",
        run.stdout
    );
    assert_eq!(stored_sha256(&setup), sha);
    assert_eq!(nginx.served_sha256().unwrap(), sha);
}

#[test]
fn one_unwritable_target_fails_alone() {
    let pebble = Pebble::start(PebbleOptions::default());
    let nginx = Nginx::start();
    let setup = Setup::new();
    let missing = setup.dir.path().join("missing");
    let broken = format!(
        "      - name: broken\n        type: file\n        fullchain: {}/site.pem\n        key: {}/site.key\n",
        missing.display(),
        missing.display()
    );
    setup.write_config(&config(&pebble, &nginx, &setup, &broken));
    let run = setup.run(&["renew"]);
    run.assert_code(1);
    let sha = stored_sha256(&setup);
    assert!(
        run.stdout.contains(&format!(
            "  broken (file): FAILED: writing {}/site.pem: No such file or directory (os error 2)",
            missing.display()
        )),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains(&web_deployed_line(&nginx, &sha)),
        "{}",
        run.stdout
    );
    assert!(
        run.stderr.contains("target=broken"),
        "the log names the target:\n{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("certificate=site"),
        "the log names the certificate:\n{}",
        run.stderr
    );

    // The failed target is retried by the next run, the good one is left alone.
    std::fs::create_dir(&missing).unwrap();
    let retry = setup.run(&["renew"]);
    retry.assert_code(0);
    assert!(retry.stdout.contains("not due"), "{}", retry.stdout);
    assert!(
        retry.stdout.contains("  broken (file): deployed"),
        "{}",
        retry.stdout
    );
    assert!(
        retry
            .stdout
            .contains("  web (file): already held the current certificate"),
        "{}",
        retry.stdout
    );
    assert_eq!(
        std::fs::read_to_string(missing.join("site.pem")).unwrap(),
        std::fs::read_to_string(nginx.cert_path()).unwrap()
    );
    assert_eq!(mode(&missing.join("site.key")), 0o600);
}

#[test]
fn stopped_nginx_is_a_failed_reload_and_an_unreachable_target() {
    let pebble = Pebble::start(PebbleOptions::default());
    let mut nginx = Nginx::start();
    let setup = Setup::new();
    let yaml = config(&pebble, &nginx, &setup, "").replace("timeout: 10s", "timeout: 2s");
    setup.write_config(&yaml);
    setup.run(&["renew"]).assert_code(0);
    let old_key = std::fs::read(nginx.key_path()).unwrap();
    nginx.stop();

    let run = setup.run(&["renew", "--force"]);
    run.assert_code(1);
    assert!(run.stdout.contains("renewed (--force)"), "{}", run.stdout);
    let line = run
        .stdout
        .lines()
        .find(|l| l.starts_with("  web (file): "))
        .unwrap();
    assert!(
        line.starts_with(&format!(
            "  web (file): FAILED: reload `{}` exited 1: ",
            nginx.reload_argv().join(" ")
        )),
        "{line}"
    );
    // The files moved together: the new key matches the new certificate.
    assert_ne!(std::fs::read(nginx.key_path()).unwrap(), old_key);

    let verify = setup.run(&["verify"]);
    verify.assert_code(1);
    assert!(verify.stdout.contains(&format!("  web (file): verification UNREACHABLE: connect to {}: Connection refused (os error 111)", nginx.addr())), "{}", verify.stdout);
    let status = status_json(&setup, &[]);
    assert_eq!(
        status["certificates"][0]["targets"][0]["state"],
        "unreachable"
    );
}

#[test]
fn every_key_type_is_issued() {
    let pebble = Pebble::start(PebbleOptions::default());
    let setup = Setup::new();
    let mut certs = String::new();
    for kind in [
        "ecdsa-p256",
        "ecdsa-p384",
        "rsa-2048",
        "rsa-3072",
        "rsa-4096",
    ] {
        certs.push_str(&format!("  {kind}:\n    domains: [{kind}.certherd.test]\n    key: {kind}\n    challenge: standalone\n"));
    }
    setup.write_config(&format!(
        "state_dir: {}\nacme:\n  directory: {}\n  trust_roots: [{}]\nchallenges:\n  standalone:\n    type: http-01\n    listen: \"127.0.0.1:{}\"\ncertificates:\n{certs}",
        setup.state_dir().display(),
        pebble.directory_url(),
        pebble.ca_tls_root_path().display(),
        pebble.http_port()
    ));
    setup.run(&["renew"]).assert_code(0);
    let status = status_json(&setup, &["--offline"]);
    for c in status["certificates"].as_array().unwrap() {
        assert_eq!(c["key_type"], c["name"], "{c}");
    }
}

#[test]
fn webroot_solver_through_nginx() {
    let pebble = Pebble::start(PebbleOptions::default());
    let setup = Setup::new();
    let webroot = setup.dir.path().join("webroot");
    std::fs::create_dir(&webroot).unwrap();
    let nginx = Nginx::start_with_webroot(&webroot, pebble.http_port());
    let yaml = config(&pebble, &nginx, &setup, "").replace(
        &format!("    listen: \"127.0.0.1:{}\"", pebble.http_port()),
        &format!("    webroot: {}", webroot.display()),
    );
    setup.write_config(&yaml);
    setup.run(&["renew"]).assert_code(0);
    assert_eq!(nginx.served_sha256().unwrap(), stored_sha256(&setup));
    // The challenge files were removed.
    let left: Vec<_> = std::fs::read_dir(webroot.join(".well-known/acme-challenge"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "challenge files left behind: {left:?}");
}

#[test]
fn second_writer_is_refused_while_the_first_holds_the_lock() {
    let setup = Setup::new();
    std::fs::create_dir(setup.state_dir()).unwrap();
    setup.write_config(&format!(
        "state_dir: {}\nacme:\n  directory: https://127.0.0.1:1/dir\nchallenges:\n  s:\n    type: http-01\n    listen: \"127.0.0.1:0\"\ncertificates:\n  c:\n    domains: [c.certherd.test]\n    challenge: s\n",
        setup.state_dir().display()
    ));
    // Hold the lock the way certherd does: flock on the state directory.
    let holder = std::process::Command::new("flock")
        .arg(setup.state_dir())
        .args(["sleep", "30"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("flock(1) from util-linux");
    std::thread::sleep(Duration::from_millis(300));
    let start = std::time::Instant::now();
    let run = setup.run(&["deploy"]);
    let waited = start.elapsed();
    let mut holder = holder;
    let _ = holder.kill();
    let _ = holder.wait();
    run.assert_code(1);
    assert_eq!(
        run.stderr.trim_end().lines().last().unwrap(),
        format!(
            "certherd: state directory {} is locked by another certherd process (waited 10s); only one may write at a time",
            setup.state_dir().display()
        )
    );
    assert!(waited >= Duration::from_secs(10));
}

#[test]
fn layout_links_serves_through_links_and_switches_back_to_files() {
    let pebble = Pebble::start(PebbleOptions::default());
    let nginx = Nginx::start();
    let setup = Setup::new();
    let plain = config(&pebble, &nginx, &setup, "");
    let links = plain.replacen(
        "        reload:",
        "        layout: links\n        reload:",
        1,
    );
    setup.write_config(&links);
    let run = setup.run(&["renew"]);
    run.assert_code(0);
    let sha = stored_sha256(&setup);
    assert!(
        run.stdout.contains(&web_deployed_line(&nginx, &sha)),
        "{}",
        run.stdout
    );
    let dir = nginx.key_path().parent().unwrap().to_path_buf();
    let folder_name = format!(
        ".{}.certherd",
        nginx.cert_path().file_name().unwrap().to_string_lossy()
    );
    for (path, role) in [
        (nginx.cert_path(), "fullchain.pem"),
        (nginx.key_path(), "key.pem"),
    ] {
        assert_eq!(
            std::fs::read_link(&path).unwrap(),
            PathBuf::from(&folder_name).join("current").join(role),
            "{}",
            path.display()
        );
    }
    assert_eq!(mode(&nginx.key_path()), 0o600);
    let status = status_json(&setup, &["--offline"]);
    assert_eq!(status["certificates"][0]["targets"][0]["state"], "current");

    // Back to plain files: the next renew makes them regular files again
    // (reloading nginx, which still serves the same certificate) and
    // removes the folder with its copy of the key.
    setup.write_config(&plain);
    let status = status_json(&setup, &["--offline"]);
    assert_eq!(status["certificates"][0]["targets"][0]["state"], "stale");
    assert_eq!(
        status["certificates"][0]["targets"][0]["error"],
        "its files are not laid out as its `layout` says"
    );
    let back = setup.run(&["renew"]);
    back.assert_code(0);
    assert!(
        back.stdout.contains("  web (file): deployed"),
        "{}",
        back.stdout
    );
    assert!(std::fs::symlink_metadata(nginx.key_path())
        .unwrap()
        .is_file());
    assert!(std::fs::symlink_metadata(nginx.cert_path())
        .unwrap()
        .is_file());
    assert!(!dir.join(&folder_name).exists());
    assert_eq!(nginx.served_sha256().unwrap(), sha);
}

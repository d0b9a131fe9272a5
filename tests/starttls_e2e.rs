//! `verify.starttls` end to end against real mail servers from Debian on
//! loopback: Pebble issues, certherd deploys to Dovecot's (IMAP, POP3) and
//! Exim's (SMTP) certificate files, and `renew`, `verify` and `status`
//! prove by a STARTTLS handshake what each serves. OpenSSL's own STARTTLS
//! client confirms what the server serves, so the check is not certherd's
//! word alone.

mod support;

use std::process::Command;
use std::time::Duration;

use support::mail::{Dovecot, Exim};
use support::process::run_with_timeout;
use support::run::{site_config, status_json, stored_sha256, yaml_list, Setup, SITE};
use support::{find_binary, leaf_sha256_of_pem, Pebble, PebbleOptions};

fn config(pebble: &Pebble, setup: &Setup, targets: &str) -> String {
    site_config(pebble, setup, &[SITE], targets)
}

/// What `openssl s_client -starttls PROTO` is served at `addr`: the leaf's SHA-256.
fn openssl_starttls_leaf(addr: &str, proto: &str) -> String {
    let openssl = find_binary("openssl", "openssl");
    let out = run_with_timeout(
        Command::new(openssl)
            .args(["s_client", "-starttls", proto, "-connect", addr])
            .args(["-servername", SITE]),
        Duration::from_secs(20),
    )
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("-----BEGIN CERTIFICATE-----"),
        "openssl s_client -starttls {proto} {addr}:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    leaf_sha256_of_pem(&text)
}

/// Every target's entry in one `status --json` run, by name.
fn target_status(setup: &Setup) -> impl Fn(&str) -> serde_json::Value {
    let doc = status_json(setup, &[]);
    move |name| target_in(&doc, name)
}

fn target_in(doc: &serde_json::Value, name: &str) -> serde_json::Value {
    doc["certificates"][0]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no target {name} in {doc}"))
        .clone()
}

#[test]
fn dovecot_imap_and_pop3_are_verified_by_starttls() {
    let pebble = Pebble::start(PebbleOptions::default());
    let dovecot = Dovecot::start(true);
    let setup = Setup::new();
    let reload = yaml_list(&dovecot.reload_argv());
    let targets = format!(
        "      - name: imap
        type: file
        fullchain: {imap_cert}
        key: {imap_key}
        reload: {reload}
        verify: {{ connect: \"{imap}\", starttls: imap, timeout: 15s }}
      - name: pop3
        type: file
        fullchain: {pop3_cert}
        key: {pop3_key}
        reload: {reload}
        verify: {{ connect: \"{pop3}\", starttls: pop3, timeout: 15s }}
",
        imap_cert = dovecot.cert_path().display(),
        imap_key = dovecot.key_path().display(),
        pop3_cert = dovecot.pop3_cert_path().display(),
        pop3_key = dovecot.pop3_key_path().display(),
        imap = dovecot.imap_addr(),
        pop3 = dovecot.pop3_addr(),
    );
    setup.write_config(&config(&pebble, &setup, &targets));
    setup.run(&["check"]).assert_code(0);
    let placeholder = dovecot.placeholder().sha256();
    assert_eq!(
        openssl_starttls_leaf(&dovecot.imap_addr(), "imap"),
        placeholder
    );

    let renew = setup.run(&["renew"]);
    renew.assert_code(0);
    let sha = stored_sha256(&setup);
    for name in ["imap", "pop3"] {
        assert!(
            renew.stdout.contains(&format!(
                "  {name} (file): deployed; reload `{}` exited 0; verified: serves {sha}",
                dovecot.reload_argv().join(" ")
            )),
            "{}\n{}",
            renew.stdout,
            dovecot.log()
        );
    }
    assert_eq!(openssl_starttls_leaf(&dovecot.imap_addr(), "imap"), sha);
    assert_eq!(openssl_starttls_leaf(&dovecot.pop3_addr(), "pop3"), sha);

    let verify = setup.run(&["verify"]);
    verify.assert_code(0);
    let status = target_status(&setup);
    for name in ["imap", "pop3"] {
        let t = status(name);
        assert_eq!(t["state"], "current", "{t}");
        assert_eq!(t["served_sha256"], sha.as_str(), "{t}");
    }

    // The same endpoints on a Dovecot without TLS: no STARTTLS to ask for.
    let plain = Dovecot::start(false);
    let targets = format!(
        "      - name: imap
        type: file
        fullchain: {dir}/imap.pem
        verify: {{ connect: \"{imap}\", starttls: imap, timeout: 1s }}
      - name: pop3
        type: file
        fullchain: {dir}/pop3.pem
        verify: {{ connect: \"{pop3}\", starttls: pop3, timeout: 1s }}
",
        dir = setup.dir.path().display(),
        imap = plain.imap_addr(),
        pop3 = plain.pop3_addr(),
    );
    setup.write_config(&config(&pebble, &setup, &targets));
    let verify = setup.run(&["verify"]);
    verify.assert_code(1);
    let status = target_status(&setup);
    for (name, error) in [
        (
            "imap",
            format!(
                "imap {}: server does not advertise STARTTLS",
                plain.imap_addr()
            ),
        ),
        (
            "pop3",
            format!("pop3 {}: server does not advertise STLS", plain.pop3_addr()),
        ),
    ] {
        assert!(
            verify.stdout.contains(&format!(
                "  {name} (file): verification UNREACHABLE: {error}"
            )),
            "{}",
            verify.stdout
        );
        let t = status(name);
        assert_eq!(t["state"], "unreachable", "{t}");
        assert_eq!(t["error"], error.as_str(), "{t}");
    }
}

#[test]
fn exim_current_stale_and_without_starttls() {
    let pebble = Pebble::start(PebbleOptions::default());
    let setup = Setup::new();
    let mx = Exim::start(true, SITE);
    let mx_target = format!(
        "      - name: mx
        type: file
        fullchain: {cert}
        key: {key}
        reload: {reload}
        verify: {{ connect: \"{addr}\", starttls: smtp, timeout: 15s }}
",
        cert = mx.cert_path().display(),
        key = mx.key_path().display(),
        reload = yaml_list(&mx.reload_argv()),
        addr = mx.addr(),
    );
    setup.write_config(&config(&pebble, &setup, &mx_target));
    let renew = setup.run(&["renew"]);
    renew.assert_code(0);
    let sha = stored_sha256(&setup);
    assert!(
        renew.stdout.contains(&format!(
            "  mx (file): deployed; reload `{}` exited 0; verified: serves {sha}",
            mx.reload_argv().join(" ")
        )),
        "{}\n{}",
        renew.stdout,
        mx.log()
    );
    assert_eq!(openssl_starttls_leaf(&mx.addr(), "smtp"), sha);

    // A second server whose files certherd does not write (the operator
    // gave the wrong path): it serves another certificate.
    let backup = Exim::start(true, SITE);
    let elsewhere = setup.dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let backup_target = format!(
        "      - name: backup
        type: file
        fullchain: {dir}/mx.pem
        key: {dir}/mx.key
        verify: {{ connect: \"{addr}\", starttls: smtp, timeout: 1s }}
",
        dir = elsewhere.display(),
        addr = backup.addr(),
    );
    setup.write_config(&config(
        &pebble,
        &setup,
        &format!("{mx_target}{backup_target}"),
    ));
    let placeholder = backup.placeholder().sha256();
    let verify = setup.run(&["verify"]);
    verify.assert_code(1);
    assert!(
        verify
            .stdout
            .contains(&format!("  mx (file): verified: serves {sha}")),
        "{}",
        verify.stdout
    );
    assert!(
        verify.stdout.contains(&format!(
            "  backup (file): verification STALE: serves {placeholder}, expected {sha}"
        )),
        "{}",
        verify.stdout
    );
    let status = target_status(&setup);
    assert_eq!(status("mx")["state"], "current");
    let t = status("backup");
    assert_eq!(t["state"], "stale", "{t}");
    assert_eq!(t["served_sha256"], placeholder.as_str(), "{t}");
    assert_eq!(openssl_starttls_leaf(&backup.addr(), "smtp"), placeholder);

    // An MTA that offers no STARTTLS.
    let plain = Exim::start(false, SITE);
    setup.write_config(&config(
        &pebble,
        &setup,
        &backup_target.replace(&backup.addr(), &plain.addr()),
    ));
    let verify = setup.run(&["verify"]);
    verify.assert_code(1);
    let error = format!("smtp {}: server does not advertise STARTTLS", plain.addr());
    assert!(
        verify.stdout.contains(&format!(
            "  backup (file): verification UNREACHABLE: {error}"
        )),
        "{}",
        verify.stdout
    );
    let t = target_status(&setup)("backup");
    assert_eq!(t["state"], "unreachable", "{t}");
    assert_eq!(t["error"], error.as_str(), "{t}");
}

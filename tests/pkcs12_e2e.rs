//! PKCS#12 output end to end: a real Pebble issues, certherd writes a
//! `.p12` beside the PEM files of a `file` target and on an `ssh` target's
//! remote host, and the tools operators use open it: Debian's `openssl
//! pkcs12` (OpenSSL 3, without `-legacy`) and Java's `keytool`. The
//! password never reaches certherd's output.

mod support;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::process::run_with_timeout;
use support::run::{mode, site_config, stored_dir, stored_sha256, Setup, SITE};
use support::sshd::Sshd;
use support::{find_binary, leaf_sha256_of_pem, Pebble, PebbleOptions};

const PASSWORD: &str = "p12-secret-never-printed-7f3a";

fn config(pebble: &Pebble, setup: &Setup, targets: &str) -> String {
    site_config(pebble, setup, &[SITE], targets)
}

/// `openssl pkcs12 -in FILE -passin env:P12_PASS ARGS…` with `password`.
fn openssl_pkcs12(file: &Path, password: &str, args: &[&str]) -> std::process::Output {
    let openssl = find_binary("openssl", "openssl");
    run_with_timeout(
        Command::new(openssl)
            .arg("pkcs12")
            .arg("-in")
            .arg(file)
            .args(["-passin", "env:P12_PASS"])
            .args(args)
            .env("P12_PASS", password),
        Duration::from_secs(20),
    )
    .unwrap()
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// The base64 body of every PEM block with `tag` in `pem`, one string each.
fn pem_bodies(pem: &str, tag: &str) -> Vec<String> {
    let begin = format!("-----BEGIN {tag}-----");
    let end = format!("-----END {tag}-----");
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in pem.lines() {
        if line == begin {
            cur = Some(String::new());
        } else if line == end {
            out.extend(cur.take());
        } else if let Some(c) = cur.as_mut() {
            c.push_str(line.trim());
        }
    }
    out
}

/// What an operator checks of a `.p12` holding the stored certificate:
/// OpenSSL 3 opens it without `-legacy`, with modern algorithms; its leaf is
/// the stored one, then the chain; its key is the stored key; a wrong
/// password fails.
fn assert_opens_and_holds(p12: &Path, setup: &Setup) {
    let stored = stored_dir(setup);
    let info = openssl_pkcs12(p12, PASSWORD, &["-info", "-noout"]);
    let info_text = format!("{}{}", text(&info.stdout), text(&info.stderr));
    assert!(info.status.success(), "{info_text}");
    assert!(
        info_text.contains("MAC: sha256"),
        "MAC is HMAC-SHA256: {info_text}"
    );
    assert!(
        info_text.contains(
            "Shrouded Keybag: PBES2, PBKDF2, AES-256-CBC, Iteration 10000, PRF hmacWithSHA256"
        ),
        "the key bag: {info_text}"
    );
    assert!(
        info_text.contains(
            "PKCS7 Encrypted data: PBES2, PBKDF2, AES-256-CBC, Iteration 10000, PRF hmacWithSHA256"
        ),
        "the certificates: {info_text}"
    );

    let certs = openssl_pkcs12(p12, PASSWORD, &["-nokeys"]);
    assert!(certs.status.success(), "{}", text(&certs.stderr));
    let certs_pem = text(&certs.stdout);
    let fullchain = fs::read_to_string(stored.join("fullchain.pem")).unwrap();
    assert_eq!(
        leaf_sha256_of_pem(&certs_pem),
        leaf_sha256_of_pem(&fullchain)
    );
    let want: Vec<String> = pem_bodies(&fullchain, "CERTIFICATE");
    assert!(want.len() >= 2, "Pebble issues with an intermediate");
    assert_eq!(
        pem_bodies(&certs_pem, "CERTIFICATE"),
        want,
        "leaf then chain"
    );

    let key = openssl_pkcs12(p12, PASSWORD, &["-nocerts", "-nodes"]);
    assert!(key.status.success(), "{}", text(&key.stderr));
    assert!(
        text(&key.stdout).contains("friendlyName: site"),
        "{}",
        text(&key.stdout)
    );
    assert_eq!(
        pem_bodies(&text(&key.stdout), "PRIVATE KEY"),
        pem_bodies(
            &fs::read_to_string(stored.join("privkey.pem")).unwrap(),
            "PRIVATE KEY"
        ),
        "the stored key"
    );

    let wrong = openssl_pkcs12(p12, "not-the-password", &["-nokeys"]);
    assert!(!wrong.status.success(), "a wrong password must fail");
    assert!(
        text(&wrong.stderr).contains("Mac verify error: invalid password?"),
        "{}",
        text(&wrong.stderr)
    );
    assert_eq!(mode(p12), 0o600);
}

/// Java's keytool lists it as one private key entry under its friendly name.
fn assert_keytool_lists(p12: &Path) {
    let keytool = find_binary("keytool", "default-jre-headless");
    let out = run_with_timeout(
        Command::new(keytool)
            .args(["-list", "-storetype", "PKCS12", "-keystore"])
            .arg(p12)
            .args(["-storepass:env", "P12_PASS"])
            .env("P12_PASS", PASSWORD),
        Duration::from_secs(60),
    )
    .unwrap();
    let listed = text(&out.stdout);
    assert!(out.status.success(), "{listed}{}", text(&out.stderr));
    assert!(
        listed.contains("Your keystore contains 1 entry"),
        "{listed}"
    );
    assert!(listed.contains("site, "), "{listed}");
    assert!(listed.contains("PrivateKeyEntry"), "{listed}");
}

fn assert_password_never_printed(runs: &[&support::run::Run], setup: &Setup) {
    for run in runs {
        assert!(!run.all().contains(PASSWORD), "{}", run.all());
    }
    for (path, _) in support::sha256_tree(&setup.state_dir()) {
        let full = setup.state_dir().join(&path);
        if full.is_file() {
            let bytes = fs::read(&full).unwrap();
            assert!(
                !String::from_utf8_lossy(&bytes).contains(PASSWORD),
                "the password is in {}",
                full.display()
            );
        }
    }
}

#[test]
fn a_file_target_writes_a_pkcs12_that_openssl_and_keytool_open() {
    let pebble = Pebble::start(PebbleOptions::default());
    let setup = Setup::new();
    let out = setup.dir.path().join("out");
    fs::create_dir(&out).unwrap();
    let password_file = setup.dir.path().join("p12.pass");
    fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    let p12 = out.join("site.p12");
    setup.write_config(&config(
        &pebble,
        &setup,
        &format!(
            "      - name: java
        type: file
        fullchain: {out}/site.pem
        pkcs12: {p12}
        pkcs12_password: {{ file: {pw} }}
",
            out = out.display(),
            p12 = p12.display(),
            pw = password_file.display()
        ),
    ));
    let check = setup.run(&["check"]);
    check.assert_code(0);

    let first = setup.run(&["-v", "renew"]);
    first.assert_code(0);
    assert!(
        first.stdout.contains("  java (file): deployed"),
        "{}",
        first.stdout
    );
    assert_opens_and_holds(&p12, &setup);
    assert_eq!(
        leaf_sha256_of_pem(&text(&openssl_pkcs12(&p12, PASSWORD, &["-nokeys"]).stdout)),
        stored_sha256(&setup),
        "the leaf `status` reports"
    );
    assert_keytool_lists(&p12);
    let mut names: Vec<_> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["site.p12", "site.pem"], "no temp file is left");

    // Nothing due and the file holds the certificate (decrypted and
    // compared, as its bytes differ on every write): it is not rewritten.
    let written = fs::read(&p12).unwrap();
    let second = setup.run(&["--log-format", "json", "-v", "renew"]);
    second.assert_code(0);
    assert!(
        second
            .stdout
            .contains("  java (file): already held the current certificate"),
        "{}",
        second.stdout
    );
    assert_eq!(fs::read(&p12).unwrap(), written, "not rewritten");

    // A new password: the file no longer holds the certificate under it,
    // and the next pass writes it again.
    let new_password = format!("{PASSWORD}-2");
    fs::write(&password_file, &new_password).unwrap();
    let third = setup.run(&["renew"]);
    third.assert_code(0);
    assert!(
        third.stdout.contains("  java (file): deployed"),
        "{}",
        third.stdout
    );
    assert!(openssl_pkcs12(&p12, &new_password, &["-nokeys"])
        .status
        .success());
    assert!(!openssl_pkcs12(&p12, PASSWORD, &["-nokeys"])
        .status
        .success());
    assert!(!third.all().contains(&new_password));

    let status = setup.run(&["status", "--offline"]);
    assert_password_never_printed(&[&check, &first, &second, &third, &status], &setup);
}

#[test]
fn an_ssh_target_writes_a_pkcs12_on_the_remote_host() {
    let pebble = Pebble::start(PebbleOptions::default());
    let setup = Setup::new();
    let sshd = Sshd::start();
    let known_hosts = setup.dir.path().join("known_hosts");
    fs::write(&known_hosts, format!("{}\n", sshd.known_hosts_line())).unwrap();
    let remote = sshd.remote_dir();
    let p12 = remote.join("site.p12");
    setup.write_config(&config(
        &pebble,
        &setup,
        &format!(
            "      - name: appliance
        type: ssh
        host: 127.0.0.1
        port: {port}
        identity: {id}
        known_hosts: {kh}
        fullchain: {remote}/site.pem
        pkcs12: {p12}
        pkcs12_password: {{ env: CERTHERD_TEST_P12_PASSWORD }}
        pkcs12_name: site
",
            port = sshd.port(),
            id = sshd.client_key_path().display(),
            kh = known_hosts.display(),
            remote = remote.display(),
            p12 = p12.display(),
        ),
    ));
    let run = |args: &[&str]| {
        let out = support::certherd_cmd()
            .arg("--config")
            .arg(setup.config_path())
            .args(args)
            .env("CERTHERD_TEST_P12_PASSWORD", PASSWORD)
            .output()
            .unwrap();
        support::run::Run::from(out)
    };
    let dry = run(&["renew", "--dry-run"]);
    dry.assert_code(0);
    let renew = run(&["-v", "renew"]);
    renew.assert_code(0);
    assert!(
        renew.stdout.contains("  appliance (ssh): deployed"),
        "{}",
        renew.stdout
    );
    assert_opens_and_holds(&p12, &setup);
    let mut names: Vec<_> = fs::read_dir(&remote)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["site.p12", "site.pem"], "no temp file is left");
    assert_eq!(
        fs::read_to_string(remote.join("site.pem")).unwrap(),
        fs::read_to_string(stored_dir(&setup).join("fullchain.pem")).unwrap()
    );
    assert_password_never_printed(&[&dry, &renew], &setup);
}

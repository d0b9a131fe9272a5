//! What docs/security.md promises, checked end to end: private keys and
//! secrets never reach any output (human, JSON, text or JSON logs at the
//! most verbose level, errors), key files are 0600 wherever certherd writes
//! them, and a configuration file every user may change is refused.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use support::run::{config, mode, Setup};
use support::{certherd_cmd, free_port, Nginx, Pebble, PebbleOptions};

/// The value behind `{ env: HOOK_TOKEN }`: a notify webhook's credential.
const HOOK_SECRET: &str = "Bearer s3cr3t-hook-token-that-must-never-be-printed";

/// Every file under `dir` whose name says it holds a private key.
fn key_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() && !p.is_symlink() {
            key_files(&p, out);
        } else if p.file_name().unwrap().to_string_lossy().contains("key")
            || p.file_name().unwrap() == "account.json"
        {
            out.push(p);
        }
    }
}

/// The base64 lines of a PEM private key (or, for the ACME account, its
/// PKCS#8 key in chunks): any one of them in an output would be a leak.
fn secret_lines(pem: &str) -> Vec<String> {
    if let Ok(account) = serde_json::from_str::<serde_json::Value>(pem) {
        let key = account["key_pkcs8"].as_str().expect("the account's key");
        return key
            .as_bytes()
            .chunks(24)
            .filter(|c| c.len() >= 16)
            .map(|c| String::from_utf8(c.to_vec()).unwrap())
            .collect();
    }
    pem.lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .map(str::to_string)
        .collect()
}

#[test]
fn no_key_or_secret_reaches_any_output_and_key_files_are_private() {
    let pebble = Pebble::start(PebbleOptions::default());
    let nginx = Nginx::start();
    let setup = Setup::new();
    // A notifier whose receiver is down: its failure is logged, its
    // credential must not be.
    let dead = free_port();
    let base = config(&pebble, &nginx, &setup, "");
    setup.write_config(&format!(
        "{base}notify:\n  - type: webhook\n    url: http://127.0.0.1:{dead}/hook\n    headers: {{ Authorization: {{ env: HOOK_TOKEN }} }}\n"
    ));
    let run = |args: &[&str]| {
        let out = certherd_cmd()
            .env("HOOK_TOKEN", HOOK_SECRET)
            .arg("--config")
            .arg(setup.config_path())
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            format!(
                "{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let mut outputs = Vec::new();
    for args in [
        &["-v", "renew"][..],
        &["-v", "--log-format", "json", "renew", "--force", "--json"],
        &["-v", "renew", "--dry-run"],
        &["-v", "deploy", "--json"],
        &["-v", "--log-format", "json", "verify"],
        &["-v", "status"],
        &["-v", "status", "--json"],
        &["-v", "status", "--json", "--offline"],
        &["-v", "renew", "--cert", "missing"],
        &["check"],
    ] {
        let (code, out) = run(args);
        assert!(code <= 2, "{args:?} exited {code}:\n{out}");
        outputs.push((args.join(" "), out));
    }
    let mut keys = Vec::new();
    key_files(&setup.state_dir(), &mut keys);
    assert!(
        keys.len() >= 3,
        "the account key and two certificate keys: {keys:?}"
    );
    keys.push(nginx.key_path());
    for k in &keys {
        assert_eq!(mode(k), 0o600, "{}", k.display());
        let pem = fs::read_to_string(k).unwrap();
        let lines = secret_lines(&pem);
        assert!(!lines.is_empty(), "{} holds no key", k.display());
        for (args, out) in &outputs {
            assert!(
                !out.contains("PRIVATE KEY"),
                "`{args}` printed a key:\n{out}"
            );
            for l in &lines {
                assert!(
                    !out.contains(l.as_str()),
                    "`{args}` printed part of {}:\n{out}",
                    k.display()
                );
            }
        }
    }
    for (args, out) in &outputs {
        assert!(
            !out.contains(HOOK_SECRET),
            "`{args}` printed the secret:\n{out}"
        );
        assert!(
            !out.contains("s3cr3t"),
            "`{args}` printed part of the secret:\n{out}"
        );
    }
    // The failed notification was reported (so the scan above saw it).
    let (_, first) = &outputs[0];
    assert!(first.contains(&format!("127.0.0.1:{dead}")), "{first}");
}

#[test]
fn a_configuration_file_every_user_may_change_is_refused() {
    let pebble = Pebble::start(PebbleOptions::default());
    let nginx = Nginx::start();
    let setup = Setup::new();
    setup.write_config(&config(&pebble, &nginx, &setup, ""));
    let path = setup.config_path();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
    let run = setup.run(&["renew"]);
    run.assert_code(2);
    assert_eq!(
        run.stderr.trim_end(),
        format!(
            "{p}: the configuration file is writable by every user (mode 0666); it names \
             commands certherd runs and where keys go, so certherd refuses it (chmod o-w {p})",
            p = path.display()
        )
    );
    assert!(!setup.state_dir().exists(), "nothing was attempted");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
    setup.run(&["check"]).assert_code(0);
}

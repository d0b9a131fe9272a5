//! dns-01 end to end through the certherd binary: Pebble's validation
//! authority asks a real BIND9, certherd updates it with TSIG, and the
//! wildcard certificate is deployed to a real nginx and verified.

mod support;

use std::time::{Duration, Instant};

use support::bind::{Bind, BindOptions, CNAME_TARGET, DELEGATED_ZONE, KEY_NAME, ZONE};
use support::run::{status_json, stored_sha256, yaml_list, Setup};
use support::{Nginx, Pebble, PebbleOptions};

const WRONG_SECRET: &str = "d3Jvbmcgc2VjcmV0IHdyb25nIHNlY3JldCB3cm9uZyE=";

/// A configuration issuing `domains` through the rfc2136 solver `bind`,
/// deployed to `nginx` and verified with SNI `sni`.
fn config(
    pebble: &Pebble,
    bind: &Bind,
    nginx: &Nginx,
    setup: &Setup,
    secret: &str,
    domains: &str,
    sni: &str,
) -> String {
    let secret_file = setup.dir.path().join("tsig.b64");
    std::fs::write(&secret_file, secret).unwrap();
    format!(
        r#"state_dir: {state}
acme:
  directory: {dir}
  trust_roots: [{root}]
challenges:
  bind:
    type: dns-01
    propagation_timeout: 30s
    rfc2136:
      server: "{server}"
      tsig: {{ name: {KEY_NAME}, algorithm: {alg}, secret: {{ file: {secret} }} }}
certificates:
  wild:
    domains: {domains}
    challenge: bind
    targets:
      - name: web
        type: file
        fullchain: {cert}
        key: {key}
        reload: {reload}
        verify: {{ connect: "{addr}", server_name: {sni}, timeout: 10s }}
"#,
        state = setup.state_dir().display(),
        dir = pebble.directory_url(),
        root = pebble.ca_tls_root_path().display(),
        server = bind.server_addr(),
        alg = bind.tsig_algorithm(),
        secret = secret_file.display(),
        cert = nginx.cert_path().display(),
        key = nginx.key_path().display(),
        reload = yaml_list(&nginx.reload_argv()),
        addr = nginx.addr(),
    )
}

const WILDCARD: &str = r#"[example.test, "*.example.test"]"#;

fn pebble_asking(server: std::net::SocketAddr) -> Pebble {
    Pebble::start(PebbleOptions {
        dns_server: Some(server),
        ..PebbleOptions::default()
    })
}

#[test]
fn a_wildcard_certificate_is_issued_deployed_and_served() {
    let bind = Bind::start(BindOptions::default());
    let pebble = pebble_asking(bind.server_addr());
    let nginx = Nginx::start();
    let setup = Setup::new();
    setup.write_config(&config(
        &pebble,
        &bind,
        &nginx,
        &setup,
        bind.tsig_secret(),
        WILDCARD,
        "anything.example.test",
    ));

    let dry = setup.run(&["renew", "--dry-run"]);
    dry.assert_code(0);
    assert_eq!(
        bind.zone_txt_records(ZONE),
        Vec::<String>::new(),
        "a dry run leaves no record"
    );

    let start = Instant::now();
    let run = setup.run(&["renew"]);
    eprintln!(
        "wildcard issuance, deployment and verification took {:?}",
        start.elapsed()
    );
    run.assert_code(0);
    let sha = stored_sha256(&setup);
    assert!(
        run.stdout
            .contains("wild [example.test, *.example.test]: renewed (no certificate yet)"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains(&format!("verified: serves {sha}")),
        "{}",
        run.stdout
    );
    assert_eq!(
        support::served_leaf_sha256(&nginx.addr(), "anything.example.test").unwrap(),
        sha
    );
    assert_eq!(
        bind.zone_txt_records(ZONE),
        Vec::<String>::new(),
        "the zone holds no _acme-challenge record"
    );
}

#[test]
fn the_ca_is_told_only_when_the_lagging_secondary_answers() {
    let bind = Bind::start(BindOptions {
        lagging_secondary: true,
        ..BindOptions::default()
    });
    // Pebble asks the secondary: had certherd told it before the secondary
    // had the records, validation would have failed.
    let pebble = pebble_asking(bind.secondary_addr().expect("secondary"));
    let nginx = Nginx::start();
    let setup = Setup::new();
    setup.write_config(&config(
        &pebble,
        &bind,
        &nginx,
        &setup,
        bind.tsig_secret(),
        WILDCARD,
        "example.test",
    ));

    let mut child = support::certherd_cmd()
        .arg("--config")
        .arg(setup.config_path())
        .arg("renew")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Both values reach the primary; the secondary lags until synced.
    support::process::poll_until(
        "both values on the primary",
        Duration::from_secs(10),
        || match bind.txt("_acme-challenge.example.test.").len() {
            2 => Ok(()),
            n => Err(format!("{n} values")),
        },
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        child.try_wait().unwrap(),
        None,
        "certherd did not wait for the secondary"
    );
    let synced = Instant::now();
    bind.sync_secondary();
    let status = child.wait().unwrap();
    eprintln!(
        "certherd finished {:?} after the secondary was synced",
        synced.elapsed()
    );
    let mut stdout = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    assert_eq!(status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("renewed (no certificate yet)"), "{stdout}");
    assert_eq!(nginx.served_sha256().unwrap(), stored_sha256(&setup));
    assert_eq!(bind.zone_txt_records(ZONE), Vec::<String>::new());
}

#[test]
fn a_cname_delegates_the_challenge_to_another_zone() {
    let bind = Bind::start(BindOptions {
        cname_delegation: true,
        recursive_resolver: true,
        ..BindOptions::default()
    });
    // Like a CA, Pebble asks a recursive resolver, which follows the CNAME.
    let pebble = pebble_asking(bind.resolver_addr().expect("resolver"));
    let nginx = Nginx::start();
    let setup = Setup::new();
    setup.write_config(&config(
        &pebble,
        &bind,
        &nginx,
        &setup,
        bind.tsig_secret(),
        "[app.example.test]",
        "app.example.test",
    ));
    let run = setup.run(&["-v", "renew"]);
    run.assert_code(0);
    assert!(
        run.stdout.contains("wild [app.example.test]: renewed"),
        "{}",
        run.stdout
    );
    assert!(
        run.stderr.contains(CNAME_TARGET),
        "the log says where the record went:\n{}",
        run.stderr
    );
    assert_eq!(bind.zone_txt_records(ZONE), Vec::<String>::new());
    assert_eq!(bind.zone_txt_records(DELEGATED_ZONE), Vec::<String>::new());
}

#[test]
fn a_wrong_tsig_secret_fails_cleanly_and_keeps_the_previous_certificate() {
    let bind = Bind::start(BindOptions::default());
    let pebble = pebble_asking(bind.server_addr());
    let nginx = Nginx::start();
    let setup = Setup::new();
    let good = config(
        &pebble,
        &bind,
        &nginx,
        &setup,
        bind.tsig_secret(),
        WILDCARD,
        "example.test",
    );
    setup.write_config(&good);
    setup.run(&["renew"]).assert_code(0);
    let sha = stored_sha256(&setup);

    setup.write_config(&config(
        &pebble,
        &bind,
        &nginx,
        &setup,
        WRONG_SECRET,
        WILDCARD,
        "example.test",
    ));
    let run = setup.run(&["renew", "--force"]);
    run.assert_code(1);
    let expected = "wild [example.test, *.example.test]: renewal FAILED: dns-01: adding TXT \"";
    assert!(run.stdout.contains(expected), "{}", run.stdout);
    assert!(run.stdout.contains(&format!(
        "at _acme-challenge.example.test.: DNS UPDATE to {} with TSIG key certherd. was refused: NOTAUTH (TSIG error BADSIG): the server does not accept this key's secret",
        bind.server_addr()
    )), "{}", run.stdout);
    assert!(
        !run.all().contains(WRONG_SECRET) && !run.all().contains(bind.tsig_secret()),
        "a secret in the output"
    );
    assert_eq!(bind.zone_txt_records(ZONE), Vec::<String>::new());
    assert_eq!(stored_sha256(&setup), sha);
    assert_eq!(nginx.served_sha256().unwrap(), sha);
}

#[test]
fn the_exec_backend_publishes_through_nsupdate() {
    let bind = Bind::start(BindOptions::default());
    let pebble = pebble_asking(bind.server_addr());
    let setup = Setup::new();
    let log = setup.dir.path().join("hook.log");
    let mut hooks = Vec::new();
    for (name, op) in [("add", "add"), ("remove", "delete")] {
        let path = setup.dir.path().join(format!("dns-{name}"));
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\nset -e\necho \"{name} $CERTHERD_DNS_FQDN $CERTHERD_DNS_ZONE\" >> {log}\nprintf 'server {ip} 53\\nzone %s\\nupdate {op} %s 60 TXT \"%s\"\\nsend\\n' \"$CERTHERD_DNS_ZONE\" \"$CERTHERD_DNS_FQDN\" \"$CERTHERD_DNS_VALUE\" | nsupdate -y {key}\n",
                log = log.display(),
                ip = bind.server_addr().ip(),
                key = bind.nsupdate_key(),
            ),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        hooks.push(path);
    }
    setup.write_config(&format!(
        "state_dir: {state}\nacme:\n  directory: {dir}\n  trust_roots: [{root}]\nchallenges:\n  hook:\n    type: dns-01\n    resolver: \"{server}\"\n    exec:\n      add: [{add}]\n      remove: [{remove}]\n      timeout: 20s\ncertificates:\n  wild:\n    domains: {WILDCARD}\n    challenge: hook\n",
        state = setup.state_dir().display(),
        dir = pebble.directory_url(),
        root = pebble.ca_tls_root_path().display(),
        server = bind.server_addr(),
        add = hooks[0].display(),
        remove = hooks[1].display(),
    ));
    setup.run(&["renew"]).assert_code(0);
    let calls = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        calls,
        "add _acme-challenge.example.test. example.test.\nadd _acme-challenge.example.test. example.test.\n\
         remove _acme-challenge.example.test. example.test.\nremove _acme-challenge.example.test. example.test.\n"
    );
    assert_eq!(bind.zone_txt_records(ZONE), Vec::<String>::new());
    assert_eq!(
        status_json(&setup, &["--offline"])["certificates"][0]["due"],
        false
    );
}

#[test]
fn sigterm_during_the_propagation_wait_removes_every_record() {
    let bind = Bind::start(BindOptions {
        lagging_secondary: true,
        ..BindOptions::default()
    });
    let pebble = pebble_asking(bind.secondary_addr().expect("secondary"));
    let nginx = Nginx::start();
    let setup = Setup::new();
    setup.write_config(&config(
        &pebble,
        &bind,
        &nginx,
        &setup,
        bind.tsig_secret(),
        WILDCARD,
        "example.test",
    ));
    let child = support::certherd_cmd()
        .arg("--config")
        .arg(setup.config_path())
        .arg("renew")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    support::process::poll_until(
        "both values on the primary",
        Duration::from_secs(10),
        || match bind.txt("_acme-challenge.example.test.").len() {
            2 => Ok(()),
            n => Err(format!("{n} values")),
        },
    )
    .unwrap();
    // SAFETY: kill(2) on the pid of a child we spawned and have not waited for.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("certherd: interrupted by SIGTERM; cleaning up"),
        "{stderr}"
    );
    assert_eq!(
        bind.txt("_acme-challenge.example.test."),
        Vec::<String>::new()
    );
    assert_eq!(bind.zone_txt_records(ZONE), Vec::<String>::new());
    assert_eq!(
        status_json(&setup, &["--offline"])["certificates"][0]["serial"],
        serde_json::Value::Null
    );
}

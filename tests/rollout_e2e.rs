//! Rollouts end to end: one certificate from a real Pebble to a fleet of
//! ten "hosts" — each a real sshd on its own loopback port, in front of its
//! own real nginx — in two waves, every host verified by handshake. A host
//! whose nginx keeps serving the old certificate halts the rollout after
//! its wave and is rolled back; the next `renew` finishes the job.

mod support;

use std::fs;
use std::path::PathBuf;

use support::run::{site_config, status_json, stored_sha256, yaml_list, Setup, SITE};
use support::sshd::Sshd;
use support::Nginx;
use support::{Pebble, PebbleOptions};

/// One host: an sshd certherd reaches, and the nginx it reloads there.
struct Host {
    name: String,
    sshd: Sshd,
    nginx: Nginx,
}

impl Host {
    fn start(i: usize) -> Host {
        Host {
            name: format!("web{i}"),
            sshd: Sshd::start(),
            nginx: Nginx::start(),
        }
    }

    /// The files certherd writes. A "broken" host gets its files somewhere
    /// its nginx does not read them from: it keeps serving the old ones.
    fn files(&self, broken: bool) -> (PathBuf, PathBuf) {
        if broken {
            let d = self.sshd.remote_dir();
            (d.join("site.pem"), d.join("site.key"))
        } else {
            (self.nginx.cert_path(), self.nginx.key_path())
        }
    }

    fn yaml(&self, broken: bool) -> String {
        let (fullchain, key) = self.files(broken);
        let known_hosts = self.sshd.dir().join("known_hosts");
        fs::write(&known_hosts, format!("{}\n", self.sshd.known_hosts_line())).unwrap();
        self.sshd.target_yaml(
            &self.name,
            &known_hosts,
            &fullchain,
            &key,
            &format!(
                "        reload: {}\n        verify: {{ connect: \"{}\", server_name: {SITE}, timeout: 3s }}\n",
                yaml_list(&self.nginx.reload_argv()),
                self.nginx.addr()
            ),
        )
    }
}

fn config(
    pebble: &Pebble,
    setup: &Setup,
    hosts: &[Host],
    broken: Option<&str>,
    rollout: &str,
) -> String {
    let targets: String = hosts
        .iter()
        .map(|h| h.yaml(broken == Some(h.name.as_str())))
        .collect();
    site_config(
        pebble,
        setup,
        &[SITE],
        &format!("{targets}    rollout:\n{rollout}"),
    )
}

/// web0..web4 first, then web5..web9 as the last wave (not listed).
const TWO_WAVES: &str = "      waves: [[web0, web1, web2, web3, web4]]
      max_parallel: 3
      on_failure: halt
      rollback: true
";

/// The line of `target` in the human report.
fn line<'a>(stdout: &'a str, target: &str) -> &'a str {
    let prefix = format!("  {target} (ssh");
    stdout
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no line for {target} in:\n{stdout}"))
}

/// The position in certherd's log of the first line about `target` that
/// contains `what`.
fn log_position(stderr: &str, target: &str, what: &str) -> usize {
    let needle = format!("target={target}");
    stderr
        .lines()
        .position(|l| l.contains(what) && l.split_whitespace().any(|w| w == needle))
        .unwrap_or_else(|| panic!("no {what:?} logged for {target}:\n{stderr}"))
}

#[test]
fn a_rollout_in_two_waves_halts_on_a_broken_host_and_rolls_it_back() {
    let pebble = Pebble::start(PebbleOptions::default());
    let setup = Setup::new();
    let hosts: Vec<Host> = (0..10).map(Host::start).collect();

    // 1. Every host gets the first certificate, wave after wave.
    setup.write_config(&config(&pebble, &setup, &hosts, None, TWO_WAVES));
    let first = setup.run(&["renew"]);
    first.assert_code(0);
    let old = stored_sha256(&setup);
    for h in &hosts {
        assert_eq!(h.nginx.served_sha256().unwrap(), old, "{}", h.name);
        assert!(
            line(&first.stdout, &h.name).contains(&format!("verified: serves {old}")),
            "{}",
            first.stdout
        );
    }
    assert!(line(&first.stdout, "web0").starts_with("  web0 (ssh, wave 1): deployed"));
    assert!(line(&first.stdout, "web9").starts_with("  web9 (ssh, wave 2): deployed"));
    assert!(
        first.stdout.contains(
            "  rollout: wave 1: web0, web1, web2, web3, web4; wave 2: web5, web6, web7, web8, web9; \
             at most 3 at once; halt on failure; roll back failed targets"
        ),
        "{}",
        first.stdout
    );
    // The second wave starts only once every host of the first serves the
    // certificate.
    let last_verified_in_wave_1 = (0..5)
        .map(|i| log_position(&first.stderr, &format!("web{i}"), "verified"))
        .max()
        .unwrap();
    let first_deployed_in_wave_2 = (5..10)
        .map(|i| log_position(&first.stderr, &format!("web{i}"), "deployed"))
        .min()
        .unwrap();
    assert!(
        last_verified_in_wave_1 < first_deployed_in_wave_2,
        "wave 2 began before wave 1 was verified:\n{}",
        first.stderr
    );

    // 2. web3 breaks: its nginx no longer reads the files certherd writes.
    setup.write_config(&config(&pebble, &setup, &hosts, Some("web3"), TWO_WAVES));
    let reloads_before: Vec<usize> = hosts.iter().map(|h| h.nginx.reload_count()).collect();
    let second = setup.run(&["renew", "--force", "--json"]);
    second.assert_code(1);
    let new = stored_sha256(&setup);
    assert_ne!(new, old);
    let report: serde_json::Value = serde_json::from_str(&second.stdout)
        .unwrap_or_else(|e| panic!("renew --json is not JSON ({e}):\n{}", second.stdout));
    let targets = report["certificates"][0]["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 10);
    for (i, (t, h)) in targets.iter().zip(&hosts).enumerate() {
        assert_eq!(t["name"], h.name.as_str());
        let served = h.nginx.served_sha256().unwrap();
        match i {
            3 => {
                // Deployed, not served, rolled back and verified on the old one.
                assert_eq!(t["action"]["action"], "deployed", "{t}");
                assert_eq!(t["verdict"]["state"], "stale", "{t}");
                assert_eq!(t["verdict"]["served_sha256"], old.as_str(), "{t}");
                assert_eq!(t["rollback"]["sha256"], old.as_str(), "{t}");
                assert_eq!(t["rollback"]["error"], serde_json::Value::Null, "{t}");
                assert_eq!(t["rollback"]["verdict"]["state"], "current", "{t}");
                assert_eq!(served, old);
                let (fullchain, _) = h.files(true);
                assert_eq!(
                    support::leaf_sha256_of_pem(&fs::read_to_string(fullchain).unwrap()),
                    old,
                    "the broken host's files hold the previous certificate again"
                );
            }
            0..=4 => {
                assert_eq!(t["action"]["action"], "deployed", "{t}");
                assert_eq!(t["verdict"]["state"], "current", "{t}");
                assert_eq!(t["verdict"]["served_sha256"], new.as_str(), "{t}");
                assert_eq!(served, new, "{}", h.name);
            }
            _ => {
                // The second wave is not touched: no write, no reload.
                assert_eq!(t["wave"], 2, "{t}");
                assert_eq!(t["action"]["action"], "not_reached", "{t}");
                assert_eq!(
                    t["action"]["reason"], "the rollout halted after wave 1 because web3 failed",
                    "{t}"
                );
                assert_eq!(served, old, "{}", h.name);
                assert_eq!(
                    support::leaf_sha256_of_pem(&fs::read_to_string(h.nginx.cert_path()).unwrap()),
                    old
                );
                assert_eq!(h.nginx.reload_count(), reloads_before[i], "{}", h.name);
            }
        }
    }

    // `status` reads it back: web3 and the second wave serve the old
    // certificate, and web3 says why.
    let status = status_json(&setup, &[]);
    let st = status["certificates"][0]["targets"].as_array().unwrap();
    for (i, t) in st.iter().enumerate() {
        let want = if (0..=4).contains(&i) && i != 3 {
            "current"
        } else {
            "stale"
        };
        assert_eq!(t["state"], want, "{t}");
    }
    let why = st[3]["last_error"].as_str().unwrap();
    assert!(
        why.contains(&format!(
            "certificate {new} failed on this target; rolled back to {old}"
        )),
        "{why}"
    );
    let human = setup.run(&["status"]);
    assert!(human.stdout.contains("  web3: stale"), "{}", human.stdout);
    assert!(
        human
            .stdout
            .contains("    last deployment failed: certificate"),
        "{}",
        human.stdout
    );

    // 3. web3 is mended; the next `renew` (nothing due) retries web3 and
    // reaches the second wave.
    setup.write_config(&config(&pebble, &setup, &hosts, None, TWO_WAVES));
    let third = setup.run(&["renew"]);
    third.assert_code(0);
    assert!(
        third.stdout.contains("site [site.certherd.test]: not due"),
        "{}",
        third.stdout
    );
    for (i, h) in hosts.iter().enumerate() {
        assert_eq!(h.nginx.served_sha256().unwrap(), new, "{}", h.name);
        let l = line(&third.stdout, &h.name);
        if i == 3 || i >= 5 {
            assert!(l.contains(": deployed;"), "{l}");
        } else {
            assert!(l.contains("already held the current certificate"), "{l}");
        }
    }
    let status = status_json(&setup, &[]);
    for t in status["certificates"][0]["targets"].as_array().unwrap() {
        assert_eq!(t["state"], "current", "{t}");
        assert_eq!(t["last_error"], serde_json::Value::Null, "{t}");
    }
}

#[test]
fn on_failure_continue_goes_on_to_later_waves() {
    let pebble = Pebble::start(PebbleOptions::default());
    let setup = Setup::new();
    let hosts: Vec<Host> = (0..3).map(Host::start).collect();
    let rollout = "      waves: [[web0], [web1]]
      on_failure: continue
";
    // web0 is broken from the start, without rollback: it is reported,
    // and the later waves still get the certificate.
    setup.write_config(&config(&pebble, &setup, &hosts, Some("web0"), rollout));
    let run = setup.run(&["renew"]);
    run.assert_code(1);
    let sha = stored_sha256(&setup);
    assert!(
        line(&run.stdout, "web0").contains("verification STALE"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("ROLLED BACK"), "{}", run.stdout);
    for h in &hosts[1..] {
        assert_eq!(h.nginx.served_sha256().unwrap(), sha, "{}", h.name);
    }
    assert!(line(&run.stdout, "web2").starts_with("  web2 (ssh, wave 3): deployed"));
}

#[test]
fn rollback_without_an_earlier_certificate_says_so() {
    let pebble = Pebble::start(PebbleOptions::default());
    let setup = Setup::new();
    let hosts: Vec<Host> = (0..2).map(Host::start).collect();
    let rollout = "      waves: [[web0]]
      on_failure: halt
      rollback: true
";
    setup.write_config(&config(&pebble, &setup, &hosts, Some("web0"), rollout));
    let run = setup.run(&["renew"]);
    run.assert_code(1);
    let l = line(&run.stdout, "web0");
    assert!(
        l.contains(
            "rollback FAILED: no rollback: certherd has no record of an earlier certificate on this target"
        ),
        "{l}"
    );
    assert!(
        line(&run.stdout, "web1")
            .contains("NOT REACHED: the rollout halted after wave 1 because web0 failed"),
        "{}",
        run.stdout
    );
    // The placeholder is still what web1 serves: it was not touched.
    assert_eq!(
        hosts[1].nginx.served_sha256().unwrap(),
        hosts[1].nginx.placeholder().sha256()
    );
}

#[test]
fn dry_run_shows_the_waves_and_checks_every_host() {
    let pebble = Pebble::start(PebbleOptions::default());
    let setup = Setup::new();
    let hosts: Vec<Host> = (0..3).map(Host::start).collect();
    let rollout = "      waves: [[web2], [web0]]
      max_parallel: 2
";
    setup.write_config(&config(&pebble, &setup, &hosts, None, rollout));
    let tree_before = support::sha256_tree(setup.dir.path());
    let run = setup.run(&["renew", "--dry-run"]);
    run.assert_code(0);
    let lines: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.starts_with("  web"))
        .collect();
    assert_eq!(
        lines,
        [
            "  web2 (ssh, wave 1): preflight passed",
            "  web0 (ssh, wave 2): preflight passed",
            "  web1 (ssh, wave 3): preflight passed",
        ],
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("  rollout: wave 1: web2; wave 2: web0; wave 3: web1; at most 2 at once; continue on failure"),
        "{}",
        run.stdout
    );
    assert_eq!(support::sha256_tree(setup.dir.path()), tree_before);
    for h in &hosts {
        assert_eq!(h.nginx.reload_count(), 0);
        assert_eq!(
            h.nginx.served_sha256().unwrap(),
            h.nginx.placeholder().sha256()
        );
    }
}

/// Targets whose `reload` is the same command reload the same service:
/// certherd writes and reloads them one at a time, so that no reload reads
/// another target's files halfway through their swap. Targets of different
/// services still go at once.
#[test]
fn targets_that_reload_the_same_service_take_turns() {
    let pebble = Pebble::start(PebbleOptions::default());
    let setup = Setup::new();
    let log = setup.dir.path().join("reloads.log");
    let reload = |service: &str| {
        yaml_list(&[
            "/bin/sh".to_string(),
            "-c".to_string(),
            format!(
                "echo start {service} >> {log}; sleep 0.5; echo end {service} >> {log}",
                log = log.display()
            ),
        ])
    };
    let mut targets = String::new();
    for i in 0..4 {
        // t0..t3 reload the same service; u0..u3 each their own.
        for (name, service) in [
            (format!("t{i}"), "shared".to_string()),
            (format!("u{i}"), format!("own{i}")),
        ] {
            let dir = setup.dir.path().join(&name);
            fs::create_dir(&dir).unwrap();
            targets.push_str(&format!(
                "      - {{ name: {name}, type: file, fullchain: {d}/site.pem, key: {d}/site.key, reload: {r} }}\n",
                d = dir.display(),
                r = reload(&service),
            ));
        }
    }
    setup.write_config(&format!(
        r#"state_dir: {state}
acme:
  directory: {dir}
  trust_roots: [{root}]
challenges:
  standalone: {{ type: http-01, listen: "127.0.0.1:{http}" }}
certificates:
  site:
    domains: [{SITE}]
    challenge: standalone
    targets:
{targets}    rollout: {{ max_parallel: 8 }}
"#,
        state = setup.state_dir().display(),
        dir = pebble.directory_url(),
        root = pebble.ca_tls_root_path().display(),
        http = pebble.http_port(),
    ));
    setup.run(&["renew"]).assert_code(0);
    let lines: Vec<String> = fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(lines.len(), 16, "{lines:?}");
    // The shared service: every start is followed by its end before the
    // next start.
    let shared: Vec<&str> = lines
        .iter()
        .filter(|l| l.ends_with(" shared"))
        .map(String::as_str)
        .collect();
    assert_eq!(
        shared,
        ["start shared", "end shared"].repeat(4),
        "reloads of one service overlapped: {lines:?}"
    );
    // The others ran at the same time: some start came before an end.
    let own: Vec<&str> = lines
        .iter()
        .filter(|l| l.contains(" own"))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_ne!(
        own,
        ["start", "end"].repeat(4),
        "reloads of different services were serialized: {lines:?}"
    );
}

//! `certherd run`, the always-on agent, against a real Pebble and nginx:
//! the systemd notify protocol, renewal of a certificate about to expire,
//! repair of a target that lost its certificate, SIGHUP and SIGTERM.

mod support;

use std::fs::File;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use support::process::poll_until;
use support::run::{config, status_json, stored_sha256, Setup, SITE};
use support::{certherd_cmd, Nginx, Pebble, PebbleOptions};

/// A running agent, its log in a file; SIGKILLed if the test forgets it.
struct Agent {
    child: Option<Child>,
    log: PathBuf,
}

impl Agent {
    fn start(setup: &Setup, env: &[(&str, &str)]) -> Agent {
        let log = setup.dir.path().join("agent.log");
        let mut cmd = certherd_cmd();
        cmd.arg("--config").arg(setup.config_path()).arg("run");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .expect("start certherd run");
        Agent {
            child: Some(child),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, sig: i32) {
        let pid = self.child.as_ref().unwrap().id() as i32;
        // SAFETY: kill(2) on the pid of a child we spawned and have not waited for.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    }

    fn alive(&mut self) -> bool {
        self.child.as_mut().unwrap().try_wait().unwrap().is_none()
    }

    /// SIGTERM, then the exit code, which must come within `limit`.
    fn stop(mut self, limit: Duration) -> i32 {
        self.signal(libc::SIGTERM);
        let mut child = self.child.take().unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code().expect("exited, not killed");
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                panic!(
                    "certherd run did not stop within {limit:?} of SIGTERM\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The Pebble + nginx configuration, checked every `interval`, no jitter.
fn agent_config(
    pebble: &Pebble,
    nginx: &Nginx,
    setup: &Setup,
    interval: &str,
    extra_targets: &str,
) -> String {
    config(pebble, nginx, setup, extra_targets).replacen(
        "challenges:\n",
        &format!("renewal:\n  check_interval: {interval}\n  jitter: 0s\nchallenges:\n"),
        1,
    )
}

/// Put a certificate for the site in the store that expires in one day.
fn install_expiring(setup: &Setup, pebble: &Pebble) -> String {
    let store = certherd::store::Store::open(
        &setup.state_dir(),
        &pebble.directory_url(),
        Duration::from_secs(5),
    )
    .unwrap();
    let key = certherd::acme::keys::generate(certherd::config::KeyType::EcdsaP256).unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec![SITE.to_string(), format!("www.{SITE}")]).unwrap();
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(89);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(1);
    let cert = params.self_signed(&key).unwrap();
    let bundle = certherd::cert::Bundle::from_chain(
        certherd::cert::KeyPem::new(key.serialize_pem()),
        &cert.pem(),
    )
    .unwrap();
    store
        .install("site", &bundle, time::OffsetDateTime::now_utc())
        .unwrap();
    bundle.info.sha256
}

fn wait_serving(nginx: &Nginx, what: &str, agent: &Agent, pred: impl Fn(&str) -> bool) -> String {
    poll_until(what, Duration::from_secs(30), || {
        match nginx.served_sha256() {
            Ok(sha) if pred(&sha) => Ok(sha),
            Ok(sha) => Err(format!("serves {sha}")),
            Err(e) => Err(e),
        }
    })
    .unwrap_or_else(|e| panic!("{e}\n--- agent log\n{}", agent.log()))
}

#[test]
fn speaks_the_systemd_notify_protocol() {
    let pebble = Pebble::start(PebbleOptions::default());
    let nginx = Nginx::start();
    let setup = Setup::new();
    setup.write_config(&agent_config(&pebble, &nginx, &setup, "1h", ""));
    let socket_path = setup.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let agent = Agent::start(
        &setup,
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
        ],
    );

    let mut seen: Vec<String> = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let n = socket
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("{e}: saw {seen:?}\n{}", agent.log()));
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        let has = |p: &str| seen.iter().any(|s| s.starts_with(p));
        if has("READY=1")
            && seen.iter().filter(|s| *s == "WATCHDOG=1").count() >= 2
            && has("STATUS=next: verify every target at ")
        {
            break;
        }
    }
    assert!(seen.contains(&"READY=1".to_string()), "{seen:?}");
    assert!(
        seen.iter().any(
            |s| s.starts_with("STATUS=next: start: renew what is due, verify every target at ")
        ),
        "{seen:?}"
    );
    assert!(
        seen.iter().filter(|s| *s == "WATCHDOG=1").count() >= 2,
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|s| s.starts_with("STATUS=next: verify every target at ")),
        "after the first pass: {seen:?}"
    );
    // The first pass issued and deployed the certificate.
    assert_eq!(nginx.served_sha256().unwrap(), stored_sha256(&setup));

    assert_eq!(agent.stop(Duration::from_secs(5)), 0);
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut rest = Vec::new();
    while let Ok(n) = socket.recv(&mut buf) {
        rest.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(rest.contains(&"STOPPING=1".to_string()), "{rest:?}");
}

#[test]
fn renews_an_expiring_certificate_and_repairs_a_reverted_target() {
    let pebble = Pebble::start(PebbleOptions::default());
    let nginx = Nginx::start();
    let setup = Setup::new();
    setup.write_config(&agent_config(&pebble, &nginx, &setup, "2s", ""));
    let expiring = install_expiring(&setup, &pebble);
    let mut agent = Agent::start(&setup, &[]);

    let renewed = wait_serving(&nginx, "the renewed certificate on nginx", &agent, |sha| {
        sha != nginx.placeholder().sha256()
    });
    assert_ne!(renewed, expiring);
    assert_eq!(renewed, stored_sha256(&setup));
    assert!(
        agent.log().contains("renewal time"),
        "the log says why:\n{}",
        agent.log()
    );

    // Once the first pass is over, someone restores the old files and
    // reloads (and nginx's previous workers are gone): the next round repairs it.
    poll_until("the first pass to finish", Duration::from_secs(30), || {
        if agent.log().contains("pass finished") {
            Ok(())
        } else {
            Err("not yet".into())
        }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    nginx.install_cert(nginx.placeholder());
    nginx.reload();
    nginx.wait_until_serving(&nginx.placeholder().sha256(), Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));
    nginx.wait_until_serving(&nginx.placeholder().sha256(), Duration::from_secs(5));
    let repaired = wait_serving(
        &nginx,
        "the current certificate back on nginx",
        &agent,
        |sha| sha == renewed,
    );
    assert_eq!(repaired, renewed);
    // Its files no longer held the certificate: deployed again by the agent.
    poll_until(
        "the second deployment in the log",
        Duration::from_secs(10),
        || match agent
            .log()
            .matches("deployed certificate=site target=web")
            .count()
        {
            n if n >= 2 => Ok(()),
            n => Err(format!("{n} deployments")),
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    assert!(agent.alive());
    assert_eq!(agent.stop(Duration::from_secs(5)), 0);
}

#[test]
fn sighup_keeps_a_broken_configuration_out_and_takes_a_good_one() {
    let pebble = Pebble::start(PebbleOptions::default());
    let nginx = Nginx::start();
    let setup = Setup::new();
    let good = agent_config(&pebble, &nginx, &setup, "1h", "");
    setup.write_config(&good);
    let mut agent = Agent::start(&setup, &[]);
    wait_serving(&nginx, "the first certificate", &agent, |sha| {
        sha != nginx.placeholder().sha256()
    });

    setup.write_config(&format!("{good}  broken: [\n"));
    agent.signal(libc::SIGHUP);
    poll_until(
        "the reload error in the log",
        Duration::from_secs(10),
        || {
            if agent
                .log()
                .contains("the new configuration is invalid; still running on the previous one")
            {
                Ok(())
            } else {
                Err("not yet".into())
            }
        },
    )
    .unwrap();
    assert!(agent.alive(), "{}", agent.log());

    // A good configuration with a second certificate: issued at once.
    let second = format!(
        "{good}  second:\n    domains: [second.certherd.test]\n    challenge: standalone\n"
    );
    setup.write_config(&second);
    agent.signal(libc::SIGHUP);
    poll_until("the second certificate", Duration::from_secs(20), || {
        let status = status_json(&setup, &["--offline"]);
        match status["certificates"][1]["serial"].as_str() {
            Some(_) => Ok(()),
            None => Err(format!("{status}")),
        }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    assert_eq!(agent.stop(Duration::from_secs(5)), 0);
}

/// An exec target that announces itself, then takes its time.
fn slow_exec(dir: &Path) -> (PathBuf, String) {
    let marker = dir.join("exec-started");
    let script = dir.join("slow-push");
    std::fs::write(
        &script,
        format!("#!/bin/sh\ntouch {}\nsleep 20\n", marker.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let target = format!(
        "      - name: slow\n        type: exec\n        command: [{}]\n",
        script.display()
    );
    (marker, target)
}

#[test]
fn sigterm_during_a_deployment_exits_0_and_leaves_no_partial_file() {
    let pebble = Pebble::start(PebbleOptions::default());
    let nginx = Nginx::start();
    let setup = Setup::new();
    let (marker, slow) = slow_exec(setup.dir.path());
    setup.write_config(&agent_config(&pebble, &nginx, &setup, "1h", &slow));
    let agent = Agent::start(&setup, &[]);
    poll_until("the slow target to start", Duration::from_secs(20), || {
        if marker.exists() {
            Ok(())
        } else {
            Err("not yet".into())
        }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    let log = agent.log.clone();
    assert_eq!(
        agent.stop(Duration::from_secs(5)),
        0,
        "{}",
        std::fs::read_to_string(log).unwrap()
    );

    // nginx's files are a matching pair (the new one: written before the exec target ran).
    let dir = nginx.cert_path().parent().unwrap().to_path_buf();
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".certherd-tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "partial files: {leftovers:?}");
    let key = certherd::cert::KeyPem::new(std::fs::read_to_string(nginx.key_path()).unwrap());
    let chain = std::fs::read_to_string(nginx.cert_path()).unwrap();
    let leaf = certherd::cert::pem_certificates(&chain).unwrap();
    assert!(
        certherd::acme::keys::matches(&key, &leaf[0]),
        "nginx's key does not match its certificate"
    );
}

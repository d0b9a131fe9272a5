//! Faults on targets and in the state directory, end to end against a real
//! Pebble: a full disk, a read-only filesystem (small tmpfs mounts), a
//! reload that hangs or fails, an endpoint that takes the connection but
//! never speaks TLS. Each is a clear error for its own target; the others
//! proceed; nothing is left half-written.

mod support;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::run::{names_in, status_json, stored_sha256, yaml_list, Run, Setup};
use support::tmpfs::{Tmpfs, FILLER};
use support::{leaf_sha256_of_pem, sha256_tree, Pebble, PebbleOptions};

/// A configuration for one certificate, `site`, with `targets` (YAML list
/// items, indented for the `targets:` key).
fn write_config(pebble: &Pebble, setup: &Setup, state_dir: &Path, targets: &str) {
    setup.write_config(&format!(
        "state_dir: {state}\nacme:\n  directory: {dir}\n  contact: [ops@certherd.test]\n  trust_roots: [{root}]\nchallenges:\n  standalone:\n    type: http-01\n    listen: \"127.0.0.1:{http}\"\ncertificates:\n  site:\n    domains: [site.certherd.test]\n    challenge: standalone\n    targets:\n{targets}",
        state = state_dir.display(),
        dir = pebble.directory_url(),
        root = pebble.ca_tls_root_path().display(),
        http = pebble.http_port(),
    ));
}

/// A file target writing `fullchain.pem` and `privkey.pem` into `dir`,
/// with `extra` keys (indented lines) appended.
fn file_target(name: &str, dir: &Path, extra: &str) -> String {
    format!(
        "      - name: {name}\n        type: file\n        fullchain: {d}/fullchain.pem\n        key: {d}/privkey.pem\n{extra}",
        d = dir.display()
    )
}

/// The line of target `name` in a human report.
fn target_line<'r>(run: &'r Run, name: &str) -> &'r str {
    let prefix = format!("  {name} (file): ");
    run.stdout
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no line for {name}:\n{}", run.stdout))
}

/// The SHA-256 of the leaf in `dir/fullchain.pem`.
fn deployed_sha256(dir: &Path) -> String {
    leaf_sha256_of_pem(&std::fs::read_to_string(dir.join("fullchain.pem")).unwrap())
}

/// Two file targets of `site`: `faulty`, where the fault is, and `healthy`.
struct TwoTargets {
    setup: Setup,
    faulty: PathBuf,
    healthy: PathBuf,
}

impl TwoTargets {
    fn new(setup: Setup) -> TwoTargets {
        let faulty = setup.dir.path().join("faulty");
        let healthy = setup.dir.path().join("healthy");
        std::fs::create_dir_all(&healthy).unwrap();
        TwoTargets {
            setup,
            faulty,
            healthy,
        }
    }

    fn configure(&self, pebble: &Pebble, faulty_extra: &str) {
        let targets = format!(
            "{}{}",
            file_target("faulty", &self.faulty, faulty_extra),
            file_target("healthy", &self.healthy, "")
        );
        write_config(pebble, &self.setup, &self.setup.state_dir(), &targets);
    }

    /// The first certificate, issued and deployed to both: its SHA-256 and
    /// `faulty`'s files as they are.
    fn first_issue(&self) -> (String, BTreeMap<PathBuf, String>) {
        self.setup.run(&["renew"]).assert_code(0);
        let sha = stored_sha256(&self.setup);
        assert_eq!(deployed_sha256(&self.faulty), sha);
        (sha, sha256_tree(&self.faulty))
    }

    /// After a run in which `faulty` failed: `healthy` holds the new
    /// certificate, `faulty` exactly what it held before, and no temp file.
    fn assert_faulty_alone_failed(
        &self,
        run: &Run,
        old_sha: &str,
        before: &BTreeMap<PathBuf, String>,
    ) {
        let new_sha = stored_sha256(&self.setup);
        assert_ne!(new_sha, old_sha, "the renewal itself succeeded");
        assert_eq!(
            target_line(run, "healthy"),
            "  healthy (file): deployed",
            "{}",
            run.stdout
        );
        assert_eq!(deployed_sha256(&self.healthy), new_sha);
        assert_eq!(&sha256_tree(&self.faulty), before, "faulty's files changed");
        assert_eq!(deployed_sha256(&self.faulty), old_sha);
    }
}

#[test]
fn a_full_disk_under_a_file_target_fails_that_target_alone() {
    let pebble = Pebble::start(PebbleOptions::default());
    let t = TwoTargets::new(Setup::new());
    let disk = Tmpfs::mount(&t.faulty, "64k");
    t.configure(&pebble, "");
    let (sha, _) = t.first_issue();
    disk.fill();
    let before = sha256_tree(&t.faulty);

    let run = t.setup.run(&["renew", "--force"]);
    run.assert_code(1);
    assert_eq!(
        target_line(&run, "faulty"),
        format!(
            "  faulty (file): FAILED: writing {}/fullchain.pem: No space left on device (os error 28)",
            t.faulty.display()
        )
    );
    t.assert_faulty_alone_failed(&run, &sha, &before);
    assert_eq!(
        names_in(&t.faulty),
        [FILLER, "fullchain.pem", "privkey.pem"],
        "temp files left behind"
    );

    // Space again: the next run brings the target up to date.
    disk.unfill();
    let retry = t.setup.run(&["renew"]);
    retry.assert_code(0);
    assert_eq!(target_line(&retry, "faulty"), "  faulty (file): deployed");
    assert_eq!(deployed_sha256(&t.faulty), stored_sha256(&t.setup));
}

#[test]
fn a_read_only_filesystem_under_a_file_target_fails_that_target_alone() {
    let pebble = Pebble::start(PebbleOptions::default());
    let t = TwoTargets::new(Setup::new());
    let disk = Tmpfs::mount(&t.faulty, "64k");
    t.configure(&pebble, "");
    let (sha, before) = t.first_issue();
    disk.remount_readonly();

    let run = t.setup.run(&["renew", "--force"]);
    run.assert_code(1);
    assert_eq!(
        target_line(&run, "faulty"),
        format!(
            "  faulty (file): FAILED: writing {}/fullchain.pem: Read-only file system (os error 30)",
            t.faulty.display()
        )
    );
    t.assert_faulty_alone_failed(&run, &sha, &before);
    let status = status_json(&t.setup, &["--offline"]);
    let faulty = &status["certificates"][0]["targets"][0];
    assert_eq!(faulty["state"], "stale");
    assert_eq!(
        faulty["last_error"],
        format!(
            "writing {}/fullchain.pem: Read-only file system (os error 30)",
            t.faulty.display()
        )
    );
}

#[test]
fn a_full_state_directory_fails_the_renewal_and_keeps_the_previous_certificate() {
    let pebble = Pebble::start(PebbleOptions::default());
    let setup = Setup::new();
    let state = setup.dir.path().join("state-disk");
    let disk = Tmpfs::mount(&state, "256k");
    let out = setup.dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    write_config(&pebble, &setup, &state, &file_target("files", &out, ""));
    setup.run(&["renew"]).assert_code(0);
    let sha = stored_sha256(&setup);
    disk.fill();
    let certs_before = versions(&state);

    let run = setup.run(&["renew", "--force"]);
    run.assert_code(1);
    let line = run
        .stdout
        .lines()
        .find(|l| l.starts_with("site [site.certherd.test]: "))
        .unwrap();
    let ns = certherd::store::namespace(&pebble.directory_url());
    assert_eq!(
        line,
        format!(
            "site [site.certherd.test]: renewal FAILED: storing the new certificate: state directory \
             {}/ca/{ns}/certs/site/versions: No space left on device (os error 28)",
            state.display()
        )
    );
    // The previous certificate is still current, whole and loadable; no
    // half-written version is left.
    assert_eq!(stored_sha256(&setup), sha);
    assert_eq!(versions(&state), certs_before);
    let status = status_json(&setup, &["--offline"]);
    assert_eq!(status["certificates"][0]["targets"][0]["state"], "current");
    assert_eq!(deployed_sha256(&out), sha);
    // No new certificate: the target is checked, not written again.
    assert!(
        run.stdout
            .contains("  files (file): already held the current certificate"),
        "{}",
        run.stdout
    );
    // `deploy` still writes the target; only remembering it fails, and
    // says so.
    let deploy = setup.run(&["deploy"]);
    deploy.assert_code(0);
    assert!(
        deploy.stdout.contains("  files (file): deployed"),
        "{}",
        deploy.stdout
    );
    assert!(
        deploy
            .stderr
            .contains("could not record the target's state; the next run deploys to it again"),
        "{}",
        deploy.stderr
    );

    // Space again: the renewal goes through.
    disk.unfill();
    setup.run(&["renew", "--force"]).assert_code(0);
    assert_ne!(stored_sha256(&setup), sha);
    assert_eq!(deployed_sha256(&out), stored_sha256(&setup));
}

/// Everything under the state directory's certificate versions (hidden
/// temp entries included).
fn versions(state: &Path) -> BTreeMap<PathBuf, String> {
    sha256_tree(state)
        .into_iter()
        .filter(|(p, _)| p.to_string_lossy().contains("/certs/"))
        .collect()
}

#[test]
fn a_hanging_reload_is_killed_at_its_timeout_and_the_others_proceed() {
    let pebble = Pebble::start(PebbleOptions::default());
    let t = TwoTargets::new(Setup::new());
    std::fs::create_dir_all(&t.faulty).unwrap();
    let pid_file = t.setup.dir.path().join("reload.pid");
    let reload = vec![
        "sh".to_string(),
        "-c".to_string(),
        format!("echo $$ > {}; exec sleep 1000", pid_file.display()),
    ];
    t.configure(
        &pebble,
        &format!(
            "        reload: {}\n        reload_timeout: 2s\n",
            yaml_list(&reload)
        ),
    );
    let start = Instant::now();
    let run = t.setup.run(&["renew"]);
    let took = start.elapsed();
    run.assert_code(1);
    assert_eq!(
        target_line(&run, "faulty"),
        format!(
            "  faulty (file): FAILED: reload `{}` timed out after 2s and was killed",
            reload.join(" ")
        )
    );
    assert_eq!(target_line(&run, "healthy"), "  healthy (file): deployed");
    assert_eq!(deployed_sha256(&t.healthy), stored_sha256(&t.setup));
    assert!(took >= Duration::from_secs(2), "took {took:?}");
    assert!(took < Duration::from_secs(30), "took {took:?}");
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let proc_dir = PathBuf::from(format!("/proc/{}", pid.trim()));
    assert!(!proc_dir.exists(), "the reload command still runs");
}

#[test]
fn a_failing_reload_reports_its_exit_status_and_stderr() {
    let pebble = Pebble::start(PebbleOptions::default());
    let t = TwoTargets::new(Setup::new());
    std::fs::create_dir_all(&t.faulty).unwrap();
    let reload = vec![
        "sh".to_string(),
        "-c".to_string(),
        "echo 'nginx: [emerg] cannot load certificate' >&2; exit 3".to_string(),
    ];
    t.configure(
        &pebble,
        &format!("        reload: {}\n", yaml_list(&reload)),
    );
    let run = t.setup.run(&["renew"]);
    run.assert_code(1);
    assert_eq!(
        target_line(&run, "faulty"),
        format!(
            "  faulty (file): FAILED: reload `{}` exited 3: nginx: [emerg] cannot load certificate",
            reload.join(" ")
        )
    );
    assert_eq!(target_line(&run, "healthy"), "  healthy (file): deployed");
    // The files were written as a whole before the reload ran.
    let sha = stored_sha256(&t.setup);
    assert_eq!(deployed_sha256(&t.faulty), sha);
    let status = status_json(&t.setup, &["--offline"]);
    assert_eq!(
        status["certificates"][0]["targets"][0]["last_error"],
        format!(
            "reload `{}` exited 3: nginx: [emerg] cannot load certificate",
            reload.join(" ")
        )
    );
}

#[test]
fn an_endpoint_that_never_speaks_tls_is_unreachable_after_the_verify_timeout() {
    let pebble = Pebble::start(PebbleOptions::default());
    let t = TwoTargets::new(Setup::new());
    std::fs::create_dir_all(&t.faulty).unwrap();
    // Takes every connection and says nothing.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.push(stream);
        }
    });
    t.configure(
        &pebble,
        &format!("        verify:\n          connect: \"{addr}\"\n          timeout: 2s\n"),
    );
    let start = Instant::now();
    let run = t.setup.run(&["renew"]);
    let took = start.elapsed();
    run.assert_code(1);
    assert_eq!(
        target_line(&run, "faulty"),
        format!(
            "  faulty (file): deployed; verification UNREACHABLE: no TLS handshake with {addr} within 2s"
        )
    );
    assert_eq!(target_line(&run, "healthy"), "  healthy (file): deployed");
    assert!(took >= Duration::from_secs(2), "took {took:?}");
    assert!(took < Duration::from_secs(30), "took {took:?}");

    // `verify` and `status` say the same, within the configured timeout.
    let start = Instant::now();
    let verify = t.setup.run(&["verify"]);
    verify.assert_code(1);
    assert_eq!(
        target_line(&verify, "faulty"),
        format!(
            "  faulty (file): verification UNREACHABLE: no TLS handshake with {addr} within 2s"
        )
    );
    let status = status_json(&t.setup, &[]);
    let faulty = &status["certificates"][0]["targets"][0];
    assert_eq!(faulty["state"], "unreachable");
    assert_eq!(
        faulty["error"],
        format!("no TLS handshake with {addr} within 2s")
    );
    assert!(start.elapsed() < Duration::from_secs(30));
}

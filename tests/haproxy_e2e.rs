//! The `haproxy` target end to end: a real Pebble issues, certherd hands the
//! certificate to a real HAProxy through its runtime API and writes the
//! combined PEM its `crt` line loads. HAProxy keeps running (same pid), a
//! connection opened before the deployment keeps working, and a failure
//! leaves HAProxy and the file on disk as they were.

mod support;

use std::fs;
use std::path::Path;

use support::haproxy::Haproxy;
use support::run::{mode, site_config, stored_dir, stored_sha256, Setup, SITE};
use support::{served_leaf_sha256, sha256_tree, Pebble, PebbleOptions};

fn config(pebble: &Pebble, setup: &Setup, targets: &str) -> String {
    site_config(pebble, setup, &[SITE], targets)
}

fn haproxy_target(name: &str, socket: &Path, combined: &Path, extra: &str) -> String {
    format!(
        "      - name: {name}
        type: haproxy
        socket: {socket}
        combined: {combined}
{extra}",
        socket = socket.display(),
        combined = combined.display(),
    )
}

/// Target `lb` on `haproxy`'s admin socket, verified on its frontend.
fn verified_lb(haproxy: &Haproxy, extra: &str) -> String {
    haproxy_target(
        "lb",
        &haproxy.admin_socket(),
        &haproxy.combined_path(),
        &format!(
            "{extra}        verify: {{ connect: \"{}\", timeout: 10s }}\n",
            haproxy.addr()
        ),
    )
}

/// `lb` reported deployed and verified on `sha`.
fn assert_lb_deployed(stdout: &str, sha: &str) {
    assert!(
        stdout.contains(&format!("  lb (haproxy): deployed; verified: serves {sha}")),
        "{stdout}"
    );
}

/// `lb` reported deployed and verified on `sha`, and HAProxy serves it.
fn assert_lb_serves(stdout: &str, sha: &str, haproxy: &Haproxy) {
    assert_lb_deployed(stdout, sha);
    assert_eq!(served_leaf_sha256(&haproxy.addr(), SITE).unwrap(), sha);
}

#[test]
fn renew_hands_the_certificate_to_a_running_haproxy_without_dropping_a_connection() {
    let pebble = Pebble::start(PebbleOptions::default());
    let setup = Setup::new();
    let mut haproxy = Haproxy::start(SITE);
    let pid = haproxy.pid();
    setup.write_config(&config(&pebble, &setup, &verified_lb(&haproxy, "")));
    setup.run(&["check"]).assert_code(0);
    // The temp file of a deployment killed before its rename (it holds a
    // key): the next deployment removes it.
    let leftover = haproxy
        .dir()
        .join("certs/.certherd-tmp-site.pem-0123456789abcdef");
    fs::write(&leftover, "-----BEGIN PRIVATE KEY-----\n").unwrap();

    // A client connected before the deployment, mid keep-alive.
    let mut before = haproxy.connect_trusting_placeholder(SITE);
    assert_eq!(
        before.get("/").unwrap(),
        ("HTTP/1.1 200 OK".to_string(), "ok".to_string())
    );

    let run = setup.run(&["renew"]);
    run.assert_code(0);
    let sha = stored_sha256(&setup);
    // Served from the same process: no reload, no restart.
    assert_lb_serves(&run.stdout, &sha, &haproxy);
    assert!(haproxy.is_running(), "{}", haproxy.log());
    assert_eq!(haproxy.pid(), pid);
    // The earlier connection still works, on its original session.
    assert_eq!(
        before.get("/again").unwrap(),
        ("HTTP/1.1 200 OK".to_string(), "ok".to_string()),
        "a connection opened before the deployment must survive it"
    );
    assert_eq!(before.peer_leaf_sha256(), haproxy.placeholder().sha256());

    // On disk: key + full chain, 0600, nothing else left in the folder, so
    // a restart loads the same certificate.
    let stored = stored_dir(&setup);
    let expected = format!(
        "{}{}",
        fs::read_to_string(stored.join("privkey.pem")).unwrap(),
        fs::read_to_string(stored.join("fullchain.pem")).unwrap()
    );
    assert_eq!(
        fs::read_to_string(haproxy.combined_path()).unwrap(),
        expected
    );
    assert_eq!(mode(&haproxy.combined_path()), 0o600);
    let names: Vec<_> = fs::read_dir(haproxy.dir().join("certs"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let mut names: Vec<_> = names
        .into_iter()
        .map(|n| n.into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["other.pem", "site.pem"],
        "no temp file left, nor the one an interrupted deployment left"
    );
    // HAProxy itself holds no open transaction.
    let list = haproxy.api("show ssl cert");
    assert!(!list.contains("# transaction"), "{list}");
    assert!(!run.all().contains("PRIVATE KEY"));

    // Nothing due and the file holds the certificate: nothing is sent again.
    let again = setup.run(&["renew"]);
    again.assert_code(0);
    assert!(
        again
            .stdout
            .contains("  lb (haproxy): already held the current certificate; verified"),
        "{}",
        again.stdout
    );
}

#[test]
fn a_wrong_name_a_missing_socket_or_a_low_level_fails_alone_and_changes_nothing() {
    let pebble = Pebble::start(PebbleOptions::default());
    let setup = Setup::new();
    let haproxy = Haproxy::start(SITE);
    let out_dir = setup.dir.path().join("files");
    fs::create_dir(&out_dir).unwrap();
    let missing = haproxy.dir().join("no-such.sock");
    let combined = haproxy.combined_path();
    let wrong_name = haproxy.dir().join("certs/unknown.pem");
    let targets = [
        haproxy_target(
            "wrongname",
            &haproxy.admin_socket(),
            &combined,
            &format!("        cert_name: {}\n", wrong_name.display()),
        ),
        haproxy_target("nosocket", &missing, &combined, ""),
        haproxy_target("operator", &haproxy.operator_socket(), &combined, ""),
        format!(
            "      - name: files
        type: file
        fullchain: {}
",
            out_dir.join("site.pem").display()
        ),
    ]
    .concat();
    setup.write_config(&config(&pebble, &setup, &targets));
    let before = sha256_tree(&haproxy.dir().join("certs"));
    let socket = haproxy.admin_socket();
    let op_socket = haproxy.operator_socket();
    let (admin, operator) = (socket.display(), op_socket.display());
    let c = combined.display();
    let wrong = wrong_name.display();
    let unknown = "HAProxy has no certificate of that name: the names are the paths its `crt` \
                   lines load (`show ssl cert` lists them); set `cert_name` if it differs from \
                   `combined`";

    // The dry run finds every problem, and changes nothing.
    let dry = setup.run(&["renew", "--dry-run"]);
    dry.assert_code(1);
    let out = dry.all();
    for expected in [
        format!(
            "  wrongname (haproxy): preflight FAILED: socket {admin} (certificate {wrong}): \
             {unknown}"
        ),
        format!(
            "  nosocket (haproxy): preflight FAILED: socket {m} (certificate {c}): no socket at \
             {m} (is HAProxy running, with `stats socket {m} level admin`?)",
            m = missing.display()
        ),
        format!(
            "  operator (haproxy): preflight FAILED: socket {operator} (certificate {c}): \
             HAProxy answered \"Permission denied\": the stats socket must be `level admin` \
             (it is `operator`)"
        ),
        "  files (file): preflight passed".to_string(),
    ] {
        assert!(out.contains(&expected), "{expected}\nnot in:\n{out}");
    }
    assert_eq!(sha256_tree(&haproxy.dir().join("certs")), before);

    let run = setup.run(&["renew"]);
    run.assert_code(1);
    let out = run.all();
    for expected in [
        format!(
            "  wrongname (haproxy): FAILED: haproxy target \"wrongname\" (socket {admin}, \
             certificate {wrong}): {unknown}"
        ),
        format!(
            "  nosocket (haproxy): FAILED: haproxy target \"nosocket\" (socket {m}, certificate \
             {c}): no socket at {m}",
            m = missing.display()
        ),
        format!(
            "  operator (haproxy): FAILED: haproxy target \"operator\" (socket {operator}, \
             certificate {c}): HAProxy answered \"Permission denied\": the stats socket must be \
             `level admin` (it is `operator`)"
        ),
        "  files (file): deployed".to_string(),
    ] {
        assert!(out.contains(&expected), "{expected}\nnot in:\n{out}");
    }
    // The other target got the certificate; HAProxy and its file did not change.
    assert_eq!(
        support::leaf_sha256_of_pem(&fs::read_to_string(out_dir.join("site.pem")).unwrap()),
        stored_sha256(&setup)
    );
    assert_eq!(
        sha256_tree(&haproxy.dir().join("certs")),
        before,
        "no file changed or left"
    );
    assert_eq!(
        served_leaf_sha256(&haproxy.addr(), SITE).unwrap(),
        haproxy.placeholder().sha256()
    );
    let list = haproxy.api("show ssl cert");
    assert!(!list.contains("# transaction"), "{list}");
}

#[test]
fn someone_elses_update_in_progress_is_waited_for_and_never_touched() {
    let pebble = Pebble::start(PebbleOptions::default());
    let setup = Setup::new();
    let haproxy = Haproxy::start(SITE);
    setup.write_config(&config(
        &pebble,
        &setup,
        &haproxy_target(
            "lb",
            &haproxy.admin_socket(),
            &haproxy.combined_path(),
            "        timeout: 1s\n",
        ),
    ));
    // An operator's update of the other certificate, not committed yet.
    let other = haproxy.other_path();
    let replacement = support::TestCert::self_signed(&["other.certherd.test"]);
    let answer = haproxy.api_payload(
        &format!("set ssl cert {}", other.display()),
        &format!("{}{}\n", replacement.key_pem, replacement.cert_pem),
    );
    assert!(answer.starts_with("Transaction created"), "{answer}");
    let before = sha256_tree(&haproxy.dir().join("certs"));

    let run = setup.run(&["renew"]);
    run.assert_code(1);
    let expected = format!(
        "  lb (haproxy): FAILED: haproxy target \"lb\" (socket {}, certificate {}): another \
         update, of certificate {}, is in progress on this HAProxy (still after ",
        haproxy.admin_socket().display(),
        haproxy.combined_path().display(),
        other.display()
    );
    assert!(
        run.stdout.contains(&expected),
        "{expected}\nnot in:\n{}",
        run.stdout
    );
    // The operator's transaction is intact and still theirs; nothing changed.
    let list = haproxy.api("show ssl cert");
    assert!(
        list.contains(&format!("# transaction\n*{}\n", other.display())),
        "{list}"
    );
    assert_eq!(sha256_tree(&haproxy.dir().join("certs")), before);
    assert_eq!(
        served_leaf_sha256(&haproxy.addr(), SITE).unwrap(),
        haproxy.placeholder().sha256()
    );

    // Once it is finished, the next renew deploys.
    let done = haproxy.api(&format!("commit ssl cert {}", other.display()));
    assert!(done.contains("Success!"), "{done}");
    setup.run(&["renew"]).assert_code(0);
    assert_eq!(
        served_leaf_sha256(&haproxy.addr(), SITE).unwrap(),
        stored_sha256(&setup)
    );
}

/// HAProxy refuses a certificate command, with "currently locked", while
/// another client's runs. Monitoring that lists certificates in a loop
/// must not make a dry run or a deployment fail.
#[test]
fn another_client_holding_the_certificate_lock_is_waited_for() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    let pebble = Pebble::start(PebbleOptions::default());
    let setup = Setup::new();
    let haproxy = Arc::new(Haproxy::start(SITE));
    setup.write_config(&config(
        &pebble,
        &setup,
        &verified_lb(&haproxy, "        timeout: 10s\n"),
    ));

    let stop = Arc::new(AtomicBool::new(false));
    let locked = Arc::new(AtomicUsize::new(0));
    let monitors: Vec<_> = (0..6)
        .map(|_| {
            let (haproxy, stop, locked) = (haproxy.clone(), stop.clone(), locked.clone());
            std::thread::spawn(move || {
                let name = format!("show ssl cert {}", haproxy.combined_path().display());
                while !stop.load(Ordering::Relaxed) {
                    if haproxy.api(&name).contains("currently locked") {
                        locked.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();

    // A dry run, a first deployment and two forced renewals: some twenty
    // certificate commands, any of which HAProxy may refuse as locked.
    let dry = setup.run(&["renew", "--dry-run"]);
    let runs: Vec<_> = [&["renew"][..], &["renew", "--force"], &["renew", "--force"]]
        .into_iter()
        .map(|args| (setup.run(args), stored_sha256(&setup)))
        .collect();
    stop.store(true, Ordering::Relaxed);
    for m in monitors {
        m.join().unwrap();
    }
    dry.assert_code(0);
    assert!(
        dry.stdout.contains("  lb (haproxy): preflight passed"),
        "{}",
        dry.stdout
    );
    for (run, sha) in &runs {
        run.assert_code(0);
        assert_lb_deployed(&run.stdout, sha);
    }
    let sha = stored_sha256(&setup);
    assert_eq!(served_leaf_sha256(&haproxy.addr(), SITE).unwrap(), sha);
    // The monitors did collide with each other (and with certherd): the
    // lock was really contended while certherd worked.
    assert!(
        locked.load(Ordering::Relaxed) > 0,
        "no command was ever refused as locked"
    );
}

/// A certherd killed between `set ssl cert` and `commit ssl cert` leaves a
/// transaction open for its own certificate. The next deployment takes it
/// over: its `set` replaces what that transaction holds, and it commits.
#[test]
fn a_transaction_left_open_for_the_same_certificate_is_taken_over() {
    let pebble = Pebble::start(PebbleOptions::default());
    let setup = Setup::new();
    let haproxy = Haproxy::start(SITE);
    setup.write_config(&config(&pebble, &setup, &verified_lb(&haproxy, "")));
    // What an interrupted run left: its certificate set, not committed.
    let stale = support::TestCert::self_signed(&[SITE]);
    let combined = haproxy.combined_path();
    let answer = haproxy.api_payload(
        &format!("set ssl cert {}", combined.display()),
        &format!("{}{}\n", stale.key_pem, stale.cert_pem),
    );
    assert!(answer.starts_with("Transaction created"), "{answer}");

    let run = setup.run(&["renew"]);
    run.assert_code(0);
    assert_lb_serves(&run.stdout, &stored_sha256(&setup), &haproxy);
    let list = haproxy.api("show ssl cert");
    assert!(!list.contains("# transaction"), "{list}");
}

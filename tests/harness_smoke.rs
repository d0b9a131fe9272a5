//! Proves the integration-test harness in `tests/support/` works: Pebble and
//! its DNS answer and can run side by side, nginx serves what it is given and
//! its reloads are seen, and the evidence helpers report what is really served.

mod support;

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use support::nginx::NginxProcess;
use support::{
    free_port, free_ports, http_get_raw, https_client_trusting, leaf_sha256_of_pem,
    served_leaf_sha256, sha256_tree, Nginx, Pebble, PebbleOptions, TestCa, TestCert,
};

async fn get_directory(pebble: &Pebble) -> String {
    let client = https_client_trusting(&[pebble.ca_tls_root_path()]);
    let response = client
        .get(pebble.directory_url())
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {}: {e:#}", pebble.directory_url()));
    assert_eq!(response.status(), 200, "GET {}", pebble.directory_url());
    response.text().await.expect("directory body")
}

fn pem_certificates(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("parsable PEM certificates")
}

#[tokio::test]
async fn pebble_directory_answers_over_tls_signed_by_the_throwaway_ca() {
    let pebble = Pebble::start(PebbleOptions::default());

    let directory = get_directory(&pebble).await;
    assert!(directory.contains("newOrder"), "directory: {directory}");
    assert!(
        pebble.directory_url().starts_with("https://127.0.0.1:")
            && pebble.directory_url().ends_with("/dir"),
        "{}",
        pebble.directory_url()
    );

    // Trusting any other CA, the same request fails: trust comes from the
    // throwaway CA alone, not from the system store.
    let other = pebble.dir().join("other-ca.pem");
    fs::write(&other, TestCa::new("unrelated").cert_pem).unwrap();
    let err = https_client_trusting(&[&other])
        .get(pebble.directory_url())
        .send()
        .await
        .expect_err("a client trusting another CA must refuse Pebble's certificate");
    assert!(err.is_connect(), "{err:#}");
}

#[tokio::test]
async fn pebble_issuing_root_is_a_certificate_other_than_the_tls_root() {
    let pebble = Pebble::start(PebbleOptions::default());

    let issuing = pem_certificates(pebble.issuing_root_pem());
    assert_eq!(issuing.len(), 1, "{}", pebble.issuing_root_pem());
    let (_, parsed) = x509_parser::parse_x509_certificate(&issuing[0]).expect("X.509 root");
    assert!(parsed.is_ca(), "issuing root is not a CA");
    assert!(
        parsed.subject().to_string().contains("Pebble Root CA"),
        "{}",
        parsed.subject()
    );
    assert_eq!(
        fs::read_to_string(pebble.issuing_root_path()).unwrap(),
        pebble.issuing_root_pem()
    );

    let tls_root = fs::read_to_string(pebble.ca_tls_root_path()).unwrap();
    assert_ne!(pem_certificates(&tls_root), issuing);

    // The management API serves the same root.
    let served = https_client_trusting(&[pebble.ca_tls_root_path()])
        .get(format!("{}/roots/0", pebble.management_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(pem_certificates(&served), issuing);
}

#[tokio::test]
async fn pebble_dns_resolves_every_name_to_loopback_and_no_aaaa() {
    let pebble = Pebble::start(PebbleOptions::default());
    let dns = pebble.dns_server();
    let output = dig(dns, "anything.example.com", "A");
    assert_eq!(output.trim(), "127.0.0.1", "A answer from {dns}");
    let output = dig(dns, "anything.example.com", "AAAA");
    assert_eq!(output.trim(), "", "AAAA answer from {dns}");
}

/// `dig +short` against `server` (an independent resolver: bind9-dnsutils).
fn dig(server: SocketAddr, name: &str, rtype: &str) -> String {
    let out = Command::new("dig")
        .args(["+short", "+time=2", "+tries=2", "-p"])
        .arg(server.port().to_string())
        .arg(format!("@{}", server.ip()))
        .args([name, rtype])
        .output()
        .unwrap_or_else(|e| {
            panic!("run dig: {e}: run scripts/install-deps (apt-get install bind9-dnsutils)")
        });
    assert!(out.status.success(), "dig: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn two_pebbles_run_side_by_side() {
    let first = Pebble::start(PebbleOptions::default());
    let second = Pebble::start(PebbleOptions {
        nonce_reject: 50,
        ..PebbleOptions::default()
    });

    assert_ne!(first.directory_url(), second.directory_url());
    assert_ne!(first.http_port(), second.http_port());
    assert_ne!(first.dns_server(), second.dns_server());
    assert!(get_directory(&first).await.contains("newOrder"));
    assert!(get_directory(&second).await.contains("newOrder"));
    // Each made its own issuing root.
    assert_ne!(first.issuing_root_pem(), second.issuing_root_pem());
}

/// Ports handed to services lie outside the kernel's ephemeral range (when
/// it leaves room), where no outgoing connection can take one before the
/// service binds it; they are distinct and free for TCP and UDP.
#[test]
fn free_ports_lie_outside_the_ephemeral_range_and_differ() {
    let range = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
    let bounds: Vec<u16> = range
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    let (lo, hi) = (bounds[0], bounds[1]);
    let room = lo >= 14_000 || hi <= 61_535;
    let ports = free_ports(50);
    let distinct: std::collections::BTreeSet<_> = ports.iter().collect();
    assert_eq!(distinct.len(), 50, "{ports:?}");
    for p in &ports {
        if room {
            assert!(
                !(lo..=hi).contains(p),
                "port {p} is in the ephemeral range {lo}-{hi}"
            );
        }
        std::net::TcpListener::bind(("127.0.0.1", *p)).unwrap();
        std::net::UdpSocket::bind(("127.0.0.1", *p)).unwrap();
    }
}

/// A port another test process has reserved is not handed out until that
/// process is gone (tests run as parallel processes; a chosen port often
/// stays unbound for seconds).
#[test]
fn a_port_reserved_by_another_process_is_not_taken_until_it_exits() {
    // A port no test process is given where the ephemeral range leaves
    // room for service ports (see free_ports_lie_outside_…), so no other
    // test holds it; another process reserves it, as a test process would.
    let other_port = 60_000 + (std::process::id() % 1_000) as u16;
    let lock = Path::new(support::PORT_RESERVATIONS).join(other_port.to_string());
    let scratch = support::ScratchDir::new("certherd-flock-");
    // `exec sleep`: the process killed below is the one holding the lock.
    // It waits for the lock (the probe below holds it for a moment).
    let mut holder = support::process::ChildGuard::spawn(
        "lock holder",
        Command::new("sh")
            .arg("-c")
            .arg("exec 9>\"$1\" && flock 9 && exec sleep 60")
            .arg("sh")
            .arg(&lock),
        &scratch.path().join("holder.log"),
    );
    support::process::poll_until("flock holds the lock", Duration::from_secs(10), || {
        // A second non-blocking lock fails while it is held.
        let probe = Command::new("flock")
            .arg("-n")
            .arg(&lock)
            .arg("true")
            .status()
            .unwrap();
        if probe.success() {
            Err(format!("not held yet (holder: {:?})", holder.exit_status()))
        } else {
            Ok(())
        }
    })
    .unwrap();
    assert!(
        !support::reserve(other_port),
        "port {other_port} was reserved by the flock process"
    );
    holder.kill();
    assert!(
        support::reserve(other_port),
        "port {other_port} is free again once its holder is gone"
    );
}

#[test]
fn pebble_http_port_is_the_one_asked_for_and_stop_makes_it_unreachable() {
    let http_port = free_port();
    let mut pebble = Pebble::start(PebbleOptions {
        http_port: Some(http_port),
        ..PebbleOptions::default()
    });
    assert_eq!(pebble.http_port(), http_port);
    let config = fs::read_to_string(pebble.dir().join("pebble-config.json")).unwrap();
    assert!(
        config.contains(&format!("\"httpPort\": {http_port}")),
        "{config}"
    );

    let addr = pebble.directory_url()["https://".len()..]
        .trim_end_matches("/dir")
        .to_owned();
    pebble.stop();
    let err = std::net::TcpStream::connect(&addr).expect_err("Pebble still listening after stop");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
}

#[test]
fn nginx_serves_the_placeholder_then_the_new_certificate_after_a_reload() {
    let mut nginx = Nginx::start();

    // Independent evidence: the fingerprint of the file's first certificate.
    let placeholder_pem = fs::read_to_string(nginx.cert_path()).unwrap();
    let placeholder_sha = leaf_sha256_of_pem(&placeholder_pem);
    assert_eq!(placeholder_sha, nginx.placeholder().sha256());
    assert_eq!(
        served_leaf_sha256(&nginx.addr(), "localhost").unwrap(),
        placeholder_sha
    );
    assert_eq!(nginx.reload_count(), 0);
    assert_eq!(nginx.applied_reload_count(), 0);

    // New files alone change nothing until nginx reloads.
    let ca = TestCa::new("smoke CA");
    let next = ca.issue(&["localhost"]);
    nginx.install_cert(&next);
    assert_eq!(
        served_leaf_sha256(&nginx.addr(), "localhost").unwrap(),
        placeholder_sha
    );

    // Reload with the exact argv certherd would be configured with.
    let argv = nginx.reload_argv();
    assert_eq!(
        argv[1..],
        [
            "-p".to_string(),
            nginx.dir().display().to_string(),
            "-c".to_string(),
            format!("{}/nginx.conf", nginx.dir().display()),
            "-e".to_string(),
            format!("{}/error.log", nginx.dir().display()),
            "-s".to_string(),
            "reload".to_string(),
        ]
    );
    let status = Command::new(&argv[0]).args(&argv[1..]).status().unwrap();
    assert!(status.success(), "{argv:?}: {status}");
    nginx.wait_for_applied_reloads(1, Duration::from_secs(5));
    nginx.wait_until_serving(&next.sha256(), Duration::from_secs(5));
    assert_eq!(nginx.reload_count(), 1);
    assert_eq!(nginx.applied_reload_count(), 1);

    let pid = nginx.pid();
    assert!(nginx.is_running());
    nginx.stop();
    assert!(!nginx.is_running(), "nginx master {pid} still running");
    let err = served_leaf_sha256(&nginx.addr(), "localhost").expect_err("served after stop");
    assert!(err.contains("connect"), "{err}");
}

#[test]
fn nginx_rejected_reload_sends_no_signal_and_keeps_serving() {
    let nginx = Nginx::start();
    let before = nginx.placeholder().sha256();
    fs::write(nginx.cert_path(), "not a certificate\n").unwrap();

    let err = nginx
        .process()
        .reload()
        .expect_err("nginx -s reload with a broken certificate");
    assert!(err.contains("cannot load certificate"), "{err}");
    assert_eq!(nginx.reload_count(), 0);
    assert_eq!(nginx.served_sha256().unwrap(), before);
}

#[test]
fn nginx_webroot_serves_challenge_files_on_the_given_port() {
    let webroot = tempfile::tempdir().unwrap();
    let challenges = webroot.path().join(".well-known/acme-challenge");
    fs::create_dir_all(&challenges).unwrap();
    fs::write(challenges.join("tok3n"), "tok3n.thumbprint").unwrap();

    let http_port = free_port();
    let nginx = Nginx::start_with_webroot(webroot.path(), http_port);
    assert_eq!(nginx.http_port(), Some(http_port));

    let addr = format!("127.0.0.1:{http_port}");
    // Pebble's validation authority asks with the identifier as Host.
    let response = http_get_raw(
        &addr,
        "www.example.com",
        "/.well-known/acme-challenge/tok3n",
    )
    .unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("\r\n\r\ntok3n.thumbprint"), "{response}");

    let response =
        http_get_raw(&addr, "www.example.com", "/.well-known/acme-challenge/nope").unwrap();
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");
    let response = http_get_raw(&addr, "www.example.com", "/").unwrap();
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");
}

#[test]
fn nginx_instances_are_independent() {
    let a = Nginx::start();
    let b = Nginx::start();
    assert_ne!(a.port(), b.port());
    assert_ne!(a.dir(), b.dir());
    assert_ne!(a.served_sha256().unwrap(), b.served_sha256().unwrap());
    b.install_cert(&TestCert::self_signed(&["localhost"]));
    b.reload();
    b.wait_for_applied_reloads(1, Duration::from_secs(5));
    assert_eq!(a.reload_count(), 0);
    assert_eq!(a.served_sha256().unwrap(), a.placeholder().sha256());
}

#[test]
fn nginx_config_check_reports_errors() {
    let dir = tempfile::tempdir().unwrap();
    NginxProcess::write_conf(dir.path(), "server { listen 127.0.0.1:1 bogus_option; }");
    let err = NginxProcess::check_config(dir.path()).expect_err("invalid listen parameter");
    assert!(err.contains("bogus_option"), "{err}");
}

#[test]
fn free_ports_are_distinct() {
    let ports = free_ports(20);
    let mut unique = ports.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), 20, "{ports:?}");
}

#[test]
fn sha256_tree_records_contents_and_modes() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("sub")).unwrap();
    fs::write(dir.path().join("sub/key.pem"), "secret").unwrap();
    fs::set_permissions(
        dir.path().join("sub/key.pem"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::os::unix::fs::symlink("sub/key.pem", dir.path().join("link")).unwrap();

    let before = sha256_tree(dir.path());
    assert_eq!(
        before.get(Path::new("sub/key.pem")).unwrap(),
        // sha256("secret")
        "file 0600 2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"
    );
    assert_eq!(
        before.get(Path::new("link")).unwrap(),
        "symlink sub/key.pem"
    );
    assert!(before.get(Path::new("sub")).unwrap().starts_with("dir "));

    fs::set_permissions(
        dir.path().join("sub/key.pem"),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    assert_ne!(sha256_tree(dir.path()), before);
}

#[test]
fn certherd_cmd_clears_the_ambient_trust_and_config_environment() {
    let cmd = support::certherd_cmd();
    assert!(Path::new(cmd.get_program()).ends_with("certherd"));
    let removed: Vec<String> = cmd
        .get_envs()
        .filter(|(_, value)| value.is_none())
        .map(|(key, _)| key.to_string_lossy().into_owned())
        .collect();
    for key in [
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
    ] {
        assert!(
            removed.iter().any(|k| k == key),
            "{key} not removed: {removed:?}"
        );
    }
}

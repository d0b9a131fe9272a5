//! `examples/nginx/certherd-site.conf` is a valid nginx site that does what
//! its comments say: its absolute paths and ports are moved into a scratch
//! directory and onto free loopback ports, then nginx checks it (`nginx -t`)
//! and serves it.

mod support;

use std::fs;
use std::path::Path;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use support::nginx::NginxProcess;
use support::process::poll_until;
use support::{free_ports, http_get_raw, served_chain_sha256, sha256_hex, TestCa};

const EXAMPLE: &str = include_str!("../examples/nginx/certherd-site.conf");

/// The example with `/etc/nginx/tls/` and `/var/www/` moved under `dir`, port
/// 80 and 443 listeners moved to `127.0.0.1:http` and `127.0.0.1:https`, and
/// the IPv6 listeners dropped (loopback IPv6 is not always there). Panics if
/// the example no longer has what this expects, so it cannot drift silently.
fn localized(dir: &Path, http: u16, https: u16) -> String {
    let d = dir.display();
    let text = EXAMPLE
        .replace("/etc/nginx/tls/", &format!("{d}/tls/"))
        .replace("/var/www/", &format!("{d}/www/"));
    let mut out = String::new();
    let (mut saw_http, mut saw_https) = (false, false);
    for line in text.lines() {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix("listen ") {
            if rest.starts_with("[::]:") {
                continue;
            }
            let (port, params) = rest.split_once([' ', ';']).expect("listen PORT ...;");
            let ours = match port {
                "80" => {
                    saw_http = true;
                    http
                }
                "443" => {
                    saw_https = true;
                    https
                }
                other => panic!("unexpected listen port {other} in the example: {line}"),
            };
            let sep = if rest[port.len()..].starts_with(';') {
                ";"
            } else {
                " "
            };
            out.push_str(&format!("    listen 127.0.0.1:{ours}{sep}{params}\n"));
        } else if !trimmed.starts_with('#') {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(
        saw_http && saw_https,
        "the example should listen on 80 and 443"
    );
    for outside in ["/etc/", "/var/", "/usr/", "/srv/"] {
        assert!(
            !out.contains(outside),
            "the example refers to {outside}... beyond what this test moves:\n{out}"
        );
    }
    out
}

#[test]
fn example_names_the_paths_certherd_deploys_to() {
    for expected in [
        "ssl_certificate /etc/nginx/tls/example.pem;",
        "ssl_certificate_key /etc/nginx/tls/example.key;",
        "root /var/www/acme;",
        "location ^~ /.well-known/acme-challenge/",
        "ssl_protocols TLSv1.2 TLSv1.3;",
    ] {
        assert!(EXAMPLE.contains(expected), "example lacks `{expected}`");
    }
}

#[test]
fn example_passes_nginx_t_and_serves_certificate_challenges_and_redirect() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for sub in ["tls", "www/acme/.well-known/acme-challenge", "www/example"] {
        fs::create_dir_all(d.join(sub)).unwrap();
    }
    // A full chain as certherd deploys it: leaf, then the issuer.
    let ca = TestCa::new("example issuer");
    let leaf = ca.issue(&["example.com", "www.example.com"]);
    fs::write(
        d.join("tls/example.pem"),
        format!("{}{}", leaf.cert_pem, ca.cert_pem),
    )
    .unwrap();
    fs::write(d.join("tls/example.key"), &leaf.key_pem).unwrap();
    fs::write(
        d.join("www/acme/.well-known/acme-challenge/tok3n"),
        "tok3n.thumbprint",
    )
    .unwrap();

    // A port lost to a parallel test between choosing and binding is retried.
    let mut last_error = String::new();
    let mut started = None;
    for _ in 0..3 {
        let ports = free_ports(2);
        NginxProcess::write_conf(d, &localized(d, ports[0], ports[1]));
        let report = NginxProcess::check_config(d).unwrap_or_else(|e| panic!("{e}"));
        assert!(report.contains("test is successful"), "{report}");
        match NginxProcess::start(d) {
            Ok(process) => {
                started = Some((process, ports));
                break;
            }
            Err(e) if e.contains("Address already in use") => last_error = e,
            Err(e) => panic!("{e}"),
        }
    }
    let (_nginx, ports) = started.unwrap_or_else(|| panic!("{last_error}"));
    let (http, https) = (
        format!("127.0.0.1:{}", ports[0]),
        format!("127.0.0.1:{}", ports[1]),
    );

    let chain = poll_until("example nginx serving TLS", Duration::from_secs(10), || {
        served_chain_sha256(&https, "www.example.com")
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let ca_der = rustls::pki_types::CertificateDer::from_pem_slice(ca.cert_pem.as_bytes());
    assert_eq!(
        chain,
        [leaf.sha256(), sha256_hex(&ca_der.unwrap())],
        "served chain (leaf, issuer)"
    );

    let challenge =
        http_get_raw(&http, "example.com", "/.well-known/acme-challenge/tok3n").unwrap();
    assert!(challenge.starts_with("HTTP/1.1 200"), "{challenge}");
    assert!(
        challenge.ends_with("\r\n\r\ntok3n.thumbprint"),
        "{challenge}"
    );
    let missing = http_get_raw(&http, "example.com", "/.well-known/acme-challenge/nope").unwrap();
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");

    let redirect = http_get_raw(&http, "example.com", "/some/page?q=1").unwrap();
    assert!(redirect.starts_with("HTTP/1.1 301"), "{redirect}");
    assert!(
        redirect.contains("\r\nLocation: https://example.com/some/page?q=1\r\n"),
        "{redirect}"
    );
}

//! What a target serves is not trusted: an endpoint that answers garbage
//! instead of TLS, that never answers, that presents certificate bytes that
//! are no certificate, a huge chain, or a certificate with thousands of
//! names. `verify` and `status` report each in words (unreachable with the
//! reason, stale, or current), within the configured deadline.

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use certherd::cert::{Bundle, KeyPem};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use support::run::Setup;
use support::{free_port, sha256_hex};

/// A self-signed certificate for `names` and its key.
fn self_signed(names: Vec<String>) -> (rcgen::KeyPair, rcgen::Certificate) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(names)
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (key, cert)
}

fn bundle(key: &rcgen::KeyPair, cert: &rcgen::Certificate) -> Bundle {
    Bundle::from_chain(KeyPem::new(key.serialize_pem()), &cert.pem()).unwrap()
}

/// Serves `chain` (any bytes) with `key` over TLS on a loopback port,
/// whatever the SNI, from a thread that lives as long as the test.
fn tls_server(chain: Vec<Vec<u8>>, key: &rcgen::KeyPair) -> String {
    #[derive(Debug)]
    struct Fixed(Arc<CertifiedKey>);
    impl ResolvesServerCert for Fixed {
        fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
            Some(self.0.clone())
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signer = provider.key_provider.load_private_key(der).unwrap();
    // `CertifiedKey::new` does not look inside the certificates.
    let certified = CertifiedKey::new(
        chain.into_iter().map(CertificateDer::from).collect(),
        signer,
    );
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Fixed(Arc::new(certified))));
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let config = config.clone();
            std::thread::spawn(move || {
                let Ok(mut conn) = rustls::ServerConnection::new(config) else {
                    return;
                };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                while conn.is_handshaking() {
                    if conn.complete_io(&mut stream).is_err() {
                        return;
                    }
                }
                let _ = conn.complete_io(&mut stream);
            });
        }
    });
    addr
}

/// Answers every connection with `reply` (if any) and then holds it open
/// without a word for 30 s.
fn raw_server(reply: Option<Vec<u8>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let reply = reply.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
                let _ = stream.read(&mut buf);
                if let Some(r) = reply {
                    let _ = stream.write_all(&r);
                }
                std::thread::sleep(Duration::from_secs(30));
            });
        }
    });
    addr
}

struct Case {
    name: &'static str,
    addr: String,
    stored: Bundle,
}

fn config(setup: &Setup, cases: &[Case]) -> String {
    let mut certs = String::new();
    for c in cases {
        let dir = setup.dir.path().join(c.name);
        std::fs::create_dir_all(&dir).unwrap();
        certs.push_str(&format!(
            "  {name}:
    domains: [site.certherd.test]
    challenge: standalone
    targets:
      - name: web
        type: file
        fullchain: {dir}/site.pem
        key: {dir}/site.key
        verify:
          connect: \"{addr}\"
          timeout: 2s
",
            name = c.name,
            dir = dir.display(),
            addr = c.addr,
        ));
    }
    format!(
        "state_dir: {state}
acme:
  directory: https://127.0.0.1:{ca}/dir
challenges:
  standalone:
    type: http-01
    listen: \"127.0.0.1:{http}\"
certificates:
{certs}",
        state = setup.state_dir().display(),
        ca = free_port(),
        http = free_port(),
    )
}

#[test]
fn garbage_silence_broken_huge_and_many_named_certificates_are_reported_in_words() {
    let setup = Setup::new();
    let (key, cert) = self_signed(vec!["site.certherd.test".into()]);
    let normal = bundle(&key, &cert);

    // Thousands of names in one certificate, stored and served.
    let names: Vec<String> = (0..2000)
        .map(|i| format!("host-{i:04}.site.certherd.test"))
        .collect();
    let (many_key, many) = self_signed(names);
    let many_bundle = bundle(&many_key, &many);
    assert_eq!(many_bundle.info.domains.len(), 2000);

    // A chain of many large certificates: over a megabyte.
    let big_names: Vec<String> = (0..500)
        .map(|i| format!("filler-{i:04}.chain.certherd.test"))
        .collect();
    let (_, big) = self_signed(big_names);
    let mut huge_chain = vec![cert.der().to_vec()];
    huge_chain.extend(std::iter::repeat_n(big.der().to_vec(), 80));
    let huge_len: usize = huge_chain.iter().map(Vec::len).sum();
    assert!(huge_len > 1 << 20, "{huge_len}");

    let garbage: Vec<u8> = (0..65536u32).map(|i| (i * 7919 % 251) as u8).collect();
    let cases = [
        Case {
            name: "garbage",
            addr: raw_server(Some(garbage)),
            stored: normal.clone(),
        },
        Case {
            name: "silent",
            addr: raw_server(None),
            stored: normal.clone(),
        },
        Case {
            name: "brokencert",
            addr: tls_server(vec![b"this is no certificate".to_vec()], &key),
            stored: normal.clone(),
        },
        Case {
            name: "hugechain",
            addr: tls_server(huge_chain, &key),
            stored: normal.clone(),
        },
        Case {
            name: "manynames",
            addr: tls_server(vec![many.der().to_vec()], &many_key),
            stored: many_bundle.clone(),
        },
        Case {
            name: "manynamesstale",
            addr: tls_server(vec![many.der().to_vec()], &many_key),
            stored: normal.clone(),
        },
    ];
    setup.write_config(&config(&setup, &cases));
    let directory = format!(
        "https://127.0.0.1:{}/dir",
        std::fs::read_to_string(setup.config_path())
            .unwrap()
            .split("https://127.0.0.1:")
            .nth(1)
            .unwrap()
            .split('/')
            .next()
            .unwrap()
    );
    let store =
        certherd::store::Store::open(&setup.state_dir(), &directory, Duration::from_secs(5))
            .unwrap();
    for c in &cases {
        store
            .install(c.name, &c.stored, time::OffsetDateTime::now_utc())
            .unwrap();
    }
    drop(store);

    let start = Instant::now();
    let verify = setup.run(&["verify"]);
    let took = start.elapsed();
    verify.assert_code(1);
    // Every target is tried within its 2 s deadline, concurrently.
    assert!(took < Duration::from_secs(15), "verify took {took:?}");
    let out = &verify.stdout;
    eprintln!("verify took {took:?}:\n{out}");
    let line = |name: &str| -> String {
        let mut lines = out.lines();
        lines
            .find(|l| l.starts_with(&format!("{name} [")))
            .unwrap_or_else(|| panic!("no {name} in:\n{out}"));
        lines.next().unwrap().to_string()
    };
    let garbage_addr = &cases[0].addr;
    assert_eq!(
        line("garbage"),
        format!("  web (file): verification UNREACHABLE: TLS handshake with {garbage_addr} (SNI site.certherd.test): received corrupt message of type InvalidContentType"),
        "{out}"
    );
    let silent_addr = &cases[1].addr;
    assert!(
        line("silent").starts_with(&format!(
            "  web (file): verification UNREACHABLE: no TLS handshake with {silent_addr} within "
        )),
        "{out}"
    );
    let broken_addr = &cases[2].addr;
    assert_eq!(
        line("brokencert"),
        format!("  web (file): verification UNREACHABLE: TLS handshake with {broken_addr} (SNI site.certherd.test): invalid peer certificate: BadEncoding"),
        "{out}"
    );
    // rustls refuses a handshake message this large before reading it whole.
    let huge_addr = &cases[3].addr;
    assert_eq!(
        line("hugechain"),
        format!("  web (file): verification UNREACHABLE: TLS handshake with {huge_addr} (SNI site.certherd.test): received corrupt message of type HandshakePayloadTooLarge"),
        "{out}"
    );
    assert_eq!(
        line("manynames"),
        format!("  web (file): verified: serves {}", many_bundle.info.sha256),
        "{out}"
    );
    assert_eq!(
        line("manynamesstale"),
        format!(
            "  web (file): verification STALE: serves {}, expected {}",
            sha256_hex(many.der()),
            normal.info.sha256
        ),
        "{out}"
    );

    // `status --json` says the same, state by state, with the reason.
    let status = setup.run(&["status", "--json"]);
    let doc: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    let states: Vec<(String, String, bool)> = doc["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let t = &c["targets"][0];
            (
                c["name"].as_str().unwrap().to_string(),
                t["state"].as_str().unwrap().to_string(),
                t["error"].as_str().is_some_and(|e| !e.is_empty()),
            )
        })
        .collect();
    let expect = |n: &str, s: &str, e: bool| (n.to_string(), s.to_string(), e);
    assert_eq!(
        states,
        vec![
            expect("garbage", "unreachable", true),
            expect("silent", "unreachable", true),
            expect("brokencert", "unreachable", true),
            expect("hugechain", "unreachable", true),
            expect("manynames", "current", false),
            expect("manynamesstale", "stale", true),
        ]
    );
}

//! Metrics and notifications through the certherd binary: the textfile
//! written by `renew`, webhooks that work and one that fails, and the
//! agent's `/metrics`.

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::run::{config, status_json, Setup};
use support::{certherd_cmd, free_port, Nginx, Pebble, PebbleOptions};

/// A loopback HTTP receiver answering every request with `status`; keeps the bodies.
fn receiver(status: u16) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let bodies = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Read the head, then as much body as Content-Length says.
            loop {
                let n = stream.read(&mut chunk).unwrap_or(0);
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).into_owned();
                if let Some(head_end) = text.find("\r\n\r\n") {
                    let len = text[..head_end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    if buf.len() >= head_end + 4 + len {
                        bodies
                            .lock()
                            .unwrap()
                            .push(text[head_end + 4..head_end + 4 + len].to_string());
                        break;
                    }
                }
            }
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    (url, seen)
}

fn with_observers(base: &str, textfile: &std::path::Path, hooks: &[&str]) -> String {
    let mut extra = format!("metrics:\n  textfile: {}\nnotify:\n", textfile.display());
    for url in hooks {
        extra.push_str(&format!(
            "  - type: webhook\n    url: {url}\n    timeout: 2s\n"
        ));
    }
    base.replacen("challenges:\n", &format!("{extra}challenges:\n"), 1)
}

fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name_and_labels)
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("no {name_and_labels} in\n{text}"))
}

#[test]
fn renew_writes_the_textfile_and_notifies_even_when_a_receiver_fails() {
    let pebble = Pebble::start(PebbleOptions::default());
    let nginx = Nginx::start();
    let setup = Setup::new();
    let (good_url, good) = receiver(200);
    let (bad_url, bad) = receiver(500);
    let textfile = setup.dir.path().join("certherd.prom");
    setup.write_config(&with_observers(
        &config(&pebble, &nginx, &setup, ""),
        &textfile,
        &[&bad_url, &good_url],
    ));

    let run = setup.run(&["renew"]);
    run.assert_code(0);
    assert!(
        run.stderr.contains("webhook"),
        "the failing receiver is logged:\n{}",
        run.stderr
    );

    // The renewed event reached the good receiver; the bad one was retried.
    let received = good.lock().unwrap().clone();
    assert_eq!(received.len(), 1, "{received:?}");
    let event: serde_json::Value = serde_json::from_str(&received[0]).unwrap();
    assert_eq!(event["event"], "renewed");
    assert_eq!(event["certificate"], "site");
    assert!(
        bad.lock().unwrap().len() >= 2,
        "the failing receiver was retried"
    );

    // The textfile matches what status says.
    let text = std::fs::read_to_string(&textfile).unwrap();
    let status = status_json(&setup, &["--offline"]);
    let not_after = time::OffsetDateTime::parse(
        status["certificates"][0]["not_after"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!(
        metric(
            &text,
            "certherd_certificate_expiration_timestamp_seconds{certificate=\"site\"}"
        ),
        not_after.unix_timestamp() as f64
    );
    assert_eq!(
        metric(
            &text,
            "certherd_certificate_consecutive_renewal_failures{certificate=\"site\"}"
        ),
        0.0
    );
    assert_eq!(
        metric(&text, "certherd_target_verification_state{certificate=\"site\",target=\"web\",state=\"current\"}"),
        1.0
    );
}

#[test]
fn the_agent_serves_metrics() {
    let pebble = Pebble::start(PebbleOptions::default());
    let nginx = Nginx::start();
    let setup = Setup::new();
    let port = free_port();
    let yaml = config(&pebble, &nginx, &setup, "").replacen(
        "challenges:\n",
        &format!("metrics:\n  listen: \"127.0.0.1:{port}\"\nchallenges:\n"),
        1,
    );
    setup.write_config(&yaml);
    let log = setup.dir.path().join("agent.log");
    let mut agent = certherd_cmd()
        .arg("--config")
        .arg(setup.config_path())
        .arg("run")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let body = support::process::poll_until(
        "a renewed certificate in /metrics",
        Duration::from_secs(30),
        || {
            let response =
                support::http_get_raw(&format!("127.0.0.1:{port}"), "localhost", "/metrics")?;
            if response
                .contains("certherd_certificate_expiration_timestamp_seconds{certificate=\"site\"}")
            {
                Ok(response)
            } else {
                Err("not yet".into())
            }
        },
    );
    // SAFETY: kill(2) on the pid of a child we spawned and have not waited for.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let status = agent.wait().unwrap();
    let body = body.unwrap_or_else(|e| panic!("{e}\n{}", std::fs::read_to_string(&log).unwrap()));
    assert!(body.lines().next().unwrap().ends_with(" 200 OK"), "{body}");
    assert!(
        body.contains("# TYPE certherd_acme_requests_total counter"),
        "{body}"
    );
    assert!(
        body.contains("certherd_acme_requests_total{outcome=\"success\"}"),
        "{body}"
    );
    assert_eq!(status.code(), Some(0));
}

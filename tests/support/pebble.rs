//! Pebble, a test ACME CA, with pebble-challtestsrv as the DNS server its
//! validation authority asks, both on free loopback ports.
//!
//! Pebble's own HTTPS listener gets a leaf signed by a throwaway CA made here
//! ([`Pebble::ca_tls_root_path`]: what certherd needs in `trust_roots`); the
//! root that signs the certificates Pebble issues is a different one, made
//! anew at every start ([`Pebble::issuing_root_pem`]).
//!
//! Neither program reliably exits when a port is taken (challtestsrv logs
//! `bind: address already in use` and keeps running), so readiness is proven
//! by answers only our processes can give: Pebble's directory over TLS signed
//! by our CA, and a DNS record set through challtestsrv's management API and
//! read back from its DNS port. A bind failure is retried on fresh ports.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::process::{block_on, ChildGuard, ScratchDir};
use super::tls::{https_client_trusting, TestCa};
use super::{find_binary, free_ports};

/// How long Pebble and challtestsrv get to answer after they are spawned.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How many times start-up is retried on fresh ports after a bind failure.
const START_ATTEMPTS: usize = 3;
/// The name whose A record proves challtestsrv's management and DNS ports are its own.
const PROBE_HOST: &str = "ready-probe.certherd.test";
const PROBE_ADDR: [u8; 4] = [127, 0, 0, 2];

/// How to run Pebble. `PebbleOptions::default()` suits most tests.
#[derive(Clone, Debug, Default)]
pub struct PebbleOptions {
    /// The port Pebble's validation authority connects to for http-01
    /// (`httpPort`); default: a fresh free port that nobody listens on.
    pub http_port: Option<u16>,
    /// The port it connects to for tls-alpn-01 (`tlsPort`); default: a fresh
    /// free port.
    pub tls_port: Option<u16>,
    /// Percentage of good nonces Pebble rejects as bad
    /// (`PEBBLE_WFE_NONCEREJECT`); 0 by default, for repeatable runs.
    pub nonce_reject: u8,
    /// A DNS server for Pebble's validation authority other than the bundled
    /// challtestsrv (for example a BIND9 taking dns-01 updates).
    pub dns_server: Option<SocketAddr>,
    /// Require external account binding with this key id and base64url HMAC
    /// key (`externalAccountBindingRequired`, `externalAccountMACKeys`).
    pub eab: Option<(String, String)>,
}

/// A running Pebble and its challtestsrv; both are killed on drop.
pub struct Pebble {
    // Declared first: dropped (killed) before the directory.
    pebble: ChildGuard,
    challtestsrv: ChildGuard,
    dir: ScratchDir,
    ports: Ports,
    dns_server: SocketAddr,
    ca_tls_root: PathBuf,
    issuing_root: PathBuf,
    issuing_root_pem: String,
}

#[derive(Clone, Copy, Debug)]
struct Ports {
    listen: u16,
    management: u16,
    http: u16,
    tls: u16,
    dns: u16,
    challtestsrv_management: u16,
}

impl Ports {
    fn choose(opts: &PebbleOptions) -> Ports {
        let p = free_ports(6);
        Ports {
            listen: p[0],
            management: p[1],
            dns: p[2],
            challtestsrv_management: p[3],
            http: opts.http_port.unwrap_or(p[4]),
            tls: opts.tls_port.unwrap_or(p[5]),
        }
    }
}

/// Why one start-up attempt failed.
enum StartError {
    /// A port was taken: worth another try on fresh ports.
    PortTaken(String),
    Fatal(String),
}

impl Pebble {
    /// Starts pebble-challtestsrv and Pebble and waits until both answer.
    /// Panics, with both logs, if they do not.
    pub fn start(opts: PebbleOptions) -> Pebble {
        let pebble_bin = find_binary("pebble", "pebble");
        let challtestsrv_bin = find_binary("pebble-challtestsrv", "pebble");
        let dir = ScratchDir::new("certherd-pebble-");

        let ca = TestCa::new("certherd test CA for Pebble's HTTPS listener");
        let leaf = ca.issue(&["localhost", "127.0.0.1"]);
        let ca_tls_root = dir.path().join("ca-tls-root.pem");
        let cert_path = dir.path().join("pebble-https.pem");
        let key_path = dir.path().join("pebble-https.key");
        write(&ca_tls_root, &ca.cert_pem);
        write(&cert_path, &leaf.cert_pem);
        write(&key_path, &leaf.key_pem);

        let pebble_log = dir.path().join("pebble.log");
        let challtestsrv_log = dir.path().join("challtestsrv.log");
        let mut last_error = String::new();
        for attempt in 1..=START_ATTEMPTS {
            let ports = Ports::choose(&opts);
            let dns_server = opts
                .dns_server
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], ports.dns)));

            let mut challtestsrv = ChildGuard::spawn(
                "pebble-challtestsrv",
                Command::new(&challtestsrv_bin)
                    .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
                    .args(["-dns01", &format!("127.0.0.1:{}", ports.dns)])
                    .args([
                        "-management",
                        &format!("127.0.0.1:{}", ports.challtestsrv_management),
                    ])
                    .args(["-http01", "", "-https01", "", "-tlsalpn01", ""]),
                &challtestsrv_log,
            );

            let mac_keys: serde_json::Map<String, serde_json::Value> = opts
                .eab
                .iter()
                .map(|(kid, key)| (kid.clone(), serde_json::Value::from(key.clone())))
                .collect();
            let config = serde_json::json!({
                "pebble": {
                    "externalAccountMACKeys": mac_keys,
                    "listenAddress": format!("127.0.0.1:{}", ports.listen),
                    "managementListenAddress": format!("127.0.0.1:{}", ports.management),
                    "certificate": cert_path,
                    "privateKey": key_path,
                    "httpPort": ports.http,
                    "tlsPort": ports.tls,
                    "ocspResponderURL": "",
                    "externalAccountBindingRequired": opts.eab.is_some(),
                }
            });
            let config_path = dir.path().join("pebble-config.json");
            write(
                &config_path,
                &serde_json::to_string_pretty(&config).expect("config JSON"),
            );
            let mut pebble = ChildGuard::spawn(
                "pebble",
                Command::new(&pebble_bin)
                    .arg("-config")
                    .arg(&config_path)
                    .arg("-dnsserver")
                    .arg(dns_server.to_string())
                    .env("PEBBLE_VA_NOSLEEP", "1")
                    .env("PEBBLE_WFE_NONCEREJECT", opts.nonce_reject.to_string())
                    .env("PEBBLE_AUTHZREUSE", "0")
                    .env_remove("HTTP_PROXY")
                    .env_remove("HTTPS_PROXY")
                    .env_remove("http_proxy")
                    .env_remove("https_proxy"),
                &pebble_log,
            );

            match wait_ready(&mut pebble, &mut challtestsrv, &ports, &ca_tls_root) {
                Ok(issuing_root_pem) => {
                    let issuing_root = dir.path().join("issuing-root.pem");
                    write(&issuing_root, &issuing_root_pem);
                    return Pebble {
                        pebble,
                        challtestsrv,
                        dir,
                        ports,
                        dns_server,
                        ca_tls_root,
                        issuing_root,
                        issuing_root_pem,
                    };
                }
                Err(StartError::PortTaken(why)) => {
                    eprintln!("pebble start attempt {attempt} lost a port race ({why}); retrying");
                    last_error = why;
                }
                Err(StartError::Fatal(why)) => panic!(
                    "Pebble did not start: {why}\n{}\n{}",
                    pebble.describe_log(),
                    challtestsrv.describe_log()
                ),
            }
        }
        panic!(
            "Pebble did not start in {START_ATTEMPTS} attempts on fresh ports; last: {last_error}\n{}\n{}",
            super::process::describe_log("pebble", &pebble_log),
            super::process::describe_log("pebble-challtestsrv", &challtestsrv_log)
        );
    }

    /// The ACME directory: `https://127.0.0.1:PORT/dir`.
    pub fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.ports.listen)
    }

    /// Pebble's management API: `https://127.0.0.1:PORT` (same TLS root as the
    /// directory).
    pub fn management_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.ports.management)
    }

    /// The port Pebble's validation authority connects to for http-01.
    pub fn http_port(&self) -> u16 {
        self.ports.http
    }

    /// The port Pebble's validation authority connects to for tls-alpn-01.
    pub fn tls_port(&self) -> u16 {
        self.ports.tls
    }

    /// PEM file of the throwaway CA that signed Pebble's HTTPS certificate:
    /// what certherd must have in `trust_roots` to talk to this Pebble.
    pub fn ca_tls_root_path(&self) -> &Path {
        &self.ca_tls_root
    }

    /// PEM of the root that signs the certificates this Pebble issues (new at
    /// every start), fetched from the management API's `/roots/0`.
    pub fn issuing_root_pem(&self) -> &str {
        &self.issuing_root_pem
    }

    /// [`Self::issuing_root_pem`] written to a file, for configurations that
    /// take a path (for example to verify a deployed chain).
    pub fn issuing_root_path(&self) -> &Path {
        &self.issuing_root
    }

    /// The DNS server Pebble's validation authority asks: challtestsrv's, or
    /// `PebbleOptions::dns_server`.
    pub fn dns_server(&self) -> SocketAddr {
        self.dns_server
    }

    /// challtestsrv's management API (plain HTTP), for mock DNS records
    /// (`/add-a`, `/set-txt`, ...). Unset names resolve to 127.0.0.1, and
    /// there are no AAAA answers.
    pub fn challtestsrv_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.challtestsrv_management)
    }

    /// The scratch directory holding the config, certificates and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Pebble's log (stdout and stderr).
    pub fn log_path(&self) -> &Path {
        self.pebble.log_path()
    }

    /// The last lines of both logs, for failure messages.
    pub fn describe_logs(&self) -> String {
        format!(
            "{}\n{}",
            self.pebble.describe_log(),
            self.challtestsrv.describe_log()
        )
    }

    /// Kills Pebble and challtestsrv now (the CA becomes unreachable); idempotent.
    pub fn stop(&mut self) {
        self.pebble.kill();
        self.challtestsrv.kill();
    }
}

fn write(path: &Path, contents: &str) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Polls until Pebble serves its directory and root and challtestsrv answers,
/// returning the issuing root's PEM.
fn wait_ready(
    pebble: &mut ChildGuard,
    challtestsrv: &mut ChildGuard,
    ports: &Ports,
    ca_tls_root: &Path,
) -> Result<String, StartError> {
    let client = https_client_trusting(&[ca_tls_root]);
    let directory_url = format!("https://127.0.0.1:{}/dir", ports.listen);
    let roots_url = format!("https://127.0.0.1:{}/roots/0", ports.management);
    let dns = SocketAddr::from(([127, 0, 0, 1], ports.dns));
    let management = format!("http://127.0.0.1:{}", ports.challtestsrv_management);

    block_on(async {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut challtestsrv_ready = false;
        let mut last = String::from("no probe yet");
        let mut delay = Duration::from_millis(5);
        loop {
            for child in [&mut *pebble, &mut *challtestsrv] {
                // Exit status first: a child that exits after a bind failure
                // has logged it by then.
                let exited = child.exit_status();
                let log = child.log_text();
                if let Some(line) = log.lines().find(|l| l.contains("address already in use")) {
                    return Err(StartError::PortTaken(line.to_owned()));
                }
                if let Some(status) = exited {
                    return Err(StartError::Fatal(format!(
                        "{} exited early ({status})",
                        child.log_path().display()
                    )));
                }
            }
            if !challtestsrv_ready {
                match probe_challtestsrv(&client, &management, dns).await {
                    Ok(()) => challtestsrv_ready = true,
                    Err(e) => last = format!("challtestsrv: {e}"),
                }
            }
            if challtestsrv_ready {
                match probe_pebble(&client, &directory_url, &roots_url).await {
                    Ok(root) => return Ok(root),
                    Err(e) => last = format!("pebble: {e}"),
                }
            }
            if Instant::now() >= deadline {
                return Err(StartError::Fatal(format!(
                    "not ready within {READY_TIMEOUT:?}; last probe: {last}"
                )));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(100));
        }
    })
}

/// Pebble answers its directory (with `newOrder`) over TLS signed by our CA,
/// and its management API the issuing root.
async fn probe_pebble(
    client: &reqwest::Client,
    directory_url: &str,
    roots_url: &str,
) -> Result<String, String> {
    let get = |url: &str| {
        let request = client.get(url).timeout(Duration::from_secs(2)).send();
        async move {
            let response = request.await.map_err(|e| format!("GET: {e:#}"))?;
            let status = response.status();
            let body = response
                .text()
                .await
                .map_err(|e| format!("read body: {e}"))?;
            if !status.is_success() {
                return Err(format!("status {status}: {body}"));
            }
            Ok(body)
        }
    };
    let directory = get(directory_url)
        .await
        .map_err(|e| format!("{directory_url}: {e}"))?;
    if !directory.contains("newOrder") {
        return Err(format!("{directory_url}: no newOrder in {directory}"));
    }
    let root = get(roots_url)
        .await
        .map_err(|e| format!("{roots_url}: {e}"))?;
    if !root.contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!("{roots_url}: not a PEM certificate: {root}"));
    }
    Ok(root)
}

/// challtestsrv takes an A record on its management port and serves it on its
/// DNS port; the record is removed again afterwards.
async fn probe_challtestsrv(
    client: &reqwest::Client,
    management: &str,
    dns: SocketAddr,
) -> Result<(), String> {
    let addr = std::net::Ipv4Addr::from(PROBE_ADDR).to_string();
    let post = |path: &str, body: serde_json::Value| {
        let url = format!("{management}{path}");
        let request = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body.to_string())
            .timeout(Duration::from_secs(2))
            .send();
        async move {
            let response = request.await.map_err(|e| format!("POST {url}: {e:#}"))?;
            match response.status() {
                s if s.is_success() => Ok(()),
                s => Err(format!("POST {url}: status {s}")),
            }
        }
    };
    post(
        "/add-a",
        serde_json::json!({ "host": PROBE_HOST, "addresses": [addr] }),
    )
    .await?;
    let answer = dns_query_a(dns, PROBE_HOST).await?;
    if answer != PROBE_ADDR {
        return Err(format!(
            "DNS {dns} answered {answer:?} for {PROBE_HOST}, not {addr}"
        ));
    }
    post("/clear-a", serde_json::json!({ "host": PROBE_HOST })).await
}

/// A minimal DNS A query over UDP (RFC 1035 §4.1), returning the first A
/// record's address.
async fn dns_query_a(server: SocketAddr, name: &str) -> Result<[u8; 4], String> {
    let id: u16 = rand::random();
    let mut query = Vec::new();
    query.extend_from_slice(&id.to_be_bytes());
    query.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; QDCOUNT 1
    for label in name.split('.') {
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]); // root, QTYPE A, QCLASS IN

    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("bind UDP: {e}"))?;
    socket
        .send_to(&query, server)
        .await
        .map_err(|e| format!("send DNS query to {server}: {e}"))?;
    let mut buf = [0u8; 512];
    let (len, _) = tokio::time::timeout(Duration::from_millis(500), socket.recv_from(&mut buf))
        .await
        .map_err(|_| format!("no DNS answer from {server}"))?
        .map_err(|e| format!("receive DNS answer from {server}: {e}"))?;
    let reply = &buf[..len];
    if len < 12 || reply[..2] != id.to_be_bytes() {
        return Err(format!("DNS {server}: unexpected reply {reply:?}"));
    }
    let rcode = reply[3] & 0x0f;
    let answers = u16::from_be_bytes([reply[6], reply[7]]);
    if rcode != 0 || answers == 0 {
        return Err(format!("DNS {server}: rcode {rcode}, {answers} answers"));
    }
    // Skip the question, then walk the answers to the first A record.
    let mut at = skip_name(reply, 12)? + 4;
    for _ in 0..answers {
        at = skip_name(reply, at)?;
        let field = |i: usize| reply.get(i).copied().ok_or("DNS reply truncated");
        let rtype = u16::from_be_bytes([field(at)?, field(at + 1)?]);
        let rdlen = usize::from(u16::from_be_bytes([field(at + 8)?, field(at + 9)?]));
        let rdata = reply
            .get(at + 10..at + 10 + rdlen)
            .ok_or("DNS reply truncated")?;
        if rtype == 1 && rdlen == 4 {
            return Ok([rdata[0], rdata[1], rdata[2], rdata[3]]);
        }
        at += 10 + rdlen;
    }
    Err(format!("DNS {server}: no A record among {answers} answers"))
}

/// The offset just past the (possibly compressed) domain name at `at`.
fn skip_name(msg: &[u8], mut at: usize) -> Result<usize, String> {
    loop {
        let len = *msg.get(at).ok_or("DNS reply truncated")?;
        match len {
            0 => return Ok(at + 1),
            l if l & 0xc0 == 0xc0 => return Ok(at + 2),
            l => at += 1 + usize::from(l),
        }
    }
}

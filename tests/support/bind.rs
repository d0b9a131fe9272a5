//! BIND9 (`named`) as the authoritative DNS of dns-01 tests: a primary that
//! takes DNS UPDATE signed with TSIG, optionally a secondary that lags.
//!
//! Each [`Bind`] gets loopback addresses of its own (`127.31.X.Y`, added to
//! `lo` with `ip addr add`, because named listens only on addresses an
//! interface holds) and listens on port 53 there: certherd's propagation
//! check asks the servers named in the NS records on port 53, so a test's
//! servers must sit on 53 and never collide with another test process. An
//! address is claimed by `ip addr add` succeeding (it fails when another
//! process added it first), checked to be unanswered before, and removed in
//! `Drop` after named is killed by the pid this code started.
//!
//! The zones: `example.test` (SOA, NS `ns1` and, with a secondary, `ns2`,
//! with A records at the servers' addresses), with the options
//! `acme.example.test` as a separate zone that `_acme-challenge.app`
//! CNAMEs into, and extra zones. Every zone lets the key change TXT
//! records (`update-policy { grant KEY zonesub TXT; }`).
//!
//! The lagging secondary (`ns2`) is a BIND secondary of every zone whose
//! primary sends no NOTIFY and whose SOA refresh is an hour: after its
//! first transfer at start-up it sees changes only when the test calls
//! [`Bind::sync_secondary`] (a NOTIFY sent by the test makes it fetch the
//! zone). Until then the primary answers a new TXT record and it does not.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};

use super::find_binary;
use super::process::{describe_log, poll_until, run_with_timeout, ChildGuard, ScratchDir};

/// The zone every [`Bind`] serves.
pub const ZONE: &str = "example.test.";
/// The TSIG key's name.
pub const KEY_NAME: &str = "certherd.";
/// With [`BindOptions::cname_delegation`]: the zone made for validation...
pub const DELEGATED_ZONE: &str = "acme.example.test.";
/// ...the name in `example.test` that is a CNAME into it...
pub const CNAME_NAME: &str = "_acme-challenge.app.example.test.";
/// ...and the CNAME's target, where the TXT records go.
pub const CNAME_TARGET: &str = "_acme-challenge.app.acme.example.test.";

/// How long named gets to start answering for every zone.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How many random addresses are tried before giving up.
const ADDRESS_ATTEMPTS: usize = 50;
const DIG_TIMEOUT: Duration = Duration::from_secs(10);

/// How to run [`Bind`]. `BindOptions::default()` is one primary for
/// `example.test` with an hmac-sha256 key.
#[derive(Clone, Debug)]
pub struct BindOptions {
    /// `hmac-sha256`, `hmac-sha384` or `hmac-sha512`.
    pub tsig_algorithm: &'static str,
    /// A second authoritative server (`ns2`) that gets changes only at
    /// [`Bind::sync_secondary`].
    pub lagging_secondary: bool,
    /// Serve [`DELEGATED_ZONE`] and the CNAME [`CNAME_NAME`] → [`CNAME_TARGET`].
    pub cname_delegation: bool,
    /// A third named that resolves recursively (every zone a static stub
    /// of the primary), as a CA's resolver does: it follows a CNAME from
    /// one zone into another, which an authoritative server does not.
    pub recursive_resolver: bool,
    /// More zones below `example.test` (e.g. `b.example.test.`), each
    /// delegated from it, served by the same servers.
    pub extra_zones: Vec<String>,
}

impl Default for BindOptions {
    fn default() -> Self {
        BindOptions {
            tsig_algorithm: "hmac-sha256",
            lagging_secondary: false,
            cname_delegation: false,
            recursive_resolver: false,
            extra_zones: Vec::new(),
        }
    }
}

/// A loopback address this process added to `lo`; removed on drop.
struct LoopbackAddr {
    ip: Ipv4Addr,
    ip_bin: PathBuf,
}

impl LoopbackAddr {
    /// A random `127.31.X.Y` that nothing answers on and that no other
    /// process holds: `ip addr add` succeeding is the claim.
    fn claim(ip_bin: &Path) -> LoopbackAddr {
        let mut last = String::new();
        for _ in 0..ADDRESS_ATTEMPTS {
            let ip = Ipv4Addr::new(127, 31, rand::random::<u8>(), rand::random_range(1..=254));
            // Someone listening on port 53 there already: skip it.
            let free = UdpSocket::bind((ip, 53)).is_ok() && TcpListener::bind((ip, 53)).is_ok();
            if !free {
                last = format!("{ip}:53 is in use");
                continue;
            }
            let out = run_with_timeout(
                Command::new(ip_bin).args(["addr", "add", &format!("{ip}/32"), "dev", "lo"]),
                Duration::from_secs(10),
            )
            .unwrap_or_else(|e| panic!("ip addr add: {e}"));
            if out.status.success() {
                return LoopbackAddr {
                    ip,
                    ip_bin: ip_bin.to_path_buf(),
                };
            }
            last = format!(
                "ip addr add {ip}/32 dev lo: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            if !last.contains("File exists") {
                panic!("cannot add a loopback address for named (tests run as root): {last}");
            }
        }
        panic!("no free 127.31.X.Y address in {ADDRESS_ATTEMPTS} attempts; last: {last}");
    }
}

impl Drop for LoopbackAddr {
    fn drop(&mut self) {
        let result = run_with_timeout(
            Command::new(&self.ip_bin).args([
                "addr",
                "del",
                &format!("{}/32", self.ip),
                "dev",
                "lo",
            ]),
            Duration::from_secs(10),
        );
        match result {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "ip addr del {}/32 dev lo: {}",
                self.ip,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!("ip addr del {}/32 dev lo: {e}", self.ip),
        }
    }
}

/// A running BIND9: a primary, and with [`BindOptions::lagging_secondary`]
/// a secondary. Both are killed, and their addresses removed, on drop.
pub struct Bind {
    // Dropped in this order: the servers, then their addresses, then the directory.
    primary: ChildGuard,
    secondary: Option<ChildGuard>,
    resolver: Option<ChildGuard>,
    primary_addr: LoopbackAddr,
    secondary_addr: Option<LoopbackAddr>,
    resolver_addr: Option<LoopbackAddr>,
    zones: Vec<String>,
    algorithm: &'static str,
    secret: String,
    dig: PathBuf,
    dir: ScratchDir,
}

impl Bind {
    /// Starts named as `opts` says and waits until every server answers
    /// every zone; panics with named's log if it does not.
    pub fn start(opts: BindOptions) -> Bind {
        let named = find_binary("named", "bind9");
        let dig = find_binary("dig", "bind9-dnsutils");
        let ip_bin = find_binary("ip", "iproute2");
        let dir = ScratchDir::new("certherd-bind-");
        let secret = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());

        let primary_addr = LoopbackAddr::claim(&ip_bin);
        let secondary_addr = opts.lagging_secondary.then(|| LoopbackAddr::claim(&ip_bin));
        let resolver_addr = opts
            .recursive_resolver
            .then(|| LoopbackAddr::claim(&ip_bin));
        let ns1 = primary_addr.ip;
        let ns2 = secondary_addr.as_ref().map(|a| a.ip);

        let mut zones = vec![ZONE.to_string()];
        if opts.cname_delegation {
            zones.push(DELEGATED_ZONE.to_string());
        }
        for z in &opts.extra_zones {
            let z = if z.ends_with('.') {
                z.clone()
            } else {
                format!("{z}.")
            };
            assert!(
                z.ends_with(&format!(".{ZONE}")),
                "extra zone {z} must be below {ZONE}"
            );
            zones.push(z);
        }

        // Zone files (the primary's), with the NS set of both servers.
        let primary_dir = dir.path().join("primary");
        fs::create_dir(&primary_dir).expect("create primary dir");
        let ns_lines = |owner: &str| {
            let mut s = format!("{owner} IN NS ns1.{ZONE}\n");
            if ns2.is_some() {
                s.push_str(&format!("{owner} IN NS ns2.{ZONE}\n"));
            }
            s
        };
        for zone in &zones {
            // SOA: refresh an hour (the secondary lags until NOTIFY), retry
            // 10 min, expire a day, negative TTL 1 s.
            let mut text = format!(
                "$TTL 60\n@ IN SOA ns1.{ZONE} hostmaster.{ZONE} 1 3600 600 86400 1\n{}",
                ns_lines("@")
            );
            if zone == ZONE {
                text.push_str(&format!("ns1 IN A {ns1}\n"));
                if let Some(ns2) = ns2 {
                    text.push_str(&format!("ns2 IN A {ns2}\n"));
                }
                for child in zones.iter().filter(|z| *z != ZONE) {
                    text.push_str(&ns_lines(child));
                }
                if opts.cname_delegation {
                    text.push_str(&format!("{CNAME_NAME} IN CNAME {CNAME_TARGET}\n"));
                }
            }
            write(&primary_dir.join(zone_file(zone)), &text);
        }

        let key = format!(
            "key \"{KEY_NAME}\" {{ algorithm {}; secret \"{secret}\"; }};\n",
            opts.tsig_algorithm
        );
        let mut conf = options(&primary_dir, ns1) + &key;
        for zone in &zones {
            conf.push_str(&format!(
                "zone \"{zone}\" {{ type primary; file \"{}\"; \
                 update-policy {{ grant {KEY_NAME} zonesub TXT; }}; }};\n",
                zone_file(zone)
            ));
        }
        let primary_conf = primary_dir.join("named.conf");
        write(&primary_conf, &conf);
        let primary = spawn_named(&named, "named (primary)", &primary_conf, &primary_dir);

        let mut bind = Bind {
            primary,
            secondary: None,
            resolver: None,
            primary_addr,
            secondary_addr,
            resolver_addr,
            zones,
            algorithm: opts.tsig_algorithm,
            secret,
            dig,
            dir,
        };
        bind.wait_ready(bind.server_addr());

        // The secondary starts once the primary answers, so that its first
        // transfer succeeds (a failed one is retried only minutes later).
        if let Some(ns2) = ns2 {
            let secondary_dir = bind.dir.path().join("secondary");
            fs::create_dir(&secondary_dir).expect("create secondary dir");
            let mut conf = options(&secondary_dir, ns2);
            for zone in &bind.zones {
                conf.push_str(&format!(
                    "zone \"{zone}\" {{ type secondary; file \"{}\"; primaries {{ {ns1}; }}; \
                     allow-notify {{ 127.0.0.0/8; }}; }};\n",
                    zone_file(zone)
                ));
            }
            let conf_path = secondary_dir.join("named.conf");
            write(&conf_path, &conf);
            bind.secondary = Some(spawn_named(
                &named,
                "named (secondary)",
                &conf_path,
                &secondary_dir,
            ));
            bind.wait_ready(bind.secondary_addr().expect("secondary address"));
        }
        if let Some(addr) = bind.resolver_addr() {
            let resolver_dir = bind.dir.path().join("resolver");
            fs::create_dir(&resolver_dir).expect("create resolver dir");
            let mut conf = options(
                &resolver_dir,
                bind.resolver_addr.as_ref().expect("address").ip,
            )
            .replace(
                "recursion no;",
                "recursion yes;\n  allow-recursion { 127.0.0.0/8; };\n  max-ncache-ttl 1;",
            );
            for zone in &bind.zones {
                conf.push_str(&format!(
                    "zone \"{zone}\" {{ type static-stub; server-addresses {{ {ns1}; }}; }};\n"
                ));
            }
            let conf_path = resolver_dir.join("named.conf");
            write(&conf_path, &conf);
            bind.resolver = Some(spawn_named(
                &named,
                "named (resolver)",
                &conf_path,
                &resolver_dir,
            ));
            let dig = bind.dig.clone();
            let ready = poll_until(
                &format!("resolver on {addr} answering"),
                READY_TIMEOUT,
                || {
                    let out = Command::new(&dig)
                        .args([
                            &format!("@{}", addr.ip()),
                            "+short",
                            "+time=1",
                            "+tries=1",
                            "SOA",
                            ZONE,
                        ])
                        .output()
                        .map_err(|e| e.to_string())?;
                    if String::from_utf8_lossy(&out.stdout).trim().is_empty() {
                        Err("no SOA yet".to_string())
                    } else {
                        Ok(())
                    }
                },
            );
            if let Err(e) = ready {
                panic!("BIND resolver did not start: {e}\n{}", bind.describe_logs());
            }
        }
        bind
    }

    /// The recursive resolver, if started: what a CA would ask.
    pub fn resolver_addr(&self) -> Option<SocketAddr> {
        self.resolver_addr
            .as_ref()
            .map(|a| SocketAddr::new(IpAddr::V4(a.ip), 53))
    }

    /// Waits until `server` answers SOA for every zone.
    fn wait_ready(&mut self, server: SocketAddr) {
        let dig = self.dig.clone();
        for zone in &self.zones {
            let (primary, secondary) = (&mut self.primary, &mut self.secondary);
            let result = poll_until(
                &format!("named on {server} answering SOA {zone}"),
                READY_TIMEOUT,
                || {
                    for child in [Some(&mut *primary), secondary.as_mut()]
                        .into_iter()
                        .flatten()
                    {
                        if let Some(status) = child.exit_status() {
                            return Ok(Err(format!("named exited early ({status})")));
                        }
                    }
                    if dig_answer(&dig, server, zone, "SOA")?.is_empty() {
                        return Err(format!("no SOA yet for {zone}"));
                    }
                    Ok(Ok(()))
                },
            );
            if let Err(e) = result.and_then(|r| r) {
                panic!("BIND did not start: {e}\n{}", self.describe_logs());
            }
        }
    }

    /// The primary, `127.31.X.Y:53`: where updates go, and the resolver.
    pub fn server_addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.primary_addr.ip), 53)
    }

    /// The lagging secondary (`ns2`), if started.
    pub fn secondary_addr(&self) -> Option<SocketAddr> {
        self.secondary_addr
            .as_ref()
            .map(|a| SocketAddr::new(IpAddr::V4(a.ip), 53))
    }

    pub fn tsig_key_name(&self) -> &'static str {
        KEY_NAME
    }

    pub fn tsig_algorithm(&self) -> &'static str {
        self.algorithm
    }

    /// The key's secret, base64 as `tsig-keygen` prints it.
    pub fn tsig_secret(&self) -> &str {
        &self.secret
    }

    /// `ALGORITHM:NAME:SECRET`, for `nsupdate -y`.
    pub fn nsupdate_key(&self) -> String {
        format!("{}:{KEY_NAME}:{}", self.algorithm, self.secret)
    }

    /// The primary's directory: named.conf, the zone files and their journals.
    pub fn zone_dir(&self) -> PathBuf {
        self.dir.path().join("primary")
    }

    /// The zones served, absolute.
    pub fn zones(&self) -> &[String] {
        &self.zones
    }

    /// The TXT values at `name` on the primary (each value's strings joined),
    /// sorted. Only records owned by `name` itself: a CNAME is not followed.
    pub fn txt(&self, name: &str) -> Vec<String> {
        self.txt_on(self.server_addr(), name)
    }

    /// Like [`Self::txt`], asking `server`.
    pub fn txt_on(&self, server: SocketAddr, name: &str) -> Vec<String> {
        let mut values = self
            .dig_answer(server, name, "TXT")
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .filter(|rr| rr.owner.eq_ignore_ascii_case(name) && rr.rtype == "TXT")
            .map(|rr| txt_value(&rr.data))
            .collect::<Vec<_>>();
        values.sort();
        values
    }

    /// Every TXT record in `zone` on the primary, by zone transfer, as
    /// `owner value` lines, sorted: what a "the zone is clean" check compares.
    pub fn zone_txt_records(&self, zone: &str) -> Vec<String> {
        let mut records = self
            .dig_answer(self.server_addr(), zone, "AXFR")
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .filter(|rr| rr.rtype == "TXT")
            .map(|rr| format!("{} {}", rr.owner, txt_value(&rr.data)))
            .collect::<Vec<_>>();
        records.sort();
        records
    }

    /// Makes the lagging secondary fetch every zone now: the test sends it
    /// a NOTIFY (RFC 1996) per zone and waits for the acknowledgement. The
    /// transfer itself follows a moment later.
    pub fn sync_secondary(&self) {
        let server = self
            .secondary_addr()
            .expect("started with lagging_secondary");
        for zone in &self.zones {
            let mut message = Message::new(rand::random(), MessageType::Query, OpCode::Notify);
            message.metadata.authoritative = true;
            message.add_query(Query::query(
                Name::from_ascii(zone).expect("zone name"),
                RecordType::SOA,
            ));
            let bytes = message.to_vec().expect("encode NOTIFY");
            let socket = UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
            socket
                .set_read_timeout(Some(Duration::from_secs(2)))
                .expect("set_read_timeout");
            socket.send_to(&bytes, server).expect("send NOTIFY");
            let mut buf = [0u8; 4096];
            let (n, _) = socket.recv_from(&mut buf).unwrap_or_else(|e| {
                panic!(
                    "no answer to NOTIFY {zone} from {server}: {e}\n{}",
                    self.describe_logs()
                )
            });
            let answer = Message::from_vec(&buf[..n]).expect("decode NOTIFY answer");
            assert_eq!(
                answer.response_code,
                hickory_proto::op::ResponseCode::NoError,
                "NOTIFY {zone} to {server}\n{}",
                self.describe_logs()
            );
        }
    }

    /// The last lines of every named log, for failure messages.
    pub fn describe_logs(&self) -> String {
        let mut s = self.primary.describe_log();
        for other in [&self.secondary, &self.resolver].into_iter().flatten() {
            s.push('\n');
            s.push_str(&other.describe_log());
        }
        s
    }

    fn dig_answer(&self, server: SocketAddr, name: &str, rtype: &str) -> Result<Vec<Rr>, String> {
        dig_answer(&self.dig, server, name, rtype)
    }
}

/// The answer section of `dig +norec @server name rtype`, parsed.
fn dig_answer(dig: &Path, server: SocketAddr, name: &str, rtype: &str) -> Result<Vec<Rr>, String> {
    let out = run_with_timeout(
        Command::new(dig)
            .args(["+norec", "+noall", "+answer", "+time=2", "+tries=1", "-p"])
            .arg(server.port().to_string())
            .arg(format!("@{}", server.ip()))
            .args([name, rtype]),
        DIG_TIMEOUT,
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "dig @{server} {name} {rtype} exited {}: {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(stdout.lines().filter_map(Rr::parse).collect())
}

/// One line of dig's answer section: `owner ttl class type data`.
struct Rr {
    owner: String,
    rtype: String,
    data: String,
}

impl Rr {
    fn parse(line: &str) -> Option<Rr> {
        if line.starts_with(';') || line.trim().is_empty() {
            return None;
        }
        let mut parts = line.split_whitespace();
        let owner = parts.next()?.to_string();
        let _ttl = parts.next()?;
        let _class = parts.next()?;
        let rtype = parts.next()?.to_string();
        let data = parts.collect::<Vec<_>>().join(" ");
        Some(Rr { owner, rtype, data })
    }
}

/// `"abc" "def"` → `abcdef` (TXT values are base64url: no escapes).
fn txt_value(data: &str) -> String {
    data.split('"')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s)
        .collect()
}

fn zone_file(zone: &str) -> String {
    format!("{}zone", zone)
}

/// The `options` and `controls` of one named: its own directory for
/// everything it writes, one address, no recursion, no NOTIFY.
/// `controls { }` keeps it from looking for /etc/bind/rndc.key.
fn options(dir: &Path, addr: Ipv4Addr) -> String {
    let d = dir.display();
    format!(
        "options {{\n  directory \"{d}\";\n  pid-file \"{d}/named.pid\";\n  \
         session-keyfile \"{d}/session.key\";\n  managed-keys-directory \"{d}\";\n  \
         listen-on port 53 {{ {addr}; }};\n  listen-on-v6 {{ none; }};\n  recursion no;\n  \
         dnssec-validation no;\n  notify no;\n  allow-transfer {{ 127.0.0.0/8; }};\n}};\n\
         controls {{ }};\n"
    )
}

fn spawn_named(named: &Path, name: &str, conf: &Path, dir: &Path) -> ChildGuard {
    let log = dir.join("named.log");
    let guard = ChildGuard::spawn(
        name,
        Command::new(named)
            .arg("-c")
            .arg(conf)
            .args(["-u", "root", "-g"]),
        &log,
    );
    if guard.pid().is_none() {
        panic!("{name} did not start\n{}", describe_log(name, &log));
    }
    guard
}

fn write(path: &Path, contents: &str) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

//! Shared support for certherd's integration tests: real services on loopback.
//!
//! Modelled on instant-acme's `tests/pebble.rs` `Environment`: every service a
//! test starts ([`Pebble`] with pebble-challtestsrv as its DNS, [`Nginx`],
//! [`haproxy::Haproxy`], the mail servers of [`mail`], ...) runs
//! on free loopback ports in its own temporary directory, is polled until it
//! answers (every wait has a deadline and says what it waited for), and is
//! stopped in `Drop` by the pid this code started or the pid file it wrote,
//! never by name. A missing binary is a panic that names the package to install
//! (`scripts/install-deps`); nothing is skipped.
//!
//! When a test panics, the temporary directories of the services it started are
//! kept and their paths printed, so the services' logs survive for inspection.
//!
//! Use it from an integration test with `mod support;`.

// Each test crate compiles this module on its own and uses only part of it.
#![allow(dead_code)]

pub mod ari;
pub mod bind;
pub mod faultproxy;
pub mod front;
pub mod haproxy;
pub mod mail;
pub mod nginx;
pub mod pebble;
pub mod powerdns;
pub mod process;
pub mod receiver;
pub mod run;
pub mod sshd;
pub mod tls;
pub mod tmpfs;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

// Re-exported for the tests' convenience; each test crate uses only some.
#[allow(unused_imports)]
pub use bind::{Bind, BindOptions};
#[allow(unused_imports)]
pub use nginx::{Nginx, NginxOptions, Webroot};
#[allow(unused_imports)]
pub use pebble::{Pebble, PebbleOptions};
#[allow(unused_imports)]
pub use process::ScratchDir;
#[allow(unused_imports)]
pub use tls::{
    https_client_trusting, leaf_sha256_of_pem, served_chain_sha256, served_leaf_sha256, sha256_hex,
    TestCa, TestCert,
};

/// A loopback port that is free for both TCP and UDP right now.
///
/// No socket holds it after this returns, but no other test process takes
/// it ([`reserve`]), and it lies outside the kernel's ephemeral range when
/// there is room ([`service_ports`]), so no outgoing connection takes it
/// either. Anything else on the machine still could, which is why
/// [`Pebble`] and [`Nginx`] watch for "address already in use" and retry
/// on other ports.
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// Where test services listen: below the kernel's ephemeral port range
/// (from 10000), or above it. A port from that range, free when chosen, can
/// become the local port of any outgoing connection on the machine a moment
/// later (another test's, or certherd's own), while a port such as the one
/// Pebble validates http-01 on stays unbound for seconds. `None` when the
/// range leaves no room: then the kernel picks.
fn service_ports() -> Option<std::ops::RangeInclusive<u16>> {
    const FLOOR: u32 = 10_000;
    const ROOM: u32 = 4_000;
    let text = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut bounds = text.split_whitespace().map(|v| v.parse::<u32>().ok());
    let (lo, hi) = (bounds.next()??, bounds.next()??);
    let range = if lo >= FLOOR + ROOM {
        FLOOR..=lo - 1
    } else if hi + ROOM <= 65_535 {
        hi + 1..=65_535
    } else {
        return None;
    };
    Some(*range.start() as u16..=*range.end() as u16)
}

/// Where test processes reserve ports (see [`reserve`]).
pub const PORT_RESERVATIONS: &str = "/tmp/certherd-test-ports";

/// Reserve `port` for this test process until it exits: a lock on
/// `PORT_RESERVATIONS/<port>` that every test process tries before taking
/// a port. Tests run in parallel processes, and a port chosen free is
/// often left unbound for seconds (the port Pebble validates http-01 on is
/// bound only while certherd renews): another test once took that port
/// for its own service meanwhile, and certherd then failed with "address
/// already in use". The kernel drops the lock with the process. `false`
/// when another live process holds it.
pub fn reserve(port: u16) -> bool {
    use std::os::fd::AsRawFd;
    use std::sync::Mutex;
    static HELD: Mutex<Vec<fs::File>> = Mutex::new(Vec::new());
    let dir = Path::new(PORT_RESERVATIONS);
    if !dir.is_dir() {
        if let Err(e) = fs::create_dir_all(dir) {
            panic!("create {}: {e}", dir.display());
        }
        // Shared like /tmp, for test runs under other users. (Only its
        // owner can change the mode: errors are ignored.)
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o1777));
    }
    let path = dir.join(port.to_string());
    // A lock needs only a read-only descriptor, so another user's file serves.
    let file = match fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("create {}: {e}", path.display())),
        Err(e) => panic!("open {}: {e}", path.display()),
    };
    // SAFETY: flock(2) on a descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return false;
    }
    HELD.lock().unwrap().push(file);
    true
}

/// `n` distinct loopback ports, each free for both TCP and UDP right now,
/// and reserved against every other test process.
///
/// All of them are held until every one is chosen, so they differ from each
/// other; see [`free_port`] for what is not guaranteed.
pub fn free_ports(n: usize) -> Vec<u16> {
    use rand::Rng;
    let range = service_ports();
    let mut held = Vec::new();
    let mut ports = Vec::with_capacity(n);
    let mut attempts = 0;
    while ports.len() < n {
        attempts += 1;
        assert!(
            attempts <= 100 * n.max(1),
            "free_ports: found only {} of {n} loopback ports free for both TCP and UDP",
            ports.len()
        );
        let tcp = match &range {
            Some(r) => {
                match TcpListener::bind(("127.0.0.1", rand::rng().random_range(r.clone()))) {
                    Ok(l) => l,
                    Err(_) => continue,
                }
            }
            None => TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 (TCP)"),
        };
        let port = tcp.local_addr().expect("local_addr").port();
        // pebble-challtestsrv's DNS listens on UDP and TCP on the same port.
        let udp = UdpSocket::bind(("127.0.0.1", port)).ok();
        if udp.is_some() && reserve(port) {
            ports.push(port);
        }
        // Held either way, so the kernel does not hand the same port out again.
        held.push((tcp, udp));
    }
    ports
}

/// The environment variables a developer's shell or CI may set that would change
/// what certherd does; [`certherd_cmd`] removes them (and every `CERTHERD_*`).
pub const AMBIENT_ENV: &[&str] = &[
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "RUST_LOG",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
];

/// A [`Command`] for the `certherd` binary built for these tests, with the
/// ambient environment that could change its behaviour removed ([`AMBIENT_ENV`]
/// and every `CERTHERD_*` variable) and stdin closed. Tests trust test CAs
/// explicitly (`trust_roots`), never through `SSL_CERT_FILE`.
pub fn certherd_cmd() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_certherd"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CERTHERD_") {
            cmd.env_remove(key);
        }
    }
    for key in AMBIENT_ENV {
        cmd.env_remove(key);
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// Every entry under `dir` (relative path → description), for "nothing
/// changed" assertions: `file <mode> <sha256>`, `dir <mode>` or
/// `symlink <target>`, with the mode in octal (permission bits only).
/// Symlinks are recorded, not followed. Panics on an unreadable entry.
pub fn sha256_tree(dir: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        let entries = fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("sha256_tree: read {}: {e}", dir.display()));
        for entry in entries {
            let path = entry
                .unwrap_or_else(|e| panic!("sha256_tree: read {}: {e}", dir.display()))
                .path();
            let meta = fs::symlink_metadata(&path)
                .unwrap_or_else(|e| panic!("sha256_tree: stat {}: {e}", path.display()));
            let rel = path
                .strip_prefix(root)
                .expect("entry under root")
                .to_path_buf();
            let mode = meta.permissions().mode() & 0o7777;
            let kind = meta.file_type();
            if kind.is_symlink() {
                let target = fs::read_link(&path)
                    .unwrap_or_else(|e| panic!("sha256_tree: readlink {}: {e}", path.display()));
                out.insert(rel, format!("symlink {}", target.display()));
            } else if kind.is_dir() {
                out.insert(rel, format!("dir {mode:04o}"));
                walk(root, &path, out);
            } else {
                let bytes = fs::read(&path)
                    .unwrap_or_else(|e| panic!("sha256_tree: read {}: {e}", path.display()));
                out.insert(rel, format!("file {mode:04o} {}", sha256_hex(&bytes)));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// The path of an installed program: `PATH` first, then the usual system
/// directories (`nginx` lives in `/usr/sbin`, which a non-root `PATH` may
/// lack). Panics with what to install when it is missing.
pub fn find_binary(name: &str, debian_package: &str) -> PathBuf {
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    let fallback = [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ];
    std::env::split_paths(&path_var)
        .chain(fallback.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| {
            fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .unwrap_or_else(|| {
            panic!(
                "{name} not found on PATH or in {}: run scripts/install-deps \
                 (apt-get install {debian_package})",
                fallback.join(", ")
            )
        })
}

/// Reads an HTTP/1.0 response from `addr` for `GET path` with `Host: host`,
/// over plain TCP (for checking a web server's http side), bounded by 5 s.
/// Returns the whole response, head and body, as text.
pub fn http_get_raw(addr: &str, host: &str, path: &str) -> Result<String, String> {
    let socket_addr = addr
        .to_socket_addrs()
        .map_err(|e| format!("resolve {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("resolve {addr}: no address"))?;
    let timeout = Duration::from_secs(5);
    let mut sock = TcpStream::connect_timeout(&socket_addr, timeout)
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    sock.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(sock, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n")
        .map_err(|e| format!("send request to {addr}: {e}"))?;
    let mut response = String::new();
    sock.read_to_string(&mut response)
        .map_err(|e| format!("read response from {addr}: {e}"))?;
    Ok(response)
}

//! An OpenSSH server on a free loopback port as a "remote host" for the
//! `ssh` target (the recipe in /work/shared/testbed.md): its own host key,
//! an `authorized_keys` holding a client key made for it, a directory for
//! the files. It daemonises; `Drop` stops it by its pid file, never by name.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use super::process::{poll_until, run_with_timeout};
use super::{find_binary, free_port, ScratchDir};

pub struct Sshd {
    dir: ScratchDir,
    port: u16,
    pid: i32,
}

/// `ssh-keygen -t ed25519 -N '' -f PATH -C COMMENT`; returns `PATH`.
pub fn keygen(path: &Path, comment: &str) -> PathBuf {
    let bin = find_binary("ssh-keygen", "openssh-client");
    let out = run_with_timeout(
        Command::new(bin)
            .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
            .arg(path),
        Duration::from_secs(10),
    )
    .unwrap_or_else(|e| panic!("ssh-keygen: {e}"));
    assert!(
        out.status.success(),
        "ssh-keygen -f {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    path.to_path_buf()
}

/// The `TYPE BASE64` part of a public key file.
fn public_key(path: &Path) -> String {
    let text = fs::read_to_string(path.with_extension("pub"))
        .unwrap_or_else(|e| panic!("read {}.pub: {e}", path.display()));
    text.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

impl Sshd {
    /// Starts sshd on a free loopback port (retrying on a lost port race).
    pub fn start() -> Sshd {
        let sshd = find_binary("sshd", "openssh-server");
        // sshd's privilege separation directory.
        let _ = fs::create_dir_all("/run/sshd");
        let dir = ScratchDir::new("certherd-sshd-");
        let d = dir.path().to_path_buf();
        keygen(&d.join("hostkey"), "certherd-test-host");
        keygen(&d.join("client_key"), "certherd-test-client");
        fs::write(
            d.join("authorized_keys"),
            format!("{}\n", public_key(&d.join("client_key"))),
        )
        .unwrap();
        fs::create_dir(d.join("remote")).unwrap();
        let log = d.join("sshd.log");
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let conf = d.join("sshd_config");
            fs::write(
                &conf,
                format!(
                    "# Written by certherd's tests/support/sshd.rs.\n\
                     Port {port}\n\
                     ListenAddress 127.0.0.1\n\
                     HostKey {d}/hostkey\n\
                     PidFile {d}/sshd.pid\n\
                     AuthorizedKeysFile {d}/authorized_keys\n\
                     PermitRootLogin prohibit-password\n\
                     PasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\n\
                     StrictModes no\n\
                     UsePAM no\n",
                    d = d.display()
                ),
            )
            .unwrap();
            let out = run_with_timeout(
                Command::new(&sshd).arg("-f").arg(&conf).arg("-E").arg(&log),
                Duration::from_secs(10),
            )
            .unwrap_or_else(|e| panic!("sshd: {e}"));
            if !out.status.success() {
                last = fs::read_to_string(&log).unwrap_or_default();
                continue;
            }
            let pid_file = d.join("sshd.pid");
            let pid = poll_until("sshd pid file", Duration::from_secs(5), || {
                fs::read_to_string(&pid_file)
                    .ok()
                    .and_then(|s| s.trim().parse::<i32>().ok())
                    .ok_or_else(|| "no pid file yet".to_string())
            })
            .unwrap_or_else(|e| panic!("{e}\n{}", fs::read_to_string(&log).unwrap_or_default()));
            return Sshd { dir, port, pid };
        }
        panic!("sshd did not start on any of 5 free ports; its log:\n{last}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A directory the "remote host" keeps files in (empty at start).
    pub fn remote_dir(&self) -> PathBuf {
        self.dir.path().join("remote")
    }

    /// The private key `authorized_keys` admits.
    pub fn client_key_path(&self) -> PathBuf {
        self.dir.path().join("client_key")
    }

    /// An `ssh` target for this host as a `targets:` list holds it (six
    /// spaces in), logging in with [`Sshd::client_key_path`], trusting
    /// `known_hosts`, writing `fullchain` and `key`; then the `extra` lines
    /// of the target (eight spaces in: `reload:`, `verify:`, …).
    pub fn target_yaml(
        &self,
        name: &str,
        known_hosts: &Path,
        fullchain: &Path,
        key: &Path,
        extra: &str,
    ) -> String {
        format!(
            "      - name: {name}
        type: ssh
        host: 127.0.0.1
        port: {port}
        identity: {id}
        known_hosts: {kh}
        fullchain: {fullchain}
        key: {key}
{extra}",
            port = self.port,
            id = self.client_key_path().display(),
            kh = known_hosts.display(),
            fullchain = fullchain.display(),
            key = key.display(),
        )
    }

    /// `[127.0.0.1]:PORT ssh-ed25519 AAAA…`
    pub fn known_hosts_line(&self) -> String {
        format!(
            "[127.0.0.1]:{} {}",
            self.port,
            public_key(&self.dir.path().join("hostkey"))
        )
    }

    /// A known_hosts line for this host and port with some other key: what
    /// the client sees after the server's key changed.
    pub fn wrong_known_hosts_line(&self) -> String {
        let other = self.dir.path().join("other_hostkey");
        if !other.exists() {
            keygen(&other, "certherd-test-other");
        }
        format!("[127.0.0.1]:{} {}", self.port, public_key(&other))
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    fn is_running(&self) -> bool {
        // The pid still names our sshd (a reused pid would have another cmdline).
        fs::read(format!("/proc/{}/cmdline", self.pid))
            .map(|c| String::from_utf8_lossy(&c).contains(&*self.dir.path().to_string_lossy()))
            .unwrap_or(false)
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        if !self.is_running() {
            return;
        }
        // SAFETY: kill(2) with the pid from our own sshd's pid file, checked
        // above to still be that sshd. Only the listener: sessions end with it
        // or on their own.
        unsafe { libc::kill(self.pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.is_running() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
    }
}

//! Mail servers from Debian on loopback, for `verify.starttls`: Dovecot
//! (IMAP and POP3, `dovecot-imapd`, `dovecot-pop3d`) and Exim (SMTP,
//! `exim4-daemon-light`), each run in the foreground from a config file in
//! its own scratch directory, serving certificate files a test (or
//! certherd) replaces. Both start with a self-signed placeholder
//! certificate, and any number of each can run at once.
//!
//! (Not OpenSMTPD: Debian bookworm's 6.8 fails every TLS handshake with
//! OpenSSL 3, "EVP lib", and keeps its control socket at a fixed path.)
//!
//! Every process is stopped in `Drop` by the pid this code started (SIGTERM,
//! then SIGKILL after a grace period), never by name.

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use super::process::{poll_until, ChildGuard, ScratchDir};
use super::tls::TestCert;
use super::{find_binary, free_ports};

/// How long a started server gets to answer with its greeting.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
const START_ATTEMPTS: usize = 3;

/// Writes `cert` and its key as a server's certificate files.
fn write_cert(cert: &TestCert, cert_path: &Path, key_path: &Path) {
    fs::write(cert_path, &cert.cert_pem).unwrap();
    fs::write(key_path, &cert.key_pem).unwrap();
    fs::set_permissions(key_path, fs::Permissions::from_mode(0o600)).unwrap();
}

/// The first line a server sends on a new connection at `addr`.
fn greeting(addr: &str) -> Result<String, String> {
    let sock = TcpStream::connect(addr).map_err(|e| format!("connect to {addr}: {e}"))?;
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(sock)
        .read_line(&mut line)
        .map_err(|e| format!("read greeting from {addr}: {e}"))?;
    if line.is_empty() {
        return Err(format!("{addr} closed without a greeting"));
    }
    Ok(line.trim_end().to_string())
}

/// SIGTERM to `child`, a grace period, then SIGKILL (by [`ChildGuard`]).
fn stop(child: &mut ChildGuard) {
    if let (Some(pid), None) = (child.pid(), child.exit_status()) {
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while child.exit_status().is_none() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
    }
    child.kill();
}

/// A Dovecot serving IMAP and POP3 with STARTTLS (or, with `tls: false`,
/// without TLS at all) on loopback. IMAP uses `cert_path`/`key_path`;
/// POP3 its own pair (`pop3_cert_path`/`pop3_key_path`), as a site with a
/// certificate per service has.
pub struct Dovecot {
    child: ChildGuard,
    imap_port: u16,
    pop3_port: u16,
    placeholder: TestCert,
    dir: ScratchDir,
}

impl Dovecot {
    pub fn start(tls: bool) -> Dovecot {
        let bin = find_binary("dovecot", "dovecot-imapd dovecot-pop3d");
        for proto in ["imap", "pop3"] {
            let lib = format!("/usr/lib/dovecot/{proto}-login");
            assert!(
                Path::new(&lib).exists(),
                "{lib} is missing: apt-get install dovecot-{proto}d (scripts/install-deps)"
            );
        }
        let dir = ScratchDir::new("certherd-dovecot-");
        let d = dir.path().to_path_buf();
        let placeholder = TestCert::self_signed(&["mail.certherd.test"]);
        write_cert(&placeholder, &d.join("imap.pem"), &d.join("imap.key"));
        write_cert(&placeholder, &d.join("pop3.pem"), &d.join("pop3.key"));
        let log = d.join("dovecot.out");
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            let ports = free_ports(2);
            let (imap_port, pop3_port) = (ports[0], ports[1]);
            fs::write(
                d.join("dovecot.conf"),
                config(&d, tls, imap_port, pop3_port),
            )
            .unwrap();
            let mut child = ChildGuard::spawn(
                "dovecot",
                Command::new(&bin)
                    .arg("-F")
                    .arg("-c")
                    .arg(d.join("dovecot.conf")),
                &log,
            );
            let imap = format!("127.0.0.1:{imap_port}");
            let pop3 = format!("127.0.0.1:{pop3_port}");
            let ready = poll_until("dovecot's greetings", READY_TIMEOUT, || {
                if let Some(status) = child.exit_status() {
                    return Ok(Err(format!("dovecot exited: {status}")));
                }
                greeting(&imap)?;
                greeting(&pop3)?;
                Ok(Ok(()))
            });
            match ready {
                Ok(Ok(())) => {
                    return Dovecot {
                        child,
                        imap_port,
                        pop3_port,
                        placeholder,
                        dir,
                    }
                }
                Ok(Err(e)) | Err(e) => {
                    stop(&mut child);
                    last = format!(
                        "{e}\n{}\n{}",
                        child.describe_log(),
                        fs::read_to_string(d.join("dovecot.log")).unwrap_or_default()
                    );
                }
            }
        }
        panic!("dovecot did not start in {START_ATTEMPTS} attempts:\n{last}");
    }

    pub fn imap_addr(&self) -> String {
        format!("127.0.0.1:{}", self.imap_port)
    }
    pub fn pop3_addr(&self) -> String {
        format!("127.0.0.1:{}", self.pop3_port)
    }
    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("imap.pem")
    }
    pub fn key_path(&self) -> PathBuf {
        self.dir.path().join("imap.key")
    }
    pub fn pop3_cert_path(&self) -> PathBuf {
        self.dir.path().join("pop3.pem")
    }
    pub fn pop3_key_path(&self) -> PathBuf {
        self.dir.path().join("pop3.key")
    }
    pub fn placeholder(&self) -> &TestCert {
        &self.placeholder
    }
    /// `dovecot -c CONF reload`: the master rereads its configuration and
    /// starts new login processes, which load the certificate files again.
    pub fn reload_argv(&self) -> Vec<String> {
        vec![
            find_binary("dovecot", "dovecot-core").display().to_string(),
            "-c".into(),
            self.dir.path().join("dovecot.conf").display().to_string(),
            "reload".into(),
        ]
    }
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("dovecot.log")).unwrap_or_default()
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

fn config(d: &Path, tls: bool, imap_port: u16, pop3_port: u16) -> String {
    let d = d.display();
    let ssl = if tls {
        format!(
            "ssl = yes\n\
             ssl_cert = <{d}/imap.pem\n\
             ssl_key = <{d}/imap.key\n\
             protocol pop3 {{\n  ssl_cert = <{d}/pop3.pem\n  ssl_key = <{d}/pop3.key\n}}\n"
        )
    } else {
        "ssl = no\n".to_string()
    };
    format!(
        "# Written by certherd's tests/support/mail.rs.\n\
         base_dir = {d}/run\n\
         state_dir = {d}/state\n\
         log_path = {d}/dovecot.log\n\
         protocols = imap pop3\n\
         listen = 127.0.0.1\n\
         {ssl}\
         mail_location = mbox:{d}/mail\n\
         passdb {{\n  driver = static\n  args = nopassword=y\n}}\n\
         userdb {{\n  driver = static\n  args = uid=nobody gid=nogroup home={d}/home\n}}\n\
         service imap-login {{\n  chroot =\n  inet_listener imap {{\n    port = {imap_port}\n  }}\n  \
         inet_listener imaps {{\n    port = 0\n  }}\n}}\n\
         service pop3-login {{\n  chroot =\n  inet_listener pop3 {{\n    port = {pop3_port}\n  }}\n  \
         inet_listener pop3s {{\n    port = 0\n  }}\n}}\n"
    )
}

/// Exim (`exim4-daemon-light`) listening on loopback, in the foreground
/// (`exim4 -C CONF -bdf`), with STARTTLS offered (`tls: true`) or not, its
/// certificate at `cert_path`/`key_path`. Its spool, logs and pid file live
/// in its scratch directory, so any number can run. It reads the
/// certificate files again on SIGHUP ([`Exim::reload_argv`]); it also
/// notices changed files by itself after a few seconds.
pub struct Exim {
    child: ChildGuard,
    port: u16,
    placeholder: TestCert,
    dir: ScratchDir,
}

impl Exim {
    pub fn start(tls: bool, server_name: &str) -> Exim {
        let bin = find_binary("exim4", "exim4-daemon-light");
        let dir = ScratchDir::new("certherd-exim-");
        let d = dir.path().to_path_buf();
        let placeholder = TestCert::self_signed(&[server_name]);
        write_cert(&placeholder, &d.join("cert.pem"), &d.join("key.pem"));
        for sub in ["spool", "log"] {
            fs::create_dir(d.join(sub)).unwrap();
        }
        let conf = d.join("exim.conf");
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_ports(1)[0];
            fs::write(&conf, exim_config(&d, tls, port, server_name)).unwrap();
            let mut child = ChildGuard::spawn(
                "exim",
                Command::new(&bin).arg("-C").arg(&conf).arg("-bdf"),
                &d.join("exim.out"),
            );
            let addr = format!("127.0.0.1:{port}");
            let ready = poll_until("exim's greeting", READY_TIMEOUT, || {
                if let Some(status) = child.exit_status() {
                    return Ok(Err(format!("exim exited: {status}")));
                }
                greeting(&addr).map(Ok)
            });
            match ready {
                Ok(Ok(g)) if g.starts_with("220 ") => {
                    return Exim {
                        child,
                        port,
                        placeholder,
                        dir,
                    }
                }
                Ok(Ok(g)) => last = format!("unexpected greeting {g:?}"),
                Ok(Err(e)) | Err(e) => last = e,
            }
            stop(&mut child);
            last = format!(
                "{last}\n{}\n{}",
                child.describe_log(),
                fs::read_to_string(d.join("log/mainlog")).unwrap_or_default()
            );
        }
        panic!("exim did not start in {START_ATTEMPTS} attempts:\n{last}");
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }
    pub fn key_path(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }
    pub fn placeholder(&self) -> &TestCert {
        &self.placeholder
    }
    /// `kill -HUP PID`: Exim re-executes itself and loads its certificate.
    pub fn reload_argv(&self) -> Vec<String> {
        let pid = self.child.pid().expect("exim is running");
        vec![
            find_binary("kill", "procps").display().to_string(),
            "-HUP".into(),
            pid.to_string(),
        ]
    }
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("log/mainlog")).unwrap_or_default()
    }
}

impl Drop for Exim {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

fn exim_config(d: &Path, tls: bool, port: u16, server_name: &str) -> String {
    let d = d.display();
    // An empty host list: STARTTLS is offered to no one.
    let advertise = if tls { "*" } else { "" };
    format!(
        "# Written by certherd's tests/support/mail.rs. Takes no mail.\n\
         keep_environment =\n\
         primary_hostname = {server_name}\n\
         spool_directory = {d}/spool\n\
         log_file_path = {d}/log/%slog\n\
         pid_file_path = {d}/exim.pid\n\
         daemon_smtp_ports = {port}\n\
         local_interfaces = 127.0.0.1\n\
         exim_user = root\n\
         exim_group = root\n\
         tls_advertise_hosts = {advertise}\n\
         tls_certificate = {d}/cert.pem\n\
         tls_privatekey = {d}/key.pem\n\
         acl_smtp_rcpt = refuse\n\
         begin acl\n\
         refuse:\n  deny\n"
    )
}

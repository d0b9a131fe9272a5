//! An unprivileged nginx per test: its prefix, config, pid file, logs and
//! temp paths all live in one scratch directory, and it listens on loopback.
//!
//! [`Nginx`] is a TLS site whose certificate files a test (or certherd)
//! replaces and then reloads; [`NginxProcess`] is the bare daemon, for tests
//! that bring their own `http { }` body (such as the example config's test).
//!
//! Reloads are detected from the error log, which is kept at `notice`: the
//! master logs `reconfiguring` for every reload signal it receives and
//! `start worker processes` when a new configuration took effect.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use super::process::{describe_log, poll_until, run_with_timeout, write_atomic, ScratchDir};
use super::tls::{served_leaf_sha256, TestCert};
use super::{find_binary, free_port};

/// How long `nginx` (which retries a busy port for about 2.5 s) may take to
/// start, reload or test its config.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a started nginx gets to write its pid file and answer.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
const START_ATTEMPTS: usize = 3;

/// A directory served over plain HTTP for http-01 through a webroot.
#[derive(Clone, Debug)]
pub struct Webroot {
    /// Challenge files are served from `<dir>/.well-known/acme-challenge/`.
    pub dir: PathBuf,
    /// The loopback port to serve them on, typically [`super::Pebble::http_port`].
    pub http_port: u16,
}

/// How to run [`Nginx`]. `NginxOptions::default()` is a TLS site only.
#[derive(Clone, Debug, Default)]
pub struct NginxOptions {
    pub webroot: Option<Webroot>,
}

/// A running nginx serving one TLS site on `127.0.0.1:port()` from
/// `cert_path()` and `key_path()`, which start as a self-signed placeholder.
/// Stopped (by the pid in its pid file) on drop.
pub struct Nginx {
    process: NginxProcess,
    port: u16,
    webroot: Option<Webroot>,
    placeholder: TestCert,
    // Last: removed after the process is stopped.
    dir: ScratchDir,
}

impl Nginx {
    /// Starts a TLS site with a placeholder certificate and waits until it
    /// serves that certificate.
    pub fn start() -> Nginx {
        Nginx::start_with(NginxOptions::default())
    }

    /// Like [`Nginx::start`], also serving `location /.well-known/acme-challenge/
    /// { root WEBROOT; }` over plain HTTP on `127.0.0.1:http_port`.
    pub fn start_with_webroot(webroot: impl Into<PathBuf>, http_port: u16) -> Nginx {
        Nginx::start_with(NginxOptions {
            webroot: Some(Webroot {
                dir: webroot.into(),
                http_port,
            }),
        })
    }

    /// Starts the site as `opts` says, retrying on fresh ports if the TLS
    /// port is taken between choosing and binding it; panics with nginx's
    /// output and error log if it does not start and serve.
    pub fn start_with(opts: NginxOptions) -> Nginx {
        let dir = ScratchDir::new("certherd-nginx-");
        let tls = dir.path().join("tls");
        fs::create_dir(&tls).unwrap_or_else(|e| panic!("create {}: {e}", tls.display()));
        let placeholder = TestCert::self_signed(&["localhost", "127.0.0.1"]);
        let cert_path = tls.join("site.pem");
        let key_path = tls.join("site.key");
        write_atomic(&cert_path, placeholder.cert_pem.as_bytes());
        write_atomic(&key_path, placeholder.key_pem.as_bytes());

        let mut last_error = String::new();
        for attempt in 1..=START_ATTEMPTS {
            let port = free_port();
            let mut body = format!(
                r#"server {{
        listen 127.0.0.1:{port} ssl;
        server_name localhost;
        ssl_certificate "{cert}";
        ssl_certificate_key "{key}";
        location / {{
            return 200 "certherd test site\n";
        }}
    }}
"#,
                cert = cert_path.display(),
                key = key_path.display(),
            );
            if let Some(webroot) = &opts.webroot {
                body.push_str(&format!(
                    r#"    server {{
        listen 127.0.0.1:{http_port};
        location /.well-known/acme-challenge/ {{
            root "{root}";
        }}
        location / {{
            return 404;
        }}
    }}
"#,
                    http_port = webroot.http_port,
                    root = webroot.dir.display(),
                ));
            }
            NginxProcess::write_conf(dir.path(), &body);
            match NginxProcess::start(dir.path()) {
                Ok(process) => {
                    let nginx = Nginx {
                        process,
                        port,
                        webroot: opts.webroot.clone(),
                        placeholder,
                        dir,
                    };
                    nginx.wait_until_serving(&nginx.placeholder.sha256(), READY_TIMEOUT);
                    return nginx;
                }
                Err(e)
                    if e.contains(&format!(
                        "127.0.0.1:{port} failed (98: Address already in use)"
                    )) =>
                {
                    eprintln!(
                        "nginx start attempt {attempt} lost port {port} to someone else; retrying"
                    );
                    last_error = e;
                }
                Err(e) => panic!("nginx did not start: {e}"),
            }
        }
        panic!(
            "nginx did not start in {START_ATTEMPTS} attempts on fresh ports; last: {last_error}"
        );
    }

    /// The TLS port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT` of the TLS site.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The plain-HTTP port serving the webroot, if one was configured.
    pub fn http_port(&self) -> Option<u16> {
        self.webroot.as_ref().map(|w| w.http_port)
    }

    /// The certificate file (leaf first, then any chain) the site serves.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("tls/site.pem")
    }

    /// The private key file the site uses.
    pub fn key_path(&self) -> PathBuf {
        self.dir.path().join("tls/site.key")
    }

    /// The self-signed certificate the site starts with.
    pub fn placeholder(&self) -> &TestCert {
        &self.placeholder
    }

    /// The nginx prefix directory (config, pid file, logs, certificates).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn process(&self) -> &NginxProcess {
        &self.process
    }

    pub fn error_log_path(&self) -> PathBuf {
        self.process.error_log_path()
    }

    /// The exact argv that reloads this nginx:
    /// `nginx -p DIR -c DIR/nginx.conf -e DIR/error.log -s reload`.
    pub fn reload_argv(&self) -> Vec<String> {
        self.process.argv(&["-s", "reload"])
    }

    /// Runs [`Self::reload_argv`]; panics (with the error log) if it fails.
    pub fn reload(&self) {
        self.process.reload().unwrap_or_else(|e| panic!("{e}"));
    }

    /// Reload signals the master has received so far (each logs `reconfiguring`),
    /// whether or not the new configuration loaded.
    pub fn reload_count(&self) -> usize {
        self.process.reload_count()
    }

    /// Reloads that took effect (new worker processes started).
    pub fn applied_reload_count(&self) -> usize {
        self.process.applied_reload_count()
    }

    /// Waits until [`Self::applied_reload_count`] reaches `at_least` and
    /// returns it; panics with the error log after `timeout`. The master
    /// handles a reload signal a moment after `nginx -s reload` returns.
    pub fn wait_for_applied_reloads(&self, at_least: usize, timeout: Duration) -> usize {
        poll_until("nginx applied reloads", timeout, || {
            match self.applied_reload_count() {
                n if n >= at_least => Ok(n),
                n => Err(format!("{n} of {at_least}")),
            }
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", self.process.describe_error_log()))
    }

    /// Hex SHA-256 of the leaf certificate the site serves now.
    pub fn served_sha256(&self) -> Result<String, String> {
        served_leaf_sha256(&self.addr(), "localhost")
    }

    /// Waits until the site serves the leaf with fingerprint `sha256` (after a
    /// reload, new connections see the new certificate a moment later); panics
    /// with what it last served and the error log after `timeout`.
    pub fn wait_until_serving(&self, sha256: &str, timeout: Duration) {
        poll_until(
            &format!("nginx on {} serving {sha256}", self.addr()),
            timeout,
            || match self.served_sha256()? {
                served if served == sha256 => Ok(()),
                served => Err(format!("serves {served}")),
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", self.process.describe_error_log()))
    }

    /// Replaces the site's key and certificate files (each by an atomic
    /// rename); takes effect at the next reload.
    pub fn install_cert(&self, cert: &TestCert) {
        write_atomic(&self.key_path(), cert.key_pem.as_bytes());
        write_atomic(&self.cert_path(), cert.cert_pem.as_bytes());
    }

    /// The master's pid, as read from its pid file at start.
    pub fn pid(&self) -> i32 {
        self.process.pid()
    }

    pub fn is_running(&self) -> bool {
        self.process.is_running()
    }

    /// Stops nginx now (SIGTERM to the master, SIGKILL if it lingers); idempotent.
    pub fn stop(&mut self) {
        self.process.stop();
    }
}

/// An nginx daemon with its prefix in `dir`: `nginx -p DIR -c DIR/nginx.conf
/// -e DIR/error.log`, pid file `DIR/nginx.pid`. Stopped on drop.
pub struct NginxProcess {
    bin: PathBuf,
    dir: PathBuf,
    pid: i32,
}

impl NginxProcess {
    /// The full `nginx.conf` text around `http_body` (server blocks and the
    /// like, inside `http { }`): daemon on, one worker, pid file, logs and
    /// every temp path under `dir`, error log at `notice`.
    pub fn conf(dir: &Path, http_body: &str) -> String {
        let d = dir.display();
        // As root, workers would otherwise run as nobody and could not read
        // files under a private temporary directory.
        // SAFETY: geteuid has no preconditions and cannot fail.
        let user = if unsafe { libc::geteuid() } == 0 {
            "user root;\n"
        } else {
            ""
        };
        format!(
            r#"# Written by certherd's tests/support/nginx.rs.
{user}daemon on;
worker_processes 1;
pid "{d}/nginx.pid";
error_log "{d}/error.log" notice;

events {{
    worker_connections 64;
}}

http {{
    access_log "{d}/access.log";
    client_body_temp_path "{d}/client_body_temp";
    proxy_temp_path "{d}/proxy_temp";
    fastcgi_temp_path "{d}/fastcgi_temp";
    uwsgi_temp_path "{d}/uwsgi_temp";
    scgi_temp_path "{d}/scgi_temp";
    default_type text/plain;

    {http_body}
}}
"#
        )
    }

    /// Writes [`Self::conf`] to `dir/nginx.conf`.
    pub fn write_conf(dir: &Path, http_body: &str) {
        let path = dir.join("nginx.conf");
        fs::write(&path, Self::conf(dir, http_body))
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    fn base_argv(bin: &Path, dir: &Path) -> Vec<String> {
        let d = dir.display();
        vec![
            bin.display().to_string(),
            "-p".into(),
            d.to_string(),
            "-c".into(),
            format!("{d}/nginx.conf"),
            "-e".into(),
            format!("{d}/error.log"),
        ]
    }

    fn command(argv: &[String]) -> Command {
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        cmd
    }

    /// `nginx -t` on `dir/nginx.conf`: Ok with nginx's report if the config is
    /// valid, Err with it otherwise. Binds no ports.
    pub fn check_config(dir: &Path) -> Result<String, String> {
        let bin = find_binary("nginx", "nginx");
        let mut argv = Self::base_argv(&bin, dir);
        argv.push("-t".into());
        let out = run_with_timeout(&mut Self::command(&argv), COMMAND_TIMEOUT)?;
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            Ok(report)
        } else {
            Err(format!("{} -t: {}\n{report}", argv.join(" "), out.status))
        }
    }

    /// Starts nginx on `dir/nginx.conf` (already written) and waits for its
    /// pid file. Err carries nginx's output and error log.
    pub fn start(dir: &Path) -> Result<NginxProcess, String> {
        let bin = find_binary("nginx", "nginx");
        let argv = Self::base_argv(&bin, dir);
        let out = run_with_timeout(&mut Self::command(&argv), COMMAND_TIMEOUT)?;
        let error_log = dir.join("error.log");
        if !out.status.success() {
            return Err(format!(
                "{}: {}\n{}{}\n{}",
                argv.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                describe_log("nginx error", &error_log)
            ));
        }
        // The daemon writes its pid file just after the starting process exits.
        let pid_file = dir.join("nginx.pid");
        let pid = poll_until("nginx pid file", READY_TIMEOUT, || {
            fs::read_to_string(&pid_file)
                .map_err(|e| format!("{}: {e}", pid_file.display()))?
                .trim()
                .parse::<i32>()
                .map_err(|e| format!("{}: {e}", pid_file.display()))
        })
        .map_err(|e| format!("{e}\n{}", describe_log("nginx error", &error_log)))?;
        Ok(NginxProcess {
            bin,
            dir: dir.to_path_buf(),
            pid,
        })
    }

    /// `nginx -p DIR -c DIR/nginx.conf -e DIR/error.log` followed by `extra`.
    pub fn argv(&self, extra: &[&str]) -> Vec<String> {
        let mut argv = Self::base_argv(&self.bin, &self.dir);
        argv.extend(extra.iter().map(|s| s.to_string()));
        argv
    }

    /// Runs `nginx ... -s reload`. nginx first parses the new configuration
    /// itself and sends no signal if it is invalid (for instance an unreadable
    /// certificate): that is an Err here.
    pub fn reload(&self) -> Result<(), String> {
        let argv = self.argv(&["-s", "reload"]);
        let out = run_with_timeout(&mut Self::command(&argv), COMMAND_TIMEOUT)?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{}: {}\n{}\n{}",
                argv.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr),
                self.describe_error_log()
            ))
        }
    }

    pub fn error_log_path(&self) -> PathBuf {
        self.dir.join("error.log")
    }

    pub fn describe_error_log(&self) -> String {
        describe_log("nginx error", &self.error_log_path())
    }

    fn count_log_lines(&self, suffix: &str) -> usize {
        fs::read_to_string(self.error_log_path())
            .unwrap_or_default()
            .lines()
            .filter(|line| line.ends_with(suffix))
            .count()
    }

    /// Reload signals the master has received (`... 1234#1234: reconfiguring`;
    /// the line before it, `signal 1 (SIGHUP) received from N, reconfiguring`,
    /// is not counted).
    pub fn reload_count(&self) -> usize {
        self.count_log_lines(": reconfiguring")
    }

    /// Configurations that took effect after the first: nginx logs `start
    /// worker processes` at start and after each successful reload, and not
    /// when a reloaded configuration fails to load (it keeps the old one).
    pub fn applied_reload_count(&self) -> usize {
        self.count_log_lines(": start worker processes")
            .saturating_sub(1)
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Whether the master is alive: the pid exists, is not a zombie, and is
    /// still an nginx (not a reused pid).
    pub fn is_running(&self) -> bool {
        let Ok(stat) = fs::read_to_string(format!("/proc/{}/stat", self.pid)) else {
            return false;
        };
        // "PID (COMM) STATE ...": COMM may contain spaces, so split at the last ')'.
        let Some((head, tail)) = stat.rsplit_once(')') else {
            return false;
        };
        let comm = head.split_once('(').map_or("", |(_, c)| c);
        let state = tail.trim_start().chars().next();
        comm == "nginx" && state != Some('Z')
    }

    /// Stops nginx: SIGTERM to the master (fast shutdown; it stops its
    /// workers), then SIGKILL if it has not exited within 5 s. Idempotent.
    pub fn stop(&mut self) {
        if !self.is_running() {
            return;
        }
        // SAFETY: kill(2) with a pid we read from our own nginx's pid file,
        // checked above to still be that nginx.
        unsafe { libc::kill(self.pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.is_running() {
            if Instant::now() >= deadline {
                eprintln!(
                    "nginx master {} ignored SIGTERM for 5 s; sending SIGKILL",
                    self.pid
                );
                // SAFETY: as above.
                unsafe { libc::kill(self.pid, libc::SIGKILL) };
                break;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for NginxProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

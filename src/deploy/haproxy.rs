//! The `haproxy` target: a running HAProxy takes the new certificate
//! through its runtime API (the stats socket, `level admin`) — `set ssl
//! cert` then `commit ssl cert`, no reload, no connection dropped — and the
//! combined PEM (key + full chain) is written on disk, where HAProxy's
//! `crt` line reads it at the next start.
//!
//! The order keeps HAProxy and the disk in agreement:
//!
//! 1. the new file is staged beside `combined` (complete, fsynced, with its
//!    mode and owner) but not renamed: a full disk or a wrong owner fails
//!    here, before HAProxy is touched;
//! 2. `set ssl cert NAME <<` with the PEM, then `commit ssl cert NAME`; if
//!    either fails the transaction is aborted and the staged file removed,
//!    so both still hold the old certificate;
//! 3. the staged file is renamed over `combined`. Should that fail, the old
//!    file is sent back to HAProxy, and the error says whether that worked;
//! 4. `show ssl cert NAME` confirms HAProxy holds the new serial.
//!
//! HAProxy runs one certificate transaction at a time, and HAProxy 2.6 puts
//! a `set ssl cert` for another name into the ongoing transaction. So the
//! transaction list is read before `set` (someone else's transaction is
//! waited for, up to `timeout`, never aborted), the reply to `set` must
//! name our certificate, and certherd's own updates of one HAProxy are done
//! one after another ([`socket_lock`]). A command HAProxy refuses because
//! another client's certificate command holds its lock is sent again
//! ([`Api::send`]).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::cert::Bundle;
use crate::config::{HaproxySocket, HaproxyTarget};
use crate::store::fsutil;

/// How long to wait between looks at someone else's ongoing transaction.
const BUSY_POLL: Duration = Duration::from_millis(200);
/// How long to wait before sending a command again that HAProxy refused
/// with "currently locked" (its certificate lock is held for the length
/// of one command, usually well under a millisecond).
const LOCKED_POLL: Duration = Duration::from_millis(50);
/// HAProxy's answer to a certificate command while another client's
/// certificate command is running: nothing was done, it can be sent again.
const LOCKED: &str = "Operations on certificates are currently locked";
/// The most of HAProxy's reply an error quotes.
const REPLY_LIMIT: usize = 300;

/// What went wrong, in HAProxy's terms.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error("no socket at {path} (is HAProxy running, with `stats socket {path} level admin`?)")]
    SocketMissing { path: String },
    #[error("permission denied opening the socket (certherd's user cannot use it)")]
    SocketPermission,
    #[error("cannot connect to the socket: {source}")]
    Connect {
        #[source]
        source: io::Error,
    },
    #[error("`{command}` got no complete answer within {timeout:?}")]
    Timeout {
        command: &'static str,
        timeout: Duration,
    },
    #[error("`{command}`: {source}")]
    Io {
        command: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "HAProxy answered \"Permission denied\": the stats socket must be `level admin` \
         (it is `{level}`)"
    )]
    NotAdmin { level: String },
    #[error(
        "HAProxy has no certificate of that name: the names are the paths its `crt` lines \
         load (`show ssl cert` lists them); set `cert_name` if it differs from `combined`"
    )]
    UnknownCertificate,
    #[error(
        "another update, of certificate {ongoing}, is in progress on this HAProxy \
         (still after {waited:?}); certherd does not touch it"
    )]
    TransactionBusy { ongoing: String, waited: Duration },
    #[error(
        "HAProxy kept answering `{command}` with \"Operations on certificates are currently \
         locked\" for {waited:?} (another client's certificate commands); nothing was changed"
    )]
    Locked {
        command: &'static str,
        waited: Duration,
    },
    #[error(
        "HAProxy put the certificate into the ongoing update of {ongoing} (someone started \
         it meanwhile); that update was aborted, as it no longer held what its author sent"
    )]
    TransactionHijacked { ongoing: String },
    #[error("HAProxy refused the certificate: its private key does not match it")]
    KeyMismatch,
    #[error("`{command}` failed: HAProxy answered: {reply}")]
    Rejected {
        command: &'static str,
        reply: String,
    },
    #[error("writing {path}: {source}; HAProxy was not changed")]
    Stage {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "HAProxy took the new certificate, but it could not be renamed into place at {path} \
         ({source}); HAProxy {restored}"
    )]
    Rename {
        path: PathBuf,
        source: io::Error,
        restored: Restored,
    },
    #[error("after the commit HAProxy holds serial {held}, not {expected}")]
    NotConfirmed { held: String, expected: String },
}

/// After a failed rename: whether HAProxy went back to the file on disk.
#[derive(Debug)]
pub enum Restored {
    Yes,
    No(String),
}

impl fmt::Display for Restored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Restored::Yes => f.write_str("was set back to the certificate in that file"),
            Restored::No(why) => write!(
                f,
                "could NOT be set back ({why}): it serves the new certificate until it \
                 restarts, then the old one"
            ),
        }
    }
}

/// A failed deployment to a `haproxy` target, naming the target, the
/// socket and the certificate.
#[derive(Debug, thiserror::Error)]
#[error("haproxy target {target:?} (socket {socket}, certificate {cert_name}): {problem}")]
pub struct Error {
    pub target: String,
    pub socket: String,
    pub cert_name: String,
    #[source]
    pub problem: Problem,
}

/// One runtime API connection per command, bounded by `timeout`.
struct Api<'a> {
    socket: &'a HaproxySocket,
    timeout: Duration,
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

impl Api<'_> {
    async fn connect(&self) -> Result<Box<dyn Stream>, Problem> {
        let connected: io::Result<Box<dyn Stream>> = match self.socket {
            HaproxySocket::Unix(p) => tokio::net::UnixStream::connect(p)
                .await
                .map(|s| Box::new(s) as Box<dyn Stream>),
            HaproxySocket::Tcp(a) => tokio::net::TcpStream::connect(a.as_str())
                .await
                .map(|s| Box::new(s) as Box<dyn Stream>),
        };
        connected.map_err(|e| match (e.kind(), self.socket) {
            (io::ErrorKind::NotFound, HaproxySocket::Unix(p)) => Problem::SocketMissing {
                path: p.display().to_string(),
            },
            (io::ErrorKind::PermissionDenied, _) => Problem::SocketPermission,
            _ => Problem::Connect { source: e },
        })
    }

    /// Send `line` (and `payload`) and read the answer. HAProxy refuses a
    /// certificate command, without doing anything, while another client's
    /// runs (its lock is a try-lock): such a command is sent again, for up
    /// to `timeout` in all.
    async fn send(
        &self,
        command: &'static str,
        line: &str,
        payload: Option<&str>,
    ) -> Result<String, Problem> {
        let start = Instant::now();
        loop {
            let reply = self.send_once(command, line, payload).await?;
            if !reply.contains(LOCKED) {
                return Ok(reply);
            }
            if start.elapsed() + LOCKED_POLL > self.timeout {
                return Err(Problem::Locked {
                    command,
                    waited: start.elapsed(),
                });
            }
            tracing::debug!(
                command,
                "HAProxy's certificate operations are locked; trying again"
            );
            tokio::time::sleep(LOCKED_POLL).await;
        }
    }

    /// Send `line` (and `payload`) once, read the answer until HAProxy closes.
    async fn send_once(
        &self,
        command: &'static str,
        line: &str,
        payload: Option<&str>,
    ) -> Result<String, Problem> {
        let exchange = async {
            let mut s = self.connect().await?;
            let io_err = |source| Problem::Io { command, source };
            let mut out = line.as_bytes().to_vec();
            if let Some(p) = payload {
                out.extend_from_slice(b" <<\n");
                out.extend_from_slice(p.as_bytes());
                // An empty line ends the payload.
                out.push(b'\n');
            } else {
                out.push(b'\n');
            }
            s.write_all(&out).await.map_err(io_err)?;
            s.flush().await.map_err(io_err)?;
            let mut reply = Vec::new();
            s.read_to_end(&mut reply).await.map_err(io_err)?;
            Ok(String::from_utf8_lossy(&reply).into_owned())
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(Problem::Timeout {
                command,
                timeout: self.timeout,
            }),
        }
    }

    /// `show cli level`: admin, operator or user.
    async fn level(&self) -> Result<String, Problem> {
        let r = self.send("show cli level", "show cli level", None).await?;
        Ok(r.trim().to_string())
    }

    /// The name of the ongoing certificate transaction, if any.
    async fn ongoing(&self) -> Result<Option<String>, Problem> {
        let r = self.send("show ssl cert", "show ssl cert", None).await?;
        Ok(ongoing_transaction(&r))
    }

    /// `show ssl cert NAME`: the serial HAProxy holds (upper-case hex).
    async fn serial(&self, name: &str) -> Result<String, Problem> {
        let r = self
            .send("show ssl cert", &format!("show ssl cert {name}"), None)
            .await?;
        if let Some(serial) = r.lines().find_map(|l| l.strip_prefix("Serial: ")) {
            return Ok(serial.trim().to_string());
        }
        Err(classify("show ssl cert", &r, self).await)
    }

    async fn set(&self, name: &str, pem: &str) -> Result<(), Problem> {
        let r = self
            .send("set ssl cert", &format!("set ssl cert {name}"), Some(pem))
            .await?;
        for prefix in [
            "Transaction created for certificate ",
            "Transaction updated for certificate ",
        ] {
            if let Some(rest) = r.lines().find_map(|l| l.strip_prefix(prefix)) {
                let about = rest.trim_end_matches('!');
                if about == name {
                    return Ok(());
                }
                // Our payload is now in someone else's transaction.
                let _ = self
                    .send("abort ssl cert", &format!("abort ssl cert {about}"), None)
                    .await;
                return Err(Problem::TransactionHijacked {
                    ongoing: about.to_string(),
                });
            }
        }
        Err(classify("set ssl cert", &r, self).await)
    }

    async fn commit(&self, name: &str) -> Result<(), Problem> {
        let r = self
            .send("commit ssl cert", &format!("commit ssl cert {name}"), None)
            .await?;
        if r.lines().any(|l| l.trim() == "Success!") {
            return Ok(());
        }
        Err(classify("commit ssl cert", &r, self).await)
    }

    /// `abort ssl cert NAME`, best effort (only after our own `set`).
    async fn abort(&self, name: &str) {
        if let Err(e) = self
            .send("abort ssl cert", &format!("abort ssl cert {name}"), None)
            .await
        {
            tracing::warn!(certificate = name, error = %e, "could not abort the HAProxy transaction");
        }
    }

    /// Set and commit `pem` as certificate `name`; aborted on failure.
    /// (`abort ssl cert NAME` only ever aborts a transaction for NAME:
    /// HAProxy refuses it for another certificate's.)
    async fn replace(&self, name: &str, pem: &str) -> Result<(), Problem> {
        match self.set(name, pem).await {
            Ok(()) => {}
            // Nothing reached HAProxy, or what did is aborted already.
            Err(
                e @ (Problem::TransactionHijacked { .. }
                | Problem::Locked { .. }
                | Problem::SocketMissing { .. }
                | Problem::SocketPermission
                | Problem::Connect { .. }),
            ) => return Err(e),
            Err(e) => {
                self.abort(name).await;
                return Err(e);
            }
        }
        if let Err(e) = self.commit(name).await {
            self.abort(name).await;
            return Err(e);
        }
        Ok(())
    }
}

/// The typed problem in a reply that was not the expected one.
async fn classify(command: &'static str, reply: &str, api: &Api<'_>) -> Problem {
    if reply.contains("Permission denied") {
        let level = api.level().await.unwrap_or_else(|_| "unknown".into());
        return Problem::NotAdmin { level };
    }
    if reply.contains("not referenced by the configuration")
        || reply.contains("Can't display the certificate: Not found")
    {
        return Problem::UnknownCertificate;
    }
    if reply.contains("inconsistencies between private key and certificate") {
        return Problem::KeyMismatch;
    }
    if let Some(about) = reply
        .lines()
        .find_map(|l| l.strip_prefix("The ongoing transaction is about '"))
        .and_then(|r| r.split('\'').next())
    {
        return Problem::TransactionBusy {
            ongoing: about.to_string(),
            waited: Duration::ZERO,
        };
    }
    Problem::Rejected {
        command,
        reply: shorten(reply),
    }
}

/// HAProxy's reply on one line, cut to [`REPLY_LIMIT`].
fn shorten(reply: &str) -> String {
    let one: Vec<&str> = reply
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let s = one.join(" / ");
    if s.chars().count() > REPLY_LIMIT {
        format!("{}…", s.chars().take(REPLY_LIMIT).collect::<String>())
    } else {
        s
    }
}

/// From `show ssl cert`: the name after `# transaction`, marked `*`.
fn ongoing_transaction(list: &str) -> Option<String> {
    let mut in_tx = false;
    for line in list.lines() {
        if line.starts_with('#') {
            in_tx = line.trim() == "# transaction";
        } else if in_tx {
            if let Some(name) = line.strip_prefix('*') {
                return Some(name.trim().to_string());
            }
        }
    }
    None
}

/// The PEM as a runtime API payload: no empty lines (one would end the
/// payload early and the rest would be read as commands).
pub fn payload(pem: &str) -> String {
    let mut out = String::with_capacity(pem.len());
    for line in pem.lines().map(|l| l.trim_end_matches('\r')) {
        if !line.trim().is_empty() {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Serials compared as numbers: case and leading zeros ignored.
fn same_serial(a: &str, b: &str) -> bool {
    let norm = |s: &str| s.trim_start_matches('0').to_ascii_lowercase();
    norm(a) == norm(b)
}

/// Every update of one HAProxy by this process runs under its lock: HAProxy
/// has one certificate transaction at a time.
fn socket_lock(socket: &HaproxySocket) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: super::KeyedLocks<HaproxySocket> = super::KeyedLocks::new();
    LOCKS.get(socket)
}

/// Stage the combined PEM beside its destination (blocking I/O off the runtime).
async fn stage(
    target: &str,
    t: &HaproxyTarget,
    pem: String,
) -> Result<PathBuf, super::DeployError> {
    let uid = t
        .file
        .owner
        .as_deref()
        .map(super::file::user_id)
        .transpose()?;
    let gid = t
        .file
        .group
        .as_deref()
        .map(super::file::group_id)
        .transpose()?;
    let path = t.combined().to_path_buf();
    let mode = t.file.mode;
    tokio::task::spawn_blocking(move || {
        // A deployment killed before its rename left its temp file (with
        // the key); each would otherwise stay for good.
        super::file::sweep_temps(&path);
        fsutil::stage(&path, pem.as_bytes(), mode, uid, gid).map_err(|source| Problem::Stage {
            path: path.clone(),
            source,
        })
    })
    .await
    .expect("staging panicked")
    .map_err(|p| error(target, t, p))
}

fn error(target: &str, t: &HaproxyTarget, problem: Problem) -> super::DeployError {
    super::DeployError::Haproxy(Box::new(Error {
        target: target.to_string(),
        socket: t.socket.to_string(),
        cert_name: t.cert_name.clone(),
        problem,
    }))
}

/// Deploy `b` to HAProxy and to disk; see the module's doc for the order.
pub async fn deploy(target: &str, t: &HaproxyTarget, b: &Bundle) -> Result<(), super::DeployError> {
    let err = |problem| error(target, t, problem);
    let api = Api {
        socket: &t.socket,
        timeout: t.timeout,
    };
    let lock = socket_lock(&t.socket);
    let _held = lock.lock().await;

    // Wait out someone else's transaction, up to `timeout`.
    let start = Instant::now();
    loop {
        match api.ongoing().await.map_err(err)? {
            Some(other) if other != t.cert_name => {
                if start.elapsed() >= t.timeout {
                    return Err(err(Problem::TransactionBusy {
                        ongoing: other,
                        waited: start.elapsed(),
                    }));
                }
                tokio::time::sleep(BUSY_POLL).await;
            }
            _ => break,
        }
    }

    let pem = payload(&b.combined_pem());
    let staged = stage(target, t, pem.clone()).await?;
    let discard = |p: &Path| {
        let _ = std::fs::remove_file(p);
    };
    if let Err(e) = api.replace(&t.cert_name, &pem).await {
        discard(&staged);
        return Err(err(e));
    }
    let path = t.combined().to_path_buf();
    let renamed = {
        let (from, to) = (staged.clone(), path.clone());
        tokio::task::spawn_blocking(move || fsutil::rename_durable(&from, &to))
            .await
            .expect("rename panicked")
    };
    if let Err(source) = renamed {
        discard(&staged);
        let restored = match std::fs::read_to_string(&path) {
            Ok(old) => match api.replace(&t.cert_name, &payload(&old)).await {
                Ok(()) => Restored::Yes,
                Err(e) => Restored::No(e.to_string()),
            },
            Err(e) => Restored::No(format!("cannot read {}: {e}", path.display())),
        };
        return Err(err(Problem::Rename {
            path,
            source,
            restored,
        }));
    }
    let held = api.serial(&t.cert_name).await.map_err(err)?;
    if !same_serial(&held, &b.info.serial) {
        return Err(err(Problem::NotConfirmed {
            held,
            expected: b.info.serial.to_ascii_uppercase(),
        }));
    }
    Ok(())
}

/// Whether the file on disk holds `b` (HAProxy takes every update through
/// a transaction that succeeded before the file was renamed, so the file
/// stands for what HAProxy holds).
pub fn holds(t: &HaproxyTarget, b: &Bundle) -> bool {
    std::fs::read(t.combined())
        .is_ok_and(|on_disk| on_disk == payload(&b.combined_pem()).as_bytes())
}

/// For `--dry-run`: the socket answers at `level admin`, HAProxy knows the
/// certificate's name, the file's directory is writable, owner and group exist.
pub async fn preflight(t: &HaproxyTarget) -> Vec<String> {
    let mut problems = super::file::preflight(&t.file);
    let api = Api {
        socket: &t.socket,
        timeout: t.timeout,
    };
    let ctx = |p: Problem| format!("socket {} (certificate {}): {p}", t.socket, t.cert_name);
    // One at a time per socket, as for deployments (a dry run checks its
    // targets concurrently): fewer "currently locked" answers to send again.
    let lock = socket_lock(&t.socket);
    let _held = lock.lock().await;
    match api.level().await {
        Err(p) => {
            problems.push(ctx(p));
            return problems;
        }
        Ok(level) if level != "admin" => problems.push(ctx(Problem::NotAdmin { level })),
        Ok(_) => {}
    }
    if let Err(p) = api.serial(&t.cert_name).await {
        problems.push(ctx(p));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn payload_has_no_empty_line_that_would_end_it_early() {
        let pem = "-----BEGIN PRIVATE KEY-----\r\nAAA\r\n\r\n-----END PRIVATE KEY-----\n\n  \nB\n";
        assert_eq!(
            payload(pem),
            "-----BEGIN PRIVATE KEY-----\nAAA\n-----END PRIVATE KEY-----\nB\n"
        );
    }

    #[test]
    fn the_ongoing_transaction_is_read_from_the_list() {
        assert_eq!(
            ongoing_transaction(
                "# transaction\n*/etc/a.pem\n# filename\n/etc/a.pem\n/etc/b.pem\n\n"
            ),
            Some("/etc/a.pem".into())
        );
        assert_eq!(ongoing_transaction("# filename\n/etc/a.pem\n\n"), None);
    }

    #[test]
    fn serials_compare_as_numbers() {
        assert!(same_serial("00ab12", "AB12"));
        assert!(!same_serial("ab12", "ab13"));
    }

    #[test]
    fn long_replies_are_cut_to_one_line() {
        let long = format!("first\n\n{}\n", "x".repeat(400));
        let s = shorten(&long);
        assert!(s.starts_with("first / xxx"));
        assert_eq!(s.chars().count(), REPLY_LIMIT + 1);
    }

    /// A stand-in runtime API on a unix socket.
    struct Fake {
        _dir: tempfile::TempDir,
        socket: HaproxySocket,
        /// The first line of each command received.
        seen: Arc<Mutex<Vec<String>>>,
    }

    impl Fake {
        fn api(&self, timeout: Duration) -> Api<'_> {
            Api {
                socket: &self.socket,
                timeout,
            }
        }

        fn seen(&self) -> Vec<String> {
            self.seen.lock().unwrap().clone()
        }
    }

    /// Answers each connection with the next reply.
    async fn fake_api(replies: Vec<&'static str>) -> Fake {
        let dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::UnixListener::bind(dir.path().join("api.sock")).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            for reply in replies {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 64 * 1024];
                let n = s.read(&mut buf).await.unwrap();
                let first = String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .next()
                    .unwrap()
                    .to_string();
                record.lock().unwrap().push(first);
                s.write_all(reply.as_bytes()).await.unwrap();
            }
        });
        Fake {
            socket: HaproxySocket::Unix(dir.path().join("api.sock")),
            _dir: dir,
            seen,
        }
    }

    #[tokio::test]
    async fn a_set_that_lands_in_another_transaction_aborts_that_one() {
        // HAProxy 2.6 puts a `set` for another name into the ongoing transaction.
        let fake = fake_api(vec![
            "Transaction updated for certificate /etc/other.pem!\n\n",
            "Transaction aborted for certificate '/etc/other.pem'!\n\n",
        ])
        .await;
        let api = fake.api(Duration::from_secs(5));
        let err = api.replace("/etc/site.pem", "PEM\n").await.unwrap_err();
        assert!(
            matches!(&err, Problem::TransactionHijacked { ongoing } if ongoing == "/etc/other.pem"),
            "{err:?}"
        );
        assert_eq!(
            fake.seen(),
            [
                "set ssl cert /etc/site.pem <<",
                "abort ssl cert /etc/other.pem"
            ]
        );
    }

    #[tokio::test]
    async fn a_command_refused_as_locked_is_sent_again() {
        // Another client's certificate command held HAProxy's lock.
        let fake = fake_api(vec![
            "Can't show!\nOperations on certificates are currently locked!\n\n",
            "Can't show!\nOperations on certificates are currently locked!\n\n",
            "Filename: /etc/site.pem\nSerial: 0A1B\n\n",
        ])
        .await;
        let api = fake.api(Duration::from_secs(5));
        assert_eq!(api.serial("/etc/site.pem").await.unwrap(), "0A1B");
        assert_eq!(fake.seen(), ["show ssl cert /etc/site.pem"; 3]);
    }

    #[tokio::test]
    async fn a_lock_held_past_the_timeout_is_reported_as_such() {
        let fake = fake_api(vec![
            "Can't commit!\nOperations on certificates are currently locked!\n\n";
            64
        ])
        .await;
        let api = fake.api(Duration::from_millis(300));
        let err = api.commit("/etc/site.pem").await.unwrap_err();
        assert!(
            matches!(err, Problem::Locked { command: "commit ssl cert", waited }
                if waited >= Duration::from_millis(250) && waited < Duration::from_secs(5)),
            "{err:?}"
        );
        let tries = fake.seen().len();
        assert!(tries >= 2, "sent {tries} time(s) in 300 ms");
    }

    #[tokio::test]
    async fn a_failed_commit_is_aborted_and_a_key_mismatch_is_named() {
        let fake = fake_api(vec![
            "Transaction created for certificate /etc/site.pem!\n\n",
            "inconsistencies between private key and certificate loaded '/etc/site.pem'.\n\
             Can't commit /etc/site.pem!\n\n",
            "Transaction aborted for certificate '/etc/site.pem'!\n\n",
        ])
        .await;
        let api = fake.api(Duration::from_secs(5));
        let err = api.replace("/etc/site.pem", "PEM\n").await.unwrap_err();
        assert!(matches!(err, Problem::KeyMismatch), "{err:?}");
        assert_eq!(
            fake.seen(),
            [
                "set ssl cert /etc/site.pem <<",
                "commit ssl cert /etc/site.pem",
                "abort ssl cert /etc/site.pem"
            ]
        );
    }
}

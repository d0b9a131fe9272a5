//! A real HAProxy on a free loopback port, for the `haproxy` target: one TLS
//! frontend (`bind 127.0.0.1:PORT ssl crt <combined> crt <other>`, the
//! second certificate for tests that need another name) that answers every
//! request itself (`http-request return`, keep-alive), and stats sockets in
//! its own directory: `admin.sock` (`level admin`) and `operator.sock`
//! (`level operator`, too low to change certificates).
//!
//! HAProxy runs in the foreground (`-db`) as a child of the test, so its pid
//! is the one that serves; `Drop` kills that pid, never anything by name.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConnection, StreamOwned};

use super::process::{poll_until, run_with_timeout, ChildGuard};
use super::tls::client_config_trusting;
use super::{find_binary, free_port, ScratchDir, TestCert};

pub struct Haproxy {
    dir: ScratchDir,
    port: u16,
    placeholder: TestCert,
    child: ChildGuard,
}

impl Haproxy {
    /// Starts HAProxy serving a self-signed placeholder for `site` from
    /// `<dir>/certs/site.pem` (retrying on a lost port race).
    pub fn start(site: &str) -> Haproxy {
        let bin = find_binary("haproxy", "haproxy");
        let dir = ScratchDir::new("certherd-haproxy-");
        let d = dir.path().to_path_buf();
        fs::create_dir(d.join("certs")).unwrap();
        let placeholder = TestCert::self_signed(&[site]);
        let combined = d.join("certs/site.pem");
        fs::write(
            &combined,
            format!("{}{}", placeholder.key_pem, placeholder.cert_pem),
        )
        .unwrap();
        fs::write(d.join("placeholder.pem"), &placeholder.cert_pem).unwrap();
        let other = TestCert::self_signed(&["other.certherd.test"]);
        fs::write(
            d.join("certs/other.pem"),
            format!("{}{}", other.key_pem, other.cert_pem),
        )
        .unwrap();
        let conf = d.join("haproxy.cfg");
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            fs::write(
                &conf,
                format!(
                    "# Written by certherd's tests/support/haproxy.rs.\n\
                     global\n\
                     \x20 stats socket {d}/admin.sock mode 600 level admin\n\
                     \x20 stats socket {d}/operator.sock mode 600 level operator\n\
                     defaults\n\
                     \x20 mode http\n\
                     \x20 timeout client 60s\n\
                     \x20 timeout server 60s\n\
                     \x20 timeout connect 5s\n\
                     \x20 timeout http-keep-alive 60s\n\
                     frontend site\n\
                     \x20 bind 127.0.0.1:{port} ssl crt {combined} crt {d}/certs/other.pem\n\
                     \x20 http-request return status 200 content-type text/plain string ok\n",
                    d = d.display(),
                    combined = combined.display(),
                ),
            )
            .unwrap();
            let check = run_with_timeout(
                Command::new(&bin).arg("-c").arg("-f").arg(&conf),
                Duration::from_secs(10),
            )
            .unwrap_or_else(|e| panic!("haproxy -c: {e}"));
            assert!(
                check.status.success(),
                "haproxy -c -f {}: {}{}",
                conf.display(),
                String::from_utf8_lossy(&check.stdout),
                String::from_utf8_lossy(&check.stderr)
            );
            let _ = fs::remove_file(d.join("admin.sock"));
            let mut child = ChildGuard::spawn(
                "haproxy",
                Command::new(&bin).arg("-db").arg("-f").arg(&conf),
                &d.join("haproxy.log"),
            );
            let ready = poll_until("haproxy listening", Duration::from_secs(10), || {
                if let Some(status) = child.exit_status() {
                    return Ok(Err(format!("haproxy exited ({status})")));
                }
                match (
                    TcpStream::connect(("127.0.0.1", port)),
                    UnixStream::connect(d.join("admin.sock")),
                ) {
                    (Ok(_), Ok(_)) => Ok(Ok(())),
                    _ => Err("not yet listening".to_string()),
                }
            });
            match ready {
                Ok(Ok(())) => {
                    return Haproxy {
                        dir,
                        port,
                        placeholder,
                        child,
                    }
                }
                Ok(Err(e)) | Err(e) => {
                    last = format!("{e}\n{}", child.describe_log());
                    child.kill();
                }
            }
        }
        panic!("haproxy did not start on any of 5 free ports:\n{last}");
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The combined PEM its `crt` loads (the placeholder at start).
    pub fn combined_path(&self) -> PathBuf {
        self.dir.path().join("certs/site.pem")
    }

    pub fn admin_socket(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
    }

    pub fn operator_socket(&self) -> PathBuf {
        self.dir.path().join("operator.sock")
    }

    pub fn placeholder(&self) -> &TestCert {
        &self.placeholder
    }

    /// The placeholder certificate alone, to trust it.
    pub fn placeholder_path(&self) -> PathBuf {
        self.dir.path().join("placeholder.pem")
    }

    pub fn pid(&self) -> u32 {
        self.child.pid().expect("haproxy is running")
    }

    pub fn is_running(&mut self) -> bool {
        self.child.exit_status().is_none()
    }

    pub fn log(&self) -> String {
        self.child.describe_log()
    }

    /// One runtime API command on the admin socket; HAProxy's answer.
    pub fn api(&self, command: &str) -> String {
        let mut s = UnixStream::connect(self.admin_socket()).expect("connect to admin.sock");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(format!("{command}\n").as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read the API's answer");
        out
    }

    /// The second certificate HAProxy loads (another name).
    pub fn other_path(&self) -> PathBuf {
        self.dir.path().join("certs/other.pem")
    }

    /// `COMMAND <<` with `payload` on the admin socket; HAProxy's answer.
    pub fn api_payload(&self, command: &str, payload: &str) -> String {
        self.api(&format!("{command} <<\n{payload}"))
    }

    /// A TLS connection to the frontend that trusts only the placeholder.
    pub fn connect_trusting_placeholder(&self, sni: &str) -> KeepAlive {
        let config = client_config_trusting(&[&self.placeholder_path()]);
        let name = ServerName::try_from(sni.to_string()).unwrap();
        let conn = ClientConnection::new(Arc::new(config), name).unwrap();
        let sock = TcpStream::connect(self.addr()).expect("connect to haproxy");
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        KeepAlive {
            tls: StreamOwned::new(conn, sock),
            host: sni.to_string(),
        }
    }
}

/// A keep-alive HTTP/1.1 connection over TLS.
pub struct KeepAlive {
    tls: StreamOwned<ClientConnection, TcpStream>,
    host: String,
}

impl KeepAlive {
    /// `GET path` on this connection; the response's status line and body.
    pub fn get(&mut self, path: &str) -> Result<(String, String), String> {
        write!(
            self.tls,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: keep-alive\r\n\r\n",
            self.host
        )
        .map_err(|e| format!("send: {e}"))?;
        self.tls.flush().map_err(|e| format!("send: {e}"))?;
        // Read the head, then exactly Content-Length bytes.
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match self.tls.read(&mut byte) {
                Ok(0) => return Err(format!("connection closed after {head:?}")),
                Ok(_) => head.push(byte[0]),
                Err(e) => return Err(format!("read: {e}")),
            }
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .ok_or_else(|| format!("no content-length in {head}"))?;
        let mut body = vec![0u8; length];
        self.tls
            .read_exact(&mut body)
            .map_err(|e| format!("read body: {e}"))?;
        let status = head.lines().next().unwrap_or_default().to_string();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// Hex SHA-256 of the leaf this connection's handshake presented.
    pub fn peer_leaf_sha256(&self) -> String {
        let certs = self.tls.conn.peer_certificates().expect("handshake done");
        super::sha256_hex(&certs[0])
    }
}

//! The systemd notify protocol (sd_notify(3)): `READY=1`, `STATUS=…`,
//! `WATCHDOG=1`, `STOPPING=1`, sent as datagrams to `$NOTIFY_SOCKET` (a
//! path, or `@name` in the abstract namespace). Without `$NOTIFY_SOCKET`
//! every call does nothing.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

pub struct Notifier {
    socket: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// From the environment; an unusable `$NOTIFY_SOCKET` is logged and ignored.
    pub fn from_env() -> Notifier {
        let socket = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            let path = path.to_string_lossy().into_owned();
            let addr = match path.strip_prefix('@') {
                Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
                None => SocketAddr::from_pathname(&path),
            };
            match (UnixDatagram::unbound(), addr) {
                (Ok(sock), Ok(addr)) => Some((sock, addr)),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(notify_socket = %path, error = %e, "cannot use NOTIFY_SOCKET");
                    None
                }
            }
        });
        Notifier { socket }
    }

    pub fn send(&self, state: &str) {
        if let Some((sock, addr)) = &self.socket {
            if let Err(e) = sock.send_to_addr(state.as_bytes(), addr) {
                tracing::warn!(error = %e, "sd_notify failed");
            }
        }
    }

    pub fn ready(&self) {
        self.send("READY=1");
    }

    pub fn status(&self, status: &str) {
        // One line: the protocol is newline-separated assignments.
        self.send(&format!("STATUS={}", status.replace('\n', " ")));
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    pub fn reloading(&self) {
        self.send("RELOADING=1");
    }
}

/// How often to send `WATCHDOG=1`: half of `$WATCHDOG_USEC`, when the unit
/// asks for a watchdog and `$WATCHDOG_PID` (if set) is this process.
pub fn watchdog_interval() -> Option<Duration> {
    if let Some(pid) = std::env::var_os("WATCHDOG_PID") {
        if pid.to_string_lossy().parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

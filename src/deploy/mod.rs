//! Targets: the places a certificate is pushed to. Every target type
//! deploys a [`Bundle`], can say whether it already holds one, and can
//! preflight itself (for `--dry-run`); reload and verification work the
//! same way for every type.

pub mod exec;
pub mod file;
pub mod haproxy;
pub mod links;
pub mod pkcs12;
pub mod ssh;
pub mod webhook;

use std::path::PathBuf;

use crate::cert::Bundle;
use crate::config::{TargetConfig, TargetKind};
use crate::process::{self, CommandOutcome};

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Pkcs12 {
        path: PathBuf,
        #[source]
        source: pkcs12::Pkcs12Error,
    },
    #[error("{what} {name:?} does not exist on this system")]
    UnknownOwner { what: &'static str, name: String },
    #[error("{0}")]
    Spawn(#[from] process::SpawnError),
    #[error("{0}")]
    Command(String),
    #[error("{0}")]
    Preflight(String),
    #[error(transparent)]
    Haproxy(Box<haproxy::Error>),
    #[error(transparent)]
    Webhook(Box<webhook::Error>),
}

/// What the target's command reported, when it has one (exec targets).
#[derive(Debug, Clone, Default)]
pub struct Deployed {
    pub command: Option<CommandOutcome>,
}

/// Where a certificate's files are, for targets that are handed paths.
#[derive(Debug, Clone)]
pub struct BundleFiles {
    pub dir: PathBuf,
}

impl BundleFiles {
    pub fn key(&self) -> PathBuf {
        self.dir.join(crate::store::KEY_FILE)
    }
    pub fn cert(&self) -> PathBuf {
        self.dir.join(crate::store::LEAF_FILE)
    }
    pub fn chain(&self) -> PathBuf {
        self.dir.join(crate::store::CHAIN_FILE)
    }
    pub fn fullchain(&self) -> PathBuf {
        self.dir.join(crate::store::FULLCHAIN_FILE)
    }
}

/// Push `bundle` to the target. Changes nothing when it fails early; a
/// `file` target's files change together.
pub async fn deploy(
    cert_name: &str,
    target: &TargetConfig,
    bundle: &Bundle,
    files: &BundleFiles,
) -> Result<Deployed, DeployError> {
    match &target.kind {
        TargetKind::File(f) => {
            let f = f.clone();
            let b = bundle.clone();
            tokio::task::spawn_blocking(move || file::write(&f, &b))
                .await
                .expect("file writer panicked")?;
            Ok(Deployed::default())
        }
        TargetKind::Exec(e) => exec::run(cert_name, target, e, bundle, files).await,
        TargetKind::Ssh(s) => {
            ssh::write(&target.name, s, bundle).await?;
            Ok(Deployed::default())
        }
        TargetKind::Haproxy(h) => {
            haproxy::deploy(&target.name, h, bundle).await?;
            Ok(Deployed::default())
        }
        TargetKind::Webhook(w) => {
            webhook::deploy(cert_name, &target.name, w, bundle)
                .await
                .map_err(|e| DeployError::Webhook(Box::new(e)))?;
            Ok(Deployed::default())
        }
    }
}

/// Whether the target already holds `bundle` as far as can be seen locally
/// (`None`: cannot tell, e.g. an exec or webhook target, or an ssh target
/// without going over the network; a haproxy target by its file on disk).
pub fn holds(target: &TargetConfig, bundle: &Bundle) -> Option<bool> {
    match &target.kind {
        TargetKind::File(f) => Some(file::holds(f, bundle)),
        TargetKind::Haproxy(h) => Some(haproxy::holds(h, bundle)),
        TargetKind::Exec(_) | TargetKind::Ssh(_) | TargetKind::Webhook(_) => None,
    }
}

/// Where the target puts the certificate, as a SHA-256 (URLs and commands
/// may hold tokens): its kind, host, paths, mode, owner, group and layout,
/// socket, command or URL. Not its reload or verify, which do not change
/// what it holds. A field added later joins the text only when it is not
/// its default, so that an upgrade does not make every target look moved.
pub fn destination(t: &TargetConfig) -> String {
    use std::fmt::Write as _;
    fn files(out: &mut String, f: &crate::config::FileTarget) {
        for (path, role) in file::paths(f) {
            let _ = write!(out, " {role}={}", path.display());
        }
        let _ = write!(
            out,
            " mode={:o} owner={} group={}",
            f.mode,
            f.owner.as_deref().unwrap_or("-"),
            f.group.as_deref().unwrap_or("-")
        );
        if f.layout == crate::config::Layout::Links {
            out.push_str(" layout=links");
        }
    }
    let mut out = String::new();
    match &t.kind {
        TargetKind::File(f) => {
            out.push_str("file");
            files(&mut out, f);
        }
        TargetKind::Ssh(s) => {
            let _ = write!(
                out,
                "ssh {}@{}:{}",
                s.user.as_deref().unwrap_or("-"),
                s.host,
                s.port
            );
            files(&mut out, &s.files);
        }
        TargetKind::Haproxy(h) => {
            let _ = write!(out, "haproxy {:?} {}", h.socket, h.cert_name);
            files(&mut out, &h.file);
        }
        TargetKind::Exec(e) => {
            let _ = write!(out, "exec {:?}", e.command.argv);
        }
        TargetKind::Webhook(w) => {
            let _ = write!(out, "webhook {}", w.url.expose());
        }
    }
    crate::cert::sha256_hex(out.as_bytes())
}

/// The lock of the service `t` reloads: targets whose `reload` is the same
/// command (on the same host, for ssh targets) are written and reloaded
/// one at a time, so that a reload never reads another target's files
/// while they are being swapped (a new key beside the old certificate).
/// `None` for a target without `reload`. Verification is not serialized.
pub async fn service_lock(t: &TargetConfig) -> Option<tokio::sync::OwnedMutexGuard<()>> {
    static LOCKS: KeyedLocks<String> = KeyedLocks::new();
    let reload = t.reload.as_ref()?;
    let host = match &t.kind {
        TargetKind::Ssh(s) => format!(
            "ssh://{}@{}:{}",
            s.user.as_deref().unwrap_or(""),
            s.host,
            s.port
        ),
        _ => "local".to_string(),
    };
    let key = format!("{host} {:?}", reload.argv);
    Some(LOCKS.get(&key).lock_owned().await)
}

/// Async locks by key, made on first use and kept for the life of the
/// process (there are a handful: one per service or HAProxy).
pub(crate) struct KeyedLocks<K>(
    std::sync::Mutex<std::collections::BTreeMap<K, std::sync::Arc<tokio::sync::Mutex<()>>>>,
);

impl<K: Ord + Clone> KeyedLocks<K> {
    pub(crate) const fn new() -> Self {
        KeyedLocks(std::sync::Mutex::new(std::collections::BTreeMap::new()))
    }

    /// The lock of `key`: the same one for every caller with an equal key.
    pub(crate) fn get(&self, key: &K) -> std::sync::Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.0.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(key.clone()).or_default().clone()
    }
}

/// Run the target's reload command, if it has one (an ssh target's on its
/// remote host).
pub async fn reload(target: &TargetConfig) -> Result<Option<CommandOutcome>, DeployError> {
    let Some(cmd) = &target.reload else {
        return Ok(None);
    };
    if let TargetKind::Ssh(s) = &target.kind {
        return ssh::reload(&target.name, s, cmd).await.map(Some);
    }
    let outcome = process::run(&cmd.argv, &[], cmd.timeout).await?;
    if outcome.success() {
        Ok(Some(outcome))
    } else {
        Err(DeployError::Command(format!(
            "reload {}",
            outcome.summary()
        )))
    }
}

/// Prove a deployment could work without changing anything: paths
/// writable, owners known, programs present and executable, verify
/// endpoints reachable.
pub async fn preflight(target: &TargetConfig) -> Vec<String> {
    let mut problems = Vec::new();
    match &target.kind {
        TargetKind::File(f) => problems.extend(file::preflight(f)),
        TargetKind::Exec(e) => {
            if process::find_program(&e.command.argv[0]).is_none() {
                problems.push(format!(
                    "command {:?} is not an executable file",
                    e.command.argv[0]
                ));
            }
        }
        TargetKind::Ssh(s) => problems.extend(ssh::preflight(s, target.reload.as_ref()).await),
        TargetKind::Haproxy(h) => problems.extend(haproxy::preflight(h).await),
        TargetKind::Webhook(w) => problems.extend(webhook::preflight(w).await),
    }
    if let (Some(r), false) = (&target.reload, matches!(target.kind, TargetKind::Ssh(_))) {
        if process::find_program(&r.argv[0]).is_none() {
            problems.push(format!(
                "reload command {:?} is not an executable file",
                r.argv[0]
            ));
        }
    }
    if let Some(v) = &target.verify {
        let connect = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            tokio::net::TcpStream::connect(v.connect.as_str()),
        )
        .await;
        match connect {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                problems.push(format!("verify endpoint {} is unreachable: {e}", v.connect))
            }
            Err(_) => problems.push(format!(
                "verify endpoint {} did not answer within 5s",
                v.connect
            )),
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CommandSpec, FileSet, FileTarget, Layout};
    use std::path::PathBuf;

    fn web() -> TargetConfig {
        TargetConfig {
            name: "web".into(),
            kind: TargetKind::File(FileTarget {
                files: FileSet {
                    fullchain: Some(PathBuf::from("/etc/tls/a.pem")),
                    key: Some(PathBuf::from("/etc/tls/a.key")),
                    ..FileSet::default()
                },
                mode: 0o640,
                owner: None,
                group: Some("ssl-cert".into()),
                layout: Layout::Files,
            }),
            reload: None,
            verify: None,
        }
    }

    fn file_of(t: &mut TargetConfig) -> &mut FileTarget {
        match &mut t.kind {
            TargetKind::File(f) => f,
            _ => unreachable!(),
        }
    }

    #[test]
    fn the_destination_changes_with_where_the_files_go_and_nothing_else() {
        let base = web();
        // The text is fixed: records written by earlier versions must keep
        // matching, or an upgrade would redeploy every target.
        assert_eq!(
            destination(&base),
            crate::cert::sha256_hex(
                b"file fullchain.pem=/etc/tls/a.pem key.pem=/etc/tls/a.key mode=640 owner=- \
                  group=ssl-cert"
            )
        );
        let mut reloads = web();
        reloads.reload = Some(CommandSpec {
            argv: vec!["true".into()],
            timeout: std::time::Duration::from_secs(1),
        });
        assert_eq!(destination(&reloads), destination(&base));

        let mut moved = web();
        file_of(&mut moved).files.key = Some(PathBuf::from("/etc/tls/b.key"));
        let mut linked = web();
        file_of(&mut linked).layout = Layout::Links;
        let mut opened = web();
        file_of(&mut opened).mode = 0o644;
        for other in [moved, linked, opened] {
            assert_ne!(destination(&other), destination(&base), "{other:?}");
        }
    }
}

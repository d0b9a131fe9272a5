//! The state directory: the ACME account, and per certificate the current
//! key + leaf + chain and previous versions, plus what each target last
//! received.
//!
//! # Contract
//! - Everything lives under `<state_dir>/ca/<namespace>/`, where the
//!   namespace is derived from the CA's directory URL: staging and
//!   production never share an account or a certificate.
//! - Every file is written atomically (temp file, fsync, rename, fsync the
//!   directory). A certificate version is a directory written completely
//!   before it becomes visible, and `current` is a symlink swapped by
//!   rename, so a reader sees the old key + certificate pair or the new one,
//!   never a mix.
//! - Private keys and the account are created 0600, directories 0700.
//! - Not found is `Ok(None)`, never an error; damage is an error naming the path.
//! - One writer at a time: [`Store::open`] takes an exclusive `flock` on the
//!   state directory itself (so a read-only open writes nothing, not even a
//!   lock file). [`Store::open_readonly`] takes no lock and creates nothing.
//! - Names become path components only through [`component`], which refuses
//!   anything but `[A-Za-z0-9][A-Za-z0-9._-]*`.

pub mod fsutil;

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::cert::{Bundle, CertError, KeyPem};
use fsutil::{create_dir_all_mode, rename_durable, sync_dir, write_atomic};

/// How many earlier versions of each certificate are kept for rollback.
pub const KEEP_PREVIOUS: usize = 5;

pub const KEY_FILE: &str = "privkey.pem";
pub const LEAF_FILE: &str = "cert.pem";
pub const CHAIN_FILE: &str = "chain.pem";
pub const FULLCHAIN_FILE: &str = "fullchain.pem";
const CURRENT: &str = "current";
const VERSIONS: &str = "versions";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state directory {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "state directory {path} is locked by another certherd process (waited {waited:?}); \
         only one may write at a time"
    )]
    Locked { path: PathBuf, waited: Duration },
    #[error("{path}: damaged certificate in the state directory: {source}")]
    Damaged {
        path: PathBuf,
        #[source]
        source: CertError,
    },
    #[error("{path}: damaged state record: {message}")]
    Record { path: PathBuf, message: String },
    #[error("{name:?} cannot be used as a file name in the state directory")]
    BadName { name: String },
    #[error(
        "{path} {why}; certherd keeps private keys below it and refuses to use it \
         (make it owned by root or by certherd's user and not writable by others, e.g. \
         chmod go-w {path})"
    )]
    Unsafe { path: PathBuf, why: String },
}

/// Check the directories that hold keys before anything is read or written:
/// `state_dir`, `ca/` and the CA's namespace must belong to root or to us
/// and be writable by no one else (anyone who can rename entries there can
/// swap keys and certificates); `ca/` and the namespace must not be
/// readable by others either — that is fixed (chmod 0700) with a warning.
fn guard_private_dirs(state_dir: &Path, ns: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let me = rustix::process::geteuid().as_raw();
    let ca = state_dir.join("ca");
    for (dir, private) in [(state_dir, false), (ca.as_path(), true), (ns, true)] {
        let meta = fs::metadata(dir).map_err(io_err(dir))?;
        let mode = meta.mode() & 0o7777;
        if meta.uid() != 0 && meta.uid() != me {
            return Err(StoreError::Unsafe {
                path: dir.to_path_buf(),
                why: format!("belongs to another user (uid {})", meta.uid()),
            });
        }
        if mode & 0o022 != 0 {
            return Err(StoreError::Unsafe {
                path: dir.to_path_buf(),
                why: format!("is writable by group or others (mode {mode:04o})"),
            });
        }
        if private && mode & 0o077 != 0 {
            tracing::warn!(path = %dir.display(), mode = %format!("{mode:04o}"), "the state directory was readable by others; setting it to 0700");
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?;
        }
    }
    Ok(())
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A name checked to be one safe path component.
pub fn component(name: &str) -> Result<&str, StoreError> {
    let mut chars = name.chars();
    let ok = matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(name)
    } else {
        Err(StoreError::BadName {
            name: name.to_string(),
        })
    }
}

/// The namespace directory name of a CA directory URL:
/// `https://acme-v02.api.letsencrypt.org/directory` →
/// `acme-v02.api.letsencrypt.org_directory`.
pub fn namespace(directory_url: &str) -> String {
    let rest = directory_url
        .split_once("://")
        .map(|(_, r)| r)
        .unwrap_or(directory_url);
    let mut out: String = rest
        .trim_end_matches('/')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with('.') || out.is_empty() {
        out.insert(0, '_');
    }
    out
}

/// What a target last received, kept so that `renew` retries targets that
/// failed and skips none that never got the current certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetRecord {
    /// SHA-256 of the leaf last deployed successfully.
    pub deployed_sha256: Option<String>,
    pub deployed_at: Option<String>,
    /// The last attempt's error, if it failed.
    pub last_error: Option<String>,
    /// SHA-256 of where the certificate went ([`crate::deploy::destination`]):
    /// when the target's configuration names another place, the record is
    /// not that place's. Absent in records of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
}

/// The CA's suggested renewal window (ARI, RFC 9773) for one certificate,
/// as last fetched: `certs/<name>/ari.json`. Times are RFC 3339. A record
/// whose `sha256` is not the current certificate's is ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AriRecord {
    /// SHA-256 of the certificate the window is for.
    pub sha256: String,
    /// Its ARI identifier (RFC 9773 §4.1).
    pub cert_id: String,
    pub window_start: String,
    pub window_end: String,
    /// The moment chosen inside the window.
    pub renew_at: String,
    pub explanation_url: Option<String>,
    pub fetched_at: String,
    /// Not asked again before this (the CA's `Retry-After`).
    pub next_fetch: String,
}

pub struct Store {
    state_dir: PathBuf,
    ns: PathBuf,
    writable: bool,
    _lock: Option<File>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("ns", &self.ns).finish()
    }
}

impl Store {
    /// Open for writing: create the directories (0700) and take the lock,
    /// waiting up to `wait` for another certherd to finish.
    pub fn open(
        state_dir: &Path,
        directory_url: &str,
        wait: Duration,
    ) -> Result<Store, StoreError> {
        let ns = state_dir.join("ca").join(namespace(directory_url));
        create_dir_all_mode(&ns, 0o700).map_err(io_err(state_dir))?;
        guard_private_dirs(state_dir, &ns)?;
        let lock = File::open(state_dir).map_err(io_err(state_dir))?;
        let start = Instant::now();
        loop {
            match rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => break,
                Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                    if start.elapsed() >= wait {
                        return Err(StoreError::Locked {
                            path: state_dir.to_path_buf(),
                            waited: wait,
                        });
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(io_err(state_dir)(e.into())),
            }
        }
        Ok(Store {
            state_dir: state_dir.to_path_buf(),
            ns,
            writable: true,
            _lock: Some(lock),
        })
    }

    /// Open for reading only: creates nothing, locks nothing, writes nothing.
    /// A missing state directory reads as empty.
    pub fn open_readonly(state_dir: &Path, directory_url: &str) -> Store {
        Store {
            state_dir: state_dir.to_path_buf(),
            ns: state_dir.join("ca").join(namespace(directory_url)),
            writable: false,
            _lock: None,
        }
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The directory of this CA's namespace.
    pub fn namespace_dir(&self) -> &Path {
        &self.ns
    }

    fn assert_writable(&self) {
        assert!(self.writable, "write through a read-only store");
    }

    fn account_path(&self) -> PathBuf {
        self.ns.join("account.json")
    }

    /// The stored ACME account credentials (JSON holding the account key).
    pub fn account(&self) -> Result<Option<Vec<u8>>, StoreError> {
        read_optional(&self.account_path())
    }

    pub fn save_account(&self, credentials_json: &[u8]) -> Result<(), StoreError> {
        self.assert_writable();
        let p = self.account_path();
        write_atomic(&p, credentials_json, 0o600).map_err(io_err(&p))
    }

    fn cert_dir(&self, name: &str) -> Result<PathBuf, StoreError> {
        Ok(self.ns.join("certs").join(component(name)?))
    }

    /// The directory of the current version's files (the version itself,
    /// not the `current` link, so it does not change under a reader).
    pub fn current_dir(&self, name: &str) -> Result<Option<PathBuf>, StoreError> {
        let dir = self.cert_dir(name)?;
        match fs::read_link(dir.join(CURRENT)) {
            Ok(target) => Ok(Some(dir.join(target))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&dir)(e)),
        }
    }

    /// The current certificate, if one was ever installed.
    pub fn current(&self, name: &str) -> Result<Option<Bundle>, StoreError> {
        let dir = self.cert_dir(name)?;
        let link = dir.join(CURRENT);
        if let Some(bundle) = load_current_quickly(&link) {
            return Ok(Some(bundle));
        }
        // No certificate, or something amiss: the path that names it.
        match fs::read_link(&link) {
            Ok(target) => load_version(&dir.join(target)).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&link)(e)),
        }
    }

    /// [`Store::current`] of every name, in order, read by a few threads:
    /// with thousands of certificates the pass is bound by opening and
    /// parsing files, and the cores would otherwise wait on each other.
    pub fn current_all(&self, names: &[&str]) -> Result<Vec<Option<Bundle>>, StoreError> {
        const PER_THREAD: usize = 64;
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(names.len().div_ceil(PER_THREAD))
            .max(1);
        if threads == 1 {
            return names.iter().map(|n| self.current(n)).collect();
        }
        let chunk = names.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let handles: Vec<_> = names
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        part.iter()
                            .map(|n| self.current(n))
                            .collect::<Result<Vec<_>, _>>()
                    })
                })
                .collect();
            let mut out = Vec::with_capacity(names.len());
            for h in handles {
                out.extend(h.join().expect("a store reader panicked")?);
            }
            Ok(out)
        })
    }

    /// The stored version (current or previous) whose leaf has SHA-256
    /// `sha256`, with its folder; `None` when no kept version has it.
    pub fn version_with_sha256(
        &self,
        name: &str,
        sha256: &str,
    ) -> Result<Option<(PathBuf, Bundle)>, StoreError> {
        let dir = self.cert_dir(name)?;
        for v in self.version_names(&dir)?.into_iter().rev() {
            let vdir = dir.join(VERSIONS).join(&v);
            let bundle = load_version(&vdir)?;
            if bundle.info.sha256 == sha256 {
                return Ok(Some((vdir, bundle)));
            }
        }
        Ok(None)
    }

    /// Earlier versions, newest first (the current one excluded).
    pub fn previous(&self, name: &str) -> Result<Vec<Bundle>, StoreError> {
        let dir = self.cert_dir(name)?;
        let current = fs::read_link(dir.join(CURRENT)).ok();
        let mut out = Vec::new();
        for v in self.version_names(&dir)?.into_iter().rev() {
            let rel = Path::new(VERSIONS).join(&v);
            if current.as_deref() == Some(rel.as_path()) {
                continue;
            }
            out.push(load_version(&dir.join(rel))?);
        }
        Ok(out)
    }

    fn version_names(&self, dir: &Path) -> Result<Vec<String>, StoreError> {
        let vdir = dir.join(VERSIONS);
        let mut names = match fs::read_dir(&vdir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect::<Vec<_>>(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_err(&vdir)(e)),
        };
        names.sort();
        Ok(names)
    }

    /// Make `bundle` the current certificate of `name`; the one it replaces
    /// becomes the newest previous version. Old versions beyond
    /// [`KEEP_PREVIOUS`] are removed.
    pub fn install(
        &self,
        name: &str,
        bundle: &Bundle,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.assert_writable();
        let dir = self.cert_dir(name)?;
        let vdir = dir.join(VERSIONS);
        create_dir_all_mode(&vdir, 0o700).map_err(io_err(&vdir))?;
        sweep_debris(&dir, &vdir)?;

        let serial_prefix: String = bundle.info.serial.chars().take(16).collect();
        let version = format!(
            "{}-{}",
            crate::cert::rfc3339(now).replace([':', '-'], ""),
            serial_prefix
        );
        // Write the version completely in a hidden directory, then rename it into place.
        let tmp = vdir.join(format!(".{version}.{:08x}", rand::random::<u32>()));
        create_dir_all_mode(&tmp, 0o700).map_err(io_err(&tmp))?;
        let written = (|| {
            write_atomic(&tmp.join(KEY_FILE), bundle.key.expose().as_bytes(), 0o600)?;
            write_atomic(&tmp.join(LEAF_FILE), bundle.leaf_pem.as_bytes(), 0o644)?;
            write_atomic(&tmp.join(CHAIN_FILE), bundle.chain_pem.as_bytes(), 0o644)?;
            write_atomic(
                &tmp.join(FULLCHAIN_FILE),
                bundle.fullchain_pem().as_bytes(),
                0o644,
            )?;
            rename_durable(&tmp, &vdir.join(&version))
        })();
        if let Err(e) = written {
            let _ = fs::remove_dir_all(&tmp);
            return Err(io_err(&vdir)(e));
        }

        // Swap the `current` symlink by rename.
        let link_tmp = dir.join(format!(".current.{:08x}", rand::random::<u32>()));
        symlink(Path::new(VERSIONS).join(&version), &link_tmp).map_err(io_err(&link_tmp))?;
        rename_durable(&link_tmp, &dir.join(CURRENT)).map_err(io_err(&dir))?;

        self.prune(&dir, &version)
    }

    fn prune(&self, dir: &Path, current: &str) -> Result<(), StoreError> {
        let names = self.version_names(dir)?;
        let older: Vec<_> = names.iter().filter(|n| n.as_str() != current).collect();
        if older.len() > KEEP_PREVIOUS {
            let vdir = dir.join(VERSIONS);
            for n in &older[..older.len() - KEEP_PREVIOUS] {
                // Hidden first, by one rename: removing a folder takes
                // many steps, and a crash among them must not leave a
                // version that looks kept but has lost its files.
                // `sweep_debris` finishes what a crash interrupted.
                let p = vdir.join(n);
                let doomed = vdir.join(format!(".{n}.pruned"));
                fs::rename(&p, &doomed).map_err(io_err(&p))?;
                fs::remove_dir_all(&doomed).map_err(io_err(&doomed))?;
            }
            sync_dir(&vdir).map_err(io_err(&vdir))?;
        }
        Ok(())
    }

    fn target_path(&self, cert: &str, target: &str) -> Result<PathBuf, StoreError> {
        Ok(self
            .ns
            .join("targets")
            .join(component(cert)?)
            .join(format!("{}.json", component(target)?)))
    }

    pub fn target_record(
        &self,
        cert: &str,
        target: &str,
    ) -> Result<Option<TargetRecord>, StoreError> {
        read_json(&self.target_path(cert, target)?)
    }

    pub fn save_target_record(
        &self,
        cert: &str,
        target: &str,
        record: &TargetRecord,
    ) -> Result<(), StoreError> {
        self.assert_writable();
        let p = self.target_path(cert, target)?;
        write_json(&p, record).map_err(io_err(&p))
    }

    fn ari_path(&self, cert: &str) -> Result<PathBuf, StoreError> {
        Ok(self.cert_dir(cert)?.join("ari.json"))
    }

    /// The stored ARI window of `cert`, for whichever certificate it was fetched.
    pub fn ari_record(&self, cert: &str) -> Result<Option<AriRecord>, StoreError> {
        read_json(&self.ari_path(cert)?)
    }

    pub fn save_ari_record(&self, cert: &str, record: &AriRecord) -> Result<(), StoreError> {
        self.assert_writable();
        let p = self.ari_path(cert)?;
        write_json(&p, record).map_err(io_err(&p))
    }

    /// When the CA's directory was last found to offer no ARI (RFC 3339),
    /// if it was.
    pub fn ari_unsupported_since(&self) -> Option<String> {
        let p = self.ns.join(ARI_UNSUPPORTED_FILE);
        read_json::<AriUnsupported>(&p)
            .ok()
            .flatten()
            .map(|r| r.checked_at)
    }

    /// Remember that the CA offers no ARI (`Some(when)`), or forget it.
    pub fn save_ari_unsupported(&self, checked_at: Option<String>) -> Result<(), StoreError> {
        self.assert_writable();
        let p = self.ns.join(ARI_UNSUPPORTED_FILE);
        match checked_at {
            Some(checked_at) => write_json(&p, &AriUnsupported { checked_at }).map_err(io_err(&p)),
            None => match fs::remove_file(&p) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(&p)(e)),
                _ => Ok(()),
            },
        }
    }
}

/// The CA's directory had no `renewalInfo` when last asked.
const ARI_UNSUPPORTED_FILE: &str = "ari-unsupported.json";

#[derive(Debug, Serialize, serde::Deserialize)]
struct AriUnsupported {
    checked_at: String,
}

/// The path of a file that belongs to one CA's namespace, beside its
/// certificates: `<state_dir>/ca/<namespace>/<file>`.
pub fn namespace_file(state_dir: &Path, directory_url: &str, file: &str) -> PathBuf {
    state_dir
        .join("ca")
        .join(namespace(directory_url))
        .join(file)
}

/// A JSON record; `Ok(None)` when there is none, an error naming the path
/// when it cannot be read or parsed.
pub fn read_json<T: serde::de::DeserializeOwned>(p: &Path) -> Result<Option<T>, StoreError> {
    match read_optional(p)? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Record {
                path: p.to_path_buf(),
                message: e.to_string(),
            }),
    }
}

/// Write a JSON record atomically, mode 0600, creating its folder (0700).
pub fn write_json<T: Serialize>(p: &Path, value: &T) -> io::Result<()> {
    if let Some(parent) = p.parent() {
        create_dir_all_mode(parent, 0o700)?;
    }
    let json = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    write_atomic(p, &json, 0o600)
}

fn read_optional(p: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    match fs::read(p) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(p)(e)),
    }
}

/// The current version read the quick way, or `None` if anything at all
/// is unusual (no link, a file missing, damage), and the caller then takes
/// [`load_version`]'s path, which gives the same bundle or names the error.
///
/// `status` and `renew` read every certificate on every pass, so this is
/// their hot path: the kernel resolves `current` once and the version
/// directory stays open (the three files come from one version, as with
/// `read_link`), and each file is opened relative to it and read without
/// the `statx` and `lseek` that `fs::read_to_string` adds.
fn load_current_quickly(link: &Path) -> Option<Bundle> {
    use rustix::buffer::spare_capacity;
    use rustix::fs::{open, openat, Mode, OFlags};
    let dir = open(
        link,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    // Append `file` to `buf`.
    let read_into = |file: &str, buf: &mut Vec<u8>| -> Option<()> {
        let fd = openat(&dir, file, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).ok()?;
        loop {
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(4096);
            }
            match rustix::io::read(&fd, spare_capacity(buf)) {
                Ok(0) => return Some(()),
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(_) => return None,
            }
        }
    };
    let mut buf = Vec::with_capacity(8192);
    read_into(KEY_FILE, &mut buf)?;
    let key = KeyPem::new(std::str::from_utf8(&buf).ok()?.to_string());
    buf.clear();
    read_into(LEAF_FILE, &mut buf)?;
    let leaf_len = buf.len();
    read_into(CHAIN_FILE, &mut buf)?;
    // Each file must be UTF-8 on its own, as `fs::read_to_string` demands.
    std::str::from_utf8(&buf[..leaf_len]).ok()?;
    std::str::from_utf8(&buf[leaf_len..]).ok()?;
    let leaf_and_chain = std::str::from_utf8(&buf).ok()?;
    Bundle::from_chain(key, leaf_and_chain).ok()
}

/// Remove what an interrupted [`Store::install`] left in a certificate's
/// folder `dir` and its `versions/` folder `vdir`: hidden version folders
/// (half written, with a private key) and `current` links never swapped in.
/// Only a writer holding the lock calls it, so no other install is under way.
fn sweep_debris(dir: &Path, vdir: &Path) -> Result<(), StoreError> {
    let mut removed = false;
    for (folder, prefix) in [(vdir, "."), (dir, ".current.")] {
        let entries = fs::read_dir(folder).map_err(io_err(folder))?;
        for e in entries.filter_map(|e| e.ok()) {
            if !e.file_name().to_string_lossy().starts_with(prefix) {
                continue;
            }
            let p = e.path();
            let gone = match e.file_type() {
                Ok(t) if t.is_dir() => fs::remove_dir_all(&p),
                _ => fs::remove_file(&p),
            };
            match gone {
                Ok(()) => removed = true,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&p)(e)),
            }
        }
    }
    if removed {
        sync_dir(vdir).map_err(io_err(vdir))?;
        sync_dir(dir).map_err(io_err(dir))?;
    }
    Ok(())
}

fn load_version(dir: &Path) -> Result<Bundle, StoreError> {
    let read = |f: &str| {
        let p = dir.join(f);
        fs::read_to_string(&p).map_err(io_err(&p))
    };
    let key = KeyPem::new(read(KEY_FILE)?);
    let leaf = read(LEAF_FILE)?;
    let chain = read(CHAIN_FILE)?;
    Bundle::from_chain(key, &format!("{leaf}{chain}")).map_err(|source| StoreError::Damaged {
        path: dir.join(LEAF_FILE),
        source,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::KeyType;
    use std::os::unix::fs::MetadataExt;

    /// A self-signed bundle for `domains`, valid for `days` from `not_before`.
    pub(crate) fn bundle(domains: &[&str], not_before: OffsetDateTime, days: i64) -> Bundle {
        let key = crate::acme::keys::generate(KeyType::EcdsaP256).unwrap();
        let mut params = rcgen::CertificateParams::new(
            domains.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        params.not_before = not_before;
        params.not_after = not_before + time::Duration::days(days);
        let cert = params.self_signed(&key).unwrap();
        Bundle::from_chain(KeyPem::new(key.serialize_pem()), &cert.pem()).unwrap()
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    #[test]
    fn a_state_directory_others_can_write_is_refused_and_a_readable_one_closed() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        Store::open(&state, "https://ca.test/dir", Duration::ZERO).unwrap();

        fs::set_permissions(&state, fs::Permissions::from_mode(0o777)).unwrap();
        let err = Store::open(&state, "https://ca.test/dir", Duration::ZERO).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{p} is writable by group or others (mode 0777); certherd keeps private keys \
                 below it and refuses to use it (make it owned by root or by certherd's user \
                 and not writable by others, e.g. chmod go-w {p})",
                p = state.display()
            )
        );

        // Readable by others: the state directory itself may be (0755),
        // the folders that hold keys are closed again.
        fs::set_permissions(&state, fs::Permissions::from_mode(0o755)).unwrap();
        let ca = state.join("ca");
        fs::set_permissions(&ca, fs::Permissions::from_mode(0o755)).unwrap();
        let store = Store::open(&state, "https://ca.test/dir", Duration::ZERO).unwrap();
        assert_eq!(mode(&ca), 0o700);
        assert_eq!(mode(store.namespace_dir()), 0o700);
        assert_eq!(mode(&state), 0o755);
    }

    #[test]
    fn current_all_keeps_the_order_of_the_names_across_threads() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "https://ca.test/dir", Duration::ZERO).unwrap();
        // Enough names for several reader threads; every third one never issued.
        let names: Vec<String> = (0..200).map(|i| format!("c{i}")).collect();
        let template = bundle(&["a.test"], now(), 90);
        let mut expected = Vec::new();
        for (i, n) in names.iter().enumerate() {
            if i % 3 == 0 {
                expected.push(None);
                continue;
            }
            let b = if i % 3 == 1 {
                bundle(&[&format!("{n}.test")], now(), 90)
            } else {
                template.clone()
            };
            store.install(n, &b, now()).unwrap();
            expected.push(Some(b.info.sha256.clone()));
        }
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let got: Vec<Option<String>> = store
            .current_all(&refs)
            .unwrap()
            .into_iter()
            .map(|b| b.map(|b| b.info.sha256))
            .collect();
        assert_eq!(got, expected);

        // A bad name anywhere is an error, not a silently missing entry.
        let mut bad = refs.clone();
        bad[150] = "../escape";
        assert!(matches!(
            store.current_all(&bad),
            Err(StoreError::BadName { .. })
        ));
    }

    #[test]
    fn names_cannot_escape_the_state_directory() {
        for bad in ["../etc", "..", ".", "a/b", "", ".hidden", "a\0b", "/abs"] {
            assert!(
                matches!(component(bad), Err(StoreError::BadName { .. })),
                "{bad:?}"
            );
        }
        for good in ["example", "www.example.com", "a_b-c.1"] {
            assert_eq!(component(good).unwrap(), good);
        }
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "https://ca.test/dir", Duration::ZERO).unwrap();
        assert!(matches!(
            store.current("../../x"),
            Err(StoreError::BadName { .. })
        ));
        assert!(matches!(
            store.target_record("ok", "../x"),
            Err(StoreError::BadName { .. })
        ));
    }

    #[test]
    fn namespaces_keep_cas_apart() {
        assert_eq!(
            namespace("https://acme-v02.api.letsencrypt.org/directory"),
            "acme-v02.api.letsencrypt.org_directory"
        );
        assert_eq!(
            namespace("https://acme-staging-v02.api.letsencrypt.org/directory"),
            "acme-staging-v02.api.letsencrypt.org_directory"
        );
        assert_eq!(
            namespace("https://127.0.0.1:14000/dir"),
            "127.0.0.1_14000_dir"
        );
        let dir = tempfile::tempdir().unwrap();
        let prod = Store::open(dir.path(), "https://prod.test/dir", Duration::ZERO).unwrap();
        prod.install("example", &bundle(&["a.test"], now(), 90), now())
            .unwrap();
        drop(prod);
        let staging = Store::open(dir.path(), "https://staging.test/dir", Duration::ZERO).unwrap();
        assert!(staging.current("example").unwrap().is_none());
    }

    #[test]
    fn install_keeps_previous_versions_and_prunes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "https://ca.test/dir", Duration::ZERO).unwrap();
        assert!(store.current("example").unwrap().is_none());
        let mut installed = Vec::new();
        for i in 0..(KEEP_PREVIOUS + 3) {
            let b = bundle(&["a.test"], now(), 90);
            // Distinct install times order the versions.
            store
                .install("example", &b, now() + time::Duration::seconds(i as i64))
                .unwrap();
            installed.push(b);
        }
        let current = store.current("example").unwrap().unwrap();
        assert_eq!(&current, installed.last().unwrap());
        let previous = store.previous("example").unwrap();
        assert_eq!(previous.len(), KEEP_PREVIOUS);
        // Newest first.
        let expected: Vec<_> = installed
            .iter()
            .rev()
            .skip(1)
            .take(KEEP_PREVIOUS)
            .cloned()
            .collect();
        assert_eq!(previous, expected);
    }

    #[test]
    fn a_version_being_pruned_is_never_visible_half_removed() {
        // The crash harness killed an install inside the removal of the
        // oldest version: its folder stayed under its own name without its
        // files, and every reader of the previous versions failed on it.
        // Now the version is renamed to a hidden name first; what a crash
        // leaves of it is debris, ignored by readers and swept by the next
        // install.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "https://ca.test/dir", Duration::ZERO).unwrap();
        let vdir = store.namespace_dir().join("certs/example/versions");
        let mut installed = Vec::new();
        for i in 0..(KEEP_PREVIOUS + 2) {
            let b = bundle(&["a.test"], now(), 90);
            store
                .install("example", &b, now() + time::Duration::seconds(i as i64))
                .unwrap();
            installed.push(b);
        }
        // A crash after the rename, before the removal finished.
        let oldest = store.version_names(vdir.parent().unwrap()).unwrap()[0].clone();
        let doomed = vdir.join(format!(".{oldest}.pruned"));
        fs::rename(vdir.join(&oldest), &doomed).unwrap();
        fs::remove_file(doomed.join(KEY_FILE)).unwrap();
        // Readers see one previous version fewer, and no error.
        assert_eq!(store.previous("example").unwrap().len(), KEEP_PREVIOUS - 1);
        assert!(store
            .version_with_sha256("example", &installed[1].info.sha256)
            .unwrap()
            .is_none());
        store
            .install(
                "example",
                &bundle(&["a.test"], now(), 90),
                now() + time::Duration::days(1),
            )
            .unwrap();
        assert!(!doomed.exists());
        assert_eq!(store.previous("example").unwrap().len(), KEEP_PREVIOUS);
    }

    #[test]
    fn an_install_removes_what_an_interrupted_install_left() {
        // What a writer killed inside `install` leaves: a half-written
        // version folder holding a private key, and a link never swapped in.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "https://ca.test/dir", Duration::ZERO).unwrap();
        let first = bundle(&["a.test"], now(), 90);
        store.install("example", &first, now()).unwrap();
        let cdir = store.namespace_dir().join("certs/example");
        let half = cdir.join("versions/.20261128T000000Z-0a0b.1234abcd");
        fs::create_dir(&half).unwrap();
        fs::write(half.join(KEY_FILE), first.key.expose()).unwrap();
        symlink("versions/nowhere", cdir.join(".current.5678ef01")).unwrap();
        // A reader ignores them.
        assert_eq!(store.current("example").unwrap().unwrap(), first);
        assert!(store.previous("example").unwrap().is_empty());

        let second = bundle(&["a.test"], now(), 90);
        store
            .install("example", &second, now() + time::Duration::seconds(1))
            .unwrap();
        let hidden = |d: &Path| -> Vec<String> {
            fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('.'))
                .collect()
        };
        assert_eq!(hidden(&cdir), Vec::<String>::new());
        assert_eq!(hidden(&cdir.join("versions")), Vec::<String>::new());
        assert_eq!(store.current("example").unwrap().unwrap(), second);
        assert_eq!(store.previous("example").unwrap(), vec![first]);
    }

    #[test]
    fn keys_and_account_are_private_from_the_first_byte() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "https://ca.test/dir", Duration::ZERO).unwrap();
        store.save_account(b"{}").unwrap();
        store
            .install("example", &bundle(&["a.test"], now(), 90), now())
            .unwrap();
        let cur = store.current_dir("example").unwrap().unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&cur.join(KEY_FILE)), 0o600);
        assert_eq!(mode(&cur.join(LEAF_FILE)), 0o644);
        assert_eq!(mode(&store.namespace_dir().join("account.json")), 0o600);
        assert_eq!(mode(store.namespace_dir()), 0o700);
    }

    #[test]
    fn a_second_writer_waits_then_fails_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let first = Store::open(dir.path(), "https://ca.test/dir", Duration::ZERO).unwrap();
        let start = std::time::Instant::now();
        let err = Store::open(
            dir.path(),
            "https://ca.test/dir",
            Duration::from_millis(300),
        )
        .unwrap_err();
        assert!(start.elapsed() >= Duration::from_millis(300));
        assert_eq!(
            err.to_string(),
            format!(
                "state directory {} is locked by another certherd process (waited 300ms); only one may write at a time",
                dir.path().display()
            )
        );
        drop(first);
        Store::open(dir.path(), "https://ca.test/dir", Duration::ZERO).unwrap();
    }

    #[test]
    fn read_only_open_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("state");
        let store = Store::open_readonly(&missing, "https://ca.test/dir");
        assert!(store.current("example").unwrap().is_none());
        assert!(store.account().unwrap().is_none());
        assert!(!missing.exists());
    }

    #[test]
    fn target_records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "https://ca.test/dir", Duration::ZERO).unwrap();
        assert_eq!(store.target_record("example", "web1").unwrap(), None);
        let r = TargetRecord {
            deployed_sha256: Some("ab".into()),
            deployed_at: Some("2026-11-28T00:00:00Z".into()),
            last_error: None,
            destination: Some("cd".into()),
        };
        store.save_target_record("example", "web1", &r).unwrap();
        assert_eq!(store.target_record("example", "web1").unwrap(), Some(r));
    }

    #[test]
    fn ari_records_round_trip_beside_the_versions() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "https://ca.test/dir", Duration::ZERO).unwrap();
        assert_eq!(store.ari_record("example").unwrap(), None);
        let r = AriRecord {
            sha256: "ab".into(),
            cert_id: "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE".into(),
            window_start: "2026-03-01T00:00:00Z".into(),
            window_end: "2026-03-03T00:00:00Z".into(),
            renew_at: "2026-03-02T00:00:00Z".into(),
            explanation_url: None,
            fetched_at: "2026-02-01T00:00:00Z".into(),
            next_fetch: "2026-02-01T06:00:00Z".into(),
        };
        store.save_ari_record("example", &r).unwrap();
        assert_eq!(store.ari_record("example").unwrap(), Some(r));
        // It is no version: installing and listing versions are unaffected.
        store
            .install("example", &bundle(&["a.test"], now(), 90), now())
            .unwrap();
        assert!(store.previous("example").unwrap().is_empty());
        assert!(store.current("example").unwrap().is_some());
        assert!(matches!(
            store.ari_record("../x"),
            Err(StoreError::BadName { .. })
        ));
    }
}

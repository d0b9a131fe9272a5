//! The `file` target: any of cert, chain, fullchain, key, combined and
//! pkcs12, written with the configured mode, owner and group.
//!
//! All files are first written completely to temp files beside their
//! destinations (fsynced, with their final mode and owner), and only then
//! renamed into place one after another. A failure before the renames
//! leaves every old file untouched, so a reload never pairs a new
//! certificate with an old key.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::cert::Bundle;
use crate::config::{FileTarget, Layout};
use crate::deploy::DeployError;
use crate::store::fsutil;

/// Mode of files that hold no private key.
const PUBLIC_MODE: u32 = 0o644;

/// One file a target writes.
pub(super) struct Planned {
    pub path: PathBuf,
    pub data: Vec<u8>,
    pub mode: u32,
    /// Its name in a `links` layout's version folder (`fullchain.pem`,
    /// `key.pem`, `bundle.p12`, ...): one per slot.
    pub role: &'static str,
}

/// The PEM files of a target (all but `pkcs12`) with their content and mode.
pub(super) fn contents(t: &FileTarget, b: &Bundle) -> Vec<Planned> {
    let mut out = Vec::new();
    let f = &t.files;
    let mut add = |p: &Option<PathBuf>, c: String, secret: bool, role| {
        if let Some(p) = p {
            out.push(Planned {
                path: p.clone(),
                data: c.into_bytes(),
                mode: if secret { t.mode } else { PUBLIC_MODE },
                role,
            });
        }
    };
    add(&f.cert, b.leaf_pem.clone(), false, "cert.pem");
    add(&f.chain, b.chain_pem.clone(), false, "chain.pem");
    add(&f.fullchain, b.fullchain_pem(), false, "fullchain.pem");
    add(&f.key, b.key.expose().to_string(), true, "key.pem");
    add(&f.combined, b.combined_pem(), true, "combined.pem");
    out
}

/// Every file of a target, PKCS#12 included, with its content and mode:
/// what is written.
pub(super) fn files(t: &FileTarget, b: &Bundle) -> Result<Vec<Planned>, DeployError> {
    let mut out = contents(t, b);
    if let Some(p12) = &t.files.pkcs12 {
        let data = super::pkcs12::encode(b, p12).map_err(|source| DeployError::Pkcs12 {
            path: p12.path.clone(),
            source,
        })?;
        out.push(Planned {
            path: p12.path.clone(),
            data,
            mode: t.mode,
            role: PKCS12_ROLE,
        });
    }
    Ok(out)
}

const PKCS12_ROLE: &str = "bundle.p12";

/// Every path a target writes, with its role.
pub(super) fn paths(t: &FileTarget) -> Vec<(PathBuf, &'static str)> {
    let mut out: Vec<_> = contents(t, &placeholder())
        .into_iter()
        .map(|f| (f.path, f.role))
        .collect();
    out.extend(t.files.pkcs12.iter().map(|p| (p.path.clone(), PKCS12_ROLE)));
    out
}

/// Whether every file holds `b`: the PEM files byte for byte; a PKCS#12
/// file, whose bytes differ on every write (salts), by opening it with its
/// password and comparing the key and certificates inside. The files must
/// also be laid out as the target's `layout` says.
pub fn holds(t: &FileTarget, b: &Bundle) -> bool {
    let pem_files = contents(t, b)
        .iter()
        .all(|f| fs::read(&f.path).is_ok_and(|on_disk| on_disk == f.data));
    pem_files
        && t.files.pkcs12.iter().all(|p12| {
            fs::read(&p12.path)
                .map(|on_disk| super::pkcs12::holds(&on_disk, b, p12))
                .unwrap_or(false)
        })
        && laid_out(t)
}

/// Whether the paths are laid out as the target's `layout` says.
pub fn laid_out(t: &FileTarget) -> bool {
    let linked = super::links::linked_paths(t);
    match t.layout {
        Layout::Links => linked.iter().all(|l| *l),
        // Left as links by an earlier `layout: links`: not yet files.
        Layout::Files => !linked.iter().any(|l| *l),
    }
}

pub fn write(t: &FileTarget, b: &Bundle) -> Result<(), DeployError> {
    let uid = t.owner.as_deref().map(user_id).transpose()?;
    let gid = t.group.as_deref().map(group_id).transpose()?;
    let files = files(t, b)?;
    for f in &files {
        sweep_temps(&f.path);
    }
    if t.layout == Layout::Links {
        return super::links::write(t, &files, uid, gid);
    }
    let mut staged: Vec<(PathBuf, PathBuf)> = Vec::new();
    let cleanup = |staged: &[(PathBuf, PathBuf)]| {
        for (tmp, _) in staged {
            let _ = fs::remove_file(tmp);
        }
    };
    for f in &files {
        match fsutil::stage(&f.path, &f.data, f.mode, uid, gid) {
            Ok(tmp) => staged.push((tmp, f.path.clone())),
            Err(source) => {
                cleanup(&staged);
                return Err(DeployError::Write {
                    path: f.path.clone(),
                    source,
                });
            }
        }
    }
    // The renames follow each other with nothing in between (the folders
    // are synced after the last one): POSIX cannot replace several files
    // at once, so this keeps the moment in which a crash would leave a new
    // certificate beside an old key as short as it can be. A run after such
    // a crash finds the target does not hold the certificate and writes it
    // again.
    for (i, (tmp, path)) in staged.iter().enumerate() {
        if let Err(source) = fs::rename(tmp, path) {
            cleanup(&staged[i..]);
            return Err(DeployError::Write {
                path: path.clone(),
                source,
            });
        }
    }
    // A target that used the `links` layout before: its versions hold a
    // copy of the key no path names any more.
    super::links::remove_folder(t);
    let mut dirs: Vec<&Path> = staged.iter().filter_map(|(_, p)| p.parent()).collect();
    dirs.dedup();
    for dir in dirs {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        fsutil::sync_dir(dir).map_err(|source| DeployError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    Ok(())
}

/// Remove the temp files an interrupted [`write`] (or `haproxy` staging)
/// left beside `path` (`.certherd-tmp-<name>-<16 hex digits>`, the
/// pattern of [`fsutil::temp_path`]; files, or the links of a `links`
/// layout): they may hold a private key, and a crash must not leave one
/// more copy at every attempt. Only a certherd holding the state
/// directory's lock deploys, so no other write of `path` is under way.
pub(super) fn sweep_temps(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!("{}{}-", fsutil::TEMP_PREFIX, name.to_string_lossy());
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.filter_map(|e| e.ok()) {
        let n = e.file_name();
        let n = n.to_string_lossy();
        let is_temp = n
            .strip_prefix(&prefix)
            .is_some_and(|rest| rest.len() == 16 && rest.bytes().all(|b| b.is_ascii_hexdigit()));
        if is_temp && e.file_type().is_ok_and(|t| t.is_file() || t.is_symlink()) {
            let _ = fs::remove_file(e.path());
        }
    }
}

pub fn preflight(t: &FileTarget) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(o) = &t.owner {
        if let Err(e) = user_id(o) {
            problems.push(e.to_string());
        }
    }
    if let Some(g) = &t.group {
        if let Err(e) = group_id(g) {
            problems.push(e.to_string());
        }
    }
    let uid = rustix::process::geteuid();
    if t.layout == Layout::Links {
        problems.extend(super::links::preflight(t));
    }
    let folder = super::links::folder(t);
    for (path, role) in paths(t) {
        let dir = path.parent().unwrap_or(Path::new("/"));
        if let Err(e) = fsutil::refuse_planted_symlinks(dir) {
            problems.push(e.to_string());
            continue;
        }
        if let Err(e) = crate::acme::solver::writable_dir(dir) {
            problems.push(format!("cannot write files in {}: {e}", dir.display()));
            continue;
        }
        // Renaming over an existing file needs only the directory, but a
        // sticky directory also needs us to own it.
        if let Ok(meta) = fs::symlink_metadata(&path) {
            let ours = t.layout == Layout::Links && super::links::is_link_of(&folder, &path, role);
            if meta.file_type().is_symlink() && !ours {
                problems.push(format!(
                    "{} is a symlink; certherd replaces it with {}",
                    path.display(),
                    match t.layout {
                        Layout::Files => "a regular file",
                        Layout::Links => "its own link",
                    }
                ));
            }
            let sticky = fs::metadata(dir)
                .map(|m| m.mode() & 0o1000 != 0)
                .unwrap_or(false);
            if sticky && meta.uid() != uid.as_raw() && !uid.is_root() {
                problems.push(format!(
                    "{} is in a sticky directory and owned by someone else",
                    path.display()
                ));
            }
        }
    }
    problems
}

pub(super) fn placeholder() -> Bundle {
    Bundle {
        key: crate::cert::KeyPem::new(String::new()),
        leaf_pem: String::new(),
        chain_pem: String::new(),
        info: crate::cert::CertInfo {
            serial: String::new(),
            sha256: String::new(),
            not_before: time::OffsetDateTime::UNIX_EPOCH,
            not_after: time::OffsetDateTime::UNIX_EPOCH,
            domains: vec![],
            key_type: None,
            authority_key_id: None,
        },
    }
}

pub(super) fn user_id(name: &str) -> Result<u32, DeployError> {
    if let Ok(n) = name.parse() {
        return Ok(n);
    }
    match nix::unistd::User::from_name(name) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        _ => Err(unknown("user", name)),
    }
}

pub(super) fn group_id(name: &str) -> Result<u32, DeployError> {
    if let Ok(n) = name.parse() {
        return Ok(n);
    }
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        _ => Err(unknown("group", name)),
    }
}

fn unknown(what: &'static str, name: &str) -> DeployError {
    DeployError::UnknownOwner {
        what,
        name: name.to_string(),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::config::FileSet;

    /// `site.pem` (full chain) in `dir`, `site.key` in `key_dir`, plain files.
    pub(in crate::deploy) fn target(dir: &Path, key_dir: &Path) -> FileTarget {
        FileTarget {
            files: FileSet {
                fullchain: Some(dir.join("site.pem")),
                key: Some(key_dir.join("site.key")),
                ..FileSet::default()
            },
            mode: 0o600,
            owner: None,
            group: None,
            layout: Layout::Files,
        }
    }

    pub(in crate::deploy) fn bundle() -> Bundle {
        crate::store::tests::bundle(&["a.test"], time::OffsetDateTime::now_utc(), 90)
    }

    #[test]
    fn writes_every_file_and_then_holds_the_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let t = target(dir.path(), dir.path());
        let b = bundle();
        assert!(!holds(&t, &b));
        write(&t, &b).unwrap();
        assert!(holds(&t, &b));
        assert!(!holds(&t, &bundle()));
    }

    #[test]
    fn one_unwritable_file_leaves_every_old_file_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let old = bundle();
        write(&target(dir.path(), dir.path()), &old).unwrap();
        // The key now goes to a directory that does not exist: the certificate
        // must not change either, or the server would pair it with the old key.
        let broken = target(dir.path(), &dir.path().join("missing"));
        let err = write(&broken, &bundle()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "writing {}/missing/site.key: No such file or directory (os error 2)",
                dir.path().display()
            )
        );
        assert!(holds(&target(dir.path(), dir.path()), &old));
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "temp files left behind: {names:?}");
    }

    #[test]
    fn a_write_removes_the_temp_files_an_interrupted_one_left() {
        let dir = tempfile::tempdir().unwrap();
        let t = target(dir.path(), dir.path());
        // What a certherd killed between staging and renaming leaves.
        let left = [
            ".certherd-tmp-site.key-0123456789abcdef",
            ".certherd-tmp-site.pem-fedcba9876543210",
        ];
        for n in left {
            fs::write(dir.path().join(n), "debris").unwrap();
        }
        // Not ours: kept.
        let others = [
            ".certherd-tmp-other.key-0123456789abcdef",
            ".certherd-tmp-site.key-x",
        ];
        for n in others {
            fs::write(dir.path().join(n), "someone else's").unwrap();
        }
        let b = bundle();
        write(&t, &b).unwrap();
        assert!(holds(&t, &b));
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut expected = vec!["site.key", "site.pem"];
        expected.extend(others);
        expected.sort();
        assert_eq!(names, expected);
    }

    #[test]
    fn an_unknown_owner_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = target(dir.path(), dir.path());
        t.owner = Some("no-such-user-certherd".into());
        t.group = Some("no-such-group-certherd".into());
        assert_eq!(
            write(&t, &bundle()).unwrap_err().to_string(),
            "user \"no-such-user-certherd\" does not exist on this system"
        );
        assert_eq!(
            preflight(&t),
            vec![
                "user \"no-such-user-certherd\" does not exist on this system".to_string(),
                "group \"no-such-group-certherd\" does not exist on this system".to_string()
            ]
        );
        assert!(
            fs::read_dir(dir.path()).unwrap().next().is_none(),
            "nothing written"
        );
    }

    fn with_pkcs12(mut t: FileTarget, path: PathBuf) -> FileTarget {
        t.files.pkcs12 = Some(crate::config::Pkcs12File {
            path,
            password: crate::config::Secret::new("pw".into(), "env P".into()),
            name: "site".into(),
        });
        t
    }

    #[test]
    fn a_pkcs12_file_is_private_held_by_content_and_changes_with_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let p12 = dir.path().join("site.p12");
        let t = with_pkcs12(target(dir.path(), dir.path()), p12.clone());
        let old = bundle();
        write(&t, &old).unwrap();
        assert_eq!(fs::metadata(&p12).unwrap().mode() & 0o777, 0o600);
        assert!(holds(&t, &old), "salted bytes, same content");
        assert!(!holds(&t, &bundle()));

        // The PKCS#12 file cannot be written: the PEM files stay as they were.
        let broken = with_pkcs12(
            target(dir.path(), dir.path()),
            dir.path().join("missing/site.p12"),
        );
        let err = write(&broken, &bundle()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "writing {}/missing/site.p12: No such file or directory (os error 2)",
                dir.path().display()
            )
        );
        assert!(holds(&t, &old));
    }
}

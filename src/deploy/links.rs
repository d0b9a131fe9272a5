//! The `links` layout of `file` targets: every configured path is a
//! symbolic link into a folder certherd keeps beside the target's first
//! file, and one rename switches all of them at once.
//!
//! ```text
//! /etc/nginx/tls/example.pem -> .example.pem.certherd/current/fullchain.pem
//! /etc/nginx/tls/example.key -> .example.pem.certherd/current/key.pem
//! /etc/nginx/tls/.example.pem.certherd/current -> v-3f9c0a1e5b7d2c48
//! /etc/nginx/tls/.example.pem.certherd/v-3f9c0a1e5b7d2c48/{fullchain,key}.pem
//! ```
//!
//! POSIX cannot replace two files in one step, so with plain files a crash
//! between the renames leaves a new certificate beside the old key. Here a
//! deployment writes a complete new version folder, then renames a new
//! `current` link over the old one: a reader resolving any path sees the
//! old version or the new one, never a mix. Paths in another folder than
//! the first file's are absolute links.
//!
//! Turning plain files into links keeps that promise too: the files as they
//! are become a version first, `current` names it, each path is replaced by
//! a link that shows the same bytes, and only then does `current` move to
//! the new version. Old versions are removed after the switch; a crash
//! leaves at worst a version folder or a temp link, removed by the next
//! deployment.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::file::{paths, Planned};
use crate::config::FileTarget;
use crate::deploy::DeployError;
use crate::store::fsutil;

/// The link every version switch replaces.
pub const CURRENT: &str = "current";
/// Version folders are `v-<16 hex digits>`.
const VERSION_PREFIX: &str = "v-";
/// Temp links of an interrupted switch.
const TEMP_LINK_PREFIX: &str = ".tmp-";
/// Mode of the folder and its versions: the service reading the files must
/// pass through; the key files themselves have the target's `mode`.
const DIR_MODE: u32 = 0o755;

/// The folder that holds a target's versions: `.<first file's name>.certherd`
/// beside its first file (slots in the order cert, chain, fullchain, key,
/// combined, pkcs12).
pub fn folder(t: &FileTarget) -> PathBuf {
    let (first, _) = paths(t)
        .into_iter()
        .next()
        .expect("a file target writes at least one file");
    let name = first
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    first.with_file_name(format!(".{name}.certherd"))
}

/// What the link at `path` holds: relative when it sits beside the folder.
pub fn link_text(folder: &Path, path: &Path, role: &str) -> PathBuf {
    if path.parent() == folder.parent() {
        PathBuf::from(folder.file_name().unwrap_or_default())
            .join(CURRENT)
            .join(role)
    } else {
        folder.join(CURRENT).join(role)
    }
}

/// Whether `path` is already the link into `folder` it should be.
pub fn is_link_of(folder: &Path, path: &Path, role: &str) -> bool {
    fs::read_link(path).is_ok_and(|l| l == link_text(folder, path, role))
}

/// For each path of the target, in [`paths`] order, whether it is already
/// its link.
pub fn linked_paths(t: &FileTarget) -> Vec<bool> {
    let folder = folder(t);
    paths(t)
        .iter()
        .map(|(path, role)| is_link_of(&folder, path, role))
        .collect()
}

/// Write `files` as a new version and switch every path to it at once.
pub(super) fn write(
    t: &FileTarget,
    files: &[Planned],
    uid: Option<u32>,
    gid: Option<u32>,
) -> Result<(), DeployError> {
    let folder = folder(t);
    for f in files {
        fsutil::refuse_planted_symlinks(dir_of(&f.path)).map_err(at(&f.path))?;
    }
    open_folder(&folder).map_err(at(&folder))?;
    sweep(&folder);

    let version = new_version(&folder, |dir| {
        for f in files {
            let path = dir.join(f.role);
            fsutil::create_new(&path, &f.data, f.mode, uid, gid).map_err(at(&path))?;
        }
        Ok(())
    })?;
    let switched = convert(&folder, files, uid, gid)
        .and_then(|()| switch(&folder, &version).map_err(at(&folder.join(CURRENT))));
    if let Err(e) = switched {
        let _ = fs::remove_dir_all(&version);
        return Err(e);
    }
    sweep(&folder);
    Ok(())
}

/// Replace every path that is not yet its link by its link, each showing
/// the same bytes before and after: first the files as they are become a
/// version that `current` names.
fn convert(
    folder: &Path,
    files: &[Planned],
    uid: Option<u32>,
    gid: Option<u32>,
) -> Result<(), DeployError> {
    let unlinked: Vec<&Planned> = files
        .iter()
        .filter(|f| !is_link_of(folder, &f.path, f.role))
        .collect();
    if unlinked.is_empty() {
        return Ok(());
    }
    let shows_a_file = files
        .iter()
        .any(|f| fs::metadata(&f.path).is_ok_and(|m| m.is_file()));
    if shows_a_file {
        let was = new_version(folder, |dir| {
            for f in files {
                // Through a link too: what a reader sees now.
                let Ok(meta) = fs::metadata(&f.path) else {
                    continue;
                };
                if !meta.is_file() {
                    continue;
                }
                let data = fs::read(&f.path).map_err(at(&f.path))?;
                let path = dir.join(f.role);
                // The owner it had, as far as this process may give it.
                let owner = (uid.or(Some(meta.uid())), gid.or(Some(meta.gid())));
                fsutil::create_new(&path, &data, meta.mode() & 0o7777, owner.0, owner.1)
                    .or_else(|e| {
                        if e.kind() == io::ErrorKind::PermissionDenied {
                            let _ = fs::remove_file(&path);
                            fsutil::create_new(&path, &data, meta.mode() & 0o7777, uid, gid)
                        } else {
                            Err(e)
                        }
                    })
                    .map_err(at(&path))?;
            }
            Ok(())
        })?;
        if let Err(e) = switch(folder, &was) {
            let _ = fs::remove_dir_all(&was);
            return Err(at(&folder.join(CURRENT))(e));
        }
    }
    let mut dirs: Vec<&Path> = Vec::new();
    for f in unlinked {
        let tmp = fsutil::temp_path(&f.path).map_err(at(&f.path))?;
        let made = std::os::unix::fs::symlink(link_text(folder, &f.path, f.role), &tmp)
            .and_then(|()| fs::rename(&tmp, &f.path));
        if let Err(e) = made {
            let _ = fs::remove_file(&tmp);
            return Err(at(&f.path)(e));
        }
        if !dirs.contains(&dir_of(&f.path)) {
            dirs.push(dir_of(&f.path));
        }
    }
    for dir in dirs {
        fsutil::sync_dir(dir).map_err(at(dir))?;
    }
    Ok(())
}

/// Make sure `folder` is a folder of ours that only we may change:
/// create it, or refuse one that is a link, someone else's, or writable by
/// others.
fn open_folder(folder: &Path) -> io::Result<()> {
    match fs::symlink_metadata(folder) {
        Ok(meta) => check_folder(folder, &meta),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            use std::os::unix::fs::DirBuilderExt;
            fs::DirBuilder::new().mode(DIR_MODE).create(folder)?;
            fs::set_permissions(folder, fs::Permissions::from_mode(DIR_MODE))?;
            fsutil::sync_dir(dir_of(folder))
        }
        Err(e) => Err(e),
    }
}

fn check_folder(folder: &Path, meta: &fs::Metadata) -> io::Result<()> {
    let refuse = |why: String| {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} {why}; certherd keeps the versions of a `links` target there",
                folder.display()
            ),
        ))
    };
    if !meta.is_dir() {
        return refuse("exists and is not a folder".into());
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return refuse(format!(
            "belongs to uid {}, not to this user ({me})",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return refuse(format!(
            "can be written by others (mode {:o})",
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// A new `v-<random>` folder in `folder`, filled by `fill` and synced;
/// removed again when filling fails.
fn new_version(
    folder: &Path,
    fill: impl FnOnce(&Path) -> Result<(), DeployError>,
) -> Result<PathBuf, DeployError> {
    use std::os::unix::fs::DirBuilderExt;
    let unique: u64 = rand::random();
    let dir = folder.join(format!("{VERSION_PREFIX}{unique:016x}"));
    let made = fs::DirBuilder::new()
        .mode(DIR_MODE)
        .create(&dir)
        .and_then(|()| fs::set_permissions(&dir, fs::Permissions::from_mode(DIR_MODE)));
    if let Err(source) = made {
        let _ = fs::remove_dir(&dir);
        return Err(DeployError::Write { path: dir, source });
    }
    let filled = fill(&dir).and_then(|()| {
        fsutil::sync_dir(&dir).map_err(|source| DeployError::Write {
            path: dir.clone(),
            source,
        })
    });
    match filled {
        Ok(()) => Ok(dir),
        Err(e) => {
            let _ = fs::remove_dir_all(&dir);
            Err(e)
        }
    }
}

/// Point `current` at `version` with one rename, then sync the folder.
fn switch(folder: &Path, version: &Path) -> io::Result<()> {
    let unique: u64 = rand::random();
    let tmp = folder.join(format!("{TEMP_LINK_PREFIX}{unique:016x}"));
    let name = version.file_name().unwrap_or_default();
    std::os::unix::fs::symlink(name, &tmp)?;
    if let Err(e) = fs::rename(&tmp, folder.join(CURRENT)) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fsutil::sync_dir(folder)
}

/// Remove every version `current` does not name and the temp links of an
/// interrupted switch. Only a certherd holding the state directory's lock
/// deploys, so nothing else is writing here.
fn sweep(folder: &Path) {
    let current = fs::read_link(folder.join(CURRENT)).ok();
    let Ok(entries) = fs::read_dir(folder) else {
        return;
    };
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name();
        let n = name.to_string_lossy();
        let Ok(kind) = e.file_type() else { continue };
        if n.starts_with(VERSION_PREFIX) && kind.is_dir() {
            if current.as_deref() != Some(Path::new(&name)) {
                let _ = fs::remove_dir_all(e.path());
            }
        } else if n.starts_with(TEMP_LINK_PREFIX) && kind.is_symlink() {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// Remove the folder of a target no longer laid out as links, when it is
/// ours (a folder someone else owns or may write is left alone).
pub(super) fn remove_folder(t: &FileTarget) {
    let folder = folder(t);
    if let Ok(meta) = fs::symlink_metadata(&folder) {
        if check_folder(&folder, &meta).is_ok() {
            let _ = fs::remove_dir_all(&folder);
        }
    }
}

/// What `--dry-run` can tell without changing anything: the folder, when
/// it exists, is one certherd may use.
pub fn preflight(t: &FileTarget) -> Vec<String> {
    let folder = folder(t);
    match fs::symlink_metadata(&folder) {
        Ok(meta) => check_folder(&folder, &meta)
            .err()
            .map(|e| e.to_string())
            .into_iter()
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The error of a write at `path`, for `map_err`.
fn at(path: &Path) -> impl FnOnce(io::Error) -> DeployError {
    let path = path.to_path_buf();
    move |source| DeployError::Write { path, source }
}

fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Layout;
    use crate::deploy::file;
    use crate::deploy::file::tests::bundle;

    fn target(dir: &Path, key_dir: &Path) -> FileTarget {
        FileTarget {
            layout: Layout::Links,
            ..file::tests::target(dir, key_dir)
        }
    }

    /// Plain files in `dir` holding a certificate: the target as `files`,
    /// and what it holds.
    fn plain_files(dir: &Path) -> (FileTarget, crate::cert::Bundle) {
        let plain = file::tests::target(dir, dir);
        let old = bundle();
        file::write(&plain, &old).unwrap();
        (plain, old)
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut n: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        n.sort();
        n
    }

    fn versions(folder: &Path) -> Vec<String> {
        names(folder)
            .into_iter()
            .filter(|n| n.starts_with(VERSION_PREFIX))
            .collect()
    }

    #[test]
    fn every_path_becomes_a_link_into_one_current_version() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("private");
        fs::create_dir(&keys).unwrap();
        let t = target(dir.path(), &keys);
        let b = bundle();
        file::write(&t, &b).unwrap();

        let folder = dir.path().join(".site.pem.certherd");
        assert_eq!(folder, super::folder(&t));
        assert_eq!(
            fs::read_link(dir.path().join("site.pem")).unwrap(),
            Path::new(".site.pem.certherd/current/fullchain.pem"),
            "relative beside the folder"
        );
        assert_eq!(
            fs::read_link(keys.join("site.key")).unwrap(),
            folder.join("current/key.pem"),
            "absolute from another folder"
        );
        assert_eq!(
            fs::read(keys.join("site.key")).unwrap(),
            b.key.expose().as_bytes()
        );
        assert_eq!(
            fs::read(dir.path().join("site.pem")).unwrap(),
            b.fullchain_pem().as_bytes()
        );
        let v = versions(&folder);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(
            fs::read_link(folder.join(CURRENT)).unwrap(),
            Path::new(&v[0])
        );
        let key_mode = fs::metadata(folder.join(&v[0]).join("key.pem"))
            .unwrap()
            .mode();
        assert_eq!(key_mode & 0o777, 0o600);
        assert_eq!(fs::metadata(&folder).unwrap().mode() & 0o777, 0o755);
        assert!(file::holds(&t, &b));
        assert!(!file::holds(&t, &bundle()));
        assert_eq!(names(&keys), ["site.key"]);
    }

    #[test]
    fn a_new_version_replaces_the_old_and_the_debris_of_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let t = target(dir.path(), dir.path());
        file::write(&t, &bundle()).unwrap();
        let folder = super::folder(&t);
        // What a kill during a deployment leaves: a half-made version, a
        // temp link of a switch, a temp link beside a path.
        fs::create_dir(folder.join("v-00000000deadbeef")).unwrap();
        fs::write(folder.join("v-00000000deadbeef/key.pem"), "half").unwrap();
        std::os::unix::fs::symlink("v-00000000deadbeef", folder.join(".tmp-0123456789abcdef"))
            .unwrap();
        std::os::unix::fs::symlink(
            ".site.pem.certherd/current/key.pem",
            dir.path().join(".certherd-tmp-site.key-0123456789abcdef"),
        )
        .unwrap();
        let b = bundle();
        file::write(&t, &b).unwrap();
        assert!(file::holds(&t, &b));
        let left = names(&folder);
        assert_eq!(left.len(), 2, "current and one version: {left:?}");
        assert_eq!(
            names(dir.path()),
            [".site.pem.certherd", "site.key", "site.pem"]
        );
    }

    #[test]
    fn plain_files_become_links_and_a_links_target_of_plain_files_is_not_held() {
        let dir = tempfile::tempdir().unwrap();
        let (plain, old) = plain_files(dir.path());
        let t = target(dir.path(), dir.path());
        assert!(file::holds(&plain, &old));
        assert!(
            !file::holds(&t, &old),
            "same bytes, but not laid out as links"
        );
        assert!(!file::laid_out(&t));

        let b = bundle();
        file::write(&t, &b).unwrap();
        assert!(file::laid_out(&t));
        assert!(file::holds(&t, &b));
        assert_eq!(
            versions(&super::folder(&t)).len(),
            1,
            "the copy of the plain files is gone"
        );

        // And back: regular files again, and no copy of the key left behind.
        file::write(&plain, &b).unwrap();
        assert!(file::holds(&plain, &b));
        assert!(fs::symlink_metadata(dir.path().join("site.key"))
            .unwrap()
            .is_file());
        assert_eq!(names(dir.path()), ["site.key", "site.pem"]);
    }

    #[test]
    fn a_folder_that_is_a_link_or_open_to_others_is_refused_and_nothing_changes() {
        let dir = tempfile::tempdir().unwrap();
        let (plain, old) = plain_files(dir.path());
        let t = target(dir.path(), dir.path());
        let folder = super::folder(&t);

        let elsewhere = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), &folder).unwrap();
        let err = file::write(&t, &bundle()).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "writing {f}: {f} exists and is not a folder; certherd keeps the versions of a \
                 `links` target there",
                f = folder.display()
            )
        );
        assert_eq!(
            file::preflight(&t),
            [
                err.trim_start_matches(&format!("writing {}: ", folder.display()))
                    .to_string()
            ]
        );
        assert!(fs::read_dir(elsewhere.path()).unwrap().next().is_none());
        fs::remove_file(&folder).unwrap();

        fs::create_dir(&folder).unwrap();
        fs::set_permissions(&folder, fs::Permissions::from_mode(0o777)).unwrap();
        let err = file::write(&t, &bundle()).unwrap_err().to_string();
        assert!(err.contains("can be written by others (mode 777)"), "{err}");
        assert!(file::holds(&plain, &old), "the old files are untouched");
        assert!(names(&folder).is_empty());
    }
}

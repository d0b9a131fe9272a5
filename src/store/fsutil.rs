//! Durable file writes: temp file in the same directory, fsync, rename,
//! fsync the directory. A reader sees the old file or the new one, never a
//! half-written one, and a crash leaves at worst a stray temp file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Prefix of temp files; anything starting with it is debris of an
/// interrupted write and may be removed.
pub const TEMP_PREFIX: &str = ".certherd-tmp-";

/// Write `data` to `path` atomically with `mode` (applied from the first byte:
/// the temp file is created with it, so key material is never readable by
/// others, not even for a moment).
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let tmp = stage(path, data, mode, None, None)?;
    rename_durable(&tmp, path)
}

/// Write `data` completely to a new temp file beside `path`, with its final
/// `mode` (and owner, when given), fsynced; return the temp file's path for
/// the caller to rename over `path`. Nothing is left behind on failure.
pub fn stage(
    path: &Path,
    data: &[u8],
    mode: u32,
    uid: Option<u32>,
    gid: Option<u32>,
) -> io::Result<PathBuf> {
    refuse_planted_symlinks(parent(path)?)?;
    let tmp = temp_path(path)?;
    match create_new(&tmp, data, mode, uid, gid) {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Write `data` to `path`, which must not exist yet (`O_EXCL`, and never
/// through a link: `O_NOFOLLOW`), with exactly `mode` (and owner) from its
/// creation, fsynced. On failure the file may be left half-written.
pub fn create_new(
    path: &Path,
    data: &[u8],
    mode: u32,
    uid: Option<u32>,
    gid: Option<u32>,
) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    // The umask may have removed bits from `mode`; set exactly what was asked.
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    if uid.is_some() || gid.is_some() {
        std::os::unix::fs::fchown(&f, uid, gid)?;
    }
    f.write_all(data)?;
    f.sync_all()
}

/// Refuse to write below `dir` when its path goes through a symbolic link
/// that someone other than root or this user could have planted there: a
/// link in a directory owned by another user, or in a directory others may
/// write to (unless it is sticky and the link is root's or ours). Such a
/// link could send a key written "to /srv/www/tls" to any place this
/// process may write. The file itself is never followed: temp files are
/// created with `O_NOFOLLOW | O_EXCL` and renamed over the destination.
pub fn refuse_planted_symlinks(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    use std::path::Component;
    let me = rustix::process::geteuid().as_raw();
    let trusted = |uid: u32| uid == 0 || uid == me;
    let abs = if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        std::env::current_dir()?.join(dir)
    };
    let mut cur = PathBuf::from("/");
    for comp in abs.components() {
        match comp {
            Component::Normal(name) => {
                let holder = cur.clone();
                cur.push(name);
                let Ok(meta) = fs::symlink_metadata(&cur) else {
                    // Missing: the write fails on its own, with its own error.
                    return Ok(());
                };
                if !meta.file_type().is_symlink() {
                    continue;
                }
                let h = fs::metadata(&holder)?;
                let others_write = h.mode() & 0o022 != 0;
                let sticky = h.mode() & 0o1000 != 0;
                let planted =
                    !trusted(h.uid()) || (others_write && !(sticky && trusted(meta.uid())));
                if planted {
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!(
                            "refusing to write through {}: it is a symbolic link in {}, \
                             which another user can change",
                            cur.display(),
                            holder.display()
                        ),
                    ));
                }
            }
            Component::ParentDir => {
                cur.pop();
            }
            _ => {}
        }
    }
    Ok(())
}

/// A temp file name next to `path`, unique in this process and across processes.
pub fn temp_path(path: &Path) -> io::Result<PathBuf> {
    let dir = parent(path)?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let unique: u64 = rand::random();
    Ok(dir.join(format!(
        "{TEMP_PREFIX}{}-{unique:016x}",
        name.to_string_lossy()
    )))
}

/// Rename `from` over `to`, then fsync the directory so the rename survives a crash.
pub fn rename_durable(from: &Path, to: &Path) -> io::Result<()> {
    if let Err(e) = fs::rename(from, to) {
        let _ = fs::remove_file(from);
        return Err(e);
    }
    sync_dir(parent(to)?)
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Create `dir` and its missing parents with `mode` (existing ones are left as they are).
pub fn create_dir_all_mode(dir: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new().recursive(true).mode(mode).create(dir)
}

fn parent(path: &Path) -> io::Result<&Path> {
    match path.parent() {
        Some(p) if p.as_os_str().is_empty() => Ok(Path::new(".")),
        Some(p) => Ok(p),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "path has no parent directory",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn writes_with_exact_mode_and_replaces_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key.pem");
        write_atomic(&p, b"first", 0o600).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        write_atomic(&p, b"second", 0o640).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"second");
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o640);
        // No temp debris remains.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("key.pem")]);
    }

    #[test]
    fn a_symlink_others_could_plant_is_refused_and_a_safe_one_followed() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        fs::create_dir(&real).unwrap();
        // A directory others may write to (not sticky), holding a link.
        let shared = dir.path().join("shared");
        fs::create_dir(&shared).unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).unwrap();
        std::os::unix::fs::symlink(&real, shared.join("tls")).unwrap();
        let err = write_atomic(&shared.join("tls/key.pem"), b"secret", 0o600).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert_eq!(
            err.to_string(),
            format!(
                "refusing to write through {}/tls: it is a symbolic link in {}, which another \
                 user can change",
                shared.display(),
                shared.display()
            )
        );
        assert!(
            fs::read_dir(&real).unwrap().next().is_none(),
            "nothing written"
        );

        // Sticky (like /tmp) with a link of our own: followed.
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
        write_atomic(&shared.join("tls/key.pem"), b"secret", 0o600).unwrap();
        assert_eq!(fs::read(real.join("key.pem")).unwrap(), b"secret");

        // Sticky, but the link is another user's (when we may give it away).
        let theirs = shared.join("theirs");
        std::os::unix::fs::symlink(&real, &theirs).unwrap();
        if std::os::unix::fs::lchown(&theirs, Some(65534), None).is_ok() {
            let err = write_atomic(&theirs.join("x.pem"), b"x", 0o600).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
        }

        // Only we may write the directory: followed.
        let own = dir.path().join("own");
        fs::create_dir(&own).unwrap();
        fs::set_permissions(&own, fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink(&real, own.join("tls")).unwrap();
        write_atomic(&own.join("tls/cert.pem"), b"cert", 0o644).unwrap();
        assert_eq!(fs::read(real.join("cert.pem")).unwrap(), b"cert");
    }

    #[test]
    fn failed_write_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cert.pem");
        write_atomic(&p, b"old", 0o644).unwrap();
        // A path whose parent does not exist fails before touching anything.
        let bad = dir.path().join("missing").join("cert.pem");
        assert_eq!(
            write_atomic(&bad, b"new", 0o644).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert_eq!(fs::read(&p).unwrap(), b"old");
    }
}

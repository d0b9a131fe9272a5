//! The `file` target: any of cert, chain, fullchain, key and combined,
//! written with the configured mode, owner and group.
//!
//! All files are first written completely to temp files beside their
//! destinations (fsynced, with their final mode and owner), and only then
//! renamed into place one after another. A failure before the renames
//! leaves every old file untouched, so a reload never pairs a new
//! certificate with an old key.

use std::ffi::CString;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::cert::Bundle;
use crate::config::FileTarget;
use crate::deploy::DeployError;
use crate::store::fsutil;

/// Mode of files that hold no private key.
const PUBLIC_MODE: u32 = 0o644;

/// The files of a target with their content and mode.
fn contents(t: &FileTarget, b: &Bundle) -> Vec<(PathBuf, String, u32)> {
    let mut out = Vec::new();
    let f = &t.files;
    let mut add = |p: &Option<PathBuf>, c: String, secret: bool| {
        if let Some(p) = p {
            out.push((p.clone(), c, if secret { t.mode } else { PUBLIC_MODE }));
        }
    };
    add(&f.cert, b.leaf_pem.clone(), false);
    add(&f.chain, b.chain_pem.clone(), false);
    add(&f.fullchain, b.fullchain_pem(), false);
    add(&f.key, b.key.expose().to_string(), true);
    add(&f.combined, b.combined_pem(), true);
    out
}

pub fn holds(t: &FileTarget, b: &Bundle) -> bool {
    contents(t, b).iter().all(|(p, c, _)| {
        fs::read(p)
            .map(|on_disk| on_disk == c.as_bytes())
            .unwrap_or(false)
    })
}

pub fn write(t: &FileTarget, b: &Bundle) -> Result<(), DeployError> {
    let uid = t.owner.as_deref().map(user_id).transpose()?;
    let gid = t.group.as_deref().map(group_id).transpose()?;
    let files = contents(t, b);
    let mut staged: Vec<(PathBuf, PathBuf)> = Vec::new();
    let cleanup = |staged: &[(PathBuf, PathBuf)]| {
        for (tmp, _) in staged {
            let _ = fs::remove_file(tmp);
        }
    };
    for (path, content, mode) in &files {
        let result = stage(path, content.as_bytes(), *mode, uid, gid);
        match result {
            Ok(tmp) => staged.push((tmp, path.clone())),
            Err(source) => {
                cleanup(&staged);
                return Err(DeployError::Write {
                    path: path.clone(),
                    source,
                });
            }
        }
    }
    for (i, (tmp, path)) in staged.iter().enumerate() {
        if let Err(source) = fsutil::rename_durable(tmp, path) {
            cleanup(&staged[i + 1..]);
            return Err(DeployError::Write {
                path: path.clone(),
                source,
            });
        }
    }
    Ok(())
}

/// Write a complete temp file next to `path` with its final mode and owner.
fn stage(
    path: &Path,
    data: &[u8],
    mode: u32,
    uid: Option<u32>,
    gid: Option<u32>,
) -> std::io::Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let tmp = fsutil::temp_path(path)?;
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        if uid.is_some() || gid.is_some() {
            std::os::unix::fs::fchown(&f, uid, gid)?;
        }
        f.write_all(data)?;
        f.sync_all()
    })();
    match result {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
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
    for (path, _, _) in contents(t, &placeholder()) {
        let dir = path.parent().unwrap_or(Path::new("/"));
        if let Err(e) = crate::acme::solver::writable_dir(dir) {
            problems.push(format!("cannot write files in {}: {e}", dir.display()));
            continue;
        }
        // Renaming over an existing file needs only the directory, but a
        // sticky directory also needs us to own it.
        if let Ok(meta) = fs::symlink_metadata(&path) {
            if meta.file_type().is_symlink() {
                problems.push(format!(
                    "{} is a symlink; certherd replaces it with a regular file",
                    path.display()
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

fn placeholder() -> Bundle {
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
        },
    }
}

fn user_id(name: &str) -> Result<u32, DeployError> {
    if let Ok(n) = name.parse() {
        return Ok(n);
    }
    let c = CString::new(name).map_err(|_| unknown("user", name))?;
    let mut buf = vec![0u8; 16384];
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the call; buf outlives it.
    let rc = unsafe {
        libc::getpwnam_r(
            c.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return Err(unknown("user", name));
    }
    Ok(pwd.pw_uid)
}

fn group_id(name: &str) -> Result<u32, DeployError> {
    if let Ok(n) = name.parse() {
        return Ok(n);
    }
    let c = CString::new(name).map_err(|_| unknown("group", name))?;
    let mut buf = vec![0u8; 16384];
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the call; buf outlives it.
    let rc = unsafe {
        libc::getgrnam_r(
            c.as_ptr(),
            &mut grp,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return Err(unknown("group", name));
    }
    Ok(grp.gr_gid)
}

fn unknown(what: &'static str, name: &str) -> DeployError {
    DeployError::UnknownOwner {
        what,
        name: name.to_string(),
    }
}

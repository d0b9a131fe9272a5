//! A small tmpfs mounted for one test: a disk that fills up, or a
//! filesystem that turns read-only, under a directory the test owns.
//!
//! Mounting needs root (the test machines run the suite as root); when the
//! mount is refused, the test fails and says so, it is never skipped. The
//! filesystem is unmounted on drop (lazily if something still holds it).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted tmpfs; unmounted on drop.
pub struct Tmpfs {
    path: PathBuf,
}

/// The file [`Tmpfs::fill`] writes.
pub const FILLER: &str = "filler";

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it: `64k`) on
    /// `path`, which is created if missing.
    pub fn mount(path: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        mount(&[
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0755"),
            "tmpfs",
            &path.to_string_lossy(),
        ]);
        Tmpfs {
            path: path.to_path_buf(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Fills the filesystem with [`FILLER`] until no byte more fits.
    pub fn fill(&self) {
        let filler = self.path.join(FILLER);
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&filler)
            .unwrap_or_else(|e| panic!("create {}: {e}", filler.display()));
        for chunk in [4096, 1] {
            let block = vec![0u8; chunk];
            loop {
                match f.write(&block) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                    Err(e) => panic!("fill {}: {e}", filler.display()),
                }
            }
        }
        let _ = f.sync_all();
    }

    /// Removes what [`Tmpfs::fill`] wrote.
    pub fn unfill(&self) {
        let filler = self.path.join(FILLER);
        fs::remove_file(&filler).unwrap_or_else(|e| panic!("remove {}: {e}", filler.display()));
    }

    /// Remounts it read-only.
    pub fn remount_readonly(&self) {
        mount(&["-o", "remount,ro", &self.path.to_string_lossy()]);
    }
}

fn mount(args: &[&str]) {
    let out = Command::new("mount")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run mount {args:?} (util-linux mount): {e}"));
    assert!(
        out.status.success(),
        "mount {args:?} failed ({}): {}\nthese tests need to mount a small tmpfs: run them as root \
         (or in a container with CAP_SYS_ADMIN)",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

//! The `ssh` target: the files of a `file` target, written on a remote host
//! through the system OpenSSH client (`ssh`), and `reload` run there.
//!
//! certherd runs `ssh` itself (an argv, no local shell, with a deadline),
//! always with `BatchMode=yes` and `StrictHostKeyChecking=yes`: an unknown
//! or changed host key fails the deployment, it is never accepted. ssh's
//! own configuration (`~/.ssh/config`, agent, `ProxyJump`) still applies to
//! what the target does not set.
//!
//! All files go in one remote command: a POSIX `sh` script (on the remote
//! side a shell is unavoidable; every path in it is single-quoted) reads the
//! contents from stdin, line-counted, writes each file to
//! `<dir>/.certherd-tmp-<name>-<random>` with umask 077, sets mode, owner
//! and group, syncs, prints `certherd-ready`, and only when certherd answers
//! `commit` renames them all into place (or, with `layout: links`, switches
//! the `current` link: see [`super::links`]). On any failure, the end of its
//! input among them (its certherd was killed), it removes its temp files
//! and exits 1 with a message naming the path. Private keys never appear on
//! a command line.
//! A PKCS#12 file, being binary, travels as base64 lines and is decoded
//! there with `base64 -d`.

use std::fmt::Write as _;
use std::time::Duration;

use crate::cert::Bundle;
use crate::config::{CommandSpec, Layout, SshTarget};
use crate::deploy::DeployError;
use crate::process::{self, CommandOutcome};

/// How long writing the files (connection included) may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the `--dry-run` check may take.
const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(30);
/// ssh's own exit status for its errors (connection, authentication, host key).
const SSH_FAILED: i32 = 255;
/// What the remote write script prints when every file is staged, and
/// what certherd answers for it to switch them.
const READY: &str = "certherd-ready";
const COMMIT: &str = "commit";

/// `'…'` for a POSIX shell: the string, single-quoted, with `'` as `'\''`.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// How ssh and known_hosts name the host: `host`, or `[host]:port`.
pub fn host_label(t: &SshTarget) -> String {
    if t.port == 22 {
        t.host.clone()
    } else {
        format!("[{}]:{}", t.host, t.port)
    }
}

/// The local `ssh` argv that runs `remote_command` on the target's host.
pub fn ssh_argv(t: &SshTarget, remote_command: &str) -> Vec<String> {
    let mut argv: Vec<String> = vec!["ssh".into()];
    if let Some(config) = &t.ssh_config {
        argv.extend(["-F".into(), config.display().to_string()]);
    }
    argv.extend(["-T", "-o", "BatchMode=yes", "-o"].map(String::from));
    argv.push("StrictHostKeyChecking=yes".into());
    argv.extend(["-o".into(), "ConnectTimeout=15".into()]);
    if let Some(kh) = &t.known_hosts {
        argv.extend([
            "-o".into(),
            format!("UserKnownHostsFile={}", kh.display()),
            "-o".into(),
            "GlobalKnownHostsFile=/dev/null".into(),
        ]);
    }
    if let Some(id) = &t.identity {
        argv.extend([
            "-o".into(),
            "IdentitiesOnly=yes".into(),
            "-i".into(),
            id.display().to_string(),
        ]);
    }
    argv.extend(["-p".into(), t.port.to_string()]);
    if let Some(u) = &t.user {
        argv.extend(["-l".into(), u.clone()]);
    }
    if let Some(j) = &t.jump {
        argv.extend(["-J".into(), j.clone()]);
    }
    argv.extend(["--".into(), t.host.clone(), remote_command.to_string()]);
    argv
}

/// What ssh's stderr says went wrong, in an operator's words, when ssh
/// itself failed (exit 255).
fn ssh_problem(t: &SshTarget, outcome: &CommandOutcome) -> String {
    let label = host_label(t);
    let known = match &t.known_hosts {
        Some(p) => p.display().to_string(),
        None => "ssh's known_hosts files".to_string(),
    };
    let err = outcome.stderr.trim();
    // Which host's key ssh refused: the target's, or (through `jump`) the
    // jump host's, as ssh names it; the file is the one ssh names.
    let refused_host = between(err, "Host key for ", " has changed")
        .or_else(|| between(err, " host key is known for ", " and you have"))
        .map(|h| h.to_string());
    let (host, in_file) = match refused_host {
        Some(h) if h != label => {
            // "Offending ED25519 key in /path/known_hosts:1"
            let file = between(err, "Offending ", ":")
                .and_then(|o| o.split_once(" key in "))
                .map(|(_, f)| f.to_string())
                .unwrap_or_else(|| "the known_hosts files ssh reads for it".to_string());
            (format!("{h} (the jump host)"), file)
        }
        _ => (label.clone(), known),
    };
    let what = if outcome.timed_out {
        "ssh timed out".to_string()
    } else if err.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
        || err.contains("differs from the key for the IP address")
    {
        format!("host key for {host} does not match the one in {in_file} (it changed); refusing to connect")
    } else if err.contains("Host key verification failed") {
        format!("host key for {host} is not in {in_file}; refusing to connect")
    } else if err.contains("Permission denied") {
        format!("authentication to {label} failed")
    } else {
        format!("cannot connect to {label}")
    };
    if err.is_empty() || outcome.timed_out {
        what
    } else {
        format!("{what}: ssh said: {}", one_line(err))
    }
}

/// The text between the first `start` and the `end` after it, on one line.
fn between<'a>(s: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = s.find(start)? + start.len();
    let rest = &s[from..];
    let to = rest.find(end)?;
    let found = &rest[..to];
    (!found.contains('\n') && !found.is_empty()).then_some(found)
}

fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.chars().all(|c| c == '@'))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// The remote script writing every file, and what it reads on stdin.
pub fn write_script(
    t: &SshTarget,
    b: &Bundle,
    nonce: &str,
) -> Result<(String, Vec<u8>), DeployError> {
    let files = super::file::files(&t.files, b)?;
    let links = t.files.layout == Layout::Links;
    let folder = super::links::folder(&t.files);
    let version = folder.join(format!("v-{nonce}"));
    // Where each file is written first: a temp file beside it, or its
    // place in the new version folder of a `links` target.
    let staged: Vec<String> = files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            if links {
                quote(&version.join(f.role).display().to_string())
            } else {
                quote(&beside(&f.path, nonce, i))
            }
        })
        .collect();
    let mut s = String::new();
    s.push_str("umask 077\n");
    let cleanup = if links {
        // Only the new version: once `current` names an older one made from
        // the files as they were, that one stays.
        let temp_links: Vec<String> = files
            .iter()
            .enumerate()
            .map(|(i, f)| quote(&beside(&f.path, nonce, i)))
            .collect();
        format!(
            "rm -rf -- {} 2>/dev/null; rm -f -- {} 2>/dev/null",
            quote(&version.display().to_string()),
            temp_links.join(" ")
        )
    } else {
        format!("rm -f -- {} 2>/dev/null", staged.join(" "))
    };
    let _ = writeln!(
        s,
        "fail() {{ {cleanup}; echo \"certherd: $1\" >&2; exit 1; }}"
    );
    // Reads $1 lines from stdin, writes them to stdout. `read` never reads
    // past a newline, so the next file's lines stay on stdin.
    s.push_str(
        "recv() { i=0; while [ \"$i\" -lt \"$1\" ]; do IFS= read -r l || return 1; \
         printf '%s\\n' \"$l\" || return 1; i=$((i+1)); done; }\n",
    );
    // What a remote script that died (a reboot mid-deployment) left
    // beside each path: temp files, one of them with the key.
    for f in &files {
        let _ = writeln!(s, "rm -f -- {} 2>/dev/null", beside_pattern(&f.path));
    }
    if links {
        open_folder_script(&mut s, &folder, &version);
    }
    let pkcs12 = t.files.files.pkcs12.as_ref().map(|p| &p.path);
    let mut stdin = Vec::new();
    for (f, tmp) in files.iter().zip(&staged) {
        let binary = Some(&f.path) == pkcs12;
        let text = if binary {
            base64_lines(&f.data)
        } else {
            String::from_utf8_lossy(&f.data).into_owned()
        };
        let (lines, body) = line_counted(&text);
        stdin.extend_from_slice(body.as_bytes());
        let dest = f.path.display().to_string();
        let cannot = |what: &str| quote(&format!("cannot {what} {dest}"));
        if binary {
            let _ = writeln!(s, "b=$(recv {lines}) || fail {}", cannot("write"));
            let _ = writeln!(
                s,
                "printf '%s\\n' \"$b\" | base64 -d > {tmp} || fail {}",
                cannot("decode (base64 -d) and write")
            );
            s.push_str("b=\n");
        } else {
            let _ = writeln!(s, "recv {lines} > {tmp} || fail {}", cannot("write"));
        }
        let _ = writeln!(
            s,
            "chmod {:o} {tmp} || fail {}",
            f.mode,
            cannot("set the mode of")
        );
        if let Some(o) = &t.files.owner {
            let _ = writeln!(
                s,
                "chown -- {} {tmp} || fail {}",
                quote(o),
                cannot("set the owner of")
            );
        }
        if let Some(g) = &t.files.group {
            let _ = writeln!(
                s,
                "chgrp -- {} {tmp} || fail {}",
                quote(g),
                cannot("set the group of")
            );
        }
    }
    let _ = writeln!(
        s,
        "sync -- {} 2>/dev/null || sync 2>/dev/null || :",
        staged.join(" ")
    );
    // Nothing is switched until certherd says so: a script whose certherd
    // was killed (and whose ssh died with it) reads the end of its input
    // instead, removes what it staged and changes nothing, rather than
    // finishing on its own beside a certherd started since.
    let _ = writeln!(
        s,
        "echo {READY}\nIFS= read -r go || go=\n[ \"$go\" = {COMMIT} ] || fail {}",
        quote("certherd went away before the files were switched; nothing was changed")
    );
    if links {
        switch_links_script(&mut s, &files, &folder, nonce);
    } else {
        for (f, tmp) in files.iter().zip(&staged) {
            let dest = f.path.display().to_string();
            let _ = writeln!(
                s,
                "mv -f -- {tmp} {} || fail {}",
                quote(&dest),
                quote(&format!("cannot rename a temp file to {dest}"))
            );
        }
    }
    Ok((s, stdin))
}

/// `<dir>/.certherd-tmp-<name>-<nonce>-<i>`: a temp file (or link) beside `path`.
fn beside(path: &std::path::Path, nonce: &str, i: usize) -> String {
    let dir = path
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{dir}/.certherd-tmp-{name}-{nonce}-{i}")
}

/// A shell pattern for every [`beside`] name of `path`, whatever its nonce
/// (16 hex digits) and index: the quoted prefix, then the unquoted glob.
fn beside_pattern(path: &std::path::Path) -> String {
    let prefix = beside(path, "", 0);
    let prefix = prefix.strip_suffix("--0").expect("beside's shape");
    format!("{}-{}-[0-9]*", quote(prefix), "[0-9a-f]".repeat(16))
}

/// The remote half of [`super::links`]'s folder handling: refuse a folder
/// that is a link or someone else's, create it, remove what an interrupted
/// deployment left (versions `current` does not name, temp links), and
/// make the new version's folder.
fn open_folder_script(s: &mut String, folder: &std::path::Path, version: &std::path::Path) {
    let f = folder.display().to_string();
    let l = quote(&f);
    let _ = writeln!(
        s,
        "if [ -L {l} ] || {{ [ -e {l} ] && [ ! -d {l} ]; }}; then fail {}; fi",
        quote(&format!("{f} exists and is not a folder"))
    );
    let _ = writeln!(
        s,
        "[ -d {l} ] || mkdir -- {l} || fail {}",
        quote(&format!("cannot create {f}"))
    );
    let _ = writeln!(
        s,
        "[ -O {l} ] || fail {}",
        quote(&format!("{f} belongs to another user"))
    );
    let _ = writeln!(
        s,
        "chmod 755 -- {l} || fail {}",
        quote(&format!("cannot set the mode of {f}"))
    );
    sweep_script(s, folder);
    let v = version.display().to_string();
    let _ = writeln!(
        s,
        "mkdir -- {q} && chmod 755 -- {q} || fail {}",
        quote(&format!("cannot create {v}")),
        q = quote(&v),
    );
}

/// Remove the versions `current` does not name and stray temp links.
fn sweep_script(s: &mut String, folder: &std::path::Path) {
    let l = quote(&folder.display().to_string());
    let _ = writeln!(
        s,
        "cur=$(readlink -- {l}/current 2>/dev/null) || cur=\n\
         for d in {l}/v-*; do [ -d \"$d\" ] || continue; [ \"${{d##*/}}\" = \"$cur\" ] || rm -rf -- \"$d\"; done\n\
         rm -f -- {l}/.tmp-* 2>/dev/null || :"
    );
}

/// Turn every path not yet a link into one (showing the same bytes: the
/// files as they are become a version first), then point `current` at the
/// new version with one `mv -T`, and sweep.
fn switch_links_script(
    s: &mut String,
    files: &[super::file::Planned],
    folder: &std::path::Path,
    nonce: &str,
) {
    let f = folder.display().to_string();
    let l = quote(&f);
    let current = quote(&format!("{f}/current"));
    let switch = |s: &mut String, version: &str, tmp: &str| {
        let tmp = quote(&format!("{f}/.tmp-{tmp}"));
        let _ = writeln!(
            s,
            "ln -s -- {} {tmp} && mv -Tf -- {tmp} {current} || fail {}",
            quote(version),
            quote(&format!(
                "cannot switch {f}/current to {version} (mv -T: GNU coreutils or BusyBox)"
            ))
        );
    };
    s.push_str("need=\n");
    for p in files {
        let text = super::links::link_text(folder, &p.path, p.role);
        let _ = writeln!(
            s,
            "[ \"$(readlink -- {} 2>/dev/null)\" = {} ] || need=1",
            quote(&p.path.display().to_string()),
            quote(&text.display().to_string())
        );
    }
    s.push_str("if [ -n \"$need\" ]; then\n");
    let was_name = format!("v-{nonce}-was");
    let was = format!("{f}/{was_name}");
    let _ = writeln!(
        s,
        "mkdir -- {w} && chmod 755 -- {w} || fail {}",
        quote(&format!("cannot create {was}")),
        w = quote(&was)
    );
    for p in files {
        let path = p.path.display().to_string();
        let _ = writeln!(
            s,
            "if [ -f {q} ]; then cp -p -- {q} {} || fail {}; fi",
            quote(&format!("{was}/{}", p.role)),
            quote(&format!("cannot copy {path} before turning it into a link")),
            q = quote(&path)
        );
    }
    switch(s, &was_name, &format!("{nonce}-was"));
    for (i, p) in files.iter().enumerate() {
        let path = p.path.display().to_string();
        let text = super::links::link_text(folder, &p.path, p.role);
        let tmp = quote(&beside(&p.path, nonce, i));
        let _ = writeln!(
            s,
            "[ \"$(readlink -- {q} 2>/dev/null)\" = {t} ] || {{ ln -s -- {t} {tmp} && mv -Tf -- {tmp} {q}; }} || fail {}",
            quote(&format!("cannot turn {path} into a link")),
            q = quote(&path),
            t = quote(&text.display().to_string()),
        );
    }
    s.push_str("fi\n");
    switch(s, &format!("v-{nonce}"), nonce);
    let _ = writeln!(s, "sync {l} 2>/dev/null || sync 2>/dev/null || :");
    sweep_script(s, folder);
}

/// Binary data as base64 lines of 76 characters.
fn base64_lines(data: &[u8]) -> String {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(data);
    let mut out = String::with_capacity(encoded.len() + encoded.len() / 76 + 1);
    for chunk in encoded.as_bytes().chunks(76) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out
}

/// The content as whole lines, and how many: a missing final newline is added
/// (PEM always has one).
fn line_counted(content: &str) -> (usize, String) {
    let mut body = content.to_string();
    if !body.is_empty() && !body.ends_with('\n') {
        body.push('\n');
    }
    (body.matches('\n').count(), body)
}

fn nonce() -> String {
    use rand::Rng;
    let n: u64 = rand::rng().random();
    format!("{n:016x}")
}

/// `sh -c '<script>'`: the remote login shell may be any shell.
fn remote_sh(script: &str) -> String {
    format!("sh -c {}", quote(script))
}

fn ssh_error(target: &str, t: &SshTarget, outcome: &CommandOutcome) -> DeployError {
    DeployError::Command(format!(
        "ssh target {target:?}: {}",
        ssh_problem(t, outcome)
    ))
}

/// Write every file on the remote host; they change together.
/// `ssh_config` may name commands ssh runs (`ProxyCommand`,
/// `LocalCommand`), and ssh does not check the permissions of a file given
/// with `-F`: refuse one that another user could change.
fn check_ssh_config(target: &str, t: &SshTarget) -> Result<(), DeployError> {
    use std::os::unix::fs::MetadataExt;
    let Some(path) = &t.ssh_config else {
        return Ok(());
    };
    let meta = std::fs::metadata(path).map_err(|e| {
        DeployError::Command(format!(
            "ssh target {target:?}: cannot read ssh_config {}: {e}",
            path.display()
        ))
    })?;
    let me = rustix::process::geteuid().as_raw();
    let why = if meta.mode() & 0o022 != 0 {
        format!(
            "can be written by others (mode {:04o})",
            meta.mode() & 0o7777
        )
    } else if meta.uid() != me && meta.uid() != 0 {
        format!("belongs to uid {}", meta.uid())
    } else {
        return Ok(());
    };
    Err(DeployError::Command(format!(
        "ssh target {target:?}: ssh_config {} {why}; ssh runs the commands it names, so \
         certherd refuses it",
        path.display()
    )))
}

pub async fn write(target: &str, t: &SshTarget, b: &Bundle) -> Result<(), DeployError> {
    check_ssh_config(target, t)?;
    let (script, stdin) = write_script(t, b, &nonce())?;
    let argv = ssh_argv(t, &remote_sh(&script));
    let commit = format!("{COMMIT}\n").into_bytes();
    let outcome = process::run_two_step(&argv, stdin, READY, commit, WRITE_TIMEOUT).await?;
    if outcome.success() {
        return Ok(());
    }
    if outcome.code == Some(SSH_FAILED) || outcome.timed_out {
        return Err(ssh_error(target, t, &outcome));
    }
    Err(DeployError::Command(format!(
        "ssh target {target:?}: writing the files on {} failed: {}",
        host_label(t),
        one_line(outcome.stderr.trim())
    )))
}

/// Run `reload` on the remote host. The outcome names the remote argv.
pub async fn reload(
    target: &str,
    t: &SshTarget,
    cmd: &CommandSpec,
) -> Result<CommandOutcome, DeployError> {
    check_ssh_config(target, t)?;
    let remote: Vec<String> = cmd.argv.iter().map(|a| quote(a)).collect();
    let argv = ssh_argv(t, &remote.join(" "));
    let mut outcome = process::run(&argv, &[], cmd.timeout).await?;
    if outcome.code == Some(SSH_FAILED) && !outcome.timed_out {
        return Err(ssh_error(target, t, &outcome));
    }
    outcome.argv = cmd.argv.clone();
    if outcome.success() {
        Ok(outcome)
    } else {
        Err(DeployError::Command(format!(
            "reload on {} {}",
            host_label(t),
            outcome.summary()
        )))
    }
}

/// The remote check for `--dry-run`: authenticate, every target directory
/// exists and is writable, owner and group exist, the reload program exists.
pub fn preflight_script(t: &SshTarget, reload: Option<&CommandSpec>) -> String {
    let mut dirs: Vec<String> = Vec::new();
    for (path, _) in super::file::paths(&t.files) {
        let dir = path
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    let mut s = String::new();
    for dir in &dirs {
        let q = quote(dir);
        let _ = writeln!(
            s,
            "if ! test -d {q}; then echo {}; elif ! test -w {q}; then echo {}; fi",
            quote(&format!("problem: directory {dir} does not exist")),
            quote(&format!("problem: directory {dir} is not writable"))
        );
    }
    if let Some(o) = &t.files.owner {
        let _ = writeln!(
            s,
            "id -u -- {} >/dev/null 2>&1 || echo {}",
            quote(o),
            quote(&format!("problem: user {o:?} does not exist"))
        );
    }
    if let Some(g) = &t.files.group {
        let _ = writeln!(
            s,
            "{{ getent group {} || grep -q -- {} /etc/group; }} >/dev/null 2>&1 || echo {}",
            quote(g),
            quote(&format!("^{g}:")),
            quote(&format!("problem: group {g:?} does not exist"))
        );
    }
    if t.files.layout == Layout::Links {
        let f = super::links::folder(&t.files).display().to_string();
        let l = quote(&f);
        let _ = writeln!(
            s,
            "if [ -L {l} ] || {{ [ -e {l} ] && [ ! -d {l} ]; }}; then echo {}; \
             elif [ -e {l} ] && [ ! -O {l} ]; then echo {}; fi",
            quote(&format!("problem: {f} exists and is not a folder")),
            quote(&format!("problem: {f} belongs to another user")),
        );
        let _ = writeln!(
            s,
            "mv --help 2>&1 | grep -q -e '-T' || echo {}",
            quote("problem: mv does not take -T (layout: links needs GNU coreutils or BusyBox)")
        );
    }
    if t.files.files.pkcs12.is_some() {
        let _ = writeln!(
            s,
            "command -v base64 >/dev/null 2>&1 || echo {}",
            quote("problem: base64 is not found (it decodes the pkcs12 file)")
        );
    }
    if let Some(r) = reload {
        let p = &r.argv[0];
        let _ = writeln!(
            s,
            "command -v {} >/dev/null 2>&1 || echo {}",
            quote(p),
            quote(&format!("problem: reload program {p:?} is not found"))
        );
    }
    s.push_str("echo certherd-preflight-done\n");
    s
}

/// Problems found by connecting and checking, each naming the host.
pub async fn preflight(t: &SshTarget, reload: Option<&CommandSpec>) -> Vec<String> {
    if let Err(e) = check_ssh_config("", t) {
        let text = e.to_string();
        let text = text.strip_prefix("ssh target \"\": ").unwrap_or(&text);
        return vec![text.to_string()];
    }
    let argv = ssh_argv(t, &remote_sh(&preflight_script(t, reload)));
    let label = host_label(t);
    let outcome = match process::run(&argv, &[], PREFLIGHT_TIMEOUT).await {
        Ok(o) => o,
        Err(e) => return vec![e.to_string()],
    };
    if outcome.code == Some(SSH_FAILED) || outcome.timed_out {
        return vec![ssh_problem(t, &outcome)];
    }
    let mut problems: Vec<String> = outcome
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("problem: "))
        .map(|p| format!("on {label}: {p}"))
        .collect();
    if !outcome.success() || !outcome.stdout.contains("certherd-preflight-done") {
        problems.push(format!(
            "on {label}: the remote check failed: {}",
            outcome.summary()
        ));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FileSet, FileTarget};
    use std::path::PathBuf;

    fn target() -> SshTarget {
        SshTarget {
            host: "lb1.example.com".into(),
            port: 2222,
            user: Some("deploy".into()),
            identity: Some(PathBuf::from("/etc/certherd/id_ed25519")),
            known_hosts: Some(PathBuf::from("/etc/certherd/known_hosts")),
            jump: Some("bastion".into()),
            ssh_config: None,
            files: FileTarget {
                files: FileSet {
                    fullchain: Some(PathBuf::from("/etc/it's here/site.pem")),
                    key: Some(PathBuf::from("/etc/tls/site.key")),
                    ..FileSet::default()
                },
                mode: 0o600,
                owner: None,
                group: Some("ssl-cert".into()),
                layout: crate::config::Layout::Files,
            },
        }
    }

    #[test]
    fn an_ssh_config_file_is_read_instead_of_the_users() {
        let mut t = target();
        t.ssh_config = Some(PathBuf::from("/etc/certherd/ssh_config"));
        let argv = ssh_argv(&t, "true");
        assert_eq!(argv[..3], ["ssh", "-F", "/etc/certherd/ssh_config"]);
        assert_eq!(argv[3], "-T");
    }

    #[test]
    fn an_ssh_config_others_can_change_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ssh_config");
        std::fs::write(&path, "Host bastion\n").unwrap();
        let mut t = target();
        t.ssh_config = Some(path.clone());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(check_ssh_config("lb1", &t).is_ok());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o664)).unwrap();
        assert_eq!(
            check_ssh_config("lb1", &t).unwrap_err().to_string(),
            format!(
                "ssh target \"lb1\": ssh_config {} can be written by others (mode 0664); ssh \
                 runs the commands it names, so certherd refuses it",
                path.display()
            )
        );
        t.ssh_config = Some(dir.path().join("missing"));
        assert!(check_ssh_config("lb1", &t)
            .unwrap_err()
            .to_string()
            .contains("cannot read ssh_config"));
    }

    #[test]
    fn a_refused_host_key_names_the_host_ssh_refused() {
        let t = target();
        let failed = |stderr: &str| CommandOutcome {
            argv: vec!["ssh".into()],
            code: Some(255),
            timed_out: false,
            timeout: Duration::from_secs(1),
            stdout: String::new(),
            stderr: stderr.into(),
        };
        let unknown_jump = "No ED25519 host key is known for bastion and you have requested \
                            strict checking.\nHost key verification failed.\n";
        assert!(ssh_problem(&t, &failed(unknown_jump)).starts_with(
            "host key for bastion (the jump host) is not in the known_hosts files ssh reads \
             for it; refusing to connect: ssh said: "
        ));
        let unknown_target = "No ED25519 host key is known for [lb1.example.com]:2222 and you \
                              have requested strict checking.\nHost key verification failed.\n";
        assert!(ssh_problem(&t, &failed(unknown_target)).starts_with(
            "host key for [lb1.example.com]:2222 is not in /etc/certherd/known_hosts; refusing"
        ));
        let changed_jump = "@@@\n@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @\n\
                            Offending ED25519 key in /etc/certherd/kh-bastion:3\n\
                            Host key for bastion has changed and you have requested strict \
                            checking.\nHost key verification failed.\n";
        assert!(ssh_problem(&t, &failed(changed_jump)).starts_with(
            "host key for bastion (the jump host) does not match the one in \
             /etc/certherd/kh-bastion (it changed); refusing to connect"
        ));
    }

    #[test]
    fn quotes_for_a_posix_shell() {
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
    }

    #[test]
    fn argv_checks_host_keys_and_never_uses_a_local_shell() {
        let argv = ssh_argv(&target(), "true");
        assert_eq!(
            argv.join(" "),
            "ssh -T -o BatchMode=yes -o StrictHostKeyChecking=yes -o ConnectTimeout=15 \
             -o UserKnownHostsFile=/etc/certherd/known_hosts -o GlobalKnownHostsFile=/dev/null \
             -o IdentitiesOnly=yes -i /etc/certherd/id_ed25519 -p 2222 -l deploy -J bastion \
             -- lb1.example.com true"
        );
        assert_eq!(host_label(&target()), "[lb1.example.com]:2222");
    }

    #[test]
    fn script_writes_temps_then_renames_and_never_holds_the_key() {
        let b = crate::store::tests::bundle(&["a.test"], time::OffsetDateTime::now_utc(), 90);
        let (script, stdin) = write_script(&target(), &b, "n").unwrap();
        assert!(!script.contains(b.key.expose().lines().nth(1).unwrap()));
        assert_eq!(
            String::from_utf8(stdin).unwrap(),
            format!("{}{}", b.fullchain_pem(), b.key.expose())
        );
        assert!(script.contains(r"'/etc/it'\''s here/.certherd-tmp-site.pem-n-0'"));
        let last_write = script.rfind("recv ").unwrap();
        let ready = script.find("echo certherd-ready\n").unwrap();
        let commit = script.find("[ \"$go\" = commit ] || fail").unwrap();
        let first_mv = script.find("mv -f").unwrap();
        assert!(
            last_write < ready && ready < commit && commit < first_mv,
            "{script}"
        );
        assert!(script.contains("chgrp -- 'ssl-cert'"), "{script}");
        assert!(script.contains("chmod 600 '/etc/tls/.certherd-tmp-site.key-n-1'"));
        assert!(script.contains("chmod 644 "));
    }

    #[test]
    fn a_links_script_writes_a_version_then_switches_current_last() {
        let b = crate::store::tests::bundle(&["a.test"], time::OffsetDateTime::now_utc(), 90);
        let mut t = target();
        t.files.layout = Layout::Links;
        let (script, _) = write_script(&t, &b, "n").unwrap();
        let folder = "/etc/it'\\''s here/.site.pem.certherd";
        let pos = |needle: &str| {
            script
                .find(needle)
                .unwrap_or_else(|| panic!("{needle:?} not in:\n{script}"))
        };
        let written = pos(&format!("> '{folder}/v-n/key.pem'"))
            .max(pos(&format!("> '{folder}/v-n/fullchain.pem'")));
        let keep_old = pos(&format!(
            "mv -Tf -- '{folder}/.tmp-n-was' '{folder}/current'"
        ));
        let key_link = pos("'/etc/tls/.certherd-tmp-site.key-n-1' '/etc/tls/site.key'");
        let switch = script
            .rfind(&format!("mv -Tf -- '{folder}/.tmp-n' '{folder}/current'"))
            .unwrap();
        assert!(
            written < keep_old && keep_old < key_link && key_link < switch,
            "{script}"
        );
        // The key's link is absolute (another folder), the certificate's relative.
        assert!(
            script.contains(&format!("ln -s -- '{folder}/current/key.pem'")),
            "{script}"
        );
        assert!(script.contains("ln -s -- '.site.pem.certherd/current/fullchain.pem'"));
        // A failure removes the new version only, never what `current` names.
        assert!(
            script.contains(&format!("fail() {{ rm -rf -- '{folder}/v-n' ")),
            "{script}"
        );
        assert!(preflight_script(&t, None).contains("mv --help"));
        assert!(!preflight_script(&target(), None).contains("mv --help"));
    }

    /// Every entry under `dir`: a link's text, a file's bytes.
    fn tree(dir: &std::path::Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_symlink() {
                let text = std::fs::read_link(&p).unwrap();
                out.push((p, text.into_os_string().into_encoded_bytes()));
            } else if meta.is_dir() {
                out.push((p.clone(), Vec::new()));
                out.extend(tree(&p));
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
        out.sort();
        out
    }

    /// The write script run by `sh`, as sshd would run it, fed `stdin`.
    fn run_script(script: &str, stdin: &[u8]) -> std::process::Output {
        use std::io::Write;
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    }

    /// An ssh target whose files are in `dir` (the script runs locally).
    fn target_in(dir: &std::path::Path, layout: Layout) -> SshTarget {
        SshTarget {
            files: FileTarget {
                layout,
                ..crate::deploy::file::tests::target(dir, dir)
            },
            ..target()
        }
    }

    #[test]
    fn without_certherds_commit_the_script_changes_nothing_and_with_it_switches() {
        for layout in [Layout::Files, Layout::Links] {
            let dir = tempfile::tempdir().unwrap();
            let t = target_in(dir.path(), layout);
            let old = crate::deploy::file::tests::bundle();
            crate::deploy::file::write(&t.files, &old).unwrap();
            let before = tree(dir.path());
            let new = crate::deploy::file::tests::bundle();
            let (script, stdin) = write_script(&t, &new, "0123456789abcdef").unwrap();

            // certherd killed after sending the files: the input just ends.
            let out = run_script(&script, &stdin);
            assert_eq!(out.status.code(), Some(1), "{layout:?}: {out:?}");
            assert_eq!(String::from_utf8_lossy(&out.stdout), "certherd-ready\n");
            assert_eq!(
                String::from_utf8_lossy(&out.stderr),
                "certherd: certherd went away before the files were switched; nothing was \
                 changed\n"
            );
            assert_eq!(tree(dir.path()), before, "{layout:?}");
            assert!(crate::deploy::file::holds(&t.files, &old));

            let mut committed = stdin.clone();
            committed.extend_from_slice(b"commit\n");
            let out = run_script(&script, &committed);
            assert!(out.status.success(), "{layout:?}: {out:?}");
            assert!(crate::deploy::file::holds(&t.files, &new), "{layout:?}");
        }
    }

    #[test]
    fn the_script_removes_the_temp_files_a_dead_script_left_and_only_those() {
        for layout in [Layout::Files, Layout::Links] {
            let dir = tempfile::tempdir().unwrap();
            let t = target_in(dir.path(), layout);
            let left = [
                ".certherd-tmp-site.key-fedcba9876543210-1",
                ".certherd-tmp-site.pem-0123456789abcdef-0",
            ];
            let kept = [
                ".certherd-tmp-site.pem.bak-0123456789abcdef-0",
                ".certherd-tmp-other.key-0123456789abcdef-1",
                "site.pem-0123456789abcdef-0",
            ];
            for name in left.iter().chain(&kept) {
                std::fs::write(dir.path().join(name), "PRIVATE KEY").unwrap();
            }
            let b = crate::deploy::file::tests::bundle();
            let (script, mut stdin) = write_script(&t, &b, "00000000000000aa").unwrap();
            stdin.extend_from_slice(b"commit\n");
            let out = run_script(&script, &stdin);
            assert!(out.status.success(), "{layout:?}: {out:?}");
            assert!(crate::deploy::file::holds(&t.files, &b), "{layout:?}");
            for name in left {
                assert!(!dir.path().join(name).exists(), "{layout:?}: {name} left");
            }
            for name in kept {
                assert!(dir.path().join(name).exists(), "{layout:?}: {name} removed");
            }
        }
    }

    #[test]
    fn a_pkcs12_file_travels_as_base64_and_is_decoded_remotely() {
        let b = crate::store::tests::bundle(&["a.test"], time::OffsetDateTime::now_utc(), 90);
        let mut t = target();
        t.files.files.pkcs12 = Some(crate::config::Pkcs12File {
            path: PathBuf::from("/srv/site.p12"),
            password: crate::config::Secret::new("pw-not-in-script".into(), "env X".into()),
            name: "site".into(),
        });
        let (script, stdin) = write_script(&t, &b, "n").unwrap();
        assert!(!script.contains("pw-not-in-script"));
        assert!(
            script.contains("| base64 -d > '/srv/.certherd-tmp-site.p12-n-2' || fail"),
            "{script}"
        );
        assert!(script.contains("chmod 600 '/srv/.certherd-tmp-site.p12-n-2'"));
        let stdin = String::from_utf8(stdin).unwrap();
        let sent: String = stdin
            .strip_prefix(&format!("{}{}", b.fullchain_pem(), b.key.expose()))
            .unwrap()
            .lines()
            .collect();
        use base64::Engine;
        let p12 = base64::engine::general_purpose::STANDARD
            .decode(sent)
            .unwrap();
        assert!(super::super::pkcs12::holds(
            &p12,
            &b,
            t.files.files.pkcs12.as_ref().unwrap()
        ));
        assert!(preflight_script(&t, None).contains("command -v base64"));
    }
}

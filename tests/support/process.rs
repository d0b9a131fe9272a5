//! Child processes, scratch directories and bounded waits for the test services.

use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// A temporary directory that is removed on drop, unless the thread is
/// panicking: then it is kept and its path printed, so logs survive a failure.
pub struct ScratchDir {
    dir: Option<TempDir>,
    path: PathBuf,
}

impl ScratchDir {
    /// A new directory under the system temp dir, named `<prefix>XXXXXX`.
    pub fn new(prefix: &str) -> ScratchDir {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .unwrap_or_else(|e| panic!("create temporary directory {prefix}*: {e}"));
        let path = dir.path().to_path_buf();
        ScratchDir {
            dir: Some(dir),
            path,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if thread::panicking() {
            if let Some(dir) = self.dir.take() {
                let kept = dir.keep();
                eprintln!("test failed: kept {} for inspection", kept.display());
            }
        }
    }
}

/// A spawned child whose stdout and stderr go to a log file; killed and
/// reaped on drop.
pub struct ChildGuard {
    name: String,
    child: Option<Child>,
    log: PathBuf,
    /// Where this child's output starts in `log` (earlier runs may precede it).
    log_start: u64,
}

impl ChildGuard {
    /// Spawns `cmd` (stdin closed) with stdout and stderr appended to `log`,
    /// after a header line naming the command. Panics if it cannot start.
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> ChildGuard {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("open {name} log {}: {e}", log.display()));
        writeln!(file, "--- certherd test support: starting {cmd:?}").expect("write log header");
        let log_start = file.metadata().expect("stat log").len();
        let stderr = file.try_clone().expect("clone log file handle");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name} ({cmd:?}): {e}"));
        ChildGuard {
            name: name.to_owned(),
            child: Some(child),
            log: log.to_path_buf(),
            log_start,
        }
    }

    /// What this child has logged so far (not what earlier runs left in the file).
    pub fn log_text(&self) -> String {
        let bytes = fs::read(&self.log).unwrap_or_default();
        let start = usize::try_from(self.log_start)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// `Some(status)` once the child has exited (or was killed by [`Self::kill`]).
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        match self.child.as_mut() {
            Some(child) => child
                .try_wait()
                .unwrap_or_else(|e| panic!("wait {}: {e}", self.name)),
            None => Some(ExitStatus::default()),
        }
    }

    /// Kills (SIGKILL) and reaps the child; idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Fails only if it already exited; reaping below handles both cases.
            let _ = child.kill();
            if let Err(e) = child.wait() {
                eprintln!("wait for killed {} (pid {}): {e}", self.name, child.id());
            }
        }
    }

    /// The log's last lines, headed by its path, for failure messages.
    pub fn describe_log(&self) -> String {
        describe_log(&self.name, &self.log)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `--- NAME log PATH (last lines) ---` followed by the last 40 lines of it.
pub fn describe_log(name: &str, path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_else(|e| format!("<unreadable: {e}>"));
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(40)..].join("\n");
    format!("--- {name} log {} (last lines) ---\n{tail}", path.display())
}

/// Runs `cmd` to completion (stdin closed, output captured), killing it if it
/// runs longer than `timeout`.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output, String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn {cmd:?}: {e}"))?;
    // Drain the pipes on threads so a chatty child cannot block on a full pipe.
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_reader = thread::spawn(move || read_all(&mut out));
    let err_reader = thread::spawn(move || read_all(&mut err));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| format!("wait {cmd:?}: {e}"))? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "{cmd:?} did not finish within {timeout:?}; killed it"
            ));
        }
        thread::sleep(Duration::from_millis(5));
    };
    Ok(Output {
        status,
        stdout: out_reader.join().expect("stdout reader"),
        stderr: err_reader.join().expect("stderr reader"),
    })
}

fn read_all(r: &mut impl std::io::Read) -> Vec<u8> {
    let mut buf = Vec::new();
    let _ = r.read_to_end(&mut buf);
    buf
}

/// Calls `probe` until it returns `Some`, sleeping a little longer each time
/// (from 5 ms up to 100 ms), for at most `timeout`. The error says what was
/// awaited and what the last probe reported.
pub fn poll_until<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(5);
    loop {
        let last = match probe() {
            Ok(value) => return Ok(value),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(format!("{what}: not within {timeout:?}; last: {last}"));
        }
        thread::sleep(delay.min(deadline.saturating_duration_since(Instant::now())));
        delay = (delay * 2).min(Duration::from_millis(100));
    }
}

/// Runs a future to completion on a fresh single-threaded tokio runtime on its
/// own thread, so synchronous support code can use async clients (reqwest)
/// whether or not the calling test is itself inside a tokio runtime.
pub fn block_on<F>(fut: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("build tokio runtime")
                    .block_on(fut)
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Writes `contents` to `path` by renaming a complete temporary file over it,
/// the way a well-behaved deployer replaces a live file.
pub fn write_atomic(path: &Path, contents: &[u8]) {
    let mut tmp_name = path.file_name().expect("a file path").to_os_string();
    tmp_name.push(".certherd-test-tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut file = File::create(&tmp).unwrap_or_else(|e| panic!("create {}: {e}", tmp.display()));
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    fs::rename(&tmp, path)
        .unwrap_or_else(|e| panic!("rename {} -> {}: {e}", tmp.display(), path.display()));
}

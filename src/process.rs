//! Child processes: an argv (never a shell), a deadline, output captured
//! and bounded, the child killed when the deadline passes or the caller
//! goes away.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

/// How much of a child's stdout and stderr is kept for the report.
const OUTPUT_LIMIT: usize = 8 * 1024;

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CommandOutcome {
    pub argv: Vec<String>,
    /// Exit code; `None` when killed by a signal or by the timeout.
    pub code: Option<i32>,
    pub timed_out: bool,
    /// The deadline it was given (and killed at, when `timed_out`).
    #[serde(skip)]
    pub timeout: Duration,
    pub stdout: String,
    pub stderr: String,
}

impl CommandOutcome {
    pub fn success(&self) -> bool {
        self.code == Some(0) && !self.timed_out
    }

    /// One line for an operator: what ran and how it ended.
    pub fn summary(&self) -> String {
        let how = if self.timed_out {
            format!("timed out after {:?} and was killed", self.timeout)
        } else {
            match self.code {
                Some(c) => format!("exited {c}"),
                None => "killed by a signal".to_string(),
            }
        };
        let mut s = format!("`{}` {how}", self.argv.join(" "));
        let err = self.stderr.trim();
        if !self.success() && !err.is_empty() {
            s.push_str(": ");
            s.push_str(err);
        }
        s
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot run `{program}`: {source}")]
pub struct SpawnError {
    pub program: String,
    #[source]
    pub source: std::io::Error,
}

pub async fn run(
    argv: &[String],
    env: &[(String, String)],
    timeout: Duration,
) -> Result<CommandOutcome, SpawnError> {
    run_with_stdin(argv, env, None, timeout).await
}

/// [`run`], with `stdin` written to the child's standard input (then
/// closed); `None` gives it no input at all, as `run` does. The child may
/// stop reading early: a failed write is not an error, its exit status is.
pub async fn run_with_stdin(
    argv: &[String],
    env: &[(String, String)],
    stdin: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<CommandOutcome, SpawnError> {
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| SpawnError {
        program: argv[0].clone(),
        source,
    })?;
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let input = child.stdin.take();
    let write = async move {
        if let (Some(mut pipe), Some(bytes)) = (input, stdin) {
            use tokio::io::AsyncWriteExt;
            let _ = pipe.write_all(&bytes).await;
            let _ = pipe.shutdown().await;
        }
    };
    let read = async {
        let (mut o, mut e) = (Vec::new(), Vec::new());
        let _ = tokio::join!(out.read_to_end(&mut o), err.read_to_end(&mut e), write);
        (o, e)
    };
    let waited = tokio::time::timeout(timeout, async {
        let (o, e) = read.await;
        (child.wait().await, o, e)
    })
    .await;
    let (code, timed_out, o, e) = match waited {
        Ok((status, o, e)) => (status.ok().and_then(|s| s.code()), false, o, e),
        Err(_) => {
            let _ = child.kill().await;
            (None, true, Vec::new(), Vec::new())
        }
    };
    Ok(CommandOutcome {
        argv: argv.to_vec(),
        code,
        timed_out,
        timeout,
        stdout: bounded(&o),
        stderr: bounded(&e),
    })
}

fn bounded(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(OUTPUT_LIMIT)]).into_owned();
    if b.len() > OUTPUT_LIMIT {
        format!("{s}… ({} bytes more)", b.len() - OUTPUT_LIMIT)
    } else {
        s
    }
}

/// Find a program the way `execvp` would: a path with a `/` as is, else on `$PATH`.
/// Returns it only if it is an executable file.
pub fn find_program(program: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &std::path::Path| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if program.contains('/') {
        let p = std::path::PathBuf::from(program);
        return executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| executable(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn captures_exit_code_and_output() {
        let o = run(
            &argv(&["sh", "-c", "echo out; echo err >&2; exit 3"]),
            &[],
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(
            (o.code, o.timed_out, o.stdout.as_str(), o.stderr.as_str()),
            (Some(3), false, "out\n", "err\n")
        );
        assert_eq!(
            o.summary(),
            "`sh -c echo out; echo err >&2; exit 3` exited 3: err"
        );
    }

    #[tokio::test]
    async fn feeds_stdin() {
        let o = run_with_stdin(
            &argv(&["sh", "-c", "head -n 1; exit 4"]),
            &[],
            Some(b"one\ntwo\n".to_vec()),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!((o.code, o.stdout.as_str()), (Some(4), "one\n"));
    }

    #[tokio::test]
    async fn kills_at_the_deadline() {
        let start = std::time::Instant::now();
        let o = run(&argv(&["sleep", "30"]), &[], Duration::from_millis(200))
            .await
            .unwrap();
        assert!(o.timed_out);
        assert!(start.elapsed() < Duration::from_secs(5));
        assert_eq!(
            o.summary(),
            "`sleep 30` timed out after 200ms and was killed"
        );
    }

    #[tokio::test]
    async fn missing_program_is_a_spawn_error() {
        let e = run(&argv(&["/nonexistent/reload"]), &[], Duration::from_secs(1))
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot run `/nonexistent/reload`: No such file or directory (os error 2)"
        );
    }
}

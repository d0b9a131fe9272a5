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
    let input = match stdin {
        Some(bytes) => Input::Bytes(bytes),
        None => Input::Nothing,
    };
    run_inner(argv, env, input, timeout).await
}

/// [`run_with_stdin`] in two steps: `first` is written, and only when the
/// child prints the line `ready` on its standard output is `then` written
/// (and standard input closed). A child that ends, or closes its output,
/// without printing it never gets `then`; nor does one whose caller went
/// away (this future dropped, the process killed) before it was sent. A
/// remote script can so wait for a last word before it changes anything.
pub async fn run_two_step(
    argv: &[String],
    first: Vec<u8>,
    ready: &str,
    then: Vec<u8>,
    timeout: Duration,
) -> Result<CommandOutcome, SpawnError> {
    let input = Input::TwoStep {
        first,
        ready: ready.to_string(),
        then,
    };
    run_inner(argv, &[], input, timeout).await
}

enum Input {
    Nothing,
    Bytes(Vec<u8>),
    TwoStep {
        first: Vec<u8>,
        ready: String,
        then: Vec<u8>,
    },
}

async fn run_inner(
    argv: &[String],
    env: &[(String, String)],
    input: Input,
    timeout: Duration,
) -> Result<CommandOutcome, SpawnError> {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(if matches!(input, Input::Nothing) {
            Stdio::null()
        } else {
            Stdio::piped()
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
    let pipe = child.stdin.take();
    // Feeds standard input while reading standard output to its end.
    let talk = async move {
        let mut o = Vec::new();
        match (input, pipe) {
            (Input::Bytes(bytes), Some(mut pipe)) => {
                let write = async {
                    let _ = pipe.write_all(&bytes).await;
                    let _ = pipe.shutdown().await;
                };
                let _ = tokio::join!(out.read_to_end(&mut o), write);
            }
            (Input::TwoStep { first, ready, then }, Some(mut pipe)) => {
                let write = async {
                    let _ = pipe.write_all(&first).await;
                    let _ = pipe.flush().await;
                };
                let seen = async {
                    let mut buf = [0u8; 4096];
                    while !has_line(&o, &ready) {
                        match out.read(&mut buf).await {
                            Ok(0) | Err(_) => return false,
                            Ok(n) => o.extend_from_slice(&buf[..n]),
                        }
                    }
                    true
                };
                let ((), seen) = tokio::join!(write, seen);
                if seen {
                    let _ = pipe.write_all(&then).await;
                }
                let _ = pipe.shutdown().await;
                drop(pipe);
                let _ = out.read_to_end(&mut o).await;
            }
            _ => {
                let _ = out.read_to_end(&mut o).await;
            }
        }
        o
    };
    let read = async {
        let mut e = Vec::new();
        let (o, _) = tokio::join!(talk, err.read_to_end(&mut e));
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

/// Whether `text` has `line` as a whole line (ended by a newline).
fn has_line(text: &[u8], line: &str) -> bool {
    let Some(end) = text.iter().rposition(|b| *b == b'\n') else {
        return false;
    };
    text[..end]
        .split(|b| *b == b'\n')
        .any(|l| l == line.as_bytes())
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
    async fn two_steps_send_the_last_word_only_after_the_ready_line() {
        // `sh -c script`, fed "one", then "two" once it printed `ready`.
        let two_step = |script: &'static str| async move {
            run_two_step(
                &argv(&["sh", "-c", script]),
                b"one\n".to_vec(),
                "ready",
                b"two\n".to_vec(),
                Duration::from_secs(10),
            )
            .await
            .unwrap()
        };
        let o = two_step("read a; echo almost-ready; echo ready; read b; echo \"got $a $b\"").await;
        assert!(o.success(), "{o:?}");
        assert_eq!(o.stdout, "almost-ready\nready\ngot one two\n");

        // It closes its output without the line: the last word never comes.
        let o = two_step("read a; exec >&-; read b; echo \"a=$a b=$b\" >&2").await;
        assert_eq!(o.stderr, "a=one b=\n");
        assert!(has_line(b"x\nready\n", "ready"));
        assert!(!has_line(b"x\nready", "ready"), "not yet a whole line");
        assert!(!has_line(b"x\nready-not\n", "ready"));
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

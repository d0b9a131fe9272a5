//! The `certherd` command: parse the command line, set up logging, run one
//! command, map its report to the exit code. Everything else is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use certherd::acme::solver::Solvers;
use certherd::observe::{Kind, Observer};
use certherd::pipeline::{self, RenewOptions};

#[derive(Parser)]
#[command(
    name = "certherd",
    version,
    about = "Renew certificates through ACME, deploy them everywhere, prove it by handshake"
)]
struct Cli {
    /// Configuration file [default: $CERTHERD_CONFIG, else /etc/certherd/certherd.yaml]
    #[arg(short, long, global = true)]
    config: Option<PathBuf>,
    /// Log format on stderr
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// More log output (repeat for more)
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    verbose: u8,
    /// Only errors in the log
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration; print nothing but errors
    Check,
    /// One pass: renew what is due, deploy, verify
    Renew {
        /// Change nothing; rehearse the order against the dry-run directory and preflight every target
        #[arg(long)]
        dry_run: bool,
        /// Treat every selected certificate as due
        #[arg(long)]
        force: bool,
        /// Only this certificate (repeatable)
        #[arg(long = "cert", value_name = "NAME")]
        certs: Vec<String>,
        /// Print the report as one JSON document instead of text
        #[arg(long)]
        json: bool,
    },
    /// Push the current certificate to targets and verify (no ACME)
    Deploy {
        #[arg(long = "cert", value_name = "NAME")]
        certs: Vec<String>,
        #[arg(long = "target", value_name = "NAME")]
        targets: Vec<String>,
        /// Print the report as one JSON document instead of text
        #[arg(long)]
        json: bool,
    },
    /// Handshake every target, compare with the current certificate
    Verify {
        #[arg(long = "cert", value_name = "NAME")]
        certs: Vec<String>,
        /// Print the report as one JSON document instead of text
        #[arg(long)]
        json: bool,
    },
    /// Certificates, expiry, renewal time, per-target state
    Status {
        #[arg(long)]
        json: bool,
        /// No network I/O
        #[arg(long)]
        offline: bool,
    },
    /// The always-on agent (systemd service)
    Run,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    let path = cli
        .config
        .clone()
        .or_else(|| std::env::var_os("CERTHERD_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/etc/certherd/certherd.yaml"));
    let config = match certherd::config::load(&path) {
        Ok(c) => c,
        Err(errors) => {
            eprint!("{errors}");
            if !errors.to_string().ends_with('\n') {
                eprintln!();
            }
            return ExitCode::from(2);
        }
    };
    if let Command::Check = cli.command {
        return ExitCode::SUCCESS;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Command::Run = cli.command {
        // The agent handles its own signals (SIGHUP reloads, SIGTERM stops cleanly).
        return runtime.block_on(async move {
            let solvers = Solvers::new();
            ExitCode::from(certherd::daemon::run(&path, config, &solvers).await)
        });
    }
    runtime.block_on(async move {
        let solvers = Solvers::new();
        let signal = tokio::select! {
            code = run(cli.command, &config, &solvers) => return code,
            signal = shutdown_signal() => signal,
        };
        // The command's future is dropped: it stops between steps. A file write
        // in progress finishes (the runtime waits for it); whatever challenge is
        // still presented (DNS records, webroot files) is removed now.
        eprintln!("certherd: interrupted by {signal}; cleaning up");
        if tokio::time::timeout(CLEANUP_LIMIT, solvers.cleanup_all())
            .await
            .is_err()
        {
            eprintln!("certherd: cleanup did not finish within {CLEANUP_LIMIT:?}");
        }
        eprintln!("certherd: interrupted by {signal}; stopped before finishing");
        ExitCode::from(1)
    })
}

/// How long an interrupted run may spend removing its challenges.
const CLEANUP_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// SIGINT or SIGTERM, whichever comes first.
async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

async fn run(command: Command, config: &certherd::config::Config, solvers: &Solvers) -> ExitCode {
    {
        let json = matches!(
            command,
            Command::Renew { json: true, .. }
                | Command::Deploy { json: true, .. }
                | Command::Verify { json: true, .. }
        );
        let kind = match &command {
            Command::Deploy { .. } => Kind::Deploy,
            Command::Verify { .. } => Kind::Verify,
            _ => Kind::Renew,
        };
        let outcome = match command {
            Command::Check => unreachable!("handled above"),
            Command::Renew {
                dry_run,
                force,
                certs,
                ..
            } => pipeline::renew(
                config,
                &RenewOptions {
                    dry_run,
                    force,
                    certs,
                },
                solvers,
            )
            .await
            .map(Done::Report),
            Command::Deploy { certs, targets, .. } => {
                pipeline::deploy_cmd(config, &certs, &targets)
                    .await
                    .map(Done::Report)
            }
            Command::Verify { certs, .. } => {
                pipeline::verify_cmd(config, &certs).await.map(Done::Report)
            }
            Command::Status { json, offline } => pipeline::status(config, offline)
                .await
                .map(|s| Done::Status(s, json)),
            Command::Run => unreachable!("handled above"),
        };
        match outcome {
            Ok(Done::Report(report)) => {
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&report).expect("the report serializes")
                    );
                } else {
                    print!("{}", report.human());
                }
                // Metrics and notifications: logged when they fail, never the exit code.
                Observer::new().after_report(config, &report, kind).await;
                if report.ok() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }
            Ok(Done::Status(status, json)) => {
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&status).expect("status serializes")
                    );
                } else {
                    print!("{}", status.human(time::OffsetDateTime::now_utc()));
                }
                Observer::new().after_status(config, &status);
                if status.ok() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }
            Err(e) => {
                let code = if e.is_usage() { 2 } else { 1 };
                eprintln!("certherd: {}", certherd::acme::http::error_chain(&e));
                ExitCode::from(code)
            }
        }
    }
}

enum Done {
    Report(certherd::report::Report),
    Status(certherd::report::Status, bool),
}

fn init_logging(cli: &Cli) {
    use std::io::IsTerminal;
    let level = if cli.quiet {
        "error"
    } else {
        match cli.verbose {
            0 => "info",
            1 => "debug",
            _ => "trace",
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CERTHERD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("certherd={level},warn")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

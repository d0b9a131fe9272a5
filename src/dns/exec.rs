//! The `exec` backend: the operator's own programs add and remove one TXT
//! record, for any DNS provider with an API or a command-line tool.
//!
//! Each program runs without a shell (`crate::process::run`), with its
//! timeout, and gets in its environment:
//!
//! - `CERTHERD_DNS_FQDN`: the absolute name of the record, with the trailing
//!   dot: `_acme-challenge.example.com.`. When `_acme-challenge.<domain>` is
//!   a CNAME, this is the name the CNAMEs lead to.
//! - `CERTHERD_DNS_VALUE`: the TXT value (43 characters of base64url).
//! - `CERTHERD_DNS_ZONE`: the zone holding that name, absolute with the
//!   trailing dot (`example.com.`): the nearest name at or above the record
//!   that has an SOA record, as the solver's resolver answers. This is the
//!   zone whose authoritative servers are then checked for the record.
//!
//! `add` must add the value next to any other TXT values at the name (an
//! apex and its wildcard publish two values at the same name at the same
//! time), and `remove` must remove only that value. A non-zero exit or a
//! timeout is an error carrying the program's stderr.

use super::DnsError;
use crate::config::{CommandSpec, DnsExec};
use crate::process;

/// Runs the `add` program for one record.
pub async fn add(cfg: &DnsExec, zone: &str, fqdn: &str, value: &str) -> Result<(), DnsError> {
    run("add", &cfg.add, zone, fqdn, value).await
}

/// Runs the `remove` program for one record.
pub async fn remove(cfg: &DnsExec, zone: &str, fqdn: &str, value: &str) -> Result<(), DnsError> {
    run("remove", &cfg.remove, zone, fqdn, value).await
}

/// The environment a program gets for one record.
pub fn environment(zone: &str, fqdn: &str, value: &str) -> Vec<(String, String)> {
    vec![
        ("CERTHERD_DNS_FQDN".into(), fqdn.into()),
        ("CERTHERD_DNS_VALUE".into(), value.into()),
        ("CERTHERD_DNS_ZONE".into(), zone.into()),
    ]
}

async fn run(
    action: &'static str,
    spec: &CommandSpec,
    zone: &str,
    fqdn: &str,
    value: &str,
) -> Result<(), DnsError> {
    let outcome = process::run(&spec.argv, &environment(zone, fqdn, value), spec.timeout)
        .await
        .map_err(|source| DnsError::Spawn { action, source })?;
    if !outcome.success() {
        return Err(DnsError::Program { action, outcome });
    }
    tracing::debug!(fqdn, zone, program = %spec.argv[0], "{action} program succeeded");
    Ok(())
}

/// Both programs exist and are executable.
pub fn preflight(cfg: &DnsExec) -> Result<(), DnsError> {
    for (action, spec) in [("add", &cfg.add), ("remove", &cfg.remove)] {
        let program = &spec.argv[0];
        if process::find_program(program).is_none() {
            let detail = if program.contains('/') {
                "is not an executable file"
            } else {
                "is not an executable file on PATH"
            };
            return Err(DnsError::ProgramMissing {
                action,
                program: program.clone(),
                detail,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn spec(argv: &[&str]) -> CommandSpec {
        CommandSpec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            timeout: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn the_program_gets_the_record_in_its_environment() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("env");
        let script = format!(
            "printf '%s|%s|%s' \"$CERTHERD_DNS_FQDN\" \"$CERTHERD_DNS_VALUE\" \"$CERTHERD_DNS_ZONE\" > {}",
            out.display()
        );
        let cfg = DnsExec {
            add: spec(&["sh", "-c", &script]),
            remove: spec(&["true"]),
        };
        add(
            &cfg,
            "example.test.",
            "_acme-challenge.example.test.",
            "VALUE",
        )
        .await
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "_acme-challenge.example.test.|VALUE|example.test."
        );
    }

    #[tokio::test]
    async fn a_failing_program_is_an_error_with_its_stderr() {
        let cfg = DnsExec {
            add: spec(&["true"]),
            remove: spec(&["sh", "-c", "echo 'API says no' >&2; exit 4"]),
        };
        let e = remove(&cfg, "example.test.", "_acme-challenge.example.test.", "V")
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "remove program `sh -c echo 'API says no' >&2; exit 4` exited 4: API says no"
        );
    }

    #[test]
    fn preflight_names_the_missing_program() {
        let cfg = DnsExec {
            add: spec(&["true"]),
            remove: spec(&["/nonexistent/dns-remove"]),
        };
        assert_eq!(
            preflight(&cfg).unwrap_err().to_string(),
            "remove program `/nonexistent/dns-remove` is not an executable file"
        );
        let cfg = DnsExec {
            add: spec(&["certherd-no-such-program"]),
            remove: spec(&["true"]),
        };
        assert_eq!(
            preflight(&cfg).unwrap_err().to_string(),
            "add program `certherd-no-such-program` is not an executable file on PATH"
        );
        let ok = DnsExec {
            add: spec(&["true"]),
            remove: spec(&["sh"]),
        };
        preflight(&ok).unwrap();
    }
}

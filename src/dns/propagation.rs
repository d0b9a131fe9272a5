//! Waiting until every authoritative server of a zone answers the TXT
//! records dns-01 published.
//!
//! The CA asks the zone's authoritative servers (through its own
//! resolvers, with no cache of ours in between), so certherd asks each of
//! them directly: the zone's NS names come from the resolver, each name's
//! A and AAAA addresses too, and every address is asked on port 53 with
//! RD=0. A record counts as published when every address answers
//! authoritatively with every expected value at the name.
//!
//! Polling starts fast and backs off to once a second, until the
//! expectation's timeout; the timeout error names each server that lacks a
//! record and what it answered last.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::future::join_all;
use hickory_proto::rr::Name;
use tokio::time::Instant;

use super::query::{self, TxtAnswer};
use super::{DnsError, Missing, Server};

/// The first pause between two polls; it doubles up to [`MAX_POLL_DELAY`].
const FIRST_POLL_DELAY: Duration = Duration::from_millis(100);
const MAX_POLL_DELAY: Duration = Duration::from_secs(1);
/// How long one TXT query to one authoritative server may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one lookup of the NS set or of an address may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// TXT values that must be visible at a name on every authoritative server
/// of its zone.
#[derive(Debug, Clone)]
pub struct Expectation {
    pub fqdn: Name,
    pub zone: Name,
    pub values: Vec<String>,
    /// Where the zone's NS set and the servers' addresses are asked.
    pub resolver: Server,
    pub timeout: Duration,
}

/// One name on one authoritative server.
struct Check {
    server: Server,
    fqdn: Name,
    values: Vec<String>,
    deadline: Instant,
    timeout: Duration,
    done: bool,
    /// The last query failed because this host has no route to the address.
    unreachable: bool,
    waiting_logged: bool,
    last: String,
}

/// Returns when every expectation is met on every authoritative server of
/// its zone; fails at the first expectation whose timeout passes, naming
/// every server still lacking a record.
pub async fn wait(expectations: &[Expectation]) -> Result<(), DnsError> {
    let start = Instant::now();
    // One check per name and server: values at the same name are merged
    // (an apex and its wildcard).
    let mut merged: BTreeMap<(Server, Name, Name), Expectation> = BTreeMap::new();
    for e in expectations {
        let key = (
            e.resolver.clone(),
            e.zone.to_lowercase(),
            e.fqdn.to_lowercase(),
        );
        let entry = merged.entry(key).or_insert_with(|| Expectation {
            values: Vec::new(),
            ..e.clone()
        });
        entry.timeout = entry.timeout.max(e.timeout);
        for v in &e.values {
            if !entry.values.contains(v) {
                entry.values.push(v.clone());
            }
        }
    }

    let mut servers_of: BTreeMap<(Server, Name), Vec<Server>> = BTreeMap::new();
    let mut checks = Vec::new();
    for ((resolver, zone, _), e) in &merged {
        let key = (resolver.clone(), zone.clone());
        if !servers_of.contains_key(&key) {
            let servers = query::nameservers(resolver, zone, LOOKUP_TIMEOUT).await?;
            tracing::debug!(
                zone = %zone,
                servers = %servers.iter().map(Server::to_string).collect::<Vec<_>>().join(", "),
                "authoritative servers"
            );
            servers_of.insert(key.clone(), servers);
        }
        for server in &servers_of[&key] {
            checks.push(Check {
                server: server.clone(),
                fqdn: e.fqdn.clone(),
                values: e.values.clone(),
                deadline: start + e.timeout,
                timeout: e.timeout,
                done: false,
                unreachable: false,
                waiting_logged: false,
                last: "not asked yet".into(),
            });
        }
    }

    let mut delay = FIRST_POLL_DELAY;
    loop {
        let now = Instant::now();
        let polls = checks.iter().filter(|c| !c.done).map(|c| {
            let timeout = QUERY_TIMEOUT
                .min(c.deadline.saturating_duration_since(now))
                .max(FIRST_POLL_DELAY);
            query::txt_at(&c.server, &c.fqdn, timeout)
        });
        let answers = join_all(polls).await;
        let pending: Vec<usize> = (0..checks.len()).filter(|&i| !checks[i].done).collect();
        for (i, answer) in pending.into_iter().zip(answers) {
            if answer.as_ref().is_err_and(unreachable) {
                checks[i].unreachable = true;
                // An address this host cannot reach at all (an AAAA on a
                // host without IPv6) is skipped when the same server has
                // another address that it can reach.
                let other = checks.iter().any(|c| {
                    c.server.label == checks[i].server.label
                        && c.fqdn == checks[i].fqdn
                        && c.server.addr != checks[i].server.addr
                        && !c.unreachable
                });
                if other {
                    let check = &mut checks[i];
                    check.done = true;
                    tracing::warn!(
                        fqdn = %check.fqdn,
                        server = %check.server,
                        "not checked: this host has no route to that address"
                    );
                    continue;
                }
            }
            let check = &mut checks[i];
            match answer {
                Ok(TxtAnswer::Values(found)) if check.values.iter().all(|v| found.contains(v)) => {
                    check.done = true;
                    tracing::info!(
                        fqdn = %check.fqdn,
                        server = %check.server,
                        elapsed_ms = start.elapsed().as_millis() as u64,
                        "TXT records visible"
                    );
                }
                other => {
                    check.last = describe(other);
                    if !check.waiting_logged {
                        check.waiting_logged = true;
                        tracing::info!(
                            fqdn = %check.fqdn,
                            server = %check.server,
                            answer = %check.last,
                            "waiting for the TXT records to appear"
                        );
                    } else {
                        tracing::debug!(fqdn = %check.fqdn, server = %check.server, answer = %check.last, "still waiting");
                    }
                }
            }
        }
        if checks.iter().all(|c| c.done) {
            return Ok(());
        }
        let now = Instant::now();
        if let Some(expired) = checks.iter().find(|c| !c.done && c.deadline <= now) {
            let timeout = expired.timeout;
            let missing = checks
                .iter()
                .filter(|c| !c.done && c.deadline <= now)
                .flat_map(|c| {
                    c.values.iter().map(|v| Missing {
                        server: c.server.to_string(),
                        fqdn: c.fqdn.to_ascii(),
                        value: v.clone(),
                        last_answer: c.last.clone(),
                    })
                })
                .collect();
            return Err(DnsError::NotPropagated { timeout, missing });
        }
        let next_deadline = checks
            .iter()
            .filter(|c| !c.done)
            .map(|c| c.deadline)
            .min()
            .expect("a check is pending");
        tokio::time::sleep_until((now + delay).min(next_deadline)).await;
        delay = (delay * 2).min(MAX_POLL_DELAY);
    }
}

/// A query that could not leave this host: no route, no such address family.
fn unreachable(e: &DnsError) -> bool {
    match e {
        DnsError::Io { source, .. } => {
            source.kind() == std::io::ErrorKind::NetworkUnreachable
                || matches!(
                    source.raw_os_error(),
                    Some(libc::ENETUNREACH | libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL)
                )
        }
        _ => false,
    }
}

/// A server's answer in words, for the log and the timeout error.
fn describe(answer: Result<TxtAnswer, DnsError>) -> String {
    match answer {
        Ok(TxtAnswer::Values(found)) if found.is_empty() => "no TXT records".into(),
        Ok(TxtAnswer::Values(found)) => {
            let quoted: Vec<String> = found.iter().map(|v| format!("{v:?}")).collect();
            format!("only TXT {}", quoted.join(", "))
        }
        Ok(TxtAnswer::Other(what)) => what,
        Err(DnsError::Timeout { after, .. }) => format!("no answer within {after:?}"),
        Err(DnsError::Io { source, .. }) => source.to_string(),
        Err(e) => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_in_words() {
        assert_eq!(describe(Ok(TxtAnswer::Values(vec![]))), "no TXT records");
        assert_eq!(
            describe(Ok(TxtAnswer::Values(vec!["a".into(), "b".into()]))),
            "only TXT \"a\", \"b\""
        );
        assert_eq!(
            describe(Ok(TxtAnswer::Other("NXDOMAIN".into()))),
            "NXDOMAIN"
        );
        assert_eq!(
            describe(Err(DnsError::Timeout {
                request: "TXT query".into(),
                server: "x".into(),
                after: Duration::from_millis(1500)
            })),
            "no answer within 1.5s"
        );
    }
}

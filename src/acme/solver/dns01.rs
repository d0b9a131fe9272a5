//! dns-01 (RFC 8555 §8.4): a TXT record at `_acme-challenge.<domain>`.
//!
//! The solver owns the challenge; a backend (`crate::dns::rfc2136`,
//! `crate::dns::exec`) only adds and removes a TXT record. For each
//! challenge, [`Dns01Solver::present`]:
//!
//! 1. names the record: `_acme-challenge.<domain>.`, where `*.example.com`
//!    uses the name of `example.com`: an apex and its wildcard put two
//!    values side by side in one RRset, neither replaces the other;
//! 2. follows CNAMEs at that name (an acme-dns style delegation to a zone
//!    made for validation) and writes at the name they lead to;
//! 3. finds the zone of that name: rfc2136's `zone` when configured (the
//!    name must be inside it), else the nearest SOA at or above the name;
//! 4. records the record as published, then has the backend add it, so that
//!    an interrupted add is still removed by [`Dns01Solver::cleanup_all`].
//!
//! [`Dns01Solver::wait_propagated`] then waits until every authoritative
//! server of each zone answers every value (`crate::dns::propagation`),
//! within the solver's `propagation_timeout`; only then may the CA be told.
//! [`Dns01Solver::cleanup`] removes one record and never fails (a failed
//! removal is logged); [`Dns01Solver::cleanup_all`] removes whatever is
//! still published.
//!
//! Which server is asked for CNAME, SOA, NS and addresses: the solver's
//! `resolver` if set, else the rfc2136 `server`, else (exec) the first
//! `nameserver` of /etc/resolv.conf. The rfc2136 backend finds a zone that
//! is not configured by asking its own server.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use super::{ChallengeData, SolverError};
use crate::config::{Dns01, DnsBackend};
use crate::dns::propagation::{self, Expectation};
use crate::dns::rfc2136::Rfc2136;
use crate::dns::{self, exec, query, DnsError, Name, Server};

/// How long one CNAME, SOA or address lookup may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// The dns-01 solver of one run: it remembers every record it published
/// until it is removed.
#[derive(Default)]
pub struct Dns01Solver {
    published: Mutex<Vec<Published>>,
}

/// One TXT value at one name, as published.
#[derive(Debug, Clone)]
struct Published {
    cfg: Dns01,
    /// The identifier of the challenge (`*.example.com`).
    domain: String,
    value: String,
    /// Where the value is: `_acme-challenge.<domain>.` or the end of its CNAMEs.
    fqdn: Name,
    zone: Name,
    resolver: Server,
}

impl Dns01Solver {
    fn published(&self) -> MutexGuard<'_, Vec<Published>> {
        self.published.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes the challenge's TXT value. On failure nothing of it stays
    /// published (what the backend may have added is removed again).
    pub async fn present(&self, cfg: &Dns01, ch: &ChallengeData) -> Result<(), SolverError> {
        let record = locate(cfg, ch).await.map_err(SolverError::Dns01)?;
        self.published().push(record.clone());
        let added = match &cfg.backend {
            DnsBackend::Rfc2136(r) => match Rfc2136::new(r).await {
                Ok(backend) => {
                    backend
                        .add_txt(&record.zone, &record.fqdn, &record.value)
                        .await
                }
                Err(e) => Err(e),
            },
            DnsBackend::Exec(e) => {
                exec::add(
                    e,
                    &record.zone.to_ascii(),
                    &record.fqdn.to_ascii(),
                    &record.value,
                )
                .await
            }
        };
        match added {
            Ok(()) => {
                tracing::info!(
                    domain = %ch.domain,
                    fqdn = %record.fqdn,
                    zone = %record.zone,
                    "published the dns-01 TXT record"
                );
                Ok(())
            }
            Err(error) => {
                // A refused update changed nothing; a program that failed or
                // an update that got no answer may have added the record.
                let maybe_added = matches!(
                    error,
                    DnsError::Timeout { .. }
                        | DnsError::Io { .. }
                        | DnsError::BadAnswer { .. }
                        | DnsError::Unsigned { .. }
                        | DnsError::Program { .. }
                );
                self.take(&ch.domain, &ch.dns_value);
                if maybe_added {
                    remove_logged(&record).await;
                }
                Err(SolverError::Dns01(DnsError::Add {
                    fqdn: record.fqdn.to_ascii(),
                    value: record.value.clone(),
                    source: Box::new(error),
                }))
            }
        }
    }

    /// Waits until every authoritative server answers every record of
    /// `records` (all presented), each within its solver's `propagation_timeout`.
    pub async fn wait_propagated(
        &self,
        records: &[(&Dns01, &ChallengeData)],
    ) -> Result<(), SolverError> {
        let mut expectations = Vec::with_capacity(records.len());
        {
            let published = self.published();
            for (cfg, ch) in records {
                let record = published
                    .iter()
                    .find(|p| p.domain == ch.domain && p.value == ch.dns_value)
                    .ok_or_else(|| {
                        SolverError::Dns01(DnsError::NotPresented {
                            domain: ch.domain.clone(),
                        })
                    })?;
                expectations.push(Expectation {
                    fqdn: record.fqdn.clone(),
                    zone: record.zone.clone(),
                    values: vec![record.value.clone()],
                    resolver: record.resolver.clone(),
                    timeout: cfg.propagation_timeout,
                });
            }
        }
        propagation::wait(&expectations)
            .await
            .map_err(SolverError::Dns01)
    }

    /// Removes the challenge's TXT value; never fails (a failure is logged).
    pub async fn cleanup(&self, _cfg: &Dns01, ch: &ChallengeData) {
        for record in self.take(&ch.domain, &ch.dns_value) {
            remove_logged(&record).await;
        }
    }

    /// Removes every TXT value still published (an interrupted run).
    pub async fn cleanup_all(&self) {
        let all: Vec<Published> = self.published().drain(..).collect();
        for record in all {
            remove_logged(&record).await;
        }
    }

    /// Forgets (and returns) the records of one challenge.
    fn take(&self, domain: &str, value: &str) -> Vec<Published> {
        let mut published = self.published();
        let (taken, kept) = published
            .drain(..)
            .partition(|p| p.domain == domain && p.value == value);
        *published = kept;
        taken
    }
}

/// Where the challenge's record goes: its name (CNAMEs followed), its zone,
/// and the resolver that will be asked for the zone's servers.
async fn locate(cfg: &Dns01, ch: &ChallengeData) -> Result<Published, DnsError> {
    let name = dns::challenge_name(&ch.domain)?;
    let resolver = resolver_for(cfg).await?;
    let chain = query::follow_cnames(&resolver, &name, LOOKUP_TIMEOUT).await?;
    let fqdn = chain.last().expect("never empty").to_lowercase();
    let zone = match &cfg.backend {
        DnsBackend::Rfc2136(r) => match &r.zone {
            Some(zone) => {
                let zone = dns::parse_name(zone)?;
                if !dns::in_zone(&fqdn, &zone) {
                    return Err(DnsError::OutsideZone {
                        name: fqdn.to_ascii(),
                        zone: zone.to_ascii(),
                        via: (chain.len() > 1).then(|| chain[chain.len() - 2].to_ascii()),
                    });
                }
                zone.to_lowercase()
            }
            None => Rfc2136::new(r).await?.find_zone(&fqdn).await?,
        },
        DnsBackend::Exec(_) => query::find_zone(&resolver, &fqdn, LOOKUP_TIMEOUT).await?,
    };
    Ok(Published {
        cfg: cfg.clone(),
        domain: ch.domain.clone(),
        value: ch.dns_value.clone(),
        fqdn,
        zone,
        resolver,
    })
}

/// The server asked for CNAME, SOA, NS and address records.
async fn resolver_for(cfg: &Dns01) -> Result<Server, DnsError> {
    if let Some(resolver) = &cfg.resolver {
        return Server::resolve(resolver, LOOKUP_TIMEOUT).await;
    }
    match &cfg.backend {
        DnsBackend::Rfc2136(r) => Server::resolve(&r.server, LOOKUP_TIMEOUT).await,
        DnsBackend::Exec(_) => {
            let text = std::fs::read_to_string(RESOLV_CONF).map_err(|e| DnsError::NoResolver {
                detail: format!("cannot read {RESOLV_CONF}: {e}"),
            })?;
            dns::first_nameserver(&text)
                .map(Server::at)
                .ok_or_else(|| DnsError::NoResolver {
                    detail: format!("{RESOLV_CONF} names no nameserver"),
                })
        }
    }
}

async fn remove(record: &Published) -> Result<(), DnsError> {
    match &record.cfg.backend {
        DnsBackend::Rfc2136(r) => {
            Rfc2136::new(r)
                .await?
                .remove_txt(&record.zone, &record.fqdn, &record.value)
                .await
        }
        DnsBackend::Exec(e) => {
            exec::remove(
                e,
                &record.zone.to_ascii(),
                &record.fqdn.to_ascii(),
                &record.value,
            )
            .await
        }
    }
}

async fn remove_logged(record: &Published) {
    match remove(record).await {
        Ok(()) => tracing::info!(
            domain = %record.domain,
            fqdn = %record.fqdn,
            zone = %record.zone,
            "removed the dns-01 TXT record"
        ),
        Err(e) => tracing::warn!(
            domain = %record.domain,
            fqdn = %record.fqdn,
            zone = %record.zone,
            "could not remove the dns-01 TXT record: {}",
            crate::acme::http::error_chain(&e)
        ),
    }
}

/// Proves the solver could work, changing nothing: rfc2136: the server
/// accepts the TSIG key (a signed SOA query); exec: both programs are
/// executable and there is a server to ask.
pub async fn preflight(cfg: &Dns01, domain: Option<&str>) -> Result<(), SolverError> {
    let checked = async {
        match &cfg.backend {
            DnsBackend::Rfc2136(r) => {
                let backend = Rfc2136::new(r).await?;
                // The key is checked with a signed query for the zone it will
                // update: the configured one, else the one a certificate's
                // challenge name falls in.
                let zone = match (backend.zone(), domain) {
                    (Some(z), _) => Some(z.clone()),
                    (None, Some(d)) => Some(backend.find_zone(&dns::challenge_name(d)?).await?),
                    (None, None) => None,
                };
                backend.check_key(zone.as_ref()).await
            }
            DnsBackend::Exec(e) => {
                exec::preflight(e)?;
                resolver_for(cfg).await.map(drop)
            }
        }
    };
    checked.await.map_err(SolverError::Dns01)
}

//! The `rfc2136` backend: adds and removes one TXT record by DNS UPDATE
//! (RFC 2136) signed with TSIG (RFC 8945), sent to the configured primary.
//!
//! - An add appends the value to the name's TXT RRset (RFC 2136 §2.5.1):
//!   the other values at the name stay, so an apex and its wildcard can be
//!   published together. Adding a value that is there already changes
//!   nothing.
//! - A remove deletes exactly that value (RFC 2136 §2.5.4); removing a
//!   value that is not there changes nothing.
//! - Every request has a deadline; a refusal names the server, the key and
//!   the response and TSIG codes ([`DnsError::Refused`]).

use std::time::Duration;

use hickory_proto::op::{update_message, Message, ResponseCode};
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::{Name, RData, Record, RecordSet, RecordType};

use super::query::{self, TsigKey};
use super::{DnsError, Server, TXT_TTL};
use crate::config;

/// How long one DNS UPDATE or signed query may take, resends included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A primary server taking signed updates.
#[derive(Debug, Clone)]
pub struct Rfc2136 {
    server: Server,
    key: TsigKey,
    zone: Option<Name>,
}

impl Rfc2136 {
    /// From the configuration: the server's address is resolved (a host
    /// name through the system resolver), the key is prepared.
    pub async fn new(cfg: &config::Rfc2136) -> Result<Rfc2136, DnsError> {
        let server = Server::resolve(&cfg.server, REQUEST_TIMEOUT).await?;
        let key = TsigKey::new(&cfg.tsig.name, cfg.tsig.algorithm, cfg.tsig.key())?;
        let zone = cfg.zone.as_deref().map(super::parse_name).transpose()?;
        Ok(Rfc2136 { server, key, zone })
    }

    pub fn server(&self) -> &Server {
        &self.server
    }

    /// The configured zone, if any.
    pub fn zone(&self) -> Option<&Name> {
        self.zone.as_ref()
    }

    pub fn key_name(&self) -> &str {
        self.key.name()
    }

    /// Adds the TXT value `value` at `fqdn` in `zone`, next to any others.
    pub async fn add_txt(&self, zone: &Name, fqdn: &Name, value: &str) -> Result<(), DnsError> {
        let message =
            update_message::append(txt_rrset(zone, fqdn, value)?, zone.clone(), false, false);
        self.update(message).await?;
        tracing::debug!(fqdn = %fqdn, zone = %zone, server = %self.server, "added TXT record");
        Ok(())
    }

    /// Removes the TXT value `value` at `fqdn` in `zone`; the others stay.
    pub async fn remove_txt(&self, zone: &Name, fqdn: &Name, value: &str) -> Result<(), DnsError> {
        let message =
            update_message::delete_by_rdata(txt_rrset(zone, fqdn, value)?, zone.clone(), false);
        self.update(message).await?;
        tracing::debug!(fqdn = %fqdn, zone = %zone, server = %self.server, "removed TXT record");
        Ok(())
    }

    async fn update(&self, message: Message) -> Result<(), DnsError> {
        let request = "DNS UPDATE";
        let response = query::exchange(
            &self.server,
            request,
            message,
            Some(&self.key),
            REQUEST_TIMEOUT,
        )
        .await?;
        match response.response_code {
            ResponseCode::NoError => Ok(()),
            rcode => Err(DnsError::Refused {
                request: request.into(),
                server: self.server.to_string(),
                key: self.key.name().to_string(),
                rcode,
                tsig_error: None,
            }),
        }
    }

    /// Proves the server accepts the key: a signed SOA query for `zone`
    /// (the root when none is known) whose answer carries a valid signature
    /// of the key. With a zone, the server must also serve it.
    pub async fn check_key(&self, zone: Option<&Name>) -> Result<(), DnsError> {
        let name = zone.cloned().unwrap_or_else(Name::root);
        let request = format!("signed SOA query for {name}");
        let message = query::query_message(&name, RecordType::SOA, false);
        let response = query::exchange(
            &self.server,
            &request,
            message,
            Some(&self.key),
            REQUEST_TIMEOUT,
        )
        .await?;
        if response.signature().is_none() {
            // An unsigned failure: the key was not even looked at.
            return Err(DnsError::BadAnswer {
                request,
                server: self.server.to_string(),
                detail: format!(
                    "{} without a signature, so the key could not be checked{}",
                    super::rcode_name(response.response_code),
                    if zone.is_none() {
                        "; set `zone` to a zone the server serves"
                    } else {
                        ""
                    }
                ),
            });
        }
        if zone.is_some() {
            let serves = response.response_code == ResponseCode::NoError
                && response
                    .answers
                    .iter()
                    .any(|r| matches!(r.data, RData::SOA(_)) && r.name.eq_ignore_root_case(&name));
            if !serves {
                return Err(DnsError::BadAnswer {
                    request,
                    server: self.server.to_string(),
                    detail: format!(
                        "the server does not serve the zone {name} ({})",
                        super::rcode_name(response.response_code)
                    ),
                });
            }
        }
        Ok(())
    }

    /// The zone of `fqdn`, from its SOA at this server.
    pub async fn find_zone(&self, fqdn: &Name) -> Result<Name, DnsError> {
        query::find_zone(&self.server, fqdn, REQUEST_TIMEOUT).await
    }
}

/// One TXT record as an RRset, for the update messages; `fqdn` must be in `zone`.
fn txt_rrset(zone: &Name, fqdn: &Name, value: &str) -> Result<RecordSet, DnsError> {
    if !super::in_zone(fqdn, zone) {
        return Err(DnsError::OutsideZone {
            name: fqdn.to_ascii(),
            zone: zone.to_ascii(),
            via: None,
        });
    }
    let mut rrset = RecordSet::with_ttl(fqdn.clone(), RecordType::TXT, TXT_TTL);
    rrset.insert(
        Record::from_rdata(
            fqdn.clone(),
            TXT_TTL,
            RData::TXT(TXT::new(vec![value.to_string()])),
        ),
        0,
    );
    Ok(rrset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_rrset_outside_the_zone_is_refused_before_anything_is_sent() {
        let zone = super::super::parse_name("example.test").unwrap();
        let fqdn = super::super::parse_name("_acme-challenge.example.org").unwrap();
        let e = txt_rrset(&zone, &fqdn, "v").unwrap_err();
        assert_eq!(
            e.to_string(),
            "_acme-challenge.example.org. is not inside the configured zone example.test."
        );
    }

    #[test]
    fn an_update_appends_one_value_and_a_removal_deletes_only_it() {
        let zone = super::super::parse_name("example.test").unwrap();
        let fqdn = super::super::parse_name("_acme-challenge.example.test").unwrap();
        let add = update_message::append(
            txt_rrset(&zone, &fqdn, "one").unwrap(),
            zone.clone(),
            false,
            false,
        );
        assert_eq!(add.authorities.len(), 1, "{add}");
        let record = &add.authorities[0];
        assert_eq!(record.dns_class, hickory_proto::rr::DNSClass::IN);
        assert_eq!(record.ttl, TXT_TTL);
        let del =
            update_message::delete_by_rdata(txt_rrset(&zone, &fqdn, "one").unwrap(), zone, false);
        let record = &del.authorities[0];
        // Class NONE with the value: delete this RR only (RFC 2136 §2.5.4).
        assert_eq!(record.dns_class, hickory_proto::rr::DNSClass::NONE);
        assert!(
            matches!(&record.data, RData::TXT(t) if super::super::query::txt_value(t) == "one")
        );
    }
}

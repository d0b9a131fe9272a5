//! DNS for the dns-01 challenge (RFC 8555 §8.4): names, servers, errors, and
//! the pieces the solver (`crate::acme::solver::dns01`) puts together.
//!
//! - [`query`]: one request to one server (UDP, TCP when truncated, a
//!   deadline on every exchange, TSIG when a key is given), plain lookups,
//!   and the lookups the solver needs: CNAMEs at a name, the zone of a name
//!   (from its SOA), the addresses of a zone's authoritative servers.
//! - [`rfc2136`]: a backend that adds and removes one TXT record by DNS
//!   UPDATE (RFC 2136) signed with TSIG (RFC 8945).
//! - [`exec`]: a backend that runs an operator's `add` and `remove` programs.
//! - [`propagation`]: waiting until every authoritative server of a zone
//!   answers the records, asking each directly (RD=0).
//!
//! Backends know nothing of ACME: they add and remove a TXT record at a
//! name in a zone. The `_acme-challenge` naming, CNAME following and the
//! propagation wait belong to the solver.
//!
//! Messages and TSIG are hickory-proto's; nothing here builds DNS wire
//! format by hand.

pub mod exec;
pub mod propagation;
pub mod query;
pub mod rfc2136;

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

pub use hickory_proto::op::ResponseCode;
pub use hickory_proto::rr::rdata::tsig::TsigError;
pub use hickory_proto::rr::Name;

/// The label dns-01 puts in front of the identifier (RFC 8555 §8.4).
pub const CHALLENGE_LABEL: &str = "_acme-challenge";

/// The TTL of the TXT records certherd adds: short, so that a validation
/// retried after a failed one does not meet a cached stale value.
pub const TXT_TTL: u32 = 60;

/// The name that carries the TXT record for an identifier:
/// `_acme-challenge.<identifier>.`, absolute and lower-cased. A wildcard
/// identifier `*.example.com` uses the name of `example.com` (RFC 8555
/// §8.4), so an apex and its wildcard share one name and both values must be
/// published side by side.
pub fn challenge_name(identifier: &str) -> Result<Name, DnsError> {
    let bare = identifier.strip_prefix("*.").unwrap_or(identifier);
    let bare = bare.strip_suffix('.').unwrap_or(bare).to_ascii_lowercase();
    if bare.is_empty() || bare.contains('*') {
        return Err(DnsError::BadName {
            name: identifier.to_string(),
            detail: "not a DNS identifier".into(),
        });
    }
    parse_name(&format!("{CHALLENGE_LABEL}.{bare}."))
}

/// An absolute DNS name from text (a trailing dot is added when missing).
pub fn parse_name(text: &str) -> Result<Name, DnsError> {
    let absolute = if text.ends_with('.') {
        text.to_string()
    } else {
        format!("{text}.")
    };
    Name::from_ascii(&absolute).map_err(|e| DnsError::BadName {
        name: text.to_string(),
        detail: e.to_string(),
    })
}

/// Whether `name` is `zone` or below it (case-insensitive).
pub fn in_zone(name: &Name, zone: &Name) -> bool {
    zone.zone_of(name)
}

/// A DNS server to send requests to, with the name an operator knows it by.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Server {
    pub addr: SocketAddr,
    /// What the configuration or the NS record called it: `127.0.0.1:53`,
    /// `ns1.example.com.`.
    pub label: String,
}

impl Server {
    /// A server known by its address only.
    pub fn at(addr: SocketAddr) -> Server {
        Server {
            addr,
            label: addr.to_string(),
        }
    }

    /// `host:port` as the configuration has it; a host name is resolved
    /// through the system's resolver, within `timeout`.
    pub async fn resolve(host_port: &str, timeout: Duration) -> Result<Server, DnsError> {
        if let Ok(addr) = host_port.parse::<SocketAddr>() {
            return Ok(Server::at(addr));
        }
        let fail = |detail: String| DnsError::ServerAddress {
            server: host_port.to_string(),
            detail,
        };
        let found = tokio::time::timeout(timeout, tokio::net::lookup_host(host_port))
            .await
            .map_err(|_| fail(format!("no address within {timeout:?}")))?
            .map_err(|e| fail(e.to_string()))?
            .next()
            .ok_or_else(|| fail("no address".into()))?;
        Ok(Server {
            addr: found,
            label: host_port.to_string(),
        })
    }
}

impl fmt::Display for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addr = self.addr.to_string();
        if self.label == addr {
            f.write_str(&addr)
        } else {
            write!(f, "{} ({addr})", self.label)
        }
    }
}

/// The first `nameserver` of a resolv.conf text, on port 53.
pub fn first_nameserver(resolv_conf: &str) -> Option<SocketAddr> {
    resolv_conf.lines().find_map(|line| {
        let line = line.split(['#', ';']).next().unwrap_or("");
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            return None;
        }
        // An IPv6 address may carry a zone (`fe80::1%eth0`), which a
        // `SocketAddr` cannot: such an entry is skipped.
        let ip: std::net::IpAddr = words.next()?.parse().ok()?;
        Some(SocketAddr::new(ip, 53))
    })
}

/// A response code as DNS people write it: `NOERROR`, `NOTAUTH`, `REFUSED`.
pub fn rcode_name(rcode: ResponseCode) -> String {
    let name = match rcode {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::YXDomain => "YXDOMAIN",
        ResponseCode::YXRRSet => "YXRRSET",
        ResponseCode::NXRRSet => "NXRRSET",
        ResponseCode::NotAuth => "NOTAUTH",
        ResponseCode::NotZone => "NOTZONE",
        ResponseCode::BADVERS => "BADVERS",
        ResponseCode::BADSIG => "BADSIG",
        ResponseCode::BADKEY => "BADKEY",
        ResponseCode::BADTIME => "BADTIME",
        ResponseCode::BADMODE => "BADMODE",
        ResponseCode::BADNAME => "BADNAME",
        ResponseCode::BADALG => "BADALG",
        ResponseCode::BADTRUNC => "BADTRUNC",
        ResponseCode::BADCOOKIE => "BADCOOKIE",
        other => return format!("RCODE{}", u16::from(other)),
    };
    name.to_string()
}

/// A TSIG error (RFC 8945 §3) as BIND and dig print it: `BADSIG`.
pub fn tsig_error_name(error: TsigError) -> String {
    match error {
        TsigError::BadSig => "BADSIG".into(),
        TsigError::BadKey => "BADKEY".into(),
        TsigError::BadTime => "BADTIME".into(),
        TsigError::BadTrunc => "BADTRUNC".into(),
        TsigError::Unknown(code) => format!("error {code}"),
    }
}

/// What a server's refusal of a signed request means for the operator.
pub fn refusal_hint(rcode: ResponseCode, tsig_error: Option<TsigError>) -> &'static str {
    match (tsig_error, rcode) {
        (Some(TsigError::BadSig), _) => "the server does not accept this key's secret",
        (Some(TsigError::BadKey), _) => {
            "the server does not know this key (its name or algorithm differ from the server's)"
        }
        (Some(TsigError::BadTime), _) => {
            "the clocks of this machine and of the server differ by more than five minutes"
        }
        (Some(_), _) => "the server rejected the TSIG signature",
        (None, ResponseCode::Refused) => {
            "the server's update policy does not let this key change this name"
        }
        (None, ResponseCode::NotAuth) => "the server is not authoritative for the zone",
        (None, ResponseCode::NotZone) => "the name is not inside the zone",
        (None, ResponseCode::ServFail) => "the server failed to apply the change",
        (None, ResponseCode::NotImp) => "the server does not take DNS UPDATE",
        (None, _) => "the server did not apply the change",
    }
}

/// One TXT record the propagation wait did not see on one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    /// The authoritative server, e.g. `ns2.example.com. (192.0.2.2:53)`.
    pub server: String,
    pub fqdn: String,
    pub value: String,
    /// What the server answered last, e.g. `NXDOMAIN`, `no answer within 2s`.
    pub last_answer: String,
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} does not answer TXT {:?} at {} (last answer: {})",
            self.server, self.value, self.fqdn, self.last_answer
        )
    }
}

/// Everything that can go wrong in DNS for dns-01. Each error names the
/// server and the name or request involved.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("{request} to {server}: no answer within {after:?}")]
    Timeout {
        request: String,
        server: String,
        after: Duration,
    },
    #[error("{request} to {server}: {source}")]
    Io {
        request: String,
        server: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{request} to {server}: unusable answer: {detail}")]
    BadAnswer {
        request: String,
        server: String,
        detail: String,
    },
    #[error("{request} to {server}: the answer is {}", rcode_name(*.rcode))]
    Rcode {
        request: String,
        server: String,
        rcode: ResponseCode,
    },
    /// A signed request was refused: the TSIG key, its secret, the clock or
    /// the server's policy.
    #[error(
        "{request} to {server} with TSIG key {key} was refused: {}{}: {}",
        rcode_name(*.rcode),
        .tsig_error.map(|t| format!(" (TSIG error {})", tsig_error_name(t))).unwrap_or_default(),
        refusal_hint(*.rcode, *.tsig_error)
    )]
    Refused {
        request: String,
        server: String,
        key: String,
        rcode: ResponseCode,
        tsig_error: Option<TsigError>,
    },
    #[error("{request} to {server}: the answer is not signed with TSIG key {key}: {detail}")]
    Unsigned {
        request: String,
        server: String,
        key: String,
        detail: String,
    },
    #[error("cannot use DNS server {server}: {detail}")]
    ServerAddress { server: String, detail: String },
    #[error(
        "no DNS server to ask for NS, SOA and CNAME records: set the solver's `resolver` \
         ({detail})"
    )]
    NoResolver { detail: String },
    #[error("invalid DNS name {name:?}: {detail}")]
    BadName { name: String, detail: String },
    #[error("no zone found for {name}: {server} has no SOA record at it or at any parent name (last answer: {last})")]
    NoZone {
        name: String,
        server: String,
        last: String,
    },
    #[error(
        "{name} is not inside the configured zone {zone}{}",
        .via.as_ref().map(|v| format!(" (it is the target of the CNAME at {v})")).unwrap_or_default()
    )]
    OutsideZone {
        name: String,
        zone: String,
        via: Option<String>,
    },
    #[error("the CNAMEs from {name} do not end within {max} steps: {chain}")]
    CnameLoop {
        name: String,
        max: usize,
        chain: String,
    },
    #[error("{server} answers no NS records for the zone {zone}")]
    NoNameservers { zone: String, server: String },
    #[error("{server} answers no address (A or AAAA) for {nameserver}, a nameserver of {zone}")]
    NoAddress {
        nameserver: String,
        zone: String,
        server: String,
    },
    /// The `add` or `remove` program of an `exec` backend failed.
    #[error("{action} program {}", .outcome.summary())]
    Program {
        action: &'static str,
        outcome: crate::process::CommandOutcome,
    },
    #[error("{action} program: {source}")]
    Spawn {
        action: &'static str,
        #[source]
        source: crate::process::SpawnError,
    },
    #[error("{action} program `{program}` {detail}")]
    ProgramMissing {
        action: &'static str,
        program: String,
        detail: &'static str,
    },
    #[error(
        "not answered by every authoritative server within {timeout:?}: {}",
        .missing.iter().map(|m| m.to_string()).collect::<Vec<_>>().join("; ")
    )]
    NotPropagated {
        timeout: Duration,
        missing: Vec<Missing>,
    },
    #[error("no TXT record was presented for {domain} with this value")]
    NotPresented { domain: String },
    #[error("adding TXT {value:?} at {fqdn}: {source}")]
    Add {
        fqdn: String,
        value: String,
        #[source]
        source: Box<DnsError>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_names_for_apex_wildcard_and_subdomain() {
        let name = |d: &str| challenge_name(d).unwrap().to_ascii();
        assert_eq!(name("example.com"), "_acme-challenge.example.com.");
        assert_eq!(name("*.example.com"), "_acme-challenge.example.com.");
        assert_eq!(name("www.Example.COM"), "_acme-challenge.www.example.com.");
        assert_eq!(name("a.b.example.com."), "_acme-challenge.a.b.example.com.");
        assert_eq!(name("*.a.example.com"), "_acme-challenge.a.example.com.");
        assert_eq!(
            challenge_name("*.example.com").unwrap(),
            challenge_name("example.com").unwrap()
        );
    }

    #[test]
    fn challenge_name_rejects_what_is_not_an_identifier() {
        for bad in ["", "*.", "a.*.example.com", "*.*.example.com"] {
            assert!(
                matches!(challenge_name(bad), Err(DnsError::BadName { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn zone_membership_ignores_case() {
        let zone = parse_name("Example.test").unwrap();
        assert!(in_zone(
            &parse_name("_acme-challenge.a.example.TEST.").unwrap(),
            &zone
        ));
        assert!(in_zone(&parse_name("example.test.").unwrap(), &zone));
        assert!(!in_zone(&parse_name("example.testing.").unwrap(), &zone));
        assert!(!in_zone(&parse_name("test.").unwrap(), &zone));
    }

    #[test]
    fn first_nameserver_of_resolv_conf() {
        let conf = "# generated\nsearch example.com\n; nameserver 192.0.2.9\n\
                    nameserver fe80::1%eth0\nnameserver 192.0.2.53 # main\nnameserver 192.0.2.54\n";
        assert_eq!(
            first_nameserver(conf),
            Some("192.0.2.53:53".parse().unwrap())
        );
        assert_eq!(
            first_nameserver("nameserver ::1\n"),
            Some("[::1]:53".parse().unwrap())
        );
        assert_eq!(first_nameserver("search example.com\n"), None);
    }

    #[test]
    fn server_display_shows_the_address_once() {
        let addr: SocketAddr = "127.31.0.1:53".parse().unwrap();
        assert_eq!(Server::at(addr).to_string(), "127.31.0.1:53");
        let ns = Server {
            addr,
            label: "ns1.example.test.".into(),
        };
        assert_eq!(ns.to_string(), "ns1.example.test. (127.31.0.1:53)");
    }

    #[test]
    fn refusal_messages_name_server_key_and_codes() {
        let e = DnsError::Refused {
            request: "DNS UPDATE".into(),
            server: "127.31.0.1:53".into(),
            key: "certherd.".into(),
            rcode: ResponseCode::NotAuth,
            tsig_error: Some(TsigError::BadSig),
        };
        assert_eq!(
            e.to_string(),
            "DNS UPDATE to 127.31.0.1:53 with TSIG key certherd. was refused: NOTAUTH \
             (TSIG error BADSIG): the server does not accept this key's secret"
        );
        let e = DnsError::Refused {
            request: "DNS UPDATE".into(),
            server: "127.31.0.1:53".into(),
            key: "certherd.".into(),
            rcode: ResponseCode::Refused,
            tsig_error: None,
        };
        assert_eq!(
            e.to_string(),
            "DNS UPDATE to 127.31.0.1:53 with TSIG key certherd. was refused: REFUSED: \
             the server's update policy does not let this key change this name"
        );
    }

    #[test]
    fn a_cname_leading_out_of_the_configured_zone_is_named() {
        let e = DnsError::OutsideZone {
            name: "_acme-challenge.app.acme.example.net.".into(),
            zone: "example.com.".into(),
            via: Some("_acme-challenge.app.example.com.".into()),
        };
        assert_eq!(
            e.to_string(),
            "_acme-challenge.app.acme.example.net. is not inside the configured zone example.com. \
             (it is the target of the CNAME at _acme-challenge.app.example.com.)"
        );
    }

    #[test]
    fn rcode_and_tsig_error_names() {
        assert_eq!(rcode_name(ResponseCode::NXDomain), "NXDOMAIN");
        assert_eq!(rcode_name(ResponseCode::NotAuth), "NOTAUTH");
        assert_eq!(rcode_name(ResponseCode::Unknown(3841)), "RCODE3841");
        assert_eq!(tsig_error_name(TsigError::BadKey), "BADKEY");
        assert_eq!(tsig_error_name(TsigError::Unknown(99)), "error 99");
    }

    #[test]
    fn propagation_timeout_lists_each_missing_record() {
        let e = DnsError::NotPropagated {
            timeout: Duration::from_secs(2),
            missing: vec![Missing {
                server: "ns2.example.test. (127.31.0.2:53)".into(),
                fqdn: "_acme-challenge.example.test.".into(),
                value: "abc".into(),
                last_answer: "NXDOMAIN".into(),
            }],
        };
        assert_eq!(
            e.to_string(),
            "not answered by every authoritative server within 2s: ns2.example.test. \
             (127.31.0.2:53) does not answer TXT \"abc\" at _acme-challenge.example.test. \
             (last answer: NXDOMAIN)"
        );
    }
}

//! One DNS request to one server, and the lookups dns-01 builds on it.
//!
//! [`exchange`] sends a hickory-proto [`Message`] over UDP, resends it
//! (from 1 s, doubling) until an answer or the deadline, and repeats it over
//! TCP when the answer is truncated (RFC 1035 §4.2, RFC 7766). With a
//! [`TsigKey`] the request is signed (RFC 8945) and the answer's signature
//! is checked; a refusal of the key comes back as [`DnsError::Refused`],
//! naming the server, the key and the codes.
//!
//! The lookups ask one server and never follow referrals: the resolver
//! (`Dns01.resolver`, the rfc2136 server, or resolv.conf's first
//! nameserver) for CNAMEs, SOA, NS and addresses; each authoritative server
//! directly, with RD=0, for the TXT records (see `propagation`).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::tsig::TsigAlgorithm as HickoryAlgorithm;
use hickory_proto::rr::{Name, RData, RecordType, TSigner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::Instant;

use super::{DnsError, Server};
use crate::config::TsigAlgorithm;

/// The UDP payload size offered through EDNS (RFC 6891): the size the DNS
/// flag day 2020 recommends, safe from fragmentation.
const EDNS_PAYLOAD: u16 = 1232;
/// The first UDP resend; each next one waits twice as long.
const FIRST_RESEND: Duration = Duration::from_secs(1);
/// How far the clocks of client and server may differ for TSIG (RFC 8945 §10).
const TSIG_FUDGE: u16 = 300;
/// How many CNAMEs are followed from one name before giving up.
pub const MAX_CNAMES: usize = 8;

/// A TSIG key to sign requests with. Its `Debug` prints the name only.
#[derive(Clone)]
pub struct TsigKey {
    signer: TSigner,
    name: String,
}

impl std::fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TsigKey")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TsigKey {
    /// A key from the configuration: its absolute name, algorithm and secret bytes.
    pub fn new(name: &str, algorithm: TsigAlgorithm, secret: Vec<u8>) -> Result<TsigKey, DnsError> {
        let key_name = super::parse_name(name)?;
        let algorithm = match algorithm {
            TsigAlgorithm::HmacSha256 => HickoryAlgorithm::HmacSha256,
            TsigAlgorithm::HmacSha384 => HickoryAlgorithm::HmacSha384,
            TsigAlgorithm::HmacSha512 => HickoryAlgorithm::HmacSha512,
        };
        let signer =
            TSigner::new(secret, algorithm, key_name.clone(), TSIG_FUDGE).map_err(|e| {
                DnsError::BadName {
                    name: name.to_string(),
                    detail: format!("unusable TSIG key: {e}"),
                }
            })?;
        Ok(TsigKey {
            signer,
            name: key_name.to_ascii(),
        })
    }

    /// The key's absolute name, as the server knows it (`certherd.`).
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Sends `message` to `server` and returns the answer, within `timeout`.
///
/// `request` names the request in errors (`DNS UPDATE`, `TXT query for
/// x.example.com.`). When `key` is given the request is signed, and the
/// answer must be signed by the same key: a TSIG error in the answer (or
/// NOTAUTH) is [`DnsError::Refused`]; another unsuccessful answer without a
/// signature is returned as is, for the caller to judge its response code.
pub async fn exchange(
    server: &Server,
    request: &str,
    mut message: Message,
    key: Option<&TsigKey>,
    timeout: Duration,
) -> Result<Message, DnsError> {
    let deadline = Instant::now() + timeout;
    let bad = |detail: String| DnsError::BadAnswer {
        request: request.to_string(),
        server: server.to_string(),
        detail,
    };
    let mut verifier = None;
    if let Some(key) = key {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        verifier = message
            .finalize(&key.signer, now)
            .map_err(|e| bad(format!("cannot sign the request: {e}")))?;
    }
    let bytes = message
        .to_vec()
        .map_err(|e| bad(format!("cannot encode the request: {e}")))?;
    let io = |source: std::io::Error| DnsError::Io {
        request: request.to_string(),
        server: server.to_string(),
        source,
    };
    let timed_out = || DnsError::Timeout {
        request: request.to_string(),
        server: server.to_string(),
        after: timeout,
    };

    let mut answer = udp(server.addr, &bytes, message.id, deadline)
        .await
        .map_err(|e| match e {
            Transport::Timeout => timed_out(),
            Transport::Io(e) => io(e),
        })?;
    let mut response = Message::from_vec(&answer).map_err(|e| bad(e.to_string()))?;
    if response.truncation {
        tracing::debug!(server = %server, request, "answer truncated; asking again over TCP");
        answer = tcp(server.addr, &bytes, deadline)
            .await
            .map_err(|e| match e {
                Transport::Timeout => timed_out(),
                Transport::Io(e) => io(e),
            })?;
        response = Message::from_vec(&answer).map_err(|e| bad(e.to_string()))?;
    }
    if response.id != message.id || response.message_type != MessageType::Response {
        return Err(bad(format!(
            "the answer (id {}) does not belong to the request (id {})",
            response.id, message.id
        )));
    }
    if let (Some(asked), Some(answered)) = (message.queries.first(), response.queries.first()) {
        if asked.query_type() != answered.query_type()
            || !asked.name().eq_ignore_root_case(answered.name())
        {
            return Err(bad(format!(
                "the answer is for {} {}, not for {} {}",
                answered.query_type(),
                answered.name(),
                asked.query_type(),
                asked.name()
            )));
        }
    }

    if let (Some(key), Some(mut verifier)) = (key, verifier) {
        let tsig_error = response.signature().and_then(|s| s.data.error);
        let refused = |rcode| DnsError::Refused {
            request: request.to_string(),
            server: server.to_string(),
            key: key.name.clone(),
            rcode,
            tsig_error,
        };
        if tsig_error.is_some() {
            return Err(refused(response.response_code));
        }
        if response.signature().is_none() {
            if response.response_code == ResponseCode::NotAuth {
                return Err(refused(ResponseCode::NotAuth));
            }
            if response.response_code != ResponseCode::NoError {
                return Ok(response);
            }
            return Err(DnsError::Unsigned {
                request: request.to_string(),
                server: server.to_string(),
                key: key.name.clone(),
                detail: "it carries no TSIG record".into(),
            });
        }
        verifier.verify(&answer).map_err(|e| DnsError::Unsigned {
            request: request.to_string(),
            server: server.to_string(),
            key: key.name.clone(),
            detail: e.to_string(),
        })?;
    }
    Ok(response)
}

enum Transport {
    Timeout,
    Io(std::io::Error),
}

impl From<std::io::Error> for Transport {
    fn from(e: std::io::Error) -> Self {
        Transport::Io(e)
    }
}

/// The first datagram from `server` that parses as the answer to `id`.
async fn udp(
    server: SocketAddr,
    request: &[u8],
    id: u16,
    deadline: Instant,
) -> Result<Vec<u8>, Transport> {
    let local: SocketAddr = match server.ip() {
        IpAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(server).await?;
    let mut buf = vec![0u8; 65535];
    let mut resend = FIRST_RESEND;
    loop {
        socket.send(request).await?;
        let wait_until = (Instant::now() + resend).min(deadline);
        loop {
            match tokio::time::timeout_at(wait_until, socket.recv(&mut buf)).await {
                Err(_) => break,
                Ok(Err(e)) => return Err(Transport::Io(e)),
                // A stray or late datagram (an answer to an earlier resend
                // has the same id and is as good) is skipped.
                Ok(Ok(n)) => {
                    if Message::from_vec(&buf[..n]).is_ok_and(|m| m.id == id) {
                        return Ok(buf[..n].to_vec());
                    }
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(Transport::Timeout);
        }
        resend *= 2;
    }
}

/// One request over TCP, with the two-byte length prefix of RFC 1035 §4.2.2.
async fn tcp(server: SocketAddr, request: &[u8], deadline: Instant) -> Result<Vec<u8>, Transport> {
    let work = async {
        let mut stream = TcpStream::connect(server).await?;
        stream.set_nodelay(true)?;
        let len = u16::try_from(request.len()).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "request too long")
        })?;
        let mut framed = Vec::with_capacity(request.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(request);
        stream.write_all(&framed).await?;
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await?;
        let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    match tokio::time::timeout_at(deadline, work).await {
        Err(_) => Err(Transport::Timeout),
        Ok(r) => r.map_err(Transport::Io),
    }
}

/// A query for `name`/`rtype`, with EDNS, RD as given.
pub fn query_message(name: &Name, rtype: RecordType, recursion_desired: bool) -> Message {
    let mut message = Message::query();
    message.metadata.op_code = OpCode::Query;
    message.metadata.recursion_desired = recursion_desired;
    message.add_query(Query::query(name.clone(), rtype));
    let mut edns = Edns::new();
    edns.set_max_payload(EDNS_PAYLOAD).set_version(0);
    message.set_edns(edns);
    message
}

/// Asks `server` for `name`/`rtype`; any response code is returned.
pub async fn lookup(
    server: &Server,
    name: &Name,
    rtype: RecordType,
    recursion_desired: bool,
    timeout: Duration,
) -> Result<Message, DnsError> {
    let request = format!("{rtype} query for {name}");
    exchange(
        server,
        &request,
        query_message(name, rtype, recursion_desired),
        None,
        timeout,
    )
    .await
}

/// Like [`lookup`], but only NOERROR and NXDOMAIN are answers.
async fn lookup_answer(
    server: &Server,
    name: &Name,
    rtype: RecordType,
    timeout: Duration,
) -> Result<Message, DnsError> {
    let response = lookup(server, name, rtype, true, timeout).await?;
    match response.response_code {
        ResponseCode::NoError | ResponseCode::NXDomain => Ok(response),
        rcode => Err(DnsError::Rcode {
            request: format!("{rtype} query for {name}"),
            server: server.to_string(),
            rcode,
        }),
    }
}

/// The target of a CNAME at `name`, if there is one.
pub async fn cname_at(
    resolver: &Server,
    name: &Name,
    timeout: Duration,
) -> Result<Option<Name>, DnsError> {
    let response = lookup_answer(resolver, name, RecordType::CNAME, timeout).await?;
    Ok(response.answers.iter().find_map(|r| match &r.data {
        RData::CNAME(target) if r.name.eq_ignore_root_case(name) => Some(target.0.clone()),
        _ => None,
    }))
}

/// `name` and the names its CNAMEs lead to, in order; the last one holds
/// the records (an acme-dns style delegation points `_acme-challenge.x`
/// into a zone made for validation).
pub async fn follow_cnames(
    resolver: &Server,
    name: &Name,
    timeout: Duration,
) -> Result<Vec<Name>, DnsError> {
    let mut chain = vec![name.clone()];
    loop {
        let last = chain.last().expect("never empty");
        let Some(target) = cname_at(resolver, last, timeout).await? else {
            return Ok(chain);
        };
        if chain.len() > MAX_CNAMES || chain.iter().any(|n| n.eq_ignore_root_case(&target)) {
            chain.push(target);
            return Err(DnsError::CnameLoop {
                name: name.to_ascii(),
                max: MAX_CNAMES,
                chain: chain
                    .iter()
                    .map(Name::to_ascii)
                    .collect::<Vec<_>>()
                    .join(" -> "),
            });
        }
        tracing::debug!(from = %last, to = %target, "following CNAME");
        chain.push(target);
    }
}

/// The zone `name` belongs to: the nearest of `name` and its parents that
/// has an SOA record, asking `resolver` name by name, upwards.
pub async fn find_zone(
    resolver: &Server,
    name: &Name,
    timeout: Duration,
) -> Result<Name, DnsError> {
    let mut candidate = name.clone();
    loop {
        let response = lookup(resolver, &candidate, RecordType::SOA, true, timeout).await?;
        let has_soa = response.response_code == ResponseCode::NoError
            && response
                .answers
                .iter()
                .any(|r| matches!(r.data, RData::SOA(_)) && r.name.eq_ignore_root_case(&candidate));
        if has_soa {
            tracing::debug!(name = %name, zone = %candidate, server = %resolver, "found zone");
            return Ok(candidate.to_lowercase());
        }
        let last = format!(
            "{} for {candidate}",
            super::rcode_name(response.response_code)
        );
        if candidate.is_root() {
            return Err(DnsError::NoZone {
                name: name.to_ascii(),
                server: resolver.to_string(),
                last,
            });
        }
        candidate = candidate.base_name();
    }
}

/// The authoritative servers of `zone`: its NS names from `resolver`, each
/// with every A and AAAA address `resolver` gives, on port 53.
pub async fn nameservers(
    resolver: &Server,
    zone: &Name,
    timeout: Duration,
) -> Result<Vec<Server>, DnsError> {
    let response = lookup_answer(resolver, zone, RecordType::NS, timeout).await?;
    let mut names: Vec<Name> = response
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::NS(ns) if r.name.eq_ignore_root_case(zone) => Some(ns.0.to_lowercase()),
            _ => None,
        })
        .collect();
    names.sort();
    names.dedup();
    if names.is_empty() {
        return Err(DnsError::NoNameservers {
            zone: zone.to_ascii(),
            server: resolver.to_string(),
        });
    }
    let mut servers = Vec::new();
    for ns in names {
        let mut addresses = Vec::new();
        for rtype in [RecordType::A, RecordType::AAAA] {
            let response = lookup_answer(resolver, &ns, rtype, timeout).await?;
            for record in &response.answers {
                match &record.data {
                    RData::A(a) => addresses.push(IpAddr::V4(a.0)),
                    RData::AAAA(a) => addresses.push(IpAddr::V6(a.0)),
                    _ => {}
                }
            }
        }
        if addresses.is_empty() {
            return Err(DnsError::NoAddress {
                nameserver: ns.to_ascii(),
                zone: zone.to_ascii(),
                server: resolver.to_string(),
            });
        }
        addresses.sort();
        addresses.dedup();
        for ip in addresses {
            servers.push(Server {
                addr: SocketAddr::new(ip, 53),
                label: ns.to_ascii(),
            });
        }
    }
    Ok(servers)
}

/// What an authoritative server answers for TXT at a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxtAnswer {
    /// An authoritative answer: the TXT values at the name (each value's
    /// character-strings joined), possibly none.
    Values(Vec<String>),
    /// Anything else, in words (`NXDOMAIN`, `REFUSED`, `not authoritative`).
    Other(String),
}

/// Asks `server` itself (RD=0) for the TXT records at `name`.
pub async fn txt_at(
    server: &Server,
    name: &Name,
    timeout: Duration,
) -> Result<TxtAnswer, DnsError> {
    let response = lookup(server, name, RecordType::TXT, false, timeout).await?;
    if response.response_code != ResponseCode::NoError {
        return Ok(TxtAnswer::Other(super::rcode_name(response.response_code)));
    }
    if !response.authoritative {
        return Ok(TxtAnswer::Other(
            "an answer that is not authoritative".into(),
        ));
    }
    Ok(TxtAnswer::Values(
        response
            .answers
            .iter()
            .filter(|r| r.name.eq_ignore_root_case(name))
            .filter_map(|r| match &r.data {
                RData::TXT(txt) => Some(txt_value(txt)),
                _ => None,
            })
            .collect(),
    ))
}

/// A TXT record's character-strings, joined.
pub fn txt_value(txt: &hickory_proto::rr::rdata::TXT) -> String {
    let bytes: Vec<u8> = txt
        .txt_data
        .iter()
        .flat_map(|s| s.iter().copied())
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_silent_server_times_out_at_the_deadline() {
        // Bound, so nothing answers and no ICMP error comes back.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let server = Server::at(silent.local_addr().unwrap());
        let start = std::time::Instant::now();
        let e = lookup(
            &server,
            &super::super::parse_name("example.test").unwrap(),
            RecordType::SOA,
            false,
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("SOA query for example.test. to {server}: no answer within 300ms")
        );
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(2),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn a_closed_port_is_an_io_error() {
        let port = {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap().port()
        };
        let server = Server::at(SocketAddr::from(([127, 0, 0, 1], port)));
        let e = lookup(
            &server,
            &super::super::parse_name("example.test").unwrap(),
            RecordType::TXT,
            false,
            Duration::from_secs(2),
        )
        .await
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("TXT query for example.test. to {server}: Connection refused (os error 111)")
        );
    }

    #[test]
    fn txt_strings_are_joined() {
        let txt = hickory_proto::rr::rdata::TXT::new(vec!["abc".into(), "def".into()]);
        assert_eq!(txt_value(&txt), "abcdef");
    }
}

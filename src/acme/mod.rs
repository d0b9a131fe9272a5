//! ACME (RFC 8555) through instant-acme: the account, and one order from
//! creation to the downloaded chain.
//!
//! An order runs in two steps so that a run with many certificates creates
//! every order before working any of them ([`new_order`], then
//! [`complete_order`]); both are bounded in time. Errors are typed:
//! [`IssueError`] says which step failed and carries the CA's problem
//! document (RFC 8555 §6.7) when there is one.

pub mod ari;
pub mod http;
pub mod keys;
pub mod solver;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use instant_acme::{
    Account, AuthorizationStatus, ChallengeStatus, ChallengeType, ExternalAccountKey, Identifier,
    NewAccount, NewOrder, Order, OrderStatus, Problem,
};

use crate::cert::{Bundle, KeyPem};
use crate::config::{AcmeConfig, CertificateConfig, Solver};
use solver::{ChallengeData, SolverError, Solvers};

const BAD_NONCE: &str = "urn:ietf:params:acme:error:badNonce";
/// A request rejected for its nonce never reached the CA's logic: retry it
/// (instant-acme already retries a few times; a CA that rejects many nonces
/// needs more).
const NONCE_RETRIES: u32 = 10;
const ORDER_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("ACME account at {directory}: {cause}")]
    Account { directory: String, cause: String },
    #[error("creating the order failed: {0}")]
    NewOrder(String),
    #[error(
        "the CA does not offer the profile {profile:?} set in acme.profile (it offers: {})",
        if offered.is_empty() { "none".to_string() } else { offered.join(", ") }
    )]
    Profile {
        profile: String,
        offered: Vec<String>,
    },
    #[error("fetching authorizations failed: {0}")]
    Authorization(String),
    #[error("the CA offers no {kind} challenge for {domain}")]
    NoChallenge { kind: &'static str, domain: String },
    #[error("no solver is configured for {domain}")]
    NoSolver { domain: String },
    #[error(transparent)]
    Solver(#[from] SolverError),
    #[error("{kind} challenge for {domain} failed: {detail}")]
    Challenge {
        kind: &'static str,
        domain: String,
        detail: String,
    },
    #[error("the order became invalid: {0}")]
    Invalid(String),
    #[error("finalizing the order failed: {0}")]
    Finalize(String),
    #[error("downloading the certificate failed: {0}")]
    Download(String),
    #[error("the order did not complete within {0:?}")]
    Timeout(Duration),
    #[error("key or CSR generation failed: {0}")]
    Key(String),
    #[error("the CA returned an unusable certificate: {0}")]
    BadCertificate(String),
}

/// An ACME error in words: the problem document's detail and type, or the
/// transport error with its causes.
pub fn describe(e: &instant_acme::Error) -> String {
    match e {
        instant_acme::Error::Api(p) => describe_problem(p),
        instant_acme::Error::Other(inner) => http::error_chain(inner.as_ref()),
        other => http::error_chain(other),
    }
}

fn describe_problem(p: &Problem) -> String {
    let mut s = p.detail.clone().unwrap_or_else(|| "no detail".into());
    if let Some(t) = &p.r#type {
        s.push_str(&format!(" ({t})"));
    }
    for sub in &p.subproblems {
        s.push_str(&format!("; {sub}"));
    }
    s
}

fn is_bad_nonce(e: &instant_acme::Error) -> bool {
    matches!(e, instant_acme::Error::Api(p) if p.r#type.as_deref() == Some(BAD_NONCE))
}

/// Run an ACME call again while the CA rejects its nonce. A macro rather
/// than a function: the calls borrow the order mutably.
macro_rules! nonce_retry {
    ($call:expr) => {{
        let mut tries = 0;
        loop {
            match $call.await {
                Err(e) if is_bad_nonce(&e) && tries < NONCE_RETRIES => tries += 1,
                other => break other,
            }
        }
    }};
}

/// `mailto:` added to bare addresses.
fn contact_uris(contact: &[String]) -> Vec<String> {
    contact
        .iter()
        .map(|c| {
            if c.contains(':') {
                c.clone()
            } else {
                format!("mailto:{c}")
            }
        })
        .collect()
}

/// The account to use with `directory`: restored from `stored` credentials
/// (JSON) when given, otherwise created. Returns the credentials to save
/// when a new account was created.
pub async fn account(
    cfg: &AcmeConfig,
    directory: &str,
    stored: Option<&[u8]>,
    client: &http::AcmeHttp,
) -> Result<(Account, Option<Vec<u8>>), IssueError> {
    let fail = |cause: String| IssueError::Account {
        directory: directory.to_string(),
        cause,
    };
    let builder = Account::builder_with_http(Box::new(client.clone()));
    if let Some(json) = stored {
        let creds = serde_json::from_slice(json)
            .map_err(|e| fail(format!("stored credentials unreadable: {e}")))?;
        let account = builder
            .from_credentials(creds)
            .await
            .map_err(|e| fail(describe(&e)))?;
        return Ok((account, None));
    }
    let contact = contact_uris(&cfg.contact);
    let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
    let eab = match &cfg.eab {
        Some(eab) => {
            use base64::Engine;
            let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(eab.hmac_key.expose().trim_end_matches('='))
                .map_err(|_| {
                    fail(format!(
                        "EAB hmac_key from {} is not base64url",
                        eab.hmac_key.origin()
                    ))
                })?;
            Some(ExternalAccountKey::new(eab.key_id.clone(), &key))
        }
        None => None,
    };
    let new = NewAccount {
        contact: &contact,
        terms_of_service_agreed: true,
        only_return_existing: false,
    };
    let mut attempt = 0;
    let (account, creds) = loop {
        let builder = Account::builder_with_http(Box::new(client.clone()));
        match builder
            .create(&new, directory.to_string(), eab.as_ref())
            .await
        {
            Err(e) if is_bad_nonce(&e) && attempt < NONCE_RETRIES => attempt += 1,
            other => break other.map_err(|e| fail(describe(&e)))?,
        }
    };
    drop(builder);
    let json = serde_json::to_vec(&creds).map_err(|e| fail(e.to_string()))?;
    Ok((account, Some(json)))
}

/// What one order needs.
pub struct OrderRequest<'a> {
    pub cert: &'a CertificateConfig,
    pub solvers: &'a BTreeMap<String, Solver>,
    pub profile: Option<&'a str>,
    /// Reuse this key (when `reuse_key` is set and the key type is unchanged).
    pub reuse_key: Option<KeyPem>,
    /// The ARI identifier of the certificate this order replaces (RFC 9773
    /// §5), sent as `replaces` when the CA offers ARI.
    pub replaces: Option<String>,
}

pub async fn new_order(account: &Account, req: &OrderRequest<'_>) -> Result<Order, IssueError> {
    let identifiers: Vec<Identifier> = req
        .cert
        .domains
        .iter()
        .map(|d| Identifier::Dns(d.clone()))
        .collect();
    let mut new = NewOrder::new(&identifiers);
    if let Some(p) = req.profile {
        // A CA that does not know the profile may ignore it silently: check first.
        let offered: Vec<&str> = account.profiles().map(|m| m.name).collect();
        if !offered.contains(&p) {
            return Err(IssueError::Profile {
                profile: p.to_string(),
                offered: offered.iter().map(|s| s.to_string()).collect(),
            });
        }
        new = new.profile(p);
    }
    if let Some(replaces) = req.replaces.as_deref() {
        if let Some(id) = ari::identifier(replaces) {
            let mut with = NewOrder::new(&identifiers).replaces(id);
            if let Some(p) = req.profile {
                with = with.profile(p);
            }
            match nonce_retry!(account.new_order(&with)) {
                Ok(order) => return Ok(order),
                // The CA offers no ARI: `replaces` means nothing to it.
                Err(instant_acme::Error::Unsupported(_)) => {}
                // Not even an answer: ordering again would fail the same way.
                Err(instant_acme::Error::Other(e)) if e.is::<http::RequestFailed>() => {
                    return Err(IssueError::NewOrder(http::error_chain(e.as_ref())))
                }
                // Refused (already replaced, unknown certificate, ...): an
                // order without `replaces` is still a good order.
                Err(e) => tracing::warn!(
                    certificate = %req.cert.name,
                    replaces,
                    error = %describe(&e),
                    "the CA did not accept `replaces`; ordering again without it"
                ),
            }
        }
    }
    nonce_retry!(account.new_order(&new)).map_err(|e| IssueError::NewOrder(describe(&e)))
}

/// Poll delays: start fast (a CA on loopback answers in milliseconds), back
/// off by half each time, never slower than once a second.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Backoff(Duration::from_millis(10))
    }
    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0.mul_f32(1.5)).min(Duration::from_secs(1));
    }
}

/// Solve every pending authorization, finalize with our own CSR, download
/// the chain. Every challenge presented is cleaned up, on every path.
pub async fn complete_order(
    account: &Account,
    order: &mut Order,
    req: &OrderRequest<'_>,
    solvers: &Solvers,
) -> Result<Bundle, IssueError> {
    let deadline = Instant::now() + ORDER_TIMEOUT;
    // Fetch every authorization (cached by instant-acme once fetched).
    let mut tries = 0;
    loop {
        let mut failure = None;
        let mut auths = order.authorizations();
        while let Some(r) = auths.next().await {
            if let Err(e) = r {
                failure = Some(e);
            }
        }
        match failure {
            None => break,
            Some(e) if is_bad_nonce(&e) && tries < NONCE_RETRIES => tries += 1,
            Some(e) => return Err(IssueError::Authorization(describe(&e))),
        }
    }

    let mut presented: Vec<(&Solver, ChallengeData)> = Vec::new();
    let result = solve(order, req, solvers, &mut presented, deadline).await;
    if matches!(result, Err(IssueError::Invalid(_))) {
        // One challenge failed and the order with it, but the CA may still be
        // validating the others: removing their answers now would fail them
        // too and bury the real cause. Let them finish first.
        settle(account, order.url()).await;
    }
    for (solver, ch) in &presented {
        solvers.cleanup(solver, ch).await;
    }
    if let Err(e) = result {
        return Err(explain_invalid(account, order, e).await);
    }

    // Finalize with a CSR for the configured key type.
    let key = match &req.reuse_key {
        Some(k) => keys::load(k).map_err(|e| IssueError::Key(e.to_string()))?,
        None => keys::generate(req.cert.key).map_err(|e| IssueError::Key(e.to_string()))?,
    };
    let csr = keys::csr_der(&req.cert.domains, &key).map_err(|e| IssueError::Key(e.to_string()))?;
    nonce_retry!(order.finalize_csr(&csr)).map_err(|e| IssueError::Finalize(describe(&e)))?;
    let mut backoff = Backoff::new();
    let chain = loop {
        match nonce_retry!(order.certificate()) {
            Ok(Some(chain)) => break chain,
            Ok(None) => {}
            Err(e) => return Err(IssueError::Download(describe(&e))),
        }
        if Instant::now() > deadline {
            return Err(IssueError::Timeout(ORDER_TIMEOUT));
        }
        backoff.wait().await;
    };
    let bundle = Bundle::from_chain(KeyPem::new(key.serialize_pem()), &chain)
        .map_err(|e| IssueError::BadCertificate(e.to_string()))?;
    Ok(bundle)
}

async fn solve<'s>(
    order: &mut Order,
    req: &OrderRequest<'s>,
    solvers: &Solvers,
    presented: &mut Vec<(&'s Solver, ChallengeData)>,
    deadline: Instant,
) -> Result<(), IssueError> {
    // Present every pending challenge first: dns-01 publishes all its records
    // (an apex and its wildcard share one name) and waits for them together.
    let mut auths = order.authorizations();
    while let Some(authz) = auths.next().await {
        let mut authz = authz.map_err(|e| IssueError::Authorization(describe(&e)))?;
        let domain = authz.identifier().to_string();
        match authz.status {
            AuthorizationStatus::Valid => continue,
            AuthorizationStatus::Pending => {}
            other => {
                return Err(IssueError::Invalid(format!(
                    "authorization for {domain} is {other:?}"
                )))
            }
        }
        let solver = solver_for(req, &domain)?;
        let (kind, ctype) = challenge_type(solver);
        let challenge = authz.challenge(ctype).ok_or(IssueError::NoChallenge {
            kind,
            domain: domain.clone(),
        })?;
        let ka = challenge.key_authorization();
        let mut digest = [0u8; 32];
        digest.copy_from_slice(ka.digest().as_ref());
        let data = ChallengeData {
            domain: domain.clone(),
            token: challenge.token.clone(),
            key_authorization: ka.as_str().to_string(),
            dns_value: ka.dns_value(),
            digest,
        };
        solvers.present(solver, &data).await?;
        presented.push((solver, data));
    }
    solvers.wait_ready(presented).await?;

    // Then tell the CA, challenge by challenge (the states are cached: no refetch).
    let mut auths = order.authorizations();
    while let Some(authz) = auths.next().await {
        let mut authz = authz.map_err(|e| IssueError::Authorization(describe(&e)))?;
        if authz.status != AuthorizationStatus::Pending {
            continue;
        }
        let domain = authz.identifier().to_string();
        let (kind, ctype) = challenge_type(solver_for(req, &domain)?);
        let mut challenge = authz.challenge(ctype).ok_or(IssueError::NoChallenge {
            kind,
            domain: domain.clone(),
        })?;
        nonce_retry!(challenge.set_ready()).map_err(|e| IssueError::Challenge {
            kind,
            domain: domain.clone(),
            detail: describe(&e),
        })?;
    }

    let mut backoff = Backoff::new();
    loop {
        let state =
            nonce_retry!(order.refresh()).map_err(|e| IssueError::Authorization(describe(&e)))?;
        match state.status {
            OrderStatus::Ready | OrderStatus::Valid | OrderStatus::Processing => return Ok(()),
            OrderStatus::Invalid => {
                let why = state
                    .error
                    .as_ref()
                    .map(describe_problem)
                    .unwrap_or_default();
                return Err(IssueError::Invalid(why));
            }
            OrderStatus::Pending => {}
        }
        if Instant::now() > deadline {
            return Err(IssueError::Timeout(ORDER_TIMEOUT));
        }
        backoff.wait().await;
    }
}

/// The solver configured for one identifier of the order.
fn solver_for<'s>(req: &OrderRequest<'s>, domain: &str) -> Result<&'s Solver, IssueError> {
    let no_solver = || IssueError::NoSolver {
        domain: domain.to_string(),
    };
    let name = req
        .cert
        .challenge
        .solver_for(domain)
        .ok_or_else(no_solver)?;
    req.solvers.get(name).ok_or_else(no_solver)
}

fn challenge_type(solver: &Solver) -> (&'static str, ChallengeType) {
    let ctype = match solver {
        Solver::Http01Listen { .. } | Solver::Http01Webroot { .. } => ChallengeType::Http01,
        Solver::Dns01(_) => ChallengeType::Dns01,
        Solver::TlsAlpn01 { .. } => ChallengeType::TlsAlpn01,
    };
    (solver.challenge_type(), ctype)
}

/// How long an invalid order's other challenges are given to finish.
const SETTLE_LIMIT: Duration = Duration::from_secs(10);

/// Wait until no challenge of the order is still being validated (bounded).
async fn settle(account: &Account, url: &str) {
    let deadline = Instant::now() + SETTLE_LIMIT;
    let mut backoff = Backoff::new();
    while Instant::now() < deadline {
        let Ok(mut fresh) = nonce_retry!(account.order(url.to_string())) else {
            return;
        };
        let mut pending = false;
        let mut auths = fresh.authorizations();
        while let Some(authz) = auths.next().await {
            match authz {
                Ok(a) if a.status == AuthorizationStatus::Pending => {
                    pending |= a
                        .challenges
                        .iter()
                        .any(|c| c.status == ChallengeStatus::Processing)
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
        if !pending {
            return;
        }
        backoff.wait().await;
    }
}

/// When an order went invalid, find the challenge that failed and say why
/// (the order's own error is often generic).
async fn explain_invalid(account: &Account, order: &Order, err: IssueError) -> IssueError {
    if !matches!(err, IssueError::Invalid(_)) {
        return err;
    }
    let Ok(mut fresh) = nonce_retry!(account.order(order.url().to_string())) else {
        return err;
    };
    let mut auths = fresh.authorizations();
    while let Some(Ok(authz)) = auths.next().await {
        if authz.status != AuthorizationStatus::Invalid {
            continue;
        }
        let domain = authz.identifier().to_string();
        for ch in &authz.challenges {
            if let Some(problem) = &ch.error {
                let kind = match ch.r#type {
                    ChallengeType::Http01 => "http-01",
                    ChallengeType::Dns01 => "dns-01",
                    ChallengeType::TlsAlpn01 => "tls-alpn-01",
                    _ => "unknown",
                };
                return IssueError::Challenge {
                    kind,
                    domain,
                    detail: describe_problem(problem),
                };
            }
        }
    }
    err
}

//! The typed configuration: what the rest of certherd sees after the YAML has
//! been parsed and validated. Durations are parsed, paths are absolute
//! (resolved against the configuration file's folder), secrets are read,
//! references between sections are resolved.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A fully validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this configuration was read from.
    pub source: PathBuf,
    pub state_dir: PathBuf,
    pub acme: AcmeConfig,
    /// Top-level `renewal:` defaults (already merged into each certificate).
    pub renewal: RenewalPolicy,
    pub challenges: BTreeMap<String, Solver>,
    /// Certificates in the order of the file.
    pub certificates: Vec<CertificateConfig>,
    /// `metrics:`; `None` when the section is absent.
    pub metrics: Option<MetricsConfig>,
    /// `notify:`, in the order of the file; empty when the section is absent.
    pub notify: Vec<NotifierConfig>,
}

impl Config {
    pub fn certificate(&self, name: &str) -> Option<&CertificateConfig> {
        self.certificates.iter().find(|c| c.name == name)
    }
}

#[derive(Debug, Clone)]
pub struct AcmeConfig {
    /// Resolved directory URL (aliases expanded).
    pub directory: String,
    /// Resolved dry-run directory URL.
    pub dry_run_directory: String,
    /// `mailto:` URIs (a bare address in the file gets the prefix).
    pub contact: Vec<String>,
    /// Extra PEM roots (absolute paths, readable, at least one certificate each).
    pub trust_roots: Vec<PathBuf>,
    pub eab: Option<Eab>,
    pub profile: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Eab {
    pub key_id: String,
    /// The base64url-encoded HMAC key, as the CA hands it out.
    pub hmac_key: Secret,
}

/// A secret value read from `{ env: NAME }` or `{ file: PATH }`.
/// Its `Debug` and `Display` never print the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    value: String,
    /// Where it came from, e.g. `env EAB_HMAC_KEY` or `file /etc/certherd/x`.
    origin: String,
}

impl Secret {
    pub fn new(value: String, origin: String) -> Self {
        Secret { value, origin }
    }
    pub fn expose(&self) -> &str {
        &self.value
    }
    pub fn origin(&self) -> &str {
        &self.origin
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({}, <redacted>)", self.origin)
    }
}

/// When a certificate is due relative to its expiry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    /// Renew when less than this remains.
    Remaining(Duration),
    /// Renew when less than this share (0 < share < 1) of the lifetime remains.
    Share(f64),
}

#[derive(Debug, Clone, PartialEq)]
pub struct RenewalPolicy {
    pub before_expiry: Threshold,
    pub ari: bool,
    pub check_interval: Duration,
    pub jitter: Duration,
}

impl Default for RenewalPolicy {
    fn default() -> Self {
        RenewalPolicy {
            before_expiry: Threshold::Share(0.33),
            ari: true,
            check_interval: Duration::from_secs(6 * 3600),
            jitter: Duration::from_secs(30 * 60),
        }
    }
}

/// A named challenge solver.
#[derive(Debug, Clone, PartialEq)]
pub enum Solver {
    /// http-01 through the built-in responder listening on this address.
    Http01Listen { listen: String },
    /// http-01 by writing files under `<webroot>/.well-known/acme-challenge/`.
    Http01Webroot { webroot: PathBuf },
    /// dns-01 (RFC 8555 §8.4): a TXT record at `_acme-challenge.<domain>`,
    /// published through a backend, waited for on every authoritative server.
    Dns01(Dns01),
    /// tls-alpn-01 (RFC 8737) through the built-in listener on this address.
    TlsAlpn01 { listen: String },
}

impl Solver {
    pub fn challenge_type(&self) -> &'static str {
        match self {
            Solver::Http01Listen { .. } | Solver::Http01Webroot { .. } => "http-01",
            Solver::Dns01(_) => "dns-01",
            Solver::TlsAlpn01 { .. } => "tls-alpn-01",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Dns01 {
    pub backend: DnsBackend,
    /// How long to wait until every authoritative server answers the records.
    pub propagation_timeout: Duration,
    /// The DNS server asked for the zone's NS set and for CNAMEs at
    /// `_acme-challenge` names: the rfc2136 server by default; for `exec`,
    /// `resolver:` or else the first `nameserver` of /etc/resolv.conf.
    pub resolver: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DnsBackend {
    Rfc2136(Rfc2136),
    Exec(DnsExec),
}

/// DNS UPDATE (RFC 2136) signed with TSIG (RFC 8945).
#[derive(Debug, Clone, PartialEq)]
pub struct Rfc2136 {
    /// `host:port` of the primary server taking updates.
    pub server: String,
    /// The zone to update, absolute (`example.com.`); found from the SOA when `None`.
    pub zone: Option<String>,
    pub tsig: Tsig,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tsig {
    /// The key's name, absolute (`certherd.`).
    pub name: String,
    pub algorithm: TsigAlgorithm,
    /// The base64 key, as BIND's `tsig-keygen` prints it.
    pub secret: Secret,
}

impl Tsig {
    /// The key's bytes (validation has checked that they decode).
    pub fn key(&self) -> Vec<u8> {
        Tsig::decode(&self.secret).unwrap_or_default()
    }

    /// A TSIG secret is base64, with or without padding.
    pub fn decode(secret: &Secret) -> Option<Vec<u8>> {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(secret.expose().trim_end_matches('='))
            .ok()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TsigAlgorithm {
    HmacSha256,
    HmacSha384,
    HmacSha512,
}

impl TsigAlgorithm {
    pub const ALL: [TsigAlgorithm; 3] = [
        TsigAlgorithm::HmacSha256,
        TsigAlgorithm::HmacSha384,
        TsigAlgorithm::HmacSha512,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            TsigAlgorithm::HmacSha256 => "hmac-sha256",
            TsigAlgorithm::HmacSha384 => "hmac-sha384",
            TsigAlgorithm::HmacSha512 => "hmac-sha512",
        }
    }
    pub fn parse(s: &str) -> Option<TsigAlgorithm> {
        TsigAlgorithm::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// Any DNS API through two programs. Each gets `CERTHERD_DNS_FQDN`,
/// `CERTHERD_DNS_VALUE` and `CERTHERD_DNS_ZONE`.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsExec {
    pub add: CommandSpec,
    pub remove: CommandSpec,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyType {
    EcdsaP256,
    EcdsaP384,
    Rsa2048,
    Rsa3072,
    Rsa4096,
}

impl KeyType {
    pub const ALL: [KeyType; 5] = [
        KeyType::EcdsaP256,
        KeyType::EcdsaP384,
        KeyType::Rsa2048,
        KeyType::Rsa3072,
        KeyType::Rsa4096,
    ];
    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::EcdsaP256 => "ecdsa-p256",
            KeyType::EcdsaP384 => "ecdsa-p384",
            KeyType::Rsa2048 => "rsa-2048",
            KeyType::Rsa3072 => "rsa-3072",
            KeyType::Rsa4096 => "rsa-4096",
        }
    }
    pub fn parse(s: &str) -> Option<KeyType> {
        KeyType::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which solver answers the challenges of which domain.
#[derive(Debug, Clone, PartialEq)]
pub enum ChallengeChoice {
    /// One solver for every domain.
    All(String),
    /// Domain pattern → solver name, first match wins. A pattern is an exact
    /// domain (`example.com`, `*.example.com`) or `*` for "every other".
    ByPattern(Vec<(String, String)>),
}

impl ChallengeChoice {
    /// Every solver name this choice uses, each once, in order.
    pub fn solver_names(&self) -> impl Iterator<Item = &str> {
        let names: Vec<&str> = match self {
            ChallengeChoice::All(s) => vec![s.as_str()],
            ChallengeChoice::ByPattern(list) => {
                let mut v: Vec<&str> = Vec::new();
                for (_, s) in list {
                    if !v.contains(&s.as_str()) {
                        v.push(s);
                    }
                }
                v
            }
        };
        names.into_iter()
    }

    /// The solver name for a domain of the certificate, if any pattern matches.
    pub fn solver_for(&self, domain: &str) -> Option<&str> {
        match self {
            ChallengeChoice::All(s) => Some(s),
            ChallengeChoice::ByPattern(list) => list
                .iter()
                .find(|(p, _)| p == domain)
                .or_else(|| list.iter().find(|(p, _)| p == "*"))
                .map(|(_, s)| s.as_str()),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CertificateConfig {
    pub name: String,
    /// Lower-cased, in configuration order, no duplicates.
    pub domains: Vec<String>,
    pub key: KeyType,
    pub reuse_key: bool,
    pub challenge: ChallengeChoice,
    /// Top-level defaults merged with the per-certificate override.
    pub renewal: RenewalPolicy,
    pub targets: Vec<TargetConfig>,
    pub rollout: Rollout,
}

/// How a certificate reaches its targets: in waves, a few at a time, and
/// what a failed target does to the rest.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    /// Target names, wave by wave, as configured; the targets not listed
    /// form a last wave (see [`CertificateConfig::waves`]).
    pub waves: Vec<Vec<String>>,
    /// Targets deployed at once within a wave.
    pub max_parallel: usize,
    pub on_failure: OnFailure,
    /// A target whose deployment or verification fails gets the
    /// certificate it held before back.
    pub rollback: bool,
}

impl Default for Rollout {
    fn default() -> Rollout {
        Rollout {
            waves: Vec::new(),
            max_parallel: Rollout::DEFAULT_MAX_PARALLEL,
            on_failure: OnFailure::Continue,
            rollback: false,
        }
    }
}

impl Rollout {
    pub const DEFAULT_MAX_PARALLEL: usize = 8;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Later waves are not touched.
    Halt,
    /// Later waves go ahead.
    Continue,
}

impl CertificateConfig {
    /// The targets wave by wave: the configured waves, then every target
    /// they do not name (in configuration order) as a last wave. Empty
    /// waves are dropped.
    pub fn waves(&self) -> Vec<Vec<&TargetConfig>> {
        let by_name = |n: &String| self.targets.iter().find(|t| &t.name == n);
        let mut out: Vec<Vec<&TargetConfig>> = self
            .rollout
            .waves
            .iter()
            .map(|w| w.iter().filter_map(by_name).collect::<Vec<_>>())
            .filter(|w| !w.is_empty())
            .collect();
        let rest: Vec<&TargetConfig> = self
            .targets
            .iter()
            .filter(|t| !self.rollout.waves.iter().flatten().any(|n| n == &t.name))
            .collect();
        if !rest.is_empty() {
            out.push(rest);
        }
        out
    }

    /// The first non-wildcard domain (the default SNI), else the first domain.
    pub fn primary_domain(&self) -> &str {
        self.domains
            .iter()
            .find(|d| !d.starts_with("*."))
            .unwrap_or(&self.domains[0])
    }
}

/// An argv to run (never through a shell), with its timeout.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandSpec {
    pub argv: Vec<String>,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TargetConfig {
    pub name: String,
    pub kind: TargetKind,
    pub reload: Option<CommandSpec>,
    pub verify: Option<VerifyConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TargetKind {
    File(FileTarget),
    Exec(ExecTarget),
    Ssh(SshTarget),
    Haproxy(HaproxyTarget),
    Webhook(WebhookTarget),
}

impl TargetKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            TargetKind::File(_) => "file",
            TargetKind::Exec(_) => "exec",
            TargetKind::Ssh(_) => "ssh",
            TargetKind::Haproxy(_) => "haproxy",
            TargetKind::Webhook(_) => "webhook",
        }
    }
}

/// Which files a `file` target writes. At least one path is set.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FileSet {
    pub cert: Option<PathBuf>,
    pub chain: Option<PathBuf>,
    pub fullchain: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub combined: Option<PathBuf>,
    /// A PKCS#12 file holding the key, the leaf and the chain.
    pub pkcs12: Option<Pkcs12File>,
}

/// `pkcs12:` of a `file` or `ssh` target, with `pkcs12_password` and
/// `pkcs12_name`. Written with the mode of key files.
#[derive(Debug, Clone, PartialEq)]
pub struct Pkcs12File {
    pub path: PathBuf,
    /// Encrypts the key and the certificates and keys the MAC; never empty.
    pub password: Secret,
    /// The key's friendly name (a Java keystore's alias): `pkcs12_name`,
    /// else the certificate's name.
    pub name: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FileTarget {
    pub files: FileSet,
    /// Mode of files that hold the private key (`key`, `combined`).
    /// Files without key material are written 0644.
    pub mode: u32,
    pub owner: Option<String>,
    pub group: Option<String>,
    /// How the files change together.
    pub layout: Layout,
}

/// How a `file` or `ssh` target's files are replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// Each path is a regular file, replaced by a rename of its own: a
    /// crash between two renames can leave a new certificate beside the
    /// old key until the next run.
    #[default]
    Files,
    /// Each path is a symbolic link into a folder certherd keeps beside
    /// the first file (`.<name>.certherd/current/…`); one rename of
    /// `current` switches every file at once.
    Links,
}

/// The `ssh` target: the files of a `file` target, written on a remote host
/// through the system OpenSSH client; `reload` runs there too.
#[derive(Debug, Clone, PartialEq)]
pub struct SshTarget {
    pub host: String,
    pub port: u16,
    /// `None`: ssh's own choice (its configuration, else the local user).
    pub user: Option<String>,
    /// A private key file on this machine; `None`: ssh's own keys and agent.
    pub identity: Option<PathBuf>,
    /// The only known_hosts file trusted; `None`: ssh's own files.
    pub known_hosts: Option<PathBuf>,
    /// A host to connect through (ssh's `-J`).
    pub jump: Option<String>,
    /// An ssh configuration file to read instead of the user's and the
    /// system's (ssh's `-F`; ssh passes it on to the jump connection).
    pub ssh_config: Option<PathBuf>,
    /// Remote paths (absolute), mode, owner and group.
    pub files: FileTarget,
}

/// The `haproxy` target: a running HAProxy updated through its runtime API
/// (`set ssl cert` + `commit ssl cert`, no reload), and the combined PEM
/// written on disk so that a restart loads the same certificate.
#[derive(Debug, Clone, PartialEq)]
pub struct HaproxyTarget {
    /// HAProxy's stats socket (`stats socket ... level admin`).
    pub socket: HaproxySocket,
    /// `files.combined` is the only file set: key + full chain, the file
    /// HAProxy's `crt` names; mode, owner and group as for `file`.
    pub file: FileTarget,
    /// The name HAProxy knows the certificate by (its `crt` path); by
    /// default the `combined` path.
    pub cert_name: String,
    /// For each exchange with the socket.
    pub timeout: Duration,
}

impl HaproxyTarget {
    /// The combined PEM's path.
    pub fn combined(&self) -> &std::path::Path {
        self.file
            .files
            .combined
            .as_deref()
            .expect("a haproxy target has a combined file")
    }
}

/// Where HAProxy's runtime API listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HaproxySocket {
    /// A unix socket (absolute path).
    Unix(PathBuf),
    /// `host:port` on a loopback address: the API carries the private key
    /// in clear.
    Tcp(String),
}

impl fmt::Display for HaproxySocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HaproxySocket::Unix(p) => write!(f, "{}", p.display()),
            HaproxySocket::Tcp(a) => f.write_str(a),
        }
    }
}

/// The `webhook` target: the bundle (key included) POSTed as JSON over
/// HTTPS (plain HTTP only to a loopback address).
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookTarget {
    pub url: Text,
    /// Extra request headers, in the order of the file; values may be secrets.
    pub headers: Vec<(String, Text)>,
    /// For each attempt.
    pub timeout: Duration,
    /// Extra PEM roots for a receiver with a private CA.
    pub trust_roots: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExecTarget {
    pub command: CommandSpec,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VerifyConfig {
    /// `host:port` to connect to.
    pub connect: String,
    /// SNI and the name the served certificate is checked against.
    pub server_name: String,
    /// Keep retrying the handshake until this much time has passed.
    pub timeout: Duration,
    /// A plaintext exchange that asks for TLS first (mail servers, PostgreSQL).
    pub starttls: Option<Starttls>,
}

/// `verify.starttls`: the protocol spoken before the TLS handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Starttls {
    /// RFC 3207: greeting, `EHLO`, `STARTTLS`.
    Smtp,
    /// RFC 9051 §6.2.1: greeting, `a1 STARTTLS`.
    Imap,
    /// RFC 2595 §4: greeting, `STLS`.
    Pop3,
    /// PostgreSQL's `SSLRequest` message, answered by `S`.
    Postgres,
}

impl Starttls {
    pub const ALL: [Starttls; 4] = [
        Starttls::Smtp,
        Starttls::Imap,
        Starttls::Pop3,
        Starttls::Postgres,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Starttls::Smtp => "smtp",
            Starttls::Imap => "imap",
            Starttls::Pop3 => "pop3",
            Starttls::Postgres => "postgres",
        }
    }
    pub fn parse(s: &str) -> Option<Starttls> {
        Starttls::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// `metrics:` — Prometheus metrics. At least one of the two is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Where `certherd run` serves `GET /metrics`.
    pub listen: Option<SocketAddr>,
    /// The file (ending in `.prom`) the one-shot commands write for
    /// node_exporter's textfile collector.
    pub textfile: Option<PathBuf>,
}

/// What a notifier can be told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    /// A certificate was renewed.
    Renewed,
    /// A target could not be deployed to.
    DeployFailed,
    /// A target does not serve the current certificate (or could not be checked).
    VerifyMismatch,
    /// A certificate expires in less than `expiring_days` and is still not renewed.
    Expiring,
}

impl EventKind {
    pub const ALL: [EventKind; 4] = [
        EventKind::Renewed,
        EventKind::DeployFailed,
        EventKind::VerifyMismatch,
        EventKind::Expiring,
    ];
    /// The configuration (and `CERTHERD_EVENT`, and JSON `event`) spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Renewed => "renewed",
            EventKind::DeployFailed => "deploy_failed",
            EventKind::VerifyMismatch => "verify_mismatch",
            EventKind::Expiring => "expiring",
        }
    }
    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of `notify:`.
#[derive(Debug, Clone, PartialEq)]
pub struct NotifierConfig {
    /// How logs name it: the `name` given, else `TYPE #N` (N counts from 1
    /// in the list), e.g. `webhook #1`.
    pub name: String,
    /// The events it is sent, each once, in `EventKind::ALL` order.
    pub events: Vec<EventKind>,
    /// An `expiring` event reaches it once the certificate has less than
    /// this many days left.
    pub expiring_days: u32,
    pub kind: NotifierKind,
}

impl NotifierConfig {
    pub fn wants(&self, kind: EventKind) -> bool {
        self.events.contains(&kind)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum NotifierKind {
    Webhook(WebhookConfig),
    /// A program run once per event, never through a shell.
    Exec(CommandSpec),
}

impl NotifierKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            NotifierKind::Webhook(_) => "webhook",
            NotifierKind::Exec(_) => "exec",
        }
    }
}

/// An HTTP POST per event.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookConfig {
    /// An `http://` or `https://` URL; a secret when it holds a token
    /// (a Slack incoming-webhook URL does).
    pub url: Text,
    pub format: WebhookFormat,
    /// Extra request headers, in the order of the file (names checked, values
    /// valid header values).
    pub headers: Vec<(String, Text)>,
    /// For each attempt.
    pub timeout: std::time::Duration,
    /// Extra PEM roots for an HTTPS receiver with a private CA.
    pub trust_roots: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookFormat {
    /// certherd's JSON document: `{"event": ..., "certificate": ..., ...}`.
    Json,
    /// `{"text": "..."}`, what Slack (and Mattermost, Rocket.Chat, ...)
    /// incoming webhooks take.
    Slack,
}

impl WebhookFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookFormat::Json => "json",
            WebhookFormat::Slack => "slack",
        }
    }
}

/// A value written either inline or as a secret (`{ env }` / `{ file }`).
/// `Debug` shows an inline value, never a secret's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Text {
    Plain(String),
    Secret(Secret),
}

impl Text {
    pub fn expose(&self) -> &str {
        match self {
            Text::Plain(s) => s,
            Text::Secret(s) => s.expose(),
        }
    }
    pub fn is_secret(&self) -> bool {
        matches!(self, Text::Secret(_))
    }
}

//! The walk from the YAML tree to a typed [`Config`]: one function per
//! section, each reporting every problem it finds and carrying on with a
//! placeholder, so that one run reports all errors. Cross-references
//! (certificate → challenge solver, wildcard → challenge type) are checked
//! once the sections they point into have been read.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use super::monitoring;
use super::targets;
use super::values;
use super::yaml::{self, named_entries, peek, Map, Node, Value};
use super::{
    AcmeConfig, CertificateConfig, ChallengeChoice, CommandSpec, Config, Diag, Dns01, DnsBackend,
    DnsExec, Eab, KeyType, OnFailure, RenewalPolicy, Rfc2136, Rollout, Solver, TargetConfig,
    Threshold, Tsig, TsigAlgorithm,
};

const TOP_KEYS: &[&str] = &[
    "state_dir",
    "acme",
    "renewal",
    "metrics",
    "notify",
    "challenges",
    "certificates",
];
const ACME_KEYS: &[&str] = &[
    "directory",
    "dry_run_directory",
    "contact",
    "trust_roots",
    "eab",
    "profile",
];
const RENEWAL_KEYS: &[&str] = &["before_expiry", "ari", "check_interval", "jitter"];
const HTTP01_KEYS: &[&str] = &["type", "listen", "webroot"];
const DNS01_KEYS: &[&str] = &["type", "rfc2136", "exec", "propagation_timeout", "resolver"];
const RFC2136_KEYS: &[&str] = &["server", "zone", "tsig"];
const TSIG_KEYS: &[&str] = &["name", "algorithm", "secret"];
const DNS_EXEC_KEYS: &[&str] = &["add", "remove", "timeout"];
const TLS_ALPN01_KEYS: &[&str] = &["type", "listen"];
const DEFAULT_PROPAGATION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
const DEFAULT_DNS_EXEC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
const CHALLENGE_TYPES: &[&str] = &["http-01", "dns-01", "tls-alpn-01"];
const CERT_KEYS: &[&str] = &[
    "domains",
    "key",
    "reuse_key",
    "challenge",
    "renewal",
    "targets",
    "rollout",
];
const CERT_LATER: &[&str] = &[];
const ROLLOUT_KEYS: &[&str] = &["waves", "max_parallel", "on_failure", "rollback"];
const DEFAULT_STATE_DIR: &str = "/var/lib/certherd";

/// What the rest of the walk needs to know about the solvers defined under
/// `challenges`, including those that are invalid or not supported (so that
/// a certificate naming them gets no second, misleading error).
struct Solvers {
    /// `None` when `challenges` itself is missing or not a mapping: then
    /// references cannot be checked.
    types: Option<HashMap<String, Option<&'static str>>>,
    valid: BTreeMap<String, Solver>,
}

impl Solvers {
    /// Whether a solver is defined: `None` when that cannot be known.
    fn defined(&self, name: &str) -> Option<bool> {
        self.types.as_ref().map(|t| t.contains_key(name))
    }
    /// The challenge type of a defined solver, when it is known.
    fn challenge_type(&self, name: &str) -> Option<&'static str> {
        self.types.as_ref()?.get(name).copied().flatten()
    }
}

pub(super) fn config(
    root: &Node,
    source: &Path,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    d: &mut Diag,
) -> Option<Config> {
    if root.is_null() {
        d.at(root.pos, "the configuration file is empty");
        return None;
    }
    let top = Map::open(root, "the configuration", TOP_KEYS, &[], d)?;

    let state_dir = top
        .get("state_dir")
        .and_then(|n| values::path(n, "`state_dir`", base, d))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
    let acme = top.require("acme", d).and_then(|n| acme(n, base, env, d));
    let renewal = match top.get("renewal") {
        Some(n) => renewal(n, "`renewal`", &RenewalPolicy::default(), d),
        None => RenewalPolicy::default(),
    };
    let metrics = top
        .get("metrics")
        .and_then(|n| monitoring::metrics(n, base, d));
    let notify = match top.get("notify") {
        Some(n) => monitoring::notify(n, base, env, d),
        None => Vec::new(),
    };
    let solvers = match top.require("challenges", d) {
        Some(n) => solvers(n, base, env, d),
        None => Solvers {
            types: None,
            valid: BTreeMap::new(),
        },
    };
    let certificates = match top.require("certificates", d) {
        Some(n) => certificates(n, &renewal, &solvers, base, env, d),
        None => Vec::new(),
    };

    Some(Config {
        source: source.to_path_buf(),
        state_dir,
        acme: acme?,
        renewal,
        challenges: solvers.valid,
        certificates,
        metrics,
        notify,
    })
}

fn acme(
    node: &Node,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    d: &mut Diag,
) -> Option<AcmeConfig> {
    let m = Map::open(node, "`acme`", ACME_KEYS, &[], d)?;
    let directory = m
        .require("directory", d)
        .and_then(|n| values::directory(n, "`directory`", d));
    let dry_run_directory = m
        .get("dry_run_directory")
        .and_then(|n| values::directory(n, "`dry_run_directory`", d));
    let contact = match m.get("contact") {
        Some(n) => yaml::string_list(n, "`contact`", d)
            .into_iter()
            .filter_map(|(s, item)| values::contact(item, &s, d))
            .collect(),
        None => Vec::new(),
    };
    let trust_roots = match m.get("trust_roots") {
        Some(n) => yaml::list(n, "`trust_roots`", d)
            .unwrap_or_default()
            .iter()
            .filter_map(|item| values::trust_root(item, base, d))
            .collect(),
        None => Vec::new(),
    };
    let eab = m.get("eab").and_then(|n| {
        let e = Map::open(n, "`eab`", &["key_id", "hmac_key"], &[], d)?;
        let key_id = e
            .require("key_id", d)
            .and_then(|n| yaml::nonempty_string(n, "`key_id`", d));
        let hmac_key = e
            .require("hmac_key", d)
            .and_then(|n| values::secret(n, "hmac_key", base, env, d));
        Some(Eab {
            key_id: key_id?,
            hmac_key: hmac_key?,
        })
    });
    let profile = m
        .get("profile")
        .and_then(|n| yaml::nonempty_string(n, "`profile`", d));

    let directory = directory?;
    let dry_run_directory = dry_run_directory.unwrap_or_else(|| {
        values::staging_twin(&directory)
            .map(str::to_string)
            .unwrap_or_else(|| directory.clone())
    });
    Some(AcmeConfig {
        directory,
        dry_run_directory,
        contact,
        trust_roots,
        eab,
        profile,
    })
}

/// A `renewal:` mapping over `defaults` (the built-in defaults for the
/// top-level section, the top-level section for a certificate's override).
fn renewal(node: &Node, what: &str, defaults: &RenewalPolicy, d: &mut Diag) -> RenewalPolicy {
    let mut policy = defaults.clone();
    let Some(m) = Map::open(node, what, RENEWAL_KEYS, &[], d) else {
        return policy;
    };
    if let Some(t) = m.get("before_expiry").and_then(|n| threshold(n, d)) {
        policy.before_expiry = t;
    }
    if let Some(b) = m.get("ari").and_then(|n| yaml::boolean(n, "`ari`", d)) {
        policy.ari = b;
    }
    if let Some(v) = m
        .get("check_interval")
        .and_then(|n| values::duration(n, "`check_interval`", true, d))
    {
        policy.check_interval = v;
    }
    if let Some(v) = m
        .get("jitter")
        .and_then(|n| values::duration(n, "`jitter`", false, d))
    {
        policy.jitter = v;
    }
    policy
}

/// `before_expiry`: a duration, or a whole percentage of the lifetime.
fn threshold(node: &Node, d: &mut Diag) -> Option<Threshold> {
    let parsed = node.scalar().and_then(|s| match s.strip_suffix('%') {
        Some(p) => p
            .parse::<u8>()
            .ok()
            .filter(|n| (1..=99).contains(n) && p.bytes().all(|b| b.is_ascii_digit()))
            .map(|p| Threshold::Share(f64::from(p) / 100.0)),
        None => super::parse_duration(s)
            .ok()
            .filter(|v| !v.is_zero())
            .map(Threshold::Remaining),
    });
    if parsed.is_none() {
        d.at(
            node.pos,
            format!(
                "`before_expiry` must be a duration like 30d or a share of the lifetime \
                 from 1% to 99%, not {}",
                node.describe()
            ),
        );
    }
    parsed
}

fn solvers(
    node: &Node,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    d: &mut Diag,
) -> Solvers {
    let mut types = HashMap::new();
    let mut valid = BTreeMap::new();
    if !matches!(node.value, Value::Map(_)) {
        d.at(
            node.pos,
            format!("`challenges` must be a mapping, not {}", node.describe()),
        );
        return Solvers { types: None, valid };
    }
    for (name, _, body) in named_entries(node, "`challenges`", "challenge", d) {
        let (ty, solver) = solver(name, body, base, env, d);
        types.insert(name.to_string(), ty);
        if let Some(s) = solver {
            valid.insert(name.to_string(), s);
        }
    }
    Solvers {
        types: Some(types),
        valid,
    }
}

/// One named solver: its challenge type when known, and the solver when valid.
fn solver(
    name: &str,
    node: &Node,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    d: &mut Diag,
) -> (Option<&'static str>, Option<Solver>) {
    let what = format!("challenge \"{name}\"");
    let Some(ty_node) = peek(node, "type") else {
        // Not a mapping, or no `type`: say so, and leave the other keys,
        // whose meaning depends on the type, alone.
        if matches!(node.value, Value::Map(_)) {
            d.at(node.pos, format!("missing key `type` in {what}"));
        } else {
            d.at(
                node.pos,
                format!("{what} must be a mapping, not {}", node.describe()),
            );
        }
        return (None, None);
    };
    let ty = match ty_node.scalar() {
        Some(t) => CHALLENGE_TYPES.iter().copied().find(|c| *c == t),
        None => None,
    };
    let solver = match ty {
        Some("http-01") => http01(&what, node, base, d),
        Some("dns-01") => dns01(&what, node, base, env, d),
        Some(_) => tls_alpn01(&what, node, d),
        None => {
            d.at(
                ty_node.pos,
                format!(
                    "`type` must be one of: {}, not {}",
                    CHALLENGE_TYPES.join(", "),
                    ty_node.describe()
                ),
            );
            None
        }
    };
    (ty, solver)
}

/// `listen` of a built-in listener: an IP address and port.
fn listen(n: &Node, example: &str, d: &mut Diag) -> Option<String> {
    yaml::string(n, "`listen`", d).filter(|s| {
        let ok = values::is_listen_addr(s);
        if !ok {
            d.at(
                n.pos,
                format!(
                    "`listen` must be an IP address and port, like {example}, not {}",
                    n.describe()
                ),
            );
        }
        ok
    })
}

fn http01(what: &str, node: &Node, base: &Path, d: &mut Diag) -> Option<Solver> {
    let m = Map::open(node, what, HTTP01_KEYS, &[], d)?;
    match (m.get("listen"), m.get("webroot")) {
        (Some(n), None) => listen(n, "\"[::]:80\" or \"127.0.0.1:5002\"", d)
            .map(|listen| Solver::Http01Listen { listen }),
        (None, Some(n)) => {
            values::path(n, "`webroot`", base, d).map(|webroot| Solver::Http01Webroot { webroot })
        }
        (Some(_), Some(_)) => {
            d.at(
                m.pos(),
                format!(
                    "{what} sets both `listen` and `webroot`: an http-01 solver uses one of them"
                ),
            );
            None
        }
        (None, None) => {
            d.at(
                m.pos(),
                format!(
                    "{what} needs `listen` (the built-in responder's address) or `webroot` \
                     (a folder the web server serves)"
                ),
            );
            None
        }
    }
}

fn tls_alpn01(what: &str, node: &Node, d: &mut Diag) -> Option<Solver> {
    let m = Map::open(node, what, TLS_ALPN01_KEYS, &[], d)?;
    let n = m.require("listen", d)?;
    listen(n, "\"[::]:443\"", d).map(|listen| Solver::TlsAlpn01 { listen })
}

/// A DNS server's `host:port`.
fn dns_server(n: &Node, label: &str, d: &mut Diag) -> Option<String> {
    yaml::string(n, label, d).filter(|s| {
        let ok = values::is_host_port(s);
        if !ok {
            d.at(
                n.pos,
                format!(
                    "{label} must be a host and port, like \"192.0.2.53:53\", not {}",
                    n.describe()
                ),
            );
        }
        ok
    })
}

/// An absolute DNS name (`example.com.`); the trailing dot is added.
fn dns_name(n: &Node, label: &str, d: &mut Diag) -> Option<String> {
    let s = yaml::nonempty_string(n, label, d)?;
    let bare = s.strip_suffix('.').unwrap_or(&s);
    match values::domain(bare) {
        Ok(name) if !name.starts_with('*') => Some(format!("{name}.")),
        _ => {
            d.at(
                n.pos,
                format!(
                    "{label} must be a DNS name, like \"example.com.\", not {}",
                    n.describe()
                ),
            );
            None
        }
    }
}

fn dns01(
    what: &str,
    node: &Node,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    d: &mut Diag,
) -> Option<Solver> {
    let m = Map::open(node, what, DNS01_KEYS, &[], d)?;
    let propagation_timeout = match m.get("propagation_timeout") {
        Some(n) => values::duration(n, "`propagation_timeout`", true, d),
        None => Some(DEFAULT_PROPAGATION_TIMEOUT),
    };
    let resolver = m.get("resolver").map(|n| dns_server(n, "`resolver`", d));
    // Both backends are read even when both are set, so that every mistake is reported.
    let rfc = m.get("rfc2136").map(|n| rfc2136(n, base, env, d));
    let exec = m.get("exec").map(|n| dns_exec(n, base, d));
    let backend = match (rfc, exec) {
        (Some(r), None) => r.map(DnsBackend::Rfc2136),
        (None, Some(e)) => e.map(DnsBackend::Exec),
        (Some(_), Some(_)) => {
            d.at(
                m.pos(),
                format!("{what} sets both `rfc2136` and `exec`: a dns-01 solver uses one backend"),
            );
            None
        }
        (None, None) => {
            d.at(
                m.pos(),
                format!(
                    "{what} needs a backend: `rfc2136` (DNS UPDATE with TSIG) or `exec` \
                     (programs that add and remove a TXT record)"
                ),
            );
            None
        }
    };
    Some(Solver::Dns01(Dns01 {
        backend: backend?,
        propagation_timeout: propagation_timeout?,
        resolver: resolver.map_or(Some(None), |r| r.map(Some))?,
    }))
}

fn rfc2136(
    node: &Node,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    d: &mut Diag,
) -> Option<Rfc2136> {
    let m = Map::open(node, "`rfc2136`", RFC2136_KEYS, &[], d)?;
    let server = m
        .require("server", d)
        .and_then(|n| dns_server(n, "`server`", d));
    // `Some(None)`: the zone was given and is invalid.
    let zone = m.get("zone").map(|n| dns_name(n, "`zone`", d));
    let tsig = m.require("tsig", d).and_then(|n| tsig(n, base, env, d));
    Some(Rfc2136 {
        server: server?,
        zone: zone.map_or(Some(None), |z| z.map(Some))?,
        tsig: tsig?,
    })
}

fn tsig(
    node: &Node,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    d: &mut Diag,
) -> Option<Tsig> {
    let m = Map::open(node, "`tsig`", TSIG_KEYS, &[], d)?;
    let name = m
        .require("name", d)
        .and_then(|n| dns_name(n, "`tsig.name`", d));
    let algorithm = match m.get("algorithm") {
        None => Some(TsigAlgorithm::HmacSha256),
        Some(n) => {
            let parsed = n.scalar().and_then(TsigAlgorithm::parse);
            if parsed.is_none() {
                let all: Vec<&str> = TsigAlgorithm::ALL.iter().map(|a| a.as_str()).collect();
                d.at(
                    n.pos,
                    format!(
                        "`algorithm` must be one of: {}, not {}",
                        all.join(", "),
                        n.describe()
                    ),
                );
            }
            parsed
        }
    };
    let secret = m.require("secret", d).and_then(|n| {
        let secret = values::secret(n, "secret", base, env, d)?;
        if Tsig::decode(&secret).is_none() {
            d.at(
                n.pos,
                format!(
                    "the TSIG secret from {} is not base64 (as `tsig-keygen` prints it)",
                    secret.origin()
                ),
            );
            return None;
        }
        Some(secret)
    });
    Some(Tsig {
        name: name?,
        algorithm: algorithm?,
        secret: secret?,
    })
}

fn dns_exec(node: &Node, base: &Path, d: &mut Diag) -> Option<DnsExec> {
    let m = Map::open(node, "`exec`", DNS_EXEC_KEYS, &[], d)?;
    let timeout = match m.get("timeout") {
        Some(n) => values::duration(n, "`timeout`", true, d),
        None => Some(DEFAULT_DNS_EXEC_TIMEOUT),
    };
    let add = m
        .require("add", d)
        .and_then(|n| values::argv(n, "`add`", base, d));
    let remove = m
        .require("remove", d)
        .and_then(|n| values::argv(n, "`remove`", base, d));
    let timeout = timeout?;
    Some(DnsExec {
        add: CommandSpec {
            argv: add?,
            timeout,
        },
        remove: CommandSpec {
            argv: remove?,
            timeout,
        },
    })
}

fn certificates(
    node: &Node,
    renewal_defaults: &RenewalPolicy,
    solvers: &Solvers,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    d: &mut Diag,
) -> Vec<CertificateConfig> {
    let entries = named_entries(node, "`certificates`", "certificate", d);
    if entries.is_empty() && matches!(node.value, Value::Map(_)) {
        d.at(
            node.pos,
            "`certificates` is empty: define at least one certificate",
        );
    }
    entries
        .into_iter()
        .filter_map(|(name, key, body)| {
            if !values::is_valid_name(name) {
                d.at(key.pos, values::invalid_name("certificate", name));
            }
            certificate(name, body, renewal_defaults, solvers, base, env, d)
        })
        .collect()
}

fn certificate(
    name: &str,
    node: &Node,
    renewal_defaults: &RenewalPolicy,
    solvers: &Solvers,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    d: &mut Diag,
) -> Option<CertificateConfig> {
    let m = Map::open(
        node,
        format!("certificate \"{name}\""),
        CERT_KEYS,
        CERT_LATER,
        d,
    )?;

    let domains = m
        .require("domains", d)
        .map(|n| domains(name, n, d))
        .unwrap_or_default();
    let key = m
        .get("key")
        .and_then(|n| {
            let s = yaml::string(n, "`key`", d)?;
            let k = KeyType::parse(&s);
            if k.is_none() {
                let all: Vec<&str> = KeyType::ALL.iter().map(|k| k.as_str()).collect();
                d.at(
                    n.pos,
                    format!(
                        "`key` must be one of: {}, not {}",
                        all.join(", "),
                        n.describe()
                    ),
                );
            }
            k
        })
        .unwrap_or(KeyType::EcdsaP256);
    let reuse_key = m
        .get("reuse_key")
        .and_then(|n| yaml::boolean(n, "`reuse_key`", d))
        .unwrap_or(false);
    let challenge = m
        .require("challenge", d)
        .and_then(|n| challenge(name, n, &domains, solvers, d));
    let renewal = match m.get("renewal") {
        Some(n) => renewal(
            n,
            &format!("`renewal` of certificate \"{name}\""),
            renewal_defaults,
            d,
        ),
        None => renewal_defaults.clone(),
    };
    let valid_domains: Vec<String> = domains.iter().filter_map(|(_, v)| v.clone()).collect();
    let targets = match m.get("targets") {
        Some(n) => targets::targets(
            n,
            &targets::Context {
                cert: name,
                domains: &valid_domains,
                base,
                env,
            },
            d,
        ),
        None => Vec::new(),
    };

    let rollout = match m.get("rollout") {
        Some(n) => rollout(name, n, &targets, d),
        None => Rollout::default(),
    };

    Some(CertificateConfig {
        name: name.to_string(),
        domains: valid_domains,
        key,
        reuse_key,
        challenge: challenge?,
        renewal,
        targets,
        rollout,
    })
}

/// `rollout:` of certificate `cert`, whose targets are `targets`.
fn rollout(cert: &str, node: &Node, targets: &[TargetConfig], d: &mut Diag) -> Rollout {
    let mut out = Rollout::default();
    let Some(m) = Map::open(
        node,
        format!("`rollout` of certificate \"{cert}\""),
        ROLLOUT_KEYS,
        &[],
        d,
    ) else {
        return out;
    };
    if let Some(n) = m.get("waves") {
        let mut placed: Vec<(String, yaml::Pos)> = Vec::new();
        for (i, wave) in yaml::list(n, "`waves`", d)
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let label = format!("wave {} of `waves`", i + 1);
            let names = yaml::string_list(wave, &label, d);
            if names.is_empty() && matches!(wave.value, Value::Seq(_)) {
                d.at(wave.pos, format!("{label} is empty"));
            }
            let mut this = Vec::new();
            for (name, item) in names {
                if !targets.iter().any(|t| t.name == name) {
                    let known: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
                    d.at(
                        item.pos,
                        format!(
                            "`waves` names target \"{name}\", which certificate \"{cert}\" does not have (its targets: {})",
                            if known.is_empty() { "none".to_string() } else { known.join(", ") }
                        ),
                    );
                } else if let Some((_, first)) = placed.iter().find(|(p, _)| *p == name) {
                    d.at(
                        item.pos,
                        format!("target \"{name}\" is in more than one wave (first at {first})"),
                    );
                } else {
                    placed.push((name.clone(), item.pos));
                    this.push(name);
                }
            }
            out.waves.push(this);
        }
    }
    if let Some(n) = m.get("max_parallel") {
        match n
            .scalar()
            .filter(|_| n.is_plain())
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|p| (1..=1024).contains(p))
        {
            Some(p) => out.max_parallel = p,
            None => d.at(
                n.pos,
                format!(
                    "`max_parallel` must be a whole number from 1 to 1024, not {}",
                    n.describe()
                ),
            ),
        }
    }
    if let Some(n) = m.get("on_failure") {
        match yaml::string(n, "`on_failure`", d).as_deref() {
            Some("halt") => out.on_failure = OnFailure::Halt,
            Some("continue") => out.on_failure = OnFailure::Continue,
            Some(_) => d.at(
                n.pos,
                format!(
                    "`on_failure` must be halt or continue, not {}",
                    n.describe()
                ),
            ),
            None => {}
        }
    }
    if let Some(n) = m.get("rollback") {
        out.rollback = yaml::boolean(n, "`rollback`", d).unwrap_or(false);
    }
    out
}

/// The domains as written (lower-cased), each with its node and, when it
/// is valid and not a repeat, its accepted form.
type Domains<'a> = Vec<(&'a Node, Option<String>)>;

fn domains<'a>(cert: &str, node: &'a Node, d: &mut Diag) -> Domains<'a> {
    let items = yaml::string_list(node, "`domains`", d);
    if items.is_empty() && matches!(node.value, Value::Seq(_)) {
        d.at(
            node.pos,
            format!("`domains` is empty: certificate \"{cert}\" needs at least one domain"),
        );
    }
    let mut seen: Vec<String> = Vec::new();
    items
        .into_iter()
        .map(|(raw, item)| match values::domain(&raw) {
            Err(why) => {
                d.at(
                    item.pos,
                    format!("{raw:?} is not a valid domain name: {why}"),
                );
                (item, None)
            }
            Ok(domain) if seen.contains(&domain) => {
                d.at(
                    item.pos,
                    format!("{domain:?} is listed twice in certificate \"{cert}\""),
                );
                (item, None)
            }
            Ok(domain) => {
                seen.push(domain.clone());
                (item, Some(domain))
            }
        })
        .collect()
}

/// `challenge:` — a solver name, or a mapping from domain pattern to solver
/// name — checked against the solvers and the certificate's domains.
fn challenge(
    cert: &str,
    node: &Node,
    domains: &Domains<'_>,
    solvers: &Solvers,
    d: &mut Diag,
) -> Option<ChallengeChoice> {
    let mut ok = true;
    let choice = match &node.value {
        Value::Scalar { .. } => {
            let solver = yaml::string(node, "`challenge`", d)?;
            ok &= solver_defined(cert, node, &solver, solvers, d);
            ChallengeChoice::All(solver)
        }
        Value::Map(_) => {
            let mut list = Vec::new();
            for (pattern, key, value) in named_entries(node, "`challenge`", "pattern", d) {
                let pattern = pattern.to_ascii_lowercase();
                let written = domains
                    .iter()
                    .any(|(n, _)| n.scalar().is_some_and(|s| s.eq_ignore_ascii_case(&pattern)));
                if pattern != "*" && !written {
                    ok = false;
                    d.at(
                        key.pos,
                        format!(
                            "pattern {pattern:?} in `challenge` is not a domain of certificate \
                             \"{cert}\" (use one of its domains, or \"*\" for the rest)"
                        ),
                    );
                }
                let Some(solver) = yaml::string(value, "each solver in `challenge`", d) else {
                    ok = false;
                    continue;
                };
                ok &= solver_defined(cert, value, &solver, solvers, d);
                list.push((pattern, solver));
            }
            ChallengeChoice::ByPattern(list)
        }
        Value::Seq(_) => {
            d.at(
                node.pos,
                "`challenge` must be a solver's name or a mapping from domain to solver name, not a list",
            );
            return None;
        }
    };

    // Every domain needs a solver that can prove it.
    for (item, domain) in domains {
        let Some(domain) = domain else { continue };
        match choice.solver_for(domain) {
            None => {
                ok = false;
                d.at(
                    item.pos,
                    format!(
                        "domain {domain:?} of certificate \"{cert}\" has no challenge solver: \
                         name it in `challenge` or add a \"*\" entry"
                    ),
                );
            }
            Some(solver) => {
                let ty = solvers.challenge_type(solver);
                if domain.starts_with("*.") && ty.is_some_and(|t| t != "dns-01") {
                    ok = false;
                    d.at(
                        item.pos,
                        format!(
                            "{domain:?} is a wildcard and needs a dns-01 solver, but challenge \
                             \"{solver}\" is {}",
                            ty.unwrap_or_default()
                        ),
                    );
                }
            }
        }
    }
    ok.then_some(choice)
}

/// Whether the solver a certificate names exists (or cannot be checked).
fn solver_defined(cert: &str, node: &Node, solver: &str, solvers: &Solvers, d: &mut Diag) -> bool {
    if solvers.defined(solver) == Some(false) {
        d.at(
            node.pos,
            format!(
                "certificate \"{cert}\" uses challenge \"{solver}\", which is not defined under `challenges`"
            ),
        );
        return false;
    }
    true
}

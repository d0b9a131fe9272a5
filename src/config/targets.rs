//! A certificate's `targets:` list: where the certificate goes (`file`,
//! `exec`, `ssh`, `haproxy`, `webhook`), what reloads the service, and how
//! the result is verified.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::monitoring;
use super::values;
use super::yaml::{self, peek, Map, Node, Value};
use super::{
    CommandSpec, Diag, ExecTarget, FileSet, FileTarget, HaproxySocket, HaproxyTarget, Layout,
    Pkcs12File, SshTarget, Starttls, TargetConfig, TargetKind, Text, VerifyConfig, WebhookTarget,
};

type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

const FILE_KEYS: &[&str] = &[
    "name",
    "type",
    "cert",
    "chain",
    "fullchain",
    "key",
    "combined",
    "pkcs12",
    "pkcs12_password",
    "pkcs12_name",
    "mode",
    "owner",
    "group",
    "layout",
    "reload",
    "reload_timeout",
    "verify",
];
const EXEC_KEYS: &[&str] = &[
    "name",
    "type",
    "command",
    "timeout",
    "reload",
    "reload_timeout",
    "verify",
];
const SSH_KEYS: &[&str] = &[
    "name",
    "type",
    "host",
    "port",
    "user",
    "identity",
    "known_hosts",
    "jump",
    "ssh_config",
    "cert",
    "chain",
    "fullchain",
    "key",
    "combined",
    "pkcs12",
    "pkcs12_password",
    "pkcs12_name",
    "mode",
    "owner",
    "group",
    "layout",
    "reload",
    "reload_timeout",
    "verify",
];
const HAPROXY_KEYS: &[&str] = &[
    "name",
    "type",
    "socket",
    "combined",
    "cert_name",
    "mode",
    "owner",
    "group",
    "timeout",
    "reload",
    "reload_timeout",
    "verify",
];
const WEBHOOK_KEYS: &[&str] = &[
    "name",
    "type",
    "url",
    "headers",
    "timeout",
    "trust_roots",
    "reload",
    "reload_timeout",
    "verify",
];
const SUPPORTED_TYPES: &[&str] = &["file", "exec", "ssh", "haproxy", "webhook"];
const VERIFY_KEYS: &[&str] = &["connect", "server_name", "timeout", "starttls"];
const FILE_SLOTS: [&str; 6] = ["cert", "chain", "fullchain", "key", "combined", "pkcs12"];

const DEFAULT_MODE: u32 = 0o600;
const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_VERIFY_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_HAPROXY_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(30);

/// What a target's keys are read against: its certificate's name and valid
/// domains, the configuration's folder, the environment secrets come from.
pub(super) struct Context<'a> {
    pub cert: &'a str,
    pub domains: &'a [String],
    pub base: &'a Path,
    pub env: Env<'a>,
}

/// The targets of certificate `cx.cert`.
pub(super) fn targets(node: &Node, cx: &Context<'_>, d: &mut Diag) -> Vec<TargetConfig> {
    let cert = cx.cert;
    let Some(items) = yaml::list(node, "`targets`", d) else {
        return Vec::new();
    };
    let mut seen: Vec<(String, yaml::Pos)> = Vec::new();
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let name = match &item.value {
            Value::Map(_) => target_name(cert, item, &mut seen, d),
            _ => None,
        };
        let what = match &name {
            Some(n) => format!("target \"{n}\""),
            None => format!("target #{} of certificate \"{cert}\"", i + 1),
        };
        if let Some(t) = target(item, &what, name, cx, d) {
            out.push(t);
        }
    }
    out
}

/// The target's `name`, checked and unique within the certificate.
fn target_name(
    cert: &str,
    item: &Node,
    seen: &mut Vec<(String, yaml::Pos)>,
    d: &mut Diag,
) -> Option<String> {
    let node = peek(item, "name").filter(|n| !n.is_null())?;
    let name = yaml::nonempty_string(node, "`name`", d)?;
    if !values::is_valid_name(&name) {
        d.at(node.pos, values::invalid_name("target", &name));
        return None;
    }
    if let Some((_, first)) = seen.iter().find(|(n, _)| *n == name) {
        d.at(
            node.pos,
            format!(
                "target name \"{name}\" is used twice in certificate \"{cert}\" (first at {first})"
            ),
        );
        return None;
    }
    seen.push((name.clone(), node.pos));
    Some(name)
}

fn target(
    node: &Node,
    what: &str,
    name: Option<String>,
    cx: &Context<'_>,
    d: &mut Diag,
) -> Option<TargetConfig> {
    let (domains, base) = (cx.domains, cx.base);
    if !matches!(node.value, Value::Map(_)) {
        d.at(
            node.pos,
            format!("{what} must be a mapping, not {}", node.describe()),
        );
        return None;
    }
    if peek(node, "name").is_none_or(Node::is_null) {
        d.at(node.pos, format!("missing key `name` in {what}"));
    }
    let Some(ty_node) = peek(node, "type").filter(|n| !n.is_null()) else {
        d.at(node.pos, format!("missing key `type` in {what}"));
        return None;
    };
    let ty = ty_node.scalar().unwrap_or_default();
    let keys = match ty {
        "file" => FILE_KEYS,
        "exec" => EXEC_KEYS,
        "ssh" => SSH_KEYS,
        "haproxy" => HAPROXY_KEYS,
        "webhook" => WEBHOOK_KEYS,
        _ => {
            d.at(
                ty_node.pos,
                format!(
                    "`type` must be one of: {}, not {}",
                    SUPPORTED_TYPES.join(", "),
                    ty_node.describe()
                ),
            );
            return None;
        }
    };
    let m = Map::open(node, what, keys, &[], d)?;

    let kind = match ty {
        "file" => file_target(&m, cx, false, d).map(TargetKind::File),
        "ssh" => ssh_target(&m, cx, d).map(TargetKind::Ssh),
        "haproxy" => haproxy_target(&m, base, d).map(TargetKind::Haproxy),
        "webhook" => webhook_target(&m, base, cx.env, d).map(TargetKind::Webhook),
        _ => exec_target(&m, base, d).map(TargetKind::Exec),
    };
    let reload_timeout = m
        .get("reload_timeout")
        .and_then(|n| values::duration(n, "`reload_timeout`", true, d));
    let reload = m
        .get("reload")
        .and_then(|n| values::argv(n, "`reload`", base, d));
    if let (None, Some((key, v))) = (m.get("reload"), m.entry("reload_timeout")) {
        if !v.is_null() {
            d.at(key.pos, "`reload_timeout` has no effect without `reload`");
        }
    }
    let verify = m.get("verify").and_then(|n| verify(n, what, domains, d));

    Some(TargetConfig {
        name: name?,
        kind: kind?,
        reload: reload.map(|argv| CommandSpec {
            argv,
            timeout: reload_timeout.unwrap_or(DEFAULT_COMMAND_TIMEOUT),
        }),
        verify,
    })
}

/// The file keys of a `file` target, or of an `ssh` target (`remote`: paths
/// on the remote host, which must be absolute).
fn file_target(m: &Map<'_>, cx: &Context<'_>, remote: bool, d: &mut Diag) -> Option<FileTarget> {
    let base = cx.base;
    let mut files = FileSet::default();
    let mut pkcs12_path = None;
    let mut written: Vec<(PathBuf, &str)> = Vec::new();
    let mut bad_remote = false;
    for slot in FILE_SLOTS {
        let Some(n) = m.get(slot) else { continue };
        let p = if remote {
            let Some(s) = yaml::nonempty_string(n, &format!("`{slot}`"), d) else {
                continue;
            };
            let p = PathBuf::from(&s);
            if !p.is_absolute() || p.file_name().is_none() {
                d.at(
                    n.pos,
                    format!(
                        "`{slot}` is a file on the remote host and must be an absolute path, not {s:?}"
                    ),
                );
                bad_remote = true;
                continue;
            }
            p
        } else {
            let Some(p) = values::path(n, &format!("`{slot}`"), base, d) else {
                continue;
            };
            p
        };
        if let Some((_, other)) = written.iter().find(|(q, _)| *q == p) {
            d.at(
                n.pos,
                format!("`{slot}` and `{other}` name the same file {}", p.display()),
            );
        }
        written.push((p.clone(), slot));
        let field = match slot {
            "cert" => &mut files.cert,
            "chain" => &mut files.chain,
            "fullchain" => &mut files.fullchain,
            "key" => &mut files.key,
            "combined" => &mut files.combined,
            _ => &mut pkcs12_path,
        };
        *field = Some(p);
    }
    let any_given = FILE_SLOTS.iter().any(|s| m.get(s).is_some());
    if !any_given {
        d.at(
            m.pos(),
            format!(
                "{} writes no file: set at least one of {}",
                m.what,
                FILE_SLOTS.join(", ")
            ),
        );
    }
    let mode = match m.get("mode") {
        Some(n) => values::mode(n, d),
        None => Some(DEFAULT_MODE),
    };
    let owner = m
        .get("owner")
        .and_then(|n| yaml::nonempty_string(n, "`owner`", d));
    let group = m
        .get("group")
        .and_then(|n| yaml::nonempty_string(n, "`group`", d));
    let layout = match m.get("layout") {
        None => Some(Layout::Files),
        Some(n) => match yaml::string(n, "`layout`", d).as_deref() {
            Some("files") => Some(Layout::Files),
            Some("links") => Some(Layout::Links),
            Some(_) => {
                d.at(
                    n.pos,
                    format!("`layout` must be files or links, not {}", n.describe()),
                );
                None
            }
            None => None,
        },
    };
    let pkcs12 = pkcs12_options(m, cx, d);
    files.pkcs12 = match (pkcs12_path, pkcs12) {
        (Some(path), Some((password, name))) => Some(Pkcs12File {
            path,
            password,
            name,
        }),
        (None, _) => None,
        (Some(_), None) => return None,
    };
    if bad_remote
        || !any_given
        || written.len() != FILE_SLOTS.iter().filter(|s| m.get(s).is_some()).count()
    {
        return None;
    }
    Some(FileTarget {
        files,
        mode: mode?,
        owner,
        group,
        layout: layout?,
    })
}

/// `pkcs12_password` and `pkcs12_name` (defaulting to the certificate's
/// name), checked against `pkcs12`; `None` when `pkcs12` is absent or either
/// is invalid (each problem reported).
fn pkcs12_options(m: &Map<'_>, cx: &Context<'_>, d: &mut Diag) -> Option<(super::Secret, String)> {
    let Some(file) = m.get("pkcs12") else {
        for key in ["pkcs12_password", "pkcs12_name"] {
            if let Some((k, v)) = m.entry(key) {
                if !v.is_null() {
                    d.at(k.pos, format!("`{key}` has no effect without `pkcs12`"));
                }
            }
        }
        return None;
    };
    let password = match m.get("pkcs12_password") {
        Some(n) => values::secret(n, "pkcs12_password", cx.base, cx.env, d),
        None => {
            d.at(
                file.pos,
                "`pkcs12` needs `pkcs12_password`: { env: NAME } or { file: PATH } \
                 (an empty password is not allowed)",
            );
            None
        }
    };
    let name = match m.get("pkcs12_name") {
        None => Some(cx.cert.to_string()),
        Some(n) => yaml::nonempty_string(n, "`pkcs12_name`", d).and_then(|s| {
            // A friendlyName is a BMPString: no character beyond U+FFFF.
            if s.chars().any(|c| c.is_control() || u32::from(c) > 0xffff) {
                d.at(
                    n.pos,
                    format!("`pkcs12_name` {s:?} holds a control character or one beyond U+FFFF"),
                );
                None
            } else {
                Some(s)
            }
        }),
    };
    Some((password?, name?))
}

fn ssh_target(m: &Map<'_>, cx: &Context<'_>, d: &mut Diag) -> Option<SshTarget> {
    let base = cx.base;
    let host = m.require("host", d).and_then(|n| {
        let s = yaml::nonempty_string(n, "`host`", d)?;
        ssh_host(&s, "`host`", n, d)
    });
    let port = match m.get("port") {
        Some(n) => {
            let p = n
                .scalar()
                .filter(|_| n.is_plain())
                .and_then(|s| s.parse::<u16>().ok())
                .filter(|p| *p > 0);
            if p.is_none() {
                d.at(
                    n.pos,
                    format!(
                        "`port` must be a port number from 1 to 65535, not {}",
                        n.describe()
                    ),
                );
            }
            p
        }
        None => Some(22),
    };
    let mut ok = true;
    let user = match m.get("user") {
        Some(n) => match yaml::nonempty_string(n, "`user`", d) {
            Some(u) if u.starts_with('-') || u.contains(['@', ' ', '\t', '\n']) => {
                d.at(n.pos, format!("`user` {u:?} is not a valid user name"));
                ok = false;
                None
            }
            Some(u) => Some(u),
            None => {
                ok = false;
                None
            }
        },
        None => None,
    };
    let mut local_path = |key: &str, ok: &mut bool| match m.get(key) {
        Some(n) => {
            let p = values::path(n, &format!("`{key}`"), base, d);
            *ok &= p.is_some();
            p
        }
        None => None,
    };
    let identity = local_path("identity", &mut ok);
    let known_hosts = local_path("known_hosts", &mut ok);
    let ssh_config = local_path("ssh_config", &mut ok);
    let jump = match m.get("jump") {
        Some(n) => match yaml::nonempty_string(n, "`jump`", d) {
            Some(j) => {
                let j2 = ssh_host(&j, "`jump`", n, d);
                ok &= j2.is_some();
                j2
            }
            None => {
                ok = false;
                None
            }
        },
        None => None,
    };
    let files = file_target(m, cx, true, d);
    if !ok {
        return None;
    }
    Some(SshTarget {
        host: host?,
        port: port?,
        user,
        identity,
        known_hosts,
        jump,
        ssh_config,
        files: files?,
    })
}

/// A host name or address ssh is given on its command line: never an option.
fn ssh_host(s: &str, label: &str, n: &Node, d: &mut Diag) -> Option<String> {
    if s.starts_with('-') || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        d.at(
            n.pos,
            format!("{label} must be a host name or address, not {s:?}"),
        );
        return None;
    }
    Some(s.to_string())
}

fn haproxy_target(m: &Map<'_>, base: &Path, d: &mut Diag) -> Option<HaproxyTarget> {
    let socket = m
        .require("socket", d)
        .and_then(|n| haproxy_socket(n, base, d));
    let combined_node = m.require("combined", d);
    let combined = combined_node.and_then(|n| values::path(n, "`combined`", base, d));
    let cert_name = match (m.get("cert_name"), &combined) {
        (Some(n), _) => yaml::nonempty_string(n, "`cert_name`", d)
            .and_then(|s| haproxy_name(&s, "`cert_name`", n, d)),
        (None, Some(p)) => {
            let n = combined_node.expect("combined was given");
            let name = haproxy_name(&p.display().to_string(), "the `combined` path", n, d);
            if name.is_none() {
                d.at(n.pos, "set `cert_name` to the name HAProxy knows");
            }
            name
        }
        (None, None) => None,
    };
    let mode = match m.get("mode") {
        Some(n) => values::mode(n, d),
        None => Some(DEFAULT_MODE),
    };
    let owner = m
        .get("owner")
        .and_then(|n| yaml::nonempty_string(n, "`owner`", d));
    let group = m
        .get("group")
        .and_then(|n| yaml::nonempty_string(n, "`group`", d));
    let timeout = match m.get("timeout") {
        Some(n) => values::duration(n, "`timeout`", true, d),
        None => Some(DEFAULT_HAPROXY_TIMEOUT),
    };
    Some(HaproxyTarget {
        socket: socket?,
        file: FileTarget {
            files: FileSet {
                combined: Some(combined?),
                ..FileSet::default()
            },
            mode: mode?,
            owner,
            group,
            layout: Layout::Files,
        },
        cert_name: cert_name?,
        timeout: timeout?,
    })
}

/// `socket:` a unix socket path (relative to the configuration's folder),
/// or `host:port` on a loopback address. HAProxy's own prefixes `unix@`,
/// `ipv4@` and `ipv6@` are accepted.
fn haproxy_socket(n: &Node, base: &Path, d: &mut Diag) -> Option<HaproxySocket> {
    let raw = yaml::nonempty_string(n, "`socket`", d)?;
    if let Some(path) = raw.strip_prefix("unix@") {
        return Some(HaproxySocket::Unix(values::resolve(base, path)));
    }
    let addr = raw
        .strip_prefix("ipv4@")
        .or_else(|| raw.strip_prefix("ipv6@"))
        .unwrap_or(&raw);
    if !values::is_host_port(addr) {
        if addr != raw {
            d.at(
                n.pos,
                format!("`socket` {raw:?} must be an address and port after its prefix"),
            );
            return None;
        }
        return Some(HaproxySocket::Unix(values::resolve(base, &raw)));
    }
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    if !is_loopback_host(host) {
        d.at(
            n.pos,
            format!(
                "`socket` {raw:?} is not on this machine: HAProxy's runtime API carries the \
                 private key in clear, so a TCP socket must be on a loopback address \
                 (127.0.0.1, [::1], localhost); use a unix socket, or an ssh target for a \
                 remote HAProxy"
            ),
        );
        return None;
    }
    Some(HaproxySocket::Tcp(addr.to_string()))
}

/// A certificate name HAProxy's command line can carry: one word, no `;`
/// (which separates commands) and no backslash.
fn haproxy_name(s: &str, label: &str, n: &Node, d: &mut Diag) -> Option<String> {
    if s.chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == ';' || c == '\\')
    {
        d.at(
            n.pos,
            format!(
                "{label} {s:?} cannot be a certificate name on HAProxy's runtime API \
                 (no spaces, `;` or backslashes)"
            ),
        );
        return None;
    }
    Some(s.to_string())
}

/// `127.0.0.0/8`, `::1` (bracketed or not) or `localhost`.
pub(super) fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost") || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn webhook_target(m: &Map<'_>, base: &Path, env: Env<'_>, d: &mut Diag) -> Option<WebhookTarget> {
    let url = m.require("url", d).and_then(|n| {
        let url = monitoring::url(n, base, env, d)?;
        webhook_url_is_private(&url, n, d).then_some(url)
    });
    let headers = match m.get("headers") {
        Some(n) => monitoring::headers(n, base, env, d),
        None => Some(Vec::new()),
    };
    let timeout = match m.get("timeout") {
        Some(n) => values::duration(n, "`timeout`", true, d),
        None => Some(DEFAULT_WEBHOOK_TIMEOUT),
    };
    let trust_roots = match m.get("trust_roots") {
        Some(n) => monitoring::trust_roots(n, base, d),
        None => Some(Vec::new()),
    };
    Some(WebhookTarget {
        url: url?,
        headers: headers?,
        timeout: timeout?,
        trust_roots: trust_roots?,
    })
}

/// The private key must not travel in clear: `https://`, or `http://` to a
/// loopback address only.
fn webhook_url_is_private(url: &Text, n: &Node, d: &mut Diag) -> bool {
    let Ok(u) = reqwest::Url::parse(url.expose()) else {
        return false;
    };
    if u.scheme() == "https" || u.host_str().is_some_and(is_loopback_host) {
        return true;
    }
    let shown = match url {
        Text::Plain(s) => format!("{s:?}"),
        Text::Secret(s) => format!("from {}", s.origin()),
    };
    d.at(
        n.pos,
        format!(
            "`url` {shown} is plain http:// to a host that is not a loopback address: the \
             webhook carries the private key, so it must be https:// (http:// only to \
             127.0.0.1, [::1] or localhost)"
        ),
    );
    false
}

fn exec_target(m: &Map<'_>, base: &Path, d: &mut Diag) -> Option<ExecTarget> {
    let argv = m
        .require("command", d)
        .and_then(|n| values::argv(n, "`command`", base, d));
    let timeout = match m.get("timeout") {
        Some(n) => values::duration(n, "`timeout`", true, d),
        None => Some(DEFAULT_COMMAND_TIMEOUT),
    };
    Some(ExecTarget {
        command: CommandSpec {
            argv: argv?,
            timeout: timeout?,
        },
    })
}

fn verify(node: &Node, target: &str, domains: &[String], d: &mut Diag) -> Option<VerifyConfig> {
    let m = Map::open(node, format!("`verify` of {target}"), VERIFY_KEYS, &[], d)?;
    let connect = m.require("connect", d).and_then(|n| {
        let s = yaml::string(n, "`connect`", d)?;
        if values::is_host_port(&s) {
            Some(s)
        } else {
            d.at(
                n.pos,
                format!(
                    "`connect` must be host:port, like 127.0.0.1:443 or [::1]:443, not {}",
                    n.describe()
                ),
            );
            None
        }
    });
    let server_name = match m.get("server_name") {
        Some(n) => server_name(n, domains, d),
        None => match domains.iter().find(|x| !x.starts_with("*.")) {
            Some(first) => Some(first.clone()),
            None => {
                if !domains.is_empty() {
                    d.at(
                        m.pos(),
                        format!(
                            "{} needs `server_name`: every domain of the certificate is a wildcard",
                            m.what
                        ),
                    );
                }
                None
            }
        },
    };
    let timeout = match m.get("timeout") {
        Some(n) => values::duration(n, "`timeout`", true, d),
        None => Some(DEFAULT_VERIFY_TIMEOUT),
    };
    let starttls = match m.get("starttls") {
        None => Some(None),
        Some(n) => {
            let s = n
                .scalar()
                .filter(|_| n.is_plain())
                .and_then(Starttls::parse);
            if s.is_none() {
                let all: Vec<&str> = Starttls::ALL.iter().map(|s| s.as_str()).collect();
                d.at(
                    n.pos,
                    format!(
                        "`starttls` must be one of: {}, not {}",
                        all.join(", "),
                        n.describe()
                    ),
                );
            }
            s.map(Some)
        }
    };
    Some(VerifyConfig {
        connect: connect?,
        server_name: server_name?,
        timeout: timeout?,
        starttls: starttls?,
    })
}

/// The SNI to send: a plain domain name the certificate covers.
fn server_name(node: &Node, domains: &[String], d: &mut Diag) -> Option<String> {
    let raw = yaml::string(node, "`server_name`", d)?;
    let name = match values::domain(&raw) {
        Ok(n) if !n.starts_with("*.") => n,
        Ok(_) => {
            d.at(
                node.pos,
                format!("`server_name` must be a name a client asks for, not the wildcard {raw:?}"),
            );
            return None;
        }
        Err(why) => {
            d.at(
                node.pos,
                format!("{raw:?} is not a valid domain name: {why}"),
            );
            return None;
        }
    };
    if !domains.is_empty() && !domains.iter().any(|dom| values::covers(dom, &name)) {
        d.at(
            node.pos,
            format!(
                "`server_name` {name:?} is not covered by the certificate's domains ({})",
                domains.join(", ")
            ),
        );
        return None;
    }
    Some(name)
}

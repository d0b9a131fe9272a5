//! The `metrics:` and `notify:` sections: where Prometheus metrics go, and
//! who is told when a certificate is renewed, a deployment fails, a target
//! serves the wrong certificate, or a certificate is about to expire.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::values;
use super::yaml::{self, named_entries, peek, Map, Node, Value};
use super::{
    CommandSpec, Diag, EventKind, MetricsConfig, NotifierConfig, NotifierKind, Text, WebhookConfig,
    WebhookFormat,
};

const METRICS_KEYS: &[&str] = &["listen", "textfile"];
const NOTIFIER_TYPES: &[&str] = &["webhook", "exec"];
const WEBHOOK_KEYS: &[&str] = &[
    "type",
    "name",
    "url",
    "format",
    "headers",
    "timeout",
    "trust_roots",
    "events",
    "expiring_days",
];
const EXEC_KEYS: &[&str] = &[
    "type",
    "name",
    "command",
    "timeout",
    "events",
    "expiring_days",
];
const WEBHOOK_FORMATS: &[&str] = &["json", "slack"];
/// Headers certherd sets itself (or the HTTP client does).
const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "host",
    "transfer-encoding",
    "connection",
];

pub const DEFAULT_EXPIRING_DAYS: u32 = 14;
pub const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_NOTIFY_EXEC_TIMEOUT: Duration = Duration::from_secs(60);

pub(super) fn metrics(node: &Node, base: &Path, d: &mut Diag) -> Option<MetricsConfig> {
    let m = Map::open(node, "`metrics`", METRICS_KEYS, &[], d)?;
    // `Some(None)`: given, and invalid.
    let listen = m.get("listen").map(|n| {
        let s = yaml::string(n, "`listen`", d)?;
        let addr = s.parse().ok();
        if addr.is_none() {
            d.at(
                n.pos,
                format!(
                    "`listen` must be an IP address and port, like \"127.0.0.1:9611\" or \
                     \"[::1]:9611\", not {}",
                    n.describe()
                ),
            );
        }
        addr
    });
    let textfile = m.get("textfile").map(|n| {
        let p = values::path(n, "`textfile`", base, d)?;
        if p.extension().is_some_and(|e| e == "prom") {
            Some(p)
        } else {
            d.at(
                n.pos,
                format!(
                    "`textfile` must end in .prom (node_exporter's textfile collector reads \
                     only *.prom files), not {}",
                    n.describe()
                ),
            );
            None
        }
    });
    if listen.is_none() && textfile.is_none() {
        d.at(
            m.pos(),
            "`metrics` needs `listen` (where `certherd run` serves /metrics) or `textfile` \
             (a .prom file for node_exporter's textfile collector), or both",
        );
        return None;
    }
    Some(MetricsConfig {
        listen: listen.map_or(Some(None), |l| l.map(Some))?,
        textfile: textfile.map_or(Some(None), |t| t.map(Some))?,
    })
}

/// The `notify:` list; invalid entries are reported and left out.
pub(super) fn notify(
    node: &Node,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    d: &mut Diag,
) -> Vec<NotifierConfig> {
    let Some(items) = yaml::list(node, "`notify`", d) else {
        return Vec::new();
    };
    let mut names: Vec<(String, yaml::Pos)> = Vec::new();
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        if let Some(n) = notifier(i + 1, item, &mut names, base, env, d) {
            out.push(n);
        }
    }
    out
}

fn notifier(
    number: usize,
    node: &Node,
    names: &mut Vec<(String, yaml::Pos)>,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    d: &mut Diag,
) -> Option<NotifierConfig> {
    if !matches!(node.value, Value::Map(_)) {
        d.at(
            node.pos,
            format!(
                "notifier #{number} must be a mapping, not {}",
                node.describe()
            ),
        );
        return None;
    }
    // `Some(None)`: a `name` was given and is invalid.
    let name = peek(node, "name").filter(|n| !n.is_null()).map(|n| {
        let name = yaml::nonempty_string(n, "`name`", d)?;
        if let Some((_, first)) = names.iter().find(|(x, _)| *x == name) {
            d.at(
                n.pos,
                format!("notifier name \"{name}\" is used twice (first at {first})"),
            );
            return None;
        }
        names.push((name.clone(), n.pos));
        Some(name)
    });
    let what = match &name {
        Some(Some(n)) => format!("notifier \"{n}\""),
        _ => format!("notifier #{number}"),
    };
    let Some(ty_node) = peek(node, "type").filter(|n| !n.is_null()) else {
        d.at(node.pos, format!("missing key `type` in {what}"));
        return None;
    };
    let (ty, keys) = match ty_node.scalar() {
        Some("webhook") => ("webhook", WEBHOOK_KEYS),
        Some("exec") => ("exec", EXEC_KEYS),
        _ => {
            d.at(
                ty_node.pos,
                format!(
                    "`type` must be one of: {}, not {}",
                    NOTIFIER_TYPES.join(", "),
                    ty_node.describe()
                ),
            );
            return None;
        }
    };
    let m = Map::open(node, what.as_str(), keys, &[], d)?;

    let events = match m.get("events") {
        Some(n) => events(n, d),
        None => Some(EventKind::ALL.to_vec()),
    };
    let expiring_days = match m.entry("expiring_days") {
        Some((key, n)) if !n.is_null() => {
            let days = expiring_days(n, d);
            if events
                .as_ref()
                .is_some_and(|e| !e.contains(&EventKind::Expiring))
            {
                d.at(
                    key.pos,
                    format!(
                        "`expiring_days` has no effect: `events` of {what} does not include \
                         expiring"
                    ),
                );
                None
            } else {
                days
            }
        }
        _ => Some(DEFAULT_EXPIRING_DAYS),
    };
    let kind = match ty {
        "webhook" => webhook(&m, base, env, d).map(NotifierKind::Webhook),
        _ => exec(&m, base, d).map(NotifierKind::Exec),
    };
    let name = match name {
        None => format!("{ty} #{number}"),
        Some(n) => n?,
    };
    Some(NotifierConfig {
        name,
        events: events?,
        expiring_days: expiring_days?,
        kind: kind?,
    })
}

/// `events: [renewed, expiring]`: each known and listed once.
fn events(node: &Node, d: &mut Diag) -> Option<Vec<EventKind>> {
    let items = yaml::string_list(node, "`events`", d);
    let Value::Seq(nodes) = &node.value else {
        return None;
    };
    let all: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
    if nodes.is_empty() {
        d.at(
            node.pos,
            format!(
                "`events` is empty: list at least one of: {} (or leave `events` out for all)",
                all.join(", ")
            ),
        );
        return None;
    }
    let mut ok = items.len() == nodes.len();
    let mut kinds: Vec<EventKind> = Vec::new();
    for (s, item) in items {
        match EventKind::parse(&s) {
            None => {
                ok = false;
                d.at(
                    item.pos,
                    format!(
                        "each item of `events` must be one of: {}, not {}",
                        all.join(", "),
                        item.describe()
                    ),
                );
            }
            Some(k) if kinds.contains(&k) => {
                ok = false;
                d.at(item.pos, format!("event {k} is listed twice in `events`"));
            }
            Some(k) => kinds.push(k),
        }
    }
    kinds.sort();
    ok.then_some(kinds)
}

fn expiring_days(node: &Node, d: &mut Diag) -> Option<u32> {
    let days = node
        .scalar()
        .filter(|s| node.is_plain() && !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse::<u32>().ok())
        .filter(|n| *n >= 1);
    if days.is_none() {
        d.at(
            node.pos,
            format!(
                "`expiring_days` must be a whole number of days, at least 1, not {}",
                node.describe()
            ),
        );
    }
    days
}

fn webhook(
    m: &Map<'_>,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    d: &mut Diag,
) -> Option<WebhookConfig> {
    let url = m.require("url", d).and_then(|n| url(n, base, env, d));
    let format = match m.get("format") {
        None => Some(WebhookFormat::Json),
        Some(n) => match n.scalar() {
            Some("json") => Some(WebhookFormat::Json),
            Some("slack") => Some(WebhookFormat::Slack),
            _ => {
                d.at(
                    n.pos,
                    format!(
                        "`format` must be one of: {}, not {}",
                        WEBHOOK_FORMATS.join(", "),
                        n.describe()
                    ),
                );
                None
            }
        },
    };
    let headers = match m.get("headers") {
        Some(n) => headers(n, base, env, d),
        None => Some(Vec::new()),
    };
    let timeout = match m.get("timeout") {
        Some(n) => values::duration(n, "`timeout`", true, d),
        None => Some(DEFAULT_WEBHOOK_TIMEOUT),
    };
    let trust_roots = match m.get("trust_roots") {
        Some(n) => trust_roots(n, base, d),
        None => Some(Vec::new()),
    };
    Some(WebhookConfig {
        url: url?,
        format: format?,
        headers: headers?,
        timeout: timeout?,
        trust_roots: trust_roots?,
    })
}

/// `trust_roots: [a.pem, ...]`: each a readable PEM file with a certificate.
pub(super) fn trust_roots(node: &Node, base: &Path, d: &mut Diag) -> Option<Vec<PathBuf>> {
    let items = yaml::list(node, "`trust_roots`", d).unwrap_or_default();
    let roots: Vec<_> = items
        .iter()
        .filter_map(|item| values::trust_root(item, base, d))
        .collect();
    (roots.len() == items.len()).then_some(roots)
}

/// A string, or a secret `{ env }` / `{ file }`.
fn text(
    node: &Node,
    key: &str,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    d: &mut Diag,
) -> Option<Text> {
    match &node.value {
        Value::Scalar { .. } => {
            yaml::nonempty_string(node, &format!("`{key}`"), d).map(Text::Plain)
        }
        _ => values::secret(node, key, base, env, d).map(Text::Secret),
    }
}

/// The webhook's URL: inline, or a secret when it holds a token. A secret
/// URL is never shown in a message.
pub(super) fn url(
    node: &Node,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    d: &mut Diag,
) -> Option<Text> {
    let url = text(node, "url", base, env, d)?;
    let ok = reqwest::Url::parse(url.expose()).is_ok_and(|u| {
        matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty())
    });
    if ok {
        return Some(url);
    }
    let problem = match &url {
        Text::Plain(_) => format!(
            "`url` must be an http:// or https:// URL, like https://hooks.example.com/certherd, \
             not {}",
            node.describe()
        ),
        Text::Secret(s) => format!(
            "the `url` from {} is not an http:// or https:// URL",
            s.origin()
        ),
    };
    d.at(node.pos, problem);
    None
}

/// Whether a header carries a credential by its name, and so must be a secret.
fn is_credential_header(lower: &str) -> bool {
    matches!(lower, "authorization" | "proxy-authorization" | "cookie")
        || ["token", "secret", "password", "api-key", "apikey"]
            .iter()
            .any(|w| lower.contains(w))
}

pub(super) fn headers(
    node: &Node,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    d: &mut Diag,
) -> Option<Vec<(String, Text)>> {
    let entries = named_entries(node, "`headers`", "header", d);
    let mut ok = matches!(node.value, Value::Map(ref e) if e.len() == entries.len());
    let mut out: Vec<(String, Text)> = Vec::new();
    let mut seen: Vec<(String, yaml::Pos)> = Vec::new();
    for (name, key, value) in entries {
        let lower = name.to_ascii_lowercase();
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            ok = false;
            d.at(key.pos, format!("{name:?} is not a valid HTTP header name"));
            continue;
        }
        if RESERVED_HEADERS.contains(&lower.as_str()) {
            ok = false;
            d.at(
                key.pos,
                format!("header `{name}` is set by certherd and cannot be configured"),
            );
            continue;
        }
        if let Some((_, first)) = seen.iter().find(|(n, _)| *n == lower) {
            ok = false;
            d.at(
                key.pos,
                format!("header `{name}` is given twice (first at {first})"),
            );
            continue;
        }
        seen.push((lower.clone(), key.pos));
        if value.is_null() {
            ok = false;
            d.at(value.pos, format!("header `{name}` has no value"));
            continue;
        }
        let v = match &value.value {
            Value::Scalar { .. } if is_credential_header(&lower) => {
                ok = false;
                d.at(
                    value.pos,
                    format!(
                        "header `{name}` carries a credential and is never written inline: \
                         use {{ env: NAME }} or {{ file: PATH }}"
                    ),
                );
                continue;
            }
            Value::Scalar { .. } => {
                yaml::string(value, &format!("header `{name}`"), d).map(Text::Plain)
            }
            Value::Seq(_) => {
                d.at(
                    value.pos,
                    format!(
                        "header `{name}` must be a string or {{ env: NAME }} or {{ file: PATH }}, \
                         not a list"
                    ),
                );
                None
            }
            Value::Map(_) => values::secret(value, name, base, env, d).map(Text::Secret),
        };
        let Some(v) = v else {
            ok = false;
            continue;
        };
        if http::HeaderValue::from_str(v.expose()).is_err() {
            ok = false;
            let from = match &v {
                Text::Plain(_) => String::new(),
                Text::Secret(s) => format!(" from {}", s.origin()),
            };
            d.at(
                value.pos,
                format!(
                    "the value of header `{name}`{from} is not a valid HTTP header value \
                     (visible ASCII and spaces, one line)"
                ),
            );
            continue;
        }
        out.push((name.to_string(), v));
    }
    ok.then_some(out)
}

fn exec(m: &Map<'_>, base: &Path, d: &mut Diag) -> Option<CommandSpec> {
    let argv = m
        .require("command", d)
        .and_then(|n| values::argv(n, "`command`", base, d));
    let timeout = match m.get("timeout") {
        Some(n) => values::duration(n, "`timeout`", true, d),
        None => Some(DEFAULT_NOTIFY_EXEC_TIMEOUT),
    };
    Some(CommandSpec {
        argv: argv?,
        timeout: timeout?,
    })
}

//! Checks of single values: names, domain names, addresses, file modes,
//! paths, commands, secrets, ACME directories. Each reports its own errors
//! at the value's position and returns `None` when the value is unusable.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use super::yaml::{self, Node, Value};
use super::{parse_duration, Diag, Secret};

/// Known ACME directories: alias, URL, and the alias of its staging twin.
const DIRECTORIES: [(&str, &str, Option<&str>); 5] = [
    (
        "letsencrypt",
        "https://acme-v02.api.letsencrypt.org/directory",
        Some("letsencrypt-staging"),
    ),
    (
        "letsencrypt-staging",
        "https://acme-staging-v02.api.letsencrypt.org/directory",
        None,
    ),
    ("zerossl", "https://acme.zerossl.com/v2/DV90", None),
    (
        "google",
        "https://dv.acme-v02.api.pki.goog/directory",
        Some("google-staging"),
    ),
    (
        "google-staging",
        "https://dv.acme-v02.test-api.pki.goog/directory",
        None,
    ),
];

/// A directory alias expanded, or an `https://` URL as written.
pub fn directory(node: &Node, label: &str, d: &mut Diag) -> Option<String> {
    let s = yaml::string(node, label, d)?;
    if let Some((_, url, _)) = DIRECTORIES.iter().find(|(alias, _, _)| *alias == s) {
        return Some(url.to_string());
    }
    let host = s.strip_prefix("https://").unwrap_or("");
    if !host.is_empty() && !host.starts_with('/') && !s.contains(char::is_whitespace) {
        return Some(s);
    }
    let aliases: Vec<&str> = DIRECTORIES.iter().map(|(a, _, _)| *a).collect();
    d.at(
        node.pos,
        format!(
            "{label} must be an https:// URL or one of: {}, not {}",
            aliases.join(", "),
            node.describe()
        ),
    );
    None
}

/// The staging directory of a known production directory URL.
pub fn staging_twin(url: &str) -> Option<&'static str> {
    let (_, _, twin) = DIRECTORIES.iter().find(|(_, u, _)| *u == url)?;
    let twin = (*twin)?;
    DIRECTORIES
        .iter()
        .find(|(alias, _, _)| *alias == twin)
        .map(|(_, u, _)| *u)
}

/// Certificate and target names become file names in the state directory.
pub fn is_valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The message for a name that [`is_valid_name`] rejects.
pub fn invalid_name(noun: &str, name: &str) -> String {
    format!(
        "{noun} name {name:?} is not valid: a name starts with a letter or digit and holds \
         only letters, digits, '.', '_' and '-' (it becomes a file name)"
    )
}

/// A domain name as certherd accepts it, lower-cased; `*.` may start it.
/// The error says what is wrong with it.
pub fn domain(raw: &str) -> Result<String, &'static str> {
    if !raw.is_ascii() {
        return Err("write internationalized names in their xn-- (punycode) form");
    }
    let s = raw.to_ascii_lowercase();
    let rest = s.strip_prefix("*.").unwrap_or(&s);
    if rest.contains('*') {
        return Err("a wildcard is only allowed as the whole first label, as in *.example.com");
    }
    if rest.ends_with('.') && rest.len() > 1 {
        return Err("remove the trailing dot");
    }
    if s.len() > 253 {
        return Err("it is longer than 253 characters");
    }
    let labels: Vec<&str> = rest.split('.').collect();
    for label in &labels {
        if label.is_empty() {
            return Err("it has an empty label");
        }
        if label.len() > 63 {
            return Err("a label is longer than 63 characters");
        }
        if !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err("a label may only hold letters, digits and hyphens");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label cannot start or end with a hyphen");
        }
    }
    if labels
        .last()
        .is_some_and(|l| l.chars().all(|c| c.is_ascii_digit()))
    {
        return Err("IP addresses are not supported, only domain names");
    }
    Ok(s)
}

/// Whether `name` is `domain` or matched by it as a wildcard.
pub fn covers(domain: &str, name: &str) -> bool {
    if domain == name {
        return true;
    }
    match (domain.strip_prefix("*."), name.split_once('.')) {
        (Some(parent), Some((_, name_parent))) => parent == name_parent,
        _ => false,
    }
}

/// `host:port` or `[v6]:port`, as a TLS client dials it.
pub fn is_host_port(s: &str) -> bool {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        match rest.split_once("]:") {
            Some((h, p)) if h.parse::<Ipv6Addr>().is_ok() => (None, p),
            _ => return false,
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (Some(h), p),
            _ => return false,
        }
    };
    let port_ok = port.parse::<u16>().is_ok_and(|p| p > 0);
    let host_ok = match host {
        None => true,
        Some(h) => h.parse::<IpAddr>().is_ok() || (domain(h).is_ok() && !h.starts_with('*')),
    };
    port_ok && host_ok
}

/// An IP address and port to listen on.
pub fn is_listen_addr(s: &str) -> bool {
    s.parse::<SocketAddr>().is_ok()
}

/// `mode: "0640"`: an octal permission string, quoted.
pub fn mode(node: &Node, d: &mut Diag) -> Option<u32> {
    let octal = node.scalar().filter(|s| {
        let digits = s.strip_prefix('0').filter(|r| r.len() == 3).unwrap_or(s);
        digits.len() == 3 && digits.chars().all(|c| ('0'..='7').contains(&c))
    });
    match octal {
        Some(s) if !node.is_plain() => u32::from_str_radix(s, 8).ok(),
        Some(s) => {
            d.at(
                node.pos,
                format!(
                    "`mode` must be quoted, as in mode: \"{s}\" (unquoted, YAML reads {s} as a number)"
                ),
            );
            None
        }
        None => {
            d.at(
                node.pos,
                format!(
                    "`mode` must be an octal string like \"0640\", not {}",
                    node.describe()
                ),
            );
            None
        }
    }
}

/// A path, resolved against the configuration file's folder.
pub fn path(node: &Node, label: &str, base: &Path, d: &mut Diag) -> Option<PathBuf> {
    let s = yaml::nonempty_string(node, label, d)?;
    Some(resolve(base, &s))
}

pub fn resolve(base: &Path, p: &str) -> PathBuf {
    base.join(p)
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

/// A duration; `positive` rejects zero.
pub fn duration(node: &Node, label: &str, positive: bool, d: &mut Diag) -> Option<Duration> {
    let s = yaml::string(node, label, d)?;
    match parse_duration(&s) {
        Ok(v) if positive && v.is_zero() => {
            d.at(node.pos, format!("{label} must be longer than 0s"));
            None
        }
        Ok(v) => Some(v),
        Err(e) => {
            d.at(node.pos, format!("{label}: {e}"));
            None
        }
    }
}

/// An argv: a non-empty list of strings, run without a shell. A program
/// given as a relative path (with a `/`) is resolved like any other path;
/// a bare name is looked up in `PATH` when it runs.
pub fn argv(node: &Node, label: &str, base: &Path, d: &mut Diag) -> Option<Vec<String>> {
    if !matches!(node.value, Value::Seq(_)) {
        d.at(
            node.pos,
            format!(
                "{label} must be a list (the program and its arguments, no shell), \
                 like [systemctl, reload, nginx], not {}",
                node.describe()
            ),
        );
        return None;
    }
    let items = yaml::string_list(node, label, d);
    let Value::Seq(nodes) = &node.value else {
        return None;
    };
    if items.len() != nodes.len() {
        return None;
    }
    let Some((program, _)) = items.first() else {
        d.at(
            node.pos,
            format!(
                "{label} is empty: give the program and its arguments, like [systemctl, reload, nginx]"
            ),
        );
        return None;
    };
    if program.trim().is_empty() {
        d.at(
            nodes[0].pos,
            format!("{label} starts with an empty program name"),
        );
        return None;
    }
    let mut argv: Vec<String> = items.into_iter().map(|(s, _)| s).collect();
    if argv[0].contains('/') && !Path::new(&argv[0]).is_absolute() {
        argv[0] = resolve(base, &argv[0]).to_string_lossy().into_owned();
    }
    Some(argv)
}

/// An ACME account contact, as a `mailto:` URI.
pub fn contact(node: &Node, raw: &str, d: &mut Diag) -> Option<String> {
    let addr = raw.strip_prefix("mailto:").unwrap_or(raw);
    let ok = match addr.split_once('@') {
        Some((user, host)) => {
            !user.is_empty()
                && !host.contains('@')
                && domain(host).is_ok_and(|h| !h.starts_with('*'))
                && !user.contains(|c: char| c.is_whitespace() || c == ',')
        }
        None => false,
    };
    if ok {
        Some(format!("mailto:{addr}"))
    } else {
        d.at(node.pos, format!("contact {raw:?} is not an email address"));
        None
    }
}

/// A PEM file of extra trusted roots: readable, with a certificate in it.
pub fn trust_root(node: &Node, base: &Path, d: &mut Diag) -> Option<PathBuf> {
    let p = path(node, "each item of `trust_roots`", base, d)?;
    let problem = match std::fs::read(&p) {
        Err(e) => format!("cannot read trust root {}: {e}", p.display()),
        Ok(bytes) => match pem::parse_many(&bytes) {
            Ok(blocks) if blocks.iter().any(|b| b.tag() == "CERTIFICATE") => return Some(p),
            Ok(_) => format!(
                "trust root {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                p.display()
            ),
            Err(e) => format!("trust root {} is not valid PEM: {e}", p.display()),
        },
    };
    d.at(node.pos, problem);
    None
}

/// A secret: `{ env: NAME }` or `{ file: PATH }`, never inline. Its value
/// appears in no message; surrounding whitespace is trimmed.
pub fn secret(
    node: &Node,
    key: &str,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    d: &mut Diag,
) -> Option<Secret> {
    if let Value::Scalar { .. } = node.value {
        d.at(
            node.pos,
            format!(
                "`{key}` is a secret and is never written inline: use {{ env: NAME }} or {{ file: PATH }}"
            ),
        );
        return None;
    }
    let what = format!("secret `{key}`");
    if let Value::Seq(_) = node.value {
        d.at(
            node.pos,
            format!("{what} must be {{ env: NAME }} or {{ file: PATH }}, not a list"),
        );
        return None;
    }
    let m = yaml::Map::open(node, what, &["env", "file"], &[], d)?;
    match (m.get("env"), m.get("file")) {
        (Some(n), None) => {
            let name = yaml::nonempty_string(n, "`env`", d)?;
            match env(&name).map(|v| v.trim().to_string()) {
                None => d.at(
                    n.pos,
                    format!("environment variable {name} (for `{key}`) is not set"),
                ),
                Some(v) if v.is_empty() => d.at(
                    n.pos,
                    format!("environment variable {name} (for `{key}`) is empty"),
                ),
                Some(v) => return Some(Secret::new(v, format!("env {name}"))),
            }
            None
        }
        (None, Some(n)) => {
            let p = path(n, "`file`", base, d)?;
            match std::fs::read_to_string(&p).map(|v| v.trim().to_string()) {
                Err(e) => d.at(
                    n.pos,
                    format!("cannot read secret file {} (for `{key}`): {e}", p.display()),
                ),
                Ok(v) if v.is_empty() => d.at(
                    n.pos,
                    format!("secret file {} (for `{key}`) is empty", p.display()),
                ),
                Ok(v) => return Some(Secret::new(v, format!("file {}", p.display()))),
            }
            None
        }
        _ => {
            d.at(
                m.pos(),
                format!("{} needs exactly one of `env` or `file`", m.what),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains() {
        assert_eq!(domain("Example.COM"), Ok("example.com".to_string()));
        assert_eq!(domain("*.example.com"), Ok("*.example.com".to_string()));
        assert_eq!(domain("localhost"), Ok("localhost".to_string()));
        assert!(domain("exa mple.com").is_err());
        assert!(domain("-a.example.com").is_err());
        assert!(domain("a..example.com").is_err());
        assert!(domain("www.*.example.com").is_err());
        assert!(domain("*").is_err());
        assert!(domain("example.com.").is_err());
        assert!(domain("192.0.2.1").is_err());
        assert!(domain("bücher.example").is_err());
        assert!(domain(&format!("{}.com", "a".repeat(64))).is_err());
    }

    #[test]
    fn wildcard_coverage() {
        assert!(covers("*.example.com", "www.example.com"));
        assert!(!covers("*.example.com", "a.b.example.com"));
        assert!(!covers("*.example.com", "example.com"));
        assert!(covers("example.com", "example.com"));
    }

    #[test]
    fn host_ports() {
        for ok in [
            "127.0.0.1:443",
            "[::1]:443",
            "edge.example.com:443",
            "localhost:8443",
        ] {
            assert!(is_host_port(ok), "{ok}");
        }
        for bad in [
            "localhost",
            ":443",
            "a:b",
            "[::1]443",
            "::1:443",
            "x.com:0",
            "x.com:70000",
        ] {
            assert!(!is_host_port(bad), "{bad}");
        }
    }

    #[test]
    fn names() {
        assert!(is_valid_name("web1"));
        assert!(is_valid_name("example.com_2-x"));
        assert!(!is_valid_name(".hidden"));
        assert!(!is_valid_name("a/b"));
        assert!(!is_valid_name("my cert"));
        assert!(!is_valid_name(""));
    }

    #[test]
    fn staging_twins() {
        assert_eq!(
            staging_twin("https://acme-v02.api.letsencrypt.org/directory"),
            Some("https://acme-staging-v02.api.letsencrypt.org/directory")
        );
        assert_eq!(staging_twin("https://acme.zerossl.com/v2/DV90"), None);
    }
}

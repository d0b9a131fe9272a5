//! The configuration's error messages, exactly as an operator reads them,
//! and the typed values a valid configuration turns into.

use std::path::{Path, PathBuf};
use std::time::Duration;

use certherd::config::{
    load, load_str, ChallengeChoice, CommandSpec, Dns01, DnsBackend, DnsExec, EventKind,
    ExecTarget, FileSet, FileTarget, HaproxySocket, KeyType, Layout, MetricsConfig, NotifierConfig,
    NotifierKind, OnFailure, Pkcs12File, RenewalPolicy, Rfc2136, Rollout, Secret, Solver,
    SshTarget, Starttls, TargetConfig, TargetKind, Text, Threshold, Tsig, TsigAlgorithm,
    VerifyConfig, WebhookFormat,
};

const PATH: &str = "/etc/certherd/certherd.yaml";
/// The value behind `{ env: EAB_HMAC_KEY }` in these tests.
const EAB_SECRET: &str = "c2VjcmV0LWhtYWMta2V5LW5ldmVyLXByaW50ZWQ";

/// The values behind `{ env: HOOK_TOKEN }` and `{ env: SLACK_URL }`.
const HOOK_SECRET: &str = "Bearer hook-token-never-printed";
const SLACK_SECRET: &str = "https://hooks.slack.example/services/T0/B0/never-printed";
/// The value behind `{ env: P12_PASSWORD }`.
const P12_SECRET: &str = "p12-password-never-printed";

fn fake_env(name: &str) -> Option<String> {
    match name {
        "EAB_HMAC_KEY" => Some(EAB_SECRET.to_string()),
        "HOOK_TOKEN" => Some(HOOK_SECRET.to_string()),
        "SLACK_URL" => Some(SLACK_SECRET.to_string()),
        "NOT_A_URL" => Some("hooks.example.com/no-scheme-never-printed".to_string()),
        "BAD_HEADER" => Some("line one\nline two never printed".to_string()),
        "P12_PASSWORD" => Some(P12_SECRET.to_string()),
        _ => None,
    }
}

/// Every error of a configuration that must not load, as printed.
fn errors(src: &str) -> Vec<String> {
    match load_str(src, Path::new(PATH), &fake_env) {
        Ok(config) => panic!("expected errors, got {config:#?}"),
        Err(e) => e.errors.iter().map(ToString::to_string).collect(),
    }
}

fn assert_errors(src: &str, expected: &[&str]) {
    assert_eq!(errors(src), expected);
}

/// Lines 1-2: the `acme` section.
const ACME: &str = "\
acme:
  directory: letsencrypt
";

/// Lines 3-10 (after ACME): one solver, one certificate using it.
const REST: &str = "\
challenges:
  standalone:
    type: http-01
    listen: \"[::]:80\"
certificates:
  example:
    domains: [example.com, www.example.com]
    challenge: standalone
";

/// A valid 10-line configuration, followed by `more` from line 11 on.
fn with_head(more: &str) -> String {
    format!("{ACME}{REST}{more}")
}

#[test]
fn the_head_alone_is_valid() {
    load_str(&with_head(""), Path::new(PATH), &fake_env).expect("valid");
}

#[test]
fn unknown_key_in_a_target_lists_the_allowed_keys() {
    let src = with_head(
        "    targets:
      - name: web1
        type: file
        fullchian: /etc/nginx/tls/example.pem
        key: /etc/nginx/tls/example.key
",
    );
    assert_errors(
        &src,
        &[
            "/etc/certherd/certherd.yaml:14:9: unknown key `fullchian` in target \"web1\" \
           (expected one of: name, type, cert, chain, fullchain, key, combined, pkcs12, pkcs12_password, pkcs12_name, mode, owner, \
           group, layout, reload, reload_timeout, verify)",
        ],
    );
}

#[test]
fn unknown_top_level_key() {
    let src = with_head("stat_dir: /srv/certherd\n");
    assert_errors(
        &src,
        &[
            "/etc/certherd/certherd.yaml:11:1: unknown key `stat_dir` in the configuration \
           (expected one of: state_dir, acme, renewal, metrics, notify, challenges, \
           certificates)",
        ],
    );
}

#[test]
fn certificate_naming_an_undefined_solver() {
    let src = with_head("").replace("challenge: standalone", "challenge: bind");
    assert_errors(
        &src,
        &[
            "/etc/certherd/certherd.yaml:10:16: certificate \"example\" uses challenge \"bind\", \
           which is not defined under `challenges`",
        ],
    );
}

#[test]
fn wildcard_domain_with_an_http01_solver() {
    let src = with_head("").replace("www.example.com]", "\"*.example.com\"]");
    assert_errors(
        &src,
        &[
            "/etc/certherd/certherd.yaml:9:28: \"*.example.com\" is a wildcard and needs a dns-01 \
           solver, but challenge \"standalone\" is http-01",
        ],
    );
}

#[test]
fn duplicate_target_names_within_a_certificate() {
    let src = with_head(
        "    targets:
      - name: web1
        type: file
        fullchain: /etc/nginx/tls/example.pem
      - name: web1
        type: exec
        command: [/usr/local/bin/push-to-cdn]
",
    );
    assert_errors(
        &src,
        &[
            "/etc/certherd/certherd.yaml:15:15: target name \"web1\" is used twice in certificate \
           \"example\" (first at 12:15)",
        ],
    );
}

#[test]
fn duplicate_certificate_names() {
    let src = with_head(
        "  example:
    domains: [example.org]
    challenge: standalone
",
    );
    assert_errors(
        &src,
        &["/etc/certherd/certherd.yaml:11:3: certificate \"example\" is defined twice (first at 8:3)"],
    );
}

#[test]
fn duplicate_key_in_a_section() {
    let src = "\
acme:
  directory: letsencrypt
  directory: zerossl
"
    .to_string()
        + REST;
    assert_errors(
        &src,
        &["/etc/certherd/certherd.yaml:3:3: duplicate key `directory` in `acme` (first at 2:3)"],
    );
}

#[test]
fn unreadable_secret_file() {
    let src = "\
acme:
  directory: zerossl
  eab:
    key_id: kid-1
    hmac_key: { file: secrets/eab.key }
"
    .to_string()
        + REST;
    assert_errors(
        &src,
        &["/etc/certherd/certherd.yaml:5:23: cannot read secret file \
           /etc/certherd/secrets/eab.key (for `hmac_key`): No such file or directory (os error 2)"],
    );
}

#[test]
fn unset_environment_secret() {
    let src = "\
acme:
  directory: zerossl
  eab:
    key_id: kid-1
    hmac_key: { env: EAB_HMAC_KEY_PROD }
"
    .to_string()
        + REST;
    assert_errors(
        &src,
        &[
            "/etc/certherd/certherd.yaml:5:22: environment variable EAB_HMAC_KEY_PROD \
           (for `hmac_key`) is not set",
        ],
    );
}

#[test]
fn inline_secret_is_refused_without_echoing_it() {
    let src = "\
acme:
  directory: zerossl
  eab:
    key_id: kid-1
    hmac_key: aW5saW5lLXNlY3JldA
"
    .to_string()
        + REST;
    let errs = errors(&src);
    assert_eq!(
        errs,
        ["/etc/certherd/certherd.yaml:5:15: `hmac_key` is a secret and is never written inline: \
          use { env: NAME } or { file: PATH }"]
    );
    assert!(!errs[0].contains("aW5saW5lLXNlY3JldA"));
}

#[test]
fn empty_domain_list() {
    let src = with_head("").replace("[example.com, www.example.com]", "[]");
    assert_errors(
        &src,
        &["/etc/certherd/certherd.yaml:9:14: `domains` is empty: certificate \"example\" needs at \
           least one domain"],
    );
}

#[test]
fn invalid_and_repeated_domain_names() {
    let src = with_head("").replace(
        "[example.com, www.example.com]",
        "[example.com, www..example.com, Example.COM]",
    );
    assert_errors(
        &src,
        &[
            "/etc/certherd/certherd.yaml:9:28: \"www..example.com\" is not a valid domain name: \
             it has an empty label",
            "/etc/certherd/certherd.yaml:9:46: \"example.com\" is listed twice in certificate \
             \"example\"",
        ],
    );
}

#[test]
fn file_mode_must_be_a_quoted_octal_string() {
    let src = with_head(
        "    targets:
      - name: web1
        type: file
        key: /etc/nginx/tls/example.key
        mode: 0640
      - name: web2
        type: file
        key: /etc/nginx/tls/example2.key
        mode: rw-r-----
",
    );
    assert_errors(
        &src,
        &[
            "/etc/certherd/certherd.yaml:15:15: `mode` must be quoted, as in mode: \"0640\" \
             (unquoted, YAML reads 0640 as a number)",
            "/etc/certherd/certherd.yaml:19:15: `mode` must be an octal string like \"0640\", \
             not \"rw-r-----\"",
        ],
    );
}

#[test]
fn verify_connect_must_be_host_and_port() {
    let src = with_head(
        "    targets:
      - name: web1
        type: file
        fullchain: /etc/nginx/tls/example.pem
        verify: { connect: localhost }
",
    );
    assert_errors(
        &src,
        &["/etc/certherd/certherd.yaml:15:28: `connect` must be host:port, like 127.0.0.1:443 or \
           [::1]:443, not \"localhost\""],
    );
}

#[test]
fn missing_required_keys() {
    let src = "\
acme:
  contact: [ops@example.com]
challenges:
  standalone:
    type: http-01
    listen: \"[::]:80\"
certificates:
  example:
    domains: [example.com]
    targets:
      - type: exec
        command: [/usr/local/bin/push-to-cdn]
";
    assert_errors(
        src,
        &[
            "/etc/certherd/certherd.yaml:2:3: missing key `directory` in `acme`",
            "/etc/certherd/certherd.yaml:9:5: missing key `challenge` in certificate \"example\"",
            "/etc/certherd/certherd.yaml:11:9: missing key `name` in target #1 of certificate \
             \"example\"",
        ],
    );
}

#[test]
fn file_target_without_any_file() {
    let src = with_head(
        "    targets:
      - name: web1
        type: file
        mode: \"0640\"
",
    );
    assert_errors(
        &src,
        &["/etc/certherd/certherd.yaml:12:9: target \"web1\" writes no file: set at least one of \
           cert, chain, fullchain, key, combined, pkcs12"],
    );
}

#[test]
fn reload_must_be_a_non_empty_argv() {
    let src = with_head(
        "    targets:
      - name: web1
        type: file
        fullchain: /etc/nginx/tls/example.pem
        reload: []
      - name: web2
        type: file
        fullchain: /etc/nginx/tls/example2.pem
        reload: systemctl reload nginx
",
    );
    assert_errors(
        &src,
        &[
            "/etc/certherd/certherd.yaml:15:17: `reload` is empty: give the program and its \
             arguments, like [systemctl, reload, nginx]",
            "/etc/certherd/certherd.yaml:19:17: `reload` must be a list (the program and its \
             arguments, no shell), like [systemctl, reload, nginx], not \"systemctl reload nginx\"",
        ],
    );
}

#[test]
fn exec_target_needs_a_command() {
    let src = with_head(
        "    targets:
      - name: edge
        type: exec
        command: []
",
    );
    assert_errors(
        &src,
        &[
            "/etc/certherd/certherd.yaml:14:18: `command` is empty: give the program and its \
           arguments, like [systemctl, reload, nginx]",
        ],
    );
}

#[test]
fn bad_durations() {
    let src = with_head(
        "renewal:
  check_interval: 6 hours
  jitter: 90
",
    );
    assert_errors(
        &src,
        &[
            "/etc/certherd/certherd.yaml:12:19: `check_interval`: invalid duration \"6 hours\": \
             write a whole number and a unit (s, m, h or d), like 90s, 15m, 6h, 30d or 1h30m",
            "/etc/certherd/certherd.yaml:13:11: `jitter`: invalid duration \"90\": write a whole \
             number and a unit (s, m, h or d), like 90s, 15m, 6h, 30d or 1h30m",
        ],
    );
}

#[test]
fn before_expiry_share_out_of_range() {
    let src = with_head("    renewal: { before_expiry: 150% }\n");
    assert_errors(
        &src,
        &[
            "/etc/certherd/certherd.yaml:11:31: `before_expiry` must be a duration like 30d or a \
           share of the lifetime from 1% to 99%, not \"150%\"",
        ],
    );
}

#[test]
fn bad_key_type() {
    let src = with_head("    key: rsa-1024\n");
    assert_errors(
        &src,
        &[
            "/etc/certherd/certherd.yaml:11:10: `key` must be one of: ecdsa-p256, ecdsa-p384, \
           rsa-2048, rsa-3072, rsa-4096, not \"rsa-1024\"",
        ],
    );
}

#[test]
fn wrong_value_types() {
    let src = "\
acme:
  directory: letsencrypt
  contact: ops@example.com
"
    .to_string()
        + REST
        + "    reuse_key: \"yes\"\n";
    assert_errors(
        &src,
        &[
            "/etc/certherd/certherd.yaml:3:12: `contact` must be a list, not \"ops@example.com\"",
            "/etc/certherd/certherd.yaml:12:16: `reuse_key` must be true or false, not \"yes\"",
        ],
    );
}

#[test]
fn directory_must_be_https_or_an_alias() {
    let src = with_head("").replace(
        "directory: letsencrypt",
        "directory: http://acme.example.com/directory",
    );
    assert_errors(
        &src,
        &[
            "/etc/certherd/certherd.yaml:2:14: `directory` must be an https:// URL or one of: \
           letsencrypt, letsencrypt-staging, zerossl, google, google-staging, not \
           \"http://acme.example.com/directory\"",
        ],
    );
}

#[test]
fn trust_roots_must_be_readable_and_hold_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.pem"), "not a certificate\n").unwrap();
    let config = dir.path().join("certherd.yaml");
    let src = "\
acme:
  directory: letsencrypt
  trust_roots: [missing.pem, notes.pem]
"
    .to_string()
        + REST;
    let errs: Vec<String> = load_str(&src, &config, &fake_env)
        .unwrap_err()
        .errors
        .iter()
        .map(ToString::to_string)
        .collect();
    let d = dir.path().display();
    assert_eq!(
        errs,
        [
            format!(
                "{d}/certherd.yaml:3:17: cannot read trust root {d}/missing.pem: \
                 No such file or directory (os error 2)"
            ),
            format!(
                "{d}/certherd.yaml:3:30: trust root {d}/notes.pem holds no PEM certificate \
                 (-----BEGIN CERTIFICATE-----)"
            ),
        ]
    );
}

#[test]
fn every_section_of_the_interface_loads_and_only_real_mistakes_are_reported() {
    let src = "\
acme:
  directory: letsencrypt
metrics:
  listen: \"127.0.0.1:9611\"
notify:
  - type: webhook
    url: https://hooks.example.com/certherd
challenges:
  standalone:
    type: http-01
    listen: \"[::]:80\"
  bind:
    type: dns-01
    rfc2136: { server: \"192.0.2.53:53\", tsig: { name: certherd., secret: { env: EAB_HMAC_KEY } } }
  alpn:
    type: tls-alpn-01
    listen: \"[::]:443\"
certificates:
  example:
    domains: [example.com, \"*.example.com\"]
    challenge: { \"*.example.com\": bind, \"*\": standalone }
    targets:
      - name: lb1
        type: ssh
        host: lb1.example.com
      - name: web1
        type: file
        fullchain: /etc/nginx/tls/example.pem
        colour: blue
";
    assert_errors(
        src,
        &[
            "/etc/certherd/certherd.yaml:23:9: target \"lb1\" writes no file: set at least \
             one of cert, chain, fullchain, key, combined, pkcs12",
            "/etc/certherd/certherd.yaml:29:9: unknown key `colour` in target \"web1\" (expected \
             one of: name, type, cert, chain, fullchain, key, combined, pkcs12, pkcs12_password, pkcs12_name, mode, owner, group, \
             layout, reload, reload_timeout, verify)",
        ],
    );
}

#[test]
fn rollout_mistakes_are_named_where_they_are() {
    let src = with_head(
        "    targets:
      - { name: web1, type: file, fullchain: /etc/tls/a.pem }
      - { name: web2, type: file, fullchain: /etc/tls/b.pem }
    rollout:
      waves: [[web1, web3], [web1], [], web2]
      max_parallel: 0
      on_failure: stop
      rollback: yes please
      canary: web1
",
    );
    assert_errors(
        &src,
        &[
            "/etc/certherd/certherd.yaml:15:22: `waves` names target \"web3\", which certificate \
             \"example\" does not have (its targets: web1, web2)",
            "/etc/certherd/certherd.yaml:15:30: target \"web1\" is in more than one wave (first \
             at 15:16)",
            "/etc/certherd/certherd.yaml:15:37: wave 3 of `waves` is empty",
            "/etc/certherd/certherd.yaml:15:41: wave 4 of `waves` must be a list, not \"web2\"",
            "/etc/certherd/certherd.yaml:16:21: `max_parallel` must be a whole number from 1 to \
             1024, not \"0\"",
            "/etc/certherd/certherd.yaml:17:19: `on_failure` must be halt or continue, not \"stop\"",
            "/etc/certherd/certherd.yaml:18:17: `rollback` must be true or false, not \
             \"yes please\"",
            "/etc/certherd/certherd.yaml:19:7: unknown key `canary` in `rollout` of certificate \
             \"example\" (expected one of: waves, max_parallel, on_failure, rollback)",
        ],
    );
}

#[test]
fn a_rollout_reads_into_waves_with_the_rest_last() {
    let src = with_head(
        "    targets:
      - { name: web1, type: file, fullchain: /etc/tls/a.pem }
      - { name: web2, type: file, fullchain: /etc/tls/b.pem }
      - { name: web3, type: file, fullchain: /etc/tls/c.pem }
    rollout: { waves: [[web3]], max_parallel: 2, on_failure: halt, rollback: true }
",
    );
    let config = load_str(&src, Path::new(PATH), &fake_env).unwrap();
    let cert = &config.certificates[0];
    assert_eq!(
        cert.rollout,
        Rollout {
            waves: vec![vec!["web3".to_string()]],
            max_parallel: 2,
            on_failure: OnFailure::Halt,
            rollback: true,
        }
    );
    let waves: Vec<Vec<&str>> = cert
        .waves()
        .iter()
        .map(|w| w.iter().map(|t| t.name.as_str()).collect())
        .collect();
    assert_eq!(waves, [vec!["web3"], vec!["web1", "web2"]]);

    // Without `rollout`: one wave, 8 at once, continue, no rollback.
    let plain = load_str(&with_head(""), Path::new(PATH), &fake_env).unwrap();
    assert_eq!(plain.certificates[0].rollout, Rollout::default());
    assert_eq!(Rollout::default().max_parallel, 8);
    assert_eq!(Rollout::default().on_failure, OnFailure::Continue);
    assert!(!Rollout::default().rollback);
}

#[test]
fn http01_solver_uses_exactly_one_of_listen_and_webroot() {
    let src = "\
acme:
  directory: letsencrypt
challenges:
  both:
    type: http-01
    listen: \"[::]:80\"
    webroot: /var/www/acme
  neither:
    type: http-01
  typo:
    type: http01
  bad_listen:
    type: http-01
    listen: \"localhost:80\"
certificates:
  example:
    domains: [example.com]
    challenge: both
";
    assert_errors(
        src,
        &[
            "/etc/certherd/certherd.yaml:5:5: challenge \"both\" sets both `listen` and `webroot`: \
             an http-01 solver uses one of them",
            "/etc/certherd/certherd.yaml:9:5: challenge \"neither\" needs `listen` (the built-in \
             responder's address) or `webroot` (a folder the web server serves)",
            "/etc/certherd/certherd.yaml:11:11: `type` must be one of: http-01, dns-01, \
             tls-alpn-01, not \"http01\"",
            "/etc/certherd/certherd.yaml:14:13: `listen` must be an IP address and port, like \
             \"[::]:80\" or \"127.0.0.1:5002\", not \"localhost:80\"",
        ],
    );
}

#[test]
fn certificate_and_target_names_become_file_names() {
    let src = with_head(
        "  web/site:
    domains: [example.org]
    challenge: standalone
    targets:
      - name: .hidden
        type: file
        cert: /etc/ssl/a.pem
",
    );
    assert_errors(
        &src,
        &[
            "/etc/certherd/certherd.yaml:11:3: certificate name \"web/site\" is not valid: a name \
             starts with a letter or digit and holds only letters, digits, '.', '_' and '-' (it \
             becomes a file name)",
            "/etc/certherd/certherd.yaml:15:15: target name \".hidden\" is not valid: a name \
             starts with a letter or digit and holds only letters, digits, '.', '_' and '-' (it \
             becomes a file name)",
        ],
    );
}

#[test]
fn challenge_patterns_must_cover_every_domain() {
    let src = with_head("").replace(
        "challenge: standalone",
        "challenge: { example.com: standalone, example.org: standalone }",
    );
    assert_errors(
        &src,
        &[
            "/etc/certherd/certherd.yaml:9:28: domain \"www.example.com\" of certificate \
             \"example\" has no challenge solver: name it in `challenge` or add a \"*\" entry",
            "/etc/certherd/certherd.yaml:10:43: pattern \"example.org\" in `challenge` is not a \
             domain of certificate \"example\" (use one of its domains, or \"*\" for the rest)",
        ],
    );
}

#[test]
fn verify_server_name_must_be_covered_by_the_certificate() {
    let src = with_head(
        "    targets:
      - name: web1
        type: file
        fullchain: /etc/nginx/tls/example.pem
        verify:
          connect: 127.0.0.1:443
          server_name: example.org
",
    );
    assert_errors(
        &src,
        &["/etc/certherd/certherd.yaml:17:24: `server_name` \"example.org\" is not covered by the \
           certificate's domains (example.com, www.example.com)"],
    );
}

#[test]
fn yaml_syntax_error() {
    let src = "acme:\n  directory: letsencrypt\n contact: [ops@example.com]\n";
    assert_errors(
        src,
        &["/etc/certherd/certherd.yaml:3:2: invalid YAML: while parsing a block mapping, did not \
           find expected key"],
    );
}

#[test]
fn a_second_yaml_document() {
    let src = with_head("---\nacme: {}\n");
    assert_errors(
        &src,
        &["/etc/certherd/certherd.yaml:11:1: a configuration file holds one YAML document; remove \
           this `---` and what follows"],
    );
}

#[test]
fn empty_file() {
    assert_errors(
        "# nothing yet\n",
        &["/etc/certherd/certherd.yaml:1:1: the configuration file is empty"],
    );
}

#[test]
fn unreadable_configuration_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.yaml");
    let err = load(&path).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: cannot read the configuration file: No such file or directory (os error 2)",
            path.display()
        )
    );
}

/// Many mistakes in one file: all are reported, in document order, and the
/// valid parts around them cause no noise.
#[test]
fn every_error_is_reported_in_document_order() {
    let src = "\
state_dir: /var/lib/certherd
acme:
  directory: letsencrypt
  contact: [ops@example.com]
  eab: { key_id: KID, hmac_key: { env: MISSING_KEY } }
renewal:
  before_expiry: 33%
  jitter: half an hour
challenges:
  standalone:
    type: http-01
    listen: \"[::]:80\"
certificates:
  example:
    domains: [example.com, \"*.example.com\"]
    challenge: standalone
    targets:
      - name: web1
        type: file
        fullchian: /etc/nginx/tls/example.pem
        reload: [systemctl, reload, nginx]
        verify: { connect: \"127.0.0.1\" }
  second:
    domains: [second.example.com]
    challenge: bind
    key: ed25519
";
    assert_errors(
        src,
        &[
            "/etc/certherd/certherd.yaml:5:40: environment variable MISSING_KEY (for `hmac_key`) \
             is not set",
            "/etc/certherd/certherd.yaml:8:11: `jitter`: invalid duration \"half an hour\": write a \
             whole number and a unit (s, m, h or d), like 90s, 15m, 6h, 30d or 1h30m",
            "/etc/certherd/certherd.yaml:15:28: \"*.example.com\" is a wildcard and needs a dns-01 \
             solver, but challenge \"standalone\" is http-01",
            "/etc/certherd/certherd.yaml:18:9: target \"web1\" writes no file: set at least one of \
             cert, chain, fullchain, key, combined, pkcs12",
            "/etc/certherd/certherd.yaml:20:9: unknown key `fullchian` in target \"web1\" \
             (expected one of: name, type, cert, chain, fullchain, key, combined, pkcs12, pkcs12_password, pkcs12_name, mode, owner, \
             group, layout, reload, reload_timeout, verify)",
            "/etc/certherd/certherd.yaml:22:28: `connect` must be host:port, like 127.0.0.1:443 or \
             [::1]:443, not \"127.0.0.1\"",
            "/etc/certherd/certherd.yaml:25:16: certificate \"second\" uses challenge \"bind\", \
             which is not defined under `challenges`",
            "/etc/certherd/certherd.yaml:26:10: `key` must be one of: ecdsa-p256, ecdsa-p384, \
             rsa-2048, rsa-3072, rsa-4096, not \"ed25519\"",
        ],
    );
}

const TEST_ROOT_PEM: &str = "\
-----BEGIN CERTIFICATE-----
MIIBszCCAVmgAwIBAgIUTmFtZWxlc3MgdGVzdCByb290IGZvciBjZXJ0aGVyZDAK
-----END CERTIFICATE-----
";

/// The interface's example, minus what this version does not support,
/// loaded from a real file so relative paths resolve against its folder.
#[test]
fn full_configuration_loads_into_typed_values() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("ca")).unwrap();
    std::fs::write(d.join("ca/test-root.pem"), TEST_ROOT_PEM).unwrap();
    std::fs::create_dir(d.join("secrets")).unwrap();
    std::fs::write(d.join("secrets/eab.key"), "  ZmlsZS1zZWNyZXQ\n").unwrap();
    let path = d.join("certherd.yaml");
    std::fs::write(
        &path,
        "\
state_dir: state
acme:
  directory: letsencrypt
  contact: [ops@example.com, \"mailto:security@example.com\"]
  trust_roots: [ca/test-root.pem]
  eab: { key_id: KID, hmac_key: { file: secrets/eab.key } }
  profile: shortlived
renewal:
  before_expiry: 33%
  ari: false
  check_interval: 1h
  jitter: 5m
challenges:
  standalone:
    type: http-01
    listen: \"[::]:80\"
  webroot:
    type: http-01
    webroot: ./www/acme
certificates:
  example:
    domains: [Example.com, www.example.com]
    key: ecdsa-p384
    reuse_key: true
    challenge: { www.example.com: webroot, \"*\": standalone }
    renewal: { before_expiry: 20d }
    targets:
      - name: web1
        type: file
        fullchain: /etc/nginx/tls/example.pem
        key: tls/example.key
        mode: \"0640\"
        owner: root
        group: ssl-cert
        reload: [systemctl, reload, nginx]
        reload_timeout: 2m
        verify:
          connect: 127.0.0.1:443
          server_name: www.example.com
          timeout: 45s
      - name: edge
        type: exec
        command: [bin/push-to-cdn, --zone, example]
        timeout: 5m
        verify: { connect: edge.example.com:443 }
  other:
    domains: [other.example.net]
    challenge: standalone
",
    )
    .unwrap();

    let config = load(&path).expect("valid");
    assert_eq!(config.source, path);
    assert_eq!(config.state_dir, d.join("state"));

    let acme = &config.acme;
    assert_eq!(
        acme.directory,
        "https://acme-v02.api.letsencrypt.org/directory"
    );
    assert_eq!(
        acme.dry_run_directory,
        "https://acme-staging-v02.api.letsencrypt.org/directory"
    );
    assert_eq!(
        acme.contact,
        ["mailto:ops@example.com", "mailto:security@example.com"]
    );
    assert_eq!(acme.trust_roots, [d.join("ca/test-root.pem")]);
    let eab = acme.eab.as_ref().expect("eab");
    assert_eq!(eab.key_id, "KID");
    assert_eq!(eab.hmac_key.expose(), "ZmlsZS1zZWNyZXQ");
    let secret_path = d.join("secrets/eab.key");
    assert_eq!(
        eab.hmac_key.origin(),
        format!("file {}", secret_path.display())
    );
    assert_eq!(acme.profile.as_deref(), Some("shortlived"));

    let top = RenewalPolicy {
        before_expiry: Threshold::Share(0.33),
        ari: false,
        check_interval: Duration::from_secs(3600),
        jitter: Duration::from_secs(300),
    };
    assert_eq!(config.renewal, top);

    assert_eq!(config.challenges.len(), 2);
    assert_eq!(
        config.challenges["standalone"],
        Solver::Http01Listen {
            listen: "[::]:80".to_string()
        }
    );
    assert_eq!(
        config.challenges["webroot"],
        Solver::Http01Webroot {
            webroot: d.join("www/acme")
        }
    );

    assert_eq!(config.certificates.len(), 2);
    let example = config.certificate("example").expect("example");
    assert_eq!(example.domains, ["example.com", "www.example.com"]);
    assert_eq!(example.key, KeyType::EcdsaP384);
    assert!(example.reuse_key);
    assert_eq!(
        example.challenge,
        ChallengeChoice::ByPattern(vec![
            ("www.example.com".to_string(), "webroot".to_string()),
            ("*".to_string(), "standalone".to_string()),
        ])
    );
    assert_eq!(
        example.challenge.solver_for("example.com"),
        Some("standalone")
    );
    assert_eq!(
        example.renewal,
        RenewalPolicy {
            before_expiry: Threshold::Remaining(Duration::from_secs(20 * 86_400)),
            ..top.clone()
        }
    );
    assert_eq!(
        example.targets,
        [
            TargetConfig {
                name: "web1".to_string(),
                kind: TargetKind::File(FileTarget {
                    files: FileSet {
                        fullchain: Some(PathBuf::from("/etc/nginx/tls/example.pem")),
                        key: Some(d.join("tls/example.key")),
                        ..FileSet::default()
                    },
                    mode: 0o640,
                    owner: Some("root".to_string()),
                    group: Some("ssl-cert".to_string()),
                    layout: Layout::Files,
                }),
                reload: Some(CommandSpec {
                    argv: vec!["systemctl".into(), "reload".into(), "nginx".into()],
                    timeout: Duration::from_secs(120),
                }),
                verify: Some(VerifyConfig {
                    connect: "127.0.0.1:443".to_string(),
                    server_name: "www.example.com".to_string(),
                    timeout: Duration::from_secs(45),
                    starttls: None,
                }),
            },
            TargetConfig {
                name: "edge".to_string(),
                kind: TargetKind::Exec(ExecTarget {
                    command: CommandSpec {
                        argv: vec![
                            d.join("bin/push-to-cdn").display().to_string(),
                            "--zone".into(),
                            "example".into(),
                        ],
                        timeout: Duration::from_secs(300),
                    },
                }),
                reload: None,
                verify: Some(VerifyConfig {
                    connect: "edge.example.com:443".to_string(),
                    server_name: "example.com".to_string(),
                    timeout: Duration::from_secs(30),
                    starttls: None,
                }),
            },
        ]
    );

    let other = config.certificate("other").expect("other");
    assert_eq!(other.key, KeyType::EcdsaP256);
    assert!(!other.reuse_key);
    assert_eq!(
        other.challenge,
        ChallengeChoice::All("standalone".to_string())
    );
    assert_eq!(other.renewal, top);
    assert!(other.targets.is_empty());
}

#[test]
fn defaults_apply_to_a_minimal_configuration() {
    let src = with_head(
        "    targets:
      - name: web1
        type: file
        key: /etc/ssl/example.key
        reload: [systemctl, reload, nginx]
        verify: { connect: \"[::1]:443\" }
",
    );
    let config = load_str(&src, Path::new(PATH), &fake_env).expect("valid");
    assert_eq!(config.state_dir, PathBuf::from("/var/lib/certherd"));
    assert_eq!(config.renewal, RenewalPolicy::default());
    assert_eq!(config.renewal.before_expiry, Threshold::Share(0.33));
    assert!(config.renewal.ari);
    assert_eq!(config.renewal.check_interval, Duration::from_secs(6 * 3600));
    assert_eq!(config.renewal.jitter, Duration::from_secs(30 * 60));
    assert!(config.acme.contact.is_empty());
    assert!(config.acme.eab.is_none());
    let cert = &config.certificates[0];
    assert_eq!(cert.key, KeyType::EcdsaP256);
    assert!(!cert.reuse_key);
    let target = &cert.targets[0];
    let TargetKind::File(file) = &target.kind else {
        panic!("a file target")
    };
    assert_eq!(file.mode, 0o600);
    assert_eq!(
        target.reload.as_ref().map(|r| r.timeout),
        Some(Duration::from_secs(60))
    );
    let verify = target.verify.as_ref().expect("verify");
    assert_eq!(verify.server_name, "example.com");
    assert_eq!(verify.timeout, Duration::from_secs(30));
}

#[test]
fn directory_aliases_and_their_dry_run_twins() {
    let cases = [
        (
            "letsencrypt",
            None,
            "https://acme-v02.api.letsencrypt.org/directory",
            "https://acme-staging-v02.api.letsencrypt.org/directory",
        ),
        (
            "letsencrypt-staging",
            None,
            "https://acme-staging-v02.api.letsencrypt.org/directory",
            "https://acme-staging-v02.api.letsencrypt.org/directory",
        ),
        (
            "google",
            None,
            "https://dv.acme-v02.api.pki.goog/directory",
            "https://dv.acme-v02.test-api.pki.goog/directory",
        ),
        (
            "zerossl",
            None,
            "https://acme.zerossl.com/v2/DV90",
            "https://acme.zerossl.com/v2/DV90",
        ),
        (
            "https://localhost:14000/dir",
            None,
            "https://localhost:14000/dir",
            "https://localhost:14000/dir",
        ),
        (
            "https://ca.internal/acme/directory",
            Some("google-staging"),
            "https://ca.internal/acme/directory",
            "https://dv.acme-v02.test-api.pki.goog/directory",
        ),
    ];
    for (directory, dry_run, expected, expected_dry_run) in cases {
        let mut acme = format!("acme:\n  directory: {directory}\n");
        if let Some(dr) = dry_run {
            acme += &format!("  dry_run_directory: {dr}\n");
        }
        let config = load_str(&(acme + REST), Path::new(PATH), &fake_env).expect(directory);
        assert_eq!(config.acme.directory, expected, "{directory}");
        assert_eq!(
            config.acme.dry_run_directory, expected_dry_run,
            "{directory}"
        );
    }
}

#[test]
fn secrets_never_appear_in_debug_output_or_errors() {
    let src = "\
acme:
  directory: zerossl
  eab: { key_id: kid-1, hmac_key: { env: EAB_HMAC_KEY } }
"
    .to_string()
        + REST;
    let config = load_str(&src, Path::new(PATH), &fake_env).expect("valid");
    let eab = config.acme.eab.as_ref().expect("eab");
    assert_eq!(eab.hmac_key.expose(), EAB_SECRET);
    assert_eq!(eab.hmac_key.origin(), "env EAB_HMAC_KEY");
    let debug = format!("{config:?} {config:#?}");
    assert!(!debug.contains(EAB_SECRET), "{debug}");
    assert!(debug.contains("env EAB_HMAC_KEY"));

    // The same secret in a configuration with other mistakes: it is read,
    // and still printed nowhere.
    let broken = src.replace("challenge: standalone", "challenge: nowhere") + "    key: dsa\n";
    let err = load_str(&broken, Path::new(PATH), &fake_env).unwrap_err();
    let shown = format!("{err} {err:?}");
    assert_eq!(err.errors.len(), 2, "{shown}");
    assert!(!shown.contains(EAB_SECRET), "{shown}");
}

#[test]
fn dns01_and_tls_alpn01_solvers_load() {
    let src = "\
acme:
  directory: letsencrypt
challenges:
  bind:
    type: dns-01
    rfc2136:
      server: \"192.0.2.53:53\"
      zone: Example.COM
      tsig: { name: certherd, algorithm: hmac-sha512, secret: { env: EAB_HMAC_KEY } }
    propagation_timeout: 90s
  hook:
    type: dns-01
    exec:
      add: [bin/dns-add, --verbose]
      remove: [/usr/local/bin/dns-remove]
      timeout: 20s
    resolver: \"127.0.0.53:53\"
  alpn:
    type: tls-alpn-01
    listen: \"[::]:443\"
certificates:
  example:
    domains: [example.com, \"*.example.com\", www.example.com]
    challenge: { \"*.example.com\": bind, example.com: hook, \"*\": alpn }
";
    let config = load_str(src, Path::new(PATH), &fake_env).expect("valid");
    let bind = &config.challenges["bind"];
    let Solver::Dns01(Dns01 {
        backend: DnsBackend::Rfc2136(Rfc2136 { server, zone, tsig }),
        propagation_timeout,
        resolver,
    }) = bind
    else {
        panic!("{bind:?}")
    };
    assert_eq!(server, "192.0.2.53:53");
    assert_eq!(zone.as_deref(), Some("example.com."));
    let Tsig {
        name,
        algorithm,
        secret,
    } = tsig;
    assert_eq!(
        (name.as_str(), *algorithm, secret.expose()),
        ("certherd.", TsigAlgorithm::HmacSha512, EAB_SECRET)
    );
    assert_eq!(
        (*propagation_timeout, resolver.as_deref()),
        (Duration::from_secs(90), None)
    );
    assert_eq!(
        config.challenges["hook"],
        Solver::Dns01(Dns01 {
            backend: DnsBackend::Exec(DnsExec {
                add: CommandSpec {
                    argv: vec!["/etc/certherd/bin/dns-add".into(), "--verbose".into()],
                    timeout: Duration::from_secs(20)
                },
                remove: CommandSpec {
                    argv: vec!["/usr/local/bin/dns-remove".into()],
                    timeout: Duration::from_secs(20)
                },
            }),
            propagation_timeout: Duration::from_secs(120),
            resolver: Some("127.0.0.53:53".into()),
        })
    );
    assert_eq!(
        config.challenges["alpn"],
        Solver::TlsAlpn01 {
            listen: "[::]:443".into()
        }
    );
    let c = &config.certificates[0];
    assert_eq!(c.challenge.solver_for("*.example.com"), Some("bind"));
    assert_eq!(c.challenge.solver_for("example.com"), Some("hook"));
    assert_eq!(c.challenge.solver_for("www.example.com"), Some("alpn"));
}

#[test]
fn dns01_mistakes_are_positioned() {
    let src = "\
acme:
  directory: letsencrypt
challenges:
  a:
    type: dns-01
  b:
    type: dns-01
    rfc2136: { server: \"192.0.2.53\", tsig: { name: certherd., algorithm: hmac-md5, secret: { env: NOT_BASE64 } } }
    exec: { add: [x], remove: [y] }
  c:
    type: dns-01
    rfc2136: { server: \"ns.example.com:53\", zone: \"*.example.com\", tsig: { name: k., secret: inline } }
    propagation_timeout: 0s
  d:
    type: dns-01
    exec: { add: [], remove: [y], retries: 3 }
  e:
    type: tls-alpn-01
    listen: \"localhost:443\"
certificates:
  example:
    domains: [\"*.example.com\"]
    challenge: e
";
    let env = |name: &str| match name {
        "NOT_BASE64" => Some("not base64 at all!".to_string()),
        _ => None,
    };
    let errors: Vec<String> = load_str(src, Path::new(PATH), &env)
        .unwrap_err()
        .errors
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        errors,
        [
            "/etc/certherd/certherd.yaml:5:5: challenge \"a\" needs a backend: `rfc2136` (DNS UPDATE with TSIG) or `exec` (programs that add and remove a TXT record)",
            "/etc/certherd/certherd.yaml:7:5: challenge \"b\" sets both `rfc2136` and `exec`: a dns-01 solver uses one backend",
            "/etc/certherd/certherd.yaml:8:24: `server` must be a host and port, like \"192.0.2.53:53\", not \"192.0.2.53\"",
            "/etc/certherd/certherd.yaml:8:74: `algorithm` must be one of: hmac-sha256, hmac-sha384, hmac-sha512, not \"hmac-md5\"",
            "/etc/certherd/certherd.yaml:8:92: the TSIG secret from env NOT_BASE64 is not base64 (as `tsig-keygen` prints it)",
            "/etc/certherd/certherd.yaml:12:51: `zone` must be a DNS name, like \"example.com.\", not \"*.example.com\"",
            "/etc/certherd/certherd.yaml:12:94: `secret` is a secret and is never written inline: use { env: NAME } or { file: PATH }",
            "/etc/certherd/certherd.yaml:13:26: `propagation_timeout` must be longer than 0s",
            "/etc/certherd/certherd.yaml:16:18: `add` is empty: give the program and its arguments, like [systemctl, reload, nginx]",
            "/etc/certherd/certherd.yaml:16:35: unknown key `retries` in `exec` (expected one of: add, remove, timeout)",
            "/etc/certherd/certherd.yaml:19:13: `listen` must be an IP address and port, like \"[::]:443\", not \"localhost:443\"",
            "/etc/certherd/certherd.yaml:22:15: \"*.example.com\" is a wildcard and needs a dns-01 solver, but challenge \"e\" is tls-alpn-01",
        ]
    );
}

/// `metrics:` and `notify:` as the interface writes them, extended with
/// every key, loaded from a real file (relative paths, trust roots).
#[test]
fn metrics_and_notify_load_into_typed_values() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("hooks-ca.pem"), TEST_ROOT_PEM).unwrap();
    std::fs::write(d.join("pager.key"), "pager-key-never-printed\n").unwrap();
    let path = d.join("certherd.yaml");
    let src = format!(
        "{ACME}\
metrics:
  listen: \"127.0.0.1:9611\"
  textfile: prom/certherd.prom
notify:
  - type: webhook
    url: https://hooks.example.com/certherd
    headers: {{ Authorization: {{ env: HOOK_TOKEN }}, X-Source: certherd }}
  - type: webhook
    name: chat
    url: {{ env: SLACK_URL }}
    format: slack
    timeout: 5s
    events: [expiring, renewed]
    expiring_days: 21
    trust_roots: [hooks-ca.pem]
  - type: exec
    command: [bin/page-oncall, --team, tls]
    timeout: 30s
    events: [expiring, deploy_failed]
    expiring_days: 3
    name: pager
{REST}"
    );
    std::fs::write(&path, src).unwrap();
    let config =
        load_str(&std::fs::read_to_string(&path).unwrap(), &path, &fake_env).expect("valid");
    assert_eq!(
        config.metrics,
        Some(MetricsConfig {
            listen: Some("127.0.0.1:9611".parse().unwrap()),
            textfile: Some(d.join("prom/certherd.prom")),
        })
    );
    assert_eq!(config.notify.len(), 3);
    let NotifierKind::Webhook(hook) = &config.notify[0].kind else {
        panic!("a webhook")
    };
    assert_eq!(config.notify[0].name, "webhook #1");
    assert_eq!(config.notify[0].events, EventKind::ALL);
    assert_eq!(config.notify[0].expiring_days, 14);
    assert_eq!(
        hook.url,
        Text::Plain("https://hooks.example.com/certherd".into())
    );
    assert_eq!(hook.format, WebhookFormat::Json);
    assert_eq!(hook.timeout, Duration::from_secs(10));
    assert!(hook.trust_roots.is_empty());
    assert_eq!(hook.headers.len(), 2);
    assert_eq!(hook.headers[0].0, "Authorization");
    assert_eq!(hook.headers[0].1.expose(), HOOK_SECRET);
    assert!(hook.headers[0].1.is_secret());
    assert_eq!(
        hook.headers[1],
        ("X-Source".into(), Text::Plain("certherd".into()))
    );

    let chat = &config.notify[1];
    assert_eq!(chat.name, "chat");
    assert_eq!(chat.events, [EventKind::Renewed, EventKind::Expiring]);
    assert_eq!(chat.expiring_days, 21);
    let NotifierKind::Webhook(slack) = &chat.kind else {
        panic!("a webhook")
    };
    assert_eq!(slack.url.expose(), SLACK_SECRET);
    assert!(slack.url.is_secret());
    assert_eq!(slack.format, WebhookFormat::Slack);
    assert_eq!(slack.timeout, Duration::from_secs(5));
    assert_eq!(slack.trust_roots, [d.join("hooks-ca.pem")]);

    assert_eq!(
        config.notify[2],
        NotifierConfig {
            name: "pager".into(),
            events: vec![EventKind::DeployFailed, EventKind::Expiring],
            expiring_days: 3,
            kind: NotifierKind::Exec(CommandSpec {
                argv: vec![
                    d.join("bin/page-oncall").display().to_string(),
                    "--team".into(),
                    "tls".into()
                ],
                timeout: Duration::from_secs(30),
            }),
        }
    );

    // No secret in the debug output.
    let debug = format!("{config:?}");
    assert!(!debug.contains(HOOK_SECRET), "{debug}");
    assert!(!debug.contains(SLACK_SECRET), "{debug}");
    assert!(debug.contains("env SLACK_URL"), "{debug}");
}

#[test]
fn metrics_and_notify_are_optional() {
    let config = load_str(&with_head(""), Path::new(PATH), &fake_env).expect("valid");
    assert_eq!(config.metrics, None);
    assert!(config.notify.is_empty());
    let src = format!(
        "{ACME}metrics: {{ textfile: /var/lib/node-exporter/certherd.prom }}\nnotify: []\n{REST}"
    );
    let config = load_str(&src, Path::new(PATH), &fake_env).expect("valid");
    assert_eq!(
        config.metrics,
        Some(MetricsConfig {
            listen: None,
            textfile: Some(PathBuf::from("/var/lib/node-exporter/certherd.prom")),
        })
    );
    let NotifierKind::Exec(cmd) = load_str(
        &format!("{ACME}notify:\n  - {{ type: exec, command: [page] }}\n{REST}"),
        Path::new(PATH),
        &fake_env,
    )
    .expect("valid")
    .notify[0]
        .kind
        .clone()
    else {
        panic!("exec")
    };
    assert_eq!(cmd.timeout, Duration::from_secs(60));
}

#[test]
fn metrics_mistakes_are_positioned() {
    let src = format!(
        "{ACME}\
metrics:
  listen: localhost:9611
  textfile: /var/lib/node-exporter/certherd.txt
  path: /metrics
{REST}"
    );
    assert_errors(
        &src,
        &[
            "/etc/certherd/certherd.yaml:4:11: `listen` must be an IP address and port, like \
             \"127.0.0.1:9611\" or \"[::1]:9611\", not \"localhost:9611\"",
            "/etc/certherd/certherd.yaml:5:13: `textfile` must end in .prom (node_exporter's \
             textfile collector reads only *.prom files), not \
             \"/var/lib/node-exporter/certherd.txt\"",
            "/etc/certherd/certherd.yaml:6:3: unknown key `path` in `metrics` (expected one of: \
             listen, textfile)",
        ],
    );
    let src = format!("{ACME}metrics: {{}}\n{REST}");
    assert_errors(
        &src,
        &[
            "/etc/certherd/certherd.yaml:3:10: `metrics` needs `listen` (where `certherd run` \
           serves /metrics) or `textfile` (a .prom file for node_exporter's textfile collector), \
           or both",
        ],
    );
}

#[test]
fn notify_mistakes_are_positioned() {
    let src = format!(
        "{ACME}\
notify:
  - type: email
    to: ops@example.com
  - url: https://hooks.example.com/x
  - type: webhook
    url: ftp://hooks.example.com/x
    format: teams
    timeout: 0s
    events: [renewed, renew, renewed]
    expiring_days: 7
    command: [curl]
  - type: exec
    name: pager
    events: []
  - type: exec
    name: pager
    command: page
    expiring_days: 0
  - type: webhook
    headers:
      Content-Type: text/plain
      \"Bad Name\": x
      X-Api-Key: inline-key-never-printed
      x-source: a
      X-Source: b
      X-Empty:
  - just a string
{REST}"
    );
    assert_errors(
        &src,
        &[
            "/etc/certherd/certherd.yaml:4:11: `type` must be one of: webhook, exec, not \"email\"",
            "/etc/certherd/certherd.yaml:6:5: missing key `type` in notifier #2",
            "/etc/certherd/certherd.yaml:8:10: `url` must be an http:// or https:// URL, like \
             https://hooks.example.com/certherd, not \"ftp://hooks.example.com/x\"",
            "/etc/certherd/certherd.yaml:9:13: `format` must be one of: json, slack, not \"teams\"",
            "/etc/certherd/certherd.yaml:10:14: `timeout` must be longer than 0s",
            "/etc/certherd/certherd.yaml:11:23: each item of `events` must be one of: renewed, \
             deploy_failed, verify_mismatch, expiring, not \"renew\"",
            "/etc/certherd/certherd.yaml:11:30: event renewed is listed twice in `events`",
            "/etc/certherd/certherd.yaml:13:5: unknown key `command` in notifier #3 (expected \
             one of: type, name, url, format, headers, timeout, trust_roots, events, \
             expiring_days)",
            "/etc/certherd/certherd.yaml:14:5: missing key `command` in notifier \"pager\"",
            "/etc/certherd/certherd.yaml:16:13: `events` is empty: list at least one of: \
             renewed, deploy_failed, verify_mismatch, expiring (or leave `events` out for all)",
            "/etc/certherd/certherd.yaml:18:11: notifier name \"pager\" is used twice (first at \
             15:11)",
            "/etc/certherd/certherd.yaml:19:14: `command` must be a list (the program and its \
             arguments, no shell), like [systemctl, reload, nginx], not \"page\"",
            "/etc/certherd/certherd.yaml:20:20: `expiring_days` must be a whole number of days, \
             at least 1, not \"0\"",
            "/etc/certherd/certherd.yaml:21:5: missing key `url` in notifier #6",
            "/etc/certherd/certherd.yaml:23:7: header `Content-Type` is set by certherd and \
             cannot be configured",
            "/etc/certherd/certherd.yaml:24:7: \"Bad Name\" is not a valid HTTP header name",
            "/etc/certherd/certherd.yaml:25:18: header `X-Api-Key` carries a credential and is \
             never written inline: use { env: NAME } or { file: PATH }",
            "/etc/certherd/certherd.yaml:27:7: header `X-Source` is given twice (first at 26:7)",
            "/etc/certherd/certherd.yaml:28:14: header `X-Empty` has no value",
            "/etc/certherd/certherd.yaml:29:5: notifier #7 must be a mapping, not \"just a string\"",
        ],
    );
}

#[test]
fn expiring_days_needs_the_expiring_event() {
    let src = format!(
        "{ACME}\
notify:
  - type: exec
    command: [page]
    events: [deploy_failed]
    expiring_days: 3
{REST}"
    );
    assert_errors(
        &src,
        &[
            "/etc/certherd/certherd.yaml:7:5: `expiring_days` has no effect: `events` of \
           notifier #1 does not include expiring",
        ],
    );
}

/// A secret URL or header that is wrong is named by where it comes from,
/// never shown.
#[test]
fn notify_secrets_are_never_shown() {
    let src = format!(
        "{ACME}\
notify:
  - type: webhook
    url: {{ env: NOT_A_URL }}
    headers:
      Authorization: {{ env: BAD_HEADER }}
      X-Auth-Token: {{ env: UNSET_TOKEN }}
  - type: webhook
    url: {{ env: SLACK_URL }}
    headers: {{ Authorization: {HOOK_SECRET:?} }}
{REST}"
    );
    let errs = errors(&src);
    assert_eq!(
        errs,
        [
            "/etc/certherd/certherd.yaml:5:10: the `url` from env NOT_A_URL is not an http:// or \
             https:// URL",
            "/etc/certherd/certherd.yaml:7:22: the value of header `Authorization` from env \
             BAD_HEADER is not a valid HTTP header value (visible ASCII and spaces, one line)",
            "/etc/certherd/certherd.yaml:8:28: environment variable UNSET_TOKEN (for \
             `X-Auth-Token`) is not set",
            "/etc/certherd/certherd.yaml:11:31: header `Authorization` carries a credential and \
             is never written inline: use { env: NAME } or { file: PATH }",
        ]
    );
    let all = errs.join("\n");
    for secret in ["never-printed", "never printed", "hook-token"] {
        assert!(!all.contains(secret), "{all}");
    }
}

#[test]
fn haproxy_and_webhook_targets_load_with_their_defaults() {
    let src = with_head(
        "    targets:
      - name: lb1
        type: haproxy
        socket: /run/haproxy/admin.sock
        combined: certs/example.pem
      - name: lb2
        type: haproxy
        socket: ipv4@127.0.0.1:9999
        combined: /etc/haproxy/certs/example.pem
        cert_name: certs/example.pem
        mode: \"0640\"
        group: haproxy
        timeout: 30s
      - name: vault
        type: webhook
        url: https://vault.example.com/certs
        headers: { Authorization: { env: HOOK_TOKEN }, X-Team: edge }
      - name: local
        type: webhook
        url: http://[::1]:8080/certs
        timeout: 5s
",
    );
    let config = load_str(&src, Path::new(PATH), &fake_env).expect("valid");
    let t = &config.certificates[0].targets;
    let TargetKind::Haproxy(lb1) = &t[0].kind else {
        panic!("haproxy: {:?}", t[0].kind)
    };
    assert_eq!(
        lb1.socket,
        HaproxySocket::Unix(PathBuf::from("/run/haproxy/admin.sock"))
    );
    assert_eq!(lb1.combined(), Path::new("/etc/certherd/certs/example.pem"));
    assert_eq!(lb1.cert_name, "/etc/certherd/certs/example.pem");
    assert_eq!(lb1.file.mode, 0o600);
    assert_eq!(lb1.timeout, Duration::from_secs(10));
    let TargetKind::Haproxy(lb2) = &t[1].kind else {
        panic!("haproxy")
    };
    assert_eq!(lb2.socket, HaproxySocket::Tcp("127.0.0.1:9999".into()));
    assert_eq!(lb2.cert_name, "certs/example.pem");
    assert_eq!(lb2.file.mode, 0o640);
    assert_eq!(lb2.file.group.as_deref(), Some("haproxy"));
    assert_eq!(lb2.timeout, Duration::from_secs(30));
    let TargetKind::Webhook(vault) = &t[2].kind else {
        panic!("webhook")
    };
    assert_eq!(
        vault.url,
        Text::Plain("https://vault.example.com/certs".into())
    );
    assert_eq!(vault.headers[0].0, "Authorization");
    assert_eq!(vault.headers[0].1.expose(), HOOK_SECRET);
    assert!(vault.headers[0].1.is_secret());
    assert_eq!(vault.headers[1].1, Text::Plain("edge".into()));
    assert_eq!(vault.timeout, Duration::from_secs(30));
    assert!(!format!("{config:?}").contains(HOOK_SECRET));
    let TargetKind::Webhook(local) = &t[3].kind else {
        panic!("webhook")
    };
    assert_eq!(local.timeout, Duration::from_secs(5));
}

#[test]
fn haproxy_target_errors_name_the_place() {
    let src = with_head(
        "    targets:
      - name: lb1
        type: haproxy
        combined: /etc/haproxy/certs/example.pem
        reload: [systemctl, reload, haproxy]
        colour: blue
      - name: lb2
        type: haproxy
        socket: 192.0.2.10:9999
        combined: /etc/haproxy/my certs/example.pem
        mode: \"999\"
      - name: lb3
        type: haproxy
        socket: /run/haproxy/admin.sock
        combined: /etc/haproxy/certs/example.pem
        cert_name: \"a.pem;shutdown frontend fe\"
        timeout: 0s
",
    );
    assert_errors(
        &src,
        &[
            "/etc/certherd/certherd.yaml:12:9: missing key `socket` in target \"lb1\"",
            "/etc/certherd/certherd.yaml:16:9: unknown key `colour` in target \"lb1\" (expected \
             one of: name, type, socket, combined, cert_name, mode, owner, group, timeout, \
             reload, reload_timeout, verify)",
            "/etc/certherd/certherd.yaml:19:17: `socket` \"192.0.2.10:9999\" is not on this \
             machine: HAProxy's runtime API carries the private key in clear, so a TCP socket \
             must be on a loopback address (127.0.0.1, [::1], localhost); use a unix socket, \
             or an ssh target for a remote HAProxy",
            "/etc/certherd/certherd.yaml:20:19: the `combined` path \"/etc/haproxy/my \
             certs/example.pem\" cannot be a certificate name on HAProxy's runtime API (no \
             spaces, `;` or backslashes)",
            "/etc/certherd/certherd.yaml:20:19: set `cert_name` to the name HAProxy knows",
            "/etc/certherd/certherd.yaml:21:15: `mode` must be an octal string like \
             \"0640\", not \"999\"",
            "/etc/certherd/certherd.yaml:26:20: `cert_name` \"a.pem;shutdown frontend fe\" \
             cannot be a certificate name on HAProxy's runtime API (no spaces, `;` or \
             backslashes)",
            "/etc/certherd/certherd.yaml:27:18: `timeout` must be longer than 0s",
        ],
    );
}

#[test]
fn webhook_target_errors_name_the_place_and_never_a_secret() {
    let src = with_head(
        "    targets:
      - name: hook1
        type: webhook
        url: http://vault.example.com/certs
        headers: { Authorization: \"Bearer inline-token\" }
      - name: hook2
        type: webhook
        url: { env: SLACK_URL }
        trust_roots: [/nonexistent/root.pem]
        method: PUT
      - name: hook3
        type: webhook
        url: http://127.0.0.1:8080/certs
        headers: { X-Token: { env: MISSING_TOKEN } }
      - name: hook4
        type: webhook
",
    );
    let errs = errors(&src);
    assert_eq!(
        errs,
        [
            "/etc/certherd/certherd.yaml:14:14: `url` \"http://vault.example.com/certs\" is \
             plain http:// to a host that is not a loopback address: the webhook carries the \
             private key, so it must be https:// (http:// only to 127.0.0.1, [::1] or \
             localhost)",
            "/etc/certherd/certherd.yaml:15:35: header `Authorization` carries a credential \
             and is never written inline: use { env: NAME } or { file: PATH }",
            "/etc/certherd/certherd.yaml:19:23: cannot read trust root /nonexistent/root.pem: \
             No such file or directory (os error 2)",
            "/etc/certherd/certherd.yaml:20:9: unknown key `method` in target \"hook2\" \
             (expected one of: name, type, url, headers, timeout, trust_roots, reload, \
             reload_timeout, verify)",
            "/etc/certherd/certherd.yaml:24:36: environment variable MISSING_TOKEN (for \
             `X-Token`) is not set",
            "/etc/certherd/certherd.yaml:25:9: missing key `url` in target \"hook4\"",
        ]
    );
    assert!(!errs.concat().contains("never-printed"));
}

#[test]
fn pkcs12_loads_with_its_password_and_name() {
    let src = with_head(
        "    targets:
      - name: java
        type: file
        pkcs12: tls/example.p12
        pkcs12_password: { env: P12_PASSWORD }
      - name: win
        type: ssh
        host: win.example.com
        pkcs12: /srv/tls/example.pfx
        pkcs12_password: { env: P12_PASSWORD }
        pkcs12_name: Example Web
        mode: \"0640\"
",
    );
    let config = load_str(&src, Path::new(PATH), &fake_env).expect("valid");
    let targets = &config.certificate("example").expect("example").targets;
    let p12 = |path: &str, name: &str| Pkcs12File {
        path: PathBuf::from(path),
        password: Secret::new(P12_SECRET.into(), "env P12_PASSWORD".into()),
        name: name.into(),
    };
    assert_eq!(
        targets[0].kind,
        TargetKind::File(FileTarget {
            files: FileSet {
                pkcs12: Some(p12("/etc/certherd/tls/example.p12", "example")),
                ..FileSet::default()
            },
            mode: 0o600,
            owner: None,
            group: None,
            layout: Layout::Files,
        }),
        "relative to the configuration; named after the certificate; 0600"
    );
    let TargetKind::Ssh(SshTarget { files, .. }) = &targets[1].kind else {
        panic!("{:?}", targets[1].kind)
    };
    assert_eq!(
        files.files.pkcs12,
        Some(p12("/srv/tls/example.pfx", "Example Web"))
    );
    assert_eq!(files.mode, 0o640);
    let debug = format!("{config:?}");
    assert!(!debug.contains(P12_SECRET), "{debug}");
}

#[test]
fn pkcs12_mistakes_are_positioned() {
    let src = with_head(
        "    targets:
      - name: a
        type: file
        pkcs12: /tls/a.p12
      - name: b
        type: file
        key: /tls/b.key
        pkcs12_password: { env: P12_PASSWORD }
        pkcs12_name: b
      - name: c
        type: file
        pkcs12: /tls/c.p12
        pkcs12_password: inline-never-printed
        pkcs12_name: \"\"
      - name: d
        type: file
        pkcs12: /tls/d.p12
        pkcs12_password: { env: UNSET_P12 }
      - name: e
        type: ssh
        host: e.example.com
        pkcs12: e.p12
        pkcs12_password: { env: P12_PASSWORD }
      - name: f
        type: file
        key: /tls/f.key
        pkcs12: /tls/f.key
        pkcs12_password: { env: P12_PASSWORD }
        pkcs12_name: \"tab\\there\"
",
    );
    let shown = errors(&src);
    assert_eq!(
        shown,
        [
            "/etc/certherd/certherd.yaml:14:17: `pkcs12` needs `pkcs12_password`: \
             { env: NAME } or { file: PATH } (an empty password is not allowed)",
            "/etc/certherd/certherd.yaml:18:9: `pkcs12_password` has no effect without `pkcs12`",
            "/etc/certherd/certherd.yaml:19:9: `pkcs12_name` has no effect without `pkcs12`",
            "/etc/certherd/certherd.yaml:23:26: `pkcs12_password` is a secret and is never \
             written inline: use { env: NAME } or { file: PATH }",
            "/etc/certherd/certherd.yaml:24:22: `pkcs12_name` is empty",
            "/etc/certherd/certherd.yaml:28:33: environment variable UNSET_P12 (for \
             `pkcs12_password`) is not set",
            "/etc/certherd/certherd.yaml:32:17: `pkcs12` is a file on the remote host and \
             must be an absolute path, not \"e.p12\"",
            "/etc/certherd/certherd.yaml:37:17: `pkcs12` and `key` name the same file /tls/f.key",
            "/etc/certherd/certherd.yaml:39:22: `pkcs12_name` \"tab\\there\" holds a control \
             character or one beyond U+FFFF",
        ]
    );
    assert!(!shown.concat().contains("inline-never-printed"));
}

#[test]
fn verify_starttls_loads_and_must_be_a_known_protocol() {
    let src = with_head(
        "    targets:
      - name: mx
        type: file
        fullchain: /tls/mx.pem
        verify: { connect: \"127.0.0.1:25\", starttls: smtp }
      - name: imap
        type: file
        fullchain: /tls/imap.pem
        verify: { connect: \"127.0.0.1:143\", starttls: imap }
",
    );
    let config = load_str(&src, Path::new(PATH), &fake_env).expect("valid");
    let targets = &config.certificate("example").expect("example").targets;
    let starttls: Vec<_> = targets
        .iter()
        .map(|t| t.verify.as_ref().unwrap().starttls)
        .collect();
    assert_eq!(starttls, [Some(Starttls::Smtp), Some(Starttls::Imap)]);

    let bad = with_head(
        "    targets:
      - name: mx
        type: file
        fullchain: /tls/mx.pem
        verify:
          connect: \"127.0.0.1:25\"
          starttls: ldap
      - name: pg
        type: file
        fullchain: /tls/pg.pem
        verify:
          connect: \"127.0.0.1:5432\"
          starttls: [postgres]
",
    );
    assert_errors(
        &bad,
        &[
            "/etc/certherd/certherd.yaml:17:21: `starttls` must be one of: smtp, imap, pop3, \
             postgres, not \"ldap\"",
            "/etc/certherd/certherd.yaml:23:21: `starttls` must be one of: smtp, imap, pop3, \
             postgres, not a list",
        ],
    );
}

#[test]
fn layout_is_files_or_links_and_only_where_files_are_written() {
    let src = with_head(
        "    targets:
      - { name: web1, type: file, fullchain: /etc/tls/a.pem, layout: symlinks }
      - { name: web2, type: file, fullchain: /etc/tls/b.pem, layout: links }
      - { name: lb, type: haproxy, socket: /run/haproxy.sock, combined: /etc/tls/c.pem, layout: links }
",
    );
    assert_errors(
        &src,
        &[
            "/etc/certherd/certherd.yaml:12:70: `layout` must be files or links, not \"symlinks\"",
            "/etc/certherd/certherd.yaml:14:89: unknown key `layout` in target \"lb\" (expected \
             one of: name, type, socket, combined, cert_name, mode, owner, group, timeout, reload, \
             reload_timeout, verify)",
        ],
    );
}

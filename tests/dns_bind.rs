//! dns-01 against a real BIND9: the rfc2136 backend (DNS UPDATE with TSIG),
//! the exec backend (nsupdate), zones found from the SOA, CNAME delegation,
//! the propagation wait on a lagging secondary, cleanup, and preflight.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use certherd::acme::solver::dns01::{self, Dns01Solver};
use certherd::acme::solver::{ChallengeData, SolverError};
use certherd::config::{
    CommandSpec, Dns01, DnsBackend, DnsExec, Rfc2136, Secret, Tsig, TsigAlgorithm,
};
use certherd::dns::{self, rfc2136, DnsError};
use support::bind::{CNAME_TARGET, DELEGATED_ZONE, KEY_NAME, ZONE};
use support::{sha256_hex, Bind, BindOptions, ScratchDir};

const APEX: &str = "example.test";
const WILDCARD: &str = "*.example.test";
const APEX_NAME: &str = "_acme-challenge.example.test.";
/// A secret no server has: 32 bytes, base64.
const WRONG_SECRET: &str = "d3JvbmcgeWV0IHdlbGwtZm9ybWVkIHNlY3JldCEhISE=";

/// A challenge with a TXT value shaped like a real one (43 base64url
/// characters), different for every `(domain, seed)`.
fn challenge(domain: &str, seed: &str) -> ChallengeData {
    use base64::Engine;
    let digest = hex::decode(sha256_hex(format!("{domain}/{seed}").as_bytes())).unwrap();
    let dns_value = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest);
    ChallengeData {
        domain: domain.to_string(),
        token: format!("token-{seed}"),
        key_authorization: format!("token-{seed}.thumbprint"),
        dns_value,
        digest: digest.try_into().unwrap(),
    }
}

fn algorithm(name: &str) -> TsigAlgorithm {
    TsigAlgorithm::parse(name).unwrap()
}

fn rfc2136_cfg(bind: &Bind, secret: &str, zone: Option<&str>) -> Dns01 {
    Dns01 {
        backend: DnsBackend::Rfc2136(Rfc2136 {
            server: bind.server_addr().to_string(),
            zone: zone.map(str::to_string),
            tsig: Tsig {
                name: KEY_NAME.to_string(),
                algorithm: algorithm(bind.tsig_algorithm()),
                secret: Secret::new(secret.to_string(), "test".into()),
            },
        }),
        propagation_timeout: Duration::from_secs(10),
        resolver: None,
    }
}

fn good_cfg(bind: &Bind) -> Dns01 {
    rfc2136_cfg(bind, bind.tsig_secret(), None)
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn name(s: &str) -> dns::Name {
    dns::parse_name(s).unwrap()
}

/// (a) An apex and its wildcard share `_acme-challenge.example.test`: both
/// values are published side by side, each cleanup removes only its own.
#[tokio::test]
async fn rfc2136_publishes_apex_and_wildcard_side_by_side_and_removes_each() {
    let bind = Bind::start(BindOptions::default());
    let cfg = good_cfg(&bind);
    let solver = Dns01Solver::default();
    let apex = challenge(APEX, "a");
    let wildcard = challenge(WILDCARD, "a");

    solver.present(&cfg, &apex).await.unwrap();
    solver.present(&cfg, &wildcard).await.unwrap();
    assert_eq!(
        bind.txt(APEX_NAME),
        sorted(vec![apex.dns_value.clone(), wildcard.dns_value.clone()])
    );
    solver
        .wait_propagated(&[(&cfg, &apex), (&cfg, &wildcard)])
        .await
        .unwrap();

    solver.cleanup(&cfg, &apex).await;
    assert_eq!(bind.txt(APEX_NAME), vec![wildcard.dns_value.clone()]);
    solver.cleanup(&cfg, &wildcard).await;
    assert_eq!(bind.txt(APEX_NAME), Vec::<String>::new());
    assert_eq!(bind.zone_txt_records(ZONE), Vec::<String>::new());
}

/// Presenting the same challenge twice (a retried run) leaves one value.
#[tokio::test]
async fn rfc2136_adding_a_value_twice_keeps_one() {
    let bind = Bind::start(BindOptions::default());
    let backend = rfc2136::Rfc2136::new(match &good_cfg(&bind).backend {
        DnsBackend::Rfc2136(r) => r,
        _ => unreachable!(),
    })
    .await
    .unwrap();
    let (zone, fqdn) = (name(ZONE), name(APEX_NAME));
    backend.add_txt(&zone, &fqdn, "same").await.unwrap();
    backend.add_txt(&zone, &fqdn, "same").await.unwrap();
    assert_eq!(bind.txt(APEX_NAME), vec!["same".to_string()]);
    backend.remove_txt(&zone, &fqdn, "same").await.unwrap();
    // Removing what is not there is not an error.
    backend.remove_txt(&zone, &fqdn, "same").await.unwrap();
    assert_eq!(bind.zone_txt_records(ZONE), Vec::<String>::new());
}

/// An answer too large for UDP is fetched again over TCP: forty values at
/// one name (about 2 KB) are all read back.
#[tokio::test]
async fn a_truncated_answer_is_repeated_over_tcp() {
    let bind = Bind::start(BindOptions::default());
    let DnsBackend::Rfc2136(r) = &good_cfg(&bind).backend else {
        unreachable!()
    };
    let backend = rfc2136::Rfc2136::new(r).await.unwrap();
    let (zone, fqdn) = (name(ZONE), name(APEX_NAME));
    let values: Vec<String> = (0..40)
        .map(|i| challenge(APEX, &i.to_string()).dns_value)
        .collect();
    for v in &values {
        backend.add_txt(&zone, &fqdn, v).await.unwrap();
    }
    let server = dns::Server::at(bind.server_addr());
    let answer = dns::query::txt_at(&server, &fqdn, Duration::from_secs(5))
        .await
        .unwrap();
    let dns::query::TxtAnswer::Values(found) = answer else {
        panic!("{answer:?}")
    };
    assert_eq!(sorted(found), sorted(values.clone()));
    for v in &values {
        backend.remove_txt(&zone, &fqdn, v).await.unwrap();
    }
    assert_eq!(bind.zone_txt_records(ZONE), Vec::<String>::new());
}

/// (b) Without `zone`, the zone is the nearest SOA above the name, asked
/// of the rfc2136 server: a delegated `b.example.test` wins over
/// `example.test` for names below it.
#[tokio::test]
async fn rfc2136_finds_the_zone_from_the_soa() {
    let bind = Bind::start(BindOptions {
        extra_zones: vec!["b.example.test.".into()],
        ..BindOptions::default()
    });
    let cfg = good_cfg(&bind);
    let DnsBackend::Rfc2136(r) = &cfg.backend else {
        unreachable!()
    };
    let backend = rfc2136::Rfc2136::new(r).await.unwrap();
    let zone_of = |n: &'static str| {
        let backend = backend.clone();
        async move { backend.find_zone(&name(n)).await.unwrap().to_ascii() }
    };
    assert_eq!(
        zone_of("_acme-challenge.a.b.example.test.").await,
        "b.example.test."
    );
    assert_eq!(
        zone_of("_acme-challenge.b.example.test.").await,
        "b.example.test."
    );
    assert_eq!(
        zone_of("_acme-challenge.x.example.test.").await,
        "example.test."
    );

    let solver = Dns01Solver::default();
    let ch = challenge("a.b.example.test", "b");
    solver.present(&cfg, &ch).await.unwrap();
    assert_eq!(
        bind.zone_txt_records("b.example.test."),
        vec![format!(
            "_acme-challenge.a.b.example.test. {}",
            ch.dns_value
        )]
    );
    assert_eq!(bind.zone_txt_records(ZONE), Vec::<String>::new());
    solver.wait_propagated(&[(&cfg, &ch)]).await.unwrap();
    solver.cleanup(&cfg, &ch).await;
    assert_eq!(
        bind.zone_txt_records("b.example.test."),
        Vec::<String>::new()
    );

    // A name under no zone of the server.
    let e = backend
        .find_zone(&name("_acme-challenge.example.org."))
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "no zone found for _acme-challenge.example.org.: {} has no SOA record at it or at \
             any parent name (last answer: REFUSED for .)",
            bind.server_addr()
        )
    );
}

/// (c) `_acme-challenge.app.example.test` is a CNAME into
/// `acme.example.test`: the record is written at the target, in that zone,
/// and waited for on that zone's servers.
#[tokio::test]
async fn rfc2136_follows_a_cname_into_the_validation_zone() {
    let bind = Bind::start(BindOptions {
        cname_delegation: true,
        ..BindOptions::default()
    });
    let cfg = good_cfg(&bind);
    let solver = Dns01Solver::default();
    let ch = challenge("app.example.test", "c");

    solver.present(&cfg, &ch).await.unwrap();
    assert_eq!(bind.txt(CNAME_TARGET), vec![ch.dns_value.clone()]);
    assert_eq!(
        bind.zone_txt_records(DELEGATED_ZONE),
        vec![format!("{CNAME_TARGET} {}", ch.dns_value)]
    );
    assert_eq!(bind.zone_txt_records(ZONE), Vec::<String>::new());
    solver.wait_propagated(&[(&cfg, &ch)]).await.unwrap();
    solver.cleanup(&cfg, &ch).await;
    assert_eq!(bind.zone_txt_records(DELEGATED_ZONE), Vec::<String>::new());

    // With the zone configured, it must be the target's zone.
    let pinned = rfc2136_cfg(&bind, bind.tsig_secret(), Some(DELEGATED_ZONE));
    solver.present(&pinned, &ch).await.unwrap();
    assert_eq!(
        bind.zone_txt_records(DELEGATED_ZONE),
        vec![format!("{CNAME_TARGET} {}", ch.dns_value)]
    );
    solver.cleanup(&pinned, &ch).await;
    assert_eq!(bind.zone_txt_records(DELEGATED_ZONE), Vec::<String>::new());
}

/// (d) A wrong secret: the error names the server, the key and BADSIG, and
/// the zone is untouched. An unknown key name: BADKEY.
#[tokio::test]
async fn rfc2136_wrong_key_is_refused_with_server_key_and_codes() {
    let bind = Bind::start(BindOptions::default());
    let solver = Dns01Solver::default();
    let ch = challenge(APEX, "d");

    let wrong = rfc2136_cfg(&bind, WRONG_SECRET, None);
    let e = solver.present(&wrong, &ch).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "dns-01: adding TXT {:?} at {APEX_NAME}: DNS UPDATE to {} with TSIG key certherd. \
             was refused: NOTAUTH (TSIG error BADSIG): the server does not accept this key's secret",
            ch.dns_value,
            bind.server_addr()
        )
    );
    assert!(matches!(
        e,
        SolverError::Dns01(DnsError::Add { ref source, .. })
            if matches!(**source, DnsError::Refused { tsig_error: Some(dns::TsigError::BadSig), .. })
    ));
    assert_eq!(bind.zone_txt_records(ZONE), Vec::<String>::new());

    let mut unknown = good_cfg(&bind);
    if let DnsBackend::Rfc2136(r) = &mut unknown.backend {
        r.tsig.name = "stranger.".into();
    }
    let e = solver.present(&unknown, &ch).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "dns-01: adding TXT {:?} at {APEX_NAME}: DNS UPDATE to {} with TSIG key stranger. \
             was refused: NOTAUTH (TSIG error BADKEY): the server does not know this key (its \
             name or algorithm differ from the server's)",
            ch.dns_value,
            bind.server_addr()
        )
    );
    assert_eq!(bind.zone_txt_records(ZONE), Vec::<String>::new());
    // A zone the server does not serve: refused, with the response code.
    let backend = rfc2136::Rfc2136::new(match &good_cfg(&bind).backend {
        DnsBackend::Rfc2136(r) => r,
        _ => unreachable!(),
    })
    .await
    .unwrap();
    let e = backend
        .add_txt(
            &name("example.org."),
            &name("_acme-challenge.example.org."),
            "v",
        )
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "DNS UPDATE to {} with TSIG key certherd. was refused: NOTAUTH: the server is not \
             authoritative for the zone",
            bind.server_addr()
        )
    );
    // Nothing was left for cleanup_all.
    solver.cleanup_all().await;
    assert_eq!(bind.zone_txt_records(ZONE), Vec::<String>::new());
}

/// (e) With a secondary that gets the change only when the test says so,
/// the wait returns only after the secondary answers both values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn propagation_waits_for_a_lagging_secondary() {
    let bind = Bind::start(BindOptions {
        lagging_secondary: true,
        ..BindOptions::default()
    });
    let secondary = bind.secondary_addr().unwrap();
    let cfg = good_cfg(&bind);
    let solver = std::sync::Arc::new(Dns01Solver::default());
    let apex = challenge(APEX, "e");
    let wildcard = challenge(WILDCARD, "e");
    solver.present(&cfg, &apex).await.unwrap();
    solver.present(&cfg, &wildcard).await.unwrap();
    let both = sorted(vec![apex.dns_value.clone(), wildcard.dns_value.clone()]);
    assert_eq!(bind.txt(APEX_NAME), both);
    assert_eq!(bind.txt_on(secondary, APEX_NAME), Vec::<String>::new());

    let start = Instant::now();
    let waiting = {
        let (solver, cfg, apex, wildcard) =
            (solver.clone(), cfg.clone(), apex.clone(), wildcard.clone());
        tokio::spawn(async move {
            let result = solver
                .wait_propagated(&[(&cfg, &apex), (&cfg, &wildcard)])
                .await;
            (result, Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !waiting.is_finished(),
        "returned before the secondary had the records"
    );
    assert_eq!(bind.txt_on(secondary, APEX_NAME), Vec::<String>::new());

    let synced_at = Instant::now();
    bind.sync_secondary();
    let (result, returned_at) = tokio::time::timeout(Duration::from_secs(15), waiting)
        .await
        .expect("the wait ends after the secondary synced")
        .unwrap();
    result.unwrap();
    // It answered when the wait returned.
    assert_eq!(bind.txt_on(secondary, APEX_NAME), both);
    assert!(returned_at > synced_at);
    eprintln!(
        "propagation wait: {:?} in all, {:?} after the secondary was told to sync",
        returned_at - start,
        returned_at - synced_at
    );

    solver.cleanup(&cfg, &apex).await;
    solver.cleanup(&cfg, &wildcard).await;
    assert_eq!(bind.zone_txt_records(ZONE), Vec::<String>::new());
}

/// (e) A secondary that never gets the change: the timeout names it, its
/// address, the record and what it answered.
#[tokio::test]
async fn propagation_timeout_names_the_lagging_server() {
    let bind = Bind::start(BindOptions {
        lagging_secondary: true,
        ..BindOptions::default()
    });
    let secondary = bind.secondary_addr().unwrap();
    let mut cfg = good_cfg(&bind);
    cfg.propagation_timeout = Duration::from_millis(1500);
    let solver = Dns01Solver::default();
    let ch = challenge(APEX, "timeout");
    solver.present(&cfg, &ch).await.unwrap();

    let start = Instant::now();
    let e = solver.wait_propagated(&[(&cfg, &ch)]).await.unwrap_err();
    let waited = start.elapsed();
    assert_eq!(
        e.to_string(),
        format!(
            "dns-01: not answered by every authoritative server within 1.5s: ns2.example.test. \
             ({secondary}) does not answer TXT {:?} at {APEX_NAME} (last answer: NXDOMAIN)",
            ch.dns_value
        )
    );
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    solver.cleanup(&cfg, &ch).await;
    assert_eq!(bind.zone_txt_records(ZONE), Vec::<String>::new());
}

/// Writes an executable `sh` script.
fn script(dir: &std::path::Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    fs::write(&path, format!("#!/bin/sh\nset -eu\n{body}")).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path.to_string_lossy().into_owned()
}

/// An exec backend whose programs call `nsupdate` against `bind` and log
/// their environment to `DIR/calls`.
fn nsupdate_exec(bind: &Bind, dir: &std::path::Path) -> Dns01 {
    let calls = dir.join("calls");
    let body = |verb: &str| {
        format!(
            "echo \"{verb} $CERTHERD_DNS_FQDN $CERTHERD_DNS_ZONE $CERTHERD_DNS_VALUE\" >> '{calls}'\n\
             printf 'server {ip} 53\\nzone %s\\nupdate {verb} %s 60 TXT \"%s\"\\nsend\\n' \
             \"$CERTHERD_DNS_ZONE\" \"$CERTHERD_DNS_FQDN\" \"$CERTHERD_DNS_VALUE\" \
             | nsupdate -t 5 -y '{key}'\n",
            calls = calls.display(),
            ip = bind.server_addr().ip(),
            key = bind.nsupdate_key(),
        )
    };
    let spec = |path: String| CommandSpec {
        argv: vec![path],
        timeout: Duration::from_secs(10),
    };
    Dns01 {
        backend: DnsBackend::Exec(DnsExec {
            add: spec(script(dir, "add", &body("add"))),
            remove: spec(script(dir, "remove", &body("delete"))),
        }),
        propagation_timeout: Duration::from_secs(10),
        resolver: Some(bind.server_addr().to_string()),
    }
}

/// (f) The exec backend end to end: programs that run nsupdate add both
/// values, the wait sees them on the server, the programs remove them.
#[tokio::test]
async fn exec_backend_with_nsupdate_end_to_end() {
    support::find_binary("nsupdate", "bind9-dnsutils");
    let bind = Bind::start(BindOptions::default());
    let dir = ScratchDir::new("certherd-dns-exec-");
    let cfg = nsupdate_exec(&bind, dir.path());
    dns01::preflight(&cfg, None).await.unwrap();
    let solver = Dns01Solver::default();
    let apex = challenge(APEX, "f");
    let wildcard = challenge(WILDCARD, "f");

    solver.present(&cfg, &apex).await.unwrap();
    solver.present(&cfg, &wildcard).await.unwrap();
    solver
        .wait_propagated(&[(&cfg, &apex), (&cfg, &wildcard)])
        .await
        .unwrap();
    assert_eq!(
        bind.txt(APEX_NAME),
        sorted(vec![apex.dns_value.clone(), wildcard.dns_value.clone()])
    );
    solver.cleanup(&cfg, &apex).await;
    solver.cleanup(&cfg, &wildcard).await;
    assert_eq!(bind.zone_txt_records(ZONE), Vec::<String>::new());
    assert_eq!(
        fs::read_to_string(dir.path().join("calls")).unwrap(),
        format!(
            "add {APEX_NAME} {ZONE} {a}\nadd {APEX_NAME} {ZONE} {w}\n\
             delete {APEX_NAME} {ZONE} {a}\ndelete {APEX_NAME} {ZONE} {w}\n",
            a = apex.dns_value,
            w = wildcard.dns_value
        )
    );
}

/// (f) A failing add program: its stderr in the error, and its remove
/// program run right away in case it added something before failing.
#[tokio::test]
async fn exec_backend_failure_carries_stderr_and_cleans_up() {
    let bind = Bind::start(BindOptions::default());
    let dir = ScratchDir::new("certherd-dns-exec-");
    let mut cfg = nsupdate_exec(&bind, dir.path());
    let calls = dir.path().join("calls");
    if let DnsBackend::Exec(e) = &mut cfg.backend {
        e.add.argv = vec![script(
            dir.path(),
            "failing-add",
            &format!(
                "echo \"add $CERTHERD_DNS_FQDN\" >> '{}'\necho 'provider says: quota exceeded' >&2\nexit 3\n",
                calls.display()
            ),
        )];
    }
    let solver = Dns01Solver::default();
    let ch = challenge(APEX, "fail");
    let e = solver.present(&cfg, &ch).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "dns-01: adding TXT {:?} at {APEX_NAME}: add program `{}/failing-add` exited 3: \
             provider says: quota exceeded",
            ch.dns_value,
            dir.path().display()
        )
    );
    assert_eq!(
        fs::read_to_string(&calls).unwrap(),
        format!(
            "add {APEX_NAME}\ndelete {APEX_NAME} {ZONE} {}\n",
            ch.dns_value
        )
    );
}

/// (g) An interrupted run: records presented and never cleaned up are
/// removed by cleanup_all, including one behind a CNAME.
#[tokio::test]
async fn cleanup_all_removes_what_was_left_presented() {
    let bind = Bind::start(BindOptions {
        cname_delegation: true,
        ..BindOptions::default()
    });
    let cfg = good_cfg(&bind);
    let solver = Dns01Solver::default();
    let presented = [
        challenge(APEX, "g"),
        challenge(WILDCARD, "g"),
        challenge("app.example.test", "g"),
    ];
    for ch in &presented {
        solver.present(&cfg, ch).await.unwrap();
    }
    assert_eq!(bind.zone_txt_records(ZONE).len(), 2);
    assert_eq!(bind.zone_txt_records(DELEGATED_ZONE).len(), 1);

    solver.cleanup_all().await;
    assert_eq!(bind.zone_txt_records(ZONE), Vec::<String>::new());
    assert_eq!(bind.zone_txt_records(DELEGATED_ZONE), Vec::<String>::new());
    // Nothing is left to wait for.
    let e = solver
        .wait_propagated(&[(&cfg, &presented[0])])
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "dns-01: no TXT record was presented for example.test with this value"
    );
}

/// (h) Preflight: the key is accepted (with and without a configured
/// zone); a wrong secret is named; exec programs must exist.
#[tokio::test]
async fn preflight_checks_the_key_with_a_signed_query() {
    let bind = Bind::start(BindOptions::default());
    dns01::preflight(&good_cfg(&bind), None).await.unwrap();
    dns01::preflight(&rfc2136_cfg(&bind, bind.tsig_secret(), Some(ZONE)), None)
        .await
        .unwrap();

    let e = dns01::preflight(&rfc2136_cfg(&bind, WRONG_SECRET, Some(ZONE)), None)
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "dns-01: signed SOA query for {ZONE} to {} with TSIG key certherd. was refused: \
             NOTAUTH (TSIG error BADSIG): the server does not accept this key's secret",
            bind.server_addr()
        )
    );
    // Without `zone`, the zone of a name to be proven is found and checked.
    dns01::preflight(&good_cfg(&bind), Some("*.example.test"))
        .await
        .unwrap();
    let e = dns01::preflight(
        &rfc2136_cfg(&bind, WRONG_SECRET, None),
        Some("*.example.test"),
    )
    .await
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "dns-01: signed SOA query for {ZONE} to {} with TSIG key certherd. was refused: \
             NOTAUTH (TSIG error BADSIG): the server does not accept this key's secret",
            bind.server_addr()
        )
    );
    let e = dns01::preflight(&rfc2136_cfg(&bind, WRONG_SECRET, None), None)
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "dns-01: signed SOA query for . to {} with TSIG key certherd. was refused: \
             NOTAUTH (TSIG error BADSIG): the server does not accept this key's secret",
            bind.server_addr()
        )
    );
    // A zone the server does not serve.
    let e = dns01::preflight(
        &rfc2136_cfg(&bind, bind.tsig_secret(), Some("example.org.")),
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "dns-01: signed SOA query for example.org. to {}: unusable answer: the server does \
             not serve the zone example.org. (REFUSED)",
            bind.server_addr()
        )
    );

    let dir = ScratchDir::new("certherd-dns-exec-");
    let mut cfg = nsupdate_exec(&bind, dir.path());
    dns01::preflight(&cfg, None).await.unwrap();
    if let DnsBackend::Exec(e) = &mut cfg.backend {
        e.remove.argv = vec![dir.path().join("missing").to_string_lossy().into_owned()];
    }
    assert_eq!(
        dns01::preflight(&cfg, None).await.unwrap_err().to_string(),
        format!(
            "dns-01: remove program `{}/missing` is not an executable file",
            dir.path().display()
        )
    );
}

/// hmac-sha384 and hmac-sha512 keys work as well as hmac-sha256; a key
/// with the right name and secret but another algorithm is BADKEY.
#[tokio::test]
async fn rfc2136_every_tsig_algorithm() {
    for alg in ["hmac-sha384", "hmac-sha512"] {
        let bind = Bind::start(BindOptions {
            tsig_algorithm: alg,
            ..BindOptions::default()
        });
        let cfg = good_cfg(&bind);
        dns01::preflight(&cfg, None).await.unwrap();
        let solver = Dns01Solver::default();
        let ch = challenge(APEX, alg);
        solver.present(&cfg, &ch).await.unwrap();
        assert_eq!(bind.txt(APEX_NAME), vec![ch.dns_value.clone()], "{alg}");
        solver.cleanup(&cfg, &ch).await;
        assert_eq!(bind.zone_txt_records(ZONE), Vec::<String>::new(), "{alg}");

        let mut other = cfg.clone();
        if let DnsBackend::Rfc2136(r) = &mut other.backend {
            r.tsig.algorithm = TsigAlgorithm::HmacSha256;
        }
        let e = dns01::preflight(&other, None).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "dns-01: signed SOA query for . to {} with TSIG key certherd. was refused: \
                 NOTAUTH (TSIG error BADKEY): the server does not know this key (its name or \
                 algorithm differ from the server's)",
                bind.server_addr()
            ),
            "{alg}"
        );
    }
}

/// A certherd configuration issuing `example.test` + `*.example.test`
/// from `pebble` through dns-01 on `bind` (rfc2136), into two files.
fn wildcard_config(
    pebble: &support::Pebble,
    bind: &Bind,
    setup: &support::run::Setup,
    secret: &str,
) -> String {
    let secret_file = setup.dir.path().join("tsig.b64");
    fs::write(&secret_file, secret).unwrap();
    format!(
        r#"state_dir: {state}
acme:
  directory: {dir}
  contact: [ops@certherd.test]
  trust_roots: [{root}]
challenges:
  bind:
    type: dns-01
    propagation_timeout: 20s
    rfc2136:
      server: "{server}"
      tsig: {{ name: {KEY_NAME}, algorithm: {alg}, secret: {{ file: {secret} }} }}
certificates:
  wild:
    domains: [{APEX}, "{WILDCARD}"]
    challenge: bind
    targets:
      - name: files
        type: file
        fullchain: {out}/fullchain.pem
        key: {out}/key.pem
"#,
        state = setup.state_dir().display(),
        dir = pebble.directory_url(),
        root = pebble.ca_tls_root_path().display(),
        server = bind.server_addr(),
        alg = bind.tsig_algorithm(),
        secret = secret_file.display(),
        out = setup.dir.path().display(),
    )
}

/// The certherd binary issues a wildcard certificate from Pebble, whose
/// validation authority asks BIND: both values published at one name,
/// waited for, validated, removed.
#[test]
fn renew_issues_a_wildcard_certificate_through_rfc2136() {
    let bind = Bind::start(BindOptions::default());
    let pebble = support::Pebble::start(support::PebbleOptions {
        dns_server: Some(bind.server_addr()),
        ..support::PebbleOptions::default()
    });
    let setup = support::run::Setup::new();
    setup.write_config(&wildcard_config(&pebble, &bind, &setup, bind.tsig_secret()));
    setup.run(&["check"]).assert_code(0);

    let start = Instant::now();
    let run = setup.run(&["renew"]);
    let took = start.elapsed();
    run.assert_code(0);
    eprintln!("wildcard issuance through dns-01 (rfc2136) took {took:?}");
    assert!(
        run.stdout
            .contains("wild [example.test, *.example.test]: renewed (no certificate yet)"),
        "{}",
        run.all()
    );
    let pem = fs::read_to_string(setup.dir.path().join("fullchain.pem")).unwrap();
    let der = pem::parse_many(&pem).unwrap()[0].contents().to_vec();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let mut sans: Vec<String> = cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect();
    sans.sort();
    assert_eq!(sans, ["DNSName(*.example.test)", "DNSName(example.test)"]);
    assert_eq!(bind.zone_txt_records(ZONE), Vec::<String>::new());
}

/// `renew --dry-run` preflights the solver: a wrong TSIG secret is reported
/// with the server, the key and BADSIG, and nothing is ordered or written.
#[test]
fn dry_run_reports_a_wrong_tsig_key() {
    let bind = Bind::start(BindOptions::default());
    let pebble = support::Pebble::start(support::PebbleOptions {
        dns_server: Some(bind.server_addr()),
        ..support::PebbleOptions::default()
    });
    let setup = support::run::Setup::new();
    setup.write_config(&wildcard_config(&pebble, &bind, &setup, WRONG_SECRET));
    let run = setup.run(&["renew", "--dry-run"]);
    run.assert_code(1);
    let expected = format!(
        "dns-01: signed SOA query for {ZONE} to {} with TSIG key certherd. was refused: NOTAUTH \
         (TSIG error BADSIG): the server does not accept this key's secret",
        bind.server_addr()
    );
    assert!(run.all().contains(&expected), "{}", run.all());
    assert_eq!(bind.zone_txt_records(ZONE), Vec::<String>::new());
}

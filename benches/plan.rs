//! The plan over 10,000 certificates: `plan::plan_certificate` for each
//! (configuration, stored certificate facts) pair, as `renew` and `status`
//! do before anything else. Pure computation: no I/O.
//!
//! `cargo bench --bench plan`

use std::hint::black_box;

use certherd::cert::CertInfo;
use certherd::config::{CertificateConfig, ChallengeChoice, KeyType, RenewalPolicy, Threshold};
use certherd::plan::plan_certificate;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use time::OffsetDateTime;

const N: usize = 10_000;

fn fixtures(now: OffsetDateTime) -> Vec<(CertificateConfig, CertInfo)> {
    (0..N)
        .map(|i| {
            let domains = vec![
                format!("c{i}.bench.certherd.test"),
                format!("www.c{i}.bench.certherd.test"),
            ];
            let cfg = CertificateConfig {
                name: format!("c{i}"),
                domains: domains.clone(),
                key: KeyType::EcdsaP256,
                reuse_key: false,
                challenge: ChallengeChoice::All("standalone".into()),
                renewal: RenewalPolicy {
                    // Half by share, half by duration, like a mixed fleet.
                    before_expiry: if i % 2 == 0 {
                        Threshold::Share(0.33)
                    } else {
                        Threshold::Remaining(std::time::Duration::from_secs(30 * 86400))
                    },
                    ..RenewalPolicy::default()
                },
                targets: vec![],
                rollout: Default::default(),
            };
            // Issued over the last 90 days: about a third is due.
            let not_before = now - time::Duration::hours((i % (90 * 24)) as i64);
            let info = CertInfo {
                serial: format!("{i:016x}"),
                sha256: format!("{i:064x}"),
                not_before,
                not_after: not_before + time::Duration::days(90),
                // The stored order differs from the configured one half the time.
                domains: if i % 2 == 0 {
                    domains
                } else {
                    domains.into_iter().rev().collect()
                },
                key_type: Some(KeyType::EcdsaP256),
                authority_key_id: None,
            };
            (cfg, info)
        })
        .collect()
}

fn plan(c: &mut Criterion) {
    let now = OffsetDateTime::now_utc();
    let fleet = fixtures(now);
    let mut g = c.benchmark_group("plan");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("10000 certificates", |b| {
        b.iter(|| {
            let due = fleet
                .iter()
                .map(|(cfg, info)| plan_certificate(cfg, Some(info), now, false))
                .filter(|p| p.due.is_some())
                .count();
            black_box(due)
        })
    });
    g.bench_function("10000 certificates, none stored", |b| {
        b.iter(|| {
            let due = fleet
                .iter()
                .map(|(cfg, _)| plan_certificate(cfg, None, now, false))
                .filter(|p| p.due.is_some())
                .count();
            black_box(due)
        })
    });
    g.finish();
}

criterion_group!(benches, plan);
criterion_main!(benches);

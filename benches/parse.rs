//! Certificate parsing, the work `renew` and `status` repeat for every
//! stored certificate: the facts of one DER leaf (`cert::info`), a bundle
//! from a CA's PEM chain (`Bundle::from_chain`), and a stored version read
//! back from the state directory (`Store::current`: three files, PEM, X.509).
//!
//! `cargo bench --bench parse`

use std::hint::black_box;
use std::time::Duration;

use certherd::cert::{self, Bundle, KeyPem};
use certherd::store::Store;
use criterion::{criterion_group, criterion_main, Criterion};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use time::OffsetDateTime;

/// A leaf for one name issued by an intermediate, as a CA returns it: (key PEM, leaf + chain PEM).
fn issued() -> (String, String) {
    let now = OffsetDateTime::now_utc();
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name
        .push(DnType::CommonName, "bench intermediate");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::new(vec!["www.bench.certherd.test".to_string()]).unwrap();
    p.not_before = now - time::Duration::days(1);
    p.not_after = now + time::Duration::days(89);
    let leaf = p.signed_by(&key, &issuer).unwrap();
    (key.serialize_pem(), format!("{}{}", leaf.pem(), ca_pem))
}

fn parse(c: &mut Criterion) {
    let (key, chain) = issued();
    let der = cert::pem_certificates(&chain).unwrap()[0].to_vec();
    let mut g = c.benchmark_group("parse");
    g.bench_function("cert::info (one DER leaf)", |b| {
        b.iter(|| cert::info(black_box(&der)).unwrap())
    });
    g.bench_function("pem_certificates (leaf + chain)", |b| {
        b.iter(|| cert::pem_certificates(black_box(&chain)).unwrap())
    });
    g.bench_function("Bundle::from_chain", |b| {
        b.iter(|| Bundle::from_chain(KeyPem::new(key.clone()), black_box(&chain)).unwrap())
    });
    let dir = tempfile::tempdir().unwrap();
    let url = "https://ca.bench.test/dir";
    let store = Store::open(dir.path(), url, Duration::ZERO).unwrap();
    let bundle = Bundle::from_chain(KeyPem::new(key.clone()), &chain).unwrap();
    store
        .install("bench", &bundle, OffsetDateTime::now_utc())
        .unwrap();
    drop(store);
    let reader = Store::open_readonly(dir.path(), url);
    g.bench_function("Store::current (read a stored version)", |b| {
        b.iter(|| reader.current(black_box("bench")).unwrap().unwrap())
    });
    g.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);

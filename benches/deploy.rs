//! Writing a `file` target (full chain and key), as every deployment does:
//! plain files renamed into place (`layout: files`) against a new version
//! folder switched by one rename (`layout: links`). Both fsync every file
//! and folder, so the disk under `target/` decides most of the time.
//!
//! `cargo bench --bench deploy`

use std::hint::black_box;

use certherd::cert::{Bundle, KeyPem};
use certherd::config::{FileSet, FileTarget, Layout};
use certherd::deploy::file;
use criterion::{criterion_group, criterion_main, Criterion};
use rcgen::{CertificateParams, KeyPair};

fn bundle() -> Bundle {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let p = CertificateParams::new(vec!["www.bench.certherd.test".to_string()]).unwrap();
    let leaf = p.self_signed(&key).unwrap().pem();
    Bundle::from_chain(KeyPem::new(key.serialize_pem()), &leaf).unwrap()
}

fn deploy(c: &mut Criterion) {
    let b = bundle();
    let mut g = c.benchmark_group("deploy");
    for layout in [Layout::Files, Layout::Links] {
        // On the project's disk, not a tmpfs: fsync is part of the cost.
        std::fs::create_dir_all("target").unwrap();
        let dir = tempfile::tempdir_in("target").unwrap();
        let t = FileTarget {
            files: FileSet {
                fullchain: Some(dir.path().join("site.pem")),
                key: Some(dir.path().join("site.key")),
                ..FileSet::default()
            },
            mode: 0o600,
            owner: None,
            group: None,
            layout,
        };
        g.bench_function(format!("file target, layout {layout:?}"), |bench| {
            bench.iter(|| file::write(black_box(&t), black_box(&b)).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, deploy);
criterion_main!(benches);

//! Every configuration under `examples/` loads, so the examples never rot.
//! Other files there (nginx snippets, unit files) are not configurations
//! and are skipped: only `*.yaml` and `*.yml` are read, in every folder.

use std::path::{Path, PathBuf};

use certherd::config::load_str;

/// The environment the examples are loaded with: the secrets they name
/// through `{ env: NAME }`.
fn example_env(name: &str) -> Option<String> {
    match name {
        "EAB_HMAC_KEY" => Some("ZXhhbXBsZS1obWFjLWtleQ".to_string()),
        "TSIG_SECRET" => Some("ZXhhbXBsZS10c2lnLXNlY3JldC1rZXktMzItYnl0ZXM=".to_string()),
        "CERTS_TOKEN" => Some("Bearer example-token".to_string()),
        "KEYSTORE_PASSWORD" => Some("example-keystore-password".to_string()),
        _ => None,
    }
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            yaml_files(&path, out);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
}

#[test]
fn every_example_configuration_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut files = Vec::new();
    yaml_files(&dir, &mut files);
    for name in [
        "nginx-standalone.yaml",
        "webroot.yaml",
        "staging.yaml",
        "haproxy-webhook.yaml",
    ] {
        assert!(
            files.contains(&dir.join(name)),
            "examples/{name} is missing (found {files:?})"
        );
    }
    let mut failures = Vec::new();
    for path in &files {
        let src = std::fs::read_to_string(path).expect("readable example");
        if let Err(e) = load_str(&src, path, &example_env) {
            failures.push(e.to_string());
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

//! The configuration loader (YAML events → positioned tree → validation) on
//! arbitrary text: it returns a configuration or errors with a place, and
//! never panics. Secrets come from a fake environment.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let env = |name: &str| (name.len() < 8).then(|| format!("secret-{name}"));
    if let Err(errors) = certherd::config::load_str(src, Path::new("/fuzz/certherd.yaml"), &env) {
        for e in &errors.errors {
            // Every error names a place in the file.
            assert!(e.line >= 1 && e.column >= 1, "{e}");
            let _ = e.to_string();
        }
    }
});

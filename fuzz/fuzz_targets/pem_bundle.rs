//! Certificates as the state directory and targets hold them: PEM text of a
//! chain, with or without a key, and the DER of one certificate.
#![no_main]

use certherd::cert::{self, Bundle, KeyPem};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Raw bytes as one DER certificate.
    let _ = cert::info(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(ders) = cert::pem_certificates(text) {
        for der in &ders {
            let _ = cert::info(der);
        }
    }
    // The first line (if it looks like one) plays the key, the rest the chain.
    let (key, chain) = text.split_once("\n--").map_or(("", text), |(k, c)| (k, c));
    if let Ok(b) = Bundle::from_chain(KeyPem::new(key.to_string()), chain) {
        // What the state directory would hold reads back as the same bundle.
        let again = Bundle::from_chain(b.key.clone(), &b.fullchain_pem()).expect("reads back");
        assert_eq!(again, b);
        let _ = b.combined_pem();
        let _ = b.chain_der();
        let _ = certherd::acme::ari::cert_id_of(&b.info);
    }
});

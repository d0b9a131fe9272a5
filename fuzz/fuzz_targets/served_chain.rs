//! What a target serves in a TLS handshake is arbitrary bytes: the chain is
//! judged against the stored certificate without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rustls_pki_types::CertificateDer;

fuzz_target!(|data: &[u8]| {
    // Split the input into "certificates" at 0xFF 0x00 markers.
    let served: Vec<CertificateDer<'_>> = data
        .split(|b| *b == 0xFF)
        .map(|c| CertificateDer::from(c.to_vec()))
        .collect();
    let expected = certherd_fuzz_expected();
    let verdict = certherd::verify::judge(&served, &expected);
    let _ = verdict.problem();
});

fn certherd_fuzz_expected() -> certherd::cert::Bundle {
    use std::sync::OnceLock;
    static B: OnceLock<certherd::cert::Bundle> = OnceLock::new();
    B.get_or_init(|| {
        certherd::cert::Bundle::from_chain(
            certherd::cert::KeyPem::new(String::new()),
            include_str!("../../tests/fixtures/fuzz-leaf.pem"),
        )
        .expect("the fixture parses")
    })
    .clone()
}

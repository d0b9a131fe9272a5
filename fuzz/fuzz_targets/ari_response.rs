//! A CA's `renewalInfo` answer (RFC 9773 §4.2): parsed into a window, a
//! moment chosen inside it, and the record stored for it, which must read
//! back as the same window.
#![no_main]

use certherd::acme::ari;
use libfuzzer_sys::fuzz_target;
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
    let Ok(window) = ari::parse(data) else {
        return;
    };
    assert!(window.end > window.start);
    let now = ari::parse_time("2026-11-28T00:00:00Z").unwrap();
    for sample in [0.0, 0.5, 0.999_999, 1.0] {
        let at = ari::choose(window.start, window.end, now, sample);
        assert!(at == now || (at >= window.start && at < window.end));
    }
    let poll = ari::poll_interval(Some(Duration::from_secs(u64::from(u32::MAX))));
    let record = ari::record(None, "ab", "id", &window, poll, now, 0.5);
    let _ = ari::window(&record);
});

//! Host/SNI normalisation: `normalize_host` never panics, returns only routable bytes, is
//! idempotent, and agrees with `validate_hostname` on valid names. (The SNI name and the `Host`
//! header go through the same function.)
#![no_main]

use clawdeploy_config::{normalize_host, validate_hostname};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(host) = normalize_host(raw) {
        let routable = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(literal) => literal
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.'),
            None => {
                host.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b'_')
                }) && !host.starts_with('.')
                    && !host.ends_with('.')
                    && !host.contains("..")
            }
        };
        assert!(routable, "{raw:?} normalised to {host:?}");
        assert_eq!(normalize_host(&host).as_deref(), Some(host.as_str()), "not idempotent: {raw:?}");
    }
    if validate_hostname(raw).is_ok() {
        assert_eq!(normalize_host(raw).as_deref(), Some(raw), "valid name {raw:?} not kept");
    }
});

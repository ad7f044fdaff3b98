//! Session-token parsing: access tokens (API bearer) and host-session cookies. Arbitrary input
//! never panics and is never accepted; a real token with any byte changed is refused (or, when
//! the change decodes to the same bytes, yields the same claims); a host token is valid on its
//! own host only, and the two kinds never pass for each other.
#![no_main]

#[allow(dead_code)]
#[path = "../../control-api/src/crypto.rs"]
mod crypto;

use crypto::{
    host_session_key, sign_host_token, sign_jwt, verify_host_token, verify_jwt, Claims, HostClaims,
};
use libfuzzer_sys::fuzz_target;

const KEY: &[u8] = b"fuzz-jwt-signing-key-0123456789abcdef0123";

fuzz_target!(|data: &[u8]| {
    let host_key = host_session_key(KEY);
    // 1. Arbitrary text as either kind of token.
    if let Ok(text) = std::str::from_utf8(data) {
        assert!(verify_jwt(KEY, text, 0).is_err(), "forged access token accepted: {text:?}");
        assert!(
            verify_host_token(&host_key, text, "a.example.net", 0).is_err(),
            "forged host token accepted: {text:?}"
        );
    }
    // 2. A real token with one byte changed at a position the input chooses.
    if data.len() < 3 {
        return;
    }
    let claims = Claims {
        sub: uuid::Uuid::from_u128(u128::from(data[0]) << 64 | 7),
        sid: uuid::Uuid::from_u128(42),
        iat: 1,
        exp: 4_000_000_000,
    };
    let token = sign_jwt(KEY, &claims);
    let mut bytes = token.clone().into_bytes();
    let at = usize::from(u16::from_le_bytes([data[1], data[2]])) % bytes.len();
    let replacement = data.get(3).copied().unwrap_or(b'A');
    if bytes[at] != replacement {
        bytes[at] = replacement;
        if let Ok(mutated) = String::from_utf8(bytes) {
            if let Ok(got) = verify_jwt(KEY, &mutated, 2) {
                assert_eq!(got, claims, "a changed token yielded other claims: {mutated}");
            }
        }
    }
    // 3. Token kinds and hosts stay apart.
    assert!(verify_host_token(&host_key, &token, "a.example.net", 2).is_err());
    let host_token = sign_host_token(
        &host_key,
        &HostClaims {
            sub: claims.sub,
            sid: claims.sid,
            host: "a.example.net".into(),
            iat: 1,
            exp: 4_000_000_000,
        },
    );
    assert!(verify_jwt(KEY, &host_token, 2).is_err());
    assert!(verify_host_token(&host_key, &host_token, "a.example.net", 2).is_ok());
    let other = String::from_utf8_lossy(&data[3..]);
    if other != "a.example.net" {
        assert!(verify_host_token(&host_key, &host_token, &other, 2).is_err());
    }
});

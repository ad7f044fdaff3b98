//! Access tokens (JWT HS256), TOTP (RFC 6238) and password rules, by hand on RustCrypto's HMAC.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha1::Sha1;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use uuid::Uuid;

type HmacSha256 = Hmac<Sha256>;
type HmacSha1 = Hmac<Sha1>;

/// Lifetime of an access token: 7 days (PRD §3.2.1).
pub const ACCESS_TTL_SECS: i64 = 7 * 86_400;

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// The user id.
    pub sub: Uuid,
    /// The session id: revoking the session revokes the token.
    pub sid: Uuid,
    /// Issued at (unix seconds).
    pub iat: i64,
    /// Expires at (unix seconds): `iat` + [`ACCESS_TTL_SECS`].
    pub exp: i64,
}

/// Why a JWT was refused. Only [`Expired`](Self::Expired) is worth telling apart to a client: it
/// can refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not three base64url parts, or a header or payload that is not the expected JSON.
    #[error("the token is not a well-formed JWT")]
    Malformed,
    /// `alg` is not `HS256` (or `typ` is present and not `JWT`).
    #[error("the token's algorithm is not HS256")]
    Algorithm,
    /// The signature does not match the key.
    #[error("the token's signature is not valid")]
    Signature,
    /// Correctly signed, but `exp` is not after now.
    #[error("the token has expired")]
    Expired,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
}

const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

fn mac(key: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length.
    match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    }
}

/// Signs claims as an HS256 JWT.
pub fn sign_jwt(key: &[u8], claims: &Claims) -> String {
    sign_jwt_claims(key, claims)
}

fn sign_jwt_claims(key: &[u8], claims: &impl Serialize) -> String {
    let header = URL_SAFE_NO_PAD.encode(HEADER);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
    let signing_input = format!("{header}.{payload}");
    let mut m = mac(key);
    m.update(signing_input.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(m.finalize().into_bytes());
    format!("{signing_input}.{sig}")
}

/// Verifies an HS256 JWT: exactly three parts, `alg` exactly `HS256` (`none` and every other
/// algorithm refused), a constant-time signature check, then expiry against `now` (unix seconds).
pub fn verify_jwt(key: &[u8], token: &str, now: i64) -> Result<Claims, JwtError> {
    let claims: Claims = verify_jwt_claims(key, token)?;
    if claims.exp <= now {
        return Err(JwtError::Expired);
    }
    Ok(claims)
}

/// The signature and shape checks of [`verify_jwt`], for any claims type.
fn verify_jwt_claims<T: serde::de::DeserializeOwned>(
    key: &[u8],
    token: &str,
) -> Result<T, JwtError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let header_bytes = URL_SAFE_NO_PAD.decode(h).map_err(|_| JwtError::Malformed)?;
    let header: Header = serde_json::from_slice(&header_bytes).map_err(|_| JwtError::Malformed)?;
    if header.alg != "HS256" || header.typ.as_deref().is_some_and(|t| t != "JWT") {
        return Err(JwtError::Algorithm);
    }
    let sig = URL_SAFE_NO_PAD.decode(s).map_err(|_| JwtError::Signature)?;
    let mut m = mac(key);
    m.update(h.as_bytes());
    m.update(b".");
    m.update(p.as_bytes());
    m.verify_slice(&sig).map_err(|_| JwtError::Signature)?;
    let payload = URL_SAFE_NO_PAD.decode(p).map_err(|_| JwtError::Malformed)?;
    serde_json::from_slice(&payload).map_err(|_| JwtError::Malformed)
}

/// The claims of an instance host's browser session (the `clawdeploy_session` cookie): valid on
/// `host` only, and only while the platform session `sid` that created it is not revoked.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HostClaims {
    /// The user id: the instance's owner.
    pub sub: Uuid,
    /// The platform session the handoff came from.
    pub sid: Uuid,
    /// The normalised host the cookie was issued for.
    pub host: String,
    /// Issued at (unix seconds).
    pub iat: i64,
    /// Expires at (unix seconds): `sessions.host_session_ttl_secs` after `iat`, never after the
    /// platform session ends.
    pub exp: i64,
}

/// Why a host-session token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostTokenError {
    /// The token itself: shape, algorithm, signature or expiry.
    #[error(transparent)]
    Jwt(#[from] JwtError),
    /// Valid, but for another host: a cookie does not carry over between instances.
    #[error("the session was issued for another host")]
    WrongHost,
}

/// The key of host-session tokens, derived from the JWT key so that an API access token is never
/// accepted as a host cookie and a host cookie never as an API token.
pub fn host_session_key(jwt_key: &[u8]) -> [u8; 32] {
    let mut m = mac(jwt_key);
    m.update(b"clawdeploy host session v1");
    m.finalize().into_bytes().into()
}

/// Signs a host-session token with the key from [`host_session_key`].
pub fn sign_host_token(host_key: &[u8], claims: &HostClaims) -> String {
    sign_jwt_claims(host_key, claims)
}

/// Verifies a host-session token for `host` (normalised) at `now` (unix seconds).
pub fn verify_host_token(
    host_key: &[u8],
    token: &str,
    host: &str,
    now: i64,
) -> Result<HostClaims, HostTokenError> {
    let claims: HostClaims = verify_jwt_claims(host_key, token)?;
    if claims.exp <= now {
        return Err(JwtError::Expired.into());
    }
    if claims.host != host {
        return Err(HostTokenError::WrongHost);
    }
    Ok(claims)
}

/// Constant-time equality of two byte strings (lengths may leak, contents do not).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// The TOTP code (6 digits, SHA-1, 30 s steps) for a time step.
pub fn totp_at(secret: &[u8], step: u64) -> u32 {
    let mut m = match HmacSha1::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    m.update(&step.to_be_bytes());
    let digest = m.finalize().into_bytes();
    let offset = usize::from(digest[19] & 0x0f);
    let bin = (u32::from(digest[offset]) & 0x7f) << 24
        | u32::from(digest[offset + 1]) << 16
        | u32::from(digest[offset + 2]) << 8
        | u32::from(digest[offset + 3]);
    bin % 1_000_000
}

/// Checks a 6-digit code against the steps around `now` (unix seconds), ±1 step.
pub fn verify_totp(secret_b32: &str, code: &str, now: u64) -> bool {
    let code = code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let Ok(secret) = data_encoding::BASE32_NOPAD.decode(secret_b32.as_bytes()) else {
        return false;
    };
    let step = now / 30;
    let mut ok = false;
    for s in [step.saturating_sub(1), step, step + 1] {
        let expected = format!("{:06}", totp_at(&secret, s));
        ok |= ct_eq(expected.as_bytes(), code.as_bytes());
    }
    ok
}

/// A new TOTP secret: 20 random bytes, base32 without padding (what authenticator apps take).
pub fn new_totp_secret() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 20];
    getrandom::getrandom(&mut bytes)?;
    Ok(data_encoding::BASE32_NOPAD.encode(&bytes))
}

/// Ten recovery codes like `k3j9x-7qp2m`.
pub fn new_recovery_codes() -> Result<Vec<String>, getrandom::Error> {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
    let mut codes = Vec::with_capacity(10);
    for _ in 0..10 {
        let mut bytes = [0u8; 10];
        getrandom::getrandom(&mut bytes)?;
        let chars: String = bytes
            .iter()
            .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
            .collect();
        codes.push(format!("{}-{}", &chars[..5], &chars[5..]));
    }
    Ok(codes)
}

/// Why a password is too weak (the message completes "The password ...").
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WeakPassword {
    /// Fewer than 10 characters.
    #[error("must be at least 10 characters long")]
    Short,
    /// More than 72 bytes: bcrypt would ignore the rest.
    #[error("must be at most 72 bytes long (bcrypt's limit)")]
    Long,
    /// Only letters, or no letters at all.
    #[error("must mix letters with digits or symbols")]
    OneKind,
    /// The email address, or its local part (4 characters or more), case-insensitively.
    #[error("must not contain your email address")]
    ContainsEmail,
    /// Fewer than 5 distinct characters.
    #[error("must use at least 5 different characters")]
    Repetitive,
}

/// The minimum strength rule; `Err` says what is missing.
pub fn check_password(password: &str, email: &str) -> Result<(), WeakPassword> {
    if password.chars().count() < 10 {
        return Err(WeakPassword::Short);
    }
    if password.len() > 72 {
        return Err(WeakPassword::Long);
    }
    let letters = password.chars().any(char::is_alphabetic);
    let others = password.chars().any(|c| !c.is_alphabetic());
    if !(letters && others) {
        return Err(WeakPassword::OneKind);
    }
    let lower = password.to_lowercase();
    if lower == email.to_lowercase()
        || email
            .split('@')
            .next()
            .is_some_and(|local| local.len() >= 4 && lower.contains(&local.to_lowercase()))
    {
        return Err(WeakPassword::ContainsEmail);
    }
    let distinct: std::collections::HashSet<char> = password.chars().collect();
    if distinct.len() < 5 {
        return Err(WeakPassword::Repetitive);
    }
    Ok(())
}

/// What is wrong with an address that fails [`check_email`], for people: it names what they typed.
pub fn email_problem(email: &str) -> String {
    if email.is_empty() {
        "enter your email address, such as you@example.com".to_string()
    } else {
        format!("{email:?} is not a valid email address, such as you@example.com")
    }
}

/// A loose but useful email check: one `@`, a local part, a dotted domain, no spaces.
pub fn check_email(email: &str) -> bool {
    let email = email.trim();
    if email.len() > 254 || email.contains(char::is_whitespace) {
        return false;
    }
    match email.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && local.len() <= 64
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains("..")
                && domain
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b >= 0x80)
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwt_round_trip_and_refusals() {
        let key = b"0123456789abcdef0123456789abcdef";
        let claims = Claims {
            sub: Uuid::new_v4(),
            sid: Uuid::new_v4(),
            iat: 100,
            exp: 200,
        };
        let t = sign_jwt(key, &claims);
        assert_eq!(verify_jwt(key, &t, 150), Ok(claims.clone()));
        assert_eq!(verify_jwt(key, &t, 200), Err(JwtError::Expired));
        assert_eq!(verify_jwt(b"other-key", &t, 150), Err(JwtError::Signature));
        let (hp, _) = t.rsplit_once('.').unwrap();
        let (_, p) = hp.split_once('.').unwrap();
        let none = format!(
            "{}.{p}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#)
        );
        assert_eq!(verify_jwt(key, &none, 150), Err(JwtError::Algorithm));
        let hs512 = format!("{}.{p}.x", URL_SAFE_NO_PAD.encode(r#"{"alg":"HS512"}"#));
        assert_eq!(verify_jwt(key, &hs512, 150), Err(JwtError::Algorithm));
        assert_eq!(verify_jwt(key, "a.b", 150), Err(JwtError::Malformed));
        assert_eq!(
            verify_jwt(key, &format!("{t}.x"), 150),
            Err(JwtError::Malformed)
        );
    }

    #[test]
    fn totp_matches_rfc_6238() {
        // RFC 6238 appendix B, SHA-1 seed, truncated to 6 digits.
        let seed = b"12345678901234567890";
        assert_eq!(totp_at(seed, 59 / 30), 287_082);
        assert_eq!(totp_at(seed, 1_111_111_109 / 30), 81_804);
        assert_eq!(totp_at(seed, 1_234_567_890 / 30), 5_924);
        let b32 = data_encoding::BASE32_NOPAD.encode(seed);
        assert!(verify_totp(&b32, "287082", 59));
        assert!(
            verify_totp(&b32, "287082", 59 + 30),
            "one step late is accepted"
        );
        assert!(!verify_totp(&b32, "287082", 59 + 90));
        assert!(!verify_totp(&b32, "28708", 59));
    }

    #[test]
    fn password_and_email_rules() {
        assert!(check_password("securePassword123", "a@b.co").is_ok());
        assert!(check_password("short1", "a@b.co").is_err());
        assert!(check_password("onlyletterspassword", "a@b.co").is_err());
        assert!(check_password("alice-2024-pass", "alice@example.com").is_err());
        assert!(check_password("aaaaaaaaaa1", "x@y.z").is_err());
        assert!(check_email("user@example.com"));
        for bad in [
            "",
            "user",
            "user@",
            "@x.com",
            "a b@x.com",
            "a@x",
            "a@@x.com",
            "a@x..com",
        ] {
            assert!(!check_email(bad), "{bad}");
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        const KEY: &[u8] = b"proptest-jwt-signing-key-0123456789abcdef";

        fn claims(sub: u128, sid: u128) -> Claims {
            Claims {
                sub: Uuid::from_u128(sub),
                sid: Uuid::from_u128(sid),
                iat: 1,
                exp: 4_000_000_000,
            }
        }

        proptest! {
            // The same properties as the `session_token` fuzz target (fuzz/), in CI.
            #[test]
            fn arbitrary_text_is_never_a_token(text in ".{0,300}", dots in "[A-Za-z0-9_.-]{0,200}") {
                let host_key = host_session_key(KEY);
                for t in [&text, &dots] {
                    prop_assert!(verify_jwt(KEY, t, 0).is_err());
                    prop_assert!(verify_host_token(&host_key, t, "a.example.net", 0).is_err());
                }
            }

            #[test]
            fn a_changed_byte_is_refused(sub: u128, sid: u128, at: usize, byte in 0x21u8..0x7f) {
                let claims = claims(sub, sid);
                let token = sign_jwt(KEY, &claims);
                let mut bytes = token.into_bytes();
                let at = at % bytes.len();
                prop_assume!(bytes[at] != byte);
                bytes[at] = byte;
                let mutated = String::from_utf8(bytes).unwrap();
                if let Ok(got) = verify_jwt(KEY, &mutated, 2) {
                    // Only a change that decodes to the same bytes can pass.
                    prop_assert_eq!(got, claims);
                }
            }

            #[test]
            fn host_tokens_stay_on_their_host_and_kind(sub: u128, sid: u128, host in "[a-z0-9.-]{1,40}", other in "[a-z0-9.-]{1,40}") {
                let host_key = host_session_key(KEY);
                let c = claims(sub, sid);
                let host_token = sign_host_token(&host_key, &HostClaims {
                    sub: c.sub, sid: c.sid, host: host.clone(), iat: 1, exp: 4_000_000_000,
                });
                prop_assert!(verify_host_token(&host_key, &host_token, &host, 2).is_ok());
                if other != host {
                    prop_assert_eq!(
                        verify_host_token(&host_key, &host_token, &other, 2),
                        Err(HostTokenError::WrongHost)
                    );
                }
                prop_assert!(verify_jwt(KEY, &host_token, 2).is_err());
                prop_assert!(verify_host_token(&host_key, &sign_jwt(KEY, &c), &host, 2).is_err());
                prop_assert_eq!(
                    verify_host_token(&host_key, &host_token, &host, 4_000_000_000),
                    Err(HostTokenError::Jwt(JwtError::Expired))
                );
            }
        }
    }
}

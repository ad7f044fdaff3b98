//! Sealing of small secrets (provider API keys, MFA secrets) and token helpers.
//!
//! Sealed format: `v1:<key id>:<base64url(nonce || ciphertext || tag)>`, AES-256-GCM with a
//! random 96-bit nonce and the `v1:<key id>` prefix as associated data, so the prefix cannot
//! be swapped to another key. A [`Keyring`] holds the current key (used to seal) and older keys
//! by id (still able to open), which is how the master key is rotated: add a new current key,
//! keep the old one until [`crate::Store::reseal_secrets`] has re-sealed everything.
//!
//! Nothing here implements `Debug` or `Display` that would print key material or plaintext.

use std::collections::HashMap;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::SecretError;

const VERSION: &str = "v1";
const NONCE_LEN: usize = 12;

/// One 256-bit master key.
struct MasterKey {
    cipher: Aes256Gcm,
}

/// The current master key plus older keys by id. `Debug` prints only key ids.
pub struct Keyring {
    current: String,
    keys: HashMap<String, MasterKey>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ids: Vec<&str> = self.keys.keys().map(String::as_str).collect();
        ids.sort_unstable();
        f.debug_struct("Keyring")
            .field("current", &self.current)
            .field("key_ids", &ids)
            .finish()
    }
}

fn check_id(id: &str) -> Result<(), SecretError> {
    let ok = !id.is_empty()
        && id.len() <= 32
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(SecretError::BadKeyId)
    }
}

fn master_key(key: &[u8]) -> Result<MasterKey, SecretError> {
    if key.len() != 32 {
        return Err(SecretError::BadKey);
    }
    let cipher = Aes256Gcm::new_from_slice(key).map_err(|_| SecretError::BadKey)?;
    Ok(MasterKey { cipher })
}

/// Decodes a master key given as standard or URL-safe base64 (with or without padding).
pub fn decode_key(b64: &str) -> Result<Zeroizing<Vec<u8>>, SecretError> {
    let b64 = b64.trim();
    let bytes = STANDARD
        .decode(b64)
        .or_else(|_| URL_SAFE_NO_PAD.decode(b64.trim_end_matches('=')))
        .map_err(|_| SecretError::BadKey)?;
    let bytes = Zeroizing::new(bytes);
    if bytes.len() != 32 {
        return Err(SecretError::BadKey);
    }
    Ok(bytes)
}

/// 32 fresh random bytes, standard base64: a new master key for config or the data dir.
pub fn generate_key_base64() -> Result<Zeroizing<String>, SecretError> {
    let mut key = Zeroizing::new([0u8; 32]);
    getrandom::getrandom(key.as_mut()).map_err(|_| SecretError::Random)?;
    Ok(Zeroizing::new(STANDARD.encode(key.as_ref())))
}

impl Keyring {
    /// A keyring whose current key is `key` (32 bytes) under id `id`.
    pub fn new(id: &str, key: &[u8]) -> Result<Self, SecretError> {
        check_id(id)?;
        let mut keys = HashMap::new();
        keys.insert(id.to_owned(), master_key(key)?);
        Ok(Keyring {
            current: id.to_owned(),
            keys,
        })
    }

    /// Like [`Keyring::new`] with the key as base64 (see [`decode_key`]).
    pub fn from_base64(id: &str, key_b64: &str) -> Result<Self, SecretError> {
        let key = decode_key(key_b64)?;
        Self::new(id, &key)
    }

    /// Adds an older key that can still open values sealed under `id`; the current key stays.
    pub fn add_previous(&mut self, id: &str, key: &[u8]) -> Result<(), SecretError> {
        check_id(id)?;
        if id == self.current {
            return Err(SecretError::BadKeyId);
        }
        self.keys.insert(id.to_owned(), master_key(key)?);
        Ok(())
    }

    /// [`Keyring::add_previous`] with the key as base64.
    pub fn add_previous_base64(&mut self, id: &str, key_b64: &str) -> Result<(), SecretError> {
        let key = decode_key(key_b64)?;
        self.add_previous(id, &key)
    }

    /// Makes `key` under `id` the current key (used for sealing from now on); previous keys
    /// stay available for opening.
    pub fn rotate_to(&mut self, id: &str, key: &[u8]) -> Result<(), SecretError> {
        check_id(id)?;
        self.keys.insert(id.to_owned(), master_key(key)?);
        self.current = id.to_owned();
        Ok(())
    }

    /// Id of the key new values are sealed under.
    pub fn current_id(&self) -> &str {
        &self.current
    }

    /// Seals `plaintext` under the current key.
    pub fn seal(&self, plaintext: &[u8]) -> Result<String, SecretError> {
        let key = self
            .keys
            .get(&self.current)
            .ok_or_else(|| SecretError::UnknownKey(self.current.clone()))?;
        let prefix = format!("{VERSION}:{}", self.current);
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::getrandom(&mut nonce).map_err(|_| SecretError::Random)?;
        let ct = key
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: prefix.as_bytes(),
                },
            )
            .map_err(|_| SecretError::Encrypt)?;
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(format!("{prefix}:{}", URL_SAFE_NO_PAD.encode(out)))
    }

    /// Seals a UTF-8 secret.
    pub fn seal_str(&self, plaintext: &str) -> Result<String, SecretError> {
        self.seal(plaintext.as_bytes())
    }

    /// Opens a sealed value with whichever key its id names.
    pub fn open(&self, sealed: &str) -> Result<Zeroizing<Vec<u8>>, SecretError> {
        let (prefix, key_id, body) = split_sealed(sealed)?;
        let key = self
            .keys
            .get(key_id)
            .ok_or_else(|| SecretError::UnknownKey(key_id.to_owned()))?;
        let raw = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| SecretError::Malformed)?;
        if raw.len() < NONCE_LEN + 16 {
            return Err(SecretError::Malformed);
        }
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        let pt = key
            .cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: prefix.as_bytes(),
                },
            )
            .map_err(|_| SecretError::Decrypt)?;
        Ok(Zeroizing::new(pt))
    }

    /// Opens a sealed UTF-8 secret.
    pub fn open_str(&self, sealed: &str) -> Result<Zeroizing<String>, SecretError> {
        let mut bytes = self.open(sealed)?;
        let v = std::mem::take(&mut *bytes);
        match String::from_utf8(v) {
            Ok(s) => Ok(Zeroizing::new(s)),
            Err(e) => {
                drop(Zeroizing::new(e.into_bytes()));
                Err(SecretError::NotUtf8)
            }
        }
    }

    /// True when `sealed` is not under the current key (a candidate for [`Keyring::reseal`]).
    pub fn needs_reseal(&self, sealed: &str) -> bool {
        match split_sealed(sealed) {
            Ok((_, id, _)) => id != self.current,
            Err(_) => false,
        }
    }

    /// Opens with the old key and seals again under the current key.
    pub fn reseal(&self, sealed: &str) -> Result<String, SecretError> {
        let pt = self.open(sealed)?;
        self.seal(&pt)
    }
}

/// The id of the key a sealed value was sealed under.
pub fn sealed_key_id(sealed: &str) -> Result<&str, SecretError> {
    split_sealed(sealed).map(|(_, id, _)| id)
}

fn split_sealed(sealed: &str) -> Result<(&str, &str, &str), SecretError> {
    let mut parts = sealed.splitn(3, ':');
    let (Some(v), Some(id), Some(body)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(SecretError::Malformed);
    };
    if v != VERSION || check_id(id).is_err() {
        return Err(SecretError::Malformed);
    }
    let prefix_len = v.len() + 1 + id.len();
    Ok((&sealed[..prefix_len], id, body))
}

/// Masks an API key for display: the vendor prefix up to its first `-` (when short) and the
/// last four characters, e.g. `sk-abc123...wxyz` → `sk-...wxyz`. Short keys show nothing.
pub fn mask(key: &str) -> String {
    let chars: Vec<char> = key.trim().chars().collect();
    let prefix: String = match chars.iter().position(|c| *c == '-') {
        Some(i) if i <= 4 && chars[..i].iter().all(|c| c.is_ascii_alphanumeric()) => {
            chars[..=i].iter().collect()
        }
        _ => String::new(),
    };
    if chars.len() < 12 {
        return format!("{prefix}...");
    }
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{prefix}...{tail}")
}

/// Lower-case hex SHA-256 of a token (how tokens are stored and looked up).
pub fn sha256_hex(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A random token: 32 bytes from the OS RNG, URL-safe base64 without padding (43 chars).
pub fn random_token() -> Result<String, SecretError> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    getrandom::getrandom(bytes.as_mut()).map_err(|_| SecretError::Random)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes.as_ref()))
}

/// The SHA-256 of a token, as the store keeps it. Only [`TokenHash::of`] (hashing a token) and
/// [`TokenHash::from_hex`] (a hash read elsewhere) make one, so a plaintext token cannot be
/// passed where a hash is expected.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TokenHash(String);

impl TokenHash {
    /// Hashes a plaintext token.
    pub fn of(token: &str) -> Self {
        TokenHash(sha256_hex(token))
    }

    /// Wraps a hash given as 64 hex digits.
    pub fn from_hex(hex: &str) -> Result<Self, SecretError> {
        if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(TokenHash(hex.to_ascii_lowercase()))
        } else {
            Err(SecretError::Malformed)
        }
    }

    /// The lower-case hex digest.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenHash({}…)", &self.0[..8.min(self.0.len())])
    }
}

/// A fresh random token and its hash: hand the token to the client, store the hash.
pub fn new_token() -> Result<(String, TokenHash), SecretError> {
    let token = random_token()?;
    let hash = TokenHash::of(&token);
    Ok((token, hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> [u8; 32] {
        [b; 32]
    }

    #[test]
    fn seal_open_round_trip_and_format() {
        let kr = Keyring::new("k1", &key(1)).unwrap();
        let sealed = kr.seal_str("sk-secret-value-1234").unwrap();
        assert!(sealed.starts_with("v1:k1:"));
        assert!(!sealed.contains("secret"));
        assert_eq!(
            kr.open_str(&sealed).unwrap().as_str(),
            "sk-secret-value-1234"
        );
        // Nonces differ.
        assert_ne!(sealed, kr.seal_str("sk-secret-value-1234").unwrap());
    }

    #[test]
    fn rotation_opens_old_values() {
        let mut kr = Keyring::new("old", &key(1)).unwrap();
        let sealed = kr.seal_str("hello").unwrap();
        kr.rotate_to("new", &key(2)).unwrap();
        assert_eq!(kr.current_id(), "new");
        assert!(kr.needs_reseal(&sealed));
        assert_eq!(kr.open_str(&sealed).unwrap().as_str(), "hello");
        let resealed = kr.reseal(&sealed).unwrap();
        assert!(resealed.starts_with("v1:new:"));
        assert!(!kr.needs_reseal(&resealed));

        // A keyring built from the new key with the old one added as previous also opens both.
        let mut kr2 = Keyring::new("new", &key(2)).unwrap();
        assert!(matches!(kr2.open(&sealed), Err(SecretError::UnknownKey(_))));
        kr2.add_previous("old", &key(1)).unwrap();
        assert_eq!(kr2.open_str(&sealed).unwrap().as_str(), "hello");
        assert_eq!(kr2.open_str(&resealed).unwrap().as_str(), "hello");
    }

    #[test]
    fn tampering_is_detected() {
        let kr = Keyring::new("a", &key(1)).unwrap();
        let mut other = Keyring::new("b", &key(1)).unwrap();
        other.add_previous("a", &key(9)).unwrap();
        let sealed = kr.seal_str("x").unwrap();
        // Same key bytes under another id: the AAD differs, so it fails.
        let swapped = sealed.replacen("v1:a:", "v1:b:", 1);
        assert!(matches!(other.open(&swapped), Err(SecretError::Decrypt)));
        // Wrong key under the right id.
        assert!(matches!(other.open(&sealed), Err(SecretError::Decrypt)));
        assert!(matches!(kr.open("v1:a:"), Err(SecretError::Malformed)));
        assert!(matches!(kr.open("nope"), Err(SecretError::Malformed)));
        let mut bytes = sealed.into_bytes();
        let last = bytes.len() - 1;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(bytes).unwrap();
        assert!(kr.open(&flipped).is_err());
    }

    #[test]
    fn keys_and_ids_validated() {
        assert!(matches!(
            Keyring::new("k", &[0u8; 16]),
            Err(SecretError::BadKey)
        ));
        assert!(matches!(
            Keyring::new("a:b", &key(1)),
            Err(SecretError::BadKeyId)
        ));
        assert!(matches!(
            Keyring::new("", &key(1)),
            Err(SecretError::BadKeyId)
        ));
        let b64 = generate_key_base64().unwrap();
        let kr = Keyring::from_base64("gen", &b64).unwrap();
        assert_eq!(kr.current_id(), "gen");
        let dbg = format!("{kr:?}");
        assert!(dbg.contains("gen") && !dbg.contains(b64.as_str()));
    }

    #[test]
    fn masking() {
        assert_eq!(mask("sk-abc123456789wxyz"), "sk-...wxyz");
        assert_eq!(mask("sk-ant-api03-abcdefghijklmnopwxyz"), "sk-...wxyz");
        assert_eq!(mask("AIzaSyD-abcdefghijklmnwxyz"), "...wxyz");
        assert_eq!(mask("short"), "...");
        assert_eq!(mask("sk-short"), "sk-...");
    }

    #[test]
    fn tokens() {
        let t = random_token().unwrap();
        assert_eq!(t.len(), 43);
        assert!(t
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_ne!(t, random_token().unwrap());
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let (tok, hash) = new_token().unwrap();
        assert_eq!(hash, TokenHash::of(&tok));
        assert_eq!(
            TokenHash::from_hex(&sha256_hex("abc").to_uppercase()).unwrap(),
            TokenHash::of("abc")
        );
        assert!(TokenHash::from_hex("xyz").is_err());
    }
}

//! What an instance's OpenClaw gateway trusts the edge by, besides its address.
//!
//! OpenClaw's trusted-proxy mode admits a request when its source address is a trusted proxy and
//! the user header names the owner. The edge reaches containers from the host's address on the
//! instance network, which any other process on the host shares, so the address alone proves
//! nothing: a platform service tricked into relaying a tenant's request (the LLM meter once was)
//! could name another tenant's owner. Two headers close that:
//! - a per-instance **proof header** that only the edge can name: OpenClaw's
//!   `gateway.auth.trustedProxy.requiredHeaders` checks presence only (openclaw 2026.9.6 has no
//!   secret or value check), so the secret is the header's *name*, an HMAC of the instance's
//!   gateway identity (the pool member it was handed; the instance id for instances handed over
//!   before those) under the edge's key. Each instance's config requires its own; knowing one's
//!   own (a tenant can read its config) names no other instance's.
//! - `x-openclaw-scopes`: OpenClaw gives an HTTP call from a trusted proxy that sends none the
//!   CLI's default scopes, `operator.admin` included; the edge always sends the owner's scopes.
//!
//! Clients cannot send either: the edge strips `x-clawdeploy-*` and `x-openclaw-*` headers.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Scopes the owner has at the gateway (devices, device-less clients and HTTP calls alike):
/// never `operator.admin`.
pub const OWNER_SCOPES: [&str; 4] = [
    "operator.read",
    "operator.write",
    "operator.approvals",
    "operator.questions",
];

/// The platform's own gateway identity (never a user id, which are UUIDs): the pool connects as
/// it to ask an instance about its work before it sleeps. Only the edge's address with the
/// instance's proof header can name it, like any trusted-proxy user.
pub const PLATFORM_USER: &str = "clawdeploy-platform";

/// The platform identity's scopes: `operator.write` for a warm member's warm-up turn, and
/// `operator.admin` for OpenClaw's suspension handshake (`gateway.suspend.*`), which the owner
/// never has.
pub const PLATFORM_SCOPES: [&str; 3] = ["operator.read", "operator.write", "operator.admin"];

/// The header OpenClaw caps a proxied request's scopes with.
pub const SCOPES_HEADER: &str = "x-openclaw-scopes";

/// Prefix of every proof header.
pub const PROOF_PREFIX: &str = "x-clawdeploy-proof-";

/// The proof header's name for one instance: [`PROOF_PREFIX`] and 32 hex digits of
/// HMAC-SHA256(`key`, its gateway identity or, before those, its id).
pub fn proof_header(key: &[u8], key_id: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(b"clawdeploy gateway proof\0");
    mac.update(key_id.as_bytes());
    let digest = mac.finalize().into_bytes();
    let mut name = String::with_capacity(PROOF_PREFIX.len() + 32);
    name.push_str(PROOF_PREFIX);
    for byte in &digest[..16] {
        name.push_str(&format!("{byte:02x}"));
    }
    name
}

/// [`OWNER_SCOPES`] as the header's comma-separated value.
pub fn owner_scopes_value() -> String {
    OWNER_SCOPES.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_differ_per_instance_and_key_and_are_valid_header_names() {
        let a = proof_header(b"k", "a");
        assert_ne!(a, proof_header(b"k", "b"));
        assert_ne!(a, proof_header(b"other", "a"));
        assert_eq!(a, proof_header(b"k", "a"));
        assert!(http::HeaderName::from_bytes(a.as_bytes()).is_ok());
        assert_eq!(a.len(), PROOF_PREFIX.len() + 32);
    }
}

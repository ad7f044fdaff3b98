//! Host names as the edge sees them: normalisation of `Host` headers and validation of DNS names.
//!
//! One set of rules for the route table, the config and the admin API, so a host that validates in
//! one place is found by the same key in the others.

/// The longest DNS name (RFC 1035 §2.3.4), without the trailing dot.
pub const MAX_HOSTNAME_LEN: usize = 253;

/// Normalises a `Host` header or authority: lower case, port and trailing dot stripped.
///
/// Returns `None` when what remains is not a host the edge can route: empty, over-long, or holding
/// characters outside letters, digits, `-`, `.` and `_` (IPv6 literals in brackets are kept as the
/// bracketed literal, so they can be told apart and refused by the caller's lookup).
pub fn normalize_host(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let host = if let Some(rest) = raw.strip_prefix('[') {
        // "[::1]:8080" -> "[::1]"
        let end = rest.find(']')?;
        let after = &rest[end + 1..];
        if !(after.is_empty() || after.starts_with(':') && is_port(&after[1..])) {
            return None;
        }
        // Only what an IPv6 literal holds (hex digits, `:`, and `.` for an embedded IPv4).
        let literal = &rest[..end];
        if literal.is_empty()
            || literal.len() > 45
            || !literal
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return None;
        }
        return Some(format!("[{}]", rest[..end].to_ascii_lowercase()));
    } else {
        match raw.rsplit_once(':') {
            Some((host, port)) if is_port(port) => host,
            Some(_) => return None,
            None => raw,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    // Empty labels ("a..b", "a.b..", ".a") name nothing; refusing them also keeps the function
    // idempotent (a second pass would strip another trailing dot).
    if host.is_empty()
        || host.starts_with('.')
        || host.ends_with('.')
        || host.contains("..")
        || host.len() > MAX_HOSTNAME_LEN
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        return None;
    }
    Some(host.to_ascii_lowercase())
}

fn is_port(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 5
        && s.bytes().all(|b| b.is_ascii_digit())
        && s.parse::<u16>().is_ok()
}

/// Why a name is not a valid DNS host name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostnameError {
    /// The name is empty.
    Empty,
    /// The name is longer than [`MAX_HOSTNAME_LEN`] bytes.
    TooLong,
    /// The name is an IPv4 or IPv6 address (bracketed or not).
    IpLiteral,
    /// This label (between dots) is not 1-63 characters of `a-z`, `0-9` and `-`, or starts or ends
    /// with `-`.
    BadLabel(String),
}

impl std::fmt::Display for HostnameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Empty => f.write_str("the host name is empty"),
            Self::TooLong => write!(f, "the host name is longer than {MAX_HOSTNAME_LEN} characters"),
            Self::IpLiteral => f.write_str("an IP address is not a host name"),
            Self::BadLabel(label) => write!(
                f,
                "label {label:?} must be 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'"
            ),
        }
    }
}

/// Checks a lower-case DNS name (RFC 1123 labels, no trailing dot, not an IP address).
pub fn validate_hostname(name: &str) -> Result<(), HostnameError> {
    if name.is_empty() {
        return Err(HostnameError::Empty);
    }
    if name.len() > MAX_HOSTNAME_LEN {
        return Err(HostnameError::TooLong);
    }
    if name.parse::<std::net::IpAddr>().is_ok() || name.starts_with('[') {
        return Err(HostnameError::IpLiteral);
    }
    for label in name.split('.') {
        if !is_valid_label(label) {
            return Err(HostnameError::BadLabel(label.to_string()));
        }
    }
    Ok(())
}

/// An RFC 1123 label: 1-63 of `a-z0-9-`, not starting or ending with `-`.
pub fn is_valid_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_case_port_and_trailing_dot() {
        for raw in [
            "Alice.Example.COM",
            "alice.example.com:8080",
            "alice.example.com.",
            "ALICE.example.com.:443",
        ] {
            assert_eq!(
                normalize_host(raw).as_deref(),
                Some("alice.example.com"),
                "{raw}"
            );
        }
        assert_eq!(normalize_host("[::1]:8080").as_deref(), Some("[::1]"));
    }

    #[test]
    fn refuses_what_cannot_be_routed() {
        for raw in [
            "",
            ":80",
            "a b",
            "a/b",
            "host:port",
            "host:99999",
            "x.com:",
            "[::1",
            "[::1]x",
            "é.com",
            "a..b",
            "a.b..",
            ".a",
            "[]",
            "[a b]",
            "[zz]",
            "[<x>]:80",
        ] {
            assert_eq!(normalize_host(raw), None, "{raw:?}");
        }
        assert_eq!(normalize_host(&"a".repeat(254)), None);
    }

    #[test]
    fn validates_dns_names() {
        assert!(validate_hostname("status.example.com").is_ok());
        assert!(validate_hostname("localhost").is_ok());
        assert_eq!(
            validate_hostname("127.0.0.1"),
            Err(HostnameError::IpLiteral)
        );
        assert!(matches!(
            validate_hostname("-a.com"),
            Err(HostnameError::BadLabel(_))
        ));
        assert!(matches!(
            validate_hostname("a..com"),
            Err(HostnameError::BadLabel(_))
        ));
        assert!(matches!(
            validate_hostname("*.a.com"),
            Err(HostnameError::BadLabel(_))
        ));
        assert!(matches!(
            validate_hostname(&format!("{}.com", "a".repeat(64))),
            Err(HostnameError::BadLabel(_))
        ));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// The bytes a normalised host may hold.
        fn routable(host: &str) -> bool {
            if let Some(literal) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
                return literal
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
            }
            host.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b'_')
            }) && !host.starts_with('.')
                && !host.ends_with('.')
                && !host.contains("..")
        }

        proptest! {
            // The same properties as the `host_normalize` fuzz target (fuzz/), in CI.
            #[test]
            fn normalisation_is_idempotent_and_only_routable(raw in ".{0,80}") {
                if let Some(host) = normalize_host(&raw) {
                    prop_assert!(routable(&host), "{raw:?} -> {host:?}");
                    prop_assert!(host.len() <= MAX_HOSTNAME_LEN + 2);
                    prop_assert_eq!(normalize_host(&host), Some(host.clone()));
                }
            }

            #[test]
            fn names_with_ports_and_case_normalise_to_the_name(
                labels in proptest::collection::vec("[a-zA-Z0-9][a-zA-Z0-9-]{0,10}", 1..5),
                port in proptest::option::of(any::<u16>()),
                dot in any::<bool>(),
            ) {
                let name = labels.join(".");
                let mut raw = name.clone();
                if dot { raw.push('.'); }
                if let Some(port) = port { raw.push_str(&format!(":{port}")); }
                prop_assert_eq!(normalize_host(&raw), Some(name.to_ascii_lowercase()));
            }

            #[test]
            fn validated_names_normalise_to_themselves(raw in "[a-z0-9.-]{1,70}") {
                if validate_hostname(&raw).is_ok() {
                    prop_assert_eq!(normalize_host(&raw), Some(raw.clone()));
                }
            }
        }
    }
}

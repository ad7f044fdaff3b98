//! Which addresses the platform may connect to on a user's behalf: public unicast only.
//!
//! A tenant runs code in its own container and chooses some of the URLs the platform fetches (a
//! custom LLM provider's `baseUrl`), so every such connection is checked against this one list:
//! the IANA special-purpose registries (IPv4 and IPv6), checked 2026-12. Whatever is not public
//! unicast is refused: loopback, RFC 1918, CGNAT, link-local (cloud metadata), documentation and
//! benchmarking ranges, multicast, reserved, and IPv6 forms that embed an IPv4 address (mapped,
//! compatible, NAT64, 6to4, Teredo), so no spelling of a private address gets through.
//!
//! The instance egress firewall (`pool::egress`) rejects the same IPv4 ranges ([`SPECIAL_V4`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

pub use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// IPv4 ranges that are not public unicast, as CIDR text (iptables takes them as written).
pub const SPECIAL_V4: [&str; 16] = [
    "0.0.0.0/8",       // "this network"
    "10.0.0.0/8",      // private
    "100.64.0.0/10",   // shared address space (CGNAT)
    "127.0.0.0/8",     // loopback
    "169.254.0.0/16",  // link-local, cloud metadata
    "172.16.0.0/12",   // private
    "192.0.0.0/24",    // IETF protocol assignments
    "192.0.2.0/24",    // documentation (TEST-NET-1)
    "192.31.196.0/24", // AS112
    "192.52.193.0/24", // AMT
    "192.88.99.0/24",  // deprecated 6to4 relay anycast
    "192.168.0.0/16",  // private
    "192.175.48.0/24", // direct delegation AS112
    "198.18.0.0/15",   // benchmarking
    "198.51.100.0/24", // documentation (TEST-NET-2)
    "203.0.113.0/24",  // documentation (TEST-NET-3)
];

/// IPv4 ranges refused besides [`SPECIAL_V4`]: multicast, reserved and broadcast.
pub const SPECIAL_V4_HIGH: [&str; 2] = ["224.0.0.0/4", "240.0.0.0/4"];

/// IPv6 ranges that are not public unicast (besides everything outside 2000::/3).
const SPECIAL_V6: [&str; 8] = [
    "2001::/23",     // IETF protocol assignments, Teredo (2001::/32) included
    "2001:db8::/32", // documentation
    "2002::/16",     // 6to4: embeds an IPv4 address
    "3fff::/20",     // documentation
    "64:ff9b::/96",  // NAT64: embeds an IPv4 address
    "64:ff9b:1::/48",
    "100::/64",  // discard
    "5f00::/16", // SRv6 SIDs
];

/// True when `ip` is a public unicast address: one the platform may connect to for a user.
pub fn is_public_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

/// Every special range, parsed once.
static SPECIAL: LazyLock<Vec<IpNet>> = LazyLock::new(|| {
    SPECIAL_V4
        .iter()
        .chain(&SPECIAL_V4_HIGH)
        .chain(&SPECIAL_V6)
        .filter_map(|range| range.parse().ok())
        .collect()
});

fn is_public_v4(ip: Ipv4Addr) -> bool {
    !SPECIAL.iter().any(|net| net.contains(&IpAddr::V4(ip)))
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    // Global unicast is 2000::/3; everything else (loopback, unspecified, IPv4-mapped and
    // -compatible, ULA fc00::/7, link-local fe80::/10, site-local, multicast) lies outside it.
    (ip.segments()[0] & 0xe000) == 0x2000
        && !SPECIAL.iter().any(|net| net.contains(&IpAddr::V6(ip)))
}

/// Parses an allowed network as the config writes it: a CIDR (`10.1.0.0/16`) or one address.
pub fn parse_network(text: &str) -> Option<IpNet> {
    let text = text.trim();
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public(text: &str) -> bool {
        is_public_unicast(text.parse().unwrap())
    }

    #[test]
    fn every_spelling_of_a_private_address_is_refused() {
        for ip in [
            "127.0.0.1",
            "127.1.2.3",
            "10.0.0.1",
            "172.17.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "169.254.169.254",
            "0.0.0.0",
            "192.0.0.8",
            "192.0.2.1",
            "198.18.0.1",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
            "2001:0:4136:e378::1",
            "2001:db8::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
        ] {
            assert!(!public(ip), "{ip} passed as public");
        }
    }

    #[test]
    fn public_unicast_passes() {
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "2606:4700::1111",
            "2a00:1450::1",
        ] {
            assert!(public(ip), "{ip} refused");
        }
    }

    #[test]
    fn every_range_parses() {
        for range in SPECIAL_V4.iter().chain(&SPECIAL_V4_HIGH).chain(&SPECIAL_V6) {
            assert!(range.parse::<IpNet>().is_ok(), "{range}");
        }
    }

    #[test]
    fn allowed_networks_take_a_cidr_or_an_address() {
        assert_eq!(
            parse_network("127.0.0.1"),
            Some("127.0.0.1/32".parse().unwrap())
        );
        assert_eq!(
            parse_network("10.1.0.0/16"),
            Some("10.1.0.0/16".parse().unwrap())
        );
        assert_eq!(parse_network("localhost"), None);
    }
}

//! Egress rules for the instance network: a container reaches the public internet and the edge's
//! LLM endpoint, and nothing else — not other instances, not private, special-use or reserved
//! ranges, not cloud metadata, not this node's own addresses or the hosts on its subnets, not the
//! host's own services (database, Redis, metrics and admin listeners). Deny by default what is not
//! public unicast.
//!
//! Two chains per instance network, installed and removed by the runtime:
//! - `CLAWDEPLOY-E-<net>` from Docker's `DOCKER-USER` (forwarded traffic): replies pass, allowed
//!   endpoints pass, DNS (port 53) to this node's resolvers passes ([`node_resolvers`]: Docker's
//!   embedded DNS forwards a container's queries from the container itself, so a resolver on a
//!   private address or on the node's own subnet must stay reachable, on port 53 only), then every
//!   destination that is not public unicast is rejected: the IANA IPv4
//!   special-purpose registry ([`blocked_ranges`]), the instance network's own subnet, and each
//!   address and subnet of this node's interfaces, read at install time ([`node_networks`]). The
//!   rest (the internet) passes on to Docker's own rules;
//! - `CLAWDEPLOY-I-<net>` from `INPUT` (traffic to the host itself): replies and allowed endpoints
//!   pass, everything else is rejected.
//!
//! Rejections answer at once (TCP reset / ICMP unreachable), so a blocked connection fails fast.
//!
//! IPv4 only: the runtime creates the instance network without IPv6, and Docker then turns IPv6 off
//! inside its containers (`disable_ipv6=1`, not even link-local), so there is no IPv6 egress to
//! filter. A network with IPv6 enabled is refused by [`EgressRules::install`] rather than left
//! open, since these rules would not cover it.

use std::net::{Ipv4Addr, SocketAddr};

use clawdeploy_config::addresses::{SPECIAL_V4, SPECIAL_V4_HIGH};
use ipnet::Ipv4Net;
use tokio::process::Command;

use crate::runtime::RuntimeError;

/// Destinations an instance never reaches by forwarding: the IANA IPv4 Special-Purpose Address
/// Registry in full (globally reachable anycast entries such as AS112 included, since no tenant
/// needs them), multicast, and the reserved 240/4 (which holds the limited broadcast address
/// 255.255.255.255). The one list is `clawdeploy_config::addresses`, which the LLM meter's
/// connector checks too.
pub fn blocked_ranges() -> impl Iterator<Item = &'static str> {
    SPECIAL_V4.iter().chain(SPECIAL_V4_HIGH.iter()).copied()
}

/// Node subnets wider than this are blocked by address only: a misconfigured huge on-link prefix
/// must not cut instances off the internet.
const WIDEST_NODE_SUBNET: u8 = 8;

/// The instance network as the host's firewall sees it.
#[derive(Debug, Clone)]
pub struct NetworkInfo {
    /// Docker's network id (64 hex digits); its first 12 name the chains.
    pub id: String,
    /// The host-side bridge interface, e.g. `br-0123456789ab`.
    pub bridge: String,
    /// The network's IPv4 subnet in CIDR form (`172.18.0.0/16`), when Docker reports one.
    pub subnet: Option<String>,
    /// Whether the network has IPv6 enabled (these rules cover IPv4 only).
    pub ipv6: bool,
}

/// The rules for one instance network.
#[derive(Debug, Clone)]
pub struct EgressRules {
    bridge: String,
    forward_chain: String,
    input_chain: String,
    allow: Vec<SocketAddr>,
    /// The instance network's own subnet (other instances), when Docker reports one.
    subnet: Option<Ipv4Net>,
    ipv6: bool,
}

impl EgressRules {
    /// `allow`: endpoints instances may reach besides the internet (the edge's LLM endpoint).
    pub fn new(network: &NetworkInfo, allow: Vec<SocketAddr>) -> Self {
        let short: String = network.id.chars().take(12).collect();
        Self {
            bridge: network.bridge.clone(),
            forward_chain: format!("CLAWDEPLOY-E-{short}"),
            input_chain: format!("CLAWDEPLOY-I-{short}"),
            allow,
            subnet: network
                .subnet
                .as_deref()
                .and_then(|s| s.parse::<Ipv4Net>().ok())
                .map(|n| n.trunc()),
            ipv6: network.ipv6,
        }
    }

    /// The forward chain's name, `CLAWDEPLOY-E-<first 12 digits of the network id>`, jumped to from
    /// `DOCKER-USER`.
    pub fn forward_chain(&self) -> &str {
        &self.forward_chain
    }

    /// The input chain's name, `CLAWDEPLOY-I-<first 12 digits of the network id>`, jumped to from
    /// `INPUT`.
    pub fn input_chain(&self) -> &str {
        &self.input_chain
    }

    /// Every destination the forward chain rejects, in order: the special-purpose ranges, the
    /// instance subnet, then `node`'s networks (this node's interface addresses with their
    /// prefixes), without duplicates.
    pub fn blocked_destinations(&self, node: &[Ipv4Net]) -> Vec<Ipv4Net> {
        let mut blocked: Vec<Ipv4Net> = blocked_ranges().filter_map(|r| r.parse().ok()).collect();
        blocked.extend(self.subnet);
        for net in node {
            let own = if net.prefix_len() >= WIDEST_NODE_SUBNET {
                net.trunc()
            } else {
                Ipv4Net::from(net.addr())
            };
            blocked.push(own);
        }
        let mut seen = std::collections::HashSet::new();
        blocked.retain(|n| seen.insert(*n));
        blocked
    }

    /// The rules of both chains, as `iptables` arguments after `-A <chain>`, with `node` the
    /// node's interface networks ([`node_networks`]) and `resolvers` its DNS resolvers
    /// ([`node_resolvers`]).
    pub fn chain_rules(
        &self,
        node: &[Ipv4Net],
        resolvers: &[Ipv4Addr],
    ) -> (Vec<Vec<String>>, Vec<Vec<String>>) {
        let args = |s: &str| s.split_whitespace().map(str::to_string).collect::<Vec<_>>();
        let allowed = |addr: &SocketAddr, verdict: &str| {
            args(&format!(
                "-p tcp -d {} --dport {} -j {verdict}",
                addr.ip(),
                addr.port()
            ))
        };
        let mut forward = vec![args("-m conntrack --ctstate ESTABLISHED,RELATED -j RETURN")];
        forward.extend(self.allow.iter().map(|a| allowed(a, "RETURN")));
        for resolver in resolvers {
            for proto in ["udp", "tcp"] {
                forward.push(args(&format!(
                    "-p {proto} -d {resolver} --dport 53 -j RETURN"
                )));
            }
        }
        for range in self.blocked_destinations(node) {
            forward.push(args(&format!(
                "-d {range} -p tcp -j REJECT --reject-with tcp-reset"
            )));
            forward.push(args(&format!(
                "-d {range} -j REJECT --reject-with icmp-port-unreachable"
            )));
        }
        forward.push(args("-j RETURN"));

        let mut input = vec![args("-m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT")];
        input.extend(self.allow.iter().map(|a| allowed(a, "ACCEPT")));
        input.push(args("-p tcp -j REJECT --reject-with tcp-reset"));
        input.push(args("-j REJECT --reject-with icmp-port-unreachable"));
        (forward, input)
    }

    /// Installs (or refreshes) both chains and their jumps. Idempotent.
    pub async fn install(&self) -> Result<(), RuntimeError> {
        if self.ipv6 {
            return Err(RuntimeError::Refused(format!(
                "the instance network on {} has IPv6 enabled, which the egress rules (IPv4) do not cover; recreate it without IPv6 or set runtime.egress_rules = false",
                self.bridge
            )));
        }
        let node = node_networks().await?;
        let resolvers = node_resolvers().await;
        let (forward, input) = self.chain_rules(&node, &resolvers);
        for (chain, rules) in [(&self.forward_chain, forward), (&self.input_chain, input)] {
            // -N fails when the chain exists; then flush it.
            if iptables(&["-N", chain]).await.is_err() {
                iptables(&["-F", chain]).await?;
            }
            for rule in rules {
                let mut argv = vec!["-A", chain.as_str()];
                argv.extend(rule.iter().map(String::as_str));
                iptables(&argv).await?;
            }
        }
        // DOCKER-USER exists once Docker has started; create it if this host has none yet.
        let _ = iptables(&["-N", "DOCKER-USER"]).await;
        for (parent, chain) in [
            ("DOCKER-USER", &self.forward_chain),
            ("INPUT", &self.input_chain),
        ] {
            if iptables(&["-C", parent, "-i", &self.bridge, "-j", chain])
                .await
                .is_err()
            {
                iptables(&["-I", parent, "1", "-i", &self.bridge, "-j", chain]).await?;
            }
        }
        tracing::info!(bridge = %self.bridge, allowed = self.allow.len(), node_networks = node.len(), "instance egress rules installed");
        Ok(())
    }

    /// Removes both chains and their jumps.
    pub async fn remove(&self) -> Result<(), RuntimeError> {
        for (parent, chain) in [
            ("DOCKER-USER", &self.forward_chain),
            ("INPUT", &self.input_chain),
        ] {
            while iptables(&["-D", parent, "-i", &self.bridge, "-j", chain])
                .await
                .is_ok()
            {}
            let _ = iptables(&["-F", chain]).await;
            let _ = iptables(&["-X", chain]).await;
        }
        Ok(())
    }
}

/// This node's IPv4 addresses with their prefixes, on every interface (`ip -j -4 addr`): the
/// node itself and the hosts on its subnets are not the internet.
pub async fn node_networks() -> Result<Vec<Ipv4Net>, RuntimeError> {
    #[derive(serde::Deserialize)]
    struct Interface {
        #[serde(default)]
        addr_info: Vec<Address>,
    }
    #[derive(serde::Deserialize)]
    struct Address {
        family: String,
        local: Option<Ipv4Addr>,
        prefixlen: Option<u8>,
    }
    let output = Command::new("ip")
        .args(["-j", "-4", "addr", "show"])
        .output()
        .await?;
    if !output.status.success() {
        return Err(RuntimeError::Refused(format!(
            "ip -j -4 addr show: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let interfaces: Vec<Interface> = serde_json::from_slice(&output.stdout).map_err(|e| {
        RuntimeError::Refused(format!(
            "cannot read this node's addresses (ip -j addr): {e}"
        ))
    })?;
    Ok(interfaces
        .iter()
        .flat_map(|i| &i.addr_info)
        .filter(|a| a.family == "inet")
        .filter_map(|a| Ipv4Net::new(a.local?, a.prefixlen?).ok())
        .collect())
}

/// This node's IPv4 DNS resolvers, as Docker hands them to containers: the `nameserver` lines of
/// `/etc/resolv.conf`, and of systemd-resolved's upstream list when the host uses its loopback stub
/// (loopback addresses are never a container's resolver, so they are left out).
pub async fn node_resolvers() -> Vec<Ipv4Addr> {
    let mut resolvers = Vec::new();
    for path in ["/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"] {
        let Ok(text) = tokio::fs::read_to_string(path).await else {
            continue;
        };
        for ip in text.lines().filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next()?.parse::<Ipv4Addr>().ok())
                .flatten()
        }) {
            if !ip.is_loopback() && !resolvers.contains(&ip) {
                resolvers.push(ip);
            }
        }
    }
    resolvers
}

/// Lists a chain's rules (`iptables -S`), for checks.
pub async fn list_chain(chain: &str) -> Result<String, RuntimeError> {
    iptables(&["-S", chain]).await
}

async fn iptables(args: &[&str]) -> Result<String, RuntimeError> {
    let output = Command::new("iptables")
        .arg("-w")
        .args(args)
        .output()
        .await?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(RuntimeError::Refused(format!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

//! Egress rules for the instance network: a container reaches the public internet and the edge's
//! LLM endpoint, and nothing else — not other instances, not private ranges or cloud metadata, not
//! the host's own services (database, Redis, metrics and admin listeners).
//!
//! Two chains per instance network, installed and removed by the runtime:
//! - `CLAWDEPLOY-E-<net>` from Docker's `DOCKER-USER` (forwarded traffic): replies pass, allowed
//!   endpoints pass, private/reserved ranges are rejected, the rest (the internet) passes on to
//!   Docker's own rules;
//! - `CLAWDEPLOY-I-<net>` from `INPUT` (traffic to the host itself): replies and allowed endpoints
//!   pass, everything else is rejected.
//!
//! Rejections answer at once (TCP reset / ICMP unreachable), so a blocked connection fails fast.

use std::net::SocketAddr;

use tokio::process::Command;

use crate::runtime::RuntimeError;

/// Destinations an instance never reaches by forwarding: RFC 1918, CGNAT, link-local (cloud
/// metadata at 169.254.169.254), loopback, "this network", multicast and reserved.
pub const BLOCKED_RANGES: [&str; 9] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "127.0.0.0/8",
    "0.0.0.0/8",
    "224.0.0.0/4",
    "240.0.0.0/4",
];

/// The instance network as the host's firewall sees it.
#[derive(Debug, Clone)]
pub struct NetworkInfo {
    pub id: String,
    /// The host-side bridge interface, e.g. `br-0123456789ab`.
    pub bridge: String,
    pub subnet: Option<String>,
}

/// The rules for one instance network.
#[derive(Debug, Clone)]
pub struct EgressRules {
    bridge: String,
    forward_chain: String,
    input_chain: String,
    allow: Vec<SocketAddr>,
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
        }
    }

    pub fn forward_chain(&self) -> &str {
        &self.forward_chain
    }

    pub fn input_chain(&self) -> &str {
        &self.input_chain
    }

    /// The rules of both chains, as `iptables` arguments after `-A <chain>`.
    pub fn chain_rules(&self) -> (Vec<Vec<String>>, Vec<Vec<String>>) {
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
        for range in BLOCKED_RANGES {
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
        let (forward, input) = self.chain_rules();
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
        tracing::info!(bridge = %self.bridge, allowed = self.allow.len(), "instance egress rules installed");
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

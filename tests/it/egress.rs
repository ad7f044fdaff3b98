//! Egress from instances, tested from inside a container (the fixture's `/probe` hook) against
//! addresses on this machine only: another instance, a "database" port on the host, the node's own
//! interface addresses, a listener in a network namespace of this machine at a benchmarking-range
//! address (198.18.0.0/15, routed only to that namespace), and the allowed LLM endpoint. No traffic
//! leaves the machine; the rest of the denylist is checked in the chain's listing.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use clawdeploy_pool::egress::{blocked_ranges, list_chain, node_networks, node_resolvers};
use clawdeploy_pool::{
    DockerOptions, DockerRuntime, EgressRules, InstanceSpec, Resources, Runtime,
};

use crate::runtime::{fixture_image_name, wait_ready};
use crate::support::*;

const NETWORK: &str = "clawdeploy-egress-test";

async fn probe(instance: SocketAddr, target: SocketAddr) -> bool {
    let resp = try_send(
        instance,
        get_request("i", &format!("/probe?target={target}")).as_bytes(),
    )
    .await
    .expect("probe");
    resp.json()["connected"].as_bool().expect("probe answer")
}

/// A veth pair into a network namespace of its own, with a listener inside at a benchmarking-range
/// address (`198.19.<n>.2`; the host side is `198.19.<n>.1/30`): reached from an instance only by
/// forwarding, like a neighbour on the node's subnet. Removed on drop.
struct ForwardedListener {
    netns: String,
    addr: SocketAddr,
    _listener: std::net::TcpListener,
}

impl ForwardedListener {
    #[allow(unsafe_code)] // the unsafe call below: see its SAFETY comment
    fn start() -> Self {
        let id = std::process::id();
        let netns = format!("cdegress-{id}");
        let (host_if, ns_if) = (format!("cdeh{id}"), format!("cden{id}"));
        let n = id % 250;
        let run = |args: &[&str]| {
            let status = std::process::Command::new("ip")
                .args(args)
                .status()
                .expect("ip");
            assert!(status.success(), "ip {}", args.join(" "));
        };
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &netns])
            .status();
        run(&["netns", "add", &netns]);
        let guard_netns = netns.clone();
        run(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        run(&["link", "set", &ns_if, "netns", &netns]);
        run(&["addr", "add", &format!("198.19.{n}.1/30"), "dev", &host_if]);
        run(&["link", "set", &host_if, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &netns, "ip"];
            all.extend_from_slice(args);
            run(&all);
        };
        inside(&["addr", "add", &format!("198.19.{n}.2/30"), "dev", &ns_if]);
        inside(&["link", "set", &ns_if, "up"]);
        let ip = Ipv4Addr::new(198, 19, n as u8, 2);
        // A socket belongs to the namespace it was created in: bind it from a thread that
        // entered the namespace (setns affects only the calling thread).
        let path = format!("/var/run/netns/{guard_netns}");
        let listener = std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("netns file");
            use std::os::fd::AsRawFd;
            // SAFETY: setns on a valid namespace fd, for this short-lived thread only.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            std::net::TcpListener::bind((ip, 0)).expect("bind in the namespace")
        })
        .join()
        .expect("listener thread");
        let addr = listener.local_addr().unwrap();
        Self {
            netns: guard_netns,
            addr,
            _listener: listener,
        }
    }
}

impl Drop for ForwardedListener {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth pair and its route.
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

/// This machine's IPv4 interface networks as `ip -o -4 addr` prints them: (interface, `192.0.2.2/24`).
fn interface_networks() -> Vec<(String, String)> {
    let out = std::process::Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
        .expect("ip addr");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace().skip(1);
            let interface = words.next()?.to_string();
            words.find(|w| *w == "inet")?;
            Some((interface, words.next()?.to_string()))
        })
        .collect()
}

#[tokio::test]
async fn instances_reach_only_the_allowed_endpoint() {
    let runtime = DockerRuntime::connect(DockerOptions {
        network: NETWORK.into(),
        publish_loopback: true,
    })
    .await
    .unwrap();
    let mut ids = Vec::new();
    for n in 0..2 {
        let spec = InstanceSpec {
            name: format!("cdtest-egress-{}-{n}", std::process::id()),
            image: fixture_image_name(),
            user: "65534:65534".into(),
            port: 18789,
            resources: Resources {
                memory_mb: 64,
                cpus: 0.5,
                pids: 64,
            },
            labels: BTreeMap::from([("clawdeploy.test".to_string(), "true".to_string())]),
            env: vec![],
            files: vec![],
        };
        let created = runtime.create(&spec).await.unwrap();
        runtime.start(&created.id).await.unwrap();
        ids.push(created.id);
    }
    let a = wait_ready(&runtime, &ids[0]).await;
    wait_ready(&runtime, &ids[1]).await;
    let b_inspect = runtime
        .docker()
        .inspect_container(&ids[1], None)
        .await
        .unwrap();
    let endpoint = b_inspect
        .network_settings
        .unwrap()
        .networks
        .unwrap()
        .remove(NETWORK)
        .unwrap();
    let b_ip: IpAddr = endpoint.ip_address.unwrap().parse().unwrap();
    let host_ip: IpAddr = endpoint.gateway.unwrap().parse().unwrap();

    // Two services on the host's address on the instance bridge: a "database" and the LLM endpoint.
    let database = tokio::net::TcpListener::bind((host_ip, 0)).await.unwrap();
    let llm = tokio::net::TcpListener::bind((host_ip, 0)).await.unwrap();
    let (database_addr, llm_addr) = (database.local_addr().unwrap(), llm.local_addr().unwrap());
    for listener in [database, llm] {
        tokio::spawn(async move { while listener.accept().await.is_ok() {} });
    }
    let b_instance = SocketAddr::new(b_ip, 18789);
    // A listener on each of the node's own addresses (every interface but loopback).
    let mut node_listeners = Vec::new();
    // (Bridges of other tests' Docker networks come and go: the node's own interfaces only.)
    for (interface, net) in interface_networks() {
        let ip: Ipv4Addr = net.split('/').next().unwrap().parse().unwrap();
        if ip.is_loopback() || interface.starts_with("br-") || interface.starts_with("docker") {
            continue;
        }
        if let Ok(listener) = tokio::net::TcpListener::bind((ip, 0)).await {
            node_listeners.push(listener);
        }
    }
    let node_addrs: Vec<SocketAddr> = node_listeners
        .iter()
        .map(|l| l.local_addr().unwrap())
        .collect();
    assert!(!node_addrs.is_empty(), "no interface address to listen on");
    // A host reached by forwarding at a special-use address: the old denylist let it through.
    let forwarded = ForwardedListener::start();

    let network = runtime.network_info().await.unwrap();
    let rules = EgressRules::new(&network, vec![llm_addr]);
    rules.remove().await.unwrap();
    // Without the rules all of these are reachable: the checks below can fail.
    assert!(
        probe(a, database_addr).await,
        "baseline: the host port should be reachable without rules"
    );
    assert!(
        probe(a, forwarded.addr).await,
        "baseline: the forwarded listener should be reachable without rules"
    );
    for addr in &node_addrs {
        assert!(
            probe(a, *addr).await,
            "baseline: {addr} should be reachable without rules"
        );
    }

    let interfaces_before = interface_networks();
    rules.install().await.unwrap();
    assert!(
        !probe(a, database_addr).await,
        "an instance reached a host service"
    );
    assert!(
        !probe(a, forwarded.addr).await,
        "an instance reached a special-use address ({}) by forwarding",
        forwarded.addr
    );
    for addr in &node_addrs {
        assert!(
            !probe(a, *addr).await,
            "an instance reached the node's own address {addr}"
        );
    }
    assert!(
        !probe(a, b_instance).await,
        "an instance reached another instance"
    );
    assert!(
        probe(a, llm_addr).await,
        "the allowed LLM endpoint is unreachable"
    );

    // The chain rejects every special-purpose range, the instance subnet and each of the node's
    // interface networks (listed by `ip` here, independently of the rules' own reading).
    let forward = list_chain(rules.forward_chain()).await.unwrap();
    let rejected = |range: &str| {
        forward.contains(&format!(
            "-d {range} -p tcp -j REJECT --reject-with tcp-reset"
        )) && forward.contains(&format!(
            "-d {range} -j REJECT --reject-with icmp-port-unreachable"
        ))
    };
    let mut expected: Vec<String> = [
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.31.196.0/24",
        "192.52.193.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "192.175.48.0/24",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
    ]
    .map(String::from)
    .to_vec();
    assert_eq!(
        blocked_ranges().map(String::from).collect::<Vec<_>>(),
        expected
    );
    expected.push(network.subnet.clone().expect("instance subnet"));
    let stable = expected.len();
    let interfaces_after = interface_networks();
    for (_, net) in interfaces_before
        .iter()
        .filter(|n| interfaces_after.contains(n))
    {
        let (ip, prefix) = net.split_once('/').unwrap();
        let (ip, prefix): (Ipv4Addr, u32) = (ip.parse().unwrap(), prefix.parse().unwrap());
        let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
        expected.push(format!("{}/{prefix}", Ipv4Addr::from(u32::from(ip) & mask)));
    }
    assert!(node_networks()
        .await
        .unwrap()
        .iter()
        .any(|n| n.addr() == Ipv4Addr::LOCALHOST));
    for range in &expected {
        assert!(rejected(range), "{range} not rejected:\n{forward}");
    }
    // DNS to the node's resolvers (Docker's embedded DNS forwards from the container) passes
    // before any rejection, on port 53 only.
    let first_rejection = forward.find("-j REJECT").unwrap();
    for resolver in node_resolvers().await {
        for proto in ["udp", "tcp"] {
            let rule = format!("-d {resolver}/32 -p {proto} -m {proto} --dport 53 -j RETURN");
            let at = forward.find(&rule);
            assert!(
                at.is_some_and(|at| at < first_rejection),
                "{rule} missing or after a rejection:\n{forward}"
            );
        }
    }
    assert!(
        forward
            .trim_end()
            .ends_with(&format!("-A {} -j RETURN", rules.forward_chain())),
        "the internet passes only after every rejection:\n{forward}"
    );
    // Installing again is idempotent: each rule once, one jump each. (The node's interfaces are
    // read again, and other tests' Docker networks come and go meanwhile.)
    rules.install().await.unwrap();
    let again = list_chain(rules.forward_chain()).await.unwrap();
    for range in &expected[..stable] {
        let rule = format!("-d {range} -p tcp -j REJECT --reject-with tcp-reset\n");
        assert_eq!(again.matches(&rule).count(), 1, "{range}:\n{again}");
    }
    let docker_user = list_chain("DOCKER-USER").await.unwrap();
    assert_eq!(
        docker_user.matches(rules.forward_chain()).count(),
        1,
        "{docker_user}"
    );

    rules.remove().await.unwrap();
    assert!(
        list_chain(rules.forward_chain()).await.is_err(),
        "chain left behind"
    );
    assert!(!list_chain("INPUT")
        .await
        .unwrap()
        .contains(rules.input_chain()));
    for id in ids {
        runtime.remove(&id).await.unwrap();
    }
}

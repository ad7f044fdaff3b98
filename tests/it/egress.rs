//! Egress from instances, tested from inside a container (the fixture's `/probe` hook) against
//! addresses on this machine only: another instance, a "database" port on the host, and the
//! allowed LLM endpoint. No traffic leaves the machine.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use clawdeploy_pool::egress::list_chain;
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

    let rules = EgressRules::new(&runtime.network_info().await.unwrap(), vec![llm_addr]);
    rules.remove().await.unwrap();
    // Without the rules the host's services are reachable: the checks below can fail.
    assert!(
        probe(a, database_addr).await,
        "baseline: the host port should be reachable without rules"
    );

    rules.install().await.unwrap();
    assert!(
        !probe(a, database_addr).await,
        "an instance reached a host service"
    );
    assert!(
        !probe(a, b_instance).await,
        "an instance reached another instance"
    );
    assert!(
        probe(a, llm_addr).await,
        "the allowed LLM endpoint is unreachable"
    );

    let forward = list_chain(rules.forward_chain()).await.unwrap();
    for range in [
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "169.254.0.0/16",
        "100.64.0.0/10",
    ] {
        assert!(
            forward.contains(&format!("-d {range}")) && forward.contains("REJECT"),
            "{range} not blocked:\n{forward}"
        );
    }
    // Installing again is idempotent: the same rules, one jump each.
    rules.install().await.unwrap();
    assert_eq!(list_chain(rules.forward_chain()).await.unwrap(), forward);
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

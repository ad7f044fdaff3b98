//! The instance lifecycle on both runtimes, against the real Docker Engine and real child
//! processes, with the protocol-speaking test fixture (not OpenClaw) as the instance.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clawdeploy_pool::{
    ConfigFile, DockerOptions, DockerRuntime, InstanceSpec, ProcessRuntime, Resources, RunState,
    Runtime, RuntimeEvent,
};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;
pub use crate::support::{chat_turn, fixture_bin, fixture_image_name};

fn unique_name(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "cdtest-{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

pub fn spec(name: &str, image: String, memory_mb: u64) -> InstanceSpec {
    InstanceSpec {
        name: name.to_string(),
        image,
        user: "65534:65534".into(),
        port: 18789,
        resources: Resources {
            memory_mb,
            cpus: 0.5,
            pids: 64,
        },
        labels: BTreeMap::from([("clawdeploy.test".to_string(), "true".to_string())]),
        env: vec![],
        files: vec![],
    }
}

async fn docker_runtime() -> DockerRuntime {
    DockerRuntime::connect(DockerOptions {
        network: "clawdeploy-test".into(),
        publish_loopback: true,
    })
    .await
    .expect("a Docker Engine answers (scripts/start-docker.sh starts one)")
}

/// Polls `GET /readyz` at the instance until it answers 200.
pub async fn wait_ready(runtime: &dyn Runtime, id: &str) -> SocketAddr {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let inspection = runtime.inspect(id).await.expect("inspect");
        if let Some(addr) = inspection.address {
            if let Ok(resp) = try_send(addr, get_request("instance", "/readyz").as_bytes()).await {
                if resp.status == 200 {
                    return addr;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "instance {id} not ready: {inspection:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One chat turn straight to the instance: challenge, connect, chat.send, final event text.
pub async fn chat_directly(addr: SocketAddr, message: &str) -> String {
    chat_as(addr, None, message).await
}

/// [`chat_directly`] with the trusted-proxy user header the edge would set.
pub async fn chat_as(addr: SocketAddr, user: Option<&str>, message: &str) -> String {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to instance");
    let mut request = "ws://instance/".into_client_request().expect("request");
    if let Some(user) = user {
        request
            .headers_mut()
            .insert("x-forwarded-user", user.parse().expect("header value"));
    }
    let (mut ws, _) = tokio_tungstenite::client_async(request, tcp)
        .await
        .expect("handshake");
    chat_turn(&mut ws, message).await
}

async fn wait_event(
    events: &mut tokio::sync::broadcast::Receiver<RuntimeEvent>,
    want: impl Fn(&RuntimeEvent) -> bool,
) -> RuntimeEvent {
    tokio::time::timeout(PATIENCE, async {
        loop {
            match events.recv().await {
                Ok(event) if want(&event) => return event,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(e) => panic!("event stream closed: {e}"),
            }
        }
    })
    .await
    .expect("the runtime reported the event in time")
}

/// The lifecycle every runtime must get right.
async fn lifecycle(runtime: &dyn Runtime, image: String) {
    let name = unique_name(runtime.kind());
    let created = runtime
        .create(&spec(&name, image, 128))
        .await
        .expect("create");
    assert_eq!(
        runtime.inspect(&created.id).await.unwrap().state,
        RunState::Created
    );

    runtime.start(&created.id).await.expect("start");
    let addr = wait_ready(runtime, &created.id).await;
    assert_eq!(chat_directly(addr, "hi").await, "echo: hi");

    // Assignment: the user's config lands in the running instance, no restart.
    let config = br#"{"owner":"alice","soul":"Be brief.\nAlways."}"#.to_vec();
    runtime
        .assign(
            &created.id,
            &[
                ConfigFile::platform("config.json", config),
                ConfigFile::instance("workspace/SOUL.md", b"Be brief.".to_vec()),
            ],
        )
        .await
        .expect("assign");
    assert_eq!(
        try_send(addr, get_request("i", "/config").as_bytes())
            .await
            .unwrap()
            .json()["owner"],
        "alice"
    );
    assert_eq!(chat_directly(addr, "hi").await, "[Be brief.] echo: hi");
    runtime
        .update_resources(
            &created.id,
            &Resources {
                memory_mb: 256,
                cpus: 1.0,
                pids: 128,
            },
        )
        .await
        .expect("update");

    // A restart keeps the data; the address may move and inspect follows it.
    runtime.restart(&created.id).await.expect("restart");
    let addr = wait_ready(runtime, &created.id).await;
    assert_eq!(
        try_send(addr, get_request("i", "/config").as_bytes())
            .await
            .unwrap()
            .json()["owner"],
        "alice"
    );

    // A crash is reported as an event with its exit code.
    let mut events = runtime.events();
    let _ = try_send(
        addr,
        b"POST /crash HTTP/1.1\r\nHost: i\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    let died = wait_event(
        &mut events,
        |e| matches!(e, RuntimeEvent::Died { id, .. } if *id == created.id),
    )
    .await;
    assert_eq!(
        died,
        RuntimeEvent::Died {
            id: created.id.clone(),
            exit_code: Some(3)
        }
    );
    assert!(matches!(
        runtime.inspect(&created.id).await.unwrap().state,
        RunState::Exited { code: Some(3), .. }
    ));

    runtime.start(&created.id).await.expect("start again");
    wait_ready(runtime, &created.id).await;
    runtime.stop(&created.id).await.expect("stop");
    assert!(matches!(
        runtime.inspect(&created.id).await.unwrap().state,
        RunState::Exited { .. }
    ));
    assert!(runtime.list().await.unwrap().iter().any(|i| i.name == name));

    runtime.remove(&created.id).await.expect("remove");
    assert_eq!(
        runtime.inspect(&created.id).await.unwrap().state,
        RunState::Missing
    );
    assert!(!runtime.list().await.unwrap().iter().any(|i| i.name == name));
}

#[tokio::test]
async fn docker_lifecycle() {
    let runtime = docker_runtime().await;
    lifecycle(&runtime, fixture_image_name()).await;
}

#[tokio::test]
async fn process_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = ProcessRuntime::new(dir.path());
    lifecycle(&runtime, fixture_bin()).await;
}

#[tokio::test]
async fn docker_containers_are_hardened() {
    let runtime = docker_runtime().await;
    let name = unique_name("hardened");
    let created = runtime
        .create(&spec(&name, fixture_image_name(), 96))
        .await
        .unwrap();
    let inspected = runtime
        .docker()
        .inspect_container(&created.id, None)
        .await
        .unwrap();
    let host = inspected.host_config.clone().unwrap();
    let config = inspected.config.clone().unwrap();
    assert_eq!(config.user.as_deref(), Some("65534:65534"));
    assert_eq!(host.readonly_rootfs, Some(true));
    assert_eq!(host.cap_drop, Some(vec!["ALL".to_string()]));
    assert_eq!(
        host.security_opt,
        Some(vec!["no-new-privileges:true".to_string()])
    );
    assert_eq!(host.privileged, Some(false));
    assert_eq!(host.pids_limit, Some(64));
    assert_eq!(host.memory, Some(96 << 20));
    assert_eq!(
        host.memory_swap,
        Some(96 << 20),
        "no swap beyond the memory limit"
    );
    assert_eq!(host.nano_cpus, Some(500_000_000));
    // A new member boots at a quarter of a serving instance's CPU weight.
    assert_eq!(
        host.cpu_shares,
        Some(clawdeploy_pool::docker::WARMING_CPU_SHARES)
    );
    assert_eq!(host.network_mode.as_deref(), Some("clawdeploy-test"));
    let labels = config.labels.unwrap();
    assert_eq!(
        labels.get("clawdeploy.managed").map(String::as_str),
        Some("true")
    );
    assert_eq!(labels.get("clawdeploy.instance"), Some(&name));
    // Published only on loopback.
    let bindings = host.port_bindings.unwrap();
    assert!(bindings
        .values()
        .flatten()
        .flatten()
        .all(|b| b.host_ip.as_deref() == Some("127.0.0.1")));
    // Seccomp stays Docker's default: no unconfined override.
    assert!(!host
        .security_opt
        .unwrap_or_default()
        .iter()
        .any(|o| o.contains("seccomp")));
    // The instance network keeps instances apart.
    let network = runtime
        .docker()
        .inspect_network("clawdeploy-test", None)
        .await
        .unwrap();
    assert_eq!(
        network
            .options
            .unwrap_or_default()
            .get("com.docker.network.bridge.enable_icc")
            .map(String::as_str),
        Some("false")
    );
    // Assigned: its tier's limits, and a serving instance's full CPU weight.
    let assigned = Resources {
        memory_mb: 256,
        cpus: 1.0,
        pids: 128,
    };
    runtime
        .update_resources(&created.id, &assigned)
        .await
        .unwrap();
    let host = runtime
        .docker()
        .inspect_container(&created.id, None)
        .await
        .unwrap()
        .host_config
        .unwrap();
    assert_eq!(
        (host.memory, host.cpu_shares),
        (
            Some(256 << 20),
            Some(clawdeploy_pool::docker::SERVING_CPU_SHARES)
        )
    );
    runtime.remove(&created.id).await.unwrap();
}

#[tokio::test]
async fn docker_reports_out_of_memory_kills() {
    let runtime = docker_runtime().await;
    let created = runtime
        .create(&spec(&unique_name("oom"), fixture_image_name(), 32))
        .await
        .unwrap();
    runtime.start(&created.id).await.unwrap();
    let addr = wait_ready(&runtime, &created.id).await;
    let mut events = runtime.events();
    let _ = try_send(
        addr,
        b"POST /oom HTTP/1.1\r\nHost: i\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    wait_event(
        &mut events,
        |e| matches!(e, RuntimeEvent::OutOfMemory { id } if *id == created.id),
    )
    .await;
    wait_event(
        &mut events,
        |e| matches!(e, RuntimeEvent::Died { id, .. } if *id == created.id),
    )
    .await;
    assert_eq!(
        runtime.inspect(&created.id).await.unwrap().state,
        RunState::Exited {
            code: Some(137),
            oom_killed: true
        }
    );
    runtime.remove(&created.id).await.unwrap();
}

#[tokio::test]
async fn runtimes_refuse_root_and_escaping_config_paths() {
    let runtime = docker_runtime().await;
    let mut root = spec(&unique_name("root"), fixture_image_name(), 64);
    root.user = "0:0".into();
    assert!(runtime.create(&root).await.is_err());

    let dir = tempfile::tempdir().unwrap();
    let process = ProcessRuntime::new(dir.path());
    let created = process
        .create(&spec(&unique_name("paths"), fixture_bin(), 64))
        .await
        .unwrap();
    let escape = ConfigFile::instance("../outside", b"x".to_vec());
    assert!(process.assign(&created.id, &[escape]).await.is_err());
    assert!(!dir.path().join("outside").exists());
    process.remove(&created.id).await.unwrap();
}

#[tokio::test]
async fn fixture_speaks_the_gateway_subset_directly() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = ProcessRuntime::new(dir.path());
    let created = runtime
        .create(&spec(&unique_name("proto"), fixture_bin(), 64))
        .await
        .unwrap();
    runtime.start(&created.id).await.unwrap();
    let addr = wait_ready(&runtime, &created.id).await;
    // With trusted-proxy configured, a connect without the owner's user header is refused.
    runtime
        .assign(
            &created.id,
            &[ConfigFile::platform(
                "config.json",
                br#"{"owner":"alice","userHeader":"x-forwarded-user"}"#.to_vec(),
            )],
        )
        .await
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async("ws://instance/", tcp)
        .await
        .unwrap();
    let _challenge = next_json(&mut ws).await;
    ws.send(Message::text(
        r#"{"type":"req","id":"c1","method":"connect","params":{}}"#,
    ))
    .await
    .unwrap();
    let refused = next_json(&mut ws).await;
    assert_eq!(refused["ok"], false, "{refused}");
    assert!(matches!(
        ws.next().await,
        Some(Ok(Message::Close(_))) | None | Some(Err(_))
    ));
    runtime.remove(&created.id).await.unwrap();
}

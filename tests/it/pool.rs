//! The warm pool against real runtimes (Docker Engine and child processes) and a real store:
//! filling, concurrent signups, capacity and queueing, and healing after kills and OOM.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clawdeploy_pool::{
    routing, Assigned, DockerOptions, DockerRuntime, FixtureConfig, PoolManager, PoolSettings,
    ProcessRuntime, Resources, Runtime, Sleep,
};
use clawdeploy_proxy::{InstanceState, Resolution, RouteTable};
use clawdeploy_store::changes::ChangeBus;
use clawdeploy_store::{Instance, InstanceStatus, NewInstance, NewUser, Role, Store, Tier};

use crate::runtime::{chat_as, fixture_bin, fixture_image_name};
use crate::support::*;

/// Pool tests wait longer than request tests: containers are being created.
const POOL_PATIENCE: Duration = Duration::from_secs(90);

struct Harness {
    store: Store,
    manager: Arc<PoolManager>,
    routes: Arc<RouteTable>,
    runtime: Arc<dyn Runtime>,
    shutdown: tokio::sync::watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

fn node_id() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "t{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

async fn harness(
    runtime: Arc<dyn Runtime>,
    image: String,
    min_idle: usize,
    capacity: usize,
    memory_mb: u64,
) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/pool.db", dir.path().display());
    let store = Store::open(&url).await.unwrap();
    store.migrate().await.unwrap();
    let bus = ChangeBus::new(store.clone(), &url);
    let routes = Arc::new(RouteTable::new(BASE_DOMAIN, APP_DOMAIN));
    tokio::spawn(routing::follow(
        store.clone(),
        routes.clone(),
        bus.subscribe(),
    ));
    let resources = Resources {
        memory_mb,
        cpus: 0.5,
        pids: 64,
    };
    let settings = PoolSettings {
        node_id: node_id(),
        min_idle,
        max_idle: min_idle.max(1) * 4,
        tick: Duration::from_secs(30),
        capacity,
        create_concurrency: 4,
        image,
        user: "65534:65534".into(),
        port: 18789,
        idle_resources: resources,
        tiers: Default::default(),
        idle_stop: None,
        sleep: Sleep::Stop,
        reserve_mb: memory_mb,
        ready_timeout: Duration::from_secs(30),
        labels: BTreeMap::from([("clawdeploy.test".to_string(), "true".to_string())]),
        env: vec![],
    };
    let config = Arc::new(FixtureConfig {
        user_header: "x-forwarded-user".into(),
    });
    let manager = PoolManager::new(
        runtime.clone(),
        store.clone(),
        bus,
        config,
        settings,
        clawdeploy_proxy::Activity::new(),
    );
    let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(manager.clone().run(shutdown_rx));
    Harness {
        store,
        manager,
        routes,
        runtime,
        shutdown,
        _dir: dir,
    }
}

impl Harness {
    async fn signup(&self, n: usize) -> (Instance, Assigned) {
        let user = self
            .store
            .create_user(&NewUser {
                email: &format!("user{n}@example.com"),
                password_hash: "x",
                name: None,
                tier: Tier::Free,
                role: Role::User,
                timezone: None,
            })
            .await
            .unwrap();
        let instance = self
            .store
            .create_instance(&NewInstance {
                user_id: user.id,
                subdomain: &format!("user-{n}"),
                status: InstanceStatus::Provisioning,
                tier: Tier::Free,
                soul_md: None,
                timezone: None,
            })
            .await
            .unwrap();
        let assigned = self.manager.assign(&instance).await.unwrap();
        (instance, assigned)
    }

    async fn wait_idle(&self, at_least: usize) {
        let deadline = Instant::now() + POOL_PATIENCE;
        loop {
            let status = self.manager.node_status().await.unwrap();
            if status.idle >= at_least {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "pool never reached {at_least} idle: {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the instance is running in the store and routed as running, on `addr` != `not`.
    async fn wait_running(&self, instance: &Instance, not: Option<SocketAddr>) -> SocketAddr {
        let deadline = Instant::now() + POOL_PATIENCE;
        let host = format!("{}.{BASE_DOMAIN}", instance.subdomain);
        loop {
            let record = self.store.get_instance(instance.id).await.unwrap().unwrap();
            if let Resolution::Route(route) = self.routes.resolve(&host) {
                if record.status == InstanceStatus::Running
                    && route.state == InstanceState::Running
                    && Some(route.upstream) != not
                    && record.upstream.as_deref() == Some(route.upstream.to_string().as_str())
                {
                    return route.upstream;
                }
            }
            assert!(
                Instant::now() < deadline,
                "instance never ran again: {:?}",
                record.status
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn cleanup(self) {
        let _ = self.shutdown.send(true);
        for member in self
            .store
            .list_pool_members(&self.manager.settings().node_id)
            .await
            .unwrap()
        {
            if let Some(id) = member.runtime_id {
                let _ = self.runtime.remove(&id).await;
            }
        }
    }
}

async fn docker() -> Arc<dyn Runtime> {
    Arc::new(
        DockerRuntime::connect(DockerOptions {
            network: "clawdeploy-test".into(),
            publish_loopback: true,
        })
        .await
        .unwrap(),
    )
}

fn process(dir: &tempfile::TempDir) -> Arc<dyn Runtime> {
    Arc::new(ProcessRuntime::new(dir.path()))
}

/// `count` concurrent signups; every instance ends running on its own address and answers a chat.
async fn concurrent_signups(h: &Arc<Harness>, count: usize) {
    let signups: Vec<_> = (0..count)
        .map(|n| {
            let h = h.clone();
            tokio::spawn(async move { h.signup(n).await })
        })
        .collect();
    let mut addrs = HashSet::new();
    for signup in signups {
        let (instance, assigned) = signup.await.unwrap();
        assert_ne!(assigned, Assigned::Queued, "capacity allows every signup");
        let addr = h.wait_running(&instance, None).await;
        assert!(addrs.insert(addr), "two instances share {addr}");
        let owner = instance.user_id.to_string();
        assert_eq!(
            chat_as(addr, Some(&owner), &format!("hello {}", instance.subdomain)).await,
            format!("echo: hello {}", instance.subdomain)
        );
        let config = try_send(addr, get_request("i", "/config").as_bytes())
            .await
            .unwrap()
            .json();
        assert_eq!(
            config["owner"],
            instance.user_id.to_string(),
            "each instance holds its own owner's config"
        );
    }
    assert_eq!(addrs.len(), count);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_pool_fills_and_serves_fifty_concurrent_signups() {
    let h = Arc::new(harness(docker().await, fixture_image_name(), 5, 70, 64).await);
    h.wait_idle(5).await;
    concurrent_signups(&h, 50).await;
    // The pool refills after the claims.
    h.wait_idle(5).await;
    let status = h.manager.node_status().await.unwrap();
    assert_eq!(status.assigned, 50, "{status:?}");
    Arc::try_unwrap(h)
        .ok()
        .expect("no other owner")
        .cleanup()
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_pool_fills_and_serves_concurrent_signups() {
    let dir = tempfile::tempdir().unwrap();
    let h = Arc::new(harness(process(&dir), fixture_bin(), 3, 30, 64).await);
    h.wait_idle(3).await;
    concurrent_signups(&h, 10).await;
    h.wait_idle(3).await;
    Arc::try_unwrap(h)
        .ok()
        .expect("no other owner")
        .cleanup()
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_node_queues_signups_and_serves_them_when_room_frees() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(process(&dir), fixture_bin(), 0, 2, 64).await;
    let (first, _) = h.signup(0).await;
    h.wait_running(&first, None).await;
    let (second, _) = h.signup(1).await;
    h.wait_running(&second, None).await;

    let (third, assigned) = h.signup(2).await;
    assert_eq!(assigned, Assigned::Queued);
    let host = format!("{}.{BASE_DOMAIN}", third.subdomain);
    let deadline = Instant::now() + PATIENCE;
    while !matches!(h.routes.resolve(&host), Resolution::Route(r) if r.state == InstanceState::Queued)
    {
        assert!(
            Instant::now() < deadline,
            "queued instance not routed as queued"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(h.manager.node_status().await.unwrap().queued, 1);

    // Room frees: the first instance goes away, and the queued one is served.
    h.manager.release(first.id).await.unwrap();
    h.store.delete_instance(first.id).await.unwrap();
    let addr = h.wait_running(&third, None).await;
    assert_eq!(
        chat_as(addr, Some(&third.user_id.to_string()), "finally").await,
        "echo: finally"
    );
    h.cleanup().await;
}

/// Kills an instance the way `how` says and checks it comes back routable without a manual step.
async fn heals_after(h: &Harness, how: &[u8]) {
    let (instance, _) = h.signup(0).await;
    let before = h.wait_running(&instance, None).await;
    let _ = try_send(before, how).await;
    let after = h.wait_running(&instance, Some(before)).await;
    assert_eq!(
        chat_as(after, Some(&instance.user_id.to_string()), "back").await,
        "echo: back"
    );
    // The instance's data (its config) survived.
    assert_eq!(
        try_send(after, get_request("i", "/config").as_bytes())
            .await
            .unwrap()
            .json()["owner"],
        instance.user_id.to_string()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_instance_killed_is_restarted_and_rerouted() {
    let h = harness(docker().await, fixture_image_name(), 0, 4, 64).await;
    heals_after(
        &h,
        b"POST /crash HTTP/1.1\r\nHost: i\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_instance_killed_by_oom_is_restarted_and_rerouted() {
    let h = harness(docker().await, fixture_image_name(), 0, 4, 32).await;
    heals_after(
        &h,
        b"POST /oom HTTP/1.1\r\nHost: i\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_instance_killed_is_restarted_and_rerouted() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(process(&dir), fixture_bin(), 0, 4, 64).await;
    heals_after(
        &h,
        b"POST /crash HTTP/1.1\r\nHost: i\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    h.cleanup().await;
}

/// An instance that keeps crashing is restarted with growing pauses, then left `crashed` (routed as
/// crashed) until its owner restarts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_ends_as_crashed() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(process(&dir), fixture_bin(), 0, 4, 64).await;
    let (instance, _) = h.signup(0).await;
    let mut addr = h.wait_running(&instance, None).await;
    let started = Instant::now();
    // Five restarts are healed (pauses 0, 1, 2, 4, 8 s); the sixth crash in ten minutes is a loop.
    for _ in 0..5 {
        let _ = try_send(
            addr,
            b"POST /crash HTTP/1.1\r\nHost: i\r\nContent-Length: 0\r\n\r\n",
        )
        .await;
        addr = h.wait_running(&instance, Some(addr)).await;
    }
    assert!(
        started.elapsed() >= Duration::from_secs(14),
        "restarts were not backed off: {:?}",
        started.elapsed()
    );
    let _ = try_send(
        addr,
        b"POST /crash HTTP/1.1\r\nHost: i\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    let host = format!("{}.{BASE_DOMAIN}", instance.subdomain);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let record = h.store.get_instance(instance.id).await.unwrap().unwrap();
        let routed = matches!(h.routes.resolve(&host), Resolution::Route(r) if r.state == InstanceState::Crashed);
        if record.status == InstanceStatus::Crashed && routed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not marked crashed: {:?}",
            record.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    h.cleanup().await;
}

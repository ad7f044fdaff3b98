//! User namespaces (`docs/security.md`, "User namespaces"): on an engine started with
//! `--userns-remap=default`, as `scripts/start-docker.sh` starts it, an instance created by the
//! runtime with all its hardening runs as uid 1000 inside and as a high, unprivileged uid of the
//! host (`dockremap`'s subordinate range), not as the host's user 1000.
//!
//! The suite's shared engine may have been started without remapping (and is never restarted by
//! a test), so this test starts an engine of its own: its own socket, data root and exec root, no
//! default bridge, no iptables rules, and an address pool of its own (10.213.0.0/16) so its
//! networks never overlap the shared engine's. It is stopped and removed at the end.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clawdeploy_pool::{ConfigFile, DockerOptions, DockerRuntime, Runtime};

use crate::runtime::{spec, wait_ready};
use crate::support::*;

const NETWORK: &str = "clawdeploy-userns-test";

/// A `dockerd --userns-remap=default` of this test's own, killed and removed on drop.
struct RemappedEngine {
    child: Child,
    root: PathBuf,
    host: String,
}

impl RemappedEngine {
    fn start() -> Self {
        // Short paths: the exec root holds unix sockets (108-byte limit).
        let root = PathBuf::from(format!("/tmp/cdns-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let socket = root.join("d.sock");
        let log = std::fs::File::create(root.join("dockerd.log")).unwrap();
        let child = Command::new("dockerd")
            .arg("--userns-remap=default")
            .arg("--data-root")
            .arg(root.join("data"))
            .arg("--exec-root")
            .arg(root.join("x"))
            .arg("--pidfile")
            .arg(root.join("d.pid"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .args(["--bridge=none", "--iptables=false", "--ip-masq=false"])
            .args(["--default-address-pool", "base=10.213.0.0/16,size=24"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("dockerd (scripts/start-docker.sh installs it)");
        let engine = Self {
            child,
            host: format!("unix://{}", socket.display()),
            root,
        };
        let deadline = Instant::now() + PATIENCE;
        while !engine.docker(&["info"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "the remapped dockerd did not come up:\n{}",
                engine.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        engine
    }

    fn docker(&self, args: &[&str]) -> std::process::Output {
        Command::new("docker")
            .arg("-H")
            .arg(&self.host)
            .args(args)
            .output()
            .expect("docker CLI")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("dockerd.log")).unwrap_or_default()
    }
}

impl Drop for RemappedEngine {
    #[allow(unsafe_code)] // the unsafe call below: see its SAFETY comment
    fn drop(&mut self) {
        // Docker leaves a network's bridge interface on the host when it stops: remove it first.
        let _ = self.docker(&["rm", "-f", "-v", "cdtest-userns"]);
        let _ = self.docker(&["network", "rm", NETWORK]);
        // SIGTERM lets dockerd stop its containerd and unmount what it mounted.
        // SAFETY: kill(2) sends a signal to our own child; no memory is involved.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The `Uid:` line of a host process: real, effective, saved, filesystem.
fn host_uids(pid: u32) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .expect("Uid line")
        .split_whitespace()
        .map(|u| u.parse().unwrap())
        .collect()
}

/// The start of `dockremap`'s subordinate uid range (`/etc/subuid`), which dockerd creates.
fn dockremap_subuid_start() -> u32 {
    std::fs::read_to_string("/etc/subuid")
        .expect("/etc/subuid")
        .lines()
        .find_map(|l| l.strip_prefix("dockremap:"))
        .and_then(|rest| rest.split(':').next())
        .and_then(|start| start.parse().ok())
        .expect("a dockremap range in /etc/subuid")
}

#[tokio::test]
async fn with_userns_remap_an_instance_uid_1000_is_a_high_unprivileged_host_uid() {
    let engine = RemappedEngine::start();
    let info = engine.docker(&["info", "--format", "{{json .SecurityOptions}}"]);
    assert!(
        String::from_utf8_lossy(&info.stdout).contains("name=userns"),
        "the engine is not remapped: {}",
        String::from_utf8_lossy(&info.stdout)
    );
    // The fixture image, from the shared engine (no registry here).
    let image = fixture_image_name();
    let mut saved = Command::new("docker")
        .args(["save", &image])
        .stdout(Stdio::piped())
        .spawn()
        .expect("docker save");
    let loaded = Command::new("docker")
        .arg("-H")
        .arg(&engine.host)
        .arg("load")
        .stdin(saved.stdout.take().expect("pipe"))
        .output()
        .expect("docker load");
    assert!(
        saved.wait().expect("docker save").success(),
        "docker save {image}"
    );
    assert!(
        loaded.status.success(),
        "docker load: {}",
        String::from_utf8_lossy(&loaded.stderr)
    );

    let runtime = DockerRuntime::connect_to(
        &engine.host,
        DockerOptions {
            network: NETWORK.into(),
            publish_loopback: true,
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", engine.log()));
    let mut spec = spec("cdtest-userns", image, 64);
    spec.user = "1000:1000".into();
    let created = runtime.create(&spec).await.unwrap();
    runtime
        .start(&created.id)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", engine.log()));
    // Hardened as everywhere (read-only root, no capabilities, its own volume) and serving; the
    // files the platform writes into its volume are the instance's to read.
    let addr = wait_ready(&runtime, &created.id).await;
    runtime
        .assign(
            &created.id,
            &[ConfigFile::platform(
                "config.json",
                br#"{"written":"by the platform"}"#.to_vec(),
            )],
        )
        .await
        .unwrap();
    let config = try_send(addr, get_request("instance", "/config").as_bytes())
        .await
        .unwrap();
    assert_eq!(
        config.json()["written"],
        "by the platform",
        "{}",
        config.text()
    );

    let inspect = runtime
        .docker()
        .inspect_container(&created.id, None)
        .await
        .unwrap();
    let pid = inspect.state.and_then(|s| s.pid).expect("a running pid") as u32;
    let start = dockremap_subuid_start();
    assert!(start >= 100_000, "subordinate range starts at {start}");
    // Root inside is `start` outside; everything else follows.
    let uid_map = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap();
    let first: Vec<&str> = uid_map.split_whitespace().take(3).collect();
    assert_eq!(first, ["0", &start.to_string(), "65536"], "{uid_map}");
    // The container's first process (Docker's init) and the instance's own process under it are
    // uid 1000 inside, `start + 1000` on the host: no host user, no file of a host user.
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    let mut pids = vec![pid];
    pids.extend(
        children
            .split_whitespace()
            .map(|c| c.parse::<u32>().unwrap()),
    );
    assert!(
        pids.len() >= 2,
        "the instance process is missing: {children:?}"
    );
    for pid in pids {
        assert_eq!(host_uids(pid), vec![start + 1000; 4], "process {pid}");
    }

    runtime.remove(&created.id).await.unwrap();
    drop(engine);
}

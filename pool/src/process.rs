//! The process runtime: each instance is a child process on a loopback port, with a data directory
//! of its own. For machines without Docker. NOT isolated: development only, and it logs so.
//!
//! Same semantics as the Docker runtime where they can hold: create → start → assign (files in the
//! data directory) → inspect (address `127.0.0.1:<port>`) → stop/restart/remove, and `Started`/`Died`
//! events. Resource limits are not enforced.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::process::Command;
use tokio::sync::{broadcast, oneshot};

use crate::runtime::{
    safe_relative_path, ConfigFile, Inspection, InstanceRef, InstanceSpec, Resources, RunState,
    Runtime, RuntimeError, RuntimeEvent,
};

struct Process {
    spec: InstanceSpec,
    port: u16,
    data_dir: PathBuf,
    /// Present while running: dropping it asks the watcher to kill the child.
    kill: Option<oneshot::Sender<()>>,
    state: RunState,
}

/// The process runtime (see the module docs): instances are children of the edge, killed when it
/// dies.
pub struct ProcessRuntime {
    base_dir: PathBuf,
    processes: Arc<Mutex<HashMap<String, Process>>>,
    events: broadcast::Sender<RuntimeEvent>,
}

impl ProcessRuntime {
    /// Instances keep their data under `base_dir/<name>`.
    pub fn new(base_dir: impl Into<PathBuf>) -> Self {
        tracing::warn!("process runtime: instances run as plain local processes, NOT isolated; development only");
        Self {
            base_dir: base_dir.into(),
            processes: Arc::default(),
            events: broadcast::channel(1024).0,
        }
    }

    fn with<T>(&self, id: &str, f: impl FnOnce(&mut Process) -> T) -> Result<T, RuntimeError> {
        let mut processes = self
            .processes
            .lock()
            .map_err(|_| RuntimeError::Unavailable("process table poisoned".into()))?;
        processes
            .get_mut(id)
            .map(f)
            .ok_or_else(|| RuntimeError::NotFound(id.to_string()))
    }
}

fn free_loopback_port() -> Result<u16, RuntimeError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[async_trait]
impl Runtime for ProcessRuntime {
    fn kind(&self) -> &'static str {
        "process"
    }

    async fn create(&self, spec: &InstanceSpec) -> Result<InstanceRef, RuntimeError> {
        let data_dir = self.base_dir.join(&spec.name);
        tokio::fs::create_dir_all(&data_dir).await?;
        write_files(&data_dir, &spec.files).await?;
        let process = Process {
            spec: spec.clone(),
            port: 0,
            data_dir,
            kill: None,
            state: RunState::Created,
        };
        let mut processes = self
            .processes
            .lock()
            .map_err(|_| RuntimeError::Unavailable("process table poisoned".into()))?;
        if processes.contains_key(&spec.name) {
            return Err(RuntimeError::Refused(format!(
                "an instance named {} exists",
                spec.name
            )));
        }
        processes.insert(spec.name.clone(), process);
        Ok(InstanceRef {
            id: spec.name.clone(),
            name: spec.name.clone(),
        })
    }

    #[allow(unsafe_code)] // the unsafe call below: see its SAFETY comment
    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        let port = free_loopback_port()?;
        let (spec, data_dir) = self.with(id, |p| (p.spec.clone(), p.data_dir.clone()))?;
        let mut command = Command::new(&spec.image);
        command
            .envs(spec.env.iter().cloned())
            .env("PORT", port.to_string())
            .env("BIND", "127.0.0.1")
            .env("DATA_DIR", &data_dir)
            .current_dir(&data_dir)
            .kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe; the closure only asks the kernel to kill the child
        // when the edge process dies, so instances never outlive it (even after a SIGKILL).
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let mut child = command.spawn()?;
        let (kill_tx, kill_rx) = oneshot::channel();
        self.with(id, |p| {
            p.port = port;
            p.kill = Some(kill_tx);
            p.state = RunState::Running;
        })?;
        let _ = self
            .events
            .send(RuntimeEvent::Started { id: id.to_string() });
        let (processes, events, id) = (self.processes.clone(), self.events.clone(), id.to_string());
        tokio::spawn(async move {
            let status = tokio::select! {
                status = child.wait() => status.ok(),
                _ = kill_rx => {
                    let _ = child.kill().await;
                    child.wait().await.ok()
                }
            };
            let code = status.and_then(|s| s.code()).map(i64::from);
            if let Ok(mut processes) = processes.lock() {
                if let Some(p) = processes.get_mut(&id) {
                    p.kill = None;
                    p.state = RunState::Exited {
                        code,
                        oom_killed: false,
                    };
                }
            }
            let _ = events.send(RuntimeEvent::Died {
                id,
                exit_code: code,
            });
        });
        Ok(())
    }

    async fn assign(&self, id: &str, files: &[ConfigFile]) -> Result<(), RuntimeError> {
        let data_dir = self.with(id, |p| p.data_dir.clone())?;
        write_files(&data_dir, files).await
    }

    async fn remove_path(&self, id: &str, path: &str) -> Result<(), RuntimeError> {
        let path = safe_relative_path(path)?;
        let data_dir = self.with(id, |p| p.data_dir.clone())?;
        match tokio::fs::remove_dir_all(data_dir.join(path)).await {
            Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
                Ok(tokio::fs::remove_file(data_dir.join(path)).await?)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => Ok(other?),
        }
    }

    async fn stop(&self, id: &str) -> Result<(), RuntimeError> {
        let mut events = self.events.subscribe();
        let Some(kill) = self.with(id, |p| p.kill.take())? else {
            return Ok(());
        };
        let _ = kill.send(());
        // Wait for the exit to be recorded.
        while let Ok(event) = events.recv().await {
            if matches!(&event, RuntimeEvent::Died { id: died, .. } if died == id) {
                break;
            }
        }
        Ok(())
    }

    async fn restart(&self, id: &str) -> Result<(), RuntimeError> {
        self.stop(id).await?;
        self.start(id).await
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        if self.with(id, |_| ()).is_err() {
            return Ok(());
        }
        self.stop(id).await?;
        let removed = self.processes.lock().ok().and_then(|mut p| p.remove(id));
        if let Some(process) = removed {
            tokio::fs::remove_dir_all(&process.data_dir)
                .await
                .or_else(|e| {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })?;
        }
        Ok(())
    }

    async fn inspect(&self, id: &str) -> Result<Inspection, RuntimeError> {
        match self.with(id, |p| (p.state.clone(), p.port)) {
            Ok((state, port)) => {
                let address =
                    (state == RunState::Running).then(|| SocketAddr::from(([127, 0, 0, 1], port)));
                Ok(Inspection { state, address })
            }
            Err(RuntimeError::NotFound(_)) => Ok(Inspection {
                state: RunState::Missing,
                address: None,
            }),
            Err(e) => Err(e),
        }
    }

    async fn update_resources(&self, id: &str, resources: &Resources) -> Result<(), RuntimeError> {
        self.with(id, |p| p.spec.resources = resources.clone())?;
        tracing::debug!(
            id,
            "process runtime: resource limits are recorded, not enforced"
        );
        Ok(())
    }

    async fn export_data(&self, id: &str) -> Result<Vec<u8>, RuntimeError> {
        let data_dir = self.with(id, |p| p.data_dir.clone())?;
        tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
            let mut builder = tar::Builder::new(Vec::new());
            builder.append_dir_all("data", &data_dir)?;
            builder.into_inner()
        })
        .await
        .map_err(|e| RuntimeError::Unavailable(e.to_string()))?
        .map_err(RuntimeError::from)
    }

    async fn list(&self) -> Result<Vec<InstanceRef>, RuntimeError> {
        let processes = self
            .processes
            .lock()
            .map_err(|_| RuntimeError::Unavailable("process table poisoned".into()))?;
        Ok(processes
            .keys()
            .map(|name| InstanceRef {
                id: name.clone(),
                name: name.clone(),
            })
            .collect())
    }

    fn events(&self) -> broadcast::Receiver<RuntimeEvent> {
        self.events.subscribe()
    }
}

/// Writes `files` into `data_dir`. Processes share the edge's user: nothing here is read-only to
/// them (the process runtime is for development and is not isolated).
async fn write_files(data_dir: &std::path::Path, files: &[ConfigFile]) -> Result<(), RuntimeError> {
    for file in files {
        let path = data_dir.join(safe_relative_path(&file.path)?);
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        // Write then rename, so the instance never reads a half-written file; a name of its own,
        // so two writes of one file cannot rename each other's.
        let tmp = path.with_extension(format!("clawdeploy-tmp-{}", uuid::Uuid::new_v4()));
        tokio::fs::write(&tmp, &file.contents).await?;
        tokio::fs::rename(&tmp, &path).await?;
    }
    Ok(())
}

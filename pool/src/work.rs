//! Asking an instance's gateway about its work before it sleeps, never guessing (issue 24).
//!
//! OpenClaw has a handshake for hosts that freeze or stop it (its docs, "Cooperative host
//! suspension"): `gateway.suspend.prepare` answers `busy` (with its blockers) while any tracked
//! work runs — an agent turn, a cron run, a pending write — and otherwise `ready`, fencing every
//! other method until `gateway.suspend.resume` (or a two-minute lease's end). `cron.status`
//! answers when the next scheduled job is due (`nextWakeAtMs`). The pool connects as the
//! platform's own gateway identity ([`PLATFORM_USER`]), the only one with `operator.admin`, which
//! the handshake needs.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::Message;

pub use clawdeploy_proxy::gateway_trust::{PLATFORM_SCOPES, PLATFORM_USER};

/// How long one exchange with a gateway may take.
const PATIENCE: Duration = Duration::from_secs(5);
/// How long a whole chat turn may take.
const TURN_PATIENCE: Duration = Duration::from_secs(120);

/// Why a gateway could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum WorkError {
    /// The WebSocket could not be opened or broke.
    #[error("gateway connection: {0}")]
    Connection(String),
    /// The gateway answered a request with an error, or something unexpected.
    #[error("gateway answered {method}: {answer}")]
    Refused {
        /// The method called.
        method: &'static str,
        /// Its answer.
        answer: String,
    },
    /// No answer in time.
    #[error("the gateway did not answer in {0:?}")]
    Timeout(Duration),
}

/// What `gateway.suspend.prepare` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Suspension {
    /// Work runs: `reason` (and the blockers) as the gateway gave it.
    Busy(String),
    /// Idle and fenced until resumed: the lease's id.
    Ready(String),
}

/// A connected gateway, as the platform.
pub struct Gateway {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
}

impl Gateway {
    /// Connects to the gateway at `addr` with `headers` (the trusted-proxy user header naming
    /// [`PLATFORM_USER`], and the instance's proof header).
    pub async fn connect(
        addr: SocketAddr,
        headers: &[(String, String)],
    ) -> Result<Self, WorkError> {
        tokio::time::timeout(PATIENCE, Self::handshake(addr, headers))
            .await
            .map_err(|_| WorkError::Timeout(PATIENCE))?
    }

    async fn handshake(addr: SocketAddr, headers: &[(String, String)]) -> Result<Self, WorkError> {
        let mut request = format!("ws://{addr}/")
            .into_client_request()
            .map_err(|e| WorkError::Connection(e.to_string()))?;
        // OpenClaw refuses a trusted proxy's request that names no non-loopback client
        // (`proxy_attribution_required`): the platform names a documentation address, as the
        // readiness probe does.
        request
            .headers_mut()
            .insert("x-forwarded-for", HeaderValue::from_static("192.0.2.1"));
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| WorkError::Connection(format!("header {name}: {e}")))?;
            let value = HeaderValue::from_str(value)
                .map_err(|e| WorkError::Connection(format!("header value: {e}")))?;
            request.headers_mut().insert(name, value);
        }
        let (ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .map_err(|e| WorkError::Connection(e.to_string()))?;
        let mut gateway = Self { ws, next_id: 0 };
        // The first frame is the `connect.challenge` event; backend clients answer with `connect`.
        gateway.frame().await?;
        let hello = gateway
            .call(
                "connect",
                json!({"minProtocol": 4, "maxProtocol": 4,
                    "client": {"id": "gateway-client", "version": env!("CARGO_PKG_VERSION"),
                        "platform": "linux", "mode": "backend"},
                    "role": "operator", "scopes": PLATFORM_SCOPES}),
            )
            .await?;
        if hello["type"] != "hello-ok" {
            return Err(WorkError::Refused {
                method: "connect",
                answer: hello.to_string(),
            });
        }
        Ok(gateway)
    }

    async fn frame(&mut self) -> Result<Value, WorkError> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    return serde_json::from_str(text.as_str())
                        .map_err(|e| WorkError::Connection(format!("not JSON: {e}")))
                }
                Some(Ok(Message::Close(frame))) => {
                    return Err(WorkError::Connection(format!("closed: {frame:?}")))
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(WorkError::Connection(e.to_string())),
                None => return Err(WorkError::Connection("ended".into())),
            }
        }
    }

    /// One request; its response's payload (an error response is [`WorkError::Refused`]).
    pub async fn call(&mut self, method: &'static str, params: Value) -> Result<Value, WorkError> {
        self.call_within(method, params, PATIENCE).await
    }

    /// [`Self::call`] for a request that may take up to `patience` (a skill install).
    pub async fn call_within(
        &mut self,
        method: &'static str,
        params: Value,
        patience: Duration,
    ) -> Result<Value, WorkError> {
        self.next_id += 1;
        let id = format!("clawdeploy-{}", self.next_id);
        let request = json!({"type": "req", "id": id, "method": method, "params": params});
        let exchange = async {
            self.ws
                .send(Message::text(request.to_string()))
                .await
                .map_err(|e| WorkError::Connection(e.to_string()))?;
            loop {
                let frame = self.frame().await?;
                if frame["type"] == "res" && frame["id"] == id.as_str() {
                    return if frame["ok"] == true {
                        Ok(frame["payload"].clone())
                    } else {
                        Err(WorkError::Refused {
                            method,
                            answer: frame["error"].to_string(),
                        })
                    };
                }
            }
        };
        tokio::time::timeout(patience, exchange)
            .await
            .map_err(|_| WorkError::Timeout(patience))?
    }

    /// One chat turn in `session`: returns once its final event arrives (a first turn on 2 vCPU
    /// takes 5-11 s, more while other instances boot).
    pub async fn chat(&mut self, session: &str, message: &str) -> Result<(), WorkError> {
        let run = format!("clawdeploy-{}", uuid::Uuid::new_v4());
        self.call(
            "chat.send",
            json!({"sessionKey": session, "message": message, "idempotencyKey": run}),
        )
        .await?;
        let turn = async {
            loop {
                let frame = self.frame().await?;
                if frame["event"] != "chat" || frame["payload"]["runId"] != run.as_str() {
                    continue;
                }
                match frame["payload"]["state"].as_str() {
                    Some("final") => return Ok(()),
                    Some("error" | "aborted") => {
                        return Err(WorkError::Refused {
                            method: "chat.send",
                            answer: frame["payload"].to_string(),
                        })
                    }
                    _ => {}
                }
            }
        };
        tokio::time::timeout(TURN_PATIENCE, turn)
            .await
            .map_err(|_| WorkError::Timeout(TURN_PATIENCE))?
    }

    /// When the next scheduled job is due (unix ms), if any.
    pub async fn next_job_at_ms(&mut self) -> Result<Option<i64>, WorkError> {
        let status = self.call("cron.status", json!({})).await?;
        Ok(status["nextWakeAtMs"].as_i64())
    }

    /// Asks to suspend: `ready` fences the gateway until [`Self::resume`].
    pub async fn prepare_suspend(&mut self, request_id: &str) -> Result<Suspension, WorkError> {
        let answer = self
            .call(
                "gateway.suspend.prepare",
                json!({"requestId": request_id, "terminalPolicy": "preserve"}),
            )
            .await?;
        match (answer["status"].as_str(), answer["suspensionId"].as_str()) {
            (Some("ready"), Some(id)) => Ok(Suspension::Ready(id.to_string())),
            (Some("busy"), _) => Ok(Suspension::Busy(format!(
                "{} ({} active: {})",
                answer["reason"].as_str().unwrap_or("busy"),
                answer["activeCount"],
                answer["blockers"]
            ))),
            _ => Err(WorkError::Refused {
                method: "gateway.suspend.prepare",
                answer: answer.to_string(),
            }),
        }
    }

    /// Releases a suspension after a thaw (or an abandoned sleep).
    pub async fn resume(&mut self, suspension_id: &str) -> Result<(), WorkError> {
        self.call(
            "gateway.suspend.resume",
            json!({"suspensionId": suspension_id}),
        )
        .await
        .map(|_| ())
    }
}

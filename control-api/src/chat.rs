//! `GET /api/instances/me/chat`: the dashboard's chat WebSocket. The browser authenticates with
//! its session cookie (or a bearer token); this end connects to the user's instance gateway
//! *through the edge* as a backend client under the user's identity, so the browser needs no
//! OpenClaw device pairing and every frame passes the edge's owner check and metering exactly as a
//! direct client's would.
//!
//! To the browser the bridge speaks the gateway's own frames (`req`/`res`/`event`), plus three
//! events of its own: `bridge.ready` (the gateway accepted the connection; payload has `hello`),
//! `bridge.error` (`{code, message}`, then the socket closes) and `bridge.closed`.
//!
//! The browser side is axum's `WebSocketUpgrade`; the gateway side is a `tokio-tungstenite` client.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use axum::extract::ws::{self, close_code, CloseFrame, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use clawdeploy_proxy::browser_session;
use clawdeploy_store::InstanceStatus;

use crate::auth::{self, AuthUser};
use crate::error::ApiError;
use crate::ApiState;

/// How long the gateway may take to challenge and admit the bridge.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest frame accepted from the browser (a chat message, not a file upload).
const MAX_BROWSER_FRAME: usize = 1024 * 1024;

/// `WebSocketUpgrade` whose refusals are the API's JSON errors (`400 WEBSOCKET_REQUIRED` saying
/// what is wrong) instead of axum's plain-text ones.
pub struct ChatUpgrade(WebSocketUpgrade);

impl<S: Send + Sync> FromRequestParts<S> for ChatUpgrade {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        use axum::extract::ws::rejection::WebSocketUpgradeRejection as R;
        WebSocketUpgrade::from_request_parts(parts, state)
            .await
            .map(ChatUpgrade)
            .map_err(|rejection| {
                let message = match rejection {
                    R::WebSocketKeyHeaderMissing(_) => "Sec-WebSocket-Key is missing.",
                    R::InvalidWebSocketVersionHeader(_) => {
                        "Only WebSocket version 13 is supported."
                    }
                    // Upgrade: websocket without Connection: upgrade (with neither, the general
                    // message below).
                    R::InvalidConnectionHeader(_)
                        if parts.headers.contains_key(header::UPGRADE) =>
                    {
                        "This endpoint is a WebSocket: send Connection: upgrade."
                    }
                    R::ConnectionNotUpgradable(_) => "This connection cannot be upgraded.",
                    _ => "This endpoint is a WebSocket: connect with GET and Upgrade: websocket.",
                };
                ApiError::new(StatusCode::BAD_REQUEST, "WEBSOCKET_REQUIRED", message)
            })
    }
}

/// Where this process's edge listens, as seen from here.
fn edge_addr(state: &ApiState) -> Option<SocketAddr> {
    let mut addr: SocketAddr = state.ctx.config.server.http_listen.parse().ok()?;
    if addr.ip().is_unspecified() {
        addr.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    Some(addr)
}

/// `GET /api/instances/me/chat`: upgrades to the chat WebSocket (101) and bridges it to the
/// caller's instance gateway. A browser's `Origin` must be the app domain (403 otherwise); frames
/// from the browser are at most 1 MiB.
pub async fn chat(
    State(state): State<ApiState>,
    auth: AuthUser,
    ChatUpgrade(upgrade): ChatUpgrade,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    // A page on another site must not open a socket with this user's cookie.
    if let Some(origin) = headers.get(header::ORIGIN) {
        let app = state.ctx.config.server.app_domain();
        let same = origin
            .to_str()
            .ok()
            .and_then(browser_session::parse_origin)
            .is_some_and(|h| h.eq_ignore_ascii_case(&app));
        if !same {
            return Err(ApiError::forbidden(
                "ORIGIN_NOT_ALLOWED",
                format!("The chat WebSocket accepts connections from {app} only."),
            ));
        }
    }
    let token = auth::request_token(&method, &headers)?.to_string();
    Ok(upgrade
        .max_message_size(MAX_BROWSER_FRAME)
        .max_frame_size(MAX_BROWSER_FRAME)
        .on_failed_upgrade(|e| tracing::debug!("chat upgrade failed: {e}"))
        .on_upgrade(move |browser| bridge(state, auth, token, browser)))
}

pub(crate) type Gateway = WebSocketStream<tokio::net::TcpStream>;

/// One request on a gateway opened by [`connect_gateway`]: its `res` frame (`ok` true or false),
/// events in between skipped; within the handshake's timeout.
pub(crate) async fn call(
    gateway: &mut Gateway,
    id: &str,
    method: &str,
    params: Value,
) -> Result<Value, GatewayError> {
    let request = json!({"type": "req", "id": id, "method": method, "params": params});
    tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        gateway.send(Message::text(request.to_string())).await?;
        while let Some(frame) = gateway.next().await {
            let Message::Text(text) = frame? else {
                continue;
            };
            let frame: Value = serde_json::from_str(text.as_str()).map_err(GatewayError::Frame)?;
            if frame["type"] == "res" && frame["id"] == id {
                return Ok(frame);
            }
        }
        Err(GatewayError::Closed("ended".into()))
    })
    .await
    .map_err(|_| GatewayError::Timeout)?
}

async fn fail(browser: &mut WebSocket, code: &str, message: &str) {
    let event =
        json!({"type":"event","event":"bridge.error","payload":{"code":code,"message":message}});
    let _ = browser.send(ws::Message::text(event.to_string())).await;
    let _ = browser
        .send(ws::Message::Close(Some(CloseFrame {
            code: close_code::AGAIN,
            reason: code.into(),
        })))
        .await;
}

async fn bridge(state: ApiState, auth: AuthUser, token: String, mut browser: WebSocket) {
    let inst = match crate::instances::my_instance(&state, &auth).await {
        Ok(inst) => inst,
        Err(e) => {
            e.log_cause();
            return fail(&mut browser, "NO_INSTANCE", &e.message).await;
        }
    };
    // The edge wakes a sleeping instance for the gateway connection below and holds it meanwhile.
    if !matches!(
        inst.status,
        InstanceStatus::Running | InstanceStatus::Sleeping
    ) {
        let message = match inst.status {
            InstanceStatus::Stopped | InstanceStatus::Crashed => format!(
                "Your instance is {}: restart it from Settings to chat.",
                inst.status.as_str()
            ),
            _ => format!(
                "Your instance is {}; the chat connects as soon as it runs.",
                inst.status.as_str()
            ),
        };
        return fail(&mut browser, "INSTANCE_NOT_RUNNING", &message).await;
    }
    let host = format!("{}.{}", inst.subdomain, state.routes.base_domain());
    let mut gateway = match connect_gateway(&state, &host, &token, false).await {
        Ok((gateway, hello)) => {
            let ready = json!({"type":"event","event":"bridge.ready","payload":{"instance":inst.subdomain,"hello":hello}});
            if browser
                .send(ws::Message::text(ready.to_string()))
                .await
                .is_err()
            {
                return;
            }
            gateway
        }
        Err(why) => {
            tracing::warn!(instance = %inst.id, "chat bridge cannot reach the gateway: {why}");
            return fail(&mut browser, "GATEWAY_UNAVAILABLE", &format!("Your instance's gateway did not accept the chat connection ({why}); retrying shortly.")).await;
        }
    };
    tracing::debug!(instance = %inst.id, "chat bridge open");
    loop {
        tokio::select! {
            from_browser = browser.recv() => match from_browser {
                Some(Ok(ws::Message::Text(text))) => {
                    if gateway.send(Message::text(text.as_str())).await.is_err() {
                        break;
                    }
                }
                Some(Ok(ws::Message::Close(_))) | None | Some(Err(_)) => {
                    let _ = gateway.close(None).await;
                    return;
                }
                // Pings are answered by the library; binary frames are not part of the protocol.
                Some(Ok(_)) => {}
            },
            from_gateway = gateway.next() => match from_gateway {
                Some(Ok(Message::Text(text))) => {
                    if browser.send(ws::Message::text(text.as_str())).await.is_err() {
                        let _ = gateway.close(None).await;
                        return;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
        }
    }
    let closed = json!({"type":"event","event":"bridge.closed","payload":{"message":"The instance closed the connection; reconnecting."}});
    let _ = browser.send(ws::Message::text(closed.to_string())).await;
    let _ = browser.send(ws::Message::Close(None)).await;
}
/// Why the bridge could not open the instance's gateway (shown to the user, so said plainly).
#[derive(Debug, thiserror::Error)]
pub(crate) enum GatewayError {
    #[error("the edge's listen address is not an IP:port")]
    NoEdgeAddress,
    #[error("edge unreachable: {0}")]
    Unreachable(std::io::Error),
    #[error("the edge answered {0}")]
    Refused(StatusCode),
    #[error("{0}")]
    WebSocket(tokio_tungstenite::tungstenite::Error),
    #[error("not a gateway frame: {0}")]
    Frame(serde_json::Error),
    #[error("closed: {0}")]
    Closed(String),
    #[error("{0}")]
    ConnectRefused(String),
    #[error("the gateway closed during the handshake")]
    ClosedInHandshake,
    #[error("the gateway did not answer in time")]
    Timeout,
}

impl From<tokio_tungstenite::tungstenite::Error> for GatewayError {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        match e {
            tokio_tungstenite::tungstenite::Error::Http(resp) => {
                GatewayError::Refused(resp.status())
            }
            other => GatewayError::WebSocket(other),
        }
    }
}

/// Opens the gateway at `host` through this node's edge with the user's token, and completes the
/// `connect.challenge` → `connect` → `hello-ok` handshake as a backend client.
pub(crate) async fn connect_gateway(
    state: &ApiState,
    host: &str,
    token: &str,
    platform: bool,
) -> Result<(Gateway, Value), GatewayError> {
    let addr = edge_addr(state).ok_or(GatewayError::NoEdgeAddress)?;
    tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(GatewayError::Unreachable)?;
        let mut request = format!("ws://{host}/ws").into_client_request()?;
        // The token passed the API's own checks, so it is a valid header value.
        if let Ok(bearer) = HeaderValue::from_str(&format!("Bearer {token}")) {
            request.headers_mut().insert(header::AUTHORIZATION, bearer);
        }
        // The platform's own connection (sub-agents, `crate::agents`), never the browser's bridge.
        if platform {
            if let Ok(secret) = HeaderValue::from_str(&state.ctx.edge_secret) {
                request.headers_mut().insert(
                    clawdeploy_proxy::edge::CONTROL_PLANE_SECRET_HEADER,
                    secret,
                );
            }
        }
        let (mut ws, _) = tokio_tungstenite::client_async(request, tcp).await?;
        let connect = json!({"type":"req","id":"bridge-connect","method":"connect","params":{
            "minProtocol":4,"maxProtocol":4,
            "client":{"id":"gateway-client","version":env!("CARGO_PKG_VERSION"),"platform":"clawdeploy-dashboard","mode":"backend"},
            "role":"operator","scopes":["operator.read","operator.write"]}});
        let mut sent = false;
        while let Some(frame) = ws.next().await {
            let text = match frame? {
                Message::Text(text) => text,
                Message::Close(frame) => {
                    return Err(GatewayError::Closed(
                        frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                    ))
                }
                _ => continue,
            };
            let frame: Value = serde_json::from_str(text.as_str()).map_err(GatewayError::Frame)?;
            if !sent && frame["event"] == "connect.challenge" {
                ws.send(Message::text(connect.to_string())).await?;
                sent = true;
            } else if frame["id"] == "bridge-connect" {
                if frame["ok"] == true {
                    return Ok((ws, frame["payload"].clone()));
                }
                return Err(GatewayError::ConnectRefused(
                    frame["error"]["message"]
                        .as_str()
                        .unwrap_or("connect refused")
                        .to_string(),
                ));
            }
        }
        Err(GatewayError::ClosedInHandshake)
    })
    .await
    .map_err(|_| GatewayError::Timeout)?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the extractor answers for a request with these method and headers (no connection
    /// behind it, so a well-formed handshake ends at "cannot be upgraded").
    async fn refusal(
        method: Method,
        headers: &[(&str, &str)],
    ) -> (StatusCode, &'static str, String) {
        let mut request = axum::http::Request::builder()
            .method(method)
            .uri("/api/instances/me/chat");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let (mut parts, ()) = request.body(()).unwrap().into_parts();
        match ChatUpgrade::from_request_parts(&mut parts, &()).await {
            Ok(_) => panic!("accepted without a connection to upgrade"),
            Err(e) => (e.status, e.code, e.message),
        }
    }

    #[tokio::test]
    async fn malformed_handshakes_get_the_apis_json_error_saying_what_is_wrong() {
        let conn = ("connection", "Upgrade");
        let up = ("upgrade", "websocket");
        let key = ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
        let v13 = ("sec-websocket-version", "13");
        let v8 = ("sec-websocket-version", "8");
        let get = Method::GET;
        for (method, headers, says) in [
            (&Method::POST, vec![conn, up, key, v13], "connect with GET"),
            (&get, vec![key, v13], "connect with GET"),
            (&get, vec![conn, key, v13], "connect with GET"),
            (&get, vec![up, key, v13], "Connection: upgrade"),
            (&get, vec![conn, up, v13], "Sec-WebSocket-Key"),
            (&get, vec![conn, up, key, v8], "version 13"),
            (&get, vec![conn, up, key, v13], "cannot be upgraded"),
        ] {
            let (status, code, message) = refusal(method.clone(), &headers).await;
            assert_eq!(
                (status, code),
                (StatusCode::BAD_REQUEST, "WEBSOCKET_REQUIRED"),
                "{method} {headers:?}"
            );
            assert!(message.contains(says), "{method} {headers:?}: {message}");
        }
    }
}

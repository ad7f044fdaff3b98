//! WebSocket upgrades through the edge: every frame kind in both directions, many connections at
//! once, and route changes that leave open connections alone.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

#[tokio::test]
async fn text_binary_ping_and_close_codes_pass_through() {
    let upstream = WsUpstream::start().await;
    let edge = EdgeBuilder::new()
        .route("ws.example.org", upstream.addr)
        .start()
        .await;
    let mut ws = edge.websocket("ws.example.org", "/ws").await;

    ws.send(Message::text("héllo")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("héllo"));

    let binary: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    ws.send(Message::binary(binary.clone())).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::binary(binary));

    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    assert_eq!(
        next_message(&mut ws).await,
        Message::Pong(b"are you there".to_vec().into())
    );

    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Library(4001),
        reason: "bye now".into(),
    })))
    .await
    .unwrap();
    match next_message(&mut ws).await {
        Message::Close(Some(frame)) => {
            assert_eq!(frame.code, CloseCode::Library(4001));
            assert_eq!(frame.reason.as_str(), "bye now");
        }
        other => panic!("expected the echoed close frame, got {other:?}"),
    }
}

#[tokio::test]
async fn fragmented_messages_are_reassembled_end_to_end() {
    let upstream = WsUpstream::start().await;
    let edge = EdgeBuilder::new()
        .route("ws.example.org", upstream.addr)
        .start()
        .await;
    let mut ws = edge.websocket("ws.example.org", "/").await;

    let parts = ["frag", "men", "ted ✓"];
    for (i, part) in parts.iter().enumerate() {
        let opcode = if i == 0 {
            OpCode::Data(Data::Text)
        } else {
            OpCode::Data(Data::Continue)
        };
        let header = FrameHeader {
            is_final: i == parts.len() - 1,
            opcode,
            ..FrameHeader::default()
        };
        ws.send(Message::Frame(Frame::from_payload(
            header,
            part.as_bytes().to_vec().into(),
        )))
        .await
        .unwrap();
    }
    assert_eq!(next_message(&mut ws).await, Message::text("fragmented ✓"));
}

#[tokio::test]
async fn idle_websocket_outlives_the_http_read_timeout() {
    let upstream = WsUpstream::start().await;
    let edge = EdgeBuilder::new()
        .server("read_timeout_secs = 1")
        .server("ws_idle_timeout_secs = 60")
        .route("ws.example.org", upstream.addr)
        .start()
        .await;
    let mut ws = edge.websocket("ws.example.org", "/").await;
    // Silence longer than the plain-HTTP read timeout is the scenario itself, not synchronisation.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("still here"));
}

#[tokio::test]
async fn idle_websocket_is_closed_after_the_ws_idle_timeout() {
    let upstream = WsUpstream::start().await;
    let edge = EdgeBuilder::new()
        .server("ws_idle_timeout_secs = 1")
        .route("ws.example.org", upstream.addr)
        .start()
        .await;
    let mut ws = edge.websocket("ws.example.org", "/").await;
    let ended = tokio::time::timeout(PATIENCE, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the idle WebSocket was not closed");
}

#[tokio::test]
async fn a_thousand_concurrent_websockets_each_echo_their_own_messages() {
    let upstream = WsUpstream::start().await;
    let edge = EdgeBuilder::new()
        .route("ws.example.org", upstream.addr)
        .start()
        .await;
    let edge = std::sync::Arc::new(edge);
    let mut sockets = Vec::with_capacity(1_000);
    for _ in 0..1_000 {
        sockets.push(edge.websocket("ws.example.org", "/").await);
    }
    let tasks: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(i, mut ws)| {
            tokio::spawn(async move {
                for round in 0..3 {
                    let text = format!("socket {i} round {round}");
                    ws.send(Message::text(text.clone())).await.unwrap();
                    assert_eq!(next_message(&mut ws).await, Message::text(text));
                }
                ws
            })
        })
        .collect();
    let mut open = Vec::new();
    for task in tasks {
        match task.await {
            Ok(ws) => open.push(ws),
            Err(e) => panic!(
                "a socket failed ({e}); edge log:\n{}",
                tail(&edge.log_text(), 30)
            ),
        }
    }
    assert_eq!(open.len(), 1_000);
    assert_eq!(
        upstream
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        1_000
    );
}

#[tokio::test]
async fn route_changes_leave_other_open_websockets_untouched() {
    let upstream = WsUpstream::start().await;
    let other = HttpUpstream::start("other").await;
    let edge = EdgeBuilder::new()
        .route("ws.example.org", upstream.addr)
        .start()
        .await;
    let mut ws = edge.websocket("ws.example.org", "/").await;
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("before"));

    let body = format!(r#"{{"upstream":"{}"}}"#, other.addr);
    assert_eq!(
        edge.admin(
            "PUT",
            "/admin/routes/other.example.org",
            Some(ADMIN_TOKEN),
            Some(&body)
        )
        .await
        .status,
        201
    );
    assert_eq!(
        edge.get("other.example.org", "/").await.json()["upstream"],
        "other"
    );
    assert_eq!(
        edge.admin(
            "DELETE",
            "/admin/routes/other.example.org",
            Some(ADMIN_TOKEN),
            None
        )
        .await
        .status,
        204
    );
    assert_eq!(edge.get("other.example.org", "/").await.status, 404);

    ws.send(Message::text("after")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("after"));
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

//! Bodies of every framing and size pass through the edge byte for byte, and an upstream that
//! sends more than it announced cannot desynchronise a reused upstream connection. These guard
//! the buffer sizing of the vendored pingora-core (vendor/README.md).

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

/// `len` bytes of a pattern that shows shifted or missing bytes.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// A raw HTTP/1.1 upstream that frames each answer as its path says, keep-alive unless told:
/// `/cl/N` (Content-Length), `/chunked/N`, `/close/N` (no length, then close),
/// `/upload` (answers with the length and sum of the request body), and `/liar`
/// (announces 5 bytes, sends a forged second response right behind them).
async fn raw_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(serve_raw(tcp));
        }
    });
    addr
}

async fn serve_raw(mut tcp: TcpStream) {
    let mut pending = Vec::new();
    loop {
        let Some(head_end) = read_until_head_end(&mut tcp, &mut pending).await else {
            return;
        };
        let head = String::from_utf8_lossy(&pending[..head_end]).to_string();
        pending.drain(..head_end + 4);
        let path = head.split(' ').nth(1).unwrap_or("/").to_string();
        let number = |prefix: &str| path.strip_prefix(prefix).and_then(|n| n.parse().ok());
        let reply: Vec<u8> = if let Some(n) = number("/cl/") {
            let mut r = format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n").into_bytes();
            r.extend(pattern(n));
            r
        } else if let Some(n) = number("/chunked/") {
            let mut r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            for chunk in pattern(n).chunks(1000) {
                r.extend(format!("{:x}\r\n", chunk.len()).into_bytes());
                r.extend(chunk);
                r.extend(b"\r\n");
            }
            r.extend(b"0\r\n\r\n");
            r
        } else if let Some(n) = number("/close/") {
            let mut r = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_vec();
            r.extend(pattern(n));
            let _ = tcp.write_all(&r).await;
            return;
        } else if path == "/upload" {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            while pending.len() < length {
                let mut buf = [0u8; 65536];
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => pending.extend_from_slice(&buf[..n]),
                }
            }
            let body: Vec<u8> = pending.drain(..length).collect();
            let sum: u64 = body.iter().map(|&b| b as u64).sum();
            let answer = format!("{length} {sum} {}", body == pattern(length));
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{answer}",
                answer.len()
            )
            .into_bytes()
        } else if path == "/liar" {
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged".to_vec()
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nhonest".to_vec()
        };
        if tcp.write_all(&reply).await.is_err() {
            return;
        }
    }
}

async fn read_until_head_end(tcp: &mut TcpStream, pending: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(end);
        }
        let mut buf = [0u8; 8192];
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn bodies_of_every_framing_and_size_arrive_byte_for_byte() {
    let upstream = raw_upstream().await;
    let edge = EdgeBuilder::new()
        .route("bodies.example.org", upstream)
        .start()
        .await;
    // Sizes around the edge's buffer sizes: 1 KiB read slack, 64 KiB body buffer.
    for n in [
        0,
        1,
        20,
        1023,
        1024,
        1025,
        4096,
        65535,
        65536,
        65537,
        1 << 20,
    ] {
        for framing in ["cl", "chunked", "close"] {
            let resp = edge
                .get("bodies.example.org", &format!("/{framing}/{n}"))
                .await;
            assert_eq!(resp.status, 200, "{framing} {n}");
            assert_eq!(resp.body.len(), n, "{framing} {n}: length");
            assert!(resp.body == pattern(n), "{framing} {n}: bytes differ");
        }
    }
    for n in [1, 1025, 65537, 3 << 20] {
        let mut raw = format!(
            "POST /upload HTTP/1.1\r\nHost: bodies.example.org\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n"
        )
        .into_bytes();
        raw.extend(pattern(n));
        let resp = edge.send(&raw).await;
        let sum: u64 = pattern(n).iter().map(|&b| b as u64).sum();
        assert_eq!(
            resp.text(),
            format!("{n} {sum} true"),
            "upload of {n} bytes"
        );
    }
}

#[tokio::test]
async fn an_upstream_sending_more_than_it_announced_cannot_forge_the_next_response() {
    let upstream = raw_upstream().await;
    let edge = EdgeBuilder::new()
        .route("liar.example.org", upstream)
        .server("upstream_keepalive_pool_size = 8")
        .start()
        .await;
    let first = edge.get("liar.example.org", "/liar").await;
    assert_eq!(first.text(), "hello");
    // The bytes behind the announced body must not be taken as the answer to a later request
    // on a reused upstream connection.
    for _ in 0..5 {
        let next = edge.get("liar.example.org", "/honest").await;
        assert_eq!(next.text(), "honest");
    }
}

#[tokio::test]
async fn large_websocket_messages_cross_in_both_directions_intact() {
    let upstream = WsUpstream::start().await;
    let edge = EdgeBuilder::new()
        .route("ws.example.org", upstream.addr)
        .start()
        .await;
    let mut ws = edge.websocket("ws.example.org", "/").await;
    // Around the 1 KiB first read of an idle upgraded connection, and far beyond 64 KiB.
    for n in [1, 1000, 1024, 1025, 70_000, 1 << 20] {
        let sent = pattern(n);
        ws.send(Message::Binary(sent.clone().into()))
            .await
            .expect("send");
        match next_message(&mut ws).await {
            Message::Binary(got) => assert!(got.as_ref() == sent.as_slice(), "{n} bytes echoed"),
            other => panic!("expected the binary echo of {n} bytes, got {other:?}"),
        }
    }
    ws.close(None).await.expect("close");
    while let Some(Ok(_)) = ws.next().await {}
}

//! `benchtool`: the small programs the benchmark harness needs beside wrk.
//!
//! ```text
//! benchtool echo-server ADDR                          WebSocket echo upstream (one thread)
//! benchtool ws-idle ADDR HOST N HOLD_SECS             open N WebSockets, echo one message on each,
//!                                                     print a JSON line, hold them until stdin closes
//! benchtool ws-echo ADDR HOST CONNS SECS SIZE         CONNS clients in ping-pong, SIZE-byte messages
//! benchtool put-routes ADDR APP_HOST TOKEN DOMAIN COUNT CONNS UPSTREAM [SECS]
//!                                                     PUT /admin/routes/h<i>.DOMAIN for i in 0..COUNT
//!                                                     (or cycling for SECS seconds), keep-alive
//! ```
//! Every client prints one JSON object on stdout. Everything is single-threaded, like `wrk -t1`.
//! Only loopback addresses are meant to be used.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let cmd = args.first().map(String::as_str).unwrap_or("");
    let arg = |i: usize| -> String {
        args.get(i)
            .cloned()
            .unwrap_or_else(|| usage(&format!("missing argument {i}")))
    };
    let num = |i: usize| -> u64 {
        arg(i)
            .parse()
            .unwrap_or_else(|_| usage(&format!("argument {i} is not a number")))
    };
    match cmd {
        "echo-server" => rt.block_on(echo_server(arg(1))),
        "ws-idle" => rt.block_on(ws_idle(arg(1), arg(2), num(3) as usize, num(4))),
        "ws-echo" => rt.block_on(ws_echo(
            arg(1),
            arg(2),
            num(3) as usize,
            num(4),
            num(5) as usize,
        )),
        "put-routes" => rt.block_on(put_routes(
            arg(1),
            arg(2),
            arg(3),
            arg(4),
            num(5),
            num(6) as usize,
            arg(7),
            args.get(8).and_then(|s| s.parse().ok()),
        )),
        _ => usage("unknown command"),
    }
}

fn usage(why: &str) -> ! {
    eprintln!("benchtool: {why}\nsee the doc comment of benches/benchtool/src/main.rs");
    std::process::exit(2)
}

async fn echo_server(addr: String) {
    let listener = TcpListener::bind(&addr).await.expect("bind");
    eprintln!("echo server on {addr}");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            while let Some(Ok(msg)) = ws.next().await {
                match msg {
                    Message::Text(_) | Message::Binary(_) => {
                        if ws.send(msg).await.is_err() {
                            return;
                        }
                    }
                    Message::Close(_) => return,
                    _ => {}
                }
            }
        });
    }
}

async fn connect(addr: &str, host: &str) -> Result<Ws, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let mut req = format!("ws://{addr}/ws")
        .into_client_request()
        .map_err(|e| e.to_string())?;
    req.headers_mut().insert(
        "host",
        HeaderValue::from_str(host).map_err(|e| e.to_string())?,
    );
    let (ws, _) = tokio_tungstenite::client_async(req, stream)
        .await
        .map_err(|e| e.to_string())?;
    Ok(ws)
}

async fn echo_once(ws: &mut Ws, payload: &[u8]) -> Result<(), String> {
    ws.send(Message::binary(payload.to_vec()))
        .await
        .map_err(|e| e.to_string())?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(_))) | Some(Ok(Message::Text(_))) => return Ok(()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("closed".into()),
        }
    }
}

async fn ws_idle(addr: String, host: String, n: usize, hold_secs: u64) {
    let started = Instant::now();
    let mut open: Vec<Ws> = Vec::with_capacity(n);
    let mut failed = 0usize;
    let mut first_error = String::new();
    // Open in batches so the listen backlog never overflows.
    let batch = 100;
    let mut i = 0;
    while i < n {
        let count = batch.min(n - i);
        let mut tasks = Vec::with_capacity(count);
        for _ in 0..count {
            let (addr, host) = (addr.clone(), host.clone());
            tasks.push(tokio::spawn(async move {
                let mut ws = connect(&addr, &host).await?;
                echo_once(&mut ws, b"hello").await?;
                Ok::<Ws, String>(ws)
            }));
        }
        for t in tasks {
            match t.await {
                Ok(Ok(ws)) => open.push(ws),
                Ok(Err(e)) => {
                    failed += 1;
                    if first_error.is_empty() {
                        first_error = e;
                    }
                }
                Err(e) => {
                    failed += 1;
                    first_error = e.to_string();
                }
            }
        }
        i += count;
        if failed > 0 && failed >= n / 20 {
            break; // the limit is reached: stop asking
        }
    }
    println!(
        "{{\"open\":{},\"failed\":{},\"open_secs\":{:.3},\"first_error\":{:?}}}",
        open.len(),
        failed,
        started.elapsed().as_secs_f64(),
        first_error
    );
    // Hold until stdin closes (the harness measured memory) or HOLD_SECS pass.
    let mut stdin = tokio::io::stdin();
    let mut sink = Vec::new();
    let _ =
        tokio::time::timeout(Duration::from_secs(hold_secs), stdin.read_to_end(&mut sink)).await;
    for mut ws in open {
        let _ = ws.close(None).await;
    }
}

async fn ws_echo(addr: String, host: String, conns: usize, secs: u64, size: usize) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (addr, host) = (addr.clone(), host.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat: Vec<u32> = Vec::with_capacity(1 << 16);
            let mut errors = 0u64;
            let payload = vec![b'x'; size];
            let mut ws = match connect(&addr, &host).await {
                Ok(ws) => ws,
                Err(_) => return (lat, 1),
            };
            while Instant::now() < deadline {
                let t0 = Instant::now();
                if echo_once(&mut ws, &payload).await.is_err() {
                    errors += 1;
                    break;
                }
                lat.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
            }
            let _ = ws.close(None).await;
            (lat, errors)
        }));
    }
    let started = Instant::now();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((lat, e)) = t.await {
            all.extend(lat);
            errors += e;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| -> u32 {
        if all.is_empty() {
            return 0;
        }
        all[((all.len() as f64 * p) as usize).min(all.len() - 1)]
    };
    println!(
        "{{\"messages\":{},\"secs\":{:.3},\"rate\":{:.1},\"p50_us\":{},\"p99_us\":{},\"p999_us\":{},\"errors\":{}}}",
        all.len(),
        secs,
        all.len() as f64 / secs,
        pct(0.50),
        pct(0.99),
        pct(0.999),
        errors
    );
}

#[allow(clippy::too_many_arguments)]
async fn put_routes(
    addr: String,
    app_host: String,
    token: String,
    domain: String,
    count: u64,
    conns: usize,
    upstream: String,
    secs: Option<u64>,
) {
    let started = Instant::now();
    let deadline = secs.map(|s| started + Duration::from_secs(s));
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (addr, app_host, token, domain, upstream) = (
            addr.clone(),
            app_host.clone(),
            token.clone(),
            domain.clone(),
            upstream.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut bad, mut lat) = (0u64, 0u64, Vec::new());
            let mut stream = match TcpStream::connect(&addr).await {
                Ok(s) => BufReader::new(s),
                Err(_) => return (ok, 1, lat),
            };
            let _ = stream.get_ref().set_nodelay(true);
            let body = format!("{{\"upstream\":\"{upstream}\"}}");
            let mut i = c as u64;
            loop {
                if let Some(d) = deadline {
                    if Instant::now() >= d {
                        break;
                    }
                } else if i >= count {
                    break;
                }
                let host = format!("h{}.{domain}", i % count);
                let req = format!(
                    "PUT /admin/routes/{host} HTTP/1.1\r\nHost: {app_host}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let t0 = Instant::now();
                if stream.get_mut().write_all(req.as_bytes()).await.is_err() {
                    bad += 1;
                    break;
                }
                match read_response(&mut stream).await {
                    Some(200) | Some(201) => ok += 1,
                    Some(_) => bad += 1,
                    None => {
                        bad += 1;
                        break;
                    }
                }
                lat.push(t0.elapsed().as_micros() as u32);
                i += conns as u64;
            }
            (ok, bad, lat)
        }));
    }
    let (mut ok, mut bad, mut lat) = (0, 0, Vec::new());
    for t in tasks {
        if let Ok((o, b, l)) = t.await {
            ok += o;
            bad += b;
            lat.extend(l);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{{\"ok\":{ok},\"failed\":{bad},\"secs\":{secs:.3},\"rate\":{:.1},\"p50_us\":{},\"p99_us\":{}}}",
        ok as f64 / secs,
        pct(0.5),
        pct(0.99)
    );
}

/// Reads one HTTP/1.1 response with a Content-Length body; returns its status.
async fn read_response(stream: &mut BufReader<TcpStream>) -> Option<u16> {
    let mut line = String::new();
    stream.read_line(&mut line).await.ok()?;
    let status: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
    let mut length = 0usize;
    loop {
        line.clear();
        if stream.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.ok()?;
    Some(status)
}

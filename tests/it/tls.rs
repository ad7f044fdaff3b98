//! HTTPS at the edge (issue #6) in local-CA mode: SNI selection (exact, wildcard, fallback),
//! ALPN, hot swap on renewal with a WebSocket opened before it left open, redirect and HSTS.
//! ACME against Pebble and BIND is in `acme.rs`.

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::SinkExt;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

pub type TlsWebSocket = tokio_tungstenite::WebSocketStream<TlsStream<TcpStream>>;

/// A client config trusting only the PEM roots given.
pub fn client_config(roots_pem: &str, alpn: &[&str]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(roots_pem.as_bytes()) {
        roots.add(cert.expect("PEM root")).expect("add root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

/// Accepts any certificate: to see what the edge presents for an SNI it should not know.
#[derive(Debug)]
struct AcceptAnything;

impl rustls::client::danger::ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

pub fn insecure_config() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnything))
        .with_no_client_auth();
    Arc::new(config)
}

/// A TLS connection to `addr` with `sni`.
pub async fn connect(
    addr: SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<TlsStream<TcpStream>, std::io::Error> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_string()).expect("server name");
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// The leaf certificate the server presented: (SAN DNS names, serial hex, issuer CN text).
pub fn peer_leaf(stream: &TlsStream<TcpStream>) -> (Vec<String>, String, String) {
    let (_, conn) = stream.get_ref();
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("a peer certificate")
        .clone();
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).expect("x509");
    let names = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    (
        names,
        cert.raw_serial_as_string(),
        cert.issuer().to_string(),
    )
}

/// One HTTP/1.1 request over TLS (Connection: close).
pub async fn https_get(
    addr: SocketAddr,
    sni: &str,
    host: &str,
    path: &str,
    config: Arc<rustls::ClientConfig>,
) -> Response {
    let mut stream = connect(addr, sni, config)
        .await
        .unwrap_or_else(|e| panic!("TLS handshake for {sni} failed: {e}"));
    stream
        .write_all(get_request(host, path).as_bytes())
        .await
        .expect("write request");
    let mut bytes = Vec::new();
    let _ = stream.read_to_end(&mut bytes).await;
    parse_response(&bytes).expect("an HTTP response")
}

/// Follows a link from a mail: over HTTPS when it is an https link (the certificate is not what
/// such a test checks), else through [`Edge::follow`].
pub async fn follow_link(edge: &Edge, link: &str) -> Response {
    let Some(rest) = link.strip_prefix("https://") else {
        return edge.follow(link).await;
    };
    let (host_port, path) = rest.split_at(rest.find('/').expect("path in link"));
    let host = host_port.split(':').next().unwrap_or(host_port);
    https_get(edge.tls_addr, host, host, path, insecure_config()).await
}

/// The local CA of an edge in local-CA mode.
pub fn local_ca(edge: &Edge) -> String {
    std::fs::read_to_string(edge.data_dir().join("local-ca/ca.pem")).expect("local CA file")
}

/// Waits until the edge's certificate for `sni` verifies against `roots`.
pub async fn wait_for_certificate(edge: &Edge, sni: &str, roots: &str) -> TlsStream<TcpStream> {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        match connect(edge.tls_addr, sni, client_config(roots, &["http/1.1"])).await {
            Ok(stream) => return stream,
            Err(e) => assert!(
                std::time::Instant::now() < deadline,
                "no valid certificate for {sni} in time: {e}\n{}",
                edge.log_text()
            ),
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn local_ca_serves_apex_wildcard_and_a_fallback_that_names_no_tenant() {
    let upstream = HttpUpstream::start("shop").await;
    let edge = EdgeBuilder::new()
        .route("status.example.org", upstream.addr)
        .start()
        .await;
    let ca = local_ca(&edge);
    // The base domain's certificate is signed at start: apex and any one-label subdomain.
    let stream = wait_for_certificate(&edge, APP_DOMAIN, &ca).await;
    let (names, _, issuer) = peer_leaf(&stream);
    assert!(names.contains(&format!("*.{BASE_DOMAIN}")), "{names:?}");
    assert!(names.contains(&BASE_DOMAIN.to_string()), "{names:?}");
    assert!(
        issuer.contains("ClawDeploy local development CA"),
        "{issuer}"
    );
    for sni in [BASE_DOMAIN, "alice.clawdeploy.test", "x-1.clawdeploy.test"] {
        connect(edge.tls_addr, sni, client_config(&ca, &["http/1.1"]))
            .await
            .unwrap_or_else(|e| panic!("{sni}: {e}"));
    }
    // Two labels down is not covered by a one-label wildcard.
    assert!(connect(
        edge.tls_addr,
        "a.b.clawdeploy.test",
        client_config(&ca, &[])
    )
    .await
    .is_err());

    // HTTP over TLS reaches the control plane, which sees https as the scheme.
    let resp = https_get(
        edge.tls_addr,
        APP_DOMAIN,
        APP_DOMAIN,
        "/healthz",
        client_config(&ca, &["http/1.1"]),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());

    // ALPN: h2 when offered, http/1.1 otherwise.
    let h2 = connect(
        edge.tls_addr,
        APP_DOMAIN,
        client_config(&ca, &["h2", "http/1.1"]),
    )
    .await
    .expect("h2 handshake");
    assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));

    // An unknown name gets the fallback certificate (naming nothing real) and a 404, never a
    // certificate of another host served here.
    let stranger = connect(edge.tls_addr, "status.example.org", insecure_config())
        .await
        .expect("fallback handshake");
    let (names, _, _) = peer_leaf(&stranger);
    assert_eq!(names, vec!["unknown-host.invalid".to_string()]);
    assert!(
        connect(edge.tls_addr, "status.example.org", client_config(&ca, &[]))
            .await
            .is_err(),
        "the fallback must not verify for a real name"
    );
    let resp = https_get(
        edge.tls_addr,
        "nobody.example.net",
        "nobody.example.net",
        "/",
        insecure_config(),
    )
    .await;
    assert_eq!(resp.status, 404);
    assert_eq!(resp.error_code(), "UNKNOWN_HOST");
    let (names, _, _) = peer_leaf(
        &connect(edge.tls_addr, "nobody.example.net", insecure_config())
            .await
            .expect("handshake"),
    );
    assert!(!names.iter().any(|n| n.contains(BASE_DOMAIN)), "{names:?}");
}

#[tokio::test]
async fn a_renewal_swaps_the_certificate_and_an_open_websocket_stays_open() {
    let upstream = WsUpstream::start().await;
    let edge = EdgeBuilder::new()
        .route("chat.example.org", upstream.addr)
        .start()
        .await;
    let ca = local_ca(&edge);
    let before = peer_leaf(&wait_for_certificate(&edge, APP_DOMAIN, &ca).await).1;

    // A WebSocket over TLS, opened before the renewal (the operator route's certificate is the
    // fallback; the socket itself is what matters here).
    let stream = connect(edge.tls_addr, "chat.example.org", insecure_config())
        .await
        .expect("handshake");
    let (mut ws, response) = tokio_tungstenite::client_async("wss://chat.example.org/ws", stream)
        .await
        .expect("WebSocket over TLS");
    assert_eq!(response.status(), 101);
    ws.send(Message::Text("before".into())).await.expect("send");
    assert_eq!(
        next_tls_message(&mut ws).await,
        Message::Text("before".into())
    );

    edge.renew_base_certificate().await;

    // New handshakes get the new certificate at once, with no restart.
    let after = peer_leaf(&wait_for_certificate(&edge, APP_DOMAIN, &ca).await).1;
    assert_ne!(before, after, "the renewal must serve a new certificate");
    // The socket opened before still carries messages both ways.
    ws.send(Message::Text("after".into()))
        .await
        .expect("send after renewal");
    assert_eq!(
        next_tls_message(&mut ws).await,
        Message::Text("after".into())
    );

    let list = edge
        .admin("GET", "/admin/certificates", Some(ADMIN_TOKEN), None)
        .await
        .json();
    let cert = &list["certificates"][0];
    assert_eq!(cert["name"], BASE_DOMAIN);
    assert_eq!(cert["issuer"], "local-ca");
    assert!(cert.get("keyPem").is_none() && !list.to_string().contains("PRIVATE KEY"));
}

pub async fn next_tls_message(ws: &mut TlsWebSocket) -> Message {
    use futures_util::StreamExt;
    tokio::time::timeout(PATIENCE, ws.next())
        .await
        .expect("a WebSocket message in time")
        .expect("the WebSocket is open")
        .expect("a valid WebSocket message")
}

#[tokio::test]
async fn production_redirects_plain_http_to_https_and_sends_hsts() {
    let edge = EdgeBuilder::new()
        .section("tls", "redirect_http = true")
        .section("tls", "hsts_max_age_secs = 31536000")
        .start()
        .await;
    let resp = edge.get(APP_DOMAIN, "/api/openapi.json?x=1").await;
    assert_eq!(resp.status, 308);
    assert_eq!(
        resp.header("location"),
        Some(
            format!(
                "https://{APP_DOMAIN}:{}/api/openapi.json?x=1",
                edge.tls_addr.port()
            )
            .as_str()
        )
    );
    // Health checks and ACME challenges are answered on plain HTTP.
    assert_eq!(edge.get(APP_DOMAIN, "/healthz").await.status, 200);
    let challenge = edge
        .get(
            "shop.example.org",
            "/.well-known/acme-challenge/unknown-token",
        )
        .await;
    assert_eq!(challenge.status, 404, "an unknown token is not answered");
    let ca = local_ca(&edge);
    wait_for_certificate(&edge, APP_DOMAIN, &ca).await;
    let resp = https_get(
        edge.tls_addr,
        APP_DOMAIN,
        APP_DOMAIN,
        "/healthz",
        client_config(&ca, &["http/1.1"]),
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("strict-transport-security"),
        Some("max-age=31536000")
    );
    // The embedded default neither redirects nor sends HSTS.
    let plain = EdgeBuilder::new().start().await;
    let resp = plain.get(APP_DOMAIN, "/healthz").await;
    assert_eq!(resp.status, 200);
    assert!(resp.header("strict-transport-security").is_none());
}

#[tokio::test]
async fn a_second_node_serves_the_stored_certificate_and_picks_up_a_renewal() {
    let Some(db) = Db::postgres().await else {
        return;
    };
    let first = EdgeBuilder::new().db(&db).start().await;
    let ca = local_ca(&first);
    let issued = peer_leaf(&wait_for_certificate(&first, APP_DOMAIN, &ca).await).1;
    // The second node loads the certificate from the store (its key sealed there) instead of
    // ordering its own: the same serial, chaining to the first node's CA.
    let second = EdgeBuilder::new().db(&db).start().await;
    let served = peer_leaf(&wait_for_certificate(&second, APP_DOMAIN, &ca).await).1;
    assert_eq!(issued, served);
    // A renewal on the first reaches the second through the change broadcast.
    first.renew_base_certificate().await;
    let renewed = peer_leaf(&wait_for_certificate(&first, APP_DOMAIN, &ca).await).1;
    assert_ne!(renewed, issued);
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let now = peer_leaf(&wait_for_certificate(&second, APP_DOMAIN, &ca).await).1;
        if now == renewed {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the second node kept {now}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Links in mails (and the API's URLs) point where users really are: https on the HTTPS port
/// when the edge serves HTTPS for real (ACME certificates), http on the plain listener for the
/// embedded development default (a local CA browsers do not trust).
#[tokio::test]
async fn mail_links_use_https_when_the_edge_serves_https_for_real() {
    // ACME mode with a CA that is not there: nothing is ordered, the links are what matters.
    let real = EdgeBuilder::new()
        .section("tls", "mode = \"acme\"")
        .section("acme", "directory_url = \"https://127.0.0.1:9/directory\"")
        .section("acme", "wildcard = false")
        .start()
        .await;
    let (token, _, _) = real
        .register("https@example.com", "correct horse battery staple 9")
        .await;
    let link = find_link(
        real.last_mail("https@example.com").await["body"]
            .as_str()
            .unwrap(),
    );
    let origin = format!("https://{APP_DOMAIN}:{}/", real.tls_addr.port());
    assert!(link.starts_with(&origin), "{link}");
    // The link works over HTTPS.
    assert_eq!(follow_link(&real, &link).await.status, 200);
    let me = real.api("GET", "/api/account", Some(&token), None).await;
    assert_eq!(me.status, 200, "{}", me.text());
    assert_eq!(me.json()["user"]["emailVerified"], true, "{}", me.text());

    let dev = EdgeBuilder::new().start().await;
    dev.register("http@example.com", "correct horse battery staple 9")
        .await;
    let link = find_link(
        dev.last_mail("http@example.com").await["body"]
            .as_str()
            .unwrap(),
    );
    assert!(
        link.starts_with(&format!("http://{APP_DOMAIN}:{}/", dev.addr.port())),
        "{link}"
    );
}

/// `curl --cacert <local CA>` (OpenSSL's hostname check, as strict as Chromium's about wildcards)
/// against `https://<host>/healthz` on the edge's HTTPS port: the exit code and HTTP status.
async fn curl_verifying(edge: &Edge, host: &str, ca_path: &std::path::Path) -> (i32, String) {
    let port = edge.tls_addr.port();
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
        ])
        .arg("--cacert")
        .arg(ca_path)
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
        .arg(format!("https://{host}:{port}/healthz"))
        .output()
        .await
        .expect("curl (scripts/start-pebble.sh installs it)");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    )
}

/// With the embedded default's `base_domain = "localhost"`, HTTPS on the dashboard host and on an
/// instance host verifies with only the local CA trusted, in clients that refuse a wildcard
/// directly under a special-use name (`*.localhost`): curl (OpenSSL) and rustls. Each instance
/// host gets a certificate naming exactly it, made at its first handshake; a subdomain with no
/// instance gets nothing from the CA.
#[tokio::test]
async fn local_ca_certificates_verify_for_the_dashboard_and_instance_hosts_under_localhost() {
    let edge = EdgeBuilder::new()
        .env("CLAWDEPLOY_SERVER__BASE_DOMAIN", "localhost")
        .start()
        .await;
    let app = "app.localhost";
    let call = |path: &str, token: Option<&str>, body: serde_json::Value| {
        let body = body.to_string();
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        format!(
            "POST {path} HTTP/1.1\r\nHost: {app}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let registered = edge
        .send(
            call(
                "/api/auth/register",
                None,
                serde_json::json!({"email": "tls@example.com", "password": "securePassword123", "name": "T"}),
            )
            .as_bytes(),
        )
        .await;
    assert_eq!(registered.status, 201, "{}", registered.text());
    let token = registered.json()["token"].as_str().unwrap().to_string();
    let created = edge
        .send(
            call(
                "/api/instances",
                Some(&token),
                serde_json::json!({"subdomain": "alice"}),
            )
            .as_bytes(),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text());

    let ca = local_ca(&edge);
    let ca_path = edge.data_dir().join("local-ca/ca.pem");
    wait_for_certificate(&edge, app, &ca).await;
    for host in [app, "alice.localhost"] {
        let (code, out) = curl_verifying(&edge, host, &ca_path).await;
        assert_eq!(code, 0, "curl refused the certificate of {host}: {out}");
        let stream = connect(edge.tls_addr, host, client_config(&ca, &["http/1.1"]))
            .await
            .unwrap_or_else(|e| panic!("rustls refused the certificate of {host}: {e}"));
        let (names, _, issuer) = peer_leaf(&stream);
        assert!(names.contains(&host.to_string()), "{host}: {names:?}");
        assert!(
            issuer.contains("ClawDeploy local development CA"),
            "{issuer}"
        );
    }
    let (names, _, _) = peer_leaf(
        &connect(edge.tls_addr, "alice.localhost", insecure_config())
            .await
            .unwrap(),
    );
    assert_eq!(names, vec!["alice.localhost".to_string()]);
    // No instance, no certificate of its own: the CA signs nothing for a name not served.
    let (code, out) = curl_verifying(&edge, "nobody.localhost", &ca_path).await;
    assert_ne!(code, 0, "nobody.localhost verified: {out}");
    let (names, _, _) = peer_leaf(
        &connect(edge.tls_addr, "nobody.localhost", insecure_config())
            .await
            .unwrap(),
    );
    assert!(
        !names.contains(&"nobody.localhost".to_string()),
        "{names:?}"
    );
}

/// What a client does to its own connection is not the server's error: plain HTTP sent to the TLS
/// port, an HTTP/2 connection that never sends its preface and a request header cut off are logged
/// at DEBUG (Pingora prints them at ERROR), and the edge goes on serving.
#[tokio::test]
async fn a_clients_broken_handshake_is_not_logged_as_an_error() {
    let edge = EdgeBuilder::new()
        .env(
            "RUST_LOG",
            "info,pingora_core::services::listening=debug,pingora_core::apps=debug,pingora_proxy=debug",
        )
        .start()
        .await;
    let ca = local_ca(&edge);
    drop(wait_for_certificate(&edge, APP_DOMAIN, &ca).await);

    // Plain HTTP to the TLS port.
    let mut plain = TcpStream::connect(edge.tls_addr).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .unwrap();
    let _ = plain.read_to_end(&mut Vec::new()).await;
    // HTTP/2 negotiated, then no preface.
    let mut h2 = connect(edge.tls_addr, APP_DOMAIN, client_config(&ca, &["h2"]))
        .await
        .unwrap();
    h2.write_all(b"this is not an HTTP/2 preface\r\n\r\n")
        .await
        .unwrap();
    let _ = h2.read_to_end(&mut Vec::new()).await;
    // A request header cut off mid-line.
    let mut cut = TcpStream::connect(edge.addr).await.unwrap();
    cut.write_all(b"GET /healthz HTTP/1.1\r\nHost: app.clawd")
        .await
        .unwrap();
    cut.shutdown().await.unwrap();
    let _ = cut.read_to_end(&mut Vec::new()).await;

    let deadline = std::time::Instant::now() + PATIENCE;
    let lowered = [
        "Downstream handshake error",
        "H2 handshake error",
        "Fail to proxy",
    ];
    while !lowered.iter().all(|m| edge.log_text().contains(m)) {
        assert!(
            std::time::Instant::now() < deadline,
            "not all three were logged: {}",
            edge.log_text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let log = edge.log_text();
    for line in log
        .lines()
        .filter(|l| lowered.iter().any(|m| l.contains(m)))
    {
        assert!(line.contains("DEBUG"), "{line}");
    }
    assert!(!log.contains("ERROR"), "{log}");
    let resp = https_get(
        edge.tls_addr,
        APP_DOMAIN,
        APP_DOMAIN,
        "/healthz",
        client_config(&ca, &["http/1.1"]),
    )
    .await;
    assert_eq!(resp.status, 200);
}

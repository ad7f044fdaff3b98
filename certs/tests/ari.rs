//! The ARI path (RFC 9773) against a recorded CA: Debian's Pebble 2.4 has no `renewalInfo`
//! endpoint, so the directory and the renewalInfo answer here are served from recorded JSON (the
//! response is RFC 9773 §4.2's example) by an in-process HTTP client. The fallback (two thirds of
//! the lifetime) is what runs against Pebble in the integration tests.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use instant_acme::{Account, BodyWrapper, BytesResponse, HttpClient};

use clawdeploy_certs::acme::{certificate_id, AcmeClient};
use clawdeploy_certs::local_ca::LocalCa;
use clawdeploy_certs::renewal::{in_window, two_thirds};

const DIRECTORY: &str = r#"{
  "newNonce": "https://ca.test/acme/new-nonce",
  "newAccount": "https://ca.test/acme/new-acct",
  "newOrder": "https://ca.test/acme/new-order",
  "revokeCert": "https://ca.test/acme/revoke-cert",
  "keyChange": "https://ca.test/acme/key-change",
  "renewalInfo": "https://ca.test/acme/renewal-info"
}"#;

/// RFC 9773 §4.2's example response.
const RENEWAL_INFO: &str = r#"{
  "suggestedWindow": {
    "start": "2025-01-02T04:00:00Z",
    "end": "2025-01-03T04:00:00Z"
  },
  "explanationURL": "https://acme.example.com/docs/ari"
}"#;

/// Answers the directory and renewalInfo GETs; records the paths asked for.
struct RecordedCa {
    seen: Arc<Mutex<Vec<String>>>,
    with_ari: bool,
}

impl HttpClient for RecordedCa {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let path = req.uri().path().to_string();
        self.seen.lock().unwrap().push(path.clone());
        let with_ari = self.with_ari;
        Box::pin(async move {
            let (status, body, retry_after) = if path == "/dir" {
                let dir = if with_ari {
                    DIRECTORY.to_string()
                } else {
                    DIRECTORY.replace(
                        ",\n  \"renewalInfo\": \"https://ca.test/acme/renewal-info\"",
                        "",
                    )
                };
                (200, dir, None)
            } else if path.starts_with("/acme/renewal-info/") {
                (200, RENEWAL_INFO.to_string(), Some("21600"))
            } else {
                (404, "{}".to_string(), None)
            };
            let mut builder = http::Response::builder()
                .status(status)
                .header("content-type", "application/json");
            if let Some(ra) = retry_after {
                builder = builder.header("retry-after", ra);
            }
            let rsp = builder.body(Full::new(Bytes::from(body))).unwrap();
            Ok(BytesResponse::from(rsp))
        })
    }
}

async fn account(with_ari: bool) -> (AcmeClient, Arc<Mutex<Vec<String>>>) {
    let (_, pkcs8) = instant_acme::Key::generate_pkcs8().unwrap();
    let credentials = serde_json::json!({
        "id": "https://ca.test/acme/acct/1",
        "key_pkcs8": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pkcs8.secret_pkcs8_der()),
        "directory": "https://ca.test/dir",
    });
    let seen = Arc::new(Mutex::new(Vec::new()));
    let http = RecordedCa {
        seen: seen.clone(),
        with_ari,
    };
    let account = Account::builder_with_http(Box::new(http))
        .from_credentials(serde_json::from_value(credentials).unwrap())
        .await
        .unwrap();
    (
        AcmeClient::from_account(account, "https://ca.test/dir"),
        seen,
    )
}

#[tokio::test]
async fn ari_window_is_read_for_the_certificate_and_renewal_lands_inside_it() {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::load_or_create(dir.path()).unwrap();
    let (chain, _key) = ca.issue(&["shop.example.com".to_string()]).unwrap();
    let (client, seen) = account(true).await;

    let (start, end) = client
        .renewal_window(&chain)
        .await
        .unwrap()
        .expect("the CA offers ARI");
    assert_eq!(start, 1_735_790_400_000); // 2025-01-02T04:00:00Z
    assert_eq!(end, 1_735_876_800_000); // 2025-01-03T04:00:00Z
                                        // The request names the certificate by AKI keyIdentifier and serial (RFC 9773 §4.1).
    let id = certificate_id(&chain)
        .unwrap()
        .expect("the leaf has an AKI");
    let asked = seen.lock().unwrap().clone();
    assert!(
        asked.contains(&format!("/acme/renewal-info/{id}")),
        "{asked:?} (expected {id})"
    );
    assert!(id.to_string().contains('.'));
    for fraction in [0.0, 0.25, 0.999, 1.0] {
        let at = in_window(start, end, fraction);
        assert!((start..=end).contains(&at));
    }
}

#[tokio::test]
async fn without_ari_the_fallback_is_two_thirds_of_the_lifetime() {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::load_or_create(dir.path()).unwrap();
    let (chain, _) = ca.issue(&["shop.example.com".to_string()]).unwrap();
    let (client, _) = account(false).await;
    assert_eq!(client.renewal_window(&chain).await.unwrap(), None);
    let info = clawdeploy_certs::pem::leaf_info(&chain).unwrap();
    let at = two_thirds(info.not_before_ms, info.not_after_ms);
    let lifetime = info.not_after_ms - info.not_before_ms;
    assert_eq!(at - info.not_before_ms, lifetime * 2 / 3);
}

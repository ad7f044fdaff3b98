//! The Cloudflare DNS provider against a local fake (Cloudflare's API cannot be reached from the
//! tests). The fake implements the documented endpoints the provider uses, with Cloudflare's
//! envelope (`success`, `errors`, `messages`, `result`) and bearer-token auth:
//! `POST /zones/{zone_id}/dns_records`, `GET /zones/{zone_id}/dns_records?type=&name=`,
//! `DELETE /zones/{zone_id}/dns_records/{id}`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde_json::{json, Value};

use clawdeploy_certs::cloudflare::Cloudflare;
use clawdeploy_certs::dns::DnsProvider;

const TOKEN: &str = "cf-test-token";
const ZONE: &str = "023e105f4ecef8ad9ca31a8372d0c353";

#[derive(Clone, Default)]
struct Fake {
    records: Arc<Mutex<Vec<Value>>>,
    next: Arc<Mutex<u64>>,
}

fn envelope(result: Value) -> Json<Value> {
    Json(json!({ "success": true, "errors": [], "messages": [], "result": result }))
}

fn refused(status: StatusCode, code: u32, message: &str) -> (StatusCode, Json<Value>) {
    (
        status,
        Json(
            json!({ "success": false, "errors": [{ "code": code, "message": message }], "messages": [], "result": null }),
        ),
    )
}

fn authorized(headers: &HeaderMap, zone: &str) -> Result<(), (StatusCode, Json<Value>)> {
    if headers.get("authorization").and_then(|v| v.to_str().ok())
        != Some(&format!("Bearer {TOKEN}"))
    {
        return Err(refused(
            StatusCode::FORBIDDEN,
            10000,
            "Authentication error",
        ));
    }
    if zone != ZONE {
        return Err(refused(
            StatusCode::NOT_FOUND,
            7003,
            "Could not route to /zones/..., perhaps your object identifier is invalid?",
        ));
    }
    Ok(())
}

async fn create(
    State(fake): State<Fake>,
    Path(zone): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Result<Json<Value>, (StatusCode, Json<Value>)> {
    authorized(&headers, &zone)?;
    if body["type"] != "TXT" || !body["name"].is_string() || !body["content"].is_string() {
        return Err(refused(
            StatusCode::BAD_REQUEST,
            9000,
            "DNS record type, name and content are required",
        ));
    }
    let mut next = fake.next.lock().unwrap();
    *next += 1;
    let record = json!({
        "id": format!("rec{next}"), "type": "TXT", "name": body["name"], "content": body["content"], "ttl": body["ttl"],
    });
    fake.records.lock().unwrap().push(record.clone());
    Ok(envelope(record))
}

async fn list(
    State(fake): State<Fake>,
    Path(zone): Path<String>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, (StatusCode, Json<Value>)> {
    authorized(&headers, &zone)?;
    let records: Vec<Value> = fake
        .records
        .lock()
        .unwrap()
        .iter()
        .filter(|r| q.get("type").is_none_or(|t| r["type"] == t.as_str()))
        .filter(|r| q.get("name").is_none_or(|n| r["name"] == n.as_str()))
        .cloned()
        .collect();
    Ok(envelope(Value::Array(records)))
}

async fn remove(
    State(fake): State<Fake>,
    Path((zone, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, (StatusCode, Json<Value>)> {
    authorized(&headers, &zone)?;
    let mut records = fake.records.lock().unwrap();
    let before = records.len();
    records.retain(|r| r["id"] != id.as_str());
    if records.len() == before {
        return Err(refused(
            StatusCode::NOT_FOUND,
            81044,
            "Record does not exist.",
        ));
    }
    Ok(envelope(json!({ "id": id })))
}

async fn start_fake() -> (String, Fake) {
    let fake = Fake::default();
    let app = Router::new()
        .route(
            "/client/v4/zones/{zone}/dns_records",
            get(list).post(create),
        )
        .route("/client/v4/zones/{zone}/dns_records/{id}", delete(remove))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/client/v4"), fake)
}

#[tokio::test]
async fn txt_records_are_added_and_removed_through_the_api() {
    let (url, fake) = start_fake().await;
    let cf = Cloudflare::new(&url, TOKEN, ZONE).unwrap();
    let name = "_acme-challenge.example.com";
    // The wildcard and the apex share one name: both values live at once.
    cf.add_txt(name, "value-apex").await.unwrap();
    cf.add_txt(name, "value-wildcard").await.unwrap();
    let contents = |fake: &Fake| -> Vec<String> {
        fake.records
            .lock()
            .unwrap()
            .iter()
            .map(|r| r["content"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(contents(&fake), vec!["value-apex", "value-wildcard"]);
    cf.remove_txt(name, "value-apex").await.unwrap();
    assert_eq!(contents(&fake), vec!["value-wildcard"]);
    cf.remove_txt(name, "value-wildcard").await.unwrap();
    assert!(contents(&fake).is_empty());
}

#[tokio::test]
async fn a_refusal_names_what_cloudflare_said() {
    let (url, _) = start_fake().await;
    let wrong = Cloudflare::new(&url, "wrong-token", ZONE).unwrap();
    let err = wrong
        .add_txt("_acme-challenge.example.com", "v")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("403") && err.contains("Authentication error"),
        "{err}"
    );
    let other_zone = Cloudflare::new(&url, TOKEN, "nope").unwrap();
    let err = other_zone
        .add_txt("_acme-challenge.example.com", "v")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("404") && err.contains("7003"), "{err}");
}

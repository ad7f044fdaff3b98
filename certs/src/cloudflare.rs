//! Cloudflare's DNS API as a DNS-01 provider: `POST /zones/{zone}/dns_records` to add a TXT
//! record, `GET /zones/{zone}/dns_records?type=TXT&name=…` and `DELETE
//! /zones/{zone}/dns_records/{id}` to remove it, with `Authorization: Bearer <token>`.

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use serde_json::{json, Value};

use crate::dns::DnsProvider;
use crate::Error;

/// Cloudflare's DNS API for one zone, as a [`DnsProvider`].
pub struct Cloudflare {
    api_url: String,
    token: String,
    zone_id: String,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Cloudflare {
    /// A client of the API at `api_url` (`dns.cloudflare_api_url`, a trailing `/` ignored) with an
    /// API `token` allowed to edit DNS in zone `zone_id`; fails only if the platform's TLS roots
    /// cannot be loaded.
    pub fn new(api_url: &str, token: &str, zone_id: &str) -> Result<Self, Error> {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .try_with_platform_verifier()
            .map_err(|e| Error::Dns(format!("TLS setup for the Cloudflare API: {e}")))?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            api_url: api_url.trim_end_matches('/').to_string(),
            token: token.to_string(),
            zone_id: zone_id.to_string(),
            client: Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector),
        })
    }

    async fn call(
        &self,
        method: http::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Error> {
        let uri = format!("{}/zones/{}{path}", self.api_url, self.zone_id);
        let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        let request = http::Request::builder()
            .method(method.clone())
            .uri(&uri)
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(Full::new(body))
            .map_err(|e| Error::Dns(format!("Cloudflare request: {e}")))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| Error::Dns(format!("Cloudflare API unreachable: {e}")))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| Error::Dns(format!("Cloudflare API: {e}")))?
            .to_bytes();
        let json: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if !status.is_success() || json["success"] != Value::Bool(true) {
            let errors = json["errors"].to_string();
            return Err(Error::Dns(format!(
                "Cloudflare refused {method} {path} ({status}): {errors}"
            )));
        }
        Ok(json)
    }
}

#[async_trait]
impl DnsProvider for Cloudflare {
    async fn add_txt(&self, name: &str, value: &str) -> Result<(), Error> {
        self.call(
            http::Method::POST,
            "/dns_records",
            Some(json!({ "type": "TXT", "name": name, "content": value, "ttl": 60 })),
        )
        .await
        .map(|_| ())
    }

    async fn remove_txt(&self, name: &str, value: &str) -> Result<(), Error> {
        let list = self
            .call(
                http::Method::GET,
                &format!("/dns_records?type=TXT&name={name}"),
                None,
            )
            .await?;
        let ids: Vec<String> = list["result"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["content"].as_str().map(|c| c.trim_matches('"')) == Some(value))
            .filter_map(|r| r["id"].as_str().map(str::to_string))
            .collect();
        for id in ids {
            self.call(http::Method::DELETE, &format!("/dns_records/{id}"), None)
                .await?;
        }
        Ok(())
    }
}

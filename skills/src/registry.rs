//! The platform's ClawHub-compatible registry: what OpenClaw's own installer talks to when an
//! instance's `CLAWHUB_URL` points here (served beside the LLM meter, on the address instances
//! reach and the egress rules open).
//!
//! The endpoints are the ones OpenClaw 2026.9.6's `skills.install {source:"clawhub"}` calls, in
//! this order (observed against a logging registry): `GET /api/v1/skills/{slug}/install` (an
//! archive descriptor), `POST /api/v1/skills/-/security-verdicts`, `GET /api/v1/download?slug=&
//! version=` (a zip, its SHA-256 in `x-clawhub-sha256`), `GET /api/v1/skills/{slug}/verify`;
//! plus `GET /api/v1/skills/{slug}` (detail) and `/.well-known/clawhub.json` (discovery).
//!
//! It serves curated skills (the operator's, trusted: verdict `pass`) and upstream skills the
//! operator allowed, each fetched once through [`Registry::prepare`]: the upstream's own verdict
//! must be `pass`, the archive is checked ([`crate::archive::check`]) and cached; anything else
//! is refused and logged. Upstream connections go only to public addresses (or
//! `skills.upstream_allow_private`), checked on the connected address as the LLM meter's are.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use clawdeploy_config::SkillsConfig;
use clawdeploy_llm_egress::guarded_connect::{EgressPolicy, GuardedConnector};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::archive::{self, Archive};
use crate::catalogue::{valid_slug, Catalogue, Origin, Skill};

/// Largest JSON answer read from the upstream.
const MAX_JSON_BYTES: usize = 1024 * 1024;

type HttpsClient = Client<hyper_rustls::HttpsConnector<GuardedConnector>, Full<Bytes>>;

/// Why a registry skill cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Neither curated nor allowed upstream.
    #[error("no skill {0:?} in the registry")]
    NotFound(String),
    /// The upstream did not answer, failed, or took longer than `skills.upstream_timeout_secs`.
    #[error("the skill registry is unavailable: {0}")]
    Unavailable(String),
    /// The upstream's security verdict is not `pass`; says what it was.
    #[error("{slug} {version} was refused by its security verdict: {verdict}")]
    Verdict {
        /// The skill.
        slug: String,
        /// The version.
        version: String,
        /// The decision and reasons given.
        verdict: String,
    },
    /// The archive failed its checks.
    #[error("{slug}'s archive was refused: {error}")]
    Archive {
        /// The skill.
        slug: String,
        /// Why.
        error: archive::ArchiveError,
    },
}

/// A fetched, checked registry skill.
#[derive(Debug, Clone)]
struct Prepared {
    version: String,
    archive: Archive,
}

/// The registry: the shared catalogue, the upstream client, the cache of checked archives.
pub struct Registry {
    catalogue: Arc<RwLock<Catalogue>>,
    config: SkillsConfig,
    client: HttpsClient,
    cache: RwLock<HashMap<String, Prepared>>,
    /// One upstream fetch at a time: 50 instances installing one skill cause one download.
    fetching: tokio::sync::Mutex<()>,
}

impl Registry {
    /// A registry over `catalogue` (shared with the control API, which lists it). Upstream
    pub fn new(catalogue: Arc<RwLock<Catalogue>>, config: SkillsConfig) -> Self {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(GuardedConnector::new(EgressPolicy {
                allowed: config.upstream_private_nets(),
                // The instance network is private: refused like every private range.
                instance_side: None,
            }));
        Self {
            catalogue,
            client: Client::builder(TokioExecutor::new()).build(connector),
            config,
            cache: RwLock::new(HashMap::new()),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    /// The HTTP routes, for the LLM meter's listener.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/.well-known/clawhub.json", get(discovery))
            .route("/api/v1/skills/-/security-verdicts", post(verdicts))
            .route("/api/v1/skills/{slug}", get(detail))
            .route("/api/v1/skills/{slug}/install", get(install))
            .route("/api/v1/skills/{slug}/verify", get(verify))
            .route("/api/v1/download", get(download))
            .with_state(self)
    }

    /// Makes a registry skill ready to serve (an upstream one fetched, its verdict and archive
    /// checked, cached) and returns its version. The install API calls this before asking the
    /// instance to install, so a failure is answered to the user, not lost in the instance.
    pub async fn prepare(&self, slug: &str) -> Result<String, RegistryError> {
        if let Some(version) = self.ready_version(slug) {
            return Ok(version);
        }
        if !valid_slug(slug) || !self.config.upstream_allows(slug) {
            return Err(RegistryError::NotFound(slug.to_string()));
        }
        let _one = self.fetching.lock().await;
        if let Some(version) = self.ready_version(slug) {
            return Ok(version);
        }
        let timeout = Duration::from_secs(self.config.upstream_timeout_secs);
        let prepared = tokio::time::timeout(timeout, self.fetch_upstream(slug))
            .await
            .map_err(|_| {
                RegistryError::Unavailable(format!("no answer within {}s", timeout.as_secs()))
            })??;
        let version = prepared.version.clone();
        if let Ok(mut cache) = self.cache.write() {
            cache.insert(slug.to_string(), prepared);
        }
        Ok(version)
    }

    /// Fetches the metadata of every explicitly allowed upstream slug into the catalogue, so the
    /// catalogue lists them (failures are logged; those skills appear once they answer).
    pub async fn refresh_upstream(&self) {
        let slugs: Vec<String> = self
            .config
            .upstream_allow
            .iter()
            .filter(|s| s.as_str() != "*" && self.config.upstream_allows(s))
            .cloned()
            .collect();
        for slug in slugs {
            let url = format!("{}/api/v1/skills/{slug}", self.base());
            let timeout = Duration::from_secs(self.config.upstream_timeout_secs);
            match tokio::time::timeout(timeout, self.get_json(&url)).await {
                Ok(Ok(detail)) => {
                    let skill = upstream_skill(&slug, &detail);
                    if let Ok(mut c) = self.catalogue.write() {
                        c.insert_upstream(skill);
                    }
                }
                Ok(Err(e)) => tracing::warn!(%slug, "upstream skill not listed: {e}"),
                Err(_) => tracing::warn!(%slug, "upstream skill not listed: no answer in time"),
            }
        }
    }

    fn base(&self) -> &str {
        self.config.upstream_url.trim_end_matches('/')
    }

    fn ready_version(&self, slug: &str) -> Option<String> {
        if let Some(p) = self.cache.read().ok()?.get(slug) {
            return Some(p.version.clone());
        }
        let catalogue = self.catalogue.read().ok()?;
        let skill = catalogue.get(slug)?;
        (skill.origin == Origin::Curated).then(|| skill.version.clone())
    }

    fn archive(&self, slug: &str, version: &str) -> Option<Archive> {
        if let Some(p) = self
            .cache
            .read()
            .ok()?
            .get(slug)
            .filter(|p| p.version == version)
        {
            return Some(p.archive.clone());
        }
        let catalogue = self.catalogue.read().ok()?;
        let skill = catalogue
            .get(slug)
            .filter(|s| s.origin == Origin::Curated && s.version == version)?;
        catalogue.archive(&skill.id).cloned()
    }

    async fn fetch_upstream(&self, slug: &str) -> Result<Prepared, RegistryError> {
        let base = self.base().to_string();
        let descriptor = self
            .get_json(&format!("{base}/api/v1/skills/{slug}/install"))
            .await?;
        let version = descriptor["archive"]["version"]
            .as_str()
            .ok_or_else(|| {
                RegistryError::Unavailable(
                    "the upstream's install answer has no archive version".into(),
                )
            })?
            .to_string();
        let verdicts = self
            .post_json(
                &format!("{base}/api/v1/skills/-/security-verdicts"),
                &json!({"items": [{"slug": slug, "version": version}]}),
            )
            .await?;
        let verdict = verdicts["items"].as_array().and_then(|items| {
            items
                .iter()
                .find(|i| i["slug"] == slug && i["version"] == version.as_str())
        });
        let passed = verdict.is_some_and(|v| v["ok"] == true && v["decision"] == "pass");
        if !passed {
            let said = verdict.map_or_else(
                || "none given".to_string(),
                |v| format!("{} {}", v["decision"].as_str().unwrap_or("?"), v["reasons"]),
            );
            tracing::warn!(%slug, %version, verdict = %said, "upstream skill refused by its security verdict");
            return Err(RegistryError::Verdict {
                slug: slug.to_string(),
                version,
                verdict: said,
            });
        }
        // The download URL is the upstream's; relative ones resolve against its base, and it
        // must stay on the upstream's origin.
        let download = descriptor["archive"]["downloadUrl"]
            .as_str()
            .unwrap_or_default();
        let base_url = url::Url::parse(&format!("{base}/"))
            .map_err(|e| RegistryError::Unavailable(format!("upstream URL: {e}")))?;
        let url = base_url
            .join(download)
            .ok()
            .filter(|u| u.origin() == base_url.origin())
            .ok_or_else(|| {
                RegistryError::Unavailable(format!("download URL {download:?} leaves the upstream"))
            })?;
        let (headers, bytes) = self
            .get(url.as_str(), self.config.max_archive_bytes as usize)
            .await
            .map_err(|e| match e {
                Fetch::TooBig => RegistryError::Archive {
                    slug: slug.to_string(),
                    error: archive::ArchiveError::TooBig(self.config.max_archive_bytes),
                },
                Fetch::Failed(m) => RegistryError::Unavailable(m),
            })?;
        let announced = headers
            .get("x-clawhub-sha256")
            .and_then(|v| v.to_str().ok());
        let archive =
            archive::check(bytes, self.config.max_archive_bytes, announced).map_err(|error| {
                tracing::warn!(%slug, %version, "upstream skill archive refused: {error}");
                RegistryError::Archive {
                    slug: slug.to_string(),
                    error,
                }
            })?;
        tracing::info!(%slug, %version, bytes = archive.bytes.len(), "upstream skill fetched and checked");
        Ok(Prepared { version, archive })
    }

    async fn get_json(&self, url: &str) -> Result<Value, RegistryError> {
        let (_, body) = self
            .get(url, MAX_JSON_BYTES)
            .await
            .map_err(Fetch::into_unavailable)?;
        serde_json::from_slice(&body)
            .map_err(|e| RegistryError::Unavailable(format!("{url}: not JSON: {e}")))
    }

    async fn post_json(&self, url: &str, body: &Value) -> Result<Value, RegistryError> {
        let request = http::Request::post(url)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| RegistryError::Unavailable(e.to_string()))?;
        let (_, body) = self
            .send(request, MAX_JSON_BYTES)
            .await
            .map_err(Fetch::into_unavailable)?;
        serde_json::from_slice(&body)
            .map_err(|e| RegistryError::Unavailable(format!("{url}: not JSON: {e}")))
    }

    async fn get(&self, url: &str, limit: usize) -> Result<(HeaderMap, Bytes), Fetch> {
        let request = http::Request::get(url)
            .body(Full::new(Bytes::new()))
            .map_err(|e| Fetch::Failed(e.to_string()))?;
        self.send(request, limit).await
    }

    async fn send(
        &self,
        request: http::Request<Full<Bytes>>,
        limit: usize,
    ) -> Result<(HeaderMap, Bytes), Fetch> {
        let url = request.uri().to_string();
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| Fetch::Failed(format!("{url}: {}", error_chain(&e))))?;
        let status = response.status();
        if !status.is_success() {
            return Err(Fetch::Failed(format!("{url} answered {status}")));
        }
        let (parts, body) = response.into_parts();
        let bytes = Limited::new(body, limit)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    Fetch::TooBig
                } else {
                    Fetch::Failed(format!("{url}: {e}"))
                }
            })?
            .to_bytes();
        Ok((parts.headers, bytes))
    }
}

enum Fetch {
    TooBig,
    Failed(String),
}

impl Fetch {
    fn into_unavailable(self) -> RegistryError {
        match self {
            Fetch::TooBig => {
                RegistryError::Unavailable("the upstream's answer is too large".into())
            }
            Fetch::Failed(m) => RegistryError::Unavailable(m),
        }
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn upstream_skill(slug: &str, detail: &Value) -> Skill {
    let text = |v: &Value| v.as_str().map(str::to_string);
    Skill {
        id: slug.to_string(),
        name: text(&detail["skill"]["displayName"]).unwrap_or_else(|| slug.to_string()),
        description: text(&detail["skill"]["summary"]).unwrap_or_default(),
        emoji: None,
        category: "community".into(),
        tags: Vec::new(),
        homepage: None,
        version: text(&detail["latestVersion"]["version"]).unwrap_or_default(),
        origin: Origin::Upstream,
        min_tier: Default::default(),
        fields: Vec::new(),
    }
}

fn not_found(slug: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": format!("no skill {slug:?} in this registry")})),
    )
        .into_response()
}

fn refused(e: &RegistryError) -> Response {
    let status = match e {
        RegistryError::NotFound(_) => StatusCode::NOT_FOUND,
        RegistryError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        RegistryError::Verdict { .. } | RegistryError::Archive { .. } => StatusCode::FORBIDDEN,
    };
    (status, Json(json!({"error": e.to_string()}))).into_response()
}

fn count(endpoint: &'static str, outcome: &'static str) {
    metrics::counter!("clawdeploy_skill_registry_requests_total", "endpoint" => endpoint, "outcome" => outcome).increment(1);
}

async fn discovery(headers: HeaderMap) -> Json<Value> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let base = format!("http://{host}");
    Json(json!({"apiBase": base, "registry": base}))
}

async fn detail(State(r): State<Arc<Registry>>, Path(slug): Path<String>) -> Response {
    match r.prepare(&slug).await {
        Ok(version) => {
            count("detail", "ok");
            let name = r.catalogue.read().ok().and_then(|c| {
                c.get(&slug)
                    .map(|s| (s.name.clone(), s.description.clone()))
            });
            let (name, summary) = name.unwrap_or_else(|| (slug.clone(), String::new()));
            Json(json!({
                "skill": {"slug": slug, "displayName": name, "summary": summary},
                "latestVersion": {"version": version},
                "owner": {"handle": "clawdeploy"},
            }))
            .into_response()
        }
        Err(e) => {
            count("detail", "refused");
            refused(&e)
        }
    }
}

async fn install(State(r): State<Arc<Registry>>, Path(slug): Path<String>) -> Response {
    match r.prepare(&slug).await {
        Ok(version) => {
            count("install", "ok");
            Json(json!({
                "ok": true,
                "slug": slug,
                "installKind": "archive",
                "archive": {"version": version, "downloadUrl": format!("/api/v1/download?slug={slug}&version={version}")},
            }))
            .into_response()
        }
        Err(e) => {
            count("install", "refused");
            refused(&e)
        }
    }
}

#[derive(Deserialize)]
struct VerdictsRequest {
    items: Vec<VerdictItem>,
}

#[derive(Deserialize)]
struct VerdictItem {
    slug: String,
    version: String,
}

/// Only what this registry serves gets `pass`: curated skills and upstream skills whose own
/// verdict passed (refused ones never reach the cache).
async fn verdicts(
    State(r): State<Arc<Registry>>,
    Json(request): Json<VerdictsRequest>,
) -> Json<Value> {
    count("verdicts", "ok");
    let items: Vec<Value> = request
        .items
        .iter()
        .map(|i| {
            let ok = r.archive(&i.slug, &i.version).is_some();
            json!({
                "requestedSlug": i.slug, "requestedVersion": i.version,
                "slug": i.slug, "version": i.version, "ok": ok,
                "decision": if ok { "pass" } else { "blocked" },
                "reasons": if ok { json!([]) } else { json!(["not served by this registry"]) },
                "security": {"status": if ok { "clean" } else { "unknown" }, "passed": ok},
                // OpenClaw's installer requires both fields.
                "overview": if ok { "Served by this platform's registry after its checks." } else { "Not served by this registry." },
                "securityAuditUrl": format!("/api/v1/skills/{}/verify?version={}", i.slug, i.version),
            })
        })
        .collect();
    Json(json!({"items": items}))
}

#[derive(Deserialize)]
struct VersionQuery {
    version: Option<String>,
}

async fn verify(
    State(r): State<Arc<Registry>>,
    Path(slug): Path<String>,
    Query(q): Query<VersionQuery>,
) -> Response {
    let version = q
        .version
        .or_else(|| r.ready_version(&slug))
        .unwrap_or_default();
    if r.archive(&slug, &version).is_none() {
        count("verify", "refused");
        return not_found(&slug);
    }
    count("verify", "ok");
    Json(json!({
        "schema": "clawhub.skill.verify.v1", "ok": true, "decision": "pass", "reasons": [],
        "slug": slug, "version": version, "security": {"status": "clean", "passed": true},
    }))
    .into_response()
}

#[derive(Deserialize)]
struct DownloadQuery {
    slug: String,
    version: Option<String>,
}

async fn download(State(r): State<Arc<Registry>>, Query(q): Query<DownloadQuery>) -> Response {
    let version = q
        .version
        .or_else(|| r.ready_version(&q.slug))
        .unwrap_or_default();
    let Some(archive) = r.archive(&q.slug, &version) else {
        count("download", "refused");
        return not_found(&q.slug);
    };
    count("download", "ok");
    (
        [
            (header::CONTENT_TYPE, "application/zip".to_string()),
            (
                header::HeaderName::from_static("x-clawhub-sha256"),
                archive.sha256.clone(),
            ),
        ],
        archive.bytes,
    )
        .into_response()
}

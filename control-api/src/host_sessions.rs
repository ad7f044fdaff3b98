//! Handing a dashboard login over to an instance host (the flow is described in
//! `clawdeploy_proxy::browser_session`):
//!
//! - `GET /api/session/handoff?next=<instance URL>` (or `POST` with `{"next": ...}` for a page that
//!   navigates itself): for the logged-in owner of that instance, a one-time code bound to its host,
//!   valid `sessions.code_ttl_secs`, and a redirect to `<instance host>/_clawdeploy/session?code=...`;
//! - `GET /_clawdeploy/session?code=...`, reached only through the edge on the instance host (the
//!   edge names the host in `X-Forwarded-Host`): redeems the code once and answers with the host's
//!   own session cookie and a redirect to the `next` path.

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use clawdeploy_config::normalize_host;
use clawdeploy_proxy::browser_session::{cookie_name, SESSION_PATH};
use clawdeploy_proxy::{Resolution, RouteKind};
use clawdeploy_store::time::now_ms;
use clawdeploy_store::{secrets, HostCode, Redemption, TokenHash};

use crate::auth::{log_event, AuthUser, Client};
use crate::crypto::{sign_host_token, HostClaims};
use crate::error::ApiError;
use crate::{ApiState, Reply};

/// The query of `GET /api/session/handoff`: `next`, the instance URL to sign in to.
#[derive(Deserialize, IntoParams)]
pub struct HandoffQuery {
    next: Option<String>,
}

/// The body of `POST /api/session/handoff`: `next`, the instance URL to sign in to.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HandoffBody {
    next: String,
}

/// A checked `next` target: an instance host of the caller and a path on it.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    scheme: &'static str,
    /// `host[:port]`, rebuilt from the parsed parts (nothing else of the input is echoed).
    authority: String,
    host: String,
    path: String,
}

fn bad_next(message: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "INVALID_NEXT",
        format!("next: {message}; send the absolute URL of one of your instances, such as https://alice.example.net/"),
    )
}

/// Parses `next` as `http(s)://host[:port][/path][?query]` (a fragment is dropped).
fn parse_next(next: &str) -> Result<Target, ApiError> {
    if next.len() > 2048 || !next.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad_next(
            "the URL is too long or contains spaces, control or non-ASCII characters (percent-encode them)",
        ));
    }
    let (scheme, rest) = if let Some(rest) = next.strip_prefix("https://") {
        ("https", rest)
    } else if let Some(rest) = next.strip_prefix("http://") {
        ("http", rest)
    } else {
        return Err(bad_next("the URL must start with https:// or http://"));
    };
    let rest = rest.split('#').next().unwrap_or_default();
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    if authority.contains('@') || path.contains('\\') {
        return Err(bad_next(
            "the URL must not carry credentials or backslashes",
        ));
    }
    let host = normalize_host(authority).ok_or_else(|| bad_next("the host is not valid"))?;
    let port = match authority.rsplit_once(':') {
        Some((_, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            let port: u16 = p.parse().map_err(|_| bad_next("the port is not valid"))?;
            format!(":{port}")
        }
        Some(_) => return Err(bad_next("the port is not valid")),
        None => String::new(),
    };
    // A path that starts with `//` would read as another host in a relative redirect.
    let path = format!("/{}", path.trim_start_matches('/'));
    Ok(Target {
        scheme,
        authority: format!("{host}{port}"),
        host,
        path,
    })
}

/// The code is a credential: a dashboard reached over HTTPS never sends it over plain HTTP.
fn refuse_downgrade(headers: &HeaderMap, target: &Target) -> Result<(), ApiError> {
    let dashboard_https = headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes() == b"https");
    if dashboard_https && target.scheme != "https" {
        return Err(bad_next(
            "the dashboard is on HTTPS, so the instance URL must be https:// too",
        ));
    }
    Ok(())
}

/// Issues a code for `next` if it is one of the caller's instances; the redirect URL.
async fn issue(
    state: &ApiState,
    auth: &AuthUser,
    headers: &HeaderMap,
    next: Option<&str>,
) -> Result<String, ApiError> {
    let next = next.ok_or_else(|| bad_next("missing"))?;
    let target = parse_next(next)?;
    refuse_downgrade(headers, &target)?;
    let owned = match state.routes.resolve(&target.host) {
        Resolution::Route(route) => {
            route.kind == RouteKind::Instance
                && route.owner_id.as_deref() == Some(auth.user.id.to_string().as_str())
        }
        _ => false,
    };
    if !owned {
        // The same answer for someone else's instance and for no instance at all.
        return Err(bad_next(&format!(
            "{} is not one of your instances",
            target.host
        )));
    }
    let (code, hash) = secrets::new_token().map_err(|e| ApiError::internal("code", e))?;
    let ttl_ms = state.ctx.config.sessions.code_ttl_secs as i64 * 1000;
    state
        .store
        .create_host_code(
            &hash,
            &HostCode {
                user_id: auth.user.id,
                session_id: auth.session.id,
                host: target.host.clone(),
                next_path: target.path.clone(),
                expires_at: now_ms() + ttl_ms,
            },
        )
        .await?;
    Ok(format!(
        "{}://{}{SESSION_PATH}?code={code}",
        target.scheme, target.authority
    ))
}

fn no_store_redirect(status: StatusCode, location: &str) -> Result<Response, ApiError> {
    let location =
        HeaderValue::try_from(location).map_err(|e| ApiError::internal("redirect location", e))?;
    Ok((
        status,
        [
            (header::LOCATION, location),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            // The code is in the URL: never let it leak to another site.
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
        ],
    )
        .into_response())
}

/// `GET /api/session/handoff?next=<instance URL>`: a `303` to the instance host with a code.
pub async fn handoff_redirect(
    State(state): State<ApiState>,
    headers: HeaderMap,
    auth: AuthUser,
    query: Result<Query<HandoffQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let redirect = async {
        let Query(query) = query?;
        let location = issue(&state, &auth, &headers, query.next.as_deref()).await?;
        no_store_redirect(StatusCode::SEE_OTHER, &location)
    };
    redirect
        .await
        .unwrap_or_else(|e| crate::pages::error_for(&headers, e))
}

/// Where to navigate to hand the login over.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Handoff {
    /// The instance host's sign-in URL with the one-time code (the GET's `Location`).
    pub redirect: String,
    /// Seconds the code works.
    pub expires_in: u64,
}

/// `POST /api/session/handoff` `{"next": ...}`: the same, as JSON for a page that navigates itself.
pub async fn handoff_json(
    State(state): State<ApiState>,
    headers: HeaderMap,
    auth: AuthUser,
    body: Result<Json<HandoffBody>, axum::extract::rejection::JsonRejection>,
) -> Result<([(header::HeaderName, &'static str); 1], Reply<Handoff>), ApiError> {
    let Json(body) = body?;
    let location = issue(&state, &auth, &headers, Some(&body.next)).await?;
    let ttl = state.ctx.config.sessions.code_ttl_secs;
    Ok((
        [(header::CACHE_CONTROL, "no-store")],
        Reply(Handoff {
            redirect: location,
            expires_in: ttl,
        }),
    ))
}

/// The query of `GET /_clawdeploy/session`: `code`, the one-time code of the handoff.
#[derive(Deserialize, IntoParams)]
pub struct ExchangeQuery {
    code: Option<String>,
}

fn code_error(code: &'static str, what: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        code,
        format!("{what}; open the instance again from the dashboard to sign in."),
    )
}

/// `GET /_clawdeploy/session?code=...` on an instance host: the host's session cookie. A browser
/// whose link does not work (used by going back, expired, of an ended session, for an instance no
/// longer its own) is sent through the dashboard's login again, which signs it in afresh or
/// says on a page why it cannot; API clients get the JSON error.
pub async fn exchange(
    State(state): State<ApiState>,
    headers: HeaderMap,
    client: Client,
    query: Result<Query<ExchangeQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let result = exchange_code(&state, &headers, client, query).await;
    let browser = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    let raw_host = headers
        .get("x-forwarded-host")
        .and_then(|v| v.to_str().ok())
        .filter(|h| normalize_host(h).is_some());
    match (result, raw_host) {
        (Ok(response), _) => response,
        (Err(e), Some(raw_host)) if browser && e.status.is_client_error() => {
            tracing::debug!(
                code = e.code,
                "an instance sign-in link did not work; through the login again"
            );
            let https = headers
                .get("x-forwarded-proto")
                .is_some_and(|v| v.as_bytes() == b"https");
            let login = clawdeploy_proxy::browser_session::login_url(
                https,
                state.routes.app_domain(),
                raw_host,
                "/",
            );
            no_store_redirect(StatusCode::SEE_OTHER, &login).unwrap_or_else(|e| e.into_response())
        }
        (Err(e), _) => e.into_response(),
    }
}

async fn exchange_code(
    state: &ApiState,
    headers: &HeaderMap,
    client: Client,
    query: Result<Query<ExchangeQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let header_str = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    // Set by the edge from the request's Host; clients cannot set it (the edge overwrites it).
    let raw_host = header_str("x-forwarded-host")
        .unwrap_or_default()
        .to_string();
    let host = normalize_host(&raw_host).ok_or_else(|| {
        code_error(
            "INVALID_HOST",
            "This sign-in link was opened on an unknown host",
        )
    })?;
    let https = header_str("x-forwarded-proto") == Some("https");
    let code = query
        .code
        .filter(|c| !c.is_empty())
        .ok_or_else(|| code_error("MISSING_CODE", "The sign-in link has no code"))?;
    let claimed = match state.store.redeem_host_code(&TokenHash::of(&code)).await? {
        Redemption::Claimed(claimed) => claimed,
        Redemption::AlreadyUsed => {
            return Err(code_error(
                "CODE_USED",
                "This sign-in link was already used",
            ))
        }
        Redemption::Unknown => {
            return Err(code_error("INVALID_CODE", "This sign-in link is not valid"))
        }
    };
    if claimed.host != host {
        tracing::warn!(code_host = %claimed.host, host = %host, "a sign-in code was presented on another host");
        return Err(code_error(
            "CODE_WRONG_HOST",
            "This sign-in link is for another instance",
        ));
    }
    let now = now_ms();
    if claimed.expires_at <= now {
        return Err(code_error("CODE_EXPIRED", "This sign-in link has expired"));
    }
    let session = state
        .store
        .get_session(claimed.session_id)
        .await?
        .filter(|s| s.is_active(now) && s.user_id == claimed.user_id)
        .ok_or_else(|| {
            ApiError::unauthorized(
                "SESSION_REVOKED",
                "The dashboard session behind this sign-in link has ended; log in again.",
            )
        })?;
    let owner = claimed.user_id.to_string();
    let still_owned = matches!(state.routes.resolve(&host), Resolution::Route(route)
        if route.kind == RouteKind::Instance && route.owner_id.as_deref() == Some(owner.as_str()));
    if !still_owned {
        return Err(ApiError::forbidden(
            "FORBIDDEN",
            "This instance no longer belongs to the account that signed in.",
        ));
    }
    let iat = now / 1000;
    let exp = (iat + state.ctx.config.sessions.host_session_ttl_secs as i64)
        .min(session.expires_at / 1000);
    let token = sign_host_token(
        state.verifier.host_key(),
        &HostClaims {
            sub: claimed.user_id,
            sid: claimed.session_id,
            host: host.clone(),
            iat,
            exp,
        },
    );
    // Host-only (no Domain), never readable by scripts, not sent on cross-site subrequests.
    let mut cookie = format!(
        "{}={token}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}",
        cookie_name(https),
        (exp - iat).max(0)
    );
    if https {
        cookie.push_str("; Secure");
    }
    log_event(
        state,
        Some(claimed.user_id),
        "instance_sign_in",
        &client,
        Some(&host),
    )
    .await;
    let scheme = if https { "https" } else { "http" };
    let mut response = no_store_redirect(
        StatusCode::SEE_OTHER,
        &format!("{scheme}://{raw_host}{}", claimed.next_path),
    )?;
    let cookie =
        HeaderValue::try_from(cookie).map_err(|e| ApiError::internal("session cookie", e))?;
    response.headers_mut().insert(header::SET_COOKIE, cookie);
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_https_dashboard_never_sends_a_code_over_plain_http() {
        let mut https = HeaderMap::new();
        https.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let plain = parse_next("http://alice.example.net/").unwrap();
        let secure = parse_next("https://alice.example.net/").unwrap();
        assert!(refuse_downgrade(&https, &plain).is_err());
        assert!(refuse_downgrade(&https, &secure).is_ok());
        // A development dashboard on plain HTTP may hand over to plain-HTTP instance hosts.
        assert!(refuse_downgrade(&HeaderMap::new(), &plain).is_ok());
        assert!(parse_next("https://alice.example.net/caf\u{e9}").is_err());
    }

    #[test]
    fn next_targets_are_parsed_strictly() {
        let t = parse_next("http://Alice.localhost:8080/chat?x=1#frag").unwrap();
        assert_eq!(
            t,
            Target {
                scheme: "http",
                authority: "alice.localhost:8080".into(),
                host: "alice.localhost".into(),
                path: "/chat?x=1".into(),
            }
        );
        assert_eq!(parse_next("https://a.example.net").unwrap().path, "/");
        assert_eq!(parse_next("https://a.example.net?q").unwrap().path, "/?q");
        // `//evil.example` must stay a path on the instance host.
        assert_eq!(
            parse_next("https://a.example.net//evil.example/")
                .unwrap()
                .path,
            "/evil.example/"
        );
        for bad in [
            "javascript:alert(1)",
            "//a.example.net/",
            "ftp://a.example.net/",
            "https://user@a.example.net/",
            "https://a.example.net:99999/",
            "https://a.example.net:x/",
            "https://a.example.net/\\evil",
            "https://a.example.net/ x",
            "https://a.example.net/\r\nSet-Cookie: x=1",
            "https:///",
        ] {
            assert!(parse_next(bad).is_err(), "{bad}");
        }
    }
}

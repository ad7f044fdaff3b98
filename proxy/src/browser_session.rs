//! Browsers on instance hosts: who they are (a host-only session cookie, or a bearer token), where
//! they go without a session (the dashboard's login, with a `next` target), and what the edge keeps
//! apart between tenants (platform cookies never reach a container, a container's cookies for a
//! parent domain never reach the browser, WebSockets and cookie-authenticated writes only from the
//! instance's own origins).
//!
//! The flow, one mechanism for subdomains and custom domains:
//! 1. `GET https://alice.example.net/` without a session → `302` to
//!    `https://<app_domain>/login?next=<url-encoded https://alice.example.net/>`;
//! 2. after login, the dashboard calls `GET /api/session/handoff?next=...`, which issues a one-time
//!    code bound to that host and redirects to `https://alice.example.net/_clawdeploy/session?code=...`;
//! 3. the edge passes that one path to the control plane, which redeems the code and answers with
//!    the host's own cookie (`HttpOnly; SameSite=Lax; Path=/`, `Secure` and the `__Host-` name over
//!    HTTPS, never `Domain=`) and a redirect to the `next` path.

use cookie::Cookie;
use http::{header, HeaderValue, Method};
use pingora::http::{RequestHeader, ResponseHeader};

use crate::identity::{Identity, Rejection, TokenVerifier};
use crate::responses::EdgeError;
use crate::routes::{Resolution, Route, RouteTable};

/// The path on every instance host where a one-time code is exchanged for the host's cookie; the
/// edge sends it to the control plane, never to the instance.
pub const SESSION_PATH: &str = "/_clawdeploy/session";

/// The session cookie over HTTPS: `__Host-` makes browsers refuse it unless it is `Secure`,
/// `Path=/` and has no `Domain`, so no other host (not even a sibling tenant's script) can plant it.
pub const COOKIE_HTTPS: &str = "__Host-clawdeploy_session";
/// The session cookie over plain HTTP (development only: browsers refuse `__Host-` without TLS).
pub const COOKIE_HTTP: &str = "clawdeploy_session";

/// The session cookie's name for a request over TLS or not.
pub fn cookie_name(tls: bool) -> &'static str {
    if tls {
        COOKIE_HTTPS
    } else {
        COOKIE_HTTP
    }
}

/// The dashboard's session cookie over plain HTTP (development): the access token, HttpOnly,
/// host-only on the app domain. Set by the control API; listed here so that it is stripped even
/// where a browser would send it to an instance.
pub const DASHBOARD_COOKIE: &str = "cd_session";
/// The same cookie over HTTPS. Browsers accept a `__Host-` cookie only from its own host, with
/// `Secure`, `Path=/` and no `Domain`, so a tenant's page on a sibling subdomain of the app domain
/// cannot plant one (`document.cookie = "…; Domain=<parent>"`) to sign a user into its account.
pub const DASHBOARD_COOKIE_HTTPS: &str = "__Host-cd_session";

/// True for the platform's cookie names (`clawdeploy*` and the dashboard's `cd_session`, with or
/// without a `__Host-`/`__Secure-` prefix, any case): these never reach a container and a
/// container can never set them.
pub fn is_platform_cookie(name: &str) -> bool {
    let name = name.trim().to_ascii_lowercase();
    let bare = name
        .strip_prefix("__host-")
        .or_else(|| name.strip_prefix("__secure-"))
        .unwrap_or(&name);
    bare.starts_with("clawdeploy") || bare == DASHBOARD_COOKIE
}

/// Every cookie of a request's `Cookie` headers, parsed by the `cookie` crate (a pair it cannot
/// parse, such as one without `=`, is skipped). Shared with the control API's dashboard cookie.
pub fn request_cookies(headers: &http::HeaderMap) -> impl Iterator<Item = Cookie<'_>> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| Cookie::split_parse(v).filter_map(Result::ok))
}

/// The values of the session cookie (a sibling host can add same-named cookies over plain HTTP,
/// so every value is tried, not only the first).
pub fn session_cookies(req: &RequestHeader, tls: bool) -> impl Iterator<Item = &str> {
    let name = cookie_name(tls);
    request_cookies(&req.headers)
        .filter(move |c| c.name() == name)
        .filter_map(|c| c.value_raw())
        .map(|v| v.trim_matches('"'))
        .filter(|v| !v.is_empty())
}

/// Rewrites the `Cookie` header without platform cookies (the instance's own cookies stay).
pub fn strip_platform_cookies(req: &mut RequestHeader) {
    if req.headers.get(header::COOKIE).is_none() {
        return;
    }
    let kept: Vec<String> = request_cookies(&req.headers)
        .filter(|c| !is_platform_cookie(c.name()))
        .map(|c| format!("{}={}", c.name(), c.value()))
        .collect();
    req.remove_header(&header::COOKIE);
    if kept.is_empty() {
        return;
    }
    if let Ok(value) = HeaderValue::try_from(kept.join("; ")) {
        let _ = req.insert_header(header::COOKIE, value);
    }
}

/// Whether a container's `Set-Cookie` may reach the browser on `host`: not with a platform name,
/// and not for any domain but the host itself (a parent domain would reach every tenant). A
/// `Set-Cookie` the `cookie` crate cannot parse is refused; with several `Domain` attributes the
/// last counts, as in browsers (RFC 6265 §5.3).
pub fn set_cookie_allowed(set_cookie: &str, host: &str) -> bool {
    let Ok(cookie) = Cookie::parse(set_cookie) else {
        return false;
    };
    !is_platform_cookie(cookie.name())
        && cookie
            .domain()
            .is_none_or(|domain| domain.trim_start_matches('.').eq_ignore_ascii_case(host))
}

/// Drops the `Set-Cookie` headers of an instance response that [`set_cookie_allowed`] refuses;
/// how many were dropped.
pub fn filter_set_cookies(resp: &mut ResponseHeader, host: &str) -> usize {
    let values: Vec<HeaderValue> = resp
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .cloned()
        .collect();
    if values.is_empty() {
        return 0;
    }
    let allowed: Vec<HeaderValue> = values
        .iter()
        .filter(|v| v.to_str().is_ok_and(|s| set_cookie_allowed(s, host)))
        .cloned()
        .collect();
    let dropped = values.len() - allowed.len();
    if dropped > 0 {
        resp.remove_header(&header::SET_COOKIE);
        for value in allowed {
            let _ = resp.append_header(header::SET_COOKIE, value);
        }
    }
    dropped
}

/// Everything but RFC 3986's unreserved characters is escaped.
const NOT_UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes everything but RFC 3986 unreserved characters (for a value in a query or a
/// URL's label).
pub fn percent_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, NOT_UNRESERVED).to_string()
}

/// True for a top-level page load by a browser, which gets the login redirect rather than a 401.
pub fn is_navigation(req: &RequestHeader) -> bool {
    if req.method != Method::GET && req.method != Method::HEAD {
        return false;
    }
    let get = |name: &str| req.headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(mode) = get("sec-fetch-mode") {
        return mode.eq_ignore_ascii_case("navigate");
    }
    get("accept").is_some_and(|a| a.contains("text/html")) && get("upgrade").is_none()
}

/// How the request was authenticated on an instance host.
#[derive(Debug)]
pub struct Access {
    /// The user the credential belongs to (the instance's owner, once [`owner_only`] returns it).
    pub identity: Identity,
    /// By the host's session cookie (so cross-site writes need an origin check), not a bearer token.
    pub by_cookie: bool,
}

/// Why an instance host refused a request.
#[derive(Debug)]
pub enum Denied {
    /// Answer with this error: 401 with a reason, or 403 for another user's instance.
    Error(EdgeError),
    /// A browser without a session: send it to the dashboard's login.
    Login,
}

/// Instance hosts admit only their owner: a bearer token first (`bearer`, already checked by the
/// caller), else the host's session cookie. Without either, browsers are sent to log in and other
/// clients get a 401; another user gets 403.
pub fn owner_only(
    verifier: &dyn TokenVerifier,
    bearer: Option<Result<Identity, Rejection>>,
    req: &RequestHeader,
    route: &Route,
    host: &str,
    tls: bool,
) -> Result<Access, Denied> {
    let unauthorized = |rejection: Rejection| {
        Denied::Error(
            EdgeError::new(401, "UNAUTHORIZED", rejection.message())
                .header("www-authenticate", "Bearer"),
        )
    };
    let access = if let Some(verified) = bearer {
        Access {
            identity: verified.map_err(unauthorized)?,
            by_cookie: false,
        }
    } else {
        let mut last = Rejection::Missing;
        let mut found = None;
        for cookie in session_cookies(req, tls) {
            match verifier.verify_host_session(cookie, host) {
                Ok(identity) => {
                    found = Some(identity);
                    break;
                }
                Err(rejection) => last = rejection,
            }
        }
        match found {
            Some(identity) => Access {
                identity,
                by_cookie: true,
            },
            None if is_navigation(req) => return Err(Denied::Login),
            None => return Err(unauthorized(last)),
        }
    };
    if route.owner_id.as_deref() != Some(&*access.identity.user_id) {
        return Err(Denied::Error(EdgeError::new(
            403,
            "FORBIDDEN",
            "This instance belongs to another account.",
        )));
    }
    Ok(access)
}

/// The host of an `Origin` header (`None` when absent); `Err` for `null` or a malformed origin.
pub fn origin_host(req: &RequestHeader) -> Option<Result<String, ()>> {
    let origin = req.headers.get(header::ORIGIN)?;
    Some(origin.to_str().ok().and_then(parse_origin).ok_or(()))
}

/// The normalised host of an `http(s)://host[:port]` origin (`None` for `null` or anything else).
pub fn parse_origin(origin: &str) -> Option<String> {
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))?;
    clawdeploy_config::normalize_host(rest)
}

/// WebSocket upgrades and cookie-authenticated writes on an instance host only from the
/// instance's own origins (any host routed to the same instance). Requests without `Origin` are
/// not from a browser page and pass (a browser always sends it on WebSocket and cross-site writes).
pub fn check_origin(
    routes: &RouteTable,
    req: &RequestHeader,
    route: &Route,
    websocket: bool,
    by_cookie: bool,
) -> Result<(), EdgeError> {
    let state_changing = !matches!(
        req.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    );
    if !(websocket || (by_cookie && state_changing)) {
        return Ok(());
    }
    let refused = |what: &str| {
        EdgeError::new(
            403,
            "ORIGIN_NOT_ALLOWED",
            format!("{what} is only accepted from this instance's own pages; open it at its own address."),
        )
    };
    let what = if websocket {
        "A WebSocket connection"
    } else {
        "A change made with this instance's session cookie"
    };
    if !websocket
        && req
            .headers
            .get("sec-fetch-site")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"))
    {
        return Err(refused(what));
    }
    match origin_host(req) {
        None => Ok(()),
        Some(Err(())) => Err(refused(what)),
        Some(Ok(origin)) => match routes.resolve(&origin) {
            Resolution::Route(other)
                if other.instance_id.is_some() && other.instance_id == route.instance_id =>
            {
                Ok(())
            }
            _ => Err(refused(what)),
        },
    }
}

/// `<scheme>://<app_domain>[:port]/login?next=<url-encoded instance URL>`.
pub fn login_url(tls: bool, app_domain: &str, raw_host: &str, path_and_query: &str) -> String {
    let scheme = if tls { "https" } else { "http" };
    let port = raw_host
        .rsplit_once(':')
        .filter(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        .map_or(String::new(), |(_, p)| format!(":{p}"));
    let next = format!("{scheme}://{raw_host}{path_and_query}");
    format!(
        "{scheme}://{app_domain}{port}/login?next={}",
        percent_encode(&next)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoding_keeps_only_unreserved() {
        assert_eq!(
            percent_encode("http://a.b/c?d=e f~"),
            "http%3A%2F%2Fa.b%2Fc%3Fd%3De%20f~"
        );
    }

    #[test]
    fn origins_parse_to_normalised_hosts() {
        assert_eq!(
            parse_origin("http://App.Example.com:8080").as_deref(),
            Some("app.example.com")
        );
        assert_eq!(
            parse_origin("https://app.example.com").as_deref(),
            Some("app.example.com")
        );
        for bad in ["null", "ftp://a.example", "https://", "https://a b"] {
            assert_eq!(parse_origin(bad), None, "{bad}");
        }
    }

    #[test]
    fn platform_cookie_names() {
        for name in [
            "clawdeploy_session",
            "__Host-clawdeploy_session",
            "__Secure-ClawDeploy_x",
            " CLAWDEPLOY",
            "cd_session",
            "__Host-cd_session",
        ] {
            assert!(is_platform_cookie(name), "{name}");
        }
        for name in [
            "session",
            "__Host-app",
            "claw",
            "my_clawdeploy",
            "cd_sessionx",
        ] {
            assert!(!is_platform_cookie(name), "{name}");
        }
    }

    #[test]
    fn cookies_are_stripped_by_name() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.append_header(
            "cookie",
            "app=1; clawdeploy_session=tok; __Host-clawdeploy_session=t2",
        )
        .unwrap();
        req.append_header("cookie", "other=2").unwrap();
        assert_eq!(session_cookies(&req, false).collect::<Vec<_>>(), ["tok"]);
        assert_eq!(session_cookies(&req, true).collect::<Vec<_>>(), ["t2"]);
        strip_platform_cookies(&mut req);
        let cookies: Vec<_> = req.headers.get_all("cookie").iter().collect();
        assert_eq!(cookies, ["app=1; other=2"]);
        let mut only = RequestHeader::build("GET", b"/", None).unwrap();
        only.append_header("cookie", "clawdeploy_session=x")
            .unwrap();
        strip_platform_cookies(&mut only);
        assert!(only.headers.get("cookie").is_none());
    }

    #[test]
    fn set_cookies_for_other_domains_are_refused() {
        let host = "alice.example.net";
        assert!(set_cookie_allowed("a=1; Path=/; HttpOnly", host));
        assert!(set_cookie_allowed("a=1; Domain=alice.example.net", host));
        assert!(set_cookie_allowed("a=1; domain=.ALICE.example.net", host));
        assert!(!set_cookie_allowed("a=1; Domain=example.net", host));
        assert!(!set_cookie_allowed(
            "a=1; Path=/; domain = .example.net",
            host
        ));
        assert!(!set_cookie_allowed("a=1; Domain=bob.example.net", host));
        assert!(!set_cookie_allowed(
            "a=1; Domain=alice.example.net; Domain=net",
            host
        ));
        assert!(!set_cookie_allowed("clawdeploy_session=x; Path=/", host));
        assert!(!set_cookie_allowed("__Host-clawdeploy_session=x", host));

        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.append_header("set-cookie", "a=1").unwrap();
        resp.append_header("set-cookie", "b=2; Domain=example.net")
            .unwrap();
        resp.append_header("set-cookie", "c=3; Secure").unwrap();
        assert_eq!(filter_set_cookies(&mut resp, host), 1);
        let kept: Vec<_> = resp.headers.get_all("set-cookie").iter().collect();
        assert_eq!(kept, ["a=1", "c=3; Secure"]);
    }

    #[test]
    fn login_urls_carry_the_whole_instance_url() {
        assert_eq!(
            login_url(false, "app.localhost", "alice.localhost:8080", "/chat?x=1&y=2"),
            "http://app.localhost:8080/login?next=http%3A%2F%2Falice.localhost%3A8080%2Fchat%3Fx%3D1%26y%3D2"
        );
        assert_eq!(
            login_url(true, "app.example.com", "alice.example.net", "/"),
            "https://app.example.com/login?next=https%3A%2F%2Falice.example.net%2F"
        );
    }

    #[test]
    fn navigations_are_told_from_api_calls() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        assert!(!is_navigation(&req));
        req.insert_header("accept", "text/html,*/*").unwrap();
        assert!(is_navigation(&req));
        req.insert_header("sec-fetch-mode", "cors").unwrap();
        assert!(!is_navigation(&req));
        let mut post = RequestHeader::build("POST", b"/", None).unwrap();
        post.insert_header("accept", "text/html").unwrap();
        assert!(!is_navigation(&post));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn set_cookie_for_any_other_domain_is_dropped(
                name in "[a-z]{1,8}",
                domain in "\\.?[a-zA-Z0-9.-]{1,30}",
                attrs in "(; (Path=/|HttpOnly|Secure|SameSite=Lax|Max-Age=60)){0,4}",
            ) {
                let host = "alice.example.net";
                let set_cookie = format!("{name}=v{attrs}; Domain={domain}");
                let allowed = set_cookie_allowed(&set_cookie, host);
                let target = domain.trim_start_matches('.').to_ascii_lowercase();
                prop_assert_eq!(allowed, target == host && !is_platform_cookie(&name), "{}", set_cookie);
            }

            #[test]
            fn platform_cookies_never_pass(
                others in proptest::collection::vec(("[a-z]{1,8}", "[a-zA-Z0-9]{0,8}"), 0..4),
                platform in "(__Host-|__Secure-)?(clawdeploy|ClawDeploy|CLAWDEPLOY)[a-z_]{0,8}|cd_session",
                value in "[a-zA-Z0-9.]{0,20}",
            ) {
                let mut pairs: Vec<String> = others.iter().map(|(n, v)| format!("{n}={v}")).collect();
                pairs.insert(pairs.len() / 2, format!("{platform}={value}"));
                let mut req = RequestHeader::build("GET", b"/", None).unwrap();
                req.insert_header("cookie", pairs.join("; ")).unwrap();
                strip_platform_cookies(&mut req);
                let kept = req.headers.get("cookie").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
                for pair in kept.split("; ").filter(|p| !p.is_empty()) {
                    let name = pair.split_once('=').map_or(pair, |(n, _)| n);
                    prop_assert!(!is_platform_cookie(name), "{} kept", pair);
                }
                let expected: Vec<String> = others
                    .iter()
                    .filter(|(n, _)| !is_platform_cookie(n))
                    .map(|(n, v)| format!("{n}={v}"))
                    .collect();
                prop_assert_eq!(kept, expected.join("; "));
            }
        }
    }
}

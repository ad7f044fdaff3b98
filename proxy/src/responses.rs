//! Responses the edge writes itself: errors (JSON or HTML by `Accept`) and redirects.
//!
//! Every error says what happened and what to do, in the platform's error shape
//! `{"error":{"code":"SNAKE_CASE","message":"..."}}`.

use bytes::Bytes;
use http::header;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::Result;

/// An error answered by the edge.
#[derive(Debug, Clone)]
pub struct EdgeError {
    /// The HTTP status answered (4xx or 5xx).
    pub status: u16,
    /// A stable `SNAKE_CASE` code (`UNKNOWN_HOST`, `RATE_LIMITED`…): `error.code` of the body, for
    /// programs.
    pub code: &'static str,
    /// What happened and how to fix it, for people: `error.message` of the body (escaped in HTML).
    pub message: String,
    /// Sent as `Retry-After` (seconds), e.g. on a 429.
    pub retry_after_secs: Option<u64>,
    /// Extra response headers (e.g. `Sec-WebSocket-Version` on a 426).
    pub headers: Vec<(&'static str, &'static str)>,
}

impl EdgeError {
    /// An error with no `Retry-After` and no extra headers.
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
            headers: Vec::new(),
        }
    }

    /// Adds `Retry-After: secs`.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    /// Adds a response header.
    pub fn header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.push((name, value));
        self
    }
}

/// True when the client prefers HTML (a browser), judged from `Accept`.
pub fn wants_html(req: &RequestHeader) -> bool {
    req.headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"))
}

/// The body of an error, JSON or HTML.
pub fn error_body(error: &EdgeError, html: bool) -> (Bytes, &'static str) {
    if html {
        let title = http::StatusCode::from_u16(error.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error");
        let body = format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <title>{status} {title} · ClawDeploy</title></head>\
             <body style=\"font-family:system-ui,sans-serif;max-width:40rem;margin:4rem auto;padding:0 1rem;color:#1a1a1a\">\
             <h1>{status} {title}</h1><p>{message}</p><p><small>Error code: <code>{code}</code></small></p></body></html>\n",
            status = error.status,
            title = escape_html(title),
            message = escape_html(&error.message),
            code = error.code,
        );
        (Bytes::from(body), "text/html; charset=utf-8")
    } else {
        let body = serde_json::json!({ "error": { "code": error.code, "message": error.message } });
        (Bytes::from(format!("{body}\n")), "application/json")
    }
}

/// Writes `error` as the whole response.
pub async fn write_error(session: &mut Session, error: &EdgeError, request_id: &str) -> Result<()> {
    let (body, content_type) = error_body(error, wants_html(session.req_header()));
    let mut resp = ResponseHeader::build(error.status, Some(6))?;
    resp.insert_header(header::CONTENT_TYPE, content_type)?;
    resp.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
    resp.insert_header(header::CACHE_CONTROL, "no-store")?;
    resp.insert_header("x-request-id", request_id)?;
    if let Some(secs) = error.retry_after_secs {
        resp.insert_header(header::RETRY_AFTER, secs.to_string())?;
    }
    for (name, value) in &error.headers {
        resp.insert_header(*name, *value)?;
    }
    if error.status >= 400 && error.status != 404 && error.status != 503 {
        // After a malformed request the connection's framing cannot be trusted.
        session.set_keepalive(None);
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}

/// Writes a permanent redirect to `location`.
pub async fn write_redirect(session: &mut Session, location: &str, request_id: &str) -> Result<()> {
    let mut resp = ResponseHeader::build(308, Some(4))?;
    resp.insert_header(header::LOCATION, location)?;
    resp.insert_header(header::CONTENT_LENGTH, "0")?;
    resp.insert_header("x-request-id", request_id)?;
    session.write_response_header(Box::new(resp), true).await
}

/// Writes a temporary redirect (`302` or `303`) that is never cached.
pub async fn write_see_other(
    session: &mut Session,
    status: u16,
    location: &str,
    request_id: &str,
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(5))?;
    resp.insert_header(header::LOCATION, location)?;
    resp.insert_header(header::CONTENT_LENGTH, "0")?;
    resp.insert_header(header::CACHE_CONTROL, "no-store")?;
    resp.insert_header("x-request-id", request_id)?;
    session.write_response_header(Box::new(resp), true).await
}

fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_html_bodies() {
        let error = EdgeError::new(
            404,
            "UNKNOWN_HOST",
            "No ClawDeploy instance is served at <x>.",
        );
        let (json, ct) = error_body(&error, false);
        assert_eq!(ct, "application/json");
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["error"]["code"], "UNKNOWN_HOST");
        let (html, ct) = error_body(&error, true);
        assert!(ct.starts_with("text/html"));
        let html = String::from_utf8(html.to_vec()).unwrap();
        assert!(
            html.contains("404 Not Found") && html.contains("&lt;x&gt;") && !html.contains("<x>")
        );
    }
}

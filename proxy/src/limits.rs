//! Request body limits (`server.max_body_bytes`): a declared `Content-Length` over the limit is
//! refused before anything is forwarded; a chunked body is counted as it streams and cut off
//! when it passes the limit. WebSocket traffic after an upgrade is not a request body.

use bytes::Bytes;
use http::header;
use pingora::http::RequestHeader;
use pingora::{Error, ErrorType};

use crate::responses::EdgeError;

const TOO_LARGE: &str = "request body larger than server.max_body_bytes";

fn too_large(max: u64) -> EdgeError {
    EdgeError::new(
        413,
        "BODY_TOO_LARGE",
        format!("The request body is larger than the {max} bytes this edge accepts; send a smaller body."),
    )
}

/// Refuses a request whose `Content-Length` exceeds `max`.
pub fn check_declared_body(req: &RequestHeader, max: u64) -> Result<(), EdgeError> {
    let declared = req
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(len) if len > max => Err(too_large(max)),
        _ => Ok(()),
    }
}

/// Adds a body chunk to `seen`; an error (answered 413 when possible) once past `max`.
pub fn count_body(seen: &mut u64, body: &Option<Bytes>, max: u64) -> pingora::Result<()> {
    if let Some(chunk) = body {
        *seen = seen.saturating_add(chunk.len() as u64);
        if *seen > max {
            return Err(Error::explain(ErrorType::HTTPStatus(413), TOO_LARGE));
        }
    }
    Ok(())
}

/// The error page for a body cut off by [`count_body`].
pub fn describe(e: &Error, max: u64) -> Option<EdgeError> {
    (matches!(e.etype(), ErrorType::HTTPStatus(413))
        && e.context.as_ref().is_some_and(|c| c.as_str() == TOO_LARGE))
    .then(|| too_large(max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_and_streamed_bodies_are_bounded() {
        let mut req = RequestHeader::build("POST", b"/", None).unwrap();
        assert!(check_declared_body(&req, 10).is_ok());
        req.insert_header("content-length", "10").unwrap();
        assert!(check_declared_body(&req, 10).is_ok());
        req.insert_header("content-length", "11").unwrap();
        assert_eq!(check_declared_body(&req, 10).unwrap_err().status, 413);
        let mut seen = 0;
        assert!(count_body(&mut seen, &Some(Bytes::from_static(b"12345")), 10).is_ok());
        assert!(count_body(&mut seen, &None, 10).is_ok());
        let err = count_body(&mut seen, &Some(Bytes::from_static(b"123456")), 10).unwrap_err();
        assert_eq!(describe(&err, 10).unwrap().code, "BODY_TOO_LARGE");
    }
}

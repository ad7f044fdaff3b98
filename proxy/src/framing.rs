//! Request-head framing the parser lets through but the edge refuses.
//!
//! httparse (under Pingora) accepts a bare LF as a line terminator (RFC 9112 §2.2 allows a
//! recipient to). An upstream that only splits on CRLF would then see one header where the edge
//! saw two (or a header line where the edge saw the end of the head): the disagreement request
//! smuggling is made of. The edge refuses such a request with 400 before anything is forwarded,
//! so what reaches an upstream is always CRLF-framed.

use pingora::proxy::Session;

use crate::responses::EdgeError;

/// Refuses an HTTP/1 request whose head (request line, headers, final empty line) contains a
/// line feed not preceded by a carriage return. HTTP/2 heads have no line endings.
pub fn check_line_endings(session: &Session) -> Result<(), EdgeError> {
    let Some(h1) = session.as_downstream().as_http1() else {
        return Ok(());
    };
    if has_bare_lf(&h1.get_headers_raw_bytes()) {
        return Err(EdgeError::new(
            400,
            "BARE_LF_LINE_ENDING",
            "A line of the request head ends in a bare LF; end every line of the request line and headers with CRLF (\\r\\n).",
        ));
    }
    Ok(())
}

fn has_bare_lf(head: &[u8]) -> bool {
    head.iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || head[i - 1] != b'\r'))
}

#[cfg(test)]
mod tests {
    use super::has_bare_lf;

    #[test]
    fn only_crlf_framed_heads_pass() {
        assert!(!has_bare_lf(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(has_bare_lf(b"GET / HTTP/1.1\nHost: a\n\n"));
        assert!(has_bare_lf(b"GET / HTTP/1.1\r\nHost: a\nX-B: c\r\n\r\n"));
        assert!(has_bare_lf(b"GET / HTTP/1.1\r\nHost: a\r\n\n"));
        assert!(has_bare_lf(b"\nGET / HTTP/1.1\r\n\r\n"));
    }
}

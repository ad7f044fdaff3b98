//! The gateway meter's id/answer matching (metering/src/classify.rs): any JSON spelling of one
//! string id matches any other, from the request to its answer, as the gateway's `JSON.parse`
//! reads them; `id_hash` accepts exactly the texts serde_json reads as a string (serde_json is the
//! reference); arbitrary bytes never panic the request, answer and interim readers.
#![no_main]

#[allow(dead_code)]
#[path = "../../metering/src/classify.rs"]
mod classify;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    /// A request id, and how each of its characters is spelled in the request and the answer.
    id: String,
    asked: Vec<u8>,
    answered: Vec<u8>,
    ok: Option<bool>,
    /// The answer's `payload.status`: `accepted` (an interim answer), `started`, or none.
    accepted: Option<bool>,
    /// Bytes read as a raw id, a request and an answer.
    raw: Vec<u8>,
}

/// A JSON spelling of `s`: each character plain, `\uXXXX` (surrogate pairs beyond the BMP) or a
/// short escape, as `how` says.
fn spell(s: &str, how: &[u8]) -> String {
    let mut out = String::from("\"");
    for (i, c) in s.chars().enumerate() {
        match (c, how.get(i).copied().unwrap_or(0) % 3) {
            ('"', _) => out.push_str("\\\""),
            ('\\', _) => out.push_str("\\\\"),
            ('\n', 1) => out.push_str("\\n"),
            ('\t', 1) => out.push_str("\\t"),
            ('/', 1) => out.push_str("\\/"),
            (c, 0) if c >= ' ' => out.push(c),
            (c, _) => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
        }
    }
    out.push('"');
    out
}

fuzz_target!(|input: Input| {
    // Reading anything is safe.
    let _ = classify::request(&input.raw);
    let _ = classify::response(&input.raw);
    let _ = classify::interim_answer(&input.raw);
    // The relay's resumed interim check reads valid JSON as a scan from the start does.
    if serde_json::from_slice::<serde_json::Value>(&input.raw).is_ok() {
        if let Some((_, Some(at))) = classify::response_head(&input.raw) {
            assert_eq!(
                classify::interim_answer_after(&input.raw, at),
                classify::interim_answer(&input.raw)
            );
        }
    }

    // `id_hash` agrees with serde_json on what is a string id, and hashes its decoded value.
    let raw = &input.raw;
    let quoted = raw.len() >= 2 && raw[0] == b'"' && raw[raw.len() - 1] == b'"';
    let ours = classify::id_hash(raw);
    match serde_json::from_slice::<String>(raw) {
        Ok(s) if quoted && raw.len() <= classify::MAX_ID_BYTES => {
            let canonical = serde_json::to_string(&s).unwrap();
            assert!(
                ours.is_some(),
                "{:?} decodes to {s:?}",
                String::from_utf8_lossy(raw)
            );
            assert_eq!(ours, classify::id_hash(canonical.as_bytes()), "{s:?}");
        }
        _ => assert!(ours.is_none(), "{:?}", String::from_utf8_lossy(raw)),
    }

    // A request and its answer, each spelling the id its own way, match.
    let (asked, answered) = (
        spell(&input.id, &input.asked),
        spell(&input.id, &input.answered),
    );
    if asked.len() > classify::MAX_ID_BYTES || answered.len() > classify::MAX_ID_BYTES {
        return;
    }
    let ok = match input.ok {
        Some(ok) => ok.to_string(),
        None => "null".to_string(),
    };
    let req =
        format!(r#"{{"type":"req","id":{asked},"method":"chat.send","params":{{"message":"m"}}}}"#);
    let payload = match input.accepted {
        Some(true) => r#"{"runId":"r","status":"accepted"}"#,
        Some(false) => r#"{"runId":"r","status":"started"}"#,
        None => "{}",
    };
    let res = format!(r#"{{"type":"res","id":{answered},"ok":{ok},"payload":{payload}}}"#);
    let request = classify::request(req.as_bytes()).expect("a request");
    assert!(request.turn);
    let (answer, rest) = classify::response_head(res.as_bytes()).expect("an answer");
    assert_eq!(answer.ok, input.ok);
    let interim = Some(input.accepted == Some(true));
    assert_eq!(classify::interim_answer(res.as_bytes()), interim);
    // The head is complete before the payload when `ok` is a boolean (else it is read from the
    // start).
    match rest {
        Some(at) => assert_eq!(classify::interim_answer_after(res.as_bytes(), at), interim),
        None => assert_eq!(input.ok, None),
    }
    let sent = classify::id_hash(request.id.expect("an id"));
    assert!(sent.is_some(), "{asked}");
    assert_eq!(sent, classify::id_hash(answer.id), "{asked} vs {answered}");
    // A different id never matches (up to a 64-bit hash collision).
    let other = spell(&format!("{}x", input.id), &input.answered);
    if other.len() <= classify::MAX_ID_BYTES {
        assert_ne!(sent, classify::id_hash(other.as_bytes()));
    }
});

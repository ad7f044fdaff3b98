//! Which OpenClaw gateway frames matter for metering (research/openclaw.md §1).
//!
//! A user message is a `req` whose method is `chat.send`, `sessions.send`, `sessions.steer`,
//! `agent` or `sessions.create` and whose params carry a `message` or a `task`. It counts once per
//! `idempotencyKey` when the gateway answers its `id` with `ok: true`.

use std::borrow::Cow;

/// Methods that start an agent turn for the user.
pub const USER_MESSAGE_METHODS: [&str; 5] = [
    "chat.send",
    "sessions.send",
    "sessions.steer",
    "agent",
    "sessions.create",
];

/// A client request that is a user message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserMessage<'a> {
    /// The request id as raw JSON text (usually a quoted string), echoed in the answer.
    pub id: &'a [u8],
    pub method: &'static str,
    pub idempotency_key: Option<Cow<'a, str>>,
}

/// Classifies a client → gateway text message; `None` for anything that is not a user message
/// (including text that is not a JSON object: the gateway answers that itself).
///
/// Reads the message the way the gateway's `JSON.parse` does where it matters for counting: key
/// and value escapes are decoded (`"meth\u006fd"` is `method`) and of repeated keys the last one
/// wins, so no spelling of a user message passes uncounted. Every client text frame goes through
/// here, so it is a single pass that allocates only for escaped strings.
pub fn user_message(text: &[u8]) -> Option<UserMessage<'_>> {
    let mut scan = Scanner::new(text);
    let (mut kind, mut id, mut method) = (None, None, None);
    let mut params = ParamsSeen::default();
    scan.object(|scan, key| {
        match key {
            Key::Type => kind = Some(scan.string()?),
            Key::Id => id = Some(scan.value()?),
            Key::Method => method = Some(scan.string()?),
            Key::Params => params = ParamsSeen::read(scan)?,
            _ => {
                scan.value()?;
            }
        }
        Some(())
    })?;
    if !kind?.is("req") {
        return None;
    }
    let method = method?;
    let method = USER_MESSAGE_METHODS.into_iter().find(|m| method.is(m))?;
    if !params.message_or_task {
        return None;
    }
    Some(UserMessage {
        id: id?,
        method,
        idempotency_key: params.idempotency_key,
    })
}

/// What metering needs from a request's `params`.
#[derive(Default)]
struct ParamsSeen<'a> {
    /// A `message` or a `task` that is not `null`.
    message_or_task: bool,
    idempotency_key: Option<Cow<'a, str>>,
}

impl<'a> ParamsSeen<'a> {
    fn read(scan: &mut Scanner<'a>) -> Option<Self> {
        if scan.peek() != Some(b'{') {
            scan.value()?;
            return Some(Self::default());
        }
        let (mut message, mut task, mut key) = (false, false, None);
        scan.object(|scan, k| {
            match k {
                Key::Message => message = scan.value()? != b"null",
                Key::Task => task = scan.value()? != b"null",
                Key::Idempotency => {
                    key = match scan.peek() {
                        Some(b'"') => scan.string()?.decode().filter(|k| !k.is_empty()),
                        Some(b'-' | b'0'..=b'9') => {
                            Some(Cow::Borrowed(std::str::from_utf8(scan.value()?).ok()?))
                        }
                        _ => {
                            scan.value()?;
                            None
                        }
                    }
                }
                _ => {
                    scan.value()?;
                }
            }
            Some(())
        })?;
        Some(Self {
            message_or_task: message || task,
            idempotency_key: key,
        })
    }
}

/// A gateway → client `res`: its id (raw JSON text) and whether it succeeded.
///
/// The gateway writes frames with `JSON.stringify`, `type` first, so events (the bulk of the
/// stream while a turn runs) are dismissed after their first field.
pub fn response(text: &[u8]) -> Option<(&[u8], bool)> {
    let mut scan = Scanner::new(text);
    let (mut is_res, mut id, mut ok) = (None, None, None);
    // Gateway output is valid JSON: the scan may stop (the closure's `None`) at a `type` that is
    // not `res`, or once all three fields are known, never reading the payload after them.
    let _ = scan.object(|scan, key| {
        match key {
            Key::Type => is_res = Some(scan.string()?.is("res")),
            Key::Id => id = Some(scan.value()?),
            Key::Ok => ok = Some(scan.value()? == b"true"),
            _ => {
                scan.value()?;
            }
        }
        let done = is_res == Some(false) || (is_res.is_some() && id.is_some() && ok.is_some());
        (!done).then_some(())
    });
    if is_res != Some(true) {
        return None;
    }
    Some((id?, ok.unwrap_or(false)))
}

/// The keys metering reads (after decoding escapes).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Key {
    Type,
    Id,
    Method,
    Params,
    Ok,
    Message,
    Task,
    Idempotency,
    Other,
}

impl Key {
    fn of(raw: &[u8], escaped: bool) -> Self {
        // Most keys are not metering's: dismissed by length before any comparison.
        if !escaped && !matches!(raw.len(), 2 | 4 | 6 | 7 | 14) {
            return Self::Other;
        }
        let decoded;
        let name: &[u8] = if escaped {
            decoded = JsonStr { raw, escaped }.decode();
            match &decoded {
                Some(d) => d.as_bytes(),
                None => return Self::Other,
            }
        } else {
            raw
        };
        match name {
            b"type" => Self::Type,
            b"id" => Self::Id,
            b"method" => Self::Method,
            b"params" => Self::Params,
            b"ok" => Self::Ok,
            b"message" => Self::Message,
            b"task" => Self::Task,
            b"idempotencyKey" => Self::Idempotency,
            _ => Self::Other,
        }
    }
}

/// The position of the first `"` or `\\` in `bytes`, eight bytes at a time: most strings are
/// short keys, where a vectorised search costs more to set up than it saves.
fn quote_or_backslash(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // High bit set in the first byte of `word` that is zero (later bytes may be set spuriously).
    let zero_bytes = |word: u64| word.wrapping_sub(ONES) & !word & HIGHS;
    let mut words = bytes.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut words {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let word = u64::from_le_bytes(word);
        let found = zero_bytes(word ^ (ONES * u64::from(b'"')))
            | zero_bytes(word ^ (ONES * u64::from(b'\\')));
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    let tail = words.remainder();
    tail.iter()
        .position(|b| matches!(b, b'"' | b'\\'))
        .map(|i| at + i)
}

/// A JSON string as written: its raw contents, and whether they contain escapes.
#[derive(Clone, Copy)]
struct JsonStr<'a> {
    raw: &'a [u8],
    escaped: bool,
}

impl<'a> JsonStr<'a> {
    /// True when the string decodes to `want`.
    fn is(self, want: &str) -> bool {
        if self.escaped {
            self.decode().is_some_and(|d| d == want)
        } else {
            self.raw == want.as_bytes()
        }
    }

    /// The decoded text; `None` if it is not UTF-8 or has an escape that decodes to no string (a
    /// lone surrogate: such a value never equals a name metering looks for).
    fn decode(self) -> Option<Cow<'a, str>> {
        if !self.escaped {
            return std::str::from_utf8(self.raw).ok().map(Cow::Borrowed);
        }
        let mut quoted = Vec::with_capacity(self.raw.len() + 2);
        quoted.push(b'"');
        quoted.extend_from_slice(self.raw);
        quoted.push(b'"');
        serde_json::from_slice::<String>(&quoted)
            .ok()
            .map(Cow::Owned)
    }
}

/// A forward-only reader of JSON text that skips what it is not asked for. It accepts every valid
/// JSON text; on invalid text it may stop (`None`) or read on, which is harmless here: the gateway
/// rejects such a frame itself.
struct Scanner<'a> {
    text: &'a [u8],
    at: usize,
    /// Whether the last string read had escapes.
    escaped: bool,
}

impl<'a> Scanner<'a> {
    fn new(text: &'a [u8]) -> Self {
        Self {
            text,
            at: 0,
            escaped: false,
        }
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.text.get(self.at) {
            self.at += 1;
        }
    }

    /// The next byte after whitespace.
    fn peek(&mut self) -> Option<u8> {
        self.skip_whitespace();
        self.text.get(self.at).copied()
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// A string's raw contents (escapes not decoded).
    fn string(&mut self) -> Option<JsonStr<'a>> {
        let raw = self.raw_string()?;
        Some(JsonStr {
            raw,
            escaped: self.escaped,
        })
    }

    /// [`Scanner::string`] without the wrapper (sets `escaped`): most strings are skipped.
    fn raw_string(&mut self) -> Option<&'a [u8]> {
        self.expect(b'"')?;
        let start = self.at;
        let mut at = start;
        self.escaped = false;
        loop {
            at += quote_or_backslash(self.text.get(at..)?)?;
            if self.text[at] == b'"' {
                self.at = at + 1;
                return Some(&self.text[start..at]);
            }
            // An escape: the next byte is never the string's end.
            self.escaped = true;
            at += 2;
        }
    }

    /// Skips one value of any kind; returns its raw text.
    fn value(&mut self) -> Option<&'a [u8]> {
        let first = self.peek()?;
        let start = self.at;
        match first {
            b'"' => {
                self.raw_string()?;
            }
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match *self.text.get(self.at)? {
                        b'"' => {
                            self.raw_string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.at += 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                    self.at += 1;
                }
            }
            _ => {
                // A number, `true`, `false` or `null`.
                let len = self.text[start..]
                    .iter()
                    .position(|b| matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                    .unwrap_or(self.text.len() - start);
                if len == 0 {
                    return None;
                }
                self.at += len;
            }
        }
        Some(&self.text[start..self.at])
    }

    /// Reads an object, calling `member` with each key; `member` reads the value.
    fn object(&mut self, mut member: impl FnMut(&mut Self, Key) -> Option<()>) -> Option<()> {
        self.expect(b'{')?;
        if self.peek()? == b'}' {
            self.at += 1;
            return Some(());
        }
        loop {
            let raw = self.raw_string()?;
            let key = Key::of(raw, self.escaped);
            self.expect(b':')?;
            member(self, key)?;
            match self.peek()? {
                b',' => self.at += 1,
                b'}' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }
}

/// The `res` the edge answers a refused user message with (the gateway's error shape).
pub fn quota_exceeded_response(
    id: &str,
    limit: u64,
    used: u64,
    resets_at: &str,
    upgrade_url: &str,
) -> String {
    serde_json::json!({
        "type": "res",
        "id": serde_json::from_str::<serde_json::Value>(id).unwrap_or(serde_json::Value::Null),
        "ok": false,
        "error": {
            "code": "QUOTA_EXCEEDED",
            "message": format!(
                "This instance has used its {limit} messages for this month; the count resets at {resets_at}. Upgrade for more: {upgrade_url}"
            ),
            "details": {
                "limit": limit,
                "used": used,
                "resetsAt": resets_at,
                "upgradeUrl": upgrade_url,
            },
            "retryable": false,
        }
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    #[test]
    fn user_messages_are_recognised() {
        let m = user_message(br#"{"type":"req","id":"a1","method":"chat.send","params":{"sessionKey":"agent:main:main","message":"hi","idempotencyKey":"k1"}}"#).unwrap();
        assert_eq!(m.id, b"\"a1\"");
        assert_eq!(m.method, "chat.send");
        assert_eq!(m.idempotency_key.as_deref(), Some("k1"));
        assert!(user_message(
            br#"{"type":"req","id":"a1","method":"sessions.create","params":{"task":"t"}}"#
        )
        .is_some());
        assert!(user_message(
            br#"{"type":"req","id":"a1","method":"sessions.create","params":{"label":"x"}}"#
        )
        .is_none());
        assert!(user_message(
            br#"{"type":"req","id":"a1","method":"chat.history","params":{"message":"x"}}"#
        )
        .is_none());
        assert!(
            user_message(br#"{"method":"chat.send","type":"event","params":{"message":"x"}}"#)
                .is_none()
        );
        assert!(user_message(b"not json \"method\"").is_none());
        let m = user_message(
            br#" { "params" : {"message":{"text":"hi"}} , "method":"agent", "id" : 7 ,"type":"req"}"#,
        )
        .unwrap();
        assert_eq!(m.id, b"7");
        assert_eq!(m.idempotency_key, None);
    }

    /// Spellings `JSON.parse` reads as a user message are counted: escaped keys and values, the
    /// last of repeated keys, strings serde would refuse (a lone surrogate).
    #[test]
    fn every_spelling_of_a_user_message_is_recognised() {
        for text in [
            r#"{"type":"req","id":1,"meth\u006fd":"chat\u002esend","params":{"m\u0065ssage":"x"}}"#,
            r#"{"type":"req","id":1,"method":"chat.history","method":"chat.send","params":{"message":"x"}}"#,
            r#"{"type":"req","id":1,"method":"chat.send","params":{"note":1},"params":{"message":"x"}}"#,
            r#"{"type":"req","id":1,"method":"chat.send","params":{"message":"\ud800 lone"}}"#,
            r#"{"type":"event","type":"req","id":1,"method":"agent","params":{"task":[1,{"a":"}"}]}}"#,
        ] {
            assert!(user_message(text.as_bytes()).is_some(), "{text}");
        }
        for text in [
            r#"{"type":"req","id":1,"method":"chat.send","method":"chat.history","params":{"message":"x"}}"#,
            r#"{"type":"req","id":1,"method":"chat.send","params":{"message":"x"},"params":{}}"#,
            r#"{"type":"req","id":1,"method":"chat.send","params":{"message":"x","message":null}}"#,
        ] {
            assert!(user_message(text.as_bytes()).is_none(), "{text}");
        }
        let m = user_message(
            br#"{"type":"req","id":1,"method":"agent","params":{"task":"t","idempotencyKey":"k\u0031"}}"#,
        )
        .unwrap();
        assert_eq!(m.idempotency_key.as_deref(), Some("k1"));
    }

    #[test]
    fn responses_are_recognised() {
        assert_eq!(
            response(br#"{"type":"res","id":"a1","ok":true,"payload":{"runId":"k1"}}"#),
            Some((&b"\"a1\""[..], true))
        );
        assert_eq!(
            response(br#"{"type":"res","id":"a1","ok":false,"error":{"code":"X"}}"#),
            Some((&b"\"a1\""[..], false))
        );
        assert_eq!(
            response(br#"{"id":"a1","payload":{"x":"]"},"ok":true,"type":"res"}"#),
            Some((&b"\"a1\""[..], true))
        );
        assert_eq!(response(br#"{"type":"event","event":"res"}"#), None);
        assert_eq!(response(br#"{"type":"res","ok":true}"#), None);
        assert_eq!(response(b"[]"), None);
    }

    /// The classification `serde_json::Value` gives (valid JSON without repeated keys).
    fn reference(text: &str) -> Option<(Value, &'static str, Option<String>)> {
        let v: Value = serde_json::from_str(text).ok()?;
        let o = v.as_object()?;
        if o.get("type")?.as_str()? != "req" {
            return None;
        }
        let m = o.get("method")?.as_str()?;
        let method = USER_MESSAGE_METHODS.into_iter().find(|x| *x == m)?;
        let params = o.get("params")?.as_object()?;
        let present = |k: &str| params.get(k).is_some_and(|v| !v.is_null());
        if !present("message") && !present("task") {
            return None;
        }
        let key = match params.get("idempotencyKey") {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        Some((o.get("id")?.clone(), method, key))
    }

    /// A key as written: plain, or with one character escaped.
    fn spelled(key: &'static str) -> impl Strategy<Value = String> {
        (any::<bool>(), 0..key.len()).prop_map(move |(escape, at)| {
            if escape {
                format!(
                    "{}\\u{:04x}{}",
                    &key[..at],
                    key.as_bytes()[at],
                    &key[at + 1..]
                )
            } else {
                key.to_string()
            }
        })
    }

    fn object(members: Vec<(String, String)>, ws: &'static str) -> String {
        let body: Vec<String> = members
            .into_iter()
            .map(|(k, v)| format!("{ws}\"{k}\"{ws}:{ws}{v}{ws}"))
            .collect();
        format!("{{{}}}", body.join(","))
    }

    fn frame() -> impl Strategy<Value = String> {
        let value = prop_oneof![
            Just(r#""hi""#.to_string()),
            Just("null".to_string()),
            Just("42".to_string()),
            Just(r#""""#.to_string()),
            Just(r#""k\u00e9 \"q\" \\""#.to_string()),
            Just(r#"{"text":"a \"b\" }{ ] c","n":[1,{"d":[]}]}"#.to_string()),
            Just("[true,false,-1.5e3]".to_string()),
        ];
        let params = proptest::collection::vec(
            (
                prop_oneof![
                    spelled("message"),
                    spelled("task"),
                    spelled("idempotencyKey"),
                    Just("sessionKey".to_string())
                ],
                value.clone(),
            ),
            0..4,
        )
        .prop_map(|members| {
            // Distinct keys: the reference cannot express repeats.
            let mut seen = std::collections::HashSet::new();
            members
                .into_iter()
                .filter(|(k, _)| {
                    seen.insert(serde_json::from_str::<String>(&format!("\"{k}\"")).unwrap())
                })
                .collect::<Vec<_>>()
        });
        let method = prop_oneof![
            Just("chat.send"),
            Just("sessions.create"),
            Just("agent"),
            Just("chat.history"),
            Just("connect")
        ];
        (
            (
                spelled("type"),
                prop_oneof![Just("req"), Just("res"), Just("event")],
            ),
            (spelled("id"), value),
            (spelled("method"), method, any::<bool>()),
            (
                spelled("params"),
                params,
                prop_oneof![Just(""), Just(" "), Just("\n\t")],
            ),
            proptest::collection::vec(any::<bool>(), 4),
        )
            .prop_flat_map(|(kind, id, method, params, include)| {
                let mut members = Vec::new();
                if include[0] {
                    members.push((kind.0, format!("\"{}\"", kind.1)));
                }
                if include[1] {
                    members.push(id);
                }
                if include[2] {
                    let name = if method.2 {
                        method.1.replace('.', "\\u002e")
                    } else {
                        method.1.to_string()
                    };
                    members.push((method.0, format!("\"{name}\"")));
                }
                if include[3] {
                    members.push((params.0, object(params.1, params.2)));
                }
                (
                    Just(members).prop_shuffle(),
                    prop_oneof![Just(""), Just(" "), Just("\r\n")],
                )
            })
            .prop_map(|(members, ws)| object(members, ws))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn the_word_search_finds_the_first_quote_or_backslash(bytes in proptest::collection::vec(
            prop_oneof![Just(b'"'), Just(b'\\'), Just(b'a'), Just(0u8), Just(0x22 + 0x80), any::<u8>()], 0..40)
        ) {
            let expected = bytes.iter().position(|b| matches!(b, b'"' | b'\\'));
            prop_assert_eq!(quote_or_backslash(&bytes), expected);
        }

        /// On valid JSON the scanner classifies exactly as a full parse does.
        #[test]
        fn the_scanner_agrees_with_a_full_parse(text in frame()) {
            let ours = user_message(text.as_bytes()).map(|m| {
                (serde_json::from_slice::<Value>(m.id).unwrap(), m.method, m.idempotency_key.map(Cow::into_owned))
            });
            prop_assert_eq!(ours, reference(&text), "{}", text);
        }

        /// Arbitrary bytes never panic.
        #[test]
        fn arbitrary_bytes_are_read_safely(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = user_message(&bytes);
            let _ = response(&bytes);
        }
    }

    #[test]
    fn the_refusal_echoes_the_id() {
        let text = quota_exceeded_response(
            "\"a1\"",
            100,
            100,
            "2026-12-01T00:00:00.000Z",
            "https://x/billing",
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["id"], "a1");
        assert_eq!(v["error"]["code"], "QUOTA_EXCEEDED");
        assert_eq!(v["error"]["details"]["limit"], 100);
    }
}

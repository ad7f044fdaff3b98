//! Which OpenClaw gateway frames matter for metering (research/openclaw.md §1).
//!
//! **Turns.** Every `req` is looked up in [`methods::METHODS`], the pinned OpenClaw's (2026.9.6)
//! whole method table, each method classified as starting an agent turn or not. A request is a
//! turn (counted, or refused at the quota) when its method is
//! - [`Turn::Always`]: it can start a model run whatever its params;
//! - [`Turn::When`] and one of the params that carry the text of a turn is present and not `null`
//!   (`sessions.create` without `message`/`task` only creates a session: the Control UI's "new
//!   session" stays free);
//! - not in the table at all: a method the pinned OpenClaw does not have (a newer gateway, a
//!   plugin) is treated as turn-starting until it is classified. The gateway answers a method it
//!   does not know with `ok: false`, which refunds the count, so probing costs nothing.
//!
//! [`Turn::Never`] methods (`health`, `chat.history`, `sessions.list`, everything the dashboard and
//! the Control UI read) are forwarded uncounted. A test checks the table against the OpenClaw
//! image's own method list and fails when an upgrade adds a method.
//!
//! Whether a method without message text counts: it does when it can start a turn without one
//! (`wake` in mode `now` runs a heartbeat turn, `cron.run` runs a stored job, `sessions.recover`
//! writes its own prompt), so those are [`Turn::Always`]; a method whose text is what makes it a
//! turn (`sessions.create`) is [`Turn::When`]. One request counts once however long the turn runs.
//! Turns that start without a request on this socket (a cron job's later runs, channel messages,
//! heartbeats) are not seen here; the LLM meter's token quota bounds them.
//!
//! **Ids.** A turn counts when it is forwarded and is refunded only by the gateway's answer to its
//! id with an explicit `ok: false`, so the relay must match answers to requests exactly as the
//! gateway's `JSON.parse` reads ids: [`id_hash`] hashes the decoded string (`"e\u0031"` and `"e1"`
//! are one id). Ids that are not strings, do not decode, or are longer than [`MAX_ID_BYTES`] are
//! never matched; a turn with such an id is refused by the edge (the gateway's schema requires a
//! non-empty string id anyway).

use std::borrow::Cow;
use std::sync::OnceLock;

/// The method table ([`METHODS`]), in its own file; `include!` (resolved from this file) rather than
/// `mod methods;` so the fuzz targets can compile this file by `#[path]` too.
mod methods {
    include!("classify/methods.rs");
}

pub use methods::METHODS;

/// How a gateway method relates to agent turns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// Never starts an agent turn: forwarded uncounted.
    Never,
    /// Starts a turn when one of these [`text_params`] (a bit set) is present and not `null`.
    When(u32),
    /// Can start a turn whatever its params.
    Always,
}

/// Params that carry the text of a turn, as bits for [`Turn::When`] (at most 32).
pub mod text_params {
    /// `params.message`: the user's text (`chat.send`, `sessions.create`, `agent`…).
    pub const MESSAGE: u32 = 1 << 0;
    /// `params.task`: a task's text, which starts a turn like a message.
    pub const TASK: u32 = 1 << 1;

    /// Names by bit position.
    pub const NAMES: [&str; 2] = ["message", "task"];
}

/// How the method named `name` (decoded) is classified; [`Turn::Always`] when it is not in the
/// table.
pub fn turn_of(name: &str) -> Turn {
    turn_of_bytes(name.as_bytes())
}

/// [`turn_of`] on the name as written (unescaped): one hash lookup, as every request is looked up
/// (a binary search of the table cost a measurable part of a send).
fn turn_of_bytes(name: &[u8]) -> Turn {
    type Index = std::collections::HashMap<&'static [u8], Turn, foldhash::fast::FixedState>;
    static INDEX: OnceLock<Index> = OnceLock::new();
    if name == b"chat.send" {
        // The bulk of turns, answered without a lookup (the table says the same; tested).
        return CHAT_SEND;
    }
    INDEX
        .get_or_init(|| METHODS.iter().map(|(m, t)| (m.as_bytes(), *t)).collect())
        .get(name)
        .copied()
        .unwrap_or(Turn::Always)
}

/// `chat.send`'s class in [`METHODS`].
const CHAT_SEND: Turn = Turn::When(text_params::MESSAGE | text_params::TASK);

/// A client request (`type: "req"`), as much of it as metering needs.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// The request id as raw JSON text, if present (see [`id_hash`]).
    pub id: Option<&'a [u8]>,
    method: Option<JsonStr<'a>>,
    /// Whether it can start an agent turn (see the module docs).
    pub turn: bool,
    /// `params.idempotencyKey` (a non-empty string, or a number as written) of a turn; `None` for
    /// other requests. A retry with a key already counted this period is not counted again.
    pub idempotency_key: Option<Cow<'a, str>>,
    /// Whether it asks for a sub-agent ([`SPAWN_PARAMS`]), whatever its method.
    pub spawn: bool,
}

impl Request<'_> {
    /// The method name as the gateway reads it (for logs).
    pub fn method(&self) -> Cow<'_, str> {
        self.method
            .and_then(JsonStr::decode)
            .unwrap_or(Cow::Borrowed("?"))
    }
}

/// Classifies a client → gateway text message; `None` for anything that is not a `req` (including
/// text that is not a JSON object: the gateway answers that itself).
///
/// Reads the message the way the gateway's `JSON.parse` does where it matters for counting: key
/// and value escapes are decoded (`"meth\u006fd"` is `method`) and of repeated keys the last one
/// wins, so no spelling of a turn passes uncounted. Every client text frame goes through here, so
/// it is a single pass that allocates only for escaped strings.
pub fn request(text: &[u8]) -> Option<Request<'_>> {
    let mut scan = Scanner::new(text);
    let (mut kind, mut id, mut method) = (None, None, None);
    let mut params = ParamsSeen::default();
    scan.object(|scan, key| {
        match key {
            Key::Type => kind = Some(scan.string()?),
            Key::Id => id = Some(scan.value()?),
            Key::Method => {
                // A method that is not a string is no method: the gateway refuses the frame.
                method = match scan.peek() {
                    Some(b'"') => Some(scan.string()?),
                    _ => {
                        scan.value()?;
                        None
                    }
                }
            }
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
    let turn = match method {
        None => false,
        Some(m) => {
            let class = if !m.escaped {
                turn_of_bytes(m.raw)
            } else {
                match m.decode() {
                    Some(name) => turn_of(&name),
                    // Undecodable (a lone surrogate): no method of the table.
                    None => Turn::Always,
                }
            };
            match class {
                Turn::Never => false,
                Turn::Always => true,
                Turn::When(wanted) => params.text & wanted != 0,
            }
        }
    };
    Some(Request {
        id,
        method,
        turn,
        idempotency_key: if turn { params.idempotency_key } else { None },
        spawn: params.spawn,
    })
}

/// A client request that starts an agent turn (kept for callers that only want turns).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserMessage<'a> {
    /// The request id as raw JSON text, echoed in the answer.
    pub id: &'a [u8],
    /// `params.idempotencyKey`, decoded, if the request has one (see [`Request::idempotency_key`]).
    pub idempotency_key: Option<Cow<'a, str>>,
}

/// [`request`] for turns only: `None` for anything else, or a turn without an id.
pub fn user_message(text: &[u8]) -> Option<UserMessage<'_>> {
    let r = request(text)?;
    if !r.turn {
        return None;
    }
    Some(UserMessage {
        id: r.id?,
        idempotency_key: r.idempotency_key,
    })
}

/// What metering needs from a request's `params`.
#[derive(Default)]
struct ParamsSeen<'a> {
    /// [`text_params`] present and not `null`.
    text: u32,
    idempotency_key: Option<Cow<'a, str>>,
    /// A [`SPAWN_PARAMS`] param present and not `null` (the last of repeated keys wins).
    spawn: bool,
}

impl<'a> ParamsSeen<'a> {
    fn read(scan: &mut Scanner<'a>) -> Option<Self> {
        if scan.peek() != Some(b'{') {
            scan.value()?;
            return Some(Self::default());
        }
        let (mut text, mut key, mut spawn) = (0u32, None, false);
        scan.object(|scan, k| {
            match k {
                Key::Spawn => spawn = scan.value()? != b"null",
                Key::Text(bit) => {
                    // Of repeated keys the last one wins, `null` included.
                    if scan.value()? == b"null" {
                        text &= !bit;
                    } else {
                        text |= bit;
                    }
                }
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
            text,
            idempotency_key: key,
            spawn,
        })
    }
}

/// Request ids longer than this (raw JSON) are never matched (see the module docs).
pub const MAX_ID_BYTES: usize = 1024;

/// The hash by which a request and its answer are matched: of the id's decoded string, so every
/// JSON spelling of one string hashes alike. `None` for ids that are not valid JSON strings, do
/// not decode (a lone surrogate, invalid UTF-8) or are longer than [`MAX_ID_BYTES`]: exactly the
/// `"..."` texts `serde_json` reads as a `String` (the fuzz target `ws_ids` checks it).
///
/// Seeded per process (ids come from the client, so they cannot be chosen to collide); foldhash is
/// several times faster than SipHash on short keys. Unescaped ids (the usual case) are hashed in
/// place.
pub fn id_hash(raw: &[u8]) -> Option<u64> {
    use std::hash::BuildHasher;
    static SEED: OnceLock<foldhash::fast::RandomState> = OnceLock::new();
    if raw.len() > MAX_ID_BYTES || raw.len() < 2 || raw[0] != b'"' || raw[raw.len() - 1] != b'"' {
        return None;
    }
    let inner = &raw[1..raw.len() - 1];
    let seed = SEED.get_or_init(Default::default);
    match quote_or_backslash(inner) {
        None => {
            // As `JSON.parse`: UTF-8, no raw control characters (ids are usually ASCII: one pass).
            if !inner.iter().all(|b| (0x20..0x80).contains(b)) {
                if inner.iter().any(|&b| b < 0x20) {
                    return None;
                }
                std::str::from_utf8(inner).ok()?;
            }
            Some(seed.hash_one(inner))
        }
        Some(at) if inner[at] == b'"' => None,
        Some(_) => {
            let decoded = JsonStr {
                raw: inner,
                escaped: true,
            }
            .decode()?;
            Some(seed.hash_one(decoded.as_bytes()))
        }
    }
}

/// A gateway → client `res`, as far as metering reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer<'a> {
    /// The id as raw JSON text.
    pub id: &'a [u8],
    /// `Some(false)` only for an explicit `"ok":false`; `None` when `ok` is missing or not read.
    pub ok: Option<bool>,
}

/// Reads the head of a gateway → client message: `Some` for a `res` with an id.
///
/// The gateway writes frames with `JSON.stringify`, `type` first, then `id` and `ok`, so events
/// (the bulk of the stream while a turn runs) are dismissed after their first field and the head
/// of a large answer is read from its first bytes: `text` may be a prefix of the message.
pub fn response(text: &[u8]) -> Option<Answer<'_>> {
    response_head(text).map(|(answer, _)| answer)
}

/// [`response`], and where its scan stopped, for [`interim_answer_after`] to go on from: `None`
/// when the payload came before the head (it must be read from the start).
pub fn response_head(text: &[u8]) -> Option<(Answer<'_>, Option<usize>)> {
    let mut scan = Scanner::new(text);
    let (mut is_res, mut id, mut ok) = (None, None, None);
    let mut payload_first = false;
    // Gateway output is valid JSON: the scan may stop (the closure's `None`) at a `type` that is
    // not `res`, or once all three fields are known, never reading the payload after them. On a
    // prefix it stops where the prefix ends, with what it has read so far.
    let _ = scan.object(|scan, key| {
        match key {
            Key::Type => is_res = Some(scan.string()?.is("res")),
            Key::Id => id = Some(scan.value()?),
            Key::Ok => {
                // A value cut by the end of a prefix is not read as `false`.
                let value = scan.value()?;
                ok = match value {
                    b"true" => Some(true),
                    b"false" if scan.at < scan.text.len() => Some(false),
                    _ => None,
                };
            }
            key => {
                payload_first |= key == Key::Payload;
                scan.value()?;
            }
        }
        let done = is_res == Some(false) || (is_res.is_some() && id.is_some() && ok.is_some());
        (!done).then_some(())
    });
    if is_res != Some(true) {
        return None;
    }
    let rest = (!payload_first).then_some(scan.at);
    Some((Answer { id: id?, ok }, rest))
}

/// Whether an `ok: true` answer is an interim one (`payload.status` is `"accepted"`) after which
/// the gateway answers the same id again: OpenClaw's client library waits for a final answer
/// then (`expectFinal`). `None` when `text` (possibly a prefix) does not say.
pub fn interim_answer(text: &[u8]) -> Option<bool> {
    let mut scan = Scanner::new(text);
    scan.expect(b'{')?;
    if scan.peek()? == b'}' {
        return Some(false);
    }
    interim_members(scan)
}

/// [`interim_answer`] going on from where [`response_head`] stopped (`at`, inside the object).
pub fn interim_answer_after(text: &[u8], at: usize) -> Option<bool> {
    let mut scan = Scanner::new(text);
    scan.at = at;
    match scan.peek()? {
        b',' => scan.at += 1,
        b'}' => return Some(false),
        _ => return None,
    }
    interim_members(scan)
}

/// Reads the rest of an answer's members for `payload.status`.
fn interim_members(mut scan: Scanner<'_>) -> Option<bool> {
    let mut status = None;
    let complete = scan
        .members(|scan, key| {
            if key != Key::Payload || scan.peek() != Some(b'{') {
                scan.value()?;
                return Some(());
            }
            scan.object(|scan, key| {
                if key == Key::Status && scan.peek() == Some(b'"') {
                    status = Some(scan.string()?.is("accepted"));
                    // Found: stop reading.
                    return None;
                }
                scan.value()?;
                Some(())
            })
        })
        .is_some();
    match status {
        Some(s) => Some(s),
        None if complete => Some(false),
        None => None,
    }
}

/// The keys metering reads (after decoding escapes).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Key {
    Type,
    Id,
    Method,
    Params,
    Ok,
    Payload,
    Status,
    /// One of [`text_params`] (its bit).
    Text(u32),
    Idempotency,
    /// A param naming a parent session ([`SPAWN_PARAMS`]): the request starts a sub-agent.
    Spawn,
    Other,
}

/// Params by which a request asks for a sub-agent: a child session under a parent
/// (`sessions.create {parentSessionKey, spawnDepth}` in OpenClaw 2026.9.6; `spawnedBy` as its
/// sessions record it). Any of them present and not `null` makes [`Request::spawn`].
pub const SPAWN_PARAMS: [&str; 3] = ["parentSessionKey", "spawnDepth", "spawnedBy"];

/// Bit `n` set when some key metering reads is `n` bytes long.
const KEY_LENGTHS: u64 = {
    let names: [&str; 8] = [
        "type",
        "id",
        "method",
        "params",
        "ok",
        "payload",
        "status",
        "idempotencyKey",
    ];
    let mut mask = 0u64;
    let mut i = 0;
    while i < names.len() {
        mask |= 1 << names[i].len();
        i += 1;
    }
    let mut i = 0;
    while i < text_params::NAMES.len() {
        mask |= 1 << text_params::NAMES[i].len();
        i += 1;
    }
    let mut i = 0;
    while i < SPAWN_PARAMS.len() {
        mask |= 1 << SPAWN_PARAMS[i].len();
        i += 1;
    }
    mask
};

impl Key {
    fn of(raw: &[u8], escaped: bool) -> Self {
        // Most keys are not metering's: dismissed by length before any comparison.
        if !escaped && (raw.len() >= 64 || KEY_LENGTHS & (1 << raw.len()) == 0) {
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
            b"payload" => Self::Payload,
            b"status" => Self::Status,
            b"idempotencyKey" => Self::Idempotency,
            b"parentSessionKey" | b"spawnDepth" | b"spawnedBy" => Self::Spawn,
            _ => text_params::NAMES
                .iter()
                .position(|n| n.as_bytes() == name)
                .map_or(Self::Other, |i| Self::Text(1 << i)),
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
#[derive(Debug, Clone, Copy)]
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
    fn object(&mut self, member: impl FnMut(&mut Self, Key) -> Option<()>) -> Option<()> {
        self.expect(b'{')?;
        if self.peek()? == b'}' {
            self.at += 1;
            return Some(());
        }
        self.members(member)
    }

    /// Reads an object's members from the next key to its closing brace.
    fn members(&mut self, mut member: impl FnMut(&mut Self, Key) -> Option<()>) -> Option<()> {
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

/// The `res` the edge answers a request it refuses itself with (the gateway's error shape).
pub fn refused_response(id: &[u8], code: &str, message: &str) -> String {
    serde_json::json!({
        "type": "res",
        "id": serde_json::from_slice::<serde_json::Value>(id).unwrap_or(serde_json::Value::Null),
        "ok": false,
        "error": { "code": code, "message": message, "retryable": false }
    })
    .to_string()
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
    fn sub_agent_requests_are_recognised_however_spelled() {
        let spawn = |text: &str| request(text.as_bytes()).unwrap().spawn;
        assert!(spawn(
            r#"{"type":"req","id":"a","method":"sessions.create","params":{"key":"agent:main:subagent:x","parentSessionKey":"agent:main:main","task":"t"}}"#
        ));
        assert!(spawn(
            r#"{"type":"req","id":"a","method":"agent","params":{"spawnDepth":1}}"#
        ));
        assert!(spawn(
            r#"{"type":"req","id":"a","method":"x","params":{"spawn\u0065dBy":"agent:main:main"}}"#
        ));
        // The last of repeated keys wins, as in the gateway's JSON.parse.
        assert!(!spawn(
            r#"{"type":"req","id":"a","method":"sessions.create","params":{"parentSessionKey":"p","parentSessionKey":null}}"#
        ));
        assert!(!spawn(
            r#"{"type":"req","id":"a","method":"sessions.create","params":{"label":"new chat"}}"#
        ));
        // Only params count: a nested or top-level key of that name is not a spawn.
        assert!(!spawn(
            r#"{"type":"req","id":"a","parentSessionKey":"p","method":"chat.send","params":{"message":"m","meta":{"parentSessionKey":"p"}}}"#
        ));
    }

    #[test]
    fn user_messages_are_recognised() {
        let m = user_message(br#"{"type":"req","id":"a1","method":"chat.send","params":{"sessionKey":"agent:main:main","message":"hi","idempotencyKey":"k1"}}"#).unwrap();
        assert_eq!(m.id, b"\"a1\"");
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

    /// Methods the meter does not know count; those classified as never starting a turn do not,
    /// whatever their params.
    #[test]
    fn unknown_methods_are_turns_and_read_only_ones_are_not() {
        let req = |method: &str, params: &str| {
            request(
                format!(r#"{{"type":"req","id":"x","method":"{method}","params":{params}}}"#)
                    .as_bytes(),
            )
            .unwrap()
            .turn
        };
        assert!(req("no.such.method", "{}"));
        assert!(req("sessions.companion.ask", "{}"));
        assert!(req("wake", r#"{"mode":"now","text":"hi"}"#));
        for method in [
            "health",
            "chat.history",
            "sessions.list",
            "connect",
            "models.list",
        ] {
            assert!(!req(method, r#"{"message":"x","text":"y"}"#), "{method}");
        }
        // A method that is not a string is no method; one that does not decode is unknown.
        assert!(
            !request(br#"{"type":"req","id":"x","method":7}"#)
                .unwrap()
                .turn
        );
        assert!(
            request(br#"{"type":"req","id":"x","method":"\ud800"}"#)
                .unwrap()
                .turn
        );
    }

    #[test]
    fn the_method_table_is_sorted_and_unique() {
        assert!(METHODS.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(
            turn_of("chat.send"),
            Turn::When(text_params::MESSAGE | text_params::TASK)
        );
        let i = METHODS
            .binary_search_by(|(m, _)| m.cmp(&"chat.send"))
            .unwrap();
        assert_eq!(
            METHODS[i].1, CHAT_SEND,
            "the fast path agrees with the table"
        );
        assert_eq!(turn_of("health"), Turn::Never);
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
        let answer = |id: &'static [u8], ok| Some(Answer { id, ok });
        assert_eq!(
            response(br#"{"type":"res","id":"a1","ok":true,"payload":{"runId":"k1"}}"#),
            answer(b"\"a1\"", Some(true))
        );
        assert_eq!(
            response(br#"{"type":"res","id":"a1","ok":false,"error":{"code":"X"}}"#),
            answer(b"\"a1\"", Some(false))
        );
        assert_eq!(
            response(br#"{"id":"a1","payload":{"x":"]"},"ok":true,"type":"res"}"#),
            answer(b"\"a1\"", Some(true))
        );
        // Without an explicit `ok`, or with one cut off by the end of a prefix: not a refusal.
        assert_eq!(
            response(br#"{"type":"res","id":"a1"}"#),
            answer(b"\"a1\"", None)
        );
        assert_eq!(
            response(br#"{"type":"res","id":"a1","ok":false"#),
            answer(b"\"a1\"", None)
        );
        assert_eq!(
            response(br#"{"type":"res","id":"a1","ok":fa"#),
            answer(b"\"a1\"", None)
        );
        assert_eq!(response(br#"{"type":"res","id":"a"#), None);
        assert_eq!(response(br#"{"type":"event","event":"res"}"#), None);
        assert_eq!(response(br#"{"type":"res","ok":true}"#), None);
        assert_eq!(response(b"[]"), None);
    }

    #[test]
    fn interim_answers_are_recognised() {
        let interim = |t: &str| interim_answer(t.as_bytes());
        assert_eq!(
            interim(
                r#"{"type":"res","id":"a","ok":true,"payload":{"runId":"r","status":"accepted"}}"#
            ),
            Some(true)
        );
        assert_eq!(
            interim(
                r#"{"type":"res","id":"a","ok":true,"payload":{"runId":"r","status":"started"}}"#
            ),
            Some(false)
        );
        assert_eq!(interim(r#"{"type":"res","id":"a","ok":true}"#), Some(false));
        assert_eq!(
            interim(r#"{"type":"res","id":"a","ok":true,"payload":{"runId":"r"#),
            None
        );
        // Resumed where the head's scan stopped, as the relay does: the same answers.
        for (text, expected) in [
            (
                r#"{"type":"res","id":"a","ok":true,"payload":{"status":"accepted"}}"#,
                Some(true),
            ),
            (
                r#"{"type":"res","id":"a","ok":true,"payload":{"status":"started"}}"#,
                Some(false),
            ),
            (r#"{"type":"res","id":"a","ok":true}"#, Some(false)),
            (r#"{"type":"res","id":"a","ok":true,"payload":{"x":"#, None),
        ] {
            let (_, rest) = response_head(text.as_bytes()).unwrap();
            assert_eq!(
                interim_answer_after(text.as_bytes(), rest.unwrap()),
                expected,
                "{text}"
            );
        }
        // A payload before the head: read from the start.
        let early = br#"{"payload":{"status":"accepted"},"type":"res","id":"a","ok":true}"#;
        assert_eq!(response_head(early).unwrap().1, None);
        assert_eq!(interim_answer(early), Some(true));
    }

    /// The ids of one string match however they are spelled; others never do.
    #[test]
    fn ids_match_as_decoded_strings() {
        let h = |raw: &str| id_hash(raw.as_bytes());
        assert_eq!(h(r#""e1""#), h(r#""e\u0031""#));
        assert_eq!(h(r#""a/b""#), h(r#""a\/b""#));
        assert_eq!(h(r#""😀""#), h(r#""\ud83d\ude00""#));
        assert_ne!(h(r#""e1""#), h(r#""e2""#));
        for raw in [
            "1",
            "null",
            r#""\ud800""#,
            "\"a",
            "\"",
            r#"{"a":1}"#,
            "\"a\u{1}\"",
        ] {
            assert_eq!(h(raw), None, "{raw}");
        }
        assert_eq!(h(&format!("\"{}\"", "x".repeat(MAX_ID_BYTES))), None);
    }

    /// The classification `serde_json::Value` gives (valid JSON without repeated keys).
    fn reference(text: &str) -> Option<(Value, Option<String>)> {
        let v: Value = serde_json::from_str(text).ok()?;
        let o = v.as_object()?;
        if o.get("type")?.as_str()? != "req" {
            return None;
        }
        let m = o.get("method")?.as_str()?;
        let params = o.get("params").and_then(Value::as_object);
        let present = |k: &str| params.and_then(|p| p.get(k)).is_some_and(|v| !v.is_null());
        let turn = match turn_of(m) {
            Turn::Never => false,
            Turn::Always => true,
            Turn::When(bits) => text_params::NAMES
                .iter()
                .enumerate()
                .any(|(i, n)| bits & (1 << i) != 0 && present(n)),
        };
        if !turn {
            return None;
        }
        let key = match params.and_then(|p| p.get("idempotencyKey")) {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        Some((o.get("id")?.clone(), key))
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
            Just("wake"),
            Just("chat.history"),
            Just("connect"),
            Just("no.such.method")
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

    /// A JSON spelling of `s`: each character plain or escaped (`\uXXXX`, surrogate pairs beyond
    /// the BMP, the short escapes), chosen by `escapes`.
    fn spell(s: &str, escapes: &[u8]) -> String {
        let mut out = String::from("\"");
        for (i, c) in s.chars().enumerate() {
            let how = escapes.get(i).copied().unwrap_or(0) % 3;
            match (c, how) {
                ('"', _) => out.push_str("\\\""),
                ('\\', _) => out.push_str("\\\\"),
                ('\n', 1) => out.push_str("\\n"),
                ('/', 1) => out.push_str("\\/"),
                (c, 0) if c >= ' ' => out.push(c),
                (c, _) => {
                    let mut units = [0u16; 2];
                    for u in c.encode_utf16(&mut units) {
                        out.push_str(&format!("\\u{u:04X}"));
                    }
                }
            }
        }
        out.push('"');
        out
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
                (serde_json::from_slice::<Value>(m.id).unwrap(), m.idempotency_key.map(Cow::into_owned))
            });
            prop_assert_eq!(ours, reference(&text), "{}", text);
        }

        /// Any JSON spelling of one string id matches any other, from the request to its answer;
        /// different strings never match.
        #[test]
        fn any_spelling_of_a_string_id_matches_its_answer(
            id in "(\\PC|[\"\\\\/\n\u{1}])",
            other in "\\PC{0,12}",
            a in proptest::collection::vec(any::<u8>(), 0..16),
            b in proptest::collection::vec(any::<u8>(), 0..16),
        ) {
            let id: String = id.repeat(1 + a.len() % 3) + &other;
            let (sent, answered) = (spell(&id, &a), spell(&id, &b));
            prop_assert_eq!(serde_json::from_str::<String>(&sent).unwrap(), id.clone());
            let req = format!(r#"{{"type":"req","id":{sent},"method":"chat.send","params":{{"message":"x"}}}}"#);
            let res = format!(r#"{{"type":"res","id":{answered},"ok":false}}"#);
            let asked = request(req.as_bytes()).unwrap().id.unwrap();
            let answer = response(res.as_bytes()).unwrap();
            prop_assert_eq!(answer.ok, Some(false));
            prop_assert!(id_hash(asked).is_some());
            prop_assert_eq!(id_hash(asked), id_hash(answer.id));
            let different = spell(&format!("{id}."), &b);
            prop_assert_ne!(id_hash(asked), id_hash(different.as_bytes()));
        }

        /// Arbitrary bytes never panic.
        #[test]
        fn arbitrary_bytes_are_read_safely(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = request(&bytes);
            let _ = response(&bytes);
            let _ = interim_answer(&bytes);
            let _ = id_hash(&bytes);
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
        let v: Value = serde_json::from_str(&refused_response(
            br#""e\u0031""#,
            "DUPLICATE_REQUEST_ID",
            "m",
        ))
        .unwrap();
        assert_eq!(
            (v["id"].as_str(), v["ok"].as_bool()),
            (Some("e1"), Some(false))
        );
    }
}

//! Metering of one proxied gateway WebSocket, both directions, chunk by chunk.
//!
//! Client → gateway: frames pass through untouched except text messages, which are held until
//! complete (at most `max_message_bytes`) so a user message over quota can be withheld whole;
//! everything else (and every decided message) is forwarded as the same bytes, in order. A chunk
//! whose bytes all go through is returned as the same `Bytes` (no copy).
//!
//! **Binary data messages close the connection (1003).** OpenClaw's protocol is JSON in text
//! frames, but its gateway decodes binary messages as text too (`rawDataToString`), so a binary
//! `chat.send` would run; refusing them keeps one parse path, where every message is metered, and
//! costs no client anything (the Control UI, the CLI and the dashboard send text). A data frame
//! with RSV bits set closes it too (1002): the edge strips `Sec-WebSocket-Extensions` from the
//! upgrade, so no extension such as permessage-deflate can change the framing under the meter.
//!
//! **Counting.** A turn ([`crate::classify`]) is counted when it is forwarded: its reservation
//! counts unless the gateway answers its id with an explicit `ok: false` (a refund); a connection
//! closed with turns in flight keeps them counted. So that every answer is matched to the right
//! request, ids are compared decoded ([`classify::id_hash`]), a request whose id is already
//! waiting for an answer is refused by the edge if either is a turn (the gateway answers each;
//! an `ok: false` to one must not refund the other), and the ids of the other requests in flight
//! are tracked too, up to [`MAX_TRACKED_REQUESTS`] (beyond, refunds stop for the connection).
//!
//! Gateway → client: frames are parsed to find `res` answers to requests in flight (only while
//! there are some) and message boundaries, where the edge's own `res` for a refused request is
//! inserted. An answer's head (`type`, `id`, `ok`) is read from its first
//! `MAX_INSPECTED_RESPONSE` (64 KiB) bytes, however large the answer.
//!
//! Cost (`benches/metering.rs`, `METER_ALONE=1`, `chat.send` with answer and event): about
//! 570 ns per send, of which about 90 ns is the id bookkeeping above (decoded ids, the duplicate
//! check, reading `payload.status` of each answer to a turn); no allocation per frame beyond the
//! held message and the maps' growth.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};
use clawdeploy_config::Tier;

use crate::classify;
use crate::frames::{encode_frame, opcode, FrameError, FrameEvent, FrameParser};
use crate::quota::{Admission, BuildPreHashed, Meter, Reservation, UsageHandle};

/// Turns in flight by the hash of their request id ([`classify::id_hash`]).
type Pending = HashMap<u64, Reservation, BuildPreHashed>;

/// Other requests in flight: id hash → how many.
type Outstanding = HashMap<u64, u32, BuildPreHashed>;

/// Of a server message, at most this many bytes are kept to read its head.
const MAX_INSPECTED_RESPONSE: usize = 64 * 1024;

/// Non-turn requests in flight tracked per connection; a client with more stops getting refunds.
pub const MAX_TRACKED_REQUESTS: usize = 1024;

/// Why the relay must stop.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The client's bytes are not valid WebSocket framing (closed with 1002).
    #[error("the client sent invalid WebSocket framing: {0}")]
    ClientFraming(FrameError),
    /// The gateway's bytes are not valid WebSocket framing (closed with 1011).
    #[error("the gateway sent invalid WebSocket framing: {0}")]
    ServerFraming(FrameError),
    /// A client text message grew past `max_message_bytes` (the limit, in bytes; closed with 1009).
    #[error("a client message exceeds {0} bytes")]
    MessageTooBig(usize),
    /// A client binary data message: refused, since the gateway would read it as text (closed with
    /// 1003).
    #[error("the client sent a binary message (the gateway protocol is text)")]
    BinaryMessage,
    /// A client data frame with RSV bits set, meaning an extension nobody negotiated (closed with
    /// 1002).
    #[error("the client set RSV bits (no extension is negotiated)")]
    ReservedBits,
}

impl RelayError {
    /// The close frame to send the client before tearing down.
    pub fn close_frame(&self) -> Vec<u8> {
        match self {
            Self::MessageTooBig(max) => {
                crate::frames::close_frame(1009, &format!("message larger than {max} bytes"))
            }
            Self::ClientFraming(_) => crate::frames::close_frame(1002, "invalid framing"),
            Self::BinaryMessage => crate::frames::close_frame(
                1003,
                "binary messages are not accepted: send JSON in text frames",
            ),
            Self::ReservedBits => {
                crate::frames::close_frame(1002, "RSV bits set: no extension is negotiated")
            }
            Self::ServerFraming(_) => crate::frames::close_frame(1011, "gateway framing error"),
        }
    }
}

struct RelayMetrics {
    frames_up: metrics::Counter,
    frames_down: metrics::Counter,
    bytes_up: metrics::Counter,
    bytes_down: metrics::Counter,
}

fn relay_metrics() -> &'static RelayMetrics {
    // Created on first use, after the recorder is installed; handles avoid a registry lookup per chunk.
    static METRICS: OnceLock<RelayMetrics> = OnceLock::new();
    METRICS.get_or_init(|| RelayMetrics {
        frames_up: metrics::counter!("clawdeploy_ws_frames_total", "direction" => "up"),
        frames_down: metrics::counter!("clawdeploy_ws_frames_total", "direction" => "down"),
        bytes_up: metrics::counter!("clawdeploy_ws_bytes_total", "direction" => "up"),
        bytes_down: metrics::counter!("clawdeploy_ws_bytes_total", "direction" => "down"),
    })
}

/// What one instance's WebSocket is metered against.
#[derive(Clone)]
pub struct RelayTarget {
    /// The node's counters, which admit or refuse each turn.
    pub meter: Arc<Meter>,
    /// The instance behind the WebSocket (its id, a UUID in text form).
    pub instance_id: Arc<str>,
    /// The instance's tier when the connection opened; a newer one from the route table wins (see
    /// [`Meter::update_tier`]).
    pub tier: Tier,
    /// The owner's billing anchor (paid tiers count per period from it).
    pub billing_anchor_ms: Option<i64>,
    /// The largest client text message held while it is decided (bytes,
    /// `metering.max_message_bytes`); a larger one closes the WebSocket with 1009.
    pub max_message_bytes: usize,
    /// Where a quota refusal sends the user to upgrade (`details.upgradeUrl` of the refusal).
    pub upgrade_url: Arc<str>,
    /// Whether this connection may ask for sub-agents: only the platform's own (the control
    /// API's `/api/agents`, which keeps to the tier's number running), and only on a tier that has
    /// them. OpenClaw 2026.9.6 caps the model's spawns by config but not a client's child sessions,
    /// so any other connection's request is answered here.
    pub spawns_allowed: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Hold {
    /// Bytes are forwarded as they come.
    None,
    /// A frame header split across reads: its fate is known once it is complete.
    PartialHeader,
    /// Inside a text message.
    Text,
}

/// Both directions of one metered WebSocket.
pub struct WsRelay {
    target: RelayTarget,
    usage: UsageHandle,
    client: FrameParser,
    hold: Hold,
    /// Undecided bytes from earlier chunks.
    held: Vec<u8>,
    /// The unmasked text of the held message.
    message: Vec<u8>,
    current_control: bool,
    current_fin: bool,
    /// Requests in flight (see [`Pending`], [`Outstanding`]).
    pending: Pending,
    outstanding: Outstanding,
    /// More than [`MAX_TRACKED_REQUESTS`] were in flight: answers are no longer unambiguous, so
    /// no turn of this connection is refunded.
    untracked: bool,
    /// What to forward of the chunk being processed (kept to reuse its allocation).
    segments: Vec<Seg>,
    server: FrameParser,
    server_in_message: bool,
    server_collect: bool,
    server_message: Vec<u8>,
    server_current_control: bool,
    server_current_fin: bool,
    server_current_len: u64,
    /// Frames for the client, inserted at the next message boundary of the gateway's stream.
    injections: Vec<Vec<u8>>,
}

impl WsRelay {
    /// A relay at the start of both streams, metered against `target`.
    pub fn new(target: RelayTarget) -> Self {
        Self {
            usage: target.meter.handle(&target.instance_id),
            target,
            client: FrameParser::new(),
            hold: Hold::None,
            held: Vec::new(),
            message: Vec::new(),
            current_control: false,
            current_fin: false,
            pending: Pending::default(),
            outstanding: Outstanding::default(),
            untracked: false,
            segments: Vec::new(),
            server: FrameParser::new(),
            server_in_message: false,
            server_collect: false,
            server_message: Vec::new(),
            server_current_control: false,
            server_current_fin: false,
            server_current_len: 0,
            injections: Vec::new(),
        }
    }

    /// Sends waiting for the gateway's answer.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// True when the gateway's stream is between frames: a frame may be inserted here.
    pub fn server_at_frame_boundary(&self) -> bool {
        self.server.at_frame_boundary()
    }

    /// Frames for the client that could be written now: the gateway's stream is between messages.
    pub fn take_injections_if_at_boundary(&mut self) -> Vec<Vec<u8>> {
        if self.server.at_message_boundary() && !self.injections.is_empty() {
            std::mem::take(&mut self.injections)
        } else {
            Vec::new()
        }
    }

    /// Processes client → gateway bytes; returns what to forward.
    pub fn client_chunk(&mut self, chunk: Bytes) -> Result<Bytes, RelayError> {
        let m = relay_metrics();
        m.bytes_up.increment(chunk.len() as u64);
        let mut frames = 0u64;
        let mut error = None;
        let max = self.target.max_message_bytes;
        let Self {
            target,
            usage,
            client,
            hold,
            held,
            message,
            current_control,
            current_fin,
            pending,
            outstanding,
            untracked,
            segments: out,
            injections,
            ..
        } = self;
        let mut book = Book {
            pending,
            outstanding,
            untracked,
        };
        out.clear();
        // Start of the bytes not yet assigned (forwarded or held) in this chunk.
        let mut cursor = 0usize;
        let mut undecided_from: Option<usize> = match *hold {
            Hold::None => None,
            _ => Some(0),
        };
        let result = client.feed(&chunk, |event| match event {
            FrameEvent::Header { header, end } => {
                *current_control = header.is_control();
                *current_fin = header.fin;
                if header.opcode == opcode::BINARY || header.rsv != 0 {
                    // Nothing of this frame is forwarded: its header is the first of its bytes
                    // reported (a partial one is held).
                    error.get_or_insert(if header.rsv != 0 {
                        RelayError::ReservedBits
                    } else {
                        RelayError::BinaryMessage
                    });
                }
                match *hold {
                    Hold::None if header.opcode == opcode::TEXT => {
                        *hold = Hold::Text;
                        message.clear();
                        // What came before this header is forwarded.
                        undecided_from = Some(cursor);
                    }
                    Hold::PartialHeader if header.opcode == opcode::TEXT => {
                        *hold = Hold::Text;
                        message.clear();
                    }
                    Hold::PartialHeader => {
                        // Not the start of a text message: the held header bytes go out.
                        *hold = Hold::None;
                        out.push(Seg::Held(std::mem::take(held)));
                        out.push(Seg::Range(0, end));
                        undecided_from = None;
                        cursor = end;
                        return;
                    }
                    _ => {}
                }
                if undecided_from.is_none() {
                    out.push(Seg::Range(cursor, end));
                    cursor = end;
                }
            }
            FrameEvent::Payload { data: payload, end } => {
                if *hold == Hold::Text && !*current_control {
                    if message.len() + payload.raw.len() > max {
                        error.get_or_insert(RelayError::MessageTooBig(max));
                    } else {
                        payload.unmask_into(message);
                    }
                }
                if undecided_from.is_none() {
                    out.push(Seg::Range(cursor, end));
                    cursor = end;
                }
            }
            FrameEvent::FrameEnd { end } => {
                frames += 1;
                if *hold == Hold::Text && !*current_control && *current_fin {
                    // The text message is complete: decide on it. Its bytes start in this
                    // chunk, or in `held` when an earlier chunk began it.
                    let start = undecided_from.take().unwrap_or(0);
                    let earlier = std::mem::take(held);
                    if error.is_none() && decide(target, usage, &mut book, injections, message) {
                        if !earlier.is_empty() {
                            out.push(Seg::Held(earlier));
                        }
                        out.push(Seg::Range(start, end));
                    }
                    *hold = Hold::None;
                    cursor = end;
                } else if undecided_from.is_none() {
                    out.push(Seg::Range(cursor, end));
                    cursor = end;
                }
            }
        });
        result.map_err(RelayError::ClientFraming)?;
        // Whatever is left is undecided: a held message or a partial header.
        let tail_from = undecided_from.unwrap_or(cursor);
        if tail_from < chunk.len() {
            if *hold == Hold::None {
                *hold = Hold::PartialHeader;
            }
            held.extend_from_slice(&chunk[tail_from..]);
            if held.len() > max.saturating_add(14 * 1024) {
                error.get_or_insert(RelayError::MessageTooBig(max));
            }
        }
        if let Some(e) = error {
            return Err(e);
        }
        m.frames_up.increment(frames);
        // Fast path: the whole chunk goes out unchanged.
        if covers(out, chunk.len()) {
            return Ok(chunk);
        }
        let mut buf = BytesMut::new();
        for seg in out.drain(..) {
            match seg {
                Seg::Range(a, b) => buf.extend_from_slice(&chunk[a..b]),
                Seg::Held(v) => buf.extend_from_slice(&v),
            }
        }
        Ok(buf.freeze())
    }

    /// Processes gateway → client bytes; returns what to send the client (with any refusals the
    /// edge answers inserted at message boundaries).
    pub fn server_chunk(&mut self, chunk: Bytes) -> Result<Bytes, RelayError> {
        let m = relay_metrics();
        m.bytes_down.increment(chunk.len() as u64);
        let mut frames = 0u64;
        // Offsets after which the stream is between messages (candidates for insertion).
        let mut boundaries: Vec<usize> = Vec::new();
        let want_boundaries = !self.injections.is_empty();
        if want_boundaries && self.server.at_message_boundary() {
            boundaries.push(0);
        }
        let Self {
            server,
            server_in_message,
            server_collect,
            server_message,
            server_current_control,
            server_current_fin,
            server_current_len,
            pending,
            outstanding,
            untracked,
            ..
        } = self;
        let mut book = Book {
            pending,
            outstanding,
            untracked,
        };
        server
            .feed(&chunk, |event| match event {
                FrameEvent::Header { header, .. } => {
                    *server_current_control = header.is_control();
                    *server_current_fin = header.fin;
                    *server_current_len = header.payload_len;
                    if !header.is_control() {
                        match header.opcode {
                            opcode::TEXT => {
                                // Only answers to requests in flight matter.
                                *server_collect = book.awaiting();
                                server_message.clear();
                            }
                            opcode::CONTINUATION => {}
                            _ => *server_collect = false,
                        }
                        *server_in_message = !header.fin;
                    }
                }
                FrameEvent::Payload { data, .. } => {
                    if *server_collect && !*server_current_control {
                        if *server_current_fin
                            && server_message.is_empty()
                            && data.mask.is_none()
                            && data.raw.len() as u64 == *server_current_len
                        {
                            // The usual case: a whole unmasked message in one read, read in place.
                            book.settle(data.raw);
                            *server_collect = false;
                        } else {
                            data.unmask_into(server_message);
                            if server_message.len() >= MAX_INSPECTED_RESPONSE {
                                // A large answer: its head is in its first bytes.
                                server_message.truncate(MAX_INSPECTED_RESPONSE);
                                book.settle(server_message);
                                server_message.clear();
                                *server_collect = false;
                            }
                        }
                    }
                }
                FrameEvent::FrameEnd { end } => {
                    frames += 1;
                    if !*server_current_control && *server_current_fin && *server_collect {
                        book.settle(server_message);
                        *server_collect = false;
                    }
                    if want_boundaries && !*server_in_message {
                        boundaries.push(end);
                    }
                }
            })
            .map_err(RelayError::ServerFraming)?;
        m.frames_down.increment(frames);
        let Some(&at) = boundaries.first() else {
            return Ok(chunk);
        };
        let mut buf = BytesMut::with_capacity(chunk.len() + 256);
        buf.extend_from_slice(&chunk[..at]);
        for frame in self.injections.drain(..) {
            buf.extend_from_slice(&frame);
        }
        buf.extend_from_slice(&chunk[at..]);
        Ok(buf.freeze())
    }
}

/// The requests of one connection in flight, borrowed from [`WsRelay`].
struct Book<'a> {
    pending: &'a mut Pending,
    outstanding: &'a mut Outstanding,
    untracked: &'a mut bool,
}

impl Book<'_> {
    /// True when some request waits for its answer.
    fn awaiting(&self) -> bool {
        !self.pending.is_empty() || !self.outstanding.is_empty()
    }

    /// Tracks a request that is not a counted turn until its answer.
    fn track(&mut self, id: u64) {
        if *self.untracked {
            return;
        }
        if self.outstanding.len() >= MAX_TRACKED_REQUESTS {
            // A client that never reads its answers: stop tracking, and refunding.
            *self.untracked = true;
            self.outstanding.clear();
            return;
        }
        *self.outstanding.entry(id).or_insert(0) += 1;
    }

    /// Settles the request a gateway message answers, if it is a `res` to one in flight: a turn
    /// is counted unless the answer is an explicit `ok: false`.
    fn settle(&mut self, text: &[u8]) {
        let Some((answer, rest)) = classify::response_head(text) else {
            return;
        };
        let Some(id) = classify::id_hash(answer.id) else {
            return;
        };
        let interim = || match rest {
            Some(at) => classify::interim_answer_after(text, at),
            None => classify::interim_answer(text),
        };
        if let Some(reservation) = self.pending.remove(&id) {
            let refund = answer.ok == Some(false) && !*self.untracked;
            reservation.commit(!refund);
            // After an interim answer the gateway answers this id again: it stays in use, so a
            // later `ok: false` cannot refund another turn that reused it. Unknown counts as
            // interim here.
            if !refund && interim() != Some(false) {
                self.track(id);
            }
        } else if let Some(n) = self.outstanding.get_mut(&id) {
            let interim = answer.ok == Some(true) && interim() == Some(true);
            if !interim {
                *n -= 1;
                if *n == 0 {
                    self.outstanding.remove(&id);
                }
            }
        }
    }
}

/// True to forward a complete client text message; a refused one gets the edge's own `res`.
fn decide(
    target: &RelayTarget,
    usage: &UsageHandle,
    book: &mut Book<'_>,
    injections: &mut Vec<Vec<u8>>,
    text: &[u8],
) -> bool {
    let Some(req) = classify::request(text) else {
        return true;
    };
    let id = req.id.and_then(classify::id_hash);
    let refuse = |injections: &mut Vec<Vec<u8>>, code: &str, message: &str| {
        tracing::info!(instance = %target.instance_id, method = %req.method(), code, "request refused by the gateway meter");
        let text = classify::refused_response(req.id.unwrap_or(b"null"), code, message);
        injections.push(text_frame(&text));
        false
    };
    // A client's sub-agent request never reaches the gateway unless it comes from the platform
    // (see `RelayTarget::spawns_allowed`): OpenClaw does not cap a client's child sessions.
    if req.spawn {
        let cap = target.meter.tiers().get(target.tier).subagents;
        if cap == 0 {
            return refuse(
                injections,
                "SUBAGENT_LIMIT",
                &format!(
                    "The {} tier runs the main agent only; sub-agents come with a paid tier: {}",
                    target.tier, target.upgrade_url
                ),
            );
        }
        if !target.spawns_allowed {
            return refuse(
                injections,
                "SUBAGENT_LIMIT",
                &format!(
                    "Start sub-agents from the dashboard or POST /api/agents, which keep to the {} tier's {cap} at once.",
                    target.tier
                ),
            );
        }
    }
    if !req.turn {
        if let Some(id) = id {
            if book.pending.contains_key(&id) {
                return refuse(injections, "DUPLICATE_REQUEST_ID", DUPLICATE_ID);
            }
            book.track(id);
        }
        return true;
    }
    let Some(id) = id else {
        return refuse(
            injections,
            "INVALID_REQUEST",
            "A request that can start an agent turn needs an id: a string of at most 1024 bytes.",
        );
    };
    if book.outstanding.contains_key(&id) {
        return refuse(injections, "DUPLICATE_REQUEST_ID", DUPLICATE_ID);
    }
    let slot = match book.pending.entry(id) {
        std::collections::hash_map::Entry::Occupied(_) => {
            return refuse(injections, "DUPLICATE_REQUEST_ID", DUPLICATE_ID);
        }
        std::collections::hash_map::Entry::Vacant(slot) => slot,
    };
    let t = target;
    match t.meter.admit_to(
        usage,
        &t.instance_id,
        t.tier,
        t.billing_anchor_ms,
        req.idempotency_key.as_deref(),
    ) {
        Admission::Forward(reservation) => {
            slot.insert(reservation);
            true
        }
        Admission::Retry => {
            book.track(id);
            true
        }
        Admission::Refuse(refusal) => {
            let text = classify::quota_exceeded_response(
                &String::from_utf8_lossy(req.id.unwrap_or(b"null")),
                refusal.limit,
                refusal.used,
                &refusal.resets_at,
                &t.upgrade_url,
            );
            tracing::info!(
                instance = %t.instance_id,
                method = %req.method(),
                limit = refusal.limit,
                "user message refused: monthly quota reached"
            );
            injections.push(text_frame(&text));
            false
        }
    }
}

const DUPLICATE_ID: &str =
    "Another request with this id is still waiting for its answer: give every request its own id.";

/// One unmasked text frame (server to client).
fn text_frame(text: &str) -> Vec<u8> {
    let mut frame = Vec::with_capacity(text.len() + 4);
    encode_frame(true, opcode::TEXT, None, text.as_bytes(), &mut frame);
    frame
}

enum Seg {
    /// Bytes `start..end` of the chunk.
    Range(usize, usize),
    /// Bytes held from earlier chunks.
    Held(Vec<u8>),
}

/// True when consecutive ranges cover `0..len` exactly.
fn covers(segs: &[Seg], len: usize) -> bool {
    let mut at = 0;
    for s in segs {
        match s {
            Seg::Range(a, b) if *a == at => at = *b,
            _ => return false,
        }
    }
    at == len
}

#[cfg(test)]
mod tests {
    use super::*;
    use clawdeploy_config::TiersConfig;
    use proptest::prelude::*;

    /// One client message: a user message (chat.send) or something else, fragmented into
    /// `fragments` frames with a ping after the first.
    #[derive(Debug, Clone)]
    struct Msg {
        user: bool,
        filler: String,
        fragments: usize,
        ping: bool,
    }

    fn encode(i: usize, m: &Msg) -> Vec<u8> {
        let text = if m.user {
            format!(
                r#"{{"type":"req","id":"r{i}","method":"chat.send","params":{{"message":"{}","idempotencyKey":"k{i}"}}}}"#,
                m.filler
            )
        } else {
            format!(
                r#"{{"type":"req","id":"r{i}","method":"chat.history","params":{{"note":"{}"}}}}"#,
                m.filler
            )
        };
        let bytes = text.as_bytes();
        let n = m.fragments.clamp(1, bytes.len());
        let size = bytes.len().div_ceil(n);
        let mut out = Vec::new();
        for (f, piece) in bytes.chunks(size).enumerate() {
            let last = (f + 1) * size >= bytes.len();
            let op = if f == 0 {
                opcode::TEXT
            } else {
                opcode::CONTINUATION
            };
            encode_frame(last, op, Some([i as u8, 7, f as u8, 3]), piece, &mut out);
            if f == 0 && m.ping && !last {
                encode_frame(true, opcode::PING, Some([1, 2, 3, 4]), b"hi", &mut out);
            }
        }
        out
    }

    fn msg() -> impl Strategy<Value = Msg> {
        (any::<bool>(), "[a-z ]{0,300}", 1usize..5, any::<bool>()).prop_map(
            |(user, filler, fragments, ping)| Msg {
                user,
                filler,
                fragments,
                ping,
            },
        )
    }

    /// Read boundaries for a stream of `len` bytes: 0, the cuts, `len`, in order.
    fn split_points(len: usize, cuts: &[prop::sample::Index]) -> Vec<usize> {
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(len + 1)).collect();
        points.push(0);
        points.push(len);
        points.sort_unstable();
        points
    }

    /// A relay for instance `i` of `tier`.
    fn relay(meter: Arc<Meter>, tier: Tier) -> WsRelay {
        WsRelay::new(RelayTarget {
            meter,
            instance_id: Arc::from("i"),
            tier,
            billing_anchor_ms: None,
            max_message_bytes: 1 << 20,
            upgrade_url: Arc::from("https://x/billing"),
            spawns_allowed: false,
        })
    }

    /// A client's sub-agent request is answered by the edge, never forwarded: on a tier without
    /// sub-agents always, on one with them unless the connection is the platform's.
    #[test]
    fn sub_agents_past_the_tier_cap_never_reach_the_gateway() {
        let spawn = br#"{"type":"req","id":"s1","method":"sessions.create","params":{"key":"agent:main:subagent:x","parentSessionKey":"agent:main:main","task":"research"}}"#;
        let mut frame = Vec::new();
        encode_frame(true, opcode::TEXT, Some([1, 2, 3, 4]), spawn, &mut frame);
        let meter = Arc::new(Meter::new(TiersConfig::default()));
        let mut free = relay(meter.clone(), Tier::Free);
        assert!(free
            .client_chunk(Bytes::from(frame.clone()))
            .unwrap()
            .is_empty());
        let answers = free.take_injections_if_at_boundary();
        assert_eq!(answers.len(), 1);
        let text = String::from_utf8_lossy(&answers[0]);
        assert!(
            text.contains(r#""id":"s1""#) && text.contains("SUBAGENT_LIMIT"),
            "{text}"
        );
        assert!(text.contains("https://x/billing"), "{text}");
        // On Pro, a client's own connection is refused too (OpenClaw would not cap its child
        // sessions); the platform's connection passes.
        let mut pro = relay(meter.clone(), Tier::Pro);
        assert!(pro
            .client_chunk(Bytes::from(frame.clone()))
            .unwrap()
            .is_empty());
        let answers = pro.take_injections_if_at_boundary();
        assert!(String::from_utf8_lossy(&answers[0]).contains("POST /api/agents"));
        let mut platform = relay(meter, Tier::Pro);
        platform.target.spawns_allowed = true;
        assert_eq!(
            &platform.client_chunk(Bytes::from(frame.clone())).unwrap()[..],
            &frame[..]
        );
        assert!(platform.take_injections_if_at_boundary().is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Whatever the fragmentation and however the bytes are split into reads, exactly the
        /// frames of refused user messages are withheld, and one refusal is answered for each.
        #[test]
        fn relay_withholds_exactly_the_refused_messages(
            msgs in proptest::collection::vec(msg(), 1..12),
            limit in 0u64..6,
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..20),
        ) {
            let mut tiers = TiersConfig::default();
            tiers.free.messages_per_month = limit.max(1);
            let limit = limit.max(1);
            let mut relay = relay(Arc::new(Meter::new(tiers)), Tier::Free);
            let mut stream = Vec::new();
            let mut expected = Vec::new();
            let mut users = 0u64;
            let mut refused = 0;
            for (i, m) in msgs.iter().enumerate() {
                let bytes = encode(i, m);
                stream.extend_from_slice(&bytes);
                // Nothing is answered, so every admitted send stays in flight.
                if m.user {
                    users += 1;
                    if users > limit {
                        refused += 1;
                        continue;
                    }
                }
                expected.extend_from_slice(&bytes);
            }
            let points = split_points(stream.len(), &cuts);
            let mut out = Vec::new();
            for w in points.windows(2) {
                let chunk = Bytes::copy_from_slice(&stream[w[0]..w[1]]);
                out.extend_from_slice(&relay.client_chunk(chunk).unwrap());
            }
            prop_assert_eq!(out, expected);
            prop_assert_eq!(relay.take_injections_if_at_boundary().len(), refused);
            prop_assert_eq!(relay.in_flight() as u64, users.min(limit));
        }

        /// However the gateway's answers are split into reads (a `res` whole in one read, or
        /// spread over several, between events), every send in flight is settled once.
        #[test]
        fn answers_split_anywhere_settle_every_send(
            sends in 1usize..8,
            event_len in 0usize..300,
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..20),
        ) {
            let meter = Arc::new(Meter::new(TiersConfig::default()));
            let mut relay = relay(meter.clone(), Tier::Pro);
            let mut stream = Vec::new();
            for i in 0..sends {
                let user = Msg { user: true, filler: String::new(), fragments: 1, ping: false };
                relay.client_chunk(Bytes::from(encode(i, &user))).unwrap();
                let event = format!(r#"{{"type":"event","event":"chat","payload":"{}"}}"#, "e".repeat(event_len));
                encode_frame(true, opcode::TEXT, None, event.as_bytes(), &mut stream);
                let res = format!(r#"{{"type":"res","id":"r{i}","ok":true,"payload":{{"runId":"k{i}"}}}}"#);
                encode_frame(true, opcode::TEXT, None, res.as_bytes(), &mut stream);
            }
            prop_assert_eq!(relay.in_flight(), sends);
            let points = split_points(stream.len(), &cuts);
            let mut out = Vec::new();
            for w in points.windows(2) {
                out.extend_from_slice(&relay.server_chunk(Bytes::copy_from_slice(&stream[w[0]..w[1]])).unwrap());
            }
            prop_assert_eq!(out, stream);
            prop_assert_eq!(relay.in_flight(), 0);
            prop_assert_eq!(meter.usage("i", crate::Plan::CALENDAR).0, sends as u64);
        }

        /// The parser reassembles the same messages from any split of the stream.
        #[test]
        fn parser_reassembles_messages_from_any_split(
            msgs in proptest::collection::vec(msg(), 1..10),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..30),
        ) {
            let stream: Vec<u8> = msgs.iter().enumerate().flat_map(|(i, m)| encode(i, m)).collect();
            let points = split_points(stream.len(), &cuts);
            let mut parser = FrameParser::new();
            let (mut texts, mut current, mut control) = (Vec::new(), Vec::new(), false);
            let mut fin = false;
            for w in points.windows(2) {
                parser.feed(&stream[w[0]..w[1]], |e| match e {
                    FrameEvent::Header { header, .. } => { control = header.is_control(); fin = header.fin; }
                    FrameEvent::Payload { data, .. } => if !control { data.unmask_into(&mut current) },
                    FrameEvent::FrameEnd { .. } => if !control && fin { texts.push(std::mem::take(&mut current)) },
                }).unwrap();
            }
            prop_assert!(parser.at_message_boundary());
            prop_assert_eq!(texts.len(), msgs.len());
            for (i, text) in texts.iter().enumerate() {
                let v: serde_json::Value = serde_json::from_slice(text).unwrap();
                prop_assert_eq!(v["id"].as_str().unwrap(), format!("r{i}"));
            }
        }
    }

    /// A client text frame (masked).
    fn client_text(text: &str) -> Bytes {
        let mut out = Vec::new();
        encode_frame(
            true,
            opcode::TEXT,
            Some([7, 1, 9, 4]),
            text.as_bytes(),
            &mut out,
        );
        Bytes::from(out)
    }

    /// A gateway text frame (unmasked).
    fn server_text(text: &str) -> Bytes {
        let mut out = Vec::new();
        encode_frame(true, opcode::TEXT, None, text.as_bytes(), &mut out);
        Bytes::from(out)
    }

    fn send(id_json: &str, key: &str) -> String {
        format!(
            r#"{{"type":"req","id":{id_json},"method":"chat.send","params":{{"message":"m","idempotencyKey":"{key}"}}}}"#
        )
    }

    /// The edge's own answers waiting for the client, parsed.
    fn injected(relay: &mut WsRelay) -> Vec<serde_json::Value> {
        relay
            .take_injections_if_at_boundary()
            .iter()
            .map(|frame| {
                let mut parser = FrameParser::new();
                let mut text = Vec::new();
                parser
                    .feed(frame, |e| {
                        if let FrameEvent::Payload { data, .. } = e {
                            data.unmask_into(&mut text)
                        }
                    })
                    .unwrap();
                serde_json::from_slice(&text).unwrap()
            })
            .collect()
    }

    /// A JSON spelling of `s` with the characters chosen by `escape` written as `\uXXXX`.
    fn spelled(s: &str, escape: &[bool]) -> String {
        let mut out = String::from("\"");
        for (i, c) in s.chars().enumerate() {
            if escape.get(i).copied().unwrap_or(false) || c == '"' || c == '\\' || c < ' ' {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            } else {
                out.push(c);
            }
        }
        out.push('"');
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// However the client and the gateway spell one string id, the gateway's answer settles
        /// the send: `ok:false` refunds it, anything else counts it.
        #[test]
        fn any_spelling_of_an_id_settles_its_send(
            id in "\\PC{1,12}",
            sent in proptest::collection::vec(any::<bool>(), 0..12),
            answered in proptest::collection::vec(any::<bool>(), 0..12),
            ok in prop_oneof![Just("true"), Just("false"), Just("null")],
        ) {
            let meter = Arc::new(Meter::new(TiersConfig::default()));
            let mut relay = relay(meter.clone(), Tier::Pro);
            let out = relay.client_chunk(client_text(&send(&spelled(&id, &sent), "k"))).unwrap();
            prop_assert!(!out.is_empty());
            prop_assert_eq!(relay.in_flight(), 1);
            let res = format!(r#"{{"type":"res","id":{},"ok":{ok}}}"#, spelled(&id, &answered));
            relay.server_chunk(server_text(&res)).unwrap();
            prop_assert_eq!(relay.in_flight(), 0);
            let counted = if ok == "false" { 0 } else { 1 };
            prop_assert_eq!(meter.usage("i", crate::Plan::CALENDAR).0, counted);
        }
    }

    #[test]
    fn binary_messages_and_rsv_bits_close_the_connection() {
        let meter = Arc::new(Meter::new(TiersConfig::default()));
        let mut binary = Vec::new();
        encode_frame(
            true,
            opcode::BINARY,
            Some([1, 2, 3, 4]),
            send(r#""b""#, "k").as_bytes(),
            &mut binary,
        );
        let mut r = relay(meter.clone(), Tier::Pro);
        let e = r.client_chunk(Bytes::from(binary)).unwrap_err();
        assert!(matches!(e, RelayError::BinaryMessage), "{e}");
        assert_eq!(
            u16::from_be_bytes([e.close_frame()[2], e.close_frame()[3]]),
            1003
        );
        let mut compressed = client_text(&send(r#""c""#, "k")).to_vec();
        compressed[0] |= 0x40;
        let mut r = relay(meter.clone(), Tier::Pro);
        let e = r.client_chunk(Bytes::from(compressed)).unwrap_err();
        assert!(matches!(e, RelayError::ReservedBits), "{e}");
        assert_eq!(
            meter.usage("i", crate::Plan::CALENDAR).0,
            0,
            "nothing admitted"
        );
    }

    /// Two requests with one id in flight would make the gateway's answers ambiguous: the second
    /// is refused by the edge, whichever is the turn.
    #[test]
    fn a_request_reusing_an_id_in_flight_is_refused() {
        let meter = Arc::new(Meter::new(TiersConfig::default()));
        let mut relay = relay(meter.clone(), Tier::Pro);
        let history = r#"{"type":"req","id":"h","method":"chat.history","params":{}}"#;
        let one_write = [
            history.to_string(),
            send(r#""e1""#, "a"),
            send(r#""e\u0031""#, "b"),
            send(r#""h""#, "c"),
            history.replace(r#""h""#, r#""e1""#),
        ]
        .iter()
        .flat_map(|t| client_text(t).to_vec())
        .collect::<Vec<u8>>();
        relay.client_chunk(Bytes::from(one_write)).unwrap();
        let refused = injected(&mut relay);
        let codes: Vec<(&str, &str)> = refused
            .iter()
            .map(|v| {
                (
                    v["id"].as_str().unwrap(),
                    v["error"]["code"].as_str().unwrap(),
                )
            })
            .collect();
        // `e\u0031` and the second history are `e1`; the third send's `h` is the history's.
        assert_eq!(
            codes,
            [
                ("e1", "DUPLICATE_REQUEST_ID"),
                ("h", "DUPLICATE_REQUEST_ID"),
                ("e1", "DUPLICATE_REQUEST_ID")
            ]
        );
        assert_eq!(relay.in_flight(), 1);
        // The history's answer (ok:false) settles the history, not a send.
        relay
            .server_chunk(server_text(r#"{"type":"res","id":"h","ok":false}"#))
            .unwrap();
        relay
            .server_chunk(server_text(r#"{"type":"res","id":"e1","ok":true}"#))
            .unwrap();
        assert_eq!(meter.usage("i", crate::Plan::CALENDAR).0, 1);
        // A turn without a usable id is refused too: its answer could never be matched.
        relay.client_chunk(client_text(&send("7", "n"))).unwrap();
        assert_eq!(injected(&mut relay)[0]["error"]["code"], "INVALID_REQUEST");
    }

    /// An answer too large to keep is settled from its first bytes; one the edge cannot read is
    /// no refund, and a connection closed with sends in flight keeps them counted.
    #[test]
    fn large_answers_are_read_from_their_head_and_unanswered_sends_count() {
        let meter = Arc::new(Meter::new(TiersConfig::default()));
        let mut relay = relay(meter.clone(), Tier::Pro);
        let key = "k".repeat(200_000);
        relay
            .client_chunk(client_text(&send(r#""big""#, &key)))
            .unwrap();
        relay
            .client_chunk(client_text(&send(r#""gone""#, "g")))
            .unwrap();
        let res =
            format!(r#"{{"type":"res","id":"big","ok":false,"payload":{{"runId":"{key}"}}}}"#);
        let frame = server_text(&res);
        // In several reads, as a large message arrives.
        for piece in frame.chunks(16 * 1024) {
            relay.server_chunk(Bytes::copy_from_slice(piece)).unwrap();
        }
        assert_eq!(relay.in_flight(), 1);
        assert_eq!(
            meter.usage("i", crate::Plan::CALENDAR).0,
            1,
            "refunded, one in flight"
        );
        drop(relay);
        assert_eq!(
            meter.usage("i", crate::Plan::CALENDAR).0,
            1,
            "still counted"
        );
    }

    /// After an interim answer (`status: "accepted"`) the gateway answers the id again, so it
    /// stays in use: a new send reusing it is refused, and the final `ok:false` refunds nothing.
    #[test]
    fn an_interim_answer_keeps_its_id_in_use() {
        let meter = Arc::new(Meter::new(TiersConfig::default()));
        let mut relay = relay(meter.clone(), Tier::Pro);
        let agent = r#"{"type":"req","id":"a","method":"agent","params":{"message":"m","idempotencyKey":"k1"}}"#;
        relay.client_chunk(client_text(agent)).unwrap();
        relay
            .server_chunk(server_text(
                r#"{"type":"res","id":"a","ok":true,"payload":{"runId":"k1","status":"accepted"}}"#,
            ))
            .unwrap();
        assert_eq!(meter.usage("i", crate::Plan::CALENDAR).0, 1);
        relay
            .client_chunk(client_text(&send(r#""a""#, "k2")))
            .unwrap();
        assert_eq!(
            injected(&mut relay)[0]["error"]["code"],
            "DUPLICATE_REQUEST_ID"
        );
        relay
            .server_chunk(server_text(r#"{"type":"res","id":"a","ok":false}"#))
            .unwrap();
        assert_eq!(meter.usage("i", crate::Plan::CALENDAR).0, 1);
        // Final answer seen: the id is free again.
        relay
            .client_chunk(client_text(&send(r#""a""#, "k3")))
            .unwrap();
        assert_eq!(relay.in_flight(), 1);
    }

    #[test]
    fn answers_commit_and_refusals_are_inserted_between_server_messages() {
        let mut tiers = TiersConfig::default();
        tiers.free.messages_per_month = 1;
        let meter = Arc::new(Meter::new(tiers));
        let mut relay = relay(meter.clone(), Tier::Free);
        let send = |i: usize| {
            encode(
                i,
                &Msg {
                    user: true,
                    filler: "x".into(),
                    fragments: 1,
                    ping: false,
                },
            )
        };
        relay.client_chunk(Bytes::from(send(0))).unwrap();
        // The gateway's stream is mid-frame when the second send is refused.
        let mut server = Vec::new();
        encode_frame(
            true,
            opcode::TEXT,
            None,
            br#"{"type":"res","id":"r0","ok":true}"#,
            &mut server,
        );
        let event_start = server.len();
        encode_frame(
            true,
            opcode::TEXT,
            None,
            br#"{"type":"event","event":"chat"}"#,
            &mut server,
        );
        let split = event_start + 3;
        let first = relay
            .server_chunk(Bytes::copy_from_slice(&server[..split]))
            .unwrap();
        assert_eq!(&first[..], &server[..split]);
        assert_eq!(meter.usage("i", crate::Plan::CALENDAR), (1, 0));
        assert!(relay.client_chunk(Bytes::from(send(1))).unwrap().is_empty());
        assert!(
            relay.take_injections_if_at_boundary().is_empty(),
            "not at a boundary"
        );
        let rest = relay
            .server_chunk(Bytes::copy_from_slice(&server[split..]))
            .unwrap();
        assert!(rest.len() > server.len() - split);
        assert_eq!(&rest[..server.len() - split], &server[split..]);
        let injected = String::from_utf8_lossy(&rest[server.len() - split..]).into_owned();
        assert!(
            injected.contains("QUOTA_EXCEEDED") && injected.contains(r#""id":"r1""#),
            "{injected}"
        );
    }
}

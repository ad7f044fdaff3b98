//! Metering of one proxied gateway WebSocket, both directions, chunk by chunk.
//!
//! Client → gateway: frames pass through untouched except text messages, which are held until
//! complete (at most `max_message_bytes`) so a user message over quota can be withheld whole;
//! everything else (and every decided message) is forwarded as the same bytes, in order. A chunk
//! whose bytes all go through is returned as the same `Bytes` (no copy).
//!
//! Gateway → client: frames are parsed to find `res` answers to sends in flight (only while there
//! are some) and message boundaries, where the edge's own `res` for a refused send is inserted.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};

use crate::classify;
use crate::frames::{encode_frame, opcode, FrameError, FrameEvent, FrameParser};
use crate::quota::{Admission, Meter, Reservation};

/// Server messages larger than this are not inspected for `res` (send acks are tiny).
const MAX_INSPECTED_RESPONSE: usize = 64 * 1024;

/// Why the relay must stop.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("the client sent invalid WebSocket framing: {0}")]
    ClientFraming(FrameError),
    #[error("the gateway sent invalid WebSocket framing: {0}")]
    ServerFraming(FrameError),
    #[error("a client message exceeds {0} bytes")]
    MessageTooBig(usize),
}

impl RelayError {
    /// The close frame to send the client before tearing down.
    pub fn close_frame(&self) -> Vec<u8> {
        match self {
            Self::MessageTooBig(max) => {
                crate::frames::close_frame(1009, &format!("message larger than {max} bytes"))
            }
            Self::ClientFraming(_) => crate::frames::close_frame(1002, "invalid framing"),
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
    pub meter: Arc<Meter>,
    pub instance_id: Arc<str>,
    pub tier: Arc<str>,
    /// The owner's billing anchor (paid tiers count per period from it).
    pub billing_anchor_ms: Option<i64>,
    pub max_message_bytes: usize,
    pub upgrade_url: Arc<str>,
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
    client: FrameParser,
    hold: Hold,
    /// Undecided bytes from earlier chunks.
    held: Vec<u8>,
    /// The unmasked text of the held message.
    message: Vec<u8>,
    current_control: bool,
    current_fin: bool,
    /// Sends in flight by request id (JSON text).
    pending: HashMap<String, Reservation>,
    server: FrameParser,
    server_in_message: bool,
    server_collect: bool,
    server_message: Vec<u8>,
    server_current_control: bool,
    server_current_fin: bool,
    /// Frames for the client, inserted at the next message boundary of the gateway's stream.
    injections: Vec<Vec<u8>>,
}

impl WsRelay {
    pub fn new(target: RelayTarget) -> Self {
        Self {
            target,
            client: FrameParser::new(),
            hold: Hold::None,
            held: Vec::new(),
            message: Vec::new(),
            current_control: false,
            current_fin: false,
            pending: HashMap::new(),
            server: FrameParser::new(),
            server_in_message: false,
            server_collect: false,
            server_message: Vec::new(),
            server_current_control: false,
            server_current_fin: false,
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
        let mut out: Vec<Seg> = Vec::new();
        // Start of the bytes not yet assigned (forwarded or held) in this chunk.
        let mut cursor = 0usize;
        let mut frames = 0u64;
        let mut error = None;
        let data = chunk.clone();
        let max = self.target.max_message_bytes;
        let mut decisions: Vec<(usize, bool)> = Vec::new();
        {
            let Self {
                client,
                hold,
                held,
                message,
                current_control,
                current_fin,
                ..
            } = self;
            let mut undecided_from: Option<usize> = match *hold {
                Hold::None => None,
                _ => Some(0),
            };
            let result = client.feed(&data, |event| match event {
                FrameEvent::Header { header, end } => {
                    *current_control = header.is_control();
                    *current_fin = header.fin;
                    match *hold {
                        Hold::None if header.opcode == opcode::TEXT => {
                            *hold = Hold::Text;
                            message.clear();
                            // Forward what came before this header.
                            let header_start = cursor;
                            undecided_from = Some(header_start);
                        }
                        Hold::PartialHeader if header.opcode == opcode::TEXT => {
                            *hold = Hold::Text;
                            message.clear();
                        }
                        Hold::PartialHeader => {
                            // Not the start of a text message: the held header bytes go out.
                            *hold = Hold::None;
                            out.push(Seg::Owned(std::mem::take(held)));
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
                        // The text message is complete: decide on it.
                        let start = undecided_from.take().unwrap_or(0);
                        decisions.push((out.len(), true));
                        if start == 0 && !held.is_empty() {
                            out.push(Seg::Owned(std::mem::take(held)));
                        }
                        out.push(Seg::Decide(start, end, std::mem::take(message)));
                        *hold = Hold::None;
                        cursor = end;
                    } else if undecided_from.is_none() {
                        out.push(Seg::Range(cursor, end));
                        cursor = end;
                    }
                }
            });
            if let Err(e) = result {
                return Err(RelayError::ClientFraming(e));
            }
            // Whatever is left is undecided: a held message or a partial header.
            let tail_from = undecided_from.unwrap_or(cursor);
            if tail_from < data.len() {
                if *hold == Hold::None {
                    *hold = Hold::PartialHeader;
                }
                held.extend_from_slice(&data[tail_from..]);
                if held.len() > max.saturating_add(14 * 1024) {
                    error.get_or_insert(RelayError::MessageTooBig(max));
                }
            }
        }
        if let Some(e) = error {
            return Err(e);
        }
        m.frames_up.increment(frames);
        // Decide each complete text message; a refused one is left out.
        let mut forward_all = true;
        let mut idx = 0;
        let mut decided: Vec<Seg> = Vec::with_capacity(out.len());
        let mut pending_owned: Option<Vec<u8>> = None;
        for seg in out {
            match seg {
                Seg::Owned(bytes) => {
                    // Held bytes belong to the message decided next, or go out as they are.
                    if decisions.iter().any(|(i, _)| *i == idx) {
                        pending_owned = Some(bytes);
                    } else {
                        decided.push(Seg::Owned(bytes));
                    }
                }
                Seg::Decide(start, end, text) => {
                    let forward = self.decide(&text);
                    if forward {
                        if let Some(bytes) = pending_owned.take() {
                            decided.push(Seg::Owned(bytes));
                        }
                        decided.push(Seg::Range(start, end));
                    } else {
                        pending_owned = None;
                        forward_all = false;
                    }
                }
                range => decided.push(range),
            }
            idx += 1;
        }
        let _ = idx;
        // Fast path: the whole chunk goes out unchanged.
        if forward_all
            && decided.iter().all(|s| matches!(s, Seg::Range(..)))
            && covers(&decided, data.len())
        {
            return Ok(chunk);
        }
        let mut buf = BytesMut::new();
        for seg in decided {
            match seg {
                Seg::Range(a, b) => buf.extend_from_slice(&data[a..b]),
                Seg::Owned(v) => buf.extend_from_slice(&v),
                Seg::Decide(..) => {}
            }
        }
        Ok(buf.freeze())
    }

    /// True to forward a complete client text message.
    fn decide(&mut self, text: &[u8]) -> bool {
        let Some(msg) = classify::user_message(text) else {
            return true;
        };
        let t = &self.target;
        match t.meter.admit(
            &t.instance_id,
            &t.tier,
            t.billing_anchor_ms,
            msg.idempotency_key.as_deref(),
        ) {
            Admission::Forward(reservation) => {
                self.pending.insert(msg.id, reservation);
                true
            }
            Admission::Retry => true,
            Admission::Refuse(refusal) => {
                let text = classify::quota_exceeded_response(
                    &msg.id,
                    refusal.limit,
                    refusal.used,
                    &refusal.resets_at,
                    &t.upgrade_url,
                );
                tracing::info!(
                    instance = %t.instance_id,
                    method = %msg.method,
                    limit = refusal.limit,
                    "user message refused: monthly quota reached"
                );
                let mut frame = Vec::with_capacity(text.len() + 4);
                encode_frame(true, opcode::TEXT, None, text.as_bytes(), &mut frame);
                self.injections.push(frame);
                false
            }
        }
    }

    /// Processes gateway → client bytes; returns what to send the client (with any refusals the
    /// edge answers inserted at message boundaries).
    pub fn server_chunk(&mut self, chunk: Bytes) -> Result<Bytes, RelayError> {
        let m = relay_metrics();
        m.bytes_down.increment(chunk.len() as u64);
        let mut frames = 0u64;
        let mut answers: Vec<(String, bool)> = Vec::new();
        // Offsets after which the stream is between messages (candidates for insertion).
        let mut boundaries: Vec<usize> = Vec::new();
        let want_boundaries = !self.injections.is_empty();
        if want_boundaries && self.server.at_message_boundary() {
            boundaries.push(0);
        }
        {
            let Self {
                server,
                server_in_message,
                server_collect,
                server_message,
                server_current_control,
                server_current_fin,
                pending,
                ..
            } = self;
            let watching = !pending.is_empty();
            server
                .feed(&chunk, |event| match event {
                    FrameEvent::Header { header, .. } => {
                        *server_current_control = header.is_control();
                        *server_current_fin = header.fin;
                        if !header.is_control() {
                            if header.opcode == opcode::TEXT {
                                *server_collect = watching;
                                server_message.clear();
                            }
                            *server_in_message = !header.fin;
                        }
                    }
                    FrameEvent::Payload { data, .. } => {
                        if *server_collect && !*server_current_control {
                            if server_message.len() + data.raw.len() > MAX_INSPECTED_RESPONSE {
                                *server_collect = false;
                                server_message.clear();
                            } else {
                                data.unmask_into(server_message);
                            }
                        }
                    }
                    FrameEvent::FrameEnd { end } => {
                        frames += 1;
                        if !*server_current_control && *server_current_fin && *server_collect {
                            if let Some(answer) = classify::response(server_message) {
                                answers.push(answer);
                            }
                            *server_collect = false;
                            server_message.clear();
                        }
                        if want_boundaries && !*server_in_message {
                            boundaries.push(end);
                        }
                    }
                })
                .map_err(RelayError::ServerFraming)?;
        }
        m.frames_down.increment(frames);
        for (id, ok) in answers {
            if let Some(reservation) = self.pending.remove(&id) {
                reservation.commit(ok);
            }
        }
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

enum Seg {
    Range(usize, usize),
    Owned(Vec<u8>),
    /// A complete text message spanning `start..end` of the chunk (and its unmasked text), to
    /// forward or withhold.
    Decide(usize, usize, Vec<u8>),
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
            let mut relay = WsRelay::new(RelayTarget {
                meter: Arc::new(Meter::new(tiers)),
                instance_id: Arc::from("i"),
                tier: Arc::from("free"),
                billing_anchor_ms: None,
                max_message_bytes: 1 << 20,
                upgrade_url: Arc::from("https://x/billing"),
            });
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
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
            points.push(0);
            points.push(stream.len());
            points.sort_unstable();
            let mut out = Vec::new();
            for w in points.windows(2) {
                let chunk = Bytes::copy_from_slice(&stream[w[0]..w[1]]);
                out.extend_from_slice(&relay.client_chunk(chunk).unwrap());
            }
            prop_assert_eq!(out, expected);
            prop_assert_eq!(relay.take_injections_if_at_boundary().len(), refused);
            prop_assert_eq!(relay.in_flight() as u64, users.min(limit));
        }

        /// The parser reassembles the same messages from any split of the stream.
        #[test]
        fn parser_reassembles_messages_from_any_split(
            msgs in proptest::collection::vec(msg(), 1..10),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..30),
        ) {
            let stream: Vec<u8> = msgs.iter().enumerate().flat_map(|(i, m)| encode(i, m)).collect();
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
            points.push(0);
            points.push(stream.len());
            points.sort_unstable();
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

    #[test]
    fn answers_commit_and_refusals_are_inserted_between_server_messages() {
        let mut tiers = TiersConfig::default();
        tiers.free.messages_per_month = 1;
        let meter = Arc::new(Meter::new(tiers));
        let mut relay = WsRelay::new(RelayTarget {
            meter: meter.clone(),
            instance_id: Arc::from("i"),
            tier: Arc::from("free"),
            billing_anchor_ms: None,
            max_message_bytes: 1 << 20,
            upgrade_url: Arc::from("https://x/billing"),
        });
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

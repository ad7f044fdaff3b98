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
use crate::quota::{Admission, BuildPreHashed, Meter, Reservation, UsageHandle};

/// Sends in flight by the hash of their request id (raw JSON text; see [`id_hash`]).
type Pending = HashMap<u64, Reservation, BuildPreHashed>;

/// Hashes request ids with a per-process random seed (ids come from the client, so they cannot
/// be chosen to collide); foldhash is several times faster than SipHash on short keys.
fn id_hash(id: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    static SEED: OnceLock<foldhash::fast::RandomState> = OnceLock::new();
    SEED.get_or_init(Default::default).hash_one(id)
}

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
    usage: UsageHandle,
    client: FrameParser,
    hold: Hold,
    /// Undecided bytes from earlier chunks.
    held: Vec<u8>,
    /// The unmasked text of the held message.
    message: Vec<u8>,
    current_control: bool,
    current_fin: bool,
    /// Sends in flight (see [`Pending`]).
    pending: Pending,
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
            segments: out,
            injections,
            ..
        } = self;
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
                    if decide(target, usage, pending, injections, message) {
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
            ..
        } = self;
        server
            .feed(&chunk, |event| match event {
                FrameEvent::Header { header, .. } => {
                    *server_current_control = header.is_control();
                    *server_current_fin = header.fin;
                    *server_current_len = header.payload_len;
                    if !header.is_control() {
                        if header.opcode == opcode::TEXT {
                            // Only answers to sends in flight matter.
                            *server_collect = !pending.is_empty();
                            server_message.clear();
                        }
                        *server_in_message = !header.fin;
                    }
                }
                FrameEvent::Payload { data, .. } => {
                    if *server_collect && !*server_current_control {
                        if *server_current_fin
                            && data.mask.is_none()
                            && data.raw.len() as u64 == *server_current_len
                        {
                            // The usual case: a whole unmasked message in one read, read in place.
                            settle(pending, data.raw);
                            *server_collect = false;
                        } else if server_message.len() + data.raw.len() > MAX_INSPECTED_RESPONSE {
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
                        settle(pending, server_message);
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

/// Commits or releases the send a gateway message answers, if it is a `res` to one in flight.
fn settle(pending: &mut Pending, text: &[u8]) {
    if let Some((id, ok)) = classify::response(text) {
        if let Some(reservation) = pending.remove(&id_hash(id)) {
            reservation.commit(ok);
        }
    }
}

/// True to forward a complete client text message; a refused one gets the edge's own `res`.
fn decide(
    target: &RelayTarget,
    usage: &UsageHandle,
    pending: &mut Pending,
    injections: &mut Vec<Vec<u8>>,
    text: &[u8],
) -> bool {
    let Some(msg) = classify::user_message(text) else {
        return true;
    };
    let t = target;
    match t.meter.admit_to(
        usage,
        &t.instance_id,
        &t.tier,
        t.billing_anchor_ms,
        msg.idempotency_key.as_deref(),
    ) {
        Admission::Forward(reservation) => {
            pending.insert(id_hash(msg.id), reservation);
            true
        }
        Admission::Retry => true,
        Admission::Refuse(refusal) => {
            let text = classify::quota_exceeded_response(
                &String::from_utf8_lossy(msg.id),
                refusal.limit,
                refusal.used,
                &refusal.resets_at,
                &t.upgrade_url,
            );
            tracing::info!(
                instance = %t.instance_id,
                method = msg.method,
                limit = refusal.limit,
                "user message refused: monthly quota reached"
            );
            let mut frame = Vec::with_capacity(text.len() + 4);
            encode_frame(true, opcode::TEXT, None, text.as_bytes(), &mut frame);
            injections.push(frame);
            false
        }
    }
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
    fn relay(meter: Arc<Meter>, tier: &str) -> WsRelay {
        WsRelay::new(RelayTarget {
            meter,
            instance_id: Arc::from("i"),
            tier: Arc::from(tier),
            billing_anchor_ms: None,
            max_message_bytes: 1 << 20,
            upgrade_url: Arc::from("https://x/billing"),
        })
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
            let mut relay = relay(Arc::new(Meter::new(tiers)), "free");
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
            let mut relay = relay(meter.clone(), "pro");
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

    #[test]
    fn answers_commit_and_refusals_are_inserted_between_server_messages() {
        let mut tiers = TiersConfig::default();
        tiers.free.messages_per_month = 1;
        let meter = Arc::new(Meter::new(tiers));
        let mut relay = relay(meter.clone(), "free");
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

//! An incremental WebSocket frame parser (RFC 6455 §5.2) for bytes relayed in arbitrary pieces.
//!
//! [`FrameParser::feed`] takes whatever one TCP read delivered and reports, in order, each frame
//! header once it is complete and each run of payload bytes (unmasked) as it arrives. It keeps at
//! most one partial header (14 bytes) between calls and never buffers payload, so it costs nothing
//! per connection beyond its own size. It is a plain public type so fuzz targets can drive it.

/// Frame opcodes.
pub mod opcode {
    /// Continues a fragmented data message.
    pub const CONTINUATION: u8 = 0x0;
    /// Starts a UTF-8 text message.
    pub const TEXT: u8 = 0x1;
    /// Starts a binary message.
    pub const BINARY: u8 = 0x2;
    /// Close (control): an optional 2-byte status code, then a UTF-8 reason.
    pub const CLOSE: u8 = 0x8;
    /// Ping (control): the peer answers with a pong carrying the same payload.
    pub const PING: u8 = 0x9;
    /// Pong (control): the answer to a ping, or an unsolicited heartbeat.
    pub const PONG: u8 = 0xA;
}

/// One frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The final frame of its message (always true for control frames).
    pub fin: bool,
    /// RSV1..3 as the low three bits.
    pub rsv: u8,
    /// One of [`opcode`]'s values (4 bits).
    pub opcode: u8,
    /// The masking key: present on client-to-server frames, absent on server-to-client ones.
    pub mask: Option<[u8; 4]>,
    /// Payload length in bytes (at most 2^63 − 1; at most 125 for control frames).
    pub payload_len: u64,
}

impl FrameHeader {
    /// True for close, ping and pong (opcodes with the top bit set), which may not be fragmented.
    pub fn is_control(&self) -> bool {
        self.opcode & 0x8 != 0
    }

    /// The encoded header: 2 to 14 bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push((u8::from(self.fin) << 7) | ((self.rsv & 0x7) << 4) | (self.opcode & 0xf));
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        match self.payload_len {
            n @ 0..=125 => out.push(mask_bit | n as u8),
            n @ 126..=0xffff => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&n.to_be_bytes());
            }
        }
        if let Some(mask) = self.mask {
            out.extend_from_slice(&mask);
        }
    }
}

/// Why a byte stream is not WebSocket framing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// An opcode RFC 6455 reserves (0x3–0x7, 0xB–0xF).
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    /// A close, ping or pong whose payload exceeds 125 bytes.
    #[error("control frame with a {0}-byte payload (at most 125 allowed)")]
    ControlTooLong(u64),
    /// A close, ping or pong without FIN.
    #[error("fragmented control frame")]
    FragmentedControl,
    /// A 64-bit payload length with its most significant bit set.
    #[error("64-bit payload length with the top bit set")]
    LengthOverflow,
    /// A continuation frame outside a fragmented message.
    #[error("continuation frame without a message to continue")]
    UnexpectedContinuation,
    /// A text or binary frame before the previous fragmented message's final frame.
    #[error("new data frame while a fragmented message is still open")]
    UnfinishedMessage,
}

/// What [`FrameParser::feed`] reports.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameEvent<'a> {
    /// A complete header; `end` is the offset in the fed chunk just past it.
    Header {
        /// The decoded header.
        header: FrameHeader,
        /// Offset in the chunk just past the header's last byte.
        end: usize,
    },
    /// Payload bytes of the current frame, unmasked; `end` is the offset in the chunk past them.
    Payload {
        /// The bytes, as on the wire (masked or not: see [`PayloadBytes::unmask_into`]).
        data: PayloadBytes<'a>,
        /// Offset in the chunk just past them.
        end: usize,
    },
    /// The current frame is complete; `end` is the offset in the chunk just past it.
    FrameEnd {
        /// Offset in the chunk just past the frame's last byte.
        end: usize,
    },
}

/// A run of payload bytes as they were on the wire, with what unmasks them.
#[derive(Debug, PartialEq, Eq)]
pub struct PayloadBytes<'a> {
    /// The bytes as fed, still masked if the frame is; [`unmask_into`](Self::unmask_into) unmasks
    /// them.
    pub raw: &'a [u8],
    pub(crate) mask: Option<[u8; 4]>,
    /// Position in the frame's payload of `raw[0]`, modulo 4.
    mask_offset: usize,
}

impl PayloadBytes<'_> {
    /// Appends the unmasked bytes to `out`.
    pub fn unmask_into(&self, out: &mut Vec<u8>) {
        match self.mask {
            None => out.extend_from_slice(self.raw),
            Some(mask) => {
                // Eight bytes at a time: the key rotated to this run's offset, repeated twice.
                let key: [u8; 4] = std::array::from_fn(|i| mask[(self.mask_offset + i) & 3]);
                let wide = u64::from_ne_bytes([
                    key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
                ]);
                let start = out.len();
                out.extend_from_slice(self.raw);
                let mut words = out[start..].chunks_exact_mut(8);
                for word in &mut words {
                    let mut bytes = [0u8; 8];
                    bytes.copy_from_slice(word);
                    word.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ wide).to_ne_bytes());
                }
                // The remainder starts at a multiple of 8, so the key lines up from its start.
                for (i, b) in words.into_remainder().iter_mut().enumerate() {
                    *b ^= key[i & 3];
                }
            }
        }
    }
}

/// Incremental frame parser; see the module docs.
#[derive(Debug, Default, Clone)]
pub struct FrameParser {
    header_buf: [u8; 14],
    header_len: u8,
    /// The frame whose payload is being read.
    current: Option<FrameHeader>,
    remaining: u64,
    payload_pos: u64,
    /// Inside a fragmented data message (a non-final data frame was seen).
    in_message: bool,
}

impl FrameParser {
    /// A parser at the start of a stream (same as `default()`).
    pub fn new() -> Self {
        Self::default()
    }

    /// True between frames and outside a fragmented message: where a whole new message may be
    /// inserted into the stream without corrupting it.
    pub fn at_message_boundary(&self) -> bool {
        self.current.is_none() && self.header_len == 0 && !self.in_message
    }

    /// True between frames (possibly inside a fragmented message).
    pub fn at_frame_boundary(&self) -> bool {
        self.current.is_none() && self.header_len == 0
    }

    /// Parses `chunk`, calling `on_event` for every header, payload run and frame end in order.
    pub fn feed<'a>(
        &mut self,
        chunk: &'a [u8],
        mut on_event: impl FnMut(FrameEvent<'a>),
    ) -> Result<(), FrameError> {
        let mut pos = 0;
        while pos < chunk.len() || (self.current.is_some() && self.remaining == 0) {
            if let Some(header) = self.current {
                let take = usize::try_from(self.remaining)
                    .unwrap_or(usize::MAX)
                    .min(chunk.len() - pos);
                if take > 0 {
                    let raw = &chunk[pos..pos + take];
                    pos += take;
                    on_event(FrameEvent::Payload {
                        data: PayloadBytes {
                            raw,
                            mask: header.mask,
                            mask_offset: (self.payload_pos & 3) as usize,
                        },
                        end: pos,
                    });
                    self.remaining -= take as u64;
                    self.payload_pos += take as u64;
                }
                if self.remaining == 0 {
                    self.current = None;
                    on_event(FrameEvent::FrameEnd { end: pos });
                }
                continue;
            }
            let rest = &chunk[pos..];
            let header = if self.header_len == 0 && rest.len() >= header_size(rest) {
                // The usual case: the whole header is in this read; decoded where it lies.
                let size = header_size(rest);
                pos += size;
                self.decode_header(&rest[..size])?
            } else {
                // A header split across reads: gathered until complete.
                let need = header_size(&self.header_buf[..usize::from(self.header_len)]);
                let have = usize::from(self.header_len);
                let take = (need - have).min(rest.len());
                self.header_buf[have..have + take].copy_from_slice(&rest[..take]);
                self.header_len += take as u8;
                pos += take;
                let have = usize::from(self.header_len);
                // The size may grow once the length byte is known.
                if have < header_size(&self.header_buf[..have]) {
                    continue;
                }
                let buf = self.header_buf;
                self.header_len = 0;
                self.decode_header(&buf[..have])?
            };
            self.current = Some(header);
            self.remaining = header.payload_len;
            self.payload_pos = 0;
            on_event(FrameEvent::Header { header, end: pos });
        }
        Ok(())
    }

    /// Decodes a complete header (`b` is exactly [`header_size`] bytes).
    fn decode_header(&mut self, b: &[u8]) -> Result<FrameHeader, FrameError> {
        let fin = b[0] & 0x80 != 0;
        let rsv = (b[0] >> 4) & 0x7;
        let op = b[0] & 0xf;
        let masked = b[1] & 0x80 != 0;
        let (payload_len, mut at) = match b[1] & 0x7f {
            126 => (u64::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 => {
                let mut len = [0u8; 8];
                len.copy_from_slice(&b[2..10]);
                (u64::from_be_bytes(len), 10)
            }
            n => (u64::from(n), 2),
        };
        if payload_len >> 63 != 0 {
            return Err(FrameError::LengthOverflow);
        }
        let mask = masked.then(|| {
            let m = [b[at], b[at + 1], b[at + 2], b[at + 3]];
            at += 4;
            m
        });
        let header = FrameHeader {
            fin,
            rsv,
            opcode: op,
            mask,
            payload_len,
        };
        match op {
            opcode::CONTINUATION => {
                if !self.in_message {
                    return Err(FrameError::UnexpectedContinuation);
                }
                self.in_message = !fin;
            }
            opcode::TEXT | opcode::BINARY => {
                if self.in_message {
                    return Err(FrameError::UnfinishedMessage);
                }
                self.in_message = !fin;
            }
            opcode::CLOSE | opcode::PING | opcode::PONG => {
                if !fin {
                    return Err(FrameError::FragmentedControl);
                }
                if payload_len > 125 {
                    return Err(FrameError::ControlTooLong(payload_len));
                }
            }
            other => return Err(FrameError::ReservedOpcode(other)),
        }
        Ok(header)
    }
}

/// The full header size implied by the bytes seen so far (2 until the length byte is known).
fn header_size(seen: &[u8]) -> usize {
    if seen.len() < 2 {
        return 2;
    }
    let mask = if seen[1] & 0x80 != 0 { 4 } else { 0 };
    let ext = match seen[1] & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + ext + mask
}

/// Encodes one whole frame (for synthetic frames and tests).
pub fn encode_frame(fin: bool, op: u8, mask: Option<[u8; 4]>, payload: &[u8], out: &mut Vec<u8>) {
    FrameHeader {
        fin,
        rsv: 0,
        opcode: op,
        mask,
        payload_len: payload.len() as u64,
    }
    .encode(out);
    match mask {
        None => out.extend_from_slice(payload),
        Some(m) => out.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i & 3])),
    }
}

/// A close frame (server to client, unmasked) with a status code and reason.
pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(&reason.as_bytes()[..reason.len().min(123)]);
    let mut out = Vec::with_capacity(payload.len() + 2);
    encode_frame(true, opcode::CLOSE, None, &payload, &mut out);
    out
}

//! The envelope every message carries on a wire, and the sans-IO decoder
//! of a byte stream of them (QUIC streams, TCP): no I/O here, so it is
//! tested and fuzzed on its own, and every backend decodes the same way.
//!
//! Layout (little-endian), 16 bytes, then the body:
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | body length: what follows the header |
//! | 4 | kind ([`Kind`]) |
//! | 5 | flags (none defined: must be 0) |
//! | 6..8 | topic length (at most [`MAX_TOPIC`]) |
//! | 8..16 | id: correlation of a request and its reply, 0 otherwise |
//!
//! The body is the topic, zero-padded to a multiple of 16, then the
//! payload. With the header and the padding both multiples of 16, a payload
//! stays 16-byte aligned wherever the envelope starts aligned, so an rkyv
//! archive in it is read in place.
//!
//! Hostile input: the header is checked in full (kind, flags, topic length,
//! body length against the caller's limit, topic within the body) before
//! the decoder allocates anything, and it then allocates exactly the body.

use crate::error::{Error, Result};
use crate::frame::{AlignedBuf, Frame};

/// Bytes in the envelope header.
pub const HEADER_LEN: usize = 16;
/// Longest topic, in bytes.
pub const MAX_TOPIC: usize = 1024;

/// What a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A published or pushed message.
    Message = 1,
    /// A request (its reply carries the same id).
    Request = 2,
    /// A reply to the request with the same id.
    Reply = 3,
    /// Flow-control credit: the receiver can take `id` more messages.
    Credit = 4,
    /// Opens a batch of pushed messages (QUIC): `id` is the pusher's key
    /// (a secret of its own, not its public id), the payload the first
    /// message's sequence number (8 bytes, little-endian); the queue
    /// answers with the last sequence number it holds from that pusher.
    Batch = 5,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Message,
            2 => Kind::Request,
            3 => Kind::Reply,
            4 => Kind::Credit,
            5 => Kind::Batch,
            _ => return None,
        })
    }
}

/// A decoded envelope header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// What the message is.
    pub kind: Kind,
    /// Topic bytes (the topic area in the body is this, rounded up to 16).
    pub topic_len: u16,
    /// Bytes after the header: padded topic, then payload.
    pub body_len: u32,
    /// Request/reply correlation, or credit; 0 otherwise.
    pub id: u64,
}

/// `n` rounded up to a multiple of 16.
pub(crate) fn pad16(n: usize) -> usize {
    n.div_ceil(16) * 16
}

impl Header {
    /// The header of a message with `topic` and a `payload_len`-byte payload.
    pub fn new(kind: Kind, topic: &[u8], payload_len: usize, id: u64) -> Result<Header> {
        if topic.len() > MAX_TOPIC {
            return Err(Error::TooLarge {
                what: "topic",
                got: topic.len() as u64,
                limit: MAX_TOPIC as u64,
            });
        }
        let body = pad16(topic.len()) as u64 + payload_len as u64;
        let body_len = u32::try_from(body).map_err(|_| Error::TooLarge {
            what: "message body",
            got: body,
            limit: u32::MAX as u64,
        })?;
        Ok(Header {
            kind,
            topic_len: topic.len() as u16,
            body_len,
            id,
        })
    }

    /// Where the payload starts in the body.
    pub fn payload_offset(&self) -> usize {
        pad16(self.topic_len as usize)
    }

    /// Payload bytes.
    pub fn payload_len(&self) -> usize {
        self.body_len as usize - self.payload_offset()
    }

    /// The 16 header bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..4].copy_from_slice(&self.body_len.to_le_bytes());
        h[4] = self.kind as u8;
        h[5] = 0;
        h[6..8].copy_from_slice(&self.topic_len.to_le_bytes());
        h[8..16].copy_from_slice(&self.id.to_le_bytes());
        h
    }

    /// Parses and checks 16 header bytes from a peer; `max_body` bounds
    /// the body length (the caller's message size limit).
    pub fn decode(h: &[u8; HEADER_LEN], max_body: u32) -> Result<Header> {
        let body_len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let kind = Kind::from_u8(h[4]).ok_or(Error::Corrupt {
            what: "envelope kind",
            found: h[4] as u64,
            expected: "1 (message), 2 (request), 3 (reply) or 4 (credit)",
        })?;
        if h[5] != 0 {
            return Err(Error::Corrupt {
                what: "envelope flags",
                found: h[5] as u64,
                expected: "0",
            });
        }
        let topic_len = u16::from_le_bytes([h[6], h[7]]);
        if topic_len as usize > MAX_TOPIC {
            return Err(Error::TooLarge {
                what: "topic",
                got: topic_len as u64,
                limit: MAX_TOPIC as u64,
            });
        }
        if body_len > max_body {
            return Err(Error::TooLarge {
                what: "message body",
                got: body_len as u64,
                limit: max_body as u64,
            });
        }
        if pad16(topic_len as usize) > body_len as usize {
            return Err(Error::Corrupt {
                what: "envelope body length",
                found: body_len as u64,
                expected: "at least the topic, padded to 16",
            });
        }
        let id = u64::from_le_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]);
        if kind == Kind::Credit && (topic_len != 0 || body_len != 0) {
            return Err(Error::Corrupt {
                what: "credit body length",
                found: body_len as u64,
                expected: "0 (a credit carries only its count)",
            });
        }
        Ok(Header {
            kind,
            topic_len,
            body_len,
            id,
        })
    }
}

/// Writes the envelope of (`header`, `topic`, `payload`) into `out`.
pub fn encode_into(header: &Header, topic: &[u8], payload: &[u8], out: &mut Vec<u8>) {
    debug_assert_eq!(header.payload_len(), payload.len());
    encode_head_into(header, topic, out);
    out.extend_from_slice(payload);
}

/// Writes what comes before the payload in the envelope of (`header`,
/// `topic`, …) into `out`: the header, the topic and its padding (the
/// payload follows, written by the caller).
pub fn encode_head_into(header: &Header, topic: &[u8], out: &mut Vec<u8>) {
    debug_assert_eq!(header.topic_len as usize, topic.len());
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(topic);
    out.resize(out.len() + pad16(topic.len()) - topic.len(), 0);
}

/// A whole message decoded from a stream.
#[derive(Debug)]
pub struct Decoded {
    /// Its header.
    pub header: Header,
    /// Its body (padded topic, then payload), 16-byte aligned.
    body: AlignedBuf,
}

impl Decoded {
    /// The topic bytes.
    pub fn topic(&self) -> &[u8] {
        &self.body[..self.header.topic_len as usize]
    }

    /// The payload bytes.
    pub fn payload(&self) -> &[u8] {
        &self.body[self.header.payload_offset()..]
    }

    /// The payload as a frame carrying the topic (the payload starts
    /// 16-byte aligned: it is not copied).
    pub fn into_frame(self) -> Result<Frame<'static>> {
        let start = self.header.payload_offset();
        let end = self.body.len();
        let topic = AlignedBuf::copy_from(self.topic());
        Ok(Frame::owned_range(self.body, start..end)?.with_topic(&topic))
    }
}

/// Decodes a byte stream of envelopes, whatever the chunks it arrives in.
///
/// ```
/// use shoal_transport::envelope::{encode_into, Decoder, Header, Kind};
/// let mut wire = Vec::new();
/// let h = Header::new(Kind::Message, b"prices", 5, 0)?;
/// encode_into(&h, b"prices", b"hello", &mut wire);
/// let mut d = Decoder::new(1 << 20);
/// let mut got = Vec::new();
/// for chunk in wire.chunks(3) {
///     let mut rest = chunk;
///     while !rest.is_empty() {
///         let (used, msg) = d.feed(rest)?;
///         rest = &rest[used..];
///         got.extend(msg);
///     }
/// }
/// assert_eq!(got.len(), 1);
/// assert_eq!(got[0].topic(), b"prices");
/// # Ok::<(), shoal_transport::Error>(())
/// ```
#[derive(Debug)]
pub struct Decoder {
    max_body: u32,
    head: [u8; HEADER_LEN],
    head_len: usize,
    /// The header being filled in, once its 16 bytes were read and checked.
    header: Option<Header>,
    body: AlignedBuf,
}

impl Decoder {
    /// A decoder refusing bodies above `max_body` bytes.
    pub fn new(max_body: u32) -> Self {
        Decoder {
            max_body,
            head: [0; HEADER_LEN],
            head_len: 0,
            header: None,
            body: AlignedBuf::default(),
        }
    }

    /// Bytes of the current partial message held (header and body).
    pub fn buffered(&self) -> usize {
        self.head_len + self.body.len()
    }

    /// Takes bytes from `input`: returns how many it used and, when they
    /// completed one, the message. Call again with the rest. An error
    /// means the stream is not well-formed: drop the peer (the decoder's
    /// state is then meaningless).
    pub fn feed(&mut self, input: &[u8]) -> Result<(usize, Option<Decoded>)> {
        let mut used = 0;
        if self.header.is_none() {
            let take = (HEADER_LEN - self.head_len).min(input.len());
            self.head[self.head_len..self.head_len + take].copy_from_slice(&input[..take]);
            self.head_len += take;
            used += take;
            if self.head_len < HEADER_LEN {
                return Ok((used, None));
            }
            let h = Header::decode(&self.head, self.max_body)?;
            // Checked in full: now, and only now, the body's buffer.
            self.body = AlignedBuf::with_capacity(h.body_len as usize);
            self.header = Some(h);
        }
        let Some(h) = self.header else {
            return Ok((used, None));
        };
        let want = h.body_len as usize - self.body.len();
        let take = want.min(input.len() - used);
        self.body.extend_from_slice(&input[used..used + take]);
        used += take;
        if self.body.len() < h.body_len as usize {
            return Ok((used, None));
        }
        self.header = None;
        self.head_len = 0;
        let body = std::mem::take(&mut self.body);
        Ok((used, Some(Decoded { header: h, body })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn wire(msgs: &[(Kind, &[u8], &[u8], u64)]) -> Vec<u8> {
        let mut w = Vec::new();
        for &(k, t, p, id) in msgs {
            let h = Header::new(k, t, p.len(), id).unwrap();
            encode_into(&h, t, p, &mut w);
        }
        w
    }

    fn decode_all(d: &mut Decoder, mut bytes: &[u8]) -> Result<Vec<Decoded>> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let (used, m) = d.feed(bytes)?;
            bytes = &bytes[used..];
            out.extend(m);
        }
        Ok(out)
    }

    #[test]
    fn messages_round_trip_with_aligned_payloads() {
        let big = vec![7u8; 100_000];
        let w = wire(&[
            (Kind::Message, b"", b"", 0),
            (Kind::Request, b"t", b"abc", 9),
            (Kind::Reply, &[b'x'; 17], &big, u64::MAX),
        ]);
        let mut d = Decoder::new(1 << 20);
        let got = decode_all(&mut d, &w).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[1].header.id, 9);
        assert_eq!(got[1].topic(), b"t");
        assert_eq!(got[2].topic(), &[b'x'; 17]);
        let f = got.into_iter().nth(2).unwrap().into_frame().unwrap();
        assert!((f.as_ptr() as usize).is_multiple_of(16));
        assert_eq!(&*f, &big[..]);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn a_4_gib_length_is_refused_before_anything_is_allocated() {
        let mut h = Header::new(Kind::Message, b"", 0, 0).unwrap().encode();
        h[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut d = Decoder::new(64 << 20);
        let e = d.feed(&h).unwrap_err();
        assert!(
            matches!(
                e,
                Error::TooLarge {
                    what: "message body",
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(d.body.capacity(), 0, "allocated for a refused body");
    }

    #[test]
    fn malformed_headers_are_corrupt() {
        let good = Header::new(Kind::Message, b"ab", 4, 0).unwrap().encode();
        let bad = |f: &dyn Fn(&mut [u8; 16])| {
            let mut h = good;
            f(&mut h);
            Header::decode(&h, 1 << 20).unwrap_err().to_string()
        };
        assert!(bad(&|h| h[4] = 0).contains("kind"));
        assert!(bad(&|h| h[4] = 9).contains("kind"));
        assert!(bad(&|h| h[5] = 1).contains("flags"));
        assert!(bad(&|h| h[6..8].copy_from_slice(&2000u16.to_le_bytes())).contains("topic"));
        assert!(bad(&|h| h[0..4].copy_from_slice(&8u32.to_le_bytes())).contains("body length"));
        assert!(bad(&|h| {
            h[4] = 4;
        })
        .contains("credit"));
        assert!(Header::new(Kind::Message, &[0; MAX_TOPIC + 1], 0, 0).is_err());
    }

    #[test]
    fn a_truncated_stream_waits_for_more_and_holds_only_what_came() {
        let w = wire(&[(Kind::Message, b"topic", &[1u8; 1000], 0)]);
        let mut d = Decoder::new(1 << 20);
        let got = decode_all(&mut d, &w[..w.len() - 1]).unwrap();
        assert!(got.is_empty());
        assert_eq!(d.buffered(), w.len() - 1);
        let (used, m) = d.feed(&w[w.len() - 1..]).unwrap();
        assert_eq!(used, 1);
        assert!(m.is_some());
    }

    proptest! {
        /// Any chunking of a valid stream decodes to the same messages.
        #[test]
        fn chunking_does_not_matter(
            msgs in prop::collection::vec((1u8..=3, prop::collection::vec(any::<u8>(), 0..40), prop::collection::vec(any::<u8>(), 0..300), any::<u64>()), 0..8),
            cuts in prop::collection::vec(1usize..64, 1..50),
        ) {
            let list: Vec<(Kind, &[u8], &[u8], u64)> = msgs
                .iter()
                .map(|(k, t, p, id)| (Kind::from_u8(*k).unwrap(), &t[..], &p[..], *id))
                .collect();
            let w = wire(&list);
            let mut d = Decoder::new(1 << 20);
            let mut got = Vec::new();
            let mut rest = &w[..];
            let mut i = 0;
            while !rest.is_empty() {
                let n = cuts[i % cuts.len()].min(rest.len());
                got.extend(decode_all(&mut d, &rest[..n]).unwrap());
                rest = &rest[n..];
                i += 1;
            }
            prop_assert_eq!(got.len(), list.len());
            for (g, (k, t, p, id)) in got.into_iter().zip(list) {
                prop_assert_eq!(g.header.kind, k);
                prop_assert_eq!(g.header.id, id);
                prop_assert_eq!(g.topic(), t);
                let f = g.into_frame().unwrap();
                prop_assert_eq!(&*f, p);
            }
        }

        /// Random bytes: messages or an error, never a panic, and never a
        /// buffer above the limit.
        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
            let mut d = Decoder::new(4096);
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                match d.feed(rest) {
                    Ok((used, _)) => rest = &rest[used..],
                    Err(_) => break,
                }
                prop_assert!(d.body.capacity() <= 4096 + 16);
            }
        }
    }
}

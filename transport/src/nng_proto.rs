//! The messages the nng backend's own protocols exchange, sans-IO: built
//! and parsed here, tested and fuzzed without a socket.
//!
//! Every nng message of this backend is a 44-byte control block, then
//! zero or more envelopes ([`crate::envelope`]), each padded to a multiple
//! of 16 bytes so that the next one, and every payload, keeps the
//! alignment of the first. The block is 44 bytes, not 32, because NNG's
//! REQ/REP hand a received body over 4 bytes past a 16-byte boundary
//! (they take the 4-byte request id off its front; measured on NNG 1.4,
//! tcp and ipc): 4 + 44 = 48, so the envelopes, and the payloads in them,
//! arrive 16-byte aligned and frames use them in place instead of copying
//! them (the receiver still checks, and copies when they are not).
//!
//! Control block (little-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic `SHNG` |
//! | 4 | version (2) |
//! | 5 | op (`Op`) |
//! | 6..8 | zero |
//! | 8..16, 16..24, 24..32 | `a`, `b`, `c`: the op's arguments |
//! | 32..44 | zero (alignment) |
//!
//! Everything a peer sends is checked before it is used: magic, version,
//! op, the zero bytes, then each envelope's header (against the size
//! limit, before its bytes are looked at), its extent within the message,
//! the envelope count, and that nothing trails the last one.

use crate::envelope::{pad16, Header, Kind, HEADER_LEN};
use crate::error::{Error, Result};
use std::ops::Range;

/// Bytes in a control block.
pub(crate) const CONTROL_LEN: usize = 44;
const MAGIC: [u8; 4] = *b"SHNG";
/// 2: the 44-byte block, and pushes that carry several envelopes.
const VERSION: u8 = 2;

/// What a message asks or answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Op {
    /// Subscriber -> publisher: register subscriber `a`.
    Hello = 1,
    /// Publisher -> subscriber: registered; `a` publisher id, `b` the
    /// first sequence number the subscriber will get.
    Welcome = 2,
    /// Subscriber -> publisher: subscriber `a` has everything before
    /// sequence `b` and asks for what follows; `c` the publisher it last
    /// heard from (0: none).
    Poll = 3,
    /// Publisher -> subscriber: `c` messages from sequence `b`, from
    /// publisher `a` (none: nothing new in the hold time).
    Batch = 4,
    /// Publisher -> subscriber: publisher `a` does not know this
    /// subscriber (evicted, or the publisher restarted).
    Unknown = 5,
    /// Publisher -> subscriber: publisher `a` closed and the subscriber
    /// has everything it sent.
    Closed = 6,
    /// Pusher -> queue: queue the envelopes that follow, from the pusher
    /// whose key is `a` (a secret of the pusher's, not its public id),
    /// waiting at most `b & 0xffff_ffff` ms for room; their count is
    /// `b >> 32` (0 counts as 1), and the first has sequence number `c`,
    /// the next `c + 1`, and so on.
    Push = 7,
    /// Queue -> pusher: queued, up to and including the envelope with
    /// sequence number `a` (fewer than all when the rest found no room:
    /// the pusher asks again with those).
    Queued = 8,
    /// Queue -> pusher: no room within the wait asked for (none queued).
    Full = 9,
    /// Puller -> queue: puller `a`, which last received the item with
    /// token `b` (0: none), asks for the next, waiting at most `c` ms.
    Pull = 10,
    /// Queue -> puller: the one envelope that follows, token `a`.
    Item = 11,
    /// Queue -> puller: nothing within the wait asked for.
    Empty = 12,
    /// Requester -> replier: the one request envelope that follows.
    Ask = 13,
    /// Replier -> requester: the one reply envelope that follows.
    Answer = 14,
    /// Puller -> queue: puller `a` received the item with token `b`
    /// (answered `Empty`).
    Ack = 15,
}

impl Op {
    fn from_u8(b: u8) -> Option<Op> {
        use Op::*;
        Some(match b {
            1 => Hello,
            2 => Welcome,
            3 => Poll,
            4 => Batch,
            5 => Unknown,
            6 => Closed,
            7 => Push,
            8 => Queued,
            9 => Full,
            10 => Pull,
            11 => Item,
            12 => Empty,
            13 => Ask,
            14 => Answer,
            15 => Ack,
            _ => return None,
        })
    }
}

/// A parsed control block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Control {
    pub op: Op,
    pub a: u64,
    pub b: u64,
    pub c: u64,
}

/// A push's `b`: how long it may wait for room, and how many envelopes
/// it carries.
pub(crate) fn push_b(hold_ms: u64, count: usize) -> u64 {
    hold_ms.min(u64::from(u32::MAX)) | (count as u64) << 32
}

/// A push's `b` taken apart: (hold in ms, envelope count, at least 1).
pub(crate) fn push_b_parts(b: u64) -> (u64, u64) {
    (b & u64::from(u32::MAX), (b >> 32).max(1))
}

impl Control {
    pub fn new(op: Op, a: u64, b: u64, c: u64) -> Control {
        Control { op, a, b, c }
    }

    /// The 44 bytes of this block.
    pub fn encode(&self) -> [u8; CONTROL_LEN] {
        let mut out = [0u8; CONTROL_LEN];
        out[0..4].copy_from_slice(&MAGIC);
        out[4] = VERSION;
        out[5] = self.op as u8;
        out[8..16].copy_from_slice(&self.a.to_le_bytes());
        out[16..24].copy_from_slice(&self.b.to_le_bytes());
        out[24..32].copy_from_slice(&self.c.to_le_bytes());
        out
    }

    /// Parses the block at the start of `msg` (bytes from a peer).
    pub fn decode(msg: &[u8]) -> Result<Control> {
        if msg.len() < CONTROL_LEN {
            return Err(Error::Corrupt {
                what: "nng message length",
                found: msg.len() as u64,
                expected: "at least the 44-byte control block",
            });
        }
        if msg[0..4] != MAGIC {
            return Err(Error::Corrupt {
                what: "nng message magic",
                found: u32::from_le_bytes([msg[0], msg[1], msg[2], msg[3]]) as u64,
                expected: "\"SHNG\" (a shoal peer)",
            });
        }
        if msg[4] != VERSION {
            return Err(Error::Corrupt {
                what: "nng protocol version",
                found: msg[4] as u64,
                expected: "2 (a peer of the same shoal release)",
            });
        }
        let op = Op::from_u8(msg[5]).ok_or(Error::Corrupt {
            what: "nng message op",
            found: msg[5] as u64,
            expected: "1..=15",
        })?;
        if msg[6] != 0 || msg[7] != 0 {
            return Err(Error::Corrupt {
                what: "nng control reserved bytes",
                found: u16::from_le_bytes([msg[6], msg[7]]) as u64,
                expected: "0",
            });
        }
        if msg[32..CONTROL_LEN].iter().any(|&b| b != 0) {
            return Err(Error::Corrupt {
                what: "nng control padding",
                found: msg[32..CONTROL_LEN].iter().filter(|&&b| b != 0).count() as u64,
                expected: "12 zero bytes",
            });
        }
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&msg[i..i + 8]);
            u64::from_le_bytes(w)
        };
        Ok(Control {
            op,
            a: word(8),
            b: word(16),
            c: word(24),
        })
    }
}

/// Bytes an envelope of (`topic`, `payload`) takes in a message, padding
/// included.
pub(crate) fn envelope_len(topic: &[u8], payload: usize) -> usize {
    HEADER_LEN + pad16(topic.len()) + pad16(payload)
}

/// Appends the envelope of (`kind`, `topic`, `payload`, `id`), padded to
/// 16, to `out`.
pub(crate) fn put_envelope(
    out: &mut Vec<u8>,
    kind: Kind,
    topic: &[u8],
    payload: &[u8],
    id: u64,
) -> Result<()> {
    let h = Header::new(kind, topic, payload.len(), id)?;
    crate::envelope::encode_into(&h, topic, payload, out);
    out.resize(out.len() + pad16(payload.len()) - payload.len(), 0);
    Ok(())
}

/// Where one envelope of a message lies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Located {
    pub header: Header,
    pub topic: Range<usize>,
    pub payload: Range<usize>,
}

/// Finds the `count` envelopes after the control block of `msg`, each
/// checked against `max_payload` before anything else is done with it;
/// `kind` is the only kind accepted. Nothing may trail the last one.
pub(crate) fn locate(
    msg: &[u8],
    count: u64,
    kind: Kind,
    max_payload: usize,
) -> Result<Vec<Located>> {
    // (Found by the nng_message fuzz target: a message shorter than the
    // control block made the trailing-bytes check below underflow.)
    if msg.len() < CONTROL_LEN {
        return Err(Error::Corrupt {
            what: "nng message length",
            found: msg.len() as u64,
            expected: "at least the 44-byte control block",
        });
    }
    // Each envelope takes at least 16 bytes: a count larger than the
    // message could hold is refused before anything is allocated for it.
    let room = (msg.len().saturating_sub(CONTROL_LEN) / HEADER_LEN) as u64;
    if count > room {
        return Err(Error::Corrupt {
            what: "envelope count",
            found: count,
            expected: "no more than the message can hold",
        });
    }
    let max_body = u32::try_from(max_payload.saturating_add(pad16(crate::envelope::MAX_TOPIC)))
        .unwrap_or(u32::MAX);
    let mut at = CONTROL_LEN;
    let mut out = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let Some(head) = msg.get(at..at + HEADER_LEN) else {
            return Err(Error::Corrupt {
                what: "envelope header offset",
                found: at as u64,
                expected: "a header inside the message",
            });
        };
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(head);
        let header = Header::decode(&h, max_body)?;
        if header.kind != kind {
            return Err(Error::Corrupt {
                what: "envelope kind",
                found: header.kind as u64,
                expected: "the kind this exchange carries",
            });
        }
        if header.payload_len() > max_payload {
            return Err(Error::TooLarge {
                what: "payload",
                got: header.payload_len() as u64,
                limit: max_payload as u64,
            });
        }
        let body = at + HEADER_LEN;
        let end = body + header.body_len as usize;
        let padded = body + header.payload_offset() + pad16(header.payload_len());
        if padded > msg.len() {
            return Err(Error::Corrupt {
                what: "envelope end",
                found: padded as u64,
                expected: "an envelope inside the message",
            });
        }
        out.push(Located {
            header,
            topic: body..body + header.topic_len as usize,
            payload: body + header.payload_offset()..end,
        });
        at = padded;
    }
    if at != msg.len() {
        return Err(Error::Corrupt {
            what: "bytes after the last envelope",
            found: msg.len().abs_diff(at) as u64,
            expected: "0",
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn msg(c: Control, envs: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut m = c.encode().to_vec();
        for (t, p) in envs {
            put_envelope(&mut m, Kind::Message, t, p, 5).unwrap();
        }
        m
    }

    #[test]
    fn a_batch_round_trips_with_aligned_payloads() {
        let envs: [(&[u8], &[u8]); 3] = [(b"", b""), (b"topic", b"abc"), (b"x", &[9u8; 1000])];
        let m = msg(Control::new(Op::Batch, 1, 2, 3), &envs);
        let c = Control::decode(&m).unwrap();
        assert_eq!(c, Control::new(Op::Batch, 1, 2, 3));
        let got = locate(&m, 3, Kind::Message, 1 << 20).unwrap();
        for (g, (t, p)) in got.iter().zip(envs) {
            assert_eq!(&m[g.topic.clone()], t);
            assert_eq!(&m[g.payload.clone()], p);
            // Aligned where NNG's REQ/REP put a body: 4 past a boundary.
            assert_eq!((g.payload.start + 4) % 16, 0);
            assert_eq!(g.header.id, 5);
        }
        assert_eq!(
            m.len(),
            CONTROL_LEN
                + envs
                    .iter()
                    .map(|(t, p)| envelope_len(t, p.len()))
                    .sum::<usize>()
        );
    }

    #[test]
    fn a_message_shorter_than_its_control_block_is_refused() {
        for n in 0..CONTROL_LEN {
            assert!(
                locate(&vec![0u8; n], 0, Kind::Message, 1 << 16).is_err(),
                "{n}"
            );
        }
    }

    #[test]
    fn hostile_messages_are_refused() {
        let good = msg(Control::new(Op::Batch, 1, 0, 1), &[(b"t", b"hello")]);
        // Too short, bad magic, version, op, reserved bytes.
        assert!(Control::decode(&good[..CONTROL_LEN - 1]).is_err());
        for (i, v) in [(0, b'X'), (4, 1), (5, 0), (5, 16), (6, 1), (32, 1), (43, 1)] {
            let mut m = good.clone();
            m[i] = v;
            assert!(Control::decode(&m).is_err(), "byte {i} = {v}");
        }
        // Count: more than present, more than could fit, fewer (trailing).
        assert!(locate(&good, 2, Kind::Message, 1 << 20).is_err());
        assert!(locate(&good, u64::MAX, Kind::Message, 1 << 20).is_err());
        assert!(locate(&good, 0, Kind::Message, 1 << 20).is_err());
        // Wrong kind; payload over the limit; a body length past the end.
        assert!(locate(&good, 1, Kind::Request, 1 << 20).is_err());
        assert!(matches!(
            locate(&good, 1, Kind::Message, 4),
            Err(Error::TooLarge { .. })
        ));
        let mut m = good.clone();
        m[CONTROL_LEN..CONTROL_LEN + 4].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
        assert!(locate(&m, 1, Kind::Message, usize::MAX).is_err());
        // Truncated anywhere.
        for n in CONTROL_LEN..good.len() {
            assert!(
                locate(&good[..n], 1, Kind::Message, 1 << 20).is_err(),
                "{n}"
            );
        }
    }

    proptest! {
        /// Random bytes never panic the parser, and what it accepts lies
        /// inside the message.
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300), count in 0u64..8) {
            let mut m = Control::new(Op::Batch, 0, 0, count).encode().to_vec();
            m.extend_from_slice(&bytes);
            if let Ok(found) = locate(&m, count, Kind::Message, 1 << 10) {
                for f in found {
                    prop_assert!(f.payload.end <= m.len() && f.topic.end <= m.len());
                }
            }
            let _ = Control::decode(&bytes);
        }
    }
}

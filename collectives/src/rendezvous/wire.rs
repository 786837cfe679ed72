//! The rendezvous protocol's bytes, sans IO: requests, replies, and the
//! length-prefixed frames they travel in. Everything a peer sends is
//! checked before use: lengths against what is left and against the
//! largest frame allowed, before anything is allocated.
//!
//! A frame is a 4-byte little-endian body length, then the body: one
//! byte of kind, then the kind's fields (integers little-endian; a key is
//! a 2-byte length and its bytes; a value is what is left of the body).

use crate::error::{Error, Result};
use std::io::{Read, Write};

/// The protocol's version, checked by [`Request::Hello`] (2: the hello
/// carries the group's [`Secret`]).
pub const VERSION: u16 = 2;
/// Longest key.
pub const MAX_KEY: usize = 1024;
/// Longest [`Secret`] (a longer one is refused by
/// [`Client::connect`](super::Client::connect), not cut).
pub const MAX_SECRET: usize = MAX_KEY;

/// What a rank asks the rendezvous.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// The first request of a connection: who asks, in a group of how
    /// many, speaking which version.
    Hello {
        /// Its protocol version.
        version: u16,
        /// Its rank.
        rank: u32,
        /// The group's size as it knows it.
        size: u32,
        /// The group's secret as it knows it (empty: none).
        secret: Secret,
    },
    /// Takes part, as `rank` of `n`, in the collective `key`, giving
    /// `value`; answered once all `n` took part (with every value, in
    /// rank order, if `want`), or after `wait_ms` with the ranks absent.
    Collect {
        /// The collective's name (unique per call).
        key: Vec<u8>,
        /// Ranks taking part.
        n: u32,
        /// This rank among them.
        rank: u32,
        /// Whether the answer carries the values.
        want: bool,
        /// Longest wait, in milliseconds.
        wait_ms: u32,
        /// What this rank gives.
        value: Vec<u8>,
    },
    /// Queues for the lock `key`; answered when granted, or after
    /// `wait_ms` (then the place in the queue is given up).
    Lock {
        /// The lock's name.
        key: Vec<u8>,
        /// The asker's rank and pid (named to the next holder should it
        /// die holding the lock).
        rank: u32,
        /// Its pid.
        pid: u32,
        /// Longest wait, in milliseconds (0: try once).
        wait_ms: u32,
        /// After how long a wait the asker is told who holds the lock
        /// (an interim [`Reply::Held`]), in milliseconds.
        notice_ms: u32,
    },
    /// Asks the service `key` (one rank 0 runs, such as a task pool)
    /// `body`; answered with its answer.
    Call {
        /// The service's name.
        key: Vec<u8>,
        /// What is asked (the service reads it).
        body: Vec<u8>,
    },
    /// Gives the lock `key` back (held through this connection).
    Unlock {
        /// The lock's name.
        key: Vec<u8>,
        /// Whether what it protects is consistent: false when it was
        /// granted after a holder died and nobody said it was repaired
        /// (the next holder is told the same then).
        consistent: bool,
    },
}

/// What a rank shows the rendezvous to be let in: the same bytes as
/// rank 0's (`SHOAL_SECRET`, or
/// [`GroupOptions::secret`](crate::GroupOptions::secret)), or none on
/// both sides. It keeps out connections from outside the job (another
/// job that picked the same port, a stranger on the network); it is sent
/// in clear, so it does not keep out one who can read the job's traffic.
/// Its `Debug` names its length only, so logs never show it.
///
/// ```
/// use shoal_collectives::rendezvous::wire::Secret;
/// let s = Secret::new(b"job-42-f3a9".to_vec());
/// assert!(s.matches(&Secret::new(b"job-42-f3a9".to_vec())));
/// assert!(!s.matches(&Secret::none()));
/// assert!(Secret::none().is_empty());
/// assert_eq!(format!("{s:?}"), "Secret(11 bytes)");
/// ```
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// `bytes` as a secret (at most [`MAX_SECRET`] of them go on the
    /// wire: a longer one is refused when used).
    pub fn new(bytes: Vec<u8>) -> Secret {
        Secret(bytes)
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// No secret.
    pub fn none() -> Secret {
        Secret(Vec::new())
    }

    /// Whether it is none (no bytes).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `other` is the same secret, in time that depends on the
    /// lengths only (not on where the bytes first differ).
    pub fn matches(&self, other: &Secret) -> bool {
        if self.0.len() != other.0.len() {
            return false;
        }
        let diff = self
            .0
            .iter()
            .zip(&other.0)
            .fold(0u8, |d, (a, b)| d | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

/// What the rendezvous answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Done.
    Ok,
    /// Every rank's value, in rank order.
    Values(Vec<Vec<u8>>),
    /// The wait ended before these ranks took part.
    Absent(Vec<u32>),
    /// The lock is the asker's; its previous holder died holding it, if
    /// `died` names one (rank, pid).
    Granted {
        /// The dead holder, if any.
        died: Option<(u32, u32)>,
        /// The asker's place in arrival order (counted from 0 per lock).
        ticket: u64,
        /// The grant's place in grant order (counted from 0 per lock):
        /// equal to the ticket while grants follow arrivals.
        turn: u64,
    },
    /// Not final: the lock is still held, by this rank and pid, for this
    /// many milliseconds so far.
    Held {
        /// The holder's rank.
        rank: u32,
        /// Its pid.
        pid: u32,
        /// How long it has held it.
        held_ms: u64,
    },
    /// The wait for the lock ended; it was not granted.
    NotGranted,
    /// A service's answer.
    Answer(Vec<u8>),
    /// Refused, and why.
    Refused(String),
}

mod kind {
    pub const HELLO: u8 = 1;
    pub const COLLECT: u8 = 2;
    pub const LOCK: u8 = 3;
    pub const UNLOCK: u8 = 4;
    pub const CALL: u8 = 5;

    pub const OK: u8 = 101;
    pub const VALUES: u8 = 102;
    pub const ABSENT: u8 = 103;
    pub const GRANTED: u8 = 104;
    pub const HELD: u8 = 105;
    pub const NOT_GRANTED: u8 = 106;
    pub const REFUSED: u8 = 107;
    pub const ANSWER: u8 = 108;
}

fn malformed(why: impl Into<String>) -> Error {
    Error::Malformed {
        what: "rendezvous message",
        why: why.into(),
    }
}

/// Reads fields off a body, each checked against what is left.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(malformed(format!(
                "{n} bytes wanted, {} left",
                self.0.len()
            )));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn key(&mut self) -> Result<Vec<u8>> {
        let n = usize::from(self.u16()?);
        if n > MAX_KEY {
            return Err(malformed(format!("a key of {n} bytes (at most {MAX_KEY})")));
        }
        Ok(self.take(n)?.to_vec())
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
    fn end(&self) -> Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(malformed(format!("{} bytes past the end", self.0.len())))
        }
    }
}

fn flag(f: &mut Fields<'_>) -> Result<bool> {
    match f.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        b => Err(malformed(format!("a flag of {b}"))),
    }
}

fn put_key(out: &mut Vec<u8>, key: &[u8]) {
    let n = key.len().min(MAX_KEY);
    out.extend_from_slice(&(n as u16).to_le_bytes());
    out.extend_from_slice(&key[..n]);
}

impl Request {
    /// The body of this request (a key longer than [`MAX_KEY`] is cut:
    /// keys are made by this crate, well below it).
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Request::Hello {
                version,
                rank,
                size,
                secret,
            } => {
                out.push(kind::HELLO);
                out.extend_from_slice(&version.to_le_bytes());
                out.extend_from_slice(&rank.to_le_bytes());
                out.extend_from_slice(&size.to_le_bytes());
                // None: nothing, as version 1's hello (whose rank 0 then
                // reads it whole and names the version).
                if !secret.is_empty() {
                    put_key(out, &secret.0);
                }
            }
            Request::Collect {
                key,
                n,
                rank,
                want,
                wait_ms,
                value,
            } => {
                out.push(kind::COLLECT);
                put_key(out, key);
                out.extend_from_slice(&n.to_le_bytes());
                out.extend_from_slice(&rank.to_le_bytes());
                out.push(u8::from(*want));
                out.extend_from_slice(&wait_ms.to_le_bytes());
                out.extend_from_slice(value);
            }
            Request::Lock {
                key,
                rank,
                pid,
                wait_ms,
                notice_ms,
            } => {
                out.push(kind::LOCK);
                put_key(out, key);
                out.extend_from_slice(&rank.to_le_bytes());
                out.extend_from_slice(&pid.to_le_bytes());
                out.extend_from_slice(&wait_ms.to_le_bytes());
                out.extend_from_slice(&notice_ms.to_le_bytes());
            }
            Request::Call { key, body } => {
                out.push(kind::CALL);
                put_key(out, key);
                out.extend_from_slice(body);
            }
            Request::Unlock { key, consistent } => {
                out.push(kind::UNLOCK);
                put_key(out, key);
                out.push(u8::from(*consistent));
            }
        }
    }

    /// Reads a request's body.
    pub fn decode(body: &[u8]) -> Result<Request> {
        let mut f = Fields(body);
        let r = match f.u8()? {
            kind::HELLO => Request::Hello {
                version: f.u16()?,
                rank: f.u32()?,
                size: f.u32()?,
                // Absent from version 1's hello: the version says what
                // is wrong then.
                secret: Secret(if f.0.is_empty() { Vec::new() } else { f.key()? }),
            },
            kind::COLLECT => {
                let key = f.key()?;
                let n = f.u32()?;
                let rank = f.u32()?;
                let want = flag(&mut f)?;
                let wait_ms = f.u32()?;
                Request::Collect {
                    key,
                    n,
                    rank,
                    want,
                    wait_ms,
                    value: f.rest().to_vec(),
                }
            }
            kind::LOCK => Request::Lock {
                key: f.key()?,
                rank: f.u32()?,
                pid: f.u32()?,
                wait_ms: f.u32()?,
                notice_ms: f.u32()?,
            },
            kind::CALL => Request::Call {
                key: f.key()?,
                body: f.rest().to_vec(),
            },
            kind::UNLOCK => Request::Unlock {
                key: f.key()?,
                consistent: flag(&mut f)?,
            },
            k => return Err(malformed(format!("request kind {k}"))),
        };
        f.end()?;
        Ok(r)
    }
}

impl Reply {
    /// The body of this reply.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Reply::Ok => out.push(kind::OK),
            Reply::Values(v) => {
                out.push(kind::VALUES);
                out.extend_from_slice(&(v.len() as u32).to_le_bytes());
                for x in v {
                    out.extend_from_slice(&(x.len() as u64).to_le_bytes());
                    out.extend_from_slice(x);
                }
            }
            Reply::Absent(r) => {
                out.push(kind::ABSENT);
                out.extend_from_slice(&(r.len() as u32).to_le_bytes());
                for x in r {
                    out.extend_from_slice(&x.to_le_bytes());
                }
            }
            Reply::Granted { died, ticket, turn } => {
                out.push(kind::GRANTED);
                out.extend_from_slice(&ticket.to_le_bytes());
                out.extend_from_slice(&turn.to_le_bytes());
                match died {
                    None => out.push(0),
                    Some((rank, pid)) => {
                        out.push(1);
                        out.extend_from_slice(&rank.to_le_bytes());
                        out.extend_from_slice(&pid.to_le_bytes());
                    }
                }
            }
            Reply::Held { rank, pid, held_ms } => {
                out.push(kind::HELD);
                out.extend_from_slice(&rank.to_le_bytes());
                out.extend_from_slice(&pid.to_le_bytes());
                out.extend_from_slice(&held_ms.to_le_bytes());
            }
            Reply::NotGranted => out.push(kind::NOT_GRANTED),
            Reply::Answer(b) => {
                out.push(kind::ANSWER);
                out.extend_from_slice(b);
            }
            Reply::Refused(why) => {
                out.push(kind::REFUSED);
                out.extend_from_slice(why.as_bytes());
            }
        }
    }

    /// Reads a reply's body.
    pub fn decode(body: &[u8]) -> Result<Reply> {
        let mut f = Fields(body);
        let r = match f.u8()? {
            kind::OK => Reply::Ok,
            kind::VALUES => {
                let n = f.u32()? as usize;
                // Each value takes at least its 8-byte length: a count
                // the body cannot hold is refused before allocating.
                if n > f.0.len() / 8 {
                    return Err(malformed(format!("{n} values in {} bytes", f.0.len())));
                }
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    let len = usize::try_from(f.u64()?)
                        .map_err(|_| malformed("a value longer than memory"))?;
                    v.push(f.take(len)?.to_vec());
                }
                Reply::Values(v)
            }
            kind::ABSENT => {
                let n = f.u32()? as usize;
                if n > f.0.len() / 4 {
                    return Err(malformed(format!("{n} ranks in {} bytes", f.0.len())));
                }
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(f.u32()?);
                }
                Reply::Absent(v)
            }
            kind::GRANTED => {
                let ticket = f.u64()?;
                let turn = f.u64()?;
                let died = match f.u8()? {
                    0 => None,
                    1 => Some((f.u32()?, f.u32()?)),
                    b => return Err(malformed(format!("a flag of {b}"))),
                };
                Reply::Granted { died, ticket, turn }
            }
            kind::HELD => Reply::Held {
                rank: f.u32()?,
                pid: f.u32()?,
                held_ms: f.u64()?,
            },
            kind::NOT_GRANTED => Reply::NotGranted,
            kind::ANSWER => Reply::Answer(f.rest().to_vec()),
            kind::REFUSED => Reply::Refused(String::from_utf8_lossy(f.rest()).into_owned()),
            k => return Err(malformed(format!("reply kind {k}"))),
        };
        f.end()?;
        Ok(r)
    }
}

/// Writes one frame holding `body`.
pub fn write_frame(w: &mut impl Write, body: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(body.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "a frame past 4 GiB"))?;
    let mut head = [0u8; 4];
    head.copy_from_slice(&len.to_le_bytes());
    w.write_all(&head)?;
    w.write_all(body)?;
    w.flush()
}

/// Most a frame's body is given before its bytes arrive.
const FIRST_ALLOC: usize = 64 << 10;

/// Reads one frame's body, refusing (before allocating) one longer than
/// `max`. `Ok(None)`: the peer closed the connection between frames.
pub fn read_frame(r: &mut impl Read, max: usize) -> Result<Option<Vec<u8>>> {
    let mut head = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(malformed("the connection closed inside a frame's length")),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("reading a rendezvous frame", e)),
        }
    }
    let len = u32::from_le_bytes(head) as usize;
    if len > max {
        return Err(Error::TooLarge {
            what: "rendezvous frame",
            got: len as u64,
            limit: max as u64,
        });
    }
    // Grown as the bytes come, not allocated at the length announced: a
    // peer that announces a large frame and sends little holds little.
    let mut body = Vec::with_capacity(len.min(FIRST_ALLOC));
    let got = r
        .take(len as u64)
        .read_to_end(&mut body)
        .map_err(|e| Error::io("reading a rendezvous frame", e))?;
    if got < len {
        return Err(malformed(format!(
            "the connection closed inside a frame of {len} bytes"
        )));
    }
    Ok(Some(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn requests() -> Vec<Request> {
        vec![
            Request::Hello {
                version: VERSION,
                rank: 3,
                size: 4,
                secret: Secret::new(b"s3cret".to_vec()),
            },
            Request::Hello {
                version: VERSION,
                rank: 0,
                size: 1,
                secret: Secret::none(),
            },
            Request::Collect {
                key: b"g/0/barrier/7".to_vec(),
                n: 4,
                rank: 2,
                want: true,
                wait_ms: 1000,
                value: vec![1, 2, 3],
            },
            Request::Collect {
                key: vec![],
                n: 1,
                rank: 0,
                want: false,
                wait_ms: 0,
                value: vec![],
            },
            Request::Lock {
                key: b"lock".to_vec(),
                rank: 1,
                pid: 99,
                wait_ms: u32::MAX,
                notice_ms: 2000,
            },
            Request::Unlock {
                key: b"lock".to_vec(),
                consistent: false,
            },
            Request::Call {
                key: b"svc".to_vec(),
                body: vec![1, 2],
            },
        ]
    }

    fn replies() -> Vec<Reply> {
        vec![
            Reply::Ok,
            Reply::Values(vec![vec![], vec![7; 100], vec![1]]),
            Reply::Absent(vec![1, 3]),
            Reply::Granted {
                died: None,
                ticket: 0,
                turn: 0,
            },
            Reply::Granted {
                died: Some((2, 1234)),
                ticket: 7,
                turn: 6,
            },
            Reply::Held {
                rank: 1,
                pid: 5,
                held_ms: 12_345,
            },
            Reply::NotGranted,
            Reply::Answer(vec![9; 3]),
            Reply::Refused("no".into()),
        ]
    }

    #[test]
    fn everything_reads_back() {
        for r in requests() {
            let mut b = Vec::new();
            r.encode(&mut b);
            assert_eq!(Request::decode(&b).unwrap(), r);
            // Every cut of it is refused, not misread.
            for cut in 0..b.len() {
                if let Ok(x) = Request::decode(&b[..cut]) {
                    // A collect's value (a call's body) is the rest: a
                    // cut one is a shorter value, which is what a frame
                    // said. A hello cut before its secret is version 1's
                    // hello, with none (let in only where rank 0 has
                    // none either).
                    assert!(
                        matches!(x, Request::Collect { .. } | Request::Call { .. })
                            || matches!(&x, Request::Hello { secret, .. } if secret.is_empty()),
                        "{x:?}"
                    );
                }
            }
        }
        for r in replies() {
            let mut b = Vec::new();
            r.encode(&mut b);
            assert_eq!(Reply::decode(&b).unwrap(), r);
            let mut long = b.clone();
            long.push(0);
            if !matches!(r, Reply::Refused(_) | Reply::Answer(_)) {
                assert!(Reply::decode(&long).is_err(), "{r:?}");
            }
        }
    }

    #[test]
    fn hostile_counts_and_lengths_are_refused_before_allocating() {
        // A reply claiming 2^32-1 values in 4 bytes.
        let mut b = vec![kind::VALUES];
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        b.extend_from_slice(&[0; 4]);
        assert!(Reply::decode(&b).is_err());
        // One value claiming 2^64-1 bytes.
        let mut b = vec![kind::VALUES];
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(Reply::decode(&b).is_err());
        // A key longer than allowed.
        let mut b = vec![kind::UNLOCK];
        b.extend_from_slice(&u16::MAX.to_le_bytes());
        b.extend_from_slice(&vec![b'k'; usize::from(u16::MAX)]);
        assert!(Request::decode(&b).is_err());
        // A 4 GiB frame length.
        let mut r = std::io::Cursor::new(u32::MAX.to_le_bytes().to_vec());
        assert!(matches!(
            read_frame(&mut r, 1 << 20),
            Err(Error::TooLarge { .. })
        ));
        // A frame cut short.
        let mut b = 10u32.to_le_bytes().to_vec();
        b.extend_from_slice(&[1, 2, 3]);
        assert!(read_frame(&mut std::io::Cursor::new(b), 1 << 20).is_err());
        // Closed between frames.
        assert!(read_frame(&mut std::io::Cursor::new(Vec::new()), 16)
            .unwrap()
            .is_none());
        // Unknown kinds.
        assert!(Request::decode(&[0]).is_err());
        assert!(Request::decode(&[]).is_err());
        assert!(Reply::decode(&[200]).is_err());
    }

    #[test]
    fn frames_read_back() {
        let mut b = Vec::new();
        write_frame(&mut b, b"hello").unwrap();
        write_frame(&mut b, b"").unwrap();
        let mut r = std::io::Cursor::new(b);
        assert_eq!(read_frame(&mut r, 16).unwrap().unwrap(), b"hello");
        assert_eq!(read_frame(&mut r, 16).unwrap().unwrap(), b"");
        assert!(read_frame(&mut r, 16).unwrap().is_none());
    }

    /// A frame announcing far more than it brings is refused once the
    /// connection ends, without its announced length having been taken.
    #[test]
    fn a_frame_announcing_more_than_it_sends_is_refused() {
        let mut b = (1u32 << 30).to_le_bytes().to_vec();
        b.extend_from_slice(b"short");
        let r = read_frame(&mut std::io::Cursor::new(b), 2 << 30);
        assert!(matches!(r, Err(Error::Malformed { .. })), "{r:?}");
    }

    /// A hello without a secret is version 1's hello byte for byte but
    /// its version, so a rank 0 of version 1 reads it and names the
    /// version instead of dropping the connection unanswered.
    #[test]
    fn a_hello_without_a_secret_is_shaped_as_version_1() {
        let mut b = Vec::new();
        Request::Hello {
            version: 1,
            rank: 2,
            size: 4,
            secret: Secret::none(),
        }
        .encode(&mut b);
        assert_eq!(b, [1, 1, 0, 2, 0, 0, 0, 4, 0, 0, 0]);
    }

    proptest! {
        #[test]
        fn random_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            // What is accepted reads back the same once encoded again.
            if let Ok(q) = Request::decode(&body) {
                let mut b = Vec::new();
                q.encode(&mut b);
                prop_assert_eq!(Request::decode(&b).ok(), Some(q));
            }
            if let Ok(a) = Reply::decode(&body) {
                let mut b = Vec::new();
                a.encode(&mut b);
                prop_assert_eq!(Reply::decode(&b).ok(), Some(a));
            }
        }

        #[test]
        fn hellos_with_random_secrets_read_back(
            secret in proptest::collection::vec(any::<u8>(), 0..MAX_SECRET + 1),
            rank in any::<u32>(),
        ) {
            let q = Request::Hello { version: VERSION, rank, size: 7, secret: Secret::new(secret) };
            let mut b = Vec::new();
            q.encode(&mut b);
            prop_assert_eq!(Request::decode(&b).ok(), Some(q));
        }

        #[test]
        fn random_frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut r = std::io::Cursor::new(bytes);
            while let Ok(Some(_)) = read_frame(&mut r, 32) {}
        }
    }
}

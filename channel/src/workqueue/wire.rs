//! The protocol between a work queue's bridge and its peers on other
//! hosts: the bytes of each request and reply, and nothing else (no I/O:
//! the bridge and the remote endpoints drive it over request/reply).
//!
//! Every request starts with a 24-byte head: the operation (1 byte, 3
//! zero), an argument (u32, little endian: a wait in milliseconds), a
//! sequence number (u64: the asker's count of its requests, so a request
//! the wire delivers twice, after a reconnect, is answered from the first
//! answer and not done twice) and the session's token (u64: what the
//! join answered; a request without it changes nothing). Every reply
//! starts with a 16-byte head: a status (1 byte, 3 zero), then two
//! numbers whose meaning depends on it. What follows either head is the
//! body:
//!
//! - a put's: messages, each its length (u32) then its bytes;
//! - a take's: the most messages and bytes it takes (u32 each); its
//!   reply's: messages, each its length (u32), 12 zero bytes, its bytes
//!   and zeros to a multiple of 16 (so each starts 16-byte aligned where
//!   the body does, and an archive in it is read in place). A reply
//!   longer than the network carries comes in parts: the reply's second
//!   number is the whole body's length, and `More` asks for the rest;
//! - a claim's count (u64), a `More`'s offset (u64), a join's identity,
//!   a join reply's token (u64), the session's largest message (u64),
//!   the bridge's lease in ms (u64) and address, a failure's text.
//!
//! Everything read here comes from a peer that may be buggy or hostile:
//! decoding checks every length and value and says what was wrong.

/// Version of this protocol; a join from another is refused.
pub(crate) const VERSION: u32 = 2;
/// Bytes of a request's head.
pub(crate) const REQUEST_HEAD: usize = 24;
/// Bytes of a reply's head.
pub(crate) const HEAD: usize = 16;
/// Bytes before each message of a take's reply.
pub(crate) const RECORD_HEAD: usize = 16;
/// Bytes of a join's body before the asker's format.
const JOIN_FIXED: usize = 48;

/// What a request asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// Join the queue (to its door): body [`Join`]. Replied with the
    /// address of the asker's own replier, as text.
    Join = 1,
    /// Put the body as one message, waiting up to the argument (ms).
    Put = 2,
    /// Claim the body's count (u64) more messages.
    Claim = 3,
    /// Close the queue to claims.
    Close = 4,
    /// Take a message, waiting up to the argument (ms).
    Take = 5,
    /// Nothing: says the asker lives (a heartbeat; never deduplicated).
    Ping = 6,
    /// The asker leaves: its endpoint is dropped now, not at its lease.
    Bye = 7,
    /// The rest of the last reply, from the body's offset (u64) on.
    More = 8,
}

impl Op {
    fn from_byte(b: u8) -> Option<Op> {
        Some(match b {
            1 => Op::Join,
            2 => Op::Put,
            3 => Op::Claim,
            4 => Op::Close,
            5 => Op::Take,
            6 => Op::Ping,
            7 => Op::Bye,
            8 => Op::More,
            _ => return None,
        })
    }
}

/// A decoded request, borrowing its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Request<'a> {
    pub op: Op,
    pub arg: u32,
    pub seq: u64,
    pub token: u64,
    pub body: &'a [u8],
}

/// A request's head.
pub(crate) fn request_head(op: Op, arg: u32, seq: u64, token: u64) -> [u8; REQUEST_HEAD] {
    let mut h = [0u8; REQUEST_HEAD];
    h[0] = op as u8;
    h[4..8].copy_from_slice(&arg.to_le_bytes());
    h[8..16].copy_from_slice(&seq.to_le_bytes());
    h[16..24].copy_from_slice(&token.to_le_bytes());
    h
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        w.copy_from_slice(s);
    }
    u64::from_le_bytes(w)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        w.copy_from_slice(s);
    }
    u32::from_le_bytes(w)
}

/// Reads a request; says what is wrong with one that is not well formed.
pub(crate) fn request(bytes: &[u8]) -> Result<Request<'_>, &'static str> {
    let (h, body) = bytes
        .split_first_chunk::<REQUEST_HEAD>()
        .ok_or("a request shorter than its head")?;
    let op = Op::from_byte(h[0]).ok_or("an unknown operation")?;
    if h[1..4] != [0, 0, 0] {
        return Err("nonzero reserved bytes in a request's head");
    }
    let fits = match op {
        Op::Put => puts(body).all(|m| m.is_some()),
        Op::Claim | Op::More | Op::Take => body.len() == 8,
        Op::Join => body.len() >= JOIN_FIXED,
        Op::Close | Op::Ping | Op::Bye => body.is_empty(),
    };
    if !fits {
        return Err("a request body of the wrong length for its operation");
    }
    Ok(Request {
        op,
        arg: u32_at(h, 4),
        seq: u64_at(h, 8),
        token: u64_at(h, 16),
        body,
    })
}

/// A claim's count or a `More`'s offset, from its body (checked by
/// [`request`]).
pub(crate) fn body_u64(body: &[u8]) -> u64 {
    u64_at(body, 0)
}

/// A take's limits: the most messages, and the most bytes past the
/// first message.
pub(crate) fn take_body(count: u32, bytes: u32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&count.to_le_bytes());
    b[4..].copy_from_slice(&bytes.to_le_bytes());
    b
}

/// A take's limits, from its body (checked by [`request`]).
pub(crate) fn take_limits(body: &[u8]) -> (u32, u32) {
    (u32_at(body, 0), u32_at(body, 4))
}

/// Appends `msg` to a put's body.
pub(crate) fn push_put(body: &mut Vec<u8>, msg: &[&[u8]]) -> Result<(), &'static str> {
    let n: usize = msg.iter().map(|p| p.len()).sum();
    let len = u32::try_from(n).map_err(|_| "a message of 4 GiB or more")?;
    body.extend_from_slice(&len.to_le_bytes());
    for p in msg {
        body.extend_from_slice(p);
    }
    Ok(())
}

/// The messages of a put's body, in order (`None` where the body is cut
/// short: then the request is refused whole).
pub(crate) fn puts(body: &[u8]) -> impl Iterator<Item = Option<&[u8]>> {
    let mut rest = Some(body);
    std::iter::from_fn(move || {
        let r = rest?;
        if r.is_empty() {
            rest = None;
            return None;
        }
        let Some((len, after)) = r.split_first_chunk::<4>() else {
            rest = None;
            return Some(None);
        };
        let len = u32::from_le_bytes(*len) as usize;
        match (after.get(..len), after.get(len..)) {
            (Some(m), Some(more)) => {
                rest = Some(more);
                Some(Some(m))
            }
            _ => {
                rest = None;
                Some(None)
            }
        }
    })
}

/// Appends `msg` to a take reply's body (16-byte aligned records).
pub(crate) fn push_taken(body: &mut Vec<u8>, msg: &[u8]) {
    let len = msg.len() as u32;
    body.extend_from_slice(&len.to_le_bytes());
    body.extend_from_slice(&[0u8; RECORD_HEAD - 4]);
    body.extend_from_slice(msg);
    let pad = msg.len().next_multiple_of(16) - msg.len();
    body.extend_from_slice(&[0u8; 16][..pad]);
}

/// Where each message of a take reply's body is (offset and length),
/// or what is wrong with the body.
pub(crate) fn taken(body: &[u8]) -> Result<Vec<(usize, usize)>, &'static str> {
    let mut at = 0;
    let mut out = Vec::new();
    while at < body.len() {
        let len = u32_at(body, at) as usize;
        if body.len() - at < RECORD_HEAD {
            return Err("a taken message's head cut short");
        }
        let start = at + RECORD_HEAD;
        start
            .checked_add(len)
            .filter(|&e| e <= body.len())
            .ok_or("a taken message longer than the reply")?;
        out.push((start, len));
        at = start + len.next_multiple_of(16);
    }
    Ok(out)
}

/// Which end a joining peer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Puts messages (a work queue's producer, a gather's writer).
    Producer = 1,
    /// Takes them.
    Consumer = 2,
}

/// Who joins, and as what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Join<'a> {
    /// The asker's protocol version ([`VERSION`]).
    pub version: u32,
    pub role: Role,
    /// The channel kind it believes it joins (`Kind as u8 + 1`).
    pub kind: u8,
    pub pid: u32,
    pub host: u64,
    /// Bytes put before each of its messages (a gather writer's sender
    /// header; zeros otherwise, and then unused).
    pub head: [u8; 16],
    /// The largest network message the asker takes (its replies are cut
    /// to fit).
    pub max_message: u64,
    /// The asker's channel format ([`crate::handle::format`]).
    pub format: &'a str,
}

impl Join<'_> {
    /// The body of a join request.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(JOIN_FIXED + self.format.len());
        b.extend_from_slice(&self.version.to_le_bytes());
        b.push(self.role as u8);
        b.push(self.kind);
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&self.pid.to_le_bytes());
        b.extend_from_slice(&[0; 4]);
        b.extend_from_slice(&self.host.to_le_bytes());
        b.extend_from_slice(&self.head);
        b.extend_from_slice(&self.max_message.to_le_bytes());
        b.extend_from_slice(self.format.as_bytes());
        b
    }
}

/// Reads a join's body.
pub(crate) fn join(body: &[u8]) -> Result<Join<'_>, &'static str> {
    let (f, format) = body
        .split_first_chunk::<JOIN_FIXED>()
        .ok_or("a join shorter than its fixed part")?;
    let role = match f[4] {
        1 => Role::Producer,
        2 => Role::Consumer,
        _ => return Err("a join with an unknown role"),
    };
    let format = std::str::from_utf8(format).map_err(|_| "a join whose format is not UTF-8")?;
    let mut head = [0u8; 16];
    head.copy_from_slice(&f[24..40]);
    Ok(Join {
        version: u32::from_le_bytes([f[0], f[1], f[2], f[3]]),
        role,
        kind: f[5],
        pid: u32::from_le_bytes([f[8], f[9], f[10], f[11]]),
        host: u64::from_le_bytes([f[16], f[17], f[18], f[19], f[20], f[21], f[22], f[23]]),
        head,
        max_message: u64_at(f, 40),
        format,
    })
}

/// The body of a join's reply: the session's token, the largest network
/// message the session uses (the smaller of both sides'), the bridge's
/// lease in ms (how long it waits for a word from the peer before it
/// drops it: the peer's heartbeat goes well within it), then where its
/// replier is (text).
pub(crate) fn joined(token: u64, max_message: u64, lease_ms: u64, address: &str) -> Vec<u8> {
    let mut b = token.to_le_bytes().to_vec();
    b.extend_from_slice(&max_message.to_le_bytes());
    b.extend_from_slice(&lease_ms.to_le_bytes());
    b.extend_from_slice(address.as_bytes());
    b
}

/// A join reply's parts (see [`joined`]).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Joined<'a> {
    pub token: u64,
    pub max_message: u64,
    pub lease_ms: u64,
    pub address: &'a str,
}

/// A join reply's token, largest message, lease and address.
pub(crate) fn read_joined(body: &[u8]) -> Result<Joined<'_>, &'static str> {
    let (f, a) = body
        .split_first_chunk::<24>()
        .ok_or("a join reply without its token")?;
    let address = std::str::from_utf8(a).map_err(|_| "a join reply whose address is not text")?;
    Ok(Joined {
        token: u64_at(f, 0),
        max_message: u64_at(f, 8),
        lease_ms: u64_at(f, 16),
        address,
    })
}

/// How a request went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// Done (a take's message, a join's address follow as the body).
    Ok = 0,
    /// Not within the wait asked: the queue stayed full (put) or empty
    /// (take). The asker asks again while its own timeout lasts.
    NotYet = 1,
    /// The work is over: nothing more will come (take).
    Finished = 2,
    /// The queue is closed to this call ([`crate::Error::Closed`]).
    Closed = 3,
    /// The work ended without some claimed messages: the first number is
    /// the pid of the producer found gone, the second how many.
    Lost = 4,
    /// Failed on the queue's host: the body says why.
    Failed = 5,
    /// A join from another build: the body is the queue's format.
    Incompatible = 6,
    /// A join for another kind of channel: the body names the queue's.
    WrongKind = 7,
    /// A request without this session's token: nothing was done.
    NotYours = 8,
}

impl Status {
    fn from_byte(b: u8) -> Option<Status> {
        Some(match b {
            0 => Status::Ok,
            1 => Status::NotYet,
            2 => Status::Finished,
            3 => Status::Closed,
            4 => Status::Lost,
            5 => Status::Failed,
            6 => Status::Incompatible,
            7 => Status::WrongKind,
            8 => Status::NotYours,
            _ => return None,
        })
    }
}

/// A decoded reply, borrowing its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reply<'a> {
    pub status: Status,
    pub a: u32,
    pub b: u64,
    pub body: &'a [u8],
}

/// A reply's head.
pub(crate) fn reply_head(status: Status, a: u32, b: u64) -> [u8; HEAD] {
    let mut h = [0u8; HEAD];
    h[0] = status as u8;
    h[4..8].copy_from_slice(&a.to_le_bytes());
    h[8..16].copy_from_slice(&b.to_le_bytes());
    h
}

/// Reads a reply; says what is wrong with one that is not well formed.
pub(crate) fn reply(bytes: &[u8]) -> Result<Reply<'_>, &'static str> {
    let (h, body) = bytes
        .split_first_chunk::<HEAD>()
        .ok_or("a reply shorter than its head")?;
    let status = Status::from_byte(h[0]).ok_or("an unknown reply status")?;
    if h[1..4] != [0, 0, 0] {
        return Err("nonzero reserved bytes in a reply's head");
    }
    Ok(Reply {
        status,
        a: u32::from_le_bytes([h[4], h[5], h[6], h[7]]),
        b: u64::from_le_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]),
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(op: Op, arg: u32, seq: u64, body: &[u8]) -> Vec<u8> {
        let mut b = request_head(op, arg, seq, 0xdead).to_vec();
        b.extend_from_slice(body);
        b
    }

    #[test]
    fn requests_round_trip() {
        let mut body = Vec::new();
        push_put(&mut body, &[b"jo", b"b"]).unwrap();
        push_put(&mut body, &[b""]).unwrap();
        push_put(&mut body, &[b"second"]).unwrap();
        let put = req(Op::Put, 250, 7, &body);
        let r = request(&put).unwrap();
        assert_eq!((r.op, r.arg, r.seq, r.token), (Op::Put, 250, 7, 0xdead));
        let got: Vec<&[u8]> = puts(r.body).map(Option::unwrap).collect();
        assert_eq!(got, [&b"job"[..], b"", b"second"]);

        let claim = req(Op::Claim, 0, 8, &5u64.to_le_bytes());
        let r = request(&claim).unwrap();
        assert_eq!((r.op, body_u64(r.body)), (Op::Claim, 5));
        let take = req(Op::Take, 10, 9, &take_body(16, 1 << 20));
        assert_eq!(take_limits(request(&take).unwrap().body), (16, 1 << 20));

        let j = Join {
            version: VERSION,
            role: Role::Consumer,
            kind: 2,
            pid: 42,
            host: 0xfeed,
            head: [3; 16],
            max_message: 1 << 20,
            format: "ch2.test",
        };
        let b = req(Op::Join, 0, 1, &j.encode());
        let r = request(&b).unwrap();
        assert_eq!(join(r.body).unwrap(), j);
        let body = joined(77, 4096, 2000, "quic://[::1]:5?pin=00");
        assert_eq!(
            read_joined(&body).unwrap(),
            Joined {
                token: 77,
                max_message: 4096,
                lease_ms: 2000,
                address: "quic://[::1]:5?pin=00"
            }
        );
    }

    #[test]
    fn taken_messages_are_aligned_and_read_back() {
        let mut body = Vec::new();
        for m in [&b"a"[..], b"", &[7u8; 33]] {
            push_taken(&mut body, m);
        }
        let at = taken(&body).unwrap();
        assert_eq!(at.iter().map(|a| a.1).collect::<Vec<_>>(), [1, 0, 33]);
        assert!(at.iter().all(|a| a.0 % 16 == 0));
        assert_eq!(&body[at[2].0..at[2].0 + 33], &[7u8; 33]);
        // Cut short anywhere: refused, never a panic.
        for n in 1..body.len() {
            let _ = taken(&body[..n]);
        }
        // The first message whole, the second's head cut short.
        assert!(taken(&body[..40]).is_err());
        assert!(taken(&body[..16]).is_err());
    }

    #[test]
    fn replies_round_trip() {
        let mut b = reply_head(Status::Lost, 99, 3).to_vec();
        b.extend_from_slice(b"x");
        let r = reply(&b).unwrap();
        assert_eq!(
            (r.status, r.a, r.b, r.body),
            (Status::Lost, 99, 3, &b"x"[..])
        );
    }

    #[test]
    fn hostile_requests_are_refused_by_name() {
        assert!(request(b"").is_err());
        assert!(request(&[2; REQUEST_HEAD - 1]).is_err());
        let mut h = request_head(Op::Close, 0, 1, 0);
        assert!(request(&h).is_ok());
        h[0] = 0;
        assert_eq!(request(&h).unwrap_err(), "an unknown operation");
        h[0] = 200;
        assert!(request(&h).is_err());
        let mut h = request_head(Op::Close, 0, 1, 0);
        h[2] = 1;
        assert!(request(&h).is_err());
        // A close with a body, a claim without its count, a short join, a
        // put whose message runs past the body.
        assert!(request(&req(Op::Close, 0, 1, &[0])).is_err());
        assert!(request(&req(Op::Claim, 0, 1, &[1, 2, 3])).is_err());
        assert!(request(&req(Op::Take, 0, 1, &[])).is_err());
        assert!(request(&req(Op::Join, 0, 1, &[0; JOIN_FIXED - 1])).is_err());
        let mut body = Vec::new();
        push_put(&mut body, &[b"abcdef"]).unwrap();
        assert!(request(&req(Op::Put, 0, 1, &body[..body.len() - 1])).is_err());
        assert!(request(&req(Op::Put, 0, 1, &[1, 0, 0])).is_err());
        assert!(request(&req(Op::Put, 0, 1, &u32::MAX.to_le_bytes())).is_err());
        // A join with an unknown role, or a format that is not UTF-8.
        let mut body = [0u8; JOIN_FIXED + 2];
        body[4] = 9;
        assert!(join(&body).is_err());
        body[4] = 1;
        body[JOIN_FIXED] = 0xff;
        assert!(join(&body).is_err());
        assert!(read_joined(&[1, 2]).is_err());
    }

    #[test]
    fn hostile_replies_are_refused() {
        assert!(reply(&[0; 15]).is_err());
        let mut h = reply_head(Status::Ok, 0, 0);
        h[0] = 9;
        assert!(reply(&h).is_err());
        let mut h = reply_head(Status::Ok, 0, 0);
        h[3] = 1;
        assert!(reply(&h).is_err());
        // A record claiming more than there is.
        let mut body = (1000u32).to_le_bytes().to_vec();
        body.extend_from_slice(&[0; 30]);
        assert!(taken(&body).is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_decode_or_fail_cleanly(b in proptest::collection::vec(proptest::num::u8::ANY, 0..120)) {
            if let Ok(r) = request(&b) {
                match r.op {
                    Op::Join => { let _ = join(r.body); }
                    Op::Put => { let _ = puts(r.body).count(); }
                    _ => { let _ = body_u64(r.body); let _ = take_limits(r.body); }
                }
            }
            if let Ok(r) = reply(&b) {
                let _ = taken(r.body);
                let _ = read_joined(r.body);
            }
        }
    }
}

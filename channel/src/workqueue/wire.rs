//! The protocol between a work queue's bridge and its peers on other
//! hosts: the bytes of each request and reply, and nothing else (no I/O:
//! the bridge and the remote endpoints drive it over request/reply).
//!
//! Every request starts with a 16-byte head: the operation (1 byte, 3
//! zero), an argument (u32, little endian: a wait in milliseconds) and
//! a sequence number (u64: the asker's count of its requests, so a
//! request the wire delivers twice, after a reconnect, is answered from
//! the first answer and not done twice). Every reply starts with a
//! 16-byte head too: a status (1 byte, 3 zero), then two numbers whose
//! meaning depends on it. What follows either head is the body: the
//! message of a put or a take (16-byte aligned where the head is, so an
//! archive in it can be read in place), a claim's count, a join's
//! identity, a failure's text.
//!
//! Everything read here comes from a peer that may be buggy or hostile:
//! decoding checks every length and value and says what was wrong.

/// Version of this protocol; a join from another is refused.
pub(crate) const VERSION: u32 = 1;
/// Bytes of a request's or a reply's head.
pub(crate) const HEAD: usize = 16;
/// Bytes of a join's body before the asker's format.
const JOIN_FIXED: usize = 40;

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
    pub body: &'a [u8],
}

/// A request's head.
pub(crate) fn request_head(op: Op, arg: u32, seq: u64) -> [u8; HEAD] {
    let mut h = [0u8; HEAD];
    h[0] = op as u8;
    h[4..8].copy_from_slice(&arg.to_le_bytes());
    h[8..16].copy_from_slice(&seq.to_le_bytes());
    h
}

/// Reads a request; says what is wrong with one that is not well formed.
pub(crate) fn request(bytes: &[u8]) -> Result<Request<'_>, &'static str> {
    let (h, body) = bytes
        .split_first_chunk::<HEAD>()
        .ok_or("a request shorter than its head")?;
    let op = Op::from_byte(h[0]).ok_or("an unknown operation")?;
    if h[1..4] != [0, 0, 0] {
        return Err("nonzero reserved bytes in a request's head");
    }
    let arg = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    let seq = u64::from_le_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]);
    let fits = match op {
        Op::Put => true,
        Op::Claim => body.len() == 8,
        Op::Join => body.len() >= JOIN_FIXED,
        Op::Close | Op::Take | Op::Ping | Op::Bye => body.is_empty(),
    };
    if !fits {
        return Err("a request body of the wrong length for its operation");
    }
    Ok(Request { op, arg, seq, body })
}

/// A claim's count, from its body (checked by [`request`]).
pub(crate) fn claim_count(body: &[u8]) -> u64 {
    body.try_into().map(u64::from_le_bytes).unwrap_or(0)
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
        format,
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

    #[test]
    fn requests_round_trip() {
        let mut put = request_head(Op::Put, 250, 7).to_vec();
        put.extend_from_slice(b"job");
        let r = request(&put).unwrap();
        assert_eq!((r.op, r.arg, r.seq, r.body), (Op::Put, 250, 7, &b"job"[..]));

        let mut claim = request_head(Op::Claim, 0, 8).to_vec();
        claim.extend_from_slice(&5u64.to_le_bytes());
        let r = request(&claim).unwrap();
        assert_eq!((r.op, claim_count(r.body)), (Op::Claim, 5));

        let j = Join {
            version: VERSION,
            role: Role::Consumer,
            kind: 2,
            pid: 42,
            host: 0xfeed,
            head: [3; 16],
            format: "ch2.test",
        };
        let mut b = request_head(Op::Join, 0, 1).to_vec();
        b.extend_from_slice(&j.encode());
        let r = request(&b).unwrap();
        assert_eq!(join(r.body).unwrap(), j);
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
        assert!(request(&[2; 15]).is_err());
        let mut h = request_head(Op::Take, 0, 1);
        assert!(request(&h).is_ok());
        h[0] = 0;
        assert_eq!(request(&h).unwrap_err(), "an unknown operation");
        h[0] = 200;
        assert!(request(&h).is_err());
        let mut h = request_head(Op::Take, 0, 1);
        h[2] = 1;
        assert!(request(&h).is_err());
        // A take with a body, a claim without its count, a short join.
        let mut t = request_head(Op::Take, 0, 1).to_vec();
        t.push(0);
        assert!(request(&t).is_err());
        let mut c = request_head(Op::Claim, 0, 1).to_vec();
        c.extend_from_slice(&[1, 2, 3]);
        assert!(request(&c).is_err());
        let mut j = request_head(Op::Join, 0, 1).to_vec();
        j.extend_from_slice(&[0; JOIN_FIXED - 1]);
        assert!(request(&j).is_err());
        // A join with an unknown role, or a format that is not UTF-8.
        let mut body = [0u8; JOIN_FIXED + 2];
        body[4] = 9;
        assert!(join(&body).is_err());
        body[4] = 1;
        body[JOIN_FIXED] = 0xff;
        assert!(join(&body).is_err());
    }

    #[test]
    fn hostile_replies_are_refused() {
        assert!(reply(&[0; 15]).is_err());
        let mut h = reply_head(Status::Ok, 0, 0);
        h[0] = 8;
        assert!(reply(&h).is_err());
        let mut h = reply_head(Status::Ok, 0, 0);
        h[3] = 1;
        assert!(reply(&h).is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_decode_or_fail_cleanly(b in proptest::collection::vec(proptest::num::u8::ANY, 0..80)) {
            if let Ok(r) = request(&b) {
                if r.op == Op::Join {
                    let _ = join(r.body);
                }
                if r.op == Op::Claim {
                    let _ = claim_count(r.body);
                }
            }
            let _ = reply(&b);
        }
    }
}

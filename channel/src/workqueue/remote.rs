//! A producer or consumer on another host than its queue: it asks the
//! queue's bridge (see [`bridge`](super::bridge)) to put, claim, close
//! and take for it, over the network address the queue's handle carries.
//!
//! It joins at the bridge's door, then talks to a replier of its own
//! there (a session: every request carries the token the join gave),
//! with a heartbeat beside it (every quarter of the lease) so the bridge
//! knows it lives. Waits longer than the bridge's cap are asked again
//! until the caller's own timeout ends, so a full or empty queue costs
//! one request per cap (200 ms), not a spin.
//!
//! - **Consumers** take in batches: what is there at once (up to the
//!   options' prefetch), so a busy queue costs one round trip per batch,
//!   not per message. What was taken for a consumer is its own: it is
//!   never given to another (one that dies holding some loses them, as a
//!   local consumer loses what it took).
//! - **Producers** hand their messages to a pump on the endpoint's own
//!   runtime, which ships what accumulated while the last batch was on
//!   its way as the next one: a put waits only while that buffer is full.
//!   [`flush`](RemotePut::flush) waits until everything put is in the
//!   queue; claims, the close and the drop flush first. A batch's failure
//!   is reported by the next call.

use super::wire::{self, Op, Role, Status};
use super::QueueOptions;
use crate::error::{Error, Result};
use crate::handle::{Handle, Kind};
use crate::net::ask::{NetAsker, NetRequester};
use shoal_transport::{AlignedBuf, OwnedFrame};
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Extra time a request is given past the wait it asks for (the network
/// both ways and the bridge's own work), plus [`transfer`] of its bytes.
const SLACK: Duration = Duration::from_secs(10);
/// Most bytes a producer's buffer holds (a batch); a larger message goes
/// alone.
const BATCH_BYTES: usize = 1 << 20;

/// The time `n` bytes are given to cross the network (at 4 MiB/s).
fn transfer(n: usize) -> Duration {
    Duration::from_millis((n as u64) >> 12)
}

/// A joined endpoint's session: its asker, token and sequence numbers.
struct Session {
    asker: NetAsker,
    token: u64,
    seq: u64,
    /// The network's largest message.
    max_message: usize,
}

impl Session {
    /// Joins the queue `handle` names (a channel of `kind`) as `role`,
    /// with `head` before each message it puts.
    fn join(
        handle: &Handle,
        kind: Kind,
        role: Role,
        head: [u8; 16],
        opts: &QueueOptions,
    ) -> Result<Session> {
        // Checks the kind and the build, as a local attach does.
        handle.ring(kind)?;
        let url = handle.remote().ok_or_else(|| {
            Error::BadHandle(format!(
                "the {} is on another host and takes no remote peers (it was made without QueueOptions::remote)",
                kind.name()
            ))
        })?;
        let net = opts.net_options();
        let door_at = crate::net::address(url)?;
        let mut door = NetAsker::connect(&door_at, &net)?;
        let join = wire::Join {
            version: wire::VERSION,
            role,
            kind: super::bridge::kind_byte(kind),
            pid: std::process::id(),
            host: crate::gather::host_id(),
            head,
            format: crate::handle::format(),
        };
        let mut req = wire::request_head(Op::Join, 0, 1, 0).to_vec();
        req.extend_from_slice(&join.encode());
        let got = door.ask(req, SLACK.max(net.connect_timeout))?;
        drop(door);
        let r = decode(&got)?;
        if r.status != Status::Ok {
            return Err(status_error(&r, Duration::ZERO));
        }
        let (token, at) =
            wire::read_joined(r.body).map_err(|what| malformed(what, r.body.len()))?;
        let mut asker = NetAsker::connect(&crate::net::address(at)?, &net)?;
        asker.heartbeat(
            wire::request_head(Op::Ping, 0, 0, token).to_vec(),
            opts.lease / 4,
        )?;
        Ok(Session {
            asker,
            token,
            seq: 0,
            max_message: net.max_message,
        })
    }

    /// A request for `op` waiting up to `wait` (at most the cap) on the
    /// bridge, with `body`; and how long its reply may take.
    fn request(&mut self, op: Op, wait: Duration, body: &[&[u8]]) -> (Vec<u8>, Duration) {
        let wait = wait.min(super::bridge::WAIT_CAP);
        let n = body.iter().map(|b| b.len()).sum::<usize>();
        let req = encode(op, wait, &mut self.seq, self.token, body);
        (req, wait + SLACK + transfer(n))
    }

    /// Says goodbye (without waiting for a request left on its way), so
    /// the bridge drops the proxy now, not at the lease.
    fn bye(&mut self) {
        let bye = wire::request_head(Op::Bye, 0, 0, self.token).to_vec();
        if self.asker.stray().is_none() {
            let _ = self.asker.ask(bye, Duration::from_secs(1));
        }
    }
}

/// A request's bytes: the next sequence number, the token, `body`.
fn encode(op: Op, wait: Duration, seq: &mut u64, token: u64, body: &[&[u8]]) -> Vec<u8> {
    *seq += 1;
    let ms = u32::try_from(wait.as_millis()).unwrap_or(u32::MAX);
    let n = body.iter().map(|b| b.len()).sum::<usize>();
    let mut req = Vec::with_capacity(wire::REQUEST_HEAD + n);
    req.extend_from_slice(&wire::request_head(op, ms, *seq, token));
    for b in body {
        req.extend_from_slice(b);
    }
    req
}

/// A reply, read.
fn decode(f: &[u8]) -> Result<wire::Reply<'_>> {
    wire::reply(f).map_err(|what| malformed(what, f.len()))
}

fn malformed(what: &'static str, len: usize) -> Error {
    Error::Malformed { what, len }
}

/// The error a reply's status stands for.
fn status_error(r: &wire::Reply<'_>, waited: Duration) -> Error {
    let text = || String::from_utf8_lossy(r.body).into_owned();
    match r.status {
        Status::Closed => Error::Closed,
        Status::Lost => Error::ProducersLost {
            lost: r.b,
            pid: r.a,
        },
        Status::Incompatible => Error::Incompatible {
            ours: crate::handle::format().to_string(),
            theirs: text(),
        },
        Status::WrongKind => Error::Remote(format!("the channel is a {}", text())),
        Status::NotYet => Error::Timeout {
            what: "the work queue (remote)",
            after: waited,
        },
        Status::NotYours => Error::Remote(
            "the channel's host no longer knows this endpoint (it was dropped as silent)".into(),
        ),
        Status::Failed => Error::Remote(text()),
        Status::Ok | Status::Finished => Error::Remote("an unexpected reply".into()),
    }
}

/// A message that came over the network, 16-byte aligned, in the batch
/// it came with.
pub(crate) struct NetMessage {
    batch: Arc<Batch>,
    start: usize,
    len: usize,
}

/// The bytes of a take's reply body: in the frame it came in (its body
/// starting 16-byte aligned), or copied (to align it, or assembled from
/// parts).
enum Batch {
    Frame(OwnedFrame),
    Copied(AlignedBuf),
}

impl Batch {
    fn bytes(&self) -> &[u8] {
        match self {
            Batch::Frame(f) => f.get(wire::HEAD..).unwrap_or_default(),
            Batch::Copied(b) => b,
        }
    }
}

impl NetMessage {
    /// The message's bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        self.batch
            .bytes()
            .get(self.start..self.start + self.len)
            .unwrap_or_default()
    }
}

/// What a take found.
pub(crate) enum Took {
    /// A message.
    Msg(NetMessage),
    /// Nothing within the wait.
    Empty,
    /// The work is over.
    Finished,
}

/// A consumer on another host.
pub(crate) struct RemoteTake {
    s: Session,
    /// Messages taken for this consumer, not handed out yet.
    ready: VecDeque<NetMessage>,
    /// How many messages, and bytes, a take asks for at most.
    prefetch: (u32, u32),
}

impl std::fmt::Debug for RemoteTake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteTake")
            .field("asker", &self.s.asker)
            .field("ready", &self.ready.len())
            .finish_non_exhaustive()
    }
}

impl RemoteTake {
    /// Joins the work queue `handle` names as a consumer.
    pub(crate) fn join(handle: &Handle, opts: &QueueOptions) -> Result<RemoteTake> {
        let s = Session::join(handle, Kind::WorkQueue, Role::Consumer, [0; 16], opts)?;
        let bytes = u32::try_from(opts.prefetch_bytes).unwrap_or(u32::MAX);
        Ok(RemoteTake {
            s,
            ready: VecDeque::new(),
            prefetch: (opts.prefetch.max(1), bytes),
        })
    }

    /// Takes a message, waiting up to `timeout` (`None`: as long as it
    /// takes; zero: one look).
    pub(crate) fn take(&mut self, timeout: Option<Duration>) -> Result<Took> {
        let end = timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            if let Some(m) = self.ready.pop_front() {
                return Ok(Took::Msg(m));
            }
            // A batch asked ahead comes first.
            if let Some(stray) = self.s.asker.stray() {
                if let Some(t) = self.unpack(stray?)? {
                    return Ok(t);
                }
                if !self.ready.is_empty() {
                    continue;
                }
            }
            let left = left(end);
            let body = wire::take_body(self.prefetch.0, self.prefetch.1);
            let (req, limit) = self.s.request(Op::Take, left, &[&body]);
            let got = self.s.asker.ask(req, limit)?;
            match self.unpack(got)? {
                Some(t) => return Ok(t),
                None if !self.ready.is_empty() => continue,
                None if end.is_none_or(|e| Instant::now() < e) => continue,
                None => return Ok(Took::Empty),
            }
        }
    }

    /// [`take`](Self::take), awaited. Dropped while its request is on its
    /// way, what that request took is kept for the next take.
    pub(crate) async fn take_async(&mut self, timeout: Option<Duration>) -> Result<Took> {
        let end = timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            if let Some(m) = self.ready.pop_front() {
                return Ok(Took::Msg(m));
            }
            if let Some(stray) = self.s.asker.stray() {
                if let Some(t) = self.unpack(stray?)? {
                    return Ok(t);
                }
                if !self.ready.is_empty() {
                    continue;
                }
            }
            let left = left(end);
            let body = wire::take_body(self.prefetch.0, self.prefetch.1);
            let (req, limit) = self.s.request(Op::Take, left, &[&body]);
            let got = self.s.asker.ask_async(req, limit).await?;
            match self.unpack(got)? {
                Some(t) => return Ok(t),
                None if !self.ready.is_empty() => continue,
                None if end.is_none_or(|e| Instant::now() < e) => continue,
                None => return Ok(Took::Empty),
            }
        }
    }

    /// Reads a take's reply: its messages go to `ready` (then `None`: the
    /// caller hands out the first); the end of the work is
    /// `Some(Finished)`; nothing within the wait is `None` with nothing
    /// ready.
    fn unpack(&mut self, got: OwnedFrame) -> Result<Option<Took>> {
        let (status, total, have) = {
            let r = decode(&got)?;
            match r.status {
                Status::Ok => {}
                Status::NotYet => return Ok(None),
                Status::Finished => return Ok(Some(Took::Finished)),
                _ => return Err(status_error(&r, Duration::ZERO)),
            }
            (r.status, r.b as usize, r.body.len())
        };
        debug_assert_eq!(status, Status::Ok);
        let batch = if total > have {
            Batch::Copied(self.rest(&got, total)?)
        } else if (got.as_ptr() as usize + wire::HEAD).is_multiple_of(16) {
            Batch::Frame(got)
        } else {
            Batch::Copied(AlignedBuf::copy_from(
                got.get(wire::HEAD..).unwrap_or_default(),
            ))
        };
        let at = wire::taken(batch.bytes()).map_err(|what| malformed(what, batch.bytes().len()))?;
        // A full batch: the queue is busy. The next one is asked for now
        // (what is there, no wait), and comes while these are handed out.
        if at.len() >= self.prefetch.0 as usize {
            let body = wire::take_body(self.prefetch.0, self.prefetch.1);
            let (req, _) = self.s.request(Op::Take, Duration::ZERO, &[&body]);
            self.s.asker.ask_ahead(req)?;
        }
        let batch = Arc::new(batch);
        self.ready
            .extend(at.into_iter().map(|(start, len)| NetMessage {
                batch: batch.clone(),
                start,
                len,
            }));
        Ok(None)
    }

    /// A reply longer than the network carries, assembled: its first
    /// part (`first`), then the rest asked for part by part.
    fn rest(&mut self, first: &OwnedFrame, total: usize) -> Result<AlignedBuf> {
        if total > self.s.max_message.saturating_mul(64) {
            return Err(malformed("a reply longer than 64 network messages", total));
        }
        let mut all = AlignedBuf::with_capacity(total);
        all.extend_from_slice(first.get(wire::HEAD..).unwrap_or_default());
        while all.len() < total {
            let offset = (all.len() as u64).to_le_bytes();
            // The same sequence number: a part of the reply it asked for.
            self.s.seq -= 1;
            let (req, limit) = self.s.request(Op::More, Duration::ZERO, &[&offset]);
            let got = self.s.asker.ask(req, limit + transfer(total))?;
            let r = decode(&got)?;
            if r.status != Status::Ok || r.body.is_empty() || r.b as usize != total {
                return Err(status_error(&r, Duration::ZERO));
            }
            let take = r.body.len().min(total - all.len());
            all.extend_from_slice(&r.body[..take]);
        }
        Ok(all)
    }
}

impl Drop for RemoteTake {
    fn drop(&mut self) {
        self.s.bye();
    }
}

/// How much of a wait is left (the cap when there is no end).
fn left(end: Option<Instant>) -> Duration {
    end.map_or(super::bridge::WAIT_CAP, |e| {
        e.saturating_duration_since(Instant::now())
    })
}

/// A producer on another host: its buffer and the pump that ships it.
pub(crate) struct RemotePut {
    shared: Arc<Shared>,
    /// Holds the runtime the pump and the heartbeat run on.
    asker: NetAsker,
    pump: Option<tokio::task::JoinHandle<()>>,
    /// The network's largest message (a put larger is refused at once).
    max_message: usize,
    /// Most bytes of a batch: [`BATCH_BYTES`], within the largest
    /// message.
    batch: usize,
}

impl std::fmt::Debug for RemotePut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemotePut")
            .field("asker", &self.asker)
            .finish_non_exhaustive()
    }
}

/// What a producer and its pump share.
struct Shared {
    m: Mutex<Outbox>,
    /// Signalled (std) when the pump finished a batch or a control.
    done: Condvar,
    /// Wakes the pump.
    wake: tokio::sync::Notify,
    /// Wakes async puts waiting for room.
    room: tokio::sync::Notify,
}

/// The buffer and the pump's state.
#[derive(Default)]
struct Outbox {
    /// Messages put and not shipped yet (a put body).
    buf: Vec<u8>,
    /// A batch or a control on its way.
    busy: bool,
    /// The first failure since the last call that reported one.
    failed: Option<Error>,
    /// A control request for the pump (claim, close, bye), and its reply.
    control: Option<Vec<u8>>,
    answer: Option<Result<OwnedFrame>>,
    /// The producer is gone: the pump ends.
    stop: bool,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Outbox> {
        self.m.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl RemotePut {
    /// Joins the channel `handle` names (a work queue or a gather, as
    /// `kind`) as a producer, with `head` before each message.
    pub(crate) fn join(
        handle: &Handle,
        kind: Kind,
        head: [u8; 16],
        opts: &QueueOptions,
    ) -> Result<RemotePut> {
        let mut s = Session::join(handle, kind, Role::Producer, head, opts)?;
        let req = s.asker.take_requester()?;
        let shared = Arc::new(Shared {
            m: Mutex::new(Outbox::default()),
            done: Condvar::new(),
            wake: tokio::sync::Notify::new(),
            room: tokio::sync::Notify::new(),
        });
        let pump = s.asker.spawn(pump(shared.clone(), req, s.token))?;
        Ok(RemotePut {
            shared,
            asker: s.asker,
            pump: Some(pump),
            max_message: s.max_message,
            batch: BATCH_BYTES.min(s.max_message.saturating_sub(wire::REQUEST_HEAD)),
        })
    }

    /// Checks that `parts` fit one network message.
    fn fits(&self, parts: &[&[u8]]) -> Result<usize> {
        let n = 4 + parts.iter().map(|p| p.len()).sum::<usize>();
        if n + wire::REQUEST_HEAD > self.max_message {
            return Err(Error::Net(shoal_transport::Error::TooLarge {
                what: "message for a remote producer (raise the network options' max_message)",
                got: n as u64,
                limit: self.max_message as u64,
            }));
        }
        Ok(n)
    }

    /// Hands `parts` (one message) to the pump, waiting up to `timeout`
    /// while its buffer is full (`None`: as long as it takes; zero: not
    /// at all: `Ok(false)`).
    pub(crate) fn put(&mut self, parts: &[&[u8]], timeout: Option<Duration>) -> Result<bool> {
        let n = self.fits(parts)?;
        let end = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut o = self.shared.lock();
        loop {
            if let Some(e) = o.failed.take() {
                return Err(e);
            }
            if o.buf.is_empty() || o.buf.len() + n <= self.batch {
                push(&mut o.buf, parts)?;
                drop(o);
                self.shared.wake.notify_one();
                return Ok(true);
            }
            let wait = match end {
                None => Duration::from_secs(1),
                Some(e) => {
                    let l = e.saturating_duration_since(Instant::now());
                    if l.is_zero() {
                        return Ok(false);
                    }
                    l
                }
            };
            o = self
                .shared
                .done
                .wait_timeout(o, wait)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// [`put`](Self::put), awaited.
    pub(crate) async fn put_async(
        &mut self,
        parts: &[&[u8]],
        timeout: Option<Duration>,
    ) -> Result<bool> {
        let n = self.fits(parts)?;
        let end = timeout.and_then(|t| tokio::time::Instant::now().checked_add(t));
        loop {
            let room = self.shared.room.notified();
            {
                let mut o = self.shared.lock();
                if let Some(e) = o.failed.take() {
                    return Err(e);
                }
                if o.buf.is_empty() || o.buf.len() + n <= self.batch {
                    push(&mut o.buf, parts)?;
                    drop(o);
                    self.shared.wake.notify_one();
                    return Ok(true);
                }
            }
            match end {
                None => room.await,
                Some(e) => {
                    if tokio::time::timeout_at(e, room).await.is_err() {
                        return Ok(false);
                    }
                }
            }
        }
    }

    /// Waits until everything put is in the queue (up to `timeout`), and
    /// reports the first failure since the last call that reported one.
    pub(crate) fn flush(&mut self, timeout: Option<Duration>) -> Result<()> {
        let end = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut o = self.shared.lock();
        loop {
            if let Some(e) = o.failed.take() {
                return Err(e);
            }
            if o.buf.is_empty() && !o.busy {
                return Ok(());
            }
            let wait = match end {
                None => Duration::from_secs(1),
                Some(e) => {
                    let l = e.saturating_duration_since(Instant::now());
                    if l.is_zero() {
                        return Err(Error::Timeout {
                            what: "a remote producer's messages reaching the queue",
                            after: timeout.unwrap_or_default(),
                        });
                    }
                    l
                }
            };
            o = self
                .shared
                .done
                .wait_timeout(o, wait)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Flushes, then asks `op` (claim, close) with `body` and expects it
    /// done (asked again while the bridge answers "not yet").
    pub(crate) fn control(
        &mut self,
        op: Op,
        body: &[&[u8]],
        timeout: Option<Duration>,
    ) -> Result<()> {
        self.flush(timeout)?;
        let body: Vec<u8> = body.concat();
        loop {
            let got = self.ask_pump(op, &body, None)?;
            let r = decode(&got)?;
            match r.status {
                Status::Ok => return Ok(()),
                Status::NotYet => continue,
                _ => return Err(status_error(&r, Duration::ZERO)),
            }
        }
    }

    /// Has the pump ask `op` once, and waits for its reply (up to
    /// `limit`: then the request goes on, its reply unread).
    fn ask_pump(&mut self, op: Op, body: &[u8], limit: Option<Duration>) -> Result<OwnedFrame> {
        let end = limit.and_then(|l| Instant::now().checked_add(l));
        let mut o = self.shared.lock();
        // The request's head is the pump's to write (it numbers them).
        let mut req = vec![op as u8];
        req.extend_from_slice(body);
        o.control = Some(req);
        o.answer = None;
        drop(o);
        self.shared.wake.notify_one();
        let mut o = self.shared.lock();
        loop {
            if let Some(a) = o.answer.take() {
                return a;
            }
            if o.stop || end.is_some_and(|e| Instant::now() >= e) {
                return Err(Error::Closed);
            }
            o = self
                .shared
                .done
                .wait_timeout(o, Duration::from_millis(100))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }
}

impl Drop for RemotePut {
    /// Flushes (up to 10 s), says goodbye, and stops the pump.
    fn drop(&mut self) {
        if self.flush(Some(SLACK)).is_ok() {
            let _ = self.ask_pump(Op::Bye, &[], Some(Duration::from_secs(1)));
        }
        self.shared.lock().stop = true;
        self.shared.wake.notify_one();
        if let Some(p) = self.pump.take() {
            p.abort();
        }
    }
}

/// Appends one message to a put body.
fn push(buf: &mut Vec<u8>, parts: &[&[u8]]) -> Result<()> {
    wire::push_put(buf, parts).map_err(|what| malformed(what, 0))
}

/// The pump: ships the buffer in batches, and the producer's control
/// requests, one request at a time, until the producer is gone.
async fn pump(shared: Arc<Shared>, mut req: NetRequester, token: u64) {
    let mut seq = 0u64;
    loop {
        let job = loop {
            let wake = shared.wake.notified();
            {
                let mut o = shared.lock();
                if o.stop {
                    return;
                }
                if let Some(c) = o.control.take() {
                    o.busy = true;
                    break Job::Control(c);
                }
                if !o.buf.is_empty() {
                    o.busy = true;
                    break Job::Puts(std::mem::take(&mut o.buf));
                }
            }
            wake.await;
        };
        match job {
            Job::Control(c) => {
                let (op, body) = match c
                    .split_first()
                    .and_then(|(b, rest)| Some((op_of(*b)?, rest)))
                {
                    Some(v) => v,
                    None => (Op::Ping, &[][..]),
                };
                let ask = encode(op, Duration::ZERO, &mut seq, token, &[body]);
                let got = req.request(&ask).await;
                let mut o = shared.lock();
                o.answer = Some(got);
                o.busy = false;
            }
            Job::Puts(batch) => {
                let failed = ship(&mut req, &mut seq, token, batch).await;
                let mut o = shared.lock();
                if o.failed.is_none() {
                    o.failed = failed;
                }
                o.busy = false;
            }
        }
        shared.done.notify_all();
        shared.room.notify_waiters();
    }
}

/// What the pump does next.
enum Job {
    Control(Vec<u8>),
    Puts(Vec<u8>),
}

fn op_of(b: u8) -> Option<Op> {
    [Op::Claim, Op::Close, Op::Bye]
        .into_iter()
        .find(|o| *o as u8 == b)
}

/// Ships one batch of puts until all are in the queue (asking again for
/// the rest while the queue is full); the failure that stopped it, if
/// any (the messages after it are dropped: they would fail the same).
async fn ship(req: &mut NetRequester, seq: &mut u64, token: u64, batch: Vec<u8>) -> Option<Error> {
    let mut rest: &[u8] = &batch;
    loop {
        let ask = encode(Op::Put, super::bridge::WAIT_CAP, seq, token, &[rest]);
        let got = match req.request(&ask).await {
            Ok(g) => g,
            Err(e) => return Some(e),
        };
        let r = match decode(&got) {
            Ok(r) => r,
            Err(e) => return Some(e),
        };
        let done = r.a as usize;
        match r.status {
            Status::Ok => return None,
            Status::NotYet => {
                // Past the messages done.
                let mut at = 0;
                for m in wire::puts(rest).take(done) {
                    at += 4 + m.map_or(0, <[u8]>::len);
                }
                rest = rest.get(at..).unwrap_or_default();
                if rest.is_empty() {
                    return None;
                }
            }
            _ => return Some(status_error(&r, Duration::ZERO)),
        }
    }
}

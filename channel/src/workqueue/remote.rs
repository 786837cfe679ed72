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
/// The shortest time between a remote peer's heartbeats, whatever lease.
const MIN_BEAT: Duration = Duration::from_millis(10);

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
            max_message: net.max_message as u64,
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
        let j = wire::read_joined(r.body).map_err(|what| malformed(what, r.body.len()))?;
        let token = j.token;
        // The session's: the smaller of both sides' (the bridge's answer).
        let max_message = usize::try_from(j.max_message)
            .unwrap_or(usize::MAX)
            .min(net.max_message);
        let mut asker = NetAsker::connect(&crate::net::address(j.address)?, &net)?;
        // Well within the lease the bridge keeps (its own: this side's
        // options may say another), and this side's own.
        let lease = opts.lease.min(Duration::from_millis(j.lease_ms));
        asker.heartbeat(
            wire::request_head(Op::Ping, 0, 0, token).to_vec(),
            (lease / 4).max(MIN_BEAT),
        )?;
        Ok(Session {
            asker,
            token,
            seq: 0,
            max_message,
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
        if self.asker.is_busy() {
            return; // the bridge notices the silence
        }
        let bye = wire::request_head(Op::Bye, 0, 0, self.token).to_vec();
        let _ = self.asker.ask(bye, Duration::from_secs(1));
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
    /// A reply in parts being put together: what came so far, and the
    /// whole body's length. Kept across takes, so a take cancelled while
    /// a part was on its way (its reply then waits as the asker's stray)
    /// is resumed by the next one, from where it was.
    partial: Option<(AlignedBuf, usize)>,
    /// The last take request got no reply (the network failed it): the
    /// next one is asked under its sequence number, so a bridge that did
    /// take messages for it answers with them again instead of taking
    /// more (those would be lost with the first). (A request that timed
    /// out leaves the asker broken: nothing more is asked then.)
    reask: bool,
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
            partial: None,
            reask: false,
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
            if self.partial.is_some() {
                let b = self.rest()?;
                self.unpack(b)?;
                continue;
            }
            // A batch asked ahead comes first.
            let got = match self.s.asker.stray() {
                Some(stray) => stray,
                None => {
                    let (req, limit) = self.take_request(left(end));
                    self.s.asker.ask(req, limit)
                }
            };
            let got = self.answered(got)?;
            let got = match self.read(got)? {
                Read::Whole(b) => b,
                Read::Part(first, total) => {
                    self.partial = Some((self.first_part(&first, total)?, total));
                    self.rest()?
                }
                Read::Took(t) => return Ok(t),
                Read::Nothing => {
                    if end.is_some_and(|e| Instant::now() >= e) {
                        return Ok(Took::Empty);
                    }
                    continue;
                }
            };
            self.unpack(got)?;
        }
    }

    /// [`take`](Self::take), awaited (the thread is never blocked).
    /// Dropped while its request is on its way, what that request took is
    /// kept for the next take.
    pub(crate) async fn take_async(&mut self, timeout: Option<Duration>) -> Result<Took> {
        let end = timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            if let Some(m) = self.ready.pop_front() {
                return Ok(Took::Msg(m));
            }
            if self.partial.is_some() {
                let b = self.rest_async().await?;
                self.unpack(b)?;
                continue;
            }
            let got = match self.s.asker.stray_async().await {
                Some(stray) => stray,
                None => {
                    let (req, limit) = self.take_request(left(end));
                    self.s.asker.ask_async(req, limit).await
                }
            };
            let got = self.answered(got)?;
            let got = match self.read(got)? {
                Read::Whole(b) => b,
                Read::Part(first, total) => {
                    self.partial = Some((self.first_part(&first, total)?, total));
                    self.rest_async().await?
                }
                Read::Took(t) => return Ok(t),
                Read::Nothing => {
                    if end.is_some_and(|e| Instant::now() >= e) {
                        return Ok(Took::Empty);
                    }
                    continue;
                }
            };
            self.unpack(got)?;
        }
    }

    /// A take request waiting up to `wait`, and how long its reply may
    /// take.
    fn take_request(&mut self, wait: Duration) -> (Vec<u8>, Duration) {
        if std::mem::take(&mut self.reask) {
            self.s.seq -= 1;
        }
        let body = wire::take_body(self.prefetch.0, self.prefetch.1);
        self.s.request(Op::Take, wait, &[&body])
    }

    /// A take request's outcome: its reply, or the error that left it
    /// without one (the next take request asks again under its number).
    fn answered(&mut self, got: Result<OwnedFrame>) -> Result<OwnedFrame> {
        if got.is_err() {
            self.reask = true;
        }
        got
    }

    /// What a take's reply says: messages (whole, or the first part of a
    /// reply in parts), the end, or nothing within the wait.
    fn read(&self, got: OwnedFrame) -> Result<Read> {
        let (total, have) = {
            let r = decode(&got)?;
            match r.status {
                Status::Ok => {}
                Status::NotYet => return Ok(Read::Nothing),
                Status::Finished => return Ok(Read::Took(Took::Finished)),
                _ => return Err(status_error(&r, Duration::ZERO)),
            }
            (r.b as usize, r.body.len())
        };
        if total > have {
            return Ok(Read::Part(got, total));
        }
        Ok(Read::Whole(
            if (got.as_ptr() as usize + wire::HEAD).is_multiple_of(16) {
                Batch::Frame(got)
            } else {
                Batch::Copied(AlignedBuf::copy_from(
                    got.get(wire::HEAD..).unwrap_or_default(),
                ))
            },
        ))
    }

    /// Hands a batch's messages to `ready`; when it came full, asks for
    /// the next one ahead (what is there, no wait), to come while these
    /// are handed out.
    fn unpack(&mut self, batch: Batch) -> Result<()> {
        let at = wire::taken(batch.bytes()).map_err(|what| malformed(what, batch.bytes().len()))?;
        if self.prefetch.0 > 1 && at.len() >= self.prefetch.0 as usize {
            let (req, _) = self.take_request(Duration::ZERO);
            self.s.asker.ask_ahead(req)?;
        }
        let batch = Arc::new(batch);
        self.ready
            .extend(at.into_iter().map(|(start, len)| NetMessage {
                batch: batch.clone(),
                start,
                len,
            }));
        Ok(())
    }

    /// The request for the part of the last reply from `have` on (the
    /// same sequence number: a part of the reply it asked for).
    fn more_request(&mut self, have: usize, total: usize) -> (Vec<u8>, Duration) {
        self.s.seq -= 1;
        let offset = (have as u64).to_le_bytes();
        let (req, limit) = self.s.request(Op::More, Duration::ZERO, &[&offset]);
        (req, limit + transfer(total))
    }

    /// Checks a part of the reply being put together and appends it (a
    /// part that does not fit drops the reply).
    fn add_part(&mut self, got: &OwnedFrame) -> Result<()> {
        let Some((mut all, total)) = self.partial.take() else {
            return Ok(());
        };
        let r = decode(got)?;
        if r.status != Status::Ok || r.body.is_empty() || r.b as usize != total {
            return Err(status_error(&r, Duration::ZERO));
        }
        let take = r.body.len().min(total - all.len());
        all.extend_from_slice(&r.body[..take]);
        self.partial = Some((all, total));
        Ok(())
    }

    /// A reply longer than the network carries, put together: the rest
    /// of [`partial`](Self::partial) asked for part by part (a part asked
    /// for by a take that was cancelled is the asker's stray: taken
    /// first). A transport error leaves it to the next take; a part that
    /// does not fit drops it.
    fn rest(&mut self) -> Result<Batch> {
        loop {
            let (have, total) = match self.next_part() {
                Ok(at) => at,
                Err(b) => return Ok(b),
            };
            let got = match self.s.asker.stray() {
                Some(stray) => stray?,
                None => {
                    let (req, limit) = self.more_request(have, total);
                    self.s.asker.ask(req, limit)?
                }
            };
            self.add_part(&got)?;
        }
    }

    /// [`rest`](Self::rest), awaited (cancel-safe: see
    /// [`partial`](Self::partial)).
    async fn rest_async(&mut self) -> Result<Batch> {
        loop {
            let (have, total) = match self.next_part() {
                Ok(at) => at,
                Err(b) => return Ok(b),
            };
            let got = match self.s.asker.stray_async().await {
                Some(stray) => stray?,
                None => {
                    let (req, limit) = self.more_request(have, total);
                    self.s.asker.ask_async(req, limit).await?
                }
            };
            self.add_part(&got)?;
        }
    }

    /// Where the reply being put together goes on (bytes so far, and
    /// the whole length), or, once it is whole, its batch.
    fn next_part(&mut self) -> std::result::Result<(usize, usize), Batch> {
        match self.partial.take() {
            Some((all, total)) if all.len() < total => {
                let at = (all.len(), total);
                self.partial = Some((all, total));
                Ok(at)
            }
            Some((all, _)) => Err(Batch::Copied(all)),
            // Not reached (a reply in parts is put together only while
            // there is one); were it, an empty batch hands out nothing.
            None => Err(Batch::Copied(AlignedBuf::with_capacity(0))),
        }
    }

    /// The buffer a reply in parts is assembled in, with its first part.
    ///
    /// Any length is taken (the bridge sends a message of any size the
    /// queue holds, with a batch behind it), but room is made as parts
    /// come, not for the length announced: a peer that announces much and
    /// sends little holds little here.
    fn first_part(&self, first: &OwnedFrame, total: usize) -> Result<AlignedBuf> {
        let mut all = AlignedBuf::with_capacity(total.min(self.s.max_message.saturating_mul(4)));
        let body = first.get(wire::HEAD..).unwrap_or_default();
        all.extend_from_slice(&body[..body.len().min(total)]);
        Ok(all)
    }
}

/// A take's reply, read.
enum Read {
    /// Its messages, whole.
    Whole(Batch),
    /// The first part of a reply in parts, and the whole body's length.
    Part(OwnedFrame, usize),
    /// The end of the work (no messages).
    Took(Took),
    /// Nothing within the wait.
    Nothing,
}

impl Drop for RemoteTake {
    /// Says goodbye (unless a batch asked ahead is on its way: then the
    /// bridge notices the silence). What was taken for this consumer and
    /// not handed out is lost: a warning says how much.
    fn drop(&mut self) {
        let (ready, ahead) = (self.ready.len(), self.s.asker.is_busy());
        if ready > 0 || ahead {
            tracing::warn!(
                ready,
                ahead,
                "a remote consumer dropped with messages taken for it and not handed out (its prefetch): they are lost"
            );
        }
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
    /// The session's largest message (a put larger is refused at once).
    max_message: usize,
    /// Most bytes of a batch: [`BATCH_BYTES`], within the largest
    /// message.
    batch: usize,
    /// How long the drop waits for the buffer to land (the put timeout).
    put_timeout: Option<Duration>,
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
    /// Signalled (std) when the pump took the buffer, or finished a batch
    /// or a control.
    done: Condvar,
    /// Wakes the pump.
    wake: tokio::sync::Notify,
    /// Wakes async puts waiting for room.
    room: tokio::sync::Notify,
}

/// The buffer and the pump's state.
#[derive(Default)]
struct Outbox {
    /// Messages put and not shipped yet (a put body), and how many.
    buf: Vec<u8>,
    count: u64,
    /// A batch or a control on its way.
    busy: bool,
    /// The first failure since the last call that reported one.
    failed: Option<Error>,
    /// Messages put that will never land (their batch failed).
    lost: u64,
    /// A control request for the pump (claim, close, bye), and its reply.
    control: Option<Vec<u8>>,
    answer: Option<Result<OwnedFrame>>,
    /// The producer is gone: the pump ends.
    stop: bool,
    /// The pump ended: a request got no reply in time (asking again
    /// could do it twice), or the producer is gone.
    broken: bool,
}

impl Outbox {
    /// The failure to report now, if any: the first one not reported
    /// yet, else that the pump is broken.
    fn failure(&mut self) -> Option<Error> {
        if let Some(e) = self.failed.take() {
            return Some(e);
        }
        self.broken.then(|| {
            Error::Remote(
                "this producer's connection to the queue's host is unusable (a request got no reply in time)"
                    .into(),
            )
        })
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Outbox> {
        self.m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits on `done` (at most `wait`).
    fn wait<'a>(
        &self,
        o: std::sync::MutexGuard<'a, Outbox>,
        wait: Duration,
    ) -> std::sync::MutexGuard<'a, Outbox> {
        self.done
            .wait_timeout(o, wait)
            .map(|(g, _)| g)
            .unwrap_or_else(|p| p.into_inner().0)
    }
}

/// What is left of a wait until `end` (a second at a time when there is
/// none); `None` once it passed.
fn slice_until(end: Option<Instant>) -> Option<Duration> {
    match end {
        None => Some(Duration::from_secs(1)),
        Some(e) => {
            let l = e.saturating_duration_since(Instant::now());
            (!l.is_zero()).then_some(l.min(Duration::from_secs(1)))
        }
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
            put_timeout: opts.put_timeout,
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

    /// Appends `parts` to the buffer if there is room (true), or says why
    /// not.
    fn try_push(&self, o: &mut Outbox, parts: &[&[u8]], n: usize) -> Result<bool> {
        if let Some(e) = o.failure() {
            return Err(e);
        }
        if o.buf.is_empty() || o.buf.len() + n <= self.batch {
            wire::push_put(&mut o.buf, parts).map_err(|what| malformed(what, n))?;
            o.count += 1;
            self.shared.wake.notify_one();
            return Ok(true);
        }
        Ok(false)
    }

    /// Hands `parts` (one message) to the pump, waiting up to `timeout`
    /// while its buffer is full (`None`: as long as it takes; zero: not
    /// at all: `Ok(false)`).
    pub(crate) fn put(&mut self, parts: &[&[u8]], timeout: Option<Duration>) -> Result<bool> {
        let n = self.fits(parts)?;
        let end = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut o = self.shared.lock();
        loop {
            if self.try_push(&mut o, parts, n)? {
                return Ok(true);
            }
            let Some(wait) = slice_until(end) else {
                return Ok(false);
            };
            o = self.shared.wait(o, wait);
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
            if self.try_push(&mut self.shared.lock(), parts, n)? {
                return Ok(true);
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
            if let Some(e) = o.failure() {
                return Err(e);
            }
            if o.buf.is_empty() && !o.busy {
                return Ok(());
            }
            let Some(wait) = slice_until(end) else {
                return Err(Error::Timeout {
                    what: "a remote producer's messages reaching the queue",
                    after: timeout.unwrap_or_default(),
                });
            };
            o = self.shared.wait(o, wait);
        }
    }

    /// Flushes, then asks `op` (claim, close) with `body` and expects it
    /// done (asked again while the bridge answers "not yet"), all within
    /// `timeout`.
    pub(crate) fn control(
        &mut self,
        op: Op,
        body: &[&[u8]],
        timeout: Option<Duration>,
    ) -> Result<()> {
        let end = timeout.and_then(|t| Instant::now().checked_add(t));
        self.flush(timeout)?;
        let body: Vec<u8> = body.concat();
        loop {
            let got = self.ask_pump(op, &body, end)?;
            let r = decode(&got)?;
            match r.status {
                Status::Ok => return Ok(()),
                Status::NotYet if end.is_none_or(|e| Instant::now() < e) => continue,
                _ => return Err(status_error(&r, timeout.unwrap_or_default())),
            }
        }
    }

    /// Has the pump ask `op` once, and waits for its reply (until `end`:
    /// then the request goes on, its reply unread). A claim is waited
    /// for past `end`, until its reply or the pump's own limit (then the
    /// pump is broken): the bridge may have done it, and what this
    /// producer owes must say so (a claim reported failed but done, then
    /// asked again, would be owed twice).
    fn ask_pump(&mut self, op: Op, body: &[u8], end: Option<Instant>) -> Result<OwnedFrame> {
        let end = if op == Op::Claim { None } else { end };
        let mut o = self.shared.lock();
        if let Some(e) = o.failure() {
            return Err(e);
        }
        // The request's head is the pump's to write (it numbers them).
        let mut req = vec![op as u8];
        req.extend_from_slice(body);
        o.control = Some(req);
        o.answer = None;
        self.shared.wake.notify_one();
        loop {
            if let Some(a) = o.answer.take() {
                return a;
            }
            if let Some(e) = o.failure() {
                return Err(e);
            }
            let Some(wait) = slice_until(end) else {
                return Err(Error::Timeout {
                    what: "the queue's host answering a remote producer",
                    after: Duration::ZERO,
                });
            };
            o = self.shared.wait(o, wait.min(Duration::from_millis(100)));
        }
    }
}

impl Drop for RemotePut {
    /// Waits for the buffer to land (up to the put timeout, as a put
    /// waits for room), says goodbye, and stops the pump. Messages that
    /// could not land are counted in a warning (claimed ones reach
    /// consumers as `ProducersLost`).
    fn drop(&mut self) {
        let end = self.put_timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            let left = end.map(|e| e.saturating_duration_since(Instant::now()));
            match self.flush(left) {
                Ok(()) => break,
                // A batch that failed was reported here; the rest goes on
                // (unless the pump is broken).
                Err(_) if !self.shared.lock().broken && left.is_none_or(|l| !l.is_zero()) => {
                    continue
                }
                Err(_) => break,
            }
        }
        let (lost, unsent) = {
            let o = self.shared.lock();
            (o.lost, o.count)
        };
        if lost + unsent > 0 {
            tracing::warn!(
                lost,
                unsent,
                "a remote producer dropped with messages put that never reached the queue"
            );
        }
        let _ = self.ask_pump(
            Op::Bye,
            &[],
            Instant::now().checked_add(Duration::from_secs(1)),
        );
        self.shared.lock().stop = true;
        self.shared.wake.notify_one();
        if let Some(p) = self.pump.take() {
            p.abort();
        }
    }
}

/// The pump: ships the buffer in batches, and the producer's control
/// requests, one request at a time, until the producer is gone or a
/// request gets no reply in time.
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
                    let n = std::mem::take(&mut o.count);
                    break Job::Puts(std::mem::take(&mut o.buf), n);
                }
            }
            wake.await;
        };
        // The buffer is free again: puts waiting for room go on.
        shared.done.notify_all();
        shared.room.notify_waiters();
        let broken = match job {
            Job::Control(c) => {
                let (op, body) = match c
                    .split_first()
                    .and_then(|(b, rest)| Some((op_of(*b)?, rest)))
                {
                    Some(v) => v,
                    None => (Op::Ping, &[][..]),
                };
                let ask = encode(op, super::bridge::WAIT_CAP, &mut seq, token, &[body]);
                let limit = super::bridge::WAIT_CAP + SLACK;
                // A claim the bridge did must not be reported failed,
                // then owed twice.
                let got = resending(&mut req, &ask, limit).await;
                let mut o = shared.lock();
                o.busy = false;
                match got {
                    Ok(a) => {
                        o.answer = Some(a);
                        false
                    }
                    Err(_) => true,
                }
            }
            Job::Puts(batch, n) => {
                let shipped = ship(&mut req, &mut seq, token, batch).await;
                let mut o = shared.lock();
                o.busy = false;
                match shipped {
                    Shipped::All => false,
                    Shipped::Failed(e, landed) => {
                        o.lost += n.saturating_sub(landed);
                        if o.failed.is_none() {
                            o.failed = Some(e);
                        }
                        false
                    }
                    Shipped::Stuck(landed) => {
                        o.lost += n.saturating_sub(landed);
                        true
                    }
                }
            }
        };
        if broken {
            let mut o = shared.lock();
            o.broken = true;
            o.lost += o.count;
            o.count = 0;
            o.buf.clear();
        }
        shared.done.notify_all();
        shared.room.notify_waiters();
        if broken {
            // This producer can put nothing more, but its heartbeat (on
            // the session's own connection) would keep its proxy, and
            // what it owes, in the queue for as long as it lives:
            // consumers would wait for messages that cannot come. Said
            // goodbye, the bridge counts what it owes lost now.
            let bye = encode(Op::Bye, Duration::ZERO, &mut seq, token, &[]);
            let _ = tokio::time::timeout(SLACK, req.request(&bye)).await;
            return;
        }
    }
}

/// What the pump does next.
enum Job {
    Control(Vec<u8>),
    /// A put body, and how many messages it holds.
    Puts(Vec<u8>, u64),
}

fn op_of(b: u8) -> Option<Op> {
    [Op::Claim, Op::Close, Op::Bye]
        .into_iter()
        .find(|o| *o as u8 == b)
}

/// How many times a request the network failed is asked again.
const RESENDS: u32 = 2;

/// Asks `ask`, each time within `limit` (`Err`: no reply in time), and
/// again under its number (the same bytes) up to [`RESENDS`] times when
/// the network fails it: the bridge may have done it, and it answers a
/// repeat with what it answered, doing it once.
async fn resending(
    req: &mut NetRequester,
    ask: &[u8],
    limit: Duration,
) -> std::result::Result<Result<OwnedFrame>, tokio::time::error::Elapsed> {
    let mut resent = 0;
    loop {
        match tokio::time::timeout(limit, req.request(ask)).await {
            Ok(Err(_)) if resent < RESENDS => resent += 1,
            got => return got,
        }
    }
}

/// How shipping a batch ended.
enum Shipped {
    /// Every message is in the queue.
    All,
    /// Refused (or the network failed) after this many landed; the rest
    /// are dropped (they would fail the same).
    Failed(Error, u64),
    /// A request got no reply in time, after this many landed: whether
    /// it was done is unknown, so nothing more is asked.
    Stuck(u64),
}

/// Ships one batch of puts until all are in the queue (asking again for
/// the rest while the queue is full).
async fn ship(req: &mut NetRequester, seq: &mut u64, token: u64, batch: Vec<u8>) -> Shipped {
    let mut rest: &[u8] = &batch;
    let mut landed = 0u64;
    loop {
        let ask = encode(Op::Put, super::bridge::WAIT_CAP, seq, token, &[rest]);
        let limit = super::bridge::WAIT_CAP + SLACK + transfer(rest.len());
        // A batch counted lost that landed would be put twice by a user
        // who puts it again.
        let got = match resending(req, &ask, limit).await {
            Err(_) => return Shipped::Stuck(landed),
            Ok(Err(e)) => return Shipped::Failed(e, landed),
            Ok(Ok(g)) => g,
        };
        let r = match decode(&got) {
            Ok(r) => r,
            Err(e) => return Shipped::Failed(e, landed),
        };
        let done = r.a as usize;
        landed += done as u64;
        match r.status {
            Status::Ok => return Shipped::All,
            Status::NotYet => {
                // Past the messages done.
                let mut at = 0;
                for m in wire::puts(rest).take(done) {
                    at += 4 + m.map_or(0, <[u8]>::len);
                }
                rest = rest.get(at..).unwrap_or_default();
                if rest.is_empty() {
                    return Shipped::All;
                }
            }
            _ => return Shipped::Failed(status_error(&r, Duration::ZERO), landed),
        }
    }
}

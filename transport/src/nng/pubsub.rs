//! Publish/subscribe over nng, with flow control: every subscriber gets
//! every message, in order, and a publisher whose slowest subscriber is
//! behind by `capacity` bytes waits (nng's own PUB drops silently when a
//! subscriber is slow, so this backend does not use it).
//!
//! The publisher listens with a REP socket and keeps what it sent in a
//! buffer of `capacity` bytes. Each subscriber, a REQ socket, registers
//! (`Hello`), then asks for what follows the last message it has (`Poll`
//! with its cursor). The publisher answers at once with a batch of what is
//! buffered past the cursor, or holds the question until something is
//! sent (one hold lasts at most [`HOLD`], then an empty batch answers
//! it). An answer holds up to 4 MiB and half the capacity, but starts
//! at 256 KiB and grows only while the subscriber takes answers quickly
//! (the cursor moves once a whole answer is taken, so a slow link must
//! never be given one it needs the stall timeout for). A message leaves the buffer once every registered subscriber's
//! cursor is past it, so nothing a subscriber has not acknowledged is
//! lost: an answer lost with a broken connection is asked for again (a
//! poll is idempotent; nng redials, and the subscriber asks again once a
//! connection stands).
//!
//! A subscriber whose connection closes (its process died) is evicted, so
//! it no longer holds the publisher back; if it was in fact alive and
//! redials, its next receive returns [`Error::Evicted`] and then goes on
//! from the publisher's newest message. A subscriber that is alive but does
//! not read holds the publisher back until its cursor has not moved for
//! the stall timeout; then it is evicted the same way (a slow one that
//! keeps reading is waited for). A subscriber whose publisher restarted
//! registers with the new one by itself, and reports the break once
//! (`Evicted`, or the `PeerGone` it already gave while the publisher was
//! away): what was sent meanwhile is not received.
//!
//! Not detected: a publisher whose host vanishes without closing the TCP
//! connection (power loss, partition) leaves its subscribers waiting until
//! the kernel gives the connection up; QUIC's idle timeout covers that
//! case on the other wire.
//!
//! A connection that asks more at once than a subscriber does, registers
//! a second subscriber, or leaves an answer untaken for
//! [`REPLY_WAIT`](super::reqrep::REPLY_WAIT) is dropped (hostile peers;
//! `sock::InProgress`).
//!
//! Topics are filtered at the subscriber. Frames point into the batch
//! they arrived in when its payloads are 16-byte aligned in memory, and
//! are copied once otherwise (nng's REQ/REP take a 4-byte request id off
//! the front of each body, so its payloads usually need that copy).

use super::proto::{locate, put_envelope, Control, Op, CONTROL_LEN};
use super::sock::{close_pipe, lock, message, Body, InProgress, Sock};
use crate::address::Address;
use crate::envelope::Kind;
use crate::error::{Error, Result};
use crate::frame::{Frame, PeerId, SharedBytes};
use crate::options::Options;
use crate::waiting::until_count;
use nng::{Message, Pipe, Protocol};
use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};

/// Longest a publisher holds a poll before answering it empty.
pub const HOLD: Duration = Duration::from_secs(1);
/// Most bytes of messages in one answer (a larger single message goes
/// alone), and never more than half the publisher's capacity, so that it
/// fills the other half while an answer is on its way. Each answer costs
/// a round trip (the next poll): with answers fixed at 256 KiB, 1 MiB
/// messages went one per answer and a subscriber took 0.45-0.58x what
/// raw nng PUSH/PULL moves; fixed at 4 MiB (8 MiB capacity), 0.69-1.35x,
/// median 0.93x (8 interleaved pairs, `transport oneway --wire nng-tcp
/// --pub --size 1048576`); grown to 4 MiB as [`SubEntry::answer`] says,
/// 0.84-0.97x the fixed 4 MiB answers (4 pairs).
const BATCH_BYTES: usize = 4 << 20;
/// What answers to a subscriber start at, and never go below: a subscriber
/// is evicted when its cursor stays still for the stall timeout while it
/// holds a send back, and its cursor moves only once it took a whole
/// answer, so answers grow only for a subscriber that shows it takes
/// them fast (see [`SubEntry::answer`]).
const FIRST_BATCH: usize = 256 * 1024;
/// Full answers a subscriber must take fast in a row before its answers
/// double: more than it holds ahead of its caller (the batch being
/// returned, [`AHEAD`] queued, and one its poller waits to queue), so
/// that the last of them was taken at the pace its caller reads, not
/// into room a subscriber had anyway.
const FAST_RUN: u32 = AHEAD as u32 + 2;
/// Questions one connection may have in progress at a publisher: a
/// subscriber asks one at a time; more is a peer that does not wait for
/// answers, and its connection is dropped.
const MAX_ASKING: usize = 4;
/// How long a dropped publisher keeps serving subscribers that have not
/// received everything yet.
pub const LINGER: Duration = Duration::from_secs(5);

struct SubEntry {
    /// The next sequence number it wants (it has everything before).
    next: u64,
    /// The connection its last question came on.
    pipe: Option<Pipe>,
    /// Most bytes of messages in one answer to it (below its receive
    /// limit, which nng enforces by dropping the connection).
    batch: usize,
    /// Most bytes of messages in the next answer to it, from
    /// [`FIRST_BATCH`] up to `batch`: doubled once it took [`FAST_RUN`]
    /// full answers in a row each within an eighth of the stall timeout,
    /// halved when it took one in more than a quarter (so a link, or a
    /// reader, that takes answers slowly is not given one it needs the
    /// stall timeout for, and is not evicted for it).
    answer: usize,
    /// When the last answer with messages was made, where it ended (the
    /// cursor that says it was taken), and whether it was full (at least
    /// half its limit: a trickle of small answers taken at once says
    /// nothing of how fast a large one is taken).
    answered: Option<(Instant, u64, bool)>,
    /// Full answers taken fast in a row, since the size last changed.
    fast: u32,
    /// When its cursor last moved (or it registered).
    progress: Instant,
}

impl SubEntry {
    /// Its cursor moved to `to`: the answer size follows how long the
    /// last answer took to be taken (growing up to `most`: its own
    /// limit, and half the publisher's capacity).
    fn taken(&mut self, to: u64, stall: Duration, most: usize) {
        let Some((at, end, full)) = self.answered else {
            return;
        };
        if to < end {
            return;
        }
        self.answered = None;
        let took = at.elapsed();
        if took > stall / 4 {
            self.answer = (self.answer / 2).max(FIRST_BATCH);
            self.fast = 0;
        } else if full && took <= stall / 8 {
            self.fast += 1;
            if self.fast >= FAST_RUN {
                self.answer = (self.answer * 2).min(most.max(FIRST_BATCH));
                self.fast = 0;
            }
        } else {
            self.fast = 0;
        }
    }
}

#[derive(Default)]
struct PubState {
    /// Sequence number of the next message sent.
    next_seq: u64,
    /// Envelopes of messages `next_seq - buf.len() .. next_seq`.
    buf: VecDeque<Arc<Vec<u8>>>,
    buf_bytes: usize,
    subs: HashMap<u64, SubEntry>,
    closed: bool,
}

impl PubState {
    fn first_seq(&self) -> u64 {
        self.next_seq - self.buf.len() as u64
    }

    /// Drops what every subscriber has.
    fn trim(&mut self) {
        let keep_from = self
            .subs
            .values()
            .map(|s| s.next)
            .min()
            .unwrap_or(self.next_seq);
        while self.first_seq() < keep_from {
            match self.buf.pop_front() {
                Some(e) => self.buf_bytes -= e.len(),
                None => break,
            }
        }
    }
}

struct PubShared {
    sock: Sock,
    /// Questions in progress per connection (at most [`MAX_ASKING`]).
    busy: Arc<InProgress>,
    id: u64,
    capacity: usize,
    max_message: usize,
    stall_timeout: Duration,
    state: Mutex<PubState>,
    /// A message was sent, or the publisher closed.
    data: Notify,
    /// Room was made, or the subscribers changed.
    room: Notify,
}

impl PubShared {
    /// The most bytes of messages an answer to `s` may hold: its own
    /// limit, and half the capacity.
    fn most(&self, s: &SubEntry) -> usize {
        s.batch.min(self.capacity / 2)
    }

    /// Evicts subscribers whose connection closed; under the state lock.
    fn evict_gone(&self, st: &mut PubState) {
        let before = st.subs.len();
        st.subs.retain(|id, s| {
            let dead = s.pipe.is_some_and(|p| self.sock.pipes.is_dead(p));
            if dead {
                tracing::info!(
                    subscriber = %PeerId(*id),
                    address = %self.sock.address,
                    "nng publisher: subscriber's connection closed; evicted"
                );
            }
            !dead
        });
        if st.subs.len() != before {
            st.trim();
        }
    }

    /// Evicts the subscribers holding the oldest buffered message whose
    /// cursor has not moved for `stall` (slow but reading is not stalled)
    /// and drops their connections; their next poll learns it
    /// ([`Error::Evicted`]).
    fn evict_stalled(&self, st: &mut PubState, stall: Duration) {
        let first = st.first_seq();
        let mut dropped = Vec::new();
        st.subs.retain(|id, s| {
            let stalled = s.next <= first && s.progress.elapsed() >= stall;
            if stalled {
                tracing::warn!(
                    subscriber = %PeerId(*id),
                    address = %self.sock.address,
                    "nng publisher: a subscriber held sends back past the stall timeout; evicted"
                );
                dropped.extend(s.pipe);
            }
            !stalled
        });
        st.trim();
        for p in dropped {
            close_pipe(p);
        }
    }

    /// The answer to one question from a subscriber.
    async fn answer(&self, req: Message, pipe: Option<Pipe>) -> Result<Message> {
        let ctl = Control::decode(req.as_slice())?;
        let reply = |op, a, b, c| message(&Control::new(op, a, b, c).encode());
        match ctl.op {
            Op::Hello => {
                let next = {
                    let mut st = lock(&self.state);
                    self.evict_gone(&mut st);
                    // A subscriber has a connection of its own: a second
                    // id registered on one connection is a peer filling
                    // the table (found by tests/nng_hostile.rs: one
                    // connection registered a subscriber per hello, each
                    // holding the publisher back, the table growing
                    // without bound).
                    if pipe.is_some()
                        && !st.subs.contains_key(&ctl.a)
                        && st.subs.values().any(|s| s.pipe == pipe)
                    {
                        return Err(Error::Corrupt {
                            what: "subscribers registered on one connection",
                            found: 2,
                            expected: "1",
                        });
                    }
                    let next = st.next_seq;
                    // Answers fit the subscriber's limit (0 from an older
                    // peer: the default).
                    let batch = match ctl.b {
                        // An older peer: what answers were then.
                        0 => FIRST_BATCH,
                        b => (b as usize).clamp(CONTROL_LEN + 64, BATCH_BYTES),
                    };
                    // A hello from a connection already closed registers
                    // nobody (it would hold the publisher back forever).
                    if pipe.is_some_and(|p| self.sock.pipes.is_dead(p)) {
                        next
                    } else {
                        let e = st.subs.entry(ctl.a).or_insert(SubEntry {
                            next,
                            pipe,
                            batch,
                            answer: FIRST_BATCH,
                            answered: None,
                            fast: 0,
                            progress: Instant::now(),
                        });
                        e.pipe = pipe;
                        e.next
                    }
                };
                self.room.notify_waiters();
                Ok(reply(Op::Welcome, self.id, next, 0))
            }
            Op::Poll => self.poll(ctl, pipe).await,
            op => Err(Error::Corrupt {
                what: "nng op sent to a publisher",
                found: op as u64,
                expected: "1 (hello) or 3 (poll)",
            }),
        }
    }

    async fn poll(&self, ctl: Control, pipe: Option<Pipe>) -> Result<Message> {
        let reply = |op, a, b, c| message(&Control::new(op, a, b, c).encode());
        if ctl.c != 0 && ctl.c != self.id {
            return Ok(reply(Op::Unknown, self.id, 0, 0));
        }
        let deadline = Instant::now() + HOLD;
        let mut acked = false;
        loop {
            let mut data = pin!(self.data.notified());
            data.as_mut().enable();
            let (from, batch, len) = {
                let mut st = lock(&self.state);
                let next_seq = st.next_seq;
                let Some(s) = st.subs.get_mut(&ctl.a) else {
                    return Ok(reply(Op::Unknown, self.id, 0, 0));
                };
                s.pipe = pipe;
                if !acked {
                    acked = true;
                    if ctl.b > next_seq {
                        return Err(Error::Corrupt {
                            what: "subscriber cursor",
                            found: ctl.b,
                            expected: "no further than what was sent",
                        });
                    }
                    if ctl.b > s.next {
                        s.next = ctl.b;
                        s.progress = Instant::now();
                        s.taken(ctl.b, self.stall_timeout, self.most(s));
                        st.trim();
                        self.room.notify_waiters();
                    }
                }
                let first_seq = st.first_seq();
                let next_seq = st.next_seq;
                let PubState { subs, buf, .. } = &mut *st;
                let Some(s) = subs.get_mut(&ctl.a) else {
                    return Ok(reply(Op::Unknown, self.id, 0, 0));
                };
                let limit = s.answer.min(self.most(s));
                let from = s.next;
                if from < next_seq {
                    let skip = (from - first_seq) as usize;
                    let mut bytes = 0;
                    let batch: Vec<Arc<Vec<u8>>> = buf
                        .iter()
                        .skip(skip)
                        .take_while(|e| {
                            let first = bytes == 0;
                            bytes += e.len();
                            first || bytes + CONTROL_LEN <= limit
                        })
                        .cloned()
                        .collect();
                    let len = CONTROL_LEN + batch.iter().map(|e| e.len()).sum::<usize>();
                    s.answered =
                        Some((Instant::now(), from + batch.len() as u64, 2 * len >= limit));
                    (from, batch, len)
                } else if st.closed {
                    st.subs.remove(&ctl.a);
                    self.room.notify_waiters();
                    return Ok(reply(Op::Closed, self.id, 0, 0));
                } else {
                    // Caught up: whatever it takes next lands in room it
                    // had anyway, so a run of fast answers starts again
                    // (acknowledgements after an idle spell say nothing of
                    // its caller's pace).
                    if let Some(s) = st.subs.get_mut(&ctl.a) {
                        s.fast = 0;
                    }
                    (from, Vec::new(), 0)
                }
            };
            if !batch.is_empty() {
                // Built outside the lock: a large message is copied while
                // the publisher goes on.
                let mut m = Message::with_capacity(len);
                m.push_back(&Control::new(Op::Batch, self.id, from, batch.len() as u64).encode());
                for e in &batch {
                    m.push_back(e);
                }
                return Ok(m);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, data).await.is_err() {
                return Ok(reply(Op::Batch, self.id, from, 0));
            }
        }
    }
}

impl super::sock::Service for PubShared {
    const WHAT: &'static str = "publisher";
    fn sock(&self) -> &Sock {
        &self.sock
    }
    fn busy(&self) -> &Arc<InProgress> {
        &self.busy
    }
    async fn answer(&self, req: Message, pipe: Option<Pipe>) -> Result<Message> {
        PubShared::answer(self, req, pipe).await
    }
}

/// Publishing end over nng.
pub struct FlowPublisher {
    shared: Arc<PubShared>,
    send_timeout: Option<Duration>,
    stall_timeout: Duration,
    rt: tokio::runtime::Handle,
}

impl std::fmt::Debug for FlowPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowPublisher")
            .field("address", &self.shared.sock.address)
            .finish_non_exhaustive()
    }
}

impl FlowPublisher {
    /// Binds a publisher at `address` (inside a tokio runtime: it serves
    /// subscribers on tasks of its own).
    pub fn bind(address: &Address, opts: &Options) -> Result<FlowPublisher> {
        let rt = tokio::runtime::Handle::try_current().map_err(|_| Error::Io {
            what: "binding an nng publisher".into(),
            source: std::io::Error::other("must be called inside a tokio runtime"),
        })?;
        let sock = Sock::listen(Protocol::Rep0, address, 1024, 2 * opts.max_peers as usize)?;
        let shared = Arc::new(PubShared {
            sock,
            busy: InProgress::new(MAX_ASKING),
            id: PeerId::random().0,
            capacity: opts.capacity as usize,
            max_message: opts.max_message,
            stall_timeout: opts.stall_timeout,
            state: Mutex::new(PubState::default()),
            data: Notify::new(),
            room: Notify::new(),
        });
        // Connections that bring nothing are dropped; a registered
        // subscriber's is not (one that stops reading is evicted when it
        // holds a send back, not for pausing while there is room).
        let weak = Arc::downgrade(&shared);
        let keep = move |p| {
            weak.upgrade()
                .is_some_and(|s| lock(&s.state).subs.values().any(|e| e.pipe == Some(p)))
        };
        super::sock::reap_idle(&shared.sock.pipes, opts.stall_timeout, address, keep);
        // One context per subscriber that may be waiting, and one spare.
        for _ in 0..=opts.max_peers {
            let ctx = super::sock::context(&shared.sock)?;
            rt.spawn(super::sock::serve(shared.clone(), ctx));
        }
        Ok(FlowPublisher {
            shared,
            send_timeout: opts.send_timeout,
            stall_timeout: opts.stall_timeout,
            rt,
        })
    }

    /// The address bound (with the port chosen when it asked for port 0).
    pub fn address(&self) -> Address {
        self.shared.sock.bound_address()
    }

    /// Sends `payload` under `topic` to every subscriber, waiting while the
    /// slowest is `capacity` bytes behind (up to the send timeout).
    pub async fn send(&mut self, topic: &[u8], payload: &[u8]) -> Result<()> {
        // A send that finds room completes without waiting for anything:
        // a loop of them never gave the runtime back, starving this
        // publisher's own serving tasks (and, with no worker left to run
        // the timers, every timeout) until the buffer filled, and for ever
        // with no subscriber registered (found by tests/nng_hostile.rs: a
        // test hung with one worker spinning here). Take part in tokio's
        // cooperative budget, so such a loop yields now and then.
        tokio::task::coop::consume_budget().await;
        let s = &self.shared;
        if payload.len() > s.max_message {
            return Err(Error::TooLarge {
                what: "payload",
                got: payload.len() as u64,
                limit: s.max_message as u64,
            });
        }
        let mut env = Vec::with_capacity(super::proto::envelope_len(topic, payload.len()));
        put_envelope(&mut env, Kind::Message, topic, payload, s.id)?;
        let env = Arc::new(env);
        let deadline = self.send_timeout.map(|t| Instant::now() + t);
        let mut stall = Instant::now() + self.stall_timeout;
        let mut last_look = false;
        loop {
            let mut room = pin!(s.room.notified());
            room.as_mut().enable();
            let mut changed = pin!(s.sock.pipes.changed.notified());
            changed.as_mut().enable();
            {
                let mut st = lock(&s.state);
                s.evict_gone(&mut st);
                if st.buf.is_empty() || st.buf_bytes + env.len() <= s.capacity {
                    st.buf_bytes += env.len();
                    st.buf.push_back(env);
                    st.next_seq += 1;
                    st.trim();
                    drop(st);
                    s.data.notify_waiters();
                    return Ok(());
                }
            }
            if last_look {
                return Err(Error::Timeout {
                    what: "send (waiting for slow subscribers)",
                    after: self.send_timeout.unwrap_or_default(),
                });
            }
            let wait = async {
                tokio::select! {
                    _ = room => {}
                    _ = changed => {}
                }
            };
            // Whichever comes first: the send's own deadline, or the stall
            // timeout. Either way the subscribers whose cursor has not
            // moved for the stall timeout are dropped first (so a send
            // timeout shorter than the stall timeout cannot keep one), then
            // the send looks for room once more, and at its deadline ends.
            let until = deadline.map_or(stall, |d| d.min(stall));
            let left = until.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, wait).await.is_err() {
                s.evict_stalled(&mut lock(&s.state), self.stall_timeout);
                last_look = deadline.is_some_and(|d| Instant::now() >= d);
                stall = Instant::now() + self.stall_timeout;
            }
        }
    }

    /// Waits until at least `n` subscribers are registered.
    pub async fn wait_for_subscribers(&mut self, n: u32, timeout: Duration) -> Result<u32> {
        let s = &self.shared;
        let count = || {
            let mut st = lock(&s.state);
            s.evict_gone(&mut st);
            st.subs.len() as u32
        };
        until_count(&s.room, count, n, timeout, "waiting for subscribers").await
    }
}

impl Drop for FlowPublisher {
    /// Closes: subscribers get what was sent, then [`Error::Closed`]. The
    /// socket stays open in the background until every subscriber has
    /// everything and hung up, or [`LINGER`] passed (binding the address
    /// again fails with [`Error::AddrInUse`] meanwhile).
    fn drop(&mut self) {
        let s = self.shared.clone();
        lock(&s.state).closed = true;
        s.data.notify_waiters();
        self.rt.spawn(async move {
            let deadline = Instant::now() + LINGER;
            loop {
                let mut room = pin!(s.room.notified());
                room.as_mut().enable();
                let mut changed = pin!(s.sock.pipes.changed.notified());
                changed.as_mut().enable();
                let left = {
                    let mut st = lock(&s.state);
                    s.evict_gone(&mut st);
                    st.subs.len()
                };
                // Done once every subscriber was told, and hung up (so
                // the last answer was not cut off by closing the socket).
                let done = left == 0 && s.sock.pipes.count() == 0;
                let rest = deadline.saturating_duration_since(Instant::now());
                if done || rest.is_zero() {
                    break;
                }
                let wait = async {
                    tokio::select! {
                        _ = room => {}
                        _ = changed => {}
                    }
                };
                let _ = tokio::time::timeout(rest.min(Duration::from_millis(100)), wait).await;
            }
            s.sock.close();
        });
    }
}

/// What the subscriber's poller hands over: a batch (the message it came
/// in, and topic and payload ranges of each message in it), or why it
/// stopped or skipped.
type Delivery = Result<(SharedBytes, Vec<(Range<usize>, Range<usize>)>, u64)>;

/// Batches a subscriber holds received and not yet returned, beyond the
/// one being returned from.
const AHEAD: usize = 2;

/// Subscribing end over nng.
///
/// A task of its own keeps asking the publisher for what follows, and
/// holds up to a few batches ahead of the caller (so the publisher's
/// buffer is freed once messages reach this process, whether or not the
/// caller is receiving at that moment).
pub struct FlowSubscriber {
    rx: mpsc::Receiver<Delivery>,
    pending: VecDeque<(SharedBytes, Range<usize>, Range<usize>, u64)>,
    prefixes: Vec<Vec<u8>>,
    address: Address,
    poller: tokio::task::JoinHandle<()>,
    closed: bool,
}

impl std::fmt::Debug for FlowSubscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowSubscriber")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Drop for FlowSubscriber {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

/// The subscriber's side of the protocol, run by its poller task.
struct Poller {
    sock: Sock,
    ctx: super::sock::Ctx,
    id: u64,
    /// The publisher it is registered with (0: none yet).
    publisher: u64,
    registered: bool,
    next: u64,
    max_message: usize,
    gone_after: Duration,
    /// An error was reported since the last batch delivered.
    reported: bool,
}

impl Poller {
    async fn ask(&mut self, ctl: Control) -> Result<Message> {
        super::sock::ask_held(
            &self.sock,
            &self.ctx,
            &ctl.encode(),
            self.gone_after,
            super::sock::transfer_allowance(self.max_message),
        )
        .await
    }

    async fn hello(&mut self) -> Result<()> {
        // Tells the publisher how large an answer may be: below this
        // socket's receive limit.
        let batch = self.max_message.saturating_add(super::sock::OVERHEAD / 2) as u64;
        let r = self.ask(Control::new(Op::Hello, self.id, batch, 0)).await?;
        let c = Control::decode(r.as_slice())?;
        if c.op != Op::Welcome {
            return Err(Error::Corrupt {
                what: "answer to hello",
                found: c.op as u64,
                expected: "2 (welcome)",
            });
        }
        self.publisher = c.a;
        self.next = c.b;
        self.registered = true;
        Ok(())
    }

    /// One question and its answer: a batch (possibly empty), or why not.
    async fn poll(&mut self) -> Delivery {
        if !self.registered {
            self.hello().await?;
        }
        let r = self
            .ask(Control::new(Op::Poll, self.id, self.next, self.publisher))
            .await?;
        let c = Control::decode(r.as_slice())?;
        match c.op {
            Op::Batch if c.a == self.publisher => {
                if c.b != self.next {
                    return Err(Error::Corrupt {
                        what: "batch start",
                        found: c.b,
                        expected: "the subscriber's cursor",
                    });
                }
                let found = locate(r.as_slice(), c.c, Kind::Message, self.max_message)?;
                self.next += c.c;
                let ranges = found.into_iter().map(|e| (e.topic, e.payload)).collect();
                Ok((SharedBytes(Arc::new(Body(r))), ranges, self.publisher))
            }
            Op::Unknown => {
                self.registered = false;
                if c.a == self.publisher {
                    return Err(Error::Evicted {
                        address: self.sock.address.to_string(),
                    });
                }
                tracing::info!(address = %self.sock.address, "nng subscriber: publisher restarted; subscribing again");
                // What the old publisher sent after the last batch is
                // lost to this subscriber: said once, unless a break was
                // already reported since (PeerGone while it was away).
                if !self.reported {
                    self.reported = true;
                    return Err(Error::Evicted {
                        address: self.sock.address.to_string(),
                    });
                }
                Ok((
                    SharedBytes(Arc::new(Vec::<u8>::new())),
                    Vec::new(),
                    self.publisher,
                ))
            }
            Op::Closed if c.a == self.publisher => Err(Error::Closed),
            op => Err(Error::Corrupt {
                what: "answer to poll",
                found: op as u64,
                expected: "a batch, unknown or closed from the publisher polled",
            }),
        }
    }

    /// Polls until the publisher closes, the subscriber is dropped, or
    /// the publisher sends something malformed.
    async fn run(mut self, tx: mpsc::Sender<Delivery>) {
        loop {
            let d = self.poll().await;
            match &d {
                Ok((_, r, _)) if !r.is_empty() => self.reported = false,
                Err(_) => self.reported = true,
                _ => {}
            }
            let end = matches!(
                d,
                Err(Error::Closed | Error::Corrupt { .. } | Error::TooLarge { .. })
            );
            let pause = matches!(d, Err(Error::Io { .. }));
            let empty = matches!(&d, Ok((_, r, _)) if r.is_empty());
            if !empty && tx.send(d).await.is_err() {
                return;
            }
            if end {
                return;
            }
            if pause {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

impl FlowSubscriber {
    /// Connects to the publisher at `address` and registers with it (so it
    /// receives everything sent from now on).
    pub async fn connect(address: &Address, opts: &Options) -> Result<FlowSubscriber> {
        let (sock, ctx) = super::sock::dial_req(address, opts).await?;
        let mut p = Poller {
            sock,
            ctx,
            id: PeerId::random().0,
            publisher: 0,
            registered: false,
            next: 0,
            max_message: opts.max_message,
            gone_after: opts.connect_timeout,
            reported: false,
        };
        p.hello().await?;
        let (tx, rx) = mpsc::channel(AHEAD);
        Ok(FlowSubscriber {
            rx,
            pending: VecDeque::new(),
            prefixes: Vec::new(),
            address: address.clone(),
            poller: tokio::spawn(p.run(tx)),
            closed: false,
        })
    }

    /// Receives only topics starting with `prefix` (several: any of them;
    /// none: everything).
    pub fn subscribe(&mut self, prefix: &[u8]) {
        self.prefixes.push(prefix.to_vec());
    }

    /// The next message under a subscribed topic; [`Error::Closed`] once
    /// the publisher closed and everything was received. Other errors
    /// ([`Error::Evicted`], [`Error::PeerGone`]) are reported once each;
    /// receiving again goes on.
    pub async fn recv(&mut self) -> Result<Frame<'static>> {
        loop {
            while let Some((body, topic, payload, peer)) = self.pending.pop_front() {
                let t = &(*body.0).as_ref()[topic.clone()];
                if self.prefixes.is_empty() || self.prefixes.iter().any(|p| t.starts_with(p)) {
                    return Ok(Frame::shared(body, topic, payload)?.with_peer(peer));
                }
            }
            if self.closed {
                return Err(Error::Closed);
            }
            match self.rx.recv().await {
                Some(Ok((body, ranges, peer))) => {
                    for (t, p) in ranges {
                        self.pending.push_back((body.clone(), t, p, peer));
                    }
                }
                Some(Err(Error::Closed)) | None => {
                    self.closed = true;
                }
                Some(Err(e)) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(batch: usize) -> SubEntry {
        SubEntry {
            next: 0,
            pipe: None,
            batch,
            answer: FIRST_BATCH,
            answered: None,
            fast: 0,
            progress: Instant::now(),
        }
    }

    /// A full answer made `ago` before now, ending at `end`.
    fn answered(e: &mut SubEntry, ago: Duration, end: u64) {
        e.answered = Instant::now().checked_sub(ago).map(|t| (t, end, true));
    }

    #[test]
    fn answers_grow_for_a_subscriber_that_takes_them_fast_up_to_its_limit() {
        let stall = Duration::from_secs(8);
        let mut e = entry(BATCH_BYTES);
        for k in 1..u64::from(FAST_RUN) {
            answered(&mut e, Duration::ZERO, k);
            e.taken(k, stall, BATCH_BYTES);
        }
        assert_eq!(e.answer, FIRST_BATCH, "not before a whole run");
        for k in u64::from(FAST_RUN)..=100 {
            answered(&mut e, Duration::ZERO, k);
            e.taken(k, stall, BATCH_BYTES);
        }
        assert_eq!(e.answer, BATCH_BYTES);
        // Its own limit, or half the capacity, bounds them too.
        let mut e = entry(FIRST_BATCH * 2);
        for k in 1..=100u64 {
            answered(&mut e, Duration::ZERO, k);
            e.taken(k, stall, e.batch);
        }
        assert_eq!(e.answer, FIRST_BATCH * 2);
        let mut e = entry(BATCH_BYTES);
        for k in 1..=100u64 {
            answered(&mut e, Duration::ZERO, k);
            e.taken(k, stall, BATCH_BYTES / 4);
        }
        assert_eq!(e.answer, BATCH_BYTES / 4);
    }

    #[test]
    fn answers_shrink_for_a_subscriber_that_takes_them_slowly_down_to_the_first_size() {
        let stall = Duration::from_secs(8);
        let mut e = entry(BATCH_BYTES);
        e.answer = BATCH_BYTES;
        answered(&mut e, Duration::from_secs(3), 5);
        e.taken(5, stall, BATCH_BYTES);
        assert_eq!(e.answer, BATCH_BYTES / 2);
        for k in 6..=20u64 {
            answered(&mut e, Duration::from_secs(3), k);
            e.taken(k, stall, BATCH_BYTES);
        }
        assert_eq!(e.answer, FIRST_BATCH);
        // Between an eighth and a quarter of the stall timeout: kept.
        answered(&mut e, Duration::from_millis(1500), 21);
        e.taken(21, stall, BATCH_BYTES);
        assert_eq!(e.answer, FIRST_BATCH);
    }

    #[test]
    fn only_a_cursor_past_the_whole_answer_counts_it_taken() {
        let stall = Duration::from_secs(8);
        let mut e = entry(BATCH_BYTES);
        answered(&mut e, Duration::ZERO, 10);
        e.taken(9, stall, BATCH_BYTES);
        assert_eq!(e.fast, 0, "part of the answer is not all of it");
        assert!(e.answered.is_some());
        e.taken(10, stall, BATCH_BYTES);
        assert_eq!(e.fast, 1);
        assert!(e.answered.is_none());
    }

    #[test]
    fn small_answers_taken_at_once_do_not_grow_them() {
        let stall = Duration::from_secs(8);
        let mut e = entry(BATCH_BYTES);
        for k in 1..=100u64 {
            e.answered = Some((Instant::now(), k, false));
            e.taken(k, stall, BATCH_BYTES);
        }
        assert_eq!(e.answer, FIRST_BATCH);
    }

    #[test]
    fn an_answer_taken_less_fast_starts_the_run_again() {
        let stall = Duration::from_secs(8);
        let mut e = entry(BATCH_BYTES);
        let mut k = 0u64;
        for _ in 0..10 {
            for _ in 1..FAST_RUN {
                k += 1;
                answered(&mut e, Duration::ZERO, k);
                e.taken(k, stall, BATCH_BYTES);
            }
            // Between an eighth and a quarter of the stall timeout.
            k += 1;
            answered(&mut e, Duration::from_millis(1500), k);
            e.taken(k, stall, BATCH_BYTES);
        }
        assert_eq!(e.answer, FIRST_BATCH);
    }
}

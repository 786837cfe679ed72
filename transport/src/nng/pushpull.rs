//! Push/pull over nng: a work queue held by the process that bound it,
//! each message taken by exactly one puller.
//!
//! The binding puller listens with a REP socket and keeps the queue
//! (`capacity` bytes). A pusher (REQ) asks it to queue one message
//! (`Push`); the queue answers `Queued` once there is room, or `Full` after
//! holding the question for at most [`HOLD`], and the
//! pusher asks again until its send timeout. Pushes carry a per-pusher
//! sequence number, so one asked again over a new connection is queued
//! once. The binding puller takes from the queue directly; other pullers
//! (REQ) ask for one message at a time (`Pull`) and acknowledge each as
//! soon as it arrives (`Ack`, sent in the background, and again in the
//! next `Pull`). A puller asks one question at a time, so its next `Pull`
//! also tells the queue that any other item sent to it never arrived (its
//! receive was cancelled): those go back to the head of the queue, as do
//! the unacknowledged items of a puller whose connection closes (its
//! process died) and, last resort, items unacknowledged for [`LEASE`]
//! after their answer left (a puller that cancelled its receive and never
//! asked again). A message is lost only with the queue's own process; one
//! can be delivered twice only when its acknowledgement is held up past
//! the lease (a link stalled that long).
//!
//! A connection that asks more at once than a pusher or puller does, or
//! leaves an answer untaken for [`REPLY_WAIT`](super::reqrep::REPLY_WAIT),
//! is dropped (hostile peers; `sock::InProgress`).
//!
//! nng's own PUSH/PULL is not used: a second puller could not reach the
//! queue through the one address, and a message sitting in a dead
//! puller's connection would be lost.

use super::proto::{locate, push_b, push_b_parts, Control, Op, CONTROL_LEN};
use super::pubsub::HOLD;
use super::sock::{ask, context, lock, message, Body, InProgress, Sock};
use crate::address::Address;
use crate::envelope::Kind;
use crate::envelope::HEADER_LEN;
use crate::error::{Error, Result};
use crate::frame::{AlignedBuf, Frame, PeerId, SharedBytes};
use crate::options::Options;
use crate::window::{Entry, PushWindow, Pushers};
use nng::{Message, Pipe, Protocol};
use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How long an item sent to a remote puller may go unacknowledged (and
/// its puller ask nothing) before it is queued again. A puller's next
/// question settles its items sooner; this covers one that cancelled its
/// receive and asked nothing since. It runs from when the answer was
/// handed to the connection (nng completes that once the message is in
/// the kernel's socket buffer), and the puller acknowledges on arrival.
pub const LEASE: Duration = Duration::from_secs(3);

/// Questions one connection may have in progress at the queue: a pusher
/// or puller asks one at a time, a puller's acknowledgements (answered at
/// once) may overlap it; more is a peer that does not wait for answers,
/// and its connection is dropped.
const MAX_ASKING: usize = 8;

/// A queued message: the push it came in, and where its parts lie.
#[derive(Clone)]
struct Item {
    body: SharedBytes,
    envelope: Range<usize>,
    topic: Range<usize>,
    payload: Range<usize>,
    peer: u64,
}

/// Bytes an item is charged beyond its envelope: what holding it costs
/// the queue, so that a flood of empty messages is bounded too.
const ITEM_OVERHEAD: usize = 128;

impl Item {
    fn len(&self) -> usize {
        self.envelope.len() + ITEM_OVERHEAD
    }
    /// The item in a buffer of its own (so it no longer holds the rest of
    /// the push it came in).
    fn detached(self) -> Item {
        let env = &(*self.body.0).as_ref()[self.envelope.clone()];
        let start = self.envelope.start;
        let at = |r: Range<usize>| r.start - start..r.end - start;
        Item {
            topic: at(self.topic.clone()),
            payload: at(self.payload.clone()),
            envelope: 0..env.len(),
            peer: self.peer,
            body: SharedBytes(Arc::new(AlignedBuf::copy_from(env))),
        }
    }
    fn frame(self) -> Result<Frame<'static>> {
        Ok(Frame::shared(self.body, self.topic, self.payload)?.with_peer(self.peer))
    }
}

/// An item sent to a remote puller and not yet acknowledged.
struct Lent {
    item: Item,
    /// The puller it went to (only it may acknowledge it).
    puller: u64,
    /// The puller's connection.
    pipe: Option<Pipe>,
    /// When its answer was handed to the connection (the lease runs from
    /// there, so a large item on a slow link is not taken back while it
    /// is still being sent).
    since: Instant,
}

#[derive(Default)]
struct QState {
    items: VecDeque<Item>,
    bytes: usize,
    /// Last sequence number queued per pusher, and when.
    pushed: Pushers,
    /// Items sent to remote pullers and not yet acknowledged: token ->
    /// (item, the puller's connection, when sent).
    lent: HashMap<u64, Lent>,
    next_token: u64,
}

struct QShared {
    sock: Sock,
    /// Questions in progress per connection (at most [`MAX_ASKING`]).
    busy: Arc<InProgress>,
    capacity: usize,
    max_message: usize,
    state: Mutex<QState>,
    /// Something was queued.
    data: Notify,
    /// Something was taken.
    room: Notify,
}

impl QShared {
    /// Puts back what was sent to remote pullers and not acknowledged in
    /// time, or whose connection closed.
    fn reclaim(&self, st: &mut QState) {
        let now = Instant::now();
        let back: Vec<u64> = st
            .lent
            .iter()
            .filter(|(_, l)| {
                l.pipe.is_some_and(|p| self.sock.pipes.is_dead(p))
                    || now.duration_since(l.since) >= LEASE
            })
            .map(|(k, _)| *k)
            .collect();
        for token in back {
            if let Some(Lent { item, .. }) = st.lent.remove(&token) {
                tracing::info!(address = %self.sock.address, token, "nng queue: a message sent to a puller was not acknowledged (its receive was cancelled, or it died); queued again");
                st.bytes += item.len();
                st.items.push_front(item);
                self.data.notify_waiters();
            }
        }
    }

    fn take(&self, st: &mut QState) -> Option<Item> {
        let item = st.items.pop_front()?;
        st.bytes -= item.len();
        self.room.notify_waiters();
        Some(item)
    }

    async fn answer(&self, req: Message, pipe: Option<Pipe>) -> Result<Message> {
        let ctl = Control::decode(req.as_slice())?;
        match ctl.op {
            Op::Push => self.push(ctl, req).await,
            Op::Pull => self.pull(ctl, pipe).await,
            Op::Ack => {
                // Only the puller the item went to can acknowledge it.
                let mut st = lock(&self.state);
                if st.lent.get(&ctl.b).is_some_and(|l| l.puller == ctl.a) {
                    st.lent.remove(&ctl.b);
                }
                Ok(message(&Control::new(Op::Empty, 0, 0, 0).encode()))
            }
            op => Err(Error::Corrupt {
                what: "nng op sent to a queue",
                found: op as u64,
                expected: "7 (push), 10 (pull) or 15 (ack)",
            }),
        }
    }

    async fn push(&self, ctl: Control, req: Message) -> Result<Message> {
        let (hold_ms, count) = push_b_parts(ctl.b);
        let found = locate(req.as_slice(), count, Kind::Message, self.max_message)?;
        let (pusher, first) = (ctl.a, ctl.c);
        if first == 0 || first.checked_add(count).is_none() {
            return Err(Error::Corrupt {
                what: "push sequence number",
                found: first,
                expected: "1 or more, with room for the batch",
            });
        }
        let body = SharedBytes(Arc::new(Body(req)));
        // Envelope `i` ends where the next begins (the last at the end).
        let ends: Vec<usize> = found
            .iter()
            .skip(1)
            .map(|e| e.topic.start - HEADER_LEN)
            .chain(std::iter::once((*body.0).as_ref().len()))
            .collect();
        let items: Vec<(u64, Item)> = found
            .into_iter()
            .zip(ends)
            .enumerate()
            .map(|(i, (e, end))| {
                let item = Item {
                    envelope: e.topic.start - HEADER_LEN..end,
                    topic: e.topic,
                    payload: e.payload,
                    peer: e.header.id,
                    body: body.clone(),
                };
                (first + i as u64, item)
            })
            .collect();
        let mut items = Some(items);
        let hold = Duration::from_millis(hold_ms).min(HOLD);
        let deadline = Instant::now() + hold;
        loop {
            let mut room = pin!(self.room.notified());
            room.as_mut().enable();
            let known = {
                let mut st = lock(&self.state);
                self.reclaim(&mut st);
                st.pushed.knows(pusher)
            };
            if !known {
                // Too many pushers heard from lately to remember one more:
                // it waits (it asks again), none is forgotten.
                tokio::time::sleep(deadline.saturating_duration_since(Instant::now())).await;
                return Ok(message(&Control::new(Op::Full, 0, 0, 0).encode()));
            }
            {
                let mut st = lock(&self.state);
                let had = st.pushed.last(pusher);
                let all = items.take().unwrap_or_default();
                let total = all.len();
                // What was not queued before (a push asked again).
                let mut new: Vec<(u64, Item)> =
                    all.into_iter().filter(|(seq, _)| *seq > had).collect();
                let skipped = new.len() < total;
                let charge: usize = new.iter().map(|(_, i)| i.len()).sum();
                // All of it when it fits (or the queue is empty); a part
                // only when all of it never could (more than `capacity`);
                // else it waits for room, and is answered Full after the
                // hold, so no push is sent again for a part.
                let fits = |n: usize| st.items.is_empty() || st.bytes + n <= self.capacity;
                let take = if new.is_empty() || fits(charge) {
                    new.len()
                } else if charge > self.capacity {
                    let mut n = 0;
                    let mut bytes = 0;
                    for (_, i) in &new {
                        if !fits(bytes + i.len()) {
                            break;
                        }
                        bytes += i.len();
                        n += 1;
                    }
                    n
                } else {
                    0
                };
                let rest = new.split_off(take);
                // Items share the push's body: only a push taken whole (its
                // envelopes make up the body) is left in place; the items
                // of one taken in part are copied out, so a body is never
                // held for less than it weighs.
                let whole = !skipped && rest.is_empty();
                let mut last = had;
                for (seq, item) in new {
                    let item = if whole { item } else { item.detached() };
                    st.bytes += item.len();
                    st.items.push_back(item);
                    last = seq;
                }
                if last != had || rest.is_empty() {
                    // A push that brought nothing new leaves the pusher's
                    // age as it was (else resending old numbers would keep
                    // a pusher remembered for ever at no cost).
                    if last != had {
                        st.pushed.remember(pusher, last);
                        drop(st);
                        self.data.notify_waiters();
                    }
                    return Ok(message(&Control::new(Op::Queued, last, 0, 0).encode()));
                }
                items = Some(rest);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, room).await.is_err() {
                return Ok(message(&Control::new(Op::Full, 0, 0, 0).encode()));
            }
        }
    }

    async fn pull(&self, ctl: Control, pipe: Option<Pipe>) -> Result<Message> {
        let hold = Duration::from_millis(ctl.c).min(HOLD);
        let deadline = Instant::now() + hold;
        {
            // The puller has item `b` (0: none yet); any other item sent
            // to it never arrived (one question at a time): back to the
            // head of the queue.
            let mut st = lock(&self.state);
            let mine: Vec<u64> = st
                .lent
                .iter()
                .filter(|(_, l)| l.puller == ctl.a)
                .map(|(t, _)| *t)
                .collect();
            for token in mine {
                if let Some(l) = st.lent.remove(&token) {
                    if token != ctl.b {
                        st.bytes += l.item.len();
                        st.items.push_front(l.item);
                        self.data.notify_waiters();
                    }
                }
            }
        }
        loop {
            let mut data = pin!(self.data.notified());
            data.as_mut().enable();
            {
                let mut st = lock(&self.state);
                self.reclaim(&mut st);
                if let Some(item) = self.take(&mut st) {
                    st.next_token += 1;
                    let token = st.next_token;
                    let env = &(*item.body.0).as_ref()[item.envelope.clone()];
                    let mut m = Message::with_capacity(CONTROL_LEN + env.len());
                    m.push_back(&Control::new(Op::Item, token, 0, 0).encode());
                    m.push_back(env);
                    st.lent.insert(
                        token,
                        Lent {
                            item,
                            puller: ctl.a,
                            pipe,
                            since: Instant::now(),
                        },
                    );
                    return Ok(m);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, data).await.is_err() {
                return Ok(message(&Control::new(Op::Empty, 0, 0, 0).encode()));
            }
        }
    }
}

impl super::sock::Service for QShared {
    const WHAT: &'static str = "queue";
    fn sock(&self) -> &Sock {
        &self.sock
    }
    fn busy(&self) -> &Arc<InProgress> {
        &self.busy
    }
    async fn answer(&self, req: Message, pipe: Option<Pipe>) -> Result<Message> {
        QShared::answer(self, req, pipe).await
    }
    /// The lease of an item runs from when its answer left.
    fn answered(&self, sent: &Control) {
        if sent.op == Op::Item {
            if let Some(l) = lock(&self.state).lent.get_mut(&sent.a) {
                l.since = Instant::now();
            }
        }
    }
}

enum Side {
    /// The binder: holds the queue.
    Queue(Arc<QShared>),
    /// Another puller: asks the binder.
    Remote {
        sock: Arc<Sock>,
        ctx: super::sock::Ctx,
        id: u64,
        /// The token of the last item received (0: none), acknowledged
        /// again in the next pull.
        last: u64,
        /// Acknowledgements on their way.
        acks: Arc<Mutex<Acks>>,
        max_message: usize,
        gone_after: Duration,
    },
}

/// Pulling end over nng.
pub struct QueuePuller {
    side: Side,
}

impl std::fmt::Debug for QueuePuller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, address) = match &self.side {
            Side::Queue(q) => ("queue", &q.sock.address),
            Side::Remote { sock, .. } => ("remote", &sock.address),
        };
        f.debug_struct("QueuePuller")
            .field("side", &kind)
            .field("address", address)
            .finish()
    }
}

impl Drop for QueuePuller {
    fn drop(&mut self) {
        if let Side::Queue(q) = &self.side {
            q.sock.close();
        }
    }
}

impl QueuePuller {
    /// Binds the queue at `address` (inside a tokio runtime: it serves
    /// pushers and pullers on tasks of its own).
    pub fn bind(address: &Address, opts: &Options) -> Result<QueuePuller> {
        let rt = tokio::runtime::Handle::try_current().map_err(|_| Error::Io {
            what: "binding an nng puller".into(),
            source: std::io::Error::other("must be called inside a tokio runtime"),
        })?;
        let sock = Sock::listen_with(Protocol::Rep0, address, opts)?;
        // Connections that bring nothing are dropped (every question to a
        // queue is taken at once, so a live client's connection is never
        // silent for long while it asks; an idle pusher redials).
        super::sock::reap_idle(&sock.pipes, opts.stall_timeout, address, |_| false);
        let shared = Arc::new(QShared {
            sock,
            busy: InProgress::new(MAX_ASKING),
            capacity: opts.capacity as usize,
            max_message: opts.max_message,
            state: Mutex::new(QState::default()),
            data: Notify::new(),
            room: Notify::new(),
        });
        // Pushers and pullers waiting at once, and one spare.
        for _ in 0..=2 * opts.max_peers {
            rt.spawn(super::sock::serve(shared.clone(), context(&shared.sock)?));
        }
        Ok(QueuePuller {
            side: Side::Queue(shared),
        })
    }

    /// Connects another puller to the queue at `address`.
    pub async fn connect(address: &Address, opts: &Options) -> Result<QueuePuller> {
        let (sock, ctx) = super::sock::dial_req(address, opts).await?;
        Ok(QueuePuller {
            side: Side::Remote {
                sock: Arc::new(sock),
                ctx,
                id: PeerId::random().0,
                last: 0,
                acks: Arc::default(),
                max_message: opts.max_message,
                gone_after: opts.connect_timeout,
            },
        })
    }

    /// The address bound, for the binding puller (with the port chosen
    /// when it asked for port 0); the address connected to otherwise.
    pub fn address(&self) -> Address {
        match &self.side {
            Side::Queue(q) => q.sock.bound_address(),
            Side::Remote { sock, .. } => sock.address.clone(),
        }
    }

    /// The next message.
    pub async fn recv(&mut self) -> Result<Frame<'static>> {
        match &mut self.side {
            Side::Queue(q) => loop {
                let mut data = pin!(q.data.notified());
                data.as_mut().enable();
                {
                    let mut st = lock(&q.state);
                    q.reclaim(&mut st);
                    if let Some(item) = q.take(&mut st) {
                        return item.frame();
                    }
                }
                // Woken by a push, or soon after to take back what a
                // remote puller left unacknowledged past its lease.
                let _ = tokio::time::timeout(LEASE / 4, data).await;
            },
            Side::Remote {
                sock,
                ctx,
                id,
                last,
                acks,
                max_message,
                gone_after,
            } => loop {
                let q = Control::new(Op::Pull, *id, *last, HOLD.as_millis() as u64);
                let allowance = super::sock::transfer_allowance(*max_message);
                let r =
                    super::sock::ask_held(sock, ctx, &q.encode(), *gone_after, allowance).await?;
                let c = Control::decode(r.as_slice())?;
                match c.op {
                    Op::Empty => continue,
                    Op::Item => {
                        let found = locate(r.as_slice(), 1, Kind::Message, *max_message)?;
                        acknowledge(sock.clone(), *id, c.a, *gone_after, acks.clone());
                        *last = c.a;
                        let body = SharedBytes(Arc::new(Body(r)));
                        let e = &found[0];
                        return Ok(Frame::shared(body, e.topic.clone(), e.payload.clone())?
                            .with_peer(e.header.id));
                    }
                    op => {
                        return Err(Error::Corrupt {
                            what: "answer to pull",
                            found: op as u64,
                            expected: "11 (item) or 12 (empty)",
                        })
                    }
                }
            },
        }
    }
}

/// The background acknowledgements of one remote puller.
#[derive(Default)]
struct Acks {
    /// One is on its way.
    busy: bool,
    /// The token of the newest item received.
    latest: u64,
}

/// Tells the queue, in the background, that item `token` arrived (on a
/// context of its own, so the next pull does not wait for it).
///
/// At most one acknowledgement is on its way per puller: each pull
/// settles the item before it (it carries that item's token), so only
/// the newest item needs one, and that is what the one on its way sends
/// next. (Each used to go on its own context: a puller taking a burst
/// had a dozen questions in progress, and the queue dropped it as a peer
/// that asks more at once than shoal's endpoints do, handing the items it
/// had received to others a second time.)
fn acknowledge(sock: Arc<Sock>, id: u64, token: u64, gone_after: Duration, acks: Arc<Mutex<Acks>>) {
    {
        let mut a = lock(&acks);
        a.latest = token;
        if a.busy {
            return;
        }
        a.busy = true;
    }
    tokio::spawn(async move {
        let mut token = token;
        loop {
            let sent = async {
                let ctx = context(&sock)?;
                ask(
                    &sock,
                    &ctx,
                    &Control::new(Op::Ack, id, token, 0).encode(),
                    gone_after,
                )
                .await
            };
            if let Err(e) = sent.await {
                tracing::debug!(address = %sock.address, token, error = %e, "nng puller: acknowledgement not delivered; the next pull settles the item, or its lease ends");
            }
            let mut a = lock(&acks);
            if a.latest == token {
                a.busy = false;
                return;
            }
            token = a.latest;
        }
    });
}

/// Pushing end over nng.
///
/// [`send`](Self::send) puts the message in the pusher's window (at most
/// `capacity` bytes, or one message) and returns; a task of the pusher's
/// ships the window to the queue in batches, one push question at a time,
/// each acknowledged (`Queued`) up to the last message the queue took, and
/// asks again with the rest until all are taken. Sequence numbers make a
/// batch asked again after a broken connection queue once. So a loop of
/// sends runs at the wire's pace, not one round trip per message, and
/// messages leave in the order sent. [`flush`](Self::flush) waits until
/// the queue has taken everything sent. A failure to ship (the queue gone
/// for the connect timeout) is reported by the next `send` or `flush`;
/// the window is kept and shipped when the queue is back. A dropped pusher
/// goes on shipping its window for up to the stall timeout (inside the
/// runtime it was made in).
pub struct QueuePusher {
    window: Arc<PushWindow>,
    address: Address,
    /// Its id, in every envelope (the frames' peer).
    id: u64,
    /// Its key, in every push's control block (see `connect`).
    key: u64,
    max_message: usize,
    send_timeout: Option<Duration>,
}

impl std::fmt::Debug for QueuePusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueuePusher")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Drop for QueuePusher {
    fn drop(&mut self) {
        self.window.close();
    }
}

impl QueuePusher {
    /// Connects a pusher to the queue at `address` (inside a tokio runtime:
    /// it ships on a task of its own).
    pub async fn connect(address: &Address, opts: &Options) -> Result<QueuePusher> {
        let (sock, ctx) = super::sock::dial_req(address, opts).await?;
        let window = PushWindow::new(opts.capacity as usize);
        let id = PeerId::random().0;
        // The queue tells pushes apart by a key of their pusher's that,
        // unlike its id (every frame's peer), no puller sees: knowing it
        // would let a peer claim the pusher's sequence numbers.
        let key = PeerId::random().0;
        let shipper = Shipper {
            window: window.clone(),
            sock,
            ctx,
            key,
            batch: BATCH_BYTES.min(opts.max_message),
            gone_after: opts.connect_timeout,
            linger: opts.stall_timeout,
        };
        tokio::spawn(shipper.run());
        Ok(QueuePusher {
            window,
            address: address.clone(),
            id,
            key,
            max_message: opts.max_message,
            send_timeout: opts.send_timeout,
        })
    }

    /// Puts `payload` in the window, waiting for room up to the send
    /// timeout; a failure to ship since the last look is returned instead
    /// (once; the window is kept). Cancelled while waiting, nothing was
    /// put in.
    pub async fn send(&mut self, payload: &[u8]) -> Result<()> {
        Error::check_payload(payload.len(), self.max_message)?;
        // The push of this message alone: its own control block (a batch
        // of one is asked as it is), then its envelope.
        let mut push = crate::recycle::Recycled::with_capacity(
            CONTROL_LEN + super::proto::envelope_len(b"", payload.len()),
        );
        push.resize(CONTROL_LEN, 0);
        super::proto::put_envelope(&mut push, Kind::Message, b"", payload, self.id)?;
        let key = self.key;
        let stamp = move |push: &mut Vec<u8>, seq: u64| {
            let b = push_b(HOLD.as_millis() as u64, 1);
            push[..CONTROL_LEN].copy_from_slice(&Control::new(Op::Push, key, b, seq).encode());
        };
        let len = push.len() - CONTROL_LEN;
        self.window.put(push, len, stamp, self.send_timeout).await
    }

    /// Waits until the queue has taken everything sent (up to the send
    /// timeout); a failure to ship is returned instead.
    pub async fn flush(&mut self) -> Result<()> {
        self.window.flush(self.send_timeout).await
    }
}

/// Bytes of envelopes one push carries at most (at least one envelope,
/// and never more than the pusher's `max_message`).
const BATCH_BYTES: usize = 4 << 20;
/// Envelopes one push carries at most.
const BATCH_COUNT: usize = 4096;

/// The smallest batch limit a success doubles from.
const MIN_BATCH: usize = 64 << 10;

/// One push question: the window's entries it carries.
struct Batch(Vec<Entry>);

impl Batch {
    /// The question's bytes, in parts: a batch of one is its entry as it
    /// is, control block and all; a larger one gets a control block of its
    /// own before their envelopes.
    fn parts<'a>(&'a self, control: &'a [u8; CONTROL_LEN]) -> Vec<&'a [u8]> {
        if self.0.len() == 1 {
            return vec![&self.0[0].1[..]];
        }
        std::iter::once(&control[..])
            .chain(self.0.iter().map(|e| &e.1[CONTROL_LEN..]))
            .collect()
    }
    fn bytes(&self) -> usize {
        self.0.iter().map(|e| e.1.len() - CONTROL_LEN).sum()
    }
}

/// The task that ships a pusher's window.
struct Shipper {
    window: Arc<PushWindow>,
    sock: Sock,
    ctx: super::sock::Ctx,
    /// The pusher's key.
    key: u64,
    /// Envelope bytes per push at most: a quarter after each failed push
    /// (down to one message), doubled after each success.
    batch: usize,
    gone_after: Duration,
    linger: Duration,
}

impl Shipper {
    async fn run(mut self) {
        let full = self.batch;
        let mut closed_at: Option<Instant> = None;
        let size = |e: &Entry| e.1.len() - CONTROL_LEN;
        while let Some(batch) = self.window.batch(BATCH_COUNT, self.batch, size).await {
            let batch = Batch(batch);
            if self.window.is_closed() {
                let since = *closed_at.get_or_insert_with(Instant::now);
                if since.elapsed() >= self.linger {
                    tracing::warn!(address = %self.sock.address, left = self.window.pending(), "nng pusher: dropped with messages the queue did not take within the stall timeout; they are lost");
                    return;
                }
            }
            let b = push_b(HOLD.as_millis() as u64, batch.0.len());
            let control = Control::new(Op::Push, self.key, b, batch.0[0].0).encode();
            let shipped = batch.0[batch.0.len() - 1].0;
            // The queue answers within the hold it was given; one that does
            // not within the connect timeout (and the batch's transfer)
            // beyond is stalled.
            let within = HOLD + self.gone_after + super::sock::transfer_allowance(batch.bytes());
            let parts = batch.parts(&control);
            let asked = super::sock::ask_parts(&self.sock, &self.ctx, &parts, self.gone_after);
            let answer = match tokio::time::timeout(within, asked).await {
                Ok(Ok(m)) => Control::decode(m.as_slice()),
                Ok(Err(e)) => Err(e),
                Err(_) => {
                    // Stalled: a fresh connection may do better.
                    self.sock.pipes.close_all();
                    Err(Error::PeerGone {
                        address: self.sock.address.to_string(),
                    })
                }
            };
            match answer {
                Ok(Control {
                    op: Op::Queued,
                    a: last,
                    ..
                }) => {
                    self.batch = (self.batch * 2).clamp(MIN_BATCH, full.max(MIN_BATCH));
                    // Never past what this push carried (a queue that
                    // says more is wrong, and must not empty the window).
                    self.window.taken(last.min(shipped));
                }
                Ok(Control { op: Op::Full, .. }) => {}
                Ok(c) => {
                    self.window.failed(Error::Corrupt {
                        what: "answer to push",
                        found: c.op as u64,
                        expected: "8 (queued) or 9 (full)",
                    });
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    tracing::debug!(address = %self.sock.address, error = %e, "nng pusher: push failed; asking again");
                    // Smaller, in case the batch was over the queue's
                    // size limit (down to one message); doubled again
                    // with each success.
                    self.batch /= 4;
                    self.window.failed(e);
                    // Not in a tight loop while the queue is away.
                    if !self.sock.wait_connected(self.gone_after).await {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
    }
}

//! Push/pull over QUIC: a work queue held by the binding puller; every
//! push and every remote pull is one bidirectional stream.
//!
//! - Push: the pusher's window goes out in batches, a stream each: a
//!   header (the pusher's key and first sequence number), the messages,
//!   the stream's end; the queue answers once it has queued them all (it
//!   waits for room, unless the pusher gives up first: a stream the
//!   pusher abandoned queues nothing), leaving out what it already holds
//!   from that pusher.
//! - Remote pull: the puller asks; the queue sends the head item and
//!   waits for the puller's acknowledgement on the same stream. An item
//!   whose stream breaks before the acknowledgement (the receive was
//!   cancelled, or the puller died) goes back to the head of the queue, so
//!   nothing is lost while the queue's process lives; an acknowledgement
//!   lost with its connection can make one message delivered twice.
//!
//! A pusher whose connection broke connects again on its next send.

use super::conn::{self, Bound, Client, Outgoing, Reader, FIRST_ENVELOPE};
use crate::address::Address;
use crate::envelope::{encode_into, Decoded, Header, Kind};
use crate::error::{Error, Result};
use crate::frame::{Frame, PeerId};
use crate::options::Options;
use crate::recycle::Recycled;
use crate::window::{Entry, PushWindow, Pushers};
use quinn::{Connection, RecvStream, SendStream, VarInt};
use std::collections::VecDeque;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Bytes a queued message is charged: its envelope and what holding it
/// costs, so a flood of empty messages is bounded too.
fn cost(d: &Decoded) -> usize {
    crate::envelope::HEADER_LEN + d.header.body_len as usize + 128
}

#[derive(Default)]
struct QState {
    items: VecDeque<Decoded>,
    bytes: usize,
    /// The last sequence number queued per pusher key.
    pushed: Pushers,
}

/// Bytes of push batches a queue holds before they are queued.
struct Held<'a> {
    total: &'a std::sync::atomic::AtomicUsize,
    mine: usize,
}

impl<'a> Held<'a> {
    fn new(total: &'a std::sync::atomic::AtomicUsize) -> Self {
        Held { total, mine: 0 }
    }
    /// Counts `n` more bytes; an error when that takes the total over
    /// `budget` (then they are not counted).
    fn add(&mut self, n: usize, budget: usize) -> Result<()> {
        use std::sync::atomic::Ordering::AcqRel;
        let before = self.total.fetch_add(n, AcqRel);
        if before + n > budget {
            self.total.fetch_sub(n, AcqRel);
            return Err(Error::TooLarge {
                what: "push batches the queue holds before queueing them",
                got: (before + n) as u64,
                limit: budget as u64,
            });
        }
        self.mine += n;
        Ok(())
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.total
            .fetch_sub(self.mine, std::sync::atomic::Ordering::AcqRel);
    }
}

struct QShared {
    /// Bytes of push batches read and not yet queued (see [`Held`]).
    held: std::sync::atomic::AtomicUsize,
    state: Mutex<QState>,
    data: Notify,
    room: Notify,
    capacity: usize,
    max_message: usize,
    max_conns: usize,
    stall: Duration,
    address: Address,
}

impl QShared {
    fn put(&self, d: Decoded, front: bool) {
        let mut st = lock(&self.state);
        st.bytes += cost(&d);
        if front {
            st.items.push_front(d);
        } else {
            st.items.push_back(d);
        }
        drop(st);
        self.data.notify_waiters();
    }

    fn take(&self) -> Option<Decoded> {
        let mut st = lock(&self.state);
        let d = st.items.pop_front()?;
        st.bytes -= cost(&d);
        drop(st);
        self.room.notify_waiters();
        Some(d)
    }

    /// Queues `batch` once there is room for all of it (or the queue is
    /// empty), unless `send` is stopped first (the pusher gave up) or, for
    /// a pusher the queue cannot remember now, [`FIRST_ENVELOPE`] passes.
    /// With `seq` = (pusher key, first sequence number), each message
    /// carries its own number (the first, the first + 1, …) and those the
    /// queue already holds from that pusher are left out (a batch sent
    /// again after a broken connection). The last sequence number the
    /// queue holds from the pusher afterwards (0 without `seq`), or `None`
    /// when the pusher stopped or could not be remembered.
    async fn push(
        &self,
        batch: Vec<Decoded>,
        seq: Option<(u64, u64)>,
        send: &SendStream,
    ) -> Option<u64> {
        let mut stopped = pin!(send.stopped());
        // (its number, the message): numbers stay with their messages
        // however often what the queue already holds is left out.
        let first = seq.map_or(0, |(_, f)| f);
        let mut batch: Vec<(u64, Decoded)> = (first..).zip(batch).collect();
        let unknown_until = std::time::Instant::now() + FIRST_ENVELOPE;
        loop {
            let mut room = pin!(self.room.notified());
            room.as_mut().enable();
            let mut known = true;
            {
                let mut st = lock(&self.state);
                let mut had = 0;
                if let Some((key, _)) = seq {
                    known = st.pushed.knows(key);
                    if known {
                        had = st.pushed.last(key);
                        batch.retain(|(n, _)| *n > had);
                        if batch.is_empty() {
                            // All held already: nothing queued, and the
                            // pusher's age is left as it was.
                            return Some(had);
                        }
                    }
                }
                let bytes: usize = batch.iter().map(|(_, d)| cost(d)).sum();
                if known && (st.items.is_empty() || st.bytes + bytes <= self.capacity) {
                    let last = batch.last().map_or(had, |(n, _)| *n);
                    if let Some((key, _)) = seq {
                        st.pushed.remember(key, last);
                    }
                    st.bytes += bytes;
                    st.items.extend(batch.into_iter().map(|(_, d)| d));
                    drop(st);
                    self.data.notify_waiters();
                    return Some(if seq.is_some() { last } else { 0 });
                }
            }
            if !known && std::time::Instant::now() >= unknown_until {
                tracing::warn!(address = %self.address, "QUIC queue: too many pushers heard from lately to take a new one; its batch is refused");
                return None;
            }
            // A new pusher while too many were heard from lately waits as
            // one waits for room, looking again every second.
            let again = if known {
                Duration::MAX
            } else {
                Duration::from_secs(1)
            };
            tokio::select! {
                _ = room => {}
                _ = tokio::time::sleep(again) => {}
                _ = &mut stopped => return None,
            }
        }
    }

    /// Serves one stream a peer opened: a push or a pull.
    async fn stream(
        self: Arc<Self>,
        conn: Connection,
        send: SendStream,
        recv: RecvStream,
    ) -> Result<()> {
        let a = &self.address;
        // Reset, not finished, on every way out but a clean answer.
        let mut send = Outgoing::new(send);
        let mut reader = Reader::new(recv, self.max_message);
        let first = tokio::time::timeout(FIRST_ENVELOPE, reader.next(a))
            .await
            .map_err(|_| Error::Timeout {
                what: "a peer's first envelope",
                after: FIRST_ENVELOPE,
            })??;
        let Some(mut first) = first else {
            return Ok(());
        };
        // A batch header first: the pusher's key and first sequence number.
        let mut seq = None;
        if first.header.kind == Kind::Batch {
            let n: [u8; 8] = first.payload().try_into().map_err(|_| Error::Corrupt {
                what: "batch header payload",
                found: first.payload().len() as u64,
                expected: "8 bytes (the first sequence number)",
            })?;
            let from = u64::from_le_bytes(n);
            // Room for a whole batch above it, so numbers never wrap.
            if from == 0 || from.checked_add(BATCH_COUNT as u64 * 16).is_none() {
                return Err(Error::Corrupt {
                    what: "batch first sequence number",
                    found: from,
                    expected: "1 or more, with room for a batch above it",
                });
            }
            seq = Some((first.header.id, from));
            first = tokio::time::timeout(FIRST_ENVELOPE, reader.next(a))
                .await
                .map_err(|_| Error::Timeout {
                    what: "a batch's first message",
                    after: FIRST_ENVELOPE,
                })??
                .ok_or(Error::Corrupt {
                    what: "an empty push batch",
                    found: 0,
                    expected: "at least one message",
                })?;
            if first.header.kind != Kind::Message {
                return Err(Error::Corrupt {
                    what: "envelope kind in a push batch",
                    found: first.header.kind as u64,
                    expected: "1 (push)",
                });
            }
        }
        match first.header.kind {
            Kind::Message => {
                // A batch: envelopes up to the end of the stream, read
                // whole (within the first envelope's time, and no more
                // than BATCH_BYTES, or one message) before any is queued,
                // so a stream the pusher abandons queues nothing.
                let limit = BATCH_BYTES.max(self.max_message) + BATCH_COUNT * (16 + 128);
                // Batches read or waiting for room, over every stream and
                // connection, hold at most `budget` bytes: past it, a
                // batch is refused (its pusher sends it again later).
                let budget = 4 * self.capacity + limit;
                let mut held = Held::new(&self.held);
                let mut bytes = cost(&first);
                held.add(bytes, budget)?;
                let mut batch = vec![first];
                let rest = async {
                    while let Some(d) = reader.next(a).await? {
                        if d.header.kind != Kind::Message {
                            return Err(Error::Corrupt {
                                what: "envelope kind in a push batch",
                                found: d.header.kind as u64,
                                expected: "1 (push)",
                            });
                        }
                        bytes += cost(&d);
                        held.add(cost(&d), budget)?;
                        if bytes > limit {
                            return Err(Error::TooLarge {
                                what: "push batch",
                                got: bytes as u64,
                                limit: limit as u64,
                            });
                        }
                        batch.push(d);
                    }
                    Ok(())
                };
                tokio::time::timeout(FIRST_ENVELOPE, rest)
                    .await
                    .map_err(|_| Error::Timeout {
                        what: "the rest of a push batch",
                        after: FIRST_ENVELOPE,
                    })??;
                let _ = bytes;
                if let Some(last) = self.push(batch, seq, &send.send).await {
                    conn::write(&mut send.send, Kind::Reply, b"", b"", last, a).await?;
                    send.done();
                }
                Ok(())
            }
            Kind::Request => {
                // Wait for an item, or for the puller to give up.
                let item = {
                    let mut stopped = pin!(send.send.stopped());
                    loop {
                        let mut data = pin!(self.data.notified());
                        data.as_mut().enable();
                        if let Some(d) = self.take() {
                            break d;
                        }
                        tokio::select! {
                            _ = data => {}
                            _ = &mut stopped => return Ok(()),
                        }
                    }
                };
                let mut env = Recycled::with_capacity(
                    crate::envelope::HEADER_LEN + item.topic().len() + 16 + item.payload().len(),
                );
                encode_into(&item.header, item.topic(), item.payload(), &mut env);
                // Handed to quinn as it is (not copied again).
                let env = conn::shared_bytes(&Arc::new(env));
                // A puller that does not take the item, or does not say it
                // did, within the stall timeout loses it to the others.
                // Not taking it in time may be a slow link (the item stays
                // first and goes to the next puller that asks); taking it
                // and never saying so is a peer that would hold every next
                // item back the same way, and its connection goes.
                let written = tokio::time::timeout(self.stall, send.send.write_chunk(env)).await;
                let acked = match written {
                    Err(_) => Err(Error::Timeout {
                        what: "sending a pulled message",
                        after: self.stall,
                    }),
                    Ok(Err(e)) => Err(conn::write_err(e, a)),
                    Ok(Ok(())) => match reader.expect(Kind::Reply, self.stall, a).await {
                        Err(e @ Error::Timeout { .. }) => {
                            tracing::warn!(address = %a, error = %e, "QUIC queue: a puller took its item and did not acknowledge it within the stall timeout; queued again and the puller dropped");
                            self.put(item, true);
                            conn.close(VarInt::from_u32(conn::EVICTED), b"stalled puller");
                            return Ok(());
                        }
                        r => r.map(|_| ()),
                    },
                };
                match acked {
                    Ok(()) => {
                        send.done();
                        Ok(())
                    }
                    Err(e) => {
                        tracing::info!(address = %a, error = %e, "QUIC queue: a pulled message was not taken or acknowledged; queued again");
                        self.put(item, true);
                        Ok(())
                    }
                }
            }
            k => Err(Error::Corrupt {
                what: "envelope kind opening a queue stream",
                found: k as u64,
                expected: "1 (push) or 2 (pull)",
            }),
        }
    }

    async fn connection(self: Arc<Self>, conn: Connection) {
        let remote = conn.remote_address();
        let address = self.address.clone();
        let c = conn.clone();
        conn::streams(conn, self.stall, &address, move |send, recv, token| {
            let (me, c) = (self.clone(), c.clone());
            async move {
                let _in_progress = token;
                if let Err(e) = me.clone().stream(c, send, recv).await {
                    tracing::warn!(address = %me.address, %remote, error = %e, "QUIC queue: bad stream from a peer; dropped");
                }
            }
        })
        .await;
    }
}

enum Side {
    Queue {
        shared: Arc<QShared>,
        endpoint: quinn::Endpoint,
        acceptor: tokio::task::JoinHandle<()>,
        address: Address,
    },
    Remote {
        client: Client,
        opts: Options,
    },
}

/// Pulling end over QUIC.
pub struct QuicPuller {
    side: Side,
}

impl std::fmt::Debug for QuicPuller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicPuller")
            .field("address", &self.address())
            .finish_non_exhaustive()
    }
}

impl Drop for QuicPuller {
    fn drop(&mut self) {
        match &self.side {
            Side::Queue {
                acceptor, endpoint, ..
            } => {
                acceptor.abort();
                // Pushers and pullers learn at once that the queue is gone.
                endpoint.close(VarInt::from_u32(conn::CLOSED), b"queue closed");
            }
            Side::Remote { client, .. } => client
                .conn
                .close(VarInt::from_u32(conn::CLOSED), b"puller dropped"),
        }
    }
}

impl QuicPuller {
    /// Binds the queue at `address` (`quic://HOST:PORT`, no pin).
    pub async fn bind(address: &Address, opts: &Options) -> Result<QuicPuller> {
        let Bound { endpoint, address } = conn::bind(address, opts).await?;
        let shared = Arc::new(QShared {
            held: std::sync::atomic::AtomicUsize::new(0),
            state: Mutex::new(QState::default()),
            data: Notify::new(),
            room: Notify::new(),
            capacity: opts.capacity as usize,
            max_message: opts.max_message,
            max_conns: opts.listener_conns(),
            stall: opts.stall_timeout,
            address: address.clone(),
        });
        let (s, ep) = (shared.clone(), endpoint.clone());
        let slots = conn::Slots::default();
        let acceptor = tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                let (s, slots) = (s.clone(), slots.clone());
                tokio::spawn(async move {
                    if let Some((c, _slot)) = conn::accept(incoming, &slots, s.max_conns).await {
                        s.connection(c).await;
                    }
                });
            }
        });
        Ok(QuicPuller {
            side: Side::Queue {
                shared,
                endpoint,
                acceptor,
                address,
            },
        })
    }

    /// Connects another puller to the queue at `address` (with its pin).
    pub async fn connect(address: &Address, opts: &Options) -> Result<QuicPuller> {
        Ok(QuicPuller {
            side: Side::Remote {
                client: conn::connect(address, opts).await?,
                opts: opts.clone(),
            },
        })
    }

    /// The queue's address (with the bound port and the pin).
    pub fn address(&self) -> Address {
        match &self.side {
            Side::Queue { address, .. } => address.clone(),
            Side::Remote { client, .. } => client.address.clone(),
        }
    }

    /// The next message.
    pub async fn recv(&mut self) -> Result<Frame<'static>> {
        match &mut self.side {
            Side::Queue { shared, .. } => {
                // Waiting is armed only when the queue was found empty,
                // and the queue looked at again after arming it.
                let d = match shared.take() {
                    Some(d) => d,
                    None => loop {
                        let mut data = pin!(shared.data.notified());
                        data.as_mut().enable();
                        if let Some(d) = shared.take() {
                            break d;
                        }
                        data.await;
                    },
                };
                let peer = d.header.id;
                Ok(d.into_frame()?.with_peer(peer))
            }
            Side::Remote { client, opts } => {
                // Twice at most, as a push (a connection closed as idle).
                for attempt in 0..2 {
                    conn::reconnect_if_lost(client, opts).await?;
                    match pull(client, opts).await {
                        Err(_) if attempt == 0 && conn::closed_idle(&client.conn) => continue,
                        r => return r,
                    }
                }
                Err(Error::PeerGone {
                    address: client.address.to_string(),
                })
            }
        }
    }
}

/// One pull from a remote queue: ask, take the item, acknowledge it.
async fn pull(client: &mut Client, opts: &Options) -> Result<Frame<'static>> {
    let a = client.address.clone();
    let (send, recv) = client
        .conn
        .open_bi()
        .await
        .map_err(|e| conn::lost(&e, &a))?;
    let mut send = Outgoing::new(send);
    conn::write(&mut send.send, Kind::Request, b"", b"", 0, &a).await?;
    let mut reader = Reader::new(recv, opts.max_message);
    let d = reader.expect(Kind::Message, Duration::MAX, &a).await?;
    conn::write(&mut send.send, Kind::Reply, b"", b"", 0, &a).await?;
    send.done();
    let peer = d.header.id;
    Ok(d.into_frame()?.with_peer(peer))
}

/// Payload bytes one push stream carries at most (at least one message).
const BATCH_BYTES: usize = 4 << 20;
/// Messages one push stream carries at most.
const BATCH_COUNT: usize = 4096;

/// Pushing end over QUIC.
///
/// [`send`](Self::send) puts the message in the pusher's window (at most
/// `capacity` bytes, or one message) and returns; a task of the pusher's
/// ships the window to the queue in batches, a stream each: the messages,
/// then the stream's end, then the queue's answer once it has queued them
/// all. A batch whose stream breaks before the answer is sent again; each
/// batch opens with a header naming the pusher's key (a secret of its own)
/// and its first sequence number, so the queue leaves out what it already
/// holds from this pusher, and a batch sent again is queued once, in
/// order (a queue that restarted knows nothing: what the old one took is
/// gone with it). [`flush`](Self::flush) waits until the queue has taken
/// everything sent; a failure to ship (the queue gone) is reported by the
/// next `send` or `flush`, and the window is kept for a queue that comes
/// back. A dropped pusher goes on shipping its window for up to the stall
/// timeout.
pub struct QuicPusher {
    window: Arc<PushWindow>,
    address: Address,
    /// Its id, in every envelope (the frames' peer).
    id: u64,
    opts: Options,
}

impl std::fmt::Debug for QuicPusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicPusher")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Drop for QuicPusher {
    fn drop(&mut self) {
        self.window.close();
    }
}

impl QuicPusher {
    /// Connects a pusher to the queue at `address` (with its pin; inside a
    /// tokio runtime: it ships on a task of its own).
    pub async fn connect(address: &Address, opts: &Options) -> Result<QuicPusher> {
        let client = conn::connect(address, opts).await?;
        let window = PushWindow::new(opts.capacity as usize);
        // The queue tells batches apart by a key of the pusher's that,
        // unlike its id, no puller sees.
        let key = PeerId::random().0;
        tokio::spawn(ship(window.clone(), client, key, opts.clone()));
        Ok(QuicPusher {
            window,
            address: address.clone(),
            id: PeerId::random().0,
            opts: opts.clone(),
        })
    }

    /// Puts `payload` in the window, waiting for room up to the send
    /// timeout; a failure to ship since the last look is returned instead
    /// (once; the window is kept). Cancelled while waiting, nothing was
    /// put in.
    pub async fn send(&mut self, payload: &[u8]) -> Result<()> {
        Error::check_payload(payload.len(), self.opts.max_message)?;
        let h = Header::new(Kind::Message, b"", payload.len(), self.id)?;
        let mut env = Recycled::with_capacity(crate::envelope::HEADER_LEN + payload.len());
        encode_into(&h, b"", payload, &mut env);
        let len = env.len();
        self.window
            .put(env, len, |_, _| {}, self.opts.send_timeout)
            .await
    }

    /// Waits until the queue has taken everything sent (up to the send
    /// timeout); a failure to ship is returned instead.
    pub async fn flush(&mut self) -> Result<()> {
        self.window.flush(self.opts.send_timeout).await
    }
}

/// Ships `window` to the queue `client` is connected to, until the window
/// is empty and its pusher gone (or gone for the stall timeout).
async fn ship(window: Arc<PushWindow>, mut client: Client, key: u64, opts: Options) {
    let full = BATCH_BYTES.min(opts.max_message);
    let mut limit = full;
    let mut closed_at: Option<std::time::Instant> = None;
    let mut pause = Duration::from_millis(10);
    while let Some(batch) = window.batch(BATCH_COUNT, limit, |e| e.1.len()).await {
        // A dropped pusher ships for the stall timeout at most, however
        // long the queue takes to answer.
        let mut left = Duration::MAX;
        if window.is_closed() {
            let since = *closed_at.get_or_insert_with(std::time::Instant::now);
            left = opts.stall_timeout.saturating_sub(since.elapsed());
            if left.is_zero() {
                tracing::warn!(address = %client.address, left = window.pending(), "QUIC pusher: dropped with messages the queue did not take within the stall timeout; they are lost");
                break;
            }
        }
        let last = batch[batch.len() - 1].0;
        // Twice at most: a connection the queue closed as idle just as
        // this batch began is made again, and the batch sent again.
        let mut r = Ok(0);
        for attempt in 0..2 {
            let once = async {
                conn::reconnect_if_lost(&mut client, &opts).await?;
                push_batch(&client, key, &batch).await
            };
            r = tokio::time::timeout(left, once)
                .await
                .unwrap_or(Err(Error::Timeout {
                    what: "a dropped pusher's last batch",
                    after: opts.stall_timeout,
                }));
            match &r {
                Err(_) if attempt == 0 && conn::closed_idle(&client.conn) => continue,
                _ => break,
            }
        }
        match r {
            Ok(queued) => {
                pause = Duration::from_millis(10);
                limit = (limit * 2).clamp(64 << 10, full.max(64 << 10));
                // Never past what this batch carried.
                window.taken(queued.min(last));
            }
            Err(e) => {
                tracing::debug!(address = %client.address, error = %e, "QUIC pusher: batch not queued; sending it again");
                window.failed(e);
                // Smaller (a slow link must carry a batch within the
                // queue's patience), and not in a tight loop while the
                // queue is away.
                limit /= 4;
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
    client
        .conn
        .close(VarInt::from_u32(conn::CLOSED), b"pusher dropped");
}

/// One batch on a stream of its own: its header, the envelopes, the end,
/// the answer (the last sequence number the queue holds from this pusher).
async fn push_batch(client: &Client, key: u64, batch: &[Entry]) -> Result<u64> {
    let a = &client.address;
    let (send, recv) = client.conn.open_bi().await.map_err(|e| conn::lost(&e, a))?;
    let mut send = Outgoing::new(send);
    conn::write(
        &mut send.send,
        Kind::Batch,
        b"",
        &batch[0].0.to_le_bytes(),
        key,
        a,
    )
    .await?;
    // Handed to quinn as they are (shared, not copied again).
    let chunks: Vec<bytes::Bytes> = batch
        .iter()
        .map(|(_, env)| conn::shared_bytes(env))
        .collect();
    send.send
        .write_all_chunks(&mut { chunks })
        .await
        .map_err(|e| conn::write_err(e, a))?;
    send.done();
    let mut reader = Reader::new(recv, 1024);
    let answer = reader.expect(Kind::Reply, Duration::MAX, a).await?;
    // Queued: what follows the answer changes nothing (read so that
    // quinn asks nothing of the queue's stream).
    let _ = reader.end(FIRST_ENVELOPE, a).await;
    Ok(answer.header.id)
}

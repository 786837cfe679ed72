//! Publish/subscribe over a broadcast ring.
//!
//! Each message is one ring record: the 16-byte [envelope](crate::envelope)
//! header, the topic padded to 16, then the payload, which therefore starts
//! 16-byte aligned (ring payloads do) and is read in place.

use super::names::{self, Binding};
use crate::address::Address;
use crate::envelope::{Header, Kind, HEADER_LEN};
use crate::error::{Error, Result};
use crate::frame::{archive_into, Archivable, Archived, Frame};
use crate::options::Options;
use shoal_shm_ring::{BroadcastConfig, BroadcastReader, BroadcastWriter, ReadyFd, Wait};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;
use tokio::task::JoinHandle;

/// The payload-format tag of the rings: the envelope version and the rkyv
/// format ([`archive_format`](crate::frame::archive_format)), checked on
/// attach so a mismatched build fails naming both sides.
pub(super) fn format() -> &'static [u8] {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| format!("shoal-env1 {}", crate::frame::archive_format()))
        .as_bytes()
}

/// The smallest payload room a typed send reserves.
const MIN_HINT: usize = 256;

pub(super) fn pad16(n: usize) -> usize {
    n.div_ceil(16) * 16
}

pub(super) fn shm_name(address: &Address) -> Result<&str> {
    match address {
        Address::Shm { name } => Ok(name),
        other => Err(Error::BadAddress {
            address: other.to_string(),
            why: "the shm backend takes shm:// addresses".into(),
        }),
    }
}

/// Writes the envelope header (a message of `kind` with correlation or
/// sender `id`) and topic at the start of `buf`; returns the payload's
/// offset.
pub(super) fn put_envelope_as(
    buf: &mut [u8],
    kind: Kind,
    topic: &[u8],
    payload_len: usize,
    id: u64,
) -> Result<usize> {
    let h = Header::new(kind, topic, payload_len, id)?;
    buf[..HEADER_LEN].copy_from_slice(&h.encode());
    let off = HEADER_LEN + pad16(topic.len());
    buf[HEADER_LEN..HEADER_LEN + topic.len()].copy_from_slice(topic);
    buf[HEADER_LEN + topic.len()..off].fill(0);
    Ok(off)
}

/// The publishing end: binds `shm://NAME` and creates its ring.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use shoal_transport::{Address, Options, ShmPublisher, ShmSubscriber};
/// let addr: Address = format!("shm://doc-pub-{}", std::process::id()).parse()?;
/// let mut publisher = ShmPublisher::bind(&addr, &Options::default())?;
/// let mut subscriber = ShmSubscriber::connect(&addr, &Options::default()).await?;
/// publisher.wait_for_subscribers(1, std::time::Duration::from_secs(5)).await?;
/// publisher.send(b"prices", b"42").await?;
/// let msg = subscriber.recv().await?;
/// assert_eq!((msg.topic(), &*msg), (&b"prices"[..], &b"42"[..]));
/// # Ok::<(), shoal_transport::Error>(())
/// # }).unwrap();
/// ```
pub struct ShmPublisher {
    /// Declared first, so it is dropped first: the name goes before the
    /// ring, and never names a ring that already looks dead.
    _binding: Binding,
    writer: Arc<Mutex<BroadcastWriter>>,
    /// A wait for room still running in the blocking pool (a send whose
    /// future was dropped while it waited): the next send joins it first.
    pending: Option<JoinHandle<Result<()>>>,
    /// Cancels a wait for room left in the blocking pool when this
    /// publisher drops.
    cancel: Arc<shoal_shm_ring::CancelToken>,
    /// Payload bytes to reserve for a typed send (grows to fit).
    archive_hint: usize,
    /// This publisher's id, in every message's envelope (`Frame::peer`).
    peer: u64,
    max_message: usize,
    send_timeout: Option<Duration>,
    address: Address,
}

impl std::fmt::Debug for ShmPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmPublisher")
            .field("address", &self.address)
            .finish()
    }
}

impl Drop for ShmPublisher {
    fn drop(&mut self) {
        // A wait for room left running by a cancelled send gives up.
        self.cancel.cancel();
    }
}

impl ShmPublisher {
    /// The address bound.
    pub fn address(&self) -> Address {
        self.address.clone()
    }

    /// Creates a ring of `opts.capacity` bytes for up to `opts.max_peers`
    /// subscribers and binds it to `address` (`shm://NAME`).
    pub fn bind(address: &Address, opts: &Options) -> Result<Self> {
        let name = shm_name(address)?;
        let cfg = BroadcastConfig::new(opts.capacity, opts.max_peers).payload_format(format());
        let writer = BroadcastWriter::create(&cfg)?;
        let binding = Binding::bind(name, &writer.handle(), &address.to_string())?;
        Ok(ShmPublisher {
            _binding: binding,
            writer: Arc::new(Mutex::new(writer)),
            pending: None,
            cancel: Arc::new(shoal_shm_ring::CancelToken::new()),
            archive_hint: MIN_HINT,
            peer: crate::frame::PeerId::random().0,
            max_message: opts.max_message,
            send_timeout: opts.send_timeout,
            address: address.clone(),
        })
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, BroadcastWriter>> {
        // A panic while holding the lock (in this crate's code: none is
        // possible between lock and unlock) would poison it; the writer is
        // still consistent (a reservation dropped uncommitted is abandoned).
        Ok(self.writer.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Finishes a wait for room left running by a send that was cancelled
    /// (its outcome belonged to that send), so that no later call blocks
    /// on the writer's lock while that wait holds it.
    async fn join_pending(&mut self) -> Result<()> {
        if let Some(h) = self.pending.as_mut() {
            let r = h.await;
            self.pending = None;
            r.map_err(|e| Error::Io {
                what: "waiting for room in the ring".into(),
                source: std::io::Error::other(e),
            })?
            .ok();
        }
        Ok(())
    }

    /// Subscribers receiving now.
    pub async fn subscribers(&mut self) -> Result<u32> {
        self.join_pending().await?;
        Ok(self.lock()?.active_readers())
    }

    /// Waits until at least `n` subscribers receive (every message sent
    /// afterwards reaches them), for at most `timeout`.
    pub async fn wait_for_subscribers(&mut self, n: u32, timeout: Duration) -> Result<u32> {
        self.join_pending().await?;
        let t0 = Instant::now();
        loop {
            {
                let mut w = self.lock()?;
                match w.wait_for_readers(n, Wait::no_wait()) {
                    Ok(k) => return Ok(k),
                    Err(shoal_shm_ring::Error::WouldBlock) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if t0.elapsed() >= timeout {
                return Err(Error::Timeout {
                    what: "waiting for subscribers",
                    after: timeout,
                });
            }
            // Joins are rare and not on a message path: a short sleep.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn check_size(&self, payload_len: usize) -> Result<()> {
        if payload_len > self.max_message {
            return Err(Error::TooLarge {
                what: "payload",
                got: payload_len as u64,
                limit: self.max_message as u64,
            });
        }
        Ok(())
    }

    /// Waits (in the blocking pool) until a record of `len` bytes fits, or
    /// the send timeout passes; joins an earlier wait first.
    async fn wait_room(&mut self, len: usize) -> Result<()> {
        self.join_pending().await?;
        let w = self.writer.clone();
        let wait_for = self.send_timeout;
        let cancel = self.cancel.clone();
        let h = tokio::task::spawn_blocking(move || -> Result<()> {
            let mut w = w.lock().unwrap_or_else(|p| p.into_inner());
            let wait = match wait_for {
                Some(t) => Wait::timeout(t),
                None => Wait::forever(),
            };
            // Reserve and drop: the room stays (only this writer uses it).
            // Cancelled when the publisher drops.
            let r = w.reserve_with(len, wait.with_cancel(&cancel)).map(drop);
            match r {
                Ok(()) => Ok(()),
                Err(shoal_shm_ring::Error::Cancelled) => Err(Error::Closed),
                Err(shoal_shm_ring::Error::Timeout) => Err(Error::Timeout {
                    what: "send (waiting for subscribers to make room)",
                    after: wait_for.unwrap_or_default(),
                }),
                Err(e) => Err(e.into()),
            }
        });
        self.pending = Some(h);
        let r = match self.pending.as_mut() {
            Some(h) => h.await,
            None => return Ok(()),
        };
        self.pending = None;
        r.map_err(|e| Error::Io {
            what: "waiting for room in the ring".into(),
            source: std::io::Error::other(e),
        })?
    }

    /// Sends `payload` under `topic` to every subscriber, waiting while the
    /// slowest live one has no room for it (see
    /// [`Options::send_timeout`]). Cancel-safe: a send dropped before it
    /// returns sent nothing.
    pub async fn send(&mut self, topic: &[u8], payload: &[u8]) -> Result<()> {
        let peer = self.peer;
        self.check_size(payload.len())?;
        // The topic's limit, before any wait.
        Header::new(Kind::Message, topic, payload.len(), 0)?;
        self.join_pending().await?;
        let len = HEADER_LEN + pad16(topic.len()) + payload.len();
        loop {
            {
                let mut w = self.lock()?;
                let res = w.reserve_with(len, Wait::no_wait());
                match res {
                    Ok(mut r) => {
                        let off =
                            put_envelope_as(&mut r, Kind::Message, topic, payload.len(), peer)?;
                        r[off..off + payload.len()].copy_from_slice(payload);
                        r.commit(len)?;
                        return Ok(());
                    }
                    Err(shoal_shm_ring::Error::WouldBlock) => {}
                    Err(e) => return Err(e.into()),
                };
            }
            self.wait_room(len).await?;
        }
    }

    /// Sends `value` as an rkyv archive under `topic`, serialized straight
    /// into the ring (one copy end to end: the serialization itself); a
    /// value larger than expected is serialized aside and copied in.
    pub async fn send_value<T: Archivable>(&mut self, topic: &[u8], value: &T) -> Result<()> {
        let peer = self.peer;
        Header::new(Kind::Message, topic, 0, 0)?;
        self.join_pending().await?;
        let off = HEADER_LEN + pad16(topic.len());
        loop {
            let want = off + self.archive_hint;
            let max_message = self.max_message;
            // The inner `let` is needed: as a block's tail, the match's
            // reservation would outlive the lock guard it borrows.
            #[allow(clippy::let_and_return)]
            let spilled = {
                let mut w = self.lock()?;
                let res = w.reserve_with(want, Wait::no_wait());
                let spilled = match res {
                    Ok(mut r) => match archive_into(value, &mut r[off..])? {
                        Archived::InPlace(n) => {
                            if n > max_message {
                                return Err(Error::TooLarge {
                                    what: "payload",
                                    got: n as u64,
                                    limit: max_message as u64,
                                });
                            }
                            put_envelope_as(&mut r, Kind::Message, topic, n, peer)?;
                            r.commit(off + n)?;
                            Err(n)
                        }
                        // Dropped uncommitted: abandoned.
                        Archived::Spilled(buf) => Ok(Some(buf)),
                    },
                    Err(shoal_shm_ring::Error::WouldBlock) => Ok(None),
                    Err(e) => return Err(e.into()),
                };
                spilled
            };
            match spilled {
                // Sent in place (`Err` only to leave the lock's scope).
                Err(n) => {
                    // Far less than reserved: reserve less next time.
                    if n * 4 < self.archive_hint {
                        self.archive_hint = (self.archive_hint / 2).max(MIN_HINT);
                    }
                    return Ok(());
                }
                Ok(Some(buf)) => {
                    self.send(topic, &buf).await?;
                    // Sent: reserve enough next time, but never more than
                    // fits inline (a larger value goes out of line anyway).
                    let inline = self.lock()?.max_inline().saturating_sub(off);
                    self.archive_hint = buf
                        .len()
                        .next_power_of_two()
                        .clamp(MIN_HINT, inline.max(MIN_HINT));
                    return Ok(());
                }
                Ok(None) => self.wait_room(want).await?,
            }
        }
    }
}

/// The subscribing end: attaches to the ring bound at `shm://NAME`.
pub struct ShmSubscriber {
    reader: BroadcastReader,
    ready: AsyncFd<ReadyFd>,
    prefixes: Vec<Vec<u8>>,
    max_message: usize,
    spin: Duration,
    /// Where it connected (errors name it; reconnects use it).
    address: Address,
    opts: Options,
    /// The publisher died (reported once as `PeerGone`): the next receive
    /// reconnects to whoever binds the name next.
    gone: bool,
}

impl std::fmt::Debug for ShmSubscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmSubscriber")
            .field("address", &self.address)
            .finish()
    }
}

impl ShmSubscriber {
    /// Attaches to the publisher bound at `address`, waiting up to
    /// `opts.connect_timeout` for it to bind. Receives every message sent
    /// from the moment the publisher sees it join (see
    /// [`ShmPublisher::wait_for_subscribers`]).
    pub async fn connect(address: &Address, opts: &Options) -> Result<Self> {
        let name = shm_name(address)?;
        let t0 = Instant::now();
        let reader = loop {
            // A binding whose ring's writer is dead is stale: wait for the
            // next (attaching to it could even fail for want of a slot).
            let live = names::lookup(name)?.filter(|h| {
                shoal_shm_ring::Segment::attach(h.name(), shoal_shm_ring::SegmentKind::Broadcast)
                    .map(|s| s.creator_alive())
                    .unwrap_or(false)
            });
            if let Some(h) = live {
                match BroadcastReader::attach(&h) {
                    Ok(r) if r.writer_alive() => break r,
                    // A stale binding, or the ring vanished between the
                    // lookup and the attach: wait for a live one.
                    Ok(_)
                    | Err(shoal_shm_ring::Error::NotFound { .. })
                    | Err(shoal_shm_ring::Error::WriterGone { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if t0.elapsed() >= opts.connect_timeout {
                return Err(Error::NotBound {
                    address: address.to_string(),
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let theirs = reader.payload_format();
        if theirs.as_bytes() != format() {
            return Err(Error::Ring(shoal_shm_ring::Error::FormatMismatch {
                ours: String::from_utf8_lossy(format()).into_owned(),
                theirs,
            }));
        }
        let fd = reader.ready_fd()?;
        // SAFETY: a ReadyFd owns its eventfd (an OwnedFd) for its whole
        // life and always returns that descriptor from as_raw_fd; the
        // AsyncFd owns the ReadyFd, so the fd stays open and the same until
        // the AsyncFd drops.
        let ready = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(|e| Error::Io {
            what: "registering the ring's ReadyFd with tokio".into(),
            source: e.into(),
        })?;
        Ok(ShmSubscriber {
            reader,
            ready,
            prefixes: Vec::new(),
            max_message: opts.max_message,
            spin: opts.spin,
            address: address.clone(),
            opts: opts.clone(),
            gone: false,
        })
    }

    /// After a dead publisher: attaches to the ring bound at the address
    /// now (waiting up to `connect_timeout` for one), keeping the topic
    /// subscriptions. Messages the dead publisher sent after its last one
    /// received here are lost with it.
    async fn reconnect(&mut self) -> Result<()> {
        let fresh = ShmSubscriber::connect(&self.address, &self.opts).await?;
        self.reader = fresh.reader;
        self.ready = fresh.ready;
        self.gone = false;
        Ok(())
    }

    /// Receives only messages whose topic starts with `prefix` (call again
    /// for more prefixes; with none, everything is received).
    pub fn subscribe(&mut self, prefix: &[u8]) {
        self.prefixes.push(prefix.to_vec());
    }
}

/// Whether `topic` passes `prefixes` (none: everything passes).
fn wanted(prefixes: &[Vec<u8>], topic: &[u8]) -> bool {
    prefixes.is_empty() || prefixes.iter().any(|p| topic.starts_with(p))
}

/// The header, topic and payload ranges of ring record `rec`, which must
/// be of `kind` (bytes from a same-uid peer: every field of the envelope
/// bounds-checked).
pub(super) fn parse_as(
    max_message: usize,
    rec: &[u8],
    kind: Kind,
) -> Result<(Header, std::ops::Range<usize>, std::ops::Range<usize>)> {
    let head: &[u8; HEADER_LEN] = rec
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(Error::Corrupt {
            what: "ring record length",
            found: rec.len() as u64,
            expected: "at least the 16-byte envelope",
        })?;
    let max_body = u32::try_from(max_message.saturating_add(2048)).unwrap_or(u32::MAX);
    let h = Header::decode(head, max_body)?;
    if h.kind != kind {
        return Err(Error::Corrupt {
            what: "envelope kind",
            found: h.kind as u64,
            expected: "the kind this endpoint receives",
        });
    }
    if HEADER_LEN + h.body_len as usize != rec.len() {
        return Err(Error::Corrupt {
            what: "envelope body length",
            found: h.body_len as u64,
            expected: "the record's length less the envelope",
        });
    }
    let topic = HEADER_LEN..HEADER_LEN + h.topic_len as usize;
    let payload = HEADER_LEN + h.payload_offset()..rec.len();
    if payload.len() > max_message {
        return Err(Error::TooLarge {
            what: "payload",
            got: payload.len() as u64,
            limit: max_message as u64,
        });
    }
    Ok((h, topic, payload))
}

/// The ring's end-of-stream errors in this crate's terms.
fn ring_err(address: &Address) -> impl Fn(shoal_shm_ring::Error) -> Error + '_ {
    move |e| match e {
        shoal_shm_ring::Error::Closed => Error::Closed,
        shoal_shm_ring::Error::WriterGone { .. } => Error::PeerGone {
            address: address.to_string(),
        },
        e => Error::Ring(e),
    }
}

impl ShmSubscriber {
    /// The next record's bytes, if any, without taking it.
    fn peek(&mut self) -> Result<Option<&[u8]>> {
        let address = &self.address;
        self.reader.peek().map_err(ring_err(address))
    }

    /// Waits for the next message whose topic is subscribed. The payload
    /// stays in shared memory until the frame drops. Cancel-safe: dropped
    /// before it returns, it took nothing.
    ///
    /// Errors: [`Error::Closed`] once the publisher closed and everything
    /// was received; [`Error::PeerGone`] when it died (after everything it
    /// committed was received), once: the next call reconnects to the
    /// publisher that binds the name next (waiting up to
    /// `connect_timeout`, else [`Error::NotBound`], and trying again on the
    /// call after); a record with a malformed envelope is
    /// skipped and its error returned (the next call goes on after it); a
    /// malformed ring record (`Error::Ring` with `Corrupt`) stays where it
    /// is, and every call reports it: the ring cannot be trusted further.
    pub async fn recv(&mut self) -> Result<Frame<'_>> {
        if self.gone {
            self.reconnect().await?;
        }
        let mut skipped = 0u32;
        // Poll a little before parking (see Options::spin).
        let mut spin_from: Option<Instant> = None;
        let mut polls = 0u32;
        loop {
            // A record there? Peek: the guard is taken only once it is ours.
            let (max, prefixes) = (self.max_message, &self.prefixes);
            let peeked = self.reader.peek().map_err(ring_err(&self.address))?;
            let verdict = peeked.map(|rec| {
                let len = rec.len();
                parse_as(max, rec, Kind::Message)
                    .map(|(h, t, p)| (wanted(prefixes, &rec[t.clone()]), t, p, len, h.id))
            });
            let address = &self.address;
            match verdict {
                Some(Ok((true, topic, payload, len, peer))) => {
                    let g = self.reader.try_recv().map_err(ring_err(address))?;
                    let g = g.ok_or(Error::Closed)?;
                    // A same-uid process rewriting the record between the
                    // look and the take: refuse rather than slice out of it.
                    if g.len() != len {
                        return Err(Error::Corrupt {
                            what: "ring record length (changed under the reader)",
                            found: g.len() as u64,
                            expected: "the length it had a moment before",
                        });
                    }
                    return Ok(Frame::ring(g, topic, payload).with_peer(peer));
                }
                Some(Ok((false, ..))) => {
                    drop(self.reader.try_recv().map_err(ring_err(address))?);
                    skipped += 1;
                    if skipped.is_multiple_of(64) {
                        // Only unwanted topics so far: let other tasks (and
                        // a timeout around this call) run.
                        tokio::task::yield_now().await;
                    }
                }
                Some(Err(e)) => {
                    drop(self.reader.try_recv().map_err(ring_err(address))?);
                    return Err(e);
                }
                None => {
                    let t0 = *spin_from.get_or_insert_with(Instant::now);
                    polls += 1;
                    let spun_out = self.spin.is_zero()
                        || (polls.is_multiple_of(64) && t0.elapsed() >= self.spin);
                    if !spun_out {
                        std::hint::spin_loop();
                        continue;
                    }
                    self.wait().await?;
                    spin_from = None;
                }
            }
        }
    }

    /// Waits until the ring may have a record (or the publisher closed or
    /// died, which the next look reports).
    async fn wait(&mut self) -> Result<()> {
        self.ready.get_ref().arm();
        if self.peek()?.is_some() {
            return Ok(());
        }
        let mut guard = self.ready.readable().await.map_err(|source| Error::Io {
            what: "awaiting the ring's ReadyFd".into(),
            source,
        })?;
        guard.get_inner().clear();
        guard.clear_ready();
        // Liveness first, then a look: a record committed just before the
        // publisher died (or closed) is still delivered.
        let alive = self.reader.writer_alive();
        if self.peek()?.is_none() && !alive {
            self.gone = true;
            return Err(Error::PeerGone {
                address: self.address.to_string(),
            });
        }
        Ok(())
    }
}

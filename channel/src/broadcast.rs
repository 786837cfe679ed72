//! Broadcast: one writer, N readers, every reader gets every message in
//! order (how an inference server ships each step's inputs to every
//! worker).
//!
//! The writer creates the broadcast with the number of readers it waits
//! for; readers in any process attach with the handle and an index (a
//! label for logs and the caller). Every message carries a 16-byte
//! header, its sequence number (from 0, in send order) and room kept for
//! the writer's identity; the message after it stays 16-byte aligned, so
//! typed messages are read in place. A reader can hold several
//! [`Received`] messages at once (a worker keeps step i's inputs while it
//! receives step i+1); the ring gets them back in order as they drop.
//! Messages of any size: small ones in the ring, large ones through
//! overflow segments. A dead reader never blocks the writer (it is evicted
//! once its process is gone); a live one that stalls ends the writer's
//! wait with an error naming it; readers of a dead writer get
//! [`WriterGone`](shoal_shm_ring::Error::WriterGone).
//!
//! Readers on other hosts (through a network publisher) come next.

use crate::error::{Error, Result};
use crate::handle::{ring_tag, Handle, Kind};
use rkyv::api::high::HighValidator;
use rkyv::bytecheck::CheckBytes;
use shoal_shm_ring::{
    BroadcastConfig, BroadcastReader as RingReader, BroadcastWriter, Error as RingError, Held,
    PeerOptions, ReaderOptions, Wait,
};
use shoal_transport::{archive_into, Archivable, Archived};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Bytes of the header before every message.
const HEAD: usize = 16;
/// The smallest room a typed send reserves.
const MIN_HINT: usize = 256;

/// How to create a broadcast, and how its endpoints wait.
///
/// ```
/// use shoal_channel::BroadcastOptions;
/// let o = BroadcastOptions::new(4).capacity(8 << 20);
/// assert_eq!(o.readers, 4);
/// ```
#[derive(Debug, Clone)]
pub struct BroadcastOptions {
    /// Readers the writer waits for in [`Broadcast::wait_until_ready`]
    /// (and the most that can attach).
    pub readers: u32,
    /// Bytes of the ring (a power of two, 4 KiB to 2 GiB); messages larger
    /// than a quarter of it travel in overflow segments. Default 4 MiB.
    pub capacity: u64,
    /// How long a send waits for room before [`Error::Timeout`] (`None`:
    /// as long as it takes; a stalled live reader still ends the wait
    /// after the peer options' stall timeout). Default `None`.
    pub send_timeout: Option<Duration>,
    /// How long a receive waits before [`Error::Timeout`]. Default `None`.
    pub recv_timeout: Option<Duration>,
    /// How endpoints judge their peers.
    pub peer: PeerOptions,
}

impl BroadcastOptions {
    /// Options for `readers` readers, the rest default.
    pub fn new(readers: u32) -> Self {
        BroadcastOptions {
            readers,
            capacity: 4 << 20,
            send_timeout: None,
            recv_timeout: None,
            peer: PeerOptions::default(),
        }
    }
    /// Sets [`capacity`](Self::capacity).
    pub fn capacity(mut self, bytes: u64) -> Self {
        self.capacity = bytes;
        self
    }
    /// Sets [`send_timeout`](Self::send_timeout).
    pub fn send_timeout(mut self, t: Option<Duration>) -> Self {
        self.send_timeout = t;
        self
    }
    /// Sets [`recv_timeout`](Self::recv_timeout).
    pub fn recv_timeout(mut self, t: Option<Duration>) -> Self {
        self.recv_timeout = t;
        self
    }
    /// Sets [`peer`](Self::peer).
    pub fn peer(mut self, p: PeerOptions) -> Self {
        self.peer = p;
        self
    }
}

fn wait_for(t: Option<Duration>) -> Wait<'static> {
    match t {
        Some(t) => Wait::timeout(t),
        None => Wait::forever(),
    }
}

/// A ring error, as the caller should see it (`what` was waited for).
fn ring_error(e: RingError, what: &'static str, waited: Option<Duration>) -> Error {
    match e {
        RingError::Timeout | RingError::WouldBlock => Error::Timeout {
            what,
            after: waited.unwrap_or_default(),
        },
        e => e.into(),
    }
}

/// The writing end of a broadcast, held by the process that created it.
///
/// ```
/// use shoal_channel::{Broadcast, BroadcastOptions, BroadcastReceiver};
/// use std::time::Duration;
/// let mut b = Broadcast::create(&BroadcastOptions::new(2))?;
/// let mut r0 = BroadcastReceiver::attach(b.handle(), 0)?;
/// let mut r1 = BroadcastReceiver::attach(b.handle(), 1)?;
/// b.wait_until_ready(Duration::from_secs(5))?;
/// b.send(b"step 0")?;
/// b.send(b"step 1")?;
/// // A reader may hold several messages at once.
/// let (a, c) = (r0.recv()?, r0.recv()?);
/// assert_eq!((&*a, a.seq()), (&b"step 0"[..], 0));
/// assert_eq!((&*c, c.seq()), (&b"step 1"[..], 1));
/// assert_eq!(&*r1.recv()?, b"step 0");
/// # Ok::<(), shoal_channel::Error>(())
/// ```
pub struct Broadcast {
    writer: BroadcastWriter,
    handle: Handle,
    opts: BroadcastOptions,
    /// The next message's sequence number.
    seq: u64,
    hint: usize,
}

impl std::fmt::Debug for Broadcast {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broadcast")
            .field("handle", &self.handle)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl Broadcast {
    /// Creates a broadcast for `opts.readers` readers.
    pub fn create(opts: &BroadcastOptions) -> Result<Broadcast> {
        let cfg = BroadcastConfig::new(opts.capacity, opts.readers.max(1))
            .payload_format(ring_tag(Kind::Broadcast).as_bytes())
            .peer_options(opts.peer);
        let writer = BroadcastWriter::create(&cfg)?;
        let handle = Handle::new(Kind::Broadcast, writer.handle().to_string());
        Ok(Broadcast {
            writer,
            handle,
            opts: opts.clone(),
            seq: 0,
            hint: MIN_HINT,
        })
    }

    /// The handle readers attach with.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Waits until every reader of the options joined (up to `timeout`)
    /// and makes them active: every message sent afterwards reaches each
    /// of them. [`Error::ReadersMissing`] says how many never came.
    pub fn wait_until_ready(&mut self, timeout: Duration) -> Result<()> {
        let n = self.opts.readers;
        match self.writer.wait_for_readers(n, Wait::timeout(timeout)) {
            Ok(_) => Ok(()),
            Err(RingError::Timeout | RingError::WouldBlock) => Err(Error::ReadersMissing {
                expected: n,
                joined: self.writer.active_readers(),
                after: timeout,
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Readers active now.
    pub fn active_readers(&self) -> u32 {
        self.writer.active_readers()
    }

    /// Sends `msg` to every reader, waiting for room (up to the send
    /// timeout). Returns its sequence number.
    pub fn send(&mut self, msg: &[u8]) -> Result<u64> {
        let head = self.head();
        let timeout = self.opts.send_timeout;
        let mut r = self
            .writer
            .reserve_with(HEAD + msg.len(), wait_for(timeout))
            .map_err(|e| ring_error(e, "room in the broadcast", timeout))?;
        r[..HEAD].copy_from_slice(&head);
        r[HEAD..HEAD + msg.len()].copy_from_slice(msg);
        r.commit(HEAD + msg.len())?;
        Ok(self.sent())
    }

    /// Sends `value` as an rkyv archive serialized straight into the ring
    /// (the serialization is the one copy). Returns its sequence number.
    pub fn send_value<T: Archivable>(&mut self, value: &T) -> Result<u64> {
        let head = self.head();
        let timeout = self.opts.send_timeout;
        let spilled = {
            let mut r = self
                .writer
                .reserve_with(HEAD + self.hint, wait_for(timeout))
                .map_err(|e| ring_error(e, "room in the broadcast", timeout))?;
            r[..HEAD].copy_from_slice(&head);
            match archive_into(value, &mut r[HEAD..]).map_err(Error::Archive)? {
                Archived::InPlace(n) => {
                    r.commit(HEAD + n)?;
                    self.hint = self.fit_hint(n);
                    return Ok(self.sent());
                }
                // Dropped uncommitted: nothing is published.
                Archived::Spilled(buf) => buf,
            }
        };
        let seq = self.send(&spilled)?;
        self.hint = self.fit_hint(spilled.len());
        Ok(seq)
    }

    /// The room the next typed send reserves after an archive of `n`
    /// bytes: that, within what the ring carries inline with the header
    /// (a larger archive spills; reserving its size ahead would take an
    /// overflow segment for every later value, however small).
    fn fit_hint(&self, n: usize) -> usize {
        let inline = self.writer.max_inline().saturating_sub(HEAD).max(MIN_HINT);
        n.clamp(MIN_HINT, inline)
    }

    fn head(&self) -> [u8; HEAD] {
        let mut h = [0u8; HEAD];
        h[..8].copy_from_slice(&self.seq.to_le_bytes());
        h
    }

    fn sent(&mut self) -> u64 {
        self.seq += 1;
        self.seq - 1
    }
}

/// A reader's ring, shared with the messages it holds out.
struct Shared {
    reader: Mutex<RingReader>,
    /// Messages dropped while the reader was busy (a receive in another
    /// thread): released by the reader's next look.
    pending: Mutex<Vec<Held>>,
    /// How many are in `pending` (looked at without its lock: the common
    /// case, nothing pending, costs one load).
    pending_n: std::sync::atomic::AtomicUsize,
}

impl Shared {
    /// Releases what drops left pending (with the reader locked).
    fn drain(&self, r: &mut RingReader) {
        use std::sync::atomic::Ordering;
        if self.pending_n.load(Ordering::Acquire) == 0 {
            return;
        }
        let pending = {
            let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            self.pending_n.store(0, Ordering::Release);
            std::mem::take(&mut *p)
        };
        for h in pending {
            let _ = r.release_held(h);
        }
    }

    /// Queues the release of `h` for the reader's holder.
    fn queue(&self, h: Held) {
        let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        p.push(h);
        self.pending_n
            .store(p.len(), std::sync::atomic::Ordering::Release);
    }

    /// After letting go of the reader: releases what drops queued
    /// meanwhile, if the reader is free (else its holder does, by this
    /// same call after it lets go). Every path that queues or unlocks
    /// calls it, so a queued release never waits for a later receive.
    fn settle(&self) {
        loop {
            // The queuer stores the count, then (here) tries the lock; the
            // holder unlocks, then (here) loads the count. A SeqCst fence
            // between each side's write and read: one of them sees the
            // other, so a queued release is never left behind.
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
            if self.pending_n.load(std::sync::atomic::Ordering::Relaxed) == 0 {
                return;
            }
            match self.reader.try_lock() {
                Ok(mut r) => self.drain(&mut r),
                Err(std::sync::TryLockError::Poisoned(p)) => self.drain(&mut p.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => return,
            }
        }
    }
}

/// How long a receive waits in one go before it looks at messages dropped
/// meanwhile in other threads (so a drop never waits for a receive, and a
/// receive never waits on a release a drop left pending).
const SLICE: Duration = Duration::from_millis(50);

/// A reading end of a broadcast, in any process.
pub struct BroadcastReceiver {
    shared: Arc<Shared>,
    index: u32,
    recv_timeout: Option<Duration>,
    /// Awaited by `recv_async` (made on first use).
    ready: Option<crate::ready::Ready>,
}

impl std::fmt::Debug for BroadcastReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BroadcastReceiver")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

fn lock(m: &Mutex<RingReader>) -> std::sync::MutexGuard<'_, RingReader> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl BroadcastReceiver {
    /// Attaches to the broadcast `handle` names as reader `index`, with
    /// default options.
    pub fn attach(handle: &Handle, index: u32) -> Result<BroadcastReceiver> {
        BroadcastReceiver::attach_with(handle, index, &BroadcastOptions::new(1))
    }

    /// Attaches with `opts` (its receive timeout and peer options).
    pub fn attach_with(
        handle: &Handle,
        index: u32,
        opts: &BroadcastOptions,
    ) -> Result<BroadcastReceiver> {
        let ring = handle.ring(Kind::Broadcast)?;
        let ro = ReaderOptions {
            peer: opts.peer,
            expect_format: Some(crate::workqueue::expected_tag(Kind::Broadcast)),
        };
        let reader = RingReader::attach_with(&ring, &ro).map_err(crate::error::attach_error)?;
        Ok(BroadcastReceiver {
            shared: Arc::new(Shared {
                reader: Mutex::new(reader),
                pending: Mutex::new(Vec::new()),
                pending_n: std::sync::atomic::AtomicUsize::new(0),
            }),
            index,
            recv_timeout: opts.recv_timeout,
            ready: None,
        })
    }

    /// The index this reader attached with.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The next message, waiting for it (up to the receive timeout).
    /// Held in place until the returned value drops; several can be held
    /// at once: up to [`MAX_HELD`](shoal_shm_ring::MAX_HELD) small ones,
    /// fewer when what is held fills the ring or more than 8 are large
    /// (then the writer waits for the oldest to drop). A [`Received`]
    /// keeps this reader attached, even once the receiver is dropped.
    /// A dead writer ends the wait with
    /// [`WriterGone`](shoal_shm_ring::Error::WriterGone) once what it sent
    /// was received.
    pub fn recv(&mut self) -> Result<Received> {
        let timeout = self.recv_timeout;
        let end = timeout.and_then(|t| std::time::Instant::now().checked_add(t));
        loop {
            let left = end.map(|e| e.saturating_duration_since(std::time::Instant::now()));
            // At least one look, however short the timeout.
            let slice = left.map_or(SLICE, |l| l.min(SLICE));
            let got = {
                let mut r = lock(&self.shared.reader);
                self.shared.drain(&mut r);
                let wait = if slice.is_zero() {
                    Wait::no_wait()
                } else {
                    Wait::timeout(slice)
                };
                match r.recv_held_with(wait) {
                    Ok(h) => Some(Received::new(&self.shared, h, &mut r)),
                    Err(RingError::Timeout | RingError::WouldBlock) => {
                        // The writer's death is judged here too: a slice
                        // may end before the ring's own liveness check.
                        if !r.writer_alive() {
                            match r.try_recv_held() {
                                Ok(Some(h)) => Some(Received::new(&self.shared, h, &mut r)),
                                Ok(None) => Some(Err(RingError::WriterGone {
                                    pid: r.writer_pid(),
                                }
                                .into())),
                                Err(e) => Some(Err(e.into())),
                            }
                        } else {
                            None
                        }
                    }
                    Err(e) => Some(Err(ring_error(e, "a broadcast message", timeout))),
                }
            };
            self.shared.settle();
            if let Some(r) = got {
                return r;
            }
            if left.is_some_and(|l| l <= slice) {
                return Err(Error::Timeout {
                    what: "a broadcast message",
                    after: timeout.unwrap_or_default(),
                });
            }
        }
    }

    /// The next message, awaited without blocking the thread (up to the
    /// receive timeout). Cancel-safe: dropped before it returned, nothing
    /// was received.
    pub async fn recv_async(&mut self) -> Result<Received> {
        const WHAT: &str = "a broadcast message";
        let deadline = crate::ready::deadline(self.recv_timeout);
        loop {
            if let Some(m) = self.try_recv()? {
                return Ok(m);
            }
            if self.ready.is_none() {
                let fd = lock(&self.shared.reader).ready_fd();
                self.shared.settle();
                self.ready = Some(crate::ready::register(fd?)?);
            }
            let Some(ready) = &self.ready else { continue };
            ready.get_ref().arm();
            // Re-checked after arming (a record that came in between is
            // not missed), without keeping the reader locked.
            let got = {
                let mut r = lock(&self.shared.reader);
                self.shared.drain(&mut r);
                match r.try_recv_held() {
                    Ok(Some(h)) => Some(Received::new(&self.shared, h, &mut r)),
                    Ok(None) => None,
                    Err(e) => Some(Err(e.into())),
                }
            };
            self.shared.settle();
            if let Some(m) = got {
                return m;
            }
            let slice = crate::ready::slice(SLICE, deadline, WHAT)?;
            if !crate::ready::wait(ready, slice, "awaiting the broadcast").await? {
                // Liveness, then one more look: what the writer sent
                // before it died is still delivered.
                let alive = lock(&self.shared.reader).writer_alive();
                self.shared.settle();
                if !alive {
                    if let Some(m) = self.try_recv()? {
                        return Ok(m);
                    }
                    let pid = lock(&self.shared.reader).writer_pid();
                    self.shared.settle();
                    return Err(RingError::WriterGone { pid }.into());
                }
            }
        }
    }

    /// The next message if one is there now.
    pub fn try_recv(&mut self) -> Result<Option<Received>> {
        let got = {
            let mut r = lock(&self.shared.reader);
            self.shared.drain(&mut r);
            match r.try_recv_held() {
                Ok(Some(h)) => Received::new(&self.shared, h, &mut r).map(Some),
                Ok(None) => Ok(None),
                Err(e) => Err(e.into()),
            }
        };
        self.shared.settle();
        got
    }
}

/// A message a reader received: in place in shared memory until dropped,
/// with its sequence number. Derefs to its bytes.
pub struct Received {
    shared: Arc<Shared>,
    held: Option<Held>,
    ptr: *const u8,
    len: usize,
    seq: u64,
}

// SAFETY: a Received's bytes are immutable while it lives (the record is
// held: the writer does not reuse it) and its mapping lives as long as the
// reader it keeps (an Arc); the reader itself is behind a Mutex, touched
// only to release the record (or to queue its release), from whichever
// thread drops it.
unsafe impl Send for Received {}
// SAFETY: shared references only read the immutable bytes (see above).
unsafe impl Sync for Received {}

impl std::fmt::Debug for Received {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Received")
            .field("seq", &self.seq)
            .field("len", &self.len)
            .finish()
    }
}

impl Received {
    /// The message `held` names, received by `r` (locked by the caller,
    /// so nothing changes between the receive and this look).
    fn new(shared: &Arc<Shared>, held: Held, r: &mut RingReader) -> Result<Received> {
        let Some(bytes) = r.held_bytes(&held) else {
            // Not held any more: this reader lost its slot.
            return Err(RingError::Evicted.into());
        };
        let (ptr, len) = (bytes.as_ptr(), bytes.len());
        let seq = bytes
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes);
        let Some(seq) = seq.filter(|_| len >= HEAD) else {
            let _ = r.release_held(held);
            return Err(Error::Malformed {
                what: "a broadcast message shorter than its header",
                len,
            });
        };
        Ok(Received {
            shared: shared.clone(),
            held: Some(held),
            ptr,
            len,
            seq,
        })
    }

    /// Its sequence number: 0 for the writer's first message, one more
    /// for each after.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The message as a validated archived `T`, in place.
    pub fn archived<T>(&self) -> Result<&T::Archived>
    where
        T: rkyv::Archive,
        T::Archived: for<'b> CheckBytes<HighValidator<'b, rkyv::rancor::Error>>,
    {
        crate::archive::access::<T>(self)
    }
}

impl std::ops::Deref for Received {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr..ptr+len` are the held record's bytes (checked at
        // least HEAD long when received), handed out by the reader behind
        // `shared`, which this value keeps alive (so its mapping, and an
        // overflow record's pinned mapping, stay); the record stays held
        // (the writer does not reuse it) until `drop` releases it. What
        // breaks this: a malicious same-uid process writing the segment.
        unsafe { std::slice::from_raw_parts(self.ptr.add(HEAD), self.len - HEAD) }
    }
}

impl Drop for Received {
    fn drop(&mut self) {
        let Some(h) = self.held.take() else { return };
        // Never wait for a receive in another thread: leave the release
        // to the reader's next look instead.
        match self.shared.reader.try_lock() {
            Ok(mut r) => {
                let _ = r.release_held(h);
            }
            Err(std::sync::TryLockError::Poisoned(p)) => {
                let _ = p.into_inner().release_held(h);
            }
            Err(std::sync::TryLockError::WouldBlock) => {
                self.shared.queue(h);
                // The reader may have been let go just now.
                self.shared.settle();
                return;
            }
        }
        self.shared.settle();
    }
}

//! A broadcast's reading end, and the messages it hands out.
//!
//! Receiving is lock-free and holding costs no reference count: the ring
//! reader has one owner at a time (the [`BroadcastReceiver`], through
//! `&mut self`; after it, the orphan reaper), and a [`Received`] only
//! reads its record's bytes and, when dropped, stores a flag in its
//! ticket slot. The owner gives flagged records back to the ring at its
//! next look. The shared part ([`Inner`]) is freed by the owner once no
//! ticket is out: by the receiver's drop, or by the reaper if messages
//! were still held then (see [`orphans`](super::orphans)).

use super::{orphans, ring_error, BroadcastOptions, HEAD};
use crate::error::{Error, Result};
use crate::handle::{Handle, Kind};
use rkyv::api::high::HighValidator;
use rkyv::bytecheck::CheckBytes;
use shoal_shm_ring::{
    BroadcastReader as RingReader, CancelToken, Error as RingError, Held, Peeked, ReaderOptions,
    Wait, MAX_HELD,
};
use std::cell::UnsafeCell;
use std::mem::ManuallyDrop;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// What the owner of the ring reader shares with the messages it hands
/// out: the reader (whose mapping their bytes live in) and one flag per
/// ticket slot. Lives on the heap until [`Core::try_free`].
struct Inner {
    /// Touched only by the one [`Core`] that owns this Inner.
    reader: UnsafeCell<RingReader>,
    /// Per ticket slot, and last for the current record ([`CUR`]): the
    /// [`Received`] there was dropped (its last access to this Inner).
    released: [AtomicBool; MAX_HELD + 1],
}

/// The flag slot of the current record (see [`Cur`]).
const CUR: usize = MAX_HELD;

/// The current record: the last one handed out while none was out,
/// peeked (the ring's cursor stays on it) rather than held, so the usual
/// receive, drop, receive costs what a plain ring read does. The next
/// look gives it back if its message was dropped, else holds it.
enum Cur {
    /// None.
    Free,
    /// Peeked: its message is out, under the [`CUR`] flag.
    Peeked(Peeked),
    /// Held since (its message was still out at the next look): the
    /// position to release once the [`CUR`] flag says it dropped.
    Held(u64),
}

/// The owning side: the reader's Inner and the tickets of the messages
/// out. Owned by a [`BroadcastReceiver`], then by the orphan reaper.
pub(super) struct Core {
    inner: NonNull<Inner>,
    /// The ring position of each slot's record (while its [`Received`]
    /// is out).
    tickets: [u64; MAX_HELD],
    /// Bit k: slot k's ticket is out.
    out: u64,
    /// The current record, if any.
    cur: Cur,
}

// SAFETY: a Core is the one owner of its Inner's reader (Inner is only
// reached through a Core or, for its flags and the held bytes, through a
// Received); moving it to another thread moves that ownership whole. A
// RingReader holds its mapping and plain state, with no thread affinity.
unsafe impl Send for Core {}
// SAFETY: through `&Core` only plain fields are read (the `out` mask and
// the current record's state, for Debug) and the Inner's atomics;
// everything that touches the reader takes `&mut Core`.
unsafe impl Sync for Core {}

impl Core {
    fn new(reader: RingReader) -> Core {
        let inner = Box::new(Inner {
            reader: UnsafeCell::new(reader),
            released: std::array::from_fn(|_| AtomicBool::new(false)),
        });
        Core {
            inner: NonNull::from(Box::leak(inner)),
            tickets: [0; MAX_HELD],
            out: 0,
            cur: Cur::Free,
        }
    }

    fn inner(&self) -> &Inner {
        // SAFETY: `inner` came from a Box that only `try_free` (which takes
        // this Core by value) gives back.
        unsafe { self.inner.as_ref() }
    }

    /// The ring reader, after giving back what dropped messages released.
    #[inline]
    fn reader(&mut self) -> &mut RingReader {
        self.collect();
        // SAFETY: the Inner lives (see `inner`) and this Core is the one
        // path to its reader: Received values never touch it, and `&mut
        // self` makes this the one use.
        unsafe { &mut *self.inner().reader.get() }
    }

    /// Gives back to the ring every record whose [`Received`] dropped,
    /// and moves the cursor past a peeked one (given back, or held).
    #[inline(always)]
    pub(super) fn collect(&mut self) {
        if !matches!(self.cur, Cur::Free) {
            self.collect_cur();
        }
        if self.out != 0 {
            self.collect_held();
        }
    }

    /// The held part of [`collect`](Self::collect): every ticket out whose
    /// message dropped goes back.
    #[inline(never)]
    fn collect_held(&mut self) {
        let mut out = self.out;
        while out != 0 {
            let k = out.trailing_zeros() as usize;
            out &= out - 1;
            // SYNC R(drop): Acquire pairs with the Release store in
            // `Received::drop`: its reads of the record (and of this
            // Inner) happen before the ring may reuse the record.
            if self.inner().released[k].load(Ordering::Acquire) {
                self.inner().released[k].store(false, Ordering::Relaxed);
                self.out &= !(1 << k);
                // SAFETY: as in `reader`.
                let r = unsafe { &mut *self.inner().reader.get() };
                r.release_position(self.tickets[k]);
            }
        }
    }

    /// The current record: given back if its message dropped, else held
    /// (a peeked one: the cursor must leave it before the next look).
    /// Works on the record in place: the usual case (peeked, dropped)
    /// moves the cursor and marks it free, nothing more.
    #[inline(always)]
    fn collect_cur(&mut self) {
        // SYNC R(drop): as in `collect`.
        let dropped = self.inner().released[CUR].load(Ordering::Acquire);
        // SAFETY: as in `reader`.
        let r = unsafe { &mut *self.inner().reader.get() };
        let next = match &self.cur {
            Cur::Free => return,
            Cur::Peeked(p) if dropped => {
                // False only for an evicted reader (whose reads fail
                // from now on): nothing to give back then.
                r.advance_peeked(p);
                Cur::Free
            }
            // Never full here: a record is peeked only with room for one
            // more hold (see `next`). Were it refused, it stays peeked, and
            // `next` says so instead of reading it again.
            Cur::Peeked(p) => match r.hold_peeked(p) {
                Ok(h) => Cur::Held(h.position()),
                Err(_) => return,
            },
            Cur::Held(pos) if dropped => {
                r.release_position(*pos);
                Cur::Free
            }
            Cur::Held(_) => return,
        };
        if dropped {
            self.inner().released[CUR].store(false, Ordering::Relaxed);
        }
        self.cur = next;
    }

    /// Whether a message it handed out is still held (as of the last
    /// collect).
    fn held(&self) -> bool {
        self.out != 0 || !matches!(self.cur, Cur::Free)
    }

    /// The next message if one is there now: a plain record peeked when
    /// no current one is out (and a hold is free for it, should its
    /// message still be out at the next look), anything else held.
    #[inline(always)]
    fn next(&mut self) -> Result<Option<Received>> {
        self.collect();
        match self.cur {
            Cur::Free if self.out != u64::MAX => {
                // SAFETY: as in `reader`.
                let r = unsafe { &mut *self.inner().reader.get() };
                if let Some(p) = r.try_peek() {
                    return self.hand_out_peeked(p).map(Some);
                }
            }
            Cur::Peeked(_) => {
                return Err(RingError::TooLarge {
                    what: "records held at once by one reader",
                    got: MAX_HELD as u64 + 1,
                    limit: MAX_HELD as u64,
                }
                .into())
            }
            _ => {}
        }
        // SAFETY: as in `reader`.
        let r = unsafe { &mut *self.inner().reader.get() };
        match r.try_recv_held() {
            Ok(Some(h)) => self.hand_out(h).map(Some),
            Ok(None) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Hands out the record `p`, peeked just now, as the current one.
    #[inline(always)]
    fn hand_out_peeked(&mut self, p: Peeked) -> Result<Received> {
        let (ptr, len) = (p.as_ptr(), p.len());
        if len < HEAD {
            // SAFETY: as in `reader`.
            let r = unsafe { &mut *self.inner().reader.get() };
            r.advance_peeked(&p);
            return Err(Error::Malformed {
                what: "a broadcast message shorter than its header",
                len,
            });
        }
        // SAFETY: the cursor is on the record just peeked (the writer does
        // not reuse it); its bytes are `len >= HEAD` long.
        let b = unsafe { std::slice::from_raw_parts(ptr, 8) };
        let seq = b.try_into().map(u64::from_le_bytes).unwrap_or_default();
        self.cur = Cur::Peeked(p);
        Ok(Received {
            owner: Owner::Ring {
                inner: self.inner,
                slot: CUR,
            },
            // SAFETY: `len >= HEAD` (checked above): the message after the
            // header is inside the record.
            ptr: unsafe { ptr.add(HEAD) },
            len: len - HEAD,
            seq,
        })
    }

    /// Frees the Inner (the reader detaches), given no message is out:
    /// no Received refers to it any more (each one's last access was its
    /// flag's store, which `collect` saw). With messages out, hands the
    /// Core back.
    #[must_use = "a Core handed back still owns its reader"]
    pub(super) fn try_free(mut self) -> Option<Core> {
        self.collect();
        if self.held() {
            return Some(self);
        }
        // SAFETY: the pointer came from `Box::leak` in `new`; nothing else
        // refers to the Inner any more (no ticket out, and the receiver
        // gave up this Core), and `self` is consumed.
        drop(unsafe { Box::from_raw(self.inner.as_ptr()) });
        None
    }

    /// Hands out the record `held`, received just now (by `reader()`,
    /// which collected first: `out` is up to date).
    #[inline(always)]
    fn hand_out(&mut self, held: Held) -> Result<Received> {
        // SAFETY: as in `reader`.
        let r = unsafe { &mut *self.inner().reader.get() };
        let (ptr, len) = (held.as_ptr(), held.len());
        let seq = if len >= HEAD {
            // SAFETY: `held` was made by this reader just now and is held
            // (the writer does not reuse it); its bytes are `len` long.
            let b = unsafe { std::slice::from_raw_parts(ptr, 8) };
            b.try_into().ok().map(u64::from_le_bytes)
        } else {
            None
        };
        let Some(seq) = seq else {
            let _ = r.release_held(held);
            return Err(Error::Malformed {
                what: "a broadcast message shorter than its header",
                len,
            });
        };
        let k = (!self.out).trailing_zeros() as usize;
        if k >= MAX_HELD {
            // The ring refuses a hold past MAX_HELD first; kept for a
            // ring that would not.
            let _ = r.release_held(held);
            return Err(RingError::TooLarge {
                what: "records held at once by one reader",
                got: MAX_HELD as u64 + 1,
                limit: MAX_HELD as u64,
            }
            .into());
        }
        self.tickets[k] = held.position();
        self.out |= 1 << k;
        Ok(Received {
            owner: Owner::Ring {
                inner: self.inner,
                slot: k,
            },
            // SAFETY: `len >= HEAD` (checked above): the message after the
            // header is inside the record.
            ptr: unsafe { ptr.add(HEAD) },
            len: len - HEAD,
            seq,
        })
    }
}

/// How long a receive waits in one go before it looks again at the
/// writer's liveness.
const SLICE: Duration = Duration::from_millis(50);

/// While messages it handed out are still held, a receive waits first
/// this long, then twice as long each time up to [`SLICE`], and looks at
/// their flags in between: one dropped in another thread meanwhile goes
/// back to the ring soon, even when the writer is waiting for just that
/// room (which no wake-up would tell this receiver about: a drop is one
/// store, no system call).
const FIRST_SLICE: Duration = Duration::from_millis(1);

/// The slices of one receive's wait.
struct Slices(Duration);

impl Slices {
    fn new() -> Slices {
        Slices(FIRST_SLICE)
    }

    /// The next slice, for a receiver with messages out (`held`) or not.
    fn next(&mut self, held: bool) -> Duration {
        if !held {
            return SLICE;
        }
        let s = self.0;
        self.0 = (s * 2).min(SLICE);
        s
    }
}

/// A reading end of a broadcast, in any process: on the writer's host,
/// through its ring; elsewhere, through its network publisher.
pub struct BroadcastReceiver {
    src: Src,
    index: u32,
}

/// Where a receiver reads.
// The ring's reader (the hot path) stays inline; a remote one is small.
#[allow(clippy::large_enum_variant)]
enum Src {
    /// The ring, on the writer's host.
    Local(Local),
    /// The network publisher, from another host.
    Remote(super::remote::Remote),
}

/// A receiver of the ring.
struct Local {
    /// Taken only by `drop`.
    core: ManuallyDrop<Core>,
    recv_timeout: Option<Duration>,
    /// Awaited by `recv_async` (made on first use).
    ready: Option<crate::ready::Ready>,
}

impl std::fmt::Debug for BroadcastReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("BroadcastReceiver");
        d.field("index", &self.index);
        match &self.src {
            Src::Local(l) => d.field(
                "held",
                &(l.core.out.count_ones() + u32::from(!matches!(l.core.cur, Cur::Free))),
            ),
            Src::Remote(_) => d.field("remote", &true),
        };
        d.finish_non_exhaustive()
    }
}

impl BroadcastReceiver {
    /// Attaches to the broadcast `handle` names as reader `index`, with
    /// default options.
    pub fn attach(handle: &Handle, index: u32) -> Result<BroadcastReceiver> {
        BroadcastReceiver::attach_with(handle, index, &BroadcastOptions::new(1))
    }

    /// Attaches with `opts` (its receive timeout, peer and network
    /// options): through the network when the writer is on another host
    /// (see [`Handle::is_elsewhere`]) and takes remote readers, else
    /// through the ring (processes on hosts with other names may share
    /// its memory: containers sharing an IPC namespace).
    pub fn attach_with(
        handle: &Handle,
        index: u32,
        opts: &BroadcastOptions,
    ) -> Result<BroadcastReceiver> {
        if handle.is_elsewhere() && handle.remote().is_some() {
            return BroadcastReceiver::attach_remote(handle, index, opts);
        }
        BroadcastReceiver::attach_local(handle, index, opts)
    }

    /// Attaches through the ring, whatever host the handle names (its
    /// shared memory must be reachable from here).
    pub fn attach_local(
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
        // The writer's logs and its readiness name this reader by index.
        reader.set_tag(index);
        Ok(BroadcastReceiver {
            src: Src::Local(Local {
                core: ManuallyDrop::new(Core::new(reader)),
                recv_timeout: opts.recv_timeout,
                ready: None,
            }),
            index,
        })
    }

    /// Attaches as a remote reader (through the writer's network
    /// publisher), wherever this process runs: [`Error::BadHandle`] when
    /// the writer took no remote readers.
    pub fn attach_remote(
        handle: &Handle,
        index: u32,
        opts: &BroadcastOptions,
    ) -> Result<BroadcastReceiver> {
        Ok(BroadcastReceiver {
            src: Src::Remote(super::remote::Remote::connect(handle, index, opts)?),
            index,
        })
    }

    /// The index this reader attached with.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Whether it reads through the network.
    pub fn is_remote(&self) -> bool {
        matches!(self.src, Src::Remote(_))
    }

    /// The next message, waiting for it (up to the receive timeout).
    ///
    /// Held in place until the returned value drops; several can be held
    /// at once: up to [`MAX_HELD`] small ones, fewer when what is held
    /// fills the ring or more than 8 are large (then the writer waits for
    /// the oldest to drop). A dropped [`Received`] goes back to the ring
    /// at this receiver's next call (a receive, or
    /// [`release_dropped`](Self::release_dropped)); a receiver that waits
    /// for something else, long, while messages it handed out are dropped
    /// in other threads, calls `release_dropped` so the writer does not
    /// wait for them. A [`Received`] keeps this reader attached, even
    /// once the receiver is dropped. A dead writer ends the wait with
    /// [`WriterGone`](shoal_shm_ring::Error::WriterGone) once what it sent
    /// was received; a writer that closed (dropped its [`Broadcast`]),
    /// with the ring's `Closed`. A remote reader holds its messages in
    /// its own memory (what the network brought), as many as it likes;
    /// it learns of a closed writer the same way, of a dead or unreachable
    /// one as [`Error::Net`] (`PeerGone`, each time its subscriber fails to
    /// connect again), and of having been evicted as a stalled reader as
    /// `Net(Evicted)` (what was sent meanwhile is lost to it).
    ///
    /// [`Broadcast`]: super::Broadcast
    #[inline]
    pub fn recv(&mut self) -> Result<Received> {
        match &mut self.src {
            Src::Local(l) => l.recv(),
            Src::Remote(r) => r.recv(None),
        }
    }

    /// [`recv`](Self::recv), also ending its wait when `cancel` is
    /// cancelled ([`Error::Cancelled`]: nothing was received), within a
    /// few milliseconds.
    pub fn recv_cancellable(&mut self, cancel: &CancelToken) -> Result<Received> {
        match &mut self.src {
            Src::Local(l) => match l.look()? {
                Some(m) => Ok(m),
                None => l.recv_slow(Some(cancel)),
            },
            Src::Remote(r) => r.recv(Some(cancel)),
        }
    }

    /// The next message, awaited without blocking the thread (up to the
    /// receive timeout). Cancel-safe: dropped before it returned, nothing
    /// was received.
    pub async fn recv_async(&mut self) -> Result<Received> {
        match &mut self.src {
            Src::Local(l) => l.recv_async().await,
            Src::Remote(r) => r.recv_async().await,
        }
    }

    /// The next message if one is there now.
    #[inline]
    pub fn try_recv(&mut self) -> Result<Option<Received>> {
        match &mut self.src {
            Src::Local(l) => l.look(),
            Src::Remote(r) => r.try_recv(),
        }
    }

    /// Waits (up to `timeout`) until the writer counts this reader in:
    /// every message sent from then on reaches it. A reader on the
    /// writer's host is counted in at the writer's next send, or while the
    /// writer waits in [`wait_until_ready`](super::Broadcast::wait_until_ready);
    /// a remote reader is counted in once connected (when
    /// [`attach`](Self::attach) returned). [`Error::Timeout`] if the
    /// writer did not count it in time; a writer that died, as
    /// [`WriterGone`](shoal_shm_ring::Error::WriterGone).
    pub fn wait_until_active(&mut self, timeout: Duration) -> Result<()> {
        let Src::Local(l) = &mut self.src else {
            return Ok(());
        };
        let end = std::time::Instant::now() + timeout;
        let mut pause = Duration::from_micros(100);
        loop {
            let r = l.core.reader();
            if r.is_active() {
                return Ok(());
            }
            if !r.writer_alive() {
                return Err(RingError::WriterGone {
                    pid: r.writer_pid(),
                }
                .into());
            }
            let left = end.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout {
                    what: "the writer to count this reader in",
                    after: timeout,
                });
            }
            std::thread::sleep(pause.min(left));
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// Gives back to the ring, now, every message handed out and dropped
    /// since this receiver's last call (receives do it themselves;
    /// nothing to do for a remote reader).
    pub fn release_dropped(&mut self) {
        if let Src::Local(l) = &mut self.src {
            l.core.collect();
        }
    }
}

impl Local {
    /// One look: the next message if one is there now.
    #[inline]
    fn look(&mut self) -> Result<Option<Received>> {
        self.core.next()
    }

    /// After a wait found nothing: `Err(WriterGone)` if the writer died
    /// and everything it sent was received, else `Ok(None)`, or what it
    /// sent last.
    fn judge_writer(&mut self) -> Result<Option<Received>> {
        if self.core.reader().writer_alive() {
            return Ok(None);
        }
        // What the writer sent before it died is still delivered.
        if let Some(m) = self.look()? {
            return Ok(Some(m));
        }
        let pid = self.core.reader().writer_pid();
        Err(RingError::WriterGone { pid }.into())
    }

    /// See [`BroadcastReceiver::recv`].
    #[inline]
    fn recv(&mut self) -> Result<Received> {
        // The common case inline: a message is there.
        match self.core.next()? {
            Some(m) => Ok(m),
            None => self.recv_slow(None),
        }
    }

    /// `recv` once a look found nothing.
    #[inline(never)]
    fn recv_slow(&mut self, cancel: Option<&CancelToken>) -> Result<Received> {
        let timeout = self.recv_timeout;
        let end = timeout.and_then(|t| std::time::Instant::now().checked_add(t));
        let mut slices = Slices::new();
        loop {
            let left = end.map(|e| e.saturating_duration_since(std::time::Instant::now()));
            let next = slices.next(self.core.held());
            // At least one look, however short the timeout.
            let slice = left.map_or(next, |l| l.min(next));
            let mut wait = if slice.is_zero() {
                Wait::no_wait()
            } else {
                Wait::timeout(slice)
            };
            if let Some(c) = cancel {
                wait = wait.with_cancel(c);
            }
            // A record comes (or what ends the wait), then one look takes
            // it (the look may find a pad, or nothing yet: then wait again).
            let waited = self.core.reader().wait_for_record(wait);
            if waited.is_ok() {
                if let Some(m) = self.core.next()? {
                    return Ok(m);
                }
            }
            match waited {
                Ok(()) => {}
                Err(RingError::Timeout | RingError::WouldBlock) => {
                    // The writer's death is judged here too: a slice may
                    // end before the ring's own liveness check.
                    if let Some(m) = self.judge_writer()? {
                        return Ok(m);
                    }
                }
                Err(e) => return Err(ring_error(e, "a broadcast message", timeout)),
            }
            if left.is_some_and(|l| l <= slice) {
                return Err(Error::Timeout {
                    what: "a broadcast message",
                    after: timeout.unwrap_or_default(),
                });
            }
        }
    }

    /// See [`BroadcastReceiver::recv_async`].
    async fn recv_async(&mut self) -> Result<Received> {
        const WHAT: &str = "a broadcast message";
        let deadline = crate::ready::deadline(self.recv_timeout);
        let mut slices = Slices::new();
        loop {
            if let Some(m) = self.look()? {
                return Ok(m);
            }
            if self.ready.is_none() {
                let fd = self.core.reader().ready_fd()?;
                self.ready = Some(crate::ready::register(fd)?);
            }
            let Some(ready) = &self.ready else { continue };
            ready.get_ref().arm();
            // Re-checked after arming: a record that came in between is
            // not missed.
            if let Some(m) = self.look()? {
                return Ok(m);
            }
            let slice = crate::ready::slice(slices.next(self.core.held()), deadline, WHAT)?;
            let Some(ready) = &self.ready else { continue };
            if !crate::ready::wait(ready, slice, "awaiting the broadcast").await? {
                if let Some(m) = self.judge_writer()? {
                    return Ok(m);
                }
            }
        }
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        // SAFETY: `core` is taken here only, once, and not used after.
        let core = unsafe { ManuallyDrop::take(&mut self.core) };
        // With messages still out, the reaper owns the reader until they
        // drop (it gives their records back as they do).
        if let Some(core) = core.try_free() {
            orphans::adopt(core);
        }
    }
}

/// A message a reader received: in place in shared memory until dropped
/// (a remote reader's: in the buffer the network brought it in), with its
/// sequence number. Derefs to its bytes.
pub struct Received {
    owner: Owner,
    /// The message's bytes (after the header).
    ptr: *const u8,
    len: usize,
    seq: u64,
}

/// What keeps a [`Received`]'s bytes.
enum Owner {
    /// A ring record, held, or peeked (the reader's cursor stays on it):
    /// either way the writer does not reuse it until the owner saw this
    /// value's flag.
    Ring {
        /// The Inner of the Core that handed it out (alive until this
        /// value's drop stores its flag: see [`Core::try_free`]).
        inner: NonNull<Inner>,
        /// Its ticket's slot in the Core.
        slot: usize,
    },
    /// A network buffer, owned (its heap bytes do not move with it);
    /// boxed, so a Received stays a few words (every receive moves one).
    Net(#[allow(dead_code)] Box<shoal_transport::OwnedFrame>),
}

impl Received {
    /// A message a remote reader received: `frame` carries the message,
    /// its topic the sequence number.
    pub(super) fn remote(frame: shoal_transport::OwnedFrame) -> Result<Received> {
        let seq = frame
            .topic()
            .try_into()
            .ok()
            .map(u64::from_le_bytes)
            .ok_or(Error::Malformed {
                what: "a broadcast message whose topic is not its 8-byte sequence number",
                len: frame.topic().len(),
            })?;
        let (ptr, len) = (frame.as_ptr(), frame.len());
        Ok(Received {
            owner: Owner::Net(Box::new(frame)),
            ptr,
            len,
            seq,
        })
    }
}

// SAFETY: a Received's bytes are immutable while it lives: a ring
// record's because it is held or peeked (the writer does not reuse it
// until the owner sees this value's flag: a hold keeps the position the
// reader publishes at or below it, and so does the cursor staying on a
// peeked record) and its Inner (the mapping's owner) lives
// until then; a network frame's because this value owns it (an
// OwnedFrame is Send). Dropping touches nothing else but a ring slot's
// flag, an atomic, so any thread may read or drop it.
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
        // SAFETY: `ptr..ptr+len` are the message's bytes: in a held or
        // peeked ring record, in the mapping of the reader in `inner`,
        // which is not freed (nor the record given back or moved past, nor
        // an overflow record's
        // pinned mapping dropped) before this value's drop stores its
        // flag; or in the heap buffer of the frame this value owns (moving
        // the frame does not move them). What breaks this: a malicious
        // same-uid process writing the segment.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for Received {
    #[inline]
    fn drop(&mut self) {
        let Owner::Ring { inner, slot } = &self.owner else {
            return; // a network frame: dropped with this value
        };
        // SAFETY: the Inner lives until the owner sees this flag (see
        // `Core::try_free`); this store is this value's last access to it
        // (as in `Arc`'s drop, the owner may free it as soon as the store
        // is visible; nothing here touches it after).
        let inner = unsafe { inner.as_ref() };
        // SYNC W(drop): Release: the reads of the record happen before
        // the owner gives it back to the ring (its Acquire load).
        inner.released[*slot].store(true, Ordering::Release);
    }
}

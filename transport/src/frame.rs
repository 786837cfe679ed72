//! Received messages and typed zero-copy access to them.
//!
//! rkyv 0.8 finds an archive's root at the *end* of its bytes and checks
//! alignment against absolute addresses, so an archive must be handed over
//! at its exact length, starting 16-byte aligned ([`ARCHIVE_ALIGN`]).
//! Shared-memory payloads are (ring records are 64-byte aligned and carry
//! a 16-byte header); network bytes arrive at any address, so
//! [`Frame::from_bytes`] copies them into an [`AlignedBuf`] only when they
//! are misaligned. rkyv's `unaligned` feature is never enabled: it changes
//! the archive format for the whole dependency graph.

use crate::error::{Error, Result};
use rkyv::api::high::{HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::ser::writer::Buffer;
use rkyv::util::AlignedVec;
use std::ops::Deref;

/// The alignment an archive must start at.
pub const ARCHIVE_ALIGN: usize = 16;

/// An owned buffer whose bytes start [`ARCHIVE_ALIGN`]-aligned.
///
/// ```
/// use shoal_transport::AlignedBuf;
/// let b = AlignedBuf::copy_from(b"hello");
/// assert_eq!(&*b, b"hello");
/// assert_eq!(b.as_ptr() as usize % 16, 0);
/// ```
#[derive(Clone, Default)]
pub struct AlignedBuf(AlignedVec<ARCHIVE_ALIGN>);

impl AlignedBuf {
    /// An empty buffer that can take `n` bytes without reallocating.
    ///
    /// A large one (see [`recycle`](crate::recycle)) may be one dropped
    /// before, handed out empty.
    pub fn with_capacity(n: usize) -> Self {
        AlignedBuf(crate::recycle::aligned(n))
    }

    /// A copy of `bytes`.
    pub fn copy_from(bytes: &[u8]) -> Self {
        let mut b = AlignedBuf::with_capacity(bytes.len());
        b.0.extend_from_slice(bytes);
        b
    }

    /// Appends `bytes`.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }

    /// Bytes it can hold before it reallocates.
    pub fn capacity(&self) -> usize {
        self.0.capacity()
    }

    /// The bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        self.0.as_mut_slice()
    }

    /// Sets the length to `n` (at most the capacity), the new bytes zero.
    pub fn resize_zeroed(&mut self, n: usize) {
        self.0.resize(n, 0);
    }
}

impl Drop for AlignedBuf {
    /// A large buffer goes back to the pool for the next message of its
    /// size.
    fn drop(&mut self) {
        if self.0.capacity() >= crate::recycle::MIN_LEN {
            crate::recycle::give_aligned(std::mem::replace(&mut self.0, AlignedVec::new()));
        }
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.0.as_slice()
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len())
            .finish()
    }
}

/// A received network buffer that several frames may share: read-only
/// once received.
#[derive(Clone)]
pub(crate) struct SharedBytes(pub std::sync::Arc<dyn AsRef<[u8]> + Send + Sync>);

impl SharedBytes {
    fn bytes(&self) -> &[u8] {
        (*self.0).as_ref()
    }
}

impl std::fmt::Debug for SharedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedBytes({} bytes)", self.bytes().len())
    }
}

/// Where a frame's bytes live.
#[derive(Debug)]
enum Bytes<'a> {
    /// Borrowed, already [`ARCHIVE_ALIGN`]-aligned.
    Slice(&'a [u8]),
    /// Owned (a network buffer, or a copy of misaligned bytes).
    Owned(AlignedBuf, std::ops::Range<usize>),
    /// Part of a network buffer shared with the other frames that came in
    /// it (a batch). Ranges: topic, payload.
    #[cfg_attr(not(feature = "nng"), allow(dead_code))]
    Shared(SharedBytes, std::ops::Range<usize>, std::ops::Range<usize>),
    /// A record still in a shared-memory ring: released when the frame
    /// drops. The range is the payload (after the envelope), the topic
    /// range the topic.
    #[cfg(feature = "shm")]
    Ring(
        shoal_shm_ring::ReadGuard<'a>,
        std::ops::Range<usize>,
        std::ops::Range<usize>,
    ),
    /// A record taken from a shared-memory work queue (MPMC ring):
    /// released when the frame drops. Ranges as for `Ring`.
    #[cfg(feature = "shm")]
    Taken(
        shoal_shm_ring::TakeGuard<'a>,
        std::ops::Range<usize>,
        std::ops::Range<usize>,
    ),
}

/// A received message: it owns its bytes (or borrows them for `'a`, from a
/// ring guard or a caller's buffer), derefs to `[u8]`, and reads an rkyv
/// archive in place.
///
/// ```
/// use shoal_transport::{archive_into, AlignedBuf, Frame};
/// #[derive(rkyv::Archive, rkyv::Serialize)]
/// struct Order { id: u64, qty: u32 }
///
/// let mut buf = AlignedBuf::with_capacity(256);
/// buf.resize_zeroed(256);
/// let n = archive_into(&Order { id: 7, qty: 3 }, buf.as_mut_slice())?.in_place().unwrap();
/// let frame = Frame::from_bytes(&buf[..n]);
/// let order = frame.archived::<Order>()?;
/// assert_eq!((order.id.to_native(), order.qty.to_native()), (7, 3));
/// # Ok::<(), shoal_transport::Error>(())
/// ```
#[derive(Debug)]
pub struct Frame<'a> {
    bytes: Bytes<'a>,
    /// The topic, when the frame came in an envelope that had one.
    topic: Option<AlignedBuf>,
    /// Who sent it, when the wire says.
    peer: Option<PeerId>,
}

/// Who sent a message: the publisher, pusher or requester, as an id the
/// sending endpoint chose at random when it was made (stable for its life,
/// new after a restart). Lets a receiver account messages to their sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u64);

impl std::fmt::Display for PeerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl PeerId {
    /// A fresh id: process id, time and a process-wide counter, hashed
    /// with a randomly keyed hasher.
    pub fn random() -> PeerId {
        use std::hash::{BuildHasher, Hasher};
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.write_u64(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        // 0 is kept for "no sender id" on the wire.
        PeerId(h.finish().max(1))
    }
}

impl<'a> Frame<'a> {
    /// A frame over `bytes`, borrowed when they start
    /// [`ARCHIVE_ALIGN`]-aligned, copied into an [`AlignedBuf`] otherwise.
    pub fn from_bytes(bytes: &'a [u8]) -> Self {
        if (bytes.as_ptr() as usize).is_multiple_of(ARCHIVE_ALIGN) {
            Frame {
                bytes: Bytes::Slice(bytes),
                topic: None,
                peer: None,
            }
        } else {
            Frame::owned(AlignedBuf::copy_from(bytes))
        }
    }

    /// A frame over the payload `payload` of a ring record whose envelope
    /// put the topic at `topic`; the record is released when the frame
    /// drops. A payload that does not start [`ARCHIVE_ALIGN`]-aligned
    /// (a ring never makes one) is copied out and the record released.
    #[cfg(feature = "shm")]
    pub(crate) fn ring(
        guard: shoal_shm_ring::ReadGuard<'a>,
        topic: std::ops::Range<usize>,
        payload: std::ops::Range<usize>,
    ) -> Self {
        Self::in_place(guard, topic, payload, Bytes::Ring)
    }

    /// A frame over the payload of a record taken from a work queue; as
    /// [`ring`](Self::ring).
    #[cfg(feature = "shm")]
    pub(crate) fn taken(
        guard: shoal_shm_ring::TakeGuard<'a>,
        topic: std::ops::Range<usize>,
        payload: std::ops::Range<usize>,
    ) -> Self {
        Self::in_place(guard, topic, payload, Bytes::Taken)
    }

    /// [`ring`](Self::ring) and [`taken`](Self::taken): the guard kept
    /// (wrapped by `keep`) when the payload is aligned, else a copy.
    #[cfg(feature = "shm")]
    fn in_place<G: Deref<Target = [u8]>>(
        guard: G,
        topic: std::ops::Range<usize>,
        payload: std::ops::Range<usize>,
        keep: impl FnOnce(G, std::ops::Range<usize>, std::ops::Range<usize>) -> Bytes<'a>,
    ) -> Self {
        if (guard[payload.clone()].as_ptr() as usize).is_multiple_of(ARCHIVE_ALIGN) {
            Frame {
                bytes: keep(guard, topic, payload),
                topic: None,
                peer: None,
            }
        } else {
            let mut f = Frame::owned(AlignedBuf::copy_from(&guard[payload]));
            f.topic = Some(AlignedBuf::copy_from(&guard[topic]));
            f
        }
    }

    /// The frame, free of what it borrowed: a network buffer (owned or
    /// shared) moves as it is; bytes in a caller's buffer or a ring are
    /// copied out (the ring record is released). Topic and sender stay.
    ///
    /// ```
    /// use shoal_transport::Frame;
    /// let bytes = vec![1u8, 2, 3];
    /// let f: Frame<'static> = Frame::from_bytes(&bytes).into_static();
    /// drop(bytes);
    /// assert_eq!(&*f, &[1, 2, 3]);
    /// ```
    pub fn into_static(self) -> Frame<'static> {
        let Frame { bytes, topic, peer } = self;
        let (bytes, topic) = match bytes {
            Bytes::Owned(b, r) => (Bytes::Owned(b, r), topic),
            Bytes::Shared(b, t, p) => (Bytes::Shared(b, t, p), topic),
            Bytes::Slice(s) => {
                let n = s.len();
                (Bytes::Owned(AlignedBuf::copy_from(s), 0..n), topic)
            }
            #[cfg(feature = "shm")]
            Bytes::Ring(g, t, p) => {
                let n = p.len();
                let topic = (!t.is_empty()).then(|| AlignedBuf::copy_from(&g[t]));
                (Bytes::Owned(AlignedBuf::copy_from(&g[p]), 0..n), topic)
            }
            #[cfg(feature = "shm")]
            Bytes::Taken(g, t, p) => {
                let n = p.len();
                let topic = (!t.is_empty()).then(|| AlignedBuf::copy_from(&g[t]));
                (Bytes::Owned(AlignedBuf::copy_from(&g[p]), 0..n), topic)
            }
        };
        Frame { bytes, topic, peer }
    }

    /// [`into_static`](Self::into_static), as a value that can move to
    /// another thread (a frame in a ring cannot: its guard belongs to the
    /// reader's thread; this one never holds one).
    pub fn into_owned(self) -> OwnedFrame {
        OwnedFrame(self.into_static())
    }

    /// Whether the frame reads its bytes where they arrived (no copy was
    /// made): in a caller's buffer, a ring, or the network buffer they
    /// were received in.
    pub fn is_borrowed(&self) -> bool {
        match self.bytes {
            Bytes::Slice(_) | Bytes::Shared(..) => true,
            Bytes::Owned(..) => false,
            #[cfg(feature = "shm")]
            Bytes::Ring(..) | Bytes::Taken(..) => true,
        }
    }

    /// The topic the message was sent with (empty when none).
    pub fn topic(&self) -> &[u8] {
        match (&self.bytes, &self.topic) {
            #[cfg(feature = "shm")]
            (Bytes::Ring(g, t, _), _) => &g[t.clone()],
            (Bytes::Shared(b, t, _), _) => &b.bytes()[t.clone()],
            #[cfg(feature = "shm")]
            (Bytes::Taken(g, t, _), _) => &g[t.clone()],
            (_, Some(t)) => t,
            _ => &[],
        }
    }

    /// Sets the topic of a frame made from bytes that came with one.
    pub(crate) fn with_topic(mut self, topic: &[u8]) -> Self {
        if !topic.is_empty() {
            self.topic = Some(AlignedBuf::copy_from(topic));
        }
        self
    }

    /// Sets the sender (0 on the wire: unknown).
    pub(crate) fn with_peer(mut self, id: u64) -> Self {
        self.peer = (id != 0).then_some(PeerId(id));
        self
    }

    /// Who sent the message, when the wire says (see [`PeerId`]).
    pub fn peer(&self) -> Option<PeerId> {
        self.peer
    }

    /// The archived `T` in this frame, validated (bytecheck) first: safe on
    /// any bytes that do not change after the check, such as a network
    /// frame, whatever its sender put in it. A frame still in shared memory
    /// is validated the same way, but a *malicious* process of the same
    /// user that writes the segment after the check is outside what any
    /// check can cover (see shoal-shm-ring's "Guards stay put"). Costs a
    /// walk over the archive; see
    /// [`archived_unchecked`](Self::archived_unchecked) for trusted bytes.
    pub fn archived<T>(&self) -> Result<&T::Archived>
    where
        T: rkyv::Archive,
        T::Archived: for<'b> CheckBytes<HighValidator<'b, rancor::Error>>,
    {
        rkyv::access::<T::Archived, rancor::Error>(self).map_err(|e| Error::InvalidArchive {
            type_name: std::any::type_name::<T>(),
            reason: e.to_string(),
        })
    }

    /// The archived `T` in this frame, without validation.
    ///
    /// # Safety
    /// The bytes must be a valid archive of `T`, serialized by a build with
    /// the same rkyv format, and nobody may write them while the returned
    /// reference lives: for example a ring payload written by a trusted
    /// same-uid process. `T::Archived` must not need an alignment above
    /// [`ARCHIVE_ALIGN`] (the frame guarantees 16 bytes, no more). Anything
    /// else is undefined behaviour.
    pub unsafe fn archived_unchecked<T: rkyv::Archive>(&self) -> &T::Archived {
        // SAFETY: the caller guarantees the bytes are a valid archive of
        // `T` that nobody writes while the reference lives, and that
        // `T::Archived` needs at most ARCHIVE_ALIGN; every constructor of a
        // frame makes its bytes start ARCHIVE_ALIGN-aligned (copying them
        // when they are not), and an empty frame derefs to an aligned
        // empty slice.
        unsafe { rkyv::access_unchecked::<T::Archived>(self) }
    }
}

impl Frame<'static> {
    /// A frame owning `buf`.
    pub fn owned(buf: AlignedBuf) -> Self {
        let n = buf.len();
        Frame {
            bytes: Bytes::Owned(buf, 0..n),
            topic: None,
            peer: None,
        }
    }

    /// A frame owning the part `range` of `buf`, which must start
    /// [`ARCHIVE_ALIGN`]-aligned within it (a payload after a header);
    /// misaligned, it is copied once into a buffer of its own.
    pub fn owned_range(buf: AlignedBuf, range: std::ops::Range<usize>) -> Result<Self> {
        if range.start > range.end || range.end > buf.len() {
            return Err(Error::Corrupt {
                what: "frame range end",
                found: range.end as u64,
                expected: "a range inside the buffer",
            });
        }
        if range.start.is_multiple_of(ARCHIVE_ALIGN) {
            Ok(Frame {
                bytes: Bytes::Owned(buf, range),
                topic: None,
                peer: None,
            })
        } else {
            Ok(Frame::owned(AlignedBuf::copy_from(&buf[range])))
        }
    }
}

impl Frame<'static> {
    /// A frame over part of a shared network buffer: `topic` and
    /// `payload` are ranges of it, checked here (a peer chose them). The
    /// payload stays in place when it starts [`ARCHIVE_ALIGN`]-aligned in
    /// memory, and is copied once into a buffer of its own otherwise.
    #[cfg_attr(not(feature = "nng"), allow(dead_code))]
    pub(crate) fn shared(
        buf: SharedBytes,
        topic: std::ops::Range<usize>,
        payload: std::ops::Range<usize>,
    ) -> Result<Self> {
        let bytes = buf.bytes();
        let inside = |r: &std::ops::Range<usize>| r.start <= r.end && r.end <= bytes.len();
        if !inside(&topic) || !inside(&payload) {
            return Err(Error::Corrupt {
                what: "frame range end",
                found: payload.end.max(topic.end) as u64,
                expected: "a range inside the received buffer",
            });
        }
        if (bytes[payload.clone()].as_ptr() as usize).is_multiple_of(ARCHIVE_ALIGN) {
            Ok(Frame {
                bytes: Bytes::Shared(buf, topic, payload),
                topic: None,
                peer: None,
            })
        } else {
            let mut f = Frame::owned(AlignedBuf::copy_from(&bytes[payload]));
            f.topic = Some(AlignedBuf::copy_from(&bytes[topic]));
            Ok(f)
        }
    }
}

/// A frame that owns its bytes (or shares a network buffer), made by
/// [`Frame::into_owned`]; unlike a frame over a ring record, it can move
/// between threads. Derefs to the [`Frame`].
#[derive(Debug)]
pub struct OwnedFrame(Frame<'static>);

// SAFETY: `into_static` makes only `Bytes::Owned` (an AlignedBuf, plain
// heap bytes) or keeps `Bytes::Shared` (an `Arc<dyn AsRef<[u8]> + Send +
// Sync>`), both Send; the topic is an AlignedBuf and the peer a u64. The
// variants that are not Send (a ring's guard) are never in an OwnedFrame.
// What would break this: a new `Bytes` variant that `into_static` keeps.
unsafe impl Send for OwnedFrame {}
// SAFETY: as above, the variants an OwnedFrame holds are Sync too (plain
// heap bytes; an `Arc<dyn AsRef<[u8]> + Send + Sync>`), and `&OwnedFrame`
// only reads them.
unsafe impl Sync for OwnedFrame {}

impl OwnedFrame {
    /// The frame.
    pub fn into_inner(self) -> Frame<'static> {
        self.0
    }
}

impl Deref for OwnedFrame {
    type Target = Frame<'static>;
    fn deref(&self) -> &Frame<'static> {
        &self.0
    }
}

/// An empty slice whose address is [`ARCHIVE_ALIGN`]-aligned (an empty
/// buffer's dangling pointer need not be, and rkyv checks the address even
/// of an empty archive).
#[repr(align(16))]
struct AlignedEmpty([u8; 16]);
static EMPTY: AlignedEmpty = AlignedEmpty([0; 16]);

impl Deref for Frame<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        let b: &[u8] = match &self.bytes {
            Bytes::Slice(s) => s,
            Bytes::Owned(b, r) => &b[r.clone()],
            Bytes::Shared(b, _, r) => &b.bytes()[r.clone()],
            #[cfg(feature = "shm")]
            Bytes::Ring(g, _, r) => &g[r.clone()],
            #[cfg(feature = "shm")]
            Bytes::Taken(g, _, r) => &g[r.clone()],
        };
        if b.is_empty() {
            &EMPTY.0[..0]
        } else {
            b
        }
    }
}

/// What [`archive_into`] did.
#[derive(Debug)]
pub enum Archived {
    /// The archive is the first `n` bytes of the buffer given.
    InPlace(usize),
    /// It did not fit; here it is in a buffer of its own.
    Spilled(AlignedBuf),
}

impl Archived {
    /// The length of an archive made in place, `None` if it spilled.
    pub fn in_place(&self) -> Option<usize> {
        match self {
            Archived::InPlace(n) => Some(*n),
            Archived::Spilled(_) => None,
        }
    }
}

/// The rkyv format this build writes and reads, for payload-format tags
/// (rings) so that builds whose archives differ refuse each other by name
/// instead of misreading each other: rkyv's version, byte order, the
/// alignment of its primitives (1 with rkyv's `unaligned` feature) and its
/// pointer width, e.g. `rkyv0.8 le a4 p32`.
///
/// ```
/// let f = shoal_transport::frame::archive_format();
/// assert!(f.starts_with("rkyv0.8 "));
/// assert!(f.len() <= 20);
/// ```
pub fn archive_format() -> &'static str {
    static FORMAT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    FORMAT.get_or_init(|| {
        let one = rkyv::to_bytes::<rancor::Error>(&1u32).map(|b| b.first().copied());
        let order = match one {
            Ok(Some(1)) => "le",
            Ok(Some(_)) => "be",
            _ => "??",
        };
        format!(
            "rkyv0.8 {order} a{} p{}",
            std::mem::align_of::<rkyv::primitive::ArchivedU32>(),
            8 * std::mem::size_of::<rkyv::primitive::ArchivedUsize>()
        )
    })
}

/// Values [`archive_into`] can serialize: anything rkyv's high-level
/// serializer takes (`#[derive(rkyv::Archive, rkyv::Serialize)]`).
pub trait Archivable:
    for<'a, 'b> rkyv::Serialize<HighSerializer<Buffer<'b>, ArenaHandle<'a>, rancor::Error>>
    + for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>
{
}

impl<T> Archivable for T where
    T: for<'a, 'b> rkyv::Serialize<HighSerializer<Buffer<'b>, ArenaHandle<'a>, rancor::Error>>
        + for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>
{
}

/// Serializes `value` straight into `buf` (memory the transport owns, such
/// as a ring reservation), which must start [`ARCHIVE_ALIGN`]-aligned.
/// Returns [`Archived::InPlace`] with the archive's length, or, when it
/// does not fit, [`Archived::Spilled`] with the archive in a buffer of its
/// own (the caller sends that instead).
pub fn archive_into<T: Archivable>(value: &T, buf: &mut [u8]) -> Result<Archived> {
    if !(buf.as_ptr() as usize).is_multiple_of(ARCHIVE_ALIGN) {
        return Err(Error::Serialize {
            type_name: std::any::type_name::<T>(),
            reason: "the target buffer does not start 16-byte aligned".into(),
        });
    }
    if let Ok(w) = rkyv::api::high::to_bytes_in::<_, rancor::Error>(value, Buffer::from(buf)) {
        return Ok(Archived::InPlace(w.len()));
    }
    // Too small, or the value cannot be serialized at all: serializing
    // into a growable buffer tells which.
    match rkyv::to_bytes::<rancor::Error>(value) {
        Ok(v) => Ok(Archived::Spilled(AlignedBuf(v))),
        Err(e) => Err(Error::Serialize {
            type_name: std::any::type_name::<T>(),
            reason: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(rkyv::Archive, rkyv::Serialize, Debug, PartialEq)]
    struct Order {
        id: u64,
        qty: u32,
        tag: String,
        legs: Vec<u16>,
    }

    fn order() -> Order {
        Order {
            id: 42,
            qty: 7,
            tag: "limit".into(),
            legs: vec![1, 2, 3],
        }
    }

    fn zeroed(n: usize) -> AlignedBuf {
        let mut b = AlignedBuf::with_capacity(n);
        b.resize_zeroed(n);
        b
    }

    #[test]
    fn an_archive_made_in_place_reads_back_without_a_copy() {
        let mut buf = zeroed(512);
        let n = archive_into(&order(), buf.as_mut_slice())
            .unwrap()
            .in_place()
            .unwrap();
        let f = Frame::from_bytes(&buf[..n]);
        assert!(f.is_borrowed());
        let Ok(a) = f.archived::<Order>() else {
            panic!("invalid archive")
        };
        assert_eq!(
            (a.id.to_native(), a.qty.to_native(), a.tag.as_str()),
            (42, 7, "limit")
        );
        assert_eq!(
            a.legs.iter().map(|x| x.to_native()).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        // SAFETY: just serialized by this process, not written since.
        let u = unsafe { f.archived_unchecked::<Order>() };
        assert_eq!(u.id, 42);
    }

    #[test]
    fn too_small_a_buffer_spills_and_a_misaligned_one_is_refused() {
        let mut buf = zeroed(64);
        let big = Order {
            legs: vec![9; 100],
            ..order()
        };
        match archive_into(&big, &mut buf.as_mut_slice()[..16]).unwrap() {
            Archived::Spilled(b) => {
                let f = Frame::owned(b);
                assert_eq!(f.archived::<Order>().map(|a| a.legs.len()).ok(), Some(100))
            }
            Archived::InPlace(n) => panic!("{n} bytes in 16"),
        }
        let e = archive_into(&big, &mut buf.as_mut_slice()[1..]).unwrap_err();
        assert!(e.to_string().contains("aligned"), "{e}");
    }

    #[test]
    fn misaligned_network_bytes_are_copied_once_and_read() {
        let mut buf = zeroed(512);
        let n = archive_into(&order(), buf.as_mut_slice())
            .unwrap()
            .in_place()
            .unwrap();
        // The same archive at every offset mod 16 of a bigger buffer.
        for off in 0..16 {
            let mut net = zeroed(n + 32);
            net.as_mut_slice()[off..off + n].copy_from_slice(&buf[..n]);
            let f = Frame::from_bytes(&net[off..off + n]);
            assert_eq!(f.is_borrowed(), off == 0);
            let a = f.archived::<Order>().map(|a| a.id.to_native());
            assert_eq!(a.ok(), Some(42), "offset {off}");
            let g = Frame::owned_range(net.clone(), off..off + n).unwrap();
            let q = g.archived::<Order>().map(|a| a.qty.to_native());
            assert_eq!(q.ok(), Some(7), "offset {off}");
        }
        assert!(Frame::owned_range(zeroed(8), 4..16).is_err());
    }

    /// Found by the envelope_decoder fuzz target: an empty payload came
    /// back at an empty buffer's dangling (unaligned) address.
    #[test]
    fn empty_frames_are_aligned_too() {
        for f in [
            Frame::owned(AlignedBuf::default()),
            Frame::from_bytes(&[]),
            Frame::owned_range(AlignedBuf::default(), 0..0).unwrap(),
        ] {
            assert!(f.is_empty());
            assert!((f.as_ptr() as usize).is_multiple_of(ARCHIVE_ALIGN));
            assert!(f.archived::<()>().is_ok());
        }
    }

    #[test]
    fn corrupt_archives_are_errors_not_panics() {
        let mut buf = zeroed(512);
        let n = archive_into(&order(), buf.as_mut_slice())
            .unwrap()
            .in_place()
            .unwrap();
        let good = buf[..n].to_vec();
        // Every single-byte corruption: validated access never panics, and
        // whatever it accepts is still within the buffer.
        for i in 0..n {
            for v in [0u8, 0xff, 0x80] {
                let mut b = AlignedBuf::copy_from(&good);
                b.as_mut_slice()[i] = v;
                let f = Frame::owned(b);
                if let Ok(a) = f.archived::<Order>() {
                    let _ = (a.tag.len(), a.legs.len());
                }
            }
        }
        for len in 0..n {
            let f = Frame::owned(AlignedBuf::copy_from(&good[..len]));
            if let Ok(a) = f.archived::<Order>() {
                let _ = (a.tag.len(), a.legs.len());
            }
        }
        let f = Frame::owned(AlignedBuf::copy_from(&[0xffu8; 40]));
        match f.archived::<Order>() {
            Err(e) => assert!(e.to_string().contains("Order"), "{e}"),
            Ok(_) => panic!("0xff bytes validated as an Order"),
        }
    }
}

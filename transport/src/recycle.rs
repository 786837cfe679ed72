//! Large buffers kept for the next message of their size, instead of
//! being given back to the allocator and asked for again.
//!
//! A network message of a megabyte arrives into a buffer of its own (the
//! frame owns it), and leaves from one (the pusher's window holds it
//! until the queue has it). Allocated fresh each time, such a buffer comes
//! from the kernel as untouched pages (glibc serves it by `mmap`, or grows
//! the heap and trims it again once it is freed): a page fault and a page
//! cleared per 4 KiB, about a quarter of the CPU a 1 MiB message costs
//! over QUIC on loopback, and a cost the raw libraries' benchmarks (one
//! buffer read into again and again) do not pay. Buffers of at least
//! [`MIN_LEN`] bytes go back to a small per-process pool when dropped, and
//! a buffer asked for takes one from there that fits.
//!
//! The pool holds at most [`MAX_KEPT`] buffers and [`MAX_BYTES`] of
//! capacity in all (the oldest are freed to make room for a newer one); a
//! buffer is taken only for a request of at least half its capacity, so
//! a small message never holds a large buffer. Bytes a recycled buffer held
//! before are never seen: it is handed out empty (length 0).

use rkyv::util::AlignedVec;
use std::sync::Mutex;

/// Smallest capacity kept: below it, the allocator's own free lists do
/// as well.
pub const MIN_LEN: usize = 64 << 10;
/// Most buffers kept per kind.
pub const MAX_KEPT: usize = 16;
/// Most capacity kept per kind, in bytes.
pub const MAX_BYTES: usize = 32 << 20;

/// Buffers of one kind, newest last.
struct Pool<B> {
    kept: Mutex<Vec<B>>,
}

/// What the pool needs of a buffer.
trait Buffer {
    fn capacity(&self) -> usize;
    fn clear(&mut self);
}

impl Buffer for Vec<u8> {
    fn capacity(&self) -> usize {
        Vec::capacity(self)
    }
    fn clear(&mut self) {
        Vec::clear(self)
    }
}

impl<const A: usize> Buffer for AlignedVec<A> {
    fn capacity(&self) -> usize {
        AlignedVec::capacity(self)
    }
    fn clear(&mut self) {
        AlignedVec::clear(self)
    }
}

impl<B: Buffer> Pool<B> {
    const fn new() -> Self {
        Pool {
            kept: Mutex::new(Vec::new()),
        }
    }

    /// A kept buffer that can take `n` bytes and is at most twice that,
    /// emptied; `None` when none fits (or `n` is below [`MIN_LEN`]).
    fn take(&self, n: usize) -> Option<B> {
        if n < MIN_LEN {
            return None;
        }
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        // Newest first: its pages are the likeliest to be in cache.
        let i = kept
            .iter()
            .rposition(|b| b.capacity() >= n && b.capacity() <= n.saturating_mul(2))?;
        let mut b = kept.remove(i);
        b.clear();
        Some(b)
    }

    /// Keeps `b` if it is large enough and the pool has room; else it is
    /// freed.
    fn give(&self, b: B) {
        let cap = b.capacity();
        if !(MIN_LEN..=MAX_BYTES).contains(&cap) {
            return;
        }
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        // The oldest make room (so sizes no longer asked for do not keep
        // the pool full for ever); freed after the lock is released.
        let mut old = Vec::new();
        let mut held: usize = kept.iter().map(Buffer::capacity).sum();
        while !kept.is_empty() && (kept.len() >= MAX_KEPT || held + cap > MAX_BYTES) {
            let o = kept.remove(0);
            held -= o.capacity();
            old.push(o);
        }
        kept.push(b);
        drop(kept);
        drop(old);
    }
}

static ALIGNED: Pool<AlignedVec<{ crate::frame::ARCHIVE_ALIGN }>> = Pool::new();
// Used by the network backends' senders.
#[cfg_attr(not(any(feature = "nng", feature = "quic")), allow(dead_code))]
static PLAIN: Pool<Vec<u8>> = Pool::new();

/// An empty aligned buffer that can take `n` bytes: a kept one when one
/// fits, else a new one.
pub(crate) fn aligned(n: usize) -> AlignedVec<{ crate::frame::ARCHIVE_ALIGN }> {
    ALIGNED
        .take(n)
        .unwrap_or_else(|| AlignedVec::with_capacity(n))
}

/// Gives an aligned buffer back (kept if it is worth keeping).
pub(crate) fn give_aligned(b: AlignedVec<{ crate::frame::ARCHIVE_ALIGN }>) {
    ALIGNED.give(b)
}

/// A byte vector that goes back to the pool when dropped.
#[cfg_attr(not(any(feature = "nng", feature = "quic")), allow(dead_code))]
#[derive(Debug, Default)]
pub(crate) struct Recycled(Vec<u8>);

#[cfg_attr(not(any(feature = "nng", feature = "quic")), allow(dead_code))]
impl Recycled {
    /// An empty vector that can take `n` bytes: a kept one when one fits.
    pub fn with_capacity(n: usize) -> Recycled {
        Recycled(PLAIN.take(n).unwrap_or_else(|| Vec::with_capacity(n)))
    }
}

impl From<Vec<u8>> for Recycled {
    fn from(v: Vec<u8>) -> Self {
        Recycled(v)
    }
}

impl std::ops::Deref for Recycled {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl std::ops::DerefMut for Recycled {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl AsRef<[u8]> for Recycled {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Recycled {
    fn drop(&mut self) {
        PLAIN.give(std::mem::take(&mut self.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_buffers_are_not_kept() {
        let p: Pool<Vec<u8>> = Pool::new();
        p.give(Vec::with_capacity(MIN_LEN - 1));
        assert!(p.kept.lock().unwrap().is_empty());
        assert!(p.take(100).is_none());
    }

    #[test]
    fn a_kept_buffer_is_handed_out_empty_and_only_for_its_size() {
        let p: Pool<Vec<u8>> = Pool::new();
        let mut v = vec![7u8; 1 << 20];
        v.truncate(1 << 20);
        let ptr = v.as_ptr();
        p.give(v);
        // Far smaller: not this one.
        assert!(p.take(MIN_LEN).is_none());
        // Larger: not this one.
        assert!(p.take((1 << 20) + 1).is_none());
        let b = p.take(1 << 20).unwrap();
        assert_eq!(b.as_ptr(), ptr);
        assert!(b.is_empty());
        assert!(p.take(1 << 20).is_none());
    }

    #[test]
    fn the_pool_is_bounded_and_keeps_the_newest() {
        let p: Pool<Vec<u8>> = Pool::new();
        for _ in 0..MAX_KEPT + 4 {
            p.give(Vec::with_capacity(MIN_LEN));
        }
        assert_eq!(p.kept.lock().unwrap().len(), MAX_KEPT);
        let held = |p: &Pool<Vec<u8>>| -> usize {
            p.kept.lock().unwrap().iter().map(|b| b.capacity()).sum()
        };
        let p: Pool<Vec<u8>> = Pool::new();
        for _ in 0..4 {
            p.give(Vec::with_capacity(MAX_BYTES / 2));
        }
        assert!(held(&p) <= MAX_BYTES);
        // Larger than the pool may hold: not kept, nothing evicted.
        let before = held(&p);
        p.give(Vec::with_capacity(MAX_BYTES + 1));
        assert_eq!(held(&p), before);
        // A full pool of one size makes room for another.
        let p: Pool<Vec<u8>> = Pool::new();
        for _ in 0..MAX_KEPT {
            p.give(Vec::with_capacity(2 << 20));
        }
        p.give(Vec::with_capacity(1 << 20));
        assert!(p.take(1 << 20).is_some());
        assert!(held(&p) <= MAX_BYTES && p.kept.lock().unwrap().len() <= MAX_KEPT);
    }

    #[test]
    fn recycled_vectors_are_handed_out_empty() {
        // The process's own pool (other tests may share it): whichever
        // buffer comes, it is empty and large enough.
        let n = 3 << 20;
        let mut a = Recycled::with_capacity(n);
        a.extend_from_slice(&[9u8; 4096]);
        drop(a);
        let b = Recycled::with_capacity(n);
        assert!(b.is_empty() && b.capacity() >= n);
    }
}

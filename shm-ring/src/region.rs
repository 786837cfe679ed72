//! A plain shared region: a zero-filled area of shared memory with a
//! validated header, like a ring's segment but without a ring in it, for
//! layers above that lay out their own shared state (collectives' barriers,
//! locks, arrays, task tables).
//!
//! It keeps the segments' guarantees: created unnamed and linked once
//! complete, attached only after validation (owner, mode, size, kind),
//! unlinked by its creator on drop, and found by [`cleanup_stale`] once no
//! process holds a lease on it. Participants prove they live with
//! *leases* ([`hold`](SharedRegion::hold)): kernel locks that die with
//! their process, whatever kills it, seen across pid namespaces.
//!
//! What the region holds is the caller's: every byte of it can be written
//! by any process of the same user that maps it, so nothing read from it
//! may be trusted beyond what the caller checks.
//!
//! [`cleanup_stale`]: crate::cleanup_stale

use crate::error::{Error, Result};
use crate::layout::{SegmentKind, FORMAT_TAG_LEN, HEADER_PAGE};
use crate::name::SegmentName;
use crate::segment::{Segment, SegmentSpec};

/// Most participant leases a region has (lease bytes `1..=MAX_LEASES`).
pub const MAX_LEASES: u32 = 1 << 20;

/// A mapped shared region: a zero-filled area of shared memory with a
/// validated header, created unnamed and linked once complete, unlinked
/// by its creator, with participant leases (kernel locks that die with
/// their process) as proof of life. Every byte of it can be written by
/// any process of the same user that maps it: nothing read from it may be
/// trusted beyond what the caller checks.
///
/// ```
/// use shoal_shm_ring::SharedRegion;
/// let r = SharedRegion::create(100, "doc")?;
/// assert!(r.len() >= 100);
/// let peer = SharedRegion::attach(r.name())?;
/// // SAFETY: both map at least 100 bytes; nothing else uses them here.
/// unsafe {
///     r.as_ptr().write(7);
///     assert_eq!(peer.as_ptr().read(), 7);
/// }
/// assert!(r.hold(3)?);
/// assert!(peer.held(3));
/// # Ok::<(), shoal_shm_ring::Error>(())
/// ```
#[derive(Debug)]
pub struct SharedRegion {
    seg: Segment,
}

impl SharedRegion {
    /// Creates a region of at least `len` bytes (rounded up to whole
    /// pages), zero-filled, with a fresh name starting with `tag`. Its
    /// memory is reserved now: a full `/dev/shm` fails here, not later.
    pub fn create(len: u64, tag: &str) -> Result<SharedRegion> {
        let cap = len
            .max(1)
            .checked_add(HEADER_PAGE as u64 - 1)
            .ok_or(Error::TooLarge {
                what: "shared region",
                got: len,
                limit: isize::MAX as u64,
            })?
            & !(HEADER_PAGE as u64 - 1);
        let spec = SegmentSpec {
            kind: SegmentKind::Region,
            control_size: 0,
            data_capacity: cap,
            slots: 0,
            producer_slots: 0,
            payload_len: len,
            payload_format: [0; FORMAT_TAG_LEN],
        };
        Ok(SharedRegion {
            seg: Segment::create(&spec, tag)?,
        })
    }

    /// Attaches to the region `name`, validated first.
    pub fn attach(name: &SegmentName) -> Result<SharedRegion> {
        Ok(SharedRegion {
            seg: Segment::attach(name, SegmentKind::Region)?,
        })
    }

    /// Its name (give it to the processes that attach).
    pub fn name(&self) -> &SegmentName {
        self.seg.name()
    }

    /// Bytes usable from [`as_ptr`](Self::as_ptr) on (the length asked
    /// for at creation, rounded up to whole pages).
    pub fn len(&self) -> usize {
        self.seg.data_area().1 as usize
    }

    /// Never true (a region has at least one page); for symmetry with
    /// [`len`](Self::len).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The start of the usable bytes: page aligned, valid for
    /// [`len`](Self::len) bytes while this value lives, shared with every
    /// process that maps the region (so any of them may write them at any
    /// time: use atomics or synchronise).
    pub fn as_ptr(&self) -> *mut u8 {
        self.seg.data_area().0
    }

    /// Whether this value created the region (and unlinks it when dropped).
    pub fn is_owner(&self) -> bool {
        self.seg.is_owner()
    }

    /// Whether the creator still holds its lease (lives).
    pub fn creator_alive(&self) -> bool {
        self.seg.creator_alive()
    }

    /// Takes participant lease `slot` (below [`MAX_LEASES`]) through this
    /// value's own open file description: held until given up or until
    /// this value drops (or its process dies). `Ok(false)` if another
    /// holds it.
    pub fn hold(&self, slot: u32) -> Result<bool> {
        check_slot(slot)?;
        crate::lease::try_take(self.seg.fd(), 1 + u64::from(slot))
    }

    /// Gives up participant lease `slot` if this value holds it.
    pub fn give_up(&self, slot: u32) {
        if slot < MAX_LEASES {
            crate::lease::give_up(self.seg.fd(), 1 + u64::from(slot));
        }
    }

    /// Whether another open file description (another process, or
    /// another attach) holds participant lease `slot`. In doubt (the
    /// kernel cannot say), held.
    pub fn held(&self, slot: u32) -> bool {
        slot >= MAX_LEASES || crate::lease::held_by_other(self.seg.fd(), 1 + u64::from(slot), 1)
    }
}

fn check_slot(slot: u32) -> Result<()> {
    if slot >= MAX_LEASES {
        return Err(Error::TooLarge {
            what: "lease slot",
            got: u64::from(slot),
            limit: u64::from(MAX_LEASES) - 1,
        });
    }
    Ok(())
}

/// Sleeps while `*word == expected`, for at most `timeout` (`None`: no
/// limit), on a futex shared between processes (the word may live in a
/// [`SharedRegion`], mapped at different addresses). Returns false if the
/// time ran out; true when woken, when the word differed, or when
/// interrupted: re-check the word either way.
#[allow(clippy::disallowed_types)] // the caller's word is a std atomic
pub fn futex_wait(
    word: &std::sync::atomic::AtomicU32,
    expected: u32,
    timeout: Option<std::time::Duration>,
) -> bool {
    crate::futex::wait(ours(word), expected, timeout) == crate::futex::WaitResult::Woken
}

/// The crate's atomic over the caller's std one.
#[allow(clippy::disallowed_types)]
fn ours(word: &std::sync::atomic::AtomicU32) -> &crate::sync::AtomicU32 {
    // SAFETY: `crate::sync::AtomicU32` is `repr(transparent)` over
    // `std::sync::atomic::AtomicU32` outside loom (this module is not
    // built under loom), so both have one layout and the reference stays
    // valid for the same lifetime.
    unsafe { &*(word as *const std::sync::atomic::AtomicU32 as *const crate::sync::AtomicU32) }
}

/// Wakes up to `n` waiters of [`futex_wait`] on `word` (in any process);
/// returns how many woke.
#[allow(clippy::disallowed_types)] // the caller's word is a std atomic
pub fn futex_wake(word: &std::sync::atomic::AtomicU32, n: u32) -> u32 {
    crate::futex::wake(ours(word), n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_shared_validated_and_leased() {
        let r = SharedRegion::create(5000, "t").unwrap();
        assert_eq!(r.len(), 8192);
        assert!(r.is_owner());
        let p = SharedRegion::attach(r.name()).unwrap();
        assert!(!p.is_owner() && p.creator_alive());
        // SAFETY: both map 8192 bytes of the same file.
        unsafe {
            p.as_ptr().add(8191).write(9);
            assert_eq!(r.as_ptr().add(8191).read(), 9);
            assert_eq!(r.as_ptr().read(), 0);
        }
        assert!(!r.held(1));
        assert!(p.hold(1).unwrap());
        assert!(!r.hold(1).unwrap());
        assert!(r.held(1));
        p.give_up(1);
        assert!(!r.held(1));
        assert!(p.hold(MAX_LEASES).is_err());
        // Another kind's attach refuses it, and it refuses a ring.
        assert!(Segment::attach(r.name(), SegmentKind::Broadcast).is_err());
        let name = *r.name();
        drop((r, p));
        assert!(SharedRegion::attach(&name).is_err());
    }

    #[test]
    #[allow(clippy::disallowed_types)]
    fn futexes_wake_across_mappings() {
        let r = SharedRegion::create(64, "f").unwrap();
        let p = SharedRegion::attach(r.name()).unwrap();
        // SAFETY: the region is page aligned and at least 4 bytes; an
        // AtomicU32 over shared memory is what futexes are for.
        let (a, b) = unsafe {
            (
                &*(r.as_ptr() as *const std::sync::atomic::AtomicU32),
                &*(p.as_ptr() as *const std::sync::atomic::AtomicU32),
            )
        };
        assert!(!futex_wait(
            a,
            0,
            Some(std::time::Duration::from_millis(20))
        ));
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(std::time::Duration::from_millis(50));
                b.store(1, std::sync::atomic::Ordering::Release);
                futex_wake(b, 1);
            });
            while a.load(std::sync::atomic::Ordering::Acquire) == 0 {
                futex_wait(a, 0, Some(std::time::Duration::from_secs(5)));
            }
        });
    }
}

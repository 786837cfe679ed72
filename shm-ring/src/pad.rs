//! Padding hot words onto their own pair of cache lines.

use std::ops::Deref;

/// Aligns and pads `T` to 128 bytes.
///
/// x86-64 and aarch64 prefetch cache lines in adjacent pairs, so two hot
/// words 64 bytes apart still false-share; 128 bytes keeps them apart (the
/// same choice as crossbeam's `CachePadded` on those targets).
///
/// ```
/// use shoal_shm_ring::CachePadded;
/// let word = CachePadded::new(7u64);
/// assert_eq!(*word, 7);
/// assert_eq!(std::mem::align_of::<CachePadded<u64>>(), 128);
/// ```
#[derive(Debug, Default)]
#[repr(C, align(128))]
pub struct CachePadded<T> {
    value: T,
}

impl<T> CachePadded<T> {
    /// Wraps `value` on its own 128-byte line pair.
    pub const fn new(value: T) -> Self {
        Self { value }
    }
}

impl<T> Deref for CachePadded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

/// The padding unit, in bytes.
pub const CACHE_PAD: usize = 128;

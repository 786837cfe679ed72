//! Anonymous shared mappings (inherited across `fork`) and a clock that
//! agrees across processes.

use std::ptr::NonNull;

/// A `MAP_SHARED | MAP_ANONYMOUS` region, page aligned, zero filled. A child
/// forked after creating it shares it with the parent.
pub struct SharedMap {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the region is plain memory; users coordinate through atomics.
unsafe impl Send for SharedMap {}
// SAFETY: as above.
unsafe impl Sync for SharedMap {}

impl SharedMap {
    /// Maps `len` bytes.
    pub fn new(len: usize) -> std::io::Result<Self> {
        // SAFETY: a fresh anonymous mapping; the kernel picks the address.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(SharedMap {
            ptr: NonNull::new(p.cast()).ok_or_else(std::io::Error::last_os_error)?,
            len,
        })
    }

    /// Start of the region.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A reference to a `T` at byte offset `off` (a zeroed `T` must be valid,
    /// as for atomics; `off` must be aligned for `T` and in bounds).
    pub fn at<T>(&self, off: usize) -> &T {
        assert!(off + std::mem::size_of::<T>() <= self.len);
        assert_eq!(off % std::mem::align_of::<T>(), 0);
        // SAFETY: in bounds and aligned (checked); the mapping lives as long
        // as `self`; callers only place types valid when zeroed here.
        unsafe { &*(self.ptr.as_ptr().add(off) as *const T) }
    }
}

impl Drop for SharedMap {
    fn drop(&mut self) {
        // SAFETY: our own mapping, no longer used.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the same clock in every process.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

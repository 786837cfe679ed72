//! What shoal's cells occupy and do, in one place, so the floors measured
//! against them do the same work: the same record size for a payload, the
//! same ring size, the same way of writing and reading every payload byte,
//! and the same sequence of record sizes for the overflow stream.
//!
//! The record layout mirrors `shm-ring`'s (`layout::RECORD_HEADER`,
//! `layout::RECORD_ALIGN`, private to that crate): a 16-byte header before
//! the payload, the whole record padded to 64 bytes.

/// Bytes of shoal's record header (the commit word and the length).
pub const RECORD_HEADER: usize = 16;
/// Shoal's records start on, and are padded to, this many bytes.
pub const RECORD_ALIGN: usize = 64;

/// Bytes a shoal record with a `payload`-byte payload occupies in its ring.
pub fn record_size(payload: usize) -> usize {
    (RECORD_HEADER + payload).div_ceil(RECORD_ALIGN) * RECORD_ALIGN
}

/// The ring the `shoal broadcast` cell creates for `payload`-byte records
/// (unless told otherwise): large enough to keep the record inline (a
/// quarter of the ring), at least 256 KiB, a power of two.
pub fn broadcast_cap(payload: usize) -> u64 {
    ((payload as u64 + 64) * 4 + 128)
        .next_power_of_two()
        .max(1 << 18)
}

/// The largest payload shoal keeps inline in a ring of `cap` bytes (larger
/// ones go through overflow segments).
pub fn max_inline(cap: u64) -> u64 {
    cap / 4 - RECORD_HEADER as u64
}

/// How a writer of every cell writes a payload: every byte, with `v`.
/// Never inlined (nor is [`sum`]): the same machine code in every cell, and
/// in every build, whatever its callers inline (one `#[inline]` added to
/// shoal's `reserve_with` once moved the 1 MiB stream cell by 15 % through
/// code placement alone).
#[inline(never)]
pub fn fill(buf: &mut [u8], v: u8) {
    buf.fill(v);
}

/// How a reader of every cell reads a payload: every byte, summed as
/// little-endian 64-bit words (then the tail byte by byte).
#[inline(never)]
pub fn sum(buf: &[u8]) -> u64 {
    let mut c = buf.chunks_exact(8);
    let mut s = 0u64;
    for w in &mut c {
        s = s.wrapping_add(u64::from_le_bytes(w.try_into().unwrap_or([0; 8])));
    }
    for &b in c.remainder() {
        s = s.wrapping_add(u64::from(b));
    }
    s
}

/// The record sizes of the overflow stream cell: deterministic
/// pseudo-random (xorshift64*, fixed seed) in `[min, max)`, the same
/// sequence in every process and every run.
#[derive(Debug, Clone)]
pub struct Sizes {
    state: u64,
    min: u64,
    span: u64,
}

impl Sizes {
    /// Sizes in `[min, max)` (`min` alone when `max <= min`).
    pub fn new(min: usize, max: usize) -> Self {
        Sizes {
            state: 0x9E37_79B9_7F4A_7C15,
            min: min as u64,
            span: (max as u64).saturating_sub(min as u64),
        }
    }
}

impl Iterator for Sizes {
    type Item = usize;
    fn next(&mut self) -> Option<usize> {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
        Some((self.min + if self.span == 0 { 0 } else { r % self.span }) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_sizes_match_shoal_layout() {
        assert_eq!(record_size(0), 64);
        assert_eq!(record_size(48), 64);
        assert_eq!(record_size(49), 128);
        assert_eq!(record_size(64), 128);
        assert_eq!(record_size(1 << 20), (1 << 20) + 64);
    }

    #[test]
    fn broadcast_rings_match_the_cells() {
        assert_eq!(broadcast_cap(64), 1 << 18);
        assert_eq!(broadcast_cap(1 << 20), 8 << 20);
        assert!(max_inline(broadcast_cap(1 << 20)) >= 1 << 20);
        assert_eq!(max_inline(2 << 20), (512 << 10) - 16);
    }

    #[test]
    fn sums_every_byte() {
        let b: Vec<u8> = (0..19).collect();
        let words = u64::from_le_bytes(b[..8].try_into().unwrap())
            .wrapping_add(u64::from_le_bytes(b[8..16].try_into().unwrap()));
        assert_eq!(sum(&b), words + 16 + 17 + 18);
    }

    #[test]
    fn sizes_are_deterministic_and_in_range() {
        let a: Vec<usize> = Sizes::new(1 << 20, 2 << 20).take(1000).collect();
        let b: Vec<usize> = Sizes::new(1 << 20, 2 << 20).take(1000).collect();
        assert_eq!(a, b);
        assert!(a.iter().all(|&s| (1 << 20..2 << 20).contains(&s)));
        let mean = a.iter().sum::<usize>() as f64 / a.len() as f64;
        assert!((mean / (1.5 * (1 << 20) as f64) - 1.0).abs() < 0.05);
        assert_eq!(Sizes::new(64, 64).next(), Some(64));
    }
}

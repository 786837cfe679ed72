//! Fuzzes `shoal_shm_ring::segment::validate_bytes`, the check every attach
//! runs on a segment header it copied out of a file it does not trust.
//!
//! The first input byte picks a mode:
//! - 0: raw header bytes, file size from the next 8 bytes;
//! - 1: raw header bytes, file size equal to their own `total_size` field
//!   (so the size checks pass and the deeper ones are reached);
//! - 2: a valid broadcast header XORed with the input, file size from the
//!   result's `total_size` field;
//! - 3: as 2, but the file size is off by a small input-chosen amount.
//!
//! `validate_bytes` must never panic, any header it accepts must be
//! self-consistent with the file size, and any error it gives must print
//! (without the segment's name, which `validate_bytes` is not told).

#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_shm_ring::segment::validate_bytes;
use shoal_shm_ring::{Error, HeaderCopy, ABI_FINGERPRINT, LAYOUT_VERSION};
use std::sync::OnceLock;

/// `size_of::<SegmentHeader>()`.
const HEADER_LEN: usize = 136;
/// Offset of `total_size` in the header.
const TOTAL_SIZE_AT: usize = 32;
const PAGE: u64 = 4096;

/// A valid header of a 64 KiB broadcast ring with 4 readers, made by us.
fn template() -> &'static [u8; HEADER_LEN] {
    static T: OnceLock<[u8; HEADER_LEN]> = OnceLock::new();
    T.get_or_init(|| {
        use std::os::unix::fs::MetadataExt;
        // Our effective uid, without libc: /proc/self belongs to it.
        let uid = std::fs::metadata("/proc/self")
            .map(|m| m.uid())
            .unwrap_or(0);
        let mut h = [0u8; HEADER_LEN];
        let mut put = |at: usize, v: &[u8]| h[at..at + v.len()].copy_from_slice(v);
        put(0, b"SHOALSEG");
        put(8, &LAYOUT_VERSION.to_le_bytes());
        put(12, &0x5245_4459u32.to_le_bytes()); // state: ready
        put(16, &ABI_FINGERPRINT.to_le_bytes());
        put(24, &1u32.to_le_bytes()); // kind: broadcast
        put(32, &(2 * PAGE + 65536).to_le_bytes()); // total_size
        put(40, &PAGE.to_le_bytes()); // control_offset
        put(48, &PAGE.to_le_bytes()); // control_size
        put(56, &(2 * PAGE).to_le_bytes()); // data_offset
        put(64, &65536u64.to_le_bytes()); // data_capacity
        put(72, &4u32.to_le_bytes()); // slots
        put(80, &uid.to_le_bytes()); // creator_uid
        put(84, &1u32.to_le_bytes()); // creator_pid
        h
    })
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let tail = b.get(at..).unwrap_or_default();
    let n = tail.len().min(8);
    let mut w = [0u8; 8];
    w[..n].copy_from_slice(&tail[..n]);
    u64::from_le_bytes(w)
}

/// What every accepted header must satisfy.
fn check(h: &HeaderCopy, size: u64) {
    assert_eq!(h.magic, u64::from_le_bytes(*b"SHOALSEG"));
    assert_eq!(h.layout_version, LAYOUT_VERSION);
    assert_eq!(h.abi_fingerprint, ABI_FINGERPRINT);
    assert_eq!(h.state, 0x5245_4459); // ready
    assert_eq!(h.flags, 0);
    assert_eq!(h.total_size, size);
    assert_eq!(h.control_offset, PAGE);
    assert_eq!(
        Some(h.data_offset),
        h.control_offset.checked_add(h.control_size)
    );
    assert_eq!(h.data_offset % PAGE, 0);
    assert_eq!(h.data_offset.checked_add(h.data_capacity), Some(size));
    assert!((1..=3).contains(&h.kind));
    assert_ne!(h.creator_pid, 0);
    if h.kind == 3 {
        assert!(h.payload_len <= h.data_capacity);
    } else {
        assert!(h.data_capacity.is_power_of_two());
        assert!((1..=1024).contains(&h.slots));
        assert_eq!(h.payload_len, 0);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (bytes, size): (Vec<u8>, u64) = match mode % 4 {
        0 => {
            let size = u64_at(rest, 0);
            (rest.get(8..).unwrap_or_default().to_vec(), size)
        }
        1 => (rest.to_vec(), u64_at(rest, TOTAL_SIZE_AT)),
        m => {
            let mut b = template().to_vec();
            for (x, y) in b.iter_mut().zip(rest) {
                *x ^= y;
            }
            // Input past the header extends it (validate_bytes ignores it).
            b.extend_from_slice(rest.get(HEADER_LEN..).unwrap_or_default());
            let total = u64_at(&b, TOTAL_SIZE_AT);
            let delta = u64::from(rest.last().copied().unwrap_or(0) % 5);
            let size = if m == 2 {
                total
            } else {
                total.wrapping_add(delta).wrapping_sub(2)
            };
            (b, size)
        }
    };
    match validate_bytes(&bytes, size) {
        Ok(h) => check(&h, size),
        Err(e) => {
            if let Error::Corrupt { segment, what, .. } = &e {
                assert!(segment.0.is_none(), "validate_bytes named a segment");
                assert!(!what.is_empty());
            }
            assert!(!e.to_string().is_empty());
        }
    }
});

//! Several values in one message: how a host's ranks' values travel
//! together in a gather (one message per host, not per rank), and how a
//! whole all_gather answer reaches a host's other ranks.
//!
//! Format: the number of values (u32, little-endian), then each value as
//! its length (u64, little-endian) and its bytes. The bytes come from
//! peers (the rendezvous, or a region any process of the user can
//! write), so [`unpack`] checks every length against what is left.

use crate::error::{Error, Result};

/// What a host sends instead of its values when they failed there (a
/// count no bundle has: [`unpack`] refuses it).
pub(crate) const FAILED: &[u8] = &[0xff; 4];

/// `values` in one message.
pub(crate) fn pack<B: AsRef<[u8]>>(values: &[B]) -> Vec<u8> {
    let len = 4 + values.iter().map(|v| 8 + v.as_ref().len()).sum::<usize>();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&(values.len() as u32).to_le_bytes());
    for v in values {
        let v = v.as_ref();
        out.extend_from_slice(&(v.len() as u64).to_le_bytes());
        out.extend_from_slice(v);
    }
    out
}

/// The values of a message [`pack`] made, which must hold `expected`
/// of them (`what` names the message in the error).
pub(crate) fn unpack<'a>(
    bytes: &'a [u8],
    expected: usize,
    what: &'static str,
) -> Result<Vec<&'a [u8]>> {
    let bad = |why: String| Error::Malformed { what, why };
    let (count, mut rest) = bytes
        .split_first_chunk::<4>()
        .ok_or_else(|| bad(format!("{} bytes, not even a count", bytes.len())))?;
    let count = u32::from_le_bytes(*count) as usize;
    if count != expected {
        return Err(bad(format!("{count} values where {expected} were sent")));
    }
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let (len, after) = rest
            .split_first_chunk::<8>()
            .ok_or_else(|| bad(format!("value {i} has no length")))?;
        let len = u64::from_le_bytes(*len);
        if len > after.len() as u64 {
            return Err(bad(format!(
                "value {i} says {len} bytes, {} are left",
                after.len()
            )));
        }
        let (v, after) = after.split_at(len as usize);
        out.push(v);
        rest = after;
    }
    if !rest.is_empty() {
        return Err(bad(format!("{} bytes after the last value", rest.len())));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn values_come_back_as_packed() {
        let vals: Vec<Vec<u8>> = vec![vec![], vec![1], vec![2; 300]];
        let b = pack(&vals);
        let got = unpack(&b, 3, "test").unwrap();
        assert_eq!(got, vals.iter().map(|v| &v[..]).collect::<Vec<_>>());
        assert!(unpack(&pack::<&[u8]>(&[]), 0, "test").unwrap().is_empty());
    }

    #[test]
    fn hostile_bundles_are_refused() {
        let b = pack(&[vec![7u8; 10], vec![8u8; 5]]);
        // The wrong count.
        assert!(unpack(&b, 3, "test").is_err());
        // Cut anywhere.
        for cut in 0..b.len() {
            assert!(unpack(&b[..cut], 2, "test").is_err(), "cut at {cut}");
        }
        // Trailing bytes.
        let mut long = b.clone();
        long.push(0);
        assert!(unpack(&long, 2, "test").is_err());
        // A length past the end, and one that overflows usize arithmetic.
        for len in [11u64, u64::MAX, u64::MAX - 3] {
            let mut h = b.clone();
            h[4..12].copy_from_slice(&len.to_le_bytes());
            assert!(unpack(&h, 2, "test").is_err(), "length {len}");
        }
        // A count of 4 billion does not allocate for them.
        let mut c = b.clone();
        c[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(unpack(&c, 2, "test").is_err());
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128), n in 0usize..4) {
            let _ = unpack(&bytes, n, "test");
        }

        #[test]
        fn any_values_round_trip(vals in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8)) {
            let b = pack(&vals);
            let got = unpack(&b, vals.len(), "test").unwrap();
            prop_assert_eq!(got, vals.iter().map(|v| &v[..]).collect::<Vec<_>>());
        }
    }
}

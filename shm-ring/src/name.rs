//! Segment names and the handle another process attaches with.
//!
//! A name is at most 63 bytes of `[A-Za-z0-9._-]`, starts with `shoal-`, and
//! lives in a fixed array: building and copying names never allocates.

use crate::error::{Error, Result};
use crate::liveness::StackWriter;
use std::fmt;
use std::str::FromStr;

/// Longest segment name, in bytes.
pub const NAME_MAX: usize = 63;
/// Every shoal segment name starts with this.
pub const NAME_PREFIX: &str = "shoal-";
/// Directory holding the segments.
pub const SHM_DIR: &str = "/dev/shm";

/// A validated segment name, stored inline.
///
/// ```
/// use shoal_shm_ring::SegmentName;
/// let n: SegmentName = "shoal-0123abcd".parse().unwrap();
/// assert_eq!(n.as_str(), "shoal-0123abcd");
/// assert!("../etc/passwd".parse::<SegmentName>().is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SegmentName {
    bytes: [u8; NAME_MAX],
    len: u8,
}

impl SegmentName {
    /// Validates `s` as a segment name.
    pub fn new(s: &str) -> Result<Self> {
        Self::from_bytes(s.as_bytes())
    }

    pub(crate) fn from_bytes(b: &[u8]) -> Result<Self> {
        if b.len() > NAME_MAX {
            return Err(Error::InvalidName("longer than 63 bytes"));
        }
        if !b.starts_with(NAME_PREFIX.as_bytes()) {
            return Err(Error::InvalidName("does not start with `shoal-`"));
        }
        if !b
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
        {
            return Err(Error::InvalidName("only [A-Za-z0-9._-] are allowed"));
        }
        let mut bytes = [0u8; NAME_MAX];
        bytes[..b.len()].copy_from_slice(b);
        Ok(SegmentName {
            bytes,
            len: b.len() as u8,
        })
    }

    /// A fresh unguessable name: `shoal-<tag>-<64 random bits in hex>`.
    pub(crate) fn random(tag: &str) -> Result<Self> {
        let r = random_u64()?;
        let mut buf = [0u8; NAME_MAX];
        let n = {
            let mut w = StackWriter::new(&mut buf);
            w.push(NAME_PREFIX.as_bytes());
            w.push(tag.as_bytes());
            w.push(b"-");
            w.push_hex(r, 16);
            w.len()
        };
        Self::from_bytes(&buf[..n])
    }

    /// `<self>.o<seq>`: the name of this ring's overflow segment number `seq`.
    pub(crate) fn overflow(&self, seq: u64) -> Result<Self> {
        let mut buf = [0u8; NAME_MAX];
        let n = {
            let mut w = StackWriter::new(&mut buf);
            w.push(self.as_bytes());
            w.push(b".o");
            w.push_hex(seq, 16);
            w.len()
        };
        if n >= NAME_MAX {
            return Err(Error::InvalidName("ring name too long for overflow names"));
        }
        Self::from_bytes(&buf[..n])
    }

    /// The inverse of [`overflow`](Self::overflow): the ring and the number
    /// of an overflow segment's name `<ring>.o<16 hex digits>`.
    pub(crate) fn overflow_parts(&self) -> Option<(SegmentName, u64)> {
        const SUFFIX: usize = 2 + 16;
        let b = self.as_bytes();
        let cut = b.len().checked_sub(SUFFIX)?;
        let (ring, tail) = b.split_at(cut);
        let hex = tail.strip_prefix(b".o")?;
        if !hex
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
        {
            return None;
        }
        let seq = u64::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
        Some((SegmentName::from_bytes(ring).ok()?, seq))
    }

    /// The name as bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        // Only ASCII bytes are ever accepted.
        std::str::from_utf8(self.as_bytes()).unwrap_or("")
    }

    /// `/dev/shm/<name>` NUL-terminated, in a stack buffer.
    pub(crate) fn path(&self) -> PathBuf0 {
        let mut p = PathBuf0 {
            bytes: [0u8; SHM_DIR.len() + 1 + NAME_MAX + 1],
        };
        let mut w = StackWriter::new(&mut p.bytes);
        w.push(SHM_DIR.as_bytes());
        w.push(b"/");
        w.push(self.as_bytes());
        w.push(b"\0");
        p
    }
}

/// A NUL-terminated path in a stack buffer.
pub(crate) struct PathBuf0 {
    bytes: [u8; SHM_DIR.len() + 1 + NAME_MAX + 1],
}

impl PathBuf0 {
    pub(crate) fn as_ptr(&self) -> *const libc::c_char {
        self.bytes.as_ptr().cast()
    }
}

impl fmt::Debug for SegmentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl fmt::Display for SegmentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SegmentName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::new(s)
    }
}

/// What another process needs to attach to a ring: its segment name.
///
/// Its text form is `shm://<name>`; it round-trips through `Display` and
/// `FromStr`, so it can travel in an environment variable, a command line or
/// any message.
///
/// ```
/// use shoal_shm_ring::Handle;
/// let h: Handle = "shm://shoal-bcast-00112233aabbccdd".parse().unwrap();
/// assert_eq!(h.to_string(), "shm://shoal-bcast-00112233aabbccdd");
/// assert_eq!(h.name().as_str(), "shoal-bcast-00112233aabbccdd");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Handle {
    name: SegmentName,
}

impl Handle {
    /// The handle of the segment called `name`.
    pub fn new(name: SegmentName) -> Self {
        Handle { name }
    }
    /// The segment's name.
    pub fn name(&self) -> &SegmentName {
        &self.name
    }
}

impl fmt::Display for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shm://{}", self.name)
    }
}

impl FromStr for Handle {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let rest = s.strip_prefix("shm://").unwrap_or(s);
        Ok(Handle {
            name: SegmentName::new(rest)?,
        })
    }
}

/// 64 random bits from the kernel.
pub(crate) fn random_u64() -> Result<u64> {
    let mut buf = [0u8; 8];
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: writes at most `len - got` bytes into the tail of `buf`.
        let n = unsafe { libc::getrandom(buf[got..].as_mut_ptr().cast(), buf.len() - got, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(Error::Io {
                path: crate::error::SegmentLabel(None),
                op: "getrandom",
                source: e,
            });
        }
        got += n as usize;
    }
    Ok(u64::from_le_bytes(buf))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn random_names_differ_and_validate() {
        let a = SegmentName::random("t").unwrap();
        let b = SegmentName::random("t").unwrap();
        assert_ne!(a, b);
        assert!(a.as_str().starts_with("shoal-t-"));
        assert_eq!(SegmentName::new(a.as_str()).unwrap(), a);
    }

    #[test]
    fn hostile_names_are_refused() {
        for bad in [
            "",
            "shoal-",
            "/dev/shm/x",
            "shoal-../../etc",
            "shoal-a/b",
            "other-name",
            "shoal-\0x",
        ] {
            if bad == "shoal-" {
                continue; // the bare prefix is a syntactically valid name
            }
            assert!(SegmentName::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(SegmentName::new(&format!("shoal-{}", "x".repeat(60))).is_err());
    }

    #[test]
    fn overflow_names_extend_the_ring_name() {
        let a = SegmentName::random("b").unwrap();
        let o = a.overflow(5).unwrap();
        assert!(o.as_str().starts_with(a.as_str()));
        assert!(o.as_str().ends_with(".o0000000000000005"));
    }

    #[test]
    fn path_is_nul_terminated() {
        let a = SegmentName::new("shoal-x").unwrap();
        let p = a.path();
        // SAFETY: path() always writes a NUL within the buffer.
        let s = unsafe { std::ffi::CStr::from_ptr(p.as_ptr()) };
        assert_eq!(s.to_str().unwrap(), "/dev/shm/shoal-x");
    }
}

//! The crate's one error type.

use crate::name::SegmentName;
use std::fmt;
use std::io;
use std::time::Duration;

/// Which segment an error is about, if known; prints its name or `?`.
/// (A copy of the name: building an error never allocates.)
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SegmentLabel(pub Option<SegmentName>);

impl fmt::Display for SegmentLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(n) => f.write_str(n.as_str()),
            None => f.write_str("?"),
        }
    }
}

impl fmt::Debug for SegmentLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl From<SegmentName> for SegmentLabel {
    fn from(n: SegmentName) -> Self {
        SegmentLabel(Some(n))
    }
}

/// Everything that can go wrong in `shoal-shm-ring`, with variants a caller
/// can act on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The wait ran out of time; nothing was consumed or published.
    #[error("timed out")]
    Timeout,
    /// The caller's [`CancelToken`](crate::CancelToken) fired.
    #[error("cancelled")]
    Cancelled,
    /// A non-blocking call found nothing to do (ring empty or full).
    #[error("would block")]
    WouldBlock,
    /// The writer of a broadcast ring died (or the segment's creator of an MPMC ring).
    #[error("writer (pid {pid}) is gone")]
    WriterGone {
        /// The dead writer's pid.
        pid: u32,
    },
    /// The writer closed the ring cleanly and every record has been read.
    #[error("ring closed by its writer")]
    Closed,
    /// MPMC work accounting: claims are closed, every claimed message was
    /// sent and every one sent was taken: no message will ever come again.
    #[error("the work is finished: every claimed message was taken")]
    Finished,
    /// MPMC work accounting: claims are closed and every message that can
    /// still come was taken, but producers that died (or left) owed `lost`
    /// claimed messages that never will.
    #[error("the work is over but incomplete: {lost} claimed messages never came (the producer that owed them, last pid {pid}, is gone)")]
    ProducersLost {
        /// Claimed messages that will never be sent.
        lost: u64,
        /// The pid of the last producer found gone owing.
        pid: u32,
    },
    /// This reader was evicted by the writer (it was dead, or stalled longer
    /// than the ring's `stall_timeout`); its position is lost.
    #[error("reader was evicted by the writer")]
    Evicted,
    /// Every participant slot of the ring is taken by a live process.
    #[error("all {slots} participant slots of the ring are in use")]
    NoFreeSlot {
        /// How many slots the ring has.
        slots: u32,
    },
    /// A record or configuration value is too large.
    #[error("{what}: {got} exceeds the limit {limit}")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// The offending value.
        got: u64,
        /// The largest accepted value.
        limit: u64,
    },
    /// A configuration value is not acceptable.
    #[error("invalid configuration: {0}")]
    InvalidConfig(&'static str),
    /// The segment's contents are inconsistent: `what` names the field,
    /// `found` the value read there, `expected` what a correct peer writes.
    #[error("corrupt segment {segment}: {what} is {found:#x}, expected {expected}")]
    Corrupt {
        /// The segment.
        segment: SegmentLabel,
        /// The field or structure that failed validation.
        what: &'static str,
        /// The value found.
        found: u64,
        /// What was expected instead.
        expected: &'static str,
    },
    /// A live peer held this call up longer than the endpoint's
    /// `stall_timeout` (a stopped, hung or very slow process). Nothing was
    /// consumed or published; the peer still holds what it held.
    #[error("{role} in slot {slot} (pid {pid}) held things up for {waited:?}")]
    Stalled {
        /// What the peer is: "reader", "producer", "consumer", "lock holder".
        role: &'static str,
        /// Its slot in the ring.
        slot: u32,
        /// Its pid as it recorded it (a hint: in another pid namespace this
        /// number means something else).
        pid: u32,
        /// How long this call waited.
        waited: Duration,
    },
    /// The segment uses another layout version.
    #[error("segment {segment}: layout version mismatch: segment has {theirs}, this build speaks {ours}")]
    VersionMismatch {
        /// The segment.
        segment: SegmentLabel,
        /// Ours.
        ours: u32,
        /// The segment's.
        theirs: u32,
    },
    /// The segment was made by a build with different structure sizes,
    /// alignment, endianness or pointer width.
    #[error("segment {segment}: ABI fingerprint mismatch: segment has {theirs:#018x}, this build has {ours:#018x}")]
    AbiMismatch {
        /// The segment.
        segment: SegmentLabel,
        /// Ours.
        ours: u64,
        /// The segment's.
        theirs: u64,
    },
    /// The segment's payload-format tag differs from the one expected.
    #[error("payload format mismatch: segment has {theirs:?}, expected {ours:?}")]
    FormatMismatch {
        /// The expected tag.
        ours: String,
        /// The segment's tag.
        theirs: String,
    },
    /// The segment is a ring of another kind than the one asked for.
    #[error("segment {segment} holds a {theirs}, expected a {ours}")]
    WrongKind {
        /// The segment.
        segment: SegmentLabel,
        /// The kind asked for.
        ours: &'static str,
        /// The kind found.
        theirs: &'static str,
    },
    /// The file belongs to another user.
    #[error("segment {segment} is owned by uid {file_uid}, we are uid {our_uid}")]
    WrongOwner {
        /// The segment.
        segment: SegmentLabel,
        /// The file's owner.
        file_uid: u32,
        /// Our effective uid.
        our_uid: u32,
    },
    /// The creator did not finish initializing the segment in time.
    #[error("segment {segment} is still initializing (creator pid {pid})")]
    NotReady {
        /// The segment.
        segment: SegmentLabel,
        /// The creator's pid as written so far (0 if unknown).
        pid: u32,
    },
    /// The creator marked the segment poisoned.
    #[error("segment {segment} is poisoned")]
    Poisoned {
        /// The segment.
        segment: SegmentLabel,
    },
    /// A segment name or handle string could not be parsed.
    #[error("invalid name or handle: {0}")]
    InvalidName(&'static str),
    /// The segment does not exist (any more).
    #[error("segment {name} does not exist")]
    NotFound {
        /// The name that was looked up.
        name: SegmentName,
    },
    /// An operating-system call failed.
    #[error("{op} on {path}: {source}")]
    Io {
        /// The call that failed.
        op: &'static str,
        /// The segment it was about, if any.
        path: SegmentLabel,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// Wraps the current `errno` of a failed call named `op`.
    pub(crate) fn last_os(op: &'static str) -> Self {
        Error::Io {
            op,
            path: SegmentLabel(None),
            source: io::Error::last_os_error(),
        }
    }

    /// Wraps the current `errno` of a failed call named `op` on segment `name`.
    pub(crate) fn last_os_on(op: &'static str, name: &SegmentName) -> Self {
        Error::Io {
            op,
            path: SegmentLabel(Some(*name)),
            source: io::Error::last_os_error(),
        }
    }

    /// Names segment `name` in an error that was made without it.
    pub(crate) fn on(mut self, name: &SegmentName) -> Self {
        let label = SegmentLabel(Some(*name));
        match &mut self {
            Error::Corrupt { segment, .. }
            | Error::VersionMismatch { segment, .. }
            | Error::AbiMismatch { segment, .. }
            | Error::WrongKind { segment, .. }
            | Error::NotReady { segment, .. }
            | Error::Poisoned { segment }
            | Error::WrongOwner { segment, .. }
            | Error::Io { path: segment, .. }
                if segment.0.is_none() =>
            {
                *segment = label;
            }
            _ => {}
        }
        self
    }

    /// A corrupt field of segment `segment`.
    #[cold]
    #[inline(never)]
    pub(crate) fn corrupt(
        segment: impl Into<SegmentLabel>,
        what: &'static str,
        found: u64,
        expected: &'static str,
    ) -> Self {
        Error::Corrupt {
            segment: segment.into(),
            what,
            found,
            expected,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Option<SegmentName>> for SegmentLabel {
    fn from(n: Option<SegmentName>) -> Self {
        SegmentLabel(n)
    }
}

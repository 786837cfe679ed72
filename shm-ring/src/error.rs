//! The crate's one error type.

use std::io;

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
    /// The segment's contents are inconsistent; `what` names the field.
    #[error("corrupt segment: {what}")]
    Corrupt {
        /// The field or structure that failed validation.
        what: &'static str,
    },
    /// The segment file was not made by shoal (wrong magic number).
    #[error("not a shoal segment (bad magic {found:#018x})")]
    BadMagic {
        /// The first eight bytes found, little-endian.
        found: u64,
    },
    /// The segment uses another layout version.
    #[error("layout version mismatch: segment has {theirs}, this build speaks {ours}")]
    VersionMismatch {
        /// Ours.
        ours: u32,
        /// The segment's.
        theirs: u32,
    },
    /// The segment was made by a build with different structure sizes,
    /// alignment, endianness or pointer width.
    #[error("ABI fingerprint mismatch: segment has {theirs:#018x}, this build has {ours:#018x}")]
    AbiMismatch {
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
    #[error("segment holds a {theirs}, expected a {ours}")]
    WrongKind {
        /// The kind asked for.
        ours: &'static str,
        /// The kind found.
        theirs: &'static str,
    },
    /// The file is shorter than its header says it must be.
    #[error("segment truncated: header needs {expected} bytes, file has {actual}")]
    Truncated {
        /// The size the header implies.
        expected: u64,
        /// The file's size.
        actual: u64,
    },
    /// The file belongs to another user.
    #[error("segment owned by uid {file_uid}, we are uid {our_uid}")]
    WrongOwner {
        /// The file's owner.
        file_uid: u32,
        /// Our effective uid.
        our_uid: u32,
    },
    /// The file's permission bits are not 0600.
    #[error("segment mode is {mode:#o}, expected 0600")]
    BadMode {
        /// The permission bits found.
        mode: u32,
    },
    /// The creator did not finish initializing the segment in time.
    #[error("segment is still initializing (creator pid {pid})")]
    NotReady {
        /// The creator's pid as written so far (0 if unknown).
        pid: u32,
    },
    /// The creator marked the segment poisoned.
    #[error("segment is poisoned")]
    Poisoned,
    /// A segment name or handle string could not be parsed.
    #[error("invalid name or handle: {0}")]
    InvalidName(&'static str),
    /// The segment does not exist (any more).
    #[error("segment {name} does not exist")]
    NotFound {
        /// The name that was looked up.
        name: String,
    },
    /// An operating-system call failed.
    #[error("{op}: {source}")]
    Io {
        /// The call that failed.
        op: &'static str,
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
            source: io::Error::last_os_error(),
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

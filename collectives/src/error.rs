//! The crate's error: variants a caller can act on.

use std::time::Duration;

/// What can go wrong in `shoal-collectives`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The launcher's environment is incomplete or contradicts itself
    /// (a rank past the size, a number that does not parse).
    #[error("launcher environment: {0}")]
    Environment(String),
    /// Options or arguments a collective cannot work with (mismatched
    /// shapes, a root past the group, a zero-size array).
    #[error("bad arguments: {0}")]
    BadArguments(String),
    /// Ranks did not take part in a collective in time: named in
    /// `missing` (ranks of the group the collective ran on).
    #[error("{what}: ranks {missing:?} did not take part within {after:?}")]
    RanksMissing {
        /// The collective.
        what: String,
        /// The ranks that never came.
        missing: Vec<u32>,
        /// How long this rank waited.
        after: Duration,
    },
    /// Ranks whose processes died while others waited for them (seen by
    /// their leases on the host's shared memory).
    #[error("{what}: ranks {ranks:?} died")]
    RanksGone {
        /// The collective.
        what: String,
        /// The dead ranks.
        ranks: Vec<u32>,
    },
    /// The collective failed on another rank, which has the cause.
    #[error("{0}")]
    Broken(String),
    /// A wait ran out of time.
    #[error("{what}: timed out after {after:?}")]
    Timeout {
        /// What was waited for.
        what: String,
        /// How long.
        after: Duration,
    },
    /// The rendezvous (rank 0's store) cannot be reached, or went away.
    #[error("rendezvous at {address}: {why}")]
    Rendezvous {
        /// Where it was looked for.
        address: String,
        /// What happened.
        why: String,
    },
    /// A peer sent bytes that are not what the protocol allows (the
    /// connection that sent them is dropped).
    #[error("malformed {what}: {why}")]
    Malformed {
        /// What was being read.
        what: &'static str,
        /// What was wrong.
        why: String,
    },
    /// A value too large for the limit that applies.
    #[error("{what}: {got} bytes, more than the limit of {limit}")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size.
        got: u64,
        /// The limit.
        limit: u64,
    },
    /// The rendezvous refused a request (and said why).
    #[error("the rendezvous refused: {0}")]
    Refused(String),
    /// A value could not be archived or validated.
    #[error("archive: {0}")]
    Archive(String),
    /// The holder of the group lock died while holding it: the lock is now
    /// this caller's, but what it protects may be half-updated.
    #[error("the lock's previous holder (rank {rank}, pid {pid}) died holding it: the state it protects may be inconsistent")]
    OwnerDied {
        /// The dead holder's rank.
        rank: u32,
        /// Its pid.
        pid: u32,
    },
    /// A channel below failed.
    #[error(transparent)]
    Channel(#[from] shoal_channel::Error),
    /// The shared-memory layer failed.
    #[error(transparent)]
    Ring(#[from] shoal_shm_ring::Error),
    /// An operating-system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

//! The crate's error: variants a caller can act on.

use std::time::Duration;

/// What can go wrong in `shoal-channel`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A wait was cancelled (its [`CancelToken`](crate::CancelToken));
    /// nothing was sent or received.
    #[error("{what}: cancelled")]
    Cancelled {
        /// What was waited for.
        what: &'static str,
    },
    /// A wait ran out of time; nothing was sent or taken.
    #[error("{what}: timed out after {after:?}")]
    Timeout {
        /// What was waited for.
        what: &'static str,
        /// How long.
        after: Duration,
    },
    /// The queue is closed to this call: a producer that claimed nothing
    /// sends after the close, or claims after it.
    #[error("the queue is closed: nothing more may be claimed, and this producer owes nothing")]
    Closed,
    /// The work ended without some claimed messages: producers that owed
    /// them died (or were dropped) before sending them. Every message that
    /// was sent has been taken.
    #[error("the work ended incomplete: up to {lost} claimed messages will never come (the producer that owed them is gone; last pid {pid})")]
    ProducersLost {
        /// Claimed messages that will never come, at most: a producer
        /// that died just after putting a message, before counting it,
        /// has that message counted here although it was delivered.
        lost: u64,
        /// The pid of the last producer found gone owing (one on another
        /// host, through the queue's bridge: its pid there).
        pid: u32,
    },
    /// Readers a broadcast waited for never came.
    #[error(
        "{joined} of {expected} readers joined within {after:?}{}",
        named(missing)
    )]
    ReadersMissing {
        /// Readers waited for.
        expected: u32,
        /// Readers that joined.
        joined: u32,
        /// The indices of those that never came (a remote reader is
        /// known by the hello it says once subscribed).
        missing: Vec<u32>,
        /// How long the writer waited.
        after: Duration,
    },
    /// Rpc workers that did not answer a call in time, or died before
    /// answering: named in `missing`; the others' replies are in
    /// `replies` (in worker order).
    #[error("no reply from {} within {after:?}", crate::rpc::describe(missing))]
    NoReply {
        /// The workers that did not answer.
        missing: Vec<crate::rpc::Silent>,
        /// The replies that came.
        replies: Vec<crate::rpc::Reply>,
        /// How long the call waited.
        after: Duration,
    },
    /// An Rpc worker answered with a failure status (see
    /// [`Reply::ok`](crate::rpc::Reply::ok)).
    #[error("rpc worker {index} (pid {pid}) failed: {status}")]
    WorkerFailed {
        /// Its index.
        index: u32,
        /// Its pid.
        pid: u32,
        /// What it said.
        status: String,
    },
    /// Rpc workers that never attached (by index).
    #[error("rpc workers {missing:?} never attached within {after:?}")]
    WorkersMissing {
        /// Their indices.
        missing: Vec<u32>,
        /// How long the caller waited.
        after: Duration,
    },
    /// Options that cannot work together (said why).
    #[error("bad options: {0}")]
    BadOptions(String),
    /// A handle's text or bytes could not be read.
    #[error("bad channel handle: {0}")]
    BadHandle(String),
    /// A handle (or a segment) made by a build that cannot talk to this
    /// one: another channel protocol, ring layout or rkyv format.
    #[error("incompatible channel: this build is {ours}, the other side {theirs}")]
    Incompatible {
        /// This build's format.
        ours: String,
        /// The other side's.
        theirs: String,
    },
    /// A handle names a channel of another kind than the one attached.
    #[error("the handle names a {found}, not a {expected}")]
    WrongKind {
        /// What was asked for.
        expected: &'static str,
        /// What the handle names.
        found: &'static str,
    },
    /// The channel's shared memory is gone (its creator dropped it, or
    /// died and it was cleaned up).
    #[error("the channel {name} no longer exists")]
    Vanished {
        /// Its segment's name.
        name: String,
    },
    /// A message that does not follow the channel's protocol (written by
    /// a buggy or hostile peer); it was taken and dropped.
    #[error("malformed message: {what} ({len} bytes)")]
    Malformed {
        /// What is wrong with it.
        what: &'static str,
        /// Its length.
        len: usize,
    },
    /// A value could not be serialized or read as the type asked for.
    #[error(transparent)]
    Archive(shoal_transport::Error),
    /// An operating-system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The channel's host failed to do what a remote peer asked (said
    /// why): a peer on another host gets this where a local one would
    /// get the error itself.
    #[error("the channel's host: {0}")]
    Remote(String),
    /// A network peer or endpoint failed (a remote reader's or writer's
    /// connection; see the transport's error).
    #[error("network: {0}")]
    Net(shoal_transport::Error),
    /// The shared-memory ring failed (see the ring's error).
    #[error(transparent)]
    Ring(shoal_shm_ring::Error),
}

/// An error attaching to the ring `handle` names: a ring that is not
/// there any more is [`Error::Vanished`] (elsewhere, a missing file is the
/// ring's error: an overflow segment, say, does not mean the queue is gone).
pub(crate) fn attach_error(e: shoal_shm_ring::Error) -> Error {
    match e {
        shoal_shm_ring::Error::NotFound { name } => Error::Vanished {
            name: name.to_string(),
        },
        e => e.into(),
    }
}

/// ": missing readers [0, 2]", or nothing.
fn named(missing: &[u32]) -> String {
    if missing.is_empty() {
        String::new()
    } else {
        format!(": missing readers {missing:?}")
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<shoal_shm_ring::Error> for Error {
    fn from(e: shoal_shm_ring::Error) -> Self {
        use shoal_shm_ring::Error as R;
        match e {
            R::ProducersLost { lost, pid } => Error::ProducersLost { lost, pid },
            R::FormatMismatch { ours, theirs } => Error::Incompatible { ours, theirs },
            R::VersionMismatch { .. } | R::AbiMismatch { .. } => Error::Incompatible {
                ours: crate::handle::format().to_string(),
                theirs: e.to_string(),
            },
            e => Error::Ring(e),
        }
    }
}

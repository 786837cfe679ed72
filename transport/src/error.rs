//! The crate's one error type.

/// Everything that can go wrong in `shoal-transport`, with variants a
/// caller can act on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The address is not one this crate understands.
    #[error("bad address {address:?}: {why}")]
    BadAddress {
        /// The address as given.
        address: String,
        /// What is wrong with it.
        why: String,
    },
    /// The address names a backend this build was compiled without.
    #[error("{address:?} needs the `{feature}` backend, which this build does not have (enable the `{feature}` feature of shoal-transport)")]
    BackendMissing {
        /// The address as given.
        address: String,
        /// The Cargo feature that brings the backend.
        feature: &'static str,
    },
    /// A message is larger than the configured limit (checked before any
    /// buffer for it is allocated).
    #[error("{what}: {got} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size.
        got: u64,
        /// The limit.
        limit: u64,
    },
    /// Bytes from a peer are not a well-formed frame.
    #[error("corrupt frame: {what} is {found}, expected {expected}")]
    Corrupt {
        /// The field or structure that failed.
        what: &'static str,
        /// The value found.
        found: u64,
        /// What a correct peer sends.
        expected: &'static str,
    },
    /// A payload is not a valid archive of the type asked for.
    #[error("payload is not a valid archive of {type_name}: {reason}")]
    InvalidArchive {
        /// The type the caller asked for.
        type_name: &'static str,
        /// What the validator reported.
        reason: String,
    },
    /// Another live endpoint is bound at the address.
    #[error("{address} is in use by a live endpoint")]
    AddrInUse {
        /// The address.
        address: String,
    },
    /// Nobody is bound at the address (yet, or any more).
    #[error("nothing is bound at {address}")]
    NotBound {
        /// The address.
        address: String,
    },
    /// The operation did not complete in time.
    #[error("{what} timed out after {after:?}")]
    Timeout {
        /// What timed out.
        what: &'static str,
        /// How long it waited.
        after: std::time::Duration,
    },
    /// The peer closed cleanly and everything it sent was received.
    #[error("closed by the peer")]
    Closed,
    /// The peer died or went away without closing.
    #[error("peer at {address} is gone")]
    PeerGone {
        /// Its address.
        address: String,
    },
    /// This subscriber was dropped by its publisher (its connection broke
    /// while the publisher went on), so messages sent meanwhile are lost
    /// to it. The next receive subscribes again, from the newest message.
    #[error("evicted by the publisher at {address}: messages sent meanwhile were lost to this subscriber")]
    Evicted {
        /// The publisher's address.
        address: String,
    },
    /// The shared-memory ring reported an error.
    #[cfg(feature = "shm")]
    #[error(transparent)]
    Ring(#[from] shoal_shm_ring::Error),
    /// An I/O error, with what was being done.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Serializing a value failed.
    #[error("cannot serialize {type_name}: {reason}")]
    Serialize {
        /// The type being serialized.
        type_name: &'static str,
        /// What the serializer reported.
        reason: String,
    },
}

/// Shorthand for this crate's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// `Ok` when a payload of `len` bytes is within `max`, else
    /// [`Error::TooLarge`] naming both (checked before anything is
    /// allocated for it).
    #[cfg_attr(not(any(feature = "nng", feature = "quic")), allow(dead_code))]
    pub(crate) fn check_payload(len: usize, max: usize) -> Result<()> {
        if len > max {
            return Err(Error::TooLarge {
                what: "payload",
                got: len as u64,
                limit: max as u64,
            });
        }
        Ok(())
    }
}

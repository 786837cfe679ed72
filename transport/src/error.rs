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

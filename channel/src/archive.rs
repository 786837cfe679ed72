//! Reading a message as a validated rkyv archive, in place.

use crate::error::{Error, Result};
use rkyv::api::high::HighValidator;
use rkyv::bytecheck::CheckBytes;

/// `bytes` as an archived `T`, validated first (bytecheck); the bytes
/// must start 16-byte aligned (every channel message does).
pub(crate) fn access<T>(bytes: &[u8]) -> Result<&T::Archived>
where
    T: rkyv::Archive,
    T::Archived: for<'b> CheckBytes<HighValidator<'b, rkyv::rancor::Error>>,
{
    rkyv::access::<T::Archived, rkyv::rancor::Error>(bytes).map_err(|e| {
        Error::Archive(shoal_transport::Error::InvalidArchive {
            type_name: std::any::type_name::<T>(),
            reason: e.to_string(),
        })
    })
}

//! Values that collectives carry: rkyv archives, validated once when they
//! arrive, then read in place.

use crate::error::{Error, Result};
use rkyv::api::high::{HighDeserializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::util::AlignedVec;
use std::marker::PhantomData;

/// Alignment of a value's bytes (what rkyv archives need).
const ALIGN: usize = 16;

/// An archived `T` a collective brought: its bytes, owned and aligned,
/// validated (bytecheck) when it arrived; [`get`](Self::get) reads it in
/// place, [`deserialize`](Self::deserialize) makes a `T`.
///
/// ```
/// use shoal_collectives::Group;
/// let g = Group::single();
/// let v = g.broadcast(0, Some(&vec![1u32, 2, 3]))?;
/// assert_eq!(v.get().len(), 3);
/// assert_eq!(v.deserialize()?, vec![1, 2, 3]);
/// # Ok::<(), shoal_collectives::Error>(())
/// ```
pub struct Value<T> {
    bytes: AlignedVec<ALIGN>,
    _t: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for Value<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Value")
            .field("type", &std::any::type_name::<T>())
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

impl<T> Value<T>
where
    T: rkyv::Archive,
    T::Archived: for<'b> CheckBytes<HighValidator<'b, rancor::Error>>,
{
    /// A copy of `bytes`, validated as an archived `T`.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Result<Value<T>> {
        let mut v = AlignedVec::<ALIGN>::with_capacity(bytes.len());
        v.extend_from_slice(bytes);
        Value::from_aligned(v)
    }

    /// `bytes` (aligned already), validated as an archived `T`.
    pub(crate) fn from_aligned(bytes: AlignedVec<ALIGN>) -> Result<Value<T>> {
        rkyv::access::<T::Archived, rancor::Error>(&bytes).map_err(|e| {
            Error::Archive(format!(
                "{} bytes are not an archived {}: {e}",
                bytes.len(),
                std::any::type_name::<T>()
            ))
        })?;
        Ok(Value {
            bytes,
            _t: PhantomData,
        })
    }

    /// The archived value, in place.
    pub fn get(&self) -> &T::Archived {
        // SAFETY: the bytes were validated as an archived T when this
        // Value was made (both constructors, `from_bytes` and
        // `from_aligned`, validate before they return one), they are
        // owned by it and never written since (no `&mut` access is
        // given), and they start ALIGN (16)-aligned, which every rkyv
        // archive's root needs at most.
        unsafe { rkyv::access_unchecked::<T::Archived>(&self.bytes) }
    }

    /// The value, deserialized.
    pub fn deserialize(&self) -> Result<T>
    where
        T::Archived: rkyv::Deserialize<T, HighDeserializer<rancor::Error>>,
    {
        rkyv::deserialize::<T, rancor::Error>(self.get()).map_err(|e| Error::Archive(e.to_string()))
    }

    /// The archive's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// `value`'s archive.
pub(crate) fn archive<T: shoal_transport::Archivable>(value: &T) -> Result<AlignedVec> {
    rkyv::to_bytes::<rancor::Error>(value)
        .map_err(|e| Error::Archive(format!("archiving a {}: {e}", std::any::type_name::<T>())))
}

//! The one door to atomics.
//!
//! Every atomic the rings touch comes from here, so that under `cfg(loom)` the
//! same ring code runs against loom's model-checked atomics. `clippy.toml`
//! forbids the std atomic types everywhere else in the crate.

#[cfg(not(loom))]
#[allow(clippy::disallowed_types)]
pub(crate) use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering};

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering};

/// A hint for the CPU that we are in a spin loop; under loom, a yield so the
/// model checker can run the thread we wait for.
#[inline(always)]
pub(crate) fn spin_hint() {
    #[cfg(not(loom))]
    std::hint::spin_loop();
    #[cfg(loom)]
    loom::thread::yield_now();
}

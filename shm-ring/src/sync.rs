//! The one door to atomics.
//!
//! Every atomic the rings touch is one of the wrappers here, which hold a
//! std atomic, or a loom atomic under `cfg(loom)`, so the same ring code runs
//! against loom's model checker. `clippy.toml` forbids the std atomic types
//! everywhere else in the crate. The wrappers are `repr(transparent)`: in a
//! shared mapping they are exactly the std atomic, with its size and
//! alignment.
#![allow(clippy::disallowed_types)]

#[cfg(not(loom))]
use std::sync::atomic as imp;

#[cfg(loom)]
use loom::sync::atomic as imp;

pub(crate) use imp::{fence, Ordering};

macro_rules! atomic {
    ($name:ident, $t:ty) => {
        #[doc = concat!("A loom-switchable `", stringify!($name), "`.")]
        #[repr(transparent)]
        pub struct $name(imp::$name);

        #[allow(dead_code)]
        impl $name {
            #[inline(always)]
            pub(crate) fn new(v: $t) -> Self {
                Self(imp::$name::new(v))
            }
            #[inline(always)]
            pub(crate) fn load(&self, o: Ordering) -> $t {
                self.0.load(o)
            }
            #[inline(always)]
            pub(crate) fn store(&self, v: $t, o: Ordering) {
                self.0.store(v, o)
            }
            #[inline(always)]
            pub(crate) fn swap(&self, v: $t, o: Ordering) -> $t {
                self.0.swap(v, o)
            }
            #[inline(always)]
            pub(crate) fn compare_exchange(
                &self,
                current: $t,
                new: $t,
                success: Ordering,
                failure: Ordering,
            ) -> Result<$t, $t> {
                self.0.compare_exchange(current, new, success, failure)
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new(Default::default())
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                std::fmt::Debug::fmt(&self.load(Ordering::Relaxed), f)
            }
        }
    };
}

macro_rules! atomic_int {
    ($name:ident, $t:ty) => {
        atomic!($name, $t);
        #[allow(dead_code)]
        impl $name {
            #[inline(always)]
            pub(crate) fn fetch_add(&self, v: $t, o: Ordering) -> $t {
                self.0.fetch_add(v, o)
            }
            #[inline(always)]
            pub(crate) fn fetch_sub(&self, v: $t, o: Ordering) -> $t {
                self.0.fetch_sub(v, o)
            }
            #[inline(always)]
            pub(crate) fn fetch_or(&self, v: $t, o: Ordering) -> $t {
                self.0.fetch_or(v, o)
            }
            #[inline(always)]
            pub(crate) fn fetch_and(&self, v: $t, o: Ordering) -> $t {
                self.0.fetch_and(v, o)
            }
        }
    };
}

atomic_int!(AtomicU32, u32);
atomic_int!(AtomicU64, u64);
atomic!(AtomicBool, bool);

/// A hint for the CPU that we are in a spin loop; under loom, a yield so the
/// model checker can run the thread we wait for.
#[inline(always)]
pub(crate) fn spin_hint() {
    #[cfg(not(loom))]
    std::hint::spin_loop();
    #[cfg(loom)]
    loom::thread::yield_now();
}

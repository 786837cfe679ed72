//! # shoal-shm-ring
//!
//! Allocation-free rings in a shared-memory segment, the floor the rest of
//! shoal stands on:
//!
//! - a **broadcast ring** ([`BroadcastWriter`] → many [`BroadcastReader`]s):
//!   every reader receives every record, in order; the writer never
//!   overwrites what a live reader has not released;
//! - an **MPMC ring** ([`MpmcProducer`]s → [`MpmcConsumer`]s): every record
//!   is taken exactly once.
//!
//! Records are variable-size (64-byte aligned) in a byte ring; records larger
//! than a quarter of a broadcast ring (half of an MPMC ring) travel in an
//! overflow segment. Both directions are
//! zero-copy: writers `reserve` bytes inside the segment and `commit` a
//! prefix; readers get a guard that derefs to the bytes in place and releases
//! them on drop. Waiting spins for an adaptive window, then parks on a
//! shared futex. Every participant holds a kernel lease (an OFD lock on its
//! byte of the segment file) that ends with its process, so dead peers are
//! detected whatever pid namespace they ran in: the writer evicts dead
//! readers, readers of a dead writer get [`Error::WriterGone`], and a record
//! a dead producer reserved becomes a tombstone consumers skip. A *live*
//! peer that holds others up past its `stall_timeout` makes their waits end
//! with [`Error::Stalled`] naming it; nothing it may still read is reclaimed.
//!
//! ```
//! use shoal_shm_ring::{BroadcastConfig, BroadcastReader, BroadcastWriter, Handle};
//! let mut writer = BroadcastWriter::create(&BroadcastConfig::new(1 << 16, 4))?;
//! // The handle's text travels to another process, which attaches:
//! let handle: Handle = writer.handle().to_string().parse()?;
//! let mut reader = BroadcastReader::attach(&handle)?;
//! writer.send(b"first")?;
//! assert_eq!(&*reader.recv()?, b"first");
//! # Ok::<(), shoal_shm_ring::Error>(())
//! ```
//!
//! ## Map of the crate
//! - [`segment`]: create, attach and validate segments; [`cleanup_stale`].
//! - `layout`: the bytes of a segment, and the ABI fingerprint.
//! - `broadcast_core` / `broadcast`: the broadcast protocol and its shm API.
//! - `mpmc_core` / `mpmc`: the MPMC protocol and its shm API.
//! - `overflow`: records larger than the ring.
//! - `ready`: [`ReadyFd`], an eventfd for async runtimes.
//! - `wait`: deadlines, cancellation, the adaptive spin window, the eventcount.
//! - `futex`: shared futex wait and wake.
//! - `lease`: proof of life through open-file-description locks.
//! - `liveness`: pid plus start time (hints for logs and errors).
//! - `peer`: waiting and stall options; claiming, proving and leaving slots.
//! - `sync`: the one door to atomics (std, or loom under `cfg(loom)`).

#![warn(missing_docs)]
#![cfg_attr(loom, allow(dead_code, unused_imports))]

mod error;
mod futex;
mod layout;
mod lease;
mod liveness;
mod mem;
mod name;
mod pad;
mod peer;
mod sync;
mod wait;

mod broadcast_core;
mod mpmc_core;

#[cfg(not(loom))]
mod broadcast;
#[cfg(not(loom))]
mod mpmc;
#[cfg(not(loom))]
mod overflow;
#[cfg(not(loom))]
mod ready;
#[cfg(not(loom))]
mod region;
#[cfg(not(loom))]
pub mod segment;

#[cfg(loom)]
#[path = "loom_tests.rs"]
mod loom_tests;

pub use error::{Error, Result, SegmentLabel};
pub use layout::{HeaderCopy, SegmentKind, ABI_FINGERPRINT, FORMAT_TAG_LEN, LAYOUT_VERSION};
pub use liveness::{Liveness, ProcessId};
pub use name::{Handle, SegmentName};
pub use pad::CachePadded;
pub use peer::PeerOptions;
pub use wait::{CancelToken, Wait, WaitStrategy};

#[cfg(not(loom))]
pub use broadcast::{
    BroadcastConfig, BroadcastReader, BroadcastWriter, Held, Peeked, ReadGuard, ReaderOptions,
    ReaderSeen, Reservation,
};
#[cfg(not(loom))]
pub use broadcast_core::MAX_HELD;
#[cfg(not(loom))]
pub use mpmc::{
    MpmcConfig, MpmcConsumer, MpmcProducer, MpmcReservation, MpmcRing, TakeGuard, OVERFLOW_RATIO,
};
#[cfg(not(loom))]
pub use ready::ReadyFd;
#[cfg(not(loom))]
pub use region::{futex_wait, futex_wake, SharedRegion, MAX_LEASES};
#[cfg(not(loom))]
pub use segment::{cleanup_stale, dev_shm_size, CleanupReport, Segment};

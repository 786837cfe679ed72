//! shoal's collectives: a group of processes started by a real launcher
//! (Slurm, Open MPI, PMI, torchrun, `cargo xtask run`), or a group of one
//! without any, and what its ranks do together.
//!
//! - [`launcher`]: what the launcher's environment says (rank, size,
//!   where rank 0's rendezvous is).
//! - [`rendezvous`]: rank 0's store where ranks meet (TCP).
//! - [`group`]: [`Group`]: rank, size, which ranks share a host,
//!   [`Group::split`] into sub-groups, and the collectives: barrier,
//!   broadcast, gather, all_gather of rkyv values ([`value`]).
//! - [`lock`]: [`Lock`], a mutex over the group, granted in request
//!   order, robust to a holder's death.
//! - [`array`](mod@array): [`SharedArray`], an n-dimensional array with one copy
//!   per host, set collectively, read freely.
//! - [`batch`]: [`Batch`], a pool of tasks worked by worker groups,
//!   its states in shared memory and, optionally, in state files.
//! - [`error`]: the crate's [`Error`].
//! - `agree` (internal): a rank that cannot do its part of a set-up
//!   fails every rank at once, naming it.
//! - `ticket` (internal): the protocol of the host's locks (a FIFO
//!   ticket lock in shared memory, robust to its holder's death), with
//!   its loom models.
//!
//! ```
//! use shoal_collectives::Group;
//! // No launcher: a group of one, which needs no rendezvous.
//! let g = Group::from_env()?;
//! if g.size() == 1 {
//!     g.barrier()?;
//!     let v = g.broadcast(0, Some(&42u64))?;
//!     assert_eq!(*v.get(), 42);
//! }
//! # Ok::<(), shoal_collectives::Error>(())
//! ```

#![warn(missing_docs)]

mod agree;
pub mod array;
pub mod batch;
mod bundle;
pub mod error;
pub mod group;
pub mod launcher;
pub mod lock;
mod node;
pub mod rendezvous;
mod ticket;
pub mod value;

pub use array::{ArrayRead, Element, SharedArray};
pub use batch::{Batch, BatchOptions, OnDeath, TaskState};
pub use error::{Error, Result};
pub use group::{Group, GroupOptions};
pub use launcher::{Launch, Launcher};
pub use lock::{Lock, LockGuard};
pub use value::Value;

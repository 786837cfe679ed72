//! # shoal-channel
//!
//! The semantics users ask for, with one API whether the peers are threads,
//! processes on one host, or (with the `nng` or `quic` feature) processes
//! on other hosts: a channel's creator names where remote peers connect
//! ([`BroadcastOptions::remote`], [`QueueOptions::remote`],
//! [`RpcOptions::remote`]), its handle carries that address, and a peer
//! whose host differs (`SHOAL_HOST`, else the host name) attaches through
//! the network with the same calls:
//!
//! - a [`WorkQueue`]: many producers, many consumers, each message taken
//!   once, and termination without guessing: producers
//!   [`claim`](Producer::claim) what they will send, someone
//!   [`close`](Producer::close)s the queue, and [`take`](Consumer::take)
//!   returns `None` exactly when every claimed message was taken and
//!   nothing more can come. A producer that dies owing messages ends the
//!   consumers' wait with [`Error::ProducersLost`], never a hang.
//!
//! ```
//! use shoal_channel::{QueueOptions, WorkQueue};
//! let queue = WorkQueue::create(&QueueOptions::default())?;
//! // The handle's text travels to other processes, which attach with it.
//! let handle = queue.handle().to_string();
//! let mut producer = queue.producer()?;
//! let mut consumer = shoal_channel::Consumer::attach(&handle.parse()?)?;
//! producer.claim(2)?;
//! producer.close()?; // no more claims: two messages, then the end
//! producer.put(b"job 1")?;
//! producer.put(b"job 2")?;
//! let mut got = Vec::new();
//! while let Some(job) = consumer.take()? {
//!     got.push(job.to_vec());
//! }
//! assert_eq!(got, [b"job 1".to_vec(), b"job 2".to_vec()]);
//! # Ok::<(), shoal_channel::Error>(())
//! ```
//!
//! - a [`Broadcast`]: one writer, N readers, every message to every
//!   reader in order, [`Received`] values held in place (several at once);
//!   readers on other hosts read the same messages, in the same order,
//!   through a network publisher the writer binds beside its ring;
//! - a [`Gather`]: many writers, one reader, each message with its
//!   [`Sender`] (index, pid, host); the same termination;
//! - an [`Rpc`]: one request to every worker, every worker's [`Reply`]
//!   (an answer or its failure status) collected in worker order, folded,
//!   or handed to a handler as they come; a worker that does not answer
//!   in time, or dies, is named in [`Error::NoReply`].
//!
//! ## Map of the crate
//! - `archive`: reading a message as a validated rkyv archive, in place.
//! - [`broadcast`]: the broadcast, its receivers and what they receive.
//! - [`error`]: the crate's one error type.
//! - [`gather`]: the gather, its writers, and sender identities.
//! - [`handle`]: the serializable handle other processes attach with (text
//!   and rkyv), and the build fingerprint it carries.
//! - `net`: the network endpoints of peers on other hosts (nng, QUIC).
//! - `ready`: awaiting a ring from tokio (shared by every async form).
//! - [`rpc`]: the Rpc's calling side, its workers, replies and requests.
//! - [`workqueue`]: the work queue, its producers and consumers.

#![warn(missing_docs)]

mod archive;
pub mod broadcast;
pub mod error;
pub mod gather;
pub mod handle;
mod net;
mod ready;
pub mod rpc;
pub mod workqueue;

pub use broadcast::{Broadcast, BroadcastOptions, BroadcastReceiver, Received};
pub use error::{Error, Result};
pub use gather::{Gather, GatherWriter, Gathered, Sender, TryGather};
pub use handle::{Handle, Kind};
pub use rpc::{Reply, Request, Rpc, RpcOptions, RpcWorker};
pub use shoal_shm_ring::CancelToken;
pub use workqueue::{Consumer, Producer, QueueOptions, Taken, TryPutError, TryTake, WorkQueue};

//! shoal's transport layer: the wire underneath `shoal-channel` and
//! `shoal-collectives`, chosen by an address URL (DESIGN.md, "transport").
//!
//! This crate is being built up in parts (issue 7). What is here:
//!
//! - [`address`]: the URLs a user names a wire with (`shm://NAME`,
//!   `nng+ipc:///PATH`, `nng+tcp://HOST:PORT`, `quic://HOST:PORT?pin=HEX`),
//!   parsed and checked against the backends this build has.
//! - [`frame`]: a received message ([`Frame`]) that owns or borrows its
//!   bytes, derefs to `[u8]`, and gives typed zero-copy access to an rkyv
//!   archive in it ([`Frame::archived`], validated); [`AlignedBuf`], the
//!   16-byte-aligned buffer network bytes are copied into only when they
//!   arrive misaligned; [`archive_into`], serializing straight into
//!   memory the transport owns.
//! - [`envelope`]: the 16-byte header every message carries on a wire
//!   (kind, topic, correlation id) and the sans-IO decoder of
//!   length-prefixed streams, which enforces the size limit before it
//!   allocates anything.
//! - [`options`]: what every endpoint can be told (sizes, timeouts).
//! - [`pattern`]: the three patterns as traits ([`Wire`] and one per
//!   endpoint), which every backend implements and the conformance suite
//!   is generic over.
//! - [`inproc`]: the in-process backend (`inproc://NAME`), the suite's
//!   reference.
//! - [`blocking`]: any endpoint driven from a plain thread.
//! - [`handler`]: a subscriber driven by a closure on a background task,
//!   with a stop handle and an exit callback.
//! - [`shm`] (feature `shm`, on by default): publish/subscribe over a
//!   shared-memory broadcast ring, push/pull over an MPMC ring, and
//!   request/reply over a pair of them, awaited through tokio.
//! - `nng` (feature `nng`, off by default: its C build needs cmake):
//!   `nng+ipc://` and `nng+tcp://`, with flow-controlled publish/subscribe
//!   and a work queue that loses nothing with a dead puller.
//! - `quic` (feature `quic`, off by default): `quic://HOST:PORT?pin=HEX`
//!   over quinn, TLS 1.3 with the server's certificate pinned.
//! - `window` (with `nng` or `quic`): a pusher's window of messages sent
//!   and not yet taken, shipped in acknowledged batches.
//! - [`error`]: the crate's one error type.

pub mod address;
pub mod blocking;
pub mod envelope;
pub mod error;
pub mod frame;
pub mod handler;
pub mod inproc;
#[cfg(feature = "nng")]
pub mod nng;
pub mod options;
pub mod pattern;
#[cfg(feature = "quic")]
pub mod quic;
#[cfg(feature = "shm")]
pub mod shm;
#[cfg(any(feature = "nng", feature = "quic"))]
pub(crate) mod window;

pub use address::{Address, Backend};
pub use envelope::{Decoder, Header, Kind, HEADER_LEN};
pub use error::{Error, Result};
pub use frame::{archive_into, AlignedBuf, Archivable, Archived, Frame, PeerId, ARCHIVE_ALIGN};
pub use inproc::InProc;
#[cfg(feature = "nng")]
pub use nng::{Nng, NngPublisher, NngPuller, NngPusher, NngReplier, NngRequester, NngSubscriber};
pub use options::Options;
pub use pattern::{Publisher, Puller, Pusher, Replier, Requester, Subscriber, Wire};
#[cfg(feature = "quic")]
pub use quic::{
    Quic, QuicPublisher, QuicPuller, QuicPusher, QuicReplier, QuicRequester, QuicSubscriber,
};
#[cfg(feature = "shm")]
pub use shm::{
    Replies, Request, Shm, ShmPublisher, ShmPuller, ShmPusher, ShmReplier, ShmRequester,
    ShmSubscriber,
};

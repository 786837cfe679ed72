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
//! - [`recycle`]: large message buffers kept for the next message of
//!   their size (a fresh megabyte costs a page fault per page).
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

#![warn(missing_docs)]

pub mod address;
pub mod blocking;
pub mod envelope;
pub mod error;
pub mod frame;
pub mod handler;
pub mod inproc;
#[cfg(feature = "nng")]
pub mod nng;
#[cfg_attr(not(feature = "nng"), allow(dead_code))]
pub(crate) mod nng_proto;
pub mod options;
pub mod pattern;
#[cfg(feature = "quic")]
pub mod quic;
pub mod recycle;
pub mod reply;
#[cfg(feature = "shm")]
pub mod shm;
#[cfg(any(feature = "nng", feature = "quic"))]
pub(crate) mod waiting;
#[cfg(any(feature = "nng", feature = "quic"))]
pub(crate) mod window;

/// Entry points for the fuzz targets (`fuzz/`): not an API.
#[doc(hidden)]
pub mod fuzzing {
    /// Parses `data` as the nng backend's peers would: its first byte the
    /// envelope count asked for, the rest a message (control block, then
    /// envelopes). Must never panic; what it accepts lies inside the bytes.
    pub fn nng_message(data: &[u8]) {
        use crate::envelope::Kind;
        use crate::nng_proto::{locate, push_b_parts, Control};
        let Some((&count, msg)) = data.split_first() else {
            return;
        };
        if let Ok(c) = Control::decode(msg) {
            let (hold, n) = push_b_parts(c.b);
            assert!(hold <= u64::from(u32::MAX) && n >= 1);
        }
        for kind in [Kind::Message, Kind::Request, Kind::Reply] {
            if let Ok(found) = locate(msg, u64::from(count), kind, 1 << 16) {
                assert_eq!(found.len(), usize::from(count));
                for e in found {
                    assert!(e.topic.start <= e.topic.end && e.topic.end <= msg.len());
                    assert!(e.payload.start <= e.payload.end && e.payload.end <= msg.len());
                    assert!(e.payload.len() <= 1 << 16);
                }
            }
        }
    }
}

pub use address::{Address, Backend};
pub use envelope::{Decoder, Header, Kind, HEADER_LEN};
pub use error::{Error, Result};
pub use frame::{
    archive_into, AlignedBuf, Archivable, Archived, Frame, OwnedFrame, PeerId, ARCHIVE_ALIGN,
};
pub use inproc::InProc;
#[cfg(feature = "nng")]
pub use nng::{Nng, NngPublisher, NngPuller, NngPusher, NngReplier, NngRequester, NngSubscriber};
pub use options::Options;
pub use pattern::{Publisher, Puller, Pusher, Replier, Requester, Subscriber, Wire};
#[cfg(feature = "quic")]
pub use quic::{
    Quic, QuicPublisher, QuicPuller, QuicPusher, QuicReplier, QuicRequester, QuicSubscriber,
};
pub use reply::Reply;
#[cfg(feature = "shm")]
pub use shm::{
    Replies, Request, Shm, ShmPublisher, ShmPuller, ShmPusher, ShmReplier, ShmRequester,
    ShmSubscriber,
};

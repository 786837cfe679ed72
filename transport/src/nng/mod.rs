//! The nng backend (feature `nng`): `nng+ipc:///PATH` on one host and
//! `nng+tcp://HOST:PORT` across hosts, through the `nng` crate (NNG 1.4,
//! built from its vendored sources with cmake).
//!
//! nng carries whole messages, checks their size before allocating them
//! (the receive limit is set to the endpoint's `max_message` before any
//! peer connects) and redials broken connections by itself. On top of its
//! REQ/REP sockets this backend runs small protocols of its own, because
//! nng's PUB drops messages silently when a subscriber is slow and its
//! PUSH loses what sat in a dead puller's connection:
//!
//! Addresses ending in `?native` speak nng's own protocols instead, with
//! plain bodies, so peers shoal did not write (pynng, nngcat, libnng
//! programs) can be the other end, with nng's semantics ([`native`] says
//! what that gives up). The endpoint types are the same either way
//! ([`endpoint`]).
//!
//! - [`endpoint`]: the endpoints a user holds, each one of the two kinds.
//! - [`native`]: nng's own PUB/SUB and PUSH/PULL.
//! - `proto` (`nng_proto.rs`, built without the feature too, for its fuzz
//!   target): the messages those protocols exchange, parsed sans-IO.
//! - `direct`: operations waited for on the calling thread (blocking
//!   callers), one wake-up fewer than those awaited from tokio.
//! - `sock`: sockets, dialing with a deadline, pipe (connection)
//!   watching, and nng's asynchronous operations awaited from tokio.
//! - [`pubsub`]: publish/subscribe with flow control (subscribers poll
//!   with a cursor; the publisher holds what the slowest has not taken).
//! - [`pushpull`]: a work queue held by the binding puller; pushes and
//!   pulls acknowledged, so nothing is lost with a dead puller.
//! - [`reqrep`]: request/reply, replies routed by nng.
//! - [`wire`]: all of it as a [`Wire`](crate::Wire).

pub(crate) mod direct;
pub mod endpoint;
pub mod native;
pub(crate) use crate::nng_proto as proto;
pub mod pubsub;
pub mod pushpull;
pub mod reqrep;
pub(crate) mod sock;
pub mod wire;

pub use endpoint::{NngPublisher, NngPuller, NngPusher, NngSubscriber};
pub use native::{NativePublisher, NativePuller, NativePusher, NativeSubscriber};
pub use pubsub::{FlowPublisher, FlowSubscriber};
pub use pushpull::{QueuePuller, QueuePusher};
pub use reqrep::{NngReplier, NngRequester};
pub use wire::Nng;

#[cfg(test)]
mod send_check {
    fn is_send<T: Send>(_: &T) {}

    /// The futures of every nng endpoint's operations are `Send`, so they
    /// run inside `tokio::spawn`.
    #[allow(dead_code)]
    async fn futures_are_send(
        p: &mut super::NngPublisher,
        s: &mut super::NngSubscriber,
        push: &mut super::NngPusher,
        pull: &mut super::NngPuller,
        rq: &mut super::NngRequester,
        rp: &mut super::NngReplier,
    ) {
        is_send(&p.send(b"", b""));
        is_send(&s.recv());
        is_send(&push.send(b""));
        is_send(&pull.recv());
        is_send(&rq.request(b""));
        is_send(&rp.serve_one(|_| Vec::new()));
    }
}

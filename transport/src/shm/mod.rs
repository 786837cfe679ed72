//! The shared-memory backend: `shm://NAME` on one host, through
//! shoal-shm-ring.
//!
//! - [`names`]: the name files that map `shm://NAME` to a ring's random
//!   segment name, so unrelated processes meet by a name they chose.
//! - [`pubsub`]: publish/subscribe over a broadcast ring: every subscriber
//!   gets every message (backpressure: the publisher waits for the slowest
//!   live subscriber; a dead one is evicted), topics are filtered at the
//!   subscriber, payloads are read in place.
//! - [`pushpull`]: push/pull over an MPMC ring: each message to exactly one
//!   puller.
//! - [`reqrep`]: request/reply: requests through the replier's work queue,
//!   replies through each requester's own, matched by correlation id.
//!
//! Receiving awaits the ring through its [`ReadyFd`](shoal_shm_ring::ReadyFd)
//! registered with tokio (`AsyncFd`): no timer polling, no thread blocked.
//! A send that finds the ring full waits in tokio's blocking pool, where the
//! ring's own wait evicts dead subscribers and reports live ones that stall.

pub mod names;
pub mod pubsub;
pub mod pushpull;
pub mod reqrep;
pub mod wire;

pub use pubsub::{ShmPublisher, ShmSubscriber};
pub use pushpull::{ShmPuller, ShmPusher};
pub use reqrep::{Replies, Request, ShmReplier, ShmRequester};
pub use wire::Shm;

#[cfg(test)]
mod send_check {
    fn is_send<T: Send>(_: &T) {}

    /// The futures of every shm endpoint's operations are `Send`, so they
    /// run inside `tokio::spawn`.
    #[allow(dead_code)]
    async fn futures_are_send(
        p: &mut super::ShmPublisher,
        s: &mut super::ShmSubscriber,
        push: &mut super::ShmPusher,
        pull: &mut super::ShmPuller,
        rq: &mut super::ShmRequester,
        rp: &mut super::ShmReplier,
    ) {
        is_send(&p.send(b"", b""));
        is_send(&s.recv());
        is_send(&push.send(b""));
        is_send(&pull.recv());
        is_send(&rq.request(b""));
        is_send(&rp.recv());
    }
}

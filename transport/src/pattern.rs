//! The three patterns as traits every backend implements. The conformance
//! suite (`tests/conformance.rs`) is generic over [`Wire`], so backends
//! cannot drift apart; code above this crate can be too.
//!
//! Each method's future is `Send` (it runs inside `tokio::spawn`), and each
//! is cancel-safe: dropped before it completes, a receive took nothing, and
//! a send sent nothing unless it was already waiting for room in a full
//! work queue (shm push/pull: waiting for room and taking it are one step
//! in an MPMC ring), in which case it goes on in the background and ends
//! (sent, timed out, or given up because the queue's puller moved or the
//! pusher was dropped) before the endpoint's next send; that outcome is
//! reported to nobody. A request may still be served after it was
//! cancelled; its late reply is dropped.

use crate::address::Address;
use crate::error::Result;
use crate::frame::Frame;
use crate::options::Options;
use crate::reply::Reply;
use std::future::Future;
use std::time::Duration;

/// One wire: how to make each pattern's endpoints on it.
pub trait Wire: Send + Sync + 'static {
    /// Publishing end.
    type Publisher: Publisher;
    /// Subscribing end.
    type Subscriber: Subscriber;
    /// Pushing end.
    type Pusher: Pusher;
    /// Pulling end.
    type Puller: Puller;
    /// Asking end.
    type Requester: Requester;
    /// Answering end.
    type Replier: Replier;

    /// Binds a publisher at `address`.
    fn bind_publisher(
        address: &Address,
        opts: &Options,
    ) -> impl Future<Output = Result<Self::Publisher>> + Send;
    /// Connects a subscriber to the publisher at `address`.
    fn connect_subscriber(
        address: &Address,
        opts: &Options,
    ) -> impl Future<Output = Result<Self::Subscriber>> + Send;
    /// Binds a puller (and the queue) at `address`.
    fn bind_puller(
        address: &Address,
        opts: &Options,
    ) -> impl Future<Output = Result<Self::Puller>> + Send;
    /// Connects another puller to the queue at `address`.
    fn connect_puller(
        address: &Address,
        opts: &Options,
    ) -> impl Future<Output = Result<Self::Puller>> + Send;
    /// Connects a pusher to the queue at `address`.
    fn connect_pusher(
        address: &Address,
        opts: &Options,
    ) -> impl Future<Output = Result<Self::Pusher>> + Send;
    /// Binds a replier at `address`.
    fn bind_replier(
        address: &Address,
        opts: &Options,
    ) -> impl Future<Output = Result<Self::Replier>> + Send;
    /// Connects a requester to the replier at `address`.
    fn connect_requester(
        address: &Address,
        opts: &Options,
    ) -> impl Future<Output = Result<Self::Requester>> + Send;
}

/// Sends every message to every subscriber, waiting for the slowest
/// (nothing is dropped).
pub trait Publisher: Send {
    /// The address subscribers connect to: the one bound, with what
    /// binding settled (the port chosen for port 0; QUIC's certificate
    /// pin).
    fn address(&self) -> Address;
    /// Sends `payload` under `topic`.
    fn send(&mut self, topic: &[u8], payload: &[u8]) -> impl Future<Output = Result<()>> + Send;
    /// Waits until at least `n` subscribers receive.
    fn wait_for_subscribers(
        &mut self,
        n: u32,
        timeout: Duration,
    ) -> impl Future<Output = Result<u32>> + Send;
}

/// Receives every message a publisher sends under a subscribed topic.
pub trait Subscriber: Send {
    /// Receives only topics starting with `prefix` (several: any of them;
    /// none: everything).
    fn subscribe(&mut self, prefix: &[u8]);
    /// The next message; `Error::Closed` once the publisher closed and
    /// everything was received.
    fn recv(&mut self) -> impl Future<Output = Result<Frame<'_>>> + Send;
}

/// Queues messages, each for exactly one puller.
pub trait Pusher: Send {
    /// Queues `payload`. On some wires (nng) the message may still be on
    /// its way when this returns: see [`flush`](Self::flush).
    fn send(&mut self, payload: &[u8]) -> impl Future<Output = Result<()>> + Send;
    /// Waits until the queue holds everything sent so far (or it was
    /// taken), so that only the queue's own death can lose it. Wires whose
    /// `send` returns only once the queue holds the message have nothing
    /// to wait for (the default); so has nng's own PUSH on a `?native`
    /// address, which acknowledges nothing (see `nng::native`).
    fn flush(&mut self) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }
}

/// Takes messages from a queue (no other puller gets them).
pub trait Puller: Send {
    /// The queue's address, for pushers and other pullers (as
    /// [`Publisher::address`]).
    fn address(&self) -> Address;
    /// The next message.
    fn recv(&mut self) -> impl Future<Output = Result<Frame<'_>>> + Send;
}

/// Asks and waits for the answer.
pub trait Requester: Send {
    /// Sends `payload` and waits for its reply.
    fn request(&mut self, payload: &[u8]) -> impl Future<Output = Result<Frame<'_>>> + Send;

    /// [`request`](Self::request) for a caller on a plain thread, driving
    /// `rt` (the endpoint's runtime) while it waits, giving up after
    /// `timeout` (`None`: as long as the replier lives). What
    /// [`Blocking::request`](crate::blocking::Blocking::request) calls. The
    /// default blocks on `rt`; a wire whose operations the calling thread
    /// can wait for itself (nng) overrides it, sparing a wake-up per round
    /// trip.
    fn request_blocking(
        &mut self,
        rt: &tokio::runtime::Runtime,
        payload: &[u8],
        timeout: Option<Duration>,
    ) -> Result<Frame<'_>> {
        crate::blocking::within(rt, timeout, "request", self.request(payload))
    }
}

/// Answers requests, each reply going to its asker.
pub trait Replier: Send {
    /// The address requesters connect to (as [`Publisher::address`]).
    fn address(&self) -> Address;
    /// Receives one request and replies with what `answer` makes of its
    /// bytes.
    fn serve_one<F>(&mut self, answer: F) -> impl Future<Output = Result<()>> + Send
    where
        F: FnOnce(&[u8]) -> Vec<u8> + Send;
    /// Receives one request and replies with what `answer` writes into a
    /// [`Reply`]: memory the wire sends from where it can (nng's message,
    /// QUIC's stream buffer), so the answer is not copied again after it
    /// was written. Wires without such memory (the default) collect it in
    /// a `Vec` and reply as [`serve_one`](Self::serve_one).
    fn serve_one_into<F>(&mut self, answer: F) -> impl Future<Output = Result<()>> + Send
    where
        F: FnOnce(&[u8], &mut Reply<'_>) + Send,
    {
        self.serve_one(move |req| {
            let mut buf = Vec::new();
            answer(req, &mut Reply::new(&mut buf));
            buf
        })
    }

    /// [`serve_one`](Self::serve_one) for a caller on a plain thread,
    /// driving `rt` (the endpoint's runtime) while it waits. What
    /// [`Blocking::serve_one`](crate::blocking::Blocking::serve_one)
    /// calls. The default blocks on `rt`; a wire whose operations the
    /// calling thread can wait for itself (nng) overrides it.
    fn serve_one_blocking<F>(&mut self, rt: &tokio::runtime::Runtime, answer: F) -> Result<()>
    where
        F: FnOnce(&[u8]) -> Vec<u8> + Send,
    {
        rt.block_on(self.serve_one(answer))
    }

    /// [`serve_one_into`](Self::serve_one_into) for a caller on a plain
    /// thread, as [`serve_one_blocking`](Self::serve_one_blocking).
    fn serve_one_into_blocking<F>(&mut self, rt: &tokio::runtime::Runtime, answer: F) -> Result<()>
    where
        F: FnOnce(&[u8], &mut Reply<'_>) + Send,
    {
        rt.block_on(self.serve_one_into(answer))
    }
}

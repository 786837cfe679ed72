//! The nng endpoints a user holds: each speaks shoal's protocols over nng
//! (flow-controlled publish/subscribe, an acknowledged work queue), or
//! nng's own when the address ends in `?native` ([`super::native`]), so
//! switching between them is a change of URL, not of code.
//!
//! ```no_run
//! # async fn f() -> shoal_transport::Result<()> {
//! use shoal_transport::{NngPuller, Options};
//! // A queue that pynng's or nngcat's PUSH sockets can dial.
//! let mut q = NngPuller::bind(&"nng+tcp://127.0.0.1:5555?native".parse()?, &Options::default())?;
//! let m = q.recv().await?;
//! println!("{} bytes", m.len());
//! # Ok(()) }
//! ```

use super::native::{NativePublisher, NativePuller, NativePusher, NativeSubscriber};
use super::pubsub::{FlowPublisher, FlowSubscriber};
use super::pushpull::{QueuePuller, QueuePusher};
use crate::address::Address;
use crate::error::Result;
use crate::frame::Frame;
use crate::options::Options;
use std::time::Duration;

/// Publishing end over nng: [`FlowPublisher`] (every subscriber gets
/// every message), or [`NativePublisher`] for a `?native` address.
#[derive(Debug)]
pub struct NngPublisher(PubKind);

#[derive(Debug)]
enum PubKind {
    Flow(FlowPublisher),
    Native(NativePublisher),
}

impl NngPublisher {
    /// Binds a publisher at `address` (inside a tokio runtime).
    pub fn bind(address: &Address, opts: &Options) -> Result<NngPublisher> {
        Ok(NngPublisher(if address.is_native() {
            PubKind::Native(NativePublisher::bind(address, opts)?)
        } else {
            PubKind::Flow(FlowPublisher::bind(address, opts)?)
        }))
    }

    /// The address bound (with the port chosen when it asked for port 0).
    pub fn address(&self) -> Address {
        match &self.0 {
            PubKind::Flow(p) => p.address(),
            PubKind::Native(p) => p.address(),
        }
    }

    /// Sends `payload` under `topic` (see the two kinds for what waits).
    pub async fn send(&mut self, topic: &[u8], payload: &[u8]) -> Result<()> {
        match &mut self.0 {
            PubKind::Flow(p) => p.send(topic, payload).await,
            PubKind::Native(p) => p.send(topic, payload).await,
        }
    }

    /// Waits until at least `n` subscribers are there.
    pub async fn wait_for_subscribers(&mut self, n: u32, timeout: Duration) -> Result<u32> {
        match &mut self.0 {
            PubKind::Flow(p) => p.wait_for_subscribers(n, timeout).await,
            PubKind::Native(p) => p.wait_for_subscribers(n, timeout).await,
        }
    }
}

/// Subscribing end over nng: [`FlowSubscriber`], or [`NativeSubscriber`]
/// for a `?native` address.
#[derive(Debug)]
pub struct NngSubscriber(SubKind);

#[derive(Debug)]
enum SubKind {
    Flow(FlowSubscriber),
    Native(NativeSubscriber),
}

impl NngSubscriber {
    /// Connects to the publisher at `address`.
    pub async fn connect(address: &Address, opts: &Options) -> Result<NngSubscriber> {
        Ok(NngSubscriber(if address.is_native() {
            SubKind::Native(NativeSubscriber::connect(address, opts).await?)
        } else {
            SubKind::Flow(FlowSubscriber::connect(address, opts).await?)
        }))
    }

    /// Receives only topics starting with `prefix` (several: any of them;
    /// none: everything).
    pub fn subscribe(&mut self, prefix: &[u8]) {
        match &mut self.0 {
            SubKind::Flow(s) => s.subscribe(prefix),
            SubKind::Native(s) => s.subscribe(prefix),
        }
    }

    /// The next message under a subscribed topic.
    pub async fn recv(&mut self) -> Result<Frame<'static>> {
        match &mut self.0 {
            SubKind::Flow(s) => s.recv().await,
            SubKind::Native(s) => s.recv().await,
        }
    }
}

/// Pushing end over nng: [`QueuePusher`], or [`NativePusher`] for a
/// `?native` address.
#[derive(Debug)]
pub struct NngPusher(PushKind);

#[derive(Debug)]
enum PushKind {
    Queue(QueuePusher),
    Native(NativePusher),
}

impl NngPusher {
    /// Connects a pusher to the queue (or PULL socket) at `address`.
    pub async fn connect(address: &Address, opts: &Options) -> Result<NngPusher> {
        Ok(NngPusher(if address.is_native() {
            PushKind::Native(NativePusher::connect(address, opts).await?)
        } else {
            PushKind::Queue(QueuePusher::connect(address, opts).await?)
        }))
    }

    /// Sends `payload` to one puller (see [`QueuePusher::send`]: it may
    /// still be on its way when this returns).
    pub async fn send(&mut self, payload: &[u8]) -> Result<()> {
        match &mut self.0 {
            PushKind::Queue(p) => p.send(payload).await,
            PushKind::Native(p) => p.send(payload).await,
        }
    }

    /// Waits until the queue has taken everything sent
    /// ([`QueuePusher::flush`]); a native pusher has nothing to wait for
    /// (nng's PUSH acknowledges nothing).
    pub async fn flush(&mut self) -> Result<()> {
        match &mut self.0 {
            PushKind::Queue(p) => p.flush().await,
            PushKind::Native(_) => Ok(()),
        }
    }
}

/// Pulling end over nng: [`QueuePuller`], or [`NativePuller`] for a
/// `?native` address.
#[derive(Debug)]
pub struct NngPuller(PullKind);

#[derive(Debug)]
enum PullKind {
    Queue(QueuePuller),
    Native(NativePuller),
}

impl NngPuller {
    /// Binds a puller (and, for shoal's protocol, the queue) at `address`.
    pub fn bind(address: &Address, opts: &Options) -> Result<NngPuller> {
        Ok(NngPuller(if address.is_native() {
            PullKind::Native(NativePuller::bind(address, opts)?)
        } else {
            PullKind::Queue(QueuePuller::bind(address, opts)?)
        }))
    }

    /// Connects another puller to the queue at `address` (`?native`: dials
    /// a PUSH socket that listens there).
    pub async fn connect(address: &Address, opts: &Options) -> Result<NngPuller> {
        Ok(NngPuller(if address.is_native() {
            PullKind::Native(NativePuller::connect(address, opts).await?)
        } else {
            PullKind::Queue(QueuePuller::connect(address, opts).await?)
        }))
    }

    /// The queue's address.
    pub fn address(&self) -> Address {
        match &self.0 {
            PullKind::Queue(p) => p.address(),
            PullKind::Native(p) => p.address(),
        }
    }

    /// The next message.
    pub async fn recv(&mut self) -> Result<Frame<'static>> {
        match &mut self.0 {
            PullKind::Queue(p) => p.recv().await,
            PullKind::Native(p) => p.recv().await,
        }
    }
}

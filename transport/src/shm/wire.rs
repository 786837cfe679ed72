//! [`Shm`]: the shared-memory backend as a [`Wire`].

use super::{ShmPublisher, ShmPuller, ShmPusher, ShmReplier, ShmRequester, ShmSubscriber};
use crate::address::Address;
use crate::error::Result;
use crate::frame::Frame;
use crate::options::Options;
use crate::pattern::{Publisher, Puller, Pusher, Replier, Requester, Subscriber, Wire};
use std::time::Duration;

/// The shared-memory wire (`shm://NAME`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Shm;

impl Wire for Shm {
    type Publisher = ShmPublisher;
    type Subscriber = ShmSubscriber;
    type Pusher = ShmPusher;
    type Puller = ShmPuller;
    type Requester = ShmRequester;
    type Replier = ShmReplier;

    async fn bind_publisher(address: &Address, opts: &Options) -> Result<ShmPublisher> {
        ShmPublisher::bind(address, opts)
    }
    async fn connect_subscriber(address: &Address, opts: &Options) -> Result<ShmSubscriber> {
        ShmSubscriber::connect(address, opts).await
    }
    async fn bind_puller(address: &Address, opts: &Options) -> Result<ShmPuller> {
        ShmPuller::bind(address, opts)
    }
    async fn connect_puller(address: &Address, opts: &Options) -> Result<ShmPuller> {
        ShmPuller::connect(address, opts).await
    }
    async fn connect_pusher(address: &Address, opts: &Options) -> Result<ShmPusher> {
        ShmPusher::connect(address, opts).await
    }
    async fn bind_replier(address: &Address, opts: &Options) -> Result<ShmReplier> {
        ShmReplier::bind(address, opts)
    }
    async fn connect_requester(address: &Address, opts: &Options) -> Result<ShmRequester> {
        ShmRequester::connect(address, opts).await
    }
}

impl Publisher for ShmPublisher {
    fn address(&self) -> Address {
        ShmPublisher::address(self)
    }
    async fn send(&mut self, topic: &[u8], payload: &[u8]) -> Result<()> {
        ShmPublisher::send(self, topic, payload).await
    }
    async fn wait_for_subscribers(&mut self, n: u32, timeout: Duration) -> Result<u32> {
        ShmPublisher::wait_for_subscribers(self, n, timeout).await
    }
}

impl Subscriber for ShmSubscriber {
    fn subscribe(&mut self, prefix: &[u8]) {
        ShmSubscriber::subscribe(self, prefix)
    }
    async fn recv(&mut self) -> Result<Frame<'_>> {
        ShmSubscriber::recv(self).await
    }
}

impl Pusher for ShmPusher {
    async fn send(&mut self, payload: &[u8]) -> Result<()> {
        ShmPusher::send(self, payload).await
    }
}

impl Puller for ShmPuller {
    fn address(&self) -> Address {
        // Every puller made through `Wire` was bound or connected to an
        // address; only a requester's private reply queue has none.
        self.address().cloned().unwrap_or_else(|| Address::Shm {
            name: String::new(),
        })
    }
    async fn recv(&mut self) -> Result<Frame<'_>> {
        ShmPuller::recv(self).await
    }
}

impl Requester for ShmRequester {
    async fn request(&mut self, payload: &[u8]) -> Result<Frame<'_>> {
        ShmRequester::request(self, payload).await
    }
}

impl Replier for ShmReplier {
    fn address(&self) -> Address {
        self.address().cloned().unwrap_or_else(|| Address::Shm {
            name: String::new(),
        })
    }
    async fn serve_one<F>(&mut self, answer: F) -> Result<()>
    where
        F: FnOnce(&[u8]) -> Vec<u8> + Send,
    {
        // The request (a ring guard, not `Send`) is dropped before the
        // reply is awaited, so the future stays `Send`.
        let (to, id, reply) = {
            let (req, _) = self.recv().await?;
            (req.reply_to(), req.id(), answer(&req))
        };
        self.replies().reply_to(to, id, &reply).await
    }
}

//! [`Quic`]: the QUIC backend as a [`Wire`].

use super::{QuicPublisher, QuicPuller, QuicPusher, QuicReplier, QuicRequester, QuicSubscriber};
use crate::address::Address;
use crate::error::Result;
use crate::frame::Frame;
use crate::options::Options;
use crate::pattern::{Publisher, Puller, Pusher, Replier, Requester, Subscriber, Wire};
use crate::reply::Reply;
use std::time::Duration;

/// The QUIC wire (`quic://HOST:PORT?pin=HEX`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Quic;

impl Wire for Quic {
    type Publisher = QuicPublisher;
    type Subscriber = QuicSubscriber;
    type Pusher = QuicPusher;
    type Puller = QuicPuller;
    type Requester = QuicRequester;
    type Replier = QuicReplier;

    async fn bind_publisher(address: &Address, opts: &Options) -> Result<QuicPublisher> {
        QuicPublisher::bind(address, opts).await
    }
    async fn connect_subscriber(address: &Address, opts: &Options) -> Result<QuicSubscriber> {
        QuicSubscriber::connect(address, opts).await
    }
    async fn bind_puller(address: &Address, opts: &Options) -> Result<QuicPuller> {
        QuicPuller::bind(address, opts).await
    }
    async fn connect_puller(address: &Address, opts: &Options) -> Result<QuicPuller> {
        QuicPuller::connect(address, opts).await
    }
    async fn connect_pusher(address: &Address, opts: &Options) -> Result<QuicPusher> {
        QuicPusher::connect(address, opts).await
    }
    async fn bind_replier(address: &Address, opts: &Options) -> Result<QuicReplier> {
        QuicReplier::bind(address, opts).await
    }
    async fn connect_requester(address: &Address, opts: &Options) -> Result<QuicRequester> {
        QuicRequester::connect(address, opts).await
    }
}

impl Publisher for QuicPublisher {
    fn address(&self) -> Address {
        QuicPublisher::address(self)
    }
    async fn send(&mut self, topic: &[u8], payload: &[u8]) -> Result<()> {
        QuicPublisher::send(self, topic, payload).await
    }
    async fn wait_for_subscribers(&mut self, n: u32, timeout: Duration) -> Result<u32> {
        QuicPublisher::wait_for_subscribers(self, n, timeout).await
    }
}

impl Subscriber for QuicSubscriber {
    fn subscribe(&mut self, prefix: &[u8]) {
        QuicSubscriber::subscribe(self, prefix)
    }
    async fn recv(&mut self) -> Result<Frame<'_>> {
        QuicSubscriber::recv(self).await
    }
}

impl Pusher for QuicPusher {
    async fn send(&mut self, payload: &[u8]) -> Result<()> {
        QuicPusher::send(self, payload).await
    }
    async fn flush(&mut self) -> Result<()> {
        QuicPusher::flush(self).await
    }
}

impl Puller for QuicPuller {
    fn address(&self) -> Address {
        QuicPuller::address(self)
    }
    async fn recv(&mut self) -> Result<Frame<'_>> {
        QuicPuller::recv(self).await
    }
}

impl Requester for QuicRequester {
    async fn request(&mut self, payload: &[u8]) -> Result<Frame<'_>> {
        QuicRequester::request(self, payload).await
    }
}

impl Replier for QuicReplier {
    fn address(&self) -> Address {
        QuicReplier::address(self)
    }
    async fn serve_one<F>(&mut self, answer: F) -> Result<()>
    where
        F: FnOnce(&[u8]) -> Vec<u8> + Send,
    {
        QuicReplier::serve_one(self, |req| answer(req)).await
    }
    async fn serve_one_into<F>(&mut self, answer: F) -> Result<()>
    where
        F: FnOnce(&[u8], &mut Reply<'_>) + Send,
    {
        QuicReplier::serve_one_into(self, |req, out| answer(req, out)).await
    }
}

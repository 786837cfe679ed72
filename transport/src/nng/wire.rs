//! [`Nng`]: the nng backend as a [`Wire`].

use super::{NngPublisher, NngPuller, NngPusher, NngReplier, NngRequester, NngSubscriber};
use crate::address::Address;
use crate::error::Result;
use crate::frame::Frame;
use crate::options::Options;
use crate::pattern::{Publisher, Puller, Pusher, Replier, Requester, Subscriber, Wire};
use crate::reply::Reply;
use std::time::Duration;

/// The nng wire (`nng+ipc:///PATH`, `nng+tcp://HOST:PORT`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Nng;

impl Wire for Nng {
    type Publisher = NngPublisher;
    type Subscriber = NngSubscriber;
    type Pusher = NngPusher;
    type Puller = NngPuller;
    type Requester = NngRequester;
    type Replier = NngReplier;

    async fn bind_publisher(address: &Address, opts: &Options) -> Result<NngPublisher> {
        NngPublisher::bind(address, opts)
    }
    async fn connect_subscriber(address: &Address, opts: &Options) -> Result<NngSubscriber> {
        NngSubscriber::connect(address, opts).await
    }
    async fn bind_puller(address: &Address, opts: &Options) -> Result<NngPuller> {
        NngPuller::bind(address, opts)
    }
    async fn connect_puller(address: &Address, opts: &Options) -> Result<NngPuller> {
        NngPuller::connect(address, opts).await
    }
    async fn connect_pusher(address: &Address, opts: &Options) -> Result<NngPusher> {
        NngPusher::connect(address, opts).await
    }
    async fn bind_replier(address: &Address, opts: &Options) -> Result<NngReplier> {
        NngReplier::bind(address, opts)
    }
    async fn connect_requester(address: &Address, opts: &Options) -> Result<NngRequester> {
        NngRequester::connect(address, opts).await
    }
}

impl Publisher for NngPublisher {
    fn address(&self) -> Address {
        NngPublisher::address(self)
    }
    async fn send(&mut self, topic: &[u8], payload: &[u8]) -> Result<()> {
        NngPublisher::send(self, topic, payload).await
    }
    async fn wait_for_subscribers(&mut self, n: u32, timeout: Duration) -> Result<u32> {
        NngPublisher::wait_for_subscribers(self, n, timeout).await
    }
}

impl Subscriber for NngSubscriber {
    fn subscribe(&mut self, prefix: &[u8]) {
        NngSubscriber::subscribe(self, prefix)
    }
    async fn recv(&mut self) -> Result<Frame<'_>> {
        NngSubscriber::recv(self).await
    }
}

impl Pusher for NngPusher {
    async fn send(&mut self, payload: &[u8]) -> Result<()> {
        NngPusher::send(self, payload).await
    }
    async fn flush(&mut self) -> Result<()> {
        NngPusher::flush(self).await
    }
}

impl Puller for NngPuller {
    fn address(&self) -> Address {
        NngPuller::address(self)
    }
    async fn recv(&mut self) -> Result<Frame<'_>> {
        NngPuller::recv(self).await
    }
}

impl Requester for NngRequester {
    async fn request(&mut self, payload: &[u8]) -> Result<Frame<'_>> {
        NngRequester::request(self, payload).await
    }
    fn request_blocking(
        &mut self,
        rt: &tokio::runtime::Runtime,
        payload: &[u8],
        timeout: Option<std::time::Duration>,
    ) -> Result<Frame<'_>> {
        NngRequester::request_blocking(self, rt, payload, timeout)
    }
}

impl Replier for NngReplier {
    fn address(&self) -> Address {
        NngReplier::address(self)
    }
    async fn serve_one<F>(&mut self, answer: F) -> Result<()>
    where
        F: FnOnce(&[u8]) -> Vec<u8> + Send,
    {
        NngReplier::serve_one(self, |req| answer(req)).await
    }
    async fn serve_one_into<F>(&mut self, answer: F) -> Result<()>
    where
        F: FnOnce(&[u8], &mut Reply<'_>) + Send,
    {
        NngReplier::serve_one_into(self, |req, out| answer(req, out)).await
    }
    fn serve_one_blocking<F>(&mut self, rt: &tokio::runtime::Runtime, answer: F) -> Result<()>
    where
        F: FnOnce(&[u8]) -> Vec<u8> + Send,
    {
        NngReplier::serve_one_blocking(self, rt, |req, out| out.extend_from_slice(&answer(req)))
    }
    fn serve_one_into_blocking<F>(&mut self, rt: &tokio::runtime::Runtime, answer: F) -> Result<()>
    where
        F: FnOnce(&[u8], &mut Reply<'_>) + Send,
    {
        NngReplier::serve_one_blocking(self, rt, |req, out| answer(req, out))
    }
}

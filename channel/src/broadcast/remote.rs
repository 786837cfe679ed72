//! A broadcast reader on another host than the writer's: it reads what
//! the writer's network publisher sends (the same messages, in the same
//! order, as the ring's readers get), each message's sequence number in
//! its topic.

use super::{BroadcastOptions, Received};
use crate::error::{Error, Result};
use crate::handle::{Handle, Kind};
use crate::net::{self, NetFeed};
use std::time::Duration;

/// A remote reader: a subscriber to the writer's publisher.
pub(super) struct Remote {
    feed: NetFeed,
    recv_timeout: Option<Duration>,
}

impl Remote {
    /// Connects to the publisher `handle` names.
    pub(super) fn connect(handle: &Handle, opts: &BroadcastOptions) -> Result<Remote> {
        // Checks the kind and the build, as a local attach does.
        handle.ring(Kind::Broadcast)?;
        let url = handle.remote().ok_or_else(|| {
            Error::BadHandle(
                "the broadcast takes no readers on other hosts (its writer gave no remote address)"
                    .into(),
            )
        })?;
        let feed = NetFeed::connect(&net::address(url)?, &opts.net_options())?;
        Ok(Remote {
            feed,
            recv_timeout: opts.recv_timeout,
        })
    }

    /// See [`BroadcastReceiver::recv`](super::BroadcastReceiver::recv).
    pub(super) fn recv(&mut self) -> Result<Received> {
        match self.feed.recv_blocking(self.recv_timeout)? {
            Some(f) => Received::remote(f),
            None => Err(self.timed_out()),
        }
    }

    /// See [`BroadcastReceiver::try_recv`](super::BroadcastReceiver::try_recv).
    pub(super) fn try_recv(&mut self) -> Result<Option<Received>> {
        match self.feed.try_recv()? {
            Some(f) => Received::remote(f).map(Some),
            None => Ok(None),
        }
    }

    /// See [`BroadcastReceiver::recv_async`](super::BroadcastReceiver::recv_async).
    pub(super) async fn recv_async(&mut self) -> Result<Received> {
        let f = match self.recv_timeout {
            None => self.feed.recv().await?,
            Some(t) => match tokio::time::timeout(t, self.feed.recv()).await {
                Ok(f) => f?,
                Err(_) => return Err(self.timed_out()),
            },
        };
        Received::remote(f)
    }

    fn timed_out(&self) -> Error {
        Error::Timeout {
            what: "a broadcast message (remote)",
            after: self.recv_timeout.unwrap_or_default(),
        }
    }
}

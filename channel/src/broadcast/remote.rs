//! A broadcast reader on another host than the writer's: it reads what
//! the writer's network publisher sends (the same messages, in the same
//! order, as the ring's readers get), each message's sequence number in
//! its topic.

use super::hellos::Greeter;
use super::{BroadcastOptions, Received};
use crate::error::{Error, Result};
use crate::handle::{Handle, Kind};
use crate::net::{self, direct::NetFeed};
use shoal_shm_ring::CancelToken;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often a cancellable remote receive looks at its token.
const CANCEL_SLICE: Duration = Duration::from_millis(5);

/// A remote reader: a subscriber to the writer's publisher.
pub(super) struct Remote {
    feed: NetFeed,
    /// Messages received (the sequence number after the last one), which
    /// the writer is told every [`REPORT_EVERY`](super::hellos::REPORT_EVERY).
    got: Arc<AtomicU64>,
    recv_timeout: Option<Duration>,
}

impl Remote {
    /// Connects to the publisher `handle` names.
    pub(super) fn connect(handle: &Handle, index: u32, opts: &BroadcastOptions) -> Result<Remote> {
        // Checks the kind and the build, as a local attach does.
        handle.ring(Kind::Broadcast)?;
        let url = handle.remote().ok_or_else(|| {
            Error::BadHandle(
                "the broadcast takes no readers on other hosts (its writer gave no remote address)"
                    .into(),
            )
        })?;
        // The publisher's address, then where to say hello (if there).
        let (at, door) = match url.split_once(',') {
            Some((p, d)) => (p, Some(net::address(d)?)),
            None => (url, None),
        };
        let got = Arc::new(AtomicU64::new(0));
        let hello = door.map(|d| Greeter::new(d, index, got.clone()));
        let feed = NetFeed::connect(&net::address(at)?, &opts.net_options(), hello)?;
        Ok(Remote {
            feed,
            got,
            recv_timeout: opts.recv_timeout,
        })
    }

    /// See [`BroadcastReceiver::recv`](super::BroadcastReceiver::recv)
    /// (and `recv_cancellable`: `cancel` is looked at every few
    /// milliseconds).
    pub(super) fn recv(&mut self, cancel: Option<&CancelToken>) -> Result<Received> {
        let Some(cancel) = cancel else {
            return match self.feed.recv_blocking(self.recv_timeout)? {
                Some(f) => self.counted(Received::remote(f)),
                None => Err(self.timed_out()),
            };
        };
        let end = self
            .recv_timeout
            .and_then(|t| std::time::Instant::now().checked_add(t));
        loop {
            if cancel.is_cancelled() {
                return Err(Error::Cancelled {
                    what: "a broadcast message (remote)",
                });
            }
            let left = end.map(|e| e.saturating_duration_since(std::time::Instant::now()));
            let slice = left.map_or(CANCEL_SLICE, |l| l.min(CANCEL_SLICE));
            if let Some(f) = self.feed.recv_blocking(Some(slice))? {
                return self.counted(Received::remote(f));
            }
            if left.is_some_and(|l| l <= slice) {
                return Err(self.timed_out());
            }
        }
    }

    /// See [`BroadcastReceiver::try_recv`](super::BroadcastReceiver::try_recv).
    pub(super) fn try_recv(&mut self) -> Result<Option<Received>> {
        match self.feed.try_recv()? {
            Some(f) => self.counted(Received::remote(f)).map(Some),
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
        self.counted(Received::remote(f))
    }

    /// `r`, counted for the writer's log if received.
    fn counted(&self, r: Result<Received>) -> Result<Received> {
        if let Ok(m) = &r {
            self.got.store(m.seq().wrapping_add(1), Ordering::Relaxed);
        }
        r
    }

    fn timed_out(&self) -> Error {
        Error::Timeout {
            what: "a broadcast message (remote)",
            after: self.recv_timeout.unwrap_or_default(),
        }
    }
}

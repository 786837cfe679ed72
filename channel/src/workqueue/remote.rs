//! A producer or consumer on another host than its queue: it asks the
//! queue's bridge (see [`bridge`](super::bridge)) to put, claim, close
//! and take for it, over the network address the queue's handle carries.
//!
//! It joins at the bridge's door, then talks to a replier of its own
//! there, with a heartbeat beside it (every quarter of the lease) so the
//! bridge knows it lives. Waits longer than the bridge's cap are asked
//! again until the caller's own timeout ends, so a full or empty queue
//! costs one request per cap (200 ms), not a spin.

use super::wire::{self, Op, Role, Status};
use super::QueueOptions;
use crate::error::{Error, Result};
use crate::handle::{Handle, Kind};
use crate::net::ask::NetAsker;
use shoal_transport::OwnedFrame;
use std::time::{Duration, Instant};

/// Extra time a request is given past the wait it asks for: the network
/// both ways and the bridge's own work.
const SLACK: Duration = Duration::from_secs(10);

/// One remote endpoint: its connection to its replier at the bridge.
pub(crate) struct RemoteEnd {
    asker: NetAsker,
    /// The last request's sequence number.
    seq: u64,
    role: Role,
}

impl std::fmt::Debug for RemoteEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteEnd")
            .field("role", &self.role)
            .field("asker", &self.asker)
            .finish_non_exhaustive()
    }
}

/// How a wait asked of the bridge ended.
pub(crate) enum Waited {
    /// Done: a take's reply (its message after the head).
    Done(OwnedFrame),
    /// Not done within the caller's timeout.
    NotYet,
    /// The work is over (take).
    Finished,
}

impl RemoteEnd {
    /// Joins the queue `handle` names (a channel of `kind`) as `role`,
    /// with `head` before each message it puts.
    pub(crate) fn join(
        handle: &Handle,
        kind: Kind,
        role: Role,
        head: [u8; 16],
        opts: &QueueOptions,
    ) -> Result<RemoteEnd> {
        // Checks the kind and the build, as a local attach does.
        handle.ring(kind)?;
        let url = handle.remote().ok_or_else(|| {
            Error::BadHandle(format!(
                "the {} is on another host and takes no remote peers (it was made without QueueOptions::remote)",
                kind.name()
            ))
        })?;
        let net = opts.net_options();
        let door_at = crate::net::address(url)?;
        let mut door = NetAsker::connect(&door_at, &net)?;
        let join = wire::Join {
            version: wire::VERSION,
            role,
            kind: super::bridge::kind_byte(kind),
            pid: std::process::id(),
            host: crate::gather::host_id(),
            head,
            format: crate::handle::format(),
        };
        let mut req = wire::request_head(Op::Join, 0, 1).to_vec();
        req.extend_from_slice(&join.encode());
        let got = door.ask(req, SLACK.max(net.connect_timeout))?;
        let r = decode(&got)?;
        let at = match r.status {
            Status::Ok => std::str::from_utf8(r.body)
                .map_err(|_| malformed("a join reply whose address is not text", r.body.len()))?
                .to_string(),
            _ => return Err(status_error(&r, Duration::ZERO)),
        };
        drop(door);
        let mut asker = NetAsker::connect(&crate::net::address(&at)?, &net)?;
        asker.heartbeat(wire::request_head(Op::Ping, 0, 0).to_vec(), opts.lease / 4);
        Ok(RemoteEnd {
            asker,
            seq: 0,
            role,
        })
    }

    /// A request for `op` waiting up to `wait` on the bridge, with `body`.
    fn request(&mut self, op: Op, wait: Duration, body: &[&[u8]]) -> (Vec<u8>, Duration) {
        self.seq += 1;
        let wait = wait.min(super::bridge::WAIT_CAP);
        let ms = u32::try_from(wait.as_millis()).unwrap_or(u32::MAX);
        let n = body.iter().map(|b| b.len()).sum::<usize>();
        let mut req = Vec::with_capacity(wire::HEAD + n);
        req.extend_from_slice(&wire::request_head(op, ms, self.seq));
        for b in body {
            req.extend_from_slice(b);
        }
        (req, wait + SLACK)
    }

    /// Asks `op` once, waiting up to `wait` (at most the cap) on the
    /// bridge.
    fn once(&mut self, op: Op, wait: Duration, body: &[&[u8]]) -> Result<OwnedFrame> {
        let (req, limit) = self.request(op, wait, body);
        self.asker.ask(req, limit)
    }

    /// [`once`](Self::once), awaited.
    async fn once_async(&mut self, op: Op, wait: Duration, body: &[&[u8]]) -> Result<OwnedFrame> {
        let (req, limit) = self.request(op, wait, body);
        self.asker.ask_async(req, limit).await
    }

    /// Asks `op` until it is done, the work is over, or `timeout` ends
    /// (`None`: as long as it takes; zero: one try).
    pub(crate) fn wait_for(
        &mut self,
        op: Op,
        body: &[&[u8]],
        timeout: Option<Duration>,
    ) -> Result<Waited> {
        let end = timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            let left = end.map_or(super::bridge::WAIT_CAP, |e| {
                e.saturating_duration_since(Instant::now())
            });
            let got = self.once(op, left, body)?;
            match settle(got, timeout)? {
                Waited::NotYet if end.is_none_or(|e| Instant::now() < e) => continue,
                w => return Ok(w),
            }
        }
    }

    /// [`wait_for`](Self::wait_for), awaited. Cancel-safe up to what the
    /// network holds: dropped while a request is on its way, that request
    /// is still done (a put may land) and its answer dropped.
    pub(crate) async fn wait_for_async(
        &mut self,
        op: Op,
        body: &[&[u8]],
        timeout: Option<Duration>,
    ) -> Result<Waited> {
        let end = timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            let left = end.map_or(super::bridge::WAIT_CAP, |e| {
                e.saturating_duration_since(Instant::now())
            });
            let got = self.once_async(op, left, body).await?;
            match settle(got, timeout)? {
                Waited::NotYet if end.is_none_or(|e| Instant::now() < e) => continue,
                w => return Ok(w),
            }
        }
    }

    /// Asks `op` (claim, close) and expects it done.
    pub(crate) fn simple(&mut self, op: Op, body: &[&[u8]]) -> Result<()> {
        let got = self.once(op, Duration::ZERO, body)?;
        let r = decode(&got)?;
        match r.status {
            Status::Ok => Ok(()),
            _ => Err(status_error(&r, Duration::ZERO)),
        }
    }
}

impl Drop for RemoteEnd {
    /// Says goodbye, so the bridge drops the proxy now (a producer owing
    /// messages makes consumers end with `ProducersLost`, as a local one
    /// dropped owing does); a bridge that does not answer soon is left to
    /// notice the silence.
    fn drop(&mut self) {
        let bye = wire::request_head(Op::Bye, 0, 0).to_vec();
        let _ = self.asker.ask(bye, Duration::from_secs(1));
    }
}

/// A reply's status as a wait's outcome.
fn settle(got: OwnedFrame, timeout: Option<Duration>) -> Result<Waited> {
    let r = decode(&got)?;
    match r.status {
        Status::Ok => Ok(Waited::Done(got)),
        Status::NotYet => Ok(Waited::NotYet),
        Status::Finished => Ok(Waited::Finished),
        _ => Err(status_error(&r, timeout.unwrap_or_default())),
    }
}

/// A reply, read.
fn decode(f: &OwnedFrame) -> Result<wire::Reply<'_>> {
    wire::reply(f).map_err(|what| malformed(what, f.len()))
}

fn malformed(what: &'static str, len: usize) -> Error {
    Error::Malformed { what, len }
}

/// The error a reply's status stands for.
fn status_error(r: &wire::Reply<'_>, waited: Duration) -> Error {
    let text = || String::from_utf8_lossy(r.body).into_owned();
    match r.status {
        Status::Closed => Error::Closed,
        Status::Lost => Error::ProducersLost {
            lost: r.b,
            pid: r.a,
        },
        Status::Incompatible => Error::Incompatible {
            ours: crate::handle::format().to_string(),
            theirs: text(),
        },
        Status::WrongKind => Error::Remote(format!("the channel is a {}", text())),
        Status::NotYet => Error::Timeout {
            what: "the work queue (remote)",
            after: waited,
        },
        Status::Failed => Error::Remote(text()),
        Status::Ok | Status::Finished => Error::Remote("an unexpected reply".into()),
    }
}

/// The message of a take's reply: the bytes after its head, 16-byte
/// aligned (copied when the network buffer is not).
pub(crate) fn message(f: OwnedFrame) -> super::consumer::NetMessage {
    super::consumer::NetMessage::new(f, wire::HEAD)
}

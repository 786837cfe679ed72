//! A work queue's consumer, and what it takes.

use super::remote::{NetMessage, RemoteTake, Took};
use super::{expected_tag, QueueOptions};
use crate::error::{Error, Result};
use crate::handle::{Handle, Kind};
use crate::ready::{self, Ready};
use rkyv::api::high::HighValidator;
use rkyv::bytecheck::CheckBytes;
use shoal_shm_ring::{Error as RingError, MpmcConsumer, TakeGuard, Wait};
use std::ops::Deref;
use std::time::Duration;

/// A consumer of a [`WorkQueue`](crate::WorkQueue), in any process.
///
/// [`take`](Self::take) returns `None` exactly when the work is over:
/// the queue was closed, every claimed message was put, and every message
/// put was taken (by some consumer).
///
/// ```
/// use shoal_channel::{QueueOptions, TryTake, WorkQueue};
/// let q = WorkQueue::create(&QueueOptions::default())?;
/// let (mut p, mut c) = (q.producer()?, q.consumer()?);
/// assert!(matches!(c.try_take()?, TryTake::Empty));
/// p.put(b"a")?;
/// p.close()?;
/// assert!(matches!(c.try_take()?, TryTake::Taken(t) if &*t == b"a"));
/// assert!(matches!(c.try_take()?, TryTake::Finished));
/// assert!(c.take()?.is_none());
/// # Ok::<(), shoal_channel::Error>(())
/// ```
pub struct Consumer {
    flavor: Flavor,
    take_timeout: Option<Duration>,
}

/// Where a consumer takes from.
// The local flavour is the hot path: not boxed (the remote one is).
#[allow(clippy::large_enum_variant)]
enum Flavor {
    /// The queue's ring, on this host.
    Local(Local),
    /// The queue's bridge, on another host.
    Remote(Box<RemoteTake>),
}

/// A consumer on the queue's host.
struct Local {
    ring: MpmcConsumer,
    /// Bytes before every message (a gather's sender header).
    skip: usize,
    /// Awaited by `take_async` while the queue is empty (made on first use).
    ready: Option<Ready>,
    liveness: Duration,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.flavor {
            Flavor::Local(l) => f
                .debug_struct("Consumer")
                .field("ring", &l.ring)
                .finish_non_exhaustive(),
            Flavor::Remote(r) => f.debug_struct("Consumer").field("remote", r).finish(),
        }
    }
}

/// A message taken from the queue: in place in shared memory (the room it
/// holds goes back to the producers when it is dropped), or, for a
/// consumer on another host, in the network buffer it came in.
pub struct Taken<'a> {
    bytes: Bytes<'a>,
    /// Bytes of header before the message.
    skip: usize,
}

/// Where a taken message's bytes are.
enum Bytes<'a> {
    /// A ring record, held.
    Ring(TakeGuard<'a>),
    /// A message that came over the network.
    Net(NetMessage),
}

impl std::fmt::Debug for Taken<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Taken").field("len", &self.len()).finish()
    }
}

impl Deref for Taken<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.bytes {
            // A record shorter than its header was refused when taken.
            Bytes::Ring(g) => g.get(self.skip..).unwrap_or_default(),
            Bytes::Net(m) => m.bytes(),
        }
    }
}

impl<'a> Taken<'a> {
    /// A taken record with `skip` bytes of header, refused (and released)
    /// when shorter than that: a peer that wrote it did not speak this
    /// channel's protocol.
    fn new(guard: TakeGuard<'a>, skip: usize) -> Result<Taken<'a>> {
        if guard.len() < skip {
            return Err(Error::Malformed {
                what: "a message shorter than its sender header",
                len: guard.len(),
            });
        }
        Ok(Taken {
            bytes: Bytes::Ring(guard),
            skip,
        })
    }

    /// A message a remote consumer received.
    fn net(m: NetMessage) -> Taken<'a> {
        Taken {
            bytes: Bytes::Net(m),
            skip: 0,
        }
    }

    /// The header before the message (empty but in a gather's reader,
    /// which is always local).
    pub(crate) fn head(&self) -> &[u8] {
        match &self.bytes {
            Bytes::Ring(g) => g.get(..self.skip).unwrap_or_default(),
            Bytes::Net(_) => &[],
        }
    }
}

impl Taken<'_> {
    /// The message as an archived `T` (see
    /// [`Producer::put_value`](crate::Producer::put_value)), validated
    /// first (bytecheck), read in place without copying: the message
    /// starts 16-byte aligned in the queue's memory (or, taken on another
    /// host, in its network buffer).
    ///
    /// Validation covers any bytes a correct or buggy peer wrote; like any
    /// reader of shared memory, it cannot cover a hostile process of the
    /// same user that rewrites the message after the check.
    pub fn archived<T>(&self) -> Result<&T::Archived>
    where
        T: rkyv::Archive,
        T::Archived: for<'b> CheckBytes<HighValidator<'b, rkyv::rancor::Error>>,
    {
        crate::archive::access::<T>(self)
    }

    /// The message as an archived `T`, without validation.
    ///
    /// # Safety
    /// The bytes must be a valid archive of `T` written by a trusted build
    /// with this build's rkyv format (the queue's format tag checks the
    /// format, not the type), and `T::Archived` must need at most 16-byte
    /// alignment.
    pub unsafe fn archived_unchecked<T: rkyv::Archive>(&self) -> &T::Archived {
        // SAFETY: the caller vouches for the bytes and the alignment the
        // type needs; the message starts 16-byte aligned (after the ring's
        // 16-byte record header, at the start of an overflow segment, or
        // where `RemoteTake::unpack` checked or copied it), and the guard or
        // the buffer keeps it in place while the reference lives.
        unsafe { rkyv::access_unchecked::<T::Archived>(self) }
    }
}

/// What [`Consumer::try_take`] found.
#[derive(Debug)]
pub enum TryTake<'a> {
    /// A message.
    Taken(Taken<'a>),
    /// Nothing now; more may come.
    Empty,
    /// The work is over: nothing will ever come again.
    Finished,
}

/// A ring error on a take, as the caller should see it: the end of the
/// work is `Ok(None)`.
fn take_end(e: RingError, waited: Option<Duration>) -> Result<()> {
    match e {
        RingError::Finished => Ok(()),
        // A zero timeout is a try that found nothing.
        RingError::Timeout | RingError::WouldBlock => Err(Error::Timeout {
            what: "a message from the work queue",
            after: waited.unwrap_or_default(),
        }),
        e => Err(e.into()),
    }
}

impl Consumer {
    /// Attaches to the queue `handle` names, with default options.
    pub fn attach(handle: &Handle) -> Result<Consumer> {
        Consumer::attach_with(handle, &QueueOptions::default())
    }

    /// Attaches with `opts` (its timeouts and peer options; the sizes are
    /// the queue's). A queue made on another host that takes remote
    /// peers is reached through its bridge (see
    /// [`attach_remote`](Self::attach_remote)).
    pub fn attach_with(handle: &Handle, opts: &QueueOptions) -> Result<Consumer> {
        if handle.is_elsewhere() && handle.remote().is_some() {
            return Consumer::attach_remote(handle, opts);
        }
        Consumer::attach_kind(handle, opts, Kind::WorkQueue, 0)
    }

    /// Attaches through the queue's bridge, over the network, wherever
    /// this process is (the queue must take remote peers:
    /// [`QueueOptions::remote`]). A message handed to a consumer counts
    /// as taken: one that dies holding it loses it, as a local one does.
    pub fn attach_remote(handle: &Handle, opts: &QueueOptions) -> Result<Consumer> {
        let end = RemoteTake::join(handle, opts)?;
        Ok(Consumer {
            flavor: Flavor::Remote(Box::new(end)),
            take_timeout: opts.take_timeout,
        })
    }

    /// Attaches to a channel of `kind` built on a work queue's ring, whose
    /// messages start with `skip` bytes of header.
    pub(crate) fn attach_kind(
        handle: &Handle,
        opts: &QueueOptions,
        kind: Kind,
        skip: usize,
    ) -> Result<Consumer> {
        let ring = handle.ring(kind)?;
        let ring = super::attach(|| {
            MpmcConsumer::attach_with(&ring, opts.peer, Some(expected_tag(kind)))
        })?;
        Ok(Consumer {
            flavor: Flavor::Local(Local {
                ring,
                skip,
                ready: None,
                liveness: opts.peer.liveness_interval,
            }),
            take_timeout: opts.take_timeout,
        })
    }

    /// Whether this consumer reaches its queue over the network.
    pub fn is_remote(&self) -> bool {
        matches!(self.flavor, Flavor::Remote(_))
    }

    /// Takes the next message, waiting for one (up to the take timeout);
    /// `None` once the work is over.
    pub fn take(&mut self) -> Result<Option<Taken<'_>>> {
        self.take_waiting(self.take_timeout)
    }

    /// Takes the next message, waiting up to `timeout` for one (whatever
    /// the options' take timeout); `None` once the work is over.
    pub fn take_within(&mut self, timeout: Duration) -> Result<Option<Taken<'_>>> {
        self.take_waiting(Some(timeout))
    }

    /// Takes the next message, waiting up to `timeout` (`None`: as long
    /// as it takes).
    fn take_waiting(&mut self, timeout: Option<Duration>) -> Result<Option<Taken<'_>>> {
        match &mut self.flavor {
            Flavor::Local(l) => {
                let wait = match timeout {
                    Some(t) => Wait::timeout(t),
                    None => Wait::forever(),
                };
                let skip = l.skip;
                match l.ring.take_with(wait) {
                    Ok(guard) => Taken::new(guard, skip).map(Some),
                    Err(e) => take_end(e, timeout).map(|()| None),
                }
            }
            Flavor::Remote(r) => remote_taken(r.take(timeout)?, timeout),
        }
    }

    /// Takes the next message if there is one now.
    pub fn try_take(&mut self) -> Result<TryTake<'_>> {
        match &mut self.flavor {
            Flavor::Local(l) => {
                let skip = l.skip;
                match l.ring.try_take() {
                    Ok(Some(guard)) => Taken::new(guard, skip).map(TryTake::Taken),
                    Ok(None) => Ok(TryTake::Empty),
                    Err(e) => take_end(e, None).map(|()| TryTake::Finished),
                }
            }
            Flavor::Remote(r) => Ok(match r.take(Some(Duration::ZERO))? {
                Took::Msg(m) => TryTake::Taken(Taken::net(m)),
                Took::Empty => TryTake::Empty,
                Took::Finished => TryTake::Finished,
            }),
        }
    }

    /// Takes the next message, awaiting one without blocking the thread
    /// (up to the take timeout); `None` once the work is over.
    /// Cancel-safe: dropped before it returned, nothing was taken (a
    /// remote consumer: unless its request had reached the queue, whose
    /// message is then lost with the answer).
    pub async fn take_async(&mut self) -> Result<Option<Taken<'_>>> {
        let timeout = self.take_timeout;
        match &mut self.flavor {
            Flavor::Local(l) => l.take_async(timeout).await,
            Flavor::Remote(r) => remote_taken(r.take_async(timeout).await?, timeout),
        }
    }
}

/// A remote take's outcome as `take` gives it.
fn remote_taken<'a>(w: Took, timeout: Option<Duration>) -> Result<Option<Taken<'a>>> {
    match w {
        Took::Msg(m) => Ok(Some(Taken::net(m))),
        Took::Finished => Ok(None),
        Took::Empty => Err(Error::Timeout {
            what: "a message from the work queue (remote)",
            after: timeout.unwrap_or_default(),
        }),
    }
}

impl Local {
    async fn take_async(&mut self, timeout: Option<Duration>) -> Result<Option<Taken<'_>>> {
        const WHAT: &str = "a message from the work queue";
        let deadline = ready::deadline(timeout);
        loop {
            // Held, not borrowed: the loop goes on when nothing is there.
            match self.ring.try_hold() {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => return take_end(e, None).map(|()| None),
            }
            if self.ready.is_none() {
                self.ready = Some(ready::register(self.ring.ready_fd()?)?);
            }
            let Some(fd) = &self.ready else { continue };
            fd.get_ref().arm();
            match self.ring.try_hold() {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => return take_end(e, None).map(|()| None),
            }
            // Bounded: nothing wakes this wait when a producer that owes
            // messages dies; the look every liveness interval (what a
            // blocked take checks) settles its debt and ends the work.
            let slice = ready::slice(self.liveness, deadline, WHAT)?;
            if !ready::wait(fd, slice, "awaiting the work queue").await? {
                self.ring.check_peers()?;
            }
        }
        // Held just above, with no await since: there is one.
        let skip = self.skip;
        match self.ring.held()? {
            Some(guard) => Taken::new(guard, skip).map(Some),
            None => Err(Error::Ring(RingError::WouldBlock)),
        }
    }
}

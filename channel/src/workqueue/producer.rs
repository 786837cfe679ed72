//! A work queue's producer: claims, the close, and puts (blocking, try,
//! async, typed).

use super::remote::RemotePut;
use super::wire::Op;
use super::{expected_tag, QueueOptions};
use crate::error::{Error, Result};
use crate::handle::{Handle, Kind};
use crate::ready::{self, Ready};
use shoal_shm_ring::{Error as RingError, MpmcProducer, Wait};
use shoal_transport::{archive_into, Archivable, Archived};
use std::time::Duration;

/// The smallest room a typed put reserves for its archive.
const MIN_HINT: usize = 256;

/// A producer of a [`WorkQueue`](crate::WorkQueue), in any process.
///
/// ```
/// use shoal_channel::{QueueOptions, TryPutError, WorkQueue};
/// let q = WorkQueue::create(&QueueOptions::default().capacity(4096))?;
/// let mut p = q.producer()?;
/// // try_put hands the message back when the queue is full.
/// let msg = [7u8; 1000];
/// let mut sent = 0;
/// loop {
///     match p.try_put(&msg) {
///         Ok(()) => sent += 1,
///         Err(TryPutError::Full(back)) => {
///             assert_eq!(back.len(), 1000);
///             break;
///         }
///         Err(TryPutError::Failed(e)) => return Err(e),
///     }
/// }
/// assert!(sent >= 1);
/// # Ok::<(), shoal_channel::Error>(())
/// ```
pub struct Producer {
    flavor: Flavor,
    put_timeout: Option<Duration>,
}

/// Where a producer puts.
// The local flavour is the hot path: not boxed (the remote one is).
#[allow(clippy::large_enum_variant)]
enum Flavor {
    /// Into the queue's ring, on this host.
    Local(Local),
    /// Through the queue's bridge, on another host.
    Remote(Remote),
}

/// A producer on the queue's host.
struct Local {
    ring: MpmcProducer,
    /// Awaited by `put_async` while the queue is full (made on first use).
    space: Option<Ready>,
    liveness: Duration,
    /// Room the next typed put reserves (the last archive's size, at least
    /// [`MIN_HINT`]).
    hint: usize,
    /// Bytes put before every message (a gather writer's sender header; a
    /// multiple of 16, so an archive after it stays aligned).
    head: Vec<u8>,
}

/// A producer on another host.
struct Remote {
    end: Box<RemotePut>,
    /// Messages claimed and not put (as this side counts them).
    owed: u64,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.flavor {
            Flavor::Local(l) => f
                .debug_struct("Producer")
                .field("ring", &l.ring)
                .field("owed", &l.ring.owed())
                .finish_non_exhaustive(),
            Flavor::Remote(r) => f
                .debug_struct("Producer")
                .field("remote", &r.end)
                .field("owed", &r.owed)
                .finish(),
        }
    }
}

/// Why [`Producer::try_put`] did not put a message.
#[derive(Debug)]
pub enum TryPutError<'m> {
    /// The queue is full: the message, handed back.
    Full(&'m [u8]),
    /// Anything else (the queue is closed to this producer, …).
    Failed(Error),
}

impl std::fmt::Display for TryPutError<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TryPutError::Full(m) => write!(f, "the queue is full ({} bytes handed back)", m.len()),
            TryPutError::Failed(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for TryPutError<'_> {}

/// Sends `head` then `msg` as one record of `ring`, waiting as `wait`
/// allows.
fn send_after(
    ring: &mut MpmcProducer,
    head: &[u8],
    msg: &[u8],
    wait: Wait<'_>,
) -> std::result::Result<(), RingError> {
    if head.is_empty() {
        return ring.send_with(msg, wait);
    }
    let h = head.len();
    let mut r = ring.reserve_with(h + msg.len(), wait)?;
    r[..h].copy_from_slice(head);
    r[h..h + msg.len()].copy_from_slice(msg);
    r.commit(h + msg.len())
}

/// Sends `head` then each of `parts` as one record, waiting as `wait`
/// allows.
fn send_parts(
    ring: &mut MpmcProducer,
    head: &[u8],
    parts: &[&[u8]],
    wait: Wait<'_>,
) -> std::result::Result<(), RingError> {
    let len = head.len() + parts.iter().map(|p| p.len()).sum::<usize>();
    let mut r = ring.reserve_with(len, wait)?;
    let mut at = 0;
    for p in std::iter::once(head).chain(parts.iter().copied()) {
        r[at..at + p.len()].copy_from_slice(p);
        at += p.len();
    }
    r.commit(len)
}

/// A ring error on a put, as the caller should see it.
fn put_error(e: RingError, waited: Option<Duration>) -> Error {
    match e {
        RingError::Closed => Error::Closed,
        // A zero timeout is a try that found no room.
        RingError::Timeout | RingError::WouldBlock => Error::Timeout {
            what: "room in the work queue",
            after: waited.unwrap_or_default(),
        },
        e => e.into(),
    }
}

impl Producer {
    /// Attaches to the queue `handle` names, with default options.
    pub fn attach(handle: &Handle) -> Result<Producer> {
        Producer::attach_with(handle, &QueueOptions::default())
    }

    /// Attaches with `opts` (its timeouts and peer options; the sizes are
    /// the queue's). A queue made on another host that takes remote
    /// peers is reached through its bridge (see
    /// [`attach_remote`](Self::attach_remote)).
    pub fn attach_with(handle: &Handle, opts: &QueueOptions) -> Result<Producer> {
        if handle.is_elsewhere() && handle.remote().is_some() {
            return Producer::attach_remote(handle, opts);
        }
        Producer::attach_kind(handle, opts, Kind::WorkQueue, Vec::new())
    }

    /// Attaches through the queue's bridge, over the network, wherever
    /// this process is (the queue must take remote peers:
    /// [`QueueOptions::remote`]). A put returns once the message is in
    /// the producer's buffer, shipped to the queue in batches behind it
    /// ([`flush`](Self::flush) waits until everything put is in the
    /// queue, and reports a batch the queue refused); a producer that
    /// dies, or goes silent for the queue's
    /// [`lease`](QueueOptions::lease), owing claimed messages makes
    /// consumers end with [`Error::ProducersLost`].
    pub fn attach_remote(handle: &Handle, opts: &QueueOptions) -> Result<Producer> {
        Producer::join_remote(handle, opts, Kind::WorkQueue, [0; 16])
    }

    /// Joins a channel of `kind` on another host, with `head` before
    /// every message.
    pub(crate) fn join_remote(
        handle: &Handle,
        opts: &QueueOptions,
        kind: Kind,
        head: [u8; 16],
    ) -> Result<Producer> {
        let end = RemotePut::join(handle, kind, head, opts)?;
        Ok(Producer {
            flavor: Flavor::Remote(Remote {
                end: Box::new(end),
                owed: 0,
            }),
            put_timeout: opts.put_timeout,
        })
    }

    /// Attaches to a channel of `kind` built on a work queue's ring,
    /// putting `head` before every message.
    pub(crate) fn attach_kind(
        handle: &Handle,
        opts: &QueueOptions,
        kind: Kind,
        head: Vec<u8>,
    ) -> Result<Producer> {
        debug_assert!(head.len().is_multiple_of(16));
        let ring = handle.ring(kind)?;
        let ring = super::attach(|| {
            MpmcProducer::attach_with(&ring, opts.peer, Some(expected_tag(kind)))
        })?;
        Ok(Producer {
            flavor: Flavor::Local(Local {
                ring,
                space: None,
                liveness: opts.peer.liveness_interval,
                hint: MIN_HINT,
                head,
            }),
            put_timeout: opts.put_timeout,
        })
    }

    /// Whether this producer reaches its queue over the network.
    pub fn is_remote(&self) -> bool {
        matches!(self.flavor, Flavor::Remote(_))
    }

    /// Promises `n` more messages from this producer: consumers will not
    /// be told the work is over until they were put and taken (or this
    /// producer is gone, which they are told as
    /// [`Error::ProducersLost`]). Fails with [`Error::Closed`] once the
    /// queue is closed.
    pub fn claim(&mut self, n: u64) -> Result<()> {
        match &mut self.flavor {
            Flavor::Local(l) => l.ring.claim(n).map_err(|e| put_error(e, None)),
            Flavor::Remote(r) => {
                r.end
                    .control(Op::Claim, &[&n.to_le_bytes()], self.put_timeout)?;
                r.owed = r.owed.saturating_add(n);
                Ok(())
            }
        }
    }

    /// Closes the queue, for every producer: nothing more may be claimed,
    /// and a producer that owes nothing can no longer put. What was
    /// claimed can still be put; once all of it was, and taken, consumers
    /// get `None`.
    pub fn close(&mut self) -> Result<()> {
        match &mut self.flavor {
            Flavor::Local(l) => l.ring.close_claims().map_err(|e| put_error(e, None)),
            Flavor::Remote(r) => r.end.control(Op::Close, &[], self.put_timeout),
        }
    }

    /// Messages this producer claimed and has not put yet.
    pub fn owed(&self) -> u64 {
        match &self.flavor {
            Flavor::Local(l) => l.ring.owed(),
            Flavor::Remote(r) => r.owed,
        }
    }

    /// A bridge's proxy for a producer on another host: the ring names
    /// that producer's `pid` for this one (in logs, and in the
    /// `ProducersLost` consumers get if it dies owing).
    pub(crate) fn act_for(&self, pid: u32) {
        if let Flavor::Local(l) = &self.flavor {
            l.ring.act_for(pid);
        }
    }

    /// Puts `msg`, waiting while the queue is full (up to the put
    /// timeout). Counts against this producer's claims, if it has any.
    ///
    /// On another host than the queue, the message is handed to this
    /// producer's pump, which ships what accumulates while a batch is on
    /// its way as the next batch (up to 1 MiB): `put` waits only while
    /// that buffer is full, and [`flush`](Self::flush) waits until every
    /// message put is in the queue. A batch the queue refuses (closed)
    /// is reported by the next call. A producer that dies before its
    /// messages landed is reported to consumers through its claims
    /// ([`Error::ProducersLost`]), as a local one is.
    pub fn put(&mut self, msg: &[u8]) -> Result<()> {
        self.put_parts(&[msg])
    }

    /// Puts `msg`, waiting up to `timeout` for room (whatever the
    /// options' put timeout).
    pub(crate) fn put_within(&mut self, msg: &[u8], timeout: Duration) -> Result<()> {
        self.put_waiting(&[msg], Some(timeout))
    }

    /// Puts `parts` one after the other as one message (after the head),
    /// waiting while the queue is full (up to the put timeout).
    pub(crate) fn put_parts(&mut self, parts: &[&[u8]]) -> Result<()> {
        self.put_waiting(parts, self.put_timeout)
    }

    /// Puts `parts` as one message, waiting up to `timeout` for room
    /// (`None`: as long as it takes).
    fn put_waiting(&mut self, parts: &[&[u8]], timeout: Option<Duration>) -> Result<()> {
        match &mut self.flavor {
            Flavor::Local(l) => {
                let wait = match timeout {
                    Some(t) => Wait::timeout(t),
                    None => Wait::forever(),
                };
                let r = match parts {
                    [msg] => send_after(&mut l.ring, &l.head, msg, wait),
                    _ => send_parts(&mut l.ring, &l.head, parts, wait),
                };
                r.map_err(|e| put_error(e, timeout))
            }
            Flavor::Remote(r) => {
                let handed = r.end.put(parts, timeout)?;
                r.handed(handed, timeout)
            }
        }
    }

    /// Claims `n`, waiting up to `wait` for the queue's lock (a local
    /// producer's: the bridge's).
    pub(crate) fn claim_within(&mut self, n: u64, wait: Duration) -> Result<()> {
        match &mut self.flavor {
            Flavor::Local(l) => l
                .ring
                .claim_with(n, Wait::timeout(wait))
                .map_err(|e| put_error(e, Some(wait))),
            Flavor::Remote(_) => self.claim(n),
        }
    }

    /// Closes, waiting up to `wait` for the queue's lock.
    pub(crate) fn close_within(&mut self, wait: Duration) -> Result<()> {
        match &mut self.flavor {
            Flavor::Local(l) => l
                .ring
                .close_claims_with(Wait::timeout(wait))
                .map_err(|e| put_error(e, Some(wait))),
            Flavor::Remote(_) => self.close(),
        }
    }

    /// Waits until every message put is in the queue (up to the put
    /// timeout): at once on this host, where a put returns once it is; a
    /// producer on another host ships its puts in the background, and
    /// reports here (or at its next call) a batch that failed.
    pub fn flush(&mut self) -> Result<()> {
        match &mut self.flavor {
            Flavor::Local(_) => Ok(()),
            Flavor::Remote(r) => r.end.flush(self.put_timeout),
        }
    }

    /// Puts `msg` if there is room now; hands it back when the queue is
    /// full.
    pub fn try_put<'m>(&mut self, msg: &'m [u8]) -> std::result::Result<(), TryPutError<'m>> {
        let r = match &mut self.flavor {
            Flavor::Local(l) => match send_after(&mut l.ring, &l.head, msg, Wait::no_wait()) {
                Ok(()) => Ok(()),
                Err(RingError::WouldBlock | RingError::Timeout) => {
                    return Err(TryPutError::Full(msg))
                }
                Err(e) => Err(put_error(e, None)),
            },
            Flavor::Remote(r) => match r.end.put(&[msg], Some(Duration::ZERO)) {
                Ok(false) => return Err(TryPutError::Full(msg)),
                Ok(true) => r.handed(true, None),
                Err(e) => Err(e),
            },
        };
        r.map_err(TryPutError::Failed)
    }

    /// Puts `msg`, awaiting room without blocking the thread (up to the
    /// put timeout). Cancel-safe: dropped before it finished, nothing was
    /// put (a remote producer: unless its request had reached the queue,
    /// where it is then put).
    pub async fn put_async(&mut self, msg: &[u8]) -> Result<()> {
        let timeout = self.put_timeout;
        match &mut self.flavor {
            Flavor::Local(l) => l.put_async(msg, timeout).await,
            Flavor::Remote(r) => {
                let handed = r.end.put_async(&[msg], timeout).await?;
                r.handed(handed, timeout)
            }
        }
    }

    /// Puts `value` as an rkyv archive, serialized straight into the
    /// queue's memory (the serialization is the one copy), waiting while
    /// the queue is full (up to the put timeout). A consumer reads it in
    /// place with [`Taken::archived`](crate::Taken::archived).
    ///
    /// ```
    /// use shoal_channel::{QueueOptions, WorkQueue};
    /// #[derive(rkyv::Archive, rkyv::Serialize)]
    /// struct Job {
    ///     id: u64,
    ///     name: String,
    /// }
    /// let q = WorkQueue::create(&QueueOptions::default())?;
    /// let (mut p, mut c) = (q.producer()?, q.consumer()?);
    /// p.put_value(&Job { id: 7, name: "resize".into() })?;
    /// let taken = c.take()?.expect("a job");
    /// let job = taken.archived::<Job>()?;
    /// assert_eq!(job.id, 7);
    /// assert_eq!(job.name.as_str(), "resize");
    /// # Ok::<(), shoal_channel::Error>(())
    /// ```
    pub fn put_value<T: Archivable>(&mut self, value: &T) -> Result<()> {
        self.put_value_after(&[], value)
    }

    /// [`put_value`](Self::put_value) with `extra` (a multiple of 16
    /// bytes, so the archive stays aligned) between the head and the
    /// archive.
    pub(crate) fn put_value_after<T: Archivable>(&mut self, extra: &[u8], value: &T) -> Result<()> {
        debug_assert!(extra.len().is_multiple_of(16));
        let timeout = self.put_timeout;
        let l = match &mut self.flavor {
            Flavor::Local(l) => l,
            Flavor::Remote(_) => {
                // Serialized here, put as bytes (the head is the bridge's).
                let mut buf = shoal_transport::AlignedBuf::with_capacity(MIN_HINT);
                buf.resize_zeroed(MIN_HINT);
                return match archive_into(value, buf.as_mut_slice()).map_err(Error::Archive)? {
                    Archived::InPlace(n) => self.put_parts(&[extra, &buf[..n]]),
                    Archived::Spilled(big) => self.put_parts(&[extra, &big]),
                };
            }
        };
        let wait = match timeout {
            Some(t) => Wait::timeout(t),
            None => Wait::forever(),
        };
        let h = l.head.len() + extra.len();
        let spilled = {
            let mut r = l
                .ring
                .reserve_with(h + l.hint, wait)
                .map_err(|e| put_error(e, timeout))?;
            r[..l.head.len()].copy_from_slice(&l.head);
            r[l.head.len()..h].copy_from_slice(extra);
            match archive_into(value, &mut r[h..]).map_err(Error::Archive)? {
                Archived::InPlace(n) => {
                    r.commit(h + n).map_err(|e| put_error(e, None))?;
                    l.hint = l.fit_hint(n);
                    return Ok(());
                }
                // Dropped uncommitted: skipped by consumers (a claim it
                // would have paid stays owed).
                Archived::Spilled(buf) => buf,
            }
        };
        let n = spilled.len();
        self.put_parts(&[extra, &spilled])?;
        if let Flavor::Local(l) = &mut self.flavor {
            l.hint = l.fit_hint(n);
        }
        Ok(())
    }
}

impl Remote {
    /// A put's outcome, given whether the message was handed to the pump
    /// within `timeout`: counted against the claims when it was.
    fn handed(&mut self, handed: bool, timeout: Option<Duration>) -> Result<()> {
        if !handed {
            return Err(Error::Timeout {
                what: "room in a remote producer's buffer",
                after: timeout.unwrap_or_default(),
            });
        }
        self.owed = self.owed.saturating_sub(1);
        Ok(())
    }
}

impl Local {
    /// See [`Producer::put_async`].
    async fn put_async(&mut self, msg: &[u8], timeout: Option<Duration>) -> Result<()> {
        const WHAT: &str = "room in the work queue";
        let deadline = ready::deadline(timeout);
        loop {
            match send_after(&mut self.ring, &self.head, msg, Wait::no_wait()) {
                Ok(()) => return Ok(()),
                Err(RingError::WouldBlock | RingError::Timeout) => {}
                Err(e) => return Err(put_error(e, None)),
            }
            if self.space.is_none() {
                self.space = Some(ready::register(self.ring.space_fd()?)?);
            }
            let Some(space) = &self.space else { continue };
            space.get_ref().arm();
            match send_after(&mut self.ring, &self.head, msg, Wait::no_wait()) {
                Ok(()) => return Ok(()),
                Err(RingError::WouldBlock | RingError::Timeout) => {}
                Err(e) => return Err(put_error(e, None)),
            }
            // Bounded: a put owed to a dead consumer's release is found by
            // the next try (the fd also turns readable every orphan
            // timeout while armed).
            let slice = ready::slice(self.liveness, deadline, WHAT)?;
            ready::wait(space, slice, "awaiting room in the queue").await?;
        }
    }

    /// The room the next typed put reserves after an archive of `n`
    /// bytes: that, within the ring (a larger archive spills and is
    /// copied in; reserving its size ahead would map an overflow segment
    /// for every later value, however small).
    fn fit_hint(&self, n: usize) -> usize {
        n.clamp(MIN_HINT, self.ring.max_inline().max(MIN_HINT))
    }
}

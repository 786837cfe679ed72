//! A work queue's producer: claims, the close, and puts (blocking, try,
//! async, typed).

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
    ring: MpmcProducer,
    /// Awaited by `put_async` while the queue is full (made on first use).
    space: Option<Ready>,
    put_timeout: Option<Duration>,
    liveness: Duration,
    /// Room the next typed put reserves (the last archive's size, at least
    /// [`MIN_HINT`]).
    hint: usize,
    /// Bytes put before every message (a gather writer's sender header; a
    /// multiple of 16, so an archive after it stays aligned).
    head: Vec<u8>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("ring", &self.ring)
            .field("owed", &self.ring.owed())
            .finish_non_exhaustive()
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
    /// the queue's).
    pub fn attach_with(handle: &Handle, opts: &QueueOptions) -> Result<Producer> {
        Producer::attach_kind(handle, opts, Kind::WorkQueue, Vec::new())
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
            ring,
            space: None,
            put_timeout: opts.put_timeout,
            liveness: opts.peer.liveness_interval,
            hint: MIN_HINT,
            head,
        })
    }

    /// Sends `msg` (after the head, if any) as one record, waiting as
    /// `wait` allows.
    fn send(&mut self, msg: &[u8], wait: Wait<'_>) -> std::result::Result<(), RingError> {
        send_after(&mut self.ring, &self.head, msg, wait)
    }

    /// Promises `n` more messages from this producer: consumers will not
    /// be told the work is over until they were put and taken (or this
    /// producer is gone, which they are told as
    /// [`Error::ProducersLost`]). Fails with [`Error::Closed`] once the
    /// queue is closed.
    pub fn claim(&mut self, n: u64) -> Result<()> {
        self.ring.claim(n).map_err(|e| put_error(e, None))
    }

    /// Closes the queue, for every producer: nothing more may be claimed,
    /// and a producer that owes nothing can no longer put. What was
    /// claimed can still be put; once all of it was, and taken, consumers
    /// get `None`.
    pub fn close(&mut self) -> Result<()> {
        self.ring.close_claims().map_err(|e| put_error(e, None))
    }

    /// Messages this producer claimed and has not put yet.
    pub fn owed(&self) -> u64 {
        self.ring.owed()
    }

    /// Puts `msg`, waiting while the queue is full (up to the put
    /// timeout). Counts against this producer's claims, if it has any.
    pub fn put(&mut self, msg: &[u8]) -> Result<()> {
        let wait = match self.put_timeout {
            Some(t) => Wait::timeout(t),
            None => Wait::forever(),
        };
        let timeout = self.put_timeout;
        self.send(msg, wait).map_err(|e| put_error(e, timeout))
    }

    /// Puts `parts` one after the other as one message (after the head),
    /// waiting while the queue is full (up to the put timeout).
    pub(crate) fn put_parts(&mut self, parts: &[&[u8]]) -> Result<()> {
        let timeout = self.put_timeout;
        let wait = match timeout {
            Some(t) => Wait::timeout(t),
            None => Wait::forever(),
        };
        send_parts(&mut self.ring, &self.head, parts, wait).map_err(|e| put_error(e, timeout))
    }

    /// Puts `msg` if there is room now; hands it back when the queue is
    /// full.
    pub fn try_put<'m>(&mut self, msg: &'m [u8]) -> std::result::Result<(), TryPutError<'m>> {
        match self.send(msg, Wait::no_wait()) {
            Ok(()) => Ok(()),
            Err(RingError::WouldBlock | RingError::Timeout) => Err(TryPutError::Full(msg)),
            Err(e) => Err(TryPutError::Failed(put_error(e, None))),
        }
    }

    /// Puts `msg`, awaiting room without blocking the thread (up to the
    /// put timeout). Cancel-safe: dropped before it finished, nothing was
    /// put.
    pub async fn put_async(&mut self, msg: &[u8]) -> Result<()> {
        const WHAT: &str = "room in the work queue";
        let deadline = ready::deadline(self.put_timeout);
        loop {
            match self.try_put(msg) {
                Ok(()) => return Ok(()),
                Err(TryPutError::Failed(e)) => return Err(e),
                Err(TryPutError::Full(_)) => {}
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
        let wait = match self.put_timeout {
            Some(t) => Wait::timeout(t),
            None => Wait::forever(),
        };
        let timeout = self.put_timeout;
        let h = self.head.len() + extra.len();
        let spilled = {
            let mut r = self
                .ring
                .reserve_with(h + self.hint, wait)
                .map_err(|e| put_error(e, timeout))?;
            r[..self.head.len()].copy_from_slice(&self.head);
            r[self.head.len()..h].copy_from_slice(extra);
            match archive_into(value, &mut r[h..]).map_err(Error::Archive)? {
                Archived::InPlace(n) => {
                    r.commit(h + n).map_err(|e| put_error(e, None))?;
                    self.hint = self.fit_hint(n);
                    return Ok(());
                }
                // Dropped uncommitted: skipped by consumers (a claim it
                // would have paid stays owed).
                Archived::Spilled(buf) => buf,
            }
        };
        self.put_parts(&[extra, &spilled])?;
        self.hint = self.fit_hint(spilled.len());
        Ok(())
    }

    /// The room the next typed put reserves after an archive of `n`
    /// bytes: that, within the ring (a larger archive spills and is
    /// copied in; reserving its size ahead would map an overflow segment
    /// for every later value, however small).
    fn fit_hint(&self, n: usize) -> usize {
        n.clamp(MIN_HINT, self.ring.max_inline().max(MIN_HINT))
    }
}

//! Gather: many writers, one reader; results coming home, each with its
//! sender's identity.
//!
//! The reader creates the gather and holds its ring (an MPMC ring with one
//! consumer); writers in any process attach with the handle and an index
//! of their choosing (a rank, a worker number). Every message carries a
//! 16-byte header before it: the writer's index, pid and host, read back
//! as a [`Sender`]; the message itself stays 16-byte aligned, so typed
//! results are read in place. Termination is a work queue's: writers may
//! [`claim`](GatherWriter::claim) the results they will send, the reader
//! [`close`](Gather::close)s, and [`recv`](Gather::recv) returns `None`
//! once every claimed result came (or fails with
//! [`Error::ProducersLost`] when a writer died
//! owing some).

use crate::error::{Error, Result};
use crate::handle::{Handle, Kind};
use crate::workqueue::{Consumer, Producer, QueueOptions, Taken, TryTake, WorkQueue};
use std::ops::Deref;

/// Bytes of the sender header before every gathered message.
const HEAD: usize = 16;

/// Who sent a gathered message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sender {
    /// The index the writer attached with (a rank, a worker number).
    pub index: u32,
    /// Its process id (in its own pid namespace).
    pub pid: u32,
    /// Its host, as [`host_id`]: equal for writers on one host.
    pub host: u64,
}

impl Sender {
    /// This process as writer `index`.
    fn me(index: u32) -> Sender {
        Sender {
            index,
            pid: std::process::id(),
            host: host_id(),
        }
    }

    fn encode(&self) -> [u8; HEAD] {
        let mut h = [0u8; HEAD];
        h[..4].copy_from_slice(&self.index.to_le_bytes());
        h[4..8].copy_from_slice(&self.pid.to_le_bytes());
        h[8..].copy_from_slice(&self.host.to_le_bytes());
        h
    }

    fn decode(h: &[u8]) -> Option<Sender> {
        Some(Sender {
            index: u32::from_le_bytes(h.get(..4)?.try_into().ok()?),
            pid: u32::from_le_bytes(h.get(4..8)?.try_into().ok()?),
            host: u64::from_le_bytes(h.get(8..HEAD)?.try_into().ok()?),
        })
    }
}

/// This host's identity in a [`Sender`]: a hash (FNV-1a) of the
/// `SHOAL_HOST` environment variable if set (hosts that share a kernel,
/// such as network namespaces, set it to tell themselves apart), else of
/// the host name.
///
/// ```
/// assert_eq!(shoal_channel::gather::host_id(), shoal_channel::gather::host_id());
/// ```
pub fn host_id() -> u64 {
    static ID: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *ID.get_or_init(|| {
        let name = std::env::var("SHOAL_HOST").unwrap_or_else(|_| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        });
        host_id_of(&name)
    })
}

/// The identity [`host_id`] gives a host named `name`.
///
/// ```
/// use shoal_channel::gather::host_id_of;
/// assert_ne!(host_id_of("a"), host_id_of("b"));
/// ```
pub fn host_id_of(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A gathered message: its bytes, in place in shared memory, and who sent
/// it.
#[derive(Debug)]
pub struct Gathered<'a> {
    taken: Taken<'a>,
    sender: Sender,
}

impl<'a> Gathered<'a> {
    fn new(taken: Taken<'a>) -> Result<Gathered<'a>> {
        let sender = Sender::decode(taken.head()).ok_or(Error::Malformed {
            what: "a gathered message without its sender header",
            len: taken.len(),
        })?;
        Ok(Gathered { taken, sender })
    }

    /// Who sent it.
    pub fn sender(&self) -> Sender {
        self.sender
    }

    /// The message as a validated archived `T`, in place (see
    /// [`Taken::archived`]).
    pub fn archived<T>(&self) -> Result<&T::Archived>
    where
        T: rkyv::Archive,
        T::Archived: for<'b> rkyv::bytecheck::CheckBytes<
            rkyv::api::high::HighValidator<'b, rkyv::rancor::Error>,
        >,
    {
        self.taken.archived::<T>()
    }
}

impl Deref for Gathered<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.taken
    }
}

/// What [`Gather::try_recv`] found.
#[derive(Debug)]
pub enum TryGather<'a> {
    /// A message.
    Got(Gathered<'a>),
    /// Nothing now; more may come.
    Empty,
    /// Every claimed message came and the gather is closed.
    Finished,
}

/// The reading end of a gather: created by the reader, which holds its
/// shared memory.
///
/// ```
/// use shoal_channel::{Gather, GatherWriter, QueueOptions};
/// let mut results = Gather::create(&QueueOptions::default())?;
/// // Each worker (in any process) attaches with the handle and its index.
/// let mut w = GatherWriter::attach(results.handle(), 3)?;
/// w.claim(1)?;
/// results.close()?; // one result claimed; none will be claimed any more
/// w.send(b"done")?;
/// let got = results.recv()?.expect("a result");
/// assert_eq!((&*got, got.sender().index), (&b"done"[..], 3));
/// drop(got);
/// assert!(results.recv()?.is_none());
/// # Ok::<(), shoal_channel::Error>(())
/// ```
#[derive(Debug)]
pub struct Gather {
    queue: WorkQueue,
    reader: Consumer,
    /// Made on the first close (closing needs a producer endpoint).
    closer: Option<Producer>,
    opts: QueueOptions,
}

impl Gather {
    /// Creates a gather for up to `opts.producers` writers attached at
    /// once (its `consumers` is ignored: one reader, this one).
    pub fn create(opts: &QueueOptions) -> Result<Gather> {
        let mut o = opts.clone();
        o.consumers = 1;
        o.producers = opts.producers.saturating_add(1);
        let queue = WorkQueue::create_kind(&o, Kind::Gather)?;
        let reader = Consumer::attach_kind(queue.handle(), &o, Kind::Gather, HEAD)?;
        Ok(Gather {
            queue,
            reader,
            closer: None,
            opts: o,
        })
    }

    /// The handle writers attach with.
    pub fn handle(&self) -> &Handle {
        self.queue.handle()
    }

    /// Whether `writer` joined from another host and is gone since (it
    /// left, or its bridge heard nothing from it for the lease).
    pub(crate) fn remote_writer_gone(&self, writer: Sender) -> bool {
        let peers = self.queue.remote_peers();
        let last = peers
            .iter()
            .rev()
            .find(|p| Sender::decode(&p.head) == Some(writer));
        last.is_some_and(|p| p.gone)
    }

    /// No more claims: [`recv`](Self::recv) returns `None` once every
    /// claimed message came (a writer that claimed nothing can no longer
    /// send).
    pub fn close(&mut self) -> Result<()> {
        if self.closer.is_none() {
            self.closer = Some(Producer::attach_kind(
                self.queue.handle(),
                &self.opts,
                Kind::Gather,
                Sender::me(u32::MAX).encode().to_vec(),
            )?);
        }
        match &mut self.closer {
            Some(c) => c.close(),
            None => Err(Error::Closed),
        }
    }

    /// The next message, waiting for one (up to the options' take
    /// timeout); `None` once the gather is closed and every claimed
    /// message came.
    pub fn recv(&mut self) -> Result<Option<Gathered<'_>>> {
        match self.reader.take()? {
            Some(t) => Gathered::new(t).map(Some),
            None => Ok(None),
        }
    }

    /// The next message, waiting up to `timeout` for one (whatever the
    /// options' take timeout); `None` once the gather is closed and every
    /// claimed message came.
    pub fn recv_within(&mut self, timeout: std::time::Duration) -> Result<Option<Gathered<'_>>> {
        match self.reader.take_within(timeout)? {
            Some(t) => Gathered::new(t).map(Some),
            None => Ok(None),
        }
    }

    /// The next message if there is one now.
    pub fn try_recv(&mut self) -> Result<TryGather<'_>> {
        Ok(match self.reader.try_take()? {
            TryTake::Taken(t) => TryGather::Got(Gathered::new(t)?),
            TryTake::Empty => TryGather::Empty,
            TryTake::Finished => TryGather::Finished,
        })
    }

    /// The next message, awaited without blocking the thread.
    /// Cancel-safe.
    pub async fn recv_async(&mut self) -> Result<Option<Gathered<'_>>> {
        match self.reader.take_async().await? {
            Some(t) => Gathered::new(t).map(Some),
            None => Ok(None),
        }
    }
}

/// A writing end of a gather, in any process.
#[derive(Debug)]
pub struct GatherWriter {
    producer: Producer,
    me: Sender,
}

impl GatherWriter {
    /// Attaches to the gather `handle` names as writer `index`, with
    /// default options.
    pub fn attach(handle: &Handle, index: u32) -> Result<GatherWriter> {
        GatherWriter::attach_with(handle, index, &QueueOptions::default())
    }

    /// Attaches with `opts` (timeouts and peer options). A gather made
    /// on another host that takes remote writers is reached through its
    /// bridge (see [`attach_remote`](Self::attach_remote)).
    pub fn attach_with(handle: &Handle, index: u32, opts: &QueueOptions) -> Result<GatherWriter> {
        if handle.is_elsewhere() && handle.remote().is_some() {
            return GatherWriter::attach_remote(handle, index, opts);
        }
        let me = Sender::me(index);
        let producer = Producer::attach_kind(handle, opts, Kind::Gather, me.encode().to_vec())?;
        Ok(GatherWriter { producer, me })
    }

    /// Attaches through the gather's bridge, over the network, wherever
    /// this process is (the gather must take remote writers:
    /// [`QueueOptions::remote`]). Its messages reach the reader with its
    /// identity as a local writer's do.
    pub fn attach_remote(handle: &Handle, index: u32, opts: &QueueOptions) -> Result<GatherWriter> {
        let me = Sender::me(index);
        let producer = Producer::join_remote(handle, opts, Kind::Gather, me.encode())?;
        Ok(GatherWriter { producer, me })
    }

    /// Whether this writer reaches its gather over the network.
    pub fn is_remote(&self) -> bool {
        self.producer.is_remote()
    }

    /// Who this writer is, as the reader sees it.
    pub fn sender(&self) -> Sender {
        self.me
    }

    /// Promises `n` more messages (see [`Producer::claim`]).
    pub fn claim(&mut self, n: u64) -> Result<()> {
        self.producer.claim(n)
    }

    /// Sends `msg`, waiting while the gather is full (up to the put
    /// timeout).
    pub fn send(&mut self, msg: &[u8]) -> Result<()> {
        self.producer.put(msg)
    }

    /// Sends `parts` one after the other as one message.
    pub(crate) fn send_parts(&mut self, parts: &[&[u8]]) -> Result<()> {
        self.producer.put_parts(parts)
    }

    /// Sends `extra` (a multiple of 16 bytes) then `value` as an rkyv
    /// archive, serialized in place.
    pub(crate) fn send_value_after<T: shoal_transport::Archivable>(
        &mut self,
        extra: &[u8],
        value: &T,
    ) -> Result<()> {
        self.producer.put_value_after(extra, value)
    }

    /// Sends `msg`, awaiting room without blocking the thread.
    pub async fn send_async(&mut self, msg: &[u8]) -> Result<()> {
        self.producer.put_async(msg).await
    }

    /// Sends `value` as an rkyv archive serialized straight into the
    /// gather's memory (see [`Producer::put_value`]).
    pub fn send_value<T: shoal_transport::Archivable>(&mut self, value: &T) -> Result<()> {
        self.producer.put_value(value)
    }
}

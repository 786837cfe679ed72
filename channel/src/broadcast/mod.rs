//! Broadcast: one writer, N readers, every reader gets every message in
//! order (how an inference server ships each step's inputs to every
//! worker).
//!
//! The writer creates the broadcast with the number of readers it waits
//! for; readers in any process attach with the handle and an index (a
//! label for logs and the caller). Every message carries a 16-byte
//! header, its sequence number (from 0, in send order) and room kept for
//! the writer's identity; the message after it stays 16-byte aligned, so
//! typed messages are read in place. A reader can hold several
//! [`Received`] messages at once (a worker keeps step i's inputs while it
//! receives step i+1); the ring gets them back in order as they drop.
//! Messages of any size: small ones in the ring, large ones through
//! overflow segments. A dead local reader never blocks the writer (it is
//! evicted once its process is gone); a live one that stalls ends the
//! writer's wait with an error naming it; readers of a dead writer get
//! [`WriterGone`](shoal_shm_ring::Error::WriterGone).
//!
//! Readers on other hosts read through a network publisher the writer
//! binds beside its ring ([`BroadcastOptions::remote`]): the writer sends
//! once, both kinds receive, in the same order. A remote reader that
//! stops reading holds the writer back until the publisher drops it (its
//! network options' stall timeout), as does a dead one until its
//! connection is found broken.
//!
//! With remote readers, the writer drives its publisher from the calling
//! thread: create, send and drop a [`Broadcast`] from a plain thread (or
//! `spawn_blocking`), not from inside an async task, where blocking on
//! the network panics.

use crate::error::{Error, Result};
use crate::handle::{ring_tag, Handle, Kind};
use crate::net::{self, NetPublisher};
use shoal_shm_ring::{
    BroadcastConfig, BroadcastWriter, CancelToken, Error as RingError, PeerOptions, Wait,
};
use shoal_transport::{archive_into, Archivable, Archived};
use std::time::Duration;

mod hellos;
mod orphans;
mod receiver;
mod remote;

pub(crate) use hellos::Greeter;
pub use hellos::RemoteReader;

pub use receiver::{BroadcastReceiver, Received};

/// Bytes of the header before every message.
pub(crate) const HEAD: usize = 16;
/// The smallest room a typed send reserves.
const MIN_HINT: usize = 256;

/// How to create a broadcast, and how its endpoints wait.
///
/// ```
/// use shoal_channel::BroadcastOptions;
/// let o = BroadcastOptions::new(4).capacity(8 << 20);
/// assert_eq!(o.readers, 4);
/// ```
#[derive(Debug, Clone)]
pub struct BroadcastOptions {
    /// Readers the writer waits for in [`Broadcast::wait_until_ready`]
    /// (and the most that can attach).
    pub readers: u32,
    /// Bytes of the ring (a power of two, 4 KiB to 2 GiB); messages larger
    /// than a quarter of it travel in overflow segments. Default 4 MiB.
    pub capacity: u64,
    /// How long a send waits for room before [`Error::Timeout`] (`None`:
    /// as long as it takes; a stalled live reader still ends the wait
    /// after the peer options' stall timeout). Default `None`.
    pub send_timeout: Option<Duration>,
    /// How long a receive waits before [`Error::Timeout`]. Default `None`.
    pub recv_timeout: Option<Duration>,
    /// How endpoints judge their peers.
    pub peer: PeerOptions,
    /// How many of the readers are on other hosts (they read through the
    /// network publisher at [`remote`](Self::remote)). Default 0.
    pub remote_readers: u32,
    /// Where the writer binds the publisher its remote readers connect to
    /// (`nng+tcp://IP:PORT`, `quic://IP:PORT`; port 0: any free one),
    /// given with an address of an interface the readers reach. Carried
    /// in the handle, with the port bound and QUIC's certificate pin.
    /// Default `None`: readers on this host only.
    pub remote: Option<String>,
    /// The network endpoints' options (largest message, connect and stall
    /// timeouts); the send timeout is the broadcast's.
    pub net: shoal_transport::Options,
}

impl BroadcastOptions {
    /// Options for `readers` readers, the rest default.
    pub fn new(readers: u32) -> Self {
        BroadcastOptions {
            readers,
            capacity: 4 << 20,
            send_timeout: None,
            recv_timeout: None,
            peer: PeerOptions::default(),
            remote_readers: 0,
            remote: None,
            net: shoal_transport::Options::default(),
        }
    }
    /// Sets [`remote_readers`](Self::remote_readers) and where they
    /// connect ([`remote`](Self::remote)).
    pub fn remote(mut self, readers: u32, bind: &str) -> Self {
        self.remote_readers = readers;
        self.remote = Some(bind.to_string());
        self
    }
    /// Sets [`net`](Self::net).
    pub fn net(mut self, o: shoal_transport::Options) -> Self {
        self.net = o;
        self
    }
    /// The readers on this host.
    fn local_readers(&self) -> u32 {
        self.readers.saturating_sub(self.remote_readers)
    }
    /// The network options of its endpoints.
    pub(crate) fn net_options(&self) -> shoal_transport::Options {
        let mut o = self.net.clone().send_timeout(self.send_timeout);
        o.max_peers = o.max_peers.max(self.remote_readers);
        o
    }
    /// Sets [`capacity`](Self::capacity).
    pub fn capacity(mut self, bytes: u64) -> Self {
        self.capacity = bytes;
        self
    }
    /// Sets [`send_timeout`](Self::send_timeout).
    pub fn send_timeout(mut self, t: Option<Duration>) -> Self {
        self.send_timeout = t;
        self
    }
    /// Sets [`recv_timeout`](Self::recv_timeout).
    pub fn recv_timeout(mut self, t: Option<Duration>) -> Self {
        self.recv_timeout = t;
        self
    }
    /// Sets [`peer`](Self::peer).
    pub fn peer(mut self, p: PeerOptions) -> Self {
        self.peer = p;
        self
    }
}

/// Publishes message `seq` to the remote readers, watched by the door
/// (which names in the log the readers holding it back). Kept out of line:
/// the local send stays small (a broadcast with local readers only never
/// calls it).
#[inline(never)]
fn publish(
    p: &mut NetPublisher,
    door: Option<&hellos::Hellos>,
    seq: u64,
    topic: &[u8],
    msg: &[u8],
) -> Result<()> {
    if let Some(d) = door {
        d.publishing(seq);
    }
    let r = p.publish(topic, msg);
    if let Some(d) = door {
        d.published();
    }
    r
}

fn wait_for(t: Option<Duration>) -> Wait<'static> {
    match t {
        Some(t) => Wait::timeout(t),
        None => Wait::forever(),
    }
}

/// A ring error, as the caller should see it (`what` was waited for).
pub(crate) fn ring_error(e: RingError, what: &'static str, waited: Option<Duration>) -> Error {
    match e {
        RingError::Timeout | RingError::WouldBlock => Error::Timeout {
            what,
            after: waited.unwrap_or_default(),
        },
        RingError::Cancelled => Error::Cancelled { what },
        e => e.into(),
    }
}

/// The writing end of a broadcast, held by the process that created it.
///
/// ```
/// use shoal_channel::{Broadcast, BroadcastOptions, BroadcastReceiver};
/// use std::time::Duration;
/// let mut b = Broadcast::create(&BroadcastOptions::new(2))?;
/// let mut r0 = BroadcastReceiver::attach(b.handle(), 0)?;
/// let mut r1 = BroadcastReceiver::attach(b.handle(), 1)?;
/// b.wait_until_ready(Duration::from_secs(5))?;
/// b.send(b"step 0")?;
/// b.send(b"step 1")?;
/// // A reader may hold several messages at once.
/// let (a, c) = (r0.recv()?, r0.recv()?);
/// assert_eq!((&*a, a.seq()), (&b"step 0"[..], 0));
/// assert_eq!((&*c, c.seq()), (&b"step 1"[..], 1));
/// assert_eq!(&*r1.recv()?, b"step 0");
/// # Ok::<(), shoal_channel::Error>(())
/// ```
pub struct Broadcast {
    writer: BroadcastWriter,
    handle: Handle,
    opts: BroadcastOptions,
    /// The next message's sequence number.
    seq: u64,
    hint: usize,
    /// The publisher of the remote readers, if any.
    net: Option<NetPublisher>,
    /// Where remote readers say who they are (beside the publisher).
    hellos: Option<hellos::Hellos>,
}

impl std::fmt::Debug for Broadcast {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broadcast")
            .field("handle", &self.handle)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

/// How many distinct remote readers (index, pid, host) said hello in
/// `far`.
fn distinct_remote(far: &[RemoteReader]) -> u32 {
    let mut seen = far.to_vec();
    seen.sort_unstable_by_key(|r| (r.index, r.pid, r.host));
    seen.dedup();
    seen.len() as u32
}

impl Broadcast {
    /// Creates a broadcast for `opts.readers` readers, of which
    /// `opts.remote_readers` on other hosts (then it binds its publisher
    /// at `opts.remote`).
    pub fn create(opts: &BroadcastOptions) -> Result<Broadcast> {
        if opts.remote_readers > opts.readers {
            return Err(Error::BadOptions(format!(
                "{} remote readers of {} in all",
                opts.remote_readers, opts.readers
            )));
        }
        let net = match (&opts.remote, opts.remote_readers) {
            (Some(url), _) => Some(NetPublisher::bind(
                &net::address(url)?,
                &opts.net_options(),
            )?),
            (None, 0) => None,
            (None, n) => {
                return Err(Error::BadOptions(format!(
                    "{n} remote readers, but no address to publish at (BroadcastOptions::remote)"
                )))
            }
        };
        let cfg = BroadcastConfig::new(opts.capacity, opts.local_readers().max(1))
            .payload_format(ring_tag(Kind::Broadcast).as_bytes())
            .peer_options(opts.peer);
        let writer = BroadcastWriter::create(&cfg)?;
        let mut handle = Handle::new(Kind::Broadcast, writer.handle().to_string());
        let mut net = net;
        let mut hellos = None;
        if let Some(p) = &mut net {
            // The publisher's address, then (after a comma) the door.
            let at = p.address();
            let h = hellos::Hellos::start(
                &net::any_port(&at, ".hellos"),
                &opts.net_options(),
                opts.peer.slow_peer_log,
                writer.handle().to_string(),
            )?;
            handle = handle.with_remote(format!("{at},{}", h.address()));
            hellos = Some(h);
        }
        Ok(Broadcast {
            writer,
            handle,
            opts: opts.clone(),
            seq: 0,
            hint: MIN_HINT,
            net,
            hellos,
        })
    }

    /// The handle readers attach with.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Waits until every reader of the options joined (up to `timeout`)
    /// and makes them active: every message sent afterwards reaches each
    /// of them. A remote reader has joined once it is connected and has
    /// said hello through the door beside the publisher (a connection
    /// alone, a stranger's or a reader's second one, does not count; the
    /// door's port must be reachable too). [`Error::ReadersMissing`] says
    /// how many came, and which indices never did.
    pub fn wait_until_ready(&mut self, timeout: Duration) -> Result<()> {
        let end = std::time::Instant::now() + timeout;
        let (local, remote) = (self.opts.local_readers(), self.opts.remote_readers);
        // The indices no reader gave: neither a ring reader's slot nor a
        // remote reader's hello.
        let all = self.opts.readers;
        let absent = |w: &BroadcastWriter, far: &[RemoteReader]| -> Vec<u32> {
            let seen: Vec<Option<u32>> = w.readers().iter().map(|r| r.tag).collect();
            (0..all)
                .filter(|i| !seen.contains(&Some(*i)) && !far.iter().any(|r| r.index == *i))
                .collect()
        };
        // Remote readers that joined: connected, and said hello (the
        // fewer of the two counts).
        let far_joined = |b: &mut Broadcast| -> u32 {
            let conns = b.remote_now();
            conns.min(distinct_remote(&b.remote_readers()))
        };
        let missing = |joined, missing| Error::ReadersMissing {
            expected: local + remote,
            joined,
            missing,
            after: timeout,
        };
        match self.writer.wait_for_readers(local, Wait::timeout(timeout)) {
            Ok(_) => {}
            Err(RingError::Timeout | RingError::WouldBlock) => {
                let far = far_joined(self);
                let names = absent(&self.writer, &self.remote_readers());
                return Err(missing(self.writer.active_readers() + far, names));
            }
            Err(e) => return Err(e.into()),
        }
        let Some(p) = &mut self.net else {
            return Ok(());
        };
        let left = end.saturating_duration_since(std::time::Instant::now());
        match p.wait_for_subscribers(remote, left) {
            Ok(n) if n >= remote => {}
            Ok(_) | Err(Error::Net(shoal_transport::Error::Timeout { .. })) => {
                let far = far_joined(self);
                let names = absent(&self.writer, &self.remote_readers());
                return Err(missing(local + far, names));
            }
            Err(e) => return Err(e),
        }
        // Connections are not readers: a stranger's connection, or a
        // reader's second one, would count. A remote reader is ready once
        // it also said hello (after it subscribed). (A reader that said
        // hello and went away stays in the book: its hello and a
        // stranger's connection would still make the count.)
        let mut pause = Duration::from_micros(200);
        loop {
            let far = self.remote_readers();
            if distinct_remote(&far) >= remote {
                return Ok(());
            }
            let now = std::time::Instant::now();
            if now >= end {
                let joined = far_joined(self);
                return Err(missing(local + joined, absent(&self.writer, &far)));
            }
            std::thread::sleep(pause.min(end - now));
            pause = (pause * 2).min(Duration::from_millis(10));
        }
    }

    /// The readers on other hosts that said who they are (index, pid,
    /// host), in the order they did (a reader that attached again is
    /// there twice).
    pub fn remote_readers(&self) -> Vec<RemoteReader> {
        self.hellos.as_ref().map(|h| h.heard()).unwrap_or_default()
    }

    /// Remote readers connected now.
    fn remote_now(&mut self) -> u32 {
        match &mut self.net {
            Some(p) => p.wait_for_subscribers(0, Duration::ZERO).unwrap_or(0),
            None => 0,
        }
    }

    /// Readers active now (local ones; remote ones once they connected).
    pub fn active_readers(&mut self) -> u32 {
        self.writer.active_readers() + self.remote_now()
    }

    /// Sends `msg` to every reader, waiting for room (up to the send
    /// timeout): remote readers first, from the ring's reservation, then
    /// local ones (the record committed), so local readers wait for the
    /// slowest remote one. Returns its sequence number. A send that fails
    /// reached no local reader and its number is not used; when the
    /// network failed it part-way, some remote readers may have it, and
    /// the next message then comes to them under the same number (as
    /// with [`send_value`](Self::send_value)).
    #[inline]
    pub fn send(&mut self, msg: &[u8]) -> Result<u64> {
        self.send_waiting(msg, None)
    }

    /// [`send`](Self::send), also ending its wait for room when `cancel`
    /// is cancelled ([`Error::Cancelled`]: nothing was sent). Remote
    /// readers' publication is not cancelled (its wait is bounded by the
    /// send timeout).
    ///
    /// ```
    /// use shoal_channel::{Broadcast, BroadcastOptions, BroadcastReceiver, CancelToken, Error};
    /// let mut b = Broadcast::create(&BroadcastOptions::new(1).capacity(4096))?;
    /// let _r = BroadcastReceiver::attach(b.handle(), 0)?; // never reads
    /// b.wait_until_ready(std::time::Duration::from_secs(5))?;
    /// let stop = CancelToken::new();
    /// stop.cancel();
    /// // The ring fills; then the next send is cancelled instead of waiting.
    /// let r = loop {
    ///     if let Err(e) = b.send_cancellable(&[0; 512], &stop) {
    ///         break e;
    ///     }
    /// };
    /// assert!(matches!(r, Error::Cancelled { .. }));
    /// # Ok::<(), shoal_channel::Error>(())
    /// ```
    pub fn send_cancellable(&mut self, msg: &[u8], cancel: &CancelToken) -> Result<u64> {
        self.send_waiting(msg, Some(cancel))
    }

    #[inline]
    fn send_waiting(&mut self, msg: &[u8], cancel: Option<&CancelToken>) -> Result<u64> {
        let head = self.head();
        // Into the ring whether or not local readers were counted: one
        // that attaches anyway reads (none: nothing waits for it).
        let timeout = self.opts.send_timeout;
        let mut wait = wait_for(timeout);
        if let Some(c) = cancel {
            wait = wait.with_cancel(c);
        }
        let mut r = self
            .writer
            .reserve_with(HEAD + msg.len(), wait)
            .map_err(|e| ring_error(e, "room in the broadcast", timeout))?;
        r[..HEAD].copy_from_slice(&head);
        r[HEAD..HEAD + msg.len()].copy_from_slice(msg);
        let Some(p) = &mut self.net else {
            r.commit(HEAD + msg.len())?;
            return Ok(self.sent());
        };
        // Remote readers first, as `send_value` does: a publication that
        // fails (a message over the network's size limit, a remote reader
        // slower than the send timeout) leaves the record uncommitted, so
        // local readers never get a message remote ones do not. The
        // header's sequence number travels as the topic.
        publish(p, self.hellos.as_ref(), self.seq, &head[..8], msg)?;
        // Published: the number is used, whatever the commit says.
        let committed = r.commit(HEAD + msg.len());
        let seq = self.sent();
        committed?;
        Ok(seq)
    }

    /// Sends `value` as an rkyv archive serialized straight into the ring
    /// (the serialization is the one copy; remote readers are sent it
    /// from there). Returns its sequence number. A send that fails
    /// reached no local reader; some remote ones may have it.
    pub fn send_value<T: Archivable>(&mut self, value: &T) -> Result<u64> {
        let head = self.head();
        let timeout = self.opts.send_timeout;
        let spilled = {
            let mut r = self
                .writer
                .reserve_with(HEAD + self.hint, wait_for(timeout))
                .map_err(|e| ring_error(e, "room in the broadcast", timeout))?;
            r[..HEAD].copy_from_slice(&head);
            match archive_into(value, &mut r[HEAD..]).map_err(Error::Archive)? {
                Archived::InPlace(n) => {
                    // Remote readers first, from the ring: a network
                    // failure leaves the record uncommitted (and its
                    // number unused).
                    if let Some(p) = &mut self.net {
                        publish(
                            p,
                            self.hellos.as_ref(),
                            self.seq,
                            &head[..8],
                            &r[HEAD..HEAD + n],
                        )?;
                    }
                    // Published: the number is used, whatever the commit
                    // says (remote readers have it).
                    let committed = r.commit(HEAD + n);
                    let seq = self.seq;
                    if committed.is_ok() || self.net.is_some() {
                        self.sent();
                    }
                    committed?;
                    self.hint = self.fit_hint(n);
                    return Ok(seq);
                }
                // Dropped uncommitted: nothing is published.
                Archived::Spilled(buf) => buf,
            }
        };
        let seq = self.send(&spilled)?;
        self.hint = self.fit_hint(spilled.len());
        Ok(seq)
    }

    /// The room the next typed send reserves after an archive of `n`
    /// bytes: that, within what the ring carries inline with the header
    /// (a larger archive spills; reserving its size ahead would take an
    /// overflow segment for every later value, however small).
    fn fit_hint(&self, n: usize) -> usize {
        let inline = self.writer.max_inline().saturating_sub(HEAD).max(MIN_HINT);
        n.clamp(MIN_HINT, inline)
    }

    /// Whether the local reader that attached as `index` from process
    /// `pid` (as that process knows itself: pids compare within its own
    /// namespace) is known dead: it has a slot in the ring (tagged with
    /// its index, recording that pid) and no such slot's process holds
    /// its lease. A remote reader (no slot of its pid, even where a dead
    /// local one of the same index is left), or one not in the ring
    /// (never came, or evicted), is not judged here.
    pub(crate) fn local_reader_dead(&self, index: u32, pid: u32) -> bool {
        let mut tagged = self
            .writer
            .readers()
            .into_iter()
            .filter(|r| r.tag == Some(index) && r.pid == pid)
            .peekable();
        tagged.peek().is_some() && tagged.all(|r| !self.writer.reader_alive(r.slot))
    }

    fn head(&self) -> [u8; HEAD] {
        let mut h = [0u8; HEAD];
        h[..8].copy_from_slice(&self.seq.to_le_bytes());
        h
    }

    fn sent(&mut self) -> u64 {
        self.seq += 1;
        self.seq - 1
    }
}

//! Rank 0's rendezvous: a TCP listener with a thread per connection,
//! serving [`Request`]s over the state they share. Collectives meet in a
//! table of contributions (answered once every rank took part); locks
//! queue their askers in arrival order. A connection that closes (its
//! process died, or left) gives up its places and releases what it held.
//!
//! Hostile peers: a connection's first frame must be a well-formed hello
//! for this group, within [`Limits::hello_within`]; a frame, once begun,
//! must arrive within [`Limits::frame_within`]; frames longer than
//! [`Limits::max_frame`] are refused before allocating; contributions
//! held at once are bounded by [`Limits::max_held`] bytes; connections by
//! [`Limits::max_connections`]. Each offence drops only that connection
//! (logged), and the others are served meanwhile on their own threads.

use super::wire::{read_frame, write_frame, Reply, Request, Secret, MAX_SECRET, VERSION};
use crate::error::{Error, Result};
use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The rendezvous's limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest frame taken (a collective's value, and the framing).
    pub max_frame: usize,
    /// Most bytes of contributions held at once, over all collectives.
    pub max_held: u64,
    /// Most connections at once.
    pub max_connections: usize,
    /// How long a new connection has to say hello.
    pub hello_within: Duration,
    /// How long a frame, once begun, has to arrive whole.
    pub frame_within: Duration,
}

impl Limits {
    /// Limits for a group of `size` ranks.
    pub fn for_group(size: u32) -> Limits {
        Limits {
            max_frame: MAX_FRAME,
            max_held: 4 << 30,
            max_connections: (size as usize).saturating_mul(4).saturating_add(64),
            hello_within: Duration::from_secs(10),
            frame_within: Duration::from_secs(30),
        }
    }
}

/// The largest frame there can be (lengths are 32-bit), less room for
/// the framing of a collective's answer.
pub const MAX_FRAME: usize = (u32::MAX as usize) - (1 << 20);

/// Longest hello: its fields and the longest secret.
const HELLO_MAX: usize = 16 + MAX_SECRET;

/// How often a waiting connection looks whether its peer left.
const LOOK: Duration = Duration::from_millis(100);

/// One collective on its way.
struct Collect {
    n: u32,
    values: Vec<Option<Vec<u8>>>,
    count: u32,
    /// Connections waiting for its answer.
    waiting: u32,
    bytes: u64,
}

/// A lock's holder.
struct Holder {
    conn: u64,
    rank: u32,
    pid: u32,
    ticket: u64,
    since: Instant,
    /// Its grant was sent: should it die now, the lock's state may be
    /// half-updated.
    told: bool,
    /// The dead holder it was told of, if any (passed on again if it
    /// gives the lock back without saying the state was repaired).
    inherited: Option<(u32, u32)>,
}

/// A lock asker in the queue.
#[derive(Clone, Copy)]
struct Asker {
    conn: u64,
    rank: u32,
    pid: u32,
    ticket: u64,
}

/// A lock: its holder and its queue, in arrival order.
#[derive(Default)]
struct LockQ {
    holder: Option<Holder>,
    queue: VecDeque<Asker>,
    /// The last holder that died holding it, for the next grant.
    died: Option<(u32, u32)>,
    /// Tickets given (arrivals) and grants made so far.
    tickets: u64,
    turns: u64,
}

impl LockQ {
    /// Hands the lock to the first in the queue, if any.
    fn pass(&mut self) {
        self.holder = self.queue.pop_front().map(|a| Holder {
            conn: a.conn,
            rank: a.rank,
            pid: a.pid,
            ticket: a.ticket,
            since: Instant::now(),
            told: false,
            inherited: None,
        });
    }

    /// Queues an asker (with the next ticket).
    fn arrive(&mut self, conn: u64, rank: u32, pid: u32) {
        let ticket = self.tickets;
        self.tickets += 1;
        self.queue.push_back(Asker {
            conn,
            rank,
            pid,
            ticket,
        });
    }
}

#[derive(Default)]
struct State {
    collects: HashMap<Vec<u8>, Collect>,
    locks: HashMap<Vec<u8>, LockQ>,
    held: u64,
}

/// A service rank 0 runs beside the rendezvous (a task pool): asked by
/// ranks through [`Request::Call`], told when a connection closes.
pub trait Service: Send + Sync {
    /// Answers `body`, asked through connection `conn`.
    fn call(&self, conn: u64, body: &[u8]) -> Vec<u8>;
    /// Connection `conn` closed (its process died, or left).
    fn gone(&self, conn: u64);
}

struct Shared {
    size: u32,
    /// What a hello must show (see [`Secret`]).
    secret: Secret,
    /// Services by name.
    services: Mutex<HashMap<Vec<u8>, Arc<dyn Service>>>,
    limits: Limits,
    state: Mutex<State>,
    changed: Condvar,
    stop: AtomicBool,
    connections: AtomicUsize,
    /// Connections that said hello, from ranks other than 0.
    others: AtomicUsize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running rendezvous; stops when dropped.
pub struct Server {
    address: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Binds `address` (port 0: any free one) for a group of `size`,
    /// letting in the connections whose hello shows `secret` (see
    /// [`Secret`]).
    pub fn bind(address: &str, size: u32, limits: Limits, secret: Secret) -> Result<Server> {
        let listener = TcpListener::bind(address).map_err(|e| Error::Rendezvous {
            address: address.to_string(),
            why: format!("rank 0 cannot listen there: {e}"),
        })?;
        let bound = listener
            .local_addr()
            .map_err(|e| Error::io("the rendezvous's address", e))?;
        let shared = Arc::new(Shared {
            size,
            secret,
            services: Mutex::default(),
            limits,
            state: Mutex::default(),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            others: AtomicUsize::new(0),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("shoal-rendezvous".into())
            .spawn(move || accept(&listener, &s))
            .map_err(|e| Error::io("starting the rendezvous", e))?;
        Ok(Server {
            address: bound,
            shared,
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Runs `service` under `key` (replacing one there).
    pub fn register(&self, key: &[u8], service: Arc<dyn Service>) {
        self.services().insert(key.to_vec(), service);
    }

    /// Stops running the service `key`.
    pub fn unregister(&self, key: &[u8]) {
        self.services().remove(key);
    }

    fn services(&self) -> MutexGuard<'_, HashMap<Vec<u8>, Arc<dyn Service>>> {
        self.shared
            .services
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Waits (up to `timeout`) until no rank but 0 is connected: the
    /// others are done with it (how rank 0 outlives their last
    /// collective).
    pub fn wait_for_others_to_leave(&self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while self.shared.others.load(Ordering::Acquire) > 0 {
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.changed.notify_all();
        // Wakes the accept loop.
        let _ = TcpStream::connect_timeout(&self.address, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn accept(listener: &TcpListener, shared: &Arc<Shared>) {
    let mut next = 0u64;
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::Acquire) {
            break;
        }
        let Ok(stream) = stream else { continue };
        if shared.connections.load(Ordering::Acquire) >= shared.limits.max_connections {
            tracing::warn!(peer = ?stream.peer_addr().ok(), "shoal rendezvous: too many connections; one refused");
            continue;
        }
        shared.connections.fetch_add(1, Ordering::AcqRel);
        next += 1;
        let (id, s) = (next, shared.clone());
        let spawned = std::thread::Builder::new()
            .name("shoal-rendezvous-peer".into())
            .spawn(move || {
                let peer = stream.peer_addr().ok();
                if let Err(e) = serve(id, stream, &s) {
                    tracing::warn!(?peer, error = %e, "shoal rendezvous: a connection dropped");
                }
                s.connections.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            shared.connections.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// What a connection said it is.
struct Peer {
    id: u64,
    rank: u32,
}

/// Serves one connection until it closes or offends.
fn serve(id: u64, mut stream: TcpStream, shared: &Shared) -> Result<()> {
    let _ = stream.set_nodelay(true);
    let io = |e| Error::io("rendezvous connection", e);
    stream
        .set_read_timeout(Some(shared.limits.hello_within))
        .map_err(io)?;
    // A peer that does not read its answers is dropped, not waited for.
    stream
        .set_write_timeout(Some(shared.limits.frame_within))
        .map_err(io)?;
    let hello = read_frame(
        &mut Deadline {
            stream: &mut stream,
            end: Instant::now() + shared.limits.hello_within,
        },
        HELLO_MAX,
    )?;
    let Some(body) = hello else {
        return Ok(());
    };
    let peer = match Request::decode(&body)? {
        Request::Hello {
            version,
            rank,
            size,
            secret,
        } => {
            let refuse = if version != VERSION {
                Some(format!(
                    "protocol version {version}, this rendezvous speaks {VERSION}"
                ))
            } else if !secret.matches(&shared.secret) {
                Some(match (secret.is_empty(), shared.secret.is_empty()) {
                    (true, _) => "no secret, and this group has one (SHOAL_SECRET)".into(),
                    (_, true) => "a secret, and this group has none (SHOAL_SECRET)".into(),
                    _ => "another group's secret (SHOAL_SECRET differs)".into(),
                })
            } else if size != shared.size {
                Some(format!(
                    "a group of {size}, this rendezvous's has {}",
                    shared.size
                ))
            } else if rank >= size {
                Some(format!("rank {rank} of {size}"))
            } else {
                None
            };
            if let Some(why) = refuse {
                send(&mut stream, &Reply::Refused(why.clone()))?;
                return Err(Error::Refused(why));
            }
            send(&mut stream, &Reply::Ok)?;
            Peer { id, rank }
        }
        other => {
            return Err(Error::Malformed {
                what: "rendezvous hello",
                why: format!("the first request is {other:?}"),
            })
        }
    };
    if peer.rank != 0 {
        shared.others.fetch_add(1, Ordering::AcqRel);
    }
    let r = serve_requests(&peer, &mut stream, shared);
    forget(&peer, shared);
    if peer.rank != 0 {
        shared.others.fetch_sub(1, Ordering::AcqRel);
    }
    r
}

fn serve_requests(peer: &Peer, stream: &mut TcpStream, shared: &Shared) -> Result<()> {
    stream
        .set_read_timeout(Some(LOOK))
        .map_err(|e| Error::io("rendezvous connection", e))?;
    loop {
        let Some(body) = read_idle(stream, shared)? else {
            return Ok(());
        };
        let reply = match Request::decode(&body)? {
            Request::Hello { .. } => Reply::Refused("a second hello".into()),
            Request::Collect {
                key,
                n,
                rank,
                want,
                wait_ms,
                value,
            } => collect(stream, shared, key, n, rank, want, wait_ms, value),
            Request::Lock {
                key,
                rank,
                pid,
                wait_ms,
                notice_ms,
            } => lock(peer, stream, shared, key, (rank, pid), wait_ms, notice_ms)?,
            Request::Unlock { key, consistent } => unlock(peer, shared, &key, consistent),
            Request::Call { key, body } => {
                let svc = shared
                    .services
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&key)
                    .cloned();
                match svc {
                    Some(s) => Reply::Answer(s.call(peer.id, &body)),
                    None => Reply::Refused(format!(
                        "no service {:?} here",
                        String::from_utf8_lossy(&key)
                    )),
                }
            }
        };
        send(stream, &reply)?;
    }
}

/// The next frame of a connection that may stay idle between frames for
/// as long as it likes (a rank between collectives), but must send a
/// frame it began within the limit. `None`: closed, or the rendezvous
/// stops.
fn read_idle(stream: &mut TcpStream, shared: &Shared) -> Result<Option<Vec<u8>>> {
    let mut first = [0u8; 1];
    loop {
        if shared.stop.load(Ordering::Acquire) {
            return Ok(None);
        }
        match stream.read(&mut first) {
            Ok(0) => return Ok(None),
            Ok(_) => break,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(Error::io("rendezvous connection", e)),
        }
    }
    // Begun: the rest within the limit.
    let io = |e| Error::io("rendezvous connection", e);
    let mut rest = std::io::Read::chain(
        &first[..],
        Deadline {
            stream: &mut *stream,
            end: Instant::now() + shared.limits.frame_within,
        },
    );
    let r = read_frame(&mut rest, shared.limits.max_frame);
    stream.set_read_timeout(Some(LOOK)).map_err(io)?;
    match r? {
        Some(b) => Ok(Some(b)),
        None => Err(Error::Malformed {
            what: "rendezvous frame",
            why: "cut short".into(),
        }),
    }
}

/// Reads from a stream until a deadline for the whole, not per read: a
/// peer that sends a byte at a time gets no longer than one that sends
/// nothing.
struct Deadline<'a> {
    stream: &'a mut TcpStream,
    end: Instant,
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the frame did not arrive whole in time",
            ));
        }
        self.stream.set_read_timeout(Some(left))?;
        self.stream.read(buf)
    }
}

fn send(stream: &mut TcpStream, reply: &Reply) -> Result<()> {
    let mut b = Vec::new();
    reply.encode(&mut b);
    write_frame(stream, &b).map_err(|e| Error::io("answering a rank", e))
}

/// Whether the peer closed its end (a dead process's socket closes).
fn gone(stream: &TcpStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut b = [0u8; 1];
    // SAFETY: `b` is a valid, writable 1-byte buffer for the call's
    // duration, and the fd is the stream's, open while `stream` lives;
    // MSG_PEEK leaves any byte in the socket, MSG_DONTWAIT never blocks.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            b.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n == 0 {
        return true;
    }
    n < 0 && {
        let e = std::io::Error::last_os_error();
        !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
        )
    }
}

#[allow(clippy::too_many_arguments)]
fn collect(
    stream: &TcpStream,
    shared: &Shared,
    key: Vec<u8>,
    n: u32,
    rank: u32,
    want: bool,
    wait_ms: u32,
    value: Vec<u8>,
) -> Reply {
    if n == 0 || n > shared.size || rank >= n {
        return Reply::Refused(format!("rank {rank} of {n} in a group of {}", shared.size));
    }
    let len = value.len() as u64;
    tracing::trace!(
        key = %String::from_utf8_lossy(&key),
        rank,
        n,
        len,
        "shoal rendezvous: a contribution"
    );
    let mut st = shared.lock();
    {
        let st = &mut *st;
        if st.held.saturating_add(len) > shared.limits.max_held {
            return Reply::Refused(format!(
            "the rendezvous holds {} bytes of values, and {len} more would pass its limit of {}",
            st.held, shared.limits.max_held
        ));
        }
        let c = st.collects.entry(key.clone()).or_insert_with(|| Collect {
            n,
            values: vec![None; n as usize],
            count: 0,
            waiting: 0,
            bytes: 0,
        });
        if c.n != n {
            return Reply::Refused(format!(
                "ranks disagree on the collective's size: {} and {n}",
                c.n
            ));
        }
        let slot = &mut c.values[rank as usize];
        if slot.is_some() {
            return Reply::Refused(format!("rank {rank} took part twice"));
        }
        *slot = Some(value);
        c.count += 1;
        c.waiting += 1;
        c.bytes += len;
        let complete = c.count == n;
        st.held += len;
        if complete {
            shared.changed.notify_all();
        }
    }
    let end = Instant::now() + Duration::from_millis(u64::from(wait_ms));
    loop {
        let Some(c) = st.collects.get(&key) else {
            return Reply::Refused("the collective was dropped".into());
        };
        if c.count == c.n {
            break;
        }
        let now = Instant::now();
        if now >= end || shared.stop.load(Ordering::Acquire) || gone(stream) {
            let absent = c
                .values
                .iter()
                .enumerate()
                .filter(|(_, v)| v.is_none())
                .map(|(r, _)| r as u32)
                .collect();
            leave(&mut st, &key);
            return Reply::Absent(absent);
        }
        st = shared
            .changed
            .wait_timeout(st, (end - now).min(LOOK))
            .map(|(g, _)| g)
            .unwrap_or_else(|p| p.into_inner().0);
    }
    let reply = match st.collects.get(&key) {
        Some(c) if want => Reply::Values(
            c.values
                .iter()
                .map(|v| v.clone().unwrap_or_default())
                .collect(),
        ),
        _ => Reply::Ok,
    };
    leave(&mut st, &key);
    reply
}

/// A waiter leaves collective `key`: the last one frees it.
fn leave(st: &mut State, key: &[u8]) {
    let Some(c) = st.collects.get_mut(key) else {
        return;
    };
    c.waiting -= 1;
    if c.waiting == 0 {
        let bytes = c.bytes;
        st.collects.remove(key);
        st.held -= bytes;
    }
}

/// Most locks one connection holds at once (each is kept until given
/// back: a peer taking lock after lock under new names must not grow the
/// table without bound).
const MAX_HELD_LOCKS: usize = 1024;
/// Most locks the rendezvous keeps (held, waited for, or left marked by
/// a holder that did not repair what it guards): a bound on the table
/// whatever its peers do.
const MAX_LOCK_NAMES: usize = 1 << 16;

fn lock(
    peer: &Peer,
    stream: &mut TcpStream,
    shared: &Shared,
    key: Vec<u8>,
    (rank, pid): (u32, u32),
    wait_ms: u32,
    notice_ms: u32,
) -> Result<Reply> {
    let mut st = shared.lock();
    if !st.locks.contains_key(&key) && st.locks.len() >= MAX_LOCK_NAMES {
        return Ok(Reply::Refused(format!(
            "the rendezvous keeps {MAX_LOCK_NAMES} locks already"
        )));
    }
    if !st.locks.contains_key(&key)
        && st
            .locks
            .values()
            .filter(|q| q.holder.as_ref().is_some_and(|h| h.conn == peer.id))
            .count()
            >= MAX_HELD_LOCKS
    {
        return Ok(Reply::Refused(format!(
            "this connection holds {MAX_HELD_LOCKS} locks already"
        )));
    }
    let q = st.locks.entry(key.clone()).or_default();
    if q.holder.as_ref().is_some_and(|h| h.conn == peer.id) {
        return Ok(Reply::Refused(
            "this connection holds the lock already".into(),
        ));
    }
    if q.holder.is_none() && q.queue.is_empty() {
        q.arrive(peer.id, rank, pid);
        q.pass();
    } else if wait_ms == 0 {
        return Ok(Reply::NotGranted);
    } else {
        q.arrive(peer.id, rank, pid);
    }
    let start = Instant::now();
    let end = start + Duration::from_millis(u64::from(wait_ms));
    let notice = start + Duration::from_millis(u64::from(notice_ms));
    let mut noticed = false;
    loop {
        let q = st.locks.entry(key.clone()).or_default();
        if q.holder.as_ref().is_some_and(|h| h.conn == peer.id) {
            if gone(stream) {
                // Its turn came after it left: the next one's.
                q.pass();
                shared.changed.notify_all();
                return Ok(Reply::NotGranted);
            }
            let died = q.died.take();
            let turn = q.turns;
            q.turns += 1;
            let mut ticket = 0;
            if let Some(h) = q.holder.as_mut() {
                h.told = true;
                h.inherited = died;
                ticket = h.ticket;
            }
            return Ok(Reply::Granted { died, ticket, turn });
        }
        let now = Instant::now();
        if now >= end || shared.stop.load(Ordering::Acquire) || gone(stream) {
            q.queue.retain(|w| w.conn != peer.id);
            return Ok(Reply::NotGranted);
        }
        if !noticed && now >= notice {
            noticed = true;
            if let Some(h) = &q.holder {
                let held = Reply::Held {
                    rank: h.rank,
                    pid: h.pid,
                    held_ms: h.since.elapsed().as_millis() as u64,
                };
                drop(st);
                send(stream, &held)?;
                st = shared.lock();
                continue;
            }
        }
        let slice = (end - now).min(LOOK);
        let slice = if noticed {
            slice
        } else {
            slice.min(
                notice
                    .saturating_duration_since(now)
                    .max(Duration::from_millis(1)),
            )
        };
        st = shared
            .changed
            .wait_timeout(st, slice)
            .map(|(g, _)| g)
            .unwrap_or_else(|p| p.into_inner().0);
    }
}

fn unlock(peer: &Peer, shared: &Shared, key: &[u8], consistent: bool) -> Reply {
    let mut st = shared.lock();
    let Some(q) = st.locks.get_mut(key) else {
        return Reply::Refused("the lock is not held".into());
    };
    let Some(h) = q.holder.take_if(|h| h.conn == peer.id) else {
        return Reply::Refused("the lock is not held through this connection".into());
    };
    if !consistent {
        // Not repaired: the next holder is told as this one was (or of
        // this one, should it have been a clean grant).
        q.died = h.inherited.or(Some((h.rank, h.pid)));
    }
    q.pass();
    if q.holder.is_none() && q.queue.is_empty() && q.died.is_none() {
        st.locks.remove(key);
    }
    shared.changed.notify_all();
    Reply::Ok
}

/// A connection closed: its places in queues go, and the locks it held
/// pass on, marked as left by a dead holder if it had been told.
fn forget(peer: &Peer, shared: &Shared) {
    let services: Vec<Arc<dyn Service>> = shared
        .services
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .cloned()
        .collect();
    for s in services {
        s.gone(peer.id);
    }
    let mut st = shared.lock();
    forget_locks(peer, &mut st);
    // Locks nobody holds, waits for or must be told about go.
    st.locks
        .retain(|_, q| q.holder.is_some() || !q.queue.is_empty() || q.died.is_some());
    drop(st);
    shared.changed.notify_all();
}

fn forget_locks(peer: &Peer, st: &mut State) {
    for q in st.locks.values_mut() {
        q.queue.retain(|w| w.conn != peer.id);
        if let Some(h) = q.holder.take_if(|h| h.conn == peer.id) {
            if h.told {
                tracing::warn!(
                    rank = h.rank,
                    pid = h.pid,
                    "shoal rendezvous: a lock's holder went away holding it; passed on as left inconsistent"
                );
                q.died = Some((h.rank, h.pid));
            }
            q.pass();
        }
    }
}

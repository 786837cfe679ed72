//! The bridge: how producers and consumers on other hosts reach a work
//! queue (or a gather) that lives in this host's shared memory.
//!
//! The process that creates the queue runs the bridge beside it. Its
//! door (a replier at the address the handle carries) takes joins; for
//! each peer that joins, the bridge attaches a local endpoint of the
//! peer's kind to the ring (its proxy) and starts a thread with a
//! replier of the peer's own, which does what the peer asks (put, claim,
//! close, take) with the proxy, exactly as a local endpoint would. So the
//! ring's rules hold for remote peers unchanged: each message is taken
//! once, claims and the close end the work, and a proxy that leaves
//! owing claimed messages makes consumers end with `ProducersLost`.
//!
//! - **Waits.** A peer's put or take waits on the ring for at most
//!   [`WAIT_CAP`] (then it is answered "not yet" and asks again while
//!   its own timeout lasts), so a peer's thread is never stuck in the
//!   ring, and notices the bridge stopping.
//! - **Silence.** A peer's heartbeat comes every quarter of the lease; a
//!   peer not heard from for a whole lease (it died, or its host or the
//!   network did) is dropped: its proxy leaves, settling what it owed.
//! - **Twice-delivered requests.** A request carries its asker's
//!   sequence number; a request repeated by the wire (after a reconnect)
//!   gets the first answer again, and is not done twice.
//! - **Hostile peers.** Every request is decoded and checked (see
//!   [`wire`](super::wire)); a malformed one is answered with a failure
//!   and changes nothing. Joins beyond the ring's endpoint slots fail.

use super::wire::{self, Op, Role, Status};
use super::{Consumer, Producer, QueueOptions};
use crate::error::{Error, Result};
use crate::handle::{Handle, Kind};
use crate::net::ask::NetReplier;
use crate::net::serve::{runtime, serve, Heard};
use shoal_transport::{Address, Options, Reply};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The longest a peer's request waits on the ring before it is answered
/// "not yet".
pub(crate) const WAIT_CAP: Duration = Duration::from_millis(200);
/// How long the door waits for a peer's thread to bind its replier.
const BIND_WAIT: Duration = Duration::from_secs(5);
/// Most peers the roster remembers (those gone are forgotten first).
const ROSTER_MAX: usize = 1024;
/// Most messages, and bytes past the first, one take hands a peer.
const TAKE_MAX: (u32, usize) = (1024, 4 << 20);

/// A peer on another host, as the bridge knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PeerInfo {
    /// Producer (writer) or consumer.
    pub role: Role,
    /// Its pid (in its own pid namespace).
    pub pid: u32,
    /// Its host (see [`host_id`](crate::gather::host_id)).
    pub host: u64,
    /// What it puts before each message (a gather writer's sender).
    pub head: [u8; 16],
    /// Whether it left or was dropped.
    pub gone: bool,
}

/// The peers that joined, in join order.
pub(crate) type Roster = Arc<Mutex<Vec<PeerInfo>>>;

/// The bridge of one queue: its door and its peers' threads, stopped
/// when this value drops.
pub(crate) struct Bridge {
    stop: Arc<AtomicBool>,
    address: Address,
    roster: Roster,
    door: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// What the door needs to attach proxies and start their threads.
#[derive(Clone)]
struct Setup {
    handle: Handle,
    kind: Kind,
    opts: QueueOptions,
    net: Options,
    stop: Arc<AtomicBool>,
    roster: Roster,
}

impl Bridge {
    /// Starts the bridge of the queue `handle` names (a channel of
    /// `kind`), its door bound at `opts.remote`.
    pub(crate) fn start(handle: &Handle, kind: Kind, opts: &QueueOptions) -> Result<Bridge> {
        let url = opts
            .remote
            .as_deref()
            .ok_or_else(|| Error::BadOptions("no address for remote peers".into()))?;
        let bind = crate::net::address(url)?;
        let stop = Arc::new(AtomicBool::new(false));
        let roster = Roster::default();
        let setup = Setup {
            handle: handle.clone(),
            kind,
            opts: opts.clone(),
            net: opts.net_options(),
            stop: stop.clone(),
            roster: roster.clone(),
        };
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Address>>(1);
        let door = std::thread::Builder::new()
            .name("shoal-bridge-door".into())
            .spawn(move || door(bind, setup, tx))
            .map_err(|source| Error::Io {
                what: "starting a queue's bridge",
                source,
            })?;
        let address = match rx.recv() {
            Ok(r) => r?,
            Err(_) => return Err(Error::Net(shoal_transport::Error::Closed)),
        };
        Ok(Bridge {
            stop,
            address,
            roster,
            door: Some(door),
        })
    }

    /// Where remote peers join (the port bound, QUIC's pin).
    pub(crate) fn address(&self) -> &Address {
        &self.address
    }

    /// The peers that joined so far.
    pub(crate) fn roster(&self) -> &Roster {
        &self.roster
    }
}

impl Drop for Bridge {
    /// Stops the door (waited for: within a slice) and every peer's
    /// thread (each within a slice and a wait cap; not waited for).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(d) = self.door.take() {
            let _ = d.join();
        }
    }
}

/// The door's thread: binds, says where, then serves joins until the
/// bridge stops.
fn door(bind: Address, setup: Setup, ready: std::sync::mpsc::SyncSender<Result<Address>>) {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let replier = match rt.block_on(NetReplier::bind(&bind, &setup.net)) {
        Ok(r) => r,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let address = replier.address();
    let _ = ready.send(Ok(address.clone()));
    let mut joined = 0u32;
    let stop = setup.stop.clone();
    serve(
        &rt,
        replier,
        &stop,
        |req, out| {
            let mut scratch = Vec::new();
            admit(&setup, &address, &mut joined, req, &mut scratch);
            out.extend_from_slice(&scratch);
            Heard::Peer
        },
        |_| false,
    );
}

/// Writes a reply: its head, then `body`.
fn reply(out: &mut Vec<u8>, status: Status, a: u32, b: u64, body: &[u8]) {
    out.clear();
    out.extend_from_slice(&wire::reply_head(status, a, b));
    out.extend_from_slice(body);
}

/// A failure reply saying `why`.
fn failed(out: &mut Vec<u8>, why: &str) {
    reply(out, Status::Failed, 0, 0, why.as_bytes());
}

/// The kind byte a join carries.
pub(crate) fn kind_byte(kind: Kind) -> u8 {
    kind as u8 + 1
}

/// Answers a join: checks it, attaches the peer's proxy, starts its
/// thread and replies with where that thread answers.
fn admit(setup: &Setup, door: &Address, joined: &mut u32, req: &[u8], out: &mut Vec<u8>) {
    let r = match wire::request(req) {
        Ok(r) => r,
        Err(why) => return failed(out, why),
    };
    match r.op {
        Op::Join => {}
        Op::Ping => return reply(out, Status::Ok, 0, 0, b""),
        _ => return failed(out, "the door takes joins only"),
    }
    let j = match wire::join(r.body) {
        Ok(j) => j,
        Err(why) => return failed(out, why),
    };
    let ours = crate::handle::format();
    if j.version != wire::VERSION || j.format != ours {
        return reply(out, Status::Incompatible, 0, 0, ours.as_bytes());
    }
    if j.kind != kind_byte(setup.kind) {
        return reply(out, Status::WrongKind, 0, 0, setup.kind.name().as_bytes());
    }
    let s = &setup;
    let proxy = match (j.role, s.kind) {
        (Role::Producer, Kind::Gather) => {
            Producer::attach_kind(&s.handle, &s.opts, Kind::Gather, j.head.to_vec())
                .map(Proxy::Producer)
        }
        (Role::Producer, _) => {
            Producer::attach_kind(&s.handle, &s.opts, s.kind, Vec::new()).map(Proxy::Producer)
        }
        (Role::Consumer, Kind::WorkQueue) => {
            Consumer::attach_kind(&s.handle, &s.opts, Kind::WorkQueue, 0).map(Proxy::Consumer)
        }
        (Role::Consumer, _) => {
            return failed(out, "a gather's only reader is the process that made it")
        }
    };
    let proxy = match proxy {
        Ok(p) => p,
        Err(e) => return failed(out, &e.to_string()),
    };
    if let Proxy::Producer(p) = &proxy {
        p.act_for(j.pid);
    }
    *joined = joined.wrapping_add(1);
    let at = peer_address(door, *joined);
    let token = shoal_transport::PeerId::random().0;
    // What both sides take: the smaller of the two largest messages.
    let max_message = usize::try_from(j.max_message)
        .unwrap_or(usize::MAX)
        .clamp(4096, s.net.max_message.max(4096));
    let info = PeerInfo {
        role: j.role,
        pid: j.pid,
        host: j.host,
        head: j.head,
        gone: false,
    };
    {
        let mut r = lock(&s.roster);
        // Bounded: the oldest of those gone make room.
        if r.len() >= ROSTER_MAX {
            if let Some(i) = r.iter().position(|p| p.gone) {
                r.remove(i);
            }
        }
        r.push(info);
    }
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Address>>(1);
    let s2 = setup.clone();
    let started = std::thread::Builder::new()
        .name("shoal-bridge-peer".into())
        .spawn(move || peer(at, s2, proxy, info, (token, max_message), tx));
    let answer = match started {
        Ok(_) => match rx.recv_timeout(BIND_WAIT) {
            Ok(r) => r,
            Err(_) => Err(Error::Net(shoal_transport::Error::Closed)),
        },
        Err(source) => Err(Error::Io {
            what: "starting a bridge peer's thread",
            source,
        }),
    };
    match answer {
        Ok(a) => {
            tracing::debug!(role = ?j.role, pid = j.pid, host = format_args!("{:016x}", j.host), at = %a, "bridge: a remote peer joined");
            let lease_ms = u64::try_from(s.opts.lease.as_millis()).unwrap_or(u64::MAX);
            let body = wire::joined(token, max_message as u64, lease_ms, &a.to_string());
            reply(out, Status::Ok, 0, 0, &body)
        }
        Err(e) => {
            mark_gone(&s.roster, &info);
            failed(out, &e.to_string())
        }
    }
}

/// Marks the roster's latest entry for `info` gone (entries move as old
/// ones are dropped: found by identity, not place).
fn mark_gone(roster: &Roster, info: &PeerInfo) {
    let mut r = lock(roster);
    if let Some(p) = r.iter_mut().rev().find(|p| {
        !p.gone
            && p.role == info.role
            && p.pid == info.pid
            && p.host == info.host
            && p.head == info.head
    }) {
        p.gone = true;
    }
}

/// The roster, even if a thread panicked holding it (it holds plain
/// values, always whole).
fn lock(r: &Roster) -> std::sync::MutexGuard<'_, Vec<PeerInfo>> {
    r.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where the `n`th peer's replier binds: the door's host, any port (an
/// ipc path: the door's, numbered).
fn peer_address(door: &Address, n: u32) -> Address {
    crate::net::any_port(door, &format!(".{}.{n}", std::process::id()))
}

/// A peer's endpoint on the ring.
// One per remote peer, moved once into its thread: size does not matter.
#[allow(clippy::large_enum_variant)]
enum Proxy {
    Producer(Producer),
    Consumer(Consumer),
}

/// A peer's thread: binds its replier, says where, then does what the
/// peer asks until it leaves, falls silent for the lease, or the bridge
/// stops; then its proxy leaves the ring.
fn peer(
    at: Address,
    setup: Setup,
    proxy: Proxy,
    info: PeerInfo,
    (token, max_message): (u64, usize),
    ready: std::sync::mpsc::SyncSender<Result<Address>>,
) {
    let bound = runtime().and_then(|rt| {
        let r = rt.block_on(NetReplier::bind(&at, &setup.net))?;
        Ok((rt, r))
    });
    let (rt, replier) = match bound {
        Ok(v) => v,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    if ready.send(Ok(replier.address())).is_err() {
        return;
    }
    let lease = setup.opts.lease;
    let mut state = Served {
        proxy,
        token,
        last_seq: 0,
        last: Vec::new(),
        // Replies within the session's largest message.
        chunk: max_message.saturating_sub(wire::REQUEST_HEAD + 64).max(64),
    };
    let mut silent = false;
    serve(
        &rt,
        replier,
        &setup.stop,
        |req, out| state.answer(req, out),
        |quiet| {
            silent = quiet > lease;
            silent
        },
    );
    if silent {
        let owed = match &state.proxy {
            Proxy::Producer(p) => p.owed(),
            Proxy::Consumer(_) => 0,
        };
        tracing::warn!(
            role = ?info.role,
            pid = info.pid,
            host = format_args!("{:016x}", info.host),
            owed,
            "bridge: a remote peer was silent for its lease ({lease:?}); dropping it"
        );
    }
    mark_gone(&setup.roster, &info);
    drop(state);
}

/// A peer's proxy, and its last answer (for a request the wire repeats).
struct Served {
    proxy: Proxy,
    /// The session's token: a request without it changes nothing.
    token: u64,
    /// The sequence number of the last request done (never lowered).
    last_seq: u64,
    /// The reply it got (its head and whole body).
    last: Vec<u8>,
    /// Most body bytes one reply carries (a longer one comes in parts).
    chunk: usize,
}

impl Served {
    /// Does what `req` asks and writes the reply to `out`; says who
    /// asked.
    fn answer(&mut self, req: &[u8], out: &mut Reply<'_>) -> Heard {
        let mut scratch = Vec::new();
        let heard = self.answer_into(req, &mut scratch);
        match scratch.is_empty() {
            // The reply is `last` (or its first part).
            true => self.send_last(0, out),
            false => out.extend_from_slice(&scratch),
        }
        heard
    }

    /// `last`'s body from `offset` on, as much as one reply carries,
    /// after its head (with the whole body's length).
    fn send_last(&self, offset: usize, out: &mut Reply<'_>) {
        let (h, body) = self.last.split_at(wire::HEAD.min(self.last.len()));
        let Some(rest) = body.get(offset..) else {
            let mut f = Vec::new();
            failed(&mut f, "a part past the reply's end");
            return out.extend_from_slice(&f);
        };
        let part = &rest[..rest.len().min(self.chunk)];
        let mut head = [0u8; wire::HEAD];
        head.copy_from_slice(h);
        // The whole body's length, for a reply that comes in parts.
        head[8..16].copy_from_slice(&(body.len() as u64).to_le_bytes());
        if offset == 0 && body.len() <= self.chunk {
            return out.extend_from_slice(&self.last);
        }
        out.extend_from_slice(&head);
        out.extend_from_slice(part);
    }

    /// Does what `req` asks: a reply to remember goes to `last` (and
    /// `scratch` stays empty), a passing one to `scratch`.
    fn answer_into(&mut self, req: &[u8], scratch: &mut Vec<u8>) -> Heard {
        let r = match wire::request(req) {
            Ok(r) => r,
            Err(why) => {
                failed(scratch, why);
                return Heard::Stranger;
            }
        };
        if r.token != self.token {
            reply(scratch, Status::NotYours, 0, 0, b"");
            return Heard::Stranger;
        }
        match r.op {
            Op::Ping => {
                reply(scratch, Status::Ok, 0, 0, b"");
                return Heard::Peer;
            }
            Op::Bye => {
                reply(scratch, Status::Ok, 0, 0, b"");
                return Heard::Bye;
            }
            Op::More => {
                if r.seq == self.last_seq && self.last.len() >= wire::HEAD {
                    let mut part = Vec::new();
                    let offset = usize::try_from(wire::body_u64(r.body)).unwrap_or(usize::MAX);
                    let mut out_part = Reply::new(&mut part);
                    self.send_last(offset, &mut out_part);
                    *scratch = part;
                } else {
                    failed(scratch, "a part of a reply that is not the last one");
                }
                return Heard::Peer;
            }
            _ => {}
        }
        if r.seq == self.last_seq && !self.last.is_empty() {
            return Heard::Peer; // asked again: the same answer
        }
        if r.seq < self.last_seq {
            failed(scratch, "a request older than the last one done");
            return Heard::Peer;
        }
        if self.last.capacity() > 8 << 20 {
            self.last = Vec::new();
        }
        let wait = Duration::from_millis(u64::from(r.arg)).min(WAIT_CAP);
        let out = &mut self.last;
        match (&mut self.proxy, r.op) {
            (Proxy::Producer(p), Op::Put) => put_all(p, r.body, wait, out),
            (Proxy::Producer(p), Op::Claim) => match p.claim_within(wire::body_u64(r.body), wait) {
                Ok(()) => reply(out, Status::Ok, 0, 0, b""),
                Err(e) => error_reply(out, e, 0),
            },
            (Proxy::Producer(p), Op::Close) => match p.close_within(wait) {
                Ok(()) => reply(out, Status::Ok, 0, 0, b""),
                Err(e) => error_reply(out, e, 0),
            },
            (Proxy::Consumer(c), Op::Take) => {
                let (count, bytes) = wire::take_limits(r.body);
                take_some(
                    c,
                    wait,
                    count.clamp(1, TAKE_MAX.0),
                    (bytes as usize).min(TAKE_MAX.1),
                    out,
                )
            }
            _ => failed(out, "an operation this peer's role does not do"),
        }
        self.last_seq = r.seq;
        Heard::Peer
    }
}

/// Puts each message of a put's body, waiting for room up to `wait` in
/// all; replies how many were put (and why the rest were not).
fn put_all(p: &mut Producer, body: &[u8], wait: Duration, out: &mut Vec<u8>) {
    let end = std::time::Instant::now() + wait;
    let mut done = 0u32;
    for m in wire::puts(body) {
        // Checked whole when the request was read.
        let Some(m) = m else { break };
        let left = end.saturating_duration_since(std::time::Instant::now());
        if let Err(e) = p.put_within(m, left) {
            return error_reply(out, e, done);
        }
        done += 1;
    }
    reply(out, Status::Ok, done, 0, b"")
}

/// Takes one message into the reply `out` (true), waiting up to `wait`;
/// or makes `out` say why there is none (false).
fn take_first(c: &mut Consumer, wait: Duration, out: &mut Vec<u8>) -> bool {
    let first = if wait.is_zero() {
        match c.try_take() {
            Ok(super::TryTake::Taken(t)) => Ok(Some(t)),
            Ok(super::TryTake::Empty) => {
                reply(out, Status::NotYet, 0, 0, b"");
                return false;
            }
            Ok(super::TryTake::Finished) => Ok(None),
            Err(e) => Err(e),
        }
    } else {
        c.take_within(wait)
    };
    match first {
        Ok(Some(t)) => {
            wire::push_taken(out, &t);
            true
        }
        Ok(None) => {
            reply(out, Status::Finished, 0, 0, b"");
            false
        }
        // A wait that ran out is "not yet" (see `error_reply`).
        Err(e) => {
            error_reply(out, e, 0);
            false
        }
    }
}

/// Takes a message, waiting up to `wait`, then whatever more is there at
/// once (up to `count` messages and `bytes` past the first); replies
/// with them, or why none.
fn take_some(c: &mut Consumer, wait: Duration, count: u32, bytes: usize, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&wire::reply_head(Status::Ok, 0, 0));
    let mut n = 0u32;
    if !take_first(c, wait, out) {
        return;
    }
    n += 1;
    let first_len = out.len();
    while n < count && out.len() - first_len < bytes {
        // What comes after the first is taken only if there now; an error
        // or the end is left for the next take to find (both stay).
        match c.try_take() {
            Ok(super::TryTake::Taken(t)) => {
                wire::push_taken(out, &t);
                n += 1;
            }
            _ => break,
        }
    }
    out[4..8].copy_from_slice(&n.to_le_bytes());
}

/// The reply for a failed operation, after `done` messages were put.
fn error_reply(out: &mut Vec<u8>, e: Error, done: u32) {
    match e {
        Error::Timeout { .. } => reply(out, Status::NotYet, done, 0, b""),
        Error::Closed => reply(out, Status::Closed, done, 0, b""),
        Error::ProducersLost { lost, pid } => reply(out, Status::Lost, pid, lost, b""),
        e => reply(out, Status::Failed, done, 0, e.to_string().as_bytes()),
    }
}

//! The calling side of an Rpc: sends each request to every worker and
//! collects their replies.

use super::{decode_head, pid_ns, Hello, Payload, Reply, Silent, Status, HEAD};
use crate::error::{Error, Result};
use crate::gather::{host_id, Gather, Sender};
use crate::handle::Handle;
use crate::{Broadcast, BroadcastOptions, QueueOptions};
use shoal_shm_ring::{Liveness, PeerOptions, ProcessId};
use shoal_transport::Archivable;
use std::time::{Duration, Instant};

/// How to create an Rpc, and how long its calls wait.
///
/// ```
/// use shoal_channel::RpcOptions;
/// use std::time::Duration;
/// let o = RpcOptions::new(3).call_timeout(Duration::from_secs(5));
/// assert_eq!(o.workers, 3);
/// ```
#[derive(Debug, Clone)]
pub struct RpcOptions {
    /// The workers (indices `0..workers`) every call waits for.
    pub workers: u32,
    /// Bytes of the requests' ring (see
    /// [`BroadcastOptions::capacity`]). Default 4 MiB.
    pub capacity: u64,
    /// Bytes of the replies' ring. Default 4 MiB.
    pub reply_capacity: u64,
    /// How long a call waits for every reply (and a request, or a
    /// worker's reply, for room). Default 30 s.
    pub call_timeout: Duration,
    /// How endpoints judge their peers.
    pub peer: PeerOptions,
    /// How many of the workers are on other hosts (they reach the Rpc
    /// over the network: [`remote`](Self::remote)). Default 0.
    pub remote_workers: u32,
    /// Where the caller binds for workers on other hosts
    /// (`nng+tcp://IP:PORT`, `quic://IP:PORT`): the requests' publisher
    /// binds there, the replies' bridge on the same host at a port of its
    /// own.
    pub remote: Option<String>,
    /// The network endpoints' options.
    pub net: shoal_transport::Options,
    /// How long a remote worker may be silent before it is counted dead
    /// (see [`QueueOptions::lease`]). Default 2 s.
    pub lease: Duration,
}

impl RpcOptions {
    /// Options for `workers` workers, the rest default.
    pub fn new(workers: u32) -> Self {
        RpcOptions {
            workers,
            capacity: 4 << 20,
            reply_capacity: 4 << 20,
            call_timeout: Duration::from_secs(30),
            peer: PeerOptions::default(),
            remote_workers: 0,
            remote: None,
            net: shoal_transport::Options::default(),
            lease: Duration::from_secs(2),
        }
    }
    /// Sets [`remote_workers`](Self::remote_workers) and where they
    /// connect ([`remote`](Self::remote)).
    pub fn remote(mut self, workers: u32, bind: &str) -> Self {
        self.remote_workers = workers;
        self.remote = Some(bind.to_string());
        self
    }
    /// Sets [`net`](Self::net).
    pub fn net(mut self, o: shoal_transport::Options) -> Self {
        self.net = o;
        self
    }
    /// Sets [`lease`](Self::lease).
    pub fn lease(mut self, t: Duration) -> Self {
        self.lease = t;
        self
    }
    /// Sets [`capacity`](Self::capacity).
    pub fn capacity(mut self, bytes: u64) -> Self {
        self.capacity = bytes;
        self
    }
    /// Sets [`reply_capacity`](Self::reply_capacity).
    pub fn reply_capacity(mut self, bytes: u64) -> Self {
        self.reply_capacity = bytes;
        self
    }
    /// Sets [`call_timeout`](Self::call_timeout).
    pub fn call_timeout(mut self, t: Duration) -> Self {
        self.call_timeout = t;
        self
    }
    /// Sets [`peer`](Self::peer).
    pub fn peer(mut self, p: PeerOptions) -> Self {
        self.peer = p;
        self
    }

    /// The options of the replies' gather (also what workers attach it
    /// with).
    pub(super) fn gather(&self) -> QueueOptions {
        let mut o = QueueOptions::default()
            .capacity(self.reply_capacity)
            // Twice the workers: a worker that restarts joins while its
            // old self still holds a slot (a remote one's, until its
            // lease ends).
            .peers(self.workers.max(1).saturating_mul(2), 1)
            .put_timeout(Some(self.call_timeout))
            .peer(self.peer)
            .net(self.net.clone())
            .lease(self.lease);
        if self.remote_workers > 0 {
            o.remote = self.remote.as_deref().map(any_port);
        }
        o
    }

    /// The options of the requests' broadcast.
    pub(super) fn broadcast(&self) -> BroadcastOptions {
        let mut o = BroadcastOptions::new(self.workers.max(1))
            .capacity(self.capacity)
            .send_timeout(Some(self.call_timeout))
            .peer(self.peer)
            .net(self.net.clone());
        if let (Some(url), n @ 1..) = (&self.remote, self.remote_workers) {
            o = o.remote(n, url);
        }
        o
    }
}

/// `url` on any port (the replies' bridge binds beside the requests'
/// publisher, which may have taken the port named); an ipc path gets a
/// suffix of its own. A URL that does not parse is left for the bind to
/// refuse.
fn any_port(url: &str) -> String {
    match url.parse::<shoal_transport::Address>() {
        Ok(a) => crate::net::any_port(&a, ".replies").to_string(),
        Err(_) => url.to_string(),
    }
}

/// How long a call waits for replies in one go before it looks at the
/// liveness of the workers it still waits for.
const SLICE: Duration = Duration::from_millis(50);

/// What a message of the replies' gather means for a call `call`: a
/// reply to it, or something else (a hello, noted in `workers`; a reply
/// to an earlier call or a malformed message, dropped).
fn note(workers: &mut [Worker], g: &crate::Gathered<'_>, call: u64) -> Next {
    let sender = g.sender();
    let Some((id, status)) = decode_head(g) else {
        tracing::warn!(
            "shoal rpc: a malformed reply from worker {} (pid {}) dropped",
            sender.index,
            sender.pid
        );
        return Next::Other;
    };
    let n = workers.len();
    let Some(worker) = workers.get_mut(sender.index as usize) else {
        tracing::warn!(
            "shoal rpc: a message from worker {} (pid {}), not one of the {n} workers, dropped",
            sender.index,
            sender.pid,
        );
        return Next::Other;
    };
    let body = g.get(HEAD..).unwrap_or_default();
    match status {
        Status::Hello => {
            // A worker attached (or came back, in a new process).
            *worker = Worker {
                sender: Some(sender),
                hello: Hello::decode(body),
                dead: false,
            };
            Next::Other
        }
        // A reply to an earlier call, too late.
        _ if id != call => Next::Other,
        Status::Ok => Next::Reply(Reply {
            worker: sender,
            result: Ok(Payload::copy(body)),
        }),
        Status::Failed => Next::Reply(Reply {
            worker: sender,
            result: Err(String::from_utf8_lossy(body).into_owned()),
        }),
    }
}

/// One call's collection of replies.
struct Collect {
    call: u64,
    start: Instant,
    end: Instant,
    /// The workers asked (those not found dead before).
    asked: Vec<bool>,
    got: Vec<Option<Reply>>,
    /// Found dead during this call.
    died: Vec<bool>,
}

impl Collect {
    /// A collection for `call`; [`Error::NoReply`] at once when every
    /// worker was found dead before.
    fn start(rpc: &Rpc, call: u64) -> Result<Collect> {
        let start = Instant::now();
        let n = rpc.workers.len();
        // Those found dead earlier are not waited for (nor named again),
        // unless they came back (a hello, noted before the request went).
        let asked: Vec<bool> = rpc.workers.iter().map(|w| !w.dead).collect();
        if !asked.contains(&true) {
            return Err(Error::NoReply {
                missing: (0..n as u32)
                    .map(|i| rpc.workers[i as usize].silent(i, true))
                    .collect(),
                replies: Vec::new(),
                after: Duration::ZERO,
            });
        }
        Ok(Collect {
            call,
            start,
            end: start + rpc.opts.call_timeout,
            asked,
            got: vec![None; n],
            died: vec![false; n],
        })
    }

    /// Whether a worker asked is still awaited, and there is time.
    fn waiting(&self) -> bool {
        let awaited =
            (0..self.got.len()).any(|i| self.asked[i] && self.got[i].is_none() && !self.died[i]);
        awaited && Instant::now() < self.end
    }

    /// Takes what [`Rpc::next`] found.
    fn on(&mut self, rpc: &mut Rpc, n: Next, handler: &mut dyn FnMut(&Reply)) {
        match n {
            Next::Reply(r) => {
                let i = r.worker.index as usize;
                // Its first reply (a second one is a buggy worker's), from
                // the process that said hello as this worker.
                let said = rpc.workers[i].sender.map(|s| (s.pid, s.host));
                if self.got[i].is_none()
                    && said.is_none_or(|id| id == (r.worker.pid, r.worker.host))
                {
                    handler(&r);
                    self.got[i] = Some(r);
                }
            }
            Next::Other => {}
            Next::Nothing => {
                // A slice without replies: who died?
                for i in 0..self.got.len() {
                    if self.asked[i] && self.got[i].is_none() && !self.died[i] && rpc.gone(i) {
                        self.died[i] = true;
                        rpc.workers[i].dead = true;
                    }
                }
            }
        }
    }

    /// The replies, in worker order, or [`Error::NoReply`] naming who did
    /// not answer.
    fn finish(self, rpc: &Rpc) -> Result<Vec<Reply>> {
        let missing: Vec<Silent> = (0..self.got.len())
            .filter(|&i| self.asked[i] && self.got[i].is_none())
            .map(|i| rpc.workers[i].silent(i as u32, self.died[i]))
            .collect();
        let replies: Vec<Reply> = self.got.into_iter().flatten().collect();
        if missing.is_empty() {
            Ok(replies)
        } else {
            Err(Error::NoReply {
                missing,
                replies,
                after: self.start.elapsed(),
            })
        }
    }
}

/// What [`Rpc::next`] found.
enum Next {
    /// A reply to the call.
    Reply(Reply),
    /// Something else, noted or dropped.
    Other,
    /// Nothing in time.
    Nothing,
}

/// What the caller knows of one worker.
#[derive(Debug, Clone, Copy, Default)]
struct Worker {
    /// From its hello.
    sender: Option<Sender>,
    hello: Option<Hello>,
    /// Found dead (and reported once): not waited for any more.
    dead: bool,
}

impl Worker {
    /// Whether it is known dead now: only when its pid means the same
    /// here (same host, same pid namespace) and its process is gone.
    fn died(&self) -> bool {
        let (Some(s), Some(h)) = (self.sender, self.hello) else {
            return false;
        };
        let here = s.host == host_id() && h.pid_ns != 0 && h.pid_ns == pid_ns();
        here && ProcessId {
            pid: s.pid,
            start_time: h.start_time,
        }
        .liveness()
            == Liveness::Dead
    }

    fn silent(&self, index: u32, dead: bool) -> Silent {
        Silent {
            index,
            pid: self.sender.map_or(0, |s| s.pid),
            host: self.sender.map_or(0, |s| s.host),
            dead,
        }
    }
}

/// The calling side of an Rpc, held by the process that created it.
///
/// ```
/// use shoal_channel::{Rpc, RpcOptions, RpcWorker};
/// use std::time::Duration;
/// let mut rpc = Rpc::create(&RpcOptions::new(2))?;
/// // Each worker (in any process) attaches with the handle and its index.
/// let workers: Vec<_> = (0..2)
///     .map(|i| {
///         let mut w = RpcWorker::attach(rpc.handle(), i)?;
///         // Answers each request with its bytes and the worker's index.
///         Ok(std::thread::spawn(move || {
///             w.serve(|req| Ok([&req[..], b" from ", &[b'0' + i as u8]].concat()))
///         }))
///     })
///     .collect::<shoal_channel::Result<_>>()?;
/// rpc.wait_until_ready(Duration::from_secs(5))?;
/// let replies = rpc.call(b"ping")?;
/// assert_eq!(replies[1].ok()?, b"ping from 1");
/// drop(rpc); // the workers' serve loops end
/// for w in workers {
///     assert_eq!(w.join().expect("worker")?, 1);
/// }
/// # Ok::<(), shoal_channel::Error>(())
/// ```
#[derive(Debug)]
pub struct Rpc {
    requests: Broadcast,
    replies: Gather,
    handle: Handle,
    opts: RpcOptions,
    workers: Vec<Worker>,
}

impl Rpc {
    /// Creates an Rpc for `opts.workers` workers (at least one).
    pub fn create(opts: &RpcOptions) -> Result<Rpc> {
        if opts.workers == 0 {
            return Err(Error::BadOptions("an Rpc without workers".into()));
        }
        if opts.remote.as_deref().is_some_and(|r| r.contains(',')) {
            return Err(Error::BadOptions(
                "a remote address with a comma (an Rpc's handle joins its two addresses with one)"
                    .into(),
            ));
        }
        if opts.remote_workers > opts.workers {
            return Err(Error::BadOptions(format!(
                "{} remote workers of {} in all",
                opts.remote_workers, opts.workers
            )));
        }
        let requests = Broadcast::create(&opts.broadcast())?;
        let replies = Gather::create(&opts.gather())?;
        let handle = Handle::rpc(requests.handle(), replies.handle());
        Ok(Rpc {
            requests,
            replies,
            handle,
            workers: vec![Worker::default(); opts.workers as usize],
            opts: opts.clone(),
        })
    }

    /// The handle workers attach with.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Waits until every worker attached and said hello (up to
    /// `timeout`): every request sent afterwards reaches each of them.
    /// [`Error::WorkersMissing`] names those that never came.
    pub fn wait_until_ready(&mut self, timeout: Duration) -> Result<()> {
        let end = Instant::now() + timeout;
        let missing = |w: &[Worker]| -> Vec<u32> {
            (0..w.len() as u32)
                .filter(|&i| w[i as usize].sender.is_none() || w[i as usize].died())
                .collect()
        };
        match self.requests.wait_until_ready(timeout) {
            Err(Error::ReadersMissing { .. }) => {
                // Which ones: those whose hello never came (the hellos
                // that did come are waiting in the ring).
                for _ in 0..4096 {
                    if let Next::Nothing = self.next(Instant::now(), u64::MAX)? {
                        break;
                    }
                }
                // A worker that said hello and left since (known by its
                // process, or by the replies' bridge) is missing too.
                let names: Vec<u32> = (0..self.workers.len())
                    .filter(|&i| self.workers[i].sender.is_none() || self.gone(i))
                    .map(|i| i as u32)
                    .collect();
                // Every worker said hello through the replies, which each
                // does once subscribed to the requests (a remote one whose
                // hello at the publisher's door was lost is not counted
                // there), and none is known gone: ready all the same.
                if !names.is_empty() {
                    return Err(Error::WorkersMissing {
                        missing: names,
                        after: timeout,
                    });
                }
            }
            r => r?,
        }
        while !missing(&self.workers).is_empty() {
            if Instant::now() >= end {
                return Err(Error::WorkersMissing {
                    missing: missing(&self.workers),
                    after: timeout,
                });
            }
            self.next(end, u64::MAX)?;
        }
        Ok(())
    }

    /// Whether worker `i` is known dead now: its process is gone (on this
    /// host: by its pid when it shares this pid namespace, by the lease
    /// of its reader slot in the requests' ring whatever its namespace),
    /// or its replies' bridge counted it gone (a worker that joined over
    /// the network and left, or fell silent for the lease).
    fn gone(&self, i: usize) -> bool {
        let w = &self.workers[i];
        w.died()
            || w.sender.is_some_and(|s| self.replies.remote_writer_gone(s))
            || w.sender.is_some_and(|s| {
                s.host == host_id() && self.requests.local_reader_dead(i as u32, s.pid)
            })
    }

    /// The indices of the workers found dead (no longer waited for).
    pub fn dead_workers(&self) -> Vec<u32> {
        (0..self.workers.len() as u32)
            .filter(|&i| self.workers[i as usize].dead)
            .collect()
    }

    /// Sends `request` to every worker and returns every reply, in worker
    /// order: an answer, or the worker's failure status
    /// ([`Reply::ok`] turns it into an error). Workers that do not answer
    /// within the call timeout, or die first, end the call with
    /// [`Error::NoReply`] naming them (with the other replies). Workers
    /// found dead by an earlier call are not asked (nor named) until they
    /// come back, so a reply's place is not its worker's index: read
    /// [`Reply::worker`].
    pub fn call(&mut self, request: &[u8]) -> Result<Vec<Reply>> {
        let call = self.send(|r| r.send(request))?;
        self.collect(call, &mut |_| {})
    }

    /// [`call`](Self::call) with a typed request, serialized straight into
    /// the requests' ring.
    pub fn call_value<T: Archivable>(&mut self, request: &T) -> Result<Vec<Reply>> {
        let call = self.send(|r| r.send_value(request))?;
        self.collect(call, &mut |_| {})
    }

    /// [`call`](Self::call), handing each reply to `handler` as it comes
    /// (in the order they come), before returning them all.
    pub fn call_each(
        &mut self,
        request: &[u8],
        mut handler: impl FnMut(&Reply),
    ) -> Result<Vec<Reply>> {
        let call = self.send(|r| r.send(request))?;
        self.collect(call, &mut handler)
    }

    /// [`call`](Self::call), folding the replies into one value as they
    /// come (`f(acc, reply)`, in the order they come).
    pub fn call_fold<A>(
        &mut self,
        request: &[u8],
        init: A,
        mut f: impl FnMut(A, &Reply) -> A,
    ) -> Result<A> {
        let call = self.send(|r| r.send(request))?;
        let mut acc = Some(init);
        self.collect(call, &mut |r| acc = acc.take().map(|a| f(a, r)))?;
        acc.ok_or(Error::Closed)
    }

    /// Sends a request with `send`, after noting what came meanwhile
    /// (hellos of workers that attached, or came back, since the last
    /// call: they have joined the requests' ring, so they get this one).
    fn send(&mut self, send: impl FnOnce(&mut Broadcast) -> Result<u64>) -> Result<u64> {
        if self.workers.is_empty() {
            return Err(Error::BadOptions("an Rpc without workers".into()));
        }
        // Bounded: a flood of messages does not keep the call from going.
        for _ in 0..4096 {
            if let Next::Nothing = self.next(Instant::now(), u64::MAX)? {
                break;
            }
        }
        send(&mut self.requests)
    }

    /// Collects the replies to `call`.
    fn collect(&mut self, call: u64, handler: &mut dyn FnMut(&Reply)) -> Result<Vec<Reply>> {
        let mut c = Collect::start(self, call)?;
        while c.waiting() {
            let n = self.next(c.end, call)?;
            c.on(self, n, handler);
        }
        self.last_look(&mut c, handler)?;
        c.finish(self)
    }

    /// [`collect`](Self::collect), awaiting the replies.
    async fn collect_async(
        &mut self,
        call: u64,
        handler: &mut (dyn FnMut(&Reply) + Send),
    ) -> Result<Vec<Reply>> {
        let mut c = Collect::start(self, call)?;
        while c.waiting() {
            let n = self.next_async(c.end, call).await?;
            c.on(self, n, handler);
        }
        self.last_look(&mut c, handler)?;
        c.finish(self)
    }

    /// What already came, taken before a call ends (a worker that
    /// answered, then exited just before it was judged dead, is not named
    /// for nothing).
    fn last_look(&mut self, c: &mut Collect, handler: &mut dyn FnMut(&Reply)) -> Result<()> {
        for _ in 0..4096 {
            match self.next(Instant::now(), c.call)? {
                Next::Nothing => break,
                n => c.on(self, n, handler),
            }
        }
        Ok(())
    }

    /// [`call`](Self::call), awaiting the replies without blocking the
    /// thread (the request itself is sent as [`Broadcast::send`] does:
    /// it waits only while the requests' ring is full). Dropped before it
    /// returned, the request may still reach the workers; their replies
    /// are then dropped as late by the next call.
    pub async fn call_async(&mut self, request: &[u8]) -> Result<Vec<Reply>> {
        let call = self.send(|r| r.send(request))?;
        self.collect_async(call, &mut |_| {}).await
    }

    /// [`call_each`](Self::call_each), awaiting the replies: `handler`
    /// runs on the awaiting task as each reply comes.
    pub async fn call_each_async(
        &mut self,
        request: &[u8],
        mut handler: impl FnMut(&Reply) + Send,
    ) -> Result<Vec<Reply>> {
        let call = self.send(|r| r.send(request))?;
        self.collect_async(call, &mut handler).await
    }

    /// [`next`](Self::next), awaited.
    async fn next_async(&mut self, end: Instant, call: u64) -> Result<Next> {
        let slice = end.saturating_duration_since(Instant::now()).min(SLICE);
        let got = tokio::time::timeout(slice, self.replies.recv_async()).await;
        let g = match got {
            Err(_) | Ok(Err(Error::Timeout { .. })) => return Ok(Next::Nothing),
            Ok(Ok(Some(g))) => g,
            Ok(Ok(None)) => return Err(Error::Closed),
            Ok(Err(e)) => return Err(e),
        };
        Ok(note(&mut self.workers, &g, call))
    }

    /// The next message of the replies' gather, waiting up to a slice
    /// (and not past `end`): a reply to `call` from a worker of this Rpc,
    /// something else (a hello, noted; a reply to an earlier call or a
    /// malformed message, dropped), or nothing in time.
    fn next(&mut self, end: Instant, call: u64) -> Result<Next> {
        let slice = end.saturating_duration_since(Instant::now()).min(SLICE);
        let g = match self.replies.recv_within(slice) {
            Ok(Some(g)) => g,
            Ok(None) => return Err(Error::Closed),
            Err(Error::Timeout { .. }) => return Ok(Next::Nothing),
            Err(e) => return Err(e),
        };
        Ok(note(&mut self.workers, &g, call))
    }
}

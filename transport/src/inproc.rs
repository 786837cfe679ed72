//! The in-process backend (`inproc://NAME`): the three patterns over tokio
//! channels within one process. It is the reference the conformance suite
//! runs every real wire beside, and a stand-in for tests.
//!
//! Publish/subscribe keeps a bounded channel per subscriber and waits for
//! room in each (nothing is dropped); push/pull shares one bounded channel
//! among the pullers; request/reply sends each request with a one-shot
//! channel for its reply. Messages are copied (this backend is for
//! checking behaviour, not for speed).

use crate::address::Address;
use crate::error::{Error, Result};
use crate::frame::{AlignedBuf, Frame, PeerId};
use crate::options::Options;
use crate::pattern::{Publisher, Puller, Pusher, Replier, Requester, Subscriber, Wire};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Messages a subscriber's or a queue's channel holds.
fn depth(opts: &Options) -> usize {
    (opts.capacity / 1024).clamp(4, 65_536) as usize
}

struct Msg {
    topic: Vec<u8>,
    payload: AlignedBuf,
    peer: u64,
}

type Subscribers = Arc<Mutex<Vec<mpsc::Sender<Arc<Msg>>>>>;
/// A queued message and its sender's id.
type Item = (u64, AlignedBuf);
type Queue = (
    mpsc::Sender<Item>,
    Arc<tokio::sync::Mutex<mpsc::Receiver<Item>>>,
);
type Request = (Item, oneshot::Sender<AlignedBuf>);
type Requests = mpsc::Sender<Request>;

/// What is bound under a name.
enum Bound {
    Publisher(Subscribers, usize),
    Queue(Queue),
    Replier(Requests),
}

fn registry() -> &'static Mutex<HashMap<String, Bound>> {
    static R: OnceLock<Mutex<HashMap<String, Bound>>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(HashMap::new()))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn name(address: &Address) -> Result<String> {
    match address {
        Address::InProc { name } => Ok(name.clone()),
        other => Err(Error::BadAddress {
            address: other.to_string(),
            why: "the in-process backend takes inproc:// addresses".into(),
        }),
    }
}

fn bind(address: &Address, b: Bound) -> Result<String> {
    let n = name(address)?;
    let mut r = lock(registry());
    if r.contains_key(&n) {
        return Err(Error::AddrInUse {
            address: address.to_string(),
        });
    }
    r.insert(n.clone(), b);
    Ok(n)
}

/// Waits up to `timeout` for `f` to find what is bound at `address`.
async fn connect<T>(
    address: &Address,
    timeout: Duration,
    f: impl Fn(&Bound) -> Option<T>,
) -> Result<T> {
    let n = name(address)?;
    let t0 = Instant::now();
    loop {
        if let Some(t) = lock(registry()).get(&n).and_then(&f) {
            return Ok(t);
        }
        if t0.elapsed() >= timeout {
            return Err(Error::NotBound {
                address: address.to_string(),
            });
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn check_size(opts_max: usize, len: usize) -> Result<()> {
    if len > opts_max {
        return Err(Error::TooLarge {
            what: "payload",
            got: len as u64,
            limit: opts_max as u64,
        });
    }
    Ok(())
}

async fn timed<T>(
    t: Option<Duration>,
    what: &'static str,
    f: impl std::future::Future<Output = T>,
) -> Result<T> {
    match t {
        None => Ok(f.await),
        Some(d) => tokio::time::timeout(d, f)
            .await
            .map_err(|_| Error::Timeout { what, after: d }),
    }
}

/// The in-process wire (`inproc://NAME`).
#[derive(Debug, Clone, Copy, Default)]
pub struct InProc;

/// Publishing end.
pub struct InProcPublisher {
    name: String,
    peer: u64,
    subs: Subscribers,
    max_message: usize,
    send_timeout: Option<Duration>,
}

/// Subscribing end.
pub struct InProcSubscriber {
    rx: mpsc::Receiver<Arc<Msg>>,
    prefixes: Vec<Vec<u8>>,
}

/// Pushing end.
pub struct InProcPusher {
    tx: mpsc::Sender<Item>,
    peer: u64,
    max_message: usize,
    send_timeout: Option<Duration>,
}

/// Pulling end.
pub struct InProcPuller {
    /// The name, when this puller bound it (and unbinds it on drop).
    name: Option<String>,
    /// The queue's name.
    queue: String,
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Item>>>,
}

/// Asking end.
pub struct InProcRequester {
    tx: Requests,
    peer: u64,
    max_message: usize,
}

/// Answering end.
pub struct InProcReplier {
    name: String,
    rx: mpsc::Receiver<Request>,
}

impl Drop for InProcPublisher {
    fn drop(&mut self) {
        lock(registry()).remove(&self.name);
    }
}
impl Drop for InProcPuller {
    fn drop(&mut self) {
        if let Some(n) = &self.name {
            lock(registry()).remove(n);
        }
    }
}
impl Drop for InProcReplier {
    fn drop(&mut self) {
        lock(registry()).remove(&self.name);
    }
}

impl Wire for InProc {
    type Publisher = InProcPublisher;
    type Subscriber = InProcSubscriber;
    type Pusher = InProcPusher;
    type Puller = InProcPuller;
    type Requester = InProcRequester;
    type Replier = InProcReplier;

    async fn bind_publisher(address: &Address, opts: &Options) -> Result<InProcPublisher> {
        let subs: Subscribers = Arc::default();
        let name = bind(address, Bound::Publisher(subs.clone(), depth(opts)))?;
        Ok(InProcPublisher {
            name,
            peer: PeerId::random().0,
            subs,
            max_message: opts.max_message,
            send_timeout: opts.send_timeout,
        })
    }

    async fn connect_subscriber(address: &Address, opts: &Options) -> Result<InProcSubscriber> {
        let (subs, d) = connect(address, opts.connect_timeout, |b| match b {
            Bound::Publisher(s, d) => Some((s.clone(), *d)),
            _ => None,
        })
        .await?;
        let (tx, rx) = mpsc::channel(d);
        lock(&subs).push(tx);
        Ok(InProcSubscriber {
            rx,
            prefixes: Vec::new(),
        })
    }

    async fn bind_puller(address: &Address, opts: &Options) -> Result<InProcPuller> {
        let (tx, rx) = mpsc::channel(depth(opts));
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let name = bind(address, Bound::Queue((tx, rx.clone())))?;
        Ok(InProcPuller {
            queue: name.clone(),
            name: Some(name),
            rx,
        })
    }

    async fn connect_puller(address: &Address, opts: &Options) -> Result<InProcPuller> {
        let rx = connect(address, opts.connect_timeout, |b| match b {
            Bound::Queue((_, rx)) => Some(rx.clone()),
            _ => None,
        })
        .await?;
        Ok(InProcPuller {
            name: None,
            queue: self::name(address)?,
            rx,
        })
    }

    async fn connect_pusher(address: &Address, opts: &Options) -> Result<InProcPusher> {
        let tx = connect(address, opts.connect_timeout, |b| match b {
            Bound::Queue((tx, _)) => Some(tx.clone()),
            _ => None,
        })
        .await?;
        Ok(InProcPusher {
            tx,
            peer: PeerId::random().0,
            max_message: opts.max_message,
            send_timeout: opts.send_timeout,
        })
    }

    async fn bind_replier(address: &Address, opts: &Options) -> Result<InProcReplier> {
        let (tx, rx) = mpsc::channel(depth(opts));
        let name = bind(address, Bound::Replier(tx))?;
        Ok(InProcReplier { name, rx })
    }

    async fn connect_requester(address: &Address, opts: &Options) -> Result<InProcRequester> {
        let tx = connect(address, opts.connect_timeout, |b| match b {
            Bound::Replier(tx) => Some(tx.clone()),
            _ => None,
        })
        .await?;
        Ok(InProcRequester {
            tx,
            peer: PeerId::random().0,
            max_message: opts.max_message,
        })
    }
}

impl Publisher for InProcPublisher {
    fn address(&self) -> Address {
        Address::InProc {
            name: self.name.clone(),
        }
    }
    async fn send(&mut self, topic: &[u8], payload: &[u8]) -> Result<()> {
        check_size(self.max_message, payload.len())?;
        crate::envelope::Header::new(crate::envelope::Kind::Message, topic, payload.len(), 0)?;
        let msg = Arc::new(Msg {
            topic: topic.to_vec(),
            payload: AlignedBuf::copy_from(payload),
            peer: self.peer,
        });
        // Room in every live subscriber's channel first (so a cancelled
        // send sent nothing), then the message to each.
        let subs: Vec<_> = lock(&self.subs).clone();
        let mut permits = Vec::with_capacity(subs.len());
        for s in &subs {
            // A subscriber that is gone has no room to wait for.
            let room = timed(
                self.send_timeout,
                "send (waiting for subscribers)",
                s.reserve(),
            );
            if let Ok(p) = room.await? {
                permits.push(p);
            }
        }
        for p in permits {
            p.send(msg.clone());
        }
        lock(&self.subs).retain(|s| !s.is_closed());
        Ok(())
    }

    async fn wait_for_subscribers(&mut self, n: u32, timeout: Duration) -> Result<u32> {
        let t0 = Instant::now();
        loop {
            let k = lock(&self.subs).iter().filter(|s| !s.is_closed()).count() as u32;
            if k >= n {
                return Ok(k);
            }
            if t0.elapsed() >= timeout {
                return Err(Error::Timeout {
                    what: "waiting for subscribers",
                    after: timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

impl Subscriber for InProcSubscriber {
    fn subscribe(&mut self, prefix: &[u8]) {
        self.prefixes.push(prefix.to_vec());
    }

    async fn recv(&mut self) -> Result<Frame<'_>> {
        loop {
            let m = self.rx.recv().await.ok_or(Error::Closed)?;
            if self.prefixes.is_empty() || self.prefixes.iter().any(|p| m.topic.starts_with(p)) {
                return Ok(Frame::owned(m.payload.clone())
                    .with_topic(&m.topic)
                    .with_peer(m.peer));
            }
        }
    }
}

impl Pusher for InProcPusher {
    async fn send(&mut self, payload: &[u8]) -> Result<()> {
        check_size(self.max_message, payload.len())?;
        let permit = timed(
            self.send_timeout,
            "push (waiting for room)",
            self.tx.reserve(),
        )
        .await?
        .map_err(|_| Error::Closed)?;
        permit.send((self.peer, AlignedBuf::copy_from(payload)));
        Ok(())
    }
}

impl Puller for InProcPuller {
    fn address(&self) -> Address {
        Address::InProc {
            name: self.queue.clone(),
        }
    }
    async fn recv(&mut self) -> Result<Frame<'_>> {
        let (peer, b) = self.rx.lock().await.recv().await.ok_or(Error::Closed)?;
        Ok(Frame::owned(b).with_peer(peer))
    }
}

impl Requester for InProcRequester {
    async fn request(&mut self, payload: &[u8]) -> Result<Frame<'_>> {
        check_size(self.max_message, payload.len())?;
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(((self.peer, AlignedBuf::copy_from(payload)), tx))
            .await
            .map_err(|_| Error::Closed)?;
        let b = rx.await.map_err(|_| Error::Closed)?;
        Ok(Frame::owned(b))
    }
}

impl Replier for InProcReplier {
    fn address(&self) -> Address {
        Address::InProc {
            name: self.name.clone(),
        }
    }
    async fn serve_one<F>(&mut self, answer: F) -> Result<()>
    where
        F: FnOnce(&[u8]) -> Vec<u8> + Send,
    {
        let ((_, req), tx) = self.rx.recv().await.ok_or(Error::Closed)?;
        let reply = answer(&req);
        // A requester that stopped waiting: its reply has nowhere to go.
        let _ = tx.send(AlignedBuf::copy_from(&reply));
        Ok(())
    }
}

//! Request/reply over shared-memory work queues: many requesters, one
//! replier (or several, each request served once), replies routed to the
//! requester that asked.
//!
//! The replier binds `shm://NAME`: a work queue of requests. Each requester
//! makes a reply queue of its own (unnamed) and sends requests carrying its
//! handle (in the envelope's topic) and a correlation id; the replier sends
//! the reply to that queue with the same id. A requester whose request was
//! cancelled drops the late reply when it comes.

use super::pushpull::{ShmPuller, ShmPusher};
use crate::address::Address;
use crate::envelope::Kind;
use crate::error::{Error, Result};
use crate::frame::Frame;
use crate::options::Options;
use shoal_shm_ring::{Handle, MpmcConfig, MpmcConsumer, MpmcRing, PeerOptions};
use std::collections::HashMap;
use std::ops::Deref;

/// Reply queues a replier keeps attached at most.
const MAX_REPLY_QUEUES: usize = 64;

/// The asking end.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use shoal_transport::{Address, Options, ShmReplier, ShmRequester};
/// let addr: Address = format!("shm://doc-rpc-{}", std::process::id()).parse()?;
/// let mut server = ShmReplier::bind(&addr, &Options::default())?;
/// let mut client = ShmRequester::connect(&addr, &Options::default()).await?;
/// let serve = async {
///     let (req, replies) = server.recv().await?;
///     let answer = [&req[..], b" world"].concat();
///     replies.reply(&req, &answer).await
/// };
/// let (answer, served) = tokio::join!(client.request(b"hello"), serve);
/// served?;
/// assert_eq!(&*answer?, b"hello world");
/// # Ok::<(), shoal_transport::Error>(())
/// # }).unwrap();
/// ```
pub struct ShmRequester {
    requests: ShmPusher,
    replies: ShmPuller,
    reply_to: String,
    next_id: u64,
    address: String,
}

impl std::fmt::Debug for ShmRequester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmRequester")
            .field("reply_to", &self.reply_to)
            .finish_non_exhaustive()
    }
}

impl ShmRequester {
    /// Connects to the replier bound at `address` (waiting up to
    /// `opts.connect_timeout`) and makes this requester's reply queue
    /// (`opts.capacity` bytes, up to `opts.max_peers` repliers).
    pub async fn connect(address: &Address, opts: &Options) -> Result<Self> {
        let requests = ShmPusher::connect(address, opts).await?;
        let cfg = MpmcConfig::new(opts.capacity, opts.max_peers, 1)
            .payload_format(super::pubsub::format());
        let ring = MpmcRing::create(&cfg)?;
        let consumer = MpmcConsumer::attach_with(&ring.handle(), PeerOptions::default(), None)?;
        let reply_to = ring.handle().to_string();
        let replies = ShmPuller::with(consumer, opts, Some(ring), None)?;
        Ok(ShmRequester {
            requests,
            replies,
            reply_to,
            next_id: 1,
            address: address.to_string(),
        })
    }

    /// Sends `payload` and waits for its reply; [`Error::PeerGone`] if the
    /// replier dies first (checked every 50 ms while waiting). Cancel-safe
    /// in the sense that matters: a request cancelled after it was sent may
    /// still be served; its late reply is recognised by its id and dropped.
    pub async fn request(&mut self, payload: &[u8]) -> Result<Frame<'_>> {
        let id = self.next_id;
        self.next_id += 1;
        self.requests
            .send_as(Kind::Request, self.reply_to.as_bytes(), id, payload)
            .await?;
        let this = SelfPtr(self);
        loop {
            // SAFETY: `this` comes from the `&mut self` this call holds for
            // its whole length, and `self` is not used again: each
            // iteration's reborrow either is returned with the frame
            // (ending the loop) or ends with the iteration (see
            // ShmPuller::recv for why the borrow checker needs this).
            let me = unsafe { &mut *this.0 };
            let requests = &me.requests;
            let address = &me.address;
            let got = me
                .replies
                .recv_watching(Kind::Reply, Some((REPLIER_CHECK, || requests.peer_alive())))
                .await;
            let (h, f) = got.map_err(|e| match e {
                Error::PeerGone { .. } => Error::PeerGone {
                    address: address.clone(),
                },
                e => e,
            })?;
            if h.id == id {
                return Ok(f);
            }
            // A late reply to a cancelled request: dropped.
        }
    }
}

/// How often a waiting requester checks that its replier lives.
const REPLIER_CHECK: std::time::Duration = std::time::Duration::from_millis(50);

/// How long a reply waits for room in a requester's full reply queue
/// (one that stopped reading) when `Options::send_timeout` sets no bound:
/// the replier then drops that reply and serves the others.
const REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// `&mut T` as a raw pointer a `Send` future may hold (see `request`).
struct SelfPtr<T>(*mut T);

// SAFETY: it only ever points to the value whose `&mut` the future holding
// it has borrowed for its whole life; moving that future moves the
// exclusive borrow with it, and the value itself is `Send`.
unsafe impl<T: Send> Send for SelfPtr<T> {}

/// A request a replier received: derefs to its payload; answer it with
/// [`Replies::reply`].
#[derive(Debug)]
pub struct Request<'a> {
    frame: Frame<'a>,
    id: u64,
    reply_to: Handle,
}

impl<'a> Deref for Request<'a> {
    type Target = Frame<'a>;
    fn deref(&self) -> &Frame<'a> {
        &self.frame
    }
}

impl Request<'_> {
    /// The requester's correlation id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The requester's reply queue (for [`Replies::reply_to`]).
    pub fn reply_to(&self) -> Handle {
        self.reply_to
    }
}

/// The reply side of a replier: the requesters' reply queues, attached on
/// first use (at most 64 kept).
#[derive(Debug)]
pub struct Replies {
    /// The queue replied to last, kept apart: a requester asking again
    /// (the usual case) is answered without hashing its queue's name.
    hot: Option<(Handle, ShmPusher)>,
    /// The others.
    queues: HashMap<Handle, ShmPusher>,
    opts: Options,
}

impl Replies {
    /// Sends `payload` as the reply to `req`. A requester whose reply
    /// queue stays full (it stopped reading) for `Options::send_timeout`
    /// (1 s when unset) gets no reply: [`Error::Timeout`], and the replier
    /// goes on with the others.
    pub async fn reply(&mut self, req: &Request<'_>, payload: &[u8]) -> Result<()> {
        self.reply_to(req.reply_to, req.id, payload).await
    }

    /// Sends `payload` as the reply with id `id` to the requester whose
    /// reply queue is `to` (for replies sent after the request was dropped).
    pub async fn reply_to(&mut self, to: Handle, id: u64, payload: &[u8]) -> Result<()> {
        let q = match &mut self.hot {
            Some((h, q)) if *h == to => q,
            _ => {
                let p = match self.queues.remove(&to) {
                    Some(p) => p,
                    None => ShmPusher::attach(&to, &self.opts).map_err(|e| match e {
                        Error::Ring(shoal_shm_ring::Error::NotFound { .. }) => Error::PeerGone {
                            address: to.to_string(),
                        },
                        e => e,
                    })?,
                };
                if let Some((h, q)) = self.hot.take() {
                    // The hot one and the map together keep at most
                    // MAX_REPLY_QUEUES.
                    if self.queues.len() + 1 >= MAX_REPLY_QUEUES {
                        self.queues.clear();
                    }
                    self.queues.insert(h, q);
                }
                &mut self.hot.insert((to, p)).1
            }
        };
        let r = q.send_as(Kind::Reply, &[], id, payload).await;
        if r.is_err() {
            // The requester may be gone: attach afresh next time.
            self.hot = None;
        }
        r
    }
}

/// The answering end: binds `shm://NAME` and receives requests.
#[derive(Debug)]
pub struct ShmReplier {
    requests: ShmPuller,
    replies: Replies,
    /// The reply-to bytes of the last request, as sent, and what they
    /// were read as (its queue and the requester's id): a requester
    /// asking again is not parsed and hashed again.
    last_from: (Vec<u8>, Option<(Handle, u64)>),
}

impl ShmReplier {
    /// The address bound.
    pub fn address(&self) -> Option<&Address> {
        self.requests.address()
    }

    /// Binds `address` with a request queue of `opts.capacity` bytes for up
    /// to `opts.max_peers` requesters.
    pub fn bind(address: &Address, opts: &Options) -> Result<Self> {
        Ok(ShmReplier {
            requests: ShmPuller::bind(address, opts)?,
            last_from: (Vec::new(), None),
            replies: Replies {
                hot: None,
                queues: HashMap::new(),
                opts: opts
                    .clone()
                    .send_timeout(Some(opts.send_timeout.unwrap_or(REPLY_TIMEOUT))),
            },
        })
    }

    /// The reply side alone (for replies sent after the request dropped).
    pub fn replies(&mut self) -> &mut Replies {
        &mut self.replies
    }

    /// Waits for the next request; returns it with the reply side, so the
    /// reply can be written while the request's bytes are still read in
    /// place. A request naming no valid reply queue is dropped with an
    /// error.
    pub async fn recv(&mut self) -> Result<(Request<'_>, &mut Replies)> {
        let (h, frame) = self.requests.recv_as(Kind::Request).await?;
        let (reply_to, peer) = match &self.last_from {
            (raw, Some(known)) if raw[..] == *frame.topic() => *known,
            _ => {
                let reply_to = std::str::from_utf8(frame.topic())
                    .ok()
                    .and_then(|t| t.parse::<Handle>().ok())
                    .ok_or(Error::Corrupt {
                        what: "request reply-to",
                        found: frame.topic().len() as u64,
                        expected: "the requester's reply queue handle",
                    })?;
                // The requester's identity: its reply queue's name,
                // hashed (never 0, which stands for "no sender id").
                let peer = reply_to
                    .name()
                    .as_bytes()
                    .iter()
                    .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
                        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
                    })
                    .max(1);
                self.last_from.0.clear();
                self.last_from.0.extend_from_slice(frame.topic());
                self.last_from.1 = Some((reply_to, peer));
                (reply_to, peer)
            }
        };
        Ok((
            Request {
                frame: frame.with_peer(peer),
                id: h.id,
                reply_to,
            },
            &mut self.replies,
        ))
    }
}

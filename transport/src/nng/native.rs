//! nng's own protocols, for peers shoal did not write (`?native`
//! addresses): PUB/SUB and PUSH/PULL with plain message bodies, so pynng,
//! nngcat or a C program using libnng can be the other end.
//!
//! What this keeps of nng, and so gives up of shoal's promises (the
//! default, non-native nng endpoints keep them):
//!
//! - **Publish/subscribe drops for slow subscribers.** nng's PUB never
//!   waits: a subscriber whose queue (and the publisher's queue for it) is
//!   full loses messages, silently, as with nng itself. This is documented
//!   rather than hidden: a native publisher cannot know what a foreign
//!   subscriber got. The queues are made deep (`capacity / 1 KiB`
//!   messages, 16 to 8192; see [`depth_for`]) so a reader that keeps up
//!   loses nothing; a subscriber holds at most that many messages of up
//!   to `max_message` bytes each.
//! - **Topics are the body's prefix**, as nng's subscriptions match them:
//!   a native publisher sends `topic` then `payload` as one body; a native
//!   subscriber's frame has as its topic the longest subscribed prefix the
//!   body starts with (empty when subscribed to everything), and the rest
//!   as its payload.
//! - **Push/pull is nng's**: a push returns once nng holds the message in
//!   the pusher's send queue (as deep as a subscriber's), which it hands
//!   to a puller with room; it waits only when that queue is full. What
//!   sits in that queue, or in a puller's connection, when a process dies
//!   is lost, and nothing acknowledges delivery: `flush` has nothing to
//!   wait for. A second native puller cannot join a bound one's queue (PULL
//!   sockets do not connect to each other): `connect` dials a foreign PUSH
//!   socket that listens (`nngcat --push --listen`).
//! - **A frame's peer is the nng connection** it came on (its pipe id),
//!   not a process identity.
//!
//! What stays: the size limit is enforced before allocating (nng drops a
//! peer whose length prefix is over it); every send and receive can be
//! cancelled and timed out; a client endpoint that would wait on a peer
//! that is gone (no connection for the connect timeout: a subscriber's or
//! dialing puller's receive, a pusher's send into a full queue) gets
//! [`Error::PeerGone`] instead of waiting for ever, and nng redials a
//! peer that comes back.

use super::sock::{message, pipe_id, sock_recv, sock_send, Body, Sock};
use crate::address::Address;
use crate::error::{Error, Result};
use crate::frame::{Frame, SharedBytes};
use crate::options::Options;
use crate::waiting::until_count;
use nng::options::Options as _;
use nng::{Message, Protocol};
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The deepest queue nng allows (messages).
pub const QUEUE: i32 = 8192;

/// Messages nng may queue at a native endpoint (per connection at a
/// publisher; a subscriber's receive queue; a pusher's send queue):
/// `capacity / 1 KiB`, from 16 to [`QUEUE`].
pub fn depth_for(opts: &Options) -> i32 {
    i32::try_from(opts.capacity / 1024)
        .unwrap_or(QUEUE)
        .clamp(16, QUEUE)
}

/// How often a waiting operation looks at whether its peer is still
/// connected.
const LOOK: Duration = Duration::from_millis(250);

/// Runs `op` until it completes or, when `gone_after` is given, the socket
/// has had no connection for that long ([`Error::PeerGone`]), or
/// `deadline` passes ([`Error::Timeout`] naming `what`).
async fn watched<T>(
    sock: &Sock,
    gone_after: Option<Duration>,
    deadline: Option<(Instant, Duration, &'static str)>,
    op: impl Future<Output = Result<T>>,
) -> Result<T> {
    let mut op = pin!(op);
    let mut lost_since: Option<Instant> = None;
    loop {
        let mut slice = LOOK;
        if let Some((d, after, what)) = deadline {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout { what, after });
            }
            slice = slice.min(left);
        }
        if let Ok(r) = tokio::time::timeout(slice, op.as_mut()).await {
            return r;
        }
        if let Some(g) = gone_after {
            if sock.pipes.count() > 0 {
                lost_since = None;
            } else if lost_since.get_or_insert_with(Instant::now).elapsed() >= g {
                return Err(Error::PeerGone {
                    address: sock.address.to_string(),
                });
            }
        }
    }
}

/// Which of a socket's queues [`depth`] deepens.
#[derive(Clone, Copy)]
enum Queue {
    Send,
    Recv,
}

/// Sets a queue depth to `n`; protocols and nng versions without the
/// option keep their own (a smaller queue is a performance matter, not an
/// error).
fn depth(sock: &Sock, q: Queue, n: i32) {
    let r = match q {
        Queue::Send => sock.socket.set_opt::<nng::options::SendBufferSize>(n),
        Queue::Recv => sock.socket.set_opt::<nng::options::RecvBufferSize>(n),
    };
    if let Err(e) = r {
        tracing::debug!(address = %sock.address, error = %e, "nng: queue depth not set");
    }
}

/// A received body as a frame: `topic` bytes at its front, the rest the
/// payload; the connection it came on as its peer. A body over `max`
/// bytes (nng's limit leaves room for shoal's headers) is refused.
fn frame(mut m: Message, topic: usize, max: usize) -> Result<Frame<'static>> {
    let len = m.len();
    if len > max.saturating_add(topic) {
        return Err(Error::TooLarge {
            what: "nng message",
            got: len as u64,
            limit: max as u64,
        });
    }
    let peer = pipe_id(m.pipe());
    let body = SharedBytes(Arc::new(Body(m)));
    Ok(Frame::shared(body, 0..topic, topic..len)?.with_peer(peer))
}

/// nng PUB, listening.
pub struct NativePublisher {
    sock: Sock,
    max_message: usize,
}

impl std::fmt::Debug for NativePublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativePublisher")
            .field("address", &self.sock.address)
            .finish_non_exhaustive()
    }
}

impl NativePublisher {
    /// Binds an nng PUB socket at `address`.
    pub fn bind(address: &Address, opts: &Options) -> Result<NativePublisher> {
        let sock = Sock::listen_with(Protocol::Pub0, address, opts)?;
        depth(&sock, Queue::Send, depth_for(opts));
        Ok(NativePublisher {
            sock,
            max_message: opts.max_message,
        })
    }

    /// The address bound (with the port chosen for port 0).
    pub fn address(&self) -> Address {
        self.sock.bound_address()
    }

    /// Sends `topic` then `payload` as one body to every connected
    /// subscriber whose subscription it matches. Never waits: a subscriber
    /// whose queue is full misses it (nng's PUB).
    pub async fn send(&mut self, topic: &[u8], payload: &[u8]) -> Result<()> {
        Error::check_payload(topic.len().saturating_add(payload.len()), self.max_message)?;
        let mut m = Message::with_capacity(topic.len() + payload.len());
        m.push_back(topic);
        m.push_back(payload);
        sock_send(&self.sock, m).await
    }

    /// Waits until at least `n` subscribers are connected.
    pub async fn wait_for_subscribers(&mut self, n: u32, timeout: Duration) -> Result<u32> {
        let pipes = &self.sock.pipes;
        let count = || pipes.count() as u32;
        until_count(&pipes.changed, count, n, timeout, "waiting for subscribers").await
    }
}

/// nng SUB, dialing.
pub struct NativeSubscriber {
    sock: Sock,
    /// Prefixes asked for; none: everything.
    prefixes: Vec<Vec<u8>>,
    /// The prefixes nng has been given.
    given: Vec<Vec<u8>>,
    max_message: usize,
    gone_after: Duration,
}

impl std::fmt::Debug for NativeSubscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeSubscriber")
            .field("address", &self.sock.address)
            .finish_non_exhaustive()
    }
}

impl NativeSubscriber {
    /// Dials the nng PUB socket at `address`.
    pub async fn connect(address: &Address, opts: &Options) -> Result<NativeSubscriber> {
        let sock = Sock::dial_with(Protocol::Sub0, address, opts).await?;
        depth(&sock, Queue::Recv, depth_for(opts));
        Ok(NativeSubscriber {
            sock,
            prefixes: Vec::new(),
            given: Vec::new(),
            max_message: opts.max_message,
            gone_after: opts.connect_timeout,
        })
    }

    /// Receives only bodies starting with `prefix` (several: any of them;
    /// none: everything).
    pub fn subscribe(&mut self, prefix: &[u8]) {
        self.prefixes.push(prefix.to_vec());
    }

    /// Gives nng the subscriptions asked for since the last receive.
    fn settle(&mut self) -> Result<()> {
        let want: Vec<Vec<u8>> = if self.prefixes.is_empty() {
            vec![Vec::new()]
        } else {
            self.prefixes.clone()
        };
        if want == self.given {
            return Ok(());
        }
        use nng::options::protocol::pubsub::{Subscribe, Unsubscribe};
        for old in std::mem::take(&mut self.given) {
            if !want.contains(&old) {
                let _ = self.sock.socket.set_opt::<Unsubscribe>(old);
            }
        }
        for p in &want {
            self.sock
                .socket
                .set_opt::<Subscribe>(p.clone())
                .map_err(|e| Error::Io {
                    what: "subscribing an nng SUB socket".into(),
                    source: std::io::Error::other(e),
                })?;
        }
        self.given = want;
        Ok(())
    }

    /// The next body under a subscribed prefix; [`Error::PeerGone`] when
    /// the publisher has been unreachable for the connect timeout (nng
    /// goes on redialing; receiving again waits for it). A closed
    /// publisher cannot be told from a quiet one (nng's PUB says nothing
    /// when it closes).
    pub async fn recv(&mut self) -> Result<Frame<'static>> {
        self.settle()?;
        loop {
            let m = watched(
                &self.sock,
                Some(self.gone_after),
                None,
                sock_recv(&self.sock),
            )
            .await?;
            let topic = self
                .prefixes
                .iter()
                .filter(|p| m.as_slice().starts_with(p))
                .map(|p| p.len())
                .max()
                .unwrap_or(0);
            match frame(m, topic, self.max_message) {
                Ok(f) => return Ok(f),
                Err(e) => {
                    tracing::warn!(address = %self.sock.address, error = %e, "nng native subscriber: message refused")
                }
            }
        }
    }
}

/// nng PUSH, dialing.
pub struct NativePusher {
    sock: Sock,
    max_message: usize,
    send_timeout: Option<Duration>,
    gone_after: Duration,
}

impl std::fmt::Debug for NativePusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativePusher")
            .field("address", &self.sock.address)
            .finish_non_exhaustive()
    }
}

impl NativePusher {
    /// Dials the nng PULL socket at `address`.
    pub async fn connect(address: &Address, opts: &Options) -> Result<NativePusher> {
        let sock = Sock::dial_with(Protocol::Push0, address, opts).await?;
        depth(&sock, Queue::Send, depth_for(opts));
        Ok(NativePusher {
            sock,
            max_message: opts.max_message,
            send_timeout: opts.send_timeout,
            gone_after: opts.connect_timeout,
        })
    }

    /// Hands `payload` to nng's send queue, waiting while it is full up to
    /// the send timeout; [`Error::PeerGone`] when it stays full and no
    /// puller has been connected for the connect timeout.
    pub async fn send(&mut self, payload: &[u8]) -> Result<()> {
        Error::check_payload(payload.len(), self.max_message)?;
        let deadline = self
            .send_timeout
            .map(|t| (Instant::now() + t, t, "native push (waiting for a puller)"));
        watched(
            &self.sock,
            Some(self.gone_after),
            deadline,
            sock_send(&self.sock, message(payload)),
        )
        .await
    }
}

/// nng PULL: listening (pushers dial it), or dialing a PUSH that listens.
pub struct NativePuller {
    sock: Sock,
    max_message: usize,
    /// Dialing: how long without a connection means the pusher is gone.
    gone_after: Option<Duration>,
}

impl std::fmt::Debug for NativePuller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativePuller")
            .field("address", &self.sock.address)
            .finish_non_exhaustive()
    }
}

impl NativePuller {
    /// Binds an nng PULL socket at `address`.
    pub fn bind(address: &Address, opts: &Options) -> Result<NativePuller> {
        let sock = Sock::listen_with(Protocol::Pull0, address, opts)?;
        depth(&sock, Queue::Recv, depth_for(opts));
        Ok(NativePuller {
            sock,
            max_message: opts.max_message,
            gone_after: None,
        })
    }

    /// Dials an nng PUSH socket listening at `address`.
    pub async fn connect(address: &Address, opts: &Options) -> Result<NativePuller> {
        let sock = Sock::dial_with(Protocol::Pull0, address, opts).await?;
        depth(&sock, Queue::Recv, depth_for(opts));
        Ok(NativePuller {
            sock,
            max_message: opts.max_message,
            gone_after: Some(opts.connect_timeout),
        })
    }

    /// The address bound or dialed (with the port chosen for port 0).
    pub fn address(&self) -> Address {
        self.sock.bound_address()
    }

    /// The next message. A bound puller waits for pushers as long as it
    /// takes; a dialing one gets [`Error::PeerGone`] when its pusher has
    /// been unreachable for the connect timeout.
    pub async fn recv(&mut self) -> Result<Frame<'static>> {
        loop {
            let m = watched(&self.sock, self.gone_after, None, sock_recv(&self.sock)).await?;
            match frame(m, 0, self.max_message) {
                Ok(f) => return Ok(f),
                Err(e) => {
                    tracing::warn!(address = %self.sock.address, error = %e, "nng native puller: message refused")
                }
            }
        }
    }
}

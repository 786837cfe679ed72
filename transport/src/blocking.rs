//! Blocking wrappers, for code on plain threads: an endpoint of any wire
//! with a tokio runtime of its own, one worker thread, so the wire's
//! background work (a network endpoint's serving tasks, QUIC's
//! keep-alives) goes on between calls.
//!
//! nng's request/reply is the exception: a blocking request or serve
//! waits on nng's operation on the calling thread itself (as nng's own
//! blocking calls do), a wake-up fewer per round trip than through the
//! runtime ([`Requester::request_blocking`], [`Replier::serve_one_blocking`]).
//!
//! Do not call these from inside an async runtime (tokio panics when a
//! runtime is blocked on from within one); use the endpoints directly
//! there.

use crate::error::{Error, Result};
use crate::frame::Frame;
use crate::pattern::{Publisher, Puller, Pusher, Replier, Requester, Subscriber};
use std::future::Future;
use std::mem::ManuallyDrop;
use std::time::Duration;

/// An endpoint driven from a plain thread.
///
/// ```
/// use shoal_transport::{blocking::Blocking, Address, InProc, Options, Wire};
/// let a: Address = "inproc://doc-blocking".parse()?;
/// let o = Options::default();
/// let mut q = Blocking::new(InProc::bind_puller(&a, &o))?;
/// let mut p = Blocking::new(InProc::connect_pusher(&a, &o))?;
/// p.push(b"job")?;
/// assert_eq!(&*q.pull_timeout(std::time::Duration::from_secs(1))?, b"job");
/// # Ok::<(), shoal_transport::Error>(())
/// ```
///
/// Dropping a `Blocking` drops its endpoint, then lets the endpoint's
/// background work end for up to [`LINGER`] before the runtime goes: a
/// network pusher's window still being shipped, a publisher's linger
/// (its subscribers get the last messages and `Closed`), replies still
/// being written. Whatever is still running then is cancelled; `flush` a
/// pusher first to know its messages arrived. Dropped inside an async
/// runtime (where tokio refuses to drop another runtime, or to block),
/// it hands its runtime to a thread of its own, which lingers and drops
/// it there: the drop returns at once.
pub struct Blocking<T> {
    /// Dropped first, in `Drop`, while the runtime still exists.
    inner: ManuallyDrop<T>,
    /// Taken once, in `Drop`.
    rt: ManuallyDrop<tokio::runtime::Runtime>,
}

/// Longest a dropped [`Blocking`] waits for its endpoint's background work.
pub const LINGER: Duration = Duration::from_secs(10);

impl<T> Drop for Blocking<T> {
    fn drop(&mut self) {
        let in_runtime = tokio::runtime::Handle::try_current().is_ok();
        {
            let _in = self.rt.enter();
            // SAFETY: `inner` is dropped here, once: this is the wrapper's
            // own drop, and nothing reads `inner` after it.
            unsafe { ManuallyDrop::drop(&mut self.inner) };
        }
        // SAFETY: `rt` is taken here, once: this is the wrapper's own
        // drop, and nothing uses `rt` after it (`inner`, which ran on it,
        // was dropped above).
        let rt = unsafe { ManuallyDrop::take(&mut self.rt) };
        if !in_runtime {
            linger(rt);
            return;
        }
        // Handed over once the thread stands: were the thread not made,
        // the runtime would be dropped here, which panics.
        let (hand, take) = std::sync::mpsc::channel::<tokio::runtime::Runtime>();
        let spawned = std::thread::Builder::new()
            .name("shoal-blocking-linger".into())
            .spawn(move || {
                if let Ok(rt) = take.recv() {
                    linger(rt);
                }
            });
        match spawned {
            Ok(_) => {
                if let Err(std::sync::mpsc::SendError(rt)) = hand.send(rt) {
                    rt.shutdown_background();
                }
            }
            Err(e) => {
                tracing::warn!("shoal: no thread to wind down a blocking wrapper's runtime ({e}); its background work is cancelled");
                rt.shutdown_background();
            }
        }
    }
}

/// Lets `rt`'s tasks (an endpoint's background work) end, for up to
/// [`LINGER`], then drops it (outside any runtime).
fn linger(rt: tokio::runtime::Runtime) {
    rt.block_on(async {
        let tasks = tokio::runtime::Handle::current().metrics();
        let end = std::time::Instant::now() + LINGER;
        while tasks.num_alive_tasks() > 0 && std::time::Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
}

impl<T> std::fmt::Debug for Blocking<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blocking").finish_non_exhaustive()
    }
}

impl<T> Blocking<T> {
    /// Makes the endpoint `make` builds (for example
    /// `Shm::connect_subscriber(&addr, &opts)`) inside this wrapper's
    /// runtime, where its waits are registered.
    pub fn new(make: impl Future<Output = Result<T>>) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|source| Error::Io {
                what: "starting the blocking wrapper's runtime".into(),
                source,
            })?;
        let inner = ManuallyDrop::new(rt.block_on(make)?);
        Ok(Blocking {
            inner,
            rt: ManuallyDrop::new(rt),
        })
    }

    /// The endpoint itself.
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

/// Runs `f` on `rt`, giving up after `timeout` ([`Error::Timeout`] naming
/// `what`).
pub(crate) fn within<R>(
    rt: &tokio::runtime::Runtime,
    timeout: Option<Duration>,
    what: &'static str,
    f: impl Future<Output = Result<R>>,
) -> Result<R> {
    match timeout {
        None => rt.block_on(f),
        Some(t) => rt
            .block_on(async { tokio::time::timeout(t, f).await })
            .map_err(|_| Error::Timeout { what, after: t })?,
    }
}

impl<T: Publisher> Blocking<T> {
    /// [`Publisher::send`], blocking.
    pub fn publish(&mut self, topic: &[u8], payload: &[u8]) -> Result<()> {
        self.rt.block_on(self.inner.send(topic, payload))
    }
    /// [`Publisher::wait_for_subscribers`], blocking.
    pub fn wait_for_subscribers(&mut self, n: u32, timeout: Duration) -> Result<u32> {
        self.rt
            .block_on(self.inner.wait_for_subscribers(n, timeout))
    }
}

impl<T: Subscriber> Blocking<T> {
    /// [`Subscriber::subscribe`].
    pub fn subscribe(&mut self, prefix: &[u8]) {
        self.inner.subscribe(prefix)
    }
    /// [`Subscriber::recv`], blocking.
    pub fn receive(&mut self) -> Result<Frame<'_>> {
        self.rt.block_on(self.inner.recv())
    }
    /// [`Subscriber::recv`], blocking at most `timeout`.
    pub fn receive_timeout(&mut self, timeout: Duration) -> Result<Frame<'_>> {
        within(&self.rt, Some(timeout), "receive", self.inner.recv())
    }
}

impl<T: Pusher> Blocking<T> {
    /// [`Pusher::send`], blocking.
    pub fn push(&mut self, payload: &[u8]) -> Result<()> {
        self.rt.block_on(self.inner.send(payload))
    }
    /// [`Pusher::flush`], blocking: to know that everything sent arrived
    /// (dropping the wrapper lets the pusher ship what is left for at most
    /// [`LINGER`], and says nothing of how that went).
    pub fn flush(&mut self) -> Result<()> {
        self.rt.block_on(self.inner.flush())
    }
}

impl<T: Puller> Blocking<T> {
    /// [`Puller::recv`], blocking.
    pub fn pull(&mut self) -> Result<Frame<'_>> {
        self.rt.block_on(self.inner.recv())
    }
    /// [`Puller::recv`], blocking at most `timeout`.
    pub fn pull_timeout(&mut self, timeout: Duration) -> Result<Frame<'_>> {
        within(&self.rt, Some(timeout), "pull", self.inner.recv())
    }
}

impl<T: Requester> Blocking<T> {
    /// [`Requester::request`], blocking at most `timeout` (`None`: as long
    /// as the replier lives).
    pub fn request(&mut self, payload: &[u8], timeout: Option<Duration>) -> Result<Frame<'_>> {
        self.inner.request_blocking(&self.rt, payload, timeout)
    }
}

impl<T: Replier> Blocking<T> {
    /// [`Replier::serve_one`], blocking.
    pub fn serve_one<F>(&mut self, answer: F) -> Result<()>
    where
        F: FnOnce(&[u8]) -> Vec<u8> + Send,
    {
        self.inner.serve_one_blocking(&self.rt, answer)
    }

    /// [`Replier::serve_one_into`], blocking.
    pub fn serve_one_into<F>(&mut self, answer: F) -> Result<()>
    where
        F: FnOnce(&[u8], &mut crate::reply::Reply<'_>) + Send,
    {
        self.inner.serve_one_into_blocking(&self.rt, answer)
    }
}

//! A thread serving a replier: the loop of the work queue's bridge and
//! of a broadcast's door for remote readers' hellos.

use super::ask::NetReplier;
use crate::error::{Error, Result};
use shoal_transport::Reply;
use std::sync::atomic::AtomicBool;
#[cfg(any(feature = "nng", feature = "quic"))]
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How often a serving thread looks whether it should stop.
#[cfg(any(feature = "nng", feature = "quic"))]
const SLICE: Duration = Duration::from_millis(100);

/// A current-thread runtime for a serving thread.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            what: "starting a bridge thread's runtime",
            source,
        })
}

/// What a request was, to the loop serving it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Heard {
    /// From the peer served (with its token): it lives.
    Peer,
    /// From someone else, or not well formed: changes nothing.
    Stranger,
    /// The peer's goodbye: serving ends.
    Bye,
}

/// Serves `replier` with `answer` until `stop`, or until `idle` says to
/// (given how long the peer was not heard from); then drops the replier
/// inside its runtime, so its closing goes out.
pub(crate) fn serve(
    rt: &tokio::runtime::Runtime,
    replier: NetReplier,
    stop: &AtomicBool,
    mut answer: impl FnMut(&[u8], &mut Reply<'_>) -> Heard + Send,
    mut idle: impl FnMut(Duration) -> bool,
) {
    #[cfg(any(feature = "nng", feature = "quic"))]
    {
        let mut replier = replier;
        let mut heard = std::time::Instant::now();
        while !stop.load(Ordering::Acquire) {
            let mut what = Heard::Stranger;
            let served = rt.block_on(async {
                tokio::time::timeout(SLICE, replier.serve_one(|req, out| what = answer(req, out)))
                    .await
            });
            match served {
                Ok(Ok(())) if what == Heard::Bye => break,
                Ok(Ok(())) if what == Heard::Peer => heard = std::time::Instant::now(),
                Ok(Err(Error::Net(shoal_transport::Error::Closed))) => break,
                // A stranger's request, or one the wire dropped (and
                // logged), or a reply that could not go: the next request
                // is served, and the peer's silence still counts.
                Ok(r) => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "bridge: a request failed");
                    }
                    if idle(heard.elapsed()) {
                        break;
                    }
                }
                Err(_) => {
                    if idle(heard.elapsed()) {
                        break;
                    }
                }
            }
        }
        // Dropped inside its runtime, the replier closes in the
        // background once its last replies went (up to a second): the
        // runtime runs until then, or a peer's last answer (its goodbye's)
        // would die with it.
        let _in_rt = rt.enter();
        drop(replier);
        drop(_in_rt);
        rt.block_on(async {
            let tasks = tokio::runtime::Handle::current().metrics();
            let end = std::time::Instant::now() + Duration::from_millis(1500);
            tokio::time::sleep(Duration::from_millis(5)).await;
            while tasks.num_alive_tasks() > 0 && std::time::Instant::now() < end {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
    }
    #[cfg(not(any(feature = "nng", feature = "quic")))]
    {
        let _ = (rt, stop, &mut answer, &mut idle);
        match replier {}
    }
}

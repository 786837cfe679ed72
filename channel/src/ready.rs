//! Awaiting a ring from tokio: the pieces every async send and receive of
//! the channels share (registering a ring's [`ReadyFd`] with tokio, one
//! bounded wait on it, the deadline a timeout makes).

use crate::error::{Error, Result};
use shoal_shm_ring::ReadyFd;
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;

/// A ring's readiness fd, registered with tokio.
pub(crate) type Ready = AsyncFd<ReadyFd>;

/// Registers `fd` with tokio (made once per endpoint, on first use).
pub(crate) fn register(fd: ReadyFd) -> Result<Ready> {
    // SAFETY: a ReadyFd owns its eventfd for its whole life and always
    // returns that descriptor from as_raw_fd; the AsyncFd owns the
    // ReadyFd, so the descriptor stays open and the same until the AsyncFd
    // drops.
    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }.map_err(
        |source| Error::Io {
            what: "registering a ring's readiness fd with tokio",
            source: source.into(),
        },
    )
}

/// When a wait of `timeout` started now ends (`None`: never; a timeout
/// too long to add to the clock is no timeout), with the timeout itself.
pub(crate) fn deadline(timeout: Option<Duration>) -> Option<(Instant, Duration)> {
    timeout.and_then(|t| Some((Instant::now().checked_add(t)?, t)))
}

/// How long the next wait may last: `slice` at most, less if `deadline`
/// is nearer; `Timeout` (naming `what`) once it passed.
pub(crate) fn slice(
    slice: Duration,
    deadline: Option<(Instant, Duration)>,
    what: &'static str,
) -> Result<Duration> {
    let slice = slice.max(Duration::from_millis(1));
    match deadline {
        None => Ok(slice),
        Some((end, total)) => {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout { what, after: total });
            }
            Ok(slice.min(left))
        }
    }
}

/// Waits up to `slice` for `ready` to turn readable (armed by the caller),
/// and clears it; false when the slice ran out first.
pub(crate) async fn wait(ready: &Ready, slice: Duration, what: &'static str) -> Result<bool> {
    match tokio::time::timeout(slice, ready.readable()).await {
        Ok(r) => {
            let mut guard = r.map_err(|source| Error::Io { what, source })?;
            guard.get_inner().clear();
            guard.clear_ready();
            Ok(true)
        }
        Err(_) => Ok(false),
    }
}

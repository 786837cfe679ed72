//! Waiting for a count (subscribers, connections) to reach a number,
//! woken when it may have changed.

use crate::error::{Error, Result};
use std::pin::pin;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Looked at again at least this often: a count can also change without
/// a notification (a gone peer found and dropped while counting).
const SLICE: Duration = Duration::from_millis(100);

/// Waits up to `timeout` until `count()` is at least `n`, looking again
/// whenever `changed` is notified; the count reached, or
/// [`Error::Timeout`] naming `what`.
pub(crate) async fn until_count(
    changed: &Notify,
    mut count: impl FnMut() -> u32,
    n: u32,
    timeout: Duration,
    what: &'static str,
) -> Result<u32> {
    let deadline = Instant::now() + timeout;
    loop {
        // Registered before counting, so a change in between wakes it.
        let mut woken = pin!(changed.notified());
        woken.as_mut().enable();
        let k = count();
        if k >= n {
            return Ok(k);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::Timeout {
                what,
                after: timeout,
            });
        }
        let _ = tokio::time::timeout(left.min(SLICE), woken).await;
    }
}

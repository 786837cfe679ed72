//! A pusher's window, shared by the network backends: what it has sent
//! and the queue has not yet taken, shipped in batches by a task of the
//! pusher's own, so that a loop of sends runs at the wire's pace instead
//! of one round trip per message.
//!
//! The sending side ([`PushWindow::put`], [`PushWindow::flush`]) waits for
//! room and reports, once, a failure the shipping side met since the last
//! look; the shipping side ([`PushWindow::batch`], [`PushWindow::taken`],
//! [`PushWindow::failed`]) takes prefixes of the window, oldest first, and
//! drops what the queue acknowledged. Entries are numbered from 1 in the
//! order put, so a queue can tell a batch asked again from a new one.

use crate::error::{Error, Result};
use crate::recycle::Recycled;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::futures::Notified;
use tokio::sync::Notify;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One message in the window: its number and its bytes as the wire
/// carries it.
pub(crate) type Entry = (u64, Arc<Recycled>);

#[derive(Default)]
struct State {
    /// Oldest first, each with its payload bytes.
    pending: VecDeque<(Entry, usize)>,
    /// Payload bytes of `pending` (as `put` counted them).
    bytes: usize,
    /// The last number given out.
    seq: u64,
    /// What went wrong since the sender last looked, reported once.
    failed: Option<Error>,
    /// The pusher was dropped: ship what is left, then end.
    closed: bool,
}

/// The window: at most `limit` payload bytes, or one message.
pub(crate) struct PushWindow {
    state: Mutex<State>,
    /// Something was put, or the pusher was dropped.
    added: Notify,
    /// The queue took something (room), or shipping failed.
    moved: Notify,
    limit: usize,
}

impl PushWindow {
    pub fn new(limit: usize) -> Arc<PushWindow> {
        Arc::new(PushWindow {
            state: Mutex::default(),
            added: Notify::new(),
            moved: Notify::new(),
            limit: limit.max(1),
        })
    }

    /// Puts `entry` (of `len` payload bytes) in the window once there is
    /// room, waiting up to `timeout`; `stamp` writes the number it gets
    /// into it first. A failure of shipping since the last look is
    /// returned instead (once; nothing is put). Cancelled while waiting,
    /// nothing was put.
    pub async fn put(
        &self,
        entry: impl Into<Recycled>,
        len: usize,
        stamp: impl FnOnce(&mut Vec<u8>, u64),
        timeout: Option<Duration>,
    ) -> Result<()> {
        let entry: Recycled = entry.into();
        let deadline = timeout.map(|t| (Instant::now() + t, t));
        let mut entry = Some((entry, stamp));
        // Looked at once before waiting is armed (the common case: room),
        // then again each time after arming it, so no wake-up is missed.
        let mut armed = false;
        loop {
            let mut moved = std::pin::pin!(self.moved.notified());
            if armed {
                moved.as_mut().enable();
            }
            {
                let mut st = lock(&self.state);
                if let Some(e) = st.failed.take() {
                    return Err(e);
                }
                if st.pending.is_empty() || st.bytes + len <= self.limit {
                    if let Some((mut entry, stamp)) = entry.take() {
                        st.seq += 1;
                        let seq = st.seq;
                        stamp(&mut entry, seq);
                        st.bytes += len;
                        st.pending.push_back(((seq, Arc::new(entry)), len));
                    }
                    drop(st);
                    self.added.notify_one();
                    return Ok(());
                }
            }
            if armed {
                wait(
                    moved,
                    deadline,
                    "push (waiting for the queue to take the window)",
                )
                .await?;
            }
            armed = true;
        }
    }

    /// Waits until the queue took everything put (up to `timeout`); a
    /// failure of shipping is returned instead.
    pub async fn flush(&self, timeout: Option<Duration>) -> Result<()> {
        let deadline = timeout.map(|t| (Instant::now() + t, t));
        loop {
            let mut moved = std::pin::pin!(self.moved.notified());
            moved.as_mut().enable();
            {
                let mut st = lock(&self.state);
                if let Some(e) = st.failed.take() {
                    return Err(e);
                }
                if st.pending.is_empty() {
                    return Ok(());
                }
            }
            wait(moved, deadline, "flush (waiting for the queue)").await?;
        }
    }

    /// The pusher is gone: the shipper ends once the window is empty.
    pub fn close(&self) {
        lock(&self.state).closed = true;
        self.added.notify_one();
    }

    /// Whether the pusher is gone.
    pub fn is_closed(&self) -> bool {
        lock(&self.state).closed
    }

    /// Messages not yet taken.
    pub fn pending(&self) -> usize {
        lock(&self.state).pending.len()
    }

    /// The oldest entries, at most `count`, and as many as keep their
    /// bytes (as `size` counts them) within `bytes`, but at least one;
    /// waits while the window is empty; `None` once it is empty and the
    /// pusher is gone.
    pub async fn batch(
        &self,
        count: usize,
        bytes: usize,
        size: impl Fn(&Entry) -> usize,
    ) -> Option<Vec<Entry>> {
        loop {
            let added = self.added.notified();
            {
                let st = lock(&self.state);
                if !st.pending.is_empty() {
                    let mut out: Vec<Entry> = Vec::new();
                    let mut total = 0;
                    for (e, _) in st.pending.iter().take(count.max(1)) {
                        let n = size(e);
                        if !out.is_empty() && total + n > bytes {
                            break;
                        }
                        total += n;
                        out.push(e.clone());
                    }
                    return Some(out);
                }
                if st.closed {
                    return None;
                }
            }
            added.await;
        }
    }

    /// The queue took every entry up to number `last`.
    pub fn taken(&self, last: u64) {
        let mut st = lock(&self.state);
        while st.pending.front().is_some_and(|((seq, _), _)| *seq <= last) {
            if let Some((_, n)) = st.pending.pop_front() {
                st.bytes -= n;
            }
        }
        drop(st);
        self.moved.notify_waiters();
    }

    /// Shipping failed with `e` (the window is kept): the next `put` or
    /// `flush` reports it.
    pub fn failed(&self, e: Error) {
        lock(&self.state).failed = Some(e);
        self.moved.notify_waiters();
    }
}

/// Pushers whose last sequence number a queue remembers (to queue a
/// batch asked again only once).
pub(crate) const MAX_PUSHERS: usize = 4096;
/// How long a pusher must have been silent before a new one may take its
/// place among the [`MAX_PUSHERS`] remembered.
pub(crate) const FORGET_AFTER: Duration = Duration::from_secs(60);

/// What a queue remembers of its pushers: by each one's key (a secret of
/// the pusher's, not its public id), the last sequence number queued and
/// when it was last heard from.
#[derive(Default)]
pub(crate) struct Pushers(std::collections::HashMap<u64, (u64, Instant)>);

impl Pushers {
    /// Whether pusher `key` is remembered, or can be: a new one takes the
    /// place of the one heard from longest ago when that was more than
    /// [`FORGET_AFTER`] ago. (Forgetting a pusher whose answer was lost
    /// would queue its batch twice when it asks again; forgetting only
    /// the long silent keeps a flood of new keys from doing that.)
    pub fn knows(&mut self, key: u64) -> bool {
        if self.0.len() < MAX_PUSHERS || self.0.contains_key(&key) {
            return true;
        }
        let oldest = self
            .0
            .iter()
            .min_by_key(|(_, (_, t))| *t)
            .map(|(k, (_, t))| (*k, t.elapsed()));
        match oldest {
            Some((k, age)) if age >= FORGET_AFTER => {
                self.0.remove(&k);
                true
            }
            _ => false,
        }
    }

    /// The last sequence number queued for `key` (0: none).
    pub fn last(&self, key: u64) -> u64 {
        self.0.get(&key).map_or(0, |&(seq, _)| seq)
    }

    /// Pusher `key` has everything up to `seq` queued, and was heard from
    /// now.
    pub fn remember(&mut self, key: u64, seq: u64) {
        self.0.insert(key, (seq, Instant::now()));
    }
}

/// Waits for `moved`, or until the deadline (then [`Error::Timeout`]
/// naming `what`).
async fn wait(
    moved: Pin<&mut Notified<'_>>,
    deadline: Option<(Instant, Duration)>,
    what: &'static str,
) -> Result<()> {
    match deadline {
        None => {
            moved.await;
            Ok(())
        }
        Some((d, after)) => {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, moved).await.is_err() {
                return Err(Error::Timeout { what, after });
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn len(e: &Entry) -> usize {
        e.1.len()
    }

    #[test]
    fn entries_are_numbered_batched_and_taken_in_order() {
        rt().block_on(async {
            let w = PushWindow::new(100);
            for i in 0..5u8 {
                w.put(vec![i; 10], 10, |e, seq| e[0] = seq as u8, None)
                    .await
                    .unwrap();
            }
            let b = w.batch(3, 1000, len).await.unwrap();
            let seqs: Vec<u64> = b.iter().map(|e| e.0).collect();
            assert_eq!(seqs, [1, 2, 3]);
            assert_eq!(b[2].1[0], 3, "stamped with its number");
            // Bytes bound a batch, but one entry always goes.
            assert_eq!(w.batch(10, 25, len).await.unwrap().len(), 2);
            assert_eq!(w.batch(10, 1, len).await.unwrap().len(), 1);
            w.taken(3);
            assert_eq!(w.pending(), 2);
            let b = w.batch(10, 1000, len).await.unwrap();
            assert_eq!(b[0].0, 4);
        });
    }

    #[test]
    fn a_full_window_waits_times_out_and_reports_failures_once() {
        rt().block_on(async {
            let w = PushWindow::new(20);
            w.put(vec![0; 15], 15, |_, _| {}, None).await.unwrap();
            // Over the limit: waits, and times out without putting.
            let t = Some(Duration::from_millis(20));
            let e = w.put(vec![0; 15], 15, |_, _| {}, t).await.unwrap_err();
            assert!(matches!(e, Error::Timeout { .. }), "{e}");
            assert_eq!(w.pending(), 1);
            // A failure wakes the waiter and is reported once.
            let w2 = w.clone();
            let waiter = tokio::spawn(async move { w2.flush(None).await });
            tokio::task::yield_now().await;
            w.failed(Error::Closed);
            assert!(matches!(waiter.await.unwrap(), Err(Error::Closed)));
            assert!(matches!(
                w.flush(Some(Duration::from_millis(10))).await,
                Err(Error::Timeout { .. })
            ));
            w.taken(1);
            w.flush(None).await.unwrap();
        });
    }

    #[test]
    fn a_closed_empty_window_ends_the_shipper() {
        rt().block_on(async {
            let w = PushWindow::new(20);
            w.put(vec![1], 1, |_, _| {}, None).await.unwrap();
            w.close();
            assert!(w.is_closed());
            assert!(
                w.batch(1, 10, len).await.is_some(),
                "what is left still goes"
            );
            w.taken(1);
            assert!(w.batch(1, 10, len).await.is_none());
        });
    }
}

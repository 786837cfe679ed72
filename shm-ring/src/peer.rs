//! Per-endpoint options about peers: how often liveness is checked, when a
//! slow peer is logged, when a stalled one is evicted, and claiming a slot.

use crate::error::{Error, Result};
use crate::layout::slot;
use crate::layout::Slot;
use crate::liveness::ProcessId;
use crate::sync::Ordering;
use crate::wait::WaitStrategy;
use std::time::Duration;

/// How an endpoint waits and judges its peers. The defaults suit most uses.
///
/// ```
/// use shoal_shm_ring::{PeerOptions, WaitStrategy};
/// use std::time::Duration;
/// let o = PeerOptions::default()
///     .wait_strategy(WaitStrategy::Spin)
///     .stall_timeout(Some(Duration::from_secs(30)));
/// assert_eq!(o.liveness_interval, Duration::from_millis(50));
/// ```
#[derive(Debug, Clone, Copy)]
pub struct PeerOptions {
    /// Spin-then-park (default), spin only, or park only.
    pub wait: WaitStrategy,
    /// How often a blocked call checks that the peers it waits on are alive;
    /// also the longest a single futex sleep lasts.
    pub liveness_interval: Duration,
    /// A blocked call that has waited this long logs (once) which peer holds
    /// it up, by slot and pid.
    pub slow_peer_log: Duration,
    /// Broadcast writer: evict a *live* reader that blocks it this long.
    /// `None` (the default) never evicts live readers, only dead ones.
    pub stall_timeout: Option<Duration>,
    /// MPMC: how long a record may stay reserved-but-uncommitted, or taken
    /// but unreleased, before its owner's liveness is checked and a dead
    /// owner's record is skipped (tombstoned) or reclaimed.
    pub orphan_timeout: Duration,
}

impl Default for PeerOptions {
    fn default() -> Self {
        PeerOptions {
            wait: WaitStrategy::Adaptive,
            liveness_interval: Duration::from_millis(50),
            slow_peer_log: Duration::from_secs(2),
            stall_timeout: None,
            orphan_timeout: Duration::from_millis(100),
        }
    }
}

impl PeerOptions {
    /// Sets [`wait`](Self::wait).
    pub fn wait_strategy(mut self, w: WaitStrategy) -> Self {
        self.wait = w;
        self
    }
    /// Sets [`liveness_interval`](Self::liveness_interval).
    pub fn liveness_interval(mut self, d: Duration) -> Self {
        self.liveness_interval = d.max(Duration::from_micros(100));
        self
    }
    /// Sets [`slow_peer_log`](Self::slow_peer_log).
    pub fn slow_peer_log(mut self, d: Duration) -> Self {
        self.slow_peer_log = d;
        self
    }
    /// Sets [`stall_timeout`](Self::stall_timeout).
    pub fn stall_timeout(mut self, d: Option<Duration>) -> Self {
        self.stall_timeout = d;
        self
    }
    /// Sets [`orphan_timeout`](Self::orphan_timeout).
    pub fn orphan_timeout(mut self, d: Duration) -> Self {
        self.orphan_timeout = d;
        self
    }
}

/// The identity recorded in a slot.
pub(crate) fn slot_owner(s: &Slot) -> ProcessId {
    ProcessId {
        pid: s.pid.load(Ordering::Relaxed),
        start_time: s.start_time.load(Ordering::Relaxed),
    }
}

/// Claims a free slot among `slots` (or one whose owner died) for `me`,
/// leaving it in `state`. Returns the slot index.
pub(crate) fn claim_slot<'a>(
    slots: impl Iterator<Item = (usize, &'a Slot)> + Clone,
    me: ProcessId,
    state: u32,
) -> Result<usize> {
    let mut n = 0u32;
    for pass in 0..2 {
        for (i, s) in slots.clone() {
            if pass == 0 {
                n += 1;
            }
            // The generation is the claim: every claimer reads it before
            // judging the slot and wins only by moving it on, so a slot that
            // changed hands meanwhile (ABA on `state`) is never taken twice.
            let g = s.gen.load(Ordering::Acquire);
            let st = s.state.load(Ordering::Acquire);
            // A CLAIMED slot is never taken over: its claimer may be alive
            // and about to write its pid.
            let free =
                st == slot::FREE || (pass == 1 && st != slot::CLAIMED && !slot_owner(s).is_alive());
            if !free {
                continue;
            }
            if s.gen
                .compare_exchange(g, g.wrapping_add(1), Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                s.state.store(slot::CLAIMED, Ordering::Release);
                s.pid.store(me.pid, Ordering::Relaxed);
                s.start_time.store(me.start_time, Ordering::Relaxed);
                s.state.store(state, Ordering::Release);
                return Ok(i);
            }
        }
    }
    Err(Error::NoFreeSlot { slots: n })
}

//! Per-endpoint options about peers (how often liveness is checked, when a
//! slow peer is logged, when a stalled one ends a wait), and slot ownership:
//! claiming, proving and leaving a slot.

use crate::error::{Error, Result};
use crate::layout::{slot, tagged, Own, Slot};
use crate::lease;
use crate::liveness::ProcessId;
use crate::mem::RingMem;
use crate::sync::Ordering;
use crate::wait::WaitStrategy;
use std::time::Duration;

/// How an endpoint waits and judges its peers. The defaults suit most uses.
///
/// Whether a peer is *alive* is never a matter of timing: each participant
/// holds a kernel lease (an open-file-description lock) that ends with its
/// process. Timeouts here only bound how long a *live* peer may hold things
/// up.
///
/// ```
/// use shoal_shm_ring::{PeerOptions, WaitStrategy};
/// use std::time::Duration;
/// let o = PeerOptions::default()
///     .wait_strategy(WaitStrategy::Spin)
///     .stall_timeout(Some(Duration::from_secs(30)));
/// assert_eq!(o.liveness_interval, Duration::from_millis(50));
/// assert_eq!(PeerOptions::default().stall_timeout, Some(Duration::from_secs(10)));
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
    /// A call blocked this long by a *live* peer ends with
    /// [`Error::Stalled`] naming it: a broadcast writer held up by a reader
    /// that does not release, an MPMC consumer held up by a producer that
    /// does not commit its reservation, an MPMC producer held up by a
    /// consumer that does not release a record, or by a producer that holds
    /// the reservation lock. The peer keeps what it holds (nothing it may
    /// still read is ever reclaimed); the caller decides what to do (retry,
    /// or kill the named pid). `None` waits as long as the call's own
    /// [`Wait`](crate::Wait) allows. Default: 10 s. Dead peers never need
    /// this: they are detected through their lease within
    /// [`liveness_interval`](Self::liveness_interval).
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
            stall_timeout: Some(Duration::from_secs(10)),
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

/// The identity recorded in a slot (a hint for logs: liveness is the
/// slot's lease).
pub(crate) fn slot_owner(s: &Slot) -> ProcessId {
    ProcessId {
        pid: s.pid.load(Ordering::Relaxed),
        start_time: s.start_time.load(Ordering::Relaxed),
    }
}

/// Proof of owning a slot: its index and the generation this owner claimed.
/// Every write an owner makes to its slot compares against the generation
/// (directly in the ownership word, or through the tag carried in the
/// cursor word), so a stale owner never writes into a slot somebody else
/// claimed since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SlotToken {
    pub index: usize,
    pub gen: u32,
}

impl SlotToken {
    /// Whether slot `s` is still ours (same generation; any state but FREE).
    pub(crate) fn owns(&self, s: &Slot) -> Option<Own> {
        let o = Own::unpack(s.own.load(Ordering::Acquire));
        (o.gen == self.gen && o.state != slot::FREE).then_some(o)
    }
}

/// Claims a slot among `range` for `me`, leaving it in `state` with its
/// cursor word at position `cursor`; returns the token.
///
/// The slot's lease decides: a process takes the lease of a slot first (the
/// kernel gives it to one open file description at a time, and drops it when
/// its holder dies), and an owner keeps it from before its claim until after
/// it leaves. Holding the lease therefore proves that no live process owns
/// the slot, whatever its ownership word says (a dead owner's ACTIVE, a
/// claimer that died half-way in CLAIMED): the claim then moves the
/// generation on by one CAS on the (generation, state) pair. `on_claim`
/// runs before the slot's words are reset and published in the new state
/// (to clear a dead predecessor's waiter bits, or to settle what it owed),
/// with what the predecessor left in the slot.
pub(crate) fn claim_slot<M: RingMem>(
    mem: &M,
    range: std::ops::Range<usize>,
    me: ProcessId,
    state: u32,
    cursor: u64,
    on_claim: impl Fn(usize, Previous),
) -> Result<SlotToken> {
    let n = range.len() as u32;
    for i in range {
        if !mem.take_lease(lease::slot_byte(i))? {
            continue; // a live process owns it (or is claiming it)
        }
        let s = mem.slot(i);
        // Only the broadcast writer's activation and eviction CAS this word
        // besides claimers, once each per state change: this loop ends.
        let mut w = s.own.load(Ordering::Acquire);
        let gen = loop {
            let g = Own::unpack(w).gen.wrapping_add(1);
            let claimed = Own {
                gen: g,
                state: slot::CLAIMED,
            };
            match s
                .own
                .compare_exchange(w, claimed.pack(), Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break g,
                Err(now) => w = now,
            }
        };
        // What the last owner left, seen before anything is overwritten (a
        // producer slot's word says what its last owner owed: `on_claim`
        // counts it before the word is reset; the lease keeps scanners
        // from settling it meanwhile).
        let previous = Previous {
            pid: s.pid.load(Ordering::Relaxed),
            tag: s.tag.load(Ordering::Relaxed),
            cursor: s.cursor.load(Ordering::Acquire),
        };
        on_claim(i, previous);
        s.pid.store(me.pid, Ordering::Relaxed);
        s.tag.store(0, Ordering::Relaxed);
        s.start_time.store(me.start_time, Ordering::Relaxed);
        s.cursor.store(tagged(cursor, gen), Ordering::Release);
        // SYNC W(claim): pairs with Acquire loads of `own` by the writer
        // (activation) and by liveness checks.
        s.own.store(Own { gen, state }.pack(), Ordering::Release);
        return Ok(SlotToken { index: i, gen });
    }
    Err(Error::NoFreeSlot { slots: n })
}

/// What the previous owner left in a slot being claimed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Previous {
    /// Its pid (a hint for logs).
    pub pid: u32,
    /// Its label (see [`Slot::tag`](crate::layout::Slot::tag)).
    pub tag: u32,
    /// Its cursor word.
    pub cursor: u64,
}

/// Gives slot `t` back (if it is still ours), then its lease.
pub(crate) fn leave_slot<M: RingMem>(mem: &M, t: SlotToken, on_leave: impl Fn(usize)) {
    let s = mem.slot(t.index);
    let mut w = s.own.load(Ordering::Acquire);
    loop {
        let o = Own::unpack(w);
        if o.gen != t.gen || o.state == slot::FREE {
            break; // already freed, or evicted and taken over
        }
        let free = Own {
            gen: o.gen,
            state: slot::FREE,
        };
        match s
            .own
            .compare_exchange(w, free.pack(), Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {
                on_leave(t.index);
                break;
            }
            Err(now) => w = now,
        }
    }
    mem.drop_lease(lease::slot_byte(t.index));
}

/// Whether the owner of slot `i` is alive: its lease is held.
/// (A claimer holds the lease before it changes the word, so a held lease
/// with a stale word only delays a judgement; it never kills a live owner.)
pub(crate) fn slot_alive<M: RingMem>(mem: &M, i: usize) -> bool {
    mem.lease_held(lease::slot_byte(i))
}

/// After this many notifies in a row that woke nobody, look for waiter
/// bits left by dead processes.
pub(crate) const FUTILE_REPAIR: u32 = 64;

/// Clears the waiter bits of slots `first..first+count` (and of the owner,
/// if `owner`) whose lease is free: their waiters died registered.
pub(crate) fn repair_waiters<M: RingMem>(
    mem: &M,
    ec: &crate::wait::EventCount,
    first: usize,
    count: usize,
    owner: bool,
) {
    for i in 0..count {
        let seen = ec.slot_word(i);
        if ec.slot_registered(i) && !slot_alive(mem, first + i) {
            ec.clear_slot_if(i, seen);
        }
    }
    if owner && !mem.lease_held(lease::OWNER) {
        ec.clear_owner();
    }
}

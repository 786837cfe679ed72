//! Waiting: deadlines and cancellation, the adaptive spin window, and the
//! futex eventcount that parks a waiter without any lost wake-up.
//!
//! # The eventcount
//! A waiter reads `seq`, sets its bit in the waiter map, issues a full
//! barrier, re-checks the ring, and only then sleeps with
//! `FUTEX_WAIT(seq, key)`. A notifier publishes with a Release store, issues
//! a barrier and reads the map; only when someone waits does it bump `seq`
//! and call `FUTEX_WAKE`, so an uncontended publish makes no system call.
//! The two barriers order the two sides (Dekker): either the notifier sees
//! the waiter and wakes it, or the waiter's re-check sees the publication.
//! Every sleep is bounded as well, so even a wake lost to a bug costs one
//! slice, not a hang.
//!
//! The barriers are *asymmetric* where the kernel allows it: every process
//! registers for `membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED)`, a waiter
//! about to sleep (the rare, slow side) issues that system call, which runs
//! a full memory barrier on every CPU currently running a registered
//! process, and a notifier (the hot side, once per record) then needs only
//! a compiler barrier instead of an `mfence`. A notifier whose process
//! could not register keeps the full fence. A waiter that cannot issue the
//! call marks the eventcount `heavy`, after which notifiers fence again (a
//! notifier that has not seen the mark yet can cost that waiter one sleep
//! slice, once). Under loom both sides use `fence(SeqCst)`.
//!
//! # The spin window
//! Parking costs a wake-up (tens of microseconds on a VM whose idle vCPUs
//! halt). If a waiter parks after spinning less than its peer's wake latency,
//! two peers in a request/response loop fall asleep in turn (a *park
//! convoy*). The window therefore adapts: a wait that parked but was served
//! soon after widens it past the observed wait; a wait that found the ring
//! idle for long narrows it again, so idle readers stop burning CPU.

use crate::error::{Error, Result};
use crate::futex;
use crate::layout::MAX_SLOTS;
use crate::sync::{fence, spin_hint, AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::atomic::compiler_fence;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A token that cancels the blocking calls it is passed to.
///
/// Cloning shares the token. A blocked call notices a cancel within its
/// check interval (a few milliseconds).
///
/// ```
/// use shoal_shm_ring::CancelToken;
/// let t = CancelToken::new();
/// let t2 = t.clone();
/// t2.cancel();
/// assert!(t.is_cancelled());
/// ```
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A fresh, not yet cancelled token.
    pub fn new() -> Self {
        Self::default()
    }
    /// Cancels every call waiting with this token (now and later).
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Release);
    }
    /// Whether [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// How long a blocking call may wait, and what may cancel it.
///
/// ```
/// use shoal_shm_ring::{CancelToken, Wait};
/// use std::time::Duration;
/// let token = CancelToken::new();
/// let w = Wait::timeout(Duration::from_millis(5)).with_cancel(&token);
/// assert_eq!(w.timeout_value(), Some(Duration::from_millis(5)));
/// let _forever = Wait::forever();
/// let _poll = Wait::no_wait();
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Wait<'a> {
    timeout: Option<Duration>,
    cancel: Option<&'a CancelToken>,
}

impl<'a> Wait<'a> {
    /// Wait until the operation can complete (dead peers still end the wait).
    pub const fn forever() -> Self {
        Wait {
            timeout: None,
            cancel: None,
        }
    }
    /// Wait at most `d`.
    pub const fn timeout(d: Duration) -> Self {
        Wait {
            timeout: Some(d),
            cancel: None,
        }
    }
    /// Do not wait at all: fail with [`Error::WouldBlock`] instead.
    pub const fn no_wait() -> Self {
        Wait {
            timeout: Some(Duration::ZERO),
            cancel: None,
        }
    }
    /// Also stop when `token` is cancelled.
    pub fn with_cancel(mut self, token: &'a CancelToken) -> Self {
        self.cancel = Some(token);
        self
    }
    /// The timeout, if any.
    pub fn timeout_value(&self) -> Option<Duration> {
        self.timeout
    }
    /// The started wait. The clock is read only once the call has to wait
    /// (its first look found nothing): a call that succeeds at once pays no
    /// clock read.
    pub(crate) fn start(&self) -> Deadline<'a> {
        Deadline {
            timeout: self.timeout,
            at: std::cell::Cell::new(None),
            zero: self.timeout == Some(Duration::ZERO),
            cancel: self.cancel,
        }
    }
}

/// A started [`Wait`].
#[derive(Debug, Clone)]
pub(crate) struct Deadline<'a> {
    timeout: Option<Duration>,
    /// The deadline, fixed at the first check (see [`Wait::start`]).
    at: std::cell::Cell<Option<Instant>>,
    zero: bool,
    cancel: Option<&'a CancelToken>,
}

impl Deadline<'_> {
    /// The deadline, fixing it from `now` the first time. A timeout too
    /// large to represent is no timeout.
    fn at(&self, now: Instant) -> Option<Instant> {
        let t = self.timeout?;
        if let Some(at) = self.at.get() {
            return Some(at);
        }
        let at = now.checked_add(t)?;
        self.at.set(Some(at));
        Some(at)
    }

    /// `Err` once the deadline passed or the token fired.
    pub(crate) fn check(&self, now: Instant) -> Result<()> {
        if let Some(c) = self.cancel {
            if c.is_cancelled() {
                return Err(Error::Cancelled);
            }
        }
        if self.zero {
            return Err(Error::WouldBlock);
        }
        match self.at(now) {
            Some(at) if now >= at => Err(Error::Timeout),
            _ => Ok(()),
        }
    }
    /// Time left, capped at `cap`.
    pub(crate) fn slice(&self, now: Instant, cap: Duration) -> Duration {
        self.slice_max(now, cap, MAX_SLICE)
    }

    /// [`slice`](Self::slice) with an explicit longest sleep.
    pub(crate) fn slice_max(&self, now: Instant, cap: Duration, max: Duration) -> Duration {
        // However long the caller's check interval, no single futex sleep
        // outlasts `max`: a wake lost to a race costs at most one slice.
        let mut s = cap.min(max);
        if let Some(at) = self.at(now) {
            s = s.min(at.saturating_duration_since(now));
        }
        if self.cancel.is_some() {
            s = s.min(CANCEL_POLL);
        }
        s.max(Duration::from_micros(1))
    }
}

/// The longest single futex sleep, but for idle readers backing off.
const MAX_SLICE: Duration = Duration::from_millis(200);

/// How often a parked waiter with a cancel token looks at it.
const CANCEL_POLL: Duration = Duration::from_millis(5);

/// How a blocked endpoint waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WaitStrategy {
    /// Spin for an adaptive window, then park on the futex (the default).
    #[default]
    Adaptive,
    /// Never park: poll with a CPU spin hint. Only for pinned, dedicated cores;
    /// on an oversubscribed machine this burns whole scheduler ticks.
    Spin,
    /// Park at once, no spinning: lowest CPU, highest latency.
    Park,
}

/// The adaptive spin window of one endpoint (process-local state).
#[derive(Debug, Clone)]
pub(crate) struct Spinner {
    strategy: WaitStrategy,
    window: Duration,
    /// Spin batches between `sched_yield`s past the pure-spin phase. A
    /// yield that returns at once means nobody else wants this CPU, and
    /// yielding only delays noticing the peer: back off to rare yields. A
    /// yield that took long means another task ran here (oversubscribed, or
    /// the peer shares this CPU): yield every batch.
    yield_every: u32,
}

/// Bounds of the adaptive window.
pub(crate) const MIN_WINDOW: Duration = Duration::from_micros(10);
pub(crate) const START_WINDOW: Duration = Duration::from_micros(100);
pub(crate) const MAX_WINDOW: Duration = Duration::from_micros(1000);
/// Pure spinning (no `sched_yield`) before the rest of the window.
const PURE_SPIN: Duration = Duration::from_micros(2);
/// Polls between clock reads while spinning.
const SPIN_BATCH: u32 = 32;
/// A `sched_yield` longer than this ran another task.
const YIELD_RAN_OTHERS: Duration = Duration::from_micros(3);
/// Most spin batches between yields when nobody else wants the CPU.
const MAX_YIELD_EVERY: u32 = 64;

impl Spinner {
    pub(crate) fn new(strategy: WaitStrategy) -> Self {
        // Every endpoint makes one before it first notifies anybody.
        asym::register();
        Spinner {
            strategy,
            window: START_WINDOW,
            yield_every: 1,
        }
    }

    /// The current spin window.
    pub(crate) fn window(&self) -> Duration {
        if cfg!(loom) {
            return Duration::ZERO;
        }
        match self.strategy {
            WaitStrategy::Adaptive => self.window,
            WaitStrategy::Spin => Duration::MAX,
            WaitStrategy::Park => Duration::ZERO,
        }
    }

    /// Yields the CPU every `yield_every` batches, learning from how long the
    /// yield took whether anyone else wants this CPU.
    fn maybe_yield(&mut self, batch: u32) {
        if !batch.is_multiple_of(self.yield_every) {
            return;
        }
        let t = Instant::now();
        std::thread::yield_now();
        if t.elapsed() > YIELD_RAN_OTHERS {
            self.yield_every = 1;
        } else {
            self.yield_every = (self.yield_every * 2).min(MAX_YIELD_EVERY);
        }
    }

    /// Learns from a wait that parked and was served after `waited`.
    pub(crate) fn record_parked(&mut self, waited: Duration) {
        if waited <= MAX_WINDOW {
            // Spinning a little longer would have caught it: widen past it.
            self.window = (waited * 2).clamp(self.window, MAX_WINDOW);
        } else {
            // The ring was idle: spinning was wasted CPU.
            self.window = (self.window / 2).max(MIN_WINDOW);
        }
    }
}

/// Asymmetric barriers through `membarrier(2)`; see the module documentation.
pub(crate) mod asym {
    #[cfg(not(loom))]
    // A process-local flag in a static (loom atomics cannot be); the loom
    // build has its own `imp` below.
    #[allow(clippy::disallowed_types)]
    mod imp {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::OnceLock;

        const GLOBAL_EXPEDITED: libc::c_int = 1 << 1;
        const REGISTER_GLOBAL_EXPEDITED: libc::c_int = 1 << 2;

        static REGISTERED: OnceLock<bool> = OnceLock::new();
        /// `REGISTERED` is `Some(true)`, in one byte every notify can read.
        static LIGHT: AtomicBool = AtomicBool::new(false);
        static REFUSED: OnceLock<()> = OnceLock::new();

        fn membarrier(cmd: libc::c_int) -> bool {
            // SAFETY: membarrier takes no pointers; an unsupported command or
            // a refused call returns -1 and changes nothing.
            unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0, 0) == 0 }
        }

        /// Registers this process (once) so that waiters' barriers reach it.
        /// Endpoints call it when they are made, before their first notify.
        pub(crate) fn register() {
            if *REGISTERED.get_or_init(|| membarrier(REGISTER_GLOBAL_EXPEDITED)) {
                LIGHT.store(true, Ordering::Relaxed);
            }
        }

        /// Whether this process's notifiers may use a compiler barrier.
        /// (Relaxed is enough: the flag only ever goes from false to true,
        /// and a notifier that still reads false pays a full fence.)
        #[inline(always)]
        pub(crate) fn light() -> bool {
            LIGHT.load(Ordering::Relaxed)
        }

        /// A full barrier on every CPU running a registered process (and
        /// here); false if the kernel refuses it.
        pub(crate) fn barrier_everywhere() -> bool {
            if REFUSED.get().is_some() {
                return false;
            }
            if membarrier(GLOBAL_EXPEDITED) {
                return true;
            }
            let _ = REFUSED.set(());
            log::warn!(
                "shoal: membarrier(GLOBAL_EXPEDITED) unavailable; rings this process waits on fall back to full fences"
            );
            false
        }
    }

    #[cfg(loom)]
    mod imp {
        pub(crate) fn register() {}
        pub(crate) fn light() -> bool {
            false
        }
        pub(crate) fn barrier_everywhere() -> bool {
            true
        }
    }

    pub(crate) use imp::{barrier_everywhere, light, register};
}

/// Words of an eventcount's waiter map: a word for the ring's owner (the
/// broadcast writer), then two bits per participant slot (one for a
/// blocking waiter, one for its [`ReadyFd`](crate::ReadyFd)). The owner's
/// word and the first 32 slots share the sequence word's cache line, so a
/// notify in a ring of up to 32 readers reads one line.
pub(crate) const WAITER_WORDS: usize = 1 + (2 * MAX_SLOTS as usize) / 64;
/// The owner's word in the map.
const OWNER_WORD: usize = 0;

/// One waiter's bit in an eventcount's waiter map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Waiter(usize);

impl Waiter {
    /// A blocking call of the participant in slot `i` (counted from the
    /// first slot that waits on this eventcount).
    pub(crate) const fn blocking(i: usize) -> Self {
        Waiter(64 + 2 * i)
    }
    /// The [`ReadyFd`](crate::ReadyFd) helper of the participant in slot `i`.
    pub(crate) const fn ready(i: usize) -> Self {
        Waiter(64 + 2 * i + 1)
    }
    /// The ring's owner (the broadcast writer).
    pub(crate) const fn owner() -> Self {
        Waiter(OWNER_WORD * 64)
    }
    #[inline]
    fn word_bit(self) -> (usize, u64) {
        (self.0 / 64, 1u64 << (self.0 % 64))
    }
}

/// A futex eventcount: a sequence word to sleep on, and a map with one bit
/// per registered waiter.
///
/// A map rather than a count, so that it can be repaired: a waiter that
/// dies while registered leaves its bit set, and whoever takes its slot over
/// (or evicts it) clears that bit ([`clear_slot`](Self::clear_slot)). A
/// leaked count would make every later notify a system call, forever.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct EventCount {
    seq: AtomicU32,
    /// Nonzero once a waiter could not issue the asymmetric barrier:
    /// notifiers must use full fences.
    heavy: AtomicU32,
    map: [AtomicU64; WAITER_WORDS],
}

impl EventCount {
    #[cfg_attr(not(loom), allow(dead_code))]
    pub(crate) fn new() -> Self {
        EventCount {
            seq: AtomicU32::new(0),
            heavy: AtomicU32::new(0),
            map: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Registers waiter `w`; the caller must re-check its condition after
    /// this and before [`sleep`](Self::sleep).
    pub(crate) fn prepare(&self, w: Waiter) -> u32 {
        let key = self.seq.load(Ordering::Acquire);
        let (i, bit) = w.word_bit();
        self.map[i].fetch_or(bit, Ordering::Relaxed);
        // SYNC: pairs with the barrier in `notify` (Dekker): either the
        // notifier sees our registration, or our re-check sees its
        // publication.
        if !asym::barrier_everywhere() {
            self.heavy.store(1, Ordering::Relaxed);
        }
        fence(Ordering::SeqCst);
        key
    }

    /// Whether the sequence moved on from `key` (a notify happened).
    pub(crate) fn changed(&self, key: u32) -> bool {
        self.seq.load(Ordering::Acquire) != key
    }

    pub(crate) fn sleep(&self, key: u32, slice: Duration) {
        futex::wait(&self.seq, key, Some(slice));
    }

    /// Withdraws waiter `w`.
    pub(crate) fn unregister(&self, w: Waiter) {
        let (i, bit) = w.word_bit();
        self.map[i].fetch_and(!bit, Ordering::Relaxed);
    }

    /// Clears both bits of slot `i` (relative as in [`Waiter::blocking`]):
    /// called when the slot is claimed or its owner evicted, so a waiter
    /// that died registered costs nothing afterwards.
    pub(crate) fn clear_slot(&self, i: usize) {
        let (w, bit) = Waiter::blocking(i).word_bit();
        if let Some(m) = self.map.get(w) {
            m.fetch_and(!(bit | bit << 1), Ordering::Relaxed);
        }
    }

    /// The map word holding slot `i`'s bits (for [`clear_slot_if`]).
    pub(crate) fn slot_word(&self, i: usize) -> u64 {
        let (w, _) = Waiter::blocking(i).word_bit();
        self.map.get(w).map_or(0, |m| m.load(Ordering::Relaxed))
    }

    /// Clears slot `i`'s bits on behalf of its dead owner, only if the map
    /// word still reads `seen` (read before the owner was judged dead): if
    /// the slot changed hands since, its new owner's claim changed the word
    /// and the clear is skipped, so a new owner's registration is not wiped
    /// (if the word returned to exactly `seen`, the clear still lands, and
    /// the sequence bump below sends that waiter round again).
    pub(crate) fn clear_slot_if(&self, i: usize, seen: u64) {
        let (w, bit) = Waiter::blocking(i).word_bit();
        let both = bit | bit << 1;
        if let Some(m) = self.map.get(w) {
            if seen & both != 0
                && m.compare_exchange(seen, seen & !both, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                // If the word came back to `seen` because a new owner
                // registered the same bit (ABA), the clear wiped it: moving
                // the sequence makes that waiter's futex wait return at
                // once (or wakes it), and it registers again.
                self.notify_always();
            }
        }
    }

    /// Clears the owner's bit (its owner died registered).
    pub(crate) fn clear_owner(&self) {
        self.map[OWNER_WORD].store(0, Ordering::Relaxed);
    }

    /// Whether any waiter among the first `slots` slots (or the owner) is
    /// registered. Reads one word per 32 slots.
    #[inline(always)]
    fn anyone(&self, slots: usize) -> bool {
        if self.map[OWNER_WORD].load(Ordering::Relaxed) != 0 {
            return true;
        }
        if slots <= 32 {
            return slots > 0 && self.map[1].load(Ordering::Relaxed) != 0;
        }
        let words = (2 * slots).div_ceil(64).min(WAITER_WORDS - 1);
        self.map[1..=words]
            .iter()
            .any(|m| m.load(Ordering::Relaxed) != 0)
    }

    /// Wakes every sleeper if there is one among the first `slots` slots
    /// (or the owner). Call after publishing with Release. Returns `true`
    /// when a waiter bit was set but the wake found nobody asleep: a hint
    /// (after many in a row) that a waiter died registered, see
    /// [`repair_waiters`](crate::peer::repair_waiters).
    #[inline(always)]
    pub(crate) fn notify(&self, slots: usize) -> bool {
        // SYNC: pairs with the barrier in `prepare`: a compiler barrier when
        // waiters' membarrier covers this process, else a full fence.
        if asym::light() && self.heavy.load(Ordering::Relaxed) == 0 {
            compiler_fence(Ordering::SeqCst);
        } else {
            fence(Ordering::SeqCst);
        }
        if self.anyone(slots) {
            return self.wake_all();
        }
        false
    }

    /// The waking part of `notify`: somebody's bit is set.
    #[inline(never)]
    fn wake_all(&self) -> bool {
        self.seq.fetch_add(1, Ordering::Release);
        futex::wake(&self.seq, u32::MAX) == 0
    }

    /// Whether waiter `w` is registered.
    pub(crate) fn is_registered(&self, w: Waiter) -> bool {
        let (i, bit) = w.word_bit();
        self.map[i].load(Ordering::Relaxed) & bit != 0
    }

    /// Whether either bit of slot `i` (relative) is set.
    pub(crate) fn slot_registered(&self, i: usize) -> bool {
        let (w, bit) = Waiter::blocking(i).word_bit();
        self.map
            .get(w)
            .is_some_and(|m| m.load(Ordering::Relaxed) & (bit | bit << 1) != 0)
    }

    /// Wakes sleepers unconditionally (close, eviction, cancellation paths).
    pub(crate) fn notify_always(&self) {
        self.seq.fetch_add(1, Ordering::Release);
        fence(Ordering::SeqCst);
        futex::wake(&self.seq, u32::MAX);
    }

    /// How many waiters among the first `slots` slots (and the owner) are
    /// registered.
    pub(crate) fn registered(&self, slots: usize) -> u32 {
        let words = (2 * slots).div_ceil(64).min(WAITER_WORDS - 1);
        self.map[..=words]
            .iter()
            .map(|m| m.load(Ordering::Relaxed).count_ones())
            .sum()
    }
}

/// How often a blocked call runs its periodic check (liveness, stalls),
/// which also bounds each futex sleep.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Checks {
    /// The interval (the endpoint's `liveness_interval`).
    pub every: Duration,
    /// Double the interval after each check while parked, up to
    /// [`IDLE_CHECK_MAX`]: for waits that nothing but a peer's death can
    /// end early (a reader on an idle ring), so idle readers wake rarely.
    pub idle_backoff: bool,
}

impl Checks {
    pub(crate) const fn every(every: Duration) -> Self {
        Checks {
            every,
            idle_backoff: false,
        }
    }
}

/// The longest check interval an idle parked reader backs off to: how late
/// it may learn, after a long idle spell, that its writer died.
pub(crate) const IDLE_CHECK_MAX: Duration = Duration::from_secs(1);

/// What [`block_on`] reports to its periodic check.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stalled {
    /// How long this wait has lasted so far.
    pub(crate) waited: Duration,
}

/// Waits until `poll` yields a value: spin for the adaptive window, then park
/// on `ec` in bounded slices. Every `check_every`, `on_check` runs (liveness
/// checks, slow-peer logs); it may end the wait with an error.
#[inline]
pub(crate) fn block_on<T>(
    spinner: &mut Spinner,
    ec: &EventCount,
    me: Waiter,
    deadline: &Deadline<'_>,
    checks: Checks,
    mut poll: impl FnMut() -> Result<Option<T>>,
    on_check: impl FnMut(Stalled) -> Result<()>,
) -> Result<T> {
    // The common case, kept small enough to inline: it is there already.
    if let Some(v) = poll()? {
        return Ok(v);
    }
    wait_for(spinner, ec, me, deadline, checks, poll, on_check)
}

/// The waiting part of [`block_on`]: spin, then park.
#[inline(never)]
fn wait_for<T>(
    spinner: &mut Spinner,
    ec: &EventCount,
    me: Waiter,
    deadline: &Deadline<'_>,
    checks: Checks,
    mut poll: impl FnMut() -> Result<Option<T>>,
    mut on_check: impl FnMut(Stalled) -> Result<()>,
) -> Result<T> {
    let t0 = Instant::now();
    deadline.check(t0)?;
    let window = spinner.window();
    let mut check_every = checks.every;
    // A check interval too large to add means "about never" (a year).
    let later = |t: Instant, every: Duration| {
        t.checked_add(every)
            .unwrap_or_else(|| t + Duration::from_secs(365 * 86_400))
    };
    let mut next_check = later(t0, check_every);

    // Spin phase.
    if !window.is_zero() {
        let mut batch = 0u32;
        loop {
            batch = batch.wrapping_add(1);
            for _ in 0..SPIN_BATCH {
                spin_hint();
                if let Some(v) = poll()? {
                    return Ok(v);
                }
            }
            let now = Instant::now();
            let spun = now - t0;
            if spun >= window {
                break;
            }
            deadline.check(now)?;
            if now >= next_check {
                on_check(Stalled { waited: spun })?;
                next_check = later(now, check_every);
            }
            if spinner.strategy == WaitStrategy::Adaptive && spun > PURE_SPIN {
                spinner.maybe_yield(batch);
            }
        }
    }

    // Park phase.
    loop {
        let key = ec.prepare(me);
        match poll() {
            Ok(Some(v)) => {
                ec.unregister(me);
                spinner.record_parked(t0.elapsed());
                return Ok(v);
            }
            Ok(None) => {}
            Err(e) => {
                ec.unregister(me);
                return Err(e);
            }
        }
        let now = Instant::now();
        // Only waits that back off while idle sleep past MAX_SLICE.
        let max = if checks.idle_backoff {
            IDLE_CHECK_MAX
        } else {
            MAX_SLICE
        };
        let slice = deadline.slice_max(now, next_check.saturating_duration_since(now), max);
        ec.sleep(key, slice);
        ec.unregister(me);
        if let Some(v) = poll()? {
            spinner.record_parked(t0.elapsed());
            return Ok(v);
        }
        let now = Instant::now();
        deadline.check(now)?;
        if now >= next_check {
            on_check(Stalled { waited: now - t0 })?;
            if checks.idle_backoff {
                // Parked and nothing happened: look less often (a wake
                // still ends the sleep at once).
                check_every = (check_every * 2).min(IDLE_CHECK_MAX.max(checks.every));
            }
            next_check = later(now, check_every);
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn window_widens_after_a_short_park_and_narrows_when_idle() {
        let mut s = Spinner::new(WaitStrategy::Adaptive);
        s.record_parked(Duration::from_micros(300));
        assert_eq!(s.window(), Duration::from_micros(600));
        s.record_parked(Duration::from_millis(50));
        assert_eq!(s.window(), Duration::from_micros(300));
        for _ in 0..20 {
            s.record_parked(Duration::from_secs(1));
        }
        assert_eq!(s.window(), MIN_WINDOW);
    }

    #[test]
    fn no_wait_fails_with_would_block() {
        let d = Wait::no_wait().start();
        assert!(matches!(d.check(Instant::now()), Err(Error::WouldBlock)));
    }

    #[test]
    fn cancel_ends_a_parked_wait() {
        let ec = EventCount::new();
        let tok = CancelToken::new();
        let t2 = tok.clone();
        let h = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            t2.cancel();
        });
        let mut sp = Spinner::new(WaitStrategy::Park);
        let d = Wait::forever().with_cancel(&tok).start();
        let r: Result<()> = block_on(
            &mut sp,
            &ec,
            Waiter::blocking(0),
            &d,
            Checks::every(Duration::from_millis(100)),
            || Ok(None),
            |_| Ok(()),
        );
        assert!(matches!(r, Err(Error::Cancelled)));
        h.join().unwrap();
    }
}

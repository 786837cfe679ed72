//! [`Batch`]: a pool of N tasks worked by worker groups of k ranks each.
//!
//! The group splits into worker groups of `k` consecutive ranks (the last
//! one smaller if k does not divide the size). Each worker group's first
//! rank takes tasks from the pool; [`Batch::next_task`] is collective over
//! the worker group (its ranks get the same task). A task is Running from
//! the moment it is handed out until its worker group asks for the next
//! one (then it is Done) or says it failed ([`Batch::fail_task`]).
//!
//! The pool's states live in shared memory on rank 0's host: its worker
//! groups take tasks with a few atomic operations (a counter and a state
//! byte per task, so the cost is linear in N); worker groups on other
//! hosts ask rank 0, which runs the pool for them beside its rendezvous.
//! A worker group whose first rank dies (its lease on the pool frees, or
//! its connection to rank 0 closes) leaves its task Failed, or Pending
//! again to be handed out to another ([`OnDeath`]), never Running
//! forever. With a state directory, each task's state is also written to
//! a file there, and a second run skips the tasks the files say are Done.

use crate::error::{Error, Result};
use crate::group::Group;
use crate::rendezvous::Service;
use shoal_shm_ring::{futex_wait, futex_wake, SegmentName, SharedRegion};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A task's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum TaskState {
    /// Not handed out yet.
    Pending = 0,
    /// Handed out, not finished.
    Running = 1,
    /// Finished.
    Done = 2,
    /// Failed (its worker said so, or died with it).
    Failed = 3,
}

impl TaskState {
    fn from_u8(b: u8) -> TaskState {
        match b {
            1 => TaskState::Running,
            2 => TaskState::Done,
            3 => TaskState::Failed,
            _ => TaskState::Pending,
        }
    }

    fn word(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Running => "running",
            TaskState::Done => "done",
            TaskState::Failed => "failed",
        }
    }
}

/// What happens to the task of a worker group that dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDeath {
    /// It is handed out again, to another worker group.
    Requeue,
    /// It ends Failed.
    Fail,
}

/// How a batch is made.
///
/// ```
/// use shoal_collectives::batch::{BatchOptions, OnDeath};
/// let o = BatchOptions::default().on_death(OnDeath::Fail);
/// assert!(o.state_dir.is_none());
/// ```
#[derive(Debug, Clone)]
pub struct BatchOptions {
    /// Where each task's state is written (`task-<n>`), and read back by
    /// the next run, which skips the Done ones. Default `None`.
    pub state_dir: Option<PathBuf>,
    /// What a dead worker group's task becomes. Default
    /// [`OnDeath::Requeue`].
    pub on_death: OnDeath,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            state_dir: None,
            on_death: OnDeath::Requeue,
        }
    }
}

impl BatchOptions {
    /// Sets [`state_dir`](Self::state_dir).
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = Some(dir.into());
        self
    }
    /// Sets [`on_death`](Self::on_death).
    pub fn on_death(mut self, d: OnDeath) -> Self {
        self.on_death = d;
        self
    }
}

/// "SHOALBA2": the second layout (the requeue count at [`REQUEUED_AT`]).
const MAGIC: u64 = 0x5348_4f41_4c42_4132;
const NEXT_AT: usize = 64;
/// Counts the tasks that finished or came back (a futex word), and the
/// workers parked on it.
const EVENTS_AT: usize = 128;
const SLEEPERS_AT: usize = 132;
/// Counts the tasks taken back to Pending (from dead, broken or replaced
/// worker groups; some twice): a worker that scanned the table and found
/// nothing scans again only once this moved.
const REQUEUED_AT: usize = 136;
/// Per worker, a line: its slot (see [`slot_word`]), then [`EPOCH`].
const WORKERS_AT: usize = 192;
/// In a worker's line: how many times a new connection took the worker's
/// number (see [`Pool`]'s claim). A claim names the worker's epoch in the
/// task's word and in the slot, so what a reaper read before the number
/// was taken again never matches what the new worker claims.
const EPOCH: usize = 8;
const WORKER: usize = 64;

/// How long a worker with nothing to take waits before it looks again
/// (others' tasks still running may come back): on its host, until a
/// task finishes or comes back, or this long (a dead worker is seen by
/// looking); on another host, this long.
const PAUSE: Duration = Duration::from_millis(2);

/// The pool's table in its region.
struct Table {
    region: SharedRegion,
    tasks: u64,
    workers: u32,
    on_death: OnDeath,
    dir: Option<PathBuf>,
    states_at: usize,
    /// The requeue count a scan of the whole table by this process found
    /// nothing Pending at (`u64::MAX`: none yet).
    scanned: AtomicU64,
}

/// What a take gave.
enum Took {
    Task(u64),
    /// Nothing now; tasks of live workers may still come back.
    Wait,
    None,
}

impl Table {
    fn size(tasks: u64, workers: u32) -> Option<usize> {
        let states_at = WORKERS_AT + WORKER * workers as usize;
        states_at.checked_add(usize::try_from(tasks).ok()?.checked_mul(4)?)
    }

    /// Refuses a pool this crate cannot make, whoever asks (every rank
    /// checks, so none waits for a refusal).
    fn check(tasks: u64, workers: u32) -> Result<()> {
        if workers > MAX_WORKERS {
            return Err(Error::BadArguments(format!(
                "{workers} worker groups; a pool takes at most {MAX_WORKERS}"
            )));
        }
        if tasks > MAX_TASKS {
            return Err(Error::BadArguments(format!(
                "{tasks} tasks; a pool takes at most {MAX_TASKS}"
            )));
        }
        Ok(())
    }

    fn create(tasks: u64, workers: u32, opts: &BatchOptions) -> Result<Table> {
        Table::check(tasks, workers)?;
        let len = Table::size(tasks, workers)
            .ok_or_else(|| Error::BadArguments(format!("{tasks} tasks do not fit in memory")))?;
        let region = SharedRegion::create(len as u64, "shoal-batch")?;
        // SAFETY: the header fields lie in the region's first page,
        // aligned; nobody else has its name yet.
        unsafe {
            let p = region.as_ptr();
            (p as *mut u64).write(MAGIC);
            (p.add(8) as *mut u64).write(tasks);
            (p.add(16) as *mut u32).write(workers);
        }
        let t = Table::over(region, tasks, workers, opts);
        if let Some(dir) = &t.dir {
            t.resume(dir)?;
        }
        Ok(t)
    }

    fn attach(name: &str, tasks: u64, workers: u32, opts: &BatchOptions) -> Result<Table> {
        let name: SegmentName = name.parse().map_err(|_| Error::Malformed {
            what: "the batch's region name",
            why: format!("{name:?}"),
        })?;
        let region = SharedRegion::attach(&name)?;
        let len = Table::size(tasks, workers).unwrap_or(usize::MAX);
        // SAFETY: read only once the region is known to hold the header.
        let ok = region.len() >= len
            && unsafe {
                let p = region.as_ptr();
                (p as *const u64).read_volatile() == MAGIC
                    && (p.add(8) as *const u64).read_volatile() == tasks
                    && (p.add(16) as *const u32).read_volatile() == workers
            };
        if !ok {
            return Err(Error::Malformed {
                what: "the batch's region",
                why: format!("not a pool of {tasks} tasks for {workers} workers"),
            });
        }
        Ok(Table::over(region, tasks, workers, opts))
    }

    /// The table in `region` (made or checked by the caller).
    fn over(region: SharedRegion, tasks: u64, workers: u32, opts: &BatchOptions) -> Table {
        Table {
            region,
            tasks,
            workers,
            on_death: opts.on_death,
            dir: opts.state_dir.clone(),
            states_at: WORKERS_AT + WORKER * workers as usize,
            scanned: AtomicU64::new(u64::MAX),
        }
    }

    /// Marks Done the tasks the state files say are.
    fn resume(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let entries = std::fs::read_dir(dir)
            .map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(n) = name
                .to_str()
                .and_then(|n| n.strip_prefix("task-"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            if n < self.tasks && std::fs::read_to_string(e.path()).is_ok_and(|s| s.trim() == "done")
            {
                self.state(n)
                    .store(TaskState::Done as u32, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    fn u64_at(&self, at: usize) -> &AtomicU64 {
        // SAFETY: 8-aligned fields below states_at, inside the region
        // (checked at create or attach); mapped while `self` lives.
        unsafe { &*(self.region.as_ptr().add(at) as *const AtomicU64) }
    }

    /// Task `task`'s word: its state, and while Running the worker
    /// running it (see [`running_word`]).
    fn state(&self, task: u64) -> &AtomicU32 {
        debug_assert!(task < self.tasks);
        // SAFETY: states_at is 64-aligned and states_at + 4 * (task + 1)
        // <= the region's length (checked at create or attach; callers
        // keep task below `tasks`); mapped while `self` lives. Another
        // process of the user can write any word: a word read back is
        // decoded, never trusted as an index.
        unsafe {
            &*(self.region.as_ptr().add(self.states_at + 4 * task as usize) as *const AtomicU32)
        }
    }

    /// Task `t`'s state.
    fn state_of(&self, t: u64) -> TaskState {
        TaskState::from_u8(self.state(t).load(Ordering::Acquire) as u8)
    }

    fn u32_at(&self, at: usize) -> &AtomicU32 {
        // SAFETY: 4-aligned fields of the header or of a worker's line,
        // below states_at, inside the region (checked at create or
        // attach); mapped while `self` lives.
        unsafe { &*(self.region.as_ptr().add(at) as *const AtomicU32) }
    }

    /// A task finished or came back (its word changed): wakes the
    /// workers waiting for one, if any (a finish touches no shared line
    /// otherwise).
    fn event(&self) {
        // SYNC: the caller changed the task's word with a SeqCst exchange
        // before the sleepers are read here (SeqCst), and a waiter counts
        // itself (SeqCst) and fences (SeqCst) before it looks at the
        // words again: either this sees the waiter, or the waiter's look
        // sees the change.
        if self.u32_at(SLEEPERS_AT).load(Ordering::SeqCst) > 0 {
            self.u32_at(EVENTS_AT).fetch_add(1, Ordering::SeqCst);
            futex_wake(self.u32_at(EVENTS_AT), u32::MAX);
        }
    }

    /// [`take`](Self::take) for worker `w` that found nothing to take
    /// but tasks still running elsewhere: counted as a sleeper, it looks
    /// again, and if it still has to wait, parks until a task finishes
    /// or comes back, or [`PAUSE`] (a dead worker is seen by looking).
    ///
    /// A worker killed while parked stays counted: each later finish then
    /// makes one `futex_wake` for nobody. That is bounded, so it is left:
    /// workers park only once every task is handed out, and few finishes
    /// are left by then (the tasks still running, and any requeued).
    /// Uncounting it would mean looking at every parked worker's lease
    /// in each reap (one `fcntl` each), which costs more.
    fn take_waiting(&self, w: u32) -> Took {
        let sleepers = self.u32_at(SLEEPERS_AT);
        let events = self.u32_at(EVENTS_AT);
        sleepers.fetch_add(1, Ordering::SeqCst);
        // SYNC: see `event`.
        std::sync::atomic::fence(Ordering::SeqCst);
        let seen = events.load(Ordering::SeqCst);
        let took = self.take(w);
        if matches!(took, Took::Wait) {
            futex_wait(events, seen, Some(PAUSE));
        }
        sleepers.fetch_sub(1, Ordering::SeqCst);
        took
    }

    fn running(&self, w: u32) -> &AtomicU64 {
        self.u64_at(WORKERS_AT + WORKER * w as usize)
    }

    fn epoch(&self, w: u32) -> &AtomicU32 {
        self.u32_at(WORKERS_AT + WORKER * w as usize + EPOCH)
    }

    #[inline]
    fn record(&self, t: u64) {
        if self.dir.is_some() {
            self.write_record(t);
        }
    }

    /// Writes task `t`'s state file (the word changed already): the state
    /// the word holds, through a temporary file renamed over it, looked at
    /// again after the rename (a writer that stalled before its rename
    /// puts back the state of the writer after it).
    #[cold]
    fn write_record(&self, t: u64) {
        let Some(dir) = &self.dir else {
            return;
        };
        let path = dir.join(format!("task-{t}"));
        let tmp = crate::group::tmp_beside(&dir.join(format!(".task-{t}")));
        for _ in 0..4 {
            let s = self.state_of(t);
            let r = std::fs::write(&tmp, s.word()).and_then(|()| std::fs::rename(&tmp, &path));
            if let Err(e) = r {
                let _ = std::fs::remove_file(&tmp);
                tracing::warn!(path = %path.display(), error = %e, "shoal batch: a task's state file was not written");
                return;
            }
            if self.state_of(t) == s {
                return;
            }
        }
    }

    /// The next task for worker `w`.
    fn take(&self, w: u32) -> Took {
        let next = self.u64_at(NEXT_AT);
        while next.load(Ordering::Relaxed) < self.tasks {
            let t = next.fetch_add(1, Ordering::AcqRel);
            if t >= self.tasks {
                break;
            }
            // Done in an earlier run (state files), or claimed by a scan
            // (below): skipped.
            if let Some(took) = self.start(w, t) {
                return took;
            }
        }
        // Nothing left to count out: the tasks of dead workers (Pending
        // again, or Failed), and those counted out to a taker that died
        // before it claimed them, are taken by a scan; then those of live
        // workers may still come back. A scan that finds nothing is made
        // again only once a task came back (the count read before it):
        // a task counted out and never claimed is Pending for the first
        // scan after the count-out, and nothing else becomes Pending but
        // by coming back, which is counted (by the reaper, or by the next
        // reaper of the same slot if that one died before counting). So
        // an idle worker waiting for the others' last tasks looks at
        // their slots, not at the whole table, each time it wakes: O(N)
        // per task that comes back and once at the end, not per wake-up.
        let (mut others_running, _) = self.reap(w);
        loop {
            let requeued = self.u64_at(REQUEUED_AT).load(Ordering::SeqCst);
            if self.scanned.load(Ordering::Relaxed) != requeued {
                if let Some(took) = self.scan(w) {
                    return took;
                }
                self.scanned.store(requeued, Ordering::Relaxed);
            }
            // Looked at again after the scan: a worker that claimed a task
            // the scan found Running had named it in its slot by then (and
            // may have died since: its task, requeued now, is scanned for
            // again).
            let (running, requeued) = self.reap(w);
            others_running |= running;
            if !requeued {
                break;
            }
        }
        if others_running && self.on_death == OnDeath::Requeue {
            Took::Wait
        } else {
            // Said once per worker, so a last whole scan first: nothing
            // Pending is left behind whatever the count says.
            self.scan(w).unwrap_or(Took::None)
        }
    }

    /// The first Pending task of the whole table, claimed for worker `w`.
    fn scan(&self, w: u32) -> Option<Took> {
        (0..self.tasks).find_map(|t| self.start(w, t))
    }

    /// One more task came back to Pending (SeqCst: after its word, which
    /// a scan that reads the count then finds).
    fn count_requeue(&self) {
        self.u64_at(REQUEUED_AT).fetch_add(1, Ordering::SeqCst);
    }

    /// Claims task `t` for worker `w` if it is Pending (`None`: it is
    /// not). The worker's slot names it first, so a worker that dies
    /// anywhere from here on leaves it to the reapers; the task's word
    /// names the worker, so only that worker's death takes it back.
    fn start(&self, w: u32, t: u64) -> Option<Took> {
        let state = self.state(t);
        if state.load(Ordering::Acquire) != TaskState::Pending as u32 {
            return None;
        }
        // Release: a scan that sees the word this claim writes sees the
        // slot too (the claim's exchange releases it); a reaper acts on
        // the slot of a dead worker only (its stores all landed), or on
        // what a number's earlier owner left, under an older epoch.
        let e = self.epoch(w).load(Ordering::Acquire);
        self.running(w).store(slot_word(e, t), Ordering::Release);
        if state
            .compare_exchange(
                TaskState::Pending as u32,
                running_word(w, e),
                Ordering::AcqRel,
                // A lost claim reads the winner's word: Acquire, so its
                // slot (stored before) is seen by this worker's reap.
                Ordering::Acquire,
            )
            .is_err()
        {
            self.running(w).store(0, Ordering::Release);
            return None;
        }
        self.record(t);
        Some(Took::Task(t))
    }

    /// Worker `w` finished its task.
    fn finish(&self, w: u32, ok: bool) {
        // The word first, then the slot: a worker that dies between the
        // two leaves a finished task, which the reapers leave alone.
        let (e, t) = slot_parts(self.running(w).load(Ordering::Acquire));
        if t != 0 && t - 1 < self.tasks {
            let to = if ok {
                TaskState::Done
            } else {
                TaskState::Failed
            };
            // Only while the task is still this worker's (a reaper that
            // took it back handed it on).
            // SeqCst: ordered before `event`'s look at the sleepers.
            if self
                .state(t - 1)
                .compare_exchange(
                    running_word(w, e),
                    to as u32,
                    Ordering::SeqCst,
                    Ordering::Relaxed,
                )
                .is_ok()
            {
                self.record(t - 1);
                // The slot is cleared before the waiters are woken (they
                // decide to wait by the slots of live workers): SeqCst,
                // ordered before `event`'s look at the sleepers.
                self.running(w).store(0, Ordering::SeqCst);
                self.event();
                return;
            }
            tracing::warn!(
                worker = w,
                task = t - 1,
                "shoal batch: a worker finished a task that had been taken back from it"
            );
        }
        self.running(w).store(0, Ordering::Release);
    }

    /// Takes the tasks of dead workers back (requeued or failed):
    /// whether a live worker other than `w` still runs one, and whether a
    /// task was requeued.
    ///
    /// A dead worker's slot only says where to look: the task's word
    /// decides. It is taken back with one compare-exchange from "Running
    /// by that worker", so reapers racing each other, a reaper that dies
    /// half-way, a slot naming a task its worker lost the claim of, or a
    /// task requeued and claimed again by a live worker, are all left
    /// right: the word names the live worker then, and the exchange
    /// fails. A number taken again by a new connection is looked at again
    /// after its slot is read, and its new claims carry a new epoch (see
    /// [`take_back`](Self::take_back)).
    fn reap(&self, w: u32) -> (bool, bool) {
        let mut live = false;
        let mut requeued = false;
        for v in 0..self.workers {
            if v == w {
                continue;
            }
            if slot_parts(self.running(v).load(Ordering::Acquire)).1 == 0 {
                continue;
            }
            if self.region.held(v) {
                live = true;
                continue;
            }
            requeued |= self.take_back(v, Gone::Dead) == Some(TaskState::Pending);
        }
        (live, requeued)
    }

    /// Takes back the task of worker `v`, which is gone (or whose number
    /// a new connection takes, holding its lease): what its task became,
    /// if it was still running it.
    ///
    /// A reaper looks at the worker's lease again after it read the slot:
    /// a connection that took the number since (it takes the lease
    /// first) may have claimed a task under it, which must not be taken
    /// back. One that takes the number after this read claims under the
    /// next epoch, which neither the word nor the slot read here names.
    fn take_back(&self, v: u32, gone: Gone) -> Option<TaskState> {
        let slot = self.running(v);
        let was = slot.load(Ordering::Acquire);
        let (e, t) = slot_parts(was);
        if t == 0 {
            return None;
        }
        if gone == Gone::Dead && self.region.held(v) {
            return None;
        }
        let task = t - 1;
        let mut became = None;
        // A take-back counted for a reaper that died before it could: its
        // wake-up is owed too.
        let mut counted = false;
        if task < self.tasks {
            let to = match self.on_death {
                OnDeath::Requeue => TaskState::Pending,
                OnDeath::Fail => TaskState::Failed,
            };
            // SeqCst: ordered before `event`'s look at the sleepers.
            match self.state(task).compare_exchange(
                running_word(v, e),
                to as u32,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => {
                    // Counted at once (a scan that reads the count finds
                    // the task Pending); a reaper that dies before this
                    // leaves the slot set, for the next one (below).
                    if to == TaskState::Pending {
                        self.count_requeue();
                    }
                    tracing::warn!(
                        worker = v,
                        task,
                        "shoal batch: a worker group {} running a task; it is now {}",
                        if gone == Gone::Broken {
                            "lost a rank"
                        } else {
                            "died"
                        },
                        to.word()
                    );
                    // Its file too; a Pending task is taken by the next
                    // scan.
                    self.record(task);
                    became = Some(to);
                }
                // Taken back already, by a reaper that may have died
                // before it counted it: counted (again) before the slot
                // that still names it is cleared. Counting twice costs an
                // idle worker one more scan.
                Err(w) if w == TaskState::Pending as u32 => {
                    self.count_requeue();
                    counted = true;
                }
                Err(_) => {}
            }
        }
        // The task is no longer that worker's (taken back above, by
        // another reaper, or never claimed): its slot is cleared unless it
        // changed meanwhile, before waiters are woken (see `finish`).
        let _ = slot.compare_exchange(was, 0, Ordering::SeqCst, Ordering::Relaxed);
        // SYNC (`counted`): as in `event`, the count's SeqCst add stands
        // for the word's exchange: a waiter looks at the count after it
        // counted itself.
        if became.is_some() || counted {
            self.event();
        }
        became
    }
}

/// Whom [`Table::take_back`] takes a task back from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gone {
    /// A worker found dead (its lease free): looked at again.
    Dead,
    /// A worker whose number the caller has just taken (holding its
    /// lease).
    Replaced,
    /// A live worker group that lost a rank (its first rank gives its
    /// task up, holding the lease).
    Broken,
}

/// The word of a task Running by worker `w` in epoch `e` (see [`EPOCH`]):
/// the state in the low byte, the worker + 1 above it (17 bits), the
/// epoch's low 7 bits on top (a reaper's read goes stale only if the
/// number was taken again 128 times meanwhile).
fn running_word(w: u32, e: u32) -> u32 {
    TaskState::Running as u32 | ((w + 1) << 8) | ((e & 0x7f) << 25)
}

/// A worker's slot while it runs task `t`, claimed in epoch `e`: the
/// epoch above, the task + 1 below (0: no task).
fn slot_word(e: u32, t: u64) -> u64 {
    (u64::from(e) << 32) | (t + 1)
}

/// A slot's epoch and task + 1 (0: none).
fn slot_parts(w: u64) -> (u32, u64) {
    ((w >> 32) as u32, w & 0xffff_ffff)
}

/// Most worker groups a pool takes: one lease each (their numbers also
/// fit a task's word).
const MAX_WORKERS: u32 = 1 << 16;
const _: () = assert!(MAX_WORKERS < (1 << 17) - 1 && MAX_WORKERS <= shoal_shm_ring::MAX_LEASES);
/// Most tasks a pool takes (a slot holds the task + 1 in 32 bits).
const MAX_TASKS: u64 = u32::MAX as u64 - 1;

/// Rank 0 runs the pool for worker groups on other hosts: it holds each
/// one's lease, through an attach of the pool's region of that worker's
/// own, while its connection lives (the table's own attach holds none, so
/// it sees every worker's lease as another's).
struct Pool {
    table: Table,
    /// Which worker each connection asks for, and the attach holding its
    /// lease.
    who: Mutex<HashMap<u64, (u32, SharedRegion)>>,
}

impl Pool {
    /// Connection `conn` asks for worker `w`: whether it may.
    fn claim(&self, conn: u64, w: u32) -> bool {
        let mut who = self.who.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((v, _)) = who.get(&conn) {
            return *v == w;
        }
        if who.values().any(|(v, _)| *v == w) {
            // Another connection asks for it already.
            return false;
        }
        let Ok(lease) = SharedRegion::attach(self.table.region.name()) else {
            return false;
        };
        if !matches!(lease.hold(w), Ok(true)) {
            return false;
        }
        // A worker of that number that was gone may have left a task
        // Running (nobody reaps the task of a live worker): taken back
        // before the new one works under its number, in a new epoch.
        self.table.take_back(w, Gone::Replaced);
        self.table.epoch(w).fetch_add(1, Ordering::AcqRel);
        who.insert(conn, (w, lease));
        true
    }
}

impl Service for Pool {
    fn call(&self, conn: u64, body: &[u8]) -> Vec<u8> {
        let (Some(&op), Some(w)) = (
            body.first(),
            body.get(1..5)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_le_bytes),
        ) else {
            return vec![9];
        };
        if w >= self.table.workers || !self.claim(conn, w) {
            return vec![9];
        }
        match op {
            1 => match self.table.take(w) {
                Took::Task(t) => {
                    let mut b = vec![1];
                    b.extend_from_slice(&t.to_le_bytes());
                    b
                }
                Took::Wait => vec![2],
                Took::None => vec![0],
            },
            2 | 3 => {
                self.table.finish(w, op == 2);
                vec![0]
            }
            // The worker group broke: its task goes as a dead one's.
            4 => {
                self.table.take_back(w, Gone::Broken);
                vec![0]
            }
            _ => vec![9],
        }
    }

    fn gone(&self, conn: u64) {
        // Its attach drops: its lease frees, and the pool's reapers see
        // the worker gone.
        let held = self
            .who
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&conn);
        drop(held);
    }
}

/// How this rank's worker group reaches the pool (one per Batch: its
/// size does not matter).
#[allow(clippy::large_enum_variant)]
enum Via {
    /// The table in this host's shared memory.
    Table(Table),
    /// Rank 0's service (worker groups on other hosts).
    Service(Vec<u8>),
    /// Not the worker group's first rank: it only follows.
    Follower,
}

/// A task pool over a group (see the [module doc](self)).
///
/// ```
/// use shoal_collectives::batch::{Batch, BatchOptions};
/// use shoal_collectives::Group;
/// let g = Group::single();
/// let mut b = Batch::new(&g, 5, 1, &BatchOptions::default())?;
/// let mut seen = Vec::new();
/// while let Some(t) = b.next_task()? {
///     seen.push(t);
/// }
/// assert_eq!(seen, [0, 1, 2, 3, 4]);
/// # Ok::<(), shoal_collectives::Error>(())
/// ```
pub struct Batch<'g> {
    group: &'g Group,
    worker: Group,
    index: u32,
    via: Via,
    /// The task handed out last, if not finished.
    current: Option<u64>,
    key: Vec<u8>,
    registered: bool,
}

impl std::fmt::Debug for Batch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("worker", &self.index)
            .field("current", &self.current)
            .finish_non_exhaustive()
    }
}

impl<'g> Batch<'g> {
    /// A pool of `tasks` tasks over `group`, worked by worker groups of
    /// `ranks_per_worker` ranks. Collective.
    pub fn new(
        group: &'g Group,
        tasks: u64,
        ranks_per_worker: u32,
        opts: &BatchOptions,
    ) -> Result<Batch<'g>> {
        let workers = group.size().div_ceil(ranks_per_worker.max(1));
        let index = group.rank() / ranks_per_worker.max(1);
        let checked = if ranks_per_worker == 0 {
            Err(Error::BadArguments("worker groups of 0 ranks".into()))
        } else {
            Table::check(tasks, workers)
        };
        let call = group.next_call()?;
        let key = format!("{}/{call}/batch", group.name()).into_bytes();
        if let Err(e) = checked {
            // Told to the others too (arguments only this rank gave):
            // they would wait for it at the collective otherwise.
            return Err(group.refuse("batch", e));
        }
        // Rank 0 makes the table; its host's ranks attach to it. A table
        // rank 0 could not make is told to the others in its place (a
        // name never starts with `!`), so they fail now, not at a timeout.
        let made = if group.rank() == 0 {
            Some(Table::create(tasks, workers, opts))
        } else {
            None
        };
        let name = match &made {
            Some(Ok(t)) => t.region.name().as_str().as_bytes().to_vec(),
            Some(Err(e)) => crate::agree::refusal(e, group.max_value()),
            None => Vec::new(),
        };
        let all = group.collect("batch", &name, true)?;
        let made = made.transpose()?;
        if let Some((r, why)) = crate::agree::first_refusal(&all) {
            return Err(if r == 0 {
                Error::Broken(format!("batch: rank 0 could not make the pool: {why}"))
            } else {
                Error::BadArguments(format!("batch: rank {r} refused its arguments: {why}"))
            });
        }
        let name = all.first().map(Vec::as_slice).unwrap_or_default();
        let name = String::from_utf8_lossy(name).into_owned();
        let on_rank0_host = group.node() == group.members()[0].node;
        // This rank's place in the pool: its worker group (a split, which
        // can fail on one host alone: its shared state), the service
        // (rank 0, with other hosts), the table (a worker group's leader
        // on rank 0's host), its lease held.
        let mut registered = false;
        let worker = group.split(index, group.rank());
        let placed = worker.and_then(|worker| {
            let leader = worker.rank() == 0;
            if group.rank() == 0 && group.nodes() > 1 {
                let pool = Pool {
                    table: Table::attach(&name, tasks, workers, opts)?,
                    who: Mutex::default(),
                };
                registered = group.register_service(&key, Arc::new(pool));
            }
            let via = if !leader {
                Via::Follower
            } else if let Some(t) = made {
                Via::Table(t)
            } else if on_rank0_host {
                Via::Table(Table::attach(&name, tasks, workers, opts)?)
            } else {
                Via::Service(key.clone())
            };
            if let Via::Table(t) = &via {
                if !t.region.hold(index)? {
                    return Err(Error::BadArguments(format!(
                        "worker {index}'s place in the pool is held by a live process"
                    )));
                }
            }
            Ok((worker, via))
        });
        // Nobody takes a task before every worker is in place (the
        // service is registered, the leases held); a rank that could not
        // take its place fails every rank now, naming it, instead of
        // leaving the others to wait for it.
        let (worker, via) = match group.agree("batch places", placed) {
            Ok(placed) => placed,
            Err(e) => {
                if registered {
                    group.unregister_service(&key);
                }
                return Err(e);
            }
        };
        Ok(Batch {
            group,
            worker,
            index,
            via,
            current: None,
            key,
            registered,
        })
    }

    /// This rank's worker group (a sub-group: its rank 0 takes tasks).
    pub fn worker(&self) -> &Group {
        &self.worker
    }

    /// This worker group's index (rank / ranks per worker).
    pub fn worker_index(&self) -> u32 {
        self.index
    }

    /// Finishes the task handed out last (Done, unless
    /// [`fail_task`](Self::fail_task) said otherwise) and hands out the
    /// next one, to every rank of the worker group; `None` once none is
    /// left (with [`OnDeath::Requeue`], once no other worker group's task
    /// can come back either). Collective over the worker group.
    ///
    /// A worker group of several ranks first meets (a barrier over it):
    /// the task is Done only once every rank of the group is through
    /// with it. A rank of the group that died (or a step that failed)
    /// makes this return the error on the ranks left, and the group's
    /// task becomes what a dead worker group's does
    /// ([`BatchOptions::on_death`]); so does a task claimed for a group
    /// whose hand-out then failed. When the pool itself fails the first
    /// rank (its host unreachable), the group is marked broken, so the
    /// other ranks' waits for the hand-out end at once (on its host; on
    /// others, at the group's timeout).
    pub fn next_task(&mut self) -> Result<Option<u64>> {
        if self.worker.size() > 1 {
            if let Err(e) = self.worker.barrier() {
                self.abandon();
                return Err(e);
            }
        }
        let next = if self.worker.rank() == 0 {
            let taken = (|| {
                if self.current.take().is_some() {
                    self.finish(true)?;
                }
                self.take()
            })();
            let next = match taken {
                Ok(next) => next,
                Err(e) => {
                    // The others wait for the hand-out: told, not left to
                    // their timeout.
                    self.worker.break_with(&e);
                    return Err(e);
                }
            };
            // Held as this group's task at once: an error below gives it
            // up (as a dead group's), a drop marks it Failed, instead of
            // leaving it Running.
            self.current = next;
            Some(next)
        } else {
            self.current = None;
            None
        };
        let t = if self.worker.size() == 1 {
            next.flatten()
        } else {
            match self
                .worker
                .broadcast(0, next.as_ref())
                .and_then(|v| v.deserialize())
            {
                Ok(t) => t,
                Err(e) => {
                    self.abandon();
                    return Err(e);
                }
            }
        };
        self.current = t;
        Ok(t)
    }

    /// The worker group broke (a rank died, a step failed): its task, on
    /// its first rank, becomes what a dead group's does.
    fn abandon(&mut self) {
        if self.current.take().is_none() || self.worker.rank() != 0 {
            return;
        }
        let given = match &self.via {
            Via::Table(t) => {
                t.take_back(self.index, Gone::Broken);
                Ok(())
            }
            Via::Service(key) => {
                let mut body = vec![4];
                body.extend_from_slice(&self.index.to_le_bytes());
                self.group.call_service(key, &body).map(drop)
            }
            Via::Follower => Ok(()),
        };
        if let Err(e) = given {
            // The pool's host is unreachable: this group's lease there goes
            // with the connection, and the pool's reapers take the task
            // back then.
            tracing::warn!(error = %e, "shoal batch: could not give up the broken worker group's task");
        }
    }

    /// Marks the task handed out last Failed (on the worker group's first
    /// rank; a no-op elsewhere). The next [`next_task`](Self::next_task)
    /// does not mark it Done.
    pub fn fail_task(&mut self) -> Result<()> {
        if self.worker.rank() == 0 && self.current.take().is_some() {
            self.finish(false)?;
        }
        Ok(())
    }

    fn finish(&self, ok: bool) -> Result<()> {
        match &self.via {
            Via::Table(t) => {
                t.finish(self.index, ok);
                Ok(())
            }
            Via::Service(key) => {
                let mut body = vec![if ok { 2 } else { 3 }];
                body.extend_from_slice(&self.index.to_le_bytes());
                self.group.call_service(key, &body).map(drop)
            }
            Via::Follower => Ok(()),
        }
    }

    fn take(&self) -> Result<Option<u64>> {
        loop {
            let took = match &self.via {
                Via::Table(t) => match t.take(self.index) {
                    Took::Wait => loop {
                        match t.take_waiting(self.index) {
                            Took::Wait => {}
                            took => break took,
                        }
                    },
                    took => took,
                },
                Via::Service(key) => {
                    let mut body = vec![1];
                    body.extend_from_slice(&self.index.to_le_bytes());
                    let a = self.group.call_service(key, &body)?;
                    match a.first() {
                        Some(1) => Took::Task(
                            a.get(1..9)
                                .and_then(|b| b.try_into().ok())
                                .map(u64::from_le_bytes)
                                .ok_or_else(|| Error::Malformed {
                                    what: "the pool's answer",
                                    why: "a task without its number".into(),
                                })?,
                        ),
                        Some(2) => Took::Wait,
                        Some(0) => Took::None,
                        _ => {
                            return Err(Error::Refused(
                                "the pool refused this worker (another holds its place?)".into(),
                            ))
                        }
                    }
                }
                Via::Follower => return Ok(None),
            };
            match took {
                Took::Task(t) => return Ok(Some(t)),
                Took::None => return Ok(None),
                Took::Wait => std::thread::sleep(PAUSE),
            }
        }
    }

    /// Task `t`'s state, as rank 0's host sees it (`None` on ranks that do
    /// not reach the table: followers, and worker groups on other hosts).
    pub fn state(&self, t: u64) -> Option<TaskState> {
        match &self.via {
            Via::Table(table) if t < table.tasks => Some(table.state_of(t)),
            _ => None,
        }
    }

    /// Waits (up to the group's timeout) until every task is Done or
    /// Failed, on rank 0; then every state, by task. Collective: every
    /// rank calls it once it got `None` from `next_task`; `None` on the
    /// other ranks.
    ///
    /// Ranks that died do not stop it: the meeting ends with the ranks
    /// left (the error is logged), and rank 0 waits for the dead groups'
    /// tasks to be taken back as [`BatchOptions::on_death`] says. Ranks
    /// that are late past the group's timeout (alive, still working)
    /// make it fail, as before.
    pub fn finish_all(&self) -> Result<Option<Vec<TaskState>>> {
        match self.group.barrier() {
            Ok(()) => {}
            Err(e @ (Error::RanksGone { .. } | Error::Broken(_))) => {
                tracing::warn!(error = %e, "shoal batch: finishing without the ranks that are gone");
            }
            Err(e) => return Err(e),
        }
        if self.group.rank() != 0 {
            return Ok(None);
        }
        let Via::Table(t) = &self.via else {
            return Ok(None);
        };
        let end = Instant::now() + self.group.options().timeout;
        loop {
            let states: Vec<TaskState> = (0..t.tasks).map(|i| t.state_of(i)).collect();
            let open = states
                .iter()
                .any(|s| matches!(s, TaskState::Running | TaskState::Pending));
            if !open || Instant::now() >= end {
                return Ok(Some(states));
            }
            let _ = t.reap(u32::MAX);
            std::thread::sleep(PAUSE);
        }
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        if self.current.is_some() && self.worker.rank() == 0 {
            // Dropped while running a task (an error, a panic): failed.
            let _ = self.finish(false);
        }
        if self.registered {
            self.group.unregister_service(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table of `tasks` tasks for 3 workers; worker 2 is alive (its
    /// lease held through an attach of its own), 0 and 1 are not.
    fn table(tasks: u64, on_death: OnDeath) -> (Table, SharedRegion) {
        let t = Table::create(tasks, 3, &BatchOptions::default().on_death(on_death)).unwrap();
        let live = SharedRegion::attach(t.region.name()).unwrap();
        assert!(live.hold(2).unwrap());
        (t, live)
    }

    #[test]
    fn a_dead_workers_task_is_taken_back_once() {
        let (t, _live) = table(2, OnDeath::Requeue);
        // Worker 1 claims task 0 and dies (its lease was never held).
        assert!(matches!(t.start(1, 0), Some(Took::Task(0))));
        assert_eq!(t.state_of(0), TaskState::Running);
        // Worker 2's reap takes it back, and clears the dead slot.
        assert_eq!(t.reap(2), (false, true));
        assert_eq!(t.state_of(0), TaskState::Pending);
        assert_eq!(t.running(1).load(Ordering::Relaxed), 0);
        // Live worker 2 claims it again. A slot naming it again (a reaper
        // that died before clearing it, or a claim worker 1 lost) does not
        // take it from worker 2.
        assert!(matches!(t.start(2, 0), Some(Took::Task(0))));
        t.running(1).store(1, Ordering::Relaxed);
        // (Worker 2 is alive and runs a task: true.)
        assert!(t.reap(0).0);
        assert_eq!(t.state(0).load(Ordering::Relaxed), running_word(2, 0));
        assert_eq!(t.running(1).load(Ordering::Relaxed), 0);
        // Worker 0 (dead) never finishes worker 2's task.
        t.running(0).store(1, Ordering::Relaxed);
        t.finish(0, true);
        assert_eq!(t.state_of(0), TaskState::Running);
        t.finish(2, true);
        assert_eq!(t.state_of(0), TaskState::Done);
    }

    #[test]
    fn a_dead_workers_task_can_end_failed_and_a_finished_one_stays() {
        let (t, _live) = table(2, OnDeath::Fail);
        assert!(matches!(t.start(0, 0), Some(Took::Task(0))));
        assert!(matches!(t.start(1, 1), Some(Took::Task(1))));
        // Worker 1 finished before it died: its slot is clear, its task Done.
        t.finish(1, true);
        assert!(!t.reap(2).0);
        assert_eq!(t.state_of(0), TaskState::Failed);
        assert_eq!(t.state_of(1), TaskState::Done);
        // A dead worker's slot that names a task past the table, or that
        // it never claimed, changes nothing.
        t.running(0).store(99, Ordering::Relaxed);
        t.running(1).store(2, Ordering::Relaxed);
        assert!(!t.reap(2).0);
        assert_eq!(
            (t.state_of(0), t.state_of(1)),
            (TaskState::Failed, TaskState::Done)
        );
    }

    /// A worker's number taken again by a new connection (as `Pool`'s
    /// claim does: the lease, the dead worker's task taken back, a new
    /// epoch) while a reaper is half-way through taking back the dead
    /// worker's task: whatever the reaper read before leaves the new
    /// worker's claim alone, even a claim of the same task, and a reaper
    /// that reads the slot after sees the lease held.
    #[test]
    fn a_number_taken_again_is_not_reaped_for_its_dead_owner() {
        let (t, _live) = table(2, OnDeath::Requeue);
        assert!(matches!(t.start(1, 0), Some(Took::Task(0))));
        // Worker 1 is dead; a reaper reads its slot.
        let stale = t.running(1).load(Ordering::Acquire);
        let new = SharedRegion::attach(t.region.name()).unwrap();
        assert!(new.hold(1).unwrap());
        assert_eq!(t.take_back(1, Gone::Replaced), Some(TaskState::Pending));
        t.epoch(1).fetch_add(1, Ordering::AcqRel);
        assert!(matches!(t.start(1, 0), Some(Took::Task(0))));
        // The reaper's two exchanges, from what it read, match nothing.
        let (e, _) = slot_parts(stale);
        let requeue = t.state(0).compare_exchange(
            running_word(1, e),
            TaskState::Pending as u32,
            Ordering::SeqCst,
            Ordering::Relaxed,
        );
        assert!(requeue.is_err());
        let clear = t
            .running(1)
            .compare_exchange(stale, 0, Ordering::SeqCst, Ordering::Relaxed);
        assert!(clear.is_err());
        // One that reads the slot now finds the number held again.
        assert_eq!(t.take_back(1, Gone::Dead), None);
        assert_eq!(t.reap(0), (true, false));
        assert_eq!(t.state(0).load(Ordering::Relaxed), running_word(1, 1));
        t.finish(1, true);
        assert_eq!(t.state_of(0), TaskState::Done);
    }

    /// Four tasks, three workers: workers 1 and 2 (alive, their leases
    /// held by the returned regions) run tasks 0 and 1; worker 0 ran
    /// tasks 3 and 2, and its last take scanned the table and found
    /// nothing.
    fn idle_after_an_empty_scan() -> (Table, [SharedRegion; 2]) {
        let t = Table::create(4, 3, &BatchOptions::default()).unwrap();
        let leases = [1, 2].map(|w| {
            let l = SharedRegion::attach(t.region.name()).unwrap();
            assert!(l.hold(w).unwrap());
            l
        });
        assert!(matches!(t.take(1), Took::Task(0)));
        assert!(matches!(t.take(2), Took::Task(1)));
        // Task 2 counted out to a taker that dies before claiming it.
        t.u64_at(NEXT_AT).store(3, Ordering::Relaxed);
        assert!(matches!(t.take(0), Took::Task(3)));
        t.finish(0, true);
        // The first scan after the count-out finds task 2.
        assert!(matches!(t.take(0), Took::Task(2)));
        t.finish(0, true);
        assert!(matches!(t.take(0), Took::Wait));
        assert_eq!(t.scanned.load(Ordering::Relaxed), 0);
        (t, leases)
    }

    /// After an empty scan, an idle worker scans again only once the
    /// count of tasks that came back moved: a Pending word nobody
    /// counted is not looked for while others run...
    #[test]
    fn an_idle_worker_scans_again_only_once_a_task_came_back() {
        let (t, [one, _two]) = idle_after_an_empty_scan();
        t.finish(2, true);
        t.state(1)
            .store(TaskState::Pending as u32, Ordering::SeqCst);
        assert!(matches!(t.take(0), Took::Wait));
        // ... and is taken once counted.
        t.u64_at(REQUEUED_AT).fetch_add(1, Ordering::SeqCst);
        assert!(matches!(t.take(0), Took::Task(1)));
        t.finish(0, true);
        // Worker 1 dies: its task comes back, counted, and is taken.
        drop(one);
        assert!(matches!(t.take(0), Took::Task(0)));
        assert_eq!(t.u64_at(REQUEUED_AT).load(Ordering::Relaxed), 2);
    }

    /// A reaper that died between taking a task back and counting it:
    /// the next reaper of the slot, which still names the task, counts
    /// it, and the task is taken while others still run.
    #[test]
    fn a_task_taken_back_by_a_reaper_that_died_uncounted_is_taken() {
        let (t, [one, _two]) = idle_after_an_empty_scan();
        drop(one);
        t.state(0)
            .store(TaskState::Pending as u32, Ordering::SeqCst);
        // A worker parked meanwhile is woken for it.
        t.u32_at(SLEEPERS_AT).store(1, Ordering::SeqCst);
        let events = t.u32_at(EVENTS_AT).load(Ordering::SeqCst);
        assert!(matches!(t.take(0), Took::Task(0)));
        assert_eq!(t.running(1).load(Ordering::Relaxed), 0);
        assert_ne!(t.u32_at(EVENTS_AT).load(Ordering::SeqCst), events);
    }

    /// Whatever the count says, a worker told there is nothing left
    /// scanned the whole table just before: nothing Pending is left.
    #[test]
    fn nothing_pending_is_left_behind_when_a_worker_is_told_none() {
        let (t, _leases) = idle_after_an_empty_scan();
        t.finish(1, true);
        t.finish(2, true);
        t.state(1)
            .store(TaskState::Pending as u32, Ordering::SeqCst);
        assert!(matches!(t.take(0), Took::Task(1)));
        t.finish(0, true);
        assert!(matches!(t.take(0), Took::None));
    }

    #[test]
    fn a_live_workers_task_is_left_alone() {
        let (t, _live) = table(1, OnDeath::Requeue);
        assert!(matches!(t.start(2, 0), Some(Took::Task(0))));
        // Worker 0 looks: worker 2 is alive and runs a task.
        assert!(t.reap(0).0);
        assert_eq!(t.state_of(0), TaskState::Running);
        assert!(matches!(t.take(0), Took::Wait));
    }
}

#[cfg(test)]
mod more_tests {
    use super::*;

    #[test]
    fn state_files_follow_the_word() {
        let dir = std::env::temp_dir().join(format!("shoal-batch-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let t = Table::create(2, 2, &BatchOptions::default().state_dir(&dir)).unwrap();
        let read = |n: u64| std::fs::read_to_string(dir.join(format!("task-{n}"))).unwrap();
        assert!(matches!(t.start(0, 0), Some(Took::Task(0))));
        assert_eq!(read(0), "running");
        t.finish(0, true);
        assert_eq!(read(0), "done");
        // A late writer (a reaper that stalled) writes what the word says.
        t.record(0);
        assert_eq!(read(0), "done");
        // No temporary file is left behind.
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left.len(), 1, "{left:?}");
        // A resumed table skips it.
        drop(t);
        let again = Table::create(2, 2, &BatchOptions::default().state_dir(&dir)).unwrap();
        assert_eq!(again.state_of(0), TaskState::Done);
        assert_eq!(again.state_of(1), TaskState::Pending);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_dead_workers_task_is_handed_out_at_the_end() {
        // Worker 1 claimed the last task and died: worker 0's end scan
        // takes it back and hands it out.
        let t = Table::create(1, 2, &BatchOptions::default()).unwrap();
        let lease = SharedRegion::attach(t.region.name()).unwrap();
        assert!(lease.hold(1).unwrap());
        assert!(matches!(t.start(1, 0), Some(Took::Task(0))));
        // Everything counted out; worker 1 dies.
        t.u64_at(NEXT_AT).store(1, Ordering::Relaxed);
        drop(lease);
        assert!(matches!(t.take(0), Took::Task(0)));
    }
}

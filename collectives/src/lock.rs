//! A mutex over a whole group, granted in request order (FIFO).
//!
//! Each rank makes its own [`Lock`] handle with the same name
//! ([`Group::lock`](crate::Group::lock)). A group on one host queues the
//! ranks that ask in its shared memory (a ticket lock, waiting as the
//! other collectives wait); a group across hosts queues them at the
//! rendezvous. Either grants the lock to one at a time, in the order the
//! requests came. A holder whose process dies (its lease frees, or its
//! connection closes) passes the lock on, and the next holder is told: [`Lock::lock`] fails with
//! [`Error::OwnerDied`] (the lock is given back, still marked), while
//! [`Lock::lock_recovering`] takes it anyway, to repair what it protects
//! and [`LockGuard::mark_consistent`] (as a robust mutex's owner-died).
//! A live holder that keeps the lock past the group's notice time is
//! named in the waiters' logs.
//!
//! In a group of one (no rendezvous), locks of the same name in this
//! process exclude each other.

use crate::error::{Error, Result};
use crate::rendezvous::wire::{Reply, Request};
use crate::rendezvous::Client;
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A process-local lock (a group of one).
#[derive(Default)]
struct Local {
    state: Mutex<LocalState>,
    changed: Condvar,
}

#[derive(Default)]
struct LocalState {
    held: bool,
    /// Tickets of the waiters, in arrival order (FIFO among this
    /// process's threads).
    queue: std::collections::VecDeque<u64>,
    /// Tickets given and grants made.
    tickets: u64,
    turns: u64,
}

/// The process's local locks, by name.
fn locals(name: &str) -> Arc<Local> {
    static ALL: OnceLock<Mutex<HashMap<String, Arc<Local>>>> = OnceLock::new();
    let all = ALL.get_or_init(Mutex::default);
    let mut m = all.lock().unwrap_or_else(|p| p.into_inner());
    m.entry(name.to_string()).or_default().clone()
}

enum Via {
    /// Through the rendezvous (a connection of this lock's own).
    Rendezvous(Mutex<Client>),
    /// In this process.
    Local(Arc<Local>),
    /// Through the host's shared memory (every rank of the group on this
    /// host): first among this process's threads (a process-local lock
    /// of the same name), then among the host's ranks.
    Shm {
        node: Arc<crate::node::Node>,
        slot: usize,
        /// Each place's rank and pid.
        who: Vec<(u32, u32)>,
        local: Arc<Local>,
    },
}

/// A rank's handle on a group lock (see the [module doc](self)).
///
/// ```
/// use shoal_collectives::Group;
/// let g = Group::single();
/// let lock = g.lock("counter")?;
/// {
///     let guard = lock.lock()?;
///     assert_eq!(guard.owner_died(), None);
/// } // given back here
/// assert!(lock.try_lock()?.is_some());
/// # Ok::<(), shoal_collectives::Error>(())
/// ```
pub struct Lock {
    name: String,
    key: Vec<u8>,
    rank: u32,
    notice: Duration,
    via: Via,
}

impl std::fmt::Debug for Lock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lock")
            .field("name", &self.name)
            .field("rank", &self.rank)
            .finish_non_exhaustive()
    }
}

/// The lock, held until dropped.
#[derive(Debug)]
pub struct LockGuard<'a> {
    lock: &'a Lock,
    died: Option<(u32, u32)>,
    /// The dead holder's place on the host (a host lock's grant only).
    died_place: Option<u32>,
    /// Whether this guard holds the host's lock (set once granted: a
    /// guard dropped before, by a panic while it waited, gives back the
    /// process-local part only).
    host: bool,
    consistent: bool,
    ticket: u64,
    turn: u64,
}

impl LockGuard<'_> {
    /// The rank and pid of a holder that died holding the lock before
    /// this grant, if one did and nobody marked the state repaired since.
    pub fn owner_died(&self) -> Option<(u32, u32)> {
        self.died
    }

    /// Says the state the lock protects is consistent again (after a
    /// holder died): later holders are not told of the death.
    pub fn mark_consistent(&mut self) {
        self.consistent = true;
    }

    /// This grant's request's place in arrival order at the lock.
    pub fn ticket(&self) -> u64 {
        self.ticket
    }

    /// This grant's place in grant order: equal to [`ticket`](Self::ticket)
    /// when grants follow requests (FIFO).
    pub fn turn(&self) -> u64 {
        self.turn
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        let died = if self.consistent {
            None
        } else {
            // Not repaired: the next holder is told as this one was (or of
            // this one, after a clean grant).
            Some(self.died.unwrap_or((self.lock.rank, std::process::id())))
        };
        if let Err(e) = self
            .lock
            .unlock(self.host, self.consistent, died, self.died_place)
        {
            tracing::warn!(lock = %self.lock.name, error = %e, "shoal lock: giving the lock back failed (it passes on when this process's connection closes)");
        }
    }
}

impl Lock {
    /// A handle on lock `name` for `rank`: through a connection of its
    /// own to the rendezvous at `at`, or in this process.
    pub(crate) fn new(
        name: &str,
        group: &str,
        rank: u32,
        notice: Duration,
        via: Option<Client>,
    ) -> Lock {
        let key = format!("{group}/lock/{name}").into_bytes();
        let via = match via {
            Some(c) => Via::Rendezvous(Mutex::new(c)),
            None => Via::Local(locals(&format!("{group}/{name}"))),
        };
        Lock {
            name: name.to_string(),
            key,
            rank,
            notice,
            via,
        }
    }

    /// A handle on lock `slot` of the host's shared state `node`.
    pub(crate) fn shm(
        name: &str,
        group: &str,
        rank: u32,
        notice: Duration,
        node: Arc<crate::node::Node>,
        slot: usize,
        who: Vec<(u32, u32)>,
    ) -> Lock {
        Lock {
            name: name.to_string(),
            key: format!("{group}/lock/{name}").into_bytes(),
            rank,
            notice,
            via: Via::Shm {
                node,
                slot,
                who,
                local: locals(&format!("shm:{group}/{name}")),
            },
        }
    }

    /// Waits for the lock, as long as it takes. [`Error::OwnerDied`] if a
    /// holder died holding it and nobody repaired it since (the lock is
    /// given back, still marked: see [`lock_recovering`](Self::lock_recovering)).
    pub fn lock(&self) -> Result<LockGuard<'_>> {
        self.clean(self.acquire(None)?)
    }

    /// The lock if nobody holds it or waits for it now.
    pub fn try_lock(&self) -> Result<Option<LockGuard<'_>>> {
        self.acquire(Some(Duration::ZERO))?
            .map(|g| self.clean(Some(g)))
            .transpose()
    }

    /// Waits for the lock up to `timeout` (`None`: it was not granted
    /// in time, and this rank's place in the queue is given up).
    pub fn lock_timeout(&self, timeout: Duration) -> Result<Option<LockGuard<'_>>> {
        // A zero wait is a try; a wait this long is forever.
        let timeout = timeout.max(Duration::from_millis(1));
        self.acquire(Some(timeout))?
            .map(|g| self.clean(Some(g)))
            .transpose()
    }

    /// Waits for the lock, as long as it takes, also when its holder
    /// died holding it: then [`LockGuard::owner_died`] names it, and the
    /// state stays marked inconsistent until
    /// [`LockGuard::mark_consistent`].
    pub fn lock_recovering(&self) -> Result<LockGuard<'_>> {
        self.acquire(None)?.ok_or_else(|| Error::Timeout {
            what: format!("lock {}", self.name),
            after: Duration::MAX,
        })
    }

    /// A grant as [`lock`](Self::lock) returns it.
    fn clean<'a>(&'a self, g: Option<LockGuard<'a>>) -> Result<LockGuard<'a>> {
        let Some(g) = g else {
            return Err(Error::Timeout {
                what: format!("lock {}", self.name),
                after: Duration::MAX,
            });
        };
        match g.died {
            Some((rank, pid)) => {
                // Given back unrepaired: the next holder is told too.
                drop(g);
                Err(Error::OwnerDied { rank, pid })
            }
            None => Ok(g),
        }
    }

    /// The lock, waiting up to `wait` (`None`: forever); `Ok(None)`: not
    /// granted in time.
    fn acquire(&self, wait: Option<Duration>) -> Result<Option<LockGuard<'_>>> {
        match &self.via {
            Via::Local(l) => Ok(self.acquire_local(l, wait)),
            Via::Rendezvous(c) => self.acquire_remote(c, wait),
            Via::Shm {
                node,
                slot,
                who,
                local,
            } => {
                let start = wait.map(|_| Instant::now());
                let Some(mut g) = self.acquire_local(local, wait) else {
                    return Ok(None);
                };
                let left = wait.zip(start).map(|(w, s)| w.saturating_sub(s.elapsed()));
                let who = |p: u32| who.get(p as usize).copied().unwrap_or((u32::MAX, 0));
                // Until granted, `g` holds the process-local part only: a
                // panic while waiting (or no grant) gives back that part
                // and leaves the host's lock alone.
                match node.lock(*slot, left, self.notice, &who) {
                    Some(grant) => {
                        g.host = true;
                        g.died = grant.died;
                        g.died_place = grant.died_place;
                        g.consistent = grant.died.is_none();
                        g.ticket = grant.ticket;
                        g.turn = grant.ticket;
                        Ok(Some(g))
                    }
                    None => {
                        drop(g);
                        Ok(None)
                    }
                }
            }
        }
    }

    fn acquire_local(&self, l: &Local, wait: Option<Duration>) -> Option<LockGuard<'_>> {
        let mut st = l.state.lock().unwrap_or_else(|p| p.into_inner());
        if wait == Some(Duration::ZERO) && (st.held || !st.queue.is_empty()) {
            return None;
        }
        let ticket = st.tickets;
        st.tickets += 1;
        st.queue.push_back(ticket);
        let end = wait.and_then(|w| Instant::now().checked_add(w));
        while st.held || st.queue.front() != Some(&ticket) {
            let now = Instant::now();
            if end.is_some_and(|e| now >= e) {
                st.queue.retain(|t| *t != ticket);
                if !st.queue.is_empty() {
                    l.changed.notify_all();
                }
                return None;
            }
            let slice = end.map_or(Duration::from_secs(1), |e| e - now);
            st = l
                .changed
                .wait_timeout(st, slice)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        st.queue.pop_front();
        st.held = true;
        let turn = st.turns;
        st.turns += 1;
        Some(LockGuard {
            lock: self,
            died: None,
            died_place: None,
            host: false,
            consistent: true,
            ticket,
            turn,
        })
    }

    fn acquire_remote<'a>(
        &'a self,
        c: &Mutex<Client>,
        wait: Option<Duration>,
    ) -> Result<Option<LockGuard<'a>>> {
        let wait_ms = match wait {
            None => u32::MAX,
            Some(w) => w.as_millis().min(u128::from(u32::MAX - 1)) as u32,
        };
        let req = Request::Lock {
            key: self.key.clone(),
            rank: self.rank,
            pid: std::process::id(),
            wait_ms,
            notice_ms: self.notice.as_millis().min(u128::from(u32::MAX)) as u32,
        };
        let mut c = c.lock().unwrap_or_else(|p| p.into_inner());
        let each = wait.unwrap_or(Duration::from_secs(u64::from(u32::MAX) / 1000));
        let mut reply = c.call(&req, each)?;
        loop {
            match reply {
                Reply::Held { rank, pid, held_ms } => {
                    tracing::warn!(
                        lock = %self.name,
                        holder_rank = rank,
                        holder_pid = pid,
                        held_for = ?Duration::from_millis(held_ms),
                        "shoal lock: rank {rank} (pid {pid}) has held the lock for {:?}; rank {} waits",
                        Duration::from_millis(held_ms),
                        self.rank
                    );
                    reply = c.read(each)?;
                }
                Reply::Granted { died, ticket, turn } => {
                    return Ok(Some(LockGuard {
                        lock: self,
                        died,
                        died_place: None,
                        host: false,
                        consistent: died.is_none(),
                        ticket,
                        turn,
                    }))
                }
                Reply::NotGranted => return Ok(None),
                Reply::Refused(why) => return Err(Error::Refused(why)),
                other => {
                    return Err(Error::Malformed {
                        what: "a lock's answer",
                        why: format!("{other:?}"),
                    })
                }
            }
        }
    }

    fn release_local(l: &Local) {
        let mut st = l.state.lock().unwrap_or_else(|p| p.into_inner());
        st.held = false;
        // Only threads with a ticket in the queue wait (they put it there
        // under this mutex): a notify is a system call, made only for them.
        if !st.queue.is_empty() {
            l.changed.notify_all();
        }
    }

    /// Gives the lock back: `died` names the dead holder (or this one) to
    /// the next holder when not `consistent`; `died_place` is that
    /// holder's place on the host, if it was told by the host's lock
    /// (`None`: this one's). `host`: the host's lock is held (not when a
    /// host lock's guard is dropped before its grant).
    fn unlock(
        &self,
        host: bool,
        consistent: bool,
        died: Option<(u32, u32)>,
        died_place: Option<u32>,
    ) -> Result<()> {
        match &self.via {
            Via::Local(l) => {
                Self::release_local(l);
                Ok(())
            }
            Via::Shm {
                node, slot, local, ..
            } => {
                if host {
                    let place = died.map(|_| died_place.unwrap_or_else(|| node.place()));
                    node.unlock(*slot, place);
                }
                Self::release_local(local);
                Ok(())
            }
            Via::Rendezvous(c) => {
                let mut c = c.lock().unwrap_or_else(|p| p.into_inner());
                match c.call(
                    &Request::Unlock {
                        key: self.key.clone(),
                        consistent,
                    },
                    Duration::from_secs(10),
                )? {
                    Reply::Ok => Ok(()),
                    Reply::Refused(why) => Err(Error::Refused(why)),
                    other => Err(Error::Malformed {
                        what: "an unlock's answer",
                        why: format!("{other:?}"),
                    }),
                }
            }
        }
    }
}

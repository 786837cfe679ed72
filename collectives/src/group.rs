//! A group of ranks: who is in it, which share a host, and the
//! collectives they run together.
//!
//! Every rank of a group calls its collectives in the same order (as in
//! MPI); each call is matched with the other ranks' by its place in that
//! order. A group is used from one thread at a time.
//!
//! Bootstrap: rank 0 hosts the rendezvous ([`rendezvous`](crate::rendezvous));
//! every rank connects and says which host it is on (`SHOAL_HOST`, else
//! the host name: ranks in different network namespaces of one machine
//! set `SHOAL_HOST` apart) and its pid. A rank that never shows up gives
//! the others [`Error::RanksMissing`] naming it. Where the job sets a
//! secret (`SHOAL_SECRET`, or [`GroupOptions::secret`]; `cargo xtask
//! run` makes one per run), rank 0 lets in only connections that show
//! it (see [`Secret`]). Rank 0 keeps the
//! rendezvous until the other ranks left it (dropped their groups, or
//! exited), up to the group's timeout.

use crate::bundle;
use crate::error::{Error, Result};
use crate::launcher::Launch;
use crate::node::{BarrierError, Node, Stop, TakeError};
use crate::rendezvous::wire::{Reply, Request, Secret};
use crate::rendezvous::{Client, Limits, Server};
use crate::value::{archive, Value};
use rkyv::api::high::HighValidator;
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How a group is made and how long its collectives wait.
///
/// ```
/// use shoal_collectives::GroupOptions;
/// let o = GroupOptions::default().timeout(std::time::Duration::from_secs(10));
/// assert!(o.rendezvous.is_none());
/// ```
#[derive(Debug, Clone)]
pub struct GroupOptions {
    /// Where rank 0's rendezvous listens (`HOST:PORT`), over what the
    /// launcher's environment says. Default `None`.
    pub rendezvous: Option<String>,
    /// How long the bootstrap and each collective wait for every rank
    /// before [`Error::RanksMissing`]. Default 120 s.
    pub timeout: Duration,
    /// Largest value one rank gives a collective (a gather's answer
    /// holds up to one per rank; the rendezvous refuses frames past its
    /// own limit). Default 1 GiB.
    pub max_value: usize,
    /// How long a lock's holder may keep it while others wait before the
    /// waiters' logs name it. Default 10 s.
    pub lock_notice: Duration,
    /// Bytes of the buffer a host's ranks pass broadcasts through (a
    /// larger value goes through it in chunks). Default 4 MiB.
    pub node_buffer: usize,
    /// The name of this rank's host, over the `SHOAL_HOST` environment
    /// variable and the host name: ranks that say the same name share
    /// memory (they must share a kernel), the others meet through the
    /// rendezvous. Default `None`.
    pub host: Option<String>,
    /// What every rank shows rank 0's rendezvous to be let in (see
    /// [`Secret`]), over the `SHOAL_SECRET` environment variable. Every
    /// rank must have the same; `None` with the variable unset or
    /// empty: no secret. Default `None`.
    pub secret: Option<Secret>,
}

impl Default for GroupOptions {
    fn default() -> Self {
        GroupOptions {
            rendezvous: None,
            timeout: Duration::from_secs(120),
            max_value: 1 << 30,
            lock_notice: Duration::from_secs(10),
            node_buffer: 4 << 20,
            host: None,
            secret: None,
        }
    }
}

impl GroupOptions {
    /// Sets [`rendezvous`](Self::rendezvous).
    pub fn rendezvous(mut self, at: &str) -> Self {
        self.rendezvous = Some(at.to_string());
        self
    }
    /// Sets [`lock_notice`](Self::lock_notice).
    pub fn lock_notice(mut self, t: Duration) -> Self {
        self.lock_notice = t;
        self
    }
    /// Sets [`timeout`](Self::timeout).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }
    /// Sets [`host`](Self::host).
    pub fn host(mut self, name: &str) -> Self {
        self.host = Some(name.to_string());
        self
    }
    /// Sets [`secret`](Self::secret) (empty: none).
    pub fn secret(mut self, secret: &str) -> Self {
        self.secret = Some(Secret::new(secret.as_bytes().to_vec()));
        self
    }
    /// The secret this rank shows: [`secret`](Self::secret), else
    /// `SHOAL_SECRET`'s bytes, else none.
    fn secret_or_env(&self) -> Secret {
        self.secret.clone().unwrap_or_else(|| {
            Secret::new(
                std::env::var_os("SHOAL_SECRET")
                    .map(std::os::unix::ffi::OsStringExt::into_vec)
                    .unwrap_or_default(),
            )
        })
    }
}

/// A rank of a group, as the others know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// Its rank in the whole launch.
    pub world_rank: u32,
    /// Its host's identity (see `shoal_channel::gather::host_id`).
    pub host: u64,
    /// Its host's index among the group's hosts (in order of their
    /// lowest rank).
    pub node: u32,
    /// Its pid.
    pub pid: u32,
}

/// The connection to the rendezvous, shared by a group and its
/// sub-groups (and, on rank 0, the rendezvous itself).
struct Link {
    client: Mutex<Client>,
    /// Where the rendezvous is (for more connections), and as whom.
    address: String,
    world_rank: u32,
    world_size: u32,
    /// What it showed.
    secret: Secret,
    max_frame: usize,
    /// Rank 0's.
    server: Option<Server>,
    /// The file rank 0 left its address in, removed with it.
    file: Option<PathBuf>,
    linger: Duration,
}

impl Drop for Link {
    fn drop(&mut self) {
        if let Some(s) = &self.server {
            if !s.wait_for_others_to_leave(self.linger) {
                tracing::warn!("shoal group: rank 0 leaves while other ranks are still connected");
            }
        }
        if let Some(f) = &self.file {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// A group of ranks (see the [module doc](self)).
///
/// ```
/// use shoal_collectives::Group;
/// let g = Group::single();
/// assert_eq!((g.rank(), g.size(), g.local_size()), (0, 1, 1));
/// let all = g.all_gather(&7u32)?;
/// assert_eq!(all.len(), 1);
/// # Ok::<(), shoal_collectives::Error>(())
/// ```
pub struct Group {
    rank: u32,
    members: Vec<Member>,
    /// Names this group's collectives at the rendezvous.
    name: String,
    /// Collectives called so far (each one's key).
    calls: AtomicU64,
    link: Option<Arc<Link>>,
    /// What this group's ranks on this host share (none when this rank
    /// is alone on its host).
    node: Option<Arc<Node>>,
    /// The node's broadcast generation this rank saw last.
    seen: AtomicU32,
    /// Why an earlier collective failed on this rank, if one did: the
    /// group cannot go on (its ranks are out of step), and every later
    /// collective says so at once.
    broken: Mutex<Option<String>>,
    /// Whether `broken` holds a reason (read without the mutex on every
    /// collective).
    is_broken: AtomicBool,
    opts: GroupOptions,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("name", &self.name)
            .field("rank", &self.rank)
            .field("size", &self.size())
            .finish_non_exhaustive()
    }
}

/// This process as a member.
fn me(world_rank: u32) -> Member {
    Member {
        world_rank,
        host: shoal_channel::gather::host_id(),
        node: 0,
        pid: std::process::id(),
    }
}

impl Group {
    /// The group the launcher's environment describes (a group of one
    /// without a launcher), with default options.
    pub fn from_env() -> Result<Group> {
        Group::from_env_with(&GroupOptions::default())
    }

    /// [`from_env`](Self::from_env) with `opts`.
    pub fn from_env_with(opts: &GroupOptions) -> Result<Group> {
        Group::bootstrap(&Launch::from_env()?, opts)
    }

    /// A group of one: this process, no rendezvous.
    pub fn single() -> Group {
        Group {
            rank: 0,
            members: vec![me(0)],
            name: "w".into(),
            calls: AtomicU64::new(0),
            link: None,
            node: None,
            seen: AtomicU32::new(0),
            broken: Mutex::new(None),
            is_broken: AtomicBool::new(false),
            opts: GroupOptions::default(),
        }
    }

    /// The group `launch` describes: connects to the rendezvous (rank 0
    /// hosts it) and learns every rank's host.
    pub fn bootstrap(launch: &Launch, opts: &GroupOptions) -> Result<Group> {
        if launch.size == 1 {
            let mut g = Group::single();
            g.opts = opts.clone();
            return Ok(g);
        }
        let link = connect(launch, opts)?;
        let mut g = Group {
            rank: launch.rank,
            members: vec![me(launch.rank); launch.size as usize],
            name: "w".into(),
            calls: AtomicU64::new(0),
            link: Some(Arc::new(link)),
            node: None,
            seen: AtomicU32::new(0),
            broken: Mutex::new(None),
            is_broken: AtomicBool::new(false),
            opts: opts.clone(),
        };
        let mut said = Vec::with_capacity(12);
        let host = opts.host.as_deref().map_or_else(
            shoal_channel::gather::host_id,
            shoal_channel::gather::host_id_of,
        );
        said.extend_from_slice(&host.to_le_bytes());
        said.extend_from_slice(&std::process::id().to_le_bytes());
        let all = g.collect("hello", &said, true)?;
        let mut members = Vec::with_capacity(all.len());
        for (r, b) in all.iter().enumerate() {
            let (Some(host), Some(pid)) = (
                b.get(..8)
                    .and_then(|h| h.try_into().ok())
                    .map(u64::from_le_bytes),
                b.get(8..12)
                    .and_then(|p| p.try_into().ok())
                    .map(u32::from_le_bytes),
            ) else {
                return Err(Error::Malformed {
                    what: "a rank's hello",
                    why: format!("rank {r} said {} bytes", b.len()),
                });
            };
            members.push(Member {
                world_rank: r as u32,
                host,
                node: 0,
                pid,
            });
        }
        number_nodes(&mut members);
        g.members = members;
        g.share_host()?;
        Ok(g)
    }

    /// Sets up what this group's ranks on this host share: the host's
    /// first rank creates it, the others attach (its name passed through
    /// the rendezvous). Collective.
    fn share_host(&mut self) -> Result<()> {
        let here = self.ranks_on(self.node());
        let local = here.len() as u32;
        let place = self.local_rank();
        // The host's first rank says the name, or why it has none; a rank
        // that cannot attach says so too: every rank of the group then
        // fails at once (a full /dev/shm on one host, say), none waits.
        let made = if place == 0 && local > 1 {
            Some(Node::create(local, self.opts.node_buffer))
        } else {
            None
        };
        let name = match &made {
            Some(Ok(n)) => n.name().into_bytes(),
            Some(Err(e)) => crate::agree::refusal(e, self.max_value()),
            None => Vec::new(),
        };
        let all = self.collect("share-host", &name, true)?;
        let node = (|| -> Result<Option<Arc<Node>>> {
            Ok(match made {
                Some(n) => Some(Arc::new(n?)),
                None if local > 1 => {
                    let theirs = all.get(here[0] as usize).ok_or_else(|| Error::Malformed {
                        what: "the host's shared state's name",
                        why: "missing".into(),
                    })?;
                    if let Some(why) = crate::agree::refused(theirs) {
                        return Err(Error::Broken(format!(
                            "rank {} could not make its host's shared state: {why}",
                            here[0]
                        )));
                    }
                    let name = std::str::from_utf8(theirs).map_err(|_| Error::Malformed {
                        what: "the host's shared state's name",
                        why: "not text".into(),
                    })?;
                    Some(Arc::new(Node::attach(
                        name,
                        local,
                        place,
                        self.opts.node_buffer,
                    )?))
                }
                None => None,
            })
        })();
        self.node = self.agree("share-host-agreed", node)?;
        // Every rank starts from the region's first generation, not the
        // one it finds when it attaches: the host's first rank may have
        // put a broadcast already (the first needs no reader done).
        self.seen.store(0, Ordering::Relaxed);
        Ok(())
    }

    /// The group rank of place `place` on this host.
    fn rank_of_place(&self, place: u32) -> u32 {
        self.ranks_on(self.node())
            .get(place as usize)
            .copied()
            .unwrap_or(u32::MAX)
    }

    /// The error for a local wait that ended (`what` was waited for).
    fn stopped(&self, what: &str, stop: Stop) -> Error {
        let e = match stop {
            Stop::Timeout(places) if places.is_empty() => Error::Timeout {
                what: format!(
                    "{what}: every rank of this host came; the other hosts' part did not end in time"
                ),
                after: self.opts.timeout,
            },
            Stop::Timeout(places) => Error::RanksMissing {
                what: what.to_string(),
                missing: places.into_iter().map(|p| self.rank_of_place(p)).collect(),
                after: self.opts.timeout,
            },
            Stop::Dead(places) => Error::RanksGone {
                what: what.to_string(),
                ranks: places.into_iter().map(|p| self.rank_of_place(p)).collect(),
            },
            Stop::Failed => Error::Broken(format!(
                "{what}: it failed on another rank of this host (see its error)"
            )),
        };
        self.mark_broken(&e);
        e
    }

    /// Marks the group broken by `e` (see [`Group::broken`]), and the
    /// host's shared state with it: the host's other ranks, which may
    /// not see the cause (a value refused, a step between hosts that
    /// failed, a gather they gave their value to and left), fail their
    /// next wait at once instead of waiting out the timeout.
    pub(crate) fn break_with(&self, e: &Error) {
        if self.mark_broken(e) {
            if let Some(n) = &self.node {
                n.set_broken();
            }
        }
    }

    /// Marks the group broken by `e` on this rank only (whether it was
    /// not yet): for a wait on the host that ended, which the host's
    /// other ranks see end themselves (and name who they waited for).
    fn mark_broken(&self, e: &Error) -> bool {
        let mut b = self.broken.lock().unwrap_or_else(|p| p.into_inner());
        if b.is_some() {
            return false;
        }
        *b = Some(e.to_string());
        self.is_broken.store(true, Ordering::Release);
        true
    }

    /// The next collective's number, unless an earlier collective failed
    /// on this rank (then the group cannot go on: its ranks are out of
    /// step).
    fn begin(&self) -> Result<u64> {
        if !self.is_broken.load(Ordering::Acquire) {
            return Ok(self.calls.fetch_add(1, Ordering::Relaxed));
        }
        if let Some(why) = self
            .broken
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            return Err(Error::Broken(format!(
                "an earlier collective failed on this rank ({why}): the group cannot go on"
            )));
        }
        Ok(self.calls.fetch_add(1, Ordering::Relaxed))
    }

    /// This rank, in this group.
    pub fn rank(&self) -> u32 {
        self.rank
    }

    /// Ranks in this group.
    pub fn size(&self) -> u32 {
        self.members.len() as u32
    }

    /// Every rank's member record, by rank.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// This rank's host index (see [`Member::node`]).
    pub fn node(&self) -> u32 {
        self.members[self.rank as usize].node
    }

    /// How many hosts the group spans.
    pub fn nodes(&self) -> u32 {
        self.members.iter().map(|m| m.node + 1).max().unwrap_or(1)
    }

    /// The ranks on host `node`, in order.
    pub fn ranks_on(&self, node: u32) -> Vec<u32> {
        (0..self.size())
            .filter(|r| self.members[*r as usize].node == node)
            .collect()
    }

    /// Whether ranks `a` and `b` share a host.
    pub fn same_host(&self, a: u32, b: u32) -> bool {
        match (self.members.get(a as usize), self.members.get(b as usize)) {
            (Some(x), Some(y)) => x.host == y.host,
            _ => false,
        }
    }

    /// This rank's index among the ranks of its host.
    pub fn local_rank(&self) -> u32 {
        let me = self.node();
        (0..self.rank)
            .filter(|r| self.members[*r as usize].node == me)
            .count() as u32
    }

    /// Ranks on this rank's host.
    pub fn local_size(&self) -> u32 {
        self.ranks_on(self.node()).len() as u32
    }

    /// Splits the group as `MPI_Comm_split` does: ranks giving the same
    /// `color` form a sub-group, ordered by `key` (then by rank here).
    /// Collective: every rank calls it.
    ///
    /// ```
    /// use shoal_collectives::Group;
    /// let g = Group::single();
    /// let sub = g.split(3, 0)?;
    /// assert_eq!((sub.rank(), sub.size()), (0, 1));
    /// # Ok::<(), shoal_collectives::Error>(())
    /// ```
    pub fn split(&self, color: u32, key: u32) -> Result<Group> {
        let call = self.calls.load(Ordering::Relaxed);
        let mut said = Vec::with_capacity(8);
        said.extend_from_slice(&color.to_le_bytes());
        said.extend_from_slice(&key.to_le_bytes());
        let all = self.collect("split", &said, true)?;
        let mut chosen: Vec<(u32, u32)> = Vec::new();
        for (r, b) in all.iter().enumerate() {
            let (Some(c), Some(k)) = (
                b.get(..4)
                    .and_then(|x| x.try_into().ok())
                    .map(u32::from_le_bytes),
                b.get(4..8)
                    .and_then(|x| x.try_into().ok())
                    .map(u32::from_le_bytes),
            ) else {
                return Err(Error::Malformed {
                    what: "a rank's split",
                    why: format!("rank {r} said {} bytes", b.len()),
                });
            };
            if c == color {
                chosen.push((k, r as u32));
            }
        }
        chosen.sort_unstable();
        let mut members: Vec<Member> = chosen
            .iter()
            .map(|(_, r)| self.members[*r as usize])
            .collect();
        number_nodes(&mut members);
        let rank = chosen
            .iter()
            .position(|(_, r)| *r == self.rank)
            .unwrap_or_default() as u32;
        let mut g = Group {
            rank,
            members,
            name: format!("{}.{call}c{color}", self.name),
            calls: AtomicU64::new(0),
            link: self.link.clone(),
            node: None,
            seen: AtomicU32::new(0),
            broken: Mutex::new(None),
            is_broken: AtomicBool::new(false),
            opts: self.opts.clone(),
        };
        if g.link.is_some() {
            g.share_host()?;
        }
        Ok(g)
    }

    /// This rank's handle on the group lock `name` (see
    /// [`Lock`](crate::lock::Lock)); not collective: each rank that uses
    /// the lock makes its own, with the same name. Opens a connection of
    /// its own to the rendezvous.
    pub fn lock(&self, name: &str) -> Result<crate::lock::Lock> {
        let full = format!("{}/lock/{name}", self.name);
        if full.len() > crate::rendezvous::wire::MAX_KEY {
            return Err(Error::BadArguments(format!(
                "a lock name of {} bytes (at most {} with the group's name)",
                name.len(),
                crate::rendezvous::wire::MAX_KEY
            )));
        }
        // One host: through its shared memory, while its table has room.
        if let (Some(n), 1) = (&self.node, self.nodes()) {
            let hash = full.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
            if let Some(slot) = n.lock_slot(hash) {
                let here = self.ranks_on(self.node());
                let who: Vec<(u32, u32)> = here
                    .iter()
                    .map(|r| (*r, self.members[*r as usize].pid))
                    .collect();
                return Ok(crate::lock::Lock::shm(
                    name,
                    &self.name,
                    self.rank,
                    self.opts.lock_notice,
                    n.clone(),
                    slot,
                    who,
                ));
            }
        }
        let via = match &self.link {
            Some(l) => Some(Client::connect(
                &l.address,
                l.world_rank,
                l.world_size,
                &l.secret,
                self.opts.timeout,
                l.max_frame,
            )?),
            None => None,
        };
        Ok(crate::lock::Lock::new(
            name,
            &self.name,
            self.rank,
            self.opts.lock_notice,
            via,
        ))
    }

    /// Waits until every rank of the group called it: the ranks of a
    /// host meet in shared memory, and the last of them meets the other
    /// hosts' at the rendezvous (one message per host).
    pub fn barrier(&self) -> Result<()> {
        let call = self.begin()?;
        if self.link.is_none() {
            return Ok(());
        }
        let nodes = self.nodes();
        let across = || {
            if nodes > 1 {
                self.meet(call, "barrier", self.node(), nodes, &[], false, 0)
                    .map(drop)
            } else {
                Ok(())
            }
        };
        let Some(n) = &self.node else {
            return across();
        };
        n.barrier(self.local_wait(), across).map_err(|e| match e {
            BarrierError::Local(stop) => self.stopped("barrier", stop),
            BarrierError::Across(e) => e,
        })
    }

    /// Waits until every rank of this host called it (the host's part of
    /// a barrier only).
    pub(crate) fn host_barrier(&self) -> Result<()> {
        let Some(n) = &self.node else {
            return Ok(());
        };
        n.barrier(self.opts.timeout, || Ok(()))
            .map_err(|e| match e {
                BarrierError::Local(stop) => self.stopped("host barrier", stop),
                BarrierError::Across(e) => e,
            })
    }

    /// Rank `root`'s `value`, on every rank (`value` is read on `root`
    /// only; others pass `None`). Hosts other than the root's get it in
    /// one message each, through the rendezvous; the ranks of a host get
    /// it through their shared memory, from the root or their host's
    /// first rank.
    pub fn broadcast<T>(&self, root: u32, value: Option<&T>) -> Result<Value<T>>
    where
        T: shoal_transport::Archivable + rkyv::Archive,
        T::Archived: for<'b> CheckBytes<HighValidator<'b, rancor::Error>>,
    {
        self.check_root(root)?;
        let call = self.begin()?;
        let mine = if self.rank == root {
            // The other ranks wait for this value: without it, the group
            // is out of step.
            let v = value
                .ok_or_else(|| {
                    Error::BadArguments(format!("rank {root} broadcasts, and was given no value"))
                })
                .and_then(archive)
                .inspect_err(|e| self.break_with(e))?;
            Some(v)
        } else {
            None
        };
        if self.link.is_none() {
            return Value::from_aligned(mine.unwrap_or_default());
        }
        let root_node = self.members[root as usize].node;
        let place = self.local_rank();
        // Who has the value on this host: the root on its own, the first
        // rank elsewhere (from the rendezvous).
        let putter = if self.node() == root_node {
            self.ranks_on(root_node)
                .iter()
                .position(|r| *r == root)
                .unwrap_or_default() as u32
        } else {
            0
        };
        let mut got = mine;
        match self.to_hosts(call, "broadcast", root, got.as_deref()) {
            Ok(Some(v)) => {
                let mut a = rkyv::util::AlignedVec::with_capacity(v.len());
                a.extend_from_slice(&v);
                got = Some(a);
            }
            Ok(None) => {}
            Err(e) => {
                // The host's other ranks wait for this one (it puts the
                // value on its host): tell them.
                if let Some(n) = &self.node {
                    if let Ok(g) = n.put(Err(()), self.opts.timeout) {
                        self.seen.store(g, Ordering::Relaxed);
                    }
                }
                return Err(e);
            }
        }
        let Some(n) = &self.node else {
            return Value::from_aligned(got.unwrap_or_default());
        };
        if place == putter {
            let bytes = got.unwrap_or_default();
            let g = n
                .put(Ok(&bytes), self.opts.timeout)
                .map_err(|s| self.stopped("broadcast", s))?;
            self.seen.store(g, Ordering::Relaxed);
            return Value::from_aligned(bytes);
        }
        self.take_from(putter, "broadcast", self.opts.max_value, self.local_wait())
            .and_then(Value::from_aligned)
    }

    /// Every rank's `value`, in rank order, on `root` (`None` elsewhere).
    ///
    /// Hierarchical: the ranks of a host pass their values to each other
    /// through their shared memory; then one rank per host (the root on
    /// its own host, the first rank elsewhere) sends its host's values to
    /// the rendezvous in one message, and the root gets one message per
    /// host back.
    pub fn gather<T>(&self, root: u32, value: &T) -> Result<Option<Vec<Value<T>>>>
    where
        T: shoal_transport::Archivable + rkyv::Archive,
        T::Archived: for<'b> CheckBytes<HighValidator<'b, rancor::Error>>,
    {
        self.check_root(root)?;
        let bytes = archive(value)?;
        let call = self.begin()?;
        if self.link.is_none() {
            return Ok(Some(vec![Value::from_aligned(bytes)?]));
        }
        let nodes = self.nodes();
        let root_node = self.members[root as usize].node;
        let speaks = nodes > 1
            && if self.node() == root_node {
                self.rank == root
            } else {
                self.local_rank() == 0
            };
        let want = self.rank == root;
        let here = self.host_values("gather", &bytes).inspect_err(|_| {
            if speaks {
                self.tell_hosts_it_failed(call, "gather");
            }
        })?;
        if nodes == 1 {
            if self.rank != root {
                return Ok(None);
            }
            return here
                .into_iter()
                .map(Value::from_aligned)
                .collect::<Result<_>>()
                .map(Some);
        }
        if !speaks {
            return Ok(None);
        }
        let hosts = self.meet(
            call,
            "gather",
            self.node(),
            nodes,
            &bundle::pack(&here),
            want,
            self.bundle_limit(self.local_size()),
        )?;
        if !want {
            return Ok(None);
        }
        self.in_rank_order(&hosts, "gather")?
            .into_iter()
            .map(Value::from_bytes)
            .collect::<Result<_>>()
            .map(Some)
    }

    /// Every rank's `value`, in rank order, on every rank.
    ///
    /// Hierarchical: the ranks of a host pass their values to each other
    /// through their shared memory; each host's first rank sends its
    /// host's values to the rendezvous in one message, gets every host's
    /// back in one message, and passes them to its host's ranks through
    /// their shared memory.
    pub fn all_gather<T>(&self, value: &T) -> Result<Vec<Value<T>>>
    where
        T: shoal_transport::Archivable + rkyv::Archive,
        T::Archived: for<'b> CheckBytes<HighValidator<'b, rancor::Error>>,
    {
        let bytes = archive(value)?;
        let call = self.begin()?;
        if self.link.is_none() {
            return Ok(vec![Value::from_aligned(bytes)?]);
        }
        let nodes = self.nodes();
        let speaks = nodes > 1 && self.local_rank() == 0;
        let here = self.host_values("all_gather", &bytes).inspect_err(|_| {
            if speaks {
                self.tell_hosts_it_failed(call, "all_gather");
            }
        })?;
        if nodes == 1 {
            return here.into_iter().map(Value::from_aligned).collect();
        }
        let all = if self.local_rank() == 0 {
            let all = self
                .meet(
                    call,
                    "all_gather",
                    self.node(),
                    nodes,
                    &bundle::pack(&here),
                    true,
                    self.bundle_limit(self.local_size()),
                )
                .and_then(|hosts| {
                    self.in_rank_order(&hosts, "all_gather")
                        .map(|v| bundle::pack(&v))
                });
            if let Some(n) = &self.node {
                // The host's other ranks wait for the answer: pass it on,
                // or tell them it failed.
                let put = n.put(all.as_deref().map_err(drop), self.opts.timeout);
                match put {
                    Ok(g) => self.seen.store(g, Ordering::Relaxed),
                    Err(s) => {
                        let e = self.stopped("all_gather", s);
                        return Err(all.err().unwrap_or(e));
                    }
                }
            }
            let mut a = rkyv::util::AlignedVec::new();
            a.extend_from_slice(&all?);
            a
        } else {
            // The host's first rank may wait a whole timeout at the
            // rendezvous before it passes the answer on.
            self.take_from(
                0,
                "all_gather",
                self.bundle_limit(self.size()),
                2 * self.opts.timeout,
            )?
        };
        bundle::unpack(&all, self.size() as usize, "an all_gather's answer")?
            .into_iter()
            .map(Value::from_bytes)
            .collect()
    }

    /// The values of this host's ranks, in place order (the host's part
    /// of a gather): each rank in turn puts its value through the host's
    /// buffer while the others take it. A value too large, or one that
    /// failed on its rank, does not end the rounds early: every rank goes
    /// through all of them (and stays in step with the others) before it
    /// says so.
    fn host_values(&self, what: &str, mine: &[u8]) -> Result<Vec<rkyv::util::AlignedVec>> {
        let own = || {
            let mut a = rkyv::util::AlignedVec::with_capacity(mine.len());
            a.extend_from_slice(mine);
            a
        };
        let Some(n) = &self.node else {
            if mine.len() > self.opts.max_value {
                let e = self.too_large(mine.len());
                self.break_with(&e);
                return Err(e);
            }
            return Ok(vec![own()]);
        };
        let me = self.local_rank();
        let mut out = Vec::with_capacity(self.local_size() as usize);
        let mut failed = None;
        for place in 0..self.local_size() {
            if place == me {
                let v = if mine.len() > self.opts.max_value {
                    failed.get_or_insert(self.too_large(mine.len()));
                    Err(())
                } else {
                    Ok(mine)
                };
                let g = n
                    .put(v, self.opts.timeout)
                    .map_err(|s| self.stopped(what, s))?;
                self.seen.store(g, Ordering::Relaxed);
                out.push(own());
                continue;
            }
            match self.take_from(place, what, self.opts.max_value, self.opts.timeout) {
                Ok(v) => out.push(v),
                // Read through, or marked failed by its putter: in step.
                Err(e @ (Error::TooLarge { .. } | Error::Broken(_))) => {
                    failed.get_or_insert(e);
                    out.push(rkyv::util::AlignedVec::new());
                }
                Err(e) => return Err(e),
            }
        }
        match failed {
            Some(e) => {
                self.break_with(&e);
                Err(e)
            }
            None => Ok(out),
        }
    }

    /// How long a rank waits on its host for a rank that takes part in
    /// the collective's step between hosts: a whole timeout there, and
    /// one here (with one host, only here).
    fn local_wait(&self) -> Duration {
        if self.nodes() > 1 {
            2 * self.opts.timeout
        } else {
            self.opts.timeout
        }
    }

    fn too_large(&self, len: usize) -> Error {
        Error::TooLarge {
            what: "a collective's value",
            got: len as u64,
            limit: self.opts.max_value as u64,
        }
    }

    /// The largest bundle of `ranks` values.
    fn bundle_limit(&self, ranks: u32) -> usize {
        self.opts
            .max_value
            .saturating_add(8)
            .saturating_mul(ranks as usize)
            .saturating_add(4)
    }

    /// The value the rank at `place` on this host puts through the
    /// host's buffer.
    /// (At most `max` bytes; waits up to `wait`.)
    fn take_from(
        &self,
        place: u32,
        what: &str,
        max: usize,
        wait: Duration,
    ) -> Result<rkyv::util::AlignedVec> {
        let Some(n) = &self.node else {
            return Err(Error::BadArguments(format!(
                "{what}: this rank shares its host with no other"
            )));
        };
        let mut out = rkyv::util::AlignedVec::new();
        let mut last = self.seen.load(Ordering::Relaxed);
        let r = n.take(place, wait, &mut last, max, &mut out);
        self.seen.store(last, Ordering::Relaxed);
        match r {
            Ok(()) => Ok(out),
            Err(TakeError::Stop(s)) => Err(self.stopped(what, s)),
            // Read through and refused: this rank is still in step.
            Err(TakeError::TooLong(len)) => Err(Error::TooLarge {
                what: "a value passed on the host",
                got: len,
                limit: max as u64,
            }),
            Err(TakeError::Malformed) => {
                let e = Error::Malformed {
                    what: "the host's broadcast buffer",
                    why: "a chunk's lengths are not what a putter writes".into(),
                };
                // Where the value ends is unknown: this rank is out of
                // step with the host's others.
                self.break_with(&e);
                Err(e)
            }
        }
    }

    /// Gives the other hosts [`bundle::FAILED`] for this host's values
    /// in collective `call`, so that they fail at once instead of
    /// waiting out their timeout. Best effort: it waits for them up to
    /// [`TELL_FAILED`] (those that broke never come); this rank's error
    /// is the caller's.
    fn tell_hosts_it_failed(&self, call: u64, what: &str) {
        let Some(link) = &self.link else {
            return;
        };
        let req = Request::Collect {
            key: self.key(call, what),
            n: self.nodes(),
            rank: self.node(),
            want: false,
            wait_ms: TELL_FAILED.min(self.opts.timeout).as_millis() as u32,
            value: bundle::FAILED.to_vec(),
        };
        let mut client = link.client.lock().unwrap_or_else(|p| p.into_inner());
        let _ = client.call(&req, TELL_FAILED.min(self.opts.timeout));
    }

    /// The rendezvous key of collective `call`.
    fn key(&self, call: u64, what: &str) -> Vec<u8> {
        format!("{}/{call}/{what}", self.name).into_bytes()
    }

    /// Every rank's value, in rank order, from one [`bundle`] per host
    /// (each its ranks' values in place order). A host whose values
    /// failed ([`bundle::FAILED`]) fails it, and breaks the group.
    fn in_rank_order<'a>(&self, hosts: &'a [Vec<u8>], what: &str) -> Result<Vec<&'a [u8]>> {
        self.in_rank_order_or_not(hosts, what)
            .inspect_err(|e| self.break_with(e))
    }

    fn in_rank_order_or_not<'a>(&self, hosts: &'a [Vec<u8>], what: &str) -> Result<Vec<&'a [u8]>> {
        if let Some(node) = hosts.iter().position(|b| b == bundle::FAILED) {
            let e = Error::Broken(format!(
                "{what}: it failed on host {node} (ranks {:?}; see their error)",
                self.ranks_on(node as u32)
            ));
            return Err(e);
        }
        if hosts.len() != self.nodes() as usize {
            return Err(Error::Malformed {
                what: "an answer between hosts",
                why: format!("{} values for {} hosts", hosts.len(), self.nodes()),
            });
        }
        let mut out: Vec<&[u8]> = vec![&[]; self.size() as usize];
        for (node, b) in hosts.iter().enumerate() {
            let ranks = self.ranks_on(node as u32);
            let values = bundle::unpack(b, ranks.len(), "a host's values")?;
            for (r, v) in ranks.into_iter().zip(values) {
                if let Some(slot) = out.get_mut(r as usize) {
                    *slot = v;
                }
            }
        }
        Ok(out)
    }

    /// Carries `bytes` from rank `root` to the first rank of every other
    /// host, one message each, through the rendezvous (the step of
    /// collective `call` between hosts): `Some(bytes)` on those ranks,
    /// `None` on the others (and on a single host).
    pub(crate) fn to_hosts(
        &self,
        call: u64,
        what: &str,
        root: u32,
        bytes: Option<&[u8]>,
    ) -> Result<Option<Vec<u8>>> {
        let nodes = self.nodes();
        let root_node = self.members[root as usize].node;
        let first_elsewhere = self.local_rank() == 0 && self.node() != root_node;
        if nodes == 1 || !(self.rank == root || first_elsewhere) {
            return Ok(None);
        }
        let all = self.meet(
            call,
            what,
            self.node(),
            nodes,
            bytes.unwrap_or(&[]),
            first_elsewhere,
            self.opts.max_value,
        )?;
        if !first_elsewhere {
            return Ok(None);
        }
        let mut all = all;
        if root_node as usize >= all.len() {
            return Err(Error::Malformed {
                what: "an answer between hosts",
                why: format!("{} values for {nodes} hosts", all.len()),
            });
        }
        Ok(Some(all.swap_remove(root_node as usize)))
    }

    /// Runs `service` beside the rendezvous under `key`: on rank 0 only
    /// (false elsewhere, and in a group of one).
    pub(crate) fn register_service(
        &self,
        key: &[u8],
        service: Arc<dyn crate::rendezvous::Service>,
    ) -> bool {
        match self.link.as_ref().and_then(|l| l.server.as_ref()) {
            Some(s) => {
                s.register(key, service);
                true
            }
            None => false,
        }
    }

    /// Stops the service `key` (on rank 0).
    pub(crate) fn unregister_service(&self, key: &[u8]) {
        if let Some(s) = self.link.as_ref().and_then(|l| l.server.as_ref()) {
            s.unregister(key);
        }
    }

    /// Asks rank 0's service `key`.
    pub(crate) fn call_service(&self, key: &[u8], body: &[u8]) -> Result<Vec<u8>> {
        let Some(link) = &self.link else {
            return Err(Error::BadArguments("a group of one has no services".into()));
        };
        let mut c = link.client.lock().unwrap_or_else(|p| p.into_inner());
        match c.call(
            &Request::Call {
                key: key.to_vec(),
                body: body.to_vec(),
            },
            self.opts.timeout,
        )? {
            Reply::Answer(b) => Ok(b),
            Reply::Refused(why) => Err(Error::Refused(why)),
            other => Err(Error::Malformed {
                what: "a service's answer",
                why: format!("{other:?}"),
            }),
        }
    }

    /// This group's name at the rendezvous.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The most bytes one rank's value in a collective may have.
    pub(crate) fn max_value(&self) -> usize {
        self.opts.max_value
    }

    /// The next collective's number (every rank counts its calls).
    pub(crate) fn next_call(&self) -> Result<u64> {
        self.begin()
    }

    /// The group's options.
    pub(crate) fn options(&self) -> &GroupOptions {
        &self.opts
    }

    pub(crate) fn check_root(&self, root: u32) -> Result<()> {
        if root >= self.size() {
            return Err(Error::BadArguments(format!(
                "root {root} in a group of {}",
                self.size()
            )));
        }
        Ok(())
    }

    /// Meets the other ranks in the next collective, giving `value`;
    /// every rank's value in rank order if `want` (else empty).
    pub(crate) fn collect(&self, what: &str, value: &[u8], want: bool) -> Result<Vec<Vec<u8>>> {
        let call = self.begin()?;
        if self.link.is_none() {
            return Ok(if want {
                vec![value.to_vec()]
            } else {
                Vec::new()
            });
        }
        self.meet(
            call,
            what,
            self.rank,
            self.size(),
            value,
            want,
            self.opts.max_value,
        )
    }

    /// Meets at the rendezvous, as `rank` of `n`, in collective number
    /// `call` (`n` and `rank` count hosts when the hosts' first ranks
    /// meet for their host).
    #[allow(clippy::too_many_arguments)] // each is one field of the request
    fn meet(
        &self,
        call: u64,
        what: &str,
        rank: u32,
        n: u32,
        value: &[u8],
        want: bool,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>> {
        if value.len() > limit {
            let e = Error::TooLarge {
                what: "a collective's value",
                got: value.len() as u64,
                limit: limit as u64,
            };
            // The others meet without this rank: out of step.
            self.break_with(&e);
            return Err(e);
        }
        let Some(link) = &self.link else {
            return Ok(if want {
                vec![value.to_vec()]
            } else {
                Vec::new()
            });
        };
        let timeout = self.opts.timeout;
        let req = Request::Collect {
            key: self.key(call, what),
            n,
            rank,
            want,
            wait_ms: timeout.as_millis().min(u128::from(u32::MAX)) as u32,
            value: value.to_vec(),
        };
        let mut client = link.client.lock().unwrap_or_else(|p| p.into_inner());
        let r = self.answer(client.call(&req, timeout), call, what, n, want);
        if let Err(e) = &r {
            self.break_with(e);
        }
        r
    }

    /// A collective's answer, as the caller sees it.
    fn answer(
        &self,
        reply: Result<Reply>,
        call: u64,
        what: &str,
        n: u32,
        want: bool,
    ) -> Result<Vec<Vec<u8>>> {
        let timeout = self.opts.timeout;
        match reply? {
            Reply::Values(v) if want && v.len() == n as usize => Ok(v),
            Reply::Ok if !want => Ok(Vec::new()),
            Reply::Absent(missing) => Err(Error::RanksMissing {
                what: format!("{what} (call {call} of group {})", self.name),
                missing: if n == self.size() {
                    missing
                } else {
                    // Hosts: their ranks.
                    (0..self.size())
                        .filter(|r| missing.contains(&self.members[*r as usize].node))
                        .collect()
                },
                after: timeout,
            }),
            Reply::Refused(why) => Err(Error::Refused(why)),
            other => Err(Error::Malformed {
                what: "a collective's answer",
                why: format!("{other:?}"),
            }),
        }
    }
}

/// How long a host whose values failed waits for the other hosts to
/// tell them (see `Group::tell_hosts_it_failed`).
const TELL_FAILED: Duration = Duration::from_secs(1);

/// Numbers the members' hosts in order of their lowest rank.
fn number_nodes(members: &mut [Member]) {
    let mut hosts: Vec<u64> = Vec::new();
    for m in members.iter_mut() {
        m.node = match hosts.iter().position(|h| *h == m.host) {
            Some(i) => i as u32,
            None => {
                hosts.push(m.host);
                (hosts.len() - 1) as u32
            }
        };
    }
}

/// Where a job's rendezvous address is left when the launcher names
/// none (every rank on one host).
fn rendezvous_file(launch: &Launch) -> PathBuf {
    PathBuf::from(format!(
        "/dev/shm/shoal-rendezvous-{}-{}",
        launch.job, launch.size
    ))
}

/// Writes `text` to a new file of mode 0600 (refused if the name exists).
fn write_own(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

/// The text of `path` if it is a regular file of this user (another
/// user's file under the same name in the shared directory is not
/// trusted).
fn read_own(path: &std::path::Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(path).ok()?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if !m.file_type().is_file() || m.uid() != me {
        return None;
    }
    std::fs::read_to_string(path).ok()
}

/// Connects to the rendezvous (hosting it on rank 0).
fn connect(launch: &Launch, opts: &GroupOptions) -> Result<Link> {
    let limits = Limits {
        max_frame: opts
            .max_value
            .saturating_mul(launch.size as usize)
            .saturating_add(1 << 16),
        ..Limits::for_group(launch.size)
    };
    let max_frame = limits.max_frame;
    let linger = opts.timeout;
    let at = opts
        .rendezvous
        .clone()
        .or_else(|| launch.rendezvous.clone());
    let (rank, size, timeout) = (launch.rank, launch.size, opts.timeout);
    let secret = opts.secret_or_env();
    if let Some(at) = at {
        let server = if rank == 0 {
            Some(Server::bind(&at, size, limits, secret.clone())?)
        } else {
            None
        };
        // Rank 0 reaches its own at the address it bound (a wildcard
        // bind is reached through loopback).
        let to = match &server {
            Some(s) if s.address().ip().is_unspecified() => {
                format!("127.0.0.1:{}", s.address().port())
            }
            Some(s) => s.address().to_string(),
            None => at,
        };
        let client = Client::connect(&to, rank, size, &secret, timeout, max_frame)?;
        return Ok(Link {
            client: Mutex::new(client),
            address: to,
            world_rank: rank,
            world_size: size,
            secret,
            max_frame,
            server,
            file: None,
            linger,
        });
    }
    // No address: every rank on this host, the address in a file.
    let file = rendezvous_file(launch);
    if rank == 0 {
        let server = Server::bind("127.0.0.1:0", size, limits, secret.clone())?;
        let tmp = tmp_beside(&file);
        write_own(&tmp, &server.address().to_string())
            .and_then(|()| std::fs::rename(&tmp, &file))
            .map_err(|e| {
                Error::io(
                    format!("leaving the rendezvous's address in {}", file.display()),
                    e,
                )
            })?;
        let to = server.address().to_string();
        let client = Client::connect(&to, 0, size, &secret, timeout, max_frame)?;
        return Ok(Link {
            client: Mutex::new(client),
            address: to,
            world_rank: 0,
            world_size: size,
            secret,
            max_frame,
            server: Some(server),
            file: Some(file),
            linger,
        });
    }
    let end = Instant::now() + timeout;
    loop {
        if let Some(at) = read_own(&file).map(|a| a.trim().to_string()) {
            let left = end
                .saturating_duration_since(Instant::now())
                .min(Duration::from_secs(1));
            match Client::connect(&at, rank, size, &secret, left, max_frame) {
                Ok(client) => {
                    return Ok(Link {
                        client: Mutex::new(client),
                        address: at,
                        world_rank: rank,
                        world_size: size,
                        secret,
                        max_frame,
                        server: None,
                        file: None,
                        linger,
                    })
                }
                // Another secret, or another group's rendezvous under this
                // job's name and size (only a live one answers): said at
                // once, not asked again until the timeout.
                Err(e @ (Error::Refused(_) | Error::BadArguments(_))) => return Err(e),
                // A stale file from an earlier job: rank 0 writes it anew.
                Err(e) if Instant::now() >= end => return Err(e),
                Err(_) => {}
            }
        }
        if Instant::now() >= end {
            return Err(Error::Rendezvous {
                address: file.display().to_string(),
                why: format!(
                    "rank 0 left no address there within {timeout:?}: the launcher names no rendezvous, so every rank must be on rank 0's host (set SHOAL_RENDEZVOUS=HOST:PORT, rank 0's host, for ranks on several hosts)"
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A name beside `file` for writing it before a rename: unique among
/// the processes of every pid namespace (a pid alone is not: two ranks
/// in namespaces of their own can share one), and the whole file name
/// kept (a job "slurm-99.0" must not share one with "slurm-99.1").
pub(crate) fn tmp_beside(file: &std::path::Path) -> std::path::PathBuf {
    use std::hash::{BuildHasher, Hasher};
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u64(NEXT.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp{:016x}", h.finish()));
    file.with_file_name(name)
}

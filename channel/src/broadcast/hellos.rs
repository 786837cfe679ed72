//! Remote readers' hellos and progress: a broadcast with readers on other
//! hosts binds, beside its publisher, a door where each remote reader says
//! who it is (index, pid, host) once it subscribed, and then, every
//! [`REPORT_EVERY`] while it receives, how many messages it has. The
//! writer keeps the list, so readiness names the readers that never came,
//! local or remote, [`Broadcast::remote_readers`](super::Broadcast::remote_readers)
//! lists those that did, and a send held back by the network publisher
//! past the peer options' `slow_peer_log` names in the log the remote
//! readers furthest behind (as the ring names a slow local reader).

use crate::error::{Error, Result};
use crate::net::ask::{NetReplier, NetRequester};
use crate::net::serve::{runtime, serve, Heard};
use shoal_transport::{Address, Options};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A remote reader that said hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RemoteReader {
    /// The index it attached with.
    pub index: u32,
    /// Its pid (in its own pid namespace).
    pub pid: u32,
    /// Its host (see [`host_id`](crate::gather::host_id)).
    pub host: u64,
}

/// The first bytes of a hello.
const MAGIC: &[u8; 4] = b"HELO";
/// The first bytes of a progress report.
const PROGRESS: &[u8; 4] = b"PROG";
/// Bytes of a hello or a report: magic, index, pid, 4 spare, host, and
/// how many messages the reader received.
const LEN: usize = 32;
/// Most readers remembered (a reader that attaches again says it again).
const MAX: usize = 4096;
/// How often a remote reader that received something says how much.
pub(crate) const REPORT_EVERY: Duration = Duration::from_millis(250);
/// How many times a remote reader tries to say hello.
const HELLO_TRIES: u32 = 5;
/// How long a reader waits for the writer to take a hello or a report.
const SAY_WITHIN: Duration = Duration::from_secs(2);
/// Most readers named in one log line.
const NAMED: usize = 4;

/// A hello (`magic` [`MAGIC`]) or a report ([`PROGRESS`]) of reader
/// `index` of this process, which received `got` messages.
fn message(magic: &[u8; 4], index: u32, got: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(LEN);
    b.extend_from_slice(magic);
    b.extend_from_slice(&index.to_le_bytes());
    b.extend_from_slice(&std::process::id().to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&crate::gather::host_id().to_le_bytes());
    b.extend_from_slice(&got.to_le_bytes());
    b
}

/// What a reader said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Said {
    /// Hello: it subscribed.
    Hello(RemoteReader),
    /// It received this many messages.
    Progress(RemoteReader, u64),
}

/// Reads a hello or a report (`None`: neither).
fn read(b: &[u8]) -> Option<Said> {
    if b.len() != LEN {
        return None;
    }
    let u32_at = |at: usize| b.get(at..at + 4)?.try_into().ok().map(u32::from_le_bytes);
    let u64_at = |at: usize| b.get(at..at + 8)?.try_into().ok().map(u64::from_le_bytes);
    let r = RemoteReader {
        index: u32_at(4)?,
        pid: u32_at(8)?,
        host: u64_at(16)?,
    };
    match b.get(..4)? {
        m if m == MAGIC => Some(Said::Hello(r)),
        m if m == PROGRESS => Some(Said::Progress(r, u64_at(24)?)),
        _ => None,
    }
}

/// A remote reader's side: says hello once subscribed, then reports what
/// its receives count in `got` (a counter the reader's thread bumps).
pub(crate) struct Greeter {
    door: Address,
    index: u32,
    got: Arc<AtomicU64>,
}

impl Greeter {
    /// A greeter for reader `index`, reporting `got`.
    pub(crate) fn new(door: Address, index: u32, got: Arc<AtomicU64>) -> Greeter {
        Greeter { door, index, got }
    }

    /// Says hello, then reports on a task of the current runtime until
    /// that runtime shuts down. The first try is awaited here (within the
    /// connect timeout); if it fails, the hello is tried again in the
    /// background, [`HELLO_TRIES`] times in all. The writer counts a
    /// remote reader ready only once its hello came; a reader whose hello
    /// is lost reads all the same, but the writer's readiness names it
    /// missing.
    pub(crate) async fn greet(self, opts: &Options) {
        if let Some(r) = self.hello(opts, 1).await {
            tokio::spawn(self.report(r));
            return;
        }
        let opts = opts.clone();
        tokio::spawn(async move {
            let mut pause = Duration::from_millis(50);
            for attempt in 2..=HELLO_TRIES {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
                if let Some(r) = self.hello(&opts, attempt).await {
                    return self.report(r).await;
                }
            }
        });
    }

    /// One try at saying hello: the requester it was said through.
    async fn hello(&self, opts: &Options, attempt: u32) -> Option<NetRequester> {
        let said = async {
            let mut r = NetRequester::connect(&self.door, opts).await?;
            r.request(&message(MAGIC, self.index, 0)).await?;
            Ok::<_, Error>(r)
        };
        match tokio::time::timeout(opts.connect_timeout, said).await {
            Ok(Ok(r)) => Some(r),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, attempt, "remote reader: its hello did not reach the writer");
                None
            }
            Err(_) => {
                tracing::debug!(attempt, "remote reader: its hello was not taken in time");
                None
            }
        }
    }

    /// Every [`REPORT_EVERY`], says how many messages the reader has if
    /// that changed.
    async fn report(self, mut requester: NetRequester) {
        let mut told = 0;
        loop {
            tokio::time::sleep(REPORT_EVERY).await;
            let got = self.got.load(Ordering::Relaxed);
            if got == told {
                continue;
            }
            let report = message(PROGRESS, self.index, got);
            let said = requester.request(&report);
            // Not taken (the writer is gone or busy): the reader's
            // receives say so; reporting is only for the writer's log.
            if let Ok(Ok(_)) = tokio::time::timeout(SAY_WITHIN, said).await {
                told = got;
            }
        }
    }
}

/// What the door heard and watches, shared with its thread.
#[derive(Default)]
struct Book {
    /// Hellos, in the order they came.
    hellos: Vec<RemoteReader>,
    /// Each reader's last report: messages received, and when.
    progress: HashMap<RemoteReader, (u64, Instant)>,
}

/// The door, what it heard, and the writer's publication it watches;
/// stopped when dropped.
pub(super) struct Hellos {
    stop: Arc<AtomicBool>,
    address: Address,
    book: Arc<Mutex<Book>>,
    /// The sequence number + 1 of the message the writer is publishing
    /// now (0: none), watched by the door's thread.
    busy: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Hellos {
    /// Binds the door at `at` and serves it on a thread of its own; a
    /// publication held back for `slow` is logged, as `label`'s.
    pub(super) fn start(
        at: &Address,
        net: &Options,
        slow: Duration,
        label: String,
    ) -> Result<Hellos> {
        let stop = Arc::new(AtomicBool::new(false));
        let book: Arc<Mutex<Book>> = Arc::default();
        let busy = Arc::new(AtomicU64::new(0));
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Address>>(1);
        let (at, net, stop2, book2, busy2) = (
            at.clone(),
            net.clone(),
            stop.clone(),
            book.clone(),
            busy.clone(),
        );
        let thread = std::thread::Builder::new()
            .name("shoal-bcast-hellos".into())
            .spawn(move || {
                let bound = runtime().and_then(|rt| {
                    let r = rt.block_on(NetReplier::bind(&at, &net))?;
                    Ok((rt, r))
                });
                let (rt, replier) = match bound {
                    Ok(v) => v,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let _ = tx.send(Ok(replier.address()));
                let mut watch = Watch::new(slow, label);
                serve(
                    &rt,
                    replier,
                    &stop2,
                    |req, out| {
                        match read(req) {
                            Some(said) => {
                                lock(&book2).note(said);
                                out.extend_from_slice(b"ok");
                            }
                            None => out.extend_from_slice(b"not a hello"),
                        }
                        // Not a sign of life the loop waits for: the
                        // watch below runs between every two requests.
                        Heard::Stranger
                    },
                    |_| {
                        watch.look(busy2.load(Ordering::Acquire), &book2);
                        false
                    },
                );
            })
            .map_err(|source| Error::Io {
                what: "starting a broadcast's door for remote readers",
                source,
            })?;
        let address = match rx.recv() {
            Ok(r) => r?,
            Err(_) => return Err(Error::Net(shoal_transport::Error::Closed)),
        };
        Ok(Hellos {
            stop,
            address,
            book,
            busy,
            thread: Some(thread),
        })
    }

    /// Where remote readers say hello.
    pub(super) fn address(&self) -> &Address {
        &self.address
    }

    /// The remote readers that said hello, in the order they did.
    pub(super) fn heard(&self) -> Vec<RemoteReader> {
        lock(&self.book).hellos.clone()
    }

    /// The writer starts publishing message `seq` to the remote readers.
    pub(super) fn publishing(&self, seq: u64) {
        self.busy.store(seq.wrapping_add(1), Ordering::Release);
    }

    /// The writer's publication ended.
    pub(super) fn published(&self) {
        self.busy.store(0, Ordering::Release);
    }
}

fn lock(m: &Mutex<Book>) -> std::sync::MutexGuard<'_, Book> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Book {
    fn note(&mut self, said: Said) {
        match said {
            Said::Hello(r) => {
                if self.hellos.len() >= MAX {
                    // The oldest hello goes, and what it said of its
                    // progress with it (unless a newer hello is the same
                    // reader's): the book stays within MAX readers
                    // whatever a peer says.
                    let gone = self.hellos.remove(0);
                    if gone != r && !self.hellos.contains(&gone) {
                        self.progress.remove(&gone);
                    }
                }
                self.hellos.push(r);
                if self.progress.len() < MAX || self.progress.contains_key(&r) {
                    self.progress.entry(r).or_insert((0, Instant::now()));
                }
            }
            Said::Progress(r, got) => {
                if self.progress.len() >= MAX && !self.progress.contains_key(&r) {
                    return;
                }
                self.progress.insert(r, (got, Instant::now()));
            }
        }
    }

    /// The readers with fewer than `seq` messages, furthest behind first.
    fn behind(&self, seq: u64) -> Vec<(RemoteReader, u64, Duration)> {
        let mut v: Vec<_> = self
            .progress
            .iter()
            .filter(|(_, (got, _))| *got < seq)
            .map(|(r, (got, at))| (*r, *got, at.elapsed()))
            .collect();
        v.sort_by_key(|(r, got, _)| (*got, r.index));
        v
    }
}

/// The door thread's watch over the writer's publication: a message
/// still on its way after `slow` gets one log line naming the readers
/// furthest behind.
struct Watch {
    slow: Duration,
    label: String,
    /// The publication watched (its `busy` value) and since when.
    seen: u64,
    since: Instant,
    logged: bool,
}

impl Watch {
    fn new(slow: Duration, label: String) -> Watch {
        Watch {
            slow,
            label,
            seen: 0,
            since: Instant::now(),
            logged: false,
        }
    }

    /// Looks at the publication now (`busy`: see [`Hellos::publishing`]).
    fn look(&mut self, busy: u64, book: &Mutex<Book>) {
        if busy != self.seen {
            (self.seen, self.since, self.logged) = (busy, Instant::now(), false);
            return;
        }
        if busy == 0 || self.logged || self.since.elapsed() < self.slow {
            return;
        }
        self.logged = true;
        let seq = busy - 1;
        let behind = lock(book).behind(seq);
        tracing::warn!(
            "shoal broadcast {}: writer blocked for more than {:?} publishing message {seq} to remote readers; {}",
            self.label,
            self.since.elapsed(),
            describe(&behind, seq)
        );
    }
}

/// The readers `behind` named for a log line.
fn describe(behind: &[(RemoteReader, u64, Duration)], seq: u64) -> String {
    if behind.is_empty() {
        return format!(
            "no remote reader reports missing any message before it (they report every {REPORT_EVERY:?})"
        );
    }
    let named: Vec<String> = behind
        .iter()
        .take(NAMED)
        .map(|(r, got, ago)| {
            format!(
                "reader {} (pid {}, host {:#x}) has {got} of {seq} messages (said {:?} ago)",
                r.index, r.pid, r.host, ago
            )
        })
        .collect();
    let more = behind.len().saturating_sub(NAMED);
    let more = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    format!("furthest behind: {}{more}", named.join("; "))
}

impl Drop for Hellos {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hellos from ever new readers (a hostile peer's) keep the book
    /// within its bound.
    #[test]
    fn the_book_stays_bounded_whatever_hellos_come() {
        let mut book = Book {
            hellos: Vec::new(),
            progress: HashMap::new(),
        };
        for pid in 0..3 * MAX as u32 {
            let r = RemoteReader {
                index: 0,
                pid,
                host: 1,
            };
            book.note(Said::Hello(r));
            book.note(Said::Progress(r, 5));
        }
        assert!(book.hellos.len() <= MAX);
        assert!(book.progress.len() <= MAX, "{}", book.progress.len());
    }

    #[test]
    fn hellos_and_reports_read_back_and_refuse_anything_else() {
        let Some(Said::Hello(r)) = read(&message(MAGIC, 7, 0)) else {
            panic!("not a hello");
        };
        assert_eq!((r.index, r.pid), (7, std::process::id()));
        assert_eq!(read(&message(PROGRESS, 7, 99)), Some(Said::Progress(r, 99)));
        assert_eq!(read(b"HELO"), None);
        assert_eq!(read(&[0; LEN]), None);
        let mut long = message(MAGIC, 1, 0);
        long.push(0);
        assert_eq!(read(&long), None);
    }

    #[test]
    fn the_book_names_the_readers_furthest_behind_first() {
        let mut b = Book::default();
        let r = |index| RemoteReader {
            index,
            pid: 10 + index,
            host: 0xab,
        };
        for i in 0..6 {
            b.note(Said::Hello(r(i)));
        }
        b.note(Said::Progress(r(0), 100));
        b.note(Said::Progress(r(1), 3));
        b.note(Said::Progress(r(2), 50));
        for i in 3..6 {
            b.note(Said::Progress(r(i), 100));
        }
        let behind = b.behind(100);
        let order: Vec<u32> = behind.iter().map(|(r, _, _)| r.index).collect();
        assert_eq!(order, [1, 2]);
        let line = describe(&behind, 100);
        assert!(
            line.contains("reader 1 (pid 11, host 0xab) has 3 of 100"),
            "{line}"
        );
        assert!(describe(&[], 100).contains("no remote reader"));
        // Hellos past the bound push the oldest out; reports of readers
        // never heard past it are not kept.
        for i in 0..MAX as u32 {
            b.note(Said::Progress(r(100 + i), 1));
        }
        assert!(b.progress.len() <= MAX);
    }
}

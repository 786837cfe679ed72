//! Segment files on a real `/dev/shm`, with real processes:
//!
//! - a full `/dev/shm` fails at `create` (not later with SIGBUS) and leaves
//!   nothing behind;
//! - a creator SIGKILLed at any moment of creation leaves no half-made file;
//! - `cleanup_stale` judges by kernel leases: it removes what nobody holds,
//!   keeps what a live participant holds (an overflow record included), and
//!   works across pid namespaces.
//!
//! Other tests may run at the same time (threads here, processes under
//! cargo-nextest), and may run `cleanup_stale` too: these tests never
//! remove a file they did not make, and tolerate their own debris being
//! removed by a neighbour's cleanup. Everything they wait for is bounded.
//!
//! Child roles re-execute this binary (see `common`); the namespace tests
//! put `unshare` in front and skip, saying why, when not root.
#![allow(clippy::disallowed_types)] // tests use std atomics directly

mod common;

use shoal_shm_ring::segment::validate_bytes;
use shoal_shm_ring::{
    cleanup_stale, BroadcastConfig, BroadcastWriter, Error, Handle, MpmcConfig, MpmcConsumer,
    MpmcProducer, MpmcRing, SegmentKind, SegmentName, Wait,
};
use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// First byte of the crate's lease space (`lease::LEASE_BASE`).
const LEASE_BASE: i64 = 1 << 40;
/// The header page.
const PAGE: u64 = 4096;
/// How long a parked child lives at most if nobody kills it.
const PARK_LIMIT: Duration = Duration::from_secs(60);
/// How long the parent waits for a child's line or exit.
const PATIENCE: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// Helpers.

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn shm_path(name: &str) -> PathBuf {
    Path::new("/dev/shm").join(name)
}

fn exists(name: &str) -> bool {
    std::fs::symlink_metadata(shm_path(name)).is_ok()
}

/// Names of the `shoal-*` entries in /dev/shm now.
fn listing() -> HashSet<String> {
    std::fs::read_dir("/dev/shm")
        .expect("read /dev/shm")
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("shoal-"))
        .collect()
}

/// Opens a /dev/shm entry read-only without following links or blocking.
fn open_ro(name: &str) -> Option<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(shm_path(name))
        .ok()
}

/// Whether any open file description holds a lease on `file`.
fn lease_held(file: &File) -> bool {
    // SAFETY: `flock` is a plain C struct; all-zero is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = LEASE_BASE;
    fl.l_len = 0;
    // SAFETY: `fl` is a valid flock that outlives the call; fcntl does not
    // keep the pointer; the descriptor is open.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    assert_eq!(r, 0, "F_OFD_GETLK: {}", std::io::Error::last_os_error());
    fl.l_type != libc::F_UNLCK as libc::c_short
}

/// Takes a lease on `file` (its own open file description), as a live
/// participant would; it ends when `file` is closed.
fn hold_lease(file: &File) {
    // SAFETY: `flock` is a plain C struct; all-zero is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = LEASE_BASE + (1 << 20); // past every slot byte
    fl.l_len = 1;
    // SAFETY: as in `lease_held`.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &mut fl) };
    assert_eq!(r, 0, "F_OFD_SETLK: {}", std::io::Error::last_os_error());
}

/// Removes `name` from /dev/shm if it is still there (for files this test
/// made, or its own children made).
fn remove_ours(name: &str) {
    let _ = std::fs::remove_file(shm_path(name));
}

/// Overflow records of the ring `ring` now in /dev/shm.
fn overflow_files(ring: &SegmentName) -> Vec<String> {
    let prefix = format!("{ring}.o");
    let mut v: Vec<String> = listing()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    v.sort();
    v
}

/// A file under a shoal- name made by this test: debris (no lease) or, with
/// `lease`, a file somebody still uses. Removed on drop.
struct Planted {
    name: String,
    _lease: Option<File>,
}

impl Planted {
    fn new(tag: &str, bytes: &[u8], lease: bool) -> Self {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "shoal-fs-{}-{}-{tag}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let path = shm_path(&name);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .expect("create planted file");
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .expect("chmod 0600");
        std::io::Write::write_all(&mut &f, bytes).expect("write planted file");
        let lease = lease.then(|| {
            hold_lease(&f);
            f
        });
        Planted {
            name,
            _lease: lease,
        }
    }
}

impl Drop for Planted {
    fn drop(&mut self) {
        remove_ours(&self.name);
    }
}

/// xorshift64: delays without another dependency.
struct XorShift(u64);

impl XorShift {
    fn from_clock() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        XorShift(nanos.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn below(&mut self, n: u64) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x % n
    }
}

/// A child process of this test binary running a role, maybe under a
/// command prefix (`unshare ...`); killed and reaped on drop.
struct Kid {
    child: Child,
    lines: Receiver<String>,
}

impl Kid {
    fn spawn(prefix: &[&str], role: &str, args: &[String]) -> Kid {
        let exe = std::env::current_exe().expect("current_exe");
        let mut cmd = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let mut child = cmd
            .args(["--exact", "child_main", "--nocapture", "--test-threads=1"])
            .env("SHOAL_TEST_ROLE", role)
            .env("SHOAL_TEST_ARGS", args.join("\x1f"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        let out = child.stdout.take().expect("child stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                // libtest may print "test child_main ... " before our text.
                if let Some(i) = line.find("@ ") {
                    if tx.send(line[i + 2..].trim_end().to_string()).is_err() {
                        break;
                    }
                }
            }
        });
        Kid { child, lines }
    }

    /// The next `@ ` line, or why there is none.
    fn line(&mut self, timeout: Duration) -> Result<String, String> {
        match self.lines.recv_timeout(timeout) {
            Ok(l) => Ok(l),
            Err(RecvTimeoutError::Timeout) => Err(format!("no line within {timeout:?}")),
            Err(RecvTimeoutError::Disconnected) => {
                let st = self.wait(Duration::from_secs(5));
                Err(format!("the child exited ({st}) without a line"))
            }
        }
    }

    fn expect_line(&mut self, timeout: Duration) -> String {
        self.line(timeout).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Waits for the exit, at most `timeout` (then kills).
    fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st;
            }
            if t0.elapsed() > timeout {
                self.kill9();
                panic!("child did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILL now (no cleanup runs in the child), then reap it.
    fn kill9(&mut self) {
        // SAFETY: sending a signal to our own unreaped child has no memory
        // effects.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill9();
        }
    }
}

/// Sleeps until killed (at most `PARK_LIMIT`).
fn park() {
    std::thread::sleep(PARK_LIMIT);
}

fn small_broadcast() -> BroadcastConfig {
    BroadcastConfig::new(1 << 16, 2)
}

fn small_mpmc() -> MpmcConfig {
    MpmcConfig::new(1 << 16, 2, 2)
}

/// Why a namespace test cannot run here, if it cannot.
fn namespaces_unavailable(probe: &[&str]) -> Option<String> {
    if euid() != 0 {
        return Some("needs root (mount and pid namespaces)".into());
    }
    match Command::new(probe[0])
        .args(&probe[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
    {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "{probe:?} failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("cannot run {:?}: {e}", probe[0])),
    }
}

// ---------------------------------------------------------------------------
// Child roles.

#[test]
fn child_main() {
    let Some((role, args)) = common::role() else {
        return;
    };
    match role.as_str() {
        "full_shm" => full_shm_child(),
        "create_loop" => create_loop_child(&args[0]),
        "hold_ring" => hold_ring_child(&args[0]),
        "send_big" => send_big_child(&args[0], &args[1]),
        "ns_holder" => ns_holder_child(),
        other => panic!("unknown role {other}"),
    }
}

/// Used blocks of the file system holding /dev/shm.
fn shm_used_blocks() -> u64 {
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: NUL-terminated literal path; statvfs fills `st` on success.
    let r = unsafe { libc::statvfs(c"/dev/shm".as_ptr(), st.as_mut_ptr()) };
    assert_eq!(r, 0, "statvfs: {}", std::io::Error::last_os_error());
    // SAFETY: statvfs returned 0, so `st` is initialized.
    let st = unsafe { st.assume_init() };
    st.f_blocks - st.f_bfree
}

/// In a private mount namespace whose /dev/shm is a 1 MiB tmpfs: a 4 MiB
/// ring fails at create time with an `Io` error from `posix_fallocate`
/// saying /dev/shm is full, and leaves no file and no used block behind.
fn full_shm_child() {
    assert!(listing().is_empty(), "the private /dev/shm is not empty");
    let used = shm_used_blocks();
    let check = |what: &str, r: Result<(), Error>| {
        let e = match r {
            Err(e) => e,
            Ok(()) => panic!("{what}: a 4 MiB ring was created in a 1 MiB /dev/shm"),
        };
        let text = e.to_string();
        match &e {
            Error::Io { op, path, source } => {
                assert_eq!(*op, "posix_fallocate", "{what}: {text}");
                let name = path.0.expect("the error names the segment");
                assert!(text.contains(name.as_str()), "{what}: {text}");
                assert_eq!(
                    source.kind(),
                    std::io::Error::from_raw_os_error(libc::ENOSPC).kind(),
                    "{what}: {text}"
                );
                assert!(text.contains("/dev/shm is full"), "{what}: {text}");
            }
            other => panic!("{what}: expected an Io error, got {other:?}"),
        }
        let left = listing();
        assert!(left.is_empty(), "{what}: left behind {left:?}");
        assert_eq!(shm_used_blocks(), used, "{what}: blocks stay in use");
    };
    check(
        "broadcast",
        BroadcastWriter::create(&BroadcastConfig::new(4 << 20, 1)).map(drop),
    );
    check(
        "mpmc",
        MpmcRing::create(&MpmcConfig::new(4 << 20, 1, 1)).map(drop),
    );
    // The failure is about room, not about this /dev/shm: a small ring fits.
    let w = BroadcastWriter::create(&small_broadcast()).expect("a 64 KiB ring fits");
    assert_eq!(listing().len(), 1);
    drop(w);
    assert!(listing().is_empty());
    assert_eq!(shm_used_blocks(), used);
    common::say("ok");
}

/// Creates and drops 64 MiB rings until killed.
fn create_loop_child(kind: &str) {
    const BIG: u64 = 64 << 20;
    common::say("ready");
    let until = Instant::now() + PARK_LIMIT;
    while Instant::now() < until {
        match kind {
            "bc" => drop(BroadcastWriter::create(&BroadcastConfig::new(BIG, 1)).unwrap()),
            _ => drop(MpmcRing::create(&MpmcConfig::new(BIG, 1, 1)).unwrap()),
        }
    }
}

/// Creates a small ring, says its handle, and waits to be killed.
fn hold_ring_child(kind: &str) {
    match kind {
        "bc" => {
            let w = BroadcastWriter::create(&small_broadcast()).unwrap();
            common::say(&w.handle().to_string());
            park();
        }
        _ => {
            let r = MpmcRing::create(&small_mpmc()).unwrap();
            common::say(&r.handle().to_string());
            park();
        }
    }
}

/// Sends one record of `len` bytes (made by `common::fill(7, ..)`) into the
/// MPMC ring `handle`, says "sent" and exits normally.
fn send_big_child(handle: &str, len: &str) {
    let h: Handle = handle.parse().unwrap();
    let len: usize = len.parse().unwrap();
    let mut p = MpmcProducer::attach(&h).unwrap();
    let mut buf = vec![0u8; len];
    common::fill(7, &mut buf);
    p.send_with(&buf, Wait::timeout(Duration::from_secs(10)))
        .unwrap();
    common::say("sent");
}

/// In its own pid namespace: creates an MPMC ring and a consumer, says the
/// handle, says what it takes (or why not), and waits to be killed.
fn ns_holder_child() {
    let ring = MpmcRing::create(&small_mpmc()).unwrap();
    let mut c = ring.consumer().unwrap();
    common::say(&ring.handle().to_string());
    match c.take_with(Wait::timeout(PATIENCE)) {
        Ok(g) => common::say(&format!("took {}", String::from_utf8_lossy(&g))),
        Err(e) => common::say(&format!("error {e}")),
    }
    park();
}

// ---------------------------------------------------------------------------
// Creation.

/// (a) A full /dev/shm: `create` fails at once with an `Io` error naming
/// `posix_fallocate` and saying /dev/shm is full, and nothing is left.
#[test]
fn a_full_dev_shm_fails_at_create_and_leaves_nothing() {
    const MOUNT: &str = "mount -t tmpfs -o size=1m tmpfs /dev/shm";
    if let Some(why) = namespaces_unavailable(&["unshare", "-m", "sh", "-c", MOUNT]) {
        eprintln!("skipped: {why}");
        return;
    }
    let script = format!("{MOUNT} && exec \"$0\" \"$@\"");
    let mut kid = Kid::spawn(&["unshare", "-m", "sh", "-c", &script], "full_shm", &[]);
    let line = kid.line(PATIENCE);
    let status = kid.wait(PATIENCE);
    assert_eq!(line.as_deref(), Ok("ok"), "child: {status}");
    assert!(status.success(), "child: {status}");
}

/// (b) A creator SIGKILLed at random moments while creating 64 MiB rings
/// leaves no half-made file: every ring file its kill left behind that no
/// lease holds is complete (a creator killed just after finishing leaves a
/// complete ring, which is `cleanup_stale`'s business, and removed here).
#[test]
fn a_creator_killed_mid_creation_leaves_no_half_made_file() {
    const ROUNDS: usize = 24;
    let before = listing();
    let mut rng = XorShift::from_clock();
    let mut pids = HashSet::new();
    for i in 0..ROUNDS {
        let kind = if i % 2 == 0 { "bc" } else { "mq" };
        let mut kid = Kid::spawn(&[], "create_loop", &[kind.to_string()]);
        assert_eq!(kid.expect_line(PATIENCE), "ready");
        std::thread::sleep(Duration::from_micros(rng.below(80_000)));
        pids.insert(kid.pid());
        kid.kill9();
    }
    let mut half_made = Vec::new();
    let mut complete = 0;
    let mut new: Vec<String> = listing().difference(&before).cloned().collect();
    new.sort();
    // Only ring names: other tests' planted debris has other names.
    for name in new
        .iter()
        .filter(|n| n.starts_with("shoal-bc-") || n.starts_with("shoal-mq-"))
    {
        let Some(mut f) = open_ro(name) else {
            continue; // gone meanwhile
        };
        if lease_held(&f) {
            continue; // a live ring of some test
        }
        let size = f.metadata().map(|m| m.len()).unwrap_or(0);
        let mut head = vec![0u8; size.min(PAGE) as usize];
        if let Err(e) = f.read_exact(&mut head) {
            if exists(name) {
                half_made.push(format!("{name} ({size} bytes): read: {e}"));
            }
            continue;
        }
        match validate_bytes(&head, size) {
            Ok(h) if pids.contains(&h.creator_pid) => {
                complete += 1;
                remove_ours(name);
            }
            Ok(_) => {} // another test's ring whose owner died
            Err(e) if !exists(name) => drop(e),
            Err(e) => half_made.push(format!("{name} ({size} bytes): {e}")),
        }
    }
    eprintln!("{ROUNDS} kills; {complete} complete rings left (killed after creation)");
    assert!(half_made.is_empty(), "half-made files: {half_made:#?}");
}

// ---------------------------------------------------------------------------
// cleanup_stale.

fn handle_of(line: String) -> Handle {
    line.parse()
        .unwrap_or_else(|e| panic!("not a handle: {line:?}: {e}"))
}

/// (c) Rings are judged by leases: a ring whose participants are all dead
/// goes; a live one stays, in this process or another; a ring whose creator
/// died stays while a participant lives; debris of ours with no lease goes,
/// debris somebody holds stays.
#[test]
fn cleanup_stale_removes_what_nobody_holds_and_keeps_the_rest() {
    // Live: ours, and a child's.
    let mine = MpmcRing::create(&small_mpmc()).unwrap();
    let mine_name = mine.handle().name().to_string();
    let mut live_kid = Kid::spawn(&[], "hold_ring", &["bc".into()]);
    let live = handle_of(live_kid.expect_line(PATIENCE));
    // Dead: a child creates a ring and is SIGKILLed.
    let mut dead_kid = Kid::spawn(&[], "hold_ring", &["mq".into()]);
    let dead = handle_of(dead_kid.expect_line(PATIENCE));
    dead_kid.kill9();
    // Creator dead, a participant (our consumer) alive.
    let mut orphan_kid = Kid::spawn(&[], "hold_ring", &["mq".into()]);
    let orphan = handle_of(orphan_kid.expect_line(PATIENCE));
    let consumer = MpmcConsumer::attach(&orphan).expect("attach to the orphan");
    orphan_kid.kill9();
    // Debris.
    let empty = Planted::new("empty", &[], false);
    let garbage = Planted::new("garbage", &[0xAB; 8192], false);
    let short = Planted::new("short", &[0xCD; 100], false);
    let held = Planted::new("held", &[0xEF; 8192], true);

    let report = cleanup_stale().expect("cleanup_stale");
    let removed: HashSet<&str> = report.removed.iter().map(String::as_str).collect();
    for (what, name) in [
        ("our live ring", mine_name.as_str()),
        ("a live child's ring", live.name().as_str()),
        ("a ring with a live participant", orphan.name().as_str()),
        ("debris somebody holds", held.name.as_str()),
    ] {
        assert!(!removed.contains(name), "removed {what} {name}");
        assert!(exists(name), "{what} {name} vanished");
    }
    // Gone, whether this call or a neighbour's removed it.
    for (what, name) in [
        ("a ring of dead participants", dead.name().as_str()),
        ("an empty file", empty.name.as_str()),
        ("a bad-magic file", garbage.name.as_str()),
        ("a file shorter than a header", short.name.as_str()),
    ] {
        assert!(!exists(name), "kept {what} {name} (removed {removed:?})");
    }
    assert!(report.kept >= 4, "{report:?}");
    // The live rings still work.
    assert!(shoal_shm_ring::BroadcastReader::attach(&live).is_ok());
    assert!(mine.consumer().is_ok());

    // The orphan's last participant leaves: now it goes.
    drop(consumer);
    cleanup_stale().expect("cleanup_stale");
    assert!(
        !exists(orphan.name().as_str()),
        "the orphan outlived its last participant"
    );

    live_kid.kill9();
    remove_ours(live.name().as_str());
}

/// (c) An overflow record outlives its producer while its ring has a live
/// participant, so a consumer can still take it; with its ring gone, it goes.
#[test]
fn cleanup_stale_keeps_overflow_records_a_live_ring_needs() {
    const BIG: usize = 40_000; // more than half of a 64 KiB ring
    let ring = MpmcRing::create(&small_mpmc()).unwrap();
    let h = ring.handle();
    let mut consumer = MpmcConsumer::attach(&h).unwrap();
    let mut kid = Kid::spawn(&[], "send_big", &[h.to_string(), BIG.to_string()]);
    assert_eq!(kid.expect_line(PATIENCE), "sent");
    let status = kid.wait(PATIENCE);
    assert!(status.success(), "producer: {status}");
    let ov = overflow_files(h.name());
    assert_eq!(ov.len(), 1, "overflow files: {ov:?}");

    let report = cleanup_stale().expect("cleanup_stale");
    assert!(
        !report.removed.contains(&ov[0]) && exists(&ov[0]),
        "removed the overflow record {} a consumer still needs",
        ov[0]
    );
    let g = consumer
        .take_with(Wait::timeout(Duration::from_secs(5)))
        .expect("take the big record");
    assert_eq!(g.len(), BIG);
    assert!(common::check(7, &g), "the big record's bytes changed");
    drop(g);

    // A record whose ring is gone: nobody can ever take it.
    let ring2 = MpmcRing::create(&small_mpmc()).unwrap();
    let h2 = ring2.handle();
    let mut kid = Kid::spawn(&[], "send_big", &[h2.to_string(), BIG.to_string()]);
    assert_eq!(kid.expect_line(PATIENCE), "sent");
    assert!(kid.wait(PATIENCE).success());
    let ov2 = overflow_files(h2.name());
    assert_eq!(ov2.len(), 1, "overflow files: {ov2:?}");
    drop(ring2);
    assert!(!exists(h2.name().as_str()), "the ring's drop unlinks it");
    cleanup_stale().expect("cleanup_stale");
    assert!(
        !exists(&ov2[0]),
        "kept {} although its ring is gone",
        ov2[0]
    );
    for n in ov2 {
        remove_ours(&n);
    }
}

/// (d) A ring held by a process in another pid namespace (its pid means
/// nothing here) survives `cleanup_stale`, can be attached and used from
/// here, and goes once that process is dead.
#[test]
fn cleanup_stale_respects_rings_held_in_another_pid_namespace() {
    const UNSHARE: [&str; 5] = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"];
    let mut probe = UNSHARE.to_vec();
    probe.push("true");
    if let Some(why) = namespaces_unavailable(&probe) {
        eprintln!("skipped: {why}");
        return;
    }
    let mut kid = Kid::spawn(&UNSHARE, "ns_holder", &[]);
    let h = handle_of(kid.expect_line(PATIENCE));
    let name = h.name().to_string();

    // Its header pid is that of another namespace: judged by pid (and start
    // time) it looks dead from here.
    let seg = shoal_shm_ring::Segment::attach(h.name(), SegmentKind::Mpmc).expect("attach");
    let creator = seg.creator();
    drop(seg);
    eprintln!("creator as recorded: {creator:?}");
    assert!(
        !creator.is_alive(),
        "expected the recorded creator {creator:?} to look dead from outside its namespace"
    );

    let report = cleanup_stale().expect("cleanup_stale");
    assert!(!report.removed.contains(&name), "removed a live ring");
    assert!(exists(&name), "the ring vanished");

    // Attaching and sending from here works; the consumer there takes it.
    drop(MpmcConsumer::attach(&h).expect("attach a consumer from outside"));
    let mut p = MpmcProducer::attach(&h).expect("attach a producer from outside");
    p.send_with(b"across namespaces", Wait::timeout(Duration::from_secs(5)))
        .expect("send");
    assert_eq!(kid.expect_line(PATIENCE), "took across namespaces");
    drop(p);
    cleanup_stale().expect("cleanup_stale");
    assert!(
        exists(&name),
        "removed a live ring after our endpoints left"
    );

    // Dead (unshare's death kills its child): removed.
    kid.kill9();
    let t0 = Instant::now();
    while exists(&name) && t0.elapsed() < Duration::from_secs(5) {
        cleanup_stale().expect("cleanup_stale");
        if exists(&name) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let gone = !exists(&name);
    remove_ours(&name);
    assert!(gone, "kept a ring whose holder is dead");
}

//! Hostile inputs: attaching to a corrupt, truncated or foreign segment must
//! give a typed [`Error`], never a panic, a hang, an out-of-bounds read or a
//! SIGBUS; garbage inside a live ring must give `Ok` or a typed `Err`.
//!
//! Every case makes its own segment with the public API, damages the file
//! under `/dev/shm` with plain file I/O, attaches, and puts the bytes back.
//! Cases that put garbage inside a mapped ring could crash the process, so
//! they run in a child process of this test binary with a time limit: a
//! SIGSEGV, a panic or a hang there is one failed test, not a dead test run.
//!
//! Byte offsets of the header are those of `layout::SegmentHeader`
//! (`repr(C)`); `header_field_offsets_match_the_struct` checks them against
//! the library's own copy of a real header.
#![allow(clippy::disallowed_types)] // tests use std atomics directly

use proptest::collection::vec;
use proptest::prelude::*;
use shoal_shm_ring::segment::validate_bytes;
use shoal_shm_ring::{
    cleanup_stale, BroadcastConfig, BroadcastReader, BroadcastWriter, Error, Handle, HeaderCopy,
    MpmcConfig, MpmcConsumer, MpmcProducer, MpmcRing, PeerOptions, ReaderOptions, Segment,
    SegmentKind, SegmentName, Wait, ABI_FINGERPRINT, FORMAT_TAG_LEN, LAYOUT_VERSION,
};
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Layout facts (from layout.rs; checked where the public API allows).

/// The header page; control lines start here.
const PAGE: u64 = 4096;
/// `size_of::<SegmentHeader>()`.
const HEADER_LEN: usize = 136;
/// `b"SHOALSEG"` little-endian.
const MAGIC: u64 = u64::from_le_bytes(*b"SHOALSEG");
/// `STATE_READY` and `STATE_POISONED`.
const STATE_READY: u64 = 0x5245_4459;
const STATE_POISONED: u64 = 0xDEAD_0001;
/// `MAX_SLOTS`.
const MAX_SLOTS: u64 = 1024;
/// `RECORD_HEADER` and `RECORD_ALIGN`.
const RECORD_HEADER: u64 = 16;
const RECORD_ALIGN: u64 = 64;
/// Record states (`layout::rec`).
const REC_RESERVED: u64 = 1;
const REC_DATA: u64 = 2;
const REC_PAD: u64 = 3;
const REC_OVERFLOW: u64 = 4;
const REC_TOMBSTONE: u64 = 5;
const REC_RELEASED: u64 = 6;
/// `size_of::<BroadcastControl>()`: reader slots follow it. (These offsets
/// are pinned by the crate's `layout::offsets` unit test.)
const BROADCAST_CONTROL: u64 = 1024;
/// Offsets inside `MpmcControl`: the lock line (`tail` at 8, `reclaim` at
/// 16), then `head` on the next 128-byte line pair.
const MPMC_TAIL: u64 = 8;
const MPMC_RECLAIM: u64 = 16;
const MPMC_HEAD: u64 = 128;
/// In a `Slot`: the ownership word at 0 (state in its low byte, generation
/// in its high half), `cursor` u64 at 24.
const SLOT_CURSOR: u64 = 24;
const SLOT_ACTIVE: u64 = 3;

/// One scalar field of `SegmentHeader`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Field {
    name: &'static str,
    off: u64,
    width: u64,
}

const fn field(name: &'static str, off: u64, width: u64) -> Field {
    Field { name, off, width }
}

const F_MAGIC: Field = field("magic", 0, 8);
const F_VERSION: Field = field("layout_version", 8, 4);
const F_STATE: Field = field("state", 12, 4);
const F_ABI: Field = field("abi_fingerprint", 16, 8);
const F_KIND: Field = field("kind", 24, 4);
const F_FLAGS: Field = field("flags", 28, 4);
const F_TOTAL: Field = field("total_size", 32, 8);
const F_CONTROL_OFF: Field = field("control_offset", 40, 8);
const F_CONTROL_SIZE: Field = field("control_size", 48, 8);
const F_DATA_OFF: Field = field("data_offset", 56, 8);
const F_DATA_CAP: Field = field("data_capacity", 64, 8);
const F_SLOTS: Field = field("slots", 72, 4);
const F_PRODUCERS: Field = field("producer_slots", 76, 4);
const F_UID: Field = field("creator_uid", 80, 4);
const F_PID: Field = field("creator_pid", 84, 4);
const F_START: Field = field("creator_start_time", 88, 8);
const F_PAYLOAD_LEN: Field = field("payload_len", 96, 8);
/// `payload_format`, 32 bytes.
const FORMAT_OFF: u64 = 104;

const FIELDS: [Field; 17] = [
    F_MAGIC,
    F_VERSION,
    F_STATE,
    F_ABI,
    F_KIND,
    F_FLAGS,
    F_TOTAL,
    F_CONTROL_OFF,
    F_CONTROL_SIZE,
    F_DATA_OFF,
    F_DATA_CAP,
    F_SLOTS,
    F_PRODUCERS,
    F_UID,
    F_PID,
    F_START,
    F_PAYLOAD_LEN,
];

fn header_value(h: &HeaderCopy, f: Field) -> u64 {
    match f.name {
        "magic" => h.magic,
        "layout_version" => h.layout_version.into(),
        "state" => h.state.into(),
        "abi_fingerprint" => h.abi_fingerprint,
        "kind" => h.kind.into(),
        "flags" => h.flags.into(),
        "total_size" => h.total_size,
        "control_offset" => h.control_offset,
        "control_size" => h.control_size,
        "data_offset" => h.data_offset,
        "data_capacity" => h.data_capacity,
        "slots" => h.slots.into(),
        "producer_slots" => h.producer_slots.into(),
        "creator_uid" => h.creator_uid.into(),
        "creator_pid" => h.creator_pid.into(),
        "creator_start_time" => h.creator_start_time,
        "payload_len" => h.payload_len,
        other => unreachable!("no field {other}"),
    }
}

fn decode(bytes: &[u8], f: Field) -> u64 {
    let at = f.off as usize;
    if f.width == 4 {
        u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()).into()
    } else {
        u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
    }
}

fn encode(bytes: &mut [u8], f: Field, v: u64) {
    let at = f.off as usize;
    let w = f.width as usize;
    bytes[at..at + w].copy_from_slice(&v.to_le_bytes()[..w]);
}

// ---------------------------------------------------------------------------
// Helpers.

/// xorshift64: deterministic garbage without another dependency.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Serialises the tests that forge headers (another layout version, a
/// foreign magic) with the one that runs `cleanup_stale`. Leases already
/// keep such live segments safe; this only keeps the cases apart in time.
static SHM_LOCK: Mutex<()> = Mutex::new(());

fn shm_lock() -> MutexGuard<'static, ()> {
    SHM_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn shm_path(name: &SegmentName) -> PathBuf {
    Path::new("/dev/shm").join(name.as_str())
}

fn open_rw(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

fn read_at(file: &File, off: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, off).expect("read_exact_at");
    buf
}

fn poke(file: &File, off: u64, width: u64, v: u64) {
    file.write_all_at(&v.to_le_bytes()[..width as usize], off)
        .expect("write_all_at");
}

fn peek_u64(file: &File, off: u64) -> u64 {
    u64::from_le_bytes(read_at(file, off, 8).try_into().unwrap())
}

/// Reads every byte, so a bad pointer or length shows up here.
fn touch(bytes: &[u8]) -> u64 {
    std::hint::black_box(
        bytes
            .iter()
            .fold(0u64, |a, &b| a.wrapping_add(u64::from(b))),
    )
}

/// A fresh, unused segment name.
fn fresh_name(tag: &str) -> SegmentName {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    SegmentName::new(&format!(
        "shoal-hostile-{}-{n}-{nanos:08x}-{tag}",
        std::process::id()
    ))
    .expect("valid test name")
}

/// First byte of the crate's lease space (`lease::LEASE_BASE`): every lock
/// at or past it counts as a live participant for `cleanup_stale`.
const LEASE_BASE: i64 = 1 << 40;

/// Takes a lease on the file open as `file` (its own open file
/// description), as a live participant would; dropped with `file`.
fn hold_lease(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: `flock` is a plain C struct; all-zero is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = LEASE_BASE + (1 << 20); // past every slot byte
    fl.l_len = 1;
    // SAFETY: `fl` is a valid flock that outlives the call; fcntl does not
    // keep the pointer; the descriptor is open.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &mut fl) };
    assert_eq!(r, 0, "F_OFD_SETLK: {}", std::io::Error::last_os_error());
}

/// A file (or directory, symlink, FIFO) under a shoal- name, removed on drop.
struct Planted {
    name: SegmentName,
    path: PathBuf,
    /// Holds a lease so that a `cleanup_stale` running meanwhile (in a test
    /// next door) does not remove the file as debris.
    _lease: Option<File>,
}

impl Planted {
    fn new(tag: &str) -> Self {
        let name = fresh_name(tag);
        let path = shm_path(&name);
        Planted {
            name,
            path,
            _lease: None,
        }
    }

    /// A regular file with mode 0600 holding `bytes`, with a lease held on
    /// it for as long as the value lives.
    fn file(tag: &str, bytes: &[u8]) -> Self {
        let mut p = Self::debris(tag, bytes);
        let f = open_rw(&p.path);
        hold_lease(&f);
        p._lease = Some(f);
        p
    }

    /// As [`Planted::file`], but nobody holds a lease: debris that
    /// `cleanup_stale` removes.
    fn debris(tag: &str, bytes: &[u8]) -> Self {
        let p = Self::new(tag);
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&p.path)
            .expect("create planted file");
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .expect("chmod 0600");
        f.write_all_at(bytes, 0).expect("write planted file");
        p
    }

    fn handle(&self) -> Handle {
        Handle::new(self.name)
    }
}

impl Drop for Planted {
    fn drop(&mut self) {
        let r = match std::fs::symlink_metadata(&self.path) {
            Ok(m) if m.is_dir() => std::fs::remove_dir(&self.path),
            Ok(_) => std::fs::remove_file(&self.path),
            Err(_) => Ok(()),
        };
        if let Err(e) = r {
            eprintln!("could not remove {}: {e}", self.path.display());
        }
    }
}

/// Keeps the ring (and so the segment) alive: a writer or an `MpmcRing`.
type Owner = Box<dyn std::any::Any>;

/// A real segment made with the public API, plus its file.
struct Target {
    kind: SegmentKind,
    handle: Handle,
    path: PathBuf,
    file: File,
    good: HeaderCopy,
    len: u64,
    // Dropped last: the file is restored before the owner unmaps it.
    _owner: Option<Owner>,
}

impl Target {
    fn broadcast() -> Self {
        let w =
            BroadcastWriter::create(&BroadcastConfig::new(1 << 16, 4)).expect("create broadcast");
        Self::new(w.handle(), SegmentKind::Broadcast, Some(Box::new(w)))
    }

    fn mpmc() -> Self {
        let r = MpmcRing::create(&MpmcConfig::new(1 << 16, 2, 2)).expect("create mpmc");
        Self::new(r.handle(), SegmentKind::Mpmc, Some(Box::new(r)))
    }

    fn of(kind: SegmentKind) -> Self {
        match kind {
            SegmentKind::Broadcast => Self::broadcast(),
            _ => Self::mpmc(),
        }
    }

    /// Wraps the segment `handle` names; `owner` (if any) keeps it alive.
    fn new(handle: Handle, kind: SegmentKind, owner: Option<Owner>) -> Self {
        let path = shm_path(handle.name());
        let file = open_rw(&path);
        let len = file.metadata().expect("fstat").len();
        let good = *Segment::attach(handle.name(), kind)
            .expect("a fresh segment attaches")
            .header();
        Target {
            kind,
            handle,
            path,
            file,
            good,
            len,
            _owner: owner,
        }
    }

    fn attach(&self) -> Result<Segment, Error> {
        Segment::attach(self.handle.name(), self.kind)
    }

    /// Attaches the way an application would (a reader, or a consumer and a
    /// producer); returns the first error.
    fn attach_endpoint(&self) -> Result<(), Error> {
        match self.kind {
            SegmentKind::Broadcast => BroadcastReader::attach(&self.handle).map(drop),
            _ => {
                MpmcConsumer::attach(&self.handle)?;
                MpmcProducer::attach(&self.handle).map(drop)
            }
        }
    }

    fn poke(&self, f: Field, v: u64) {
        poke(&self.file, f.off, f.width, v);
    }

    /// The whole file, written back (length and bytes) on drop.
    fn snapshot(&self) -> Restore<'_> {
        Restore {
            file: &self.file,
            bytes: read_at(&self.file, 0, self.len as usize),
        }
    }
}

struct Restore<'a> {
    file: &'a File,
    bytes: Vec<u8>,
}

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        let r = self
            .file
            .set_len(self.bytes.len() as u64)
            .and_then(|()| self.file.write_all_at(&self.bytes, 0));
        if let Err(e) = r {
            eprintln!("could not restore a segment: {e}");
        }
    }
}

/// A predicate on an attach outcome.
type Check = dyn Fn(&Result<Segment, Error>) -> bool;

/// What one case must give.
struct Want {
    text: &'static str,
    check: Box<Check>,
}

macro_rules! want {
    ($p:pat $(if $g:expr)?) => {
        {
            #[allow(clippy::redundant_pattern_matching)]
            let check = move |r: &Result<Segment, Error>| matches!(r, $p $(if $g)?);
            Want {
                text: stringify!($p $(if $g)?),
                check: Box::new(check),
            }
        }
    };
}

/// Applies `patches` (and a new file length), attaches with
/// `Segment::attach` and with the endpoint API, checks the outcome, and
/// restores the file.
fn run_case(t: &Target, what: &str, patches: &[(Field, u64)], new_len: Option<u64>, want: Want) {
    let _restore = t.snapshot();
    for &(f, v) in patches {
        t.poke(f, v);
    }
    if let Some(l) = new_len {
        t.file.set_len(l).expect("set_len");
    }
    let t0 = Instant::now();
    let r = t.attach();
    assert!(
        (want.check)(&r),
        "{:?} {what}: got {r:?}, want {}",
        t.kind,
        want.text
    );
    if let Err(Error::Corrupt { segment, .. } | Error::WrongOwner { segment, .. }) = &r {
        assert_eq!(
            segment.0.as_ref(),
            Some(t.handle.name()),
            "{what}: the error names another segment: {r:?}"
        );
    }
    if let Err(e @ (Error::Corrupt { .. } | Error::WrongOwner { .. } | Error::Io { .. })) = &r {
        let text = e.to_string();
        assert!(
            text.contains(t.handle.name().as_str()),
            "{what}: {text:?} does not name the segment"
        );
    }
    let e = t.attach_endpoint();
    match (&r, &e) {
        (Ok(_), Ok(())) => {}
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{what}: endpoint disagrees"),
        _ => panic!("{what}: Segment::attach gave {r:?} but the endpoint gave {e:?}"),
    }
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "{what}: attach took {:?}",
        t0.elapsed()
    );
}

/// Several bad values of a field: 0, all ones, off by one, huge, top bit.
fn bad_values(f: Field, orig: u64) -> Vec<u64> {
    let ones = if f.width == 4 {
        u64::from(u32::MAX)
    } else {
        u64::MAX
    };
    let top = 1u64 << (f.width * 8 - 1);
    let huge = if f.width == 4 { 1 << 30 } else { 1 << 62 };
    let mut v = vec![
        0,
        ones,
        orig.wrapping_add(1) & ones,
        orig.wrapping_sub(1) & ones,
        huge,
        orig ^ top,
        ones - orig,
    ];
    v.sort_unstable();
    v.dedup();
    v.retain(|&x| x != orig);
    v
}

/// `Error::Corrupt` about `what`, with the value `found` if given.
fn corrupt(what: &'static str, found: Option<u64>) -> Want {
    Want {
        text: what,
        check: Box::new(move |r| {
            matches!(r, Err(Error::Corrupt { what: w, found: f, .. })
                if *w == what && (found.is_none() || found == Some(*f)))
        }),
    }
}

/// The outcome a single corrupted field must give.
fn want_for(t: &Target, f: Field, v: u64) -> Want {
    let kind = t.kind;
    let len = t.len;
    let pid = t.good.creator_pid;
    match f.name {
        "magic" => corrupt("magic", Some(v)),
        "layout_version" => want!(
            Err(Error::VersionMismatch { ours, theirs, .. })
                if *ours == LAYOUT_VERSION && u64::from(*theirs) == v
        ),
        "state" if v == STATE_POISONED => want!(Err(Error::Poisoned { .. })),
        // Initializing: refused at once (named files are always complete).
        "state" if v == 0 => want!(Err(Error::NotReady { pid: p, .. }) if *p == pid),
        "state" => corrupt("state", Some(v)),
        "abi_fingerprint" => want!(
            Err(Error::AbiMismatch { ours, theirs, .. }) if *ours == ABI_FINGERPRINT && *theirs == v
        ),
        "kind" => {
            let theirs = match v {
                1 => Some(SegmentKind::Broadcast),
                2 => Some(SegmentKind::Mpmc),
                3 => Some(SegmentKind::Overflow),
                4 => Some(SegmentKind::Region),
                _ => None,
            };
            match theirs {
                Some(k) => want!(
                    Err(Error::WrongKind { ours, theirs, .. })
                        if *ours == kind.name() && *theirs == k.name()
                ),
                None => corrupt("kind", Some(v)),
            }
        }
        "flags" => corrupt("flags", Some(v)),
        "total_size" => {
            let why = if v > len { "truncated" } else { "longer" };
            want!(
                Err(Error::Corrupt { what: "total_size", found, expected, .. })
                    if *found == v && expected.contains(why)
            )
        }
        "control_offset" => corrupt("control_offset", Some(v)),
        "control_size" if PAGE.checked_add(v).is_none() => corrupt("control_size", Some(v)),
        "control_size" => corrupt("data_offset", None),
        "data_offset" => corrupt("data_offset", Some(v)),
        "data_capacity" => corrupt("data_capacity", Some(v)),
        "slots" if v == 0 || v > MAX_SLOTS => corrupt("slots", Some(v)),
        // A slot count whose slots still fit the (page-rounded) control area
        // is harmless; any other is a control_size mismatch.
        "slots" => want!(
            Ok(_)
                | Err(Error::Corrupt {
                    what: "control_size",
                    ..
                })
        ),
        "producer_slots" if kind == SegmentKind::Broadcast || v == 0 || v > MAX_SLOTS => {
            corrupt("producer_slots", Some(v))
        }
        "producer_slots" => want!(
            Ok(_)
                | Err(Error::Corrupt {
                    what: "control_size",
                    ..
                })
        ),
        // The file's owner is us: a header claiming another creator is
        // corrupt (WrongOwner is only for the file's own uid).
        "creator_uid" => want!(
            Err(Error::Corrupt { what: "creator_uid", found, expected, .. })
                if *found == v && *expected == "the file owner's uid"
        ),
        "creator_pid" if v == 0 => corrupt("creator_pid", Some(0)),
        // The creator's identity is informational: any nonzero value attaches.
        "creator_pid" | "creator_start_time" => want!(Ok(_)),
        "payload_len" => corrupt("payload_len", Some(v)),
        other => unreachable!("no expectation for {other}"),
    }
}

fn every_field_corrupted(kind: SegmentKind) {
    let _lock = shm_lock();
    let t = Target::of(kind);
    let mut cases = 0;
    for f in FIELDS {
        let orig = header_value(&t.good, f);
        let mut values = bad_values(f, orig);
        if f == F_STATE {
            values.push(STATE_POISONED);
        }
        if f == F_KIND {
            values.extend([1, 2, 3, 4]);
            values.retain(|&v| v != orig);
        }
        for v in values {
            let what = format!("{} = {v:#x} (was {orig:#x})", f.name);
            run_case(&t, &what, &[(f, v)], None, want_for(&t, f, v));
            cases += 1;
        }
    }
    assert!(cases > 90, "only {cases} cases ran");
    // Every byte is back: the segment attaches again.
    t.attach().expect("restored segment attaches");
    t.attach_endpoint()
        .expect("restored segment attaches as an endpoint");
}

/// Runs `body` in a child process of this test binary (the test `name`,
/// which must call this function), failing on a nonzero exit, a signal or
/// more than `limit`.
fn isolated(name: &str, limit: Duration, body: fn()) {
    const CHILD: &str = "SHOAL_HOSTILE_CHILD";
    if std::env::var(CHILD).as_deref() == Ok(name) {
        body();
        return;
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut child = Command::new(exe)
        .args([
            name,
            "--exact",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, name)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the child test");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for the child") {
            break Some(s);
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    let Some(status) = status else {
        panic!("{name}: hung (killed after {limit:?})\n--- stdout\n{out}\n--- stderr\n{err}");
    };
    use std::os::unix::process::ExitStatusExt;
    assert!(
        status.success(),
        "{name}: child failed ({status}, signal {:?})\n--- stdout\n{out}\n--- stderr\n{err}",
        status.signal()
    );
    assert!(
        out.contains("1 passed"),
        "{name}: the child did not run the test\n--- stdout\n{out}\n--- stderr\n{err}"
    );
}

/// The data area of the ring a reader or consumer maps, learned from the
/// guard of the first record (at ring position 0).
#[derive(Debug, Clone, Copy)]
struct Area {
    start: usize,
    cap: u64,
}

impl Area {
    fn from_first_record(payload: &[u8], cap: u64) -> Self {
        Area {
            start: payload.as_ptr() as usize - RECORD_HEADER as usize,
            cap,
        }
    }

    /// Checks that `payload` lies inside the data area, then reads it all;
    /// returns the ring offset of its record.
    fn check(&self, payload: &[u8], what: &str) -> u64 {
        let p = payload.as_ptr() as usize;
        let end = self.start + self.cap as usize;
        assert!(
            p >= self.start + RECORD_HEADER as usize && p <= end && payload.len() <= end - p,
            "{what}: a {}-byte record at data offset {} runs past the {}-byte data area",
            payload.len(),
            p as i128 - self.start as i128 - RECORD_HEADER as i128,
            self.cap
        );
        touch(payload);
        (p - self.start) as u64 - RECORD_HEADER
    }
}

const fn record_size(len: u64) -> u64 {
    (RECORD_HEADER + len + RECORD_ALIGN - 1) & !(RECORD_ALIGN - 1)
}

/// The first absolute position at or after `from` that maps to `off`.
fn position_at(from: u64, off: u64, cap: u64) -> u64 {
    from + (off.wrapping_sub(from) & (cap - 1))
}

/// Writes a plausible record header on every line of the data area: each
/// commit word names the position a reader walking forward from `from`
/// meets there, with a random state, length and aux word.
fn forge_records(file: &File, data_off: u64, cap: u64, from: u64, rng: &mut XorShift) {
    let mut buf = vec![0u8; cap as usize];
    rng.fill(&mut buf);
    for line in (0..cap).step_by(RECORD_ALIGN as usize) {
        let pos = position_at(from, line, cap);
        // Mostly plausible records, so readers get far; some of everything.
        let state = match rng.below(32) {
            0..=23 => REC_DATA,
            24..=25 => REC_PAD,
            26 => REC_OVERFLOW,
            27 => REC_TOMBSTONE,
            28 => REC_RESERVED,
            29 => REC_RELEASED,
            _ => rng.below(64),
        };
        let to_end = cap - line - RECORD_HEADER;
        let len: u64 = match rng.below(32) {
            0..=23 => rng.below(512),
            24..=25 => to_end,
            26..=27 => cap / 2 - RECORD_HEADER - rng.below(2) * RECORD_ALIGN,
            28 => 16,
            29 => rng.below(cap),
            _ => rng.below(1 << 32),
        };
        let at = line as usize;
        buf[at..at + 8].copy_from_slice(&(pos | state).to_le_bytes());
        buf[at + 8..at + 12].copy_from_slice(&(len as u32).to_le_bytes());
    }
    file.write_all_at(&buf, data_off).expect("forge records");
}

fn fill_random(file: &File, off: u64, len: u64, rng: &mut XorShift) {
    let mut buf = vec![0u8; len as usize];
    rng.fill(&mut buf);
    file.write_all_at(&buf, off).expect("fill random");
}

const SHORT: Duration = Duration::from_millis(5);
/// Fruitless polls after which a drain gives up for this round.
const STUCK: u32 = 200;

// ---------------------------------------------------------------------------
// The header.

#[test]
fn header_field_offsets_match_the_struct() {
    for kind in [SegmentKind::Broadcast, SegmentKind::Mpmc] {
        let t = Target::of(kind);
        let bytes = read_at(&t.file, 0, HEADER_LEN);
        for f in FIELDS {
            assert_eq!(
                decode(&bytes, f),
                header_value(&t.good, f),
                "{kind:?} {}",
                f.name
            );
        }
        assert_eq!(
            bytes[FORMAT_OFF as usize..FORMAT_OFF as usize + FORMAT_TAG_LEN],
            t.good.payload_format
        );
        assert_eq!(t.good.magic, MAGIC);
        assert_eq!(u64::from(t.good.state), STATE_READY);
        assert_eq!(t.good.control_offset, PAGE);
        assert_eq!(t.good.total_size, t.len);
    }
}

#[test]
fn every_broadcast_header_field_corrupted_gives_a_typed_error() {
    every_field_corrupted(SegmentKind::Broadcast);
}

#[test]
fn every_mpmc_header_field_corrupted_gives_a_typed_error() {
    every_field_corrupted(SegmentKind::Mpmc);
}

#[test]
fn consistent_forgeries_are_still_refused() {
    let t = Target::broadcast();
    let g = t.good;
    let (co, cs, dof, cap) = (
        g.control_offset,
        g.control_size,
        g.data_offset,
        g.data_capacity,
    );

    // A data area that is not a power of two, below the minimum, above the
    // maximum (a sparse 4 GiB file), each with matching sizes and file length.
    for cap2 in [cap - PAGE, 2048, 1 << 32] {
        let total = dof + cap2;
        run_case(
            &t,
            &format!("data_capacity {cap2}, consistent"),
            &[(F_DATA_CAP, cap2), (F_TOTAL, total)],
            Some(total),
            want!(Err(Error::Corrupt {
                what: "data_capacity",
                ..
            })),
        );
    }
    // More control pages than the slots need.
    let total = dof + PAGE + cap;
    run_case(
        &t,
        "control_size one page too large",
        &[
            (F_CONTROL_SIZE, cs + PAGE),
            (F_DATA_OFF, dof + PAGE),
            (F_TOTAL, total),
        ],
        Some(total),
        want!(Err(Error::Corrupt {
            what: "control_size",
            ..
        })),
    );
    // A data area that does not start on a page.
    let total = dof + 64 + cap;
    run_case(
        &t,
        "data_offset off the page grid",
        &[
            (F_CONTROL_SIZE, cs + 64),
            (F_DATA_OFF, dof + 64),
            (F_TOTAL, total),
        ],
        Some(total),
        want!(Err(Error::Corrupt {
            what: "data_offset",
            ..
        })),
    );
    // More slots than the control area holds, with a page-rounded size.
    run_case(
        &t,
        "1024 slots in one control page",
        &[(F_SLOTS, MAX_SLOTS)],
        None,
        want!(Err(Error::Corrupt {
            what: "control_size",
            ..
        })),
    );
    // Sizes that wrap around u64.
    run_case(
        &t,
        "control_size wraps",
        &[(F_CONTROL_SIZE, u64::MAX - co + 1), (F_DATA_OFF, 0)],
        None,
        want!(Err(Error::Corrupt {
            what: "control_size",
            ..
        })),
    );
    run_case(
        &t,
        "data_offset + data_capacity overflows",
        &[(F_DATA_CAP, u64::MAX - dof + 1)],
        None,
        want!(Err(Error::Corrupt {
            what: "data_capacity",
            ..
        })),
    );
    t.attach().expect("restored segment attaches");
}

#[test]
fn a_ring_header_attached_as_an_overflow_segment_is_refused() {
    let t = Target::broadcast();
    let ov = |t: &Target| Segment::attach(t.handle.name(), SegmentKind::Overflow);
    let _r = t.snapshot();
    t.poke(F_KIND, 3);
    let r = ov(&t);
    assert!(
        matches!(r, Err(Error::Corrupt { what: "slots", .. })),
        "{r:?}"
    );
    t.poke(F_SLOTS, 0);
    let r = ov(&t);
    assert!(
        matches!(
            r,
            Err(Error::Corrupt {
                what: "control_size",
                ..
            })
        ),
        "{r:?}"
    );
    t.poke(F_CONTROL_SIZE, 0);
    t.poke(F_DATA_OFF, PAGE);
    t.poke(F_DATA_CAP, t.len - PAGE);
    t.poke(F_PAYLOAD_LEN, t.len);
    let r = ov(&t);
    assert!(
        matches!(
            r,
            Err(Error::Corrupt {
                what: "payload_len",
                ..
            })
        ),
        "{r:?}"
    );
    t.poke(F_PAYLOAD_LEN, 7);
    let seg = ov(&t).expect("a consistent overflow header attaches");
    assert_eq!(seg.header().payload_len, 7);
}

#[test]
fn garbage_in_the_payload_format_and_header_padding_is_harmless() {
    for kind in [SegmentKind::Broadcast, SegmentKind::Mpmc] {
        let t = Target::of(kind);
        let _r = t.snapshot();
        let mut rng = XorShift::new(7);
        // Padding after the header, up to the control lines.
        fill_random(
            &t.file,
            HEADER_LEN as u64,
            PAGE - HEADER_LEN as u64,
            &mut rng,
        );
        // A format tag that is not UTF-8 and has no NUL.
        let tag = [0xFFu8; FORMAT_TAG_LEN];
        t.file.write_all_at(&tag, FORMAT_OFF).unwrap();
        let seg = t
            .attach()
            .expect("garbage outside the checked fields attaches");
        assert_eq!(seg.header().payload_format, tag);
        drop(seg);
        if kind == SegmentKind::Broadcast {
            let r = BroadcastReader::attach(&t.handle).expect("reader attaches");
            assert_eq!(r.payload_format(), "\u{FFFD}".repeat(FORMAT_TAG_LEN));
            drop(r);
            let mut want = [0u8; FORMAT_TAG_LEN];
            want[..15].copy_from_slice(b"rkyv-le-aligned");
            let opts = ReaderOptions {
                expect_format: Some(want),
                ..ReaderOptions::default()
            };
            let r = BroadcastReader::attach_with(&t.handle, &opts);
            assert!(
                matches!(&r, Err(Error::FormatMismatch { ours, .. }) if ours == "rkyv-le-aligned"),
                "{r:?}"
            );
        } else {
            let r = MpmcConsumer::attach_with(&t.handle, PeerOptions::default(), Some([b'x'; 32]));
            assert!(matches!(r, Err(Error::FormatMismatch { .. })), "{r:?}");
            MpmcConsumer::attach(&t.handle).expect("consumer attaches");
        }
    }
}

#[test]
fn poisoned_segments_are_refused() {
    let t = Target::broadcast();
    let seg = t.attach().unwrap();
    seg.poison();
    assert!(matches!(t.attach(), Err(Error::Poisoned { .. })));
    assert!(matches!(
        BroadcastReader::attach(&t.handle),
        Err(Error::Poisoned { .. })
    ));
    let t = Target::mpmc();
    t.poke(F_STATE, STATE_POISONED);
    assert!(matches!(
        MpmcConsumer::attach(&t.handle),
        Err(Error::Poisoned { .. })
    ));
    assert!(matches!(
        MpmcProducer::attach(&t.handle),
        Err(Error::Poisoned { .. })
    ));
}

// ---------------------------------------------------------------------------
// The file: size, owner, mode, type, name.

#[test]
fn truncated_or_extended_files_are_refused() {
    for kind in [SegmentKind::Broadcast, SegmentKind::Mpmc] {
        let t = Target::of(kind);
        let len = t.len;
        for short in [
            len - 1,
            len - 64,
            len - PAGE,
            t.good.data_offset,
            2 * PAGE,
            PAGE,
        ] {
            run_case(
                &t,
                &format!("file cut to {short} of {len}"),
                &[],
                Some(short),
                want!(
                    Err(Error::Corrupt { what: "total_size", found, expected, .. })
                        if *found == len && expected.contains("truncated")
                ),
            );
        }
        for long in [len + 1, len + PAGE, 1 << 40] {
            run_case(
                &t,
                &format!("file grown to {long}"),
                &[],
                Some(long),
                want!(
                    Err(Error::Corrupt { what: "total_size", found, expected, .. })
                        if *found == len && expected.contains("longer")
                ),
            );
        }
        t.attach().expect("restored segment attaches");
    }
}

/// A segment that is not complete (state still Initializing, a file
/// shorter than a header page, an empty file) is refused at once: names are
/// only ever given to complete segments, so there is nothing to wait for.
#[test]
fn incomplete_segments_are_refused_at_once() {
    /// Attach (each case's way) must fail as `ok` says, well within `QUICK`.
    const QUICK: Duration = Duration::from_millis(500);
    fn timed<T: std::fmt::Debug>(
        what: &str,
        attach: impl FnOnce() -> Result<T, Error>,
        ok: impl FnOnce(&Result<T, Error>) -> bool,
    ) {
        let t0 = Instant::now();
        let r = attach();
        let took = t0.elapsed();
        assert!(ok(&r), "{what}: got {r:?}");
        assert!(took < QUICK, "{what}: took {took:?}");
    }
    let file_size = |size: u64| move |r: &Result<Segment, Error>| matches!(r, Err(Error::Corrupt { what: "file size", found, .. }) if *found == size);

    let t = Target::broadcast();
    {
        let _r = t.snapshot();
        t.poke(F_STATE, 0);
        let pid = t.good.creator_pid;
        timed(
            "state 0",
            || t.attach(),
            |r| matches!(r, Err(Error::NotReady { pid: p, .. }) if *p == pid),
        );
        timed(
            "reader on state 0",
            || BroadcastReader::attach(&t.handle),
            |r| matches!(r, Err(Error::NotReady { .. })),
        );
    }
    {
        let _r = t.snapshot();
        t.file.set_len(0).unwrap();
        timed("len 0", || t.attach(), file_size(0));
        t.file.set_len(100).unwrap();
        timed("len 100", || t.attach(), file_size(100));
    }
    let m = Target::mpmc();
    {
        let _r = m.snapshot();
        m.poke(F_STATE, 0);
        timed(
            "mpmc state 0",
            || m.attach(),
            |r| matches!(r, Err(Error::NotReady { .. })),
        );
        timed(
            "consumer on state 0",
            || MpmcConsumer::attach(&m.handle),
            |r| matches!(r, Err(Error::NotReady { .. })),
        );
    }
    {
        let _r = m.snapshot();
        m.file.set_len(PAGE - 1).unwrap();
        timed("len 4095", || m.attach(), file_size(PAGE - 1));
    }
    let p = Planted::file("empty", &[]);
    timed(
        "empty file",
        || Segment::attach(&p.name, SegmentKind::Broadcast),
        file_size(0),
    );
    let mut bytes = vec![0u8; 1000];
    XorShift::new(99).fill(&mut bytes);
    let p = Planted::file("short", &bytes);
    timed(
        "1000 garbage bytes",
        || Segment::attach(&p.name, SegmentKind::Mpmc),
        file_size(1000),
    );
    t.attach().expect("restored broadcast segment attaches");
    m.attach().expect("restored MPMC segment attaches");
}

/// `WrongOwner` is about the file's uid (fstat); a header whose
/// `creator_uid` differs from the file's owner is corrupt, not foreign.
#[test]
fn a_file_of_another_owner_is_refused() {
    let t = Target::broadcast();
    let owner = t.file.metadata().unwrap().uid();
    assert_eq!(owner, t.good.creator_uid);
    let name = *t.handle.name();
    let wrong_owner = |r: &Result<(), Error>| {
        matches!(r, Err(Error::WrongOwner { segment, file_uid: 12345, our_uid })
            if segment.0 == Some(name) && *our_uid == owner)
    };
    match std::os::unix::fs::chown(&t.path, Some(12345), None) {
        Ok(()) => {
            let r = t.attach().map(drop);
            // The owner check comes before any mapping: a reader too.
            let reader = BroadcastReader::attach(&t.handle).map(drop);
            // A consistent foreign segment (header and file agree on the
            // other uid) is refused as foreign all the same.
            let consistent = {
                let _r = t.snapshot();
                t.poke(F_UID, 12345);
                t.attach().map(drop)
            };
            std::os::unix::fs::chown(&t.path, Some(owner), None).expect("chown back");
            assert!(wrong_owner(&r), "{r:?}");
            assert!(wrong_owner(&reader), "{reader:?}");
            assert!(wrong_owner(&consistent), "{consistent:?}");
        }
        Err(e) => {
            // Not root: only the forged header can be checked.
            eprintln!("chown refused ({e}); checking creator_uid only");
        }
    }
    run_case(
        &t,
        "creator_uid 12345",
        &[(F_UID, 12345)],
        None,
        want!(
            Err(Error::Corrupt { what: "creator_uid", found: 12345, expected, .. })
                if *expected == "the file owner's uid"
        ),
    );
    t.attach().expect("owner restored");
}

#[test]
fn loose_file_modes_are_refused() {
    let t = Target::mpmc();
    for mode in [0o644, 0o640, 0o660, 0o666, 0o700, 0o1600, 0o2600] {
        std::fs::set_permissions(&t.path, std::fs::Permissions::from_mode(mode)).unwrap();
        let seen = std::fs::metadata(&t.path).unwrap().mode() & 0o7777;
        if seen == 0o600 {
            // chmod dropped the extra bit (setgid outside our groups).
            continue;
        }
        let r = t.attach();
        let c = MpmcConsumer::attach(&t.handle);
        std::fs::set_permissions(&t.path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(
            matches!(&r, Err(Error::Corrupt { what: "file mode", found, segment, .. })
                if *found == u64::from(seen) && segment.0.as_ref() == Some(t.handle.name())),
            "mode {mode:o}: {r:?}"
        );
        assert!(
            matches!(
                c,
                Err(Error::Corrupt {
                    what: "file mode",
                    ..
                })
            ),
            "mode {mode:o}: {c:?}"
        );
    }
    t.attach().expect("mode restored");
}

#[test]
fn rings_of_another_kind_are_refused() {
    let b = Target::broadcast();
    let m = Target::mpmc();
    let r = MpmcConsumer::attach(&b.handle);
    assert!(
        matches!(
            r,
            Err(Error::WrongKind {
                ours: "MPMC ring",
                theirs: "broadcast ring",
                ..
            })
        ),
        "{r:?}"
    );
    let r = MpmcProducer::attach(&b.handle);
    assert!(matches!(r, Err(Error::WrongKind { .. })), "{r:?}");
    let r = BroadcastReader::attach(&m.handle);
    assert!(
        matches!(
            r,
            Err(Error::WrongKind {
                ours: "broadcast ring",
                theirs: "MPMC ring",
                ..
            })
        ),
        "{r:?}"
    );

    // An overflow segment is a valid segment of a third kind.
    let mut w = BroadcastWriter::create(&BroadcastConfig::new(1 << 16, 1)).unwrap();
    let mut r = BroadcastReader::attach(&w.handle()).unwrap();
    w.send(b"activate").unwrap();
    let big = vec![0xA5u8; w.max_inline() + 1];
    w.send(&big).unwrap();
    let prefix = format!("{}.o", w.handle().name());
    let ov = std::fs::read_dir("/dev/shm")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .find(|n| n.starts_with(&prefix))
        .expect("the writer made an overflow segment");
    let ov_handle: Handle = format!("shm://{ov}").parse().unwrap();
    let e = BroadcastReader::attach(&ov_handle);
    assert!(
        matches!(
            e,
            Err(Error::WrongKind {
                ours: "broadcast ring",
                theirs: "overflow record",
                ..
            })
        ),
        "{e:?}"
    );
    let e = MpmcConsumer::attach(&ov_handle);
    assert!(
        matches!(
            e,
            Err(Error::WrongKind {
                theirs: "overflow record",
                ..
            })
        ),
        "{e:?}"
    );
    // The ring itself still works.
    assert_eq!(
        &*r.recv_with(Wait::timeout(Duration::from_secs(1))).unwrap(),
        b"activate"
    );
    assert_eq!(
        *r.recv_with(Wait::timeout(Duration::from_secs(1))).unwrap(),
        *big
    );
}

#[test]
fn garbage_files_under_shoal_names_are_refused() {
    for (seed, len) in [
        (1u64, 73728usize),
        (2, 4096),
        (3, 1 << 20),
        (4, 8192 + 4096),
    ] {
        let mut bytes = vec![0u8; len];
        XorShift::new(seed).fill(&mut bytes);
        let found = u64::from_le_bytes(bytes[..8].try_into().unwrap());
        let p = Planted::file("garbage", &bytes);
        let r = Segment::attach(&p.name, SegmentKind::Broadcast);
        assert!(
            matches!(&r, Err(Error::Corrupt { what: "magic", found: f, segment, .. })
                if *f == found && segment.0 == Some(p.name)),
            "{r:?}"
        );
        let r = MpmcProducer::attach(&p.handle());
        assert!(
            matches!(r, Err(Error::Corrupt { what: "magic", .. })),
            "{r:?}"
        );
    }
    // Garbage behind a valid prefix (magic, version, state, ABI) reaches the
    // deeper checks: every outcome must be an error, quickly.
    for seed in 0..64u64 {
        let mut rng = XorShift::new(1000 + seed);
        let len = PAGE * (1 + rng.below(20));
        let mut bytes = vec![0u8; len as usize];
        rng.fill(&mut bytes);
        encode(&mut bytes, F_MAGIC, MAGIC);
        encode(&mut bytes, F_VERSION, LAYOUT_VERSION.into());
        encode(&mut bytes, F_STATE, STATE_READY);
        encode(&mut bytes, F_ABI, ABI_FINGERPRINT);
        if seed % 2 == 0 {
            // Plausible small values so later checks are reached too.
            for f in [F_KIND, F_FLAGS, F_SLOTS, F_PRODUCERS] {
                let v = rng.below(3);
                encode(&mut bytes, f, v);
            }
            encode(&mut bytes, F_TOTAL, len);
            encode(&mut bytes, F_CONTROL_OFF, PAGE);
        }
        let p = Planted::file("prefix", &bytes);
        let t0 = Instant::now();
        for kind in [
            SegmentKind::Broadcast,
            SegmentKind::Mpmc,
            SegmentKind::Overflow,
        ] {
            let r = Segment::attach(&p.name, kind);
            assert!(r.is_err(), "seed {seed} {kind:?}: garbage attached: {r:?}");
        }
        assert!(BroadcastReader::attach(&p.handle()).is_err());
        assert!(t0.elapsed() < Duration::from_secs(1));
    }
}

/// Whether `r` refuses a file of type `ty` (an `S_IF*` value) under `name`
/// as not a regular file (a symlink: "not a symlink").
fn refused_type<T>(r: &Result<T, Error>, name: SegmentName, ty: u32) -> bool {
    matches!(r, Err(Error::Corrupt { what: "file type", found, expected, segment })
        if *found & u64::from(libc::S_IFMT) == u64::from(ty)
            && segment.0 == Some(name)
            && expected.starts_with("a regular file")
            && (ty != libc::S_IFLNK || expected.contains("not a symlink")))
}

#[test]
fn directories_symlinks_and_fifos_are_refused() {
    let t = Target::broadcast();

    let dir = Planted::new("dir");
    std::fs::create_dir(&dir.path).unwrap();
    let r = Segment::attach(&dir.name, SegmentKind::Broadcast);
    assert!(refused_type(&r, dir.name, libc::S_IFDIR), "{r:?}");
    let r = BroadcastReader::attach(&dir.handle());
    assert!(refused_type(&r, dir.name, libc::S_IFDIR), "{r:?}");

    // O_NOFOLLOW: a link is refused even when it points at a valid segment,
    // and the error says it is a symlink (not a bare ELOOP).
    for target in [
        t.path.clone(),
        PathBuf::from("/etc/passwd"),
        PathBuf::from("/nonexistent"),
    ] {
        let link = Planted::new("link");
        std::os::unix::fs::symlink(&target, &link.path).unwrap();
        let r = Segment::attach(&link.name, SegmentKind::Broadcast);
        assert!(
            refused_type(&r, link.name, libc::S_IFLNK),
            "link to {}: {r:?}",
            target.display()
        );
        let r = MpmcConsumer::attach(&link.handle());
        assert!(refused_type(&r, link.name, libc::S_IFLNK), "{r:?}");
        let r = MpmcProducer::attach(&link.handle());
        assert!(refused_type(&r, link.name, libc::S_IFLNK), "{r:?}");
    }

    // A FIFO opens (read-write open of a FIFO does not block on Linux) and
    // must then be refused as not a regular file.
    let fifo = Planted::new("fifo");
    match Command::new("mkfifo")
        .arg("-m")
        .arg("600")
        .arg(&fifo.path)
        .status()
    {
        Ok(s) if s.success() => {
            let r = Segment::attach(&fifo.name, SegmentKind::Broadcast);
            assert!(refused_type(&r, fifo.name, libc::S_IFIFO), "{r:?}");
        }
        other => eprintln!("mkfifo unavailable ({other:?}); FIFO case skipped"),
    }
}

#[test]
fn missing_segments_and_hostile_names_are_refused() {
    let name = fresh_name("missing");
    let h = Handle::new(name);
    let r = Segment::attach(&name, SegmentKind::Broadcast);
    assert!(
        matches!(&r, Err(Error::NotFound { name: n }) if *n == name),
        "{r:?}"
    );
    assert!(matches!(
        BroadcastReader::attach(&h),
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        MpmcConsumer::attach(&h),
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        MpmcProducer::attach(&h),
        Err(Error::NotFound { .. })
    ));

    // A ring whose writer is gone (and unlinked its name).
    let w = BroadcastWriter::create(&BroadcastConfig::new(1 << 16, 4)).unwrap();
    let h = w.handle();
    drop(w);
    assert!(matches!(
        BroadcastReader::attach(&h),
        Err(Error::NotFound { .. })
    ));

    let long = format!("shm://shoal-{}", "x".repeat(60));
    for bad in [
        "",
        "shm://",
        "shm://../../etc/passwd",
        "shm://shoal-a/b",
        "shm://shoal-../x/y",
        "shm://shoal-\0",
        "shm://shoal-é",
        "shm:///dev/shm/shoal-x",
        "shm://other-ring",
        long.as_str(),
    ] {
        let r = bad.parse::<Handle>();
        assert!(matches!(r, Err(Error::InvalidName(_))), "{bad:?}: {r:?}");
    }
}

/// `cleanup_stale` walks every `shoal-` entry in /dev/shm, hostile ones
/// included: it must come back, must remove debris of ours nobody holds a
/// lease on, and must not touch a live ring, a leased file, or anything
/// that is not a regular file.
#[test]
fn cleanup_stale_survives_hostile_entries() {
    let _lock = shm_lock();
    let live = Target::broadcast();
    let held = Planted::file("cleanup-held", &[0xAB; 8192]);
    let garbage = Planted::debris("cleanup-garbage", &[0xAB; 8192]);
    let empty = Planted::debris("cleanup-empty", &[]);
    let dir = Planted::new("cleanup-dir");
    std::fs::create_dir(&dir.path).unwrap();
    let link = Planted::new("cleanup-link");
    std::os::unix::fs::symlink(&live.path, &link.path).unwrap();
    let dangling = Planted::new("cleanup-dangling");
    std::os::unix::fs::symlink(&garbage.path, &dangling.path).unwrap();
    let fifo = Planted::new("cleanup-fifo");
    let have_fifo = Command::new("mkfifo")
        .arg("-m")
        .arg("600")
        .arg(&fifo.path)
        .status()
        .is_ok_and(|s| s.success());

    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(cleanup_stale().map(|r| r.removed));
    });
    let got = rx.recv_timeout(Duration::from_secs(3));
    if got.is_err() && have_fifo {
        // Unblock the stuck open: a read-write open of a FIFO never blocks
        // and gives the blocked reader its writer.
        let _unblock = OpenOptions::new().read(true).write(true).open(&fifo.path);
        let _ = rx.recv_timeout(Duration::from_secs(3));
    }
    let removed = got
        .expect("cleanup_stale hung on a hostile /dev/shm entry")
        .expect("cleanup_stale failed");
    for p in [&held, &dir, &link, &dangling, &fifo] {
        assert!(
            !removed.iter().any(|n| n == p.name.as_str()),
            "removed {}",
            p.name
        );
        if p.name != fifo.name || have_fifo {
            assert!(
                std::fs::symlink_metadata(&p.path).is_ok(),
                "{} vanished",
                p.name
            );
        }
    }
    // Removed by this call, or by a cleanup_stale of a test running next
    // door: either way gone.
    for p in [&garbage, &empty] {
        assert!(
            std::fs::symlink_metadata(&p.path).is_err(),
            "debris {} kept: removed only {removed:?}",
            p.name
        );
    }
    assert!(live.attach().is_ok(), "a live ring was cleaned up");
}

/// Errors print the segment, the field, the value found and what was
/// expected (or, for the typed variants, what they are about).
#[test]
fn error_texts_name_segment_field_found_and_expected() {
    let t = Target::broadcast();
    let name = t.handle.name().as_str();
    let text = |r: Result<Segment, Error>| match r {
        Ok(_) => panic!("attached"),
        Err(e) => e.to_string(),
    };
    let has_all = |text: &str, parts: &[&str]| {
        for p in parts {
            assert!(text.contains(p), "{text:?} lacks {p:?}");
        }
    };
    {
        let _r = t.snapshot();
        t.poke(F_MAGIC, 0x1122_3344_5566_7788);
        let s = text(t.attach());
        has_all(&s, &[name, "magic", "0x1122334455667788", "SHOALSEG"]);
    }
    {
        let _r = t.snapshot();
        t.poke(F_UID, 12345);
        let s = text(t.attach());
        has_all(&s, &[name, "creator_uid", "0x3039", "the file owner's uid"]);
    }
    {
        let _r = t.snapshot();
        t.poke(F_SLOTS, 0);
        let s = text(t.attach());
        has_all(&s, &[name, "slots", "0x0", "1 to 1024"]);
    }
    {
        let _r = t.snapshot();
        t.poke(F_STATE, 7);
        let s = text(t.attach());
        has_all(&s, &[name, "state", "0x7", "0x52454459"]);
    }
    {
        let _r = t.snapshot();
        t.file.set_len(t.len - PAGE).unwrap();
        let s = text(t.attach());
        has_all(
            &s,
            &[name, "total_size", &format!("{:#x}", t.len), "truncated"],
        );
    }
    {
        std::fs::set_permissions(&t.path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let s = text(t.attach());
        std::fs::set_permissions(&t.path, std::fs::Permissions::from_mode(0o600)).unwrap();
        has_all(&s, &[name, "file mode", "0x1a4", "0600"]);
    }
    let link = Planted::new("text-link");
    std::os::unix::fs::symlink(&t.path, &link.path).unwrap();
    let s = text(Segment::attach(&link.name, SegmentKind::Broadcast));
    has_all(&s, &[link.name.as_str(), "file type", "not a symlink"]);
    let missing = fresh_name("text-missing");
    let s = text(Segment::attach(&missing, SegmentKind::Broadcast));
    has_all(&s, &[missing.as_str(), "does not exist"]);
    if std::os::unix::fs::chown(&t.path, Some(12345), None).is_ok() {
        let s = text(t.attach());
        std::os::unix::fs::chown(&t.path, Some(t.good.creator_uid), None).unwrap();
        has_all(&s, &[name, "12345", &format!("uid {}", t.good.creator_uid)]);
    }
    // validate_bytes does not know the name: it prints `?` instead.
    let s = validate_bytes(&[0; 8], 4096).unwrap_err().to_string();
    has_all(&s, &["?", "header length", "0x8"]);
    t.attach().expect("restored segment attaches");
}

// ---------------------------------------------------------------------------
// validate_bytes: the fuzzing entry point.

/// The header page and file length of a real broadcast segment.
fn real_header() -> &'static (Vec<u8>, u64) {
    static REAL: OnceLock<(Vec<u8>, u64)> = OnceLock::new();
    REAL.get_or_init(|| {
        let t = Target::broadcast();
        (read_at(&t.file, 0, PAGE as usize), t.len)
    })
}

#[test]
fn validate_bytes_accepts_real_headers() {
    for kind in [SegmentKind::Broadcast, SegmentKind::Mpmc] {
        let t = Target::of(kind);
        let page = read_at(&t.file, 0, PAGE as usize);
        let h = validate_bytes(&page, t.len).expect("a real header validates");
        assert_eq!(h, t.good);
        assert_eq!(validate_bytes(&page[..HEADER_LEN], t.len).unwrap(), t.good);
        let r = validate_bytes(&page[..HEADER_LEN - 1], t.len);
        assert!(
            matches!(
                &r,
                Err(Error::Corrupt { what: "header length", found, segment, .. })
                    if *found == HEADER_LEN as u64 - 1 && segment.0.is_none()
            ),
            "{r:?}"
        );
        assert!(matches!(
            validate_bytes(&[], t.len),
            Err(Error::Corrupt {
                what: "header length",
                found: 0,
                ..
            })
        ));
        // Unaligned input is fine too.
        let mut shifted = vec![0u8; 1];
        shifted.extend_from_slice(&page[..HEADER_LEN]);
        assert_eq!(validate_bytes(&shifted[1..], t.len).unwrap(), t.good);
        let r = validate_bytes(&page, t.len + 1);
        assert!(
            matches!(
                r,
                Err(Error::Corrupt {
                    what: "total_size",
                    ..
                })
            ),
            "{r:?}"
        );
        let r = validate_bytes(&page, t.len - 1);
        assert!(
            matches!(&r, Err(Error::Corrupt { what: "total_size", expected, .. })
                if expected.contains("truncated")),
            "{r:?}"
        );
    }
}

/// What every accepted header must satisfy.
fn assert_consistent(h: &HeaderCopy, size: u64) -> Result<(), TestCaseError> {
    prop_assert_eq!(h.magic, MAGIC);
    prop_assert_eq!(h.layout_version, LAYOUT_VERSION);
    prop_assert_eq!(h.abi_fingerprint, ABI_FINGERPRINT);
    prop_assert_eq!(u64::from(h.state), STATE_READY);
    prop_assert_eq!(h.flags, 0);
    prop_assert_eq!(h.total_size, size);
    prop_assert_eq!(h.control_offset, PAGE);
    prop_assert_eq!(
        Some(h.data_offset),
        h.control_offset.checked_add(h.control_size)
    );
    prop_assert_eq!(h.data_offset % PAGE, 0);
    prop_assert_eq!(h.data_offset.checked_add(h.data_capacity), Some(size));
    prop_assert!((1..=3).contains(&h.kind));
    prop_assert!(h.creator_pid != 0);
    if h.kind != 3 {
        prop_assert!(h.data_capacity.is_power_of_two());
        prop_assert!((4096..=1 << 31).contains(&h.data_capacity));
        prop_assert!((1..=MAX_SLOTS).contains(&u64::from(h.slots)));
        prop_assert_eq!(h.payload_len, 0);
    } else {
        prop_assert!(h.payload_len <= h.data_capacity);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn validate_bytes_never_panics_on_arbitrary_bytes(
        bytes in vec(any::<u8>(), 0..400),
        size in any::<u64>(),
    ) {
        if let Ok(h) = validate_bytes(&bytes, size) {
            assert_consistent(&h, size)?;
        }
    }

    #[test]
    fn validate_bytes_never_panics_on_mutated_real_headers(
        edits in vec((0..HEADER_LEN, any::<u64>(), 0usize..5), 1..5),
        size_choice in 0u8..4,
        raw_size in any::<u64>(),
    ) {
        let (page, len) = real_header();
        let mut b = page.clone();
        for (off, val, w) in edits {
            let width = [1, 2, 4, 8, 8][w];
            let end = (off + width).min(HEADER_LEN);
            let val = if w == 4 { val % 8 } else { val }; // small values, often valid
            b[off..end].copy_from_slice(&val.to_le_bytes()[..end - off]);
        }
        let size = match size_choice {
            0 => *len,
            1 => raw_size,
            2 => decode(&b, F_TOTAL),
            _ => len.wrapping_add(raw_size % 3).wrapping_sub(1),
        };
        if let Ok(h) = validate_bytes(&b, size) {
            assert_consistent(&h, size)?;
            for f in FIELDS {
                prop_assert_eq!(header_value(&h, f), decode(&b, f), "{}", f.name);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Garbage inside live rings (each in a child process).

fn broadcast_ring() -> (BroadcastWriter, BroadcastReader, Target) {
    let mut w = BroadcastWriter::create(&BroadcastConfig::new(1 << 16, 4)).unwrap();
    let h = w.handle();
    let r = BroadcastReader::attach(&h).unwrap();
    w.send(b"legit-0").unwrap(); // activates the reader at position 0
                                 // The writer stays with the caller.
    let t = Target::new(h, SegmentKind::Broadcast, None);
    (w, r, t)
}

/// Reads from a broadcast reader until `budget` runs out: `Ok` guards must
/// lie in the data area and are read in full, errors are fine. Returns the
/// position the reader walked to, tracked from `from`.
fn drain_broadcast(r: &mut BroadcastReader, area: &Area, from: u64, budget: Duration) -> u64 {
    let until = Instant::now() + budget;
    let mut pos = from;
    let mut n = 0u32;
    let mut idle = 0u32;
    while Instant::now() < until && idle < STUCK {
        n += 1;
        idle += 1;
        let got = if n.is_multiple_of(64) {
            r.recv_with(Wait::timeout(SHORT)).map(Some)
        } else {
            r.try_recv()
        };
        match got {
            Ok(Some(g)) => {
                idle = 0;
                let off = area.check(&g, "broadcast record");
                let at = position_at(pos, off, area.cap);
                pos = at + record_size(g.len() as u64);
            }
            Ok(None) | Err(Error::Timeout) | Err(Error::WouldBlock) => {}
            Err(Error::Evicted) | Err(Error::Closed) | Err(Error::WriterGone { .. }) => break,
            Err(_) => {}
        }
    }
    pos
}

fn broadcast_random_data_area() {
    let (mut w, mut r, t) = broadcast_ring();
    let cap = t.good.data_capacity;
    let area = {
        let g = r.recv_with(Wait::timeout(Duration::from_secs(1))).unwrap();
        assert_eq!(&*g, b"legit-0");
        Area::from_first_record(&g, cap)
    };
    for i in 1..20u8 {
        w.send(&vec![i; usize::from(i) * 37]).unwrap();
    }
    let mut rng = XorShift::new(11);
    for _ in 0..8 {
        fill_random(&t.file, t.good.data_offset, cap, &mut rng);
        drain_broadcast(&mut r, &area, 0, Duration::from_millis(40));
    }
    // The writer goes on writing into the garbage; the reader may or may
    // not make sense of it, but must not crash.
    for i in 0..50u32 {
        let _ = w.send_with(&i.to_le_bytes(), Wait::no_wait());
        let _ = r
            .try_recv()
            .map(|g| g.map(|g| area.check(&g, "after garbage")));
    }
}

#[test]
fn broadcast_reader_survives_random_data_area() {
    isolated(
        "broadcast_reader_survives_random_data_area",
        Duration::from_secs(20),
        broadcast_random_data_area,
    );
}

fn broadcast_random_control_area() {
    let (mut w, mut r, t) = broadcast_ring();
    let cap = t.good.data_capacity;
    let area = {
        let g = r.recv_with(Wait::timeout(Duration::from_secs(1))).unwrap();
        Area::from_first_record(&g, cap)
    };
    w.send(b"legit-1").unwrap();
    let mut rng = XorShift::new(12);
    for round in 0..8 {
        fill_random(&t.file, PAGE, t.good.control_size, &mut rng);
        drain_broadcast(&mut r, &area, 0, Duration::from_millis(30));
        let _ = w.send_with(b"after", Wait::timeout(SHORT));
        // New readers join a garbage slot table.
        if let Ok(mut r2) = BroadcastReader::attach(&t.handle) {
            let _ = r2.try_recv();
            let _ = r2.recv_with(Wait::timeout(SHORT));
        }
        if round % 2 == 0 {
            let _ = w.send_with(&[round; 100], Wait::timeout(SHORT));
        }
    }
}

#[test]
fn broadcast_reader_survives_random_control_area() {
    isolated(
        "broadcast_reader_survives_random_control_area",
        Duration::from_secs(20),
        broadcast_random_control_area,
    );
}

fn broadcast_forged_records() {
    let (_w, mut r, t) = broadcast_ring();

    let cap = t.good.data_capacity;
    let area = {
        let g = r.recv_with(Wait::timeout(Duration::from_secs(1))).unwrap();
        Area::from_first_record(&g, cap)
    };
    let mut pos = record_size(7);
    let mut rng = XorShift::new(13);
    let until = Instant::now() + Duration::from_secs(2);
    for _ in 0..400 {
        if Instant::now() > until {
            break;
        }
        forge_records(&t.file, t.good.data_offset, cap, pos, &mut rng);
        pos = drain_broadcast(&mut r, &area, pos, Duration::from_millis(50));
    }
    assert!(pos > 4 * cap, "the reader walked only to {pos}");
}

#[test]
fn broadcast_reader_survives_forged_records() {
    isolated(
        "broadcast_reader_survives_forged_records",
        Duration::from_secs(20),
        broadcast_forged_records,
    );
}

fn broadcast_forged_cursor() {
    let mut w = BroadcastWriter::create(&BroadcastConfig::new(1 << 16, 4)).unwrap();
    let h = w.handle();
    let t = Target::new(h, SegmentKind::Broadcast, None);
    w.send(b"x").unwrap();
    let slot0 = PAGE + BROADCAST_CONTROL;
    let cap = t.good.data_capacity;
    for cursor in [
        1u64,
        63,
        65,
        u64::MAX - 63,
        u64::MAX,
        1 << 63,
        cap * 3 + 4096,
    ] {
        // A reader joins (slot 0, pending); before the writer activates it,
        // the slot says "active at `cursor`", and a matching commit word waits.
        let mut r = BroadcastReader::attach(&h).unwrap();
        poke(&t.file, slot0 + SLOT_CURSOR, 8, cursor);
        poke(&t.file, slot0, 4, SLOT_ACTIVE);
        let line = t.good.data_offset + ((cursor & (cap - 1)) & !(RECORD_ALIGN - 1));
        poke(&t.file, line, 8, cursor | REC_DATA);
        poke(&t.file, line + 8, 4, 0);
        for _ in 0..4 {
            let _ = r.try_recv().map(|g| g.map(|g| touch(&g)));
            let _ = r.recv_with(Wait::timeout(SHORT)).map(|g| touch(&g));
        }
        drop(r);
        let _ = w.send_with(b"y", Wait::timeout(SHORT));
    }
}

#[test]
fn broadcast_reader_survives_a_forged_cursor() {
    isolated(
        "broadcast_reader_survives_a_forged_cursor",
        Duration::from_secs(20),
        broadcast_forged_cursor,
    );
}

fn mpmc_ring() -> (MpmcRing, MpmcProducer, MpmcConsumer, Area, Target) {
    let ring = MpmcRing::create(&MpmcConfig::new(1 << 16, 2, 2)).unwrap();
    let h = ring.handle();
    let mut p = ring.producer().unwrap();
    let opts = PeerOptions::default()
        .orphan_timeout(Duration::from_millis(1))
        .liveness_interval(Duration::from_millis(1));
    let mut c = MpmcConsumer::attach_with(&h, opts, None).unwrap();
    p.send(b"legit-0").unwrap();
    let t = Target::new(h, SegmentKind::Mpmc, None);
    let area = {
        let g = c.take_with(Wait::timeout(Duration::from_secs(1))).unwrap();
        assert_eq!(&*g, b"legit-0");
        Area::from_first_record(&g, t.good.data_capacity)
    };
    (ring, p, c, area, t)
}

/// Takes from a consumer until `budget` runs out; like `drain_broadcast`.
fn drain_mpmc(c: &mut MpmcConsumer, area: &Area, from: u64, budget: Duration) -> u64 {
    let until = Instant::now() + budget;
    let mut pos = from;
    let mut n = 0u32;
    let mut idle = 0u32;
    while Instant::now() < until && idle < STUCK {
        n += 1;
        idle += 1;
        let got = if n.is_multiple_of(64) {
            c.take_with(Wait::timeout(SHORT)).map(Some)
        } else {
            c.try_take()
        };
        match got {
            Ok(Some(g)) => {
                idle = 0;
                let off = area.check(&g, "mpmc record");
                let at = position_at(pos, off, area.cap);
                pos = at + record_size(g.len() as u64);
            }
            Err(Error::Closed) | Err(Error::WriterGone { .. }) => break,
            _ => {}
        }
    }
    pos
}

fn mpmc_random_data_area() {
    let (_ring, mut p, mut c, area, t) = mpmc_ring();
    for i in 1..20u8 {
        p.send(&vec![i; usize::from(i) * 41]).unwrap();
    }
    let mut rng = XorShift::new(21);
    for _ in 0..8 {
        fill_random(&t.file, t.good.data_offset, t.good.data_capacity, &mut rng);
        drain_mpmc(&mut c, &area, 0, Duration::from_millis(40));
        let _ = p.send_with(b"after", Wait::timeout(SHORT));
    }
}

#[test]
fn mpmc_consumer_survives_random_data_area() {
    isolated(
        "mpmc_consumer_survives_random_data_area",
        Duration::from_secs(20),
        mpmc_random_data_area,
    );
}

fn mpmc_random_control_area() {
    let (ring, mut p, mut c, area, t) = mpmc_ring();
    p.send(b"legit-1").unwrap();
    let mut rng = XorShift::new(22);
    for _ in 0..8 {
        fill_random(&t.file, PAGE, t.good.control_size, &mut rng);
        drain_mpmc(&mut c, &area, 0, Duration::from_millis(30));
        let _ = p.send_with(b"after", Wait::timeout(SHORT));
        if let Ok(mut c2) = ring.consumer() {
            let _ = c2.try_take();
        }
        if let Ok(mut p2) = ring.producer() {
            let _ = p2.send_with(b"new", Wait::timeout(SHORT));
        }
    }
}

#[test]
fn mpmc_endpoints_survive_random_control_area() {
    isolated(
        "mpmc_endpoints_survive_random_control_area",
        Duration::from_secs(20),
        mpmc_random_control_area,
    );
}

fn mpmc_forged_records() {
    let (_ring, _p, mut c, area, t) = mpmc_ring();
    let cap = t.good.data_capacity;
    let mut rng = XorShift::new(23);
    let mut pos = record_size(7);
    let until = Instant::now() + Duration::from_secs(2);
    for _ in 0..400 {
        if Instant::now() > until {
            break;
        }
        let head = peek_u64(&t.file, PAGE + MPMC_HEAD);
        pos = pos.max(head);
        forge_records(&t.file, t.good.data_offset, cap, pos, &mut rng);
        pos = drain_mpmc(&mut c, &area, pos, Duration::from_millis(50));
    }
    assert!(pos > 4 * cap, "the consumer walked only to {pos}");
}

#[test]
fn mpmc_consumer_survives_forged_records() {
    isolated(
        "mpmc_consumer_survives_forged_records",
        Duration::from_secs(20),
        mpmc_forged_records,
    );
}

fn mpmc_forged_positions() {
    let (_ring, mut p, mut c, _area, t) = mpmc_ring();
    let cap = t.good.data_capacity;
    let data = t.good.data_offset;
    for v in [
        1u64,
        63,
        65,
        u64::MAX - 63,
        u64::MAX,
        1 << 63,
        cap * 5 + 4096,
    ] {
        let _r = t.snapshot();
        let line = data + ((v & (cap - 1)) & !(RECORD_ALIGN - 1));
        poke(&t.file, line, 8, v | REC_DATA);
        poke(&t.file, line + 8, 4, 0);
        poke(&t.file, PAGE + MPMC_HEAD, 8, v);
        let _ = c.try_take().map(|g| g.map(|g| touch(&g)));
        let _ = c.take_with(Wait::timeout(SHORT)).map(|g| touch(&g));
        poke(&t.file, PAGE + MPMC_TAIL, 8, v);
        let _ = p.send_with(b"tail", Wait::timeout(SHORT));
        poke(&t.file, PAGE + MPMC_RECLAIM, 8, v);
        let _ = p.send_with(&[7; 3000], Wait::timeout(SHORT));
    }
}

/// Issue 6 item 12(c): impossible shared positions are reported as
/// `Corrupt` naming the field, not waited on forever as `Timeout`.
fn mpmc_impossible_positions_are_corrupt() {
    let (_ring, mut p, mut c, _area, t) = mpmc_ring();
    let corrupt = |r: Result<(), Error>, field: &str| match r {
        Err(Error::Corrupt { what, .. }) if what == field => {}
        other => panic!("{field}: expected Corrupt, got {other:?}"),
    };
    let snap = t.snapshot();
    poke(&t.file, PAGE + MPMC_HEAD, 8, !63);
    corrupt(c.try_take().map(|_| ()), "head");
    drop(snap);
    let snap = t.snapshot();
    poke(&t.file, PAGE + MPMC_TAIL, 8, 1 << 62);
    corrupt(p.send_with(b"x", Wait::timeout(SHORT)), "tail");
    drop(snap);
    let snap = t.snapshot();
    let tail = peek_u64(&t.file, PAGE + MPMC_TAIL);
    poke(&t.file, PAGE + MPMC_RECLAIM, 8, tail + 4096);
    corrupt(p.send_with(b"x", Wait::timeout(SHORT)), "reclaim");
    drop(snap);
}

#[test]
fn mpmc_impossible_positions_are_reported_corrupt() {
    isolated(
        "mpmc_impossible_positions_are_reported_corrupt",
        Duration::from_secs(20),
        mpmc_impossible_positions_are_corrupt,
    );
}

#[test]
fn mpmc_endpoints_survive_forged_positions() {
    isolated(
        "mpmc_endpoints_survive_forged_positions",
        Duration::from_secs(20),
        mpmc_forged_positions,
    );
}

//! Shared-memory segments: create, attach (validated), unlink, clean up.
//!
//! # Attach protocol
//! The creator opens `/dev/shm/<name>` with `O_CREAT | O_EXCL`, mode 0600,
//! reserves its full size (`fallocate`, so a full `/dev/shm` fails here and
//! not later with SIGBUS), maps it, fills the header, and writes the `state`
//! word last with Release. An attacher opens without creating, checks owner
//! and mode with `fstat`, waits a bounded time while the file is still short
//! or `state` is still Initializing (Acquire), copies the header out once and
//! validates the copy against the file size: magic, layout version, ABI
//! fingerprint, kind, every offset and size, owner uid. A corrupt, truncated
//! or foreign segment gives a typed error naming the problem.

use crate::error::{Error, Result};
use crate::layout::{
    HeaderCopy, SegmentHeader, SegmentKind, ABI_FINGERPRINT, FORMAT_TAG_LEN, HEADER_PAGE,
    LAYOUT_VERSION, MAGIC, MAX_CAPACITY, MAX_SLOTS, MIN_CAPACITY, STATE_INITIALIZING,
    STATE_POISONED, STATE_READY,
};
use crate::liveness::ProcessId;
use crate::name::{SegmentName, NAME_PREFIX, SHM_DIR};
use crate::sync::Ordering;
use std::time::{Duration, Instant};

/// How long an attacher waits for a creator to finish initializing.
pub const ATTACH_WAIT: Duration = Duration::from_secs(2);

/// The sizes a new segment needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SegmentSpec {
    pub kind: SegmentKind,
    pub control_size: u64,
    pub data_capacity: u64,
    pub slots: u32,
    pub producer_slots: u32,
    pub payload_len: u64,
    pub payload_format: [u8; FORMAT_TAG_LEN],
}

/// A mapped segment. The creator's value unlinks the file when dropped.
#[derive(Debug)]
pub struct Segment {
    name: SegmentName,
    base: *mut u8,
    len: usize,
    owner: bool,
    header: HeaderCopy,
}

// SAFETY: the mapping is plain shared memory. Every access the crate makes to
// it goes through atomics or through ring protocols that hand out disjoint
// regions; the raw pointer itself is never mutated after creation.
unsafe impl Send for Segment {}
// SAFETY: as above; `&Segment` only exposes the pointer and the header copy.
unsafe impl Sync for Segment {}

const fn page_round(v: u64) -> u64 {
    (v + HEADER_PAGE as u64 - 1) & !(HEADER_PAGE as u64 - 1)
}

/// Our effective uid.
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

impl Segment {
    /// Creates a segment with a fresh unguessable name.
    pub(crate) fn create(spec: &SegmentSpec, tag: &str) -> Result<Segment> {
        for _ in 0..16 {
            let name = SegmentName::random(tag)?;
            match Self::create_named(spec, name) {
                Err(Error::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::AlreadyExists =>
                {
                    continue
                }
                other => return other,
            }
        }
        Err(Error::InvalidName("could not find a free random name"))
    }

    /// Creates the segment `name`; fails if it exists.
    pub(crate) fn create_named(spec: &SegmentSpec, name: SegmentName) -> Result<Segment> {
        let control_size = page_round(spec.control_size);
        let total = (HEADER_PAGE as u64)
            .checked_add(control_size)
            .and_then(|v| v.checked_add(spec.data_capacity))
            .filter(|&t| t <= isize::MAX as u64)
            .ok_or(Error::TooLarge {
                what: "segment size",
                got: spec.data_capacity,
                limit: isize::MAX as u64,
            })?;
        let path = name.path();
        // SAFETY: `path` is NUL-terminated; open does not keep the pointer.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                0o600 as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(Error::last_os("open(O_CREAT|O_EXCL)"));
        }
        let fail = |op: &'static str| -> Error {
            let e = Error::last_os(op);
            // SAFETY: fd is ours; path is NUL-terminated.
            unsafe {
                libc::close(fd);
                libc::unlink(path.as_ptr());
            }
            e
        };
        // The umask may have removed bits; make the mode exactly 0600.
        // SAFETY: fd is an open file we created.
        if unsafe { libc::fchmod(fd, 0o600) } != 0 {
            return Err(fail("fchmod"));
        }
        // Reserve the pages so a full /dev/shm fails now, not with SIGBUS later.
        // SAFETY: fd is open for writing; the range is within off_t.
        let r = unsafe { libc::posix_fallocate(fd, 0, total as libc::off_t) };
        if r != 0 {
            // SAFETY: fd is ours.
            if r == libc::EOPNOTSUPP || unsafe { libc::ftruncate(fd, total as libc::off_t) } != 0 {
                let e = Error::Io {
                    op: "posix_fallocate",
                    source: std::io::Error::from_raw_os_error(r),
                };
                // SAFETY: fd is ours; path is NUL-terminated.
                unsafe {
                    libc::close(fd);
                    libc::unlink(path.as_ptr());
                }
                return Err(e);
            }
        }
        let base = match map(fd, total as usize) {
            Ok(b) => b,
            Err(_) => return Err(fail("mmap")),
        };
        // SAFETY: fd is ours; the mapping keeps the file's pages alive.
        unsafe { libc::close(fd) };
        let me = ProcessId::current();
        let header = HeaderCopy {
            magic: MAGIC,
            layout_version: LAYOUT_VERSION,
            state: STATE_READY,
            abi_fingerprint: ABI_FINGERPRINT,
            kind: spec.kind as u32,
            flags: 0,
            total_size: total,
            control_offset: HEADER_PAGE as u64,
            control_size,
            data_offset: HEADER_PAGE as u64 + control_size,
            data_capacity: spec.data_capacity,
            slots: spec.slots,
            producer_slots: spec.producer_slots,
            creator_uid: euid(),
            creator_pid: me.pid,
            creator_start_time: me.start_time,
            payload_len: spec.payload_len,
            payload_format: spec.payload_format,
        };
        let h = base as *mut SegmentHeader;
        // SAFETY: the mapping is at least HEADER_PAGE bytes, page aligned, and
        // nobody else can have it mapped validly yet (state is still 0, so
        // attachers wait). Fields are written before the Release of `state`.
        unsafe {
            (*h).magic = header.magic;
            (*h).layout_version = header.layout_version;
            (*h).abi_fingerprint = header.abi_fingerprint;
            (*h).kind = header.kind;
            (*h).flags = header.flags;
            (*h).total_size = header.total_size;
            (*h).control_offset = header.control_offset;
            (*h).control_size = header.control_size;
            (*h).data_offset = header.data_offset;
            (*h).data_capacity = header.data_capacity;
            (*h).slots = header.slots;
            (*h).producer_slots = header.producer_slots;
            (*h).creator_uid = header.creator_uid;
            (*h).creator_pid = header.creator_pid;
            (*h).creator_start_time = header.creator_start_time;
            (*h).payload_len = header.payload_len;
            (*h).payload_format = header.payload_format;
            // SYNC W(ready): pairs with the Acquire load in `attach`.
            (*h).state.store(STATE_READY, Ordering::Release);
        }
        Ok(Segment {
            name,
            base,
            len: total as usize,
            owner: true,
            header,
        })
    }

    /// Attaches to the segment `name`, expecting `kind`, after validating it.
    pub fn attach(name: &SegmentName, kind: SegmentKind) -> Result<Segment> {
        Self::attach_with(name, Some(kind), ATTACH_WAIT)
    }

    pub(crate) fn attach_with(
        name: &SegmentName,
        kind: Option<SegmentKind>,
        wait: Duration,
    ) -> Result<Segment> {
        let path = name.path();
        // SAFETY: `path` is NUL-terminated; open does not keep the pointer.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDWR | libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NONBLOCK,
            )
        };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            return Err(if e.raw_os_error() == Some(libc::ENOENT) {
                Error::NotFound {
                    name: name.to_string(),
                }
            } else {
                Error::Io {
                    op: "open",
                    source: e,
                }
            });
        }
        let r = Self::attach_fd(fd, name, kind, wait);
        // SAFETY: fd is ours; a successful mapping stays valid after close.
        unsafe { libc::close(fd) };
        r
    }

    fn attach_fd(
        fd: libc::c_int,
        name: &SegmentName,
        kind: Option<SegmentKind>,
        wait: Duration,
    ) -> Result<Segment> {
        let t0 = Instant::now();
        loop {
            let st = fstat(fd)?;
            let our_uid = euid();
            if st.st_uid != our_uid {
                return Err(Error::WrongOwner {
                    file_uid: st.st_uid,
                    our_uid,
                });
            }
            if st.st_mode & libc::S_IFMT != libc::S_IFREG {
                return Err(Error::Corrupt {
                    what: "not a regular file",
                });
            }
            let mode = st.st_mode & 0o7777;
            if mode != 0o600 {
                return Err(Error::BadMode { mode });
            }
            let size = st.st_size.max(0) as u64;
            if size < HEADER_PAGE as u64 {
                if t0.elapsed() >= wait {
                    return Err(if size == 0 {
                        Error::NotReady { pid: 0 }
                    } else {
                        Error::Truncated {
                            expected: HEADER_PAGE as u64,
                            actual: size,
                        }
                    });
                }
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            let base = map(fd, size as usize)?;
            // SAFETY: the mapping is at least HEADER_PAGE bytes and page
            // aligned, so the header struct lies within it.
            let h = unsafe { &*(base as *const SegmentHeader) };
            // SYNC R(ready): pairs with the Release store in `create_named`.
            let state = h.state.load(Ordering::Acquire);
            if state == STATE_INITIALIZING {
                // SAFETY: read of a plain u32 inside the mapping.
                let pid = unsafe {
                    std::ptr::addr_of!((*(base as *const SegmentHeader)).creator_pid)
                        .read_volatile()
                };
                unmap(base, size as usize);
                if t0.elapsed() >= wait {
                    return Err(Error::NotReady { pid });
                }
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            // SAFETY: the header lies within the mapping (checked above).
            let copy = unsafe { read_header(base) };
            if let Err(e) = validate(&copy, size, kind) {
                unmap(base, size as usize);
                return Err(e);
            }
            return Ok(Segment {
                name: *name,
                base,
                len: size as usize,
                owner: false,
                header: copy,
            });
        }
    }

    /// The segment's name.
    pub fn name(&self) -> &SegmentName {
        &self.name
    }

    /// The validated copy of the header.
    pub fn header(&self) -> &HeaderCopy {
        &self.header
    }

    /// Whether this value created the segment (and unlinks it on drop).
    pub fn is_owner(&self) -> bool {
        self.owner
    }

    /// The creator's identity as written in the header.
    pub fn creator(&self) -> ProcessId {
        ProcessId {
            pid: self.header.creator_pid,
            start_time: self.header.creator_start_time,
        }
    }

    /// Removes the name now (the mapping stays valid); later attaches fail.
    pub fn unlink(&self) -> Result<()> {
        let path = self.name.path();
        // SAFETY: NUL-terminated path.
        if unsafe { libc::unlink(path.as_ptr()) } != 0 {
            return Err(Error::last_os("unlink"));
        }
        Ok(())
    }

    /// Gives up ownership: the file will not be unlinked on drop.
    pub(crate) fn disown(&mut self) {
        self.owner = false;
    }

    /// Marks the segment poisoned: later attaches fail with [`Error::Poisoned`].
    pub fn poison(&self) {
        // SAFETY: the header lies within the mapping.
        let h = unsafe { &*(self.base as *const SegmentHeader) };
        h.state.store(STATE_POISONED, Ordering::Release);
    }

    /// Start of the control area.
    pub(crate) fn control_ptr(&self) -> *mut u8 {
        // SAFETY: control_offset was validated to lie within the mapping.
        unsafe { self.base.add(self.header.control_offset as usize) }
    }

    /// Start of the data area.
    pub(crate) fn data_ptr(&self) -> *mut u8 {
        // SAFETY: data_offset was validated to lie within the mapping.
        unsafe { self.base.add(self.header.data_offset as usize) }
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        if self.owner {
            let _ = self.unlink();
        }
        unmap(self.base, self.len);
    }
}

/// Expected control size (before page rounding) for a ring.
pub(crate) fn control_size(kind: SegmentKind, slots: u32, producer_slots: u32) -> u64 {
    use crate::layout::{BroadcastControl, MpmcControl, Slot};
    use crate::pad::CachePadded;
    let slot = std::mem::size_of::<CachePadded<Slot>>() as u64;
    match kind {
        SegmentKind::Broadcast => {
            std::mem::size_of::<BroadcastControl>() as u64 + slot * u64::from(slots)
        }
        SegmentKind::Mpmc => {
            std::mem::size_of::<MpmcControl>() as u64
                + slot * (u64::from(slots) + u64::from(producer_slots))
        }
        SegmentKind::Overflow => 0,
    }
}

/// Validates a header copy against the file size and the expected kind.
pub fn validate(h: &HeaderCopy, file_size: u64, kind: Option<SegmentKind>) -> Result<()> {
    if h.magic != MAGIC {
        return Err(Error::BadMagic { found: h.magic });
    }
    if h.layout_version != LAYOUT_VERSION {
        return Err(Error::VersionMismatch {
            ours: LAYOUT_VERSION,
            theirs: h.layout_version,
        });
    }
    if h.abi_fingerprint != ABI_FINGERPRINT {
        return Err(Error::AbiMismatch {
            ours: ABI_FINGERPRINT,
            theirs: h.abi_fingerprint,
        });
    }
    match h.state {
        STATE_READY => {}
        STATE_POISONED => return Err(Error::Poisoned),
        STATE_INITIALIZING => return Err(Error::NotReady { pid: h.creator_pid }),
        _ => return Err(Error::Corrupt { what: "state" }),
    }
    let found = SegmentKind::from_u32(h.kind).ok_or(Error::Corrupt { what: "kind" })?;
    if let Some(k) = kind {
        if k != found {
            return Err(Error::WrongKind {
                ours: k.name(),
                theirs: found.name(),
            });
        }
    }
    if h.flags != 0 {
        return Err(Error::Corrupt { what: "flags" });
    }
    if h.total_size > file_size {
        return Err(Error::Truncated {
            expected: h.total_size,
            actual: file_size,
        });
    }
    if h.total_size != file_size {
        return Err(Error::Corrupt { what: "total_size" });
    }
    if h.control_offset != HEADER_PAGE as u64 {
        return Err(Error::Corrupt {
            what: "control_offset",
        });
    }
    let data_offset = h
        .control_offset
        .checked_add(h.control_size)
        .ok_or(Error::Corrupt {
            what: "control_size",
        })?;
    if h.data_offset != data_offset || h.data_offset % HEADER_PAGE as u64 != 0 {
        return Err(Error::Corrupt {
            what: "data_offset",
        });
    }
    if h.data_offset.checked_add(h.data_capacity) != Some(h.total_size) {
        return Err(Error::Corrupt {
            what: "data_capacity",
        });
    }
    match found {
        SegmentKind::Broadcast | SegmentKind::Mpmc => {
            if !h.data_capacity.is_power_of_two()
                || h.data_capacity < MIN_CAPACITY
                || h.data_capacity > MAX_CAPACITY
            {
                return Err(Error::Corrupt {
                    what: "data_capacity",
                });
            }
            if h.slots == 0 || h.slots > MAX_SLOTS {
                return Err(Error::Corrupt { what: "slots" });
            }
            let producers_ok = match found {
                SegmentKind::Broadcast => h.producer_slots == 0,
                _ => h.producer_slots >= 1 && h.producer_slots <= MAX_SLOTS,
            };
            if !producers_ok {
                return Err(Error::Corrupt {
                    what: "producer_slots",
                });
            }
            if h.control_size != page_round(control_size(found, h.slots, h.producer_slots)) {
                return Err(Error::Corrupt {
                    what: "control_size",
                });
            }
            if h.payload_len != 0 {
                return Err(Error::Corrupt {
                    what: "payload_len",
                });
            }
        }
        SegmentKind::Overflow => {
            if h.slots != 0 || h.producer_slots != 0 {
                return Err(Error::Corrupt { what: "slots" });
            }
            if h.control_size != 0 {
                return Err(Error::Corrupt {
                    what: "control_size",
                });
            }
            if h.payload_len > h.data_capacity {
                return Err(Error::Corrupt {
                    what: "payload_len",
                });
            }
        }
    }
    let our_uid = euid();
    if h.creator_uid != our_uid {
        return Err(Error::WrongOwner {
            file_uid: h.creator_uid,
            our_uid,
        });
    }
    if h.creator_pid == 0 {
        return Err(Error::Corrupt {
            what: "creator_pid",
        });
    }
    Ok(())
}

/// Copies the header out of a mapping, once.
///
/// # Safety
/// `base` must point to at least `size_of::<SegmentHeader>()` mapped bytes.
pub(crate) unsafe fn read_header(base: *const u8) -> HeaderCopy {
    let h = base as *const SegmentHeader;
    // SAFETY: (for each read) the caller guarantees the header is mapped; the
    // volatile reads copy each field exactly once, so a peer rewriting the
    // live header cannot make later checks see different values.
    unsafe {
        HeaderCopy {
            magic: std::ptr::addr_of!((*h).magic).read_volatile(),
            layout_version: std::ptr::addr_of!((*h).layout_version).read_volatile(),
            state: (*h).state.load(Ordering::Acquire),
            abi_fingerprint: std::ptr::addr_of!((*h).abi_fingerprint).read_volatile(),
            kind: std::ptr::addr_of!((*h).kind).read_volatile(),
            flags: std::ptr::addr_of!((*h).flags).read_volatile(),
            total_size: std::ptr::addr_of!((*h).total_size).read_volatile(),
            control_offset: std::ptr::addr_of!((*h).control_offset).read_volatile(),
            control_size: std::ptr::addr_of!((*h).control_size).read_volatile(),
            data_offset: std::ptr::addr_of!((*h).data_offset).read_volatile(),
            data_capacity: std::ptr::addr_of!((*h).data_capacity).read_volatile(),
            slots: std::ptr::addr_of!((*h).slots).read_volatile(),
            producer_slots: std::ptr::addr_of!((*h).producer_slots).read_volatile(),
            creator_uid: std::ptr::addr_of!((*h).creator_uid).read_volatile(),
            creator_pid: std::ptr::addr_of!((*h).creator_pid).read_volatile(),
            creator_start_time: std::ptr::addr_of!((*h).creator_start_time).read_volatile(),
            payload_len: std::ptr::addr_of!((*h).payload_len).read_volatile(),
            payload_format: std::ptr::addr_of!((*h).payload_format).read_volatile(),
        }
    }
}

/// Validates raw header bytes as if read from a file of `file_size` bytes.
/// The entry point of the fuzz target: never panics, whatever the bytes.
pub fn validate_bytes(bytes: &[u8], file_size: u64) -> Result<HeaderCopy> {
    if bytes.len() < std::mem::size_of::<SegmentHeader>() {
        return Err(Error::Truncated {
            expected: std::mem::size_of::<SegmentHeader>() as u64,
            actual: bytes.len() as u64,
        });
    }
    let mut aligned = std::mem::MaybeUninit::<SegmentHeader>::uninit();
    // SAFETY: copies exactly size_of::<SegmentHeader>() bytes (checked above)
    // into properly aligned storage. Every bit pattern is a valid
    // SegmentHeader (integers and one AtomicU32).
    let copy = unsafe {
        std::ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            aligned.as_mut_ptr().cast::<u8>(),
            std::mem::size_of::<SegmentHeader>(),
        );
        read_header(aligned.as_ptr().cast())
    };
    validate(&copy, file_size, None)?;
    Ok(copy)
}

fn fstat(fd: libc::c_int) -> Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat fills `st` on success; fd is open.
    if unsafe { libc::fstat(fd, st.as_mut_ptr()) } != 0 {
        return Err(Error::last_os("fstat"));
    }
    // SAFETY: fstat returned 0, so `st` is initialized.
    Ok(unsafe { st.assume_init() })
}

fn map(fd: libc::c_int, len: usize) -> Result<*mut u8> {
    // SAFETY: a fresh shared mapping of an open file; the kernel picks the address.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(Error::last_os("mmap"));
    }
    Ok(p.cast())
}

fn unmap(base: *mut u8, len: usize) {
    // SAFETY: `base..base+len` is a mapping we made and no longer use.
    unsafe { libc::munmap(base.cast(), len) };
}

/// What [`cleanup_stale`] did.
#[derive(Debug, Default, Clone)]
pub struct CleanupReport {
    /// Names removed because their creator is dead.
    pub removed: Vec<String>,
    /// Shoal segments left alone (creator alive, or not ours to judge).
    pub kept: usize,
}

/// Removes shoal segments in `/dev/shm` whose creator process is dead.
///
/// Only files owned by us, whose header is a shoal header, and whose creator
/// (pid and start time) is gone are removed; a live creator's segment, a
/// foreign file or another user's file is never touched.
///
/// ```no_run
/// let report = shoal_shm_ring::cleanup_stale()?;
/// println!("removed {:?}", report.removed);
/// # Ok::<(), shoal_shm_ring::Error>(())
/// ```
pub fn cleanup_stale() -> Result<CleanupReport> {
    let mut report = CleanupReport::default();
    let dir = std::fs::read_dir(SHM_DIR).map_err(|source| Error::Io {
        op: "read_dir /dev/shm",
        source,
    })?;
    for entry in dir.flatten() {
        let fname = entry.file_name();
        let Some(s) = fname.to_str() else { continue };
        if !s.starts_with(NAME_PREFIX) {
            continue;
        }
        let Ok(name) = SegmentName::new(s) else {
            continue;
        };
        match stale_creator(&name) {
            Some(true) => {
                let path = name.path();
                // SAFETY: NUL-terminated path.
                if unsafe { libc::unlink(path.as_ptr()) } == 0 {
                    report.removed.push(s.to_string());
                }
            }
            Some(false) => report.kept += 1,
            None => {}
        }
    }
    Ok(report)
}

/// `Some(true)` if `name` is our shoal segment with a dead creator,
/// `Some(false)` if it is ours and alive, `None` if it is not ours to judge.
fn stale_creator(name: &SegmentName) -> Option<bool> {
    let path = name.path();
    // SAFETY: NUL-terminated path.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NONBLOCK,
        )
    };
    if fd < 0 {
        return None;
    }
    let result = (|| {
        let st = fstat(fd).ok()?;
        if st.st_uid != euid() || st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return None;
        }
        if (st.st_size.max(0) as u64) < HEADER_PAGE as u64 {
            // Too short to judge; a creator may be between open and fallocate.
            return None;
        }
        let mut buf = [0u8; std::mem::size_of::<SegmentHeader>()];
        // SAFETY: reads at most buf.len() bytes into buf from offset 0.
        let n = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n != buf.len() as isize {
            return None;
        }
        let mut aligned = std::mem::MaybeUninit::<SegmentHeader>::uninit();
        // SAFETY: copies a whole header's bytes into aligned storage; every
        // bit pattern is a valid SegmentHeader.
        let h = unsafe {
            std::ptr::copy_nonoverlapping(
                buf.as_ptr(),
                aligned.as_mut_ptr().cast::<u8>(),
                buf.len(),
            );
            read_header(aligned.as_ptr().cast())
        };
        if h.magic != MAGIC || h.creator_uid != euid() {
            return None;
        }
        let creator = ProcessId {
            pid: h.creator_pid,
            start_time: h.creator_start_time,
        };
        Some(!creator.is_alive())
    })();
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    result
}

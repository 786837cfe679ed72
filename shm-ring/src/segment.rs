//! Shared-memory segments: create, attach (validated), unlink, clean up.
//!
//! # Creation
//! A segment is built where nobody can see it: the creator opens an unnamed
//! file in `/dev/shm` (`O_TMPFILE`, mode 0600), reserves its full size
//! (`posix_fallocate`, so a full `/dev/shm` fails here and not later with
//! SIGBUS), maps it, fills the header, writes the `state` word last with
//! Release, takes the ring's *owner lease* (see `crate::lease`) and only
//! then gives the file its name with `linkat`. A name therefore always
//! refers to a complete segment whose creator held a lease on it, and a
//! creator killed at any moment leaves nothing behind: the unnamed file dies
//! with its last descriptor. (Where `O_TMPFILE` is unsupported the creator
//! falls back to `O_CREAT | O_EXCL` and takes the lease right after `open`.)
//!
//! # Attach
//! An attacher opens the name itself (its own open file description, so its
//! leases are its own), checks owner, type and mode with `fstat`, copies the
//! header out once (the `state` word first, with Acquire) and validates the
//! copy against the file size: magic, layout version, ABI fingerprint,
//! state, kind, every offset and size, creator uid. There is no waiting: a
//! short file, a state other than Ready or any invalid field is an immediate
//! error naming the segment, the field, the value found and the value
//! expected.
//!
//! # Cleanup
//! [`cleanup_stale`] judges segments by kernel leases, not by pids (which
//! mean nothing across pid namespaces).

use crate::error::{Error, Result, SegmentLabel};
use crate::layout::{
    HeaderCopy, SegmentHeader, SegmentKind, ABI_FINGERPRINT, FORMAT_TAG_LEN, HEADER_PAGE,
    LAYOUT_VERSION, MAGIC, MAX_CAPACITY, MAX_SLOTS, MIN_CAPACITY, STATE_INITIALIZING,
    STATE_POISONED, STATE_READY,
};
use crate::liveness::{ProcessId, StackWriter};
use crate::name::{PathBuf0, SegmentName, NAME_PREFIX, SHM_DIR};
use crate::sync::{AtomicU32, Ordering};
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

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
///
/// Every value keeps its own open file description of the segment file for
/// its whole life: the ring code takes its leases through it, and the
/// creator's value holds the owner lease.
#[derive(Debug)]
pub struct Segment {
    name: SegmentName,
    /// The shared mapping (memmap2's raw mapping: no references are formed
    /// over memory peers write; the ring code uses raw pointers and
    /// atomics). Unmapped when dropped, before `fd` closes.
    map: memmap2::MmapRaw,
    owner: bool,
    header: HeaderCopy,
    /// Closed after the mapping is gone and the name unlinked (fields drop
    /// after `Drop::drop`), which releases every lease taken through it.
    fd: OwnedFd,
}

// `Segment` is Send and Sync without an `unsafe impl`: memmap2's `MmapRaw`
// is (it hands out only raw pointers), and so are the other fields.

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
        const TRIES: usize = 16;
        let mut name = SegmentName::random(tag)?;
        let total = total_size(spec)?;
        match open_unnamed(&name)? {
            Some(fd) => {
                // Build once; only the name is retried.
                let mut seg = Self::init(spec, name, fd, total)?;
                for _ in 0..TRIES {
                    match link_name(seg.fd(), &name) {
                        Ok(()) => {
                            seg.name = name;
                            seg.owner = true;
                            return Ok(seg);
                        }
                        Err(e) if is_exists(&e) => name = SegmentName::random(tag)?,
                        Err(e) => return Err(e),
                    }
                }
            }
            None => {
                for _ in 0..TRIES {
                    match Self::create_classic(spec, name, total) {
                        Err(e) if is_exists(&e) => name = SegmentName::random(tag)?,
                        other => return other,
                    }
                }
            }
        }
        Err(Error::InvalidName("could not find a free random name"))
    }

    /// Creates the segment `name`; fails (an `Io` error of kind
    /// `AlreadyExists`) if the name exists.
    pub(crate) fn create_named(spec: &SegmentSpec, name: SegmentName) -> Result<Segment> {
        let total = total_size(spec)?;
        match open_unnamed(&name)? {
            Some(fd) => {
                let mut seg = Self::init(spec, name, fd, total)?;
                link_name(seg.fd(), &name)?;
                seg.owner = true;
                Ok(seg)
            }
            None => Self::create_classic(spec, name, total),
        }
    }

    /// The fallback: create under the final name, take the owner lease at
    /// once (so `cleanup_stale` leaves the half-made file alone), build, and
    /// unlink the file again if building fails.
    ///
    /// A `cleanup_stale` that opened the file in the instant between our
    /// `open` and our lease can still judge it debris and unlink it; then
    /// the segment works but cannot be attached. Only kernels without
    /// `O_TMPFILE` on tmpfs (before 3.11) take this path.
    fn create_classic(spec: &SegmentSpec, name: SegmentName, total: u64) -> Result<Segment> {
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
            return Err(Error::last_os_on("open(O_CREAT|O_EXCL)", &name));
        }
        // SAFETY: `fd` was just returned by open and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let id = match fstat(fd.as_raw_fd(), &name) {
            Ok(st) => (st.st_dev, st.st_ino),
            Err(e) => {
                // We made the name a moment ago and cannot tell it apart.
                // SAFETY: NUL-terminated path.
                unsafe { libc::unlink(path.as_ptr()) };
                return Err(e);
            }
        };
        // A second descriptor of the same open file description keeps the
        // lease (taken below) and so the file safe from `cleanup_stale`
        // until the name is gone, even when `init` fails and closes `fd`.
        let keep = match fd.try_clone() {
            Ok(k) => k,
            Err(source) => {
                unlink_if_same(&path, id);
                return Err(Error::Io {
                    op: "dup",
                    path: SegmentLabel(Some(name)),
                    source,
                });
            }
        };
        let built = take_owner_lease(fd.as_raw_fd(), &name)
            .and_then(|()| Self::init(spec, name, fd, total));
        match built {
            Ok(mut seg) => {
                seg.owner = true;
                Ok(seg)
            }
            Err(e) => {
                unlink_if_same(&path, id);
                drop(keep);
                Err(e)
            }
        }
    }

    /// Sizes, maps and fills the file open at `fd`, then takes the owner
    /// lease. The result is not the owner (does not unlink on drop); errors
    /// are labelled with `name`.
    fn init(spec: &SegmentSpec, name: SegmentName, fd: OwnedFd, total: u64) -> Result<Segment> {
        let raw = fd.as_raw_fd();
        // The umask may have removed bits; make the mode exactly 0600.
        // SAFETY: fchmod on a descriptor we own; no memory is involved.
        if unsafe { libc::fchmod(raw, 0o600) } != 0 {
            return Err(Error::last_os_on("fchmod", &name));
        }
        reserve(raw, total, &name)?;
        let map = map_with(
            raw,
            total as usize,
            &name,
            spec.kind == SegmentKind::Overflow,
        )?;
        let control_size = page_round(spec.control_size);
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
        // From here on, dropping `seg` unmaps and closes.
        let seg = Segment {
            name,
            map,
            owner: false,
            header,
            fd,
        };
        // SAFETY: the mapping is `total >= HEADER_PAGE` bytes, page aligned,
        // and no peer can have it mapped yet (the file is unnamed, or named
        // but without a Ready state, which attachers refuse).
        unsafe { write_header(seg.base(), &header) };
        take_owner_lease(raw, &name)?;
        Ok(seg)
    }

    /// Attaches to the segment `name`, expecting `kind`, after validating it.
    ///
    /// Opens its own file description of the file (two attaches in one
    /// process hold independent leases) and does not take the owner lease.
    pub fn attach(name: &SegmentName, kind: SegmentKind) -> Result<Segment> {
        let fd = open_shm(name, libc::O_RDWR).map_err(|e| open_error(name, &name.path(), e))?;
        Self::attach_fd(fd, name, kind)
    }

    /// Attaches again to this segment through a file description of its
    /// own (independent leases, as [`attach`](Self::attach) gives), even
    /// once its name was unlinked: the file is reopened through this
    /// thread's descriptor of it (`/proc/thread-self/fd`, else
    /// `/proc/self/fd`), or by its name where `/proc` cannot say (not
    /// mounted, another pid namespace's); it must be the same file (device
    /// and inode), and is validated again.
    pub(crate) fn reopen(&self, kind: SegmentKind) -> Result<Segment> {
        let n = self.fd.as_raw_fd();
        let mut fd = None;
        for path in [
            format!("/proc/thread-self/fd/{n}\0"),
            format!("/proc/self/fd/{n}\0"),
        ] {
            // SAFETY: a NUL-terminated path; open keeps no pointer to it.
            let raw = unsafe {
                libc::open(
                    path.as_ptr().cast(),
                    libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK,
                )
            };
            if raw >= 0 {
                // SAFETY: `raw` is a descriptor this call just opened and owns.
                fd = Some(unsafe { OwnedFd::from_raw_fd(raw) });
                break;
            }
        }
        let fd = match fd {
            Some(fd) => fd,
            None => open_shm(&self.name, libc::O_RDWR)
                .map_err(|e| open_error(&self.name, &self.name.path(), e))?,
        };
        let (ours, theirs) = (fstat(n, &self.name)?, fstat(fd.as_raw_fd(), &self.name)?);
        if (ours.st_dev, ours.st_ino) != (theirs.st_dev, theirs.st_ino) {
            return Err(Error::NotFound { name: self.name });
        }
        Self::attach_fd(fd, &self.name, kind)
    }

    fn attach_fd(fd: OwnedFd, name: &SegmentName, kind: SegmentKind) -> Result<Segment> {
        let raw = fd.as_raw_fd();
        let st = fstat(raw, name)?;
        let our_uid = euid();
        if st.st_uid != our_uid {
            return Err(Error::WrongOwner {
                segment: SegmentLabel(Some(*name)),
                file_uid: st.st_uid,
                our_uid,
            });
        }
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(Error::corrupt(
                *name,
                "file type",
                u64::from(st.st_mode),
                "a regular file",
            ));
        }
        let mode = st.st_mode & 0o7777;
        if mode != 0o600 {
            return Err(Error::corrupt(
                *name,
                "file mode",
                u64::from(mode),
                EXPECT_MODE,
            ));
        }
        let size = st.st_size.max(0) as u64;
        if size < HEADER_PAGE as u64 {
            return Err(Error::corrupt(*name, "file size", size, EXPECT_MIN_SIZE));
        }
        // Copy the header out of a mapping of the header page only, so a
        // forged huge size is refused before anything that large is mapped.
        let head = map(raw, HEADER_PAGE, name)?;
        // SAFETY: `head` maps HEADER_PAGE bytes, which hold the header.
        let copy = unsafe { read_header(head.as_ptr()) };
        drop(head);
        check(
            &copy,
            size,
            Some(kind),
            SegmentLabel(Some(*name)),
            st.st_uid,
        )
        .map_err(|e| e.on(name))?;
        // Validated: total_size == size. A 32-bit process may still be
        // unable to map it.
        let len = usize::try_from(size)
            .map_err(|_| Error::corrupt(*name, "file size", size, "a size this process can map"))?;
        let map = map_with(raw, len, name, kind == SegmentKind::Overflow)?;
        Ok(Segment {
            name: *name,
            map,
            owner: false,
            header: copy,
            fd,
        })
    }

    /// The data area: its start (page aligned) and its length.
    pub(crate) fn data_area(&self) -> (*mut u8, u64) {
        (self.data_ptr(), self.header.data_capacity)
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

    /// The descriptor of this value's own open file description of the
    /// segment file; leases are taken through it. Valid as long as `self`.
    pub(crate) fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Whether the segment's creator (a broadcast writer, an MPMC ring's
    /// creator) still holds it: its lease is held through another open
    /// file description than this value's. The kernel drops the lease when
    /// the creator's process dies, whatever pid namespace it is in.
    ///
    /// ```
    /// use shoal_shm_ring::{BroadcastConfig, BroadcastWriter, Segment, SegmentKind};
    /// let w = BroadcastWriter::create(&BroadcastConfig::new(1 << 16, 1))?;
    /// let seg = Segment::attach(w.handle().name(), SegmentKind::Broadcast)?;
    /// assert!(seg.creator_alive());
    /// drop(w);
    /// assert!(!seg.creator_alive());
    /// # Ok::<(), shoal_shm_ring::Error>(())
    /// ```
    pub fn creator_alive(&self) -> bool {
        crate::lease::held_by_other(self.fd(), crate::lease::OWNER, 1)
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
            return Err(Error::last_os_on("unlink", &self.name));
        }
        Ok(())
    }

    /// Gives up ownership: the file will not be unlinked on drop.
    pub(crate) fn disown(&mut self) {
        self.owner = false;
    }

    /// Marks the segment poisoned: later attaches fail with [`Error::Poisoned`].
    pub fn poison(&self) {
        let h = self.base() as *const SegmentHeader;
        // SAFETY: the mapping is at least HEADER_PAGE bytes and page aligned,
        // so the `state` field lies inside it, aligned. Only a reference to
        // that one atomic is formed (peers access it atomically too); the
        // rest of the header is never borrowed.
        let state = unsafe { &*std::ptr::addr_of!((*h).state) };
        state.store(STATE_POISONED, Ordering::Release);
    }

    /// Start of the control area.
    pub(crate) fn control_ptr(&self) -> *mut u8 {
        // SAFETY: control_offset was validated to lie within the mapping.
        unsafe { self.base().add(self.header.control_offset as usize) }
    }

    /// Start of the mapping.
    #[inline]
    fn base(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    /// Start of the data area.
    pub(crate) fn data_ptr(&self) -> *mut u8 {
        // SAFETY: data_offset was validated to lie within the mapping.
        unsafe { self.base().add(self.header.data_offset as usize) }
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        if self.owner {
            let _ = self.unlink();
        }
        // `map` is unmapped after this, then `fd` closes, dropping our leases: a name never outlives
        // its creator's lease.
    }
}

/// Header page, control area (page-rounded) and data area, in bytes.
fn total_size(spec: &SegmentSpec) -> Result<u64> {
    (HEADER_PAGE as u64)
        .checked_add(page_round(spec.control_size))
        .and_then(|v| v.checked_add(spec.data_capacity))
        .filter(|&t| t <= isize::MAX as u64)
        .ok_or(Error::TooLarge {
            what: "segment size",
            got: spec.data_capacity,
            limit: isize::MAX as u64,
        })
}

/// Whether `e` says a name is taken.
fn is_exists(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. } if source.kind() == io::ErrorKind::AlreadyExists)
}

/// Opens an unnamed file in `/dev/shm`; `None` if the kernel or the file
/// system does not support `O_TMPFILE`.
fn open_unnamed(label: &SegmentName) -> Result<Option<OwnedFd>> {
    // SAFETY: a NUL-terminated literal path; open does not keep the pointer.
    let fd = unsafe {
        libc::open(
            c"/dev/shm".as_ptr(),
            libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC,
            0o600 as libc::c_uint,
        )
    };
    if fd >= 0 {
        // SAFETY: `fd` was just returned by open and is owned by nobody else.
        return Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }));
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        // Old kernels ignore the unknown bit and see O_DIRECTORY (EISDIR);
        // file systems without support say EOPNOTSUPP; EINVAL is documented.
        Some(libc::EOPNOTSUPP) | Some(libc::EISDIR) | Some(libc::EINVAL) => Ok(None),
        _ => Err(Error::Io {
            op: "open(O_TMPFILE)",
            path: SegmentLabel(Some(*label)),
            source: e,
        }),
    }
}

/// Gives the unnamed file at `fd` the name `name`. Fails with an `Io` error
/// of kind `AlreadyExists` if the name is taken (by anything, a dangling
/// symlink included: `linkat` never follows the new path).
fn link_name(fd: RawFd, name: &SegmentName) -> Result<()> {
    let path = name.path();
    let mut proc_path = [0u8; 32];
    {
        let mut w = StackWriter::new(&mut proc_path);
        w.push(b"/proc/self/fd/");
        w.push_u64(fd as u64);
        w.push(b"\0");
    }
    // SAFETY: both paths are NUL-terminated buffers that outlive the call
    // (the fd number has at most 10 digits: 14 + 10 + 1 < 32 bytes).
    let r = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            proc_path.as_ptr().cast(),
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let first = io::Error::last_os_error();
    if first.raw_os_error() != Some(libc::ENOENT) {
        return Err(Error::Io {
            op: "linkat",
            path: SegmentLabel(Some(*name)),
            source: first,
        });
    }
    // No /proc: link the descriptor itself (needs CAP_DAC_READ_SEARCH).
    // SAFETY: an empty NUL-terminated literal and a NUL-terminated path.
    let r = unsafe {
        libc::linkat(
            fd,
            c"".as_ptr(),
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    if r == 0 {
        return Ok(());
    }
    Err(Error::last_os_on("linkat(AT_EMPTY_PATH)", name))
}

/// Takes the owner lease through `fd`, labelling errors with `name`.
fn take_owner_lease(fd: RawFd, name: &SegmentName) -> Result<()> {
    match crate::lease::try_take(fd, crate::lease::OWNER) {
        Ok(true) => Ok(()),
        // Nobody else can have opened a file this new, short of reaching
        // into our /proc/<pid>/fd: refuse rather than share ownership.
        Ok(false) => Err(Error::Io {
            op: "fcntl(F_OFD_SETLK) owner lease",
            path: SegmentLabel(Some(*name)),
            source: io::Error::from_raw_os_error(libc::EAGAIN),
        }),
        Err(Error::Io { op, source, .. }) => Err(Error::Io {
            op,
            path: SegmentLabel(Some(*name)),
            source,
        }),
        Err(e) => Err(e),
    }
}

/// `/dev/shm` has no room left: what `posix_fallocate`'s ENOSPC means here.
#[derive(Debug)]
struct ShmFull {
    bytes: u64,
    os: io::Error,
}

impl fmt::Display for ShmFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "/dev/shm is full: no space left for a {}-byte segment",
            self.bytes
        )
    }
}

impl std::error::Error for ShmFull {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.os)
    }
}

/// Reserves `total` bytes for the file at `fd`, so that a full `/dev/shm`
/// fails here and not later with SIGBUS on a write into a sparse page.
fn reserve(fd: RawFd, total: u64, name: &SegmentName) -> Result<()> {
    let fail = |source: io::Error| Error::Io {
        op: "posix_fallocate",
        path: SegmentLabel(Some(*name)),
        source,
    };
    loop {
        // SAFETY: fd is open for writing; 0 < total <= isize::MAX fits off_t.
        // posix_fallocate returns the error number (it does not set errno).
        match unsafe { libc::posix_fallocate(fd, 0, total as libc::off_t) } {
            0 => return Ok(()),
            libc::EINTR => continue,
            // Only "this file system cannot reserve" falls back to a plain
            // resize (there is then no reservation to be had).
            libc::EOPNOTSUPP | libc::EINVAL => break,
            libc::ENOSPC => {
                let os = io::Error::from_raw_os_error(libc::ENOSPC);
                return Err(fail(io::Error::new(
                    os.kind(),
                    ShmFull { bytes: total, os },
                )));
            }
            e => return Err(fail(io::Error::from_raw_os_error(e))),
        }
    }
    // SAFETY: ftruncate on a descriptor we own; no memory is involved.
    if unsafe { libc::ftruncate(fd, total as libc::off_t) } != 0 {
        return Err(Error::last_os_on("ftruncate", name));
    }
    Ok(())
}

/// Writes `h` into the header at `base`, the `state` word last (Release).
///
/// # Safety
/// `base` must point to at least `size_of::<SegmentHeader>()` writable,
/// suitably aligned mapped bytes that no peer reads yet.
unsafe fn write_header(base: *mut u8, h: &HeaderCopy) {
    use std::ptr::{addr_of, addr_of_mut};
    let p = base as *mut SegmentHeader;
    // SAFETY: (every write) the caller guarantees the header is mapped,
    // aligned and ours alone; writes through raw places form no reference.
    unsafe {
        addr_of_mut!((*p).magic).write(h.magic);
        addr_of_mut!((*p).layout_version).write(h.layout_version);
        addr_of_mut!((*p).abi_fingerprint).write(h.abi_fingerprint);
        addr_of_mut!((*p).kind).write(h.kind);
        addr_of_mut!((*p).flags).write(h.flags);
        addr_of_mut!((*p).total_size).write(h.total_size);
        addr_of_mut!((*p).control_offset).write(h.control_offset);
        addr_of_mut!((*p).control_size).write(h.control_size);
        addr_of_mut!((*p).data_offset).write(h.data_offset);
        addr_of_mut!((*p).data_capacity).write(h.data_capacity);
        addr_of_mut!((*p).slots).write(h.slots);
        addr_of_mut!((*p).producer_slots).write(h.producer_slots);
        addr_of_mut!((*p).creator_uid).write(h.creator_uid);
        addr_of_mut!((*p).creator_pid).write(h.creator_pid);
        addr_of_mut!((*p).creator_start_time).write(h.creator_start_time);
        addr_of_mut!((*p).payload_len).write(h.payload_len);
        addr_of_mut!((*p).payload_format).write(h.payload_format);
        let state: &AtomicU32 = &*addr_of!((*p).state);
        // SYNC W(ready): pairs with the Acquire load in `read_header`.
        state.store(h.state, Ordering::Release);
    }
}

/// Describes a failed `open` of `name`: missing, a symlink or other
/// non-file, another user's file, or a plain I/O error.
fn open_error(name: &SegmentName, path: &PathBuf0, e: io::Error) -> Error {
    let errno = e.raw_os_error();
    if errno == Some(libc::ENOENT) {
        return Error::NotFound { name: *name };
    }
    if matches!(
        errno,
        Some(libc::ELOOP | libc::EISDIR | libc::ENXIO | libc::EACCES | libc::EPERM)
    ) {
        if let Some(st) = lstat(path) {
            let ty = st.st_mode & libc::S_IFMT;
            let our_uid = euid();
            if ty == libc::S_IFLNK {
                return Error::corrupt(
                    *name,
                    "file type",
                    u64::from(st.st_mode),
                    "a regular file, not a symlink",
                );
            }
            if st.st_uid != our_uid {
                return Error::WrongOwner {
                    segment: SegmentLabel(Some(*name)),
                    file_uid: st.st_uid,
                    our_uid,
                };
            }
            if ty != libc::S_IFREG {
                return Error::corrupt(*name, "file type", u64::from(st.st_mode), "a regular file");
            }
        }
    }
    Error::Io {
        op: "open",
        path: SegmentLabel(Some(*name)),
        source: e,
    }
}

/// Expected-value texts (kept in step with the constants by a unit test).
const EXPECT_MODE: &str = "0x180 (mode 0600: read-write for the owner only)";
const EXPECT_MIN_SIZE: &str = "at least one header page (0x1000 bytes)";
const EXPECT_MAGIC: &str = "0x4745534c414f4853 (b\"SHOALSEG\")";
const EXPECT_STATE: &str = "0x52454459 (ready)";
const EXPECT_CONTROL_OFFSET: &str = "0x1000 (right after the header page)";
const EXPECT_CAPACITY: &str = "a power of two from 0x1000 to 0x80000000";
const EXPECT_SLOTS: &str = "1 to 1024";
const EXPECT_PRODUCERS: &str = "1 to 1024 for an MPMC ring";

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
        SegmentKind::Overflow | SegmentKind::Region => 0,
    }
}

/// Validates a header copy against the file size and the expected kind.
///
/// Errors carry no segment name (this function is not told it); attaching
/// runs the same checks and names the segment.
pub fn validate(h: &HeaderCopy, file_size: u64, kind: Option<SegmentKind>) -> Result<()> {
    check(h, file_size, kind, SegmentLabel(None), euid())
}

/// The checks behind [`validate`]: `seg` labels the errors, `owner_uid` is
/// the uid owning the file (the header's creator uid must match it).
fn check(
    h: &HeaderCopy,
    file_size: u64,
    kind: Option<SegmentKind>,
    seg: SegmentLabel,
    owner_uid: u32,
) -> Result<()> {
    let bad = |what, found: u64, expected| Err(Error::corrupt(seg, what, found, expected));
    if h.magic != MAGIC {
        return bad("magic", h.magic, EXPECT_MAGIC);
    }
    if h.layout_version != LAYOUT_VERSION {
        return Err(Error::VersionMismatch {
            segment: SegmentLabel(None),
            ours: LAYOUT_VERSION,
            theirs: h.layout_version,
        });
    }
    if h.abi_fingerprint != ABI_FINGERPRINT {
        return Err(Error::AbiMismatch {
            segment: SegmentLabel(None),
            ours: ABI_FINGERPRINT,
            theirs: h.abi_fingerprint,
        });
    }
    match h.state {
        STATE_READY => {}
        STATE_POISONED => {
            return Err(Error::Poisoned {
                segment: SegmentLabel(None),
            })
        }
        STATE_INITIALIZING => {
            return Err(Error::NotReady {
                segment: SegmentLabel(None),
                pid: h.creator_pid,
            })
        }
        s => return bad("state", u64::from(s), EXPECT_STATE),
    }
    let Some(found) = SegmentKind::from_u32(h.kind) else {
        return bad(
            "kind",
            u64::from(h.kind),
            "1 (broadcast ring), 2 (MPMC ring), 3 (overflow record) or 4 (shared region)",
        );
    };
    if let Some(k) = kind {
        if k != found {
            return Err(Error::WrongKind {
                segment: SegmentLabel(None),
                ours: k.name(),
                theirs: found.name(),
            });
        }
    }
    if h.flags != 0 {
        return bad("flags", u64::from(h.flags), "0");
    }
    if h.total_size > file_size {
        return bad(
            "total_size",
            h.total_size,
            "the file's size (the file is shorter: truncated)",
        );
    }
    if h.total_size != file_size {
        return bad(
            "total_size",
            h.total_size,
            "the file's size (the file is longer)",
        );
    }
    if h.control_offset != HEADER_PAGE as u64 {
        return bad("control_offset", h.control_offset, EXPECT_CONTROL_OFFSET);
    }
    let Some(data_offset) = h.control_offset.checked_add(h.control_size) else {
        return bad(
            "control_size",
            h.control_size,
            "a size that fits after control_offset",
        );
    };
    if h.data_offset != data_offset || !h.data_offset.is_multiple_of(HEADER_PAGE as u64) {
        return bad(
            "data_offset",
            h.data_offset,
            "control_offset + control_size, on a page boundary",
        );
    }
    if h.data_offset.checked_add(h.data_capacity) != Some(h.total_size) {
        return bad("data_capacity", h.data_capacity, "total_size - data_offset");
    }
    match found {
        SegmentKind::Broadcast | SegmentKind::Mpmc => {
            if !h.data_capacity.is_power_of_two()
                || h.data_capacity < MIN_CAPACITY
                || h.data_capacity > MAX_CAPACITY
            {
                return bad("data_capacity", h.data_capacity, EXPECT_CAPACITY);
            }
            if h.slots == 0 || h.slots > MAX_SLOTS {
                return bad("slots", u64::from(h.slots), EXPECT_SLOTS);
            }
            match found {
                SegmentKind::Broadcast if h.producer_slots != 0 => {
                    return bad(
                        "producer_slots",
                        u64::from(h.producer_slots),
                        "0 for a broadcast ring",
                    );
                }
                SegmentKind::Mpmc if h.producer_slots == 0 || h.producer_slots > MAX_SLOTS => {
                    return bad(
                        "producer_slots",
                        u64::from(h.producer_slots),
                        EXPECT_PRODUCERS,
                    );
                }
                _ => {}
            }
            if h.control_size != page_round(control_size(found, h.slots, h.producer_slots)) {
                return bad(
                    "control_size",
                    h.control_size,
                    "the page-rounded size of the control lines and slots",
                );
            }
            if h.payload_len != 0 {
                return bad("payload_len", h.payload_len, "0 for a ring");
            }
        }
        SegmentKind::Overflow | SegmentKind::Region => {
            if h.slots != 0 {
                return bad(
                    "slots",
                    u64::from(h.slots),
                    "0 for an overflow record or a region",
                );
            }
            if h.producer_slots != 0 {
                return bad(
                    "producer_slots",
                    u64::from(h.producer_slots),
                    "0 for an overflow record or a region",
                );
            }
            if h.control_size != 0 {
                return bad(
                    "control_size",
                    h.control_size,
                    "0 for an overflow record or a region",
                );
            }
            if h.payload_len > h.data_capacity {
                return bad("payload_len", h.payload_len, "at most data_capacity");
            }
        }
    }
    if h.creator_uid != owner_uid {
        return bad(
            "creator_uid",
            u64::from(h.creator_uid),
            "the file owner's uid",
        );
    }
    if h.creator_pid == 0 {
        return bad("creator_pid", 0, "a nonzero pid");
    }
    Ok(())
}

/// Copies the header out of a mapping, once: the `state` word first, with
/// Acquire, then every other field with one volatile read each.
///
/// No reference to the header is ever formed (a peer may be writing it):
/// only the `state` atomic is borrowed, and only for its load.
///
/// # Safety
/// `base` must point to at least `size_of::<SegmentHeader>()` mapped bytes,
/// aligned for `SegmentHeader`.
pub(crate) unsafe fn read_header(base: *const u8) -> HeaderCopy {
    use std::ptr::addr_of;
    let h = base as *const SegmentHeader;
    // SAFETY: (every read) the caller guarantees the header is mapped and
    // aligned. `state` is an AtomicU32, so a shared reference to that field
    // alone is sound even while peers store to it; the other fields are
    // read through raw places, each exactly once, so a peer rewriting the
    // live header cannot make later checks see different values.
    unsafe {
        let state_ref: &AtomicU32 = &*addr_of!((*h).state);
        // SYNC R(ready): pairs with the Release store in `write_header`.
        let state = state_ref.load(Ordering::Acquire);
        HeaderCopy {
            magic: addr_of!((*h).magic).read_volatile(),
            layout_version: addr_of!((*h).layout_version).read_volatile(),
            state,
            abi_fingerprint: addr_of!((*h).abi_fingerprint).read_volatile(),
            kind: addr_of!((*h).kind).read_volatile(),
            flags: addr_of!((*h).flags).read_volatile(),
            total_size: addr_of!((*h).total_size).read_volatile(),
            control_offset: addr_of!((*h).control_offset).read_volatile(),
            control_size: addr_of!((*h).control_size).read_volatile(),
            data_offset: addr_of!((*h).data_offset).read_volatile(),
            data_capacity: addr_of!((*h).data_capacity).read_volatile(),
            slots: addr_of!((*h).slots).read_volatile(),
            producer_slots: addr_of!((*h).producer_slots).read_volatile(),
            creator_uid: addr_of!((*h).creator_uid).read_volatile(),
            creator_pid: addr_of!((*h).creator_pid).read_volatile(),
            creator_start_time: addr_of!((*h).creator_start_time).read_volatile(),
            payload_len: addr_of!((*h).payload_len).read_volatile(),
            payload_format: addr_of!((*h).payload_format).read_volatile(),
        }
    }
}

/// Validates raw header bytes as if read from a file of `file_size` bytes.
/// The entry point of the fuzz target: never panics, whatever the bytes.
/// Errors carry no segment name.
pub fn validate_bytes(bytes: &[u8], file_size: u64) -> Result<HeaderCopy> {
    let need = std::mem::size_of::<SegmentHeader>();
    if bytes.len() < need {
        return Err(Error::corrupt(
            SegmentLabel(None),
            "header length",
            bytes.len() as u64,
            "a whole SegmentHeader",
        ));
    }
    let mut aligned = std::mem::MaybeUninit::<SegmentHeader>::uninit();
    // SAFETY: copies exactly size_of::<SegmentHeader>() bytes (checked above)
    // into properly aligned local storage, which is then fully initialized;
    // every bit pattern is a valid SegmentHeader (integers, a byte array
    // and one AtomicU32), and nobody else can see the local copy.
    let copy = unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), aligned.as_mut_ptr().cast::<u8>(), need);
        read_header(aligned.as_ptr().cast())
    };
    validate(&copy, file_size, None)?;
    Ok(copy)
}

fn fstat(fd: RawFd, name: &SegmentName) -> Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes a whole `stat` into `st` on success; fd is open.
    if unsafe { libc::fstat(fd, st.as_mut_ptr()) } != 0 {
        return Err(Error::last_os_on("fstat", name));
    }
    // SAFETY: fstat returned 0, so `st` is initialized.
    Ok(unsafe { st.assume_init() })
}

fn lstat(path: &PathBuf0) -> Option<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: NUL-terminated path; lstat writes a whole `stat` on success.
    if unsafe { libc::lstat(path.as_ptr(), st.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: lstat returned 0, so `st` is initialized.
    Some(unsafe { st.assume_init() })
}

/// Unlinks `path` if it still names the file `(dev, ino)`; whether it did.
fn unlink_if_same(path: &PathBuf0, id: (libc::dev_t, libc::ino_t)) -> bool {
    match lstat(path) {
        Some(st) if (st.st_dev, st.st_ino) == id => {
            // SAFETY: NUL-terminated path.
            unsafe { libc::unlink(path.as_ptr()) == 0 }
        }
        _ => false,
    }
}

/// A fresh shared read-write mapping of `len` bytes of the file at `fd`.
fn map(fd: RawFd, len: usize, name: &SegmentName) -> Result<memmap2::MmapRaw> {
    map_with(fd, len, name, false)
}

/// Like [`map`]; `populate` pre-faults every page in one call
/// (`MAP_POPULATE`), for overflow segments whose every byte is written or
/// read right away: one system call instead of a page fault per 4 KiB.
fn map_with(fd: RawFd, len: usize, name: &SegmentName, populate: bool) -> Result<memmap2::MmapRaw> {
    let mut o = memmap2::MmapOptions::new();
    o.len(len);
    if populate {
        o.populate();
    }
    o.map_raw(fd).map_err(|source| Error::Io {
        op: "mmap",
        path: SegmentLabel(Some(*name)),
        source,
    })
}

/// What [`cleanup_stale`] did.
#[derive(Debug, Default, Clone)]
pub struct CleanupReport {
    /// Names removed because nobody uses them any more.
    pub removed: Vec<String>,
    /// Files of ours under shoal names left alone (in use, or not judged).
    pub kept: usize,
}

/// The bytes `/dev/shm` holds in all (its file system's size), or `None`
/// when it reports no limit (an unlimited tmpfs) or cannot be read. A
/// segment larger than this is refused at create time.
///
/// ```
/// if let Some(n) = shoal_shm_ring::dev_shm_size() {
///     assert!(n > 0);
/// }
/// ```
pub fn dev_shm_size() -> Option<u64> {
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: NUL-terminated literal path; statvfs fills `st` on success.
    let r = unsafe { libc::statvfs(c"/dev/shm".as_ptr(), st.as_mut_ptr()) };
    if r != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so `st` is initialized.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)] // the field types differ by target
    let size = (st.f_blocks as u64).saturating_mul(st.f_frsize as u64);
    (size > 0).then_some(size)
}

/// Removes shoal segments in `/dev/shm` that nobody uses any more.
///
/// Only regular files owned by our effective uid, named `shoal-*`, are
/// considered; another user's file, a symlink, a directory or a FIFO is
/// never touched. Liveness is judged by the kernel's leases (see
/// `crate::lease`), which hold across pid namespaces and cannot be fooled
/// by pid reuse:
///
/// - a ring (current layout) is removed iff no live participant holds any
///   lease on it;
/// - an overflow record `<ring>.o<seq>` is removed iff nobody holds a lease
///   on it and its ring is gone or unused (a consumer attached to the ring
///   may still take it after its producer exited);
/// - a segment of another layout version (a build without leases) is
///   removed iff its creator (pid and start time) is dead and nobody holds a
///   lease on it;
/// - debris (too short for a header, a foreign magic) is removed iff nobody
///   holds a lease on it. Creation never leaves such files any more.
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
        path: SegmentLabel(None),
        source,
    })?;
    let our_uid = euid();
    for entry in dir.flatten() {
        let fname = entry.file_name();
        let Some(s) = fname.to_str() else { continue };
        if !s.starts_with(NAME_PREFIX) {
            continue;
        }
        let Ok(name) = SegmentName::new(s) else {
            continue;
        };
        let Some(file) = Candidate::open(&name, our_uid) else {
            continue;
        };
        if !file.is_stale(&name, our_uid) {
            report.kept += 1;
        } else if unlink_if_same(&name.path(), file.id) {
            report.removed.push(s.to_string());
        }
        // else: it vanished or was replaced meanwhile; not ours to count.
    }
    Ok(report)
}

/// A `shoal-*` regular file of ours, open read-only (enough to query
/// leases with `F_OFD_GETLK`).
struct Candidate {
    fd: OwnedFd,
    id: (libc::dev_t, libc::ino_t),
    size: u64,
}

/// Where layout version 1 (the last without leases) keeps the creator's
/// uid, pid and start time; a newer header may move them.
const V1_CREATOR_UID_AT: usize = 80;
const V1_CREATOR_PID_AT: usize = 84;
const V1_CREATOR_START_AT: usize = 88;
/// Header bytes `cleanup_stale` reads: magic, version and the v1 creator.
const PEEK_LEN: usize = 96;

impl Candidate {
    /// Opens `name` if it is a regular file owned by `our_uid`.
    fn open(name: &SegmentName, our_uid: u32) -> Option<Candidate> {
        let fd = open_shm(name, libc::O_RDONLY).ok()?;
        let st = fstat(fd.as_raw_fd(), name).ok()?;
        if st.st_uid != our_uid || st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return None;
        }
        Some(Candidate {
            fd,
            id: (st.st_dev, st.st_ino),
            size: st.st_size.max(0) as u64,
        })
    }

    /// Whether nobody uses this file any more (see [`cleanup_stale`]).
    fn is_stale(&self, name: &SegmentName, our_uid: u32) -> bool {
        let fd = self.fd.as_raw_fd();
        let mut head = [0u8; PEEK_LEN];
        let complete = self.size >= HEADER_PAGE as u64 && pread_full(fd, &mut head);
        let word = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&head[at..at + 8]);
            u64::from_ne_bytes(b)
        };
        let half = |at: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&head[at..at + 4]);
            u32::from_ne_bytes(b)
        };
        if complete && word(0) == MAGIC && half(8) != LAYOUT_VERSION {
            // A build of another layout version, which may not take leases:
            // the old rule, plus no lease (in case it does).
            if half(V1_CREATOR_UID_AT) != our_uid {
                return false;
            }
            let creator = ProcessId {
                pid: half(V1_CREATOR_PID_AT),
                start_time: word(V1_CREATOR_START_AT),
            };
            return !creator.is_alive() && !crate::lease::any_held(fd);
        }
        // Rings of this layout, overflow records and debris alike: unused
        // iff nobody holds a lease on the file...
        if crate::lease::any_held(fd) {
            return false;
        }
        // ...and, for an overflow record, nobody on its ring either.
        match overflow_ring(name) {
            Some(ring) => !ring_in_use(&ring, our_uid),
            None => true,
        }
    }
}

/// Reads exactly `buf.len()` bytes from offset 0; whether it could.
fn pread_full(fd: RawFd, buf: &mut [u8]) -> bool {
    let mut got = 0usize;
    while got < buf.len() {
        // SAFETY: writes at most `buf.len() - got` bytes into the tail of
        // `buf`, which we borrow mutably.
        let n = unsafe {
            libc::pread(
                fd,
                buf[got..].as_mut_ptr().cast(),
                buf.len() - got,
                got as libc::off_t,
            )
        };
        if n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        if n <= 0 {
            return false;
        }
        got += n as usize;
    }
    true
}

/// The ring an overflow record's name `<ring>.o<16 hex digits>` belongs to.
fn overflow_ring(name: &SegmentName) -> Option<SegmentName> {
    name.overflow_parts().map(|(ring, _)| ring)
}

/// Opens `/dev/shm/<name>` with `flags` (plus close-on-exec), never
/// following a symlink and never blocking on a FIFO planted under the name.
pub(crate) fn open_shm(name: &SegmentName, flags: libc::c_int) -> io::Result<OwnedFd> {
    let path = name.path();
    // SAFETY: `path` is NUL-terminated; open does not keep the pointer.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            flags | libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NONBLOCK,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by open and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether the ring `ring` exists and somebody holds a lease on it. In
/// doubt (it exists but cannot be judged), in use.
fn ring_in_use(ring: &SegmentName, our_uid: u32) -> bool {
    let fd = match open_shm(ring, libc::O_RDONLY) {
        Ok(fd) => fd,
        Err(e) => return e.raw_os_error() != Some(libc::ENOENT),
    };
    match fstat(fd.as_raw_fd(), ring) {
        Ok(st) if st.st_mode & libc::S_IFMT != libc::S_IFREG => false, // not a ring
        Ok(st) if st.st_uid != our_uid => true,
        Ok(_) => crate::lease::any_held(fd.as_raw_fd()),
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: SegmentKind) -> SegmentSpec {
        let (slots, producers) = match kind {
            SegmentKind::Broadcast => (2, 0),
            SegmentKind::Mpmc => (2, 2),
            SegmentKind::Overflow | SegmentKind::Region => (0, 0),
        };
        SegmentSpec {
            kind,
            control_size: control_size(kind, slots, producers),
            data_capacity: 1 << 16,
            slots,
            producer_slots: producers,
            payload_len: 0,
            payload_format: [0; FORMAT_TAG_LEN],
        }
    }

    fn exists(name: &SegmentName) -> bool {
        lstat(&name.path()).is_some()
    }

    #[test]
    fn expected_texts_match_the_constants() {
        assert!(EXPECT_MAGIC.starts_with(&format!("{MAGIC:#x} ")));
        assert!(EXPECT_STATE.starts_with(&format!("{STATE_READY:#x} ")));
        assert!(EXPECT_MODE.starts_with(&format!("{:#x} ", 0o600)));
        assert!(EXPECT_MIN_SIZE.contains(&format!("({HEADER_PAGE:#x} bytes)")));
        assert!(EXPECT_CONTROL_OFFSET.starts_with(&format!("{HEADER_PAGE:#x} ")));
        assert_eq!(
            EXPECT_CAPACITY,
            format!("a power of two from {MIN_CAPACITY:#x} to {MAX_CAPACITY:#x}")
        );
        assert_eq!(EXPECT_SLOTS, format!("1 to {MAX_SLOTS}"));
        assert!(EXPECT_PRODUCERS.starts_with(EXPECT_SLOTS));
        assert_eq!(
            (V1_CREATOR_UID_AT, V1_CREATOR_PID_AT, V1_CREATOR_START_AT),
            (80, 84, 88)
        );
    }

    #[test]
    fn both_creation_paths_make_a_complete_owned_leased_file() {
        let mpmc = spec(SegmentKind::Mpmc);
        let total = total_size(&mpmc).unwrap();
        let unnamed = |name| Segment::create_named(&mpmc, name);
        let classic = |name| Segment::create_classic(&mpmc, name, total);
        type Make<'a> = &'a dyn Fn(SegmentName) -> Result<Segment>;
        let ways: [(&str, Make<'_>); 2] = [("O_TMPFILE", &unnamed), ("O_CREAT", &classic)];
        for (how, make) in ways {
            let name = SegmentName::random("segtest").unwrap();
            let seg = make(name).unwrap();
            assert!(seg.is_owner());
            assert!(exists(&name));
            let other = Segment::attach(&name, SegmentKind::Mpmc).unwrap();
            assert!(!other.is_owner());
            assert_eq!(other.header(), seg.header());
            assert_ne!(other.fd(), seg.fd());
            // The creator holds the owner lease; the attacher does not, and
            // its description is its own.
            assert!(crate::lease::held_by_other(
                other.fd(),
                crate::lease::OWNER,
                1
            ));
            assert!(!crate::lease::try_take(other.fd(), crate::lease::OWNER).unwrap());
            assert!(crate::lease::try_take(other.fd(), crate::lease::slot_byte(0)).unwrap());
            let third = Segment::attach(&name, SegmentKind::Mpmc).unwrap();
            assert!(!crate::lease::try_take(third.fd(), crate::lease::slot_byte(0)).unwrap());
            // Taken names are refused.
            let again = make(name);
            assert!(matches!(&again, Err(e) if is_exists(e)), "{how}: {again:?}");
            drop((other, third));
            drop(seg);
            assert!(!exists(&name), "{how}: the owner's drop unlinks");
        }
    }

    #[test]
    fn a_reservation_larger_than_dev_shm_fails_and_leaves_no_file() {
        let Some(fs_bytes) = dev_shm_size() else {
            // An unlimited tmpfs would try to reserve it all.
            eprintln!("skipped: /dev/shm has no size limit");
            return;
        };
        // tmpfs refuses a reservation larger than itself before allocating.
        let mut big = spec(SegmentKind::Overflow);
        big.data_capacity = page_round(2 * fs_bytes);
        let total = total_size(&big).unwrap();
        let unnamed = |name| Segment::create_named(&big, name);
        let classic = |name| Segment::create_classic(&big, name, total);
        type Make<'a> = &'a dyn Fn(SegmentName) -> Result<Segment>;
        let ways: [(&str, Make<'_>); 2] = [("O_TMPFILE", &unnamed), ("O_CREAT", &classic)];
        for (how, make) in ways {
            let name = SegmentName::random("segtest").unwrap();
            match make(name) {
                Err(Error::Io {
                    op: "posix_fallocate",
                    path,
                    source,
                }) => {
                    assert_eq!(path.0, Some(name), "{how}");
                    assert!(
                        source.to_string().contains("/dev/shm is full"),
                        "{how}: {source}"
                    );
                }
                other => panic!("{how}: {other:?}"),
            }
            assert!(!exists(&name), "{how}: a failed create left its file");
        }
    }

    #[test]
    fn overflow_names_lead_back_to_their_ring() {
        let ring = SegmentName::random("b").unwrap();
        assert_eq!(overflow_ring(&ring.overflow(0xabc).unwrap()), Some(ring));
        assert_eq!(overflow_ring(&ring), None);
        for bad in [
            "shoal-x.o000000000000000g",
            "shoal-x.p0000000000000000",
            "shoal-x.o00000000000000A0",
            ".o0000000000000000",
            "shoal-.o000000000000000",
        ] {
            if let Ok(n) = SegmentName::new(bad) {
                assert_eq!(overflow_ring(&n), None, "{bad}");
            }
        }
    }

    #[test]
    fn poison_and_read_header_use_the_state_word() {
        let name = SegmentName::random("segtest").unwrap();
        let seg = Segment::create_named(&spec(SegmentKind::Broadcast), name).unwrap();
        // SAFETY: the mapping holds the header.
        let h = unsafe { read_header(seg.base()) };
        assert_eq!(&h, seg.header());
        seg.poison();
        // SAFETY: as above.
        assert_eq!(unsafe { read_header(seg.base()) }.state, STATE_POISONED);
        assert!(matches!(
            Segment::attach(&name, SegmentKind::Broadcast),
            Err(Error::Poisoned { .. })
        ));
    }
}

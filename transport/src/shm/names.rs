//! `shm://NAME` → the ring bound under that name.
//!
//! Binding links a small file, `/dev/shm/shoalname.NAME`, holding the
//! ring's handle (`shm://shoal-bc-…`, a random segment name), mode 0600.
//! The file is written under a temporary name and hard-linked into place:
//! `link` fails if the name exists, so of two binders racing for a free
//! name exactly one wins. A name whose ring's creator lives is in use
//! ([`Error::AddrInUse`]); a dead binder's file is removed (only if it is
//! still the same file) and the link retried. The binder removes its own
//! file when it unbinds, again only if it is still the same file.
//!
//! `/dev/shm` is writable by every user: a name file is trusted only if it
//! is a regular file of ours with no group or other permissions, opened
//! without following links and without blocking (a planted FIFO), and read
//! up to a small bound. The prefix `shoalname.` keeps name files out of
//! `shoal_shm_ring::cleanup_stale`'s way (it judges `shoal-*` files).

use crate::error::{Error, Result};
use shoal_shm_ring::{Handle, Segment, SegmentKind};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Where name files live.
const DIR: &str = "/dev/shm";
/// The name files' prefix.
const PREFIX: &str = "shoalname.";
/// Longest handle text a name file may hold.
const MAX_FILE: u64 = 512;

/// A file's identity: a path checked later must still name this file.
type FileId = (u64, u64);

fn path(name: &str) -> Result<PathBuf> {
    let ok = !name.is_empty()
        && name.len() <= crate::address::MAX_SHM_NAME
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !ok {
        return Err(Error::BadAddress {
            address: format!("shm://{name}"),
            why: "a shm name has letters, digits, '.', '_' and '-' only".into(),
        });
    }
    Ok(PathBuf::from(format!("{DIR}/{PREFIX}{name}")))
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { what, source }
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// What a name file says.
enum Content {
    /// A handle.
    Handle(Handle),
    /// Ours, but not a handle (a binder died writing it, or garbage).
    Garbage,
}

/// Reads the name file at `p` if it is one we can trust: `None` when there
/// is none; an error when something else sits at the path.
fn read_checked(p: &Path) -> Result<Option<(Content, FileId)>> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(p);
    let mut f = match f {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(format!("opening name file {}", p.display()))(e)),
    };
    let m = f
        .metadata()
        .map_err(io(format!("inspecting name file {}", p.display())))?;
    if !m.file_type().is_file() || m.uid() != euid() || m.mode() & 0o077 != 0 || m.len() > MAX_FILE
    {
        return Err(Error::Io {
            what: format!(
                "name file {} is not a regular file of ours with mode 0600 and at most {MAX_FILE} bytes (uid {}, mode {:o}, {} bytes): remove it or choose another name",
                p.display(),
                m.uid(),
                m.mode(),
                m.len()
            ),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        });
    }
    let mut text = Vec::with_capacity(MAX_FILE as usize);
    (&mut f)
        .take(MAX_FILE)
        .read_to_end(&mut text)
        .map_err(io(format!("reading name file {}", p.display())))?;
    let content = std::str::from_utf8(&text)
        .ok()
        .and_then(|t| t.trim().parse::<Handle>().ok())
        .map_or(Content::Garbage, Content::Handle);
    Ok(Some((content, (m.dev(), m.ino()))))
}

/// Removes `p` if it still is the file `id`. (A file replaced between the
/// check and the unlink cannot be told apart; names are only ever replaced
/// by linking, after the old file was removed, so that window needs a
/// binder to remove and relink within it.)
fn unlink_if_same(p: &Path, id: FileId) -> bool {
    match std::fs::symlink_metadata(p) {
        Ok(m) if (m.dev(), m.ino()) == id => std::fs::remove_file(p).is_ok(),
        _ => false,
    }
}

/// Whether the ring `h` names is held by a live creator (a publisher's
/// broadcast ring or a puller's work queue).
fn alive(h: &Handle) -> bool {
    [SegmentKind::Broadcast, SegmentKind::Mpmc]
        .into_iter()
        .any(|k| {
            Segment::attach(h.name(), k)
                .map(|s| s.creator_alive())
                .unwrap_or(false)
        })
}

/// The handle bound at `name`, if a name file we trust holds one.
pub fn lookup(name: &str) -> Result<Option<Handle>> {
    Ok(match read_checked(&path(name)?)? {
        Some((Content::Handle(h), _)) => Some(h),
        _ => None,
    })
}

/// Removes name files whose ring is gone or held by nobody alive (left by
/// binders that died), ours that hold no handle, and temporary files of
/// ours older than a minute (a binder died while binding); returns how
/// many.
/// Name files of live rings, and files that are not ours, stay. (Rings
/// themselves: `shoal_shm_ring::cleanup_stale`.)
pub fn cleanup_stale() -> Result<usize> {
    let dir = std::fs::read_dir(DIR).map_err(io(format!("listing {DIR}")))?;
    let mut removed = 0;
    for e in dir.flatten() {
        let file = e.file_name();
        let Some(f) = file.to_str() else { continue };
        if f.starts_with('.') && f[1..].starts_with(PREFIX) {
            // A binder's temporary file: left only by one that died while
            // binding (a live one removes it within the call).
            let old_ours = e.metadata().is_ok_and(|m| {
                m.uid() == euid()
                    && m.file_type().is_file()
                    && m.modified()
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age > std::time::Duration::from_secs(60))
            });
            if old_ours && std::fs::remove_file(e.path()).is_ok() {
                removed += 1;
            }
            continue;
        }
        if !f.starts_with(PREFIX) {
            continue;
        }
        let p = e.path();
        let stale = match read_checked(&p) {
            Ok(Some((Content::Handle(h), id))) => (!alive(&h)).then_some(id),
            Ok(Some((Content::Garbage, id))) => Some(id),
            Ok(None) | Err(_) => None,
        };
        if let Some(id) = stale {
            if unlink_if_same(&p, id) {
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// A bound name; unbinds on drop.
#[derive(Debug)]
pub struct Binding {
    path: PathBuf,
    id: FileId,
}

impl Binding {
    /// Binds `name` to the ring `handle`, unless a live ring holds it.
    /// `address` is for errors.
    pub fn bind(name: &str, handle: &Handle, address: &str) -> Result<Binding> {
        let p = path(name)?;
        let tmp = PathBuf::from(format!(
            "{DIR}/.{PREFIX}{name}.{}.{:x}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0)
        ));
        let write = || -> std::io::Result<FileId> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&tmp)?;
            f.write_all(handle.to_string().as_bytes())?;
            let m = f.metadata()?;
            Ok((m.dev(), m.ino()))
        };
        let id = match write() {
            Ok(id) => id,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(io(format!("writing {}", tmp.display()))(e));
            }
        };
        let result = (|| {
            for _ in 0..8 {
                match std::fs::hard_link(&tmp, &p) {
                    Ok(()) => {
                        return Ok(Binding {
                            path: p.clone(),
                            id,
                        })
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(io(format!("binding {}", p.display()))(e)),
                }
                match read_checked(&p)? {
                    // Gone meanwhile: link again.
                    None => {}
                    Some((Content::Handle(h), _)) if alive(&h) => {
                        return Err(Error::AddrInUse {
                            address: address.to_string(),
                        })
                    }
                    // A dead binder's, or garbage of ours: take it over.
                    Some((_, old)) => {
                        unlink_if_same(&p, old);
                    }
                }
            }
            // Another binder keeps winning the race for this name.
            Err(Error::AddrInUse {
                address: address.to_string(),
            })
        })();
        let _ = std::fs::remove_file(&tmp);
        result
    }
}

impl Drop for Binding {
    fn drop(&mut self) {
        // Only our own file: a later binder may have taken the name over.
        unlink_if_same(&self.path, self.id);
    }
}

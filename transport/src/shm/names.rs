//! `shm://NAME` → the ring bound under that name.
//!
//! Binding writes a small file, `/dev/shm/shoal-n-NAME`, holding the ring's
//! handle (`shm://shoal-bc-…`, a random segment name), mode 0600: written
//! to a temporary name first and renamed over, so a reader never sees half
//! of it. A name whose ring's creator is alive is in use ([`Error::AddrInUse`]);
//! one whose creator died (or whose file is garbage) is taken over. The
//! binder removes the file when it unbinds, if it still names its ring.

use crate::error::{Error, Result};
use shoal_shm_ring::{Handle, Segment, SegmentKind};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

/// Where name files live.
const DIR: &str = "/dev/shm";
/// Longest handle text a name file may hold.
const MAX_FILE: u64 = 512;

fn path(name: &str) -> PathBuf {
    PathBuf::from(format!("{DIR}/shoal-n-{name}"))
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { what, source }
}

/// The handle a name file holds, if it exists and holds one.
pub fn lookup(name: &str) -> Result<Option<Handle>> {
    let p = path(name);
    let text = match std::fs::read(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(format!("reading {}", p.display()))(e)),
    };
    if text.len() as u64 > MAX_FILE {
        return Ok(None);
    }
    Ok(std::str::from_utf8(&text)
        .ok()
        .and_then(|t| t.trim().parse::<Handle>().ok()))
}

/// Whether the ring `h` names is held by a live creator.
fn alive(h: &Handle, kind: SegmentKind) -> bool {
    Segment::attach(h.name(), kind)
        .map(|s| s.creator_alive())
        .unwrap_or(false)
}

/// Removes name files whose ring is gone or held by nobody alive (left by
/// binders that died), and unreadable ones; returns how many. Name files
/// of live rings stay. (Rings themselves: `shoal_shm_ring::cleanup_stale`.)
pub fn cleanup_stale() -> Result<usize> {
    let dir = std::fs::read_dir(DIR).map_err(io(format!("listing {DIR}")))?;
    let mut removed = 0;
    for e in dir.flatten() {
        let file = e.file_name();
        let Some(name) = file.to_str().and_then(|f| f.strip_prefix("shoal-n-")) else {
            continue;
        };
        // Only our own files (a name file is mode 0600, made by its binder).
        let mine = e
            .metadata()
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == current_uid())
            .unwrap_or(false);
        if !mine {
            continue;
        }
        let stale = match lookup(name) {
            Ok(Some(h)) => !alive(&h, SegmentKind::Broadcast) && !alive(&h, SegmentKind::Mpmc),
            Ok(None) => true,
            Err(_) => false,
        };
        if stale && std::fs::remove_file(e.path()).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

fn current_uid() -> u32 {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap_or(u32::MAX)
}

/// A bound name; unbinds on drop.
#[derive(Debug)]
pub struct Binding {
    name: String,
    handle: Handle,
}

impl Binding {
    /// Binds `name` to the ring `handle` of `kind`, unless a live ring
    /// holds it.
    pub fn bind(name: &str, handle: &Handle, kind: SegmentKind, address: &str) -> Result<Binding> {
        if let Some(old) = lookup(name)? {
            if alive(&old, kind) {
                return Err(Error::AddrInUse {
                    address: address.to_string(),
                });
            }
        }
        let p = path(name);
        let tmp = PathBuf::from(format!(
            "{DIR}/.shoal-n-{name}.{}.{:x}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0)
        ));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(handle.to_string().as_bytes())?;
            std::fs::rename(&tmp, &p)
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(format!("binding {}", p.display()))(e));
        }
        Ok(Binding {
            name: name.to_string(),
            handle: *handle,
        })
    }
}

impl Drop for Binding {
    fn drop(&mut self) {
        // Only our own binding: a later binder may have taken the name over.
        if let Ok(Some(h)) = lookup(&self.name) {
            if h == self.handle {
                let _ = std::fs::remove_file(path(&self.name));
            }
        }
    }
}

//! [`SharedArray`]: an n-dimensional array of a plain element type, one
//! copy per host in shared memory, replicated by a collective
//! [`set`](SharedArray::set), read freely by every rank of the host.
//!
//! Each host's region holds the array twice. A read
//! ([`SharedArray::read`]) pins the current copy for as long as its guard
//! lives, so it sees the array as it was before a concurrent set or as it
//! is after it, never a mix. A [`set`](SharedArray::set) writes its block
//! into the current copy in place when nobody reads it (the common case:
//! one copy of the block, as a memcpy; a read that begins meanwhile waits
//! for the write to end); else into the other copy, which it then makes
//! current. Before writing the other copy, a set waits until no live rank
//! pins it (a rank whose process died is seen by its lease and ignored)
//! and brings it up to date first: with the last block when that is all
//! it lacks (unless the new block covers it), else whole.
//!
//! Region layout: a header (magic, element tag, dimensions, shape), the
//! current copy's index, the copy written in place, how far the other
//! copy is behind, the last block (offset and shape), per rank of the
//! host two pin counters, then the two copies.

use crate::error::{Error, Result};
use crate::group::Group;
use shoal_shm_ring::{futex_wait, SegmentName, SharedRegion};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Element types a [`SharedArray`] holds: plain numbers, every bit
/// pattern valid, no padding.
///
/// # Safety
/// Implemented here only (sealed): for types whose every bit pattern is a
/// valid value and that have no padding, so bytes from shared memory
/// (which any process of the user can write) are always a valid value.
pub unsafe trait Element:
    Copy + Send + Sync + PartialEq + std::fmt::Debug + 'static + sealed::Sealed
{
    /// A tag naming the type in the region's header.
    const TAG: u32;
}

mod sealed {
    pub trait Sealed {}
}

macro_rules! element {
    ($($t:ty = $tag:expr),*) => {$(
        impl sealed::Sealed for $t {}
        // SAFETY: a primitive number: every bit pattern is a value, no
        // padding.
        unsafe impl Element for $t {
            const TAG: u32 = $tag;
        }
    )*};
}
element!(
    u8 = 1,
    i8 = 2,
    u16 = 3,
    i16 = 4,
    u32 = 5,
    i32 = 6,
    u64 = 7,
    i64 = 8,
    f32 = 9,
    f64 = 10
);

const MAGIC: u64 = 0x5348_4f41_4c41_5252; // "SHOALARR"
/// Most dimensions.
pub const MAX_DIMS: usize = 8;
const TAG_AT: usize = 8;
const DIMS_AT: usize = 12;
const SHAPE_AT: usize = 16;
const CURRENT_AT: usize = 128;
/// The copy a set writes in place now, + 1 (0: none), and (above the
/// low 8 bits) the writer's place + 1.
const WRITING_AT: usize = 132;
/// How far the other copy is behind the current one.
const BEHIND_AT: usize = 136;
const SAME: u32 = 0;
const LAST_BLOCK: u32 = 1;
const ALL: u32 = 2;
/// The last block: its offset, then its shape (MAX_DIMS u64 each).
const LAST_AT: usize = 192;
const PINS_AT: usize = LAST_AT + 16 * MAX_DIMS + 64;
const PIN: usize = 64;
/// How often a set waiting for pins looks again.
const LOOK: Duration = Duration::from_millis(1);

/// A node-replicated array (see the [module doc](self)).
///
/// ```
/// use shoal_collectives::{Group, SharedArray};
/// let g = Group::single();
/// let a = SharedArray::<f64>::new(&g, &[2, 3])?;
/// a.set(Some(&[1.0, 2.0, 3.0]), &[1, 3], &[1, 0], 0)?;
/// let r = a.read();
/// assert_eq!(r[a.index(&[1, 2])?], 3.0);
/// assert_eq!(r[0], 0.0);
/// # Ok::<(), shoal_collectives::Error>(())
/// ```
pub struct SharedArray<'g, T: Element> {
    group: &'g Group,
    region: SharedRegion,
    shape: Vec<usize>,
    len: usize,
    /// Bytes from the region's start to each copy.
    copies: [usize; 2],
    /// This rank's place on its host, and the host's ranks.
    place: u32,
    local: u32,
    _t: PhantomData<T>,
}

impl<T: Element> std::fmt::Debug for SharedArray<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedArray")
            .field("type", &std::any::type_name::<T>())
            .field("shape", &self.shape)
            .field("region", self.region.name())
            .finish()
    }
}

/// A read of the array: the copy current when it began, pinned until it
/// drops. Derefs to the elements in row-major order.
pub struct ArrayRead<'a, T: Element> {
    array: &'a SharedArray<'a, T>,
    copy: u32,
}

impl<T: Element> std::ops::Deref for ArrayRead<'_, T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        let a = self.array;
        // SAFETY: copy `self.copy` lies in the region (sizes checked at
        // attach), is aligned for T (64-byte aligned offsets), and holds
        // `len` elements of a type valid for every bit pattern (Element);
        // this read pins it, so no set that follows the protocol writes it
        // while the slice lives (a set writes a copy only when no live
        // rank pins it). What this cannot cover: another process of the
        // same user writing the region outside the protocol, which any
        // mapping of shared memory is open to (as shm-ring's guards).
        unsafe {
            std::slice::from_raw_parts(
                a.region.as_ptr().add(a.copies[self.copy as usize]) as *const T,
                a.len,
            )
        }
    }
}

impl<T: Element> Drop for ArrayRead<'_, T> {
    fn drop(&mut self) {
        self.array
            .pin(self.array.place, self.copy)
            .fetch_sub(1, Ordering::Release);
    }
}

fn product(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |a, d| a.checked_mul(*d))
}

impl<'g, T: Element> SharedArray<'g, T> {
    /// A zeroed array of `shape` (row-major) over `group`: one copy per
    /// host. Collective: every rank gives the same shape.
    pub fn new(group: &'g Group, shape: &[usize]) -> Result<SharedArray<'g, T>> {
        let sized = (|| -> Result<(usize, usize)> {
            if shape.is_empty() || shape.len() > MAX_DIMS {
                return Err(Error::BadArguments(format!(
                    "an array of {} dimensions (1 to {MAX_DIMS})",
                    shape.len()
                )));
            }
            let len = product(shape).ok_or_else(|| {
                Error::BadArguments(format!("shape {shape:?} holds more elements than memory"))
            })?;
            if len == 0 {
                return Err(Error::BadArguments(format!(
                    "shape {shape:?} holds no element"
                )));
            }
            let bytes = len
                .checked_mul(std::mem::size_of::<T>())
                .ok_or_else(|| Error::BadArguments(format!("shape {shape:?} is too large")))?;
            Ok((len, bytes))
        })();
        let (len, bytes) = match sized {
            Ok(sized) => sized,
            // Told to the others too (a shape only this rank gave): they
            // would wait for it at the collective otherwise.
            Err(e) => return Err(group.refuse("array", e)),
        };
        let here = group.ranks_on(group.node());
        let local = here.len() as u32;
        let place = group.local_rank();
        let first = PINS_AT + PIN * local as usize;
        let copy = bytes.next_multiple_of(64);
        let copies = [
            first.next_multiple_of(64),
            first.next_multiple_of(64) + copy,
        ];
        let total = copies[1] + copy;
        // Every rank must agree on the shape and type.
        let mut said = Vec::with_capacity(8 + 8 * shape.len());
        said.extend_from_slice(&T::TAG.to_le_bytes());
        // The number of dimensions too: a shape that begins another is
        // not the same shape.
        said.extend_from_slice(&(shape.len() as u32).to_le_bytes());
        for d in shape {
            said.extend_from_slice(&(*d as u64).to_le_bytes());
        }
        // The host's first rank makes the region and says its name, or
        // why it has none (a full /dev/shm): every rank then fails at
        // once, none waits for it.
        let made = if place == 0 {
            SharedRegion::create(total as u64, "shoal-array")
                .map_err(Error::from)
                .inspect(|r| {
                    // SAFETY: the header fields lie in the region's first
                    // page, aligned; nobody else has its name yet.
                    unsafe {
                        let p = r.as_ptr();
                        (p as *mut u64).write(MAGIC);
                        (p.add(TAG_AT) as *mut u32).write(T::TAG);
                        (p.add(DIMS_AT) as *mut u32).write(shape.len() as u32);
                        for (i, d) in shape.iter().enumerate() {
                            (p.add(SHAPE_AT + 8 * i) as *mut u64).write(*d as u64);
                        }
                    }
                })
                .map(Some)
        } else {
            Ok(None)
        };
        let mut give = said.clone();
        match &made {
            Ok(Some(r)) => give.extend_from_slice(r.name().as_str().as_bytes()),
            Ok(None) => {}
            Err(e) => give.extend_from_slice(&crate::agree::refusal(
                e,
                group.max_value().saturating_sub(said.len()),
            )),
        }
        let all = group.collect("array", &give, true)?;
        // A rank whose own arguments were refused sent the reason alone
        // (what every other rank sends starts with the type's tag, never
        // the refusal's mark).
        if let Some((r, why)) = crate::agree::first_refusal(&all) {
            return Err(Error::BadArguments(format!(
                "ranks disagree on the array: rank {r} refused its arguments: {why}"
            )));
        }
        for (r, b) in all.iter().enumerate() {
            if b.get(..said.len()) != Some(&said[..]) {
                return Err(Error::BadArguments(format!(
                    "ranks disagree on the array: rank {} asks for {} of shape {shape:?}, rank {r} for something else",
                    group.rank(),
                    std::any::type_name::<T>()
                )));
            }
        }
        // This rank's place: the region (attached, unless made here), its
        // lease held. One that cannot take it fails every rank.
        let region = (|| -> Result<SharedRegion> {
            let region = match made? {
                Some(r) => r,
                None => {
                    let theirs = all
                        .get(here[0] as usize)
                        .and_then(|b| b.get(said.len()..))
                        .unwrap_or_default();
                    if let Some(why) = crate::agree::refused(theirs) {
                        return Err(Error::Broken(format!(
                            "array: rank {} could not make its host's copy: {why}",
                            here[0]
                        )));
                    }
                    let theirs = std::str::from_utf8(theirs)
                        .ok()
                        .and_then(|n| n.parse::<SegmentName>().ok())
                        .ok_or_else(|| Error::Malformed {
                            what: "the array's region name",
                            why: "not a name".into(),
                        })?;
                    let r = SharedRegion::attach(&theirs)?;
                    check_header::<T>(&r, shape, total)?;
                    r
                }
            };
            if !region.hold(place)? {
                return Err(Error::BadArguments(format!(
                    "place {place} of the array's host is held by a live process"
                )));
            }
            Ok(region)
        })();
        // Nobody sets or reads before every rank is in place.
        let region = group.agree("array places", region)?;
        let a = SharedArray {
            group,
            region,
            shape: shape.to_vec(),
            len,
            copies,
            place,
            local,
            _t: PhantomData,
        };
        Ok(a)
    }

    /// The array's shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Elements in all.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true: an array has at least one element.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The row-major position of element `at`.
    pub fn index(&self, at: &[usize]) -> Result<usize> {
        if at.len() != self.shape.len() {
            return Err(Error::BadArguments(format!(
                "an index of {} dimensions into an array of {}",
                at.len(),
                self.shape.len()
            )));
        }
        let mut i = 0;
        for (k, (x, d)) in at.iter().zip(&self.shape).enumerate() {
            if x >= d {
                return Err(Error::BadArguments(format!(
                    "index {at:?} is past the shape {:?} in dimension {k}",
                    self.shape
                )));
            }
            i = i * d + x;
        }
        Ok(i)
    }

    /// Reads the array: the current copy, pinned until the guard drops
    /// (see the [module doc](self)). Drop it before the set after the
    /// next one, or that set waits for it.
    pub fn read(&self) -> ArrayRead<'_, T> {
        loop {
            let c = self.current().load(Ordering::SeqCst) & 1;
            self.pin(self.place, c).fetch_add(1, Ordering::SeqCst);
            // SYNC: the pin goes up before `writing` is looked at, and a
            // writer sets `writing` before it looks at the pins (all
            // SeqCst): a write in place either saw this pin (and wrote
            // the other copy) or is seen here.
            let writing = self.u32_at(WRITING_AT).load(Ordering::SeqCst);
            if self.current().load(Ordering::SeqCst) & 1 == c && writing & 0xff != c + 1 {
                return ArrayRead {
                    array: self,
                    copy: c,
                };
            }
            // Flipped meanwhile, or written in place now: try again once
            // the write is over.
            self.pin(self.place, c).fetch_sub(1, Ordering::Release);
            loop {
                let w = self.u32_at(WRITING_AT).load(Ordering::SeqCst);
                if w & 0xff != c + 1 {
                    break;
                }
                // A writer that died mid-write holds nobody up (its set
                // failed on every rank; the block is partly written).
                let writer = w >> 8;
                if writer > 0 && writer - 1 != self.place && !self.region.held(writer - 1) {
                    let _ = self.u32_at(WRITING_AT).compare_exchange(
                        w,
                        0,
                        Ordering::SeqCst,
                        Ordering::SeqCst,
                    );
                    break;
                }
                std::thread::yield_now();
            }
        }
    }

    /// Element `at` (a short read).
    pub fn get(&self, at: &[usize]) -> Result<T> {
        let i = self.index(at)?;
        Ok(self.read()[i])
    }

    fn u32_at(&self, at: usize) -> &AtomicU32 {
        // SAFETY: every offset used is a 4-aligned field in the region's
        // header part (below the copies, checked at attach); the region
        // is mapped while `self` lives.
        unsafe { &*(self.region.as_ptr().add(at) as *const AtomicU32) }
    }

    fn u64_at(&self, at: usize) -> &AtomicU64 {
        // SAFETY: as in `u32_at`, 8-aligned.
        unsafe { &*(self.region.as_ptr().add(at) as *const AtomicU64) }
    }

    fn current(&self) -> &AtomicU32 {
        self.u32_at(CURRENT_AT)
    }

    fn pin(&self, place: u32, copy: u32) -> &AtomicU32 {
        self.u32_at(PINS_AT + PIN * place as usize + 4 * copy as usize)
    }

    /// Sets the block of `block_shape` at `offset` to rank `from`'s
    /// `block` (row-major; read on `from` only, others pass `None`), on
    /// every host's copy. Collective: every rank calls it with the same
    /// shape, offset and `from`; a host's copy changes only once every
    /// rank of the host called it, and it returns once every host's copy
    /// has the block.
    ///
    /// If the rank writing a host's copy dies during the set, the set
    /// fails on every rank ([`Error::RanksGone`] or [`Error::Broken`]),
    /// and that host's copy of the block may be left partly written
    /// (like the state a robust mutex's owner-died error warns of): the
    /// survivors set the block again in a new group.
    pub fn set(
        &self,
        block: Option<&[T]>,
        block_shape: &[usize],
        offset: &[usize],
        from: u32,
    ) -> Result<()> {
        let g = self.group;
        g.check_root(from)?;
        self.check_block(block_shape, offset)?;
        let count = product(block_shape).unwrap_or(0);
        let call = g.next_call()?;
        let mine = if g.rank() == from {
            let b = block.ok_or_else(|| {
                Error::BadArguments(format!("rank {from} sets the block, and was given none"))
            })?;
            if b.len() != count {
                return Err(Error::BadArguments(format!(
                    "a block of shape {block_shape:?} has {count} elements, {} given",
                    b.len()
                )));
            }
            Some(b)
        } else {
            None
        };
        let bytes = mine.map(as_bytes);
        let far = g.to_hosts(call, "array-set", from, bytes)?;
        // Nobody's copy changes before every rank of its host is here.
        g.host_barrier()?;
        let from_node = g.members()[from as usize].node;
        let writer = if g.node() == from_node {
            g.rank() == from
        } else {
            g.local_rank() == 0
        };
        if writer {
            let data: &[u8] = match (&far, bytes) {
                (Some(v), _) => v,
                (None, Some(b)) => b,
                (None, None) => &[],
            };
            if data.len() != count * std::mem::size_of::<T>() {
                return Err(Error::Malformed {
                    what: "a block between hosts",
                    why: format!("{} bytes for {count} elements", data.len()),
                });
            }
            self.write(data, block_shape, offset)?;
        }
        // Every host's copy has it once every rank passed here.
        g.barrier()
    }

    fn check_block(&self, block_shape: &[usize], offset: &[usize]) -> Result<()> {
        let n = self.shape.len();
        if block_shape.len() != n || offset.len() != n {
            return Err(Error::BadArguments(format!(
                "a block of shape {block_shape:?} at {offset:?} in an array of shape {:?}",
                self.shape
            )));
        }
        for k in 0..n {
            if block_shape[k] == 0 {
                return Err(Error::BadArguments(format!(
                    "a block of shape {block_shape:?} holds no element"
                )));
            }
            if offset[k]
                .checked_add(block_shape[k])
                .is_none_or(|e| e > self.shape[k])
            {
                return Err(Error::BadArguments(format!(
                    "a block of shape {block_shape:?} at {offset:?} passes the array's shape {:?} in dimension {k}",
                    self.shape
                )));
            }
        }
        Ok(())
    }

    /// Writes `data` (a block, row-major) into the copy nobody reads,
    /// then makes it current.
    fn write(&self, data: &[u8], block_shape: &[usize], offset: &[usize]) -> Result<()> {
        let cur = self.current().load(Ordering::SeqCst) & 1;
        let other = cur ^ 1;
        let behind = self.u32_at(BEHIND_AT);
        let writing = self.u32_at(WRITING_AT);
        // In place, if nobody reads the current copy (see `read`).
        writing.store((cur + 1) | ((self.place + 1) << 8), Ordering::SeqCst);
        if self.live_pins(cur).is_empty() {
            self.put_block(cur, data, block_shape, offset);
            // The other copy now lacks this block too.
            let now = match behind.load(Ordering::Relaxed) {
                SAME => LAST_BLOCK,
                LAST_BLOCK if self.covers_last(block_shape, offset) => LAST_BLOCK,
                _ => ALL,
            };
            self.set_last(block_shape, offset);
            behind.store(now, Ordering::Relaxed);
            writing.store(0, Ordering::SeqCst);
            return Ok(());
        }
        writing.store(0, Ordering::SeqCst);
        // Somebody reads the current copy: write the other one.
        self.wait_unpinned(other)?;
        match behind.load(Ordering::Relaxed) {
            SAME => {}
            LAST_BLOCK if self.covers_last(block_shape, offset) => {}
            LAST_BLOCK => match self.last_block() {
                Some((sh, lo)) => self.copy_block(cur, other, &sh, &lo),
                None => self.copy_all(cur, other),
            },
            _ => self.copy_all(cur, other),
        }
        self.put_block(other, data, block_shape, offset);
        self.set_last(block_shape, offset);
        behind.store(LAST_BLOCK, Ordering::Relaxed);
        // Readers that pin the new copy from now on see all of it.
        self.current().store(other, Ordering::SeqCst);
        Ok(())
    }

    /// The last block set (shape, offset), if it fits the array (the
    /// region's bytes are checked like input).
    fn last_block(&self) -> Option<(Vec<usize>, Vec<usize>)> {
        let n = self.shape.len();
        if self.u32_at(LAST_AT).load(Ordering::Relaxed) as usize != n {
            return None;
        }
        let lo: Vec<usize> = (0..n)
            .map(|k| self.u64_at(LAST_AT + 8 + 8 * k).load(Ordering::Relaxed) as usize)
            .collect();
        let sh: Vec<usize> = (0..n)
            .map(|k| {
                self.u64_at(LAST_AT + 8 + 8 * (MAX_DIMS + k))
                    .load(Ordering::Relaxed) as usize
            })
            .collect();
        self.check_block(&sh, &lo).ok().map(|()| (sh, lo))
    }

    /// Whether the block at `offset` covers the last block set.
    fn covers_last(&self, block_shape: &[usize], offset: &[usize]) -> bool {
        self.last_block().is_some_and(|(sh, lo)| {
            (0..sh.len()).all(|k| offset[k] <= lo[k] && lo[k] + sh[k] <= offset[k] + block_shape[k])
        })
    }

    fn set_last(&self, block_shape: &[usize], offset: &[usize]) {
        let n = self.shape.len();
        self.u32_at(LAST_AT).store(n as u32, Ordering::Relaxed);
        for k in 0..n {
            self.u64_at(LAST_AT + 8 + 8 * k)
                .store(offset[k] as u64, Ordering::Relaxed);
            self.u64_at(LAST_AT + 8 + 8 * (MAX_DIMS + k))
                .store(block_shape[k] as u64, Ordering::Relaxed);
        }
    }

    fn copy_all(&self, from: u32, to: u32) {
        let zero = vec![0; self.shape.len()];
        self.copy_block(from, to, &self.shape.clone(), &zero);
    }

    /// The live places that pin copy `c`.
    fn live_pins(&self, c: u32) -> Vec<u32> {
        (0..self.local)
            .filter(|p| {
                self.pin(*p, c).load(Ordering::SeqCst) != 0
                    && (*p == self.place || self.region.held(*p))
            })
            .collect()
    }

    /// Waits until no live rank of the host pins copy `c`.
    fn wait_unpinned(&self, c: u32) -> Result<()> {
        let timeout = self.group.options().timeout;
        let end = Instant::now() + timeout;
        loop {
            let pinned = self.live_pins(c);
            if pinned.is_empty() {
                return Ok(());
            }
            if Instant::now() >= end {
                let here = self.group.ranks_on(self.group.node());
                return Err(Error::Timeout {
                    what: format!(
                        "a set of the array waits for reads of ranks {:?} to end",
                        pinned.iter().map(|p| here[*p as usize]).collect::<Vec<_>>()
                    ),
                    after: timeout,
                });
            }
            let w = self.pin(pinned[0], c);
            let v = w.load(Ordering::Relaxed);
            if v != 0 {
                futex_wait(w, v, Some(LOOK));
            }
        }
    }

    /// The element pointer of copy `c`.
    fn base(&self, c: u32) -> *mut T {
        // SAFETY: copy `c` starts inside the region (checked at attach).
        unsafe { self.region.as_ptr().add(self.copies[c as usize]) as *mut T }
    }

    /// Calls `run(array_index, block_index, n)` for each contiguous run
    /// of the block: a row along the last dimension, or several dimensions
    /// at once where the block spans them whole (a block of whole rows is
    /// one run).
    fn rows(
        &self,
        block_shape: &[usize],
        offset: &[usize],
        mut run: impl FnMut(usize, usize, usize),
    ) {
        let n = self.shape.len();
        // The dimensions from `k` on are contiguous in both the block and
        // the array: every one after `k` is spanned whole.
        let mut k = n - 1;
        while k > 0 && block_shape[k] == self.shape[k] {
            k -= 1;
        }
        let len = product(&block_shape[k..]).unwrap_or(0);
        let outer = product(&block_shape[..k]).unwrap_or(1);
        let mut at = vec![0usize; k];
        for r in 0..outer {
            let mut i = 0;
            for d in 0..k {
                i = i * self.shape[d] + offset[d] + at[d];
            }
            for (d, o) in offset.iter().enumerate().skip(k) {
                i = i * self.shape[d] + o;
            }
            run(i, r * len, len);
            // The next run's index, last outer dimension first.
            for d in (0..k).rev() {
                at[d] += 1;
                if at[d] < block_shape[d] {
                    break;
                }
                at[d] = 0;
            }
        }
    }

    fn put_block(&self, c: u32, data: &[u8], block_shape: &[usize], offset: &[usize]) {
        let dst = self.base(c);
        let src = data.as_ptr();
        let size = std::mem::size_of::<T>();
        self.rows(block_shape, offset, |i, j, n| {
            // SAFETY: the block fits the shape (check_block), so elements
            // i..i+n lie in copy `c`; `data` holds the block's count
            // elements (checked by `set`), so bytes j*size..(j+n)*size
            // are in it; nobody reads copy `c` (no pins, not current);
            // byte copies need no alignment.
            unsafe {
                std::ptr::copy_nonoverlapping(src.add(j * size), dst.add(i) as *mut u8, n * size)
            };
        });
    }

    fn copy_block(&self, from: u32, to: u32, block_shape: &[usize], offset: &[usize]) {
        let (src, dst) = (self.base(from), self.base(to));
        self.rows(block_shape, offset, |i, _, n| {
            // SAFETY: elements i..i+n lie in both copies (the block fits
            // the shape); the copies do not overlap; nobody writes `from`
            // (only sets write, one at a time) and nobody reads `to`.
            unsafe { std::ptr::copy_nonoverlapping(src.add(i), dst.add(i), n) };
        });
    }
}

/// The bytes of `block`.
fn as_bytes<T: Element>(block: &[T]) -> &[u8] {
    // SAFETY: Element types have no padding, so every byte of the slice
    // is initialised; u8 needs no alignment; same length in bytes.
    unsafe { std::slice::from_raw_parts(block.as_ptr() as *const u8, std::mem::size_of_val(block)) }
}

/// Checks an attached region against what this rank asked for.
fn check_header<T: Element>(r: &SharedRegion, shape: &[usize], total: usize) -> Result<()> {
    if r.len() < total {
        return Err(Error::Malformed {
            what: "the array's region",
            why: format!("{} bytes, {total} needed", r.len()),
        });
    }
    // SAFETY: the region holds at least `total` > the header's bytes;
    // aligned fields, read with volatile reads.
    let (magic, tag, dims) = unsafe {
        let p = r.as_ptr();
        (
            (p as *const u64).read_volatile(),
            (p.add(TAG_AT) as *const u32).read_volatile(),
            (p.add(DIMS_AT) as *const u32).read_volatile(),
        )
    };
    let mut same = magic == MAGIC && tag == T::TAG && dims as usize == shape.len();
    for (i, d) in shape.iter().enumerate() {
        // SAFETY: as above; i < MAX_DIMS.
        let x = unsafe { (r.as_ptr().add(SHAPE_AT + 8 * i) as *const u64).read_volatile() };
        same &= x == *d as u64;
    }
    if !same {
        return Err(Error::Malformed {
            what: "the array's region",
            why: format!(
                "its header is not an array of {} of shape {shape:?}",
                std::any::type_name::<T>()
            ),
        });
    }
    Ok(())
}

//! Third adversarial review: the clear-ahead frontier of commit words
//! (included from broadcast_core.rs as a child module).

use super::*;
use crate::mem::HeapMem;
use proptest::prelude::*;
use std::collections::VecDeque;
use std::sync::Arc;

type Mem = Arc<HeapMem<BroadcastControl>>;

fn ring(cap: u64, slots: usize) -> Mem {
    Arc::new(HeapMem::new(BroadcastControl::new(), slots, cap))
}

fn me() -> ProcessId {
    ProcessId::current()
}

/// What payload bytes a user may leave on the line starts *inside* a
/// reservation (the header line itself is not writable: the payload starts
/// 16 bytes in): a header that passes for a committed record at that line's
/// position in this lap (`lap = 0`) or in the next one (`lap = 1`: stale
/// bytes a later lap must not take for a record).
fn forge_inside(w: &WriterCore<Mem>, r: &Resv, lap: u64) {
    let cap = w.mem.capacity();
    let mut p = r.start + RECORD_ALIGN as u64;
    while p < r.start + record_size(r.max_len) {
        let h = w.mem.header(p);
        h.len.store(8, Ordering::Relaxed);
        h.commit
            .store(rec::word(p + lap * cap, rec::DATA), Ordering::Relaxed);
        p += RECORD_ALIGN as u64;
    }
}

fn send(w: &mut WriterCore<Mem>, len: u64) {
    let r = w.reserve(len, &Wait::no_wait()).unwrap();
    w.commit(r, len, rec::DATA);
}

fn read(r: &mut ReaderCore<Mem>) -> Option<(u64, u64)> {
    let g = r.poll().unwrap()?;
    r.release(g.next, false);
    Some((g.pos, g.len))
}

/// DEFECT 1. A reservation that needs a wrap pad, reserved while the
/// cleared frontier lies in the ring's tail (here: just after a short
/// commit), makes `clear_ahead` skip the tail lines [frontier, start) and
/// then claim them cleared (`cleared = to`). Dropping that reservation sets
/// `cleared = start` (the wrap point), still past those dirty tail lines.
/// The next, smaller reservation fits before the end, needs no clearing
/// (`after <= cleared`), and its record is published while the commit word
/// at its end still holds the short-committed reservation's payload.
#[test]
fn abandoned_wrap_reservation_leaves_dirty_tail_lines_marked_cleared() {
    let m = ring(4096, 1);
    let mut w = WriterCore::new(m.clone(), PeerOptions::default());
    let mut r = ReaderCore::join(m.clone(), me(), PeerOptions::default()).unwrap();
    send(&mut w, 8); // activates r; pos 64
    send(&mut w, 944); // pos 1024
    send(&mut w, 1008); // pos 2048
    send(&mut w, 1008); // pos 3072
    while read(&mut r).is_some() {}
    // A quarter-ring reservation that fits exactly before the end; the user
    // fills it, then commits 8 bytes only.
    let big = w.reserve(1008, &Wait::no_wait()).unwrap();
    assert_eq!((big.start, big.pad), (3072, false));
    forge_inside(&w, &big, 0);
    w.commit(big, 8, rec::DATA); // pos 3136, cleared 3200
    assert_eq!(read(&mut r), Some((3072, 8)));
    // Does not fit before the end: pad from 3136, record at 4096.
    let wrap = w.reserve(1008, &Wait::no_wait()).unwrap();
    assert_eq!((wrap.start, wrap.pad), (4096, true));
    w.abandon(&wrap); // what Reservation::drop does (also after commit -> TooLarge)
                      // A small record that fits before the end.
    send(&mut w, 8); // record at 3136, ends at 3200
    assert_eq!(read(&mut r), Some((3136, 8)));
    assert_eq!(
        read(&mut r),
        None,
        "the reader took payload bytes left at 3200 for a record"
    );
}

/// DEFECT 1b. The same state without `abandon` at all: a reservation that
/// is neither committed nor abandoned (the overflow path's
/// `OverflowPool::take` failing after `core.reserve`, or a
/// `mem::forget(reservation)`) leaves `cleared` past the lines it skipped
/// (its own lines and, with a pad, the tail).
#[test]
fn reservation_neither_committed_nor_abandoned_leaves_dirty_lines_marked_cleared() {
    let m = ring(4096, 1);
    let mut w = WriterCore::new(m.clone(), PeerOptions::default());
    let mut r = ReaderCore::join(m.clone(), me(), PeerOptions::default()).unwrap();
    send(&mut w, 8);
    assert_eq!(read(&mut r), Some((0, 8)));
    let big = w.reserve(1000, &Wait::no_wait()).unwrap();
    forge_inside(&w, &big, 0);
    // ... forgotten (no commit, no abandon) ...
    send(&mut w, 8);
    assert_eq!(read(&mut r), Some((64, 8)));
    assert_eq!(read(&mut r), None, "forged header at 128 read as a record");
}

/// The line a large commit clears early for a next record of the same size
/// (`guess_ahead`) must not be trusted once a reservation that covered it
/// ends without a full commit: a short commit, an abandon, or neither
/// (forgotten). Here the guessed line holds a forged header for its own
/// position in this lap, and the next record ends exactly there.
#[test]
fn a_guessed_clear_line_dirtied_by_a_reservation_is_cleared_again() {
    const BIG: u64 = 8192 - RECORD_HEADER as u64;
    const HALF: u64 = 4096 - RECORD_HEADER as u64;
    for how in ["short", "abandon", "forget"] {
        let m = ring(1 << 16, 1);
        let mut w = WriterCore::new(m.clone(), PeerOptions::default());
        let mut r = ReaderCore::join(m.clone(), me(), PeerOptions::default()).unwrap();
        send(&mut w, 8); // activates the reader
        assert_eq!(read(&mut r), Some((0, 8)));
        // More than a lap of large records, so that lines hold stale words
        // and clearing matters; stop where two more fit before the end.
        let cap = 1u64 << 16;
        let mut pos;
        let mut sent = 0;
        loop {
            send(&mut w, BIG);
            let (p, len) = read(&mut r).unwrap();
            assert_eq!(len, BIG, "{how}");
            pos = p + record_size(BIG);
            sent += 1;
            if sent > 10 && (pos & (cap - 1)) + 2 * record_size(BIG) + 64 <= cap {
                break;
            }
        }
        // The commit just made guessed the line `pos + 8192`.
        let guessed = pos + record_size(BIG);
        let res = w.reserve(BIG, &Wait::no_wait()).unwrap();
        assert_eq!(res.start, pos, "{how}");
        // A reservation covering the guessed line forges a header there.
        forge_inside(
            &w,
            &Resv {
                max_len: BIG + 256,
                ..res
            },
            0,
        );
        match how {
            "short" => {
                w.commit(res, HALF, rec::DATA);
                assert_eq!(read(&mut r), Some((pos, HALF)), "{how}");
                pos += record_size(HALF);
            }
            "abandon" => w.abandon(&res),
            _ => {} // forgotten
        }
        // A record ending right at the guessed line.
        let len = guessed - pos - RECORD_HEADER as u64;
        send(&mut w, len);
        assert_eq!(read(&mut r), Some((pos, len)), "{how}");
        assert_eq!(
            read(&mut r),
            None,
            "{how}: the forged header at the guessed line was read as a record"
        );
    }
}

#[derive(Debug, Clone)]
enum Act {
    Full,
    /// Commit this share (per mille) of the reservation, at least 8 bytes.
    Short(u64),
    Abandon,
    /// Neither committed nor abandoned (`mem::forget`, or the overflow
    /// path failing after `core.reserve`).
    Forget,
}

#[derive(Debug, Clone)]
struct Step {
    len: u64,
    act: Act,
    /// Forge the reservation's lines for the next lap instead of this one.
    next_lap: bool,
    /// Drain the readers after this step.
    drain: bool,
    /// A second reader joins before this step (once).
    join: bool,
}

fn step(max: u64) -> impl Strategy<Value = Step> {
    (
        prop_oneof![8u64..=64, 8u64..=max, Just(max)],
        prop_oneof![
            Just(Act::Full),
            (0u64..=1000).prop_map(Act::Short),
            Just(Act::Abandon),
            Just(Act::Forget)
        ],
        any::<bool>(),
        prop::bool::weighted(0.3),
        prop::bool::weighted(0.02),
    )
        .prop_map(|(len, act, next_lap, drain, join)| Step {
            len,
            act,
            next_lap,
            drain,
            join,
        })
}

/// Mostly records of 4 KiB and more, often the same size in a row (the
/// case `guess_ahead` guesses right), with the same actions as `step`.
fn big_step(max: u64) -> impl Strategy<Value = Step> {
    (
        prop_oneof![
            Just(4096u64 - 16),
            Just(8192 - 16),
            4080u64..=max,
            8u64..=64
        ],
        step(max),
    )
        .prop_map(|(len, s)| Step { len, ..s })
}

struct Rd {
    core: ReaderCore<Mem>,
    /// (len, id) of every record this reader must still see, in order.
    expect: VecDeque<(u64, u64)>,
}

fn drain(rs: &mut [Rd]) -> std::result::Result<(), TestCaseError> {
    for (i, rd) in rs.iter_mut().enumerate() {
        loop {
            let g = match rd.core.poll() {
                Ok(Some(g)) => g,
                Ok(None) => break,
                Err(e) => return Err(TestCaseError::fail(format!("reader {i}: {e}"))),
            };
            let id = if g.len >= 8 {
                // SAFETY: committed and unreleased; the payload holds g.len bytes.
                unsafe {
                    std::ptr::read_unaligned(
                        rd.core.mem.data(g.pos + RECORD_HEADER as u64) as *const u64
                    )
                }
            } else {
                u64::MAX
            };
            let want = rd.expect.pop_front();
            prop_assert_eq!(
                Some((g.len, id)),
                want,
                "reader {} at {:#x}: got a record nobody committed",
                i,
                g.pos
            );
            rd.core.release(g.next, false);
        }
    }
    Ok(())
}

fn run(cap: u64, steps: &[Step]) -> std::result::Result<(), TestCaseError> {
    let m = ring(cap, 2);
    let mut w = WriterCore::new(m.clone(), PeerOptions::default());
    let mut rs = vec![Rd {
        core: ReaderCore::join(m.clone(), me(), PeerOptions::default()).unwrap(),
        expect: VecDeque::new(),
    }];
    let mut id = 0u64;
    for s in steps {
        if s.join && rs.len() == 1 {
            rs.push(Rd {
                core: ReaderCore::join(m.clone(), me(), PeerOptions::default()).unwrap(),
                expect: VecDeque::new(),
            });
        }
        let res = match w.reserve(s.len, &Wait::no_wait()) {
            Ok(r) => r,
            Err(Error::WouldBlock) => {
                drain(&mut rs)?;
                w.reserve(s.len, &Wait::no_wait())
                    .map_err(|e| TestCaseError::fail(format!("drained, still {e}")))?
            }
            Err(e) => return Err(TestCaseError::fail(format!("reserve: {e}"))),
        };
        forge_inside(&w, &res, s.next_lap as u64);
        let len = match s.act {
            Act::Full => Some(s.len),
            Act::Short(f) => Some((s.len * f / 1000).max(8)),
            Act::Abandon | Act::Forget => None,
        };
        match len {
            Some(len) => {
                id += 1;
                // SAFETY: the reservation owns at least 8 payload bytes.
                unsafe {
                    std::ptr::write_unaligned(w.payload(&res) as *mut u64, id);
                }
                w.commit(res, len, rec::DATA);
                for rd in rs.iter_mut() {
                    rd.expect.push_back((len, id));
                }
            }
            None if matches!(s.act, Act::Forget) => {}
            None => w.abandon(&res),
        }
        if s.drain {
            drain(&mut rs)?;
        }
    }
    drain(&mut rs)?;
    for (i, rd) in rs.iter().enumerate() {
        prop_assert!(rd.expect.is_empty(), "reader {} missed records", i);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("REVIEW3_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000),
        ..ProptestConfig::default()
    })]

    /// Random reserve sizes, commit lengths and abandons; every line of
    /// every reservation forged as a committed record (this lap or the
    /// next); readers (one joining late) must see exactly what was committed.
    #[test]
    fn readers_see_exactly_the_committed_records_4k(steps in prop::collection::vec(step(4096 / 4 - 16), 1..120)) {
        run(4096, &steps)?;
    }

    #[test]
    fn readers_see_exactly_the_committed_records_16k(steps in prop::collection::vec(step(16384 / 4 - 16), 1..200)) {
        run(16384, &steps)?;
    }

    /// Large records (4 KiB and up) take the other clearing path: one line
    /// per record, cleared early by the commit before (`guess_ahead`).
    #[test]
    fn readers_see_exactly_the_committed_records_64k_large(steps in prop::collection::vec(big_step(65536 / 4 - 16), 1..150)) {
        run(65536, &steps)?;
    }
}

/// DEFECT 3 (06839fe). 5b1aa42 promised "no single futex sleep outlasts
/// 200 ms whatever liveness_interval says", so a wake lost to a race costs
/// at most 200 ms. 06839fe set MAX_SLICE to IDLE_CHECK_MAX (1 s) for every
/// wait, not only idle broadcast readers: a writer / producer / consumer /
/// wait_for_readers with liveness_interval > 200 ms now sleeps up to 1 s
/// through a lost wake (simulated here: the condition turns true without a
/// notify, as when a notifier missed the waiter's bit).
#[test]
fn a_lost_wake_costs_at_most_200ms_whatever_the_liveness_interval() {
    use crate::sync::{AtomicBool, Ordering as O};
    use crate::wait::{block_on, Checks, EventCount, Spinner, WaitStrategy, Waiter};
    use std::time::{Duration, Instant};
    let ec = EventCount::new();
    let ready = Arc::new(AtomicBool::new(false));
    let r2 = ready.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        r2.store(true, O::Release); // no notify: the wake is lost
    });
    let mut sp = Spinner::new(WaitStrategy::Park);
    let d = Wait::forever().start();
    let t0 = Instant::now();
    let r: Result<()> = block_on(
        &mut sp,
        &ec,
        Waiter::owner(),
        &d,
        Checks::every(Duration::from_secs(5)),
        || Ok(ready.load(O::Acquire).then_some(())),
        |_| Ok(()),
    );
    r.unwrap();
    t.join().unwrap();
    let took = t0.elapsed();
    eprintln!("lost wake took {took:?}");
    assert!(
        took < Duration::from_millis(400),
        "a lost wake cost {took:?} (the bound was 200 ms)"
    );
}

/// DEFECT 1 through the public API: bytes a user left in a reservation it
/// committed short, then a reservation that wraps and fails to commit
/// (`commit` -> TooLarge drops it), then a small record: the reader receives
/// a record nobody sent.
#[test]
fn public_api_short_commit_then_failed_wrap_commit_forges_a_record() {
    use crate::{BroadcastConfig, BroadcastReader, BroadcastWriter, Wait};
    let mut w = BroadcastWriter::create(&BroadcastConfig::new(4096, 1)).unwrap();
    let mut r = BroadcastReader::attach(&w.handle()).unwrap();
    w.send(b"first").unwrap();
    drop(r.recv().unwrap());
    for n in [944usize, 1008, 1008] {
        w.send(&vec![0u8; n]).unwrap();
        drop(r.recv().unwrap());
    }
    // At 3072: a record of up to 1008 bytes; its payload happens to hold,
    // on each line start, what a header for that position looks like.
    let mut res = w.reserve_with(1008, Wait::no_wait()).unwrap();
    for k in 1..16u64 {
        let q = 3072 + 64 * k;
        let off = (64 * k - 16) as usize;
        res[off..off + 8].copy_from_slice(&(q | rec::DATA).to_le_bytes());
        res[off + 8..off + 12].copy_from_slice(&8u32.to_le_bytes());
    }
    res.commit(8).unwrap();
    assert_eq!(r.recv().unwrap().len(), 8);
    // Wraps (pad from 3136); the commit fails and the reservation is dropped.
    let res = w.reserve_with(1008, Wait::no_wait()).unwrap();
    assert!(matches!(res.commit(5000), Err(Error::TooLarge { .. })));
    w.send(b"only").unwrap();
    assert_eq!(&*r.recv().unwrap(), b"only");
    let extra = r.try_recv().unwrap().map(|g| g.to_vec());
    assert_eq!(extra, None, "received a record nobody sent");
}

//! The MPMC ring's work accounting (claims, their closing, the debts of
//! dead producers), on heap memory with simulated leases (included from
//! mpmc_core.rs as a child module).

use super::*;
use crate::mem::HeapMem;
use proptest::prelude::*;
use std::sync::Arc;
use std::time::Duration;

type Mem = Arc<HeapMem<MpmcControl>>;

const LAY: Layout = Layout {
    consumers: 2,
    producers: 4,
};

fn ring() -> Mem {
    Arc::new(HeapMem::new(MpmcControl::new(), 6, 1 << 14))
}

fn opts() -> PeerOptions {
    PeerOptions::default()
        .orphan_timeout(Duration::from_millis(10))
        .liveness_interval(Duration::from_millis(5))
}

fn producer(m: &Mem) -> ProducerCore<Mem> {
    ProducerCore::join(m.clone(), &LAY, ProcessId::current(), opts()).unwrap()
}

fn consumer(m: &Mem) -> ConsumerCore<Mem> {
    ConsumerCore::join(m.clone(), &LAY, ProcessId::current(), 0, opts()).unwrap()
}

fn send(p: &mut ProducerCore<Mem>) -> Result<()> {
    let r = p.reserve(8, &Wait::no_wait())?;
    p.commit(r, 8, rec::DATA)
}

/// Takes one record if there is one (`Ok(true)`), or says why not.
fn take(c: &mut ConsumerCore<Mem>) -> Result<bool> {
    match c.poll()? {
        Some(g) => {
            c.release(g.pos);
            Ok(true)
        }
        None => Ok(false),
    }
}

fn kill(m: &Mem, p: ProducerCore<Mem>) {
    m.kill(crate::lease::slot_byte(p.slot_index()));
    // Dropped without leaving: as a process killed by SIGKILL.
    std::mem::forget(p);
}

#[test]
fn a_ring_whose_claims_are_closed_finishes_once_everything_claimed_was_taken() {
    let m = ring();
    let (mut a, mut b, mut c) = (producer(&m), producer(&m), consumer(&m));
    a.claim(2, &Wait::forever()).unwrap();
    send(&mut b).unwrap(); // unclaimed: sent while claims are open
    b.close_claims(&Wait::forever()).unwrap();
    assert!(take(&mut c).unwrap());
    // Claims are closed, but `a` still owes two: not over.
    assert!(!take(&mut c).unwrap());
    assert!(matches!(send(&mut b), Err(Error::Closed)), "b owes nothing");
    assert!(matches!(a.claim(1, &Wait::forever()), Err(Error::Closed)));
    send(&mut a).unwrap();
    send(&mut a).unwrap();
    assert_eq!(a.owed(), 0);
    // Drained first, then finished, and it stays finished.
    assert!(take(&mut c).unwrap());
    assert!(take(&mut c).unwrap());
    assert!(matches!(take(&mut c), Err(Error::Finished)));
    assert!(matches!(take(&mut c), Err(Error::Finished)));
    assert!(matches!(
        c.take(&Wait::timeout(Duration::from_millis(50))),
        Err(Error::Finished)
    ));
    // Producers are told the ring is closed.
    assert!(matches!(send(&mut a), Err(Error::Closed)));
}

#[test]
fn closing_claims_with_nothing_owed_finishes_at_once() {
    let m = ring();
    let (mut p, mut c) = (producer(&m), consumer(&m));
    send(&mut p).unwrap();
    p.close_claims(&Wait::forever()).unwrap();
    assert!(take(&mut c).unwrap());
    assert!(matches!(take(&mut c), Err(Error::Finished)));
}

#[test]
fn an_open_ring_never_finishes() {
    let m = ring();
    let (mut p, mut c) = (producer(&m), consumer(&m));
    send(&mut p).unwrap();
    assert!(take(&mut c).unwrap());
    assert!(!take(&mut c).unwrap());
    assert!(matches!(
        c.take(&Wait::timeout(Duration::from_millis(30))),
        Err(Error::Timeout)
    ));
}

#[test]
fn a_reservation_made_before_the_close_is_drained_before_the_end() {
    let m = ring();
    let (mut p, mut q, mut c) = (producer(&m), producer(&m), consumer(&m));
    let r = p.reserve(8, &Wait::forever()).unwrap();
    assert_eq!(p.owed(), 0, "an unclaimed send owes nothing");
    q.close_claims(&Wait::forever()).unwrap();
    // Closed, and nobody owes: but a reservation is still in the ring.
    assert!(!take(&mut c).unwrap());
    p.commit(r, 8, rec::DATA).unwrap();
    assert!(take(&mut c).unwrap());
    assert!(matches!(take(&mut c), Err(Error::Finished)));
}

#[test]
fn a_reservation_given_up_after_the_close_is_skipped() {
    let m = ring();
    let (mut p, mut c) = (producer(&m), consumer(&m));
    let r = p.reserve(8, &Wait::forever()).unwrap();
    p.close_claims(&Wait::forever()).unwrap();
    p.abort(r);
    // The tombstone is skipped; nothing was owed.
    assert!(matches!(take(&mut c), Err(Error::Finished)));
}

#[test]
fn a_reservation_given_up_keeps_what_was_claimed_ahead() {
    let m = ring();
    let (mut p, mut c) = (producer(&m), consumer(&m));
    p.claim(1, &Wait::forever()).unwrap();
    let r = p.reserve(8, &Wait::forever()).unwrap();
    p.abort(r);
    assert_eq!(p.owed(), 1);
    p.close_claims(&Wait::forever()).unwrap();
    assert!(!take(&mut c).unwrap());
    send(&mut p).unwrap();
    assert!(take(&mut c).unwrap());
    assert!(matches!(take(&mut c), Err(Error::Finished)));
}

#[test]
fn a_producer_killed_owing_ends_the_work_incomplete_after_the_rest_is_taken() {
    let m = ring();
    let (mut a, mut b, mut c) = (producer(&m), producer(&m), consumer(&m));
    a.claim(3, &Wait::forever()).unwrap();
    send(&mut a).unwrap();
    send(&mut b).unwrap();
    b.close_claims(&Wait::forever()).unwrap();
    kill(&m, a); // owes 2
    assert!(take(&mut c).unwrap());
    assert!(take(&mut c).unwrap());
    match c.take(&Wait::timeout(Duration::from_secs(5))) {
        Err(Error::ProducersLost { lost: 2, .. }) => {}
        other => panic!("expected ProducersLost of 2, got {other:?}"),
    }
    // Every consumer is told the same.
    let mut late = consumer(&m);
    assert!(matches!(
        take(&mut late),
        Err(Error::ProducersLost { lost: 2, .. })
    ));
}

#[test]
fn a_producer_killed_mid_reservation_owes_the_claimed_message() {
    let m = ring();
    let (mut a, b, mut c) = (producer(&m), producer(&m), consumer(&m));
    a.claim(1, &Wait::forever()).unwrap();
    let r = a.reserve(8, &Wait::forever()).unwrap();
    let _ = r; // never committed
    kill(&m, a);
    let mut b = b;
    b.close_claims(&Wait::forever()).unwrap();
    match c.take(&Wait::timeout(Duration::from_secs(5))) {
        Err(Error::ProducersLost { lost: 1, .. }) => {}
        other => panic!("expected ProducersLost of 1, got {other:?}"),
    }
}

#[test]
fn a_producer_dropped_owing_is_counted_like_a_dead_one() {
    let m = ring();
    let (mut a, mut b, mut c) = (producer(&m), producer(&m), consumer(&m));
    a.claim(2, &Wait::forever()).unwrap();
    a.leave();
    drop(a);
    b.close_claims(&Wait::forever()).unwrap();
    assert!(matches!(
        take(&mut c),
        Err(Error::ProducersLost { lost: 2, .. })
    ));
}

#[test]
fn a_dead_producers_debt_is_counted_once_when_its_slot_is_taken_over() {
    let m = ring();
    let mut c = consumer(&m);
    let mut dead = producer(&m);
    dead.claim(4, &Wait::forever()).unwrap();
    kill(&m, dead);
    // Its slot taken over (the first free one): the claim settles the debt.
    let mut ps: Vec<_> = (0..3).map(|_| producer(&m)).collect();
    assert_eq!(m.ctrl().work.lost.load(Ordering::Acquire), 4);
    // A scan after the takeover finds nothing more to settle.
    ps[0].close_claims(&Wait::forever()).unwrap();
    assert!(matches!(
        take(&mut c),
        Err(Error::ProducersLost { lost: 4, .. })
    ));
    for p in &mut ps {
        assert!(matches!(send(p), Err(Error::Closed)));
    }
}

#[test]
fn claims_past_the_limit_are_refused_and_change_nothing() {
    let m = ring();
    let mut p = producer(&m);
    p.claim(crate::layout::MAX_OWED, &Wait::forever()).unwrap();
    assert!(matches!(
        p.claim(1, &Wait::forever()),
        Err(Error::TooLarge { .. })
    ));
    assert_eq!(p.owed(), crate::layout::MAX_OWED);
    assert!(p.claim(0, &Wait::forever()).is_ok());
}

/// Holding the owed count in a producer's cursor word must never make a
/// scan for the consumer that holds a record name the producer.
#[test]
fn an_owing_producer_is_never_taken_for_a_records_holder() {
    let m = ring();
    let mut p = producer(&m);
    for owed in [1u64, 2, 64, 1 << 20] {
        p.claim(owed - p.owed(), &Wait::forever()).unwrap();
        for pos in [0u64, 64, owed * 64, owed << 6] {
            assert_eq!(holder_of(&m, pos), None, "owed {owed} pos {pos}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random claims, sends, gives-up, deaths and takes, then claims
    /// closed: consumers take every committed message exactly once and
    /// then end, `Finished` exactly when no producer died owing.
    #[test]
    fn the_work_ends_exactly_when_nothing_more_can_come(
        ops in proptest::collection::vec((0u8..6, 0usize..3, 0u64..3), 1..40),
    ) {
        let m = ring();
        let mut c = consumer(&m);
        let mut ps: Vec<Option<ProducerCore<Mem>>> = (0..3).map(|_| Some(producer(&m))).collect();
        let mut committed = 0u64;
        let mut taken = 0u64;
        let mut lost = 0u64;
        for (op, who, n) in ops {
            let Some(p) = ps[who].as_mut() else { continue };
            match op {
                0 => { p.claim(n, &Wait::forever()).unwrap(); }
                1 | 2 => {
                    if send(p).is_ok() { committed += 1; }
                }
                3 => {
                    if let Ok(r) = p.reserve(8, &Wait::no_wait()) { p.abort(r); }
                }
                4 => {
                    if let Some(p) = ps[who].take() {
                        lost += p.owed();
                        kill(&m, p);
                    }
                }
                _ => {
                    if take(&mut c).unwrap() { taken += 1; }
                }
            }
        }
        // The survivors send what they owe, and claims close.
        let mut closer = producer(&m);
        closer.close_claims(&Wait::forever()).unwrap();
        for p in ps.iter_mut().flatten() {
            while p.owed() > 0 {
                send(p).unwrap();
                committed += 1;
            }
        }
        let end = loop {
            match c.take(&Wait::timeout(Duration::from_secs(5))) {
                Ok(g) => { c.release(g.pos); taken += 1; }
                Err(e) => break e,
            }
        };
        prop_assert_eq!(taken, committed);
        match end {
            Error::Finished => prop_assert_eq!(lost, 0),
            Error::ProducersLost { lost: l, .. } => {
                prop_assert!(lost > 0);
                prop_assert_eq!(l, lost);
            }
            e => prop_assert!(false, "ended with {e:?}"),
        }
    }
}

/// Review: a finisher that died between recording the outcome and closing
/// the ring must not leave consumers waiting: the next look closes it.
#[test]
fn an_outcome_recorded_without_the_close_is_closed_by_the_next_look() {
    let m = ring();
    let mut c = consumer(&m);
    let w = &m.ctrl().work;
    w.claims_closed.store(1, Ordering::Release);
    w.outcome.store(work::COMPLETE, Ordering::Release);
    assert!(matches!(take(&mut c), Err(Error::Finished)));
}

/// Review: garbage in a free producer slot's word (a hostile or corrupt
/// peer) is counted as at most MAX_OWED lost, saturating: no panic, no
/// wrap back to "nothing lost".
#[test]
fn garbage_debts_saturate_instead_of_wrapping() {
    let m = ring();
    let mut c = consumer(&m);
    let mut p = producer(&m);
    for i in LAY.consumers..LAY.consumers + 2 {
        if i != p.slot_index() {
            m.slot(i).cursor.store(u64::MAX, Ordering::Release);
        }
    }
    m.ctrl().work.lost.store(u64::MAX - 3, Ordering::Release);
    p.close_claims(&Wait::forever()).unwrap();
    match take(&mut c) {
        Err(Error::ProducersLost { lost, .. }) => assert_eq!(lost, u64::MAX),
        other => panic!("expected ProducersLost, got {other:?}"),
    }
}

/// Review: a producer whose debt was settled as a dead producer's (its
/// word overwritten) still gets Ok for a record it published: the send
/// happened, and nothing is undone.
#[test]
fn a_published_record_is_ok_even_if_the_debt_was_settled_meanwhile() {
    let m = ring();
    let (mut p, mut c) = (producer(&m), consumer(&m));
    p.claim(3, &Wait::forever()).unwrap();
    let r = p.reserve(8, &Wait::forever()).unwrap();
    m.slot(p.slot_index())
        .cursor
        .store(crate::layout::owed_word(0, 0), Ordering::Release);
    assert!(p.commit(r, 8, rec::DATA).is_ok());
    assert_eq!(p.owed(), 0);
    assert!(take(&mut c).unwrap());
}

/// A producer that claims and closes in one process owes what it claimed;
/// its own slot must not look dead to it (a process does not see its own
/// lease as held from its own descriptor; on heap memory, as a marker that
/// `finish_work` skips the caller's slot).
#[test]
fn the_closer_that_owes_is_not_taken_for_dead() {
    let m = ring();
    let (mut p, mut c) = (producer(&m), consumer(&m));
    p.claim(2, &Wait::forever()).unwrap();
    // As a real segment would show it to the producer itself.
    m.kill(crate::lease::slot_byte(p.slot_index()));
    assert!(!finish_work(
        &m,
        (LAY.consumers, LAY.producers),
        Some(p.slot_index())
    ));
    assert_eq!(m.ctrl().work.lost.load(Ordering::Acquire), 0);
    // Back to alive, as it is.
    assert!(m
        .take_lease(crate::lease::slot_byte(p.slot_index()))
        .unwrap());
    p.close_claims(&Wait::forever()).unwrap();
    send(&mut p).unwrap();
    send(&mut p).unwrap();
    assert!(take(&mut c).unwrap());
    assert!(take(&mut c).unwrap());
    assert!(matches!(take(&mut c), Err(Error::Finished)));
}

/// Review: a no-wait reservation behind a dead producer's reservation lock
/// takes the lock over once the holder was seen for a liveness interval
/// (before, only a waiting call did, and a try found the ring "full" for
/// ever).
#[test]
fn a_no_wait_reservation_takes_over_a_dead_holders_lock() {
    let m = ring();
    let dead = producer(&m);
    let mut p = producer(&m);
    m.ctrl().lock.word.store(dead.lock_id, Ordering::Release);
    kill(&m, dead);
    assert!(matches!(
        p.reserve(8, &Wait::no_wait()),
        Err(Error::WouldBlock)
    ));
    std::thread::sleep(opts().liveness_interval * 2);
    let r = p.reserve(8, &Wait::no_wait()).expect("lock taken over");
    p.commit(r, 8, rec::DATA).unwrap();
}

/// Review: a take whose own timeout is shorter than a liveness interval
/// still ends the work when a dead producer's debt is all that is left.
#[test]
fn a_short_take_still_ends_the_work_of_a_dead_producer() {
    let m = ring();
    let (mut a, mut b, mut c) = (producer(&m), producer(&m), consumer(&m));
    a.claim(2, &Wait::forever()).unwrap();
    b.close_claims(&Wait::forever()).unwrap();
    kill(&m, a);
    match c.take(&Wait::timeout(Duration::from_micros(100))) {
        Err(Error::ProducersLost { lost: 2, .. }) => {}
        other => panic!("expected ProducersLost, got {other:?}"),
    }
}

/// Review: once claims are closed, a consumer whose ring lost its creator
/// and every producer is told how the work ended, not `WriterGone`.
#[test]
fn with_claims_closed_the_outcome_wins_over_writer_gone() {
    let m = ring();
    let (mut a, mut c) = (producer(&m), consumer(&m));
    a.claim(1, &Wait::forever()).unwrap();
    a.close_claims(&Wait::forever()).unwrap();
    kill(&m, a);
    // No creator lease on heap memory: only the outcome can end this.
    assert!(!producers_gone(&m, (LAY.consumers, LAY.producers)));
    match c.take(&Wait::timeout(Duration::from_secs(5))) {
        Err(Error::ProducersLost { lost: 1, .. }) => {}
        other => panic!("expected ProducersLost, got {other:?}"),
    }
}

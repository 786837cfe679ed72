//! Broadcast readers holding several records at once: in place until
//! released, given back to the writer in order whatever order they are
//! released in, overflow records included.

use shoal_shm_ring::{
    BroadcastConfig, BroadcastReader, BroadcastWriter, Error, Held, Wait, MAX_HELD,
};

fn pair(cap: u64) -> (BroadcastWriter, BroadcastReader) {
    let w = BroadcastWriter::create(&BroadcastConfig::new(cap, 2)).unwrap();
    let r = BroadcastReader::attach(&w.handle()).unwrap();
    let mut w = w;
    w.wait_for_readers(1, Wait::no_wait()).unwrap();
    (w, r)
}

fn record(i: u32, len: usize) -> Vec<u8> {
    (0..len).map(|k| (i as usize * 31 + k) as u8).collect()
}

#[test]
fn held_records_stay_in_place_and_go_back_in_order() {
    // 4 KiB ring, 1000-byte records: three fit.
    let (mut w, mut r) = pair(4096);
    for i in 0..3 {
        w.send(&record(i, 1000)).unwrap();
    }
    let held: Vec<Held> = (0..3)
        .map(|_| r.recv_held_with(Wait::no_wait()).unwrap())
        .collect();
    // The ring is full of held records: the writer must wait.
    assert!(w.send_with(&record(3, 1000), Wait::no_wait()).is_err());
    let mut held = held.into_iter();
    let (a, b, c) = (
        held.next().unwrap(),
        held.next().unwrap(),
        held.next().unwrap(),
    );
    // Released newest first: nothing goes back while the oldest is held.
    r.release_held(c).unwrap();
    r.release_held(b).unwrap();
    assert_eq!(r.held_bytes(&a).unwrap(), &record(0, 1000)[..]);
    assert!(w.send_with(&record(3, 1000), Wait::no_wait()).is_err());
    r.release_held(a).unwrap();
    // Now all three went back together.
    for i in 3..6 {
        w.send_with(&record(i, 1000), Wait::no_wait()).unwrap();
    }
    for i in 3..6 {
        assert_eq!(
            &*r.recv_with(Wait::no_wait()).unwrap(),
            &record(i, 1000)[..]
        );
    }
}

#[test]
fn held_and_borrowed_reads_mix() {
    let (mut w, mut r) = pair(1 << 16);
    for i in 0..4 {
        w.send(&record(i, 100)).unwrap();
    }
    let first = r.recv_held_with(Wait::no_wait()).unwrap();
    // A plain guard read and dropped meanwhile does not release `first`.
    assert_eq!(&*r.recv_with(Wait::no_wait()).unwrap(), &record(1, 100)[..]);
    let third = r.try_recv_held().unwrap().unwrap();
    assert_eq!(&*r.recv_with(Wait::no_wait()).unwrap(), &record(3, 100)[..]);
    assert_eq!(r.held_bytes(&first).unwrap(), &record(0, 100)[..]);
    assert_eq!(r.held_bytes(&third).unwrap(), &record(2, 100)[..]);
    r.release_held(first).unwrap();
    r.release_held(third).unwrap();
    assert!(r.try_recv_held().unwrap().is_none());
}

#[test]
fn at_most_max_held_at_once_and_the_next_record_waits_its_turn() {
    let (mut w, mut r) = pair(1 << 20);
    for i in 0..(MAX_HELD as u32 + 1) {
        w.send(&i.to_le_bytes()).unwrap();
    }
    let mut held: Vec<Held> = (0..MAX_HELD)
        .map(|_| r.try_recv_held().unwrap().unwrap())
        .collect();
    assert!(matches!(r.try_recv_held(), Err(Error::TooLarge { .. })));
    r.release_held(held.remove(0)).unwrap();
    // The refused record was not taken: it comes next.
    let next = r.try_recv_held().unwrap().unwrap();
    assert_eq!(
        r.held_bytes(&next).unwrap(),
        &(MAX_HELD as u32).to_le_bytes()
    );
    for h in held {
        r.release_held(h).unwrap();
    }
    r.release_held(next).unwrap();
}

#[test]
fn held_overflow_records_stay_mapped_while_later_ones_come_and_go() {
    // Records far larger than the ring travel in overflow segments. A
    // writer has at most 8 in flight, and a held record keeps every later
    // one in flight too (records go back in order): hold 4, let 4 more
    // pass (read, checked, released), check the held ones, release them,
    // and the stream goes on.
    let (mut w, mut r) = pair(1 << 16);
    let size = |i: u32| 100_000 + i as usize * 70_000;
    let mut held = Vec::new();
    for i in 0..4u32 {
        w.send(&record(i, size(i))).unwrap();
        held.push(r.recv_held_with(Wait::no_wait()).unwrap());
    }
    for i in 4..8u32 {
        w.send(&record(i, size(i))).unwrap();
        assert_eq!(
            &*r.recv_with(Wait::no_wait()).unwrap(),
            &record(i, size(i))[..]
        );
    }
    // Every overflow slot is in flight behind the oldest held record.
    assert!(w.send_with(&record(8, size(8)), Wait::no_wait()).is_err());
    for (i, h) in held.iter().enumerate() {
        assert_eq!(
            r.held_bytes(h).unwrap(),
            &record(i as u32, size(i as u32))[..]
        );
    }
    for h in held {
        r.release_held(h).unwrap();
    }
    for i in 8..40u32 {
        w.send(&record(i, size(i % 8))).unwrap();
        assert_eq!(
            &*r.recv_with(Wait::no_wait()).unwrap(),
            &record(i, size(i % 8))[..]
        );
    }
}

#[test]
fn a_held_record_is_read_and_released_only_through_its_own_reader() {
    let (mut w, mut r) = pair(1 << 16);
    let mut other = BroadcastReader::attach(&w.handle()).unwrap();
    w.wait_for_readers(2, Wait::no_wait()).unwrap();
    w.send(b"x").unwrap();
    let mine = r.try_recv_held().unwrap().unwrap();
    let theirs = other.try_recv_held().unwrap().unwrap();
    assert!(r.held_bytes(&theirs).is_none());
    assert!(other.held_bytes(&mine).is_none());
    // A ticket offered to the wrong reader comes back untouched...
    let theirs = r.release_held(theirs).unwrap_err();
    let mine = other.release_held(mine).unwrap_err();
    // ...and its own reader still releases it.
    other.release_held(theirs).unwrap();
    r.release_held(mine).unwrap();
}

/// Review: an overflow record given back while an older record is held
/// must still reach the writer (it recycles overflow segments) as soon as
/// the older one goes, not only at the next eighth of the ring.
#[test]
fn an_overflow_release_behind_a_held_record_is_told_when_the_hold_goes() {
    let (mut w, mut r) = pair(1 << 16);
    w.send(b"small").unwrap();
    let h = r.try_recv_held().unwrap().unwrap();
    // Eight overflow records, read and dropped behind the held one: the
    // writer's eight in-flight overflow segments are all taken.
    for i in 0..8u32 {
        w.send(&record(i, 100_000)).unwrap();
        drop(r.recv_with(Wait::no_wait()).unwrap());
    }
    r.release_held(h).unwrap();
    // Told at once: a ninth goes through without waiting.
    w.send_with(&record(8, 100_000), Wait::no_wait()).unwrap();
}

/// Review: only records still held count against MAX_HELD (released ones
/// behind an older hold do not).
#[test]
fn records_released_behind_an_older_hold_do_not_count_against_the_limit() {
    let (mut w, mut r) = pair(1 << 20);
    for i in 0..(2 * MAX_HELD as u32) {
        w.send(&i.to_le_bytes()).unwrap();
    }
    let oldest = r.try_recv_held().unwrap().unwrap();
    for _ in 0..(MAX_HELD + 10) {
        let h = r.try_recv_held().unwrap().unwrap();
        r.release_held(h).unwrap();
    }
    assert_eq!(r.held_bytes(&oldest).unwrap(), &0u32.to_le_bytes());
    r.release_held(oldest).unwrap();
}

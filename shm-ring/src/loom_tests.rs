//! Loom models of the ring protocols: the same `broadcast_core` and
//! `mpmc_core` code, on heap memory with loom's atomics and a futex model in
//! which a lost wake-up is a deadlock.
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p shoal-shm-ring --release --lib loom`
//! (`cargo xtask loom` does exactly that).

use crate::broadcast_core::{ReaderCore, WriterCore};
use crate::layout::{rec, slot, untag, BroadcastControl, MpmcControl, Own, RECORD_HEADER};
use crate::lease;
use crate::liveness::ProcessId;
use crate::mem::{HeapMem, RingMem};
use crate::mpmc_core::{ConsumerCore, Layout, ProducerCore};
use crate::peer::PeerOptions;
use crate::sync::Ordering;
use crate::wait::{Wait, WaitStrategy};
use std::sync::Arc;

fn opts() -> PeerOptions {
    PeerOptions::default().wait_strategy(WaitStrategy::Park)
}

fn me() -> ProcessId {
    ProcessId {
        pid: std::process::id(),
        start_time: 0,
    }
}

/// Payload sizes that force waiting on the reader and a wrap with a pad in
/// a 256-byte ring.
const SIZES: [u64; 4] = [8, 100, 100, 8];

#[test]
fn loom_broadcast_every_record_in_order_with_backpressure_and_wrap() {
    loom::model(|| {
        let mem = Arc::new(HeapMem::new(BroadcastControl::new(), 1, 256));
        let mut w = WriterCore::new(mem.clone(), opts());
        let mut r = ReaderCore::join(mem.clone(), me(), opts()).unwrap();
        w.wait_for_readers(1, &Wait::no_wait()).unwrap();
        let reader = loom::thread::spawn(move || {
            for (i, &len) in SIZES.iter().enumerate() {
                let g = r.recv(&Wait::forever()).unwrap();
                assert_eq!(g.len, len);
                // SAFETY: committed and unreleased: the writer does not touch it.
                let b = unsafe { *r.mem.data(g.pos + RECORD_HEADER as u64) };
                assert_eq!(b, i as u8);
                r.release(g.next, false);
            }
        });
        for (i, &len) in SIZES.iter().enumerate() {
            let res = w.reserve(len, &Wait::forever()).unwrap();
            // SAFETY: the reservation owns `len` payload bytes.
            unsafe { *w.payload(&res) = i as u8 };
            w.commit(res, len, rec::DATA);
        }
        reader.join().unwrap();
    });
}

#[test]
fn loom_broadcast_close_wakes_a_parked_reader() {
    loom::model(|| {
        let mem = Arc::new(HeapMem::new(BroadcastControl::new(), 1, 256));
        let mut w = WriterCore::new(mem.clone(), opts());
        let mut r = ReaderCore::join(mem.clone(), me(), opts()).unwrap();
        w.wait_for_readers(1, &Wait::no_wait()).unwrap();
        let reader = loom::thread::spawn(move || {
            let g = r.recv(&Wait::forever()).unwrap();
            r.release(g.next, false);
            assert!(matches!(
                r.recv(&Wait::forever()),
                Err(crate::Error::Closed)
            ));
        });
        let res = w.reserve(8, &Wait::forever()).unwrap();
        w.commit(res, 8, rec::DATA);
        w.close();
        reader.join().unwrap();
    });
}

fn mpmc_mem(consumers: usize, producers: usize) -> Arc<HeapMem<MpmcControl>> {
    let ctrl = MpmcControl::new();
    Arc::new(HeapMem::new(ctrl, consumers + producers, 256))
}

#[test]
fn loom_mpmc_two_producers_one_consumer_exactly_once() {
    loom::model(|| {
        let mem = mpmc_mem(1, 2);
        let lay = Layout {
            consumers: 1,
            producers: 2,
        };
        let mut c = ConsumerCore::join(mem.clone(), &lay, me(), 0, opts()).unwrap();
        let producers: Vec<_> = (0..2u8)
            .map(|id| {
                let mut p = ProducerCore::join(mem.clone(), &lay, me(), opts()).unwrap();
                loom::thread::spawn(move || {
                    let len = if id == 0 { 8 } else { 60 };
                    let r = p.reserve(len, &Wait::forever()).unwrap();
                    // SAFETY: the reservation owns `len` payload bytes.
                    unsafe { *p.payload(&r) = id + 1 };
                    p.commit(r, 4, rec::DATA).unwrap();
                })
            })
            .collect();
        let mut seen = [false; 2];
        for _ in 0..2 {
            let g = c.take(&Wait::forever()).unwrap();
            // SAFETY: taken and unreleased: no producer reuses it.
            let id = unsafe { *c.mem.data(g.pos + RECORD_HEADER as u64) };
            assert!(id == 1 || id == 2);
            assert!(!seen[id as usize - 1], "taken twice");
            seen[id as usize - 1] = true;
            c.release(g.pos);
        }
        for p in producers {
            p.join().unwrap();
        }
    });
}

#[test]
fn loom_mpmc_two_consumers_take_each_record_once() {
    loom::model(|| {
        let mem = mpmc_mem(2, 1);
        let lay = Layout {
            consumers: 2,
            producers: 1,
        };
        let mut p = ProducerCore::join(mem.clone(), &lay, me(), opts()).unwrap();
        let taken = Arc::new(loom::sync::atomic::AtomicUsize::new(0));
        let consumers: Vec<_> = (0..2)
            .map(|_| {
                let mut c = ConsumerCore::join(mem.clone(), &lay, me(), 0, opts()).unwrap();
                let taken = taken.clone();
                loom::thread::spawn(move || {
                    let mut mine = 0u32;
                    loop {
                        match c.take(&Wait::forever()) {
                            Ok(g) => {
                                // SAFETY: taken and unreleased.
                                let v = unsafe { *c.mem.data(g.pos + RECORD_HEADER as u64) };
                                mine |= 1 << v;
                                taken.fetch_add(1, loom::sync::atomic::Ordering::SeqCst);
                                c.release(g.pos);
                            }
                            Err(crate::Error::Closed) => return mine,
                            Err(e) => panic!("{e}"),
                        }
                    }
                })
            })
            .collect();
        for v in 0..2u8 {
            let r = p.reserve(8, &Wait::forever()).unwrap();
            // SAFETY: the reservation owns 8 payload bytes.
            unsafe { *p.payload(&r) = v };
            p.commit(r, 8, rec::DATA).unwrap();
        }
        p.close_ring();
        let masks: Vec<u32> = consumers.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(masks[0] & masks[1], 0, "a record was taken twice");
        assert_eq!(masks[0] | masks[1], 0b11, "a record was lost");
        assert_eq!(taken.load(loom::sync::atomic::Ordering::SeqCst), 2);
    });
}

#[test]
fn loom_mpmc_backpressure_reclaim_and_wrap() {
    loom::model(|| {
        let mem = mpmc_mem(1, 1);
        let lay = Layout {
            consumers: 1,
            producers: 1,
        };
        let mut p = ProducerCore::join(mem.clone(), &lay, me(), opts()).unwrap();
        let mut c = ConsumerCore::join(mem.clone(), &lay, me(), 0, opts()).unwrap();
        let consumer = loom::thread::spawn(move || {
            for (i, &len) in SIZES.iter().enumerate() {
                let g = c.take(&Wait::forever()).unwrap();
                assert_eq!(g.len, len);
                // SAFETY: taken and unreleased: no producer reuses it.
                let b = unsafe { *c.mem.data(g.pos + RECORD_HEADER as u64) };
                assert_eq!(b, i as u8);
                c.release(g.pos);
            }
        });
        // 8, 100, 100, 8 bytes in a 256-byte ring: the producer must wait
        // for the consumer to release space, and the third record wraps
        // behind a pad.
        for (i, &len) in SIZES.iter().enumerate() {
            let r = p.reserve(len, &Wait::forever()).unwrap();
            // SAFETY: the reservation owns `len` payload bytes.
            unsafe { *p.payload(&r) = i as u8 };
            p.commit(r, len, rec::DATA).unwrap();
        }
        consumer.join().unwrap();
    });
}

/// Issue 6 items 1 and 13: two readers joining at once, one of them taking
/// over the slot of a reader that died, while the writer activates joins.
/// Each ends up with its own slot, and each slot's word names its owner.
#[test]
fn loom_racing_joins_and_a_takeover_give_distinct_slots() {
    loom::model(|| {
        let mem = Arc::new(HeapMem::new(BroadcastControl::new(), 2, 256));
        let mut w = WriterCore::new(mem.clone(), opts());
        // A reader joined slot 0 and died (its lease is gone).
        let dead = ReaderCore::join(mem.clone(), me(), opts()).unwrap();
        assert_eq!(dead.slot_index(), 0);
        mem.kill(lease::slot_byte(0));
        let joiners: Vec<_> = (0..2)
            .map(|_| {
                let m = mem.clone();
                loom::thread::spawn(move || ReaderCore::join(m, me(), opts()).unwrap())
            })
            .collect();
        // The writer activates whatever joined so far, concurrently.
        let res = w.reserve(8, &Wait::forever()).unwrap();
        w.commit(res, 8, rec::DATA);
        let mut rs: Vec<_> = joiners.into_iter().map(|t| t.join().unwrap()).collect();
        w.wait_for_readers(2, &Wait::forever()).unwrap();
        assert_ne!(
            rs[0].slot_index(),
            rs[1].slot_index(),
            "one slot, two owners"
        );
        for r in &rs {
            let t = r.token();
            let o = Own::unpack(mem.slot(t.index).own.load(Ordering::SeqCst));
            assert_eq!(o.gen, t.gen);
            assert_eq!(o.state, slot::ACTIVE);
        }
        let res = w.reserve(8, &Wait::forever()).unwrap();
        w.commit(res, 8, rec::DATA);
        for r in &mut rs {
            let g = r.poll().unwrap().expect("an active reader sees the record");
            r.release(g.next, false);
        }
    });
}

/// Issue 6 items 1 and 13: the writer evicts a dead reader while another
/// process takes its slot over. The eviction never frees the new owner's
/// slot, and the new owner receives what is sent after its activation.
#[test]
fn loom_eviction_races_a_takeover() {
    loom::model(|| {
        let mem = Arc::new(HeapMem::new(BroadcastControl::new(), 1, 256));
        let mut w = WriterCore::new(mem.clone(), opts());
        let dead = ReaderCore::join(mem.clone(), me(), opts()).unwrap();
        w.wait_for_readers(1, &Wait::no_wait()).unwrap();
        let _ = dead;
        mem.kill(lease::slot_byte(0));
        let m = mem.clone();
        let joiner = loom::thread::spawn(move || ReaderCore::join(m, me(), opts()).unwrap());
        w.evict_dead_now().unwrap();
        let mut r = joiner.join().unwrap();
        let t = r.token();
        let o = Own::unpack(mem.slot(0).own.load(Ordering::SeqCst));
        assert_eq!(o.gen, t.gen, "the eviction hit the new owner");
        assert_ne!(
            o.state,
            slot::FREE,
            "the eviction freed the new owner's slot"
        );
        let res = w.reserve(8, &Wait::forever()).unwrap();
        // SAFETY: the reservation owns 8 payload bytes.
        unsafe { *w.payload(&res) = 42 };
        w.commit(res, 8, rec::DATA);
        let g = r.poll().unwrap().expect("the new owner was activated");
        // SAFETY: committed and unreleased.
        assert_eq!(unsafe { *r.mem.data(g.pos + RECORD_HEADER as u64) }, 42);
        r.release(g.next, false);
    });
}

/// Issue 6 items 10 and 13: a producer judged dead (its lease dropped)
/// commits while a consumer tombstones its reservation. Exactly one wins:
/// a successful commit is taken exactly once, a lost one is reported.
#[test]
fn loom_tombstone_races_a_late_commit() {
    loom::model(|| {
        let mem = mpmc_mem(1, 1);
        let lay = Layout {
            consumers: 1,
            producers: 1,
        };
        let quick = opts().orphan_timeout(std::time::Duration::ZERO);
        let mut p = ProducerCore::join(mem.clone(), &lay, me(), quick).unwrap();
        let mut c = ConsumerCore::join(mem.clone(), &lay, me(), 0, quick).unwrap();
        let r = p.reserve(8, &Wait::forever()).unwrap();
        // SAFETY: the reservation owns 8 payload bytes.
        unsafe { *p.payload(&r) = 7 };
        mem.kill(lease::slot_byte(1)); // the producer looks dead now
        let producer = loom::thread::spawn(move || p.commit(r, 8, rec::DATA).is_ok());
        let mut got = 0;
        for _ in 0..2 {
            if let Some(g) = c.poll().unwrap() {
                got += 1;
                c.release(g.pos);
            }
        }
        let committed = producer.join().unwrap();
        while let Some(g) = c.poll().unwrap() {
            got += 1;
            c.release(g.pos);
        }
        if committed {
            assert_eq!(got, 1, "a committed record was lost or duplicated");
        } else {
            assert_eq!(got, 0, "a tombstoned record was delivered");
        }
    });
}

/// Review finding: evicting a dead reader while a new owner takes the slot
/// over must not clear the new owner's waiter registration.
#[test]
fn loom_eviction_keeps_the_new_owners_waiter_bit() {
    loom::model(|| {
        let mem = Arc::new(HeapMem::new(BroadcastControl::new(), 1, 256));
        let mut w = WriterCore::new(mem.clone(), opts());
        let dead = ReaderCore::join(mem.clone(), me(), opts()).unwrap();
        w.wait_for_readers(1, &Wait::no_wait()).unwrap();
        let _ = dead;
        mem.kill(lease::slot_byte(0));
        let m = mem.clone();
        let joiner = loom::thread::spawn(move || {
            let r = ReaderCore::join(m.clone(), me(), opts()).unwrap();
            let _key = m.ctrl().data_ec.prepare(crate::wait::Waiter::ready(0));
            r
        });
        w.evict_dead_now().unwrap();
        let _r = joiner.join().unwrap();
        assert!(
            mem.ctrl().data_ec.slot_registered(0),
            "the new owner's waiter bit was cleared"
        );
    });
}

/// Second review: the usual dead reader died parked (its bit set); a new
/// owner that parks sets the same bit, the map word returns to what the
/// evictor read, and the evictor's CAS clears it (ABA). The clear then moves
/// the sequence, so the new owner's sleep (keyed before) returns at once
/// and it registers again: no wake-up is lost.
#[test]
fn loom_eviction_aba_does_not_lose_a_parked_new_owners_wakeup() {
    loom::model(|| {
        let mem = Arc::new(HeapMem::new(BroadcastControl::new(), 1, 256));
        let mut w = WriterCore::new(mem.clone(), opts());
        let dead = ReaderCore::join(mem.clone(), me(), opts()).unwrap();
        w.wait_for_readers(1, &Wait::no_wait()).unwrap();
        let _ = mem.ctrl().data_ec.prepare(crate::wait::Waiter::blocking(0));
        let _ = dead;
        mem.kill(lease::slot_byte(0));
        let m = mem.clone();
        let joiner = loom::thread::spawn(move || {
            let r = ReaderCore::join(m.clone(), me(), opts()).unwrap();
            let key = m.ctrl().data_ec.prepare(crate::wait::Waiter::blocking(0));
            (r, key)
        });
        w.evict_dead_now().unwrap();
        let (_r, key) = joiner.join().unwrap();
        let ec = &mem.ctrl().data_ec;
        assert!(
            ec.slot_registered(0) || ec.changed(key),
            "the new owner's registration was cleared and its sleep would not end"
        );
    });
}

fn send_tagged(w: &mut WriterCore<Arc<HeapMem<BroadcastControl>>>, len: u64, tag: u8) {
    let r = w.reserve(len, &Wait::forever()).unwrap();
    // SAFETY: the reservation owns `len` payload bytes.
    unsafe { *w.payload(&r) = tag };
    w.commit(r, len, rec::DATA);
}

/// Third review: a model where publication is really lazy (a 1 KiB ring,
/// 64-byte records), `want_space` is raised while the reader holds
/// released-but-unpublished space, and the writer waits across a wrap pad.
#[test]
fn loom_lazy_publication_want_space_and_a_wrap() {
    loom::model(|| {
        let mem = Arc::new(HeapMem::new(BroadcastControl::new(), 1, 1024));
        let mut w = WriterCore::new(mem.clone(), opts());
        let mut r = ReaderCore::join(mem.clone(), me(), opts()).unwrap();
        w.wait_for_readers(1, &Wait::no_wait()).unwrap();
        for i in 0..13u8 {
            send_tagged(&mut w, 8, i); // positions 0..832, all on the fast path
        }
        let g = r.poll().unwrap().unwrap();
        r.release(g.next, false);
        // Lazy: 64 bytes released, nothing published.
        assert_eq!(untag(mem.slot(0).cursor.load(Ordering::Relaxed)), 0);
        send_tagged(&mut w, 8, 13); // at 832: within an eighth -> want_space raised
        assert_eq!(mem.ctrl().status.want_space.load(Ordering::Relaxed), 1);
        let reader = loom::thread::spawn(move || {
            let lens = [8u64; 14]
                .iter()
                .chain([100u64].iter())
                .copied()
                .collect::<Vec<_>>();
            for (i, &len) in lens.iter().enumerate() {
                let g = r.recv(&Wait::forever()).unwrap();
                assert_eq!(g.len, len);
                // SAFETY: committed and unreleased.
                let b = unsafe { *r.mem.data(g.pos + RECORD_HEADER as u64) };
                assert_eq!(b, i as u8 + 1);
                r.release(g.next, false);
            }
        });
        send_tagged(&mut w, 8, 14); // at 896: need 1024, fits what was published
        send_tagged(&mut w, 100, 15); // pad 960..1024, record at 1024: waits
        reader.join().unwrap();
    });
}

/// Work accounting: a producer's last claimed commit races the close of
/// claims by another producer. Whichever comes second must finish the work
/// (a lost finish is a consumer parked for ever: a loom deadlock), and the
/// consumer takes the message before it is told the work is finished.
#[test]
fn loom_mpmc_the_last_commit_racing_the_close_finishes_the_work() {
    loom::model(|| {
        let mem = mpmc_mem(1, 2);
        let lay = Layout {
            consumers: 1,
            producers: 2,
        };
        let mut c = ConsumerCore::join(mem.clone(), &lay, me(), 0, opts()).unwrap();
        let mut a = ProducerCore::join(mem.clone(), &lay, me(), opts()).unwrap();
        let mut b = ProducerCore::join(mem.clone(), &lay, me(), opts()).unwrap();
        a.claim(1, &Wait::forever()).unwrap();
        let sender = loom::thread::spawn(move || {
            let r = a.reserve(8, &Wait::forever()).unwrap();
            a.commit(r, 8, rec::DATA).unwrap();
        });
        let closer = loom::thread::spawn(move || b.close_claims(&Wait::forever()).unwrap());
        let g = c.take(&Wait::forever()).unwrap();
        c.release(g.pos);
        assert!(matches!(
            c.take(&Wait::forever()),
            Err(crate::Error::Finished)
        ));
        sender.join().unwrap();
        closer.join().unwrap();
    });
}

/// Work accounting: a send that claimed nothing races the close of claims.
/// Either the send is refused (`Closed`) or the consumer gets its message
/// before `Finished`: never `Finished` with a message still to come.
#[test]
fn loom_mpmc_an_unclaimed_send_racing_the_close_is_never_lost() {
    loom::model(|| {
        let mem = mpmc_mem(1, 2);
        let lay = Layout {
            consumers: 1,
            producers: 2,
        };
        let mut c = ConsumerCore::join(mem.clone(), &lay, me(), 0, opts()).unwrap();
        let mut a = ProducerCore::join(mem.clone(), &lay, me(), opts()).unwrap();
        let mut b = ProducerCore::join(mem.clone(), &lay, me(), opts()).unwrap();
        let sender = loom::thread::spawn(move || match a.reserve(8, &Wait::forever()) {
            Ok(r) => {
                a.commit(r, 8, rec::DATA).unwrap();
                true
            }
            Err(crate::Error::Closed) => false,
            Err(e) => panic!("{e:?}"),
        });
        let closer = loom::thread::spawn(move || b.close_claims(&Wait::forever()).unwrap());
        let mut got = 0;
        loop {
            match c.take(&Wait::forever()) {
                Ok(g) => {
                    got += 1;
                    c.release(g.pos);
                }
                Err(crate::Error::Finished) => break,
                Err(e) => panic!("{e:?}"),
            }
        }
        let sent = sender.join().unwrap();
        closer.join().unwrap();
        assert_eq!(got, usize::from(sent));
    });
}

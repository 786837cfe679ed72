//! The group lock with ranks as threads (each with its own connection to
//! the rendezvous, as a process has): mutual exclusion, FIFO grants, try
//! and timeout. (A holder that dies holding the lock: in the workspace's
//! `tests/collectives.rs`, with processes killed on one host and on two.)

use shoal_collectives::Group;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;
use common::done;

fn groups(size: u32) -> Vec<Group> {
    let o = common::opts().lock_notice(Duration::from_millis(200));
    common::groups_with(size, &o)
}

#[test]
fn four_ranks_count_to_a_thousand_in_request_order() {
    let counter = Arc::new(AtomicU64::new(0));
    let grants = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = groups(4)
        .into_iter()
        .map(|g| {
            let (counter, grants) = (counter.clone(), grants.clone());
            std::thread::spawn(move || {
                let lock = g.lock("counter").unwrap();
                for _ in 0..250 {
                    let guard = lock.lock().unwrap();
                    // Not an atomic increment: only the lock keeps it whole.
                    let v = counter.load(Ordering::Relaxed);
                    std::thread::yield_now();
                    counter.store(v + 1, Ordering::Relaxed);
                    grants.lock().unwrap().push((guard.ticket(), guard.turn()));
                }
                drop(lock);
                g.barrier().unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(counter.load(Ordering::Relaxed), 1000);
    let grants = grants.lock().unwrap();
    assert_eq!(grants.len(), 1000);
    // Granted in request order: each grant's place among grants is its
    // request's place among requests.
    assert!(
        grants.iter().all(|(ticket, turn)| ticket == turn),
        "{grants:?}"
    );
}

#[test]
fn try_and_timeout_give_up_without_the_lock() {
    let gs = groups(2);
    let a = gs[0].lock("l").unwrap();
    let b = gs[1].lock("l").unwrap();
    let held = a.lock().unwrap();
    assert!(b.try_lock().unwrap().is_none());
    let t0 = std::time::Instant::now();
    // Past the notice time: the wait logs who holds it, and goes on.
    assert!(b
        .lock_timeout(Duration::from_millis(500))
        .unwrap()
        .is_none());
    assert!(t0.elapsed() >= Duration::from_millis(450));
    drop(held);
    let again = b.try_lock().unwrap().expect("free now");
    // A waiter that gave up its place does not hold the queue.
    drop(again);
    assert!(a.try_lock().unwrap().is_some());
    drop((a, b));
    done(gs);
}

#[test]
fn a_group_of_one_locks_between_threads() {
    let g = Group::single();
    let counter = Arc::new(AtomicU64::new(0));
    std::thread::scope(|s| {
        for _ in 0..4 {
            let (g, counter) = (&g, counter.clone());
            s.spawn(move || {
                let lock = g.lock("n").unwrap();
                for _ in 0..500 {
                    let _guard = lock.lock().unwrap();
                    let v = counter.load(Ordering::Relaxed);
                    std::thread::yield_now();
                    counter.store(v + 1, Ordering::Relaxed);
                }
            });
        }
    });
    assert_eq!(counter.load(Ordering::Relaxed), 2000);
    let lock = g.lock("n").unwrap();
    let held = lock.lock().unwrap();
    assert!(lock.try_lock().unwrap().is_none());
    assert!(lock
        .lock_timeout(Duration::from_millis(50))
        .unwrap()
        .is_none());
    drop(held);
}

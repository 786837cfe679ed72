//! Groups whose ranks are threads of this process (each with its own
//! connection to the rendezvous, as a process would have): bootstrap,
//! barrier, broadcast, gather, all_gather, split, and what a missing rank
//! does to the others.

use shoal_collectives::{Error, Group, GroupOptions, Launch, Launcher};
use std::time::Duration;

mod common;
use common::{launch, rendezvous as free_address};

/// Runs `body` on `size` ranks (threads), each with its group.
fn ranks<T: Send + 'static>(
    size: u32,
    opts: GroupOptions,
    body: impl Fn(Group) -> T + Send + Sync + Clone + 'static,
) -> Vec<T> {
    let at = free_address();
    let threads: Vec<_> = (0..size)
        .map(|r| {
            let (at, body, opts) = (at.clone(), body.clone(), opts.clone());
            std::thread::spawn(move || {
                let g = Group::bootstrap(&launch(r, size, &at), &opts).unwrap();
                body(g)
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

fn opts() -> GroupOptions {
    GroupOptions::default().timeout(Duration::from_secs(20))
}

#[test]
fn four_ranks_run_every_collective() {
    let out = ranks(4, opts(), |g| {
        assert_eq!(g.size(), 4);
        // Threads of one process share a host.
        assert_eq!(
            (g.nodes(), g.local_size(), g.local_rank()),
            (1, 4, g.rank())
        );
        for _ in 0..3 {
            g.barrier().unwrap();
        }
        let text = format!("from rank {}", g.rank());
        let b = g.broadcast(2, (g.rank() == 2).then_some(&text)).unwrap();
        assert_eq!(b.get().as_str(), "from rank 2");
        let all = g.all_gather(&(g.rank() * 10)).unwrap();
        let got: Vec<u32> = all.iter().map(|v| v.get().to_native()).collect();
        assert_eq!(got, [0, 10, 20, 30]);
        let gathered = g
            .gather(1, &vec![g.rank() as u8; g.rank() as usize])
            .unwrap();
        if g.rank() == 1 {
            let v = gathered.unwrap();
            assert_eq!(v.len(), 4);
            for (r, x) in v.iter().enumerate() {
                assert_eq!(x.deserialize().unwrap(), vec![r as u8; r]);
            }
        } else {
            assert!(gathered.is_none());
        }
        g.rank()
    });
    assert_eq!(out, [0, 1, 2, 3]);
}

#[test]
fn split_makes_sub_groups_that_run_collectives() {
    ranks(4, opts(), |g| {
        // Even and odd ranks, the order reversed by key.
        let sub = g.split(g.rank() % 2, 10 - g.rank()).unwrap();
        assert_eq!(sub.size(), 2);
        let expected_rank = if g.rank() >= 2 { 0 } else { 1 };
        assert_eq!(sub.rank(), expected_rank);
        let all = sub.all_gather(&g.rank()).unwrap();
        let got: Vec<u32> = all.iter().map(|v| v.get().to_native()).collect();
        let mine = if g.rank() % 2 == 0 { [2, 0] } else { [3, 1] };
        assert_eq!(got, mine);
        sub.barrier().unwrap();
        // The parent goes on after its sub-groups.
        g.barrier().unwrap();
        // A sub-group of a sub-group.
        let one = sub.split(sub.rank(), 0).unwrap();
        assert_eq!(one.size(), 1);
        one.barrier().unwrap();
    });
}

#[test]
fn a_rank_that_never_comes_is_named() {
    let at = free_address();
    let o = GroupOptions::default().timeout(Duration::from_millis(1500));
    // Ranks 0 and 1 of 3 come; rank 2 never does.
    let threads: Vec<_> = (0..2)
        .map(|r| {
            let (at, o) = (at.clone(), o.clone());
            std::thread::spawn(move || Group::bootstrap(&launch(r, 3, &at), &o))
        })
        .collect();
    for t in threads {
        match t.join().unwrap() {
            Err(Error::RanksMissing { missing, .. }) => assert_eq!(missing, [2]),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_rank_missing_from_a_collective_is_named() {
    let out = ranks(
        3,
        GroupOptions::default().timeout(Duration::from_secs(2)),
        |g| {
            if g.rank() == 1 {
                // Skips the barrier, then goes on with the rest.
                std::thread::sleep(Duration::from_secs(3));
                return Vec::new();
            }
            match g.barrier() {
                Err(Error::RanksMissing { missing, .. }) => missing,
                other => panic!("{other:?}"),
            }
        },
    );
    assert_eq!(out, [vec![1], vec![], vec![1]]);
}

#[test]
fn bad_arguments_are_refused() {
    let g = Group::single();
    assert!(matches!(
        g.broadcast::<u32>(1, Some(&1)),
        Err(Error::BadArguments(_))
    ));
    assert!(matches!(
        g.broadcast::<u32>(0, None),
        Err(Error::BadArguments(_))
    ));
    assert!(matches!(g.gather(5, &1u8), Err(Error::BadArguments(_))));
}

#[test]
fn a_group_of_one_needs_nothing() {
    let g = Group::bootstrap(
        &Launch {
            launcher: Launcher::None,
            rank: 0,
            size: 1,
            local_rank: Some(0),
            local_size: Some(1),
            rendezvous: None,
            job: "none".into(),
        },
        &GroupOptions::default(),
    )
    .unwrap();
    g.barrier().unwrap();
    let v = g.broadcast(0, Some(&String::from("alone"))).unwrap();
    assert_eq!(v.get().as_str(), "alone");
    assert_eq!(g.gather(0, &1u64).unwrap().unwrap().len(), 1);
    assert_eq!(g.split(0, 0).unwrap().size(), 1);
}

#[test]
fn a_broadcast_right_after_bootstrap_reaches_ranks_that_attached_late() {
    // The host's first rank may put the first broadcast before the others
    // attached to the host's shared state: they still get it.
    for round in 0..20u32 {
        let out = ranks(4, opts(), move |g| {
            if g.rank() != 0 {
                std::thread::sleep(Duration::from_millis(u64::from(g.rank() * 3)));
            }
            let v = g.broadcast(0, (g.rank() == 0).then_some(&round)).unwrap();
            v.get().to_native()
        });
        assert_eq!(out, [round; 4]);
    }
}

#[test]
fn a_value_too_large_fails_the_gather_on_every_rank_at_once() {
    let mut o = opts();
    o.max_value = 256;
    let start = std::time::Instant::now();
    let out = ranks(3, o, |g| {
        let big = vec![7u8; if g.rank() == 1 { 4096 } else { 8 }];
        let a = g.gather(0, &big).map(drop);
        let b = g.all_gather(&big).map(drop);
        (a.is_err(), b.is_err())
    });
    // Every rank learns it (the rank with the large value, and those it
    // would have given it to), without waiting out the timeout; the
    // group is broken from then on.
    assert_eq!(out, [(true, true); 3]);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn a_host_whose_shared_state_cannot_be_made_fails_every_rank_at_once() {
    // A node buffer four times what /dev/shm holds: the host's first
    // rank cannot make the host's shared state at bootstrap.
    let Some(size) = shoal_shm_ring::dev_shm_size() else {
        println!("skipped: /dev/shm reports no size limit");
        return;
    };
    let mut o = opts();
    o.node_buffer = usize::try_from(size.saturating_mul(4)).unwrap_or(usize::MAX);
    let at = free_address();
    let start = std::time::Instant::now();
    let out: Vec<Result<(), Error>> = (0..3u32)
        .map(|r| {
            let (at, o) = (at.clone(), o.clone());
            std::thread::spawn(move || Group::bootstrap(&launch(r, 3, &at), &o).map(drop))
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    for (r, e) in out.iter().enumerate() {
        let e = e.as_ref().expect_err("bootstrap succeeded");
        println!("rank {r}: {e}");
        if r > 0 {
            assert!(
                e.to_string()
                    .contains("rank 0 could not make its host's shared state"),
                "{e}"
            );
        }
    }
    // Told at once, not at the 20 s timeout.
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
}

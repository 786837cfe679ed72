//! shoal-collectives across processes: ranks started with the
//! environment `cargo xtask run` gives (rank, size, rendezvous), on one
//! host or on two (`SHOAL_HOST` apart, so each host's ranks share their
//! own memory and the hosts meet at the rendezvous), and under the
//! environments torchrun and Open MPI's mpirun set. Faults: a lock holder
//! and a rank in a barrier killed with SIGKILL.

use shoal_collectives::{
    Batch, BatchOptions, Error, Group, GroupOptions, OnDeath, SharedArray, TaskState,
};
use shoal_tests::{say, spawn_command, Peer};
use std::process::Command;
use std::time::{Duration, Instant};

const SEC: Duration = Duration::from_secs(1);

fn opts() -> GroupOptions {
    GroupOptions::default().timeout(30 * SEC)
}

/// Every collective, checked on every rank.
fn suite(g: &Group) -> Result<(), String> {
    let e = |what: &str| {
        let what = what.to_string();
        move |err: Error| format!("{what}: {err}")
    };
    for _ in 0..20 {
        g.barrier().map_err(e("barrier"))?;
    }
    for root in 0..g.size() {
        let small = format!("r{root}");
        let v = g
            .broadcast(root, (g.rank() == root).then_some(&small))
            .map_err(e("broadcast 8 B"))?;
        if v.get().as_str() != small {
            return Err(format!("broadcast from {root}: {:?}", v.get().as_str()));
        }
        // 1 MiB, and 9 MiB (through the host's buffer in chunks).
        for len in [1 << 20, 9 << 20] {
            let big: Vec<u8> = (0..len).map(|i| (i as u32 ^ root) as u8).collect();
            let v = g
                .broadcast(root, (g.rank() == root).then_some(&big))
                .map_err(e("broadcast large"))?;
            if v.get().as_slice() != &big[..] {
                return Err(format!("broadcast of {len} B from {root} differs"));
            }
        }
    }
    let all = g.all_gather(&(g.rank() * 3)).map_err(e("all_gather"))?;
    let got: Vec<u32> = all.iter().map(|v| v.get().to_native()).collect();
    let want: Vec<u32> = (0..g.size()).map(|r| r * 3).collect();
    if got != want {
        return Err(format!("all_gather {got:?}"));
    }
    let gathered = g
        .gather(1, &format!("from {}", g.rank()))
        .map_err(e("gather"))?;
    match gathered {
        Some(v) if g.rank() == 1 => {
            for (r, x) in v.iter().enumerate() {
                if x.get().as_str() != format!("from {r}") {
                    return Err(format!("gather {r}: {:?}", x.get().as_str()));
                }
            }
        }
        None if g.rank() != 1 => {}
        other => return Err(format!("gather gave {}", other.is_some())),
    }
    let sub = g.split(g.rank() % 2, g.rank()).map_err(e("split"))?;
    let all = sub.all_gather(&g.rank()).map_err(e("sub all_gather"))?;
    let got: Vec<u32> = all.iter().map(|v| v.get().to_native()).collect();
    let want: Vec<u32> = (0..g.size()).filter(|r| r % 2 == g.rank() % 2).collect();
    if got != want {
        return Err(format!("sub-group {got:?}"));
    }
    sub.barrier().map_err(e("sub barrier"))?;
    array(g)?;
    batch(g, 2)?;
    batch(g, 1)?;
    g.barrier().map_err(e("last barrier"))?;
    Ok(())
}

/// Batch: 25 tasks over worker groups of `k`: each worker group's ranks
/// get the same tasks; every task is handed out once (counted on rank 0
/// through a gather) and ends Done.
fn batch(g: &Group, k: u32) -> Result<(), String> {
    let e = |err: Error| format!("batch of {k}: {err}");
    let mut b = Batch::new(g, 25, k, &BatchOptions::default()).map_err(e)?;
    let mut mine = Vec::new();
    while let Some(t) = b.next_task().map_err(e)? {
        mine.push(t);
    }
    let states = b.finish_all().map_err(e)?;
    let leader = b.worker().rank() == 0;
    let all = g.gather(0, &(leader, mine)).map_err(e)?;
    if let Some(all) = all {
        let mut count = [0u32; 25];
        for v in &all {
            let (leader, tasks) = v.deserialize().map_err(e)?;
            if leader {
                for t in tasks {
                    count[t as usize] += 1;
                }
            }
        }
        if count.iter().any(|c| *c != 1) {
            return Err(format!("batch of {k}: tasks handed out {count:?} times"));
        }
        let states = states.ok_or("batch: rank 0 has no states")?;
        if states.iter().any(|s| *s != TaskState::Done) {
            return Err(format!("batch of {k}: states {states:?}"));
        }
    }
    Ok(())
}

/// SharedArray: blocks (edges included) set from every rank read back
/// bitwise-identically on every rank (compared by a hash of every
/// rank's bytes), for i32/i64/f32/f64, 1-D to 3-D.
fn array(g: &Group) -> Result<(), String> {
    fn check<T: shoal_collectives::Element>(
        g: &Group,
        shape: &[usize],
        make: impl Fn(usize) -> T,
    ) -> Result<(), String> {
        let e = |err: Error| format!("array {shape:?}: {err}");
        let a = SharedArray::<T>::new(g, shape).map_err(e)?;
        let n = shape.len();
        // The whole array, then a block at the far corner, then one at
        // the near edge.
        let corner: Vec<usize> = shape.iter().map(|d| (*d).min(3)).collect();
        let far: Vec<usize> = shape.iter().zip(&corner).map(|(d, c)| d - c).collect();
        let edge: Vec<usize> = (0..n).map(|k| if k == 0 { 1 } else { shape[k] }).collect();
        let cases = [
            (shape.to_vec(), vec![0; n]),
            (corner, far),
            (edge, vec![0; n]),
        ];
        for (k, (bs, off)) in cases.iter().enumerate() {
            let from = (k as u32 + 1) % g.size();
            let count: usize = bs.iter().product();
            let block: Vec<T> = (0..count).map(|i| make(i * 31 + k)).collect();
            a.set((g.rank() == from).then_some(&block[..]), bs, off, from)
                .map_err(e)?;
            let r = a.read();
            // SAFETY: Element types are plain numbers without padding.
            let bytes = unsafe {
                std::slice::from_raw_parts(r.as_ptr() as *const u8, std::mem::size_of_val(&r[..]))
            };
            let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
            });
            drop(r);
            let all = g.all_gather(&hash).map_err(e)?;
            if all.iter().any(|h| h.get().to_native() != hash) {
                return Err(format!(
                    "array {shape:?} case {k}: ranks read different bytes"
                ));
            }
            // The block is where it was set.
            let v = a.get(off).map_err(e)?;
            if v != block[0] {
                return Err(format!("array {shape:?} case {k}: {v:?} at {off:?}"));
            }
        }
        Ok(())
    }
    check::<i32>(g, &[50], |i| i as i32 - 1000)?;
    check::<i64>(g, &[7, 11], |i| (i as i64) << 35)?;
    check::<f32>(g, &[6, 9], |i| i as f32 * 0.25)?;
    check::<f64>(g, &[4, 5, 6], |i| (i as f64).ln_1p() * 1e-300)
}

/// Lock: `n` increments of a counter in `file`, each under the lock;
/// says whether every grant came in request order.
fn count(g: &Group, file: &str, n: u32) -> Result<(), String> {
    let lock = g.lock("counter").map_err(|e| e.to_string())?;
    let mut fifo = true;
    for _ in 0..n {
        let guard = lock.lock().map_err(|e| e.to_string())?;
        let v: u64 = std::fs::read_to_string(file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        std::fs::write(file, (v + 1).to_string()).map_err(|e| e.to_string())?;
        fifo &= guard.ticket() == guard.turn();
    }
    drop(lock);
    say(&format!("fifo {fifo}"));
    g.barrier().map_err(|e| e.to_string())
}

fn run(role: &str, a: &[String]) -> i32 {
    let g = match Group::from_env_with(&opts()) {
        Ok(g) => g,
        Err(e) => {
            say(&format!("bootstrap: {e}"));
            return 3;
        }
    };
    say(&format!(
        "rank {} of {} host {} local {} of {}",
        g.rank(),
        g.size(),
        g.node(),
        g.local_rank(),
        g.local_size()
    ));
    let r = match role {
        "suite" => suite(&g),
        "count" => count(&g, &a[0], a[1].parse().unwrap_or(0)),
        // Takes the lock, says so, and waits to be killed.
        "hold" => {
            let lock = g.lock("state").map_err(|e| e.to_string());
            lock.and_then(|l| {
                let _held = l.lock().map_err(|e| e.to_string())?;
                say("holding");
                // The waiter asks only once this rank holds the lock.
                g.barrier().map_err(|e| e.to_string())?;
                std::thread::sleep(60 * SEC);
                Ok(())
            })
        }
        // Waits for the lock (after the holder took it): says what it got.
        "wait" => {
            let l = g.lock("state").map_err(|e| e.to_string());
            let l = l.and_then(|l| g.barrier().map(|()| l).map_err(|e| e.to_string()));
            l.map(|l| {
                let said = match l.lock() {
                    Err(Error::OwnerDied { rank, .. }) => format!("owner died {rank}"),
                    Ok(_) => "clean".to_string(),
                    Err(e) => format!("error {e}"),
                };
                say(&said);
                if let Ok(mut g) = l.lock_recovering() {
                    g.mark_consistent();
                }
                say(&format!(
                    "then {}",
                    match l.lock() {
                        Ok(_) => "clean".to_string(),
                        Err(e) => e.to_string(),
                    }
                ));
            })
        }
        // A pool of 12 tasks over workers of one rank: rank 2 takes one,
        // says which, and waits to be killed; the others work the rest
        // (and rank 2's, handed out again), and rank 0 says the states.
        "batch-kill" => {
            let on_death = if a[0] == "requeue" {
                OnDeath::Requeue
            } else {
                OnDeath::Fail
            };
            let o = BatchOptions::default().on_death(on_death);
            Batch::new(&g, 12, 1, &o)
                .map_err(|e| e.to_string())
                .and_then(|mut b| {
                    if g.rank() == 2 {
                        let t = b.next_task().map_err(|e| e.to_string())?;
                        say(&format!("took {t:?}"));
                        std::thread::sleep(60 * SEC);
                        return Ok(());
                    }
                    say("in");
                    // Until rank 2 holds its task.
                    std::thread::sleep(Duration::from_millis(500));
                    let mut ran = Vec::new();
                    while let Some(t) = b.next_task().map_err(|e| e.to_string())? {
                        ran.push(t);
                    }
                    say(&format!("ran {ran:?}"));
                    if g.rank() == 0 {
                        // Not collective here (rank 2 is dead): rank 0 reads
                        // the table itself.
                        let states: Vec<String> =
                            (0..12).map(|t| format!("{:?}", b.state(t))).collect();
                        say(&format!("states {}", states.join(",")));
                    }
                    std::mem::forget(b);
                    Err("stop".into())
                })
        }
        // A pool of 12 tasks over worker groups of two ranks: ranks 2 and
        // 3 take one; rank 3 says which and waits to be killed; rank 2
        // then asks for the next task and says what it got (an error: its
        // group lost a rank); ranks 0 and 1 work the rest (and the broken
        // group's task, handed out again), and rank 0 says the states.
        "batch-follower-kill" => Batch::new(&g, 12, 2, &BatchOptions::default())
            .map_err(|e| e.to_string())
            .and_then(|mut b| {
                if g.rank() >= 2 {
                    let t = b.next_task().map_err(|e| e.to_string())?;
                    say(&format!("took {t:?}"));
                    if g.rank() == 3 {
                        std::thread::sleep(60 * SEC);
                        return Ok(());
                    }
                    let then = match b.next_task() {
                        Ok(t) => format!("then task {t:?}"),
                        Err(e) => format!("then error {e}"),
                    };
                    say(&then);
                    std::mem::forget(b);
                    return Err("stop".into());
                }
                say("in");
                // Until ranks 2 and 3 hold their task.
                std::thread::sleep(Duration::from_millis(500));
                let mut ran = Vec::new();
                while let Some(t) = b.next_task().map_err(|e| e.to_string())? {
                    ran.push(t);
                }
                say(&format!("ran {ran:?}"));
                if g.rank() == 0 {
                    let states: Vec<String> =
                        (0..12).map(|t| format!("{:?}", b.state(t))).collect();
                    say(&format!("states {}", states.join(",")));
                }
                std::mem::forget(b);
                Err("stop".into())
            }),
        // Rank 0 holds the lock while rank 1 waits for it and gives up;
        // once rank 0 gave it back, rank 1's try_lock gets it (the ticket
        // it gave up holds nobody up).
        "abandon" => (|| -> Result<(), String> {
            let es = |e: Error| e.to_string();
            let l = g.lock("t").map_err(es)?;
            if g.rank() == 0 {
                let held = l.lock().map_err(es)?;
                g.barrier().map_err(es)?;
                g.barrier().map_err(es)?;
                drop(held);
                g.barrier().map_err(es)?;
            } else {
                g.barrier().map_err(es)?;
                let got = l.lock_timeout(Duration::from_millis(200)).map_err(es)?;
                say(&format!(
                    "waited: {}",
                    if got.is_some() { "got it" } else { "gave up" }
                ));
                drop(got);
                g.barrier().map_err(es)?;
                g.barrier().map_err(es)?;
                let t = l.try_lock().map_err(es)?;
                say(&format!(
                    "then try: {}",
                    if t.is_some() { "got it" } else { "busy" }
                ));
            }
            g.barrier().map_err(es)
        })(),
        // A pool whose state directory is a plain file (`a[0]`): rank 0
        // cannot make it; every rank says how long it took to learn so,
        // and what it was told.
        "batch-refused" => {
            let t0 = std::time::Instant::now();
            let o = BatchOptions::default().state_dir(&a[0]);
            match Batch::new(&g, 4, 1, &o) {
                Ok(_) => Err("the pool was made".into()),
                Err(e) => {
                    say(&format!("refused {} ms: {e}", t0.elapsed().as_millis()));
                    Ok(())
                }
            }
        }
        // An array of `a[0]` f64, too many for /dev/shm: its host's first
        // rank cannot make it; every rank says how long it took to learn
        // so.
        "array-refused" => {
            let t0 = std::time::Instant::now();
            let n: usize = a[0].parse().unwrap_or(1 << 40);
            match SharedArray::<f64>::new(&g, &[n]) {
                Ok(_) => Err("the array was made".into()),
                Err(e) => {
                    say(&format!("refused {} ms: {e}", t0.elapsed().as_millis()));
                    g.barrier().map_err(|e| e.to_string())
                }
            }
        }
        // Barriers until one fails: says how.
        "barriers" => {
            say("in");
            loop {
                match g.barrier() {
                    Ok(()) => continue,
                    Err(Error::RanksGone { ranks, .. }) => {
                        say(&format!("gone {ranks:?}"));
                        break Ok(());
                    }
                    Err(e) => {
                        say(&format!("failed {e}"));
                        break Ok(());
                    }
                }
            }
        }
        // Two hosts (a: ranks 0, 1; b: ranks 2, 3): rank 1 comes last to
        // host a's barrier, so it runs the part across hosts, where it
        // waits (host b's ranks come only after a minute) and is killed;
        // rank 0 says what its barrier ended with.
        "across-runner" => {
            match g.rank() {
                1 => {
                    std::thread::sleep(Duration::from_millis(300));
                    say("last");
                }
                2 | 3 => std::thread::sleep(60 * SEC),
                _ => {}
            }
            let t0 = std::time::Instant::now();
            let r = g.barrier();
            if g.rank() == 0 {
                say(&match r {
                    Err(Error::RanksGone { ranks, .. }) => format!("gone {ranks:?}"),
                    Err(e) => format!("failed {e}"),
                    Ok(()) => "passed".into(),
                });
                say(&format!("after {} s", t0.elapsed().as_secs()));
            }
            Ok(())
        }
        _ => Err(format!("role {role}?")),
    };
    match r {
        Ok(()) => {
            say("done");
            // Rank 0 keeps the rendezvous until the others left.
            drop(g);
            0
        }
        Err(e) => {
            eprintln!("rank failed: {e}");
            1
        }
    }
}

#[test]
fn child_main() {
    shoal_tests::child(run);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// This test binary as rank `rank` of `size` running `role`, with the
/// variables `cargo xtask run` sets (`hosts` names its host, if set).
fn rank(role: &str, rank: u32, size: u32, at: &str, host: Option<&str>, args: &[String]) -> Peer {
    spawn_command(rank_command(role, rank, size, at, host), args)
}

/// The command [`rank`] spawns.
fn rank_command(role: &str, rank: u32, size: u32, at: &str, host: Option<&str>) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "child_main", "--nocapture", "--test-threads=1"])
        .env("SHOAL_TEST_ROLE", role)
        .env("SHOAL_RANK", rank.to_string())
        .env("SHOAL_SIZE", size.to_string())
        .env("SHOAL_RENDEZVOUS", at);
    match host {
        Some(h) => cmd.env("SHOAL_HOST", h),
        None => cmd.env_remove("SHOAL_HOST"),
    };
    cmd.env_remove("SHOAL_SECRET");
    cmd
}

/// Waits for every peer to say "done" and exit 0.
fn all_done(peers: Vec<Peer>) {
    for mut p in peers {
        let mut line = p.expect_line(60 * SEC);
        while line != "done" {
            assert!(!line.starts_with("fifo false"), "{line}");
            line = p.expect_line(60 * SEC);
        }
        assert!(p.wait(30 * SEC).success());
    }
}

#[test]
fn four_processes_on_one_host_run_every_collective() {
    let at = format!("127.0.0.1:{}", free_port());
    let mut peers: Vec<Peer> = (0..4)
        .map(|r| rank("suite", r, 4, &at, None, &[]))
        .collect();
    for p in &mut peers {
        let hello = p.expect_line(60 * SEC);
        assert!(hello.contains("of 4 host 0 local"), "{hello}");
        assert!(hello.ends_with("of 4"), "{hello}");
    }
    all_done(peers);
}

#[test]
fn two_hosts_of_two_run_every_collective_hierarchically() {
    let at = format!("127.0.0.1:{}", free_port());
    // Ranks 0 and 2 on one host, 1 and 3 on the other: the roots and the
    // hosts' first ranks are not the same ranks.
    let hosts = ["col-a", "col-b", "col-a", "col-b"];
    let mut peers: Vec<Peer> = (0..4)
        .map(|r| rank("suite", r, 4, &at, Some(hosts[r as usize]), &[]))
        .collect();
    for (r, p) in peers.iter_mut().enumerate() {
        let hello = p.expect_line(60 * SEC);
        let want = format!("rank {r} of 4 host {} local {} of 2", r % 2, r / 2);
        assert_eq!(hello, want);
    }
    all_done(peers);
}

#[test]
fn four_processes_count_to_4000_under_the_lock_in_request_order() {
    let at = format!("127.0.0.1:{}", free_port());
    let dir = std::env::temp_dir().join(format!("shoal-lock-{}", std::process::id()));
    let _ = std::fs::remove_file(&dir);
    let file = dir.display().to_string();
    let peers: Vec<Peer> = (0..4)
        .map(|r| rank("count", r, 4, &at, None, &[file.clone(), "1000".into()]))
        .collect();
    all_done(peers);
    let total = std::fs::read_to_string(&dir).unwrap();
    let _ = std::fs::remove_file(&dir);
    assert_eq!(total.trim(), "4000");
}

/// A lock holder killed; the waiter is on its host (`hosts` None: the
/// lock lives in the host's shared memory) or on another (through the
/// rendezvous).
fn lock_holder_killed(hosts: Option<[&str; 2]>) {
    let at = format!("127.0.0.1:{}", free_port());
    let mut r0 = rank("wait", 0, 2, &at, hosts.map(|h| h[0]), &[]);
    let mut holder = rank("hold", 1, 2, &at, hosts.map(|h| h[1]), &[]);
    r0.expect_line(30 * SEC);
    holder.expect_line(30 * SEC);
    assert_eq!(holder.expect_line(30 * SEC), "holding");
    std::thread::sleep(Duration::from_millis(200));
    holder.kill9();
    assert_eq!(r0.expect_line(30 * SEC), "owner died 1");
    assert_eq!(r0.expect_line(30 * SEC), "then clean");
    assert_eq!(r0.expect_line(30 * SEC), "done");
    assert!(r0.wait(30 * SEC).success());
}

#[test]
fn a_lock_holder_killed_passes_the_lock_on_marked() {
    lock_holder_killed(None);
}

#[test]
fn a_lock_holder_killed_on_another_host_passes_the_lock_on_marked() {
    lock_holder_killed(Some(["lk-a", "lk-b"]));
}

#[test]
fn a_rank_killed_in_barriers_is_named_by_the_others() {
    let at = format!("127.0.0.1:{}", free_port());
    let mut peers: Vec<Peer> = (0..3)
        .map(|r| rank("barriers", r, 3, &at, None, &[]))
        .collect();
    for p in &mut peers {
        p.expect_line(30 * SEC);
        assert_eq!(p.expect_line(30 * SEC), "in");
    }
    std::thread::sleep(Duration::from_millis(300));
    let victim = peers.remove(2);
    victim.kill9();
    for mut p in peers {
        assert_eq!(p.expect_line(30 * SEC), "gone [2]");
    }
}

/// The rank running a barrier's part across hosts is killed there: its
/// host's other rank, which has arrived, names it dead within moments
/// instead of waiting out the timeout.
#[test]
fn a_rank_killed_in_a_barriers_part_across_hosts_is_named() {
    let at = format!("127.0.0.1:{}", free_port());
    let mut peers: Vec<Peer> = (0..4)
        .map(|r| {
            let host = if r < 2 { "across-a" } else { "across-b" };
            rank("across-runner", r, 4, &at, Some(host), &[])
        })
        .collect();
    for p in &mut peers {
        p.expect_line(30 * SEC);
    }
    assert_eq!(peers[1].expect_line(30 * SEC), "last");
    std::thread::sleep(Duration::from_millis(300));
    let victim = peers.remove(1);
    victim.kill9();
    assert_eq!(peers[0].expect_line(30 * SEC), "gone [1]");
    // Well before the other host comes (a minute) or the timeout.
    let after = peers[0].expect_line(30 * SEC);
    let secs: u64 = after
        .trim_start_matches("after ")
        .trim_end_matches(" s")
        .parse()
        .unwrap();
    assert!(secs < 15, "{after}");
}

/// Ranks started with `SHOAL_SECRET` set: one showing another secret is
/// refused at once, with an error naming the variable (not the secret);
/// a rank with the group's secret then takes its place and the suite
/// runs.
#[test]
fn a_rank_with_another_secret_is_refused() {
    let at = format!("127.0.0.1:{}", free_port());
    let with = |r: u32, secret: &str| {
        let mut cmd = rank_command("suite", r, 3, &at, None);
        cmd.env("SHOAL_SECRET", secret);
        spawn_command(cmd, &[])
    };
    let mut peers: Vec<Peer> = (0..2).map(|r| with(r, "run-7f3e")).collect();
    let mut stranger = with(2, "run-0000");
    let said = stranger.expect_line(30 * SEC);
    assert!(
        said.starts_with("bootstrap: ") && said.contains("SHOAL_SECRET"),
        "{said}"
    );
    assert!(!said.contains("run-"), "the error shows a secret: {said}");
    assert_eq!(stranger.wait(10 * SEC).code(), Some(3));
    peers.push(with(2, "run-7f3e"));
    for p in &mut peers {
        let hello = p.expect_line(60 * SEC);
        assert!(hello.contains(" of 3 "), "{hello}");
    }
    all_done(peers);
}

/// The same where the launcher names no rendezvous (ranks find rank 0's
/// address in a file): the stranger is refused at once too, not after
/// the group's timeout.
#[test]
fn a_rank_with_another_secret_is_refused_without_an_address() {
    let job = format!("secret-test-{}", std::process::id());
    let with = |r: u32, secret: &str| {
        let env = [
            ("OMPI_COMM_WORLD_RANK", "{r}".to_string()),
            ("OMPI_COMM_WORLD_SIZE", "2".into()),
            ("SHOAL_JOB", job.clone()),
            ("SHOAL_SECRET", secret.into()),
        ];
        spawn_command(launched(&env, r), &[])
    };
    let mut rank0 = with(0, "run-7f3e");
    let t0 = Instant::now();
    let mut stranger = with(1, "run-0000");
    let said = stranger.expect_line(30 * SEC);
    assert!(
        said.starts_with("bootstrap: ") && said.contains("SHOAL_SECRET"),
        "{said}"
    );
    assert!(t0.elapsed() < 15 * SEC, "refused after {:?}", t0.elapsed());
    assert_eq!(stranger.wait(10 * SEC).code(), Some(3));
    let mut peers = vec![with(1, "run-7f3e")];
    assert!(rank0.expect_line(60 * SEC).contains(" of 2 "));
    assert!(peers[0].expect_line(60 * SEC).contains(" of 2 "));
    peers.insert(0, rank0);
    all_done(peers);
}

/// The suite under the variables a launcher sets, no shoal variable.
fn under(env: &[(&str, String)], ranks: u32) {
    let peers: Vec<Peer> = (0..ranks)
        .map(|r| spawn_command(launched(env, r), &[]))
        .collect();
    all_done(peers);
}

/// This test binary running the suite as rank `r` under the variables
/// `env` (with `{r}` in a value replaced by `r`), no shoal variable but
/// those given.
fn launched(env: &[(&str, String)], r: u32) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "child_main", "--nocapture", "--test-threads=1"])
        .env("SHOAL_TEST_ROLE", "suite")
        .env_remove("SHOAL_HOST")
        .env_remove("SHOAL_RANK")
        .env_remove("SHOAL_RENDEZVOUS");
    for (k, v) in env {
        cmd.env(k, v.replace("{r}", &r.to_string()));
    }
    cmd
}

#[test]
fn a_torchrun_environment_works_unchanged() {
    let port = free_port();
    under(
        &[
            ("RANK", "{r}".into()),
            ("LOCAL_RANK", "{r}".into()),
            ("WORLD_SIZE", "3".into()),
            ("LOCAL_WORLD_SIZE", "3".into()),
            ("MASTER_ADDR", "127.0.0.1".into()),
            // shoal's rendezvous takes the port after torchrun's.
            ("MASTER_PORT", (port - 1).to_string()),
        ],
        3,
    );
}

#[test]
fn an_open_mpi_environment_without_an_address_works_unchanged() {
    // Every rank on this host: rank 0 leaves its address in a file named
    // by the job.
    let job = format!("test-{}", std::process::id());
    under(
        &[
            ("OMPI_COMM_WORLD_RANK", "{r}".into()),
            ("OMPI_COMM_WORLD_SIZE", "3".into()),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "{r}".into()),
            ("OMPI_COMM_WORLD_LOCAL_SIZE", "3".into()),
            ("PMIX_NAMESPACE", job),
        ],
        3,
    );
}

/// Runs the batch-kill roles; returns (rank 0's and 1's ran lines,
/// rank 0's states line, the task rank 2 took).
fn batch_kill(on_death: &str) -> (Vec<String>, String, String) {
    let at = format!("127.0.0.1:{}", free_port());
    let args = [on_death.to_string()];
    let mut peers: Vec<Peer> = (0..3)
        .map(|r| rank("batch-kill", r, 3, &at, None, &args))
        .collect();
    for p in &mut peers {
        p.expect_line(30 * SEC);
    }
    let took = peers[2].expect_line(30 * SEC);
    let victim = peers.remove(2);
    victim.kill9();
    let mut ran = Vec::new();
    let mut states = String::new();
    for (r, p) in peers.iter_mut().enumerate() {
        assert_eq!(p.expect_line(30 * SEC), "in");
        ran.push(p.expect_line(30 * SEC));
        if r == 0 {
            states = p.expect_line(30 * SEC);
        }
    }
    (ran, states, took)
}

#[test]
fn a_batch_worker_killed_with_its_task_leaves_it_requeued() {
    let (ran, states, took) = batch_kill("requeue");
    let t: u64 = took
        .trim_start_matches("took Some(")
        .trim_end_matches(')')
        .parse()
        .unwrap();
    // Its task ran once more, elsewhere, and everything ended Done.
    assert!(ran.iter().any(|r| r.contains(&format!("{t}"))), "{ran:?}");
    assert_eq!(states, format!("states {}", ["Some(Done)"; 12].join(",")));
}

#[test]
fn a_batch_worker_killed_with_its_task_leaves_it_failed() {
    let (_ran, states, took) = batch_kill("fail");
    let t: usize = took
        .trim_start_matches("took Some(")
        .trim_end_matches(')')
        .parse()
        .unwrap();
    let mut want = ["Some(Done)"; 12];
    want[t] = "Some(Failed)";
    assert_eq!(states, format!("states {}", want.join(",")));
}

/// A rank of a worker group dies while the group runs a task: the
/// group's first rank gets an error from its next `next_task` instead
/// of marking the task Done, and the task is handed out again and done
/// by the other group.
#[test]
fn a_batch_worker_groups_dead_rank_leaves_its_task_requeued() {
    let at = format!("127.0.0.1:{}", free_port());
    let mut peers: Vec<Peer> = (0..4)
        .map(|r| rank("batch-follower-kill", r, 4, &at, None, &[]))
        .collect();
    for p in &mut peers {
        p.expect_line(30 * SEC);
    }
    let took = peers[3].expect_line(30 * SEC);
    assert_eq!(peers[2].expect_line(30 * SEC), took);
    let t: u64 = took
        .trim_start_matches("took Some(")
        .trim_end_matches(')')
        .parse()
        .unwrap();
    let victim = peers.remove(3);
    victim.kill9();
    let then = peers[2].expect_line(30 * SEC);
    assert!(then.starts_with("then error"), "{then}");
    let mut states = String::new();
    for (r, p) in peers.iter_mut().take(2).enumerate() {
        assert_eq!(p.expect_line(30 * SEC), "in");
        let ran = p.expect_line(30 * SEC);
        assert!(ran.contains(&format!("{t}")), "{ran}");
        if r == 0 {
            states = p.expect_line(30 * SEC);
        }
    }
    assert_eq!(states, format!("states {}", ["Some(Done)"; 12].join(",")));
}

#[test]
fn a_pool_rank_0_cannot_make_fails_on_every_rank_at_once() {
    let at = format!("127.0.0.1:{}", free_port());
    let file = std::env::temp_dir().join(format!("shoal-batch-refused-{}", std::process::id()));
    std::fs::write(&file, "not a directory").unwrap();
    let args = [file.display().to_string()];
    let mut peers: Vec<Peer> = (0..3)
        .map(|r| rank("batch-refused", r, 3, &at, None, &args))
        .collect();
    for (r, p) in peers.iter_mut().enumerate() {
        let _ = p.expect_line(30 * SEC); // who it is
        let line = p.expect_line(30 * SEC);
        let ms: u64 = line
            .strip_prefix("refused ")
            .and_then(|l| l.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("rank {r}: {line}"));
        println!("rank {r}: {line}");
        // Well within the group's 30 s timeout.
        assert!(ms < 10_000, "rank {r} learned after {ms} ms: {line}");
        if r == 0 {
            assert!(line.contains(&file.display().to_string()), "{line}");
        } else {
            assert!(line.contains("rank 0 could not make the pool"), "{line}");
        }
    }
    all_done(peers);
    let _ = std::fs::remove_file(&file);
}

#[test]
fn an_array_its_host_cannot_hold_fails_on_every_rank_at_once() {
    // Four times what /dev/shm can hold (a tmpfs refuses it at once).
    let Some(size) = shoal_shm_ring::dev_shm_size() else {
        println!("skipped: /dev/shm reports no size limit (an unlimited tmpfs would try to allocate the array)");
        return;
    };
    let elems = (4 * size / 8).to_string();
    let at = format!("127.0.0.1:{}", free_port());
    let mut peers: Vec<Peer> = (0..3)
        .map(|r| {
            rank(
                "array-refused",
                r,
                3,
                &at,
                None,
                std::slice::from_ref(&elems),
            )
        })
        .collect();
    for (r, p) in peers.iter_mut().enumerate() {
        let _ = p.expect_line(30 * SEC); // who it is
        let line = p.expect_line(30 * SEC);
        println!("rank {r}: {line}");
        let ms: u64 = line
            .strip_prefix("refused ")
            .and_then(|l| l.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("rank {r}: {line}"));
        assert!(ms < 10_000, "rank {r} learned after {ms} ms: {line}");
        if r != 0 {
            assert!(line.contains("rank 0 could not make"), "{line}");
        }
    }
    // The group still works: the barrier after the refusal passed.
    all_done(peers);
}

#[test]
fn a_lock_waiter_that_gave_up_holds_nobody_up() {
    let at = format!("127.0.0.1:{}", free_port());
    let r0 = rank("abandon", 0, 2, &at, None, &[]);
    let mut r1 = rank("abandon", 1, 2, &at, None, &[]);
    r1.expect_line(30 * SEC);
    assert_eq!(r1.expect_line(30 * SEC), "waited: gave up");
    assert_eq!(r1.expect_line(30 * SEC), "then try: got it");
    all_done(vec![r0, r1]);
}

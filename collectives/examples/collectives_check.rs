//! Every collective, checked, in whatever group the launcher made: run it
//! alone, under `cargo xtask run -n 4 [--hosts 2]`, under `mpirun`, or
//! with torchrun's variables, unchanged. Each rank prints what it did;
//! rank 0 prints a last line `collectives check: ok ...`. Exits non-zero
//! if anything is not as it should be.
//!
//! ```text
//! cargo build -p shoal-collectives --example collectives_check
//! cargo xtask run -n 4 -- target/debug/examples/collectives_check
//! mpirun -n 4 target/debug/examples/collectives_check
//! ```

use shoal_collectives::{Batch, BatchOptions, Group, GroupOptions, SharedArray, TaskState};
use std::time::{Duration, Instant};

type Check = Result<(), String>;

fn fail(what: &str) -> impl Fn(shoal_collectives::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

fn collectives(g: &Group) -> Check {
    let t0 = Instant::now();
    for _ in 0..100 {
        g.barrier().map_err(fail("barrier"))?;
    }
    let per = t0.elapsed() / 100;
    let word = format!("hello from rank 0 of {}", g.size());
    let v = g
        .broadcast(0, (g.rank() == 0).then_some(&word))
        .map_err(fail("broadcast"))?;
    if v.get().as_str() != word {
        return Err(format!("broadcast gave {:?}", v.get().as_str()));
    }
    let big: Vec<u64> = (0..(1 << 17)).collect();
    let last = g.size() - 1;
    let v = g
        .broadcast(last, (g.rank() == last).then_some(&big))
        .map_err(fail("broadcast 1 MiB"))?;
    if v.get().len() != big.len() || v.get()[12345] != 12345 {
        return Err("broadcast of 1 MiB differs".into());
    }
    let all = g.all_gather(&g.rank()).map_err(fail("all_gather"))?;
    if all
        .iter()
        .enumerate()
        .any(|(r, v)| v.get().to_native() != r as u32)
    {
        return Err("all_gather out of order".into());
    }
    let halves = g.split(g.rank() % 2, 0).map_err(fail("split"))?;
    halves.barrier().map_err(fail("sub-group barrier"))?;
    println!(
        "rank {}: barrier {per:?} each, broadcast, all_gather, split into {} ranks: ok",
        g.rank(),
        halves.size()
    );
    Ok(())
}

fn lock(g: &Group, file: &std::path::Path) -> Check {
    let lock = g.lock("check").map_err(fail("lock"))?;
    let mut in_order = true;
    for _ in 0..200 {
        let guard = lock.lock().map_err(fail("lock"))?;
        let n: u64 = std::fs::read_to_string(file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        std::fs::write(file, (n + 1).to_string()).map_err(|e| e.to_string())?;
        in_order &= guard.ticket() == guard.turn();
    }
    drop(lock);
    g.barrier().map_err(fail("barrier"))?;
    let n: u64 = std::fs::read_to_string(file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    if n != 200 * u64::from(g.size()) || !in_order {
        return Err(format!(
            "lock: counter {n}, grants in request order: {in_order}"
        ));
    }
    println!(
        "rank {}: lock: counter {n}, grants in request order",
        g.rank()
    );
    Ok(())
}

fn array(g: &Group) -> Check {
    let a = SharedArray::<f64>::new(g, &[100, 100]).map_err(fail("array"))?;
    let block: Vec<f64> = (0..30).map(|i| i as f64 * 0.5).collect();
    let from = g.size() / 2;
    a.set(
        (g.rank() == from).then_some(&block[..]),
        &[3, 10],
        &[97, 90],
        from,
    )
    .map_err(fail("array set"))?;
    let r = a.read();
    if r[a.index(&[99, 99]).map_err(fail("index"))?] != 14.5 || r[0] != 0.0 {
        return Err("array: the block is not where it was set".into());
    }
    println!(
        "rank {}: shared array set from rank {from}, read back",
        g.rank()
    );
    Ok(())
}

fn batch(g: &Group, dir: &std::path::Path) -> Check {
    let k = if g.size() >= 2 { 2 } else { 1 };
    let o = BatchOptions::default().state_dir(dir);
    let mut b = Batch::new(g, 25, k, &o).map_err(fail("batch"))?;
    let mut ran = 0;
    while b.next_task().map_err(fail("next_task"))?.is_some() {
        ran += 1;
    }
    let states = b.finish_all().map_err(fail("batch"))?;
    println!(
        "rank {}: batch: worker group {} ran {ran} tasks",
        g.rank(),
        b.worker_index()
    );
    if let Some(s) = states {
        if s.iter().any(|x| *x != TaskState::Done) {
            return Err(format!("batch states {s:?}"));
        }
        // The state files say so (the hosts here share a file system).
        for t in 0..25 {
            let f = dir.join(format!("task-{t}"));
            match std::fs::read_to_string(&f) {
                Ok(s) if s == "done" => {}
                other => return Err(format!("batch: {} says {other:?}", f.display())),
            }
        }
    }
    // A second run over the same state files does nothing.
    let mut again = Batch::new(g, 25, k, &o).map_err(fail("second batch"))?;
    let mut ran_again = 0;
    while again
        .next_task()
        .map_err(fail("second next_task"))?
        .is_some()
    {
        ran_again += 1;
    }
    again.finish_all().map_err(fail("second batch"))?;
    if ran_again != 0 {
        return Err(format!("batch: a second run ran {ran_again} tasks"));
    }
    println!(
        "rank {}: batch: the state files say every task is done; a second run ran none",
        g.rank()
    );
    Ok(())
}

fn main() {
    let opts = GroupOptions::default().timeout(Duration::from_secs(60));
    let g = match Group::from_env_with(&opts) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("collectives check: no group: {e}");
            std::process::exit(2);
        }
    };
    // A scratch directory every rank sees (hosts here share a file
    // system): named by the rendezvous, cleared by rank 0.
    let job = g.broadcast(0, (g.rank() == 0).then_some(&std::process::id()));
    let job = match job {
        Ok(j) => j,
        Err(e) => {
            eprintln!("collectives check: rank {}: broadcast: {e}", g.rank());
            std::process::exit(1);
        }
    };
    let dir = std::env::temp_dir().join(format!("shoal-check-{}", job.get().to_native()));
    if g.rank() == 0 {
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::create_dir_all(&dir);
    }
    let r = g
        .barrier()
        .map_err(fail("barrier"))
        .and_then(|()| collectives(&g))
        .and_then(|()| lock(&g, &dir.join("counter")))
        .and_then(|()| array(&g))
        .and_then(|()| batch(&g, &dir.join("tasks")))
        .and_then(|()| g.barrier().map_err(fail("last barrier")));
    match r {
        Ok(()) => {
            if g.rank() == 0 {
                let _ = std::fs::remove_dir_all(&dir);
                println!(
                    "collectives check: ok ({} ranks on {} hosts)",
                    g.size(),
                    g.nodes()
                );
            }
        }
        Err(e) => {
            eprintln!("collectives check: rank {}: {e}", g.rank());
            std::process::exit(1);
        }
    }
}

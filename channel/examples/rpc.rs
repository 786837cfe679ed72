//! An Rpc fan-out to 3 worker processes, one of them killed mid-run: the
//! caller sends each request to every worker and collects every reply;
//! after worker 1 is killed with SIGKILL, the next call names it dead
//! (at once, not after the call timeout) with the survivors' replies,
//! and later calls go on with the two survivors. A worker's failure
//! status comes back as such.
//!
//! Run: `cargo run --release -p shoal-channel --example rpc`

use shoal_channel::{Error, Handle, Rpc, RpcOptions, RpcWorker};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WORKERS: u32 = 3;

fn worker(handle: &Handle, index: u32) -> Result<(), Error> {
    let mut w = RpcWorker::attach(handle, index)?;
    println!("attached");
    w.serve(|req| {
        let text = String::from_utf8_lossy(req);
        if let Some(n) = text.strip_prefix("sum ") {
            let n: u64 = n
                .parse()
                .map_err(|e| format!("bad request {text:?}: {e}"))?;
            // Each worker sums its share of 0..n.
            let share: u64 = (0..n)
                .filter(|k| k % u64::from(WORKERS) == u64::from(index))
                .sum();
            Ok(share.to_le_bytes().to_vec())
        } else {
            Err(format!("worker {index} does not know {text:?}"))
        }
    })?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if let [_, role, handle, index] = &args[..] {
        if role != "worker" {
            return Err("unknown role".into());
        }
        worker(&handle.parse()?, index.parse()?)?;
        return Ok(());
    }
    let mut rpc = Rpc::create(&RpcOptions::new(WORKERS).call_timeout(Duration::from_secs(10)))?;
    let handle = rpc.handle().to_string();
    let exe = std::env::current_exe()?;
    let mut workers = Vec::new();
    for i in 0..WORKERS {
        let mut child = Command::new(&exe)
            .args(["worker", &handle, &i.to_string()])
            .stdout(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        if let Some(out) = child.stdout.as_mut() {
            BufReader::new(out).read_line(&mut line)?;
        }
        if line.trim() != "attached" {
            return Err(format!("worker {i} did not attach").into());
        }
        workers.push(child);
    }
    rpc.wait_until_ready(Duration::from_secs(10))?;
    println!("{WORKERS} worker processes attached");
    let sum = |replies: &[shoal_channel::Reply]| -> Result<u64, Error> {
        replies.iter().try_fold(0u64, |acc, r| {
            let b: [u8; 8] = r.ok()?.try_into().map_err(|_| Error::Malformed {
                what: "a share that is not 8 bytes",
                len: 0,
            })?;
            Ok(acc + u64::from_le_bytes(b))
        })
    };
    for n in [10u64, 1000, 100_000] {
        let replies = rpc.call(format!("sum {n}").as_bytes())?;
        println!(
            "sum of 0..{n} = {} from workers {:?}",
            sum(&replies)?,
            replies.iter().map(|r| r.worker.index).collect::<Vec<_>>()
        );
    }
    let replies = rpc.call(b"dance")?;
    for r in &replies {
        if let Err(status) = &r.result {
            println!("worker {} failed: {status}", r.worker.index);
        }
    }
    let mut victim = workers.remove(1);
    // SAFETY: a signal to our own child's pid; no memory is touched.
    unsafe { libc::kill(victim.id() as i32, libc::SIGKILL) };
    victim.wait()?;
    println!("killed worker 1 (pid {}) with SIGKILL", victim.id());
    let t = Instant::now();
    match rpc.call(b"sum 1000") {
        Err(Error::NoReply {
            missing, replies, ..
        }) => {
            println!(
                "the next call failed after {:?}: {} (the survivors answered: partial sum {})",
                t.elapsed(),
                Error::NoReply {
                    missing: missing.clone(),
                    replies: Vec::new(),
                    after: t.elapsed()
                },
                sum(&replies)?
            );
            if !(missing.len() == 1 && missing[0].index == 1 && missing[0].dead) {
                return Err("the dead worker was not named".into());
            }
        }
        Ok(_) => return Err("a call answered by a dead worker".into()),
        Err(e) => return Err(e.into()),
    }
    let replies = rpc.call(b"sum 1000")?;
    println!(
        "later calls go to workers {:?} (dead: {:?})",
        replies.iter().map(|r| r.worker.index).collect::<Vec<_>>(),
        rpc.dead_workers()
    );
    drop(rpc);
    for mut w in workers {
        if !w.wait()?.success() {
            return Err("a surviving worker failed".into());
        }
    }
    println!("the survivors' serve loops ended when the caller dropped its Rpc");
    Ok(())
}

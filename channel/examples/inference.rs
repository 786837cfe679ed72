//! An inference server's step loop across processes: a scheduler
//! broadcasts each step's inputs (mixed sizes, 1 KiB to 2 MiB, as rkyv
//! archives serialized straight into shared memory) to 4 worker
//! processes and gathers their outputs. Workers read the inputs in place
//! (no copy, no deserialization) and keep step i's inputs held while they
//! receive step i+1 (as a worker keeps what the next step builds on).
//! Large steps travel in overflow segments, never through a socket.
//!
//! Run: `cargo run --release -p shoal-channel --example inference`

use shoal_channel::{
    Broadcast, BroadcastOptions, BroadcastReceiver, Error, Gather, GatherWriter, Handle,
    QueueOptions, Received,
};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WORKERS: u32 = 4;
const STEPS: u64 = 300;
/// Step input sizes, cycled (bytes of tokens).
const SIZES: [usize; 7] = [
    1 << 10,
    16 << 10,
    256 << 10,
    2 << 20,
    4 << 10,
    64 << 10,
    1 << 20,
];

#[derive(rkyv::Archive, rkyv::Serialize)]
struct Step {
    n: u64,
    tokens: Vec<u32>,
}

#[derive(rkyv::Archive, rkyv::Serialize)]
struct Output {
    step: u64,
    worker: u32,
    /// What the worker computed from the step's tokens.
    checksum: u64,
    /// The tokens of the step before, still held in place.
    previous_len: u64,
}

fn checksum(tokens: impl Iterator<Item = u32>) -> u64 {
    tokens.fold(0u64, |h, t| h.rotate_left(5) ^ u64::from(t))
}

fn step_tokens(n: u64) -> Vec<u32> {
    let len = SIZES[(n % SIZES.len() as u64) as usize] / 4;
    (0..len as u32).map(|k| k ^ (n as u32)).collect()
}

fn worker(inputs: &Handle, outputs: &Handle, index: u32) -> Result<(), Error> {
    let opts = BroadcastOptions::new(WORKERS);
    let mut steps = BroadcastReceiver::attach_with(inputs, index, &opts)?;
    let mut out = GatherWriter::attach(outputs, index)?;
    println!("attached");
    let mut previous: Option<Received> = None;
    loop {
        let received = match steps.recv() {
            Ok(r) => r,
            // The scheduler is done.
            Err(Error::Ring(shoal_shm_ring::Error::Closed)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let step = received.archived::<Step>()?;
        let previous_len = match &previous {
            Some(p) => p.archived::<Step>()?.tokens.len() as u64,
            None => 0,
        };
        out.send_value(&Output {
            step: step.n.to_native(),
            worker: index,
            checksum: checksum(step.tokens.iter().map(|t| t.to_native())),
            previous_len,
        })?;
        // Step i goes back to the ring now; step i+1 stays held.
        previous = Some(received);
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if let [_, role, inputs, outputs, index] = &args[..] {
        if role != "worker" {
            return Err("unknown role".into());
        }
        worker(&inputs.parse()?, &outputs.parse()?, index.parse()?)?;
        return Ok(());
    }
    let mut steps = Broadcast::create(&BroadcastOptions::new(WORKERS).capacity(8 << 20))?;
    let mut outputs = Gather::create(
        &QueueOptions::default()
            .peers(WORKERS, 1)
            .take_timeout(Some(Duration::from_secs(30))),
    )?;
    let exe = std::env::current_exe()?;
    let mut workers = Vec::new();
    for i in 0..WORKERS {
        let mut child = Command::new(&exe)
            .args([
                "worker".to_string(),
                steps.handle().to_string(),
                outputs.handle().to_string(),
                i.to_string(),
            ])
            .stdout(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        if let Some(o) = child.stdout.as_mut() {
            BufReader::new(o).read_line(&mut line)?;
        }
        if line.trim() != "attached" {
            return Err(format!("worker {i} did not attach").into());
        }
        workers.push(child);
    }
    steps.wait_until_ready(Duration::from_secs(10))?;
    println!("{WORKERS} worker processes ready; {STEPS} steps of 1 KiB to 2 MiB inputs");
    let start = Instant::now();
    let (mut bytes, mut latencies) = (0u64, Vec::new());
    for n in 0..STEPS {
        let step = Step {
            n,
            tokens: step_tokens(n),
        };
        let expected = checksum(step.tokens.iter().copied());
        let t = Instant::now();
        steps.send_value(&step)?;
        bytes += (step.tokens.len() * 4) as u64;
        let mut seen = [false; WORKERS as usize];
        for _ in 0..WORKERS {
            let Some(got) = outputs.recv()? else {
                return Err("the outputs ended early".into());
            };
            let o = got.archived::<Output>()?;
            let w = o.worker.to_native();
            if o.step != n || o.checksum != expected || w != got.sender().index {
                return Err(format!("step {n}: a wrong output from worker {w}").into());
            }
            let prev = if n == 0 {
                0
            } else {
                step_tokens(n - 1).len() as u64
            };
            if o.previous_len != prev {
                return Err(format!("step {n}: worker {w} lost the step before").into());
            }
            seen[w as usize] = true;
        }
        if seen.contains(&false) {
            return Err(format!("step {n}: an output missing").into());
        }
        latencies.push(t.elapsed());
    }
    let took = start.elapsed();
    latencies.sort();
    println!(
        "{STEPS} steps, {:.1} MiB broadcast to each of {WORKERS} workers in {took:.2?}: {:.0} steps/s, {:.2} GiB/s per worker; step round trip median {:?}, max {:?}",
        bytes as f64 / (1 << 20) as f64,
        STEPS as f64 / took.as_secs_f64(),
        bytes as f64 / (1u64 << 30) as f64 / took.as_secs_f64(),
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1],
    );
    println!(
        "every worker's output checked: right step, right checksum, the step before still held"
    );
    drop(steps);
    for mut w in workers {
        if !w.wait()?.success() {
            return Err("a worker failed".into());
        }
    }
    println!("workers exited when the scheduler closed the broadcast");
    Ok(())
}

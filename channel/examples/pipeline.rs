//! A producers/consumers pipeline across processes, ended by claim/close
//! termination: the parent creates a WorkQueue and starts 3 producer
//! processes (each claims its share of jobs, then puts them) and 2
//! consumer processes (each takes jobs until `take` returns `None`). The
//! parent closes the queue once every producer has claimed; nobody
//! guesses when the work is over.
//!
//! Run: `cargo run --release -p shoal-channel --example pipeline`

use shoal_channel::{Consumer, Handle, Producer, QueueOptions, WorkQueue};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const PRODUCERS: u64 = 3;
const JOBS_EACH: u64 = 10_000;

#[derive(rkyv::Archive, rkyv::Serialize)]
struct Job {
    producer: u64,
    n: u64,
    input: Vec<u32>,
}

fn producer(handle: &Handle, id: u64) -> Result<(), shoal_channel::Error> {
    let mut p = Producer::attach(handle)?;
    p.claim(JOBS_EACH)?;
    println!("claimed");
    for n in 0..JOBS_EACH {
        let input = (0..(n % 64) as u32).collect();
        p.put_value(&Job {
            producer: id,
            n,
            input,
        })?;
    }
    Ok(())
}

fn consumer(handle: &Handle) -> Result<(), shoal_channel::Error> {
    let mut c = Consumer::attach(handle)?;
    let (mut jobs, mut sum) = (0u64, 0u64);
    while let Some(taken) = c.take()? {
        let job = taken.archived::<Job>()?;
        sum += job
            .input
            .iter()
            .map(|v| u64::from(v.to_native()))
            .sum::<u64>();
        jobs += 1;
    }
    println!("{jobs} {sum}");
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if let [_, role, handle, rest @ ..] = &args[..] {
        let handle: Handle = handle.parse()?;
        match (role.as_str(), rest) {
            ("producer", [id]) => producer(&handle, id.parse()?)?,
            ("consumer", []) => consumer(&handle)?,
            _ => return Err("unknown role".into()),
        }
        return Ok(());
    }
    let queue = WorkQueue::create(&QueueOptions::default())?;
    let handle = queue.handle().to_string();
    let exe = std::env::current_exe()?;
    let start = |args: &[String]| Command::new(&exe).args(args).stdout(Stdio::piped()).spawn();
    let consumers: Vec<_> = (0..2)
        .map(|_| start(&["consumer".into(), handle.clone()]))
        .collect::<Result<_, _>>()?;
    let mut producers: Vec<_> = (0..PRODUCERS)
        .map(|id| start(&["producer".into(), handle.clone(), id.to_string()]))
        .collect::<Result<_, _>>()?;
    for p in &mut producers {
        let mut line = String::new();
        if let Some(out) = p.stdout.as_mut() {
            BufReader::new(out).read_line(&mut line)?;
        }
        if line.trim() != "claimed" {
            return Err("a producer did not claim its jobs".into());
        }
    }
    println!("{PRODUCERS} producer processes claimed {JOBS_EACH} jobs each; closing the queue");
    queue.producer()?.close()?;
    for mut p in producers {
        if !p.wait()?.success() {
            return Err("a producer failed".into());
        }
    }
    let (mut jobs, mut sum) = (0u64, 0u64);
    for (i, c) in consumers.into_iter().enumerate() {
        let out = c.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut it = text.split_whitespace().map(str::parse::<u64>);
        let (Some(Ok(j)), Some(Ok(s))) = (it.next(), it.next()) else {
            return Err(format!("consumer {i} said {text:?}").into());
        };
        println!("consumer process {i}: {j} jobs, then take() returned None");
        jobs += j;
        sum += s;
    }
    let expected: u64 = PRODUCERS
        * (0..JOBS_EACH)
            .map(|n| (0..n % 64).sum::<u64>())
            .sum::<u64>();
    println!("{jobs} jobs taken in all, each once (input sum {sum}, expected {expected})");
    if jobs != PRODUCERS * JOBS_EACH || sum != expected {
        return Err("jobs lost or taken twice".into());
    }
    Ok(())
}

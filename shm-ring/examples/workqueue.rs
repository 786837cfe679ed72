//! A work queue on the MPMC ring: producers in one process, consumers in others.
//!
//! The parent creates an [`MpmcRing`], re-executes its own binary as
//! `workqueue consumer <handle> <id>` twice, and produces jobs from two
//! producer threads (a few jobs larger than the ring's inline limit travel in
//! overflow segments). Each job carries its producer, its sequence number and
//! a checksum, written in place with `reserve`/`commit`. Consumers verify
//! every job in place, check that each producer's jobs reach them in order,
//! and report how many they took. After the producers finish, the parent
//! closes the ring with [`MpmcProducer::close_ring`]; consumers drain it and
//! get [`Error::Closed`]. The parent checks that every job was taken exactly
//! once (count and sum of job ids) and exits non-zero otherwise.
//!
//! ```text
//! cargo run --release -p shoal-shm-ring --example workqueue [JOBS]
//! ```

use shoal_shm_ring::{Error, Handle, MpmcConfig, MpmcConsumer, MpmcProducer, MpmcRing, Wait};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

type BoxResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const DEFAULT_JOBS: u64 = 50_000;
const PRODUCERS: u32 = 2;
const CONSUMERS: u32 = 2;
/// 256 KiB ring: jobs above ~128 KiB travel in overflow segments.
const CAPACITY: u64 = 1 << 18;
/// Producer id (u32), sequence number (u32), checksum of the body (u64).
const PREFIX: usize = 16;

fn main() -> BoxResult<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("consumer") {
        return consumer_main(&args[1..]);
    }
    let jobs: u64 = match args.first() {
        Some(s) => s.parse().map_err(|_| format!("bad job count {s:?}"))?,
        None => DEFAULT_JOBS,
    };
    parent_main(jobs)
}

/// Kills and reaps the children still held when dropped (error paths).
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The id of job `seq` of producer `p`, as consumers sum it.
fn job_id(p: u32, seq: u32) -> u64 {
    (u64::from(p) << 32) | u64::from(seq)
}

fn parent_main(jobs: u64) -> BoxResult<()> {
    let ring = MpmcRing::create(
        &MpmcConfig::new(CAPACITY, PRODUCERS, CONSUMERS).payload_format(b"example-workqueue-v1"),
    )?;
    let handle = ring.handle();
    println!(
        "parent pid {}: ring {handle}, capacity {CAPACITY} B, {PRODUCERS} producer threads, {CONSUMERS} consumer processes, {jobs} jobs",
        std::process::id()
    );

    let exe = std::env::current_exe()?;
    let mut children = Children(Vec::new());
    for id in 0..CONSUMERS {
        let child = Command::new(&exe)
            .arg("consumer")
            .arg(handle.to_string())
            .arg(id.to_string())
            .stdout(Stdio::piped())
            .spawn()?;
        children.0.push(child);
    }

    // Split the jobs between the producers; each numbers its own from 0.
    let per: Vec<u32> = (0..PRODUCERS)
        .map(|p| {
            (jobs / u64::from(PRODUCERS) + u64::from(u64::from(p) < jobs % u64::from(PRODUCERS)))
                as u32
        })
        .collect();
    let mut producers = Vec::new();
    for _ in 0..PRODUCERS {
        producers.push(ring.producer()?);
    }
    let t0 = Instant::now();
    let results: Vec<BoxResult<(MpmcProducer, u64)>> = std::thread::scope(|s| {
        let threads: Vec<_> = producers
            .into_iter()
            .enumerate()
            .map(|(p, prod)| {
                let n = per[p];
                s.spawn(move || produce(prod, p as u32, n))
            })
            .collect();
        threads
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err("producer thread panicked".into()))
            })
            .collect()
    });
    let mut producers = Vec::new();
    let mut overflow = 0;
    for r in results {
        let (prod, ov) = r?;
        overflow += ov;
        producers.push(prod);
    }
    let produce_time = t0.elapsed();
    // Every job is committed: close the ring; consumers drain, then see Closed.
    producers[0].close_ring();
    drop(producers);
    println!(
        "parent: produced {jobs} jobs ({overflow} overflow) in {:.3} s ({:.0} jobs/s), ring closed",
        produce_time.as_secs_f64(),
        jobs as f64 / produce_time.as_secs_f64()
    );

    let expect_sum = (0..PRODUCERS).fold(0u64, |acc, p| {
        (0..per[p as usize]).fold(acc, |a, seq| a.wrapping_add(job_id(p, seq)))
    });
    let mut taken = 0u64;
    let mut sum = 0u64;
    let mut failed = 0;
    for (id, child) in std::mem::take(&mut children.0).into_iter().enumerate() {
        let out = child.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        print!("{text}");
        let field = |key: &str| {
            text.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .and_then(|n| n.parse::<u64>().ok())
        };
        match (out.status.success(), field("taken="), field("sum=")) {
            (true, Some(t), Some(s)) => {
                taken += t;
                sum = sum.wrapping_add(s);
            }
            _ => {
                eprintln!("consumer {id}: FAILED ({})", out.status);
                failed += 1;
            }
        }
    }
    drop(ring);
    let exact = failed == 0 && taken == jobs && sum == expect_sum;
    println!(
        "summary: consumers took {taken} of {jobs} jobs (id sum {}), {} in {:.3} s total",
        if sum == expect_sum {
            "matches"
        } else {
            "DIFFERS"
        },
        if exact {
            "each exactly once"
        } else {
            "MISMATCH"
        },
        t0.elapsed().as_secs_f64()
    );
    if !exact {
        return Err(format!("took {taken} jobs of {jobs}, {failed} consumers failed").into());
    }
    Ok(())
}

/// Producer thread: sends `n` jobs numbered 0..n, returns its endpoint and
/// how many jobs went through overflow segments.
fn produce(mut prod: MpmcProducer, p: u32, n: u32) -> BoxResult<(MpmcProducer, u64)> {
    let max_inline = prod.max_inline();
    let mut overflow = 0;
    for seq in 0..n {
        let len = job_len(p, seq, max_inline);
        // Bounded: if every consumer died, fail instead of waiting forever.
        let mut r = prod
            .reserve_with(len, Wait::timeout(Duration::from_secs(10)))
            .map_err(|e| format!("producer {p}: job {seq}: {e}"))?;
        fill_job(&mut r, p, seq);
        r.commit(len)
            .map_err(|e| format!("producer {p}: commit of job {seq}: {e}"))?;
        overflow += u64::from(len > max_inline);
    }
    Ok((prod, overflow))
}

fn consumer_main(args: &[String]) -> BoxResult<()> {
    let [handle, id] = args else {
        return Err("usage: workqueue consumer <handle> <id>".into());
    };
    let handle: Handle = handle.parse()?;
    let mut consumer = MpmcConsumer::attach(&handle)?;
    let mut taken = 0u64;
    let mut sum = 0u64;
    let mut bytes = 0u64;
    let mut big = 0u64;
    // Next sequence number this consumer may see from each producer (jobs of
    // one producer are taken in reservation order).
    let mut next = [0u32; PRODUCERS as usize];
    let mut per = [0u64; PRODUCERS as usize];
    loop {
        let job = match consumer.take() {
            Ok(j) => j,
            Err(Error::Closed) => break,
            Err(e) => return Err(format!("consumer {id}: after {taken} jobs: {e}").into()),
        };
        // Verify in place: `job` derefs to the bytes in shared memory.
        let (p, seq) = check_job(&job).map_err(|e| format!("consumer {id}: {e}"))?;
        let slot = &mut next[p as usize];
        if seq < *slot {
            return Err(format!(
                "consumer {id}: producer {p} job {seq} after job {}",
                *slot - 1
            )
            .into());
        }
        *slot = seq + 1;
        per[p as usize] += 1;
        taken += 1;
        bytes += job.len() as u64;
        big += u64::from(job.len() > 64 * 1024);
        sum = sum.wrapping_add(job_id(p, seq));
    }
    println!(
        "consumer {id} pid {}: taken={taken} sum={sum} per-producer={per:?} overflow={big} bytes={bytes}",
        std::process::id()
    );
    Ok(())
}

/// A cheap 64-bit mixer (splitmix64 finalizer).
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Job sizes: mostly 16..528 bytes; job 1234 of every 10 000 of a producer
/// is larger than the inline limit and travels in an overflow segment.
fn job_len(p: u32, seq: u32, max_inline: usize) -> usize {
    let r = mix(job_id(p, seq));
    if seq % 10_000 == 1_234 {
        max_inline + 1 + (r % 4096) as usize
    } else {
        PREFIX + (r % 513) as usize
    }
}

fn fill_job(buf: &mut [u8], p: u32, seq: u32) {
    let (head, body) = buf.split_at_mut(PREFIX);
    let mut s = mix(job_id(p, seq) ^ 0x5eed);
    let mut chunks = body.chunks_exact_mut(8);
    for c in &mut chunks {
        s = mix(s);
        c.copy_from_slice(&s.to_le_bytes());
    }
    let rest = chunks.into_remainder();
    let tail = mix(s).to_le_bytes();
    rest.copy_from_slice(&tail[..rest.len()]);
    head[..4].copy_from_slice(&p.to_le_bytes());
    head[4..8].copy_from_slice(&seq.to_le_bytes());
    head[8..].copy_from_slice(&checksum(body).to_le_bytes());
}

/// Word-at-a-time checksum of `bytes`.
fn checksum(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ bytes.len() as u64;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
        h = (h ^ w).wrapping_mul(0x0000_0100_0000_01b3).rotate_left(29);
    }
    for &b in chunks.remainder() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Checks a job's checksum; returns its producer and sequence number.
fn check_job(job: &[u8]) -> Result<(u32, u32), String> {
    if job.len() < PREFIX {
        return Err(format!(
            "job of {} bytes is shorter than its prefix",
            job.len()
        ));
    }
    let p = u32::from_le_bytes(job[..4].try_into().unwrap_or([0; 4]));
    let seq = u32::from_le_bytes(job[4..8].try_into().unwrap_or([0; 4]));
    if p >= PRODUCERS {
        return Err(format!("job names producer {p}"));
    }
    let sum = u64::from_le_bytes(job[8..16].try_into().unwrap_or([0; 8]));
    let got = checksum(&job[PREFIX..]);
    if sum != got {
        return Err(format!(
            "producer {p} job {seq}: checksum {got:#018x}, header says {sum:#018x}"
        ));
    }
    Ok((p, seq))
}

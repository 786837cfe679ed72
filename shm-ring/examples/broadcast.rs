//! One writer, N reader *processes* on a broadcast ring.
//!
//! The parent creates a [`BroadcastWriter`], re-executes its own binary as
//! `broadcast reader <handle> <id> <records> <max_inline> <overflow_last>` once per reader, waits until
//! every reader is active, and sends records of varying sizes (a few larger
//! than [`BroadcastWriter::max_inline`], which travel in overflow segments),
//! each written in place with `reserve`/`commit` and carrying its sequence
//! number and a checksum. Every reader checks order, length and checksum in
//! place through the read guard (zero-copy) and prints what it received.
//! Dropping the writer closes the ring: readers drain, then get
//! [`Error::Closed`]. The parent exits non-zero if any reader failed.
//!
//! ```text
//! cargo run --release -p shoal-shm-ring --example broadcast [READERS] [RECORDS] [--overflow-last]
//! ```
//!
//! `--overflow-last` makes the very last record an overflow record, so the
//! writer closes while readers may not have opened its segment yet: a check
//! that closing the ring does not take committed overflow records away.

use shoal_shm_ring::{BroadcastConfig, BroadcastReader, BroadcastWriter, Error, Handle, Wait};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

const DEFAULT_READERS: u32 = 3;
const DEFAULT_RECORDS: u64 = 100_000;
/// 1 MiB ring: records above ~512 KiB go through overflow segments.
const CAPACITY: u64 = 1 << 20;
/// Every record starts with its sequence number and the checksum of the rest.
const PREFIX: usize = 16;

fn main() -> BoxResult<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("reader") {
        return reader_main(&args[1..]);
    }
    let overflow_last = args.iter().any(|a| a == "--overflow-last");
    let mut numbers = args.iter().filter(|a| !a.starts_with("--"));
    let readers: u32 = match numbers.next() {
        Some(s) => s.parse().map_err(|_| format!("bad reader count {s:?}"))?,
        None => DEFAULT_READERS,
    };
    let records: u64 = match numbers.next() {
        Some(s) => s.parse().map_err(|_| format!("bad record count {s:?}"))?,
        None => DEFAULT_RECORDS,
    };
    writer_main(readers, records, overflow_last)
}

/// What the stream looks like; the writer and every reader derive each
/// record's length from it.
#[derive(Debug, Clone, Copy)]
struct Plan {
    records: u64,
    max_inline: usize,
    overflow_last: bool,
}

impl Plan {
    /// The length of record `seq`: mostly 16..1040 bytes; record 1234 of
    /// every 10 000 is exactly `max_inline` (the largest inline record), and
    /// record 4321 of every 10 000 is larger (an overflow record), as is the
    /// last one with `--overflow-last`.
    fn record_len(&self, seq: u64) -> usize {
        let overflow = self.max_inline + 1 + (mix(seq) % 65_536) as usize;
        if self.overflow_last && seq + 1 == self.records {
            return overflow;
        }
        match seq % 10_000 {
            1_234 => self.max_inline,
            4_321 => overflow,
            _ => PREFIX + (mix(seq) % 1_025) as usize,
        }
    }
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

fn writer_main(readers: u32, records: u64, overflow_last: bool) -> BoxResult<()> {
    let mut writer = BroadcastWriter::create(
        &BroadcastConfig::new(CAPACITY, readers).payload_format(b"example-broadcast-v1"),
    )?;
    let handle = writer.handle();
    let max_inline = writer.max_inline();
    let plan = Plan {
        records,
        max_inline,
        overflow_last,
    };
    println!(
        "writer pid {}: ring {handle}, capacity {CAPACITY} B, max inline payload {max_inline} B, {readers} readers, {records} records",
        std::process::id()
    );

    let exe = std::env::current_exe()?;
    let mut children = Children(Vec::new());
    for id in 0..readers {
        let child = Command::new(&exe)
            .arg("reader")
            .arg(handle.to_string())
            .arg(id.to_string())
            .arg(records.to_string())
            .arg(max_inline.to_string())
            .arg(u8::from(overflow_last).to_string())
            .stdout(Stdio::piped())
            .spawn()?;
        children.0.push(child);
    }

    let active = writer.wait_for_readers(readers, Wait::timeout(Duration::from_secs(10)))?;
    println!("writer: {active} readers active, sending");

    let t0 = Instant::now();
    let mut bytes = 0u64;
    let mut overflow = 0u64;
    for seq in 0..records {
        let len = plan.record_len(seq);
        let mut r = writer.reserve(len)?;
        fill_record(&mut r, seq);
        r.commit(len)?;
        bytes += len as u64;
        overflow += u64::from(len > max_inline);
    }
    let send_time = t0.elapsed();
    // Dropping the writer closes the ring: readers drain, then see Closed.
    drop(writer);
    println!(
        "writer: sent {records} records ({overflow} overflow), {:.1} MiB in {:.3} s ({:.0} records/s, {:.0} MiB/s)",
        bytes as f64 / (1 << 20) as f64,
        send_time.as_secs_f64(),
        records as f64 / send_time.as_secs_f64(),
        bytes as f64 / (1 << 20) as f64 / send_time.as_secs_f64(),
    );

    let mut ok = 0u32;
    for (id, child) in std::mem::take(&mut children.0).into_iter().enumerate() {
        let out = child.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        print!("{text}");
        let got = text
            .split_whitespace()
            .find_map(|w| w.strip_prefix("records="))
            .and_then(|n| n.parse::<u64>().ok());
        if out.status.success() && got == Some(records) {
            ok += 1;
        } else {
            eprintln!("reader {id}: FAILED ({}, records={got:?})", out.status);
        }
    }
    println!(
        "summary: {ok}/{readers} readers verified all {records} records (order, length, checksum) in {:.3} s total",
        t0.elapsed().as_secs_f64()
    );
    if ok != readers {
        return Err(format!("{} of {readers} readers failed", readers - ok).into());
    }
    Ok(())
}

fn reader_main(args: &[String]) -> BoxResult<()> {
    let [handle, id, records, max_inline, overflow_last] = args else {
        return Err("usage: broadcast reader <handle> <id> <records> <max_inline> <0|1>".into());
    };
    let handle: Handle = handle.parse()?;
    let records: u64 = records.parse()?;
    // The writer's max_inline: readers need it only to know the record sizes.
    let max_inline: usize = max_inline.parse()?;
    let plan = Plan {
        records,
        max_inline,
        overflow_last: overflow_last == "1",
    };
    let mut reader = BroadcastReader::attach(&handle)?;

    let mut expect = 0u64;
    let mut bytes = 0u64;
    let mut overflow = 0u64;
    let mut t0 = None;
    loop {
        let g = match reader.recv() {
            Ok(g) => g,
            Err(Error::Closed) => break,
            Err(e) => return Err(format!("reader {id}: after {expect} records: {e}").into()),
        };
        t0.get_or_insert_with(Instant::now);
        // Verify in place: `g` derefs to the record's bytes in shared memory.
        check_record(&g, expect, &plan).map_err(|e| format!("reader {id}: {e}"))?;
        bytes += g.len() as u64;
        overflow += u64::from(g.len() > max_inline);
        expect += 1;
    }
    let secs = t0.map_or(0.0, |t| t.elapsed().as_secs_f64());
    println!(
        "reader {id} pid {}: records={expect} overflow={overflow} bytes={bytes} in {secs:.3} s",
        std::process::id()
    );
    if expect != records {
        return Err(format!("reader {id}: ring closed after {expect} of {records} records").into());
    }
    Ok(())
}

/// A cheap 64-bit mixer (splitmix64 finalizer).
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Writes seq, checksum and a pseudo-random body derived from `seq` into `buf`.
fn fill_record(buf: &mut [u8], seq: u64) {
    let (head, body) = buf.split_at_mut(PREFIX);
    let mut s = mix(seq ^ 0x5eed);
    let mut chunks = body.chunks_exact_mut(8);
    for c in &mut chunks {
        s = mix(s);
        c.copy_from_slice(&s.to_le_bytes());
    }
    let rest = chunks.into_remainder();
    let tail = mix(s).to_le_bytes();
    rest.copy_from_slice(&tail[..rest.len()]);
    head[..8].copy_from_slice(&seq.to_le_bytes());
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

fn check_record(rec: &[u8], expect: u64, plan: &Plan) -> Result<(), String> {
    if rec.len() < PREFIX {
        return Err(format!(
            "record {expect}: {} bytes is shorter than the prefix",
            rec.len()
        ));
    }
    let seq = u64::from_le_bytes(rec[..8].try_into().unwrap_or([0; 8]));
    if seq != expect {
        return Err(format!("out of order: got record {seq}, expected {expect}"));
    }
    let want_len = plan.record_len(seq);
    if rec.len() != want_len {
        return Err(format!(
            "record {seq}: {} bytes, expected {want_len}",
            rec.len()
        ));
    }
    let sum = u64::from_le_bytes(rec[8..16].try_into().unwrap_or([0; 8]));
    let got = checksum(&rec[PREFIX..]);
    if sum != got {
        return Err(format!(
            "record {seq}: checksum {got:#018x}, header says {sum:#018x}"
        ));
    }
    Ok(())
}

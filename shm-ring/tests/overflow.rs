//! Records larger than the ring: overflow segments (issue 6 items 5, 8 and
//! the overflow-cost target).

mod common;

use common::{overflow_files, pattern};
use shoal_shm_ring::{BroadcastConfig, BroadcastReader, BroadcastWriter, Wait};
use std::time::Duration;

const SEC: Duration = Duration::from_secs(1);

/// Issue 6 item 8: overflow names are unguessable, so another local user
/// who pre-creates the names a predictable scheme would use next cannot
/// make large sends fail.
#[test]
fn squatted_predictable_overflow_names_do_not_block_large_sends() {
    let mut w = BroadcastWriter::create(&BroadcastConfig::new(1 << 14, 1)).unwrap();
    let mut r = BroadcastReader::attach(&w.handle()).unwrap();
    w.wait_for_readers(1, Wait::no_wait()).unwrap();
    let ring = w.handle().name().to_string();
    // What the old scheme `<ring>.o<seq>` would have used next.
    let squatted: Vec<String> = (0..4u64)
        .map(|seq| format!("/dev/shm/{ring}.o{seq:016x}"))
        .collect();
    for p in &squatted {
        std::fs::write(p, b"squatter").unwrap();
    }
    for i in 0..4u8 {
        let big = vec![i; 64 << 10];
        w.send_with(&big, Wait::timeout(5 * SEC)).unwrap();
        let g = r.recv_with(Wait::timeout(5 * SEC)).unwrap();
        assert_eq!(g.len(), big.len());
        assert!(g.iter().all(|&b| b == i));
    }
    for p in &squatted {
        let _ = std::fs::remove_file(p);
    }
}

/// Review 7: a length no segment can hold is `TooLarge`, never an integer
/// overflow on the way (the inline fast path sized the record before it
/// checked the length).
#[test]
fn an_impossible_length_is_too_large() {
    let mut w = BroadcastWriter::create(&BroadcastConfig::new(1 << 14, 1)).unwrap();
    for len in [usize::MAX, usize::MAX - 63, usize::MAX / 2] {
        match w.reserve_with(len, Wait::no_wait()) {
            Err(shoal_shm_ring::Error::TooLarge { .. }) => {}
            Err(e) => panic!("{len}: {e}"),
            Ok(_) => panic!("{len}: reserved"),
        }
    }
}

/// The overflow-cost item: a stream of 1-2 MiB records through a 1 MiB
/// ring reuses a bounded set of overflow segments instead of making a file
/// per record, and every record arrives intact.
#[test]
fn a_stream_of_large_records_recycles_a_bounded_set_of_segments() {
    let mut w = BroadcastWriter::create(&BroadcastConfig::new(1 << 20, 2)).unwrap();
    let h = w.handle();
    let ring = h.name().to_string();
    let mut r = BroadcastReader::attach(&h).unwrap();
    w.wait_for_readers(1, Wait::no_wait()).unwrap();
    const N: u32 = 200;
    let sizes = |i: u32| (1 << 20) + ((i as usize * 7919) % (1 << 20));
    let reader = std::thread::spawn(move || {
        for i in 0..N {
            let g = r.recv_with(Wait::timeout(10 * SEC)).unwrap();
            assert_eq!(g.len(), sizes(i));
            assert_eq!(&*g, &pattern(i, sizes(i))[..], "record {i} damaged");
            assert_eq!(
                g.as_ptr() as usize % 4096,
                0,
                "overflow payloads are page-aligned"
            );
        }
        r
    });
    let mut most = 0;
    for i in 0..N {
        let p = pattern(i, sizes(i));
        w.send_with(&p, Wait::timeout(10 * SEC)).unwrap();
        most = most.max(overflow_files(&ring));
    }
    let r = reader.join().unwrap();
    assert!(most <= 32, "{most} overflow files at once");
    drop(w);
    drop(r);
    assert_eq!(overflow_files(&ring), 0, "files left after everyone left");
}

/// Issue 6 item 5: records a closing writer leaves unread survive
/// `cleanup_stale` while a reader drains them, and the last reader out
/// removes their files.
#[test]
fn unread_large_records_survive_the_writer_and_go_with_the_last_reader() {
    let mut w = BroadcastWriter::create(&BroadcastConfig::new(1 << 14, 1)).unwrap();
    let h = w.handle();
    let ring = h.name().to_string();
    let mut r = BroadcastReader::attach(&h).unwrap();
    w.wait_for_readers(1, Wait::no_wait()).unwrap();
    for i in 0..3 {
        w.send(&pattern(i, 100_000)).unwrap();
    }
    drop(w); // waits 200 ms for the reader, then leaves the files to it
    shoal_shm_ring::cleanup_stale().unwrap();
    for i in 0..3 {
        let g = r.recv_with(Wait::timeout(5 * SEC)).unwrap();
        assert_eq!(&*g, &pattern(i, 100_000)[..]);
    }
    assert!(matches!(
        r.recv_with(Wait::no_wait()),
        Err(shoal_shm_ring::Error::Closed)
    ));
    drop(r);
    assert_eq!(overflow_files(&ring), 0);
}

/// Issue 6 items 5 and 12(b): an MPMC producer that sent a large record
/// and left keeps it for the consumers (through `cleanup_stale` too); a
/// record nobody took dies with the ring.
#[test]
fn mpmc_large_records_outlive_their_producer_but_not_the_ring() {
    use shoal_shm_ring::{MpmcConfig, MpmcRing};
    let ring = MpmcRing::create(&MpmcConfig::new(1 << 14, 2, 1)).unwrap();
    let name = ring.handle().name().to_string();
    let mut c = ring.consumer().unwrap();
    {
        let mut p = ring.producer().unwrap();
        p.send(&pattern(1, 50_000)).unwrap();
        p.send(&pattern(2, 50_000)).unwrap();
    }
    shoal_shm_ring::cleanup_stale().unwrap();
    assert_eq!(
        &*c.take_with(Wait::timeout(5 * SEC)).unwrap(),
        &pattern(1, 50_000)[..]
    );
    assert_eq!(overflow_files(&name), 1, "the untaken record's file");
    drop(c);
    drop(ring);
    assert_eq!(
        overflow_files(&name),
        0,
        "an untaken record outlived its ring"
    );
}

fn overflow_names(ring: &str) -> Vec<std::path::PathBuf> {
    std::fs::read_dir("/dev/shm")
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{ring}.o")))
        })
        .collect()
}

/// Issue 6 item 12(a): an MPMC consumer that rejects a corrupt one-shot
/// overflow file releases the record and removes the file (it is its only
/// reader); a corrupt pooled file is left to its producer (which recycles
/// it) and goes with the ring. The queue goes on either way.
#[test]
fn a_rejected_mpmc_overflow_file_is_removed() {
    use shoal_shm_ring::{Error, MpmcConfig, MpmcRing};
    use std::os::unix::fs::FileExt;
    let ring = MpmcRing::create(&MpmcConfig::new(1 << 16, 1, 1)).unwrap();
    let name = ring.handle().name().to_string();
    let mut p = ring.producer().unwrap();
    let mut c = ring.consumer().unwrap();
    // Eight pooled records in flight; the ninth gets a one-shot file.
    for i in 0..8 {
        p.send(&pattern(i, 50_000)).unwrap();
    }
    let pooled = overflow_names(&name);
    p.send(&pattern(8, 50_000)).unwrap();
    let oneshot: Vec<_> = overflow_names(&name)
        .into_iter()
        .filter(|f| !pooled.contains(f))
        .collect();
    assert_eq!(oneshot.len(), 1);
    // Scribble over the magic of the one-shot file and of a pooled one.
    for f in [&oneshot[0], &pooled[0]] {
        let f = std::fs::OpenOptions::new().write(true).open(f).unwrap();
        f.write_all_at(b"NOTSHOAL", 0).unwrap();
    }
    let mut corrupt = 0;
    for _ in 0..9 {
        match c.take_with(Wait::timeout(5 * SEC)) {
            Ok(_) => {}
            Err(Error::Corrupt { .. }) => corrupt += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(corrupt, 2);
    assert!(!oneshot[0].exists(), "the rejected one-shot file stayed");
    assert!(
        pooled[0].exists(),
        "a pooled file was unlinked under its producer"
    );
    // The queue goes on.
    p.send(b"next").unwrap();
    assert_eq!(&*c.take_with(Wait::timeout(5 * SEC)).unwrap(), b"next");
    drop((p, c, ring));
    assert_eq!(overflow_files(&name), 0);
}

/// MPMC producers recycle their overflow segments too: records taken as
/// they come (the pool never has 8 in flight) reuse a handful of files,
/// whatever their sizes, and every record arrives intact.
#[test]
fn an_mpmc_stream_of_large_records_recycles_a_bounded_set_of_segments() {
    use shoal_shm_ring::{MpmcConfig, MpmcRing};
    let ring = MpmcRing::create(&MpmcConfig::new(1 << 16, 1, 1)).unwrap();
    let name = ring.handle().name().to_string();
    let mut p = ring.producer().unwrap();
    let mut c = ring.consumer().unwrap();
    let size = |i: u32| 40_000 + (i as usize * 7919) % 200_000;
    let mut most = 0;
    for i in 0..300u32 {
        // Two in flight at a time.
        p.send(&pattern(i, size(i))).unwrap();
        if i % 2 == 1 {
            for j in i - 1..=i {
                let g = c.take_with(Wait::timeout(10 * SEC)).unwrap();
                assert_eq!(&*g, &pattern(j, size(j))[..], "record {j} damaged");
            }
        }
        most = most.max(overflow_files(&name));
    }
    // Size classes 64, 128 and 256 KiB, two in flight: a few files, not 300.
    assert!(most <= 8, "{most} overflow files at once");
    drop(p);
    drop(c);
    drop(ring);
    assert_eq!(overflow_files(&name), 0, "files left after everyone left");
}

/// When consumers lag (the producer's pool has 8 records in flight), large
/// records go into one-shot segments that their consumer removes.
#[test]
fn lagging_mpmc_consumers_get_one_shot_segments_they_remove() {
    use shoal_shm_ring::{MpmcConfig, MpmcRing};
    let ring = MpmcRing::create(&MpmcConfig::new(1 << 16, 1, 1)).unwrap();
    let name = ring.handle().name().to_string();
    let mut p = ring.producer().unwrap();
    let mut c = ring.consumer().unwrap();
    for i in 0..20 {
        p.send_with(&pattern(i, 50_000), Wait::timeout(5 * SEC))
            .unwrap();
    }
    assert_eq!(overflow_files(&name), 20);
    for i in 0..20 {
        let g = c.take_with(Wait::timeout(5 * SEC)).unwrap();
        assert_eq!(&*g, &pattern(i, 50_000)[..]);
    }
    // The 12 one-shot files are gone; the 8 pooled ones wait for reuse.
    assert_eq!(overflow_files(&name), 8);
    p.send(&pattern(99, 50_000)).unwrap();
    assert_eq!(overflow_files(&name), 8, "a pooled segment was reused");
    assert_eq!(&*c.take().unwrap(), &pattern(99, 50_000)[..]);
    drop(p);
    assert_eq!(overflow_files(&name), 0, "the departed producer's files");
}

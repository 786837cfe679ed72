//! Collectives between hosts are hierarchical: one message per host at
//! the rendezvous, not one per rank. Ranks are threads of this process,
//! placed on two hosts by name (`GroupOptions::host`); the rendezvous's
//! trace of each contribution is counted.

use shoal_collectives::Group;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

mod common;
use common::{launch, opts, rendezvous};

mod capture {
    use super::*;
    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Metadata, Subscriber};

    pub static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

    struct Capture;
    struct Line(String);

    impl Visit for Line {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            use std::fmt::Write;
            let _ = write!(self.0, "{}={value:?} ", field.name());
        }
    }

    impl Subscriber for Capture {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, e: &Event<'_>) {
            let mut l = Line(String::new());
            e.record(&mut l);
            LINES.lock().unwrap_or_else(|p| p.into_inner()).push(l.0);
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    pub fn start() {
        static ONCE: OnceLock<()> = OnceLock::new();
        ONCE.get_or_init(|| {
            let _ = tracing::subscriber::set_global_default(Capture);
        });
    }
}

/// The tests of this file one at a time: the contributions counted are
/// every rendezvous's in the process (one test's gathers were counted in
/// the other's once).
static SERIAL: Mutex<()> = Mutex::new(());

/// Contributions the rendezvous took, by collective (the last part of
/// the key: `group/call/what`).
fn contributions() -> HashMap<String, usize> {
    let mut by = HashMap::new();
    for l in capture::LINES.lock().unwrap().iter() {
        if !l.contains("a contribution") {
            continue;
        }
        let Some(key) = l
            .split_whitespace()
            .find_map(|f| f.strip_prefix("key="))
            .and_then(|k| k.rsplit('/').next())
        else {
            continue;
        };
        *by.entry(key.to_string()).or_default() += 1;
    }
    by
}

#[test]
fn four_ranks_on_two_hosts_send_one_message_per_host() {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    capture::start();
    let at = rendezvous();
    // Hosts' first ranks are 0 and 1; ranks interleaved across hosts.
    let hosts = ["hier-a", "hier-b", "hier-a", "hier-b"];
    let t: Vec<_> = (0..4u32)
        .map(|r| {
            let at = at.clone();
            std::thread::spawn(move || {
                let o = opts().host(hosts[r as usize]);
                let g = Group::bootstrap(&launch(r, 4, &at), &o).unwrap();
                assert_eq!((g.nodes(), g.local_size()), (2, 2));
                g.barrier().unwrap();
                // Root 2: not its host's first rank.
                let text = format!("from {r}");
                let b = g.broadcast(2, (r == 2).then_some(&text)).unwrap();
                assert_eq!(b.get().as_str(), "from 2");
                let gathered = g.gather(3, &vec![r as u8; r as usize + 1]).unwrap();
                if r == 3 {
                    let v = gathered.unwrap();
                    for (i, x) in v.iter().enumerate() {
                        assert_eq!(x.deserialize().unwrap(), vec![i as u8; i + 1]);
                    }
                } else {
                    assert!(gathered.is_none());
                }
                let all = g.all_gather(&(r * 7)).unwrap();
                let got: Vec<u32> = all.iter().map(|v| v.get().to_native()).collect();
                assert_eq!(got, [0, 7, 14, 21]);
                g
            })
        })
        .collect();
    let gs: Vec<Group> = t.into_iter().map(|t| t.join().unwrap()).collect();
    let by = contributions();
    for what in ["barrier", "broadcast", "gather", "all_gather"] {
        assert_eq!(by.get(what), Some(&2), "{what}: {by:?}");
    }
    common::done(gs);
}

#[test]
fn a_gather_that_fails_on_one_host_fails_on_the_others_without_waiting() {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let at = rendezvous();
    let hosts = ["fail-a", "fail-b", "fail-a", "fail-b"];
    let start = std::time::Instant::now();
    let t: Vec<_> = (0..4u32)
        .map(|r| {
            let at = at.clone();
            std::thread::spawn(move || {
                let mut o = opts().host(hosts[r as usize]);
                o.max_value = 256;
                let g = Group::bootstrap(&launch(r, 4, &at), &o).unwrap();
                // Rank 2's value is too large: host A's values fail.
                let v = vec![1u8; if r == 2 { 4096 } else { 8 }];
                let gathered = g.gather(3, &v).map(|x| x.is_some());
                let all = g.all_gather(&v).map(drop);
                (gathered, all.is_err(), g)
            })
        })
        .collect();
    let out: Vec<_> = t.into_iter().map(|t| t.join().unwrap()).collect();
    // Host A's ranks, and the root on host B, learn it from the gather;
    // rank 1 gave its value and has no answer to wait for.
    assert!(out[0].0.is_err() && out[2].0.is_err() && out[3].0.is_err());
    assert!(matches!(out[1].0, Ok(false)));
    // The group is broken on every rank but 1, whose all_gather then
    // fails once its host's first rank tells it (not after the timeout).
    assert!(out.iter().all(|o| o.1));
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "{:?}",
        start.elapsed()
    );
    common::done(out.into_iter().map(|o| o.2).collect());
}

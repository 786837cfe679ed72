//! iceoryx2 (0.10) measured the way `shoal` is: zero-copy loans on an
//! `ipc::Service` publish-subscribe service with `[u8]` payloads.
//!
//! `iceoryx2 pingpong --size B --mode spin|waitset --iters N [--pin]`
//! `iceoryx2 broadcast --size B --readers R --ms T [--pin]`
//! `iceoryx2 wake --idle-us U --iters N`
//!
//! Peers are re-executions of this binary with a role argument. Lossless
//! settings throughout: `enable_safe_overflow(false)` and
//! `BackpressureStrategy::RetryUntilDelivered` (the defaults silently
//! overwrite). In ping-pong, sizes above 64 B write only the first 64 bytes
//! of the loan, as the shoal cells do, and as iceoryx2's own benchmark does;
//! in broadcast the publisher writes and every subscriber reads every byte,
//! as in the shoal cell.

use iceoryx2::port::{
    listener::Listener, notifier::Notifier, publisher::Publisher, subscriber::Subscriber,
};
use iceoryx2::prelude::*;
use iceoryx2::service::port_factory::{
    event::PortFactory as EvSvc, publish_subscribe::PortFactory as PsSvc,
};
use iceoryx2::waitset::WaitSetRunResult;
use shoal_bench::measure::Measurement;
use shoal_bench::proc::{pin, Args};
use shoal_bench::shared::now_ns;
use std::io::{BufRead, BufReader};
use std::mem::MaybeUninit;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

type S = ipc::Service;
type Pub = Publisher<S, [u8], ()>;
type Sub = Subscriber<S, [u8], ()>;
/// Sequence number that tells a peer to exit.
const TERM: u64 = u64::MAX;
/// Longest any one measurement runs.
const CAP: Duration = Duration::from_secs(5);

fn node() -> Node<S> {
    NodeBuilder::new()
        .config(&Config::default())
        .signal_handling_mode(SignalHandlingMode::Disabled)
        .create::<S>()
        .expect("iceoryx2 node")
}

fn uniq(tag: &str) -> String {
    format!("shoal-bench/{}/{:x}/{tag}", std::process::id(), now_ns())
}

fn pubsub(node: &Node<S>, name: &str, create: bool, subs: usize, buf: usize) -> PsSvc<S, [u8], ()> {
    let b = node
        .service_builder(&ServiceName::new(name).expect("service name"))
        .publish_subscribe::<[u8]>();
    if !create {
        return b.open().expect("open pubsub");
    }
    b.max_publishers(1)
        .max_subscribers(subs)
        .max_nodes(subs + 1)
        .history_size(0)
        .subscriber_max_buffer_size(buf)
        .subscriber_max_borrowed_samples(1)
        .enable_safe_overflow(false)
        .create()
        .expect("create pubsub")
}

fn event(node: &Node<S>, name: &str, create: bool) -> EvSvc<S> {
    let b = node
        .service_builder(&ServiceName::new(name).expect("service name"))
        .event();
    if create {
        b.max_notifiers(1)
            .max_listeners(1)
            .max_nodes(2)
            .create()
            .expect("create event")
    } else {
        b.open().expect("open event")
    }
}

fn publisher(svc: &PsSvc<S, [u8], ()>, size: usize) -> Pub {
    svc.publisher_builder()
        .initial_max_slice_len(size)
        .allocation_strategy(AllocationStrategy::Static)
        .max_loaned_samples(1)
        .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
        .create()
        .expect("publisher")
}

/// Loans `size` bytes, writes the first `min(size, 64)` (the sequence number
/// first), sends.
fn send(p: &Pub, size: usize, seq: u64) {
    let mut s = p.loan_slice_uninit(size).expect("loan");
    let head = seq.to_le_bytes();
    for (i, d) in s.payload_mut()[..size.min(64)].iter_mut().enumerate() {
        *d = MaybeUninit::new(*head.get(i).unwrap_or(&0));
    }
    // SAFETY: the loan is a slice of tmpfs-backed shared memory, whose bytes
    // are always initialized (zeroed or earlier payloads); only the bytes a
    // message changes are written, exactly as the shoal cells do and as
    // iceoryx2's own publish-subscribe benchmark does.
    let s = unsafe { s.assume_init() };
    s.send().expect("send");
}

fn recv_spin(sub: &Sub, yield_on_empty: bool) -> u64 {
    let t0 = Instant::now();
    let mut spins = 0u32;
    loop {
        if let Some(s) = sub.receive().expect("receive") {
            return u64::from_le_bytes(s.payload()[..8].try_into().unwrap_or([0; 8]));
        }
        if yield_on_empty {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(1 << 20) {
            assert!(t0.elapsed() < Duration::from_secs(20), "peer stalled");
        }
    }
}

fn recv_block(sub: &Sub, ws: &WaitSet<S>, l: &Listener<S>) -> u64 {
    let t0 = Instant::now();
    loop {
        if let Some(s) = sub.receive().expect("receive") {
            return u64::from_le_bytes(s.payload()[..8].try_into().unwrap_or([0; 8]));
        }
        let r = ws
            .wait_and_process_once_with_timeout(
                |_| {
                    // Drain, or the WaitSet keeps waking.
                    let _ = l.try_wait(|_| {});
                    CallbackProgression::Continue
                },
                Duration::from_secs(1),
            )
            .expect("waitset");
        if r != WaitSetRunResult::AllEventsHandled {
            assert!(t0.elapsed() < Duration::from_secs(20), "peer stalled");
        }
    }
}

fn spawn(args: &[String]) -> Child {
    Command::new(std::env::current_exe().expect("current_exe"))
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn peer")
}

fn wait_until(f: impl Fn() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "peer did not show up"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn pingpong(size: usize, iters: usize, waitset: bool, pinned: bool) -> Measurement {
    let node = node();
    let (na, nb, ea, eb) = (uniq("ping"), uniq("pong"), uniq("ping_ev"), uniq("pong_ev"));
    let (a, b) = (
        pubsub(&node, &na, true, 1, 1),
        pubsub(&node, &nb, true, 1, 1),
    );
    let p = publisher(&a, size);
    let sub = b.subscriber_builder().create().expect("subscriber");
    let mode = if waitset { "waitset" } else { "spin" };
    let mut m =
        Measurement::new("iceoryx2", "pingpong", mode, "latency_one_way_ns").payload(size as u64);
    let role = if waitset { "pongw" } else { "pong" };
    let mut child = spawn(&[
        role.into(),
        na,
        nb,
        ea.clone(),
        eb.clone(),
        size.to_string(),
        pinned.to_string(),
    ]);
    if pinned {
        pin(0);
    }
    let warm = 1000;
    let start = Instant::now();
    if waitset {
        let (ev_a, ev_b) = (event(&node, &ea, true), event(&node, &eb, true));
        let notifier: Notifier<S> = ev_a.notifier_builder().create().expect("notifier");
        let listener: Listener<S> = ev_b.listener_builder().create().expect("listener");
        let ws = WaitSetBuilder::new()
            .signal_handling_mode(SignalHandlingMode::Disabled)
            .create::<S>()
            .expect("waitset");
        let _guard = ws.attach_notification(&listener).expect("attach");
        wait_until(|| ev_b.dynamic_config().number_of_notifiers() == 1);
        for i in 0..(warm + iters) as u64 {
            if start.elapsed() > CAP {
                break;
            }
            let t0 = Instant::now();
            send(&p, size, i);
            notifier.notify().expect("notify");
            let seq = recv_block(&sub, &ws, &listener);
            let dt = t0.elapsed();
            assert_eq!(seq, i);
            if i >= warm as u64 {
                m.samples.push(dt.as_nanos() as f64 / 2.0);
            }
        }
        send(&p, size, TERM);
        notifier.notify().expect("notify");
    } else {
        wait_until(|| b.dynamic_config().number_of_publishers() == 1);
        // Busy-poll round trips are timed in batches, as the floor's and
        // shoal's are: a clock read per round trip would add its own cost.
        const BATCH: u64 = 32;
        let mut i = 0u64;
        while i < (warm + iters) as u64 {
            if start.elapsed() > CAP {
                break;
            }
            let t0 = Instant::now();
            for _ in 0..BATCH {
                send(&p, size, i);
                let seq = recv_spin(&sub, false);
                assert_eq!(seq, i);
                i += 1;
            }
            let dt = t0.elapsed();
            if i > warm as u64 {
                m.samples.push(dt.as_nanos() as f64 / (2 * BATCH) as f64);
            }
        }
        send(&p, size, TERM);
    }
    let _ = child.wait();
    m
}

fn pong(a: &[String]) {
    let (na, nb, ea, eb) = (&a[2], &a[3], &a[4], &a[5]);
    let size: usize = a[6].parse().unwrap_or(64);
    if a[7] == "true" {
        pin(1);
    }
    let waitset = a[1] == "pongw";
    let node = node();
    let (sa, sb) = (
        pubsub(&node, na, false, 0, 0),
        pubsub(&node, nb, false, 0, 0),
    );
    let sub = sa.subscriber_builder().create().expect("subscriber");
    if waitset {
        let (ev_a, ev_b) = (event(&node, ea, false), event(&node, eb, false));
        let listener = ev_a.listener_builder().create().expect("listener");
        let ws = WaitSetBuilder::new()
            .signal_handling_mode(SignalHandlingMode::Disabled)
            .create::<S>()
            .expect("waitset");
        let _guard = ws.attach_notification(&listener).expect("attach");
        let p = publisher(&sb, size);
        let notifier = ev_b.notifier_builder().create().expect("notifier");
        loop {
            let seq = recv_block(&sub, &ws, &listener);
            if seq == TERM {
                return;
            }
            send(&p, size, seq);
            notifier.notify().expect("notify");
        }
    } else {
        let p = publisher(&sb, size);
        loop {
            let seq = recv_spin(&sub, false);
            if seq == TERM {
                return;
            }
            send(&p, size, seq);
        }
    }
}

/// One publisher, `n` subscriber processes polling with a yield when empty
/// (pure spinning collapses with more processes than cores); the publisher
/// writes every payload byte and every subscriber reads every byte, as in
/// the shoal cell; per-subscriber messages (or, for payloads of 4 KiB and
/// more, bytes) per second. With `pinned` the publisher runs on CPU 0 and
/// subscriber `k` on CPU `1 + k` (modulo the CPUs).
fn broadcast(size: usize, n: usize, run: Duration, pinned: bool) -> Measurement {
    let node = node();
    let name = uniq("bcast");
    // Large payloads: every subscriber queue slot is a whole sample in shm.
    let big = size >= 4096;
    let queue = if big { 2 } else { 4096 };
    let svc = pubsub(&node, &name, true, n, queue);
    let p = publisher(&svc, size);
    let kids: Vec<Child> = (0..n)
        .map(|k| {
            let cpu = if pinned {
                (1 + k).to_string()
            } else {
                "none".into()
            };
            spawn(&["sub".into(), name.clone(), "true".into(), cpu])
        })
        .collect();
    if pinned {
        pin(0);
    }
    wait_until(|| svc.dynamic_config().number_of_subscribers() == n);
    let t0 = Instant::now();
    let mut seq = 0u64;
    while t0.elapsed() < run {
        for _ in 0..if big { 4 } else { 256 } {
            send_filled(&p, size, seq);
            seq += 1;
        }
    }
    send(&p, size, TERM);
    let (metric, scale) = if big {
        ("throughput_bytes_per_s", size as f64)
    } else {
        ("throughput_msgs_per_s", 1.0)
    };
    let mut m = Measurement::new("iceoryx2", "broadcast", "spin", metric)
        .payload(size as u64)
        .readers(n as u32)
        .processes(n as u32 + 1);
    for mut k in kids {
        let mut line = String::new();
        if let Some(out) = k.stdout.take() {
            let _ = BufReader::new(out).read_line(&mut line);
        }
        let _ = k.wait();
        let v: Vec<f64> = line
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if v.len() == 2 && v[0] as u64 == seq && v[1] > 0.0 {
            m.samples.push(v[0] / (v[1] * 1e-9) * scale);
        } else {
            m.error = Some(format!(
                "subscriber reported {line:?}, expected {seq} messages"
            ));
        }
    }
    m
}

/// Loans `size` bytes and writes every one of them (the sequence number first).
fn send_filled(p: &Pub, size: usize, seq: u64) {
    let head = seq.to_le_bytes();
    let s = p
        .loan_slice_uninit(size)
        .expect("loan")
        .write_from_fn(|i| *head.get(i).unwrap_or(&(seq as u8)));
    s.send().expect("send");
}

/// Receives one sample, reading every byte of it if `touch_all`; returns
/// its sequence number.
fn recv_sub(sub: &Sub, touch_all: bool, sink: &mut u64) -> u64 {
    let t0 = Instant::now();
    loop {
        if let Some(s) = sub.receive().expect("receive") {
            let b = s.payload();
            if touch_all {
                *sink = sink.wrapping_add(shoal_bench::shape::sum(b));
            }
            return u64::from_le_bytes(b[..8].try_into().unwrap_or([0; 8]));
        }
        std::thread::yield_now();
        assert!(t0.elapsed() < Duration::from_secs(20), "publisher stalled");
    }
}

fn sub_child(name: &str, touch_all: bool, cpu: Option<usize>) {
    if let Some(c) = cpu {
        pin(c);
    }
    let node = node();
    let svc = pubsub(&node, name, false, 0, 0);
    let sub = svc.subscriber_builder().create().expect("subscriber");
    let mut count = 0u64;
    let mut t0 = None;
    let mut sink = 0u64;
    loop {
        let seq = recv_sub(&sub, touch_all, &mut sink);
        let t = *t0.get_or_insert_with(Instant::now);
        if seq == TERM {
            std::hint::black_box(sink);
            println!("{} {}", count, t.elapsed().as_nanos());
            return;
        }
        if seq != count {
            println!("gap at {count}");
            return;
        }
        count += 1;
    }
}

/// First message after `idle` of silence to a subscriber parked in a
/// WaitSet: the latency from the send to the subscriber running.
fn wake(idle: Duration, iters: usize) -> Measurement {
    let node = node();
    let (na, ea) = (uniq("wake"), uniq("wake_ev"));
    let a = pubsub(&node, &na, true, 1, 1);
    let ev = event(&node, &ea, true);
    let p = publisher(&a, 64);
    let notifier: Notifier<S> = ev.notifier_builder().create().expect("notifier");
    let mut child = spawn(&["waker".into(), na, ea, iters.to_string()]);
    pin(0);
    wait_until(|| a.dynamic_config().number_of_subscribers() == 1);
    let mode = if idle >= Duration::from_millis(100) {
        "idle"
    } else {
        "back-to-back"
    };
    let mut m = Measurement::new(
        "iceoryx2",
        &format!("wake-{mode}"),
        "waitset",
        "wake_latency_ns",
    );
    let out = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(out).lines();
    for _ in 0..iters {
        std::thread::sleep(idle.max(Duration::from_micros(200)));
        send(&p, 64, now_ns());
        notifier.notify().expect("notify");
        match lines.next() {
            Some(Ok(l)) => match l.trim().parse::<f64>() {
                Ok(v) => m.samples.push(v),
                Err(_) => m.error = Some(format!("bad line {l:?}")),
            },
            _ => {
                m.error = Some("subscriber gone".into());
                break;
            }
        }
    }
    let _ = child.wait();
    m
}

fn wake_child(name: &str, ev_name: &str, iters: usize) {
    pin(1);
    let node = node();
    let a = pubsub(&node, name, false, 0, 0);
    let ev = event(&node, ev_name, false);
    let sub = a.subscriber_builder().create().expect("subscriber");
    let listener = ev.listener_builder().create().expect("listener");
    let ws = WaitSetBuilder::new()
        .signal_handling_mode(SignalHandlingMode::Disabled)
        .create::<S>()
        .expect("waitset");
    let _guard = ws.attach_notification(&listener).expect("attach");
    for _ in 0..iters {
        let sent = recv_block(&sub, &ws, &listener);
        println!("{}", now_ns().saturating_sub(sent));
    }
}

fn main() {
    set_log_level_from_env_or(LogLevel::Error);
    let argv: Vec<String> = std::env::args().collect();
    match argv.get(1).map(String::as_str) {
        Some("pong" | "pongw") => return pong(&argv),
        Some("sub") => {
            return sub_child(
                &argv[2],
                argv.get(3).is_some_and(|a| a == "true"),
                argv.get(4).and_then(|c| c.parse().ok()),
            )
        }
        Some("waker") => return wake_child(&argv[2], &argv[3], argv[4].parse().unwrap_or(1)),
        _ => {}
    }
    let cmd = argv.get(1).cloned().unwrap_or_default();
    let a = Args::from_env(2);
    let size = a.get("size", 64usize);
    let m = match cmd.as_str() {
        "pingpong" => pingpong(
            size,
            a.get("iters", 10_000usize),
            a.get("mode", "spin".to_string()) == "waitset",
            a.has("pin"),
        ),
        "broadcast" => broadcast(
            size,
            a.get("readers", 1usize),
            Duration::from_millis(a.get("ms", 500u64)),
            a.has("pin"),
        ),
        "wake" => wake(
            Duration::from_micros(a.get("idle-us", 0u64)),
            a.get("iters", 3usize),
        ),
        _ => {
            eprintln!("usage: iceoryx2 <pingpong|broadcast|wake> [--size B] [--mode spin|waitset] [--iters N] [--readers R] [--ms T] [--idle-us U] [--pin]");
            std::process::exit(2);
        }
    };
    m.emit();
}

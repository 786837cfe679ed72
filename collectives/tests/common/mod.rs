//! Ranks as threads of a test process: each thread bootstraps a group of
//! its own (its own connections, as a process would have) against a
//! rendezvous on loopback.
#![allow(dead_code)]

use shoal_collectives::{Group, GroupOptions, Launch, Launcher};
use std::time::Duration;

/// What `cargo xtask run` would say to rank `rank` of `size`.
pub fn launch(rank: u32, size: u32, at: &str) -> Launch {
    Launch {
        launcher: Launcher::Shoal,
        rank,
        size,
        local_rank: None,
        local_size: None,
        rendezvous: Some(at.to_string()),
        job: "test".into(),
    }
}

/// A rendezvous address on loopback, free now.
pub fn rendezvous() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    format!("127.0.0.1:{port}")
}

/// Options with a timeout tests can wait out.
pub fn opts() -> GroupOptions {
    GroupOptions::default().timeout(Duration::from_secs(20))
}

/// `size` groups, one per rank, bootstrapped on threads with `o`.
pub fn groups_with(size: u32, o: &GroupOptions) -> Vec<Group> {
    let at = rendezvous();
    let t: Vec<_> = (0..size)
        .map(|r| {
            let (at, o) = (at.clone(), o.clone());
            std::thread::spawn(move || Group::bootstrap(&launch(r, size, &at), &o).unwrap())
        })
        .collect();
    t.into_iter().map(|t| t.join().unwrap()).collect()
}

/// `size` groups with [`opts`].
pub fn groups(size: u32) -> Vec<Group> {
    groups_with(size, &opts())
}

/// Drops the groups, rank 0 last (it keeps the rendezvous until the
/// others left).
pub fn done(gs: Vec<Group>) {
    for g in gs.into_iter().rev() {
        drop(g);
    }
}

/// Runs `body` on every group's thread; what each gave, by rank (rank
/// 0's group drops last).
pub fn on_all<T: Send + 'static>(
    gs: Vec<Group>,
    body: impl Fn(&Group) -> T + Send + Sync + Clone + 'static,
) -> Vec<T> {
    let t: Vec<_> = gs
        .into_iter()
        .map(|g| {
            let body = body.clone();
            std::thread::spawn(move || {
                let r = body(&g);
                (g, r)
            })
        })
        .collect();
    let mut out = Vec::new();
    let mut gs = Vec::new();
    for t in t {
        let (g, r) = t.join().unwrap();
        gs.push(g);
        out.push(r);
    }
    done(gs);
    out
}

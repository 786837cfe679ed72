//! The reaper: owns the reader of a [`BroadcastReceiver`] dropped while
//! messages it handed out were still held, gives their records back to
//! the ring as they drop, and frees the reader (it detaches) after the
//! last one.
//!
//! A [`Received`](super::Received) never learns whether its receiver is
//! still there (that would cost every drop a read-modify-write or a
//! fence); its owner finds its flag instead. Once the receiver is gone,
//! that owner is this: a thread that exists only while there are orphans,
//! and looks at them 1 ms after adoption, then less and less often (up to
//! once a second: a message leaked with `mem::forget` is looked at
//! forever, but rarely).
//!
//! [`BroadcastReceiver`]: super::BroadcastReceiver

use super::receiver::Core;
use std::sync::Mutex;
use std::time::Duration;

/// The orphans, and the process whose reaper thread is running (a child
/// made by `fork` inherits this state, not the thread).
struct Orphans {
    cores: Vec<Core>,
    running: Option<u32>,
}

static ORPHANS: Mutex<Orphans> = Mutex::new(Orphans {
    cores: Vec::new(),
    running: None,
});

fn lock() -> std::sync::MutexGuard<'static, Orphans> {
    ORPHANS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Takes `core` (with messages still out) until they all dropped.
pub(super) fn adopt(core: Core) {
    let mut o = lock();
    o.cores.push(core);
    let me = std::process::id();
    if o.running == Some(me) {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("shoal-broadcast-reaper".into())
        .spawn(reap);
    match spawned {
        Ok(_) => o.running = Some(me),
        // Nothing to run it on: the held records stay held (and the
        // reader attached) until the process exits, as if leaked.
        Err(e) => tracing::warn!(
            "shoal: no thread for the broadcast reaper ({e}); {} dropped receivers stay attached",
            o.cores.len()
        ),
    }
}

/// The reaper thread: looks at every orphan, frees those with nothing
/// out, and ends when none is left.
fn reap() {
    /// Marks the reaper gone if a panic (in a reader's drop, say) ends
    /// the thread, so the next adoption starts another.
    struct Gone;
    impl Drop for Gone {
        fn drop(&mut self) {
            if std::thread::panicking() {
                lock().running = None;
            }
        }
    }
    let _gone = Gone;
    let mut pause = Duration::from_millis(1);
    loop {
        std::thread::sleep(pause);
        let mut o = lock();
        let cores = std::mem::take(&mut o.cores);
        let before = cores.len();
        for core in cores {
            if let Some(core) = core.try_free() {
                o.cores.push(core);
            }
        }
        if o.cores.is_empty() {
            o.running = None;
            return;
        }
        pause = if o.cores.len() < before {
            Duration::from_millis(1)
        } else {
            (pause * 2).min(Duration::from_secs(1))
        };
    }
}

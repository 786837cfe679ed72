//! Helpers the transport integration tests share.
#![allow(dead_code)] // each test file uses a part

use shoal_transport::Address;
use std::time::Duration;

/// One second.
pub const SEC: Duration = Duration::from_secs(1);

/// A two-worker tokio runtime.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// `shm://PREFIX-TAG-PID`: a name of this test process's own.
pub fn shm_addr(prefix: &str, tag: &str) -> Address {
    format!("shm://{prefix}-{tag}-{}", std::process::id())
        .parse()
        .unwrap()
}

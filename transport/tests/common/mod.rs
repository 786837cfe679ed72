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

/// `nng+ipc:///tmp/shoal-test-TAG-PID.sock`: a path of this test
/// process's own.
pub fn ipc_addr(tag: &str) -> Address {
    format!(
        "nng+ipc:///tmp/shoal-test-{tag}-{}.sock",
        std::process::id()
    )
    .parse()
    .unwrap()
}

/// `SCHEME://127.0.0.1:PORT` with a port free a moment ago.
pub fn tcp_addr(scheme: &str) -> Address {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("{scheme}://127.0.0.1:{port}").parse().unwrap()
}

pub mod netns;
pub mod proc;
pub mod sp;

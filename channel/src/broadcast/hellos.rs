//! Remote readers' hellos: a broadcast with readers on other hosts binds,
//! beside its publisher, a door where each remote reader says who it is
//! (index, pid, host) once it subscribed. The writer keeps the list, so
//! readiness names the readers that never came, local or remote, and
//! [`Broadcast::remote_readers`](super::Broadcast::remote_readers) lists
//! those that did.

use crate::error::{Error, Result};
use crate::net::ask::NetReplier;
use crate::net::serve::{runtime, serve, Heard};
use shoal_transport::{Address, Options};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A remote reader that said hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteReader {
    /// The index it attached with.
    pub index: u32,
    /// Its pid (in its own pid namespace).
    pub pid: u32,
    /// Its host (see [`host_id`](crate::gather::host_id)).
    pub host: u64,
}

/// The first bytes of a hello.
const MAGIC: &[u8; 4] = b"HELO";
/// Bytes of a hello.
const LEN: usize = 24;
/// Most hellos remembered (a reader that attaches again says it again).
const MAX: usize = 4096;

/// The hello of reader `index` of this process.
pub(crate) fn hello(index: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(LEN);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&index.to_le_bytes());
    b.extend_from_slice(&std::process::id().to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&crate::gather::host_id().to_le_bytes());
    b
}

/// Reads a hello (`None`: not one).
fn read(b: &[u8]) -> Option<RemoteReader> {
    if b.len() != LEN || !b.starts_with(MAGIC) {
        return None;
    }
    let u32_at = |at: usize| b.get(at..at + 4)?.try_into().ok().map(u32::from_le_bytes);
    Some(RemoteReader {
        index: u32_at(4)?,
        pid: u32_at(8)?,
        host: u64::from_le_bytes(b.get(16..24)?.try_into().ok()?),
    })
}

/// The door and what it heard; stopped when dropped.
pub(super) struct Hellos {
    stop: Arc<AtomicBool>,
    address: Address,
    heard: Arc<Mutex<Vec<RemoteReader>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Hellos {
    /// Binds the door at `at` and serves it on a thread of its own.
    pub(super) fn start(at: &Address, net: &Options) -> Result<Hellos> {
        let stop = Arc::new(AtomicBool::new(false));
        let heard: Arc<Mutex<Vec<RemoteReader>>> = Arc::default();
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Address>>(1);
        let (at, net, stop2, heard2) = (at.clone(), net.clone(), stop.clone(), heard.clone());
        let thread = std::thread::Builder::new()
            .name("shoal-bcast-hellos".into())
            .spawn(move || {
                let bound = runtime().and_then(|rt| {
                    let r = rt.block_on(NetReplier::bind(&at, &net))?;
                    Ok((rt, r))
                });
                let (rt, replier) = match bound {
                    Ok(v) => v,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let _ = tx.send(Ok(replier.address()));
                serve(
                    &rt,
                    replier,
                    &stop2,
                    |req, out| {
                        match read(req) {
                            Some(r) => {
                                let mut h = heard2.lock().unwrap_or_else(|p| p.into_inner());
                                if h.len() >= MAX {
                                    h.remove(0);
                                }
                                h.push(r);
                                out.extend_from_slice(b"ok");
                            }
                            None => out.extend_from_slice(b"not a hello"),
                        }
                        Heard::Peer
                    },
                    |_| false,
                );
            })
            .map_err(|source| Error::Io {
                what: "starting a broadcast's door for remote readers",
                source,
            })?;
        let address = match rx.recv() {
            Ok(r) => r?,
            Err(_) => return Err(Error::Net(shoal_transport::Error::Closed)),
        };
        Ok(Hellos {
            stop,
            address,
            heard,
            thread: Some(thread),
        })
    }

    /// Where remote readers say hello.
    pub(super) fn address(&self) -> &Address {
        &self.address
    }

    /// The remote readers that said hello, in the order they did.
    pub(super) fn heard(&self) -> Vec<RemoteReader> {
        self.heard.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for Hellos {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hellos_read_back_and_refuse_anything_else() {
        let r = read(&hello(7)).unwrap();
        assert_eq!((r.index, r.pid), (7, std::process::id()));
        assert_eq!(read(b"HELO"), None);
        assert_eq!(read(&[0; LEN]), None);
        let mut long = hello(1);
        long.push(0);
        assert_eq!(read(&long), None);
    }
}

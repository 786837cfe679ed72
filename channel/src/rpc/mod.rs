//! Rpc: one request to every worker, every worker's reply collected (how
//! a scheduler asks all its workers to load a model, or to report).
//!
//! Built from the other channels: requests go out on a [`Broadcast`]
//! (every worker gets every request, in order; its sequence number is the
//! call's id) and replies come home on a [`Gather`] (each with its
//! worker's identity). Every reply carries a 16-byte header after the
//! gather's: the call it answers, and whether the worker succeeded
//! (then the bytes are its answer) or failed (then they are its failure
//! status, passed back to the caller as [`Reply::result`]'s error).
//!
//! A worker says hello when it attaches (its pid, process start time and
//! pid namespace), so the caller can name it, and can tell when it died:
//! a call whose worker is found dead (on this host, in this pid
//! namespace) ends at once with [`Error::NoReply`] naming it, without
//! waiting out the timeout; later calls no longer wait for it. A live
//! worker that does not answer in time is named the same way, and is
//! still asked next time.
//!
//! [`Broadcast`]: crate::Broadcast
//! [`Gather`]: crate::Gather
//! [`Error::NoReply`]: crate::Error::NoReply

mod client;
mod worker;

pub use client::{Rpc, RpcOptions};
pub use worker::{Request, RpcWorker};

use crate::gather::Sender;
use rkyv::util::AlignedVec;
use std::fmt;

/// Bytes of the Rpc header in a reply, after the gather's sender header.
const HEAD: usize = 16;

/// What a reply says (its header's second word).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    /// The worker answered; the bytes are its answer.
    Ok = 0,
    /// The worker failed; the bytes are its failure status (UTF-8).
    Failed = 1,
    /// Not a reply: a worker attached (the bytes are a [`Hello`]).
    Hello = 2,
}

impl Status {
    fn from_u32(v: u32) -> Option<Status> {
        match v {
            0 => Some(Status::Ok),
            1 => Some(Status::Failed),
            2 => Some(Status::Hello),
            _ => None,
        }
    }
}

/// The header of a reply: the call it answers and its status.
fn encode_head(call: u64, status: Status) -> [u8; HEAD] {
    let mut h = [0u8; HEAD];
    h[..8].copy_from_slice(&call.to_le_bytes());
    h[8..12].copy_from_slice(&(status as u32).to_le_bytes());
    h
}

/// A reply's call and status, if its header is well formed.
fn decode_head(b: &[u8]) -> Option<(u64, Status)> {
    let call = u64::from_le_bytes(b.get(..8)?.try_into().ok()?);
    let status = Status::from_u32(u32::from_le_bytes(b.get(8..12)?.try_into().ok()?))?;
    Some((call, status))
}

/// What a worker says when it attaches: enough for the caller to judge
/// whether it is still alive, when it can.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Hello {
    /// Its start time, as [`shoal_shm_ring::ProcessId`] has it.
    start_time: u64,
    /// Its pid namespace's inode (0: unknown): pids mean the same to the
    /// caller only in the same namespace.
    pid_ns: u64,
}

impl Hello {
    fn me() -> Hello {
        Hello {
            start_time: shoal_shm_ring::ProcessId::current().start_time,
            pid_ns: pid_ns(),
        }
    }
    fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.start_time.to_le_bytes());
        b[8..].copy_from_slice(&self.pid_ns.to_le_bytes());
        b
    }
    fn decode(b: &[u8]) -> Option<Hello> {
        Some(Hello {
            start_time: u64::from_le_bytes(b.get(..8)?.try_into().ok()?),
            pid_ns: u64::from_le_bytes(b.get(8..16)?.try_into().ok()?),
        })
    }
}

/// This process's pid namespace (the inode of `/proc/self/ns/pid`; 0
/// when it cannot be read), read once.
fn pid_ns() -> u64 {
    use std::os::unix::fs::MetadataExt;
    static NS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *NS.get_or_init(|| std::fs::metadata("/proc/self/ns/pid").map_or(0, |m| m.ino()))
}

/// One worker's reply to a call.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Who answered.
    pub worker: Sender,
    /// Its answer, or its failure status.
    pub result: std::result::Result<Payload, String>,
}

impl Reply {
    /// Its answer's bytes, or its failure status as
    /// [`Error::WorkerFailed`](crate::Error::WorkerFailed).
    pub fn ok(&self) -> crate::Result<&[u8]> {
        match &self.result {
            Ok(p) => Ok(p),
            Err(status) => Err(crate::Error::WorkerFailed {
                index: self.worker.index,
                pid: self.worker.pid,
                status: status.clone(),
            }),
        }
    }
}

/// A reply's bytes, copied out of the ring 16-byte aligned (so typed
/// replies are read in place: [`archived`](Self::archived)).
#[derive(Clone, Default)]
pub struct Payload(AlignedVec<16>);

impl Payload {
    fn copy(b: &[u8]) -> Payload {
        let mut v = AlignedVec::<16>::with_capacity(b.len());
        v.extend_from_slice(b);
        Payload(v)
    }

    /// The bytes as a validated archived `T`.
    pub fn archived<T>(&self) -> crate::Result<&T::Archived>
    where
        T: rkyv::Archive,
        T::Archived: for<'b> rkyv::bytecheck::CheckBytes<
            rkyv::api::high::HighValidator<'b, rkyv::rancor::Error>,
        >,
    {
        crate::archive::access::<T>(self)
    }
}

impl std::ops::Deref for Payload {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Payload({} bytes)", self.0.len())
    }
}

/// A worker that did not answer a call (see
/// [`Error::NoReply`](crate::Error::NoReply)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Silent {
    /// Its index.
    pub index: u32,
    /// Its pid, as its hello said (0 if it never said hello).
    pub pid: u32,
    /// Its host (see [`host_id`](crate::gather::host_id); 0 if unknown).
    pub host: u64,
    /// Found dead (not merely late).
    pub dead: bool,
}

/// "worker 2 (pid 1234, dead), worker 3 (pid 1240)".
pub(crate) fn describe(missing: &[Silent]) -> String {
    let each: Vec<String> = missing
        .iter()
        .map(|s| {
            let dead = if s.dead { ", dead" } else { "" };
            if s.pid == 0 {
                format!("worker {} (never said hello{dead})", s.index)
            } else {
                format!("worker {} (pid {}{dead})", s.index, s.pid)
            }
        })
        .collect();
    each.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_and_hellos_read_back_and_refuse_garbage() {
        let h = encode_head(7, Status::Failed);
        assert_eq!(decode_head(&h), Some((7, Status::Failed)));
        let mut bad = h;
        bad[8] = 9;
        assert_eq!(decode_head(&bad), None);
        assert_eq!(decode_head(&h[..10]), None);
        let me = Hello::me();
        assert_eq!(Hello::decode(&me.encode()), Some(me));
        assert_eq!(Hello::decode(&[1, 2, 3]), None);
    }

    #[test]
    fn silent_workers_are_named() {
        let s = [
            Silent {
                index: 2,
                pid: 1234,
                host: 1,
                dead: true,
            },
            Silent {
                index: 3,
                pid: 0,
                host: 0,
                dead: false,
            },
        ];
        assert_eq!(
            describe(&s),
            "worker 2 (pid 1234, dead), worker 3 (never said hello)"
        );
    }
}

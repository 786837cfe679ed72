//! The answering side of an Rpc: a worker receives every request and
//! replies to each (with an answer or a failure status).

use super::{encode_head, Hello, RpcOptions, Status};
use crate::error::{Error, Result};
use crate::gather::GatherWriter;
use crate::handle::Handle;
use crate::{BroadcastReceiver, Received};
use rkyv::api::high::HighValidator;
use rkyv::bytecheck::CheckBytes;
use shoal_shm_ring::Error as RingError;
use shoal_transport::Archivable;

/// A request a worker received: its bytes in place in shared memory, and
/// the call it belongs to. Derefs to its bytes.
#[derive(Debug)]
pub struct Request {
    received: Received,
}

impl Request {
    /// The call's id (its request's sequence number: 0, 1, ...).
    pub fn call(&self) -> u64 {
        self.received.seq()
    }

    /// The request as a validated archived `T`, in place.
    pub fn archived<T>(&self) -> Result<&T::Archived>
    where
        T: rkyv::Archive,
        T::Archived: for<'b> CheckBytes<HighValidator<'b, rkyv::rancor::Error>>,
    {
        self.received.archived::<T>()
    }
}

impl std::ops::Deref for Request {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.received
    }
}

/// A worker of an Rpc, in any process: receives every request, replies
/// to each.
#[derive(Debug)]
pub struct RpcWorker {
    requests: BroadcastReceiver,
    replies: GatherWriter,
}

impl RpcWorker {
    /// Attaches to the Rpc `handle` names as worker `index` (from 0 to
    /// its number of workers), with default options, and says hello.
    pub fn attach(handle: &Handle, index: u32) -> Result<RpcWorker> {
        RpcWorker::attach_with(handle, index, &RpcOptions::new(1))
    }

    /// Attaches with `opts` (its call timeout bounds a reply's wait for
    /// room; its peer options are used; the sizes are the Rpc's).
    /// An Rpc made on another host that takes remote workers is reached
    /// over the network (see [`attach_remote`](Self::attach_remote)).
    pub fn attach_with(handle: &Handle, index: u32, opts: &RpcOptions) -> Result<RpcWorker> {
        RpcWorker::join(handle, index, opts, false)
    }

    /// Attaches over the network, wherever this process is (the Rpc must
    /// take remote workers: [`RpcOptions::remote`]): requests come from
    /// the caller's publisher, replies go through its bridge.
    pub fn attach_remote(handle: &Handle, index: u32, opts: &RpcOptions) -> Result<RpcWorker> {
        RpcWorker::join(handle, index, opts, true)
    }

    fn join(handle: &Handle, index: u32, opts: &RpcOptions, remote: bool) -> Result<RpcWorker> {
        let (req, rep) = handle.rpc_parts()?;
        let mut b = opts.broadcast();
        b.recv_timeout = None;
        let (requests, mut replies) = if remote {
            (
                BroadcastReceiver::attach_remote(&req, index, &b)?,
                GatherWriter::attach_remote(&rep, index, &opts.gather())?,
            )
        } else {
            (
                BroadcastReceiver::attach_with(&req, index, &b)?,
                GatherWriter::attach_with(&rep, index, &opts.gather())?,
            )
        };
        replies.send_parts(&[&encode_head(u64::MAX, Status::Hello), &Hello::me().encode()])?;
        Ok(RpcWorker { requests, replies })
    }

    /// Whether this worker reaches its Rpc over the network.
    pub fn is_remote(&self) -> bool {
        self.requests.is_remote()
    }

    /// Its index.
    pub fn index(&self) -> u32 {
        self.requests.index()
    }

    /// The next request, waiting for it; `None` once the caller dropped
    /// its [`Rpc`](crate::Rpc) and every request it sent was received. A
    /// caller that died ends the wait with
    /// [`WriterGone`](shoal_shm_ring::Error::WriterGone).
    pub fn next_request(&mut self) -> Result<Option<Request>> {
        ended(self.requests.recv())
    }

    /// [`next_request`](Self::next_request), awaited without blocking the thread.
    /// Cancel-safe.
    pub async fn next_request_async(&mut self) -> Result<Option<Request>> {
        ended(self.requests.recv_async().await)
    }

    /// Answers `request` with `answer`.
    pub fn reply(&mut self, request: &Request, answer: &[u8]) -> Result<()> {
        let head = encode_head(request.call(), Status::Ok);
        self.replies.send_parts(&[&head, answer])
    }

    /// Answers `request` with `answer` as an rkyv archive, serialized
    /// straight into the replies' ring.
    pub fn reply_value<T: Archivable>(&mut self, request: &Request, answer: &T) -> Result<()> {
        let head = encode_head(request.call(), Status::Ok);
        self.replies.send_value_after(&head, answer)
    }

    /// Answers `request` with a failure: the caller gets `status` as the
    /// reply's error.
    pub fn fail(&mut self, request: &Request, status: &str) -> Result<()> {
        let head = encode_head(request.call(), Status::Failed);
        self.replies.send_parts(&[&head, status.as_bytes()])
    }

    /// Answers every request with what `handler` returns (an answer, or a
    /// failure status), until the caller drops its Rpc; returns how many
    /// requests it answered.
    pub fn serve(
        &mut self,
        mut handler: impl FnMut(&Request) -> std::result::Result<Vec<u8>, String>,
    ) -> Result<u64> {
        let mut n = 0;
        while let Some(req) = self.next_request()? {
            match handler(&req) {
                Ok(answer) => self.reply(&req, &answer)?,
                Err(status) => self.fail(&req, &status)?,
            }
            n += 1;
        }
        Ok(n)
    }
}

/// A receive's result as [`RpcWorker::next_request`] gives it: the end of the
/// requests (the caller closed them) is `None`.
fn ended(r: Result<Received>) -> Result<Option<Request>> {
    match r {
        Ok(received) => Ok(Some(Request { received })),
        Err(Error::Ring(RingError::Closed)) => Ok(None),
        Err(e) => Err(e),
    }
}

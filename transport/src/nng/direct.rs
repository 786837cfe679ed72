//! nng operations waited for on the calling thread, for callers on plain
//! threads ([`Blocking`](crate::blocking::Blocking)).
//!
//! An nng operation with a completion callback (what the async endpoints
//! use, through `sock::begin`) completes by queueing its callback to one
//! of nng's task threads, which then wakes the task waiting for it: two
//! wake-ups before the caller runs. An operation without a callback wakes
//! the thread waiting in `nng_aio_wait` directly, as nng's own blocking
//! calls do. On this project's virtual machines a wake-up costs tens of
//! microseconds, a good part of a round trip.
//!
//! A thread waiting that way cannot also watch the connection: a question
//! queued while no connection stands would wait for ever. So the socket's
//! pipe watcher cancels the waiting operation when the last connection
//! goes ([`Watch`]), and the caller then goes on as the async endpoint
//! does (waits for a connection for its connect timeout and asks again).

use super::sock::{Pipes, GATE};
use nng::ffi as sys;
use nng::{Context, Message};
use std::num::NonZeroU32;
use std::ptr::NonNull;
use std::time::Duration;

/// An nng aio without a callback, waited for by the thread that started
/// its operation (one at a time).
pub(crate) struct DirectAio(NonNull<sys::nng_aio>);

// SAFETY: an nng aio may be used from any thread (nng locks it
// internally); this handle is used by one thread at a time (`&mut self`
// for every operation), and the watcher only cancels it under the lock
// of the `Watch` that names it.
unsafe impl Send for DirectAio {}

impl DirectAio {
    /// A fresh aio.
    pub fn new() -> Result<Self, nng::Error> {
        let mut p = std::ptr::null_mut();
        // SAFETY: `p` is a valid out-pointer; a null callback is allowed
        // (completions then only wake `nng_aio_wait`).
        let rv = unsafe { sys::nng_aio_alloc(&mut p, None, std::ptr::null_mut()) };
        check(rv)?;
        NonNull::new(p)
            .map(DirectAio)
            .ok_or(nng::Error::OutOfMemory)
    }

    fn raw(&self) -> *mut sys::nng_aio {
        self.0.as_ptr()
    }

    /// Sets the timeout of the next operation (`None`: none).
    fn set_timeout(&mut self, timeout: Option<Duration>) {
        let ms = match timeout {
            None => sys::NNG_DURATION_INFINITE,
            // Rounded up: a zero would fail the operation at once.
            Some(t) => i32::try_from(t.as_micros().div_ceil(1000).max(1)).unwrap_or(i32::MAX),
        };
        // SAFETY: the aio is idle; the timeout applies to its next
        // operation.
        unsafe { sys::nng_aio_set_timeout(self.raw(), ms) };
    }

    /// Sends `msg` on `ctx` and waits for the send to complete (a REQ
    /// context's question queued), at most `timeout` (`None`: no limit).
    /// The message is nng's from then on; a send that fails frees it.
    /// `watch`, if given, may cancel it.
    pub fn send(
        &mut self,
        ctx: &Context,
        msg: Message,
        timeout: Option<Duration>,
        watch: Option<&Pipes>,
    ) -> Result<(), nng::Error> {
        self.set_timeout(timeout);
        let m = msg.nng_msg();
        // The message is handed to the aio: nng frees it once sent, and
        // on failure it is taken back below.
        std::mem::forget(msg);
        // SAFETY: `m` is a valid message nobody else owns (just released
        // from its `Message`); the aio is idle (operations are waited for
        // before the next starts).
        unsafe { sys::nng_aio_set_msg(self.raw(), m) };
        // SAFETY: the context is open (borrowed for the call); the aio is
        // idle and carries the message.
        let started = self.start(watch, |aio| unsafe {
            sys::nng_ctx_send(ctx.nng_ctx(), aio)
        });
        let rv = if started {
            // SAFETY: the aio's operation was started on this thread; its
            // result is read once it is over.
            unsafe {
                sys::nng_aio_wait(self.raw());
                sys::nng_aio_result(self.raw())
            }
        } else {
            sys::NNG_ECANCELED as i32
        };
        if rv != 0 {
            // SAFETY: a send that failed (or never started) leaves the
            // message with the aio; it is ours to free.
            unsafe {
                let m = sys::nng_aio_get_msg(self.raw());
                sys::nng_aio_set_msg(self.raw(), std::ptr::null_mut());
                if !m.is_null() {
                    sys::nng_msg_free(m);
                }
            }
        }
        check(rv)
    }

    /// Receives on `ctx`, waiting at most `timeout` (`None`: no limit).
    /// `watch`, if given, may cancel it.
    pub fn recv(
        &mut self,
        ctx: &Context,
        timeout: Option<Duration>,
        watch: Option<&Pipes>,
    ) -> Result<RawMsg, nng::Error> {
        self.set_timeout(timeout);
        // SAFETY: the context is open (borrowed for the call); the aio is
        // idle.
        let started = self.start(watch, |aio| unsafe {
            sys::nng_ctx_recv(ctx.nng_ctx(), aio)
        });
        if !started {
            return Err(nng::Error::Canceled);
        }
        // SAFETY: the aio's operation was started on this thread.
        unsafe { sys::nng_aio_wait(self.raw()) };
        // SAFETY: the operation is over.
        check(unsafe { sys::nng_aio_result(self.raw()) })?;
        // SAFETY: a receive that succeeded leaves its message with the
        // aio, ours from now on; the aio forgets it.
        let m = unsafe {
            let m = sys::nng_aio_get_msg(self.raw());
            sys::nng_aio_set_msg(self.raw(), std::ptr::null_mut());
            m
        };
        NonNull::new(m).map(RawMsg).ok_or(nng::Error::Closed)
    }

    /// Starts an operation by `op` under [`GATE`] (as every start on a
    /// context is) and, with a watch, under its lock: false, not started,
    /// when the watch fired (the last connection went) since it was set.
    fn start(&mut self, watch: Option<&Pipes>, op: impl FnOnce(*mut sys::nng_aio)) -> bool {
        let _starting = GATE.read().unwrap_or_else(|e| e.into_inner());
        match watch {
            Some(p) => {
                let w = super::sock::lock(&p.direct);
                if w.fired {
                    return false;
                }
                op(self.raw());
                true
            }
            None => {
                op(self.raw());
                true
            }
        }
    }
}

impl Drop for DirectAio {
    fn drop(&mut self) {
        let _cancelling = GATE.read().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the aio is ours and not watched any more (a `Watching`
        // guard clears its watch before the call that holds the aio
        // borrowed returns, on unwinding too). Stopping it cancels and waits for an
        // operation still going (only a panic between start and wait could
        // leave one); a message a cancelled send left with it is freed
        // before the aio is.
        unsafe {
            sys::nng_aio_stop(self.raw());
            let m = sys::nng_aio_get_msg(self.raw());
            if !m.is_null() {
                sys::nng_aio_set_msg(self.raw(), std::ptr::null_mut());
                sys::nng_msg_free(m);
            }
            sys::nng_aio_free(self.raw());
        }
    }
}

/// The aio a thread is waiting on for a socket, if any, for its pipe
/// watcher to cancel when the socket's last connection goes.
#[derive(Default)]
pub(crate) struct Watch {
    /// The aio's address (0: none).
    aio: usize,
    /// The last connection went while this watch was set.
    pub fired: bool,
}

/// A [`Watch`] set on an aio for as long as this guard lives. Made by
/// the aio's owner inside a call that holds the aio borrowed, and dropped
/// before that call returns (on unwinding too), so the aio outlives it.
pub(crate) struct Watching<'a>(&'a Pipes);

impl<'a> Watching<'a> {
    /// Watches `aio` for `pipes`' socket until the guard is dropped.
    pub fn new(pipes: &'a Pipes, aio: &DirectAio) -> Self {
        let mut w = super::sock::lock(&pipes.direct);
        w.aio = aio.raw() as usize;
        w.fired = false;
        Watching(pipes)
    }
}

impl Drop for Watching<'_> {
    fn drop(&mut self) {
        let mut w = super::sock::lock(&self.0.direct);
        w.aio = 0;
        w.fired = false;
    }
}

impl Watch {
    /// The socket's last connection went: cancels the watched aio's
    /// operation (and keeps a later one from starting). Called by the pipe
    /// watcher with this watch locked.
    ///
    /// Not under [`GATE`], which guards against a socket closing while an
    /// operation on one of its contexts is cancelled: the watched aio's
    /// socket closes only when its owner (the requester) is dropped, after
    /// its watch was cleared; and taking GATE here could wait on another
    /// socket's close, which waits for nng's pipe callbacks (this is one).
    pub fn fire(&mut self) {
        if self.aio == 0 {
            return;
        }
        self.fired = true;
        // SAFETY: the aio lives while it is watched: the `Watching` guard
        // that set the watch is dropped, clearing it under this same lock,
        // before the call holding the aio borrowed returns (on unwinding
        // too), so before the aio can be freed. Its socket does not close
        // meanwhile (see above).
        unsafe { sys::nng_aio_cancel(self.aio as *mut sys::nng_aio) };
    }
}

/// A message an nng receive handed over, owned here (freed on drop):
/// the bytes of frames received by a [`DirectAio`].
pub(crate) struct RawMsg(NonNull<sys::nng_msg>);

// SAFETY: an nng message handed over to its receiver is plain memory
// nng keeps no reference to; this owner only reads it (`as_ref`,
// `pipe_id`) after it was received, and frees it once, on drop.
unsafe impl Send for RawMsg {}
// SAFETY: as for `Send`: shared access only reads.
unsafe impl Sync for RawMsg {}

impl RawMsg {
    /// The id of the connection the message came on (0 if none).
    pub fn pipe_id(&self) -> u64 {
        // SAFETY: the message is valid until dropped; the pipe handle is
        // read by value and only its id field is read.
        let id = unsafe { sys::nng_pipe_id(sys::nng_msg_get_pipe(self.0.as_ptr())) };
        u64::try_from(id).unwrap_or(0)
    }
}

impl AsRef<[u8]> for RawMsg {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the message is valid until dropped and not written after
        // it was received; its body holds `nng_msg_len` bytes.
        unsafe {
            let len = sys::nng_msg_len(self.0.as_ptr());
            if len == 0 {
                return &[];
            }
            let body = sys::nng_msg_body(self.0.as_ptr()) as *const u8;
            std::slice::from_raw_parts(body, len)
        }
    }
}

impl Drop for RawMsg {
    fn drop(&mut self) {
        // SAFETY: the message is ours (handed over by the receive) and
        // freed only here, once.
        unsafe { sys::nng_msg_free(self.0.as_ptr()) };
    }
}

/// The connection `m` came on, as the `nng` crate's handle (which it
/// makes only from a message of its own: an empty one is given the pipe).
pub(crate) fn pipe_of(m: &RawMsg) -> Option<nng::Pipe> {
    let mut carrier = Message::new();
    // SAFETY: both messages are valid; the pipe handle is copied by value
    // from one to the other.
    unsafe { sys::nng_msg_set_pipe(carrier.nng_msg(), sys::nng_msg_get_pipe(m.0.as_ptr())) };
    carrier.pipe()
}

/// nng's return code as a result.
fn check(rv: i32) -> Result<(), nng::Error> {
    match u32::try_from(rv).ok().and_then(NonZeroU32::new) {
        None if rv == 0 => Ok(()),
        Some(code) => Err(nng::Error::from(code)),
        None => Err(nng::Error::Internal),
    }
}

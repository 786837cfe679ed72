//! The QUIC backend (feature `quic`): `quic://HOST:PORT?pin=SHA256HEX`,
//! through quinn with rustls on the `ring` provider. TLS 1.3 is always on:
//! a binding endpoint makes a self-signed certificate, and its
//! `address()` carries the certificate's SHA-256, which clients must
//! present to connect (a client with another pin cannot). GSO/GRO stay on
//! (quinn's default).
//!
//! - [`tls`]: the certificate, and the pinning verifier (it still checks
//!   the handshake signatures).
//! - [`conn`]: binding, connecting with a deadline, limits on what a peer
//!   may open, envelopes on streams (through the sans-IO
//!   [`Decoder`](crate::Decoder), which enforces the size limit before
//!   allocating).
//! - [`pubsub`]: a stream per subscriber; QUIC flow control is the
//!   backpressure.
//! - [`pushpull`]: a queue at the binding puller; a stream per push and per
//!   acknowledged pull.
//! - [`reqrep`]: one stream per requester, kept from one exchange to the
//!   next (a cancelled exchange resets it).
//! - [`wire`]: all of it as a [`Wire`](crate::Wire).
//!
//! Received payloads arrive in chunks at any alignment; the decoder
//! assembles each message once into a 16-byte-aligned buffer, so
//! `Frame::archived` reads it in place.

pub mod conn;
pub mod pubsub;
pub mod pushpull;
pub mod reqrep;
pub mod tls;
pub mod wire;

pub use pubsub::{QuicPublisher, QuicSubscriber};
pub use pushpull::{QuicPuller, QuicPusher};
pub use reqrep::{QuicReplier, QuicRequester};
pub use wire::Quic;

#[cfg(test)]
mod send_check {
    fn is_send<T: Send>(_: &T) {}

    /// The futures of every QUIC endpoint's operations are `Send`.
    #[allow(dead_code)]
    async fn futures_are_send(
        p: &mut super::QuicPublisher,
        s: &mut super::QuicSubscriber,
        push: &mut super::QuicPusher,
        pull: &mut super::QuicPuller,
        rq: &mut super::QuicRequester,
        rp: &mut super::QuicReplier,
    ) {
        is_send(&p.send(b"", b""));
        is_send(&s.recv());
        is_send(&push.send(b""));
        is_send(&pull.recv());
        is_send(&rq.request(b""));
        is_send(&rp.serve_one(|_| Vec::new()));
    }
}

//! Feeds arbitrary bytes to the collectives rendezvous's frame reader and
//! to its request and reply decoders (what rank 0 reads from any
//! connection, and a rank from the rendezvous): they must return a value
//! or an error, never panic, never take a frame past the limit, and what
//! they accept must encode back to bytes that decode to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_collectives::rendezvous::wire::{read_frame, Reply, Request};

const LIMIT: usize = 1 << 16;

fuzz_target!(|data: &[u8]| {
    // Frames, one after another, from a byte stream.
    let mut r = data;
    while let Ok(Some(body)) = read_frame(&mut r, LIMIT) {
        assert!(body.len() <= LIMIT);
    }
    // The bytes as one frame's body.
    if let Ok(q) = Request::decode(data) {
        let mut b = Vec::new();
        q.encode(&mut b);
        assert_eq!(Request::decode(&b).ok(), Some(q));
    }
    if let Ok(a) = Reply::decode(data) {
        let mut b = Vec::new();
        a.encode(&mut b);
        assert_eq!(Reply::decode(&b).ok(), Some(a));
    }
});

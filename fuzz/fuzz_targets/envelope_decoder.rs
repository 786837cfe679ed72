//! Feeds arbitrary bytes, in arbitrary chunks, to the transport's envelope
//! decoder: it must return messages or an error, never panic, and never
//! hold a body above its limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_transport::envelope::Decoder;

const LIMIT: u32 = 1 << 16;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the chunk size, so chunk boundaries are fuzzed too.
    let Some((&chunk, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut d = Decoder::new(LIMIT);
    for piece in rest.chunks(chunk) {
        let mut p = piece;
        while !p.is_empty() {
            match d.feed(p) {
                Ok((used, msg)) => {
                    assert!(used > 0 || p.is_empty());
                    p = &p[used..];
                    if let Some(m) = msg {
                        assert!(m.header.body_len <= LIMIT);
                        let _ = m.topic().len();
                        if let Ok(f) = m.into_frame() {
                            assert!((f.as_ptr() as usize).is_multiple_of(16));
                        }
                    }
                }
                Err(_) => return,
            }
            assert!(d.buffered() <= 16 + LIMIT as usize);
        }
    }
});

//! Feeds arbitrary bytes to the nng backend's message parser (control
//! block, envelope count, envelopes): it must accept or refuse, never
//! panic, and what it accepts must lie inside the message.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    shoal_transport::fuzzing::nng_message(data);
});

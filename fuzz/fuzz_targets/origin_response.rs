//! The origin client's HTTP/1.1 response decoder: never panics, decodes the same however
//! the bytes arrive, and keeps to the response's framing (`fuzzing::origin_response` says
//! how the input is laid out and checks it all).

#![no_main]
#![allow(
    clippy::disallowed_methods,
    reason = "libfuzzer-sys's `fuzz_target!` opens its debug output file with std::fs; no runtime here"
)]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| portcullis_proxy::fuzzing::origin_response(data));

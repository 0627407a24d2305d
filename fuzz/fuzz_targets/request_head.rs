//! A client's request head through the gateway's own handling (authority, host, site, the
//! header rewrite for the origin): never panics, and what goes to the origin keeps its
//! properties (`fuzzing::request_head` checks them).

#![no_main]
#![allow(
    clippy::disallowed_methods,
    reason = "libfuzzer-sys's `fuzz_target!` opens its debug output file with std::fs; no runtime here"
)]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| portcullis_proxy::fuzzing::request_head(data));

//! PROXY protocol header parser: must never panic, must never claim more bytes than it
//! was given, and whatever it decodes must survive a re-encode.

#![no_main]
#![allow(
    clippy::disallowed_methods,
    reason = "libfuzzer-sys's `fuzz_target!` opens its debug output file with std::fs; no runtime here"
)]

use libfuzzer_sys::fuzz_target;
use portcullis_proxy::{Parsed, ProxyHeader, encode_v1, encode_v2, parse};

fuzz_target!(|data: &[u8]| {
    let Ok(Parsed::Complete { header, len }) = parse(data) else {
        return;
    };
    assert!(len > 0 && len <= data.len());
    // A header must not depend on the bytes after it, and must end exactly at `len`.
    assert_eq!(
        parse(&data[..len]).ok(),
        Some(Parsed::Complete { header, len })
    );
    assert_eq!(parse(&data[..len - 1]).ok(), Some(Parsed::Incomplete));
    if let ProxyHeader::Proxied(addrs) = header {
        let encoded = if data[0] == b'P' {
            encode_v1(&addrs)
        } else {
            encode_v2(&addrs)
        };
        let reparsed = parse(&encoded).ok();
        assert_eq!(
            reparsed,
            Some(Parsed::Complete {
                header,
                len: encoded.len()
            })
        );
    }
});

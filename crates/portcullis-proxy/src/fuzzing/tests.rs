//! Stand-ins for cargo-fuzz on stable (see `fuzz/README.md`): seeded random and mutated
//! valid inputs through the very functions the fuzz targets call, a second or less each in
//! a debug build.

use super::origin_response;
use super::origin_response::{Outcome, PREFIX};

/// Applies up to `max` random edits to `wire`: bytes replaced (often by one the grammar
/// cares about), inserted or removed, or the tail cut off.
fn mutate(rng: &mut fastrand::Rng, wire: &mut Vec<u8>, max: usize, interesting: &[u8]) {
    for _ in 0..rng.usize(..=max) {
        let at = rng.usize(..=wire.len());
        let byte = if rng.bool() {
            interesting[rng.usize(..interesting.len())]
        } else {
            rng.u8(..)
        };
        match rng.u8(..8) {
            0..=2 if at < wire.len() => wire[at] = byte,
            3..=5 => wire.insert(at, byte),
            6 if at < wire.len() => {
                wire.remove(at);
            }
            _ => wire.truncate(at),
        }
    }
}

const RESPONSES: &[&[u8]] = &[
    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\ncontent-length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nx-t: 1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\na;x=y\r\n0123456789\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\ntransfer-encoding: gzip, chunked\r\n\r\n\
      1\n-\n2;a=\"b\"\r\nok\r\n0\r\nx-a: 1\r\nx-b: 2\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\ncontent-length: 2\r\n\r\nto the close",
    b"HTTP/1.0 200 OK\r\n\r\nuntil the close",
    b"HTTP/1.1 204 No Content\r\ncontent-length: 3\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n\
      HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n",
];

/// The origin response decoder: never panics, decodes the same however the bytes arrive,
/// and keeps to its framing. `check` is all `fuzzing::origin_response` does.
#[test]
fn origin_response_smoke_run() {
    let mut rng = fastrand::Rng::with_seed(0x0041_51e5_50b0_d1e5);
    let (mut input, mut complete, mut chunked_with_trailers) = (Vec::new(), 0, 0);
    for round in 0..25_000 {
        input.clear();
        // The method and the two read boundaries.
        input.extend((0..PREFIX).map(|_| rng.u8(..)));
        let mut wire = RESPONSES[rng.usize(..RESPONSES.len())].to_vec();
        if round % 8 == 0 {
            wire.clear();
            wire.extend((0..rng.usize(..48)).map(|_| rng.u8(..)));
        } else {
            mutate(&mut rng, &mut wire, 4, b"\r\n;: 0123456789aAfF\t\"=,");
        }
        input.extend_from_slice(&wire);
        let outcome = origin_response::check(&input);
        if let Outcome::Response {
            complete: true,
            trailers,
            ..
        } = &outcome
        {
            complete += 1;
            chunked_with_trailers += usize::from(trailers.is_some());
        }
    }
    // Guards against mutations that stop reaching whole bodies.
    assert!(complete > 5_000, "only {complete} complete responses");
    assert!(
        chunked_with_trailers > 300,
        "only {chunked_with_trailers} with trailers"
    );
}

//! Stand-ins for cargo-fuzz on stable (see `fuzz/README.md`): seeded random and mutated
//! valid inputs through the very functions the fuzz targets call, a second or less each in
//! a debug build.

use super::origin_response::{Outcome, PREFIX};
use super::{origin_response, request_head};

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

const REQUESTS: &[&[u8]] = &[
    b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
    b"GET /a?b=c HTTP/1.1\r\nhost: WWW.Example.COM.:8443\r\nAccept: */*\r\n\r\n",
    b"GET http://api.example.com/x HTTP/1.1\r\nHost: other.test\r\n\r\n",
    b"GET http://user@example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n",
    b"GET * HTTP/1.1\r\nHost: [::1]:443\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    b"GET //x/../y HTTP/1.0\r\nHost: c.test\r\nConnection: keep-alive\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: example.com\r\nHost: evil.test\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: example.com\r\n\r\n",
    b"GET * HTTP/1.1\r\nHost: example.com\r\n\r\n",
    b"GET example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: example.com\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n\
      HTTP2-Settings: AAMAAABkAAQAAP__\r\nCookie: a=1\r\nCookie: b=2\r\nTE: trailers\r\nTE: gzip\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: :443\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: example.com\r\nX-Folded: a\r\n b\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a.b.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a.b.test\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 5\r\n\
      Content-Length: 6\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a.b.test\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
    b"GET /chat HTTP/1.1\r\nHost: example.com\r\nConnection: keep-alive, Upgrade\r\n\
      Upgrade: websocket\r\nTE: trailers\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: example.com\r\nConnection: close, X-Secret, TE\r\nX-Secret: 1\r\n\
      TE: gzip\r\nKeep-Alive: 5\r\nProxy-Connection: keep-alive\r\nProxy-Authorization: x\r\n\
      Trailer: x-sum\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: xn--bcher-kva.example\r\nX-Forwarded-For: 198.51.100.1\r\n\
      Forwarded: for=198.51.100.1;proto=http, for=\"[2001:db8::1]:4711\"\r\n\
      Forwarded: for=_hidden;by=\"a,b\"\r\nX-Forwarded-Proto: http\r\nVia: 1.1 corp\r\n\r\n",
];

/// Header lines spliced into the heads at line boundaries.
const LINES: &[&[u8]] = &[
    b"Host: api.example.com\r\n",
    b"Host: user@example.com\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Content-Length: 0\r\n",
    b"Connection: x-secret, upgrade\r\n",
    b"Connection: host, via, te, content-length\r\n",
    b"Upgrade: h2c\r\n",
    b"TE: trailers, gzip\r\n",
    b"X-Secret: 2\r\n",
    b"Forwarded: for=\"unterminated\r\n",
    b"X-Forwarded-For: 10.0.0.1, 10.0.0.2\r\n",
    b" obs-fold\r\n",
    b"Cookie: a=1\r\n",
    b"Cookie: b=2\r\n",
    b"Close: x\r\n",
    b"TE: gzip\r\n",
    b"TE: trailers\r\n",
    b"Upgrade: websocket, h2c\r\n",
    b"Upgrade: WebSocket\r\n",
    b"Connection: Upgrade, HTTP2-Settings\r\n",
    b"HTTP2-Settings: AAMAAABkAAQAAP__\r\n",
];

/// The request-head handling: never panics, and every rewritten request keeps its
/// properties. `check` is all `fuzzing::request_head` does.
#[test]
fn request_head_smoke_run() {
    let mut rng = fastrand::Rng::with_seed(0x4ead_5eed_0000_0022);
    let mut heads = 0;
    for round in 0..16_000 {
        let mut head = REQUESTS[rng.usize(..REQUESTS.len())].to_vec();
        if round % 16 == 0 {
            head.clear();
            head.extend((0..rng.usize(..64)).map(|_| rng.u8(..)));
        }
        // Whole lines in, lines repeated or dropped, then byte edits away from the end so
        // most heads stay complete.
        for _ in 0..rng.usize(..3) {
            let starts: Vec<usize> = (1..head.len())
                .filter(|&i| head[i - 1] == b'\n' && i + 2 < head.len())
                .collect();
            let Some(&at) = starts.get(rng.usize(..starts.len().max(1))) else {
                break;
            };
            let end = head[at..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(at, |e| at + e + 1);
            let line = match rng.u8(..3) {
                0 => LINES[rng.usize(..LINES.len())].to_vec(),
                1 => head[at..end].to_vec(),
                _ => {
                    head.drain(at..end);
                    continue;
                }
            };
            head.splice(at..at, line);
        }
        let end = head.len().saturating_sub(4);
        let mut body = head.split_off(end);
        mutate(
            &mut rng,
            &mut head,
            2,
            b"\r\n :,;\t@[]/?#%\"\\*.\x00\x7f\x80Hh",
        );
        head.append(&mut body);
        heads += usize::from(request_head::check(&head));
    }
    // Guards against mutations that leave nothing for the gateway to handle.
    assert!(heads > 5_000, "only {heads} heads got past the parser");
}

//! The origin client's HTTP/1.1 response decoder, driven the way `origin_h1` drives it:
//! heads until a final one (informational ones skipped, an unasked `101` refused), then the
//! body until its framing says it ended or the connection closes.

use bytes::BytesMut;
use http::header::{self, HeaderMap};
use http::{Method, StatusCode};

use crate::upstream::origin_h1_codec::{Decoder, Step, parse_head, response_decoder};

/// Bytes in front of the response: the method, then two read boundaries.
pub(super) const PREFIX: usize = 5;
/// Inputs up to this long are also fed one byte per read (each read parses the head
/// again, so longer ones would cost the fuzzer more than they find).
const BYTEWISE_MAX: usize = 512;

/// What the origin client makes of a response that ends with the connection's close.
#[derive(Debug, PartialEq)]
pub(super) enum Outcome {
    /// Refused as broken: its head, its framing or its body.
    Refused,
    /// The connection closed before a final head was whole.
    NoHead,
    Response {
        status: u16,
        body: Vec<u8>,
        trailers: Option<HeaderMap>,
        /// The body ended as its framing says; else the close cut it short, an error.
        complete: bool,
    },
}

/// How a response's body was delimited, as the decoder was made.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    Length(u64),
    Chunked,
    Eof,
}

/// One decoding run and where things were in the input.
struct Run {
    outcome: Outcome,
    /// Where the final head ended.
    body_start: usize,
    framing: Option<Framing>,
    /// The final head carried `Transfer-Encoding`.
    transfer_coded: bool,
    /// How many bytes the response took, when its body ended before the close.
    end: Option<usize>,
}

/// Runs the checks on one fuzz input (see [`super::origin_response`]).
pub(super) fn check(data: &[u8]) -> Outcome {
    let byte = |i: usize| data.get(i).copied().unwrap_or(0);
    let method = if byte(0) & 1 == 1 {
        Method::HEAD
    } else {
        Method::GET
    };
    let wire = data.get(PREFIX..).unwrap_or_default();
    // Scaled rather than wrapped, so a boundary can fall anywhere in a long input too.
    let cut = |i: usize| {
        (usize::from(u16::from_le_bytes([byte(i), byte(i + 1)])) * (wire.len() + 1)) >> 16
    };
    let mut cuts = [cut(1), cut(3)];
    cuts.sort_unstable();

    let w = wire.escape_ascii();
    let whole = run(&method, wire, &[]);
    check_body(&method, wire, &whole);
    let split = run(&method, wire, &cuts);
    assert_eq!(
        split.outcome, whole.outcome,
        "split at {cuts:?}, {method} {w}"
    );
    if wire.len() <= BYTEWISE_MAX {
        let every: Vec<usize> = (1..wire.len()).collect();
        let bytewise = run(&method, wire, &every);
        assert_eq!(
            bytewise.outcome, whole.outcome,
            "one byte per read, {method} {w}"
        );
    }
    if let Some(end) = whole.end {
        // The bytes after a response (the next one, or junk) must not change it.
        let alone = run(&method, &wire[..end], &[]);
        assert_eq!(
            alone.outcome,
            whole.outcome,
            "without the {} bytes after it, {method} {w}",
            wire.len() - end
        );
    }
    whole.outcome
}

/// What the body must be, given its head and framing.
fn check_body(method: &Method, wire: &[u8], run: &Run) {
    let Outcome::Response {
        status,
        body,
        complete,
        trailers,
    } = &run.outcome
    else {
        return;
    };
    let w = wire.escape_ascii();
    let after_head = &wire[run.body_start..];
    let status = StatusCode::from_u16(*status).expect("a parsed status");
    if method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        assert!(
            body.is_empty() && *complete && run.end == Some(run.body_start),
            "{method} answered {status} must end with its head: {w}"
        );
        return;
    }
    assert!(
        !(run.transfer_coded && matches!(run.framing, Some(Framing::Length(_)))),
        "a transfer-coded body framed by a length: {w}"
    );
    assert!(
        trailers.is_none() || run.framing == Some(Framing::Chunked),
        "trailers outside a chunked body: {w}"
    );
    match run.framing {
        Some(Framing::Length(n)) => {
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            if *complete {
                assert_eq!(body.len(), n, "a length-delimited body: {w}");
                assert_eq!(run.end, Some(run.body_start + n), "{w}");
            } else {
                assert!(body.len() < n, "a short body is incomplete: {w}");
                assert_eq!(&body[..], after_head, "everything given: {w}");
            }
        }
        Some(Framing::Eof) => {
            assert!(*complete, "a body up to the close ends with it: {w}");
            assert_eq!(&body[..], after_head, "all of it: {w}");
        }
        Some(Framing::Chunked) => {
            assert!(
                !*complete || run.end.is_some(),
                "a complete chunked body ends: {w}"
            );
        }
        None => unreachable!("a response has a framing"),
    }
}

/// Feeds `wire` in reads ending at each of `cuts` (ascending), then at its end, which is
/// the connection's close. Checks as it goes that every data byte is the input's own, at
/// its place and in order, so a body never holds more than it was given.
fn run(method: &Method, wire: &[u8], cuts: &[usize]) -> Run {
    let w = wire.escape_ascii();
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut out = Run {
        outcome: Outcome::NoHead,
        body_start: 0,
        framing: None,
        transfer_coded: false,
        end: None,
    };
    let mut decoder = None::<Decoder>;
    let (mut status, mut body, mut trailers) = (0, Vec::new(), None);
    // Where the last data taken from the input ended.
    let mut taken = 0;
    for &read_end in cuts.iter().chain([&wire.len()]) {
        buf.extend_from_slice(&wire[fed..read_end]);
        fed = read_end;
        while decoder.is_none() {
            let head = match parse_head(&mut buf) {
                Ok(Some(head)) => head,
                Ok(None) => break,
                Err(_) => return refused(out),
            };
            if head.status == StatusCode::SWITCHING_PROTOCOLS {
                // Nothing asked to switch.
                return refused(out);
            }
            if head.status.is_informational() {
                continue;
            }
            let Ok(d) = response_decoder(method, &head) else {
                return refused(out);
            };
            status = head.status.as_u16();
            out.body_start = fed - buf.len();
            out.transfer_coded = head.headers.contains_key(header::TRANSFER_ENCODING);
            out.framing = Some(match &d {
                Decoder::Length(n) => Framing::Length(*n),
                Decoder::Chunked(_) => Framing::Chunked,
                Decoder::Eof => Framing::Eof,
            });
            taken = out.body_start;
            if d.is_done() {
                out.end = Some(out.body_start);
            }
            decoder = Some(d);
        }
        let Some(d) = decoder.as_mut() else {
            continue;
        };
        while out.end.is_none() {
            let step = match d.decode(&mut buf) {
                Ok(step) => step,
                Err(_) => return refused(out),
            };
            match step {
                Step::Data(data) => {
                    let at = fed - buf.len();
                    assert!(
                        at >= taken + data.len() && wire[at - data.len()..at] == data[..],
                        "data {data:?} is not the input's bytes before {at}: {w}"
                    );
                    taken = at;
                    body.extend_from_slice(&data);
                    if d.settle(&mut buf).is_err() {
                        return refused(out);
                    }
                }
                Step::Trailers(t) => {
                    assert!(trailers.is_none(), "two trailer sections: {w}");
                    trailers = Some(t);
                }
                Step::End => assert!(d.is_done(), "ended but not done: {w}"),
                Step::More => break,
            }
            if let Some(Framing::Length(n)) = out.framing {
                let left = n.checked_sub(body.len() as u64);
                assert!(left.is_some(), "more body than its length: {w}");
                assert_eq!(d.size_hint().exact(), left, "{w}");
            }
            if d.is_done() {
                out.end = Some(fed - buf.len());
            }
        }
    }
    if let Some(d) = &decoder {
        out.outcome = Outcome::Response {
            status,
            body,
            trailers,
            complete: out.end.is_some() || d.is_eof(),
        };
    }
    out
}

fn refused(mut run: Run) -> Run {
    run.outcome = Outcome::Refused;
    run.end = None;
    run
}

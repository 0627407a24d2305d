//! HTTP/1.1 framing towards origins, without I/O: request heads written, response heads
//! parsed, response bodies decoded (RFC 9112 §6: a length, chunked, or up to the close).

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};
use http_body::SizeHint;

/// The largest response head (and trailer section) read; past it the response fails.
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// Header fields per response head, at most.
const MAX_HEADERS: usize = 128;
/// The longest chunk-size line, extensions included.
pub(crate) const MAX_CHUNK_LINE: usize = 4096;

/// A response the origin sent that cannot be read as HTTP/1.1.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CodecError {
    #[error("invalid response head: {0}")]
    Head(httparse::Error),
    #[error("response head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("invalid header in the response head")]
    Header,
    #[error("invalid Content-Length")]
    ContentLength,
    #[error("invalid chunk size line")]
    ChunkSize,
    #[error("missing CRLF after a chunk")]
    ChunkEnd,
    #[error("invalid trailers: {0}")]
    Trailers(httparse::Error),
}

/// How a request body travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body at all.
    Empty,
    /// Exactly this many bytes (`Content-Length`).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// The framing of a request body, as hyper's client chose it: the `Content-Length` the
/// request carries, else the body's exact size, else chunked, except that a GET, HEAD or
/// CONNECT whose size is unknown is sent without a body.
pub(crate) fn request_framing(
    method: &Method,
    headers: &HeaderMap,
    end_stream: bool,
    hint: &SizeHint,
) -> Framing {
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        // The header goes out as it is; a zero length is no body at all.
        return if len == 0 {
            Framing::Empty
        } else {
            Framing::Length(len)
        };
    }
    if end_stream {
        return Framing::Empty;
    }
    match hint.exact() {
        Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
        None if [Method::GET, Method::HEAD, Method::CONNECT].contains(method) => Framing::Empty,
        None => Framing::Chunked,
    }
}

/// Writes the request head: the origin-form target, the headers (names as `http` keeps
/// them, lowercase), and the framing header `framing` needs when the request has none.
pub(crate) fn encode_head(
    out: &mut Vec<u8>,
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    framing: Framing,
) {
    let size = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>();
    out.reserve(method.as_str().len() + target.len() + size + 48);
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::Length(n) if !headers.contains_key(header::CONTENT_LENGTH) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(n.to_string().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        _ => {}
    }
    out.extend_from_slice(b"\r\n");
}

/// A parsed response head.
#[derive(Debug)]
pub(crate) struct Head {
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
}

impl Head {
    /// Whether the connection may carry another request after this response: HTTP/1.1
    /// unless `Connection: close`, HTTP/1.0 only with `Connection: keep-alive`.
    pub(crate) fn keeps_alive(&self) -> bool {
        let mut close = false;
        let mut keep_alive = false;
        for value in self.headers.get_all(header::CONNECTION) {
            for token in value.as_bytes().split(|&b| b == b',') {
                let token = token.trim_ascii();
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
        match self.version {
            Version::HTTP_11 => !close,
            _ => keep_alive && !close,
        }
    }
}

/// Takes a complete response head off the front of `buf`, or `None` while it is still
/// arriving. Header values are views into a copy of the head's bytes, not into `buf`: a
/// value an HTTP/2 client connection's HPACK table keeps would otherwise keep the origin
/// connection's whole read buffer alive for as long as that client connection lives.
pub(crate) fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, CodecError> {
    if buf.is_empty() {
        return Ok(None);
    }
    // Left uninitialised: filling 128 empty fields cost more than parsing a small head.
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut fields,
    );
    // The limit holds for a head that arrived whole too: whether it passes must not depend
    // on how the bytes were split over reads.
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) if len > MAX_HEAD => {
            return Err(CodecError::HeadTooLarge);
        }
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err(CodecError::HeadTooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(CodecError::HeadTooLarge),
        Err(e) => return Err(CodecError::Head(e)),
    };
    let status = StatusCode::from_u16(resp.code.unwrap_or(0)).map_err(|_| CodecError::Header)?;
    let version = if resp.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // Where each name and value sits in the head, so the values can share its bytes.
    let base = buf.as_ptr() as usize;
    let mut spans = Vec::with_capacity(resp.headers.len());
    for h in resp.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| CodecError::Header)?;
        let start = h.value.as_ptr() as usize - base;
        spans.push((name, start, start + h.value.len()));
    }
    // Copied: about 200 bytes, where owning each value afterwards took a copy and a pass
    // over the map.
    let head = Bytes::copy_from_slice(&buf[..len]);
    buf.advance(len);
    let mut headers = HeaderMap::with_capacity(spans.len());
    for (name, start, end) in spans {
        let value = HeaderValue::from_maybe_shared(head.slice(start..end))
            .map_err(|_| CodecError::Header)?;
        headers.append(name, value);
    }
    Ok(Some(Head {
        status,
        version,
        headers,
    }))
}

/// How the response body is delimited.
pub(crate) fn response_decoder(method: &Method, head: &Head) -> Result<Decoder, CodecError> {
    let status = head.status;
    if method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Decoder::Length(0));
    }
    let te = head.headers.get_all(header::TRANSFER_ENCODING);
    if te.iter().next().is_some() {
        // Chunked only when it is the last coding; anything else runs to the close.
        let last_chunked = te
            .iter()
            .next_back()
            .and_then(|v| v.as_bytes().rsplit(|&b| b == b',').next())
            .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        return Ok(if last_chunked {
            Decoder::Chunked(Chunk::Size)
        } else {
            Decoder::Eof
        });
    }
    let mut length = None;
    for value in head.headers.get_all(header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|&b| b == b',') {
            let n = std::str::from_utf8(part.trim_ascii())
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or(CodecError::ContentLength)?;
            if length.is_some_and(|l| l != n) {
                return Err(CodecError::ContentLength);
            }
            length = Some(n);
        }
    }
    Ok(length.map_or(Decoder::Eof, Decoder::Length))
}

/// Where a response body is.
#[derive(Debug)]
pub(crate) enum Decoder {
    /// This many bytes still to come.
    Length(u64),
    Chunked(Chunk),
    /// Everything up to the origin's close.
    Eof,
}

/// Where a chunked body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

/// One step of decoding.
#[derive(Debug)]
pub(crate) enum Step {
    Data(Bytes),
    Trailers(HeaderMap),
    /// The body is complete.
    End,
    /// More bytes are needed.
    More,
}

impl Decoder {
    /// The body is complete.
    pub(crate) fn is_done(&self) -> bool {
        matches!(self, Self::Length(0) | Self::Chunked(Chunk::Done))
    }

    /// Delimited by the connection's close, so the connection cannot be used again.
    pub(crate) fn is_eof(&self) -> bool {
        matches!(self, Self::Eof)
    }

    pub(crate) fn size_hint(&self) -> SizeHint {
        match self {
            Self::Length(n) => SizeHint::with_exact(*n),
            Self::Chunked(Chunk::Done) => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }

    /// Decodes from the front of `buf`. Data comes out as views into `buf`'s bytes.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Step, CodecError> {
        match self {
            Self::Length(0) => Ok(Step::End),
            Self::Length(n) => {
                if buf.is_empty() {
                    return Ok(Step::More);
                }
                let take = usize::try_from(*n).map_or(buf.len(), |n| n.min(buf.len()));
                *n -= take as u64;
                Ok(Step::Data(buf.split_to(take).freeze()))
            }
            Self::Eof => Ok(if buf.is_empty() {
                Step::More
            } else {
                Step::Data(buf.split().freeze())
            }),
            Self::Chunked(state) => decode_chunked(state, buf),
        }
    }

    /// After data, steps over what follows without producing anything (the chunk's CRLF,
    /// the last chunk, an empty trailer section) as far as `buf` holds it, so a body whose
    /// end has arrived is known to be complete with its last data.
    pub(crate) fn settle(&mut self, buf: &mut BytesMut) -> Result<(), CodecError> {
        let Self::Chunked(state) = self else {
            return Ok(());
        };
        loop {
            match *state {
                Chunk::DataEnd | Chunk::Size => {
                    if !step_framing(state, buf)? {
                        return Ok(());
                    }
                }
                Chunk::Trailers if trailers_end(buf) => *state = Chunk::Done,
                _ => return Ok(()),
            }
        }
    }
}

/// Steps over a chunk-size line or the CRLF after a chunk's data; `false` when `buf` does
/// not hold all of it yet.
fn step_framing(state: &mut Chunk, buf: &mut BytesMut) -> Result<bool, CodecError> {
    match *state {
        Chunk::Size => {
            let Some(eol) = buf.iter().position(|&b| b == b'\n') else {
                if buf.len() > MAX_CHUNK_LINE {
                    return Err(CodecError::ChunkSize);
                }
                return Ok(false);
            };
            if eol > MAX_CHUNK_LINE {
                return Err(CodecError::ChunkSize);
            }
            let line = &buf[..eol];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let digits = line
                .split(|&b| b == b';')
                .next()
                .unwrap_or_default()
                .trim_ascii();
            if digits.is_empty() || digits.len() > 16 {
                return Err(CodecError::ChunkSize);
            }
            let size = std::str::from_utf8(digits)
                .ok()
                .and_then(|d| u64::from_str_radix(d, 16).ok())
                .ok_or(CodecError::ChunkSize)?;
            buf.advance(eol + 1);
            *state = if size == 0 {
                Chunk::Trailers
            } else {
                Chunk::Data(size)
            };
        }
        Chunk::DataEnd => {
            if buf.starts_with(b"\r\n") {
                buf.advance(2);
            } else if buf.starts_with(b"\n") {
                buf.advance(1);
            } else if buf.is_empty() || buf[..] == b"\r"[..] {
                return Ok(false);
            } else {
                return Err(CodecError::ChunkEnd);
            }
            *state = Chunk::Size;
        }
        _ => {}
    }
    Ok(true)
}

/// Steps over the empty line that ends a trailer section with no fields, if `buf` starts
/// with it: CRLF, or a bare LF as other lines of the body may end (without that, a body
/// ending `0\n\n` waited for a byte after it).
fn trailers_end(buf: &mut BytesMut) -> bool {
    let len = if buf.starts_with(b"\r\n") {
        2
    } else if buf.starts_with(b"\n") {
        1
    } else {
        return false;
    };
    buf.advance(len);
    true
}

fn decode_chunked(state: &mut Chunk, buf: &mut BytesMut) -> Result<Step, CodecError> {
    loop {
        match *state {
            Chunk::Size | Chunk::DataEnd => {
                if !step_framing(state, buf)? {
                    return Ok(Step::More);
                }
            }
            Chunk::Data(n) => {
                if buf.is_empty() {
                    return Ok(Step::More);
                }
                let take = usize::try_from(n).map_or(buf.len(), |n| n.min(buf.len()));
                let left = n - take as u64;
                *state = if left == 0 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left)
                };
                return Ok(Step::Data(buf.split_to(take).freeze()));
            }
            Chunk::Trailers => {
                if trailers_end(buf) {
                    *state = Chunk::Done;
                    return Ok(Step::End);
                }
                if buf.len() < 2 {
                    return Ok(Step::More);
                }
                let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let (len, parsed) = match httparse::parse_headers(buf, &mut fields) {
                    Ok(httparse::Status::Complete((len, _))) if len > MAX_HEAD => {
                        return Err(CodecError::HeadTooLarge);
                    }
                    Ok(httparse::Status::Complete(done)) => done,
                    Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                        return Err(CodecError::HeadTooLarge);
                    }
                    Ok(httparse::Status::Partial) => return Ok(Step::More),
                    Err(e) => return Err(CodecError::Trailers(e)),
                };
                let mut trailers = HeaderMap::new();
                for h in parsed {
                    let name = HeaderName::from_bytes(h.name.as_bytes())
                        .map_err(|_| CodecError::Header)?;
                    let value = HeaderValue::from_bytes(h.value).map_err(|_| CodecError::Header)?;
                    trailers.append(name, value);
                }
                buf.advance(len);
                *state = Chunk::Done;
                return Ok(Step::Trailers(trailers));
            }
            Chunk::Done => return Ok(Step::End),
        }
    }
}

/// The chunk header for `len` bytes of data.
pub(crate) fn chunk_header(len: usize) -> Vec<u8> {
    format!("{len:x}\r\n").into_bytes()
}

/// The CRLF after a chunk's data.
pub(crate) const CHUNK_END: &[u8] = b"\r\n";
/// The last chunk and an empty trailer section.
pub(crate) const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

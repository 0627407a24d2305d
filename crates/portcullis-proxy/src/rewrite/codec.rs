//! A compressed page is decoded as it streams, rewritten, and encoded again with the same
//! encoding: decoder → [`Sink`] (the HTML stream) → encoder → the bytes of the frame to
//! send. Each stage writes into the next in pieces of its own buffer's size, so no stage
//! holds a whole page; the encoder is flushed at the end of every origin frame, so what the
//! origin sent is passed on without waiting for more.

use std::io::{self, Write};

use flate2::Compression;

use super::html::HtmlStream;

/// Most decoded bytes one origin frame may expand to: a decompression bomb is refused
/// (the response is cut off) rather than costing the worker seconds of CPU.
pub(crate) const MAX_EXPANSION_PER_FRAME: usize = 64 << 20;

/// zstd's window as HTTP allows it (RFC 9659: at most 8 MiB), so a stream cannot make the
/// decoder allocate more.
const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// A `Content-Encoding` the rewriter reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Coding {
    /// None (or `identity`).
    Identity,
    /// `gzip` (or `x-gzip`).
    Gzip,
    /// `br`.
    Brotli,
    /// `zstd`.
    Zstd,
}

impl Coding {
    /// The coding of a response with these `Content-Encoding` values; `None` for anything
    /// else (`deflate`, whose zlib/raw ambiguity is not worth guessing at, stacked
    /// encodings, unknown ones): such a response passes untouched.
    pub(crate) fn of(headers: &http::HeaderMap) -> Option<Self> {
        let mut values = headers.get_all(http::header::CONTENT_ENCODING).iter();
        let Some(v) = values.next() else {
            return Some(Self::Identity);
        };
        if values.next().is_some() {
            return None;
        }
        let v = v.to_str().ok()?.trim();
        if v.eq_ignore_ascii_case("identity") || v.is_empty() {
            Some(Self::Identity)
        } else if v.eq_ignore_ascii_case("gzip") || v.eq_ignore_ascii_case("x-gzip") {
            Some(Self::Gzip)
        } else if v.eq_ignore_ascii_case("br") {
            Some(Self::Brotli)
        } else if v.eq_ignore_ascii_case("zstd") {
            Some(Self::Zstd)
        } else {
            None
        }
    }
}

/// The encoder, writing into the frame being built.
enum Encoder {
    Identity(Vec<u8>),
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl Encoder {
    fn new(coding: Coding) -> io::Result<Self> {
        Ok(match coding {
            Coding::Identity => Self::Identity(Vec::new()),
            // Level 6 (zlib's default), brotli 5 and zstd 3: what servers use on the fly.
            Coding::Gzip => Self::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                Compression::new(6),
            )),
            Coding::Brotli => Self::Brotli(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                16 << 10,
                5,
                22,
            ))),
            Coding::Zstd => Self::Zstd(zstd::stream::write::Encoder::new(Vec::new(), 3)?),
        })
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Self::Identity(v) => v,
            Self::Gzip(e) => e,
            Self::Brotli(e) => &mut **e,
            Self::Zstd(e) => e,
        }
    }

    /// The bytes encoded so far, taken.
    fn take(&mut self) -> Vec<u8> {
        std::mem::take(match self {
            Self::Identity(v) => v,
            Self::Gzip(e) => e.get_mut(),
            Self::Brotli(e) => e.get_mut(),
            Self::Zstd(e) => e.get_mut(),
        })
    }

    /// Ends the encoded stream; returns its last bytes.
    fn finish(self) -> io::Result<Vec<u8>> {
        match self {
            Self::Identity(v) => Ok(v),
            Self::Gzip(e) => e.finish(),
            Self::Brotli(e) => Ok(e.into_inner()),
            Self::Zstd(e) => e.finish(),
        }
    }
}

/// What the decoder writes into: the HTML stream, then the encoder.
pub(crate) struct Sink {
    pub(crate) html: HtmlStream,
    encoder: Encoder,
    /// The rewriter's output on its way to an encoder.
    scratch: Vec<u8>,
    /// Decoded bytes this frame may still bring.
    budget: usize,
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() > self.budget {
            return Err(io::Error::other(
                "the compressed page expands too much: refused as a decompression bomb",
            ));
        }
        self.budget -= buf.len();
        if let Encoder::Identity(out) = &mut self.encoder {
            self.html.push(buf, out)?;
        } else {
            // The rewriter writes in small pieces (around each URL); an encoder takes them
            // in one call, as flate2 prepares its whole output buffer on every write.
            self.html.push(buf, &mut self.scratch)?;
            self.encoder.writer().write_all(&self.scratch)?;
            self.scratch.clear();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.encoder.writer().flush()
    }
}

/// The decoder, owning the rest of the chain.
enum Decoder {
    Identity(Sink),
    Gzip(flate2::write::GzDecoder<Sink>),
    Brotli(Box<brotli::DecompressorWriter<Sink>>),
    Zstd(zstd::stream::write::Decoder<'static, Sink>),
}

/// The whole chain for one response.
pub(crate) struct Chain(Option<Decoder>);

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Chain")
    }
}

impl Chain {
    pub(crate) fn new(coding: Coding, html: HtmlStream) -> io::Result<Self> {
        let sink = Sink {
            html,
            encoder: Encoder::new(coding)?,
            scratch: Vec::new(),
            budget: MAX_EXPANSION_PER_FRAME,
        };
        Ok(Self(Some(match coding {
            Coding::Identity => Decoder::Identity(sink),
            Coding::Gzip => Decoder::Gzip(flate2::write::GzDecoder::new(sink)),
            Coding::Brotli => {
                Decoder::Brotli(Box::new(brotli::DecompressorWriter::new(sink, 16 << 10)))
            }
            Coding::Zstd => {
                let mut d = zstd::stream::write::Decoder::new(sink)?;
                d.window_log_max(ZSTD_WINDOW_LOG_MAX)?;
                Decoder::Zstd(d)
            }
        })))
    }

    fn sink(&mut self) -> Option<&mut Sink> {
        Some(match self.0.as_mut()? {
            Decoder::Identity(s) => s,
            Decoder::Gzip(d) => d.get_mut(),
            Decoder::Brotli(d) => d.get_mut(),
            Decoder::Zstd(d) => d.get_mut(),
        })
    }

    /// The HTML stream (for its counts).
    #[cfg(test)]
    pub(crate) fn html(&mut self) -> Option<&mut HtmlStream> {
        self.sink().map(|s| &mut s.html)
    }

    /// One frame of the origin's body in; the frame to send out (possibly empty).
    pub(crate) fn push(&mut self, data: &[u8]) -> io::Result<Vec<u8>> {
        let decoder = self.0.as_mut().ok_or_else(finished)?;
        match decoder {
            Decoder::Identity(s) => s.write_all(data)?,
            Decoder::Gzip(d) => d.write_all(data)?,
            Decoder::Brotli(d) => d.write_all(data)?,
            Decoder::Zstd(d) => d.write_all(data)?,
        }
        let sink = self.sink().ok_or_else(finished)?;
        sink.budget = MAX_EXPANSION_PER_FRAME;
        if !matches!(sink.encoder, Encoder::Identity(_)) {
            sink.encoder.writer().flush()?;
        }
        Ok(sink.encoder.take())
    }

    /// The origin's body has ended: the last bytes to send.
    pub(crate) fn finish(&mut self) -> io::Result<Vec<u8>> {
        let mut sink = match self.0.take().ok_or_else(finished)? {
            Decoder::Identity(s) => s,
            Decoder::Gzip(d) => d.finish()?,
            Decoder::Brotli(mut d) => {
                d.close()
                    .map_err(|_| io::Error::other("truncated or broken brotli stream"))?;
                d.into_inner()
                    .map_err(|_| io::Error::other("broken brotli stream"))?
            }
            Decoder::Zstd(mut d) => {
                d.flush()?;
                d.into_inner()
            }
        };
        sink.html.finish(&mut sink.scratch)?;
        sink.encoder.writer().write_all(&sink.scratch)?;
        let mut out = sink.encoder.take();
        out.extend(sink.encoder.finish()?);
        Ok(out)
    }
}

fn finished() -> io::Error {
    io::Error::other("the rewritten body has already ended")
}

//! The page as it streams: lol_html finds the start tags that may hold URLs, and this
//! module writes the page itself, from its own copy of the input: the bytes between those
//! tags as they came, each tag through [`rewrite_tag`]. lol_html's own output is only
//! counted: as nothing is changed through it, it is the input again, and how much of it
//! has come out says how far the input is settled (every tag before that point reported).
//! So what is held is what lol_html holds (an unfinished tag, bounded by its memory
//! limit), and when it fails (memory limit, a parsing ambiguity) nothing is lost: the held
//! input goes out with the tags found so far rewritten, and the rest of the page passes
//! untouched.

use std::io::{self, Write};
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use lol_html::send::{HtmlRewriter, Settings};
use lol_html::{MemorySettings, OutputSink, element};

use super::SiteRewrite;
use super::urls::{SELECTOR, rewrite_tag};

/// lol_html's memory limit for one page: a start tag longer than this (a huge inline
/// `data:` image, say) ends rewriting for the rest of the page.
pub(crate) const LOL_MEMORY: usize = 2 << 20;

/// Most input held back at once; past it the page passes untouched from there on. lol_html
/// holds less than [`LOL_MEMORY`] of it; the margin is more than one [`PIECE`].
pub(crate) const MAX_HELD: usize = LOL_MEMORY + (1 << 20);

/// Input is given to lol_html in pieces of at most this size.
const PIECE: usize = 64 << 10;

/// Counts what lol_html lets out.
struct Counter(Arc<AtomicUsize>);

impl OutputSink for Counter {
    fn handle_chunk(&mut self, chunk: &[u8]) {
        self.0.fetch_add(chunk.len(), Ordering::Relaxed);
    }
}

/// One HTML document being rewritten.
pub(crate) struct HtmlStream {
    /// `None` once lol_html has failed: the rest passes untouched.
    lol: Option<HtmlRewriter<'static, Counter>>,
    settled: Arc<AtomicUsize>,
    /// Start tags found (byte ranges in the whole input), in order.
    tags: Arc<Mutex<Vec<Range<usize>>>>,
    /// Input from offset `base` on, not yet written out.
    held: Vec<u8>,
    base: usize,
    site: Arc<SiteRewrite>,
    /// URLs rewritten so far.
    pub(crate) rewritten: u64,
    /// Most input held at once (for tests and the benchmark).
    pub(crate) peak_held: usize,
}

impl std::fmt::Debug for HtmlStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HtmlStream")
            .field("active", &self.lol.is_some())
            .field("held", &self.held.len())
            .field("rewritten", &self.rewritten)
            .finish()
    }
}

impl HtmlStream {
    pub(crate) fn new(site: Arc<SiteRewrite>) -> Self {
        let settled = Arc::new(AtomicUsize::new(0));
        let tags: Arc<Mutex<Vec<Range<usize>>>> = Arc::default();
        let found = tags.clone();
        let settings = Settings::new_send()
            .append_element_content_handler(element!(SELECTOR, move |el| {
                if let Ok(mut tags) = found.lock() {
                    tags.push(el.source_location().bytes());
                }
                Ok(())
            }))
            .with_memory_settings(
                MemorySettings::new()
                    .with_max_allowed_memory_usage(LOL_MEMORY)
                    .with_graceful_bail_out_on_memory_limit_exceeded(true),
            );
        Self {
            lol: Some(HtmlRewriter::new(settings, Counter(settled.clone()))),
            settled,
            tags,
            held: Vec::new(),
            base: 0,
            site,
            rewritten: 0,
            peak_held: 0,
        }
    }

    /// Takes the next piece of the page; writes to `out` what is settled.
    pub(crate) fn push(&mut self, data: &[u8], out: &mut (impl Write + ?Sized)) -> io::Result<()> {
        // In slices, so a large frame (a fixed `respond` body comes as one) never counts
        // against [`MAX_HELD`] whole.
        for piece in data.chunks(PIECE) {
            self.push_piece(piece, out)?;
        }
        Ok(())
    }

    fn push_piece(&mut self, data: &[u8], out: &mut (impl Write + ?Sized)) -> io::Result<()> {
        self.held.extend_from_slice(data);
        self.peak_held = self.peak_held.max(self.held.len());
        let end = self.base + self.held.len();
        let ok = match &mut self.lol {
            Some(lol) => lol.write(data).is_ok() && self.held.len() <= MAX_HELD,
            None => false,
        };
        let upto = match ok {
            true => self.settled.load(Ordering::Relaxed).clamp(self.base, end),
            false => {
                // Failed (now or before) or holding too much: pass the rest untouched.
                self.lol = None;
                end
            }
        };
        self.emit(upto, out)
    }

    /// The page has ended: writes out everything still held.
    pub(crate) fn finish(&mut self, out: &mut (impl Write + ?Sized)) -> io::Result<()> {
        if let Some(lol) = self.lol.take() {
            // An error at the end (an unfinished tag) changes nothing: all goes out.
            let _ = lol.end();
        }
        let end = self.base + self.held.len();
        self.emit(end, out)
    }

    /// Writes the held input up to offset `upto`, rewriting the tags found in it.
    fn emit(&mut self, upto: usize, out: &mut (impl Write + ?Sized)) -> io::Result<()> {
        let tags = match self.tags.lock() {
            Ok(mut tags) => std::mem::take(&mut *tags),
            Err(_) => Vec::new(),
        };
        let mut upto = upto;
        let mut pos = self.base;
        let mut rest = Vec::new();
        for tag in tags {
            if tag.start < pos || tag.end <= tag.start {
                continue;
            }
            if tag.end > upto {
                if self.lol.is_none() {
                    // Nothing comes after (the end, or passing through): a tag that does
                    // not fit is not one to rewrite, and every byte goes out.
                    continue;
                }
                // Not settled yet (lol_html reports a tag before letting it out): it
                // goes with the next piece.
                upto = upto.min(tag.start);
                rest.push(tag);
                continue;
            }
            out.write_all(&self.held[pos - self.base..tag.start - self.base])?;
            let n = rewrite_tag(
                &self.held[tag.start - self.base..tag.end - self.base],
                &self.site.policy,
                out,
            )?;
            if n > 0 {
                self.site.counters.rewrote(self.rewritten == 0, n);
                self.rewritten += n;
            }
            pos = tag.end;
        }
        if !rest.is_empty()
            && let Ok(mut tags) = self.tags.lock()
        {
            rest.append(&mut tags);
            *tags = rest;
        }
        let upto = upto.max(pos);
        out.write_all(&self.held[pos - self.base..upto - self.base])?;
        self.held.drain(..upto - self.base);
        self.base = upto;
        Ok(())
    }
}

//! One page's `http://` subresources and same-host links, read with lol_html (the parser
//! normalises tag and attribute case and knows that `<script>` and `<style>` hold raw text),
//! classified the way browsers do (W3C Mixed Content; Chromium's
//! `MixedContentChecker`): audio, video and `<img src>` images are *upgradeable* (fetched
//! over HTTPS or shown with a warning), everything else is *blockable*, including
//! `srcset`/`<picture>` image sets, favicons, `<track>` and fonts.
//!
//! Text inside `<script>` is not read: a URL there is only a string until the script
//! runs, and what scripts fetch is beyond a static look at the page.

use std::cell::RefCell;

use lol_html::html_content::{Element, TextChunk};
use lol_html::{HtmlRewriter, MemorySettings, Settings, element, text};

use super::url::Loc;

/// What loads a subresource, as a browser classifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    // Blockable ("active").
    Script,
    Stylesheet,
    Preload,
    Icon,
    Manifest,
    Iframe,
    Frame,
    Object,
    Embed,
    Srcset,
    Track,
    Form,
    Import,
    Font,
    // Upgradeable ("passive").
    Image,
    Poster,
    Video,
    Audio,
    Media,
    CssImage,
}

impl Kind {
    /// Blocked by browsers (else fetched over HTTPS instead, or shown with a warning).
    pub fn active(self) -> bool {
        self < Kind::Image
    }

    /// How a finding names it.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Script => "script",
            Kind::Stylesheet => "stylesheet",
            Kind::Preload => "preload",
            Kind::Icon => "icon",
            Kind::Manifest => "manifest",
            Kind::Iframe => "iframe",
            Kind::Frame => "frame",
            Kind::Object => "object",
            Kind::Embed => "embed",
            Kind::Srcset => "srcset",
            Kind::Track => "track",
            Kind::Form => "form action",
            Kind::Import => "CSS @import",
            Kind::Font => "font",
            Kind::Image => "img",
            Kind::Poster => "poster",
            Kind::Video => "video",
            Kind::Audio => "audio",
            Kind::Media => "source",
            Kind::CssImage => "CSS url()",
        }
    }
}

/// What a page refers to.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    /// `http://` subresources in document order, each URL and kind once.
    pub insecure: Vec<(String, Kind)>,
    /// `<a href>` targets, resolved (any host: the caller keeps its own).
    pub links: Vec<Loc>,
    /// A `<meta http-equiv="Content-Security-Policy">` upgrades the page's requests.
    pub meta_upgrade: bool,
}

#[derive(Default)]
struct State {
    base: Option<Loc>,
    scan: Scan,
    style: String,
}

impl State {
    fn base<'a>(&'a self, page: &'a Loc) -> &'a Loc {
        self.base.as_ref().unwrap_or(page)
    }

    fn found(&mut self, page: &Loc, raw: &str, kind: Kind) {
        let Some(url) = self.base(page).join(&decode_entities(raw)) else {
            return;
        };
        if url.scheme == "http" {
            let url = url.to_string();
            if !self
                .scan
                .insecure
                .iter()
                .any(|(u, k)| *u == url && *k == kind)
            {
                self.scan.insecure.push((url, kind));
            }
        }
    }

    fn css(&mut self, page: &Loc, css: &str, in_attribute: bool) {
        for (raw, kind) in css_urls(css) {
            let kind = match kind {
                CssRef::Import if !in_attribute => Kind::Import,
                CssRef::Import => continue,
                CssRef::Font => Kind::Font,
                CssRef::Image => Kind::CssImage,
            };
            self.found(page, &raw, kind);
        }
    }

    fn element(&mut self, page: &Loc, el: &Element) {
        let tag = el.tag_name();
        let attr = |name: &str| el.get_attribute(name);
        if let Some(style) = attr("style") {
            self.css(page, &style, true);
        }
        match tag.as_str() {
            "base" => {
                if self.base.is_none()
                    && let Some(href) = attr("href")
                {
                    self.base = page.join(&decode_entities(&href));
                }
            }
            "a" => {
                if let Some(link) =
                    attr("href").and_then(|h| self.base(page).join(&decode_entities(&h)))
                {
                    self.scan.links.push(link);
                }
            }
            "meta" => {
                let csp = attr("http-equiv")
                    .is_some_and(|h| h.trim().eq_ignore_ascii_case("content-security-policy"));
                if csp && attr("content").is_some_and(|c| policy_upgrades(&c)) {
                    self.scan.meta_upgrade = true;
                }
            }
            "script" => self.attr(page, attr("src"), Kind::Script),
            "link" => {
                let rel = attr("rel").unwrap_or_default().to_ascii_lowercase();
                let kind = rel.split_ascii_whitespace().find_map(|r| match r {
                    "stylesheet" => Some(Kind::Stylesheet),
                    "preload" | "modulepreload" => Some(Kind::Preload),
                    "icon" | "apple-touch-icon" => Some(Kind::Icon),
                    "manifest" => Some(Kind::Manifest),
                    _ => None,
                });
                if let Some(kind) = kind {
                    self.attr(page, attr("href"), kind);
                }
            }
            "iframe" => self.attr(page, attr("src"), Kind::Iframe),
            "frame" => self.attr(page, attr("src"), Kind::Frame),
            "object" => self.attr(page, attr("data"), Kind::Object),
            "embed" => self.attr(page, attr("src"), Kind::Embed),
            "img" => {
                self.attr(page, attr("src"), Kind::Image);
                self.srcset(page, attr("srcset"));
            }
            "source" => {
                self.attr(page, attr("src"), Kind::Media);
                self.srcset(page, attr("srcset"));
            }
            "video" => {
                self.attr(page, attr("src"), Kind::Video);
                self.attr(page, attr("poster"), Kind::Poster);
            }
            "audio" => self.attr(page, attr("src"), Kind::Audio),
            "track" => self.attr(page, attr("src"), Kind::Track),
            "form" => self.attr(page, attr("action"), Kind::Form),
            "button" | "input" => self.attr(page, attr("formaction"), Kind::Form),
            _ => {}
        }
    }

    fn attr(&mut self, page: &Loc, value: Option<String>, kind: Kind) {
        if let Some(v) = value {
            self.found(page, &v, kind);
        }
    }

    fn srcset(&mut self, page: &Loc, value: Option<String>) {
        for url in value.as_deref().map(srcset_urls).unwrap_or_default() {
            self.found(page, url, Kind::Srcset);
        }
    }
}

/// Most a page's scan may hold in lol_html's buffers (a page is at most 4 MiB).
const MAX_PARSER_MEMORY: usize = 16 << 20;

/// Reads `html`, the page at `page`. Malformed HTML is read as well as the parser can;
/// whatever was found before a parser error is kept.
pub(crate) fn scan(html: &[u8], page: &Loc) -> Scan {
    let state = RefCell::new(State::default());
    // Not strict: a page whose parsing context is ambiguous (`<select><xmp>`) is read on
    // rather than refused, as a browser would render it.
    let settings = Settings::new()
        .append_element_content_handler(element!("*", |el| {
            state.borrow_mut().element(page, el);
            Ok(())
        }))
        .append_element_content_handler(text!("style", |t: &mut TextChunk| {
            let mut s = state.borrow_mut();
            s.style.push_str(t.as_str());
            if t.last_in_text_node() {
                let css = std::mem::take(&mut s.style);
                s.css(page, &css, false);
            }
            Ok(())
        }))
        .with_memory_settings(
            MemorySettings::new().with_max_allowed_memory_usage(MAX_PARSER_MEMORY),
        )
        .with_strict(false)
        .with_adjust_charset_on_meta_tag(true);
    {
        let mut rewriter = HtmlRewriter::new(settings, |_: &[u8]| {});
        if rewriter.write(html).is_ok() {
            let _ = rewriter.end();
        }
    }
    state.into_inner().scan
}

/// Whether a Content-Security-Policy (one or several, comma-separated) has
/// `upgrade-insecure-requests`.
pub(crate) fn policy_upgrades(policy: &str) -> bool {
    policy.split([';', ',']).any(|d| {
        d.split_ascii_whitespace()
            .next()
            .is_some_and(|n| n.eq_ignore_ascii_case("upgrade-insecure-requests"))
    })
}

/// The URLs of a `srcset` (`a.png 1x, b.png 2x`; a URL may hold commas, a candidate ends
/// at the whitespace after its URL).
pub(crate) fn srcset_urls(srcset: &str) -> Vec<&str> {
    let mut urls = Vec::new();
    let mut rest = srcset;
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_ascii_whitespace() || c == ',');
        if rest.is_empty() {
            return urls;
        }
        let end = rest
            .find(|c: char| c.is_ascii_whitespace())
            .unwrap_or(rest.len());
        let (candidate, after) = rest.split_at(end);
        let url = candidate.trim_end_matches(',');
        urls.push(url);
        rest = if url.len() < candidate.len() {
            after
        } else {
            // Descriptors run to the next comma outside parentheses.
            let mut depth = 0usize;
            let cut = after
                .char_indices()
                .find(|&(_, c)| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth = depth.saturating_sub(1),
                        ',' if depth == 0 => return true,
                        _ => {}
                    }
                    false
                })
                .map_or(after.len(), |(i, _)| i);
            &after[cut..]
        };
    }
}

/// What a CSS URL loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CssRef {
    Import,
    Font,
    Image,
}

/// Every `@import` and `url(...)` of a style sheet; `url()` inside `@font-face` is a font,
/// any other an image (backgrounds, cursors, list markers).
pub(crate) fn css_urls(css: &str) -> Vec<(String, CssRef)> {
    let lower = css.to_ascii_lowercase();
    let (b, l) = (css.as_bytes(), lower.as_bytes());
    let mut out = Vec::new();
    let (mut i, mut depth) = (0usize, 0usize);
    let mut font_block: Option<usize> = None;
    let mut font_next = false;
    while i < b.len() {
        let at = |s: &str| l[i..].starts_with(s.as_bytes());
        if at("/*") {
            i = lower[i + 2..].find("*/").map_or(b.len(), |e| i + 2 + e + 2);
        } else if at("@import") {
            i += "@import".len();
            while i < b.len() && b[i].is_ascii_whitespace() {
                i += 1;
            }
            if l[i..].starts_with(b"url(") {
                let (url, next) = css_url(css, i + 4);
                out.push((url, CssRef::Import));
                i = next;
            } else if i < b.len() && (b[i] == b'"' || b[i] == b'\'') {
                let (url, next) = css_string(css, i);
                out.push((url, CssRef::Import));
                i = next;
            }
        } else if at("@font-face") {
            font_next = true;
            i += "@font-face".len();
        } else if b[i] == b'"' || b[i] == b'\'' {
            i = css_string(css, i).1;
        } else if b[i] == b'{' {
            depth += 1;
            if std::mem::take(&mut font_next) {
                font_block = Some(depth);
            }
            i += 1;
        } else if b[i] == b'}' {
            if font_block == Some(depth) {
                font_block = None;
            }
            depth = depth.saturating_sub(1);
            i += 1;
        } else if at("url(") && (i == 0 || !is_ident(b[i - 1])) {
            let (url, next) = css_url(css, i + 4);
            let kind = if font_block.is_some() {
                CssRef::Font
            } else {
                CssRef::Image
            };
            out.push((url, kind));
            i = next;
        } else {
            i += 1;
        }
    }
    out
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-' || c == b'_'
}

/// The quoted string starting at `start` (a quote) and the index after it.
fn css_string(css: &str, start: usize) -> (String, usize) {
    let b = css.as_bytes();
    let quote = b[start];
    let end = b[start + 1..]
        .iter()
        .position(|&c| c == quote || c == b'\n')
        .map_or(b.len(), |e| start + 1 + e);
    let text = css.get(start + 1..end).unwrap_or_default().to_owned();
    (text, (end + 1).min(b.len()))
}

/// The argument of `url(` whose text starts at `start`, and the index after `)`.
fn css_url(css: &str, start: usize) -> (String, usize) {
    let b = css.as_bytes();
    let mut i = start;
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    let (url, mut i) = if i < b.len() && (b[i] == b'"' || b[i] == b'\'') {
        css_string(css, i)
    } else {
        let end = b[i..]
            .iter()
            .position(|&c| c == b')')
            .map_or(b.len(), |e| i + e);
        (css.get(i..end).unwrap_or_default().trim().to_owned(), end)
    };
    while i < b.len() && b[i] != b')' {
        i += 1;
    }
    (url, (i + 1).min(b.len()))
}

/// Character references in an attribute value (`&amp;`, `&#58;`, `&#x3A;`, `&colon;`):
/// the parser hands values over as written.
pub(crate) fn decode_entities(value: &str) -> String {
    if !value.contains('&') {
        return value.to_owned();
    }
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let end = rest[1..]
            .find(|c: char| !c.is_ascii_alphanumeric() && c != '#')
            .map_or(rest.len(), |e| e + 1);
        let name = &rest[1..end];
        let decoded = match name {
            "amp" => Some('&'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "colon" => Some(':'),
            "sol" => Some('/'),
            "Tab" => Some('\t'),
            "NewLine" => Some('\n'),
            n => n
                .strip_prefix("#x")
                .or_else(|| n.strip_prefix("#X"))
                .map(|h| u32::from_str_radix(h, 16))
                .or_else(|| n.strip_prefix('#').map(str::parse::<u32>))
                .and_then(Result::ok)
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = rest[end..].strip_prefix(';').unwrap_or(&rest[end..]);
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests;

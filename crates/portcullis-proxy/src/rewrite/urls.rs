//! Which attributes of a start tag hold URLs that load or link something, and how an
//! `http://` URL in them becomes `https://`. Works on the tag's raw bytes as they came
//! (entities, quotes, case and whitespace kept): only the scheme changes (and a `:80`
//! port goes), so everything else in the page stays byte for byte.

use std::io::{self, Write};

use portcullis_config::HostMap;

/// Which hosts a site's pages may point at over HTTPS instead of HTTP.
#[derive(Debug)]
pub(crate) struct Policy {
    /// Every host a site of this gateway serves with a certificate (shared by all sites).
    pub(crate) served: std::sync::Arc<HostMap<()>>,
    /// The site's `rewrite.hosts`.
    pub(crate) extra: HostMap<()>,
    /// The HTTPS listener's port: an `http://host:PORT/` URL with it is served here too.
    /// `None` when the listener was given port 0.
    pub(crate) https_port: Option<u16>,
}

impl Policy {
    fn knows(&self, host: &str) -> bool {
        self.served.get(host).is_some() || self.extra.get(host).is_some()
    }
}

/// How one attribute's value is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// One URL.
    Url,
    /// `srcset`: comma-separated candidates, each a URL and descriptors.
    Srcset,
    /// `<meta http-equiv=refresh content="5; url=...">`.
    Refresh,
}

/// The attribute `name` of element `tag` (both lowercase) and what it holds. Resources a
/// page loads (`src`, `srcset`, `data`, `poster`, `background`, `<link href>`) and what it
/// links or submits to (`<a href>`, `<area href>`, `<base href>`, `action`,
/// `formaction`, `cite`, a refresh's target). [`SELECTOR`] picks the elements.
fn kind(tag: &[u8], name: &[u8]) -> Option<Kind> {
    let is = |t: &[&[u8]]| t.contains(&tag);
    match name {
        b"src" => Some(Kind::Url),
        b"href" if is(&[b"a", b"link", b"area", b"base"]) => Some(Kind::Url),
        b"srcset" if is(&[b"img", b"source"]) => Some(Kind::Srcset),
        b"imagesrcset" if is(&[b"link"]) => Some(Kind::Srcset),
        b"action" if is(&[b"form"]) => Some(Kind::Url),
        b"formaction" if is(&[b"button", b"input"]) => Some(Kind::Url),
        b"data" if is(&[b"object"]) => Some(Kind::Url),
        b"poster" if is(&[b"video"]) => Some(Kind::Url),
        b"background" if is(&[b"body", b"table", b"td", b"th"]) => Some(Kind::Url),
        b"cite" if is(&[b"blockquote", b"q", b"del", b"ins"]) => Some(Kind::Url),
        b"content" if is(&[b"meta"]) => Some(Kind::Refresh),
        _ => None,
    }
}

/// The lol_html selector for every element [`kind`] may find a URL in. Each part names
/// its element: a bare `[src]` would make lol_html read the attributes of every tag.
pub(crate) const SELECTOR: &str = "img[src], script[src], iframe[src], frame[src], \
    embed[src], audio[src], video[src], source[src], track[src], input[src], \
    a[href], link[href], area[href], base[href], img[srcset], source[srcset], \
    link[imagesrcset], form[action], button[formaction], input[formaction], object[data], \
    video[poster], body[background], table[background], td[background], th[background], \
    blockquote[cite], q[cite], del[cite], ins[cite], meta[http-equiv]";

/// One attribute: its name (lowercased, at most [`MAX_NAME`] bytes) and where its value
/// is in the tag.
struct Attr {
    name: [u8; MAX_NAME],
    name_len: usize,
    value: std::ops::Range<usize>,
}

impl Attr {
    fn name(&self) -> &[u8] {
        &self.name[..self.name_len]
    }
}

/// Longer names are no attribute of [`kind`]'s (nor a tag name it knows).
const MAX_NAME: usize = 16;

/// Lowercased copy of `bytes` when it is short enough to be a name we know.
fn lower(bytes: &[u8]) -> Option<([u8; MAX_NAME], usize)> {
    if bytes.len() > MAX_NAME {
        return None;
    }
    let mut out = [0u8; MAX_NAME];
    for (o, b) in out.iter_mut().zip(bytes) {
        *o = b.to_ascii_lowercase();
    }
    Some((out, bytes.len()))
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\x0c' | b'\r')
}

/// The attributes of a raw start tag (`<name ...>`), as the HTML tokenizer reads them
/// (attribute-name, before/after-value states): names run to whitespace, `/`, `>` or `=`;
/// values are quoted with `"` or `'`, or run to whitespace or `>`.
fn attributes(tag: &[u8]) -> (&[u8], Vec<Attr>) {
    let mut i = usize::from(tag.first() == Some(&b'<'));
    let name_start = i;
    while i < tag.len() && !is_space(tag[i]) && tag[i] != b'/' && tag[i] != b'>' {
        i += 1;
    }
    let name = &tag[name_start..i];
    let mut attrs = Vec::new();
    loop {
        while i < tag.len() && (is_space(tag[i]) || tag[i] == b'/') {
            i += 1;
        }
        if i >= tag.len() || tag[i] == b'>' {
            break;
        }
        let start = i;
        // A leading `=` belongs to the name (the tokenizer's "unexpected equals sign").
        i += 1;
        while i < tag.len() && !is_space(tag[i]) && !matches!(tag[i], b'/' | b'>' | b'=') {
            i += 1;
        }
        let attr_name = &tag[start..i];
        while i < tag.len() && is_space(tag[i]) {
            i += 1;
        }
        let mut value = i..i;
        if i < tag.len() && tag[i] == b'=' {
            i += 1;
            while i < tag.len() && is_space(tag[i]) {
                i += 1;
            }
            match tag.get(i) {
                Some(&q @ (b'"' | b'\'')) => {
                    let end = tag[i + 1..]
                        .iter()
                        .position(|&b| b == q)
                        .map_or(tag.len(), |p| i + 1 + p);
                    value = i + 1..end;
                    i = (end + 1).min(tag.len());
                }
                _ => {
                    let s = i;
                    while i < tag.len() && !is_space(tag[i]) && tag[i] != b'>' {
                        i += 1;
                    }
                    value = s..i;
                }
            }
        }
        if let Some((name, name_len)) = lower(attr_name) {
            attrs.push(Attr {
                name,
                name_len,
                value,
            });
        }
    }
    (name, attrs)
}

/// Writes `tag` (one raw start tag) to `out` with its `http://` URLs that `policy` allows
/// turned into `https://`; returns how many it rewrote.
pub(crate) fn rewrite_tag(
    tag: &[u8],
    policy: &Policy,
    out: &mut (impl Write + ?Sized),
) -> io::Result<u64> {
    let (name, attrs) = attributes(tag);
    let Some((name, name_len)) = lower(name) else {
        out.write_all(tag)?;
        return Ok(0);
    };
    let name = &name[..name_len];
    let refresh = name == b"meta"
        && attrs.iter().any(|a| {
            a.name() == b"http-equiv" && tag[a.value.clone()].eq_ignore_ascii_case(b"refresh")
        });
    // Where each URL to rewrite starts, and the length of the `:80` to drop after its host.
    let mut edits: Vec<(usize, Option<std::ops::Range<usize>>)> = Vec::new();
    for a in &attrs {
        let Some(kind) = kind(name, a.name()) else {
            continue;
        };
        let value = &tag[a.value.clone()];
        let base = a.value.start;
        match kind {
            Kind::Url => edits.extend(url_at(value, 0, policy).map(|e| shift(e, base))),
            Kind::Srcset => {
                for start in srcset_urls(value) {
                    edits.extend(url_at(value, start, policy).map(|e| shift(e, base)));
                }
            }
            Kind::Refresh if refresh => {
                if let Some(start) = refresh_url(value) {
                    edits.extend(url_at(value, start, policy).map(|e| shift(e, base)));
                }
            }
            Kind::Refresh => {}
        }
    }
    if edits.is_empty() {
        out.write_all(tag)?;
        return Ok(0);
    }
    edits.sort_by_key(|e| e.0);
    let mut pos = 0;
    for (scheme, port) in &edits {
        out.write_all(&tag[pos..*scheme])?;
        out.write_all(b"https")?;
        pos = scheme + 4;
        if let Some(port) = port {
            out.write_all(&tag[pos..port.start])?;
            pos = port.end;
        }
    }
    out.write_all(&tag[pos..])?;
    Ok(edits.len() as u64)
}

fn shift(
    (at, port): (usize, Option<std::ops::Range<usize>>),
    by: usize,
) -> (usize, Option<std::ops::Range<usize>>) {
    (at + by, port.map(|p| p.start + by..p.end + by))
}

/// If `value[start..]` (after leading whitespace) is an `http://` URL whose host `policy`
/// knows, with no port, port 80 or the HTTPS listener's port: where its scheme starts,
/// and the `:80` to drop (an `http://h:80/` is `https://h/`, never `https://h:80/`).
fn url_at(
    value: &[u8],
    start: usize,
    policy: &Policy,
) -> Option<(usize, Option<std::ops::Range<usize>>)> {
    let mut i = start;
    while i < value.len() && (is_space(value[i]) || value[i] < 0x20) {
        i += 1;
    }
    let scheme = i;
    if !value.get(i..i + 7)?.eq_ignore_ascii_case(b"http://") {
        return None;
    }
    let host_start = i + 7;
    let end = value[host_start..]
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#' | b'\\' | b'"' | b'\'') || is_space(b))
        .map_or(value.len(), |p| host_start + p);
    let authority = &value[host_start..end];
    // Userinfo, entities (`&#46;`) and percent-encoding: not a host we can read as the
    // browser will; left alone.
    if authority.iter().any(|b| matches!(b, b'@' | b'&' | b'%')) {
        return None;
    }
    let (host, port) = match authority.iter().rposition(|&b| b == b':') {
        Some(c) if !authority.ends_with(b"]") => (&authority[..c], Some(&authority[c + 1..])),
        _ => (authority, None),
    };
    let host = std::str::from_utf8(host).ok()?;
    if host.is_empty() || !policy.knows(host) {
        return None;
    }
    let colon = host_start + host.len();
    match port {
        None | Some(b"") => Some((scheme, port.map(|_| colon..end))),
        Some(b"80") => Some((scheme, Some(colon..end))),
        Some(p) => {
            let p: u16 = std::str::from_utf8(p).ok()?.parse().ok()?;
            (Some(p) == policy.https_port).then_some((scheme, None))
        }
    }
}

/// Where each candidate URL of a `srcset` starts (the HTML standard's "parse a srcset
/// attribute": candidates split by commas, a URL runs to whitespace, descriptors to the
/// next comma outside parentheses).
fn srcset_urls(value: &[u8]) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut i = 0;
    loop {
        while i < value.len() && (is_space(value[i]) || value[i] == b',') {
            i += 1;
        }
        if i >= value.len() {
            return starts;
        }
        starts.push(i);
        while i < value.len() && !is_space(value[i]) {
            i += 1;
        }
        if value[..i].ends_with(b",") {
            continue;
        }
        let mut depth = 0usize;
        while i < value.len() {
            match value[i] {
                b'(' => depth += 1,
                b')' => depth = depth.saturating_sub(1),
                b',' if depth == 0 => break,
                _ => {}
            }
            i += 1;
        }
    }
}

/// Where the URL of a refresh's `content` (`5; url=http://...`, `0;URL='...'`,
/// `0, http://...`) starts.
fn refresh_url(value: &[u8]) -> Option<usize> {
    let sep = value.iter().position(|&b| b == b';' || b == b',')?;
    let mut i = sep + 1;
    while i < value.len() && is_space(value[i]) {
        i += 1;
    }
    if value
        .get(i..i + 3)
        .is_some_and(|u| u.eq_ignore_ascii_case(b"url"))
    {
        let mut j = i + 3;
        while j < value.len() && is_space(value[j]) {
            j += 1;
        }
        if value.get(j) == Some(&b'=') {
            i = j + 1;
            while i < value.len() && is_space(value[i]) {
                i += 1;
            }
        }
    }
    if matches!(value.get(i), Some(b'"' | b'\'')) {
        i += 1;
    }
    Some(i)
}

//! Entry points for the cargo-fuzz targets in `fuzz/`: each feeds bytes an attacker
//! controls to private parts of the data path and panics when a property they promise is
//! broken, and only then. Not an API: the fuzz targets are one-line wrappers, and the smoke
//! runs in this module's tests call the same functions on stable (see `fuzz/README.md`).

mod origin_response;
mod request_head;
#[cfg(test)]
mod tests;

/// Reads `data` as an origin's HTTP/1.1 response the way the origin client does (head,
/// then a body by length, chunks or up to the close), once whole and again split over
/// reads, and checks the decoder's promises. Byte 0 picks the request method (odd: HEAD,
/// even: GET); bytes 1-4 are two read boundaries; the response starts at byte 5.
pub fn origin_response(data: &[u8]) {
    origin_response::check(data);
}

/// Reads `data` as a request head the way the HTTPS listener's HTTP/1.1 server does, runs
/// the gateway's own request-head handling on it (authority, host, site lookup, the header
/// rewrite for the origin, for trusted and untrusted clients) and checks what comes out.
pub fn request_head(data: &[u8]) {
    request_head::check(data);
}

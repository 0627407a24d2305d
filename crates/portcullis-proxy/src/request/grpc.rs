//! gRPC clients read errors from `grpc-status`, not from the HTTP status: an error the
//! gateway generates itself (no origin, origin down, timeout) is sent to them as a
//! trailers-only gRPC response, as Envoy does, so they see `UNAVAILABLE` and a readable
//! message instead of failing to parse a text page.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};

use crate::answers::GatewayError;
use crate::response::ProxyBody;

/// `content-type: application/grpc`, `application/grpc+proto`, ...
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Rewrites a gateway error into a trailers-only gRPC response; other responses are left
/// alone.
pub(crate) fn convert_gateway_error(resp: &mut Response<ProxyBody>) {
    let Some(GatewayError(text)) = resp.extensions_mut().remove::<GatewayError>() else {
        return;
    };
    let code = grpc_code(resp.status());
    let message = percent_encode(text.trim_end());
    *resp.status_mut() = StatusCode::OK;
    *resp.body_mut() = ProxyBody::empty();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.remove(header::RETRY_AFTER);
    h.insert("grpc-status", HeaderValue::from(code));
    if let Ok(v) = HeaderValue::from_str(&message) {
        h.insert("grpc-message", v);
    }
}

/// The gRPC code for an HTTP status, per gRPC's "HTTP to gRPC status code mapping".
fn grpc_code(status: StatusCode) -> u16 {
    match status.as_u16() {
        400 => 13,                         // INTERNAL
        401 => 16,                         // UNAUTHENTICATED
        403 => 7,                          // PERMISSION_DENIED
        404 => 12,                         // UNIMPLEMENTED
        413 | 431 => 8,                    // RESOURCE_EXHAUSTED
        429 | 502 | 503 | 504 | 526 => 14, // UNAVAILABLE
        _ => 2,                            // UNKNOWN
    }
}

/// `grpc-message` is percent-encoded: printable ASCII except `%` is sent as is.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gateway_502_becomes_unavailable_and_an_origin_response_is_untouched() {
        let mut resp = crate::answers::error_response(StatusCode::BAD_GATEWAY, "origin down\n");
        convert_gateway_error(&mut resp);
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["grpc-status"], "14");
        assert_eq!(resp.headers()["grpc-message"], "origin down");
        assert_eq!(resp.headers()["content-type"], "application/grpc");

        let mut origin = Response::new(ProxyBody::empty());
        *origin.status_mut() = StatusCode::BAD_GATEWAY;
        convert_gateway_error(&mut origin);
        assert_eq!(origin.status(), StatusCode::BAD_GATEWAY);
        assert!(!origin.headers().contains_key("grpc-status"));
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(percent_encode("50% naïve\n"), "50%25 na%C3%AFve%0A");
    }
}

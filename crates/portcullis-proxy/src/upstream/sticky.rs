//! Session affinity by a cookie the gateway sets (`balance: { sticky: ... }`), as
//! ingress-nginx's `affinity: cookie`: the cookie's value names a server by an opaque id
//! (a hash of its URL, stable across reloads and gateways; never its address).

use http::HeaderValue;
use http::header::HeaderMap;
use portcullis_config::StickyCookie;

/// One origin's sticky cookie.
#[derive(Debug)]
pub(crate) struct Sticky {
    name: Box<str>,
    /// Each server's cookie value, in the origin's server order.
    ids: Box<[Box<str>]>,
    /// What follows `NAME=ID` in `Set-Cookie`, except `Secure`.
    attributes: String,
    secure: Option<bool>,
}

impl Sticky {
    /// `hashes`: each server's stable hash, in server order.
    pub(crate) fn new(cookie: &StickyCookie, hashes: &[u64]) -> Self {
        let mut attributes = format!("; Path={}", cookie.path);
        if let Some(age) = cookie.max_age {
            attributes.push_str(&format!("; Max-Age={}", age.as_secs().max(1)));
        }
        attributes.push_str("; HttpOnly");
        if let Some(same_site) = &cookie.same_site {
            attributes.push_str("; SameSite=");
            attributes.push_str(same_site);
        }
        Self {
            name: cookie.name.as_str().into(),
            ids: hashes.iter().map(|&h| server_id(h)).collect(),
            attributes,
            secure: cookie.secure,
        }
    }

    /// The server the request's cookie names, if it names one of these servers.
    pub(crate) fn named(&self, headers: &HeaderMap) -> Option<usize> {
        let value = super::cookie(headers, &self.name)?;
        self.ids.iter().position(|id| id.as_bytes() == value)
    }

    /// `Set-Cookie` naming server `i`; `https`: the request came over TLS.
    pub(crate) fn set_cookie(&self, i: usize, https: bool) -> Option<HeaderValue> {
        let id = self.ids.get(i)?;
        let secure = if self.secure.unwrap_or(https) {
            "; Secure"
        } else {
            ""
        };
        HeaderValue::try_from(format!("{}={id}{}{secure}", self.name, self.attributes)).ok()
    }
}

/// Sixteen hex digits of the server's stable hash.
fn server_id(hash: u64) -> Box<str> {
    format!("{hash:016x}").into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sticky(secure: Option<bool>, max_age: Option<Duration>) -> Sticky {
        let cookie = StickyCookie {
            name: "route".into(),
            max_age,
            path: "/app".into(),
            secure,
            same_site: Some("Lax".into()),
        };
        Sticky::new(&cookie, &[1, 0xabc])
    }

    #[test]
    fn the_cookie_names_a_server_by_its_id() {
        let s = sticky(None, None);
        let mut h = HeaderMap::new();
        h.insert(
            http::header::COOKIE,
            "a=1; route=0000000000000abc".parse().unwrap(),
        );
        assert_eq!(s.named(&h), Some(1));
        h.insert(http::header::COOKIE, "route=127.0.0.1".parse().unwrap());
        assert_eq!(s.named(&h), None);
        assert_eq!(s.named(&HeaderMap::new()), None);
    }

    #[test]
    fn set_cookie_is_secure_over_https_unless_told_otherwise() {
        let s = sticky(None, Some(Duration::from_secs(3600)));
        assert_eq!(
            s.set_cookie(0, true).unwrap(),
            "route=0000000000000001; Path=/app; Max-Age=3600; HttpOnly; SameSite=Lax; Secure"
        );
        assert_eq!(
            s.set_cookie(0, false).unwrap(),
            "route=0000000000000001; Path=/app; Max-Age=3600; HttpOnly; SameSite=Lax"
        );
        let never = sticky(Some(false), None);
        assert_eq!(
            never.set_cookie(1, true).unwrap(),
            "route=0000000000000abc; Path=/app; HttpOnly; SameSite=Lax"
        );
        assert!(never.set_cookie(2, true).is_none());
    }
}

//! `portcullis proxy --from HOST[:PORT] --to URL`: a one-site config built from two flags,
//! validated by the same code as a file.

use std::path::Path;

use portcullis_config::{Config, Problem};
use serde_yaml::{Mapping, Value};

/// Options of the `proxy` command.
#[derive(Debug, Clone)]
pub struct ProxyArgs {
    /// `HOST` or `HOST:PORT` the gateway answers on (port 443 when absent).
    pub from: String,
    /// Origin URL; `host:port` alone means `http://host:port`.
    pub to: String,
    /// `flexible`, `full` or `strict`; inferred from the URL when absent.
    pub mode: Option<String>,
    /// Where the local CA lives.
    pub local_ca_dir: String,
    /// Admin listener address, if wanted.
    pub admin: Option<String>,
}

/// Builds and validates the config. Problems are reported against the flags.
pub fn config(args: &ProxyArgs) -> Result<Config, Vec<Problem>> {
    let (host, port) = split_from(&args.from).map_err(|e| vec![Problem::new("--from", e)])?;
    let to = if args.to.contains("://") {
        args.to.clone()
    } else {
        format!("http://{}", args.to)
    };
    let mut listen = Mapping::new();
    listen.insert("https".into(), format!("0.0.0.0:{port}").into());
    // With the standard port, also redirect plain HTTP on :80, like `caddy reverse-proxy`.
    listen.insert(
        "http".into(),
        if port == 443 { "0.0.0.0:80" } else { "off" }.into(),
    );
    let mut origin = Mapping::new();
    origin.insert("url".into(), to.into());
    if let Some(mode) = &args.mode {
        origin.insert("mode".into(), mode.clone().into());
    }
    let mut site = Mapping::new();
    site.insert("hosts".into(), Value::Sequence(vec![host.into()]));
    site.insert("tls".into(), "local".into());
    site.insert("origin".into(), origin.into());
    let mut root = Mapping::new();
    root.insert("listen".into(), listen.into());
    let mut admin = Mapping::new();
    admin.insert(
        "listen".into(),
        args.admin.clone().unwrap_or("off".into()).into(),
    );
    root.insert("admin".into(), admin.into());
    let mut tls = Mapping::new();
    tls.insert("local_ca_dir".into(), args.local_ca_dir.clone().into());
    root.insert("tls".into(), tls.into());
    root.insert("sites".into(), Value::Sequence(vec![site.into()]));
    let text = serde_yaml::to_string(&Value::Mapping(root))
        .map_err(|e| vec![Problem::new("", e.to_string())])?;
    portcullis_config::parse(&text, Path::new(".")).map_err(|e| {
        e.problems()
            .into_iter()
            .map(|p| {
                let flag = if p.key.starts_with("sites[0].hosts") || p.key.starts_with("listen") {
                    "--from"
                } else if p.key.starts_with("sites[0].origin.mode") {
                    "--mode"
                } else if p.key.starts_with("sites[0].origin") {
                    "--to"
                } else if p.key.starts_with("admin") {
                    "--admin"
                } else {
                    "--local-ca-dir"
                };
                Problem::new(flag, p.message)
            })
            .collect()
    })
}

fn split_from(from: &str) -> Result<(String, u16), String> {
    let from = from.trim();
    let from = from.strip_prefix("https://").unwrap_or(from);
    if from.is_empty() {
        return Err("a host name is required".into());
    }
    // `[::1]:8443`, `host:8443`, `host`.
    if let Some(rest) = from.strip_prefix('[') {
        let (ip, after) = rest.split_once(']').ok_or("unclosed `[`")?;
        return match after.strip_prefix(':') {
            Some(p) => Ok((ip.to_owned(), parse_port(p)?)),
            None => Ok((ip.to_owned(), 443)),
        };
    }
    match from.rsplit_once(':') {
        Some((host, p)) => Ok((host.to_owned(), parse_port(p)?)),
        None => Ok((from.to_owned(), 443)),
    }
}

fn parse_port(p: &str) -> Result<u16, String> {
    p.parse().map_err(|_| format!("`{p}` is not a port number"))
}

#[cfg(test)]
#[allow(
    clippy::disallowed_methods,
    reason = "tests write their fixtures and wait from outside the served path"
)]
mod tests {
    use super::*;
    use portcullis_config::{Action, Mode};

    fn args(from: &str, to: &str) -> ProxyArgs {
        ProxyArgs {
            from: from.into(),
            to: to.into(),
            mode: None,
            local_ca_dir: "./data/ca".into(),
            admin: None,
        }
    }

    #[test]
    fn builds_a_one_site_config() {
        let c = config(&args("app.localhost:8443", "127.0.0.1:3000")).unwrap();
        assert_eq!(c.listen.https.port(), 8443);
        assert_eq!(c.listen.http, None);
        assert_eq!(c.admin.listen, None);
        let Some(Action::Proxy(o)) = &c.sites[0].fallback else {
            panic!()
        };
        assert_eq!((o.servers[0].port, o.mode()), (3000, Mode::Flexible));

        let c = config(&args("example.com", "https://10.0.0.5")).unwrap();
        assert_eq!(c.listen.https.port(), 443);
        assert_eq!(c.listen.http.map(|a| a.port()), Some(80));
    }

    #[test]
    fn problems_name_the_flag() {
        let e = config(&args("bad host:1", "127.0.0.1:1")).unwrap_err();
        assert_eq!(e[0].key, "--from", "{e:?}");
        let e = config(&args("a.localhost:99999", "127.0.0.1:1")).unwrap_err();
        assert_eq!(e[0].key, "--from", "{e:?}");
        let e = config(&args("a.localhost", "ftp://x")).unwrap_err();
        assert_eq!(e[0].key, "--to", "{e:?}");
    }
}

//! `portcullis doctor --config FILE [--json] [--site NAME]`: what stands between a user and
//! a working HTTPS site, checked against the config and, when the gateway is running, its
//! live listeners. One finding per check (`ok`, `warn`, `fail`) with its evidence and the
//! fix, grouped by site; exit 0 when everything passes, 1 on warnings only, 2 on failures.
//!
//! Each check family is a module of its own returning [`Entry`]s; they run at once and
//! every probe has [`Context::timeout`], so the whole run ends in seconds whatever the
//! network does.

mod certs;
mod http;
mod listen;
mod mixed;
mod names;
mod origins;
mod probe;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use portcullis_config::{Config, HostPattern, Site};
use serde::Serialize;

/// The command line of `portcullis doctor` beyond `--config`.
#[derive(Debug, Clone, clap::Args)]
pub struct DoctorArgs {
    /// Print the findings as JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Check only this site (its `name`, or any of its hosts).
    #[arg(long)]
    pub site: Option<String>,
    /// An address the world reaches this machine at (a NAT's or a load balancer's); names
    /// resolving to it count as this machine's. Repeatable.
    #[arg(long = "public-address", value_name = "IP")]
    pub public_addresses: Vec<IpAddr>,
    /// Resolve names with this DNS server (`IP` or `IP:PORT`) instead of the system's
    /// resolver, e.g. a public one to see what the world sees.
    #[arg(long, value_name = "ADDR", value_parser = parse_resolver)]
    pub resolver: Option<SocketAddr>,
    /// How long each probe may take.
    #[arg(long, default_value = "3s", value_parser = parse_timeout)]
    pub timeout: Duration,
    /// Pages of each site fetched for the mixed-content check, the start page included.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=200))]
    pub max_pages: u16,
}

fn parse_resolver(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    text.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| format!("`{text}` is not an IP address or IP:PORT"))
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    let d = portcullis_config::parse_duration(text).map_err(|e| e.to_string())?;
    if d.is_zero() || d > Duration::from_secs(60) {
        return Err(format!("`{text}`: a probe timeout is between 1ms and 60s"));
    }
    Ok(d)
}

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Works.
    Ok,
    /// Works, but something will go wrong or is weaker than it could be.
    Warn,
    /// Broken: users meet an error.
    Fail,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The check family: `listening`, `names`, `certificate`, `acme`, `origin`, `http`,
    /// `mixed-content`.
    pub check: &'static str,
    /// What was checked: a listener address, a host, an origin server's URL, a page.
    pub subject: String,
    /// How it came out.
    pub status: Status,
    /// The evidence, one sentence or a few.
    pub message: String,
    /// What to do about it (`None` for `ok`, and for a warning with nothing to do).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Finding {
    /// An `ok` finding.
    pub fn ok(check: &'static str, subject: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(check, subject.into(), Status::Ok, message.into(), None)
    }

    /// A `warn` finding with its fix.
    pub fn warn(
        check: &'static str,
        subject: impl Into<String>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self::new(
            check,
            subject.into(),
            Status::Warn,
            message.into(),
            Some(fix.into()),
        )
    }

    /// A `fail` finding with its fix.
    pub fn fail(
        check: &'static str,
        subject: impl Into<String>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self::new(
            check,
            subject.into(),
            Status::Fail,
            message.into(),
            Some(fix.into()),
        )
    }

    fn new(
        check: &'static str,
        subject: String,
        status: Status,
        message: String,
        fix: Option<String>,
    ) -> Self {
        Self {
            check,
            subject,
            status,
            message,
            fix,
        }
    }
}

/// A finding and the site it belongs to (`None`: the gateway as a whole, e.g. a listener).
#[derive(Debug, Clone)]
pub struct Entry {
    /// The site's name.
    pub site: Option<String>,
    /// What was found.
    pub finding: Finding,
}

impl Entry {
    /// A finding about the gateway as a whole.
    pub fn gateway(finding: Finding) -> Self {
        Self {
            site: None,
            finding,
        }
    }

    /// A finding about `site`.
    pub fn site(site: &Site, finding: Finding) -> Self {
        Self {
            site: Some(site.name.clone()),
            finding,
        }
    }
}

/// What every check reads.
#[derive(Debug)]
pub struct Context {
    /// The config as the gateway would load it.
    pub config: Config,
    /// The sites to check (all, or the one `--site` named), in config order.
    pub sites: Vec<Site>,
    /// `--public-address`.
    pub public_addresses: Vec<IpAddr>,
    /// `--resolver`.
    pub resolver: Option<SocketAddr>,
    /// Each probe's timeout.
    pub timeout: Duration,
    /// Pages per site for the mixed-content check.
    pub max_pages: usize,
}

impl Context {
    /// Where to connect to reach the HTTPS listener from this machine: its address, with
    /// an all-interfaces address turned into loopback.
    pub fn https_target(&self) -> SocketAddr {
        connect_addr(self.config.listen.https)
    }

    /// Where to connect to reach the plain HTTP listener, when there is one.
    pub fn http_target(&self) -> Option<SocketAddr> {
        self.config.listen.http.map(connect_addr)
    }
}

/// Runs `check` for every selected site at once, each finding filed under its site.
pub(crate) async fn per_site<'a, F, Fut>(ctx: &'a Context, check: F) -> Vec<Entry>
where
    F: Fn(&'a Context, &'a Site) -> Fut,
    Fut: Future<Output = Vec<Finding>>,
{
    let sites = ctx.sites.iter().map(|site| {
        let found = check(ctx, site);
        async move {
            found
                .await
                .into_iter()
                .map(|f| Entry::site(site, f))
                .collect::<Vec<_>>()
        }
    });
    futures_util::future::join_all(sites)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// `addr` as a client on this machine reaches it.
pub fn connect_addr(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

/// A concrete name to probe for a host pattern: the name itself, or for `*.example.com`
/// a name it covers (`portcullis-doctor.example.com`). IPv6 literals lose their brackets.
pub fn probe_name(host: &HostPattern) -> String {
    match host {
        HostPattern::Exact(name) => name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .unwrap_or(name)
            .to_owned(),
        HostPattern::Wildcard(suffix) => format!("portcullis-doctor.{suffix}"),
    }
}

/// The whole outcome: entries of the gateway first, then of each site in config order.
#[derive(Debug, Serialize)]
pub struct Report {
    /// `None` first (the gateway), then one group per site.
    pub groups: Vec<Group>,
}

/// The findings of the gateway (`site: null`) or of one site.
#[derive(Debug, Serialize)]
pub struct Group {
    /// The site's name; `None` for the gateway as a whole.
    pub site: Option<String>,
    /// Its findings in check order.
    pub findings: Vec<Finding>,
}

impl Report {
    /// Groups `entries` by site: the gateway's first, then the sites in `order`.
    pub fn new(order: &[Site], entries: Vec<Entry>) -> Self {
        let mut groups: Vec<Group> = std::iter::once(None)
            .chain(order.iter().map(|s| Some(s.name.clone())))
            .map(|site| Group {
                site,
                findings: Vec::new(),
            })
            .collect();
        for entry in entries {
            let i = groups
                .iter()
                .position(|g| g.site == entry.site)
                .unwrap_or_else(|| {
                    groups.push(Group {
                        site: entry.site.clone(),
                        findings: Vec::new(),
                    });
                    groups.len() - 1
                });
            groups[i].findings.push(entry.finding);
        }
        groups.retain(|g| !g.findings.is_empty());
        Self { groups }
    }

    /// The worst status found (`Ok` when nothing was found).
    pub fn worst(&self) -> Status {
        self.groups
            .iter()
            .flat_map(|g| &g.findings)
            .map(|f| f.status)
            .max()
            .unwrap_or(Status::Ok)
    }

    /// 0 when everything passed, 1 on warnings only, 2 on failures.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self.worst() {
            Status::Ok => 0,
            Status::Warn => 1,
            Status::Fail => 2,
        })
    }

    /// The text a person reads: a heading per group, one line per finding, its fix below.
    pub fn render_text(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        for g in &self.groups {
            match &g.site {
                None => out.push_str("gateway\n"),
                Some(name) => {
                    let _ = writeln!(out, "site {name}");
                }
            }
            for f in &g.findings {
                let _ = writeln!(
                    out,
                    "  {:<4} {:<13} {}: {}",
                    f.status.as_str(),
                    f.check,
                    f.subject,
                    f.message
                );
                if let Some(fix) = &f.fix {
                    let _ = writeln!(out, "       fix: {fix}");
                }
            }
        }
        let count = |s| {
            self.groups
                .iter()
                .flat_map(|g| &g.findings)
                .filter(|f| f.status == s)
                .count()
        };
        let _ = writeln!(
            out,
            "{} ok, {} warnings, {} failures",
            count(Status::Ok),
            count(Status::Warn),
            count(Status::Fail)
        );
        out
    }

    /// The same as data.
    pub fn render_json(&self) -> String {
        #[derive(Serialize)]
        struct Out<'a> {
            status: Status,
            groups: &'a [Group],
        }
        serde_json::to_string_pretty(&Out {
            status: self.worst(),
            groups: &self.groups,
        })
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}

/// Why the doctor cannot start.
#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    /// `--site` names no site of the config.
    #[error("--site: no site is named `{0}` or has it as a host")]
    NoSuchSite(String),
}

/// Runs every check against `config` and returns the report.
pub async fn run(config: Config, args: &DoctorArgs) -> Result<Report, DoctorError> {
    let sites: Vec<Site> = match &args.site {
        None => config.sites.clone(),
        Some(wanted) => {
            let lower = wanted.to_ascii_lowercase();
            let found: Vec<Site> = config
                .sites
                .iter()
                .filter(|s| s.name == *wanted || s.hosts.iter().any(|h| h.to_string() == lower))
                .cloned()
                .collect();
            if found.is_empty() {
                return Err(DoctorError::NoSuchSite(wanted.clone()));
            }
            found
        }
    };
    let ctx = Context {
        config,
        sites,
        public_addresses: args.public_addresses.clone(),
        resolver: args.resolver,
        timeout: args.timeout,
        max_pages: usize::from(args.max_pages),
    };
    let (listen, names, certs, origins, http, mixed) = tokio::join!(
        listen::check(&ctx),
        names::check(&ctx),
        certs::check(&ctx),
        origins::check(&ctx),
        http::check(&ctx),
        mixed::check(&ctx),
    );
    let entries = [listen, names, certs, origins, http, mixed]
        .into_iter()
        .flatten()
        .collect();
    Ok(Report::new(&ctx.sites, entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(site: Option<&str>, status: Status) -> Entry {
        Entry {
            site: site.map(str::to_owned),
            finding: Finding {
                check: "http",
                subject: "x".into(),
                status,
                message: "m".into(),
                fix: None,
            },
        }
    }

    #[test]
    fn the_exit_status_is_the_worst_finding() {
        let report = |statuses: &[Status]| {
            Report::new(&[], statuses.iter().map(|s| entry(None, *s)).collect()).worst()
        };
        assert_eq!(report(&[]), Status::Ok);
        assert_eq!(report(&[Status::Ok, Status::Ok]), Status::Ok);
        assert_eq!(report(&[Status::Ok, Status::Warn]), Status::Warn);
        assert_eq!(
            report(&[Status::Fail, Status::Warn, Status::Ok]),
            Status::Fail
        );
    }

    #[test]
    fn findings_are_grouped_gateway_first_then_by_site() {
        let r = Report::new(
            &[],
            vec![
                entry(Some("b"), Status::Ok),
                entry(None, Status::Warn),
                entry(Some("b"), Status::Fail),
            ],
        );
        let sites: Vec<_> = r.groups.iter().map(|g| g.site.clone()).collect();
        assert_eq!(sites, vec![None, Some("b".to_owned())]);
        assert_eq!(r.groups[1].findings.len(), 2);
        let text = r.render_text();
        assert!(text.starts_with("gateway\n  warn"), "{text}");
        assert!(text.ends_with("1 ok, 1 warnings, 1 failures\n"), "{text}");
        let json: serde_json::Value = serde_json::from_str(&r.render_json()).unwrap();
        assert_eq!(json["status"], "fail");
        assert_eq!(json["groups"][1]["site"], "b");
        assert_eq!(json["groups"][1]["findings"][1]["status"], "fail");
    }

    #[test]
    fn wildcards_are_probed_with_a_name_they_cover() {
        let p = |s| probe_name(&HostPattern::parse(s).unwrap());
        assert_eq!(p("example.com"), "example.com");
        assert_eq!(p("*.example.com"), "portcullis-doctor.example.com");
        assert_eq!(p("[::1]"), "::1");
    }
}

//! Local firewall rules that drop or reject TCP to a listener's port: nftables read as JSON
//! (`nft -j list ruleset`, which also shows rules added through `iptables-nft`), else the
//! rules of `iptables-save` / `ip6tables-save` (legacy iptables). Only rules in chains hooked
//! at `input` are read, not chains they jump to; a ruleset that cannot be read (no tool, no
//! permission) gives no finding.

#![allow(
    clippy::disallowed_methods,
    reason = "runs a command and waits for it; called only inside spawn_blocking"
)]

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

/// Largest ruleset read.
const MAX_OUTPUT: u64 = 16 << 20;

/// A rule that drops or rejects some TCP traffic to a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocking {
    /// Where it is: `nftables rule in table inet filter chain input`, or
    /// `iptables rule in chain INPUT`.
    pub place: String,
    /// `drops` or `rejects`.
    pub verdict: &'static str,
    /// Whether the rule also matches on something else (a source address, an interface):
    /// then it blocks some clients only.
    pub conditional: bool,
    /// The rule as the tool prints it (iptables), or its handle (nftables).
    pub rule: String,
    /// No rule: the chain's policy drops, and no rule of the chain accepts the port.
    pub policy: bool,
    /// The chain as a command names it: `inet filter input` (nft), `INPUT` (iptables).
    pub chain: String,
}

/// The rules that block TCP to `port`, read from whichever firewall tool answers within
/// `timeout`; `None` when none could be read.
pub fn blocking(port: u16, timeout: Duration) -> Option<Vec<Blocking>> {
    let deadline = Instant::now() + timeout;
    if let Some(json) = run(&["nft", "-j", "list", "ruleset"], deadline) {
        return parse_nft(&json).ok().map(|r| nft_blocking(&r, port));
    }
    let mut found = None;
    for tool in ["iptables-save", "ip6tables-save"] {
        if let Some(text) = run(&[tool, "-t", "filter"], deadline) {
            found
                .get_or_insert_with(Vec::new)
                .extend(iptables_blocking(&text, port));
        }
    }
    found
}

/// Runs `argv` until `deadline`; its standard output if it exits 0 in time.
fn run(argv: &[&str], deadline: Instant) -> Option<String> {
    let (program, args) = argv.split_first()?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let stdout = child.stdout.take()?;
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.take(MAX_OUTPUT).read_to_end(&mut out);
        out
    });
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    };
    let out = reader.join().ok()?;
    status
        .success()
        .then(|| String::from_utf8_lossy(&out).into_owned())
}

/// `nft -j list ruleset`: a list of objects, each one kind of thing.
#[derive(Debug, Deserialize)]
pub struct Ruleset {
    nftables: Vec<Object>,
}

/// One object of a ruleset: a map with one key naming its kind. Only chains and rules are
/// read; the rest (metainfo, tables, sets, maps) are skipped.
#[derive(Debug, Deserialize)]
struct Object {
    #[serde(default)]
    chain: Option<Chain>,
    #[serde(default)]
    rule: Option<Rule>,
}

#[derive(Debug, Deserialize)]
struct Chain {
    family: String,
    table: String,
    name: String,
    #[serde(default)]
    hook: Option<String>,
    #[serde(default)]
    policy: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Rule {
    family: String,
    table: String,
    chain: String,
    #[serde(default)]
    handle: Option<u64>,
    #[serde(default)]
    expr: Vec<serde_json::Value>,
}

/// Parses the JSON of `nft -j list ruleset`.
pub fn parse_nft(json: &str) -> Result<Ruleset, serde_json::Error> {
    serde_json::from_str(json)
}

/// The rules in input-hooked chains that drop or reject TCP to `port`.
pub fn nft_blocking(ruleset: &Ruleset, port: u16) -> Vec<Blocking> {
    let input_chains: Vec<&Chain> = ruleset
        .nftables
        .iter()
        .filter_map(|o| o.chain.as_ref())
        .filter(|c| c.hook.as_deref() == Some("input"))
        .collect();
    let rules_of = |c: &Chain| {
        ruleset
            .nftables
            .iter()
            .filter_map(|o| o.rule.as_ref())
            .filter(|r| c.family == r.family && c.table == r.table && c.name == r.chain)
            .collect::<Vec<_>>()
    };
    let mut found = Vec::new();
    for chain in input_chains {
        let place = format!(
            "nftables rule in table {} {} chain {}",
            chain.family, chain.table, chain.name
        );
        let chain_ref = format!("{} {} {}", chain.family, chain.table, chain.name);
        let rules = rules_of(chain);
        for r in &rules {
            let (Some(verdict @ ("drops" | "rejects")), Some(conditional)) =
                (verdict_of(r), on_port(r, port))
            else {
                continue;
            };
            found.push(Blocking {
                place: place.clone(),
                verdict,
                conditional,
                rule: r.handle.map_or_else(String::new, |h| format!("handle {h}")),
                policy: false,
                chain: chain_ref.clone(),
            });
        }
        let accepted = rules
            .iter()
            .any(|r| verdict_of(r) == Some("accepts") && on_port(r, port).is_some());
        if chain.policy.as_deref() == Some("drop") && !accepted {
            let jumps = rules.iter().any(|r| verdict_of(r) == Some("jumps"));
            found.push(Blocking {
                place: format!(
                    "nftables chain {} of table {} {}",
                    chain.name, chain.family, chain.table
                ),
                verdict: "drops",
                conditional: jumps,
                rule: "policy drop".to_owned(),
                policy: true,
                chain: chain_ref,
            });
        }
    }
    found
}

/// What a rule does: `drops`, `rejects`, `accepts`, `jumps` (to another chain), or
/// nothing final (a counter, a log).
fn verdict_of(r: &Rule) -> Option<&'static str> {
    r.expr.iter().find_map(|e| {
        let obj = e.as_object()?;
        ["drop", "reject", "accept", "jump", "goto"]
            .iter()
            .find(|k| obj.contains_key(**k))
            .map(|k| match *k {
                "drop" => "drops",
                "reject" => "rejects",
                "accept" => "accepts",
                _ => "jumps",
            })
    })
}

/// For a rule that matches TCP to `port`: whether it also matches on something else (a
/// source, an interface); `None` when it does not match the port.
fn on_port(r: &Rule, port: u16) -> Option<bool> {
    let mut dport = None;
    let mut other = false;
    for m in r.expr.iter().filter_map(|e| e.get("match")) {
        match tcp_dport_match(m, port) {
            Some(hit) => dport = Some(dport.unwrap_or(true) && hit),
            None => other |= !is_tcp_protocol_match(m),
        }
    }
    dport.filter(|hit| *hit).map(|_| other)
}

/// For a `match` on the TCP (or any transport's) destination port: whether `port` matches
/// it; `None` for any other match.
fn tcp_dport_match(m: &serde_json::Value, port: u16) -> Option<bool> {
    let payload = m.get("left")?.get("payload")?;
    let protocol = payload.get("protocol")?.as_str()?;
    if !matches!(protocol, "tcp" | "th") || payload.get("field")?.as_str()? != "dport" {
        return None;
    }
    let inside = covers(m.get("right")?, port);
    Some(match m.get("op").and_then(|o| o.as_str()).unwrap_or("==") {
        "!=" => !inside,
        _ => inside,
    })
}

/// `meta l4proto tcp` (or `ip protocol tcp`): a match that only says "TCP".
fn is_tcp_protocol_match(m: &serde_json::Value) -> bool {
    let left = m.get("left");
    let says_tcp = m.get("right").and_then(|r| r.as_str()) == Some("tcp");
    let is_proto = left
        .and_then(|l| l.get("meta"))
        .and_then(|meta| meta.get("key"))
        .and_then(|k| k.as_str())
        == Some("l4proto")
        || left
            .and_then(|l| l.get("payload"))
            .and_then(|p| p.get("field"))
            .and_then(|f| f.as_str())
            .is_some_and(|f| f == "protocol" || f == "nexthdr");
    says_tcp && is_proto
}

/// Whether a port value (a number, a `range`, a `set` of either) holds `port`.
fn covers(value: &serde_json::Value, port: u16) -> bool {
    if let Some(n) = value.as_u64() {
        return n == u64::from(port);
    }
    if let Some(range) = value.get("range").and_then(|r| r.as_array())
        && let [low, high] = range.as_slice()
    {
        return low
            .as_u64()
            .zip(high.as_u64())
            .is_some_and(|(l, h)| (l..=h).contains(&u64::from(port)));
    }
    if let Some(set) = value.get("set").and_then(|s| s.as_array()) {
        return set.iter().any(|v| covers(v, port));
    }
    false
}

/// What `iptables-save` writes for a rule on the TCP port only; any other flag is another
/// condition.
const KNOWN_FLAGS: [&str; 9] = [
    "-A",
    "-p",
    "-m",
    "--dport",
    "--dports",
    "-j",
    "!",
    "--reject-with",
    "--tcp-flags",
];

/// The `-A INPUT ... -p tcp ... --dport P -j DROP|REJECT` lines of `iptables-save`, and an
/// INPUT policy of DROP that no `-j ACCEPT` rule for the port gets past.
pub fn iptables_blocking(text: &str, port: u16) -> Vec<Blocking> {
    let mut found = Vec::new();
    let mut accepted = false;
    let mut jumps = false;
    let mut policy_drop = false;
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() == Some(&":INPUT") && words.get(1) == Some(&"DROP") {
            policy_drop = true;
        }
        if words.first() != Some(&"-A") || words.get(1) != Some(&"INPUT") {
            continue;
        }
        let target = after(&words, "-j").or_else(|| after(&words, "-g"));
        let Some(conditional) = iptables_on_port(&words, port) else {
            jumps |= !matches!(
                target,
                Some("ACCEPT" | "DROP" | "REJECT" | "LOG" | "RETURN")
            );
            continue;
        };
        let verdict = match target {
            Some("DROP") => "drops",
            Some("REJECT") => "rejects",
            Some("ACCEPT") => {
                accepted = true;
                continue;
            }
            _ => {
                jumps = true;
                continue;
            }
        };
        found.push(Blocking {
            place: "iptables rule in table filter chain INPUT".to_owned(),
            verdict,
            conditional,
            rule: line.trim().to_owned(),
            policy: false,
            chain: "INPUT".to_owned(),
        });
    }
    if policy_drop && !accepted {
        found.push(Blocking {
            place: "iptables chain INPUT of table filter".to_owned(),
            verdict: "drops",
            conditional: jumps,
            rule: "policy DROP".to_owned(),
            policy: true,
            chain: "INPUT".to_owned(),
        });
    }
    found
}

/// The word after `flag`.
fn after<'a>(words: &[&'a str], flag: &str) -> Option<&'a str> {
    words
        .iter()
        .position(|w| *w == flag)
        .and_then(|i| words.get(i + 1))
        .copied()
}

/// For a rule on TCP to `port`: whether it has other conditions; `None` when it is not
/// about that port.
fn iptables_on_port(words: &[&str], port: u16) -> Option<bool> {
    if after(words, "-p") != Some("tcp") {
        return None;
    }
    let dports = after(words, "--dport").or_else(|| after(words, "--dports"))?;
    let negated = words
        .iter()
        .position(|w| *w == "--dport" || *w == "--dports")
        .is_some_and(|i| i > 0 && words[i - 1] == "!");
    let inside = dports.split(',').any(|p| match p.split_once(':') {
        Some((l, h)) => l
            .parse::<u16>()
            .ok()
            .zip(h.parse::<u16>().ok())
            .is_some_and(|(l, h)| (l..=h).contains(&port)),
        None => p.parse::<u16>().ok() == Some(port),
    });
    if inside == negated {
        return None;
    }
    Some(
        words
            .iter()
            .any(|w| w.starts_with('-') && !KNOWN_FLAGS.contains(w)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    // `nft -j list ruleset` of nftables 1.0.6 (Debian 12) after:
    //   nft add table inet filter
    //   nft add chain inet filter input '{ type filter hook input priority 0; policy accept; }'
    //   nft add rule inet filter input tcp dport 443 drop
    //   nft add rule inet filter input tcp dport '{ 80, 8080 }' reject
    //   nft add rule inet filter input ip saddr 10.0.0.0/8 tcp dport 1000-2000 counter drop
    //   iptables -A INPUT -p tcp --dport 22 -j DROP     (iptables-nft)
    // plus an output chain, which must not count.
    const NFT: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "inet", "name": "filter", "handle": 1}}, {"chain": {"family": "inet", "table": "filter", "name": "input", "handle": 1, "type": "filter", "hook": "input", "prio": 0, "policy": "accept"}}, {"rule": {"family": "inet", "table": "filter", "chain": "input", "handle": 2, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 443}}, {"drop": null}]}}, {"rule": {"family": "inet", "table": "filter", "chain": "input", "handle": 4, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": {"set": [80, 8080]}}}, {"reject": {"type": "icmpx", "expr": "port-unreachable"}}]}}, {"rule": {"family": "inet", "table": "filter", "chain": "input", "handle": 5, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.0.0.0", "len": 8}}}}, {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": {"range": [1000, 2000]}}}, {"counter": {"packets": 0, "bytes": 0}}, {"drop": null}]}}, {"table": {"family": "ip", "name": "filter", "handle": 2}}, {"chain": {"family": "ip", "table": "filter", "name": "INPUT", "handle": 1, "type": "filter", "hook": "input", "prio": 0, "policy": "accept"}}, {"rule": {"family": "ip", "table": "filter", "chain": "INPUT", "handle": 2, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 22}}, {"counter": {"packets": 0, "bytes": 0}}, {"drop": null}]}}, {"chain": {"family": "inet", "table": "filter", "name": "output", "handle": 9, "type": "filter", "hook": "output", "prio": 0, "policy": "accept"}}, {"rule": {"family": "inet", "table": "filter", "chain": "output", "handle": 10, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 9443}}, {"drop": null}]}}, {"rule": {"family": "inet", "table": "filter", "chain": "input", "handle": 11, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}}, {"match": {"op": "!=", "left": {"payload": {"protocol": "th", "field": "dport"}}, "right": {"set": [22, 443]}}}, {"drop": null}]}}]}"#;

    fn at(port: u16) -> Vec<(String, &'static str, bool)> {
        nft_blocking(&parse_nft(NFT).unwrap(), port)
            .into_iter()
            .map(|b| (format!("{} {}", b.place, b.rule), b.verdict, b.conditional))
            .collect()
    }

    #[test]
    fn nft_rules_dropping_the_port_are_found() {
        assert_eq!(
            at(443),
            vec![(
                "nftables rule in table inet filter chain input handle 2".to_owned(),
                "drops",
                false
            )]
        );
        assert_eq!(
            at(8080),
            vec![
                (
                    "nftables rule in table inet filter chain input handle 4".to_owned(),
                    "rejects",
                    false
                ),
                (
                    "nftables rule in table inet filter chain input handle 11".to_owned(),
                    "drops",
                    false
                )
            ]
        );
        let ranged = at(1500);
        assert_eq!(ranged[0].1, "drops");
        assert!(ranged[0].2, "a source-limited rule is conditional");
        assert_eq!(
            at(22),
            vec![(
                "nftables rule in table ip filter chain INPUT handle 2".to_owned(),
                "drops",
                false
            )]
        );
        // Dropped on output only: not a listener's problem.
        assert_eq!(at(9443).len(), 1, "{:?}", at(9443));
        assert!(at(9443)[0].0.contains("handle 11"));
    }

    #[test]
    fn an_empty_or_foreign_ruleset_blocks_nothing() {
        let empty = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}]}"#;
        assert!(nft_blocking(&parse_nft(empty).unwrap(), 443).is_empty());
        assert!(parse_nft("not json").is_err());
    }

    // A default-deny ruleset (nftables 1.0.6): policy drop, established traffic, ssh and
    // loopback accepted; the same with a jump to another chain added at the end.
    const DEFAULT_DENY: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "inet", "name": "fw", "handle": 1}}, {"chain": {"family": "inet", "table": "fw", "name": "extra", "handle": 1}}, {"chain": {"family": "inet", "table": "fw", "name": "input", "handle": 2, "type": "filter", "hook": "input", "prio": 0, "policy": "drop"}}, {"rule": {"family": "inet", "table": "fw", "chain": "input", "handle": 3, "expr": [{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "fw", "chain": "input", "handle": 4, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 22}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "fw", "chain": "input", "handle": 5, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "lo"}}, {"accept": null}]}}]}"#;
    const JUMP: &str = r#", {"rule": {"family": "inet", "table": "fw", "chain": "input", "handle": 6, "expr": [{"jump": {"target": "extra"}}]}}]}"#;

    #[test]
    fn a_drop_policy_with_no_accept_for_the_port_blocks_it() {
        let deny = parse_nft(DEFAULT_DENY).unwrap();
        assert!(nft_blocking(&deny, 22).is_empty());
        let found = nft_blocking(&deny, 443);
        assert_eq!(found.len(), 1);
        assert!(found[0].policy && !found[0].conditional, "{found:?}");
        assert_eq!(found[0].chain, "inet fw input");
        assert_eq!(found[0].place, "nftables chain input of table inet fw");
        // The accept may be in the chain it jumps to: only a warning.
        let jumping = DEFAULT_DENY.trim_end_matches("]}").to_owned() + JUMP;
        let found = nft_blocking(&parse_nft(&jumping).unwrap(), 443);
        assert!(found[0].policy && found[0].conditional, "{found:?}");

        let legacy = "*filter\n:INPUT DROP [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
                      -A INPUT -p tcp -m tcp --dport 22 -j ACCEPT\nCOMMIT\n";
        assert!(iptables_blocking(legacy, 22).is_empty());
        let found = iptables_blocking(legacy, 443);
        assert!(found[0].policy && !found[0].conditional, "{found:?}");
    }

    #[test]
    fn iptables_save_rules_dropping_the_port_are_found() {
        let text = "# Generated by iptables-save v1.8.9 on Mon Dec  7 06:16:43 2026
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p tcp -m tcp --dport 22 -j DROP
-A INPUT -s 10.0.0.0/8 -p tcp -m multiport --dports 80,8000:8100 -j REJECT --reject-with icmp-port-unreachable
-A OUTPUT -p tcp -m tcp --dport 443 -j DROP
-A INPUT -p tcp -m tcp --dport 443 -j ACCEPT
COMMIT
";
        let found = iptables_blocking(text, 22);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].verdict, "drops");
        assert!(!found[0].conditional);
        let found = iptables_blocking(text, 8080);
        assert_eq!(found[0].verdict, "rejects");
        assert!(found[0].conditional);
        assert!(iptables_blocking(text, 443).is_empty());
    }
}

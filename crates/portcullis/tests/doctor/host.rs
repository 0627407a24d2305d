//! Checks `listening` and `names`, against situations built for real: a
//! port held by another process, the ports of a running gateway, a privileged port for an
//! unprivileged user, a listener on loopback, an nftables rule dropping the port (in a
//! network namespace of the test's own), and names served by a DNS server the test controls.
//! Needs root (the tests' user), Debian's python3, nftables and iproute2 (`.ci/run`).

use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use portcullis_tests::dns::TestDns;
use portcullis_tests::doctor::Doctor;
use portcullis_tests::ports::stable_port;
use portcullis_tests::{GatewayBuilder, GatewayProcess};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// Runs `doctor --json` with `args` through `runner` (e.g. `["runuser", "-u", "nobody",
/// "--"]`).
fn doctor_via(runner: &[&str], config: &Path, args: &[&str]) -> Doctor {
    portcullis_tests::doctor::run(BIN, runner, config, args)
}

fn doctor(config: &Path, args: &[&str]) -> Doctor {
    doctor_via(&[], config, args)
}

/// A config with these listeners and one site for `localhost` (which needs no DNS).
fn listeners(https: &str, http: &str, admin: &str) -> GatewayBuilder {
    GatewayBuilder::new()
        .set("listen", &format!("{{https: '{https}', http: '{http}'}}"))
        .set("admin", &format!("{{listen: '{admin}'}}"))
        .site("{name: local, hosts: [localhost], tls: local, respond: {}}")
}

/// A process that is not the test: Python holding a listening socket on 127.0.0.1, its
/// port read from what it prints.
struct Holder {
    child: Child,
    port: u16,
}

impl Holder {
    fn start() -> Self {
        let mut child = Command::new("/usr/bin/python3")
            .args([
                "-c",
                "import socket,sys,time\n\
                 s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
                 s.bind(('127.0.0.1', 0)); s.listen()\n\
                 print(s.getsockname()[1], flush=True); time.sleep(60)",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 (Debian python3) runs");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().unwrap();
        Self { child, port }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_port_taken_by_another_process_names_it_and_its_pid() {
    let holder = Holder::start();
    let taken = format!("127.0.0.1:{}", holder.port);
    let b = listeners(&taken, "off", "off");
    let out = doctor(&b.write_config(), &[]);

    let f = out.one("listening", &taken, "taken by");
    assert_eq!(f["status"], "fail", "{f:#}");
    let message = f["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("taken by python3 (pid {})", holder.child.id())),
        "{message}"
    );
    let fix = f["fix"].as_str().unwrap();
    assert!(
        fix.contains(&format!("stop python3 (pid {})", holder.child.id()))
            && fix.contains("listen.https"),
        "{fix}"
    );
    assert_eq!(out.json["status"], "fail");
    out.assert_exit_follows_findings(0);
}

#[test]
fn the_ports_of_a_running_gateway_are_bound_by_this_gateway() {
    let (https, http, admin) = (stable_port(), stable_port(), stable_port());
    // Public listeners on every interface: no loopback warning either.
    let public = |a: std::net::SocketAddr| format!("0.0.0.0:{}", a.port());
    let b = listeners(&public(https), &public(http), &admin.to_string());
    let config = b.write_config();
    let gw = GatewayProcess::spawn(
        Path::new(BIN),
        &["run", "--config", config.to_str().unwrap()],
    );

    let out = doctor(&config, &[]);
    for subject in [public(https), public(http), admin.to_string()] {
        let found = out.about("listening", &subject);
        assert_eq!(found.len(), 1, "{subject}: {found:#?}");
        assert_eq!(found[0]["status"], "ok", "{:#}", found[0]);
        let message = found[0]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("bound by this gateway (pid {})", gw.pid())),
            "{message}"
        );
    }
    assert_eq!(
        out.one("names", "localhost", "localhost name")["status"],
        "ok"
    );
    out.assert_exit_follows_findings(0);

    // Once it is gone, the same ports are free.
    drop(gw);
    let out = doctor(&config, &[]);
    let f = out.one("listening", &public(https), "free");
    assert_eq!(f["status"], "ok");
}

#[test]
fn a_privileged_port_for_an_unprivileged_user_gets_the_three_fixes() {
    let b = listeners("127.0.0.1:443", "off", "off");
    let config = b.write_config();
    // `nobody` must read the config and what it names.
    let open = |p: &Path, mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    open(b.dir(), 0o755);
    open(&config, 0o644);

    let out = doctor_via(&["runuser", "-u", "nobody", "--"], &config, &[]);
    let f = out.one("listening", "127.0.0.1:443", "permission denied");
    assert_eq!(f["status"], "fail", "{f:#}");
    let fix = f["fix"].as_str().unwrap();
    for want in [
        "setcap cap_net_bind_service=+ep $(command -v portcullis)",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "sysctl net.ipv4.ip_unprivileged_port_start=443",
    ] {
        assert!(fix.contains(want), "no {want:?} in {fix}");
    }
    assert_eq!(out.code, Some(2));
    out.assert_exit_follows_findings(0);
}

#[test]
fn a_public_listener_on_loopback_warns_and_the_admin_one_does_not() {
    let admin = stable_port();
    let b = listeners("127.0.0.1:0", "0.0.0.0:0", &admin.to_string());
    let out = doctor(&b.write_config(), &[]);

    let f = out.one("listening", "127.0.0.1:0", "loopback");
    assert_eq!(f["status"], "warn");
    assert!(
        f["message"]
            .as_str()
            .unwrap()
            .contains("reachable from this machine only"),
        "{f:#}"
    );
    assert!(
        f["fix"]
            .as_str()
            .unwrap()
            .contains("listen.https: 0.0.0.0:0"),
        "{f:#}"
    );
    for quiet in ["0.0.0.0:0".to_owned(), admin.to_string()] {
        let found = out.about("listening", &quiet);
        assert_eq!(found.len(), 1, "{quiet}: {found:#?}");
        assert_eq!(found[0]["status"], "ok", "{:#}", found[0]);
    }
    assert_ne!(out.json["status"], "ok");
    out.assert_exit_follows_findings(0);
}

/// Names against the test's DNS server: this machine, elsewhere, both, nowhere.
fn names_config() -> GatewayBuilder {
    GatewayBuilder::new()
        .set("listen", "{https: '0.0.0.0:0', http: '0.0.0.0:0'}")
        .set("admin", "{listen: off}")
        .set("acme", "{directory: 'https://acme.invalid/directory'}")
        .site("{name: shop, hosts: [good.test, elsewhere.test, gone.test, big.test], tls: acme, respond: {}}")
        .site("{name: blog, hosts: [other.test, mixed.test, '*.wild.test', 203.0.113.7, 127.0.0.2], tls: local, respond: {}}")
}

#[test]
fn names_resolving_elsewhere_fail_for_acme_and_warn_otherwise() {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    // big.test's answer only comes over TCP, as a large one would.
    let dns = TestDns::start_truncating(
        &[
            ("good.test", &[ip("127.0.0.1"), ip("::1")]),
            ("big.test", &[ip("127.0.0.3")]),
            ("portcullis-doctor.wild.test", &[ip("127.0.0.1")]),
            ("elsewhere.test", &[ip("203.0.113.9")]),
            ("other.test", &[ip("203.0.113.9")]),
            ("mixed.test", &[ip("127.0.0.1"), ip("203.0.113.10")]),
        ],
        &["big.test"],
    );
    let b = names_config();
    let config = b.write_config();
    let resolver = dns.addr().to_string();
    let out = doctor(&config, &["--resolver", &resolver]);

    let status = |host: &str| {
        let found = out.about("names", host);
        assert_eq!(found.len(), 1, "{host}: {:#}", out.json);
        found[0].clone()
    };
    let good = status("good.test");
    assert_eq!(good["status"], "ok", "{good:#}");
    assert!(good["message"].as_str().unwrap().contains("127.0.0.1, ::1"));
    assert_eq!(good["site"], "shop");
    let big = status("big.test");
    assert_eq!(big["status"], "ok", "{big:#}");
    assert!(
        big["message"].as_str().unwrap().contains("127.0.0.3"),
        "{big:#}"
    );
    let wild = status("*.wild.test");
    assert_eq!(wild["status"], "ok", "{wild:#}");
    assert!(
        wild["message"]
            .as_str()
            .unwrap()
            .contains("portcullis-doctor.wild.test")
    );

    let elsewhere = status("elsewhere.test");
    assert_eq!(elsewhere["status"], "fail", "{elsewhere:#}");
    let message = elsewhere["message"].as_str().unwrap();
    assert!(
        message.contains("resolves to 203.0.113.9, which is not an address of this machine")
            && message.contains("ACME HTTP-01/TLS-ALPN-01"),
        "{message}"
    );
    assert!(
        elsewhere["fix"]
            .as_str()
            .unwrap()
            .contains("--public-address 203.0.113.9"),
        "{elsewhere:#}"
    );
    // Not an ACME site: traffic goes elsewhere, but nothing of the gateway's breaks.
    assert_eq!(status("other.test")["status"], "warn");
    let mixed = status("mixed.test");
    assert_eq!(mixed["status"], "warn", "{mixed:#}");
    assert!(mixed["message"].as_str().unwrap().contains("203.0.113.10"));

    let gone = status("gone.test");
    assert_eq!(gone["status"], "fail", "{gone:#}");
    assert!(
        gone["message"].as_str().unwrap().contains("NXDOMAIN"),
        "{gone:#}"
    );
    assert!(gone["fix"].as_str().unwrap().contains("record"), "{gone:#}");

    // IP literals are not resolved: this machine's is fine, another one is not.
    assert_eq!(status("127.0.0.2")["status"], "ok");
    assert_eq!(status("203.0.113.7")["status"], "warn");
    out.assert_exit_follows_findings(0);

    // A NAT that forwards 203.0.113.9 here: the same names are this machine's.
    let out = doctor(
        &config,
        &["--resolver", &resolver, "--public-address", "203.0.113.9"],
    );
    for host in ["elsewhere.test", "other.test"] {
        let found = out.about("names", host);
        assert_eq!(found[0]["status"], "ok", "{host}: {:#}", found[0]);
    }
    assert_eq!(out.about("names", "gone.test")[0]["status"], "fail");
}

#[test]
fn an_nftables_rule_dropping_the_port_is_reported() {
    let b = listeners("0.0.0.0:443", "0.0.0.0:80", "off");
    let config = b.write_config();
    // A network namespace of the test's own: its firewall is empty but for these rules, and
    // nothing in it holds 443 or 80.
    let script = "set -e; ip link set lo up; \
         nft add table inet filter; \
         nft add chain inet filter input '{ type filter hook input priority 0; policy accept; }'; \
         nft add rule inet filter input tcp dport 443 drop; \
         nft add rule inet filter input ip saddr 10.0.0.0/8 tcp dport 80 reject; \
         exec \"$@\"";
    let out = doctor_via(&["unshare", "-n", "sh", "-c", script, "sh"], &config, &[]);

    let f = out.one("listening", "0.0.0.0:443", "nftables");
    assert_eq!(f["status"], "fail", "{f:#}");
    assert!(
        f["message"]
            .as_str()
            .unwrap()
            .starts_with("nftables rule in table inet filter chain input drops tcp dport 443"),
        "{f:#}"
    );
    assert!(
        f["fix"]
            .as_str()
            .unwrap()
            .contains("nft insert rule inet filter input tcp dport 443 accept"),
        "{f:#}"
    );
    // Only some clients are refused on :80.
    let f = out.one("listening", "0.0.0.0:80", "nftables");
    assert_eq!(f["status"], "warn", "{f:#}");
    assert!(
        f["message"]
            .as_str()
            .unwrap()
            .contains("rejects tcp dport 80")
    );
    assert_eq!(out.one("listening", "0.0.0.0:443", "free")["status"], "ok");
    out.assert_exit_follows_findings(0);

    // Outside the namespace those rules do not exist.
    let out = doctor(&config, &[]);
    assert!(
        out.about("listening", "0.0.0.0:443")
            .iter()
            .all(|f| !f["message"]
                .as_str()
                .unwrap()
                .contains("nftables rule in table inet filter chain input drops tcp dport 443")),
        "{:#}",
        out.json
    );
}

#[test]
fn with_nonlocal_bind_on_a_foreign_address_is_still_not_this_machines() {
    // Where any address binds (keepalived, HAProxy hosts), binding proves nothing: the
    // doctor reads the routing table instead. A namespace of the test's own with the sysctls
    // on, and the IP-literal hosts that need no DNS.
    let b = GatewayBuilder::new()
        .set("listen", "{https: '0.0.0.0:0', http: 'off'}")
        .set("admin", "{listen: 'off'}")
        .site("{name: ips, hosts: [127.0.0.1, 203.0.113.7, '[::1]', '[2001:db8::7]'], tls: local, respond: {}}");
    let script = "set -e; ip link set lo up; \
         echo 1 > /proc/sys/net/ipv4/ip_nonlocal_bind; \
         echo 1 > /proc/sys/net/ipv6/ip_nonlocal_bind; \
         exec \"$@\"";
    let out = doctor_via(
        &["unshare", "-n", "sh", "-c", script, "sh"],
        &b.write_config(),
        &[],
    );
    for (host, status) in [
        ("127.0.0.1", "ok"),
        ("[::1]", "ok"),
        ("203.0.113.7", "warn"),
        ("[2001:db8::7]", "warn"),
    ] {
        let found = out.about("names", host);
        assert_eq!(found.len(), 1, "{host}: {:#}", out.json);
        assert_eq!(found[0]["status"], status, "{host}: {:#}", found[0]);
    }
    out.assert_exit_follows_findings(0);
}

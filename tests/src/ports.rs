//! Loopback ports for processes that are stopped and started again on the same port
//! (gateways and etcd members restarted by a test).

use std::net::{SocketAddr, TcpListener};

/// A free port for a process's listener, kept across its restarts. Taken below the
/// kernel's ephemeral range (`net.ipv4.ip_local_port_range`): a port from that range may be
/// handed to some outgoing connection while the process is down, and its restart would
/// then fail to bind.
pub fn stable_port() -> SocketAddr {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::{Mutex, OnceLock};
    // Ports handed out in this process, never handed out twice; the walk through the
    // range starts at a random place per process.
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    static START: OnceLock<u32> = OnceLock::new();
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u32, ephemeral_start.max(10_100));
    let start = *START.get_or_init(|| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        (h.finish() % u64::from(high - low)) as u32
    });
    let mut given = GIVEN.lock().unwrap();
    for n in 0..(high - low) {
        let port = u16::try_from(low + (start + n * 7919) % (high - low)).expect("below 65536");
        if given.contains(&port) {
            continue;
        }
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            given.push(port);
            return l.local_addr().unwrap();
        }
    }
    panic!("no free port below the ephemeral range");
}

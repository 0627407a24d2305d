#!/usr/bin/env python3
"""Helper for bench/run.sh: free ports, measurements, parsing and the summary.

Subcommands (all print to stdout):
  ports N                        N free TCP ports on 127.0.0.1
  measure --out F --pid P [--label k=v ...] --kind KIND -- CMD...
                                 run CMD, parse its output (KIND: wrk, h2load, tlsload),
                                 append one JSON line to F with the proxy's CPU use
  idle --port P --name N --count C --pid PID --out F [--label k=v ...]
                                 open C idle keep-alive TLS connections, record the RSS of PID
  wait-ready URL --since T0 [--timeout S]
                                 poll URL until 200; print seconds since T0 (a time.time())
  record --out F k=v ...         append one JSON line (numbers converted)
  rss PID / cpu-seconds PID      RSS (KiB) / CPU seconds of PID and its descendants
  summary F                      Markdown tables from a results file
  perf-summary REPORT            a `perf report` text grouped by component
  syscalls-per-request CSV OUT KIND / segments-per-request NSTAT OUT KIND
                                 `perf stat` system calls / `nstat` TCP segments per request
"""

import argparse
import asyncio
import hashlib
import json
import os
import re
import resource
import socket
import ssl
import statistics
import subprocess
import sys
import time
import urllib.request

CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- /proc readings


def _stat_fields(pid):
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    # The command name is in parentheses and may hold spaces; fields follow the last ')'.
    return text[text.rindex(")") + 2 :].split()


def tree(pid):
    """pid and all its descendants (nginx's workers, for one)."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(_stat_fields(entry)[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_split(pid):
    """(user, kernel) CPU ticks of PID and its descendants: utime and stime."""
    user = kernel = 0
    for p in tree(pid):
        try:
            f = _stat_fields(p)
            user += int(f[11])
            kernel += int(f[12])
        except (OSError, IndexError):
            pass
    return user, kernel


def cpu_ticks(pid):
    return sum(cpu_split(pid))


def rss_kib(pid):
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def all_ticks():
    """{pid: (name, utime + stime, last CPU)} for every process."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                text = f.read()
            name = text[text.index("(") + 1 : text.rindex(")")]
            fl = text[text.rindex(")") + 2 :].split()
            out[int(entry)] = (name, int(fl[11]) + int(fl[12]), int(fl[36]))
        except (OSError, ValueError, IndexError):
            pass
    return out


def others(before, after, exclude, wall, cpu):
    """The busiest other processes that last ran on `cpu`, as 'name 35%'."""
    busy = []
    for pid, (name, ticks, where) in after.items():
        if pid in exclude or where != cpu:
            continue
        d = ticks - before.get(pid, (name, 0, where))[1]
        if d > 0:
            busy.append((d, name))
    busy.sort(reverse=True)
    return ", ".join(f"{name} {d / CLK_TCK / wall * 100:.0f}%" for d, name in busy[:3])


def cpu_lines():
    """(busy, total) jiffies per CPU, from /proc/stat."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            m = re.match(r"cpu(\d+) (.*)", line)
            if m:
                v = [int(x) for x in m.group(2).split()]
                # user + nice + system + steal: what processes (or the hypervisor) took.
                # irq and softirq are left out: much of it is the proxy's own loopback
                # traffic, which the kernel does not charge to the proxy.
                out[int(m.group(1))] = (v[0] + v[1] + v[2] + v[7], sum(v[:8]))
    return out


# ---------------------------------------------------------------- parsers


def _ms(value, unit):
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def parse_wrk(text):
    out = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if m:
        out["rps"] = float(m.group(1))
    for pct, key in (("50", "p50_ms"), ("99", "p99_ms")):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        if m:
            out[key] = _ms(*m.groups())
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    out["errors"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        out["errors"] += sum(int(x) for x in m.groups())
    return out


def parse_h2load(text):
    out = {}
    m = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", text)
    if m:
        out["rps"] = float(m.group(1))
    m = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored", text)
    if m:
        out["errors"] = int(m.group(2)) + int(m.group(3))
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    if m:
        out["errors"] = out.get("errors", 0) + sum(int(x) for x in m.groups()[1:])
    m = re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", text)
    if m:
        out["mean_ms"] = _ms(*m.groups())
    return out


def parse_tlsload(text):
    line = [l for l in text.splitlines() if l.startswith("{")][-1]
    d = json.loads(line)
    return {"rps": d["rate"], "errors": d["errors"], "resumed": d["resumed"],
            "p50_ms": d["p50_ms"], "p99_ms": d["p99_ms"]}


PARSERS = {"wrk": parse_wrk, "h2load": parse_h2load, "tlsload": parse_tlsload}


def labels(pairs):
    out = {}
    for p in pairs or []:
        k, _, v = p.partition("=")
        out[k] = v
    return out


def append(path, record):
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


# ---------------------------------------------------------------- commands


def cmd_ports(a):
    socks = []
    for _ in range(a.n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    print(" ".join(str(s.getsockname()[1]) for s in socks))
    for s in socks:
        s.close()


def cmd_measure(a):
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd
    for attempt in range(1, a.attempts + 1):
        record = measure_once(a, cmd)
        record["attempt"] = attempt
        # On a shared machine someone else's build may land on the proxy's core: try again
        # (a bounded number of times) rather than report a starved proxy.
        noisy = max(record.get("foreign_cpu", 0), record.get("foreign_load_cpu", 0)) > a.noisy
        if not noisy or attempt == a.attempts or record.get("failed"):
            break
        sys.stderr.write(f"noisy ({record.get('others')}); trying again\n")
        time.sleep(3)
    if noisy:
        record["noisy"] = True
    append(a.out, record)
    print(json.dumps(record, sort_keys=True))


def speed_probe(cpu, mib=128):
    """SHA-256 MB/s on one core: how fast this (virtual) core is right now."""
    old = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {cpu})
        block = b"\0" * (1 << 20)
        h = hashlib.sha256()
        t0 = time.perf_counter()
        for _ in range(mib):
            h.update(block)
        return round(mib * 1.048576 / (time.perf_counter() - t0))
    finally:
        os.sched_setaffinity(0, old)


def measure_once(a, cmd):
    speed = speed_probe(a.proxy_cpu_index)
    exclude = set(tree(a.pid)) | {os.getpid()}
    if a.origin_pid:
        exclude |= set(tree(a.origin_pid))
    o0 = cpu_ticks(a.origin_pid) if a.origin_pid else 0
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    p0, u0, s0, t0 = all_ticks(), cpu_split(a.pid), cpu_lines(), time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
    u1, s1, t1, p1 = cpu_split(a.pid), cpu_lines(), time.monotonic(), all_ticks()
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    o1 = cpu_ticks(a.origin_pid) if a.origin_pid else 0
    record = labels(a.label)
    record["kind"] = a.kind
    record["speed_proxy_core"] = speed
    try:
        record.update(PARSERS[a.kind](proc.stdout))
    except (ValueError, IndexError, KeyError) as e:
        record["parse_error"] = str(e)
    if proc.returncode != 0 or "rps" not in record:
        record["failed"] = True
        sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-2000:])
    wall = t1 - t0
    record["wall_s"] = round(wall, 3)
    # CPU share of one core used by the proxy over the whole run of the load generator
    # (including its connection set-up, so slightly low for short runs).
    record["proxy_cpu"] = round((sum(u1) - sum(u0)) / CLK_TCK / wall, 3)
    # The same, split into user space and the kernel (for the proxy, mostly loopback TCP).
    record["proxy_user_cpu"] = round((u1[0] - u0[0]) / CLK_TCK / wall, 3)
    record["proxy_sys_cpu"] = round((u1[1] - u0[1]) / CLK_TCK / wall, 3)
    cpu = a.proxy_cpu_index
    if cpu in s0 and cpu in s1:
        busy = (s1[cpu][0] - s0[cpu][0]) / max(1, s1[cpu][1] - s0[cpu][1])
        # What else ran on the proxy's core: other people's work on a shared machine.
        record["foreign_cpu"] = round(max(0.0, busy - record["proxy_cpu"]), 3)
        record["others"] = others(p0, p1, exclude, wall, cpu)
    # The load generator's own core: the load generator, the origin, and anyone else.
    lcpu = a.load_cpu_index
    if lcpu != cpu and lcpu in s0 and lcpu in s1:
        gen = (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) / wall
        origin = (o1 - o0) / CLK_TCK / wall
        busy = (s1[lcpu][0] - s0[lcpu][0]) / max(1, s1[lcpu][1] - s0[lcpu][1])
        record["loadgen_cpu"] = round(gen, 3)
        record["origin_cpu"] = round(origin, 3)
        record["foreign_load_cpu"] = round(max(0.0, busy - gen - origin), 3)
    record["loadavg"] = round(os.getloadavg()[0], 2)
    return record


def _h2_frame(kind, flags, stream, payload=b""):
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


async def _h2_get(r, w, name):
    """GET / as the only stream of a new HTTP/2 connection; returns once its response ends."""
    # HPACK: :method GET, :scheme https, :path / (static table), :authority as a literal.
    block = bytes([0x82, 0x87, 0x84, 0x41, len(name)]) + name.encode()
    w.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _h2_frame(4, 0, 0) +
            _h2_frame(1, 0x5, 1, block))
    status = None
    while True:
        head = await r.readexactly(9)
        length, kind, flags = int.from_bytes(head[:3], "big"), head[3], head[4]
        stream = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
        payload = await r.readexactly(length)
        if kind == 4 and not flags & 1:
            w.write(_h2_frame(4, 1, 0))  # SETTINGS ack
        elif kind == 6 and not flags & 1:
            w.write(_h2_frame(6, 1, 0, payload))  # PING ack
        elif kind == 1 and stream == 1 and status is None:
            status = 200 if payload[:1] == b"\x88" else 0  # :status 200, static index 8
        if kind in (0, 1) and stream == 1 and flags & 1:
            if status != 200:
                raise ValueError(f"HTTP/2 status {status}")
            return
        if kind == 7:
            raise ValueError("GOAWAY")


async def _idle(a):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols(["h2"] if a.h2 else ["http/1.1"])
    req = f"GET / HTTP/1.1\r\nHost: {a.name}\r\nUser-Agent: bench-idle\r\n\r\n".encode()
    conns, failures = [], 0
    sem = asyncio.Semaphore(50)

    async def one():
        nonlocal failures
        async with sem:
            try:
                r, w = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", a.port, ssl=ctx, server_hostname=a.name), 10)
                if a.h2:
                    if w.get_extra_info("ssl_object").selected_alpn_protocol() != "h2":
                        raise ValueError("no h2")
                    await asyncio.wait_for(_h2_get(r, w, a.name), 10)
                    conns.append(w)
                    return
                w.write(req)
                head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
                m = re.search(rb"content-length:\s*(\d+)", head, re.I)
                if not head.startswith(b"HTTP/1.1 200") or not m:
                    raise ValueError(head[:40])
                await asyncio.wait_for(r.readexactly(int(m.group(1))), 10)
                conns.append(w)
            except (OSError, ValueError, asyncio.TimeoutError, asyncio.IncompleteReadError):
                failures += 1

    await asyncio.gather(*(one() for _ in range(a.count)))
    return conns, failures


def cmd_idle(a):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    base = rss_kib(a.pid)
    loop = asyncio.new_event_loop()
    conns, failures = loop.run_until_complete(_idle(a))
    loop.run_until_complete(asyncio.sleep(a.settle))
    loaded = rss_kib(a.pid)
    for w in conns:
        w.close()
    loop.run_until_complete(asyncio.sleep(0.2))
    loop.close()
    record = labels(a.label)
    record.update({
        "kind": "idle-h2" if a.h2 else "idle", "baseline_kib": base, "loaded_kib": loaded, "open": len(conns),
        "errors": failures,
        "kib_per_conn": round((loaded - base) / max(1, len(conns)), 2),
    })
    append(a.out, record)
    print(json.dumps(record, sort_keys=True))


def cmd_probe(a):
    """One request every --every seconds on one keep-alive TLS connection until the file
    --stop appears (or --timeout passes); prints the slowest and the median, in ms."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    tls = ctx.wrap_socket(socket.create_connection(("127.0.0.1", a.port), timeout=30),
                          server_hostname=a.name)
    req = f"GET / HTTP/1.1\r\nHost: {a.name}\r\nUser-Agent: bench-probe\r\n\r\n".encode()
    buf, took, errors = b"", [], 0
    end = time.monotonic() + a.timeout
    while not os.path.exists(a.stop) and time.monotonic() < end:
        t0 = time.perf_counter()
        tls.sendall(req)
        while b"\r\n\r\n" not in buf:
            chunk = tls.recv(65536)
            if not chunk:
                raise SystemExit("probe: the gateway closed the connection")
            buf += chunk
        head, buf = buf.split(b"\r\n\r\n", 1)
        m = re.search(rb"content-length:\s*(\d+)", head, re.I)
        length = int(m.group(1)) if m else 0
        while len(buf) < length:
            buf += tls.recv(65536)
        buf = buf[length:]
        took.append(time.perf_counter() - t0)
        errors += not head.startswith(b"HTTP/1.1 200")
        time.sleep(a.every)
    tls.close()
    print(json.dumps({"requests": len(took), "errors": errors,
                      "slowest_ms": round(max(took, default=0) * 1000, 1),
                      "median_ms": round(statistics.median(took or [0]) * 1000, 2)}))


def cmd_record(a):
    record = {}
    for k, v in labels(a.pairs).items():
        try:
            record[k] = int(v) if re.fullmatch(r"-?\d+", v) else float(v)
        except ValueError:
            record[k] = v
    append(a.out, record)
    print(json.dumps(record, sort_keys=True))


def cmd_wait_ready(a):
    deadline = time.time() + a.timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(a.url, timeout=1) as r:
                if r.status == 200:
                    print(f"{time.time() - a.since:.3f}")
                    return 0
        except OSError:
            pass
        time.sleep(0.01)
    print(f"wait-ready: {a.url} not ready after {a.timeout}s", file=sys.stderr)
    return 1


# ---------------------------------------------------------------- summary


def spread(values):
    values = sorted(values)
    med = statistics.median(values)
    return med, values[0], values[-1]


def fmt(v, digits=0):
    if v is None:
        return "–"
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def fmt_spread(values, digits=0):
    if not values:
        return "–"
    med, lo, hi = spread(values)
    if len(values) == 1:
        return fmt(med, digits)
    return f"{fmt(med, digits)} ({fmt(lo, digits)}–{fmt(hi, digits)})"


TESTS = [
    ("h1", "rps", "HTTP/1.1 keep-alive, req/s (wrk -c50)", 0),
    ("h1", "p50_ms", "HTTP/1.1 keep-alive p50 latency, ms (wrk -c50)", 2),
    ("h1", "p99_ms", "HTTP/1.1 keep-alive p99 latency, ms (wrk -c50)", 2),
    ("h2", "rps", "HTTP/2, req/s (h2load -c50 -m10)", 0),
    ("handshake", "rps", "new TLS connections/s, full handshake (tlsload -c50)", 0),
    ("single", "p50_ms", "single connection p50 latency, ms (wrk -c1)", 3),
    ("single", "rps", "single connection req/s (wrk -c1)", 0),
]
HIGHER_IS_BETTER = {"rps": True, "p50_ms": False, "p99_ms": False}
PROXIES = ["portcullis", "nginx", "haproxy"]


def cmd_summary(a):
    recs = [json.loads(l) for l in open(a.file) if l.strip()]
    out = []
    meas = [r for r in recs if r.get("kind") in PARSERS and not r.get("failed")]
    modes = [m for m in ("flexible", "full", "strict") if any(r.get("mode") == m for r in meas)]

    def chosen(proxy, mode, test):
        # A measurement others disturbed (after its retries) is left out when the same
        # figure has undisturbed rounds; if every round was disturbed, all are kept (flagged).
        rs = [r for r in meas if r.get("proxy") == proxy and r.get("mode") == mode and r.get("test") == test]
        clean = [r for r in rs if not r.get("noisy")]
        return clean or rs

    def values(proxy, mode, test, key):
        return [r[key] for r in chosen(proxy, mode, test) if key in r]

    def med(proxy, mode, test, key):
        v = values(proxy, mode, test, key)
        return statistics.median(v) if v else None

    def round_ratios(mode, test, key, other):
        """Portcullis / other within each round, where both were measured undisturbed."""
        by_round = {}
        for proxy in ("portcullis", other):
            for r in chosen(proxy, mode, test):
                if key in r:
                    by_round.setdefault(r.get("round"), {})[proxy] = r[key]
        return [v["portcullis"] / v[other] for v in by_round.values()
                if v.get("portcullis") and v.get(other)]

    def cpu_note(proxy, mode, test):
        rs = chosen(proxy, mode, test)
        if not rs:
            return ""
        cpu = statistics.median(r["proxy_cpu"] for r in rs)
        foreign = max(max(r.get("foreign_cpu", 0), r.get("foreign_load_cpu", 0)) for r in rs)
        note = f"{cpu * 100:.0f}%"
        if test != "single" and cpu < 0.9:
            note += " ⚠ not the bottleneck"
            load = statistics.median(r.get("loadgen_cpu", 0) + r.get("origin_cpu", 0) + r.get("foreign_load_cpu", 0)
                                     for r in rs)
            if load >= 0.9:
                note += f" (load generator + origin core {load * 100:.0f}% busy)"
        if foreign > 0.1:
            note += f" ⚠ noisy ({foreign * 100:.0f}% other)"
        return note

    rounds = sorted({str(r["round"]) for r in meas if r.get("mode") in ("flexible", "full", "strict")})
    failed = [r for r in recs if r.get("failed")]
    if rounds:
        out.append(f"Rounds: {len(rounds)}. Each cell: median (min–max) over the rounds; "
                   "CPU: the proxy's median share of its one core during the measurement. "
                   "Ratios: of the medians (in brackets: the lowest and highest ratio within one round).\n")
    speeds = sorted(r["speed_proxy_core"] for r in meas if "speed_proxy_core" in r)
    if speeds:
        out.append(f"Speed of the proxy's core before each measurement (SHA-256, MB/s): median "
                   f"{statistics.median(speeds):,.0f}, range {speeds[0]:,}–{speeds[-1]:,}.\n")
    noisy = [r for r in meas if r.get("noisy")]
    if noisy:
        out.append(f"{len(noisy)} measurement(s) stayed disturbed by other processes after their retries "
                   "and are left out where the same figure has undisturbed rounds: "
                   + ", ".join(f"{r.get('proxy')}/{r.get('mode')}/{r.get('test')} (round {r.get('round')})"
                               for r in noisy) + ".\n")
    if failed:
        out.append(f"**{len(failed)} measurement(s) failed** and are left out: "
                   + ", ".join(f"{r.get('proxy')}/{r.get('mode')}/{r.get('test')}" for r in failed) + "\n")

    for mode in modes:
        proxies = [p for p in PROXIES if values(p, mode, "h1", "rps") or values(p, mode, "h2", "rps")]
        out.append(f"### {mode}\n")
        out.append("| measure | " + " | ".join(proxies) + " | Portcullis / nginx | Portcullis / HAProxy |")
        out.append("|---|" + "---|" * (len(proxies) + 2))
        for test, key, title, digits in TESTS:
            cells = []
            for p in proxies:
                v = values(p, mode, test, key)
                c = fmt_spread(v, digits)
                if key == "rps" and v:
                    c += f"<br>CPU {cpu_note(p, mode, test)}"
                cells.append(c)
            ratios = []
            pm = med("portcullis", mode, test, key)
            for other in ("nginx", "haproxy"):
                om = med(other, mode, test, key)
                cell = f"{pm / om:.2f}×" if pm and om else "–"
                per_round = round_ratios(mode, test, key, other)
                if len(per_round) > 1:
                    cell += f" ({min(per_round):.2f}–{max(per_round):.2f})"
                ratios.append(cell)
            out.append(f"| {title} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
        out.append("")

    # Where each proxy's CPU goes: per request (per connection for handshakes), in user
    # space and in the kernel, from utime and stime over the run divided by its rate.
    cpu_tests = ("h1", "h2", "handshake")
    per = {}
    for r in meas:
        if "proxy_user_cpu" in r and r.get("rps") and r.get("test") in cpu_tests:
            key = (r["proxy"], r["mode"], r["test"])
            per.setdefault(key, []).append((r["proxy_user_cpu"] * 1e6 / r["rps"],
                                            r["proxy_sys_cpu"] * 1e6 / r["rps"]))
    if per:
        out.append("### Proxy CPU per request, µs: user space + kernel\n")
        out.append("From the proxy's utime and stime over each run divided by its rate (per new "
                   "connection for handshakes); medians over the rounds. The kernel's part is "
                   "mostly loopback TCP and epoll.\n")
        out.append("| mode | measure | " + " | ".join(PROXIES) + " |")
        out.append("|---|---|" + "---|" * len(PROXIES))
        for mode in modes:
            for test, key, title, _ in TESTS:
                if key != "rps" or test not in cpu_tests:
                    continue
                cells = []
                for p in PROXIES:
                    v = per.get((p, mode, test))
                    if not v:
                        cells.append("–")
                        continue
                    u = statistics.median(x for x, _ in v)
                    k = statistics.median(y for _, y in v)
                    digits = 0 if test == "handshake" else 1
                    cells.append(f"{u:.{digits}f} + {k:.{digits}f} = {u + k:.{digits}f}")
                out.append(f"| {mode} | {title} | " + " | ".join(cells) + " |")
        out.append("")

    if "flexible" in modes and "full" in modes:
        out.append("### full / flexible (each proxy against itself)\n")
        out.append("| measure | " + " | ".join(PROXIES) + " |")
        out.append("|---|" + "---|" * len(PROXIES))
        for test, key, title, _ in TESTS:
            if key != "rps":
                continue
            cells = []
            for p in PROXIES:
                f, u = med(p, "flexible", test, key), med(p, "full", test, key)
                cells.append(f"{u / f:.2f}×" if f and u else "–")
            out.append(f"| {title} | " + " | ".join(cells) + " |")
        if any(r.get("mode") == "strict" for r in meas):
            cells = []
            for test, key, title, _ in TESTS:
                if key != "rps":
                    continue
                f, s = med("portcullis", "flexible", test, key), med("portcullis", "strict", test, key)
                cells.append(f"{title}: {s / f:.2f}×" if f and s else "")
            out.append("\nPortcullis strict / flexible: " + "; ".join(c for c in cells if c) + ".")
        out.append("")

    if any(r.get("proxy") == "nginx" and r.get("mode") == "direct" for r in meas):
        out.append("### Reference: nginx answering over TLS itself (no origin)\n")
        out.append("The same client, certificate and response, served by nginx with no origin behind "
                   "it: what a TLS terminator costs before it forwards anything.\n")
        out.append("| measure | nginx answering itself | nginx flexible | Portcullis flexible | "
                   "nginx flexible / itself | Portcullis flexible / nginx itself |")
        out.append("|---|---|---|---|---|---|")
        for test, key, title, digits in TESTS:
            d = values("nginx", "direct", test, key)
            if not d:
                continue
            dm = med("nginx", "direct", test, key)
            cells = [fmt_spread(d, digits)] + [fmt_spread(values(p, "flexible", test, key), digits)
                                               for p in ("nginx", "portcullis")]
            for p in ("nginx", "portcullis"):
                m = med(p, "flexible", test, key)
                cells.append(f"{m / dm:.2f}×" if m and dm else "–")
            out.append(f"| {title} | " + " | ".join(cells) + " |")
        dm, nm = med("nginx", "direct", "single", "p50_ms"), med("nginx", "flexible", "single", "p50_ms")
        if dm and nm:
            out.append(f"\nSingle-connection p50: 0.8× nginx's (flexible) is {0.8 * nm:.3f} ms, "
                       f"{0.8 * nm - dm:.3f} ms more than nginx takes to answer itself; nginx's own "
                       f"origin hop takes {nm - dm:.3f} ms.")
        out.append("")

    for kind, what in (("idle", "HTTP/1.1"), ("idle-h2", "HTTP/2")):
        idle = [r for r in recs if r.get("kind") == kind]
        if not idle:
            continue
        out.append(f"### 1,000 idle keep-alive TLS connections ({what}, one request each)\n")
        out.append("| | " + " | ".join(PROXIES) + " | Portcullis / nginx | Portcullis / HAProxy |")
        out.append("|---|" + "---|" * (len(PROXIES) + 2))
        for key, title, digits in (("kib_per_conn", "KiB per connection", 1),
                                   ("baseline_kib", "RSS before, KiB", 0),
                                   ("loaded_kib", "RSS with the connections open, KiB", 0)):
            cells, meds = [], {}
            for p in PROXIES:
                v = [r[key] for r in idle if r.get("proxy") == p and r.get("open", 0) > 0]
                meds[p] = statistics.median(v) if v else None
                cells.append(fmt_spread(v, digits))
            ratios = [f"{meds['portcullis'] / meds[o]:.2f}×" if meds.get("portcullis") and meds.get(o) else "–"
                      for o in ("nginx", "haproxy")]
            out.append(f"| {title} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
        bad = [r for r in idle if r.get("errors")]
        if bad:
            out.append(f"\n{sum(r['errors'] for r in bad)} idle connection(s) failed to open.")
        out.append("")

    sites = [r for r in recs if r.get("kind") == "sites"]
    if sites:
        out.append("### Many sites (Portcullis, ECDSA P-256 certificates, one per site)\n")
        out.append("| sites | start to /readyz, s | RSS ready, MiB | RSS after the handshake run, MiB | "
                   "idle CPU, % of a core | reload unchanged, s | reload +1 site, s | "
                   "slowest request during the reloads, ms | GET /metrics, s | "
                   "slowest request during the scrapes, ms | "
                   "new TLS conn/s, first pass | new TLS conn/s (SNI over all sites) | proxy CPU |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        hs = {}
        for n in sorted({int(r["sites"]) for r in sites}):
            rs = [r for r in sites if int(r["sites"]) == n]
            clean = [r for r in rs if not r.get("noisy")] or rs
            cells = [f"{n:,}"]
            for key, scale, digits in (("start_s", 1, 2), ("rss_ready_kib", 1 / 1024, 1),
                                       ("rss_after_kib", 1 / 1024, 1), ("idle_cpu", 100, 1),
                                       ("reload_same_s", 1, 2), ("reload_plus1_s", 1, 2),
                                       ("reload_slowest_ms", 1, 0), ("scrape_s", 1, 3),
                                       ("scrape_slowest_ms", 1, 0)):
                cells.append(fmt_spread([r[key] * scale for r in rs if key in r], digits))
            cells.append(fmt_spread([r["handshake_first_rps"] for r in rs if "handshake_first_rps" in r]))
            hs[n] = statistics.median(r["handshake_rps"] for r in clean)
            cells.append(fmt_spread([r["handshake_rps"] for r in clean]))
            cpu = f"{statistics.median(r['handshake_cpu'] for r in clean) * 100:.0f}%"
            if all(r.get("noisy") for r in rs):
                cpu += " ⚠ disturbed by other processes"
            cells.append(cpu)
            out.append("| " + " | ".join(cells) + " |")
        if len(hs) >= 2:
            lo, hi = min(hs), max(hs)
            if hs[lo] and hs[hi]:
                out.append(f"\nHandshake rate with {hi:,} sites / with {lo:,} sites: {hs[hi] / hs[lo]:.2f}×.")
        out.append("")
    text = "\n".join(out)
    print(text)


# ---------------------------------------------------------------- perf profile


CATEGORIES = [
    ("kernel: TCP/IP, syscalls, scheduler", lambda dso, sym: dso.startswith("[kernel")),
    ("crypto (aws-lc: RSA, X25519, AES-GCM, SHA)",
     lambda dso, sym: re.search(r"aws_lc|curve25519|rsaz|^bn_|_bn_|sha\d*_block|aes_hw|gcm|ghash|x25519", sym, re.I)),
    ("rustls (TLS state machine, records)", lambda dso, sym: sym.startswith(("rustls", "<rustls", "webpki", "<webpki"))),
    ("malloc/free", lambda dso, sym: re.search(r"malloc|_int_free|cfree|unlink_chunk|realloc|^free$|tcache", sym)),
    ("memcpy/memset", lambda dso, sym: re.search(r"memmove|memcpy|memset", sym)),
    ("hyper / h2 / http / httparse",
     lambda dso, sym: re.search(r"^<?(hyper|h2|http|httparse|hyper_util)::|<(hyper|h2|http|hyper_util)::", sym)),
    ("tokio runtime and sync", lambda dso, sym: re.search(r"^<?tokio::|<tokio::", sym)),
    ("tracing / metrics (prometheus)", lambda dso, sym: re.search(r"tracing|prometheus", sym)),
    ("hashing (SipHash)", lambda dso, sym: re.search(r"Hash|hash_one|SipHasher|DefaultHasher", sym)),
    ("bytes", lambda dso, sym: re.search(r"^<?bytes::|<bytes::", sym)),
    ("clock_gettime (vdso)", lambda dso, sym: "clock_gettime" in sym or dso == "[vdso]"),
    ("portcullis code", lambda dso, sym: "portcullis" in sym),
    ("libc: syscall wrappers, other", lambda dso, sym: dso.startswith("libc")),
]


def cmd_perf_summary(a):
    rows = []
    for line in open(a.file, errors="replace"):
        m = re.match(r"\s+([\d.]+)%\s+(\S+)\s+\[[.k]\]\s+(.*?)\s*$", line)
        if m:
            # perf may pad with further columns ("-   -"); the symbol ends at the first gap.
            rows.append((float(m.group(1)), m.group(2), re.split(r"\s{2,}", m.group(3).strip())[0]))
    cats = {}
    for pct, dso, sym in rows:
        name = next((n for n, f in CATEGORIES if f(dso, sym)), "other")
        cats[name] = cats.get(name, 0.0) + pct
    print(f"{a.title}\n")
    print("| where the proxy's CPU time goes | share |")
    print("|---|---|")
    for name, pct in sorted(cats.items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {pct:.1f}% |")
    print("\n| top symbols | share |")
    print("|---|---|")
    for pct, dso, sym in rows[: a.top]:
        print(f"| `{sym[:110]}` ({dso}) | {pct:.1f}% |")
    print()


def requests_in(load_out, kind):
    """Requests a load run completed, from wrk's (h1) or h2load's (h2) report."""
    text = open(load_out).read()
    if kind == "h1":
        m = re.search(r"(\d+) requests in ([\d.]+)(m?s)", text)
    else:
        m = re.search(r"requests: (\d+) total", text)
    return int(m.group(1)) if m else None


def cmd_syscalls_per_request(a):
    """Syscalls counted by `perf stat -x,` over a load run, per request the load tool reports."""
    count = None
    for line in open(a.perf_csv):
        f = line.strip().split(",")
        if len(f) > 2 and "sys_enter" in f[2] and f[0].isdigit():
            count = int(f[0])
    requests = requests_in(a.load_out, a.kind)
    if not count or not requests:
        print("–")
    else:
        print(f"{count / requests:.2f}")


def cmd_segments_per_request(a):
    """TCP segments sent on the machine (`nstat` deltas over a load run) per request.

    Loopback carries the client's, the proxy's and the origin's segments alike, so this is
    the whole exchange: compare it between proxies under the same load, not as the proxy's own.
    """
    counts = {}
    for line in open(a.nstat_out):
        f = line.split()
        if len(f) >= 2 and f[1].isdigit():
            counts[f[0]] = int(f[1])
    requests = requests_in(a.load_out, a.kind)
    if not requests or "TcpOutSegs" not in counts:
        print("–")
    else:
        acks = counts.get("TcpExtTCPPureAcks", 0)
        print(f"{counts['TcpOutSegs'] / requests:.2f} ({acks / requests:.2f} pure ACKs)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("ports")
    p.add_argument("n", type=int)
    p.set_defaults(fn=cmd_ports)
    p = sub.add_parser("measure")
    p.add_argument("--out", required=True)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--kind", choices=sorted(PARSERS), required=True)
    p.add_argument("--label", action="append")
    p.add_argument("--proxy-cpu-index", type=int, default=1)
    p.add_argument("--load-cpu-index", type=int, default=0)
    p.add_argument("--origin-pid", type=int)
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--attempts", type=int, default=3, help="runs at most, while others use the proxy's core")
    p.add_argument("--noisy", type=float, default=0.1, help="share of the proxy's core others may use")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    p.set_defaults(fn=cmd_measure)
    p = sub.add_parser("idle")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--settle", type=float, default=2.0)
    p.add_argument("--h2", action="store_true", help="HTTP/2 connections (one GET each) instead of HTTP/1.1")
    p.add_argument("--out", required=True)
    p.add_argument("--label", action="append")
    p.set_defaults(fn=cmd_idle)
    p = sub.add_parser("probe")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--stop", required=True)
    p.add_argument("--every", type=float, default=0.005)
    p.add_argument("--timeout", type=float, default=300)
    p.set_defaults(fn=cmd_probe)
    p = sub.add_parser("record")
    p.add_argument("--out", required=True)
    p.add_argument("pairs", nargs="*")
    p.set_defaults(fn=cmd_record)
    p = sub.add_parser("wait-ready")
    p.add_argument("url")
    p.add_argument("--since", type=float, required=True)
    p.add_argument("--timeout", type=float, default=120)
    p.set_defaults(fn=cmd_wait_ready)
    p = sub.add_parser("rss")
    p.add_argument("pid", type=int)
    p.set_defaults(fn=lambda a: print(rss_kib(a.pid)))
    p = sub.add_parser("cpu-seconds")
    p.add_argument("pid", type=int)
    p.set_defaults(fn=lambda a: print(cpu_ticks(a.pid) / CLK_TCK))
    p = sub.add_parser("syscalls-per-request")
    p.add_argument("perf_csv")
    p.add_argument("load_out")
    p.add_argument("kind", choices=["h1", "h2"])
    p.set_defaults(fn=cmd_syscalls_per_request)
    p = sub.add_parser("segments-per-request")
    p.add_argument("nstat_out")
    p.add_argument("load_out")
    p.add_argument("kind", choices=["h1", "h2"])
    p.set_defaults(fn=cmd_segments_per_request)
    p = sub.add_parser("tree")
    p.add_argument("pid", type=int)
    p.set_defaults(fn=lambda a: print(",".join(str(p) for p in tree(a.pid))))
    p = sub.add_parser("perf-summary")
    p.add_argument("file")
    p.add_argument("--title", default="")
    p.add_argument("--top", type=int, default=25)
    p.set_defaults(fn=cmd_perf_summary)
    p = sub.add_parser("summary")
    p.add_argument("file")
    p.set_defaults(fn=cmd_summary)
    a = ap.parse_args()
    sys.exit(a.fn(a) or 0)


if __name__ == "__main__":
    main()

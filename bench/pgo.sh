#!/usr/bin/env bash
# A profile-guided (PGO) release build of Portcullis.
#
# rustc's LLVM lays out and inlines code better when it knows which paths run hot. This
# script builds an instrumented gateway, runs it under the benchmark's own loads (bench/run.sh:
# HTTP/1.1 and HTTP/2 keep-alive, one connection at a time, new TLS handshakes, and request
# bodies, in flexible, full and strict mode, against the same nginx origin), merges the
# profiles it writes and builds the gateway again with them:
#
#     bench/pgo.sh                       -> target/pgo/portcullis
#     bench/pgo.sh --out /tmp/portcullis
#
# Everything else is the release build (same profile, features and flags, `--cfg
# tokio_unstable` from .cargo/config.toml: the flags here are added to it, not put in its
# place). docs/performance-steps.md#step-33 has what it changes and what it costs. Two release
# builds of the workspace (about 4 + 3.5 min on two cores) and about a minute of load.
#
# It needs llvm-profdata of rustc's LLVM version: `rustup component add llvm-tools`, or
# Debian's llvm-N package where N is rustc's LLVM major version (`rustc -vV`). And what the
# benchmark needs for the load: nginx, h2load (nghttp2-client), openssl, curl.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: bench/pgo.sh [--out PATH] [--keep]

  --out PATH   where to put the optimised binary (default target/pgo/portcullis)
  --keep       keep the temporary folder (configs, logs, raw profiles)
EOF
}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
OUT_BIN=$TARGET/pgo/portcullis
KEEP=0
while [ $# -gt 0 ]; do
    case "$1" in
    --out) OUT_BIN=$2; shift ;;
    --keep) KEEP=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "pgo.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

# A RUSTFLAGS in the environment would replace .cargo/config.toml's flags (and with them
# `--cfg tokio_unstable`) in both builds.
if [ -n "${RUSTFLAGS:-}" ] || [ -n "${CARGO_ENCODED_RUSTFLAGS:-}" ]; then
    echo "pgo.sh: unset RUSTFLAGS / CARGO_ENCODED_RUSTFLAGS: they replace the build's own flags" >&2
    exit 1
fi

missing=()
for tool in nginx:nginx h2load:nghttp2-client openssl:openssl curl:curl python3:python3; do
    command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "pgo.sh: missing tools; install the Debian packages: apt-get install ${missing[*]}" >&2
    exit 1
fi

PY="python3 $ROOT/bench/bench.py"
# shellcheck source=bench/common.sh
. "$ROOT/bench/common.sh"
NAME=bench.test

PROFDATA=$(llvm_profdata)
if [ -z "$PROFDATA" ]; then
    echo "pgo.sh: no llvm-profdata for rustc's LLVM: rustup component add llvm-tools," >&2
    echo "        or apt-get install llvm-$(rustc_llvm_major)" >&2
    exit 1
fi

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

TMP=$(mktemp -d /tmp/portcullis-pgo.XXXXXX)
trap 'bench_cleanup pgo.sh' EXIT
trap 'exit 130' INT TERM
# A fixed folder, so the instrumented build is reused while the code and flags are the same.
RAW=$TARGET/pgo-generate/profiles
rm -rf "$RAW"

# ------------------------------------------------------------------ instrumented build

log "instrumented build (target/pgo-generate)"
(cd "$ROOT" && cargo build --release -p portcullis --target-dir "$TARGET/pgo-generate" \
    --config "build.rustflags = [\"-Cprofile-generate=$RAW\"]") 2>&1 | tail -2 >&2
TRAINEE=$TARGET/pgo-generate/release/portcullis

log "building bench/tlsload"
cargo build -q --release --manifest-path "$ROOT/bench/tlsload/Cargo.toml" \
    --target-dir "$TARGET/bench-tools" >&2
TLSLOAD=$TARGET/bench-tools/release/tlsload

# ------------------------------------------------------------------ the loads

CERTS=$TMP/certs
mkdir -p "$CERTS" "$TMP/logs"
bench_certs "$CERTS"
start_origin
log "origin: nginx on 127.0.0.1:$ORIGIN_HTTP (http) and :$ORIGIN_HTTPS (https)"
head -c 65536 /dev/zero >"$TMP/body"

# Fails (and so stops the script) when a load lost requests: a profile of failures would
# optimise the wrong paths.
all_ok() { # $1: h2load's output file
    grep -Eq '^requests: ([0-9]+) total, \1 started, \1 done, \1 succeeded' "$1" ||
        { echo "pgo.sh: not every request succeeded:" >&2; grep -E '^requests:|^status' "$1" >&2; return 1; }
}

for mode in flexible full strict; do
    read -r port admin < <($PY ports 2)
    portcullis_conf "$port" "$admin" "$mode" "$TMP/data-$mode" >"$TMP/portcullis-$mode.yaml"
    env RUST_LOG=info,portcullis::access=off "$TRAINEE" run --workers 1 \
        --config "$TMP/portcullis-$mode.yaml" >"$TMP/logs/portcullis-$mode.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_for 30 "the instrumented gateway ($mode)" "$pid" http_200 "http://127.0.0.1:$admin/readyz"
    log "loads in $mode mode"
    url=(--connect-to "127.0.0.1:$port" "https://$NAME:$port/")
    h2load -t1 --h1 -c 50 -n 50000 "${url[@]}" >"$TMP/logs/$mode-h1.out" 2>&1
    h2load -t1 -c 50 -m 10 -n 100000 "${url[@]}" >"$TMP/logs/$mode-h2.out" 2>&1
    h2load -t1 -c 1 -n 3000 "${url[@]}" >"$TMP/logs/$mode-single.out" 2>&1
    h2load -t1 --h1 -c 10 -n 2000 -d "$TMP/body" "${url[@]}" >"$TMP/logs/$mode-h1-body.out" 2>&1
    h2load -t1 -c 10 -m 10 -n 2000 -d "$TMP/body" "${url[@]}" >"$TMP/logs/$mode-h2-body.out" 2>&1
    # The origin (nginx's `return`) answers before it has the bodies; the gateway reads and
    # drops the rest of each (docs/performance-steps.md#step-35), so HTTP/1.1 connections stay.
    for f in h1 h2 single h1-body h2-body; do all_ok "$TMP/logs/$mode-$f.out"; done
    "$TLSLOAD" -p "$port" -d 3 -w 0 -c 50 -n "$NAME" >"$TMP/logs/$mode-handshake.out" 2>&1
    # The profile is written when the process exits: SIGINT drains and exits cleanly.
    kill -INT "$pid"
    status=0
    wait "$pid" || status=$?
    forget "$pid"
    [ "$status" = 0 ] || { echo "pgo.sh: the gateway exited with $status" >&2; exit 1; }
done
stop_all || true # its last kill fails when the origin is gone already
PIDS=()

# ------------------------------------------------------------------ the optimised build

"$PROFDATA" merge -o "$TMP/merged.profdata" "$RAW"
log "optimised build with $(du -h "$TMP/merged.profdata" | cut -f1) of profile (target/pgo-use)"
(cd "$ROOT" && cargo build --release -p portcullis --target-dir "$TARGET/pgo-use" \
    --config "build.rustflags = [\"-Cprofile-use=$TMP/merged.profdata\"]") 2>&1 | tail -2 >&2
mkdir -p "$(dirname "$OUT_BIN")"
cp "$TARGET/pgo-use/release/portcullis" "$OUT_BIN"
"$OUT_BIN" --version >/dev/null
log "done: $OUT_BIN"

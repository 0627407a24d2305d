#!/usr/bin/env bash
# Replicas sharing ACME certificates through etcd, at scale (issue 25's cost target): 10,000
# `tls: acme` sites whose certificates are in local storage (A) or only in etcd (B, one
# member on loopback, Debian's etcd-server). Prints each gateway's time to serve every
# certificate and its memory (target: B less than 50 MB above A), then, with three replicas
# of B, the time from a renewed certificate stored in etcd to all three serving it, five times
# (target: under 5 s). A benchmark, not a test: CI does not run it.
#
#   bench/cluster.sh                 10,000 sites (1–2 min after the builds)
#   bench/cluster.sh --sites N       another size; --runs N renewals, --replicas N, --sample N
#   TMPDIR=/dev/shm bench/cluster.sh          local storages and etcd's data on tmpfs
#   MIMALLOC_PURGE_DELAY=0 bench/cluster.sh   gateways give freed memory back at once, so
#                                             RSS is close to what is live
set -euo pipefail
cd "$(dirname "$0")/.."
command -v etcd >/dev/null || {
    echo "etcd is missing: apt-get install -y etcd-server" >&2
    exit 1
}
cargo build --release -p portcullis
cargo run --release -p portcullis-tests --example cluster_scale -- \
    --binary target/release/portcullis "$@"

#!/usr/bin/env bash
# The ingress controller at scale against the harness's fake API server (no real
# kube-apiserver runs on these machines): 5,000 Ingresses, 10,000 hosts, 10,000 Services and
# EndpointSlices, 5,000 TLS Secrets. Prints the time from start to routes published, from one
# Ingress change to it being served, and the controller's memory, against the targets of
# docs/performance.md#kubernetes. A benchmark, not a test: CI does not run it.
#
#   bench/kubernetes.sh                 5,000 Ingresses (~1 min after the builds)
#   bench/kubernetes.sh --ingresses N   another size (50000: issue 27's 100,000 hosts, ~1.5 min)
#   bench/kubernetes.sh --logs          also print the controller's log (sync timings)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p portcullis
cargo run --release -p portcullis-tests --example k8s_scale -- \
    --binary target/release/portcullis "$@"

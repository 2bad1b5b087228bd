#!/usr/bin/env bash
# One command for the side-by-side benchmarks of issue #8: builds Strata and the harness in release
# (reusing the target directory), installs or finds the peers (scripts/setup-bench-tools), and runs
# `strata-bench all`, which starts every server itself on 127.0.0.1 with fresh data directories
# under the current one, stops them, writes benches/results/<date>-all.json, prints the markdown
# tables and (without --quick) rewrites benches/RESULTS.md.
#
#   benches/run.sh                 # default sizes, 3 runs (~19 minutes once built)
#   benches/run.sh --quick         # every workload briefly: checks the harness, not performance
#   benches/run.sh --systems strata --workloads w1,w2
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

# Peers first (quick when already installed); a peer that cannot be installed is skipped by the
# harness, which says so in its report.
peers="$(./scripts/setup-bench-tools --tansu || true)"
redis="$(sed -n 's/^redis-server=//p' <<<"$peers")"
nats="$(sed -n 's/^nats-server=//p' <<<"$peers")"
tansu="$(sed -n 's/^tansu=//p' <<<"$peers")"
rabbitmq="$(sed -n 's/^rabbitmq-server=//p' <<<"$peers")"

echo "==> cargo build --release (strata, strata-bench)" >&2
# One invocation: both packages then share one feature set, so DataFusion (a dependency of both)
# is compiled once, not twice.
cargo build --release -p strata-server -p strata-bench --bin strata --bin strata-bench >&2

# Results go to this checkout's benches/, whichever checkout built the binary in the shared
# target directory (cargo reuses it unrebuilt, with that checkout's path compiled in).
export CARGO_MANIFEST_DIR="$PWD/benches"
args=(all --strata "$CARGO_TARGET_DIR/release/strata")
[ -n "$redis" ] && args+=(--redis-server "$redis")
[ -n "$nats" ] && args+=(--nats-server "$nats")
[ -n "$tansu" ] && args+=(--tansu "$tansu")
[ -n "$rabbitmq" ] && args+=(--rabbitmq-server "$rabbitmq")
exec "$CARGO_TARGET_DIR/release/strata-bench" "${args[@]}" "$@"

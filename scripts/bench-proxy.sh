#!/usr/bin/env bash
# Runs `silo bench proxy` against a fresh `silo dev` (2 shards): pgbench
# through the wire-protocol endpoint, PgBouncer and the shard itself, then
# 1,000 clients over 200 tenants within the shard budget. Used by
# `make bench`; prints the tables recorded in docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
silo=./bin/silo
# shellcheck source=scripts/dev-lib.sh
source scripts/dev-lib.sh

if ! command -v pgbouncer >/dev/null && [ ! -x /usr/sbin/pgbouncer ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
	echo "Installing pgbouncer for the comparison (apt-get install pgbouncer)"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends pgbouncer >/dev/null
fi

dir=$(mktemp -d /tmp/silo-bench-XXXXXX)
chmod 755 "$dir"
trap 'stop_dev; rm -rf "$dir"' EXIT
# The bench runs its own endpoint, so the dev server's is off.
start_dev "$dir" --pg-listen "" --warm-pool-size 20
"$silo" bench proxy --dir "$dir/dev" --rounds "${BENCH_ROUNDS:-5}" --duration "${BENCH_DURATION:-5s}" "$@"

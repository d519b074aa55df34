#!/usr/bin/env bash
# Runs `silo bench route` against a fresh `silo dev` (2 shards), at the
# default budget of 20 per shard and at a budget that holds every tenant in
# use. Used by `make bench`; prints the tables recorded in docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
silo=./bin/silo
# shellcheck source=scripts/dev-lib.sh
source scripts/dev-lib.sh
n=${BENCH_TENANTS:-1000}
clients=${BENCH_CLIENTS:-16}
duration=${BENCH_DURATION:-10s}

if ! command -v pgbouncer >/dev/null && [ ! -x /usr/sbin/pgbouncer ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
	echo "Installing pgbouncer for the comparison (apt-get install pgbouncer)"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends pgbouncer >/dev/null
fi

dir=$(mktemp -d /tmp/silo-bench-XXXXXX)
chmod 755 "$dir"
trap 'stop_dev; rm -rf "$dir"' EXIT

run() { # run BUDGET: one silo dev, reusing the tenants of an earlier run
	local budget=$1
	# The baseline keeps a connection per tenant (n/2 per shard), so the
	# shards' max_connections must hold them all, plus the server's budget.
	start_dev "$dir" --shard-budget "$budget" --shard-max-connections $((n * 3 / 2 + 200)) --warm-pool-size 20
	"$silo" bench route --dir "$dir/dev" -n "$n" -c "$clients" --duration "$duration" --shard-budget "$budget"
	stop_dev
}

run 20
run "$n"

#!/usr/bin/env bash
# Runs `silo bench route` against a fresh `silo dev` (2 shards), at the
# default budget of 20 per shard and at a budget that holds every tenant in
# use. Used by `make bench`; prints the tables recorded in docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
silo=./bin/silo
n=${BENCH_TENANTS:-1000}
clients=${BENCH_CLIENTS:-16}
duration=${BENCH_DURATION:-10s}

if ! command -v pgbouncer >/dev/null && [ ! -x /usr/sbin/pgbouncer ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
	echo "Installing pgbouncer for the comparison (apt-get install pgbouncer)"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends pgbouncer >/dev/null
fi

dir=$(mktemp -d /tmp/silo-bench-XXXXXX)
chmod 755 "$dir"
trap 'rm -rf "$dir"' EXIT

run() { # run BUDGET: one silo dev, reusing the tenants of an earlier run
	local budget=$1 pid
	rm -f "$dir/dev/env"
	# The baseline keeps a connection per tenant (n/2 per shard), so the
	# shards' max_connections must hold them all, plus the server's budget.
	"$silo" dev --dir "$dir/dev" --listen 127.0.0.1:0 --shard-budget "$budget" \
		--shard-max-connections $((n * 3 / 2 + 200)) --warm-pool-size 20 --log-level warn >"$dir/out" 2>"$dir/err" &
	pid=$!
	for _ in $(seq 1 360); do [ -f "$dir/dev/env" ] && break; sleep 0.5; done
	if [ ! -f "$dir/dev/env" ]; then
		echo "silo dev did not start in 3 minutes:"; cat "$dir/out" "$dir/err"; kill "$pid"; exit 1
	fi
	# shellcheck disable=SC1091
	source "$dir/dev/env"
	"$silo" bench route --dir "$dir/dev" -n "$n" -c "$clients" --duration "$duration" --shard-budget "$budget"
	kill -INT "$pid"
	wait "$pid" || true
}

run 20
run "$n"

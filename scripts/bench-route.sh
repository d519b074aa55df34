#!/usr/bin/env bash
# Runs `silo bench route` against a fresh `silo dev` (2 shards), at a
# budget that holds the tenants in use and at the default budget of 20.
# Used by `make bench`; prints the tables recorded in docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
silo=./bin/silo
n=${BENCH_TENANTS:-1000}
clients=${BENCH_CLIENTS:-16}

run() { # run BUDGET
	local budget=$1 dir pid
	dir=$(mktemp -d /tmp/silo-bench-XXXXXX)
	chmod 755 "$dir"
	# The shards' max_connections (200) must hold the server's budget, the
	# bench's router and the baseline's pools, one mode at a time.
	"$silo" dev --dir "$dir/dev" --listen 127.0.0.1:0 --shard-budget "$budget" \
		--warm-pool-size 20 --log-level warn >"$dir/out" 2>"$dir/err" &
	pid=$!
	for _ in $(seq 1 120); do [ -f "$dir/dev/env" ] && break; sleep 0.5; done
	if [ ! -f "$dir/dev/env" ]; then
		echo "silo dev did not start:"; cat "$dir/err"; kill "$pid"; exit 1
	fi
	# shellcheck disable=SC1091
	source "$dir/dev/env"
	"$silo" bench route --dir "$dir/dev" -n "$n" -c "$clients" --duration 10s --shard-budget "$budget"
	kill -INT "$pid"
	wait "$pid" || true
	rm -rf "$dir"
}

run 150
run 20

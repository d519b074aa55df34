#!/usr/bin/env bash
# Runs `silo bench provision` against two fresh `silo dev` control planes on
# this machine (2 shards each): one without a warm pool, one with a full
# one. Used by `make bench`; prints the tables recorded in docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
silo=./bin/silo
n=${BENCH_TENANTS:-100}

# run NAME POOL: start silo dev, wait for it, run the benches, stop it. A
# subshell: the dev's env it sources (SILO_URL, SILO_TENANT_MIGRATIONS in its
# directory) must not reach the next run's silo dev, whose directory differs.
run() (
	local name=$1 pool=$2 dir pid
	dir=$(mktemp -d /tmp/silo-bench-XXXXXX)
	chmod 755 "$dir"
	"$silo" dev --dir "$dir/dev" --listen 127.0.0.1:0 --warm-pool-size "$pool" \
		--log-level warn >"$dir/out" 2>"$dir/err" &
	pid=$!
	for _ in $(seq 1 120); do [ -f "$dir/dev/env" ] && break; sleep 0.5; done
	if [ ! -f "$dir/dev/env" ]; then
		echo "silo dev did not start:"; cat "$dir/err"; kill "$pid"; exit 1
	fi
	# shellcheck disable=SC1091
	source "$dir/dev/env"
	"$silo" bench provision -n 4 -c 1 >/dev/null # templates made, connections warm
	echo "== $name (warm pool $pool per shard)"
	if [ "$pool" -gt 0 ]; then
		"$silo" bench provision -n "$n" -c 1 --wait-warm $((2 * pool))
		"$silo" bench provision -n "$n" -c 4 --wait-warm $((2 * pool)) | tail -n 1
	else
		"$silo" bench provision -n "$n" -c 4
		baseline "$dir/dev/clusters"
	fi
	kill -INT "$pid"
	wait "$pid" || true
	rm -rf "$dir"
)

# baseline CLUSTERS: the same number of plain CREATE DATABASE ... TEMPLATE
# silo_template on the same shards with the same concurrency: PostgreSQL's
# own cost, the ceiling of creates without a warm pool. This disk's speed
# varies several times over within an hour, so only the ratio is stable.
baseline() {
	local clusters=$1 start end
	start=$(date +%s.%N)
	seq 1 "$n" | xargs -P 4 -I{} sh -c '
		i={}; c='"$clusters"'/shard-$(( i % 2 + 1 ))
		PGPASSWORD=$(cat $c/password) psql -h 127.0.0.1 -p $(cat $c/port) -U silo -d postgres -qc "CREATE DATABASE bench_raw_$i TEMPLATE silo_template"'
	end=$(date +%s.%N)
	seq 1 "$n" | xargs -P 4 -I{} sh -c '
		i={}; c='"$clusters"'/shard-$(( i % 2 + 1 ))
		PGPASSWORD=$(cat $c/password) psql -h 127.0.0.1 -p $(cat $c/port) -U silo -d postgres -qc "DROP DATABASE bench_raw_$i"'
	awk -v n="$n" -v s="$start" -v e="$end" 'BEGIN { printf "plain CREATE DATABASE, 4 clients: %.1f databases/s\n", n / (e - s) }'
}

run "without a warm pool" 0
[ -n "${BENCH_NO_WARM:-}" ] || run "with a warm pool" "$n"

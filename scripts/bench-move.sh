#!/usr/bin/env bash
# Runs `silo bench move` against a fresh `silo dev` (2 shards): a tenant of
# about 100 MB moves under a writer and a reader. Used by `make bench`;
# prints the table recorded in docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
silo=./bin/silo
megabytes=${BENCH_MOVE_MB:-100}

dir=$(mktemp -d /tmp/silo-bench-XXXXXX)
chmod 755 "$dir"
pid=
cleanup() {
	if [ -n "$pid" ]; then kill -INT "$pid" 2>/dev/null || true; wait "$pid" || true; fi
	rm -rf "$dir"
}
trap cleanup EXIT
"$silo" dev --dir "$dir/dev" --listen 127.0.0.1:0 --log-level warn >"$dir/out" 2>"$dir/err" &
pid=$!
for _ in $(seq 1 360); do [ -f "$dir/dev/env" ] && break; sleep 0.5; done
if [ ! -f "$dir/dev/env" ]; then
	echo "silo dev did not start in 3 minutes:"; cat "$dir/out" "$dir/err"; exit 1
fi
# shellcheck disable=SC1091
source "$dir/dev/env"
"$silo" bench move --dir "$dir/dev" --megabytes "$megabytes"

#!/usr/bin/env bash
# Runs `silo bench move` against a fresh `silo dev` (2 shards): a tenant of
# about 100 MB moves under a writer and a reader. Used by `make bench`;
# prints the table recorded in docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
silo=./bin/silo
# shellcheck source=scripts/dev-lib.sh
source scripts/dev-lib.sh

dir=$(mktemp -d /tmp/silo-bench-XXXXXX)
chmod 755 "$dir"
trap 'stop_dev; rm -rf "$dir"' EXIT
start_dev "$dir"
"$silo" bench move --dir "$dir/dev" --megabytes "${BENCH_MOVE_MB:-100}"

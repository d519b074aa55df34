#!/usr/bin/env bash
# Runs `silo bench migrate` against a fresh `silo dev` (2 shards) whose
# tenant migrations are a copy of the embedded ones in a directory the bench
# adds its migration to. Used by `make bench`; prints the table recorded in
# docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
silo=./bin/silo
# shellcheck source=scripts/dev-lib.sh
source scripts/dev-lib.sh

dir=$(mktemp -d /tmp/silo-bench-XXXXXX)
chmod 755 "$dir"
trap 'stop_dev; rm -rf "$dir"' EXIT
mkdir "$dir/migrations"
cp migrations/tenant/*.sql "$dir/migrations/"
start_dev "$dir" --tenant-migrations "$dir/migrations" --warm-pool-size 20
"$silo" bench migrate --dir "$dir/dev" --tenant-migrations "$dir/migrations" -n "${BENCH_TENANTS:-1000}"

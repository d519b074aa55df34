#!/usr/bin/env bash
# The soak: two silo serve processes on one catalog and two shards of its
# own, under mixed load for a while (default 20m): writes, reads, creates,
# suspends, resumes, purges, moves and migration runs, one shard frozen
# (SIGSTOP) and thawed, one server killed (SIGKILL) and restarted. It
# passes when every operation has ended, silo check is clean and no
# acknowledged write is lost; its summary goes to stdout and to
# ${SILO_SOAK_REPORT:-soak-report.txt}.
#
#   scripts/soak.sh [DURATION]      e.g. scripts/soak.sh 2m
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-20m}
make build >/dev/null
dir=$(./bin/silo pg-bindir)
report=${SILO_SOAK_REPORT:-$PWD/soak-report.txt}
# A bound on the whole run: the soak, then fifteen minutes to settle and check.
case $duration in
	*h) secs=$((${duration%h} * 3600)) ;;
	*m) secs=$((${duration%m} * 60)) ;;
	*s) secs=${duration%s} ;;
	*) echo "soak: duration $duration: want a number of s, m or h, such as 20m" >&2; exit 2 ;;
esac
SILO_PG_BINDIR=$dir SILO_SOAK=$duration SILO_SOAK_REPORT=$report \
	go test -count=1 -timeout "$((secs + 900))s" -run '^TestSoak$' -v ./cmd/silo | grep -v '^=== '
cat "$report"

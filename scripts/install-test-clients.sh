#!/usr/bin/env bash
# Installs the clients the wire-protocol endpoint's tests (proxy/*_test.go) and
# the README tour's test (cmd/silo/tour_test.go, which also needs curl) run:
# psql, pg_dump and pg_restore (postgresql-client), pgbench (Debian ships it
# with the server, postgresql), psycopg2 for /usr/bin/python3
# (python3-psycopg2), and node with npm (npm, only when there is no npm, as
# pgcluster.EnsureBinDir does: a node from elsewhere, such as NodeSource's,
# brings its own). The tests install node-postgres themselves, with npm. The
# console's test (cmd/silo/console_test.go) drives a headless Chromium
# (chromium, unless a chromium-browser or google-chrome is there).
#
# Debian or Ubuntu, as root, with apt-get; what is there already is left
# alone. Elsewhere it says what is missing and fails. .ci/run calls it: under
# CI=true a missing client fails its test instead of skipping it.
set -euo pipefail

works() { "$@" >/dev/null 2>&1; }

missing() {
	local pkgs=()
	{ works psql --version && works pg_dump --version && works pg_restore --version; } || pkgs+=(postgresql-client)
	works pgbench --version || pkgs+=(postgresql)
	works curl --version || pkgs+=(curl)
	works /usr/bin/python3 -c 'import psycopg2' || pkgs+=(python3-psycopg2)
	{ works npm --version && works node --version; } || pkgs+=(npm)
	{ works chromium --version || works chromium-browser --version || works google-chrome --version; } || pkgs+=(chromium)
	echo "${pkgs[@]}"
}

pkgs=$(missing)
if [ -z "$pkgs" ]; then
	echo "Test clients: all installed"
	exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
	echo "Test clients missing; install (Debian/Ubuntu): apt-get install $pkgs" >&2
	exit 1
fi
echo "Installing the test clients: apt-get install $pkgs"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086 # a list of package names
apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
if left=$(missing) && [ -n "$left" ]; then
	echo "Test clients still missing after apt-get install: $left" >&2
	exit 1
fi
echo "Test clients: installed"

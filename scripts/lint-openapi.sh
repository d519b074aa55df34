#!/usr/bin/env bash
# Lints the API's contract, api/openapi.yaml, with Redocly's CLI under the
# rules of redocly.yaml (the recommended ones, warnings counted as errors):
# it fails on any problem. The CLI is pinned and installed once, with npm,
# into ${XDG_CACHE_HOME:-~/.cache}/silo/redocly/VERSION; later runs ask npm
# nothing. It needs npm and Node.js 20.19 or later (Debian 12's nodejs is
# 18: NodeSource's packages have newer ones). `make lint` and .ci/run call
# it.
set -euo pipefail
cd "$(dirname "$0")/.."

REDOCLY_VERSION=2.77.0
dir="${XDG_CACHE_HOME:-$HOME/.cache}/silo/redocly/$REDOCLY_VERSION"
redocly="$dir/node_modules/.bin/redocly"

if ! node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a == 20 && b >= 19) ? 0 : 1)' 2>/dev/null; then
	echo "lint-openapi: @redocly/cli@$REDOCLY_VERSION needs Node.js 20.19 or later; this is $(node --version 2>/dev/null || echo 'no node')" >&2
	exit 1
fi
if [ ! -x "$redocly" ]; then
	if ! command -v npm >/dev/null; then
		echo "lint-openapi: npm is required to install @redocly/cli (apt-get install npm)" >&2
		exit 1
	fi
	echo "lint-openapi: installing @redocly/cli@$REDOCLY_VERSION into $dir"
	# Installed beside, then moved into place: an install cut short leaves
	# no redocly to be taken for a whole one.
	mkdir -p "${dir%/*}"
	tmp=$(mktemp -d "$dir.tmp.XXXXXX")
	trap 'rm -rf "$tmp"' EXIT
	npm install --prefix "$tmp" --no-audit --no-fund --loglevel=error "@redocly/cli@$REDOCLY_VERSION" >/dev/null
	rm -rf "$dir"
	mv "$tmp" "$dir"
	trap - EXIT
fi

# No telemetry: CI's runs are nobody's usage.
REDOCLY_TELEMETRY=off "$redocly" lint --config redocly.yaml api/openapi.yaml

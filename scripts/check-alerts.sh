#!/usr/bin/env bash
# Checks the Prometheus alert rules (deploy/prometheus/alerts.yml) with
# promtool, which Debian ships in its prometheus package. As root with
# apt-get, a missing promtool is installed; otherwise the script says what
# is missing and skips, but fails under CI=true. .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")/.."
rules=deploy/prometheus/alerts.yml

if ! command -v promtool >/dev/null; then
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
		echo "Installing promtool: apt-get install prometheus"
		export DEBIAN_FRONTEND=noninteractive
		apt-get update -qq
		apt-get install -y -qq --no-install-recommends prometheus >/dev/null
		# The package starts a Prometheus server where there is an init
		# system; the check needs only its promtool.
		if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
			systemctl stop prometheus || true
		fi
	elif [ "${CI:-}" = true ]; then
		echo "promtool is missing; install it (Debian/Ubuntu): apt-get install prometheus" >&2
		exit 1
	else
		echo "promtool is missing, so $rules is not checked; install it (Debian/Ubuntu): apt-get install prometheus" >&2
		exit 0
	fi
fi
promtool check rules "$rules"

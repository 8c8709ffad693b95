#!/usr/bin/env bash
# The Prometheus alerting rules in docs/alerts: promtool check rules and
# promtool test rules (Debian's prometheus package provides promtool).
set -euo pipefail
cd "$(dirname "$0")/../docs/alerts"
if ! command -v promtool >/dev/null 2>&1; then
	apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null
	# The package starts a Prometheus server; CI needs only promtool.
	{ systemctl stop prometheus || pkill -x prometheus || true; } >/dev/null 2>&1
fi
promtool check rules desko_auth.rules.yml
promtool test rules desko_auth.rules.test.yml

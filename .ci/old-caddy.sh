#!/usr/bin/env bash
# Builds the oldest supported Caddy (default v2.11.3, the oldest 2.11 patch
# on the Go module proxy) with the module from this checkout, then checks
# the documentation's Caddyfiles with it and runs the offline demo against
# it. See the support matrix in docs/development.md.
#
# The module's go.mod requires Caddy v2.11.9, and Go builds the highest
# version any module requires: `xcaddy build v2.11.3 --with <this module>`
# builds v2.11.9. So this builds from a copy of the checkout whose go.mod
# requires the old Caddy: the module's own requirements are kept, the
# indirect ones dropped, and `go mod tidy` works them out again from the old
# Caddy's. The binary must then say it is that version.
#
#   .ci/old-caddy.sh [version]
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-v2.11.3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

mkdir "$work/src"
git ls-files -z | tar --null -T - -cf - | tar -xf - -C "$work/src"
(
	cd "$work/src"
	drop=()
	for m in $(awk '/\/\/ indirect$/ { print ($1 == "require" ? $2 : $1) }' go.mod); do
		drop+=("-droprequire=$m")
	done
	go mod edit "${drop[@]}" -require="github.com/caddyserver/caddy/v2@$version"
	go mod tidy
	go build -o "$work/caddy" ./internal/caddycmd
)
built=$("$work/caddy" version | cut -d' ' -f1)
if [ "$built" != "$version" ]; then
	echo "old-caddy: built Caddy $built, want $version" >&2
	exit 1
fi
echo "old-caddy: built Caddy $built with the module"

.ci/validate-docs.sh "$work/caddy"

CADDY_BIN=$work/caddy ./xcaddy.sh demo --check | tee "$work/demo.out"
if ! grep -q "Caddy $version with desko_auth" "$work/demo.out"; then
	echo "old-caddy: the demo did not run Caddy $version" >&2
	exit 1
fi

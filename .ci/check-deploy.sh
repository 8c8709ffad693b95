#!/usr/bin/env bash
# Checks the deployment recipe of docs/deploy.md against what CI builds
# (docs/deploy/Caddyfile itself is checked by .ci/validate-docs.sh):
#
#   - docs/deploy/Dockerfile builds with the command ./xcaddy.sh build runs
#     (`./xcaddy.sh command /src`), from caddy images of the same minor
#     version. No Docker daemon is needed: this compares text, so the
#     recipe cannot drift from the build CI tests.
#   - docs/deploy/caddy.service passes `systemd-analyze verify` (any message
#     fails), in a scratch root that holds the unit, a Caddy binary at
#     /usr/bin/caddy (default ./caddy) and the system's units. Skipped, with
#     a message, where systemd-analyze is missing.
#
#   .ci/check-deploy.sh [path/to/caddy]
set -euo pipefail
cd "$(dirname "$0")/.."
caddy=$(realpath "${1:-./caddy}")
failures=0
fail() {
	echo "FAIL $*" >&2
	failures=$((failures + 1))
}

dockerfile=docs/deploy/Dockerfile
want="RUN $(./xcaddy.sh command /src)"
got=$(grep -E '^RUN +xcaddy ' "$dockerfile" || true)
if [ "$got" != "$want" ]; then
	fail "$dockerfile: its xcaddy line is not the command ./xcaddy.sh build runs:"
	echo "  Dockerfile: ${got:-<no RUN xcaddy line>}" >&2
	echo "  xcaddy.sh:  $want" >&2
fi
minor=$(./xcaddy.sh command /src | awk '{print $3}' | sed -E 's/^v([0-9]+\.[0-9]+)\..*/\1/')
while read -r image; do
	case "$image" in
	caddy:"$minor"-builder | caddy:"$minor") ;;
	*) fail "$dockerfile: FROM $image: the images must be caddy:$minor-builder and caddy:$minor, the minor version xcaddy.sh builds" ;;
	esac
done < <(awk 'toupper($1) == "FROM" { print $2 }' "$dockerfile")
echo "check-deploy: $dockerfile builds with: ${want#RUN }"

unit=docs/deploy/caddy.service
if command -v systemd-analyze >/dev/null 2>&1; then
	root=$(mktemp -d)
	trap 'rm -rf "$root"' EXIT
	mkdir -p "$root/usr/bin" "$root/etc/systemd/system" "$root/usr/lib/systemd"
	cp "$caddy" "$root/usr/bin/caddy"
	cp "$unit" "$root/etc/systemd/system/caddy.service"
	for d in /usr/lib/systemd/system /lib/systemd/system; do
		if [ -d "$d" ]; then
			cp -r "$d" "$root/usr/lib/systemd/" && break
		fi
	done
	if out=$(systemd-analyze verify --root="$root" caddy.service 2>&1) && [ -z "$out" ]; then
		echo "check-deploy: $unit passes systemd-analyze verify ($(systemd-analyze --version | head -1))"
	else
		fail "$unit: systemd-analyze verify:"
		echo "$out" >&2
	fi
else
	echo "check-deploy: SKIPPED systemd-analyze verify of $unit: systemd-analyze is not installed (apt-get install systemd)"
fi

if [ "$failures" -gt 0 ]; then
	echo "check-deploy: $failures problem(s)" >&2
	exit 1
fi

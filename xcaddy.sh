#!/usr/bin/env bash
# Build and run Caddy with the desko_auth module from this checkout.
#
#   ./xcaddy.sh build          build ./caddy (Caddy v2.11.9 + this module)
#   ./xcaddy.sh run            run Caddyfile.example (needs DESKO_CLIENT_ID and DESKO_CLIENT_SECRET)
#   ./xcaddy.sh demo           offline demo: a local Desko stand-in + Caddy; Ctrl-C stops it
#   ./xcaddy.sh demo --check   the same, but run the curl once, check it and exit
#   ./xcaddy.sh command [DIR]  print the xcaddy command that builds from DIR (default: this checkout)
set -euo pipefail

cd "$(dirname "$0")"
ROOT=$PWD
MODULE=github.com/deskoproxy/caddy-desko-auth
CADDY_VERSION=${CADDY_VERSION:-v2.11.9}
XCADDY_VERSION=v0.4.5
CADDY_BIN=${CADDY_BIN:-$ROOT/caddy}

ensure_xcaddy() {
	export PATH="$(go env GOPATH)/bin:$PATH"
	if ! command -v xcaddy >/dev/null 2>&1; then
		echo "installing xcaddy $XCADDY_VERSION" >&2
		go install "github.com/caddyserver/xcaddy/cmd/xcaddy@$XCADDY_VERSION"
	fi
}

# xcaddy_args sets XCADDY_ARGS to the xcaddy command line that builds Caddy
# with the module from the checkout in $1. docs/deploy/Dockerfile runs the
# same command (CI checks that they agree: .ci/check-deploy.sh).
xcaddy_args() {
	# The @v0.0.0 matters: for an unpublished module path the module proxy
	# refuses instead of answering "not found", and the replace is never used.
	XCADDY_ARGS=(build "$CADDY_VERSION" --with "$MODULE@v0.0.0=$1")
}

build() {
	ensure_xcaddy
	xcaddy_args "$ROOT"
	xcaddy "${XCADDY_ARGS[@]}" --output "$CADDY_BIN"
	"$CADDY_BIN" version
}

ensure_built() {
	if [ ! -x "$CADDY_BIN" ] || [ -n "$(find "$ROOT" -name '*.go' ! -name '*_test.go' -newer "$CADDY_BIN" -print -quit)" ]; then
		build
	fi
}

demo() {
	local check=${1:-}
	ensure_built
	local standin_port=${DEMO_STANDIN_PORT:-9180} proxy_port=${DEMO_PORT:-8080}
	# Global on purpose: the EXIT trap runs after this function returns.
	DEMO_DIR=$(mktemp -d)
	DEMO_PIDS=()
	local dir=$DEMO_DIR
	cleanup() {
		for p in "${DEMO_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
		wait 2>/dev/null || true
		rm -rf "$DEMO_DIR"
	}
	trap cleanup EXIT INT TERM

	go build -o "$dir/desko-standin" ./internal/deskotest/cmd/desko-standin
	"$dir/desko-standin" -addr "127.0.0.1:$standin_port" -client-id demo-client -client-secret demo-secret -ttl 1h \
		>"$dir/standin.log" 2>&1 &
	DEMO_PIDS+=($!)

	cat >"$dir/Caddyfile" <<CADDYFILE
{
	admin 127.0.0.1:${DEMO_ADMIN_PORT:-2019}
	auto_https off
}

http://127.0.0.1:$proxy_port {
	desko_auth {
		client_id     {env.DESKO_CLIENT_ID}
		client_secret {env.DESKO_CLIENT_SECRET}
		scope         organization.show booking.show
		token_url     http://127.0.0.1:$standin_port/v1.1/oauth/token
	}
	reverse_proxy 127.0.0.1:$standin_port
}
CADDYFILE
	DESKO_CLIENT_ID=demo-client DESKO_CLIENT_SECRET=demo-secret \
		"$CADDY_BIN" run --config "$dir/Caddyfile" --adapter caddyfile >"$dir/caddy.log" 2>&1 &
	DEMO_PIDS+=($!)

	local url="http://127.0.0.1:$proxy_port/v1.1/organizations"
	for _ in $(seq 1 50); do
		curl -fsS -o /dev/null "$url" 2>/dev/null && break
		sleep 0.2
	done
	echo "Desko stand-in on 127.0.0.1:$standin_port, Caddy $("$CADDY_BIN" version | cut -d' ' -f1) with desko_auth on 127.0.0.1:$proxy_port."
	echo "The client sends no credentials; the stand-in's API answers 401 to any request without a valid token."
	echo
	echo "  curl -s $url"
	echo
	local out
	out=$(curl -sS "$url")
	echo "$out"
	if [ "$check" = "--check" ]; then
		if grep -q '"ok":true' <<<"$out"; then
			echo "demo: OK"
			return 0
		fi
		echo "demo: FAILED; Caddy's log:" >&2
		cat "$dir/caddy.log" >&2
		return 1
	fi
	echo
	echo "Press Ctrl-C to stop."
	wait
}

case "${1:-build}" in
build) build ;;
run)
	ensure_built
	: "${DESKO_CLIENT_ID:?set DESKO_CLIENT_ID}" "${DESKO_CLIENT_SECRET:?set DESKO_CLIENT_SECRET}"
	exec "$CADDY_BIN" run --config "$ROOT/Caddyfile.example" --adapter caddyfile
	;;
demo) demo "${2:-}" ;;
command)
	xcaddy_args "${2:-$ROOT}"
	echo "xcaddy ${XCADDY_ARGS[*]}"
	;;
*)
	echo "usage: $0 build|run|demo [--check]|command [<dir>]" >&2
	exit 2
	;;
esac

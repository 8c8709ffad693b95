#!/usr/bin/env bash
# CPU profile of the default desko_auth path through Caddy's admin
# /debug/pprof/ (issue 10, point 4), on loopback only.
#
#   bench/profile.sh
#
# Starts the Desko stand-in, the bench upstream and Caddy (admin on
# 127.0.0.1) with the default desko_auth configuration in front of the
# upstream, loads it with wrk for SECONDS while taking a CPU profile of the
# same length, and prints: requests served, the Caddy process's CPU per
# request, the profile's top entries under desko_auth's ServeHTTP, and the
# CPU per request spent in desko_auth's own code (ServeHTTP's cumulative
# time minus what it spends in the handlers after it).
#
# Environment (defaults in brackets):
#   SECONDS_ [15]       profile and load length (at most 60)
#   CONNECTIONS [32]    wrk connections
#   BASE_PORT [18280]   ports BASE_PORT+1 .. BASE_PORT+4 on 127.0.0.1
#   CADDY               a Caddy built with the module (default bench/bin/caddy)
#   OUT                 keep the profile at this path
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECS=${SECONDS_:-15}
CONNECTIONS=${CONNECTIONS:-32}
BASE_PORT=${BASE_PORT:-18280}
BIN=$ROOT/bench/bin
CADDY=${CADDY:-$BIN/caddy}
OUT=${OUT:-}
HOST=127.0.0.1
P_CADDY=$((BASE_PORT + 1)) P_UP=$((BASE_PORT + 2)) P_DESKO=$((BASE_PORT + 3)) P_ADMIN=$((BASE_PORT + 4))
die() { echo "profile.sh: $*" >&2; exit 1; }
[[ $SECS =~ ^[0-9]+$ ]] && [ "$SECS" -ge 1 ] && [ "$SECS" -le 60 ] || die "SECONDS_ must be 1..60"
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
bench_init profile
bench_build

bench_standin "$P_DESKO"
bench_upstream "$P_UP"
cat >"$WORK/Caddyfile" <<CF
{
	admin $HOST:$P_ADMIN
	persist_config off
	auto_https off
	log {
		level WARN
	}
}
http://$HOST:$P_CADDY {
	desko_auth {
		client_id bench-client
		client_secret {env.BENCH_SECRET}
		token_url http://$HOST:$P_DESKO/v1.1/oauth/token
	}
	reverse_proxy $HOST:$P_UP
}
CF
BENCH_SECRET=bench-secret "$CADDY" run --config "$WORK/Caddyfile" --adapter caddyfile >"$WORK/caddy.log" 2>&1 &
pid=$!
PIDS+=($pid)
wait_http "http://$HOST:$P_CADDY/v1.1/organizations"
wrk -t1 -c"$CONNECTIONS" -d2s "http://$HOST:$P_CADDY/v1.1/organizations" >/dev/null # warm-up

ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }
t0=$(ticks "$pid")
curl -fsS --max-time $((SECS + 30)) -o "$WORK/cpu.pprof" "http://$HOST:$P_ADMIN/debug/pprof/profile?seconds=$SECS" &
prof=$!
out=$(wrk -t1 -c"$CONNECTIONS" -d"${SECS}s" "http://$HOST:$P_CADDY/v1.1/organizations")
wait "$prof"
t1=$(ticks "$pid")
reqs=$(awk '/requests in/ { print $1 }' <<<"$out")
if [ -n "$OUT" ]; then cp "$WORK/cpu.pprof" "$OUT"; fi

echo "# desko_auth CPU profile: default configuration, wrk -c$CONNECTIONS for ${SECS}s"
echo
echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); module source: $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)"
echo "- requests: $reqs; Caddy CPU per request (from /proc): $(awk -v a="$t0" -v b="$t1" -v n="$reqs" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f µs", (b - a) * 1e6 / hz / n }')"
echo
# Cumulative times (ms) of a function, from the profile's -top -cum listing.
go tool pprof -top -cum -nodecount=2000 -unit=ms "$WORK/cpu.pprof" 2>/dev/null >"$WORK/top.txt"
cum() { awk -v f="$1" '$6 == f { gsub("ms", "", $4); print $4; found = 1; exit } END { if (!found) print 0 }' "$WORK/top.txt"; }
total=$(awk '/^Duration:/ { } /Total samples/ { for (i = 1; i <= NF; i++) if ($i ~ /ms$/ && $(i-1) == "=") { gsub("ms", "", $i); print $i } }' "$WORK/top.txt" | head -1)
own=$(awk -v a="$(cum 'github.com/deskoproxy/caddy-desko-auth.(*Handler).ServeHTTP')" \
	-v b="$(cum 'github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy.(*Handler).ServeHTTP')" 'BEGIN { print a - b }')
echo "- profile: ${total:-?} ms of samples; desko_auth ServeHTTP cumulative $(cum 'github.com/deskoproxy/caddy-desko-auth.(*Handler).ServeHTTP') ms, of which reverse_proxy $(cum 'github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy.(*Handler).ServeHTTP') ms"
awk -v own="$own" -v n="$reqs" -v tot="${total:-0}" 'BEGIN {
	printf "- desko_auth own code: %.0f ms = %.0f ns per request", own, own * 1e6 / n
	if (tot > 0) printf " (%.2f %% of the samples)", own * 100 / tot
	printf "\n" }'
echo
echo "Top functions inside desko_auth's ServeHTTP, other than the handlers after it (flat ms):"
echo
echo '```'
go tool pprof -top -unit=ms -nodecount=25 -focus='caddy-desko-auth' -ignore='reverseproxy' "$WORK/cpu.pprof" 2>/dev/null | sed -n '/flat%/,$p'
echo '```'

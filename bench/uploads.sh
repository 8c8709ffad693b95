#!/usr/bin/env bash
# Memory under concurrent uploads (issue 10, point 3), on loopback only.
#
#   bench/uploads.sh
#
# Starts the Desko stand-in, the bench upstream (whose /_upstream/upload
# waits UPLOAD_WAIT before it reads a body) and, one after the other, Caddy
# with desko_auth in each configuration of CONFIGS. For each, it sends
# UPLOADS concurrent uploads of SIZE bytes with curl and reports the uploads
# that succeeded and the Caddy process's peak RSS growth: VmHWM at the end
# minus VmRSS before the load (from /proc/PID/status).
#
# Environment (defaults in brackets):
#   UPLOADS [200]        concurrent uploads (at most 500)
#   SIZE [1048576]       bytes per upload
#   UPLOAD_WAIT [3s]     how long the upstream waits before reading
#   CONFIGS ["default replay_off"]  which desko_auth configurations to run:
#                        default, replay_off (retry_on_unauthorized off)
#   BASE_PORT [18180]    ports BASE_PORT+1 .. BASE_PORT+3 on 127.0.0.1
#   CADDY                a Caddy built with the module (default: bench/bin/caddy,
#                        built by bench/run.sh or ./xcaddy.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
UPLOADS=${UPLOADS:-200}
SIZE=${SIZE:-1048576}
UPLOAD_WAIT=${UPLOAD_WAIT:-3s}
CONFIGS=${CONFIGS:-default replay_off}
BASE_PORT=${BASE_PORT:-18180}
BIN=$ROOT/bench/bin
CADDY=${CADDY:-$BIN/caddy}
HOST=127.0.0.1
P_CADDY=$((BASE_PORT + 1)) P_UP=$((BASE_PORT + 2)) P_DESKO=$((BASE_PORT + 3))

die() { echo "uploads.sh: $*" >&2; exit 1; }
[[ $UPLOADS =~ ^[0-9]+$ ]] && [ "$UPLOADS" -ge 1 ] && [ "$UPLOADS" -le 500 ] || die "UPLOADS must be 1..500"
[[ $SIZE =~ ^[0-9]+$ ]] || die "SIZE must be a number of bytes"

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
bench_init uploads
bench_build
kb() { awk -v k="$2" '$1 == k":" { print $2 }' "/proc/$1/status"; }

bench_standin "$P_DESKO"
bench_upstream "$P_UP" -upload-wait "$UPLOAD_WAIT"
head -c "$SIZE" /dev/zero | tr '\0' 'u' >"$WORK/body"

echo "# Caddy peak RSS under $UPLOADS concurrent uploads of $SIZE bytes (upstream waits $UPLOAD_WAIT before reading)"
echo
echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); module source: $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)"
echo
echo "| configuration | uploads OK | RSS before MiB | peak RSS MiB | growth MiB |"
echo "|---|---|---|---|---|"
for cfg in $CONFIGS; do
	case $cfg in
	default) extra="" ;;
	replay_off) extra="retry_on_unauthorized off" ;;
	*) die "unknown configuration $cfg" ;;
	esac
	cat >"$WORK/Caddyfile" <<CF
{
	admin off
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
		$extra
	}
	reverse_proxy $HOST:$P_UP
}
CF
	BENCH_SECRET=bench-secret "$CADDY" run --config "$WORK/Caddyfile" --adapter caddyfile >"$WORK/caddy-$cfg.log" 2>&1 &
	pid=$!
	PIDS+=($pid)
	wait_http "http://$HOST:$P_CADDY/v1.1/organizations"
	before=$(kb "$pid" VmRSS)
	seq 1 "$UPLOADS" | xargs -P "$UPLOADS" -I{} curl -s -o /dev/null -w '%{http_code}\n' --max-time 60 \
		--data-binary @"$WORK/body" -H 'Content-Type: application/octet-stream' \
		"http://$HOST:$P_CADDY/_upstream/upload" >"$WORK/codes-$cfg"
	peak=$(kb "$pid" VmHWM)
	ok=$(grep -c '^200$' "$WORK/codes-$cfg" || true)
	kill "$pid"
	wait "$pid" 2>/dev/null || true
	awk -v c="$cfg" -v ok="$ok" -v n="$UPLOADS" -v b="$before" -v p="$peak" \
		'BEGIN { printf "| %s | %d/%d | %.0f | %.0f | %.0f |\n", c, ok, n, b / 1024, p / 1024, (p - b) / 1024 }'
done

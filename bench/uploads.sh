#!/usr/bin/env bash
# Memory under concurrent uploads (issue 10, point 3), on loopback only.
#
#   bench/uploads.sh
#
# Starts the Desko stand-in, the bench upstream (whose /_upstream/upload
# waits UPLOAD_WAIT before it reads a body) and, one after the other, a
# fresh Caddy with desko_auth for each client mode of MODES and each
# configuration of CONFIGS. For each, it sends UPLOADS concurrent uploads of
# SIZE bytes and reports the uploads answered 200, the Caddy process's
# peak RSS growth (VmHWM at the end minus VmRSS before the load, from
# /proc/PID/status) and the bytes its Go heap allocated meanwhile
# (go_memstats_alloc_bytes_total from Caddy's admin /metrics). RSS misses
# large buffers that are allocated but never written (fresh memory from the
# OS is not resident until touched); the allocations do not.
#
# Client modes: "send" uploads SIZE bytes with curl; "stalled" declares
# Content-Length: SIZE, sends no byte of the body and holds the connection
# for UPLOAD_WAIT (bash /dev/tcp): memory that follows the headers rather
# than the bytes shows there. Stalled uploads are never answered 200.
#
# Environment (defaults in brackets):
#   UPLOADS [200]        concurrent uploads (at most 500)
#   SIZE [1048576]       bytes per upload
#   UPLOAD_WAIT [3s]     how long the upstream waits before reading, and
#                        how long a stalled client holds its connection
#   MODES ["send stalled"]  which client modes to run
#   CONFIGS ["default replay_off"]  which desko_auth configurations to run:
#                        default, replay_off (retry_on_unauthorized off)
#   BASE_PORT [18180]    ports BASE_PORT+1 .. BASE_PORT+4 on 127.0.0.1
#   CADDY                a Caddy built with the module (default: bench/bin/caddy,
#                        built by bench/run.sh or ./xcaddy.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
UPLOADS=${UPLOADS:-200}
SIZE=${SIZE:-1048576}
UPLOAD_WAIT=${UPLOAD_WAIT:-3s}
MODES=${MODES:-send stalled}
CONFIGS=${CONFIGS:-default replay_off}
BASE_PORT=${BASE_PORT:-18180}
BIN=$ROOT/bench/bin
CADDY=${CADDY:-$BIN/caddy}
HOST=127.0.0.1
P_CADDY=$((BASE_PORT + 1)) P_UP=$((BASE_PORT + 2)) P_DESKO=$((BASE_PORT + 3)) P_ADMIN=$((BASE_PORT + 4))

die() { echo "uploads.sh: $*" >&2; exit 1; }
[[ $UPLOADS =~ ^[0-9]+$ ]] && [ "$UPLOADS" -ge 1 ] && [ "$UPLOADS" -le 500 ] || die "UPLOADS must be 1..500"
[[ $SIZE =~ ^[0-9]+$ ]] || die "SIZE must be a number of bytes"
[[ " $MODES " != *" stalled "* || $UPLOAD_WAIT =~ ^[0-9]+(\.[0-9]+)?s$ ]] || die "UPLOAD_WAIT must be in seconds (3s, 0.5s) for the stalled mode"

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
bench_init uploads
bench_build
kb() { awk -v k="$2" '$1 == k":" { print $2 }' "/proc/$1/status"; }
# allocated: bytes the Caddy process's Go heap has allocated so far.
allocated() { curl -fsS "http://$HOST:$P_ADMIN/metrics" | awk '$1 == "go_memstats_alloc_bytes_total" { printf "%.0f\n", $2 }'; }

bench_standin "$P_DESKO"
bench_upstream "$P_UP" -upload-wait "$UPLOAD_WAIT"
head -c "$SIZE" /dev/zero | tr '\0' 'u' >"$WORK/body"

echo "# Caddy peak RSS under $UPLOADS concurrent uploads of $SIZE bytes (upstream waits $UPLOAD_WAIT before reading)"
echo
echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); module source: $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)"
echo
# stalled_uploads CODES: UPLOADS clients that declare SIZE bytes, send
# none and hold their connection UPLOAD_WAIT; writes no code (none is 200).
stalled_uploads() {
	local hold=${UPLOAD_WAIT%s} clients=()
	for _ in $(seq 1 "$UPLOADS"); do
		(
			exec 3<>"/dev/tcp/$HOST/$P_CADDY"
			printf 'POST /_upstream/upload HTTP/1.1\r\nHost: %s\r\nContent-Type: application/octet-stream\r\nContent-Length: %s\r\n\r\n' \
				"$HOST:$P_CADDY" "$SIZE" >&3
			sleep "$hold"
		) &
		clients+=($!)
	done
	wait "${clients[@]}" # not a bare wait: Caddy, the stand-in and the upstream are children too
	: >"$1"
}

echo "| client | configuration | uploads OK | RSS before MiB | peak RSS MiB | growth MiB | allocated MiB |"
echo "|---|---|---|---|---|---|---|"
for mode in $MODES; do
case $mode in
send | stalled) ;;
*) die "unknown client mode $mode" ;;
esac
for cfg in $CONFIGS; do
	case $cfg in
	default) extra="" ;;
	replay_off) extra="retry_on_unauthorized off" ;;
	*) die "unknown configuration $cfg" ;;
	esac
	cat >"$WORK/Caddyfile" <<CF
{
	admin $HOST:$P_ADMIN
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
	alloc0=$(allocated)
	if [ "$mode" = stalled ]; then
		stalled_uploads "$WORK/codes-$mode-$cfg"
	else
		seq 1 "$UPLOADS" | xargs -P "$UPLOADS" -I{} curl -s -o /dev/null -w '%{http_code}\n' --max-time 60 \
			--data-binary @"$WORK/body" -H 'Content-Type: application/octet-stream' \
			"http://$HOST:$P_CADDY/_upstream/upload" >"$WORK/codes-$mode-$cfg"
	fi
	peak=$(kb "$pid" VmHWM)
	alloc1=$(allocated)
	ok=$(grep -c '^200$' "$WORK/codes-$mode-$cfg" || true)
	kill "$pid"
	wait "$pid" 2>/dev/null || true
	awk -v m="$mode" -v c="$cfg" -v ok="$ok" -v n="$UPLOADS" -v b="$before" -v p="$peak" -v a0="$alloc0" -v a1="$alloc1" \
		'BEGIN { printf "| %s | %s | %d/%d | %.0f | %.0f | %.0f | %.0f |\n", m, c, ok, n, b / 1024, p / 1024, (p - b) / 1024, (a1 - a0) / 1048576 }'
done
done

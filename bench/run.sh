#!/usr/bin/env bash
# End-to-end load comparison for issue 5, on loopback only.
#
#   bench/run.sh
#
# 1. builds Caddy with the module (xcaddy.sh, into bench/bin/caddy; rebuilt
#    when a top-level .go file, go.mod or go.sum is newer, or REBUILD=1),
#    the upstream (bench/upstream) and the Desko stand-in;
# 2. starts the upstream, a stand-in issuing 1 h tokens, and two Caddy
#    processes from the same binary with the same global options:
#      A: desko_auth + reverse_proxy          (http://127.0.0.1:BASE_PORT+1)
#      B: reverse_proxy + header_up a fixed   (http://127.0.0.1:BASE_PORT+2)
#         "Authorization: Bearer <static>"
# 3. runs the same wrk load alternately against A and B, ROUNDS rounds of
#    one A run and one B run each, and prints per round req/s, p50, p99, the
#    CPU time the Caddy process spent per request (utime+stime from
#    /proc/PID/stat over the run, divided by the requests wrk completed),
#    the A/B ratios of throughput and CPU, A's p99 minus B's, the token
#    requests the stand-in saw during A's run, and the medians over the
#    rounds. With ORDER=abba (the default) even rounds run B first, so that
#    a drift in the machine's load does not favour whichever runs first;
#    ORDER=ab runs A first in every round (A B A B ...). RUNS repeats the
#    whole A/B table (each with its own medians) and ends with the median
#    of the run medians;
# 4. refresh window: for each lifetime in REFRESH_TTLS, a stand-in issuing
#    tokens of that lifetime and a Caddy like A in front of it, loaded for
#    REFRESH_DURATION seconds; runs of A (1 h tokens, the steady state) of
#    the same length come before, between and after them. Printed: p99,
#    errors, upstream 401s, and token requests against d/(0.75*ttl).
#
# Environment (defaults in brackets):
#   ROUNDS [10]           A/B rounds per run
#   RUNS [1]              A/B runs (tables), each of ROUNDS rounds
#   DURATION [5]          seconds per A or B run (at most 15)
#   ORDER [abba]          abba: B first in even rounds; ab: always A first
#   CONNECTIONS [16]      wrk connections (at most 256)
#   THREADS [1]           wrk threads
#   WARMUP [2]            seconds of warm-up load on A and on B before round 1
#   REFRESH_DURATION [30] seconds per refresh-window run (at most 30)
#   REFRESH_TTLS ["2s 5s"] token lifetimes for the refresh window ("" skips it)
#   BASE_PORT [18080]     ports BASE_PORT+1 .. BASE_PORT+20 on 127.0.0.1
#   REBUILD [0]           1 rebuilds Caddy even if it looks up to date
#   CADDY                 use this Caddy binary (built with the module) as is
#   KEEP [0]              1 keeps the work directory (configs, logs)
#
# With the defaults the load part takes about 5 minutes. Everything started
# here is stopped on exit. Needs wrk (installed with apt-get if missing).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
ROUNDS=${ROUNDS:-10}
RUNS=${RUNS:-1}
DURATION=${DURATION:-5}
ORDER=${ORDER:-abba}
CONNECTIONS=${CONNECTIONS:-16}
THREADS=${THREADS:-1}
WARMUP=${WARMUP:-2}
REFRESH_DURATION=${REFRESH_DURATION:-30}
REFRESH_TTLS=${REFRESH_TTLS-2s 5s}
BASE_PORT=${BASE_PORT:-18080}
REBUILD=${REBUILD:-0}
KEEP=${KEEP:-0}
BIN=$ROOT/bench/bin
CADDY_PREBUILT=${CADDY:-}
CADDY=${CADDY:-$BIN/caddy}
CLIENT_ID=bench-client
CLIENT_SECRET=bench-secret
HOST=127.0.0.1
URL_PATH=/v1.1/organizations

die() {
	echo "run.sh: $*" >&2
	exit 1
}
isint() { [[ $1 =~ ^[0-9]+$ ]]; }
isint "$ROUNDS" && [ "$ROUNDS" -ge 1 ] || die "ROUNDS must be a positive integer"
isint "$RUNS" && [ "$RUNS" -ge 1 ] && [ "$RUNS" -le 20 ] || die "RUNS must be 1..20"
isint "$DURATION" && [ "$DURATION" -ge 1 ] && [ "$DURATION" -le 15 ] || die "DURATION must be 1..15 (seconds)"
isint "$CONNECTIONS" && [ "$CONNECTIONS" -ge 1 ] && [ "$CONNECTIONS" -le 256 ] || die "CONNECTIONS must be 1..256"
isint "$THREADS" && [ "$THREADS" -ge 1 ] && [ "$THREADS" -le "$CONNECTIONS" ] || die "THREADS must be 1..CONNECTIONS"
isint "$WARMUP" || die "WARMUP must be an integer"
[ "$ORDER" = abba ] || [ "$ORDER" = ab ] || die "ORDER must be abba or ab"
isint "$REFRESH_DURATION" && [ "$REFRESH_DURATION" -ge 1 ] && [ "$REFRESH_DURATION" -le 30 ] || die "REFRESH_DURATION must be 1..30 (seconds)"
isint "$BASE_PORT" && [ "$BASE_PORT" -ge 1024 ] && [ "$BASE_PORT" -le 65500 ] || die "BASE_PORT must be 1024..65500"

P_A=$((BASE_PORT + 1))
P_B=$((BASE_PORT + 2))
P_UP=$((BASE_PORT + 3))
P_DESKO=$((BASE_PORT + 4))

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
bench_init run


# --- tools and builds ------------------------------------------------------
bench_tools

mkdir -p "$BIN"
go build -o "$BIN/upstream" ./bench/upstream
go build -o "$BIN/desko-standin" ./internal/deskotest/cmd/desko-standin
if [ -n "$CADDY_PREBUILT" ]; then
	[ -x "$CADDY" ] || die "CADDY=$CADDY is not an executable"
elif [ "$REBUILD" = 1 ] || [ ! -x "$CADDY" ] ||
	[ -n "$(find "$ROOT" -maxdepth 1 \( \( -name '*.go' ! -name '*_test.go' \) -o -name go.mod -o -name go.sum \) -newer "$CADDY" -print -quit)" ]; then
	echo "building Caddy with desko_auth into $CADDY" >&2
	CADDY_BIN=$CADDY ./xcaddy.sh build >"$WORK/build.log" 2>&1 || {
		cat "$WORK/build.log" >&2
		die "building Caddy failed"
	}
fi

# --- processes -------------------------------------------------------------
start() { # name cmd...: starts cmd in the background, logging to $WORK/name.log
	local name=$1
	shift
	"$@" >"$WORK/$name.log" 2>&1 &
	PIDS+=($!)
}

wait_http() { # url [grep-pattern]
	local url=$1 pat=${2:-} out
	for _ in $(seq 1 100); do
		if out=$(curl -fsS --max-time 2 "$url" 2>/dev/null); then
			if [ -z "$pat" ] || grep -q "$pat" <<<"$out"; then return 0; fi
		fi
		sleep 0.1
	done
	die "$url did not answer as expected"
}

start_standin() { # name port ttl
	port_in_use "$2" && die "port $2 is in use (set BASE_PORT)"
	start "$1" "$BIN/desko-standin" -addr "$HOST:$2" -client-id "$CLIENT_ID" -client-secret "$CLIENT_SECRET" -ttl "$3"
	wait_http "http://$HOST:$2/_standin/stats" token_requests
}

# Both configurations share these global options.
GLOBAL='{
	admin off
	persist_config off
	auto_https off
	default_bind 127.0.0.1
	log {
		output stderr
		level WARN
	}
}'

caddyfile_auth() { # port desko-port
	cat <<EOF
$GLOBAL

http://$HOST:$1 {
	desko_auth {
		client_id {env.BENCH_CLIENT_ID}
		client_secret {env.BENCH_CLIENT_SECRET}
		token_url http://$HOST:$2/v1.1/oauth/token
	}
	reverse_proxy $HOST:$P_UP
}
EOF
}

caddyfile_static() { # port
	cat <<EOF
$GLOBAL

http://$HOST:$1 {
	reverse_proxy $HOST:$P_UP {
		header_up Authorization "Bearer $STATIC_TOKEN"
	}
}
EOF
}

declare -A CADDY_PID
start_caddy() { # name port (config in $WORK/name.caddyfile)
	port_in_use "$2" && die "port $2 is in use (set BASE_PORT)"
	# env execs Caddy: the PID is Caddy's, for /proc/PID/stat.
	start "$1" env BENCH_CLIENT_ID=$CLIENT_ID BENCH_CLIENT_SECRET=$CLIENT_SECRET \
		"$CADDY" run --config "$WORK/$1.caddyfile" --adapter caddyfile
	CADDY_PID[$1]=$!
	wait_http "http://$HOST:$2$URL_PATH" '"ok":true'
}

CLK_TCK=$(getconf CLK_TCK)
# cpu_ticks pid: the process's user+system CPU time so far, in clock ticks.
cpu_ticks() {
	# Fields after the ")" that ends the command name: utime is the 12th,
	# stime the 13th.
	local rest
	rest=$(sed 's/^.*) //' "/proc/$1/stat")
	awk '{ print $12 + $13 }' <<<"$rest"
}
# cpu_us_per_req ticks-before ticks-after requests
cpu_us_per_req() {
	awk -v a="$1" -v b="$2" -v n="$3" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", (b - a) * 1e6 / hz / n }'
}

stat_of() { # url key
	curl -fsS --max-time 2 "$1" | grep -o "\"$2\":[0-9]*" | cut -d: -f2
}
tokreqs() { stat_of "http://$HOST:$1/_standin/stats" token_requests; }
upstat() { stat_of "http://$HOST:$P_UP/_upstream/stats" "$1"; }

start_standin desko "$P_DESKO" 1h
# A fixed token as long as the stand-in's, so that A and B send headers of
# the same size. (This token request happens before any measurement.)
REAL_TOKEN=$(curl -fsS --max-time 5 -H 'Content-Type: application/json' \
	-d "{\"grant_type\":\"client_credentials\",\"client_id\":\"$CLIENT_ID\",\"client_secret\":\"$CLIENT_SECRET\"}" \
	"http://$HOST:$P_DESKO/v1.1/oauth/token" | sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p')
[ -n "$REAL_TOKEN" ] || die "could not get a token from the stand-in"
STATIC_TOKEN=static
while [ ${#STATIC_TOKEN} -lt ${#REAL_TOKEN} ]; do STATIC_TOKEN+=x; done

port_in_use "$P_UP" && die "port $P_UP is in use (set BASE_PORT)"
start upstream "$BIN/upstream" -addr "$HOST:$P_UP" -client-id "$CLIENT_ID" -static-token "$STATIC_TOKEN"
wait_http "http://$HOST:$P_UP/_upstream/stats" static_ok

caddyfile_auth "$P_A" "$P_DESKO" >"$WORK/caddy-a.caddyfile"
caddyfile_static "$P_B" >"$WORK/caddy-b.caddyfile"
start_caddy caddy-a "$P_A"
start_caddy caddy-b "$P_B"

# --- load ------------------------------------------------------------------
cat >"$WORK/report.lua" <<'EOF'
done = function(summary, latency, requests)
	local e = summary.errors
	io.write(string.format("RESULT requests=%d duration_us=%d p50_us=%.0f p99_us=%.0f max_us=%.0f non2xx=%d sockerr=%d\n",
		summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
		e.status, e.connect + e.read + e.write + e.timeout))
end
EOF

# load port seconds: runs wrk and sets R_RPS R_P50 R_P99 (ms) R_REQ R_ERR.
load() {
	local out line
	out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$2"s --timeout 5s -s "$WORK/report.lua" "http://$HOST:$1$URL_PATH")
	line=$(grep '^RESULT ' <<<"$out") || die "no wrk result: $out"
	local kv
	declare -A W
	for kv in ${line#RESULT }; do W[${kv%%=*}]=${kv#*=}; done
	R_REQ=${W[requests]}
	R_ERR=$((W[non2xx] + W[sockerr]))
	R_RPS=$(awk -v n="${W[requests]}" -v us="${W[duration_us]}" 'BEGIN { printf "%.0f", n / (us / 1e6) }')
	R_P50=$(awk -v v="${W[p50_us]}" 'BEGIN { printf "%.3f", v / 1000 }')
	R_P99=$(awk -v v="${W[p99_us]}" 'BEGIN { printf "%.3f", v / 1000 }')
}

# median printf-format values...
median() {
	local fmt=$1
	shift
	printf '%s\n' "$@" | sort -g | awk -v f="$fmt" '{ a[NR] = $1 }
		END { m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2; printf f "\n", m }'
}

echo "# desko_auth load comparison"
echo
echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "- $(go version)"
echo "- CPU: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) CPUs; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "- caddy: $("$CADDY" version | head -1); module source: $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)"
echo "- wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s, GET http://127.0.0.1:PORT$URL_PATH, ROUNDS=$ROUNDS, ORDER=$ORDER"
echo

if [ "$WARMUP" -gt 0 ]; then
	load "$P_A" "$WARMUP"
	load "$P_B" "$WARMUP"
fi

# run_a and run_b load A or B once and check, with the upstream's counters,
# that it saw only stand-in tokens from A and only the fixed token from B.
run_a() {
	local t0 j0 s0 c0
	t0=$(tokreqs "$P_DESKO") j0=$(upstat jwt_ok) s0=$(upstat static_ok) c0=$(cpu_ticks "${CADDY_PID[caddy-a]}")
	load "$P_A" "$DURATION"
	a_cpu=$(cpu_us_per_req "$c0" "$(cpu_ticks "${CADDY_PID[caddy-a]}")" "$R_REQ")
	a_rps=$R_RPS a_p50=$R_P50 a_p99=$R_P99 a_err=$R_ERR
	a_tok=$(($(tokreqs "$P_DESKO") - t0))
	if [ "$(upstat static_ok)" -ne "$s0" ] || [ $(($(upstat jwt_ok) - j0)) -lt "$R_REQ" ]; then MISROUTED=$((MISROUTED + 1)); fi
}
run_b() {
	local j0 s0 c0
	j0=$(upstat jwt_ok) s0=$(upstat static_ok) c0=$(cpu_ticks "${CADDY_PID[caddy-b]}")
	load "$P_B" "$DURATION"
	b_cpu=$(cpu_us_per_req "$c0" "$(cpu_ticks "${CADDY_PID[caddy-b]}")" "$R_REQ")
	b_rps=$R_RPS b_p50=$R_P50 b_p99=$R_P99 b_err=$R_ERR
	if [ "$(upstat jwt_ok)" -ne "$j0" ] || [ $(($(upstat static_ok) - s0)) -lt "$R_REQ" ]; then MISROUTED=$((MISROUTED + 1)); fi
}
ERRS=0 MISROUTED=0
RUN_RATIOS=() RUN_CPU=() RUN_DP99=()
for run in $(seq 1 "$RUNS"); do
	echo "## A/B run $run of $RUNS: desko_auth (A) against static header_up (B)"
	echo
	echo "| round (first) | A req/s | B req/s | A/B | A CPU µs/req | B CPU µs/req | A/B CPU | A p50 ms | B p50 ms | A p99 ms | B p99 ms | A p99 − B p99 ms | A errors | B errors | token requests during A |"
	echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
	RATIOS=() CPUR=() ACPU=() BCPU=() DP99=() ARPS=() BRPS=() AP50=() BP50=() AP99=() BP99=() ATOK=()
	for round in $(seq 1 "$ROUNDS"); do
		# Alternate which system goes first, and start each run with the
		# other one than the run before.
		if [ "$ORDER" = abba ] && [ $(((round + run) % 2)) -eq 1 ]; then
			run_b
			run_a
			first=B
		else
			run_a
			run_b
			first=A
		fi
		ratio=$(awk -v a="$a_rps" -v b="$b_rps" 'BEGIN { printf "%.3f", a / b }')
		cpur=$(awk -v a="$a_cpu" -v b="$b_cpu" 'BEGIN { printf "%.3f", a / b }')
		dp99=$(awk -v a="$a_p99" -v b="$b_p99" 'BEGIN { printf "%+.3f", a - b }')
		tok=$a_tok
		ERRS=$((ERRS + a_err + b_err))
		RATIOS+=("$ratio") CPUR+=("$cpur") ACPU+=("$a_cpu") BCPU+=("$b_cpu") DP99+=("$dp99") ARPS+=("$a_rps") BRPS+=("$b_rps")
		AP50+=("$a_p50") BP50+=("$b_p50") AP99+=("$a_p99") BP99+=("$b_p99") ATOK+=("$tok")
		echo "| $round ($first) | $a_rps | $b_rps | $ratio | $a_cpu | $b_cpu | $cpur | $a_p50 | $b_p50 | $a_p99 | $b_p99 | $dp99 | $a_err | $b_err | $tok |"
	done
	M_RATIO=$(median %.3f "${RATIOS[@]}")
	M_CPU=$(median %.3f "${CPUR[@]}")
	M_DP99=$(median %+.3f "${DP99[@]}")
	RUN_RATIOS+=("$M_RATIO") RUN_CPU+=("$M_CPU") RUN_DP99+=("$M_DP99")
	echo "| **median** | $(median %.0f "${ARPS[@]}") | $(median %.0f "${BRPS[@]}") | **$M_RATIO** | $(median %.2f "${ACPU[@]}") | $(median %.2f "${BCPU[@]}") | **$M_CPU** | $(median %.3f "${AP50[@]}") | $(median %.3f "${BP50[@]}") | $(median %.3f "${AP99[@]}") | $(median %.3f "${BP99[@]}") | **$M_DP99** | | | $(median %.0f "${ATOK[@]}") |"
	echo
done
M_RATIO=$(median %.3f "${RUN_RATIOS[@]}")
M_CPU=$(median %.3f "${RUN_CPU[@]}")
M_DP99=$(median %+.3f "${RUN_DP99[@]}")
echo "Run medians: throughput A/B ${RUN_RATIOS[*]}; CPU per request A/B ${RUN_CPU[*]}; p99 A − B ${RUN_DP99[*]} ms."
echo "Median of the run medians: throughput A/B **$M_RATIO**, CPU per request A/B **$M_CPU**, p99 A − B **$M_DP99** ms."
echo
TOTAL_TOK=$(tokreqs "$P_DESKO")
echo "Token requests the 1 h stand-in received in all: $TOTAL_TOK (1 by this script to size the static token, the rest from A's engine)."
echo "Errors (non-2xx + socket errors) over all A/B runs: $ERRS. Runs where the upstream saw the wrong kind of token: $MISROUTED."
awk -v r="$M_RATIO" -v c="$M_CPU" -v d="$M_DP99" 'BEGIN {
	printf "Targets: median A/B throughput %s >= 0.98: %s; median A/B CPU per request %s <= 1.02: %s; median A p99 - B p99 %s ms <= +0.5 ms: %s\n",
		r, (r >= 0.98 ? "met" : "MISSED"), c, (c <= 1.02 ? "met" : "MISSED"), d, (d <= 0.5 ? "met" : "MISSED") }'
echo

# --- refresh window --------------------------------------------------------
# refresh_run name port desko-port: one REFRESH_DURATION load, one table row.
refresh_run() {
	local t0 r0 t1 r1 exp
	t0=$(tokreqs "$3") r0=$(upstat rejected)
	load "$2" "$REFRESH_DURATION"
	t1=$(tokreqs "$3") r1=$(upstat rejected)
	if [ "$1" = 1h ]; then
		exp=0
		STEADY+=("$R_P99")
	else
		exp=$(awk -v d="$REFRESH_DURATION" -v t="$1" 'BEGIN { sub(/s$/, "", t); printf "%.1f", d / (0.75 * t) }')
	fi
	ROWS+=("| $1 | $R_RPS | $R_P50 | $R_P99 | @DP@ | $R_ERR | $((r1 - r0)) | $((t1 - t0)) | $exp |")
}
if [ -n "$REFRESH_TTLS" ]; then
	echo "## Refresh window: short-lived tokens under load (${REFRESH_DURATION}s each)"
	echo
	# Start the short-lived configurations first: their engines refresh in
	# the background from then on, so the measured runs are in steady state.
	i=0
	declare -A RPORT RDPORT
	for ttl in $REFRESH_TTLS; do
		[[ $ttl =~ ^[0-9]+s$ ]] || die "REFRESH_TTLS: $ttl is not a whole number of seconds like 2s"
		i=$((i + 1))
		RPORT[$ttl]=$((BASE_PORT + 10 + 2 * i)) RDPORT[$ttl]=$((BASE_PORT + 11 + 2 * i))
		start_standin "desko-$ttl" "${RDPORT[$ttl]}" "$ttl"
		caddyfile_auth "${RPORT[$ttl]}" "${RDPORT[$ttl]}" >"$WORK/caddy-$ttl.caddyfile"
		start_caddy "caddy-$ttl" "${RPORT[$ttl]}"
		load "${RPORT[$ttl]}" 2 # warm-up
	done
	ROWS=() STEADY=()
	refresh_run 1h "$P_A" "$P_DESKO"
	for ttl in $REFRESH_TTLS; do
		refresh_run "$ttl" "${RPORT[$ttl]}" "${RDPORT[$ttl]}"
		refresh_run 1h "$P_A" "$P_DESKO"
	done
	# Each short-lived run is compared with the mean p99 of the 1 h runs
	# just before and just after it.
	echo "| token lifetime | req/s | p50 ms | p99 ms | p99 − neighbouring 1 h runs' p99 ms | errors | upstream 401s | token requests | expected ≈ d/(0.75·ttl) |"
	echo "|---|---|---|---|---|---|---|---|---|"
	k=0
	for row in "${ROWS[@]}"; do
		if [[ $row == "| 1h |"* ]]; then
			echo "${row/@DP@/}"
			k=$((k + 1))
		else
			p99=$(cut -d'|' -f5 <<<"$row" | tr -d ' ')
			dp=$(awk -v a="$p99" -v b="${STEADY[$((k - 1))]}" -v c="${STEADY[$k]}" 'BEGIN { printf "%+.3f", a - (b + c) / 2 }')
			echo "${row/@DP@/$dp}"
		fi
	done
	echo
	echo "The engine refreshes at 75–80 % of a token's lifetime (jitter), so the count is expected between d/(0.80·ttl) and d/(0.75·ttl)."
fi

#!/usr/bin/env bash
# Many tenants through one block (issue 18, point 2), on loopback only.
#
#   bench/tenants.sh
#
# 1. builds Caddy with the module (go build ./internal/caddycmd, into
#    bench/bin/caddy-tenants), the bench upstream and the Desko stand-in;
# 2. writes a credentials_dir of TENANTS tenants (<dir>/<tenant>/client_id,
#    client_secret): t00001, t00002, ... with random secrets, and "bench",
#    whose client is the one the bench upstream accepts; starts the
#    stand-in with -clients-dir on the same folder (it accepts every client
#    of it, read on demand) and the upstream;
# 3. (a) start: runs Caddy with one tenant block (site T)
#        desko_auth {
#            tenant          {http.request.header.X-Desko-Tenant}
#            credentials_dir <dir>
#            tenant_idle     TENANT_IDLE
#            token_url       <stand-in>
#        }
#    and measures the time from exec to the site answering an HTTP request,
#    and the token requests the stand-in received by then and one second
#    later (target: 0);
#    (b) uses USED distinct tenants once each (one request each, in
#    sequence, to the stand-in's API through Caddy, which says whose token
#    each request carried) and measures the growth of Caddy's RSS (VmRSS of
#    /proc/PID/status), heap in use (go_memstats_heap_inuse_bytes of the
#    admin API's /metrics) and goroutines (the total of the admin API's
#    /debug/pprof/goroutine?debug=1); each taken after a GC forced through
#    the admin API's /debug/pprof/heap?gc=1, RSS once it has settled (the
#    Go runtime returns freed pages to the system within seconds, not at
#    once: SETTLE). Checks one token request per tenant, every answer 200
#    with its own tenant's token, and desko_auth_tenants = USED;
#    (c) waits, without traffic, until desko_auth_tenants is 0 again
#    (tenant_idle plus the sweep, which runs every tenant_idle/4), and
#    measures the same three again;
#    (d) loads, through a config reload, a second site A into the same
#    Caddy: a single-credential block with the same routes; then loads
#    T's warm tenant "bench" and A alternately (the same requests, with the
#    X-Desko-Tenant header for both) for ROUNDS rounds: req/s and Caddy's
#    CPU per request (utime+stime of /proc/PID/stat over the run), T/A
#    ratios, medians. One process for both, so that only the handler
#    differs (not the heap, the GC's pacing or the process's placement);
# 4. prints the figures and a summary table with the targets.
#
# Environment (defaults in brackets):
#   TENANTS [10000]       tenants in the credentials_dir (at least USED + 1)
#   USED [1000]           distinct tenants used once in (b)
#   TENANT_IDLE [30s]     the tenant block's tenant_idle (whole seconds, 4..300)
#   ROUNDS [9]            throughput rounds (one T run and one A run each)
#   DURATION [5]          seconds per throughput run (at most 15)
#   CONNECTIONS [16]      wrk connections
#   SETTLE [20]           at most this many seconds for RSS to settle
#                         after a GC (it has when two readings 2 s apart
#                         differ by less than 0.5 MiB)
#   BASE_PORT [18380]     ports BASE_PORT+1 .. BASE_PORT+5 on 127.0.0.1
#   CADDY                 use this Caddy binary (built with the module) as is
#   KEEP [0]              1 keeps the work directory (configs, logs, and the
#                         heap profiles and goroutine dumps of each phase:
#                         heap-start.pprof, heap-used.pprof, heap-idle.pprof)
#   HEAP_PROFILE_RATE     Caddy's runtime.MemProfileRate (GODEBUG
#                         memprofilerate), e.g. 1 to record every allocation
#                         in the heap profiles (slower, and the figures grow
#                         by the profiling's own memory: for investigations)
#
# About 4 minutes with the defaults (the idle wait is TENANT_IDLE plus up to
# a quarter of it), plus the build. Everything started here is stopped, and
# the work directory removed, on exit. Needs wrk (installed with apt-get if
# missing) and curl.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
TENANTS=${TENANTS:-10000}
USED=${USED:-1000}
TENANT_IDLE=${TENANT_IDLE:-30s}
ROUNDS=${ROUNDS:-9}
DURATION=${DURATION:-5}
CONNECTIONS=${CONNECTIONS:-16}
SETTLE=${SETTLE:-20}
BASE_PORT=${BASE_PORT:-18380}
KEEP=${KEEP:-0}
HEAP_PROFILE_RATE=${HEAP_PROFILE_RATE:-}
BIN=$ROOT/bench/bin
CADDY_PREBUILT=${CADDY:-}
CADDY=${CADDY:-$BIN/caddy-tenants}
HOST=127.0.0.1
CLIENT_ID=bench-client
CLIENT_SECRET=bench-secret
URL_PATH=/v1.1/organizations

die() {
	echo "tenants.sh: $*" >&2
	exit 1
}
[[ $TENANTS =~ ^[0-9]+$ ]] && [[ $USED =~ ^[0-9]+$ ]] && [ "$USED" -ge 1 ] && [ "$TENANTS" -gt "$USED" ] &&
	[ "$TENANTS" -le 99999 ] || die "want 1 <= USED < TENANTS <= 99999"
[[ $TENANT_IDLE =~ ^[0-9]+s$ ]] && [ "${TENANT_IDLE%s}" -ge 4 ] && [ "${TENANT_IDLE%s}" -le 300 ] ||
	die "TENANT_IDLE must be whole seconds from 4s to 300s, like 30s"
[[ $ROUNDS =~ ^[0-9]+$ ]] && [ "$ROUNDS" -ge 1 ] || die "ROUNDS must be at least 1"
[[ $DURATION =~ ^[0-9]+$ ]] && [ "$DURATION" -ge 1 ] && [ "$DURATION" -le 15 ] || die "DURATION must be 1..15"
[[ $CONNECTIONS =~ ^[0-9]+$ ]] && [ "$CONNECTIONS" -ge 1 ] && [ "$CONNECTIONS" -le 256 ] || die "CONNECTIONS must be 1..256"
[[ $SETTLE =~ ^[0-9]+$ ]] && [ "$SETTLE" -le 120 ] || die "SETTLE must be 0..120"
[[ $BASE_PORT =~ ^[0-9]+$ ]] && [ "$BASE_PORT" -ge 1024 ] && [ "$BASE_PORT" -le 65000 ] || die "BASE_PORT must be 1024..65000"
[ -z "$HEAP_PROFILE_RATE" ] || [[ $HEAP_PROFILE_RATE =~ ^[0-9]+$ ]] || die "HEAP_PROFILE_RATE must be a whole number"
P_T=$((BASE_PORT + 1)) P_A=$((BASE_PORT + 2)) P_ADMIN=$((BASE_PORT + 3)) P_UP=$((BASE_PORT + 4)) P_DESKO=$((BASE_PORT + 5))

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
bench_init tenants

for p in "$P_T" "$P_A" "$P_ADMIN" "$P_UP" "$P_DESKO"; do
	port_in_use "$p" && die "port $p is in use (set BASE_PORT)"
done

# --- tools and builds ------------------------------------------------------
bench_tools
mkdir -p "$BIN"
go build -o "$BIN/upstream" ./bench/upstream
go build -o "$BIN/desko-standin" ./internal/deskotest/cmd/desko-standin
if [ -n "$CADDY_PREBUILT" ]; then
	[ -x "$CADDY" ] || die "CADDY=$CADDY is not an executable"
else
	echo "building Caddy with desko_auth into $CADDY" >&2
	go build -o "$CADDY" ./internal/caddycmd
fi

# --- the credentials_dir -----------------------------------------------------
DIR=$WORK/tenants
mkdir -m 700 "$DIR"
# t00001 .. t<TENANTS-1> with random secrets, and "bench": TENANTS in all.
(cd "$DIR" && seq -f 't%05g' 1 $((TENANTS - 1)) | xargs mkdir -m 700 && mkdir -m 700 bench)
awk -v dir="$DIR" -v n=$((TENANTS - 1)) -v seed="$RANDOM$$" 'BEGIN {
	srand(seed)
	for (i = 1; i <= n; i++) {
		t = sprintf("t%05d", i)
		f = dir "/" t "/client_id"; print "client-" t > f; close(f)
		s = ""
		for (k = 0; k < 4; k++) s = s sprintf("%08x", int(rand() * 4294967296))
		f = dir "/" t "/client_secret"; print s > f; close(f)
	}
}'
echo "$CLIENT_ID" >"$DIR/bench/client_id"
echo "$CLIENT_SECRET" >"$DIR/bench/client_secret"
chmod -R go-rwx "$DIR"
[ "$(find "$DIR" -mindepth 1 -maxdepth 1 -type d | wc -l)" -eq "$TENANTS" ] || die "the credentials_dir does not hold $TENANTS tenants"

# --- processes -------------------------------------------------------------
start() { # name cmd...: starts cmd in the background, logging to $WORK/name.log
	local name=$1
	shift
	"$@" >"$WORK/$name.log" 2>&1 &
	PIDS+=($!)
}
wait_http() { # url: until it answers 2xx (10 s at most)
	for _ in $(seq 1 100); do
		curl -fsS --max-time 2 -o /dev/null "$1" 2>/dev/null && return 0
		sleep 0.1
	done
	die "$1 did not answer"
}
stat_of() { # url key
	curl -fsS --max-time 2 "$1" | grep -o "\"$2\":[0-9]*" | cut -d: -f2
}
tokreqs() { stat_of "http://$HOST:$P_DESKO/_standin/stats" token_requests; }
upstat() { stat_of "http://$HOST:$P_UP/_upstream/stats" "$1"; }

start desko "$BIN/desko-standin" -addr "$HOST:$P_DESKO" -client-id "$CLIENT_ID" -client-secret "$CLIENT_SECRET" -ttl 1h -clients-dir "$DIR"
wait_http "http://$HOST:$P_DESKO/_standin/stats"
start upstream "$BIN/upstream" -addr "$HOST:$P_UP" -client-id "$CLIENT_ID" -static-token unused
wait_http "http://$HOST:$P_UP/_upstream/stats"

# The config: site T (the tenant block) and, from phase (d) on, site A (a
# single-credential block). Both send /tenants/* to the stand-in's API
# (which accepts any token it issued and says whose it is) and the rest to
# the bench upstream.
caddyfile() { # with-a (0 or 1)
	cat <<EOF
{
	admin $HOST:$P_ADMIN
	persist_config off
	auto_https off
	default_bind $HOST
	log {
		output stderr
		level WARN
	}
}

http://$HOST:$P_T {
	desko_auth {
		tenant {http.request.header.X-Desko-Tenant}
		credentials_dir $DIR
		tenant_idle $TENANT_IDLE
		token_url http://$HOST:$P_DESKO/v1.1/oauth/token
	}
	handle /tenants/* {
		reverse_proxy $HOST:$P_DESKO
	}
	handle {
		reverse_proxy $HOST:$P_UP
	}
}
EOF
	[ "$1" = 1 ] || return 0
	cat <<EOF

http://$HOST:$P_A {
	desko_auth {
		client_id {env.BENCH_CLIENT_ID}
		client_secret {env.BENCH_CLIENT_SECRET}
		token_url http://$HOST:$P_DESKO/v1.1/oauth/token
	}
	handle /tenants/* {
		reverse_proxy $HOST:$P_DESKO
	}
	handle {
		reverse_proxy $HOST:$P_UP
	}
}
EOF
}
caddyfile 0 >"$WORK/caddy-t.caddyfile"
caddyfile 1 >"$WORK/caddy-ta.caddyfile"
for f in caddy-t caddy-ta; do
	BENCH_CLIENT_ID=$CLIENT_ID BENCH_CLIENT_SECRET=$CLIENT_SECRET \
		"$CADDY" validate --config "$WORK/$f.caddyfile" --adapter caddyfile >"$WORK/validate.log" 2>&1 ||
		die "$f.caddyfile does not validate: $(tail -n 3 "$WORK/validate.log")"
done

ms_since() { echo $((($(date +%s%N) - $1) / 1000000)); }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$PID/status"; }
admin() { curl -fsS --max-time 10 "$@"; }
metric() { # name [label-filter]: the sum of the matching series
	admin "http://$HOST:$P_ADMIN/metrics" |
		awk -v n="$1" -v f="${2:-}" '$1 !~ /^#/ && (index($1, n "{") == 1 || $1 == n) && (f == "" || index($1, f)) { s += $2; ok = 1 } END { if (ok) printf "%.0f\n", s; else print "NA" }'
}
goroutines() { admin "http://$HOST:$P_ADMIN/debug/pprof/goroutine?debug=1" | sed -n '1s/^goroutine profile: total //p'; }
gc() { admin -o "$WORK/heap-$1.pprof" "http://$HOST:$P_ADMIN/debug/pprof/heap?gc=1"; }
# sample name [seconds]: after a GC (its heap profile kept as
# heap-NAME.pprof), sets S_HEAP (bytes in use) and S_GOR, then S_RSS (KiB)
# once RSS has settled (GCs 2 s apart until two readings differ by less
# than 512 KiB, SETTLE or the seconds given at most) and S_SETTLED (seconds
# waited).
sample() { # name [most seconds to settle, default SETTLE]
	local prev waited=0 most=${2:-$SETTLE}
	gc "$1"
	S_HEAP=$(metric go_memstats_heap_inuse_bytes)
	S_GOR=$(goroutines)
	admin -o "$WORK/goroutines-$1.txt" "http://$HOST:$P_ADMIN/debug/pprof/goroutine?debug=1"
	S_RSS=$(rss_kib)
	while [ "$waited" -lt "$most" ]; do
		sleep 2
		waited=$((waited + 2))
		admin -o /dev/null "http://$HOST:$P_ADMIN/debug/pprof/heap?gc=1"
		prev=$S_RSS
		S_RSS=$(rss_kib)
		[ $((S_RSS - prev)) -lt 512 ] && [ $((prev - S_RSS)) -lt 512 ] && break
	done
	S_SETTLED=$waited
}
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
mib_b() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
dmib() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.1f", (b - a) / 1024 }'; }
dmib_b() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.1f", (b - a) / 1048576 }'; }

echo "# desko_auth: $TENANTS tenants in one block"
echo
echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "- $(go version)"
echo "- CPU: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) CPUs; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "- caddy: $("$CADDY" version | head -1); module source: $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)"
echo "- TENANTS=$TENANTS USED=$USED TENANT_IDLE=$TENANT_IDLE ROUNDS=$ROUNDS DURATION=$DURATION CONNECTIONS=$CONNECTIONS SETTLE=$SETTLE${HEAP_PROFILE_RATE:+ HEAP_PROFILE_RATE=$HEAP_PROFILE_RATE (profiling inflates the figures)}"
echo

# --- (a) start -----------------------------------------------------------------
tok0=$(tokreqs)
t0=$(date +%s%N)
# env execs Caddy: the PID is Caddy's.
start caddy env GOMAXPROCS="$(nproc)" BENCH_CLIENT_ID=$CLIENT_ID BENCH_CLIENT_SECRET=$CLIENT_SECRET \
	${HEAP_PROFILE_RATE:+GODEBUG=memprofilerate=$HEAP_PROFILE_RATE} \
	"$CADDY" run --config "$WORK/caddy-t.caddyfile" --adapter caddyfile
PID=$!
START_MS=
for _ in $(seq 1 1000); do
	# Any HTTP answer will do (a request that names no tenant gets 403).
	if curl -s --max-time 1 -o /dev/null "http://$HOST:$P_T/"; then
		START_MS=$(ms_since "$t0")
		break
	fi
	kill -0 "$PID" 2>/dev/null || die "Caddy exited"
	sleep 0.01
done
[ -n "$START_MS" ] || die "Caddy did not answer within 10 s"
TOK_AT_START=$(($(tokreqs) - tok0))
sleep 1
TOK_AT_LOAD=$(($(tokreqs) - tok0))
echo "## (a) Start"
echo
echo "Caddy answered $START_MS ms after exec; token requests by then: $TOK_AT_START, one second later: $TOK_AT_LOAD; RSS $(mib "$(rss_kib)") MiB."
echo

# --- (b) USED tenants used once ------------------------------------------------
IDLE_S=${TENANT_IDLE%s}
sample start
R0=$S_RSS H0=$S_HEAP G0=$S_GOR W0=$S_SETTLED
# One curl, one connection, the requests in sequence; each names its
# tenant, and the stand-in's API answers whose token it carried.
for i in $(seq 1 "$USED"); do
	t=$(printf 't%05d' "$i")
	[ "$i" -gt 1 ] && echo next
	printf 'url = "http://%s:%s/tenants/%s"\nheader = "X-Desko-Tenant: %s"\nwrite-out = "\\n%%{http_code}\\n"\n' "$HOST" "$P_T" "$t" "$t"
done >"$WORK/used.curl"
tok0=$(tokreqs)
t0=$(date +%s%N)
curl -sS --max-time 600 -K "$WORK/used.curl" >"$WORK/used.out" || die "the $USED requests failed"
USED_MS=$(ms_since "$t0")
LAST_USE=$(date +%s%N)
USED_TOK=$(($(tokreqs) - tok0))
USED_OK=$(grep -c '^200$' "$WORK/used.out" || true)
# The n-th answer must carry the token of client-t<n>.
USED_OWN=$(grep -o '"client_id":"[^"]*"' "$WORK/used.out" | awk -F'"' '{ n++; if ($4 == sprintf("client-t%05d", n)) ok++ } END { print ok + 0 }')
LIVE_B=$(metric desko_auth_tenants)
STARTS_B=$(metric desko_auth_tenant_starts_total)
# (The tenants must still be live when RSS is read: half their tenant_idle
# at most.)
sample used $((SETTLE < IDLE_S / 2 ? SETTLE : IDLE_S / 2))
R1=$S_RSS H1=$S_HEAP G1=$S_GOR W1=$S_SETTLED
LIVE_B2=$(metric desko_auth_tenants)
echo "## (b) $USED distinct tenants used once"
echo
echo "$USED requests in sequence in $USED_MS ms ($(awk -v t="$USED_MS" -v n="$USED" 'BEGIN { printf "%.2f", t / n }') ms each, a tenant start and a token request included);"
echo "answers 200: $USED_OK; with their own tenant's token: $USED_OWN; token requests: $USED_TOK; desko_auth_tenants: $LIVE_B ($LIVE_B2 after the RSS had settled); desko_auth_tenant_starts_total: $STARTS_B."
echo
echo "| after a GC | RSS MiB (settled) | heap in use MiB | goroutines |"
echo "|---|---|---|---|"
echo "| before | $(mib "$R0") (${W0} s) | $(mib_b "$H0") | $G0 |"
echo "| after $USED tenants | $(mib "$R1") (${W1} s) | $(mib_b "$H1") | $G1 |"
echo "| growth | $(dmib "$R0" "$R1") | $(dmib_b "$H0" "$H1") | $(printf '%+d' $((G1 - G0))) |"
echo "| per tenant | $(awk -v a="$R0" -v b="$R1" -v n="$USED" 'BEGIN { printf "%.1f KiB", (b - a) / n }') | $(awk -v a="$H0" -v b="$H1" -v n="$USED" 'BEGIN { printf "%.1f KiB", (b - a) / n / 1024 }') | |"
echo

# --- (c) idle ------------------------------------------------------------------
deadline=$((IDLE_S + IDLE_S / 4 + 20))
LIVE_C=$LIVE_B
for _ in $(seq 1 $((deadline * 2))); do
	LIVE_C=$(metric desko_auth_tenants)
	[ "$LIVE_C" = 0 ] && break
	sleep 0.5
done
RELEASED_MS=$(ms_since "$LAST_USE")
EVICT_IDLE=$(metric desko_auth_tenant_evictions_total 'reason="idle"')
sample idle
R2=$S_RSS H2=$S_HEAP G2=$S_GOR W2=$S_SETTLED
echo "## (c) After tenant_idle without traffic"
echo
echo "desko_auth_tenants: $LIVE_C, $(awk -v t="$RELEASED_MS" 'BEGIN { printf "%.1f", t / 1000 }') s after the last request (tenant_idle $TENANT_IDLE, swept every $(awk -v s="$IDLE_S" 'BEGIN { printf "%g", (s / 4 < 1 ? 1 : s / 4) }') s); evictions{reason=\"idle\"}: $EVICT_IDLE."
echo
echo "| after a GC | RSS MiB (settled) | heap in use MiB | goroutines |"
echo "|---|---|---|---|"
echo "| before (b) | $(mib "$R0") (${W0} s) | $(mib_b "$H0") | $G0 |"
echo "| after tenant_idle | $(mib "$R2") (${W2} s) | $(mib_b "$H2") | $G2 |"
echo "| against before (b) | $(dmib "$R0" "$R2") | $(dmib_b "$H0" "$H2") | $(printf '%+d' $((G2 - G0))) |"
echo

# --- (d) a warm tenant against a single-credential block -----------------------
tok0=$(tokreqs)
admin -o /dev/null -X POST -H 'Content-Type: text/caddyfile' --data-binary "@$WORK/caddy-ta.caddyfile" "http://$HOST:$P_ADMIN/load" ||
	die "loading the config with site A failed"
wait_http "http://$HOST:$P_A$URL_PATH"
cat >"$WORK/report.lua" <<'EOF'
wrk.headers["X-Desko-Tenant"] = "bench"
done = function(summary, latency, requests)
	local e = summary.errors
	io.write(string.format("RESULT requests=%d duration_us=%d p99_us=%.0f errors=%d\n",
		summary.requests, summary.duration, latency:percentile(99),
		e.status + e.connect + e.read + e.write + e.timeout))
end
EOF
ticks() { sed 's/^.*) //' "/proc/$PID/stat" | awk '{ print $12 + $13 }'; }
HZ=$(getconf CLK_TCK)
# load port seconds: sets L_RPS, L_CPU (µs per request), L_P99 (ms), L_ERR.
load() {
	local out line c0 c1 kv
	declare -A W
	c0=$(ticks)
	out=$(wrk -t1 -c"$CONNECTIONS" -d"$2"s --timeout 5s -s "$WORK/report.lua" "http://$HOST:$1$URL_PATH")
	c1=$(ticks)
	line=$(grep '^RESULT ' <<<"$out") || die "no wrk result: $out"
	for kv in ${line#RESULT }; do W[${kv%%=*}]=${kv#*=}; done
	L_RPS=$(awk -v n="${W[requests]}" -v us="${W[duration_us]}" 'BEGIN { printf "%.0f", n / (us / 1e6) }')
	L_CPU=$(awk -v a="$c0" -v b="$c1" -v n="${W[requests]}" -v hz="$HZ" 'BEGIN { printf "%.2f", (b - a) * 1e6 / hz / n }')
	L_P99=$(awk -v v="${W[p99_us]}" 'BEGIN { printf "%.3f", v / 1000 }')
	L_ERR=${W[errors]}
}
median() { # format values...
	local fmt=$1
	shift
	printf '%s\n' "$@" | sort -g | awk -v f="$fmt" '{ a[NR] = $1 }
		END { m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2; printf f "\n", m }'
}
load "$P_T" 2 # warm-up; starts the tenant "bench"
load "$P_A" 2
RELOAD_TOK=$(($(tokreqs) - tok0))
tok0=$(tokreqs) j0=$(upstat jwt_ok) rej0=$(upstat rejected)
ERRS=0
RATIOS=() CPUR=() TRPS=() ARPS=() TCPU=() ACPU=()
run_t() {
	load "$P_T" "$DURATION"
	t_rps=$L_RPS t_cpu=$L_CPU t_p99=$L_P99 t_err=$L_ERR
}
run_a() {
	load "$P_A" "$DURATION"
	a_rps=$L_RPS a_cpu=$L_CPU a_p99=$L_P99 a_err=$L_ERR
}
echo "## (d) A warm tenant (T) against a single-credential block (A), in the same Caddy"
echo
echo "wrk -t1 -c$CONNECTIONS -d${DURATION}s GET $URL_PATH with X-Desko-Tenant: bench (both), alternately; load average before: $(cut -d' ' -f1-3 /proc/loadavg)."
echo "Token requests from the reload that added A to the two warm-ups: $RELOAD_TOK (A's warm-up and T's tenant bench)."
echo
echo "| round (first) | T req/s | A req/s | T/A | T CPU µs/req | A CPU µs/req | T/A CPU | T p99 ms | A p99 ms |"
echo "|---|---|---|---|---|---|---|---|---|"
for round in $(seq 1 "$ROUNDS"); do
	# Alternate which goes first, so that a drift in the machine's load
	# favours neither.
	if [ $((round % 2)) -eq 1 ]; then
		run_t
		run_a
		first=T
	else
		run_a
		run_t
		first=A
	fi
	ERRS=$((ERRS + t_err + a_err))
	ratio=$(awk -v t="$t_rps" -v a="$a_rps" 'BEGIN { printf "%.3f", t / a }')
	cpur=$(awk -v t="$t_cpu" -v a="$a_cpu" 'BEGIN { printf "%.3f", t / a }')
	RATIOS+=("$ratio") CPUR+=("$cpur") TRPS+=("$t_rps") ARPS+=("$a_rps") TCPU+=("$t_cpu") ACPU+=("$a_cpu")
	echo "| $round ($first) | $t_rps | $a_rps | $ratio | $t_cpu | $a_cpu | $cpur | $t_p99 | $a_p99 |"
done
M_RATIO=$(median %.3f "${RATIOS[@]}")
M_CPU=$(median %.3f "${CPUR[@]}")
echo "| **median** | $(median %.0f "${TRPS[@]}") | $(median %.0f "${ARPS[@]}") | **$M_RATIO** | $(median %.2f "${TCPU[@]}") | $(median %.2f "${ACPU[@]}") | **$M_CPU** | | |"
echo
LOAD_TOK=$(($(tokreqs) - tok0))
LOAD_JWT=$(($(upstat jwt_ok) - j0))
LOAD_REJ=$(($(upstat rejected) - rej0))
R_MIN=$(printf '%s\n' "${RATIOS[@]}" | sort -g | head -1)
R_MAX=$(printf '%s\n' "${RATIOS[@]}" | sort -g | tail -1)
echo "Per-round T/A from $R_MIN to $R_MAX. Errors: $ERRS; token requests during the rounds: $LOAD_TOK; requests the upstream accepted with a stand-in token: $LOAD_JWT, rejected: $LOAD_REJ."
echo

# --- summary -------------------------------------------------------------------
verdict() { if awk "BEGIN { exit !($1) }"; then echo met; else echo MISSED; fi; }
DR1=$(awk -v a="$R0" -v b="$R1" 'BEGIN { printf "%.1f", (b - a) / 1024 }')
DR2=$(awk -v a="$R0" -v b="$R2" 'BEGIN { printf "%.1f", (b - a) / 1024 }')
DH2=$(awk -v a="$H0" -v b="$H2" 'BEGIN { printf "%.1f", (b - a) / 1048576 }')
DG1=$((G1 - G0)) DG2=$((G2 - G0))
echo "## Summary"
echo
echo "Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
echo
echo "| measure | target | measured | |"
echo "|---|---|---|---|"
echo "| start, exec → the site answers ($TENANTS tenants) | ≤ 2 s | $(awk -v t="$START_MS" 'BEGIN { printf "%.2f s", t / 1000 }') | $(verdict "$START_MS <= 2000") |"
echo "| token requests at load (1 s after) | 0 | $TOK_AT_LOAD | $(verdict "$TOK_AT_LOAD == 0") |"
echo "| $USED tenants used once: answers 200, own token, token requests | $USED each | $USED_OK, $USED_OWN, $USED_TOK | $(verdict "$USED_TOK == $USED && $USED_OWN == $USED && $USED_OK == $USED") |"
if [ "$LIVE_B2" = "$USED" ]; then
	echo "| RSS growth after $USED tenants | ≤ 25 MiB | $DR1 MiB | $(verdict "$DR1 <= 25") |"
else
	echo "| RSS growth after $USED tenants | ≤ 25 MiB | $DR1 MiB, but read with $LIVE_B2 tenants live: raise TENANT_IDLE | not measured |"
fi
echo "| goroutine growth after $USED tenants | ≤ 100 | $DG1 | $(verdict "$DG1 <= 100") |"
echo "| live tenants after tenant_idle | 0 | $LIVE_C | $(verdict "$LIVE_C == 0") |"
echo "| RSS after tenant_idle, against before | near (≤ +5 MiB) | $(printf '%+.1f' "$DR2") MiB | $(verdict "$DR2 <= 5") |"
echo "| heap in use after tenant_idle, against before | near (≤ +2 MiB) | $(printf '%+.1f' "$DH2") MiB | $(verdict "$DH2 <= 2") |"
echo "| goroutines after tenant_idle, against before | near (≤ +5) | $(printf '%+d' "$DG2") | $(verdict "$DG2 <= 5") |"
echo "| warm tenant throughput T/A, median of $ROUNDS rounds | ≥ 0.98 | $M_RATIO (rounds $R_MIN–$R_MAX) | $(verdict "$M_RATIO >= 0.98") |"
echo "| warm tenant CPU per request T/A, median | (reported) | $M_CPU | |"
echo "| errors; token requests and upstream 401s during the rounds | 0; 0; 0 | $ERRS; $LOAD_TOK; $LOAD_REJ | $(verdict "$ERRS == 0 && $LOAD_TOK == 0 && $LOAD_REJ == 0") |"

#!/usr/bin/env bash
# Issue 16, point 1: one client's 401s must not cost the other clients, the
# token endpoint, or a genuine revocation. On loopback only.
#
#   bench/attack.sh                              # this checkout
#   BEFORE=bc62fc0 bench/attack.sh               # and an older commit, side by side
#   MODE=paired BEFORE=bc62fc0 bench/attack.sh   # attacked and clean at the same time
#
# 1. builds Caddy with the module from this checkout (go build
#    ./internal/caddycmd, into bench/bin/caddy-attack) and, with BEFORE, from
#    that commit's files (git archive into the work directory, removed as
#    soon as the build is done: no worktree, the repository is not
#    touched; bench/bin/caddy-before); builds the Desko stand-in from this
#    checkout;
# 2. for each run, starts a fresh stand-in (1 h tokens; its API is the
#    upstream: GOOD_PATH answers 200 to a token it issued, DENIED_PATH
#    answers 401 whatever the token, a resource-level refusal, saying
#    WWW-Authenticate: Bearer error="invalid_token" by default: an upstream
#    that lies, the worst case; DENIED_CHALLENGE changes it) and a fresh
#    Caddy (desko_auth + reverse_proxy to the stand-in), so that nothing
#    learnt carries over; warms it up with the token endpoint fast, then
#    makes the token endpoint take TOKEN_DELAY and loads it for D seconds.
#    Good clients: wrk -tTHREADS -cCONNECTIONS --latency GET GOOD_PATH. The
#    attacker: ATTACKS GETs to DENIED_PATH spread evenly over the run (one
#    every D/ATTACKS s, the first after half that), each sent without
#    waiting for the previous one's answer. A genuine revocation: every
#    token revoked at REVOKE_AT s (the stand-in's control path), after an
#    attack already under way (REVOKE_LEAD attacker requests, each followed
#    by a good one, during the warm-up: with the token endpoint fast, the
#    state a long attack leaves behind).
#
#    MODE=sequential (the default): one site, variants run one after the
#    other, their order reversed every other round (and the binaries'):
#      base           good clients only
#      attack         good clients and the attacker
#      attack+revoke  attack, plus the revocation
#      revoke         base, plus the revocation (not in the default VARIANTS)
#    Ratios are against the same round's base run.
#
#    MODE=paired: one Caddy with two sites (two credential sets: scopes
#    bench.0 and bench.1), each with its own good clients (wrk, CONNECTIONS
#    and THREADS each), loaded at the same time; the attacker goes to one
#    site (site 0 in odd rounds, site 1 in even ones) and the other is the
#    baseline, under the very same machine load. Variants attack and
#    attack+revoke (the revocation hits both sites). On a busy machine this
#    is the steadier comparison; its one bias: while the attacked site's
#    clients wait (before the fix), the clean site gets their CPU, which
#    makes the attacked/clean ratio lower than a sequential run's.
#
# 3. prints a Markdown row per site and run, and per binary the medians
#    over the rounds: good requests' throughput and p99 against the
#    baseline, the good requests that waited (slower than half
#    TOKEN_DELAY), the token requests the attacker caused (the attacked
#    run's or site's minus the baseline's), those from its 3rd request on
#    (once the pattern is known) as a rate per 5 min, the good requests
#    answered non-2xx (or lost) with a revocation, and Caddy's CPU time per
#    request; with the CPU the rest of the machine used meanwhile ("others",
#    % of all CPUs) to tell a slower run from a busier machine.
#
# Environment (defaults in brackets):
#   MODE [sequential]      sequential | paired
#   D [40]                 seconds of load per run (8..600)
#   RUNS [3]               rounds; the figures are medians over them
#   VARIANTS               sequential: ["base attack attack+revoke"] (base is
#                          needed); paired: ["attack attack+revoke"]
#   TOKEN_DELAY [5s]       how long the token endpoint takes during the load
#   ATTACKS [10]           attacker requests per run
#   DENIED_PATH [/denied/x]  the attacker's path
#   ATTACK_PATHS [one]     one | many (request i goes to DENIED_PATH-i: a new
#                          route each time)
#   DENIED_CHALLENGE [invalid_token]  WWW-Authenticate of DENIED_PATH's 401s:
#                          invalid_token, none, or another Bearer error name
#   REVOKE_AT [D/2]        seconds into the run of the revocation
#   REVOKE_LEAD [8]        attacker requests before the run, revoke variants
#   CONNECTIONS [32]       wrk connections (per site in paired mode: [16])
#   THREADS [2]            wrk threads (per site in paired mode: [1])
#   GOOD_PATH [/v1.1/organizations]
#   WARMUP [1]             seconds of wrk on each fresh Caddy before its run
#   BEFORE                 a commit to build and measure too (e.g. bc62fc0)
#   CADDY                  use this Caddy binary (built with the module) as
#                          "after" instead of building one
#   BASE_PORT [18180]      ports BASE_PORT+1 .. BASE_PORT+3 on 127.0.0.1
#   KEEP [0]               1 keeps the work directory (Caddy logs, wrk output,
#                          the attacker's log)
#
# Durations with the defaults: sequential 3 rounds × 3 variants × (D + about
# 3 s) ≈ 6.5 min; paired 3 × 2 × (D + 3 s) ≈ 4.3 min; twice that with
# BEFORE; plus the builds. Everything started here is stopped on exit.
# Needs wrk (installed with apt-get if missing) and curl.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=$ROOT/bench/bin
MODE=${MODE:-sequential}
D=${D:-40}
RUNS=${RUNS:-3}
TOKEN_DELAY=${TOKEN_DELAY:-5s}
ATTACKS=${ATTACKS:-10}
DENIED_PATH=${DENIED_PATH:-/denied/x}
ATTACK_PATHS=${ATTACK_PATHS:-one}
DENIED_CHALLENGE=${DENIED_CHALLENGE:-invalid_token}
REVOKE_LEAD=${REVOKE_LEAD:-8}
GOOD_PATH=${GOOD_PATH:-/v1.1/organizations}
WARMUP=${WARMUP:-1}
BEFORE=${BEFORE:-}
BASE_PORT=${BASE_PORT:-18180}
KEEP=${KEEP:-0}
CADDY_PREBUILT=${CADDY:-}
HOST=127.0.0.1
CLIENT_ID=bench-client
# A throwaway secret, new for each run; the end of the run checks that no
# log holds it.
CLIENT_SECRET=$(od -An -N18 -tx1 /dev/urandom | tr -d ' \n')

die() {
	echo "attack.sh: $*" >&2
	exit 1
}
isint() { [[ $1 =~ ^[0-9]+$ ]]; }
case $MODE in
sequential)
	VARIANTS=${VARIANTS:-base attack attack+revoke}
	CONNECTIONS=${CONNECTIONS:-32} THREADS=${THREADS:-2} SITES=1
	;;
paired)
	VARIANTS=${VARIANTS:-attack attack+revoke}
	CONNECTIONS=${CONNECTIONS:-16} THREADS=${THREADS:-1} SITES=2
	;;
*) die "MODE must be sequential or paired" ;;
esac
isint "$D" && [ "$D" -ge 8 ] && [ "$D" -le 600 ] || die "D must be 8..600 (seconds)"
REVOKE_AT=${REVOKE_AT:-$((D / 2))}
isint "$RUNS" && [ "$RUNS" -ge 1 ] && [ "$RUNS" -le 20 ] || die "RUNS must be 1..20"
isint "$ATTACKS" && [ "$ATTACKS" -le 1000 ] || die "ATTACKS must be 0..1000"
isint "$REVOKE_AT" && [ "$REVOKE_AT" -ge 1 ] && [ "$REVOKE_AT" -lt "$D" ] || die "REVOKE_AT must be 1..D-1 (seconds)"
isint "$REVOKE_LEAD" && [ "$REVOKE_LEAD" -le 100 ] || die "REVOKE_LEAD must be 0..100"
isint "$CONNECTIONS" && [ "$CONNECTIONS" -ge 1 ] && [ "$CONNECTIONS" -le 256 ] || die "CONNECTIONS must be 1..256"
isint "$THREADS" && [ "$THREADS" -ge 1 ] && [ "$THREADS" -le "$CONNECTIONS" ] || die "THREADS must be 1..CONNECTIONS"
isint "$WARMUP" || die "WARMUP must be an integer"
isint "$BASE_PORT" && [ "$BASE_PORT" -ge 1024 ] && [ "$BASE_PORT" -le 65500 ] || die "BASE_PORT must be 1024..65500"
[ "$ATTACK_PATHS" = one ] || [ "$ATTACK_PATHS" = many ] || die "ATTACK_PATHS must be one or many"
[[ $DENIED_PATH == /* ]] || die "DENIED_PATH must start with /"
[[ $GOOD_PATH == /* ]] || die "GOOD_PATH must start with /"
[[ $TOKEN_DELAY =~ ^[0-9]+(\.[0-9]+)?(ms|s)$ ]] || die "TOKEN_DELAY must be like 5s, 1.5s or 300ms"
for v in $VARIANTS; do
	case $MODE/$v in sequential/base | */attack | */attack+revoke | sequential/revoke) ;; *) die "variant $v is not one of $MODE mode's" ;; esac
done
[ "$MODE" = paired ] || [[ " $VARIANTS " == *" base "* ]] || die "VARIANTS must include base (the ratios are against it)"
case $DENIED_CHALLENGE in
invalid_token) CHALLENGE='Bearer error="invalid_token"' ;;
none) CHALLENGE= ;;
*)
	[[ $DENIED_CHALLENGE =~ ^[a-z_]+$ ]] || die "DENIED_CHALLENGE must be a Bearer error name or none"
	CHALLENGE="Bearer error=\"$DENIED_CHALLENGE\""
	;;
esac
# TOKEN_DELAY in µs; a good request slower than half of it waited for a
# token request.
DELAY_US=$(awk -v d="$TOKEN_DELAY" 'BEGIN { if (d ~ /ms$/) { sub(/ms$/, "", d); print int(d * 1000) } else { sub(/s$/, "", d); print int(d * 1e6) } }')
SLOW_US=$((DELAY_US / 2))

P_DESKO=$((BASE_PORT + 1))
DESKO=http://$HOST:$P_DESKO
proxy() { echo "http://$HOST:$((BASE_PORT + 2 + $1))"; } # site index

source "$ROOT/bench/lib.sh"
bench_init attack
CADDY_RUN_PID= DESKO_PID=
bench_extra_pids() { echo "$CADDY_RUN_PID $DESKO_PID"; }


# --- tools and builds ------------------------------------------------------
bench_tools
mkdir -p "$BIN"
go build -o "$BIN/desko-standin" ./internal/deskotest/cmd/desko-standin
declare -A CADDY_OF
if [ -n "$CADDY_PREBUILT" ]; then
	[ -x "$CADDY_PREBUILT" ] || die "CADDY=$CADDY_PREBUILT is not an executable"
	CADDY_OF[after]=$CADDY_PREBUILT
else
	echo "building Caddy from this checkout ($(git describe --always --dirty))" >&2
	go build -o "$BIN/caddy-attack" ./internal/caddycmd
	CADDY_OF[after]=$BIN/caddy-attack
fi
BINARIES=(after)
if [ -n "$BEFORE" ]; then
	REV=$(git rev-parse --verify --quiet "$BEFORE^{commit}") || die "BEFORE=$BEFORE is not a commit"
	TREE=$WORK/before-tree
	echo "building Caddy from $BEFORE (${REV:0:12}) from its files (git archive)" >&2
	mkdir -p "$TREE"
	git -C "$ROOT" archive "$REV" | tar -x -C "$TREE"
	[ -d "$TREE/internal/caddycmd" ] || die "$BEFORE has no internal/caddycmd"
	(cd "$TREE" && go build -o "$BIN/caddy-before" ./internal/caddycmd)
	rm -rf "$TREE"
	CADDY_OF[before]=$BIN/caddy-before
	BINARIES=(before after)
fi

# --- processes -------------------------------------------------------------
# The stand-in, fresh for each run (its counters and lists start empty).
start_desko() {
	port_in_use "$P_DESKO" && die "port $P_DESKO is in use (set BASE_PORT)"
	"$BIN/desko-standin" -addr "$HOST:$P_DESKO" -client-id "$CLIENT_ID" -client-secret "$CLIENT_SECRET" \
		-ttl 1h -denied-challenge "$CHALLENGE" >>"$WORK/desko.log" 2>&1 &
	DESKO_PID=$!
	wait_http "$DESKO/_standin/stats"
}
stop_pid() { # pid: stops a process this script started, and waits for it
	kill "$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || true
}

# tokreqs [site]: token requests so far, in all or those of a site's
# credential set (its scope).
tokreqs() {
	local key='"token_requests"'
	[ $# -gt 0 ] && key="\"bench.$1\""
	curl -fsS --max-time 5 "$DESKO/_standin/stats" | grep -o "$key:[0-9]*" | cut -d: -f2 | grep . || echo 0
}
token_delay() { curl -fsS --max-time 5 -X POST "$DESKO/_standin/token-delay?d=$1" >/dev/null; }
revoke_all() { curl -fsS --max-time 5 -X POST "$DESKO/_standin/revoke" >/dev/null; }

# start_caddy binary log: a fresh Caddy with SITES sites in front of the
# stand-in, each with its own credential set (scope bench.<site>), its
# first token fetched (the token endpoint is fast then) and a good request
# answered on every site.
start_caddy() {
	{
		cat <<EOF
{
	admin off
	persist_config off
	auto_https off
	default_bind $HOST
	log {
		output file $2
		level INFO
	}
}
EOF
		for ((i = 0; i < SITES; i++)); do
			cat <<EOF

$(proxy "$i") {
	desko_auth {
		client_id {env.BENCH_CLIENT_ID}
		client_secret {env.BENCH_CLIENT_SECRET}
		scope bench.$i
		token_url $DESKO/v1.1/oauth/token
	}
	reverse_proxy $HOST:$P_DESKO
}
EOF
		done
	} >"$WORK/Caddyfile"
	for ((i = 0; i < SITES; i++)); do
		port_in_use "$((BASE_PORT + 2 + i))" && die "port $((BASE_PORT + 2 + i)) is in use (set BASE_PORT)"
	done
	token_delay 0s
	BENCH_CLIENT_ID=$CLIENT_ID BENCH_CLIENT_SECRET=$CLIENT_SECRET \
		"$1" run --config "$WORK/Caddyfile" --adapter caddyfile >>"$WORK/caddy-stderr.log" 2>&1 &
	CADDY_RUN_PID=$!
	for ((i = 0; i < SITES; i++)); do
		local ok=
		for _ in $(seq 1 300); do
			if curl -fsS --max-time 2 "$(proxy "$i")$GOOD_PATH" 2>/dev/null | grep -q '"ok":true'; then ok=1 && break; fi
			sleep 0.1
		done
		[ -n "$ok" ] || die "Caddy ($1) did not answer on site $i"
	done
}

# CPU accounting, in clock ticks: a process's utime+stime, and the whole
# machine's busy and total time (/proc/stat).
CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }
machine_ticks() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat; }

# The good clients' figures, from a wrk Lua done hook: requests, latency
# percentiles, errors, and how many requests took longer than SLOW_US (a
# bisection over the percentiles: wrk gives no count above a value).
cat >"$WORK/report.lua" <<EOF
done = function(summary, latency, requests)
	local e = summary.errors
	local n = summary.requests
	local slow = 0
	if n > 0 and latency.max > $SLOW_US then
		local lo, hi = 0, 100 -- percentile(lo) <= SLOW_US < percentile(hi)
		for _ = 1, 60 do
			local mid = (lo + hi) / 2
			if latency:percentile(mid) <= $SLOW_US then lo = mid else hi = mid end
		end
		slow = math.floor(n * (100 - hi) / 100 + 0.5)
	end
	io.write(string.format("RESULT requests=%d duration_us=%d p50_us=%.0f p99_us=%.0f max_us=%.0f non2xx=%d sockerr=%d slow=%d\n",
		n, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
		e.status, e.connect + e.read + e.write + e.timeout, slow))
end
EOF

# good_clients site out: wrk for D seconds on a site, its figures and (on
# the last line) its CPU time in seconds (user system) into out.
good_clients() {
	(
		TIMEFORMAT='CPU %3U %3S'
		time wrk -t"$THREADS" -c"$CONNECTIONS" -d"$D"s --latency --timeout 30s -s "$WORK/report.lua" \
			"$(proxy "$1")$GOOD_PATH" 2>&1
	) >"$2" 2>&1
}

# attacker t0 site out: ATTACKS requests to the denied path of a site,
# request i at t0 + (i + 0.5)·D/ATTACKS, each in the background; out gets
# one line per request when sent ("send i seconds-into-run
# token-requests-so-far") and one when answered ("answer i status
# seconds-it-took").
attacker() {
	local t0=$1 site=$2 out=$3 i at now wait path
	for ((i = 0; i < ATTACKS; i++)); do
		at=$(awk -v i="$i" -v d="$D" -v n="$ATTACKS" 'BEGIN { printf "%.3f", (i + 0.5) * d / n }')
		now=$(date +%s.%N)
		wait=$(awk -v t0="$t0" -v at="$at" -v now="$now" 'BEGIN { w = t0 + at - now; printf "%.3f", (w > 0 ? w : 0) }')
		sleep "$wait"
		path=$DENIED_PATH
		[ "$ATTACK_PATHS" = many ] && path=$DENIED_PATH-$i
		echo "send $i $(awk -v t0="$t0" -v now="$(date +%s.%N)" 'BEGIN { printf "%.3f", now - t0 }') $(tokreqs "$site")" >>"$out"
		(
			r=$(curl -s -o /dev/null -w '%{http_code} %{time_total}' --max-time 60 "$(proxy "$site")$path" || true)
			echo "answer $i $r" >>"$out"
		) &
	done
	wait
}

# lead site: an attack already under way, with the token endpoint fast:
# REVOKE_LEAD attacker requests, each followed by a good request (so that
# every token it meets has worked).
lead() {
	local i path
	for ((i = 0; i < REVOKE_LEAD; i++)); do
		path=$DENIED_PATH
		[ "$ATTACK_PATHS" = many ] && path=$DENIED_PATH-lead-$i
		curl -s -o /dev/null --max-time 60 "$(proxy "$1")$path" || true
		curl -s -o /dev/null --max-time 60 "$(proxy "$1")$GOOD_PATH" || true
	done
}

# run binary variant round attacked: one run with SITES sites; attacked is
# the site the attacker goes to, or "none". Sets, for each site s,
# F[key,s] for key in rps p99 slow err tok tok3rate, and prints a row per
# site.
declare -A F
run() {
	local name=$1 variant=$2 round=$3 attacked=$4 tag="$1-$2-$3"
	local log="$WORK/caddy-$tag.log" att="$WORK/attacker-$tag.txt" s
	start_desko
	start_caddy "${CADDY_OF[$name]}" "$log"
	if [ "$WARMUP" -gt 0 ]; then
		local warm=() # not a bare wait: Caddy and the stand-in are children too
		for ((s = 0; s < SITES; s++)); do
			wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP"s "$(proxy "$s")$GOOD_PATH" >/dev/null &
			warm+=($!)
		done
		wait "${warm[@]}"
	fi
	[[ $variant == *revoke ]] && [ "$attacked" != none ] && lead "$attacked"
	token_delay "$TOKEN_DELAY"

	local la0 la1 c0 c1 d0 d1 m0 m1 t0 apid= rpid= wpids=() tok0=() tok1=()
	: >"$att"
	la0=$(cut -d' ' -f1 /proc/loadavg)
	for ((s = 0; s < SITES; s++)); do tok0+=("$(tokreqs "$s")"); done
	c0=$(cpu_ticks "$CADDY_RUN_PID") d0=$(cpu_ticks "$DESKO_PID") m0=$(machine_ticks)
	t0=$(date +%s.%N)
	for ((s = 0; s < SITES; s++)); do
		good_clients "$s" "$WORK/wrk-$tag-$s.txt" &
		wpids+=($!)
	done
	if [ "$attacked" != none ] && [[ $variant == attack* ]] && [ "$ATTACKS" -gt 0 ]; then
		attacker "$t0" "$attacked" "$att" &
		apid=$!
	fi
	if [[ $variant == *revoke ]]; then
		(sleep "$REVOKE_AT" && revoke_all && echo "revoked $REVOKE_AT" >>"$att") &
		rpid=$!
	fi
	for p in "${wpids[@]}"; do wait "$p" || die "wrk failed"; done
	c1=$(cpu_ticks "$CADDY_RUN_PID") d1=$(cpu_ticks "$DESKO_PID") m1=$(machine_ticks)
	[ -n "$rpid" ] && wait "$rpid"
	[ -n "$apid" ] && wait "$apid"
	for ((s = 0; s < SITES; s++)); do tok1+=("$(tokreqs "$s")"); done
	la1=$(cut -d' ' -f1 /proc/loadavg)
	stop_pid "$CADDY_RUN_PID"
	CADDY_RUN_PID=
	stop_pid "$DESKO_PID"
	DESKO_PID=

	# The machine's CPU not used by this run's Caddy, stand-in and wrk.
	local wrk_ticks=0 total_req=0 line kv
	for ((s = 0; s < SITES; s++)); do
		line=$(grep '^CPU ' "$WORK/wrk-$tag-$s.txt") || die "no wrk CPU time"
		wrk_ticks=$(awk -v l="$line" -v w="$wrk_ticks" -v hz="$CLK_TCK" 'BEGIN { split(l, a, " "); print w + (a[2] + a[3]) * hz }')
		line=$(grep '^RESULT ' "$WORK/wrk-$tag-$s.txt") || die "no wrk result for $tag site $s"
		total_req=$((total_req + $(sed 's/.*requests=\([0-9]*\).*/\1/' <<<"$line")))
	done
	local others cpureq
	others=$(awk -v m0="$m0" -v m1="$m1" -v c="$((c1 - c0))" -v d="$((d1 - d0))" -v w="$wrk_ticks" 'BEGIN {
		split(m0, a, " "); split(m1, b, " "); busy = b[1] - a[1]; total = b[2] - a[2]
		o = (busy - c - d - w) / total * 100; printf "%.0f", (o > 0 ? o : 0) }')
	cpureq=$(awk -v c="$((c1 - c0))" -v n="$total_req" -v hz="$CLK_TCK" 'BEGIN { printf "%.0f", c * 1e6 / hz / n }')

	local routes replaced attans=- tok3=- rate=-
	routes=$(grep -c 'refused fresh tokens too' "$log" || true)
	replaced=$(grep -c 'upstream rejected the current token' "$log" || true)
	if grep -q '^answer ' "$att"; then
		attans=$(awk '$1 == "answer" { c[$3]++ } END { for (k in c) printf "%s%s×%s", (n++ ? " " : ""), c[k], k }' "$att")
	fi
	for ((s = 0; s < SITES; s++)); do
		declare -A W=()
		line=$(grep '^RESULT ' "$WORK/wrk-$tag-$s.txt")
		for kv in ${line#RESULT }; do W[${kv%%=*}]=${kv#*=}; done
		F[rps,$s]=$(awk -v n="${W[requests]}" -v us="${W[duration_us]}" 'BEGIN { printf "%.0f", n / (us / 1e6) }')
		F[p99,$s]=$(awk -v v="${W[p99_us]}" 'BEGIN { printf "%.3f", v / 1000 }')
		F[slow,$s]=${W[slow]}
		F[err,$s]=$((W[non2xx] + W[sockerr]))
		F[tok,$s]=$((tok1[s] - tok0[s]))
		F[tok3rate,$s]=-
		F[cpu,$s]=$cpureq
		local role=clean extra="| | | |"
		tok3=- rate=-
		if [ "$attacked" = "$s" ]; then
			role=attacked
			# Token requests from the attacker's 3rd request on (once the
			# pattern is known), against the time left in the run.
			if grep -q '^send 2 ' "$att"; then
				local s3 t3
				read -r _ _ s3 t3 <<<"$(grep '^send 2 ' "$att")"
				tok3=$((tok1[s] - t3))
				rate=$(awk -v n="$tok3" -v s="$s3" -v d="$D" 'BEGIN { printf "%.1f", n * 300 / (d - s) }')
				F[tok3rate,$s]=$rate
			fi
			extra="| $attans | $replaced | $routes |"
		fi
		[ "$MODE" = sequential ] && role=$variant
		echo "| $round | $name | $variant | $role | ${W[requests]} | ${F[rps,$s]} | $(awk -v v="${W[p50_us]}" 'BEGIN { printf "%.3f", v / 1000 }') | ${F[p99,$s]} | $(awk -v v="${W[max_us]}" 'BEGIN { printf "%.0f", v / 1000 }') | ${F[slow,$s]} | ${F[err,$s]} | ${F[tok,$s]} | $tok3 ($rate) $extra $cpureq | $others | $la0 → $la1 |"
	done
}

median() { # values...
	printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) { print "-"; exit } m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2; print m }'
}
ratio() { awk -v a="$1" -v b="$2" -v f="$3" 'BEGIN { printf f, a / b }'; }

echo "# desko_auth: one client's 401s against everyone else (issue 16, point 1)"
echo
echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "- $(go version); CPU: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) CPUs"
echo "- after: $(git -C "$ROOT" describe --always --dirty)${CADDY_PREBUILT:+ (CADDY=$CADDY_PREBUILT)}${BEFORE:+; before: $BEFORE}"
echo "- MODE=$MODE: $([ "$MODE" = paired ] && echo "two sites in one Caddy loaded at once, the attacker on one of them (alternating)" || echo "one site, variants one after the other (order alternating)")"
echo "- good clients$([ "$MODE" = paired ] && echo ", per site"): wrk -t$THREADS -c$CONNECTIONS -d${D}s GET $GOOD_PATH; token endpoint delay $TOKEN_DELAY during the run; 1 h tokens"
echo "- attacker: $ATTACKS GETs to $DENIED_PATH$([ "$ATTACK_PATHS" = many ] && echo "-i (a new path each)"), one every $(awk -v d="$D" -v n="$ATTACKS" 'BEGIN { printf "%.1f", (n ? d / n : 0) }') s; its 401s say: ${CHALLENGE:-nothing (no WWW-Authenticate)}; revoke variants: $REVOKE_LEAD attacker requests before the run, revocation at ${REVOKE_AT} s"
echo "- variants: $VARIANTS; RUNS=$RUNS"
echo
echo "Columns: good requests (wrk), their req/s, p50, p99 and max (ms); slow = good requests slower than half the token endpoint's delay (they waited for a token request); errors = good requests answered non-2xx or lost; token requests during the run$([ "$MODE" = paired ] && echo " for the site's credential set"); from the attacker's 3rd request on (as a rate per 5 min); the attacker's answers (count×status); in Caddy's log: replacements after a 401, routes marked as refusing fresh tokens; Caddy's CPU µs per request; others = CPU the rest of the machine used during the run, % of all CPUs; load average (1 min) before → after."
echo
echo "| round | binary | variant | site | good requests | req/s | p50 ms | p99 ms | max ms | slow | errors | token requests | from the attacker's 3rd on (per 5 min) | attacker's answers | 401 replacements | routes marked | Caddy µs/req | others % | load |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"

declare -A R # R[key,binary,variant,round] for the summary
for round in $(seq 1 "$RUNS"); do
	names=("${BINARIES[@]}")
	variants=($VARIANTS)
	if [ $((round % 2)) -eq 0 ]; then
		names=($(printf '%s\n' "${names[@]}" | tac))
		variants=($(printf '%s\n' "${variants[@]}" | tac))
	fi
	for name in "${names[@]}"; do
		for v in "${variants[@]}"; do
			if [ "$MODE" = sequential ]; then
				att=none
				[[ $v == attack* ]] && att=0
				run "$name" "$v" "$round" "$att"
				for k in rps p99 slow err tok tok3rate cpu; do R[$k,$name,$v,$round]=${F[$k,0]}; done
			else
				att=$(((round + 1) % 2)) # site 0 in odd rounds
				run "$name" "$v" "$round" "$att"
				for k in rps p99 slow err tok tok3rate cpu; do
					R[$k,$name,$v,$round]=${F[$k,$att]}
					R[$k,$name,$v-clean,$round]=${F[$k,$((1 - att))]}
				done
			fi
		done
	done
done
echo

# The baseline of a variant: the same round's base run (sequential), or
# the clean site of the same run (paired).
baseline() { [ "$MODE" = paired ] && echo "$1-clean" || echo base; }
echo "## Medians over $RUNS rounds (against $([ "$MODE" = paired ] && echo "the clean site of the same run" || echo "the same round's base run"))"
echo
echo "| binary | variant | throughput / baseline | p99 / baseline | slow good requests (baseline) | token requests − baseline | from the attacker's 3rd request on, per 5 min | good requests with errors, all rounds (baseline) | Caddy CPU per request / baseline |"
echo "|---|---|---|---|---|---|---|---|---|"
declare -A SUM
for name in "${BINARIES[@]}"; do
	for v in $VARIANTS; do
		[ "$v" = base ] && continue
		b=$(baseline "$v")
		thr=() p99=() tok=() rate=() slow=() bslow=() errs=() berrs=() cpu=()
		for round in $(seq 1 "$RUNS"); do
			thr+=("$(ratio "${R[rps,$name,$v,$round]}" "${R[rps,$name,$b,$round]}" %.3f)")
			p99+=("$(ratio "${R[p99,$name,$v,$round]}" "${R[p99,$name,$b,$round]}" %.2f)")
			cpu+=("$(ratio "${R[cpu,$name,$v,$round]}" "${R[cpu,$name,$b,$round]}" %.2f)")
			tok+=("$((R[tok,$name,$v,$round] - R[tok,$name,$b,$round]))")
			[ "${R[tok3rate,$name,$v,$round]}" != - ] && rate+=("${R[tok3rate,$name,$v,$round]}")
			slow+=("${R[slow,$name,$v,$round]}") bslow+=("${R[slow,$name,$b,$round]}")
			errs+=("${R[err,$name,$v,$round]}") berrs+=("${R[err,$name,$b,$round]}")
		done
		SUM[thr,$name,$v]=$(median "${thr[@]}") SUM[p99,$name,$v]=$(median "${p99[@]}") SUM[rate,$name,$v]=$(median "${rate[@]}")
		SUM[err,$name,$v]=$(IFS=+ && echo $((${errs[*]})))
		cpucol="$(median "${cpu[@]}") (${cpu[*]})"
		[ "$MODE" = paired ] && cpucol="(one Caddy for both)"
		echo "| $name | $v | ${SUM[thr,$name,$v]} (${thr[*]}) | ${SUM[p99,$name,$v]} (${p99[*]}) | $(median "${slow[@]}") (${slow[*]}; baseline ${bslow[*]}) | $(median "${tok[@]}") (${tok[*]}) | ${SUM[rate,$name,$v]} (${rate[*]:-}) | ${SUM[err,$name,$v]} (${errs[*]}; baseline ${berrs[*]}) | $cpucol |"
	done
done
echo
echo "Targets (issue 16.1), for the attack variant: throughput / baseline ≥ 0.95, p99 / baseline ≤ 1.5, ≤ 1 token request per 5 min once the pattern is known; with a revocation during the attack: 0 good requests with errors."
for name in "${BINARIES[@]}"; do
	line="- $name:"
	if [[ " $VARIANTS " == *" attack "* ]]; then
		line+=$(awk -v t="${SUM[thr,$name,attack]}" -v p="${SUM[p99,$name,attack]}" -v r="${SUM[rate,$name,attack]}" 'BEGIN {
			printf " throughput %s %s; p99 %s %s; attacker token requests once known %s/5 min %s", t, (t >= 0.95 ? "met" : "MISSED"), p, (p <= 1.5 ? "met" : "MISSED"), r, (r != "-" && r <= 1 ? "met" : "MISSED") }')
	fi
	if [[ " $VARIANTS " == *" attack+revoke "* ]]; then
		e=${SUM[err,$name,attack+revoke]}
		line+="; errors with a revocation during the attack: $e $([ "$e" -eq 0 ] && echo met || echo MISSED)"
	fi
	echo "$line"
done
echo
echo "Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
# No log of the run (Caddy's, the stand-in's) may hold the client secret,
# or a token (the stand-in's tokens are JWTs).
leaky=$(grep -rlF --include='*.log' -e "$CLIENT_SECRET" "$WORK" || true)
[ -z "$leaky" ] || die "a log holds the client secret: $leaky"
leaky=$(grep -rlE --include='*.log' -e 'eyJ[A-Za-z0-9_-]{20,}\.' "$WORK" || true)
[ -z "$leaky" ] || die "a log holds a token (a JWT): $leaky"
ls "$WORK"/*.log >/dev/null 2>&1 || die "no log to check for the secret"
echo "No log holds the client secret or a token."

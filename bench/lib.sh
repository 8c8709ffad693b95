# Shared by the bench scripts (sourced, not run): a work directory and the processes started, both
# removed on exit; the builds; a wait for an HTTP endpoint. Needs ROOT, BIN,
# CADDY (for bench_build) and a die function.

# bench_init NAME: makes $WORK and, on exit, stops everything in PIDS (and
# what a function bench_extra_pids prints, if the script has one: processes
# it restarts), shows the tail of every log in $WORK if the script failed,
# and removes $WORK unless KEEP=1.
bench_init() {
	BENCH_NAME=$1
	WORK=$(mktemp -d "/tmp/desko-$1.XXXXXX")
	PIDS=()
	trap bench_cleanup EXIT
	trap 'exit 130' INT TERM
}

bench_cleanup() {
	local rc=$? extra=
	if declare -F bench_extra_pids >/dev/null; then extra=$(bench_extra_pids); fi
	# shellcheck disable=SC2086 # extra is a list
	for p in $extra "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	# shellcheck disable=SC2086
	for p in $extra "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
	if [ "$rc" -ne 0 ]; then
		echo "$BENCH_NAME.sh: failed (exit $rc); logs:" >&2
		for f in "$WORK"/*.log; do
			[ -s "$f" ] || continue
			echo "--- $f" >&2
			tail -n 20 "$f" >&2
		done
	fi
	if [ "${KEEP:-0}" = 1 ]; then
		echo "work directory kept: $WORK" >&2
	else
		rm -rf "$WORK"
	fi
}

# bench_build: the upstream, the Desko stand-in, and Caddy if $CADDY is not
# there yet.
bench_build() {
	mkdir -p "$BIN"
	go build -o "$BIN/upstream" "$ROOT/bench/upstream"
	go build -o "$BIN/desko-standin" "$ROOT/internal/deskotest/cmd/desko-standin"
	if [ ! -x "$CADDY" ]; then
		CADDY_BIN=$CADDY "$ROOT/xcaddy.sh" build >"$WORK/build.log" 2>&1 || {
			cat "$WORK/build.log" >&2
			die "building Caddy failed"
		}
	fi
}

# wait_http URL: until it answers 2xx (10 s at most).
wait_http() {
	for _ in $(seq 1 100); do
		curl -fsS --max-time 2 "$1" >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	die "$1 did not answer"
}

# bench_standin PORT: the Desko stand-in (client bench-client, 1 h tokens).
bench_standin() {
	"$BIN/desko-standin" -addr "127.0.0.1:$1" -client-id bench-client -client-secret bench-secret -ttl 1h >"$WORK/desko.log" 2>&1 &
	PIDS+=($!)
	wait_http "http://127.0.0.1:$1/_standin/stats"
}

# bench_upstream PORT [ARGS...]: the bench upstream.
bench_upstream() {
	local port=$1
	shift
	"$BIN/upstream" -addr "127.0.0.1:$port" -client-id bench-client -static-token unused "$@" >"$WORK/upstream.log" 2>&1 &
	PIDS+=($!)
	wait_http "http://127.0.0.1:$port/_upstream/stats"
}

# port_in_use PORT: something listens on $HOST:PORT (127.0.0.1 by default).
port_in_use() { (exec 3<>"/dev/tcp/${HOST:-127.0.0.1}/$1") 2>/dev/null; }

# bench_tools: wrk (installed from Debian if missing) and curl.
bench_tools() {
	if ! command -v wrk >/dev/null 2>&1; then
		echo "installing wrk" >&2
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
	fi
	command -v curl >/dev/null 2>&1 || die "curl is needed"
}

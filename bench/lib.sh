# Shared by bench/profile.sh, bench/uploads.sh and bench/attack.sh
# (sourced, not run): a work directory and the processes started, both
# removed on exit; the builds; a wait for an HTTP endpoint. Needs ROOT, BIN,
# CADDY (for bench_build) and a die function.

# bench_init NAME: makes $WORK and stops everything in PIDS on exit.
bench_init() {
	WORK=$(mktemp -d "/tmp/desko-$1.XXXXXX")
	PIDS=()
	trap bench_cleanup EXIT
}

bench_cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
	rm -rf "$WORK"
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

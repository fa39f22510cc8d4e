#!/usr/bin/env bash
# loadtest.sh: does a veil agent give back what load took from it?
#
#   scripts/loadtest.sh [--quick] [--conns N] [--hold S] [--churn S] [--rate R]
#                       [--cooldown S] [--out DIR]
#
# Brings up its own two-node cluster (a unique PREFIX, vload-<random>, pods lclient on
# node1 and lserver on node2), then, while a sampler reads each agent's open files
# (/proc/<pid>/fd), VmRSS and threads, and go_goroutines, process_open_fds and the live
# connection count from its /metrics every --every seconds:
#   baseline   the idle agents
#   open/hold  lclient opens --conns connections through the mesh to an echo server in
#              lserver (each proven by an echo), holds them idle for --hold seconds, checks
#              every one still echoes, and closes them
#   settle     idle again
#   churn      new connections at --rate per second (1 KB each way, then closed), at most
#              32 in flight, for --churn seconds
#   cooldown   idle again: pooled HBONE connections close after 60 s idle (the server's
#              side after 2 min), and an idle agent collects garbage every 2 min, so
#              memory needs about 4 minutes
# and reports whether descriptors, goroutines and memory returned to the baseline.
#
# Writes results.md (the table), results.json, samples-node{1,2}.jsonl, phases.jsonl,
# hold.jsonl, churn.json, meta.json and logs/ into --out (default
# results/loadtest-<date>-<commit>/). Exits 3 when descriptors or goroutines did not
# return (memory is reported, and judged, but is not a failure: see scripts/loadtest). Removes its cluster and every process it started
# on exit, Ctrl-C included; a cluster left by a killed run is removed by the next one.
#
# Options (defaults; --quick in brackets):
#   --conns N      connections held: 10000 [2000]
#   --hold S       seconds they are held: 60 [15]
#   --churn S      seconds of connection churn: 600 [60]
#   --rate R       new connections per second while churning: 100 [100]
#   --cooldown S   seconds watched after the load: 270 [75]
#   --every S      seconds between samples: 2 [2]
#   --out DIR      results directory
# Environment: BIN (veil binaries to use; default: build ./cmd/... into bin/), GO (go).
set -Eeuo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PREFIX=vload-$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
export PREFIX
export STATE=/run/veil/$PREFIX
CLUSTER=$REPO/scripts/cluster.sh
GO=${GO:-go}
export PATH=/usr/local/go/bin:$PATH

PORT=7000
CONNS=10000
HOLD=60
CHURN=600
RATE=100
COOLDOWN=270
EVERY=2
BASELINE=20
SETTLE=20
OUT=
QUICK=0

TOOL=loadtest
# shellcheck source=scripts/harness.sh
. "$REPO/scripts/harness.sh"

parse_flags() {
	local given=()
	while (($#)); do
		case $1 in
		--quick) QUICK=1 ;;
		--conns) CONNS=${2:?--conns needs a value}; given+=(conns); shift ;;
		--hold) HOLD=${2:?--hold needs a value}; given+=(hold); shift ;;
		--churn) CHURN=${2:?--churn needs a value}; given+=(churn); shift ;;
		--rate) RATE=${2:?--rate needs a value}; shift ;;
		--cooldown) COOLDOWN=${2:?--cooldown needs a value}; given+=(cooldown); shift ;;
		--every) EVERY=${2:?--every needs a value}; shift ;;
		--out) OUT=${2:?--out needs a value}; shift ;;
		-h | --help) usage ;;
		*) die "unknown flag '$1' (see --help)" ;;
		esac
		shift
	done
	if ((QUICK)); then
		# Flags given with --quick win over its defaults.
		[[ " ${given[*]} " == *" conns "* ]] || CONNS=2000
		[[ " ${given[*]} " == *" hold "* ]] || HOLD=15
		[[ " ${given[*]} " == *" churn "* ]] || CHURN=60
		[[ " ${given[*]} " == *" cooldown "* ]] || COOLDOWN=75
		BASELINE=10 SETTLE=10
	fi
	# Bounded: the agents' open-file limit (20,000 without CAP_SYS_RESOURCE on the build
	# machines) must hold every connection plus the pooled ones.
	[[ $CONNS =~ ^[0-9]+$ && $CONNS -ge 1 && $CONNS -le 15000 ]] || die "--conns must be 1 to 15000"
	[[ $RATE =~ ^[0-9]+$ && $RATE -ge 1 && $RATE -le 2000 ]] || die "--rate must be 1 to 2000"
	local v
	for v in HOLD CHURN COOLDOWN EVERY; do
		[[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "--${v,,} must be a positive number of seconds"
	done
	# Pooled HBONE connections close after a minute idle; before that they are still
	# held, and no descriptor count could be back at its baseline.
	((COOLDOWN >= 70)) || warn "--cooldown $COOLDOWN is shorter than the pool's 60 s idle timeout; expect descriptors above baseline"
}

# --- cleanup --------------------------------------------------------------------------

CLUSTER_TRIED=0

# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
	local rc=$?
	trap - EXIT INT TERM ERR
	set +e
	[[ -z ${SLEEP_PID:-} ]] || kill "$SLEEP_PID" 2>/dev/null
	stop_bg
	if ((CLUSTER_TRIED)); then
		cluster_down
	fi
	[[ -z ${WORK:-} ]] || rm -rf -- "$WORK"
	((rc == 0)) || [[ -z ${OUT:-} ]] || log "results and logs of this run are in $OUT"
	exit "$rc"
}

# forget_bg drops a process that has been waited for: its pid may belong to another
# process by the time cleanup runs.
forget_bg() {
	local keep=() p
	for p in "${BG_PIDS[@]}"; do
		[[ $p == "$1" ]] || keep+=("$p")
	done
	BG_PIDS=("${keep[@]}")
}


# remove_leftovers takes down clusters of earlier runs whose loadtest.sh is gone (killed
# before its trap could run). A cluster whose run is still alive is someone else's.
remove_leftovers() {
	local dir pid
	for dir in /run/veil/vload-*; do
		[[ -f $dir/loadtest.pid ]] || continue
		read -r pid <"$dir/loadtest.pid" || continue
		kill -0 "$pid" 2>/dev/null && continue
		warn "removing cluster ${dir##*/} left by an earlier run (pid $pid)"
		PREFIX=${dir##*/} STATE=$dir "$CLUSTER" down >/dev/null 2>&1 ||
			warn "could not remove ${dir##*/}"
	done
}

cluster_up() {
	CLUSTER_TRIED=1
	log "bringing up cluster '$PREFIX'"
	printf '%s\n' 'lclient node1 load client' 'lserver node2 load server' >"$WORK/topology"
	TOPOLOGY=$WORK/topology LOG_LEVEL=warn "$CLUSTER" up >"$LOGS/up.log" 2>&1 || {
		tail -n 20 "$LOGS/up.log" >&2
		die "cluster.sh up failed"
	}
	printf '%s\n' "$$" >"$STATE/loadtest.pid"
}

# cluster_down keeps the agents' logs, then removes the cluster, also when the results
# directory has gone: a redirection that fails would skip the command.
cluster_down() {
	local node down_log=$LOGS/down.log
	log "tearing the cluster down"
	{ mkdir -p "$LOGS" && : >"$down_log"; } 2>/dev/null || down_log=/dev/null
	for node in node1 node2; do
		cp "$STATE/$node/agent.log" "$LOGS/agent-$node.log" 2>/dev/null
	done
	"$CLUSTER" down >"$down_log" 2>&1 || warn "cluster.sh down failed; see $down_log"
	CLUSTER_TRIED=0
}

# --- setup ----------------------------------------------------------------------------

build() {
	build_veil
	log "building the load generator"
	(cd "$REPO" && "$GO" build -o "$WORK/loadtest" ./scripts/loadtest)
	LT=$WORK/loadtest
}


pod_ip() { "$CLUSTER" ip "$1"; }

# bg starts a command in the background and remembers it, so cleanup ends it. With a
# simple command $! is the process itself: `cluster.sh exec` and nsenter exec into it.
bg() {
	local log=$1
	shift
	"$@" 2>"$LOGS/$log.err" &
	BG_PIDS+=($!)
}

start_server() {
	local pod
	# Reuse TIME_WAIT ports on both sides: churn opens tens of thousands of connections
	# to one address and port.
	for pod in lclient lserver; do
		nsenter --net="/run/netns/$PREFIX-$pod" -- sysctl -qw net.ipv4.tcp_tw_reuse=1 \
			net.ipv4.ip_local_port_range="10000 65000"
	done
	bg serve "$CLUSTER" exec lserver -- "$LT" serve -listen ":$PORT" -max-conns $((CONNS + 2000))
	wait_listening lserver "$PORT" "$LOGS/serve.err"
}

start_samplers() {
	local node
	for node in node1 node2; do
		bg "sample-$node" nsenter --net="/run/netns/$PREFIX-$node" -- "$LT" sample \
			-pid "$(agent_pid "$node")" -node "$node" -every "${EVERY}s" \
			>"$OUT/samples-$node.jsonl"
	done
}

mark() {
	printf '{"phase":"%s","t":%s}\n' "$1" "$(date +%s%3N)" >>"$OUT/phases.jsonl"
	log "phase $1"
}

# last_sample prints the newest sample of a node in a few words.
last_sample() {
	tail -n 1 "$OUT/samples-$1.jsonl" 2>/dev/null |
		jq -r '"fds \(.fds), goroutines \(.goroutines), rss \(.rss_kb / 1024 | floor) MB, conns \(.conns)"' 2>/dev/null ||
		echo "no sample yet"
}

# watch_for waits for $1 seconds, telling every 30 s what the agents hold. The shell runs
# a trap only once its foreground command returns, so it waits on a background sleep:
# `wait` returns at once when a signal comes, and Ctrl-C or SIGTERM cleans up at once.
watch_for() {
	local left=$1 step
	while ((left > 0)); do
		step=$((left < 30 ? left : 30))
		sleep "$step" &
		SLEEP_PID=$!
		wait "$SLEEP_PID"
		SLEEP_PID=
		left=$((left - step))
		log "  node1 $(last_sample node1); node2 $(last_sample node2)"
	done
}

write_meta() {
	jq -n --arg date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" --arg commit "$(commit_label)" \
		--arg mode "$( ((QUICK)) && echo quick || echo full)" --argjson conns "$CONNS" \
		--argjson hold "$HOLD" --argjson churn "$CHURN" --argjson rate "$RATE" \
		--argjson cooldown "$COOLDOWN" --argjson every "$EVERY" --arg cpus "$(nproc)" \
		--arg kernel "$(uname -r)" --arg prefix "$PREFIX" \
		--arg nofile "$(awk '/^Max open files/ { print $4 "/" $5 }' "/proc/$(agent_pid node1)/limits")" \
		'{date: $date, commit: $commit, mode: $mode, conns: $conns, hold_s: $hold,
		  churn_s: $churn, rate: $rate, cooldown_s: $cooldown, every_s: $every,
		  cpus: $cpus, kernel: $kernel, prefix: $prefix, agent_nofile: $nofile}' \
		>"$OUT/meta.json"
}

# --- the run ----------------------------------------------------------------------------

hold_phase() {
	local dst=$1 pid i limit
	mark open
	log "opening $CONNS connections lclient -> $dst through the mesh"
	"$CLUSTER" exec lclient -- "$LT" hold -addr "$dst" -n "$CONNS" -for "${HOLD}s" \
		>"$OUT/hold.jsonl" 2>"$LOGS/hold.err" &
	pid=$!
	BG_PIDS+=("$pid")
	limit=$((CONNS / 20 + 120)) # seconds; opening runs at hundreds to thousands a second
	for ((i = 0; i < limit * 10; i++)); do
		[[ -s $OUT/hold.jsonl ]] && break
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	[[ -s $OUT/hold.jsonl ]] || die "hold opened nothing within ${limit}s; see $LOGS/hold.err"
	mark hold
	log "opened: $(jq -c '{opened, errors, seconds, first_error}' <"$OUT/hold.jsonl")"
	watch_for "$HOLD"
	log "checking every held connection, then closing them"
	wait "$pid" || warn "hold exited $?; see $LOGS/hold.err"
	forget_bg "$pid"
	log "checked: $(tail -n 1 "$OUT/hold.jsonl" | jq -c '{alive, errors, first_error}')"
	mark settle
	watch_for "$SETTLE"
}

churn_phase() {
	local dst=$1
	mark churn
	log "churning: $RATE new connections a second for ${CHURN}s"
	"$CLUSTER" exec lclient -- "$LT" churn -addr "$dst" -rate "$RATE" -for "${CHURN}s" \
		>"$OUT/churn.json" 2>"$LOGS/churn.err" &
	local pid=$!
	BG_PIDS+=("$pid")
	watch_for "$CHURN"
	wait "$pid" || warn "churn exited $?; see $LOGS/churn.err"
	forget_bg "$pid"
	log "churn: $(jq -c '{ok, errors, per_sec, p50_ms, p99_ms, first_error}' <"$OUT/churn.json")"
}

main() {
	parse_flags "$@"
	[[ $(id -u) -eq 0 ]] || die "the load test needs root (network namespaces, BPF)"
	command -v jq >/dev/null || die "needs jq (scripts/install-deps.sh installs it)"
	WORK=$(mktemp -d /tmp/vload.XXXXXX)
	trap cleanup EXIT
	trap 'trap - ERR; exit 130' INT TERM
	trap 'printf "loadtest: error: line %s: %s exited %s\n" "$LINENO" "$BASH_COMMAND" "$?" >&2' ERR

	OUT=${OUT:-$REPO/results/loadtest-$(date +%Y%m%d-%H%M%S)-$(commit_label)}
	LOGS=$OUT/logs
	mkdir -p "$LOGS"
	: >"$OUT/phases.jsonl"
	log "$CONNS held for ${HOLD}s, ${CHURN}s of churn at $RATE/s, ${COOLDOWN}s cool-down;" \
		"results into $OUT"

	remove_leftovers
	build
	cluster_up
	write_meta
	start_server
	start_samplers
	local dst
	dst=$(pod_ip lserver):$PORT

	mark baseline
	watch_for "$BASELINE"
	hold_phase "$dst"
	churn_phase "$dst"
	mark cooldown
	watch_for "$COOLDOWN"
	mark end

	stop_bg
	cluster_down
	local rc=0
	"$LT" report -dir "$OUT" || rc=3
	log "done in $((SECONDS - START))s; results in $OUT"
	printf '%s\n' "$OUT"
	exit "$rc"
}

main "$@"

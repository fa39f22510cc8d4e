#!/usr/bin/env bash
# bench.sh: measure veil against plain pod-to-pod networking on the local cluster.
#
#   scripts/bench.sh [--quick] [--paths cross,same,stunnel] [--duration S] [--reps N]
#                    [--conns N] [--idle-pods N] [--out DIR]
#
# Brings up its own cluster (PREFIX vbench, pods from scripts/bench-topology plus
# --idle-pods idle mesh pods on node1), then, repetition after repetition, runs every test
# on the plain baseline and right after it through veil (A B A B ...), so that a drift in
# the machine's load hits both:
#   iperf3, 1 and 4 streams, up (client sends) and down (-R); with the machine's busy
#   CPU seconds from /proc/stat around each run, and iperf3's retransmits
#   round trips of 1 KB on one connection (p50, p90, p99)          veilbench pingpong
#   new connections per second, 1 KB each way, 8 in flight          veilbench connrate
# Paths: cross (node1 -> node2), same (node1 -> node1) and stunnel (node1 -> node2
# through a stunnel client and server outside the mesh, compared with cross's runs).
# After the repetitions it holds --conns idle connections through the mesh and reads
# both agents' RSS before and while they are held. Results are ratios against the
# baseline of the same repetition: median and range.
#
# Writes results.md, results.json, chart.png and raw.jsonl into --out (default
# results/bench-<date>-<commit>/) and prints that path. Removes the cluster and every
# process it started on exit, Ctrl-C included.
#
# Options (defaults; --quick in brackets):
#   --paths LIST     cross,same,stunnel
#   --duration S     seconds per iperf3 run: 5 [1]
#   --reps N         repetitions of every test: 3 [3]
#   --conns N        idle connections held for the memory test, 0 to skip: 10000 [3000]
#   --idle-pods N    idle mesh pods on node1 for the agent's idle RSS: 100 [0]
#   --out DIR        results directory
# Environment: BIN (binaries to use; default: build ./cmd/... into bin/ first), GO (go),
# AGENT_ARGS (extra flags for both agents, recorded with the results; e.g.
# AGENT_ARGS=--same-node-direct to measure that option on the same path).
set -Eeuo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PREFIX=vbench
export STATE=/run/veil/$PREFIX
CLUSTER=$REPO/scripts/cluster.sh
GO=${GO:-go}
export PATH=/usr/local/go/bin:$PATH

IPERF_PORT=5201
ECHO_PORT=7000
STUNNEL_PORT=4433

PATHS=cross,same,stunnel
DURATION=5
REPS=3
CONNS=10000
IDLE_PODS=100
PINGPONG_N=5000
CONNRATE_FOR=3s
OUT=
QUICK=0

TOOL=bench
# shellcheck source=scripts/harness.sh
. "$REPO/scripts/harness.sh"

parse_flags() {
	local quick_set=()
	while (($#)); do
		case $1 in
		--quick) QUICK=1 ;;
		--paths) PATHS=${2:?--paths needs a value}; quick_set+=(paths); shift ;;
		--duration) DURATION=${2:?}; quick_set+=(duration); shift ;;
		--reps) REPS=${2:?}; quick_set+=(reps); shift ;;
		--conns) CONNS=${2:?}; quick_set+=(conns); shift ;;
		--idle-pods) IDLE_PODS=${2:?}; quick_set+=(idle); shift ;;
		--out) OUT=${2:?}; shift ;;
		-h | --help) usage ;;
		*) die "unknown flag '$1' (see --help)" ;;
		esac
		shift
	done
	if ((QUICK)); then
		# Flags given with --quick win over its defaults.
		[[ " ${quick_set[*]} " == *" duration "* ]] || DURATION=1
		[[ " ${quick_set[*]} " == *" idle "* ]] || IDLE_PODS=0
		[[ " ${quick_set[*]} " == *" conns "* ]] || CONNS=3000
		PINGPONG_N=1000 CONNRATE_FOR=500ms
	fi

	[[ $DURATION =~ ^[1-9][0-9]*$ ]] || die "--duration must be a whole number of seconds"
	[[ $REPS =~ ^[1-9][0-9]*$ ]] || die "--reps must be a positive number"
	[[ $CONNS =~ ^[0-9]+$ && $CONNS -le 50000 ]] || die "--conns must be 0 to 50000"
	[[ $IDLE_PODS =~ ^[0-9]+$ && $IDLE_PODS -le 230 ]] || die "--idle-pods must be 0 to 230"
	local p
	for p in ${PATHS//,/ }; do
		[[ $p == cross || $p == same || $p == stunnel ]] ||
			die "--paths: unknown path '$p' (paths: cross, same, stunnel)"
	done
	if has_path stunnel && ! has_path cross; then
		log "stunnel is compared with the cross-node runs: adding cross to --paths"
		PATHS=cross,$PATHS
	fi
}

has_path() { [[ ,$PATHS, == *",$1,"* ]]; }

# --- setup ----------------------------------------------------------------------

# ensure_tools installs what is missing from Debian, for a run of scripts/bench.sh on its
# own; `make bench` has scripts/install-deps.sh install them first. The package index is
# refreshed only when an install fails without it.
ensure_tools() {
	local -A pkg=([iperf3]=iperf3 [stunnel4]=stunnel4 [gnuplot]=gnuplot-nox
		[openssl]=openssl [jq]=jq [nsenter]=util-linux [ss]=iproute2)
	local missing=() tool
	for tool in "${!pkg[@]}"; do
		command -v "$tool" >/dev/null || missing+=("${pkg[$tool]}")
	done
	((${#missing[@]})) || return 0

	log "installing missing packages: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
		apt-get update -q >/dev/null &&
			apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
	} || die "apt-get install ${missing[*]} failed"
}

build() {
	build_veil
	log "building veilbench"
	(cd "$REPO" && "$GO" build -o "$WORK/veilbench" ./scripts/bench/veilbench)
	VB=$WORK/veilbench
}


# agent_version is what the agent that runs says it is: the commit it was built from
# when built by make or by this script.
agent_version() {
	"$BIN/veil-agent" --version 2>/dev/null | awk '{ print $NF }'
}

write_topology() {
	local i
	cp "$REPO/scripts/bench-topology" "$WORK/topology"
	for ((i = 1; i <= IDLE_PODS; i++)); do
		printf 'idle%d node1 idle idle-%d\n' "$i" "$i"
	done >>"$WORK/topology"
}

CLUSTER_TRIED=0
cleanup() {
	local rc=$?
	trap - EXIT INT TERM ERR
	set +e
	stop_bg
	if ((CLUSTER_TRIED)); then
		cluster_down
	fi
	[[ -z ${WORK:-} ]] || rm -rf -- "$WORK"
	((rc == 0)) || [[ -z ${OUT:-} ]] || log "logs of this failed run are in $OUT/logs"
	exit "$rc"
}


cluster_up() {
	if [[ -e $STATE || -e /run/netns/$PREFIX-node1 ]]; then
		warn "a '$PREFIX' cluster from an earlier run is still there; removing it"
		"$CLUSTER" down >/dev/null 2>&1 || true
	fi
	CLUSTER_TRIED=1
	log "bringing up cluster '$PREFIX' ($((8 + IDLE_PODS)) pods)"
	TOPOLOGY=$WORK/topology AGENT_TIMEOUT=$((60 + IDLE_PODS)) LOG_LEVEL=warn \
		"$CLUSTER" up >"$LOGS/up.log" 2>&1 || {
		tail -n 20 "$LOGS/up.log" >&2
		die "cluster.sh up failed"
	}
	log "cluster up"
}

# bg_pod starts a long-running server in a pod; down ends it with the pod's cgroup,
# and cleanup ends it sooner.
bg_pod() {
	local log=$1 pod=$2
	shift 2
	# A simple command, so that $! is the server itself: exec and nsenter exec into it.
	"$CLUSTER" exec "$pod" -- "$@" >"$LOGS/$log.log" 2>&1 &
	BG_PIDS+=($!)
}

# cluster_down keeps the agents' logs, then removes the cluster.
cluster_down() {
	local logs=${LOGS:-$WORK} node
	log "tearing the cluster down"
	for node in node1 node2; do
		cp "$STATE/$node/agent.log" "$logs/agent-$node.log" 2>/dev/null
	done
	"$CLUSTER" down >"$logs/down.log" 2>&1 || warn "cluster.sh down failed; see $logs/down.log"
}



# tune_pods lets the clients reuse TIME_WAIT ports: connrate opens thousands of
# connections to one address and port per second.
tune_pods() {
	local pod
	for pod in mclient msame pclient psame sclient mserver pserver sserver; do
		nsenter --net="/run/netns/$PREFIX-$pod" -- sysctl -qw net.ipv4.tcp_tw_reuse=1 \
			net.ipv4.ip_local_port_range="10000 65000"
	done
}

start_servers() {
	local pod
	for pod in pserver psame mserver msame sserver; do
		bg_pod "iperf3-$pod" "$pod" iperf3 -s -p "$IPERF_PORT"
	done
	for pod in pserver psame mserver msame; do
		bg_pod "echo-$pod" "$pod" "$VB" serve -listen ":$ECHO_PORT"
	done
	if has_path stunnel; then
		start_stunnel
	fi

	for pod in pserver psame mserver msame sserver; do
		wait_listening "$pod" "$IPERF_PORT" "$LOGS"
	done
	for pod in pserver psame mserver msame; do
		wait_listening "$pod" "$ECHO_PORT" "$LOGS"
	done
	if has_path stunnel; then
		wait_listening sserver "$STUNNEL_PORT" "$LOGS"
		wait_listening sclient "$IPERF_PORT" "$LOGS"
	fi
}

# start_stunnel runs the classic TLS tunnel pair on the cross-node path: a client in
# sclient (node1) on 127.0.0.1:5201 and a server in sserver (node2) on :4433 in front of
# iperf3 -s, with a throwaway ECDSA P-256 certificate like veil's.
start_stunnel() {
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
		-subj /CN=vbench-stunnel -keyout "$WORK/stunnel.key" -out "$WORK/stunnel.crt" \
		>/dev/null 2>&1
	chmod 0600 "$WORK/stunnel.key"
	cat >"$WORK/stunnel-server.conf" <<-EOF
		foreground = yes
		pid =
		debug = 3
		[iperf]
		accept = :::$STUNNEL_PORT
		connect = 127.0.0.1:$IPERF_PORT
		cert = $WORK/stunnel.crt
		key = $WORK/stunnel.key
		sslVersionMin = TLSv1.3
	EOF
	cat >"$WORK/stunnel-client.conf" <<-EOF
		foreground = yes
		pid =
		debug = 3
		[iperf]
		client = yes
		accept = 127.0.0.1:$IPERF_PORT
		connect = $(ip_of sserver):$STUNNEL_PORT
		verifyPeer = yes
		CAfile = $WORK/stunnel.crt
		sslVersionMin = TLSv1.3
	EOF
	bg_pod stunnel-server sserver stunnel4 "$WORK/stunnel-server.conf"
	bg_pod stunnel-client sclient stunnel4 "$WORK/stunnel-client.conf"
}

declare -A IP=()
ip_of() {
	[[ -n ${IP[$1]:-} ]] || IP[$1]=$("$CLUSTER" ip "$1")
	printf '%s' "${IP[$1]}"
}

# --- measuring --------------------------------------------------------------------

RAW=

record() { jq -c "$@" >>"$RAW"; }

# Busy CPU time is every core's user, nice, system, irq, softirq and steal jiffies from
# the "cpu" line of /proc/stat (guest time is already inside user).
HZ=$(getconf CLK_TCK)

# iperf_run <rep> <path> <variant> <streams> <up|down> <pod> <server> prints Gbit/s
# and appends a record; on failure it prints "fail" and records nothing.
iperf_run() {
	local rep=$1 path=$2 variant=$3 streams=$4 dir=$5 pod=$6 server=$7
	local j0 j1 out rev=() stat=$WORK/iperf.stat
	[[ $dir == up ]] || rev=(-R)
	# /proc/stat is read inside the pod right before and after iperf3, so that the
	# CPU the harness and cluster.sh spend starting it is not counted.
	if ! out=$(timeout $((DURATION + 30)) "$CLUSTER" exec "$pod" -- bash -c \
		'busy() { awk '\''$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9; exit }'\'' /proc/stat; }
		busy >&2; iperf3 "$@"; rc=$?; busy >&2; exit $rc' iperf3 -c "$server" \
		-p "$IPERF_PORT" -t "$DURATION" -P "$streams" "${rev[@]}" -J 2>"$stat"); then
		warn "iperf3 $variant $path ${streams}x $dir failed: $(jq -r '.error // empty' <<<"$out" 2>/dev/null | head -c 200)"
		echo fail
		return 0
	fi
	{ read -r j0 && read -r j1; } <"$stat"
	record --argjson rep "$rep" --arg path "$path" --arg variant "$variant" \
		--argjson streams "$streams" --arg dir "$dir" \
		--argjson cpu "$(awk -v a="$j0" -v b="$j1" -v hz="$HZ" 'BEGIN { print (b - a) / hz }')" \
		'{kind: "iperf", rep: $rep, path: $path, variant: $variant, streams: $streams,
		  dir: $dir, bps: .end.sum_received.bits_per_second, bytes: .end.sum_received.bytes,
		  retrans: (.end.sum_sent.retransmits // 0), cpu_s: $cpu}' <<<"$out"
	jq -r '.end.sum_received.bits_per_second / 1e9 | . * 100 | round / 100' <<<"$out"
}

# vb_run <rep> <kind> <path> <variant> <pod> <veilbench args...> prints the result
# field named by $FIELD.
vb_run() {
	local rep=$1 kind=$2 path=$3 variant=$4 pod=$5 out
	shift 5
	if ! out=$(timeout 60 "$CLUSTER" exec "$pod" -- "$VB" "$@" 2>&1 | tail -n 1) ||
		! jq -e . >/dev/null 2>&1 <<<"$out"; then
		warn "veilbench $* in $pod failed: ${out:0:200}"
		echo fail
		return 0
	fi
	record --argjson rep "$rep" --arg kind "$kind" --arg path "$path" --arg variant "$variant" \
		'. + {kind: $kind, rep: $rep, path: $path, variant: $variant}' <<<"$out"
	jq -r ".$FIELD | . * 100 | round / 100" <<<"$out"
}

ratio() {
	awk -v a="$1" -v b="$2" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.2f", b / a; else print "-" }'
}

# servers_of prints the plain and the veil server for a path.
plain_server() { case $1 in cross) ip_of pserver ;; same) ip_of psame ;; esac; }
veil_server() { case $1 in cross) ip_of mserver ;; same) ip_of msame ;; esac; }

measure_path() {
	local rep=$1 path=$2 streams dir a b
	for streams in 1 4; do
		for dir in up down; do
			a=$(iperf_run "$rep" "$path" plain "$streams" "$dir" pclient "$(plain_server "$path")")
			b=$(iperf_run "$rep" "$path" veil "$streams" "$dir" mclient "$(veil_server "$path")")
			log "rep $rep/$REPS $path iperf3 ${streams}x $dir: plain $a, veil $b Gbit/s ($(ratio "$a" "$b"))"
		done
	done

	FIELD=p50_us
	a=$(vb_run "$rep" latency "$path" plain pclient pingpong -addr "$(plain_server "$path"):$ECHO_PORT" -n "$PINGPONG_N")
	b=$(vb_run "$rep" latency "$path" veil mclient pingpong -addr "$(veil_server "$path"):$ECHO_PORT" -n "$PINGPONG_N")
	log "rep $rep/$REPS $path 1 KB round trip p50: plain $a, veil $b µs"

	FIELD=per_sec
	a=$(vb_run "$rep" connrate "$path" plain pclient connrate -addr "$(plain_server "$path"):$ECHO_PORT" -for "$CONNRATE_FOR")
	b=$(vb_run "$rep" connrate "$path" veil mclient connrate -addr "$(veil_server "$path"):$ECHO_PORT" -for "$CONNRATE_FOR")
	log "rep $rep/$REPS $path new conns/s: plain $a, veil $b ($(ratio "$a" "$b"))"
}

measure_stunnel() {
	local rep=$1 streams dir a
	for streams in 1 4; do
		for dir in up down; do
			a=$(iperf_run "$rep" stunnel stunnel "$streams" "$dir" sclient 127.0.0.1)
			log "rep $rep/$REPS stunnel iperf3 ${streams}x $dir: $a Gbit/s"
		done
	done
}


# status_kb <node> <field> prints a field of the agent's /proc status in kB.
status_kb() {
	awk -v f="$2:" '$1 == f { print $2 }' "/proc/$(agent_pid "$1")/status"
}

record_idle_rss() {
	local pods
	pods=$(awk '$2 == "node1" && $6 !~ /nomesh/' "$STATE/pods" | wc -l)
	sleep 2
	record -n --argjson pods "$pods" --argjson rss "$(status_kb node1 VmRSS)" \
		--argjson hwm "$(status_kb node1 VmHWM)" \
		'{kind: "rss", what: "idle_pods", node: "node1", pods: $pods, rss_kb: $rss, hwm_kb: $hwm}'
	log "node1 agent idle with $pods pods enrolled: VmRSS $(($(status_kb node1 VmRSS) / 1024)) MB"
}

record_peak_rss() {
	local node
	for node in node1 node2; do
		record -n --arg node "$node" --argjson rss "$(status_kb "$node" VmRSS)" \
			--argjson hwm "$(status_kb "$node" VmHWM)" \
			'{kind: "rss", what: "end", node: $node, rss_kb: $rss, hwm_kb: $hwm}'
		log "$node agent peak RSS (VmHWM) $(($(status_kb "$node" VmHWM) / 1024)) MB"
	done
}

# hold_test opens --conns idle connections mclient -> mserver through the mesh and
# compares both agents' RSS before and while they are held.
hold_test() {
	local -A before=()
	local node pid out="$WORK/hold.out" i res
	for node in node1 node2; do before[$node]=$(status_kb "$node" VmRSS); done

	log "holding $CONNS idle connections mclient -> mserver through the mesh"
	"$CLUSTER" exec mclient -- "$VB" hold -addr "$(ip_of mserver):$ECHO_PORT" -n "$CONNS" \
		-for 180s >"$out" 2>"$LOGS/hold.err" &
	pid=$!
	BG_PIDS+=("$pid")
	for ((i = 0; i < 1200; i++)); do
		[[ -s $out ]] && break
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	res=$(head -n 1 "$out")
	jq -e . >/dev/null 2>&1 <<<"$res" ||
		res='{"wanted": '"$CONNS"', "opened": 0, "first_error": "hold gave no result: '"$(head -c 200 "$LOGS/hold.err" | tr -d '"\\\n')"'"}'
	sleep 2

	for node in node1 node2; do
		record -n --arg node "$node" --argjson res "$res" --argjson before "${before[$node]}" \
			--argjson after "$(status_kb "$node" VmRSS)" \
			--argjson fds "$(find "/proc/$(agent_pid "$node")/fd" -mindepth 1 | wc -l)" \
			--arg nofile "$(awk '/^Max open files/ { print $4 "/" $5 }' "/proc/$(agent_pid "$node")/limits")" \
			'{kind: "hold", node: $node, conns: $res.wanted, opened: $res.opened,
			  before_kb: $before, after_kb: $after, fds: $fds, nofile: $nofile,
			  error: ($res.first_error // "")}'
	done
	log "held $(jq -r .opened <<<"$res") of $CONNS, $(jq -r '.errors // 0' <<<"$res") failed" \
		"$(jq -r '.first_error // "" | .[:120]' <<<"$res");" \
		"agents' RSS node1 $((before[node1] / 1024)) -> $(($(status_kb node1 VmRSS) / 1024)) MB," \
		"node2 $((before[node2] / 1024)) -> $(($(status_kb node2 VmRSS) / 1024)) MB"
}

record_meta() {
	record -n --arg commit "$COMMIT" --arg date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
		--arg mode "$( ((QUICK)) && echo quick || echo default)" --argjson reps "$REPS" \
		--argjson duration "$DURATION" --arg paths "$PATHS" --argjson conns "$CONNS" \
		--argjson idle "$IDLE_PODS" --arg cpus "$(nproc)" --arg kernel "$(uname -r)" \
		--arg agent "$(agent_version)" --arg agent_args "${AGENT_ARGS:-}" \
		'{kind: "meta", meta: {commit: $commit, date: $date, mode: $mode, reps: $reps,
		  duration: $duration, paths: $paths, conns: $conns, idle_pods: $idle,
		  cpus: $cpus, kernel: $kernel, agent_version: $agent, agent_args: $agent_args}}'
}

report() {
	(cd "$OUT" && "$VB" report -raw raw.jsonl -out . && gnuplot chart.gp 2>"$LOGS/gnuplot.log") ||
		warn "writing the report failed"
}

main() {
	parse_flags "$@"
	[[ $(id -u) -eq 0 ]] || die "the benchmark needs root (network namespaces, BPF)"
	WORK=$(mktemp -d /tmp/vbench.XXXXXX)
	trap cleanup EXIT
	trap 'trap - ERR; exit 130' INT TERM
	trap 'printf "bench: error: line %s: %s exited %s\n" "$LINENO" "$BASH_COMMAND" "$?" >&2' ERR

	ensure_tools
	build
	COMMIT=$(agent_version)
	[[ -n $COMMIT && $COMMIT != dev ]] || COMMIT=$(commit_label)
	OUT=${OUT:-$REPO/results/bench-$(date +%Y%m%d-%H%M%S)-$COMMIT}
	mkdir -p "$OUT"
	RAW=$OUT/raw.jsonl
	LOGS=$OUT/logs
	mkdir -p "$LOGS"
	: >"$RAW"
	log "paths $PATHS, $REPS reps, ${DURATION}s per iperf3 run, $CONNS held conns," \
		"$IDLE_PODS idle pods; results into $OUT"

	write_topology
	cluster_up
	record_meta
	record_idle_rss
	tune_pods
	start_servers

	local rep path
	for ((rep = 1; rep <= REPS; rep++)); do
		for path in cross same; do
			if has_path "$path"; then measure_path "$rep" "$path"; fi
		done
		if has_path stunnel; then measure_stunnel "$rep"; fi
	done
	record_peak_rss
	if ((CONNS > 0)) && has_path cross; then
		hold_test
	fi
	stop_bg

	cluster_down
	CLUSTER_TRIED=0
	report
	cat "$OUT/results.md"
	log "done in $((SECONDS - START))s; results in $OUT"
	printf '%s\n' "$OUT"
}

main "$@"

#!/usr/bin/env bash
# demo.sh: bring the local cluster up, move traffic between pods on different nodes,
# and prove from a packet capture of the wire between the nodes that none of it
# crossed in plaintext. It also measures iperf3 through the mesh against the same test
# between two pods outside it (plain1 and plain2, "nomesh" in scripts/demo-topology)
# across the same node link. `make demo` builds the binaries and runs this.
#
# Environment: as scripts/cluster.sh (PREFIX, STATE, BIN, TOPOLOGY), plus
#   IPERF_SECONDS (3), IPERF_ROUNDS (3)  each round runs iperf3 plain, then through
#              the mesh, for IPERF_SECONDS each; the table shows the medians
#   KEEP=1     leave the cluster up afterwards (remove it with scripts/cluster.sh down)
#   NOAGENT=1  run without veil: the capture then shows the plaintext the proof looks for,
#              and the demo fails, which is how to check that the proof can fail
#
# Exit status 0 only if the proof holds: the capture saw mTLS traffic to port 15008
# and not one copy of the marker the client fetched.
set -Eeuo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PREFIX=${PREFIX:-veil}
export STATE=${STATE:-/run/veil/$PREFIX}
export BIN=${BIN:-$REPO/bin}
CLUSTER=$REPO/scripts/cluster.sh

CLIENT=client       # node1
HTTP_POD=server     # node2
IPERF_POD=server2   # node2
PLAIN_CLIENT=plain1 # node1, outside the mesh
PLAIN_SERVER=plain2 # node2, outside the mesh
HTTP_PORT=8080
IPERF_PORT=5201
HBONE_PORT=15008
IPERF_SECONDS=${IPERF_SECONDS:-3}
IPERF_ROUNDS=${IPERF_ROUNDS:-3}

if [[ -t 1 ]]; then BOLD=$'\033[1m' PLAIN=$'\033[0m'; else BOLD='' PLAIN=''; fi
say() { printf '\n%s== %s%s\n' "$BOLD" "$*" "$PLAIN"; }
log() { printf 'demo: %s\n' "$*" >&2; }
die() { printf 'demo: error: %s\n' "$*" >&2; exit 1; }
trap 'printf "demo: error: line %s: %s exited %s\n" "$LINENO" "$BASH_COMMAND" "$?" >&2' ERR

[[ $(id -u) -eq 0 ]] || die "the demo needs root (network namespaces, BPF)"
[[ $IPERF_ROUNDS =~ ^[1-9][0-9]*$ ]] || die "IPERF_ROUNDS must be a positive number"
for tool in curl iperf3 tcpdump python3 jq nsenter; do
	command -v "$tool" >/dev/null || die "$tool not found; run scripts/install-deps.sh"
done

TCPDUMP_PID=
cleanup() {
	local rc=$?
	trap - EXIT INT TERM ERR
	set +e
	if [[ -n $TCPDUMP_PID ]]; then
		kill -INT "$TCPDUMP_PID" 2>/dev/null
		wait "$TCPDUMP_PID" 2>/dev/null
	fi
	if [[ ${KEEP:-0} == 1 ]]; then
		log "KEEP=1: cluster '$PREFIX' left up; remove it with 'scripts/cluster.sh down'"
	else
		say "tearing down"
		"$CLUSTER" down
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_for polls a check until it succeeds or the deadline passes.
wait_for() {
	local what=$1 timeout=$2 deadline
	shift 2
	deadline=$((SECONDS + timeout))
	until "$@"; do
		((SECONDS < deadline)) || die "timed out after ${timeout}s waiting for $what"
		sleep 0.1
	done
}

listening() {
	[[ -n $(nsenter --net="/run/netns/$PREFIX-$1" -- ss -Hltn "sport = :$2") ]]
}

say "bringing cluster '$PREFIX' up"
"$CLUSTER" up

HTTP_IP=$("$CLUSTER" ip "$HTTP_POD")
IPERF_IP=$("$CLUSTER" ip "$IPERF_POD")
PLAIN_CLIENT_IP=$("$CLUSTER" ip "$PLAIN_CLIENT")
PLAIN_SERVER_IP=$("$CLUSTER" ip "$PLAIN_SERVER")

# The marker is random so that it can only be in the capture if this run's
# response body crossed the wire unencrypted.
MARKER="VEIL-PLAINTEXT-MARKER-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
mkdir -p "$STATE/www"
for _ in 1 2 3 4 5 6 7 8; do printf 'secret line: %s\n' "$MARKER"; done >"$STATE/www/secret.txt"

say "starting servers on node2: http://$HTTP_IP:$HTTP_PORT ($HTTP_POD), iperf3 $IPERF_IP:$IPERF_PORT ($IPERF_POD)"
"$CLUSTER" exec "$HTTP_POD" -- python3 -m http.server "$HTTP_PORT" \
	--directory "$STATE/www" >"$STATE/http-server.log" 2>&1 &
"$CLUSTER" exec "$IPERF_POD" -- iperf3 -s -p "$IPERF_PORT" >"$STATE/iperf-server.log" 2>&1 &
"$CLUSTER" exec "$PLAIN_SERVER" -- iperf3 -s -p "$IPERF_PORT" \
	>"$STATE/iperf-plain-server.log" 2>&1 &
# The servers live in pod cgroups, so down ends them; disown keeps bash quiet about it.
disown -a
wait_for "the HTTP server" 10 listening "$HTTP_POD" "$HTTP_PORT"
wait_for "iperf3 -s" 10 listening "$IPERF_POD" "$IPERF_PORT"
wait_for "iperf3 -s in $PLAIN_SERVER" 10 listening "$PLAIN_SERVER" "$IPERF_PORT"

# start_capture <name> <snaplen> [filter...] records the wire between the nodes from
# node1's side (snaplen 0: whole packets). -U writes each packet as it arrives and
# --immediate-mode hands it over at once: without it, packets still in the kernel's
# ring when tcpdump is stopped are lost. -Z root keeps tcpdump able to write into the
# root-only state dir after it drops privileges; -B gives the kernel room so that
# nothing is dropped.
start_capture() {
	local name=$1 snaplen=$2
	shift 2
	nsenter --net="/run/netns/$PREFIX-node1" -- tcpdump -i wire -nn -U --immediate-mode \
		-Z root -B 16384 -s "$snaplen" \
		-w "$STATE/$name.pcap" "$@" >"$STATE/$name.tcpdump.log" 2>&1 &
	TCPDUMP_PID=$!
	wait_for "tcpdump" 10 grep -q "listening on" "$STATE/$name.tcpdump.log"
}

# stop_capture stops tcpdump and prints how many packets the kernel dropped.
stop_capture() {
	kill -INT "$TCPDUMP_PID"
	wait "$TCPDUMP_PID" || true
	TCPDUMP_PID=
	sed -n 's/^\([0-9]*\) packets dropped by kernel$/\1/p' "$STATE/$1.tcpdump.log"
}

say "capturing whole packets on the wire between the nodes (tcpdump -i wire in node1)"
start_capture wire 0

say "node1/$CLIENT: curl http://$HTTP_IP:$HTTP_PORT/secret.txt"
"$CLUSTER" exec "$CLIENT" -- curl -sS --max-time 20 \
	-o "$STATE/fetched.txt" -w 'HTTP %{http_code}, %{size_download} bytes in %{time_total}s\n' \
	"http://$HTTP_IP:$HTTP_PORT/secret.txt"
FETCHED=$(grep -c -- "$MARKER" "$STATE/fetched.txt" || true)
printf 'client received the marker %s times\n' "$FETCHED"
DROPPED=$(stop_capture wire)

# iperf_run <label> <pod> <server ip> runs one iperf3 test and keeps its -J report in
# $STATE/iperf-<label>.json.
iperf_run() {
	local json=$STATE/iperf-$1.json
	"$CLUSTER" exec "$2" -- iperf3 -c "$3" -p "$IPERF_PORT" -t "$IPERF_SECONDS" -J >"$json"
	jq -r --arg l "$1" '.end.sum_received | "\($l): received \(.bytes) bytes in"
		+ " \(.seconds | . * 100 | round / 100)s:"
		+ " \(.bits_per_second / 1e9 | . * 100 | round / 100) Gbit/s"' "$json"
}

# median_gbps prints the median receive rate, in Gbit/s, of iperf3 -J reports.
median_gbps() {
	jq -s '[.[].end.sum_received.bits_per_second / 1e9] | sort | (length / 2 | floor) as $m
		| if length % 2 == 1 then .[$m] else (.[$m - 1] + .[$m]) / 2 end' "$@"
}

# The mesh and the plain runs alternate so that a drift in the machine's load hits both.
# iperf3 moves gigabytes; its capture keeps headers only, enough to see the ports, and
# leaves the plain pods out, so that it holds the mesh's traffic alone. (Copying those
# headers costs the mesh runs a little; the plain runs pay only the filter.)
say "iperf3 node1 -> node2, $IPERF_ROUNDS rounds of ${IPERF_SECONDS}s: plain $PLAIN_CLIENT ->" \
	"$PLAIN_SERVER ($PLAIN_SERVER_IP), then mesh $CLIENT -> $IPERF_POD ($IPERF_IP)"
start_capture iperf 128 not host "$PLAIN_CLIENT_IP" and not host "$PLAIN_SERVER_IP"
for ((round = 1; round <= IPERF_ROUNDS; round++)); do
	iperf_run "plain-$round" "$PLAIN_CLIENT" "$PLAIN_SERVER_IP"
	iperf_run "mesh-$round" "$CLIENT" "$IPERF_IP"
done
stop_capture iperf >/dev/null

MESH_GBPS=$(median_gbps "$STATE"/iperf-mesh-*.json)
PLAIN_GBPS=$(median_gbps "$STATE"/iperf-plain-*.json)
say "throughput node1 -> node2 (median of $IPERF_ROUNDS iperf3 runs of ${IPERF_SECONDS}s)"
awk -v mesh="$MESH_GBPS" -v plain="$PLAIN_GBPS" \
	-v mpath="mesh   $CLIENT -> $IPERF_POD (HBONE, mTLS)" \
	-v ppath="plain  $PLAIN_CLIENT -> $PLAIN_SERVER (no mesh)" 'BEGIN {
	printf "  %-40s %8s\n", "path", "Gbit/s"
	printf "  %-40s %8.2f\n", mpath, mesh
	printf "  %-40s %8.2f\n", ppath, plain
	if (plain > 0) printf "  %-40s %8.2f\n", "ratio mesh/plain", mesh / plain
}'

FAIL=0
if [[ ${NOAGENT:-0} != 1 ]]; then
	say "identities seen by node2's agent (verified peer certificates, connections since start)"
	CLIENT_ID=$(jq -r --arg p "$CLIENT" '.workloads[]? | select(.name == $p) | .identity' \
		< <("$BIN/agentctl" --socket "$STATE/node1/agent.sock" status -o json) || true)
	SEEN=$(jq -r '.traffic.peers[]? | select(.direction == "inbound")
		| "  \(.peer) -> \(.workload): \(.connections) connections"' \
		< <("$BIN/agentctl" --socket "$STATE/node2/agent.sock" status -o json) || true)
	printf '%s\n' "${SEEN:-  none}"
	if [[ -n $CLIENT_ID && $SEEN == *"$CLIENT_ID -> "* ]]; then
		printf 'node2 verified the client as %s\n' "$CLIENT_ID"
	else
		log "FAIL: node2's agent did not see the client's identity ${CLIENT_ID:-?}"
		FAIL=1
	fi

	for node in node1 node2; do
		say "agentctl status ($node)"
		"$BIN/agentctl" --socket "$STATE/$node/agent.sock" status
	done
fi

say "proof: what the wire carried"
count() { tcpdump -r "$STATE/$1.pcap" -nn "$2" 2>/dev/null | wc -l; }
# grep -a reads the capture as text; -c counts the lines holding the marker.
LEAKED=$(grep -a -c -- "$MARKER" "$STATE/wire.pcap" || true)
HBONE=$(count wire "tcp port $HBONE_PORT")
IPERF_HBONE=$(count iperf "tcp port $HBONE_PORT")
row() { printf '  %-52s %s\n' "$1" "$2"; }
printf 'during curl (%s):\n' "$STATE/wire.pcap"
row "packets captured" "$(count wire "")"
row "packets dropped by the kernel" "${DROPPED:-unknown}"
row "packets to or from port $HBONE_PORT (HBONE over mTLS)" "$HBONE"
row "packets to or from port $HTTP_PORT (plain HTTP)" "$(count wire "tcp port $HTTP_PORT")"
row "copies of the marker" "$LEAKED"
printf 'during iperf3 through the mesh (%s, headers only, plain pods left out):\n' \
	"$STATE/iperf.pcap"
row "packets captured" "$(count iperf "")"
row "packets to or from port $HBONE_PORT (HBONE over mTLS)" "$IPERF_HBONE"
row "packets to or from port $IPERF_PORT (plain iperf3)" "$(count iperf "tcp port $IPERF_PORT")"

((FETCHED > 0)) || { log "FAIL: the client never received the marker, so nothing was proven"; FAIL=1; }
((HBONE > 0)) || { log "FAIL: the curl did not cross the wire to port $HBONE_PORT"; FAIL=1; }
((IPERF_HBONE > 0)) || { log "FAIL: iperf3 did not cross the wire to port $HBONE_PORT"; FAIL=1; }
((LEAKED == 0)) || { log "FAIL: the marker crossed the wire in plaintext $LEAKED times"; FAIL=1; }
[[ $DROPPED == 0 ]] || { log "FAIL: tcpdump dropped ${DROPPED:-an unknown number of} packets; the capture is incomplete"; FAIL=1; }
if ((FAIL)); then
	# down removes STATE; keep the evidence.
	if [[ ${KEEP:-0} != 1 ]]; then
		cp "$STATE/wire.pcap" "/tmp/$PREFIX-wire.pcap" || true
		log "capture kept at /tmp/$PREFIX-wire.pcap"
	fi
	exit 1
fi
say "PASS: the marker reached the client, and the wire only ever carried it encrypted"

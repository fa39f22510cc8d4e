#!/usr/bin/env bash
# cluster.sh: a two-node veil cluster made of network namespaces on one machine.
#
#   scripts/cluster.sh up                     build nodes and pods, start veil-ca and agents
#   scripts/cluster.sh down                   stop everything and remove what up made
#   scripts/cluster.sh exec <pod> -- cmd...   run cmd inside a pod (its netns and cgroup)
#   scripts/cluster.sh exec <node> -- cmd...  run cmd inside a node's netns
#   scripts/cluster.sh status                 what is running, and each agent's status
#   scripts/cluster.sh logs <node|ca> [-f]    print (or follow) an agent's or the CA's log
#   scripts/cluster.sh ip <pod>               print a pod's IPv4 address
#   scripts/cluster.sh ip6 <pod>              print a pod's IPv6 address (none for a nov6 pod)
#   scripts/cluster.sh stop-agent <node>      stop a node's agent; its pods stay enrolled and
#                                             fail closed until an agent serves them again
#   scripts/cluster.sh start-agent <node>     start it again and wait until its pods are enrolled
#   scripts/cluster.sh upgrade-agent <node>   start a second agent on a running node's; it takes
#                                             the listeners over, and the old one drains and exits
#   scripts/cluster.sh stop-ca                stop veil-ca; agents keep serving with the
#                                             certificates they hold and report the outage
#   scripts/cluster.sh start-ca               start it again, with the CERT_TTL and CA_ARGS
#                                             of up, and wait until it serves
#   scripts/cluster.sh ca <args>              run veil-ca <args> on the CA's directory, e.g.
#                                             "ca root list", "ca root add" (root rotation)
#
# Environment:
#   PREFIX    names every netns, cgroup and bpffs directory (default veil), so that
#             several clusters (one per test) can exist side by side
#   STATE     state directory (default /run/veil/$PREFIX)
#   BIN       directory holding veil-agent, veil-ca and agentctl (default <repo>/bin)
#   TOPOLOGY  pod list, lines "<pod> <node> <namespace> <serviceaccount> [options]"
#             (default <repo>/scripts/demo-topology); options is a comma-separated
#             list of "nomesh", "nov6" and "nonet". A "nomesh" pod is built like any
#             other (netns, veth, IPs, cgroup) but left out of workloads.yaml, so no
#             agent enrolls it: its traffic is plain pod-to-pod, a baseline. A "nov6" pod
#             has IPv6 disabled in its netns and only its IPv4 address. A "nonet" pod is
#             a netns (IPv6 off) and a cgroup and nothing else, for CNI plugins to give
#             it a network as a container runtime would; it is left out of
#             workloads.yaml, having no address the cluster knows.
#   POLICY    policy file the agents start with, copied to $STATE/policy.yaml (default:
#             an empty one: every port PERMISSIVE, every connection allowed). Agents
#             re-read $STATE/policy.yaml every 2 s: edit it to change policy. Each pod
#             carries the label app=<pod>, for policies to select it by.
#   NOAGENT=1 build only the network, cgroups and state files; start no CA or agents
#   TRUST_DOMAIN (cluster.local), CERT_TTL (24h), LOG_LEVEL (info),
#   LOG_FORMAT (json or console; default: the agent's own, json when not on a terminal),
#   CA_ARGS, AGENT_ARGS (extra flags), CA_TIMEOUT (30), AGENT_TIMEOUT (60) seconds,
#   KEEP=1    leave a half-built cluster in place when up fails, for inspection
#
# The cluster is dual-stack: node N is 10.200.0.N and fd00:10:200::N on "wire", its
# bridge cni0 10.244.N.1/24 and fd00:10:244:N::1/64, and its i-th pod (in TOPOLOGY
# order) 10.244.N.(10+i)/24 and fd00:10:244:N::(10+i)/64, the IPv6 host part being the
# same decimal digits read as hex (pod 1 is ::11, pod 2 ::12), unless the pod is nov6.
#
# Nothing here touches the root network namespace: every address, route and link
# lives in a namespace this script creates, and down removes only what up recorded.
set -Eeuo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PREFIX=${PREFIX:-veil}
STATE=${STATE:-/run/veil/$PREFIX}
BIN=${BIN:-$REPO/bin}
TOPOLOGY=${TOPOLOGY:-$REPO/scripts/demo-topology}
TRUST_DOMAIN=${TRUST_DOMAIN:-cluster.local}
CERT_TTL=${CERT_TTL:-24h}
LOG_LEVEL=${LOG_LEVEL:-info}
LOG_FORMAT=${LOG_FORMAT:-}
CA_TIMEOUT=${CA_TIMEOUT:-30}
AGENT_TIMEOUT=${AGENT_TIMEOUT:-60}

NODES=(node1 node2)
WIRE_NET=10.200.0          # node N is $WIRE_NET.N on the veth pair "wire"
WIRE_NET6=fd00:10:200:     # and $WIRE_NET6:N (fd00:10:200::N)
POD_NET6=fd00:10:244       # node N's pods are in $POD_NET6:N::/64
CA_ADDR=$WIRE_NET.1:15012  # veil-ca listens in node1's netns
BPFFS=/sys/fs/bpf
MARKER=.veil-cluster       # present in STATE only if this script made it

STEP="starting"

log() { printf 'cluster.sh: %s\n' "$*" >&2; }
warn() { printf 'cluster.sh: warning: %s\n' "$*" >&2; }
die() { printf 'cluster.sh: error: %s\n' "$*" >&2; exit 1; }

# step names what is being done, so that a failure says where it happened.
step() {
	STEP=$*
	log "$STEP"
}

on_err() {
	printf 'cluster.sh: error: failed while %s (line %s: %s exited %s)\n' \
		"$STEP" "$2" "$3" "$1" >&2
}
trap 'on_err $? $LINENO "$BASH_COMMAND"' ERR

usage() {
	sed -n '2,/^set -Eeuo/{/^set/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
	exit 2
}

# --- names and places -------------------------------------------------------

netns() { printf '%s-%s' "$PREFIX" "$1"; }
netns_path() { printf '/run/netns/%s' "$(netns "$1")"; }
node_num() { printf '%s' "${1#node}"; }

validate_prefix() {
	# PREFIX becomes part of paths that down removes recursively, so it must be
	# a plain name: no slashes, no dots, never empty.
	[[ $PREFIX =~ ^[a-z0-9][a-z0-9-]{0,30}$ ]] ||
		die "PREFIX '$PREFIX' must be 1-31 characters of [a-z0-9-], starting with [a-z0-9]"
}

# cgroup_root finds the cgroup v2 mount: /sys/fs/cgroup/unified on hybrid hosts,
# /sys/fs/cgroup on unified ones.
cgroup_root() {
	local mnt

	mnt=$(awk '{ for (i = 6; i <= NF; i++) if ($i == "-") {
		if ($(i + 1) == "cgroup2") { print $5; exit } break } }' /proc/self/mountinfo)
	if [[ -z $mnt && -e /sys/fs/cgroup/cgroup.controllers ]]; then
		mnt=/sys/fs/cgroup
	fi
	[[ -n $mnt ]] || die "no cgroup v2 mount found in /proc/self/mountinfo"
	printf '%s' "$mnt"
}

# --- topology -----------------------------------------------------------------

# POD_NAMES keeps file order; POD_NODE, POD_NS, POD_SA, POD_IP, POD_IP6 (empty for a
# "nov6" pod; both empty for a "nonet" pod), POD_OPTS (the options as written,
# comma-separated) and POD_MESH (1 if the agents enroll the pod, 0 for a "nomesh" or
# "nonet" pod) are keyed by pod.
POD_NAMES=()
declare -A POD_NODE=() POD_NS=() POD_SA=() POD_IP=() POD_IP6=() POD_OPTS=() POD_MESH=()
POD_OPTIONS="nomesh nov6 nonet"

is_node() {
	local n
	for n in "${NODES[@]}"; do [[ $1 == "$n" ]] && return 0; done
	return 1
}

# load_topology reads the pod list: from $STATE/pods once up has written it (so
# that down and exec agree with the running cluster even if TOPOLOGY changed),
# otherwise from $TOPOLOGY. $STATE/pods has the IPv4 address in the 5th column, the
# options in the 6th ("-" for none) and the IPv6 address in the 7th ("-" for none).
# A state file from before "nomesh" has no 6th column, and one from before IPv6 no
# 7th: that cluster was built without IPv6, so its pods have none.
load_topology() {
	local file=$TOPOLOGY from_state=0
	if [[ -f $STATE/pods ]]; then
		file=$STATE/pods
		from_state=1
	fi
	[[ -r $file ]] || die "topology file $file not readable"
	POD_NAMES=()
	POD_NODE=() POD_NS=() POD_SA=() POD_IP=() POD_IP6=() POD_OPTS=() POD_MESH=()

	local -A count=()
	local n=0 line pod node ns sa opts extra ip ip6 opt mesh v6 list
	local want="want '<pod> <node> <namespace> <serviceaccount> [options]', options comma-separated without spaces"
	while IFS= read -r line || [[ -n $line ]]; do
		n=$((n + 1))
		line=${line%%#*}
		pod='' sa='' opts='' ip6='' extra=''
		if ((from_state)); then
			read -r pod node ns sa ip opts ip6 extra <<<"$line" || true
			[[ $opts != - ]] || opts=
		else
			read -r pod node ns sa opts extra <<<"$line" || true
		fi
		[[ -z $pod ]] && continue
		[[ -n $sa && -z $extra ]] || die "$file:$n: $want"

		mesh=1 v6=1 net=1
		if [[ -n $opts ]]; then
			[[ $opts =~ ^[^,]+(,[^,]+)*$ ]] ||
				die "$file:$n: pod '$pod': empty option in '$opts'; write options as e.g. 'nomesh,nov6'"
			IFS=, read -ra list <<<"$opts"
			for opt in "${list[@]}"; do
				case $opt in
				nomesh) mesh=0 ;;
				nov6) v6=0 ;;
				nonet) net=0 mesh=0 v6=0 ;;
				*) die "$file:$n: pod '$pod': unknown option '$opt' (options are: ${POD_OPTIONS// /, })" ;;
				esac
			done
		fi

		[[ $pod =~ ^[a-z0-9]([a-z0-9-]{0,11}[a-z0-9])?$ ]] ||
			die "$file:$n: pod '$pod': use at most 13 characters of [a-z0-9-] (veth 'v-<pod>' must fit in 15)"
		! is_node "$pod" || die "$file:$n: pod '$pod' would share a netns name with a node"
		is_node "$node" || die "$file:$n: node '$node' is not one of: ${NODES[*]}"
		[[ $ns =~ ^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$ ]] ||
			die "$file:$n: namespace '$ns' is not a DNS label"
		[[ $sa =~ ^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$ ]] ||
			die "$file:$n: service account '$sa' is not a DNS subdomain"
		[[ -z ${POD_NODE[$pod]:-} ]] || die "$file:$n: pod '$pod' listed twice"

		count[$node]=$((${count[$node]:-0} + 1))
		((count[$node] <= 240)) || die "$file:$n: more than 240 pods on $node"
		POD_NAMES+=("$pod")
		POD_NODE[$pod]=$node
		POD_NS[$pod]=$ns
		POD_SA[$pod]=$sa
		POD_OPTS[$pod]=$opts
		POD_MESH[$pod]=$mesh
		POD_IP[$pod]=10.244.$(node_num "$node").$((10 + count[$node]))
		((net)) || POD_IP[$pod]=
		if ((from_state)); then
			# What up built: absent in a state file from before IPv6.
			[[ $ip6 != - ]] || ip6=
			POD_IP6[$pod]=$ip6
		elif ((v6)); then
			POD_IP6[$pod]=$POD_NET6:$(node_num "$node")::$((10 + count[$node]))
		else
			POD_IP6[$pod]=
		fi
	done <"$file"
}

# mesh_pods_on prints the pods on node $1 that its agent enrolls.
mesh_pods_on() {
	local pod
	for pod in "${POD_NAMES[@]}"; do
		[[ ${POD_NODE[$pod]} == "$1" && ${POD_MESH[$pod]} == 1 ]] && printf '%s\n' "$pod"
	done
	return 0
}

# mesh_note prints "(no mesh)" for a pod no agent enrolls, nothing otherwise.
mesh_note() {
	[[ ${POD_MESH[$1]} == 1 ]] || printf '(no mesh)'
}

# ip6_note prints a pod's IPv6 address, or "(no ipv6)".
ip6_note() {
	printf '%s' "${POD_IP6[$1]:-(no ipv6)}"
}

# --- processes ------------------------------------------------------------------

# A pid file holds "<pid> <start time>": the start time (field 22 of
# /proc/<pid>/stat) tells our process from a later one that reused its pid.
proc_start() {
	local stat
	stat=$(<"/proc/$1/stat") 2>/dev/null || return 1
	stat=${stat##*) }
	# shellcheck disable=SC2086 # split the fields after the command name
	set -- $stat
	[[ $1 != Z ]] || return 1 # a zombie has exited; only its parent has yet to reap it
	printf '%s' "${20}"
}

record_pid() {
	local start
	start=$(proc_start "$2") || die "process for $1 exited right after it started; see its log"
	printf '%s %s\n' "$2" "$start" >"$1"
}

# recorded_pid prints the pid in pid file $1 if that process is still running.
recorded_pid() {
	local pid start now
	[[ -f $1 ]] || return 1
	read -r pid start <"$1" || return 1
	now=$(proc_start "$pid" 2>/dev/null) || return 1
	[[ $now == "$start" ]] || return 1
	printf '%s' "$pid"
}

# stop_pid sends SIGTERM, waits up to 10 s, then SIGKILL.
stop_pid() {
	local pid=$1 what=$2 i
	kill -TERM "$pid" 2>/dev/null || return 0
	for ((i = 0; i < 100; i++)); do
		proc_start "$pid" >/dev/null 2>&1 || return 0
		sleep 0.1
	done
	warn "$what (pid $pid) ignored SIGTERM for 10s; killing it"
	kill -KILL "$pid" 2>/dev/null || true
}

stop_recorded() {
	local pid
	if pid=$(recorded_pid "$1"); then
		log "stopping $2 (pid $pid)"
		stop_pid "$pid" "$2"
	fi
	rm -f "$1"
}

# wait_for polls a check until it succeeds or the deadline passes.
wait_for() {
	local what=$1 timeout=$2 deadline
	shift 2
	deadline=$((SECONDS + timeout))
	until "$@"; do
		((SECONDS < deadline)) || { log "timed out after ${timeout}s waiting for $what"; return 1; }
		sleep 0.2
	done
}

show_log_tail() {
	[[ -s $1 ]] || return 0
	printf -- '--- last lines of %s ---\n' "$1" >&2
	tail -n 30 "$1" >&2
	printf -- '---\n' >&2
}

# --- up -----------------------------------------------------------------------

up_exit() {
	local rc=$?
	trap - EXIT
	((rc != 0)) || return 0
	if [[ ${KEEP:-0} == 1 ]]; then
		warn "KEEP=1: leaving the half-built cluster; run 'PREFIX=$PREFIX $0 down' to remove it"
		exit "$rc"
	fi
	warn "up failed; tearing down what it built (set KEEP=1 to keep it)"
	(cmd_down) || warn "down after a failed up did not finish cleanly"
	exit "$rc"
}

cmd_up() {
	validate_prefix
	[[ $(id -u) -eq 0 ]] || die "up needs root"
	load_topology
	need_ipv6
	local cg2 node pod
	cg2=$(cgroup_root)

	# Refuse to build over an existing cluster; checked before the teardown trap
	# is armed, so a second `up` never destroys the first.
	for node in "${NODES[@]}" "${POD_NAMES[@]}"; do
		[[ ! -e $(netns_path "$node") ]] ||
			die "netns $(netns "$node") exists: cluster '$PREFIX' is up; run '$0 down' first"
	done
	[[ ! -e $STATE ]] || die "state dir $STATE exists; run '$0 down' first"
	[[ ! -e $cg2/$PREFIX ]] || die "cgroup $cg2/$PREFIX exists; run '$0 down' first"
	if [[ ${NOAGENT:-0} != 1 ]]; then
		local b
		for b in veil-ca veil-agent agentctl; do
			[[ -x $BIN/$b ]] || die "$BIN/$b not found; run 'make build' (or set BIN)"
		done
	fi

	trap up_exit EXIT
	trap 'exit 130' INT TERM

	step "creating state dir $STATE"
	mkdir -p "$STATE"
	chmod 0700 "$STATE"
	: >"$STATE/$MARKER"
	cp "$TOPOLOGY" "$STATE/topology.src"
	write_pods_file

	make_nodes
	for pod in "${POD_NAMES[@]}"; do
		make_pod "$pod"
	done
	make_cgroups "$cg2"
	write_workloads
	write_policy
	write_tokens
	mount_bpffs

	if [[ ${NOAGENT:-0} == 1 ]]; then
		log "NOAGENT=1: network only, no CA or agents started"
	else
		start_ca
		for node in "${NODES[@]}"; do
			start_agent "$node" "$cg2"
		done
		for node in "${NODES[@]}"; do
			wait_agent "$node"
		done
	fi

	trap - EXIT INT TERM
	log "cluster '$PREFIX' is up; state in $STATE"
	print_pods
}

# write_pods_file records the pods as "<pod> <node> <namespace> <sa> <ip> <options>
# <ip6>", with "-" for no options and for no IPv6 address (see load_topology).
write_pods_file() {
	local pod
	for pod in "${POD_NAMES[@]}"; do
		printf '%s %s %s %s %s %s %s\n' "$pod" "${POD_NODE[$pod]}" "${POD_NS[$pod]}" \
			"${POD_SA[$pod]}" "${POD_IP[$pod]:--}" "${POD_OPTS[$pod]:--}" "${POD_IP6[$pod]:--}"
	done >"$STATE/pods"
}

# add_netns creates a namespace and records it, so that down removes exactly the
# namespaces up made even when up stopped half way. Any further arguments are
# sysctls (name=value) set in it before lo comes up and before any link is moved in,
# so that every interface starts with them.
add_netns() {
	local name=$1
	shift
	ip netns add "$(netns "$name")"
	printf '%s\n' "$(netns "$name")" >>"$STATE/netns"
	(($# == 0)) || in_ns "$name" sysctl -qw "$@"
	ip -n "$(netns "$name")" link set lo up
}

# IPv6 on in a new namespace, whatever the host's defaults (a host may hand a
# disable_ipv6=1 down when net.core.devconf_inherit_init_net is set).
V6_ON=(net.ipv6.conf.all.disable_ipv6=0 net.ipv6.conf.default.disable_ipv6=0)
V6_OFF=(net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1)

need_ipv6() {
	[[ -d /proc/sys/net/ipv6 ]] ||
		die "this kernel has no IPv6 (booted with ipv6.disable=1?); the cluster is dual-stack and needs it"
}

in_ns() {
	local name=$1
	shift
	nsenter --net="$(netns_path "$name")" -- "$@"
}

make_nodes() {
	local node n other ns

	for node in "${NODES[@]}"; do
		step "creating node netns $(netns "$node")"
		add_netns "$node" "${V6_ON[@]}"
		mkdir -p "$STATE/$node"
		in_ns "$node" sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
	done

	# Every IPv6 address is added with nodad: duplicate address detection would
	# leave it "tentative", unusable, for a second or more, and nothing else on
	# these links can hold it.
	step "linking node1 and node2 with veth 'wire' ($WIRE_NET.0/24, ${WIRE_NET6}:/64)"
	ip -n "$(netns node1)" link add wire type veth peer name wire netns "$(netns node2)"
	for node in "${NODES[@]}"; do
		n=$(node_num "$node")
		ns=$(netns "$node")
		ip -n "$ns" addr add "$WIRE_NET.$n/24" dev wire
		ip -n "$ns" -6 addr add "$WIRE_NET6:$n/64" dev wire nodad
		ip -n "$ns" link set wire up
	done

	for node in "${NODES[@]}"; do
		n=$(node_num "$node")
		ns=$(netns "$node")
		step "creating bridge cni0 10.244.$n.1/24 $POD_NET6:$n::1/64 in $ns"
		# An address of its own: a bridge left to pick one takes the lowest of its ports'
		# and changes it when a port with a lower one joins (a pod a CNI plugin adds),
		# leaving every pod's neighbour entry for the gateway stale for seconds.
		ip -n "$ns" link add cni0 address "$(printf '02:00:0a:f4:%02x:01' "$n")" type bridge
		ip -n "$ns" addr add "10.244.$n.1/24" dev cni0
		ip -n "$ns" -6 addr add "$POD_NET6:$n::1/64" dev cni0 nodad
		ip -n "$ns" link set cni0 up

		for other in "${NODES[@]}"; do
			[[ $other != "$node" ]] || continue
			local m
			m=$(node_num "$other")
			step "routing 10.244.$m.0/24 and $POD_NET6:$m::/64 via $other in $ns"
			ip -n "$ns" route add "10.244.$m.0/24" via "$WIRE_NET.$m" dev wire
			ip -n "$ns" -6 route add "$POD_NET6:$m::/64" via "$WIRE_NET6:$m" dev wire
		done
	done
}

make_pod() {
	local pod=$1 node=${POD_NODE[$1]} ip=${POD_IP[$1]} ip6=${POD_IP6[$1]}
	local pns nns n
	pns=$(netns "$pod")
	nns=$(netns "$node")
	n=$(node_num "$node")

	if [[ -z $ip ]]; then
		step "creating pod $pod on $node: netns and cgroup only, for CNI plugins to connect"
		add_netns "$pod" "${V6_OFF[@]}"
		return
	fi
	local v6desc=", no IPv6"
	[[ -z $ip6 ]] || v6desc=" $ip6"
	step "creating pod $pod ($ip$v6desc) on $node"
	if [[ -n $ip6 ]]; then
		add_netns "$pod" "${V6_ON[@]}"
	else
		add_netns "$pod" "${V6_OFF[@]}"
	fi
	ip -n "$nns" link add "v-$pod" type veth peer name eth0 netns "$pns"
	ip -n "$nns" link set "v-$pod" master cni0
	ip -n "$nns" link set "v-$pod" up
	ip -n "$pns" addr add "$ip/24" dev eth0
	[[ -z $ip6 ]] || ip -n "$pns" -6 addr add "$ip6/64" dev eth0 nodad
	ip -n "$pns" link set eth0 up
	ip -n "$pns" route add default via "10.244.$n.1" dev eth0
	if [[ -n $ip6 ]]; then
		ip -n "$pns" -6 route add default via "$POD_NET6:$n::1" dev eth0
		[[ -n $(ip -n "$pns" -6 addr show dev lo to ::1/128) ]] ||
			die "pod $pod: lo has no ::1 although IPv6 is on in its netns"
	else
		[[ -z $(ip -n "$pns" -6 addr show) ]] ||
			die "pod $pod is nov6 but has IPv6 addresses: $(ip -n "$pns" -6 -br addr show | paste -sd' ')"
	fi
}

make_cgroups() {
	local cg2=$1 pod

	step "creating cgroups under $cg2/$PREFIX"
	mkdir "$cg2/$PREFIX"
	for pod in "${POD_NAMES[@]}"; do
		mkdir -p "$cg2/$PREFIX/${POD_NODE[$pod]}/$pod"
	done
	local node
	for node in "${NODES[@]}"; do
		mkdir -p "$cg2/$PREFIX/$node"
	done
}

# write_workloads lists the mesh pods only: a "nomesh" pod is absent, so neither the
# CA nor an agent knows it, and its netns is never enrolled. The connect hooks on the
# node's cgroup still run for its sockets but leave a netns they do not know alone.
write_workloads() {
	local pod
	step "writing $STATE/workloads.yaml"
	{
		printf '# Written by scripts/cluster.sh up for cluster %s.\n' "$PREFIX"
		printf 'trustDomain: %s\n' "$TRUST_DOMAIN"
		printf 'workloads:\n'
		for pod in "${POD_NAMES[@]}"; do
			((POD_MESH[$pod])) || continue
			printf '  - name: %s\n' "$pod"
			printf '    namespace: %s\n' "${POD_NS[$pod]}"
			printf '    serviceAccount: %s\n' "${POD_SA[$pod]}"
			printf '    node: %s\n' "${POD_NODE[$pod]}"
			printf '    ips: [%s]\n' "${POD_IP[$pod]}${POD_IP6[$pod]:+, ${POD_IP6[$pod]}}"
			printf '    netns: %s\n' "$(netns_path "$pod")"
			printf '    labels: {app: %s}\n' "$pod"
		done
	} >"$STATE/workloads.yaml.tmp"
	mv "$STATE/workloads.yaml.tmp" "$STATE/workloads.yaml"
}

# write_policy gives the agents their policy file: POLICY's content, or none at all.
write_policy() {
	step "writing $STATE/policy.yaml"
	if [[ -n ${POLICY:-} ]]; then
		cp "$POLICY" "$STATE/policy.yaml.tmp"
	else
		printf '# Policy of cluster %s; see the README, section Policy.\n' "$PREFIX" \
			>"$STATE/policy.yaml.tmp"
	fi
	mv "$STATE/policy.yaml.tmp" "$STATE/policy.yaml"
}

random_token() {
	od -An -N32 -tx1 /dev/urandom | tr -d ' \n'
}

# write_tokens gives each node a fresh bearer token: $STATE/node-tokens is the CA's
# view (one "<node> <token>" per line), $STATE/<node>/token the node's own copy.
write_tokens() {
	local node token
	step "writing node tokens"
	(
		umask 077
		printf '# node bearer-token, written by scripts/cluster.sh up\n' >"$STATE/node-tokens"
		for node in "${NODES[@]}"; do
			token=$(random_token)
			printf '%s %s\n' "$node" "$token" >>"$STATE/node-tokens"
			printf '%s\n' "$token" >"$STATE/$node/token"
		done
	)
}

mount_bpffs() {
	step "checking bpffs at $BPFFS"
	if ! awk -v m="$BPFFS" '$5 == m { for (i = 6; i <= NF; i++) if ($i == "-") {
		if ($(i + 1) == "bpf") found = 1; break } } END { exit !found }' /proc/self/mountinfo; then
		mkdir -p "$BPFFS"
		mount -t bpf bpf "$BPFFS"
	fi
	local node
	for node in "${NODES[@]}"; do
		mkdir -p "$BPFFS/$PREFIX/$node"
	done
}

start_ca() {
	step "starting veil-ca in $(netns node1) on $CA_ADDR"
	mkdir -p "$STATE/ca"
	chmod 0700 "$STATE/ca"
	# start-ca restarts the CA as up started it.
	[[ -f $STATE/ca.conf ]] ||
		printf 'CERT_TTL=%q\nCA_ARGS=%q\n' "$CERT_TTL" "${CA_ARGS:-}" >"$STATE/ca.conf"
	# setsid: the CA and agents outlive this script and must not get the
	# terminal's SIGINT or SIGHUP; down stops them by their recorded pids.
	# shellcheck disable=SC2086 # CA_ARGS is a list of extra flags
	setsid nsenter --net="$(netns_path node1)" -- "$BIN/veil-ca" serve \
		--dir "$STATE/ca" \
		--listen "$CA_ADDR" \
		--workloads "$STATE/workloads.yaml" \
		--node-tokens "$STATE/node-tokens" \
		--cert-ttl "$CERT_TTL" \
		${CA_ARGS:-} </dev/null >>"$STATE/ca.log" 2>&1 &
	record_pid "$STATE/ca.pid" $!

	step "waiting for veil-ca to serve TLS on $CA_ADDR (up to ${CA_TIMEOUT}s)"
	wait_for "veil-ca" "$CA_TIMEOUT" ca_ready || {
		show_log_tail "$STATE/ca.log"
		die "veil-ca did not become ready; log: $STATE/ca.log"
	}
}

# ca_ready is true once the bundle file (the roots agents trust, which veil-ca writes
# at start) exists and a TLS handshake verified against it completes; any HTTP answer
# will do. After a root rotation the CA's certificate chains to a root other than the
# first one, root.crt, so the bundle is what to check against.
ca_ready() {
	recorded_pid "$STATE/ca.pid" >/dev/null || {
		show_log_tail "$STATE/ca.log"
		die "veil-ca exited during startup; log: $STATE/ca.log"
	}
	[[ -s $STATE/ca/bundle.crt ]] || return 1
	in_ns node1 curl -s -o /dev/null --max-time 2 \
		--cacert "$STATE/ca/bundle.crt" \
		--resolve "veil-ca.veil-system.svc:${CA_ADDR##*:}:${CA_ADDR%:*}" \
		"https://veil-ca.veil-system.svc:${CA_ADDR##*:}/"
}

start_agent() {
	local node=$1 cg2=$2
	step "starting veil-agent on $node"
	# shellcheck disable=SC2086 # AGENT_ARGS is a list of extra flags
	setsid nsenter --net="$(netns_path "$node")" -- "$BIN/veil-agent" \
		--node "$node" \
		--workloads "$STATE/workloads.yaml" \
		--policy "$STATE/policy.yaml" \
		--cgroup "$cg2/$PREFIX/$node" \
		--bpffs "$BPFFS/$PREFIX/$node" \
		--admin-socket "$STATE/$node/agent.sock" \
		--ca-addr "$CA_ADDR" \
		--ca-root "$STATE/ca/bundle.crt" \
		--node-token-file "$STATE/$node/token" \
		--log-level "$LOG_LEVEL" \
		${LOG_FORMAT:+--log-format "$LOG_FORMAT"} \
		${AGENT_ARGS:-} </dev/null >>"$STATE/$node/agent.log" 2>&1 &
	record_pid "$STATE/$node/agent.pid" $!
}

wait_agent() {
	local node=$1 want
	want=$(mesh_pods_on "$node" | sort | paste -sd' ')
	step "waiting for $node's agent to enrol: ${want:-no pods} (up to ${AGENT_TIMEOUT}s)"
	wait_for "$node's agent" "$AGENT_TIMEOUT" agent_ready "$node" "$want" || {
		show_log_tail "$STATE/$node/agent.log"
		log "last status answer: $(agent_status_json "$node" 2>&1 | head -c 2000)"
		die "$node's agent did not enrol all its workloads; log: $STATE/$node/agent.log"
	}
}

agent_status_json() {
	"$BIN/agentctl" --socket "$STATE/$1/agent.sock" status -o json
}

# agent_ready is true once agentctl answers and every pod of the node is enrolled.
agent_ready() {
	local node=$1 want=$2 json got
	recorded_pid "$STATE/$node/agent.pid" >/dev/null || {
		show_log_tail "$STATE/$node/agent.log"
		die "$node's agent exited during startup; log: $STATE/$node/agent.log"
	}
	json=$(agent_status_json "$node" 2>/dev/null) || return 1
	got=$(enrolled_names "$json" | sort -u | paste -sd' ')
	[[ $got == "$want" ]]
}

# enrolled_names prints the names of enrolled workloads in an `agentctl status -o
# json` answer ({"workloads": [{"name": ..., "enrolled": true, ...}]}). Without jq,
# a rougher reading of the same that expects "name" and "enrolled" in the same
# innermost object.
enrolled_names() {
	if command -v jq >/dev/null; then
		jq -r '.workloads[]? | select(.enrolled == true) | .name' <<<"$1" 2>/dev/null
		return 0
	fi
	tr -d '\n' <<<"$1" | tr '{}' '\n' |
		grep -E '"enrolled": *true' |
		sed -n 's/.*"name": *"\([^"]*\)".*/\1/p'
}

print_pods() {
	local pod
	printf '%-14s %-6s %-12s %-19s %-16s %s\n' POD NODE IP IP6 NAMESPACE SERVICEACCOUNT
	for pod in "${POD_NAMES[@]}"; do
		printf '%-14s %-6s %-12s %-19s %-16s %-16s %s\n' "$pod" "${POD_NODE[$pod]}" \
			"${POD_IP[$pod]}" "$(ip6_note "$pod")" "${POD_NS[$pod]}" "${POD_SA[$pod]}" \
			"$(mesh_note "$pod")"
	done | sed 's/ *$//'
}

# --- down ---------------------------------------------------------------------

# cmd_down removes everything up recorded. Every step tolerates a missing piece,
# so it is safe after a half-finished up and safe to run twice.
cmd_down() {
	validate_prefix
	[[ $(id -u) -eq 0 ]] || die "down needs root"
	set +e
	trap - ERR
	local cg2 node pod name
	cg2=$(cgroup_root)
	# load_topology exits on a bad file; try it in a subshell first so that a
	# broken topology still lets down remove what up recorded.
	if (load_topology) 2>/dev/null; then
		load_topology
	else
		warn "could not read the topology; removing only recorded namespaces"
	fi

	for node in "${NODES[@]}"; do
		stop_recorded "$STATE/$node/agent.pid" "veil-agent on $node"
		stop_recorded "$STATE/$node/agent.old.pid" "draining veil-agent on $node"
	done
	stop_recorded "$STATE/ca.pid" "veil-ca"

	kill_cgroup_tree "$cg2/$PREFIX"

	# Namespaces to remove: the ones up recorded, plus the ones the topology
	# names, in case up was interrupted between creating and recording one.
	local -A seen=()
	local names=()
	if [[ -f $STATE/netns ]]; then
		while read -r name; do names+=("$name"); done <"$STATE/netns"
	fi
	for node in "${NODES[@]}" "${POD_NAMES[@]}"; do
		names+=("$(netns "$node")")
	done

	for name in "${names[@]}"; do
		[[ -z ${seen[$name]:-} && -e /run/netns/$name ]] || continue
		seen[$name]=1
		kill_netns_procs "$name"
	done

	if [[ -d $BPFFS/$PREFIX ]]; then
		log "removing bpffs pins under $BPFFS/$PREFIX"
		rm -rf -- "${BPFFS:?}/$PREFIX" || warn "could not remove $BPFFS/$PREFIX"
	fi

	if [[ -d $cg2/$PREFIX ]]; then
		log "removing cgroups under $cg2/$PREFIX"
		find "$cg2/$PREFIX" -depth -type d -exec rmdir {} + 2>/dev/null
		[[ ! -d $cg2/$PREFIX ]] || warn "could not remove every cgroup under $cg2/$PREFIX"
	fi

	for name in "${!seen[@]}"; do
		log "deleting netns $name"
		ip netns del "$name" || warn "could not delete netns $name"
	done

	if [[ -f $STATE/$MARKER ]]; then
		log "removing state dir $STATE"
		rm -rf -- "$STATE"
	elif [[ -e $STATE ]]; then
		warn "$STATE was not made by this script (no $MARKER); leaving it"
	fi
	rmdir /run/veil 2>/dev/null
	log "cluster '$PREFIX' is down"
	return 0
}

# kill_cgroup_tree ends every process in the cluster's cgroup subtree: processes
# that `exec` put into pods. cgroup.kill (Linux 5.14) does it in one write and
# also catches processes forked while we look.
kill_cgroup_tree() {
	local root=$1 i
	[[ -d $root ]] || return 0
	if ! tree_has_procs "$root"; then
		return 0
	fi

	log "killing processes left in pod cgroups under $root"
	if [[ -e $root/cgroup.kill ]]; then
		echo 1 >"$root/cgroup.kill"
	else
		local pid
		while read -r pid; do
			kill -KILL "$pid" 2>/dev/null
		done < <(find "$root" -name cgroup.procs -exec cat {} +)
	fi
	for ((i = 0; i < 50; i++)); do
		tree_has_procs "$root" || return 0
		sleep 0.1
	done
	warn "processes still in $root after SIGKILL"
}

tree_has_procs() {
	[[ -n $(find "$1" -name cgroup.procs -exec cat {} + 2>/dev/null) ]]
}

# kill_netns_procs ends processes still inside one of our namespaces that no pid
# file or pod cgroup accounts for (for example a tcpdump started in a node with
# `exec node1`). Left alive they would keep the namespace and its links around.
kill_netns_procs() {
	local name=$1 pid pids
	pids=$(ip netns pids "$name" 2>/dev/null)
	[[ -n $pids ]] || return 0
	for pid in $pids; do
		warn "process $pid ($(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | head -c 80)) still in netns $name; stopping it"
		stop_pid "$pid" "process in $name" &
	done
	wait
}

# --- exec, status, logs, ip -----------------------------------------------------

cmd_exec() {
	(($# >= 1)) || usage
	local target=$1
	shift
	[[ ${1:-} != -- ]] || shift
	(($# >= 1)) || die "exec $target: no command given"
	validate_prefix

	if is_node "$target"; then
		[[ -e $(netns_path "$target") ]] || die "netns $(netns "$target") not found; is cluster '$PREFIX' up?"
		exec nsenter --net="$(netns_path "$target")" -- "$@"
	fi

	load_topology
	[[ -n ${POD_NODE[$target]:-} ]] || die "no pod or node named '$target' in cluster '$PREFIX'"
	[[ -e $(netns_path "$target") ]] || die "netns $(netns "$target") not found; is cluster '$PREFIX' up?"
	local cg
	cg=$(cgroup_root)/$PREFIX/${POD_NODE[$target]}/$target
	[[ -d $cg ]] || die "cgroup $cg not found; is cluster '$PREFIX' up?"

	# Join the pod's cgroup first: the agent's connect hooks are attached to the
	# node's cgroup subtree, and exec keeps this pid, so cmd starts inside it.
	echo "$BASHPID" >"$cg/cgroup.procs"
	# Only the network namespace is entered: `ip netns exec` would also give cmd
	# a fresh /sys that hides bpffs and the cgroup mounts.
	exec nsenter --net="$(netns_path "$target")" -- "$@"
}

cmd_status() {
	validate_prefix
	local node pid cg2 pod
	cg2=$(cgroup_root)
	if [[ ! -e $(netns_path node1) ]]; then
		log "cluster '$PREFIX' is down"
		exit 1
	fi
	load_topology
	printf 'cluster %s  state %s  trust domain %s\n\n' "$PREFIX" "$STATE" "$TRUST_DOMAIN"

	if pid=$(recorded_pid "$STATE/ca.pid"); then
		printf 'ca     running  pid %-8s %s  (log: %s)\n' "$pid" "$CA_ADDR" "$STATE/ca.log"
	else
		printf 'ca     not running\n'
	fi
	for node in "${NODES[@]}"; do
		if pid=$(recorded_pid "$STATE/$node/agent.pid"); then
			printf '%-6s running  pid %-8s agent %s\n' "$node" "$pid" "$STATE/$node/agent.sock"
		else
			printf '%-6s agent not running\n' "$node"
		fi
	done

	printf '\n%-14s %-6s %-12s %-19s %-16s %-16s %s\n' POD NODE IP IP6 NAMESPACE SERVICEACCOUNT PROCS
	for pod in "${POD_NAMES[@]}"; do
		printf '%-14s %-6s %-12s %-19s %-16s %-16s %-5s %s\n' "$pod" "${POD_NODE[$pod]}" \
			"${POD_IP[$pod]}" "$(ip6_note "$pod")" "${POD_NS[$pod]}" "${POD_SA[$pod]}" \
			"$(wc -l <"$cg2/$PREFIX/${POD_NODE[$pod]}/$pod/cgroup.procs" 2>/dev/null || echo -)" \
			"$(mesh_note "$pod")"
	done | sed 's/ *$//'

	for node in "${NODES[@]}"; do
		recorded_pid "$STATE/$node/agent.pid" >/dev/null || continue
		printf '\n== agentctl status (%s) ==\n' "$node"
		"$BIN/agentctl" --socket "$STATE/$node/agent.sock" status ||
			warn "agentctl status on $node failed"
	done
	return 0
}

cmd_logs() {
	(($# >= 1)) || usage
	local file
	case $1 in
	ca) file=$STATE/ca.log ;;
	*)
		is_node "$1" || die "logs: want one of ca ${NODES[*]}, got '$1'"
		file=$STATE/$1/agent.log
		;;
	esac
	[[ -e $file ]] || die "no log at $file"
	if [[ ${2:-} == -f ]]; then
		exec tail -n +1 -F "$file"
	fi
	cat "$file"
}

# node_arg checks that $1 names a node of a running cluster.
node_arg() {
	is_node "${1:-}" || die "'${1:-}' is not a node; nodes are: ${NODES[*]}"
	[[ -e $STATE/$MARKER ]] || die "cluster '$PREFIX' is not up ($STATE)"
}

cmd_stop_agent() {
	(($# == 1)) || usage
	node_arg "$1"
	recorded_pid "$STATE/$1/agent.pid" >/dev/null || die "$1's agent is not running"
	stop_recorded "$STATE/$1/agent.pid" "veil-agent on $1"
}

cmd_start_agent() {
	(($# == 1)) || usage
	node_arg "$1"
	load_topology
	! recorded_pid "$STATE/$1/agent.pid" >/dev/null || die "$1's agent is already running"
	start_agent "$1" "$(cgroup_root)"
	wait_agent "$1"
}

# cmd_upgrade_agent starts a new agent beside the running one, as a DaemonSet rollout
# with maxSurge does. The new one asks the old one for its listeners; the old one drains
# its open connections and exits by itself (see --drain-timeout).
cmd_upgrade_agent() {
	(($# == 1)) || usage
	node_arg "$1"
	load_topology
	recorded_pid "$STATE/$1/agent.pid" >/dev/null || die "$1's agent is not running; use start-agent"
	mv "$STATE/$1/agent.pid" "$STATE/$1/agent.old.pid"
	start_agent "$1" "$(cgroup_root)"
	wait_agent "$1"
}

cmd_stop_ca() {
	(($# == 0)) || usage
	[[ -e $STATE/$MARKER ]] || die "cluster '$PREFIX' is not up ($STATE)"
	recorded_pid "$STATE/ca.pid" >/dev/null || die "veil-ca is not running"
	stop_recorded "$STATE/ca.pid" "veil-ca"
}

cmd_start_ca() {
	(($# == 0)) || usage
	[[ -e $STATE/$MARKER ]] || die "cluster '$PREFIX' is not up ($STATE)"
	! recorded_pid "$STATE/ca.pid" >/dev/null || die "veil-ca is already running"
	# shellcheck source=/dev/null # written by start_ca
	[[ ! -f $STATE/ca.conf ]] || source "$STATE/ca.conf"
	start_ca
}

# cmd_ca runs veil-ca on the cluster's CA directory, with the cluster's certificate
# lifetime, so that "ca root activate" warns about a step taken too soon.
cmd_ca() {
	(($# >= 1)) || usage
	[[ -e $STATE/$MARKER ]] || die "cluster '$PREFIX' is not up ($STATE)"
	# shellcheck source=/dev/null # written by start_ca
	[[ ! -f $STATE/ca.conf ]] || source "$STATE/ca.conf"
	VEIL_CA_DIR=$STATE/ca VEIL_CA_CERT_TTL=$CERT_TTL "$BIN/veil-ca" "$@" || exit
}

cmd_ip() {
	(($# == 1)) || usage
	load_topology
	[[ -n ${POD_NODE[$1]:-} ]] || die "no pod named '$1'"
	[[ -n ${POD_IP[$1]} ]] || die "pod '$1' is nonet: its address is whatever its CNI plugins gave it"
	printf '%s\n' "${POD_IP[$1]}"
}

cmd_ip6() {
	(($# == 1)) || usage
	load_topology
	[[ -n ${POD_NODE[$1]:-} ]] || die "no pod named '$1'"
	[[ -n ${POD_IP6[$1]} ]] || die "pod '$1' has no IPv6 address (it is nov6, or the cluster predates IPv6)"
	printf '%s\n' "${POD_IP6[$1]}"
}

main() {
	(($# >= 1)) || usage
	local cmd=$1
	shift
	case $cmd in
	up) cmd_up "$@" ;;
	down) cmd_down "$@" ;;
	exec) cmd_exec "$@" ;;
	status) cmd_status "$@" ;;
	logs) cmd_logs "$@" ;;
	ip) cmd_ip "$@" ;;
	ip6) cmd_ip6 "$@" ;;
	stop-agent) cmd_stop_agent "$@" ;;
	start-agent) cmd_start_agent "$@" ;;
	upgrade-agent) cmd_upgrade_agent "$@" ;;
	stop-ca) cmd_stop_ca "$@" ;;
	start-ca) cmd_start_ca "$@" ;;
	ca) cmd_ca "$@" ;;
	-h | --help | help) usage ;;
	*) log "unknown command '$cmd'"; usage ;;
	esac
}

main "$@"

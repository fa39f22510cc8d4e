# harness.sh: what scripts/bench.sh and scripts/loadtest.sh share. Sourced, not run: the
# script that sources it sets REPO, GO, STATE and TOOL (its name in error lines) first.
# shellcheck shell=bash

START=$SECONDS
log() { printf '[%4ds] %s\n' "$((SECONDS - START))" "$*" >&2; }
warn() { printf '[%4ds] warning: %s\n' "$((SECONDS - START))" "$*" >&2; }
die() { printf '%s: error: %s\n' "$TOOL" "$*" >&2; exit 1; }

# usage prints the running script's header comment, up to its set line.
usage() {
	sed -n '2,/^set -Eeuo/{/^set/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[-1]}" >&2
	exit 2
}

commit_label() {
	git -C "$REPO" describe --always --dirty 2>/dev/null || echo unknown
}

# build_veil builds veil-agent, veil-ca and agentctl into $REPO/bin, stamped with the
# commit and static as make build makes them, unless BIN already names binaries to use.
build_veil() {
	if [[ -z ${BIN:-} ]]; then
		BIN=$REPO/bin
		log "building veil into $BIN"
		(cd "$REPO" && CGO_ENABLED=0 "$GO" build -ldflags "-X main.version=$(commit_label)" -o "$BIN/" ./cmd/...)
	fi
	export BIN
}

# Background processes the script started, by pid: stop_bg ends them, in cleanup too.
BG_PIDS=()

stop_bg() {
	local pid
	for pid in "${BG_PIDS[@]}"; do
		kill -TERM "$pid" 2>/dev/null
	done
	for pid in "${BG_PIDS[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
	BG_PIDS=()
}

agent_pid() { awk '{ print $1 }' "$STATE/$1/agent.pid"; }

# listening says whether something listens on port in pod's namespace.
listening() {
	[[ -n $(nsenter --net="/run/netns/$PREFIX-$1" -- ss -Hltn "sport = :$2") ]]
}

# wait_listening waits up to 10 s for a server in pod to listen on port; what names the
# log to read if it never does.
wait_listening() {
	local pod=$1 port=$2 what=$3 i
	for ((i = 0; i < 100; i++)); do
		listening "$pod" "$port" && return 0
		sleep 0.1
	done
	die "nothing listens on $pod:$port; see $what"
}

#!/usr/bin/env bash
# install-deps.sh: make a Debian machine ready to build, test and demo veil.
#
# Idempotent: a machine that already has everything is left untouched and no
# package index is downloaded. What it does when something is missing:
#   - apt-get installs the missing Debian packages (after one `apt-get update`);
#   - mounts bpffs at /sys/fs/bpf, where the agent pins its programs and links
#     so that they outlive the agent's file descriptors.
#   - builds kube-apiserver, etcd and kubectl for the tests that need a real API
#     server (scripts/kube-bins.sh: about 12 minutes the first time, then cached by
#     version in /var/cache/veil/kube and skipped in well under a second).
# Go is not installed from apt: Debian 12 ships Go 1.19 and veil needs the
# version named in go.mod, which these machines keep in /usr/local/go.
set -euo pipefail

# The Debian packages veil's scripts, tests and demo use, and why.
PACKAGES=(
	iproute2     # ip: namespaces, veths, the bridge, routes
	iputils-ping # ping: connectivity checks in tests and by hand
	iptables     # iptables-nft(-restore): the egress guard's NFQUEUE rules in each pod
	iperf3       # demo and benchmark traffic
	curl         # demo traffic and the CA readiness probe
	tcpdump      # the demo's proof that the wire carries no plaintext
	clang        # `make generate` only: compiles bpf/*.c
	llvm         # `make generate` only: llvm-strip for bpf2go
	libbpf-dev   # `make generate` only: bpf_helpers.h and friends
	python3      # the demo's HTTP server
	procps       # sysctl: ip_forward in node namespaces
	util-linux   # nsenter, setsid
	jq           # reading `agentctl status -o json` in scripts
	stunnel4     # `make bench` only: the classic TLS tunnel veil is compared with
	gnuplot-nox  # `make bench` only: the results chart
	openssl      # `make bench` only: stunnel's throwaway certificate
	containernetworking-plugins # bridge, host-local: the CNI chain the veil-cni test runs
)

log() { printf 'install-deps: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

is_installed() {
	[[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]
}

need_root() {
	[[ $(id -u) -eq 0 ]] || die "$1 needs root; run this script as root"
}

install_packages() {
	local missing=() pkg

	for pkg in "${PACKAGES[@]}"; do
		is_installed "$pkg" || missing+=("$pkg")
	done
	if ((${#missing[@]} == 0)); then
		log "all Debian packages present"
		return
	fi

	need_root "installing ${missing[*]}"
	log "installing missing packages: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q || die "apt-get update failed"
	apt-get install -y -q --no-install-recommends "${missing[@]}" ||
		die "apt-get install ${missing[*]} failed"
}

bpffs_mounted() {
	# Field 5 of mountinfo is the mount point, the field after " - " the type.
	awk '$5 == "/sys/fs/bpf" { for (i = 6; i <= NF; i++) if ($i == "-") {
		if ($(i + 1) == "bpf") found = 1; break } }
		END { exit !found }' /proc/self/mountinfo
}

mount_bpffs() {
	if bpffs_mounted; then
		log "bpffs already mounted at /sys/fs/bpf"
		return
	fi

	need_root "mounting bpffs"
	mkdir -p /sys/fs/bpf
	mount -t bpf bpf /sys/fs/bpf || die "mounting bpffs at /sys/fs/bpf failed"
	log "mounted bpffs at /sys/fs/bpf"
}

check_go() {
	local gobin want have

	export PATH="/usr/local/go/bin:$PATH"
	gobin=$(command -v go) ||
		die "go not found; install the Go release named in go.mod under /usr/local/go"

	want=$(awk '$1 == "go" { print $2; exit }' "$(dirname "$0")/../go.mod" 2>/dev/null || true)
	have=$("$gobin" env GOVERSION)
	log "using $gobin ($have; go.mod asks for go ${want:-?})"
}

# kube_bins needs Go and flock (util-linux), so it runs after both are checked. A failed
# build is not the end of the install: the tests that need an API server then skip, each
# with a line saying to run scripts/kube-bins.sh, and everything else still runs.
kube_bins() {
	"$(dirname "$0")/kube-bins.sh" >/dev/null ||
		log "warning: building the Kubernetes test binaries failed (see above); the tests" \
			"that need an API server will be skipped until scripts/kube-bins.sh succeeds"
}

install_packages
mount_bpffs
check_go
kube_bins

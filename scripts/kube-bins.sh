#!/usr/bin/env bash
# kube-bins.sh: build kube-apiserver, kubectl and etcd at pinned versions for the tests
# that need a real Kubernetes API server (internal/kubetest), and cache them by version.
#
#   scripts/kube-bins.sh          build what is missing, then print where the binaries are
#   scripts/kube-bins.sh --print  only print the directories (exit 1 if one is missing)
#
# Nothing is downloaded but Go modules: each program is built from the module proxy in a
# throwaway module in a temporary directory. A cold build costs about 23 CPU minutes
# (about 12 minutes on two idle cores, most of it kube-apiserver and kubectl) and up to
# 2.4 GB of memory while kube-apiserver links; the binaries take 200 MB.
#
# Layout: $VEIL_KUBE_CACHE/<name>-<version>/<name>, for example
# /var/cache/veil/kube/kube-apiserver-v1.37.2/kube-apiserver. A directory appears only once
# its binary is complete, so a binary that is there is used as is and a second run takes
# a fraction of a second. To rebuild, remove the directory.
#
# Environment:
#   VEIL_KUBE_CACHE  where the binaries are kept (default /var/cache/veil/kube); the tests
#                    read the same variable
#   KEEP_BUILD=1     keep the temporary modules and build cache for inspection
#
# The Go build cache and module cache of the build live in a temporary directory under
# VEIL_KUBE_CACHE and are deleted afterwards (several GB): the binaries are what is
# worth keeping, and no other project's Go caches are touched.
set -euo pipefail

# Pinned versions. internal/kubetest names the same ones; its tests check that they agree.
# client-go in go.mod is v0.37.2, the staging release that pairs with kube v1.37.2.
KUBE_VERSION=v1.37.2
STAGING_VERSION=v0.37.2
ETCD_VERSION=v3.6.17

CACHE=${VEIL_KUBE_CACHE:-/var/cache/veil/kube}
export PATH="/usr/local/go/bin:$PATH"

log() { printf 'kube-bins: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

dir_of() { printf '%s/%s-%s' "$CACHE" "$1" "$2"; }

have() { [[ -x $(dir_of "$1" "$2")/$1 ]]; }

print_dirs() {
	local missing=0 name version
	while read -r name version; do
		if have "$name" "$version"; then
			printf '%s\n' "$(dir_of "$name" "$version")/$name"
		else
			log "missing: $(dir_of "$name" "$version")/$name"
			missing=1
		fi
	done <<-EOF
		kube-apiserver $KUBE_VERSION
		kubectl $KUBE_VERSION
		etcd $ETCD_VERSION
	EOF
	return "$missing"
}

# Clean up the build directory however the script ends. WORK is set once it exists;
# step is when the build under way started, for the progress lines.
WORK=
step=$SECONDS
cleanup() {
	[[ -n $WORK && -d $WORK ]] || return 0
	if [[ ${KEEP_BUILD:-} == 1 ]]; then
		log "KEEP_BUILD=1: leaving $WORK"
		return 0
	fi
	# The module cache is read-only on purpose; make it writable to delete it.
	chmod -R u+w "$WORK" 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT

# go_env runs go with the caches, toolchain and flags of these builds, never the
# caller's: GOFLAGS from the environment (-mod=vendor, -race) would change the result.
go_env() {
	env GOCACHE="$WORK/gocache" GOMODCACHE="$WORK/gomodcache" GOPATH="$WORK/gopath" \
		GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0 GOWORK=off "$@"
}

# version_ldflags stamps the version that kube-apiserver serves at /version and kubectl
# prints, as the Kubernetes release build does (hack/lib/version.sh); unstamped, both
# say v0.0.0-master.
version_ldflags() {
	local minor=${KUBE_VERSION#v1.}
	minor=${minor%%.*}
	local pkg flags="-s -w"
	for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		flags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
		flags+=" -X $pkg.gitTreeState=clean"
	done
	printf '%s' "$flags"
}

# install_into moves the binaries built in $1 into their cache directories, each with a
# rename, so that a directory that exists always holds a whole binary.
install_into() {
	local out=$1 version=$2 name
	shift 2
	for name in "$@"; do
		local dst stage
		dst=$(dir_of "$name" "$version")
		stage=$(mktemp -d "$CACHE/.stage-$name.XXXXXX")
		mv "$out/$name" "$stage/$name"
		chmod 0755 "$stage" "$stage/$name"
		rm -rf "$dst"
		mv "$stage" "$dst"
		log "installed $dst/$name ($(du -h "$dst/$name" | cut -f1), $((SECONDS - step)) s)"
	done
}

# build_kube builds kube-apiserver and kubectl from k8s.io/kubernetes, which can be
# required as a module only when every staging module (k8s.io/api, k8s.io/client-go, ...)
# is replaced by its published release: its own go.mod points them at ./staging.
# Those replace lines are read from that go.mod, so they follow KUBE_VERSION.
build_kube() {
	local mod=$WORK/kube names=()
	have kube-apiserver "$KUBE_VERSION" || names+=(kube-apiserver)
	have kubectl "$KUBE_VERSION" || names+=(kubectl)
	((${#names[@]} > 0)) || { log "kube-apiserver and kubectl $KUBE_VERSION: cached"; return; }

	step=$SECONDS
	log "building ${names[*]} $KUBE_VERSION (about 10 minutes on two idle cores)"
	mkdir -p "$mod/out"
	cd "$mod"
	go_env go mod init veil.local/kube-bins >/dev/null 2>&1
	local gomod
	gomod=$(go_env go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" |
		sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
	[[ -f $gomod ]] || die "downloading k8s.io/kubernetes@$KUBE_VERSION: no go.mod"

	# sample-apiserver, sample-cli-plugin and sample-controller are examples that the
	# proxy does not always serve and that no program built here imports.
	local staging
	staging=$(awk '$2 == "=>" && $3 ~ /^\.\/staging\// { print $1 }' "$gomod" |
		grep -v '^k8s.io/sample-')
	[[ -n $staging ]] || die "no staging replace lines in k8s.io/kubernetes@$KUBE_VERSION's go.mod"
	{
		printf 'require k8s.io/kubernetes %s\n' "$KUBE_VERSION"
		local m
		for m in $staging; do
			printf 'replace %s => %s %s\n' "$m" "$m" "$STAGING_VERSION"
		done
	} >>go.mod

	local pkgs=() n
	for n in "${names[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$n"); done
	go_env go build -trimpath -ldflags "$(version_ldflags)" -o out/ "${pkgs[@]}"
	install_into out "$KUBE_VERSION" "${names[@]}"
	rm -rf "$WORK/gocache"
}

# build_etcd builds etcd from go.etcd.io/etcd/server/v3 (whose main package is the etcd
# server) with its sibling modules pinned to the same release.
build_etcd() {
	local mod=$WORK/etcd
	have etcd "$ETCD_VERSION" && { log "etcd $ETCD_VERSION: cached"; return; }

	step=$SECONDS
	log "building etcd $ETCD_VERSION (about 2 minutes)"
	mkdir -p "$mod/out"
	cd "$mod"
	go_env go mod init veil.local/etcd-bin >/dev/null 2>&1
	local m
	for m in server/v3 api/v3 client/pkg/v3 client/v3 pkg/v3; do
		printf 'require go.etcd.io/etcd/%s %s\n' "$m" "$ETCD_VERSION" >>go.mod
	done
	go_env go build -trimpath -ldflags "-s -w" -o out/etcd go.etcd.io/etcd/server/v3
	install_into out "$ETCD_VERSION" etcd
	rm -rf "$WORK/gocache"
}

main() {
	case ${1:-} in
	--print)
		print_dirs
		return
		;;
	"") ;;
	*) die "unknown argument $1; usage: $0 [--print]" ;;
	esac

	if print_dirs >/dev/null 2>&1; then
		log "all cached in $CACHE"
		print_dirs
		return
	fi

	command -v go >/dev/null || die "go not found; install Go in /usr/local/go"
	command -v flock >/dev/null || die "flock not found (util-linux; scripts/install-deps.sh)"
	mkdir -p "$CACHE"

	# One build at a time per cache: a second caller waits, then finds the binaries.
	exec {lock}>"$CACHE/.lock"
	flock "$lock"

	local start=$SECONDS
	WORK=$(mktemp -d "$CACHE/.build.XXXXXX")
	build_etcd
	build_kube
	cleanup
	WORK=
	log "done in $((SECONDS - start)) s; disk used by $CACHE: $(du -sh "$CACHE" | cut -f1)"
	print_dirs
}

main "$@"

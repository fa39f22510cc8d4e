# veil: build, test and demo. `make help` lists the targets.
#
# Most targets need root: the local cluster and the privileged tests create
# network namespaces, cgroups and BPF programs.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := build

# Go lives in /usr/local/go on the build machines; a login shell may not have it.
export PATH := /usr/local/go/bin:$(PATH)

GO      ?= go
BIN     := $(CURDIR)/bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

# Tests that drive the local cluster find the binaries and scripts here.
export VEIL_BIN     := $(BIN)
export VEIL_SCRIPTS := $(CURDIR)/scripts

.PHONY: help build generate demo bench loadtest test fuzz vet lint deps kube-bins clean cluster-up cluster-down

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{ printf "  %-13s %s\n", $$1, $$2 }'

# Static binaries (no cgo), as the Dockerfile builds them, so that what is tested and
# measured is what ships; nothing in veil calls C.
build: ## build veil-agent, veil-ca and agentctl into bin/
	CGO_ENABLED=0 $(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/ ./cmd/...

generate: ## regenerate bpf2go output from bpf/*.c (needs clang)
	@command -v clang >/dev/null || { echo "generate needs clang: run scripts/install-deps.sh" >&2; exit 1; }
	$(GO) generate ./bpf/...

deps: ## install missing Debian packages and mount bpffs (idempotent)
	scripts/install-deps.sh

kube-bins: ## build kube-apiserver, etcd and kubectl for the API server tests (cached by version)
	scripts/kube-bins.sh

demo: deps build ## run the two-node demo and prove the wire carries no plaintext
	BIN=$(BIN) scripts/demo.sh

bench: deps build ## benchmark veil against plain pod-to-pod and stunnel (ARGS=--quick: under 2 min)
	BIN=$(BIN) scripts/bench.sh $(ARGS)

loadtest: deps build ## 10,000 held conns, 10 min of churn: do agents give fds, goroutines, memory back? (~17 min; ARGS=--quick: ~5)
	BIN=$(BIN) scripts/loadtest.sh $(ARGS)

vet:
	$(GO) vet ./...

test: deps build lint ## gofmt and go vet, every test (privileged ones when root), then fuzzing
	$(GO) test -count=1 -timeout 30m ./...
	$(MAKE) --no-print-directory fuzz

# Every parser that takes input from outside: what peers send to 15008, what nodes send
# to the CA, and the files operators write. Crashers found land in testdata/fuzz and
# then run with every `go test`.
FUZZ_TARGETS := ./tlsengine:FuzzHBONEServer ./ca:FuzzCheckCSR ./ca:FuzzParseNodeTokens \
	./agent/workloadfile:FuzzParse ./agent/policy:FuzzParse ./agent:FuzzPolicyCheck
# A count of executions, not a duration: with a duration, Go 1.26's fuzz coordinator can
# report its own deadline as a failure when a worker is slow to stop on a busy machine
# (golang/go#75804, fixed in Go 1.27). 20,000 inputs take a few seconds per target here.
FUZZTIME ?= 20000x

fuzz: ## run each fuzz target for FUZZTIME (default 20000x: that many inputs)
	@for t in $(FUZZ_TARGETS); do \
		echo "fuzzing $${t#*:} in $${t%%:*} for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$${t#*:}$$" -fuzztime $(FUZZTIME) "$${t%%:*}" || exit 1; \
	done

lint: vet ## gofmt must list nothing, and go vet must pass
	@out=$$(gofmt -l .); \
	if [[ -n $$out ]]; then echo "gofmt -l lists files that need formatting:"; echo "$$out"; exit 1; fi

cluster-up: build ## bring the local cluster up (scripts/cluster.sh up)
	BIN=$(BIN) scripts/cluster.sh up

cluster-down: ## tear the local cluster down (scripts/cluster.sh down)
	BIN=$(BIN) scripts/cluster.sh down

clean: ## remove build output
	rm -rf $(BIN)

# syntax=docker/dockerfile:1
# veil's images, two targets of one build:
#
#   docker build --target agent -t veil-agent:latest .   veil-agent, agentctl and veil-cni,
#                                                        with iptables and iproute2
#   docker build --target ca    -t veil-ca:latest .      veil-ca alone, as a non-root user
#
# Two images rather than one: the CA holds the root key and needs no iptables, no
# iproute2 and no root, so its image carries none of them; the agent image carries
# agentctl so that `kubectl exec ds/veil-agent -- agentctl status` works on any node.
# Both come from one builder stage, so one `go build` serves both.
#
# Plain Dockerfile syntax (no RUN --mount), so buildah and kaniko build it as docker does.

ARG GO_VERSION=1.26
ARG DEBIAN=bookworm

FROM golang:${GO_VERSION}-${DEBIAN} AS build
WORKDIR /src
ENV CGO_ENABLED=0 GOFLAGS=-trimpath
# Modules first: this layer is reused until go.mod or go.sum change.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
# bpf2go's output (.go and .o) is committed, so no clang is needed here.
RUN go build -ldflags "-s -w -X main.version=${VERSION}" -o /out/ \
	./cmd/veil-agent ./cmd/veil-ca ./cmd/agentctl ./cmd/veil-cni

FROM debian:${DEBIAN}-slim AS agent
# iptables: iptables-nft and iptables-nft-restore (and the ip6tables ones), which the
# agent's egress guard runs inside each pod's network namespace. iproute2: ip and ss, to
# look at a node's pods and sockets when something is wrong.
RUN apt-get update \
	&& apt-get install -y --no-install-recommends iptables iproute2 \
	&& rm -rf /var/lib/apt/lists/*
# veil-cni: the DaemonSet's install-cni container copies it onto the node.
COPY --from=build /out/veil-agent /out/agentctl /out/veil-cni /usr/local/bin/
# Root: the agent runs privileged (deploy/agent.yaml says why).
ENTRYPOINT ["/usr/local/bin/veil-agent"]

FROM debian:${DEBIAN}-slim AS ca
COPY --from=build /out/veil-ca /usr/local/bin/veil-ca
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/veil-ca"]
CMD ["serve"]

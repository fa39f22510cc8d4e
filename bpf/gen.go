package bpf

// The generated .go and .o files are committed so that building veil needs no clang; run
// `make generate` after changing a C file.
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -type netns_cfg -type orig_dst -type conn_key -type tuple -type listener_key -type lpm_key -type port_key -type addr Redirect redirect.c

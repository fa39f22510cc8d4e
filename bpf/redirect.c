//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// Connection steering for enrolled pods.
//
// Outbound: cgroup/connect4 and cgroup/connect6 rewrite a TCP connect() from an enrolled
// network namespace to the agent's outbound listener on loopback inside that namespace, and
// remember where the connection was going, keyed by socket cookie. The sockops program runs
// when the SYN is about to leave (the source port is known by then) and moves that record to
// a key the agent can rebuild from the accepted connection: {netns cookie, client addr, port}.
//
// Inbound: sk_lookup, attached to each enrolled namespace, hands TCP connections that arrive
// from outside the pod to the agent's listeners in that namespace: the HBONE port to the mTLS
// listener, every other port to the plaintext inbound listener. The agent's own delivery to
// the application is listed in the exempt map for the duration of its handshake, and ports
// listed in plaintext_ports (peer authentication DISABLE) are left to the pod's own sockets.

#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/socket.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif
#ifndef SOCK_STREAM
#define SOCK_STREAM 1
#endif

// The verifier rejects a wide store that spans two context fields. clang can merge two
// adjacent narrow stores into one, so stores to the context are separated by this barrier.
#define barrier() asm volatile("" ::: "memory")

char __license[] SEC("license") = "Dual BSD/GPL";

// Set by the agent at load time.
volatile const __u32 agent_mark = 0;    // SO_MARK on the agent's own sockets
volatile const __u32 delivery_mark = 0; // SO_MARK on its deliveries to an app in a pod
volatile const __u16 hbone_port = 15008; // host byte order

enum listener_kind {
	LISTENER_HBONE = 1,
	LISTENER_INBOUND = 2,
};

// One per enrolled network namespace.
struct netns_cfg {
	__u16 outbound_port; // host byte order
	__u16 flags;
	__u32 pad;
};

// An address in the form the kernel gives for IPv6; IPv4 is stored v4-mapped.
struct addr {
	__u32 a[4];
};

struct orig_dst {
	struct addr ip;
	__u16 port; // host byte order
	__u16 family;
	__u32 pad;
};

struct conn_key {
	__u64 netns_cookie;
	struct addr ip;
	__u16 port; // host byte order
	__u16 pad1;
	__u32 pad2;
};

struct tuple {
	struct addr local;
	struct addr remote;
	__u16 local_port;  // host byte order
	__u16 remote_port; // host byte order
};

// sk_lookup cannot ask for its namespace's cookie, so it finds the listeners by the
// address the connection is for: each enrolled pod's own addresses.
struct listener_key {
	struct addr ip;
	__u32 kind;
};

struct lpm_key {
	__u32 prefixlen;
	struct addr ip;
};

// A pod address and a port in host byte order; port 0 stands for every port.
struct port_key {
	struct addr ip;
	__u16 port;
	__u16 pad;
};

// enrolled, pod_addrs and excluded are pinned: they say which pods must never send or
// receive in plaintext, so they must outlive the agent, and a restarted agent takes them
// over instead of starting from an empty map that would let every pod through until it
// is enrolled again.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(value, struct netns_cfg);
} enrolled SEC(".maps");

// Written by connect4/6, moved by sockops: it lives only between connect() and the SYN.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct orig_dst);
} pending SEC(".maps");

// Read and deleted by the agent when it accepts the redirected connection.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct conn_key);
	__type(value, struct orig_dst);
} origdst SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct tuple);
	__type(value, __u8);
} exempt SEC(".maps");

// The addresses of enrolled pods, so sk_lookup can tell "not ours" from "ours, but the
// agent's listener is gone".
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, struct addr);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(value, __u8);
} pod_addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 8192);
	__type(key, struct listener_key);
	__type(value, __u64);
} listeners SEC(".maps");

// Inbound ports the agent leaves to the pod (peer authentication DISABLE): sk_lookup lets
// a connection to one of them go on to the pod's own socket. Pinned like pod_addrs, so
// that while the agent restarts such a port keeps reaching the application instead of
// being steered to a listener that is gone.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct port_key);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(value, __u8);
} plaintext_ports SEC(".maps");

// Destinations that are never redirected (the node's own networks, for example).
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm_key);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(value, __u8);
} excluded SEC(".maps");

static __always_inline void v4_mapped(struct addr *a, __u32 ip4)
{
	a->a[0] = 0;
	a->a[1] = 0;
	a->a[2] = bpf_htonl(0x0000ffff);
	a->a[3] = ip4;
}

// is_plaintext reports whether connections to port (host byte order) of the pod address a
// are the application's own, either for that port or for every port of the address.
static __always_inline int is_plaintext(struct addr *a, __u16 port)
{
	struct port_key k = { .ip = *a, .port = port };

	if (bpf_map_lookup_elem(&plaintext_ports, &k))
		return 1;
	k.port = 0;
	return bpf_map_lookup_elem(&plaintext_ports, &k) != NULL;
}

static __always_inline int is_excluded(struct addr *a)
{
	struct lpm_key k = { .prefixlen = 128, .ip = *a };

	return bpf_map_lookup_elem(&excluded, &k) != NULL;
}

// Common checks of connect4 and connect6: an enrolled namespace, a TCP socket, not ours.
static __always_inline struct netns_cfg *should_redirect(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk;
	__u64 cookie;

	if (ctx->type != SOCK_STREAM || ctx->protocol != IPPROTO_TCP)
		return NULL;
	sk = ctx->sk;
	// A mark of 0 is every unmarked socket: never skip on it, even if a mark is unset.
	// TODO(egress-guard): a pod process with CAP_NET_ADMIN can set the agent's mark and
	// skip this hook, and the egress guard exempts the same marks, so it does not catch
	// such flows either; it can go once the guard tells the agent's sockets by cgroup.
	if (!sk || (sk->mark && (sk->mark == agent_mark || sk->mark == delivery_mark)))
		return NULL;
	cookie = bpf_get_netns_cookie(ctx);
	return bpf_map_lookup_elem(&enrolled, &cookie);
}

SEC("cgroup/connect4")
int veil_connect4(struct bpf_sock_addr *ctx)
{
	struct netns_cfg *cfg = should_redirect(ctx);
	struct orig_dst o = {};
	__u64 cookie;

	if (!cfg)
		return 1;
	if ((bpf_ntohl(ctx->user_ip4) >> 24) == 127)
		return 1;
	v4_mapped(&o.ip, ctx->user_ip4);
	if (is_excluded(&o.ip))
		return 1;
	o.port = bpf_ntohs((__u16)ctx->user_port);
	o.family = AF_INET;

	cookie = bpf_get_socket_cookie(ctx);
	if (bpf_map_update_elem(&pending, &cookie, &o, BPF_ANY))
		return 0; // cannot remember the destination: refuse rather than leak
	ctx->user_ip4 = bpf_htonl(0x7f000001);
	barrier();
	ctx->user_port = bpf_htons(cfg->outbound_port);
	return 1;
}

SEC("cgroup/connect6")
int veil_connect6(struct bpf_sock_addr *ctx)
{
	struct netns_cfg *cfg = should_redirect(ctx);
	struct orig_dst o = {};
	__u64 cookie;

	if (!cfg)
		return 1;
	o.ip.a[0] = ctx->user_ip6[0];
	o.ip.a[1] = ctx->user_ip6[1];
	o.ip.a[2] = ctx->user_ip6[2];
	o.ip.a[3] = ctx->user_ip6[3];
	// ::1 and ::ffff:127.0.0.0/104 are loopback.
	if (!o.ip.a[0] && !o.ip.a[1] && !o.ip.a[2] && o.ip.a[3] == bpf_htonl(1))
		return 1;
	if (!o.ip.a[0] && !o.ip.a[1] && o.ip.a[2] == bpf_htonl(0x0000ffff) &&
	    (bpf_ntohl(o.ip.a[3]) >> 24) == 127)
		return 1;
	if (is_excluded(&o.ip))
		return 1;
	o.port = bpf_ntohs((__u16)ctx->user_port);
	o.family = AF_INET6;

	cookie = bpf_get_socket_cookie(ctx);
	if (bpf_map_update_elem(&pending, &cookie, &o, BPF_ANY))
		return 0;
	ctx->user_ip6[0] = 0;
	barrier();
	ctx->user_ip6[1] = 0;
	barrier();
	ctx->user_ip6[2] = 0;
	barrier();
	ctx->user_ip6[3] = bpf_htonl(1);
	barrier();
	ctx->user_port = bpf_htons(cfg->outbound_port);
	return 1;
}

SEC("sockops")
int veil_sockops(struct bpf_sock_ops *skops)
{
	struct conn_key k = {};
	struct orig_dst *o;
	__u64 cookie;
	__u32 ip4;

	// The source port is bound by the time the SYN is built, and the agent cannot accept
	// the connection before the SYN arrives, so this always runs first.
	if (skops->op != BPF_SOCK_OPS_TCP_CONNECT_CB)
		return 1;
	cookie = bpf_get_socket_cookie(skops);
	o = bpf_map_lookup_elem(&pending, &cookie);
	if (!o)
		return 1;

	k.netns_cookie = bpf_get_netns_cookie(skops);
	// Read every field up front: when the reads sit in the branches below, clang shares
	// one pointer into the context between them, which the verifier refuses.
	ip4 = skops->local_ip4;
	barrier();
	k.ip.a[0] = skops->local_ip6[0];
	k.ip.a[1] = skops->local_ip6[1];
	k.ip.a[2] = skops->local_ip6[2];
	k.ip.a[3] = skops->local_ip6[3];
	barrier();
	if (skops->family == AF_INET)
		v4_mapped(&k.ip, ip4);
	k.port = (__u16)skops->local_port;
	bpf_map_update_elem(&origdst, &k, o, BPF_ANY);
	bpf_map_delete_elem(&pending, &cookie);
	return 1;
}

SEC("sk_lookup")
int veil_sk_lookup(struct bpf_sk_lookup *ctx)
{
	struct listener_key lk = {};
	struct tuple t = {};
	struct bpf_sock *sk;
	long err;

	if (ctx->protocol != IPPROTO_TCP)
		return SK_PASS;
	if (ctx->family == AF_INET) {
		if ((bpf_ntohl(ctx->local_ip4) >> 24) == 127)
			return SK_PASS;
		v4_mapped(&t.local, ctx->local_ip4);
		v4_mapped(&t.remote, ctx->remote_ip4);
	} else {
		t.local.a[0] = ctx->local_ip6[0];
		t.local.a[1] = ctx->local_ip6[1];
		t.local.a[2] = ctx->local_ip6[2];
		t.local.a[3] = ctx->local_ip6[3];
		if (!t.local.a[0] && !t.local.a[1] && !t.local.a[2] && t.local.a[3] == bpf_htonl(1))
			return SK_PASS;
		t.remote.a[0] = ctx->remote_ip6[0];
		t.remote.a[1] = ctx->remote_ip6[1];
		t.remote.a[2] = ctx->remote_ip6[2];
		t.remote.a[3] = ctx->remote_ip6[3];
	}
	t.local_port = (__u16)ctx->local_port;
	t.remote_port = bpf_ntohs(ctx->remote_port);
	if (bpf_map_lookup_elem(&exempt, &t))
		return SK_PASS;
	// The HBONE port always goes to the agent: it is the agent's port, not the app's.
	if (t.local_port != hbone_port && is_plaintext(&t.local, t.local_port))
		return SK_PASS;

	lk.ip = t.local;
	lk.kind = t.local_port == hbone_port ? LISTENER_HBONE : LISTENER_INBOUND;
	sk = bpf_map_lookup_elem(&listeners, &lk);
	if (!sk) {
		// Enrolled but the agent's listener is gone (agent stopped or crashed): fail
		// closed instead of letting plaintext reach the application.
		if (bpf_map_lookup_elem(&pod_addrs, &t.local))
			return SK_DROP;
		return SK_PASS;
	}
	err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	return err ? SK_DROP : SK_PASS;
}

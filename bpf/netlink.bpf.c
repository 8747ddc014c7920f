// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
/*
 * netlink.bpf.c - the netlink probe: AF_NETLINK sockets of the followed tree, the head of every
 * message sent on them and of every reply received, so user space can decode the requests
 * (rtnetlink, nfnetlink) and pair them with their acks.
 *
 * The user-space layouts read here (struct user_msghdr, struct iovec) are the stable syscall
 * ABI, not kernel-internal structs.
 *
 * #included by startprof.bpf.c.
 */

#ifndef SP_NL_COPY
#define SP_NL_COPY 1024 /* bytes of a sent message copied (all iovecs together) */
#endif
#ifndef SP_NL_RECV_COPY
#define SP_NL_RECV_COPY 512 /* bytes of a received buffer copied: acks are 36+ bytes */
#endif
#ifndef SP_NL_MAX_IOV
#define SP_NL_MAX_IOV 8 /* sendmsg iovecs looked at (iptables-nft sends a batch per page) */
#endif
#ifndef SP_MAX_NL_SOCKS
#define SP_MAX_NL_SOCKS 16384
#endif
#ifndef SP_NL_NETFILTER_REPLIES
#define SP_NL_NETFILTER_REPLIES 0 /* 1: also send nfnetlink sockets and replies (iptables-nft) */
#endif

/*
 * iptables-nft (~15 runs per pod start and teardown with masquerade and portmap) opens
 * NETLINK_NETFILTER sockets, sends a few requests and batches and reads acks and whole-ruleset
 * dumps back: ~12 records per run that the analysis never reads except the requests' message
 * types, which it counts per process (acks and ack times matter only for the CNI plugins' own
 * rtnetlink work). So for nfnetlink only the requests leave the kernel: no socket record, no
 * receive record, and no work in the receive hooks after the fd lookup.
 */
#define SP_NETLINK_NETFILTER 12

#define SP_NL_HALF (SP_NL_DATA / 2)
_Static_assert(SP_NL_COPY <= SP_NL_HALF && SP_NL_RECV_COPY <= SP_NL_HALF, "copy too large");

#define SP_AF_NETLINK 16

/* The user-space ABI of sendmsg/recvmsg: struct user_msghdr and struct iovec (x86_64). */
struct sp_user_msghdr {
	u64 name;
	s32 namelen;
	s32 pad;
	u64 iov;
	u64 iovlen;
	u64 control;
	u64 controllen;
	u32 flags;
	u32 pad2;
};
struct sp_iovec {
	u64 base;
	u64 len;
};

/* Why: socket()'s family/protocol are only known at entry and the fd only at exit. */
struct sp_nl_sock_stash {
	s32 protocol;
	s32 type;
};
BPF_TABLE("lru_hash", u32, struct sp_nl_sock_stash, nl_sock_stash, 4096);

/* Why: send/recv hooks must recognise a netlink fd: (tgid << 32 | fd) -> protocol. */
BPF_HASH(nl_socks, u64, s32, SP_MAX_NL_SOCKS);

#define SP_NL_SENDTO 1
#define SP_NL_SENDMSG 2
#define SP_NL_RECVFROM 3
#define SP_NL_RECVMSG 4
struct sp_nl_stash {
	u64 enter_ns;
	u64 buf;    /* sendto/recvfrom buffer, or the iovec array of sendmsg, or recvmsg's iov[0] */
	u64 len;    /* buffer length or iovec count (sendmsg) */
	u64 iovlen; /* msg_iovlen of sendmsg/recvmsg, 1 otherwise */
	s32 fd;
	s32 protocol;
	u32 kind;   /* SP_NL_* */
	u32 msg_flags;
};
/* Why: the request is copied at exit (with its result), the reply only exists at exit. */
BPF_TABLE("lru_hash", u32, struct sp_nl_stash, nl_stash, 16384);

/* Why: find netlink sockets of the followed tree. */
SP_SYSCALL_ENTER(socket)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tid = (u32)id;
	struct sp_nl_sock_stash st = {};

	if ((int)SP_SYSARG(0) != SP_AF_NETLINK || !sp_followed(id >> 32))
		return 0;
	st.protocol = (int)SP_SYSARG(2);
	st.type = (int)SP_SYSARG(1);
	if (nl_sock_stash.update(&tid, &st) < 0)
		sp_error(SP_ERR_STASH_FULL);
	return 0;
}

SP_SYSCALL_EXIT(socket)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tid = (u32)id;
	long ret = SP_SYSRET;
	struct sp_nl_sock_stash *st = nl_sock_stash.lookup(&tid);
	struct sp_nl_socket r = {};
	u64 key;

	if (!st) {
		/* A new non-netlink socket reuses an fd number: make sure it is not taken for one. */
		if (ret >= 0 && sp_has_fds(id >> 32)) {
			key = sp_fd_key(id >> 32, ret);
			nl_socks.delete(&key);
		}
		return 0;
	}
	if (ret >= 0) {
		key = sp_fd_key(id >> 32, ret);
		if (nl_socks.update(&key, &st->protocol) < 0)
			sp_error(SP_ERR_STASH_FULL);
		sp_mark_fds(id >> 32);
	}
	if (!SP_NL_NETFILTER_REPLIES && st->protocol == SP_NETLINK_NETFILTER) {
		nl_sock_stash.delete(&tid);
		return 0;
	}
	sp_fill_header(&r.h, SP_NL_SOCKET, sizeof(r));
	r.fd = ret;
	r.protocol = st->protocol;
	r.sock_type = st->type;
	nl_sock_stash.delete(&tid);
	sp_submit(&r, sizeof(r));
	return 0;
}

static __always_inline void nl_on_close(u64 key)
{
	nl_socks.delete(&key);
}

static __always_inline int nl_enter(s32 fd, u32 kind, u64 buf, u64 len, u64 iovlen, u32 flags)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tid = (u32)id;
	u64 key = sp_fd_key(id >> 32, fd);
	s32 *proto = nl_socks.lookup(&key);
	struct sp_nl_stash st = {};

	if (!proto)
		return 0;
	if (!SP_NL_NETFILTER_REPLIES && *proto == SP_NETLINK_NETFILTER &&
	    (kind == SP_NL_RECVFROM || kind == SP_NL_RECVMSG))
		return 0;
	st.enter_ns = bpf_ktime_get_ns();
	st.buf = buf;
	st.len = len;
	st.iovlen = iovlen;
	st.fd = fd;
	st.protocol = *proto;
	st.kind = kind;
	st.msg_flags = flags;
	if (nl_stash.update(&tid, &st) < 0)
		sp_error(SP_ERR_STASH_FULL);
	return 0;
}

/* Read a msghdr from user memory and enter with its iovec array (send) or its iov[0] (recv). */
static __always_inline int nl_enter_msg(s32 fd, u32 kind, const void *umsg, u32 flags)
{
	u64 id = bpf_get_current_pid_tgid();
	u64 key = sp_fd_key(id >> 32, fd);
	struct sp_user_msghdr m = {};
	struct sp_iovec iov = {};
	s32 *proto = nl_socks.lookup(&key);

	if (!proto)
		return 0;
	if (!SP_NL_NETFILTER_REPLIES && *proto == SP_NETLINK_NETFILTER && kind == SP_NL_RECVMSG)
		return 0; /* before reading the msghdr */
	if (bpf_probe_read_user(&m, sizeof(m), umsg) < 0) {
		sp_error(SP_ERR_READ);
		return 0;
	}
	if (kind == SP_NL_SENDMSG)
		return nl_enter(fd, kind, m.iov, m.iovlen, m.iovlen, flags);
	if (m.iovlen < 1 || bpf_probe_read_user(&iov, sizeof(iov), (void *)m.iov) < 0)
		return 0;
	return nl_enter(fd, kind, iov.base, iov.len, m.iovlen, flags);
}

/* Copy up to want bytes from user memory to data[off..]; returns the bytes copied. */
static __always_inline u32 nl_copy(u8 *data, u32 off, u64 src, u64 want)
{
	u32 n;

	if (off >= SP_NL_HALF || want == 0)
		return 0;
	off = sp_bound(off, SP_NL_HALF - 1);
	n = sp_bound(want, SP_NL_HALF);
	if (bpf_probe_read_user(&data[off], n, (void *)src) < 0)
		return 0;
	return n;
}

static __always_inline int nl_exit(u32 type, long ret)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct sp_nl_stash *st = nl_stash.lookup(&tid);
	union sp_scratch *s;
	struct sp_nl_msg *m;
	u32 copied = 0, limit;
	u64 total = 0, size;
	int i;

	if (!st)
		return 0;
	/* Receives that got nothing (EAGAIN on a non-blocking socket) carry no reply. */
	if (type == SP_NL_RECV && ret <= 0)
		goto out;
	s = sp_scratch();
	if (!s)
		goto out;
	m = &s->nl_msg;
	sp_fill_header(&m->h, type, 0);
	m->fd = st->fd;
	m->protocol = st->protocol;
	m->ret = ret;
	m->enter_ns = st->enter_ns;
	m->msg_flags = st->msg_flags;
	m->iovlen = st->iovlen;

	m->copied = 0;
	if (st->kind == SP_NL_SENDMSG) {
		/* m->copied carries the running count: see SP_RD in exec.bpf.c */
		for (i = 0; i < SP_NL_MAX_IOV; i++) {
			struct sp_iovec iov = {};

			if (i >= st->len)
				break;
			if (bpf_probe_read_user(&iov, sizeof(iov), (void *)(st->buf + i * sizeof(iov))) < 0)
				break;
			total += iov.len;
			copied = SP_RD(m->copied);
			if (copied < SP_NL_COPY) {
				u64 want = iov.len < SP_NL_COPY - copied ? iov.len : SP_NL_COPY - copied;

				SP_RD(m->copied) = copied + nl_copy(m->data, copied, iov.base, want);
			}
		}
		copied = SP_RD(m->copied);
	} else {
		limit = type == SP_NL_RECV ? SP_NL_RECV_COPY : SP_NL_COPY;
		total = type == SP_NL_RECV ? (u64)ret : st->len;
		if (total > st->len)
			total = st->len; /* MSG_TRUNC: ret is the datagram, the buffer holds less */
		copied = nl_copy(m->data, 0, st->buf, total < limit ? total : limit);
		if (type == SP_NL_RECV)
			total = ret;
	}
	if (type == SP_NL_RECV && copied == 0)
		goto out; /* a MSG_PEEK|MSG_TRUNC size probe with an empty buffer */
	m->len = total > 0xffffffffULL ? 0xffffffffU : (u32)total;
	size = sp_bound(offsetof(struct sp_nl_msg, data) + copied, sizeof(*m));
	m->copied = size - offsetof(struct sp_nl_msg, data);
	m->h.size = size;
	sp_submit(m, size);
out:
	nl_stash.delete(&tid);
	return 0;
}

/* Why: Go's netlink (CNI plugins) and libmnl send requests with sendto. */
SP_SYSCALL_ENTER(sendto)
{
	/* sendto(fd, buff, len, flags, addr, addr_len) */
	return nl_enter((s32)SP_SYSARG(0), SP_NL_SENDTO, SP_SYSARG(1), SP_SYSARG(2), 1,
			(u32)SP_SYSARG(3));
}

SP_SYSCALL_EXIT(sendto)
{
	return nl_exit(SP_NL_SEND, SP_SYSRET);
}

/* Why: iproute2 and iptables-nft (batches over several iovecs) send with sendmsg. */
SP_SYSCALL_ENTER(sendmsg)
{
	/* sendmsg(fd, msg, flags) */
	return nl_enter_msg((s32)SP_SYSARG(0), SP_NL_SENDMSG, (const void *)SP_SYSARG(1),
			    (u32)SP_SYSARG(2));
}

SP_SYSCALL_EXIT(sendmsg)
{
	return nl_exit(SP_NL_SEND, SP_SYSRET);
}

/* Why: acks and errors come back through recvfrom (Go, libmnl) ... */
SP_SYSCALL_ENTER(recvfrom)
{
	/* recvfrom(fd, ubuf, size, flags, addr, addr_len) */
	return nl_enter((s32)SP_SYSARG(0), SP_NL_RECVFROM, SP_SYSARG(1), SP_SYSARG(2), 1,
			(u32)SP_SYSARG(3));
}

SP_SYSCALL_EXIT(recvfrom)
{
	return nl_exit(SP_NL_RECV, SP_SYSRET);
}

/* ... or recvmsg (iproute2): the buffer is iov[0] of the msghdr, saved at entry. */
SP_SYSCALL_ENTER(recvmsg)
{
	/* recvmsg(fd, msg, flags) */
	return nl_enter_msg((s32)SP_SYSARG(0), SP_NL_RECVMSG, (const void *)SP_SYSARG(1),
			    (u32)SP_SYSARG(2));
}

SP_SYSCALL_EXIT(recvmsg)
{
	return nl_exit(SP_NL_RECV, SP_SYSRET);
}

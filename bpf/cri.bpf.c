// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
/*
 * cri.bpf.c - the cri probe: connections accepted on the CRI socket's listening fd and every
 * byte read from or written to them, sent in chunks so the HTTP/2 stream stays complete.
 *
 * User space finds the listening (pid, fd) from the socket path (/proc/net/unix, then /proc/PID/fd)
 * and seeds cri_listeners; connections accepted before recording are seeded into cri_conns
 * with SP_CRI_PREEXISTING. Go's net package uses read/write on sockets (not readv/writev or
 * recvmsg/sendmsg), which is what containerd's gRPC server does. The bytes are taken at the
 * sock:sock_recv_length/sock_send_length tracepoints where user space sets SP_CRI_SOCK_TP (one
 * hit per socket message), else at every read/write syscall's entry and exit.
 *
 * #included by startprof.bpf.c.
 */

#ifndef SP_CRI_MAX_CHUNKS
#define SP_CRI_MAX_CHUNKS 16 /* chunks of SP_CRI_CHUNK per read/write: 64 KiB > gRPC's 32 KiB */
#endif

/* Why: the listening sockets whose accepted connections are CRI: (tgid << 32 | fd). */
BPF_HASH(cri_listeners, u64, u8, 64);

/* Why: the fast test in read/write: is this (tgid, fd) a CRI connection? */
BPF_HASH(cri_conns, u64, struct sp_conn, 4096);

/* Why: connection ids; one counter shared by every CPU (atomic add). */
BPF_ARRAY(cri_next_id, u64, 1);

/* Why: accept's listening fd is known at entry, the new fd at exit. */
BPF_TABLE("lru_hash", u32, s32, cri_accept_stash, 1024);

#ifndef SP_CRI_SOCK_TP
#define SP_CRI_SOCK_TP 0 /* 1: read/write via the sock tracepoints (x86_64, kernel >= 6.3) */
#endif

#if !SP_CRI_SOCK_TP
struct sp_cri_stash {
	u64 key; /* cri_conns key */
	u64 buf;
	u64 ts_ns; /* a write's entry: its bytes' time (see cri_emit) */
	u32 dir;   /* 0 = in (read), SP_CRI_OUT (write) */
	u32 reserved;
};
/* Why: the bytes of a read exist only at exit; a write's count is its return value. */
BPF_HASH(cri_stash, u32, struct sp_cri_stash, 4096);
#endif

static __always_inline void cri_on_close(u64 key)
{
	cri_conns.delete(&key);
}

static __always_inline int cri_accept_enter(s32 fd)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tid = (u32)id;
	u64 key = sp_fd_key(id >> 32, fd);

	if (!cri_listeners.lookup(&key))
		return 0;
	if (cri_accept_stash.update(&tid, &fd) < 0)
		sp_error(SP_ERR_STASH_FULL);
	return 0;
}

static __always_inline int cri_accept_exit(long ret)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tid = (u32)id, zero = 0;
	s32 *lfd = cri_accept_stash.lookup(&tid);
	struct sp_cri_accept r = {};
	struct sp_conn conn = {};
	u64 key, *next;

	if (!lfd)
		return 0;
	r.listen_fd = *lfd;
	cri_accept_stash.delete(&tid);
	if (ret < 0)
		return 0;
	next = cri_next_id.lookup(&zero);
	if (!next)
		return 0;
	conn.conn_id = __sync_fetch_and_add(next, 1) + 1;
	key = sp_fd_key(id >> 32, ret);
	if (cri_conns.update(&key, &conn) < 0)
		sp_error(SP_ERR_STASH_FULL);
	sp_mark_fds(id >> 32);
	sp_fill_header(&r.h, SP_CRI_ACCEPT, sizeof(r));
	r.fd = ret;
	r.conn_id = conn.conn_id;
	sp_submit(&r, sizeof(r));
	return 0;
}

/* Why: containerd's gRPC server accepts CRI clients (kubelet, crictl) with accept4. */
SP_SYSCALL_ENTER(accept4)
{
	return cri_accept_enter((int)SP_SYSARG(0));
}

SP_SYSCALL_EXIT(accept4)
{
	return cri_accept_exit(SP_SYSRET);
}

/* Why: the same for servers that use plain accept. */
SP_SYSCALL_ENTER(accept)
{
	return cri_accept_enter((int)SP_SYSARG(0));
}

SP_SYSCALL_EXIT(accept)
{
	return cri_accept_exit(SP_SYSRET);
}

/*
 * Send the ret bytes at user address buf, read or written on the CRI connection key, as chunks
 * of SP_CRI_CHUNK bytes. ts_ns, when not 0, is the records' time instead of now: when the
 * write's bytes reached the reader. A write wakes the reader inside the kernel, and on a busy
 * machine the reader (the kubelet) can have taken the reply and moved on before the writer's
 * thread reaches the tracepoint after the copy; a reply's time must not follow its receipt.
 */
static __always_inline int cri_emit(u64 key, u64 buf, long ret, u32 dir, u64 ts_ns)
{
	struct sp_conn *conn;
	struct sp_cri_data *d;
	union sp_scratch *s;
	u32 gap_bit, off = 0;
	int i;

	conn = cri_conns.lookup(&key);
	s = sp_scratch();
	if (!conn || !s)
		return 0;
	gap_bit = dir ? 2 : 1;
	d = &s->cri_data;
	sp_fill_header(&d->h, SP_CRI_DATA, 0);
	if (ts_ns)
		d->h.ts_ns = ts_ns;
	d->conn_id = conn->conn_id;
	d->fd = (s32)key;
	d->ret = ret;
	for (i = 0; i < SP_CRI_MAX_CHUNKS; i++) {
		u32 n, flags;

		if (off >= ret)
			return 0;
		n = sp_bound(ret - off, SP_CRI_CHUNK);
		flags = dir | (conn->flags & SP_CRI_PREEXISTING);
		if (conn->gap_pending & gap_bit)
			flags |= SP_CRI_GAP;
		if (i == SP_CRI_MAX_CHUNKS - 1 && off + n < ret)
			flags |= SP_CRI_TRUNCATED;
		if (bpf_probe_read_user(d->data, n, (void *)(buf + off)) < 0) {
			/* never send stale scratch bytes: count the chunk as lost */
			sp_error(SP_ERR_READ);
			conn->gap_pending |= gap_bit;
			off += n;
			continue;
		}
		d->flags = flags;
		d->offset = off;
		d->len = n;
		d->h.size = offsetof(struct sp_cri_data, data) + n;
		if (sp_submit(d, sp_bound(offsetof(struct sp_cri_data, data) + n, sizeof(*d))) < 0)
			conn->gap_pending |= gap_bit;
		else
			conn->gap_pending &= ~gap_bit;
		off += n;
	}
	if (off < ret)
		conn->gap_pending |= gap_bit; /* beyond SP_CRI_MAX_CHUNKS: lost, flagged */
	return 0;
}

#if SP_CRI_SOCK_TP
/*
 * The socket tracepoints fire once per sendmsg/recvmsg of any socket, after the bytes moved, and
 * not for file, pipe or eventfd I/O: a small fraction of the machine's reads and writes, and
 * one hit per syscall instead of an enter/exit pair. They carry the byte count but not the
 * fd or buffer, which are the syscall's arguments in the task's saved user registers. x86_64
 * only (user space sets SP_CRI_SOCK_TP; other machines use the syscall tracepoints below).
 */
#define SP_AF_UNIX 1
#define SP_NR_READ 0
#define SP_NR_WRITE 1
#define SP_NR_SENDTO 44
#define SP_NR_RECVFROM 45

struct sp_cri_send {
	u64 key; /* cri_conns key of the write */
	u64 ts_ns;
};
/* Why: a write's time (see cri_emit), from sk_data_ready inside the send to its tracepoint. */
BPF_TABLE("lru_hash", u32, struct sp_cri_send, cri_send_ts, 1024);

/*
 * The fd and buffer of the syscall this socket message belongs to, from the task's saved user
 * registers, if it is a read/recvfrom (dir 0) or write/sendto (SP_CRI_OUT): readv/writev and
 * recvmsg/sendmsg carry an iovec, not a buffer, and Go's net uses read/write. 0 otherwise.
 */
static __always_inline int cri_syscall_args(u32 dir, u64 *fd, u64 *buf)
{
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	u64 nr = 0;

	if (bpf_probe_read_kernel(&nr, sizeof(nr), &regs->orig_ax) < 0)
		return 0;
	if (dir ? nr != SP_NR_WRITE && nr != SP_NR_SENDTO : nr != SP_NR_READ && nr != SP_NR_RECVFROM)
		return 0;
	if (bpf_probe_read_kernel(fd, sizeof(*fd), &regs->di) < 0 ||
	    bpf_probe_read_kernel(buf, sizeof(*buf), &regs->si) < 0) {
		sp_error(SP_ERR_READ);
		return 0;
	}
	return 1;
}

/*
 * Why: a write's time is its first byte's arrival at the reader (see cri_emit). The socket
 * layer's sock_def_readable fires this, before it wakes the reader, inside the writer's send
 * (on the writer's thread: the unix send path delivers to the peer's queue itself); for TCP
 * it fires in softirq and is left at the family test. A write on a CRI connection of a
 * followed process notes its time here once; only the send tracepoint reads and deletes it.
 */
TRACEPOINT_PROBE(sock, sk_data_ready)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tid = (u32)id;
	struct sp_cri_send st = {};
	u64 fd = 0, buf = 0;

	/* only a process that accepted a CRI connection (or owns a netlink socket) can own one:
	 * the shims, whose ttrpc sends are most of the followed tree's, stop here */
	if (args->family != SP_AF_UNIX || !sp_has_fds(id >> 32) || cri_send_ts.lookup(&tid))
		return 0; /* not a unix send, no CRI connection, or not the write's first bytes */
	if (!cri_syscall_args(SP_CRI_OUT, &fd, &buf))
		return 0;
	st.key = sp_fd_key(id >> 32, (s32)fd);
	if (!cri_conns.lookup(&st.key))
		return 0;
	st.ts_ns = bpf_ktime_get_ns();
	if (cri_send_ts.update(&tid, &st) < 0)
		sp_error(SP_ERR_STASH_FULL);
	return 0;
}

static __always_inline int cri_sock_io(u16 family, int ret, u32 dir)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tid = (u32)id;
	struct sp_cri_send *sent;
	u64 fd = 0, buf = 0, key = 0, ts_ns = 0;

	if (family != SP_AF_UNIX || !sp_followed(id >> 32))
		return 0;
	if (dir) {
		/* taken whatever ret is, so a failed write leaves no time behind for the next */
		sent = cri_send_ts.lookup(&tid);
		if (sent) {
			key = sent->key;
			ts_ns = sent->ts_ns;
			cri_send_ts.delete(&tid);
		}
	}
	if (ret <= 0 || !cri_syscall_args(dir, &fd, &buf))
		return 0;
	if (key != sp_fd_key(id >> 32, (s32)fd))
		ts_ns = 0; /* not this write's: its entry was not seen */
	return cri_emit(sp_fd_key(id >> 32, (s32)fd), buf, ret, dir, ts_ns);
}

/* Why: requests arrive with read on an accepted connection (Go's net.Conn.Read). */
TRACEPOINT_PROBE(sock, sock_recv_length)
{
#if SP_PROBE_IMAGE
	if (args->family != SP_AF_UNIX)
		img_on_recv(args->ret); /* image.bpf.c: a registry response's bytes */
#endif
	return cri_sock_io(args->family, args->ret, 0);
}

/* Why: replies leave with write (Go's net.Conn.Write). */
TRACEPOINT_PROBE(sock, sock_send_length)
{
	return cri_sock_io(args->family, args->ret, SP_CRI_OUT);
}

#else /* !SP_CRI_SOCK_TP: every read and write on the machine, as an enter/exit pair */

static __always_inline int cri_rw_enter(s32 fd, u64 buf, u32 dir)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tid = (u32)id;
	struct sp_cri_stash st = {};

	st.key = sp_fd_key(id >> 32, fd);
	if (!cri_conns.lookup(&st.key))
		return 0;
	st.buf = buf;
	st.dir = dir;
	if (dir)
		st.ts_ns = bpf_ktime_get_ns();
	if (cri_stash.update(&tid, &st) < 0)
		sp_error(SP_ERR_STASH_FULL);
	return 0;
}

static __always_inline int cri_rw_exit(long ret)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct sp_cri_stash *st = cri_stash.lookup(&tid);

	if (!st)
		return 0;
	if (ret > 0)
		cri_emit(st->key, st->buf, ret, st->dir, st->ts_ns);
	cri_stash.delete(&tid);
	return 0;
}

/* Why: requests arrive with read on an accepted connection (Go's net.Conn.Read). */
SP_SYSCALL_ENTER(read)
{
	return cri_rw_enter((unsigned int)SP_SYSARG(0), (u64)SP_SYSARG(1), 0);
}

SP_SYSCALL_EXIT(read)
{
	return cri_rw_exit(SP_SYSRET);
}

/* Why: replies leave with write (Go's net.Conn.Write). */
SP_SYSCALL_ENTER(write)
{
#if SP_PROBE_IMAGE
	/* image.bpf.c's hook; write(fd, buf, count) */
	img_on_write_enter((s32)SP_SYSARG(0), SP_SYSARG(1), SP_SYSARG(2));
#endif
	return cri_rw_enter((unsigned int)SP_SYSARG(0), (u64)SP_SYSARG(1), SP_CRI_OUT);
}

SP_SYSCALL_EXIT(write)
{
	return cri_rw_exit(SP_SYSRET);
}
#endif /* SP_CRI_SOCK_TP */

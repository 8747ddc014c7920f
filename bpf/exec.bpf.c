// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
/*
 * exec.bpf.c - the exec probe: execve/execveat with argv and the CNI_* environment, exec
 * success and failure, fork of processes, exit_group codes and process exits.
 *
 * #included by startprof.bpf.c (maps, sp_followed(), sp_submit(), sp_scratch()).
 */

#ifndef SP_MAX_ARGS
#define SP_MAX_ARGS 32 /* argv strings copied after the filename */
#endif
#ifndef SP_ARG_SIZE
#define SP_ARG_SIZE 512 /* bytes of one argv/env string, NUL included */
#endif
#ifndef SP_MAX_ENV_SCAN
#define SP_MAX_ENV_SCAN 256 /* envp entries looked at for CNI_* */
#endif
#ifndef SP_MAX_CNI_ENV
#define SP_MAX_CNI_ENV 16 /* CNI_* variables copied */
#endif

#ifndef SP_ENV_FILTER
#define SP_ENV_FILTER 0 /* 1: read the environment only of processes that may carry CNI_* */
#endif

/*
 * argv/envp pointers are read SP_PTR_CHUNK at a time: one user read instead of one per string
 * (each read costs the same user-access setup, and envp holds dozens of strings).
 */
#define SP_PTR_CHUNK 8

_Static_assert(SP_ARG_SIZE <= SP_STR_CAP, "SP_ARG_SIZE must be <= SP_STR_CAP");
_Static_assert(SP_MAX_ARGS % SP_PTR_CHUNK == 0, "SP_MAX_ARGS: a multiple of SP_PTR_CHUNK");
_Static_assert(SP_MAX_ENV_SCAN % SP_PTR_CHUNK == 0, "SP_MAX_ENV_SCAN: a multiple of SP_PTR_CHUNK");
_Static_assert((SP_EXEC_STRINGS & (SP_EXEC_STRINGS - 1)) == 0, "power of two");

/* "CNI_" read as a little-endian u32: the only environment prefix that may leave the kernel. */
#define SP_CNI_PREFIX 0x5f494e43U

struct sp_exec_stash {
	u64 enter_ns;
	char comm[SP_COMM_LEN];
};
/*
 * Why: sched_process_exec runs after the comm changed; the old comm and the entry time come
 * from here (keyed by the calling tid, which sched_process_exec reports as old_pid). A failed
 * exec's sys_exit finds its entry here too; the entry is the filter for that exit.
 */
BPF_TABLE("lru_hash", u32, struct sp_exec_stash, exec_stash, 16384);

#if SP_ENV_FILTER
/*
 * Why: scanning envp is most of an exec's cost, and only CNI plugins (and the helpers they
 * start, which inherit it) have CNI_* variables. The container runtime (containerd, CRI-O:
 * the CRI listeners, seeded from user space) is the only process that puts them in a new
 * environment. So the environment is read at the exec of a child of a runtime or of a process
 * whose own environment held CNI_*, and never for the shims, runc, runc init, the pause or
 * the app (their exec costs no envp read at all).
 */
BPF_HASH(env_roots, u32, u8, 64);

#define SP_ENV_CANDIDATE 1 /* a child of an env root or of a CNI_* carrier: read its envp */
#define SP_ENV_CNI 2	   /* its environment held CNI_* (user space seeds it from /proc) */
/* Why: which followed processes get their envp read, and which pass that on to children. */
BPF_HASH(env_procs, u32, u8, SP_MAX_FOLLOWED);
#endif

/* Called by the core's sched_process_fork: a child of a CNI_* carrier or a runtime is one too. */
static __always_inline void exec_env_on_fork(u32 parent, u32 child)
{
#if SP_ENV_FILTER
	u8 *v = env_procs.lookup(&parent);
	u8 candidate = SP_ENV_CANDIDATE;

	if ((v && (*v & SP_ENV_CNI)) || env_roots.lookup(&parent))
		if (env_procs.update(&child, &candidate) < 0)
			sp_error(SP_ERR_FOLLOW_FULL);
#endif
}

/*
 * Read the chunk of pointers starting at arr[base] into chunk. A chunk can reach past the
 * array's NULL into unmapped memory and fail as a whole: then returns false and the caller
 * reads that chunk one pointer at a time (sp_user_ptr).
 */
static __always_inline bool sp_read_ptr_chunk(const char **chunk, const char *const *arr, u32 base)
{
	return bpf_probe_read_user(chunk, SP_PTR_CHUNK * sizeof(*chunk), &arr[base]) == 0;
}

/* arr[base + j]: from the chunk when it was read whole, else on its own; NULL ends the array. */
static __always_inline const char *sp_user_ptr(const char **chunk, bool whole,
					       const char *const *arr, u32 base, u32 j)
{
	const char *p = NULL;

	if (whole)
		return chunk[j];
	if (bpf_probe_read_user(&p, sizeof(p), &arr[base + j]) < 0)
		return NULL;
	return p;
}

/*
 * Loop-carried state (offset into strings[], counts, truncation bits) lives in the record (see
 * SP_RD); the running offset is kept in h.size until the record is finished.
 */
static __always_inline int exec_enter(s32 dirfd, u32 at_flags, const char *filename,
				      const char *const *argv, const char *const *envp)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tid = (u32)id, tgid = id >> 32;
	struct sp_exec_stash st = {};
	union sp_scratch *s;
	struct sp_exec *e;
	const char *chunk[SP_PTR_CHUNK];
	const char *p;
	bool whole, read_env;
	u8 *env = NULL;
	u64 size;
	u32 off, c, j;
	long n;

	if (!sp_followed(id >> 32))
		return 0;
	st.enter_ns = bpf_ktime_get_ns();
	bpf_get_current_comm(st.comm, sizeof(st.comm));
	if (exec_stash.update(&tid, &st) < 0)
		sp_error(SP_ERR_STASH_FULL);

	s = sp_scratch();
	if (!s)
		return 0;
	e = &s->exec;
	sp_fill_header(&e->h, SP_EXEC, 0);
	e->dirfd = dirfd;
	e->at_flags = at_flags;
	e->argc = 0;
	e->envc = 0;
	e->trunc = 0;

	read_env = true;
#if SP_ENV_FILTER
	env = env_procs.lookup(&tgid);
	read_env = env != NULL || env_roots.lookup(&tgid) != NULL;
#endif

	n = bpf_probe_read_user_str(&e->strings[0], SP_ARG_SIZE, filename);
	if (n <= 0) {
		e->strings[0] = '\0';
		n = 1;
	} else if (n == SP_ARG_SIZE) {
		e->trunc |= SP_TRUNC_FILENAME;
	}
	e->filename_len = n;
	SP_RD(e->h.size) = n;

	for (c = 0; c < SP_MAX_ARGS; c += SP_PTR_CHUNK) {
		whole = sp_read_ptr_chunk(chunk, argv, c);
		for (j = 0; j < SP_PTR_CHUNK; j++) {
			p = sp_user_ptr(chunk, whole, argv, c, j);
			if (!p)
				goto argv_done;
			off = SP_RD(e->h.size);
			if (off >= SP_EXEC_STRINGS) {
				SP_RD(e->trunc) |= SP_TRUNC_ARGV;
				goto argv_done;
			}
			n = bpf_probe_read_user_str(&e->strings[off & (SP_EXEC_STRINGS - 1)],
						    SP_ARG_SIZE, p);
			if (n <= 0) {
				SP_RD(e->trunc) |= SP_TRUNC_ARGV;
				goto argv_done;
			}
			if (n == SP_ARG_SIZE)
				SP_RD(e->trunc) |= SP_TRUNC_ARGV;
			SP_RD(e->h.size) = off + n;
			SP_RD(e->argc) += 1;
		}
	}
	/* All SP_MAX_ARGS copied: is there one more? */
	p = NULL;
	if (bpf_probe_read_user(&p, sizeof(p), &argv[SP_MAX_ARGS]) == 0 && p)
		SP_RD(e->trunc) |= SP_TRUNC_ARGV;
argv_done:
	if (!read_env)
		goto env_done;

	/*
	 * The environment: only CNI_* variables are copied. The prefix is checked again on the
	 * bytes copied into the record (user memory could change between the first read and the
	 * copy); a string that fails leaves the offset where it was, so its bytes lie beyond the
	 * size sent and the next candidate overwrites them.
	 */
	for (c = 0; c < SP_MAX_ENV_SCAN; c += SP_PTR_CHUNK) {
		whole = sp_read_ptr_chunk(chunk, envp, c);
		for (j = 0; j < SP_PTR_CHUNK; j++) {
			u32 prefix = 0;

			p = sp_user_ptr(chunk, whole, envp, c, j);
			if (!p)
				goto env_done;
			if (bpf_probe_read_user(&prefix, sizeof(prefix), p) < 0 ||
			    prefix != SP_CNI_PREFIX)
				continue;
			off = SP_RD(e->h.size);
			if (SP_RD(e->envc) >= SP_MAX_CNI_ENV || off >= SP_EXEC_STRINGS) {
				SP_RD(e->trunc) |= SP_TRUNC_ENV;
				goto env_done;
			}
			off &= SP_EXEC_STRINGS - 1;
			n = bpf_probe_read_user_str(&e->strings[off], SP_ARG_SIZE, p);
			if (n < 5)
				continue;
			if (*(u32 *)&e->strings[off] != SP_CNI_PREFIX)
				continue;
			if (n == SP_ARG_SIZE)
				SP_RD(e->trunc) |= SP_TRUNC_ENV;
			SP_RD(e->h.size) = off + n;
			SP_RD(e->envc) += 1;
		}
	}
	p = NULL;
	if (bpf_probe_read_user(&p, sizeof(p), &envp[SP_MAX_ENV_SCAN]) == 0 && p)
		SP_RD(e->trunc) |= SP_TRUNC_ENV;
env_done:
#if SP_ENV_FILTER
	if (env) {
		/* the new image's environment decides what its children inherit */
		if (SP_RD(e->envc) > 0)
			*env |= SP_ENV_CNI;
		else
			*env &= ~SP_ENV_CNI;
	}
#endif
	size = sp_bound(offsetof(struct sp_exec, strings) + SP_RD(e->h.size), sizeof(*e));
	e->h.size = size;
	sp_submit(e, size);
	return 0;
}

/* Why: the command line and CNI_* environment of every exec in the followed tree. */
SP_SYSCALL_ENTER(execve)
{
	/* execve(filename, argv, envp) */
	return exec_enter(SP_AT_FDCWD, 0, (const char *)SP_SYSARG(0),
			  (const char *const *)SP_SYSARG(1), (const char *const *)SP_SYSARG(2));
}

/* Why: runc and crun re-exec themselves from a memfd with execveat(fd, "", AT_EMPTY_PATH). */
SP_SYSCALL_ENTER(execveat)
{
	/* execveat(fd, filename, argv, envp, flags) */
	return exec_enter((s32)SP_SYSARG(0), (u32)SP_SYSARG(4), (const char *)SP_SYSARG(1),
			  (const char *const *)SP_SYSARG(2), (const char *const *)SP_SYSARG(3));
}

static __always_inline int exec_exit(long ret)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct sp_exec_stash *st = exec_stash.lookup(&tid);
	struct sp_ret r = {};

	/* Success already consumed the entry in sched_process_exec: only failures get here. */
	if (!st)
		return 0;
	exec_stash.delete(&tid);
	if (ret == 0)
		return 0;
	sp_fill_header(&r.h, SP_EXEC_RET, sizeof(r));
	r.ret = ret;
	sp_submit(&r, sizeof(r));
	return 0;
}

/* Why: a failed exec (ENOENT on a PATH search, EACCES) leaves the process in its old image. */
SP_SYSCALL_EXIT(execve)
{
	return exec_exit(SP_SYSRET);
}

SP_SYSCALL_EXIT(execveat)
{
	return exec_exit(SP_SYSRET);
}

/* Why: the new image runs; its filename (/dev/fd/N for memfd re-execs) and the comm change. */
TRACEPOINT_PROBE(sched, sched_process_exec)
{
	u32 tgid = bpf_get_current_pid_tgid() >> 32;
	u32 old_tid = args->old_pid;
	struct sp_exec_stash *st;
	struct sp_exec_done *e;
	union sp_scratch *s;
	unsigned short loc;
	u64 size;
	long n;

	if (!sp_followed(tgid))
		return 0;
	s = sp_scratch();
	if (!s)
		return 0;
	e = &s->exec_done;
	sp_fill_header(&e->h, SP_EXEC_DONE, 0);
	e->old_tid = old_tid;
	st = exec_stash.lookup(&old_tid);
	if (st) {
		e->enter_ns = st->enter_ns;
		__builtin_memcpy(e->old_comm, st->comm, SP_COMM_LEN);
		exec_stash.delete(&old_tid);
	} else {
		e->enter_ns = 0;
		__builtin_memset(e->old_comm, 0, SP_COMM_LEN);
	}
	loc = args->data_loc_filename & 0xFFFF;
	n = bpf_probe_read_kernel_str(e->filename, SP_STR_CAP, (char *)args + loc);
	if (n <= 0) {
		e->filename[0] = '\0';
		n = 1;
	}
	size = sp_bound(offsetof(struct sp_exec_done, filename) + n, sizeof(*e));
	e->filename_len = size - offsetof(struct sp_exec_done, filename);
	e->h.size = size;
	sp_submit(e, size);
	return 0;
}

/* Why: the exit code a process asked for (a process killed by a signal never calls it). */
SP_SYSCALL_ENTER(exit_group)
{
	struct sp_ret r = {};

	if (!sp_followed(bpf_get_current_pid_tgid() >> 32))
		return 0;
	sp_fill_header(&r.h, SP_EXIT_GROUP, sizeof(r));
	r.ret = (s32)SP_SYSARG(0);
	sp_submit(&r, sizeof(r));
	return 0;
}

/* Called by the core's sched_process_fork for a new process of the followed tree. */
static __always_inline void exec_on_fork(u32 child, u32 known, u64 flags)
{
	struct sp_fork f = {};

	sp_fill_header(&f.h, SP_FORK, sizeof(f));
	f.child_pid = child;
	f.flags_known = known;
	f.clone_flags = flags;
	sp_submit(&f, sizeof(f));
}

/* Called by the core's sched_process_exit when the last thread of a followed process left. */
static __always_inline void exec_on_exit(void)
{
	struct sp_header h = {};

#if SP_ENV_FILTER
	u32 tgid = bpf_get_current_pid_tgid() >> 32;

	env_procs.delete(&tgid);
#endif
	sp_fill_header(&h, SP_EXIT, sizeof(h));
	sp_submit(&h, sizeof(h));
}

// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
/*
 * namespaces.bpf.c - the namespaces probe: namespace creation and joins.
 *
 * unshare and setns are paired entry -> exit here through ns_stash (keyed by tid, declared in
 * startprof.bpf.c because clone's entries also drive the process filter); clone and clone3
 * results reach ns_clone_result() from the core's sys_exit_clone/clone3 hooks.
 *
 * #included by startprof.bpf.c.
 */

/* Every CLONE_NEW* bit (CLONE_NEWTIME = 0x80 is valid in clone3 and unshare only). */
#define SP_CLONE_NEW_MASK                                                                   \
	(CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER |     \
	 CLONE_NEWPID | CLONE_NEWNET)
#define SP_CLONE_NEWTIME 0x00000080ULL

static __always_inline void ns_emit(u32 type, struct sp_ns_stash *st, long ret)
{
	struct sp_ns r = {};

	sp_fill_header(&r.h, type, sizeof(r));
	/* clone()'s low byte is the exit signal, not flags: records carry flags only */
	r.flags = st->kind == SP_NS_CLONE ? st->flags & ~0xffULL : st->flags;
	r.ret = ret;
	r.enter_ns = st->enter_ns;
	r.fd = st->fd;
	r.nstype = st->kind == SP_NS_SETNS ? (s32)st->flags : 0;
	if (st->kind == SP_NS_SETNS)
		r.flags = 0;
	sp_submit(&r, sizeof(r));
}

/*
 * Called by the core's clone exit hooks in the parent. Only clones that ask for a namespace
 * are reported: plain forks are fork records of the exec probe, threads are noise here.
 * In clone()'s flags the low byte is the exit signal, so CLONE_NEWTIME is not looked at there.
 */
static __always_inline void ns_clone_result(struct sp_ns_stash *st, long ret)
{
	u64 mask = SP_CLONE_NEW_MASK;

	if (st->kind == SP_NS_CLONE3)
		mask |= SP_CLONE_NEWTIME;
	if (st->flags & mask)
		ns_emit(SP_CLONE, st, ret);
}

static __always_inline int ns_exit(u32 kind, u32 type, long ret)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct sp_ns_stash *st = ns_stash.lookup(&tid);

	if (!st || st->kind != kind)
		return 0;
	ns_emit(type, st, ret);
	ns_stash.delete(&tid);
	return 0;
}

/* Why: containerd creates the pod's netns with unshare(CLONE_NEWNET); runc's child unshares. */
SP_SYSCALL_ENTER(unshare)
{
	return sp_ns_enter(SP_NS_UNSHARE, (unsigned long)SP_SYSARG(0), -1);
}

SP_SYSCALL_EXIT(unshare)
{
	return ns_exit(SP_NS_UNSHARE, SP_UNSHARE, SP_SYSRET);
}

/* Why: joins: the CNI plugin into the pod netns, runc init into the sandbox's namespaces. */
SP_SYSCALL_ENTER(setns)
{
	/* nstype travels in flags until ns_emit() moves it to sp_ns.nstype */
	return sp_ns_enter(SP_NS_SETNS, (u32)SP_SYSARG(1), (s32)SP_SYSARG(0));
}

SP_SYSCALL_EXIT(setns)
{
	return ns_exit(SP_NS_SETNS, SP_SETNS, SP_SYSRET);
}

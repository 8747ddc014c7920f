// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
/*
 * runtime.bpf.c - the runtime probe: what an OCI runtime does inside create and start that
 * the other probes do not see. The rootfs (mount, umount2, pivot_root and the new mount API's
 * open_tree, move_mount, mount_setattr, fsmount), the cgroup it makes and moves the container
 * into (cgroup:cgroup_mkdir, cgroup:cgroup_attach_task) and the stage names runc's bootstrap
 * gives itself (task:task_rename: runc:[0:PARENT], [1:CHILD], [2:INIT]).
 *
 * Followed processes only: the runtime and its children, the shim (which mounts the rootfs
 * for runc), containerd (its snapshot mounts). Mount-type syscalls pair entry -> exit through
 * rt_stash; their paths are read at the exit, where the arguments are still in user memory.
 *
 * #included by startprof.bpf.c.
 */

struct sp_rt_stash {
	u64 enter_ns;
	u64 flags;
	u64 path; /* user pointer, or 0 */
	u64 fstype; /* user pointer, or 0 */
	u32 op;
	u32 reserved;
};

/* Why: a mount-type syscall's arguments and entry time, for its exit. */
BPF_HASH(rt_stash, u32, struct sp_rt_stash, 1024);

static __always_inline int rt_enter(u32 op, const void *path, const void *fstype, u64 flags)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tid = (u32)id;
	struct sp_rt_stash st = {};

	if (!sp_followed(id >> 32))
		return 0;
	st.enter_ns = bpf_ktime_get_ns();
	st.flags = flags;
	st.path = (u64)path;
	st.fstype = (u64)fstype;
	st.op = op;
	if (rt_stash.update(&tid, &st) < 0)
		sp_error(SP_ERR_STASH_FULL);
	return 0;
}

static __always_inline int rt_exit(u32 op, long ret)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct sp_rt_stash *st = rt_stash.lookup(&tid);
	struct sp_rt_op r = {};

	if (!st)
		return 0;
	if (st->op != op) {
		rt_stash.delete(&tid);
		return 0;
	}
	sp_fill_header(&r.h, SP_RT_OP, sizeof(r));
	r.enter_ns = st->enter_ns;
	r.ret = ret;
	r.flags = st->flags;
	r.op = op;
	/* a failed read leaves the string empty: the op and its times still count */
	if (st->path)
		bpf_probe_read_user_str(r.path, sizeof(r.path), (void *)st->path);
	if (st->fstype)
		bpf_probe_read_user_str(r.fstype, sizeof(r.fstype), (void *)st->fstype);
	rt_stash.delete(&tid);
	sp_submit(&r, sizeof(r));
	return 0;
}

/* Why: the rootfs: runc's and crun's bind mounts, /proc, /dev, masked and readonly paths. */
SP_SYSCALL_ENTER(mount)
{
	/* mount(dev_name, dir_name, type, flags, data) */
	return rt_enter(SP_RT_MOUNT, (char *)SP_SYSARG(1), (char *)SP_SYSARG(2), SP_SYSARG(3));
}

SP_SYSCALL_EXIT(mount)
{
	return rt_exit(SP_RT_MOUNT, SP_SYSRET);
}

/* Why: the old root detached after pivot_root; umounts of the runtime's own. */
SP_SYSCALL_ENTER(umount)
{
	return rt_enter(SP_RT_UMOUNT, (char *)SP_SYSARG(0), 0, (int)SP_SYSARG(1));
}

SP_SYSCALL_EXIT(umount)
{
	return rt_exit(SP_RT_UMOUNT, SP_SYSRET);
}

/* Why: the end of the rootfs: the container's root becomes /. */
SP_SYSCALL_ENTER(pivot_root)
{
	return rt_enter(SP_RT_PIVOT_ROOT, (const char *)SP_SYSARG(0), 0, 0);
}

SP_SYSCALL_EXIT(pivot_root)
{
	return rt_exit(SP_RT_PIVOT_ROOT, SP_SYSRET);
}

/* Why: the new mount API (runc >= 1.2 and crun for idmapped and recursive readonly mounts). */
SP_SYSCALL_ENTER(mount_setattr)
{
	return rt_enter(SP_RT_MOUNT_SETATTR, (const char *)SP_SYSARG(1), 0, (unsigned int)SP_SYSARG(2));
}

SP_SYSCALL_EXIT(mount_setattr)
{
	return rt_exit(SP_RT_MOUNT_SETATTR, SP_SYSRET);
}

SP_SYSCALL_ENTER(open_tree)
{
	return rt_enter(SP_RT_OPEN_TREE, (const char *)SP_SYSARG(1), 0, (unsigned)SP_SYSARG(2));
}

SP_SYSCALL_EXIT(open_tree)
{
	return rt_exit(SP_RT_OPEN_TREE, SP_SYSRET);
}

SP_SYSCALL_ENTER(move_mount)
{
	return rt_enter(SP_RT_MOVE_MOUNT, (const char *)SP_SYSARG(3), 0, (unsigned int)SP_SYSARG(4));
}

SP_SYSCALL_EXIT(move_mount)
{
	return rt_exit(SP_RT_MOVE_MOUNT, SP_SYSRET);
}

SP_SYSCALL_ENTER(fsmount)
{
	return rt_enter(SP_RT_FSMOUNT, 0, 0, (unsigned int)SP_SYSARG(1));
}

SP_SYSCALL_EXIT(fsmount)
{
	return rt_exit(SP_RT_FSMOUNT, SP_SYSRET);
}

/* Why: the container's cgroup, made by the runtime (cgroupfs driver; systemd makes its own). */
TRACEPOINT_PROBE(cgroup, cgroup_mkdir)
{
	struct sp_rt_op r = {};

	if (!sp_followed(bpf_get_current_pid_tgid() >> 32))
		return 0;
	sp_fill_header(&r.h, SP_RT_OP, sizeof(r));
	r.enter_ns = r.h.ts_ns;
	r.op = SP_RT_CGROUP_MKDIR;
	TP_DATA_LOC_READ_STR(r.path, path, sizeof(r.path));
	sp_submit(&r, sizeof(r));
	return 0;
}

/* Why: the container's init moved into its cgroup (a write of cgroup.procs). */
TRACEPOINT_PROBE(cgroup, cgroup_attach_task)
{
	struct sp_rt_op r = {};

	if (!sp_followed(bpf_get_current_pid_tgid() >> 32))
		return 0;
	sp_fill_header(&r.h, SP_RT_OP, sizeof(r));
	r.enter_ns = r.h.ts_ns;
	r.ret = args->pid;
	r.op = SP_RT_CGROUP_ATTACH;
	TP_DATA_LOC_READ_STR(r.path, dst_path, sizeof(r.path));
	sp_submit(&r, sizeof(r));
	return 0;
}

/* Why: runc's bootstrap names its stages (runc:[0:PARENT], [1:CHILD], [2:INIT]) with prctl. */
TRACEPOINT_PROBE(task, task_rename)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tid = (u32)id;
	struct sp_rename r = {};

	/* self-renames only (a comm written through /proc names another task) */
	if (args->pid != tid || !sp_followed(id >> 32))
		return 0;
#if SP_PROBE_EXEC
	if (exec_stash.lookup(&tid))
		return 0; /* every exec renames too: exec_done records say so already */
#endif
	sp_fill_header(&r.h, SP_RENAME, sizeof(r));
	__builtin_memcpy(r.h.comm, args->newcomm, SP_COMM_LEN);
	__builtin_memcpy(r.old_comm, args->oldcomm, SP_COMM_LEN);
	sp_submit(&r, sizeof(r));
	return 0;
}

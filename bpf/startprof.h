/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * startprof.h - the event ABI shared by the BPF programs (bpf/<probe>.bpf.c) and user space.
 *
 * Every record in the ring buffer starts with struct sp_header; sp_header.type says which
 * struct follows and sp_header.size how many bytes of it were sent (variable-size records send
 * only the bytes in use, so the tail array of a record is usually shorter than its capacity).
 *
 * Keep in sync with: src/startprof/probes/abi.py (the ctypes mirror; tests/unit/test_abi.py
 * compiles this header with cc and compares every sizeof/offsetof) and
 * src/startprof/events.py (the columns user space decodes these records into).
 *
 * Array capacities below are ABI constants. What may be tuned per load (-D cflags, see
 * startprof.bpf.c) are the limits that decide how much of a capacity is used.
 *
 * The header compiles in user space too (plain cc, <linux/types.h>): it holds no maps and
 * no helpers.
 */
#ifndef STARTPROF_H
#define STARTPROF_H

#include <linux/types.h>

/* Bump on any change to a layout or a constant below; recordings store it. */
#define STARTPROF_ABI_VERSION 1

#define SP_COMM_LEN 16

/* Record types: sp_header.type. */
enum sp_type {
	SP_EXEC = 1,	  /* struct sp_exec: sys_enter_execve/execveat */
	SP_EXEC_RET = 2,  /* struct sp_ret: sys_exit_execve/execveat that failed */
	SP_EXEC_DONE = 3, /* struct sp_exec_done: sched_process_exec */
	SP_FORK = 4,	  /* struct sp_fork: sched_process_fork of a process (not a thread) */
	SP_EXIT_GROUP = 5, /* struct sp_ret: sys_enter_exit_group, ret = exit code */
	SP_EXIT = 6,	  /* struct sp_header only: sched_process_exit with group_dead */
	SP_CLONE = 7,	  /* struct sp_ns: clone/clone3 that asked for new namespaces */
	SP_UNSHARE = 8,	  /* struct sp_ns */
	SP_SETNS = 9,	  /* struct sp_ns */
	SP_NL_SOCKET = 10, /* struct sp_nl_socket: socket(AF_NETLINK, ...) */
	SP_NL_SEND = 11,  /* struct sp_nl_msg: sendto/sendmsg on a netlink socket */
	SP_NL_RECV = 12,  /* struct sp_nl_msg: recvfrom/recvmsg on a netlink socket */
	SP_CRI_ACCEPT = 13, /* struct sp_cri_accept: accept/accept4 on a CRI listener */
	SP_CRI_DATA = 14, /* struct sp_cri_data: one chunk of a read/write on a CRI connection */
	SP_RT_OP = 15,	  /* struct sp_rt_op: a mount-type syscall or a cgroup event */
	SP_RENAME = 16,	  /* struct sp_rename: task_rename (prctl PR_SET_NAME, a comm write) */
	SP_IMG = 17,	  /* struct sp_img: containerd's content store and snapshot writes */
};

/* The common header of every record: 48 bytes, no padding. */
struct sp_header {
	__u32 type;		  /* enum sp_type */
	__u32 size;		  /* bytes of this record, header included */
	__u64 ts_ns;		  /* CLOCK_MONOTONIC ns (bpf_ktime_get_ns) when the record was built */
	__u32 pid;		  /* tgid */
	__u32 tid;		  /* thread id */
	__u64 cgroup_id;	  /* cgroup v2 id of the task */
	char comm[SP_COMM_LEN];	  /* task comm when the record was built */
};

/* ---- exec probe ---- */

/*
 * Capacity of sp_exec.strings: filename, argv and the CNI_* environment, each NUL-terminated,
 * back to back. SP_EXEC_STRINGS must be a power of two: the kernel masks offsets with it and
 * the extra SP_STR_CAP bytes let the last string start anywhere below SP_EXEC_STRINGS.
 */
#define SP_EXEC_STRINGS 8192
#define SP_STR_CAP 1024 /* upper bound of one string (SP_ARG_SIZE may be lower) */

/* sp_exec.trunc bits */
#define SP_TRUNC_FILENAME 0x1 /* the filename was cut at SP_ARG_SIZE */
#define SP_TRUNC_ARGV 0x2     /* more than SP_MAX_ARGS args, an arg cut, or the buffer full */
#define SP_TRUNC_ENV 0x4      /* a CNI_* variable was cut or not copied, or env not fully scanned */

#define SP_AT_FDCWD (-100) /* sp_exec.dirfd of a plain execve */

struct sp_exec {
	struct sp_header h;
	__s32 dirfd;	    /* execveat dirfd; SP_AT_FDCWD for execve */
	__u32 at_flags;	    /* execveat flags (AT_EMPTY_PATH for runc's memfd re-exec) */
	__u16 filename_len; /* bytes of the filename in strings[], NUL included */
	__u16 argc;	    /* argv strings in strings[] after the filename */
	__u16 envc;	    /* CNI_* strings in strings[] after argv */
	__u16 trunc;	    /* SP_TRUNC_* */
	char strings[SP_EXEC_STRINGS + SP_STR_CAP];
};

/* A syscall result: exec failure (SP_EXEC_RET) or the exit_group code (SP_EXIT_GROUP). */
struct sp_ret {
	struct sp_header h;
	__s64 ret;
};

struct sp_exec_done {
	struct sp_header h;
	__u32 old_tid;		    /* tid that called execve (a non-leader thread takes the tgid) */
	__u32 filename_len;	    /* bytes in filename[], NUL included */
	__u64 enter_ns;		    /* when execve was entered; 0 if the entry was not seen */
	char old_comm[SP_COMM_LEN]; /* comm before the exec; empty if the entry was not seen */
	char filename[SP_STR_CAP];  /* the new image (/dev/fd/N for a memfd re-exec) */
};

/* sp_fork.flags_known: where sp_fork.clone_flags came from */
#define SP_FLAGS_NONE 0	  /* fork()/vfork() syscall or a kernel thread: no flags seen */
#define SP_FLAGS_CLONE 1  /* clone() */
#define SP_FLAGS_CLONE3 2 /* clone3() (clone_args.flags read from user memory) */

struct sp_fork {
	struct sp_header h; /* the caller (CLONE_PARENT makes the caller's parent the parent) */
	__u32 child_pid;    /* the new process: its pid is its tgid */
	__u32 flags_known;  /* SP_FLAGS_* */
	__u64 clone_flags;  /* as passed: for clone() the low byte is the exit signal */
};

/* ---- namespaces probe ---- */

struct sp_ns {
	struct sp_header h; /* ts_ns = the syscall's return */
	__u64 flags;	    /* clone/clone3/unshare flags (clone's exit signal byte cleared); setns: 0 */
	__s64 ret;	    /* child pid (clone) or 0, or -errno */
	__u64 enter_ns;	    /* when the syscall was entered */
	__s32 fd;	    /* setns fd; -1 otherwise */
	__s32 nstype;	    /* setns nstype (CLONE_NEW* or 0); 0 otherwise */
};

/* ---- netlink probe ---- */

struct sp_nl_socket {
	struct sp_header h;
	__s32 fd;	/* socket()'s return */
	__s32 protocol; /* NETLINK_ROUTE = 0, NETLINK_NETFILTER = 12, ... */
	__s32 sock_type;
	__u32 reserved; /* always 0 */
};

/*
 * Capacity of sp_nl_msg.data. The copied head of a message is at most SP_NL_COPY bytes
 * (<= SP_NL_DATA / 2: offsets are masked with SP_NL_DATA / 2 - 1).
 */
#define SP_NL_DATA 4096

struct sp_nl_msg {
	struct sp_header h; /* ts_ns = the syscall's return */
	__s32 fd;
	__s32 protocol;
	__s64 ret;	/* bytes sent/received or -errno */
	__u64 enter_ns; /* when the syscall was entered */
	__u32 len;	/* send: bytes offered (all iovecs); recv: bytes received */
	__u32 copied;	/* bytes in data[] */
	__u32 msg_flags; /* the syscall's flags argument (MSG_PEEK, MSG_TRUNC, ...) */
	__u32 iovlen;	/* sendmsg/recvmsg: msg_iovlen; sendto/recvfrom: 1 */
	__u8 data[SP_NL_DATA];
};

/* ---- cri probe ---- */

/* sp_conn.flags and sp_cri_data.flags bits */
#define SP_CRI_OUT 0x1	       /* data: written by the server (write); else read by it */
#define SP_CRI_PREEXISTING 0x2 /* the connection was accepted before recording began */
#define SP_CRI_GAP 0x4	       /* bytes of this direction were lost before this chunk */
#define SP_CRI_TRUNCATED 0x8   /* bytes of this syscall after this chunk were not copied */

/* Connection ids user space gives to connections it seeds carry this bit. */
#define SP_CONN_ID_SEEDED 0x8000000000000000ULL

/* Value of the conns map, keyed by (tgid << 32 | fd); user space seeds preexisting ones. */
struct sp_conn {
	__u64 conn_id;
	__u32 flags;	   /* SP_CRI_PREEXISTING */
	__u32 gap_pending; /* bit 0: bytes lost on the in side, bit 1: on the out side */
};

struct sp_cri_accept {
	struct sp_header h;
	__s32 listen_fd;
	__s32 fd; /* the accepted connection */
	__u64 conn_id;
};

#define SP_CRI_CHUNK 4096 /* capacity of one chunk record; must be a power of two */

struct sp_cri_data {
	struct sp_header h; /* ts_ns = the syscall's return */
	__u64 conn_id;
	__s32 fd;
	__u32 flags;	/* SP_CRI_* */
	__s64 ret;	/* bytes the whole read/write moved */
	__u32 offset;	/* of this chunk within the syscall's bytes */
	__u32 len;	/* bytes in data[] */
	__u8 data[SP_CRI_CHUNK];
};

/* ---- runtime probe ---- */

#define SP_RT_PATH 64 /* capacity of sp_rt_op.path, NUL-terminated (longer paths are cut) */
#define SP_RT_FSTYPE 16

/* sp_rt_op.op: the syscall, or the cgroup tracepoint */
#define SP_RT_MOUNT 1	      /* mount(2): path = target, fstype = type */
#define SP_RT_UMOUNT 2	      /* umount2(2): path = target */
#define SP_RT_PIVOT_ROOT 3    /* pivot_root(2): path = new_root */
#define SP_RT_MOUNT_SETATTR 4 /* mount_setattr(2): path */
#define SP_RT_OPEN_TREE 5     /* open_tree(2): path = filename */
#define SP_RT_MOVE_MOUNT 6    /* move_mount(2): path = to_pathname */
#define SP_RT_FSMOUNT 7	      /* fsmount(2): no path */
#define SP_RT_CGROUP_MKDIR 8  /* cgroup:cgroup_mkdir: path = the new cgroup's */
#define SP_RT_CGROUP_ATTACH 9 /* cgroup:cgroup_attach_task: path = destination, ret = the pid */

struct sp_rt_op {
	struct sp_header h; /* ts_ns = the syscall's return (cgroup events: the event) */
	__u64 enter_ns;	    /* when the syscall was entered (cgroup events: ts_ns) */
	__s64 ret;	    /* 0 or -errno (cgroup_attach_task: the attached pid) */
	__u64 flags;	    /* the syscall's flags argument (mount: MS_*), 0 for cgroup events */
	__u32 op;	    /* SP_RT_* */
	__u32 reserved;	    /* always 0 */
	char fstype[SP_RT_FSTYPE];
	char path[SP_RT_PATH];
};

struct sp_rename {
	struct sp_header h; /* comm = the new name */
	char old_comm[SP_COMM_LEN];
};

/* ---- image probe ---- */

#define SP_IMG_KEY 72	  /* capacity of sp_img.key/key2: a digest's 64 hex digits, a snapshot id */
#define SP_IMG_HEAD 32	  /* first bytes of a fetched blob, kept to tell a manifest from a layer */
#define SP_IMG_PREFIX 160 /* capacity of a path prefix user space gives the probe */
#define SP_IMG_PREFIXES 8

/* sp_img_prefix.kind: what a file under the prefix is */
#define SP_IMG_K_INGEST 1 /* content store ingest: <prefix><64 hex>/data is a blob being fetched */
#define SP_IMG_K_BLOB 2	  /* content store blobs: <prefix><64 hex> is a committed blob */
#define SP_IMG_K_SNAP 3	  /* a snapshot being written: <prefix><id>/... (snapshots/N, tmpmounts) */
#define SP_IMG_K_NET 4	  /* not a prefix: a socket containerd sent a registry request on */

/* Value of the img_prefixes array; user space fills it from containerd's root. */
struct sp_img_prefix {
	__u32 len;  /* bytes of s in use (no NUL); 0 ends the list */
	__u32 kind; /* SP_IMG_K_* */
	char s[SP_IMG_PREFIX];
};

/* sp_img.op */
#define SP_IMG_INGEST 1 /* an ingest data file was closed: key = its ingest dir; its writes */
#define SP_IMG_COMMIT 2 /* rename of an ingest data file to a blob: key = digest, key2 = ingest */
#define SP_IMG_BLOB 3	/* a blob read was closed: key = digest; the snapshot writes made while
			   it was open (files > 0: it was a layer being unpacked), key2 = snapshot */
#define SP_IMG_UNPACK 4 /* snapshot writes flushed because another snapshot began: key2 */

struct sp_img {
	struct sp_header h; /* ts_ns = the close (rename: its return) */
	__u64 start_ns;	    /* the open (rename: its entry) */
	__u64 first_ns;	    /* first write (unpack: first file made); 0 if none */
	__u64 last_ns;	    /* last write */
	__u64 bytes;	    /* bytes written */
	/* INGEST: the registry response its bytes came from (0: not seen), read at its writes */
	__u64 req_ns;	    /* the request written (GET /v2/...) */
	__u64 net_first_ns; /* the response's first bytes received */
	__u64 net_last_ns;  /* its last bytes received before the ingest's last write */
	__u64 net_bytes;    /* bytes received on the connection since the request */
	__u32 files;	    /* unpack: regular files created */
	__u32 writes;	    /* write syscalls */
	__u32 op;	    /* SP_IMG_* */
	__s32 fd;	    /* the file's fd; -1 for COMMIT and UNPACK */
	__u8 head[SP_IMG_HEAD]; /* INGEST: the first bytes written */
	char key[SP_IMG_KEY];
	char key2[SP_IMG_KEY];
};

#endif /* STARTPROF_H */

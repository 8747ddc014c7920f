// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
/*
 * image.bpf.c - the image probe: an image pull as containerd's own file work. Every blob
 * (manifest, config, layer) is fetched into a content-store ingest file
 * (<root>/io.containerd.content.v1.content/ingest/<hex>/data), which is renamed to
 * blobs/sha256/<digest> when it is complete; a layer is unpacked by reading its blob while
 * creating files under a snapshot (<root>/io.containerd.snapshotter.v1.<name>/snapshots/<id>/
 * or a temporary mount under <root>/tmpmounts/).
 *
 * Only the processes in img_procs (the containerds user space found on the CRI socket), and
 * only paths under the prefixes user space put in img_prefixes (from containerd's root). An
 * ingest file or a blob read is one record when it is closed; the files of an unpack are
 * counted in the kernel (img_unpack) and sent once, with the blob that was being read: an
 * image of 10,000 files is a handful of records.
 *
 * #included by startprof.bpf.c, before cri.bpf.c (whose syscall fallback owns sys_enter_write).
 */

#define SP_IMG_PATH 256 /* bytes of a path read; only the prefix and the next component matter */
#define SP_IMG_HEX 64	/* a sha256 digest's hex digits: ingest dirs, blob names */

#define SP_O_ACCMODE 03
#define SP_O_CREAT 0100

/* Why: only containerd's own file work is a pull; user space names its processes. */
BPF_HASH(img_procs, u32, u8, 64);

/* Why: the content store and snapshot roots of those containerds, as path prefixes. */
BPF_ARRAY(img_prefixes, struct sp_img_prefix, SP_IMG_PREFIXES);

struct sp_img_fd {
	u64 start_ns;
	u64 first_ns;
	u64 last_ns;
	u64 bytes;
	u32 writes;
	u32 kind; /* SP_IMG_K_* */
	u8 head[SP_IMG_HEAD];
	char key[SP_IMG_KEY];
};

/* Why: the open ingest files, blob reads and snapshot files, keyed by (tgid << 32 | fd). */
BPF_HASH(img_fds, u64, struct sp_img_fd, 4096);

struct sp_img_unpack {
	u64 first_ns;
	u64 last_ns;
	u64 bytes;
	u64 snap_hash;
	u32 files;
	u32 writes;
	char snap[SP_IMG_KEY];
};

struct sp_img_digest {
	char hex[SP_IMG_HEX];
};

struct sp_img_net {
	u64 req_ns;	  /* the request written */
	u64 net_first_ns; /* its response's first bytes read */
	u64 net_last_ns;  /* the last */
	u64 net_bytes;	  /* bytes read, headers included */
};

/*
 * Why: each blob's registry response, by digest (from the request line: .../blobs/sha256:<hex>
 * or .../manifests/sha256:<hex>), until the blob's commit sends it. By digest, not by
 * connection: at a body's end Go hands the connection to the next fetch, and a small body is
 * read with the headers by the connection's own goroutine, not the one writing the ingest.
 */
BPF_TABLE("lru_hash", struct sp_img_digest, struct sp_img_net, img_nets, 1024);

/* Why: the snapshot writes of each containerd since they were last sent. */
BPF_HASH(img_unpack, u32, struct sp_img_unpack, 64);

struct sp_img_stash {
	u64 enter_ns;
	u64 path;  /* the old path (user pointers) */
	u64 path2; /* the new path */
};

/* Why: a rename's arguments for its exit. LRU: a missed exit ages out. */
BPF_TABLE("lru_hash", u32, struct sp_img_stash, img_stash, 1024);

static __always_inline bool img_proc(u32 tgid)
{
	return img_procs.lookup(&tgid) != NULL;
}

/*
 * Does path start with the prefix? Compared 8 bytes at a time, unrolled: a byte loop inside the
 * loop over prefixes is more states than the verifier allows. Both buffers are 8-byte aligned
 * and at least SP_IMG_PREFIX long; a path shorter than the prefix differs at its NUL.
 */
static __always_inline bool img_starts_with(const char *path, const struct sp_img_prefix *p)
{
	const u64 *a = (const u64 *)path;
	const u64 *b = (const u64 *)p->s;
	u32 n = p->len;

#pragma unroll
	for (u32 w = 0; w < SP_IMG_PREFIX / 8; w++) {
		u64 x;

		if (w * 8 >= n)
			return true;
		x = a[w] ^ b[w];
		if (n - w * 8 < 8)
			x &= (1ULL << ((n - w * 8) * 8)) - 1; /* little-endian: the first bytes */
		if (x)
			return false;
	}
	return true;
}

/*
 * Which prefix path starts with: its SP_IMG_K_* kind (0: none) and its length in *len. A loop
 * the verifier walks, not unrolled: unrolled too, the 8 x 20 compares inlined in three programs
 * doubled the time `record` takes to compile and load its probes (3.8 -> 7.2 s).
 */
static __always_inline u32 img_match(const char *path, u32 *len)
{
	for (u32 i = 0; i < SP_IMG_PREFIXES; i++) {
		u32 k = i;
		struct sp_img_prefix *p = img_prefixes.lookup(&k);

		if (!p || p->len == 0 || p->len > SP_IMG_PREFIX)
			return 0;
		if (img_starts_with(path, p)) {
			*len = p->len;
			return p->kind;
		}
	}
	return 0;
}


/*
 * The SP_IMG_KEY bytes after the prefix at path + at, into key (one helper call: a byte loop
 * writing the stack at a variable offset is more states than the verifier allows).
 */
static __always_inline bool img_copy(const char *path, u32 at, char *key)
{
	return bpf_probe_read_kernel(key, SP_IMG_KEY, path + sp_bound(at, SP_IMG_PATH - SP_IMG_KEY)) == 0;
}

/* A digest-named component (64 hex digits) followed by end: key NUL-terminated. */
static __always_inline bool img_hex_component(char *key, char end)
{
	if (key[SP_IMG_HEX] != end)
		return false;
	key[SP_IMG_HEX] = 0;
	return true;
}

/* A snapshot's component (snapshots/<id>/, tmpmounts/<name>/) followed by '/': key
   NUL-terminated. Only found leaves the loop's state: its counter is dead after it. */
static __always_inline bool img_dir_component(char *key)
{
	bool found = false;

	for (u32 j = 1; j < SP_IMG_KEY - 1; j++) {
		if (key[j] == 0)
			break;
		if (key[j] == '/') {
			key[j] = 0;
			found = true;
			break;
		}
	}
	return found;
}

static __always_inline u64 img_hash(const char *key)
{
	u64 h = 14695981039346656037ULL; /* FNV-1a */

	for (u32 j = 0; j < SP_IMG_KEY; j++) {
		if (key[j] == 0)
			break;
		h = (h ^ (u8)key[j]) * 1099511628211ULL;
	}
	return h;
}

/* The scratch record, zeroed, with its header and op (records are too large for the stack). */
static __always_inline struct sp_img *img_record(u32 op, s32 fd)
{
	union sp_scratch *s = sp_scratch();
	struct sp_img *r;

	if (!s)
		return 0;
	r = &s->img.rec;
	__builtin_memset(r, 0, sizeof(*r));
	sp_fill_header(&r->h, SP_IMG, sizeof(*r));
	r->op = op;
	r->fd = fd;
	return r;
}

/* Send the snapshot writes counted for a containerd (as op, with the blob when there is one). */
static __always_inline void img_flush(struct sp_img_unpack *u, u32 op, s32 fd,
				      struct sp_img_fd *blob)
{
	struct sp_img *r = img_record(op, fd);

	if (r) {
		r->first_ns = u->first_ns;
		r->last_ns = u->last_ns;
		r->bytes = u->bytes;
		r->files = u->files;
		r->writes = u->writes;
		__builtin_memcpy(r->key2, u->snap, SP_IMG_KEY);
		if (blob) {
			r->start_ns = blob->start_ns;
			__builtin_memcpy(r->key, blob->key, SP_IMG_KEY);
		} else {
			r->start_ns = u->first_ns;
		}
		sp_submit(r, sizeof(*r));
	}
	__builtin_memset(u, 0, sizeof(*u));
}

/* A file made under a snapshot: counted in the kernel, its fd marked for the write hook. */
static __always_inline void img_snapshot_file(u32 tgid, const char *snap, u64 now)
{
	struct sp_img_unpack zero = {};
	struct sp_img_unpack *u;
	u64 h = img_hash(snap);

	u = img_unpack.lookup_or_try_init(&tgid, &zero);
	if (!u) {
		sp_error(SP_ERR_STASH_FULL);
		return;
	}
	if (u->files && u->snap_hash != h)
		img_flush(u, SP_IMG_UNPACK, -1, 0); /* another snapshot began: send the last */
	if (!u->files) {
		u->first_ns = now;
		u->snap_hash = h;
		__builtin_memcpy(u->snap, snap, SP_IMG_KEY);
	}
	u->files++;
	u->last_ns = now;
}

/*
 * Why: an ingest file, a blob read or a snapshot file opened by containerd. One hook, at the
 * exit: openat runs on every process of the machine (~3,700 times per lab pod), and each
 * attached tracepoint costs every one of them its dispatch; the path and flags are read from
 * the saved user registers (x86_64: rsi, rdx), where the entry left them.
 */
SP_SYSCALL_EXIT(openat)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tgid = id >> 32;
	struct pt_regs *uregs; /* the syscall's: its arguments (the exit tracepoint has none) */
	union sp_scratch *s;
	struct sp_img_fd v = {};
	u32 kind, len = 0;
	u64 flags = 0, filename = 0, key;
	char *path;

	if (SP_SYSRET < 0 || !img_proc(tgid))
		return 0;
	uregs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	s = sp_scratch();
	if (!s || bpf_probe_read_kernel(&filename, sizeof(filename), &uregs->si) < 0 ||
	    bpf_probe_read_kernel(&flags, sizeof(flags), &uregs->dx) < 0 ||
	    bpf_probe_read_user_str(s->img.path, SP_IMG_PATH, (void *)filename) <= 0)
		return 0;
	v.start_ns = bpf_ktime_get_ns();
	path = s->img.path;
	kind = img_match(path, &len);
	if (!kind || !img_copy(path, len, v.key))
		return 0;
	if (kind == SP_IMG_K_INGEST) {
		/* <hex>/data, opened for writing: the blob's bytes (not ref, total, startedat) */
		u64 tail = 0;

		if ((flags & SP_O_ACCMODE) == 0 || !img_hex_component(v.key, '/') ||
		    bpf_probe_read_kernel(&tail, 6, path + sp_bound(len + SP_IMG_HEX, SP_IMG_PATH - 8)) < 0 ||
		    tail != 0x00617461642fULL /* "/data" and its NUL, little-endian */)
			return 0;
	} else if (kind == SP_IMG_K_BLOB) {
		if ((flags & SP_O_ACCMODE) != 0 || !img_hex_component(v.key, 0))
			return 0;
	} else {
		/* a regular file made in a snapshot being written */
		if (!(flags & SP_O_CREAT) || (flags & SP_O_ACCMODE) == 0 || !img_dir_component(v.key))
			return 0;
		img_snapshot_file(tgid, v.key, bpf_ktime_get_ns());
		__builtin_memset(v.key, 0, sizeof(v.key));
	}
	v.kind = kind;
	key = sp_fd_key(tgid, (s32)SP_SYSRET);
	if (img_fds.update(&key, &v) < 0) {
		sp_error(SP_ERR_STASH_FULL);
		return 0;
	}
	sp_mark_fds(tgid);
	return 0;
}

#define SP_IMG_REQ_GET 0x2f32762f20544547ULL  /* "GET /v2/", little-endian */
#define SP_IMG_REQ_HEAD 0x32762f2044414548ULL /* "HEAD /v2" */

#define SP_IMG_HTTP 0x312e312f50545448ULL /* "HTTP/1.1" */
#define SP_IMG_SHA 0x3a36353261687300ULL	/* "\0sha256:" shifted: the 7 bytes "sha256:" */

/*
 * The digest a request line names (..sha256:<hex> HTTP/1.1\r\n) into key; false when it
 * names none (a manifest by tag). The line is scanned for its end once, then checked at fixed places.
 */
static __always_inline bool img_request_digest(u64 buf, u64 count, char *key)
{
	union sp_scratch *s = sp_scratch();
	u64 word = 0, n = count < SP_IMG_PATH ? count : SP_IMG_PATH;
	char *line;
	u32 end, at;

	if (!s || n < 16 || bpf_probe_read_user(s->img.path, sp_bound(n, SP_IMG_PATH), (void *)buf) < 0)
		return false;
	line = s->img.path;
	for (end = 0; end < SP_IMG_PATH; end++) {
		if (line[end] == '\r')
			break;
	}
	/* "sha256:" (7) + 64 hex + " HTTP/1.1" (9) before the \r, inside what was written (the
	   scratch beyond it holds an earlier path) */
	if (end >= n || end >= SP_IMG_PATH || end < 7 + SP_IMG_HEX + 9 + 8)
		return false;
	SP_RD(s->img.rec.fd) = end; /* through map memory: one verifier state from here on */
	at = SP_RD(s->img.rec.fd);
	if (at < 7 + SP_IMG_HEX + 9 || at >= SP_IMG_PATH)
		return false;
	if (bpf_probe_read_kernel(&word, 8, line + sp_bound(at - 8, SP_IMG_PATH - 8)) < 0 ||
	    word != SP_IMG_HTTP)
		return false;
	if (bpf_probe_read_kernel(&word, 8, line + sp_bound(at - 9 - SP_IMG_HEX - 8, SP_IMG_PATH - 8)) < 0 ||
	    (word & ~0xffULL) != SP_IMG_SHA)
		return false;
	return bpf_probe_read_kernel(key, SP_IMG_HEX, line + sp_bound(at - 9 - SP_IMG_HEX, SP_IMG_PATH - SP_IMG_HEX)) == 0;
}

/* A registry request (GET or HEAD of /v2/...) written on fd: the socket is marked with the
   digest it asks for, whose response's bytes are counted from here (a reused connection
   starts over at each request). */
static __always_inline void img_request(u32 tgid, u64 key, struct sp_img_fd *v, u64 buf,
					u64 count, u64 now)
{
	struct sp_img_fd fresh = {};
	struct sp_img_net net = {};
	u64 head = 0;

	if (count < 8 || bpf_probe_read_user(&head, sizeof(head), (void *)buf) < 0 ||
	    (head != SP_IMG_REQ_GET && head != SP_IMG_REQ_HEAD))
		return;
	if (!v) {
		fresh.kind = SP_IMG_K_NET;
		if (img_fds.update(&key, &fresh) < 0) {
			sp_error(SP_ERR_STASH_FULL);
			return;
		}
		sp_mark_fds(tgid);
		v = img_fds.lookup(&key);
		if (!v)
			return;
	}
	__builtin_memset(v->key, 0, sizeof(v->key));
	if (head != SP_IMG_REQ_GET || !img_request_digest(buf, count, v->key))
		return;
	net.req_ns = now;
	img_nets.update((struct sp_img_digest *)v->key, &net);
}

/*
 * A write by containerd (at its entry: a request must be marked before its response can be
 * read, which on loopback can happen before the write returns): the bytes of its marked
 * files (count: writes to regular files are whole), or a registry request.
 */
static __always_inline void img_on_write_enter(s32 fd, u64 buf, u64 count)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tgid = id >> 32;
	struct sp_img_fd *v;
	struct sp_img_unpack *u;
	u64 key, now;

	if (!count || !img_proc(tgid))
		return;
	key = sp_fd_key(tgid, fd);
	v = img_fds.lookup(&key);
	now = bpf_ktime_get_ns();
	if (!v || v->kind == SP_IMG_K_NET) {
		img_request(tgid, key, v, buf, count, now);
		return;
	}
	if (v->kind == SP_IMG_K_INGEST) {
		if (!v->first_ns) {
			v->first_ns = now;
			bpf_probe_read_user(v->head, sizeof(v->head), (void *)buf);
		}
		v->last_ns = now;
		v->bytes += count;
		v->writes++;
	} else if (v->kind == SP_IMG_K_SNAP) {
		u = img_unpack.lookup(&tgid);
		if (u) {
			u->bytes += count;
			u->writes++;
			u->last_ns = now;
		}
	}
}

/* A socket read by containerd (sock:sock_recv_length): a registry response's bytes. */
static __always_inline void img_on_recv(int ret)
{
	u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct pt_regs *regs;
	struct sp_img_fd *v;
	struct sp_img_net *net;
	u64 nr = 0, fd = 0, key, now;

	if (ret <= 0 || !img_proc(tgid))
		return;
	regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	if (bpf_probe_read_kernel(&nr, sizeof(nr), &regs->orig_ax) < 0 ||
	    (nr != 0 /* read */ && nr != 45 /* recvfrom */) ||
	    bpf_probe_read_kernel(&fd, sizeof(fd), &regs->di) < 0)
		return;
	key = sp_fd_key(tgid, (s32)fd);
	v = img_fds.lookup(&key);
	if (!v || v->kind != SP_IMG_K_NET || !v->key[0])
		return;
	net = img_nets.lookup((struct sp_img_digest *)v->key);
	if (!net)
		return;
	now = bpf_ktime_get_ns();
	if (!net->net_first_ns)
		net->net_first_ns = now;
	net->net_last_ns = now;
	net->net_bytes += ret;
}

#if SP_CRI_SOCK_TP && !SP_PROBE_CRI
/* Why: a registry response's bytes as containerd reads them (cri.bpf.c owns it otherwise). */
TRACEPOINT_PROBE(sock, sock_recv_length)
{
	img_on_recv(args->ret);
	return 0;
}
#endif

#if !(SP_PROBE_CRI && !SP_CRI_SOCK_TP)
/* Why: the bytes of a blob being fetched and of an unpacked layer's files; registry requests. */
SP_SYSCALL_ENTER(write)
{
	img_on_write_enter((s32)SP_SYSARG(0), SP_SYSARG(1), SP_SYSARG(2));
	return 0;
}
#endif

/* A marked fd is closed (sys_enter_close in startprof.bpf.c): the ingest or blob read ends. */
static __always_inline void img_on_close(u32 tgid, u64 key, s32 fd)
{
	struct sp_img_fd *v = img_fds.lookup(&key);
	struct sp_img_unpack *u;
	struct sp_img *r;

	if (!v)
		return;
	if (v->kind == SP_IMG_K_INGEST) {
		r = img_record(SP_IMG_INGEST, fd);
		if (r) {
			r->start_ns = v->start_ns;
			r->first_ns = v->first_ns;
			r->last_ns = v->last_ns;
			r->bytes = v->bytes;
			r->writes = v->writes;
			__builtin_memcpy(r->head, v->head, SP_IMG_HEAD);
			__builtin_memcpy(r->key, v->key, SP_IMG_KEY);
			sp_submit(r, sizeof(*r));
		}
	} else if (v->kind == SP_IMG_K_BLOB) {
		u = img_unpack.lookup(&tgid);
		/* the layer being unpacked was opened before the unpack's first file; a manifest or
		   config read in the middle (another pod's create) takes no files with it */
		if (u && u->files && v->start_ns <= u->first_ns) {
			img_flush(u, SP_IMG_BLOB, fd, v);
		} else {
			r = img_record(SP_IMG_BLOB, fd);
			if (r) {
				r->start_ns = v->start_ns;
				__builtin_memcpy(r->key, v->key, SP_IMG_KEY);
				sp_submit(r, sizeof(*r));
			}
		}
	}
	img_fds.delete(&key);
}

static __always_inline int img_rename_enter(const char *oldp, const char *newp)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tid = (u32)id;
	struct sp_img_stash st = {};

	if (!img_proc(id >> 32))
		return 0;
	st.enter_ns = bpf_ktime_get_ns();
	st.path = (u64)oldp;
	st.path2 = (u64)newp;
	img_stash.update(&tid, &st);
	return 0;
}

/* A completed ingest: <ingest>/<hex>/data renamed to blobs/sha256/<digest>. */
static __always_inline int img_rename_exit(long ret)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct sp_img_stash *st = img_stash.lookup(&tid);
	union sp_scratch *s;
	struct sp_img_net *net;
	struct sp_img *r;
	char *path;
	u64 oldp, newp, enter_ns;
	u32 len = 0;

	if (!st)
		return 0;
	oldp = st->path;
	newp = st->path2;
	enter_ns = st->enter_ns;
	img_stash.delete(&tid);
	if (ret != 0)
		return 0;
	r = img_record(SP_IMG_COMMIT, -1);
	s = sp_scratch(); /* the same slot: the path beside the record */
	if (!r || !s)
		return 0;
	path = s->img.path;
	if (bpf_probe_read_user_str(path, SP_IMG_PATH, (void *)newp) <= 0 ||
	    img_match(path, &len) != SP_IMG_K_BLOB || !img_copy(path, len, r->key) ||
	    !img_hex_component(r->key, 0))
		return 0;
	if (bpf_probe_read_user_str(path, SP_IMG_PATH, (void *)oldp) <= 0 ||
	    img_match(path, &len) != SP_IMG_K_INGEST || !img_copy(path, len, r->key2) ||
	    !img_hex_component(r->key2, '/'))
		return 0;
	r->start_ns = enter_ns;
	net = img_nets.lookup((struct sp_img_digest *)r->key);
	if (net) {
		r->req_ns = net->req_ns;
		r->net_first_ns = net->net_first_ns;
		r->net_last_ns = net->net_last_ns;
		r->net_bytes = net->net_bytes;
		img_nets.delete((struct sp_img_digest *)r->key);
	}
	sp_submit(r, sizeof(*r));
	return 0;
}

/* Why: a fetched blob is committed by a rename (Go's os.Rename is renameat on x86_64). */
SP_SYSCALL_ENTER(renameat)
{
	return img_rename_enter((const char *)SP_SYSARG(1), (const char *)SP_SYSARG(3));
}

SP_SYSCALL_EXIT(renameat)
{
	return img_rename_exit(SP_SYSRET);
}

SP_SYSCALL_ENTER(renameat2)
{
	return img_rename_enter((const char *)SP_SYSARG(1), (const char *)SP_SYSARG(3));
}

SP_SYSCALL_EXIT(renameat2)
{
	return img_rename_exit(SP_SYSRET);
}

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * containerdsnoop: copy the bytes that processes send on AF_UNIX stream
 * sockets into a ring buffer, exactly as the kernel accepted them.
 *
 * Every backend ends in emit_send(): it is given where the bytes are (a user
 * buffer, a user or kernel iovec array) and how many the kernel accepted
 * (the send's return value, never the requested length: a non-blocking
 * socket may accept less, and the retry sends the tail again), and submits
 * them as chunks of at most SNOOP_CHUNK bytes. Each chunk carries the offset
 * of its first byte in the sender socket's stream, so userspace detects any
 * chunk the ring buffer had no room for as a gap of a known size.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include "snoop.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define AF_UNIX 1
#define EAGAIN 11
#define EPIPE 32
#define SOCK_STREAM 1
#define S_IFMT 00170000
#define S_IFSOCK 0140000

/* Sends larger than this many chunks (1 GiB) are cut, and the cut counted. */
#define MAX_CHUNKS_PER_SEND (1 << 16)
/* Kernels without bpf_loop (before 5.17) get a bounded loop instead: the
 * first 64 chunks (1 MiB) of a send, the rest counted as lost. Their
 * verifier refuses a program that so much as names a bpf_loop callback,
 * so every program that emits exists twice, the second with the suffix
 * _bounded, and the loader keeps the one the kernel can run. The _bounded
 * twins also do without atomic fetch-and-add (5.12+): they are what every
 * kernel before 5.17 runs. */
#define MAX_CHUNKS_NO_LOOP 64


const volatile struct config cfg = {};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 16 << 20); /* resized from Go (--ringbuf-size) */
} events SEC(".maps");

struct emit_state {
	__u64 base;
	__u64 nr_segs;
	__u64 seg;      /* next segment to load */
	__u64 cur;      /* next byte to copy */
	__u64 cur_left; /* bytes left in the current segment */
	__u64 left;     /* bytes of the send not yet emitted */
	__u64 off;      /* stream offset of cur */
	__u64 skip;
	__u64 bulk_left; /* left at or below this, the bytes are bulk (0: none) */
	__u32 kind;
};

struct scratch {
	/* The loop state lives in the map, not on the stack: the verifier then
	 * sees every bpf_loop iteration start from the same unknown values and
	 * converges at once, instead of following each byte count. */
	struct emit_state st;
	struct event ev;
	__u8 data[SNOOP_CHUNK];
};

/* The record is assembled here rather than on the 512-byte stack, then
 * copied into the ring buffer with its real size.
 *
 * Per CPU, but not per program run: on a preemptible kernel (PREEMPT
 * full or lazy, the default of Debian's 7.x kernels; PREEMPT_RT) tracing
 * programs run with migration disabled, not preemption, so a program can
 * be preempted mid-record and another run on the same CPU. The kernel
 * never lets a program run again on a CPU where it is already running (it
 * skips the run, see SEND_MISSED), so each program that emits has a slot
 * of its own: one run's record can never be overwritten by another's. The
 * syscall backend has four exit programs, the socket tracepoint and
 * fentry backends two (the send program and its spare), kprobe one. */
#define SCRATCH_SLOTS 4

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SCRATCH_SLOTS);
	__type(key, __u32);
	__type(value, struct scratch);
} scratch_map SEC(".maps");

/* The close records' own, for the same reason: slot 0 for the close
 * programs, slot 1 for the socket tracepoint's end-of-file reads. The
 * padding is room for the path read's mask (fill_path), as data[] is in
 * struct scratch. */
struct close_record {
	struct event ev;
	__u8 pad[128];
};

/* One scratch record per program that reports closes: on a preemptible
 * kernel a send program and a read program can interleave on one CPU. */
enum { CLOSE_SLOT_RELEASE = 0, CLOSE_SLOT_EOF = 1, CLOSE_SLOT_EPIPE = 2 };

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, struct close_record);
} close_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct stats);
} stats_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SNOOP_MAX_PIDS);
	__type(key, __u32);
	__type(value, __u8);
} pid_filter SEC(".maps");

/* Bytes sent so far on each traced socket: the stream offset of the next
 * chunk. LRU so that closed sockets age out without a close hook. The
 * socket's inode says which socket the entry is for: a socket freed
 * without a close(2) (its process exited) leaves its entry, and a new
 * socket at the same address must not inherit its offset or be reported
 * closed as if traced. */
struct pos {
	__u64 off;
	__u64 ino;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct pos);
} send_pos SEC(".maps");

enum src_kind {
	SRC_UBUF = 1, /* one user buffer */
	SRC_UIOV = 2, /* iovec array in user memory, user buffers */
	SRC_KIOV = 3, /* iovec array in kernel memory, user buffers */
	SRC_KVEC = 4, /* kvec array in kernel memory, kernel buffers */
};

/* Where a send's bytes are, saved at entry and consumed at exit. */
struct send_src {
	__u64 sock; /* struct socket * */
	__u64 sk;   /* its struct sock, checked at entry to be AF_UNIX stream */
	__u64 base; /* the buffer, or the (i)ovec array */
	__u64 nr_segs;
	__u64 skip; /* bytes of the first segment already consumed */
	/* When the send began (0: not seen). The exit is too late for a
	 * call's start: the kernel queues the bytes before it, so the peer
	 * may read, answer and have its answer's exit run first. */
	__u64 start_ns;
	__u32 kind;
	__u32 verdict;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32); /* tid */
	__type(value, struct send_src);
} inflight SEC(".maps");

/* At least as many as inflight holds: every exit on the node (each write,
 * to a file, a pipe, a TCP socket) first checks this and skips the hash
 * lookup when nothing is in flight, which is nearly always. It never
 * undercounts: it is raised before an entry is stored, lowered only by the
 * exit that removes one; an entry lost otherwise (LRU eviction) only keeps
 * it high, which costs the lookup and nothing else. */
__u64 inflight_n SEC(".bss");

static __always_inline struct stats *stats(void);
static __always_inline __u64 socket_ino(struct socket *sock);
static __always_inline void send_missed(struct send_src *old);

static __always_inline void inflight_put(__u32 tid, struct send_src *src)
{
	struct send_src *old = bpf_map_lookup_elem(&inflight, &tid);

	if (old) {
		/* This thread's previous send never reached its exit program
		 * (SEND_MISSED): the new entry takes the stale one's place,
		 * without a new count. */
		send_missed(old);
		*old = *src;
		return;
	}
	__sync_fetch_and_add(&inflight_n, 1);
	bpf_map_update_elem(&inflight, &tid, src, BPF_ANY);
}


/* Set by the reader while it waits without its short timer (the ring has
 * been empty for a while): the next record wakes it. An idle tracer then
 * sleeps instead of polling. */
__u32 reader_parked SEC(".bss");

/* Waking the reader for every record costs a context switch per send on a
 * busy node; userspace polls on a short timer instead, and is woken early
 * only when it is parked, or when a record of size bytes takes the unread
 * data past a multiple of cfg.wakeup_bytes. Only past one: a wakeup is an
 * interrupt raised on this CPU (in a VM, an exit to the hypervisor), and
 * waking at every record past the threshold raised ~4,600 a second at
 * full speed where the crossings are ~250 (docs/performance.md). None is
 * lost by it: the reader waits edge-triggered in the netpoller, which
 * keeps a wakeup that comes while it is busy; a crossing two CPUs race
 * past unseen is caught at the next multiple, or by the reader's timer. */
static __always_inline __u64 wakeup_flag(__u64 size)
{
	__u64 avail;

	if (!cfg.wakeup_bytes)
		return 0;
	if (*(volatile __u32 *)&reader_parked)
		return BPF_RB_FORCE_WAKEUP;
	avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	if (avail / cfg.wakeup_bytes != (avail + size) / cfg.wakeup_bytes)
		return BPF_RB_FORCE_WAKEUP;
	return BPF_RB_NO_WAKEUP;
}

static __always_inline struct stats *stats(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&stats_map, &zero);
}

/* ---- finding the socket behind a file descriptor ------------------------
 *
 * This runs on every write(2) and close(2) on the node, so it must reject
 * everything that is not an AF_UNIX stream socket as cheaply as possible.
 * Each bpf_probe_read_kernel is a helper call with its own fault handling
 * (~15-20 ns); a load through a BTF-typed pointer is one instruction with an
 * exception-table entry. Kernels with bpf_rdonly_cast (6.2+) walk
 * task → files → fdt → fd[fd] → file → socket → sock with plain loads only.
 * Older kernels read each field with CO-RE probe reads.
 *
 * Comparing file->f_op with &socket_file_ops and sock->ops with
 * &unix_stream_ops (__ksym) would save one load more, but those are
 * static data symbols: absent from kallsyms without CONFIG_KALLSYMS_ALL
 * (this project's test host has none), and absent from BTF (only per-CPU
 * variables are), so they cannot be relied on; the inode mode and socket
 * type/family checks below are exact on every kernel.
 */
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym __weak;

/* A weak kfunc's address is 0 when the kernel lacks it; the branch on it is
 * then dead and the verifier never looks at the call. */
#define ksym_exists(sym) (!!(sym))

static __always_inline bool have_typed_walk(void)
{
	return ksym_exists(bpf_rdonly_cast) &&
	       bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_get_current_task_btf);
}

/* ptr->field of a kernel struct of the given type: a plain load where the
 * program may cast to kernel types (have_typed_walk), a CO-RE probe read
 * elsewhere. The socket programs run on every socket send and receive, and
 * a send's header takes a dozen such fields: as probe reads they were a
 * fifth of the send program's time (docs/performance.md). A bad address
 * reads as 0 either way. */
#define KREAD(type, ptr, field)                                                  \
	(have_typed_walk()                                                       \
		 ? ((type *)bpf_rdonly_cast((void *)(ptr), bpf_core_type_id_kernel(type)))->field \
		 : BPF_CORE_READ((type *)(ptr), field))

static __always_inline __u64 socket_ino(struct socket *sock)
{
	if (!sock)
		return 0;
	/* The socket and its inode are allocated together (struct socket_alloc);
	 * socket is its first member. */
	return KREAD(struct socket_alloc, sock, vfs_inode.i_ino);
}

/* The AF_UNIX stream socket behind fd, or NULL; *sockp gets its struct socket. */
static __always_inline struct sock *fd_unix_stream(__u64 fd, struct socket **sockp)
{
	struct file *file;
	struct socket *sock;
	struct sock *sk;

	if (have_typed_walk()) {
		struct fdtable *fdt = bpf_get_current_task_btf()->files->fdt;

		if (!fdt || fd >= fdt->max_fds)
			return NULL;
		/* The slot is read as the first word of a struct the verifier
		 * knows (any will do: the word is cast again right after), so
		 * that it is a plain load too; a bad address reads as 0. */
		struct list_head *slot = bpf_rdonly_cast(&fdt->fd[fd], bpf_core_type_id_kernel(struct list_head));

		file = bpf_rdonly_cast(slot->next, bpf_core_type_id_kernel(struct file));
		if (!file)
			return NULL;
		if ((file->f_inode->i_mode & S_IFMT) != S_IFSOCK)
			return NULL;
		sock = bpf_rdonly_cast(file->private_data, bpf_core_type_id_kernel(struct socket));
		if (!sock || sock->type != SOCK_STREAM)
			return NULL;
		sk = sock->sk;
		if (!sk || sk->__sk_common.skc_family != AF_UNIX)
			return NULL;
		*sockp = sock;
		return sk;
	}

	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds;

	if (!fdt || fd >= BPF_CORE_READ(fdt, max_fds))
		return NULL;
	fds = BPF_CORE_READ(fdt, fd);
	if (bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]) || !file)
		return NULL;
	if ((BPF_CORE_READ(file, f_inode, i_mode) & S_IFMT) != S_IFSOCK)
		return NULL;
	sock = BPF_CORE_READ(file, private_data);
	if (!sock || BPF_CORE_READ(sock, type) != SOCK_STREAM)
		return NULL;
	sk = BPF_CORE_READ(sock, sk);
	if (!sk || BPF_CORE_READ(sk, __sk_common.skc_family) != AF_UNIX)
		return NULL;
	*sockp = sock;
	return sk;
}

/* Which process holds each socket, learnt when it accepts a connection or
 * sends. The peer credentials alone can name a process long gone: a shim's
 * listening socket is created by a short-lived "shim start" process and
 * handed to the real shim.
 *
 * An entry is believed only while it provably still describes the socket:
 * - the key is a struct sock address, which the kernel reuses for a new
 *   socket once the old one is freed, so the entry also holds the socket's
 *   inode number (unique per socket), checked against the socket at that
 *   address now; an embryo (connected, not yet accepted) has no socket
 *   yet, so no entry describes it;
 * - the owner may have exited (and its pid been reused) or exec'd (closing
 *   its close-on-exec sockets) since: owner_gone holds when each process
 *   last did either, and an entry older than that is stale.
 * A stale entry is ignored, never repaired by guessing: the next send or
 * accept by the holder notes it again. */
struct owner {
	__u64 ino;
	__u64 ts;   /* when noted, bpf_ktime_get_ns */
	__u32 tgid;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64); /* struct sock * */
	__type(value, struct owner);
} sk_owner SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);   /* tgid */
	__type(value, __u64); /* last exit or exec, bpf_ktime_get_ns */
} owner_gone SEC(".maps");

static __always_inline bool owner_stale(const struct owner *o)
{
	__u32 tgid = o->tgid;
	__u64 *gone = bpf_map_lookup_elem(&owner_gone, &tgid);

	return gone && *gone >= o->ts;
}

/* Bumped by every change to the owners' bookkeeping: an entry of sk_owner
 * written, an exit or exec recorded in owner_gone. */
__u64 owner_gen SEC(".bss");

/* ---- per-CPU memory of answers about sockets -----------------------------
 *
 * A connection's sends ask the same questions again and again (who holds
 * the other end, is it on the --socket file), each a hash lookup or two.
 * Each CPU remembers the last answers for a few sockets (MEMO_SLOTS, by a
 * hash of the socket's inode number: a pointer cannot be multiplied in a
 * BPF program), each with what it was derived from,
 * checked at every use: an answer is used only where the lookups it
 * stands for would provably return the same (see each memo).
 *
 * On a preemptible kernel a program can be preempted on its CPU while it
 * writes an entry, and another run there write or read it meanwhile. An
 * entry is therefore written between two copies of a token, the clock
 * (bpf_ktime_get_ns) when the write began, first and last; it is believed
 * only when both copies read the same, before and after its fields. A
 * write or a read that another write interrupted sees them differ (the
 * two writes began a context switch apart, so with different clocks), and
 * the answer is looked up afresh.
 */
#define MEMO_SLOTS 8

static __always_inline __u32 memo_slot(__u64 ino)
{
	return (ino * 0x9E3779B97F4A7C15ULL) >> 61; /* 3 bits: MEMO_SLOTS */
}

/* Reading an entry: its first token, then its fields, then memo_intact. */
static __always_inline __u64 memo_token(__u64 *tok)
{
	__u64 t = *(volatile __u64 *)tok;

	barrier();
	return t;
}

static __always_inline bool memo_intact(__u64 t, __u64 *tok2)
{
	barrier();
	return t && t == *(volatile __u64 *)tok2;
}

/* Writing one: memo_write_begin, the fields, memo_write_end. */
static __always_inline __u64 memo_write_begin(__u64 *tok)
{
	__u64 t = bpf_ktime_get_ns();

	*(volatile __u64 *)tok = t;
	barrier();
	return t;
}

static __always_inline void memo_write_end(__u64 *tok2, __u64 t)
{
	barrier();
	*(volatile __u64 *)tok2 = t;
}

/* Owners known, per CPU: "sk, whose socket has inode ino, is held by
 * tgid", found so (noted and fresh) while owner_gen was gen. Both the
 * holder's own notes (the same process sending or reading the same
 * socket again, the usual case) and its peer's questions (who holds the
 * other end) ask exactly that, two hash lookups, and are answered from
 * here by an array lookup. While owner_gen has not moved, no owner entry
 * was written (nor evicted: evictions happen only in writes) and no
 * process exited or exec'd, so the lookups would find the same entry,
 * equally fresh. (An entry the LRU evicts is not noted again until
 * owner_gen moves: the peer is then unknown, never wrong.) */
struct owner_memo {
	__u64 tok;
	__u64 sk;
	__u64 ino;
	__u64 gen;
	__u32 tgid;
	__u32 pad;
	__u64 tok2;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MEMO_SLOTS);
	__type(key, __u32);
	__type(value, struct owner_memo);
} owner_memo_map SEC(".maps");

/* The holder this CPU remembers for sk with inode ino under gen, or 0. */
static __always_inline __u32 owner_remembered(struct sock *sk, __u64 ino, __u64 gen)
{
	__u32 slot = memo_slot(ino);
	struct owner_memo *m = bpf_map_lookup_elem(&owner_memo_map, &slot);
	__u64 tok;
	__u32 tgid;

	if (!m)
		return 0;
	tok = memo_token(&m->tok);
	if (m->sk != (__u64)sk || m->ino != ino || m->gen != gen)
		return 0;
	tgid = m->tgid;
	return memo_intact(tok, &m->tok2) ? tgid : 0;
}

/* gen: owner_gen as read before the lookups that found tgid. */
static __always_inline void owner_remember(struct sock *sk, __u64 ino, __u64 gen, __u32 tgid)
{
	__u32 slot = memo_slot(ino);
	struct owner_memo *m = bpf_map_lookup_elem(&owner_memo_map, &slot);
	__u64 tok;

	if (!m)
		return;
	tok = memo_write_begin(&m->tok);
	m->sk = (__u64)sk;
	m->ino = ino;
	m->gen = gen;
	m->tgid = tgid;
	memo_write_end(&m->tok2, tok);
}

/* recheck: also renew an entry that names tgid already but has gone
 * stale (tgid exec'd since it was noted); without it, such an entry
 * waits for tgid's next note with recheck, which saves a lookup. */
static __always_inline void note_owner_as(struct socket *sock, struct sock *sk, __u32 tgid, bool recheck)
{
	__u64 key = (__u64)sk;
	__u64 ino = socket_ino(sock);
	__u64 gen = *(volatile __u64 *)&owner_gen;
	struct owner *cur;
	struct owner o = {};

	if (owner_remembered(sk, ino, gen) == tgid)
		return;
	cur = bpf_map_lookup_elem(&sk_owner, &key);
	if (!cur || cur->tgid != tgid || cur->ino != ino || (recheck && owner_stale(cur))) {
		o.ino = ino;
		o.ts = bpf_ktime_get_ns();
		o.tgid = tgid;
		bpf_map_update_elem(&sk_owner, &key, &o, BPF_ANY);
		/* The memory keeps gen as read before the lookup: this bump
		 * (and any other since) makes the next note look again. */
		__sync_fetch_and_add(&owner_gen, 1);
	} else if (!recheck) {
		return; /* not checked for staleness: not known fresh */
	}
	owner_remember(sk, ino, gen, tgid);
}

static __always_inline void note_owner(struct socket *sock, struct sock *sk, __u32 tgid)
{
	note_owner_as(sock, sk, tgid, true);
}

/* The process known to hold sk, whose socket now has inode ino, or 0. */
static __always_inline __u32 owner_of_ino(struct sock *sk, __u64 ino)
{
	__u64 key = (__u64)sk;
	struct owner *o;

	if (!ino)
		return 0;
	o = bpf_map_lookup_elem(&sk_owner, &key);
	if (!o || o->ino != ino || owner_stale(o))
		return 0;
	return o->tgid;
}

/* The process known to hold sk now, or 0. */
static __always_inline __u32 owner_of(struct sock *sk)
{
	return owner_of_ino(sk, socket_ino(KREAD(struct sock, sk, sk_socket)));
}

/* owner_of(peer), answered from this CPU's memory when it can be. */
static __always_inline __u32 owner_of_remembered(struct sock *peer)
{
	__u64 ino = socket_ino(KREAD(struct sock, peer, sk_socket));
	__u64 gen = *(volatile __u64 *)&owner_gen;
	__u32 tgid;

	if (!ino)
		return 0;
	if ((tgid = owner_remembered(peer, ino, gen)))
		return tgid;
	if ((tgid = owner_of_ino(peer, ino)))
		owner_remember(peer, ino, gen, tgid);
	return tgid;
}

/* The process known, from the owners noted, to be at the other end of sk's
 * connection, or 0. */
static __always_inline __u32 peer_owner(struct sock *sk)
{
	struct sock *peer = KREAD(struct unix_sock, sk, peer);
	__u32 owner;

	if (!peer)
		return 0;
	if ((owner = owner_of_remembered(peer)))
		return owner;
	/* Not accepted yet (a client may send before the server accepts):
	 * the process accepting on its listener will hold it. Kernels before
	 * 6.10 do not link an embryo to its listener. */
	if (bpf_core_field_exists(((struct unix_sock *)peer)->listener)) {
		struct sock *l = KREAD(struct unix_sock, peer, listener);
		if (l && (owner = owner_of(l)))
			return owner;
	}
	return 0;
}

/* The process sk's peer credentials name, if it is still alive: the one that
 * connected, or for a client the one that called listen(), which need not
 * be the one that accepts (a shim's "start" process, systemd's socket
 * activation). */
static __always_inline __u32 peer_creds(struct sock *sk)
{
	struct pid *pid = KREAD(struct sock, sk, sk_peer_pid);

	if (!pid)
		return 0;
	/* If it has exited since, no process is its thread-group leader any
	 * more: say unknown rather than name it. */
	if (!KREAD(struct pid, pid, tasks[bpf_core_enum_value(enum pid_type, PIDTYPE_TGID)].first))
		return 0;
	/* numbers[0] is the pid in the initial namespace, like bpf_get_current_pid_tgid. */
	return KREAD(struct pid, pid, numbers[0].nr);
}

/* ---- --socket: only connections on one socket file ----------------------
 *
 * Decided before anything is looked up or copied, so other unix traffic
 * on a busy node costs only this check and cannot crowd the selected
 * socket's bytes out of the ring buffer. A connection is identified by the
 * socket file its listener was bound to: an accepted socket shares its
 * listener's path (unix_stream_connect copies it to the new socket), and a
 * client's peer is that accepted socket. The file is named by directory and
 * name (struct sock_path_key), which userspace resolves from --socket
 * (symlinks followed) and re-resolves periodically.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16);
	__type(key, struct sock_path_key);
	__type(value, __u8);
} sock_filter SEC(".maps");

static __always_inline bool bound_in_filter(struct sock *sk)
{
	struct dentry *d = KREAD(struct unix_sock, sk, path.dentry);
	struct sock_path_key key = {};
	struct dentry *dir;
	struct inode *di;
	struct super_block *sb;
	const unsigned char *name;
	__u32 len;

	if (!d)
		return false;
	len = KREAD(struct dentry, d, d_name.len);
	if (len == 0 || len > SNOOP_NAME_MAX)
		return false;
	dir = KREAD(struct dentry, d, d_parent);
	di = KREAD(struct dentry, dir, d_inode);
	if (!di)
		return false;
	key.dir_ino = KREAD(struct inode, di, i_ino);
	sb = KREAD(struct inode, di, i_sb);
	key.dev = KREAD(struct super_block, sb, s_dev);
	key.name_len = len;
	name = KREAD(struct dentry, d, d_name.name);
	barrier_var(len);
	len &= SNOOP_NAME_MAX * 2 - 1;
	if (len > SNOOP_NAME_MAX)
		return false;
	if (bpf_probe_read_kernel(key.name, len, name))
		return false;
	return bpf_map_lookup_elem(&sock_filter, &key) != NULL;
}

/* The sender's own socket, or its peer, is bound to a selected file. */
static __always_inline bool on_selected_socket_now(struct sock *sk)
{
	struct sock *peer;

	if (bound_in_filter(sk))
		return true;
	peer = KREAD(struct unix_sock, sk, peer);
	return peer && bound_in_filter(peer);
}

/* The answer above per socket, so that a connection's sends after its
 * first cost a lookup rather than the path walk (~400 ns of the ~2.9 µs a
 * send's program took with --socket, docs/performance.md). It cannot
 * change during a connection but for the filter itself: a socket's
 * binding and its peer are fixed once it can send. So an answer holds
 * while the socket's inode is the same (the address may be reused by a
 * new socket) and the filter's generation is the one it was given with:
 * userspace bumps sock_filter_gen after every change to sock_filter. A
 * change racing with a lookup at worst stores an answer under the older
 * generation, which is asked again at the next send. */
struct filter_answer {
	__u64 ino;
	__u32 gen;
	__u32 selected;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64); /* struct sock * */
	__type(value, struct filter_answer);
} sock_verdict SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} sock_filter_gen SEC(".maps");

/* sock_verdict's answers, remembered per CPU (see MEMO_SLOTS) under the
 * same conditions: the socket, its inode and the filter's generation. */
struct verdict_memo {
	__u64 tok;
	__u64 sk;
	__u64 ino;
	__u32 gen;
	__u32 selected;
	__u64 tok2;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MEMO_SLOTS);
	__type(key, __u32);
	__type(value, struct verdict_memo);
} verdict_memo_map SEC(".maps");

static __always_inline bool on_selected_socket(struct sock *sk)
{
	struct socket *sock = KREAD(struct sock, sk, sk_socket);
	struct filter_answer *v, fresh = {};
	__u32 zero = 0, *gen, slot;
	struct verdict_memo *m;
	__u64 key = (__u64)sk, tok;
	bool selected;

	gen = bpf_map_lookup_elem(&sock_filter_gen, &zero);
	if (!gen || !sock)
		return on_selected_socket_now(sk);
	fresh.ino = socket_ino(sock);
	fresh.gen = *gen;
	slot = memo_slot(fresh.ino);
	m = bpf_map_lookup_elem(&verdict_memo_map, &slot);
	if (m) {
		tok = memo_token(&m->tok);
		if (m->sk == key && m->ino == fresh.ino && m->gen == fresh.gen) {
			selected = m->selected;
			if (memo_intact(tok, &m->tok2))
				return selected;
		}
	}
	v = bpf_map_lookup_elem(&sock_verdict, &key);
	if (v && v->ino == fresh.ino && v->gen == fresh.gen) {
		fresh.selected = v->selected;
	} else {
		fresh.selected = on_selected_socket_now(sk);
		bpf_map_update_elem(&sock_verdict, &key, &fresh, BPF_ANY);
	}
	if (m) {
		tok = memo_write_begin(&m->tok);
		m->sk = key;
		m->ino = fresh.ino;
		m->gen = fresh.gen;
		m->selected = fresh.selected;
		memo_write_end(&m->tok2, tok);
	}
	return fresh.selected;
}

/* The process at the other end of sk's connection, or 0 when unknown. */
static __always_inline __u32 peer_pid_of(struct sock *sk)
{
	__u32 owner = peer_owner(sk);

	return owner ? owner : peer_creds(sk);
}

enum verdict {
	SKIP = 0,
	TRACE = 1,
	/* Filtered, but the process at the other end is not known yet:
	 * traced and marked EVENT_F_UNDECIDED for userspace to decide. */
	UNDECIDED = 2,
};

static __always_inline enum verdict wanted(__u32 tgid, struct sock *sk)
{
	struct sock *other;
	__u32 peer;

	if (tgid == cfg.self_pid)
		return SKIP;
	if (cfg.filter_socket && !on_selected_socket(sk))
		return SKIP;
	if (!cfg.filter_pids)
		return TRACE;
	if (bpf_map_lookup_elem(&pid_filter, &tgid))
		return TRACE;
	if ((peer = peer_owner(sk)))
		return bpf_map_lookup_elem(&pid_filter, &peer) ? TRACE : SKIP;
	peer = peer_creds(sk);
	if (peer && bpf_map_lookup_elem(&pid_filter, &peer))
		return TRACE;
	/* When the other end is the accepting one (its socket carries the
	 * listener's address), the credentials name whoever created the
	 * listener, which need not be who accepts and reads (see peer_creds):
	 * they can say yes, not no. For a socket pair or a connecting client
	 * they name the process itself. */
	if (!peer)
		return UNDECIDED;
	other = KREAD(struct unix_sock, sk, peer);
	if (other && KREAD(struct unix_sock, other, addr))
		return UNDECIDED;
	return SKIP;
}

/* The socket path from addr (either end's), or none. */
static __always_inline void fill_path(struct event *ev, struct unix_address *addr)
{
	__u32 len;

	ev->path_len = 0;
	if (!addr)
		return;
	len = KREAD(struct unix_address, addr, len);
	if (len <= sizeof(__u16))
		return;
	len -= sizeof(__u16);
	if (len > SNOOP_PATH_MAX)
		len = SNOOP_PATH_MAX;
	/* Past here clang would drop the mask it can prove redundant; the
	 * verifier needs it to bound the read. */
	barrier_var(len);
	len &= 0x7f;
	if (!bpf_core_read(ev->path, len, &addr->name[0].sun_path))
		ev->path_len = len;
}

/* w with every byte from its first zero on cleared; *ended when it has
 * one. (w - 0x01..) & ~w & 0x80.. marks each zero byte's top bit, and
 * perhaps bytes above a zero one (a borrow): its lowest mark is exact. */
static __always_inline __u64 upto_nul(__u64 w, bool *ended)
{
	__u64 t = (w - 0x0101010101010101ULL) & ~w & 0x8080808080808080ULL;

	if (!t)
		return w;
	*ended = true;
	return w & (((t & -t) >> 7) - 1);
}

_Static_assert(SNOOP_COMM_LEN == 16, "fill_task copies the name as two words");

/* The current task's cgroup (the default hierarchy's, as
 * bpf_get_current_cgroup_id) and command name (as bpf_get_current_comm:
 * cut at 15 bytes, zero-padded). Where the program can load kernel
 * fields itself (have_typed_walk), from the task with plain loads: the
 * two helper calls were ~80 ns of a send's ~1.3 µs (docs/performance.md). */

static __always_inline void fill_task(struct event *ev)
{
	if (have_typed_walk()) {
		struct task_struct *task = bpf_get_current_task_btf();
		bool ended = false;
		__u64 lo, hi;

		ev->cgroup_id = task->cgroups->dfl_cgrp->kn->id;
		lo = upto_nul(*(__u64 *)&task->comm[0], &ended);
		hi = ended ? 0 : upto_nul(*(__u64 *)&task->comm[8], &ended);
		*(__u64 *)&ev->comm[0] = lo;
		*(__u64 *)&ev->comm[8] = hi & 0x00ffffffffffffffULL;
		return;
	}
	ev->cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(ev->comm, sizeof(ev->comm));
}

/* Fill what every chunk of one send shares; start_ns is when the send
 * began (0: not seen, and for closes). */
static __always_inline void fill_header(struct event *ev, struct socket *sock,
					struct sock *sk, __u64 send_len, __u64 start_ns)
{
	struct unix_sock *u = (struct unix_sock *)sk;
	struct sock *peer = KREAD(struct unix_sock, u, peer);
	struct unix_address *addr = KREAD(struct unix_sock, u, addr);
	__u64 pid_tgid = bpf_get_current_pid_tgid();

	ev->ts_ns = bpf_ktime_get_ns();
	ev->start_ns = start_ns;
	ev->sk = (__u64)sk;
	ev->peer_sk = (__u64)peer;
	ev->sock_ino = socket_ino(sock);
	ev->peer_ino = 0;
	if (peer) {
		struct socket *psock = KREAD(struct sock, peer, sk_socket);
		if (psock)
			ev->peer_ino = socket_ino(psock);
	}
	ev->pid = pid_tgid >> 32;
	ev->tid = (__u32)pid_tgid;
	ev->peer_pid = peer_pid_of(sk);
	ev->send_len = send_len;
	ev->flags = 0;
	ev->len = 0;
	fill_task(ev);

	/* A client socket is usually unbound; the accepted socket on the
	 * server side carries the listener's address. */
	if (addr)
		ev->flags |= EVENT_F_BOUND;
	else if (peer)
		addr = KREAD(struct unix_sock, peer, addr);
	fill_path(ev, addr);
}

static long emit_step(__u64 index, void *ctx)
{
	struct emit_state *st;
	struct scratch *sc;
	struct stats *s;
	__u32 slot = *(__u32 *)ctx;
	__u64 n, size;
	long err;

	sc = bpf_map_lookup_elem(&scratch_map, &slot);
	if (!sc)
		return 1;
	st = &sc->st;
	if (st->left == 0)
		return 1;
	if (st->cur_left == 0) {
		struct iovec iov = {};

		if (st->seg >= st->nr_segs)
			return 1;
		if (st->kind == SRC_UIOV)
			err = bpf_probe_read_user(&iov, sizeof(iov), (void *)(st->base + st->seg * sizeof(iov)));
		else
			err = bpf_probe_read_kernel(&iov, sizeof(iov), (void *)(st->base + st->seg * sizeof(iov)));
		if (err)
			return 1;
		st->cur = (__u64)iov.iov_base;
		st->cur_left = iov.iov_len;
		if (st->seg == 0 && st->skip <= st->cur_left) {
			st->cur += st->skip;
			st->cur_left -= st->skip;
		}
		st->seg++;
		/* Emit from the new segment in this same step, so that a
		 * bounded loop's steps all carry bytes. */
		if (st->cur_left == 0)
			return 0;
	}

	n = st->cur_left < st->left ? st->cur_left : st->left;
	barrier_var(n);
	if (n > SNOOP_CHUNK)
		n = SNOOP_CHUNK;
	s = stats();
	if (st->left <= st->bulk_left && cfg.bulk_room &&
	    bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) > cfg.bulk_room) {
		/* Shed: the offset still advances, so userspace sees a gap
		 * of this size, as for a chunk the ring had no room for. */
		if (s) {
			s->lost_events++;
			s->lost_bytes += n;
			s->shed_bytes += n;
		}
		goto next;
	}
	sc->ev.len = n;
	sc->ev.stream_off = st->off;
	if (st->kind == SRC_KVEC)
		err = bpf_probe_read_kernel(sc->data, n, (void *)st->cur);
	else
		err = bpf_probe_read_user(sc->data, n, (void *)st->cur);
	size = sizeof(sc->ev) + n;
	if (err) {
		sc->ev.flags |= EVENT_F_FAULT;
		size = sizeof(sc->ev);
		if (s)
			s->faults++;
	}
	if (bpf_ringbuf_output(&events, &sc->ev, size, wakeup_flag(size))) {
		if (s) {
			s->lost_events++;
			s->lost_bytes += n;
		}
	} else if (s) {
		s->events++;
		s->bytes += n;
	}
	sc->ev.flags &= ~(EVENT_F_FAULT | EVENT_F_NEW);
next:
	st->cur += n;
	st->cur_left -= n;
	st->left -= n;
	st->off += n;
	return 0;
}

static __always_inline void emit_send(struct send_src *src, __u64 sent, __u8 backend, bool loop, __u32 slot)
{
	struct socket *sock = (struct socket *)src->sock;
	struct sock *sk = (struct sock *)src->sk;
	struct emit_state *st;
	struct scratch *sc;
	struct pos *pos, fresh = {};
	__u64 key;
	__u32 iters;
	struct stats *s;

	if (!sk)
		return;
	note_owner(sock, sk, bpf_get_current_pid_tgid() >> 32);
	sc = bpf_map_lookup_elem(&scratch_map, &slot);
	if (!sc)
		return;
	fill_header(&sc->ev, sock, sk, sent, src->start_ns);
	sc->ev.backend = backend;
	if (src->verdict == UNDECIDED)
		sc->ev.flags |= EVENT_F_UNDECIDED;

	key = (__u64)sk;
	fresh.ino = sc->ev.sock_ino;
	pos = bpf_map_lookup_elem(&send_pos, &key);
	if (!pos || pos->ino != fresh.ino) {
		/* New, or another socket's at the same address: start over.
		 * An update replaces the element, so the value is looked up
		 * again; a send on a known socket (nearly every send) costs
		 * one lookup. */
		bpf_map_update_elem(&send_pos, &key, &fresh, pos ? BPF_ANY : BPF_NOEXIST);
		sc->ev.flags |= EVENT_F_NEW;
		pos = bpf_map_lookup_elem(&send_pos, &key);
		if (!pos)
			return;
	}
	st = &sc->st;
	if (loop) {
		st->off = __sync_fetch_and_add(&pos->off, sent);
	} else {
		/* An atomic add that returns the old value (BPF_FETCH) is 5.12+;
		 * the bounded twins also run on 5.10, where only a plain atomic
		 * add is allowed. Two threads sending on one socket at the same
		 * instant could then be given the same offset. */
		st->off = pos->off;
		__sync_fetch_and_add(&pos->off, sent);
	}
	if (!src->kind) {
		/* Bytes we cannot read (pages spliced into the socket): the
		 * offset still advances, so userspace sees a gap of this size. */
		if ((s = stats()))
			s->lost_bytes += sent;
		return;
	}
	st->kind = src->kind;
	st->left = sent;
	st->bulk_left = sent > cfg.bulk_after ? sent - cfg.bulk_after : 0;
	st->skip = src->skip;
	if (src->kind == SRC_UBUF) {
		st->base = 0;
		st->cur = src->base + src->skip;
		st->cur_left = sent;
		st->seg = st->nr_segs = 1;
	} else {
		st->base = src->base;
		st->nr_segs = src->nr_segs;
		st->cur = st->cur_left = st->seg = 0;
	}

	/* A step emits a chunk (after loading a segment when the last one is
	 * used up), and a chunk ends at a segment's end at the latest. */
	iters = sent / SNOOP_CHUNK + 2 * st->nr_segs + 1;
	if (iters > MAX_CHUNKS_PER_SEND)
		iters = MAX_CHUNKS_PER_SEND;
	if (loop) {
		bpf_loop(iters, emit_step, &slot, 0);
	} else {
		for (int i = 0; i < MAX_CHUNKS_NO_LOOP; i++)
			if (emit_step(i, &slot))
				break;
	}
	/* Whatever could not be walked (bad iovec, loop bound) is lost, and
	 * the next send's stream offset will show the gap to userspace. */
	if (st->left && (s = stats()))
		s->lost_bytes += st->left;
}

/* ---- sends the kernel skipped ---------------------------------------------
 *
 * SEND_MISSED. The kernel skips a tracing program's run, silently but for
 * a per-program counter (bpf_prog_info.recursion_misses), when the same
 * program is already running on that CPU: on a preemptible kernel
 * (PREEMPT full or lazy, PREEMPT_RT) a run preempted midway and another
 * task's send on the same CPU are enough. The kernel matrix saw it on
 * Debian's 7.2 (lazy) with the fentry and syscall backends: a send's entry
 * or exit program skipped now and then in a burst from four threads on two
 * CPUs. A kretprobe skips a return too when more calls are in progress
 * than its maxactive (raised by the loader where tracefs allows; else, on
 * kernels without CONFIG_PREEMPTION such as Debian's 5.10, as many as
 * there are CPUs), counted in the kprobe's own nmissed only.
 *
 * The fentry and socket tracepoint backends have a spare program beside
 * each send program, which takes exactly the runs the first is skipped
 * for (fentry_busy, socktp_busy); what follows is for a send whose spare
 * was skipped too, and for the other backends.
 *
 * Such a send must not vanish from its stream unseen, or the bytes after
 * it would be decoded as if they followed the ones before:
 * - entry ran, exit skipped: the entry stays in inflight and the thread's
 *   next send, or its exit (any_sched_exit), finds it. How many bytes were
 *   sent is unknown, so the socket's stream cannot go on where it was: its
 *   offset is dropped, its next send starts it over (EVENT_F_NEW, which
 *   userspace takes as state lost), and stats.missed_exits counts the send;
 * - entry skipped, exit ran (fexit, which has the socket and the count):
 *   the offset moves over the send and its bytes count as lost: an exact
 *   gap;
 * - otherwise nothing of the send reaches the maps: userspace adds the
 *   kernel's per-program miss counters to the lost events.
 */
static __always_inline void send_missed(struct send_src *old)
{
	struct stats *s = stats();
	__u64 key = old->sk;
	struct pos *pos;

	if (s)
		s->missed_exits++;
	pos = bpf_map_lookup_elem(&send_pos, &key);
	if (pos && pos->ino == socket_ino((struct socket *)old->sock))
		bpf_map_delete_elem(&send_pos, &key);
}

/* An exit with no entry in inflight: its entry was skipped (or the entry
 * was evicted). On a socket being traced, the stream moves over the bytes
 * and they count as lost. */
static __always_inline void send_unseen(struct socket *sock, __u64 sent)
{
	struct sock *sk = KREAD(struct socket, sock, sk);
	struct stats *s;
	struct pos *pos;
	__u64 key = (__u64)sk;

	if (!sk)
		return;
	pos = bpf_map_lookup_elem(&send_pos, &key);
	if (!pos || pos->ino != socket_ino(sock))
		return; /* not traced (yet): its stream starts with a later send */
	if (wanted(bpf_get_current_pid_tgid() >> 32, sk) == SKIP)
		return;
	__sync_fetch_and_add(&pos->off, sent);
	if ((s = stats()))
		s->lost_bytes += sent;
}

/* ---- backend: syscall tracepoints --------------------------------------
 *
 * The context is the kernel's own syscall_trace_enter/exit, read with CO-RE:
 * real-time kernels (6.1-rt) have a larger trace_entry, which moves args and
 * ret; trace_event_raw_sys_enter describes raw_syscalls, not these events.
 *
 * Any hook on syscalls makes the kernel take its slower syscall entry for
 * every task while it is attached; the fentry and kprobe backends hook only
 * unix socket functions, and the socket tracepoints (6.3+) only socket
 * sends and receives, and avoid that entirely. One program on the raw
 * sys_enter/sys_exit tracepoints, dispatching on the syscall number, was
 * measured too: it takes 100 ns off an unrelated write(2) but adds 70 ns to
 * every other syscall, which on any real mix of syscalls costs the node
 * more (docs/performance.md).
 */

/* Where a send's bytes are, given a syscall's arguments: a buffer, an
 * iovec array, or a msghdr (read only once the socket is known to be one
 * we trace). */
enum { ARGS_BUF, ARGS_IOV, ARGS_MSG };

static __always_inline int enter_send(__u64 fd, int args, __u64 arg1, __u64 arg2)
{
	struct socket *sock = NULL;
	struct sock *sk = fd_unix_stream(fd, &sock);
	struct user_msghdr msg;
	__u64 pid_tgid;
	__u32 tid;
	struct send_src src = {};

	if (!sk)
		return 0;
	pid_tgid = bpf_get_current_pid_tgid();
	tid = (__u32)pid_tgid;
	if (!(src.verdict = wanted(pid_tgid >> 32, sk)))
		return 0;
	src.sock = (__u64)sock;
	src.sk = (__u64)sk;
	src.start_ns = bpf_ktime_get_ns();
	switch (args) {
	case ARGS_BUF:
		src.kind = SRC_UBUF;
		src.base = arg1;
		src.nr_segs = 1;
		break;
	case ARGS_IOV:
		src.kind = SRC_UIOV;
		src.base = arg1;
		src.nr_segs = arg2;
		break;
	default:
		/* A msghdr we cannot read leaves kind 0: the send, if it
		 * succeeds, is then a gap of its exact size. */
		if (!bpf_probe_read_user(&msg, sizeof(msg), (void *)arg1)) {
			src.kind = SRC_UIOV;
			src.base = (__u64)msg.msg_iov;
			src.nr_segs = msg.msg_iovlen;
		}
	}
	inflight_put(tid, &src);
	return 0;
}

/* sock: the socket, when the exit program knows it (fexit), else NULL.
 * slot: the program's own scratch slot (see scratch_map). */
static __always_inline int exit_send(long ret, __u8 backend, bool loop, __u32 slot, struct socket *sock)
{
	struct send_src *p, src;
	__u32 tid;

	if (!sock && !*(volatile __u64 *)&inflight_n)
		return 0;
	tid = (__u32)bpf_get_current_pid_tgid();
	p = bpf_map_lookup_elem(&inflight, &tid);
	if (!p) {
		if (sock && ret > 0)
			send_unseen(sock, ret);
		return 0;
	}
	src = *p;
	if (!bpf_map_delete_elem(&inflight, &tid))
		__sync_fetch_and_add(&inflight_n, -1);
	if (ret > 0)
		emit_send(&src, ret, backend, loop, slot);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_write")
int tp_enter_write(struct syscall_trace_enter *ctx)
{
	return enter_send(ctx->args[0], ARGS_BUF, ctx->args[1], 0);
}

SEC("tracepoint/syscalls/sys_enter_sendto")
int tp_enter_sendto(struct syscall_trace_enter *ctx)
{
	return enter_send(ctx->args[0], ARGS_BUF, ctx->args[1], 0);
}

SEC("tracepoint/syscalls/sys_enter_writev")
int tp_enter_writev(struct syscall_trace_enter *ctx)
{
	return enter_send(ctx->args[0], ARGS_IOV, ctx->args[1], ctx->args[2]);
}

SEC("tracepoint/syscalls/sys_enter_sendmsg")
int tp_enter_sendmsg(struct syscall_trace_enter *ctx)
{
	return enter_send(ctx->args[0], ARGS_MSG, ctx->args[1], 0);
}

/* The exit programs, each twice: with bpf_loop, and bounded (see
 * MAX_CHUNKS_NO_LOOP). Each has its own scratch slot. */
#define TP_EXIT(name, slot)                                                  \
	SEC("tracepoint/syscalls/sys_exit_" #name)                          \
	int tp_exit_##name(struct syscall_trace_exit *ctx)                  \
	{                                                                    \
		return exit_send(ctx->ret, BACKEND_TRACEPOINT, true, slot, NULL); \
	}                                                                    \
	SEC("tracepoint/syscalls/sys_exit_" #name)                          \
	int tp_exit_##name##_bounded(struct syscall_trace_exit *ctx)        \
	{                                                                    \
		return exit_send(ctx->ret, BACKEND_TRACEPOINT, false, slot, NULL); \
	}

TP_EXIT(write, 0)
TP_EXIT(sendto, 1)
TP_EXIT(writev, 2)
TP_EXIT(sendmsg, 3)

/* ---- backend: the socket tracepoints (sock:sock_{send,recv}_length, 6.3+)
 *
 * The syscall backend's cost on the rest of the node is its hooks on
 * syscalls: every write(2) to a file or a pipe runs two programs (perf
 * builds a record of the arguments for each), and while any syscall
 * tracepoint is attached every syscall of every task takes the kernel's
 * slower entry and exit path (docs/performance.md). Since 6.3,
 * sock_sendmsg() ends in the sock:sock_send_length tracepoint (sk, bytes
 * sent, flags) and sock_recvmsg() in sock:sock_recv_length, which only
 * socket sends and receives reach: this backend takes sends at the first
 * and closes and owners at the second (socktp_recv_length), and hooks no
 * syscall at all. The send program has a spare for its skipped runs
 * (socktp_send_length_spare, below).
 *
 * The tracepoint runs after the send, with the socket and the count but
 * not the message: where the bytes were comes from the syscall's own
 * arguments, in the task's saved user registers (bpf_task_pt_regs). They
 * are believed only when the syscall is one of the four sends and its fd
 * is this very socket now; any other send (io_uring, sendmmsg, sendfile,
 * a kernel thread's) moves the stream offset over its exact size and
 * counts it as lost, as a send of pages does in the other backends.
 */
#if defined(__TARGET_ARCH_x86)
/* Compat (ia32) tasks use other numbers, none of which equal these four
 * (1 exit, 20 getpid, 44 prof, 46 setgid), nor do x32's (bit 30 set): a
 * compat task's sends are counted as lost, never misread. */
enum { NR_WRITE = 1, NR_WRITEV = 20, NR_SENDTO = 44, NR_SENDMSG = 46 };
#define SYSCALL_NR(r) ((__u64)(r)->orig_ax)
#define SYSCALL_ARG0(r) ((r)->di)
#define SYSCALL_ARG1(r) ((r)->si)
#define SYSCALL_ARG2(r) ((r)->dx)
#elif defined(__TARGET_ARCH_arm64)
/* The generic numbers; 32-bit (compat) tasks' sends are 4, 146, 290, 296. */
enum { NR_WRITE = 64, NR_WRITEV = 66, NR_SENDTO = 206, NR_SENDMSG = 211 };
#define SYSCALL_NR(r) ((__u64)(__s64)(r)->syscallno)
#define SYSCALL_ARG0(r) ((r)->orig_x0)
#define SYSCALL_ARG1(r) ((r)->regs[1])
#define SYSCALL_ARG2(r) ((r)->regs[2])
#endif

#define PF_IO_WORKER 0x00000010
#define PF_KTHREAD 0x00200000

/* Where the bytes of the send that just returned on sk were, from the
 * current syscall's arguments, or src->kind 0 when that cannot be proved. */
static __always_inline void send_src_from_syscall(struct sock *sk, struct send_src *src)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct socket *fdsock = NULL;
	struct user_msghdr msg;
	struct pt_regs *regs;
	__u64 nr;

	/* Kernel threads and io_uring workers have no syscall of their own. */
	if (task->flags & (PF_KTHREAD | PF_IO_WORKER))
		return;
	regs = (struct pt_regs *)bpf_task_pt_regs(task);
	if (!regs)
		return;
	nr = SYSCALL_NR(regs);
	if (nr != NR_WRITE && nr != NR_SENDTO && nr != NR_WRITEV && nr != NR_SENDMSG)
		return;
	/* Another thread may have closed the fd and reused it since: the
	 * arguments describe this send only while the fd is this socket. */
	if (fd_unix_stream(SYSCALL_ARG0(regs), &fdsock) != sk)
		return;
	switch (nr) {
	case NR_WRITE:
	case NR_SENDTO:
		src->kind = SRC_UBUF;
		src->base = SYSCALL_ARG1(regs);
		src->nr_segs = 1;
		break;
	case NR_WRITEV:
		src->kind = SRC_UIOV;
		src->base = SYSCALL_ARG1(regs);
		src->nr_segs = SYSCALL_ARG2(regs);
		break;
	default:
		if (!bpf_probe_read_user(&msg, sizeof(msg), (void *)SYSCALL_ARG1(regs))) {
			src->kind = SRC_UIOV;
			src->base = (__u64)msg.msg_iov;
			src->nr_segs = msg.msg_iovlen;
		}
	}
}

/* The unix stream socket sk, or NULL: every socket send and receive on
 * the node comes here, so the family is the first test, one load. */
static __always_inline struct socket *unix_stream_socket(struct sock *sk)
{
	struct socket *sock;

	if (sk->__sk_common.skc_family != AF_UNIX)
		return NULL;
	sock = sk->sk_socket;
	if (!sock || sock->type != SOCK_STREAM)
		return NULL;
	return sock;
}

static __always_inline void sock_send(struct sock *sk, struct socket *sock, int ret, __u32 slot)
{
	struct send_src src = {};

	if (!(src.verdict = wanted(bpf_get_current_pid_tgid() >> 32, sk)))
		return;
	src.sock = (__u64)sock;
	src.sk = (__u64)sk;
	send_src_from_syscall(sk, &src);
	emit_send(&src, ret, BACKEND_SOCKTP, true, slot);
}

/* A spare for the send program's skipped runs (SEND_MISSED). The kernel
 * skips a program's run on a CPU where that program is already running,
 * which on a preemptible kernel is a run preempted midway while another
 * task sends on the same CPU (Debian's 7.2 guest: a quarter of a burst's
 * sends). With one program per send, such a send would be lost whole.
 * A second program on the same tracepoint, socktp_send_length_spare, does
 * nothing unless the first is mid-run on this CPU (socktp_busy), which,
 * migration being disabled for both, means exactly that the first was
 * skipped for this send: the spare takes it, with a scratch slot of its
 * own. Userspace still counts the first program's skips as lost (an
 * upper bound: it cannot tell which the spare took, and Debian's 7.2 once
 * skipped the first for sends the spare never saw, internal/bpf/missed.go). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} socktp_busy SEC(".maps");

static __always_inline void peer_released(struct sock *sk, struct socket *sock, __u32 tgid, __u32 slot);

SEC("tp_btf/sock_send_length")
int BPF_PROG(socktp_send_length, struct sock *sk, int ret, int flags)
{
	struct socket *sock;
	__u32 zero = 0;
	__u32 *busy;

	if (ret == -EPIPE) {
		/* The other end was released: as a read that ends, a send that
		 * fails proves it, and a server that closes its end after such a
		 * send, without reading again, would otherwise leave the close
		 * unseen (a shim exiting while containerd answers it). */
		__u32 tgid = bpf_get_current_pid_tgid() >> 32;

		if (tgid != cfg.self_pid && (sock = unix_stream_socket(sk)))
			peer_released(sk, sock, tgid, CLOSE_SLOT_EPIPE);
		return 0;
	}
	if (ret <= 0 || !(sock = unix_stream_socket(sk)))
		return 0;
	busy = bpf_map_lookup_elem(&socktp_busy, &zero);
	if (!busy)
		return 0;
	*busy = 1;
	sock_send(sk, sock, ret, 0);
	*busy = 0;
	return 0;
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(socktp_send_length_spare, struct sock *sk, int ret, int flags)
{
	struct socket *sock;
	__u32 zero = 0;
	__u32 *busy = bpf_map_lookup_elem(&socktp_busy, &zero);

	if (!busy || !*busy || ret <= 0 || !(sock = unix_stream_socket(sk)))
		return 0;
	sock_send(sk, sock, ret, 1);
	return 0;
}

/* A close record into the ring buffer. One the ring has no room for is a
 * lost record like any other: userspace then keeps the connection until
 * it idles out, and the loss is reported rather than silent. */
static __always_inline void submit_close(struct event *ev)
{
	struct stats *s = stats();

	if (bpf_ringbuf_output(&events, ev, sizeof(*ev), wakeup_flag(sizeof(*ev)))) {
		if (s)
			s->lost_events++;
	} else if (s) {
		s->events++;
	}
}

/* Reads on unix stream sockets, for the two things the syscall backend
 * learns at accept(2) and close(2). Who reads a socket holds it: noted as an accept or a send
 * would be (sk_owner), so a server that has not answered yet is named at
 * the other end. And a read that ends (end-of-file, or ECONNRESET when
 * data was left unread) because the other end was released (its last
 * descriptor closed, or its process gone; not a shutdown(2), which leaves
 * it alive) reports that end's close, as the
 * probes on unix_release do: the connection's decoder state is freed and
 * its socket's stream offset dropped; so does a send that fails with
 * EPIPE (socktp_send_length). A close that neither meets (both ends
 * closed without reading or sending again) is not seen: userspace drops
 * such a connection when it idles out, or when a new socket takes its
 * address. */
static __always_inline void peer_released(struct sock *sk, struct socket *sock, __u32 tgid, __u32 slot)
{
	struct sock *peer = KREAD(struct unix_sock, sk, peer);
	struct unix_address *addr;
	struct close_record *cr;
	struct event *ev;
	struct pos *pos;
	__u64 key, ino;

	/* Released: orphaned (SOCK_DEAD), which only the release does. The
	 * reader's reference keeps it allocated, so its address is not
	 * reused while this runs. */
	if (!peer || !(KREAD(struct sock, peer, __sk_common.skc_flags) & (1UL << bpf_core_enum_value(enum sock_flags, SOCK_DEAD))))
		return;
	key = (__u64)peer;
	pos = bpf_map_lookup_elem(&send_pos, &key);
	if (!pos)
		return; /* never sent while traced, or already reported */
	ino = pos->ino;
	/* Two readers of one socket may both meet the end: the one whose
	 * delete succeeds reports it. */
	if (bpf_map_delete_elem(&send_pos, &key))
		return;
	cr = bpf_map_lookup_elem(&close_scratch, &slot);
	if (!cr)
		return;
	ev = &cr->ev;
	/* The closing end is the sender of this record; its process is not
	 * known here (it may be gone): 0, never the reader's. */
	ev->ts_ns = bpf_ktime_get_ns();
	ev->start_ns = 0;
	ev->sk = key;
	ev->peer_sk = (__u64)sk;
	ev->sock_ino = ino;
	ev->peer_ino = socket_ino(sock);
	ev->cgroup_id = 0;
	ev->stream_off = 0;
	ev->pid = ev->tid = 0;
	ev->peer_pid = tgid;
	ev->len = ev->send_len = 0;
	ev->flags = EVENT_F_CLOSE;
	ev->backend = BACKEND_SOCKTP;
	__builtin_memset(ev->comm, 0, sizeof(ev->comm));
	addr = KREAD(struct unix_sock, peer, addr);
	if (addr)
		ev->flags |= EVENT_F_BOUND;
	else
		addr = KREAD(struct unix_sock, sk, addr);
	fill_path(ev, addr);
	submit_close(ev);
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(socktp_recv_length, struct sock *sk, int ret, int flags)
{
	struct socket *sock = unix_stream_socket(sk);
	__u32 tgid;

	if (!sock)
		return 0;
	tgid = bpf_get_current_pid_tgid() >> 32;
	if (tgid == cfg.self_pid)
		return 0;
	/* Nothing to read on a non-blocking socket (half of an event loop's
	 * reads). It names the holder all the same (a Go server's first
	 * read, the moment it accepts, finds nothing), but it cannot end the
	 * connection (the peer's release makes reads return 0), and an
	 * entry naming the reader already is left as it is: the stale
	 * check is the reads with data's and the sends'. */
	if (ret == -EAGAIN) {
		note_owner_as(sock, sk, tgid, false);
		return 0;
	}
	note_owner(sock, sk, tgid);
	/* End-of-file, or ECONNRESET when the other end left data unread. */
	if (ret <= 0)
		peer_released(sk, sock, tgid, CLOSE_SLOT_EOF);
	return 0;
}

/* ---- every backend: closes ---------------------------------------------
 *
 * A close tells userspace to free the connection's decoder state now rather
 * than after an idle timeout, and resets the socket's stream offset so a new
 * socket at the same address starts clean. The syscall backend reports
 * each close(2) of a descriptor of a traced socket (if the socket sends
 * again, userspace picks the connection up again mid-stream); the fentry
 * and kprobe backends report the socket's release, when its last
 * descriptor goes, also by a process that exits without closing it.
 */
static __always_inline int close_sock(struct socket *sock, struct sock *sk)
{
	struct close_record *cr;
	struct event *ev;
	struct pos *pos;
	__u32 slot = CLOSE_SLOT_RELEASE;
	__u64 key;

	/* Whatever the filter says now: a socket that was traced (it has a
	 * stream offset) has decoder state in userspace, undecided ones too. */
	if (!sk || (__u32)(bpf_get_current_pid_tgid() >> 32) == cfg.self_pid)
		return 0;
	key = (__u64)sk;
	pos = bpf_map_lookup_elem(&send_pos, &key);
	if (!pos || pos->ino != socket_ino(sock))
		return 0; /* never sent anything while traced: nothing to free */
	bpf_map_delete_elem(&send_pos, &key);
	cr = bpf_map_lookup_elem(&close_scratch, &slot);
	if (!cr)
		return 0;
	ev = &cr->ev;
	fill_header(ev, sock, sk, 0, 0);
	ev->flags |= EVENT_F_CLOSE;
	ev->stream_off = 0;
	submit_close(ev);
	return 0;
}

static __always_inline int release_sock(struct socket *sock)
{
	if (BPF_CORE_READ(sock, type) != SOCK_STREAM)
		return 0;
	return close_sock(sock, BPF_CORE_READ(sock, sk));
}

SEC("tracepoint/syscalls/sys_enter_close")
int tp_enter_close(struct syscall_trace_enter *ctx)
{
	struct socket *sock = NULL;
	struct sock *sk = fd_unix_stream(ctx->args[0], &sock);

	return sk ? close_sock(sock, sk) : 0;
}

SEC("fentry/unix_release")
int BPF_PROG(fentry_unix_release, struct socket *sock)
{
	return release_sock(sock);
}

SEC("kprobe/unix_release")
int BPF_KPROBE(kprobe_unix_release, struct socket *sock)
{
	return release_sock(sock);
}

/* ---- every backend: accepts --------------------------------------------
 *
 * The process that accepts on a listener, and then holds the accepted
 * socket, is the server end: recorded so that even a client's first
 * request, sent before the accept, names the right peer. The listener is
 * noted when the accept starts (it may block), the new socket when it
 * returns.
 */
static __always_inline int note_accepting(__u64 fd)
{
	struct socket *sock;
	struct sock *sk = fd_unix_stream(fd, &sock);

	if (sk)
		note_owner(sock, sk, bpf_get_current_pid_tgid() >> 32);
	return 0;
}

static __always_inline int note_sock_owner(struct socket *sock)
{
	struct sock *sk = BPF_CORE_READ(sock, sk);

	if (sk && BPF_CORE_READ(sock, type) == SOCK_STREAM)
		note_owner(sock, sk, bpf_get_current_pid_tgid() >> 32);
	return 0;
}

/* unix_accept(sock, newsock, ...): the arguments after these two changed
 * in 6.10 and are not needed. */
SEC("tracepoint/syscalls/sys_enter_accept4")
int tp_enter_accept4(struct syscall_trace_enter *ctx)
{
	return note_accepting(ctx->args[0]);
}

SEC("tracepoint/syscalls/sys_enter_accept")
int tp_enter_accept(struct syscall_trace_enter *ctx)
{
	return note_accepting(ctx->args[0]);
}

SEC("tracepoint/syscalls/sys_exit_accept4")
int tp_exit_accept4(struct syscall_trace_exit *ctx)
{
	return ctx->ret < 0 ? 0 : note_accepting(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_accept")
int tp_exit_accept(struct syscall_trace_exit *ctx)
{
	return ctx->ret < 0 ? 0 : note_accepting(ctx->ret);
}

SEC("fentry/unix_accept")
int BPF_PROG(fentry_unix_accept, struct socket *sock)
{
	return note_sock_owner(sock);
}

SEC("fexit/unix_accept")
int BPF_PROG(fexit_unix_accept, struct socket *sock, struct socket *newsock)
{
	/* newsock has a sock only if the accept succeeded. */
	return note_sock_owner(newsock);
}

/* kretprobes have no arguments: the new socket is kept from the entry. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);   /* tid */
	__type(value, __u64); /* struct socket *newsock */
} accepting SEC(".maps");

SEC("kprobe/unix_accept")
int BPF_KPROBE(kprobe_unix_accept, struct socket *sock, struct socket *newsock)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u64 ns = (__u64)newsock;

	bpf_map_update_elem(&accepting, &tid, &ns, BPF_ANY);
	return note_sock_owner(sock);
}

SEC("kretprobe/unix_accept")
int BPF_KRETPROBE(kretprobe_unix_accept, int ret)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u64 *ns = bpf_map_lookup_elem(&accepting, &tid);
	struct socket *newsock;

	if (!ns)
		return 0;
	newsock = (struct socket *)*ns;
	bpf_map_delete_elem(&accepting, &tid);
	if (ret == 0)
		note_sock_owner(newsock);
	return 0;
}

/* ---- every backend: process exit and exec -----------------------------
 *
 * A process that exited no longer holds anything (and its pid may be
 * reused); one that exec'd closed its close-on-exec sockets. Either makes
 * the socket owners noted for it before stale (see sk_owner).
 */
static __always_inline int owner_gone_now(void)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	__u64 now = bpf_ktime_get_ns();

	bpf_map_update_elem(&owner_gone, &tgid, &now, BPF_ANY);
	__sync_fetch_and_add(&owner_gen, 1);
	return 0;
}

SEC("tracepoint/sched/sched_process_exit")
int any_sched_exit(void *ctx)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct send_src *p;

	/* A thread that exits with a send in flight had its exit program
	 * skipped (SEND_MISSED): its last send is noticed here, as its next
	 * send would have. */
	if (*(volatile __u64 *)&inflight_n && (p = bpf_map_lookup_elem(&inflight, &tid))) {
		send_missed(p);
		if (!bpf_map_delete_elem(&inflight, &tid))
			__sync_fetch_and_add(&inflight_n, -1);
	}

	/* Per thread; the process is gone when its last thread goes. */
	if (BPF_CORE_READ(task, signal, live.counter))
		return 0;
	return owner_gone_now();
}

SEC("tracepoint/sched/sched_process_exec")
int any_sched_exec(void *ctx)
{
	return owner_gone_now();
}

/* ---- trace -- CMD: follow the command's process tree -------------------
 *
 * Children join the filter at fork, in the kernel, so not even their first
 * call can be missed. Threads share their process's tgid and are not
 * added. Loaded only when following (programs named follow_*).
 */
SEC("tp_btf/sched_process_fork")
int BPF_PROG(follow_fork, struct task_struct *parent, struct task_struct *child)
{
	__u32 ptgid = BPF_CORE_READ(parent, tgid);
	__u32 ctgid = BPF_CORE_READ(child, tgid);
	__u8 one = 1;

	if (!cfg.follow_forks || ctgid != BPF_CORE_READ(child, pid))
		return 0;
	if (bpf_map_lookup_elem(&pid_filter, &ptgid))
		bpf_map_update_elem(&pid_filter, &ctgid, &one, BPF_ANY);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(follow_exit, struct task_struct *task)
{
	__u32 tgid = BPF_CORE_READ(task, tgid);

	/* The whole process is gone when its leader exits; its pid may be
	 * reused by an unrelated process. */
	if (cfg.follow_forks && tgid == BPF_CORE_READ(task, pid) && tgid != cfg.self_pid)
		bpf_map_delete_elem(&pid_filter, &tgid);
	return 0;
}

/* ---- backends: fentry/fexit and kprobe/kretprobe on unix_stream_sendmsg -
 *
 * Every send on a unix stream socket passes here, whatever syscall (or
 * io_uring) started it, so these backends see more than the tracepoints and
 * cost nothing on other writes. The bytes are described by msg->msg_iter,
 * whose layout changed across kernels: read at entry, before the send
 * advances it.
 */

/* Before 6.4 the iovec pointer was called iov. */
struct iov_iter___pre64 {
	const struct iovec *iov;
} __attribute__((preserve_access_index));

/* Before 5.14 the iterator's kind was a bit mask in `type`, or'ed with the
 * direction in bit 0 (READ 0, WRITE 1); enum iter_type's values were those
 * masks, so the CO-RE enum values below still compare right. */
struct iov_iter___pre514 {
	unsigned int type;
} __attribute__((preserve_access_index));

static __always_inline unsigned int iter_type_of(struct iov_iter *it)
{
	if (bpf_core_field_exists(it->iter_type))
		return BPF_CORE_READ(it, iter_type);
	return BPF_CORE_READ((struct iov_iter___pre514 *)it, type) & ~1u;
}

static __always_inline int enter_sendmsg(struct socket *sock, struct msghdr *msg)
{
	struct sock *sk = BPF_CORE_READ(sock, sk);
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)pid_tgid;
	struct iov_iter *it = &msg->msg_iter;
	struct send_src src = {};
	unsigned int type;

	if (!sk || BPF_CORE_READ(sock, type) != SOCK_STREAM || !(src.verdict = wanted(pid_tgid >> 32, sk)))
		return 0;
	src.sock = (__u64)sock;
	src.sk = (__u64)sk;
	src.start_ns = bpf_ktime_get_ns();
	type = iter_type_of(it);
	src.skip = BPF_CORE_READ(it, iov_offset);
	src.nr_segs = BPF_CORE_READ(it, nr_segs);
	if (bpf_core_enum_value_exists(enum iter_type, ITER_UBUF) &&
	    type == bpf_core_enum_value(enum iter_type, ITER_UBUF)) {
		src.kind = SRC_UBUF;
		src.base = (__u64)BPF_CORE_READ(it, ubuf);
		src.nr_segs = 1;
	} else if (type == bpf_core_enum_value(enum iter_type, ITER_IOVEC)) {
		src.kind = SRC_KIOV;
		if (bpf_core_field_exists(it->__iov))
			src.base = (__u64)BPF_CORE_READ(it, __iov);
		else
			src.base = (__u64)BPF_CORE_READ((struct iov_iter___pre64 *)it, iov);
	} else if (type == bpf_core_enum_value(enum iter_type, ITER_KVEC)) {
		src.kind = SRC_KVEC;
		src.base = (__u64)BPF_CORE_READ(it, kvec);
	}
	/* Anything else (bvec from splice/sendfile) keeps kind 0: counted as
	 * a gap of its exact size at exit. */
	inflight_put(tid, &src);
	return 0;
}

/* Spares for the runs the kernel skips (SEND_MISSED), as for the socket
 * tracepoint (socktp_busy, which says how): trampolines run their
 * programs with migration disabled, not preemption, so on a preemptible
 * kernel a send's entry or exit program preempted midway makes the next
 * send on that CPU skip it. Each spare does nothing unless its program is
 * mid-run on this CPU. Index 0: the entry program, 1: the exit program. */
enum { FENTRY_BUSY_ENTRY = 0, FENTRY_BUSY_EXIT = 1 };

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u32);
} fentry_busy SEC(".maps");

/* The busy flag of the program at index i on this CPU, or NULL. */
static __always_inline __u32 *fentry_busy_flag(__u32 i)
{
	return bpf_map_lookup_elem(&fentry_busy, &i);
}

SEC("fentry/unix_stream_sendmsg")
int BPF_PROG(fentry_unix_stream_sendmsg, struct socket *sock, struct msghdr *msg, size_t len)
{
	__u32 *busy = fentry_busy_flag(FENTRY_BUSY_ENTRY);

	if (!busy)
		return 0;
	*busy = 1;
	enter_sendmsg(sock, msg);
	*busy = 0;
	return 0;
}

SEC("fentry/unix_stream_sendmsg")
int BPF_PROG(fentry_unix_stream_sendmsg_spare, struct socket *sock, struct msghdr *msg, size_t len)
{
	__u32 *busy = fentry_busy_flag(FENTRY_BUSY_ENTRY);

	return busy && *busy ? enter_sendmsg(sock, msg) : 0;
}

/* The exit program and its spare, each with its bounded twin; scratch
 * slots 0 and 1. */
static __always_inline int fexit_send(struct socket *sock, int ret, bool loop)
{
	__u32 *busy = fentry_busy_flag(FENTRY_BUSY_EXIT);

	if (!busy)
		return 0;
	*busy = 1;
	exit_send(ret, BACKEND_FENTRY, loop, 0, sock);
	*busy = 0;
	return 0;
}

static __always_inline int fexit_send_spare(struct socket *sock, int ret, bool loop)
{
	__u32 *busy = fentry_busy_flag(FENTRY_BUSY_EXIT);

	return busy && *busy ? exit_send(ret, BACKEND_FENTRY, loop, 1, sock) : 0;
}

#define FEXIT_SEND(name, fn)                                                   \
	SEC("fexit/unix_stream_sendmsg")                                       \
	int BPF_PROG(name, struct socket *sock, struct msghdr *msg, size_t len, int ret) \
	{                                                                      \
		return fn(sock, ret, true);                                    \
	}                                                                      \
	SEC("fexit/unix_stream_sendmsg")                                       \
	int BPF_PROG(name##_bounded, struct socket *sock, struct msghdr *msg, size_t len, int ret) \
	{                                                                      \
		return fn(sock, ret, false);                                   \
	}

FEXIT_SEND(fexit_unix_stream_sendmsg, fexit_send)
FEXIT_SEND(fexit_unix_stream_sendmsg_spare, fexit_send_spare)

SEC("kprobe/unix_stream_sendmsg")
int BPF_KPROBE(kprobe_unix_stream_sendmsg, struct socket *sock, struct msghdr *msg)
{
	return enter_sendmsg(sock, msg);
}

SEC("kretprobe/unix_stream_sendmsg")
int BPF_KRETPROBE(kretprobe_unix_stream_sendmsg, int ret)
{
	return exit_send(ret, BACKEND_KPROBE, true, 0, NULL);
}

SEC("kretprobe/unix_stream_sendmsg")
int BPF_KRETPROBE(kretprobe_unix_stream_sendmsg_bounded, int ret)
{
	return exit_send(ret, BACKEND_KPROBE, false, 0, NULL);
}

/* ---- peer probes: hpack.(*Encoder).WriteField in Go processes ---------
 *
 * Attached by userspace (internal/peerprobe) at the entry of each copy of
 * golang.org/x/net/http2/hpack's WriteField in the Go binaries at either
 * end of the traced connections. It records the field the process is
 * about to encode, the encoder's insertion count, and the bytes of the
 * header block it has encoded so far: with those userspace proves which
 * field produced which bytes on the wire, and names the table entries the
 * capture never saw. It writes to the same ring buffer as the capture, so
 * a field always comes before the send that carries its bytes.
 *
 * Go's register ABI (Go 1.17 amd64, 1.18 arm64): the receiver and the
 * HeaderField{Name, Value string; Sensitive bool} are in registers.
 */

/* Offsets in x/net/http2/hpack.Encoder and bytes.Buffer (stable since
 * 2016; checked against a real build in internal/peerprobe's tests). A wrong
 * offset can only cost names, never give a wrong one: userspace uses a
 * field only when the bytes it read equal the bytes on the wire. */
#define ENC_ENTS_LEN 8     /* dynTab.table.ents len */
#define ENC_EVICT_COUNT 24 /* dynTab.table.evictCount */
#define ENC_W_DATA 88      /* w io.Writer's data word: the *bytes.Buffer */

struct hpack_scratch {
	struct event ev;
	struct hpack_field hf;
	__u8 data[4096];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct hpack_scratch);
} hpack_scratch_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} hpack_seq SEC(".maps");

/* fetch: whether the kernel has atomic fetch-and-add (5.12+); see the
 * twins below. */
static __always_inline int hpack_write_field(struct pt_regs *ctx, bool fetch)
{
	__u64 enc, name, name_len, value, value_len, sens, w, n, off;
	struct { __u64 ptr, len, cap, off; } buf;
	__u64 counts[4];
	struct hpack_scratch *sc;
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 zero = 0;
	__u64 *seq;
	struct stats *s;

#if defined(bpf_target_x86)
	enc = ctx->ax;
	name = ctx->bx;
	name_len = ctx->cx;
	value = ctx->di;
	value_len = ctx->si;
	sens = ctx->r8;
#elif defined(bpf_target_arm64)
	enc = ctx->regs[0];
	name = ctx->regs[1];
	name_len = ctx->regs[2];
	value = ctx->regs[3];
	value_len = ctx->regs[4];
	sens = ctx->regs[5];
#else
	return 0;
#endif
	if ((pid_tgid >> 32) == cfg.self_pid)
		return 0;
	sc = bpf_map_lookup_elem(&hpack_scratch_map, &zero);
	seq = bpf_map_lookup_elem(&hpack_seq, &zero);
	if (!sc || !seq)
		return 0;
	__builtin_memset(&sc->ev, 0, sizeof(sc->ev));
	__builtin_memset(&sc->hf, 0, sizeof(sc->hf));
	sc->ev.ts_ns = bpf_ktime_get_ns();
	sc->ev.pid = pid_tgid >> 32;
	sc->ev.tid = (__u32)pid_tgid;
	sc->ev.flags = EVENT_F_HPACK;
	fill_task(&sc->ev);

	sc->hf.encoder = enc;
	sc->hf.sensitive = sens & 1;
	sc->hf.name_len = name_len;
	sc->hf.value_len = value_len;
	if (fetch) {
		sc->hf.seq = __sync_fetch_and_add(seq, 1);
	} else {
		/* 5.10 allows only an atomic add that returns nothing: two
		 * CPUs could then stamp the same number, which peerfields
		 * takes for a lost call (it drops what it holds): a cost,
		 * never a wrong name. */
		sc->hf.seq = *seq;
		__sync_fetch_and_add(seq, 1);
	}
	if (bpf_probe_read_user(counts, sizeof(counts), (void *)enc)) {
		sc->hf.flags |= HPACK_F_NO_COUNT;
	} else {
		sc->hf.inserted = counts[ENC_ENTS_LEN / 8] + counts[ENC_EVICT_COUNT / 8];
	}

	off = 0;
	n = name_len < SNOOP_HPACK_NAME_MAX ? name_len : SNOOP_HPACK_NAME_MAX;
	barrier_var(n);
	n &= 0xff;
	if (n && bpf_probe_read_user(sc->data, n, (void *)name))
		sc->hf.flags |= HPACK_F_FAULT;
	sc->hf.name_cap = n;
	off = n;

	n = value_len < SNOOP_HPACK_VALUE_MAX ? value_len : SNOOP_HPACK_VALUE_MAX;
	barrier_var(n);
	n &= 0x3ff;
	barrier_var(off);
	off &= 0x7ff;
	if (n && bpf_probe_read_user(&sc->data[off], n, (void *)value))
		sc->hf.flags |= HPACK_F_FAULT;
	sc->hf.value_cap = n;
	off += n;

	if (bpf_probe_read_user(&w, sizeof(w), (void *)(enc + ENC_W_DATA)) || !w ||
	    bpf_probe_read_user(&buf, sizeof(buf), (void *)w) || buf.off > buf.len) {
		sc->hf.flags |= HPACK_F_NO_PREFIX;
	} else {
		sc->hf.prefix_len = buf.len - buf.off;
		n = buf.len - buf.off;
		if (n > SNOOP_HPACK_PREFIX_MAX)
			n = SNOOP_HPACK_PREFIX_MAX;
		barrier_var(n);
		n &= 0x3ff;
		barrier_var(off);
		off &= 0x7ff;
		if (n && bpf_probe_read_user(&sc->data[off], n, (void *)(buf.ptr + buf.off)))
			sc->hf.flags |= HPACK_F_NO_PREFIX;
		else
			sc->hf.prefix_cap = n;
		off += sc->hf.prefix_cap;
	}
	off &= 0xfff;
	sc->ev.len = sizeof(sc->hf) + off;
	s = stats();
	if (bpf_ringbuf_output(&events, sc, sizeof(sc->ev) + sizeof(sc->hf) + off, wakeup_flag(sizeof(sc->ev) + sizeof(sc->hf) + off))) {
		if (s)
			s->hpack_lost++;
	} else if (s) {
		s->hpack_events++;
	}
	return 0;
}

/* Twice, like the exit programs: the loader keeps the _bounded twin on
 * kernels before 5.17, which includes those without atomic fetch. */
SEC("uprobe")
int peer_hpack_write_field(struct pt_regs *ctx)
{
	return hpack_write_field(ctx, true);
}

SEC("uprobe")
int peer_hpack_write_field_bounded(struct pt_regs *ctx)
{
	return hpack_write_field(ctx, false);
}

/* Keep the enums in BTF so bpf2go generates them for Go. */
const enum event_flag *unused_flags __attribute__((unused));
const enum backend_id *unused_backend __attribute__((unused));
const enum hpack_flag *unused_hpack_flags __attribute__((unused));
const struct hpack_field *unused_hpack_field __attribute__((unused));

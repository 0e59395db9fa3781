/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The record shared between snoop.bpf.c and Go (bpf2go -type). Go reads it
 * through the generated type, so a field changed here changes there.
 */
#ifndef SNOOP_H
#define SNOOP_H

/* Bytes of payload per ring-buffer record. A send larger than this becomes
 * several records with consecutive stream offsets. Must be a power of two. */
#define SNOOP_CHUNK 16384
#define SNOOP_PATH_MAX 108
#define SNOOP_COMM_LEN 16
#define SNOOP_MAX_PIDS 4096

/* Bits of event.flags. */
enum event_flag {
	/* bpf_probe_read_user failed: len bytes belong at stream_off but are not
	 * in the record. Userspace treats them as a gap. */
	EVENT_F_FAULT = 1 << 0,
	/* The sender's send-counter entry was created by this send, so the
	 * stream offset restarted at 0 (a new socket, or an LRU eviction). */
	EVENT_F_NEW = 1 << 1,
	/* The sender's own socket carries the address: it is the accepting,
	 * server end. Lets userspace tell client from server on connections
	 * it joined after their start. */
	EVENT_F_BOUND = 1 << 2,
	/* Not data: the sender closed a file descriptor of this socket.
	 * len is 0. */
	EVENT_F_CLOSE = 1 << 3,
	/* Not data: a header field a Go process is about to HPACK-encode,
	 * from a uprobe on hpack.(*Encoder).WriteField. The payload is a
	 * struct hpack_field and its bytes; sk, peer_sk and path are 0. */
	EVENT_F_HPACK = 1 << 4,
	/* The pid filter could not decide: the sender is not in it and the
	 * process at the other end is not known yet (a client sending before
	 * the server accepted; the listener's credentials name its creator,
	 * which may have exited or handed it on, and are believed only when
	 * they name a filtered process). Sent
	 * anyway, so that the first request of a connection the filter wants
	 * is not lost; userspace holds such chunks until the connection's
	 * other end is known and keeps or discards them then. */
	EVENT_F_UNDECIDED = 1 << 5,
};

/* Bytes of an hpack field event kept of each string: longer ones are cut
 * (and can then never be used to name a table entry). */
#define SNOOP_HPACK_NAME_MAX 255
#define SNOOP_HPACK_VALUE_MAX 1023
#define SNOOP_HPACK_PREFIX_MAX 1023

/* Bits of hpack_field.flags. */
enum hpack_flag {
	/* The encoder's table counters could not be read. */
	HPACK_F_NO_COUNT = 1 << 0,
	/* The encoder's output buffer could not be read. */
	HPACK_F_NO_PREFIX = 1 << 1,
	/* A string could not be read from the process. */
	HPACK_F_FAULT = 1 << 2,
};

/* Follows struct event when EVENT_F_HPACK. Then name_cap bytes of the name,
 * value_cap of the value, prefix_cap of the block so far. */
struct hpack_field {
	__u64 encoder;   /* the *hpack.Encoder: one per connection direction */
	__u64 inserted;  /* entries the encoder had inserted so far (evictCount + len(ents)) */
	__u64 seq;       /* counts hpack events: a jump means some were lost */
	__u32 name_len;  /* full lengths */
	__u32 value_len;
	__u32 prefix_len; /* bytes of the header block already encoded */
	__u16 name_cap;  /* bytes present */
	__u16 value_cap;
	__u16 prefix_cap;
	__u8 sensitive;
	__u8 flags;
};

enum backend_id {
	BACKEND_TRACEPOINT = 1,
	BACKEND_FENTRY = 2,
	BACKEND_KPROBE = 3,
	BACKEND_SOCKTP = 4,
};

struct event {
	__u64 ts_ns;      /* bpf_ktime_get_ns (CLOCK_MONOTONIC) as the send returns */
	__u64 start_ns;   /* the same clock as the send began (its entry program), 0
			   * where the backend has none (sock-tracepoint) and for
			   * closes and header fields */
	__u64 sk;         /* sender's struct sock: identifies the direction */
	__u64 peer_sk;    /* receiver's struct sock */
	__u64 sock_ino;   /* sender's socket inode, as in /proc/PID/fd and ss -x */
	__u64 peer_ino;   /* receiver's socket inode, 0 until it is accepted */
	__u64 cgroup_id;
	__u64 stream_off; /* offset of the first byte of this chunk in sk's sent stream */
	__u32 pid;        /* sender tgid */
	__u32 tid;
	__u32 peer_pid;   /* from the socket's peer credentials */
	__u32 len;        /* payload bytes this chunk stands for */
	__u32 send_len;   /* bytes the whole send accepted (the syscall's return) */
	__u16 path_len;   /* bytes of path, 0 when neither end is bound */
	__u8 flags;
	__u8 backend;
	char comm[SNOOP_COMM_LEN];
	char path[SNOOP_PATH_MAX];
	/* len payload bytes follow unless EVENT_F_FAULT */
};

/* Per-CPU loss counters, summed by userspace. */
struct stats {
	__u64 events;       /* records submitted (sends and closes) */
	__u64 bytes;        /* payload bytes submitted */
	__u64 lost_events;  /* records (sends and closes) the ring buffer had no room for, or shed */
	__u64 lost_bytes;   /* payload bytes in those records, and truncated sends */
	__u64 faults;       /* reads of user memory that failed */
	__u64 hpack_events; /* hpack field records submitted */
	__u64 hpack_lost;   /* hpack field records the ring buffer had no room for */
	__u64 missed_exits; /* traced sends whose exit program the kernel skipped (snoop.bpf.c, SEND_MISSED) */
	__u64 shed_bytes;   /* bulk bytes of large sends dropped to keep room (config.bulk_after); also in lost_* */
};

/* Set from Go before load; const volatile so the verifier prunes what is off. */
struct config {
	__u32 self_pid;     /* the tracer itself: never traced, or it would trace its own output */
	__u32 filter_pids;  /* nonzero: only connections whose sender or peer is in pid_filter */
	__u32 follow_forks; /* nonzero: processes forked by one in pid_filter join it */
	__u32 wakeup_bytes; /* wake the reader only past this much unread data; 0: every record */
	__u32 filter_socket; /* nonzero: only connections on a socket file named in sock_filter */
	/* A send's bytes past its first bulk_after are bulk: they may fill the
	 * ring buffer only up to bulk_room unread bytes, and are shed
	 * (dropped, counted in lost_* and shed_bytes) beyond it, so that one
	 * large write(2) cannot fill the ring in one bpf_loop, faster than any
	 * reader drains it, and crowd out every other connection's small
	 * sends in that moment. Why these values: capture.ShedAfter. */
	__u32 bulk_after;
	__u32 bulk_room;    /* 0: never shed */
};

/* A socket file, by where it is: its directory (device as the kernel
 * encodes it, MAJOR << 20 | MINOR, and inode) and its name there. A
 * listener re-created at the same path (containerd restarting) keeps this
 * identity although its own inode is new. */
#define SNOOP_NAME_MAX 64
struct sock_path_key {
	__u64 dir_ino;
	__u32 dev;
	__u32 name_len;
	char name[SNOOP_NAME_MAX]; /* zero-padded */
};

#endif

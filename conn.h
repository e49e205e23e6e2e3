/*
 * conn.c: one upstream connection, and the structures it shares with the
 * pool (mux.c) that owns it.  Nothing else includes this header.
 *
 * A connection dials, speaks TLS or plain TCP, frames queries with IDs
 * of its own, matches replies, and keeps itself open while useful.  It
 * decides nothing about upstreams: it reports to the pool through
 * conn_events, and when it closes it hands its unanswered queries back.
 */
#ifndef CONN_H
#define CONN_H

#include <sys/queue.h>
#include <stddef.h>
#include <stdint.h>

#include <ev.h>

#include "dns.h"
#include "mux.h"

struct config;
struct tls_conn;
struct tls_upstream;
struct upstream_cfg;
union sockaddr_any;

/*
 * A query on its way upstream; the pool owns it from mux_send to its
 * callback.  It is always on exactly one list through pq_link: the
 * pool's free list or wait queue, or the list of the connection it was
 * written to; while in use also on the pool's deadline list.
 */
struct pq {
	TAILQ_ENTRY(pq)	 pq_link;
	TAILQ_ENTRY(pq)	 pq_dlink;	/* deadline list, while in use */
	struct conn	*pq_conn;	/* NULL unless written to a conn */
	int64_t		 pq_deadline;
	int64_t		 pq_sent;
	uint64_t	 pq_end;	/* its conn's c_queued once framed */
	uint32_t	 pq_reads;	/* its conn's c_reads when written */
	int32_t		 pq_hnext;	/* next pq index in its ID bucket */
	uint16_t	 pq_upid;
	uint16_t	 pq_len;
	uint16_t	 pq_qend;
	uint8_t		 pq_sends;	/* times written out on a connection */
	mux_done_fn	*pq_done;
	void		*pq_arg;
	uint8_t		 pq_query[UPQUERY_MAX];
};
TAILQ_HEAD(pqlist, pq);

enum conn_state { CONN_IDLE, CONN_CONNECTING, CONN_HANDSHAKE, CONN_READY };

/*
 * One connection slot of an upstream; the pool allocates it at start-up
 * and the buffers live as long as the process.  A slot is CONN_IDLE
 * (no socket) between connections.
 */
struct conn {
	struct upstream	*c_up;
	int		 c_idx;
	enum conn_state	 c_state;
	int		 c_fd;
	ev_io		 c_rio;
	ev_io		 c_wio;
	ev_timer	 c_timer;	/* dial deadline, then idle timeout */
	struct tls_conn	*c_tls;
	struct pqlist	 c_pqs;		/* written here, awaiting replies */
	int		 c_inflight;
	int32_t		*c_hash;	/* upstream ID -> pq index chains */
	uint8_t		*c_in;
	size_t		 c_inlen;
	uint8_t		*c_out;
	size_t		 c_outoff;
	size_t		 c_outlen;
	size_t		 c_outcap;
	uint64_t	 c_queued;	/* bytes framed into c_out, ever */
	uint64_t	 c_written;	/* bytes of them written out */
	uint32_t	 c_reads;	/* successful reads, to spot silence */
	int		 c_drained;	/* plain TCP: the last read came up short */
	uint32_t	 c_replies;	/* replies matched on this connection */
	int64_t		 c_idle_ms;	/* ours, or within the server's (RFC 7828) */
	int		 c_server_idle;	/* the server announced its idle timeout */
	int		 c_write_wants_read;	/* TLS: retry the flush on EV_READ */
	int		 c_read_wants_write;	/* TLS: retry the read on EV_WRITE */
	int		 c_dirty;	/* on the dirty list: flush before sleeping */
	int		 c_ackdue;	/* answers read, more due: ACK them */
	ev_timer	 c_acktimer;	/* ACK_LATE, if no query carries it */
	size_t		 c_ackmark;	/* c_written when it was started */
	/*
	 * Seconds of the loop's clock, not ms: the gaps between writes that
	 * decide the ACK policy are fractions of a millisecond.
	 */
	ev_tstamp	 c_lastw;	/* loop time of the last write */
	ev_tstamp	 c_gap;		/* between writes, averaged */
	int		 c_slow;	/* dialling for over half a timeout */
	TAILQ_ENTRY(conn) c_dirtylink;
};

/* One --connect-tls or --connect-tcp and its slots; the pool's. */
struct upstream {
	const struct upstream_cfg *up_cfg;
	char		 up_label[80];
	struct tls_upstream *up_tls;
	struct conn	*up_conns;
	int		 up_fails;	/* failed dials since the last success */
	int64_t		 up_retry_at;	/* no dial before this while failing */
	int		 up_backoff_ms;
	int64_t		 up_rtt8;	/* round-trip time EWMA, ms * 8 */
	int64_t		 up_warned;
};

/* Why a connection closed itself, which the pool's policy weighs. */
enum conn_end {
	CONN_END_DIAL,		/* connect or handshake failed: the upstream's fault */
	CONN_END_LOST		/* it was up: closed, garbage, write failed, idle */
};

/* How a connection reports to the pool; never from inside a pool call. */
struct conn_events {
	/* It can take queries now. */
	void	(*ce_ready)(struct conn *, int64_t);
	/* A reply matched pq, still on the connection: it is the pool's. */
	void	(*ce_reply)(struct conn *, struct pq *, uint8_t *, size_t,
		    int64_t);
	/* It closed itself; its unanswered queries are on the list, in order. */
	void	(*ce_closed)(struct conn *, enum conn_end, const char *,
		    struct pqlist *, int64_t);
	/* Still dialling after half the timeout: a black hole, likely. */
	void	(*ce_slow)(struct conn *, int64_t);
	/* Idle past its timeout: 1 keeps it open for another period. */
	int	(*ce_keep)(const struct conn *, int64_t);
};

/* pool is the array pq indices in the ID map refer to; hmask its chains'. */
void	conn_setup(struct ev_loop *, const struct config *,
	    const struct conn_events *, struct pq *, uint32_t);
void	conn_init(struct conn *, struct upstream *, int);
/* Frees a slot's buffers; its connection is already closed. */
void	conn_free(struct conn *);
/* Starts a non-blocking connect; -1 with the reason when it failed at once. */
int	conn_dial(struct conn *, char *, size_t);
/* Room for one more query on a ready connection. */
int	conn_has_room(const struct conn *);
/* Frames pq with a fresh ID into the output; it goes before the loop sleeps. */
void	conn_send(struct conn *, struct pq *, int64_t);
/* Takes an answered or expired pq off the connection. */
void	conn_unlink(struct conn *, struct pq *);
/*
 * Closes the connection, when the pool decides it, and puts its queries
 * on back in their original order, each counted as sent (pq_sends) only
 * once its bytes were written out.
 */
void	conn_close(struct conn *, const char *, struct pqlist *);
/* Its socket's local address; -1 when it has no socket. */
int	conn_local(const struct conn *, union sockaddr_any *);
/* Writes what queries this loop iteration queued, once per connection. */
void	conn_flush_dirty(void);

#endif /* CONN_H */

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

/* Copies of one query in flight at once: the first and one more. */
#define PQ_ATTS		2

/*
 * One copy of a query on one connection: an attempt.  It lives inside its
 * pq, from the write until its answer, its connection's close or the
 * query's deadline; a_conn is NULL while the slot is free.
 */
struct att {
	TAILQ_ENTRY(att) a_link;	/* its connection's, in write order */
	TAILQ_ENTRY(att) a_tlink;	/* the pool's attempt timeouts */
	struct conn	*a_conn;
	struct pq	*a_pq;
	int64_t		 a_sent;
	int64_t		 a_due;		/* its attempt timeout, 0: none armed */
	uint64_t	 a_end;		/* its conn's c_queued once framed */
	uint32_t	 a_reads;	/* its conn's c_reads when written */
	int32_t		 a_hnext;	/* next in its ID bucket (att_index) */
	uint16_t	 a_upid;
	uint8_t		 a_out;		/* handed back: its bytes were written */
	uint8_t		 a_probe;	/* a copy sent to a demoted upstream */
	uint8_t		 a_hedge;	/* sent after another copy timed out */
	uint8_t		 a_paid;	/* a hedge, from the budget */
	uint8_t		 a_late;	/* past its attempt timeout */
};
TAILQ_HEAD(attlist, att);

/*
 * A query on its way upstream; the pool owns it from mux_send until its
 * callback and the end of its last attempt.  Through pq_link it is on
 * the free list, the wait queue (no attempt yet), the hedge queue (to be
 * sent elsewhere), or no list while only its attempts hold it; while in
 * use it is also on the pool's deadline list.
 */
struct pq {
	TAILQ_ENTRY(pq)	 pq_link;
	TAILQ_ENTRY(pq)	 pq_dlink;	/* deadline list, while in use */
	struct att	 pq_att[PQ_ATTS];
	int64_t		 pq_deadline;
	uint32_t	 pq_said;	/* upstreams that answered it badly */
	uint8_t		 pq_list;	/* PQ_ON_* */
	uint8_t		 pq_sends;	/* copies lost with their connection */
	uint8_t		 pq_overdue;	/* a copy timed out: joiners go anew */
	uint16_t	 pq_len;
	uint16_t	 pq_qend;
	mux_done_fn	*pq_done;	/* NULL once called back */
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
	struct attlist	 c_atts;	/* written here, awaiting replies */
	int		 c_inflight;
	uint64_t	 c_lastq;	/* when it was last given a query, in sends */
	int		 c_suspect;	/* an attempt timed out: conn_stalled */
	uint32_t	 c_retrans;	/* the kernel's count when last looked at */
	int32_t		*c_hash;	/* upstream ID -> att_index chains */
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
	int64_t		 c_arrived;	/* plain TCP: the last read's stamp */
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
	int64_t		 c_due;		/* c_timer's, as now_ms */
	int64_t		 c_looked;	/* timer_stalled's, for c_timer */
	TAILQ_ENTRY(conn) c_dirtylink;
};

/* What became of an upstream's attempts, for SIGUSR1. */
struct up_counts {
	uint64_t	 n_answers;	/* answers with a usable RCODE */
	uint64_t	 n_timeouts;	/* attempts past their attempt timeout */
	uint64_t	 n_refused;
	uint64_t	 n_servfail;
	uint64_t	 n_notimp;
	uint64_t	 n_formerr;
	uint64_t	 n_garbage;	/* streams that were not DNS */
	uint64_t	 n_hedges;	/* copies sent here after a timeout */
	uint64_t	 n_hedges_won;	/* of them, the first answer */
};

/* One --connect-tls or --connect-tcp and its slots; the pool's. */
struct upstream {
	const struct upstream_cfg *up_cfg;
	char		 up_label[80];
	struct tls_upstream *up_tls;
	struct conn	*up_conns;
	int		 up_nconns;	/* --connections */
	int		 up_maxq;	/* --max-inflight */
	int		 up_idx;
	/* Dials that failed back it off; meanwhile it is unreachable. */
	int		 up_fails;	/* failed dials since the last success */
	int64_t		 up_retry_at;	/* no dial before this while failing */
	int		 up_backoff_ms;
	/* Round trips of its answers, smoothed as RFC 6298 does, in us. */
	int64_t		 up_srtt;	/* 0: no answer yet */
	int64_t		 up_rttvar;
	int64_t		 up_sampled;	/* the last answer, or an explorer sent */
	int64_t		 up_last_rtt;	/* -1: none since an explorer went */
	int64_t		 up_heard;	/* its latest usable answer came */
	int64_t		 up_heard_sent;	/* the latest sent of those answered */
	int64_t		 up_path_rtt;	/* the shortest TCP round trip, in us */
	int64_t		 up_tfo_off_until; /* a SYN with data was lost */
	int64_t		 up_lossy_at;	/* a timeout came with retransmissions */
	/* Answers that failed demote it; it is probed with copies meanwhile. */
	int		 up_bad;	/* failed answers since a good one */
	int64_t		 up_demoted_at;
	int64_t		 up_probe_at;	/* a copy of the next query goes here */
	int		 up_probe_ms;
	struct up_counts up_n;
	int64_t		 up_warned;
};

/* Why a connection closed itself, which the pool's policy weighs. */
enum conn_end {
	CONN_END_DIAL,		/* connect or handshake failed: the upstream's fault */
	CONN_END_LOST,		/* it was up: closed, write failed, idle */
	CONN_END_GARBAGE	/* it sent what is not DNS: the upstream's fault */
};

/* How a connection reports to the pool; never from inside a pool call. */
struct conn_events {
	/* It can take queries now. */
	void	(*ce_ready)(struct conn *, int64_t);
	/* A reply matched a, still on the connection: the pool ends it. */
	void	(*ce_reply)(struct conn *, struct att *, uint8_t *, size_t,
		    int64_t);
	/* It closed itself; its attempts are on the list, in write order. */
	void	(*ce_closed)(struct conn *, enum conn_end, const char *,
		    struct attlist *, int64_t);
	/* Still dialling after half the timeout: a black hole, likely. */
	void	(*ce_slow)(struct conn *, int64_t);
	/* Idle past its timeout: 1 keeps it open for another period. */
	int	(*ce_keep)(const struct conn *, int64_t);
};

/* An attempt's number in the ID map: the pool is one array of pqs. */
static inline int32_t
att_index(const struct pq *pool, const struct att *a)
{
	return (int32_t)((a->a_pq - pool) * PQ_ATTS + (a - a->a_pq->pq_att));
}

static inline struct att *
att_at(struct pq *pool, int32_t i)
{
	return &pool[i / PQ_ATTS].pq_att[i % PQ_ATTS];
}

/* pool is the array attempts belong to; hmask sizes the ID map's chains. */
void	conn_setup(struct ev_loop *, const struct config *,
	    const struct conn_events *, struct pq *, uint32_t);
void	conn_init(struct conn *, struct upstream *, int);
/* Frees a slot's buffers; its connection is already closed. */
void	conn_free(struct conn *);
/* Starts a non-blocking connect; -1 with the reason when it failed at once. */
int	conn_dial(struct conn *, char *, size_t);
/* Room for one more query on a ready connection. */
int	conn_has_room(const struct conn *);
/* Frames a's query with a fresh ID; it is written before the loop sleeps. */
void	conn_send(struct conn *, struct att *, int64_t);
/* The kernel's smoothed round trip of its TCP, in us; -1: none known. */
int64_t	conn_path_rtt(const struct conn *);
/*
 * When the answer to a, being handed over at now, arrived: the kernel's
 * stamp of the last read, which a stall of dnsfwd's own does not move.
 */
int64_t	conn_arrived(const struct conn *, const struct att *, int64_t now);
/* Its TCP retransmitted since the last call: the path loses packets. */
int	conn_retransmitted(struct conn *);
/* An attempt on it timed out: it is suspect (conn_stalled). */
void	conn_suspect(struct conn *);
/*
 * Its oldest query is older than `late` ms, or an attempt on it timed
 * out and it may yet hold what follows.
 */
int	conn_stalled(struct conn *, int64_t, int64_t);
/* Takes an answered or abandoned attempt off the connection. */
void	conn_unlink(struct conn *, struct att *);
/*
 * Closes the connection, when the pool decides it, and puts its attempts
 * on back in write order, each with a_out set when its bytes had been
 * written out.
 */
void	conn_close(struct conn *, const char *, struct attlist *);
/* Its socket's local address; -1 when it has no socket. */
int	conn_local(const struct conn *, union sockaddr_any *);
/* Writes what queries this loop iteration queued, once per connection. */
void	conn_flush_dirty(void);

#endif /* CONN_H */

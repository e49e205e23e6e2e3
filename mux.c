/*
 * The multiplexer carries opaque DNS messages: every mux_send becomes a
 * pending query (pq) from a fixed pool, gets an upstream ID that is
 * unique on its connection, and is pipelined over a small pool of
 * persistent TCP or TLS connections per upstream.  A reply is matched on
 * ID and question, and its sender is called back with it, exactly once
 * per send: answer, timeout, no upstream reachable or repeated failure.
 * The mux knows no clients and no cache.
 *
 * A pq is always on exactly one of three lists through pq_link: the free
 * list, the wait queue (no connection yet), or the list of the connection
 * it was written to.  While in use it is also on the deadline list, kept
 * in expiry order; one ev_timer on its head serves them all (ev.pod, "Be
 * smart about timeouts").  Deadlines almost always arrive in order, so
 * inserting from the tail costs O(1).
 *
 * Completions never run inside mux_send: a new send waits for the
 * prepare watcher, which runs before the listeners write their answers.
 */
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <ev.h>

#include "dnsfwd.h"

/* Largest partial frame plus one large TLS read. */
#define CONN_INCAP	(2 + DNS_MAXMSG + 16384)
/* One TLS record carries at most this much plaintext. */
#define TLS_RECORD	16384
/* A jump of the boot clock past the monotonic one this large is a sleep. */
#define SUSPEND_MS	2000
/* TCP_USER_TIMEOUT follows --timeout, but loss of a moment is no death. */
#define TCP_USER_MIN_MS	1000
/* With --prewarm, connections are kept while queries came this recently. */
#define PREWARM_RECENT_MS (5 * 60 * 1000)
/* We close before a server's announced idle timeout by this much. */
#define KEEPALIVE_MARGIN_MS 500
/* Sends of one query before a connection loss is blamed on the query. */
#define PQ_MAX_SENDS	3
/*
 * Queries written to a connection this often (seconds between, averaged)
 * will carry the ACK of its answers soon: the quick ACK is left to a
 * timer of ACK_LATE, the shortest the loop keeps, as a safety net.
 */
#define ACK_GAP		0.0002
#define ACK_LATE	0.001

/* A query on its way upstream; lives from mux_send to its callback. */
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

/* One upstream connection slot; buffers live as long as the process. */
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
	int		 c_dirty;	/* on mux.dirty: flush before sleeping */
	int		 c_ackdue;	/* answers read, more due: ACK them */
	ev_timer	 c_acktimer;	/* ACK_LATE, if no query carries it */
	size_t		 c_ackmark;	/* c_written when it was started */
	ev_tstamp	 c_lastw;	/* loop time of the last write */
	ev_tstamp	 c_gap;		/* between writes, averaged */
	int		 c_slow;	/* dialling for over half a timeout */
	TAILQ_ENTRY(conn) c_dirtylink;
};

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

static struct {
	struct ev_loop	*loop;
	const struct config *cf;
	struct upstream	 ups[UPSTREAMS_MAX];
	int		 nup;
	struct pq	*pool;
	int		 npool;
	int		 nfree;
	int		 fresh;		/* pool entries never used start here */
	int		 nwait;
	uint32_t	 hmask;
	struct pqlist	 free;
	struct pqlist	 waitq;
	struct pqlist	 deadlines;
	int		 kick;		/* sends wait for dispatch */
	ev_timer	 deadline_timer;
	ev_timer	 warm_timer;	/* --prewarm, once a backoff ends */
	ev_prepare	 flush_prep;
	TAILQ_HEAD(, conn) dirty;
	uint16_t	 ids[256];
	int		 nids;
	int64_t		 boot_offset;
	int64_t		 last_active;	/* a client's query, for --prewarm */
	int64_t		 overload_warned;
} mux;

static void	 dispatch(int64_t);
static struct upstream *pick_upstream(int64_t);
static struct conn *pick_conn(struct upstream *);
static int	 need_dial(struct upstream *);
static int	 slow_dial(struct upstream *);
static int	 conn_dial(struct upstream *, int64_t);
static void	 conn_connected(struct conn *, int64_t);
static void	 conn_handshake(struct conn *, int64_t);
static void	 conn_ready(struct conn *, int64_t);
static void	 conn_close(struct conn *, const char *);
static void	 conn_failed(struct conn *, const char *, int64_t);
static void	 conn_lost(struct conn *, const char *, int64_t);
static void	 conn_input(struct conn *, int64_t);
static int	 conn_frames(struct conn *, int64_t);
static int	 conn_reply(struct conn *, uint8_t *, size_t, int64_t);
static void	 conn_flush(struct conn *);
static void	 conn_flush_ack(struct conn *);
static void	 conn_ack_cb(struct ev_loop *, ev_timer *, int);
static void	 conn_quickack(struct conn *);
static void	 conn_dirty(struct conn *);
static int	 conn_write_next(struct conn *);
static void	 conn_idle_check(struct conn *);
static void	 conn_keepalive(struct conn *, const uint8_t *, size_t);
static void	 prewarm(struct upstream *, int64_t);
static int	 warm_wanted(int64_t);
static int	 keep_warm(const struct conn *, int64_t);
static void	 warm_later(int64_t, int64_t);
static void	 warm_cb(struct ev_loop *, ev_timer *, int);
static void	 warm_probes(int);
static int	 conn_read(struct conn *, uint8_t *, size_t);
static int	 conn_write(struct conn *, const uint8_t *, size_t);
static void	 conn_read_cb(struct ev_loop *, ev_io *, int);
static void	 conn_write_cb(struct ev_loop *, ev_io *, int);
static void	 conn_timer_cb(struct ev_loop *, ev_timer *, int);
static void	 upstream_failed(struct upstream *, const char *, int64_t);
static void	 deadline_insert(struct pq *, int64_t, int64_t);
static void	 pq_send(struct pq *, struct conn *, int64_t);
static void	 pq_detach(struct pq *);
static void	 pq_complete(struct pq *, enum mux_status, uint8_t *, size_t,
		    int64_t);
static void	 timer_arm(ev_timer *, int64_t, int64_t);
static struct pq *pq_alloc(void);
static void	 pq_free(struct pq *);
static struct pq *hash_find(struct conn *, uint16_t);
static uint16_t	 new_id(struct conn *);
static void	 fail_waiting(int64_t);
static void	 deadline_cb(struct ev_loop *, ev_timer *, int);
static void	 flush_cb(struct ev_loop *, ev_prepare *, int);
static void	 check_suspend(int64_t, int64_t);
static void	 upstream_reset(struct upstream *, const char *, int64_t);

#define PQ_INDEX(pq)	((int32_t)((pq) - mux.pool))
#define CONN_OF(w, f)	((struct conn *)((char *)(w) - offsetof(struct conn, f)))

static void
upstream_init(struct upstream *up, const struct upstream_cfg *uc, int idx)
{
	const struct config *cf = mux.cf;
	char		 a[64];
	int		 i;

	up->up_cfg = uc;
	snprintf(up->up_label, sizeof(up->up_label), "u%d %s", idx,
	    addr_str(&uc->uc_addr.sa, a, sizeof(a)));
	if (uc->uc_tls)
		up->up_tls = tls_upstream_new(uc->uc_name,
		    (const uint8_t (*)[32])uc->uc_pins, uc->uc_npins,
		    !cf->cf_no_resume);
	up->up_conns = xcalloc((size_t)cf->cf_connections, sizeof(struct conn));
	for (i = 0; i < cf->cf_connections; i++) {
		struct conn *c = &up->up_conns[i];

		c->c_up = up;
		c->c_idx = i;
		c->c_fd = -1;
		TAILQ_INIT(&c->c_pqs);
		c->c_outcap = (size_t)cf->cf_max_inflight * (UPQUERY_MAX + 2);
		c->c_in = xcalloc(1, CONN_INCAP);
		c->c_out = xcalloc(1, c->c_outcap);
		c->c_hash = chain_buckets(mux.hmask);
		ev_init(&c->c_rio, conn_read_cb);
		ev_init(&c->c_wio, conn_write_cb);
		ev_init(&c->c_timer, conn_timer_cb);
		ev_init(&c->c_acktimer, conn_ack_cb);
	}
}

void
mux_init(struct ev_loop *loop, const struct config *cf)
{
	int	 i;

	mux.loop = loop;
	mux.cf = cf;
	mux.nup = cf->cf_nup;
	mux.hmask = chain_mask((uint32_t)cf->cf_max_inflight);
	/* In flight on every connection, and as many again waiting. */
	mux.npool = 2 * cf->cf_nup * cf->cf_connections * cf->cf_max_inflight;
	mux.pool = xcalloc((size_t)mux.npool, sizeof(struct pq));
	TAILQ_INIT(&mux.free);
	TAILQ_INIT(&mux.waitq);
	TAILQ_INIT(&mux.deadlines);
	TAILQ_INIT(&mux.dirty);
	mux.nfree = mux.npool;
	for (i = 0; i < mux.nup; i++)
		upstream_init(&mux.ups[i], &cf->cf_up[i], i);
	ev_init(&mux.deadline_timer, deadline_cb);
	ev_init(&mux.warm_timer, warm_cb);
	ev_prepare_init(&mux.flush_prep, flush_cb);
	/* Before the listeners' own prepare writes out what we answered. */
	ev_set_priority(&mux.flush_prep, EV_MAXPRI);
	ev_prepare_start(loop, &mux.flush_prep);
	ev_unref(loop);		/* the flush watcher alone keeps nothing alive */
	mux.boot_offset = boottime_ms() - now_ms();
	mux.last_active = now_ms();
	for (i = 0; i < mux.nup; i++)
		prewarm(&mux.ups[i], mux.last_active);
}

void
mux_shutdown(void)
{
	int	 i, j;

	for (i = 0; i < mux.nup; i++) {
		struct upstream *up = &mux.ups[i];

		for (j = 0; j < mux.cf->cf_connections; j++) {
			struct conn *c = &up->up_conns[j];

			if (c->c_state != CONN_IDLE)
				conn_close(c, "shutting down");
			free(c->c_in);
			free(c->c_out);
			free(c->c_hash);
		}
		free(up->up_conns);
		tls_upstream_free(up->up_tls);
	}
	ev_timer_stop(mux.loop, &mux.deadline_timer);
	ev_timer_stop(mux.loop, &mux.warm_timer);
	ev_ref(mux.loop);
	ev_prepare_stop(mux.loop, &mux.flush_prep);
	free(mux.pool);
	memset(&mux, 0, sizeof(mux));
}

int
mux_inflight(void)
{
	return mux.npool - mux.nfree;
}

int
mux_capacity(void)
{
	return mux.npool;
}

int
mux_send(const uint8_t *msg, size_t len, int64_t deadline,
    mux_done_fn *done, void *arg, int64_t now)
{
	struct pq	*pq;
	size_t		 qend;

	if (len > sizeof(pq->pq_query) ||
	    (qend = dns_question_end(msg, len)) == 0)
		return -1;
	if ((pq = pq_alloc()) == NULL) {
		log_ratelimited(&mux.overload_warned, "%d queries pending "
		    "upstream: refusing more until some complete", mux.npool);
		return -1;
	}
	pq->pq_len = (uint16_t)len;
	pq->pq_qend = (uint16_t)qend;
	memcpy(pq->pq_query, msg, len);
	pq->pq_conn = NULL;
	pq->pq_sends = 0;
	pq->pq_done = done;
	pq->pq_arg = arg;
	deadline_insert(pq, deadline, now);
	TAILQ_INSERT_TAIL(&mux.waitq, pq, pq_link);
	mux.nwait++;
	mux.kick = 1;
	return PQ_INDEX(pq);
}

void
mux_extend(int h, int64_t deadline, int64_t now)
{
	struct pq	*pq = &mux.pool[h];

	if (deadline <= pq->pq_deadline)
		return;
	TAILQ_REMOVE(&mux.deadlines, pq, pq_dlink);
	deadline_insert(pq, deadline, now);
}

/* Keeps the deadline list in order, and its timer on the head. */
static void
deadline_insert(struct pq *pq, int64_t deadline, int64_t now)
{
	struct pq	*p;

	pq->pq_deadline = deadline;
	TAILQ_FOREACH_REVERSE(p, &mux.deadlines, pqlist, pq_dlink)
		if (p->pq_deadline <= deadline)
			break;
	if (p != NULL)
		TAILQ_INSERT_AFTER(&mux.deadlines, p, pq, pq_dlink);
	else
		TAILQ_INSERT_HEAD(&mux.deadlines, pq, pq_dlink);
	/* A timer armed for a later head would fire too late. */
	if (!ev_is_active(&mux.deadline_timer) ||
	    TAILQ_FIRST(&mux.deadlines) == pq)
		timer_arm(&mux.deadline_timer, deadline, now);
}

/*
 * Moves waiting queries onto connections.  Every waiting query is alike,
 * so only the head is looked at: when it cannot go, none can.
 */
static void
dispatch(int64_t now)
{
	struct pq	*pq;
	struct upstream	*up;
	struct conn	*c;

	while ((pq = TAILQ_FIRST(&mux.waitq)) != NULL) {
		if ((up = pick_upstream(now)) == NULL) {
			fail_waiting(now);
			return;
		}
		if ((c = pick_conn(up)) != NULL) {
			pq_send(pq, c, now);
			continue;
		}
		if (need_dial(up) && conn_dial(up, now) == -1)
			continue;	/* that upstream now backs off */
		return;
	}
}

/*
 * True while the upstream's only hope is a dial that has taken over half
 * the query timeout: a black hole, most likely, so others go first.
 */
static int
slow_dial(struct upstream *up)
{
	int	 i, slow = 0;

	for (i = 0; i < mux.cf->cf_connections; i++) {
		if (up->up_conns[i].c_state == CONN_READY)
			return 0;
		slow |= up->up_conns[i].c_slow;
	}
	return slow;
}

/*
 * Healthy upstreams first, then those due a probe, probing or slow to
 * connect, each by lowest round-trip time.  NULL when all back off.
 */
static struct upstream *
pick_upstream(int64_t now)
{
	struct upstream	*up, *best = NULL;
	int		 i, rank, best_rank = 0;

	for (i = 0; i < mux.nup; i++) {
		up = &mux.ups[i];
		if (up->up_fails == 0 && !slow_dial(up))
			rank = 0;
		else if (now >= up->up_retry_at || pick_conn(up) != NULL ||
		    !need_dial(up))
			rank = 1;
		else
			continue;
		if (best == NULL || rank < best_rank || (rank == best_rank &&
		    up->up_rtt8 < best->up_rtt8)) {
			best = up;
			best_rank = rank;
		}
	}
	return best;
}

/* The ready connection with the fewest in flight and room for one more. */
static struct conn *
pick_conn(struct upstream *up)
{
	struct conn	*c, *best = NULL;
	int		 i;

	for (i = 0; i < mux.cf->cf_connections; i++) {
		c = &up->up_conns[i];
		if (c->c_state != CONN_READY ||
		    c->c_inflight >= mux.cf->cf_max_inflight ||
		    c->c_outcap - c->c_outlen < UPQUERY_MAX + 2)
			continue;
		if (best == NULL || c->c_inflight < best->c_inflight)
			best = c;
	}
	return best;
}

/*
 * True when a free slot exists and the connections being dialled will
 * not have room for everything waiting.
 */
static int
need_dial(struct upstream *up)
{
	int	 i, dialing = 0, idle = 0;

	for (i = 0; i < mux.cf->cf_connections; i++) {
		switch (up->up_conns[i].c_state) {
		case CONN_IDLE:
			idle++;
			break;
		case CONN_CONNECTING:
		case CONN_HANDSHAKE:
			dialing++;
			break;
		case CONN_READY:
			break;
		}
	}
	return idle > 0 && mux.nwait > dialing * mux.cf->cf_max_inflight;
}

static struct conn *
idle_conn(struct upstream *up)
{
	int	 i;

	for (i = 0; i < mux.cf->cf_connections; i++)
		if (up->up_conns[i].c_state == CONN_IDLE)
			return &up->up_conns[i];
	return NULL;
}

/* Starts a non-blocking connect; -1 when it failed at once. */
static int
conn_dial(struct upstream *up, int64_t now)
{
	const struct upstream_cfg *uc = up->up_cfg;
	struct conn	*c = idle_conn(up);
	char		 why[80];
	int		 fd, one = 1;
	unsigned int	 user_timeout = mux.cf->cf_timeout_ms < TCP_USER_MIN_MS ?
			    TCP_USER_MIN_MS : (unsigned int)mux.cf->cf_timeout_ms;

	if (up->up_fails > 0)	/* one probe per backoff period */
		up->up_retry_at = now + up->up_backoff_ms;
	fd = socket(uc->uc_addr.sa.sa_family,
	    SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd == -1) {
		snprintf(why, sizeof(why), "socket: %s", strerror(errno));
		upstream_failed(up, why, now);
		return -1;
	}
	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	/* The kernel too gives up on a dead path, not after many minutes. */
	(void)setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout,
	    sizeof(user_timeout));
	if (mux.cf->cf_prewarm)
		warm_probes(fd);
	if (connect(fd, &uc->uc_addr.sa, uc->uc_addrlen) == -1 &&
	    errno != EINPROGRESS) {
		upstream_failed(up, strerror(errno), now);
		close(fd);
		return -1;
	}
	stats.st_reconnects++;
	c->c_fd = fd;
	c->c_state = CONN_CONNECTING;
	c->c_slow = 0;
	c->c_inlen = c->c_outoff = c->c_outlen = 0;
	c->c_queued = c->c_written = 0;
	c->c_replies = 0;
	c->c_idle_ms = mux.cf->cf_idle_timeout_s * 1000LL;
	c->c_server_idle = 0;
	c->c_write_wants_read = c->c_read_wants_write = 0;
	ev_io_set(&c->c_rio, fd, EV_READ);
	ev_io_set(&c->c_wio, fd, EV_WRITE);
	ev_io_start(mux.loop, &c->c_wio);
	c->c_timer.repeat = mux.cf->cf_timeout_ms / 2000.0;
	ev_timer_again(mux.loop, &c->c_timer);
	log_debug("%s c%d: connecting", up->up_label, c->c_idx);
	return 0;
}

static void
conn_connected(struct conn *c, int64_t now)
{
	int		 err = 0;
	socklen_t	 len = sizeof(err);

	if (getsockopt(c->c_fd, SOL_SOCKET, SO_ERROR, &err, &len) == -1)
		err = errno;
	if (err != 0) {
		conn_failed(c, strerror(err), now);
		return;
	}
	if (c->c_up->up_tls == NULL) {
		conn_ready(c, now);
		return;
	}
	if ((c->c_tls = tls_conn_new(c->c_up->up_tls, c->c_fd)) == NULL) {
		conn_failed(c, "TLS setup failed", now);
		return;
	}
	c->c_state = CONN_HANDSHAKE;
	conn_handshake(c, now);
}

static void
conn_handshake(struct conn *c, int64_t now)
{
	char	 why[256], msg[300];
	int	 rv;

	rv = tls_handshake(c->c_tls, why, sizeof(why));
	switch (rv) {
	case 0:
		conn_ready(c, now);
		return;
	case IO_WANT_READ:
		ev_io_stop(mux.loop, &c->c_wio);
		ev_io_start(mux.loop, &c->c_rio);
		return;
	case IO_WANT_WRITE:
		ev_io_start(mux.loop, &c->c_wio);
		return;
	}
	snprintf(msg, sizeof(msg), "TLS handshake failed: %s", why);
	conn_failed(c, msg, now);
}

static void
conn_ready(struct conn *c, int64_t now)
{
	struct upstream	*up = c->c_up;

	c->c_state = CONN_READY;
	c->c_slow = 0;
	c->c_lastw = ev_now(mux.loop);
	c->c_gap = 1.;		/* no rate yet: acknowledge at once */
	ev_io_stop(mux.loop, &c->c_wio);
	ev_io_start(mux.loop, &c->c_rio);
	ev_timer_stop(mux.loop, &c->c_timer);
	if (up->up_fails > 0)
		log_info("%s: reachable again", up->up_label);
	up->up_fails = 0;
	up->up_backoff_ms = 0;
	if (c->c_tls != NULL && tls_resumed(c->c_tls))
		stats.st_tls_resumed++;
	else if (c->c_tls != NULL)
		stats.st_tls_full++;
	log_debug("%s c%d: ready%s%s%s", up->up_label, c->c_idx,
	    c->c_tls ? " over " : "", c->c_tls ? tls_version(c->c_tls) : "",
	    c->c_tls && tls_resumed(c->c_tls) ? ", resumed" : "");
	dispatch(now);
	conn_idle_check(c);
}

/*
 * The one teardown of a connection: stops its watchers, says goodbye
 * over TLS when the session was up, closes the socket, and puts its
 * queries back at the head of the wait queue in their original order.
 * A query counts as sent only once its bytes were written out; one that
 * went down with PQ_MAX_SENDS connections is likely what kills them: it
 * fails rather than take another one along.  The caller decides whether
 * to dispatch the rest.
 */
static void
conn_close(struct conn *c, const char *why)
{
	struct pq	*pq, *next;
	int		 n = c->c_inflight;
	int64_t		 now = 0;

	log_debug("%s c%d: closed: %s", c->c_up->up_label, c->c_idx, why);
	ev_io_stop(mux.loop, &c->c_rio);
	ev_io_stop(mux.loop, &c->c_wio);
	ev_timer_stop(mux.loop, &c->c_timer);
	ev_timer_stop(mux.loop, &c->c_acktimer);
	tls_conn_free(c->c_tls, c->c_state == CONN_READY);
	c->c_tls = NULL;
	close(c->c_fd);
	c->c_fd = -1;
	c->c_state = CONN_IDLE;
	c->c_slow = 0;
	if (c->c_dirty) {
		TAILQ_REMOVE(&mux.dirty, c, c_dirtylink);
		c->c_dirty = 0;
	}
	while ((pq = TAILQ_LAST(&c->c_pqs, pqlist)) != NULL) {
		TAILQ_REMOVE(&c->c_pqs, pq, pq_link);
		pq->pq_conn = NULL;
		if (pq->pq_end <= c->c_written)
			pq->pq_sends++;
		TAILQ_INSERT_HEAD(&mux.waitq, pq, pq_link);
		mux.nwait++;
	}
	c->c_inflight = 0;
	chain_clear(c->c_hash, mux.hmask);
	for (pq = TAILQ_FIRST(&mux.waitq); pq != NULL && n-- > 0; pq = next) {
		next = TAILQ_NEXT(pq, pq_link);
		if (pq->pq_sends < PQ_MAX_SENDS)
			continue;
		if (now == 0)
			now = now_ms();
		pq_complete(pq, MUX_FAILED, NULL, 0, now);
	}
}

/*
 * A connection that was up went away: its queries go elsewhere, or to
 * its replacement, which --prewarm dials even when none are waiting.
 */
static void
conn_lost(struct conn *c, const char *why, int64_t now)
{
	struct upstream	*up = c->c_up;

	conn_close(c, why);
	dispatch(now);
	prewarm(up, now);
}

/* A dial or handshake that failed: the upstream backs off. */
static void
conn_failed(struct conn *c, const char *why, int64_t now)
{
	struct upstream	*up = c->c_up;

	conn_close(c, why);
	upstream_failed(up, why, now);
	dispatch(now);
	prewarm(up, now);
}

static void
upstream_failed(struct upstream *up, const char *why, int64_t now)
{
	uint32_t	 jitter;
	int		 b;

	up->up_fails++;
	b = up->up_backoff_ms == 0 ? BACKOFF_MIN_MS : up->up_backoff_ms * 2;
	if (b > BACKOFF_MAX_MS)
		b = BACKOFF_MAX_MS;
	up->up_backoff_ms = b;
	/* Up to a quarter less, so many dnsfwd do not retry in step. */
	random_bytes(&jitter, sizeof(jitter));
	up->up_retry_at = now + b - (int64_t)(jitter % (uint32_t)(b / 4 + 1));
	if (up->up_fails == 1)
		up->up_warned = 0;
	log_ratelimited(&up->up_warned, "%s: %s (failure %d, next try in "
	    "%d ms)", up->up_label, why, up->up_fails,
	    (int)(up->up_retry_at - now));
}

static void
conn_read_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct conn	*c = CONN_OF(w, c_rio);
	int64_t		 now = now_ms();

	(void)loop;
	(void)revents;
	if (c->c_state == CONN_HANDSHAKE) {
		conn_handshake(c, now);
		return;
	}
	if (c->c_state != CONN_READY)
		return;
	if (c->c_write_wants_read) {
		conn_flush(c);
		if (c->c_state != CONN_READY)
			return;
	}
	conn_input(c, now);
}

static void
conn_write_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct conn	*c = CONN_OF(w, c_wio);
	int64_t		 now = now_ms();

	(void)loop;
	(void)revents;
	switch (c->c_state) {
	case CONN_CONNECTING:
		conn_connected(c, now);
		break;
	case CONN_HANDSHAKE:
		conn_handshake(c, now);
		break;
	case CONN_READY:
		if (c->c_read_wants_write) {
			c->c_read_wants_write = 0;
			conn_input(c, now);
			if (c->c_state != CONN_READY)
				break;
		}
		conn_flush(c);
		break;
	case CONN_IDLE:
		break;
	}
}

static void
conn_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct conn	*c = CONN_OF(w, c_timer);
	int64_t		 now = now_ms();

	(void)loop;
	(void)revents;
	if (c->c_state != CONN_READY && !c->c_slow) {
		/* Halfway: let another upstream take the waiting queries. */
		c->c_slow = 1;
		ev_timer_again(mux.loop, &c->c_timer);
		dispatch(now);
	} else if (c->c_state == CONN_CONNECTING)
		conn_failed(c, "connect timed out", now);
	else if (c->c_state == CONN_HANDSHAKE)
		conn_failed(c, "TLS handshake timed out", now);
	else if (c->c_state == CONN_READY && c->c_inflight == 0) {
		if (keep_warm(c, now)) {
			conn_idle_check(c);
			return;
		}
		conn_lost(c, "idle", now);
	}
}

/* Reads until the socket is drained, handing over every whole reply. */
static void
conn_input(struct conn *c, int64_t now)
{
	int	 n;

	for (;;) {
		n = conn_read(c, c->c_in + c->c_inlen, CONN_INCAP - c->c_inlen);
		if (n > 0) {
			c->c_inlen += (size_t)n;
			c->c_reads++;
			if (conn_frames(c, now) == -1)
				return;
			/* A read that must find nothing is a syscall saved. */
			if (c->c_tls ? tls_drained(c->c_tls) : c->c_drained)
				break;
			continue;
		}
		if (n == IO_WANT_READ)
			break;
		if (n == IO_WANT_WRITE) {
			/* A TLS read that must write first: retry it then. */
			c->c_read_wants_write = 1;
			ev_io_start(mux.loop, &c->c_wio);
			break;
		}
		/* A close between queries is normal: redial on demand. */
		conn_lost(c, n == 0 ? "closed by server" : "read failed", now);
		return;
	}
	dispatch(now);
	/* Answers still due: acknowledge before the loop sleeps. */
	if (c->c_state == CONN_READY && c->c_inflight > 0) {
		c->c_ackdue = 1;
		conn_dirty(c);
	}
}

static int
conn_frames(struct conn *c, int64_t now)
{
	size_t	 off = 0, flen;

	while (c->c_inlen - off >= 2) {
		flen = dns_get16(c->c_in + off);
		if (c->c_inlen - off - 2 < flen)
			break;
		if (conn_reply(c, c->c_in + off + 2, flen, now) == -1)
			return -1;
		off += 2 + flen;
	}
	if (off > 0) {
		memmove(c->c_in, c->c_in + off, c->c_inlen - off);
		c->c_inlen -= off;
	}
	return 0;
}

/*
 * Delivers a reply whose ID is in flight here and whose question is the
 * query's.  Anything else is dropped; bytes that are not even a DNS
 * response mean the stream cannot be trusted, so the connection goes.
 */
static int
conn_reply(struct conn *c, uint8_t *msg, size_t len, int64_t now)
{
	struct upstream	*up = c->c_up;
	struct pq	*pq;
	int64_t		 rtt;

	if (len < DNS_HDRLEN || (msg[2] & F_QR) == 0) {
		stats.st_bad_replies++;
		log_ratelimited(&up->up_warned, "%s: not a DNS response, "
		    "closing the connection", up->up_label);
		conn_lost(c, "garbage from upstream", now);
		return -1;
	}
	pq = hash_find(c, dns_get16(msg));
	if (pq == NULL || !dns_reply_matches(msg, len, pq->pq_query,
	    pq->pq_qend)) {
		stats.st_bad_replies++;
		log_debug("%s c%d: dropped a reply matching no query",
		    up->up_label, c->c_idx);
		return 0;
	}
	rtt = now - pq->pq_sent;
	up->up_rtt8 += rtt - up->up_rtt8 / 8;
	if (c->c_replies++ == 0)
		conn_keepalive(c, msg, len);
	pq_complete(pq, MUX_ANSWER, msg, len, now);
	return 0;
}

/*
 * The server's idle timeout (RFC 7828), read from its first answer: we
 * close first, so that its close never meets a query in flight.
 */
static void
conn_keepalive(struct conn *c, const uint8_t *msg, size_t len)
{
	int	 ka = dns_keepalive(msg, len);
	int64_t	 ms;

	if (ka < 0)
		return;
	ms = ka * 100LL - KEEPALIVE_MARGIN_MS;
	c->c_server_idle = 1;
	if (ms < c->c_idle_ms)
		c->c_idle_ms = ms > 0 ? ms : 0;
	log_debug("%s c%d: server keeps idle connections %d ms",
	    c->c_up->up_label, c->c_idx, ka * 100);
}

/* Starts the idle timer once nothing is in flight. */
static void
conn_idle_check(struct conn *c)
{
	if (c->c_state != CONN_READY || c->c_inflight > 0)
		return;
	c->c_timer.repeat = c->c_idle_ms > 0 ? c->c_idle_ms / 1000.0 : 0.001;
	ev_timer_again(mux.loop, &c->c_timer);
}

void
mux_active(int64_t now)
{
	mux.last_active = now;
}

/* --prewarm, and a client asked within PREWARM_RECENT_MS. */
static int
warm_wanted(int64_t now)
{
	return mux.cf->cf_prewarm && now - mux.last_active <= PREWARM_RECENT_MS;
}

/*
 * --prewarm: while queries came recently, each upstream keeps one
 * connection open, so that the first query after a quiet spell pays no
 * handshake.  One is enough: a second opens only when the first is full.
 */
static void
prewarm(struct upstream *up, int64_t now)
{
	int	 i;

	if (!warm_wanted(now))
		return;
	for (i = 0; i < mux.cf->cf_connections; i++)
		if (up->up_conns[i].c_state != CONN_IDLE)
			return;
	if (up->up_fails == 0 || now >= up->up_retry_at)
		(void)conn_dial(up, now);
	/* Failing: try again when the backoff allows, not at the next query. */
	if (up->up_fails > 0)
		warm_later(up->up_retry_at, now);
}

/* The warm timer fires at the earliest backoff end asked for. */
static void
warm_later(int64_t at, int64_t now)
{
	if (ev_is_active(&mux.warm_timer) &&
	    ev_timer_remaining(mux.loop, &mux.warm_timer) * 1000 <=
	    (double)(at - now))
		return;
	timer_arm(&mux.warm_timer, at, now);
}

static void
warm_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	int64_t	 now = now_ms();
	int	 i;

	(void)loop;
	(void)revents;
	ev_timer_stop(mux.loop, w);
	for (i = 0; i < mux.nup; i++)
		prewarm(&mux.ups[i], now);
}

/*
 * The warm connection outlives our idle timeout: closing it only to open
 * it again would cost a handshake and spare the server nothing.  It
 * still goes when the server asked for that (RFC 7828), or closes it.
 */
static int
keep_warm(const struct conn *c, int64_t now)
{
	const struct upstream *up = c->c_up;
	int	 i;

	if (!warm_wanted(now) || c->c_server_idle)
		return 0;
	for (i = 0; i < c->c_idx; i++)
		if (up->up_conns[i].c_state == CONN_READY)
			return 0;
	return 1;
}

/*
 * An idle connection that is kept must not die unnoticed behind a NAT
 * that forgot it: the kernel probes it every idle timeout, and once a
 * probe went unanswered it closes it at the next (TCP_USER_TIMEOUT, being
 * set, overrides the probe count), to be opened again.
 */
static void
warm_probes(int fd)
{
	int	 one = 1, idle = mux.cf->cf_idle_timeout_s;

	(void)setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
	(void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
	(void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &idle, sizeof(idle));
}

/* Writes what is queued; it waits for whichever direction TLS asked for. */
static void
conn_flush(struct conn *c)
{
	int	 n;

	c->c_write_wants_read = 0;
	while ((n = conn_write_next(c)) > 0) {
		c->c_outoff += (size_t)n;
		c->c_outlen -= (size_t)n;
		c->c_written += (size_t)n;
	}
	if (n == IO_WANT_READ) {
		/* The read watcher is always on when ready. */
		c->c_write_wants_read = 1;
		if (!c->c_read_wants_write)
			ev_io_stop(mux.loop, &c->c_wio);
	} else if (n == IO_WANT_WRITE)
		ev_io_start(mux.loop, &c->c_wio);
	else if (n == 0) {
		c->c_outoff = 0;
		if (!c->c_read_wants_write)
			ev_io_stop(mux.loop, &c->c_wio);
	} else
		conn_lost(c, "write failed", now_ms());
}

/*
 * Bytes of the queue written, 0 once the queue and the record tls.c
 * still holds are out, or an IO_* code.  A TLS write takes a record or
 * nothing (tls.c keeps what the socket refuses), so it may be retried
 * with whatever is queued by then.
 */
static int
conn_write_next(struct conn *c)
{
	size_t	 len = c->c_outlen;
	int	 n;

	if (len == 0)
		return c->c_tls != NULL ? tls_flush(c->c_tls) : 0;
	if (c->c_tls != NULL && len > TLS_RECORD)
		len = TLS_RECORD;
	n = conn_write(c, c->c_out + c->c_outoff, len);
	return n == 0 ? IO_ERR : n;
}

static int
conn_read(struct conn *c, uint8_t *buf, size_t len)
{
	ssize_t	 n;

	if (c->c_tls != NULL)
		return tls_read(c->c_tls, buf, len);
	n = recv(c->c_fd, buf, len, 0);
	c->c_drained = n >= 0 && (size_t)n < len;
	if (n >= 0)
		return (int)n;
	if (errno == EAGAIN || errno == EINTR)
		return IO_WANT_READ;
	return errno == ECONNRESET ? 0 : IO_ERR;
}

static int
conn_write(struct conn *c, const uint8_t *buf, size_t len)
{
	ssize_t	 n;

	if (c->c_tls != NULL)
		return tls_write(c->c_tls, buf, len);
	n = send(c->c_fd, buf, len, MSG_NOSIGNAL);
	if (n >= 0)
		return (int)n;
	if (errno == EAGAIN || errno == EINTR)
		return IO_WANT_WRITE;
	return IO_ERR;
}

/*
 * Once per loop iteration: new sends go out, and every dirty connection
 * is written once, so queries that arrived together share one record.
 */
static void
flush_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
	struct conn	*c;
	int64_t		 now;

	(void)loop;
	(void)w;
	(void)revents;
	if (mux.kick) {
		/* Once per loop iteration, not per query: two clock reads. */
		now = now_ms();
		mux.kick = 0;
		check_suspend(now, boottime_ms());
		dispatch(now);
	}
	while ((c = TAILQ_FIRST(&mux.dirty)) != NULL) {
		TAILQ_REMOVE(&mux.dirty, c, c_dirtylink);
		c->c_dirty = 0;
		conn_flush_ack(c);
	}
}

/*
 * A server that leaves Nagle on holds each answer until we acknowledge
 * the one before, and a delayed ACK waits for our next query or 40 ms: a
 * lag that, once begun, delays every answer by the gap between queries.
 * A query written in this loop iteration carries the ACK.  Without one,
 * acknowledge now, unless queries come so often that the next will carry
 * it: each quick ACK is a packet of its own, and answers that need none
 * leave the server together.
 */
static void
conn_flush_ack(struct conn *c)
{
	size_t		 written = c->c_written;
	ev_tstamp	 now;
	int		 due = c->c_ackdue;

	c->c_ackdue = 0;
	conn_flush(c);
	if (c->c_state != CONN_READY)
		return;
	if (c->c_written != written) {
		now = ev_now(mux.loop);
		c->c_gap += (now - c->c_lastw - c->c_gap) / 8;
		c->c_lastw = now;
	} else if (due && c->c_inflight > 0) {
		if (c->c_gap >= ACK_GAP)
			conn_quickack(c);
		else if (!ev_is_active(&c->c_acktimer)) {
			c->c_ackmark = c->c_written;
			ev_timer_set(&c->c_acktimer, ACK_LATE, 0.);
			ev_timer_start(mux.loop, &c->c_acktimer);
		}
	}
}

/* The safety net: no query has carried the ACK since the timer began. */
static void
conn_ack_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct conn	*c = CONN_OF(w, c_acktimer);

	(void)loop;
	(void)revents;
	if (c->c_state == CONN_READY && c->c_written == c->c_ackmark &&
	    c->c_inflight > 0)
		conn_quickack(c);
}

static void
conn_quickack(struct conn *c)
{
	int	 one = 1;

	(void)setsockopt(c->c_fd, IPPROTO_TCP, TCP_QUICKACK, &one,
	    sizeof(one));
}

static void
conn_dirty(struct conn *c)
{
	if (!c->c_dirty) {
		c->c_dirty = 1;
		TAILQ_INSERT_TAIL(&mux.dirty, c, c_dirtylink);
	}
}

/* Frames the query with a fresh ID into the connection's output. */
static void
pq_send(struct pq *pq, struct conn *c, int64_t now)
{
	uint8_t		*p;

	TAILQ_REMOVE(&mux.waitq, pq, pq_link);
	mux.nwait--;
	pq->pq_upid = new_id(c);
	CHAIN_INSERT(c->c_hash, mux.hmask, pq->pq_upid, mux.pool, pq_hnext,
	    PQ_INDEX(pq));
	TAILQ_INSERT_TAIL(&c->c_pqs, pq, pq_link);
	pq->pq_conn = c;
	pq->pq_sent = now;
	pq->pq_reads = c->c_reads;
	if (c->c_inflight++ == 0)
		ev_timer_stop(mux.loop, &c->c_timer);
	if (c->c_outoff + c->c_outlen + 2 + pq->pq_len > c->c_outcap) {
		memmove(c->c_out, c->c_out + c->c_outoff, c->c_outlen);
		c->c_outoff = 0;
	}
	p = c->c_out + c->c_outoff + c->c_outlen;
	dns_put16(p, pq->pq_len);
	dns_put16(p + 2, pq->pq_upid);
	memcpy(p + 4, pq->pq_query + 2, pq->pq_len - 2u);
	c->c_outlen += 2u + pq->pq_len;
	c->c_queued += 2u + pq->pq_len;
	pq->pq_end = c->c_queued;
	conn_dirty(c);
}

/* Takes a pq off its connection or the wait queue, and the deadlines. */
static void
pq_detach(struct pq *pq)
{
	struct conn	*c = pq->pq_conn;

	if (c != NULL) {
		CHAIN_UNLINK(c->c_hash, mux.hmask, pq->pq_upid, mux.pool,
		    pq_hnext, PQ_INDEX(pq));
		TAILQ_REMOVE(&c->c_pqs, pq, pq_link);
		c->c_inflight--;
		pq->pq_conn = NULL;
		conn_idle_check(c);
	} else {
		TAILQ_REMOVE(&mux.waitq, pq, pq_link);
		mux.nwait--;
	}
	TAILQ_REMOVE(&mux.deadlines, pq, pq_dlink);
}

/* The one end of a send: the pq is free again before its sender hears. */
static void
pq_complete(struct pq *pq, enum mux_status status, uint8_t *msg,
    size_t len, int64_t now)
{
	mux_done_fn	*done = pq->pq_done;
	void		*arg = pq->pq_arg;

	pq_detach(pq);
	pq_free(pq);
	done(arg, status, msg, len, now);
}

/*
 * Free entries are reused first; untouched ones are taken in order, so
 * an idle daemon's pool costs no memory.
 */
static struct pq *
pq_alloc(void)
{
	struct pq	*pq;

	if ((pq = TAILQ_FIRST(&mux.free)) != NULL)
		TAILQ_REMOVE(&mux.free, pq, pq_link);
	else if (mux.fresh < mux.npool)
		pq = &mux.pool[mux.fresh++];
	else
		return NULL;
	mux.nfree--;
	return pq;
}

static void
pq_free(struct pq *pq)
{
	TAILQ_INSERT_HEAD(&mux.free, pq, pq_link);
	mux.nfree++;
}

/* Only those waiting now: a sender may try again from its callback. */
static void
fail_waiting(int64_t now)
{
	struct pq	*pq;
	int		 n = mux.nwait;

	while (n-- > 0 && (pq = TAILQ_FIRST(&mux.waitq)) != NULL)
		pq_complete(pq, MUX_UNREACHABLE, NULL, 0, now);
}

static struct pq *
hash_find(struct conn *c, uint16_t id)
{
	int32_t	 i;

	for (i = c->c_hash[id & mux.hmask]; i >= 0; i = mux.pool[i].pq_hnext)
		if (mux.pool[i].pq_upid == id)
			return &mux.pool[i];
	return NULL;
}

/* A CSPRNG ID not in flight on c; drawn in batches to save work. */
static uint16_t
new_id(struct conn *c)
{
	uint16_t id;

	do {
		if (mux.nids == 0) {
			random_bytes(mux.ids, sizeof(mux.ids));
			mux.nids = sizeof(mux.ids) / sizeof(mux.ids[0]);
		}
		id = mux.ids[--mux.nids];
	} while (hash_find(c, id) != NULL);
	return id;
}

static void
timer_arm(ev_timer *t, int64_t when, int64_t now)
{
	double	 after = (double)(when - now) / 1000.0;

	t->repeat = after > 0.001 ? after : 0.001;
	ev_timer_again(mux.loop, t);
}

/*
 * Fails what reached its deadline.  A connection that read nothing
 * since such a query was written to it is presumed dead (a half-open
 * socket after a network change) and replaced.
 */
static void
deadline_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct pq	*pq;
	struct conn	*c;
	int64_t		 now = now_ms();
	int		 silent;

	(void)loop;
	(void)w;
	(void)revents;
	while ((pq = TAILQ_FIRST(&mux.deadlines)) != NULL &&
	    pq->pq_deadline <= now) {
		c = pq->pq_conn;
		silent = c != NULL && c->c_reads == pq->pq_reads;
		pq_complete(pq, MUX_TIMEOUT, NULL, 0, now);
		if (silent) {
			log_info("%s c%d: silent past a query deadline, "
			    "replacing it", c->c_up->up_label, c->c_idx);
			conn_lost(c, "silent", now);
		}
	}
	if ((pq = TAILQ_FIRST(&mux.deadlines)) != NULL)
		timer_arm(&mux.deadline_timer, pq->pq_deadline, now);
	else
		ev_timer_stop(mux.loop, &mux.deadline_timer);
	dispatch(now);
}

/*
 * After a suspend every connection is likely dead and every backoff
 * stale: start afresh so the first query after wake-up works.
 */
static void
check_suspend(int64_t now, int64_t boot)
{
	int	 i;

	if (boot - now - mux.boot_offset < SUSPEND_MS)
		return;
	mux.boot_offset = boot - now;
	log_info("resumed from suspend: reconnecting to upstreams");
	for (i = 0; i < mux.nup; i++)
		upstream_reset(&mux.ups[i], "suspend", now);
}

void
mux_netchange(uint32_t moved, int64_t now)
{
	int	 i;

	log_info("network changed: reconnecting to %s",
	    moved == (1u << mux.nup) - 1 ? "every upstream" : "some upstreams");
	for (i = 0; i < mux.nup; i++)
		if (moved & (1u << i))
			upstream_reset(&mux.ups[i], "network changed", now);
		else if (mux.ups[i].up_tls != NULL)
			tls_upstream_forget(mux.ups[i].up_tls);
	dispatch(now);
}

/*
 * Its connections may be dead without knowing it, its backoff is about
 * another network, and a ticket would link this machine across networks.
 * --prewarm dials the replacement at once.
 */
static void
upstream_reset(struct upstream *up, const char *why, int64_t now)
{
	int	 j;

	for (j = 0; j < mux.cf->cf_connections; j++)
		if (up->up_conns[j].c_state != CONN_IDLE)
			conn_close(&up->up_conns[j], why);
	up->up_fails = 0;
	up->up_backoff_ms = 0;
	up->up_retry_at = 0;
	if (up->up_tls != NULL)
		tls_upstream_forget(up->up_tls);
	prewarm(up, now);
}

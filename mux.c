/*
 * The multiplexer: every client query becomes a pending query (pq) from a
 * fixed pool, gets an upstream ID from the CSPRNG that is unique on its
 * connection, and is pipelined over a small pool of persistent TCP or TLS
 * connections per upstream.  Replies are matched on ID and question and
 * handed back with the client's own ID.
 *
 * A pq is always on exactly one of four lists through pq_link: the free
 * list, the wait queue (no connection yet), the list of the connection
 * it was written to, or the followers of an identical query in flight
 * whose answer it will share.  While in use it is also on the deadline
 * list, which is in expiry order because every query gets the same
 * timeout: one ev_timer on its head serves them all (ev.pod, "Be smart
 * about timeouts").  The stale list works the same way for queries that
 * a stale cache entry may answer after STALE_WAIT_MS.
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
#define EDE_OTHER	0
/* Sends of one query before a connection loss is blamed on the query. */
#define PQ_MAX_SENDS	3

/* A query on its way upstream; lives from mux_query to its answer. */
struct pq {
	TAILQ_ENTRY(pq)	 pq_link;
	TAILQ_ENTRY(pq)	 pq_dlink;	/* deadline list, while in use */
	struct conn	*pq_conn;	/* NULL unless written to a conn */
	int64_t		 pq_deadline;
	int64_t		 pq_sent;
	uint32_t	 pq_reads;	/* its conn's c_reads when written */
	int32_t		 pq_hnext;	/* next pq index in its ID bucket */
	uint16_t	 pq_upid;
	uint16_t	 pq_len;
	uint8_t		 pq_flags;	/* MUXQ_* */
	uint8_t		 pq_sends;	/* times written to a connection */
	uint8_t		 pq_keyed;	/* a leader, in the key table */
	uint8_t		 pq_on_stale;	/* on the stale list */
	struct pq	*pq_leader;	/* a follower's leader */
	TAILQ_HEAD(, pq) pq_followers;	/* a leader's followers */
	int32_t		 pq_knext;	/* next leader in its key bucket */
	uint32_t	 pq_khash;
	TAILQ_ENTRY(pq)	 pq_slink;
	int64_t		 pq_stale_at;
	struct client_ref pq_client;	/* CLIENT_NONE: nobody waits */
	struct dns_qinfo pq_qi;
	uint8_t		 pq_query[QUERY_MAX];	/* with the client's ID */
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
	size_t		 c_tlslen;	/* length of a TLS write to repeat */
	uint32_t	 c_reads;	/* successful reads, to spot silence */
	int		 c_dirty;
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
	struct pqlist	 stale;
	int32_t		*keys;		/* leaders by question */
	uint32_t	 kmask;
	uint32_t	 kseed;
	ev_timer	 deadline_timer;
	ev_timer	 stale_timer;
	ev_prepare	 flush_prep;
	TAILQ_HEAD(, conn) dirty;
	uint16_t	 ids[256];
	int		 nids;
	int64_t		 boot_offset;
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
static void	 conn_input(struct conn *, int64_t);
static int	 conn_frames(struct conn *, int64_t);
static int	 conn_reply(struct conn *, uint8_t *, size_t, int64_t);
static void	 conn_flush(struct conn *);
static void	 conn_idle_check(struct conn *);
static int	 conn_read(struct conn *, uint8_t *, size_t);
static int	 conn_write(struct conn *, const uint8_t *, size_t);
static void	 conn_read_cb(struct ev_loop *, ev_io *, int);
static void	 conn_write_cb(struct ev_loop *, ev_io *, int);
static void	 conn_timer_cb(struct ev_loop *, ev_timer *, int);
static void	 upstream_failed(struct upstream *, const char *, int64_t);
static void	 pq_init(struct pq *, const struct client_ref *,
		    const uint8_t *, size_t, const struct dns_qinfo *, int,
		    int64_t);
static void	 pq_send(struct pq *, struct conn *, int64_t);
static void	 pq_detach(struct pq *);
static void	 pq_fail(struct pq *, uint16_t, const char *);
static void	 pq_deliver(struct pq *, const struct centry *, uint8_t *,
		    size_t);
static struct pq *key_find(const uint8_t *, const struct dns_qinfo *,
		    uint32_t);
static void	 timer_arm(ev_timer *, int64_t);
static void	 stale_cb(struct ev_loop *, ev_timer *, int);
static void	 fail_client(const struct client_ref *, const uint8_t *,
		    const struct dns_qinfo *, int, uint16_t, const char *);
static struct pq *pq_alloc(void);
static void	 pq_free(struct pq *);
static struct pq *hash_find(struct conn *, uint16_t);
static uint16_t	 new_id(struct conn *);
static void	 fail_waiting(uint16_t, const char *);
static void	 servfail(const struct client_ref *, const uint8_t *,
		    const struct dns_qinfo *, uint16_t, const char *);
static void	 deadline_cb(struct ev_loop *, ev_timer *, int);
static void	 flush_cb(struct ev_loop *, ev_prepare *, int);
static void	 check_suspend(int64_t, int64_t);
static int64_t	 boottime_ms(void);

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
		    (const uint8_t (*)[32])uc->uc_pins, uc->uc_npins);
	up->up_conns = calloc((size_t)cf->cf_connections, sizeof(struct conn));
	if (up->up_conns == NULL)
		fatal(EXIT_SETUP, "%s", __func__);
	for (i = 0; i < cf->cf_connections; i++) {
		struct conn *c = &up->up_conns[i];

		c->c_up = up;
		c->c_idx = i;
		c->c_fd = -1;
		TAILQ_INIT(&c->c_pqs);
		c->c_outcap = (size_t)cf->cf_max_inflight * (QUERY_MAX + 2);
		c->c_in = malloc(CONN_INCAP);
		c->c_out = malloc(c->c_outcap);
		c->c_hash = chain_buckets(mux.hmask);
		if (c->c_in == NULL || c->c_out == NULL)
			fatal(EXIT_SETUP, "%s", __func__);
		ev_init(&c->c_rio, conn_read_cb);
		ev_init(&c->c_wio, conn_write_cb);
		ev_init(&c->c_timer, conn_timer_cb);
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
	if ((mux.pool = calloc((size_t)mux.npool, sizeof(struct pq))) == NULL)
		fatal(EXIT_SETUP, "%s", __func__);
	TAILQ_INIT(&mux.free);
	TAILQ_INIT(&mux.waitq);
	TAILQ_INIT(&mux.deadlines);
	TAILQ_INIT(&mux.stale);
	TAILQ_INIT(&mux.dirty);
	mux.kmask = chain_mask((uint32_t)mux.npool);
	mux.keys = chain_buckets(mux.kmask);
	tls_random(&mux.kseed, sizeof(mux.kseed));
	mux.nfree = mux.npool;
	for (i = 0; i < mux.nup; i++)
		upstream_init(&mux.ups[i], &cf->cf_up[i], i);
	ev_init(&mux.deadline_timer, deadline_cb);
	ev_init(&mux.stale_timer, stale_cb);
	ev_prepare_init(&mux.flush_prep, flush_cb);
	ev_prepare_start(loop, &mux.flush_prep);
	ev_unref(loop);		/* the flush watcher alone keeps nothing alive */
	mux.boot_offset = boottime_ms() - now_ms();
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
	ev_timer_stop(mux.loop, &mux.stale_timer);
	ev_ref(mux.loop);
	ev_prepare_stop(mux.loop, &mux.flush_prep);
	free(mux.pool);
	free(mux.keys);
	memset(&mux, 0, sizeof(mux));
}

int
mux_inflight(void)
{
	return mux.npool - mux.nfree;
}

/*
 * Takes a client query.  With MUXQ_COALESCE or MUXQ_BACKGROUND it joins
 * an identical query already in flight instead of going upstream again;
 * a background refresh that finds one has nothing left to do.
 */
void
mux_query(const struct client_ref *cr, const uint8_t *q, size_t len,
    const struct dns_qinfo *qi, int flags)
{
	int64_t		 now = now_ms();
	struct pq	*pq, *leader = NULL;
	uint32_t	 h = 0;

	check_suspend(now, boottime_ms());
	if (flags & (MUXQ_COALESCE | MUXQ_BACKGROUND)) {
		h = dns_query_hash(q, qi, mux.kseed);
		leader = key_find(q, qi, h);
		if (leader != NULL && (flags & MUXQ_BACKGROUND))
			return;
	}
	if ((pq = pq_alloc()) == NULL) {
		if (flags & MUXQ_BACKGROUND)
			return;
		stats.st_overload++;
		log_ratelimited(&mux.overload_warned, "%d queries pending: "
		    "answering SERVFAIL until some complete", mux.npool);
		fail_client(cr, q, qi, flags, EDE_OTHER,
		    "too many queries in flight");
		return;
	}
	pq_init(pq, cr, q, len, qi, flags, now);
	if (leader != NULL) {
		pq->pq_leader = leader;
		TAILQ_INSERT_TAIL(&leader->pq_followers, pq, pq_link);
		return;
	}
	if (flags & (MUXQ_COALESCE | MUXQ_BACKGROUND)) {
		pq->pq_khash = h;
		CHAIN_INSERT(mux.keys, mux.kmask, h, mux.pool, pq_knext,
		    PQ_INDEX(pq));
		pq->pq_keyed = 1;
	}
	if (flags & MUXQ_BACKGROUND)
		stats.st_prefetches++;
	TAILQ_INSERT_TAIL(&mux.waitq, pq, pq_link);
	mux.nwait++;
	dispatch(now);
}

/* Fills a fresh pq and puts it on the deadline (and stale) list. */
static void
pq_init(struct pq *pq, const struct client_ref *cr, const uint8_t *q,
    size_t len, const struct dns_qinfo *qi, int flags, int64_t now)
{
	pq->pq_client = *cr;
	pq->pq_qi = *qi;
	pq->pq_len = (uint16_t)len;
	memcpy(pq->pq_query, q, len);
	pq->pq_conn = NULL;
	pq->pq_leader = NULL;
	pq->pq_keyed = 0;
	pq->pq_flags = (uint8_t)flags;
	pq->pq_sends = 0;
	TAILQ_INIT(&pq->pq_followers);
	pq->pq_deadline = now + mux.cf->cf_timeout_ms;
	if (TAILQ_EMPTY(&mux.deadlines))
		timer_arm(&mux.deadline_timer, pq->pq_deadline);
	TAILQ_INSERT_TAIL(&mux.deadlines, pq, pq_dlink);
	pq->pq_on_stale = (flags & MUXQ_STALE) != 0;
	if (pq->pq_on_stale) {
		pq->pq_stale_at = now + STALE_WAIT_MS;
		if (TAILQ_EMPTY(&mux.stale))
			timer_arm(&mux.stale_timer, pq->pq_stale_at);
		TAILQ_INSERT_TAIL(&mux.stale, pq, pq_slink);
	}
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
			fail_waiting(EDE_NETWORK_ERROR,
			    "no upstream reachable");
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
		    c->c_outcap - c->c_outlen < QUERY_MAX + 2)
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
	c->c_inlen = c->c_outoff = c->c_outlen = c->c_tlslen = 0;
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
	ev_io_stop(mux.loop, &c->c_wio);
	ev_io_start(mux.loop, &c->c_rio);
	ev_timer_stop(mux.loop, &c->c_timer);
	if (up->up_fails > 0)
		log_info("%s: reachable again", up->up_label);
	up->up_fails = 0;
	up->up_backoff_ms = 0;
	log_debug("%s c%d: ready%s%s", up->up_label, c->c_idx,
	    c->c_tls ? " over " : "", c->c_tls ? tls_version(c->c_tls) : "");
	dispatch(now);
	conn_idle_check(c);
}

/*
 * The one teardown of a connection: stops its watchers, says goodbye
 * over TLS when the session was up, closes the socket, and puts its
 * queries back at the head of the wait queue in their original order.
 * A query that went down with PQ_MAX_SENDS connections is likely what
 * kills them: it fails rather than take another one along.  The caller
 * decides whether to dispatch the rest.
 */
static void
conn_close(struct conn *c, const char *why)
{
	struct pq	*pq, *next;
	int		 n = c->c_inflight;

	log_debug("%s c%d: closed: %s", c->c_up->up_label, c->c_idx, why);
	ev_io_stop(mux.loop, &c->c_rio);
	ev_io_stop(mux.loop, &c->c_wio);
	ev_timer_stop(mux.loop, &c->c_timer);
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
		TAILQ_INSERT_HEAD(&mux.waitq, pq, pq_link);
		mux.nwait++;
	}
	c->c_inflight = 0;
	chain_clear(c->c_hash, mux.hmask);
	for (pq = TAILQ_FIRST(&mux.waitq); pq != NULL && n-- > 0; pq = next) {
		next = TAILQ_NEXT(pq, pq_link);
		if (pq->pq_sends >= PQ_MAX_SENDS)
			pq_fail(pq, EDE_NETWORK_ERROR,
			    "upstream connections failed with this query");
	}
}

/* A dial or handshake that failed: the upstream backs off. */
static void
conn_failed(struct conn *c, const char *why, int64_t now)
{
	struct upstream	*up = c->c_up;

	conn_close(c, why);
	upstream_failed(up, why, now);
	dispatch(now);
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
	tls_random(&jitter, sizeof(jitter));
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
	if (c->c_state == CONN_HANDSHAKE)
		conn_handshake(c, now);
	else if (c->c_state == CONN_READY)
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
	else if (c->c_state == CONN_READY && c->c_inflight == 0)
		conn_close(c, "idle");
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
			continue;
		}
		if (n == IO_WANT_READ)
			break;
		if (n == IO_WANT_WRITE) {
			ev_io_start(mux.loop, &c->c_wio);
			break;
		}
		/* A close between queries is normal: redial on demand. */
		conn_close(c, n == 0 ? "closed by server" : "read failed");
		dispatch(now);
		return;
	}
	dispatch(now);
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
	const struct centry *e;
	struct pq	*pq, *f;
	int64_t		 rtt;

	if (len < DNS_HDRLEN || (msg[2] & F_QR) == 0) {
		stats.st_bad_replies++;
		log_ratelimited(&up->up_warned, "%s: not a DNS response, "
		    "closing the connection", up->up_label);
		conn_close(c, "garbage from upstream");
		dispatch(now);
		return -1;
	}
	pq = hash_find(c, dns_get16(msg));
	if (pq == NULL || !dns_reply_matches(msg, len, pq->pq_query,
	    pq->pq_qi.qi_qend)) {
		stats.st_bad_replies++;
		log_debug("%s c%d: dropped a reply matching no query",
		    up->up_label, c->c_idx);
		return 0;
	}
	rtt = now - pq->pq_sent;
	up->up_rtt8 += rtt - up->up_rtt8 / 8;
	e = cache_store(pq->pq_query, &pq->pq_qi, msg, len);
	pq_detach(pq);
	pq_deliver(pq, e, msg, len);
	while ((f = TAILQ_FIRST(&pq->pq_followers)) != NULL) {
		pq_detach(f);
		pq_deliver(f, e, msg, len);
		pq_free(f);
	}
	pq_free(pq);
	return 0;
}

/* Starts the idle timer once nothing is in flight. */
static void
conn_idle_check(struct conn *c)
{
	if (c->c_state != CONN_READY || c->c_inflight > 0)
		return;
	c->c_timer.repeat = mux.cf->cf_idle_timeout_s;
	ev_timer_again(mux.loop, &c->c_timer);
}

/*
 * Writes what is queued.  A TLS write that wanted to wait must be
 * repeated with the same length, so that length is remembered.
 */
static void
conn_flush(struct conn *c)
{
	size_t	 len;
	int	 n;

	while (c->c_outlen > 0) {
		len = c->c_tlslen;
		if (len == 0)
			len = c->c_tls && c->c_outlen > TLS_RECORD ?
			    TLS_RECORD : c->c_outlen;
		n = conn_write(c, c->c_out + c->c_outoff, len);
		if (n > 0) {
			c->c_tlslen = 0;
			c->c_outoff += (size_t)n;
			c->c_outlen -= (size_t)n;
			continue;
		}
		if (n == IO_WANT_WRITE || n == IO_WANT_READ) {
			c->c_tlslen = c->c_tls ? len : 0;
			ev_io_start(mux.loop, &c->c_wio);
			return;
		}
		conn_close(c, "write failed");
		dispatch(now_ms());
		return;
	}
	c->c_outoff = 0;
	ev_io_stop(mux.loop, &c->c_wio);
}

static int
conn_read(struct conn *c, uint8_t *buf, size_t len)
{
	ssize_t	 n;

	if (c->c_tls != NULL)
		return tls_read(c->c_tls, buf, len);
	n = recv(c->c_fd, buf, len, 0);
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

/* Writes every dirty connection once per loop iteration: one record. */
static void
flush_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
	struct conn	*c;

	(void)loop;
	(void)w;
	(void)revents;
	while ((c = TAILQ_FIRST(&mux.dirty)) != NULL) {
		TAILQ_REMOVE(&mux.dirty, c, c_dirtylink);
		c->c_dirty = 0;
		conn_flush(c);
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
	pq->pq_sends++;
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
	if (!c->c_dirty) {
		c->c_dirty = 1;
		TAILQ_INSERT_TAIL(&mux.dirty, c, c_dirtylink);
	}
}

/* Takes a pq off its connection or the wait queue, and the deadlines. */
static void
pq_detach(struct pq *pq)
{
	struct conn	*c = pq->pq_conn;

	if (pq->pq_leader != NULL) {
		TAILQ_REMOVE(&pq->pq_leader->pq_followers, pq, pq_link);
		pq->pq_leader = NULL;
	} else if (c != NULL) {
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
	if (pq->pq_on_stale) {
		TAILQ_REMOVE(&mux.stale, pq, pq_slink);
		pq->pq_on_stale = 0;
	}
	if (pq->pq_keyed) {
		CHAIN_UNLINK(mux.keys, mux.kmask, pq->pq_khash, mux.pool,
		    pq_knext, PQ_INDEX(pq));
		pq->pq_keyed = 0;
	}
}

/*
 * Hands an answer to this pq's client: from the cache entry e made of
 * it, if any, else the upstream bytes with the client's own ID, case and
 * RD.  A SERVFAIL or REFUSED from upstream yields to a stale answer
 * where one may stand in (RFC 8767).
 */
static void
pq_deliver(struct pq *pq, const struct centry *e, uint8_t *msg, size_t len)
{
	int	 rcode = msg[3] & 0x0f;

	if (pq->pq_client.cr_kind == CLIENT_NONE)
		return;
	if (e != NULL) {
		cache_answer(e, &pq->pq_client, pq->pq_query, &pq->pq_qi);
		return;
	}
	if ((pq->pq_flags & MUXQ_STALE) && (rcode == RCODE_SERVFAIL ||
	    rcode == RCODE_REFUSED) &&
	    cache_stale(&pq->pq_client, pq->pq_query, &pq->pq_qi))
		return;
	memcpy(msg, pq->pq_query, 2);
	memcpy(msg + DNS_HDRLEN, pq->pq_query + DNS_HDRLEN,
	    pq->pq_qi.qi_qend - DNS_HDRLEN);
	msg[2] = (uint8_t)((msg[2] & ~F_RD) | (pq->pq_query[2] & F_RD));
	stats.st_answers++;
	client_deliver(&pq->pq_client, msg, len, &pq->pq_qi);
}

static struct pq *
key_find(const uint8_t *q, const struct dns_qinfo *qi, uint32_t h)
{
	struct pq	*pq;
	int32_t		 i;

	for (i = mux.keys[h & mux.kmask]; i >= 0; i = pq->pq_knext) {
		pq = &mux.pool[i];
		if (pq->pq_khash == h &&
		    dns_query_same(pq->pq_query, &pq->pq_qi, q, qi))
			return pq;
	}
	return NULL;
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

/* No answer came: a stale one if allowed, else SERVFAIL, to all sharing it. */
static void
pq_fail(struct pq *pq, uint16_t ede, const char *text)
{
	struct pq	*f;

	while ((f = TAILQ_FIRST(&pq->pq_followers)) != NULL)
		pq_fail(f, ede, text);
	pq_detach(pq);
	fail_client(&pq->pq_client, pq->pq_query, &pq->pq_qi, pq->pq_flags,
	    ede, text);
	pq_free(pq);
}

static void
fail_client(const struct client_ref *cr, const uint8_t *q,
    const struct dns_qinfo *qi, int flags, uint16_t ede, const char *text)
{
	if (cr->cr_kind == CLIENT_NONE)
		return;
	if ((flags & MUXQ_STALE) && cache_stale(cr, q, qi))
		return;
	servfail(cr, q, qi, ede, text);
}

static void
fail_waiting(uint16_t ede, const char *text)
{
	struct pq	*pq;

	while ((pq = TAILQ_FIRST(&mux.waitq)) != NULL)
		pq_fail(pq, ede, text);
}

static void
servfail(const struct client_ref *cr, const uint8_t *q,
    const struct dns_qinfo *qi, uint16_t ede, const char *text)
{
	uint8_t	 buf[QUERY_MAX + 128];
	size_t	 len;

	stats.st_servfails++;
	len = dns_servfail(buf, sizeof(buf), q, qi, ede, text);
	if (len > 0)
		client_deliver(cr, buf, len, qi);
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
			tls_random(mux.ids, sizeof(mux.ids));
			mux.nids = sizeof(mux.ids) / sizeof(mux.ids[0]);
		}
		id = mux.ids[--mux.nids];
	} while (hash_find(c, id) != NULL);
	return id;
}

static void
timer_arm(ev_timer *t, int64_t when)
{
	double	 after = (double)(when - now_ms()) / 1000.0;

	t->repeat = after > 0.001 ? after : 0.001;
	ev_timer_again(mux.loop, t);
}

/*
 * RFC 8767: a refresh that takes too long is answered from the stale
 * entry; the query stays in flight to refresh the cache for later.
 */
static void
stale_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct pq	*pq;
	int64_t		 now = now_ms();

	(void)loop;
	(void)w;
	(void)revents;
	while ((pq = TAILQ_FIRST(&mux.stale)) != NULL &&
	    pq->pq_stale_at <= now) {
		TAILQ_REMOVE(&mux.stale, pq, pq_slink);
		pq->pq_on_stale = 0;
		if (pq->pq_client.cr_kind == CLIENT_NONE ||
		    !cache_stale(&pq->pq_client, pq->pq_query, &pq->pq_qi))
			continue;
		pq->pq_client.cr_kind = CLIENT_NONE;
		if (pq->pq_leader != NULL) {
			pq_detach(pq);
			pq_free(pq);
		}
	}
	if (pq != NULL)
		timer_arm(&mux.stale_timer, pq->pq_stale_at);
	else
		ev_timer_stop(mux.loop, &mux.stale_timer);
}

/*
 * SERVFAILs what reached its deadline.  A connection that read nothing
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
		pq_fail(pq, EDE_NO_REACHABLE_AUTHORITY,
		    "upstream did not answer in time");
		if (silent) {
			log_info("%s c%d: silent past a query deadline, "
			    "replacing it", c->c_up->up_label, c->c_idx);
			conn_close(c, "silent");
		}
	}
	if (pq != NULL)
		timer_arm(&mux.deadline_timer, pq->pq_deadline);
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
	int	 i, j;

	if (boot - now - mux.boot_offset < SUSPEND_MS)
		return;
	mux.boot_offset = boot - now;
	log_info("resumed from suspend: reconnecting to upstreams");
	for (i = 0; i < mux.nup; i++) {
		struct upstream *up = &mux.ups[i];

		for (j = 0; j < mux.cf->cf_connections; j++)
			if (up->up_conns[j].c_state != CONN_IDLE)
				conn_close(&up->up_conns[j], "suspend");
		up->up_fails = 0;
		up->up_backoff_ms = 0;
		up->up_retry_at = 0;
	}
}

static int64_t
boottime_ms(void)
{
	struct timespec	 ts;

	clock_gettime(CLOCK_BOOTTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * The upstream pool: it owns the upstreams and their connection slots,
 * chooses where each query goes, judges upstreams' health, keeps the
 * deadlines and the wait queue, requeues what a closed connection hands
 * back, keeps --prewarm connections, and starts afresh after a network
 * change or a suspend.  One connection's I/O is conn.c's.
 *
 * Every mux_send becomes a pending query (pq) from a fixed pool, and its
 * sender is called back with it exactly once: answer, timeout, no
 * upstream reachable or repeated failure.  A pq is always on exactly one
 * of three lists through pq_link: the free list, the wait queue (no
 * connection yet), or the list of the connection it was written to.
 * While in use it is also on the deadline list, kept in expiry order;
 * one ev_timer on its head serves them all (ev.pod, "Be smart about
 * timeouts").  Deadlines almost always arrive in order, so inserting
 * from the tail costs O(1).
 *
 * Completions never run inside mux_send: a new send waits for the
 * prepare watcher, which runs before the listeners write their answers.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ev.h>

#include "conn.h"
#include "dns.h"
#include "log.h"
#include "mux.h"
#include "options.h"
#include "tls.h"
#include "util.h"

/* Failed dials back off from this, doubling, up to the maximum. */
#define BACKOFF_MIN_MS	250
#define BACKOFF_MAX_MS	30000
/* A jump of the boot clock past the monotonic one this large is a sleep. */
#define SUSPEND_MS	2000
/* With --prewarm, connections are kept while queries came this recently. */
#define PREWARM_RECENT_MS (5 * 60 * 1000)
/* Sends of one query before a connection loss is blamed on the query. */
#define PQ_MAX_SENDS	3

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
	int64_t		 boot_offset;
	int64_t		 last_active;	/* a client's query, for --prewarm */
	int64_t		 overload_warned;
} mux;

static void	 dispatch(int64_t);
static struct upstream *pick_upstream(int64_t);
static struct conn *pick_conn(struct upstream *);
static int	 up_healthy(struct upstream *);
static int	 up_usable(struct upstream *, int64_t);
static int	 need_dial(struct upstream *);
static int	 slow_dial(struct upstream *);
static int	 dial(struct upstream *, int64_t);
static void	 upstream_failed(struct upstream *, const char *, int64_t);
static void	 upstream_reset(struct upstream *, const char *, int64_t);
static void	 pool_close(struct conn *, const char *, int64_t);
static void	 requeue(struct pqlist *, int64_t);
static void	 on_ready(struct conn *, int64_t);
static void	 on_reply(struct conn *, struct pq *, uint8_t *, size_t,
		    int64_t);
static void	 on_closed(struct conn *, enum conn_end, const char *,
		    struct pqlist *, int64_t);
static void	 on_slow(struct conn *, int64_t);
static int	 keep_warm(const struct conn *, int64_t);
static void	 prewarm(struct upstream *, int64_t);
static int	 warm_wanted(int64_t);
static void	 warm_later(int64_t, int64_t);
static void	 warm_cb(struct ev_loop *, ev_timer *, int);
static void	 deadline_insert(struct pq *, int64_t, int64_t);
static void	 deadline_cb(struct ev_loop *, ev_timer *, int);
static void	 pq_send(struct pq *, struct conn *, int64_t);
static void	 pq_detach(struct pq *);
static void	 pq_complete(struct pq *, enum mux_status, uint8_t *, size_t,
		    int64_t);
static void	 fail_waiting(int64_t);
static void	 flush_cb(struct ev_loop *, ev_prepare *, int);
static void	 check_suspend(int64_t, int64_t);

static const struct conn_events events = {
	.ce_ready = on_ready,
	.ce_reply = on_reply,
	.ce_closed = on_closed,
	.ce_slow = on_slow,
	.ce_keep = keep_warm,
};

#define PQ_INDEX(pq)	((int32_t)((pq) - mux.pool))

/* In flight on every connection, and as many again waiting. */
int
mux_capacity(const struct config *cf)
{
	return 2 * cf->cf_nup * cf->cf_connections * cf->cf_max_inflight;
}

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
	for (i = 0; i < cf->cf_connections; i++)
		conn_init(&up->up_conns[i], up, i);
}

void
mux_init(struct ev_loop *loop, const struct config *cf)
{
	int	 i;

	mux.loop = loop;
	mux.cf = cf;
	mux.nup = cf->cf_nup;
	mux.hmask = chain_mask((uint32_t)cf->cf_max_inflight);
	mux.npool = mux_capacity(cf);
	mux.pool = xcalloc((size_t)mux.npool, sizeof(struct pq));
	TAILQ_INIT(&mux.free);
	TAILQ_INIT(&mux.waitq);
	TAILQ_INIT(&mux.deadlines);
	mux.nfree = mux.npool;
	conn_setup(loop, cf, &events, mux.pool, mux.hmask);
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
				pool_close(c, "shutting down", now_ms());
			conn_free(c);
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
mux_send(const uint8_t *msg, size_t len, int64_t deadline,
    mux_done_fn *done, void *arg, int64_t now)
{
	struct pq	*pq = NULL;
	size_t		 qend;

	if (len > sizeof(pq->pq_query) ||
	    (qend = dns_question_end(msg, len)) == 0)
		return -1;
	POOL_TAKE(pq, &mux.free, pq_link, mux.pool, mux.fresh, mux.npool);
	if (pq == NULL) {
		log_ratelimited(&mux.overload_warned, "%d queries pending "
		    "upstream: refusing more until some complete", mux.npool);
		return -1;
	}
	mux.nfree--;
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
		timer_arm(mux.loop, &mux.deadline_timer, deadline, now);
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
		if (need_dial(up) && dial(up, now) == -1)
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

/* No failed dial since the last success, and no dial stuck. */
static int
up_healthy(struct upstream *up)
{
	return up->up_fails == 0 && !slow_dial(up);
}

/*
 * Not healthy, but a query may go there now: its backoff is over (the
 * query is the probe), a connection is up, or one being dialled will
 * take it.
 */
static int
up_usable(struct upstream *up, int64_t now)
{
	return now >= up->up_retry_at || pick_conn(up) != NULL ||
	    !need_dial(up);
}

/*
 * Healthy upstreams first, then the merely usable, each by lowest
 * round-trip time.  NULL when all back off.
 */
static struct upstream *
pick_upstream(int64_t now)
{
	struct upstream	*up, *best = NULL;
	int		 i, rank, best_rank = 0;

	for (i = 0; i < mux.nup; i++) {
		up = &mux.ups[i];
		if (up_healthy(up))
			rank = 0;
		else if (up_usable(up, now))
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
		if (!conn_has_room(c))
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

/* Dials an idle slot; -1 when it failed at once and the upstream backs off. */
static int
dial(struct upstream *up, int64_t now)
{
	char	 why[80];

	if (up->up_fails > 0)	/* one probe per backoff period */
		up->up_retry_at = now + up->up_backoff_ms;
	if (conn_dial(idle_conn(up), why, sizeof(why)) == 0)
		return 0;
	upstream_failed(up, why, now);
	return -1;
}

static void
on_ready(struct conn *c, int64_t now)
{
	struct upstream	*up = c->c_up;

	if (up->up_fails > 0)
		log_info("%s: reachable again", up->up_label);
	up->up_fails = 0;
	up->up_backoff_ms = 0;
	dispatch(now);
}

/* Room on the connection again: what waits may go. */
static void
on_reply(struct conn *c, struct pq *pq, uint8_t *msg, size_t len,
    int64_t now)
{
	struct upstream	*up = c->c_up;

	up->up_rtt8 += now - pq->pq_sent - up->up_rtt8 / 8;
	pq_complete(pq, MUX_ANSWER, msg, len, now);
	dispatch(now);
}

/*
 * A connection went away by itself: its queries go elsewhere, or to its
 * replacement, which --prewarm dials even when none are waiting.  Only a
 * failed dial or handshake makes the upstream back off.
 */
static void
on_closed(struct conn *c, enum conn_end end, const char *why,
    struct pqlist *back, int64_t now)
{
	struct upstream	*up = c->c_up;

	requeue(back, now);
	if (end == CONN_END_DIAL)
		upstream_failed(up, why, now);
	dispatch(now);
	prewarm(up, now);
}

/* Halfway through a dial: let another upstream take the waiting queries. */
static void
on_slow(struct conn *c, int64_t now)
{
	(void)c;
	dispatch(now);
}

/* Closes a connection the pool gave up on, and takes its queries back. */
static void
pool_close(struct conn *c, const char *why, int64_t now)
{
	struct pqlist	 back = TAILQ_HEAD_INITIALIZER(back);

	conn_close(c, why, &back);
	requeue(&back, now);
}

/*
 * Puts a closed connection's queries back at the head of the wait queue
 * in their original order.  One that went down with PQ_MAX_SENDS
 * connections is likely what kills them: it fails rather than take
 * another one along.  The caller decides whether to dispatch the rest.
 */
static void
requeue(struct pqlist *back, int64_t now)
{
	struct pq	*pq, *next;
	int		 n = 0;

	while ((pq = TAILQ_LAST(back, pqlist)) != NULL) {
		TAILQ_REMOVE(back, pq, pq_link);
		TAILQ_INSERT_HEAD(&mux.waitq, pq, pq_link);
		mux.nwait++;
		n++;
	}
	for (pq = TAILQ_FIRST(&mux.waitq); pq != NULL && n-- > 0; pq = next) {
		next = TAILQ_NEXT(pq, pq_link);
		if (pq->pq_sends >= PQ_MAX_SENDS)
			pq_complete(pq, MUX_FAILED, NULL, 0, now);
	}
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
		(void)dial(up, now);
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
	timer_arm(mux.loop, &mux.warm_timer, at, now);
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
 * Once per loop iteration: new sends go out, and every connection they
 * went to is written once, so queries that arrived together share one
 * record.
 */
static void
flush_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
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
	conn_flush_dirty();
}

static void
pq_send(struct pq *pq, struct conn *c, int64_t now)
{
	TAILQ_REMOVE(&mux.waitq, pq, pq_link);
	mux.nwait--;
	conn_send(c, pq, now);
}

/* Takes a pq off its connection or the wait queue, and the deadlines. */
static void
pq_detach(struct pq *pq)
{
	if (pq->pq_conn != NULL)
		conn_unlink(pq->pq_conn, pq);
	else {
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
	TAILQ_INSERT_HEAD(&mux.free, pq, pq_link);
	mux.nfree++;
	done(arg, status, msg, len, now);
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
			pool_close(c, "silent", now);
			dispatch(now);
			prewarm(c->c_up, now);
		}
	}
	if ((pq = TAILQ_FIRST(&mux.deadlines)) != NULL)
		timer_arm(mux.loop, &mux.deadline_timer, pq->pq_deadline, now);
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
	dispatch(now);
}

int
mux_conn_local(int up, int slot, union sockaddr_any *sa)
{
	if (up < 0 || up >= mux.nup || slot < 0 ||
	    slot >= mux.cf->cf_connections)
		return -1;
	return conn_local(&mux.ups[up].up_conns[slot], sa);
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
			pool_close(&up->up_conns[j], why, now);
	up->up_fails = 0;
	up->up_backoff_ms = 0;
	up->up_retry_at = 0;
	if (up->up_tls != NULL)
		tls_upstream_forget(up->up_tls);
	prewarm(up, now);
}

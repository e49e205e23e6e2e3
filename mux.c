/*
 * The upstream pool: what becomes of each query sent upstream (its
 * copies, their timeouts, the deadline, the wait and hedge queues, what
 * a closed connection hands back), and starting afresh after a network
 * change or a suspend.  Choosing among upstreams and their connections
 * and keeping them warm is upstream.c's, judging them health.c's, one
 * connection's I/O conn.c's.
 *
 * Every mux_send becomes a pending query (pq) from a fixed pool, and its
 * sender is called back with it exactly once: answer, timeout, no
 * upstream reachable, repeated failure, or every upstream refused.  A
 * query goes out as an attempt on one connection; when that attempt has
 * no answer by its attempt timeout (health.c), a second copy goes to
 * another upstream, or another connection, and the first answer wins.
 * REFUSED, SERVFAIL, NOTIMP and FORMERR send it on to an upstream that
 * has not said so, while one is left.  A pq outlives its callback while
 * a copy is still out, so that the late answer still tells how that
 * upstream is doing; at its deadline every copy is given up.
 *
 * Deadlines: one list in expiry order and one ev_timer on its head
 * (ev.pod, "Be smart about timeouts"); they almost always arrive in
 * order, so inserting from the tail costs O(1).  Attempt timeouts have a
 * list and a timer of their own, kept the same way.
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
#include "dnsfwd.h"
#include "health.h"
#include "log.h"
#include "mux.h"
#include "options.h"
#include "upstream.h"
#include "util.h"

/* A jump of the boot clock past the monotonic one this large is a sleep. */
#define SUSPEND_MS	2000
/* Copies of one query lost with their connection before it is blamed. */
#define PQ_MAX_SENDS	3
/*
 * The hedge budget, a token bucket: each query sent earns 1/HEDGE_EVERY
 * of a hedge, and HEDGE_BURST may be saved, so a path that is merely
 * slow costs at most one query in HEDGE_EVERY more, while a lost query
 * now and then is always sent again.  A hedge whose answer came first
 * was no waste, and earns its token back: on a lossy path, every lost
 * query is sent again, however many there are.
 */
#define HEDGE_EVERY	20
#define HEDGE_BURST	10

/* Which list a pq is on through pq_link. */
enum { PQ_ON_NONE, PQ_ON_FREE, PQ_ON_WAIT, PQ_ON_HEDGE };
/* Why an attempt was sent. */
enum { ATT_FIRST, ATT_HEDGE, ATT_PAID, ATT_PROBE };

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
	struct pqlist	 waitq;		/* no attempt yet: any upstream */
	struct pqlist	 hedgeq;	/* to go where no copy went */
	struct pqlist	 deadlines;
	struct attlist	 atimeouts;	/* attempts by attempt timeout */
	int		 kick;		/* sends wait for dispatch */
	ev_timer	 deadline_timer;
	ev_timer	 att_timer;
	int64_t		 deadline_looked; /* timer_stalled */
	int64_t		 att_looked;
	ev_prepare	 flush_prep;
	int		 hedge_tokens;	/* in 1/HEDGE_EVERY of a hedge */
	int64_t		 boot_offset;
	int64_t		 overload_warned;
} mux;

static void	 dispatch(int64_t);
static void	 hedge(struct pq *, int64_t);
static int	 failover(const struct upstream *, const struct upstream *);
static void	 probe(struct pq *, const struct upstream *, int64_t);
static struct upstream *pick_upstream(int64_t, uint32_t);
static void	 upstream_reset(struct upstream *, const char *, int64_t);
static void	 pool_close(struct conn *, const char *, int64_t);
static void	 take_back(struct attlist *, int, int64_t);
static void	 on_ready(struct conn *, int64_t);
static void	 on_reply(struct conn *, struct att *, uint8_t *, size_t,
		    int64_t);
static void	 on_closed(struct conn *, enum conn_end, const char *,
		    struct attlist *, int64_t);
static void	 on_slow(struct conn *, int64_t);
static void	 refused(struct pq *, const struct upstream *, uint8_t *,
		    size_t, int64_t);
static void	 attempt(struct pq *, struct conn *, int, int64_t);
static void	 hedge_refund(void);
static void	 att_end(struct att *);
static void	 att_timeout_insert(struct att *, int64_t, int64_t);
static void	 att_timer_cb(struct ev_loop *, ev_timer *, int);
static void	 att_timed_out(struct att *, int64_t);
static void	 send_on(struct pq *);
static void	 fail_over(struct upstream *, int64_t);
static int	 pq_live(const struct pq *);
static void	 pq_enqueue(struct pq *, int, int);
static void	 pq_unqueue(struct pq *);
static void	 pq_release(struct pq *);
static void	 pq_give_up(struct pq *, int64_t);
static void	 pq_complete(struct pq *, enum mux_status, uint8_t *, size_t,
		    int64_t);
static void	 deadline_insert(struct pq *, int64_t, int64_t);
static void	 deadline_cb(struct ev_loop *, ev_timer *, int);
static void	 fail_waiting(int64_t);
static void	 flush_cb(struct ev_loop *, ev_prepare *, int);
static void	 check_suspend(int64_t, int64_t);

static const struct conn_events events = {
	.ce_ready = on_ready,
	.ce_reply = on_reply,
	.ce_closed = on_closed,
	.ce_slow = on_slow,
	.ce_keep = upstream_keep_warm,
};

#define PQ_INDEX(pq)	((int32_t)((pq) - mux.pool))

/* In flight on every connection, and as many again waiting. */
int
mux_capacity(const struct config *cf)
{
	return 2 * cf->cf_nup * cf->cf_connections * cf->cf_max_inflight;
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
	/* Untouched until taken: the pages of a table never filled stay free. */
	mux.pool = xcalloc((size_t)mux.npool, sizeof(struct pq));
	TAILQ_INIT(&mux.free);
	TAILQ_INIT(&mux.waitq);
	TAILQ_INIT(&mux.hedgeq);
	TAILQ_INIT(&mux.deadlines);
	TAILQ_INIT(&mux.atimeouts);
	mux.nfree = mux.npool;
	mux.hedge_tokens = HEDGE_BURST * HEDGE_EVERY;
	conn_setup(loop, cf, &events, mux.pool, mux.hmask);
	for (i = 0; i < mux.nup; i++)
		upstream_init(&mux.ups[i], cf, &cf->cf_up[i], i);
	timer_init(&mux.deadline_timer, deadline_cb);
	timer_init(&mux.att_timer, att_timer_cb);
	ev_prepare_init(&mux.flush_prep, flush_cb);
	/* Before the listeners' own prepare writes out what we answered. */
	ev_set_priority(&mux.flush_prep, EV_MAXPRI);
	ev_prepare_start(loop, &mux.flush_prep);
	ev_unref(loop);		/* the flush watcher alone keeps nothing alive */
	mux.boot_offset = boottime_ms() - now_ms();
	upstream_warm_setup(loop, cf, mux.ups, mux.nup, now_ms());
	for (i = 0; i < mux.nup; i++)
		upstream_prewarm(&mux.ups[i], now_ms());
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
		}
		upstream_free(up);
	}
	ev_timer_stop(mux.loop, &mux.deadline_timer);
	ev_timer_stop(mux.loop, &mux.att_timer);
	upstream_warm_stop();
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
	struct pq	*pq;
	size_t		 qend;
	int		 k;

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
	for (k = 0; k < PQ_ATTS; k++)
		pq->pq_att[k].a_pq = pq;
	pq->pq_len = (uint16_t)len;
	pq->pq_qend = (uint16_t)qend;
	memcpy(pq->pq_query, msg, len);
	pq->pq_said = 0;
	pq->pq_sends = 0;
	pq->pq_overdue = 0;
	pq->pq_done = done;
	pq->pq_arg = arg;
	deadline_insert(pq, deadline, now);
	pq->pq_list = PQ_ON_NONE;
	pq_enqueue(pq, PQ_ON_WAIT, 0);
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

int
mux_overdue(int h)
{
	return mux.pool[h].pq_overdue;
}

/* Keeps the deadline list in order, and its timer on the head. */
static void
deadline_insert(struct pq *pq, int64_t deadline, int64_t now)
{
	pq->pq_deadline = deadline;
	TAILQ_INSERT_SORTED(&mux.deadlines, pq, pq, pqlist, pq_dlink,
	    pq_deadline);
	/* A timer armed for a later head would fire too late. */
	if (!ev_is_active(&mux.deadline_timer) ||
	    TAILQ_FIRST(&mux.deadlines) == pq)
		timer_arm(mux.loop, &mux.deadline_timer, deadline, now);
}

/*
 * Moves queued queries onto connections: the hedges, each to where no
 * copy of it went, then the waiting.  Every waiting query is alike, so
 * only the head is looked at: when it cannot go, none can.
 */
static void
dispatch(int64_t now)
{
	struct pq	*pq, *next;
	struct upstream	*up;
	struct conn	*c;

	for (pq = TAILQ_FIRST(&mux.hedgeq); pq != NULL; pq = next) {
		next = TAILQ_NEXT(pq, pq_link);
		hedge(pq, now);
	}
	while ((pq = TAILQ_FIRST(&mux.waitq)) != NULL) {
		if ((up = pick_upstream(now, 0)) == NULL) {
			fail_waiting(now);
			return;
		}
		up = upstream_explore(mux.ups, mux.nup, up, now);
		if ((c = upstream_conn(up, NULL, now)) != NULL) {
			pq_unqueue(pq);
			attempt(pq, c, ATT_FIRST, now);
			probe(pq, up, now);
			upstream_grow(up, c, now);
			continue;
		}
		if (upstream_need_dial(up, mux.nwait) &&
		    upstream_dial(up, now) == -1)
			continue;	/* that upstream now backs off */
		return;
	}
}

/*
 * Sends another copy of a query whose attempt timed out, or that an
 * upstream refused: to the best upstream that has neither a copy nor
 * said no, else on another connection of the one that has the copy (the
 * same connection would only queue it behind what holds the first).
 * It goes to a demoted upstream only when that one ranks before the one
 * with the copy (both demoted, and it heard from later), or the first
 * said no: a demoted upstream is silent or refusing, and gets its copies
 * as probes (probe()).  It waits for a dial if it must; with
 * nowhere left to go, or no hedge in the budget, the copy out is all; a
 * query with none gets what the upstreams said.
 */
static void
hedge(struct pq *pq, int64_t now)
{
	struct conn	*busy = NULL;
	struct upstream	*up;
	struct conn	*c;
	int		 k, paid;

	for (k = 0; k < PQ_ATTS; k++)
		if (pq->pq_att[k].a_conn != NULL)
			busy = pq->pq_att[k].a_conn;
	up = pick_upstream(now, pq->pq_said |
	    (busy != NULL ? upstream_bit(busy->c_up) : 0));
	if (busy != NULL && !(pq->pq_said & upstream_bit(busy->c_up)) &&
	    (up == NULL || (up->up_bad > 0 &&
	    pick_upstream(now, pq->pq_said) == busy->c_up)))
		up = busy->c_up;
	if (up == NULL) {
		pq_unqueue(pq);
		if (pq_live(pq) == 0)
			pq_complete(pq, pq->pq_said != 0 ? MUX_REFUSED :
			    MUX_UNREACHABLE, NULL, 0, now);
		return;
	}
	if ((paid = busy != NULL && !failover(busy->c_up, up)) &&
	    mux.hedge_tokens < HEDGE_EVERY) {
		pq_unqueue(pq);
		stats.st_hedges_unpaid++;
		return;
	}
	if ((c = upstream_conn(up, busy, now)) != NULL) {
		pq_unqueue(pq);
		attempt(pq, c, busy == NULL ? ATT_FIRST : paid ? ATT_PAID :
		    ATT_HEDGE, now);
	} else if (upstream_idle(up) == NULL) {
		if (busy != NULL)	/* no other connection to be had */
			pq_unqueue(pq);
	} else if (upstream_may_dial(up, now))
		(void)upstream_dial(up, now);
}

static void
hedge_refund(void)
{
	mux.hedge_tokens += HEDGE_EVERY;
	if (mux.hedge_tokens > HEDGE_BURST * HEDGE_EVERY)
		mux.hedge_tokens = HEDGE_BURST * HEDGE_EVERY;
}

/*
 * From a demoted upstream to another in good standing: failover, not a
 * hedge against a merely slow path, so it costs nothing of the budget,
 * or the queries out on an upstream that just went dark would wait for
 * their deadline once the budget's savings are spent.
 */
static int
failover(const struct upstream *from, const struct upstream *to)
{
	return from != to && from->up_bad > 0 && to->up_bad == 0;
}

/*
 * A demoted upstream whose probe is due gets a copy of a query that went
 * elsewhere: it is tried with real traffic, and no client waits on it.
 */
static void
probe(struct pq *pq, const struct upstream *chosen, int64_t now)
{
	struct upstream	*up;
	struct conn	*c;
	int		 i;

	for (i = 0; i < mux.nup; i++) {
		up = &mux.ups[i];
		if (up == chosen || !health_probe_due(up, now) ||
		    up->up_fails > 0)
			continue;
		if ((c = upstream_conn(up, NULL, now)) != NULL) {
			attempt(pq, c, ATT_PROBE, now);
			health_probed(up, now);
			return;
		}
		if (upstream_may_dial(up, now))
			(void)upstream_dial(up, now);
	}
}

/* Writes a copy of pq on c, and arms its attempt timeout. */
static void
attempt(struct pq *pq, struct conn *c, int why, int64_t now)
{
	struct att	*a = &pq->pq_att[0];

	if (a->a_conn != NULL)
		a = &pq->pq_att[1];
	a->a_probe = why == ATT_PROBE;
	a->a_hedge = why == ATT_HEDGE || why == ATT_PAID;
	a->a_paid = why == ATT_PAID;
	a->a_late = 0;
	if (a->a_paid)
		mux.hedge_tokens -= HEDGE_EVERY;
	conn_send(c, a, now);
	if (a->a_hedge) {
		c->c_up->up_n.n_hedges++;
		stats.st_hedges++;
		upstream_hedged(now);
	} else if (why == ATT_FIRST &&
	    mux.hedge_tokens < HEDGE_BURST * HEDGE_EVERY)
		mux.hedge_tokens++;
	att_timeout_insert(a, health_attempt_ms(c->c_up, pq->pq_deadline,
	    now) + now, now);
}

/* Takes an attempt off its connection and the timeouts: its slot is free. */
static void
att_end(struct att *a)
{
	if (a->a_due != 0) {
		TAILQ_REMOVE(&mux.atimeouts, a, a_tlink);
		a->a_due = 0;
	}
	if (a->a_conn != NULL)
		conn_unlink(a->a_conn, a);
}

/* An attempt timeout at or past the deadline is the deadline's to handle. */
static void
att_timeout_insert(struct att *a, int64_t due, int64_t now)
{
	if (due >= a->a_pq->pq_deadline)
		return;
	a->a_due = due;
	TAILQ_INSERT_SORTED(&mux.atimeouts, a, att, attlist, a_tlink, a_due);
	if (!ev_is_active(&mux.att_timer) || TAILQ_FIRST(&mux.atimeouts) == a)
		timer_arm(mux.loop, &mux.att_timer, due, now);
}

static void
att_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct att	*a;
	int64_t		 now = now_ms();

	(void)revents;
	a = TAILQ_FIRST(&mux.atimeouts);
	if (timer_stalled(loop, w, a != NULL ? a->a_due : now, now,
	    &mux.att_looked))
		return;
	while ((a = TAILQ_FIRST(&mux.atimeouts)) != NULL && a->a_due <= now) {
		TAILQ_REMOVE(&mux.atimeouts, a, a_tlink);
		a->a_due = 0;
		att_timed_out(a, now);
	}
	if ((a = TAILQ_FIRST(&mux.atimeouts)) != NULL)
		timer_arm(mux.loop, w, a->a_due, now);
	else
		ev_timer_stop(mux.loop, w);
	dispatch(now);
}

/*
 * No answer in the attempt's time: health.c judges the upstream, and the
 * query, while its client still waits, goes on to a second copy.  This
 * one stays out, since its answer may yet come first; a copy whose query
 * was answered meanwhile has nothing more to tell, and ends, unless it
 * is a probe: its late answer still shows the upstream is back.
 */
static void
att_timed_out(struct att *a, int64_t now)
{
	struct pq	*pq = a->a_pq;
	struct upstream	*up = a->a_conn->c_up;
	int		 was_bad = up->up_bad > 0;

	conn_suspect(a->a_conn);
	health_timed_out(up, a, upstream_retransmitted(up), now);
	a->a_late = 1;
	pq->pq_overdue = 1;
	if (pq->pq_done != NULL)
		send_on(pq);
	else if (!a->a_probe) {
		att_end(a);
		pq_release(pq);
	}
	if (!was_bad && up->up_bad > 0)
		fail_over(up, now);
}

/* A query its client still waits for gets one more copy, if it may. */
static void
send_on(struct pq *pq)
{
	if (pq->pq_done != NULL && pq->pq_list == PQ_ON_NONE &&
	    pq_live(pq) < PQ_ATTS)
		pq_enqueue(pq, PQ_ON_HEDGE, 0);
}

/*
 * An upstream just demoted by an attempt timeout (health_timed_out):
 * every query still waiting on it goes to one in good standing now, not
 * each at its own attempt timeout, since whatever silenced it caught
 * them too; a failover costs nothing of the budget (failover()).
 */
static void
fail_over(struct upstream *up, int64_t now)
{
	struct upstream	*to = pick_upstream(now, upstream_bit(up));
	struct att	*a;
	int		 j;

	if (to == NULL || !failover(up, to))
		return;
	for (j = 0; j < up->up_nconns; j++)
		TAILQ_FOREACH(a, &up->up_conns[j].c_atts, a_link)
			if (!a->a_probe)
				send_on(a->a_pq);
}

/* The best upstream not in `avoid`, NULL when none may be used. */
static struct upstream *
pick_upstream(int64_t now, uint32_t avoid)
{
	return upstream_pick(mux.ups, mux.nup, avoid, mux.nwait, now);
}

static void
on_ready(struct conn *c, int64_t now)
{
	upstream_reachable(c->c_up);
	health_path_rtt(c->c_up, conn_path_rtt(c));
	dispatch(now);
}

/*
 * The first usable answer wins; one that refuses or fails sends the
 * query on while an upstream has not said so.  Either way the upstream
 * learns from it, even when the query was answered meanwhile.
 */
static void
on_reply(struct conn *c, struct att *a, uint8_t *msg, size_t len,
    int64_t now)
{
	struct upstream	*up = c->c_up;
	struct pq	*pq = a->a_pq;
	int		 rcode = msg[3] & F_RCODE;

	health_rtt(up, a, conn_arrived(c, a, now));
	att_end(a);
	if (health_rcode_failed(up, a, rcode, now)) {
		if (pq->pq_done != NULL)
			refused(pq, up, msg, len, now);
	} else if (pq->pq_done != NULL) {
		if (a->a_hedge) {
			up->up_n.n_hedges_won++;
			stats.st_hedges_won++;
			if (a->a_paid)
				hedge_refund();
		}
		pq_complete(pq, MUX_ANSWER, msg, len, now);
	}
	pq_release(pq);
	dispatch(now);
}

/*
 * An upstream said REFUSED, SERVFAIL, NOTIMP or FORMERR: another copy may
 * still answer, an upstream that has not said so is asked, and when
 * every one has, theirs is the answer.
 */
static void
refused(struct pq *pq, const struct upstream *up, uint8_t *msg, size_t len,
    int64_t now)
{
	pq->pq_said |= upstream_bit(up);
	if (pq_live(pq) > 0 || pq->pq_list != PQ_ON_NONE)
		return;
	if (pick_upstream(now, pq->pq_said) != NULL) {
		pq_enqueue(pq, PQ_ON_HEDGE, 0);
		return;
	}
	pq_complete(pq, MUX_ANSWER, msg, len, now);
}

/*
 * A connection went away by itself: its queries go elsewhere, or to its
 * replacement, which --prewarm dials even when none are waiting.  A
 * failed dial makes the upstream back off; garbage demotes it.
 */
static void
on_closed(struct conn *c, enum conn_end end, const char *why,
    struct attlist *back, int64_t now)
{
	struct upstream	*up = c->c_up;

	take_back(back, 1, now);
	if (end == CONN_END_DIAL)
		upstream_failed(up, why, now);
	else if (end == CONN_END_GARBAGE) {
		up->up_n.n_garbage++;
		health_failed(up, NULL, why, now);
	}
	dispatch(now);
	upstream_prewarm(up, now);
}

/* Halfway through a dial: let another upstream take the waiting queries. */
static void
on_slow(struct conn *c, int64_t now)
{
	(void)c;
	dispatch(now);
}

/*
 * Closes a connection the pool gave up on (silent, a network change, a
 * suspend, shutdown): dnsfwd's own doing, so its queries carry no blame.
 */
static void
pool_close(struct conn *c, const char *why, int64_t now)
{
	struct attlist	 back = TAILQ_HEAD_INITIALIZER(back);

	conn_close(c, why, &back);
	take_back(&back, 0, now);
}

/*
 * The attempts of a closed connection: a query with no other copy out
 * goes back to the head of the wait queue, in the order it was written.
 * With blame, a copy that was written out counts against its query; one
 * that went down with PQ_MAX_SENDS connections is likely what kills
 * them, and fails rather than take another along.  The caller decides
 * whether to dispatch the rest.
 */
static void
take_back(struct attlist *back, int blame, int64_t now)
{
	struct pqlist	 again = TAILQ_HEAD_INITIALIZER(again);
	struct att	*a;
	struct pq	*pq;

	while ((a = TAILQ_FIRST(back)) != NULL) {
		TAILQ_REMOVE(back, a, a_link);
		pq = a->a_pq;
		a->a_conn = NULL;	/* conn_close emptied its ID map */
		att_end(a);
		if (blame && a->a_out)
			pq->pq_sends++;
		if (pq->pq_done == NULL) {
			pq_release(pq);
			continue;
		}
		if (pq_live(pq) > 0 || pq->pq_list != PQ_ON_NONE)
			continue;
		TAILQ_INSERT_TAIL(&again, pq, pq_link);
	}
	while ((pq = TAILQ_LAST(&again, pqlist)) != NULL) {
		TAILQ_REMOVE(&again, pq, pq_link);
		pq_enqueue(pq, PQ_ON_WAIT, 1);
		if (pq->pq_sends >= PQ_MAX_SENDS)
			pq_complete(pq, MUX_FAILED, NULL, 0, now);
	}
}

void
mux_active(int64_t now)
{
	upstream_active(now);
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

static int
pq_live(const struct pq *pq)
{
	int	 k, n = 0;

	for (k = 0; k < PQ_ATTS; k++)
		n += pq->pq_att[k].a_conn != NULL;
	return n;
}

/* Onto the wait or hedge queue; a requeued query goes first. */
static void
pq_enqueue(struct pq *pq, int list, int first)
{
	struct pqlist	*q = list == PQ_ON_WAIT ? &mux.waitq : &mux.hedgeq;

	if (first)
		TAILQ_INSERT_HEAD(q, pq, pq_link);
	else
		TAILQ_INSERT_TAIL(q, pq, pq_link);
	pq->pq_list = (uint8_t)list;
	if (list == PQ_ON_WAIT)
		mux.nwait++;
}

static void
pq_unqueue(struct pq *pq)
{
	if (pq->pq_list == PQ_ON_WAIT) {
		TAILQ_REMOVE(&mux.waitq, pq, pq_link);
		mux.nwait--;
	} else if (pq->pq_list == PQ_ON_HEDGE)
		TAILQ_REMOVE(&mux.hedgeq, pq, pq_link);
	pq->pq_list = PQ_ON_NONE;
}

/* Back to the free list once called back with no copy out. */
static void
pq_release(struct pq *pq)
{
	if (pq->pq_done != NULL || pq->pq_list != PQ_ON_NONE || pq_live(pq) > 0)
		return;
	TAILQ_REMOVE(&mux.deadlines, pq, pq_dlink);
	TAILQ_INSERT_HEAD(&mux.free, pq, pq_link);
	pq->pq_list = PQ_ON_FREE;
	mux.nfree++;
}

/*
 * The one end of a send for its sender, who hears of it after the pool
 * is done with the pq: it may send again from its callback.
 */
static void
pq_complete(struct pq *pq, enum mux_status status, uint8_t *msg,
    size_t len, int64_t now)
{
	mux_done_fn	*done = pq->pq_done;
	void		*arg = pq->pq_arg;
	struct att	*a;
	int		 k;

	pq->pq_done = NULL;
	pq_unqueue(pq);
	/*
	 * A copy already counted as timed out has nothing more to tell,
	 * unless it is a probe (a late answer shows the upstream is back) or
	 * its connection has read nothing since: the deadline decides
	 * whether that one is dead.
	 */
	for (k = 0; k < PQ_ATTS; k++) {
		a = &pq->pq_att[k];
		if (a->a_conn != NULL && a->a_late && !a->a_probe &&
		    a->a_conn->c_reads != a->a_reads)
			att_end(a);
	}
	pq_release(pq);
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
 * The deadline: the client hears, and every copy still out is given up.
 * A connection that read nothing since such a copy was written to it is
 * presumed dead (a half-open socket after a network change, an upstream
 * that stopped answering) and replaced.
 */
static void
pq_give_up(struct pq *pq, int64_t now)
{
	struct conn	*silent[PQ_ATTS];
	struct att	*a;
	int		 k, n = 0;

	/* Two copies of a query never share a connection (hedge, probe). */
	for (k = 0; k < PQ_ATTS; k++) {
		a = &pq->pq_att[k];
		if (a->a_conn == NULL)
			continue;
		if (a->a_conn->c_reads == a->a_reads)
			silent[n++] = a->a_conn;
		att_end(a);
	}
	if (pq->pq_done != NULL)
		pq_complete(pq, pq->pq_said != 0 ? MUX_REFUSED : MUX_TIMEOUT,
		    NULL, 0, now);
	else
		pq_release(pq);
	for (k = 0; k < n; k++) {
		if (silent[k]->c_state == CONN_IDLE)
			continue;
		log_info("%s c%d: silent past a query deadline, replacing it",
		    silent[k]->c_up->up_label, silent[k]->c_idx);
		pool_close(silent[k], "silent", now);
		upstream_prewarm(silent[k]->c_up, now);
	}
}

static void
deadline_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct pq	*pq;
	int64_t		 now = now_ms();

	(void)revents;
	pq = TAILQ_FIRST(&mux.deadlines);
	if (timer_stalled(loop, w, pq != NULL ? pq->pq_deadline : now, now,
	    &mux.deadline_looked))
		return;
	while ((pq = TAILQ_FIRST(&mux.deadlines)) != NULL &&
	    pq->pq_deadline <= now)
		pq_give_up(pq, now);
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
	if (up < 0 || up >= mux.nup)
		return -1;
	return upstream_local(&mux.ups[up], slot, sa);
}

void
mux_status(char *buf, size_t len, int64_t now)
{
	health_status(pick_upstream(now, 0), buf, len);
}

void
mux_log_stats(void)
{
	int	 i;

	for (i = 0; i < mux.nup; i++)
		health_log(&mux.ups[i], now_ms());
}

/* Its path changed: --prewarm dials the replacement at once. */
static void
upstream_reset(struct upstream *up, const char *why, int64_t now)
{
	int	 j;

	for (j = 0; j < up->up_nconns; j++)
		if (up->up_conns[j].c_state != CONN_IDLE)
			pool_close(&up->up_conns[j], why, now);
	upstream_forget(up);
	upstream_prewarm(up, now);
}

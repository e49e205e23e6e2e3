/*
 * One upstream and its connection slots: which upstream and connection
 * take a query, dialling with backoff, which idle connections are kept
 * (--prewarm, and a second one while second copies are sent), and
 * forgetting what was learnt when its path changes.  How well it answers
 * is health.c's to judge; where queries go is the pool's (mux.c).
 */
#include <stdio.h>
#include <stdlib.h>

#include <ev.h>

#include "conn.h"
#include "health.h"
#include "log.h"
#include "options.h"
#include "tls.h"
#include "upstream.h"
#include "util.h"

/* Failed dials back off from this, doubling, up to the maximum. */
#define BACKOFF_MIN_MS	250
#define BACKOFF_MAX_MS	30000
/*
 * An upstream in good standing but not chosen is sent one real query
 * when its round-trip time is this old: a few bad samples must not keep
 * a faster one unused for ever.
 */
#define EXPLORE_MS	2000
/*
 * Queries get a connection each, up to --connections, over paths whose
 * round trip, TCP's and not the answers' (health_path_rtt), is at least
 * this (us): Nagle holds an answer until our ACK crosses the path, and
 * on shorter paths that costs less than the handshakes.
 */
#define SPREAD_RTT_US	5000
/* ... and that has not been seen losing packets for this long (ms). */
#define SPREAD_QUIET_MS	10000
/* With --prewarm, connections are kept while queries came this recently. */
#define PREWARM_RECENT_MS (5 * 60 * 1000)

/*
 * What keeps idle connections open: --prewarm while clients ask, and a
 * second connection while second copies are sent.  Lives from
 * upstream_warm_setup to upstream_warm_stop.
 */
static struct {
	struct ev_loop	*loop;
	const struct config *cf;
	struct upstream	*ups;
	int		 nup;
	int64_t		 last_active;	/* a client's query */
	int64_t		 last_hedge;	/* a second copy sent, or 0 */
	ev_timer	 timer;		/* a failing upstream's backoff ends */
} warm;

static void	 warm_cb(struct ev_loop *, ev_timer *, int);

void
upstream_init(struct upstream *up, const struct config *cf,
    const struct upstream_cfg *uc, int idx)
{
	char	 a[64];
	int	 i;

	up->up_cfg = uc;
	up->up_idx = idx;
	up->up_nconns = cf->cf_connections;
	up->up_maxq = cf->cf_max_inflight;
	health_reset(up);
	snprintf(up->up_label, sizeof(up->up_label), "u%d %s", idx,
	    addr_str(&uc->uc_addr.sa, a, sizeof(a)));
	if (uc->uc_tls)
		up->up_tls = tls_upstream_new(uc->uc_name,
		    (const uint8_t (*)[32])uc->uc_pins, uc->uc_npins,
		    !cf->cf_no_resume);
	up->up_conns = xcalloc((size_t)up->up_nconns, sizeof(struct conn));
	for (i = 0; i < up->up_nconns; i++)
		conn_init(&up->up_conns[i], up, i);
}

void
upstream_free(struct upstream *up)
{
	int	 i;

	for (i = 0; i < up->up_nconns; i++)
		conn_free(&up->up_conns[i]);
	free(up->up_conns);
	tls_upstream_free(up->up_tls);
}

/* How queries share an upstream's connections. */
enum share { SHARE_FEWEST, SHARE_SPREAD, SHARE_FIRST };

static int	 open_conns(const struct upstream *);
static int	 sharing(const struct upstream *);

/*
 * Over a short path, spread by the queries in flight.  Over a long one,
 * an answer written while an earlier one on its connection is
 * unacknowledged waits for that ACK at a server that leaves Nagle on,
 * up to a round trip: a connection each.  But a lone segment lost on a
 * quiet connection waits for TCP's retransmission timer (200 ms at
 * least), where on a busy one the segments after it show the loss
 * within a round trip: once an attempt times out while TCP retransmits
 * on its connections, queries share the first for SPREAD_QUIET_MS, and
 * again while TCP goes on retransmitting.
 */
static enum share
share(struct upstream *up, int64_t now)
{
	if (up->up_path_rtt < SPREAD_RTT_US)
		return SHARE_FEWEST;
	if (up->up_lossy_at != 0 && now - up->up_lossy_at >= SPREAD_QUIET_MS)
		up->up_lossy_at = upstream_retransmitted(up) ? now : 0;
	return up->up_lossy_at != 0 ? SHARE_FIRST : SHARE_SPREAD;
}

/*
 * Whether the path loses packets: at an attempt timeout, and, once the
 * queries share a busy connection, where TCP recovers most losses before
 * an attempt times out, as SPREAD_QUIET_MS ends.
 */
int
upstream_retransmitted(struct upstream *up)
{
	int	 i, lost = 0;

	for (i = 0; i < up->up_nconns; i++)
		if (up->up_conns[i].c_state == CONN_READY)
			lost |= conn_retransmitted(&up->up_conns[i]);
	return lost;
}

/*
 * Spreading, one with nothing in flight first, the lowest, so that the
 * others idle out when queries are few, else the one given a query
 * longest ago, whose answers are likeliest out already.
 */
static int
before(const struct conn *c, const struct conn *best, enum share how)
{
	switch (how) {
	case SHARE_FEWEST:
		return c->c_inflight < best->c_inflight;
	case SHARE_SPREAD:
		if ((c->c_inflight == 0) != (best->c_inflight == 0))
			return c->c_inflight == 0;
		return best->c_inflight > 0 && c->c_lastq < best->c_lastq;
	default:
		return 0;
	}
}

/*
 * A stalled one last: what it holds waits for TCP's recovery, and a
 * query waiting longer than the path's round trips do shows one stalled
 * before its attempt times out.
 */
struct conn *
upstream_conn(struct upstream *up, const struct conn *not, int64_t now)
{
	struct conn	*c, *best = NULL;
	enum share	 how = share(up, now);
	int64_t		 late = health_late_ms(up);
	int		 i, stalled, best_stalled = 0;

	for (i = 0; i < up->up_nconns; i++) {
		c = &up->up_conns[i];
		if (c == not || !conn_has_room(c))
			continue;
		stalled = conn_stalled(c, late, now);
		if (best == NULL || stalled < best_stalled ||
		    (stalled == best_stalled && before(c, best, how))) {
			best = c;
			best_stalled = stalled;
		}
	}
	return best;
}

/*
 * A query went on c.  Spreading, one that had to share opens another
 * connection for those to come, and as many are dialled at once as
 * queries share: one at a time, a handshake of two round trips each, the
 * pool would take a second to grow over a long path, and the queries of
 * that second would wait on a busy connection.  Sharing the first over a
 * lossy path, a second is kept ready: a lost segment may stall the first
 * for TCP's retransmission timer, and what comes meanwhile goes on the
 * spare.
 */
void
upstream_grow(struct upstream *up, const struct conn *c, int64_t now)
{
	enum share	 how = share(up, now);
	int		 dialing;

	/* First what costs nothing: this runs for every query. */
	if (how == SHARE_FEWEST || (how == SHARE_SPREAD && c->c_inflight < 2) ||
	    upstream_idle(up) == NULL || upstream_backing_off(up, now))
		return;
	dialing = upstream_dialing(up);
	if (how == SHARE_SPREAD ? dialing < sharing(up) :
	    dialing == 0 && open_conns(up) < 2)
		(void)upstream_dial(up, now);
}

/* Queries beyond the first on each connection up. */
static int
sharing(const struct upstream *up)
{
	int	 i, n = 0;

	for (i = 0; i < up->up_nconns; i++)
		if (up->up_conns[i].c_state == CONN_READY &&
		    up->up_conns[i].c_inflight > 1)
			n += up->up_conns[i].c_inflight - 1;
	return n;
}

/* Connections up or being dialled. */
static int
open_conns(const struct upstream *up)
{
	int	 i, n = 0;

	for (i = 0; i < up->up_nconns; i++)
		n += up->up_conns[i].c_state != CONN_IDLE;
	return n;
}

struct conn *
upstream_idle(struct upstream *up)
{
	int	 i;

	for (i = 0; i < up->up_nconns; i++)
		if (up->up_conns[i].c_state == CONN_IDLE)
			return &up->up_conns[i];
	return NULL;
}

int
upstream_dialing(const struct upstream *up)
{
	int	 i, n = 0;

	for (i = 0; i < up->up_nconns; i++)
		n += up->up_conns[i].c_state == CONN_CONNECTING ||
		    up->up_conns[i].c_state == CONN_HANDSHAKE;
	return n;
}

/* A black hole, most likely, so that others go first. */
int
upstream_slow(const struct upstream *up)
{
	int	 i, slow = 0;

	for (i = 0; i < up->up_nconns; i++) {
		if (up->up_conns[i].c_state == CONN_READY)
			return 0;
		slow |= up->up_conns[i].c_slow;
	}
	return slow;
}

int
upstream_backing_off(const struct upstream *up, int64_t now)
{
	return up->up_fails > 0 && now < up->up_retry_at;
}

int
upstream_need_dial(struct upstream *up, int nwait)
{
	return upstream_idle(up) != NULL &&
	    nwait > upstream_dialing(up) * up->up_maxq;
}

/*
 * An upstream whose dials fail, but a query may go there now: its
 * backoff is over (the query is the probe), a connection is up, or one
 * being dialled will take it.
 */
static int
usable(struct upstream *up, int nwait, int64_t now)
{
	return now >= up->up_retry_at || upstream_conn(up, NULL, now) != NULL ||
	    !upstream_need_dial(up, nwait);
}

/*
 * Clearly faster: by an eighth and a millisecond.  Upstreams as fast as
 * each other within their samples' noise would otherwise take turns with
 * every answer, and a choice that holds keeps one connection busy and
 * the others idle.
 */
static int
clearly_below(int64_t us, int64_t than)
{
	return us < than - than / 8 - 1000;
}

/*
 * Of two upstreams of one rank, whether a goes before b.  Demoted or
 * unreachable, the one whose last usable answer came latest: not the
 * fastest, which may be fastest at failing (a REFUSED comes back at
 * once) or never measured (srtt 0 is no sample).  When a stall demotes
 * a healthy upstream beside a dead or refusing one, its queries must
 * not go to that one first.
 */
static int
goes_before(const struct upstream *a, const struct upstream *b, int rank)
{
	if (rank >= 2)
		return a->up_heard > b->up_heard;
	return clearly_below(a->up_srtt, b->up_srtt);
}

/* By health_rank, and of those alike goes_before, else the first. */
struct upstream *
upstream_pick(struct upstream *ups, int n, uint32_t avoid, int nwait,
    int64_t now)
{
	struct upstream	*up, *best = NULL;
	int		 i, rank, best_rank = 0, unreachable;

	for (i = 0; i < n; i++) {
		up = &ups[i];
		if (avoid & upstream_bit(up))
			continue;
		unreachable = up->up_fails > 0 || upstream_slow(up);
		if (unreachable && !usable(up, nwait, now))
			continue;
		rank = health_rank(up, unreachable);
		if (best == NULL || rank < best_rank || (rank == best_rank &&
		    goes_before(up, best, rank))) {
			best = up;
			best_rank = rank;
		}
	}
	return best;
}

/*
 * Instead of best, an upstream in good standing, connected, whose
 * round-trip time was last measured EXPLORE_MS ago; it is counted as
 * measured now, so one query at a time explores.  One whose latest
 * answer, come since the last explorer went, was clearly sooner than
 * best's average gets the next query too, and so on while its answers
 * are: an upstream that got faster (its path or its load changed)
 * moves the smoothed average an eighth of the way per sample, and with
 * one explorer per EXPLORE_MS, one measured at 150 ms that now answers
 * at once would take 16 s to win back from one at 60 ms.
 */
struct upstream *
upstream_explore(struct upstream *ups, int n, struct upstream *best,
    int64_t now)
{
	struct upstream	*up;
	int		 i, follow;

	for (i = 0; i < n; i++) {
		up = &ups[i];
		if (up == best || up->up_srtt == 0 || up->up_bad > 0)
			continue;
		follow = up->up_last_rtt >= 0 &&
		    clearly_below(up->up_last_rtt, best->up_srtt);
		if ((!follow && now - up->up_sampled < EXPLORE_MS) ||
		    upstream_conn(up, NULL, now) == NULL)
			continue;
		up->up_sampled = now;
		up->up_last_rtt = -1;
		return up;
	}
	return best;
}

int
upstream_may_dial(struct upstream *up, int64_t now)
{
	return upstream_idle(up) != NULL && upstream_dialing(up) == 0 &&
	    !upstream_backing_off(up, now);
}

int
upstream_dial(struct upstream *up, int64_t now)
{
	char	 why[80];

	if (up->up_fails > 0)	/* one probe per backoff period */
		up->up_retry_at = now + up->up_backoff_ms;
	if (conn_dial(upstream_idle(up), why, sizeof(why)) == 0)
		return 0;
	upstream_failed(up, why, now);
	return -1;
}

void
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
upstream_reachable(struct upstream *up)
{
	if (up->up_fails > 0)
		log_info("%s: reachable again", up->up_label);
	up->up_fails = 0;
	up->up_backoff_ms = 0;
}

void
upstream_warm_setup(struct ev_loop *loop, const struct config *cf,
    struct upstream *ups, int nup, int64_t now)
{
	warm.loop = loop;
	warm.cf = cf;
	warm.ups = ups;
	warm.nup = nup;
	warm.last_active = now;
	warm.last_hedge = 0;
	timer_init(&warm.timer, warm_cb);
}

void
upstream_warm_stop(void)
{
	if (warm.loop != NULL)
		ev_timer_stop(warm.loop, &warm.timer);
	warm.loop = NULL;
}

void
upstream_active(int64_t now)
{
	warm.last_active = now;
}

void
upstream_hedged(int64_t now)
{
	warm.last_hedge = now;
}

/* --prewarm, and a client asked within PREWARM_RECENT_MS. */
static int
warm_wanted(int64_t now)
{
	return warm.cf->cf_prewarm &&
	    now - warm.last_active <= PREWARM_RECENT_MS;
}

/* The warm timer fires at the earliest backoff end asked for. */
static void
warm_later(int64_t at, int64_t now)
{
	if (ev_is_active(&warm.timer) &&
	    ev_timer_remaining(warm.loop, &warm.timer) * 1000 <=
	    (double)(at - now))
		return;
	timer_arm(warm.loop, &warm.timer, at, now);
}

static void
warm_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	int64_t	 now = now_ms();
	int	 i;

	(void)revents;
	ev_timer_stop(loop, w);
	for (i = 0; i < warm.nup; i++)
		upstream_prewarm(&warm.ups[i], now);
}

/*
 * --prewarm: while queries came recently, each upstream keeps one
 * connection open, so that the first query after a quiet spell pays no
 * handshake.  One is enough: a second opens only when the first is
 * full.  While failing, the warm timer dials again as each backoff ends,
 * not at the next query.
 */
void
upstream_prewarm(struct upstream *up, int64_t now)
{
	int	 i;

	if (!warm_wanted(now))
		return;
	for (i = 0; i < up->up_nconns; i++)
		if (up->up_conns[i].c_state != CONN_IDLE)
			return;
	if (up->up_fails == 0 || now >= up->up_retry_at)
		(void)upstream_dial(up, now);
	if (up->up_fails > 0)
		warm_later(up->up_retry_at, now);
}

/*
 * An idle connection past its timeout stays open while --prewarm wants
 * it (the first ready one); the second, with one upstream while second
 * copies were sent lately, since they go over it and it then needs no
 * handshake, and over a lossy path as the spare (upstream_grow).
 * Closing a kept connection only to open it again would cost a handshake
 * and spare the server nothing; it still goes when the server asked for
 * that (RFC 7828).
 */
int
upstream_keep_warm(const struct conn *c, int64_t now)
{
	struct upstream	*up = c->c_up;
	int		 i, before = 0;

	if (c->c_server_idle)
		return 0;
	for (i = 0; i < c->c_idx; i++)
		before += up->up_conns[i].c_state == CONN_READY;
	if (before == 0)
		return warm_wanted(now);
	return before == 1 && ((warm.nup == 1 && warm.last_hedge != 0 &&
	    now - warm.last_hedge <= PREWARM_RECENT_MS) ||
	    share(up, now) == SHARE_FIRST);
}

/*
 * Its connections may be dead without knowing it, its backoff and what
 * we learnt of it are about another path, and a ticket would link this
 * machine across networks.
 */
void
upstream_forget(struct upstream *up)
{
	up->up_fails = 0;
	up->up_backoff_ms = 0;
	up->up_retry_at = 0;
	up->up_tfo_off_until = 0;
	health_reset(up);
	if (up->up_tls != NULL)
		tls_upstream_forget(up->up_tls);
}

int
upstream_local(const struct upstream *up, int slot, union sockaddr_any *sa)
{
	if (slot < 0 || slot >= up->up_nconns)
		return -1;
	return conn_local(&up->up_conns[slot], sa);
}

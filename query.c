/*
 * The life of a client query, from the bytes a listener read to the
 * answer it delivers: vetting (protocol errors are answered here), the
 * cache, joining an identical query in flight, each client's own
 * deadline and stale timer, prefetch, and the EDNS boundary.  What goes
 * upstream is built here from the key alone (dns_upstream_query), and
 * every answer is rebuilt for its client (dns_finish), so no EDNS option
 * crosses dnsfwd in either direction.
 *
 * A flight is one upstream request, one mux_send, shared by every client
 * query with its key; a cq is one client's query, a member of one flight
 * from query_ask until it is answered.  A flight lives until the mux
 * calls back, even when every member gave up, so that a late answer
 * still reaches the cache and whoever joined later.  Every cq is on the
 * deadline list, in expiry order because every query gets the same
 * timeout; those a stale entry may answer are on the stale list too,
 * likewise in order.  One timer serves both (ev.pod, "Be smart about
 * timeouts").
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ev.h>

#include "cache.h"
#include "dns.h"
#include "dnsfwd.h"
#include "log.h"
#include "mux.h"
#include "options.h"
#include "query.h"
#include "util.h"

/*
 * Client queries waiting per upstream request slot, on average: a flight
 * is shared, so most slots have a client or two.
 */
#define CLIENTS_PER_SLOT 2
/* How long a refresh may take before a stale entry is served instead. */
#define STALE_WAIT_MS	1800

/* A client's query; lives from query_ask to its answer. */
struct cq {
	TAILQ_ENTRY(cq)	 cq_link;	/* its flight's members, or free */
	TAILQ_ENTRY(cq)	 cq_dlink;	/* the deadline list */
	TAILQ_ENTRY(cq)	 cq_slink;	/* the stale list, while on it */
	struct flight	*cq_flight;
	int64_t		 cq_deadline;
	int64_t		 cq_stale_at;	/* 0: not on the stale list */
	struct client_ref cq_client;
	struct dns_qinfo cq_qi;
	uint8_t		 cq_q[QHEAD_MAX];	/* its header and question */
};
TAILQ_HEAD(cqlist, cq);

/* An upstream request; lives from flight_start to flight_done. */
struct flight {
	struct cqlist	 f_members;
	TAILQ_ENTRY(flight) f_free;
	int32_t		 f_knext;	/* next in its key bucket */
	int8_t		 f_keyed;	/* in the key table: joinable */
	int		 f_mux;		/* its mux_send handle */
	int64_t		 f_deadline;	/* the latest member's */
	struct qkey	 f_key;		/* pointing into f_q and f_ecs */
	uint8_t		 f_ecs[ECS_MAX];
	uint8_t		 f_q[QHEAD_MAX];
};

static struct {
	struct ev_loop	*loop;
	const struct config *cf;
	query_deliver_fn *deliver;
	struct flight	*flights;
	int		 nflights;
	int		 ffresh;	/* never-used flights start here */
	TAILQ_HEAD(, flight) ffree;
	struct cq	*cqs;
	int		 ncqs;
	int		 cfresh;
	int		 cused;
	struct cqlist	 cfree;
	struct cqlist	 deadlines;
	struct cqlist	 stale;
	int32_t		*keys;		/* joinable flights by key */
	uint32_t	 kmask;
	uint8_t		 key[SIPHASH_KEYLEN];	/* of the flight table's hash */
	ev_timer	 timer;
	int64_t		 looked;	/* timer_stalled */
	int64_t		 overload_warned;
	/* Answers are made here, one at a time, up to the largest message. */
	uint8_t		 abuf[DNS_MAXMSG];
} qs;	/* the query lifecycle's state: query_init to query_shutdown */

static int	 ask(const struct client_ref *, const uint8_t *,
		    const struct dns_qinfo *, const struct qkey *, int64_t);
static void	 refuse(const struct client_ref *, const uint8_t *, size_t,
		    int);
static void	 overload(const struct client_ref *, const uint8_t *,
		    const struct dns_qinfo *, const struct qkey *, int64_t);
static void	 prefetch(const struct qkey *, int64_t);
static struct flight *flight_find(const struct qkey *);
static struct flight *flight_start(const struct qkey *, int64_t);
static void	 flight_done(void *, enum mux_status, uint8_t *, size_t,
		    int64_t);
static void	 flight_unkey(struct flight *);
static void	 answered(struct flight *, uint8_t *, size_t, int64_t);
static void	 failed(struct flight *, uint16_t, const char *, int64_t);
static void	 cq_join(struct cq *, struct flight *,
		    const struct client_ref *, const uint8_t *,
		    const struct dns_qinfo *, int64_t, int);
static void	 cq_done(struct cq *);
static void	 cq_fail(struct cq *, uint16_t, const char *, int64_t);
static int	 stale_answer(const struct client_ref *, const uint8_t *,
		    const struct dns_qinfo *, const struct qkey *, int64_t);
static void	 answer_entry(const struct client_ref *, const uint8_t *,
		    const struct dns_qinfo *, const struct centry *, int64_t,
		    int);
static void	 answer_raw(const struct cq *, const uint8_t *, size_t);
static void	 servfail(const struct client_ref *, const uint8_t *,
		    const struct dns_qinfo *, uint16_t, const char *);
static int64_t	 next_due(void);
static void	 timer_update(int64_t);
static void	 timer_cb(struct ev_loop *, ev_timer *, int);

#define FLIGHT_INDEX(f)	((int32_t)((f) - qs.flights))

void
query_init(struct ev_loop *loop, const struct config *cf,
    query_deliver_fn *deliver)
{
	qs.loop = loop;
	qs.cf = cf;
	qs.deliver = deliver;
	qs.nflights = mux_capacity(cf);
	qs.ncqs = CLIENTS_PER_SLOT * qs.nflights;
	qs.flights = xcalloc((size_t)qs.nflights, sizeof(struct flight));
	qs.cqs = xcalloc((size_t)qs.ncqs, sizeof(struct cq));
	TAILQ_INIT(&qs.ffree);
	TAILQ_INIT(&qs.cfree);
	TAILQ_INIT(&qs.deadlines);
	TAILQ_INIT(&qs.stale);
	qs.kmask = chain_mask((uint32_t)qs.nflights);
	qs.keys = chain_buckets(qs.kmask);
	random_bytes(qs.key, sizeof(qs.key));
	timer_init(&qs.timer, timer_cb);
}

void
query_shutdown(void)
{
	if (qs.loop != NULL)
		ev_timer_stop(qs.loop, &qs.timer);
	free(qs.flights);
	free(qs.cqs);
	free(qs.keys);
	memset(&qs, 0, sizeof(qs));
}

int
query_pending(void)
{
	return qs.cused;
}

int
query_ask(const struct client_ref *cr, const uint8_t *msg, size_t len,
    int64_t now)
{
	struct dns_qinfo qi;
	struct qkey	 k;
	int		 rc;

	if (len > QUERY_MAX || (rc = dns_parse_query(msg, len, &qi)) < 0) {
		stats.st_drops++;
		return -1;
	}
	/* RFC 7828 3.2.1: keepalive is for TCP only. */
	if (rc == 0 && qi.qi_keepalive && cr->cr_kind == CLIENT_UDP)
		rc = RCODE_FORMERR;
	if (rc > 0) {
		refuse(cr, msg, len, rc);
		return 0;
	}
	stats.st_queries++;
	mux_active(now);
	dns_key(&k, msg, &qi, qs.cf->cf_keep_ecs, qs.key);
	return ask(cr, msg, &qi, &k, now);
}

/* A hit is answered at once; a miss joins or starts a flight. */
static int
ask(const struct client_ref *cr, const uint8_t *msg,
    const struct dns_qinfo *qi, const struct qkey *k, int64_t now)
{
	enum cache_state state;
	struct centry	*e;
	struct flight	*f;
	struct cq	*cq;

	e = cache_lookup(k, now, &state);
	if (state == CACHE_FRESH) {
		stats.st_cache_hits++;
		answer_entry(cr, msg, qi, e, now, 0);
		if (qs.cf->cf_prefetch && cache_prefetch_due(e, now))
			prefetch(k, now);
		return 0;
	}
	if (qs.cf->cf_cache_size > 0)
		stats.st_cache_misses++;
	POOL_TAKE(cq, &qs.cfree, cq_link, qs.cqs, qs.cfresh, qs.ncqs);
	if (cq != NULL && (f = flight_find(k)) == NULL &&
	    (f = flight_start(k, now)) == NULL) {
		TAILQ_INSERT_HEAD(&qs.cfree, cq, cq_link);
		cq = NULL;
	}
	if (cq == NULL) {
		overload(cr, msg, qi, k, now);
		return 0;
	}
	cq_join(cq, f, cr, msg, qi, now, state == CACHE_STALE);
	return 0;
}

/* NOTIMP, FORMERR or BADVERS: never forwarded, always counted. */
static void
refuse(const struct client_ref *cr, const uint8_t *msg, size_t len,
    int rcode)
{
	struct dns_qinfo qi;
	size_t		 n;

	if (rcode == RCODE_NOTIMP)
		stats.st_notimp++;
	else if (rcode == RCODE_BADVERS)
		stats.st_badvers++;
	else
		stats.st_formerr++;
	memset(&qi, 0, sizeof(qi));
	if ((n = dns_error(qs.abuf, sizeof(qs.abuf), msg, len, rcode)) > 0)
		qs.deliver(cr, qs.abuf, n, &qi);
}

static void
overload(const struct client_ref *cr, const uint8_t *msg,
    const struct dns_qinfo *qi, const struct qkey *k, int64_t now)
{
	stats.st_overload++;
	log_ratelimited(&qs.overload_warned, "%d client queries pending: "
	    "answering SERVFAIL until some complete", qs.cused);
	if (!stale_answer(cr, msg, qi, k, now))
		servfail(cr, msg, qi, EDE_OTHER, "too many queries in flight");
}

/* In its last tenth: refresh it before anyone misses, unless under way. */
static void
prefetch(const struct qkey *k, int64_t now)
{
	if (flight_find(k) == NULL && flight_start(k, now) != NULL)
		stats.st_prefetches++;
}

/*
 * With the cache off, as documented, nothing is shared either.  A flight
 * whose first copy went unanswered past its attempt timeout takes no
 * more joiners: a query the upstream dropped must not hold every later
 * asker of a popular name until the deadline.
 */
static struct flight *
flight_find(const struct qkey *k)
{
	struct flight	*f;
	int32_t		 i;

	if (qs.cf->cf_cache_size == 0)
		return NULL;
	for (i = qs.keys[k->k_hash & qs.kmask]; i >= 0; i = f->f_knext) {
		f = &qs.flights[i];
		if (dns_key_same(&f->f_key, k) && !mux_overdue(f->f_mux))
			return f;
	}
	return NULL;
}

/* Sends the key's own query upstream; NULL when the mux is full. */
static struct flight *
flight_start(const struct qkey *k, int64_t now)
{
	uint8_t		 up[UPQUERY_MAX];
	struct flight	*f;
	size_t		 len;

	POOL_TAKE(f, &qs.ffree, f_free, qs.flights, qs.ffresh, qs.nflights);
	if (f == NULL)
		return NULL;
	f->f_deadline = now + qs.cf->cf_timeout_ms;
	len = dns_upstream_query(up, sizeof(up), k);
	if (len == 0 || (f->f_mux = mux_send(up, len, f->f_deadline,
	    flight_done, f, now)) == -1) {
		TAILQ_INSERT_HEAD(&qs.ffree, f, f_free);
		return NULL;
	}
	TAILQ_INIT(&f->f_members);
	f->f_key = *k;
	memcpy(f->f_q, k->k_msg, k->k_qend);
	if (k->k_ecslen > 0)
		memcpy(f->f_ecs, k->k_ecs, k->k_ecslen);
	f->f_key.k_msg = f->f_q;
	f->f_key.k_ecs = f->f_ecs;
	f->f_keyed = qs.cf->cf_cache_size > 0;
	if (f->f_keyed)
		CHAIN_INSERT(qs.keys, qs.kmask, k->k_hash, qs.flights, f_knext,
		    FLIGHT_INDEX(f));
	return f;
}

/* The mux's one call back for a flight: answer whoever is still there. */
static void
flight_done(void *arg, enum mux_status status, uint8_t *reply, size_t len,
    int64_t now)
{
	struct flight	*f = arg;

	flight_unkey(f);
	switch (status) {
	case MUX_ANSWER:
		answered(f, reply, len, now);
		break;
	case MUX_TIMEOUT:
		failed(f, EDE_NO_REACHABLE_AUTHORITY,
		    "upstream did not answer in time", now);
		break;
	case MUX_UNREACHABLE:
		failed(f, EDE_NETWORK_ERROR, "no upstream reachable", now);
		break;
	case MUX_FAILED:
		failed(f, EDE_NETWORK_ERROR,
		    "upstream connections failed with this query", now);
		break;
	case MUX_REFUSED:
		failed(f, EDE_OTHER, "upstreams refused or failed this query",
		    now);
		break;
	}
	TAILQ_INSERT_HEAD(&qs.ffree, f, f_free);
}

static void
flight_unkey(struct flight *f)
{
	if (!f->f_keyed)
		return;
	CHAIN_UNLINK(qs.keys, qs.kmask, f->f_key.k_hash, qs.flights, f_knext,
	    FLIGHT_INDEX(f));
	f->f_keyed = 0;
}

/*
 * The cache keeps what it can, and a miss it kept is answered from its
 * entry, so the first answer already has the clamped TTLs a hit would.
 * An upstream SERVFAIL or REFUSED yields to a stale answer (RFC 8767).
 */
static void
answered(struct flight *f, uint8_t *reply, size_t len, int64_t now)
{
	const struct centry *e;
	struct cq	*cq;
	int		 rcode = reply[3] & F_RCODE;

	if ((len = dns_strip_opt(reply, len, f->f_key.k_qend)) == 0) {
		stats.st_bad_replies++;
		failed(f, EDE_OTHER, "unusable answer from upstream", now);
		return;
	}
	e = cache_store(&f->f_key, reply, len, now);
	while ((cq = TAILQ_FIRST(&f->f_members)) != NULL) {
		if (e != NULL)
			answer_entry(&cq->cq_client, cq->cq_q, &cq->cq_qi, e,
			    now, 0);
		else if ((rcode != RCODE_SERVFAIL && rcode != RCODE_REFUSED) ||
		    !stale_answer(&cq->cq_client, cq->cq_q, &cq->cq_qi,
		    &f->f_key, now))
			answer_raw(cq, reply, len);
		cq_done(cq);
	}
}

static void
failed(struct flight *f, uint16_t ede, const char *text, int64_t now)
{
	struct cq	*cq;

	while ((cq = TAILQ_FIRST(&f->f_members)) != NULL)
		cq_fail(cq, ede, text, now);
}

/* Makes cq a member of f with a deadline, and a stale time if it may. */
static void
cq_join(struct cq *cq, struct flight *f, const struct client_ref *cr,
    const uint8_t *msg, const struct dns_qinfo *qi, int64_t now, int stale)
{
	cq->cq_flight = f;
	cq->cq_client = *cr;
	cq->cq_qi = *qi;
	memcpy(cq->cq_q, msg, qi->qi_qend);
	TAILQ_INSERT_TAIL(&f->f_members, cq, cq_link);
	cq->cq_deadline = now + qs.cf->cf_timeout_ms;
	if (cq->cq_deadline > f->f_deadline) {
		f->f_deadline = cq->cq_deadline;
		mux_extend(f->f_mux, f->f_deadline, now);
	}
	TAILQ_INSERT_TAIL(&qs.deadlines, cq, cq_dlink);
	cq->cq_stale_at = 0;
	if (stale) {
		cq->cq_stale_at = now + STALE_WAIT_MS;
		TAILQ_INSERT_TAIL(&qs.stale, cq, cq_slink);
	}
	qs.cused++;
	if (TAILQ_FIRST(&qs.deadlines) == cq ||
	    (stale && TAILQ_FIRST(&qs.stale) == cq))
		timer_update(now);
}

static void
cq_done(struct cq *cq)
{
	TAILQ_REMOVE(&cq->cq_flight->f_members, cq, cq_link);
	TAILQ_REMOVE(&qs.deadlines, cq, cq_dlink);
	if (cq->cq_stale_at != 0)
		TAILQ_REMOVE(&qs.stale, cq, cq_slink);
	TAILQ_INSERT_HEAD(&qs.cfree, cq, cq_link);
	qs.cused--;
}

/* No answer for this client: a stale one if there is one, else SERVFAIL. */
static void
cq_fail(struct cq *cq, uint16_t ede, const char *text, int64_t now)
{
	if (!stale_answer(&cq->cq_client, cq->cq_q, &cq->cq_qi,
	    &cq->cq_flight->f_key, now))
		servfail(&cq->cq_client, cq->cq_q, &cq->cq_qi, ede, text);
	cq_done(cq);
}

/*
 * Answers from the cache where the entry has really expired but may
 * still serve (RFC 8767); one refreshed meanwhile answers as a hit.
 */
static int
stale_answer(const struct client_ref *cr, const uint8_t *msg,
    const struct dns_qinfo *qi, const struct qkey *k, int64_t now)
{
	enum cache_state state;
	struct centry	*e;

	if (qs.cf->cf_serve_stale == 0 ||
	    (e = cache_lookup(k, now, &state)) == NULL)
		return 0;
	if (state == CACHE_STALE)
		stats.st_stale++;
	else
		stats.st_cache_hits++;
	answer_entry(cr, msg, qi, e, now, state == CACHE_STALE);
	return 1;
}

static void
answer_entry(const struct client_ref *cr, const uint8_t *msg,
    const struct dns_qinfo *qi, const struct centry *e, int64_t now,
    int stale)
{
	size_t	 len;

	len = cache_render(e, now, stale, qs.abuf);
	len = dns_finish(qs.abuf, len, sizeof(qs.abuf), msg, qi,
	    stale ? EDE_STALE_ANSWER : EDE_NONE, "");
	if (len == 0) {
		servfail(cr, msg, qi, EDE_OTHER, "answer too large");
		return;
	}
	stats.st_answers++;
	qs.deliver(cr, qs.abuf, len, qi);
}

static void
answer_raw(const struct cq *cq, const uint8_t *reply, size_t len)
{
	memcpy(qs.abuf, reply, len);
	len = dns_finish(qs.abuf, len, sizeof(qs.abuf), cq->cq_q, &cq->cq_qi,
	    EDE_NONE, "");
	if (len == 0) {
		servfail(&cq->cq_client, cq->cq_q, &cq->cq_qi, EDE_OTHER,
		    "answer too large");
		return;
	}
	stats.st_answers++;
	qs.deliver(&cq->cq_client, qs.abuf, len, &cq->cq_qi);
}

static void
servfail(const struct client_ref *cr, const uint8_t *msg,
    const struct dns_qinfo *qi, uint16_t ede, const char *text)
{
	size_t	 len;

	stats.st_servfails++;
	len = dns_servfail(qs.abuf, sizeof(qs.abuf), msg, qi, ede, text);
	if (len > 0)
		qs.deliver(cr, qs.abuf, len, qi);
}

/*
 * Clients whose deadline passed get SERVFAIL (their flight goes on for
 * the others); those whose stale time came get the stale entry.
 */
int64_t
query_tick(int64_t now)
{
	struct cq	*cq;

	while ((cq = TAILQ_FIRST(&qs.deadlines)) != NULL &&
	    cq->cq_deadline <= now)
		cq_fail(cq, EDE_NO_REACHABLE_AUTHORITY,
		    "upstream did not answer in time", now);
	while ((cq = TAILQ_FIRST(&qs.stale)) != NULL &&
	    cq->cq_stale_at <= now) {
		TAILQ_REMOVE(&qs.stale, cq, cq_slink);
		cq->cq_stale_at = 0;
		if (stale_answer(&cq->cq_client, cq->cq_q, &cq->cq_qi,
		    &cq->cq_flight->f_key, now))
			cq_done(cq);
	}
	return next_due();
}

/* The earliest deadline or stale time, 0 when nothing waits. */
static int64_t
next_due(void)
{
	struct cq	*cq;
	int64_t		 next = 0;

	if ((cq = TAILQ_FIRST(&qs.deadlines)) != NULL)
		next = cq->cq_deadline;
	if ((cq = TAILQ_FIRST(&qs.stale)) != NULL &&
	    (next == 0 || cq->cq_stale_at < next))
		next = cq->cq_stale_at;
	return next;
}

static void
timer_update(int64_t now)
{
	int64_t	 next = next_due();

	if (qs.loop == NULL)
		return;
	if (next == 0) {
		ev_timer_stop(qs.loop, &qs.timer);
		return;
	}
	timer_arm(qs.loop, &qs.timer, next, now);
}

static void
timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	int64_t	 now = now_ms(), due = next_due();

	(void)revents;
	if (timer_stalled(loop, w, due != 0 ? due : now, now, &qs.looked))
		return;
	(void)query_tick(now);
	timer_update(now);
}

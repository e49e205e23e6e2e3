/*
 * The answer cache in front of the mux.
 *
 * A fixed table of --cache-size entries, each with room for one answer
 * of up to CACHE_MSGMAX bytes, found through a hash on the case-folded
 * question, type, class and the DO and CD bits, and evicted least
 * recently used first.  Entries are stored as the upstream sent them,
 * minus OPT, with every TTL already clamped; a hit is rewritten for its
 * client: ID, question bytes (0x20 case), RD bit, TTLs aged, and an OPT
 * only when the client sent one.
 *
 * Entries are touched only when first used, so an idle daemon with a
 * large cache costs no more memory than one with a small cache.
 */
#include <stdlib.h>
#include <string.h>

#include "dnsfwd.h"

#define TTL_MAX		0x7fffffffu	/* RFC 2181 8: larger means 0 */

/* One cached answer; lives from cache_store until evicted or expired. */
struct centry {
	TAILQ_ENTRY(centry) ce_lru;	/* used: most recent first; or free */
	int32_t		 ce_hnext;	/* next index in its bucket */
	uint32_t	 ce_hash;
	int64_t		 ce_stored;	/* monotonic ms */
	int64_t		 ce_expires;
	uint16_t	 ce_len;
	uint16_t	 ce_qend;
	uint8_t		 ce_do;
	uint8_t		 ce_cd;
	uint8_t		 ce_msg[CACHE_MSGMAX];
};
TAILQ_HEAD(centries, centry);
_Static_assert(sizeof(struct centry) <= CACHE_ENTRY_BYTES,
    "dnsfwd.8 LIMITS documents CACHE_ENTRY_BYTES per entry");

static struct {
	const struct config *cf;
	struct centry	*ents;
	int		 n;		/* --cache-size */
	int		 used;		/* never-used entries start here */
	int		 live;
	int32_t		*buckets;
	uint32_t	 mask;
	uint32_t	 seed;
	struct centries	 lru;
	struct centries	 free;
} cache;

static uint32_t	 key_hash(const uint8_t *, const struct dns_qinfo *);
static struct centry *lookup(const uint8_t *, const struct dns_qinfo *,
		    uint32_t);
static void	 unlink_entry(struct centry *);
static struct centry *alloc_entry(int64_t);
static uint32_t	 answer_ttl(const uint8_t *, size_t, size_t, size_t *);
static uint32_t	 clamp_ttl(uint32_t, uint32_t, uint32_t);
static int	 ttls_rewrite(uint8_t *, size_t, size_t, uint32_t, uint32_t,
		    uint32_t);
static void	 answer(const struct centry *, const struct client_ref *,
		    const uint8_t *, const struct dns_qinfo *, int64_t, int);

#define ENT_INDEX(e)	((int32_t)((e) - cache.ents))

void
cache_init(const struct config *cf)
{
	cache.cf = cf;
	cache.n = cf->cf_cache_size;
	TAILQ_INIT(&cache.lru);
	TAILQ_INIT(&cache.free);
	if (cache.n == 0)
		return;
	cache.mask = chain_mask((uint32_t)cache.n);
	cache.buckets = chain_buckets(cache.mask);
	if ((cache.ents = calloc((size_t)cache.n, sizeof(struct centry))) == NULL)
		fatal(EXIT_SETUP, "cache of %d entries", cache.n);
	tls_random(&cache.seed, sizeof(cache.seed));
}

void
cache_free(void)
{
	free(cache.ents);
	free(cache.buckets);
	memset(&cache, 0, sizeof(cache));
}

int
cache_entries(void)
{
	return cache.live;
}

void
cache_query(const struct client_ref *cr, const uint8_t *q, size_t len,
    const struct dns_qinfo *qi)
{
	static const struct client_ref nobody = { .cr_kind = CLIENT_NONE };
	struct centry	*e;
	int64_t		 now;
	int		 flags = MUXQ_COALESCE;

	if (cache.n == 0) {
		mux_query(cr, q, len, qi, 0);
		return;
	}
	now = now_ms();
	e = lookup(q, qi, key_hash(q, qi));
	if (e != NULL && now < e->ce_expires) {
		stats.st_cache_hits++;
		TAILQ_REMOVE(&cache.lru, e, ce_lru);
		TAILQ_INSERT_HEAD(&cache.lru, e, ce_lru);
		answer(e, cr, q, qi, now, 0);
		/* In its last tenth: refresh it before anyone misses. */
		if (cache.cf->cf_prefetch &&
		    (e->ce_expires - now) * 10 < e->ce_expires - e->ce_stored)
			mux_query(&nobody, q, len, qi, MUXQ_BACKGROUND);
		return;
	}
	stats.st_cache_misses++;
	if (e != NULL && now < e->ce_expires +
	    cache.cf->cf_serve_stale * 1000LL)
		flags |= MUXQ_STALE;
	else if (e != NULL)
		unlink_entry(e);
	mux_query(cr, q, len, qi, flags);
}

const struct centry *
cache_store(const uint8_t *q, const struct dns_qinfo *qi,
    const uint8_t *msg, size_t len)
{
	struct centry	*e;
	uint32_t	 h, ttl;
	size_t		 opt;
	int64_t		 now;

	if (cache.n == 0 || (ttl = answer_ttl(msg, len, qi->qi_qend, &opt)) == 0
	    || opt > CACHE_MSGMAX)
		return NULL;
	now = now_ms();
	h = key_hash(q, qi);
	if ((e = lookup(q, qi, h)) != NULL)
		unlink_entry(e);
	e = alloc_entry(now);
	memcpy(e->ce_msg, msg, opt);
	if (opt < len)		/* OPT is hop by hop: each hit gets its own */
		dns_put16(e->ce_msg + 10, dns_get16(msg + 10) - 1);
	if (ttls_rewrite(e->ce_msg, opt, qi->qi_qend, 0,
	    (uint32_t)cache.cf->cf_min_ttl, ttl) == -1) {
		TAILQ_INSERT_HEAD(&cache.free, e, ce_lru);
		return NULL;
	}
	e->ce_len = (uint16_t)opt;
	e->ce_qend = (uint16_t)qi->qi_qend;
	e->ce_do = qi->qi_do;
	e->ce_cd = q[3] & F_CD;
	e->ce_hash = h;
	e->ce_stored = now;
	e->ce_expires = now + ttl * 1000LL;
	CHAIN_INSERT(cache.buckets, cache.mask, h, cache.ents, ce_hnext,
	    ENT_INDEX(e));
	TAILQ_INSERT_HEAD(&cache.lru, e, ce_lru);
	cache.live++;
	return e;
}

/*
 * Answering a miss from its fresh entry, rather than passing the upstream
 * bytes on, gives the client the same clamped TTLs and OPT a hit would.
 */
void
cache_answer(const struct centry *e, const struct client_ref *cr,
    const uint8_t *q, const struct dns_qinfo *qi)
{
	answer(e, cr, q, qi, e->ce_stored, 0);
}

int
cache_stale(const struct client_ref *cr, const uint8_t *q,
    const struct dns_qinfo *qi)
{
	struct centry	*e;
	int64_t		 now = now_ms();

	if (cache.n == 0 || cache.cf->cf_serve_stale == 0)
		return 0;
	e = lookup(q, qi, key_hash(q, qi));
	if (e == NULL ||
	    now >= e->ce_expires + cache.cf->cf_serve_stale * 1000LL)
		return 0;
	stats.st_stale++;
	answer(e, cr, q, qi, now, 1);
	return 1;
}

/* The cache key leaves OPT presence out: hits write their own OPT. */
static uint32_t
key_hash(const uint8_t *q, const struct dns_qinfo *qi)
{
	struct dns_qinfo k = *qi;

	k.qi_has_opt = 0;
	return dns_query_hash(q, &k, cache.seed);
}

static struct centry *
lookup(const uint8_t *q, const struct dns_qinfo *qi, uint32_t h)
{
	struct centry	*e;
	int32_t		 i;

	for (i = cache.buckets[h & cache.mask]; i >= 0; i = e->ce_hnext) {
		e = &cache.ents[i];
		if (e->ce_hash == h && e->ce_qend == qi->qi_qend &&
		    e->ce_do == qi->qi_do && e->ce_cd == (q[3] & F_CD) &&
		    dns_question_equal(e->ce_msg, q, qi->qi_qend))
			return e;
	}
	return NULL;
}

static void
unlink_entry(struct centry *e)
{
	CHAIN_UNLINK(cache.buckets, cache.mask, e->ce_hash, cache.ents,
	    ce_hnext, ENT_INDEX(e));
	TAILQ_REMOVE(&cache.lru, e, ce_lru);
	TAILQ_INSERT_HEAD(&cache.free, e, ce_lru);
	cache.live--;
}

/* A free entry: a released one, a new one, or the least recently used. */
static struct centry *
alloc_entry(int64_t now)
{
	struct centry	*e;

	if ((e = TAILQ_FIRST(&cache.free)) != NULL) {
		TAILQ_REMOVE(&cache.free, e, ce_lru);
		return e;
	}
	if (cache.used < cache.n)
		return &cache.ents[cache.used++];
	e = TAILQ_LAST(&cache.lru, centries);
	if (now < e->ce_expires)
		stats.st_cache_evictions++;
	unlink_entry(e);
	TAILQ_REMOVE(&cache.free, e, ce_lru);
	return e;
}

/*
 * How long an answer may be kept (0: not at all), and where its OPT
 * record starts (len when it has none) in *opt.  Positive answers live
 * as long as their shortest answer or authority TTL; negative ones (RFC
 * 2308: NXDOMAIN, NODATA, a CNAME chain ending in either) as min(SOA
 * TTL, SOA MINIMUM) and need the SOA.
 */
static uint32_t
answer_ttl(const uint8_t *m, size_t len, size_t qend, size_t *opt)
{
	const struct config *cf = cache.cf;
	struct dns_rr	 rr;
	size_t		 off = qend;
	unsigned int	 i, an, ns, n;
	uint32_t	 ttl = TTL_MAX, soa = TTL_MAX + 1u, min;
	int		 rcode = m[3] & 0x0f;

	*opt = len;
	if ((m[2] & F_TC) || (rcode != RCODE_NOERROR &&
	    rcode != RCODE_NXDOMAIN))
		return 0;
	an = dns_get16(m + 6);
	ns = dns_get16(m + 8);
	n = an + ns + dns_get16(m + 10);
	for (i = 0; i < n; i++) {
		if (dns_rr_next(m, len, &off, &rr) == -1)
			return 0;
		if (rr.rr_type == DNS_TYPE_OPT) {
			/* Dropping an OPT in the middle would break pointers. */
			if (i != n - 1 || i < an + ns)
				return 0;
			*opt = rr.rr_start;
		} else if (i < an + ns) {
			if (rr.rr_ttl > TTL_MAX)
				return 0;
			if (rr.rr_ttl < ttl)
				ttl = rr.rr_ttl;
			if (i >= an && rr.rr_type == DNS_TYPE_SOA &&
			    rr.rr_rdlen >= 22) {
				min = (uint32_t)dns_get16(m + rr.rr_rdata +
				    rr.rr_rdlen - 4) << 16 | dns_get16(m +
				    rr.rr_rdata + rr.rr_rdlen - 2);
				soa = rr.rr_ttl < min ? rr.rr_ttl : min;
			}
		}
	}
	if (off != len || ttl == 0)
		return 0;
	/* A SOA in authority marks a negative answer, CNAME chains too. */
	if (rcode == RCODE_NOERROR && an > 0 && soa > TTL_MAX)
		return clamp_ttl(ttl, cf->cf_min_ttl, cf->cf_max_ttl);
	if (soa > TTL_MAX || soa == 0)
		return 0;
	return clamp_ttl(soa < ttl ? soa : ttl, cf->cf_min_ttl,
	    cf->cf_neg_max_ttl);
}

static uint32_t
clamp_ttl(uint32_t ttl, uint32_t floor, uint32_t ceiling)
{
	if (ttl < floor)
		ttl = floor;
	return ttl > ceiling ? ceiling : ttl;
}

/*
 * Sets every record's TTL to its own, less `age` seconds, kept within
 * [floor, ceiling].  Storing raises TTLs to --min-ttl and cuts them to
 * the entry's lifetime; a hit ages them; a stale answer pins them to 30.
 */
static int
ttls_rewrite(uint8_t *m, size_t len, size_t qend, uint32_t age,
    uint32_t floor, uint32_t ceiling)
{
	struct dns_rr	 rr;
	size_t		 off = qend;
	unsigned int	 n;
	uint32_t	 t;

	n = (unsigned int)dns_get16(m + 6) + dns_get16(m + 8) +
	    dns_get16(m + 10);
	for (; n > 0; n--) {
		if (dns_rr_next(m, len, &off, &rr) == -1)
			return -1;
		t = rr.rr_ttl > TTL_MAX || rr.rr_ttl < age ? 0 :
		    rr.rr_ttl - age;
		t = clamp_ttl(t, floor, ceiling);
		dns_put16(m + rr.rr_ttloff, (uint16_t)(t >> 16));
		dns_put16(m + rr.rr_ttloff + 2, (uint16_t)t);
	}
	return 0;
}

/* Writes the entry as the answer to this client's query. */
static void
answer(const struct centry *e, const struct client_ref *cr,
    const uint8_t *q, const struct dns_qinfo *qi, int64_t now, int stale)
{
	uint8_t		 out[CACHE_MSGMAX + 16];
	size_t		 len = e->ce_len;
	uint32_t	 age = (uint32_t)((now - e->ce_stored) / 1000);

	memcpy(out, e->ce_msg, len);
	memcpy(out, q, 2);
	memcpy(out + DNS_HDRLEN, q + DNS_HDRLEN, e->ce_qend - DNS_HDRLEN);
	out[2] = (uint8_t)((out[2] & ~F_RD) | (q[2] & F_RD));
	if (stale)
		(void)ttls_rewrite(out, len, e->ce_qend, 0, STALE_TTL,
		    STALE_TTL);
	else
		(void)ttls_rewrite(out, len, e->ce_qend, age, 0, TTL_MAX);
	if (qi->qi_has_opt)
		len = dns_opt_append(out, len, qi->qi_do);
	stats.st_answers++;
	client_deliver(cr, out, len, qi);
}

/*
 * The answer cache: a table of pure functions of `now`, calling nobody.
 *
 * A fixed table of --cache-size entries, each with room for one answer
 * of up to CACHE_MSGMAX bytes, found through the query key (case-folded
 * question, type, class, DO and CD bits, and the ECS option when kept)
 * and evicted least recently used first.  Entries are stored as the
 * upstream sent them, minus OPT, with every TTL already clamped; render
 * ages them, and query.c makes the result its client's answer.
 *
 * Entries are touched only when first used, so an idle daemon with a
 * large cache costs no more memory than one with a small cache.
 */
#include <stdlib.h>
#include <string.h>

#include "cache.h"
#include "dns.h"
#include "dnsfwd.h"
#include "options.h"
#include "util.h"

/* Bytes per cache entry, as documented in dnsfwd.8 LIMITS. */
#define CACHE_ENTRY_BYTES (CACHE_MSGMAX + 72)
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
	uint8_t		 ce_ecslen;
	uint8_t		 ce_ecs[ECS_MAX];
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
	struct centries	 lru;
	struct centries	 free;
} cache;

static struct centry *lookup(const struct qkey *);
static void	 unlink_entry(struct centry *);
static struct centry *alloc_entry(int64_t);
static uint32_t	 answer_ttl(const uint8_t *, size_t, size_t);
static uint32_t	 clamp_ttl(uint32_t, uint32_t, uint32_t);
static int	 ttls_rewrite(uint8_t *, size_t, size_t, uint32_t, uint32_t,
		    uint32_t);

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
	cache.ents = xcalloc((size_t)cache.n, sizeof(struct centry));
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

struct centry *
cache_lookup(const struct qkey *k, int64_t now, enum cache_state *state)
{
	struct centry	*e;

	*state = CACHE_MISS;
	if (cache.n == 0 || (e = lookup(k)) == NULL)
		return NULL;
	if (now < e->ce_expires) {
		*state = CACHE_FRESH;
		TAILQ_REMOVE(&cache.lru, e, ce_lru);
		TAILQ_INSERT_HEAD(&cache.lru, e, ce_lru);
		return e;
	}
	if (now < e->ce_expires + cache.cf->cf_serve_stale * 1000LL) {
		*state = CACHE_STALE;
		return e;
	}
	unlink_entry(e);
	return NULL;
}

int
cache_prefetch_due(const struct centry *e, int64_t now)
{
	return (e->ce_expires - now) * 10 < e->ce_expires - e->ce_stored;
}

const struct centry *
cache_store(const struct qkey *k, const uint8_t *msg, size_t len,
    int64_t now)
{
	struct centry	*e;
	uint32_t	 ttl;

	if (cache.n == 0 || len > CACHE_MSGMAX ||
	    (ttl = answer_ttl(msg, len, k->k_qend)) == 0)
		return NULL;
	if ((e = lookup(k)) != NULL)
		unlink_entry(e);
	e = alloc_entry(now);
	memcpy(e->ce_msg, msg, len);
	if (ttls_rewrite(e->ce_msg, len, k->k_qend, 0,
	    (uint32_t)cache.cf->cf_min_ttl, ttl) == -1) {
		TAILQ_INSERT_HEAD(&cache.free, e, ce_lru);
		return NULL;
	}
	e->ce_len = (uint16_t)len;
	e->ce_qend = (uint16_t)k->k_qend;
	e->ce_do = k->k_do;
	e->ce_cd = k->k_cd;
	e->ce_ecslen = k->k_ecslen;
	if (k->k_ecslen > 0)
		memcpy(e->ce_ecs, k->k_ecs, k->k_ecslen);
	e->ce_hash = k->k_hash;
	e->ce_stored = now;
	e->ce_expires = now + ttl * 1000LL;
	CHAIN_INSERT(cache.buckets, cache.mask, k->k_hash, cache.ents,
	    ce_hnext, ENT_INDEX(e));
	TAILQ_INSERT_HEAD(&cache.lru, e, ce_lru);
	cache.live++;
	return e;
}

size_t
cache_render(const struct centry *e, int64_t now, int stale, uint8_t *out)
{
	uint32_t	 age = (uint32_t)((now - e->ce_stored) / 1000);

	memcpy(out, e->ce_msg, e->ce_len);
	/* Stored this second: its TTLs are already what they should be. */
	if (!stale && age == 0)
		return e->ce_len;
	if (stale)
		(void)ttls_rewrite(out, e->ce_len, e->ce_qend, 0, STALE_TTL,
		    STALE_TTL);
	else
		(void)ttls_rewrite(out, e->ce_len, e->ce_qend, age, 0,
		    TTL_MAX);
	return e->ce_len;
}

static struct centry *
lookup(const struct qkey *k)
{
	struct centry	*e;
	struct qkey	 ek;
	int32_t		 i;

	for (i = cache.buckets[k->k_hash & cache.mask]; i >= 0;
	    i = e->ce_hnext) {
		e = &cache.ents[i];
		ek.k_msg = e->ce_msg;
		ek.k_qend = e->ce_qend;
		ek.k_ecs = e->ce_ecs;
		ek.k_ecslen = e->ce_ecslen;
		ek.k_do = e->ce_do;
		ek.k_cd = e->ce_cd;
		ek.k_hash = e->ce_hash;
		if (dns_key_same(&ek, k))
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

	POOL_TAKE(e, &cache.free, ce_lru, cache.ents, cache.used, cache.n);
	if (e != NULL)
		return e;
	e = TAILQ_LAST(&cache.lru, centries);
	if (now < e->ce_expires)
		stats.st_cache_evictions++;
	unlink_entry(e);
	TAILQ_REMOVE(&cache.free, e, ce_lru);
	return e;
}

/*
 * How long an answer (its OPT already cut) may be kept, 0: not at all.
 * Positive answers live as long as their shortest answer or authority
 * TTL; negative ones (RFC 2308: NXDOMAIN, NODATA, a CNAME chain ending
 * in either) as min(SOA TTL, SOA MINIMUM) and need the SOA.
 */
static uint32_t
answer_ttl(const uint8_t *m, size_t len, size_t qend)
{
	const struct config *cf = cache.cf;
	struct dns_rr	 rr;
	size_t		 off = qend;
	unsigned int	 i, an, ns, n;
	uint32_t	 ttl = TTL_MAX, soa = TTL_MAX + 1u, min;
	int		 rcode = m[3] & F_RCODE;

	if ((m[2] & F_TC) || (rcode != RCODE_NOERROR &&
	    rcode != RCODE_NXDOMAIN))
		return 0;
	an = dns_ancount(m);
	ns = dns_nscount(m);
	n = dns_rr_total(m);
	for (i = 0; i < n; i++) {
		if (dns_rr_next(m, len, &off, &rr) == -1)
			return 0;
		/* RFC 2181 8: a TTL with the top bit set is no TTL at all. */
		if (rr.rr_type == DNS_TYPE_OPT || rr.rr_ttl > TTL_MAX)
			return 0;
		if (i < an + ns) {
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

	n = dns_rr_total(m);
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

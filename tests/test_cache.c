/*
 * Unit tests of cache.c, a table of pure functions of `now`: the key,
 * TTL extraction and clamping, rendering (ageing, stale TTLs), expiry
 * and serve-stale windows, prefetch timing, LRU eviction, replacing,
 * --cache-size 0, and robustness against malformed answers.  cache.c is
 * included so that an entry's lifetime can be read without a lookup
 * (which would have side effects).  Time passes by giving a later `now`,
 * never by editing timestamps or sleeping.  Every message handed to
 * cache.c, and every buffer it renders into, is a heap block of exactly
 * its length, so that under -fsanitize=address a read or write past its
 * end is reported.
 */
#include "../cache.c"

#include <stdio.h>

struct stats	 stats;

#include "check.h"

#define T_A		1
#define T_NS		2
#define T_CNAME		5
#define T_SOA		6
#define T_TXT		16
#define T_AAAA		28
#define C_IN		1
#define C_CH		3

#define RC_FORMERR	1
#define RC_SERVFAIL	2
#define RC_NXDOMAIN	3
#define RC_NOTIMP	4
#define RC_REFUSED	5
#define RC_YXDOMAIN	6

/* An arbitrary monotonic clock reading, in ms, to start from. */
#define T0		((int64_t)1000000000)
#define SEC(s)		((int64_t)(s) * 1000)

#define MSG_MAX		2048

/* ---- message building ---- */

#include "mb.h"
#include "walk.h"

struct query {
	uint8_t		 m[512];
	size_t		 len;
	struct dns_qinfo qi;
};

/* Query flags for mkq. */
#define Q_RD		0x01
#define Q_CD		0x02
#define Q_OPT		0x04
#define Q_DO		0x08	/* implies Q_OPT */

/* An OPT record (root owner) in the additional section. */
static size_t
mb_opt(struct mb *b, uint16_t payload, int do_bit, const void *rd,
    size_t rdlen)
{
	size_t	 start = b->len;

	mb_rr(b, AR, ".", 0, DNS_TYPE_OPT, payload, do_bit ? 0x8000 : 0,
	    rd, rdlen);
	return start;
}

/* A TXT record that brings the message to exactly total bytes. */
static void
mb_pad_to(struct mb *b, enum section sec, size_t total)
{
	uint8_t	 rd[MSG_MAX];
	size_t	 rdlen, i;

	/* pointer owner 2 + fixed 10 */
	if (total < b->len + 12 + 1) {
		fprintf(stderr, "cannot pad to %zu\n", total);
		exit(2);
	}
	rdlen = total - b->len - 12;
	for (i = 0; i < rdlen; i += 256) {
		size_t l = rdlen - i - 1 < 255 ? rdlen - i - 1 : 255;

		rd[i] = (uint8_t)l;
		memset(rd + i + 1, 'x', l);
	}
	mb_rr(b, sec, NULL, DNS_HDRLEN, T_TXT, C_IN, 300, rd, rdlen);
}

/*
 * A query; with an ECS option (family 1, the prefix given, scope 0, the
 * address bytes it covers) when ecs_prefix is not 0.
 */
static void
mkq_ecs(struct query *q, uint16_t id, const char *name, uint16_t type,
    uint16_t class, int flags, int ecs_prefix, const uint8_t *addr)
{
	struct mb	 b, o;
	size_t		 alen = ((size_t)ecs_prefix + 7) / 8;

	mb_hdr(&b, id, (flags & Q_RD) ? 0x01 : 0, (flags & Q_CD) ? 0x10 : 0);
	mb_question(&b, name, type, class);
	o.len = 0;
	if (ecs_prefix > 0) {
		flags |= Q_OPT;
		mb_u16(&o, DNS_OPT_ECS);
		mb_u16(&o, (unsigned int)(4 + alen));
		mb_u16(&o, 1);
		mb_u8(&o, (unsigned int)ecs_prefix);
		mb_u8(&o, 0);
		mb_bytes(&o, addr, alen);
	}
	if (flags & (Q_OPT | Q_DO))
		mb_opt(&b, 1232, (flags & Q_DO) != 0, o.m, o.len);
	if (b.len > sizeof(q->m) ||
	    dns_parse_query(b.m, b.len, &q->qi) != 0) {
		fprintf(stderr, "test query %s does not parse\n", name);
		exit(2);
	}
	memcpy(q->m, b.m, b.len);
	q->len = b.len;
}

static void
mkq(struct query *q, uint16_t id, const char *name, uint16_t type,
    uint16_t class, int flags)
{
	mkq_ecs(q, id, name, type, class, flags, 0, NULL);
}

/* An A/IN query. */
static void
qa(struct query *q, uint16_t id, const char *name, int flags)
{
	mkq(q, id, name, T_A, C_IN, flags);
}

/*
 * The header and question of an upstream answer to q: an upstream ID
 * that is not the client's, QR, RA, q's RD and CD, and rcode.
 */
static void
resp_init(struct mb *r, const struct query *q, int rcode)
{
	memcpy(r->m, q->m, q->qi.qi_qend);
	r->len = q->qi.qi_qend;
	dns_put16(r->m, 0x5555);
	r->m[2] = (uint8_t)(0x80 | (q->m[2] & 0x01));
	r->m[3] = (uint8_t)(0x80 | (q->m[3] & 0x10) | rcode);
	dns_put16(r->m + 4, 1);
	dns_put16(r->m + 6, 0);
	dns_put16(r->m + 8, 0);
	dns_put16(r->m + 10, 0);
}

/* Rewrites the letters of the question name in m to upper or lower. */
static void
recase(uint8_t *m, size_t qend, int upper)
{
	size_t	 i;

	for (i = DNS_HDRLEN; i < qend - 4; i++) {
		if (upper && m[i] >= 'a' && m[i] <= 'z')
			m[i] = (uint8_t)(m[i] - 'a' + 'A');
		if (!upper && m[i] >= 'A' && m[i] <= 'Z')
			m[i] = (uint8_t)(m[i] - 'A' + 'a');
	}
}

static uint8_t *
dup_exact(const uint8_t *p, size_t len)
{
	uint8_t	*d = malloc(len ? len : 1);

	if (d == NULL)
		abort();
	memcpy(d, p, len);
	return d;
}

/* ---- driving the cache ---- */

static struct config	 cfg;
static uint32_t		 seed;
static uint32_t		 hkey[SIPHASH_KEYLEN / 4];	/* from seed */
/* Calls that broke the API's word: kept an input, rendered badly, ... */
static int		 api_bad;

/* q's key, as query.c makes it, pointing into qc (a copy of q->m). */
static void
mkkey(struct qkey *k, const uint8_t *qc, const struct query *q)
{
	dns_key(k, qc, &q->qi, cfg.cf_keep_ecs, (const uint8_t *)hkey);
}

/*
 * Offers r (rlen bytes, a heap copy of exactly that) as the answer to q
 * at now; the query copy is freed at once, so an entry that kept a
 * pointer into it is caught.
 */
static const struct centry *
store_raw(const struct query *q, const uint8_t *r, size_t rlen, int64_t now)
{
	uint8_t			*qc = dup_exact(q->m, q->len);
	uint8_t			*rc = dup_exact(r, rlen);
	const struct centry	*e;
	struct qkey		 k;

	mkkey(&k, qc, q);
	e = cache_store(&k, rc, rlen, now);
	if (memcmp(rc, r, rlen) != 0)
		api_bad++;		/* the answer is const */
	free(qc);
	free(rc);
	return e;
}

static const struct centry *
store(const struct query *q, const struct mb *r, int64_t now)
{
	if (!dns_reply_matches(r->m, r->len, q->m, q->qi.qi_qend)) {
		fprintf(stderr, "test reply does not match its query\n");
		exit(2);
	}
	return store_raw(q, r->m, r->len, now);
}

static struct centry *
find(const struct query *q, int64_t now, enum cache_state *st)
{
	uint8_t		*qc = dup_exact(q->m, q->len);
	struct centry	*e;
	struct qkey	 k;

	*st = (enum cache_state)-1;
	mkkey(&k, qc, q);
	e = cache_lookup(&k, now, st);
	if ((e == NULL) != (*st == CACHE_MISS) ||
	    (*st != CACHE_MISS && *st != CACHE_FRESH && *st != CACHE_STALE))
		api_bad++;
	free(qc);
	return e;
}

/* What the last get() rendered. */
static struct {
	uint8_t		 m[CACHE_MSGMAX];
	size_t		 len;
} got;

/* Renders e at now into an exact-size heap block, then into got. */
static void
render(const struct centry *e, int64_t now, int stale)
{
	uint8_t	*out = malloc(CACHE_MSGMAX);

	if (out == NULL)
		abort();
	memset(out, 0xee, CACHE_MSGMAX);
	got.len = cache_render(e, now, stale, out);
	if (got.len < DNS_HDRLEN || got.len > CACHE_MSGMAX) {
		api_bad++;
		got.len = 0;
	} else
		memcpy(got.m, out, got.len);
	free(out);
}

/*
 * Looks q up at now, as query.c does, and renders a hit (fresh, or stale
 * with its TTLs pinned) into got.  Returns the state.
 */
static enum cache_state
get(const struct query *q, int64_t now)
{
	enum cache_state st;
	struct centry	*e;

	got.len = 0;
	e = find(q, now, &st);
	if (e != NULL)
		render(e, now, st == CACHE_STALE);
	return st;
}

/* The entry q would be answered from, found without side effects. */
static struct centry *
entry_of(const struct query *q)
{
	uint8_t		*qc;
	struct centry	*e;
	struct qkey	 k;

	if (cache.n == 0)
		return NULL;
	qc = dup_exact(q->m, q->len);
	mkkey(&k, qc, q);
	e = lookup(&k);
	free(qc);
	return e;
}

/* The lifetime in seconds the entry for q got; -1 when not cached. */
static long long
lifetime(const struct query *q)
{
	struct centry	*e = entry_of(q);

	if (e == NULL)
		return -1;
	return (e->ce_expires - e->ce_stored) / 1000;
}

static int
lru_count(void)
{
	struct centry	*e;
	int		 n = 0;

	TAILQ_FOREACH(e, &cache.lru, ce_lru)
		n++;
	return n;
}

/* The position of q's entry in the LRU list, 0 most recent, or -1. */
static int
lru_pos(const struct query *q)
{
	struct centry	*e, *x = entry_of(q);
	int		 n = 0;

	TAILQ_FOREACH(e, &cache.lru, ce_lru) {
		if (e == x)
			return n;
		n++;
	}
	return -1;
}

static void
setup(int size, int min_ttl, int stale)
{
	memset(&cfg, 0, sizeof(cfg));
	cfg.cf_cache_size = size;
	cfg.cf_min_ttl = min_ttl;
	cfg.cf_max_ttl = 86400;
	cfg.cf_neg_max_ttl = 3600;
	cfg.cf_serve_stale = stale;
	memset(&stats, 0, sizeof(stats));
	seed = seed * 1103515245u + 12345u;
	hkey[0] = hkey[3] = seed;
	cache_init(&cfg);
}

/* ---- the key ---- */

static void
test_key_name_type_class(void)
{
	struct query		 q, q2;
	struct mb		 r;
	const struct centry	*e;

	setup(16, 0, 0);
	qa(&q, 1, "example.com", Q_RD);
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 1);
	e = store(&q, &r, T0);
	CHECK(e != NULL);
	CHECK(cache_entries() == 1);

	qa(&q2, 2, "ExAmPlE.CoM", Q_RD);
	CHECK(get(&q2, T0 + 1) == CACHE_FRESH && a_of(got.m, got.len) == 1);
	CHECK(entry_of(&q2) == e);
	qa(&q2, 3, "EXAMPLE.COM", 0);	/* RD is not in the key */
	CHECK(get(&q2, T0 + 2) == CACHE_FRESH && a_of(got.m, got.len) == 1);

	mkq(&q2, 4, "example.com", T_AAAA, C_IN, Q_RD);
	CHECK(get(&q2, T0 + 3) == CACHE_MISS && got.len == 0);
	mkq(&q2, 5, "example.com", T_A, C_CH, Q_RD);
	CHECK(get(&q2, T0 + 3) == CACHE_MISS);
	qa(&q2, 6, "example.org", Q_RD);
	CHECK(get(&q2, T0 + 3) == CACHE_MISS);
	qa(&q2, 7, "example.com.example.com", Q_RD);
	CHECK(get(&q2, T0 + 3) == CACHE_MISS);
	qa(&q2, 8, "example.co", Q_RD);
	CHECK(get(&q2, T0 + 3) == CACHE_MISS);
	qa(&q2, 9, "www.example.com", Q_RD);
	CHECK(get(&q2, T0 + 3) == CACHE_MISS);
	/* a miss leaves the other entries alone */
	CHECK(cache_entries() == 1);
	CHECK(get(&q, T0 + 4) == CACHE_FRESH);
	cache_free();

	/*
	 * Case folding is ASCII letters only: '@' and '`', '[' and '{'
	 * differ by the case bit but are different bytes.
	 */
	setup(16, 0, 0);
	qa(&q, 1, "x@y.example", Q_RD);
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 1);
	CHECK(store(&q, &r, T0) != NULL);
	qa(&q2, 2, "x`y.example", Q_RD);
	CHECK(get(&q2, T0) == CACHE_MISS);
	qa(&q2, 3, "X@Y.EXAMPLE", Q_RD);
	CHECK(get(&q2, T0) == CACHE_FRESH);
	qa(&q, 4, "[.example", Q_RD);
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 2);
	CHECK(store(&q, &r, T0) != NULL);
	qa(&q2, 5, "{.example", Q_RD);
	CHECK(get(&q2, T0) == CACHE_MISS);
	CHECK(get(&q, T0) == CACHE_FRESH && a_of(got.m, got.len) == 2);
	cache_free();
}

/* DO=1 and DO=0 answers never stand in for each other. */
static void
test_key_do(void)
{
	struct query	 qd1, qd0, qno;
	struct mb	 r;

	setup(16, 0, 0);
	qa(&qd1, 1, "dnssec.example", Q_RD | Q_DO);
	qa(&qd0, 2, "dnssec.example", Q_RD | Q_OPT);
	qa(&qno, 3, "dnssec.example", Q_RD);
	resp_init(&r, &qd1, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 1);
	store(&qd1, &r, T0);
	CHECK(cache_entries() == 1);
	CHECK(get(&qd0, T0) == CACHE_MISS);	/* DO=0: not the DO=1 one */
	CHECK(get(&qno, T0) == CACHE_MISS);
	CHECK(get(&qd1, T0) == CACHE_FRESH && a_of(got.m, got.len) == 1);

	resp_init(&r, &qd0, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 2);
	store(&qd0, &r, T0);
	CHECK(cache_entries() == 2);
	CHECK(get(&qd0, T0) == CACHE_FRESH && a_of(got.m, got.len) == 2);
	CHECK(get(&qno, T0) == CACHE_FRESH && a_of(got.m, got.len) == 2);
	CHECK(get(&qd1, T0) == CACHE_FRESH && a_of(got.m, got.len) == 1);
	cache_free();

	/* The other way round: only a DO=0 answer is there. */
	setup(16, 0, 0);
	resp_init(&r, &qno, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 3);
	store(&qno, &r, T0);
	CHECK(cache_entries() == 1);
	CHECK(get(&qd1, T0) == CACHE_MISS);
	CHECK(get(&qd0, T0) == CACHE_FRESH && a_of(got.m, got.len) == 3);
	cache_free();
}

static void
test_key_cd(void)
{
	struct query	 q0, q1;
	struct mb	 r;

	setup(16, 0, 0);
	qa(&q0, 1, "cd.example", Q_RD | Q_OPT);
	qa(&q1, 2, "cd.example", Q_RD | Q_OPT | Q_CD);
	resp_init(&r, &q0, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 1);
	store(&q0, &r, T0);
	CHECK(get(&q1, T0) == CACHE_MISS);
	resp_init(&r, &q1, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 2);
	store(&q1, &r, T0);
	CHECK(cache_entries() == 2);
	CHECK(get(&q1, T0) == CACHE_FRESH && a_of(got.m, got.len) == 2);
	CHECK(got.len > 3 && (got.m[3] & 0x10));
	CHECK(get(&q0, T0) == CACHE_FRESH && a_of(got.m, got.len) == 1);
	CHECK(got.len > 3 && !(got.m[3] & 0x10));
	cache_free();

	/* CD=1 stored first: a CD=0 query misses it. */
	setup(16, 0, 0);
	resp_init(&r, &q1, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 2);
	store(&q1, &r, T0);
	CHECK(get(&q0, T0) == CACHE_MISS);
	CHECK(cache_entries() == 1);
	cache_free();
}

/* With and without OPT (DO=0), one entry serves both. */
static void
test_key_opt(void)
{
	struct query	 qo, qn;
	struct mb	 r;

	setup(16, 0, 0);
	qa(&qo, 1, "opt.example", Q_RD | Q_OPT);
	qa(&qn, 2, "opt.example", Q_RD);
	resp_init(&r, &qo, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 1);
	store(&qo, &r, T0);
	CHECK(get(&qn, T0) == CACHE_FRESH && a_of(got.m, got.len) == 1);
	resp_init(&r, &qn, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 2);
	store(&qn, &r, T0);
	CHECK(cache_entries() == 1);
	CHECK(lru_count() == 1);
	CHECK(get(&qo, T0) == CACHE_FRESH && a_of(got.m, got.len) == 2);
	cache_free();
}

/*
 * With --keep-ecs the ECS option's bytes are part of the key: another
 * subnet is another entry, the same subnet the same one.  Without it the
 * option is ignored.
 */
static void
test_key_ecs(void)
{
	static const uint8_t net1[] = { 192, 0, 2, 0 };
	static const uint8_t net2[] = { 198, 51, 100, 0 };
	struct query	 q1, q1b, q2, q1w, qn, qd;
	struct mb	 r;

	mkq_ecs(&q1, 1, "ecs.example", T_A, C_IN, Q_RD, 24, net1);
	mkq_ecs(&q1b, 2, "ECS.Example", T_A, C_IN, 0, 24, net1);
	mkq_ecs(&q2, 3, "ecs.example", T_A, C_IN, Q_RD, 24, net2);
	mkq_ecs(&q1w, 4, "ecs.example", T_A, C_IN, Q_RD, 23, net1);
	mkq_ecs(&qd, 5, "ecs.example", T_A, C_IN, Q_RD | Q_DO, 24, net1);
	qa(&qn, 6, "ecs.example", Q_RD | Q_OPT);
	CHECK(q1.qi.qi_ecsoff != 0 && q1.qi.qi_ecslen == 7);

	setup(16, 0, 0);
	cfg.cf_keep_ecs = 1;
	resp_init(&r, &q1, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 1);
	CHECK(store(&q1, &r, T0) != NULL);
	CHECK(get(&q2, T0) == CACHE_MISS);	/* another subnet */
	CHECK(get(&q1w, T0) == CACHE_MISS);	/* another prefix length */
	CHECK(get(&qn, T0) == CACHE_MISS);	/* no ECS at all */
	CHECK(get(&qd, T0) == CACHE_MISS);	/* same subnet, DO=1 */
	CHECK(get(&q1b, T0) == CACHE_FRESH && a_of(got.m, got.len) == 1);
	resp_init(&r, &q2, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 2);
	CHECK(store(&q2, &r, T0) != NULL);
	resp_init(&r, &qn, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 3);
	CHECK(store(&qn, &r, T0) != NULL);
	CHECK(cache_entries() == 3);
	CHECK(get(&q2, T0) == CACHE_FRESH && a_of(got.m, got.len) == 2);
	CHECK(get(&q1, T0) == CACHE_FRESH && a_of(got.m, got.len) == 1);
	CHECK(get(&qn, T0) == CACHE_FRESH && a_of(got.m, got.len) == 3);
	/* the stored ECS is a copy, not the freed query's bytes */
	CHECK(get(&q1b, T0) == CACHE_FRESH && a_of(got.m, got.len) == 1);
	cache_free();

	/* Without --keep-ecs every subnet shares one entry. */
	setup(16, 0, 0);
	resp_init(&r, &q1, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 1);
	CHECK(store(&q1, &r, T0) != NULL);
	CHECK(get(&q2, T0) == CACHE_FRESH && a_of(got.m, got.len) == 1);
	CHECK(get(&qn, T0) == CACHE_FRESH && a_of(got.m, got.len) == 1);
	CHECK(get(&q1w, T0) == CACHE_FRESH && a_of(got.m, got.len) == 1);
	CHECK(get(&qd, T0) == CACHE_MISS);	/* DO still counts */
	resp_init(&r, &q2, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 2);
	CHECK(store(&q2, &r, T0) != NULL);
	CHECK(cache_entries() == 1);
	CHECK(get(&q1, T0) == CACHE_FRESH && a_of(got.m, got.len) == 2);
	cache_free();
}

/*
 * Keys that hash alike are still told apart by what they hold: each
 * other key is given the stored one's hash, as a collision would.
 */
static void
test_key_collisions(void)
{
	static const uint8_t net1[] = { 192, 0, 2, 0 };
	static const uint8_t net2[] = { 192, 0, 3, 0 };
	struct query	 qs, qo[10];
	struct qkey	 ks, ko;
	struct mb	 r;
	enum cache_state st;
	uint8_t		*cs, *co;
	int		 i, n = 0, miss = 0;

	setup(16, 0, 0);
	cfg.cf_keep_ecs = 1;
	mkq_ecs(&qs, 1, "coll.example", T_A, C_IN, Q_RD, 24, net1);
	resp_init(&r, &qs, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 1);
	CHECK(store(&qs, &r, T0) != NULL);
	cs = dup_exact(qs.m, qs.len);
	mkkey(&ks, cs, &qs);
	mkq_ecs(&qo[n++], 2, "colm.example", T_A, C_IN, Q_RD, 24, net1);
	mkq_ecs(&qo[n++], 2, "coll.exampl", T_A, C_IN, Q_RD, 24, net1);
	mkq_ecs(&qo[n++], 2, "coll.example", T_AAAA, C_IN, Q_RD, 24, net1);
	mkq_ecs(&qo[n++], 2, "coll.example", T_A, C_CH, Q_RD, 24, net1);
	mkq_ecs(&qo[n++], 2, "coll.example", T_A, C_IN, Q_DO, 24, net1);
	mkq_ecs(&qo[n++], 2, "coll.example", T_A, C_IN, Q_CD, 24, net1);
	mkq_ecs(&qo[n++], 2, "coll.example", T_A, C_IN, Q_RD, 24, net2);
	mkq_ecs(&qo[n++], 2, "coll.example", T_A, C_IN, Q_RD, 22, net1);
	mkq_ecs(&qo[n++], 2, "coll.example", T_A, C_IN, Q_RD, 0, net1);
	for (i = 0; i < n; i++) {
		co = dup_exact(qo[i].m, qo[i].len);
		mkkey(&ko, co, &qo[i]);
		ko.k_hash = ks.k_hash;
		miss += cache_lookup(&ko, T0, &st) == NULL &&
		    st == CACHE_MISS;
		free(co);
	}
	CHECK(miss == n);
	/* the same key in another case, same hash: found */
	mkq_ecs(&qo[0], 3, "COLL.Example", T_A, C_IN, 0, 24, net1);
	co = dup_exact(qo[0].m, qo[0].len);
	mkkey(&ko, co, &qo[0]);
	CHECK(ko.k_hash == ks.k_hash);
	CHECK(cache_lookup(&ko, T0, &st) != NULL && st == CACHE_FRESH);
	free(co);
	free(cs);
	CHECK(cache_entries() == 1);
	cache_free();
}

/* ---- TTL extraction ---- */

static void
test_ttl_positive(void)
{
	struct query	 q;
	struct mb	 r;
	struct rrv	 rr[16];
	size_t		 cn;
	int		 n;

	setup(16, 0, 0);

	/* min over answer+authority; additional left out */
	qa(&q, 1, "www.pos.example", Q_RD | Q_OPT);
	resp_init(&r, &q, 0);
	cn = mb_rr_name(&r, AN, NULL, DNS_HDRLEN, T_CNAME, 300,
	    "t.example.net");
	mb_a(&r, AN, NULL, (uint16_t)cn, 260, 1);
	mb_rr_name(&r, NS, "example.net", 0, T_NS, 200, "ns.example.net");
	mb_a(&r, AR, "ns.example.net", 0, 10, 53);
	CHECK(store(&q, &r, T0) != NULL);
	CHECK(lifetime(&q) == 200);
	CHECK(get(&q, T0) == CACHE_FRESH);
	n = walk(got.m, got.len, rr, 16);
	CHECK(n == 4);
	if (n == 4) {
		CHECK(rr[0].type == T_CNAME && rr[0].ttl == 200);
		CHECK(rr[1].type == T_A && rr[1].ttl == 200);
		CHECK(rr[2].type == T_NS && rr[2].ttl == 200);
		CHECK(rr[3].type == T_A && rr[3].ttl == 10);
	}
	/* only the TTLs changed */
	CHECK(got.len == r.len);
	if (n == 4 && got.len == r.len) {
		memcpy(r.m + rr[0].ttloff, got.m + rr[0].ttloff, 4);
		memcpy(r.m + rr[1].ttloff, got.m + rr[1].ttloff, 4);
		memcpy(r.m + rr[2].ttloff, got.m + rr[2].ttloff, 4);
		CHECK(memcmp(got.m, r.m, r.len) == 0);
	}

	/* The answer section alone decides when authority is longer. */
	qa(&q, 2, "a.pos.example", Q_RD);
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 500, 1);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 450, 2);
	mb_rr_name(&r, NS, "pos.example", 0, T_NS, 900, "ns.pos.example");
	mb_a(&r, AR, "ns.pos.example", 0, 1, 53);
	store(&q, &r, T0);
	CHECK(lifetime(&q) == 450);

	/* Authority shorter than answer counts. */
	qa(&q, 3, "b.pos.example", Q_RD);
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 500, 1);
	mb_rr_name(&r, NS, "pos.example", 0, T_NS, 120, "ns.pos.example");
	store(&q, &r, T0);
	CHECK(lifetime(&q) == 120);

	/* Additional records shorter than both do not count. */
	qa(&q, 9, "f.pos.example", Q_RD);
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 500, 1);
	mb_a(&r, AR, "x.pos.example", 0, 1, 2);
	store(&q, &r, T0);
	CHECK(lifetime(&q) == 500);

	/* Raised to --min-ttl, every record with it. */
	cfg.cf_min_ttl = 60;
	qa(&q, 4, "c.pos.example", Q_RD);
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 5, 1);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 30, 2);
	mb_a(&r, AR, "x.pos.example", 0, 7, 3);
	store(&q, &r, T0);
	CHECK(lifetime(&q) == 60);
	CHECK(get(&q, T0) == CACHE_FRESH && all_ttls(got.m, got.len, 60));
	CHECK(get(&q, T0 + SEC(45)) == CACHE_FRESH && all_ttls(got.m, got.len, 15));
	cfg.cf_min_ttl = 0;

	/* Cut to --max-ttl, every record with it. */
	cfg.cf_max_ttl = 3600;
	qa(&q, 5, "d.pos.example", Q_RD);
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 100000, 1);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 200000, 2);
	mb_a(&r, AR, "x.pos.example", 0, 90000, 3);
	store(&q, &r, T0);
	CHECK(lifetime(&q) == 3600);
	CHECK(get(&q, T0) == CACHE_FRESH && all_ttls(got.m, got.len, 3600));
	CHECK(get(&q, T0 + SEC(3599)) == CACHE_FRESH && all_ttls(got.m, got.len, 1));
	CHECK(get(&q, T0 + SEC(3600)) == CACHE_MISS);

	/* The largest TTL allowed, 2^31 - 1, is kept (and cut). */
	qa(&q, 6, "e.pos.example", Q_RD);
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 0x7fffffffu, 1);
	store(&q, &r, T0);
	CHECK(lifetime(&q) == 3600);
	cfg.cf_max_ttl = 86400;
	cache_free();
}

static void
test_ttl_negative(void)
{
	struct query	 q;
	struct mb	 r;
	struct rrv	 rr[8];

	setup(16, 0, 0);
	/* "\2nx\7example\3com": example.com starts at offset 15. */
	qa(&q, 1, "nx.example.com", Q_RD);
	resp_init(&r, &q, RC_NXDOMAIN);
	mb_soa(&r, NS, NULL, 15, 900, 300);
	CHECK(store(&q, &r, T0) != NULL);
	CHECK(lifetime(&q) == 300);	/* MINIMUM below the SOA TTL */
	CHECK(get(&q, T0) == CACHE_FRESH && (got.m[3] & 0x0f) == RC_NXDOMAIN);
	CHECK(walk(got.m, got.len, rr, 8) == 1 && rr[0].type == T_SOA &&
	    rr[0].ttl == 300);

	qa(&q, 2, "nx2.example.com", Q_RD);
	resp_init(&r, &q, RC_NXDOMAIN);
	mb_soa(&r, NS, NULL, 16, 200, 300);
	store(&q, &r, T0);
	CHECK(lifetime(&q) == 200);	/* SOA TTL below MINIMUM */

	cfg.cf_neg_max_ttl = 100;
	qa(&q, 3, "nx3.example.com", Q_RD);
	resp_init(&r, &q, RC_NXDOMAIN);
	mb_soa(&r, NS, NULL, 16, 900, 300);
	store(&q, &r, T0);
	CHECK(lifetime(&q) == 100);	/* --neg-max-ttl */
	CHECK(get(&q, T0) == CACHE_FRESH && all_ttls(got.m, got.len, 100));
	cfg.cf_neg_max_ttl = 3600;

	/* NODATA: NOERROR, empty answer, SOA in authority. */
	mkq(&q, 4, "nodata.example.com", T_AAAA, C_IN, Q_RD);
	resp_init(&r, &q, 0);
	mb_soa(&r, NS, NULL, 19, 900, 600);
	store(&q, &r, T0);
	CHECK(lifetime(&q) == 600);
	CHECK(get(&q, T0) == CACHE_FRESH && (got.m[3] & 0x0f) == 0 &&
	    dns_get16(got.m + 6) == 0 && dns_get16(got.m + 8) == 1);

	mkq(&q, 5, "nodata2.example.com", T_AAAA, C_IN, Q_RD);
	resp_init(&r, &q, 0);
	mb_soa(&r, NS, NULL, 20, 150, 600);
	store(&q, &r, T0);
	CHECK(lifetime(&q) == 150);

	cfg.cf_neg_max_ttl = 60;
	mkq(&q, 6, "nodata3.example.com", T_AAAA, C_IN, Q_RD);
	resp_init(&r, &q, 0);
	mb_soa(&r, NS, NULL, 20, 900, 600);
	store(&q, &r, T0);
	CHECK(lifetime(&q) == 60);
	cfg.cf_neg_max_ttl = 3600;

	/* The negative limit applies even when --max-ttl is higher. */
	cfg.cf_neg_max_ttl = 10;
	qa(&q, 7, "nx4.example.com", Q_RD | Q_OPT);
	resp_init(&r, &q, RC_NXDOMAIN);
	mb_soa(&r, NS, NULL, 16, 900, 900);
	store(&q, &r, T0);
	CHECK(lifetime(&q) == 10);
	cfg.cf_neg_max_ttl = 3600;

	/* --max-ttl does not cut negative answers, --min-ttl raises them. */
	cfg.cf_max_ttl = 100;
	qa(&q, 11, "nx5.example.com", Q_RD);
	resp_init(&r, &q, RC_NXDOMAIN);
	mb_soa(&r, NS, NULL, 16, 900, 500);
	store(&q, &r, T0);
	CHECK(lifetime(&q) == 500);
	cfg.cf_max_ttl = 86400;
	cfg.cf_min_ttl = 50;
	qa(&q, 12, "nx6.example.com", Q_RD);
	resp_init(&r, &q, RC_NXDOMAIN);
	mb_soa(&r, NS, NULL, 16, 900, 20);
	store(&q, &r, T0);
	CHECK(lifetime(&q) == 50);
	cfg.cf_min_ttl = 0;

	CHECK(cache_entries() == 9);

	/* Without a SOA, negative answers are not kept. */
	qa(&q, 8, "nosoa.example.com", Q_RD);
	resp_init(&r, &q, RC_NXDOMAIN);
	CHECK(store(&q, &r, T0) == NULL);
	CHECK(lifetime(&q) == -1);
	resp_init(&r, &q, RC_NXDOMAIN);
	mb_rr_name(&r, NS, "example.com", 0, T_NS, 300, "ns.example.com");
	CHECK(store(&q, &r, T0) == NULL);
	CHECK(lifetime(&q) == -1);
	mkq(&q, 9, "nosoa.example.com", T_AAAA, C_IN, Q_RD);
	resp_init(&r, &q, 0);
	CHECK(store(&q, &r, T0) == NULL);	/* NODATA without SOA */
	CHECK(lifetime(&q) == -1);
	resp_init(&r, &q, 0);
	mb_rr_name(&r, NS, "example.com", 0, T_NS, 300, "ns.example.com");
	mb_a(&r, AR, "ns.example.com", 0, 300, 1);
	CHECK(store(&q, &r, T0) == NULL);	/* a referral-like NODATA */
	CHECK(lifetime(&q) == -1);
	/* A SOA whose rdata is too short to hold MINIMUM is no SOA. */
	{
		uint8_t	 rd[21];

		memset(rd, 0, sizeof(rd));
		rd[20] = 60;
		qa(&q, 10, "shortsoa.example.com", Q_RD);
		resp_init(&r, &q, RC_NXDOMAIN);
		mb_rr(&r, NS, NULL, 21, T_SOA, C_IN, 300, rd, sizeof(rd));
		CHECK(store(&q, &r, T0) == NULL);
		CHECK(lifetime(&q) == -1);
		mkq(&q, 9, "nosoa.example.com", T_AAAA, C_IN, Q_RD);
	}
	/* A SOA in the additional section is not the authority's. */
	resp_init(&r, &q, RC_NXDOMAIN);
	mb_soa(&r, AR, NULL, 18, 900, 300);
	CHECK(store(&q, &r, T0) == NULL);
	CHECK(lifetime(&q) == -1);
	/* A SOA MINIMUM of 0 means do not keep. */
	resp_init(&r, &q, RC_NXDOMAIN);
	mb_soa(&r, NS, NULL, 18, 900, 0);
	CHECK(store(&q, &r, T0) == NULL);
	CHECK(cache_entries() == 9);
	CHECK(get(&q, T0) == CACHE_MISS);
	cache_free();
}

/*
 * A CNAME whose target has no data of the type asked (NOERROR, the CNAME
 * in the answer section, a SOA in authority) is a NODATA answer for the
 * QNAME at the end of the chain, and one whose target does not exist an
 * NXDOMAIN (RFC 2308 sections 1, 2.1 and 2.2): they are kept no longer
 * than min(SOA TTL, SOA MINIMUM) and --neg-max-ttl.
 */
static void
test_ttl_cname_negative(void)
{
	struct query	 q;
	struct mb	 r;
	size_t		 cn;

	setup(16, 0, 0);
	mkq(&q, 1, "alias.example.com", T_AAAA, C_IN, Q_RD);
	resp_init(&r, &q, 0);
	mb_rr_name(&r, AN, NULL, DNS_HDRLEN, T_CNAME, 3600, "t.example.net");
	mb_soa(&r, NS, "example.net", 0, 3600, 60);
	CHECK(store(&q, &r, T0) != NULL);
	CHECK(lifetime(&q) == 60);
	CHECK(get(&q, T0) == CACHE_FRESH && all_ttls(got.m, got.len, 60));

	cfg.cf_neg_max_ttl = 600;
	mkq(&q, 2, "alias2.example.com", T_AAAA, C_IN, Q_RD);
	resp_init(&r, &q, 0);
	mb_rr_name(&r, AN, NULL, DNS_HDRLEN, T_CNAME, 86400, "t.example.net");
	mb_soa(&r, NS, "example.net", 0, 86400, 86400);
	store(&q, &r, T0);
	CHECK(lifetime(&q) == 600);
	cfg.cf_neg_max_ttl = 3600;

	/* NXDOMAIN at the end of a two-link chain. */
	qa(&q, 3, "alias3.example.com", Q_RD);
	resp_init(&r, &q, RC_NXDOMAIN);
	cn = mb_rr_name(&r, AN, NULL, DNS_HDRLEN, T_CNAME, 3600,
	    "b.example.net");
	mb_rr_name(&r, AN, NULL, (uint16_t)cn, T_CNAME, 3600,
	    "gone.example.net");
	mb_soa(&r, NS, "example.net", 0, 3600, 120);
	CHECK(store(&q, &r, T0) != NULL);
	CHECK(lifetime(&q) == 120);
	CHECK(get(&q, T0) == CACHE_FRESH &&
	    (got.m[3] & 0x0f) == RC_NXDOMAIN && all_ttls(got.m, got.len, 120));

	/* A CNAME shorter than the SOA's negative TTL bounds it. */
	qa(&q, 4, "alias4.example.com", Q_RD);
	resp_init(&r, &q, RC_NXDOMAIN);
	mb_rr_name(&r, AN, NULL, DNS_HDRLEN, T_CNAME, 30, "gone.example.net");
	mb_soa(&r, NS, "example.net", 0, 3600, 120);
	store(&q, &r, T0);
	CHECK(lifetime(&q) == 30);

	/* The chain without a SOA is not kept, NXDOMAIN or NODATA. */
	qa(&q, 5, "alias5.example.com", Q_RD);
	resp_init(&r, &q, RC_NXDOMAIN);
	mb_rr_name(&r, AN, NULL, DNS_HDRLEN, T_CNAME, 300, "gone.example.net");
	CHECK(store(&q, &r, T0) == NULL);
	CHECK(lifetime(&q) == -1);
	cache_free();
}

/* Stores r for q and checks nothing was kept. */
static void
check_not_cached(const struct query *q, const struct mb *r, int line)
{
	int	 before = cache_entries(), nf = check_failed;

	CHECK(store(q, r, T0) == NULL);
	CHECK(lifetime(q) == -1);
	CHECK(cache_entries() == before);
	CHECK(get(q, T0) == CACHE_MISS);
	if (check_failed != nf) {
		fprintf(stderr, "  (NOT_CACHED at line %d)\n", line);
		/* start again, so that one failure does not hide the next */
		cache_free();
		cache_init(&cfg);
	}
}
#define NOT_CACHED(q, r)	check_not_cached((q), (r), __LINE__)

static void
test_uncacheable(void)
{
	static const int rcodes[] = { RC_FORMERR, RC_SERVFAIL, RC_NOTIMP,
	    RC_REFUSED, RC_YXDOMAIN };
	struct query	 q;
	struct mb	 r;
	size_t		 i;

	setup(16, 0, 0);
	qa(&q, 1, "bad.example", Q_RD | Q_OPT);
	for (i = 0; i < sizeof(rcodes) / sizeof(rcodes[0]); i++) {
		resp_init(&r, &q, rcodes[i]);
		mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 1);
		NOT_CACHED(&q, &r);
		resp_init(&r, &q, rcodes[i]);
		mb_soa(&r, NS, NULL, 16, 300, 300);
		NOT_CACHED(&q, &r);
	}

	/* TC=1 */
	resp_init(&r, &q, 0);
	r.m[2] |= 0x02;
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 1);
	NOT_CACHED(&q, &r);
	resp_init(&r, &q, RC_NXDOMAIN);
	r.m[2] |= 0x02;
	mb_soa(&r, NS, NULL, 16, 300, 300);
	NOT_CACHED(&q, &r);

	/* A TTL of 0 in the answer or authority section. */
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 1);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 0, 2);
	NOT_CACHED(&q, &r);
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 1);
	mb_rr_name(&r, NS, "example", 0, T_NS, 0, "ns.example");
	NOT_CACHED(&q, &r);
	resp_init(&r, &q, RC_NXDOMAIN);
	mb_soa(&r, NS, NULL, 16, 0, 300);
	NOT_CACHED(&q, &r);
	cfg.cf_min_ttl = 60;	/* not even with a floor */
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 0, 1);
	NOT_CACHED(&q, &r);
	cfg.cf_min_ttl = 0;
	/* RFC 2181 8: a TTL with the top bit set is 0, in any record. */
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 1);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 0x80000000u, 2);
	NOT_CACHED(&q, &r);
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 0xffffffffu, 1);
	NOT_CACHED(&q, &r);
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 1);
	mb_rr_name(&r, NS, "example", 0, T_NS, 0x80000001u, "ns.example");
	NOT_CACHED(&q, &r);
	resp_init(&r, &q, RC_NXDOMAIN);
	mb_soa(&r, NS, NULL, 16, 0x90000000u, 300);
	NOT_CACHED(&q, &r);
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 1);
	mb_a(&r, AR, "ns.example", 0, 0x80000000u, 2);
	NOT_CACHED(&q, &r);

	/* An OPT still there: last, not last, outside additional, two. */
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 1);
	mb_opt(&r, 1232, 0, NULL, 0);
	NOT_CACHED(&q, &r);
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 1);
	mb_opt(&r, 1232, 0, NULL, 0);
	mb_a(&r, AR, "ns.example", 0, 300, 2);
	NOT_CACHED(&q, &r);
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 1);
	mb_rr(&r, AN, ".", 0, DNS_TYPE_OPT, 1232, 300, NULL, 0);
	NOT_CACHED(&q, &r);
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 1);
	mb_rr(&r, NS, ".", 0, DNS_TYPE_OPT, 1232, 300, NULL, 0);
	NOT_CACHED(&q, &r);
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 1);
	mb_opt(&r, 1232, 0, NULL, 0);
	mb_opt(&r, 1232, 0, NULL, 0);
	NOT_CACHED(&q, &r);

	/* Counts that do not match the records. */
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 1);
	dns_put16(r.m + 6, 2);			/* one too many */
	NOT_CACHED(&q, &r);
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 1);
	dns_put16(r.m + 10, 0xffff);		/* far too many */
	NOT_CACHED(&q, &r);
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 1);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 2);
	dns_put16(r.m + 6, 1);			/* too few: trailing record */
	NOT_CACHED(&q, &r);
	/* Cut short: in the rdata, the fixed part, the owner name. */
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 1);
	r.len--;
	NOT_CACHED(&q, &r);
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 1);
	r.len -= 9;
	NOT_CACHED(&q, &r);
	resp_init(&r, &q, 0);
	mb_a(&r, AN, "ns.example", 0, 300, 1);
	r.len = q.qi.qi_qend + 4;
	NOT_CACHED(&q, &r);
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 1);
	r.len = q.qi.qi_qend + 1;		/* half a pointer */
	NOT_CACHED(&q, &r);
	resp_init(&r, &q, 0);
	dns_put16(r.m + 6, 1);			/* a count, no record */
	NOT_CACHED(&q, &r);
	/* rdlength beyond the end */
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 1);
	dns_put16(r.m + r.len - 6, 0xffff);
	NOT_CACHED(&q, &r);
	/* Trailing garbage. */
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 1);
	mb_u8(&r, 0);
	NOT_CACHED(&q, &r);
	resp_init(&r, &q, RC_NXDOMAIN);
	mb_soa(&r, NS, NULL, 16, 300, 300);
	mb_u16(&r, 0xc00c);
	NOT_CACHED(&q, &r);
	/* A compression pointer forwards, or to itself. */
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, (uint16_t)(q.qi.qi_qend + 20), 300, 1);
	NOT_CACHED(&q, &r);
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, (uint16_t)q.qi.qi_qend, 300, 1);
	NOT_CACHED(&q, &r);
	/* A label type other than 0 or 3 in an owner name. */
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 1);
	r.m[q.qi.qi_qend] = 0x40;
	NOT_CACHED(&q, &r);
	CHECK(cache_entries() == 0);
	cache_free();
}

/*
 * An answer cache.c may not keep leaves what is there alone: a refresh
 * that fails must not take away what serve-stale would answer with.
 */
static void
test_uncacheable_keeps_entry(void)
{
	struct query	 q;
	struct mb	 r;

	setup(16, 0, 60);
	qa(&q, 1, "keep.example", Q_RD);
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 100, 1);
	CHECK(store(&q, &r, T0) != NULL);
	resp_init(&r, &q, RC_SERVFAIL);
	CHECK(store(&q, &r, T0 + SEC(10)) == NULL);
	CHECK(get(&q, T0 + SEC(10)) == CACHE_FRESH && a_of(got.m, got.len) == 1 &&
	    a_ttl(got.m, got.len) == 90);
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 0, 2);
	CHECK(store(&q, &r, T0 + SEC(20)) == NULL);
	CHECK(get(&q, T0 + SEC(20)) == CACHE_FRESH && a_of(got.m, got.len) == 1);
	resp_init(&r, &q, RC_REFUSED);
	CHECK(store(&q, &r, T0 + SEC(110)) == NULL);
	CHECK(get(&q, T0 + SEC(110)) == CACHE_STALE && a_of(got.m, got.len) == 1);
	CHECK(cache_entries() == 1);
	cache_free();
}

/* Up to CACHE_MSGMAX bytes are kept, not one more. */
static void
test_size_limit(void)
{
	struct query	 q, qo;
	struct mb	 r;
	uint8_t		*out;
	size_t		 n;

	setup(16, 0, 0);
	qa(&q, 1, "big.example", Q_RD);
	qa(&qo, 2, "big.example", Q_RD | Q_OPT);
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 1);
	mb_pad_to(&r, AN, CACHE_MSGMAX + 1);
	CHECK(r.len == CACHE_MSGMAX + 1);
	NOT_CACHED(&q, &r);
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 1);
	mb_pad_to(&r, AN, 2000);
	NOT_CACHED(&q, &r);

	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 1);
	mb_pad_to(&r, AN, CACHE_MSGMAX);
	CHECK(r.len == CACHE_MSGMAX);
	CHECK(store(&q, &r, T0) != NULL);
	CHECK(lifetime(&q) == 300);
	/* rendered into a block of exactly CACHE_MSGMAX bytes */
	CHECK(get(&q, T0) == CACHE_FRESH && got.len == CACHE_MSGMAX);
	CHECK(memcmp(got.m, r.m, CACHE_MSGMAX) == 0);
	/* a client with OPT: query.c adds its own after the body */
	out = malloc(CACHE_MSGMAX + 11);
	memcpy(out, got.m, got.len);
	n = dns_finish(out, got.len, CACHE_MSGMAX + 11, qo.m, &qo.qi,
	    EDE_NONE, "");
	CHECK(n == CACHE_MSGMAX + 11 && opt_count(out, n) == 1);
	free(out);
	cache_free();
}

/* ---- how a hit is rendered, and rewritten for its client ---- */

/*
 * Stores an answer (CNAME, two A, NS, additional A) for store_flags, asks
 * it secs seconds (and 999 ms) later as a client with client_flags and
 * other letter case, makes it that client's answer as query.c does
 * (dns_finish), and compares what comes out with the answer rebuilt by
 * hand.
 */
static void
hit_case(int store_flags, int client_flags, int resp_rd, int upper_store,
    int secs, int line)
{
	struct query	 sq, cq;
	struct mb	 r, x;
	struct rrv	 rr[16];
	uint8_t		*out;
	size_t		 cn, qend, len;
	uint32_t	 t[5];
	int		 n, k, nf = check_failed;

	setup(16, 0, 0);
	qa(&sq, 0x1111, "www.example.com", store_flags);
	if (upper_store)
		recase(sq.m, sq.qi.qi_qend, 1);
	qa(&cq, 0xbeef, "wWw.ExAmPlE.cOm", client_flags);
	qend = cq.qi.qi_qend;

	resp_init(&r, &sq, 0);
	r.m[2] = (uint8_t)((r.m[2] & ~0x01) | (resp_rd ? 0x01 : 0));
	cn = mb_rr_name(&r, AN, NULL, DNS_HDRLEN, T_CNAME, 600,
	    "cdn.example.net");
	mb_a(&r, AN, NULL, (uint16_t)cn, 300, 7);
	mb_a(&r, AN, NULL, (uint16_t)cn, 400, 8);
	mb_rr_name(&r, NS, NULL, 16, T_NS, 3600, "ns1.example.com");
	mb_a(&r, AR, "ns1.example.com", 0, 100, 53);
	CHECK(store(&sq, &r, T0) != NULL);
	CHECK(lifetime(&sq) == 300);

	CHECK(get(&cq, T0 + SEC(secs) + 999) == CACHE_FRESH);
	if (got.len == 0)
		goto done;
	/* The body as stored: upstream ID, its case; query.c fixes them. */
	CHECK(got.len == r.len && memcmp(got.m, r.m, qend) == 0);
	out = malloc(got.len + 11);
	memcpy(out, got.m, got.len);
	len = dns_finish(out, got.len, got.len + 11, cq.m, &cq.qi, EDE_NONE,
	    "");
	CHECK(dns_get16(out) == 0xbeef);
	CHECK(len > qend && memcmp(out + DNS_HDRLEN, cq.m + DNS_HDRLEN,
	    qend - DNS_HDRLEN) == 0);
	CHECK((out[2] & 0x01) == (cq.m[2] & 0x01));
	CHECK((out[2] & 0x80) && (out[3] & 0x0f) == 0);

	/* Every record's TTL aged by whole seconds. */
	t[0] = t[1] = t[2] = t[3] = 300 - (uint32_t)secs;
	t[4] = secs < 100 ? 100 - (uint32_t)secs : 0;
	n = walk(out, len, rr, 16);
	CHECK(n == ((client_flags & (Q_OPT | Q_DO)) ? 6 : 5));
	CHECK(dns_get16(out + 6) == 3 && dns_get16(out + 8) == 1);
	for (k = 0; k < 5 && k < n; k++)
		CHECK(rr[k].type != DNS_TYPE_OPT && rr[k].ttl == t[k]);
	if (client_flags & (Q_OPT | Q_DO)) {
		CHECK(dns_get16(out + 10) == 2);
		CHECK(n == 6 && rr[5].type == DNS_TYPE_OPT &&
		    rr[5].class == EDNS_PAYLOAD && rr[5].rdlen == 0 &&
		    rr[5].ttl == ((client_flags & Q_DO) ? 0x8000u : 0));
	} else {
		CHECK(dns_get16(out + 10) == 1);
		CHECK(opt_count(out, len) == 0);
	}

	/* The whole answer, rebuilt by hand. */
	memcpy(x.m, r.m, r.len);
	x.len = r.len;
	dns_put16(x.m, 0xbeef);
	memcpy(x.m + DNS_HDRLEN, cq.m + DNS_HDRLEN, qend - DNS_HDRLEN);
	x.m[2] = (uint8_t)((x.m[2] & ~0x01) | (cq.m[2] & 0x01));
	if (walk(x.m, x.len, rr, 16) == 5)
		for (k = 0; k < 5; k++) {
			dns_put16(x.m + rr[k].ttloff, (uint16_t)(t[k] >> 16));
			dns_put16(x.m + rr[k].ttloff + 2, (uint16_t)t[k]);
		}
	if (client_flags & (Q_OPT | Q_DO))
		mb_opt(&x, EDNS_PAYLOAD, (client_flags & Q_DO) != 0, NULL, 0);
	CHECK(len == x.len && memcmp(out, x.m, x.len) == 0);
	free(out);
done:
	if (check_failed != nf)
		fprintf(stderr, "  (in hit_case called from line %d)\n", line);
	cache_free();
}

static void
test_hit_rewrite(void)
{
	/* store flags, client flags, upstream RD, stored upper case, age */
	hit_case(Q_RD | Q_DO, Q_DO, 1, 0, 7, __LINE__);
	hit_case(Q_RD | Q_DO, Q_RD | Q_DO, 1, 1, 0, __LINE__);
	hit_case(Q_OPT, Q_RD, 0, 1, 7, __LINE__);
	hit_case(Q_OPT, 0, 0, 0, 99, __LINE__);
	hit_case(Q_RD, Q_RD | Q_OPT, 1, 0, 1, __LINE__);
	hit_case(0, Q_RD | Q_OPT, 0, 1, 250, __LINE__);
	hit_case(Q_RD | Q_OPT, Q_OPT, 1, 0, 299, __LINE__);
	hit_case(Q_RD, Q_RD, 1, 0, 0, __LINE__);
}

/*
 * Rendering is a pure function of the entry and `now`: whole seconds,
 * never below 0, never changing the entry or the LRU order.
 */
static void
test_render(void)
{
	struct query		 q, q2;
	struct mb		 r;
	struct rrv		 rr[8];
	const struct centry	*e;
	uint8_t			 first[CACHE_MSGMAX];
	size_t			 flen;
	int			 n;

	setup(16, 0, 0);
	qa(&q, 9, "age.example", Q_RD | Q_OPT);
	qa(&q2, 10, "other.example", Q_RD);
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 100, 1);
	mb_a(&r, AR, "ns.age.example", 0, 5, 2);
	e = store(&q, &r, T0);
	CHECK(e != NULL);
	if (e == NULL) {
		cache_free();
		return;
	}
	/* the entry store returns renders like a hit at the same time */
	render(e, T0, 0);
	CHECK(got.len == r.len && memcmp(got.m, r.m, r.len) == 0);
	memcpy(first, got.m, got.len);
	flen = got.len;

	/* 2.9 s: still 2 whole seconds */
	CHECK(get(&q, T0 + 2900) == CACHE_FRESH && a_ttl(got.m, got.len) == 98);
	render(e, T0 + SEC(50), 0);
	n = walk(got.m, got.len, rr, 8);
	CHECK(n == 2 && rr[0].ttl == 50 && rr[1].ttl == 0);	/* not -45 */
	/* an earlier `now` again: nothing was changed by rendering */
	render(e, T0 + SEC(10), 0);
	n = walk(got.m, got.len, rr, 8);
	CHECK(n == 2 && rr[0].ttl == 90 && rr[1].ttl == 0);
	render(e, T0 + SEC(3), 0);
	n = walk(got.m, got.len, rr, 8);
	CHECK(n == 2 && rr[0].ttl == 97 && rr[1].ttl == 2);
	render(e, T0, 0);
	CHECK(got.len == flen && memcmp(got.m, first, flen) == 0);
	/* stale: every TTL pinned, whatever its own */
	render(e, T0 + SEC(5), 1);
	CHECK(all_ttls(got.m, got.len, STALE_TTL));
	render(e, T0, 0);
	CHECK(got.len == flen && memcmp(got.m, first, flen) == 0);

	/* rendering does not touch the LRU order; a fresh lookup does */
	resp_init(&r, &q2, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 100, 3);
	CHECK(store(&q2, &r, T0) != NULL);
	CHECK(lru_pos(&q2) == 0 && lru_pos(&q) == 1);
	render(e, T0 + 1, 0);
	CHECK(lru_pos(&q2) == 0 && lru_pos(&q) == 1);
	CHECK(get(&q, T0 + 2) == CACHE_FRESH);
	CHECK(lru_pos(&q) == 0 && lru_pos(&q2) == 1);
	cache_free();
}

/* ---- expiry, serve-stale, prefetch ---- */

static void
test_expiry(void)
{
	struct query	 q, qc;
	struct mb	 r;

	setup(16, 0, 0);
	qa(&q, 1, "exp.example", Q_RD);
	qa(&qc, 2, "EXP.example", Q_RD);
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 100, 1);
	store(&q, &r, T0);
	CHECK(get(&qc, T0 + SEC(99)) == CACHE_FRESH && a_ttl(got.m, got.len) == 1);
	CHECK(get(&qc, T0 + SEC(100) - 1) == CACHE_FRESH && a_ttl(got.m, got.len) == 1);
	CHECK(cache_entries() == 1);
	CHECK(get(&qc, T0 + SEC(100)) == CACHE_MISS && got.len == 0);
	CHECK(cache_entries() == 0);	/* dropped */
	CHECK(lifetime(&q) == -1 && lru_count() == 0);
	CHECK(get(&q, T0 + SEC(100)) == CACHE_MISS);
	/* and the slot is reused without an eviction */
	CHECK(store(&q, &r, T0 + SEC(101)) != NULL);
	CHECK(cache_entries() == 1 && stats.st_cache_evictions == 0);
	CHECK(get(&q, T0 + SEC(101)) == CACHE_FRESH && a_ttl(got.m, got.len) == 100);
	cache_free();

	/* Long after: gone too, whatever the serve-stale window was. */
	setup(16, 0, 0);
	store(&q, &r, T0);
	CHECK(get(&q, T0 + SEC(86400)) == CACHE_MISS);
	CHECK(cache_entries() == 0);
	cache_free();
}

static void
test_stale(void)
{
	struct query	 q, qc;
	struct mb	 r;
	struct rrv	 rr[8];
	int		 n;

	setup(16, 0, 60);
	qa(&q, 1, "stale.example", Q_RD | Q_OPT);
	qa(&qc, 0x4242, "STALE.example", Q_OPT);
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 100, 1);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 200, 2);
	mb_rr_name(&r, NS, "example", 0, T_NS, 500, "ns.example");
	mb_a(&r, AR, "ns.example", 0, 5, 3);
	store(&q, &r, T0);

	CHECK(get(&qc, T0 + SEC(100) - 1) == CACHE_FRESH);
	CHECK(a_ttl(got.m, got.len) == 1);
	CHECK(get(&qc, T0 + SEC(100)) == CACHE_STALE);
	CHECK(all_ttls(got.m, got.len, STALE_TTL));
	n = walk(got.m, got.len, rr, 8);
	CHECK(n == 4 && rr[3].type == T_A && rr[3].ttl == STALE_TTL);
	CHECK(a_of(got.m, got.len) == 1);
	CHECK(cache_entries() == 1);
	CHECK(get(&qc, T0 + SEC(130)) == CACHE_STALE && all_ttls(got.m, got.len, 30));
	CHECK(get(&q, T0 + SEC(160) - 1) == CACHE_STALE);	/* 59.999 s */
	CHECK(cache_entries() == 1);
	CHECK(get(&q, T0 + SEC(160)) == CACHE_MISS);		/* 60 s: gone */
	CHECK(cache_entries() == 0);
	CHECK(entry_of(&q) == NULL);
	CHECK(get(&q, T0 + SEC(130)) == CACHE_MISS);
	CHECK(stats.st_cache_evictions == 0);

	/* A refresh of a stale entry makes it fresh again. */
	store(&q, &r, T0);
	CHECK(get(&q, T0 + SEC(120)) == CACHE_STALE);
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 9);
	CHECK(store(&q, &r, T0 + SEC(121)) != NULL);
	CHECK(cache_entries() == 1);
	CHECK(get(&qc, T0 + SEC(121)) == CACHE_FRESH && a_of(got.m, got.len) == 9 &&
	    a_ttl(got.m, got.len) == 300);
	cache_free();

	/* Without --serve-stale, expired is gone at once. */
	setup(16, 0, 0);
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 100, 1);
	store(&q, &r, T0);
	CHECK(get(&q, T0 + SEC(100)) == CACHE_MISS && cache_entries() == 0);
	cache_free();
}

static void
prefetch_case(uint32_t ttl, int min_ttl, int64_t at, int expect, int line)
{
	struct query	 q, qc;
	struct mb	 r;
	struct centry	*e;
	enum cache_state st;
	int		 nf = check_failed;

	setup(16, min_ttl, 0);
	qa(&q, 1, "pf.example", Q_RD | Q_OPT);
	qa(&qc, 0x7777, "PF.example", Q_RD);
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, ttl, 1);
	store(&q, &r, T0);
	e = find(&qc, T0 + at, &st);
	CHECK(st == CACHE_FRESH && e != NULL);
	if (e != NULL)
		CHECK(cache_prefetch_due(e, T0 + at) == expect);
	if (check_failed != nf)
		fprintf(stderr, "  (in prefetch_case called from line %d)\n",
		    line);
	cache_free();
}

static void
test_prefetch(void)
{
	/* in the last tenth of the entry's life, not before */
	prefetch_case(100, 0, 0, 0, __LINE__);
	prefetch_case(100, 0, SEC(50), 0, __LINE__);
	prefetch_case(100, 0, SEC(89), 0, __LINE__);
	prefetch_case(100, 0, SEC(90), 0, __LINE__);
	prefetch_case(100, 0, SEC(90) + 1, 1, __LINE__);
	prefetch_case(100, 0, SEC(95), 1, __LINE__);
	prefetch_case(100, 0, SEC(100) - 1, 1, __LINE__);
	prefetch_case(10, 0, SEC(8), 0, __LINE__);
	prefetch_case(10, 0, SEC(9) + 1, 1, __LINE__);
	prefetch_case(1, 0, 0, 0, __LINE__);
	prefetch_case(1, 0, 901, 1, __LINE__);
	/* the life is the clamped one: 5 s raised to 60 */
	prefetch_case(5, 60, SEC(10), 0, __LINE__);
	prefetch_case(5, 60, SEC(54), 0, __LINE__);
	prefetch_case(5, 60, SEC(54) + 1, 1, __LINE__);
	prefetch_case(86400 * 30, 0, SEC(86400 - 8640), 0, __LINE__);
	prefetch_case(86400 * 30, 0, SEC(86400 - 8640) + 1, 1, __LINE__);
}

/* ---- LRU, size 0, replacing ---- */

static void
store_a(const char *name, uint32_t ttl, uint8_t x, int64_t now)
{
	struct query	 q;
	struct mb	 r;

	qa(&q, 1, name, Q_RD);
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, ttl, x);
	if (store(&q, &r, now) == NULL)
		api_bad++;
}

/* 1 when name is a fresh hit at now (with x when x != 0). */
static int
hits(const char *name, int x, int64_t now)
{
	struct query	 q;

	qa(&q, 2, name, Q_RD);
	return get(&q, now) == CACHE_FRESH && (x == 0 || a_of(got.m, got.len) == x);
}

/* The state of name at now, without a side effect. */
static int
present(const char *name)
{
	struct query	 q;

	qa(&q, 2, name, Q_RD);
	return entry_of(&q) != NULL;
}

static void
test_lru(void)
{
	char	 name[32];
	int	 i, over = 0, bad = 0;

	setup(3, 0, 0);
	store_a("a.lru", 10, 1, T0);
	store_a("b.lru", 300, 2, T0);
	store_a("c.lru", 300, 3, T0);
	CHECK(cache_entries() == 3 && lru_count() == 3);
	CHECK(stats.st_cache_evictions == 0);
	CHECK(hits("a.lru", 1, T0 + SEC(1)));	/* a is now the most recent */
	store_a("d.lru", 300, 4, T0 + SEC(2));	/* b goes */
	CHECK(cache_entries() == 3 && lru_count() == 3);
	CHECK(stats.st_cache_evictions == 1);
	CHECK(!present("b.lru"));
	CHECK(present("a.lru") && present("c.lru") && present("d.lru"));
	CHECK(!hits("b.lru", 0, T0 + SEC(3)));
	CHECK(hits("a.lru", 1, T0 + SEC(3)));
	CHECK(hits("c.lru", 3, T0 + SEC(3)));
	CHECK(hits("d.lru", 4, T0 + SEC(3)));

	/* Recency now d, c, a: a has expired, and goes without counting. */
	store_a("e.lru", 300, 5, T0 + SEC(20));
	CHECK(stats.st_cache_evictions == 1);
	CHECK(cache_entries() == 3 && lru_count() == 3);
	CHECK(!present("a.lru"));
	CHECK(hits("c.lru", 3, T0 + SEC(21)) && hits("d.lru", 4, T0 + SEC(21))
	    && hits("e.lru", 5, T0 + SEC(21)));

	/* A miss on an expired entry frees its slot: no eviction. */
	CHECK(!hits("c.lru", 0, T0 + SEC(400)));
	CHECK(cache_entries() == 2 && lru_count() == 2);
	store_a("f.lru", 300, 6, T0 + SEC(400));
	CHECK(stats.st_cache_evictions == 1);
	CHECK(cache_entries() == 3);
	/* recency f, e, d: d (expired) goes, uncounted */
	store_a("g.lru", 300, 7, T0 + SEC(401));
	CHECK(stats.st_cache_evictions == 1);
	CHECK(!present("d.lru") && present("e.lru"));
	CHECK(hits("f.lru", 6, T0 + SEC(402)) &&
	    hits("g.lru", 7, T0 + SEC(402)));
	cache_free();

	/* Many more: never above the size, each one a live eviction. */
	setup(3, 0, 0);
	for (i = 0; i < 100; i++) {
		snprintf(name, sizeof(name), "n%d.lru", i);
		store_a(name, 300, (uint8_t)i, T0 + i);
		over += cache_entries() > 3 || lru_count() != cache_entries();
		bad += !hits(name, i, T0 + i);
	}
	CHECK(over == 0);
	CHECK(bad == 0);
	CHECK(stats.st_cache_evictions == 97);
	CHECK(hits("n99.lru", 99, T0 + 100) && hits("n98.lru", 98, T0 + 100)
	    && hits("n97.lru", 97, T0 + 100) && !hits("n96.lru", 0, T0 + 100));
	cache_free();

	/* A cache of one. */
	setup(1, 0, 0);
	store_a("x.one", 300, 1, T0);
	store_a("y.one", 300, 2, T0);
	CHECK(cache_entries() == 1 && stats.st_cache_evictions == 1);
	CHECK(!hits("x.one", 0, T0) && hits("y.one", 2, T0));
	cache_free();
}

static void
test_size0(void)
{
	struct query	 q;
	struct mb	 r;
	int		 i;

	setup(0, 0, 60);
	qa(&q, 1, "zero.example", Q_RD | Q_OPT);
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 1);
	for (i = 0; i < 3; i++) {
		CHECK(get(&q, T0 + i) == CACHE_MISS);
		CHECK(store(&q, &r, T0 + i) == NULL);
		CHECK(cache_entries() == 0);
		CHECK(get(&q, T0 + i) == CACHE_MISS);
	}
	CHECK(stats.st_cache_evictions == 0);
	cache_free();
	/* and a cache made again after it works */
	setup(2, 0, 0);
	CHECK(store(&q, &r, T0) != NULL && get(&q, T0) == CACHE_FRESH);
	cache_free();
	setup(0, 0, 0);
	CHECK(store(&q, &r, T0) == NULL && get(&q, T0) == CACHE_MISS);
	cache_free();
}

static void
test_replace(void)
{
	struct query		 q, q2;
	struct mb		 r;
	const struct centry	*e;

	setup(16, 0, 0);
	qa(&q, 1, "rep.example", Q_RD);
	qa(&q2, 2, "REP.example", Q_RD | Q_OPT);
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 1);
	store(&q, &r, T0);
	resp_init(&r, &q2, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 600, 2);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 700, 3);
	e = store(&q2, &r, T0 + SEC(100));
	CHECK(e != NULL);
	CHECK(cache_entries() == 1 && lru_count() == 1);
	CHECK(lifetime(&q) == 600);
	CHECK(get(&q, T0 + SEC(100)) == CACHE_FRESH && a_of(got.m, got.len) == 2 &&
	    a_ttl(got.m, got.len) == 600);
	CHECK(dns_get16(got.m + 6) == 2);
	CHECK(get(&q, T0 + SEC(650)) == CACHE_FRESH);	/* not 300 s after T0 */
	CHECK(get(&q, T0 + SEC(700)) == CACHE_MISS);
	CHECK(stats.st_cache_evictions == 0);
	cache_free();

	/* Replacing in a full cache evicts nobody else. */
	setup(2, 0, 0);
	store_a("one.rep", 300, 1, T0);
	store_a("two.rep", 300, 2, T0);
	store_a("one.rep", 300, 3, T0 + 1);
	store_a("two.rep", 300, 4, T0 + 2);
	store_a("one.rep", 300, 5, T0 + 3);
	CHECK(cache_entries() == 2 && lru_count() == 2);
	CHECK(stats.st_cache_evictions == 0);
	CHECK(hits("one.rep", 5, T0 + 4) && hits("two.rep", 4, T0 + 4));
	/* a replaced entry becomes the most recent */
	store_a("two.rep", 300, 6, T0 + 5);
	store_a("three.rep", 300, 7, T0 + 6);
	CHECK(stats.st_cache_evictions == 1);
	CHECK(!present("one.rep") && present("two.rep"));
	cache_free();
}

/* ---- robustness ---- */

static uint32_t	 rnd_state = 0x9e3779b9;

static uint32_t
rnd(void)
{
	uint32_t x = rnd_state;

	x ^= x << 13;
	x ^= x >> 17;
	x ^= x << 5;
	return rnd_state = x;
}

static uint32_t
rnd_ttl(void)
{
	switch (rnd() % 6) {
	case 0:
		return 0;
	case 1:
		return 0x80000000u | rnd();
	case 2:
		return rnd();
	default:
		return rnd() % 1000;
	}
}

static void
rnd_case(uint8_t *m, size_t qend)
{
	size_t	 i;

	for (i = DNS_HDRLEN; i < qend - 4; i++)
		if (((m[i] | 0x20) >= 'a' && (m[i] | 0x20) <= 'z') &&
		    (rnd() & 1))
			m[i] ^= 0x20;
}

static void
rnd_response(struct mb *r, const struct query *q)
{
	size_t	 cn, i, n;

	resp_init(r, q, 0);
	switch (rnd() % 7) {
	case 0:
		cn = mb_rr_name(r, AN, NULL, DNS_HDRLEN, T_CNAME, rnd_ttl(),
		    "t.example.net");
		mb_a(r, AN, NULL, (uint16_t)cn, rnd_ttl(), 1);
		mb_a(r, AN, NULL, (uint16_t)cn, rnd_ttl(), 2);
		mb_rr_name(r, NS, "example.net", 0, T_NS, rnd_ttl(),
		    "ns.example.net");
		mb_a(r, AR, "ns.example.net", 0, rnd_ttl(), 3);
		break;
	case 1:
		r->m[3] = (uint8_t)((r->m[3] & 0xf0) | RC_NXDOMAIN);
		mb_soa(r, NS, NULL, DNS_HDRLEN, rnd_ttl(), rnd_ttl());
		break;
	case 2:
		mb_soa(r, NS, NULL, DNS_HDRLEN, rnd_ttl(), rnd_ttl());
		break;
	case 3: {
		/* SOA rdata around the 22-byte minimum */
		uint8_t	 rd[32];

		for (i = 0; i < sizeof(rd); i++)
			rd[i] = (uint8_t)rnd();
		r->m[3] = (uint8_t)((r->m[3] & 0xf0) |
		    ((rnd() & 1) ? RC_NXDOMAIN : 0));
		mb_rr(r, NS, NULL, DNS_HDRLEN, T_SOA, C_IN, rnd_ttl(), rd,
		    20 + rnd() % 6);
		break;
	}
	case 4:
		mb_a(r, AN, NULL, DNS_HDRLEN, rnd_ttl(), 1);
		mb_pad_to(r, AN, CACHE_MSGMAX - 8 + rnd() % 16);
		break;
	case 5:
		n = rnd() % 40;
		for (i = 0; i < n; i++)
			mb_u8(r, rnd());
		dns_put16(r->m + 6, (uint16_t)(rnd() % 3));
		dns_put16(r->m + 8, (uint16_t)(rnd() % 3));
		dns_put16(r->m + 10, (uint16_t)(rnd() % 3));
		break;
	default:
		n = 1 + rnd() % 8;
		for (i = 0; i < n; i++)
			mb_a(r, (enum section)(i * 3 / n), NULL, DNS_HDRLEN,
			    rnd_ttl(), (uint8_t)i);
		break;
	}
	/* query.c cuts the OPT off first; now and then it is left on */
	if (rnd() % 8 == 0)
		mb_opt(r, (uint16_t)rnd(), rnd() & 1, NULL, 0);
}

static void
mutate(struct mb *r, size_t qend)
{
	int	 k, n = rnd() % 4;
	size_t	 p;

	for (k = 0; k < n; k++) {
		switch (rnd() % 8) {
		case 0:		/* any byte but the ID */
			r->m[2 + rnd() % (r->len - 2)] = (uint8_t)rnd();
			break;
		case 1:		/* a byte after the question */
			if (r->len > qend)
				r->m[qend + rnd() % (r->len - qend)] =
				    (uint8_t)rnd();
			break;
		case 2:		/* cut short */
			r->len = qend + rnd() % (r->len - qend + 1);
			break;
		case 3:		/* trailing bytes */
			p = 1 + rnd() % 40;
			while (p-- > 0 && r->len < sizeof(r->m))
				r->m[r->len++] = (uint8_t)rnd();
			break;
		case 4:		/* a count */
			dns_put16(r->m + 6 + 2 * (rnd() % 3),
			    (uint16_t)((rnd() & 1) ? rnd() % 8 : rnd()));
			break;
		case 5:		/* a compression pointer anywhere after */
			if (r->len > qend + 1) {
				p = qend + rnd() % (r->len - qend - 1);
				r->m[p] = (uint8_t)(0xc0 | (rnd() & 0x3f));
				r->m[p + 1] = (uint8_t)rnd();
			}
			break;
		case 6:		/* flags and rcode */
			r->m[2] = (uint8_t)(0x80 | (rnd() & 0x7f));
			r->m[3] = (uint8_t)rnd();
			break;
		default:	/* a 0xff or 0x00 run */
			if (r->len > qend) {
				size_t l = 1 + rnd() % 8;

				p = qend + rnd() % (r->len - qend);
				if (p + l > r->len)
					l = r->len - p;
				memset(r->m + p, (rnd() & 1) ? 0xff : 0, l);
			}
			break;
		}
	}
}

/*
 * 1 when what get() rendered for q in state st at now looks sane: a
 * walkable message no larger than CACHE_MSGMAX, without OPT, whose TTLs
 * are all STALE_TTL when stale and within the entry's remaining life
 * when fresh.
 */
static int
output_sane(const struct query *q, enum cache_state st, int64_t now)
{
	struct centry	*e = entry_of(q);
	struct rrv	 rr[64];
	long long	 left;
	int		 n, k;

	if (st == CACHE_MISS)
		return got.len == 0 && e == NULL;
	if (e == NULL || got.len < q->qi.qi_qend || got.len > CACHE_MSGMAX)
		return 0;
	if ((n = walk(got.m, got.len, rr, 64)) < 0 || n > 64)
		return 0;
	if ((got.m[2] & F_TC) || ((got.m[3] & 0x0f) != RCODE_NOERROR &&
	    (got.m[3] & 0x0f) != RCODE_NXDOMAIN))
		return 0;
	left = (e->ce_expires - now + 999) / 1000;
	for (k = 0; k < n; k++) {
		if (rr[k].type == DNS_TYPE_OPT)
			return 0;
		if (st == CACHE_STALE && rr[k].ttl != STALE_TTL)
			return 0;
		if (st == CACHE_FRESH && (long long)rr[k].ttl > left)
			return 0;
	}
	if (st == CACHE_FRESH && now >= e->ce_expires)
		return 0;
	if (st == CACHE_STALE && (now < e->ce_expires ||
	    now >= e->ce_expires + cache.cf->cf_serve_stale * 1000LL))
		return 0;
	return 1;
}

/* 1 when every entry holds a well-formed answer with sane TTLs. */
static int
table_sane(void)
{
	const struct config *cf = cache.cf;
	struct centry	*e;
	struct rrv	 rr[64];
	long long	 life, lim;
	int		 n, k;

	lim = cf->cf_max_ttl > cf->cf_neg_max_ttl ? cf->cf_max_ttl :
	    cf->cf_neg_max_ttl;
	TAILQ_FOREACH(e, &cache.lru, ce_lru) {
		life = (e->ce_expires - e->ce_stored) / 1000;
		if (e->ce_len > CACHE_MSGMAX || life < 1 || life > lim)
			return 0;
		n = walk(e->ce_msg, e->ce_len, rr, 64);
		if (n < 0)
			return 0;
		for (k = 0; k < n && k < 64; k++)
			if (rr[k].type == DNS_TYPE_OPT ||
			    rr[k].ttl > (uint32_t)life)
				return 0;
	}
	return lru_count() == cache_entries() &&
	    cache_entries() <= cache.n;
}

/* Returns how many lookups found a stale entry. */
static int
fuzz_round(int size, int min_ttl, int max_ttl, int neg_max, int ecs,
    int rounds)
{
	static const char *names[] = { "a.example", "b.example",
	    "www.example.com", "x", "long.label.chain.example.org",
	    "c.example", "d.example", "e.example" };
	static const uint16_t types[] = { T_A, T_AAAA, T_TXT };
	uint8_t		 net[4];
	struct query	 sq, cq;
	struct mb	 r;
	const struct centry *e;
	enum cache_state st;
	int64_t		 now = T0;
	int		 i, bad_out = 0, bad_table = 0, bad_store = 0;
	int		 qf, cfl, nmatch = 0, stored = 0, fresh = 0, stale = 0;
	int		 prefix;
	const char	*name;
	uint16_t	 type;

	setup(size, min_ttl, 30);
	cfg.cf_max_ttl = max_ttl;
	cfg.cf_neg_max_ttl = neg_max;
	cfg.cf_keep_ecs = ecs;
	for (i = 0; i < rounds; i++) {
		name = names[rnd() % (sizeof(names) / sizeof(names[0]))];
		type = types[rnd() % 3];
		qf = (int)(rnd() & 0x0f);
		cfl = (rnd() % 4 == 0) ? (int)(rnd() & 0x0f) : qf;
		net[0] = 10;
		net[1] = (uint8_t)(rnd() % 2);
		net[2] = net[3] = 0;
		prefix = ecs && rnd() % 2 ? 16 : 0;
		mkq_ecs(&sq, (uint16_t)rnd(), name, type, C_IN, qf, prefix,
		    net);
		mkq_ecs(&cq, (uint16_t)rnd(), name, type, C_IN, cfl, prefix,
		    net);
		rnd_case(sq.m, sq.qi.qi_qend);
		rnd_case(cq.m, cq.qi.qi_qend);
		rnd_response(&r, &sq);
		rnd_case(r.m, sq.qi.qi_qend);
		if (rnd() % 4 != 0)
			mutate(&r, sq.qi.qi_qend);
		if (dns_reply_matches(r.m, r.len, sq.m, sq.qi.qi_qend)) {
			nmatch++;
			e = store_raw(&sq, r.m, r.len, now);
			if (e != NULL) {
				stored++;
				/* what it returns is what a lookup finds */
				bad_store += entry_of(&sq) != e;
				render(e, now, 0);
				bad_store += !output_sane(&sq, CACHE_FRESH,
				    now);
			}
		}
		switch (rnd() % 8) {
		case 0:
		case 1:
			now += rnd() % 2000;
			break;
		case 2:
			now += SEC(rnd() % 60);
			break;
		case 3:
			now += SEC(rnd() % 1200);
			break;
		default:
			break;
		}
		st = get(&cq, now);
		fresh += st == CACHE_FRESH;
		stale += st == CACHE_STALE;
		bad_out += !output_sane(&cq, st, now);
		bad_table += !table_sane();
	}
	CHECK(bad_out == 0);
	CHECK(bad_table == 0);
	CHECK(bad_store == 0);
	CHECK(stats.st_cache_evictions <= (uint64_t)stored);
	/* The mutations leave enough well-formed answers to mean something. */
	CHECK(nmatch > rounds / 2);
	CHECK(stored > rounds / 20);
	CHECK(fresh > rounds / 50);
	cache_free();
	return stale;
}

static void
test_robust(void)
{
	int	 stale = 0;

	stale += fuzz_round(8, 0, 86400, 3600, 0, 10000);
	stale += fuzz_round(4, 10, 100, 50, 1, 2000);
	stale += fuzz_round(64, 0, 300, 3600, 1, 2000);
	stale += fuzz_round(1, 1000, 500, 20, 0, 500);
	CHECK(stale > 10);
}

int
main(void)
{
	log_init(LOG_LVL_ERROR);
	seed = 0x2545f491;

	test_key_name_type_class();
	test_key_do();
	test_key_cd();
	test_key_opt();
	test_key_ecs();
	test_key_collisions();
	test_ttl_positive();
	test_ttl_negative();
	test_ttl_cname_negative();
	test_uncacheable();
	test_uncacheable_keeps_entry();
	test_size_limit();
	test_hit_rewrite();
	test_render();
	test_expiry();
	test_stale();
	test_prefetch();
	test_lru();
	test_size0();
	test_replace();
	test_robust();
	CHECK(api_bad == 0);
	return check_done("test_cache");
}

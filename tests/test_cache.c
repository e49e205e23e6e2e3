/*
 * Unit tests of cache.c: the key, TTL extraction, how a hit is rewritten
 * for its client, expiry, serve-stale, prefetch, LRU eviction, counters,
 * and robustness against malformed answers.  cache.c is included so its
 * table can be reached; mux_query and client_deliver are stubs that
 * record what they are given.  Time passing is simulated by moving an
 * entry's timestamps back, never by sleeping.  Every message handed to
 * cache.c is copied into a heap block of exactly its length, so that
 * under -fsanitize=address a read past its end is reported.
 */
#include "../cache.c"

#include <arpa/inet.h>
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
#define RC_REFUSED	5

enum section { AN, NS, AR };

#define REC_MAX		16
#define MSG_MAX		2048

/* What mux_query was given, oldest first; nmux counts every call. */
static struct muxcall {
	struct client_ref cr;
	uint8_t		 q[MSG_MAX];
	size_t		 len;
	struct dns_qinfo qi;
	int		 flags;
} muxc[REC_MAX];
static int	 nmux;

/* What client_deliver was given, oldest first; ngot counts every call. */
static struct delivery {
	struct client_ref cr;
	uint8_t		 msg[MSG_MAX];
	size_t		 len;
} got[REC_MAX];
static int	 ngot;

void
mux_query(const struct client_ref *cr, const uint8_t *q, size_t len,
    const struct dns_qinfo *qi, int flags)
{
	if (nmux < REC_MAX && len <= MSG_MAX) {
		muxc[nmux].cr = *cr;
		memcpy(muxc[nmux].q, q, len);
		muxc[nmux].len = len;
		muxc[nmux].qi = *qi;
		muxc[nmux].flags = flags;
	}
	nmux++;
}

void
client_deliver(const struct client_ref *cr, uint8_t *msg, size_t len,
    const struct dns_qinfo *qi)
{
	(void)qi;
	if (ngot < REC_MAX && len <= MSG_MAX) {
		got[ngot].cr = *cr;
		memcpy(got[ngot].msg, msg, len);
		got[ngot].len = len;
	}
	ngot++;
}

static void
reset_rec(void)
{
	nmux = ngot = 0;
}

/* ---- message building ---- */

struct mb {
	uint8_t		 m[MSG_MAX];
	size_t		 len;
};

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

static void
need(const struct mb *b, size_t n)
{
	if (b->len + n > sizeof(b->m)) {
		fprintf(stderr, "test message overflow\n");
		exit(2);
	}
}

static void
mb_u8(struct mb *b, unsigned int v)
{
	need(b, 1);
	b->m[b->len++] = (uint8_t)v;
}

static void
mb_u16(struct mb *b, unsigned int v)
{
	need(b, 2);
	dns_put16(b->m + b->len, (uint16_t)v);
	b->len += 2;
}

static void
mb_u32(struct mb *b, uint32_t v)
{
	mb_u16(b, v >> 16);
	mb_u16(b, v & 0xffff);
}

static void
mb_bytes(struct mb *b, const void *p, size_t n)
{
	need(b, n);
	if (n > 0)
		memcpy(b->m + b->len, p, n);
	b->len += n;
}

/* "a.b.c" as uncompressed labels; "" or "." is the root. */
static void
mb_name(struct mb *b, const char *name)
{
	const char	*s = name, *dot;
	size_t		 l;

	if (strcmp(name, ".") == 0)
		s = "";
	while (*s != '\0') {
		dot = strchr(s, '.');
		l = dot != NULL ? (size_t)(dot - s) : strlen(s);
		mb_u8(b, (unsigned int)l);
		mb_bytes(b, s, l);
		s += l;
		if (*s == '.')
			s++;
	}
	mb_u8(b, 0);
}

static void
mb_hdr(struct mb *b, uint16_t id, uint8_t f2, uint8_t f3)
{
	memset(b->m, 0, DNS_HDRLEN);
	dns_put16(b->m, id);
	b->m[2] = f2;
	b->m[3] = f3;
	b->len = DNS_HDRLEN;
}

static void
mb_question(struct mb *b, const char *name, uint16_t type, uint16_t class)
{
	mb_name(b, name);
	mb_u16(b, type);
	mb_u16(b, class);
	dns_put16(b->m + 4, (uint16_t)(dns_get16(b->m + 4) + 1));
}

static void
count_up(struct mb *b, enum section sec)
{
	uint8_t	*p = b->m + 6 + 2 * sec;

	dns_put16(p, (uint16_t)(dns_get16(p) + 1));
}

/*
 * Appends a record in section sec (callers add sections in order) owned
 * by name, or by a compression pointer to ptr when name is NULL.
 * Returns the offset of its rdata.
 */
static size_t
mb_rr(struct mb *b, enum section sec, const char *name, uint16_t ptr,
    uint16_t type, uint16_t class, uint32_t ttl, const void *rd,
    size_t rdlen)
{
	size_t	 at;

	if (name != NULL)
		mb_name(b, name);
	else
		mb_u16(b, 0xc000 | ptr);
	mb_u16(b, type);
	mb_u16(b, class);
	mb_u32(b, ttl);
	mb_u16(b, (unsigned int)rdlen);
	at = b->len;
	mb_bytes(b, rd, rdlen);
	count_up(b, sec);
	return at;
}

/* An A record 192.0.2.x. */
static size_t
mb_a(struct mb *b, enum section sec, const char *name, uint16_t ptr,
    uint32_t ttl, uint8_t x)
{
	uint8_t	 a[4] = { 192, 0, 2, x };

	return mb_rr(b, sec, name, ptr, T_A, C_IN, ttl, a, 4);
}

/* A record whose rdata is one uncompressed name (CNAME, NS). */
static size_t
mb_rr_name(struct mb *b, enum section sec, const char *name, uint16_t ptr,
    uint16_t type, uint32_t ttl, const char *target)
{
	struct mb	 t;

	t.len = 0;
	mb_name(&t, target);
	return mb_rr(b, sec, name, ptr, type, C_IN, ttl, t.m, t.len);
}

static size_t
mb_soa(struct mb *b, enum section sec, const char *name, uint16_t ptr,
    uint32_t ttl, uint32_t minimum)
{
	struct mb	 t;

	t.len = 0;
	mb_name(&t, "ns1.example.com");
	mb_name(&t, "hostmaster.example.com");
	mb_u32(&t, 2024010101);	/* serial */
	mb_u32(&t, 7200);	/* refresh */
	mb_u32(&t, 3600);	/* retry */
	mb_u32(&t, 1209600);	/* expire */
	mb_u32(&t, minimum);
	return mb_rr(b, sec, name, ptr, T_SOA, C_IN, ttl, t.m, t.len);
}

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

static void
mkq(struct query *q, uint16_t id, const char *name, uint16_t type,
    uint16_t class, int flags)
{
	struct mb	 b;

	mb_hdr(&b, id, (flags & Q_RD) ? 0x01 : 0, (flags & Q_CD) ? 0x10 : 0);
	mb_question(&b, name, type, class);
	if (flags & (Q_OPT | Q_DO))
		mb_opt(&b, 1232, (flags & Q_DO) != 0, NULL, 0);
	if (b.len > sizeof(q->m) ||
	    dns_parse_query(b.m, b.len, &q->qi) != 0) {
		fprintf(stderr, "test query %s does not parse\n", name);
		exit(2);
	}
	memcpy(q->m, b.m, b.len);
	q->len = b.len;
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

/* Rewrites the letters of the question name in r to upper or lower. */
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

static struct client_ref	 client;	/* who asks, in ask() */

static void
store_raw(const struct query *q, const uint8_t *r, size_t rlen)
{
	uint8_t	*qc = dup_exact(q->m, q->len), *rc = dup_exact(r, rlen);

	cache_store(qc, &q->qi, rc, rlen);
	free(qc);
	free(rc);
}

/* Offers r as the answer to q, as mux.c does once a reply matches. */
static void
store(const struct query *q, const struct mb *r)
{
	if (!dns_reply_matches(r->m, r->len, q->m, q->qi.qi_qend)) {
		fprintf(stderr, "test reply does not match its query\n");
		exit(2);
	}
	store_raw(q, r->m, r->len);
}

/* Asks q as the client; the recorders start empty. */
static void
ask(const struct query *q)
{
	uint8_t	*qc = dup_exact(q->m, q->len);

	reset_rec();
	cache_query(&client, qc, q->len, &q->qi);
	free(qc);
}

static int
ask_stale(const struct query *q)
{
	uint8_t	*qc = dup_exact(q->m, q->len);
	int	 rv;

	reset_rec();
	rv = cache_stale(&client, qc, &q->qi);
	free(qc);
	return rv;
}

/* The entry q would be answered from, or NULL. */
static struct centry *
entry_of(const struct query *q)
{
	if (cache.n == 0)
		return NULL;
	return lookup(q->m, &q->qi, key_hash(q->m, &q->qi));
}

/* Makes an entry secs seconds older. */
static void
age(struct centry *e, int secs)
{
	if (e == NULL)
		return;
	e->ce_stored -= secs * 1000LL;
	e->ce_expires -= secs * 1000LL;
}

static void
age_q(const struct query *q, int secs)
{
	struct centry	*e = entry_of(q);

	CHECK(e != NULL);
	age(e, secs);
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

/* ---- an independent parser for what comes out ---- */

struct rrv {
	size_t		 start;
	size_t		 ttloff;
	size_t		 rdata;
	uint16_t	 type;
	uint16_t	 class;
	uint16_t	 rdlen;
	uint32_t	 ttl;
};

static int
skip_name(const uint8_t *m, size_t len, size_t *off, int ptr_ok)
{
	size_t	 p = *off;

	for (;;) {
		if (p >= len)
			return -1;
		if (m[p] == 0) {
			*off = p + 1;
			return 0;
		}
		if ((m[p] & 0xc0) == 0xc0) {
			if (!ptr_ok || p + 2 > len)
				return -1;
			*off = p + 2;
			return 0;
		}
		if (m[p] > 63)
			return -1;
		p += 1 + m[p];
	}
}

static size_t
qend_of(const uint8_t *m, size_t len)
{
	size_t	 off = DNS_HDRLEN;

	if (len < DNS_HDRLEN || skip_name(m, len, &off, 0) == -1 ||
	    off + 4 > len)
		return 0;
	return off + 4;
}

/*
 * Parses every record the header counts into rr (up to max); returns
 * how many there are, or -1 when they do not exactly fill the message.
 */
static int
walk(const uint8_t *m, size_t len, struct rrv *rr, int max)
{
	size_t		 off;
	unsigned int	 n, i;

	if ((off = qend_of(m, len)) == 0 || dns_get16(m + 4) != 1)
		return -1;
	n = (unsigned int)dns_get16(m + 6) + dns_get16(m + 8) +
	    dns_get16(m + 10);
	for (i = 0; i < n; i++) {
		struct rrv	 r;

		r.start = off;
		if (skip_name(m, len, &off, 1) == -1 || off + 10 > len)
			return -1;
		r.type = dns_get16(m + off);
		r.class = dns_get16(m + off + 2);
		r.ttloff = off + 4;
		r.ttl = (uint32_t)dns_get16(m + off + 4) << 16 |
		    dns_get16(m + off + 6);
		r.rdlen = dns_get16(m + off + 8);
		r.rdata = off + 10;
		if (r.rdata + r.rdlen > len)
			return -1;
		off = r.rdata + r.rdlen;
		if ((int)i < max)
			rr[i] = r;
	}
	return off == len ? (int)n : -1;
}

/* Number of OPT records in m, or -1 when it does not parse. */
static int
opt_count(const uint8_t *m, size_t len)
{
	struct rrv	 rr[64];
	int		 n, i, k = 0;

	if ((n = walk(m, len, rr, 64)) < 0 || n > 64)
		return -1;
	for (i = 0; i < n; i++)
		k += rr[i].type == DNS_TYPE_OPT;
	return k;
}

/* The last octet of the first A record of got[i], or -1. */
static int
got_a(int i)
{
	struct rrv	 rr[64];
	int		 n, k;

	if (i >= ngot || (n = walk(got[i].msg, got[i].len, rr, 64)) < 0)
		return -1;
	for (k = 0; k < n && k < 64; k++)
		if (rr[k].type == T_A && rr[k].rdlen == 4)
			return got[i].msg[rr[k].rdata + 3];
	return -1;
}

/* The TTL of the first A record of got[i], or -1. */
static long long
got_a_ttl(int i)
{
	struct rrv	 rr[64];
	int		 n, k;

	if (i >= ngot || (n = walk(got[i].msg, got[i].len, rr, 64)) < 0)
		return -1;
	for (k = 0; k < n && k < 64; k++)
		if (rr[k].type == T_A)
			return rr[k].ttl;
	return -1;
}

/* 1 when every non-OPT record of got[i] has TTL ttl. */
static int
got_all_ttls(int i, uint32_t ttl)
{
	struct rrv	 rr[64];
	int		 n, k;

	if (i >= ngot || (n = walk(got[i].msg, got[i].len, rr, 64)) < 0 ||
	    n > 64)
		return 0;
	for (k = 0; k < n; k++)
		if (rr[k].type != DNS_TYPE_OPT && rr[k].ttl != ttl)
			return 0;
	return 1;
}

static struct config	 cfg;

static void
setup(int size, int min_ttl, int stale, int prefetch)
{
	memset(&cfg, 0, sizeof(cfg));
	cfg.cf_cache_size = size;
	cfg.cf_min_ttl = min_ttl;
	cfg.cf_max_ttl = 86400;
	cfg.cf_neg_max_ttl = 3600;
	cfg.cf_serve_stale = stale;
	cfg.cf_prefetch = prefetch;
	memset(&stats, 0, sizeof(stats));
	reset_rec();
	cache_init(&cfg);
}

/* ---- the key ---- */

static void
test_key_name_type_class(void)
{
	struct query	 q, q2;
	struct mb	 r;

	setup(16, 0, 0, 0);
	qa(&q, 1, "example.com", Q_RD);
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 1);
	store(&q, &r);
	CHECK(cache_entries() == 1);

	qa(&q2, 2, "ExAmPlE.CoM", Q_RD);
	ask(&q2);
	CHECK(ngot == 1 && nmux == 0);
	CHECK(got_a(0) == 1);

	qa(&q2, 3, "EXAMPLE.COM", Q_RD);
	ask(&q2);
	CHECK(ngot == 1 && nmux == 0);

	mkq(&q2, 4, "example.com", T_AAAA, C_IN, Q_RD);
	ask(&q2);
	CHECK(ngot == 0 && nmux == 1);
	CHECK(muxc[0].flags == MUXQ_COALESCE);

	mkq(&q2, 5, "example.com", T_A, C_CH, Q_RD);
	ask(&q2);
	CHECK(ngot == 0 && nmux == 1);

	qa(&q2, 6, "example.org", Q_RD);
	ask(&q2);
	CHECK(ngot == 0 && nmux == 1);

	qa(&q2, 7, "example.com.example.com", Q_RD);
	ask(&q2);
	CHECK(ngot == 0 && nmux == 1);
	cache_free();
}

/* DO=1 and DO=0 answers never stand in for each other. */
static void
test_key_do(void)
{
	struct query	 qd1, qd0, qno;
	struct mb	 r;

	setup(16, 0, 0, 0);
	qa(&qd1, 1, "dnssec.example", Q_RD | Q_DO);
	qa(&qd0, 2, "dnssec.example", Q_RD | Q_OPT);
	qa(&qno, 3, "dnssec.example", Q_RD);
	resp_init(&r, &qd1, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 1);
	mb_opt(&r, 1232, 1, NULL, 0);
	store(&qd1, &r);
	CHECK(cache_entries() == 1);
	ask(&qd0);
	CHECK(ngot == 0 && nmux == 1);	/* DO=0 does not get the DO=1 one */
	ask(&qno);
	CHECK(ngot == 0 && nmux == 1);
	ask(&qd1);
	CHECK(ngot == 1 && nmux == 0 && got_a(0) == 1);

	resp_init(&r, &qd0, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 2);
	mb_opt(&r, 1232, 0, NULL, 0);
	store(&qd0, &r);
	CHECK(cache_entries() == 2);
	ask(&qd0);
	CHECK(ngot == 1 && got_a(0) == 2);
	ask(&qno);
	CHECK(ngot == 1 && got_a(0) == 2);
	ask(&qd1);
	CHECK(ngot == 1 && got_a(0) == 1);
	cache_free();

	/* The other way round: only a DO=0 answer is there. */
	setup(16, 0, 0, 0);
	resp_init(&r, &qno, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 3);
	store(&qno, &r);
	CHECK(cache_entries() == 1);
	ask(&qd1);
	CHECK(ngot == 0 && nmux == 1);
	ask(&qd0);
	CHECK(ngot == 1 && got_a(0) == 3);
	cache_free();
}

static void
test_key_cd(void)
{
	struct query	 q0, q1;
	struct mb	 r;

	setup(16, 0, 0, 0);
	qa(&q0, 1, "cd.example", Q_RD | Q_OPT);
	qa(&q1, 2, "cd.example", Q_RD | Q_OPT | Q_CD);
	resp_init(&r, &q0, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 1);
	store(&q0, &r);
	ask(&q1);
	CHECK(ngot == 0 && nmux == 1);
	resp_init(&r, &q1, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 2);
	store(&q1, &r);
	CHECK(cache_entries() == 2);
	ask(&q1);
	CHECK(ngot == 1 && got_a(0) == 2);
	CHECK(ngot == 1 && (got[0].msg[3] & 0x10));
	ask(&q0);
	CHECK(ngot == 1 && got_a(0) == 1);
	CHECK(ngot == 1 && !(got[0].msg[3] & 0x10));
	cache_free();

	/* CD=1 stored first: a CD=0 query misses it. */
	setup(16, 0, 0, 0);
	resp_init(&r, &q1, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 2);
	store(&q1, &r);
	ask(&q0);
	CHECK(ngot == 0 && nmux == 1);
	cache_free();
}

/* With and without OPT (DO=0), one entry serves both. */
static void
test_key_opt(void)
{
	struct query	 qo, qn;
	struct mb	 r;

	setup(16, 0, 0, 0);
	qa(&qo, 1, "opt.example", Q_RD | Q_OPT);
	qa(&qn, 2, "opt.example", Q_RD);
	resp_init(&r, &qo, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 1);
	mb_opt(&r, 4096, 0, NULL, 0);
	store(&qo, &r);
	ask(&qn);
	CHECK(ngot == 1 && nmux == 0 && got_a(0) == 1);
	resp_init(&r, &qn, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 2);
	store(&qn, &r);
	CHECK(cache_entries() == 1);
	CHECK(lru_count() == 1);
	ask(&qo);
	CHECK(ngot == 1 && nmux == 0 && got_a(0) == 2);
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

	setup(16, 0, 0, 0);

	/* min over answer+authority; additional and OPT left out */
	qa(&q, 1, "www.pos.example", Q_RD | Q_OPT);
	resp_init(&r, &q, 0);
	cn = mb_rr_name(&r, AN, NULL, DNS_HDRLEN, T_CNAME, 300,
	    "t.example.net");
	mb_a(&r, AN, NULL, (uint16_t)cn, 260, 1);
	mb_rr_name(&r, NS, "example.net", 0, T_NS, 200, "ns.example.net");
	mb_a(&r, AR, "ns.example.net", 0, 10, 53);
	mb_opt(&r, 4096, 0, NULL, 0);	/* its TTL field is 0 */
	store(&q, &r);
	CHECK(lifetime(&q) == 200);
	ask(&q);
	CHECK(ngot == 1);
	n = walk(got[0].msg, got[0].len, rr, 16);
	CHECK(n == 5);
	if (n == 5) {
		CHECK(rr[0].type == T_CNAME && rr[0].ttl == 200);
		CHECK(rr[1].type == T_A && rr[1].ttl == 200);
		CHECK(rr[2].type == T_NS && rr[2].ttl == 200);
		CHECK(rr[3].type == T_A && rr[3].ttl == 10);
		CHECK(rr[4].type == DNS_TYPE_OPT);
	}

	/* The answer section alone decides when authority is longer. */
	qa(&q, 2, "a.pos.example", Q_RD);
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 500, 1);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 450, 2);
	mb_rr_name(&r, NS, "pos.example", 0, T_NS, 900, "ns.pos.example");
	mb_a(&r, AR, "ns.pos.example", 0, 1, 53);
	store(&q, &r);
	CHECK(lifetime(&q) == 450);

	/* Authority shorter than answer counts. */
	qa(&q, 3, "b.pos.example", Q_RD);
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 500, 1);
	mb_rr_name(&r, NS, "pos.example", 0, T_NS, 120, "ns.pos.example");
	store(&q, &r);
	CHECK(lifetime(&q) == 120);

	/* Raised to --min-ttl, every record with it. */
	cfg.cf_min_ttl = 60;
	qa(&q, 4, "c.pos.example", Q_RD);
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 5, 1);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 30, 2);
	store(&q, &r);
	CHECK(lifetime(&q) == 60);
	ask(&q);
	CHECK(ngot == 1 && got_all_ttls(0, 60));
	cfg.cf_min_ttl = 0;

	/* Cut to --max-ttl, every record with it. */
	cfg.cf_max_ttl = 3600;
	qa(&q, 5, "d.pos.example", Q_RD);
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 100000, 1);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 200000, 2);
	mb_a(&r, AR, "x.pos.example", 0, 90000, 3);
	store(&q, &r);
	CHECK(lifetime(&q) == 3600);
	ask(&q);
	CHECK(ngot == 1 && got_all_ttls(0, 3600));
	cfg.cf_max_ttl = 86400;
	cache_free();
}

static void
test_ttl_negative(void)
{
	struct query	 q;
	struct mb	 r;
	struct rrv	 rr[8];

	setup(16, 0, 0, 0);
	/* "\2nx\7example\3com": example.com starts at offset 15. */
	qa(&q, 1, "nx.example.com", Q_RD);
	resp_init(&r, &q, RC_NXDOMAIN);
	mb_soa(&r, NS, NULL, 15, 900, 300);
	store(&q, &r);
	CHECK(lifetime(&q) == 300);	/* MINIMUM below the SOA TTL */
	ask(&q);
	CHECK(ngot == 1 && (got[0].msg[3] & 0x0f) == RC_NXDOMAIN);
	CHECK(ngot == 1 && walk(got[0].msg, got[0].len, rr, 8) == 1 &&
	    rr[0].type == T_SOA && rr[0].ttl == 300);

	qa(&q, 2, "nx2.example.com", Q_RD);
	resp_init(&r, &q, RC_NXDOMAIN);
	mb_soa(&r, NS, NULL, 16, 200, 300);
	store(&q, &r);
	CHECK(lifetime(&q) == 200);	/* SOA TTL below MINIMUM */

	cfg.cf_neg_max_ttl = 100;
	qa(&q, 3, "nx3.example.com", Q_RD);
	resp_init(&r, &q, RC_NXDOMAIN);
	mb_soa(&r, NS, NULL, 16, 900, 300);
	store(&q, &r);
	CHECK(lifetime(&q) == 100);	/* --neg-max-ttl */
	cfg.cf_neg_max_ttl = 3600;

	/* NODATA: NOERROR, empty answer, SOA in authority. */
	mkq(&q, 4, "nodata.example.com", T_AAAA, C_IN, Q_RD);
	resp_init(&r, &q, 0);
	mb_soa(&r, NS, NULL, 19, 900, 600);
	store(&q, &r);
	CHECK(lifetime(&q) == 600);
	ask(&q);
	CHECK(ngot == 1 && (got[0].msg[3] & 0x0f) == 0 &&
	    dns_get16(got[0].msg + 6) == 0 && dns_get16(got[0].msg + 8) == 1);

	mkq(&q, 5, "nodata2.example.com", T_AAAA, C_IN, Q_RD);
	resp_init(&r, &q, 0);
	mb_soa(&r, NS, NULL, 20, 150, 600);
	store(&q, &r);
	CHECK(lifetime(&q) == 150);

	cfg.cf_neg_max_ttl = 60;
	mkq(&q, 6, "nodata3.example.com", T_AAAA, C_IN, Q_RD);
	resp_init(&r, &q, 0);
	mb_soa(&r, NS, NULL, 20, 900, 600);
	store(&q, &r);
	CHECK(lifetime(&q) == 60);
	cfg.cf_neg_max_ttl = 3600;

	/* The negative limit applies even when --max-ttl is higher. */
	cfg.cf_neg_max_ttl = 10;
	qa(&q, 7, "nx4.example.com", Q_RD | Q_OPT);
	resp_init(&r, &q, RC_NXDOMAIN);
	mb_soa(&r, NS, NULL, 16, 900, 900);
	mb_opt(&r, 1232, 0, NULL, 0);
	store(&q, &r);
	CHECK(lifetime(&q) == 10);
	cfg.cf_neg_max_ttl = 3600;

	CHECK(cache_entries() == 7);

	/* Without a SOA, negative answers are not kept. */
	qa(&q, 8, "nosoa.example.com", Q_RD);
	resp_init(&r, &q, RC_NXDOMAIN);
	store(&q, &r);
	CHECK(lifetime(&q) == -1);
	resp_init(&r, &q, RC_NXDOMAIN);
	mb_rr_name(&r, NS, "example.com", 0, T_NS, 300, "ns.example.com");
	store(&q, &r);
	CHECK(lifetime(&q) == -1);
	mkq(&q, 9, "nosoa.example.com", T_AAAA, C_IN, Q_RD);
	resp_init(&r, &q, 0);
	store(&q, &r);
	CHECK(lifetime(&q) == -1);
	resp_init(&r, &q, 0);
	mb_rr_name(&r, NS, "example.com", 0, T_NS, 300, "ns.example.com");
	mb_a(&r, AR, "ns.example.com", 0, 300, 1);
	store(&q, &r);
	CHECK(lifetime(&q) == -1);
	/* A SOA whose rdata is too short to hold MINIMUM is no SOA. */
	{
		uint8_t	 rd[21];

		memset(rd, 0, sizeof(rd));
		rd[20] = 60;
		qa(&q, 10, "shortsoa.example.com", Q_RD);
		resp_init(&r, &q, RC_NXDOMAIN);
		mb_rr(&r, NS, NULL, 21, T_SOA, C_IN, 300, rd, sizeof(rd));
		store(&q, &r);
		CHECK(lifetime(&q) == -1);
		mkq(&q, 9, "nosoa.example.com", T_AAAA, C_IN, Q_RD);
	}
	/* A SOA in the additional section is not the authority's. */
	resp_init(&r, &q, RC_NXDOMAIN);
	mb_soa(&r, AR, NULL, 18, 900, 300);
	store(&q, &r);
	CHECK(lifetime(&q) == -1);
	CHECK(cache_entries() == 7);
	ask(&q);
	CHECK(ngot == 0 && nmux == 1);
	cache_free();
}

/*
 * A CNAME whose target has no data of the type asked (NOERROR, the CNAME
 * in the answer section, a SOA in authority) is a NODATA answer for the
 * QNAME at the end of the chain (RFC 2308 section 1 and 2.2): it is kept
 * no longer than min(SOA TTL, SOA MINIMUM) and --neg-max-ttl.
 */
static void
test_ttl_nodata_cname(void)
{
	struct query	 q;
	struct mb	 r;

	setup(16, 0, 0, 0);
	mkq(&q, 1, "alias.example.com", T_AAAA, C_IN, Q_RD);
	resp_init(&r, &q, 0);
	mb_rr_name(&r, AN, NULL, DNS_HDRLEN, T_CNAME, 3600, "t.example.net");
	mb_soa(&r, NS, "example.net", 0, 3600, 60);
	store(&q, &r);
	CHECK(lifetime(&q) == 60);

	cfg.cf_neg_max_ttl = 600;
	mkq(&q, 2, "alias2.example.com", T_AAAA, C_IN, Q_RD);
	resp_init(&r, &q, 0);
	mb_rr_name(&r, AN, NULL, DNS_HDRLEN, T_CNAME, 86400, "t.example.net");
	mb_soa(&r, NS, "example.net", 0, 86400, 86400);
	store(&q, &r);
	CHECK(lifetime(&q) == 600);
	cfg.cf_neg_max_ttl = 3600;
	cache_free();
}

/* Stores r for q and checks nothing was kept. */
static void
check_not_cached(const struct query *q, const struct mb *r, int line)
{
	int	 before = cache_entries();

	store(q, r);
	if (lifetime(q) != -1 || cache_entries() != before) {
		check_failed++;
		fprintf(stderr, "FAIL %s:%d: answer was cached\n", __FILE__,
		    line);
	} else
		check_passed++;
	ask(q);
	if (ngot != 0 || nmux != 1) {
		check_failed++;
		fprintf(stderr, "FAIL %s:%d: query was answered from the "
		    "cache\n", __FILE__, line);
	} else
		check_passed++;
}
#define NOT_CACHED(q, r)	check_not_cached((q), (r), __LINE__)

static void
test_uncacheable(void)
{
	static const int rcodes[] = { RC_FORMERR, RC_SERVFAIL, RC_REFUSED };
	struct query	 q;
	struct mb	 r;
	size_t		 i;

	setup(16, 0, 0, 0);
	qa(&q, 1, "bad.example", Q_RD | Q_OPT);
	for (i = 0; i < sizeof(rcodes) / sizeof(rcodes[0]); i++) {
		resp_init(&r, &q, rcodes[i]);
		mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 1);
		mb_opt(&r, 1232, 0, NULL, 0);
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

	/* OPT not last, or outside the additional section. */
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
	mb_opt(&r, 1232, 0, NULL, 0);
	mb_opt(&r, 1232, 0, NULL, 0);
	NOT_CACHED(&q, &r);

	/* Counts that do not match the records. */
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 1);
	dns_put16(r.m + 6, 2);
	NOT_CACHED(&q, &r);
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 1);
	r.len--;
	NOT_CACHED(&q, &r);
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 1);
	mb_u8(&r, 0);
	NOT_CACHED(&q, &r);
	CHECK(cache_entries() == 0);
	cache_free();
}

/* Up to CACHE_MSGMAX bytes are kept, not one more. */
static void
test_size_limit(void)
{
	struct query	 q, qo;
	struct mb	 r;

	setup(16, 0, 0, 0);
	qa(&q, 1, "big.example", Q_RD);
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 1);
	mb_pad_to(&r, AN, CACHE_MSGMAX + 1);
	CHECK(r.len == CACHE_MSGMAX + 1);
	NOT_CACHED(&q, &r);

	/* With an OPT too: still too large without it. */
	qa(&qo, 2, "big.example", Q_RD | Q_OPT);
	resp_init(&r, &qo, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 1);
	mb_pad_to(&r, AN, CACHE_MSGMAX + 1);
	mb_opt(&r, 1232, 0, NULL, 0);
	NOT_CACHED(&qo, &r);

	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 1);
	mb_pad_to(&r, AN, CACHE_MSGMAX);
	CHECK(r.len == CACHE_MSGMAX);
	store(&q, &r);
	CHECK(lifetime(&q) == 300);
	ask(&q);
	CHECK(ngot == 1 && got[0].len == CACHE_MSGMAX);
	CHECK(ngot == 1 && memcmp(got[0].msg + 2, r.m + 2,
	    CACHE_MSGMAX - 2) == 0);
	ask(&qo);		/* a client with OPT: ours is added */
	CHECK(ngot == 1 && got[0].len == CACHE_MSGMAX + 11);
	CHECK(ngot == 1 && opt_count(got[0].msg, got[0].len) == 1);
	cache_free();
}

/* ---- how a hit is rewritten for its client ---- */

/*
 * Stores an answer (CNAME, two A, NS, additional A, and an upstream OPT
 * when sq has one) for store_flags, ages it by secs, asks it as a client
 * with client_flags and other letter case, and compares what comes out
 * with the answer rebuilt by hand.
 */
static void
hit_case(int store_flags, int client_flags, int resp_rd, int upper_store,
    int secs, int line)
{
	static const uint8_t nsid[] = { 0, 3, 0, 2, 'u', 'p' };
	struct query	 sq, cq;
	struct mb	 r, x;
	struct rrv	 rr[16];
	size_t		 cn, opt = 0, qend;
	uint32_t	 t[5];
	int		 n, k, nf = check_failed;

	setup(16, 0, 0, 0);
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
	if (store_flags & (Q_OPT | Q_DO)) {
		opt = r.len;
		mb_opt(&r, 4096, (store_flags & Q_DO) != 0, nsid,
		    sizeof(nsid));
	}
	store(&sq, &r);
	CHECK(lifetime(&sq) == 300);
	age_q(&sq, secs);

	ask(&cq);
	CHECK(ngot == 1 && nmux == 0);
	if (ngot != 1)
		goto out;
	CHECK(got[0].cr.cr_kind == CLIENT_UDP &&
	    got[0].cr.cr_addr.sin.sin_port == client.cr_addr.sin.sin_port);
	CHECK(dns_get16(got[0].msg) == 0xbeef);
	CHECK(got[0].len > qend &&
	    memcmp(got[0].msg + DNS_HDRLEN, cq.m + DNS_HDRLEN,
	    qend - DNS_HDRLEN) == 0);
	CHECK((got[0].msg[2] & 0x01) == (cq.m[2] & 0x01));
	CHECK((got[0].msg[2] & 0x80) && (got[0].msg[3] & 0x0f) == 0);

	/* Every record's TTL aged by secs. */
	t[0] = t[1] = t[2] = t[3] = 300 - (uint32_t)secs;
	t[4] = secs < 100 ? 100 - (uint32_t)secs : 0;
	n = walk(got[0].msg, got[0].len, rr, 16);
	CHECK(n == ((client_flags & (Q_OPT | Q_DO)) ? 6 : 5));
	CHECK(dns_get16(got[0].msg + 6) == 3 && dns_get16(got[0].msg + 8) == 1);
	for (k = 0; k < 5 && k < n; k++)
		CHECK(rr[k].type != DNS_TYPE_OPT && rr[k].ttl == t[k]);
	if (client_flags & (Q_OPT | Q_DO)) {
		CHECK(dns_get16(got[0].msg + 10) == 2);
		CHECK(n == 6 && rr[5].type == DNS_TYPE_OPT &&
		    rr[5].class == EDNS_PAYLOAD && rr[5].rdlen == 0 &&
		    rr[5].ttl == ((client_flags & Q_DO) ? 0x8000u : 0));
	} else {
		CHECK(dns_get16(got[0].msg + 10) == 1);
		CHECK(opt_count(got[0].msg, got[0].len) == 0);
	}

	/* The whole answer, rebuilt by hand. */
	memcpy(x.m, r.m, opt ? opt : r.len);
	x.len = opt ? opt : r.len;
	if (opt)
		dns_put16(x.m + 10, (uint16_t)(dns_get16(x.m + 10) - 1));
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
	CHECK(got[0].len == x.len && memcmp(got[0].msg, x.m, x.len) == 0);
out:
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

/* Ageing goes by whole seconds; the upstream's OPT never goes out. */
static void
test_hit_more(void)
{
	static const uint8_t cookie[] = { 0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7,
	    8 };
	struct query	 q, qn;
	struct mb	 r;
	struct centry	*e;
	struct rrv	 rr[8];
	int		 n;

	setup(16, 0, 0, 0);
	qa(&q, 9, "age.example", Q_RD | Q_OPT);
	qa(&qn, 10, "age.example", Q_RD);
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 100, 1);
	mb_opt(&r, 4096, 1, cookie, sizeof(cookie));
	store(&q, &r);
	e = entry_of(&q);
	CHECK(e != NULL);
	if (e != NULL) {
		/* 2.9 s: still 2 whole seconds */
		e->ce_stored -= 2900;
		e->ce_expires -= 2900;
	}
	ask(&q);
	CHECK(ngot == 1 && got_a_ttl(0) == 98);
	n = ngot == 1 ? walk(got[0].msg, got[0].len, rr, 8) : -1;
	CHECK(n == 2 && rr[1].type == DNS_TYPE_OPT &&
	    rr[1].class == EDNS_PAYLOAD && rr[1].rdlen == 0 &&
	    rr[1].ttl == 0);		/* client's DO=0, not upstream's 1 */
	ask(&qn);
	CHECK(ngot == 1 && got_a_ttl(0) == 98);
	CHECK(ngot == 1 && opt_count(got[0].msg, got[0].len) == 0);
	CHECK(ngot == 1 && dns_get16(got[0].msg + 10) == 0);
	CHECK(ngot == 1 && got[0].len == r.len - 11 - sizeof(cookie));
	cache_free();
}

/* ---- expiry, serve-stale, prefetch ---- */

static void
test_expiry(void)
{
	struct query	 q;
	struct mb	 r;

	setup(16, 0, 0, 0);
	qa(&q, 1, "exp.example", Q_RD);
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 100, 1);
	store(&q, &r);
	age_q(&q, 99);
	ask(&q);
	CHECK(ngot == 1 && nmux == 0 && got_a_ttl(0) == 1);
	age_q(&q, 1);
	ask(&q);
	CHECK(ngot == 0 && nmux == 1);
	CHECK(nmux == 1 && muxc[0].flags == MUXQ_COALESCE);
	CHECK(nmux == 1 && muxc[0].len == q.len &&
	    memcmp(muxc[0].q, q.m, q.len) == 0);
	CHECK(nmux == 1 && muxc[0].cr.cr_kind == CLIENT_UDP &&
	    muxc[0].cr.cr_addr.sin.sin_port == client.cr_addr.sin.sin_port);
	CHECK(cache_entries() == 0);	/* dropped */
	CHECK(ask_stale(&q) == 0 && ngot == 0);
	cache_free();

	/* A fresh entry is not offered as stale without --serve-stale. */
	setup(16, 0, 0, 0);
	store(&q, &r);
	CHECK(ask_stale(&q) == 0 && ngot == 0);
	cache_free();
}

static void
test_stale(void)
{
	struct query	 q, qc, qn;
	struct mb	 r;
	struct rrv	 rr[8];
	int		 n;

	setup(16, 0, 60, 0);
	qa(&q, 1, "stale.example", Q_RD | Q_OPT);
	qa(&qc, 0x4242, "STALE.example", Q_OPT);
	qa(&qn, 0x4343, "stale.EXAMPLE", Q_RD);
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 100, 1);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 200, 2);
	mb_rr_name(&r, NS, "example", 0, T_NS, 500, "ns.example");
	mb_a(&r, AR, "ns.example", 0, 5, 3);
	mb_opt(&r, 4096, 0, NULL, 0);
	store(&q, &r);

	age_q(&q, 130);			/* 30 s past its TTL */
	ask(&q);
	CHECK(ngot == 0 && nmux == 1);
	CHECK(nmux == 1 && muxc[0].flags == (MUXQ_COALESCE | MUXQ_STALE));
	CHECK(cache_entries() == 1);
	CHECK(stats.st_cache_misses == 1 && stats.st_cache_hits == 0);

	CHECK(ask_stale(&qc) == 1);
	CHECK(ngot == 1 && nmux == 0);
	CHECK(ngot == 1 && got_all_ttls(0, STALE_TTL));
	CHECK(ngot == 1 && dns_get16(got[0].msg) == 0x4242);
	CHECK(ngot == 1 && memcmp(got[0].msg + DNS_HDRLEN, qc.m + DNS_HDRLEN,
	    qc.qi.qi_qend - DNS_HDRLEN) == 0);
	CHECK(ngot == 1 && (got[0].msg[2] & 0x01) == 0);
	n = ngot == 1 ? walk(got[0].msg, got[0].len, rr, 8) : -1;
	CHECK(n == 5 && rr[4].type == DNS_TYPE_OPT && rr[4].ttl == 0 &&
	    rr[4].class == EDNS_PAYLOAD);
	CHECK(stats.st_stale == 1);

	CHECK(ask_stale(&qn) == 1);
	CHECK(ngot == 1 && got_all_ttls(0, STALE_TTL));
	CHECK(ngot == 1 && opt_count(got[0].msg, got[0].len) == 0);
	CHECK(ngot == 1 && (got[0].msg[2] & 0x01) == 1);
	CHECK(stats.st_stale == 2);

	age_q(&q, 29);			/* 59 s past: still within 60 */
	ask(&q);
	CHECK(ngot == 0 && nmux == 1 &&
	    muxc[0].flags == (MUXQ_COALESCE | MUXQ_STALE));
	CHECK(ask_stale(&q) == 1 && ngot == 1);

	age_q(&q, 2);			/* 61 s past: beyond */
	CHECK(ask_stale(&q) == 0 && ngot == 0);
	ask(&q);
	CHECK(ngot == 0 && nmux == 1 && muxc[0].flags == MUXQ_COALESCE);
	CHECK(cache_entries() == 0);
	CHECK(entry_of(&q) == NULL);
	CHECK(ask_stale(&q) == 0 && ngot == 0);
	CHECK(stats.st_stale == 3);
	cache_free();
}

static void
prefetch_case(int prefetch, int secs, int expect, int line)
{
	struct query	 q, qc;
	struct mb	 r;
	int		 nf = check_failed;

	setup(16, 0, 0, prefetch);
	qa(&q, 1, "pf.example", Q_RD | Q_OPT);
	qa(&qc, 0x7777, "PF.example", Q_RD | Q_OPT);
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 100, 1);
	store(&q, &r);
	age_q(&q, secs);
	ask(&qc);
	CHECK(ngot == 1);		/* the answer is delivered either way */
	CHECK(ngot == 1 && got_a_ttl(0) == 100 - secs);
	CHECK(stats.st_cache_hits == 1 && stats.st_cache_misses == 0);
	if (expect) {
		CHECK(nmux == 1);
		CHECK(nmux == 1 && (muxc[0].flags & MUXQ_BACKGROUND));
		CHECK(nmux == 1 && muxc[0].cr.cr_kind == CLIENT_NONE);
		CHECK(nmux == 1 && muxc[0].len == qc.len &&
		    memcmp(muxc[0].q, qc.m, qc.len) == 0);
	} else
		CHECK(nmux == 0);
	if (check_failed != nf)
		fprintf(stderr, "  (in prefetch_case called from line %d)\n",
		    line);
	cache_free();
}

static void
test_prefetch(void)
{
	prefetch_case(1, 0, 0, __LINE__);
	prefetch_case(1, 50, 0, __LINE__);
	prefetch_case(1, 89, 0, __LINE__);
	prefetch_case(1, 91, 1, __LINE__);
	prefetch_case(1, 95, 1, __LINE__);
	prefetch_case(1, 99, 1, __LINE__);
	prefetch_case(0, 50, 0, __LINE__);
	prefetch_case(0, 95, 0, __LINE__);
	prefetch_case(0, 99, 0, __LINE__);
}

/* ---- LRU, counters, size 0, replacing ---- */

static void
store_a(const char *name, uint32_t ttl, uint8_t x)
{
	struct query	 q;
	struct mb	 r;

	qa(&q, 1, name, Q_RD);
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, ttl, x);
	store(&q, &r);
}

/* 1 when name is answered from the cache (with x when x != 0). */
static int
hits(const char *name, int x)
{
	struct query	 q;

	qa(&q, 2, name, Q_RD);
	ask(&q);
	return ngot == 1 && nmux == 0 && (x == 0 || got_a(0) == x);
}

static void
test_lru(void)
{
	struct query	 q;
	char		 name[32];
	int		 i, over = 0, bad = 0;

	setup(3, 0, 0, 0);
	store_a("a.lru", 300, 1);
	store_a("b.lru", 300, 2);
	store_a("c.lru", 300, 3);
	CHECK(cache_entries() == 3 && lru_count() == 3);
	CHECK(stats.st_cache_evictions == 0);
	CHECK(hits("a.lru", 1));	/* a is now the most recent */
	store_a("d.lru", 300, 4);	/* b goes */
	CHECK(cache_entries() == 3 && lru_count() == 3);
	CHECK(stats.st_cache_evictions == 1);
	CHECK(!hits("b.lru", 0));
	CHECK(hits("a.lru", 1));
	CHECK(hits("c.lru", 3));
	CHECK(hits("d.lru", 4));

	/* Recency now d, c, a: an expired a goes without counting. */
	qa(&q, 1, "a.lru", Q_RD);
	age_q(&q, 1000);
	store_a("e.lru", 300, 5);
	CHECK(stats.st_cache_evictions == 1);
	CHECK(cache_entries() == 3 && lru_count() == 3);
	CHECK(hits("c.lru", 3) && hits("d.lru", 4) && hits("e.lru", 5));
	CHECK(!hits("a.lru", 0));

	/* A miss on an expired entry frees its slot: no eviction. */
	qa(&q, 1, "c.lru", Q_RD);
	age_q(&q, 1000);
	CHECK(!hits("c.lru", 0));
	CHECK(cache_entries() == 2 && lru_count() == 2);
	store_a("f.lru", 300, 6);
	CHECK(stats.st_cache_evictions == 1);
	CHECK(cache_entries() == 3);
	CHECK(hits("d.lru", 4) && hits("e.lru", 5) && hits("f.lru", 6));

	/* Many more: never above the size, each one a live eviction. */
	for (i = 0; i < 100; i++) {
		snprintf(name, sizeof(name), "n%d.lru", i);
		store_a(name, 300, (uint8_t)i);
		over += cache_entries() > 3 || lru_count() != cache_entries();
		bad += !hits(name, i);
	}
	CHECK(over == 0);
	CHECK(bad == 0);
	CHECK(stats.st_cache_evictions == 101);
	CHECK(hits("n99.lru", 99) && hits("n98.lru", 98) &&
	    hits("n97.lru", 97) && !hits("n96.lru", 0));
	cache_free();

	/* A cache of one. */
	setup(1, 0, 0, 0);
	store_a("x.one", 300, 1);
	store_a("y.one", 300, 2);
	CHECK(cache_entries() == 1 && stats.st_cache_evictions == 1);
	CHECK(!hits("x.one", 0) && hits("y.one", 2));
	cache_free();
}

static void
test_stats(void)
{
	struct query	 q;

	setup(16, 0, 0, 0);
	CHECK(!hits("s.example", 0));
	CHECK(stats.st_cache_hits == 0 && stats.st_cache_misses == 1);
	store_a("s.example", 300, 1);
	CHECK(hits("s.example", 1) && hits("S.Example", 1) &&
	    hits("s.example", 1));
	CHECK(stats.st_cache_hits == 3 && stats.st_cache_misses == 1);
	CHECK(!hits("t.example", 0));
	CHECK(stats.st_cache_hits == 3 && stats.st_cache_misses == 2);
	qa(&q, 1, "s.example", Q_RD);
	age_q(&q, 300);
	CHECK(!hits("s.example", 0));
	CHECK(stats.st_cache_hits == 3 && stats.st_cache_misses == 3);
	CHECK(stats.st_cache_evictions == 0 && stats.st_stale == 0);
	cache_free();
}

static void
test_size0(void)
{
	struct query	 q;
	struct mb	 r;
	int		 i;

	setup(0, 0, 60, 1);
	qa(&q, 1, "zero.example", Q_RD | Q_OPT);
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 1);
	for (i = 0; i < 2; i++) {
		ask(&q);
		CHECK(nmux == 1 && ngot == 0);
		CHECK(nmux == 1 && muxc[0].flags == 0);
		CHECK(nmux == 1 && muxc[0].len == q.len &&
		    memcmp(muxc[0].q, q.m, q.len) == 0);
		CHECK(nmux == 1 && muxc[0].cr.cr_kind == CLIENT_UDP);
		store(&q, &r);
		CHECK(cache_entries() == 0);
		CHECK(ask_stale(&q) == 0 && ngot == 0);
	}
	cache_free();
}

static void
test_replace(void)
{
	struct query	 q, q2;
	struct mb	 r;

	setup(16, 0, 0, 0);
	qa(&q, 1, "rep.example", Q_RD);
	qa(&q2, 2, "REP.example", Q_RD | Q_OPT);
	resp_init(&r, &q, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 1);
	store(&q, &r);
	age_q(&q, 100);
	resp_init(&r, &q2, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 600, 2);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 700, 3);
	mb_opt(&r, 1232, 0, NULL, 0);
	store(&q2, &r);
	CHECK(cache_entries() == 1 && lru_count() == 1);
	CHECK(lifetime(&q) == 600);
	ask(&q);
	CHECK(ngot == 1 && got_a(0) == 2 && got_a_ttl(0) == 600);
	CHECK(ngot == 1 && dns_get16(got[0].msg + 6) == 2);
	CHECK(stats.st_cache_evictions == 0);
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

		memset(rd, 0, sizeof(rd));
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
	if (rnd() % 3 == 0)
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

/* 1 when every delivery and mux call since reset looks sane for q. */
static int
outputs_sane(const struct query *q)
{
	size_t	 qend = q->qi.qi_qend;
	int	 i, nopt;

	for (i = 0; i < ngot && i < REC_MAX; i++) {
		const struct delivery *d = &got[i];

		if (d->len < qend || d->len > CACHE_MSGMAX + 11 ||
		    dns_get16(d->msg) != dns_get16(q->m) ||
		    memcmp(d->msg + DNS_HDRLEN, q->m + DNS_HDRLEN,
		    qend - DNS_HDRLEN) != 0 ||
		    (d->msg[2] & 0x01) != (q->m[2] & 0x01))
			return 0;
		nopt = opt_count(d->msg, d->len);
		if (nopt != (q->qi.qi_has_opt ? 1 : 0))
			return 0;
	}
	for (i = 0; i < nmux && i < REC_MAX; i++)
		if (muxc[i].len != q->len ||
		    memcmp(muxc[i].q, q->m, q->len) != 0)
			return 0;
	return ngot <= 1 && nmux <= 1 + (ngot == 1);
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

static void
fuzz_round(int size, int min_ttl, int max_ttl, int neg_max, int rounds)
{
	static const char *names[] = { "a.example", "b.example",
	    "www.example.com", "x", "long.label.chain.example.org",
	    "c.example", "d.example", "e.example" };
	static const uint16_t types[] = { T_A, T_AAAA, T_TXT };
	struct query	 q, qc;
	struct mb	 r;
	uint64_t	 asked = 0;
	int		 i, bad_out = 0, bad_table = 0, stored = 0;
	int		 qf, cfl, nmatch = 0;
	const char	*name;
	uint16_t	 type;

	setup(size, min_ttl, 30, 1);
	cfg.cf_max_ttl = max_ttl;
	cfg.cf_neg_max_ttl = neg_max;
	for (i = 0; i < rounds; i++) {
		name = names[rnd() % (sizeof(names) / sizeof(names[0]))];
		type = types[rnd() % 3];
		qf = (int)(rnd() & 0x0f);
		cfl = (rnd() % 4 == 0) ? (int)(rnd() & 0x0f) : qf;
		mkq(&q, (uint16_t)rnd(), name, type, C_IN, qf);
		mkq(&qc, (uint16_t)rnd(), name, type, C_IN, cfl);
		rnd_case(q.m, q.qi.qi_qend);
		rnd_case(qc.m, qc.qi.qi_qend);
		rnd_response(&r, &q);
		rnd_case(r.m, q.qi.qi_qend);
		if (rnd() % 4 != 0)
			mutate(&r, q.qi.qi_qend);
		if (dns_reply_matches(r.m, r.len, q.m, q.qi.qi_qend)) {
			nmatch++;
			store_raw(&q, r.m, r.len);
			stored += entry_of(&q) != NULL;
		}
		if (rnd() % 3 == 0 && !TAILQ_EMPTY(&cache.lru))
			age((rnd() & 1) ? TAILQ_FIRST(&cache.lru) :
			    TAILQ_LAST(&cache.lru, centries),
			    (int)(rnd() % 1200));
		ask(&qc);
		asked++;
		bad_out += !outputs_sane(&qc);
		if (rnd() % 2 == 0) {
			ask_stale(&qc);
			bad_out += !outputs_sane(&qc);
		}
		bad_table += !table_sane();
	}
	CHECK(bad_out == 0);
	CHECK(bad_table == 0);
	CHECK(stats.st_cache_hits + stats.st_cache_misses == asked);
	/* The mutations leave enough well-formed answers to mean something. */
	CHECK(nmatch > rounds / 2);
	CHECK(stored > rounds / 20);
	cache_free();
}

static void
test_robust(void)
{
	fuzz_round(8, 0, 86400, 3600, 10000);
	fuzz_round(4, 10, 100, 50, 2000);
	fuzz_round(64, 0, 300, 3600, 2000);
	fuzz_round(1, 1000, 500, 20, 500);
}

int
main(void)
{
	log_init(LOG_LVL_ERROR);
	tls_init();
	memset(&client, 0, sizeof(client));
	client.cr_kind = CLIENT_UDP;
	client.cr_addr.sin.sin_family = AF_INET;
	client.cr_addr.sin.sin_port = htons(4242);
	client.cr_addrlen = sizeof(struct sockaddr_in);

	test_key_name_type_class();
	test_key_do();
	test_key_cd();
	test_key_opt();
	test_ttl_positive();
	test_ttl_negative();
	test_ttl_nodata_cname();
	test_uncacheable();
	test_size_limit();
	test_hit_rewrite();
	test_hit_more();
	test_expiry();
	test_stale();
	test_prefetch();
	test_lru();
	test_stats();
	test_size0();
	test_replace();
	test_robust();
	tls_shutdown();
	return check_done("test_cache");
}

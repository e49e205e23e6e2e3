/*
 * libFuzzer target: the answer cache (cache.c) and the rendering of an
 * entry for a client (dns_finish), as query.c uses them.
 *
 * cache.c is included so that an entry's lifetime can be checked; dns.c,
 * log.c and util.c are linked (util.c's clock and randomness replaced,
 * see fuzz.h).  Keys are made by dns_parse_query and dns_key from real
 * query messages, as query.c makes them.
 *
 * Input: 6 bytes of configuration, then operations until it runs out:
 *   byte 0   --cache-size - 1 (low 3 bits: 1 to 8 entries, so eviction
 *            is common); bit 3 --keep-ecs
 *   byte 1   --min-ttl (low 6 bits)
 *   byte 2   --max-ttl and byte 3 --neg-max-ttl, from a table
 *   bytes 4-5 --serve-stale seconds
 *   op 0 KEY     flags, name, type (1 byte; 0 is A), then for an input
 *                name its length and bytes, then for ECS its address:
 *                the current key becomes dns_key's for a query of that
 *                name and type, class IN.  Name byte: one of 8 names
 *                (low 3 bits; bit 3 in upper case), or (bit 4) bytes
 *                from the input (up to 63, then the root).  Flags: bit 0
 *                DO, bit 1 CD, bit 2 an ECS option of 4 + (bits 3-6)
 *                bytes; an OPT when DO or ECS
 *   op 1 STORE   length (2 bytes), message: spliced around the current
 *                key's question as the mux delivers it (header from the
 *                message, QR set, QDCOUNT 1; everything after its own
 *                question, or after its header), then dns_strip_opt and
 *                cache_store exactly as query.c's answered() does
 *   op 2 LOOKUP  flags: cache_lookup with the current key; a hit is
 *                rendered (cache_render into exactly CACHE_MSGMAX bytes)
 *                and finished for a client (dns_finish, with the client's
 *                OPT, DO, keepalive and an EDE from the flags, into a
 *                buffer of 1232 bytes or of the largest message)
 *   op 3 WAIT    2 bytes of time (high bit: seconds, else ms)
 *
 * Invariants (abort on failure): a stored entry is found fresh at once
 * under its own key and under the same key with the name in another
 * case; an entry found belongs to that key (DO, CD, ECS, question); its
 * rendering is as long as it was stored, at most CACHE_MSGMAX, parses
 * whole (our walker) with QDCOUNT 1, the key's question, no OPT; every
 * TTL is at most the entry's lifetime (which is at most --max-ttl, or
 * --neg-max-ttl for a negative answer) less its age, and exactly 30 when
 * served stale; a fresh entry is never past its expiry; dns_finish
 * either says no room (0) or gives a message within its capacity that
 * parses with exactly one OPT when the client had one; no read or write
 * outside any buffer (ASan).
 *
 * Seeds: fuzz/corpus/cache, made by fuzz/mkcorpus.py.  Built with
 * -DFZ_STATS, it prints what each input stored and found.
 */
#include "../cache.c"

#include "fuzz.h"

static const uint8_t fz_key[SIPHASH_KEYLEN] = "fuzz-cache-key!";

struct stats	 stats;

static struct config	 cfg;
static int		 nstored, nfresh, nstale;

/* The current key and the query it was made from. */
static struct {
	uint8_t		 q[512];
	size_t		 len;
	struct dns_qinfo qi;
	struct qkey	 k;
	int		 ok;
} cur;

/* A query: the name, type, class IN, flags; EDNS options from the flags. */
static void
make_key(struct fin *f)
{
	uint8_t		 flags = fin_u8(f), nb = fin_u8(f), *p = cur.q;
	uint16_t	 type = fin_u8(f);
	size_t		 n, i, rd;
	int		 rc;

	memset(p, 0, DNS_HDRLEN);
	dns_put16(p, 0x1234);
	p[2] = F_RD;
	p[3] = (flags & 2) ? F_CD : 0;
	dns_put16(p + 4, 1);
	n = DNS_HDRLEN;
	n += fin_name(f, nb, p + n);
	dns_put16(p + n, type == 0 ? 1 : type);
	dns_put16(p + n + 2, 1);
	n += 4;
	if (flags & 5) {
		/* OPT: DO from bit 0, an ECS option from bit 2. */
		rd = (flags & 4) ? 4 + 4 + ((flags >> 3) & 15) : 0;
		dns_put16(p + 10, 1);
		p[n] = 0;
		dns_put16(p + n + 1, DNS_TYPE_OPT);
		dns_put16(p + n + 3, 1232);
		p[n + 5] = p[n + 6] = 0;
		p[n + 7] = (flags & 1) ? 0x80 : 0;
		p[n + 8] = 0;
		dns_put16(p + n + 9, (uint16_t)rd);
		n += 11;
		if (rd > 0) {
			dns_put16(p + n, DNS_OPT_ECS);
			dns_put16(p + n + 2, (uint16_t)(rd - 4));
			dns_put16(p + n + 4, 1);
			p[n + 6] = (uint8_t)(8 * (rd - 8));
			p[n + 7] = 0;
			for (i = 8; i < rd; i++)
				p[n + i] = fin_u8(f);
			n += rd;
		}
	}
	cur.len = n;
	rc = dns_parse_query(p, n, &cur.qi);
	cur.ok = rc == 0;
	if (cur.ok)
		dns_key(&cur.k, p, &cur.qi, cfg.cf_keep_ecs, fz_key);
}

/* The entry e belongs to key k. */
static void
check_owner(const struct centry *e, const struct qkey *k)
{
	FZ_CHECK(e->ce_do == k->k_do && e->ce_cd == k->k_cd);
	FZ_CHECK(e->ce_ecslen == k->k_ecslen);
	FZ_CHECK(k->k_ecslen == 0 ||
	    memcmp(e->ce_ecs, k->k_ecs, k->k_ecslen) == 0);
	FZ_CHECK(e->ce_qend == k->k_qend);
	FZ_CHECK(fz_question_eq(e->ce_msg, e->ce_qend, k->k_msg, k->k_qend));
}

/* A rendering of e at now: see the top of this file. */
static void
check_render(const struct centry *e, int stale)
{
	static struct fz_rr rr[CACHE_MSGMAX / 11 + 1];
	uint8_t		*out = malloc(CACHE_MSGMAX);
	uint32_t	 life = (uint32_t)((e->ce_expires - e->ce_stored) / 1000);
	uint32_t	 age = (uint32_t)((fz_now - e->ce_stored) / 1000);
	size_t		 len, qend;
	int		 n, i;

	if (out == NULL)
		abort();
	len = cache_render(e, fz_now, stale, out);
	FZ_CHECK(len == e->ce_len && len <= CACHE_MSGMAX);
	n = fz_walk(out, len, &qend, rr, (int)(sizeof(rr) / sizeof(rr[0])));
	FZ_CHECK(n >= 0 && fz_get16(out + 4) == 1 && qend == e->ce_qend);
	FZ_CHECK(fz_question_eq(out, qend, cur.k.k_msg, cur.k.k_qend));
	FZ_CHECK(life <= (uint32_t)(cfg.cf_max_ttl > cfg.cf_neg_max_ttl ?
	    cfg.cf_max_ttl : cfg.cf_neg_max_ttl));
	FZ_CHECK(life > 0);
	for (i = 0; i < n; i++) {
		FZ_CHECK(rr[i].type != DNS_TYPE_OPT);
		if (stale)
			FZ_CHECK(rr[i].ttl == STALE_TTL);
		else
			FZ_CHECK(rr[i].ttl <= life - (age < life ? age : life));
	}
	free(out);
}

/* Rendered and finished for a client, as query.c's answer_entry does. */
static void
op_lookup(struct fin *f)
{
	static const char *const texts[3] = { "", "stale", "x" };
	static struct fz_rr rr[CACHE_MSGMAX / 11 + 2];
	const char	*text;
	enum cache_state st;
	struct centry	*e;
	struct dns_qinfo qi;
	uint8_t		 flags = fin_u8(f), *out;
	size_t		 cap, len, qend, need;
	int		 ede, n;

	if (!cur.ok)
		return;
	e = cache_lookup(&cur.k, fz_now, &st);
	FZ_CHECK((e == NULL) == (st == CACHE_MISS));
	if (e == NULL)
		return;
	check_owner(e, &cur.k);
	if (st == CACHE_FRESH)
		FZ_CHECK(fz_now < e->ce_expires);
	else
		FZ_CHECK(fz_now >= e->ce_expires && fz_now <
		    e->ce_expires + cfg.cf_serve_stale * 1000LL);
	(void)cache_prefetch_due(e, fz_now);
	check_render(e, st == CACHE_STALE);
	nfresh += st == CACHE_FRESH;
	nstale += st == CACHE_STALE;
	cap = (flags & 1) ? DNS_MAXMSG : EDNS_PAYLOAD;
	if ((out = malloc(cap)) == NULL)
		abort();
	len = cache_render(e, fz_now, st == CACHE_STALE, out);
	qi = cur.qi;
	qi.qi_keepalive = (flags >> 1) & 1;
	qi.qi_has_opt = (flags >> 2) & 1 || qi.qi_keepalive;
	qi.qi_do = (flags >> 3) & 1;
	ede = (flags & 0x30) ? (flags >> 4) & 3 : EDE_NONE;
	text = texts[(flags >> 6) % 3];
	need = len + (qi.qi_has_opt ? 11 + (ede == EDE_NONE ? 0 : 6 +
	    strlen(text)) + (qi.qi_keepalive ? 6 : 0) : 0);
	len = dns_finish(out, len, cap, cur.q, &qi, ede, text);
	/* No room is said only when there is none. */
	FZ_CHECK(len == (need <= cap ? need : 0));
	if (len > 0) {
		n = fz_walk(out, len, &qend, rr, CACHE_MSGMAX / 11 + 2);
		FZ_CHECK(n >= 0 && qend == cur.k.k_qend);
		FZ_CHECK(fz_get16(out) == fz_get16(cur.q));
		FZ_CHECK((out[2] & F_RD) == (cur.q[2] & F_RD));
		FZ_CHECK(memcmp(out + DNS_HDRLEN, cur.q + DNS_HDRLEN,
		    qend - DNS_HDRLEN) == 0);
		FZ_CHECK(qi.qi_has_opt == (n > 0 &&
		    rr[n - 1].type == DNS_TYPE_OPT));
	}
	free(out);
}

/* Stored as query.c's answered() stores an upstream answer. */
static void
op_store(struct fin *f)
{
	const struct centry *e;
	enum cache_state st;
	const uint8_t	*p;
	uint8_t		*r;
	size_t		 len, rest, qend, n;
	struct qkey	 k2;
	uint8_t		 q2[512];
	size_t		 i;

	len = fin_take(f, fin_u16(f), &p);
	if (!cur.ok)
		return;
	rest = len < DNS_HDRLEN ? 0 : len - DNS_HDRLEN;
	if ((qend = fz_qend(p, len)) > 0)
		rest = len - qend;
	if (cur.k.k_qend + rest > DNS_MAXMSG)
		rest = DNS_MAXMSG - cur.k.k_qend;
	n = cur.k.k_qend + rest;
	if ((r = malloc(n)) == NULL)
		abort();
	memset(r, 0, DNS_HDRLEN);
	if (len >= DNS_HDRLEN)
		memcpy(r, p, DNS_HDRLEN);
	r[2] |= F_QR;
	dns_put16(r + 4, 1);
	memcpy(r + DNS_HDRLEN, cur.q + DNS_HDRLEN, cur.k.k_qend - DNS_HDRLEN);
	if (rest > 0)
		memcpy(r + cur.k.k_qend, p + len - rest, rest);
	if ((n = dns_strip_opt(r, n, cur.k.k_qend)) > 0 &&
	    (e = cache_store(&cur.k, r, n, fz_now)) != NULL) {
		nstored++;
		check_owner(e, &cur.k);
		FZ_CHECK(e->ce_len == n && e->ce_stored == fz_now &&
		    e->ce_expires > fz_now);
		check_render(e, 0);
		FZ_CHECK(cache_lookup(&cur.k, fz_now, &st) == e &&
		    st == CACHE_FRESH);
		/* The same question in other letters finds it too. */
		memcpy(q2, cur.q, cur.len);
		for (i = DNS_HDRLEN; i < cur.k.k_qend - 4; i++)
			if ((q2[i] | 0x20) >= 'a' && (q2[i] | 0x20) <= 'z')
				q2[i] ^= 0x20;
		dns_key(&k2, q2, &cur.qi, cfg.cf_keep_ecs, fz_key);
		FZ_CHECK(cache_lookup(&k2, fz_now, &st) == e &&
		    st == CACHE_FRESH);
	}
	FZ_CHECK(cache_entries() <= cfg.cf_cache_size);
	free(r);
}

static const int ttls[16] = { 1, 2, 5, 30, 60, 300, 3600, 86400, 604800,
    1, 10, 100, 1000, 10000, 100000, 3 };

int	LLVMFuzzerTestOneInput(const uint8_t *, size_t);
int	LLVMFuzzerInitialize(int *, char ***);

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	log_init(LOG_LVL_ERROR);
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fin	 f = { data, size };
	uint8_t		 b[6];
	uint16_t	 v;
	int		 i;

	fz_reset_clock(size);
	nstored = nfresh = nstale = 0;
	for (i = 0; i < 6; i++)
		b[i] = fin_u8(&f);
	memset(&cfg, 0, sizeof(cfg));
	memset(&cur, 0, sizeof(cur));
	cfg.cf_cache_size = 1 + (b[0] & 7);
	cfg.cf_keep_ecs = (b[0] >> 3) & 1;
	cfg.cf_min_ttl = b[1] & 0x3f;
	cfg.cf_max_ttl = ttls[b[2] & 15];
	if (cfg.cf_max_ttl < cfg.cf_min_ttl)
		cfg.cf_max_ttl = cfg.cf_min_ttl;
	cfg.cf_neg_max_ttl = ttls[b[3] & 15];
	cfg.cf_serve_stale = b[4] << 8 | b[5];
	cache_init(&cfg);
	while (f.n > 0) {
		switch (fin_u8(&f) % 4) {
		case 0:
			make_key(&f);
			break;
		case 1:
			op_store(&f);
			break;
		case 2:
			op_lookup(&f);
			break;
		case 3:
			v = fin_u16(&f);
			fz_now += v & 0x8000 ? (int64_t)(v & 0x7fff) * 1000 : v;
			break;
		}
	}
#ifdef FZ_STATS
	fprintf(stderr, "stored %d fresh %d stale %d\n", nstored, nfresh,
	    nstale);
#endif
	cache_free();
	return 0;
}

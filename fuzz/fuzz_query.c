/*
 * libFuzzer target: the client side of query.c and the EDNS boundary.
 *
 * query.c is included, with cache.c, dns.c, log.c and util.c linked as
 * they are (util.c's clock and randomness replaced through --wrap, see
 * fuzz.h); the mux is faked here as tests/test_query.c does: mux_send
 * records the upstream query, and the input later completes it through
 * the recorded callback, with an answer or with MUX_TIMEOUT,
 * MUX_UNREACHABLE or MUX_FAILED.  query_init gets no loop, so time moves
 * only when the input says, and query_tick runs by hand.
 *
 * Input: 6 bytes of configuration, then operations until it runs out:
 *   byte 0   bit 0 cache on (bits 0-2 of byte 1 + 1 entries), bit 1
 *            --serve-stale (byte 2 seconds, 0xff: a week), bit 2
 *            --prefetch, bit 3 --keep-ecs
 *   byte 1   bits 3-6: mux capacity - 1 (1 to 16 upstream requests)
 *   byte 3   --timeout, 10 + 40 * value ms
 *   byte 4   --min-ttl (low 6 bits); byte 5: --max-ttl and
 *            --neg-max-ttl from a table (low and high nibble)
 *   op 0 ASK     flags (bit 0: TCP client), length (2 bytes), message:
 *                query_ask on an exact heap copy
 *   op 1 ANSWER  which open send, flags (bit 0: recase the question),
 *                length (2), message: its header (ID and QR fixed as the
 *                mux would deliver them) and everything after its
 *                question are spliced around the question that was sent
 *                upstream, since the mux only hands over replies whose
 *                question matches; a message without a parsable
 *                question keeps everything after its header.  What
 *                dns_reply_matches refuses (the mux would drop it) is
 *                not delivered
 *   op 2 FAIL    which open send, status (TIMEOUT, UNREACHABLE, FAILED,
 *                REFUSED), or (5) no call back: its copy is overdue, so
 *                the flight takes no more joiners
 *   op 3 TICK    2 bytes of time (high bit: seconds, else ms), then
 *                query_tick
 *   op 4 WAIT    the same without query_tick
 * At the end every open send is failed with MUX_TIMEOUT and the clock
 * moves past every deadline.
 *
 * Invariants (abort on failure): each query query_ask accepted is
 * delivered exactly once, and nothing else is; every delivery carries
 * the client's ID and QR and parses whole; refusals are a header, the
 * question when it parsed, and an OPT only for BADVERS; every other
 * answer has the client's question bytes and RD, exactly one OPT of our
 * own when the client sent one (version 0, payload 1232, its DO bit,
 * only EDE and our keepalive) and none otherwise; over UDP an answer
 * above the client's limit still truncates (dns_truncate, as listen.c
 * does) to a TC=1 message within it; every upstream message is at most
 * UPQUERY_MAX, a multiple of 128, ID 0, RD and at most CD, one question
 * equal to a client's, and one OPT holding only our keepalive, our zero
 * padding and, with --keep-ecs, a client's ECS: never a client's option;
 * mux_extend only moves deadlines of open sends, later.
 *
 * Seeds: fuzz/corpus/query, made by fuzz/mkcorpus.py.  Built with
 * -DFZ_STATS, it prints the daemon's counters after each input.
 */
#include "../query.c"

#include "fuzz.h"

struct stats	 stats;

#define SENDS_MAX	512
#define CLIENTS_MAX	256

static struct send {
	uint8_t		 msg[UPQUERY_MAX];
	size_t		 len;
	size_t		 qend;
	int64_t		 deadline;
	mux_done_fn	*done;
	void		*arg;
	int		 open;
	int		 overdue;
} sends[SENDS_MAX];
static int	 nsends, mux_cap;

static struct client {
	uint8_t		 m[QUERY_MAX];
	size_t		 len;
	int		 rc;		/* dns_parse_query's verdict, or -1 */
	struct dns_qinfo qi;
	int		 tcp;
	int		 accepted;
	int		 delivered;
} clients[CLIENTS_MAX];
static int	 nclients;

static struct config	 cfg;

int
mux_inflight(void)
{
	int	 i, n = 0;

	for (i = 0; i < nsends; i++)
		n += sends[i].open;
	return n;
}

int
mux_capacity(const struct config *cf)
{
	(void)cf;
	return mux_cap;
}

void
mux_netchange(uint32_t moved, int64_t now)
{
	(void)moved;
	(void)now;
}

void
mux_shutdown(void)
{
}

/* True when some client asked this question with ECS data ecs. */
static int
client_ecs(const uint8_t *m, size_t qend, const uint8_t *ecs, size_t len)
{
	const struct client *c;
	int	 i;

	for (i = 0; i < nclients; i++) {
		c = &clients[i];
		if (c->rc != 0 || c->qi.qi_ecsoff == 0 ||
		    c->qi.qi_ecslen != len ||
		    !fz_question_eq(c->m, c->qi.qi_qend, m, qend))
			continue;
		if (memcmp(c->m + c->qi.qi_ecsoff, ecs, len) == 0)
			return 1;
	}
	return 0;
}

/* True when some accepted client asked this question. */
static int
client_question(const uint8_t *m, size_t qend)
{
	int	 i;

	for (i = 0; i < nclients; i++)
		if (clients[i].rc == 0 &&
		    fz_question_eq(clients[i].m, clients[i].qi.qi_qend, m, qend))
			return 1;
	return 0;
}

/* The upstream message is ours alone: see the top of this file. */
static void
check_upstream(const uint8_t *m, size_t len)
{
	struct fz_rr	 rr[2];
	size_t		 qend, off, end, l, i;
	int		 necs = 0, nka = 0, npad = 0;

	FZ_CHECK(len <= UPQUERY_MAX && len % 128 == 0);
	FZ_CHECK(fz_walk(m, len, &qend, rr, 2) == 1);
	FZ_CHECK(fz_get16(m) == 0);
	FZ_CHECK(m[2] == F_RD && (m[3] & ~F_CD) == 0);
	FZ_CHECK(fz_get16(m + 4) == 1 && fz_get16(m + 6) == 0 &&
	    fz_get16(m + 8) == 0 && fz_get16(m + 10) == 1);
	FZ_CHECK(client_question(m, qend));
	FZ_CHECK(rr[0].type == DNS_TYPE_OPT && m[rr[0].start] == 0 &&
	    rr[0].start == qend);
	FZ_CHECK(rr[0].class == EDNS_PAYLOAD && (rr[0].ttl & ~0x8000u) == 0);
	off = rr[0].rdata;
	end = off + rr[0].rdlen;
	while (off < end) {
		FZ_CHECK(end - off >= 4);
		l = fz_get16(m + off + 2);
		FZ_CHECK(end - off - 4 >= l);
		switch (fz_get16(m + off)) {
		case DNS_OPT_ECS:
			FZ_CHECK(cfg.cf_keep_ecs);
			FZ_CHECK(client_ecs(m, qend, m + off + 4, l));
			necs++;
			break;
		case DNS_OPT_KEEPALIVE:
			FZ_CHECK(l == 0);
			nka++;
			break;
		case DNS_OPT_PADDING:
			for (i = 0; i < l; i++)
				FZ_CHECK(m[off + 4 + i] == 0);
			npad++;
			break;
		default:
			FZ_CHECK(!"an option upstream that is not ours");
		}
		off += 4 + l;
	}
	FZ_CHECK(necs <= 1 && nka == 1 && npad == 1);
}

int
mux_send(const uint8_t *msg, size_t len, int64_t deadline,
    mux_done_fn *done, void *arg, int64_t now)
{
	struct send	*s;

	FZ_CHECK(done != NULL && deadline > now && now == fz_now);
	check_upstream(msg, len);
	if (nsends == SENDS_MAX || mux_inflight() >= mux_cap)
		return -1;
	s = &sends[nsends];
	memcpy(s->msg, msg, len);
	s->len = len;
	s->qend = fz_qend(msg, len);
	s->deadline = deadline;
	s->done = done;
	s->arg = arg;
	s->open = 1;
	s->overdue = 0;
	return nsends++;
}

void
mux_active(int64_t now)
{
	FZ_CHECK(now == fz_now);
}

int
mux_overdue(int h)
{
	FZ_CHECK(h >= 0 && h < nsends && sends[h].open);
	return sends[h].overdue;
}

void
mux_extend(int h, int64_t deadline, int64_t now)
{
	FZ_CHECK(h >= 0 && h < nsends && sends[h].open);
	FZ_CHECK(now == fz_now && deadline > now);
	if (deadline > sends[h].deadline)
		sends[h].deadline = deadline;
}

/* A refusal: header, the question when it parsed, OPT only for BADVERS. */
static void
check_refusal(const struct client *c, int rcode, const uint8_t *m,
    size_t len)
{
	struct fz_rr	 rr[1];
	size_t		 qend, cq = 0;
	int		 n;

	FZ_CHECK((m[3] & 0x0f) == (rcode & 0x0f));
	FZ_CHECK((n = fz_walk(m, len, &qend, rr, 1)) >= 0);
	FZ_CHECK(fz_get16(m + 6) == 0 && fz_get16(m + 8) == 0);
	if (fz_get16(c->m + 4) == 1)
		cq = fz_qend(c->m, c->len);
	if (cq > 0) {
		FZ_CHECK(qend == cq && memcmp(m + DNS_HDRLEN,
		    c->m + DNS_HDRLEN, cq - DNS_HDRLEN) == 0);
	} else
		FZ_CHECK(qend == DNS_HDRLEN);
	FZ_CHECK(n == (rcode == RCODE_BADVERS));
	if (n == 1)
		FZ_CHECK(rr[0].type == DNS_TYPE_OPT &&
		    (rr[0].ttl >> 24) == (RCODE_BADVERS >> 4));
}

/* An answer to a query that parsed: see the top of this file. */
static void
check_answer(const struct client *c, const uint8_t *m, size_t len,
    const struct dns_qinfo *qi)
{
	static struct fz_rr rr[8192];
	size_t		 qend, off, end, l;
	int		 n, k, nopt = 0, nede, nka;

	FZ_CHECK((n = fz_walk(m, len, &qend, rr, 8192)) >= 0);
	FZ_CHECK(fz_get16(m + 4) == 1 && qend == c->qi.qi_qend);
	FZ_CHECK(memcmp(m + DNS_HDRLEN, c->m + DNS_HDRLEN,
	    qend - DNS_HDRLEN) == 0);
	FZ_CHECK((m[2] & F_RD) == (c->m[2] & F_RD));
	FZ_CHECK((m[2] & F_OPCODE) == 0);
	for (k = 0; k < n && k < 8192; k++) {
		if (rr[k].type != DNS_TYPE_OPT)
			continue;
		nopt++;
		FZ_CHECK(k == n - 1);
		FZ_CHECK(k >= fz_get16(m + 6) + fz_get16(m + 8));
		FZ_CHECK(m[rr[k].start] == 0);
		FZ_CHECK(rr[k].class == EDNS_PAYLOAD);
		FZ_CHECK((rr[k].ttl & ~0x8000u) == 0);
		FZ_CHECK(((rr[k].ttl & 0x8000u) != 0) == (c->qi.qi_do != 0));
		off = rr[k].rdata;
		end = off + rr[k].rdlen;
		for (nede = nka = 0; off < end; off += 4 + l) {
			FZ_CHECK(end - off >= 4);
			l = fz_get16(m + off + 2);
			FZ_CHECK(end - off - 4 >= l);
			switch (fz_get16(m + off)) {
			case DNS_OPT_EDE:
				FZ_CHECK(nede++ == 0 && l >= 2);
				break;
			case DNS_OPT_KEEPALIVE:
				FZ_CHECK(nka++ == 0 && c->qi.qi_keepalive &&
				    l == 2 && fz_get16(m + off + 4) ==
				    TCP_CLIENT_IDLE * 10);
				break;
			default:
				FZ_CHECK(!"an option neither EDE nor keepalive");
			}
		}
		FZ_CHECK(nka == (c->qi.qi_keepalive != 0));
	}
	FZ_CHECK(nopt == (c->qi.qi_has_opt != 0));
	FZ_CHECK(qi != NULL && qi->qi_qend == c->qi.qi_qend &&
	    qi->qi_has_opt == c->qi.qi_has_opt && qi->qi_do == c->qi.qi_do &&
	    qi->qi_udpsize == c->qi.qi_udpsize &&
	    qi->qi_keepalive == c->qi.qi_keepalive);
}

/* What listen.c's udp_deliver does: cut to a TC=1 question if too big. */
static void
check_udp_limit(const uint8_t *m, size_t len, const struct dns_qinfo *qi)
{
	uint8_t		 tc[QHEAD_MAX + 64];
	size_t		 limit = 512, n, qend;

	if (qi->qi_has_opt)
		limit = qi->qi_udpsize < EDNS_PAYLOAD ? qi->qi_udpsize :
		    EDNS_PAYLOAD;
	if (len <= limit)
		return;
	n = dns_truncate(tc, sizeof(tc), m, len, qi->qi_has_opt);
	/* listen.c would drop the answer: the client would hear nothing. */
	FZ_CHECK(n > 0 && n <= limit);
	FZ_CHECK(fz_walk(tc, n, &qend, NULL, 0) == (qi->qi_has_opt ? 1 : 0));
	FZ_CHECK((tc[2] & F_TC) && fz_get16(tc) == fz_get16(m));
}

static void
op_deliver(const struct client_ref *cr, uint8_t *msg, size_t len,
    const struct dns_qinfo *qi)
{
	struct client	*c;
	uint8_t		*m;

	FZ_CHECK(cr->cr_slot < (uint32_t)nclients &&
	    cr->cr_gen == (0xf0220000u ^ cr->cr_slot));
	c = &clients[cr->cr_slot];
	FZ_CHECK(c->rc != -1);
	FZ_CHECK(c->delivered++ == 0);
	FZ_CHECK(cr->cr_kind == (c->tcp ? CLIENT_TCP : CLIENT_UDP));
	FZ_CHECK(len >= DNS_HDRLEN && len <= DNS_MAXMSG && qi != NULL);
	/* Checked from an exact copy, so a length too long is seen. */
	m = fz_dup(msg, len);
	FZ_CHECK(fz_get16(m) == fz_get16(c->m) && (m[2] & F_QR));
	if (c->rc > 0)
		check_refusal(c, c->rc, m, len);
	else if (c->qi.qi_keepalive && !c->tcp)
		check_refusal(c, RCODE_FORMERR, m, len);
	else
		check_answer(c, m, len, qi);
	if (!c->tcp)
		check_udp_limit(m, len, qi);
	free(m);
}

static void
op_ask(struct fin *f)
{
	struct client_ref cr;
	struct client	*c;
	const uint8_t	*p;
	uint8_t		*copy;
	uint8_t		 flags = fin_u8(f);
	size_t		 len = fin_take(f, fin_u16(f), &p);
	int		 rv;

	if (nclients == CLIENTS_MAX)
		return;
	c = &clients[nclients];
	memset(c, 0, sizeof(*c));
	c->tcp = flags & 1;
	c->len = len;
	memcpy(c->m, p, len < sizeof(c->m) ? len : sizeof(c->m));
	c->rc = len > QUERY_MAX ? -1 : dns_parse_query(p, len, &c->qi);
	memset(&cr, 0, sizeof(cr));
	cr.cr_kind = c->tcp ? CLIENT_TCP : CLIENT_UDP;
	cr.cr_slot = (uint32_t)nclients;
	cr.cr_gen = 0xf0220000u ^ cr.cr_slot;
	nclients++;
	copy = fz_dup(p, len);
	rv = query_ask(&cr, copy, len, fz_now);
	free(copy);
	FZ_CHECK(rv == (c->rc == -1 ? -1 : 0));
	c->accepted = rv == 0;
	if (c->rc == 0) {
		/* What dns.c accepted, our walker reads the same way. */
		size_t	 qend;

		FZ_CHECK(fz_walk(p, len, &qend, NULL, 0) >= 0 &&
		    qend == c->qi.qi_qend && fz_get16(p + 4) == 1 &&
		    fz_get16(p + 6) == 0 && fz_get16(p + 8) == 0);
	}
}

/* The send op picks: the open ones, in order, modulo their number. */
static int
pick_open(struct fin *f)
{
	int	 i, n = mux_inflight(), k = fin_u8(f);

	if (n == 0)
		return -1;
	k %= n;
	for (i = 0; i < nsends; i++)
		if (sends[i].open && k-- == 0)
			return i;
	return -1;
}

static void
op_complete(int h, enum mux_status st, uint8_t *reply, size_t len)
{
	struct send	*s = &sends[h];

	s->open = 0;
	s->done(s->arg, st, reply, len, fz_now);
}

/* An upstream reply as the mux hands it over: see the top of this file. */
static void
op_answer(struct fin *f)
{
	const uint8_t	*p;
	uint8_t		*r;
	struct send	*s;
	size_t		 len, rest, qend, i;
	int		 h = pick_open(f);
	uint8_t		 flags = fin_u8(f);

	len = fin_take(f, fin_u16(f), &p);
	if (h == -1)
		return;
	s = &sends[h];
	rest = len < DNS_HDRLEN ? 0 : len - DNS_HDRLEN;
	if ((qend = fz_qend(p, len)) > 0)
		rest = len - qend;
	if (s->qend + rest > DNS_MAXMSG)
		rest = DNS_MAXMSG - s->qend;
	r = malloc(s->qend + rest);
	if (r == NULL)
		abort();
	memset(r, 0, DNS_HDRLEN);
	if (len >= DNS_HDRLEN)
		memcpy(r, p, DNS_HDRLEN);
	r[2] |= F_QR;
	dns_put16(r + 4, 1);
	memcpy(r + DNS_HDRLEN, s->msg + DNS_HDRLEN, s->qend - DNS_HDRLEN);
	for (i = DNS_HDRLEN; (flags & 1) && i < s->qend - 4; i++)
		if ((r[i] | 0x20) >= 'a' && (r[i] | 0x20) <= 'z')
			r[i] ^= 0x20;
	if (rest > 0)
		memcpy(r + s->qend, p + len - rest, rest);
	/* What the mux would drop as matching no query never arrives. */
	if (dns_reply_matches(r, s->qend + rest, s->msg, s->qend))
		op_complete(h, MUX_ANSWER, r, s->qend + rest);
	free(r);
}

static void
op_fail(struct fin *f)
{
	static const enum mux_status st[] = { MUX_TIMEOUT, MUX_UNREACHABLE,
	    MUX_FAILED, MUX_REFUSED };
	int	 h = pick_open(f);
	uint8_t	 b = fin_u8(f);

	if (h != -1 && b % 5 == 4)
		sends[h].overdue = 1;
	else if (h != -1)
		op_complete(h, st[b % 5], NULL, 0);
}

static void
op_advance(struct fin *f)
{
	uint16_t v = fin_u16(f);

	fz_now += v & 0x8000 ? (int64_t)(v & 0x7fff) * 1000 : v;
}

static const int ttls[16] = { 1, 2, 5, 30, 60, 300, 3600, 86400, 604800,
    1, 10, 100, 1000, 10000, 100000, 3 };

static void
configure(struct fin *f)
{
	uint8_t	 b[6];
	int	 i;

	for (i = 0; i < 6; i++)
		b[i] = fin_u8(f);
	memset(&cfg, 0, sizeof(cfg));
	cfg.cf_cache_size = (b[0] & 1) ? 1 + (b[1] & 7) : 0;
	cfg.cf_serve_stale = (b[0] & 2) ? (b[2] == 0xff ? 604800 : b[2]) : 0;
	cfg.cf_prefetch = (b[0] >> 2) & 1;
	cfg.cf_keep_ecs = (b[0] >> 3) & 1;
	cfg.cf_timeout_ms = 10 + 40 * b[3];
	cfg.cf_min_ttl = b[4] & 0x3f;
	cfg.cf_max_ttl = ttls[b[5] & 15];
	if (cfg.cf_max_ttl < cfg.cf_min_ttl)
		cfg.cf_max_ttl = cfg.cf_min_ttl;
	cfg.cf_neg_max_ttl = ttls[b[5] >> 4];
	mux_cap = 1 + ((b[1] >> 3) & 15);
}

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
	int		 i;

	fz_reset_clock(size);
	nsends = nclients = 0;
	memset(&stats, 0, sizeof(stats));
	configure(&f);
	cache_init(&cfg);
	/* From nothing, as in a new process, whatever query_shutdown left. */
	memset(&qs, 0, sizeof(qs));
	query_init(NULL, &cfg, op_deliver);
	while (f.n > 0) {
		switch (fin_u8(&f) % 5) {
		case 0:
			op_ask(&f);
			break;
		case 1:
			op_answer(&f);
			break;
		case 2:
			op_fail(&f);
			break;
		case 3:
			op_advance(&f);
			(void)query_tick(fz_now);
			break;
		case 4:
			op_advance(&f);
			break;
		}
	}
	for (i = 0; i < nsends; i++)
		if (sends[i].open)
			op_complete(i, MUX_TIMEOUT, NULL, 0);
	fz_now += cfg.cf_timeout_ms + STALE_WAIT_MS + 1;
	FZ_CHECK(query_tick(fz_now) == 0);
	FZ_CHECK(query_pending() == 0);
	for (i = 0; i < nclients; i++)
		FZ_CHECK(clients[i].delivered == clients[i].accepted);
#ifdef FZ_STATS
	fprintf(stderr, "queries %llu answers %llu servfails %llu hits %llu "
	    "misses %llu stale %llu prefetch %llu bad %llu overload %llu "
	    "formerr %llu notimp %llu badvers %llu drops %llu\n",
	    (unsigned long long)stats.st_queries,
	    (unsigned long long)stats.st_answers,
	    (unsigned long long)stats.st_servfails,
	    (unsigned long long)stats.st_cache_hits,
	    (unsigned long long)stats.st_cache_misses,
	    (unsigned long long)stats.st_stale,
	    (unsigned long long)stats.st_prefetches,
	    (unsigned long long)stats.st_bad_replies,
	    (unsigned long long)stats.st_overload,
	    (unsigned long long)stats.st_formerr,
	    (unsigned long long)stats.st_notimp,
	    (unsigned long long)stats.st_badvers,
	    (unsigned long long)stats.st_drops);
#endif
	query_shutdown();
	cache_free();
	return 0;
}

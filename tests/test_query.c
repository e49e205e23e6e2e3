/*
 * Unit tests of query.c, the life of a client query: what goes upstream,
 * how answers are rebuilt for each client, joining flights, per-client
 * deadlines, the cache, serve-stale, prefetch, protocol errors, overload
 * and failures.  query.c is included so its state can be reached; the
 * mux is faked here (mux_send records what it is given and the test
 * completes it by calling the recorded callback), and there is no event
 * loop: query_init gets NULL and the timers run when query_tick is
 * called by hand.  cache.c, dns.c, log.c and util.c are the real ones.
 *
 * Every message handed to query_ask is a heap copy of exactly its
 * length, freed as soon as query_ask returns, and every reply handed to
 * a completion sits in a heap block whose spare room after it is
 * poisoned (and checked for writes), so that under -fsanitize=address
 * keeping a pointer into either, or reading past its end, is reported.
 */
#include "../query.c"

#include <stdio.h>

#ifdef __SANITIZE_ADDRESS__
#include <sanitizer/asan_interface.h>
#define POISON(p, n)	ASAN_POISON_MEMORY_REGION((p), (n))
#define UNPOISON(p, n)	ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define POISON(p, n)	((void)(p), (void)(n))
#define UNPOISON(p, n)	((void)(p), (void)(n))
#endif

struct stats	 stats;

#include "check.h"

#define T_A		1
#define T_SOA		6
#define T_TXT		16
#define T_AAAA		28
#define C_IN		1
#define C_CH		3

#define OPT_COOKIE	10
#define OPT_KEEPALIVE	11
#define OPT_PADDING	12
#define OPT_NSID	3
#define OPT_UNKNOWN	65001

/* An arbitrary monotonic clock reading, in ms, to start from. */
#define T0		((int64_t)5000000)
#define SEC(s)		((int64_t)(s) * 1000)

#define MSG_MAX		2048
#define SENDS_MAX	1024
#define CLIENTS_MAX	2048
#define DELIV_MAX	1024
#define SPARE		256	/* room after a reply, as the mux's buffer has */

/* ---- message building ---- */

#include "mb.h"
#include "walk.h"

struct query {
	uint8_t		 m[MSG_MAX];
	size_t		 len;
	struct dns_qinfo qi;
	int		 rc;		/* dns_parse_query's verdict */
};

/* Query flags for mkq. */
#define Q_RD		0x01
#define Q_CD		0x02
#define Q_OPT		0x04
#define Q_DO		0x08	/* implies Q_OPT */

/* An OPT record in section sec; ttl carries ext-RCODE, version, flags. */
static void
mb_opt_full(struct mb *b, enum section sec, uint16_t payload, uint32_t ttl,
    const void *rd, size_t rdlen)
{
	mb_rr(b, sec, ".", 0, DNS_TYPE_OPT, payload, ttl, rd, rdlen);
}

static void
mb_opt(struct mb *b, uint16_t payload, int do_bit, const void *rd,
    size_t rdlen)
{
	mb_opt_full(b, AR, payload, do_bit ? 0x8000 : 0, rd, rdlen);
}

/* One EDNS option into o. */
static void
opt_add(struct mb *o, uint16_t code, const void *data, size_t len)
{
	mb_u16(o, code);
	mb_u16(o, (unsigned int)len);
	mb_bytes(o, data, len);
}

/* ECS option data: family 1, the prefix, scope 0, the bytes it covers. */
static size_t
ecs_data(uint8_t *out, int prefix, const uint8_t *addr)
{
	size_t	 alen = ((size_t)prefix + 7) / 8;

	out[0] = 0;
	out[1] = 1;
	out[2] = (uint8_t)prefix;
	out[3] = 0;
	memcpy(out + 4, addr, alen);
	return 4 + alen;
}

/* A query; OPT options (rd, rdlen) when it has OPT. */
static void
mkq_opts(struct query *qm, uint16_t id, const char *name, uint16_t type,
    uint16_t class, int flags, const void *rd, size_t rdlen)
{
	struct mb	 b;

	mb_hdr(&b, id, (flags & Q_RD) ? 0x01 : 0, (flags & Q_CD) ? 0x10 : 0);
	mb_question(&b, name, type, class);
	if (flags & (Q_OPT | Q_DO))
		mb_opt(&b, 1232, (flags & Q_DO) != 0, rd, rdlen);
	memcpy(qm->m, b.m, b.len);
	qm->len = b.len;
	memset(&qm->qi, 0, sizeof(qm->qi));
	qm->rc = dns_parse_query(qm->m, qm->len, &qm->qi);
	if (qm->rc != 0) {
		fprintf(stderr, "test query %s does not parse\n", name);
		exit(2);
	}
}

static void
mkq(struct query *qm, uint16_t id, const char *name, uint16_t type,
    int flags)
{
	mkq_opts(qm, id, name, type, C_IN, flags, NULL, 0);
}

/* A query with an ECS option for prefix/addr (and OPT). */
static void
mkq_ecs(struct query *qm, uint16_t id, const char *name, int flags,
    int prefix, const uint8_t *addr)
{
	struct mb	 o;
	uint8_t		 e[ECS_MAX];

	o.len = 0;
	opt_add(&o, DNS_OPT_ECS, e, ecs_data(e, prefix, addr));
	mkq_opts(qm, id, name, T_A, C_IN, flags | Q_OPT, o.m, o.len);
}

/* Any bytes as a client message (they need not parse). */
static void
mkraw(struct query *qm, const uint8_t *m, size_t len)
{
	memcpy(qm->m, m, len);
	qm->len = len;
	memset(&qm->qi, 0, sizeof(qm->qi));
	qm->rc = dns_parse_query(qm->m, qm->len, &qm->qi);
}

/* The index of the one OPT in m, -1 when none, -2 when unparsable. */
static int
opt_index(const uint8_t *m, size_t len, struct rrv *rr, int max)
{
	int	 n, k, at = -1;

	if ((n = walk(m, len, rr, max)) < 0 || n > max)
		return -2;
	for (k = 0; k < n; k++)
		if (rr[k].type == DNS_TYPE_OPT) {
			if (at >= 0)
				return -2;
			at = k;
		}
	return at;
}

/* The TTL field of m's OPT, or -1. */
static long long
opt_ttl(const uint8_t *m, size_t len)
{
	struct rrv	 rr[64];
	int		 k = opt_index(m, len, rr, 64);

	return k < 0 ? -1 : (long long)rr[k].ttl;
}

/* The rdata length of m's OPT, or -1. */
static int
opt_rdlen(const uint8_t *m, size_t len)
{
	struct rrv	 rr[64];
	int		 k = opt_index(m, len, rr, 64);

	return k < 0 ? -1 : rr[k].rdlen;
}

/*
 * Finds the option `code` in m's OPT: where its data starts (*at) and its
 * length (*olen).  Returns 0, -1 when absent, -2 when m has no OPT or its
 * options do not tile its rdata.
 */
static int
opt_find(const uint8_t *m, size_t len, uint16_t code, size_t *at,
    size_t *olen)
{
	struct rrv	 rr[64];
	size_t		 off, end, l;
	int		 k = opt_index(m, len, rr, 64), found = -1;

	if (k < 0)
		return -2;
	off = rr[k].rdata;
	end = off + rr[k].rdlen;
	while (off < end) {
		if (off + 4 > end)
			return -2;
		l = dns_get16(m + off + 2);
		if (off + 4 + l > end)
			return -2;
		if (found == -1 && dns_get16(m + off) == code) {
			*at = off + 4;
			*olen = l;
			found = 0;
		}
		off += 4 + l;
	}
	return found;
}

/*
 * The INFO-CODE of the Extended DNS Error in m's OPT; -1 when its OPT
 * has none, -2 when there is no OPT, -3 when it does not parse.
 */
static int
ede_of(const uint8_t *m, size_t len)
{
	struct rrv	 rr[64];
	size_t		 off, end, olen;
	int		 k = opt_index(m, len, rr, 64);

	if (k == -1)
		return -2;
	if (k < 0)
		return -3;
	off = rr[k].rdata;
	end = off + rr[k].rdlen;
	while (off + 4 <= end) {
		olen = dns_get16(m + off + 2);
		if (off + 4 + olen > end)
			return -3;
		if (dns_get16(m + off) == DNS_OPT_EDE)
			return olen >= 2 ? dns_get16(m + off + 4) : -3;
		off += 4 + olen;
	}
	return off == end ? -1 : -3;
}

/* ---- the fake mux ---- */

static struct config	 cfg;
static int64_t		 clk;		/* the test's clock */

static struct send {
	uint8_t		 msg[UPQUERY_MAX];
	size_t		 len;
	int64_t		 at;		/* the `now` it was sent at */
	int64_t		 deadline0;	/* as sent */
	int64_t		 deadline;	/* as extended */
	int		 nextend;
	mux_done_fn	*done;
	void		*arg;
	int		 open;		/* not called back yet */
	int		 overdue;	/* what mux_overdue says */
} sends[SENDS_MAX];
static int	 nsends;
static int	 mux_refuse;		/* mux_send says -1 */
static int	 mux_cap = 64;
static int	 mux_bad;		/* calls the mux contract forbids */
static int	 send_bad;		/* upstream messages not as they must be */
static int	 in_done;

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

/* Why the upstream message m is not what dnsfwd must send, or NULL. */
static const char *
send_problem(const uint8_t *m, size_t len)
{
	struct rrv	 rr[4];
	size_t		 qend, off, end;
	int		 n, necs = 0, nka = 0, npad = 0;

	if (len < DNS_HDRLEN || len > UPQUERY_MAX)
		return "length";
	if (dns_get16(m) != 0)
		return "ID not 0";
	if (m[2] != F_RD)
		return "flags: not just RD";
	if ((m[3] & ~F_CD) != 0)
		return "flags: more than CD";
	if (dns_get16(m + 4) != 1 || dns_get16(m + 6) != 0 ||
	    dns_get16(m + 8) != 0 || dns_get16(m + 10) != 1)
		return "counts";
	if ((qend = qend_of(m, len)) == 0)
		return "question";
	if ((n = walk(m, len, rr, 4)) != 1 || rr[0].type != DNS_TYPE_OPT ||
	    rr[0].start != qend || m[qend] != 0)
		return "not one OPT after the question";
	if (rr[0].class != EDNS_PAYLOAD)
		return "OPT payload";
	if ((rr[0].ttl & ~0x8000u) != 0)
		return "OPT ext-RCODE, version or flags";
	/*
	 * Ours only: the ECS when kept, edns-tcp-keepalive without a
	 * TIMEOUT, and zero padding to a multiple of 128 octets (RFC 8467).
	 */
	off = rr[0].rdata;
	end = off + rr[0].rdlen;
	while (off < end) {
		size_t	 l, i;

		if (off + 4 > end || off + 4 + dns_get16(m + off + 2) > end)
			return "OPT options";
		l = dns_get16(m + off + 2);
		switch (dns_get16(m + off)) {
		case DNS_OPT_ECS:
			if (!cfg.cf_keep_ecs)
				return "an ECS not kept";
			necs++;
			break;
		case DNS_OPT_KEEPALIVE:
			if (l != 0)
				return "keepalive with a TIMEOUT";
			nka++;
			break;
		case DNS_OPT_PADDING:
			for (i = 0; i < l; i++)
				if (m[off + 4 + i] != 0)
					return "padding not zero";
			npad++;
			break;
		default:
			return "an option not ours";
		}
		off += 4 + l;
	}
	if (necs > 1 || nka != 1 || npad != 1)
		return "not one keepalive, one padding, at most one ECS";
	if (len % 128 != 0)
		return "not padded to a multiple of 128";
	return NULL;
}

int
mux_send(const uint8_t *msg, size_t len, int64_t deadline,
    mux_done_fn *done, void *arg, int64_t now)
{
	struct send	*s;
	const char	*why;

	if (in_done)
		mux_bad++;	/* fine, but this test does not expect it */
	if (nsends == SENDS_MAX || done == NULL || deadline <= now ||
	    mux_inflight() >= mux_cap) {
		fprintf(stderr, "mux_send: contract broken (%d sends, "
		    "deadline %lld at %lld, %d in flight)\n", nsends,
		    (long long)deadline, (long long)now, mux_inflight());
		mux_bad++;
		return -1;
	}
	if ((why = send_problem(msg, len)) != NULL) {
		fprintf(stderr, "mux_send: %s\n", why);
		send_bad++;
	}
	if (mux_refuse)
		return -1;
	s = &sends[nsends];
	memset(s, 0, sizeof(*s));
	memcpy(s->msg, msg, len <= UPQUERY_MAX ? len : UPQUERY_MAX);
	s->len = len;
	s->at = now;
	s->deadline0 = s->deadline = deadline;
	s->done = done;
	s->arg = arg;
	s->open = 1;
	return nsends++;
}

static int64_t	 active_at = -1;	/* the last mux_active */

void
mux_active(int64_t now)
{
	active_at = now;
}

void
mux_extend(int h, int64_t deadline, int64_t now)
{
	if (h < 0 || h >= nsends || !sends[h].open || deadline <= now ||
	    now < sends[h].at) {
		fprintf(stderr, "mux_extend: handle %d not in flight, or "
		    "deadline %lld at %lld\n", h, (long long)deadline,
		    (long long)now);
		mux_bad++;
		return;
	}
	if (deadline > sends[h].deadline)
		sends[h].deadline = deadline;
	sends[h].nextend++;
}

int
mux_overdue(int h)
{
	if (h < 0 || h >= nsends || !sends[h].open) {
		fprintf(stderr, "mux_overdue: handle %d not in flight\n", h);
		mux_bad++;
		return 0;
	}
	return sends[h].overdue;
}

/*
 * Calls send h back, as the mux does: with r (copied into a heap block
 * with poisoned spare room after it) when it is an answer.
 */
static void
complete(int h, enum mux_status st, const struct mb *r, int64_t now)
{
	struct send	*s;
	uint8_t		*buf = NULL;
	size_t		 len = 0, i;
	int		 spoilt = 0;

	if (h < 0 || h >= nsends || !sends[h].open) {
		fprintf(stderr, "complete: send %d is not open\n", h);
		mux_bad++;
		return;
	}
	s = &sends[h];
	s->open = 0;
	if (r != NULL) {
		len = r->len;
		if ((buf = malloc(len + SPARE)) == NULL)
			abort();
		memcpy(buf, r->m, len);
		memset(buf + len, 0xa5, SPARE);
		POISON(buf + len, SPARE);
	}
	in_done++;
	s->done(s->arg, st, buf, len, now);
	in_done--;
	if (buf != NULL) {
		UNPOISON(buf + len, SPARE);
		for (i = 0; i < SPARE; i++)
			spoilt += buf[len + i] != 0xa5;
		if (spoilt)
			mux_bad++;	/* written past the reply's end */
		free(buf);
	}
}

/*
 * The header and question of an upstream answer to send h: another ID,
 * QR, RA, the sent RD and CD, and rcode; the question as sent, in
 * another letter case when recase.
 */
static void
reply_init(struct mb *r, int h, int rcode, int recase)
{
	const struct send *s = &sends[h];
	size_t		 qend = qend_of(s->msg, s->len), i;

	memcpy(r->m, s->msg, qend);
	r->len = qend;
	dns_put16(r->m, 0xd00d);
	r->m[2] = (uint8_t)(0x80 | 0x04 | (s->msg[2] & 0x01));	/* QR AA RD */
	r->m[3] = (uint8_t)(0x80 | (s->msg[3] & 0x10) | rcode);
	dns_put16(r->m + 4, 1);
	dns_put16(r->m + 6, 0);
	dns_put16(r->m + 8, 0);
	dns_put16(r->m + 10, 0);
	for (i = DNS_HDRLEN; recase && i < qend - 4; i++)
		if ((r->m[i] | 0x20) >= 'a' && (r->m[i] | 0x20) <= 'z')
			r->m[i] ^= 0x20;
}

/* An upstream OPT carrying options that must never reach a client. */
static void
upstream_opt(struct mb *r, int do_bit)
{
	static const uint8_t cookie[16] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10,
	    11, 12, 13, 14, 15, 16 };
	static const uint8_t pad[24];
	struct mb	 o;

	o.len = 0;
	opt_add(&o, OPT_COOKIE, cookie, sizeof(cookie));
	opt_add(&o, OPT_NSID, "up1", 3);
	opt_add(&o, OPT_PADDING, pad, sizeof(pad));
	mb_opt(r, 4096, do_bit, o.m, o.len);
}

/* A positive answer to send h: one A record, and the upstream's OPT. */
static void
reply_a(struct mb *r, int h, uint32_t ttl, uint8_t x)
{
	reply_init(r, h, 0, 1);
	mb_a(r, AN, NULL, DNS_HDRLEN, ttl, x);
	upstream_opt(r, 1);
}

/* Answers send h at now with one A record. */
static void
answer_a(int h, uint32_t ttl, uint8_t x, int64_t now)
{
	struct mb	 r;

	reply_a(&r, h, ttl, x);
	complete(h, MUX_ANSWER, &r, now);
}

static void
answer_rcode(int h, int rcode, int64_t now)
{
	struct mb	 r;

	reply_init(&r, h, rcode, 0);
	upstream_opt(&r, 0);
	complete(h, MUX_ANSWER, &r, now);
}

/* ---- clients and what they are given ---- */

enum cstate { C_FREE, C_ASKING, C_ACCEPTED, C_DROPPED, C_ABANDONED };

static struct client {
	struct query	 qm;
	enum cstate	 state;
	int		 ndeliv;
	int		 last;		/* its latest delivery in got[] */
	int		 kind;		/* CLIENT_TCP or CLIENT_UDP */
} clients[CLIENTS_MAX];
static int	 nclients;

static struct delivery {
	int		 client;
	uint8_t		 msg[MSG_MAX];
	size_t		 len;
	struct dns_qinfo qi;
} got[DELIV_MAX];
static int	 ngot;
static int	 deliv_bad;	/* deliveries not as they must be */
static int	 total_asked, total_delivered;

#define GEN(id)		(0x5eed0000u ^ (uint32_t)(id))

/*
 * Why a delivery to client c is not what any answer to it must be, or
 * NULL: its ID, QR, and for a query that parsed its question bytes, RD,
 * and exactly one OPT of our own (version 0, our payload, its DO bit,
 * no option but an EDE) when it sent OPT, none when it did not.
 */
static const char *
deliv_problem(const struct client *c, const uint8_t *m, size_t len,
    const struct dns_qinfo *qi)
{
	const struct query *qm = &c->qm;
	size_t		 qend = qm->qi.qi_qend, off, end;
	struct rrv	 rr[64];
	int		 n, k, nopt = 0, nede, nka;

	if (len < DNS_HDRLEN)
		return "shorter than a header";
	if (len > MSG_MAX)
		return "longer than this test expects";
	if (dns_get16(m) != dns_get16(qm->m))
		return "not the client's ID";
	if ((m[2] & F_QR) == 0)
		return "QR not set";
	/* A refusal (keepalive over UDP is one): the scenario checks it. */
	if (qm->rc != 0 || (qm->qi.qi_keepalive && c->kind == CLIENT_UDP))
		return NULL;
	if ((m[2] & F_OPCODE) != 0)
		return "opcode";
	if ((m[2] & F_RD) != (qm->m[2] & F_RD))
		return "not the client's RD";
	if (len < qend || memcmp(m + DNS_HDRLEN, qm->m + DNS_HDRLEN,
	    qend - DNS_HDRLEN) != 0)
		return "not the client's question bytes";
	if ((n = walk(m, len, rr, 64)) < 0 || n > 64)
		return "does not parse";
	for (k = 0; k < n; k++) {
		if (rr[k].type != DNS_TYPE_OPT)
			continue;
		nopt++;
		if (k != n - 1 || k < dns_get16(m + 6) + dns_get16(m + 8))
			return "OPT not last in the additional section";
		if (m[rr[k].start] != 0)
			return "OPT owner not the root";
		if (rr[k].class != EDNS_PAYLOAD)
			return "OPT payload not ours";
		if ((rr[k].ttl & ~0x8000u) != 0)
			return "OPT ext-RCODE, version or flags";
		if (((rr[k].ttl & 0x8000u) != 0) != (qm->qi.qi_do != 0))
			return "OPT DO not the client's";
		off = rr[k].rdata;
		end = off + rr[k].rdlen;
		for (nede = nka = 0; off < end;) {
			if (off + 4 > end ||
			    off + 4 + dns_get16(m + off + 2) > end)
				return "OPT options cut";
			switch (dns_get16(m + off)) {
			case DNS_OPT_EDE:
				if (nede++ > 0 || dns_get16(m + off + 2) < 2)
					return "EDE twice, or too short";
				break;
			case DNS_OPT_KEEPALIVE:
				if (nka++ > 0 || !qm->qi.qi_keepalive ||
				    dns_get16(m + off + 2) != 2 ||
				    dns_get16(m + off + 4) !=
				    TCP_CLIENT_IDLE * 10)
					return "keepalive not as it must be";
				break;
			default:
				return "an option neither EDE nor keepalive";
			}
			off += 4 + dns_get16(m + off + 2);
		}
		if (qm->qi.qi_keepalive && nka == 0)
			return "keepalive offered, our idle time not told";
	}
	if (nopt != (qm->qi.qi_has_opt ? 1 : 0))
		return "OPT count not the client's";
	if (qi == NULL || qi->qi_qend != qend ||
	    qi->qi_has_opt != qm->qi.qi_has_opt ||
	    qi->qi_do != qm->qi.qi_do || qi->qi_udpsize != qm->qi.qi_udpsize ||
	    qi->qi_qtype != qm->qi.qi_qtype)
		return "query info handed over not the client's";
	return NULL;
}

static void
deliver(const struct client_ref *cr, uint8_t *msg, size_t len,
    const struct dns_qinfo *qi)
{
	struct client	*c;
	struct delivery	*d;
	const char	*why;
	uint32_t	 id = cr->cr_slot;

	total_delivered++;
	if (id >= (uint32_t)nclients || cr->cr_gen != GEN(id) ||
	    cr->cr_kind != clients[id].kind) {
		fprintf(stderr, "deliver: to nobody we know\n");
		deliv_bad++;
		return;
	}
	c = &clients[id];
	c->ndeliv++;
	if (c->state != C_ASKING && c->state != C_ACCEPTED) {
		fprintf(stderr, "deliver: client %u did not ask\n", id);
		deliv_bad++;
	}
	if ((why = deliv_problem(c, msg, len, qi)) != NULL) {
		fprintf(stderr, "deliver: client %u: %s\n", id, why);
		deliv_bad++;
	}
	if (ngot == DELIV_MAX || len > MSG_MAX)
		return;
	d = &got[ngot];
	d->client = (int)id;
	memcpy(d->msg, msg, len);
	d->len = len;
	memset(&d->qi, 0, sizeof(d->qi));
	if (qi != NULL)
		d->qi = *qi;
	c->last = ngot++;
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

/*
 * A new client asks qm at now; returns its number.  The message is a
 * heap copy of exactly its length, freed once query_ask returns.
 */
static int
asknow_kind(const struct query *qm, int64_t now, int kind)
{
	struct client_ref cr;
	struct client	*c;
	uint8_t		*copy;
	int		 id = nclients, rv;

	if (nclients == CLIENTS_MAX) {
		fprintf(stderr, "too many clients\n");
		exit(2);
	}
	c = &clients[nclients++];
	memset(c, 0, sizeof(*c));
	c->qm = *qm;
	c->last = -1;
	c->kind = kind;
	c->state = C_ASKING;
	memset(&cr, 0, sizeof(cr));
	cr.cr_kind = (uint8_t)kind;
	cr.cr_slot = (uint32_t)id;
	cr.cr_gen = GEN(id);
	copy = dup_exact(qm->m, qm->len);
	rv = query_ask(&cr, copy, qm->len, now);
	free(copy);
	c->state = rv == 0 ? C_ACCEPTED : C_DROPPED;
	if (rv != 0 && rv != -1) {
		fprintf(stderr, "query_ask returned %d\n", rv);
		deliv_bad++;
	}
	total_asked += rv == 0;
	return id;
}

/* A TCP client asks. */
static int
asknow(const struct query *qm, int64_t now)
{
	return asknow_kind(qm, now, CLIENT_TCP);
}

/* The latest delivery to client id, or NULL. */
static const struct delivery *
answer_of(int id)
{
	if (id < 0 || id >= nclients || clients[id].last < 0)
		return NULL;
	return &got[clients[id].last];
}

static int
ndeliv(int id)
{
	return id >= 0 && id < nclients ? clients[id].ndeliv : -1;
}

/* Client id was given one answer, with this rcode. */
static int
got_rcode(int id, int rcode)
{
	const struct delivery *d = answer_of(id);

	return ndeliv(id) == 1 && d != NULL && d->len >= DNS_HDRLEN &&
	    (d->msg[3] & 0x0f) == rcode;
}

/* Client id was given one SERVFAIL, with EDE ede (EDE_NONE: no OPT). */
static int
got_servfail(int id, int ede)
{
	const struct delivery *d = answer_of(id);

	if (!got_rcode(id, RCODE_SERVFAIL))
		return 0;
	if (ede == EDE_NONE)
		return opt_count(d->msg, d->len) == 0;
	return ede_of(d->msg, d->len) == ede;
}

/* Client id was given one NOERROR answer with A 192.0.2.x. */
static int
got_a(int id, int x)
{
	const struct delivery *d = answer_of(id);

	return got_rcode(id, RCODE_NOERROR) && a_of(d->msg, d->len) == x;
}

static long long
got_ttl(int id)
{
	const struct delivery *d = answer_of(id);

	return d == NULL ? -1 : a_ttl(d->msg, d->len);
}

static int
got_ede(int id)
{
	const struct delivery *d = answer_of(id);

	return d == NULL ? -4 : ede_of(d->msg, d->len);
}

/* ---- set-up and tear-down ---- */

static void
setup(void)
{
	memset(&cfg, 0, sizeof(cfg));
	cfg.cf_timeout_ms = 2000;
	cfg.cf_cache_size = 64;
	cfg.cf_max_ttl = 86400;
	cfg.cf_neg_max_ttl = 3600;
	mux_cap = 64;
	mux_refuse = 0;
}

/*
 * Starts query.c and cache.c with cfg.  query_init does not reset the
 * pool counters query_shutdown leaves behind (see test_reinit), so the
 * state is cleared here first, unless fresh is 0.
 */
static void
start_raw(int fresh)
{
	memset(&stats, 0, sizeof(stats));
	nsends = 0;
	ngot = 0;
	nclients = 0;
	clk = T0;
	cache_init(&cfg);
	if (fresh)
		memset(&qs, 0, sizeof(qs));
	query_init(NULL, &cfg, deliver);
}

static void
start(void)
{
	start_raw(1);
}

/*
 * Ends a scenario: nothing may still wait; sends still open are called
 * back (the mux always does) and must reach nobody; every query that
 * query_ask took got exactly one answer, and every one it dropped none.
 */
static void
finish(int line)
{
	int	 i, nf = check_failed, before = ngot, wrong = 0;

	CHECK(query_pending() == 0);
	for (i = 0; i < nsends; i++)
		if (sends[i].open)
			complete(i, MUX_TIMEOUT, NULL, clk + SEC(3600));
	CHECK(ngot == before);
	CHECK(query_tick(clk + SEC(7200)) == 0);
	for (i = 0; i < nclients; i++) {
		if (clients[i].state == C_ACCEPTED &&
		    clients[i].ndeliv != 1) {
			fprintf(stderr, "client %d: %d answers\n", i,
			    clients[i].ndeliv);
			wrong++;
		}
		if (clients[i].state == C_DROPPED &&
		    clients[i].ndeliv != 0) {
			fprintf(stderr, "client %d: dropped, yet %d "
			    "answers\n", i, clients[i].ndeliv);
			wrong++;
		}
	}
	CHECK(wrong == 0);
	CHECK(deliv_bad == 0);
	CHECK(send_bad == 0);
	CHECK(mux_bad == 0);
	deliv_bad = send_bad = mux_bad = 0;
	query_shutdown();
	cache_free();
	if (check_failed != nf)
		fprintf(stderr, "  (scenario ending at line %d)\n", line);
}
#define FINISH()	finish(__LINE__)

/* ---- 1. what goes upstream ---- */

/* Cookie, keepalive, padding, an unknown option and ECS, in that order. */
static size_t
client_options(uint8_t *out, size_t cap, const uint8_t **ecs, size_t *ecslen)
{
	static const uint8_t cookie[8] = { 0xc0, 0x0c, 1, 2, 3, 4, 5, 6 };
	static const uint8_t pad[40];
	static const uint8_t net[] = { 203, 0, 113, 0 };
	struct mb	 o;
	uint8_t		 e[ECS_MAX];
	size_t		 el = ecs_data(e, 24, net), at;

	o.len = 0;
	opt_add(&o, OPT_COOKIE, cookie, sizeof(cookie));
	opt_add(&o, OPT_KEEPALIVE, NULL, 0);
	opt_add(&o, OPT_PADDING, pad, sizeof(pad));
	opt_add(&o, OPT_UNKNOWN, "abc", 3);
	at = o.len + 4;
	opt_add(&o, DNS_OPT_ECS, e, el);
	if (o.len > cap)
		abort();
	memcpy(out, o.m, o.len);
	*ecs = out + at;
	*ecslen = el;
	return o.len;
}

/*
 * Checks the upstream message of send h against the client query qm it
 * was made from: ID 0, RD=1, qm's CD, its question bytes, and one OPT of
 * ours (version 0, our payload, qm's DO) carrying the ECS verbatim when
 * ecs is not NULL, keepalive without a TIMEOUT, and zero padding to a
 * multiple of 128 octets; none of the client's other options.
 */
static void
check_sent(int h, const struct query *qm, const uint8_t *ecs, size_t ecslen,
    int line)
{
	const uint8_t	*m = sends[h].msg;
	size_t		 len = sends[h].len, qend = qm->qi.qi_qend, at, l;
	size_t		 base = qend + 11 + (ecs ? 4 + ecslen : 0) + 4 + 4;
	int		 nf = check_failed;

	CHECK(len % 128 == 0 && len >= base && len < base + 128);
	CHECK(send_problem(m, len) == NULL);
	CHECK(dns_get16(m) == 0);
	CHECK(m[2] == F_RD);
	CHECK(m[3] == (qm->m[3] & F_CD));
	CHECK(dns_get16(m + 4) == 1 && dns_get16(m + 6) == 0 &&
	    dns_get16(m + 8) == 0 && dns_get16(m + 10) == 1);
	CHECK(memcmp(m + DNS_HDRLEN, qm->m + DNS_HDRLEN,
	    qend - DNS_HDRLEN) == 0);
	CHECK(m[qend] == 0 && dns_get16(m + qend + 1) == DNS_TYPE_OPT);
	CHECK(dns_get16(m + qend + 3) == EDNS_PAYLOAD);
	CHECK(m[qend + 5] == 0 && m[qend + 6] == 0);	/* version 0 */
	CHECK(m[qend + 7] == (qm->qi.qi_do ? 0x80 : 0) && m[qend + 8] == 0);
	CHECK(opt_count(m, len) == 1);
	if (ecs != NULL) {
		CHECK(opt_find(m, len, DNS_OPT_ECS, &at, &l) == 0 &&
		    l == ecslen && memcmp(m + at, ecs, ecslen) == 0);
		CHECK(dns_get16(m + qend + 11) == DNS_OPT_ECS);	/* first */
	} else
		CHECK(opt_find(m, len, DNS_OPT_ECS, &at, &l) == -1);
	CHECK(opt_find(m, len, DNS_OPT_KEEPALIVE, &at, &l) == 0 && l == 0);
	CHECK(opt_find(m, len, DNS_OPT_PADDING, &at, &l) == 0 &&
	    at + l == len && l == len - base);
	CHECK(opt_find(m, len, OPT_COOKIE, &at, &l) == -1);
	CHECK(opt_find(m, len, OPT_UNKNOWN, &at, &l) == -1);
	CHECK(opt_find(m, len, DNS_OPT_EDE, &at, &l) == -1);
	if (check_failed != nf)
		fprintf(stderr, "  (check_sent from line %d)\n", line);
}
#define CHECK_SENT(h, qm, ecs, ecslen) check_sent((h), (qm), (ecs), \
	    (ecslen), __LINE__)

static void
test_upstream_query(void)
{
	struct query	 qm, qn, ql;
	uint8_t		 opts[256];
	const uint8_t	*ecs;
	size_t		 olen, ecslen, at, l;
	const struct delivery *d;
	char		 lname[200];
	int		 a, b, c, e, keep;

	/* a name long enough to need a second 128-octet block */
	memset(lname, 0, sizeof(lname));
	for (a = 0; a < 3; a++) {
		memset(lname + a * 41, 'x', 40);
		lname[a * 41 + 40] = '.';
	}
	memcpy(lname + 123, "example", 7);

	for (keep = 0; keep <= 1; keep++) {
		setup();
		cfg.cf_keep_ecs = keep;
		start();
		olen = client_options(opts, sizeof(opts), &ecs, &ecslen);
		/*
		 * RD=0, CD=1, DO=1, and cookie, keepalive, padding, an
		 * unknown option and ECS, from a TCP client.
		 */
		mkq_opts(&qm, 0x1234, "WwW.Example.COM", T_A, C_IN,
		    Q_CD | Q_DO, opts, olen);
		CHECK(qm.qi.qi_ecsoff != 0 && qm.qi.qi_keepalive);
		a = asknow(&qm, clk);
		CHECK(clients[a].state == C_ACCEPTED && ndeliv(a) == 0);
		CHECK(nsends == 1);
		CHECK_SENT(0, &qm, keep ? ecs : NULL, ecslen);
		CHECK(sends[0].len == 128);
		CHECK(sends[0].deadline0 == clk + cfg.cf_timeout_ms);
		CHECK(sends[0].at == clk);
		CHECK(query_pending() == 1 && mux_inflight() == 1);

		/* No OPT at all, RD=0, CD=0: ours still goes, DO=0. */
		mkq(&qn, 0x4321, "nO.opt.example", T_AAAA, 0);
		b = asknow(&qn, clk + 5);
		CHECK(nsends == 2);
		CHECK_SENT(1, &qn, NULL, 0);
		CHECK(sends[1].deadline0 == clk + 5 + cfg.cf_timeout_ms);

		/* A cookie alone (the first option): not forwarded. */
		mkq_opts(&qn, 0x4444, "cookie.example", T_A, C_IN,
		    Q_RD | Q_OPT, opts, 12);
		CHECK(!qn.qi.qi_keepalive);
		c = asknow(&qn, clk + 6);
		CHECK(nsends == 3);
		CHECK_SENT(2, &qn, NULL, 0);

		/* A long name: padded to 256. */
		mkq_opts(&ql, 0x5555, lname, T_A, C_IN, Q_RD | Q_OPT, opts,
		    olen);
		e = asknow(&ql, clk + 7);
		CHECK(nsends == 4);
		CHECK_SENT(3, &ql, keep ? ecs : NULL, ecslen);
		CHECK(sends[3].len == 256);

		answer_a(0, 300, 1, clk + 10);
		answer_a(1, 300, 2, clk + 10);
		answer_a(2, 300, 3, clk + 10);
		answer_a(3, 300, 4, clk + 10);
		CHECK(got_a(a, 1) && got_a(b, 2) && got_a(c, 3) &&
		    got_a(e, 4));
		/* the client that offered keepalive learns our idle time */
		d = answer_of(a);
		CHECK(d != NULL && opt_find(d->msg, d->len, DNS_OPT_KEEPALIVE,
		    &at, &l) == 0 && l == 2 &&
		    dns_get16(d->msg + at) == TCP_CLIENT_IDLE * 10);
		d = answer_of(c);
		CHECK(d != NULL && opt_find(d->msg, d->len, DNS_OPT_KEEPALIVE,
		    &at, &l) == -1);
		FINISH();
	}
}

/* ---- 2. how answers are rebuilt for the client ---- */

static void
test_answer_rebuilt(void)
{
	struct query	 qm;
	struct mb	 r;
	const struct delivery *d;
	struct rrv	 rr[16];
	size_t		 qend;
	int		 a, b, c, n, ttl0;

	setup();
	start();
	/* No OPT, RD=0; the upstream answers in other case, with its OPT. */
	mkq(&qm, 0xbeef, "wWw.ExAmPlE.cOm", T_A, 0);
	qend = qm.qi.qi_qend;
	a = asknow(&qm, clk);
	CHECK(nsends == 1);
	reply_a(&r, 0, 300, 7);
	complete(0, MUX_ANSWER, &r, clk + 20);
	d = answer_of(a);
	CHECK(got_a(a, 7));
	CHECK(d != NULL && dns_get16(d->msg) == 0xbeef);
	CHECK(d != NULL && memcmp(d->msg + DNS_HDRLEN, qm.m + DNS_HDRLEN,
	    qend - DNS_HDRLEN) == 0);
	CHECK(d != NULL && (d->msg[2] & F_RD) == 0);
	CHECK(d != NULL && (d->msg[2] & 0x84) == 0x84);	/* QR, upstream AA */
	CHECK(d != NULL && opt_count(d->msg, d->len) == 0);
	CHECK(d != NULL && dns_get16(d->msg + 6) == 1 &&
	    dns_get16(d->msg + 10) == 0);
	CHECK(d != NULL && d->len == qend + 16);	/* just the A record */
	CHECK(got_ttl(a) == 300);
	CHECK(stats.st_answers == 1);

	/* With OPT, DO=1: one OPT of ours, DO echoed, no options. */
	mkq(&qm, 0xcafe, "Www.example.COM", T_AAAA, Q_RD | Q_DO);
	b = asknow(&qm, clk + 30);
	CHECK(nsends == 2);
	reply_a(&r, 1, 300, 8);
	complete(1, MUX_ANSWER, &r, clk + 40);
	d = answer_of(b);
	CHECK(got_a(b, 8));
	CHECK(d != NULL && (d->msg[2] & F_RD) != 0);
	CHECK(d != NULL && opt_count(d->msg, d->len) == 1 &&
	    dns_get16(d->msg + 10) == 1);
	CHECK(d != NULL && opt_ttl(d->msg, d->len) == 0x8000);
	CHECK(d != NULL && opt_rdlen(d->msg, d->len) == 0);
	CHECK(d != NULL && d->len == qm.qi.qi_qend + 16 + 11);

	/* With OPT, DO=0; the upstream's OPT had DO=1. */
	mkq(&qm, 0xcaff, "www.example.com", T_TXT, Q_RD | Q_OPT);
	c = asknow(&qm, clk + 50);
	reply_a(&r, 2, 300, 9);
	complete(2, MUX_ANSWER, &r, clk + 60);
	d = answer_of(c);
	CHECK(got_a(c, 9) && d != NULL && opt_ttl(d->msg, d->len) == 0 &&
	    opt_rdlen(d->msg, d->len) == 0);
	CHECK(d != NULL && d->qi.qi_has_opt && d->qi.qi_udpsize == 1232);
	FINISH();

	/*
	 * An upstream OPT in the middle of the additional section goes,
	 * with everything after it, cached (TTL 300) or not (TTL 0).
	 */
	for (ttl0 = 0; ttl0 <= 1; ttl0++) {
		int	 with;

		setup();
		start();
		for (with = 0; with <= 1; with++) {
			mkq(&qm, (uint16_t)(0x100 + with),
			    with ? "mid1.example" : "mid0.example", T_A,
			    Q_RD | (with ? Q_OPT : 0));
			a = asknow(&qm, clk);
			CHECK(nsends == with + 1);
			reply_init(&r, with, 0, 0);
			mb_a(&r, AN, NULL, DNS_HDRLEN, ttl0 ? 0 : 300, 1);
			mb_a(&r, AR, "ns1.mid.example", 0, 300, 53);
			upstream_opt(&r, 0);
			mb_a(&r, AR, "ns2.mid.example", 0, 300, 54);
			complete(with, MUX_ANSWER, &r, clk + 1);
			d = answer_of(a);
			CHECK(got_a(a, 1));
			n = d == NULL ? -1 : walk(d->msg, d->len, rr, 16);
			CHECK(n == 2 + with);
			CHECK(d != NULL &&
			    dns_get16(d->msg + 10) == 1 + with);
			CHECK(n >= 2 && rr[1].type == T_A &&
			    d->msg[rr[1].rdata + 3] == 53);
			CHECK(n != 3 || (rr[2].type == DNS_TYPE_OPT &&
			    rr[2].rdlen == 0));
			clk += 10;
		}
		/* the cached one is answered from the cache, also cut */
		if (!ttl0) {
			mkq(&qm, 0x200, "MID0.example", T_A, Q_RD);
			a = asknow(&qm, clk);
			CHECK(nsends == 2 && got_a(a, 1));
			d = answer_of(a);
			CHECK(d != NULL && dns_get16(d->msg + 10) == 1);
		}
		FINISH();
	}

	/*
	 * An OPT where no OPT may be (the answer or authority section):
	 * nothing of the upstream's EDNS may reach the client either way,
	 * whether the answer is refused or the OPT cut.
	 */
	setup();
	start();
	{
		static const uint8_t cookie[] = { 0, 10, 0, 8, 1, 2, 3, 4, 5,
		    6, 7, 8 };
		char	 name[64];
		size_t	 at, l;
		int	 with, sec;

		for (sec = AN; sec <= NS; sec++)
			for (with = 0; with <= 1; with++) {
				snprintf(name, sizeof(name), "opt%d-%d.example",
				    sec, with);
				mkq(&qm, (uint16_t)(0x300 + with), name, T_A,
				    Q_RD | (with ? Q_OPT : 0));
				a = asknow(&qm, clk);
				reply_init(&r, nsends - 1, 0, 0);
				mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 1);
				mb_opt_full(&r, (enum section)sec, 4096, 0,
				    cookie, sizeof(cookie));
				complete(nsends - 1, MUX_ANSWER, &r, clk + 1);
				d = answer_of(a);
				CHECK(ndeliv(a) == 1);
				CHECK(d != NULL &&
				    opt_count(d->msg, d->len) == with);
				CHECK(d != NULL && opt_find(d->msg, d->len,
				    OPT_COOKIE, &at, &l) != 0);
			}
	}
	FINISH();
}

/* ---- 3. joining a flight ---- */

static void
test_join(void)
{
	struct query	 qa1, qa2, qa3, qd, qc, qt;
	struct mb	 r;
	const struct delivery *d;
	int		 a, b, c, e, f, g, h, i;

	setup();
	start();
	mkq(&qa1, 1, "join.example", T_A, Q_RD);
	mkq(&qa2, 2, "JOIN.example", T_A, 0);			/* RD=0 */
	mkq(&qa3, 3, "jOiN.ExAmPlE", T_A, Q_RD | Q_OPT);	/* DO=0 */
	a = asknow(&qa1, clk);
	b = asknow(&qa2, clk + 10);
	c = asknow(&qa3, clk + 20);
	CHECK(nsends == 1);
	CHECK(query_pending() == 3);
	CHECK(ndeliv(a) == 0 && ndeliv(b) == 0 && ndeliv(c) == 0);
	CHECK(stats.st_cache_misses == 3 && stats.st_queries == 3);
	/* the later members moved the send's deadline */
	CHECK(sends[0].deadline == clk + 20 + cfg.cf_timeout_ms);

	/* DO=1, CD=1, AAAA, CH: each its own send */
	mkq(&qd, 4, "join.example", T_A, Q_RD | Q_DO);
	e = asknow(&qd, clk + 30);
	CHECK(nsends == 2);
	mkq(&qc, 5, "join.example", T_A, Q_RD | Q_CD);
	f = asknow(&qc, clk + 30);
	CHECK(nsends == 3);
	mkq(&qt, 6, "join.example", T_AAAA, Q_RD);
	g = asknow(&qt, clk + 30);
	CHECK(nsends == 4);
	mkq_opts(&qt, 7, "join.example", T_A, C_CH, Q_RD, NULL, 0);
	h = asknow(&qt, clk + 30);
	CHECK(nsends == 5);
	CHECK(query_pending() == 7 && mux_inflight() == 5);
	CHECK(opt_ttl(sends[1].msg, sends[1].len) == 0x8000);	/* DO */
	CHECK(sends[2].msg[3] == F_CD);

	reply_a(&r, 0, 300, 11);
	complete(0, MUX_ANSWER, &r, clk + 100);
	CHECK(got_a(a, 11) && got_a(b, 11) && got_a(c, 11));
	d = answer_of(a);
	CHECK(d != NULL && dns_get16(d->msg) == 1 && (d->msg[2] & F_RD) &&
	    memcmp(d->msg + DNS_HDRLEN, qa1.m + DNS_HDRLEN,
	    qa1.qi.qi_qend - DNS_HDRLEN) == 0);
	d = answer_of(b);
	CHECK(d != NULL && dns_get16(d->msg) == 2 && !(d->msg[2] & F_RD) &&
	    memcmp(d->msg + DNS_HDRLEN, qa2.m + DNS_HDRLEN,
	    qa2.qi.qi_qend - DNS_HDRLEN) == 0);
	d = answer_of(c);
	CHECK(d != NULL && dns_get16(d->msg) == 3 && (d->msg[2] & F_RD) &&
	    opt_count(d->msg, d->len) == 1 &&
	    memcmp(d->msg + DNS_HDRLEN, qa3.m + DNS_HDRLEN,
	    qa3.qi.qi_qend - DNS_HDRLEN) == 0);
	CHECK(ndeliv(e) == 0 && ndeliv(f) == 0 && ndeliv(g) == 0 &&
	    ndeliv(h) == 0);
	CHECK(query_pending() == 4);
	for (i = 1; i <= 4; i++)
		answer_a(i, 300, (uint8_t)(20 + i), clk + 100);
	CHECK(got_a(e, 21) && got_a(f, 22) && got_a(g, 23) && got_a(h, 24));
	CHECK(query_pending() == 0 && mux_inflight() == 0);
	CHECK(stats.st_answers == 7);
	FINISH();

	/*
	 * A flight that has been answered is no longer joinable: with an
	 * answer that cannot be cached (TTL 0), the next query is sent.
	 */
	setup();
	start();
	mkq(&qa1, 1, "once.example", T_A, Q_RD);
	mkq(&qa3, 3, "oNcE.example", T_A, Q_OPT);
	a = asknow(&qa1, clk);
	b = asknow(&qa3, clk + 1);
	CHECK(nsends == 1);
	answer_a(0, 0, 5, clk + 2);
	/* each made its own from the one raw answer */
	CHECK(got_a(a, 5) && got_a(b, 5));
	CHECK(got_ttl(a) == 0 && got_ttl(b) == 0);
	d = answer_of(a);
	CHECK(d != NULL && dns_get16(d->msg) == 1 &&
	    opt_count(d->msg, d->len) == 0 && (d->msg[2] & F_RD));
	d = answer_of(b);
	CHECK(d != NULL && dns_get16(d->msg) == 3 &&
	    opt_count(d->msg, d->len) == 1 && !(d->msg[2] & F_RD) &&
	    d->qi.qi_has_opt && d->qi.qi_qend == qa3.qi.qi_qend);
	c = asknow(&qa1, clk + 3);
	CHECK(nsends == 2 && ndeliv(c) == 0);
	mkq(&qa2, 2, "ONCE.example", T_A, 0);
	e = asknow(&qa2, clk + 4);		/* joins the new one */
	CHECK(nsends == 2);
	answer_a(1, 0, 6, clk + 5);
	CHECK(got_a(c, 6) && got_a(e, 6));
	FINISH();

	/*
	 * A flight whose copy went unanswered past its attempt timeout takes
	 * no more joiners: the next asker starts its own send, and later
	 * askers join that one.  Each is answered by its own.
	 */
	setup();
	start();
	mkq(&qa1, 1, "lost.example", T_A, Q_RD);
	a = asknow(&qa1, clk);
	b = asknow(&qa1, clk + 1);
	CHECK(nsends == 1);
	sends[0].overdue = 1;
	c = asknow(&qa1, clk + 2);
	CHECK(nsends == 2 && sends[0].deadline == clk + 1 + cfg.cf_timeout_ms);
	e = asknow(&qa1, clk + 3);
	CHECK(nsends == 2 && sends[1].deadline == clk + 3 + cfg.cf_timeout_ms);
	answer_a(1, 0, 7, clk + 4);
	CHECK(got_a(c, 7) && got_a(e, 7) && ndeliv(a) == 0 && ndeliv(b) == 0);
	answer_a(0, 0, 8, clk + 5);
	CHECK(got_a(a, 8) && got_a(b, 8));
	CHECK(query_pending() == 0 && mux_bad == 0);
	FINISH();
}

/* ---- 4. each client's own deadline ---- */

static void
test_deadlines(void)
{
	struct query	 qa1, qa2;
	int64_t		 t, t0;
	int		 a, b, c, run;

	for (run = 0; run < 3; run++) {
		setup();
		start();
		t = cfg.cf_timeout_ms;
		t0 = clk;
		mkq(&qa1, 0xa, "slow.example", T_A, Q_RD | Q_OPT);
		mkq(&qa2, 0xb, "SLOW.example", T_A, Q_RD);
		a = asknow(&qa1, t0);
		CHECK(nsends == 1 && sends[0].deadline0 == t0 + t);
		CHECK(query_tick(t0) == t0 + t);
		b = asknow(&qa2, t0 + t / 2);
		CHECK(nsends == 1);
		CHECK(sends[0].nextend >= 1 &&
		    sends[0].deadline == t0 + t / 2 + t);
		CHECK(query_tick(t0 + t - 1) == t0 + t);
		CHECK(ndeliv(a) == 0 && ndeliv(b) == 0);
		CHECK(query_tick(t0 + t) == t0 + t / 2 + t);
		CHECK(got_servfail(a, EDE_NO_REACHABLE_AUTHORITY));
		CHECK(ndeliv(b) == 0);
		CHECK(query_pending() == 1);
		CHECK(stats.st_servfails == 1);
		if (run == 0) {
			/* the answer still reaches B */
			answer_a(0, 300, 3, t0 + t * 13 / 10);
			CHECK(got_a(b, 3) && ndeliv(a) == 1);
			CHECK(query_pending() == 0);
			CHECK(query_tick(t0 + t * 15 / 10) == 0);
			CHECK(ndeliv(b) == 1);
		} else {
			/* B's own deadline; then the mux gives up on nobody */
			CHECK(query_tick(t0 + t * 15 / 10) == 0);
			CHECK(got_servfail(b, EDE_NONE));
			CHECK(query_pending() == 0);
			CHECK(stats.st_servfails == 2);
			if (run == 1) {
				complete(0, MUX_TIMEOUT, NULL,
				    t0 + t * 15 / 10 + 1);
				CHECK(ndeliv(a) == 1 && ndeliv(b) == 1);
				CHECK(stats.st_servfails == 2);
			} else {
				/* a late answer is still cached */
				answer_a(0, 300, 4, t0 + t * 16 / 10);
				CHECK(ndeliv(a) == 1 && ndeliv(b) == 1);
				c = asknow(&qa1, t0 + t * 17 / 10);
				CHECK(nsends == 1 && got_a(c, 4));
				CHECK(stats.st_cache_hits == 1);
			}
		}
		FINISH();
	}
}

/* ---- 5. the cache ---- */

static void
test_cache(void)
{
	struct query	 qm, qu;
	const struct delivery *d;
	int		 a, b, c, e, f;

	setup();
	start();
	mkq(&qm, 1, "cached.example", T_A, Q_RD | Q_OPT);
	a = asknow(&qm, clk);
	CHECK(nsends == 1 && stats.st_cache_misses == 1 &&
	    stats.st_cache_hits == 0);
	answer_a(0, 300, 1, clk + 50);
	CHECK(got_a(a, 1) && got_ttl(a) == 300);
	CHECK(cache_entries() == 1);

	mkq(&qu, 2, "CACHED.example", T_A, 0);
	b = asknow(&qu, clk + SEC(1) + 50);		/* 1 s after storing */
	CHECK(nsends == 1);
	/* A hit is client activity too, for --prewarm. */
	CHECK(active_at == clk + SEC(1) + 50);
	CHECK(got_a(b, 1) && got_ttl(b) == 299);
	CHECK(stats.st_cache_hits == 1 && stats.st_cache_misses == 1);
	d = answer_of(b);
	CHECK(d != NULL && dns_get16(d->msg) == 2 && !(d->msg[2] & F_RD) &&
	    opt_count(d->msg, d->len) == 0);
	CHECK(query_pending() == 0);
	c = asknow(&qm, clk + SEC(100) + 50);
	CHECK(nsends == 1 && got_a(c, 1) && got_ttl(c) == 200);
	d = answer_of(c);
	CHECK(d != NULL && opt_count(d->msg, d->len) == 1);
	e = asknow(&qm, clk + SEC(300) + 49);
	CHECK(nsends == 1 && got_ttl(e) == 1);
	/* expired: sent again */
	f = asknow(&qm, clk + SEC(300) + 50);
	CHECK(nsends == 2 && ndeliv(f) == 0);
	CHECK(stats.st_cache_hits == 3 && stats.st_cache_misses == 2);
	answer_a(1, 600, 2, clk + SEC(301));
	CHECK(got_a(f, 2) && got_ttl(f) == 600);
	CHECK(cache_entries() == 1);
	CHECK(stats.st_answers == 5);
	FINISH();

	/* The first answer already has the clamped TTLs a hit will have. */
	setup();
	cfg.cf_max_ttl = 100;
	start();
	mkq(&qm, 1, "clamp.example", T_A, Q_RD);
	a = asknow(&qm, clk);
	answer_a(0, 300, 1, clk + 5);
	CHECK(got_a(a, 1) && got_ttl(a) == 100);
	b = asknow(&qm, clk + SEC(10) + 5);
	CHECK(nsends == 1 && got_ttl(b) == 90);
	FINISH();

	setup();
	cfg.cf_min_ttl = 60;
	start();
	a = asknow(&qm, clk);
	answer_a(0, 5, 1, clk + 5);
	CHECK(got_a(a, 1) && got_ttl(a) == 60);
	b = asknow(&qm, clk + SEC(59) + 5);
	CHECK(nsends == 1 && got_ttl(b) == 1);
	FINISH();

	/* What cannot be cached goes through as it came, every time. */
	setup();
	start();
	a = asknow(&qm, clk);
	answer_a(0, 0, 7, clk + 5);
	CHECK(got_a(a, 7) && got_ttl(a) == 0);
	CHECK(cache_entries() == 0);
	b = asknow(&qm, clk + 10);
	CHECK(nsends == 2);
	answer_rcode(1, RCODE_NXDOMAIN, clk + 15);	/* no SOA */
	CHECK(got_rcode(b, RCODE_NXDOMAIN));
	c = asknow(&qm, clk + 20);
	CHECK(nsends == 3);
	answer_rcode(2, RCODE_SERVFAIL, clk + 25);	/* no stale: raw */
	CHECK(got_servfail(c, EDE_NONE));
	CHECK(stats.st_servfails == 0);		/* not one we made */
	CHECK(cache_entries() == 0);
	FINISH();

	/* A negative answer with its SOA is kept, and answered as it was. */
	setup();
	start();
	mkq(&qm, 1, "nx.example.com", T_A, Q_RD | Q_OPT);
	a = asknow(&qm, clk);
	{
		struct mb	 r;

		reply_init(&r, 0, RCODE_NXDOMAIN, 0);
		mb_soa(&r, NS, NULL, 15, 900, 120);
		upstream_opt(&r, 0);
		complete(0, MUX_ANSWER, &r, clk + 1);
	}
	CHECK(got_rcode(a, RCODE_NXDOMAIN));
	CHECK(cache_entries() == 1);
	b = asknow(&qm, clk + SEC(100) + 1);
	CHECK(nsends == 1 && got_rcode(b, RCODE_NXDOMAIN));
	d = answer_of(b);
	CHECK(d != NULL && dns_get16(d->msg + 8) == 1 &&
	    all_ttls(d->msg, d->len, 20));
	c = asknow(&qm, clk + SEC(120) + 1);
	CHECK(nsends == 2 && ndeliv(c) == 0);
	answer_rcode(1, RCODE_SERVFAIL, clk + SEC(121));
	CHECK(got_rcode(c, RCODE_SERVFAIL));
	FINISH();
}

/* ---- 6. serve-stale ---- */

/*
 * Stores an A answer (TTL 100, 192.0.2.x) for qm through a flight
 * answered at `at`; leaves the clock alone.
 */
static void
prime(const struct query *qm, uint8_t x, int64_t at)
{
	int	 id = asknow(qm, at);

	answer_a(nsends - 1, 100, x, at);
	if (!got_a(id, x)) {
		fprintf(stderr, "prime: not answered\n");
		deliv_bad++;
	}
}

/* qm's key as query.c makes it, pointing into qm. */
static void
key_of(struct qkey *k, const struct query *qm)
{
	dns_key(k, qm->m, &qm->qi, cfg.cf_keep_ecs, qs.key);
}

static void
test_stale(void)
{
	struct query	 qo, qn;
	struct qkey	 k;
	struct mb	 r;
	const struct delivery *d;
	int64_t		 ts;
	int		 a, b, c, e, i;

	/* A slow refresh: the stale answer at STALE_WAIT_MS. */
	setup();
	cfg.cf_serve_stale = 60;
	start();
	mkq(&qo, 1, "stale.example", T_A, Q_RD | Q_DO);
	mkq(&qn, 2, "STALE.example", T_A, Q_RD | Q_DO);
	prime(&qo, 1, clk);
	ts = clk + SEC(105);			/* 5 s past its TTL */
	a = asknow(&qo, ts);
	CHECK(nsends == 2 && ndeliv(a) == 0);
	CHECK(stats.st_cache_misses == 2);
	CHECK(query_tick(ts) == ts + STALE_WAIT_MS);
	b = asknow(&qn, ts + 100);
	CHECK(nsends == 2);
	CHECK(query_tick(ts + STALE_WAIT_MS - 1) == ts + STALE_WAIT_MS);
	CHECK(ndeliv(a) == 0 && ndeliv(b) == 0);
	CHECK(query_tick(ts + STALE_WAIT_MS) == ts + 100 + STALE_WAIT_MS);
	CHECK(got_a(a, 1));
	d = answer_of(a);
	CHECK(d != NULL && all_ttls(d->msg, d->len, STALE_TTL));
	CHECK(got_ede(a) == EDE_STALE_ANSWER);
	CHECK(stats.st_stale == 1);
	CHECK(ndeliv(b) == 0);
	CHECK(query_tick(ts + 100 + STALE_WAIT_MS) == 0);
	CHECK(got_a(b, 1) && got_ede(b) == EDE_STALE_ANSWER);
	CHECK(stats.st_stale == 2);
	CHECK(query_pending() == 0);
	CHECK(mux_inflight() == 1);		/* the refresh goes on */
	answer_a(1, 200, 2, ts + SEC(3));
	CHECK(ndeliv(a) == 1 && ndeliv(b) == 1);
	c = asknow(&qn, ts + SEC(4));
	CHECK(nsends == 2 && got_a(c, 2) && got_ttl(c) == 199);
	CHECK(got_ede(c) == -1);
	CHECK(stats.st_stale == 2);
	FINISH();

	/* Without OPT, the stale answer has none; RD is the client's. */
	setup();
	cfg.cf_serve_stale = 60;
	start();
	mkq(&qn, 3, "plain.example", T_A, 0);
	prime(&qn, 1, clk);
	ts = clk + SEC(130);
	a = asknow(&qn, ts);
	query_tick(ts + STALE_WAIT_MS);
	CHECK(got_a(a, 1) && got_ede(a) == -2);
	d = answer_of(a);
	CHECK(d != NULL && all_ttls(d->msg, d->len, STALE_TTL) &&
	    !(d->msg[2] & F_RD));
	CHECK(stats.st_stale == 1);
	FINISH();

	/*
	 * The refresh fails: SERVFAIL, REFUSED, timeout, unreachable,
	 * failed.  Each time the stale entry answers at once.
	 */
	for (i = 0; i < 5; i++) {
		setup();
		cfg.cf_serve_stale = 60;
		start();
		mkq(&qo, 1, "fail.example", T_A, Q_RD | Q_OPT);
		prime(&qo, 1, clk);
		ts = clk + SEC(101);
		a = asknow(&qo, ts);
		b = asknow(&qo, ts + 1);
		CHECK(nsends == 2);
		switch (i) {
		case 0:
			answer_rcode(1, RCODE_SERVFAIL, ts + 300);
			break;
		case 1:
			answer_rcode(1, RCODE_REFUSED, ts + 300);
			break;
		case 2:
			complete(1, MUX_TIMEOUT, NULL, ts + 300);
			break;
		case 3:
			complete(1, MUX_UNREACHABLE, NULL, ts + 300);
			break;
		default:
			complete(1, MUX_FAILED, NULL, ts + 300);
			break;
		}
		CHECK(got_a(a, 1) && got_a(b, 1));
		CHECK(got_ede(a) == EDE_STALE_ANSWER);
		d = answer_of(b);
		CHECK(d != NULL && all_ttls(d->msg, d->len, STALE_TTL));
		CHECK(stats.st_stale == 2);
		CHECK(stats.st_servfails == 0);
		CHECK(query_pending() == 0);
		/* the entry is still there for the next one */
		c = asknow(&qo, ts + 400);
		CHECK(nsends == 3);
		complete(2, MUX_UNREACHABLE, NULL, ts + 500);
		CHECK(got_a(c, 1) && stats.st_stale == 3);
		FINISH();
	}

	/* A refresh answered NXDOMAIN (not SERVFAIL) goes through. */
	setup();
	cfg.cf_serve_stale = 60;
	start();
	mkq(&qo, 1, "gone.example", T_A, Q_RD | Q_OPT);
	prime(&qo, 1, clk);
	a = asknow(&qo, clk + SEC(101));
	answer_rcode(1, RCODE_NXDOMAIN, clk + SEC(101) + 10);
	CHECK(got_rcode(a, RCODE_NXDOMAIN) && stats.st_stale == 0);
	FINISH();

	/* The deadline before the stale time: the stale answer then. */
	setup();
	cfg.cf_serve_stale = 60;
	cfg.cf_timeout_ms = 1000;
	start();
	mkq(&qo, 1, "quick.example", T_A, Q_RD | Q_OPT);
	prime(&qo, 1, clk);
	ts = clk + SEC(110);
	a = asknow(&qo, ts);
	CHECK(query_tick(ts) == ts + 1000);
	query_tick(ts + 1000);
	CHECK(got_a(a, 1) && got_ede(a) == EDE_STALE_ANSWER);
	CHECK(stats.st_stale == 1 && stats.st_servfails == 0);
	FINISH();

	/*
	 * Fresh by the time the stale timer fires: a normal answer, no
	 * EDE 3, not counted stale.  (Stored straight into the cache for
	 * the same key, as another flight's answer would be.)
	 */
	setup();
	cfg.cf_serve_stale = 60;
	start();
	mkq(&qo, 1, "refreshed.example", T_A, Q_RD | Q_OPT);
	prime(&qo, 1, clk);
	ts = clk + SEC(120);
	a = asknow(&qo, ts);
	CHECK(nsends == 2);
	reply_init(&r, 1, 0, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 500, 9);
	key_of(&k, &qo);
	CHECK(cache_store(&k, r.m, r.len, ts) != NULL);
	i = (int)stats.st_cache_hits;
	query_tick(ts + STALE_WAIT_MS);
	CHECK(got_a(a, 9));
	CHECK(got_ttl(a) == 499);
	CHECK(got_ede(a) == -1);
	CHECK(stats.st_stale == 0);
	CHECK(stats.st_cache_hits == (uint64_t)i + 1);
	CHECK(query_pending() == 0);
	answer_a(1, 300, 10, ts + SEC(3));
	CHECK(ndeliv(a) == 1);
	FINISH();

	/* Past the serve-stale window: no stale timer, a plain wait. */
	setup();
	cfg.cf_serve_stale = 60;
	start();
	mkq(&qo, 1, "old.example", T_A, Q_RD | Q_OPT);
	prime(&qo, 1, clk);
	ts = clk + SEC(161);
	a = asknow(&qo, ts);
	CHECK(cache_entries() == 0);
	CHECK(query_tick(ts) == ts + cfg.cf_timeout_ms);
	query_tick(ts + STALE_WAIT_MS);
	CHECK(ndeliv(a) == 0);
	query_tick(ts + cfg.cf_timeout_ms);
	CHECK(got_servfail(a, EDE_NO_REACHABLE_AUTHORITY));
	CHECK(stats.st_stale == 0);
	FINISH();

	/* Without --serve-stale, none of it. */
	setup();
	start();
	mkq(&qo, 1, "nostale.example", T_A, Q_RD | Q_OPT);
	prime(&qo, 1, clk);
	ts = clk + SEC(101);
	a = asknow(&qo, ts);
	CHECK(query_tick(ts) == ts + cfg.cf_timeout_ms);
	query_tick(ts + STALE_WAIT_MS);
	CHECK(ndeliv(a) == 0);
	answer_rcode(1, RCODE_SERVFAIL, ts + STALE_WAIT_MS + 1);
	CHECK(got_rcode(a, RCODE_SERVFAIL) && got_ede(a) == -1);
	b = asknow(&qo, ts + SEC(1));
	complete(2, MUX_UNREACHABLE, NULL, ts + SEC(1) + 1);
	CHECK(got_servfail(b, EDE_NETWORK_ERROR));
	CHECK(stats.st_stale == 0);
	FINISH();

	/* Evicted while waiting: the client waits on for the refresh. */
	setup();
	cfg.cf_serve_stale = 60;
	cfg.cf_cache_size = 1;
	start();
	mkq(&qo, 1, "evicted.example", T_A, Q_RD | Q_OPT);
	mkq(&qn, 2, "other.example", T_A, Q_RD);
	prime(&qo, 1, clk);
	ts = clk + SEC(101);
	a = asknow(&qo, ts);
	e = asknow(&qn, ts + 1);
	answer_a(2, 300, 5, ts + 2);		/* pushes the stale one out */
	CHECK(got_a(e, 5));
	query_tick(ts + STALE_WAIT_MS);
	CHECK(ndeliv(a) == 0 && stats.st_stale == 0);
	answer_a(1, 300, 6, ts + STALE_WAIT_MS + 5);
	CHECK(got_a(a, 6) && got_ede(a) == -1);
	FINISH();
}

/* ---- 7. prefetch ---- */

static void
test_prefetch(void)
{
	struct query	 qm;
	const struct delivery *d;
	int64_t		 t1;
	int		 a, b, c, e, f, pf;

	setup();
	cfg.cf_prefetch = 1;
	start();
	mkq(&qm, 1, "pre.example", T_A, Q_RD | Q_OPT);
	t1 = clk;
	prime(&qm, 1, t1);			/* TTL 100 from t1 */
	a = asknow(&qm, t1 + SEC(50));
	CHECK(nsends == 1 && got_a(a, 1) && stats.st_prefetches == 0);
	b = asknow(&qm, t1 + SEC(90));
	CHECK(nsends == 1 && got_a(b, 1) && stats.st_prefetches == 0);
	c = asknow(&qm, t1 + SEC(91));
	CHECK(got_a(c, 1) && got_ttl(c) == 9);	/* answered from cache */
	CHECK(nsends == 2 && stats.st_prefetches == 1);
	CHECK(stats.st_cache_hits == 3);
	pf = 1;
	CHECK(send_problem(sends[pf].msg, sends[pf].len) == NULL);
	CHECK(memcmp(sends[pf].msg + DNS_HDRLEN, qm.m + DNS_HDRLEN,
	    qm.qi.qi_qend - DNS_HDRLEN) == 0);
	CHECK(sends[pf].deadline0 == t1 + SEC(91) + cfg.cf_timeout_ms);
	CHECK(query_pending() == 0);		/* nobody waits on it */
	e = asknow(&qm, t1 + SEC(92));
	CHECK(got_a(e, 1) && nsends == 2 && stats.st_prefetches == 1);
	/* expired: a client joins the prefetch in flight */
	f = asknow(&qm, t1 + SEC(100) + 500);
	CHECK(nsends == 2 && ndeliv(f) == 0 && query_pending() == 1);
	CHECK(sends[pf].deadline == t1 + SEC(100) + 500 + cfg.cf_timeout_ms);
	answer_a(pf, 300, 2, t1 + SEC(101));
	CHECK(got_a(f, 2));
	d = answer_of(f);
	CHECK(d != NULL && opt_count(d->msg, d->len) == 1);
	CHECK(stats.st_prefetches == 1);
	FINISH();

	/* A prefetch answered in time refreshes the entry: no miss. */
	setup();
	cfg.cf_prefetch = 1;
	start();
	t1 = clk;
	prime(&qm, 1, t1);
	a = asknow(&qm, t1 + SEC(95));
	CHECK(nsends == 2 && got_a(a, 1));
	answer_a(1, 300, 3, t1 + SEC(96));
	CHECK(ndeliv(a) == 1);
	b = asknow(&qm, t1 + SEC(150));
	CHECK(nsends == 2 && got_a(b, 3) && got_ttl(b) == 246);
	CHECK(stats.st_cache_misses == 1);
	FINISH();

	/* Without --prefetch, no background send. */
	setup();
	start();
	prime(&qm, 1, clk);
	a = asknow(&qm, clk + SEC(99));
	CHECK(got_a(a, 1) && nsends == 1 && stats.st_prefetches == 0);
	FINISH();

	/* A prefetch the mux refuses is no answer's business. */
	setup();
	cfg.cf_prefetch = 1;
	start();
	prime(&qm, 1, clk);
	mux_refuse = 1;
	a = asknow(&qm, clk + SEC(95));
	mux_refuse = 0;
	CHECK(got_a(a, 1) && nsends == 1 && stats.st_prefetches == 0);
	CHECK(stats.st_overload == 0 && stats.st_servfails == 0);
	FINISH();
}

/* ---- 8. protocol errors ---- */

static void
test_protocol_errors(void)
{
	static const uint8_t shortq[11] = { 0x12, 0x34, 0x01, 0, 0, 1 };
	struct query	 qm;
	struct mb	 b, o;
	const struct delivery *d;
	uint8_t		 pad[QUERY_MAX];
	int		 a;

	setup();
	start();

	/* opcode STATUS (2): NOTIMP */
	mkq(&qm, 0x0101, "op.example", T_A, Q_RD);
	qm.m[2] |= 2 << 3;
	mkraw(&qm, qm.m, qm.len);
	CHECK(qm.rc == RCODE_NOTIMP);
	a = asknow(&qm, clk);
	CHECK(clients[a].state == C_ACCEPTED);
	CHECK(got_rcode(a, RCODE_NOTIMP));
	d = answer_of(a);
	CHECK(d != NULL && dns_get16(d->msg) == 0x0101 && (d->msg[2] & 0x80) &&
	    (d->msg[2] & F_OPCODE) == (2 << 3));
	CHECK(d != NULL && d->len == qm.len && dns_get16(d->msg + 4) == 1 &&
	    memcmp(d->msg + DNS_HDRLEN, qm.m + DNS_HDRLEN,
	    qm.len - DNS_HDRLEN) == 0);		/* its question echoed */
	CHECK(stats.st_notimp == 1 && nsends == 0);

	/* OPT version 1: BADVERS, in the OPT it needs */
	mb_hdr(&b, 0x0202, F_RD, 0);
	mb_question(&b, "vers.example", T_A, C_IN);
	mb_opt_full(&b, AR, 1232, 0x00010000, NULL, 0);
	mkraw(&qm, b.m, b.len);
	CHECK(qm.rc == RCODE_BADVERS);
	a = asknow(&qm, clk);
	d = answer_of(a);
	CHECK(ndeliv(a) == 1 && d != NULL);
	CHECK(d != NULL && (d->msg[3] & 0x0f) == 0);	/* 16 & 15 */
	CHECK(d != NULL && opt_count(d->msg, d->len) == 1 &&
	    (opt_ttl(d->msg, d->len) >> 24) == 1);	/* 16 >> 4 */
	CHECK(d != NULL && dns_get16(d->msg) == 0x0202 &&
	    dns_get16(d->msg + 4) == 1);
	CHECK(stats.st_badvers == 1 && nsends == 0);

	/* two OPTs: FORMERR */
	mb_hdr(&b, 0x0303, F_RD, 0);
	mb_question(&b, "two.example", T_A, C_IN);
	mb_opt(&b, 1232, 0, NULL, 0);
	mb_opt(&b, 1232, 0, NULL, 0);
	mkraw(&qm, b.m, b.len);
	CHECK(qm.rc == RCODE_FORMERR);
	a = asknow(&qm, clk);
	CHECK(got_rcode(a, RCODE_FORMERR));
	CHECK(stats.st_formerr == 1 && nsends == 0);
	/* trailing bytes: FORMERR */
	mkq(&qm, 0x0404, "trail.example", T_A, Q_RD);
	qm.m[qm.len] = 0;
	mkraw(&qm, qm.m, qm.len + 1);
	a = asknow(&qm, clk);
	CHECK(got_rcode(a, RCODE_FORMERR) && stats.st_formerr == 2);
	/* two questions: FORMERR */
	mb_hdr(&b, 0x0505, F_RD, 0);
	mb_question(&b, "q1.example", T_A, C_IN);
	mb_question(&b, "q2.example", T_A, C_IN);
	mkraw(&qm, b.m, b.len);
	a = asknow(&qm, clk);
	CHECK(got_rcode(a, RCODE_FORMERR) && stats.st_formerr == 3);
	CHECK(stats.st_queries == 0 && stats.st_answers == 0);

	/* not even a query: dropped, nothing said */
	mkraw(&qm, shortq, sizeof(shortq));
	a = asknow(&qm, clk);
	CHECK(clients[a].state == C_DROPPED && ndeliv(a) == 0);
	CHECK(stats.st_drops == 1);
	mkraw(&qm, shortq, 0);
	a = asknow(&qm, clk);
	CHECK(clients[a].state == C_DROPPED && stats.st_drops == 2);
	mkq(&qm, 0x0606, "resp.example", T_A, Q_RD);
	qm.m[2] |= F_QR;
	mkraw(&qm, qm.m, qm.len);
	a = asknow(&qm, clk);
	CHECK(clients[a].state == C_DROPPED && ndeliv(a) == 0);
	CHECK(stats.st_drops == 3);

	/* QUERY_MAX bytes (padded) are taken; one more is dropped */
	mb_hdr(&b, 0x0707, F_RD, 0);
	mb_question(&b, "big.example", T_A, C_IN);
	memset(pad, 0, sizeof(pad));
	o.len = 0;
	opt_add(&o, OPT_PADDING, pad, QUERY_MAX - b.len - 11 - 4);
	mb_opt(&b, 1232, 0, o.m, o.len);
	CHECK(b.len == QUERY_MAX);
	mkraw(&qm, b.m, b.len);
	CHECK(qm.rc == 0);
	a = asknow(&qm, clk);
	CHECK(clients[a].state == C_ACCEPTED && nsends == 1);
	answer_a(0, 300, 1, clk + 1);
	CHECK(got_a(a, 1));
	mb_hdr(&b, 0x0808, F_RD, 0);
	mb_question(&b, "big.example", T_A, C_IN);
	o.len = 0;
	opt_add(&o, OPT_PADDING, pad, QUERY_MAX + 1 - b.len - 11 - 4);
	mb_opt(&b, 1232, 0, o.m, o.len);
	CHECK(b.len == QUERY_MAX + 1);
	mkraw(&qm, b.m, b.len);
	CHECK(qm.rc == 0);			/* well formed, only too big */
	a = asknow(&qm, clk + 2);
	CHECK(clients[a].state == C_DROPPED && ndeliv(a) == 0);
	CHECK(stats.st_drops == 4 && nsends == 1);
	CHECK(stats.st_notimp == 1 && stats.st_badvers == 1);
	FINISH();

	/*
	 * edns-tcp-keepalive (RFC 7828): over UDP, or with a TIMEOUT, it
	 * is FORMERR; a TCP client that offers it is told our idle time,
	 * in a SERVFAIL too.
	 */
	setup();
	start();
	{
		static const uint8_t ka0[] = { 0, 11, 0, 0 };
		static const uint8_t ka2[] = { 0, 11, 0, 2, 0, 50 };
		size_t	 at, l;

		mb_hdr(&b, 0x0909, F_RD, 0);
		mb_question(&b, "ka.example", T_A, C_IN);
		mb_opt(&b, 1232, 0, ka0, sizeof(ka0));
		mkraw(&qm, b.m, b.len);
		CHECK(qm.rc == 0 && qm.qi.qi_keepalive);
		a = asknow_kind(&qm, clk, CLIENT_UDP);
		CHECK(got_rcode(a, RCODE_FORMERR));
		CHECK(stats.st_formerr == 1 && nsends == 0);
		a = asknow_kind(&qm, clk, CLIENT_TCP);
		CHECK(nsends == 1 && ndeliv(a) == 0);
		complete(0, MUX_UNREACHABLE, NULL, clk + 1);
		CHECK(got_servfail(a, EDE_NETWORK_ERROR));
		d = answer_of(a);
		CHECK(d != NULL && opt_find(d->msg, d->len, DNS_OPT_KEEPALIVE,
		    &at, &l) == 0 && l == 2 &&
		    dns_get16(d->msg + at) == TCP_CLIENT_IDLE * 10);
		mb_hdr(&b, 0x0a0a, F_RD, 0);
		mb_question(&b, "ka.example", T_A, C_IN);
		mb_opt(&b, 1232, 0, ka2, sizeof(ka2));
		mkraw(&qm, b.m, b.len);
		CHECK(qm.rc == RCODE_FORMERR);
		a = asknow_kind(&qm, clk + 2, CLIENT_TCP);
		CHECK(got_rcode(a, RCODE_FORMERR));
		CHECK(stats.st_formerr == 2 && nsends == 1);
		/* UDP without keepalive is like TCP */
		mkq(&qm, 0x0b0b, "udp.example", T_A, Q_RD | Q_OPT);
		a = asknow_kind(&qm, clk + 3, CLIENT_UDP);
		CHECK(nsends == 2 && ndeliv(a) == 0);
		answer_a(1, 300, 1, clk + 4);
		CHECK(got_a(a, 1));
		d = answer_of(a);
		CHECK(d != NULL && opt_find(d->msg, d->len, DNS_OPT_KEEPALIVE,
		    &at, &l) == -1);
	}
	FINISH();
}

/* ---- 9. overload ---- */

static void
test_overload(void)
{
	struct query	 qm, qo;
	char		 name[32];
	int		 a, b, i, first, n, ncq, bad;

	/* The mux refuses: SERVFAIL, EDE 0. */
	setup();
	start();
	mkq(&qm, 1, "full.example", T_A, Q_RD | Q_OPT);
	mux_refuse = 1;
	a = asknow(&qm, clk);
	mkq(&qo, 2, "full.example", T_A, Q_RD);
	b = asknow(&qo, clk);
	mux_refuse = 0;
	CHECK(clients[a].state == C_ACCEPTED);
	CHECK(got_servfail(a, EDE_OTHER) && got_servfail(b, EDE_NONE));
	CHECK(stats.st_overload == 2 && stats.st_servfails == 2);
	CHECK(query_pending() == 0 && nsends == 0);
	/* and nothing was taken from the pools: the next one goes */
	a = asknow(&qm, clk + 1);
	CHECK(nsends == 1 && ndeliv(a) == 0);
	answer_a(0, 300, 1, clk + 2);
	CHECK(got_a(a, 1));
	FINISH();

	/* Every client query in use: SERVFAIL until answers free some. */
	setup();
	start();
	ncq = mux_capacity(&cfg) * CLIENTS_PER_SLOT;
	mkq(&qm, 1, "many.example", T_A, Q_RD | Q_OPT);
	first = nclients;
	for (i = 0; i < ncq; i++)
		asknow(&qm, clk + i);
	CHECK(nsends == 1 && query_pending() == ncq);
	CHECK(stats.st_overload == 0);
	a = asknow(&qm, clk + ncq);		/* would join */
	CHECK(got_servfail(a, EDE_OTHER) && stats.st_overload == 1);
	mkq(&qo, 2, "other.example", T_A, Q_RD);
	b = asknow(&qo, clk + ncq);		/* would start a flight */
	CHECK(got_servfail(b, EDE_NONE) && stats.st_overload == 2);
	CHECK(nsends == 1 && query_pending() == ncq);
	answer_a(0, 0, 4, clk + ncq + 1);	/* TTL 0: not cached */
	for (i = 0, bad = 0; i < ncq; i++)
		bad += !got_a(first + i, 4);
	CHECK(bad == 0);
	CHECK(query_pending() == 0);
	/* accepted again, the whole pool */
	for (i = 0; i < ncq; i++)
		asknow(&qm, clk + ncq + 2);
	CHECK(nsends == 2 && query_pending() == ncq &&
	    stats.st_overload == 2);
	answer_a(1, 0, 5, clk + ncq + 3);
	CHECK(query_pending() == 0);
	FINISH();

	/* Every flight in use: a new key is refused, a joiner is not. */
	setup();
	start();
	n = mux_capacity(&cfg);
	for (i = 0; i < n; i++) {
		snprintf(name, sizeof(name), "f%d.example", i);
		mkq(&qm, (uint16_t)i, name, T_A, Q_RD);
		asknow(&qm, clk);
	}
	CHECK(nsends == n && query_pending() == n);
	mkq(&qm, 999, "one-more.example", T_A, Q_RD | Q_OPT);
	a = asknow(&qm, clk + 1);
	CHECK(nsends == n && got_servfail(a, EDE_OTHER));
	CHECK(stats.st_overload == 1);
	mkq(&qm, 998, "F0.example", T_A, Q_RD);
	b = asknow(&qm, clk + 1);
	CHECK(nsends == n && ndeliv(b) == 0 && query_pending() == n + 1);
	for (i = 0; i < n; i++)
		answer_a(i, 300, (uint8_t)i, clk + 2);
	CHECK(got_a(b, 0) && query_pending() == 0);
	mkq(&qm, 997, "one-more.example", T_A, Q_RD);
	a = asknow(&qm, clk + 3);
	CHECK(nsends == n + 1 && ndeliv(a) == 0);
	answer_a(n, 300, 7, clk + 4);
	CHECK(got_a(a, 7));
	FINISH();

	/* Overload with a stale entry: the stale answer instead. */
	setup();
	cfg.cf_serve_stale = 60;
	start();
	mkq(&qm, 1, "ostale.example", T_A, Q_RD | Q_OPT);
	prime(&qm, 1, clk);
	mux_refuse = 1;
	a = asknow(&qm, clk + SEC(110));
	mux_refuse = 0;
	CHECK(got_a(a, 1) && got_ede(a) == EDE_STALE_ANSWER);
	CHECK(stats.st_overload == 1 && stats.st_stale == 1);
	FINISH();
}

/* ---- 10. failures ---- */

static void
test_failures(void)
{
	static const struct {
		enum mux_status	 st;
		int		 ede;
	} f[] = {
		{ MUX_TIMEOUT, EDE_NO_REACHABLE_AUTHORITY },
		{ MUX_UNREACHABLE, EDE_NETWORK_ERROR },
		{ MUX_FAILED, EDE_NETWORK_ERROR },
	};
	struct query	 qm, qn;
	struct mb	 r;
	size_t		 i;
	int		 a, b;

	for (i = 0; i < sizeof(f) / sizeof(f[0]); i++) {
		setup();
		start();
		mkq(&qm, 1, "down.example", T_A, Q_RD | Q_OPT);
		mkq(&qn, 2, "DOWN.example", T_A, 0);
		a = asknow(&qm, clk);
		b = asknow(&qn, clk + 1);
		complete(0, f[i].st, NULL, clk + 5);
		CHECK(got_servfail(a, f[i].ede));
		CHECK(got_servfail(b, EDE_NONE));
		CHECK(stats.st_servfails == 2 && query_pending() == 0);
		CHECK(cache_entries() == 0);
		/* nothing cached or joinable: the next one is sent */
		a = asknow(&qm, clk + 6);
		CHECK(nsends == 2);
		answer_a(1, 300, 1, clk + 7);
		CHECK(got_a(a, 1));
		FINISH();
	}

	/* An answer dns_strip_opt refuses (extended RCODE): SERVFAIL. */
	setup();
	start();
	mkq(&qm, 1, "badext.example", T_A, Q_RD | Q_OPT);
	mkq(&qn, 2, "badext.example", T_A, Q_RD);
	a = asknow(&qm, clk);
	b = asknow(&qn, clk);
	reply_init(&r, 0, 0, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 1);
	mb_opt_full(&r, AR, 1232, 0x01000000, NULL, 0);	/* BADVERS */
	complete(0, MUX_ANSWER, &r, clk + 1);
	CHECK(got_rcode(a, RCODE_SERVFAIL) && got_rcode(b, RCODE_SERVFAIL));
	CHECK(got_ede(a) >= 0 && got_ede(b) == -2);
	CHECK(stats.st_bad_replies == 1 && cache_entries() == 0);
	/* records that do not fit: also SERVFAIL */
	a = asknow(&qm, clk + 2);
	reply_init(&r, 1, 0, 0);
	mb_a(&r, AN, NULL, DNS_HDRLEN, 300, 1);
	dns_put16(r.m + 6, 3);
	complete(1, MUX_ANSWER, &r, clk + 3);
	CHECK(got_rcode(a, RCODE_SERVFAIL) && stats.st_bad_replies == 2);
	FINISH();
}

/* ---- 11. ECS keys ---- */

static void
test_ecs(void)
{
	static const uint8_t net1[] = { 192, 0, 2, 0 };
	static const uint8_t net2[] = { 198, 51, 100, 0 };
	struct query	 q1, q2, q1b, qn;
	int		 a, b, c, e;

	setup();
	cfg.cf_keep_ecs = 1;
	start();
	mkq_ecs(&q1, 1, "ecs.example", Q_RD, 24, net1);
	mkq_ecs(&q2, 2, "ecs.example", Q_RD, 24, net2);
	mkq_ecs(&q1b, 3, "ECS.example", 0, 24, net1);
	a = asknow(&q1, clk);
	b = asknow(&q2, clk);
	CHECK(nsends == 2);
	{
		uint8_t	 e1[ECS_MAX], e2[ECS_MAX];
		size_t	 l1 = ecs_data(e1, 24, net1), l2 = ecs_data(e2, 24, net2);

		CHECK_SENT(0, &q1, e1, l1);
		CHECK_SENT(1, &q2, e2, l2);
	}
	answer_a(0, 300, 1, clk + 1);
	answer_a(1, 300, 2, clk + 1);
	CHECK(got_a(a, 1) && got_a(b, 2));
	CHECK(cache_entries() == 2);
	c = asknow(&q1b, clk + 2);
	CHECK(nsends == 2 && got_a(c, 1) && stats.st_cache_hits == 1);
	e = asknow(&q2, clk + 2);
	CHECK(nsends == 2 && got_a(e, 2));
	mkq(&qn, 4, "ecs.example", T_A, Q_RD | Q_OPT);	/* no ECS */
	a = asknow(&qn, clk + 3);
	CHECK(nsends == 3 && ndeliv(a) == 0);
	answer_a(2, 300, 3, clk + 4);
	CHECK(got_a(a, 3));
	FINISH();

	/* Joining in flight goes by subnet too. */
	setup();
	cfg.cf_keep_ecs = 1;
	start();
	a = asknow(&q1, clk);
	b = asknow(&q2, clk);
	c = asknow(&q1b, clk);
	CHECK(nsends == 2 && query_pending() == 3);
	answer_a(0, 300, 1, clk + 1);
	CHECK(got_a(a, 1) && got_a(c, 1) && ndeliv(b) == 0);
	answer_a(1, 300, 2, clk + 1);
	CHECK(got_a(b, 2));
	FINISH();

	/* Without --keep-ecs: one send, shared by every subnet. */
	setup();
	start();
	a = asknow(&q1, clk);
	b = asknow(&q2, clk);
	CHECK(nsends == 1);
	CHECK_SENT(0, &q1, NULL, 0);
	answer_a(0, 300, 1, clk + 1);
	CHECK(got_a(a, 1) && got_a(b, 1));
	c = asknow(&qn, clk + 2);
	CHECK(nsends == 1 && got_a(c, 1));
	FINISH();
}

/* ---- 12. --cache-size 0 ---- */

static void
test_nocache(void)
{
	struct query	 qm;
	int		 a, b, c;

	setup();
	cfg.cf_cache_size = 0;
	cfg.cf_serve_stale = 60;
	cfg.cf_prefetch = 1;
	start();
	mkq(&qm, 1, "nocache.example", T_A, Q_RD | Q_OPT);
	a = asknow(&qm, clk);
	b = asknow(&qm, clk + 1);
	CHECK(nsends == 2);			/* nothing shared */
	CHECK(query_pending() == 2);
	CHECK(sends[0].nextend == 0 && sends[1].nextend == 0);
	answer_a(1, 300, 2, clk + 2);
	CHECK(got_a(b, 2) && ndeliv(a) == 0);
	answer_a(0, 300, 1, clk + 3);
	CHECK(got_a(a, 1));
	CHECK(cache_entries() == 0);
	c = asknow(&qm, clk + 4);		/* nothing cached */
	CHECK(nsends == 3 && ndeliv(c) == 0);
	complete(2, MUX_UNREACHABLE, NULL, clk + 5);
	CHECK(got_servfail(c, EDE_NETWORK_ERROR));	/* nothing stale */
	CHECK(stats.st_cache_hits == 0 && stats.st_cache_misses == 0);
	CHECK(stats.st_stale == 0 && stats.st_prefetches == 0);
	FINISH();
}

/* ---- query_shutdown, then query_init again ---- */

static void
test_reinit(void)
{
	struct query	 qm;
	char		 name[32];
	int		 a, i, h;

	/* One answered, one left waiting when it shuts down. */
	setup();
	mux_cap = 2;
	start();
	mkq(&qm, 1, "first.example", T_A, Q_RD);
	a = asknow(&qm, clk);
	answer_a(0, 300, 1, clk + 1);
	CHECK(got_a(a, 1));
	mkq(&qm, 2, "waiting.example", T_A, Q_RD);
	a = asknow(&qm, clk + 2);
	clients[a].state = C_ABANDONED;		/* shutting down: no answer */
	total_asked--;
	h = nsends - 1;
	sends[h].open = 0;			/* nor a call back */
	CHECK(query_pending() == 1);
	query_shutdown();
	cache_free();

	/* Started again: nothing pending, every pool slot free. */
	start_raw(0);
	CHECK(query_pending() == 0);
	for (i = 0; i < mux_cap; i++) {
		snprintf(name, sizeof(name), "again%d.example", i);
		mkq(&qm, (uint16_t)i, name, T_A, Q_RD);
		asknow(&qm, clk);
	}
	CHECK(nsends == mux_cap);
	CHECK(stats.st_overload == 0);
	CHECK(query_pending() == mux_cap);
	for (i = 0; i < nsends; i++)
		if (sends[i].open)
			answer_a(i, 300, (uint8_t)i, clk + 1);
	CHECK(query_pending() == 0);
	/* the counters are wrong if the above failed: start clean */
	if (query_pending() != 0) {
		query_shutdown();
		cache_free();
		start();
	}
	FINISH();
}

int
main(void)
{
	log_init(LOG_LVL_ERROR);

	test_reinit();
	test_upstream_query();
	test_answer_rebuilt();
	test_join();
	test_deadlines();
	test_cache();
	test_stale();
	test_prefetch();
	test_protocol_errors();
	test_overload();
	test_failures();
	test_ecs();
	test_nocache();
	/* every query taken got one answer, across all of them */
	CHECK(total_asked > 400 && total_delivered == total_asked);
	return check_done("test_query");
}

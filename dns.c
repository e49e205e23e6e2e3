/*
 * DNS wire format: just enough to vet client queries, match upstream
 * replies to them, and write the few messages we make ourselves.
 * Nothing here allocates or keeps state; every read is bounded by the
 * length the caller passed.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "dns.h"
#include "siphash.h"

#define F_DO		0x80	/* first byte of the OPT TTL's flags half */

#define DNS_MAXNAME	255
#define DNS_MAXLABEL	63
#define DNS_QTAIL	4	/* QTYPE and QCLASS after the name */
#define DNS_RRFIXED	10	/* TYPE, CLASS, TTL, RDLENGTH */
#define OPT_LEN		11	/* root owner plus the fixed part */
#define EDE_FIXED	6	/* OPTION-CODE, OPTION-LENGTH, INFO-CODE */
#define OPTHDR_LEN	4	/* OPTION-CODE, OPTION-LENGTH */
#define ECS_MIN		4	/* FAMILY, SOURCE and SCOPE PREFIX-LENGTH */
#define KA_LEN		2	/* edns-tcp-keepalive TIMEOUT */
/* Queries upstream are padded to a multiple of this (RFC 8467 4.1). */
#define PAD_BLOCK	128
/* rr_skip's verdict on an OPT of a version other than 0. */
#define BADVERS_SEEN	(-2)

static int	name_skip(const uint8_t *, size_t, size_t *, int);
static int	name_equal(const uint8_t *, const uint8_t *, size_t);
static uint8_t	ascii_lower(uint8_t);
static int	rr_skip(const uint8_t *, size_t, size_t *, struct dns_qinfo *);
static int	opt_note(const uint8_t *, size_t, size_t, struct dns_qinfo *);
static int	opt_options(const uint8_t *, size_t, size_t,
		    struct dns_qinfo *);
static void	counts_put(uint8_t *, uint16_t, uint16_t);
static uint8_t	*opt_put(uint8_t *, uint8_t, uint16_t);
static size_t	opt_append(uint8_t *, size_t, size_t, const struct dns_qinfo *,
		    int, const char *);

int
dns_parse_query(const uint8_t *msg, size_t len, struct dns_qinfo *qi)
{
	struct dns_qinfo q;
	size_t		 off;
	unsigned int	 ar;
	int		 badvers = 0, rv;

	if (len < DNS_HDRLEN || (msg[2] & F_QR) != 0)
		return -1;
	if ((msg[2] & F_OPCODE) != 0)
		return RCODE_NOTIMP;
	if (dns_get16(msg + 4) != 1 || dns_get16(msg + 6) != 0 ||
	    dns_get16(msg + 8) != 0 || (off = dns_question_end(msg, len)) == 0)
		return RCODE_FORMERR;
	memset(&q, 0, sizeof(q));
	q.qi_qend = off;
	q.qi_qtype = dns_get16(msg + off - DNS_QTAIL);
	q.qi_qclass = dns_get16(msg + off - DNS_QTAIL + 2);
	for (ar = dns_get16(msg + 10); ar > 0; ar--) {
		if ((rv = rr_skip(msg, len, &off, &q)) == -1)
			return RCODE_FORMERR;
		badvers |= rv == BADVERS_SEEN;
	}
	/* Bytes no count accounts for are a smuggling vector: refuse them. */
	if (off != len)
		return RCODE_FORMERR;
	if (badvers)
		return RCODE_BADVERS;
	*qi = q;
	return 0;
}

size_t
dns_error(uint8_t *out, size_t cap, const uint8_t *q, size_t len, int rcode)
{
	size_t	 qend = 0;

	if (len < DNS_HDRLEN || cap < DNS_HDRLEN + OPT_LEN)
		return 0;
	if (dns_get16(q + 4) == 1)
		qend = dns_question_end(q, len);
	if (qend == 0)
		qend = DNS_HDRLEN;
	if (qend + OPT_LEN > cap)
		return 0;
	memcpy(out, q, qend);
	out[2] = (uint8_t)(F_QR | (q[2] & (F_OPCODE | F_RD)));
	out[3] = (uint8_t)(F_RA | (rcode & F_RCODE));
	counts_put(out, qend > DNS_HDRLEN, rcode == RCODE_BADVERS);
	if (rcode != RCODE_BADVERS)
		return qend;
	opt_put(out + qend, 0, 0);
	out[qend + 5] = (uint8_t)(rcode >> 4);	/* extended RCODE */
	return qend + OPT_LEN;
}

int
dns_reply_matches(const uint8_t *reply, size_t rlen, const uint8_t *query,
    size_t qend)
{
	size_t	end;

	if (rlen < DNS_HDRLEN || (reply[2] & F_QR) == 0 ||
	    (reply[2] & F_OPCODE) != (query[2] & F_OPCODE) ||
	    dns_get16(reply + 4) != 1)
		return 0;
	/*
	 * Equal question lengths mean every query offset read below lies
	 * before qend, whatever the query holds.
	 */
	if ((end = dns_question_end(reply, rlen)) == 0 || end != qend)
		return 0;
	return dns_question_equal(reply, query, qend);
}

int
dns_question_equal(const uint8_t *a, const uint8_t *b, size_t qend)
{
	if (!name_equal(a, b, DNS_HDRLEN))
		return 0;
	return memcmp(a + qend - DNS_QTAIL, b + qend - DNS_QTAIL,
	    DNS_QTAIL) == 0;
}

/*
 * The hash covers the case-folded name, type, class, DO and CD bits and
 * the ECS option when kept.  It is keyed with a secret (SipHash), so
 * nobody can aim many names at one bucket of the cache or flight tables.
 */
void
dns_key(struct qkey *k, const uint8_t *q, const struct dns_qinfo *qi,
    int keep_ecs, const uint8_t key[SIPHASH_KEYLEN])
{
	struct siphash	 sh;
	uint8_t		 more[2];

	k->k_msg = q;
	k->k_qend = qi->qi_qend;
	k->k_do = qi->qi_do;
	k->k_cd = (q[3] & F_CD) != 0;
	k->k_ecs = keep_ecs && qi->qi_ecsoff ? q + qi->qi_ecsoff : NULL;
	k->k_ecslen = k->k_ecs ? qi->qi_ecslen : 0;
	siphash13_init(&sh, key);
	siphash13_update_lower(&sh, q + DNS_HDRLEN, k->k_qend - DNS_HDRLEN);
	more[0] = (uint8_t)(k->k_do | k->k_cd << 1);
	more[1] = k->k_ecslen;
	siphash13_update(&sh, more, sizeof(more));
	siphash13_update(&sh, k->k_ecs, k->k_ecslen);
	k->k_hash = (uint32_t)siphash13_final(&sh);
}

int
dns_key_same(const struct qkey *a, const struct qkey *b)
{
	return a->k_hash == b->k_hash && a->k_qend == b->k_qend &&
	    a->k_do == b->k_do && a->k_cd == b->k_cd &&
	    a->k_ecslen == b->k_ecslen &&
	    (a->k_ecslen == 0 || memcmp(a->k_ecs, b->k_ecs, a->k_ecslen) == 0) &&
	    dns_question_equal(a->k_msg, b->k_msg, a->k_qend);
}

/* Owner names may be compressed, pointing backwards. */
int
dns_rr_next(const uint8_t *msg, size_t len, size_t *off, struct dns_rr *rr)
{
	size_t	p = *off;

	if (name_skip(msg, len, &p, 1) == -1 || len - p < DNS_RRFIXED)
		return -1;
	rr->rr_type = dns_get16(msg + p);
	rr->rr_ttloff = p + 4;
	rr->rr_ttl = (uint32_t)dns_get16(msg + p + 4) << 16 |
	    dns_get16(msg + p + 6);
	rr->rr_rdlen = dns_get16(msg + p + 8);
	rr->rr_rdata = p + DNS_RRFIXED;
	if (len - rr->rr_rdata < rr->rr_rdlen)
		return -1;
	rr->rr_start = *off;
	*off = rr->rr_rdata + rr->rr_rdlen;
	return 0;
}

size_t
dns_truncate(uint8_t *out, size_t cap, const uint8_t *reply, size_t rlen,
    int add_opt)
{
	size_t	qlen, need;

	if (rlen < DNS_HDRLEN || (qlen = dns_question_end(reply, rlen)) == 0)
		return 0;
	need = qlen + (add_opt ? OPT_LEN : 0);
	if (need > cap)
		return 0;
	memcpy(out, reply, qlen);
	out[2] |= F_TC;
	counts_put(out, 1, add_opt ? 1 : 0);
	if (add_opt)
		opt_put(out + qlen, 0, 0);
	return need;
}

size_t
dns_servfail(uint8_t *out, size_t cap, const uint8_t *query,
    const struct dns_qinfo *qi, uint16_t ede, const char *text)
{
	size_t	 qend = qi->qi_qend;

	if (qend < DNS_HDRLEN || qend > cap)
		return 0;
	memcpy(out, query, qend);
	out[2] = F_QR | (query[2] & F_RD);
	out[3] = F_RA | RCODE_SERVFAIL;
	counts_put(out, 1, 0);
	if (!qi->qi_has_opt)
		return qend;
	return opt_append(out, qend, cap, qi, ede, text ? text : "");
}

/*
 * Every upstream query offers edns-tcp-keepalive (RFC 7828) and is padded
 * (RFC 7830) to a multiple of PAD_BLOCK, so that its length tells an
 * observer little about the name asked.
 */
size_t
dns_upstream_query(uint8_t *out, size_t cap, const struct qkey *k)
{
	size_t	 ecs = k->k_ecslen ? OPTHDR_LEN + k->k_ecslen : 0;
	size_t	 base = k->k_qend + OPT_LEN + ecs + 2 * OPTHDR_LEN;
	size_t	 pad = (PAD_BLOCK - base % PAD_BLOCK) % PAD_BLOCK;
	size_t	 rdlen = ecs + 2 * OPTHDR_LEN + pad;
	uint8_t	*p;

	if (base + pad > cap)
		return 0;
	memset(out, 0, DNS_HDRLEN);
	out[2] = F_RD;
	out[3] = k->k_cd ? F_CD : 0;
	counts_put(out, 1, 1);
	memcpy(out + DNS_HDRLEN, k->k_msg + DNS_HDRLEN,
	    k->k_qend - DNS_HDRLEN);
	p = opt_put(out + k->k_qend, k->k_do ? F_DO : 0, (uint16_t)rdlen);
	if (ecs > 0) {
		dns_put16(p, DNS_OPT_ECS);
		dns_put16(p + 2, k->k_ecslen);
		memcpy(p + OPTHDR_LEN, k->k_ecs, k->k_ecslen);
		p += ecs;
	}
	dns_put16(p, DNS_OPT_KEEPALIVE);
	dns_put16(p + 2, 0);
	dns_put16(p + 4, DNS_OPT_PADDING);
	dns_put16(p + 6, (uint16_t)pad);
	memset(p + 8, 0, pad);
	return base + pad;
}

size_t
dns_strip_opt(uint8_t *msg, size_t len, size_t qend)
{
	struct dns_rr	 rr;
	size_t		 off = qend;
	unsigned int	 i, n, ar;

	ar = dns_arcount(msg);
	n = dns_rr_total(msg);
	for (i = 0; i < n; i++) {
		if (dns_rr_next(msg, len, &off, &rr) == -1)
			return 0;
		if (rr.rr_type != DNS_TYPE_OPT)
			continue;
		/* RFC 6891 6.1.1: an OPT elsewhere makes the answer unusable. */
		if (i < n - ar)
			return 0;
		/* An extended RCODE means nothing to a client without OPT. */
		if (msg[rr.rr_ttloff] != 0)
			return 0;
		/* What follows may point into it: drop the rest too. */
		dns_put16(msg + 10, (uint16_t)(ar - (n - i)));
		return rr.rr_start;
	}
	return off;
}

int
dns_keepalive(const uint8_t *msg, size_t len)
{
	struct dns_rr	 rr;
	size_t		 off, end, olen;
	unsigned int	 i, n, ar;

	if (len < DNS_HDRLEN || (off = dns_question_end(msg, len)) == 0)
		return -1;
	ar = dns_arcount(msg);
	n = dns_rr_total(msg);
	for (i = 0; i < n; i++) {
		if (dns_rr_next(msg, len, &off, &rr) == -1)
			return -1;
		if (rr.rr_type != DNS_TYPE_OPT || i < n - ar)
			continue;
		end = rr.rr_rdata + rr.rr_rdlen;
		for (off = rr.rr_rdata; end - off >= OPTHDR_LEN;
		    off += OPTHDR_LEN + olen) {
			olen = dns_get16(msg + off + 2);
			if (end - off - OPTHDR_LEN < olen)
				return -1;
			if (dns_get16(msg + off) == DNS_OPT_KEEPALIVE &&
			    olen == 2)
				return dns_get16(msg + off + OPTHDR_LEN);
		}
		return -1;
	}
	return -1;
}

size_t
dns_finish(uint8_t *out, size_t len, size_t cap, const uint8_t *q,
    const struct dns_qinfo *qi, int ede, const char *text)
{
	if (len < qi->qi_qend)
		return 0;
	memcpy(out, q, 2);
	memcpy(out + DNS_HDRLEN, q + DNS_HDRLEN, qi->qi_qend - DNS_HDRLEN);
	out[2] = (uint8_t)((out[2] & ~F_RD) | (q[2] & F_RD));
	if (!qi->qi_has_opt)
		return len;
	return opt_append(out, len, cap, qi, ede, text);
}

/* Appends an OPT, with an EDE option unless ede is EDE_NONE; 0: no room. */
static size_t
opt_append(uint8_t *msg, size_t len, size_t cap, const struct dns_qinfo *qi,
    int ede, const char *text)
{
	size_t	 tlen = ede == EDE_NONE ? 0 : strlen(text);
	size_t	 rdlen = ede == EDE_NONE ? 0 : EDE_FIXED + tlen;
	uint8_t	*p;

	/* RFC 7828: a client that offered keepalive learns our idle time. */
	if (qi->qi_keepalive)
		rdlen += OPTHDR_LEN + KA_LEN;
	if (len + OPT_LEN + rdlen > cap || rdlen > UINT16_MAX)
		return 0;
	p = opt_put(msg + len, qi->qi_do ? F_DO : 0, (uint16_t)rdlen);
	if (ede != EDE_NONE) {
		dns_put16(p, DNS_OPT_EDE);
		dns_put16(p + 2, (uint16_t)(2 + tlen));
		dns_put16(p + 4, (uint16_t)ede);
		memcpy(p + 6, text, tlen);
		p += EDE_FIXED + tlen;
	}
	if (qi->qi_keepalive) {
		dns_put16(p, DNS_OPT_KEEPALIVE);
		dns_put16(p + 2, KA_LEN);
		dns_put16(p + 4, TCP_CLIENT_IDLE * 10);
	}
	dns_put16(msg + 10, (uint16_t)(dns_get16(msg + 10) + 1));
	return len + OPT_LEN + rdlen;
}

/* The question at DNS_HDRLEN may be neither compressed nor cut short. */
size_t
dns_question_end(const uint8_t *msg, size_t len)
{
	size_t	off = DNS_HDRLEN;

	if (name_skip(msg, len, &off, 0) == -1 || len - off < DNS_QTAIL)
		return 0;
	return off + DNS_QTAIL;
}

/*
 * Steps *off past the name there.  Only additional-section owners may
 * end in a compression pointer; we never follow one, but it must point
 * before the name so that whoever does follow it cannot loop.
 */
static int
name_skip(const uint8_t *msg, size_t len, size_t *off, int ptr_ok)
{
	size_t	start = *off, p = *off, target;
	uint8_t	l;

	for (;;) {
		if (p >= len)
			return -1;
		if ((l = msg[p]) == 0)
			break;
		if ((l & 0xc0) == 0xc0) {
			if (!ptr_ok || len - p < 2)
				return -1;
			target = (size_t)(l & 0x3f) << 8 | msg[p + 1];
			if (target < DNS_HDRLEN || target >= start)
				return -1;
			*off = p + 2;
			return 0;
		}
		/* 0x40 and 0x80 are the obsolete and reserved label types. */
		if (l > DNS_MAXLABEL)
			return -1;
		p += 1 + l;
		/* The root byte still to come must fit within the limit. */
		if (p - start >= DNS_MAXNAME)
			return -1;
	}
	*off = p + 1;
	return 0;
}

/*
 * Compares the uncompressed name at off in a, already checked to fit,
 * with the one at the same offset in b, reading b no further than a.
 */
static int
name_equal(const uint8_t *a, const uint8_t *b, size_t off)
{
	size_t	i;
	uint8_t	l;

	while ((l = a[off]) != 0) {
		if (b[off] != l)
			return 0;
		for (i = off + 1; i <= off + l; i++)
			if (ascii_lower(a[i]) != ascii_lower(b[i]))
				return 0;
		off += 1 + l;
	}
	return b[off] == 0;
}

/* DNS case folding is ASCII only (RFC 4343); tolower(3) follows locale. */
static uint8_t
ascii_lower(uint8_t c)
{
	return c >= 'A' && c <= 'Z' ? (uint8_t)(c - 'A' + 'a') : c;
}

/*
 * Steps *off past one resource record, noting an OPT in qi; -1 when it
 * is malformed, BADVERS_SEEN for an OPT of a version we do not speak.
 */
static int
rr_skip(const uint8_t *msg, size_t len, size_t *off, struct dns_qinfo *qi)
{
	size_t	start = *off, rdlen;
	int	rv = 0;

	if (name_skip(msg, len, off, 1) == -1 || len - *off < DNS_RRFIXED)
		return -1;
	rdlen = dns_get16(msg + *off + 8);
	if (len - *off - DNS_RRFIXED < rdlen)
		return -1;
	if (dns_get16(msg + *off) == DNS_TYPE_OPT &&
	    (rv = opt_note(msg, *off, *off - start, qi)) == -1)
		return -1;
	*off += DNS_RRFIXED + rdlen;
	return rv;
}

/*
 * The OPT whose fixed part is at `at` and whose owner took namelen bytes.
 * RFC 6891 6.1.1: at most one, owned by the root, which is one zero byte.
 */
static int
opt_note(const uint8_t *msg, size_t at, size_t namelen, struct dns_qinfo *qi)
{
	const uint8_t	*rr = msg + at;
	uint16_t	 size;

	if (qi->qi_has_opt || namelen != 1)
		return -1;
	qi->qi_has_opt = 1;
	/* RFC 6891 6.2.3: values below 512 are treated as 512. */
	size = dns_get16(rr + 2);
	qi->qi_udpsize = size < 512 ? 512 : size;
	qi->qi_do = (rr[6] & F_DO) != 0;
	if (opt_options(msg, at + DNS_RRFIXED, dns_get16(rr + 8), qi) == -1)
		return -1;
	return rr[5] != 0 ? BADVERS_SEEN : 0;
}

/* The options must tile the rdata exactly; a kept ECS must be sane. */
static int
opt_options(const uint8_t *msg, size_t off, size_t rdlen,
    struct dns_qinfo *qi)
{
	size_t	 end = off + rdlen, olen;

	while (off < end) {
		if (end - off < OPTHDR_LEN)
			return -1;
		olen = dns_get16(msg + off + 2);
		if (end - off - OPTHDR_LEN < olen)
			return -1;
		switch (dns_get16(msg + off)) {
		case DNS_OPT_ECS:
			if (qi->qi_ecsoff != 0 || olen < ECS_MIN ||
			    olen > ECS_MAX)
				return -1;
			qi->qi_ecsoff = (uint16_t)(off + OPTHDR_LEN);
			qi->qi_ecslen = (uint8_t)olen;
			break;
		case DNS_OPT_KEEPALIVE:
			/* RFC 7828 3.2.1: a query carries no TIMEOUT. */
			if (olen != 0)
				return -1;
			qi->qi_keepalive = 1;
			break;
		}
		off += OPTHDR_LEN + olen;
	}
	return 0;
}

/* QDCOUNT 1, ANCOUNT and NSCOUNT 0, and the given ARCOUNT. */
static void
counts_put(uint8_t *hdr, uint16_t qd, uint16_t ar)
{
	dns_put16(hdr + 4, qd);
	dns_put16(hdr + 6, 0);
	dns_put16(hdr + 8, 0);
	dns_put16(hdr + 10, ar);
}

/* Writes an OPT record header at p; returns where its rdata goes. */
static uint8_t *
opt_put(uint8_t *p, uint8_t flags, uint16_t rdlen)
{
	p[0] = 0;
	dns_put16(p + 1, DNS_TYPE_OPT);
	dns_put16(p + 3, EDNS_PAYLOAD);
	p[5] = 0;		/* extended RCODE */
	p[6] = 0;		/* version */
	p[7] = flags;
	p[8] = 0;
	dns_put16(p + 9, rdlen);
	return p + OPT_LEN;
}

/*
 * DNS wire format: just enough to vet client queries, match upstream
 * replies to them, and write the few messages we make ourselves.
 * Nothing here allocates or keeps state; every read is bounded by the
 * length the caller passed.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "dnsfwd.h"

#define F_DO		0x80	/* first byte of the OPT TTL's flags half */

#define DNS_MAXNAME	255
#define DNS_MAXLABEL	63
#define DNS_QTAIL	4	/* QTYPE and QCLASS after the name */
#define DNS_RRFIXED	10	/* TYPE, CLASS, TTL, RDLENGTH */
#define OPT_LEN		11	/* root owner plus the fixed part */
#define EDE_FIXED	6	/* OPTION-CODE, OPTION-LENGTH, INFO-CODE */

static int	name_skip(const uint8_t *, size_t, size_t *, int);
static int	name_equal(const uint8_t *, const uint8_t *, size_t);
static uint8_t	ascii_lower(uint8_t);
static int	rr_skip(const uint8_t *, size_t, size_t *, struct dns_qinfo *);
static int	opt_note(const uint8_t *, size_t, struct dns_qinfo *);
static size_t	question_end(const uint8_t *, size_t);
static void	counts_put(uint8_t *, uint16_t, uint16_t);
static uint8_t	*opt_put(uint8_t *, uint8_t, uint16_t);

int
dns_parse_query(const uint8_t *msg, size_t len, struct dns_qinfo *qi)
{
	struct dns_qinfo q;
	size_t		 off;
	unsigned int	 ar;

	if (len < DNS_HDRLEN || (msg[2] & (F_QR | F_OPCODE)) != 0 ||
	    dns_get16(msg + 4) != 1 || dns_get16(msg + 6) != 0 ||
	    dns_get16(msg + 8) != 0)
		return -1;
	if ((off = question_end(msg, len)) == 0)
		return -1;
	memset(&q, 0, sizeof(q));
	q.qi_qend = off;
	q.qi_qtype = dns_get16(msg + off - DNS_QTAIL);
	q.qi_qclass = dns_get16(msg + off - DNS_QTAIL + 2);
	for (ar = dns_get16(msg + 10); ar > 0; ar--)
		if (rr_skip(msg, len, &off, &q) == -1)
			return -1;
	/* Bytes no count accounts for are a smuggling vector: refuse them. */
	if (off != len)
		return -1;
	*qi = q;
	return 0;
}

int
dns_reply_matches(const uint8_t *reply, size_t rlen, const uint8_t *query,
    size_t qend)
{
	size_t	end;

	if (rlen < DNS_HDRLEN || (reply[2] & F_QR) == 0 ||
	    dns_get16(reply + 4) != 1)
		return 0;
	/*
	 * Equal question lengths mean every query offset read below lies
	 * before qend, whatever the query holds.
	 */
	if ((end = question_end(reply, rlen)) == 0 || end != qend)
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
 * Hashes what makes two queries interchangeable: the case-folded name,
 * type, class, the DO and CD bits and whether OPT was there.  The seed
 * is secret, so nobody can aim many names at one bucket.
 */
uint32_t
dns_query_hash(const uint8_t *q, const struct dns_qinfo *qi, uint32_t seed)
{
	uint32_t h = seed ^ 2166136261u;
	size_t	 i;

	for (i = DNS_HDRLEN; i < qi->qi_qend; i++)
		h = (h ^ ascii_lower(q[i])) * 16777619u;
	h = (h ^ (uint32_t)(qi->qi_do | qi->qi_has_opt << 1)) * 16777619u;
	return (h ^ (q[3] & F_CD)) * 16777619u;
}

int
dns_query_same(const uint8_t *a, const struct dns_qinfo *qa,
    const uint8_t *b, const struct dns_qinfo *qb)
{
	return qa->qi_qend == qb->qi_qend && qa->qi_do == qb->qi_do &&
	    qa->qi_has_opt == qb->qi_has_opt &&
	    (a[3] & F_CD) == (b[3] & F_CD) &&
	    dns_question_equal(a, b, qa->qi_qend);
}

/*
 * Reads the resource record at *off into rr and steps past it; -1 when
 * it does not fit.  Owner names may be compressed, pointing backwards.
 */
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

	if (rlen < DNS_HDRLEN || (qlen = question_end(reply, rlen)) == 0)
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
	size_t	 tlen, need, qend = qi->qi_qend;
	uint8_t	*p;

	if (text == NULL)
		text = "";
	tlen = strlen(text);
	if (qend < DNS_HDRLEN || tlen > UINT16_MAX - EDE_FIXED)
		return 0;
	need = qend + (qi->qi_has_opt ? OPT_LEN + EDE_FIXED + tlen : 0);
	if (need > cap)
		return 0;
	memcpy(out, query, qend);
	out[2] = F_QR | (query[2] & F_RD);
	out[3] = F_RA | RCODE_SERVFAIL;
	counts_put(out, 1, qi->qi_has_opt ? 1 : 0);
	if (!qi->qi_has_opt)
		return need;
	p = opt_put(out + qend, qi->qi_do ? F_DO : 0,
	    (uint16_t)(EDE_FIXED + tlen));
	dns_put16(p, DNS_OPT_EDE);
	dns_put16(p + 2, (uint16_t)(2 + tlen));
	dns_put16(p + 4, ede);
	memcpy(p + 6, text, tlen);
	return need;
}

size_t
dns_opt_append(uint8_t *msg, size_t len, int do_bit)
{
	opt_put(msg + len, do_bit ? F_DO : 0, 0);
	dns_put16(msg + 10, (uint16_t)(dns_get16(msg + 10) + 1));
	return len + OPT_LEN;
}

/*
 * Returns the offset just past the question at DNS_HDRLEN, or 0 when it
 * is compressed, malformed or cut short.
 */
static size_t
question_end(const uint8_t *msg, size_t len)
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

/* Steps *off past one resource record, noting an OPT in qi. */
static int
rr_skip(const uint8_t *msg, size_t len, size_t *off, struct dns_qinfo *qi)
{
	size_t	start = *off, rdlen;

	if (name_skip(msg, len, off, 1) == -1 || len - *off < DNS_RRFIXED)
		return -1;
	rdlen = dns_get16(msg + *off + 8);
	if (len - *off - DNS_RRFIXED < rdlen)
		return -1;
	if (dns_get16(msg + *off) == DNS_TYPE_OPT &&
	    opt_note(msg + *off, *off - start, qi) == -1)
		return -1;
	*off += DNS_RRFIXED + rdlen;
	return 0;
}

/*
 * rr points at the fixed part of an OPT whose owner took namelen bytes.
 * RFC 6891 6.1.1: at most one, owned by the root, which is one zero byte.
 */
static int
opt_note(const uint8_t *rr, size_t namelen, struct dns_qinfo *qi)
{
	uint16_t	size;

	if (qi->qi_has_opt || namelen != 1)
		return -1;
	qi->qi_has_opt = 1;
	/* RFC 6891 6.2.3: values below 512 are treated as 512. */
	size = dns_get16(rr + 2);
	qi->qi_udpsize = size < 512 ? 512 : size;
	qi->qi_do = (rr[6] & F_DO) != 0;
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

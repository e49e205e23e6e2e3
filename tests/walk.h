/*
 * Reading DNS messages for the unit tests, independently of dns.c: the
 * records of every section, where their TTLs and rdata start.  Included
 * after mb.h (for MB_FN) and the T_ codes.
 */
#ifndef TESTS_WALK_H
#define TESTS_WALK_H

struct rrv {
	size_t		 start;
	size_t		 ttloff;
	size_t		 rdata;
	uint16_t	 type;
	uint16_t	 class;
	uint16_t	 rdlen;
	uint32_t	 ttl;
};

MB_FN int
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

MB_FN size_t
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
MB_FN int
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
MB_FN int
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

/* m's first A record (four octets of address) into *a: 0, or -1. */
MB_FN int
first_a(const uint8_t *m, size_t len, struct rrv *a)
{
	struct rrv	 rr[64];
	int		 n, k;

	if ((n = walk(m, len, rr, 64)) < 0)
		return -1;
	for (k = 0; k < n && k < 64; k++)
		if (rr[k].type == T_A && rr[k].rdlen == 4) {
			*a = rr[k];
			return 0;
		}
	return -1;
}

/* The last octet of m's first A record, or -1. */
MB_FN int
a_of(const uint8_t *m, size_t len)
{
	struct rrv	 a;

	return first_a(m, len, &a) == 0 ? m[a.rdata + 3] : -1;
}

/* The TTL of m's first A record, or -1. */
MB_FN long long
a_ttl(const uint8_t *m, size_t len)
{
	struct rrv	 a;

	return first_a(m, len, &a) == 0 ? (long long)a.ttl : -1;
}

/* 1 when every non-OPT record of m has TTL ttl. */
MB_FN int
all_ttls(const uint8_t *m, size_t len, uint32_t ttl)
{
	struct rrv	 rr[64];
	int		 n, k;

	if ((n = walk(m, len, rr, 64)) < 0 || n > 64)
		return 0;
	for (k = 0; k < n; k++)
		if (rr[k].type != DNS_TYPE_OPT && rr[k].ttl != ttl)
			return 0;
	return 1;
}

#endif

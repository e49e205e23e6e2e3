/*
 * What the libFuzzer targets of dnsfwd share: reading the fuzz input, a
 * clock and a random source the input controls (the targets link with
 * -Wl,--wrap=now_ms,--wrap=boottime_ms,--wrap=random_bytes so util.c's
 * are replaced for every caller), an independent DNS message walker for
 * the invariants, and FZ_CHECK, which aborts with the failed condition so
 * that libFuzzer keeps the input.
 *
 * The walker is written from RFC 1035 again rather than taken from
 * dns.c, so that a bug there is not also the yardstick.
 */
#ifndef FUZZ_H
#define FUZZ_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../dns.h"
#include "../dnsfwd.h"

#define FZ_CHECK(cond) do {						\
	if (!(cond)) {							\
		fprintf(stderr, "%s:%d: invariant failed: %s\n",	\
		    __FILE__, __LINE__, #cond);				\
		abort();						\
	}								\
} while (0)

/* ---- the input ---- */

struct fin {
	const uint8_t	*p;
	size_t		 n;
};

static inline uint8_t
fin_u8(struct fin *f)
{
	if (f->n == 0)
		return 0;
	f->n--;
	return *f->p++;
}

static inline uint16_t
fin_u16(struct fin *f)
{
	uint16_t v = (uint16_t)(fin_u8(f) << 8);

	return (uint16_t)(v | fin_u8(f));
}

static inline uint32_t
fin_u32(struct fin *f)
{
	uint32_t v = (uint32_t)fin_u16(f) << 16;

	return v | fin_u16(f);
}

/* Up to want bytes; *out points at them (no copy). */
static inline size_t
fin_take(struct fin *f, size_t want, const uint8_t **out)
{
	size_t	 n = want < f->n ? want : f->n;

	*out = f->p;
	f->p += n;
	f->n -= n;
	return n;
}

/*
 * Writes a question name at p: with 0x10 in nb, labels straight from the
 * input (the parser judges them); else one of eight names, upper-cased
 * with 8 in nb.  Returns the bytes written, at most 2 + 64 + 16.
 */
static inline size_t
fin_name(struct fin *f, uint8_t nb, uint8_t *p)
{
	static const char *const names[8] = { "example.com", "a.example",
	    "www.example.org", "x", "nx.example", "cname.example",
	    "big.example", "mid.example" };
	const uint8_t	*in;
	const char	*s, *dot;
	size_t		 n = 0, l, i;

	if (nb & 0x10) {
		l = fin_take(f, fin_u8(f) % 64, &in);
		memcpy(p, in, l);
		n = l;
	} else
		for (s = names[nb & 7]; ; s += l + 1) {
			dot = strchr(s, '.');
			l = dot ? (size_t)(dot - s) : strlen(s);
			p[n++] = (uint8_t)l;
			for (i = 0; i < l; i++)
				p[n++] = (uint8_t)((nb & 8) ? s[i] & ~0x20 :
				    s[i]);
			if (dot == NULL)
				break;
		}
	p[n++] = 0;
	return n;
}

/* ---- the clock and the random source ---- */

static int64_t	 fz_now = 1000000000;	/* monotonic ms */
static int64_t	 fz_boot_off = 5000;	/* boot clock minus monotonic */
static uint64_t	 fz_rng = 1;

int64_t	 __wrap_now_ms(void);
int64_t	 __wrap_boottime_ms(void);
void	 __wrap_random_bytes(void *, size_t);

int64_t
__wrap_now_ms(void)
{
	return fz_now;
}

int64_t
__wrap_boottime_ms(void)
{
	return fz_now + fz_boot_off;
}

/* splitmix64: reproducible per input, which getrandom is not. */
void
__wrap_random_bytes(void *buf, size_t len)
{
	uint8_t	*p = buf;
	uint64_t z;
	size_t	 i;

	for (i = 0; i < len; i++) {
		if (i % 8 == 0) {
			z = (fz_rng += 0x9e3779b97f4a7c15ull);
			z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
			z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
			z ^= z >> 31;
		}
		p[i] = (uint8_t)(z >> (8 * (i % 8)));
	}
}

static inline void
fz_reset_clock(uint64_t seed)
{
	fz_now = 1000000000;
	fz_boot_off = 5000;
	fz_rng = seed | 1;
}

/* ---- a DNS walker of our own ---- */

struct fz_rr {
	size_t		 start;		/* owner name */
	size_t		 fixed;		/* TYPE */
	size_t		 rdata;
	uint16_t	 type;
	uint16_t	 class;
	uint32_t	 ttl;
	uint16_t	 rdlen;
};

static inline uint16_t
fz_get16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

/*
 * Steps past a name at *off: labels of at most 63 octets, ending in the
 * root or in a compression pointer, which must point backwards into the
 * message (it is not followed); 0 or -1.
 */
static inline int
fz_name(const uint8_t *m, size_t len, size_t *off, int ptr_ok)
{
	size_t	 p = *off, total = 0;
	uint8_t	 l;

	for (;;) {
		if (p >= len)
			return -1;
		l = m[p];
		if ((l & 0xc0) == 0xc0) {
			if (!ptr_ok || p + 2 > len ||
			    (size_t)((l & 0x3f) << 8 | m[p + 1]) >= p)
				return -1;
			*off = p + 2;
			return 0;
		}
		if ((l & 0xc0) != 0)
			return -1;
		total += 1 + l;
		if (total > 255)
			return -1;
		p += 1 + l;
		if (l == 0)
			break;
	}
	*off = p;
	return 0;
}

/*
 * Walks a whole message: header, QDCOUNT questions (uncompressed names),
 * then every record of the three sections, which must end exactly at
 * len.  Fills *qend (offset past the questions) and up to max records;
 * returns the number of records, or -1 when the message does not parse.
 */
static inline int
fz_walk(const uint8_t *m, size_t len, size_t *qend, struct fz_rr *rr,
    int max)
{
	size_t	 off = DNS_HDRLEN;
	unsigned int i, qd, n;

	if (len < DNS_HDRLEN)
		return -1;
	qd = fz_get16(m + 4);
	n = (unsigned int)fz_get16(m + 6) + fz_get16(m + 8) + fz_get16(m + 10);
	for (i = 0; i < qd; i++) {
		if (fz_name(m, len, &off, 0) == -1 || len - off < 4)
			return -1;
		off += 4;
	}
	if (qend != NULL)
		*qend = off;
	for (i = 0; i < n; i++) {
		struct fz_rr r;

		r.start = off;
		if (fz_name(m, len, &off, 1) == -1 || len - off < 10)
			return -1;
		r.fixed = off;
		r.type = fz_get16(m + off);
		r.class = fz_get16(m + off + 2);
		r.ttl = (uint32_t)fz_get16(m + off + 4) << 16 |
		    fz_get16(m + off + 6);
		r.rdlen = fz_get16(m + off + 8);
		r.rdata = off + 10;
		if (len - r.rdata < r.rdlen)
			return -1;
		off = r.rdata + r.rdlen;
		if ((int)i < max && rr != NULL)
			rr[i] = r;
	}
	if (off != len)
		return -1;
	return (int)n;
}

static inline uint8_t
fz_lower(uint8_t c)
{
	return c >= 'A' && c <= 'Z' ? (uint8_t)(c | 0x20) : c;
}

/*
 * The questions of a and b (each a whole header and question, ending at
 * aend and bend) are equal: name octets case-insensitively, type and
 * class exactly.
 */
static inline int
fz_question_eq(const uint8_t *a, size_t aend, const uint8_t *b, size_t bend)
{
	size_t	 i;

	if (aend != bend || aend < DNS_HDRLEN + 5)
		return 0;
	for (i = DNS_HDRLEN; i < aend - 4; i++)
		if (fz_lower(a[i]) != fz_lower(b[i]))
			return 0;
	return memcmp(a + aend - 4, b + bend - 4, 4) == 0;
}

/* Offset past the one uncompressed question of m, or 0. */
static inline size_t
fz_qend(const uint8_t *m, size_t len)
{
	size_t	 off = DNS_HDRLEN;

	if (len < DNS_HDRLEN || fz_name(m, len, &off, 0) == -1 ||
	    len - off < 4)
		return 0;
	return off + 4;
}

/* A heap copy of exactly len bytes, so ASan sees any read past it. */
static inline uint8_t *
fz_dup(const uint8_t *p, size_t len)
{
	uint8_t	*d = malloc(len ? len : 1);

	if (d == NULL)
		abort();
	if (len > 0)
		memcpy(d, p, len);
	return d;
}

#endif /* FUZZ_H */

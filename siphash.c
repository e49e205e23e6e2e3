/*
 * SipHash-1-3, one-shot and incremental, written from the paper
 * ("SipHash: a fast short-input PRF", Aumasson and Bernstein, 2012).
 * The message is read as little-endian 64-bit words whatever the host's
 * byte order, so a key gives the same hashes everywhere and the
 * published test vectors apply.  The core takes its round counts as
 * arguments so tests/test_siphash.c can check it against the paper's
 * SipHash-2-4 vector too; the callers here pass constants, which the
 * compiler folds.
 */
#include <string.h>

#include "siphash.h"

#define ROTL(x, b)	(((x) << (b)) | ((x) >> (64 - (b))))
/* One byte repeated in all eight lanes of a word. */
#define LANES(c)	((uint64_t)(c) * 0x0101010101010101ULL)

static inline uint64_t	le64(const uint8_t *);
static inline uint64_t	le_part(const uint8_t *, size_t);
static inline uint64_t	lower64(uint64_t);
static inline void	sip_init(uint64_t *, const uint8_t *);
static inline void	sip_rounds(uint64_t *, int);
static inline void	sip_block(uint64_t *, uint64_t, int);
static inline uint64_t	sip_finish(uint64_t *, uint64_t, uint64_t, int, int);
static uint64_t		sip_hash(const uint8_t *, const uint8_t *, size_t, int,
			    int);
static void		update(struct siphash *, const uint8_t *, size_t, int);

static inline uint64_t
le64(const uint8_t *p)
{
	/* Byte by byte, not a cast: p need not be aligned. */
	return (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16 |
	    (uint64_t)p[3] << 24 | (uint64_t)p[4] << 32 |
	    (uint64_t)p[5] << 40 | (uint64_t)p[6] << 48 |
	    (uint64_t)p[7] << 56;
}

/* The first n < 8 bytes at p as a little-endian word. */
static inline uint64_t
le_part(const uint8_t *p, size_t n)
{
	uint64_t w = 0;

	while (n-- > 0)
		w |= (uint64_t)p[n] << (8 * n);
	return w;
}

/*
 * The eight bytes of w with A-Z made a-z, all at once.  Per byte, on its
 * low seven bits h (no carry leaves a byte: h + 0x3f <= 0xbe): h + 0x3f
 * has bit 7 set when h >= 'A', h + 0x25 when h > 'Z'; their difference,
 * in a byte whose own bit 7 is clear, marks an upper-case letter, and
 * that bit moved to 0x20 makes it lower case.
 */
static inline uint64_t
lower64(uint64_t w)
{
	uint64_t h = w & LANES(0x7f);
	uint64_t ge_a = h + LANES(0x80 - 'A');
	uint64_t gt_z = h + LANES(0x7f - 'Z');
	uint64_t upper = (ge_a ^ gt_z) & ~w & LANES(0x80);

	return w | upper >> 2;
}

static inline void
sip_init(uint64_t *v, const uint8_t *key)
{
	uint64_t k0 = le64(key), k1 = le64(key + 8);

	/* "somepseudorandomlygeneratedbytes" */
	v[0] = k0 ^ 0x736f6d6570736575ULL;
	v[1] = k1 ^ 0x646f72616e646f6dULL;
	v[2] = k0 ^ 0x6c7967656e657261ULL;
	v[3] = k1 ^ 0x7465646279746573ULL;
}

static inline void
sip_rounds(uint64_t *v, int n)
{
	while (n-- > 0) {
		v[0] += v[1];
		v[1] = ROTL(v[1], 13);
		v[1] ^= v[0];
		v[0] = ROTL(v[0], 32);
		v[2] += v[3];
		v[3] = ROTL(v[3], 16);
		v[3] ^= v[2];
		v[0] += v[3];
		v[3] = ROTL(v[3], 21);
		v[3] ^= v[0];
		v[2] += v[1];
		v[1] = ROTL(v[1], 17);
		v[1] ^= v[2];
		v[2] = ROTL(v[2], 32);
	}
}

static inline void
sip_block(uint64_t *v, uint64_t m, int c)
{
	v[3] ^= m;
	sip_rounds(v, c);
	v[0] ^= m;
}

/*
 * The last block holds the len % 8 bytes left over (tail) and, in its top
 * byte, the length mod 256, so messages that differ only in trailing
 * zero bytes differ.
 */
static inline uint64_t
sip_finish(uint64_t *v, uint64_t tail, uint64_t len, int c, int d)
{
	sip_block(v, tail | len << 56, c);
	v[2] ^= 0xff;
	sip_rounds(v, d);
	return v[0] ^ v[1] ^ v[2] ^ v[3];
}

static uint64_t
sip_hash(const uint8_t *key, const uint8_t *p, size_t len, int c, int d)
{
	uint64_t v[4];
	size_t	 i;

	sip_init(v, key);
	for (i = 0; i + 8 <= len; i += 8)
		sip_block(v, le64(p + i), c);
	return sip_finish(v, le_part(p + i, len - i), len, c, d);
}

uint64_t
siphash13(const uint8_t key[SIPHASH_KEYLEN], const void *data, size_t len)
{
	return sip_hash(key, data, len, 1, 3);
}

void
siphash13_init(struct siphash *sh, const uint8_t key[SIPHASH_KEYLEN])
{
	sip_init(sh->sh_v, key);
	sh->sh_tail = 0;
	sh->sh_len = 0;
}

/*
 * Fills the pending partial block, compresses whole words straight from
 * p, and keeps what is left for the next call.  Partial words are
 * gathered first and folded once, as whole words are.
 */
static void
update(struct siphash *sh, const uint8_t *p, size_t len, int lower)
{
	unsigned have = sh->sh_len % 8;
	size_t	 n;
	uint64_t w;

	sh->sh_len += len;
	if (have != 0) {
		n = len < 8 - have ? len : 8 - have;
		w = le_part(p, n);
		sh->sh_tail |= (lower ? lower64(w) : w) << (8 * have);
		if (have + n < 8)
			return;
		sip_block(sh->sh_v, sh->sh_tail, 1);
		p += n;
		len -= n;
	}
	for (; len >= 8; p += 8, len -= 8) {
		w = le64(p);
		sip_block(sh->sh_v, lower ? lower64(w) : w, 1);
	}
	w = le_part(p, len);
	sh->sh_tail = lower ? lower64(w) : w;
}

void
siphash13_update(struct siphash *sh, const void *data, size_t len)
{
	update(sh, data, len, 0);
}

void
siphash13_update_lower(struct siphash *sh, const void *data, size_t len)
{
	update(sh, data, len, 1);
}

uint64_t
siphash13_final(const struct siphash *sh)
{
	uint64_t v[4];

	/* On a copy, so a caller may hash a prefix and then go on. */
	memcpy(v, sh->sh_v, sizeof(v));
	return sip_finish(v, sh->sh_tail, sh->sh_len, 1, 3);
}

/*
 * Unit tests of siphash.c: the published SipHash-1-3 vectors and the
 * paper's SipHash-2-4 example (through the core with other round
 * counts, which is why siphash.c is included), the incremental hash
 * against the one-shot for every way of cutting a message, the
 * case-folding update against a lower-cased copy for every byte value
 * in every position of a word, and the key's effect.  Inputs are heap
 * blocks of exactly their length, so that under -fsanitize=address a
 * read past the end is reported.
 */
#include "../siphash.c"

#include <stdio.h>
#include <stdlib.h>

#include "check.h"

/*
 * Made by tests/siphash_ref.py --table, an independent Python SipHash
 * that checks itself against the paper's example and the published
 * SipHash-1-3 vectors, and checks these tables (make check runs it).
 * Vector n: the hash of the bytes 0, 1, ..., n-1 under the key 00..0f.
 */
static const uint64_t sip13_vectors[64] = {
	0xabac0158050fc4dcULL, 0xc9f49bf37d57ca93ULL,
	0x82cb9b024dc7d44dULL, 0x8bf80ab8e7ddf7fbULL,
	0xcf75576088d38328ULL, 0xdef9d52f49533b67ULL,
	0xc50d2b50c59f22a7ULL, 0xd3927d989bb11140ULL,
	0x369095118d299a8eULL, 0x25a48eb36c063de4ULL,
	0x79de85ee92ff097fULL, 0x70c118c1f94dc352ULL,
	0x78a384b157b4d9a2ULL, 0x306f760c1229ffa7ULL,
	0x605aa111c0f95d34ULL, 0xd320d86d2a519956ULL,
	0xcc4fdd1a7d908b66ULL, 0x9cf2689063dbd80cULL,
	0x8ffc389cb473e63eULL, 0xf21f9de58d297d1cULL,
	0xc0dc2f46a6cce040ULL, 0xb992abfe2b45f844ULL,
	0x7ffe7b9ba320872eULL, 0x525a0e7fdae6c123ULL,
	0xf464aeb267349c8cULL, 0x45cd5928705b0979ULL,
	0x3a3e35e3ca9913a5ULL, 0xa91dc74e4ade3b35ULL,
	0xfb0bed02ef6cd00dULL, 0x88d93cb44ab1e1f4ULL,
	0x540f11d643c5e663ULL, 0x2370dd1f8c21d1bcULL,
	0x81157b6c16a7b60dULL, 0x4d54b9e57a8ff9bfULL,
	0x759f12781f2a753eULL, 0xcea1a3bebf186b91ULL,
	0x2cf508d3ada26206ULL, 0xb6101c2da3c33057ULL,
	0xb3f47496ae3a36a1ULL, 0x626b57547b108392ULL,
	0xc1d2363299e41531ULL, 0x667cc1923f1ad944ULL,
	0x65704ffec8138825ULL, 0x24f280d1c28949a6ULL,
	0xc2ca1cedfaf8876bULL, 0xc2164bfc9f042196ULL,
	0xa16e9c9368b1d623ULL, 0x49fb169c8b5114fdULL,
	0x9f3143f8df074c46ULL, 0xc6fdaf2412cc86b3ULL,
	0x7eaf49d10a52098fULL, 0x1cf313559d292f9aULL,
	0xc44a30dda2f41f12ULL, 0x36fae98943a71ed0ULL,
	0x318fb34c73f0bce6ULL, 0xa27abf3670a7e980ULL,
	0xb4bcc0db243c6d75ULL, 0x23f8d852fdb71513ULL,
	0x8f035f4da67d8a08ULL, 0xd89cd0e5b7e8f148ULL,
	0xf6f4e6bcf7a644eeULL, 0xaec59ad80f1837f2ULL,
	0xc3b2f6154b6694e0ULL, 0x9d199062b7bbb3a8ULL,
};
static const uint64_t sip24_vectors[64] = {
	0x726fdb47dd0e0e31ULL, 0x74f839c593dc67fdULL,
	0x0d6c8009d9a94f5aULL, 0x85676696d7fb7e2dULL,
	0xcf2794e0277187b7ULL, 0x18765564cd99a68dULL,
	0xcbc9466e58fee3ceULL, 0xab0200f58b01d137ULL,
	0x93f5f5799a932462ULL, 0x9e0082df0ba9e4b0ULL,
	0x7a5dbbc594ddb9f3ULL, 0xf4b32f46226bada7ULL,
	0x751e8fbc860ee5fbULL, 0x14ea5627c0843d90ULL,
	0xf723ca908e7af2eeULL, 0xa129ca6149be45e5ULL,
	0x3f2acc7f57c29bdbULL, 0x699ae9f52cbe4794ULL,
	0x4bc1b3f0968dd39cULL, 0xbb6dc91da77961bdULL,
	0xbed65cf21aa2ee98ULL, 0xd0f2cbb02e3b67c7ULL,
	0x93536795e3a33e88ULL, 0xa80c038ccd5ccec8ULL,
	0xb8ad50c6f649af94ULL, 0xbce192de8a85b8eaULL,
	0x17d835b85bbb15f3ULL, 0x2f2e6163076bcfadULL,
	0xde4daaaca71dc9a5ULL, 0xa6a2506687956571ULL,
	0xad87a3535c49ef28ULL, 0x32d892fad841c342ULL,
	0x7127512f72f27cceULL, 0xa7f32346f95978e3ULL,
	0x12e0b01abb051238ULL, 0x15e034d40fa197aeULL,
	0x314dffbe0815a3b4ULL, 0x027990f029623981ULL,
	0xcadcd4e59ef40c4dULL, 0x9abfd8766a33735cULL,
	0x0e3ea96b5304a7d0ULL, 0xad0c42d6fc585992ULL,
	0x187306c89bc215a9ULL, 0xd4a60abcf3792b95ULL,
	0xf935451de4f21df2ULL, 0xa9538f0419755787ULL,
	0xdb9acddff56ca510ULL, 0xd06c98cd5c0975ebULL,
	0xe612a3cb9ecba951ULL, 0xc766e62cfcadaf96ULL,
	0xee64435a9752fe72ULL, 0xa192d576b245165aULL,
	0x0a8787bf8ecb74b2ULL, 0x81b3e73d20b49b6fULL,
	0x7fa8220ba3b2eceaULL, 0x245731c13ca42499ULL,
	0xb78dbfaf3a8d83bdULL, 0xea1ad565322a1a0bULL,
	0x60e61c23a3795013ULL, 0x6606d7e446282b93ULL,
	0x6ca4ecb15c5f91e1ULL, 0x9f626da15c9625f3ULL,
	0xe51b38608ef25f57ULL, 0x958a324ceb064572ULL,
};

static uint8_t	key[SIPHASH_KEYLEN];

/* A heap copy of len bytes at p, so ASan sees its end. */
static uint8_t *
dup(const uint8_t *p, size_t len)
{
	uint8_t *q = malloc(len ? len : 1);

	if (q == NULL)
		abort();
	memcpy(q, p, len);
	return q;
}

static uint8_t
lower(uint8_t c)
{
	return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
}

static void
test_vectors(void)
{
	uint8_t	 msg[64];
	uint8_t	*m;
	size_t	 n;
	int	 bad13 = 0, bad24 = 0;

	for (n = 0; n < sizeof(msg); n++)
		msg[n] = (uint8_t)n;
	/* The paper's example, Appendix A: 15 bytes 00..0e. */
	m = dup(msg, 15);
	CHECK(sip_hash(key, m, 15, 2, 4) == 0xa129ca6149be45e5ULL);
	free(m);
	for (n = 0; n < 64; n++) {
		m = dup(msg, n);
		if (siphash13(key, m, n) != sip13_vectors[n]) {
			fprintf(stderr, "SipHash-1-3 vector %zu wrong\n", n);
			bad13++;
		}
		if (sip_hash(key, m, n, 2, 4) != sip24_vectors[n]) {
			fprintf(stderr, "SipHash-2-4 vector %zu wrong\n", n);
			bad24++;
		}
		free(m);
	}
	CHECK(bad13 == 0);
	CHECK(bad24 == 0);
}

/*
 * Every message of the vectors, cut in two at every point and taken in
 * three pieces at every pair of points, and a byte at a time, gives the
 * one-shot hash.
 */
static void
test_incremental(void)
{
	struct siphash	 sh;
	uint8_t		 msg[64];
	uint8_t		*m;
	size_t		 n, i, j;
	int		 bad = 0;

	for (n = 0; n < sizeof(msg); n++)
		msg[n] = (uint8_t)n;
	for (n = 0; n < 64; n++) {
		m = dup(msg, n);
		for (i = 0; i <= n; i++)
			for (j = i; j <= n; j++) {
				siphash13_init(&sh, key);
				siphash13_update(&sh, m, i);
				siphash13_update(&sh, m + i, j - i);
				siphash13_update(&sh, m + j, n - j);
				bad += siphash13_final(&sh) != sip13_vectors[n];
			}
		siphash13_init(&sh, key);
		for (i = 0; i < n; i++)
			siphash13_update(&sh, m + i, 1);
		bad += siphash13_final(&sh) != sip13_vectors[n];
		free(m);
	}
	CHECK(bad == 0);
	/* final leaves the state as it was: a prefix's hash, then more. */
	siphash13_init(&sh, key);
	siphash13_update(&sh, msg, 9);
	CHECK(siphash13_final(&sh) == sip13_vectors[9]);
	siphash13_update(&sh, msg + 9, 20);
	CHECK(siphash13_final(&sh) == sip13_vectors[29]);
	CHECK(siphash13_final(&sh) == sip13_vectors[29]);
	/* Nothing taken in is the empty message; a NULL with 0 is allowed. */
	siphash13_init(&sh, key);
	siphash13_update(&sh, NULL, 0);
	CHECK(siphash13_final(&sh) == sip13_vectors[0]);
}

/*
 * update_lower equals update of a lower-cased copy: each of the 256 byte
 * values at each of the 8 places in a word (so both the byte path and
 * the word-at-a-time path see it), and at each offset from a word's
 * start; only A-Z change.
 */
static void
test_lower(void)
{
	struct siphash	 a;
	uint8_t		 buf[24], low[24];
	uint8_t		*m;
	size_t		 off, pos, i;
	unsigned	 c;
	int		 bad = 0;

	for (off = 0; off < 8; off++)
		for (pos = 0; pos < 16; pos++)
			for (c = 0; c < 256; c++) {
				for (i = 0; i < sizeof(buf); i++)
					buf[i] = (uint8_t)("Ab-Z@[`{z\xc1\xdaQ"
					    [i % 13]);
				buf[pos] = (uint8_t)c;
				for (i = 0; i < sizeof(buf); i++)
					low[i] = lower(buf[i]);
				m = dup(buf, sizeof(buf));
				/* A lower-case start puts m + off at place off. */
				siphash13_init(&a, key);
				siphash13_update(&a, low, off);
				siphash13_update_lower(&a, m + off,
				    sizeof(buf) - off);
				free(m);
				bad += siphash13_final(&a) !=
				    siphash13(key, low, sizeof(buf));
			}
	CHECK(bad == 0);
	/* The word at a time fold against the byte one, for every byte. */
	for (c = 0, bad = 0; c < 256; c++)
		bad += lower64(LANES(c)) != LANES(lower((uint8_t)c));
	CHECK(bad == 0);
	/* A name in any case hashes as its lower case. */
	siphash13_init(&a, key);
	siphash13_update_lower(&a, "\x03" "WwW" "\x07" "ExAmPlE" "\x03" "ORG",
	    17);
	CHECK(siphash13_final(&a) ==
	    siphash13(key, "\x03" "www" "\x07" "example" "\x03" "org", 17));
	/* But only ASCII letters: 0xC1 is not 0xE1. */
	siphash13_init(&a, key);
	siphash13_update_lower(&a, "\xc1", 1);
	CHECK(siphash13_final(&a) == siphash13(key, "\xc1", 1));
	CHECK(siphash13_final(&a) != siphash13(key, "\xe1", 1));
}

/* Each key bit, and each message bit, changes the hash. */
static void
test_key(void)
{
	uint8_t	 k[SIPHASH_KEYLEN], msg[30];
	uint8_t	*in[2] = { k, msg };
	size_t	 len[2] = { sizeof(k), sizeof(msg) };
	uint64_t h, base;
	size_t	 i, j;
	int	 same = 0, flips = 0;

	memcpy(k, key, sizeof(k));
	memcpy(msg, "\x03" "www" "\x07" "example" "\x03" "org" "\0\0\x01\0\x01"
	    "abcdefghij", 30);
	base = siphash13(k, msg, sizeof(msg));
	for (j = 0; j < 2; j++)		/* the key's bits, then the message's */
		for (i = 0; i < 8 * len[j]; i++) {
			in[j][i / 8] ^= (uint8_t)(1 << i % 8);
			h = siphash13(k, msg, sizeof(msg));
			same += h == base;
			/* Avalanche: about half the 64 bits flip, never few. */
			flips += __builtin_popcountll(h ^ base) < 12;
			in[j][i / 8] ^= (uint8_t)(1 << i % 8);
		}
	CHECK(same == 0);
	CHECK(flips == 0);
	/* A trailing zero byte makes another message: msg[16] is 0. */
	CHECK(msg[16] == 0);
	CHECK(siphash13(k, msg, 17) != siphash13(k, msg, 16));
	CHECK(siphash13(k, "\0", 1) != siphash13(k, "", 0));
}

int
main(void)
{
	size_t i;

	for (i = 0; i < sizeof(key); i++)
		key[i] = (uint8_t)i;
	test_vectors();
	test_incremental();
	test_lower();
	test_key();
	return check_done("test_siphash");
}

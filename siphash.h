/*
 * SipHash-1-3 (Aumasson and Bernstein, 2012): a keyed 64-bit hash for
 * tables whose keys come from clients.  Unlike seeded FNV-1a, whose low
 * bits depend only on the low bits of its input, nobody who lacks the
 * 128-bit key can choose names that land in one bucket; any bits of the
 * result make a bucket index.  1-3 (one round per 8-byte block, three to
 * finish) is the variant hash tables use (Rust's HashMap, Python's str
 * hash): table keys need resistance to flooding, not a MAC's margin.
 */
#ifndef SIPHASH_H
#define SIPHASH_H

#include <stddef.h>
#include <stdint.h>

#define SIPHASH_KEYLEN	16

/*
 * A hash being computed from pieces, as siphash13() would compute it
 * from their concatenation.  Lives on the caller's stack for one key;
 * init, any number of updates, then final.
 */
struct siphash {
	uint64_t	sh_v[4];
	uint64_t	sh_tail;	/* the last len % 8 bytes, little-endian */
	uint64_t	sh_len;		/* bytes taken in so far */
};

/* The hash of len bytes at data under key. */
uint64_t siphash13(const uint8_t key[SIPHASH_KEYLEN], const void *data,
	    size_t len);

void	siphash13_init(struct siphash *, const uint8_t key[SIPHASH_KEYLEN]);
void	siphash13_update(struct siphash *, const void *, size_t);
/*
 * Takes in the bytes with ASCII A-Z as a-z, as the update of a lower-cased
 * copy would, so a DNS name hashes case-insensitively where it lies.
 * Other bytes, 0x80-0xff included, are taken as they are, as DNS compares
 * names (RFC 4343).
 */
void	siphash13_update_lower(struct siphash *, const void *, size_t);
uint64_t siphash13_final(const struct siphash *);

#endif /* SIPHASH_H */

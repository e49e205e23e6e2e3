/*
 * cache.c: the answer cache, a fixed table of pure functions of `now`
 * that calls nobody.
 */
#ifndef CACHE_H
#define CACHE_H

#include <stddef.h>
#include <stdint.h>

struct config;
struct qkey;

/* Largest answer the cache keeps; each entry reserves this much. */
#define CACHE_MSGMAX	1232
/* A stale answer's TTL (RFC 8767 section 4). */
#define STALE_TTL	30

enum cache_state { CACHE_MISS, CACHE_FRESH, CACHE_STALE };
/* One cached answer; valid until the next cache_store or cache_lookup. */
struct centry;

void	cache_init(const struct config *);
void	cache_free(void);
int	cache_entries(void);
/*
 * The entry for k at `now`, and in *state whether it is fresh or only
 * stale (expired, but within --serve-stale).  Entries past that are
 * removed.  A fresh hit becomes the most recently used.
 */
struct centry *cache_lookup(const struct qkey *, int64_t, enum cache_state *);
/* True when a fresh entry is in the last tenth of its life. */
int	cache_prefetch_due(const struct centry *, int64_t);
/*
 * Offers an upstream answer (without OPT) to k for keeping; returns the
 * entry made, valid until the next cache_store, or NULL.
 */
const struct centry *cache_store(const struct qkey *, const uint8_t *,
	    size_t, int64_t);
/*
 * Writes the entry into out (CACHE_MSGMAX bytes) with its TTLs aged to
 * `now`, or pinned to STALE_TTL when stale; returns the length.
 */
size_t	cache_render(const struct centry *, int64_t, int, uint8_t *);

#endif /* CACHE_H */

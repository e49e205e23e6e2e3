/*
 * util.c: what every module needs and none owns: the clocks (read once
 * per event and passed down), randomness, addresses, allocation at
 * start-up, and the fixed-pool idioms the tables share.
 */
#ifndef UTIL_H
#define UTIL_H

#include <sys/types.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

struct ev_loop;
struct ev_timer;

union sockaddr_any {
	struct sockaddr		sa;
	struct sockaddr_in	sin;
	struct sockaddr_in6	sin6;
};

/* Sockets passed by systemd socket activation (LISTEN_FDS), from fd 3. */
#define LISTEN_FDS_START 3
/* How many were passed to this process, or 0 when more than max. */
int	passed_fds(int max);
/* Monotonic milliseconds: every deadline and RTT in dnsfwd is in these. */
int64_t	now_ms(void);
int64_t	boottime_ms(void);
/*
 * The kernel stamps what a socket receives as it arrives (SO_TIMESTAMP):
 * a round trip measured to that stamp leaves out the time dnsfwd itself
 * was not running.  recv_arrived is recv(2) that also sets *arrived to
 * the stamp of the last data read, as now_ms, or -1 when there is none.
 */
void	sock_stamp_rx(int);
ssize_t	recv_arrived(int, void *, size_t, int64_t *arrived);
/* getrandom(2); a failure leaves no safe source of IDs, so it is fatal. */
void	random_bytes(void *, size_t);
const char *addr_str(const struct sockaddr *, char *, size_t);
/* malloc that ends start-up on failure; only used before the loop runs. */
void	*xmalloc(size_t);
void	*xcalloc(size_t, size_t);
/*
 * Every timer runs after the I/O of its loop pass: a timeout is judged
 * only once what arrived in time has been read, even when dnsfwd itself
 * was late to look (libev runs a pass's pending watchers last-queued
 * first, and timers are queued after I/O).
 */
#define TIMER_PRI	(-1)
void	timer_init(struct ev_timer *,
	    void (*)(struct ev_loop *, struct ev_timer *, int));
/*
 * For a timer that judges what did not arrive: 1 when it fired so long
 * after `due` that dnsfwd itself was not running (stopped, frozen,
 * starved).  A stopped epoll_wait returns EINTR having read nothing, so
 * what came meanwhile may be unread: the timer is armed for the next
 * pass, which reads it first, and the caller returns; a repeating timer
 * keeps its interval.  `*looked` holds when that pass was asked for: one
 * is enough for whatever was due by then.
 */
int	timer_stalled(struct ev_loop *, struct ev_timer *, int64_t due,
	    int64_t now, int64_t *looked);
/*
 * (Re)arms a one-shot timer to fire at `when` (ms, as now_ms): libev
 * counts in seconds of its own clock, so only the distance is converted.
 */
void	timer_arm(struct ev_loop *, struct ev_timer *, int64_t when,
	    int64_t now);

/* The object that embeds member m, from a pointer to it (watchers). */
#define container_of(p, type, m) \
	((type *)(void *)((char *)(p) - offsetof(type, m)))

/*
 * Takes an entry of a fixed array into var: a released one from the free
 * list (a TAILQ through field) first, else the next never-used one, so
 * an idle daemon's pools cost no memory; NULL when all are in use.
 */
#define POOL_TAKE(var, freelist, field, base, fresh, n) do {		\
	if (((var) = TAILQ_FIRST(freelist)) != NULL)			\
		TAILQ_REMOVE(freelist, var, field);			\
	else if ((fresh) < (n))						\
		(var) = &(base)[(fresh)++];				\
} while (0)

/*
 * Inserts elm into a TAILQ kept in order of its `key` member, searching
 * from the tail: keys that mostly come in order cost O(1) (ev.pod, "Be
 * smart about timeouts").
 */
#define TAILQ_INSERT_SORTED(head, elm, type, headname, field, key) do {	\
	struct type *p_;						\
									\
	TAILQ_FOREACH_REVERSE(p_, head, headname, field)		\
		if (p_->key <= (elm)->key)				\
			break;						\
	if (p_ != NULL)							\
		TAILQ_INSERT_AFTER(head, p_, elm, field);		\
	else								\
		TAILQ_INSERT_HEAD(head, elm, field);			\
} while (0)

/*
 * Hash chains of indices into a fixed array (the pending pool, the cache
 * table): a bucket holds the first index of its chain, each element the
 * next, -1 ends a chain.  Indices, not pointers, so an element is linked
 * without allocating and the tables size themselves from the limits.
 */
static inline uint32_t
chain_mask(uint32_t n)
{
	uint32_t m = 1;

	while (m < n)
		m <<= 1;
	return m - 1;
}

static inline void
chain_clear(int32_t *buckets, uint32_t mask)
{
	memset(buckets, 0xff, (mask + 1) * sizeof(int32_t));
}

static inline int32_t *
chain_buckets(uint32_t mask)
{
	int32_t *b = xcalloc(mask + 1, sizeof(int32_t));

	chain_clear(b, mask);
	return b;
}

#define CHAIN_INSERT(buckets, mask, h, base, next, idx) do {		\
	(base)[idx].next = (buckets)[(h) & (mask)];			\
	(buckets)[(h) & (mask)] = (idx);				\
} while (0)

/* Unlinks idx from its chain; an index not on it is left alone. */
#define CHAIN_UNLINK(buckets, mask, h, base, next, idx) do {		\
	int32_t *ip_ = &(buckets)[(h) & (mask)];			\
									\
	while (*ip_ >= 0 && *ip_ != (idx))				\
		ip_ = &(base)[*ip_].next;				\
	if (*ip_ == (idx))						\
		*ip_ = (base)[idx].next;				\
} while (0)

#endif /* UTIL_H */

/*
 * mux.c: the upstream pool.  It carries opaque DNS queries to the
 * upstreams and calls back exactly once per send; it knows no clients
 * and no cache.
 */
#ifndef MUX_H
#define MUX_H

#include <stddef.h>
#include <stdint.h>

struct config;
struct ev_loop;
union sockaddr_any;

/* How a mux_send ended. */
enum mux_status {
	MUX_ANSWER,		/* reply and len are the upstream's answer */
	MUX_TIMEOUT,		/* the deadline passed */
	MUX_UNREACHABLE,	/* every upstream is backing off */
	MUX_FAILED,		/* connections kept failing with it */
	MUX_REFUSED		/* upstreams answered REFUSED, SERVFAIL, ... */
};
/* Called exactly once per accepted mux_send, never from within it. */
typedef void mux_done_fn(void *, enum mux_status, uint8_t *, size_t,
	    int64_t);

/* Upstream requests the pool holds at most with this config. */
int	mux_capacity(const struct config *);
void	mux_init(struct ev_loop *, const struct config *);
/*
 * Sends an opaque DNS query (its ID is replaced) to an upstream, to be
 * answered by `deadline`.  Returns a handle for mux_extend, or -1 when
 * too many are in flight.
 */
int	mux_send(const uint8_t *, size_t, int64_t, mux_done_fn *, void *,
	    int64_t);
/* Moves a send's deadline later. */
void	mux_extend(int, int64_t, int64_t);
/* A copy of the send went unanswered past its attempt timeout. */
int	mux_overdue(int);
/* A client asked, answered from the cache or not: --prewarm stays warm. */
void	mux_active(int64_t);
/*
 * The path to the upstreams whose bit is set in the mask changed: their
 * connections are replaced (their queries resent), their backoff is
 * cleared and their TLS session tickets forgotten.  Other upstreams keep
 * their connections and tickets.
 */
void	mux_netchange(uint32_t, int64_t);
/*
 * The local address of connection slot `slot` of upstream `up` into sa;
 * -1 when that slot has no connection (or no such slot).
 */
int	mux_conn_local(int up, int slot, union sockaddr_any *sa);
void	mux_shutdown(void);
/* Logs each upstream's standing and counts (SIGUSR1). */
void	mux_log_stats(void);
/* The upstream the next query would go to, and its round-trip time. */
void	mux_status(char *, size_t, int64_t);
int	mux_inflight(void);

#endif /* MUX_H */

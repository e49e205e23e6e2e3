/*
 * upstream.c: one upstream and its connection slots: which connection
 * takes a query, dialling with backoff, which idle connections are kept,
 * and forgetting what was learnt when its path changes.  The pool
 * (mux.c) owns the upstreams; nothing else includes this header.
 */
#ifndef UPSTREAM_H
#define UPSTREAM_H

#include <stdint.h>

struct config;
struct conn;
struct ev_loop;
struct upstream;
struct upstream_cfg;
union sockaddr_any;

void	upstream_init(struct upstream *, const struct config *,
	    const struct upstream_cfg *, int);
/* Frees its slots, whose connections are closed, and its TLS state. */
void	upstream_free(struct upstream *);
/*
 * A ready connection with room, but `not`: the one with the fewest in
 * flight; over a long path that loses nothing, one with nothing in
 * flight, else the one given a query longest ago; over a long path that
 * loses packets, the first.  One that seems stalled comes last.
 */
struct conn *upstream_conn(struct upstream *, const struct conn *, int64_t);
/* TCP retransmitted on one of its connections since the last call. */
int	upstream_retransmitted(struct upstream *);
/*
 * A query went on that connection: on a long path, dial another when it
 * had to share, or a spare for a lossy one.
 */
void	upstream_grow(struct upstream *, const struct conn *, int64_t);
/* A slot with no connection, or NULL. */
struct conn *upstream_idle(struct upstream *);
/* Connections being dialled. */
int	upstream_dialing(const struct upstream *);
/* Its only hope is a dial that has taken over half the timeout. */
int	upstream_slow(const struct upstream *);
/* Dials fail and its backoff has not run out. */
int	upstream_backing_off(const struct upstream *, int64_t);
/* Its bit in masks of upstreams (struct upstream is in conn.h). */
#define upstream_bit(up)	(1u << (up)->up_idx)

/*
 * The upstream a query goes to: of the n not in `avoid` that may take
 * one now, the first answering well, then those not tried yet, then the
 * demoted, then those whose dials fail; among equals the one with a
 * clearly lower smoothed round-trip time, else the first given.  nwait
 * queries wait for a connection.  NULL: none.
 */
struct upstream *upstream_pick(struct upstream *, int, uint32_t, int,
	    int64_t);
/*
 * Now and then, instead of best, an upstream in good standing whose
 * round-trip time is old, so that one that got faster is found.
 */
struct upstream *upstream_explore(struct upstream *, int, struct upstream *,
	    int64_t);
/* A free slot, and those being dialled will not hold all nwait waiting. */
int	upstream_need_dial(struct upstream *, int);
/* An idle slot, no dial under way, and no backoff to wait out. */
int	upstream_may_dial(struct upstream *, int64_t);
/* Dials an idle slot; -1 when it failed at once and it backs off. */
int	upstream_dial(struct upstream *, int64_t);
/* A dial or handshake failed: back off, doubling, with jitter. */
void	upstream_failed(struct upstream *, const char *, int64_t);
/* A connection came up: dials succeed again. */
void	upstream_reachable(struct upstream *);
/* The upstreams whose idle connections upstream_keep_warm keeps. */
void	upstream_warm_setup(struct ev_loop *, const struct config *,
	    struct upstream *, int, int64_t);
void	upstream_warm_stop(void);
/* A client asked, answered from the cache or not: --prewarm stays warm. */
void	upstream_active(int64_t);
/* A second copy was sent: with one upstream, its connection stays warm. */
void	upstream_hedged(int64_t);
/* --prewarm: one connection open while clients ask, redialled as needed. */
void	upstream_prewarm(struct upstream *, int64_t);
/* Whether an idle connection past its timeout stays open. */
int	upstream_keep_warm(const struct conn *, int64_t);
/* Its path changed: backoff, what was learnt and the ticket go. */
void	upstream_forget(struct upstream *);
/* The local address of slot `slot`'s connection; -1 when none. */
int	upstream_local(const struct upstream *, int, union sockaddr_any *);

#endif /* UPSTREAM_H */

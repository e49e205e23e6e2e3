/*
 * health.c: how the pool judges an upstream from what became of the
 * attempts it sent there: round-trip times, the attempt timeout, and
 * demotion with probes.  Pure functions of the upstream and `now`.
 */
#ifndef HEALTH_H
#define HEALTH_H

#include <stddef.h>
#include <stdint.h>

struct att;
struct upstream;

/*
 * Its place in the order of choice, lower first: answering well (0), not
 * tried yet (1), demoted (2), unreachable: its dials fail (3).
 */
int	health_rank(const struct upstream *, int unreachable);
/* How long an attempt sent there now may go unanswered, in ms. */
int64_t	health_attempt_ms(const struct upstream *, int64_t deadline,
	    int64_t now);
/* Later than its answers come (srtt + 4 x rttvar), in ms. */
int64_t	health_late_ms(const struct upstream *);
/* A connection's TCP round trip once it is up, in us (<= 0: none). */
void	health_path_rtt(struct upstream *, int64_t);
/* Attempt a was answered at `now`: its round trip, unless Karn rules it out. */
void	health_rtt(struct upstream *, const struct att *, int64_t);
/*
 * Counts an answer's RCODE; returns 1, having demoted the upstream, for
 * one that means it failed the query (REFUSED, SERVFAIL, NOTIMP,
 * FORMERR), else 0, and an answer to an attempt sent since it was
 * demoted brings it back.
 */
int	health_rcode_failed(struct upstream *, const struct att *, int,
	    int64_t);
/* A failure of attempt a (NULL: of the connection): demotes it. */
void	health_failed(struct upstream *, const struct att *, const char *,
	    int64_t);
/*
 * Attempt a had no answer in time, on a connection that lost packets
 * (lossy) or not: demotes the upstream unless it answered anything
 * since a was sent.
 */
void	health_timed_out(struct upstream *, const struct att *, int lossy,
	    int64_t);
/* Demoted and due a probe: a copy of the next query goes there. */
int	health_probe_due(const struct upstream *, int64_t);
void	health_probed(struct upstream *, int64_t);
/* Forgets all it learnt: the path to it changed. */
void	health_reset(struct upstream *);
/* The upstream in use (NULL: none) for the service's status. */
void	health_status(const struct upstream *, char *, size_t);
/* One line for SIGUSR1. */
void	health_log(const struct upstream *, int64_t);

#endif /* HEALTH_H */

/*
 * dnsfwd: plain DNS in front, a small pool of DNS-over-TLS connections
 * behind.  What every module shares: the version and the counters
 * SIGUSR1 reports.  Each module's interface is in its own header.
 */
#ifndef DNSFWD_H
#define DNSFWD_H

#include <stdint.h>

#define DNSFWD_VERSION	"0.1.0"

/* Process-wide counters, reported on SIGUSR1; dnsfwd.c owns them. */
struct stats {
	uint64_t	st_queries;	/* well-formed client queries */
	uint64_t	st_answers;	/* answers delivered, cached or not */
	uint64_t	st_servfails;	/* SERVFAILs we made ourselves */
	uint64_t	st_drops;	/* client input that is not a query */
	uint64_t	st_formerr;	/* queries answered FORMERR */
	uint64_t	st_notimp;	/* opcodes other than QUERY */
	uint64_t	st_badvers;	/* EDNS versions other than 0 */
	uint64_t	st_bad_replies;	/* upstream replies that matched nothing */
	uint64_t	st_reconnects;	/* upstream connections opened */
	uint64_t	st_tls_full;	/* full TLS handshakes */
	uint64_t	st_tls_resumed;	/* resumed TLS handshakes */
	uint64_t	st_overload;	/* queries refused: pending table full */
	uint64_t	st_tcp_aborts;	/* TCP clients cut off for not reading */
	uint64_t	st_refused;	/* queries from clients not allowed */
	uint64_t	st_cache_hits;
	uint64_t	st_cache_misses;
	uint64_t	st_cache_evictions;	/* live entries pushed out */
	uint64_t	st_stale;	/* answers served stale (RFC 8767) */
	uint64_t	st_prefetches;	/* background refreshes started */
	uint64_t	st_hedges;	/* second copies after an attempt timeout */
	uint64_t	st_hedges_won;	/* of them, answered first */
	uint64_t	st_hedges_unpaid;	/* not sent: over the budget */
};
extern struct stats stats;

#endif /* DNSFWD_H */

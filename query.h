/*
 * query.c: the life of a client query, from the bytes a listener read to
 * the answer it delivers (cache, joining flights, deadlines, the EDNS
 * boundary).  The listeners call in; answers go back through the
 * callback given to query_init.
 */
#ifndef QUERY_H
#define QUERY_H

#include <sys/socket.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

struct config;
struct dns_qinfo;
struct ev_loop;

/*
 * Who asked a query, by value: the reply path looks a TCP client up by
 * slot and generation, so a client that went away only loses its answer.
 * A UDP query to a wildcard listener also keeps the address it was sent
 * to, so that the answer comes from that address.
 */
enum client_kind { CLIENT_UDP, CLIENT_TCP };
struct client_ref {
	uint8_t		cr_kind;
	uint8_t		cr_has_local;	/* UDP: cr_local is set */
	uint16_t	cr_listener;	/* UDP: index of the listening socket */
	uint32_t	cr_slot;	/* TCP: client slot */
	uint32_t	cr_gen;		/* TCP: generation of that slot */
	uint32_t	cr_ifindex;	/* UDP: interface it arrived on */
	struct in6_addr	cr_local;	/* UDP: where it was sent (v4: first 4) */
	union sockaddr_any cr_addr;	/* UDP: where the query came from */
	socklen_t	cr_addrlen;
};

/*
 * Hands a finished answer (carrying the client's ID) to the client that
 * asked; msg may be modified.  Called exactly once for every query that
 * query_ask accepted, unless the daemon is shutting down.
 */
typedef void query_deliver_fn(const struct client_ref *, uint8_t *, size_t,
	    const struct dns_qinfo *);
/*
 * loop may be NULL (unit tests): then query_tick is called by hand.  Its
 * pools are sized from the upstream pool's capacity for this config.
 */
void	query_init(struct ev_loop *, const struct config *, query_deliver_fn *);
/*
 * Takes a client message read at `now`.  Returns 0 when an answer will be
 * delivered (it may already have been), -1 when it was dropped.
 */
int	query_ask(const struct client_ref *, const uint8_t *, size_t, int64_t);
/* Runs the deadlines and stale timers due; returns the next due, or 0. */
int64_t	query_tick(int64_t);
int	query_pending(void);
void	query_shutdown(void);

#endif /* QUERY_H */

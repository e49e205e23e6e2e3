/*
 * listen.c: the UDP and TCP listeners, the clients' side of dnsfwd.
 * Queries go to query.c; answers come back through listen_deliver.
 */
#ifndef LISTEN_H
#define LISTEN_H

#include <stddef.h>
#include <stdint.h>

struct client_ref;
struct config;
struct dns_qinfo;
struct ev_loop;

void	listen_init(struct ev_loop *, const struct config *);
/* Stops taking new queries; answers still go out. */
void	listen_stop(void);
void	listen_free(void);
/* Hands an answer to the client that asked; msg may be modified. */
void	listen_deliver(const struct client_ref *, uint8_t *, size_t,
	    const struct dns_qinfo *);

#endif /* LISTEN_H */

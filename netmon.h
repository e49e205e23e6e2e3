/*
 * netmon.c: watches the kernel's routes and addresses (rtnetlink) and
 * tells the upstream pool which upstreams' paths changed.
 */
#ifndef NETMON_H
#define NETMON_H

struct config;
struct ev_loop;

void	netmon_init(struct ev_loop *, const struct config *);
void	netmon_free(void);

#endif /* NETMON_H */

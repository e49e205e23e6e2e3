/*
 * Watches the network through rtnetlink (links, IPv4 and IPv6 addresses
 * and routes), so that a Wi-Fi change, a VPN coming up or an address
 * going away is acted on at once, not at the next query's deadline on a
 * connection that can no longer work.
 *
 * Events come in bursts and many change nothing that matters (address
 * lifetimes refreshed by router advertisements), so they are gathered
 * for NETMON_DEBOUNCE_MS, and then what matters is compared with what it
 * was: the addresses configured, and the route to each upstream (output
 * link, gateway, preferred source).  Only a real change reaches the mux.
 */
#include <sys/socket.h>
#include <sys/time.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <netinet/in.h>

#include <errno.h>
#include <ifaddrs.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <ev.h>

#include "log.h"
#include "mux.h"
#include "netmon.h"
#include "options.h"
#include "util.h"

/* Events within this many ms of each other are one change. */
#define NETMON_DEBOUNCE_MS	250
/* Room for a route reply and a batch of events. */
#define NL_BUFLEN		8192

static struct {
	struct ev_loop	*loop;
	const struct config *cf;
	int		 fd;		/* subscribed to the groups */
	int		 qfd;		/* asks for routes */
	uint32_t	 seq;
	ev_io		 io;
	ev_timer	 debounce;
	uint32_t	 addrs;		/* fingerprint of the addresses */
	uint32_t	 routes[UPSTREAMS_MAX];
} nm;

static void	 netmon_read_cb(struct ev_loop *, ev_io *, int);
static void	 netmon_settle_cb(struct ev_loop *, ev_timer *, int);
static uint32_t	 addrs_print(void);
static uint32_t	 route_print(const union sockaddr_any *);
static uint32_t	 route_parse(const uint8_t *, ssize_t);
static uint32_t	 hash_bytes(uint32_t, const void *, size_t);

void
netmon_init(struct ev_loop *loop, const struct config *cf)
{
	struct sockaddr_nl	 snl;
	struct timeval		 tv = { .tv_sec = 0, .tv_usec = 200000 };
	int			 i;

	nm.loop = loop;
	nm.cf = cf;
	nm.fd = socket(AF_NETLINK, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC,
	    NETLINK_ROUTE);
	nm.qfd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
	memset(&snl, 0, sizeof(snl));
	snl.nl_family = AF_NETLINK;
	snl.nl_groups = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR |
	    RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE;
	if (nm.fd == -1 || nm.qfd == -1 ||
	    bind(nm.fd, (struct sockaddr *)&snl, sizeof(snl)) == -1 ||
	    setsockopt(nm.qfd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) == -1) {
		/* Not fatal: deadlines still catch a dead connection. */
		log_warn("rtnetlink: network changes will not be noticed");
		netmon_free();
		return;
	}
	nm.addrs = addrs_print();
	for (i = 0; i < cf->cf_nup; i++)
		nm.routes[i] = route_print(&cf->cf_up[i].uc_addr);
	ev_io_init(&nm.io, netmon_read_cb, nm.fd, EV_READ);
	ev_io_start(loop, &nm.io);
	ev_unref(loop);		/* watching keeps nothing alive */
	ev_init(&nm.debounce, netmon_settle_cb);
}

void
netmon_free(void)
{
	if (nm.loop != NULL && ev_is_active(&nm.io)) {
		ev_ref(nm.loop);
		ev_io_stop(nm.loop, &nm.io);
	}
	if (nm.loop != NULL)
		ev_timer_stop(nm.loop, &nm.debounce);
	if (nm.fd != -1)
		close(nm.fd);
	if (nm.qfd != -1)
		close(nm.qfd);
	nm.fd = nm.qfd = -1;
}

/* Any link, address or route event: look again once the burst is over. */
static void
netmon_read_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	uint8_t	 buf[NL_BUFLEN];
	ssize_t	 n;
	int	 seen = 0;

	(void)revents;
	while ((n = recv(w->fd, buf, sizeof(buf), MSG_DONTWAIT)) > 0)
		seen = 1;
	/* ENOBUFS: we missed events, which is itself a reason to look. */
	if (n == -1 && errno == ENOBUFS)
		seen = 1;
	if (!seen)
		return;
	nm.debounce.repeat = NETMON_DEBOUNCE_MS / 1000.0;
	ev_timer_again(loop, &nm.debounce);
}

static void
netmon_settle_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	uint32_t	 a, r, moved = 0;
	int		 i;

	(void)loop;
	(void)revents;
	ev_timer_stop(loop, w);
	a = addrs_print();
	for (i = 0; i < nm.cf->cf_nup; i++) {
		r = route_print(&nm.cf->cf_up[i].uc_addr);
		if (r != nm.routes[i])
			moved |= 1u << i;
		nm.routes[i] = r;
	}
	/* New or lost addresses may move any path, and are a new network. */
	if (a != nm.addrs)
		moved = (1u << nm.cf->cf_nup) - 1;
	nm.addrs = a;
	if (moved != 0)
		mux_netchange(moved, now_ms());
}

/*
 * The addresses of links that are up, order aside: each entry's hash is
 * summed, since the kernel's dump order is not a change.
 */
static uint32_t
addrs_print(void)
{
	struct ifaddrs	*ifa, *p;
	uint32_t	 sum = 0, h;
	size_t		 len;

	if (getifaddrs(&ifa) == -1)
		return nm.addrs;
	for (p = ifa; p != NULL; p = p->ifa_next) {
		if (p->ifa_addr == NULL || !(p->ifa_flags & IFF_UP) ||
		    (p->ifa_addr->sa_family != AF_INET &&
		    p->ifa_addr->sa_family != AF_INET6))
			continue;
		len = p->ifa_addr->sa_family == AF_INET6 ?
		    sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
		h = hash_bytes(2166136261u, p->ifa_name, strlen(p->ifa_name));
		h = hash_bytes(h, p->ifa_addr, len);
		if (p->ifa_netmask != NULL)
			h = hash_bytes(h, p->ifa_netmask, len);
		sum += h;
	}
	freeifaddrs(ifa);
	return sum;
}

/* "ip route get": the link, gateway and source the kernel would use now. */
static uint32_t
route_print(const union sockaddr_any *to)
{
	struct {
		struct nlmsghdr	 nh;
		struct rtmsg	 rt;
		uint8_t		 attr[RTA_SPACE(16)];
	} req;
	uint8_t		 buf[NL_BUFLEN];
	struct rtattr	*ra;
	size_t		 alen;
	ssize_t		 n;
	int		 v6 = to->sa.sa_family == AF_INET6;

	alen = v6 ? 16 : 4;
	memset(&req, 0, sizeof(req));
	req.nh.nlmsg_len = NLMSG_LENGTH(sizeof(req.rt)) + RTA_SPACE(alen);
	req.nh.nlmsg_type = RTM_GETROUTE;
	req.nh.nlmsg_flags = NLM_F_REQUEST;
	req.nh.nlmsg_seq = ++nm.seq;
	req.rt.rtm_family = (uint8_t)to->sa.sa_family;
	req.rt.rtm_dst_len = (uint8_t)(alen * 8);
	ra = (struct rtattr *)req.attr;
	ra->rta_type = RTA_DST;
	ra->rta_len = (unsigned short)RTA_LENGTH(alen);
	memcpy(RTA_DATA(ra), v6 ? (const void *)&to->sin6.sin6_addr :
	    (const void *)&to->sin.sin_addr, alen);
	if (send(nm.qfd, &req, req.nh.nlmsg_len, 0) == -1)
		return 0;
	/* Unreachable is an answer too: an error message hashes as such. */
	while ((n = recv(nm.qfd, buf, sizeof(buf), 0)) > 0)
		if (((struct nlmsghdr *)buf)->nlmsg_seq == nm.seq)
			return route_parse(buf, n);
	return 0;
}

static uint32_t
route_parse(const uint8_t *buf, ssize_t n)
{
	const struct nlmsghdr *nh = (const struct nlmsghdr *)buf;
	const struct rtattr *ra;
	uint32_t	 h = 2166136261u;
	int		 len;

	if (!NLMSG_OK(nh, (unsigned int)n) || nh->nlmsg_type != RTM_NEWROUTE)
		return hash_bytes(h, &nh->nlmsg_type, sizeof(nh->nlmsg_type));
	ra = RTM_RTA((const struct rtmsg *)NLMSG_DATA(nh));
	len = (int)RTM_PAYLOAD(nh);
	for (; RTA_OK(ra, len); ra = RTA_NEXT(ra, len))
		if (ra->rta_type == RTA_OIF || ra->rta_type == RTA_GATEWAY ||
		    ra->rta_type == RTA_PREFSRC) {
			h = hash_bytes(h, &ra->rta_type, sizeof(ra->rta_type));
			h = hash_bytes(h, RTA_DATA(ra), RTA_PAYLOAD(ra));
		}
	return h;
}

static uint32_t
hash_bytes(uint32_t h, const void *p, size_t len)
{
	const uint8_t	*b = p;
	size_t		 i;

	for (i = 0; i < len; i++)
		h = (h ^ b[i]) * 16777619u;
	return h;
}

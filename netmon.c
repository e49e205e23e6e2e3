/*
 * Watches the network through rtnetlink (links, IPv4 and IPv6 addresses
 * and routes), so that a Wi-Fi change, a VPN taking over the default
 * route or an address going away is acted on at once, not at the next
 * query's deadline on a connection that can no longer work.
 *
 * Most events move no upstream's path: `docker run` brings up a veth
 * with an address, a VPN adds routes to its own networks, router
 * advertisements refresh lifetimes.  Replacing connections for those
 * would cost a handshake and the session ticket several times a minute,
 * so an upstream counts as moved only when the kernel's route to it
 * (output link, gateway, preferred source) differs from the last one
 * seen, or when the local address one of its connections uses is gone.
 *
 * Events come in bursts, so they are gathered for NETMON_DEBOUNCE_MS of
 * quiet, but never for more than NETMON_MAX_DELAY_MS after the first, or
 * a steady stream of events would postpone the check for ever.  The
 * check itself is a round of requests on a non-blocking socket (a route
 * lookup per upstream and a dump of the addresses), whose replies are
 * read as they come: the event loop never waits for the kernel.  A reply
 * that does not come within NETMON_LOOKUP_MS is unknown, not a change.
 */
#include <sys/socket.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <netinet/in.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ev.h>

#include "log.h"
#include "mux.h"
#include "netmon.h"
#include "options.h"
#include "util.h"

/* Events within this many ms of each other are one change... */
#define NETMON_DEBOUNCE_MS	250
/* ...but a change is looked at this long after its first event at most. */
#define NETMON_MAX_DELAY_MS	1000
/* The kernel answers in microseconds; silence this long means lost. */
#define NETMON_LOOKUP_MS	500
/*
 * Room for a batch of events or replies; the kernel cuts a dump into
 * parts no larger than the buffer we read it with.
 */
#define NL_BUFLEN		8192

/* The kernel's answer to "ip route get UPSTREAM". */
struct route {
	int		 rt_known;	/* answered, with a route or an error */
	int		 rt_error;	/* no route: the errno it gave */
	uint8_t		 rt_type;	/* RTN_UNICAST, RTN_LOCAL, ... */
	uint32_t	 rt_oif;
	uint8_t		 rt_gw[16];
	uint8_t		 rt_src[16];
};

/* A connection's local address, looked for among the machine's. */
struct local {
	int		 lc_up;
	int		 lc_family;
	uint8_t		 lc_addr[16];
	int		 lc_found;
};

/*
 * Lives from netmon_init to netmon_free.  A round is the check after a
 * burst: requests sent at once with sequence numbers seq0 (upstream 0)
 * to seq0 + nup (the address dump), replies matched on them.
 */
static struct {
	struct ev_loop	*loop;
	const struct config *cf;
	int		 fd;		/* subscribed to the groups */
	int		 qfd;		/* asks for routes and addresses */
	ev_io		 io;		/* events on fd */
	ev_io		 qio;		/* replies on qfd */
	ev_timer	 settle;	/* end of the burst: start a round */
	ev_timer	 lookup;	/* end of the round's patience */
	int64_t		 burst_at;	/* first event not looked at, or 0 */
	int		 busy;		/* a round is under way */
	int		 again;		/* a burst ended during it */
	uint32_t	 seq;		/* last sequence number used */
	uint32_t	 seq0;
	int		 waiting;	/* replies the round still needs */
	int		 addrs_done;	/* the dump came whole */
	struct route	 routes[UPSTREAMS_MAX];	/* as last known */
	struct route	 fresh[UPSTREAMS_MAX];	/* this round's */
	struct local	*locals;
	int		 nlocal;
	int		 maxlocal;
	uint8_t		 buf[NL_BUFLEN];
} nm = { .fd = -1, .qfd = -1 };

static int	 nl_open(uint32_t);
static void	 netmon_event_cb(struct ev_loop *, ev_io *, int);
static void	 netmon_settle_cb(struct ev_loop *, ev_timer *, int);
static void	 netmon_reply_cb(struct ev_loop *, ev_io *, int);
static void	 netmon_lookup_cb(struct ev_loop *, ev_timer *, int);
static void	 round_start(int64_t);
static void	 round_end(int64_t);
static void	 round_reply(const struct nlmsghdr *, int64_t);
static int	 ask_route(int, uint32_t);
static int	 ask_addrs(uint32_t);
static void	 locals_collect(void);
static void	 locals_mark(const struct nlmsghdr *);
static void	 route_parse(const struct nlmsghdr *, struct route *);
static int	 route_same(const struct route *, const struct route *);
static size_t	 addr_len(int);

void
netmon_init(struct ev_loop *loop, const struct config *cf)
{
	nm.loop = loop;
	nm.cf = cf;
	nm.maxlocal = cf->cf_nup * cf->cf_connections;
	nm.locals = xcalloc((size_t)nm.maxlocal, sizeof(*nm.locals));
	nm.fd = nl_open(RTMGRP_LINK | RTMGRP_IPV4_IFADDR |
	    RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE);
	nm.qfd = nl_open(0);
	if (nm.fd == -1 || nm.qfd == -1) {
		/* Not fatal: deadlines still catch a dead connection. */
		log_warn("rtnetlink: network changes will not be noticed");
		netmon_free();
		return;
	}
	/* Watching keeps nothing alive. */
	ev_io_init(&nm.io, netmon_event_cb, nm.fd, EV_READ);
	ev_io_start(loop, &nm.io);
	ev_unref(loop);
	ev_io_init(&nm.qio, netmon_reply_cb, nm.qfd, EV_READ);
	ev_io_start(loop, &nm.qio);
	ev_unref(loop);
	timer_init(&nm.settle, netmon_settle_cb);
	timer_init(&nm.lookup, netmon_lookup_cb);
	/* The first round learns the routes that later ones compare with. */
	round_start(now_ms());
}

void
netmon_free(void)
{
	if (nm.loop != NULL && ev_is_active(&nm.io)) {
		ev_ref(nm.loop);
		ev_io_stop(nm.loop, &nm.io);
	}
	if (nm.loop != NULL && ev_is_active(&nm.qio)) {
		ev_ref(nm.loop);
		ev_io_stop(nm.loop, &nm.qio);
	}
	if (nm.loop != NULL) {
		ev_timer_stop(nm.loop, &nm.settle);
		ev_timer_stop(nm.loop, &nm.lookup);
	}
	if (nm.fd != -1)
		close(nm.fd);
	if (nm.qfd != -1)
		close(nm.qfd);
	nm.fd = nm.qfd = -1;
	free(nm.locals);
	nm.locals = NULL;
	nm.busy = 0;
}

static int
nl_open(uint32_t groups)
{
	struct sockaddr_nl	 snl;
	int			 fd;

	fd = socket(AF_NETLINK, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC,
	    NETLINK_ROUTE);
	if (fd == -1)
		return -1;
	memset(&snl, 0, sizeof(snl));
	snl.nl_family = AF_NETLINK;
	snl.nl_groups = groups;
	if (bind(fd, (struct sockaddr *)&snl, sizeof(snl)) == -1) {
		close(fd);
		return -1;
	}
	return fd;
}

/*
 * Any link, address or route event: look once the burst is quiet, or
 * NETMON_MAX_DELAY_MS after its first event, whichever comes first.
 */
static void
netmon_event_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	int64_t	 now, due;
	ssize_t	 n;
	int	 seen = 0;

	(void)revents;
	while ((n = recv(w->fd, nm.buf, sizeof(nm.buf), MSG_DONTWAIT)) > 0)
		seen = 1;
	/* ENOBUFS: we missed events, which is itself a reason to look. */
	if (n == -1 && errno == ENOBUFS)
		seen = 1;
	if (!seen)
		return;
	now = now_ms();
	if (nm.burst_at == 0)
		nm.burst_at = now;
	due = now + NETMON_DEBOUNCE_MS;
	if (due > nm.burst_at + NETMON_MAX_DELAY_MS)
		due = nm.burst_at + NETMON_MAX_DELAY_MS;
	timer_arm(loop, &nm.settle, due, now);
}

static void
netmon_settle_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)revents;
	ev_timer_stop(loop, w);
	nm.burst_at = 0;
	/* Replies to come may predate the burst's last events: look again. */
	if (nm.busy)
		nm.again = 1;
	else
		round_start(now_ms());
}

/*
 * Sends the round's requests.  One that cannot be sent is unknown at
 * once; the connections' local addresses are taken now, so that the dump
 * tells whether each is still there.
 */
static void
round_start(int64_t now)
{
	int	 i, nup = nm.cf->cf_nup;

	nm.busy = 1;
	nm.again = 0;
	nm.waiting = 0;
	nm.addrs_done = 0;
	nm.seq0 = nm.seq + 1;
	nm.seq += (uint32_t)nup + 1;
	for (i = 0; i < nup; i++) {
		memset(&nm.fresh[i], 0, sizeof(nm.fresh[i]));
		if (ask_route(i, nm.seq0 + (uint32_t)i) == 0)
			nm.waiting++;
	}
	locals_collect();
	if (nm.nlocal > 0 && ask_addrs(nm.seq0 + (uint32_t)nup) == 0)
		nm.waiting++;
	if (nm.waiting == 0) {
		round_end(now);
		return;
	}
	timer_arm(nm.loop, &nm.lookup, now + NETMON_LOOKUP_MS, now);
}

static void
netmon_lookup_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)w;
	(void)revents;
	log_debug("rtnetlink: %d replies missing; taken as no change",
	    nm.waiting);
	round_end(now_ms());
}

/*
 * An upstream moved when its route is known now and was known before and
 * differs, or when a connection's address is missing from a whole dump.
 */
static void
round_end(int64_t now)
{
	uint32_t	 moved = 0;
	int		 i;

	ev_timer_stop(nm.loop, &nm.lookup);
	nm.busy = 0;
	for (i = 0; i < nm.cf->cf_nup; i++) {
		if (!nm.fresh[i].rt_known)
			continue;
		if (nm.routes[i].rt_known &&
		    !route_same(&nm.routes[i], &nm.fresh[i]))
			moved |= 1u << i;
		nm.routes[i] = nm.fresh[i];
	}
	for (i = 0; nm.addrs_done && i < nm.nlocal; i++)
		if (!nm.locals[i].lc_found)
			moved |= 1u << nm.locals[i].lc_up;
	log_debug("rtnetlink: checked, moved upstreams 0x%x", moved);
	if (moved != 0)
		mux_netchange(moved, now);
	if (nm.again)
		round_start(now);
}

static void
netmon_reply_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	const struct nlmsghdr	*nh;
	int64_t			 now = now_ms();
	ssize_t			 n;
	int			 len;

	(void)loop;
	(void)revents;
	while ((n = recv(w->fd, nm.buf, sizeof(nm.buf), MSG_DONTWAIT)) > 0) {
		nh = (const struct nlmsghdr *)nm.buf;
		len = (int)n;
		for (; NLMSG_OK(nh, (unsigned int)len);
		    nh = NLMSG_NEXT(nh, len))
			if (nm.busy)
				round_reply(nh, now);
	}
}

/* One message for the round under way; others are from an older one. */
static void
round_reply(const struct nlmsghdr *nh, int64_t now)
{
	uint32_t	 i = nh->nlmsg_seq - nm.seq0;
	uint32_t	 nup = (uint32_t)nm.cf->cf_nup;

	if (i > nup)
		return;
	if (i < nup) {
		if (nm.fresh[i].rt_known)
			return;
		route_parse(nh, &nm.fresh[i]);
	} else if (nh->nlmsg_type == RTM_NEWADDR) {
		locals_mark(nh);
		return;
	} else if (nh->nlmsg_type == NLMSG_DONE) {
		nm.addrs_done = 1;
	} else if (nh->nlmsg_type != NLMSG_ERROR) {
		return;
	}
	if (--nm.waiting == 0)
		round_end(now);
}

/* "ip route get": the link, gateway and source the kernel would use now. */
static int
ask_route(int up, uint32_t seq)
{
	const union sockaddr_any *to = &nm.cf->cf_up[up].uc_addr;
	struct {
		struct nlmsghdr	 nh;
		struct rtmsg	 rt;
		uint8_t		 attr[RTA_SPACE(16)];
	} req;
	struct rtattr	*ra;
	size_t		 alen = addr_len(to->sa.sa_family);

	memset(&req, 0, sizeof(req));
	req.nh.nlmsg_len = NLMSG_LENGTH(sizeof(req.rt)) + RTA_SPACE(alen);
	req.nh.nlmsg_type = RTM_GETROUTE;
	req.nh.nlmsg_flags = NLM_F_REQUEST;
	req.nh.nlmsg_seq = seq;
	req.rt.rtm_family = (uint8_t)to->sa.sa_family;
	req.rt.rtm_dst_len = (uint8_t)(alen * 8);
	ra = (struct rtattr *)req.attr;
	ra->rta_type = RTA_DST;
	ra->rta_len = (unsigned short)RTA_LENGTH(alen);
	memcpy(RTA_DATA(ra), to->sa.sa_family == AF_INET6 ?
	    (const void *)&to->sin6.sin6_addr :
	    (const void *)&to->sin.sin_addr, alen);
	return send(nm.qfd, &req, req.nh.nlmsg_len, 0) == -1 ? -1 : 0;
}

/* Every address of both families, as "ip addr" lists them. */
static int
ask_addrs(uint32_t seq)
{
	struct {
		struct nlmsghdr	 nh;
		struct ifaddrmsg ifa;
	} req;

	memset(&req, 0, sizeof(req));
	req.nh.nlmsg_len = NLMSG_LENGTH(sizeof(req.ifa));
	req.nh.nlmsg_type = RTM_GETADDR;
	req.nh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
	req.nh.nlmsg_seq = seq;
	req.ifa.ifa_family = AF_UNSPEC;
	return send(nm.qfd, &req, req.nh.nlmsg_len, 0) == -1 ? -1 : 0;
}

static void
locals_collect(void)
{
	union sockaddr_any	 sa;
	struct local		*lc;
	int			 i, j;

	nm.nlocal = 0;
	for (i = 0; i < nm.cf->cf_nup; i++)
		for (j = 0; j < nm.cf->cf_connections; j++) {
			if (nm.nlocal == nm.maxlocal ||
			    mux_conn_local(i, j, &sa) == -1 ||
			    addr_len(sa.sa.sa_family) == 0)
				continue;
			lc = &nm.locals[nm.nlocal++];
			memset(lc, 0, sizeof(*lc));
			lc->lc_up = i;
			lc->lc_family = sa.sa.sa_family;
			memcpy(lc->lc_addr, sa.sa.sa_family == AF_INET6 ?
			    (void *)&sa.sin6.sin6_addr : (void *)&sa.sin.sin_addr,
			    addr_len(sa.sa.sa_family));
		}
}

/*
 * One address of the dump.  IFA_LOCAL is this end's address where there
 * is one (IFA_ADDRESS is then the peer's), as getifaddrs(3) takes it.
 */
static void
locals_mark(const struct nlmsghdr *nh)
{
	const struct ifaddrmsg	*ifa = NLMSG_DATA(nh);
	const struct rtattr	*ra, *addr = NULL;
	size_t			 alen = addr_len(ifa->ifa_family);
	int			 len, i;

	ra = IFA_RTA(ifa);
	len = (int)IFA_PAYLOAD(nh);
	for (; RTA_OK(ra, len); ra = RTA_NEXT(ra, len))
		if (ra->rta_type == IFA_LOCAL ||
		    (ra->rta_type == IFA_ADDRESS && addr == NULL))
			addr = ra;
	if (addr == NULL || alen == 0 || RTA_PAYLOAD(addr) != alen)
		return;
	for (i = 0; i < nm.nlocal; i++)
		if (nm.locals[i].lc_family == ifa->ifa_family &&
		    memcmp(nm.locals[i].lc_addr, RTA_DATA(addr), alen) == 0)
			nm.locals[i].lc_found = 1;
}

/* Unreachable is an answer too: an error is kept as such. */
static void
route_parse(const struct nlmsghdr *nh, struct route *rt)
{
	const struct nlmsgerr	*err;
	const struct rtmsg	*rtm;
	const struct rtattr	*ra;
	int			 len;

	memset(rt, 0, sizeof(*rt));
	rt->rt_known = 1;
	if (nh->nlmsg_type == NLMSG_ERROR) {
		err = NLMSG_DATA(nh);
		rt->rt_error = nh->nlmsg_len >= NLMSG_LENGTH(sizeof(*err)) ?
		    -err->error : EINVAL;
		return;
	}
	if (nh->nlmsg_type != RTM_NEWROUTE) {
		rt->rt_error = EINVAL;
		return;
	}
	rtm = NLMSG_DATA(nh);
	rt->rt_type = rtm->rtm_type;
	ra = RTM_RTA(rtm);
	len = (int)RTM_PAYLOAD(nh);
	for (; RTA_OK(ra, len); ra = RTA_NEXT(ra, len)) {
		if (ra->rta_type == RTA_OIF && RTA_PAYLOAD(ra) == 4)
			memcpy(&rt->rt_oif, RTA_DATA(ra), 4);
		else if (ra->rta_type == RTA_GATEWAY && RTA_PAYLOAD(ra) <= 16)
			memcpy(rt->rt_gw, RTA_DATA(ra), RTA_PAYLOAD(ra));
		else if (ra->rta_type == RTA_PREFSRC && RTA_PAYLOAD(ra) <= 16)
			memcpy(rt->rt_src, RTA_DATA(ra), RTA_PAYLOAD(ra));
	}
}

static int
route_same(const struct route *a, const struct route *b)
{
	return a->rt_error == b->rt_error && a->rt_type == b->rt_type &&
	    a->rt_oif == b->rt_oif &&
	    memcmp(a->rt_gw, b->rt_gw, sizeof(a->rt_gw)) == 0 &&
	    memcmp(a->rt_src, b->rt_src, sizeof(a->rt_src)) == 0;
}

/* Bytes of an address of this family; 0 for one we do not watch. */
static size_t
addr_len(int family)
{
	if (family == AF_INET)
		return 4;
	if (family == AF_INET6)
		return 16;
	return 0;
}

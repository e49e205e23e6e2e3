/*
 * The listeners clients talk to: UDP sockets read in batches, and TCP
 * clients with their framing, limits and output buffers.  Whatever they
 * read goes to query.c; answers come back through listen_deliver, which
 * query.c was given as its callback.
 *
 * The sockets are bound here or passed by systemd (socket activation).
 * Only loopback clients and those --allow admits are served: others get
 * nothing over UDP, so we reflect nothing, and over TCP REFUSED to their
 * first query, then the connection is closed.
 *
 * UDP answers go out in one sendmmsg per listener per loop iteration,
 * never larger than EDNS_PAYLOAD.  A socket bound to a wildcard address
 * learns where each datagram was sent (IP_PKTINFO, IPV6_RECVPKTINFO) and
 * answers from that address, as a client that connected its socket
 * expects.
 */
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ev.h>

#include "dns.h"
#include "dnsfwd.h"
#include "listen.h"
#include "log.h"
#include "options.h"
#include "query.h"
#include "util.h"

/* Room for one IP_PKTINFO or IPV6_PKTINFO control message. */
#define CTL_LEN		64
/* Datagrams handled per recvmmsg/sendmmsg call. */
#define UDP_BATCH	32
/*
 * Client TCP connections served at once.  Beyond this a new client takes
 * the slot of the one that has gone longest without progress, if that is
 * TCP_CLIENT_STALE_MS (RFC 7766 6.2.3: close idle connections under
 * load); when every client made progress since, accepting waits a second.
 */
#define TCP_CLIENTS_MAX	256
#define TCP_CLIENT_STALE_MS 1000
/* Queries one TCP client may have pipelined before we stop reading it. */
#define TCP_CLIENT_PIPELINE 64
/* Replies queued for a TCP client that does not read; beyond it, close. */
#define TCP_CLIENT_OUTMAX (256 * 1024)
/*
 * Seconds a peer --allow denies has to send its query, to be told
 * REFUSED: a client that means it sends at once, and it holds a slot.
 */
#define TCP_DENIED_WAIT	2

/* A UDP listener and the replies it will send in one sendmmsg. */
struct udp_listener {
	int		 ul_fd;
	int		 ul_wild;	/* bound to 0.0.0.0 or [::] */
	ev_io		 ul_io;
	int		 ul_nout;
	struct mmsghdr	 ul_msgs[UDP_BATCH];
	struct iovec	 ul_iov[UDP_BATCH];
	union sockaddr_any ul_to[UDP_BATCH];
	uint8_t		 (*ul_buf)[EDNS_PAYLOAD];
	uint8_t		 (*ul_ctl)[CTL_LEN];
};

/*
 * A TCP client, from accept to client_close.  Its slot is reused; the
 * generation tells a late answer for a previous occupant from one for
 * the current.
 */
struct tcp_client {
	int		 tc_fd;
	uint32_t	 tc_slot;
	uint32_t	 tc_gen;
	ev_io		 tc_rio;
	ev_io		 tc_wio;
	ev_timer	 tc_idle;	/* no progress for TCP_CLIENT_IDLE */
	int64_t		 tc_progress;	/* when it last made progress, ms */
	int64_t		 tc_looked;	/* timer_stalled's, for tc_idle */
	int		 tc_pending;	/* queries given to query.c */
	int		 tc_denied;	/* not a client --allow admits */
	int		 tc_last;	/* close once the output is written */
	int		 tc_abort;	/* cut it off at the next flush */
	int		 tc_dirty;
	TAILQ_ENTRY(tcp_client) tc_dirtylink;
	size_t		 tc_inlen;
	uint8_t		 tc_in[2 * (2 + QUERY_MAX)];
	uint8_t		*tc_out;
	size_t		 tc_outoff;
	size_t		 tc_outlen;
	size_t		 tc_outcap;
	size_t		 tc_headleft;	/* of the answer being written */
};

/* The listeners' state; lives from listen_init to listen_free. */
static struct {
	const struct config *cf;
	struct ev_loop	*loop;
	struct udp_listener udp[LISTEN_MAX];
	int		 nudp;
	struct {
		struct mmsghdr	 msgs[UDP_BATCH];
		struct iovec	 iov[UDP_BATCH];
		union sockaddr_any from[UDP_BATCH];
		uint8_t		 ctl[UDP_BATCH][CTL_LEN];
		uint8_t		 bufs[UDP_BATCH][QUERY_MAX + 1];
	} rx;
	int		 tcp_fd[LISTEN_MAX];
	int		 ntcp;
	ev_io		 tcp_io[LISTEN_MAX];
	ev_timer	 accept_pause;
	struct tcp_client *clients[TCP_CLIENTS_MAX];
	uint32_t	 client_gen[TCP_CLIENTS_MAX];
	int		 nclients;
	TAILQ_HEAD(, tcp_client) client_dirty;
	ev_prepare	 flush_prep;
	int		 stopped;
} ls = { .client_dirty = TAILQ_HEAD_INITIALIZER(ls.client_dirty) };

static int	listen_on(const union sockaddr_any *, int);
static void	listen_passed(int);
static void	listen_add(int, const union sockaddr_any *, int);
static void	pktinfo_on(int, const union sockaddr_any *, const char *);
static int	is_wildcard(const union sockaddr_any *);
static int	is_loopback(const union sockaddr_any *);
static int	client_allowed(const union sockaddr_any *);
static int	prefix_match(const uint8_t *, const uint8_t *, int);
static void	tcp_refuse(struct tcp_client *, const uint8_t *, size_t);
static void	udp_read_cb(struct ev_loop *, ev_io *, int);
static void	udp_rx_init(void);
static void	udp_local(const struct msghdr *, struct client_ref *);
static void	udp_queue(struct udp_listener *, const struct client_ref *,
		    const uint8_t *, size_t);
static socklen_t udp_pktinfo(uint8_t *, const struct client_ref *);
static void	udp_flush(struct udp_listener *);
static void	udp_deliver(const struct client_ref *, const uint8_t *, size_t,
		    const struct dns_qinfo *);
static void	tcp_deliver(const struct client_ref *, const uint8_t *, size_t);
static int	tcp_append(struct tcp_client *, const uint8_t *, size_t);
static void	tcp_accept_cb(struct ev_loop *, ev_io *, int);
static void	accept_enable(int);
static void	accept_wait(void);
static struct tcp_client *client_stalest(int64_t);
static void	accept_pause_cb(struct ev_loop *, ev_timer *, int);
static void	client_open(int, const union sockaddr_any *);
static void	client_close(struct tcp_client *, const char *, int);
static void	client_read_cb(struct ev_loop *, ev_io *, int);
static void	client_frames(struct tcp_client *, int64_t);
static void	client_progress(struct tcp_client *, int64_t);
static int	client_idle_s(const struct tcp_client *);
static int	client_sent(struct tcp_client *, size_t);
static void	client_write_cb(struct ev_loop *, ev_io *, int);
static void	client_idle_cb(struct ev_loop *, ev_timer *, int);
static void	client_flush(struct tcp_client *);
static void	client_dirty_mark(struct tcp_client *);
static void	prepare_cb(struct ev_loop *, ev_prepare *, int);

void
listen_init(struct ev_loop *l, const struct config *config)
{
	int	 i;

	ls.loop = l;
	ls.cf = config;
	udp_rx_init();
	listen_passed(passed_fds(2 * LISTEN_MAX));
	for (i = 0; i < ls.cf->cf_nudp; i++)
		listen_add(listen_on(&ls.cf->cf_udp[i], SOCK_DGRAM),
		    &ls.cf->cf_udp[i], SOCK_DGRAM);
	for (i = 0; i < ls.cf->cf_ntcp; i++)
		listen_add(listen_on(&ls.cf->cf_tcp[i], SOCK_STREAM),
		    &ls.cf->cf_tcp[i], SOCK_STREAM);
	timer_init(&ls.accept_pause, accept_pause_cb);
	ev_prepare_init(&ls.flush_prep, prepare_cb);
	/* After the mux's prepare, which may answer queries it fails. */
	ev_set_priority(&ls.flush_prep, EV_MINPRI);
	ev_prepare_start(ls.loop, &ls.flush_prep);
}

/* Takes the sockets systemd bound for us, telling UDP from TCP. */
static void
listen_passed(int n)
{
	union sockaddr_any sa;
	socklen_t	 len;
	int		 fd, type;

	for (fd = LISTEN_FDS_START; fd < LISTEN_FDS_START + n; fd++) {
		len = sizeof(type);
		if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == -1)
			fatal(EXIT_SETUP, "passed descriptor %d", fd);
		len = sizeof(sa);
		if (getsockname(fd, &sa.sa, &len) == -1 ||
		    (sa.sa.sa_family != AF_INET && sa.sa.sa_family != AF_INET6))
			fatalx(EXIT_SETUP, "passed descriptor %d is not an "
			    "IP socket", fd);
		if ((type != SOCK_DGRAM && type != SOCK_STREAM) ||
		    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) == -1 ||
		    fcntl(fd, F_SETFD, FD_CLOEXEC) == -1)
			fatalx(EXIT_SETUP, "passed descriptor %d is neither a "
			    "UDP nor a TCP socket", fd);
		if (type == SOCK_DGRAM)
			pktinfo_on(fd, &sa, "passed");
		listen_add(fd, &sa, type);
	}
	/* Not for whatever we might start: nothing, but say so. */
	unsetenv("LISTEN_PID");
	unsetenv("LISTEN_FDS");
	unsetenv("LISTEN_FDNAMES");
}

static void
listen_add(int fd, const union sockaddr_any *sa, int type)
{
	struct udp_listener *ul;
	char		 a[64];

	addr_str(&sa->sa, a, sizeof(a));
	if ((type == SOCK_DGRAM ? ls.nudp : ls.ntcp) == LISTEN_MAX)
		fatalx(EXIT_SETUP, "more than %d %s listeners", LISTEN_MAX,
		    type == SOCK_DGRAM ? "udp" : "tcp");
	if (!is_loopback(sa) && ls.cf->cf_nallow == 0)
		log_warnx("listening on %s, but only loopback clients are "
		    "answered: add --allow for others", a);
	log_info("listening on %s %s", type == SOCK_STREAM ? "tcp" : "udp",
	    a);
	if (type == SOCK_STREAM) {
		ls.tcp_fd[ls.ntcp] = fd;
		ev_io_init(&ls.tcp_io[ls.ntcp], tcp_accept_cb, fd, EV_READ);
		ev_io_start(ls.loop, &ls.tcp_io[ls.ntcp++]);
		return;
	}
	ul = &ls.udp[ls.nudp++];
	ul->ul_fd = fd;
	ul->ul_wild = is_wildcard(sa);
	ul->ul_buf = xcalloc(UDP_BATCH, sizeof(*ul->ul_buf));
	ul->ul_ctl = xcalloc(UDP_BATCH, sizeof(*ul->ul_ctl));
	ev_io_init(&ul->ul_io, udp_read_cb, fd, EV_READ);
	ev_io_start(ls.loop, &ul->ul_io);
}

void
listen_stop(void)
{
	int	 i;

	ls.stopped = 1;
	for (i = 0; i < ls.nudp; i++)
		ev_io_stop(ls.loop, &ls.udp[i].ul_io);
	accept_enable(0);
	ev_timer_stop(ls.loop, &ls.accept_pause);
	for (i = 0; i < TCP_CLIENTS_MAX; i++)
		if (ls.clients[i] != NULL)
			ev_io_stop(ls.loop, &ls.clients[i]->tc_rio);
}

void
listen_free(void)
{
	int	 i;

	for (i = 0; i < TCP_CLIENTS_MAX; i++)
		if (ls.clients[i] != NULL)
			client_close(ls.clients[i], "shutting down", 0);
	for (i = 0; i < ls.nudp; i++) {
		ev_io_stop(ls.loop, &ls.udp[i].ul_io);
		close(ls.udp[i].ul_fd);
		free(ls.udp[i].ul_buf);
		free(ls.udp[i].ul_ctl);
	}
	for (i = 0; i < ls.ntcp; i++) {
		ev_io_stop(ls.loop, &ls.tcp_io[i]);
		close(ls.tcp_fd[i]);
	}
	ev_timer_stop(ls.loop, &ls.accept_pause);
	ev_prepare_stop(ls.loop, &ls.flush_prep);
}

static int
listen_on(const union sockaddr_any *sa, int type)
{
	char	 a[64];
	int	 fd, one = 1;

	addr_str(&sa->sa, a, sizeof(a));
	fd = socket(sa->sa.sa_family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd == -1)
		fatal(EXIT_SETUP, "socket for %s", a);
	if (sa->sa.sa_family == AF_INET6)
		(void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one,
		    sizeof(one));
	if (type == SOCK_STREAM)
		(void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one,
		    sizeof(one));
	else
		pktinfo_on(fd, sa, a);
	if (bind(fd, &sa->sa, sa->sa.sa_family == AF_INET6 ?
	    sizeof(sa->sin6) : sizeof(sa->sin)) == -1)
		fatal(EXIT_SETUP, "cannot bind %s %s",
		    type == SOCK_STREAM ? "tcp" : "udp", a);
	if (type == SOCK_STREAM && listen(fd, 128) == -1)
		fatal(EXIT_SETUP, "listen on tcp %s", a);
	return fd;
}

/* A wildcard UDP socket must learn where each datagram was sent. */
static void
pktinfo_on(int fd, const union sockaddr_any *sa, const char *what)
{
	int	 one = 1, v6 = sa->sa.sa_family == AF_INET6;

	if (is_wildcard(sa) && setsockopt(fd, v6 ? IPPROTO_IPV6 : IPPROTO_IP,
	    v6 ? IPV6_RECVPKTINFO : IP_PKTINFO, &one, sizeof(one)) == -1)
		fatal(EXIT_SETUP, "packet info on udp %s", what);
}

static int
is_wildcard(const union sockaddr_any *sa)
{
	if (sa->sa.sa_family == AF_INET6)
		return IN6_IS_ADDR_UNSPECIFIED(&sa->sin6.sin6_addr);
	return sa->sin.sin_addr.s_addr == htonl(INADDR_ANY);
}

/* 127.0.0.0/8, ::1, and 127.0.0.0/8 mapped into IPv6. */
static int
is_loopback(const union sockaddr_any *sa)
{
	const struct in6_addr *a6 = &sa->sin6.sin6_addr;

	if (sa->sa.sa_family == AF_INET)
		return ((const uint8_t *)&sa->sin.sin_addr)[0] == 127;
	return IN6_IS_ADDR_LOOPBACK(a6) ||
	    (IN6_IS_ADDR_V4MAPPED(a6) && a6->s6_addr[12] == 127);
}

static int
client_allowed(const union sockaddr_any *sa)
{
	const struct allow *al;
	const uint8_t	*a;
	int		 i, fam = sa->sa.sa_family;

	if (is_loopback(sa))
		return 1;
	a = fam == AF_INET ? (const uint8_t *)&sa->sin.sin_addr :
	    sa->sin6.sin6_addr.s6_addr;
	if (fam == AF_INET6 && IN6_IS_ADDR_V4MAPPED(&sa->sin6.sin6_addr)) {
		fam = AF_INET;
		a += 12;
	}
	for (i = 0; i < ls.cf->cf_nallow; i++) {
		al = &ls.cf->cf_allow[i];
		if (al->al_family == fam &&
		    prefix_match(a, al->al_addr, al->al_plen))
			return 1;
	}
	return 0;
}

static int
prefix_match(const uint8_t *a, const uint8_t *net, int plen)
{
	int	 full = plen / 8, rest = plen % 8;

	if (memcmp(a, net, (size_t)full) != 0)
		return 0;
	return rest == 0 ||
	    ((a[full] ^ net[full]) & (uint8_t)(0xff << (8 - rest))) == 0;
}

static void
udp_read_cb(struct ev_loop *l, ev_io *w, int revents)
{
	struct udp_listener	*ul = (struct udp_listener *)
				    ((char *)w - offsetof(struct udp_listener, ul_io));
	struct client_ref	 cr;
	struct msghdr		*h;
	int64_t			 now;
	int			 i, n;

	(void)l;
	(void)revents;
	n = recvmmsg(ul->ul_fd, ls.rx.msgs, UDP_BATCH, MSG_DONTWAIT, NULL);
	if (n == -1) {
		if (errno != EAGAIN && errno != EINTR)
			log_debug("udp recvmmsg: %s", strerror(errno));
		return;
	}
	now = now_ms();
	memset(&cr, 0, sizeof(cr));
	cr.cr_kind = CLIENT_UDP;
	cr.cr_listener = (uint16_t)(ul - ls.udp);
	for (i = 0; i < n; i++) {
		h = &ls.rx.msgs[i].msg_hdr;
		cr.cr_addr = ls.rx.from[i];
		cr.cr_addrlen = h->msg_namelen;
		if (ul->ul_wild)
			udp_local(h, &cr);
		/* recvmmsg shrank these to what it wrote. */
		h->msg_namelen = sizeof(ls.rx.from[i]);
		h->msg_controllen = sizeof(ls.rx.ctl[i]);
		if (!client_allowed(&cr.cr_addr)) {
			stats.st_refused++;
			continue;
		}
		(void)query_ask(&cr, ls.rx.bufs[i], ls.rx.msgs[i].msg_len, now);
	}
}

/* The receive batch shared by every UDP listener, set up once. */
static void
udp_rx_init(void)
{
	int	 i;

	for (i = 0; i < UDP_BATCH; i++) {
		ls.rx.iov[i].iov_base = ls.rx.bufs[i];
		ls.rx.iov[i].iov_len = sizeof(ls.rx.bufs[i]);
		ls.rx.msgs[i].msg_hdr.msg_iov = &ls.rx.iov[i];
		ls.rx.msgs[i].msg_hdr.msg_iovlen = 1;
		ls.rx.msgs[i].msg_hdr.msg_name = &ls.rx.from[i];
		ls.rx.msgs[i].msg_hdr.msg_namelen = sizeof(ls.rx.from[i]);
		ls.rx.msgs[i].msg_hdr.msg_control = ls.rx.ctl[i];
		ls.rx.msgs[i].msg_hdr.msg_controllen = sizeof(ls.rx.ctl[i]);
	}
}

/* Where a datagram to a wildcard listener was sent, and on which link. */
static void
udp_local(const struct msghdr *h, struct client_ref *cr)
{
	struct cmsghdr	*cm;

	cr->cr_has_local = 0;
	for (cm = CMSG_FIRSTHDR(h); cm != NULL;
	    cm = CMSG_NXTHDR((struct msghdr *)h, cm)) {
		if (cm->cmsg_level == IPPROTO_IP &&
		    cm->cmsg_type == IP_PKTINFO) {
			struct in_pktinfo pi;

			memcpy(&pi, CMSG_DATA(cm), sizeof(pi));
			memcpy(&cr->cr_local, &pi.ipi_addr, sizeof(pi.ipi_addr));
			cr->cr_ifindex = (uint32_t)pi.ipi_ifindex;
			cr->cr_has_local = 1;
		} else if (cm->cmsg_level == IPPROTO_IPV6 &&
		    cm->cmsg_type == IPV6_PKTINFO) {
			struct in6_pktinfo pi;

			memcpy(&pi, CMSG_DATA(cm), sizeof(pi));
			cr->cr_local = pi.ipi6_addr;
			cr->cr_ifindex = pi.ipi6_ifindex;
			cr->cr_has_local = 1;
		}
	}
}

/* Queues a reply, at most EDNS_PAYLOAD bytes, for the next sendmmsg. */
static void
udp_queue(struct udp_listener *ul, const struct client_ref *cr,
    const uint8_t *msg, size_t len)
{
	struct msghdr	*h;
	int		 i;

	if (ul->ul_nout == UDP_BATCH)
		udp_flush(ul);
	i = ul->ul_nout++;
	memcpy(ul->ul_buf[i], msg, len);
	ul->ul_to[i] = cr->cr_addr;
	ul->ul_iov[i].iov_base = ul->ul_buf[i];
	ul->ul_iov[i].iov_len = len;
	h = &ul->ul_msgs[i].msg_hdr;
	memset(h, 0, sizeof(*h));
	h->msg_name = &ul->ul_to[i];
	h->msg_namelen = cr->cr_addrlen;
	h->msg_iov = &ul->ul_iov[i];
	h->msg_iovlen = 1;
	if (cr->cr_has_local) {
		h->msg_control = ul->ul_ctl[i];
		h->msg_controllen = udp_pktinfo(ul->ul_ctl[i], cr);
	}
}

/* The control message that sends from the address the client asked. */
static socklen_t
udp_pktinfo(uint8_t *ctl, const struct client_ref *cr)
{
	struct msghdr	 h;
	struct cmsghdr	*cm;

	memset(ctl, 0, CTL_LEN);
	memset(&h, 0, sizeof(h));
	h.msg_control = ctl;
	h.msg_controllen = CTL_LEN;
	cm = CMSG_FIRSTHDR(&h);
	if (cr->cr_addr.sa.sa_family == AF_INET6) {
		struct in6_pktinfo pi = { .ipi6_addr = cr->cr_local,
		    .ipi6_ifindex = cr->cr_ifindex };

		cm->cmsg_level = IPPROTO_IPV6;
		cm->cmsg_type = IPV6_PKTINFO;
		cm->cmsg_len = CMSG_LEN(sizeof(pi));
		memcpy(CMSG_DATA(cm), &pi, sizeof(pi));
		return CMSG_SPACE(sizeof(pi));
	} else {
		struct in_pktinfo pi;

		memset(&pi, 0, sizeof(pi));
		memcpy(&pi.ipi_spec_dst, &cr->cr_local,
		    sizeof(pi.ipi_spec_dst));
		cm->cmsg_level = IPPROTO_IP;
		cm->cmsg_type = IP_PKTINFO;
		cm->cmsg_len = CMSG_LEN(sizeof(pi));
		memcpy(CMSG_DATA(cm), &pi, sizeof(pi));
		return CMSG_SPACE(sizeof(pi));
	}
}

static void
udp_flush(struct udp_listener *ul)
{
	int	 off = 0, n;

	while (off < ul->ul_nout) {
		n = sendmmsg(ul->ul_fd, ul->ul_msgs + off, (unsigned int)
		    (ul->ul_nout - off), MSG_DONTWAIT);
		if (n <= 0) {
			/* A full socket buffer loses these, as UDP may. */
			log_debug("udp sendmmsg: %s", strerror(errno));
			break;
		}
		off += n;
	}
	ul->ul_nout = 0;
}

void
listen_deliver(const struct client_ref *cr, uint8_t *msg, size_t len,
    const struct dns_qinfo *qi)
{
	if (cr->cr_kind == CLIENT_UDP)
		udp_deliver(cr, msg, len, qi);
	else
		tcp_deliver(cr, msg, len);
}

/*
 * Within the client's size limit and never above EDNS_PAYLOAD whatever
 * it advertised, or as TC=1 so that it retries over TCP.
 */
static void
udp_deliver(const struct client_ref *cr, const uint8_t *msg, size_t len,
    const struct dns_qinfo *qi)
{
	uint8_t		 tc[QHEAD_MAX + 64];
	size_t		 limit = 512;

	if (qi->qi_has_opt)
		limit = qi->qi_udpsize < EDNS_PAYLOAD ? qi->qi_udpsize :
		    EDNS_PAYLOAD;
	if (len > limit) {
		len = dns_truncate(tc, sizeof(tc), msg, len, qi->qi_has_opt);
		if (len == 0)
			return;
		msg = tc;
	}
	udp_queue(&ls.udp[cr->cr_listener], cr, msg, len);
}

static void
tcp_deliver(const struct client_ref *cr, const uint8_t *msg, size_t len)
{
	struct tcp_client	*c = ls.clients[cr->cr_slot];

	if (c == NULL || c->tc_gen != cr->cr_gen)
		return;		/* that client has gone */
	if (c->tc_pending-- == TCP_CLIENT_PIPELINE && !c->tc_abort &&
	    !ls.stopped)
		ev_io_start(ls.loop, &c->tc_rio);
	if (c->tc_abort)
		return;
	if (tcp_append(c, msg, len) == -1) {
		/* Closed at the next flush: we may be inside its read. */
		c->tc_abort = 1;
		ev_io_stop(ls.loop, &c->tc_rio);
	}
	client_dirty_mark(c);
}

/* Frames msg into the output, growing it up to TCP_CLIENT_OUTMAX. */
static int
tcp_append(struct tcp_client *c, const uint8_t *msg, size_t len)
{
	size_t	 need = c->tc_outlen + 2 + len, ncap;
	uint8_t	*p;

	if (need > TCP_CLIENT_OUTMAX)
		return -1;
	if (c->tc_outoff > 0 && c->tc_outoff + need > c->tc_outcap) {
		memmove(c->tc_out, c->tc_out + c->tc_outoff, c->tc_outlen);
		c->tc_outoff = 0;
	}
	if (need > c->tc_outcap) {
		ncap = c->tc_outcap * 2 > need ? c->tc_outcap * 2 : need + 512;
		if ((p = realloc(c->tc_out, ncap)) == NULL)
			return -1;
		c->tc_out = p;
		c->tc_outcap = ncap;
	}
	p = c->tc_out + c->tc_outoff + c->tc_outlen;
	dns_put16(p, (uint16_t)len);
	memcpy(p + 2, msg, len);
	c->tc_outlen = need;
	return 0;
}

static void
tcp_accept_cb(struct ev_loop *l, ev_io *w, int revents)
{
	static int64_t	 warned, warned_full;
	union sockaddr_any peer;
	socklen_t	 len = sizeof(peer);
	struct tcp_client *old = NULL;
	int		 fd;

	(void)l;
	(void)revents;
	if (ls.nclients == TCP_CLIENTS_MAX &&
	    (old = client_stalest(now_ms())) == NULL) {
		accept_wait();
		return;
	}
	fd = accept4(w->fd, &peer.sa, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
	if (fd == -1) {
		if (errno == EMFILE || errno == ENFILE) {
			/* Out of descriptors: stop spinning for a second. */
			log_ratelimited(&warned, "accept: %s", strerror(errno));
			accept_wait();
		}
		return;
	}
	if (old != NULL && !client_allowed(&peer)) {
		/* It would be refused anyway: it displaces no one. */
		close(fd);
		return;
	}
	if (old != NULL) {
		log_ratelimited(&warned_full, "%d tcp clients: closing the one "
		    "longest without progress for a new one", TCP_CLIENTS_MAX);
		client_close(old, "its slot taken by a new client",
		    old->tc_outlen > 0);
	}
	client_open(fd, &peer);
}

/*
 * The client longest without progress, if that is long enough for it to
 * go.  One waiting for answers is left to have them: each has a deadline.
 */
static struct tcp_client *
client_stalest(int64_t now)
{
	struct tcp_client	*c, *old = NULL;
	int			 i;

	for (i = 0; i < TCP_CLIENTS_MAX; i++) {
		if ((c = ls.clients[i]) == NULL || c->tc_pending > 0)
			continue;
		if (old == NULL || c->tc_progress < old->tc_progress)
			old = c;
	}
	if (old == NULL || now - old->tc_progress < TCP_CLIENT_STALE_MS)
		return NULL;
	return old;
}

static void
accept_enable(int on)
{
	int	 i;

	for (i = 0; i < ls.ntcp; i++) {
		if (on && !ls.stopped)
			ev_io_start(ls.loop, &ls.tcp_io[i]);
		else
			ev_io_stop(ls.loop, &ls.tcp_io[i]);
	}
}

/* Stops accepting for a second: no descriptor, or no slot to give. */
static void
accept_wait(void)
{
	accept_enable(0);
	ev_timer_set(&ls.accept_pause, 1.0, 0.0);
	ev_timer_start(ls.loop, &ls.accept_pause);
}

static void
accept_pause_cb(struct ev_loop *l, ev_timer *w, int revents)
{
	(void)l;
	(void)w;
	(void)revents;
	accept_enable(1);
}

static void
client_open(int fd, const union sockaddr_any *peer)
{
	struct tcp_client	*c;
	int			 i, one = 1;

	for (i = 0; i < TCP_CLIENTS_MAX && ls.clients[i] != NULL; i++)
		;
	if ((c = calloc(1, sizeof(*c))) == NULL) {
		log_warn("%s", __func__);
		close(fd);
		return;
	}
	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	ls.clients[i] = c;
	c->tc_fd = fd;
	c->tc_slot = (uint32_t)i;
	c->tc_gen = ++ls.client_gen[i];
	c->tc_denied = !client_allowed(peer);
	ev_io_init(&c->tc_rio, client_read_cb, fd, EV_READ);
	ev_io_init(&c->tc_wio, client_write_cb, fd, EV_WRITE);
	timer_init(&c->tc_idle, client_idle_cb);
	c->tc_idle.repeat = client_idle_s(c);
	ev_io_start(ls.loop, &c->tc_rio);
	client_progress(c, now_ms());
	ls.nclients++;
}

/*
 * The one teardown of a TCP client; late answers find it gone.  An
 * abortive close resets the connection, so that a client that does not
 * read leaves no kernel buffers behind either.
 */
static void
client_close(struct tcp_client *c, const char *why, int abort)
{
	static const struct linger rst = { .l_onoff = 1, .l_linger = 0 };

	log_debug("tcp client %u: closed: %s", c->tc_slot, why);
	ev_io_stop(ls.loop, &c->tc_rio);
	ev_io_stop(ls.loop, &c->tc_wio);
	ev_timer_stop(ls.loop, &c->tc_idle);
	if (c->tc_dirty) {
		TAILQ_REMOVE(&ls.client_dirty, c, tc_dirtylink);
		c->tc_dirty = 0;
	}
	if (abort) {
		stats.st_tcp_aborts++;
		(void)setsockopt(c->tc_fd, SOL_SOCKET, SO_LINGER, &rst,
		    sizeof(rst));
	}
	close(c->tc_fd);
	ls.clients[c->tc_slot] = NULL;
	free(c->tc_out);
	free(c);
	/* A new client waiting for a slot is taken at once. */
	if (ls.nclients-- == TCP_CLIENTS_MAX &&
	    ev_is_active(&ls.accept_pause)) {
		ev_timer_stop(ls.loop, &ls.accept_pause);
		accept_enable(1);
	}
}

static void
client_read_cb(struct ev_loop *l, ev_io *w, int revents)
{
	struct tcp_client	*c = container_of(w, struct tcp_client, tc_rio);
	ssize_t			 n;

	(void)l;
	(void)revents;
	n = recv(c->tc_fd, c->tc_in + c->tc_inlen,
	    sizeof(c->tc_in) - c->tc_inlen, 0);
	if (n == 0 || (n == -1 && errno != EAGAIN && errno != EINTR)) {
		client_close(c, n == 0 ? "end of stream" : strerror(errno), 0);
		return;
	}
	if (n == -1)
		return;
	/* Bytes that do not finish a query are no progress. */
	c->tc_inlen += (size_t)n;
	client_frames(c, now_ms());
}

/* Hands every whole query to query.c, up to the pipeline limit. */
static void
client_frames(struct tcp_client *c, int64_t now)
{
	struct client_ref	 cr;
	size_t			 off = 0, flen;
	int			 asked = 0;

	memset(&cr, 0, sizeof(cr));
	cr.cr_kind = CLIENT_TCP;
	cr.cr_slot = c->tc_slot;
	cr.cr_gen = c->tc_gen;
	while (c->tc_inlen - off >= 2 && !c->tc_abort &&
	    c->tc_pending < TCP_CLIENT_PIPELINE) {
		flen = dns_get16(c->tc_in + off);
		if (flen > QUERY_MAX) {
			stats.st_drops++;
			client_close(c, "query too large", 0);
			return;
		}
		if (c->tc_inlen - off - 2 < flen)
			break;
		if (c->tc_denied) {
			tcp_refuse(c, c->tc_in + off + 2, flen);
			return;
		}
		c->tc_pending++;
		if (query_ask(&cr, c->tc_in + off + 2, flen, now) == -1)
			c->tc_pending--;
		off += 2 + flen;
		asked = 1;
	}
	memmove(c->tc_in, c->tc_in + off, c->tc_inlen - off);
	c->tc_inlen -= off;
	/* Asking is progress only while it is not leaving answers unread. */
	if (asked && c->tc_outlen == 0)
		client_progress(c, now);
	if (c->tc_pending >= TCP_CLIENT_PIPELINE || c->tc_abort)
		ev_io_stop(ls.loop, &c->tc_rio);
}

/*
 * A peer --allow does not admit: REFUSED to its first query, nothing
 * forwarded and nothing more read; it is closed once that is written.
 */
static void
tcp_refuse(struct tcp_client *c, const uint8_t *msg, size_t len)
{
	uint8_t		 out[QHEAD_MAX + 16];
	size_t		 n;

	stats.st_refused++;
	ev_io_stop(ls.loop, &c->tc_rio);
	if (len >= DNS_HDRLEN && !(msg[2] & F_QR) &&
	    (n = dns_error(out, sizeof(out), msg, len, RCODE_REFUSED)) > 0 &&
	    tcp_append(c, out, n) == -1)
		c->tc_abort = 1;
	c->tc_inlen = 0;
	c->tc_last = 1;
	client_dirty_mark(c);
}

static void
client_flush(struct tcp_client *c)
{
	ssize_t	 n;

	if (c->tc_abort) {
		client_close(c, "not reading its answers", 1);
		return;
	}
	while (c->tc_outlen > 0) {
		n = send(c->tc_fd, c->tc_out + c->tc_outoff, c->tc_outlen,
		    MSG_NOSIGNAL);
		if (n == -1 && (errno == EAGAIN || errno == EINTR)) {
			ev_io_start(ls.loop, &c->tc_wio);
			return;
		}
		if (n <= 0) {
			client_close(c, "write failed", 0);
			return;
		}
		if (client_sent(c, (size_t)n))
			client_progress(c, now_ms());
	}
	c->tc_outoff = 0;
	ev_io_stop(ls.loop, &c->tc_wio);
	if (c->tc_last) {
		client_close(c, "not allowed: refused", 0);
		return;
	}
	if (c->tc_inlen > 0 && !ls.stopped)
		client_frames(c, now_ms());	/* held back by the limit */
}

static void
client_write_cb(struct ev_loop *l, ev_io *w, int revents)
{
	(void)l;
	(void)revents;
	client_flush(container_of(w, struct tcp_client, tc_wio));
}

static int
client_idle_s(const struct tcp_client *c)
{
	return c->tc_denied ? TCP_DENIED_WAIT : TCP_CLIENT_IDLE;
}

/*
 * Progress is a whole query read or a whole answer written; only it
 * restarts the idle timer, so a client cannot keep its slot by sending,
 * or taking, a byte now and then.
 */
static void
client_progress(struct tcp_client *c, int64_t now)
{
	c->tc_progress = now;
	ev_timer_again(ls.loop, &c->tc_idle);
}

/* Takes n written bytes off the output; 1 if they finished an answer. */
static int
client_sent(struct tcp_client *c, size_t n)
{
	const uint8_t	*p = c->tc_out + c->tc_outoff;
	size_t		 take;
	int		 whole = 0;

	c->tc_outoff += n;
	c->tc_outlen -= n;
	while (n > 0) {
		/* The output holds whole frames: a new one's length is here. */
		if (c->tc_headleft == 0)
			c->tc_headleft = 2 + (size_t)dns_get16(p);
		take = n < c->tc_headleft ? n : c->tc_headleft;
		c->tc_headleft -= take;
		p += take;
		n -= take;
		whole |= c->tc_headleft == 0;
	}
	return whole;
}

/*
 * No progress for TCP_CLIENT_IDLE (TCP_DENIED_WAIT for a peer --allow
 * denies): with answers unwritten the client is not reading them and is
 * cut off; with queries upstream it is waited for (each has a deadline);
 * otherwise it is idle.
 */
static void
client_idle_cb(struct ev_loop *l, ev_timer *w, int revents)
{
	struct tcp_client	*c = container_of(w, struct tcp_client, tc_idle);

	(void)revents;
	/* Not while what it sent as dnsfwd was stopped lies unread. */
	if (timer_stalled(l, w, c->tc_progress + client_idle_s(c) * 1000LL,
	    now_ms(), &c->tc_looked))
		return;
	if (c->tc_outlen > 0)
		client_close(c, "not reading its answers", 1);
	else if (c->tc_pending > 0)
		ev_timer_again(ls.loop, &c->tc_idle);
	else
		client_close(c, c->tc_denied ? "not allowed: no query" : "idle",
		    0);
}

static void
client_dirty_mark(struct tcp_client *c)
{
	if (c->tc_dirty)
		return;
	c->tc_dirty = 1;
	TAILQ_INSERT_TAIL(&ls.client_dirty, c, tc_dirtylink);
}

/* Before the loop sleeps: one sendmmsg per listener, one send per client. */
static void
prepare_cb(struct ev_loop *l, ev_prepare *w, int revents)
{
	struct tcp_client	*c;
	int			 i;

	(void)l;
	(void)w;
	(void)revents;
	for (i = 0; i < ls.nudp; i++)
		if (ls.udp[i].ul_nout > 0)
			udp_flush(&ls.udp[i]);
	while ((c = TAILQ_FIRST(&ls.client_dirty)) != NULL) {
		TAILQ_REMOVE(&ls.client_dirty, c, tc_dirtylink);
		c->tc_dirty = 0;
		client_flush(c);
	}
}

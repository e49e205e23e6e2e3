/*
 * relay: the floor for a forwarder in the dnsfwd benchmark.
 *
 *	relay ADDR PORT UPADDR UPPORT
 *
 * Forwards every DNS query received on UDP ADDR:PORT to the upstream's
 * plain UDP port UPADDR:UPPORT with a fresh ID, and sends the answer back
 * to the client with its own ID, in recvmmsg/sendmmsg batches on both
 * sides.  No TLS, no TCP, no cache, no checks beyond the ID: what it costs
 * and how long its answers take is what any forwarder placed as the
 * contenders are (one core between the client and the upstream) pays
 * before doing anything of its own.  An ID whose answer never came is
 * reused after 65536 more queries.  Runs until killed.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BATCH	64
#define BUFSZ	1500

struct pending {
	struct sockaddr_in	 client;
	uint16_t		 id;
};

static struct pending	 table[65536];
static uint16_t		 next_id;
static uint8_t		 bufs[BATCH][BUFSZ];
static struct sockaddr_in peers[BATCH];
static struct mmsghdr	 in[BATCH], out[BATCH];
static struct iovec	 iov[BATCH], oiov[BATCH];

static int
open_udp(struct sockaddr_in *sin, int do_bind)
{
	int	 fd, one = 1;

	if ((fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0)) == -1)
		return -1;
	if (do_bind && (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one,
	    sizeof(one)) == -1 || bind(fd, (struct sockaddr *)sin,
	    sizeof(*sin)) == -1))
		return -1;
	if (!do_bind && connect(fd, (struct sockaddr *)sin, sizeof(*sin)) == -1)
		return -1;
	return fd;
}

static int
receive(int fd)
{
	int	 i;

	for (i = 0; i < BATCH; i++) {
		iov[i].iov_base = bufs[i];
		iov[i].iov_len = BUFSZ;
		memset(&in[i], 0, sizeof(in[i]));
		in[i].msg_hdr.msg_iov = &iov[i];
		in[i].msg_hdr.msg_iovlen = 1;
		in[i].msg_hdr.msg_name = &peers[i];
		in[i].msg_hdr.msg_namelen = sizeof(peers[i]);
	}
	return recvmmsg(fd, in, BATCH, MSG_DONTWAIT, NULL);
}

static void
queue(int m, uint8_t *buf, size_t len, struct sockaddr_in *to)
{
	oiov[m].iov_base = buf;
	oiov[m].iov_len = len;
	memset(&out[m], 0, sizeof(out[m]));
	out[m].msg_hdr.msg_iov = &oiov[m];
	out[m].msg_hdr.msg_iovlen = 1;
	out[m].msg_hdr.msg_name = to;
	out[m].msg_hdr.msg_namelen = to != NULL ? sizeof(*to) : 0;
}

/* Client queries out to the upstream under fresh IDs. */
static int
forward(int cfd, int ufd)
{
	int	 i, n, m = 0;
	uint16_t id;

	if ((n = receive(cfd)) <= 0)
		return n;
	for (i = 0; i < n; i++) {
		if (in[i].msg_len < 12)
			continue;
		id = next_id++;
		table[id].client = peers[i];
		table[id].id = (uint16_t)(bufs[i][0] << 8 | bufs[i][1]);
		bufs[i][0] = (uint8_t)(id >> 8);
		bufs[i][1] = (uint8_t)id;
		queue(m++, bufs[i], in[i].msg_len, NULL);
	}
	return m > 0 ? sendmmsg(ufd, out, (unsigned)m, 0) : 0;
}

/* Upstream answers back to their clients under the clients' IDs. */
static int
answer(int ufd, int cfd)
{
	int		 i, n, m = 0;
	struct pending	*p;

	if ((n = receive(ufd)) <= 0)
		return n;
	for (i = 0; i < n; i++) {
		if (in[i].msg_len < 12)
			continue;
		p = &table[bufs[i][0] << 8 | bufs[i][1]];
		bufs[i][0] = (uint8_t)(p->id >> 8);
		bufs[i][1] = (uint8_t)p->id;
		queue(m++, bufs[i], in[i].msg_len, &p->client);
	}
	return m > 0 ? sendmmsg(cfd, out, (unsigned)m, 0) : 0;
}

static int
parse(struct sockaddr_in *sin, const char *addr, const char *port)
{
	memset(sin, 0, sizeof(*sin));
	sin->sin_family = AF_INET;
	sin->sin_port = htons((uint16_t)atoi(port));
	return inet_pton(AF_INET, addr, &sin->sin_addr) == 1 ? 0 : -1;
}

int
main(int argc, char **argv)
{
	struct sockaddr_in	 lsin, usin;
	struct epoll_event	 ev, evs[2];
	int			 cfd, ufd, ep, i, n;

	if (argc != 5 || parse(&lsin, argv[1], argv[2]) == -1 ||
	    parse(&usin, argv[3], argv[4]) == -1) {
		fprintf(stderr, "usage: relay ADDR PORT UPADDR UPPORT\n");
		return 2;
	}
	if ((cfd = open_udp(&lsin, 1)) == -1 || (ufd = open_udp(&usin, 0)) ==
	    -1 || (ep = epoll_create1(0)) == -1) {
		perror("relay: socket");
		return 1;
	}
	ev.events = EPOLLIN;
	ev.data.fd = cfd;
	epoll_ctl(ep, EPOLL_CTL_ADD, cfd, &ev);
	ev.data.fd = ufd;
	epoll_ctl(ep, EPOLL_CTL_ADD, ufd, &ev);
	for (;;) {
		if ((n = epoll_wait(ep, evs, 2, -1)) == -1 && errno != EINTR) {
			perror("relay: epoll_wait");
			return 1;
		}
		for (i = 0; i < n; i++)
			if ((evs[i].data.fd == cfd ? forward(cfd, ufd) :
			    answer(ufd, cfd)) == -1 && errno != EAGAIN &&
			    errno != EINTR)
				perror("relay");
	}
}

/*
 * echo: the loopback ceiling for the dnsfwd benchmark.
 *
 *	echo ADDR PORT
 *
 * Answers every DNS query on UDP ADDR:PORT with one fixed A record
 * (192.0.2.1, TTL 300), reading and writing in batches with recvmmsg and
 * sendmmsg.  It parses no more than it must (the question, to drop any
 * EDNS record after it), keeps no state and never copies a packet twice:
 * nothing that answers DNS over UDP can be cheaper, so its CPU time per
 * answer is the floor the contenders are measured against.  Runs until
 * killed.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BATCH	64
#define BUFSZ	1500

/* The answer RR: pointer to the question name, A IN, TTL 300, 192.0.2.1. */
static const uint8_t answer_rr[] = {
	0xc0, 0x0c, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x01, 0x2c,
	0x00, 0x04, 192, 0, 2, 1
};

/* Turns the query in buf (len bytes) into the answer; returns its length, 0 to drop. */
static size_t
make_answer(uint8_t *buf, size_t len)
{
	size_t	 off = 12;

	if (len < 12 + 5 || (buf[2] & 0x80) != 0)
		return 0;
	if (buf[4] != 0 || buf[5] != 1)		/* QDCOUNT must be 1 */
		return 0;
	while (off < len && buf[off] != 0) {
		if ((buf[off] & 0xc0) != 0)
			return 0;
		off += 1 + buf[off];
	}
	off += 1 + 4;				/* root label, QTYPE, QCLASS */
	if (off > len || off + sizeof(answer_rr) > BUFSZ)
		return 0;
	buf[2] = 0x80 | (buf[2] & 0x79);	/* QR, keep opcode and RD */
	buf[3] = 0x80;				/* RA, NOERROR */
	buf[6] = 0, buf[7] = 1;			/* ANCOUNT 1 */
	buf[8] = buf[9] = buf[10] = buf[11] = 0;	/* no NS, no AR */
	memcpy(buf + off, answer_rr, sizeof(answer_rr));
	return off + sizeof(answer_rr);
}

int
main(int argc, char **argv)
{
	static uint8_t		 bufs[BATCH][BUFSZ];
	struct sockaddr_in	 sin, peers[BATCH];
	struct mmsghdr		 in[BATCH], out[BATCH];
	struct iovec		 iov[BATCH], oiov[BATCH];
	int			 fd, i, n, m, sent, one = 1;

	if (argc != 3) {
		fprintf(stderr, "usage: echo ADDR PORT\n");
		return 2;
	}
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = htons((uint16_t)atoi(argv[2]));
	if (inet_pton(AF_INET, argv[1], &sin.sin_addr) != 1) {
		fprintf(stderr, "echo: bad address %s\n", argv[1]);
		return 2;
	}
	if ((fd = socket(AF_INET, SOCK_DGRAM, 0)) == -1 ||
	    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == -1 ||
	    bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == -1) {
		perror("echo: socket");
		return 1;
	}
	for (;;) {
		memset(in, 0, sizeof(in));
		for (i = 0; i < BATCH; i++) {
			iov[i].iov_base = bufs[i];
			iov[i].iov_len = BUFSZ;
			in[i].msg_hdr.msg_iov = &iov[i];
			in[i].msg_hdr.msg_iovlen = 1;
			in[i].msg_hdr.msg_name = &peers[i];
			in[i].msg_hdr.msg_namelen = sizeof(peers[i]);
		}
		/* Blocks for the first datagram, then takes what is queued. */
		n = recvmmsg(fd, in, BATCH, MSG_WAITFORONE, NULL);
		if (n == -1) {
			if (errno == EINTR)
				continue;
			perror("echo: recvmmsg");
			return 1;
		}
		memset(out, 0, sizeof(out));
		for (i = 0, m = 0; i < n; i++) {
			size_t len = make_answer(bufs[i], in[i].msg_len);

			if (len == 0)
				continue;
			oiov[m].iov_base = bufs[i];
			oiov[m].iov_len = len;
			out[m].msg_hdr.msg_iov = &oiov[m];
			out[m].msg_hdr.msg_iovlen = 1;
			out[m].msg_hdr.msg_name = &peers[i];
			out[m].msg_hdr.msg_namelen = in[i].msg_hdr.msg_namelen;
			m++;
		}
		for (sent = 0; sent < m; ) {
			int r = sendmmsg(fd, out + sent, (unsigned)(m - sent), 0);

			if (r == -1) {
				if (errno == EINTR)
					continue;
				break;		/* a full buffer: drop the rest */
			}
			sent += r;
		}
	}
}

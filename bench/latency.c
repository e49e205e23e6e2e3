/*
 * latency: per-query round-trip times at a fixed query rate.
 *
 *	latency -s ADDR -p PORT [-r RATE] [-n COUNT] [-t TAG] [-z ZONE]
 *	        [-w WAIT_MS] [-o FILE]
 *
 * Sends COUNT queries (A IN, RD, no EDNS, as dnsperf sends them) for
 * unique names N-TAG.ZONE (ZONE "bench." by default) over one UDP socket,
 * query i at start + i/RATE seconds whatever the answers do (an open loop,
 * so a stalled server cannot slow the client down and hide its stall),
 * and times each answer with CLOCK_MONOTONIC.  It waits WAIT_MS (2000)
 * after the last query for stragglers; a query not answered by then is
 * lost.  Prints one JSON object: sent, received, lost, bad (answers that
 * are not NOERROR with an answer record), late (queries sent more than
 * 1 ms behind schedule: the client itself fell behind), servfail (answers
 * with rcode SERVFAIL, counted in bad too), over40ms, min, avg, p50, p90,
 * p99, p999 and max in microseconds.  With -o, writes one line per query
 * sent, in sending order, to FILE: its RTT in microseconds and its rcode,
 * or "-1 -1" when it was not answered.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int64_t
now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Writes the query for name N-TAG.ZONE with the given ID; returns its length. */
static size_t
make_query(uint8_t *buf, size_t cap, uint16_t id, long n, const char *tag,
    const char *zone)
{
	char	 name[300], *label, *save = NULL;
	size_t	 off = 12, l;

	snprintf(name, sizeof(name), "%ld-%s.%s", n, tag, zone);
	memset(buf, 0, 12);
	buf[0] = (uint8_t)(id >> 8), buf[1] = (uint8_t)id;
	buf[2] = 0x01;				/* RD */
	buf[5] = 1;				/* QDCOUNT */
	for (label = strtok_r(name, ".", &save); label != NULL;
	    label = strtok_r(NULL, ".", &save)) {
		l = strlen(label);
		if (l > 63 || off + 1 + l + 5 > cap)
			return 0;
		buf[off++] = (uint8_t)l;
		memcpy(buf + off, label, l);
		off += l;
	}
	buf[off++] = 0;
	buf[off++] = 0, buf[off++] = 1;		/* A */
	buf[off++] = 0, buf[off++] = 1;		/* IN */
	return off;
}

/* The query number in the first label of the answer's question, or -1. */
static long
answer_number(const uint8_t *buf, size_t len)
{
	char	 num[32];
	size_t	 l, i;

	if (len < 13)
		return -1;
	l = buf[12];
	if (l == 0 || l > 63 || 13 + l > len)
		return -1;
	for (i = 0; i < l && i < sizeof(num) - 1 && buf[13 + i] != '-'; i++)
		num[i] = (char)buf[13 + i];
	num[i] = '\0';
	if (i == 0 || strspn(num, "0123456789") != i)
		return -1;
	return strtol(num, NULL, 10);
}

static int
cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

	return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of the n sorted values. */
static double
pct(const int64_t *v, long n, double p)
{
	long k;

	if (n == 0)
		return 0;
	k = (long)ceil(p / 100.0 * (double)n) - 1;
	if (k < 0)
		k = 0;
	if (k >= n)
		k = n - 1;
	return (double)v[k] / 1000.0;
}

static void
usage(void)
{
	fprintf(stderr, "usage: latency -s ADDR -p PORT [-r RATE] [-n COUNT] "
	    "[-t TAG] [-z ZONE] [-w WAIT_MS] [-o FILE]\n");
	exit(2);
}

int
main(int argc, char **argv)
{
	const char		*addr = NULL, *tag = "x", *zone = "bench.";
	const char		*outfile = NULL;
	struct sockaddr_in	 sin;
	uint8_t			 buf[1500];
	int64_t			*sent_at, *rtt, *sorted, start, now, next, deadline;
	uint8_t			*rcode;
	int64_t			 interval, sum = 0;
	long			 count = 1, i = 0, received = 0, bad = 0, late = 0;
	long			 servfail = 0;
	long			 over40 = 0, k, n;
	double			 rate = 100;
	int			 fd, c, port = 0, wait_ms = 2000;

	while ((c = getopt(argc, argv, "s:p:r:n:t:z:w:o:")) != -1) {
		switch (c) {
		case 's': addr = optarg; break;
		case 'p': port = atoi(optarg); break;
		case 'r': rate = atof(optarg); break;
		case 'n': count = atol(optarg); break;
		case 't': tag = optarg; break;
		case 'z': zone = optarg; break;
		case 'w': wait_ms = atoi(optarg); break;
		case 'o': outfile = optarg; break;
		default: usage();
		}
	}
	if (addr == NULL || port <= 0 || port > 65535 || rate <= 0 ||
	    count <= 0)
		usage();
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = htons((uint16_t)port);
	if (inet_pton(AF_INET, addr, &sin.sin_addr) != 1)
		usage();
	if ((fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0)) == -1 ||
	    connect(fd, (struct sockaddr *)&sin, sizeof(sin)) == -1) {
		perror("latency: socket");
		return 1;
	}
	sent_at = calloc((size_t)count, sizeof(*sent_at));
	rtt = calloc((size_t)count, sizeof(*rtt));
	sorted = calloc((size_t)count, sizeof(*sorted));
	rcode = calloc((size_t)count, sizeof(*rcode));
	if (sent_at == NULL || rtt == NULL || sorted == NULL || rcode == NULL) {
		perror("latency: calloc");
		return 1;
	}
	interval = (int64_t)(1e9 / rate);
	start = now_ns();
	deadline = INT64_MAX;
	while (received < count) {
		now = now_ns();
		while (i < count && now >= (next = start + i * interval)) {
			size_t len = make_query(buf, sizeof(buf),
			    (uint16_t)(i & 0xffff), i, tag, zone);

			if (len == 0) {
				fprintf(stderr, "latency: name too long\n");
				return 2;
			}
			if (now - next > 1000000)
				late++;
			sent_at[i] = now_ns();
			if (send(fd, buf, len, 0) == -1 && errno != EAGAIN &&
			    errno != ECONNREFUSED)
				perror("latency: send");
			i++;
			if (i == count)
				deadline = now_ns() + (int64_t)wait_ms * 1000000;
			now = now_ns();
		}
		if (now >= deadline)
			break;
		{
			struct pollfd	 pfd = { .fd = fd, .events = POLLIN };
			struct timespec	 ts;
			int64_t		 until = i < count ?
			    start + i * interval : deadline;
			int64_t		 wait = until - now;

			if (wait < 0)
				wait = 0;
			ts.tv_sec = wait / 1000000000;
			ts.tv_nsec = wait % 1000000000;
			if (ppoll(&pfd, 1, &ts, NULL) <= 0)
				continue;
		}
		for (;;) {
			ssize_t r = recv(fd, buf, sizeof(buf), 0);
			int64_t t = now_ns();

			if (r == -1) {
				if (errno != EAGAIN && errno != EINTR &&
				    errno != ECONNREFUSED)
					perror("latency: recv");
				break;
			}
			if (r < 12 || (buf[2] & 0x80) == 0)
				continue;
			n = answer_number(buf, (size_t)r);
			if (n < 0 || n >= i || rtt[n] != 0 ||
			    ((buf[0] << 8) | buf[1]) != (n & 0xffff))
				continue;
			rtt[n] = t - sent_at[n];
			if (rtt[n] <= 0)
				rtt[n] = 1;
			rcode[n] = buf[3] & 0x0f;
			if (rcode[n] != 0 || (buf[6] | buf[7]) == 0)
				bad++;
			if (rcode[n] == 2)		/* SERVFAIL */
				servfail++;
			received++;
		}
	}
	for (k = 0, n = 0; k < i; k++) {
		if (rtt[k] == 0)
			continue;
		sorted[n++] = rtt[k];
		sum += rtt[k];
		if (rtt[k] >= 40000000)
			over40++;
	}
	qsort(sorted, (size_t)n, sizeof(*sorted), cmp_i64);
	printf("{\"sent\": %ld, \"received\": %ld, \"lost\": %ld, \"bad\": %ld, "
	    "\"late\": %ld, \"servfail\": %ld, \"over40ms\": %ld, "
	    "\"min_us\": %.1f, "
	    "\"avg_us\": %.1f, \"p50_us\": %.1f, \"p90_us\": %.1f, "
	    "\"p99_us\": %.1f, \"p999_us\": %.1f, \"max_us\": %.1f}\n",
	    i, received, i - received, bad, late, servfail, over40,
	    n ? (double)sorted[0] / 1000.0 : 0.0,
	    n ? (double)sum / (double)n / 1000.0 : 0.0,
	    pct(sorted, n, 50), pct(sorted, n, 90), pct(sorted, n, 99),
	    pct(sorted, n, 99.9), n ? (double)sorted[n - 1] / 1000.0 : 0.0);
	if (outfile != NULL) {
		FILE *f = fopen(outfile, "w");

		if (f == NULL) {
			perror(outfile);
			return 1;
		}
		for (k = 0; k < i; k++)
			if (rtt[k] != 0)
				fprintf(f, "%.1f %d\n", (double)rtt[k] / 1000.0,
				    rcode[k]);
			else
				fprintf(f, "-1 -1\n");
		fclose(f);
	}
	return 0;
}

/*
 * Small services every module uses: the clocks, randomness, address
 * formatting and timers.  Time is read here and passed down, once per
 * event.
 */
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <arpa/inet.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <ev.h>

#include "log.h"
#include "util.h"

/*
 * A timer this late was not held up by a busy pass (a few ms even under
 * load) but by dnsfwd not running at all.
 */
#define TIMER_STALL_MS	10

static int64_t	clock_ms(clockid_t);

/*
 * sd_listen_fds(3) without libsystemd: the count, when LISTEN_PID names
 * this process; sockets meant for another process are not ours.
 */
int
passed_fds(int max)
{
	const char	*pid = getenv("LISTEN_PID");
	const char	*fds = getenv("LISTEN_FDS");
	char		*ep;
	long		 n;

	if (pid == NULL || fds == NULL ||
	    strtol(pid, &ep, 10) != (long)getpid() || *ep != '\0')
		return 0;
	n = strtol(fds, &ep, 10);
	if (*ep != '\0' || n < 0 || n > max)
		return 0;
	return (int)n;
}

static int64_t
clock_ms(clockid_t id)
{
	struct timespec	 ts;

	clock_gettime(id, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t
now_ms(void)
{
	return clock_ms(CLOCK_MONOTONIC);
}

/* Runs on through a suspend, so its distance from now_ms is sleep time. */
int64_t
boottime_ms(void)
{
	return clock_ms(CLOCK_BOOTTIME);
}

void
sock_stamp_rx(int fd)
{
	int	 one = 1;

	(void)setsockopt(fd, SOL_SOCKET, SO_TIMESTAMP, &one, sizeof(one));
}

ssize_t
recv_arrived(int fd, void *buf, size_t len, int64_t *arrived)
{
	union {
		struct cmsghdr	 h;
		char		 b[CMSG_SPACE(sizeof(struct timeval))];
	}		 cbuf;
	struct iovec	 iov = { buf, len };
	struct msghdr	 m = { .msg_iov = &iov, .msg_iovlen = 1,
			    .msg_control = &cbuf, .msg_controllen = sizeof(cbuf) };
	struct cmsghdr	*h;
	struct timeval	 tv;
	ssize_t		 n;
	int64_t		 age;

	if ((n = recvmsg(fd, &m, 0)) <= 0)
		return n;
	*arrived = -1;
	for (h = CMSG_FIRSTHDR(&m); h != NULL; h = CMSG_NXTHDR(&m, h)) {
		if (h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_TIMESTAMP)
			continue;
		memcpy(&tv, CMSG_DATA(h), sizeof(tv));
		/* The stamp is wall-clock time: only its age carries over. */
		age = clock_ms(CLOCK_REALTIME) - ((int64_t)tv.tv_sec * 1000 +
		    tv.tv_usec / 1000);
		*arrived = now_ms() - (age > 0 ? age : 0);
	}
	return n;
}

void
random_bytes(void *buf, size_t len)
{
	uint8_t	*p = buf;
	ssize_t	 n;

	while (len > 0) {
		n = getrandom(p, len, 0);
		if (n == -1 && errno == EINTR)
			continue;
		if (n <= 0)
			fatal(EXIT_SETUP, "getrandom");
		p += n;
		len -= (size_t)n;
	}
}

/* Not cleared, so untouched: its pages stay free until written. */
void *
xmalloc(size_t size)
{
	void	*p = malloc(size);

	if (p == NULL)
		fatal(EXIT_SETUP, "cannot allocate %zu bytes", size);
	return p;
}

void *
xcalloc(size_t n, size_t size)
{
	void	*p = calloc(n, size);

	if (p == NULL)
		fatal(EXIT_SETUP, "cannot allocate %zu x %zu bytes", n, size);
	return p;
}

/* "1.2.3.4:53" or "[::1]:53" into buf. */
const char *
addr_str(const struct sockaddr *sa, char *buf, size_t len)
{
	char	 host[INET6_ADDRSTRLEN];

	if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const void *)sa;

		inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof(host));
		snprintf(buf, len, "[%s]:%u", host, ntohs(s6->sin6_port));
	} else {
		const struct sockaddr_in *s4 = (const void *)sa;

		inet_ntop(AF_INET, &s4->sin_addr, host, sizeof(host));
		snprintf(buf, len, "%s:%u", host, ntohs(s4->sin_port));
	}
	return buf;
}

void
timer_init(ev_timer *t, void (*cb)(struct ev_loop *, ev_timer *, int))
{
	ev_init(t, cb);
	ev_set_priority(t, TIMER_PRI);
}

int
timer_stalled(struct ev_loop *loop, ev_timer *t, int64_t due, int64_t now,
    int64_t *looked)
{
	if (now - due < TIMER_STALL_MS || *looked >= due)
		return 0;
	*looked = now;
	/* A millisecond on; a repeating timer keeps its interval. */
	ev_timer_stop(loop, t);
	ev_timer_set(t, 0.001, t->repeat);
	ev_timer_start(loop, t);
	return 1;
}

void
timer_arm(struct ev_loop *loop, ev_timer *t, int64_t when, int64_t now)
{
	double	 after = (double)(when - now) / 1000.0;

	t->repeat = after > 0.001 ? after : 0.001;
	ev_timer_again(loop, t);
}

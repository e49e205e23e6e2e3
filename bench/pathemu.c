/*
 * pathemu: an emulated network path between two network namespaces, for
 * the tests and the bench (this kernel has no netem).
 *
 *	pathemu -a [NETNS:]IFNAME -b [NETNS:]IFNAME -c SOCKET [-e]
 *	    [-q SLOTS] [-s SEED]
 *
 * Opens the TUN device IFNAME in each network namespace (a name under
 * /run/netns, or a path such as /proc/PID/ns/net; without one, the
 * current namespace), creating it if absent, and passes each IP packet
 * read from one to the other.  "up" is a to b, "down" is b to a; each
 * direction has its own one-way delay, jitter, loss and blackhole, changed
 * at any time through the UNIX SOCK_SEQPACKET socket SOCKET, one command
 * per message, one reply per command:
 *
 *	set KEY=VALUE ...	ok, or "error: ..." and nothing changed
 *	get			the settings, as KEY=VALUE pairs
 *	stats			the counters, as KEY=VALUE pairs
 *	clear			zeroes the counters
 *
 * KEY is delay_ms, jitter_ms (0 to 60000, fractions allowed), loss (a
 * probability, 0 to 1), blackhole or order (0 or 1), prefixed by up_ or
 * down_ for one direction, bare for both.  A packet is blackholed or lost
 * as it is read, and otherwise leaves after delay_ms plus a uniform
 * 0..jitter_ms; with order=1 (the default) never before the one read ahead
 * of it in its direction, so jitter delays but never reorders.  A setting
 * applies to the packets read after it.  Counters per direction: in (read),
 * out (written), lost, blackholed, full (no free slot), oversize, err
 * (the write failed, e.g. the interface is down), queued (waiting now),
 * and late_avg_us and late_max_us (how long after its due time a packet
 * was written: the emulator's own error, to check after a run).
 *
 * Limits.  Each direction holds at most SLOTS packets (default 4096, at
 * most 65536), each of at most PKT_MAX (1600) octets: keep the MTU at 1500.
 * Packets leave on a CLOCK_MONOTONIC timerfd armed at absolute times with
 * a timer slack of 1 ns (the default 50 us would add up to that), never
 * early; how late is the scheduler's doing: on this 2-vCPU machine kept
 * busy by other builds, 40-90 us on average and up to 0.2-3 ms under
 * SCHED_FIFO, 150-520 us and up to 5-19 ms at nice -10 (late_*_us counts
 * it).  One thread, one read and one write per packet, 5.6-24 us of CPU
 * each here: 60,000-87,000 packets/s passed one direction with none
 * dropped, the senders' limit (bench/README.md); the kernel drops, on the
 * TUN queue, what pathemu is too slow to read.  It passes IPv4 and IPv6
 * alike.  No bandwidth limit, no duplication, no corruption.  Runs until
 * SIGTERM or SIGINT, or with -e until its standard input reaches end of
 * file (a pipe from the harness, so that it never outlives the harness),
 * then prints its counters on stderr.  -s seeds the loss and jitter draws
 * (default: from getrandom).
 */
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PKT_MAX		1600	/* octets: an MTU of 1500 fits */
#define SLOTS_DEFAULT	4096
#define SLOTS_MAX	65536
#define BURST		64	/* reads per wakeup: fairness */
#define CTL_MAX		512	/* octets in a control command */
#define CLIENTS		4	/* control connections at once */
#define MS_MAX		60000.0
#define EXPIRED		0	/* armed: the timer fired, set it again */

enum tag { T_A, T_B, T_TIMER, T_SIGNAL, T_STDIN, T_LISTEN, T_CLIENT };

struct pkt {
	uint64_t	 p_due;		/* CLOCK_MONOTONIC ns */
	uint64_t	 p_seq;		/* ties leave in read order */
	uint16_t	 p_len;
	uint8_t		 p_data[PKT_MAX];
};

/* What a set command changes, per direction. */
struct conf {
	double		 c_delay_ms;
	double		 c_jitter_ms;
	double		 c_loss;
	int		 c_blackhole;
	int		 c_order;
};

/*
 * One direction: packets read from d_in wait in a min-heap on (due, seq)
 * of preallocated slots until written to d_out.  With order=1 the due
 * times are non-decreasing, so the heap is a FIFO; with order=0 jitter
 * can reorder.  Lives as long as the process.
 */
struct dir {
	const char	*d_name;
	int		 d_in, d_out;
	struct conf	 d_conf;
	struct pkt	*d_slots;
	struct pkt	**d_free;	/* stack of free slots */
	struct pkt	**d_heap;
	uint32_t	 d_nfree, d_nheap;
	uint64_t	 d_last_due, d_seq;
	uint64_t	 d_in_pkts, d_out_pkts, d_lost, d_holed, d_full,
			 d_oversize, d_err;
	uint64_t	 d_late_sum, d_late_max;	/* ns past p_due */
};

static struct dir	 up = { .d_name = "up" }, down = { .d_name = "down" };
static uint64_t		 rng;
static uint64_t		 armed = UINT64_MAX;	/* the timer's expiry */
static int		 ep, tfd, lfd, clients[CLIENTS];
static const char	*sockpath;

static void
usage(void)
{
	fprintf(stderr, "usage: pathemu -a [NETNS:]IFNAME -b [NETNS:]IFNAME "
	    "-c SOCKET [-e] [-q SLOTS] [-s SEED]\n");
	exit(2);
}

static uint64_t
now_ns(void)
{
	struct timespec	 ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* splitmix64: enough for loss and jitter draws, and seedable for reruns. */
static uint64_t
rand64(void)
{
	uint64_t	 z = (rng += 0x9e3779b97f4a7c15u);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
	return z ^ (z >> 31);
}

static double
rand01(void)
{
	return (double)(rand64() >> 11) * 0x1.0p-53;
}

static int
watch(int fd, uint32_t tag, uint32_t events)
{
	struct epoll_event	 ev = { .events = events, .data.u32 = tag };

	return epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
}

/* ---- the queue of one direction ---- */

static int
before(const struct pkt *x, const struct pkt *y)
{
	return x->p_due < y->p_due || (x->p_due == y->p_due &&
	    x->p_seq < y->p_seq);
}

static void
heap_push(struct dir *d, struct pkt *p)
{
	uint32_t	 i = d->d_nheap++, parent;

	while (i > 0 && before(p, d->d_heap[parent = (i - 1) / 2])) {
		d->d_heap[i] = d->d_heap[parent];
		i = parent;
	}
	d->d_heap[i] = p;
}

static struct pkt *
heap_pop(struct dir *d)
{
	struct pkt	*top = d->d_heap[0], *last = d->d_heap[--d->d_nheap];
	uint32_t	 i = 0, c;

	while ((c = 2 * i + 1) < d->d_nheap) {
		if (c + 1 < d->d_nheap && before(d->d_heap[c + 1],
		    d->d_heap[c]))
			c++;
		if (!before(d->d_heap[c], last))
			break;
		d->d_heap[i] = d->d_heap[c];
		i = c;
	}
	d->d_heap[i] = last;
	return top;
}

static void
dir_init(struct dir *d, int in, int out, uint32_t slots)
{
	uint32_t	 i;

	d->d_in = in;
	d->d_out = out;
	d->d_conf.c_order = 1;
	d->d_slots = calloc(slots, sizeof(*d->d_slots));
	d->d_free = calloc(slots, sizeof(*d->d_free));
	d->d_heap = calloc(slots, sizeof(*d->d_heap));
	if (d->d_slots == NULL || d->d_free == NULL || d->d_heap == NULL) {
		perror("pathemu: calloc");
		exit(1);
	}
	for (i = 0; i < slots; i++)
		d->d_free[i] = &d->d_slots[i];
	d->d_nfree = slots;
}

static uint64_t
due_time(struct dir *d, uint64_t now)
{
	const struct conf	*c = &d->d_conf;
	uint64_t		 due, j = (uint64_t)(c->c_jitter_ms * 1e6);

	due = now + (uint64_t)(c->c_delay_ms * 1e6);
	if (j > 0)
		due += rand64() % (j + 1);
	if (c->c_order && due < d->d_last_due)
		due = d->d_last_due;
	d->d_last_due = due;
	return due;
}

/* Decides the fate of a packet just read into p; 1 if it was queued. */
static int
admit(struct dir *d, struct pkt *p, ssize_t n, uint64_t now)
{
	d->d_in_pkts++;
	if (n > PKT_MAX) {
		d->d_oversize++;
		return 0;
	}
	if (d->d_conf.c_blackhole) {
		d->d_holed++;
		return 0;
	}
	if (d->d_conf.c_loss > 0 && rand01() < d->d_conf.c_loss) {
		d->d_lost++;
		return 0;
	}
	p->p_len = (uint16_t)n;
	p->p_due = due_time(d, now);
	p->p_seq = d->d_seq++;
	heap_push(d, p);
	return 1;
}

/*
 * A TUN read fails for good once its interface is deleted (its namespace
 * went away): exit rather than spin on a descriptor that stays ready.
 */
static int
tun_read(struct dir *d, void *buf, size_t len, ssize_t *n)
{
	if ((*n = read(d->d_in, buf, len)) >= 0)
		return 0;
	if (errno != EAGAIN && errno != EINTR) {
		fprintf(stderr, "pathemu: %s: read: %s\n", d->d_name,
		    strerror(errno));
		exit(1);
	}
	return -1;
}

/* Reads up to BURST packets; with no slot free, reads to drop. */
static void
dir_read(struct dir *d, uint64_t now)
{
	static uint8_t	 sink[PKT_MAX + 1];
	struct pkt	*p;
	ssize_t		 n;
	int		 i;

	for (i = 0; i < BURST; i++) {
		if (d->d_nfree == 0) {
			if (tun_read(d, sink, sizeof(sink), &n) == -1)
				return;
			d->d_in_pkts++;
			d->d_full++;
			continue;
		}
		p = d->d_free[d->d_nfree - 1];
		if (tun_read(d, p->p_data, PKT_MAX, &n) == -1)
			return;
		if (admit(d, p, n, now))
			d->d_nfree--;
	}
}

/* Writes every packet that is due by now. */
static void
dir_release(struct dir *d, uint64_t now)
{
	struct pkt	*p;

	while (d->d_nheap > 0 && d->d_heap[0]->p_due <= now) {
		p = heap_pop(d);
		d->d_late_sum += now - p->p_due;
		if (now - p->p_due > d->d_late_max)
			d->d_late_max = now - p->p_due;
		if (write(d->d_out, p->p_data, p->p_len) == p->p_len)
			d->d_out_pkts++;
		else
			d->d_err++;
		d->d_free[d->d_nfree++] = p;
	}
}

/*
 * One timer for both directions, at the earlier head, or disarmed; set
 * only when that changes, which saves a system call per wakeup under load.
 * After it fires it is always set (no due time is EXPIRED), and setting a
 * timerfd zeroes its expiry count: that, not a read per expiry, keeps it
 * from staying readable.
 */
static void
arm_timer(void)
{
	struct itimerspec	 its;
	uint64_t		 due = UINT64_MAX;

	if (up.d_nheap > 0)
		due = up.d_heap[0]->p_due;
	if (down.d_nheap > 0 && down.d_heap[0]->p_due < due)
		due = down.d_heap[0]->p_due;
	if (due == armed)
		return;
	memset(&its, 0, sizeof(its));
	if (due != UINT64_MAX) {
		its.it_value.tv_sec = (time_t)(due / 1000000000u);
		its.it_value.tv_nsec = (long)(due % 1000000000u);
	}
	if (timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL) == -1) {
		perror("pathemu: timerfd_settime");
		exit(1);
	}
	armed = due;
}

/* ---- control commands ---- */

static int
parse_num(const char *s, double lo, double hi, int integral, double *out)
{
	char	*end;
	double	 v;

	errno = 0;
	v = strtod(s, &end);
	if (end == s || *end != '\0' || errno != 0 || !isfinite(v) ||
	    v < lo || v > hi || (integral && v != floor(v)))
		return -1;
	*out = v;
	return 0;
}

/* Applies NAME=VALUE to c; -1 with err filled in when it does not parse. */
static int
conf_set(struct conf *c, const char *name, const char *val, char *err,
    size_t errlen)
{
	double	 v;

	if (strcmp(name, "delay_ms") == 0 || strcmp(name, "jitter_ms") == 0) {
		if (parse_num(val, 0, MS_MAX, 0, &v) == -1)
			goto bad;
		*(name[0] == 'd' ? &c->c_delay_ms : &c->c_jitter_ms) = v;
	} else if (strcmp(name, "loss") == 0) {
		if (parse_num(val, 0, 1, 0, &v) == -1)
			goto bad;
		c->c_loss = v;
	} else if (strcmp(name, "blackhole") == 0 ||
	    strcmp(name, "order") == 0) {
		if (parse_num(val, 0, 1, 1, &v) == -1)
			goto bad;
		*(name[0] == 'b' ? &c->c_blackhole : &c->c_order) = (int)v;
	} else {
		snprintf(err, errlen, "error: unknown setting '%s'", name);
		return -1;
	}
	return 0;
bad:
	snprintf(err, errlen, "error: bad value '%s' for %s", val, name);
	return -1;
}

/* One KEY=VALUE token of a set command, into the staged confs. */
static int
set_token(char *tok, struct conf *cu, struct conf *cd, char *err,
    size_t errlen)
{
	char	*eq = strchr(tok, '=');

	if (eq == NULL || eq == tok) {
		snprintf(err, errlen, "error: expected KEY=VALUE, got '%s'",
		    tok);
		return -1;
	}
	*eq = '\0';
	if (strncmp(tok, "up_", 3) == 0)
		return conf_set(cu, tok + 3, eq + 1, err, errlen);
	if (strncmp(tok, "down_", 5) == 0)
		return conf_set(cd, tok + 5, eq + 1, err, errlen);
	if (conf_set(cu, tok, eq + 1, err, errlen) == -1)
		return -1;
	return conf_set(cd, tok, eq + 1, err, errlen);
}

/* All tokens or none: a harness never sees half a setting applied. */
static void
cmd_set(char *args, char *out, size_t outlen)
{
	struct conf	 cu = up.d_conf, cd = down.d_conf;
	char		*tok, *save = NULL;
	int		 n = 0;

	for (tok = strtok_r(args, " \t", &save); tok != NULL;
	    tok = strtok_r(NULL, " \t", &save), n++)
		if (set_token(tok, &cu, &cd, out, outlen) == -1)
			return;
	if (n == 0) {
		snprintf(out, outlen, "error: set needs KEY=VALUE");
		return;
	}
	up.d_conf = cu;
	down.d_conf = cd;
	snprintf(out, outlen, "ok");
}

/* snprintf at out + *len that never runs past outlen. */
static void __attribute__((format(printf, 4, 5)))
append(char *out, size_t outlen, size_t *len, const char *fmt, ...)
{
	va_list	 ap;
	int	 n;

	if (*len >= outlen)
		return;
	va_start(ap, fmt);
	n = vsnprintf(out + *len, outlen - *len, fmt, ap);
	va_end(ap);
	*len = n < 0 ? outlen : *len + (size_t)n;
}

static void
dir_get(const struct dir *d, char *out, size_t outlen, size_t *len)
{
	const char		*n = d->d_name;
	const struct conf	*c = &d->d_conf;

	append(out, outlen, len, "%s_delay_ms=%.3f %s_jitter_ms=%.3f "
	    "%s_loss=%.6g %s_blackhole=%d %s_order=%d", n, c->c_delay_ms, n,
	    c->c_jitter_ms, n, c->c_loss, n, c->c_blackhole, n, c->c_order);
}

/* One report for each direction, up first, as the control socket says it. */
static void
both(void (*fn)(const struct dir *, char *, size_t, size_t *), char *out,
    size_t outlen)
{
	size_t	 len = 0;

	fn(&up, out, outlen, &len);
	append(out, outlen, &len, " ");
	fn(&down, out, outlen, &len);
}

static void
dir_stats(const struct dir *d, char *out, size_t outlen, size_t *len)
{
	const char		*n = d->d_name;
	unsigned long long	 done = d->d_out_pkts + d->d_err;

	append(out, outlen, len, "%s_in=%llu %s_out=%llu %s_lost=%llu "
	    "%s_blackholed=%llu %s_full=%llu %s_oversize=%llu %s_err=%llu "
	    "%s_queued=%u %s_late_avg_us=%llu %s_late_max_us=%llu",
	    n, (unsigned long long)d->d_in_pkts,
	    n, (unsigned long long)d->d_out_pkts,
	    n, (unsigned long long)d->d_lost,
	    n, (unsigned long long)d->d_holed,
	    n, (unsigned long long)d->d_full,
	    n, (unsigned long long)d->d_oversize,
	    n, (unsigned long long)d->d_err,
	    n, d->d_nheap,
	    n, done > 0 ? (unsigned long long)d->d_late_sum / done / 1000 : 0,
	    n, (unsigned long long)d->d_late_max / 1000);
}


static void
clear_counters(struct dir *d)
{
	d->d_in_pkts = d->d_out_pkts = d->d_lost = d->d_holed = 0;
	d->d_full = d->d_oversize = d->d_err = 0;
	d->d_late_sum = d->d_late_max = 0;
}

/* Only printable ASCII, so an error reply can quote the input safely. */
static int
printable(const char *s, size_t n)
{
	size_t	 i;

	for (i = 0; i < n; i++)
		if (!isprint((unsigned char)s[i]) && s[i] != '\t')
			return 0;
	return 1;
}

static void
command(char *line, size_t n, char *out, size_t outlen)
{
	char	*args;

	while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
		line[--n] = '\0';
	if (!printable(line, n)) {
		snprintf(out, outlen, "error: command is not printable text");
		return;
	}
	line += strspn(line, " \t");
	if (*line == '\0') {
		snprintf(out, outlen, "error: empty command");
		return;
	}
	args = line + strcspn(line, " \t");
	if (*args != '\0')
		*args++ = '\0';
	if (strcmp(line, "set") == 0)
		cmd_set(args, out, outlen);
	else if (strcmp(line, "get") != 0 && strcmp(line, "stats") != 0 &&
	    strcmp(line, "clear") != 0)
		snprintf(out, outlen, "error: unknown command '%.40s' "
		    "(set, get, stats, clear)", line);
	else if (strspn(args, " \t") != strlen(args))
		snprintf(out, outlen, "error: %s takes no arguments", line);
	else if (strcmp(line, "get") == 0)
		both(dir_get, out, outlen);
	else if (strcmp(line, "stats") == 0)
		both(dir_stats, out, outlen);
	else {
		clear_counters(&up);
		clear_counters(&down);
		snprintf(out, outlen, "ok");
	}
}

/* ---- the control socket ---- */

static void
client_close(int i)
{
	close(clients[i]);
	clients[i] = -1;
}

static void
client_accept(void)
{
	static const char	 busy[] =
	    "error: too many control connections";
	int			 fd, i;

	if ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) ==
	    -1)
		return;
	for (i = 0; i < CLIENTS; i++)
		if (clients[i] == -1)
			break;
	if (i == CLIENTS || watch(fd, T_CLIENT + (uint32_t)i,
	    EPOLLIN | EPOLLRDHUP) == -1) {
		send(fd, busy, sizeof(busy) - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
		close(fd);
		return;
	}
	clients[i] = fd;
}

/*
 * One message in, one reply out; a peer that cannot take it is closed.
 * A SOCK_SEQPACKET read of 0 is either an empty message or the end: only
 * the hang-up event tells them apart.
 */
static void
client_read(int i, uint32_t events)
{
	char		 in[CTL_MAX + 1], out[CTL_MAX * 2];
	struct iovec	 iov = { in, CTL_MAX };
	struct msghdr	 msg = { .msg_iov = &iov, .msg_iovlen = 1 };
	ssize_t		 n;

	if ((n = recvmsg(clients[i], &msg, MSG_DONTWAIT)) == -1) {
		if (errno != EAGAIN && errno != EINTR)
			client_close(i);
		return;
	}
	if (n == 0 && (events & (EPOLLRDHUP | EPOLLHUP))) {
		client_close(i);
		return;
	}
	in[n] = '\0';
	if (msg.msg_flags & MSG_TRUNC)
		snprintf(out, sizeof(out), "error: command longer than %d "
		    "octets", CTL_MAX);
	else
		command(in, (size_t)n, out, sizeof(out));
	if (send(clients[i], out, strlen(out), MSG_NOSIGNAL | MSG_DONTWAIT) ==
	    -1)
		client_close(i);
}

static void
listen_control(void)
{
	struct sockaddr_un	 sun = { .sun_family = AF_UNIX };
	struct stat		 st;

	if (strlen(sockpath) >= sizeof(sun.sun_path)) {
		fprintf(stderr, "pathemu: socket path too long\n");
		exit(2);
	}
	strcpy(sun.sun_path, sockpath);
	/* A socket left by a killed run is ours to replace; nothing else. */
	if (lstat(sockpath, &st) == 0 && S_ISSOCK(st.st_mode))
		unlink(sockpath);
	if ((lfd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK |
	    SOCK_CLOEXEC, 0)) == -1 || bind(lfd, (struct sockaddr *)&sun,
	    sizeof(sun)) == -1 || listen(lfd, CLIENTS) == -1) {
		fprintf(stderr, "pathemu: %s: %s\n", sockpath, strerror(errno));
		exit(1);
	}
}

/* ---- set-up ---- */

/* Opens IFNAME's TUN in NETNS; the fd stays bound to that namespace. */
static int
open_tun(const char *spec)
{
	char		 ns[256], path[300];
	const char	*colon = strrchr(spec, ':'), *ifname;
	struct ifreq	 ifr;
	int		 self = -1, nsfd = -1, fd;

	ifname = colon != NULL ? colon + 1 : spec;
	if (*ifname == '\0' || strlen(ifname) >= IFNAMSIZ || (colon != NULL &&
	    ((size_t)(colon - spec) >= sizeof(ns) || colon == spec))) {
		fprintf(stderr, "pathemu: bad interface '%s'\n", spec);
		exit(2);
	}
	if (colon != NULL) {
		snprintf(ns, sizeof(ns), "%.*s", (int)(colon - spec), spec);
		snprintf(path, sizeof(path), "%s%s", strchr(ns, '/') ? "" :
		    "/run/netns/", ns);
		if ((self = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC)) ==
		    -1 || (nsfd = open(path, O_RDONLY | O_CLOEXEC)) == -1 ||
		    setns(nsfd, CLONE_NEWNET) == -1)
			goto fail;
	}
	memset(&ifr, 0, sizeof(ifr));
	ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
	strcpy(ifr.ifr_name, ifname);
	if ((fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC)) ==
	    -1 || ioctl(fd, TUNSETIFF, &ifr) == -1)
		goto fail;
	if (self != -1 && setns(self, CLONE_NEWNET) == -1)
		goto fail;
	if (self != -1)
		close(self);
	if (nsfd != -1)
		close(nsfd);
	return fd;
fail:
	fprintf(stderr, "pathemu: %s: %s\n", spec, strerror(errno));
	exit(1);
}

static int
open_signals(void)
{
	sigset_t	 set;
	int		 fd;

	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	signal(SIGPIPE, SIG_IGN);
	if (sigprocmask(SIG_BLOCK, &set, NULL) == -1 ||
	    (fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC)) == -1) {
		perror("pathemu: signalfd");
		exit(1);
	}
	return fd;
}

static void
seed_rng(const char *seed)
{
	char	*end;

	if (seed != NULL) {
		errno = 0;
		rng = strtoull(seed, &end, 0);
		if (*seed == '\0' || *end != '\0' || errno != 0)
			usage();
	} else if (getrandom(&rng, sizeof(rng), 0) != sizeof(rng)) {
		perror("pathemu: getrandom");
		exit(1);
	}
}

static uint32_t
parse_slots(const char *s)
{
	double	 v;

	if (parse_num(s, 1, SLOTS_MAX, 1, &v) == -1)
		usage();
	return (uint32_t)v;
}

/* ---- the loop ---- */

static void
watch_all(int fa, int fb, int sfd, int eof)
{
	if ((ep = epoll_create1(EPOLL_CLOEXEC)) == -1 ||
	    (tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK |
	    TFD_CLOEXEC)) == -1 ||
	    watch(fa, T_A, EPOLLIN) == -1 || watch(fb, T_B, EPOLLIN) == -1 ||
	    watch(tfd, T_TIMER, EPOLLIN) == -1 ||
	    watch(sfd, T_SIGNAL, EPOLLIN) == -1 ||
	    watch(lfd, T_LISTEN, EPOLLIN) == -1 ||
	    (eof && watch(STDIN_FILENO, T_STDIN, EPOLLIN) == -1)) {
		perror("pathemu: epoll");
		exit(1);
	}
}

static void
dispatch(const struct epoll_event *ev, uint64_t now, int *done)
{
	uint32_t	 tag = ev->data.u32;

	switch (tag) {
	case T_A:
		dir_read(&up, now);
		break;
	case T_B:
		dir_read(&down, now);
		break;
	case T_TIMER:
		armed = EXPIRED;
		break;
	case T_SIGNAL:
	case T_STDIN:
		*done = 1;
		break;
	case T_LISTEN:
		client_accept();
		break;
	default:
		if (tag - T_CLIENT < CLIENTS && clients[tag - T_CLIENT] != -1)
			client_read((int)(tag - T_CLIENT), ev->events);
		break;
	}
}

static void
run(void)
{
	struct epoll_event	 evs[16];
	uint64_t		 now;
	int			 i, n, done = 0;

	while (!done) {
		if ((n = epoll_wait(ep, evs, 16, -1)) == -1) {
			if (errno == EINTR)
				continue;
			perror("pathemu: epoll_wait");
			exit(1);
		}
		now = now_ns();
		for (i = 0; i < n; i++)
			dispatch(&evs[i], now, &done);
		now = now_ns();
		dir_release(&up, now);
		dir_release(&down, now);
		arm_timer();
	}
}

int
main(int argc, char **argv)
{
	const char	*a = NULL, *b = NULL, *seed = NULL;
	uint32_t	 slots = SLOTS_DEFAULT;
	char		 out[CTL_MAX * 2];
	int		 ch, fa, fb, sfd, i, eof = 0;

	while ((ch = getopt(argc, argv, "a:b:c:eq:s:")) != -1) {
		switch (ch) {
		case 'a': a = optarg; break;
		case 'b': b = optarg; break;
		case 'c': sockpath = optarg; break;
		case 'e': eof = 1; break;
		case 'q': slots = parse_slots(optarg); break;
		case 's': seed = optarg; break;
		default: usage();
		}
	}
	if (a == NULL || b == NULL || sockpath == NULL || optind != argc)
		usage();
	seed_rng(seed);
	/* Timers fire up to the slack late; 1 ns asks for none. */
	prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
	fa = open_tun(a);
	fb = open_tun(b);
	dir_init(&up, fa, fb, slots);
	dir_init(&down, fb, fa, slots);
	for (i = 0; i < CLIENTS; i++)
		clients[i] = -1;
	sfd = open_signals();
	listen_control();
	watch_all(fa, fb, sfd, eof);
	run();
	unlink(sockpath);
	both(dir_stats, out, sizeof(out));
	fprintf(stderr, "pathemu: %s\n", out);
	return 0;
}

/*
 * One upstream connection: dial, TLS or plain TCP, framing, the ID map,
 * write coalescing and the quick-ACK policy, keepalive (RFC 7828) and
 * idle; it reports to the pool through conn_events and decides nothing
 * about upstreams.
 *
 * Each query written gets an ID drawn at random that is unique on its
 * connection; a reply is matched on ID and question.  Queries written
 * in one loop iteration share one TLS record: a connection with output
 * is marked dirty and flushed once, just before the loop sleeps.
 */
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <linux/sockios.h>
#include <netinet/in.h>
/* Not <netinet/tcp.h>: its tcp_info lacks tcpi_fastopen_client_fail. */
#include <linux/tcp.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ev.h>

#include "conn.h"
#include "dns.h"
#include "dnsfwd.h"
#include "log.h"
#include "options.h"
#include "tls.h"
#include "util.h"

/* Largest partial frame plus one large TLS read. */
#define CONN_INCAP	(2 + DNS_MAXMSG + 16384)
/* One TLS record carries at most this much plaintext. */
#define TLS_RECORD	16384
/* TCP_USER_TIMEOUT follows --timeout, but loss of a moment is no death. */
#define TCP_USER_MIN_MS	1000
/* We close before a server's announced idle timeout by this much. */
#define KEEPALIVE_MARGIN_MS 500
/*
 * Queries written to a connection this often (seconds between, averaged)
 * will carry the ACK of its answers soon: the quick ACK is left to a
 * timer of ACK_LATE, the shortest the loop keeps, as a safety net.
 */
#define ACK_GAP		0.0002
#define ACK_LATE	0.001
/* Fast Open stays off this long after a SYN carrying data was lost. */
#define TFO_OFF_MS	(60 * 60 * 1000)

static struct {
	struct ev_loop	*loop;
	const struct config *cf;
	const struct conn_events *ev;
	struct pq	*pool;		/* what att_index numbers */
	uint32_t	 hmask;
	TAILQ_HEAD(, conn) dirty;
	uint16_t	 ids[256];
	int		 nids;
	uint64_t	 sends;		/* queries given to connections, ever */
} cn;

static void	 conn_connected(struct conn *, int64_t);
static void	 conn_handshake(struct conn *, int64_t);
static void	 conn_ready(struct conn *, int64_t);
static void	 conn_syn_data_check(struct conn *, int64_t);
static int	 tcp_info(const struct conn *, struct tcp_info *);
static void	 conn_end(struct conn *, enum conn_end, const char *,
		    int64_t);
static void	 conn_input(struct conn *, int64_t);
static int	 conn_frames(struct conn *, int64_t);
static int	 conn_reply(struct conn *, uint8_t *, size_t, int64_t);
static void	 conn_keepalive(struct conn *, const uint8_t *, size_t);
static void	 conn_idle_check(struct conn *);
static void	 conn_timer_set(struct conn *, int64_t, int64_t);
static void	 conn_flush(struct conn *);
static void	 conn_flush_ack(struct conn *);
static void	 conn_quickack(struct conn *);
static void	 conn_dirty(struct conn *);
static int	 conn_write_next(struct conn *);
static int	 conn_read(struct conn *, uint8_t *, size_t);
static int	 conn_write(struct conn *, const uint8_t *, size_t);
static void	 conn_read_cb(struct ev_loop *, ev_io *, int);
static void	 conn_write_cb(struct ev_loop *, ev_io *, int);
static void	 conn_timer_cb(struct ev_loop *, ev_timer *, int);
static void	 conn_ack_cb(struct ev_loop *, ev_timer *, int);
static void	 keep_probes(int);
static struct att *hash_find(struct conn *, uint16_t);
static uint16_t	 new_id(struct conn *);

void
conn_setup(struct ev_loop *loop, const struct config *cf,
    const struct conn_events *ev, struct pq *pool, uint32_t hmask)
{
	cn.loop = loop;
	cn.cf = cf;
	cn.ev = ev;
	cn.pool = pool;
	cn.hmask = hmask;
	cn.nids = 0;
	TAILQ_INIT(&cn.dirty);
}

void
conn_init(struct conn *c, struct upstream *up, int idx)
{
	c->c_up = up;
	c->c_idx = idx;
	c->c_fd = -1;
	TAILQ_INIT(&c->c_atts);
	c->c_outcap = (size_t)cn.cf->cf_max_inflight * (UPQUERY_MAX + 2);
	/*
	 * Not cleared: only what was read or framed is ever looked at, and
	 * clearing would make the buffers of every slot resident, about
	 * 120 kB each, dialled or not.
	 */
	c->c_in = xmalloc(CONN_INCAP);
	c->c_out = xmalloc(c->c_outcap);
	c->c_hash = chain_buckets(cn.hmask);
	ev_init(&c->c_rio, conn_read_cb);
	ev_init(&c->c_wio, conn_write_cb);
	timer_init(&c->c_timer, conn_timer_cb);
	timer_init(&c->c_acktimer, conn_ack_cb);
}

void
conn_free(struct conn *c)
{
	free(c->c_in);
	free(c->c_out);
	free(c->c_hash);
}

int
conn_dial(struct conn *c, char *why, size_t whylen)
{
	const struct upstream_cfg *uc = c->c_up->up_cfg;
	int		 fd, one = 1;
	unsigned int	 user_timeout = cn.cf->cf_timeout_ms < TCP_USER_MIN_MS ?
			    TCP_USER_MIN_MS : (unsigned int)cn.cf->cf_timeout_ms;

	fd = socket(uc->uc_addr.sa.sa_family,
	    SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd == -1) {
		snprintf(why, whylen, "socket: %s", strerror(errno));
		return -1;
	}
	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	sock_stamp_rx(fd);
	/* The kernel too gives up on a dead path, not after many minutes. */
	(void)setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout,
	    sizeof(user_timeout));
	if (cn.cf->cf_prewarm)
		keep_probes(fd);
	/*
	 * TCP Fast Open: connect() returns at once and the SYN leaves with
	 * the ClientHello, carrying it when the server gave us a cookie.
	 * Kernels without it refuse the option: a plain connect, then.
	 */
	if (!cn.cf->cf_no_fastopen && now_ms() >= c->c_up->up_tfo_off_until)
		(void)setsockopt(fd, IPPROTO_TCP, TCP_FASTOPEN_CONNECT, &one,
		    sizeof(one));
	if (connect(fd, &uc->uc_addr.sa, uc->uc_addrlen) == -1 &&
	    errno != EINPROGRESS) {
		snprintf(why, whylen, "%s", strerror(errno));
		close(fd);
		return -1;
	}
	stats.st_reconnects++;
	c->c_fd = fd;
	c->c_state = CONN_CONNECTING;
	c->c_slow = 0;
	c->c_inlen = c->c_outoff = c->c_outlen = 0;
	c->c_arrived = -1;
	c->c_queued = c->c_written = 0;
	c->c_idle_ms = cn.cf->cf_idle_timeout_s * 1000LL;
	c->c_server_idle = 0;
	c->c_write_wants_read = c->c_read_wants_write = 0;
	ev_io_set(&c->c_rio, fd, EV_READ);
	ev_io_set(&c->c_wio, fd, EV_WRITE);
	ev_io_start(cn.loop, &c->c_wio);
	conn_timer_set(c, cn.cf->cf_timeout_ms / 2, now_ms());
	log_debug("%s c%d: connecting", c->c_up->up_label, c->c_idx);
	return 0;
}

/*
 * --prewarm keeps an idle connection, which must not die unnoticed
 * behind a NAT that forgot it: the kernel probes it every idle timeout,
 * and once a probe went unanswered it closes it at the next
 * (TCP_USER_TIMEOUT, being set, overrides the probe count).
 */
static void
keep_probes(int fd)
{
	int	 one = 1, idle = cn.cf->cf_idle_timeout_s;

	(void)setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
	(void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
	(void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &idle, sizeof(idle));
}

static void
conn_connected(struct conn *c, int64_t now)
{
	int		 err = 0;
	socklen_t	 len = sizeof(err);

	if (getsockopt(c->c_fd, SOL_SOCKET, SO_ERROR, &err, &len) == -1)
		err = errno;
	if (err != 0) {
		conn_end(c, CONN_END_DIAL, strerror(err), now);
		return;
	}
	if (c->c_up->up_tls == NULL) {
		conn_ready(c, now);
		return;
	}
	if ((c->c_tls = tls_conn_new(c->c_up->up_tls, c->c_fd)) == NULL) {
		conn_end(c, CONN_END_DIAL, "TLS setup failed", now);
		return;
	}
	c->c_state = CONN_HANDSHAKE;
	conn_handshake(c, now);
}

static void
conn_handshake(struct conn *c, int64_t now)
{
	char	 why[256], msg[300];
	int	 rv;

	rv = tls_handshake(c->c_tls, why, sizeof(why));
	switch (rv) {
	case 0:
		conn_ready(c, now);
		return;
	case IO_WANT_READ:
		ev_io_stop(cn.loop, &c->c_wio);
		ev_io_start(cn.loop, &c->c_rio);
		return;
	case IO_WANT_WRITE:
		ev_io_start(cn.loop, &c->c_wio);
		return;
	}
	snprintf(msg, sizeof(msg), "TLS handshake failed: %s", why);
	conn_end(c, CONN_END_DIAL, msg, now);
}

static void
conn_ready(struct conn *c, int64_t now)
{
	c->c_state = CONN_READY;
	c->c_slow = 0;
	c->c_lastw = ev_now(cn.loop);
	c->c_gap = 1.;		/* no rate yet: acknowledge at once */
	ev_io_stop(cn.loop, &c->c_wio);
	ev_io_start(cn.loop, &c->c_rio);
	ev_timer_stop(cn.loop, &c->c_timer);
	conn_syn_data_check(c, now);
	if (c->c_tls != NULL && tls_resumed(c->c_tls))
		stats.st_tls_resumed++;
	else if (c->c_tls != NULL)
		stats.st_tls_full++;
	log_debug("%s c%d: ready%s%s%s", c->c_up->up_label, c->c_idx,
	    c->c_tls ? " over " : "", c->c_tls ? tls_version(c->c_tls) : "",
	    c->c_tls && tls_resumed(c->c_tls) ? ", resumed" : "");
	cn.ev->ce_ready(c, now);
	conn_idle_check(c);
}

/*
 * The one teardown of a connection: stops its watchers, says goodbye
 * over TLS when the session was up, closes the socket, and hands its
 * attempts back; they keep a_conn, so the pool knows where they were.
 */
void
conn_close(struct conn *c, const char *why, struct attlist *back)
{
	struct att	*a;

	log_debug("%s c%d: closed: %s", c->c_up->up_label, c->c_idx, why);
	ev_io_stop(cn.loop, &c->c_rio);
	ev_io_stop(cn.loop, &c->c_wio);
	ev_timer_stop(cn.loop, &c->c_timer);
	ev_timer_stop(cn.loop, &c->c_acktimer);
	tls_conn_free(c->c_tls, c->c_state == CONN_READY);
	c->c_tls = NULL;
	close(c->c_fd);
	c->c_fd = -1;
	c->c_state = CONN_IDLE;
	c->c_slow = 0;
	if (c->c_dirty) {
		TAILQ_REMOVE(&cn.dirty, c, c_dirtylink);
		c->c_dirty = 0;
	}
	while ((a = TAILQ_FIRST(&c->c_atts)) != NULL) {
		TAILQ_REMOVE(&c->c_atts, a, a_link);
		a->a_out = a->a_end <= c->c_written;
		TAILQ_INSERT_TAIL(back, a, a_link);
	}
	c->c_inflight = 0;
	c->c_suspect = 0;
	c->c_retrans = 0;
	chain_clear(c->c_hash, cn.hmask);
}

/*
 * A path that drops SYNs carrying data costs the kernel's 1 s SYN timer
 * on every reconnect: the plain SYN it sends again gets the server's
 * cookie back, so the kernel never learns (measured on Linux 6.18).
 * Fast Open to that upstream is off for TFO_OFF_MS, or until the
 * network changes.
 */
static void
conn_syn_data_check(struct conn *c, int64_t now)
{
	struct tcp_info	 ti;

	if (tcp_info(c, &ti) == -1 ||
	    ti.tcpi_fastopen_client_fail != TFO_SYN_RETRANSMITTED)
		return;
	c->c_up->up_tfo_off_until = now + TFO_OFF_MS;
	log_info("%s: a SYN carrying data was lost; Fast Open off for %d "
	    "minutes", c->c_up->up_label, TFO_OFF_MS / 60000);
}

/* Closes a connection that failed or ended by itself, and tells the pool. */
static void
conn_end(struct conn *c, enum conn_end end, const char *why, int64_t now)
{
	struct attlist	 back = TAILQ_HEAD_INITIALIZER(back);

	conn_close(c, why, &back);
	cn.ev->ce_closed(c, end, why, &back, now);
}

static void
conn_read_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct conn	*c = container_of(w, struct conn, c_rio);
	int64_t		 now = now_ms();

	(void)loop;
	(void)revents;
	if (c->c_state == CONN_HANDSHAKE) {
		conn_handshake(c, now);
		return;
	}
	if (c->c_state != CONN_READY)
		return;
	if (c->c_write_wants_read) {
		conn_flush(c);
		if (c->c_state != CONN_READY)
			return;
	}
	conn_input(c, now);
}

static void
conn_write_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct conn	*c = container_of(w, struct conn, c_wio);
	int64_t		 now = now_ms();

	(void)loop;
	(void)revents;
	switch (c->c_state) {
	case CONN_CONNECTING:
		conn_connected(c, now);
		break;
	case CONN_HANDSHAKE:
		conn_handshake(c, now);
		break;
	case CONN_READY:
		if (c->c_read_wants_write) {
			c->c_read_wants_write = 0;
			conn_input(c, now);
			if (c->c_state != CONN_READY)
				break;
		}
		conn_flush(c);
		break;
	case CONN_IDLE:
		break;
	}
}

/* Halfway through a dial, at its end, and at the idle timeout. */
static void
conn_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct conn	*c = container_of(w, struct conn, c_timer);
	int64_t		 now = now_ms();

	(void)revents;
	if (timer_stalled(loop, w, c->c_due, now, &c->c_looked))
		return;
	if (c->c_state != CONN_READY && !c->c_slow) {
		c->c_slow = 1;
		conn_timer_set(c, cn.cf->cf_timeout_ms / 2, now);
		cn.ev->ce_slow(c, now);
	} else if (c->c_state == CONN_CONNECTING)
		conn_end(c, CONN_END_DIAL, "connect timed out", now);
	else if (c->c_state == CONN_HANDSHAKE)
		conn_end(c, CONN_END_DIAL, "TLS handshake timed out", now);
	else if (c->c_state == CONN_READY && c->c_inflight == 0) {
		if (cn.ev->ce_keep(c, now)) {
			conn_idle_check(c);
			return;
		}
		conn_end(c, CONN_END_LOST, "idle", now);
	}
}

/* A dial's halves and the idle timeout: repeats until re-armed. */
static void
conn_timer_set(struct conn *c, int64_t ms, int64_t now)
{
	c->c_due = now + ms;
	c->c_timer.repeat = ms > 0 ? ms / 1000.0 : 0.001;
	ev_timer_again(cn.loop, &c->c_timer);
}

/* Reads until the socket is drained, handing over every whole reply. */
static void
conn_input(struct conn *c, int64_t now)
{
	int	 n;

	for (;;) {
		n = conn_read(c, c->c_in + c->c_inlen, CONN_INCAP - c->c_inlen);
		if (n > 0) {
			c->c_inlen += (size_t)n;
			c->c_reads++;
			if (conn_frames(c, now) == -1)
				return;
			/* A read that must find nothing is a syscall saved. */
			if (c->c_tls ? tls_drained(c->c_tls) : c->c_drained)
				break;
			continue;
		}
		if (n == IO_WANT_READ)
			break;
		if (n == IO_WANT_WRITE) {
			/* A TLS read that must write first: retry it then. */
			c->c_read_wants_write = 1;
			ev_io_start(cn.loop, &c->c_wio);
			break;
		}
		/* A close between queries is normal: redial on demand. */
		conn_end(c, CONN_END_LOST, n == 0 ? "closed by server" :
		    "read failed", now);
		return;
	}
	/* Answers still due: acknowledge before the loop sleeps. */
	if (c->c_state == CONN_READY && c->c_inflight > 0) {
		c->c_ackdue = 1;
		conn_dirty(c);
	}
}

static int
conn_frames(struct conn *c, int64_t now)
{
	size_t	 off = 0, flen;

	while (c->c_inlen - off >= 2) {
		flen = dns_get16(c->c_in + off);
		if (c->c_inlen - off - 2 < flen)
			break;
		if (conn_reply(c, c->c_in + off + 2, flen, now) == -1)
			return -1;
		off += 2 + flen;
	}
	if (off > 0) {
		memmove(c->c_in, c->c_in + off, c->c_inlen - off);
		c->c_inlen -= off;
	}
	return 0;
}

/*
 * Hands over a reply whose ID is in flight here and whose question is
 * the query's.  Anything else is dropped; bytes that are not even a DNS
 * response mean the stream cannot be trusted, so the connection goes.
 */
static int
conn_reply(struct conn *c, uint8_t *msg, size_t len, int64_t now)
{
	struct upstream	*up = c->c_up;
	struct att	*a;

	if (len < DNS_HDRLEN || (msg[2] & F_QR) == 0) {
		stats.st_bad_replies++;
		log_ratelimited(&up->up_warned, "%s: not a DNS response, "
		    "closing the connection", up->up_label);
		conn_end(c, CONN_END_GARBAGE, "garbage from upstream", now);
		return -1;
	}
	a = hash_find(c, dns_get16(msg));
	if (a == NULL || !dns_reply_matches(msg, len, a->a_pq->pq_query,
	    a->a_pq->pq_qend)) {
		stats.st_bad_replies++;
		log_debug("%s c%d: dropped a reply matching no query",
		    up->up_label, c->c_idx);
		return 0;
	}
	conn_keepalive(c, msg, len);
	cn.ev->ce_reply(c, a, msg, len, now);
	return 0;
}

/*
 * The server's idle timeout (RFC 7828), as its latest answer carrying
 * one gave it (it may change its mind under load: TIMEOUT 0 is "close
 * when idle"): we close first, so that its close never meets a query in
 * flight.
 */
static void
conn_keepalive(struct conn *c, const uint8_t *msg, size_t len)
{
	int	 ka = dns_keepalive(msg, len);
	int64_t	 ms;

	if (ka < 0)
		return;
	ms = ka * 100LL - KEEPALIVE_MARGIN_MS;
	if (ms < 0)
		ms = 0;
	if (ms > cn.cf->cf_idle_timeout_s * 1000LL)
		ms = cn.cf->cf_idle_timeout_s * 1000LL;
	if (c->c_server_idle && ms == c->c_idle_ms)
		return;
	c->c_server_idle = 1;
	c->c_idle_ms = ms;
	log_debug("%s c%d: server keeps idle connections %d ms",
	    c->c_up->up_label, c->c_idx, ka * 100);
}

/* Starts the idle timer once nothing is in flight. */
static void
conn_idle_check(struct conn *c)
{
	if (c->c_state != CONN_READY || c->c_inflight > 0)
		return;
	conn_timer_set(c, c->c_idle_ms, now_ms());
}

int
conn_has_room(const struct conn *c)
{
	return c->c_state == CONN_READY &&
	    c->c_inflight < cn.cf->cf_max_inflight &&
	    c->c_outcap - c->c_outlen >= UPQUERY_MAX + 2;
}

void
conn_send(struct conn *c, struct att *a, int64_t now)
{
	const struct pq	*pq = a->a_pq;
	int32_t		 i = att_index(cn.pool, a);
	uint8_t		*p;

	a->a_upid = new_id(c);
	a->a_hnext = c->c_hash[a->a_upid & cn.hmask];
	c->c_hash[a->a_upid & cn.hmask] = i;
	TAILQ_INSERT_TAIL(&c->c_atts, a, a_link);
	a->a_conn = c;
	a->a_sent = now;
	a->a_reads = c->c_reads;
	c->c_lastq = ++cn.sends;
	if (c->c_inflight++ == 0)
		ev_timer_stop(cn.loop, &c->c_timer);
	if (c->c_outoff + c->c_outlen + 2 + pq->pq_len > c->c_outcap) {
		memmove(c->c_out, c->c_out + c->c_outoff, c->c_outlen);
		c->c_outoff = 0;
	}
	p = c->c_out + c->c_outoff + c->c_outlen;
	dns_put16(p, pq->pq_len);
	dns_put16(p + 2, a->a_upid);
	memcpy(p + 4, pq->pq_query + 2, pq->pq_len - 2u);
	c->c_outlen += 2u + pq->pq_len;
	c->c_queued += 2u + pq->pq_len;
	a->a_end = c->c_queued;
	conn_dirty(c);
}

/* TCP's own figures for the connection; -1 on a socket without them. */
static int
tcp_info(const struct conn *c, struct tcp_info *ti)
{
	socklen_t	 len = sizeof(*ti);

	return getsockopt(c->c_fd, IPPROTO_TCP, TCP_INFO, ti, &len);
}

int64_t
conn_arrived(const struct conn *c, const struct att *a, int64_t now)
{
	int64_t	 t = c->c_tls != NULL ? tls_arrived(c->c_tls) : c->c_arrived;

	/*
	 * Both clocks are read to the ms, so a stamp may fall up to 2 ms
	 * before the send; further off it is the wall clock's jump.
	 */
	if (t < a->a_sent - 2 || t > now)
		return now;
	return t > a->a_sent ? t : a->a_sent;
}

int64_t
conn_path_rtt(const struct conn *c)
{
	struct tcp_info	 ti;

	return tcp_info(c, &ti) == -1 ? -1 : (int64_t)ti.tcpi_rtt;
}

int
conn_retransmitted(struct conn *c)
{
	struct tcp_info	 ti;
	uint32_t	 seen = c->c_retrans;

	if (tcp_info(c, &ti) == -1)
		return 0;
	c->c_retrans = ti.tcpi_total_retrans;
	return ti.tcpi_total_retrans != seen;
}

void
conn_suspect(struct conn *c)
{
	c->c_suspect = 1;
}

/*
 * Its oldest query has waited past `late` ms, or, since an attempt timed
 * out on it, until nothing is in flight and the server acknowledged
 * every byte: a lost segment holds back every answer behind it until TCP
 * recovers it, and a query written behind one it retransmits waits too.
 */
int
conn_stalled(struct conn *c, int64_t late, int64_t now)
{
	struct att	*a = TAILQ_FIRST(&c->c_atts);
	int		 n;

	if (a != NULL && now - a->a_sent > late)
		return 1;
	if (!c->c_suspect)
		return 0;
	if (a != NULL || ioctl(c->c_fd, SIOCOUTQ, &n) == -1 || n > 0)
		return 1;
	c->c_suspect = 0;
	return 0;
}

void
conn_unlink(struct conn *c, struct att *a)
{
	int32_t		 i = att_index(cn.pool, a);
	int32_t		*ip = &c->c_hash[a->a_upid & cn.hmask];

	while (*ip >= 0 && *ip != i)
		ip = &att_at(cn.pool, *ip)->a_hnext;
	if (*ip == i)
		*ip = a->a_hnext;
	TAILQ_REMOVE(&c->c_atts, a, a_link);
	c->c_inflight--;
	a->a_conn = NULL;
	conn_idle_check(c);
}

/* Writes what is queued; it waits for whichever direction TLS asked for. */
static void
conn_flush(struct conn *c)
{
	int	 n;

	c->c_write_wants_read = 0;
	while ((n = conn_write_next(c)) > 0) {
		c->c_outoff += (size_t)n;
		c->c_outlen -= (size_t)n;
		c->c_written += (size_t)n;
	}
	if (n == IO_WANT_READ) {
		/* The read watcher is always on when ready. */
		c->c_write_wants_read = 1;
		if (!c->c_read_wants_write)
			ev_io_stop(cn.loop, &c->c_wio);
	} else if (n == IO_WANT_WRITE)
		ev_io_start(cn.loop, &c->c_wio);
	else if (n == 0) {
		c->c_outoff = 0;
		if (!c->c_read_wants_write)
			ev_io_stop(cn.loop, &c->c_wio);
	} else
		conn_end(c, CONN_END_LOST, "write failed", now_ms());
}

/*
 * Bytes of the queue written, 0 once the queue and the record tls.c
 * still holds are out, or an IO_* code.  A TLS write takes a record or
 * nothing (tls.c keeps what the socket refuses), so it may be retried
 * with whatever is queued by then.
 */
static int
conn_write_next(struct conn *c)
{
	size_t	 len = c->c_outlen;
	int	 n;

	if (len == 0)
		return c->c_tls != NULL ? tls_flush(c->c_tls) : 0;
	if (c->c_tls != NULL && len > TLS_RECORD)
		len = TLS_RECORD;
	n = conn_write(c, c->c_out + c->c_outoff, len);
	return n == 0 ? IO_ERR : n;
}

static int
conn_read(struct conn *c, uint8_t *buf, size_t len)
{
	ssize_t	 n;

	if (c->c_tls != NULL)
		return tls_read(c->c_tls, buf, len);
	n = recv_arrived(c->c_fd, buf, len, &c->c_arrived);
	c->c_drained = n >= 0 && (size_t)n < len;
	if (n >= 0)
		return (int)n;
	if (errno == EAGAIN || errno == EINTR)
		return IO_WANT_READ;
	return errno == ECONNRESET ? 0 : IO_ERR;
}

static int
conn_write(struct conn *c, const uint8_t *buf, size_t len)
{
	ssize_t	 n;

	if (c->c_tls != NULL)
		return tls_write(c->c_tls, buf, len);
	n = send(c->c_fd, buf, len, MSG_NOSIGNAL);
	if (n >= 0)
		return (int)n;
	if (errno == EAGAIN || errno == EINTR)
		return IO_WANT_WRITE;
	return IO_ERR;
}

int
conn_local(const struct conn *c, union sockaddr_any *sa)
{
	socklen_t	 len = sizeof(*sa);

	if (c->c_state == CONN_IDLE)
		return -1;
	return getsockname(c->c_fd, &sa->sa, &len);
}

void
conn_flush_dirty(void)
{
	struct conn	*c;

	while ((c = TAILQ_FIRST(&cn.dirty)) != NULL) {
		TAILQ_REMOVE(&cn.dirty, c, c_dirtylink);
		c->c_dirty = 0;
		conn_flush_ack(c);
	}
}

/*
 * A server that leaves Nagle on holds each answer until we acknowledge
 * the one before, and a delayed ACK waits for our next query or 40 ms: a
 * lag that, once begun, delays every answer by the gap between queries.
 * A query written in this loop iteration carries the ACK.  Without one,
 * acknowledge now, unless queries come so often that the next will carry
 * it: each quick ACK is a packet of its own, and answers that need none
 * leave the server together.
 */
static void
conn_flush_ack(struct conn *c)
{
	size_t		 written = c->c_written;
	ev_tstamp	 now;
	int		 due = c->c_ackdue;

	c->c_ackdue = 0;
	conn_flush(c);
	if (c->c_state != CONN_READY)
		return;
	if (c->c_written != written) {
		now = ev_now(cn.loop);
		c->c_gap += (now - c->c_lastw - c->c_gap) / 8;
		c->c_lastw = now;
	} else if (due && c->c_inflight > 0) {
		if (c->c_gap >= ACK_GAP)
			conn_quickack(c);
		else if (!ev_is_active(&c->c_acktimer)) {
			c->c_ackmark = c->c_written;
			ev_timer_set(&c->c_acktimer, ACK_LATE, 0.);
			ev_timer_start(cn.loop, &c->c_acktimer);
		}
	}
}

/* The safety net: no query has carried the ACK since the timer began. */
static void
conn_ack_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct conn	*c = container_of(w, struct conn, c_acktimer);

	(void)loop;
	(void)revents;
	if (c->c_state == CONN_READY && c->c_written == c->c_ackmark &&
	    c->c_inflight > 0)
		conn_quickack(c);
}

static void
conn_quickack(struct conn *c)
{
	int	 one = 1;

	(void)setsockopt(c->c_fd, IPPROTO_TCP, TCP_QUICKACK, &one,
	    sizeof(one));
}

static void
conn_dirty(struct conn *c)
{
	if (!c->c_dirty) {
		c->c_dirty = 1;
		TAILQ_INSERT_TAIL(&cn.dirty, c, c_dirtylink);
	}
}

static struct att *
hash_find(struct conn *c, uint16_t id)
{
	struct att	*a;
	int32_t		 i;

	for (i = c->c_hash[id & cn.hmask]; i >= 0; i = a->a_hnext) {
		a = att_at(cn.pool, i);
		if (a->a_upid == id)
			return a;
	}
	return NULL;
}

/* A CSPRNG ID not in flight on c; drawn in batches to save work. */
static uint16_t
new_id(struct conn *c)
{
	uint16_t id;

	do {
		if (cn.nids == 0) {
			random_bytes(cn.ids, sizeof(cn.ids));
			cn.nids = sizeof(cn.ids) / sizeof(cn.ids[0]);
		}
		id = cn.ids[--cn.nids];
	} while (hash_find(c, id) != NULL);
	return id;
}

/*
 * Unit tests of mux.c: the pending pool, ID rewriting, reply matching,
 * pipelining, deadlines, backoff and suspend handling, and the callback
 * contract (exactly one call per accepted send, never from inside
 * mux_send).  mux.c is included so its static functions can be driven
 * directly; a socketpair stands in for an upstream connection that is
 * already up (plain TCP framing), and each upstream also has a listening
 * socket on 127.0.0.1, so the dials mux.c makes on its own go somewhere
 * the tests can accept.  The TLS calls mux.c makes on a connection are
 * renamed to scripted fakes below, so the want-read/want-write
 * bookkeeping can be driven without a TLS peer; tls.c is still linked
 * for tls_init and the upstream contexts.
 */
#define tls_conn_new	fake_tls_conn_new
#define tls_conn_free	fake_tls_conn_free
#define tls_handshake	fake_tls_handshake
#define tls_version	fake_tls_version
#define tls_read	fake_tls_read
#define tls_write	fake_tls_write
#define tls_flush	fake_tls_flush
#define tls_resumed	fake_tls_resumed
#define tls_drained	fake_tls_drained
#define tls_arrived	fake_tls_arrived
#define tls_upstream_forget fake_tls_upstream_forget
#include "../conn.c"
#include "../upstream.c"
#include "../mux.c"

#include <sys/socket.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include <poll.h>
#include <signal.h>

struct stats	 stats;

#include "check.h"

/* One mux_send and what became of it; passed as the callback's arg. */
struct rec {
	int		 used;		/* mux_send accepted it */
	int		 handle;
	int		 calls;		/* callbacks received */
	enum mux_status	 st;
	int		 seq;		/* order of the callback */
	int64_t		 deadline;
	int64_t		 now;		/* the callback's now */
	size_t		 len;
	uint8_t		 reply[600];
	int		 resend;	/* the callback sends it again */
	struct rec	*child;		/* what it sent */
	size_t		 qlen;
	uint8_t		 q[UPQUERY_MAX + 1];
};

#define NRECS	2048
static struct rec	 recs[NRECS];
static int		 nrecs, seq, in_send, test_start;

static struct config	 cfg;
static struct ev_loop	*loop;
static int		 peer[UPSTREAMS_MAX][8];	/* conns' far ends */
static int		 lfd[UPSTREAMS_MAX];		/* listeners */

/* Frames read from a peer socket. */
struct frames {
	int	 n;
	size_t	 len[256];
	uint8_t	 m[256][UPQUERY_MAX + 64];
};
static struct frames	 fr;

/*
 * The fake TLS session: scripted results for reads, writes and handshake
 * steps, 0 meaning "do it on the socket".  Lengths asked are recorded.
 */
struct tls_conn {
	int	 fd;
	int	 rs[16], nrs;
	int	 ws[16], nws;
	int	 hs[16], nhs;
	int	 fs[16], nfs;		/* tls_flush: what tls.c holds */
	size_t	 wlen[64];
	int	 nwlen;
	int	 frees, notified, fail_new, resumed;
};
static struct tls_conn	 ftc;
static int		 fake_tu;	/* stands in for a tls_upstream */
static int		 forgets;

static int
script_pop(int *s, int *n)
{
	int	 v;

	if (*n == 0)
		return 0;
	v = s[0];
	memmove(s, s + 1, (size_t)(*n - 1) * sizeof(*s));
	(*n)--;
	return v;
}

struct tls_conn *
fake_tls_conn_new(struct tls_upstream *tu, int fd)
{
	(void)tu;
	if (ftc.fail_new)
		return NULL;
	ftc.fd = fd;
	return &ftc;
}

void
fake_tls_conn_free(struct tls_conn *tc, int notify)
{
	if (tc == NULL)
		return;
	tc->frees++;
	tc->notified += notify != 0;
}

int
fake_tls_handshake(struct tls_conn *tc, char *why, size_t len)
{
	int	 v = script_pop(tc->hs, &tc->nhs);

	if (v == IO_ERR)
		snprintf(why, len, "fake handshake failure");
	return v;
}

int
fake_tls_resumed(struct tls_conn *tc)
{
	return tc->resumed;
}

/* Never drained: conn_input reads on until the script says WANT_READ. */
int
fake_tls_drained(struct tls_conn *tc)
{
	(void)tc;
	return 0;
}

/* No stamp: a round trip over the fake ends at the read. */
int64_t
fake_tls_arrived(const struct tls_conn *tc)
{
	(void)tc;
	return -1;
}

void
fake_tls_upstream_forget(struct tls_upstream *tu)
{
	(void)tu;
	forgets++;
}

const char *
fake_tls_version(struct tls_conn *tc)
{
	(void)tc;
	return "TLSfake";
}

int
fake_tls_read(struct tls_conn *tc, uint8_t *buf, size_t len)
{
	ssize_t	 n;
	int	 v = script_pop(tc->rs, &tc->nrs);

	if (v != 0)
		return v;
	n = recv(tc->fd, buf, len, 0);
	if (n >= 0)
		return (int)n;
	return errno == EAGAIN ? IO_WANT_READ : IO_ERR;
}

/* Scripted like the rest; by default nothing is held back. */
int
fake_tls_flush(struct tls_conn *tc)
{
	return script_pop(tc->fs, &tc->nfs);
}

int
fake_tls_write(struct tls_conn *tc, const uint8_t *buf, size_t len)
{
	ssize_t	 n;
	int	 v = script_pop(tc->ws, &tc->nws);

	if (tc->nwlen < 64)
		tc->wlen[tc->nwlen++] = len;
	if (v != 0)
		return v;
	n = send(tc->fd, buf, len, MSG_NOSIGNAL);
	if (n >= 0)
		return (int)n;
	return errno == EAGAIN ? IO_WANT_WRITE : IO_ERR;
}

/*
 * The one callback.  It must never run inside mux_send, runs once per
 * accepted send, and finds the send's pool entry already free unless
 * another copy is still out.
 */
static void
done_cb(void *arg, enum mux_status st, uint8_t *reply, size_t len,
    int64_t now)
{
	struct rec	*r = arg;

	CHECK(!in_send);
	CHECK(r->used);
	CHECK(r->calls == 0);
	r->calls++;
	r->st = st;
	r->seq = ++seq;
	r->now = now;
	r->len = 0;
	if (st == MUX_ANSWER) {
		CHECK(reply != NULL && len >= DNS_HDRLEN &&
		    len <= sizeof(r->reply));
		if (reply != NULL && len <= sizeof(r->reply)) {
			memcpy(r->reply, reply, len);
			r->len = len;
		}
	} else
		CHECK(reply == NULL && len == 0);
	CHECK(TAILQ_FIRST(&mux.free) == &mux.pool[r->handle] ||
	    pq_live(&mux.pool[r->handle]) > 0);
	if (r->resend) {
		struct rec	*c = &recs[nrecs++];
		int		 was = in_send;

		r->resend = 0;
		c->deadline = now + 60000;
		c->qlen = r->qlen;
		memcpy(c->q, r->q, r->qlen);
		in_send = 1;
		c->handle = mux_send(c->q, c->qlen, c->deadline, done_cb, c,
		    now);
		in_send = was;
		c->used = c->handle != -1;
		r->child = c;
	}
}

/* A query for the dotted NAME with ID and RD, type A, optional OPT. */
static size_t
mkquery(uint8_t *q, uint16_t id, const char *name, int opt)
{
	const char	*p = name, *dot;
	size_t		 len = DNS_HDRLEN, n;

	memset(q, 0, DNS_HDRLEN);
	dns_put16(q, id);
	q[2] = F_RD;
	dns_put16(q + 4, 1);
	while (*p != '\0') {
		dot = strchr(p, '.');
		n = dot ? (size_t)(dot - p) : strlen(p);
		q[len++] = (uint8_t)n;
		memcpy(q + len, p, n);
		len += n;
		p += n + (dot != NULL);
	}
	q[len++] = 0;
	dns_put16(q + len, 1);
	dns_put16(q + len + 2, 1);
	len += 4;
	if (opt) {
		static const uint8_t o[] = { 0, 0, 41, 0x10, 0, 0, 0, 0x80, 0,
		    0, 0 };

		dns_put16(q + 10, 1);
		memcpy(q + len, o, sizeof(o));
		len += sizeof(o);
	}
	return len;
}

/* A query of exactly total bytes: NAME, then an OPT padded out. */
static size_t
mkbig(uint8_t *q, uint16_t id, const char *name, size_t total)
{
	size_t	 len = mkquery(q, id, name, 1), pad = total - len - 4;

	dns_put16(q + len - 2, (uint16_t)(4 + pad));
	dns_put16(q + len, 12);			/* Padding option */
	dns_put16(q + len + 2, (uint16_t)pad);
	memset(q + len + 4, 0, pad);
	return total;
}

static struct rec *
sendq(const uint8_t *q, size_t len, int64_t deadline)
{
	struct rec	*r;

	if (nrecs == NRECS)
		abort();
	r = &recs[nrecs++];
	r->deadline = deadline;
	if (len <= sizeof(r->q)) {
		memcpy(r->q, q, len);
		r->qlen = len;
	}
	in_send = 1;
	r->handle = mux_send(q, len, deadline, done_cb, r, now_ms());
	in_send = 0;
	r->used = r->handle != -1;
	return r;
}

static struct rec *
sendname(uint16_t id, const char *name)
{
	uint8_t	 q[512];

	return sendq(q, mkquery(q, id, name, 0), now_ms() + 60000);
}

static struct pq *
pq_of(const struct rec *r)
{
	return &mux.pool[r->handle];
}

/*
 * The connection died under its queries, as when the server closes it:
 * they come back blamed (conn_end without the dispatch that follows).
 */
static void
lose(struct conn *c)
{
	struct attlist	 back = TAILQ_HEAD_INITIALIZER(back);

	conn_close(c, "test", &back);
	take_back(&back, 1, now_ms());
}

/* Its first copy: the one every send without a hedge has. */
static struct att *
att_of(const struct rec *r)
{
	return &pq_of(r)->pq_att[0];
}

/* Reads what was written to fd, as frames into fr; returns how many. */
static int
read_frames(int fd)
{
	static uint8_t	 buf[1 << 17];
	size_t		 have = 0, off = 0, l;
	ssize_t		 n;

	while (have < sizeof(buf) &&
	    (n = recv(fd, buf + have, sizeof(buf) - have, MSG_DONTWAIT)) > 0)
		have += (size_t)n;
	fr.n = 0;
	while (have - off >= 2 && fr.n < 256) {
		l = dns_get16(buf + off);
		if (have - off - 2 < l || l > sizeof(fr.m[0]))
			break;
		memcpy(fr.m[fr.n], buf + off + 2, l);
		fr.len[fr.n++] = l;
		off += 2 + l;
	}
	return fr.n;
}

/* Answers query q (as seen upstream) with ID id, OR-ing flags into byte 2. */
static void
reply(int fd, const uint8_t *q, size_t len, uint16_t id, uint8_t flags)
{
	uint8_t	 r[UPQUERY_MAX + 64];

	dns_put16(r, (uint16_t)len);
	memcpy(r + 2, q, len);
	dns_put16(r + 2, id);
	r[4] |= flags;
	if (send(fd, r, len + 2, 0) != (ssize_t)(len + 2))
		abort();
}

/* Answers every frame waiting at peer (u, i) and lets the mux read them. */
static int
answer_all(int u, int i)
{
	int	 k, n = read_frames(peer[u][i]);

	for (k = 0; k < n; k++)
		reply(peer[u][i], fr.m[k], fr.len[k], dns_get16(fr.m[k]), F_QR);
	conn_input(&mux.ups[u].up_conns[i], now_ms());
	return n;
}

static void
listener(int u)
{
	struct sockaddr_in *sin = &cfg.cf_up[u].uc_addr.sin;
	socklen_t	 len = sizeof(*sin);

	lfd[u] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
	    0);
	sin->sin_family = AF_INET;
	sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	sin->sin_port = 0;
	if (lfd[u] == -1 || bind(lfd[u], &cfg.cf_up[u].uc_addr.sa, len) == -1 ||
	    listen(lfd[u], 16) == -1 ||
	    getsockname(lfd[u], &cfg.cf_up[u].uc_addr.sa, &len) == -1)
		abort();
	cfg.cf_up[u].uc_addrlen = sizeof(*sin);
}

/* Puts conn (u, i) up on a fresh socketpair, as conn_dial+conn_ready do. */
static void
connect_pair(int u, int i)
{
	struct conn	*c = &mux.ups[u].up_conns[i];
	int		 sp[2];

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sp) == -1)
		abort();
	c->c_fd = sp[0];
	peer[u][i] = sp[1];
	c->c_state = CONN_READY;
	c->c_slow = 0;
	c->c_inlen = c->c_outoff = c->c_outlen = 0;
	c->c_queued = c->c_written = 0;
	c->c_write_wants_read = c->c_read_wants_write = 0;
	c->c_idle_ms = mux.cf->cf_idle_timeout_s * 1000LL;
	ev_io_set(&c->c_rio, sp[0], EV_READ);
	ev_io_set(&c->c_wio, sp[0], EV_WRITE);
	ev_io_start(loop, &c->c_rio);
}

/* A closed connection comes back up, as after a redial. */
static void
revive(int u, int i)
{
	CHECK(mux.ups[u].up_conns[i].c_state == CONN_IDLE);
	if (peer[u][i] != -1)
		close(peer[u][i]);
	connect_pair(u, i);
}

/* Takes a connection with nothing in flight down, quietly. */
static void
make_idle(int u, int i)
{
	struct conn	*c = &mux.ups[u].up_conns[i];

	ev_io_stop(loop, &c->c_rio);
	ev_io_stop(loop, &c->c_wio);
	close(c->c_fd);
	c->c_fd = -1;
	c->c_state = CONN_IDLE;
	close(peer[u][i]);
	peer[u][i] = -1;
}

static void
setup(int nup, int conns, int inflight)
{
	int	 i, j;

	memset(&cfg, 0, sizeof(cfg));
	cfg.cf_nup = nup;
	cfg.cf_connections = conns;
	cfg.cf_max_inflight = inflight;
	cfg.cf_timeout_ms = 1000;
	cfg.cf_idle_timeout_s = 10;
	for (i = 0; i < nup; i++)
		listener(i);
	mux_init(loop, &cfg);
	for (i = 0; i < nup; i++)
		for (j = 0; j < conns; j++)
			connect_pair(i, j);
	memset(&stats, 0, sizeof(stats));
	memset(&ftc, 0, sizeof(ftc));
	test_start = nrecs;
}

/*
 * The timers' callbacks called directly, as a pass that has read its I/O
 * already: a test preempted between setting a time and the call must not
 * take timer_stalled's extra pass.
 */
static void
fire_deadlines(void)
{
	mux.deadline_looked = now_ms();
	deadline_cb(loop, &mux.deadline_timer, EV_TIMER);
}

static void
fire_attempts(void)
{
	mux.att_looked = now_ms();
	att_timer_cb(loop, &mux.att_timer, EV_TIMER);
}

static void
drain(void)
{
	struct pq	*pq;
	int64_t		 now = now_ms();

	TAILQ_FOREACH(pq, &mux.deadlines, pq_dlink)
		pq->pq_deadline = now - 1;
	if (!TAILQ_EMPTY(&mux.deadlines))
		fire_deadlines();
}

static void
teardown(void)
{
	int	 i, j;

	drain();
	CHECK(mux_inflight() == 0);
	CHECK(TAILQ_EMPTY(&mux.deadlines) && TAILQ_EMPTY(&mux.waitq));
	/* Every send of this test was called back exactly once. */
	for (i = test_start; i < nrecs; i++)
		CHECK(recs[i].calls == (recs[i].used ? 1 : 0));
	for (i = 0; i < mux.nup; i++) {
		mux.ups[i].up_tls = NULL;
		for (j = 0; j < mux.cf->cf_connections; j++) {
			if (peer[i][j] != -1)
				close(peer[i][j]);
			peer[i][j] = -1;
		}
		close(lfd[i]);
	}
	mux_shutdown();
}

/*
 * Accepts a dial to upstream u within ms and makes its socket the far
 * end of the connection that made it; older dials the mux gave up on
 * are accepted and closed on the way.
 */
static struct conn *
accept_dial_ms(int u, int ms)
{
	struct sockaddr_in a, b;
	struct pollfd	 p = { lfd[u], POLLIN, 0 };
	socklen_t	 al, bl;
	int		 fd, i;

	while (poll(&p, 1, ms) == 1) {
		al = sizeof(a);
		if ((fd = accept4(lfd[u], (struct sockaddr *)&a, &al,
		    SOCK_NONBLOCK)) == -1)
			return NULL;
		for (i = 0; i < mux.cf->cf_connections; i++) {
			struct conn *c = &mux.ups[u].up_conns[i];

			bl = sizeof(b);
			if (c->c_fd == -1 || getsockname(c->c_fd,
			    (struct sockaddr *)&b, &bl) == -1 ||
			    b.sin_family != AF_INET || b.sin_port != a.sin_port)
				continue;
			if (peer[u][i] != -1)
				close(peer[u][i]);
			peer[u][i] = fd;
			return c;
		}
		close(fd);
	}
	return NULL;
}

static struct conn *
accept_dial(int u)
{
	return accept_dial_ms(u, 2000);
}

static ev_timer	 guard;

static void
guard_cb(struct ev_loop *l, ev_timer *w, int revents)
{
	(void)l;
	(void)w;
	(void)revents;
}

/* Runs the real loop until pred(arg) holds or ms pass; returns it. */
static int
spin_until(int (*pred)(const void *), const void *arg, int ms)
{
	int64_t	 end = now_ms() + ms;

	ev_timer_init(&guard, guard_cb, 0.005, 0.005);
	ev_timer_start(loop, &guard);
	while (!pred(arg) && now_ms() < end)
		ev_run(loop, EVRUN_ONCE);
	ev_timer_stop(loop, &guard);
	return pred(arg);
}

static int
flag_set(const void *arg)
{
	return *(const int *)arg != 0;
}

static int
conn_came_up(const void *arg)
{
	return ((const struct conn *)arg)->c_state == CONN_READY;
}

static int
conn_left_ready(const void *arg)
{
	return ((const struct conn *)arg)->c_state != CONN_READY;
}

static int
peer_readable(const void *arg)
{
	struct pollfd	 p = { *(const int *)arg, POLLIN, 0 };

	return poll(&p, 1, 0) == 1;
}

static int
spin(const int *flag, int ms)
{
	return spin_until(flag_set, flag, ms);
}

/* IDs upstream are not the client's, are unique, and map back. */
static void
test_id_rewrite(void)
{
	struct rec	*r[50];
	uint8_t		 q[512];
	size_t		 qlen[50];
	char		 name[16];
	int		 i, j, n, same = 0;

	setup(1, 1, 64);
	for (i = 0; i < 50; i++) {
		snprintf(name, sizeof(name), "n%d", i);
		qlen[i] = mkquery(q, 0x1234, name, i % 2);
		r[i] = sendq(q, qlen[i], now_ms() + 60000);
		CHECK(r[i]->used && r[i]->calls == 0);
	}
	/* Nothing moves until the prepare watcher runs. */
	CHECK(mux.nwait == 50 && mux.ups[0].up_conns[0].c_inflight == 0);
	flush_cb(loop, NULL, 0);
	CHECK(mux.nwait == 0 && mux.ups[0].up_conns[0].c_inflight == 50);
	n = read_frames(peer[0][0]);
	CHECK(n == 50);
	for (i = 0; i < n; i++) {
		snprintf(name, sizeof(name), "n%d", i);
		/* Opaque: only the ID changed, in send order. */
		CHECK(fr.len[i] == qlen[i]);
		mkquery(q, 0x1234, name, i % 2);
		CHECK(memcmp(fr.m[i] + 2, q + 2, qlen[i] - 2) == 0);
		CHECK(dns_get16(fr.m[i]) == att_of(r[i])->a_upid);
		same += dns_get16(fr.m[i]) == 0x1234;
		for (j = 0; j < i; j++)
			CHECK(dns_get16(fr.m[i]) != dns_get16(fr.m[j]));
	}
	CHECK(same <= 1);	/* a random draw may hit it once, no more */
	/* Answered in reverse order: each send gets its own answer. */
	for (i = n - 1; i >= 0; i--)
		reply(peer[0][0], fr.m[i], fr.len[i], dns_get16(fr.m[i]), F_QR);
	conn_input(&mux.ups[0].up_conns[0], now_ms());
	for (i = 0; i < 50; i++) {
		CHECK(r[i]->calls == 1 && r[i]->st == MUX_ANSWER);
		/* The upstream's bytes, its ID included. */
		CHECK(r[i]->len == fr.len[i]);
		CHECK(dns_get16(r[i]->reply) == dns_get16(fr.m[i]));
		CHECK((r[i]->reply[2] & F_QR) &&
		    memcmp(r[i]->reply + 3, fr.m[i] + 3, fr.len[i] - 3) == 0);
		/* Reverse order of answers, reverse order of callbacks. */
		if (i > 0)
			CHECK(r[i]->seq < r[i - 1]->seq);
	}
	CHECK(stats.st_bad_replies == 0);
	CHECK(mux_inflight() == 0);
	teardown();
}

/* IDs are unique per connection, not across connections. */
static void
test_id_per_conn(void)
{
	struct rec	*a, *b, *c;

	setup(1, 2, 8);
	/* The next draws are 0x4242 twice, then 0x0707. */
	cn.ids[0] = 0x0707;
	cn.ids[1] = 0x4242;
	cn.ids[2] = 0x4242;
	cn.nids = 3;
	a = sendname(1, "a");
	b = sendname(2, "b");
	flush_cb(loop, NULL, 0);
	/* Two connections: the same ID may serve on both. */
	CHECK(att_of(a)->a_conn != att_of(b)->a_conn);
	CHECK(att_of(a)->a_upid == 0x4242 && att_of(b)->a_upid == 0x4242);
	/* On one connection, an ID in flight is drawn again. */
	cn.ids[0] = 0x0707;
	cn.ids[1] = 0x4242;
	cn.nids = 2;
	c = sendname(3, "c");
	flush_cb(loop, NULL, 0);
	CHECK(att_of(c)->a_conn == att_of(a)->a_conn);
	CHECK(att_of(c)->a_upid == 0x0707);
	CHECK(hash_find(att_of(a)->a_conn, 0x4242) == att_of(a));
	CHECK(hash_find(att_of(c)->a_conn, 0x0707) == att_of(c));
	/* The batch empty, fresh IDs come from random_bytes. */
	CHECK(cn.nids == 0);
	sendname(4, "d");
	flush_cb(loop, NULL, 0);
	CHECK(cn.nids == 255);
	teardown();
}

/*
 * Replies with an unknown ID, another question, or an ID from another
 * connection are dropped; so is a duplicate.  QR=0 or a frame shorter
 * than a header is no DNS at all: the stream is closed.
 */
static void
test_bad_replies(void)
{
	struct conn	*c;
	struct rec	*a, *b;
	uint8_t		 qa[512], other[512];
	size_t		 la, olen;
	uint16_t	 id;

	setup(1, 1, 8);
	c = &mux.ups[0].up_conns[0];
	a = sendname(7, "good");
	flush_cb(loop, NULL, 0);
	CHECK(read_frames(peer[0][0]) == 1);
	memcpy(qa, fr.m[0], fr.len[0]);
	la = fr.len[0];
	id = dns_get16(qa);
	reply(peer[0][0], qa, la, (uint16_t)(id + 1), F_QR);
	olen = mkquery(other, id, "evil", 0);
	reply(peer[0][0], other, olen, id, F_QR);
	/* Cut inside its question: not the same question either. */
	dns_put16(other, (uint16_t)(la - 2));
	memcpy(other + 2, qa, la - 2);
	dns_put16(other + 2, id);
	other[4] |= F_QR;
	if (send(peer[0][0], other, la, 0) != (ssize_t)la)
		abort();
	conn_input(c, now_ms());
	CHECK(a->calls == 0);
	CHECK(stats.st_bad_replies == 3);
	CHECK(c->c_state == CONN_READY && c->c_inflight == 1);
	/* The question's case may differ (0x20 randomisation upstream). */
	memcpy(other, qa, la);
	memcpy(other + 13, "GOOD", 4);
	reply(peer[0][0], other, la, id, F_QR);
	conn_input(c, now_ms());
	CHECK(a->calls == 1 && a->st == MUX_ANSWER);
	CHECK(a->len == la && memcmp(a->reply + 13, "GOOD", 4) == 0);
	/* The same answer again is a duplicate: dropped, no second call. */
	reply(peer[0][0], other, la, id, F_QR);
	conn_input(c, now_ms());
	CHECK(a->calls == 1);
	CHECK(stats.st_bad_replies == 4);
	CHECK(c->c_state == CONN_READY);

	/* QR=0 is not a response at all: the stream is dropped. */
	b = sendname(8, "two");
	flush_cb(loop, NULL, 0);
	CHECK(read_frames(peer[0][0]) == 1);
	reply(peer[0][0], fr.m[0], fr.len[0], dns_get16(fr.m[0]), 0);
	conn_input(c, now_ms());
	CHECK(b->calls == 0);
	CHECK(stats.st_bad_replies == 5);
	CHECK(c->c_state != CONN_READY);
	/* Requeued, and it was written once. */
	CHECK(mux_inflight() == 1 && pq_of(b)->pq_sends == 1);
	/* It waits for a redial, which mux.c started itself. */
	CHECK(c->c_state == CONN_CONNECTING && stats.st_reconnects == 1);
	CHECK(accept_dial(0) == c);
	conn_write_cb(loop, &c->c_wio, EV_WRITE);
	CHECK(c->c_state == CONN_READY && c->c_inflight == 1);
	flush_cb(loop, NULL, 0);
	CHECK(answer_all(0, 0) == 1);
	CHECK(b->calls == 1 && b->st == MUX_ANSWER);

	/* A frame shorter than a header closes the stream too. */
	if (send(peer[0][0], "\0\5hello", 7, 0) != 7)
		abort();
	conn_input(c, now_ms());
	CHECK(c->c_state == CONN_IDLE && stats.st_bad_replies == 6);
	CHECK(mux.nwait == 0 && stats.st_reconnects == 1);
	teardown();

	/* An ID in flight on another connection does not answer. */
	setup(1, 2, 8);
	a = sendname(9, "x");
	flush_cb(loop, NULL, 0);
	c = att_of(a)->a_conn;
	CHECK(c == &mux.ups[0].up_conns[0]);
	CHECK(read_frames(peer[0][0]) == 1);
	reply(peer[0][1], fr.m[0], fr.len[0], dns_get16(fr.m[0]), F_QR);
	conn_input(&mux.ups[0].up_conns[1], now_ms());
	CHECK(a->calls == 0 && stats.st_bad_replies == 1);
	CHECK(mux.ups[0].up_conns[1].c_state == CONN_READY);
	reply(peer[0][0], fr.m[0], fr.len[0], dns_get16(fr.m[0]), F_QR);
	conn_input(c, now_ms());
	CHECK(a->calls == 1 && a->st == MUX_ANSWER);
	teardown();
}

/* A reply split over reads is put together; several in one read all go. */
static void
test_frames(void)
{
	struct conn	*c;
	struct rec	*a, *b;
	uint8_t		 buf[1100];
	size_t		 n = 0, k;

	setup(1, 1, 8);
	c = &mux.ups[0].up_conns[0];
	a = sendname(1, "split");
	b = sendname(2, "other");
	flush_cb(loop, NULL, 0);
	CHECK(read_frames(peer[0][0]) == 2);
	for (k = 0; k < 2; k++) {
		dns_put16(buf + n, (uint16_t)fr.len[k]);
		memcpy(buf + n + 2, fr.m[k], fr.len[k]);
		buf[n + 4] |= F_QR;
		n += 2 + fr.len[k];
	}
	/* One byte of the length first, then up to the middle of a's. */
	if (send(peer[0][0], buf, 1, 0) != 1)
		abort();
	conn_input(c, now_ms());
	CHECK(a->calls == 0 && c->c_inlen == 1);
	if (send(peer[0][0], buf + 1, 10, 0) != 10)
		abort();
	conn_input(c, now_ms());
	CHECK(a->calls == 0 && c->c_inlen == 11);
	if (send(peer[0][0], buf + 11, n - 11, 0) != (ssize_t)(n - 11))
		abort();
	conn_input(c, now_ms());
	CHECK(a->calls == 1 && b->calls == 1 && c->c_inlen == 0);
	CHECK(a->st == MUX_ANSWER && b->st == MUX_ANSWER && a->seq < b->seq);
	CHECK(c->c_reads == 3);
	teardown();
}

/* Queries ready together leave in one write each, spread over conns. */
static void
test_pipelining_and_spread(void)
{
	struct conn	*c0, *c1;
	int		 i;

	setup(1, 2, 100);
	c0 = &mux.ups[0].up_conns[0];
	c1 = &mux.ups[0].up_conns[1];
	for (i = 0; i < 100; i++)
		sendname((uint16_t)i, "x");
	CHECK(c0->c_inflight == 0 && c1->c_inflight == 0);
	flush_cb(loop, NULL, 0);
	/* Fewest in flight first: the two connections share the load. */
	CHECK(c0->c_inflight == 50 && c1->c_inflight == 50);
	/* Framed and written out whole in this one flush. */
	CHECK(c0->c_queued == c0->c_written && c0->c_outlen == 0);
	CHECK(!c0->c_dirty && TAILQ_EMPTY(&cn.dirty));
	CHECK(read_frames(peer[0][0]) == 50);
	CHECK(read_frames(peer[0][1]) == 50);
	/* Past the per-connection limit, queries wait in the queue. */
	for (i = 0; i < 150; i++)
		sendname((uint16_t)i, "y");
	flush_cb(loop, NULL, 0);
	CHECK(mux.nwait == 50);
	CHECK(c0->c_inflight == 100 && c1->c_inflight == 100);
	/* Answers make room, and the waiting ones go at once. */
	CHECK(answer_all(0, 0) == 50);	/* the second 50 on c0 */
	CHECK(c0->c_inflight == 100 && mux.nwait == 0);
	teardown();
}

/* A full pool refuses with -1 and never calls back for it. */
static void
test_overload(void)
{
	struct rec	*r[8];
	uint8_t		 q[600];
	size_t		 len;
	int		 i;

	setup(1, 1, 2);
	CHECK(mux_capacity(&cfg) == 4 && mux.npool == 4);
	/* Too long or no question: refused without taking a slot. */
	len = mkbig(q, 1, "big", UPQUERY_MAX + 1);
	CHECK(sendq(q, len, now_ms() + 60000)->handle == -1);
	CHECK(sendq(q, DNS_HDRLEN, now_ms() + 60000)->handle == -1);
	q[12] = 0xc0;		/* a compressed question */
	CHECK(sendq(q, 30, now_ms() + 60000)->handle == -1);
	len = mkbig(q, 1, "big", UPQUERY_MAX);
	r[0] = sendq(q, len, now_ms() + 60000);
	CHECK(r[0]->used);
	for (i = 1; i < 7; i++)
		r[i] = sendname((uint16_t)i, "o");
	for (i = 0; i < 7; i++)
		CHECK(r[i]->used == (i < 4));
	CHECK(r[0]->handle != r[1]->handle && r[2]->handle != r[3]->handle);
	CHECK(mux_inflight() == mux.npool);
	flush_cb(loop, NULL, 0);
	for (i = 0; i < 7; i++)
		CHECK(r[i]->calls == 0);
	/* One answered: room for one more. */
	CHECK(read_frames(peer[0][0]) == 2);
	CHECK(fr.len[0] == UPQUERY_MAX);
	reply(peer[0][0], fr.m[0], fr.len[0], dns_get16(fr.m[0]), F_QR);
	conn_input(&mux.ups[0].up_conns[0], now_ms());
	CHECK(r[0]->calls == 1 && mux_inflight() == mux.npool - 1);
	CHECK(sendname(9, "again")->used);
	CHECK(!sendname(10, "full")->used);
	teardown();
}

/*
 * No callback runs inside mux_send, even when nothing is reachable:
 * the failure comes from the prepare watcher.
 */
static void
test_unreachable_later(void)
{
	struct upstream	*up;
	struct rec	*a, *b, *c[10];
	int		 i;

	setup(1, 1, 8);
	up = &mux.ups[0];
	make_idle(0, 0);
	up->up_fails = 1;
	up->up_backoff_ms = 1000;
	up->up_retry_at = now_ms() + 60000;
	a = sendname(1, "a");
	CHECK(a->used && a->calls == 0 && mux.nwait == 1);
	flush_cb(loop, NULL, 0);
	CHECK(a->calls == 1 && a->st == MUX_UNREACHABLE);
	CHECK(stats.st_reconnects == 0 && up->up_conns[0].c_state == CONN_IDLE);
	/* The real loop does it in its next iteration. */
	b = sendname(2, "b");
	CHECK(b->calls == 0);
	ev_run(loop, EVRUN_NOWAIT);
	CHECK(b->calls == 1 && b->st == MUX_UNREACHABLE);
	/* Many at once: each once, in the order sent. */
	for (i = 0; i < 10; i++)
		c[i] = sendname((uint16_t)i, "c");
	for (i = 0; i < 10; i++)
		CHECK(c[i]->calls == 0);
	flush_cb(loop, NULL, 0);
	for (i = 0; i < 10; i++) {
		CHECK(c[i]->calls == 1 && c[i]->st == MUX_UNREACHABLE);
		if (i > 0)
			CHECK(c[i]->seq == c[i - 1]->seq + 1);
	}
	CHECK(mux_inflight() == 0);
	/* A dial that fails at once: the upstream backs off, then fails. */
	up->up_fails = 0;
	up->up_backoff_ms = 0;
	up->up_retry_at = 0;
	cfg.cf_up[0].uc_addrlen = 1;	/* connect says EINVAL */
	a = sendname(3, "a");
	CHECK(a->calls == 0);
	flush_cb(loop, NULL, 0);
	CHECK(a->calls == 1 && a->st == MUX_UNREACHABLE);
	CHECK(up->up_fails == 1 && up->up_backoff_ms == BACKOFF_MIN_MS);
	cfg.cf_up[0].uc_addrlen = sizeof(struct sockaddr_in);
	teardown();
}

/* A callback may send again; that send is called back later, not inside. */
static void
test_send_from_callback(void)
{
	struct rec	*a, *b;
	uint8_t		 q[512];

	setup(1, 1, 8);
	a = sendq(q, mkquery(q, 1, "again", 0), now_ms() + 60000);
	a->resend = 1;
	flush_cb(loop, NULL, 0);
	CHECK(answer_all(0, 0) == 1);
	CHECK(a->calls == 1 && a->child != NULL && a->child->used);
	/* Sent again, not called back yet; it took the slot a freed. */
	CHECK(a->child->calls == 0 && a->child->handle == a->handle);
	/* conn_input's own dispatch put it on the connection. */
	CHECK(mux.nwait == 0 && mux.ups[0].up_conns[0].c_inflight == 1);
	flush_cb(loop, NULL, 0);
	CHECK(read_frames(peer[0][0]) == 1);
	drain();
	CHECK(a->child->calls == 1 && a->child->st == MUX_TIMEOUT);
	/* Silent since it was written: gone. */
	CHECK(mux.ups[0].up_conns[0].c_state == CONN_IDLE);
	/*
	 * When nothing is reachable, the resend fails at the next pass, not
	 * in the same one: a sender that always resends cannot spin it.
	 */
	mux.ups[0].up_fails = 1;
	mux.ups[0].up_retry_at = now_ms() + 60000;
	b = sendq(q, mkquery(q, 2, "twice", 0), now_ms() + 60000);
	b->resend = 1;
	flush_cb(loop, NULL, 0);
	CHECK(b->calls == 1 && b->st == MUX_UNREACHABLE);
	CHECK(b->child != NULL && b->child->used);
	CHECK(b->child->calls == 0);
	flush_cb(loop, NULL, 0);
	CHECK(b->child->calls == 1 && b->child->st == MUX_UNREACHABLE);
	CHECK(b->child->seq == b->seq + 1);
	teardown();
}

/* At the deadline: MUX_TIMEOUT once, and a silent connection is replaced. */
static void
test_deadline(void)
{
	struct conn	*c;
	struct rec	*a, *b;
	struct pq	*pq;

	setup(1, 1, 8);
	c = &mux.ups[0].up_conns[0];
	a = sendname(42, "slow");
	b = sendname(43, "slow2");
	flush_cb(loop, NULL, 0);
	CHECK(c->c_inflight == 2);
	TAILQ_FOREACH(pq, &mux.deadlines, pq_dlink)
		pq->pq_deadline = now_ms() - 1;
	fire_deadlines();
	CHECK(a->calls == 1 && a->st == MUX_TIMEOUT);
	CHECK(b->calls == 1 && b->st == MUX_TIMEOUT);
	CHECK(a->seq < b->seq);
	CHECK(c->c_state != CONN_READY);	/* condemned */
	CHECK(mux_inflight() == 0);
	CHECK(!ev_is_active(&mux.deadline_timer));
	/* Nothing is called twice. */
	fire_deadlines();
	CHECK(a->calls == 1 && b->calls == 1);
	teardown();
}

/* A connection that spoke since the query went out is kept. */
static void
test_deadline_not_silent(void)
{
	struct conn	*c;
	struct rec	*a;
	struct pq	*pq;

	setup(1, 1, 8);
	c = &mux.ups[0].up_conns[0];
	a = sendname(44, "late");
	flush_cb(loop, NULL, 0);
	c->c_reads++;
	TAILQ_FOREACH(pq, &mux.deadlines, pq_dlink)
		pq->pq_deadline = now_ms() - 1;
	fire_deadlines();
	CHECK(a->calls == 1 && a->st == MUX_TIMEOUT);
	CHECK(c->c_state == CONN_READY);
	/* Nothing in flight any more: it may now close when idle. */
	CHECK(ev_is_active(&c->c_timer));
	conn_timer_cb(loop, &c->c_timer, EV_TIMER);
	CHECK(c->c_state == CONN_IDLE);
	teardown();
}

/* Whether fd asked for TCP Fast Open on connect, or -1: no such option. */
static int
fastopen_on(int fd)
{
	int		 v = -1;
	socklen_t	 l = sizeof(v);

	if (getsockopt(fd, IPPROTO_TCP, TCP_FASTOPEN_CONNECT, &v, &l) == -1)
		return -1;
	return v;
}

/*
 * Fast Open turned off for an upstream after a path dropped a SYN with
 * data stays off for its dials, and comes back with a network change,
 * whose path may take it.
 */
static void
test_fastopen_off(void)
{
	struct upstream	*up;
	struct conn	*c;
	int64_t		 t = now_ms();
	int		 on;

	setup(1, 2, 8);
	up = &mux.ups[0];
	make_idle(0, 1);
	up->up_tfo_off_until = t + TFO_OFF_MS;
	CHECK(upstream_dial(up, t) == 0 && (c = accept_dial(0)) != NULL);
	on = c != NULL ? fastopen_on(c->c_fd) : -1;
	if (on == -1) {
		printf("skip test_fastopen_off: no TCP_FASTOPEN_CONNECT\n");
		teardown();
		return;
	}
	CHECK(on == 0);
	mux_netchange(1, t);
	CHECK(up->up_tfo_off_until == 0);
	CHECK(upstream_dial(up, t) == 0 && (c = accept_dial(0)) != NULL);
	CHECK(c != NULL && fastopen_on(c->c_fd) == 1);
	teardown();
}

/* The real timer: a send times out at its deadline, not before. */
static void
test_deadline_timer(void)
{
	struct rec	*a;
	uint8_t		 q[512];
	int64_t		 t0 = now_ms();

	setup(1, 1, 8);
	a = sendq(q, mkquery(q, 1, "t", 0), t0 + 50);
	CHECK(ev_is_active(&mux.deadline_timer));
	CHECK(spin(&a->calls, 2000));
	CHECK(a->st == MUX_TIMEOUT && a->now >= t0 + 50 && a->now < t0 + 1000);
	/* Written and unanswered, and silent: the connection went. */
	CHECK(mux.ups[0].up_conns[0].c_state != CONN_READY);
	teardown();
}

static int
deadlines_sorted(int *n)
{
	struct pq	*pq, *prev = NULL;
	int		 ok = 1;

	*n = 0;
	TAILQ_FOREACH(pq, &mux.deadlines, pq_dlink) {
		if (prev != NULL && prev->pq_deadline > pq->pq_deadline)
			ok = 0;
		prev = pq;
		(*n)++;
	}
	return ok;
}

/* mux_extend moves a deadline later, keeping the list in order. */
static void
test_extend(void)
{
	struct rec	*a, *b, *r[40];
	struct conn	*c;
	struct att	*at;
	uint8_t		 q[512];
	int64_t		 t0 = now_ms(), want[40], d;
	uint32_t	 x = 12345;
	int		 i, k, n, ok;

	/* A (100) and B (200); A moved to 600 times out after B. */
	setup(1, 1, 8);
	c = &mux.ups[0].up_conns[0];
	a = sendq(q, mkquery(q, 1, "a", 0), t0 + 100);
	b = sendq(q, mkquery(q, 2, "b", 0), t0 + 200);
	flush_cb(loop, NULL, 0);
	c->c_reads++;		/* not silent: the connection stays */
	in_send = 1;		/* no callback inside mux_extend either */
	mux_extend(a->handle, t0 + 600, now_ms());
	in_send = 0;
	CHECK(TAILQ_FIRST(&mux.deadlines) == pq_of(b));
	CHECK(TAILQ_LAST(&mux.deadlines, pqlist) == pq_of(a));
	CHECK(spin(&b->calls, 2000));
	CHECK(b->st == MUX_TIMEOUT && b->now >= t0 + 200);
	CHECK(a->calls == 0);
	CHECK(spin(&a->calls, 2000));
	CHECK(a->st == MUX_TIMEOUT && a->now >= t0 + 600);
	CHECK(b->seq < a->seq);
	CHECK(c->c_state == CONN_READY);
	teardown();

	/* The head extended but still the head: its new deadline holds. */
	setup(1, 1, 8);
	t0 = now_ms();
	c = &mux.ups[0].up_conns[0];
	a = sendq(q, mkquery(q, 1, "a", 0), t0 + 100);
	b = sendq(q, mkquery(q, 2, "b", 0), t0 + 600);
	flush_cb(loop, NULL, 0);
	c->c_reads++;
	mux_extend(a->handle, t0 + 200, now_ms());
	CHECK(TAILQ_FIRST(&mux.deadlines) == pq_of(a));
	CHECK(spin(&a->calls, 2000));
	CHECK(a->st == MUX_TIMEOUT && a->now >= t0 + 200 && a->now < t0 + 500);
	CHECK(b->calls == 0);
	teardown();

	/* Random deadlines and random extends: always sorted. */
	setup(1, 1, 64);
	for (i = 0; i < 40; i++) {
		x = x * 1103515245 + 12345;
		want[i] = t0 + 60000 + (x >> 8) % 5000;
		r[i] = sendq(q, mkquery(q, (uint16_t)i, "r", 0), want[i]);
	}
	CHECK(deadlines_sorted(&n) && n == 40);
	flush_cb(loop, NULL, 0);
	ok = 1;
	for (k = 0; k < 400; k++) {
		x = x * 1103515245 + 12345;
		i = (int)((x >> 8) % 40);
		x = x * 1103515245 + 12345;
		d = t0 + 60000 + (x >> 8) % 8000;
		mux_extend(r[i]->handle, d, now_ms());
		if (d > want[i])
			want[i] = d;	/* never earlier */
		ok &= deadlines_sorted(&n) && n == 40;
		ok &= pq_of(r[i])->pq_deadline == want[i];
	}
	CHECK(ok);
	for (i = 0; i < 40; i++)
		CHECK(pq_of(r[i])->pq_deadline == want[i]);
	teardown();

	/* An extended send keeps its place, ID and connection. */
	setup(1, 1, 8);
	c = &mux.ups[0].up_conns[0];
	for (i = 0; i < 3; i++)
		r[i] = sendq(q, mkquery(q, (uint16_t)i, i == 1 ? "mid" : "end",
		    0), t0 + 60000 + i);
	flush_cb(loop, NULL, 0);
	k = att_of(r[1])->a_upid;
	mux_extend(r[1]->handle, t0 + 90000, now_ms());
	mux_extend(r[0]->handle, t0 + 1, now_ms());	/* earlier: no change */
	CHECK(pq_of(r[0])->pq_deadline == t0 + 60000);
	CHECK(att_of(r[1])->a_conn == c && att_of(r[1])->a_upid == k);
	i = 0;
	TAILQ_FOREACH(at, &c->c_atts, a_link)
		CHECK(at == att_of(r[i++]));
	CHECK(i == 3 && mux.nwait == 0);
	CHECK(c->c_outlen == 0 && read_frames(peer[0][0]) == 3);
	reply(peer[0][0], fr.m[1], fr.len[1], dns_get16(fr.m[1]), F_QR);
	conn_input(c, now_ms());
	CHECK(r[1]->calls == 1 && r[1]->st == MUX_ANSWER);
	CHECK(r[0]->calls == 0 && r[2]->calls == 0);
	/* A waiting one extended stays in the queue, in its place. */
	for (i = 3; i < 6; i++)
		r[i] = sendname((uint16_t)i, "w");
	mux_extend(r[4]->handle, t0 + 99999, now_ms());
	CHECK(TAILQ_NEXT(pq_of(r[3]), pq_link) == pq_of(r[4]));
	CHECK(TAILQ_NEXT(pq_of(r[4]), pq_link) == pq_of(r[5]));
	teardown();
}

/*
 * A send whose deadline comes before the one the timer is set for (a
 * later deadline sent first, or extended) must still end at its own.
 */
static void
test_deadline_earlier_send(void)
{
	struct rec	*a, *b;
	uint8_t		 q[512];
	int64_t		 t0 = now_ms();

	setup(1, 1, 8);
	mux.ups[0].up_conns[0].c_reads++;
	a = sendq(q, mkquery(q, 1, "late", 0), t0 + 1000);
	b = sendq(q, mkquery(q, 2, "soon", 0), t0 + 100);
	CHECK(TAILQ_FIRST(&mux.deadlines) == pq_of(b));
	flush_cb(loop, NULL, 0);
	mux.ups[0].up_conns[0].c_reads++;
	CHECK(spin(&b->calls, 2000));
	CHECK(b->st == MUX_TIMEOUT);
	/* It may be a little late, not 900 ms late. */
	CHECK(b->now < t0 + 700);
	CHECK(a->calls == 0 || b->seq < a->seq);
	teardown();
}

/* A closed connection's queries go out again, in their order. */
static void
test_requeue_on_close(void)
{
	struct rec	*r[6];
	struct conn	*c0, *c1;
	struct pq	*pq;
	int		 i, order[] = { 0, 2, 4, 5 };

	setup(1, 2, 2);
	c0 = &mux.ups[0].up_conns[0];
	c1 = &mux.ups[0].up_conns[1];
	for (i = 0; i < 6; i++) {
		char name[16];

		snprintf(name, sizeof(name), "q%d", i);
		r[i] = sendname((uint16_t)i, name);
	}
	flush_cb(loop, NULL, 0);
	CHECK(att_of(r[0])->a_conn == c0 && att_of(r[1])->a_conn == c1);
	CHECK(att_of(r[2])->a_conn == c0 && att_of(r[3])->a_conn == c1);
	CHECK(mux.nwait == 2);
	lose(c0);
	/* Back at the head of the queue, before those already waiting. */
	CHECK(mux.nwait == 4);
	i = 0;
	TAILQ_FOREACH(pq, &mux.waitq, pq_link)
		CHECK(i < 4 && pq == pq_of(r[order[i++]]));
	for (i = 0; i < 6; i++)
		CHECK(r[i]->calls == 0);
	CHECK(pq_of(r[0])->pq_sends == 1 && pq_of(r[4])->pq_sends == 0);
	/* c1's answers make room there: q0 then q2 take it. */
	CHECK(answer_all(0, 1) == 2);
	CHECK(r[1]->calls == 1 && r[3]->calls == 1);
	CHECK(att_of(r[0])->a_conn == c1 && att_of(r[2])->a_conn == c1);
	flush_cb(loop, NULL, 0);
	CHECK(read_frames(peer[0][1]) == 2);
	CHECK(memcmp(fr.m[0] + 13, "q0", 2) == 0);
	CHECK(memcmp(fr.m[1] + 13, "q2", 2) == 0);
	/* The rest wait for the redial of c0, then go there in order. */
	CHECK(c0->c_state == CONN_CONNECTING);
	CHECK(accept_dial(0) == c0);
	conn_write_cb(loop, &c0->c_wio, EV_WRITE);
	flush_cb(loop, NULL, 0);
	CHECK(read_frames(peer[0][0]) == 2);
	CHECK(memcmp(fr.m[0] + 13, "q4", 2) == 0);
	CHECK(memcmp(fr.m[1] + 13, "q5", 2) == 0);
	for (i = 0; i < fr.n; i++)
		reply(peer[0][0], fr.m[i], fr.len[i], dns_get16(fr.m[i]), F_QR);
	conn_input(c0, now_ms());
	CHECK(r[4]->calls == 1 && r[5]->calls == 1);
	CHECK(r[4]->st == MUX_ANSWER && r[5]->st == MUX_ANSWER);
	teardown();
}

/* A query that every connection dies with fails after PQ_MAX_SENDS. */
static void
test_query_of_death(void)
{
	struct conn	*c;
	struct rec	*a, *b = NULL;
	int		 i;

	setup(1, 1, 8);
	c = &mux.ups[0].up_conns[0];
	a = sendname(77, "death");
	flush_cb(loop, NULL, 0);
	for (i = 1; i < PQ_MAX_SENDS; i++) {
		CHECK(c->c_inflight == (i == 1 ? 1 : 2));
		CHECK(c->c_written == c->c_queued);
		lose(c);
		CHECK(a->calls == 0);
		CHECK(pq_of(a)->pq_sends == i);
		revive(0, 0);
		dispatch(now_ms());
		if (b == NULL)
			b = sendname(78, "bystander");
		flush_cb(loop, NULL, 0);
	}
	CHECK(c->c_inflight == 2);
	lose(c);
	CHECK(a->calls == 1 && a->st == MUX_FAILED);
	/* Written twice only: it goes out again. */
	CHECK(b->calls == 0 && pq_of(b)->pq_sends == 2 && mux.nwait == 1);
	CHECK(mux_inflight() == 1);
	revive(0, 0);
	dispatch(now_ms());
	flush_cb(loop, NULL, 0);
	CHECK(answer_all(0, 0) == 1);
	CHECK(b->calls == 1 && b->st == MUX_ANSWER);
	CHECK(a->calls == 1);
	teardown();
}

/* Framed but never written: a close does not count as a send. */
static void
test_unwritten_not_counted(void)
{
	struct conn	*c;
	struct rec	*a;
	int		 i;

	setup(1, 1, 8);
	c = &mux.ups[0].up_conns[0];
	a = sendname(5, "queued");
	for (i = 0; i < 2 * PQ_MAX_SENDS; i++) {
		dispatch(now_ms());
		CHECK(att_of(a)->a_conn == c && c->c_outlen > 0);
		CHECK(c->c_written == 0 && c->c_dirty);
		lose(c);
		CHECK(!c->c_dirty && TAILQ_EMPTY(&cn.dirty));
		CHECK(a->calls == 0 && pq_of(a)->pq_sends == 0);
		revive(0, 0);
	}
	flush_cb(loop, NULL, 0);
	CHECK(answer_all(0, 0) == 1);
	CHECK(a->calls == 1 && a->st == MUX_ANSWER);
	teardown();
}

/* Makes conn (0, 0) one whose far end reads next to nothing. */
static void
small_buffers(void)
{
	int	 one = 1;

	setsockopt(mux.ups[0].up_conns[0].c_fd, SOL_SOCKET, SO_SNDBUF, &one,
	    sizeof(one));
	setsockopt(peer[0][0], SOL_SOCKET, SO_RCVBUF, &one, sizeof(one));
}

/*
 * A socket that takes only part of the output: the queries that left
 * count a send each time, the rest (and the one cut in two) do not, so
 * after PQ_MAX_SENDS closes only those written each time fail.
 */
static void
test_written_vs_queued(void)
{
	struct rec	*r[20];
	struct conn	*c;
	struct att	*at;
	uint8_t		 q[512];
	int		 times[20], i, round, nw, partial, failed, waiting;

	setup(1, 1, 64);
	c = &mux.ups[0].up_conns[0];
	for (i = 0; i < 20; i++) {
		r[i] = sendq(q, mkbig(q, (uint16_t)i, "big", 498),
		    now_ms() + 60000);
		times[i] = 0;
	}
	for (round = 1; round <= PQ_MAX_SENDS; round++) {
		small_buffers();
		if (round == 1)
			flush_cb(loop, NULL, 0);
		else {
			dispatch(now_ms());
			flush_cb(loop, NULL, 0);
		}
		CHECK(c->c_queued == 20 * 500);
		CHECK(c->c_written > 0 && c->c_written < c->c_queued);
		CHECK(c->c_outlen == c->c_queued - c->c_written);
		/* Waiting for the socket to drain. */
		CHECK(ev_is_active(&c->c_wio));
		nw = partial = 0;
		TAILQ_FOREACH(at, &c->c_atts, a_link) {
			if (at->a_end <= c->c_written)
				nw++;
			else if (at->a_end - 500 < c->c_written)
				partial++;
		}
		CHECK(nw > 0 && nw < 20 && partial <= 1);
		for (i = 0; i < 20; i++)
			if (att_of(r[i])->a_end <= c->c_written)
				times[i]++;
		lose(c);
		CHECK(!ev_is_active(&c->c_wio));
		if (round < PQ_MAX_SENDS) {
			for (i = 0; i < 20; i++) {
				CHECK(r[i]->calls == 0);
				CHECK(pq_of(r[i])->pq_sends == times[i]);
			}
			revive(0, 0);
		}
	}
	failed = waiting = 0;
	for (i = 0; i < 20; i++) {
		if (times[i] == PQ_MAX_SENDS) {
			CHECK(r[i]->calls == 1 && r[i]->st == MUX_FAILED);
			failed++;
		} else {
			CHECK(r[i]->calls == 0);
			waiting++;
		}
	}
	CHECK(failed > 0 && waiting > 0 && mux.nwait == waiting);
	/* A peer that reads gets the rest, still in order, and answers. */
	revive(0, 0);
	dispatch(now_ms());
	flush_cb(loop, NULL, 0);
	CHECK(c->c_written == c->c_queued);
	CHECK(read_frames(peer[0][0]) == waiting);
	round = 0;
	for (i = 0; i < 20; i++) {
		if (r[i]->calls != 0)
			continue;
		CHECK(round < fr.n &&
		    dns_get16(fr.m[round]) == att_of(r[i])->a_upid);
		round++;
	}
	for (i = 0; i < fr.n; i++)
		reply(peer[0][0], fr.m[i], fr.len[i], dns_get16(fr.m[i]), F_QR);
	conn_input(c, now_ms());
	for (i = 0; i < 20; i++)
		if (times[i] < PQ_MAX_SENDS)
			CHECK(r[i]->calls == 1 && r[i]->st == MUX_ANSWER);
	teardown();
}

/* Failed dials back off from 250 ms doubling to 30 s, with jitter. */
static void
test_backoff(void)
{
	struct upstream	*up;
	struct rec	*a;
	int64_t		 now = now_ms();
	int		 i, expect = BACKOFF_MIN_MS;

	setup(2, 1, 8);
	up = &mux.ups[0];
	for (i = 0; i < 12; i++) {
		upstream_failed(up, "test", now);
		CHECK(up->up_fails == i + 1);
		CHECK(up->up_backoff_ms == expect);
		CHECK(up->up_retry_at <= now + expect);
		CHECK(up->up_retry_at >= now + expect - expect / 4);
		expect = expect * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS :
		    expect * 2;
	}
	/* Backing off, it is passed over while the other is healthy. */
	make_idle(0, 0);
	a = sendname(1, "b");		/* one waiting */
	CHECK(pick_upstream(now, 0) == &mux.ups[1]);
	mux.ups[1].up_fails = 1;
	mux.ups[1].up_retry_at = now + 1000;
	make_idle(1, 0);
	CHECK(pick_upstream(now, 0) == NULL);
	/* Once its period is over, one probe may go. */
	CHECK(pick_upstream(up->up_retry_at, 0) == up);
	flush_cb(loop, NULL, 0);
	CHECK(a->calls == 1 && a->st == MUX_UNREACHABLE);
	teardown();
}

/*
 * One probe per backoff period: queries wait for it instead of failing;
 * a failed probe doubles the backoff and fails them, a good one ends it.
 */
static void
test_probe(void)
{
	struct upstream	*up;
	struct conn	*c;
	struct rec	*a, *b, *d;
	int64_t		 now = now_ms();

	setup(1, 1, 8);
	up = &mux.ups[0];
	c = &up->up_conns[0];
	make_idle(0, 0);
	up->up_fails = 2;
	up->up_backoff_ms = 500;
	up->up_retry_at = now - 1;
	a = sendname(1, "p1");
	flush_cb(loop, NULL, 0);
	CHECK(c->c_state == CONN_CONNECTING && stats.st_reconnects == 1);
	CHECK(up->up_retry_at >= now + 500);
	CHECK(a->calls == 0);
	/* Another query waits on the same probe; no second dial. */
	b = sendname(2, "p2");
	flush_cb(loop, NULL, 0);
	CHECK(b->calls == 0 && stats.st_reconnects == 1 && mux.nwait == 2);
	/* The probe fails: both fail, the backoff doubles. */
	conn_end(c, CONN_END_DIAL, "test", now_ms());
	CHECK(a->calls == 1 && a->st == MUX_UNREACHABLE);
	CHECK(b->calls == 1 && b->st == MUX_UNREACHABLE);
	CHECK(up->up_fails == 3 && up->up_backoff_ms == 1000);
	/* The next period's probe gets through. */
	up->up_retry_at = now_ms() - 1;
	d = sendname(3, "p3");
	flush_cb(loop, NULL, 0);
	CHECK(c->c_state == CONN_CONNECTING && stats.st_reconnects == 2);
	CHECK(accept_dial(0) == c);
	conn_write_cb(loop, &c->c_wio, EV_WRITE);
	CHECK(c->c_state == CONN_READY);
	CHECK(up->up_fails == 0 && up->up_backoff_ms == 0);
	CHECK(c->c_inflight == 1 && d->calls == 0);
	flush_cb(loop, NULL, 0);
	CHECK(answer_all(0, 0) == 1);
	CHECK(d->calls == 1 && d->st == MUX_ANSWER);
	teardown();
}

/* Makes every attempt timeout due now and runs the timer. */
static void
expire_attempts(void)
{
	struct att	*at;

	TAILQ_FOREACH(at, &mux.atimeouts, a_tlink)
		at->a_due = now_ms() - 1;
	fire_attempts();
}

/*
 * One upstream with `conns` slots, the first `up` of them connected, a
 * 30 ms smoothed RTT and, when path_us is not 0, TCP's round trip.
 */
static struct upstream *
one_upstream(int conns, int up, int64_t path_us)
{
	struct upstream	*u;
	int		 i;

	setup(1, conns, 8);
	for (i = up; i < conns; i++)
		make_idle(0, i);
	u = &mux.ups[0];
	u->up_srtt = 30000;
	u->up_sampled = now_ms();
	if (path_us != 0)
		health_path_rtt(u, path_us);
	return u;
}

/*
 * Two upstreams measured at t, the first at 1 ms and the second at 5:
 * queries go to the first.
 */
static void
two_measured(int64_t t)
{
	setup(2, 1, 8);
	mux.ups[0].up_srtt = 1000;
	mux.ups[1].up_srtt = 5000;
	mux.ups[0].up_sampled = mux.ups[1].up_sampled = t;
}

/*
 * An answer that came while dnsfwd was busy past the attempt timeout,
 * though not stalled, is read before the timeout is judged (TIMER_PRI):
 * the query is answered, the upstream charged nothing, no hedge sent.
 */
static void
test_timer_after_io(void)
{
	struct rec	*a;
	int64_t		 t;
	uint64_t	 hedges = stats.st_hedges;

	two_measured(now_ms());
	a = sendname(5, "busy");
	flush_cb(loop, NULL, 0);
	CHECK(read_frames(peer[0][0]) == 1);
	t = now_ms();
	att_of(a)->a_due = t + 2;
	timer_arm(loop, &mux.att_timer, t + 2, t);
	reply(peer[0][0], fr.m[0], fr.len[0], dns_get16(fr.m[0]), F_QR);
	usleep(6000);
	ev_run(loop, EVRUN_ONCE);
	CHECK(a->calls == 1 && a->st == MUX_ANSWER);
	CHECK(mux.ups[0].up_n.n_timeouts == 0 && stats.st_hedges == hedges);
	CHECK(read_frames(peer[1][0]) == 0);
	teardown();
}

/*
 * The kernel turns stamping on a moment after the first socket asks
 * (a deferred static key, its work queued): answers, for up to 3 s,
 * until one carries a stamp.
 */
static int
stamps_on(struct conn *c)
{
	struct rec	*a;
	int64_t		 end = now_ms() + 3000;
	int		 i;

	for (i = 0; now_ms() < end; i++) {
		a = sendname((uint16_t)(100 + i), "warm");
		flush_cb(loop, NULL, 0);
		if (answer_all(0, 0) != 1 || a->calls != 1)
			return 0;
		if (c->c_arrived != -1)
			return 1;
		usleep(5000);
	}
	return 0;
}

/*
 * A round trip ends when the kernel stamped the answer (a dialled TCP
 * socket), not when the loop got round to reading it, 30 ms later here;
 * without a stamp (a socketpair) it ends at the read.
 */
static void
test_rtt_arrival(void)
{
	struct upstream	*up;
	struct conn	*c;
	struct rec	*a;
	int64_t		 sent, wrote;
	int		 stamped;

	for (stamped = 0; stamped < 2; stamped++) {
		up = one_upstream(1, 1, 0);
		if (stamped) {
			make_idle(0, 0);
			CHECK(upstream_dial(up, now_ms()) == 0 &&
			    (c = accept_dial(0)) != NULL);
			conn_write_cb(loop, &up->up_conns[0].c_wio, EV_WRITE);
			CHECK(up->up_conns[0].c_state == CONN_READY);
			CHECK(stamps_on(&up->up_conns[0]));
		}
		a = sendname((uint16_t)(20 + stamped), "stamped");
		flush_cb(loop, NULL, 0);
		CHECK(read_frames(peer[0][0]) == 1);
		sent = att_of(a)->a_sent;
		reply(peer[0][0], fr.m[0], fr.len[0], dns_get16(fr.m[0]), F_QR);
		wrote = now_ms();
		usleep(30000);
		ev_run(loop, EVRUN_ONCE);
		CHECK(a->calls == 1 && a->st == MUX_ANSWER);
		if (stamped)	/* each side of the sum rounds to the ms */
			CHECK(up->up_last_rtt <= (wrote - sent + 2) * 1000);
		else
			CHECK(up->up_last_rtt >= 30000);
		teardown();
	}
}

/*
 * A copy unanswered past its attempt timeout gets a second: from a
 * demoted upstream to one in good standing for free (failover), else
 * within the budget, on another connection, never the same one.
 */
static void
test_hedge(void)
{
	struct rec	*a, *b;
	int64_t		 t = now_ms();
	int		 k, left;

	two_measured(t);
	a = sendname(1, "h1");
	b = sendname(2, "h2");
	flush_cb(loop, NULL, 0);
	CHECK(att_of(a)->a_conn == &mux.ups[0].up_conns[0] &&
	    att_of(b)->a_conn == &mux.ups[0].up_conns[0]);
	mux.hedge_tokens = 0;
	expire_attempts();
	CHECK(mux.ups[0].up_bad > 0 && pq_of(a)->pq_overdue);
	CHECK(pq_of(a)->pq_att[1].a_conn == &mux.ups[1].up_conns[0] &&
	    pq_of(b)->pq_att[1].a_conn == &mux.ups[1].up_conns[0]);
	CHECK(stats.st_hedges == 2 && stats.st_hedges_unpaid == 0 &&
	    mux.hedge_tokens == 0);
	CHECK(a->calls == 0 && b->calls == 0);
	teardown();

	/* One upstream: a second connection, and the budget pays. */
	one_upstream(2, 2, 0);
	mux.hedge_tokens = 0;
	a = sendname(3, "h3");
	flush_cb(loop, NULL, 0);
	expire_attempts();
	CHECK(pq_of(a)->pq_att[1].a_conn == NULL &&
	    stats.st_hedges_unpaid == 1 && stats.st_hedges == 0);
	mux.hedge_tokens = HEDGE_EVERY;
	b = sendname(4, "h4");
	flush_cb(loop, NULL, 0);
	expire_attempts();
	CHECK(pq_of(b)->pq_att[1].a_conn != NULL &&
	    pq_of(b)->pq_att[1].a_conn != att_of(b)->a_conn);
	CHECK(stats.st_hedges == 1 && mux.hedge_tokens < HEDGE_EVERY);
	teardown();

	/*
	 * From an upstream in good standing (it answered a query sent after
	 * this one, so this is a loss, not silence) the hedge goes over its
	 * second connection, not to the demoted other one.
	 */
	setup(2, 2, 8);
	mux.ups[0].up_srtt = 1000;
	mux.ups[1].up_srtt = 5000;
	mux.ups[0].up_sampled = mux.ups[1].up_sampled = t;
	health_failed(&mux.ups[1], NULL, "test", t);
	mux.hedge_tokens = HEDGE_EVERY;
	a = sendname(6, "h6");
	flush_cb(loop, NULL, 0);
	CHECK(att_of(a)->a_conn->c_up == &mux.ups[0]);
	mux.ups[0].up_heard = mux.ups[0].up_heard_sent = now_ms() + 1;
	expire_attempts();
	CHECK(mux.ups[0].up_bad == 0);
	CHECK(pq_of(a)->pq_att[1].a_conn != NULL &&
	    pq_of(a)->pq_att[1].a_conn->c_up == &mux.ups[0] &&
	    pq_of(a)->pq_att[1].a_conn != att_of(a)->a_conn);
	teardown();

	/*
	 * Both demoted, as when a stall silences the healthy one beside one
	 * that refuses: the copy goes to the one heard from latest.
	 */
	for (k = 0; k < 2; k++) {
		setup(2, 2, 8);
		mux.ups[0].up_srtt = 1000;
		mux.ups[1].up_srtt = 5000;
		mux.ups[0].up_sampled = mux.ups[1].up_sampled = t;
		mux.ups[0].up_heard = mux.ups[0].up_heard_sent = t - 500;
		mux.ups[1].up_heard = k == 0 ? t - 1000 : t - 100;
		health_failed(&mux.ups[1], NULL, "test", t);
		mux.hedge_tokens = HEDGE_EVERY;
		a = sendname(7 + k, k == 0 ? "h7" : "h8");
		flush_cb(loop, NULL, 0);
		expire_attempts();
		CHECK(mux.ups[0].up_bad > 0);
		CHECK(pq_of(a)->pq_att[1].a_conn != NULL &&
		    pq_of(a)->pq_att[1].a_conn->c_up == &mux.ups[k]);
		teardown();
	}

	/*
	 * A hedge that loses: the first copy's answer is delivered and the
	 * hedge is not refunded; the hedge's answer, later, is no second
	 * delivery (done_cb checks) and frees the entry it held.
	 */
	one_upstream(2, 2, 0);
	mux.hedge_tokens = HEDGE_EVERY;
	a = sendname(5, "h5");
	flush_cb(loop, NULL, 0);
	expire_attempts();
	flush_cb(loop, NULL, 0);
	left = mux.hedge_tokens;
	CHECK(stats.st_hedges == 1 && left < HEDGE_EVERY);
	CHECK(att_of(a)->a_conn == &mux.ups[0].up_conns[0] &&
	    pq_of(a)->pq_att[1].a_conn == &mux.ups[0].up_conns[1]);
	CHECK(answer_all(0, 0) == 1);
	CHECK(a->calls == 1 && a->st == MUX_ANSWER);
	CHECK(stats.st_hedges_won == 0 && mux.hedge_tokens == left);
	CHECK(mux_inflight() == 1);
	CHECK(answer_all(0, 1) == 1);
	CHECK(a->calls == 1 && stats.st_hedges_won == 0 &&
	    mux.hedge_tokens == left && mux_inflight() == 0);
	teardown();
}

/* Makes only r's attempt timeout due now and runs the timer. */
static void
expire_one(struct rec *r)
{
	struct att	*at = att_of(r);

	TAILQ_REMOVE(&mux.atimeouts, at, a_tlink);
	at->a_due = now_ms() - 1;
	TAILQ_INSERT_HEAD(&mux.atimeouts, at, a_tlink);
	fire_attempts();
}

/*
 * The timeout that demotes an upstream sends every query still waiting
 * on it to one in good standing at once, free of the budget; with no
 * such upstream, the others wait for their own timeouts.
 */
static void
test_fail_over(void)
{
	struct rec	*a, *b, *p;
	int64_t		 t = now_ms();

	two_measured(t);
	mux.ups[0].up_heard = mux.ups[1].up_heard = t - 1000;
	a = sendname(1, "fo1");
	b = sendname(2, "fo2");
	flush_cb(loop, NULL, 0);
	CHECK(att_of(a)->a_conn == &mux.ups[0].up_conns[0] &&
	    att_of(b)->a_conn == &mux.ups[0].up_conns[0]);
	mux.hedge_tokens = 0;
	expire_one(a);
	CHECK(mux.ups[0].up_bad > 0 && att_of(b)->a_late == 0);
	CHECK(pq_of(a)->pq_att[1].a_conn == &mux.ups[1].up_conns[0] &&
	    pq_of(b)->pq_att[1].a_conn == &mux.ups[1].up_conns[0]);
	CHECK(stats.st_hedges == 2 && stats.st_hedges_unpaid == 0);
	teardown();

	one_upstream(2, 2, 0);
	mux.ups[0].up_heard = t - 1000;
	a = sendname(3, "fo3");
	b = sendname(4, "fo4");
	p = sendname(5, "fo5");
	flush_cb(loop, NULL, 0);
	mux.hedge_tokens = HEDGE_EVERY;
	expire_one(a);
	CHECK(mux.ups[0].up_bad > 0 && pq_of(a)->pq_att[1].a_conn != NULL);
	CHECK(pq_of(b)->pq_att[1].a_conn == NULL &&
	    pq_of(p)->pq_att[1].a_conn == NULL && stats.st_hedges == 1);
	teardown();
}

/*
 * How queries share one upstream's connections: by the fewest in flight
 * over a short path; over a long one, one with nothing in flight, else
 * the one given a query longest ago, dialling as many more as share; the
 * first once a timeout came with retransmissions; a suspect one last.
 */
static void
test_share(void)
{
	struct upstream	*up;
	struct conn	*c;
	struct rec	*r[7];

	c = one_upstream(3, 2, 0)->up_conns;
	/* Short path: fewest in flight, and no dial while there is room. */
	r[0] = sendname(1, "f0");
	r[1] = sendname(2, "f1");
	r[2] = sendname(3, "f2");
	flush_cb(loop, NULL, 0);
	CHECK(att_of(r[0])->a_conn == &c[0] && att_of(r[1])->a_conn == &c[1] &&
	    att_of(r[2])->a_conn == &c[0] && c[2].c_state == CONN_IDLE);
	teardown();

	up = one_upstream(3, 2, 30000);
	c = up->up_conns;
	/*
	 * Long path: c0, c1, then c0 (given a query longest ago), and a dial;
	 * with one in flight on each, c1, given one longer ago (the fewest
	 * in flight would take c0).
	 */
	r[0] = sendname(1, "s0");
	r[1] = sendname(2, "s1");
	r[2] = sendname(3, "s2");
	flush_cb(loop, NULL, 0);
	CHECK(att_of(r[0])->a_conn == &c[0] && att_of(r[1])->a_conn == &c[1] &&
	    att_of(r[2])->a_conn == &c[0]);
	CHECK(c[2].c_state == CONN_CONNECTING);
	CHECK(read_frames(peer[0][0]) == 2);
	reply(peer[0][0], fr.m[0], fr.len[0], dns_get16(fr.m[0]), F_QR);
	conn_input(&c[0], now_ms());
	CHECK(r[0]->calls == 1 && c[0].c_inflight == 1);
	r[3] = sendname(4, "s3");
	r[4] = sendname(5, "s4");
	flush_cb(loop, NULL, 0);
	CHECK(att_of(r[3])->a_conn == &c[1] && att_of(r[4])->a_conn == &c[0]);
	/* A timeout with retransmissions: queries share the first. */
	up->up_lossy_at = now_ms();
	r[5] = sendname(6, "s5");
	flush_cb(loop, NULL, 0);
	CHECK(att_of(r[5])->a_conn == &c[0]);
	/* A suspect connection takes queries last. */
	c[0].c_suspect = 1;
	r[6] = sendname(7, "s6");
	flush_cb(loop, NULL, 0);
	CHECK(att_of(r[6])->a_conn == &c[1]);
	CHECK(conn_stalled(&c[0], 1000, now_ms()) &&
	    !conn_stalled(&c[1], 1000, now_ms()));
	/* So does one whose oldest query waited past the path's round trips. */
	CHECK(conn_stalled(&c[1], 0, now_ms() + 1));
	teardown();

	/* Long path: as many dialled at once as queries share. */
	c = one_upstream(4, 2, 30000)->up_conns;
	r[0] = sendname(1, "d0");
	r[1] = sendname(2, "d1");
	r[2] = sendname(3, "d2");
	flush_cb(loop, NULL, 0);
	CHECK(c[2].c_state == CONN_CONNECTING && c[3].c_state == CONN_IDLE);
	r[3] = sendname(4, "d3");
	flush_cb(loop, NULL, 0);
	CHECK(att_of(r[3])->a_conn == &c[1] && c[3].c_state == CONN_CONNECTING);
	teardown();
}

/*
 * An attempt's timeout: srtt + 4 x rttvar, the variance term at least
 * srtt / 2, 100 ms in all, 1 s for an upstream not measured, and never
 * more than half of what is left to the deadline, measured or not.
 */
static void
test_attempt_ms(void)
{
	struct upstream	 up;
	int64_t		 now = 1000000;

	memset(&up, 0, sizeof(up));
	CHECK(health_attempt_ms(&up, now + 60000, now) == 1000);
	CHECK(health_attempt_ms(&up, now + 1500, now) == 750);
	up.up_srtt = 1000;
	CHECK(health_attempt_ms(&up, now + 60000, now) == 100);
	up.up_srtt = 200000;
	up.up_rttvar = 10000;
	CHECK(health_attempt_ms(&up, now + 60000, now) == 300);
	up.up_rttvar = 50000;
	CHECK(health_attempt_ms(&up, now + 60000, now) == 400);
	CHECK(health_attempt_ms(&up, now + 500, now) == 250);
	CHECK(health_attempt_ms(&up, now + 1, now) == 1);
	CHECK(health_attempt_ms(&up, now - 5, now) == 1);
}

/*
 * A timeout demotes an upstream only when it answered nothing since the
 * attempt was sent, or, over a path not known to be lossy, nothing sent
 * with or after it; an overtaken late answer is no RTT sample (Karn); a
 * paid second copy that wins earns its token back.
 */
static void
test_timeout_judgement(void)
{
	struct upstream	*up;
	struct att	 a;
	struct rec	*b;
	int64_t		 t = now_ms();

	setup(1, 2, 8);
	up = &mux.ups[0];
	memset(&a, 0, sizeof(a));
	a.a_sent = t - 100;
	up->up_heard = t - 50;
	up->up_heard_sent = t - 100;
	health_timed_out(up, &a, 0, t);
	CHECK(up->up_bad == 0 && up->up_lossy_at == 0 &&
	    up->up_n.n_timeouts == 1);
	/* Heard since, only from queries sent before: dark, unless lossy. */
	up->up_heard_sent = t - 101;
	health_timed_out(up, &a, 1, t);
	CHECK(up->up_bad == 1 && up->up_lossy_at == t);
	up->up_bad = 0;
	health_timed_out(up, &a, 0, t);
	CHECK(up->up_bad == 0);
	up->up_heard = t - 100;
	health_timed_out(up, &a, 0, t);
	CHECK(up->up_bad == 1);

	up->up_srtt = 30000;
	up->up_rttvar = 1000;
	a.a_late = 1;
	up->up_heard_sent = t - 90;
	health_rtt(up, &a, t);
	CHECK(up->up_srtt == 30000);
	up->up_heard_sent = t - 110;
	health_rtt(up, &a, t);
	CHECK(up->up_srtt == 30000 + (100000 - 30000) / 8);
	teardown();

	setup(1, 2, 8);
	up = &mux.ups[0];
	up->up_srtt = 1000;
	up->up_sampled = t;
	mux.hedge_tokens = HEDGE_EVERY;
	b = sendname(7, "refund");
	flush_cb(loop, NULL, 0);
	expire_attempts();
	flush_cb(loop, NULL, 0);
	CHECK(pq_of(b)->pq_att[1].a_paid &&
	    mux.hedge_tokens == HEDGE_EVERY + 1 - HEDGE_EVERY);
	CHECK(read_frames(peer[0][1]) == 1);
	/* c0 read since: the late first copy ends with the query. */
	up->up_conns[0].c_reads++;
	reply(peer[0][1], fr.m[0], fr.len[0], dns_get16(fr.m[0]), F_QR);
	conn_input(&up->up_conns[1], now_ms());
	CHECK(b->calls == 1 && stats.st_hedges_won == 1 &&
	    mux.hedge_tokens == HEDGE_EVERY + 1);
	teardown();
}

/* Among healthy upstreams, one clearly faster wins; RTTs follow RFC 6298. */
static void
test_rtt_choice(void)
{
	struct conn	*c;
	struct rec	*a, *b;
	int64_t		 t;
	int		 i;

	setup(3, 1, 8);
	mux.ups[0].up_srtt = 40000;
	mux.ups[1].up_srtt = 5000;
	mux.ups[1].up_rttvar = 2000;
	mux.ups[2].up_srtt = 20000;
	for (i = 0; i < 3; i++)		/* measured now: none to explore */
		mux.ups[i].up_sampled = now_ms();
	CHECK(pick_upstream(now_ms(), 0) == &mux.ups[1]);
	a = sendname(9, "r");
	flush_cb(loop, NULL, 0);
	c = &mux.ups[1].up_conns[0];
	CHECK(c->c_inflight == 1 && att_of(a)->a_conn == c);
	/*
	 * An answer 80 ms after the send moves the average an eighth, and
	 * the variance a quarter of the way to the difference (RFC 6298).
	 */
	t = now_ms();
	att_of(a)->a_sent = t - 80;
	CHECK(read_frames(peer[1][0]) == 1);
	reply(peer[1][0], fr.m[0], fr.len[0], dns_get16(fr.m[0]), F_QR);
	conn_input(c, t);
	CHECK(a->calls == 1 && a->now == t);
	CHECK(mux.ups[1].up_srtt == 5000 + (80000 - 5000) / 8);
	CHECK(mux.ups[1].up_rttvar == 2000 + (75000 - 2000) / 4);

	/*
	 * An upstream in good standing not measured for EXPLORE_MS gets the
	 * next query, one only; the best gets the one after.
	 */
	t = now_ms();
	mux.ups[0].up_sampled = t - EXPLORE_MS;
	mux.ups[2].up_sampled = t;
	mux.ups[1].up_srtt = 5000;
	a = sendname(10, "explore");
	flush_cb(loop, NULL, 0);
	CHECK(att_of(a)->a_conn == &mux.ups[0].up_conns[0]);
	CHECK(mux.ups[0].up_sampled >= t);
	a = sendname(11, "best");
	flush_cb(loop, NULL, 0);
	CHECK(att_of(a)->a_conn == &mux.ups[1].up_conns[0]);
	/*
	 * Its answer came clearly sooner than the best's average: the next
	 * query follows it while its answers do, its average still over 30
	 * ms; one not clearly sooner than the best's average ends it.
	 */
	CHECK(answer_all(0, 0) == 1 && answer_all(1, 0) == 1);
	CHECK(mux.ups[0].up_srtt > 30000 && mux.ups[1].up_srtt < 5000);
	a = sendname(13, "follow");
	flush_cb(loop, NULL, 0);
	CHECK(att_of(a)->a_conn == &mux.ups[0].up_conns[0]);
	b = sendname(14, "notyet");
	flush_cb(loop, NULL, 0);
	CHECK(att_of(b)->a_conn == &mux.ups[1].up_conns[0]);
	att_of(a)->a_sent = now_ms() - 20;
	CHECK(answer_all(0, 0) == 1 && answer_all(1, 0) == 1);
	a = sendname(15, "ended");
	flush_cb(loop, NULL, 0);
	CHECK(att_of(a)->a_conn == &mux.ups[1].up_conns[0]);
	CHECK(answer_all(1, 0) == 1);
	/* A demoted one is probed with copies, not explored. */
	mux.ups[0].up_sampled = t - EXPLORE_MS;
	mux.ups[0].up_bad = 1;
	mux.ups[0].up_probe_at = t + 60000;
	a = sendname(12, "notdemoted");
	flush_cb(loop, NULL, 0);
	CHECK(att_of(a)->a_conn == &mux.ups[1].up_conns[0]);
	teardown();
}

/*
 * Both demoted: the one whose last usable answer came latest goes first,
 * not the faster (a refusing upstream answers at once) nor one never
 * heard from (srtt 0 is no sample, not 0 ms); of upstreams in good
 * standing, the clearly faster.
 */
static void
test_pick_demoted(void)
{
	int64_t	 t = now_ms();

	setup(2, 1, 8);
	mux.ups[0].up_bad = mux.ups[1].up_bad = 1;
	mux.ups[1].up_srtt = 50000;
	mux.ups[1].up_heard = t - 5000;
	CHECK(pick_upstream(t, 0) == &mux.ups[1]);
	mux.ups[0].up_srtt = 500;		/* quick to refuse */
	CHECK(pick_upstream(t, 0) == &mux.ups[1]);
	mux.ups[0].up_heard = t - 100;
	CHECK(pick_upstream(t, 0) == &mux.ups[0]);
	mux.ups[0].up_heard = mux.ups[1].up_heard;
	CHECK(pick_upstream(t, 0) == &mux.ups[0]);
	mux.ups[0].up_bad = mux.ups[1].up_bad = 0;
	mux.ups[0].up_srtt = 48000;
	CHECK(pick_upstream(t, 0) == &mux.ups[0]);
	mux.ups[1].up_srtt = 5000;
	CHECK(pick_upstream(t, 0) == &mux.ups[1]);
	teardown();
}

/* An upstream stuck dialling past half the timeout yields to another. */
static void
test_slow_dial(void)
{
	struct conn	*a;
	struct rec	*r;

	setup(2, 1, 8);
	mux.ups[0].up_srtt = 1000;
	mux.ups[1].up_srtt = 50000;
	mux.ups[0].up_sampled = mux.ups[1].up_sampled = now_ms();
	a = &mux.ups[0].up_conns[0];
	make_idle(0, 0);
	r = sendname(1, "slow");
	flush_cb(loop, NULL, 0);
	/* The faster one is dialled, and the query waits for it. */
	CHECK(a->c_state == CONN_CONNECTING && r->calls == 0);
	CHECK(mux.nwait == 1 && mux.ups[1].up_conns[0].c_inflight == 0);
	CHECK(pick_upstream(now_ms(), 0) == &mux.ups[0]);
	CHECK(ev_is_active(&a->c_timer));
	/* Halfway through the timeout: the other one takes the query. */
	conn_timer_cb(loop, &a->c_timer, EV_TIMER);
	CHECK(a->c_slow && a->c_state == CONN_CONNECTING);
	CHECK(mux.nwait == 0 && mux.ups[1].up_conns[0].c_inflight == 1);
	CHECK(pick_upstream(now_ms(), 0) == &mux.ups[1]);
	/* Both slow: the faster one again, rather than nobody. */
	mux.ups[1].up_conns[0].c_state = CONN_CONNECTING;
	mux.ups[1].up_conns[0].c_slow = 1;
	CHECK(pick_upstream(now_ms(), 0) == &mux.ups[0]);
	mux.ups[1].up_conns[0].c_state = CONN_READY;
	mux.ups[1].up_conns[0].c_slow = 0;
	/* At the full timeout the dial fails and the upstream backs off. */
	conn_timer_cb(loop, &a->c_timer, EV_TIMER);
	CHECK(a->c_state == CONN_IDLE && mux.ups[0].up_fails == 1);
	CHECK(r->calls == 0);
	flush_cb(loop, NULL, 0);
	CHECK(answer_all(1, 0) == 1 && r->calls == 1 && r->st == MUX_ANSWER);
	teardown();
}

/*
 * A stamp counts within its attempt: up to 2 ms before the send (both
 * clocks are read to the ms) it is the send; further before, after now,
 * or none at all, the read time stands.
 */
static void
test_arrived_bounds(void)
{
	static const int64_t	 stamp[] = { 9500, 8998, 8997, 10001, -1 };
	static const int64_t	 want[] = { 9500, 9000, 10000, 10000, 10000 };
	struct conn		 c;
	struct att		 a;
	size_t			 i;

	memset(&c, 0, sizeof(c));
	memset(&a, 0, sizeof(a));
	a.a_sent = 9000;
	for (i = 0; i < sizeof(stamp) / sizeof(stamp[0]); i++) {
		c.c_arrived = stamp[i];
		CHECK(conn_arrived(&c, &a, 10000) == want[i]);
	}
}

/*
 * A dial's timer that fires long past its end, dnsfwd having been
 * stopped, does not fail the dial before the loop has read what came
 * meanwhile: the connection that got through is kept.
 */
static void
test_dial_stalled(void)
{
	struct conn	*c;

	setup(1, 1, 8);
	c = &mux.ups[0].up_conns[0];
	make_idle(0, 0);
	CHECK(upstream_dial(&mux.ups[0], now_ms()) == 0 &&
	    accept_dial(0) == c);
	c->c_slow = 1;
	c->c_due = now_ms() - 100;
	conn_timer_cb(loop, &c->c_timer, EV_TIMER);
	CHECK(c->c_state == CONN_CONNECTING && ev_is_active(&c->c_timer));
	CHECK(spin_until(conn_came_up, c, 1000));
	CHECK(mux.ups[0].up_fails == 0);
	teardown();
}

/* When the boot clock jumps past the monotonic one, start afresh. */
static void
test_suspend(void)
{
	struct rec	*a;
	int64_t		 now = now_ms();

	setup(1, 1, 8);
	a = sendname(5, "s");
	flush_cb(loop, NULL, 0);
	mux.ups[0].up_fails = 3;
	mux.ups[0].up_backoff_ms = 2000;
	check_suspend(now, now + mux.boot_offset + 500);
	CHECK(mux.ups[0].up_conns[0].c_state == CONN_READY);
	check_suspend(now, now + mux.boot_offset + 60000);
	CHECK(mux.ups[0].up_conns[0].c_state == CONN_IDLE);
	CHECK(mux.ups[0].up_fails == 0 && mux.ups[0].up_backoff_ms == 0);
	CHECK(mux.nwait == 1);
	/* Requeued, not lost: it is answered later or at its deadline. */
	CHECK(mux_inflight() == 1 && a->calls == 0);
	/* The next dispatch dials afresh. */
	dispatch(now_ms());
	CHECK(mux.ups[0].up_conns[0].c_state == CONN_CONNECTING);
	/* TLS session tickets are not carried across a sleep. */
	forgets = 0;
	mux.ups[0].up_tls = (struct tls_upstream *)&fake_tu;
	check_suspend(now, now + mux.boot_offset + 60000);
	CHECK(forgets == 1 && mux.ups[0].up_conns[0].c_state == CONN_IDLE);
	/* --prewarm dials the replacement without waiting for a query. */
	cfg.cf_prewarm = 1;
	mux_active(now);
	check_suspend(now, now + mux.boot_offset + 60000);
	CHECK(mux.ups[0].up_conns[0].c_state == CONN_CONNECTING);
	CHECK(accept_dial(0) == &mux.ups[0].up_conns[0]);
	cfg.cf_prewarm = 0;
	teardown();
}

/*
 * A suspend noticed around a send closes the connections, which may
 * fail a query that went down with its third: that callback must not
 * run inside mux_send.
 */
static void
test_suspend_in_send(void)
{
	struct conn	*c;
	struct rec	*a, *b;
	int		 i;

	setup(1, 1, 8);
	c = &mux.ups[0].up_conns[0];
	a = sendname(6, "victim");
	flush_cb(loop, NULL, 0);
	for (i = 1; i < PQ_MAX_SENDS; i++) {
		lose(c);
		revive(0, 0);
		dispatch(now_ms());
		flush_cb(loop, NULL, 0);
	}
	CHECK(pq_of(a)->pq_sends == PQ_MAX_SENDS - 1 && a->calls == 0);
	mux.boot_offset -= 60000;	/* a minute asleep */
	b = sendname(7, "waker");
	CHECK(b->used);
	CHECK(a->calls == 0);		/* not from inside mux_send */
	flush_cb(loop, NULL, 0);
	/*
	 * dnsfwd's own reset is no loss of the upstream's: the query one more
	 * loss would fail waits for the new connection, unblamed.
	 */
	CHECK(a->calls == 0 && pq_of(a)->pq_sends == PQ_MAX_SENDS - 1);
	CHECK(c->c_state == CONN_CONNECTING && pq_of(a)->pq_list == PQ_ON_WAIT);
	teardown();
}

/*
 * --prewarm keeps each upstream's first ready connection past the idle
 * timeout while queries came recently, unless the server announced its
 * own; it lets it go after that, and dials one connection, not all.
 */
static void
test_keep_warm(void)
{
	struct conn	*c0, *c1;
	int64_t		 now = now_ms();

	setup(1, 2, 8);
	c0 = &mux.ups[0].up_conns[0];
	c1 = &mux.ups[0].up_conns[1];
	mux_active(now);
	CHECK(!upstream_keep_warm(c0, now));		/* not without --prewarm */
	cfg.cf_prewarm = 1;
	CHECK(upstream_keep_warm(c0, now) && !upstream_keep_warm(c1, now));
	CHECK(upstream_keep_warm(c0, now + PREWARM_RECENT_MS));
	CHECK(!upstream_keep_warm(c0, now + PREWARM_RECENT_MS + 1));
	c0->c_server_idle = 1;
	CHECK(!upstream_keep_warm(c0, now));
	c0->c_server_idle = 0;
	/* One upstream, second copies sent lately: the second is kept too. */
	warm.last_hedge = now;
	CHECK(upstream_keep_warm(c1, now) &&
	    upstream_keep_warm(c1, now + PREWARM_RECENT_MS));
	CHECK(!upstream_keep_warm(c1, now + PREWARM_RECENT_MS + 1));
	c1->c_server_idle = 1;
	CHECK(!upstream_keep_warm(c1, now));
	c1->c_server_idle = 0;
	warm.last_hedge = 0;
	CHECK(!upstream_keep_warm(c1, now));

	/* The idle timer keeps the first ready one and closes the rest. */
	make_idle(0, 0);
	conn_timer_cb(loop, &c1->c_timer, EV_TIMER);
	CHECK(c1->c_state == CONN_READY && ev_is_active(&c1->c_timer));
	CHECK(c0->c_state == CONN_IDLE);	/* not dialled: c1 is warm */
	mux_active(now_ms() - PREWARM_RECENT_MS + 1000);
	conn_timer_cb(loop, &c1->c_timer, EV_TIMER);
	CHECK(c1->c_state == CONN_READY);	/* a client asked lately */
	mux_active(now_ms() - PREWARM_RECENT_MS - 1);
	conn_timer_cb(loop, &c1->c_timer, EV_TIMER);
	CHECK(c1->c_state == CONN_IDLE && c0->c_state == CONN_IDLE);

	/* Queries came lately: one dial, whatever the pool's size. */
	mux_active(now_ms());
	upstream_prewarm(&mux.ups[0], now_ms());
	CHECK(c0->c_state == CONN_CONNECTING && c1->c_state == CONN_IDLE);
	upstream_prewarm(&mux.ups[0], now_ms());
	CHECK(c1->c_state == CONN_IDLE);
	CHECK(accept_dial(0) == c0);
	cfg.cf_prewarm = 0;
	teardown();
}

static int
conn_busy(const void *arg)
{
	return ((const struct conn *)arg)->c_state != CONN_IDLE;
}

static int
conn_ready_p(const void *arg)
{
	return ((const struct conn *)arg)->c_state == CONN_READY;
}

/* --prewarm on a failing upstream dials again when its backoff ends. */
static void
test_warm_backoff(void)
{
	struct upstream	*up;
	struct conn	*c;
	int64_t		 t0;

	setup(1, 1, 8);
	up = &mux.ups[0];
	c = &up->up_conns[0];
	cfg.cf_prewarm = 1;
	make_idle(0, 0);
	t0 = now_ms();
	mux_active(t0);
	up->up_fails = 1;
	up->up_retry_at = t0 + 200;
	upstream_prewarm(up, t0);
	CHECK(c->c_state == CONN_IDLE && ev_is_active(&warm.timer));
	CHECK(spin_until(conn_busy, c, 2000));
	CHECK(now_ms() - t0 >= 190);
	CHECK(accept_dial(0) == c);
	cfg.cf_prewarm = 0;
	teardown();
}

/*
 * --prewarm replaces a connection that went away however it went: here
 * one silent past a deadline, and one that sent garbage.
 */
static void
test_warm_replaced(void)
{
	struct conn	*c;
	struct rec	*a;

	setup(1, 1, 8);
	c = &mux.ups[0].up_conns[0];
	cfg.cf_prewarm = 1;
	mux_active(now_ms());
	a = sendname(44, "silent");
	flush_cb(loop, NULL, 0);
	drain();
	CHECK(a->calls == 1 && a->st == MUX_TIMEOUT);
	CHECK(c->c_state == CONN_CONNECTING);	/* dialled again at once */
	CHECK(accept_dial(0) == c);
	CHECK(spin_until(conn_ready_p, c, 2000));

	a = sendname(45, "garbage");
	flush_cb(loop, NULL, 0);
	CHECK(read_frames(peer[0][0]) == 1);
	reply(peer[0][0], fr.m[0], fr.len[0], dns_get16(fr.m[0]), 0);	/* QR=0 */
	conn_input(c, now_ms());
	CHECK(c->c_state == CONN_CONNECTING && a->calls == 0);
	CHECK(accept_dial(0) == c);
	cfg.cf_prewarm = 0;
	teardown();
}

/* The ID hash finds, refuses duplicates and removes from chains. */
static void
test_hash(void)
{
	struct conn	*c;
	struct att	*at;
	struct rec	*r[16];
	uint32_t	 x = 99;
	int		 i, k, left;

	setup(1, 1, 16);
	c = &mux.ups[0].up_conns[0];
	for (i = 0; i < 16; i++)
		r[i] = sendname((uint16_t)i, "h");
	flush_cb(loop, NULL, 0);
	i = 0;
	TAILQ_FOREACH(at, &c->c_atts, a_link) {
		CHECK(hash_find(c, at->a_upid) == at);
		i++;
	}
	CHECK(i == 16);
	CHECK(read_frames(peer[0][0]) == 16);
	/* Answered in another order than sent, each leaves the table. */
	for (left = 16; left > 0; left--) {
		x = x * 1103515245 + 12345;
		k = (int)((x >> 8) % (uint32_t)left);
		for (i = 0; i < 16; i++)
			if (r[i]->calls == 0 && k-- == 0)
				break;
		reply(peer[0][0], fr.m[i], fr.len[i], dns_get16(fr.m[i]), F_QR);
		conn_input(c, now_ms());
		CHECK(r[i]->calls == 1);
		CHECK(hash_find(c, dns_get16(fr.m[i])) == NULL);
		TAILQ_FOREACH(at, &c->c_atts, a_link)
			CHECK(hash_find(c, at->a_upid) == at);
	}
	CHECK(c->c_inflight == 0);
	teardown();
}

/* Index chains unlink at the head, the middle and the tail. */
static void
test_chain(void)
{
	struct { int32_t next; } el[5];
	int32_t	*b = chain_buckets(0);	/* one bucket */
	int32_t	 i, order[] = { 2, 0, 4 };
	int	 k, n;

	CHECK(chain_mask(1) == 0 && chain_mask(5) == 7 && chain_mask(8) == 7);
	for (i = 0; i < 5; i++)
		CHAIN_INSERT(b, 0, 0, el, next, i);
	/* The chain is 4 3 2 1 0: take a middle, the tail, the head. */
	for (k = 0; k < 3; k++) {
		CHAIN_UNLINK(b, 0, 0, el, next, order[k]);
		n = 0;
		for (i = b[0]; i >= 0; i = el[i].next) {
			CHECK(i != order[0] && i != order[k]);
			n++;
		}
		CHECK(n == 4 - k);
	}
	/* An index not on the chain is left alone. */
	CHAIN_UNLINK(b, 0, 0, el, next, 2);
	CHECK(b[0] == 3 && el[3].next == 1 && el[1].next == -1);
	free(b);
}

/* Makes conn (0, 0) a TLS one, as far as mux.c can tell. */
static void
fake_tls_on(struct conn *c)
{
	memset(&ftc, 0, sizeof(ftc));
	ftc.fd = c->c_fd;
	c->c_tls = &ftc;
}

/*
 * TLS may want the other direction: a write that wants to read waits
 * for readability and is retried from the read callback; a read that
 * wants to write waits for writability.
 */
static void
test_want_directions(void)
{
	struct conn	*c;
	struct rec	*a, *b;
	size_t		 first;

	setup(1, 1, 64);
	c = &mux.ups[0].up_conns[0];
	fake_tls_on(c);

	/* A write wanting to read (renegotiation, were it on). */
	a = sendname(1, "wr");
	ftc.ws[ftc.nws++] = IO_WANT_READ;
	flush_cb(loop, NULL, 0);
	CHECK(ftc.nwlen == 1);
	first = ftc.wlen[0];
	CHECK(c->c_write_wants_read && !c->c_read_wants_write);
	CHECK(!ev_is_active(&c->c_wio) && ev_is_active(&c->c_rio));
	CHECK(c->c_written == 0);
	/* Readable: the write goes first. */
	conn_read_cb(loop, &c->c_rio, EV_READ);
	CHECK(ftc.nwlen == 2 && ftc.wlen[1] == first);
	CHECK(!c->c_write_wants_read);
	CHECK(c->c_written == c->c_queued && c->c_outlen == 0);
	CHECK(!ev_is_active(&c->c_wio));
	CHECK(answer_all(0, 0) == 1 && a->calls == 1);

	/* A write wanting to write: the write watcher, retried later. */
	a = sendname(2, "ww");
	ftc.nwlen = 0;
	ftc.ws[ftc.nws++] = IO_WANT_WRITE;
	flush_cb(loop, NULL, 0);
	CHECK(!c->c_write_wants_read && ev_is_active(&c->c_wio));
	CHECK(c->c_written < c->c_queued);
	/* More is framed meanwhile; the retry takes all of it at once. */
	b = sendname(3, "more");
	flush_cb(loop, NULL, 0);
	CHECK(ftc.nwlen == 2 && ftc.wlen[1] > ftc.wlen[0]);
	CHECK(c->c_written == c->c_queued && !ev_is_active(&c->c_wio));
	CHECK(answer_all(0, 0) == 2 && a->calls == 1 && b->calls == 1);

	/* A read wanting to write. */
	a = sendname(4, "rw");
	flush_cb(loop, NULL, 0);
	CHECK(read_frames(peer[0][0]) == 1);
	reply(peer[0][0], fr.m[0], fr.len[0], dns_get16(fr.m[0]), F_QR);
	ftc.rs[ftc.nrs++] = IO_WANT_WRITE;
	conn_read_cb(loop, &c->c_rio, EV_READ);
	CHECK(a->calls == 0);
	CHECK(c->c_read_wants_write && ev_is_active(&c->c_wio));
	/* A flush meanwhile leaves the write watcher to the read. */
	b = sendname(5, "during");
	flush_cb(loop, NULL, 0);
	CHECK(c->c_outlen == 0 && ev_is_active(&c->c_wio));
	/* Writable: the read is retried and the answer read. */
	conn_write_cb(loop, &c->c_wio, EV_WRITE);
	CHECK(a->calls == 1 && a->st == MUX_ANSWER);
	CHECK(!c->c_read_wants_write && !ev_is_active(&c->c_wio));
	CHECK(answer_all(0, 0) == 1 && b->calls == 1);

	/* Plain TCP never asks for the other direction. */
	c->c_tls = NULL;
	a = sendname(6, "plain");
	flush_cb(loop, NULL, 0);
	CHECK(!c->c_write_wants_read && !c->c_read_wants_write);
	CHECK(answer_all(0, 0) == 1 && a->calls == 1);
	teardown();
}

/*
 * A record tls.c holds after the queue is written keeps the write
 * watcher on until it is out; a write first sends what is held.
 */
static void
test_tls_held_record(void)
{
	struct conn	*c;
	struct rec	*a;

	setup(1, 1, 64);
	c = &mux.ups[0].up_conns[0];
	fake_tls_on(c);
	a = sendname(1, "held");
	ftc.fs[ftc.nfs++] = IO_WANT_WRITE;
	flush_cb(loop, NULL, 0);
	CHECK(c->c_outlen == 0 && c->c_written == c->c_queued);
	CHECK(ev_is_active(&c->c_wio));
	/* Still held at the next writability: the watcher stays. */
	ftc.fs[ftc.nfs++] = IO_WANT_WRITE;
	conn_write_cb(loop, &c->c_wio, EV_WRITE);
	CHECK(ev_is_active(&c->c_wio) && ftc.nfs == 0);
	/* Out: the watcher goes, and the answer comes. */
	conn_write_cb(loop, &c->c_wio, EV_WRITE);
	CHECK(!ev_is_active(&c->c_wio));
	CHECK(answer_all(0, 0) == 1 && a->calls == 1);
	/* A failure to send it closes the connection; the query is resent. */
	a = sendname(2, "lost");
	ftc.fs[ftc.nfs++] = IO_ERR;
	flush_cb(loop, NULL, 0);
	CHECK(c->c_state != CONN_READY || c->c_written == 0);
	CHECK(a->calls == 0);
	teardown();
}

/*
 * Answers read while others are due: acknowledged before the loop
 * sleeps (a quick ACK, not observable here), unless queries are written
 * so often that the next will carry it; then a timer is the safety net,
 * and a query written before it fires makes it do nothing.
 */
static void
test_ack_policy(void)
{
	struct conn	*c;
	struct rec	*a, *b, *d;
	uint8_t		 qb[UPQUERY_MAX + 64];
	size_t		 lb;

	setup(1, 1, 64);
	c = &mux.ups[0].up_conns[0];
	a = sendname(1, "ack-a");
	b = sendname(2, "ack-b");
	flush_cb(loop, NULL, 0);
	CHECK(c->c_state == CONN_READY && read_frames(peer[0][0]) == 2);
	lb = fr.len[1];
	memcpy(qb, fr.m[1], lb);
	/* A fresh connection has no rate: no timer, the ACK goes at once. */
	reply(peer[0][0], fr.m[0], fr.len[0], dns_get16(fr.m[0]), F_QR);
	conn_read_cb(loop, &c->c_rio, EV_READ);
	CHECK(a->calls == 1 && b->calls == 0 && c->c_dirty && c->c_ackdue);
	flush_cb(loop, NULL, 0);
	CHECK(!c->c_ackdue && !ev_is_active(&c->c_acktimer));
	/* Queries every 100 us: the timer, marking what was written. */
	c->c_gap = 0.0001;
	d = sendname(3, "ack-d");
	flush_cb(loop, NULL, 0);
	CHECK(read_frames(peer[0][0]) == 1);
	reply(peer[0][0], fr.m[0], fr.len[0], dns_get16(fr.m[0]), F_QR);
	conn_read_cb(loop, &c->c_rio, EV_READ);
	flush_cb(loop, NULL, 0);
	CHECK(d->calls == 1 && b->calls == 0);
	CHECK(ev_is_active(&c->c_acktimer) && c->c_ackmark == c->c_written);
	ev_timer_stop(loop, &c->c_acktimer);
	/* Nothing is due once the last answer is in: no ACK, no timer. */
	reply(peer[0][0], qb, lb, dns_get16(qb), F_QR);
	conn_read_cb(loop, &c->c_rio, EV_READ);
	CHECK(b->calls == 1 && c->c_inflight == 0 && !c->c_ackdue);
	flush_cb(loop, NULL, 0);
	CHECK(!ev_is_active(&c->c_acktimer));
	teardown();
}

/* Over TLS, no write is longer than a record, and a close says goodbye. */
static void
test_tls_records(void)
{
	struct conn	*c;
	struct rec	*r[40];
	uint8_t		 q[512];
	int		 i;

	setup(1, 1, 64);
	c = &mux.ups[0].up_conns[0];
	fake_tls_on(c);
	for (i = 0; i < 40; i++)
		r[i] = sendq(q, mkbig(q, (uint16_t)i, "rec", 500),
		    now_ms() + 60000);
	ftc.ws[ftc.nws++] = 0;
	ftc.ws[ftc.nws++] = IO_WANT_WRITE;
	flush_cb(loop, NULL, 0);
	CHECK(c->c_queued == 40 * 502);
	CHECK(ftc.nwlen == 2 && ftc.wlen[0] == TLS_RECORD);
	CHECK(ftc.wlen[1] == 40 * 502 - TLS_RECORD);
	CHECK(c->c_written == TLS_RECORD);
	/* Those cut by the wait were not sent; those before it were. */
	lose(c);
	CHECK(ftc.frees == 1 && ftc.notified == 1);
	for (i = 0; i < 40; i++)
		CHECK(pq_of(r[i])->pq_sends == ((i + 1) * 502 <= TLS_RECORD));
	teardown();
}

/* A fake TLS handshake: its wants steer the watchers, then it is ready. */
static void
test_handshake(void)
{
	struct upstream	*up;
	struct conn	*c;
	struct rec	*a;

	setup(1, 1, 8);
	up = &mux.ups[0];
	c = &up->up_conns[0];
	up->up_tls = (struct tls_upstream *)&fake_tu;
	make_idle(0, 0);
	memset(&ftc, 0, sizeof(ftc));
	a = sendname(1, "hs");
	flush_cb(loop, NULL, 0);
	CHECK(c->c_state == CONN_CONNECTING);
	CHECK(accept_dial(0) == c);
	ftc.hs[ftc.nhs++] = IO_WANT_READ;
	conn_write_cb(loop, &c->c_wio, EV_WRITE);
	CHECK(c->c_state == CONN_HANDSHAKE && c->c_tls == &ftc);
	CHECK(ev_is_active(&c->c_rio) && !ev_is_active(&c->c_wio));
	ftc.hs[ftc.nhs++] = IO_WANT_WRITE;
	conn_read_cb(loop, &c->c_rio, EV_READ);
	CHECK(c->c_state == CONN_HANDSHAKE && ev_is_active(&c->c_wio));
	CHECK(a->calls == 0 && c->c_inflight == 0);
	conn_write_cb(loop, &c->c_wio, EV_WRITE);
	CHECK(c->c_state == CONN_READY && !ev_is_active(&c->c_wio));
	CHECK(c->c_inflight == 1);
	CHECK(stats.st_tls_full == 1 && stats.st_tls_resumed == 0);
	flush_cb(loop, NULL, 0);
	CHECK(answer_all(0, 0) == 1 && a->calls == 1 && a->st == MUX_ANSWER);
	lose(c);
	CHECK(ftc.notified == 1);

	/* A resumed session is counted as such. */
	a = sendname(3, "resumed");
	memset(&ftc, 0, sizeof(ftc));
	ftc.resumed = 1;
	flush_cb(loop, NULL, 0);
	CHECK(accept_dial(0) == c);
	conn_write_cb(loop, &c->c_wio, EV_WRITE);
	CHECK(c->c_state == CONN_READY);
	CHECK(stats.st_tls_full == 1 && stats.st_tls_resumed == 1);
	flush_cb(loop, NULL, 0);
	CHECK(answer_all(0, 0) == 1 && a->calls == 1 && a->st == MUX_ANSWER);
	lose(c);

	/* No TLS context for the socket: a failed dial. */
	a = sendname(4, "nossl");
	memset(&ftc, 0, sizeof(ftc));
	ftc.fail_new = 1;
	flush_cb(loop, NULL, 0);
	CHECK(accept_dial(0) == c);
	conn_write_cb(loop, &c->c_wio, EV_WRITE);
	CHECK(c->c_state == CONN_IDLE && ftc.frees == 0 && up->up_fails == 1);
	CHECK(a->calls == 1 && a->st == MUX_UNREACHABLE);
	up->up_fails = 0;
	up->up_backoff_ms = 0;
	up->up_retry_at = 0;

	/* A failed handshake: no goodbye, the upstream backs off. */
	a = sendname(2, "hs2");
	memset(&ftc, 0, sizeof(ftc));
	flush_cb(loop, NULL, 0);
	CHECK(accept_dial(0) == c);
	ftc.hs[ftc.nhs++] = IO_ERR;
	conn_write_cb(loop, &c->c_wio, EV_WRITE);
	CHECK(c->c_state == CONN_IDLE && ftc.frees == 1 && ftc.notified == 0);
	CHECK(up->up_fails == 1);
	CHECK(a->calls == 1 && a->st == MUX_UNREACHABLE);
	teardown();
}

/* Through the real loop: dial, connect, write, read, answer. */
static void
test_end_to_end(void)
{
	struct conn	*c;
	struct rec	*a, *b;

	setup(1, 1, 8);
	c = &mux.ups[0].up_conns[0];
	make_idle(0, 0);
	a = sendname(0x7777, "e2e");
	CHECK(accept_dial_ms(0, 50) == NULL);	/* no dial yet */
	ev_run(loop, EVRUN_NOWAIT);
	CHECK(c->c_state == CONN_CONNECTING || c->c_state == CONN_READY);
	CHECK(accept_dial(0) == c);
	CHECK(spin_until(peer_readable, &peer[0][0], 2000));
	CHECK(c->c_state == CONN_READY && read_frames(peer[0][0]) == 1);
	CHECK(fr.n == 1 && memcmp(fr.m[0] + 13, "e2e", 3) == 0);
	reply(peer[0][0], fr.m[0], fr.len[0], dns_get16(fr.m[0]), F_QR);
	CHECK(spin(&a->calls, 2000));
	CHECK(a->st == MUX_ANSWER && stats.st_reconnects == 1);
	/* The server hangs up with a query written: it goes out again. */
	b = sendname(0x8888, "hangup");
	CHECK(spin_until(peer_readable, &peer[0][0], 2000));
	close(peer[0][0]);
	peer[0][0] = -1;
	CHECK(spin_until(conn_left_ready, c, 2000));
	CHECK(b->calls == 0 && pq_of(b)->pq_sends == 1);
	CHECK(c->c_state == CONN_CONNECTING && stats.st_reconnects == 2);
	CHECK(accept_dial(0) == c);
	CHECK(spin_until(peer_readable, &peer[0][0], 2000));
	CHECK(read_frames(peer[0][0]) == 1);
	CHECK(fr.n == 1 && memcmp(fr.m[0] + 13, "hangup", 6) == 0);
	reply(peer[0][0], fr.m[0], fr.len[0], dns_get16(fr.m[0]), F_QR);
	CHECK(spin(&b->calls, 2000));
	CHECK(b->st == MUX_ANSWER);
	teardown();
}

int
main(void)
{
	int	 i, accepted = 0;

	log_init(LOG_LVL_ERROR);
	tls_init();
	signal(SIGPIPE, SIG_IGN);
	loop = ev_default_loop(0);
	memset(peer, 0xff, sizeof(peer));
	test_id_rewrite();
	test_id_per_conn();
	test_bad_replies();
	test_frames();
	test_pipelining_and_spread();
	test_overload();
	test_unreachable_later();
	test_send_from_callback();
	test_deadline();
	test_deadline_not_silent();
	test_deadline_timer();
	test_fastopen_off();
	test_timer_after_io();
	test_rtt_arrival();
	test_arrived_bounds();
	test_extend();
	test_deadline_earlier_send();
	test_requeue_on_close();
	test_query_of_death();
	test_unwritten_not_counted();
	test_written_vs_queued();
	test_backoff();
	test_probe();
	test_rtt_choice();
	test_hedge();
	test_fail_over();
	test_share();
	test_attempt_ms();
	test_timeout_judgement();
	test_pick_demoted();
	test_slow_dial();
	test_dial_stalled();
	test_suspend();
	test_keep_warm();
	test_warm_backoff();
	test_warm_replaced();
	test_suspend_in_send();
	test_hash();
	test_chain();
	test_want_directions();
	test_tls_held_record();
	test_ack_policy();
	test_tls_records();
	test_handshake();
	test_end_to_end();
	/* Across every test: each accepted send called back exactly once. */
	for (i = 0; i < nrecs; i++) {
		CHECK(recs[i].calls == (recs[i].used ? 1 : 0));
		accepted += recs[i].used;
	}
	printf("test_mux: %d sends, %d accepted\n", nrecs, accepted);
	CHECK(accepted > 400);
	tls_shutdown();
	ev_loop_destroy(loop);
	return check_done("test_mux");
}

/*
 * Unit tests of mux.c: the pending table, ID rewriting, reply matching,
 * pipelining, deadlines, backoff and suspend handling.  mux.c is included
 * so its static functions can be driven directly; a socketpair stands in
 * for an upstream connection that is already up (plain TCP framing).
 */
#include "../mux.c"

#include <stdarg.h>

struct stats	 stats;

#include "check.h"

/* What client_deliver was given, newest last. */
static struct delivery {
	struct client_ref cr;
	uint8_t		 msg[512];
	size_t		 len;
} got[512];
static int	 ngot;

void
client_deliver(const struct client_ref *cr, uint8_t *msg, size_t len,
    const struct dns_qinfo *qi)
{
	(void)qi;
	if (ngot == (int)(sizeof(got) / sizeof(got[0])) || len > 512)
		return;
	got[ngot].cr = *cr;
	memcpy(got[ngot].msg, msg, len);
	got[ngot].len = len;
	ngot++;
}

static struct config	 cfg;
static struct ev_loop	*loop;
static int		 peer[UPSTREAMS_MAX][4];	/* far ends of conns */

/* A query for NAME (one label) with ID, type A, optional OPT. */
static size_t
mkquery(uint8_t *q, uint16_t id, const char *name, int opt)
{
	size_t	 n = strlen(name), len;

	memset(q, 0, 12);
	dns_put16(q, id);
	q[2] = 0x01;			/* RD */
	dns_put16(q + 4, 1);
	q[12] = (uint8_t)n;
	memcpy(q + 13, name, n);
	q[13 + n] = 0;
	len = 14 + n;
	dns_put16(q + len, 1);
	dns_put16(q + len + 2, 1);
	len += 4;
	if (opt) {
		static const uint8_t o[] = { 0, 0, 41, 0x10, 0, 0, 0, 0, 0,
		    0, 0 };
		dns_put16(q + 10, 1);
		memcpy(q + len, o, sizeof(o));
		len += sizeof(o);
	}
	return len;
}

static void
send_query(uint16_t id, const char *name, uint16_t port)
{
	struct client_ref	 cr;
	struct dns_qinfo	 qi;
	uint8_t			 q[512];
	size_t			 len = mkquery(q, id, name, 0);

	memset(&cr, 0, sizeof(cr));
	cr.cr_kind = CLIENT_UDP;
	cr.cr_addr.sin.sin_port = htons(port);
	if (dns_parse_query(q, len, &qi) != 0)
		abort();
	mux_query(&cr, q, len, &qi, 0);
}

/* Reads the frames dnsfwd wrote upstream into qs; returns how many. */
static int
read_upstream(int fd, uint8_t qs[][512], size_t *lens, int max)
{
	static uint8_t	 buf[65536];
	ssize_t		 n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
	size_t		 off = 0;
	int		 k = 0;

	while (n > 0 && off + 2 <= (size_t)n && k < max) {
		size_t l = dns_get16(buf + off);

		memcpy(qs[k], buf + off + 2, l);
		lens[k++] = l;
		off += 2 + l;
	}
	return k;
}

/* Answers query q (as seen upstream) with ID id and flags. */
static void
reply(int fd, const uint8_t *q, size_t len, uint16_t id, uint8_t flags)
{
	uint8_t	 r[514];

	dns_put16(r, (uint16_t)len);
	memcpy(r + 2, q, len);
	dns_put16(r + 2, id);
	r[4] |= flags;
	if (send(fd, r, len + 2, 0) != (ssize_t)(len + 2))
		abort();
}

static void
setup(int nup, int conns, int inflight)
{
	int	 i, j, sp[2];

	memset(&cfg, 0, sizeof(cfg));
	cfg.cf_nup = nup;
	cfg.cf_connections = conns;
	cfg.cf_max_inflight = inflight;
	cfg.cf_timeout_ms = 1000;
	cfg.cf_idle_timeout_s = 10;
	for (i = 0; i < nup; i++) {
		cfg.cf_up[i].uc_addr.sin.sin_family = AF_INET;
		cfg.cf_up[i].uc_addrlen = sizeof(struct sockaddr_in);
	}
	mux_init(loop, &cfg);
	for (i = 0; i < nup; i++) {
		for (j = 0; j < conns; j++) {
			struct conn *c = &mux.ups[i].up_conns[j];

			if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK,
			    0, sp) == -1)
				abort();
			c->c_fd = sp[0];
			peer[i][j] = sp[1];
			c->c_state = CONN_READY;
			ev_io_set(&c->c_rio, sp[0], EV_READ);
			ev_io_set(&c->c_wio, sp[0], EV_WRITE);
		}
	}
	ngot = 0;
	memset(&stats, 0, sizeof(stats));
}

static void
teardown(void)
{
	int	 i, j;

	for (i = 0; i < mux.nup; i++)
		for (j = 0; j < mux.cf->cf_connections; j++)
			close(peer[i][j]);
	mux_shutdown();
}

/* IDs upstream are not the client's, are unique, and map back. */
static void
test_id_rewrite(void)
{
	uint8_t		 qs[64][512];
	size_t		 lens[64];
	int		 i, j, n, same = 0;

	setup(1, 1, 64);
	for (i = 0; i < 50; i++) {
		char name[16];

		snprintf(name, sizeof(name), "n%d", i);
		send_query(0x1234, name, (uint16_t)(1000 + i));
	}
	flush_cb(loop, NULL, 0);
	n = read_upstream(peer[0][0], qs, lens, 64);
	CHECK(n == 50);
	for (i = 0; i < n; i++) {
		same += dns_get16(qs[i]) == 0x1234;
		for (j = 0; j < i; j++)
			CHECK(dns_get16(qs[i]) != dns_get16(qs[j]));
	}
	CHECK(same <= 1);	/* a random draw may hit it once, no more */
	/* Answer in reverse order: each client gets its own answer. */
	for (i = n - 1; i >= 0; i--)
		reply(peer[0][0], qs[i], lens[i], dns_get16(qs[i]), 0x80);
	conn_input(&mux.ups[0].up_conns[0], now_ms());
	CHECK(ngot == 50);
	for (i = 0; i < ngot; i++) {
		int k = ntohs(got[i].cr.cr_addr.sin.sin_port) - 1000;
		char name[16];

		snprintf(name, sizeof(name), "n%d", k);
		CHECK(dns_get16(got[i].msg) == 0x1234);
		CHECK(memcmp(got[i].msg + 13, name, strlen(name)) == 0);
	}
	CHECK(stats.st_answers == 50);
	CHECK(mux_inflight() == 0);
	teardown();
}

/* Replies with an unknown ID, another question or QR=0 are not taken. */
static void
test_bad_replies(void)
{
	uint8_t		 qs[4][512], other[512];
	size_t		 lens[4], olen;
	uint16_t	 id;

	setup(1, 1, 8);
	send_query(7, "good", 1);
	flush_cb(loop, NULL, 0);
	CHECK(read_upstream(peer[0][0], qs, lens, 4) == 1);
	id = dns_get16(qs[0]);
	reply(peer[0][0], qs[0], lens[0], (uint16_t)(id + 1), 0x80);
	olen = mkquery(other, id, "evil", 0);
	reply(peer[0][0], other, olen, id, 0x80);
	conn_input(&mux.ups[0].up_conns[0], now_ms());
	CHECK(ngot == 0);
	CHECK(stats.st_bad_replies == 2);
	CHECK(mux.ups[0].up_conns[0].c_state == CONN_READY);
	/* QR=0 is not a response at all: the stream is dropped. */
	reply(peer[0][0], qs[0], lens[0], id, 0);
	conn_input(&mux.ups[0].up_conns[0], now_ms());
	CHECK(ngot == 0);
	CHECK(stats.st_bad_replies == 3);
	CHECK(mux.ups[0].up_conns[0].c_state != CONN_READY);
	CHECK(mux_inflight() == 1);	/* waiting to be sent again */
	teardown();
}

/* Several queries ready at once leave in one write, pipelined. */
static void
test_pipelining_and_spread(void)
{
	uint8_t		 qs[128][512];
	size_t		 lens[128];
	int		 i, a, b;

	setup(1, 2, 100);
	for (i = 0; i < 100; i++)
		send_query((uint16_t)i, "x", (uint16_t)i);
	/* Fewest in flight first: the two connections share the load. */
	a = mux.ups[0].up_conns[0].c_inflight;
	b = mux.ups[0].up_conns[1].c_inflight;
	CHECK(a + b == 100 && a == 50 && b == 50);
	flush_cb(loop, NULL, 0);
	CHECK(read_upstream(peer[0][0], qs, lens, 128) == 50);
	/* Past the per-connection limit, queries wait in the queue. */
	for (i = 0; i < 150; i++)
		send_query((uint16_t)i, "y", (uint16_t)i);
	CHECK(mux.nwait == 50);
	CHECK(mux.ups[0].up_conns[0].c_inflight == 100);
	teardown();
}

/* A full pending table answers SERVFAIL at once and counts it. */
static void
test_overload(void)
{
	int	 i;

	setup(1, 1, 2);
	for (i = 0; i < mux.npool + 3; i++)
		send_query((uint16_t)i, "o", 1);
	CHECK(stats.st_overload == 3);
	CHECK(ngot == 3 && (got[0].msg[3] & 0x0f) == 2);
	CHECK(mux_inflight() == mux.npool);
	teardown();
}

/* At the deadline: SERVFAIL, and a silent connection is replaced. */
static void
test_deadline(void)
{
	struct conn	*c;
	struct pq	*pq;
	int		 i;

	setup(1, 1, 8);
	c = &mux.ups[0].up_conns[0];
	send_query(42, "slow", 1);
	send_query(43, "slow2", 2);
	CHECK(c->c_inflight == 2);
	TAILQ_FOREACH(pq, &mux.deadlines, pq_dlink) {
		pq->pq_deadline = now_ms() - 1;
		pq->pq_sent = now_ms();
	}
	deadline_cb(loop, NULL, 0);
	CHECK(ngot == 2);
	for (i = 0; i < ngot; i++) {
		CHECK((got[i].msg[3] & 0x0f) == 2);
		CHECK(got[i].msg[2] & 0x80);
	}
	CHECK(dns_get16(got[0].msg) == 42);
	CHECK(c->c_state != CONN_READY);	/* condemned */
	CHECK(mux_inflight() == 0);
	CHECK(stats.st_servfails == 2);
	teardown();
}

/* A connection that spoke since the query went out is kept. */
static void
test_deadline_not_silent(void)
{
	struct conn	*c;
	struct pq	*pq;

	setup(1, 1, 8);
	c = &mux.ups[0].up_conns[0];
	send_query(44, "late", 1);
	c->c_reads++;
	TAILQ_FOREACH(pq, &mux.deadlines, pq_dlink)
		pq->pq_deadline = now_ms() - 1;
	deadline_cb(loop, NULL, 0);
	CHECK(ngot == 1 && (got[0].msg[3] & 0x0f) == 2);
	CHECK(c->c_state == CONN_READY);
	/* Nothing in flight any more: it may now close when idle. */
	CHECK(ev_is_active(&c->c_timer));
	teardown();
}

/* A closed connection's queries go out again, in their order. */
static void
test_requeue_on_close(void)
{
	uint8_t		 qs[8][512];
	size_t		 lens[8];
	struct conn	*c0, *c1;

	setup(1, 2, 8);
	c0 = &mux.ups[0].up_conns[0];
	c1 = &mux.ups[0].up_conns[1];
	send_query(1, "a", 1);
	send_query(2, "b", 2);
	CHECK(c0->c_inflight == 1 && c1->c_inflight == 1);
	conn_close(c0, "test");
	close(peer[0][0]);
	peer[0][0] = socket(AF_INET, SOCK_DGRAM, 0);
	CHECK(mux.nwait == 1);
	dispatch(now_ms());
	CHECK(c1->c_inflight == 2);
	flush_cb(loop, NULL, 0);
	CHECK(read_upstream(peer[0][1], qs, lens, 8) == 2);
	CHECK(memcmp(qs[1] + 13, "a", 1) == 0);
	teardown();
}

static void
revive(int u, int i)
{
	struct conn	*c = &mux.ups[u].up_conns[i];
	int		 sp[2];

	close(peer[u][i]);
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sp) == -1)
		abort();
	c->c_fd = sp[0];
	peer[u][i] = sp[1];
	c->c_state = CONN_READY;
	ev_io_set(&c->c_rio, sp[0], EV_READ);
	ev_io_set(&c->c_wio, sp[0], EV_WRITE);
}

/* A query that every connection dies with fails after PQ_MAX_SENDS. */
static void
test_query_of_death(void)
{
	struct conn	*c;
	int		 i;

	setup(1, 1, 8);
	c = &mux.ups[0].up_conns[0];
	send_query(77, "death", 1);
	for (i = 1; i < PQ_MAX_SENDS; i++) {
		CHECK(c->c_inflight == 1);
		conn_close(c, "test");
		CHECK(ngot == 0 && mux.nwait == 1);
		revive(0, 0);
		dispatch(now_ms());
	}
	CHECK(c->c_inflight == 1);
	conn_close(c, "test");
	CHECK(ngot == 1 && (got[0].msg[3] & 0x0f) == 2);
	CHECK(dns_get16(got[0].msg) == 77);
	CHECK(mux_inflight() == 0);
	revive(0, 0);
	teardown();
}

/* Failed dials back off from 250 ms doubling to 30 s, with jitter. */
static void
test_backoff(void)
{
	struct upstream	*up;
	int64_t		 now = now_ms();
	int		 i, expect = BACKOFF_MIN_MS;

	setup(2, 1, 8);
	up = &mux.ups[0];
	for (i = 0; i < 12; i++) {
		upstream_failed(up, "test", now);
		CHECK(up->up_backoff_ms == expect);
		CHECK(up->up_retry_at <= now + expect);
		CHECK(up->up_retry_at >= now + expect - expect / 4);
		expect = expect * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS :
		    expect * 2;
	}
	/* Backing off, it is passed over while the other is healthy. */
	up->up_conns[0].c_state = CONN_IDLE;
	mux.nwait = 1;
	CHECK(pick_upstream(now) == &mux.ups[1]);
	mux.ups[1].up_fails = 1;
	mux.ups[1].up_retry_at = now + 1000;
	mux.ups[1].up_conns[0].c_state = CONN_IDLE;
	CHECK(pick_upstream(now) == NULL);
	/* Once its period is over, one probe may go. */
	CHECK(pick_upstream(up->up_retry_at) == up);
	mux.nwait = 0;
	up->up_conns[0].c_state = CONN_READY;
	mux.ups[1].up_conns[0].c_state = CONN_READY;
	teardown();
}

/* Among healthy upstreams, the lowest round-trip time wins. */
static void
test_rtt_choice(void)
{
	setup(3, 1, 8);
	mux.ups[0].up_rtt8 = 8 * 40;
	mux.ups[1].up_rtt8 = 8 * 5;
	mux.ups[2].up_rtt8 = 8 * 20;
	CHECK(pick_upstream(now_ms()) == &mux.ups[1]);
	send_query(9, "r", 1);
	CHECK(mux.ups[1].up_conns[0].c_inflight == 1);
	teardown();
}

/* An upstream stuck dialling past half the timeout yields to another. */
static void
test_slow_dial(void)
{
	struct conn	*a;

	setup(2, 1, 8);
	mux.ups[0].up_rtt8 = 8;
	mux.ups[1].up_rtt8 = 8 * 50;
	a = &mux.ups[0].up_conns[0];
	a->c_state = CONN_CONNECTING;
	mux.nwait = 1;
	CHECK(pick_upstream(now_ms()) == &mux.ups[0]);
	a->c_slow = 1;
	CHECK(pick_upstream(now_ms()) == &mux.ups[1]);
	mux.ups[1].up_conns[0].c_state = CONN_CONNECTING;
	mux.ups[1].up_conns[0].c_slow = 1;
	/* Both slow: the faster one again, rather than nobody. */
	CHECK(pick_upstream(now_ms()) == &mux.ups[0]);
	mux.nwait = 0;
	a->c_state = CONN_READY;
	mux.ups[1].up_conns[0].c_state = CONN_READY;
	teardown();
}

/* When the boot clock jumps past the monotonic one, start afresh. */
static void
test_suspend(void)
{
	int64_t	 now = now_ms();

	setup(1, 1, 8);
	send_query(5, "s", 1);
	mux.ups[0].up_fails = 3;
	mux.ups[0].up_backoff_ms = 2000;
	check_suspend(now, now + mux.boot_offset + 500);
	CHECK(mux.ups[0].up_conns[0].c_state == CONN_READY);
	check_suspend(now, now + mux.boot_offset + 60000);
	CHECK(mux.ups[0].up_conns[0].c_state == CONN_IDLE);
	CHECK(mux.ups[0].up_fails == 0 && mux.ups[0].up_backoff_ms == 0);
	CHECK(mux.nwait == 1);
	/* Requeued, not lost: it is answered later or at its deadline. */
	CHECK(mux_inflight() == 1);
	mux.ups[0].up_conns[0].c_state = CONN_READY;
	mux.ups[0].up_conns[0].c_fd = -1;
	teardown();
}

/* The ID hash finds, refuses duplicates and removes from chains. */
static void
test_hash(void)
{
	struct conn	*c;
	struct pq	*pq;
	int		 i;

	setup(1, 1, 16);
	c = &mux.ups[0].up_conns[0];
	for (i = 0; i < 16; i++)
		send_query((uint16_t)i, "h", 1);
	i = 0;
	TAILQ_FOREACH(pq, &c->c_pqs, pq_link) {
		CHECK(hash_find(c, pq->pq_upid) == pq);
		i++;
	}
	CHECK(i == 16);
	/* Answered in another order than sent, each leaves the table. */
	while ((pq = TAILQ_LAST(&c->c_pqs, pqlist)) != NULL) {
		uint16_t id = pq->pq_upid;

		pq_detach(pq);
		pq_free(pq);
		CHECK(hash_find(c, id) == NULL);
		TAILQ_FOREACH(pq, &c->c_pqs, pq_link)
			CHECK(hash_find(c, pq->pq_upid) == pq);
	}
	teardown();
}

/* Index chains unlink at the head, the middle and the tail. */
static void
test_chain(void)
{
	struct { int32_t next; } el[5];
	int32_t	*b = chain_buckets(0);	/* one bucket: every index collides */
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
	CHECK(b[0] == 3 && el[3].next == 1 && el[1].next == -1);
	free(b);
}

int
main(void)
{
	log_init(LOG_LVL_ERROR);
	tls_init();
	signal(SIGPIPE, SIG_IGN);
	loop = ev_default_loop(0);
	test_id_rewrite();
	test_bad_replies();
	test_pipelining_and_spread();
	test_overload();
	test_deadline();
	test_deadline_not_silent();
	test_requeue_on_close();
	test_query_of_death();
	test_backoff();
	test_rtt_choice();
	test_slow_dial();
	test_suspend();
	test_hash();
	test_chain();
	tls_shutdown();
	ev_loop_destroy(loop);
	return check_done("test_mux");
}

/*
 * libFuzzer target: the upstream side of mux.c, where the bytes an
 * upstream sends are framed (conn_input, conn_frames) and matched to
 * pending queries (conn_reply).
 *
 * mux.c is included, as tests/test_mux.c does, so its static functions
 * can be driven; dns.c, tls.c, log.c and util.c are linked (util.c's
 * clock and randomness replaced, see fuzz.h, so upstream IDs follow the
 * input).  The one upstream is plain DNS over TCP; each of its
 * connections is put up on a socketpair whose far end the harness holds,
 * as if dialled and ready.  A dial the mux makes on its own fails at once
 * (the upstream's address has no family), so the upstream then backs off
 * and waiting queries end MUX_UNREACHABLE.  No TLS session ever exists:
 * tls.c is only handed NULL to free.  No event loop runs: the harness
 * calls the prepare watcher (flush_cb), conn_input and the deadline
 * timer's callback itself, with its own clock.
 *
 * Input: 2 bytes of configuration, then operations until it runs out:
 *   byte 0   connections - 1 (bit 0: 1 or 2)
 *   byte 1   --max-inflight - 1 (low 3 bits: 1 to 8)
 *   op 0 SEND     name (low 3 bits: one of 8, bit 3 upper case, bit 4:
 *                 labels from the input), type, ID (2), deadline in
 *                 20 ms steps, pad (a byte: bytes of OPT padding * 4,
 *                 0xff: longer than UPQUERY_MAX), resend (bit 0: the
 *                 callback sends the query again)
 *   op 1 FLUSH    flush_cb: waiting queries are framed and written; the
 *                 harness reads the far ends and checks every frame
 *   op 2 REPLY    connection, which of its queries (k), kind, length
 *                 (2 bytes) and a message: a frame is added to that
 *                 connection's stream.  Kind 4 (or no query there):
 *                 the message as it is, possibly not a response at all
 *                 (the connection must then close).  Otherwise the
 *                 query's question with its upstream ID and QR, the
 *                 message's flags and counts, and everything after the
 *                 message's own question (or header): kind 0 as is,
 *                 1 the name in other letters, 2 another type, 3
 *                 another ID, 5 another question count
 *   op 3 CHUNK    connection, size (2 bytes): that much of its stream is
 *                 written to the far end and conn_input reads it, so
 *                 frames arrive split anywhere
 *   op 4 TIME     2 bytes (high bit: seconds, else ms), then the
 *                 deadline callback when the earliest deadline passed
 *   op 5 CLOSE    connection: its far end shuts down its writing side
 *                 (bit 1: or closes), and conn_input sees it
 *   op 6 REVIVE   every idle connection is put up again
 *   op 7 NETCHANGE mux_netchange, or (bit 0 of the next byte) a resume
 *                 from suspend: every connection is replaced
 * At the end the clock jumps past every deadline.
 *
 * Invariants (abort on failure): exactly one callback per accepted
 * mux_send, never from inside mux_send, none for a refused one; an
 * answer carries the upstream ID the mux gave the query (the pq's
 * pq_upid), QR, QDCOUNT 1 and the query's question (name compared
 * case-insensitively, type and class exactly), and is byte for byte a
 * frame the upstream sent; other endings carry no message; every frame
 * written upstream is a query that was sent, whole, with an ID; the
 * pool is empty at the end, the wait queue and deadline list too.
 *
 * Seeds: fuzz/corpus/upstream, made by fuzz/mkcorpus.py.  Built with
 * -DFZ_STATS, it prints how many sends were answered after each input.
 */
#include "../conn.c"
#include "../upstream.c"
#include "../mux.c"

#include <sys/socket.h>

#include "fuzz.h"

struct stats	 stats;

#define CONNS		2
#define RECS_MAX	256
#define FRAMES_MAX	1024
#define STREAM_MAX	(1 << 17)

static struct ev_loop	*loop;
static struct config	 cfg;
static int		 peer[CONNS];
static int		 in_send;
static int		 nanswers, nended;

/* One mux_send and what became of it; the callback's arg. */
static struct rec {
	uint8_t		 q[UPQUERY_MAX + 64];
	size_t		 len;
	size_t		 qend;
	int		 handle;
	int		 used;
	int		 calls;
	int		 resend;
} recs[RECS_MAX];
static int		 nrecs;

/* What each far end is to send, and how much of it went. */
static struct {
	uint8_t		 b[STREAM_MAX];
	size_t		 len;
	size_t		 sent;
	/* What the mux wrote there, not yet whole frames. */
	uint8_t		 in[1 << 16];
	size_t		 inlen;
} side[CONNS];

/* Every frame put in a stream, for comparing with what is delivered. */
static uint8_t		 fbytes[1 << 18];
static size_t		 fblen;
static struct {
	size_t		 off;
	size_t		 len;
} frames[FRAMES_MAX];
static int		 nframes;

static void	 done_cb(void *, enum mux_status, uint8_t *, size_t, int64_t);

static struct rec *
send_rec(const uint8_t *q, size_t len, int64_t deadline, int resend)
{
	struct rec	*r;

	if (nrecs == RECS_MAX)
		return NULL;
	r = &recs[nrecs++];
	memset(r, 0, sizeof(*r));
	memcpy(r->q, q, len < sizeof(r->q) ? len : sizeof(r->q));
	r->len = len;
	r->qend = fz_qend(q, len);
	r->resend = resend;
	in_send = 1;
	r->handle = mux_send(q, len, deadline, done_cb, r, fz_now);
	in_send = 0;
	r->used = r->handle != -1;
	/* The mux refuses what it cannot frame: no question, too long. */
	if (len > UPQUERY_MAX || r->qend == 0)
		FZ_CHECK(!r->used);
	if (r->used)
		FZ_CHECK(r->handle >= 0 && r->handle < mux.npool);
	return r;
}

/* A delivered answer is byte for byte a frame the upstream sent. */
static int
was_sent(const uint8_t *m, size_t len)
{
	int	 i;

	for (i = 0; i < nframes; i++)
		if (frames[i].len == len &&
		    memcmp(fbytes + frames[i].off, m, len) == 0)
			return 1;
	return 0;
}

static void
done_cb(void *arg, enum mux_status st, uint8_t *reply, size_t len,
    int64_t now)
{
	struct rec	*r = arg;
	struct pq	*pq;

	FZ_CHECK(!in_send);
	FZ_CHECK(r >= recs && r < recs + nrecs && r->used);
	FZ_CHECK(r->calls++ == 0);
	nended++;
	FZ_CHECK(now == fz_now);
	pq = &mux.pool[r->handle];
	/*
	 * The pq is free again before its sender hears, unless a copy is
	 * still out (its late answer tells how that upstream is doing).
	 */
	FZ_CHECK(pq->pq_done == NULL);
	FZ_CHECK(pq->pq_list == PQ_ON_FREE ? TAILQ_FIRST(&mux.free) == pq :
	    pq_live(pq) > 0);
	if (st == MUX_ANSWER) {
		FZ_CHECK(reply != NULL && len >= DNS_HDRLEN &&
		    len <= DNS_MAXMSG);
		FZ_CHECK(fz_get16(reply) == pq->pq_att[0].a_upid ||
		    fz_get16(reply) == pq->pq_att[1].a_upid);
		FZ_CHECK((reply[2] & F_QR) && fz_get16(reply + 4) == 1);
		FZ_CHECK(fz_question_eq(reply, fz_qend(reply, len), r->q,
		    r->qend));
		FZ_CHECK(was_sent(reply, len));
		nanswers++;
	} else
		FZ_CHECK(reply == NULL && len == 0);
	if (r->resend)
		(void)send_rec(r->q, r->len, now + 1000, 0);
}

/* Conn i up on a fresh socketpair, as conn_dial and conn_ready leave it. */
static void
connect_pair(int i)
{
	struct conn	*c = &mux.ups[0].up_conns[i];
	int		 sp[2];

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0,
	    sp) == -1)
		abort();
	c->c_fd = sp[0];
	peer[i] = sp[1];
	c->c_state = CONN_READY;
	c->c_slow = 0;
	c->c_inlen = c->c_outoff = c->c_outlen = 0;
	c->c_queued = c->c_written = 0;
	c->c_write_wants_read = c->c_read_wants_write = 0;
	c->c_idle_ms = cfg.cf_idle_timeout_s * 1000LL;
	ev_io_set(&c->c_rio, sp[0], EV_READ);
	ev_io_set(&c->c_wio, sp[0], EV_WRITE);
	ev_io_start(loop, &c->c_rio);
	side[i].len = side[i].sent = side[i].inlen = 0;
}

static struct conn *
conn_at(int i)
{
	return i < cfg.cf_connections ? &mux.ups[0].up_conns[i] : NULL;
}

/* Reads what the mux wrote to far end i: whole frames of sent queries. */
static void
drain(int i)
{
	ssize_t	 n;
	size_t	 off = 0, l;
	int	 k, ok;

	if (peer[i] == -1)
		return;
	while (side[i].inlen < sizeof(side[i].in) &&
	    (n = recv(peer[i], side[i].in + side[i].inlen,
	    sizeof(side[i].in) - side[i].inlen, 0)) > 0)
		side[i].inlen += (size_t)n;
	while (side[i].inlen - off >= 2) {
		l = fz_get16(side[i].in + off);
		if (side[i].inlen - off - 2 < l)
			break;
		/* A query that was sent, with some ID in front. */
		FZ_CHECK(l >= DNS_HDRLEN);
		for (ok = 0, k = 0; k < nrecs && !ok; k++)
			ok = recs[k].used && recs[k].len == l &&
			    memcmp(recs[k].q + 2, side[i].in + off + 4,
			    l - 2) == 0;
		FZ_CHECK(ok);
		off += 2 + l;
	}
	memmove(side[i].in, side[i].in + off, side[i].inlen - off);
	side[i].inlen -= off;
}

static void
op_send(struct fin *f)
{
	uint8_t		 q[UPQUERY_MAX + 64], nb = fin_u8(f);
	uint16_t	 type = fin_u8(f), id = fin_u16(f);
	int64_t		 deadline = fz_now + 1 + 20 * fin_u8(f);
	uint8_t		 pad = fin_u8(f), resend = fin_u8(f) & 1;
	size_t		 n = DNS_HDRLEN, l;

	memset(q, 0, DNS_HDRLEN);
	dns_put16(q, id);
	q[2] = F_RD;
	dns_put16(q + 4, 1);
	n += fin_name(f, nb, q + n);
	dns_put16(q + n, type);
	dns_put16(q + n + 2, 1);
	n += 4;
	/* An OPT with padding, as query.c sends, or too long a message. */
	l = pad == 0xff ? UPQUERY_MAX + 1 - n - 15 : (size_t)pad * 4 % 400;
	if (l > 0 && n + 15 + l <= sizeof(q)) {
		dns_put16(q + 10, 1);
		q[n] = 0;
		dns_put16(q + n + 1, DNS_TYPE_OPT);
		dns_put16(q + n + 3, 1232);
		memset(q + n + 5, 0, 4);
		dns_put16(q + n + 9, (uint16_t)(4 + l));
		dns_put16(q + n + 11, DNS_OPT_PADDING);
		dns_put16(q + n + 13, (uint16_t)l);
		memset(q + n + 15, 0, l);
		n += 15 + l;
	}
	(void)send_rec(q, n, deadline, resend);
}

/* Appends a frame holding m to far end i's stream. */
static void
add_frame(int i, const uint8_t *m, size_t len)
{
	if (side[i].len + 2 + len > STREAM_MAX || nframes == FRAMES_MAX ||
	    fblen + len > sizeof(fbytes))
		return;
	dns_put16(side[i].b + side[i].len, (uint16_t)len);
	memcpy(side[i].b + side[i].len + 2, m, len);
	side[i].len += 2 + len;
	memcpy(fbytes + fblen, m, len);
	frames[nframes].off = fblen;
	frames[nframes++].len = len;
	fblen += len;
}

static void
op_reply(struct fin *f)
{
	static uint8_t	 m[DNS_MAXMSG];
	uint8_t		 ci = fin_u8(f) % CONNS, k = fin_u8(f), k0 = k;
	uint8_t		 kind = fin_u8(f) % 6;
	const uint8_t	*extra;
	size_t		 elen = fin_take(f, fin_u16(f), &extra), len, qend, i;
	struct conn	*c = conn_at(ci);
	struct att	*a = NULL;
	struct pq	*pq;

	if (c == NULL)
		return;
	if (c->c_inflight > 0) {
		k %= c->c_inflight;
		TAILQ_FOREACH(a, &c->c_atts, a_link)
			if (k-- == 0)
				break;
	}
	if (kind == 4 || a == NULL) {
		add_frame(ci, extra, elen);
		return;
	}
	/* The query's header and question, with extra's flags and counts. */
	pq = a->a_pq;
	len = pq->pq_qend;
	memcpy(m, pq->pq_query, len);
	memset(m + 6, 0, 6);
	if (elen >= DNS_HDRLEN) {
		memcpy(m + 2, extra + 2, 2);
		memcpy(m + 6, extra + 6, 6);
	}
	dns_put16(m, a->a_upid);
	m[2] |= F_QR;
	/* Then what follows extra's own question (or header). */
	if ((qend = fz_qend(extra, elen)) > 0) {
		extra += qend;
		elen -= qend;
	} else if (elen >= DNS_HDRLEN) {
		extra += DNS_HDRLEN;
		elen -= DNS_HDRLEN;
	}
	switch (kind) {
	case 1:
		for (i = DNS_HDRLEN; i < len - 4; i++)
			if ((m[i] | 0x20) >= 'a' && (m[i] | 0x20) <= 'z')
				m[i] ^= 0x20;
		break;
	case 2:
		m[len - 3] ^= (uint8_t)(1 + (k0 & 0x7f));
		break;
	case 3:
		dns_put16(m, (uint16_t)(a->a_upid + 1 + k0));
		break;
	case 5:
		dns_put16(m + 4, (uint16_t)(k0 & 3 ? k0 & 3 : 2));
		break;
	}
	memcpy(m + len, extra, elen);
	add_frame(ci, m, len + elen);
}

static void
op_chunk(struct fin *f)
{
	uint8_t		 ci = fin_u8(f) % CONNS;
	size_t		 want = fin_u16(f), n;
	struct conn	*c = conn_at(ci);
	ssize_t		 w;

	if (c == NULL || c->c_state != CONN_READY || peer[ci] == -1)
		return;
	n = side[ci].len - side[ci].sent;
	if (want < n)
		n = want;
	if (n > 0) {
		w = send(peer[ci], side[ci].b + side[ci].sent, n,
		    MSG_NOSIGNAL);
		if (w > 0)
			side[ci].sent += (size_t)w;
	}
	conn_input(c, fz_now);
	drain(ci);
}

static void
run_deadlines(void)
{
	struct pq	*pq = TAILQ_FIRST(&mux.deadlines);

	/* The harness has read every reply it wrote: no pass to wait for. */
	mux.deadline_looked = fz_now;
	if (pq != NULL && pq->pq_deadline <= fz_now)
		deadline_cb(loop, &mux.deadline_timer, EV_TIMER);
}

static void
op_close(struct fin *f)
{
	uint8_t		 b = fin_u8(f), ci = b % CONNS;
	struct conn	*c = conn_at(ci);

	if (c == NULL || c->c_state != CONN_READY || peer[ci] == -1)
		return;
	if (b & 2) {
		close(peer[ci]);
		peer[ci] = -1;
	} else
		shutdown(peer[ci], SHUT_WR);
	conn_input(c, fz_now);
	FZ_CHECK(c->c_state == CONN_IDLE);
}

static void
op_revive(void)
{
	int	 i;

	for (i = 0; i < cfg.cf_connections; i++) {
		if (mux.ups[0].up_conns[i].c_state != CONN_IDLE)
			continue;
		if (peer[i] != -1)
			close(peer[i]);
		connect_pair(i);
	}
}

static void
op_netchange(struct fin *f)
{
	if (fin_u8(f) & 1) {
		fz_boot_off += SUSPEND_MS + 1;
		mux.kick = 1;
		flush_cb(loop, &mux.flush_prep, EV_PREPARE);
	} else
		mux_netchange(1, fz_now);
}

int	LLVMFuzzerTestOneInput(const uint8_t *, size_t);
int	LLVMFuzzerInitialize(int *, char ***);

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	log_init(LOG_LVL_ERROR);
	loop = ev_loop_new(EVFLAG_AUTO);
	return loop == NULL;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fin	 f = { data, size };
	uint16_t	 v;
	int		 i;

	fz_reset_clock(size);
	nrecs = nframes = nanswers = nended = 0;
	fblen = 0;
	memset(&stats, 0, sizeof(stats));
	memset(&cfg, 0, sizeof(cfg));
	cfg.cf_nup = 1;
	cfg.cf_connections = 1 + (fin_u8(&f) & 1);
	cfg.cf_max_inflight = 1 + (fin_u8(&f) & 7);
	cfg.cf_timeout_ms = 1000;
	cfg.cf_idle_timeout_s = 10;
	/* AF_UNSPEC: a dial fails at once, and the upstream backs off. */
	cfg.cf_up[0].uc_addrlen = sizeof(struct sockaddr_in);
	mux_init(loop, &cfg);
	for (i = 0; i < CONNS; i++)
		peer[i] = -1;
	for (i = 0; i < cfg.cf_connections; i++)
		connect_pair(i);
	while (f.n > 0) {
		switch (fin_u8(&f) % 8) {
		case 0:
			op_send(&f);
			break;
		case 1:
			flush_cb(loop, &mux.flush_prep, EV_PREPARE);
			for (i = 0; i < cfg.cf_connections; i++)
				drain(i);
			break;
		case 2:
			op_reply(&f);
			break;
		case 3:
			op_chunk(&f);
			break;
		case 4:
			v = fin_u16(&f);
			fz_now += v & 0x8000 ? (int64_t)(v & 0x7fff) * 1000 : v;
			run_deadlines();
			break;
		case 5:
			op_close(&f);
			break;
		case 6:
			op_revive();
			break;
		case 7:
			op_netchange(&f);
			break;
		}
	}
	/* Every send still pending reaches its deadline (resends too). */
	for (i = 0; i < 2; i++) {
		fz_now += 100000000;
		run_deadlines();
	}
	FZ_CHECK(mux_inflight() == 0);
	FZ_CHECK(TAILQ_EMPTY(&mux.deadlines) && TAILQ_EMPTY(&mux.waitq) &&
	    mux.nwait == 0);
	for (i = 0; i < nrecs; i++)
		FZ_CHECK(recs[i].calls == recs[i].used);
	for (i = 0; i < CONNS; i++)
		if (peer[i] != -1)
			close(peer[i]);
#ifdef FZ_STATS
	fprintf(stderr, "sends %d answers %d ended %d bad %llu\n", nrecs,
	    nanswers, nended, (unsigned long long)stats.st_bad_replies);
#endif
	mux_shutdown();
	return 0;
}

/*
 * Unit tests for dns.c.  Messages are built by hand, and every buffer
 * handed to dns.c is copied into a heap block of exactly its length, so
 * that under -fsanitize=address any read past the end is reported.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dns.h"

#define T_A	1
#define T_NS	2
#define T_AAAA	28
#define T_TSIG	250
#define C_IN	1
#define C_CH	3

/* A hash key made from a number, for keys tests can name. */
static const uint8_t *
tkey(uint32_t n)
{
	static uint8_t	 k[2][SIPHASH_KEYLEN];
	static int	 i;

	i ^= 1;
	memset(k[i], 0, sizeof(k[i]));
	memcpy(k[i], &n, sizeof(n));
	return k[i];
}

#define FUZZ_ROUNDS	20000

struct msg {
	uint8_t	m_b[2048];
	size_t	m_len;
};

static void	check(int, const char *, int);
static void	m_u8(struct msg *, unsigned int);
static void	m_u16(struct msg *, unsigned int);
static void	m_bytes(struct msg *, const void *, size_t);
static void	m_label(struct msg *, size_t, char);
static void	m_name(struct msg *, const char *);
static void	m_hdr(struct msg *, uint16_t, uint8_t, uint16_t, uint16_t,
		    uint16_t, uint16_t);
static void	m_opt(struct msg *, uint16_t, int, const uint8_t *, size_t);
static void	m_question(struct msg *, const char *, uint16_t, uint16_t);
static void	mkquery(struct msg *, const char *, uint16_t, int, uint16_t,
		    int);
static void	mkreply(struct msg *, const struct msg *);
static uint8_t	*dup_exact(const uint8_t *, size_t);
static int	parse(const struct msg *, struct dns_qinfo *);
static int	matches(const struct msg *, const struct msg *, size_t);
static void	test_parse_good(void);
static void	test_parse_additional(void);
static void	test_parse_reject_header(void);
static void	test_parse_reject_question(void);
static void	test_parse_reject_additional(void);
static void	test_matches(void);
static void	test_matches_reject(void);
static void	test_truncate(void);
static void	test_servfail(void);
static void	test_servfail_opt(void);
static void	m_opt_full(struct msg *, uint16_t, uint8_t, uint8_t,
		    uint16_t, const uint8_t *, size_t);
static void	mkquery_opts(struct msg *, const char *, const uint8_t *,
		    size_t);
static size_t	ecs_opt(uint8_t *, size_t);
static void	test_parse_results(void);
static size_t	error_exact(uint8_t *, size_t, const struct msg *, int);
static void	test_error(void);
struct cq;
static void	cq_make(struct cq *, const char *, uint16_t, uint8_t,
		    uint8_t, int, int, size_t, int);
static void	test_upstream_query(void);
static void	mkanswer(struct msg *, uint16_t, uint16_t, uint16_t);
static void	m_a(struct msg *, uint8_t);
static size_t	strip_exact(struct msg *);
static void	test_strip_opt(void);
static size_t	finish_exact(uint8_t *, const struct msg *, size_t,
		    const struct cq *, int, const char *);
static void	test_finish(void);
static void	test_key(void);
static void	test_keepalive(void);
static uint32_t	rnd(void);
static void	mutate(uint8_t *, size_t *, size_t);
static int	fuzz_error(const uint8_t *, size_t, int);
static int	fuzz_forward(const uint8_t *, size_t,
		    const struct dns_qinfo *);
static int	fuzz_query(const uint8_t *, size_t, int *);
static void	test_fuzz_query(void);
static void	test_fuzz_reply(void);
static void	test_fuzz_strip(void);

static int	npass, nfail;
static uint32_t	rnd_state = 0x2545f491;

#define CHECK(what, cond)	check((cond) != 0, (what), __LINE__)

static void
check(int ok, const char *what, int line)
{
	if (ok) {
		npass++;
		return;
	}
	nfail++;
	printf("FAIL line %d: %s\n", line, what);
}

static void
m_u8(struct msg *m, unsigned int v)
{
	if (m->m_len >= sizeof(m->m_b)) {
		fprintf(stderr, "test message overflow\n");
		exit(2);
	}
	m->m_b[m->m_len++] = (uint8_t)v;
}

static void
m_u16(struct msg *m, unsigned int v)
{
	m_u8(m, v >> 8 & 0xff);
	m_u8(m, v & 0xff);
}

static void
m_bytes(struct msg *m, const void *p, size_t n)
{
	const uint8_t	*b = p;

	while (n-- > 0)
		m_u8(m, *b++);
}

/* One label of n copies of c; n is written as is, even when over 63. */
static void
m_label(struct msg *m, size_t n, char c)
{
	m_u8(m, (unsigned int)n);
	while (n-- > 0)
		m_u8(m, (unsigned char)c);
}

/* A dotted name, root included; "" and "." are the root alone. */
static void
m_name(struct msg *m, const char *name)
{
	const char	*dot;
	size_t		 n;

	while (*name != '\0' && strcmp(name, ".") != 0) {
		dot = strchr(name, '.');
		n = dot != NULL ? (size_t)(dot - name) : strlen(name);
		m_u8(m, (unsigned int)n);
		m_bytes(m, name, n);
		name += n + (dot != NULL);
	}
	m_u8(m, 0);
}

static void
m_hdr(struct msg *m, uint16_t id, uint8_t flags2, uint16_t qd, uint16_t an,
    uint16_t ns, uint16_t ar)
{
	m->m_len = 0;
	m_u16(m, id);
	m_u8(m, flags2);
	m_u8(m, 0);
	m_u16(m, qd);
	m_u16(m, an);
	m_u16(m, ns);
	m_u16(m, ar);
}

static void
m_opt(struct msg *m, uint16_t size, int do_bit, const uint8_t *rd,
    size_t rdlen)
{
	m_u8(m, 0);
	m_u16(m, DNS_TYPE_OPT);
	m_u16(m, size);
	m_u16(m, 0);
	m_u16(m, do_bit ? 0x8000 : 0);
	m_u16(m, (unsigned int)rdlen);
	m_bytes(m, rd, rdlen);
}

static void
m_question(struct msg *m, const char *name, uint16_t type, uint16_t class)
{
	m_name(m, name);
	m_u16(m, type);
	m_u16(m, class);
}

/* A recursive query with id 0x1234, optionally with an empty OPT. */
static void
mkquery(struct msg *m, const char *name, uint16_t type, int opt,
    uint16_t size, int do_bit)
{
	m_hdr(m, 0x1234, 0x01, 1, 0, 0, opt ? 1 : 0);
	m_question(m, name, type, C_IN);
	if (opt)
		m_opt(m, size, do_bit, NULL, 0);
}

/* The query turned into a NOERROR reply with one A record. */
static void
mkreply(struct msg *r, const struct msg *q)
{
	static const uint8_t	rr[] = { 0xc0, 0x0c, 0, T_A, 0, C_IN,
	    0, 0, 0x0e, 0x10, 0, 4, 192, 0, 2, 1 };

	*r = *q;
	r->m_b[2] |= 0x80;
	r->m_b[3] = 0x80;
	dns_put16(r->m_b + 6, 1);
	m_bytes(r, rr, sizeof(rr));
}

static uint8_t *
dup_exact(const uint8_t *p, size_t n)
{
	uint8_t	*d;

	/* Even malloc(0) gives a block ASan guards. */
	if ((d = malloc(n)) == NULL && n > 0) {
		perror("malloc");
		exit(2);
	}
	if (n > 0)
		memcpy(d, p, n);
	return d;
}

static int
parse(const struct msg *m, struct dns_qinfo *qi)
{
	uint8_t	*b = dup_exact(m->m_b, m->m_len);
	int	 rv;

	rv = dns_parse_query(b, m->m_len, qi);
	free(b);
	return rv;
}

/* The query is cut at qend, so reading past its question is caught. */
static int
matches(const struct msg *r, const struct msg *q, size_t qend)
{
	uint8_t	*rb = dup_exact(r->m_b, r->m_len);
	uint8_t	*qb = dup_exact(q->m_b, qend);
	int	 rv;

	rv = dns_reply_matches(rb, r->m_len, qb, qend);
	free(rb);
	free(qb);
	return rv;
}

static void
test_parse_good(void)
{
	struct msg		m;
	struct dns_qinfo	qi;

	mkquery(&m, "example.com", T_A, 0, 0, 0);
	CHECK("plain query parses", parse(&m, &qi) == 0);
	CHECK("plain query: qend after question", qi.qi_qend == 12 + 13 + 4);
	CHECK("plain query: qtype", qi.qi_qtype == T_A);
	CHECK("plain query: qclass", qi.qi_qclass == C_IN);
	CHECK("plain query: no OPT",
	    qi.qi_has_opt == 0 && qi.qi_udpsize == 0 && qi.qi_do == 0);

	mkquery(&m, "example.com", T_AAAA, 1, 4096, 0);
	CHECK("OPT query parses", parse(&m, &qi) == 0);
	CHECK("OPT query: has_opt, udpsize 4096, DO clear",
	    qi.qi_has_opt == 1 && qi.qi_udpsize == 4096 && qi.qi_do == 0);
	CHECK("OPT query: qend and qtype",
	    qi.qi_qend == 29 && qi.qi_qtype == T_AAAA);

	mkquery(&m, "example.com", T_A, 1, 1232, 1);
	CHECK("DO query parses", parse(&m, &qi) == 0);
	CHECK("DO query: DO set", qi.qi_do == 1 && qi.qi_udpsize == 1232);

	mkquery(&m, "example.com", T_A, 1, 100, 0);
	CHECK("OPT udpsize 100 parses", parse(&m, &qi) == 0);
	CHECK("OPT udpsize 100 clamps to 512", qi.qi_udpsize == 512);
	mkquery(&m, "example.com", T_A, 1, 0, 0);
	CHECK("OPT udpsize 0 clamps to 512",
	    parse(&m, &qi) == 0 && qi.qi_udpsize == 512);

	mkquery(&m, ".", T_NS, 0, 0, 0);
	CHECK("root NS query parses", parse(&m, &qi) == 0 && qi.qi_qend == 17);

	m_hdr(&m, 1, 0, 1, 0, 0, 0);
	m_label(&m, 63, 'a');
	m_u8(&m, 0);
	m_u16(&m, T_A);
	m_u16(&m, C_IN);
	CHECK("63-byte label accepted", parse(&m, &qi) == 0);

	/* 3 * 64 + 62 + 1 = 255 bytes on the wire, the maximum. */
	m_hdr(&m, 1, 0, 1, 0, 0, 0);
	m_label(&m, 63, 'a');
	m_label(&m, 63, 'b');
	m_label(&m, 63, 'c');
	m_label(&m, 61, 'd');
	m_u8(&m, 0);
	m_u16(&m, T_A);
	m_u16(&m, C_IN);
	CHECK("255-byte name accepted",
	    parse(&m, &qi) == 0 && qi.qi_qend == 12 + 255 + 4);
}

static void
test_parse_additional(void)
{
	static const uint8_t	cookie[] = { 0, 10, 0, 8,
	    1, 2, 3, 4, 5, 6, 7, 8 };
	struct msg		m;
	struct dns_qinfo	qi;

	m_hdr(&m, 1, 0, 1, 0, 0, 1);
	m_question(&m, "example.com", T_A, C_IN);
	m_opt(&m, 1232, 1, cookie, sizeof(cookie));
	CHECK("OPT with a cookie option parses",
	    parse(&m, &qi) == 0 && qi.qi_has_opt && qi.qi_do);

	/* A TSIG-like record owned by a pointer to the question's name. */
	m_hdr(&m, 1, 0, 1, 0, 0, 2);
	m_question(&m, "example.com", T_A, C_IN);
	m_opt(&m, 4096, 0, NULL, 0);
	m_bytes(&m, "\x01k\xc0\x0c", 4);
	m_u16(&m, T_TSIG);
	m_u16(&m, 255);
	m_u16(&m, 0);
	m_u16(&m, 0);
	m_u16(&m, 3);
	m_bytes(&m, "xyz", 3);
	CHECK("OPT plus record with compressed owner parses",
	    parse(&m, &qi) == 0 && qi.qi_udpsize == 4096 && qi.qi_qend == 29);
}

static void
test_parse_reject_header(void)
{
	struct msg		m;
	struct dns_qinfo	qi;

	mkquery(&m, "example.com", T_A, 0, 0, 0);
	m.m_len = 11;
	CHECK("11-byte message dropped", parse(&m, &qi) == -1);
	m.m_len = 0;
	CHECK("empty message dropped", parse(&m, &qi) == -1);
	m_hdr(&m, 1, 0, 0, 0, 0, 0);
	CHECK("bare header: FORMERR", parse(&m, &qi) == RCODE_FORMERR);

	mkquery(&m, "example.com", T_A, 0, 0, 0);
	m.m_b[2] |= 0x80;
	CHECK("QR=1 dropped", parse(&m, &qi) == -1);
	m.m_b[2] |= 5 << 3;
	CHECK("QR=1 with opcode 5 dropped, not NOTIMP",
	    parse(&m, &qi) == -1);
	mkquery(&m, "example.com", T_A, 0, 0, 0);
	m.m_b[2] |= 1 << 3;
	CHECK("opcode 1: NOTIMP", parse(&m, &qi) == RCODE_NOTIMP);
	mkquery(&m, "example.com", T_A, 0, 0, 0);
	m.m_b[2] |= 5 << 3;
	CHECK("opcode 5 (UPDATE): NOTIMP", parse(&m, &qi) == RCODE_NOTIMP);
	m.m_b[2] |= 15 << 3;
	dns_put16(m.m_b + 4, 0);
	m.m_len = 12;
	CHECK("opcode 15, no question: NOTIMP before FORMERR",
	    parse(&m, &qi) == RCODE_NOTIMP);

	mkquery(&m, "example.com", T_A, 0, 0, 0);
	dns_put16(m.m_b + 4, 0);
	CHECK("QDCOUNT 0 rejected", parse(&m, &qi) == RCODE_FORMERR);
	m_hdr(&m, 1, 0, 2, 0, 0, 0);
	m_question(&m, "example.com", T_A, C_IN);
	m_question(&m, "example.org", T_A, C_IN);
	CHECK("QDCOUNT 2 rejected", parse(&m, &qi) == RCODE_FORMERR);

	/* The counts alone must do it: no record follows to trip on. */
	mkquery(&m, "example.com", T_A, 0, 0, 0);
	dns_put16(m.m_b + 6, 1);
	CHECK("ANCOUNT 1 rejected", parse(&m, &qi) == RCODE_FORMERR);
	dns_put16(m.m_b + 6, 0);
	dns_put16(m.m_b + 8, 1);
	CHECK("NSCOUNT 1 rejected", parse(&m, &qi) == RCODE_FORMERR);
}

static void
test_parse_reject_question(void)
{
	struct msg		m;
	struct dns_qinfo	qi;

	m_hdr(&m, 1, 0, 1, 0, 0, 0);
	m_label(&m, 64, 'a');
	m_u8(&m, 0);
	m_u16(&m, T_A);
	m_u16(&m, C_IN);
	CHECK("64-byte label rejected", parse(&m, &qi) == RCODE_FORMERR);

	m_hdr(&m, 1, 0, 1, 0, 0, 0);
	m_bytes(&m, "\x81" "a", 2);
	m_u8(&m, 0);
	m_u16(&m, T_A);
	m_u16(&m, C_IN);
	CHECK("label type 0x80 rejected", parse(&m, &qi) == RCODE_FORMERR);

	/* 4 * 64 + 1 = 257 bytes on the wire. */
	m_hdr(&m, 1, 0, 1, 0, 0, 0);
	m_label(&m, 63, 'a');
	m_label(&m, 63, 'b');
	m_label(&m, 63, 'c');
	m_label(&m, 63, 'd');
	m_u8(&m, 0);
	m_u16(&m, T_A);
	m_u16(&m, C_IN);
	CHECK("257-byte name rejected", parse(&m, &qi) == RCODE_FORMERR);
	m_hdr(&m, 1, 0, 1, 0, 0, 0);
	m_label(&m, 63, 'a');
	m_label(&m, 63, 'b');
	m_label(&m, 63, 'c');
	m_label(&m, 62, 'd');
	m_u8(&m, 0);
	m_u16(&m, T_A);
	m_u16(&m, C_IN);
	CHECK("256-byte name rejected", parse(&m, &qi) == RCODE_FORMERR);

	m_hdr(&m, 1, 0, 1, 0, 0, 0);
	m_bytes(&m, "\x03www\xc0\x0c", 6);
	m_u16(&m, T_A);
	m_u16(&m, C_IN);
	CHECK("compression pointer in question rejected",
	    parse(&m, &qi) == RCODE_FORMERR);

	mkquery(&m, "example.com", T_A, 0, 0, 0);
	m.m_len -= 2;
	CHECK("question without QCLASS rejected",
	    parse(&m, &qi) == RCODE_FORMERR);
	m.m_len = 12 + 5;
	CHECK("question cut inside a label rejected",
	    parse(&m, &qi) == RCODE_FORMERR);
	m.m_len = 12 + 12;
	CHECK("question without root byte rejected",
	    parse(&m, &qi) == RCODE_FORMERR);
}

static void
test_parse_reject_additional(void)
{
	struct msg		m;
	struct dns_qinfo	qi;

	m_hdr(&m, 1, 0, 1, 0, 0, 1);
	m_question(&m, "example.com", T_A, C_IN);
	m_name(&m, "a");
	m.m_len--;		/* m_opt writes the root byte itself */
	m_opt(&m, 1232, 0, NULL, 0);
	CHECK("OPT owned by a. rejected", parse(&m, &qi) == RCODE_FORMERR);

	m_hdr(&m, 1, 0, 1, 0, 0, 1);
	m_question(&m, "example.com", T_A, C_IN);
	m_u8(&m, 0xc0);		/* pointer to the question name... */
	m_opt(&m, 1232, 0, NULL, 0);
	m.m_b[30] = 0x0c;	/* ...replacing m_opt's root byte */
	CHECK("OPT owned by a compression pointer rejected",
	    parse(&m, &qi) == RCODE_FORMERR);

	mkquery(&m, "example.com", T_A, 1, 1232, 0);
	dns_put16(m.m_b + 10, 2);
	m_opt(&m, 1232, 0, NULL, 0);
	CHECK("two OPT records rejected", parse(&m, &qi) == RCODE_FORMERR);

	mkquery(&m, "example.com", T_A, 1, 1232, 0);
	dns_put16(m.m_b + m.m_len - 2, 1);
	CHECK("OPT rdata overrunning the message rejected",
	    parse(&m, &qi) == RCODE_FORMERR);
	mkquery(&m, "example.com", T_A, 1, 1232, 0);
	m.m_len -= 3;
	CHECK("OPT cut in its fixed part rejected",
	    parse(&m, &qi) == RCODE_FORMERR);
	mkquery(&m, "example.com", T_A, 0, 0, 0);
	dns_put16(m.m_b + 10, 1);
	CHECK("ARCOUNT 1 with no record rejected",
	    parse(&m, &qi) == RCODE_FORMERR);

	mkquery(&m, "example.com", T_A, 0, 0, 0);
	m_u8(&m, 0);
	CHECK("trailing byte after question rejected",
	    parse(&m, &qi) == RCODE_FORMERR);
	mkquery(&m, "example.com", T_A, 1, 1232, 0);
	m_bytes(&m, "junk", 4);
	CHECK("trailing bytes after OPT rejected",
	    parse(&m, &qi) == RCODE_FORMERR);

	/* Pointers must point into the message, before the name. */
	m_hdr(&m, 1, 0, 1, 0, 0, 1);
	m_question(&m, "example.com", T_A, C_IN);
	m_bytes(&m, "\xc0\x1d", 2);	/* 0x1d: this very name */
	m_bytes(&m, "\x00\x01\x00\x01\x00\x00\x00\x00\x00\x00", 10);
	CHECK("self-referencing pointer rejected",
	    parse(&m, &qi) == RCODE_FORMERR);
	m.m_b[30] = 0x05;		/* into the header */
	CHECK("pointer into the header rejected",
	    parse(&m, &qi) == RCODE_FORMERR);
	m.m_b[30] = 0x0c;
	CHECK("same record with a backward pointer parses",
	    parse(&m, &qi) == 0 && qi.qi_has_opt == 0);
	m.m_len = 30;
	CHECK("pointer cut in half rejected", parse(&m, &qi) == RCODE_FORMERR);
}

static void
test_matches(void)
{
	struct msg	q, r;

	mkquery(&q, "example.com", T_A, 1, 1232, 0);
	mkreply(&r, &q);
	CHECK("reply to own query matches", matches(&r, &q, 29) == 1);

	mkquery(&r, "ExAmPle.COM", T_A, 0, 0, 0);
	r.m_b[2] |= 0x80;
	CHECK("ExAmPle.COM reply matches example.com",
	    matches(&r, &q, 29) == 1);
	mkquery(&q, "EXAMPLE.com", T_A, 0, 0, 0);
	mkquery(&r, "example.COM", T_A, 0, 0, 0);
	r.m_b[2] |= 0x80;
	CHECK("example.COM reply matches EXAMPLE.com",
	    matches(&r, &q, 29) == 1);

	/* '[' and '{' differ by 0x20 too, but are not letters. */
	mkquery(&q, "a[b.example", T_A, 0, 0, 0);
	mkquery(&r, "a{b.example", T_A, 0, 0, 0);
	r.m_b[2] |= 0x80;
	CHECK("case folding is for A-Z only", matches(&r, &q, 29) == 0);
	mkquery(&q, "a@b.example", T_A, 0, 0, 0);
	mkquery(&r, "a`b.example", T_A, 0, 0, 0);
	r.m_b[2] |= 0x80;
	CHECK("'@' does not fold to '`'", matches(&r, &q, 29) == 0);
}

static void
test_matches_reject(void)
{
	struct msg	q, r;

	mkquery(&q, "example.com", T_A, 0, 0, 0);
	mkquery(&r, "example.com", T_AAAA, 0, 0, 0);
	r.m_b[2] |= 0x80;
	CHECK("type mismatch", matches(&r, &q, 29) == 0);
	mkreply(&r, &q);
	dns_put16(r.m_b + 27, C_CH);
	CHECK("class mismatch", matches(&r, &q, 29) == 0);
	mkquery(&r, "example.org", T_A, 0, 0, 0);
	r.m_b[2] |= 0x80;
	CHECK("name mismatch", matches(&r, &q, 29) == 0);
	mkquery(&r, "example.co", T_A, 0, 0, 0);
	r.m_b[2] |= 0x80;
	CHECK("shorter name mismatch", matches(&r, &q, 29) == 0);
	mkquery(&r, "example.com.x", T_A, 0, 0, 0);
	r.m_b[2] |= 0x80;
	CHECK("longer name mismatch", matches(&r, &q, 29) == 0);
	mkquery(&q, "ab.cd", T_A, 0, 0, 0);
	mkquery(&r, "abc.d", T_A, 0, 0, 0);
	r.m_b[2] |= 0x80;
	CHECK("same letters, other labels mismatch",
	    matches(&r, &q, 23) == 0);

	/* Labels may hold any byte: here only the boundaries differ. */
	m_hdr(&q, 1, 0, 1, 0, 0, 0);
	m_bytes(&q, "\x01" "a" "\x01" "b" "\x00", 5);
	m_u16(&q, T_A);
	m_u16(&q, C_IN);
	m_hdr(&r, 1, 0x80, 1, 0, 0, 0);
	m_bytes(&r, "\x03" "a" "\x01" "b" "\x00", 5);
	m_u16(&r, T_A);
	m_u16(&r, C_IN);
	CHECK("same bytes, other label lengths mismatch",
	    matches(&r, &q, 21) == 0);
	/* Query bytes are only trusted up to qend, not to be a name. */
	m_hdr(&q, 1, 0, 1, 0, 0, 0);
	m_bytes(&q, "\x01" "a" "\x02" "\x00\x01\x00\x01", 7);
	m_hdr(&r, 1, 0x80, 1, 0, 0, 0);
	m_question(&r, "a", T_A, C_IN);
	CHECK("reply name ending where the query's goes on mismatch",
	    matches(&r, &q, 19) == 0);
	mkquery(&q, "example.com", T_A, 0, 0, 0);
	mkreply(&r, &q);
	CHECK("qend short of the reply's question mismatch",
	    matches(&r, &q, 27) == 0);

	mkquery(&q, "example.com", T_A, 0, 0, 0);
	mkreply(&r, &q);
	r.m_b[2] &= ~0x80;
	CHECK("QR=0 reply rejected", matches(&r, &q, 29) == 0);
	mkreply(&r, &q);
	dns_put16(r.m_b + 4, 0);
	CHECK("QDCOUNT 0 reply rejected", matches(&r, &q, 29) == 0);
	dns_put16(r.m_b + 4, 2);
	CHECK("QDCOUNT 2 reply rejected", matches(&r, &q, 29) == 0);

	mkreply(&r, &q);
	r.m_len = 11;
	CHECK("11-byte reply rejected", matches(&r, &q, 29) == 0);
	r.m_len = 20;
	CHECK("reply cut in its name rejected", matches(&r, &q, 29) == 0);
	r.m_len = 28;
	CHECK("reply cut in its QCLASS rejected", matches(&r, &q, 29) == 0);
	r.m_len = 29;
	CHECK("reply of header and question only matches",
	    matches(&r, &q, 29) == 1);

	/*
	 * From offset 5 the header spells "c." (QDCOUNT's low byte, then
	 * ANCOUNT 0x6300), so a decompressing compare would see example.c.
	 */
	mkquery(&q, "example.c", T_A, 0, 0, 0);
	m_hdr(&r, 0x1234, 0x81, 1, 0x6300, 0, 0);
	m_bytes(&r, "\x07example\xc0\x05", 10);
	m_u16(&r, T_A);
	m_u16(&r, C_IN);
	CHECK("compressed reply question rejected", matches(&r, &q, 27) == 0);
}

static void
test_truncate(void)
{
	static const uint8_t	opt[] = { 0, 0, 41, EDNS_PAYLOAD >> 8,
	    EDNS_PAYLOAD & 0xff, 0, 0, 0, 0, 0, 0 };
	struct msg		q, r;
	uint8_t			out[512], *ex;

	mkquery(&q, "example.com", T_A, 0, 0, 0);
	mkreply(&r, &q);
	r.m_b[3] = 0x83;	/* RA, NXDOMAIN: kept as they are */
	CHECK("truncate without OPT: length",
	    dns_truncate(out, sizeof(out), r.m_b, r.m_len, 0) == 29);
	CHECK("truncate: TC set, other flags kept",
	    out[2] == (0x80 | 0x02 | 0x01) && out[3] == 0x83);
	CHECK("truncate: id and question copied",
	    memcmp(out, r.m_b, 2) == 0 && memcmp(out + 12, r.m_b + 12, 17) == 0);
	CHECK("truncate: counts 1/0/0/0", dns_get16(out + 4) == 1 &&
	    dns_get16(out + 6) == 0 && dns_get16(out + 8) == 0 &&
	    dns_get16(out + 10) == 0);

	memset(out, 0xee, sizeof(out));
	CHECK("truncate with OPT: length",
	    dns_truncate(out, sizeof(out), r.m_b, r.m_len, 1) == 40);
	CHECK("truncate with OPT: ARCOUNT 1, AN/NS 0",
	    dns_get16(out + 10) == 1 && dns_get16(out + 6) == 0 &&
	    dns_get16(out + 8) == 0 && (out[2] & 0x02));
	CHECK("truncate with OPT: OPT bytes", memcmp(out + 29, opt, 11) == 0);

	CHECK("truncate: cap one short rejected",
	    dns_truncate(out, 28, r.m_b, r.m_len, 0) == 0);
	CHECK("truncate with OPT: cap one short rejected",
	    dns_truncate(out, 39, r.m_b, r.m_len, 1) == 0);
	ex = dup_exact(out, 40);
	CHECK("truncate with OPT: exact cap accepted",
	    dns_truncate(ex, 40, r.m_b, r.m_len, 1) == 40);
	free(ex);
	CHECK("truncate: reply cut in question rejected",
	    dns_truncate(out, sizeof(out), r.m_b, 27, 0) == 0);
}

static void
test_servfail(void)
{
	struct msg		q;
	struct dns_qinfo	qi;
	uint8_t			out[512];
	size_t			n;

	mkquery(&q, "example.com", T_A, 0, 0, 0);
	dns_put16(q.m_b, 0xbeef);
	q.m_b[3] = 0x30;	/* AD and CD: not ours to echo */
	if (parse(&q, &qi) != 0)
		qi.qi_qend = 0;
	memset(out, 0xee, sizeof(out));
	n = dns_servfail(out, sizeof(out), q.m_b, &qi, EDE_NETWORK_ERROR,
	    "x");
	CHECK("servfail without OPT: length is the question's", n == 29);
	CHECK("servfail: id copied", out[0] == 0xbe && out[1] == 0xef);
	CHECK("servfail: QR, RD, RA, SERVFAIL",
	    out[2] == 0x81 && out[3] == 0x82);
	CHECK("servfail without OPT: counts 1/0/0/0", dns_get16(out + 4) == 1 &&
	    dns_get16(out + 6) == 0 && dns_get16(out + 8) == 0 &&
	    dns_get16(out + 10) == 0);
	CHECK("servfail: question copied",
	    memcmp(out + 12, q.m_b + 12, 17) == 0);
	CHECK("servfail matches its query",
	    n == 29 && dns_reply_matches(out, n, q.m_b, 29) == 1);

	q.m_b[2] = 0x00;
	CHECK("servfail: RD=0 copied",
	    dns_servfail(out, sizeof(out), q.m_b, &qi, 0, "") == 29 &&
	    out[2] == 0x80);
	CHECK("servfail: cap one short rejected",
	    dns_servfail(out, 28, q.m_b, &qi, 0, "") == 0);
}

static void
test_servfail_opt(void)
{
	static const uint8_t	want[] = {
		0, 0, 41, EDNS_PAYLOAD >> 8, EDNS_PAYLOAD & 0xff,
		0, 0, 0x80, 0,			/* TTL: DO */
		0, 10,				/* RDLENGTH */
		0, 15, 0, 6,			/* EDE, option length */
		0, EDE_NETWORK_ERROR, 'd', 'o', 'w', 'n' };
	struct msg		q;
	struct dns_qinfo	qi;
	uint8_t			out[512], *ex;
	size_t			n;

	mkquery(&q, "example.com", T_A, 1, 4096, 1);
	if (parse(&q, &qi) != 0)
		qi.qi_qend = 0;
	memset(out, 0xee, sizeof(out));
	n = dns_servfail(out, sizeof(out), q.m_b, &qi, EDE_NETWORK_ERROR,
	    "down");
	CHECK("servfail with OPT: length", n == 29 + sizeof(want));
	CHECK("servfail with OPT: ARCOUNT 1", dns_get16(out + 10) == 1);
	CHECK("servfail with OPT: OPT and EDE bytes exactly",
	    memcmp(out + 29, want, sizeof(want)) == 0);

	mkquery(&q, "example.com", T_A, 1, 4096, 0);
	if (parse(&q, &qi) != 0)
		qi.qi_qend = 0;
	n = dns_servfail(out, sizeof(out), q.m_b, &qi,
	    EDE_NO_REACHABLE_AUTHORITY, NULL);
	CHECK("servfail, DO clear, no text: length", n == 29 + 11 + 6);
	CHECK("servfail, DO clear: TTL flags 0", out[29 + 7] == 0);
	CHECK("servfail, no text: option length 2, info code 22",
	    dns_get16(out + 29 + 9) == 6 && dns_get16(out + 29 + 13) == 2 &&
	    dns_get16(out + 29 + 15) == EDE_NO_REACHABLE_AUTHORITY);

	ex = dup_exact(out, 29 + sizeof(want));
	CHECK("servfail with OPT: exact cap accepted",
	    dns_servfail(ex, 29 + sizeof(want), q.m_b, &qi, 1, "down") ==
	    29 + sizeof(want));
	free(ex);
	CHECK("servfail with OPT: cap one short rejected",
	    dns_servfail(out, 28 + sizeof(want), q.m_b, &qi, 1, "down") == 0);
}

/* An OPT record with every field given. */
static void
m_opt_full(struct msg *m, uint16_t size, uint8_t ext_rcode, uint8_t version,
    uint16_t flags, const uint8_t *rd, size_t rdlen)
{
	m_u8(m, 0);
	m_u16(m, DNS_TYPE_OPT);
	m_u16(m, size);
	m_u8(m, ext_rcode);
	m_u8(m, version);
	m_u16(m, flags);
	m_u16(m, (unsigned int)rdlen);
	m_bytes(m, rd, rdlen);
}

/* A query with one OPT carrying the options in rd. */
static void
mkquery_opts(struct msg *m, const char *name, const uint8_t *rd,
    size_t rdlen)
{
	m_hdr(m, 0x1234, 0x01, 1, 0, 0, 1);
	m_question(m, name, T_A, C_IN);
	m_opt(m, 1232, 0, rd, rdlen);
}

/* An ECS option of n data bytes (family 1, /24, scope 0, address). */
static size_t
ecs_opt(uint8_t *p, size_t n)
{
	size_t	 i;

	dns_put16(p, DNS_OPT_ECS);
	dns_put16(p + 2, (uint16_t)n);
	for (i = 0; i < n; i++)
		p[4 + i] = (uint8_t)(i == 1 ? 1 : i == 2 ? 24 : 0x40 + i);
	if (n > 0)
		p[4] = 0;
	return 4 + n;
}

static void
test_parse_results(void)
{
	static const uint8_t	cookie[] = { 0, 10, 0, 8,
	    1, 2, 3, 4, 5, 6, 7, 8 };
	struct msg		m;
	struct dns_qinfo	qi;
	uint8_t			rd[128];
	size_t			n;

	/* BADVERS: a version other than 0, and only when all else is fine. */
	m_hdr(&m, 1, 0x01, 1, 0, 0, 1);
	m_question(&m, "example.com", T_A, C_IN);
	m_opt_full(&m, 1232, 0, 1, 0, NULL, 0);
	CHECK("OPT version 1: BADVERS", parse(&m, &qi) == RCODE_BADVERS);
	m.m_b[29 + 6] = 255;
	CHECK("OPT version 255: BADVERS", parse(&m, &qi) == RCODE_BADVERS);
	m_u8(&m, 0);
	CHECK("version 1 plus a trailing byte: FORMERR",
	    parse(&m, &qi) == RCODE_FORMERR);
	m_hdr(&m, 1, 0x01, 1, 0, 0, 1);
	m_question(&m, "example.com", T_A, C_IN);
	m_opt_full(&m, 1232, 0, 1, 0, (const uint8_t *)"\0\1\0", 3);
	CHECK("version 1 with a bad option list: FORMERR",
	    parse(&m, &qi) == RCODE_FORMERR);
	m_hdr(&m, 1, 0x01, 1, 0, 0, 2);
	m_question(&m, "example.com", T_A, C_IN);
	m_opt_full(&m, 1232, 0, 1, 0, NULL, 0);
	m_opt_full(&m, 1232, 0, 0, 0, NULL, 0);
	CHECK("version 1 and a second OPT: FORMERR",
	    parse(&m, &qi) == RCODE_FORMERR);
	m_hdr(&m, 1, 0x01, 1, 0, 0, 1);
	m_question(&m, "example.com", T_A, C_IN);
	m_opt_full(&m, 1232, 7, 0, 0, NULL, 0);
	CHECK("extended RCODE bits in a query's OPT are no version",
	    parse(&m, &qi) == 0);

	/* The option list must tile the rdata. */
	mkquery_opts(&m, "example.com", (const uint8_t *)"\0\12", 2);
	CHECK("option header cut short: FORMERR",
	    parse(&m, &qi) == RCODE_FORMERR);
	mkquery_opts(&m, "example.com", (const uint8_t *)"\0\12\0\5abcd", 8);
	CHECK("option longer than the rdata: FORMERR",
	    parse(&m, &qi) == RCODE_FORMERR);
	mkquery_opts(&m, "example.com", (const uint8_t *)"\0\12\0\0\0\3\0\0",
	    8);
	CHECK("empty options tile the rdata", parse(&m, &qi) == 0 &&
	    qi.qi_ecsoff == 0 && qi.qi_ecslen == 0);

	/* ECS: recorded where its data is; 4 to 20 bytes, at most once. */
	n = ecs_opt(rd, 7);
	mkquery_opts(&m, "example.com", rd, n);
	CHECK("ECS of 7 bytes parses", parse(&m, &qi) == 0);
	CHECK("ECS offset is its data's: after the OPT's fixed part and "
	    "the option header", qi.qi_ecsoff == 29 + 11 + 4 &&
	    qi.qi_ecslen == 7);
	CHECK("ECS offset points at the family",
	    memcmp(m.m_b + qi.qi_ecsoff, rd + 4, 7) == 0);
	memcpy(rd, cookie, sizeof(cookie));
	n = sizeof(cookie) + ecs_opt(rd + sizeof(cookie), 4);
	mkquery_opts(&m, "example.com", rd, n);
	CHECK("ECS after a cookie: its own offset", parse(&m, &qi) == 0 &&
	    qi.qi_ecsoff == 29 + 11 + 12 + 4 && qi.qi_ecslen == 4);
	n = ecs_opt(rd, 20);
	mkquery_opts(&m, "example.com", rd, n);
	CHECK("ECS of 20 bytes parses",
	    parse(&m, &qi) == 0 && qi.qi_ecslen == 20);
	n = ecs_opt(rd, 3);
	mkquery_opts(&m, "example.com", rd, n);
	CHECK("ECS of 3 bytes: FORMERR", parse(&m, &qi) == RCODE_FORMERR);
	n = ecs_opt(rd, 21);
	mkquery_opts(&m, "example.com", rd, n);
	CHECK("ECS of 21 bytes: FORMERR", parse(&m, &qi) == RCODE_FORMERR);
	n = ecs_opt(rd, 0);
	mkquery_opts(&m, "example.com", rd, n);
	CHECK("ECS of 0 bytes: FORMERR", parse(&m, &qi) == RCODE_FORMERR);
	n = ecs_opt(rd, 8);
	n += ecs_opt(rd + n, 8);
	mkquery_opts(&m, "example.com", rd, n);
	CHECK("two ECS options: FORMERR", parse(&m, &qi) == RCODE_FORMERR);
	mkquery(&m, "example.com", T_A, 1, 1232, 0);
	CHECK("no ECS: offset 0", parse(&m, &qi) == 0 &&
	    qi.qi_ecsoff == 0 && qi.qi_ecslen == 0);
}

/* dns_error into a heap block of exactly cap bytes. */
static size_t
error_exact(uint8_t *out, size_t cap, const struct msg *q, int rcode)
{
	uint8_t	*o = dup_exact(out, cap);
	uint8_t	*qb = dup_exact(q->m_b, q->m_len);
	size_t	 n;

	n = dns_error(o, cap, qb, q->m_len, rcode);
	if (n <= cap)
		memcpy(out, o, n);
	free(o);
	free(qb);
	return n;
}

static void
test_error(void)
{
	static const uint8_t	badvers_opt[] = { 0, 0, 41,
	    EDNS_PAYLOAD >> 8, EDNS_PAYLOAD & 0xff, 1, 0, 0, 0, 0, 0 };
	struct msg		q;
	uint8_t			out[600];
	size_t			n, cap;
	int			ok;

	/* NOTIMP: ID, opcode and RD kept; TC, AA and CD are not. */
	mkquery(&q, "example.com", T_A, 0, 0, 0);
	q.m_b[2] = (uint8_t)(2 << 3 | 0x04 | 0x02 | 0x01);
	q.m_b[3] = 0x30;
	n = error_exact(out, sizeof(out), &q, RCODE_NOTIMP);
	CHECK("NOTIMP: at least a header", n >= 12);
	CHECK("NOTIMP: ID kept", dns_get16(out) == 0x1234);
	CHECK("NOTIMP: QR, opcode 2, RD; no AA or TC",
	    out[2] == (0x80 | 2 << 3 | 0x01));
	CHECK("NOTIMP: RA and RCODE 4, no AD or CD", out[3] == 0x84);
	CHECK("NOTIMP: no answer, authority or additional",
	    dns_get16(out + 6) == 0 && dns_get16(out + 8) == 0 &&
	    dns_get16(out + 10) == 0);
	CHECK("NOTIMP with a parsable question echoes it",
	    n == 29 && dns_get16(out + 4) == 1 &&
	    memcmp(out + 12, q.m_b + 12, 17) == 0);
	q.m_b[2] = (uint8_t)(15 << 3);
	dns_put16(q.m_b + 4, 0);
	q.m_len = 12;
	n = error_exact(out, sizeof(out), &q, RCODE_NOTIMP);
	CHECK("NOTIMP without a question: the header alone",
	    n == 12 && dns_get16(out + 4) == 0 && out[2] == (0x80 | 15 << 3));
	mkquery(&q, "example.com", T_A, 0, 0, 0);
	q.m_b[2] = 5 << 3;
	q.m_len = 20;
	n = error_exact(out, sizeof(out), &q, RCODE_NOTIMP);
	CHECK("NOTIMP, question cut: the header alone, RD=0 kept",
	    n == 12 && dns_get16(out + 4) == 0 && out[2] == (0x80 | 5 << 3));

	/* FORMERR: the question when it parses. */
	mkquery(&q, "example.com", T_A, 0, 0, 0);
	m_bytes(&q, "junk", 4);
	n = error_exact(out, sizeof(out), &q, RCODE_FORMERR);
	CHECK("FORMERR, trailing bytes: header and question", n == 29 &&
	    dns_get16(out + 4) == 1 && memcmp(out + 12, q.m_b + 12, 17) == 0);
	CHECK("FORMERR: flags", out[2] == 0x81 && out[3] == 0x81);
	CHECK("FORMERR: counts 1/0/0/0", dns_get16(out + 6) == 0 &&
	    dns_get16(out + 8) == 0 && dns_get16(out + 10) == 0);
	m_hdr(&q, 0x4321, 0x01, 2, 0, 0, 0);
	m_question(&q, "example.com", T_A, C_IN);
	m_question(&q, "example.org", T_A, C_IN);
	n = error_exact(out, sizeof(out), &q, RCODE_FORMERR);
	CHECK("FORMERR, QDCOUNT 2: the header alone, QDCOUNT 0",
	    n == 12 && dns_get16(out) == 0x4321 && dns_get16(out + 4) == 0);
	mkquery(&q, "example.com", T_A, 0, 0, 0);
	q.m_len = 27;
	n = error_exact(out, sizeof(out), &q, RCODE_FORMERR);
	CHECK("FORMERR, question cut: the header alone", n == 12);

	/* BADVERS: RCODE 16 is 0 in the header and 1 in the OPT. */
	m_hdr(&q, 0x7777, 0x01, 1, 0, 0, 1);
	m_question(&q, "example.com", T_A, C_IN);
	m_opt_full(&q, 4096, 0, 1, 0x8000, NULL, 0);
	n = error_exact(out, sizeof(out), &q, RCODE_BADVERS);
	CHECK("BADVERS: question and our OPT", n == 29 + 11);
	CHECK("BADVERS: header RCODE 0, ARCOUNT 1", (out[3] & 0x0f) == 0 &&
	    dns_get16(out + 10) == 1 && dns_get16(out + 4) == 1);
	CHECK("BADVERS: OPT with extended RCODE 1, version 0, no DO",
	    memcmp(out + 29, badvers_opt, 11) == 0);
	CHECK("BADVERS: ID kept", dns_get16(out) == 0x7777);

	/* Never longer than cap, nor than the query plus an OPT. */
	ok = 1;
	for (cap = 0; cap <= 29 + 11 + 4; cap++) {
		n = error_exact(out, cap, &q, RCODE_BADVERS);
		ok &= n <= cap && (n == 0 || n == 40) && n <= q.m_len + 11;
		mkquery(&q, "example.com", T_A, 0, 0, 0);
		n = error_exact(out, cap, &q, RCODE_FORMERR);
		ok &= n <= cap && n <= q.m_len + 11;
		m_hdr(&q, 0x7777, 0x01, 1, 0, 0, 1);
		m_question(&q, "example.com", T_A, C_IN);
		m_opt_full(&q, 4096, 0, 1, 0x8000, NULL, 0);
	}
	CHECK("dns_error never writes past cap", ok);
	CHECK("BADVERS, cap one short: 0",
	    error_exact(out, 39, &q, RCODE_BADVERS) == 0);
	q.m_len = 11;
	CHECK("dns_error of 11 bytes: 0",
	    error_exact(out, sizeof(out), &q, RCODE_FORMERR) == 0);
}

/* A parsed client query and its key. */
struct cq {
	struct msg		m;
	struct dns_qinfo	qi;
	struct qkey		k;
	int			rc;
};

static void
cq_make(struct cq *c, const char *name, uint16_t type, uint8_t f2,
    uint8_t f3, int opt, int do_bit, size_t ecslen, int keep_ecs)
{
	uint8_t	 rd[64];
	size_t	 n = ecslen ? ecs_opt(rd, ecslen) : 0;

	m_hdr(&c->m, 0xbeef, f2, 1, 0, 0, opt ? 1 : 0);
	c->m.m_b[3] = f3;
	m_question(&c->m, name, type, C_IN);
	if (opt)
		m_opt(&c->m, 4096, do_bit, rd, n);
	memset(&c->qi, 0, sizeof(c->qi));
	c->rc = dns_parse_query(c->m.m_b, c->m.m_len, &c->qi);
	dns_key(&c->k, c->m.m_b, &c->qi, keep_ecs, tkey(0x5eed));
}

static void
test_upstream_query(void)
{
	static const uint8_t	opt_do[] = { 0, 0, 41, EDNS_PAYLOAD >> 8,
	    EDNS_PAYLOAD & 0xff, 0, 0, 0x80, 0 };
	static const uint8_t	zeros[128];
	struct cq		c, u;
	uint8_t			out[UPQUERY_MAX], *ex, *o;
	size_t			n, pad;

	/* RD=0, AD and CD, an OPT with DO, an ECS the key does not keep. */
	cq_make(&c, "Www.Example.COM", T_AAAA, 0x00, 0x30, 1, 1, 8, 0);
	CHECK("upstream: the client query parses", c.rc == 0);
	memset(out, 0xee, sizeof(out));
	n = dns_upstream_query(out, sizeof(out), &c.k);
	CHECK("upstream: header, question and our OPT, padded to 128",
	    n > c.qi.qi_qend + 11 + 8 && n % 128 == 0 &&
	    n - 128 < c.qi.qi_qend + 11 + 8);
	CHECK("upstream: ID 0", dns_get16(out) == 0);
	CHECK("upstream: RD=1 whatever the client said", out[2] == 0x01);
	CHECK("upstream: CD from the key, no AD", out[3] == 0x10);
	CHECK("upstream: counts 1/0/0/1", dns_get16(out + 4) == 1 &&
	    dns_get16(out + 6) == 0 && dns_get16(out + 8) == 0 &&
	    dns_get16(out + 10) == 1);
	CHECK("upstream: the question's bytes, case kept",
	    memcmp(out + 12, c.m.m_b + 12, c.qi.qi_qend - 12) == 0);
	o = out + c.qi.qi_qend;
	pad = n - c.qi.qi_qend - 11 - 8;
	CHECK("upstream: OPT with DO, payload 1232",
	    memcmp(o, opt_do, 9) == 0 && dns_get16(o + 9) == 8 + pad);
	CHECK("upstream: keepalive offered, empty, then zero padding",
	    dns_get16(o + 11) == 11 && dns_get16(o + 13) == 0 &&
	    dns_get16(o + 15) == 12 && dns_get16(o + 17) == pad &&
	    memcmp(o + 19, zeros, pad) == 0);
	/* What goes upstream is a query with the same key. */
	memcpy(u.m.m_b, out, n);
	u.m.m_len = n;
	u.rc = dns_parse_query(u.m.m_b, n, &u.qi);
	dns_key(&u.k, u.m.m_b, &u.qi, 0, tkey(0x5eed));
	CHECK("upstream: it parses, with one OPT",
	    u.rc == 0 && u.qi.qi_has_opt && u.qi.qi_do);
	CHECK("upstream: same key as the client's", dns_key_same(&u.k, &c.k) &&
	    u.k.k_hash == c.k.k_hash);

	/* The ECS kept: the OPT carries it, nothing else of the client's. */
	cq_make(&c, "example.com", T_A, 0x01, 0x00, 1, 0, 8, 1);
	n = dns_upstream_query(out, sizeof(out), &c.k);
	CHECK("upstream with ECS: length", n == 128);
	CHECK("upstream with ECS: no CD, no DO",
	    out[3] == 0 && out[29 + 7] == 0);
	CHECK("upstream with ECS: rdlength to 128, option 8 of 8 bytes first",
	    dns_get16(out + 29 + 9) == 128 - 40 && dns_get16(out + 40) == 8 &&
	    dns_get16(out + 42) == 8 && dns_get16(out + 52) == 11 &&
	    dns_get16(out + 56) == 12 && dns_get16(out + 58) == 128 - 60);
	CHECK("upstream with ECS: its data",
	    memcmp(out + 44, c.m.m_b + c.qi.qi_ecsoff, 8) == 0);
	u.rc = dns_parse_query(out, n, &u.qi);
	dns_key(&u.k, out, &u.qi, 1, tkey(0x5eed));
	CHECK("upstream with ECS: same key", u.rc == 0 && u.qi.qi_ecslen == 8 &&
	    dns_key_same(&u.k, &c.k));
	ex = dup_exact(out, n);
	CHECK("upstream: exact cap accepted",
	    dns_upstream_query(ex, n, &c.k) == n);
	free(ex);
	ex = dup_exact(out, n - 1);
	CHECK("upstream: cap one short rejected",
	    dns_upstream_query(ex, n - 1, &c.k) == 0);
	free(ex);

	/* A client without OPT still gets ours upstream; its DO is 0. */
	cq_make(&c, "example.com", T_A, 0x01, 0x00, 0, 0, 0, 0);
	n = dns_upstream_query(out, sizeof(out), &c.k);
	CHECK("upstream for a query without OPT: one OPT, DO clear",
	    n == 128 && dns_get16(out + 10) == 1 && out[29 + 7] == 0 &&
	    dns_get16(out + 29 + 1) == DNS_TYPE_OPT);
}

/* An answer to "example.com A" with the records after the question. */
static void
mkanswer(struct msg *r, uint16_t an, uint16_t ns, uint16_t ar)
{
	m_hdr(r, 0, 0x81, 1, an, ns, ar);
	r->m_b[3] = 0x80;
	m_question(r, "example.com", T_A, C_IN);
}

static void
m_a(struct msg *r, uint8_t last)
{
	static const uint8_t rr[] = { 0xc0, 0x0c, 0, T_A, 0, C_IN,
	    0, 0, 0x0e, 0x10, 0, 4, 192, 0, 2 };

	m_bytes(r, rr, sizeof(rr));
	m_u8(r, last);
}

static size_t
strip_exact(struct msg *r)
{
	uint8_t	*b = dup_exact(r->m_b, r->m_len);
	size_t	 n = dns_strip_opt(b, r->m_len, 29);

	memcpy(r->m_b, b, r->m_len);
	free(b);
	return n;
}

static void
test_strip_opt(void)
{
	struct msg	r;
	size_t		optat, n;

	mkanswer(&r, 1, 0, 1);
	m_a(&r, 1);
	optat = r.m_len;
	m_opt(&r, 4096, 1, (const uint8_t *)"\0\12\0\0", 4);
	CHECK("strip: OPT last is cut", strip_exact(&r) == optat);
	CHECK("strip: ARCOUNT 0", dns_get16(r.m_b + 10) == 0 &&
	    dns_get16(r.m_b + 6) == 1);

	/* Glue, OPT, then a TSIG-like record: cut from the OPT on. */
	mkanswer(&r, 1, 0, 3);
	m_a(&r, 1);
	m_a(&r, 2);
	optat = r.m_len;
	m_opt(&r, 4096, 0, NULL, 0);
	m_bytes(&r, "\xc0\x0c\x00\xfa\x00\xff\0\0\0\0\0\x01z", 13);
	CHECK("strip: OPT in the middle, cut there", strip_exact(&r) == optat);
	CHECK("strip: ARCOUNT counts what is left", dns_get16(r.m_b + 10) == 1);

	mkanswer(&r, 1, 1, 1);
	m_a(&r, 1);
	m_a(&r, 2);
	m_a(&r, 3);
	n = r.m_len;
	CHECK("strip: no OPT, unchanged", strip_exact(&r) == n &&
	    dns_get16(r.m_b + 10) == 1);
	m_bytes(&r, "junk", 4);
	CHECK("strip: trailing bytes cut", strip_exact(&r) == n &&
	    dns_get16(r.m_b + 10) == 1);

	/*
	 * Type 41 outside the additional section is no OPT (RFC 6891
	 * 6.1.1): the answer is unusable, since passing it on would hand
	 * the upstream's EDNS to the client.
	 */
	mkanswer(&r, 1, 0, 0);
	m_opt(&r, 4096, 0, NULL, 0);
	CHECK("strip: type 41 in the answer section: unusable",
	    strip_exact(&r) == 0);
	mkanswer(&r, 1, 0, 1);
	m_opt_full(&r, 4096, 1, 0, 0, NULL, 0);
	m_opt_full(&r, 4096, 0, 0, 0, NULL, 0);
	CHECK("strip: type 41 in the answer section before a real OPT: "
	    "unusable", strip_exact(&r) == 0);

	mkanswer(&r, 0, 0, 1);
	m_opt_full(&r, 4096, 1, 0, 0, NULL, 0);
	CHECK("strip: extended RCODE 1 (BADVERS): 0", strip_exact(&r) == 0);
	mkanswer(&r, 0, 0, 1);
	m_opt_full(&r, 4096, 0x10, 0, 0, NULL, 0);
	CHECK("strip: any extended RCODE: 0", strip_exact(&r) == 0);

	mkanswer(&r, 2, 0, 0);
	m_a(&r, 1);
	CHECK("strip: a record short: 0", strip_exact(&r) == 0);
	mkanswer(&r, 1, 0, 1);
	m_a(&r, 1);
	m_opt(&r, 4096, 0, NULL, 0);
	r.m_len -= 1;
	CHECK("strip: OPT cut in its fixed part: 0", strip_exact(&r) == 0);
	mkanswer(&r, 1, 0, 0);
	m_bytes(&r, "\xc0\x1d\0\1\0\1\0\0\0\0\0\0", 12);
	CHECK("strip: a forward pointer: 0", strip_exact(&r) == 0);
	mkanswer(&r, 0, 0, 0);
	CHECK("strip: header and question only", strip_exact(&r) == 29);
}

/* dns_finish of body (len bytes) for client c into exactly cap bytes. */
static size_t
finish_exact(uint8_t *out, const struct msg *body, size_t cap,
    const struct cq *c, int ede, const char *text)
{
	uint8_t	*o = malloc(cap > 0 ? cap : 1);
	size_t	 n;

	if (o == NULL)
		exit(2);
	memcpy(o, body->m_b, body->m_len < cap ? body->m_len : cap);
	n = dns_finish(o, body->m_len, cap, c->m.m_b, &c->qi, ede, text);
	if (n <= cap)
		memcpy(out, o, n);
	free(o);
	return n;
}

static void
test_finish(void)
{
	static const uint8_t	opt_do[] = { 0, 0, 41, EDNS_PAYLOAD >> 8,
	    EDNS_PAYLOAD & 0xff, 0, 0, 0x80, 0, 0, 0 };
	struct msg		body;
	struct cq		c;
	uint8_t			out[700];
	size_t			n, blen;

	/* The upstream answer: ID 0, RD=1, its own case, one A record. */
	mkanswer(&body, 1, 0, 0);
	m_a(&body, 7);
	blen = body.m_len;

	/* No OPT from the client: ID, case and RD its own; no OPT added. */
	cq_make(&c, "EXAMPLE.com", T_A, 0x00, 0x00, 0, 0, 0, 0);
	n = finish_exact(out, &body, sizeof(out), &c, EDE_STALE_ANSWER, "x");
	CHECK("finish without OPT: same length, even with an EDE",
	    n == blen && dns_get16(out + 10) == 0);
	CHECK("finish: the client's ID", dns_get16(out) == 0xbeef);
	CHECK("finish: the client's question bytes",
	    memcmp(out + 12, c.m.m_b + 12, 17) == 0);
	CHECK("finish: the client's RD=0, the rest of the flags kept",
	    out[2] == 0x80 && out[3] == 0x80);
	CHECK("finish: the records untouched",
	    memcmp(out + 29, body.m_b + 29, blen - 29) == 0);
	cq_make(&c, "example.com", T_A, 0x01, 0x00, 0, 0, 0, 0);
	body.m_b[2] = 0x80;
	n = finish_exact(out, &body, sizeof(out), &c, EDE_NONE, "");
	CHECK("finish: the client's RD=1 over the answer's RD=0",
	    n == blen && out[2] == 0x81);
	body.m_b[2] = 0x81;

	/* OPT with DO: ours appended, DO echoed, no EDE unless asked. */
	cq_make(&c, "example.com", T_A, 0x01, 0x00, 1, 1, 0, 0);
	n = finish_exact(out, &body, sizeof(out), &c, EDE_NONE, "");
	CHECK("finish with OPT: one OPT appended", n == blen + 11 &&
	    dns_get16(out + 10) == 1);
	CHECK("finish with OPT: DO echoed, payload 1232",
	    memcmp(out + blen, opt_do, 11) == 0);
	cq_make(&c, "example.com", T_A, 0x01, 0x00, 1, 0, 0, 0);
	n = finish_exact(out, &body, sizeof(out), &c, EDE_NONE, "");
	CHECK("finish with OPT, DO clear: flags 0",
	    n == blen + 11 && out[blen + 7] == 0);
	n = finish_exact(out, &body, sizeof(out), &c, EDE_STALE_ANSWER, "");
	CHECK("finish with EDE 3: option 15, length 2, code 3",
	    n == blen + 11 + 6 && dns_get16(out + blen + 9) == 6 &&
	    dns_get16(out + blen + 11) == DNS_OPT_EDE &&
	    dns_get16(out + blen + 13) == 2 &&
	    dns_get16(out + blen + 15) == EDE_STALE_ANSWER);
	n = finish_exact(out, &body, sizeof(out), &c, EDE_OTHER, "stale");
	CHECK("finish with EDE text", n == blen + 11 + 6 + 5 &&
	    dns_get16(out + blen + 13) == 7 &&
	    memcmp(out + blen + 17, "stale", 5) == 0);
	CHECK("finish: the answer parses as a reply to the client",
	    dns_reply_matches(out, n, c.m.m_b, c.qi.qi_qend) == 1);
	/* The client's ECS never comes back. */
	cq_make(&c, "example.com", T_A, 0x01, 0x00, 1, 1, 8, 1);
	n = finish_exact(out, &body, sizeof(out), &c, EDE_NONE, "");
	CHECK("finish: no ECS echoed", n == blen + 11);

	/* No room: 0, and nothing written past cap. */
	cq_make(&c, "example.com", T_A, 0x01, 0x00, 1, 1, 0, 0);
	CHECK("finish: exact cap accepted",
	    finish_exact(out, &body, blen + 11 + 6, &c, 0, "") ==
	    blen + 11 + 6);
	CHECK("finish: cap one short: 0",
	    finish_exact(out, &body, blen + 11 + 5, &c, 0, "") == 0);
	CHECK("finish: cap of the body alone, client with OPT: 0",
	    finish_exact(out, &body, blen, &c, EDE_NONE, "") == 0);
	cq_make(&c, "example.com", T_A, 0x01, 0x00, 0, 0, 0, 0);
	CHECK("finish: cap of the body alone, client without OPT: fine",
	    finish_exact(out, &body, blen, &c, EDE_NONE, "") == blen);
	body.m_len = 28;
	CHECK("finish: a body shorter than the question: 0",
	    finish_exact(out, &body, sizeof(out), &c, EDE_NONE, "") == 0);
}

/*
 * Every bit of the key moves the buckets: a table's index is the hash's
 * low bits, and with seeded FNV-1a those depend only on the seed's low
 * bits, so whoever finds names that collide for those few bits floods
 * the table whatever the rest of the seed.  Keys differing only in their
 * last byte, over 256 names and a 1024-bucket mask: the buckets differ.
 */
static void
test_key_flood(void)
{
	struct cq	 c;
	uint8_t		 k1[SIPHASH_KEYLEN], k2[SIPHASH_KEYLEN];
	uint32_t	 h1;
	char		 name[32];
	int		 i, same = 0;

	memset(k1, 0x5a, sizeof(k1));
	memcpy(k2, k1, sizeof(k2));
	k2[SIPHASH_KEYLEN - 1] ^= 0x80;
	for (i = 0; i < 256; i++) {
		snprintf(name, sizeof(name), "n%d.example", i);
		cq_make(&c, name, T_A, 0x01, 0x00, 0, 0, 0, 0);
		dns_key(&c.k, c.m.m_b, &c.qi, 0, k1);
		h1 = c.k.k_hash;
		dns_key(&c.k, c.m.m_b, &c.qi, 0, k2);
		same += (h1 & 1023) == (c.k.k_hash & 1023);
	}
	/* Independent buckets agree 1 time in 1024: 256 names, a few at most. */
	CHECK("key: its last bit moves the buckets", same <= 8);
}

static void
test_key(void)
{
	struct cq	a, b;
	uint8_t		*ex;

	cq_make(&a, "Example.COM", T_A, 0x01, 0x00, 0, 0, 0, 0);
	cq_make(&b, "eXAMPLE.com", T_A, 0x00, 0x00, 0, 0, 0, 0);
	CHECK("key: fills msg and qend",
	    a.k.k_msg == a.m.m_b && a.k.k_qend == a.qi.qi_qend);
	CHECK("key: case and RD do not matter",
	    dns_key_same(&a.k, &b.k) && a.k.k_hash == b.k.k_hash);
	b.m.m_b[0] = 0x11;
	dns_key(&b.k, b.m.m_b, &b.qi, 0, tkey(0x5eed));
	CHECK("key: the ID does not matter", dns_key_same(&a.k, &b.k));
	cq_make(&b, "example.com", T_A, 0x01, 0x00, 1, 0, 0, 0);
	CHECK("key: an OPT without DO is the same as none",
	    dns_key_same(&a.k, &b.k) && a.k.k_hash == b.k.k_hash);
	cq_make(&b, "example.com", T_AAAA, 0x01, 0x00, 0, 0, 0, 0);
	CHECK("key: another type differs", !dns_key_same(&a.k, &b.k));
	cq_make(&b, "example.net", T_A, 0x01, 0x00, 0, 0, 0, 0);
	CHECK("key: another name differs", !dns_key_same(&a.k, &b.k));
	cq_make(&b, "example.com", T_A, 0x01, 0x00, 1, 1, 0, 0);
	CHECK("key: DO differs", !dns_key_same(&a.k, &b.k) &&
	    !dns_key_same(&b.k, &a.k) && b.k.k_do == 1);
	cq_make(&b, "example.com", T_A, 0x01, 0x10, 0, 0, 0, 0);
	CHECK("key: CD differs", !dns_key_same(&a.k, &b.k) && b.k.k_cd == 1);
	cq_make(&b, "example.com", T_A, 0x01, 0x20, 0, 0, 0, 0);
	CHECK("key: AD does not matter", dns_key_same(&a.k, &b.k));

	/* ECS: ignored unless kept; then it is part of the key. */
	cq_make(&a, "example.com", T_A, 0x01, 0x00, 1, 0, 8, 0);
	cq_make(&b, "example.com", T_A, 0x01, 0x00, 0, 0, 0, 0);
	CHECK("key: ECS not kept is ignored", dns_key_same(&a.k, &b.k) &&
	    a.k.k_ecs == NULL && a.k.k_ecslen == 0);
	cq_make(&a, "example.com", T_A, 0x01, 0x00, 1, 0, 8, 1);
	CHECK("key: ECS kept, none in the query: none",
	    b.k.k_ecslen == 0 && a.k.k_ecslen == 8);
	CHECK("key: kept ECS points into the query",
	    a.k.k_ecs == a.m.m_b + a.qi.qi_ecsoff);
	dns_key(&b.k, b.m.m_b, &b.qi, 1, tkey(0x5eed));
	CHECK("key: kept ECS against none differs",
	    !dns_key_same(&a.k, &b.k) && !dns_key_same(&b.k, &a.k));
	cq_make(&b, "EXAMPLE.com", T_A, 0x00, 0x00, 1, 0, 8, 1);
	CHECK("key: same kept ECS, same key", dns_key_same(&a.k, &b.k) &&
	    a.k.k_hash == b.k.k_hash);
	b.m.m_b[b.qi.qi_ecsoff + 7] ^= 1;
	dns_key(&b.k, b.m.m_b, &b.qi, 1, tkey(0x5eed));
	CHECK("key: another kept ECS address differs",
	    !dns_key_same(&a.k, &b.k));
	cq_make(&b, "example.com", T_A, 0x01, 0x00, 1, 0, 7, 1);
	CHECK("key: another kept ECS length differs",
	    !dns_key_same(&a.k, &b.k));

	/* Equal hashes (a collision) still compare every part. */
	cq_make(&a, "example.com", T_A, 0x01, 0x00, 1, 0, 8, 1);
	b = a;
	b.k.k_cd = 1;
	CHECK("key: collision, CD differs", !dns_key_same(&a.k, &b.k));
	b = a;
	b.k.k_do = 1;
	CHECK("key: collision, DO differs", !dns_key_same(&a.k, &b.k));
	cq_make(&b, "example.net", T_A, 0x01, 0x00, 1, 0, 8, 1);
	b.k.k_hash = a.k.k_hash;
	CHECK("key: collision, name differs", !dns_key_same(&a.k, &b.k));
	cq_make(&b, "example.com", T_A, 0x01, 0x00, 1, 0, 8, 1);
	b.m.m_b[b.qi.qi_ecsoff + 7] ^= 1;
	CHECK("key: collision, kept ECS differs", !dns_key_same(&a.k, &b.k));
	cq_make(&b, "example.com", T_A, 0x01, 0x00, 1, 0, 7, 1);
	ex = dup_exact(b.m.m_b, b.m.m_len);	/* its ECS ends the block */
	dns_key(&b.k, ex, &b.qi, 1, tkey(0x5eed));
	b.k.k_hash = a.k.k_hash;
	CHECK("key: collision, ECS length differs",
	    !dns_key_same(&a.k, &b.k) && !dns_key_same(&b.k, &a.k));
	free(ex);
	cq_make(&b, "example.com", T_AAAA, 0x01, 0x00, 1, 0, 8, 1);
	b.k.k_hash = a.k.k_hash;
	CHECK("key: collision, type differs", !dns_key_same(&a.k, &b.k));

	/* The seed moves every hash. */
	cq_make(&a, "example.com", T_A, 0x01, 0x00, 0, 0, 0, 0);
	b = a;
	dns_key(&b.k, b.m.m_b, &b.qi, 0, tkey(0x5eee));
	CHECK("key: another seed, another hash", a.k.k_hash != b.k.k_hash);
	test_key_flood();
}

static void
test_keepalive(void)
{
	struct msg	r;

	mkanswer(&r, 1, 0, 1);
	m_a(&r, 1);
	m_opt(&r, 4096, 0, (const uint8_t *)"\0\12\0\0\0\13\0\2\1\54", 10);
	CHECK("keepalive: after another option", dns_keepalive(r.m_b, r.m_len)
	    == 300);
	mkanswer(&r, 0, 0, 1);
	m_opt(&r, 4096, 0, (const uint8_t *)"\0\13\0\0", 4);
	CHECK("keepalive: no TIMEOUT: none",
	    dns_keepalive(r.m_b, r.m_len) == -1);
	mkanswer(&r, 0, 0, 1);
	m_opt(&r, 4096, 0, NULL, 0);
	CHECK("keepalive: OPT without it: none",
	    dns_keepalive(r.m_b, r.m_len) == -1);
	mkanswer(&r, 0, 0, 0);
	CHECK("keepalive: no OPT: none", dns_keepalive(r.m_b, r.m_len) == -1);
	mkanswer(&r, 0, 0, 1);
	m_opt(&r, 4096, 0, (const uint8_t *)"\0\13\0\3\0\1", 6);
	CHECK("keepalive: option overrunning its OPT: none",
	    dns_keepalive(r.m_b, r.m_len) == -1);
	CHECK("keepalive: cut header: none", dns_keepalive(r.m_b, 11) == -1);
}

/* xorshift32, seeded: a failure replays the same way every run. */
static uint32_t
rnd(void)
{
	rnd_state ^= rnd_state << 13;
	rnd_state ^= rnd_state >> 17;
	rnd_state ^= rnd_state << 5;
	return rnd_state;
}

/* Damages b (length *len, room for max) in one to four random ways. */
static void
mutate(uint8_t *b, size_t *len, size_t max)
{
	int	n;

	for (n = 1 + rnd() % 4; n > 0; n--) {
		switch (rnd() % 6) {
		case 0:
			if (*len > 0)
				b[rnd() % *len] = (uint8_t)rnd();
			break;
		case 1:
			if (*len > 0)
				b[rnd() % *len] ^= (uint8_t)(1 << rnd() % 8);
			break;
		case 2:
			*len = *len > 0 ? rnd() % *len : 0;
			break;
		case 3:
			while (*len < max && rnd() % 4 != 0)
				b[(*len)++] = (uint8_t)rnd();
			break;
		case 4:
			/* A small count or a pointer is likelier to parse. */
			if (*len >= 12)
				b[5 + 2 * (rnd() % 4)] = (uint8_t)(rnd() % 3);
			break;
		default:
			if (*len > 13)
				b[12 + rnd() % (*len - 12)] = 0xc0;
			break;
		}
	}
}

/*
 * What dns_error makes of a refused message b: never past cap (checked
 * in a block of exactly len + 11 bytes, which must be room enough), an
 * answer with b's ID and the RCODE, the BADVERS one in its OPT, and
 * nothing at all when one byte short.  0 when all holds.
 */
static int
fuzz_error(const uint8_t *b, size_t len, int rc)
{
	uint8_t	*o = malloc(len + 11), *s;
	size_t	 n, qd;
	int	 bad = 0;

	if (o == NULL)
		exit(2);
	n = dns_error(o, len + 11, b, len, rc);
	if (len < DNS_HDRLEN)
		bad |= n != 0;
	else {
		bad |= n < DNS_HDRLEN || n > len + 11;
		bad |= dns_get16(o) != dns_get16(b) || (o[2] & 0x80) == 0;
		bad |= (o[3] & 0x0f) != (rc & 0x0f);
		bad |= (o[2] & 0x78) != (b[2] & 0x78);
		qd = n >= DNS_HDRLEN ? dns_get16(o + 4) : 9;
		bad |= qd > 1 || dns_get16(o + 6) != 0 || dns_get16(o + 8) != 0;
		if (rc == RCODE_BADVERS)
			bad |= n < DNS_HDRLEN + 11 || dns_get16(o + 10) != 1 ||
			    o[n - 11 + 5] != 1 || o[n - 11 + 6] != 0;
		else
			bad |= dns_get16(o + 10) != 0;
		if (!bad && qd == 1)
			bad |= dns_question_end(o, n) !=
			    n - (rc == RCODE_BADVERS ? 11 : 0);
		if (!bad && qd == 0)
			bad |= n != DNS_HDRLEN + (rc == RCODE_BADVERS ? 11 : 0);
		if (!bad) {
			s = dup_exact(o, n - 1);
			bad |= dns_error(s, n - 1, b, len, rc) != 0;
			free(s);
		}
	}
	free(o);
	return bad;
}

/*
 * What an accepted query becomes: the ECS found lies in the message;
 * the upstream query fits exactly where it should, is a query with the
 * same key, and its answer strips to the question and finishes into
 * this client's answer.  0 when all holds.
 */
static int
fuzz_forward(const uint8_t *b, size_t len, const struct dns_qinfo *qi)
{
	struct dns_qinfo qu;
	struct qkey	 k, ku;
	uint8_t		*u, *f;
	size_t		 need, n, qend = qi->qi_qend, flen;
	int		 keep, bad = 0;

	if (qi->qi_ecsoff != 0)
		bad |= qi->qi_ecslen < 4 || qi->qi_ecslen > 20 ||
		    qi->qi_ecsoff < qend + 11 + 4 ||
		    (size_t)qi->qi_ecsoff + qi->qi_ecslen > len ||
		    !qi->qi_has_opt;
	else
		bad |= qi->qi_ecslen != 0;
	for (keep = 0; keep < 2 && !bad; keep++) {
		dns_key(&k, b, qi, keep, tkey(77));
		/* Our OPT: ECS when kept, keepalive, padding to 128. */
		need = qend + 11 + (k.k_ecslen ? 4 + k.k_ecslen : 0) + 8;
		need = (need + 127) / 128 * 128;
		if ((u = malloc(need)) == NULL)
			exit(2);
		bad |= dns_upstream_query(u, need - 1, &k) != 0;
		bad |= (n = dns_upstream_query(u, need, &k)) != need;
		bad |= dns_get16(u) != 0 || u[2] != 0x01;
		if (!bad) {
			memset(&qu, 0, sizeof(qu));
			bad |= dns_parse_query(u, n, &qu) != 0;
			dns_key(&ku, u, &qu, keep, tkey(77));
			bad |= !dns_key_same(&k, &ku) || k.k_hash != ku.k_hash;
			bad |= !qu.qi_has_opt || qu.qi_do != qi->qi_do;
		}
		if (!bad) {
			/* The upstream's answer: our query with QR set. */
			u[2] |= 0x80;
			bad |= dns_strip_opt(u, n, qend) != qend ||
			    dns_get16(u + 10) != 0;
			flen = qend + (qi->qi_has_opt ? 11 + 6 + 4 +
			    (qi->qi_keepalive ? 6 : 0) : 0);
			if ((f = malloc(flen)) == NULL)
				exit(2);
			memcpy(f, u, qend);
			bad |= dns_finish(f, qend, flen, b, qi, EDE_OTHER,
			    "fuzz") != flen;
			bad |= dns_get16(f) != dns_get16(b) ||
			    memcmp(f + 12, b + 12, qend - 12) != 0 ||
			    (f[2] & 0x01) != (b[2] & 0x01);
			bad |= dns_reply_matches(f, flen, b, qend) != 1;
			free(f);
		}
		free(u);
	}
	return bad;
}

/*
 * Returns 0 when b is refused as it must be, 1 when it is accepted and
 * keeps what any accepted query must: a sane qend, a reply made of it
 * matches, and our SERVFAIL for it matches and truncates; also what
 * fuzz_error and fuzz_forward check.  -1 when it breaks one of those.
 * counts[] tallies the results -1, 0, FORMERR, NOTIMP, BADVERS.
 */
static int
fuzz_query(const uint8_t *b, size_t len, int *counts)
{
	static uint8_t		r[DNS_MAXMSG], t[DNS_MAXMSG];
	struct dns_qinfo	qi;
	uint8_t			*qb;
	size_t			n;
	int			ok, rc;

	rc = dns_parse_query(b, len, &qi);
	switch (rc) {
	case -1:
		counts[0]++;
		if (len >= DNS_HDRLEN && (b[2] & 0x80) == 0)
			return -1;
		return len >= DNS_HDRLEN && fuzz_error(b, len, RCODE_FORMERR) ?
		    -1 : 0;
	case 0:
		counts[1]++;
		break;
	case RCODE_FORMERR:
	case RCODE_NOTIMP:
	case RCODE_BADVERS:
		counts[rc == RCODE_FORMERR ? 2 : rc == RCODE_NOTIMP ? 3 : 4]++;
		if (len < DNS_HDRLEN || (b[2] & 0x80) != 0 ||
		    ((b[2] & 0x78) != 0) != (rc == RCODE_NOTIMP))
			return -1;
		return fuzz_error(b, len, rc) ? -1 : 0;
	default:
		return -1;
	}
	if (qi.qi_qend < 17 || qi.qi_qend > len)
		return -1;
	memcpy(r, b, len);
	r[2] |= 0x80;
	qb = dup_exact(b, qi.qi_qend);
	ok = dns_reply_matches(r, len, qb, qi.qi_qend) == 1;
	n = dns_servfail(r, sizeof(r), qb, &qi, 23, "fuzz");
	ok = ok && n > 0 && dns_reply_matches(r, n, qb, qi.qi_qend) == 1;
	ok = ok && dns_truncate(t, sizeof(t), r, n, 1) == qi.qi_qend + 11;
	free(qb);
	ok = ok && fuzz_forward(b, len, &qi) == 0;
	return ok ? 1 : -1;
}

static void
test_fuzz_query(void)
{
	struct msg	seeds[7];
	uint8_t		buf[600], *b, rd[64];
	size_t		len, j;
	int		i, accepted = 0, rejected = 0, bad = 0, counts[5];

	memset(counts, 0, sizeof(counts));
	mkquery(&seeds[0], "example.com", T_A, 0, 0, 0);
	mkquery(&seeds[1], "www.Example.org", T_AAAA, 1, 1232, 1);
	mkquery(&seeds[2], ".", T_NS, 1, 512, 0);
	seeds[3] = seeds[1];
	dns_put16(seeds[3].m_b + 10, 2);
	m_bytes(&seeds[3], "\xc0\x0c\x00\xfa\x00\xff\0\0\0\0\0\x01z", 13);
	memcpy(rd, "\0\12\0\10abcdefgh", 12);
	j = 12 + ecs_opt(rd + 12, 8);
	mkquery_opts(&seeds[4], "ecs.example", rd, j);
	m_hdr(&seeds[5], 9, 0x01, 1, 0, 0, 1);
	m_question(&seeds[5], "v1.example", T_A, C_IN);
	m_opt_full(&seeds[5], 1232, 0, 1, 0x8000, NULL, 0);
	mkquery(&seeds[6], "op.example", T_A, 0, 0, 0);
	seeds[6].m_b[2] |= 4 << 3;
	for (i = 0; i < FUZZ_ROUNDS; i++) {
		if (i % 8 == 0) {
			len = rnd() % sizeof(buf);
			for (j = 0; j < len; j++)
				buf[j] = (uint8_t)rnd();
		} else {
			len = seeds[i % 7].m_len;
			memcpy(buf, seeds[i % 7].m_b, len);
			mutate(buf, &len, sizeof(buf));
		}
		b = dup_exact(buf, len);
		switch (fuzz_query(b, len, counts)) {
		case 0:
			rejected++;
			break;
		case 1:
			accepted++;
			break;
		default:
			bad++;
			break;
		}
		free(b);
	}
	CHECK("fuzz: every query keeps the invariants of its result",
	    bad == 0);
	CHECK("fuzz: mutations both accepted and rejected",
	    accepted > 100 && rejected > 100);
	CHECK("fuzz: every result seen", counts[0] > 100 && counts[1] > 100 &&
	    counts[2] > 100 && counts[3] > 100 && counts[4] > 100);
	printf("fuzz queries: %d accepted, %d rejected (drop %d, FORMERR %d, "
	    "NOTIMP %d, BADVERS %d), %d bad\n", accepted, rejected, counts[0],
	    counts[2], counts[3], counts[4], bad);
}

static void
test_fuzz_reply(void)
{
	struct msg	q, r;
	uint8_t		buf[600], out[700], *b, *qb;
	size_t		len, t;
	int		i, hits = 0, bad = 0;

	mkquery(&q, "Www.Example.COM", T_A, 1, 1232, 0);
	mkreply(&r, &q);
	qb = dup_exact(q.m_b, 33);
	for (i = 0; i < FUZZ_ROUNDS; i++) {
		len = r.m_len;
		memcpy(buf, r.m_b, len);
		mutate(buf, &len, sizeof(buf));
		b = dup_exact(buf, len);
		t = dns_truncate(out, sizeof(out), b, len, 1);
		if (dns_reply_matches(b, len, qb, 33) == 1) {
			hits++;
			/* A matching reply always truncates to its question. */
			if (t != 33 + 11 || dns_reply_matches(out, t, qb, 33) != 1)
				bad++;
		}
		free(b);
	}
	free(qb);
	CHECK("fuzz: matching replies truncate to header and question",
	    bad == 0);
	CHECK("fuzz: some mutated replies still match", hits > 100);
	printf("fuzz replies: %d of %d matched\n", hits, FUZZ_ROUNDS);
}

/*
 * Mutated upstream answers: dns_strip_opt never reads past the end and
 * cuts to a length that walks again to itself; dns_keepalive stays in
 * its range; dns_finish of what is left fits exactly its room.
 */
static void
test_fuzz_strip(void)
{
	static const uint8_t	 ka[] = { 0, 10, 0, 2, 1, 2, 0, 11, 0, 2,
	    0, 50 };
	struct msg		 seeds[4];
	struct cq		 c;
	uint8_t			 buf[600], *b, *t, *f;
	size_t			 len, qend, n, cap;
	int			 i, k, kept = 0, cut = 0, zero = 0, bad = 0;
	int			 kas = 0;

	cq_make(&c, "example.com", T_A, 0x01, 0x00, 1, 1, 0, 0);
	mkanswer(&seeds[0], 1, 0, 2);
	m_a(&seeds[0], 1);
	m_a(&seeds[0], 2);
	m_opt(&seeds[0], 4096, 1, ka, sizeof(ka));
	mkanswer(&seeds[1], 1, 1, 3);
	m_a(&seeds[1], 1);
	m_a(&seeds[1], 2);
	m_a(&seeds[1], 3);
	m_opt(&seeds[1], 4096, 0, ka + 4, 8);
	m_bytes(&seeds[1], "\xc0\x0c\x00\xfa\x00\xff\0\0\0\0\0\x01z", 13);
	mkanswer(&seeds[2], 1, 0, 1);
	m_opt_full(&seeds[2], 4096, 1, 0, 0, NULL, 0);
	m_opt_full(&seeds[2], 4096, 0, 0, 0, ka, 4);
	mkanswer(&seeds[3], 0, 0, 0);
	for (i = 0; i < FUZZ_ROUNDS; i++) {
		len = seeds[i % 4].m_len;
		memcpy(buf, seeds[i % 4].m_b, len);
		mutate(buf, &len, sizeof(buf));
		b = dup_exact(buf, len);
		k = dns_keepalive(b, len);
		bad += k < -1 || k > 65535;
		kas += k >= 0;
		if (len < DNS_HDRLEN ||
		    (qend = dns_question_end(b, len)) == 0) {
			free(b);
			continue;
		}
		n = dns_strip_opt(b, len, qend);
		if (n == 0)
			zero++;
		else if (n < qend || n > len)
			bad++;
		else {
			n == len ? kept++ : cut++;
			t = dup_exact(b, n);
			bad += dns_strip_opt(t, n, qend) != n;
			bad += dns_get16(t + 10) != dns_get16(b + 10);
			free(t);
			if (qend == c.qi.qi_qend) {
				cap = n + 11 + 6 + 4;
				if ((f = malloc(cap)) == NULL)
					exit(2);
				memcpy(f, b, n);
				bad += dns_finish(f, n, cap, c.m.m_b, &c.qi,
				    EDE_OTHER, "fuzz") != cap;
				bad += dns_finish(f, n, cap - 1, c.m.m_b, &c.qi,
				    EDE_OTHER, "fuzz") != 0;
				free(f);
			}
		}
		free(b);
	}
	CHECK("fuzz: strip, keepalive and finish keep their bounds", bad == 0);
	CHECK("fuzz: strips kept, cut and refused",
	    kept > 100 && cut > 100 && zero > 100 && kas > 100);
	printf("fuzz strips: %d kept, %d cut, %d refused; %d keepalives\n",
	    kept, cut, zero, kas);
}

/* RFC 7828: a query offers keepalive empty; we answer with our idle time. */
static void
test_client_keepalive(void)
{
	static const uint8_t	ka0[] = { 0, 11, 0, 0 };
	static const uint8_t	ka2[] = { 0, 11, 0, 2, 0, 50 };
	struct dns_qinfo	qi;
	struct msg		m;
	uint8_t			out[256], *p;
	size_t			n;

	memset(&m, 0, sizeof(m));
	mkquery_opts(&m, "ka.example", ka0, sizeof(ka0));
	CHECK("keepalive: an empty offer parses and is noted",
	    parse(&m, &qi) == 0 && qi.qi_keepalive == 1);
	memcpy(out, m.m_b, qi.qi_qend);
	out[2] |= 0x80;
	dns_put16(out + 10, 0);
	n = dns_finish(out, qi.qi_qend, sizeof(out), m.m_b, &qi, EDE_NONE, "");
	p = out + qi.qi_qend;
	CHECK("keepalive: the answer's OPT carries our idle time in 100 ms",
	    n == qi.qi_qend + 11 + 6 && dns_get16(p + 9) == 6 &&
	    dns_get16(p + 11) == 11 && dns_get16(p + 13) == 2 &&
	    dns_get16(p + 15) == TCP_CLIENT_IDLE * 10);
	CHECK("keepalive: no room for it, no answer",
	    dns_finish(out, qi.qi_qend, qi.qi_qend + 16, m.m_b, &qi,
	    EDE_NONE, "") == 0);
	memset(&m, 0, sizeof(m));
	mkquery_opts(&m, "ka.example", ka2, sizeof(ka2));
	CHECK("keepalive: a TIMEOUT in a query is FORMERR",
	    parse(&m, &qi) == RCODE_FORMERR);
}

int
main(void)
{
	test_parse_good();
	test_parse_additional();
	test_parse_reject_header();
	test_parse_reject_question();
	test_parse_reject_additional();
	test_matches();
	test_matches_reject();
	test_truncate();
	test_servfail();
	test_servfail_opt();
	test_parse_results();
	test_error();
	test_upstream_query();
	test_strip_opt();
	test_finish();
	test_key();
	test_keepalive();
	test_client_keepalive();
	test_fuzz_query();
	test_fuzz_reply();
	test_fuzz_strip();
	printf("test_dns: %d passed, %d failed\n", npass, nfail);
	return nfail > 0 ? 1 : 0;
}

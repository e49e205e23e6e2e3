/*
 * Unit tests for dns.c.  Messages are built by hand, and every buffer
 * handed to dns.c is copied into a heap block of exactly its length, so
 * that under -fsanitize=address any read past the end is reported.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dnsfwd.h"

#define T_A	1
#define T_NS	2
#define T_AAAA	28
#define T_TSIG	250
#define C_IN	1
#define C_CH	3

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
static uint32_t	rnd(void);
static void	mutate(uint8_t *, size_t *, size_t);
static int	fuzz_query(const uint8_t *, size_t);
static void	test_fuzz_query(void);
static void	test_fuzz_reply(void);

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
	CHECK("11-byte message rejected", parse(&m, &qi) == -1);
	m.m_len = 0;
	CHECK("empty message rejected", parse(&m, &qi) == -1);
	m_hdr(&m, 1, 0, 0, 0, 0, 0);
	CHECK("bare header rejected", parse(&m, &qi) == -1);

	mkquery(&m, "example.com", T_A, 0, 0, 0);
	m.m_b[2] |= 0x80;
	CHECK("QR=1 rejected", parse(&m, &qi) == -1);
	mkquery(&m, "example.com", T_A, 0, 0, 0);
	m.m_b[2] |= 1 << 3;
	CHECK("opcode 1 rejected", parse(&m, &qi) == -1);
	mkquery(&m, "example.com", T_A, 0, 0, 0);
	m.m_b[2] |= 5 << 3;
	CHECK("opcode 5 (UPDATE) rejected", parse(&m, &qi) == -1);

	mkquery(&m, "example.com", T_A, 0, 0, 0);
	dns_put16(m.m_b + 4, 0);
	CHECK("QDCOUNT 0 rejected", parse(&m, &qi) == -1);
	m_hdr(&m, 1, 0, 2, 0, 0, 0);
	m_question(&m, "example.com", T_A, C_IN);
	m_question(&m, "example.org", T_A, C_IN);
	CHECK("QDCOUNT 2 rejected", parse(&m, &qi) == -1);

	/* The counts alone must do it: no record follows to trip on. */
	mkquery(&m, "example.com", T_A, 0, 0, 0);
	dns_put16(m.m_b + 6, 1);
	CHECK("ANCOUNT 1 rejected", parse(&m, &qi) == -1);
	dns_put16(m.m_b + 6, 0);
	dns_put16(m.m_b + 8, 1);
	CHECK("NSCOUNT 1 rejected", parse(&m, &qi) == -1);
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
	CHECK("64-byte label rejected", parse(&m, &qi) == -1);

	m_hdr(&m, 1, 0, 1, 0, 0, 0);
	m_bytes(&m, "\x81" "a", 2);
	m_u8(&m, 0);
	m_u16(&m, T_A);
	m_u16(&m, C_IN);
	CHECK("label type 0x80 rejected", parse(&m, &qi) == -1);

	/* 4 * 64 + 1 = 257 bytes on the wire. */
	m_hdr(&m, 1, 0, 1, 0, 0, 0);
	m_label(&m, 63, 'a');
	m_label(&m, 63, 'b');
	m_label(&m, 63, 'c');
	m_label(&m, 63, 'd');
	m_u8(&m, 0);
	m_u16(&m, T_A);
	m_u16(&m, C_IN);
	CHECK("257-byte name rejected", parse(&m, &qi) == -1);
	m_hdr(&m, 1, 0, 1, 0, 0, 0);
	m_label(&m, 63, 'a');
	m_label(&m, 63, 'b');
	m_label(&m, 63, 'c');
	m_label(&m, 62, 'd');
	m_u8(&m, 0);
	m_u16(&m, T_A);
	m_u16(&m, C_IN);
	CHECK("256-byte name rejected", parse(&m, &qi) == -1);

	m_hdr(&m, 1, 0, 1, 0, 0, 0);
	m_bytes(&m, "\x03www\xc0\x0c", 6);
	m_u16(&m, T_A);
	m_u16(&m, C_IN);
	CHECK("compression pointer in question rejected",
	    parse(&m, &qi) == -1);

	mkquery(&m, "example.com", T_A, 0, 0, 0);
	m.m_len -= 2;
	CHECK("question without QCLASS rejected", parse(&m, &qi) == -1);
	m.m_len = 12 + 5;
	CHECK("question cut inside a label rejected", parse(&m, &qi) == -1);
	m.m_len = 12 + 12;
	CHECK("question without root byte rejected", parse(&m, &qi) == -1);
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
	CHECK("OPT owned by a. rejected", parse(&m, &qi) == -1);

	m_hdr(&m, 1, 0, 1, 0, 0, 1);
	m_question(&m, "example.com", T_A, C_IN);
	m_u8(&m, 0xc0);		/* pointer to the question name... */
	m_opt(&m, 1232, 0, NULL, 0);
	m.m_b[30] = 0x0c;	/* ...replacing m_opt's root byte */
	CHECK("OPT owned by a compression pointer rejected",
	    parse(&m, &qi) == -1);

	mkquery(&m, "example.com", T_A, 1, 1232, 0);
	dns_put16(m.m_b + 10, 2);
	m_opt(&m, 1232, 0, NULL, 0);
	CHECK("two OPT records rejected", parse(&m, &qi) == -1);

	mkquery(&m, "example.com", T_A, 1, 1232, 0);
	dns_put16(m.m_b + m.m_len - 2, 1);
	CHECK("OPT rdata overrunning the message rejected",
	    parse(&m, &qi) == -1);
	mkquery(&m, "example.com", T_A, 1, 1232, 0);
	m.m_len -= 3;
	CHECK("OPT cut in its fixed part rejected", parse(&m, &qi) == -1);
	mkquery(&m, "example.com", T_A, 0, 0, 0);
	dns_put16(m.m_b + 10, 1);
	CHECK("ARCOUNT 1 with no record rejected", parse(&m, &qi) == -1);

	mkquery(&m, "example.com", T_A, 0, 0, 0);
	m_u8(&m, 0);
	CHECK("trailing byte after question rejected", parse(&m, &qi) == -1);
	mkquery(&m, "example.com", T_A, 1, 1232, 0);
	m_bytes(&m, "junk", 4);
	CHECK("trailing bytes after OPT rejected", parse(&m, &qi) == -1);

	/* Pointers must point into the message, before the name. */
	m_hdr(&m, 1, 0, 1, 0, 0, 1);
	m_question(&m, "example.com", T_A, C_IN);
	m_bytes(&m, "\xc0\x1d", 2);	/* 0x1d: this very name */
	m_bytes(&m, "\x00\x01\x00\x01\x00\x00\x00\x00\x00\x00", 10);
	CHECK("self-referencing pointer rejected", parse(&m, &qi) == -1);
	m.m_b[30] = 0x05;		/* into the header */
	CHECK("pointer into the header rejected", parse(&m, &qi) == -1);
	m.m_b[30] = 0x0c;
	CHECK("same record with a backward pointer parses",
	    parse(&m, &qi) == 0 && qi.qi_has_opt == 0);
	m.m_len = 30;
	CHECK("pointer cut in half rejected", parse(&m, &qi) == -1);
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
 * Returns 0 when b is rejected, 1 when it is accepted and keeps what any
 * accepted query must: a sane qend, a reply made of it matches, and our
 * SERVFAIL for it matches and truncates.  -1 when it breaks one of those.
 */
static int
fuzz_query(const uint8_t *b, size_t len)
{
	static uint8_t		r[DNS_MAXMSG], t[DNS_MAXMSG];
	struct dns_qinfo	qi;
	uint8_t			*qb;
	size_t			n;
	int			ok;

	if (dns_parse_query(b, len, &qi) != 0)
		return 0;
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
	return ok ? 1 : -1;
}

static void
test_fuzz_query(void)
{
	struct msg	seeds[4];
	uint8_t		buf[600], *b;
	size_t		len, j;
	int		i, accepted = 0, rejected = 0, bad = 0;

	mkquery(&seeds[0], "example.com", T_A, 0, 0, 0);
	mkquery(&seeds[1], "www.Example.org", T_AAAA, 1, 1232, 1);
	mkquery(&seeds[2], ".", T_NS, 1, 512, 0);
	seeds[3] = seeds[1];
	dns_put16(seeds[3].m_b + 10, 2);
	m_bytes(&seeds[3], "\xc0\x0c\x00\xfa\x00\xff\0\0\0\0\0\x01z", 13);
	for (i = 0; i < FUZZ_ROUNDS; i++) {
		if (i % 8 == 0) {
			len = rnd() % sizeof(buf);
			for (j = 0; j < len; j++)
				buf[j] = (uint8_t)rnd();
		} else {
			len = seeds[i % 4].m_len;
			memcpy(buf, seeds[i % 4].m_b, len);
			mutate(buf, &len, sizeof(buf));
		}
		b = dup_exact(buf, len);
		switch (fuzz_query(b, len)) {
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
	CHECK("fuzz: every accepted query keeps the invariants", bad == 0);
	CHECK("fuzz: mutations both accepted and rejected",
	    accepted > 100 && rejected > 100);
	printf("fuzz queries: %d accepted, %d rejected\n", accepted, rejected);
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
	test_fuzz_query();
	test_fuzz_reply();
	printf("test_dns: %d passed, %d failed\n", npass, nfail);
	return nfail > 0 ? 1 : 0;
}

/*
 * dns.c: the DNS wire format.  Every function here is pure: it reads and
 * writes the buffers it is given, bounded by their lengths.
 */
#ifndef DNS_H
#define DNS_H

#include <stddef.h>
#include <stdint.h>

#include "siphash.h"

#define DNS_HDRLEN	12
#define DNS_MAXMSG	65535
/* Largest client query we accept: DNS Flag Day 2020's EDNS payload size. */
#define QUERY_MAX	1232
/*
 * Payload size we advertise in OPT records we write ourselves, and the
 * most we ever send in one UDP answer whatever the client advertises
 * (DNS Flag Day 2020), so dnsfwd cannot be used to amplify.
 */
#define EDNS_PAYLOAD	1232
/* Header and question of the longest name: what a client query keeps. */
#define QHEAD_MAX	(DNS_HDRLEN + 255 + 4)
/* Largest message we send upstream: header, question, our OPT, padding. */
#define UPQUERY_MAX	512
/* EDNS Client Subnet option data (RFC 7871): family, two prefixes, address. */
#define ECS_MAX		20
/*
 * Idle seconds before a client TCP connection is closed (RFC 7766 6.2.3):
 * the listeners enforce it and dns_finish announces it (RFC 7828).
 */
#define TCP_CLIENT_IDLE	10

/* Extended DNS Error codes (RFC 8914) we put in answers we make. */
#define EDE_OTHER	0
#define EDE_STALE_ANSWER 3
#define EDE_NO_REACHABLE_AUTHORITY 22
#define EDE_NETWORK_ERROR	23
#define EDE_NONE	(-1)

#define DNS_TYPE_SOA	6
#define DNS_TYPE_OPT	41
#define DNS_OPT_ECS	8
#define DNS_OPT_KEEPALIVE 11
#define DNS_OPT_PADDING	12
#define DNS_OPT_EDE	15

/* Header flag bits: QR, OPCODE, TC and RD in byte 2, RA and CD in byte 3. */
#define F_QR		0x80
#define F_OPCODE	0x78
#define F_TC		0x02
#define F_RD		0x01
#define F_RA		0x80
#define F_CD		0x10
/* The RCODE in byte 3; the extended bits live in OPT. */
#define F_RCODE		0x0f
#define RCODE_NOERROR	0
#define RCODE_FORMERR	1
#define RCODE_SERVFAIL	2
#define RCODE_NXDOMAIN	3
#define RCODE_NOTIMP	4
#define RCODE_REFUSED	5
#define RCODE_BADVERS	16	/* extended: needs OPT (RFC 6891 6.1.3) */

/* What dns_parse_query learnt about a well-formed query. */
struct dns_qinfo {
	size_t		qi_qend;	/* offset just past the question */
	uint16_t	qi_qtype;
	uint16_t	qi_qclass;
	uint16_t	qi_udpsize;	/* client's EDNS payload size, 0 without OPT */
	uint8_t		qi_has_opt;
	uint8_t		qi_do;		/* DNSSEC OK bit of the OPT record */
	uint16_t	qi_ecsoff;	/* ECS option data in the query, or 0 */
	uint8_t		qi_ecslen;
	uint8_t		qi_keepalive;	/* edns-tcp-keepalive offered */
};

/*
 * What makes two queries interchangeable, so that they may share one
 * upstream answer (in flight or cached): the case-folded question, the
 * DO and CD bits, and the ECS option when --keep-ecs forwards it.  RD is
 * not part of it because every query goes upstream with RD=1.
 */
struct qkey {
	const uint8_t	*k_msg;		/* header and question */
	size_t		 k_qend;
	const uint8_t	*k_ecs;		/* ECS option data when kept */
	uint8_t		 k_ecslen;
	uint8_t		 k_do;
	uint8_t		 k_cd;
	uint32_t	 k_hash;
};

/* One resource record as dns_rr_next found it; offsets into the message. */
struct dns_rr {
	size_t		rr_start;
	size_t		rr_ttloff;
	size_t		rr_rdata;
	uint32_t	rr_ttl;
	uint16_t	rr_type;
	uint16_t	rr_rdlen;
};

/*
 * Vets a client message.  Returns 0 and fills qi when it is a query we
 * may forward: QR=0, opcode QUERY, one well-formed uncompressed question,
 * a parsable additional section with at most one OPT, of version 0.
 * Otherwise the RCODE to answer with (RCODE_FORMERR, RCODE_NOTIMP,
 * RCODE_BADVERS), or -1 when it is not even a query header: dropped.
 */
int	dns_parse_query(const uint8_t *, size_t, struct dns_qinfo *);
/*
 * Writes into out the answer with that RCODE to a query dns_parse_query
 * refused: its header and, when it parsed, its question, and for BADVERS
 * the OPT that carries it.  Returns the length or 0.
 */
size_t	dns_error(uint8_t *out, size_t cap, const uint8_t *q, size_t len,
	    int rcode);
/*
 * Returns 1 when the reply (rlen bytes) is a response with the query's
 * opcode whose question equals the query's: name compared
 * case-insensitively, type and class.
 */
int	dns_reply_matches(const uint8_t *reply, size_t rlen,
	    const uint8_t *query, size_t qend);
/* Offset just past the question of msg, or 0 when it is not one. */
size_t	dns_question_end(const uint8_t *, size_t);
/*
 * Writes into out (capacity cap) a header-and-question-only copy of reply
 * with TC=1, plus an OPT record when add_opt; returns its length or 0.
 */
size_t	dns_truncate(uint8_t *out, size_t cap, const uint8_t *reply,
	    size_t rlen, int add_opt);
/*
 * Writes a SERVFAIL answering query (question ends at qend) into out:
 * the query's ID, RD and question; with an OPT carrying an Extended DNS
 * Error (code, text) when the query had OPT.  Returns the length or 0.
 */
size_t	dns_servfail(uint8_t *out, size_t cap, const uint8_t *query,
	    const struct dns_qinfo *qi, uint16_t ede, const char *text);
/*
 * The query dnsfwd sends upstream for k: ID 0, RD=1, the key's CD bit and
 * question, and our own OPT (DO bit, our payload size, the ECS option
 * when kept, keepalive, padding) and nothing of the client's.  Returns
 * the length, a multiple of 128, or 0.
 */
size_t	dns_upstream_query(uint8_t *out, size_t cap, const struct qkey *);
/*
 * Cuts the additional section of an upstream answer at its OPT, which is
 * hop by hop (RFC 6891); returns the new length, or 0 when the answer
 * cannot be walked, has an OPT outside the additional section, or its
 * extended RCODE is not 0.
 */
size_t	dns_strip_opt(uint8_t *msg, size_t len, size_t qend);
/*
 * The TIMEOUT of an edns-tcp-keepalive option (RFC 7828) in a reply's
 * OPT, in units of 100 ms, or -1 when there is none.
 */
int	dns_keepalive(const uint8_t *, size_t);
/*
 * Makes an answer body (header counts and records, no OPT) in out the
 * answer to this client's query: its ID, question bytes and RD bit, and
 * an OPT of our own only when the query had one, with an Extended DNS
 * Error when ede is not EDE_NONE and TCP_CLIENT_IDLE when the query
 * offered keepalive.  Returns the length or 0 (no room).
 */
size_t	dns_finish(uint8_t *out, size_t len, size_t cap, const uint8_t *q,
	    const struct dns_qinfo *qi, int ede, const char *text);
/* Equal questions (ending at the same offset): name case-insensitively. */
int	dns_question_equal(const uint8_t *, const uint8_t *, size_t);
/* Fills k for the client query q; its hash is keyed with key. */
void	dns_key(struct qkey *, const uint8_t *, const struct dns_qinfo *,
	    int, const uint8_t key[SIPHASH_KEYLEN]);
int	dns_key_same(const struct qkey *, const struct qkey *);
/*
 * Reads the resource record at *off into rr and steps past it; -1 when
 * it does not fit.  Walk dns_rr_total records from the question's end.
 */
int	dns_rr_next(const uint8_t *, size_t, size_t *, struct dns_rr *);

static inline uint16_t
dns_get16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

static inline void
dns_put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

/* Header counts of a message at least DNS_HDRLEN long. */
static inline unsigned int
dns_ancount(const uint8_t *m)
{
	return dns_get16(m + 6);
}

static inline unsigned int
dns_nscount(const uint8_t *m)
{
	return dns_get16(m + 8);
}

static inline unsigned int
dns_arcount(const uint8_t *m)
{
	return dns_get16(m + 10);
}

/* Records after the question, every section: what a walk visits. */
static inline unsigned int
dns_rr_total(const uint8_t *m)
{
	return dns_ancount(m) + dns_nscount(m) + dns_arcount(m);
}

#endif /* DNS_H */

/*
 * dnsfwd: plain DNS in front, a small pool of DNS-over-TLS connections behind.
 *
 * Every tunable that is not a command line option is a #define here, with
 * the reason for its value.  Shared types and the prototypes of each module
 * follow, grouped by the file that defines them.
 */
#ifndef DNSFWD_H
#define DNSFWD_H

#include <sys/queue.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define DNSFWD_VERSION	"0.1.0"

#define DNS_HDRLEN	12
#define DNS_MAXMSG	65535
/* Largest client query we accept: the EDNS payload size of DNS Flag Day 2020. */
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
/* Client queries waiting per upstream request slot, on average. */
#define CLIENTS_PER_SLOT 2
/* Datagrams handled per recvmmsg/sendmmsg call. */
#define UDP_BATCH	32
/* Client TCP connections served at once; accept stops beyond this. */
#define TCP_CLIENTS_MAX	256
/* Queries one TCP client may have pipelined before we stop reading it. */
#define TCP_CLIENT_PIPELINE 64
/* Replies queued for a TCP client that does not read; beyond it, close. */
#define TCP_CLIENT_OUTMAX (256 * 1024)
/* Idle seconds before a client TCP connection is closed (RFC 7766 6.2.3). */
#define TCP_CLIENT_IDLE	10
/* Listening sockets of each transport. */
#define LISTEN_MAX	8
/* --allow networks besides loopback. */
#define ALLOW_MAX	32
/* Upstreams and SPKI pins per upstream. */
#define UPSTREAMS_MAX	8
#define PINS_MAX	8
/* Failed dials back off from this, doubling, up to the maximum. */
#define BACKOFF_MIN_MS	250
#define BACKOFF_MAX_MS	30000
/* Minimum seconds between two copies of one rate-limited warning. */
#define LOG_RATELIMIT_S	5

/* Exit codes, as listed in dnsfwd.8 EXIT STATUS. */
#define EXIT_SETUP	1	/* bind failed, CA file unreadable, ... */
#define EXIT_USAGE	2	/* bad command line */

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

/* Process-wide counters, reported on SIGUSR1. */
struct stats {
	uint64_t	st_queries;	/* well-formed client queries */
	uint64_t	st_answers;	/* answers delivered, cached or not */
	uint64_t	st_servfails;	/* SERVFAILs we made ourselves */
	uint64_t	st_drops;	/* client input that is not a query */
	uint64_t	st_formerr;	/* queries answered FORMERR */
	uint64_t	st_notimp;	/* opcodes other than QUERY */
	uint64_t	st_badvers;	/* EDNS versions other than 0 */
	uint64_t	st_bad_replies;	/* upstream replies that matched nothing */
	uint64_t	st_reconnects;	/* upstream connections opened */
	uint64_t	st_tls_full;	/* full TLS handshakes */
	uint64_t	st_tls_resumed;	/* resumed TLS handshakes */
	uint64_t	st_overload;	/* queries refused: pending table full */
	uint64_t	st_tcp_aborts;	/* TCP clients cut off for not reading */
	uint64_t	st_refused;	/* queries from clients not allowed */
	uint64_t	st_cache_hits;
	uint64_t	st_cache_misses;
	uint64_t	st_cache_evictions;	/* live entries pushed out */
	uint64_t	st_stale;	/* answers served stale (RFC 8767) */
	uint64_t	st_prefetches;	/* background refreshes started */
};
extern struct stats stats;

/*
 * Who asked a query, by value: the reply path looks a TCP client up by
 * slot and generation, so a client that went away only loses its answer.
 * A UDP query to a wildcard listener also keeps the address it was sent
 * to, so that the answer comes from that address.
 */
enum client_kind { CLIENT_UDP, CLIENT_TCP };
union sockaddr_any {
	struct sockaddr		sa;
	struct sockaddr_in	sin;
	struct sockaddr_in6	sin6;
};
struct client_ref {
	uint8_t		cr_kind;
	uint8_t		cr_has_local;	/* UDP: cr_local is set */
	uint16_t	cr_listener;	/* UDP: index of the listening socket */
	uint32_t	cr_slot;	/* TCP: client slot */
	uint32_t	cr_gen;		/* TCP: generation of that slot */
	uint32_t	cr_ifindex;	/* UDP: interface it arrived on */
	struct in6_addr	cr_local;	/* UDP: where it was sent (v4: first 4) */
	union sockaddr_any cr_addr;	/* UDP: where the query came from */
	socklen_t	cr_addrlen;
};

enum log_level { LOG_LVL_ERROR, LOG_LVL_WARN, LOG_LVL_INFO, LOG_LVL_DEBUG };

/* Results of non-blocking I/O steps (tls.c and the plain TCP path). */
#define IO_ERR		(-1)
#define IO_WANT_READ	(-2)
#define IO_WANT_WRITE	(-3)

/* One --connect-tls or --connect-tcp. */
struct upstream_cfg {
	union sockaddr_any uc_addr;
	socklen_t	uc_addrlen;
	int		uc_tls;
	char		*uc_name;	/* auth name and SNI; NULL: pins only */
	uint8_t		uc_pins[PINS_MAX][32];
	int		uc_npins;
};

/* One --allow network. */
struct allow {
	int		al_family;
	int		al_plen;	/* prefix length */
	uint8_t		al_addr[16];	/* network byte order, host bits 0 */
};

/* The command line, parsed; read-only once the loop runs. */
struct config {
	union sockaddr_any cf_udp[LISTEN_MAX];
	int		cf_nudp;
	union sockaddr_any cf_tcp[LISTEN_MAX];
	int		cf_ntcp;
	struct upstream_cfg cf_up[UPSTREAMS_MAX];
	int		cf_nup;
	const char	*cf_ca_file;
	int		cf_connections;
	int		cf_max_inflight;
	int		cf_timeout_ms;
	int		cf_idle_timeout_s;
	int		cf_cache_size;
	int		cf_min_ttl;
	int		cf_max_ttl;
	int		cf_neg_max_ttl;
	int		cf_serve_stale;
	int		cf_prefetch;
	int		cf_keep_ecs;
	int		cf_no_resume;	/* --no-resume: no session tickets */
	int		cf_prewarm;
	struct allow	cf_allow[ALLOW_MAX];
	int		cf_nallow;
	const char	*cf_user;	/* --user, NULL: stay who we are */
	int		cf_check;	/* --check: validate and exit */
	enum log_level	cf_log_level;
};

/* options.c */
/* Fills cf from the command line; usage errors exit EXIT_USAGE. */
void	options_parse(int, char **, struct config *);
void	options_free(struct config *);

/* listen.c */
struct ev_loop;
void	listen_init(struct ev_loop *, const struct config *);
/* Stops taking new queries; answers still go out. */
void	listen_stop(void);
void	listen_free(void);
/* Hands an answer to the client that asked; msg may be modified. */
void	listen_deliver(const struct client_ref *, uint8_t *, size_t,
	    const struct dns_qinfo *);

/* query.c */
/*
 * Hands a finished answer (carrying the client's ID) to the client that
 * asked; msg may be modified.  Called exactly once for every query that
 * query_ask accepted, unless the daemon is shutting down.
 */
typedef void query_deliver_fn(const struct client_ref *, uint8_t *, size_t,
	    const struct dns_qinfo *);
/* loop may be NULL (unit tests): then query_tick is called by hand. */
void	query_init(struct ev_loop *, const struct config *, query_deliver_fn *);
/*
 * Takes a client message read at `now`.  Returns 0 when an answer will be
 * delivered (it may already have been), -1 when it was dropped.
 */
int	query_ask(const struct client_ref *, const uint8_t *, size_t, int64_t);
/* Runs the deadlines and stale timers due; returns the next due, or 0. */
int64_t	query_tick(int64_t);
int	query_pending(void);
void	query_shutdown(void);

/* cache.c */
/* Largest answer the cache keeps; each entry reserves this much. */
#define CACHE_MSGMAX	1232
/* Bytes per cache entry, as documented in dnsfwd.8 LIMITS. */
#define CACHE_ENTRY_BYTES (CACHE_MSGMAX + 72)
/* How long a refresh may take before a stale entry is served instead. */
#define STALE_WAIT_MS	1800
/* A stale answer's TTL (RFC 8767 section 4). */
#define STALE_TTL	30
enum cache_state { CACHE_MISS, CACHE_FRESH, CACHE_STALE };
struct centry;
void	cache_init(const struct config *);
void	cache_free(void);
int	cache_entries(void);
/*
 * The entry for k at `now`, and in *state whether it is fresh or only
 * stale (expired, but within --serve-stale).  Entries past that are
 * removed.  A fresh hit becomes the most recently used.
 */
struct centry *cache_lookup(const struct qkey *, int64_t, enum cache_state *);
/* True when a fresh entry is in the last tenth of its life. */
int	cache_prefetch_due(const struct centry *, int64_t);
/*
 * Offers an upstream answer (without OPT) to k for keeping; returns the
 * entry made, valid until the next cache_store, or NULL.
 */
const struct centry *cache_store(const struct qkey *, const uint8_t *,
	    size_t, int64_t);
/*
 * Writes the entry into out (CACHE_MSGMAX bytes) with its TTLs aged to
 * `now`, or pinned to STALE_TTL when stale; returns the length.
 */
size_t	cache_render(const struct centry *, int64_t, int, uint8_t *);

/* mux.c */
/* How a mux_send ended. */
enum mux_status {
	MUX_ANSWER,		/* reply and len are the upstream's answer */
	MUX_TIMEOUT,		/* the deadline passed */
	MUX_UNREACHABLE,	/* every upstream is backing off */
	MUX_FAILED		/* connections kept failing with it */
};
/* Called exactly once per accepted mux_send, never from within it. */
typedef void mux_done_fn(void *, enum mux_status, uint8_t *, size_t,
	    int64_t);
void	mux_init(struct ev_loop *, const struct config *);
/*
 * Sends an opaque DNS query (its ID is replaced) to an upstream, to be
 * answered by `deadline`.  Returns a handle for mux_extend, or -1 when
 * too many are in flight.
 */
int	mux_send(const uint8_t *, size_t, int64_t, mux_done_fn *, void *,
	    int64_t);
/* Moves a send's deadline later. */
void	mux_extend(int, int64_t, int64_t);
/* A client asked, answered from the cache or not: --prewarm stays warm. */
void	mux_active(int64_t);
/*
 * The network changed: connections to the upstreams whose bit is set in
 * the mask are replaced (their queries resent), backoff is cleared and
 * every TLS session ticket forgotten.
 */
void	mux_netchange(uint32_t, int64_t);
void	mux_shutdown(void);
int	mux_inflight(void);
/* Upstream requests the mux holds at most. */
int	mux_capacity(void);

/* netmon.c */
void	netmon_init(struct ev_loop *, const struct config *);
void	netmon_free(void);

/* tls.c */
struct tls_upstream;
struct tls_conn;
void	tls_init(void);
int	tls_load_ca(const char *);
void	tls_shutdown(void);
const char *tls_strerror(int);
struct tls_upstream *tls_upstream_new(const char *, const uint8_t (*)[32],
	    int, int);
void	tls_upstream_free(struct tls_upstream *);
/* Forgets the session ticket: the next handshake is a full one. */
void	tls_upstream_forget(struct tls_upstream *);
struct tls_conn *tls_conn_new(struct tls_upstream *, int);
void	tls_conn_free(struct tls_conn *, int);
int	tls_handshake(struct tls_conn *, char *, size_t);
const char *tls_version(struct tls_conn *);
int	tls_resumed(struct tls_conn *);
int	tls_drained(struct tls_conn *);
int	tls_read(struct tls_conn *, uint8_t *, size_t);
int	tls_write(struct tls_conn *, const uint8_t *, size_t);
int	tls_flush(struct tls_conn *);

/* log.c */
void	log_init(enum log_level);
int	log_level_parse(const char *, enum log_level *);
void	log_warn(const char *, ...) __attribute__((__format__(printf, 1, 2)));
void	log_warnx(const char *, ...) __attribute__((__format__(printf, 1, 2)));
void	log_info(const char *, ...) __attribute__((__format__(printf, 1, 2)));
void	log_debug(const char *, ...) __attribute__((__format__(printf, 1, 2)));
void	log_error(const char *, ...) __attribute__((__format__(printf, 1, 2)));
/* Warn at most once per LOG_RATELIMIT_S per call site (pass a static). */
void	log_ratelimited(int64_t *, const char *, ...)
	    __attribute__((__format__(printf, 2, 3)));
__attribute__((__noreturn__)) void fatal(int, const char *, ...)
	    __attribute__((__format__(printf, 2, 3)));
__attribute__((__noreturn__)) void fatalx(int, const char *, ...)
	    __attribute__((__format__(printf, 2, 3)));

/* util.c */
/* Sockets passed by systemd socket activation (LISTEN_FDS), from fd 3. */
#define LISTEN_FDS_START 3
int	passed_fds(void);
int64_t	now_ms(void);
int64_t	boottime_ms(void);
/* getrandom(2); a failure leaves no safe source of IDs, so it is fatal. */
void	random_bytes(void *, size_t);
const char *addr_str(const struct sockaddr *, char *, size_t);
/* malloc that ends start-up on failure; only used before the loop runs. */
void	*xcalloc(size_t, size_t);

/* dns.c */
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
 * Error when ede is not EDE_NONE and our idle timeout when the query
 * offered keepalive.  Returns the length or 0 (no room).
 */
size_t	dns_finish(uint8_t *out, size_t len, size_t cap, const uint8_t *q,
	    const struct dns_qinfo *qi, int ede, const char *text);
/* Equal questions (ending at the same offset): name case-insensitively. */
int	dns_question_equal(const uint8_t *, const uint8_t *, size_t);
/* Fills k for the client query q; the hash is seeded with seed. */
void	dns_key(struct qkey *, const uint8_t *, const struct dns_qinfo *,
	    int, uint32_t);
int	dns_key_same(const struct qkey *, const struct qkey *);
/* One resource record as dns_rr_next found it; offsets into the message. */
struct dns_rr {
	size_t		rr_start;
	size_t		rr_ttloff;
	size_t		rr_rdata;
	uint32_t	rr_ttl;
	uint16_t	rr_type;
	uint16_t	rr_rdlen;
};
int	dns_rr_next(const uint8_t *, size_t, size_t *, struct dns_rr *);
/*
 * Hash chains of indices into a fixed array (the pending pool, the cache
 * table): a bucket holds the first index of its chain, each element the
 * next, -1 ends a chain.  Indices, not pointers, so an element is linked
 * without allocating and the tables size themselves from the limits.
 */
static inline uint32_t
chain_mask(uint32_t n)
{
	uint32_t m = 1;

	while (m < n)
		m <<= 1;
	return m - 1;
}

static inline void
chain_clear(int32_t *buckets, uint32_t mask)
{
	memset(buckets, 0xff, (mask + 1) * sizeof(int32_t));
}

static inline int32_t *
chain_buckets(uint32_t mask)
{
	int32_t *b = xcalloc(mask + 1, sizeof(int32_t));

	chain_clear(b, mask);
	return b;
}

#define CHAIN_INSERT(buckets, mask, h, base, next, idx) do {		\
	(base)[idx].next = (buckets)[(h) & (mask)];			\
	(buckets)[(h) & (mask)] = (idx);				\
} while (0)

/* Unlinks idx from its chain; an index not on it is left alone. */
#define CHAIN_UNLINK(buckets, mask, h, base, next, idx) do {		\
	int32_t *ip_ = &(buckets)[(h) & (mask)];			\
									\
	while (*ip_ >= 0 && *ip_ != (idx))				\
		ip_ = &(base)[*ip_].next;				\
	if (*ip_ == (idx))						\
		*ip_ = (base)[idx].next;				\
} while (0)

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

#endif /* DNSFWD_H */

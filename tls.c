/*
 * mbedTLS client connections for DNS over TLS (RFC 7858).
 *
 * Builds with mbedTLS 2.28 (TLS 1.2) and 3.6 (TLS 1.3 preferred).  A
 * session is only ever used after the handshake succeeded and the peer
 * was authenticated by name, by SPKI pin, or both: there is no
 * opportunistic mode.
 */
#include <sys/socket.h>
#include <sys/random.h>
#include <sys/stat.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/error.h>
#include <mbedtls/net_sockets.h>
#include <mbedtls/sha256.h>
#include <mbedtls/ssl.h>
#include <mbedtls/version.h>
#include <mbedtls/x509_crt.h>
#if MBEDTLS_VERSION_MAJOR >= 3
#include <psa/crypto.h>
#endif

#include "log.h"
#include "tls.h"
#include "util.h"

#ifdef MBEDTLS_ERR_SSL_RECEIVED_NEW_SESSION_TICKET
#define TICKET	MBEDTLS_ERR_SSL_RECEIVED_NEW_SESSION_TICKET
#else
#define TICKET	INT32_MIN	/* mbedTLS 2: never returned */
#endif

/* Per upstream: its TLS configuration and the session we last had. */
struct tls_upstream {
	mbedtls_ssl_config	 tu_conf;
	mbedtls_ssl_session	 tu_session;
	int			 tu_have_session;
	const char		*tu_name;	/* NULL: pins authenticate */
	const uint8_t		(*tu_pins)[32];
	int			 tu_npins;
	int			 tu_resume;	/* keep and offer tickets */
};

/*
 * Bytes read from the socket ahead of mbedTLS, which asks for each record
 * in two small reads (header, then body): served from here, a burst of
 * answers costs one recv instead of two per record.
 */
#define TLS_RBUF	16384
/* Calls that may each stop after a message before the buffer is used. */
#define RBUF_RETRIES	64

/*
 * Ciphertext the socket did not take, once the handshake is done.  A
 * record mbedTLS held back itself would be flushed by the next read that
 * meets a TLS 1.3 post-handshake message (a session ticket), after which
 * the write, repeated as mbedTLS asks, would send the record twice.  So
 * records are taken whole here, one at a time, and sent from here; there
 * is room for one record and an alert.
 */
#define TLS_WBUF	(16384 + 1024)

/* Per connection; owned by the mux connection that created it. */
struct tls_conn {
	mbedtls_ssl_context	 tc_ssl;
	struct tls_upstream	*tc_up;
	int			 tc_fd;
	int			 tc_open;	/* handshake done */
	size_t			 tc_roff;	/* next unread byte of tc_rbuf */
	size_t			 tc_rlen;
	int			 tc_drained;	/* the last recv came up short */
	int64_t			 tc_arrived;	/* its data's stamp, recv_arrived */
	uint8_t			 tc_rbuf[TLS_RBUF];
	uint8_t			*tc_wbuf;	/* TLS_WBUF, on first need */
	size_t			 tc_woff;	/* next unsent byte of tc_wbuf */
	size_t			 tc_wlen;
	int			 tc_offered;	/* a saved session was offered */
	int			 tc_saw_cert;	/* the server sent its chain */
	int			 tc_pin_bad;	/* its key matched no pin */
};

/*
 * Forward-secret AEAD suites only (RFC 7525).  ChaCha20-Poly1305 first:
 * in mbedTLS it costs less per record than AES-GCM even with AES-NI.
 */
#ifdef MBEDTLS_SSL_PROTO_TLS1_3
#define TLS13_SUITE(s)	MBEDTLS_TLS1_3_##s,
#else
#define TLS13_SUITE(s)
#endif
static const int suites[] = {
	TLS13_SUITE(CHACHA20_POLY1305_SHA256)
	TLS13_SUITE(AES_128_GCM_SHA256)
	TLS13_SUITE(AES_256_GCM_SHA384)
	MBEDTLS_TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	MBEDTLS_TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
	MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	MBEDTLS_TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	MBEDTLS_TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	0
};

static mbedtls_ctr_drbg_context	drbg;
static mbedtls_x509_crt		cacert;
static int			cacert_loaded;

static int	bio_send(void *, const unsigned char *, size_t);
static int	bio_recv(void *, unsigned char *, size_t);
static void	verify_reason(uint32_t, char *, size_t);
static int	pin_matches(const struct tls_upstream *,
		    const mbedtls_x509_crt *);
static void	save_session(struct tls_conn *);
static int	verify_cb(void *, mbedtls_x509_crt *, int, uint32_t *);
static int	map_io(struct tls_conn *, int);
static int	kernel_entropy(void *, unsigned char *, size_t);

void
tls_init(void)
{
	int	 rv;

#if MBEDTLS_VERSION_MAJOR >= 3
	if (psa_crypto_init() != PSA_SUCCESS)
		fatalx(EXIT_SETUP, "psa_crypto_init failed");
#endif
	mbedtls_ctr_drbg_init(&drbg);
	mbedtls_x509_crt_init(&cacert);
	rv = mbedtls_ctr_drbg_seed(&drbg, kernel_entropy, NULL,
	    (const unsigned char *)"dnsfwd", 6);
	if (rv != 0)
		fatalx(EXIT_SETUP, "random generator: %s", tls_strerror(rv));
}

/*
 * The DRBG's seed, and its reseeds, come from getrandom(2) itself: the
 * kernel's generator is already a pool of every source mbedTLS's entropy
 * module would gather, and that module's 37 KB of state go unused.  A
 * failure fails the handshake that asked, not the daemon.
 */
static int
kernel_entropy(void *arg, unsigned char *buf, size_t len)
{
	ssize_t	 n;

	(void)arg;
	while (len > 0) {
		n = getrandom(buf, len, 0);
		if (n == -1 && errno == EINTR)
			continue;
		if (n <= 0)
			return MBEDTLS_ERR_CTR_DRBG_ENTROPY_SOURCE_FAILED;
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Loads the trust anchors; only needed when an upstream has a name. */
int
tls_load_ca(const char *file)
{
	struct stat	 st;
	int		 rv;

	/* mbedTLS takes a directory's size for a file's and allocates it. */
	if (stat(file, &st) == 0 && !S_ISREG(st.st_mode)) {
		log_error("cannot load CA file %s: not a regular file", file);
		return -1;
	}
	rv = mbedtls_x509_crt_parse_file(&cacert, file);
	if (rv < 0) {
		log_error("cannot load CA file %s: %s", file,
		    tls_strerror(rv));
		return -1;
	}
	if (rv > 0)
		log_warnx("CA file %s: %d certificates could not be parsed",
		    file, rv);
	cacert_loaded = 1;
	return 0;
}

void
tls_shutdown(void)
{
	mbedtls_x509_crt_free(&cacert);
	mbedtls_ctr_drbg_free(&drbg);
#if MBEDTLS_VERSION_MAJOR >= 3
	mbedtls_psa_crypto_free();
#endif
}

const char *
tls_strerror(int rv)
{
	static char	 buf[128];

	mbedtls_strerror(rv, buf, sizeof(buf));
	return buf;
}

struct tls_upstream *
tls_upstream_new(const char *name, const uint8_t (*pins)[32], int npins,
    int resume)
{
	struct tls_upstream	*tu;
	int			 rv;

	if ((tu = calloc(1, sizeof(*tu))) == NULL)
		fatal(EXIT_SETUP, "%s", __func__);
	tu->tu_name = name;
	tu->tu_pins = pins;
	tu->tu_npins = npins;
	tu->tu_resume = resume;
	mbedtls_ssl_config_init(&tu->tu_conf);
	mbedtls_ssl_session_init(&tu->tu_session);
	rv = mbedtls_ssl_config_defaults(&tu->tu_conf, MBEDTLS_SSL_IS_CLIENT,
	    MBEDTLS_SSL_TRANSPORT_STREAM, MBEDTLS_SSL_PRESET_DEFAULT);
	if (rv != 0)
		fatalx(EXIT_SETUP, "TLS config: %s", tls_strerror(rv));
#if MBEDTLS_VERSION_MAJOR >= 3
	mbedtls_ssl_conf_min_tls_version(&tu->tu_conf,
	    MBEDTLS_SSL_VERSION_TLS1_2);
#if defined(MBEDTLS_SSL_PROTO_TLS1_3) && defined(MBEDTLS_SSL_SESSION_TICKETS)
	/* Otherwise TLS 1.3 tickets are discarded and nothing resumes. */
	mbedtls_ssl_conf_tls13_enable_signal_new_session_tickets(&tu->tu_conf,
	    MBEDTLS_SSL_TLS1_3_SIGNAL_NEW_SESSION_TICKETS_ENABLED);
#endif
#else
	mbedtls_ssl_conf_min_version(&tu->tu_conf, MBEDTLS_SSL_MAJOR_VERSION_3,
	    MBEDTLS_SSL_MINOR_VERSION_3);
#endif
	mbedtls_ssl_conf_rng(&tu->tu_conf, mbedtls_ctr_drbg_random, &drbg);
	mbedtls_ssl_conf_ciphersuites(&tu->tu_conf, suites);
	mbedtls_ssl_conf_session_tickets(&tu->tu_conf, resume ?
	    MBEDTLS_SSL_SESSION_TICKETS_ENABLED :
	    MBEDTLS_SSL_SESSION_TICKETS_DISABLED);
	if (name != NULL) {
		mbedtls_ssl_conf_authmode(&tu->tu_conf,
		    MBEDTLS_SSL_VERIFY_REQUIRED);
		mbedtls_ssl_conf_ca_chain(&tu->tu_conf, &cacert, NULL);
	} else {
		/*
		 * Pin only: the SPKI hash is checked after the handshake.
		 * Optional, not none, so that verify_cb sees the chain.
		 */
		mbedtls_ssl_conf_authmode(&tu->tu_conf,
		    MBEDTLS_SSL_VERIFY_OPTIONAL);
	}
	return tu;
}

void
tls_upstream_free(struct tls_upstream *tu)
{
	if (tu == NULL)
		return;
	mbedtls_ssl_session_free(&tu->tu_session);
	mbedtls_ssl_config_free(&tu->tu_conf);
	free(tu);
}

void
tls_upstream_forget(struct tls_upstream *tu)
{
	mbedtls_ssl_session_free(&tu->tu_session);
	mbedtls_ssl_session_init(&tu->tu_session);
	tu->tu_have_session = 0;
}

struct tls_conn *
tls_conn_new(struct tls_upstream *tu, int fd)
{
	struct tls_conn	*tc;

	if ((tc = calloc(1, sizeof(*tc))) == NULL) {
		log_warn("%s", __func__);
		return NULL;
	}
	tc->tc_up = tu;
	tc->tc_fd = fd;
	tc->tc_arrived = -1;
	mbedtls_ssl_init(&tc->tc_ssl);
	if (mbedtls_ssl_setup(&tc->tc_ssl, &tu->tu_conf) != 0 ||
	    mbedtls_ssl_set_hostname(&tc->tc_ssl, tu->tu_name) != 0) {
		log_warnx("%s: TLS setup failed", __func__);
		tls_conn_free(tc, 0);
		return NULL;
	}
	mbedtls_ssl_set_bio(&tc->tc_ssl, tc, bio_send, bio_recv, NULL);
	mbedtls_ssl_set_verify(&tc->tc_ssl, verify_cb, tc);
	if (tu->tu_have_session &&
	    mbedtls_ssl_set_session(&tc->tc_ssl, &tu->tu_session) == 0)
		tc->tc_offered = 1;
	return tc;
}

/* Sends close_notify when asked (a clean close), then frees. */
void
tls_conn_free(struct tls_conn *tc, int notify)
{
	if (tc == NULL)
		return;
	if (notify) {
		(void)mbedtls_ssl_close_notify(&tc->tc_ssl);
		(void)tls_flush(tc);
	}
	mbedtls_ssl_free(&tc->tc_ssl);
	free(tc->tc_wbuf);
	free(tc);
}

/*
 * One step of the handshake: 0 when done and the peer is authenticated,
 * IO_WANT_READ/IO_WANT_WRITE to wait, IO_ERR with the reason in why.
 */
int
tls_handshake(struct tls_conn *tc, char *why, size_t whylen)
{
	int	 rv, tries = 0;

	do
		rv = mbedtls_ssl_handshake(&tc->tc_ssl);
	while (rv == MBEDTLS_ERR_SSL_WANT_READ && tc->tc_roff < tc->tc_rlen &&
	    ++tries < RBUF_RETRIES);
	if (rv == MBEDTLS_ERR_SSL_WANT_READ)
		return IO_WANT_READ;
	if (rv == MBEDTLS_ERR_SSL_WANT_WRITE)
		return IO_WANT_WRITE;
	if (rv == MBEDTLS_ERR_X509_CERT_VERIFY_FAILED) {
		verify_reason(mbedtls_ssl_get_verify_result(&tc->tc_ssl),
		    why, whylen);
		return IO_ERR;
	}
	if (rv != 0 && tc->tc_pin_bad) {
		snprintf(why, whylen, "pin mismatch: server key matches no "
		    "--pin-sha256");
		return IO_ERR;
	}
	if (rv != 0) {
		snprintf(why, whylen, "%s", tls_strerror(rv));
		return IO_ERR;
	}
	/* A resumed session was pinned when it was first made. */
	if (tc->tc_up->tu_npins > 0 && !tc->tc_saw_cert && !tc->tc_offered) {
		snprintf(why, whylen, "pin mismatch: no server certificate");
		return IO_ERR;
	}
	save_session(tc);
	tc->tc_open = 1;
	return 0;
}

const char *
tls_version(struct tls_conn *tc)
{
	return mbedtls_ssl_get_version(&tc->tc_ssl);
}

/*
 * Nothing more to read without another recv, which the socket's last
 * short read says would find nothing: the caller may stop reading.
 */
int
tls_drained(struct tls_conn *tc)
{
	return tc->tc_drained && tc->tc_roff == tc->tc_rlen &&
	    mbedtls_ssl_get_bytes_avail(&tc->tc_ssl) == 0 &&
	    !mbedtls_ssl_check_pending(&tc->tc_ssl);
}

/* When the data of its last recv arrived (recv_arrived), or -1. */
int64_t
tls_arrived(const struct tls_conn *tc)
{
	return tc->tc_arrived;
}

/* A resumed handshake is one that offered a ticket and saw no chain. */
int
tls_resumed(struct tls_conn *tc)
{
	return tc->tc_offered && !tc->tc_saw_cert;
}

/*
 * Called for each certificate of the server's chain, in full handshakes
 * only, the server's own last (depth 0).  With pins alone the chain is
 * not judged: the pins are, here, so that a wrong key ends the handshake
 * before we finish it.
 */
static int
verify_cb(void *arg, mbedtls_x509_crt *crt, int depth, uint32_t *flags)
{
	struct tls_conn	*tc = arg;

	tc->tc_saw_cert = 1;
	if (tc->tc_up->tu_name == NULL)
		*flags = 0;
	if (depth == 0 && tc->tc_up->tu_npins > 0 &&
	    !pin_matches(tc->tc_up, crt)) {
		tc->tc_pin_bad = 1;
		return MBEDTLS_ERR_X509_FATAL_ERROR;
	}
	return 0;
}

/*
 * Bytes read or written (>0), 0 when the peer closed, or an IO_* code.
 * TLS 1.3 tickets may arrive during either call; they are kept for the
 * next dial and the call is repeated.
 */
int
tls_read(struct tls_conn *tc, uint8_t *buf, size_t len)
{
	int	 rv, tries = 0;

	for (;;) {
		rv = mbedtls_ssl_read(&tc->tc_ssl, buf, len);
		if (rv == TICKET)
			save_session(tc);
		/*
		 * After a post-handshake message mbedTLS may want to read
		 * again while bytes of ours are still unread: the socket is
		 * empty, so nothing would wake us for them.
		 */
		else if (!(rv == MBEDTLS_ERR_SSL_WANT_READ &&
		    tc->tc_roff < tc->tc_rlen && ++tries < RBUF_RETRIES))
			break;
	}
	return map_io(tc, rv);
}

/* Once what tls.c holds is sent, a record of up to len bytes is taken. */
int
tls_write(struct tls_conn *tc, const uint8_t *buf, size_t len)
{
	int	 rv;

	if ((rv = tls_flush(tc)) != 0)
		return rv;
	while ((rv = mbedtls_ssl_write(&tc->tc_ssl, buf, len)) == TICKET)
		save_session(tc);
	return map_io(tc, rv);
}

/* 0 once nothing is held back, else IO_WANT_WRITE or IO_ERR. */
int
tls_flush(struct tls_conn *tc)
{
	ssize_t	 n;

	while (tc->tc_wlen > tc->tc_woff) {
		n = send(tc->tc_fd, tc->tc_wbuf + tc->tc_woff,
		    tc->tc_wlen - tc->tc_woff, MSG_NOSIGNAL);
		if (n < 0)
			return errno == EAGAIN || errno == EINTR ?
			    IO_WANT_WRITE : IO_ERR;
		tc->tc_woff += (size_t)n;
	}
	tc->tc_woff = tc->tc_wlen = 0;
	return 0;
}

static int
map_io(struct tls_conn *tc, int rv)
{
	if (rv > 0)
		return rv;
	switch (rv) {
	case MBEDTLS_ERR_SSL_WANT_READ:
		return IO_WANT_READ;
	case MBEDTLS_ERR_SSL_WANT_WRITE:
		return IO_WANT_WRITE;
	case 0:
	case MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY:
	case MBEDTLS_ERR_SSL_CONN_EOF:
	case MBEDTLS_ERR_NET_CONN_RESET:
		return 0;
	}
	log_debug("TLS fd %d: %s", tc->tc_fd, tls_strerror(rv));
	return IO_ERR;
}

/* Names the reasons a chain failed, in the words users search for. */
static void
verify_reason(uint32_t flags, char *why, size_t len)
{
	static const struct {
		uint32_t	 flag;
		const char	*text;
	} reasons[] = {
		{ MBEDTLS_X509_BADCERT_EXPIRED, "certificate expired" },
		{ MBEDTLS_X509_BADCERT_FUTURE, "certificate not yet valid" },
		{ MBEDTLS_X509_BADCERT_CN_MISMATCH,
		    "certificate name mismatch" },
		{ MBEDTLS_X509_BADCERT_NOT_TRUSTED,
		    "certificate untrusted (no chain to the CA file)" },
		{ MBEDTLS_X509_BADCERT_REVOKED, "certificate revoked" },
	};
	size_t	 i, off = 0;

	why[0] = '\0';
	for (i = 0; i < sizeof(reasons) / sizeof(reasons[0]); i++) {
		if ((flags & reasons[i].flag) == 0)
			continue;
		off += (size_t)snprintf(why + off, len - off, "%s%s",
		    off ? ", " : "", reasons[i].text);
		if (off >= len)
			return;
		flags &= ~reasons[i].flag;
	}
	if (flags != 0 && off < len)
		mbedtls_x509_crt_verify_info(why + off, len - off,
		    off ? ", " : "", flags);
	if (why[0] == '\0')
		snprintf(why, len, "certificate verification failed");
}

/* RFC 7858 4.2: SHA-256 of the SubjectPublicKeyInfo, any pin matches. */
static int
pin_matches(const struct tls_upstream *tu, const mbedtls_x509_crt *crt)
{
	uint8_t	 hash[32];
	int	 i;

#if MBEDTLS_VERSION_MAJOR >= 3
	mbedtls_sha256(crt->pk_raw.p, crt->pk_raw.len, hash, 0);
#else
	mbedtls_sha256_ret(crt->pk_raw.p, crt->pk_raw.len, hash, 0);
#endif
	for (i = 0; i < tu->tu_npins; i++)
		if (memcmp(hash, tu->tu_pins[i], sizeof(hash)) == 0)
			return 1;
	return 0;
}

static void
save_session(struct tls_conn *tc)
{
	struct tls_upstream	*tu = tc->tc_up;

	if (!tu->tu_resume)
		return;
	tls_upstream_forget(tu);
	if (mbedtls_ssl_get_session(&tc->tc_ssl, &tu->tu_session) == 0)
		tu->tu_have_session = 1;
}

/*
 * During the handshake mbedTLS keeps what the socket does not take and
 * repeats itself; after it, what is left goes to tc_wbuf (see TLS_WBUF),
 * behind anything already there.
 */
static int
bio_send(void *ctx, const unsigned char *buf, size_t len)
{
	struct tls_conn	*tc = ctx;
	ssize_t		 n = 0;

	if (tc->tc_wlen == 0) {
		n = send(tc->tc_fd, buf, len, MSG_NOSIGNAL);
		if (n < 0 && errno != EAGAIN && errno != EINTR)
			return errno == ECONNRESET || errno == EPIPE ?
			    MBEDTLS_ERR_NET_CONN_RESET :
			    MBEDTLS_ERR_NET_SEND_FAILED;
		if (n < 0)
			n = 0;
	}
	if ((size_t)n == len || !tc->tc_open)
		return n > 0 ? (int)n : MBEDTLS_ERR_SSL_WANT_WRITE;
	if (tc->tc_wbuf == NULL && (tc->tc_wbuf = malloc(TLS_WBUF)) == NULL)
		return MBEDTLS_ERR_NET_SEND_FAILED;
	if (len - (size_t)n > TLS_WBUF - tc->tc_wlen)
		return MBEDTLS_ERR_NET_SEND_FAILED;
	memcpy(tc->tc_wbuf + tc->tc_wlen, buf + n, len - (size_t)n);
	tc->tc_wlen += len - (size_t)n;
	return (int)len;
}

static int
bio_recv(void *ctx, unsigned char *buf, size_t len)
{
	struct tls_conn	*tc = ctx;
	ssize_t		 n;

	if (tc->tc_roff == tc->tc_rlen) {
		n = recv_arrived(tc->tc_fd, tc->tc_rbuf, sizeof(tc->tc_rbuf),
		    &tc->tc_arrived);
		if (n > 0) {
			tc->tc_roff = 0;
			tc->tc_rlen = (size_t)n;
			tc->tc_drained = (size_t)n < sizeof(tc->tc_rbuf);
		}
	} else
		n = (ssize_t)(tc->tc_rlen - tc->tc_roff);
	if (n > 0) {
		if (len > tc->tc_rlen - tc->tc_roff)
			len = tc->tc_rlen - tc->tc_roff;
		memcpy(buf, tc->tc_rbuf + tc->tc_roff, len);
		tc->tc_roff += len;
		return (int)len;
	}
	if (n == 0)
		return 0;
	tc->tc_drained = 1;
	if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
		return MBEDTLS_ERR_SSL_WANT_READ;
	if (errno == ECONNRESET || errno == EPIPE)
		return MBEDTLS_ERR_NET_CONN_RESET;
	return MBEDTLS_ERR_NET_RECV_FAILED;
}

/*
 * dnsfwd: main, command line, the UDP and TCP listeners that clients
 * talk to, and signals.  Client queries go to cache.c, which answers or
 * passes them to mux.c; answers come back through client_deliver.
 */
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ev.h>
#include <mbedtls/base64.h>
#include <mbedtls/version.h>

#include "dnsfwd.h"

/* A UDP listener and the replies it will send in one sendmmsg. */
struct udp_listener {
	int		 ul_fd;
	ev_io		 ul_io;
	int		 ul_nout;
	struct mmsghdr	 ul_msgs[UDP_BATCH];
	struct iovec	 ul_iov[UDP_BATCH];
	union sockaddr_any ul_to[UDP_BATCH];
	uint8_t		 (*ul_buf)[EDNS_PAYLOAD];
};

/*
 * A TCP client, from accept to client_close.  Its slot is reused; the
 * generation tells a late answer for a previous occupant from one for
 * the current.
 */
struct tcp_client {
	int		 tc_fd;
	uint32_t	 tc_slot;
	uint32_t	 tc_gen;
	ev_io		 tc_rio;
	ev_io		 tc_wio;
	ev_timer	 tc_idle;
	int		 tc_pending;	/* queries given to the mux */
	int		 tc_closing;	/* close once the output is written */
	int		 tc_dirty;
	TAILQ_ENTRY(tcp_client) tc_dirtylink;
	size_t		 tc_inlen;
	uint8_t		 tc_in[2 * (2 + QUERY_MAX)];
	uint8_t		*tc_out;
	size_t		 tc_outoff;
	size_t		 tc_outlen;
	size_t		 tc_outcap;
};

struct stats	 stats;

static struct config	 cf;
static struct ev_loop	*loop;
static struct udp_listener udp[LISTEN_MAX];
static struct {
	struct mmsghdr	 msgs[UDP_BATCH];
	struct iovec	 iov[UDP_BATCH];
	union sockaddr_any from[UDP_BATCH];
	uint8_t		 bufs[UDP_BATCH][QUERY_MAX + 1];
} rx;
static int		 tcp_fd[LISTEN_MAX];
static ev_io		 tcp_io[LISTEN_MAX];
static ev_timer		 accept_pause;
static struct tcp_client *clients[TCP_CLIENTS_MAX];
static uint32_t		 client_gen[TCP_CLIENTS_MAX];
static int		 nclients;
static TAILQ_HEAD(, tcp_client) client_dirty =
			    TAILQ_HEAD_INITIALIZER(client_dirty);
static ev_prepare	 client_prep;
static ev_signal	 sig_term, sig_int, sig_usr1;
static ev_timer		 drain_timer;
static int		 draining;

static void	usage(FILE *, int) __attribute__((__noreturn__));
static void	usage_error(const char *, ...)
		    __attribute__((__noreturn__, __format__(printf, 1, 2)));
static void	parse_args(int, char **);
static void	parse_other(int, char **);
static void	config_defaults(void);
static int	parse_addr(const char *, int, union sockaddr_any *);
static socklen_t sa_len(const union sockaddr_any *);
static void	parse_upstream(const char *, int);
static void	parse_pin(const char *);
static int	parse_num(const char *, const char *, int, int);
static int	listen_on(const union sockaddr_any *, int);
static void	udp_read_cb(struct ev_loop *, ev_io *, int);
static void	udp_rx_init(void);
static void	udp_queue(struct udp_listener *, const union sockaddr_any *,
		    socklen_t, const uint8_t *, size_t);
static void	udp_flush(struct udp_listener *);
static void	udp_deliver(const struct client_ref *, const uint8_t *, size_t,
		    const struct dns_qinfo *);
static void	tcp_deliver(const struct client_ref *, const uint8_t *, size_t);
static int	tcp_append(struct tcp_client *, const uint8_t *, size_t);
static void	tcp_accept_cb(struct ev_loop *, ev_io *, int);
static void	accept_enable(int);
static void	accept_pause_cb(struct ev_loop *, ev_timer *, int);
static void	client_open(int);
static void	client_close(struct tcp_client *, const char *);
static void	client_read_cb(struct ev_loop *, ev_io *, int);
static void	client_frames(struct tcp_client *);
static void	client_write_cb(struct ev_loop *, ev_io *, int);
static void	client_idle_cb(struct ev_loop *, ev_timer *, int);
static void	client_flush(struct tcp_client *);
static void	prepare_cb(struct ev_loop *, ev_prepare *, int);
static void	signal_cb(struct ev_loop *, ev_signal *, int);
static void	drain_cb(struct ev_loop *, ev_timer *, int);
static void	log_stats(void);
static void	syserr_cb(const char *);

#define CLIENT_OF(w, f) \
	((struct tcp_client *)((char *)(w) - offsetof(struct tcp_client, f)))

static const char *usage_text =
"usage: dnsfwd --bind-udp ADDR:PORT [--bind-udp ...] [--bind-tcp ADDR:PORT ...]\n"
"              (--connect-tls ADDR[:PORT][#NAME] [--pin-sha256 B64 ...] |\n"
"               --connect-tcp ADDR[:PORT]) ...\n"
"              [--ca-file FILE] [--connections N] [--max-inflight N]\n"
"              [--timeout MS] [--idle-timeout S] [--cache-size N]\n"
"              [--min-ttl S] [--max-ttl S] [--neg-max-ttl S]\n"
"              [--serve-stale S] [--prefetch]\n"
"              [--log-level debug|info|warn|error] [--help] [--version]\n";

#define HELP_TEXT \
"\n" \
"  --bind-udp ADDR:PORT     answer DNS over UDP here (port 53 by default)\n" \
"  --bind-tcp ADDR:PORT     answer DNS over TCP here (port 53 by default)\n" \
"  --connect-tls ADDR[:PORT][#NAME]\n" \
"                           DNS-over-TLS upstream (port 853); NAME is the\n" \
"                           name its certificate must carry, sent as SNI\n" \
"  --pin-sha256 B64         SPKI pin for the preceding --connect-tls\n" \
"  --connect-tcp ADDR[:PORT] plain DNS-over-TCP upstream (port 53)\n" \
"  --ca-file FILE           trust anchors (default %s)\n" \
"  --connections N          connections per upstream (default %d)\n" \
"  --max-inflight N         queries in flight per connection (default %d)\n" \
"  --timeout MS             per-query deadline, then SERVFAIL (default %d)\n" \
"  --idle-timeout S         close idle upstream connections (default %d)\n" \
"  --cache-size N           cached answers, 0 for none (default %d)\n" \
"  --min-ttl S              floor for cached TTLs (default 0)\n" \
"  --max-ttl S              ceiling for cached TTLs (default 86400)\n" \
"  --neg-max-ttl S          ceiling for cached negative answers (default 3600)\n" \
"  --serve-stale S          keep expired answers S seconds to use when\n" \
"                           upstreams fail (default 0: never)\n" \
"  --prefetch               refresh popular answers before they expire\n" \
"  --log-level LEVEL        debug, info, warn or error (default info)\n" \
"ADDR is an IPv4 address or a bracketed IPv6 address such as [::1].\n"

#define DEFAULT_CA_FILE		"/etc/ssl/certs/ca-certificates.crt"
#define DEFAULT_CONNECTIONS	2
#define DEFAULT_MAX_INFLIGHT	100
#define DEFAULT_TIMEOUT_MS	2000
#define DEFAULT_IDLE_TIMEOUT_S	10
#define DEFAULT_CACHE_SIZE	4096
#define DEFAULT_MAX_TTL		86400
#define DEFAULT_NEG_MAX_TTL	3600
#define TTL_LIMIT		604800	/* a week, as unbound's cache-max-ttl */

static void
usage(FILE *f, int code)
{
	fputs(usage_text, f);
	if (f == stdout)
		fprintf(f, HELP_TEXT, DEFAULT_CA_FILE, DEFAULT_CONNECTIONS,
		    DEFAULT_MAX_INFLIGHT, DEFAULT_TIMEOUT_MS,
		    DEFAULT_IDLE_TIMEOUT_S, DEFAULT_CACHE_SIZE);
	exit(code);
}

static void
usage_error(const char *fmt, ...)
{
	va_list	 ap;

	fputs("dnsfwd: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputs(" (see --help)\n", stderr);
	exit(EXIT_USAGE);
}

enum {
	OPT_BIND_UDP = 256, OPT_BIND_TCP, OPT_CONNECT_TLS, OPT_CONNECT_TCP,
	OPT_PIN, OPT_CA_FILE, OPT_CONNECTIONS, OPT_MAX_INFLIGHT, OPT_TIMEOUT,
	OPT_IDLE_TIMEOUT, OPT_LOG_LEVEL, OPT_HELP, OPT_VERSION, OPT_CACHE_SIZE,
	OPT_MIN_TTL, OPT_MAX_TTL, OPT_NEG_MAX_TTL, OPT_SERVE_STALE, OPT_PREFETCH
};

static const struct option longopts[] = {
	{ "bind-udp",		required_argument, NULL, OPT_BIND_UDP },
	{ "bind-tcp",		required_argument, NULL, OPT_BIND_TCP },
	{ "ca-file",		required_argument, NULL, OPT_CA_FILE },
	{ "cache-size",		required_argument, NULL, OPT_CACHE_SIZE },
	{ "connect-tcp",	required_argument, NULL, OPT_CONNECT_TCP },
	{ "connect-tls",	required_argument, NULL, OPT_CONNECT_TLS },
	{ "connections",	required_argument, NULL, OPT_CONNECTIONS },
	{ "help",		no_argument,	   NULL, OPT_HELP },
	{ "idle-timeout",	required_argument, NULL, OPT_IDLE_TIMEOUT },
	{ "log-level",		required_argument, NULL, OPT_LOG_LEVEL },
	{ "max-inflight",	required_argument, NULL, OPT_MAX_INFLIGHT },
	{ "max-ttl",		required_argument, NULL, OPT_MAX_TTL },
	{ "min-ttl",		required_argument, NULL, OPT_MIN_TTL },
	{ "neg-max-ttl",	required_argument, NULL, OPT_NEG_MAX_TTL },
	{ "pin-sha256",		required_argument, NULL, OPT_PIN },
	{ "prefetch",		no_argument,	   NULL, OPT_PREFETCH },
	{ "serve-stale",	required_argument, NULL, OPT_SERVE_STALE },
	{ "timeout",		required_argument, NULL, OPT_TIMEOUT },
	{ "version",		no_argument,	   NULL, OPT_VERSION },
	{ NULL, 0, NULL, 0 }
};

static void
parse_bind(const char *arg, const char *flag, union sockaddr_any *to,
    int *n)
{
	if (*n == LISTEN_MAX)
		usage_error("%s: at most %d addresses", flag, LISTEN_MAX);
	if (parse_addr(arg, 53, &to[*n]) == -1)
		usage_error("%s: invalid address '%s'", flag, arg);
	(*n)++;
}

/* The options that take a number, with the range each accepts. */
static const struct numopt {
	int		 no_opt;
	const char	*no_flag;
	int		*no_dst;
	int		 no_min;
	int		 no_max;
} numopts[] = {
	{ OPT_CONNECTIONS, "--connections", &cf.cf_connections, 1, 16 },
	{ OPT_MAX_INFLIGHT, "--max-inflight", &cf.cf_max_inflight, 1, 4096 },
	{ OPT_TIMEOUT, "--timeout", &cf.cf_timeout_ms, 10, 60000 },
	{ OPT_IDLE_TIMEOUT, "--idle-timeout", &cf.cf_idle_timeout_s, 1, 3600 },
	{ OPT_CACHE_SIZE, "--cache-size", &cf.cf_cache_size, 0, 1000000 },
	{ OPT_MIN_TTL, "--min-ttl", &cf.cf_min_ttl, 0, TTL_LIMIT },
	{ OPT_MAX_TTL, "--max-ttl", &cf.cf_max_ttl, 1, TTL_LIMIT },
	{ OPT_NEG_MAX_TTL, "--neg-max-ttl", &cf.cf_neg_max_ttl, 1, TTL_LIMIT },
	{ OPT_SERVE_STALE, "--serve-stale", &cf.cf_serve_stale, 0, TTL_LIMIT },
};

static void
config_defaults(void)
{
	cf.cf_ca_file = DEFAULT_CA_FILE;
	cf.cf_connections = DEFAULT_CONNECTIONS;
	cf.cf_max_inflight = DEFAULT_MAX_INFLIGHT;
	cf.cf_timeout_ms = DEFAULT_TIMEOUT_MS;
	cf.cf_idle_timeout_s = DEFAULT_IDLE_TIMEOUT_S;
	cf.cf_log_level = LOG_LVL_INFO;
	cf.cf_cache_size = DEFAULT_CACHE_SIZE;
	cf.cf_max_ttl = DEFAULT_MAX_TTL;
	cf.cf_neg_max_ttl = DEFAULT_NEG_MAX_TTL;
}

/* Options with a number, with none, and the errors getopt reports. */
static void
parse_other(int ch, char **argv)
{
	size_t	 i;

	for (i = 0; i < sizeof(numopts) / sizeof(numopts[0]); i++) {
		if (numopts[i].no_opt == ch) {
			*numopts[i].no_dst = parse_num(numopts[i].no_flag,
			    optarg, numopts[i].no_min, numopts[i].no_max);
			return;
		}
	}
	switch (ch) {
	case OPT_PREFETCH:
		cf.cf_prefetch = 1;
		return;
	case OPT_HELP:
		usage(stdout, 0);
	case OPT_VERSION:
		printf("dnsfwd %s (%s, libev %d.%d)\n", DNSFWD_VERSION,
		    MBEDTLS_VERSION_STRING_FULL, ev_version_major(),
		    ev_version_minor());
		exit(0);
	case ':':
		usage_error("%s: missing value", argv[optind - 1]);
	}
	/* getopt_long leaves a known option in optopt when it was given a
	 * value it does not take. */
	if (optopt >= OPT_BIND_UDP)
		usage_error("%s: takes no value", argv[optind - 1]);
	usage_error("unknown option '%s'", argv[optind - 1]);
}

static void
parse_args(int argc, char **argv)
{
	int	 ch;

	config_defaults();
	opterr = 0;
	while ((ch = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
		switch (ch) {
		case OPT_BIND_UDP:
			parse_bind(optarg, "--bind-udp", cf.cf_udp, &cf.cf_nudp);
			break;
		case OPT_BIND_TCP:
			parse_bind(optarg, "--bind-tcp", cf.cf_tcp, &cf.cf_ntcp);
			break;
		case OPT_CONNECT_TLS:
		case OPT_CONNECT_TCP:
			parse_upstream(optarg, ch == OPT_CONNECT_TLS);
			break;
		case OPT_PIN:
			parse_pin(optarg);
			break;
		case OPT_CA_FILE:
			cf.cf_ca_file = optarg;
			break;
		case OPT_LOG_LEVEL:
			if (log_level_parse(optarg, &cf.cf_log_level) == -1)
				usage_error("--log-level: invalid value '%s'",
				    optarg);
			break;
		default:
			parse_other(ch, argv);
		}
	}
	if (optind < argc)
		usage_error("unexpected argument '%s'", argv[optind]);
	if (cf.cf_nudp == 0 && cf.cf_ntcp == 0)
		usage_error("no listener: give --bind-udp or --bind-tcp");
	if (cf.cf_nup == 0)
		usage_error("no upstream: give --connect-tls or --connect-tcp");
	if (cf.cf_min_ttl > cf.cf_max_ttl)
		usage_error("--min-ttl: %d is above --max-ttl %d",
		    cf.cf_min_ttl, cf.cf_max_ttl);
}

/* IPv4 "a.b.c.d[:port]" or IPv6 "[addr][:port]". */
static int
parse_addr(const char *s, int defport, union sockaddr_any *sa)
{
	char		 host[INET6_ADDRSTRLEN + 2];
	const char	*port = NULL, *end;
	int		 v6 = s[0] == '[';
	long		 p = defport;
	char		*ep;

	memset(sa, 0, sizeof(*sa));
	if (v6) {
		if ((end = strchr(s, ']')) == NULL)
			return -1;
		if (end[1] == ':')
			port = end + 2;
		else if (end[1] != '\0')
			return -1;
		s++;
	} else {
		port = strchr(s, ':');
		end = port ? port++ : s + strlen(s);
	}
	if ((size_t)(end - s) >= sizeof(host) || end == s)
		return -1;
	memcpy(host, s, (size_t)(end - s));
	host[end - s] = '\0';
	if (port != NULL) {
		errno = 0;
		p = strtol(port, &ep, 10);
		if (*port == '\0' || *ep != '\0' || errno || p < 1 ||
		    p > 65535)
			return -1;
	}
	if (v6) {
		sa->sin6.sin6_family = AF_INET6;
		sa->sin6.sin6_port = htons((uint16_t)p);
		return inet_pton(AF_INET6, host, &sa->sin6.sin6_addr) == 1 ?
		    0 : -1;
	}
	sa->sin.sin_family = AF_INET;
	sa->sin.sin_port = htons((uint16_t)p);
	return inet_pton(AF_INET, host, &sa->sin.sin_addr) == 1 ? 0 : -1;
}

static socklen_t
sa_len(const union sockaddr_any *sa)
{
	return sa->sa.sa_family == AF_INET6 ? sizeof(sa->sin6) :
	    sizeof(sa->sin);
}

static int
valid_name(const char *name)
{
	size_t	 i, len = strlen(name);

	if (len == 0 || len > 253)
		return 0;
	for (i = 0; i < len; i++)
		if (!(name[i] == '.' || name[i] == '-' || name[i] == '_' ||
		    (name[i] >= '0' && name[i] <= '9') ||
		    ((name[i] | 0x20) >= 'a' && (name[i] | 0x20) <= 'z')))
			return 0;
	return 1;
}

static void
parse_upstream(const char *arg, int tls)
{
	const char		*flag = tls ? "--connect-tls" : "--connect-tcp";
	struct upstream_cfg	*uc;
	char			 addr[128], *hash;

	if (cf.cf_nup == UPSTREAMS_MAX)
		usage_error("%s: at most %d upstreams", flag, UPSTREAMS_MAX);
	uc = &cf.cf_up[cf.cf_nup];
	if (strlen(arg) >= sizeof(addr))
		usage_error("%s: invalid address '%s'", flag, arg);
	strcpy(addr, arg);
	if ((hash = strchr(addr, '#')) != NULL) {
		*hash++ = '\0';
		if (!tls)
			usage_error("%s: a name needs --connect-tls: '%s'",
			    flag, arg);
		if (!valid_name(hash))
			usage_error("%s: invalid name in '%s'", flag, arg);
		uc->uc_name = strdup(hash);
	}
	if (parse_addr(addr, tls ? 853 : 53, &uc->uc_addr) == -1)
		usage_error("%s: invalid address '%s'", flag, arg);
	uc->uc_addrlen = sa_len(&uc->uc_addr);
	uc->uc_tls = tls;
	cf.cf_nup++;
}

static void
parse_pin(const char *arg)
{
	struct upstream_cfg	*uc;
	size_t			 olen;

	if (cf.cf_nup == 0 || !cf.cf_up[cf.cf_nup - 1].uc_tls)
		usage_error("--pin-sha256: must follow a --connect-tls");
	uc = &cf.cf_up[cf.cf_nup - 1];
	if (uc->uc_npins == PINS_MAX)
		usage_error("--pin-sha256: at most %d pins per upstream",
		    PINS_MAX);
	if (mbedtls_base64_decode(uc->uc_pins[uc->uc_npins], 32, &olen,
	    (const unsigned char *)arg, strlen(arg)) != 0 || olen != 32)
		usage_error("--pin-sha256: invalid value '%s' (want the "
		    "base64 of a SHA-256 hash)", arg);
	uc->uc_npins++;
}

static int
parse_num(const char *flag, const char *s, int min, int max)
{
	long	 v;
	char	*ep;

	errno = 0;
	v = strtol(s, &ep, 10);
	if (*s == '\0' || *ep != '\0' || errno || v < min || v > max)
		usage_error("%s: invalid value '%s' (want %d to %d)", flag, s,
		    min, max);
	return (int)v;
}

/* Every --connect-tls must be authenticated by a name or a pin. */
static void
check_auth(void)
{
	char	 a[64];
	int	 i;

	for (i = 0; i < cf.cf_nup; i++)
		if (cf.cf_up[i].uc_tls && cf.cf_up[i].uc_name == NULL &&
		    cf.cf_up[i].uc_npins == 0)
			usage_error("--connect-tls: %s has neither #NAME nor "
			    "--pin-sha256, so it could not be authenticated",
			    addr_str(&cf.cf_up[i].uc_addr.sa, a, sizeof(a)));
}

static int
listen_on(const union sockaddr_any *sa, int type)
{
	char	 a[64];
	int	 fd, one = 1;

	addr_str(&sa->sa, a, sizeof(a));
	fd = socket(sa->sa.sa_family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd == -1)
		fatal(EXIT_SETUP, "socket for %s", a);
	if (sa->sa.sa_family == AF_INET6)
		(void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one,
		    sizeof(one));
	if (type == SOCK_STREAM)
		(void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one,
		    sizeof(one));
	if (bind(fd, &sa->sa, sa_len(sa)) == -1)
		fatal(EXIT_SETUP, "cannot bind %s %s",
		    type == SOCK_STREAM ? "tcp" : "udp", a);
	if (type == SOCK_STREAM && listen(fd, 128) == -1)
		fatal(EXIT_SETUP, "listen on tcp %s", a);
	log_info("listening on %s %s", type == SOCK_STREAM ? "tcp" : "udp",
	    a);
	return fd;
}

static void
udp_read_cb(struct ev_loop *l, ev_io *w, int revents)
{
	struct udp_listener	*ul = (struct udp_listener *)
				    ((char *)w - offsetof(struct udp_listener, ul_io));
	struct client_ref	 cr;
	struct dns_qinfo	 qi;
	int			 i, n;

	(void)l;
	(void)revents;
	n = recvmmsg(ul->ul_fd, rx.msgs, UDP_BATCH, MSG_DONTWAIT, NULL);
	if (n == -1) {
		if (errno != EAGAIN && errno != EINTR)
			log_debug("udp recvmmsg: %s", strerror(errno));
		return;
	}
	memset(&cr, 0, sizeof(cr));
	cr.cr_kind = CLIENT_UDP;
	cr.cr_listener = (uint16_t)(ul - udp);
	for (i = 0; i < n; i++) {
		size_t len = rx.msgs[i].msg_len;

		cr.cr_addr = rx.from[i];
		cr.cr_addrlen = rx.msgs[i].msg_hdr.msg_namelen;
		/* recvmmsg shrank it to the address it wrote. */
		rx.msgs[i].msg_hdr.msg_namelen = sizeof(rx.from[i]);
		if (len > QUERY_MAX || dns_parse_query(rx.bufs[i], len, &qi)) {
			stats.st_drops++;
			continue;
		}
		stats.st_queries++;
		cache_query(&cr, rx.bufs[i], len, &qi);
	}
}

/* The receive batch shared by every UDP listener, set up once. */
static void
udp_rx_init(void)
{
	int	 i;

	for (i = 0; i < UDP_BATCH; i++) {
		rx.iov[i].iov_base = rx.bufs[i];
		rx.iov[i].iov_len = sizeof(rx.bufs[i]);
		rx.msgs[i].msg_hdr.msg_iov = &rx.iov[i];
		rx.msgs[i].msg_hdr.msg_iovlen = 1;
		rx.msgs[i].msg_hdr.msg_name = &rx.from[i];
		rx.msgs[i].msg_hdr.msg_namelen = sizeof(rx.from[i]);
	}
}

/* Queues a reply for the next sendmmsg; large ones go out at once. */
static void
udp_queue(struct udp_listener *ul, const union sockaddr_any *to,
    socklen_t tolen, const uint8_t *msg, size_t len)
{
	int	 i;

	if (len > sizeof(ul->ul_buf[0])) {
		if (sendto(ul->ul_fd, msg, len, 0, &to->sa, tolen) == -1)
			log_debug("udp sendto: %s", strerror(errno));
		return;
	}
	if (ul->ul_nout == UDP_BATCH)
		udp_flush(ul);
	i = ul->ul_nout++;
	memcpy(ul->ul_buf[i], msg, len);
	memcpy(&ul->ul_to[i], to, sizeof(*to));
	ul->ul_iov[i].iov_base = ul->ul_buf[i];
	ul->ul_iov[i].iov_len = len;
	memset(&ul->ul_msgs[i], 0, sizeof(ul->ul_msgs[i]));
	ul->ul_msgs[i].msg_hdr.msg_name = &ul->ul_to[i];
	ul->ul_msgs[i].msg_hdr.msg_namelen = tolen;
	ul->ul_msgs[i].msg_hdr.msg_iov = &ul->ul_iov[i];
	ul->ul_msgs[i].msg_hdr.msg_iovlen = 1;
}

static void
udp_flush(struct udp_listener *ul)
{
	int	 off = 0, n;

	while (off < ul->ul_nout) {
		n = sendmmsg(ul->ul_fd, ul->ul_msgs + off, (unsigned int)
		    (ul->ul_nout - off), MSG_DONTWAIT);
		if (n <= 0) {
			/* A full socket buffer loses these, as UDP may. */
			log_debug("udp sendmmsg: %s", strerror(errno));
			break;
		}
		off += n;
	}
	ul->ul_nout = 0;
}

void
client_deliver(const struct client_ref *cr, uint8_t *msg, size_t len,
    const struct dns_qinfo *qi)
{
	if (cr->cr_kind == CLIENT_UDP)
		udp_deliver(cr, msg, len, qi);
	else if (cr->cr_kind == CLIENT_TCP)
		tcp_deliver(cr, msg, len);
}

/* Within the client's size limit, or as TC=1 so it retries over TCP. */
static void
udp_deliver(const struct client_ref *cr, const uint8_t *msg, size_t len,
    const struct dns_qinfo *qi)
{
	uint8_t		 tc[QUERY_MAX + 64];
	size_t		 limit = qi->qi_has_opt ? qi->qi_udpsize : 512;

	if (len > limit) {
		len = dns_truncate(tc, sizeof(tc), msg, len, qi->qi_has_opt);
		if (len == 0)
			return;
		msg = tc;
	}
	udp_queue(&udp[cr->cr_listener], &cr->cr_addr, cr->cr_addrlen, msg,
	    len);
}

static void
tcp_deliver(const struct client_ref *cr, const uint8_t *msg, size_t len)
{
	struct tcp_client	*c = clients[cr->cr_slot];

	if (c == NULL || c->tc_gen != cr->cr_gen)
		return;		/* that client has gone */
	if (c->tc_pending-- == TCP_CLIENT_PIPELINE && !c->tc_closing &&
	    !draining)
		ev_io_start(loop, &c->tc_rio);
	if (c->tc_closing)
		return;
	if (tcp_append(c, msg, len) == -1) {
		log_debug("tcp client %u: not reading its answers, closing",
		    c->tc_slot);
		c->tc_closing = 1;
	}
	if (!c->tc_dirty) {
		c->tc_dirty = 1;
		TAILQ_INSERT_TAIL(&client_dirty, c, tc_dirtylink);
	}
}

/* Frames msg into the output, growing it up to TCP_CLIENT_OUTMAX. */
static int
tcp_append(struct tcp_client *c, const uint8_t *msg, size_t len)
{
	size_t	 need = c->tc_outlen + 2 + len, ncap;
	uint8_t	*p;

	if (need > TCP_CLIENT_OUTMAX)
		return -1;
	if (c->tc_outoff > 0 && c->tc_outoff + need > c->tc_outcap) {
		memmove(c->tc_out, c->tc_out + c->tc_outoff, c->tc_outlen);
		c->tc_outoff = 0;
	}
	if (need > c->tc_outcap) {
		ncap = c->tc_outcap * 2 > need ? c->tc_outcap * 2 : need + 512;
		if ((p = realloc(c->tc_out, ncap)) == NULL)
			return -1;
		c->tc_out = p;
		c->tc_outcap = ncap;
	}
	p = c->tc_out + c->tc_outoff + c->tc_outlen;
	dns_put16(p, (uint16_t)len);
	memcpy(p + 2, msg, len);
	c->tc_outlen = need;
	return 0;
}

static void
tcp_accept_cb(struct ev_loop *l, ev_io *w, int revents)
{
	int	 fd;

	(void)l;
	(void)revents;
	if (nclients == TCP_CLIENTS_MAX) {
		accept_enable(0);
		return;
	}
	fd = accept4(w->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
	if (fd == -1) {
		if (errno == EMFILE || errno == ENFILE) {
			/* Out of descriptors: stop spinning for a second. */
			static int64_t warned;

			log_ratelimited(&warned, "accept: %s", strerror(errno));
			accept_enable(0);
			ev_timer_set(&accept_pause, 1.0, 0.0);
			ev_timer_start(loop, &accept_pause);
		}
		return;
	}
	client_open(fd);
}

static void
accept_enable(int on)
{
	int	 i;

	for (i = 0; i < cf.cf_ntcp; i++) {
		if (on && !draining)
			ev_io_start(loop, &tcp_io[i]);
		else
			ev_io_stop(loop, &tcp_io[i]);
	}
}

static void
accept_pause_cb(struct ev_loop *l, ev_timer *w, int revents)
{
	(void)l;
	(void)w;
	(void)revents;
	if (nclients < TCP_CLIENTS_MAX)
		accept_enable(1);
}

static void
client_open(int fd)
{
	struct tcp_client	*c;
	int			 i, one = 1;

	for (i = 0; i < TCP_CLIENTS_MAX && clients[i] != NULL; i++)
		;
	if ((c = calloc(1, sizeof(*c))) == NULL) {
		log_warn("%s", __func__);
		close(fd);
		return;
	}
	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	clients[i] = c;
	c->tc_fd = fd;
	c->tc_slot = (uint32_t)i;
	c->tc_gen = ++client_gen[i];
	ev_io_init(&c->tc_rio, client_read_cb, fd, EV_READ);
	ev_io_init(&c->tc_wio, client_write_cb, fd, EV_WRITE);
	ev_init(&c->tc_idle, client_idle_cb);
	c->tc_idle.repeat = TCP_CLIENT_IDLE;
	ev_io_start(loop, &c->tc_rio);
	ev_timer_again(loop, &c->tc_idle);
	if (++nclients == TCP_CLIENTS_MAX)
		accept_enable(0);
}

/* The one teardown of a TCP client; late answers find it gone. */
static void
client_close(struct tcp_client *c, const char *why)
{
	log_debug("tcp client %u: closed: %s", c->tc_slot, why);
	ev_io_stop(loop, &c->tc_rio);
	ev_io_stop(loop, &c->tc_wio);
	ev_timer_stop(loop, &c->tc_idle);
	if (c->tc_dirty) {
		TAILQ_REMOVE(&client_dirty, c, tc_dirtylink);
		c->tc_dirty = 0;
	}
	close(c->tc_fd);
	clients[c->tc_slot] = NULL;
	free(c->tc_out);
	free(c);
	if (nclients-- == TCP_CLIENTS_MAX && !ev_is_active(&accept_pause))
		accept_enable(1);
}

static void
client_read_cb(struct ev_loop *l, ev_io *w, int revents)
{
	struct tcp_client	*c = CLIENT_OF(w, tc_rio);
	ssize_t			 n;

	(void)l;
	(void)revents;
	n = recv(c->tc_fd, c->tc_in + c->tc_inlen,
	    sizeof(c->tc_in) - c->tc_inlen, 0);
	if (n == 0 || (n == -1 && errno != EAGAIN && errno != EINTR)) {
		client_close(c, n == 0 ? "end of stream" : strerror(errno));
		return;
	}
	if (n == -1)
		return;
	c->tc_inlen += (size_t)n;
	ev_timer_again(loop, &c->tc_idle);
	client_frames(c);
}

/* Hands every whole query to the mux, up to the pipeline limit. */
static void
client_frames(struct tcp_client *c)
{
	struct client_ref	 cr;
	struct dns_qinfo	 qi;
	size_t			 off = 0, flen;

	memset(&cr, 0, sizeof(cr));
	cr.cr_kind = CLIENT_TCP;
	cr.cr_slot = c->tc_slot;
	cr.cr_gen = c->tc_gen;
	while (c->tc_inlen - off >= 2 && !c->tc_closing &&
	    c->tc_pending < TCP_CLIENT_PIPELINE) {
		flen = dns_get16(c->tc_in + off);
		if (flen > QUERY_MAX) {
			stats.st_drops++;
			client_close(c, "query too large");
			return;
		}
		if (c->tc_inlen - off - 2 < flen)
			break;
		if (dns_parse_query(c->tc_in + off + 2, flen, &qi) == 0) {
			stats.st_queries++;
			c->tc_pending++;
			cache_query(&cr, c->tc_in + off + 2, flen, &qi);
		} else
			stats.st_drops++;
		off += 2 + flen;
	}
	memmove(c->tc_in, c->tc_in + off, c->tc_inlen - off);
	c->tc_inlen -= off;
	if (c->tc_pending >= TCP_CLIENT_PIPELINE || c->tc_closing)
		ev_io_stop(loop, &c->tc_rio);
}

static void
client_flush(struct tcp_client *c)
{
	ssize_t	 n;

	while (c->tc_outlen > 0) {
		n = send(c->tc_fd, c->tc_out + c->tc_outoff, c->tc_outlen,
		    MSG_NOSIGNAL);
		if (n == -1 && (errno == EAGAIN || errno == EINTR)) {
			ev_io_start(loop, &c->tc_wio);
			return;
		}
		if (n <= 0) {
			client_close(c, "write failed");
			return;
		}
		c->tc_outoff += (size_t)n;
		c->tc_outlen -= (size_t)n;
	}
	c->tc_outoff = 0;
	ev_io_stop(loop, &c->tc_wio);
	if (c->tc_closing)
		client_close(c, "too many unread answers");
	else if (c->tc_inlen > 0 && !draining)
		client_frames(c);	/* queries held back by the limit */
}

static void
client_write_cb(struct ev_loop *l, ev_io *w, int revents)
{
	(void)l;
	(void)revents;
	client_flush(CLIENT_OF(w, tc_wio));
}

static void
client_idle_cb(struct ev_loop *l, ev_timer *w, int revents)
{
	struct tcp_client	*c = CLIENT_OF(w, tc_idle);

	(void)l;
	(void)revents;
	if (c->tc_pending > 0 || c->tc_outlen > 0)
		ev_timer_again(loop, &c->tc_idle);
	else
		client_close(c, "idle");
}

/* Before the loop sleeps: one sendmmsg per listener, one send per client. */
static void
prepare_cb(struct ev_loop *l, ev_prepare *w, int revents)
{
	struct tcp_client	*c;
	int			 i;

	(void)l;
	(void)w;
	(void)revents;
	for (i = 0; i < cf.cf_nudp; i++)
		if (udp[i].ul_nout > 0)
			udp_flush(&udp[i]);
	while ((c = TAILQ_FIRST(&client_dirty)) != NULL) {
		TAILQ_REMOVE(&client_dirty, c, tc_dirtylink);
		c->tc_dirty = 0;
		client_flush(c);
	}
	if (draining && mux_inflight() == 0)
		ev_break(loop, EVBREAK_ALL);
}

static void
signal_cb(struct ev_loop *l, ev_signal *w, int revents)
{
	int	 i;

	(void)l;
	(void)revents;
	if (w->signum == SIGUSR1) {
		log_stats();
		return;
	}
	if (draining)
		return;
	log_info("signal %d: stopping", w->signum);
	draining = 1;
	for (i = 0; i < cf.cf_nudp; i++)
		ev_io_stop(loop, &udp[i].ul_io);
	accept_enable(0);
	ev_timer_stop(loop, &accept_pause);
	for (i = 0; i < TCP_CLIENTS_MAX; i++)
		if (clients[i] != NULL)
			ev_io_stop(loop, &clients[i]->tc_rio);
	/* Answer what is in flight, but never past the 2 s promise. */
	ev_timer_init(&drain_timer, drain_cb, 1.0, 0.0);
	ev_timer_start(loop, &drain_timer);
}

static void
drain_cb(struct ev_loop *l, ev_timer *w, int revents)
{
	(void)w;
	(void)revents;
	ev_break(l, EVBREAK_ALL);
}

static void
log_stats(void)
{
	log_info("stats: queries=%llu answers=%llu servfails=%llu drops=%llu "
	    "bad_replies=%llu reconnects=%llu overload=%llu inflight=%d "
	    "cache_hits=%llu cache_misses=%llu cache_entries=%d "
	    "cache_evictions=%llu stale=%llu prefetches=%llu",
	    (unsigned long long)stats.st_queries,
	    (unsigned long long)stats.st_answers,
	    (unsigned long long)stats.st_servfails,
	    (unsigned long long)stats.st_drops,
	    (unsigned long long)stats.st_bad_replies,
	    (unsigned long long)stats.st_reconnects,
	    (unsigned long long)stats.st_overload, mux_inflight(),
	    (unsigned long long)stats.st_cache_hits,
	    (unsigned long long)stats.st_cache_misses, cache_entries(),
	    (unsigned long long)stats.st_cache_evictions,
	    (unsigned long long)stats.st_stale,
	    (unsigned long long)stats.st_prefetches);
}

static void
syserr_cb(const char *msg)
{
	fatal(EXIT_SETUP, "libev: %s", msg);
}

static void
setup_listeners(void)
{
	int	 i;

	udp_rx_init();
	for (i = 0; i < cf.cf_nudp; i++) {
		udp[i].ul_fd = listen_on(&cf.cf_udp[i], SOCK_DGRAM);
		udp[i].ul_buf = malloc(UDP_BATCH * sizeof(*udp[i].ul_buf));
		if (udp[i].ul_buf == NULL)
			fatal(EXIT_SETUP, "%s", __func__);
		ev_io_init(&udp[i].ul_io, udp_read_cb, udp[i].ul_fd, EV_READ);
		ev_io_start(loop, &udp[i].ul_io);
	}
	for (i = 0; i < cf.cf_ntcp; i++) {
		tcp_fd[i] = listen_on(&cf.cf_tcp[i], SOCK_STREAM);
		ev_io_init(&tcp_io[i], tcp_accept_cb, tcp_fd[i], EV_READ);
		ev_io_start(loop, &tcp_io[i]);
	}
	ev_init(&accept_pause, accept_pause_cb);
}

static void
teardown(void)
{
	int	 i;

	mux_shutdown();
	cache_free();
	for (i = 0; i < TCP_CLIENTS_MAX; i++)
		if (clients[i] != NULL)
			client_close(clients[i], "shutting down");
	for (i = 0; i < cf.cf_nudp; i++) {
		close(udp[i].ul_fd);
		free(udp[i].ul_buf);
	}
	for (i = 0; i < cf.cf_ntcp; i++)
		close(tcp_fd[i]);
	for (i = 0; i < cf.cf_nup; i++)
		free(cf.cf_up[i].uc_name);
	ev_prepare_stop(loop, &client_prep);
	ev_timer_stop(loop, &drain_timer);
	ev_signal_stop(loop, &sig_term);
	ev_signal_stop(loop, &sig_int);
	ev_signal_stop(loop, &sig_usr1);
	tls_shutdown();
	ev_loop_destroy(loop);
}

int
main(int argc, char **argv)
{
	int	 i, need_ca = 0;

	parse_args(argc, argv);
	check_auth();
	log_init(cf.cf_log_level);
	signal(SIGPIPE, SIG_IGN);
	ev_set_syserr_cb(syserr_cb);
	tls_init();
	for (i = 0; i < cf.cf_nup; i++)
		need_ca |= cf.cf_up[i].uc_name != NULL;
	if (need_ca && tls_load_ca(cf.cf_ca_file) == -1)
		exit(EXIT_SETUP);
	if ((loop = ev_default_loop(EVFLAG_AUTO)) == NULL)
		fatalx(EXIT_SETUP, "cannot initialise the event loop");
	setup_listeners();
	mux_init(loop, &cf);
	cache_init(&cf);
	ev_prepare_init(&client_prep, prepare_cb);
	ev_prepare_start(loop, &client_prep);
	ev_signal_init(&sig_term, signal_cb, SIGTERM);
	ev_signal_init(&sig_int, signal_cb, SIGINT);
	ev_signal_init(&sig_usr1, signal_cb, SIGUSR1);
	ev_signal_start(loop, &sig_term);
	ev_signal_start(loop, &sig_int);
	ev_signal_start(loop, &sig_usr1);
	log_info("dnsfwd %s ready: %d upstream%s, %d connection%s each",
	    DNSFWD_VERSION, cf.cf_nup, cf.cf_nup == 1 ? "" : "s",
	    cf.cf_connections, cf.cf_connections == 1 ? "" : "s");
	ev_run(loop, 0);
	teardown();
	log_info("stopped");
	return 0;
}

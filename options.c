/*
 * The command line.  Every option is one entry of opts[]: the getopt_long
 * table, the defaults, the range of a number, the usage line and --help
 * are all made from it, so an option is added, changed or removed in one
 * place.  tests/test_options.c holds opts[], --help and dnsfwd.8 against
 * each other.
 */
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>

#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ev.h>
#include <mbedtls/base64.h>
#include <mbedtls/version.h>

#include "dnsfwd.h"
#include "log.h"
#include "options.h"
#include "util.h"

struct optdef;
/* Stores an option's value (or sets its flag) in cf; exits on a bad one. */
typedef void	opt_fn(const struct optdef *, const char *, struct config *);

/*
 * One option.  od_set is its kind: opt_num, opt_flag and opt_string store
 * into the struct config field at od_off; the others are handlers of
 * their own.  od_default, when set, goes through od_set before the
 * command line does, so a default obeys the same range as a value given,
 * and --help prints it as written here.  Entries are written with the
 * OPT_ macros below.
 */
struct optdef {
	const char	*od_name;	/* without the leading "--" */
	const char	*od_metavar;	/* its value in --help; NULL: a flag */
	opt_fn		*od_set;
	size_t		 od_off;	/* field of struct config, for od_set */
	int		 od_min;	/* opt_num: the range accepted */
	int		 od_max;
	const char	*od_default;	/* NULL: none, or the flag is off */
	int		 od_many;	/* may be given more than once */
	const char	*od_help;	/* one sentence, no default in it */
};

/* getopt_long values: above any short option character. */
#define OPTVAL_BASE	256
/* A week, as unbound's cache-max-ttl. */
#define TTL_LIMIT	604800
/* --help sentences start at this column and lines end before WRAP_COL. */
#define HELP_COL	27
#define WRAP_COL	80

#define CF(field)	offsetof(struct config, field)
#define NOPTS		(sizeof(opts) / sizeof(opts[0]))

static void	usage_error(const char *, ...)
		    __attribute__((__noreturn__, __format__(printf, 1, 2)));
static void	getopt_error(int, char **) __attribute__((__noreturn__));
static void	set_defaults(struct config *);
static void	check_config(const struct config *);
static void	check_auth(const struct config *);
static void	*cf_field(const struct optdef *, struct config *);
static opt_fn	opt_num, opt_flag, opt_string, opt_log_level;
static opt_fn	opt_bind_udp, opt_bind_tcp, opt_connect_tls, opt_connect_tcp;
static opt_fn	opt_pin, opt_allow, opt_help, opt_version;
static void	parse_bind(const struct optdef *, const char *,
		    union sockaddr_any *, int *);
static void	parse_upstream(const struct optdef *, const char *,
		    struct config *, int);
static int	parse_addr(const char *, int, union sockaddr_any *);
static socklen_t sa_len(const union sockaddr_any *);
static int	valid_name(const char *);
static int	parse_decimal(const char *, long, long, long *);
static void	options_help(FILE *);
static void	options_usage(FILE *);
static void	help_entry(FILE *, const struct optdef *);
static size_t	put_word(FILE *, const char *, size_t, size_t, size_t);
static size_t	put_words(FILE *, const char *, size_t, size_t);

/*
 * The kinds of entry of opts[].  OPT_CALL is an option with a handler of
 * its own; MANY marks one that may be given more than once.
 */
#define OPT_NUM(name, metavar, field, min, max, dflt, help) \
	{ name, metavar, opt_num, CF(field), min, max, dflt, 0, help }
#define OPT_FLAG(name, field, help) \
	{ name, NULL, opt_flag, CF(field), 0, 0, NULL, 0, help }
#define OPT_STRING(name, metavar, field, dflt, help) \
	{ name, metavar, opt_string, CF(field), 0, 0, dflt, 0, help }
#define OPT_CALL(name, metavar, fn, dflt, many, help) \
	{ name, metavar, fn, 0, 0, 0, dflt, many, help }
#define ONCE		0
#define MANY		1

/* In the order of dnsfwd.8, which --help and the usage line follow. */
static const struct optdef opts[] = {
	OPT_CALL("bind-udp", "ADDR[:PORT]", opt_bind_udp, NULL, MANY,
	    "answer DNS over UDP here (port 53 by default)"),
	OPT_CALL("bind-tcp", "ADDR[:PORT]", opt_bind_tcp, NULL, MANY,
	    "answer DNS over TCP here (port 53 by default)"),
	OPT_CALL("connect-tls", "ADDR[:PORT][#NAME]", opt_connect_tls, NULL,
	    MANY, "DNS-over-TLS upstream (port 853); NAME is the name its "
	    "certificate must carry, sent as SNI"),
	OPT_CALL("pin-sha256", "B64", opt_pin, NULL, MANY,
	    "SPKI pin for the preceding --connect-tls"),
	OPT_CALL("connect-tcp", "ADDR[:PORT]", opt_connect_tcp, NULL, MANY,
	    "plain DNS-over-TCP upstream (port 53)"),
	OPT_STRING("ca-file", "FILE", cf_ca_file,
	    "/etc/ssl/certs/ca-certificates.crt", "trust anchors"),
	OPT_NUM("connections", "N", cf_connections, 1, 16, "8",
	    "connections per upstream"),
	OPT_NUM("max-inflight", "N", cf_max_inflight, 1, 4096, "256",
	    "queries in flight per connection"),
	OPT_NUM("timeout", "MS", cf_timeout_ms, 10, 60000, "2000",
	    "per-query deadline, then SERVFAIL"),
	OPT_NUM("idle-timeout", "S", cf_idle_timeout_s, 1, 3600, "10",
	    "close idle upstream connections"),
	OPT_NUM("cache-size", "N", cf_cache_size, 0, 1000000, "4096",
	    "cached answers, 0 for none"),
	OPT_NUM("min-ttl", "S", cf_min_ttl, 0, TTL_LIMIT, "0",
	    "floor for cached TTLs"),
	OPT_NUM("max-ttl", "S", cf_max_ttl, 1, TTL_LIMIT, "86400",
	    "ceiling for cached TTLs"),
	OPT_NUM("neg-max-ttl", "S", cf_neg_max_ttl, 1, TTL_LIMIT, "3600",
	    "ceiling for cached negative answers"),
	OPT_NUM("serve-stale", "S", cf_serve_stale, 0, TTL_LIMIT, "0",
	    "keep expired answers S seconds to use when upstreams fail, "
	    "0 for never"),
	OPT_FLAG("prefetch", cf_prefetch,
	    "refresh popular answers before they expire"),
	OPT_FLAG("keep-ecs", cf_keep_ecs,
	    "forward the client's EDNS Client Subnet option upstream (by "
	    "default it is removed); answers are then cached and shared per "
	    "subnet"),
	OPT_FLAG("no-resume", cf_no_resume,
	    "never resume TLS sessions: each connection makes a full "
	    "handshake"),
	OPT_FLAG("no-fastopen", cf_no_fastopen,
	    "never use TCP Fast Open: the ClientHello waits for the "
	    "handshake"),
	OPT_FLAG("prewarm", cf_prewarm,
	    "keep one connection per upstream open from start-up, while "
	    "queries arrive"),
	OPT_CALL("allow", "CIDR", opt_allow, NULL, MANY,
	    "also answer clients from this network; only loopback clients "
	    "are answered otherwise"),
	OPT_STRING("user", "NAME", cf_user, NULL,
	    "after binding and loading the CA file, run as this user"),
	OPT_FLAG("check", cf_check,
	    "check the options, the CA file and the user, then exit"),
	OPT_CALL("log-level", "debug|info|warn|error", opt_log_level, "info",
	    ONCE, "log events of this priority and above"),
	OPT_CALL("help", NULL, opt_help, NULL, ONCE,
	    "print this help and exit"),
	OPT_CALL("version", NULL, opt_version, NULL, ONCE,
	    "print the version and exit"),
};

/* Made from opts[] by options_parse: entry i has the value OPTVAL_BASE + i. */
static struct option	 longopts[NOPTS + 1];

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

void
options_parse(int argc, char **argv, struct config *cf)
{
	size_t	 i;
	int	 ch;

	for (i = 0; i < NOPTS; i++) {
		longopts[i].name = opts[i].od_name;
		longopts[i].has_arg = opts[i].od_metavar != NULL ?
		    required_argument : no_argument;
		longopts[i].val = OPTVAL_BASE + (int)i;
	}
	set_defaults(cf);
	/* Our own messages, not getopt's; 0 makes glibc start afresh. */
	opterr = 0;
	optind = 0;
	while ((ch = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
		if (ch < OPTVAL_BASE)
			getopt_error(ch, argv);
		i = (size_t)(ch - OPTVAL_BASE);
		opts[i].od_set(&opts[i], optarg, cf);
	}
	if (optind < argc)
		usage_error("unexpected argument '%s'", argv[optind]);
	check_config(cf);
}

void
options_free(struct config *cf)
{
	int	 i;

	for (i = 0; i < cf->cf_nup; i++) {
		free(cf->cf_up[i].uc_name);
		cf->cf_up[i].uc_name = NULL;
	}
}

/*
 * getopt_long leaves a known option's value in optopt when it lacks its
 * value or was given one it does not take; then we name it as opts[]
 * spells it, whatever abbreviation was typed.
 */
static void
getopt_error(int ch, char **argv)
{
	const struct optdef *od = NULL;

	if (optopt >= OPTVAL_BASE && optopt < OPTVAL_BASE + (int)NOPTS)
		od = &opts[optopt - OPTVAL_BASE];
	if (od != NULL && ch == ':')
		usage_error("--%s: missing value", od->od_name);
	if (od != NULL)
		usage_error("--%s: takes no value", od->od_name);
	/* In "-xy" argv[optind - 1] is not the word holding the x. */
	if (optopt > 0)
		usage_error("unknown option '-%c'", optopt);
	usage_error("unknown option '%s'", argv[optind - 1]);
}

static void
set_defaults(struct config *cf)
{
	size_t	 i;

	memset(cf, 0, sizeof(*cf));
	for (i = 0; i < NOPTS; i++)
		if (opts[i].od_default != NULL)
			opts[i].od_set(&opts[i], opts[i].od_default, cf);
}

/* What no single option can check. */
static void
check_config(const struct config *cf)
{
	/* --check runs before systemd passes the sockets it holds. */
	if (cf->cf_nudp == 0 && cf->cf_ntcp == 0 && passed_fds(2 * LISTEN_MAX) == 0 &&
	    !cf->cf_check)
		usage_error("no listener: give --bind-udp or --bind-tcp");
	if (cf->cf_nup == 0)
		usage_error("no upstream: give --connect-tls or --connect-tcp");
	if (cf->cf_min_ttl > cf->cf_max_ttl)
		usage_error("--min-ttl: %d is above --max-ttl %d",
		    cf->cf_min_ttl, cf->cf_max_ttl);
	check_auth(cf);
}

/* Every --connect-tls must be authenticated by a name or a pin. */
static void
check_auth(const struct config *cf)
{
	char	 a[64];
	int	 i;

	for (i = 0; i < cf->cf_nup; i++)
		if (cf->cf_up[i].uc_tls && cf->cf_up[i].uc_name == NULL &&
		    cf->cf_up[i].uc_npins == 0)
			usage_error("--connect-tls: %s has neither #NAME nor "
			    "--pin-sha256, so it could not be authenticated",
			    addr_str(&cf->cf_up[i].uc_addr.sa, a, sizeof(a)));
}

static void *
cf_field(const struct optdef *od, struct config *cf)
{
	return (char *)cf + od->od_off;
}

static void
opt_num(const struct optdef *od, const char *s, struct config *cf)
{
	long	 v;

	if (parse_decimal(s, od->od_min, od->od_max, &v) == -1)
		usage_error("--%s: invalid value '%s' (want %d to %d)",
		    od->od_name, s, od->od_min, od->od_max);
	*(int *)cf_field(od, cf) = (int)v;
}

static void
opt_flag(const struct optdef *od, const char *arg, struct config *cf)
{
	(void)arg;
	*(int *)cf_field(od, cf) = 1;
}

/* The string is argv's or the table's, both alive as long as the process. */
static void
opt_string(const struct optdef *od, const char *arg, struct config *cf)
{
	*(const char **)cf_field(od, cf) = arg;
}

static void
opt_log_level(const struct optdef *od, const char *arg, struct config *cf)
{
	if (log_level_parse(arg, &cf->cf_log_level) == -1)
		usage_error("--%s: invalid value '%s'", od->od_name, arg);
}

static void
opt_bind_udp(const struct optdef *od, const char *arg, struct config *cf)
{
	parse_bind(od, arg, cf->cf_udp, &cf->cf_nudp);
}

static void
opt_bind_tcp(const struct optdef *od, const char *arg, struct config *cf)
{
	parse_bind(od, arg, cf->cf_tcp, &cf->cf_ntcp);
}

static void
opt_connect_tls(const struct optdef *od, const char *arg, struct config *cf)
{
	parse_upstream(od, arg, cf, 1);
}

static void
opt_connect_tcp(const struct optdef *od, const char *arg, struct config *cf)
{
	parse_upstream(od, arg, cf, 0);
}

/* A pin belongs to the --connect-tls just before it. */
static void
opt_pin(const struct optdef *od, const char *arg, struct config *cf)
{
	struct upstream_cfg	*uc;
	size_t			 olen;

	if (cf->cf_nup == 0 || !cf->cf_up[cf->cf_nup - 1].uc_tls)
		usage_error("--%s: must follow a --connect-tls", od->od_name);
	uc = &cf->cf_up[cf->cf_nup - 1];
	if (uc->uc_npins == PINS_MAX)
		usage_error("--%s: at most %d pins per upstream", od->od_name,
		    PINS_MAX);
	if (mbedtls_base64_decode(uc->uc_pins[uc->uc_npins], 32, &olen,
	    (const unsigned char *)arg, strlen(arg)) != 0 || olen != 32)
		usage_error("--%s: invalid value '%s' (want the base64 of a "
		    "SHA-256 hash)", od->od_name, arg);
	uc->uc_npins++;
}

/* "ADDR/LEN", IPv4 or IPv6; a bare address is one host. */
static void
opt_allow(const struct optdef *od, const char *arg, struct config *cf)
{
	struct allow	*al;
	char		 host[INET6_ADDRSTRLEN], *slash;
	long		 plen;
	int		 i;

	if (cf->cf_nallow == ALLOW_MAX)
		usage_error("--%s: at most %d networks", od->od_name,
		    ALLOW_MAX);
	al = &cf->cf_allow[cf->cf_nallow];
	if (strlen(arg) >= sizeof(host))
		usage_error("--%s: invalid network '%s'", od->od_name, arg);
	strcpy(host, arg);
	if ((slash = strchr(host, '/')) != NULL)
		*slash++ = '\0';
	al->al_family = strchr(host, ':') != NULL ? AF_INET6 : AF_INET;
	if (inet_pton(al->al_family, host, al->al_addr) != 1)
		usage_error("--%s: invalid network '%s'", od->od_name, arg);
	plen = al->al_family == AF_INET6 ? 128 : 32;
	if (slash != NULL && parse_decimal(slash, 0, plen, &plen) == -1)
		usage_error("--%s: invalid prefix length in '%s'",
		    od->od_name, arg);
	al->al_plen = (int)plen;
	/* Host bits set would never match: clear them. */
	for (i = 0; i < 16; i++)
		if (plen - i * 8 < 8)
			al->al_addr[i] &= plen - i * 8 <= 0 ? 0 :
			    (uint8_t)(0xff << (8 - (plen - i * 8)));
	cf->cf_nallow++;
}

static void
opt_help(const struct optdef *od, const char *arg, struct config *cf)
{
	(void)od;
	(void)arg;
	(void)cf;
	options_help(stdout);
	exit(0);
}

static void
opt_version(const struct optdef *od, const char *arg, struct config *cf)
{
	(void)od;
	(void)arg;
	(void)cf;
	printf("dnsfwd %s (%s, libev %d.%d)\n", DNSFWD_VERSION,
	    MBEDTLS_VERSION_STRING_FULL, ev_version_major(),
	    ev_version_minor());
	exit(0);
}

static void
parse_bind(const struct optdef *od, const char *arg, union sockaddr_any *to,
    int *n)
{
	if (*n == LISTEN_MAX)
		usage_error("--%s: at most %d addresses", od->od_name,
		    LISTEN_MAX);
	if (parse_addr(arg, 53, &to[*n]) == -1)
		usage_error("--%s: invalid address '%s'", od->od_name, arg);
	(*n)++;
}

/* "ADDR[:PORT][#NAME]"; only TLS has a name to check. */
static void
parse_upstream(const struct optdef *od, const char *arg, struct config *cf,
    int tls)
{
	struct upstream_cfg	*uc;
	char			 addr[128], *hash;

	if (cf->cf_nup == UPSTREAMS_MAX)
		usage_error("--%s: at most %d upstreams", od->od_name,
		    UPSTREAMS_MAX);
	uc = &cf->cf_up[cf->cf_nup];
	if (strlen(arg) >= sizeof(addr))
		usage_error("--%s: invalid address '%s'", od->od_name, arg);
	strcpy(addr, arg);
	if ((hash = strchr(addr, '#')) != NULL) {
		*hash++ = '\0';
		if (!tls)
			usage_error("--%s: a name needs --connect-tls: '%s'",
			    od->od_name, arg);
		if (!valid_name(hash))
			usage_error("--%s: invalid name in '%s'", od->od_name,
			    arg);
		if ((uc->uc_name = strdup(hash)) == NULL)
			fatal(EXIT_SETUP, "strdup");
	}
	if (parse_addr(addr, tls ? 853 : 53, &uc->uc_addr) == -1)
		usage_error("--%s: invalid address '%s'", od->od_name, arg);
	uc->uc_addrlen = sa_len(&uc->uc_addr);
	uc->uc_tls = tls;
	cf->cf_nup++;
}

/* IPv4 "a.b.c.d[:port]" or IPv6 "[addr][:port]". */
static int
parse_addr(const char *s, int defport, union sockaddr_any *sa)
{
	char		 host[INET6_ADDRSTRLEN + 2];
	const char	*port = NULL, *end;
	int		 v6 = s[0] == '[';
	long		 p = defport;

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
	if (port != NULL && parse_decimal(port, 1, 65535, &p) == -1)
		return -1;
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

/* Digits only: strtol alone would take spaces, signs and "0x". */
static int
parse_decimal(const char *s, long min, long max, long *v)
{
	size_t	 i, len = strlen(s);

	if (len == 0 || len > 10)
		return -1;
	for (i = 0; i < len; i++)
		if (s[i] < '0' || s[i] > '9')
			return -1;
	*v = strtol(s, NULL, 10);
	return *v < min || *v > max ? -1 : 0;
}

/* A host name as SNI and certificate checks take it: LDH, dots, '_'. */
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

/* Takes a FILE so that the unit test can read what --help prints. */
static void
options_help(FILE *f)
{
	size_t	 i;

	options_usage(f);
	fputc('\n', f);
	for (i = 0; i < NOPTS; i++)
		help_entry(f, &opts[i]);
	fputc('\n', f);
	put_words(f, "ADDR is an IPv4 address or a bracketed IPv6 address "
	    "such as [::1].", 0, 0);
	fputc('\n', f);
	put_words(f, "At least one --bind-udp or --bind-tcp and one "
	    "--connect-tls or --connect-tcp are required.", 0, 0);
	fputc('\n', f);
}

/* "usage: dnsfwd [--name VALUE] ...", wrapped under the first option. */
static void
options_usage(FILE *f)
{
	static const char lead[] = "usage: dnsfwd ";
	char	 item[96];
	size_t	 i, col = sizeof(lead) - 1;

	fputs(lead, f);
	for (i = 0; i < NOPTS; i++) {
		snprintf(item, sizeof(item), "[--%s%s%s%s]", opts[i].od_name,
		    opts[i].od_metavar != NULL ? " " : "",
		    opts[i].od_metavar != NULL ? opts[i].od_metavar : "",
		    opts[i].od_many ? " ..." : "");
		/* An option and its value are never broken apart. */
		col = put_word(f, item, strlen(item), col, sizeof(lead) - 1);
	}
	fputc('\n', f);
}

/* "  --name VALUE" then the sentence, at HELP_COL, and the default. */
static void
help_entry(FILE *f, const struct optdef *od)
{
	char	 dflt[128];
	int	 n;
	size_t	 col;

	n = fprintf(f, "  --%s%s%s", od->od_name,
	    od->od_metavar != NULL ? " " : "",
	    od->od_metavar != NULL ? od->od_metavar : "");
	col = n > 0 ? (size_t)n : 0;
	/* Two spaces at least, so the value never runs into the sentence. */
	if (col + 2 > HELP_COL) {
		fputc('\n', f);
		col = 0;
	}
	fprintf(f, "%*s", (int)(HELP_COL - col), "");
	col = put_words(f, od->od_help, HELP_COL, HELP_COL);
	if (od->od_default != NULL) {
		snprintf(dflt, sizeof(dflt), "(default %s)", od->od_default);
		(void)put_word(f, dflt, strlen(dflt), col, HELP_COL);
	}
	fputc('\n', f);
}

/*
 * Prints the len bytes of w at column col, after a space unless col is
 * the start of a line indented by indent, or at the start of a new one
 * when it would reach WRAP_COL; returns the column reached.
 */
static size_t
put_word(FILE *f, const char *w, size_t len, size_t col, size_t indent)
{
	if (col > indent && col + 1 + len >= WRAP_COL) {
		fprintf(f, "\n%*s", (int)indent, "");
		col = indent;
	}
	if (col > indent) {
		fputc(' ', f);
		col++;
	}
	fprintf(f, "%.*s", (int)len, w);
	return col + len;
}

/* put_word for each word of s. */
static size_t
put_words(FILE *f, const char *s, size_t col, size_t indent)
{
	size_t	 len;

	for (;;) {
		s += strspn(s, " ");
		if ((len = strcspn(s, " ")) == 0)
			return col;
		col = put_word(f, s, len, col, indent);
		s += len;
	}
}

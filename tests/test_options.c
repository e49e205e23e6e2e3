/*
 * Unit tests of options.c.  First the three places an option is described
 * must agree: opts[], the --help that options_help prints from it, and
 * dnsfwd.8 (its OPTIONS list and its SYNOPSIS), by name, by argument and
 * by default; dnsfwd.8 is read from the current directory, the top of the
 * tree.  Then options_parse itself: bad command lines run in a child,
 * since they exit, and must exit 2 with one exact line on stderr; good
 * ones run here and are checked field by field.  options.c is included
 * so that opts[] and options_help can be reached.
 */
#include "../options.c"

#include <sys/wait.h>

#include <arpa/inet.h>
#include <stdio.h>
#include <strings.h>
#include <unistd.h>

#include "check.h"

/* One option as a document shows it. */
struct doc {
	char	 d_name[32];
	char	 d_arg[96];	/* its argument, plainly; "" for a flag */
	char	 d_dflt[128];	/* the default it states, or "" */
};

#define DOCS_MAX	64
struct docs {
	struct doc	 ds_doc[DOCS_MAX];
	int		 ds_n;
};

/* The SYNOPSIS lists some options twice; each occurrence counts. */
static struct docs	 man_opts, man_syn, help_opts, usage_opts;
/* options_parse's output; global so that LSan sees what it points to. */
static struct config	 cf;

#define ARGV(...)	((char *[]){ "dnsfwd", __VA_ARGS__, NULL })
#define LISTENER	"--bind-udp", "127.0.0.1:5353"
#define UPSTREAM	"--connect-tcp", "127.0.0.1:9"
#define PIN		"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="

static struct doc	*docs_add(struct docs *);
static const struct doc	*docs_find(const struct docs *, const char *, int);
static const struct optdef *table_find(const char *);
static void	 append(char *, size_t, const char *);
static int	 mdoc_flag(const char *, struct doc *);
static void	 mdoc_default(const char *, struct doc *);
static void	 read_man(const char *);
static void	 man_synopsis_line(const char *);
static void	 man_item_line(const char *, struct doc **, int *);
static void	 read_help(void);
static void	 help_usage(const char *);
static void	 help_entries(char *);
static void	 check_table(void);
static void	 check_help(const struct optdef *);
static void	 check_man(const struct optdef *);
static void	 check_known(const struct docs *, const char *);
static void	 read_all(FILE *, char *, size_t);
static int	 run_child(char **, char *, size_t, char *, size_t);
static int	 argc_of(char **);
static void	 expect_usage(char **, const char *);
static void	 test_bad(void);
static void	 test_ranges(void);
static void	 test_defaults(void);
static void	 test_flags(void);
static int	 is_addr4(const union sockaddr_any *, const char *, int);
static int	 is_addr6(const union sockaddr_any *, const char *, int);
static void	 test_addresses(void);
static void	 test_help_version(void);

#define CHECK_OPT(cond, name) do {					\
	if (!(cond))							\
		fprintf(stderr, "option --%s:\n", (name));		\
	CHECK(cond);							\
} while (0)

static struct doc *
docs_add(struct docs *ds)
{
	if (ds->ds_n == DOCS_MAX)
		return NULL;
	return &ds->ds_doc[ds->ds_n++];
}

/* The nth occurrence of name, or NULL. */
static const struct doc *
docs_find(const struct docs *ds, const char *name, int nth)
{
	int	 i;

	for (i = 0; i < ds->ds_n; i++)
		if (strcmp(ds->ds_doc[i].d_name, name) == 0 && nth-- == 0)
			return &ds->ds_doc[i];
	return NULL;
}

static const struct optdef *
table_find(const char *name)
{
	size_t	 i;

	for (i = 0; i < NOPTS; i++)
		if (strcmp(opts[i].od_name, name) == 0)
			return &opts[i];
	return NULL;
}

static void
append(char *buf, size_t len, const char *s)
{
	size_t	 n = strlen(buf);

	snprintf(buf + n, len - n, "%s", s);
}

/*
 * The first "Fl \-name ..." of an mdoc line into d: the name, and the
 * argument after it written plainly, as "addr[:port]" for
 * "Ar addr Ns Op : Ns Ar port".  Returns 0 when the line has none.
 */
static int
mdoc_flag(const char *line, struct doc *d)
{
	char	 buf[512], *tok, *save = NULL;
	int	 seen = 0, opens = 0;

	snprintf(buf, sizeof(buf), "%s", line);
	memset(d, 0, sizeof(*d));
	for (tok = strtok_r(buf, " ", &save); tok != NULL;
	    tok = strtok_r(NULL, " ", &save)) {
		/* The line's own macro: ".Op" is "Op", "..." stays. */
		tok += tok == buf && tok[0] == '.';
		if (!seen) {
			if (strcmp(tok, "Fl") == 0 &&
			    (tok = strtok_r(NULL, " ", &save)) != NULL &&
			    strncmp(tok, "\\-", 2) == 0) {
				snprintf(d->d_name, sizeof(d->d_name), "%s",
				    tok + 2);
				seen = 1;
			}
			continue;
		}
		if (strcmp(tok, "Fl") == 0)
			break;
		if (strcmp(tok, "Op") == 0)
			opens++;
		if (strcmp(tok, "Op") == 0 || strcmp(tok, "Oo") == 0)
			append(d->d_arg, sizeof(d->d_arg), "[");
		else if (strcmp(tok, "Oc") == 0)
			append(d->d_arg, sizeof(d->d_arg), "]");
		else if (strcmp(tok, "Ar") && strcmp(tok, "Cm") &&
		    strcmp(tok, "Ns") && strcmp(tok, "...") != 0)
			append(d->d_arg, sizeof(d->d_arg), tok);
	}
	/* "Fl \-a | Fl \-b": the bar is between flags, not in a value. */
	if (d->d_arg[0] != '\0' && d->d_arg[strlen(d->d_arg) - 1] == '|')
		d->d_arg[strlen(d->d_arg) - 1] = '\0';
	/* Op closes at the end of its line. */
	while (opens-- > 0)
		append(d->d_arg, sizeof(d->d_arg), "]");
	return seen;
}

/*
 * The value of "The default is VALUE." (or "VALUE: meaning."), VALUE
 * plain or the argument of a macro such as ".Pa".
 */
static void
mdoc_default(const char *s, struct doc *d)
{
	if (s[0] == '.')
		s += strcspn(s, " ");
	s += strspn(s, " ");
	snprintf(d->d_dflt, sizeof(d->d_dflt), "%.*s", (int)strcspn(s, " :"),
	    s);
	if (d->d_dflt[0] != '\0' && d->d_dflt[strlen(d->d_dflt) - 1] == '.')
		d->d_dflt[strlen(d->d_dflt) - 1] = '\0';
}

/*
 * Collects the options in the SYNOPSIS, and the items of the first list
 * in DESCRIPTION, the options list, with the default each states.
 */
static void
read_man(const char *path)
{
	FILE		*f = fopen(path, "r");
	char		 line[512], sect[512] = "";
	struct doc	*cur = NULL;
	int		 depth = 0, done = 0, want_dflt = 0;

	CHECK(f != NULL);
	if (f == NULL)
		return;
	while (fgets(line, sizeof(line), f) != NULL) {
		line[strcspn(line, "\n")] = '\0';
		if (strncmp(line, ".Sh ", 4) == 0) {
			snprintf(sect, sizeof(sect), "%s", line + 4);
			continue;
		}
		if (strcmp(sect, "SYNOPSIS") == 0)
			man_synopsis_line(line);
		if (strcmp(sect, "DESCRIPTION") != 0 || done)
			continue;
		if (strncmp(line, ".Bl ", 4) == 0)
			depth++;
		else if (strncmp(line, ".El", 3) == 0 && --depth == 0)
			done = 1;
		else if (depth == 1)
			man_item_line(line, &cur, &want_dflt);
	}
	fclose(f);
}

/* Every flag of a SYNOPSIS line, with its argument. */
static void
man_synopsis_line(const char *line)
{
	const char	*p = line;
	struct doc	*d;

	while ((p = strstr(p, "Fl \\-")) != NULL &&
	    (d = docs_add(&man_syn)) != NULL) {
		CHECK(mdoc_flag(p, d));
		p += 3;
	}
}

/* One line of the options list: an item, or its text. */
static void
man_item_line(const char *line, struct doc **cur, int *want_dflt)
{
	const char	*p;

	if (strncmp(line, ".It ", 4) == 0) {
		*cur = docs_add(&man_opts);
		if (*cur != NULL)
			CHECK(mdoc_flag(line, *cur));
		*want_dflt = 0;
		return;
	}
	if (*cur == NULL)
		return;
	if (*want_dflt) {
		mdoc_default(line, *cur);
		*want_dflt = 0;
	} else if ((p = strstr(line, "The default is")) != NULL) {
		p += strlen("The default is");
		if (p[strspn(p, " ")] == '\0')
			*want_dflt = 1;
		else
			mdoc_default(p, *cur);
	}
}

/* What options_help prints, cut into the usage line and the entries. */
static void
read_help(void)
{
	char	*buf = NULL, *blank;
	size_t	 len = 0;
	FILE	*f = open_memstream(&buf, &len);

	CHECK(f != NULL);
	if (f == NULL)
		return;
	options_help(f);
	fclose(f);
	CHECK(strncmp(buf, "usage: dnsfwd ", 14) == 0);
	if ((blank = strstr(buf, "\n\n")) != NULL) {
		blank[1] = '\0';
		help_usage(buf);
		help_entries(blank + 2);
	}
	CHECK(blank != NULL);
	free(buf);
}

/* Each "[--name VALUE]" or "[--name VALUE ...]" of the usage lines. */
static void
help_usage(const char *s)
{
	struct doc	*d;
	const char	*p = s;
	size_t		 n;
	int		 depth;

	while ((p = strstr(p, "[--")) != NULL && (d = docs_add(&usage_opts))) {
		p += 3;
		n = strcspn(p, " ]");
		snprintf(d->d_name, sizeof(d->d_name), "%.*s", (int)n, p);
		p += n;
		if (*p++ != ' ' || strncmp(p, "...]", 4) == 0)
			continue;
		/* The value has brackets of its own: "ADDR[:PORT]". */
		for (n = 0, depth = 0; p[n] != '\0' && p[n] != '\n'; n++) {
			if (p[n] == '[')
				depth++;
			else if (p[n] == ']' && depth-- == 0)
				break;
			else if (depth == 0 && strncmp(p + n, " ...]", 5) == 0)
				break;
		}
		snprintf(d->d_arg, sizeof(d->d_arg), "%.*s", (int)n, p);
		p += n;
	}
}

/*
 * Entries start "  --name VALUE", two spaces or a new line before the
 * sentence; lines indented further go on with the sentence.  The first
 * line that is neither ends the entries.
 */
static void
help_entries(char *s)
{
	char		*line, *save = NULL, *sp, text[1024] = "";
	struct doc	*d = NULL;
	size_t		 n;

	for (line = strtok_r(s, "\n", &save); line != NULL;
	    line = strtok_r(NULL, "\n", &save)) {
		if (strncmp(line, "  --", 4) == 0) {
			if ((d = docs_add(&help_opts)) == NULL)
				break;
			line += 4;
			n = strcspn(line, " ");
			snprintf(d->d_name, sizeof(d->d_name), "%.*s", (int)n,
			    line);
			/* One space: a value follows; two: the sentence. */
			if (line[n] == ' ' && line[n + 1] != ' ') {
				line += n + 1;
				sp = strstr(line, "  ");
				n = sp != NULL ? (size_t)(sp - line) :
				    strlen(line);
				snprintf(d->d_arg, sizeof(d->d_arg), "%.*s",
				    (int)n, line);
			}
			text[0] = '\0';
		} else if (d == NULL || strncmp(line, "    ", 4) != 0)
			break;
		append(text, sizeof(text), " ");
		append(text, sizeof(text), line);
		if ((sp = strstr(text, "(default ")) != NULL)
			snprintf(d->d_dflt, sizeof(d->d_dflt), "%.*s",
			    (int)strcspn(sp + 9, ")"), sp + 9);
	}
}

/* opts[] is well formed: unique names, sane ranges, flags with none. */
static void
check_table(void)
{
	size_t	 i;

	for (i = 0; i < NOPTS; i++) {
		CHECK_OPT(table_find(opts[i].od_name) == &opts[i],
		    opts[i].od_name);
		CHECK_OPT(opts[i].od_help != NULL && opts[i].od_set != NULL,
		    opts[i].od_name);
		if (opts[i].od_set == opt_num)
			CHECK_OPT(opts[i].od_min <= opts[i].od_max &&
			    opts[i].od_metavar != NULL, opts[i].od_name);
		if (opts[i].od_metavar == NULL)
			CHECK_OPT(opts[i].od_default == NULL,
			    opts[i].od_name);
	}
}

/* The option is in --help and its usage line, as opts[] has it. */
static void
check_help(const struct optdef *od)
{
	const char	*mv = od->od_metavar ? od->od_metavar : "";
	const char	*dflt = od->od_default ? od->od_default : "";
	const struct doc *d;

	d = docs_find(&help_opts, od->od_name, 0);
	CHECK_OPT(d != NULL && docs_find(&help_opts, od->od_name, 1) == NULL,
	    od->od_name);
	if (d != NULL) {
		CHECK_OPT(strcmp(d->d_arg, mv) == 0, od->od_name);
		CHECK_OPT(strcmp(d->d_dflt, dflt) == 0, od->od_name);
	}
	d = docs_find(&usage_opts, od->od_name, 0);
	CHECK_OPT(d != NULL && strcmp(d->d_arg, mv) == 0, od->od_name);
}

/*
 * The option is in the OPTIONS list of dnsfwd.8 once, with the same
 * argument (letter case aside) and the same default, and every time the
 * SYNOPSIS names it, it has that argument too.
 */
static void
check_man(const struct optdef *od)
{
	const char	*mv = od->od_metavar ? od->od_metavar : "";
	const char	*dflt = od->od_default ? od->od_default : "";
	const struct doc *d;
	int		 i;

	d = docs_find(&man_opts, od->od_name, 0);
	CHECK_OPT(d != NULL && docs_find(&man_opts, od->od_name, 1) == NULL,
	    od->od_name);
	if (d != NULL) {
		CHECK_OPT(strcasecmp(d->d_arg, mv) == 0, od->od_name);
		CHECK_OPT(strcmp(d->d_dflt, dflt) == 0, od->od_name);
	}
	CHECK_OPT(docs_find(&man_syn, od->od_name, 0) != NULL, od->od_name);
	for (i = 0; (d = docs_find(&man_syn, od->od_name, i)) != NULL; i++)
		CHECK_OPT(strcasecmp(d->d_arg, mv) == 0, od->od_name);
}

/* Everything a document describes is an option of opts[]. */
static void
check_known(const struct docs *ds, const char *where)
{
	int	 i;

	CHECK(ds->ds_n > 0 && ds->ds_n < DOCS_MAX);
	for (i = 0; i < ds->ds_n; i++) {
		if (table_find(ds->ds_doc[i].d_name) == NULL)
			fprintf(stderr, "%s: --%s is not in opts[]\n", where,
			    ds->ds_doc[i].d_name);
		CHECK(table_find(ds->ds_doc[i].d_name) != NULL);
	}
}

static int
argc_of(char **argv)
{
	int	 n = 0;

	while (argv[n] != NULL)
		n++;
	return n;
}

static void
read_all(FILE *f, char *buf, size_t len)
{
	size_t	 n;

	rewind(f);
	n = fread(buf, 1, len - 1, f);
	buf[n] = '\0';
	fclose(f);
}

/*
 * Runs options_parse on argv in a child, whose stdout and stderr go into
 * out and err; returns its exit status (0 when options_parse returned).
 */
static int
run_child(char **argv, char *out, size_t outlen, char *err, size_t errlen)
{
	FILE	*fo = tmpfile(), *fe = tmpfile();
	pid_t	 pid;
	int	 st;

	if (fo == NULL || fe == NULL)
		fatal(1, "tmpfile");
	fflush(stdout);
	fflush(stderr);
	if ((pid = fork()) == -1)
		fatal(1, "fork");
	if (pid == 0) {
		dup2(fileno(fo), STDOUT_FILENO);
		dup2(fileno(fe), STDERR_FILENO);
		options_parse(argc_of(argv), argv, &cf);
		options_free(&cf);
		exit(0);
	}
	if (waitpid(pid, &st, 0) == -1)
		fatal(1, "waitpid");
	read_all(fo, out, outlen);
	read_all(fe, err, errlen);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* The command line exits 2 with this one line, and nothing on stdout. */
static void
expect_usage(char **argv, const char *msg)
{
	char	 out[256], err[512], want[512];
	int	 rc;

	rc = run_child(argv, out, sizeof(out), err, sizeof(err));
	snprintf(want, sizeof(want), "dnsfwd: %s (see --help)\n", msg);
	if (rc != EXIT_USAGE || strcmp(err, want) != 0 || out[0] != '\0')
		fprintf(stderr, "want exit 2, %sgot exit %d, %s", want, rc,
		    err);
	CHECK(rc == EXIT_USAGE);
	CHECK(strcmp(err, want) == 0);
	CHECK(out[0] == '\0');
}

static void
test_bad(void)
{
	expect_usage(ARGV(LISTENER, UPSTREAM, "--connections", "x"),
	    "--connections: invalid value 'x' (want 1 to 16)");
	expect_usage(ARGV(LISTENER, UPSTREAM, "--connections", "17"),
	    "--connections: invalid value '17' (want 1 to 16)");
	expect_usage(ARGV(LISTENER, UPSTREAM, "--timeout=abc"),
	    "--timeout: invalid value 'abc' (want 10 to 60000)");
	expect_usage(ARGV(LISTENER, UPSTREAM, "--neg-max-ttl", ""),
	    "--neg-max-ttl: invalid value '' (want 1 to 604800)");
	expect_usage(ARGV(LISTENER, UPSTREAM, "--x"), "unknown option '--x'");
	expect_usage(ARGV(LISTENER, UPSTREAM, "-q"), "unknown option '-q'");
	expect_usage(ARGV(LISTENER, UPSTREAM, "--prefetch=yes"),
	    "--prefetch: takes no value");
	expect_usage(ARGV(LISTENER, UPSTREAM, "--keep-ecs=1"),
	    "--keep-ecs: takes no value");
	expect_usage(ARGV(UPSTREAM, "--bind-udp"), "--bind-udp: missing value");
	/* An abbreviation is named as opts[] spells it. */
	expect_usage(ARGV(LISTENER, UPSTREAM, "--time"),
	    "--timeout: missing value");
	expect_usage(ARGV(LISTENER, "--pin-sha256", PIN, UPSTREAM),
	    "--pin-sha256: must follow a --connect-tls");
	expect_usage(ARGV(LISTENER, "--connect-tls", "127.0.0.1#dns.test",
	    "--pin-sha256", "abc"), "--pin-sha256: invalid value 'abc' "
	    "(want the base64 of a SHA-256 hash)");
	expect_usage(ARGV(UPSTREAM), "no listener: give --bind-udp or "
	    "--bind-tcp");
	expect_usage(ARGV(LISTENER), "no upstream: give --connect-tls or "
	    "--connect-tcp");
	expect_usage(ARGV(LISTENER, UPSTREAM, "--min-ttl", "600", "--max-ttl",
	    "60"), "--min-ttl: 600 is above --max-ttl 60");
	expect_usage(ARGV(LISTENER, "--connect-tls", "127.0.0.1:853"),
	    "--connect-tls: 127.0.0.1:853 has neither #NAME nor --pin-sha256, "
	    "so it could not be authenticated");
	expect_usage(ARGV(LISTENER, UPSTREAM, "stray"),
	    "unexpected argument 'stray'");
	expect_usage(ARGV(LISTENER, UPSTREAM, "--log-level", "loud"),
	    "--log-level: invalid value 'loud'");
	expect_usage(ARGV("--bind-udp", "300.1.2.3:53", UPSTREAM),
	    "--bind-udp: invalid address '300.1.2.3:53'");
	expect_usage(ARGV("--bind-tcp", "[::1:53", UPSTREAM),
	    "--bind-tcp: invalid address '[::1:53'");
	expect_usage(ARGV(LISTENER, "--connect-tcp", "127.0.0.1:x"),
	    "--connect-tcp: invalid address '127.0.0.1:x'");
	expect_usage(ARGV(LISTENER, "--connect-tcp", "127.0.0.1#dns.test"),
	    "--connect-tcp: a name needs --connect-tls: '127.0.0.1#dns.test'");
	expect_usage(ARGV(LISTENER, "--connect-tls", "127.0.0.1#bad name"),
	    "--connect-tls: invalid name in '127.0.0.1#bad name'");
}

/*
 * Every number option takes its minimum and its maximum and refuses one
 * past either.  --max-ttl comes first at its maximum so that --min-ttl
 * may reach its own.
 */
static void
test_ranges(void)
{
	char	 val[2][16], bad[2][16], msg[160];
	size_t	 i;
	int	 j;

	for (i = 0; i < NOPTS; i++) {
		const struct optdef *od = &opts[i];
		char flag[40];

		if (od->od_set != opt_num)
			continue;
		snprintf(flag, sizeof(flag), "--%s", od->od_name);
		snprintf(val[0], sizeof(val[0]), "%d", od->od_min);
		snprintf(val[1], sizeof(val[1]), "%d", od->od_max);
		snprintf(bad[0], sizeof(bad[0]), "%d", od->od_min - 1);
		snprintf(bad[1], sizeof(bad[1]), "%d", od->od_max + 1);
		for (j = 0; j < 2; j++) {
			char **argv = ARGV(LISTENER, UPSTREAM, "--max-ttl",
			    "604800", flag, val[j]);

			options_parse(argc_of(argv), argv, &cf);
			CHECK_OPT(*(int *)cf_field(od, &cf) == atoi(val[j]),
			    od->od_name);
			options_free(&cf);
			snprintf(msg, sizeof(msg), "%s: invalid value '%s' "
			    "(want %d to %d)", flag, bad[j], od->od_min,
			    od->od_max);
			expect_usage(ARGV(LISTENER, UPSTREAM, flag, bad[j]),
			    msg);
		}
	}
}

/* What options_parse leaves where an option is not given. */
static void
test_defaults(void)
{
	char	**argv = ARGV(LISTENER, UPSTREAM);
	size_t	 i;

	options_parse(argc_of(argv), argv, &cf);
	for (i = 0; i < NOPTS; i++)
		if (opts[i].od_set == opt_num)
			CHECK_OPT(*(int *)cf_field(&opts[i], &cf) ==
			    atoi(opts[i].od_default), opts[i].od_name);
	CHECK(cf.cf_connections == 8 && cf.cf_timeout_ms == 2000);
	CHECK(strcmp(cf.cf_ca_file, "/etc/ssl/certs/ca-certificates.crt") == 0);
	CHECK(cf.cf_log_level == LOG_LVL_INFO);
	CHECK(cf.cf_prefetch == 0 && cf.cf_keep_ecs == 0);
	CHECK(cf.cf_nudp == 1 && cf.cf_ntcp == 0 && cf.cf_nup == 1);
	CHECK(cf.cf_up[0].uc_tls == 0 && cf.cf_up[0].uc_name == NULL);
	options_free(&cf);
}

static void
test_flags(void)
{
	char	**argv = ARGV(LISTENER, UPSTREAM, "--keep-ecs");

	options_parse(argc_of(argv), argv, &cf);
	CHECK(cf.cf_keep_ecs == 1 && cf.cf_prefetch == 0);
	argv = ARGV(LISTENER, UPSTREAM, "--prefetch", "--timeout=500",
	    "--log-level", "debug", "--ca-file", "/tmp/ca.pem");
	options_parse(argc_of(argv), argv, &cf);
	CHECK(cf.cf_keep_ecs == 0 && cf.cf_prefetch == 1);
	CHECK(cf.cf_timeout_ms == 500 && cf.cf_log_level == LOG_LVL_DEBUG);
	CHECK(strcmp(cf.cf_ca_file, "/tmp/ca.pem") == 0);
	options_free(&cf);
}

static int
is_addr6(const union sockaddr_any *sa, const char *host, int port)
{
	struct in6_addr	 a;

	return sa->sa.sa_family == AF_INET6 &&
	    inet_pton(AF_INET6, host, &a) == 1 &&
	    memcmp(&a, &sa->sin6.sin6_addr, sizeof(a)) == 0 &&
	    ntohs(sa->sin6.sin6_port) == port;
}

static int
is_addr4(const union sockaddr_any *sa, const char *host, int port)
{
	struct in_addr	 a;

	return sa->sa.sa_family == AF_INET && inet_pton(AF_INET, host, &a) == 1
	    && a.s_addr == sa->sin.sin_addr.s_addr &&
	    ntohs(sa->sin.sin_port) == port;
}

/* Ports default to 53, 853 for TLS; IPv6 in brackets; pins bind back. */
static void
test_addresses(void)
{
	char	**argv = ARGV("--bind-udp", "[::1]:5353", "--bind-tcp", "[::1]",
	    "--connect-tls", "[2001:db8::1]#dns.test", "--connect-tls",
	    "[2001:db8::2]:8853", "--pin-sha256", PIN, "--pin-sha256", PIN);
	uint8_t	  pin[32];
	int	  i;

	for (i = 0; i < 32; i++)
		pin[i] = (uint8_t)i;
	options_parse(argc_of(argv), argv, &cf);
	CHECK(cf.cf_nudp == 1 && is_addr6(&cf.cf_udp[0], "::1", 5353));
	CHECK(cf.cf_ntcp == 1 && is_addr6(&cf.cf_tcp[0], "::1", 53));
	CHECK(cf.cf_nup == 2 && cf.cf_up[0].uc_tls && cf.cf_up[1].uc_tls);
	CHECK(is_addr6(&cf.cf_up[0].uc_addr, "2001:db8::1", 853));
	CHECK(cf.cf_up[0].uc_addrlen == sizeof(struct sockaddr_in6));
	CHECK(strcmp(cf.cf_up[0].uc_name, "dns.test") == 0);
	CHECK(is_addr6(&cf.cf_up[1].uc_addr, "2001:db8::2", 8853));
	CHECK(cf.cf_up[1].uc_name == NULL);
	CHECK(cf.cf_up[0].uc_npins == 0 && cf.cf_up[1].uc_npins == 2);
	CHECK(memcmp(cf.cf_up[1].uc_pins[1], pin, 32) == 0);
	options_free(&cf);
	CHECK(cf.cf_up[0].uc_name == NULL);

	argv = ARGV("--bind-udp", "127.0.0.3", "--connect-tls",
	    "127.0.0.2#dns.test", "--connect-tcp", "127.0.0.1");
	options_parse(argc_of(argv), argv, &cf);
	CHECK(is_addr4(&cf.cf_udp[0], "127.0.0.3", 53));
	CHECK(is_addr4(&cf.cf_up[0].uc_addr, "127.0.0.2", 853));
	CHECK(cf.cf_up[0].uc_addrlen == sizeof(struct sockaddr_in));
	CHECK(is_addr4(&cf.cf_up[1].uc_addr, "127.0.0.1", 53));
	CHECK(cf.cf_up[1].uc_tls == 0);
	options_free(&cf);

	expect_usage(ARGV(UPSTREAM, "--bind-tcp", "127.0.0.1:1", "--bind-tcp",
	    "127.0.0.1:2", "--bind-tcp", "127.0.0.1:3", "--bind-tcp",
	    "127.0.0.1:4", "--bind-tcp", "127.0.0.1:5", "--bind-tcp",
	    "127.0.0.1:6", "--bind-tcp", "127.0.0.1:7", "--bind-tcp",
	    "127.0.0.1:8", "--bind-tcp", "127.0.0.1:9"),
	    "--bind-tcp: at most 8 addresses");
}

static void
test_help_version(void)
{
	char	 out[8192], err[256], want[64];

	CHECK(run_child(ARGV("--help"), out, sizeof(out), err,
	    sizeof(err)) == 0);
	CHECK(strncmp(out, "usage: dnsfwd ", 14) == 0 && err[0] == '\0');
	CHECK(strstr(out, "  --keep-ecs ") != NULL);
	CHECK(run_child(ARGV("--version"), out, sizeof(out), err,
	    sizeof(err)) == 0);
	snprintf(want, sizeof(want), "dnsfwd %s (", DNSFWD_VERSION);
	CHECK(strncmp(out, want, strlen(want)) == 0 && err[0] == '\0');
	CHECK(strstr(out, ", libev ") != NULL);
}

int
main(void)
{
	size_t	 i;

	read_man("dnsfwd.8");
	read_help();
	check_table();
	for (i = 0; i < NOPTS; i++) {
		check_help(&opts[i]);
		check_man(&opts[i]);
	}
	check_known(&man_opts, "dnsfwd.8 OPTIONS");
	check_known(&man_syn, "dnsfwd.8 SYNOPSIS");
	check_known(&help_opts, "--help");
	check_known(&usage_opts, "the usage line");
	test_bad();
	test_ranges();
	test_defaults();
	test_flags();
	test_addresses();
	test_help_version();
	return check_done("test_options");
}

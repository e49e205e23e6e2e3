/*
 * libFuzzer target: the command line parser, options_parse (options.c,
 * linked as it is, with log.c and util.c).
 *
 * Input: the argument words after argv[0], each ended by a NUL byte (a
 * last word without one counts too); at most 64 words.  options.c exits
 * on a usage error, --help and --version: the target links with
 * -Wl,--wrap=exit, and __wrap_exit longjmps back here while a parse is
 * under way (and is exit otherwise, for libFuzzer's own use).  While
 * parsing, stdout and stderr point at /dev/null, so usage messages and
 * --help go nowhere; libFuzzer and the sanitizers write to descriptor 2
 * themselves and are not affected.  LISTEN_PID and LISTEN_FDS are unset,
 * so no sockets count as passed.
 *
 * Invariants (abort on failure), when options_parse returns: every
 * count within its limit (listeners, upstreams, pins, --allow), every
 * number within the range dnsfwd.8 gives it, --min-ttl at most
 * --max-ttl, flags 0 or 1, a listener unless --check, an upstream,
 * every address of a family with its length and a port, a name only on
 * a TLS upstream and only of letters, digits, '-', '_' and '.', every
 * TLS upstream with a name or a pin, pins only on TLS upstreams, every
 * --allow prefix within its family's length with no host bit set, a log
 * level that exists.  On an exit: the status is 0 only for --help or
 * --version and EXIT_USAGE otherwise (EXIT_SETUP only if strdup
 * failed).  No leak (the names options_parse allocates are freed with
 * options_free, and after an exit by hand).
 *
 * Seeds: fuzz/corpus/options, made by fuzz/mkcorpus.py.
 */
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../options.h"
#include "fuzz.h"

struct stats	 stats;

static jmp_buf	 back;
static int	 parsing, status;
static FILE	*devnull;

void	__real_exit(int) __attribute__((__noreturn__));
void	__wrap_exit(int) __attribute__((__noreturn__));

void
__wrap_exit(int code)
{
	if (parsing) {
		parsing = 0;
		status = code;
		longjmp(back, 1);
	}
	__real_exit(code);
}

/* Host bits of an --allow network are cleared. */
static void
check_allow(const struct allow *al)
{
	int	 max = al->al_family == AF_INET6 ? 128 : 32, i;

	FZ_CHECK(al->al_family == AF_INET || al->al_family == AF_INET6);
	FZ_CHECK(al->al_plen >= 0 && al->al_plen <= max);
	for (i = 0; i < 16; i++) {
		int	 keep = al->al_plen - 8 * i;
		uint8_t	 mask = keep >= 8 ? 0xff : keep <= 0 ? 0 :
			    (uint8_t)(0xff << (8 - keep));

		if (i >= max / 8)
			mask = 0;
		if (al->al_family == AF_INET && i >= 4)
			continue;	/* inet_pton wrote 4 bytes only */
		FZ_CHECK((al->al_addr[i] & ~mask) == 0);
	}
}

static void
check_sa(const union sockaddr_any *sa)
{
	FZ_CHECK(sa->sa.sa_family == AF_INET || sa->sa.sa_family == AF_INET6);
	if (sa->sa.sa_family == AF_INET)
		FZ_CHECK(sa->sin.sin_port != 0);
	else
		FZ_CHECK(sa->sin6.sin6_port != 0);
}

static void
check_name(const char *s)
{
	size_t	 i, len = strlen(s);

	FZ_CHECK(len > 0 && len <= 253);
	for (i = 0; i < len; i++)
		FZ_CHECK(s[i] == '.' || s[i] == '-' || s[i] == '_' ||
		    (s[i] >= '0' && s[i] <= '9') ||
		    (s[i] >= 'a' && s[i] <= 'z') ||
		    (s[i] >= 'A' && s[i] <= 'Z'));
}

#define RANGE(v, lo, hi)	FZ_CHECK((v) >= (lo) && (v) <= (hi))

static void
check_config(const struct config *cf)
{
	int	 i;

	RANGE(cf->cf_nudp, 0, LISTEN_MAX);
	RANGE(cf->cf_ntcp, 0, LISTEN_MAX);
	FZ_CHECK(cf->cf_nudp + cf->cf_ntcp > 0 || cf->cf_check);
	for (i = 0; i < cf->cf_nudp; i++)
		check_sa(&cf->cf_udp[i]);
	for (i = 0; i < cf->cf_ntcp; i++)
		check_sa(&cf->cf_tcp[i]);
	RANGE(cf->cf_nup, 1, UPSTREAMS_MAX);
	for (i = 0; i < cf->cf_nup; i++) {
		const struct upstream_cfg *uc = &cf->cf_up[i];

		check_sa(&uc->uc_addr);
		FZ_CHECK(uc->uc_addrlen == (uc->uc_addr.sa.sa_family ==
		    AF_INET6 ? sizeof(struct sockaddr_in6) :
		    sizeof(struct sockaddr_in)));
		FZ_CHECK(uc->uc_tls == 0 || uc->uc_tls == 1);
		RANGE(uc->uc_npins, 0, PINS_MAX);
		if (!uc->uc_tls)
			FZ_CHECK(uc->uc_name == NULL && uc->uc_npins == 0);
		else
			FZ_CHECK(uc->uc_name != NULL || uc->uc_npins > 0);
		if (uc->uc_name != NULL)
			check_name(uc->uc_name);
	}
	FZ_CHECK(cf->cf_ca_file != NULL);
	RANGE(cf->cf_connections, 1, 16);
	RANGE(cf->cf_max_inflight, 1, 4096);
	RANGE(cf->cf_timeout_ms, 10, 60000);
	RANGE(cf->cf_idle_timeout_s, 1, 3600);
	RANGE(cf->cf_cache_size, 0, 1000000);
	RANGE(cf->cf_min_ttl, 0, 604800);
	RANGE(cf->cf_max_ttl, 1, 604800);
	RANGE(cf->cf_neg_max_ttl, 1, 604800);
	FZ_CHECK(cf->cf_min_ttl <= cf->cf_max_ttl);
	RANGE(cf->cf_serve_stale, 0, 604800);
	RANGE(cf->cf_prefetch, 0, 1);
	RANGE(cf->cf_keep_ecs, 0, 1);
	RANGE(cf->cf_no_resume, 0, 1);
	RANGE(cf->cf_prewarm, 0, 1);
	RANGE(cf->cf_check, 0, 1);
	RANGE(cf->cf_nallow, 0, ALLOW_MAX);
	for (i = 0; i < cf->cf_nallow; i++)
		check_allow(&cf->cf_allow[i]);
	RANGE((int)cf->cf_log_level, LOG_LVL_ERROR, LOG_LVL_DEBUG);
}

/* options_free frees the counted names; a name not yet counted too. */
static void
free_names(struct config *cf)
{
	int	 i;

	options_free(cf);
	for (i = 0; i < UPSTREAMS_MAX; i++) {
		free(cf->cf_up[i].uc_name);
		cf->cf_up[i].uc_name = NULL;
	}
}

int	LLVMFuzzerTestOneInput(const uint8_t *, size_t);
int	LLVMFuzzerInitialize(int *, char ***);

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	unsetenv("LISTEN_PID");
	unsetenv("LISTEN_FDS");
	if ((devnull = fopen("/dev/null", "w")) == NULL)
		abort();
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct config cf;
	char		*words, *argv[66];
	FILE		*out = stdout, *err = stderr;
	size_t		 i, start;
	int		 argc = 1, helpish = 0;
	volatile int	 exited;

	if ((words = malloc(size + 1)) == NULL)
		abort();
	memcpy(words, data, size);
	words[size] = '\0';
	argv[0] = (char *)"dnsfwd";
	for (start = 0, i = 0; i <= size && argc < 65; i++) {
		if (i < size && words[i] != '\0')
			continue;
		if (i > start || i < size)
			argv[argc++] = words + start;
		start = i + 1;
	}
	argv[argc] = NULL;
	for (i = 1; i < (size_t)argc; i++)
		helpish |= strncmp(argv[i], "--h", 3) == 0 ||
		    strncmp(argv[i], "--v", 3) == 0;
	memset(&cf, 0, sizeof(cf));
	stdout = devnull;
	stderr = devnull;
	exited = 0;
	status = -1;
	if (setjmp(back) == 0) {
		parsing = 1;
		options_parse(argc, argv, &cf);
		parsing = 0;
	} else
		exited = 1;
	stdout = out;
	stderr = err;
	if (!exited)
		check_config(&cf);
	else if (status == 0)
		FZ_CHECK(helpish);
	else
		FZ_CHECK(status == EXIT_USAGE);
	free_names(&cf);
	free(words);
	return 0;
}

/*
 * options.c: the command line, parsed once into a config that every
 * module reads and none writes.  The option table also feeds --help and
 * the man page check.
 */
#ifndef OPTIONS_H
#define OPTIONS_H

#include <stdint.h>

#include "log.h"
#include "util.h"

/* Listening sockets of each transport. */
#define LISTEN_MAX	8
/* --allow networks besides loopback. */
#define ALLOW_MAX	32
/* Upstreams (a bit each in netmon's masks) and SPKI pins per upstream. */
#define UPSTREAMS_MAX	8
#define PINS_MAX	8

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
	int		cf_no_fastopen;	/* --no-fastopen: no TFO cookies */
	int		cf_prewarm;
	struct allow	cf_allow[ALLOW_MAX];
	int		cf_nallow;
	const char	*cf_user;	/* --user, NULL: stay who we are */
	int		cf_check;	/* --check: validate and exit */
	enum log_level	cf_log_level;
};

/* Fills cf from the command line; usage errors exit EXIT_USAGE. */
void	options_parse(int, char **, struct config *);
void	options_free(struct config *);

#endif /* OPTIONS_H */

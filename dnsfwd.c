/*
 * dnsfwd: main, start-up, signals and shutdown.  The listeners (listen.c)
 * hand client messages to the query lifecycle (query.c), which answers
 * from the cache (cache.c) or sends upstream through the mux (mux.c,
 * tls.c); answers travel back by callback.
 *
 * Start-up is where the service meets its host: --check, the drop to
 * --user once the sockets are bound and the CA file read, and telling
 * systemd (Type=notify) that we are ready, stopping, and alive.
 */
#include <sys/socket.h>
#include <sys/un.h>

#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ev.h>

#include "cache.h"
#include "dnsfwd.h"
#include "listen.h"
#include "log.h"
#include "mux.h"
#include "netmon.h"
#include "options.h"
#include "query.h"
#include "tls.h"
#include "util.h"

/* How long a stopping daemon waits for answers still in flight. */
#define DRAIN_S		1.0
/* How often `systemctl status` learns what the daemon is doing. */
#define STATUS_S	5.0

struct stats	 stats;

static struct config	 cf;
static struct ev_loop	*loop;
static ev_signal	 sig_term, sig_int, sig_usr1;
static ev_timer		 drain_timer;
static ev_prepare	 drain_prep;
static ev_timer		 watchdog;
static ev_timer		 status_timer;
static int		 notify_fd = -1;
static struct passwd	*user;

static void	signal_cb(struct ev_loop *, ev_signal *, int);
static void	drain_check_cb(struct ev_loop *, ev_prepare *, int);
static void	drain_cb(struct ev_loop *, ev_timer *, int);
static void	log_stats(void);
static void	syserr_cb(const char *);
static void	start(void);
static void	teardown(void);
static void	check_only(void);
static void	load_ca(void);
static void	user_lookup(void);
static void	drop_privileges(void);
static void	notify_open(void);
static void	notify(const char *);
static void	watchdog_start(void);
static void	watchdog_cb(struct ev_loop *, ev_timer *, int);
static void	status_cb(struct ev_loop *, ev_timer *, int);

static void
signal_cb(struct ev_loop *l, ev_signal *w, int revents)
{
	(void)l;
	(void)revents;
	if (w->signum == SIGUSR1) {
		log_stats();
		return;
	}
	if (ev_is_active(&drain_timer))
		return;
	log_info("signal %d: stopping", w->signum);
	notify("STOPPING=1");
	listen_stop();
	/* Answer what is in flight, but never past DRAIN_S. */
	ev_timer_set(&drain_timer, DRAIN_S, 0.0);
	ev_timer_start(loop, &drain_timer);
	ev_prepare_start(loop, &drain_prep);
}

/* Last before the loop sleeps, once the answers went out: done yet? */
static void
drain_check_cb(struct ev_loop *l, ev_prepare *w, int revents)
{
	(void)w;
	(void)revents;
	if (query_pending() == 0)
		ev_break(l, EVBREAK_ALL);
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
	    "formerr=%llu notimp=%llu badvers=%llu bad_replies=%llu "
	    "reconnects=%llu tls_full=%llu tls_resumed=%llu overload=%llu "
	    "tcp_aborts=%llu refused=%llu "
	    "inflight=%d "
	    "pending=%d cache_hits=%llu cache_misses=%llu cache_entries=%d "
	    "cache_evictions=%llu stale=%llu prefetches=%llu hedges=%llu "
	    "hedges_won=%llu hedges_unpaid=%llu",
	    (unsigned long long)stats.st_queries,
	    (unsigned long long)stats.st_answers,
	    (unsigned long long)stats.st_servfails,
	    (unsigned long long)stats.st_drops,
	    (unsigned long long)stats.st_formerr,
	    (unsigned long long)stats.st_notimp,
	    (unsigned long long)stats.st_badvers,
	    (unsigned long long)stats.st_bad_replies,
	    (unsigned long long)stats.st_reconnects,
	    (unsigned long long)stats.st_tls_full,
	    (unsigned long long)stats.st_tls_resumed,
	    (unsigned long long)stats.st_overload,
	    (unsigned long long)stats.st_tcp_aborts,
	    (unsigned long long)stats.st_refused, mux_inflight(),
	    query_pending(),
	    (unsigned long long)stats.st_cache_hits,
	    (unsigned long long)stats.st_cache_misses, cache_entries(),
	    (unsigned long long)stats.st_cache_evictions,
	    (unsigned long long)stats.st_stale,
	    (unsigned long long)stats.st_prefetches,
	    (unsigned long long)stats.st_hedges,
	    (unsigned long long)stats.st_hedges_won,
	    (unsigned long long)stats.st_hedges_unpaid);
	mux_log_stats();
}

static void
syserr_cb(const char *msg)
{
	fatal(EXIT_SETUP, "libev: %s", msg);
}

/* The CA file is only needed when an upstream is checked by name. */
static void
load_ca(void)
{
	int	 i;

	for (i = 0; i < cf.cf_nup; i++)
		if (cf.cf_up[i].uc_name != NULL) {
			/* The file named is wrong: retrying will not help. */
			if (tls_load_ca(cf.cf_ca_file) == -1)
				exit(EXIT_USAGE);
			return;
		}
}

static void
user_lookup(void)
{
	if (cf.cf_user == NULL)
		return;
	errno = 0;
	if ((user = getpwnam(cf.cf_user)) == NULL)
		fatalx(EXIT_USAGE, "--user %s: %s", cf.cf_user,
		    errno ? strerror(errno) : "no such user");
}

/* --check: everything start-up would read, and nothing it would bind. */
static void
check_only(void)
{
	tls_init();
	load_ca();
	user_lookup();
	printf("dnsfwd: configuration OK: %d listener%s%s, %d upstream%s%s%s\n",
	    cf.cf_nudp + cf.cf_ntcp, cf.cf_nudp + cf.cf_ntcp == 1 ? "" : "s",
	    cf.cf_nudp + cf.cf_ntcp == 0 ? " (socket activation must pass "
	    "them)" : "", cf.cf_nup, cf.cf_nup == 1 ? "" : "s",
	    user ? ", running as " : "", user ? user->pw_name : "");
	tls_shutdown();
	options_free(&cf);
	exit(0);
}

/*
 * No supplementary groups, then group, then user; and we check that it
 * took, since running on as root would be worse than not running.
 */
static void
drop_privileges(void)
{
	uid_t	 r, e, s;
	gid_t	 rg, eg, sg;

	if (user == NULL)
		return;
	if ((getuid() == 0 && setgroups(0, NULL) == -1) ||
	    setresgid(user->pw_gid, user->pw_gid, user->pw_gid) == -1 ||
	    setresuid(user->pw_uid, user->pw_uid, user->pw_uid) == -1)
		fatal(EXIT_SETUP, "cannot switch to user %s", cf.cf_user);
	if (getresuid(&r, &e, &s) == -1 || getresgid(&rg, &eg, &sg) == -1 ||
	    r != user->pw_uid || e != r || s != r || rg != user->pw_gid ||
	    eg != rg || sg != rg ||
	    (user->pw_uid != 0 && (setuid(0) != -1 || seteuid(0) != -1)))
		fatalx(EXIT_SETUP, "switching to user %s did not take",
		    cf.cf_user);
	log_info("running as %s (uid %u, gid %u)", cf.cf_user,
	    (unsigned)user->pw_uid, (unsigned)user->pw_gid);
}

/*
 * sd_notify(3) without libsystemd.  The socket is connected now, while
 * its path is still reachable, and kept for STOPPING=1 and WATCHDOG=1.
 */
static void
notify_open(void)
{
	const char		*path = getenv("NOTIFY_SOCKET");
	struct sockaddr_un	 sun;
	size_t			 len;

	if (path == NULL || (path[0] != '/' && path[0] != '@') ||
	    (len = strlen(path)) >= sizeof(sun.sun_path))
		return;
	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	memcpy(sun.sun_path, path, len);
	if (path[0] == '@')
		sun.sun_path[0] = '\0';	/* an abstract name */
	notify_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (notify_fd == -1 || connect(notify_fd, (struct sockaddr *)&sun,
	    (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len)) == -1) {
		log_warn("NOTIFY_SOCKET %s", path);
		if (notify_fd != -1)
			close(notify_fd);
		notify_fd = -1;
	}
	unsetenv("NOTIFY_SOCKET");
}

static void
notify(const char *state)
{
	if (notify_fd != -1 &&
	    send(notify_fd, state, strlen(state), MSG_NOSIGNAL) == -1)
		log_warn("notify %s", state);
}

/* WatchdogSec=: a ping every half period, from the loop itself. */
static void
watchdog_start(void)
{
	const char	*usec = getenv("WATCHDOG_USEC");
	const char	*pid = getenv("WATCHDOG_PID");
	double		 period;

	if (usec == NULL || notify_fd == -1 ||
	    (pid != NULL && strtol(pid, NULL, 10) != (long)getpid()))
		return;
	if ((period = strtod(usec, NULL) / 2e6) <= 0)
		return;
	ev_timer_set(&watchdog, period, period);
	ev_timer_start(loop, &watchdog);
	ev_unref(loop);
}

static void
watchdog_cb(struct ev_loop *l, ev_timer *w, int revents)
{
	(void)l;
	(void)w;
	(void)revents;
	notify("WATCHDOG=1");
}

/*
 * sd_notify STATUS=: where queries go, how many were answered and how
 * many from the cache, and the last thing that went wrong.  Sent only
 * when it changed, so an idle daemon sends nothing.
 */
static void
status_cb(struct ev_loop *l, ev_timer *w, int revents)
{
	static char	 last[400];
	char		 up[120], msg[400];
	uint64_t	 q = stats.st_queries;
	const char	*err = log_last_warning();

	(void)l;
	(void)w;
	(void)revents;
	mux_status(up, sizeof(up), now_ms());
	snprintf(msg, sizeof(msg), "STATUS=%s; %llu answered, %llu%% from "
	    "the cache%s%s", up, (unsigned long long)stats.st_answers,
	    (unsigned long long)(q ? stats.st_cache_hits * 100 / q : 0),
	    *err ? "; last error: " : "", err);
	if (strcmp(msg, last) == 0)
		return;
	memcpy(last, msg, sizeof(last));
	notify(msg);
}

static void
start(void)
{
	signal(SIGPIPE, SIG_IGN);
	ev_set_syserr_cb(syserr_cb);
	tls_init();
	load_ca();
	user_lookup();
	notify_open();
	if ((loop = ev_default_loop(EVFLAG_AUTO)) == NULL)
		fatalx(EXIT_SETUP, "cannot initialise the event loop");
	listen_init(loop, &cf);
	drop_privileges();
	mux_init(loop, &cf);
	netmon_init(loop, &cf);
	cache_init(&cf);
	query_init(loop, &cf, listen_deliver);
	ev_signal_init(&sig_term, signal_cb, SIGTERM);
	ev_signal_init(&sig_int, signal_cb, SIGINT);
	ev_signal_init(&sig_usr1, signal_cb, SIGUSR1);
	ev_signal_start(loop, &sig_term);
	ev_signal_start(loop, &sig_int);
	ev_signal_start(loop, &sig_usr1);
	timer_init(&drain_timer, drain_cb);
	ev_prepare_init(&drain_prep, drain_check_cb);
	ev_set_priority(&drain_prep, EV_MINPRI);
	timer_init(&watchdog, watchdog_cb);
	watchdog_start();
	timer_init(&status_timer, status_cb);
	ev_timer_set(&status_timer, 0.1, STATUS_S);
	if (notify_fd != -1) {
		ev_timer_start(loop, &status_timer);
		ev_unref(loop);
	}
}

static void
teardown(void)
{
	netmon_free();
	mux_shutdown();
	query_shutdown();
	cache_free();
	listen_free();
	options_free(&cf);
	ev_prepare_stop(loop, &drain_prep);
	ev_timer_stop(loop, &drain_timer);
	if (ev_is_active(&watchdog)) {
		ev_ref(loop);
		ev_timer_stop(loop, &watchdog);
	}
	if (ev_is_active(&status_timer)) {
		ev_ref(loop);
		ev_timer_stop(loop, &status_timer);
	}
	if (notify_fd != -1)
		close(notify_fd);
	ev_signal_stop(loop, &sig_term);
	ev_signal_stop(loop, &sig_int);
	ev_signal_stop(loop, &sig_usr1);
	tls_shutdown();
	ev_loop_destroy(loop);
}

int
main(int argc, char **argv)
{
	options_parse(argc, argv, &cf);
	log_init(cf.cf_log_level);
	if (cf.cf_check)
		check_only();
	start();
	log_info("dnsfwd %s ready: %d upstream%s, %d connection%s each",
	    DNSFWD_VERSION, cf.cf_nup, cf.cf_nup == 1 ? "" : "s",
	    cf.cf_connections, cf.cf_connections == 1 ? "" : "s");
	/* Bound and set up: a query sent now is answered. */
	notify("READY=1");
	ev_run(loop, 0);
	teardown();
	log_info("stopped");
	return 0;
}

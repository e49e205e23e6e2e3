/*
 * dnsfwd: main, start-up, signals and shutdown.  The listeners (listen.c)
 * hand client messages to the query lifecycle (query.c), which answers
 * from the cache (cache.c) or sends upstream through the mux (mux.c,
 * tls.c); answers travel back by callback.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#include <ev.h>

#include "dnsfwd.h"

/* How long a stopping daemon waits for answers still in flight. */
#define DRAIN_S		1.0

struct stats	 stats;

static struct config	 cf;
static struct ev_loop	*loop;
static ev_signal	 sig_term, sig_int, sig_usr1;
static ev_timer		 drain_timer;
static ev_prepare	 drain_prep;

static void	signal_cb(struct ev_loop *, ev_signal *, int);
static void	drain_check_cb(struct ev_loop *, ev_prepare *, int);
static void	drain_cb(struct ev_loop *, ev_timer *, int);
static void	log_stats(void);
static void	syserr_cb(const char *);
static void	start(void);
static void	teardown(void);

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
	listen_stop();
	/* Answer what is in flight, but never past DRAIN_S. */
	ev_timer_init(&drain_timer, drain_cb, DRAIN_S, 0.0);
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
	    "reconnects=%llu overload=%llu tcp_aborts=%llu inflight=%d "
	    "pending=%d cache_hits=%llu cache_misses=%llu cache_entries=%d "
	    "cache_evictions=%llu stale=%llu prefetches=%llu",
	    (unsigned long long)stats.st_queries,
	    (unsigned long long)stats.st_answers,
	    (unsigned long long)stats.st_servfails,
	    (unsigned long long)stats.st_drops,
	    (unsigned long long)stats.st_formerr,
	    (unsigned long long)stats.st_notimp,
	    (unsigned long long)stats.st_badvers,
	    (unsigned long long)stats.st_bad_replies,
	    (unsigned long long)stats.st_reconnects,
	    (unsigned long long)stats.st_overload,
	    (unsigned long long)stats.st_tcp_aborts, mux_inflight(),
	    query_pending(),
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
start(void)
{
	int	 i, need_ca = 0;

	signal(SIGPIPE, SIG_IGN);
	ev_set_syserr_cb(syserr_cb);
	tls_init();
	for (i = 0; i < cf.cf_nup; i++)
		need_ca |= cf.cf_up[i].uc_name != NULL;
	if (need_ca && tls_load_ca(cf.cf_ca_file) == -1)
		exit(EXIT_SETUP);
	if ((loop = ev_default_loop(EVFLAG_AUTO)) == NULL)
		fatalx(EXIT_SETUP, "cannot initialise the event loop");
	listen_init(loop, &cf);
	mux_init(loop, &cf);
	cache_init(&cf);
	query_init(loop, &cf, listen_deliver);
	ev_signal_init(&sig_term, signal_cb, SIGTERM);
	ev_signal_init(&sig_int, signal_cb, SIGINT);
	ev_signal_init(&sig_usr1, signal_cb, SIGUSR1);
	ev_signal_start(loop, &sig_term);
	ev_signal_start(loop, &sig_int);
	ev_signal_start(loop, &sig_usr1);
	ev_init(&drain_timer, drain_cb);
	ev_prepare_init(&drain_prep, drain_check_cb);
	ev_set_priority(&drain_prep, EV_MINPRI);
}

static void
teardown(void)
{
	mux_shutdown();
	query_shutdown();
	cache_free();
	listen_free();
	options_free(&cf);
	ev_prepare_stop(loop, &drain_prep);
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
	options_parse(argc, argv, &cf);
	log_init(cf.cf_log_level);
	start();
	log_info("dnsfwd %s ready: %d upstream%s, %d connection%s each",
	    DNSFWD_VERSION, cf.cf_nup, cf.cf_nup == 1 ? "" : "s",
	    cf.cf_connections, cf.cf_connections == 1 ? "" : "s");
	ev_run(loop, 0);
	teardown();
	log_info("stopped");
	return 0;
}

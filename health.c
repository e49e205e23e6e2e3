/*
 * How an upstream is judged, from every outcome of the attempts sent to
 * it (a pure table over struct upstream, taking `now`, calling nobody
 * but the log).
 *
 * Round trips are smoothed as RFC 6298 does for TCP's retransmission
 * timer, and an attempt gets srtt + 4 x rttvar (at least srtt / 2, and
 * ATTEMPT_MIN_MS in all) before a second copy goes elsewhere.  An upstream that has not answered yet is
 * not preferred over one that has, but gets copies of queries until it
 * answers, so that it is judged too.  Any failure (no answer in time,
 * REFUSED, SERVFAIL, NOTIMP, FORMERR, a stream that is not DNS) demotes
 * it at once: it is chosen only after the upstreams in good standing,
 * and meanwhile gets a copy of a real query every probe interval, which
 * doubles while the probes fail.  An answer to an attempt sent after
 * the demotion brings it back.
 */
#include <stdio.h>

#include "conn.h"
#include "dns.h"
#include "health.h"
#include "log.h"

/* An upstream not heard from yet: RFC 6298's initial timeout. */
#define ATTEMPT_INIT_MS	1000
/*
 * Loopback or a LAN measure ~0, and a resolver's answer for a name it
 * must look up takes longer than the path: this keeps those from
 * costing copies.
 */
#define ATTEMPT_MIN_MS	100
/* Probes of a demoted upstream: from this interval, doubling, to the max. */
#define PROBE_MIN_MS	500
#define PROBE_MAX_MS	10000

int
health_rank(const struct upstream *up, int unreachable)
{
	if (unreachable)
		return 3;
	if (up->up_bad > 0)
		return 2;
	return up->up_srtt == 0 ? 1 : 0;
}

/*
 * srtt + 4 x rttvar, but on a steady path rttvar falls to almost nothing
 * and the timeout would hug srtt, where an answer a little late, as
 * upstreams' answers are, counts as lost: the variance term is at least
 * half of srtt, as TCP's minimum RTO keeps its timer off the RTT.
 * Half of what is left to the deadline at most: room for another copy.
 */
int64_t
health_attempt_ms(const struct upstream *up, int64_t deadline, int64_t now)
{
	int64_t	 t, var = 4 * up->up_rttvar;

	if (var < up->up_srtt / 2)
		var = up->up_srtt / 2;
	if (up->up_srtt == 0)
		t = ATTEMPT_INIT_MS;
	else
		t = (up->up_srtt + var + 999) / 1000;
	if (t < ATTEMPT_MIN_MS)
		t = ATTEMPT_MIN_MS;
	if (t > (deadline - now) / 2)
		t = (deadline - now) / 2;
	return t > 0 ? t : 1;
}

int64_t
health_late_ms(const struct upstream *up)
{
	if (up->up_srtt == 0)
		return ATTEMPT_INIT_MS;
	return (up->up_srtt + 4 * up->up_rttvar) / 1000 + 1;
}

/*
 * The kernel's round trip once a handshake is done measures the path
 * alone, where an answer's includes the upstream's lookup and a burst's
 * queueing: the shortest seen is the path's.
 */
void
health_path_rtt(struct upstream *up, int64_t us)
{
	if (us > 0 && (up->up_path_rtt == 0 || us < up->up_path_rtt))
		up->up_path_rtt = us;
}

/*
 * RFC 6298 2.2 and 2.3, in microseconds; srtt 0 means "no sample".  As
 * Karn's algorithm: an attempt past its timeout, overtaken by the answer
 * to a query sent after it, measured its loss or its lookup, not the
 * path; one not overtaken shows the path got slower.
 */
void
health_rtt(struct upstream *up, const struct att *a, int64_t now)
{
	int64_t	 ms = now - a->a_sent, r = (ms > 0 ? ms : 0) * 1000, d;

	if (a->a_late && up->up_heard_sent > a->a_sent)
		return;
	up->up_sampled = now;
	up->up_last_rtt = r;
	if (up->up_srtt == 0) {
		up->up_srtt = r > 0 ? r : 1;
		up->up_rttvar = r / 2;
		return;
	}
	d = up->up_srtt > r ? up->up_srtt - r : r - up->up_srtt;
	up->up_rttvar += (d - up->up_rttvar) / 4;
	up->up_srtt += (r - up->up_srtt) / 8;
	if (up->up_srtt == 0)
		up->up_srtt = 1;
}

static void
answered(struct upstream *up, const struct att *a, int64_t now)
{
	up->up_n.n_answers++;
	up->up_heard = now;
	if (a->a_sent > up->up_heard_sent)
		up->up_heard_sent = a->a_sent;
	if (up->up_bad == 0 || a->a_sent < up->up_demoted_at)
		return;
	log_info("%s: answering again after %d failures (%lld ms)",
	    up->up_label, up->up_bad, (long long)(now - up->up_demoted_at));
	up->up_bad = 0;
	up->up_probe_ms = 0;
	up->up_warned = 0;
}

int
health_rcode_failed(struct upstream *up, const struct att *a, int rcode,
    int64_t now)
{
	const char	*why;

	switch (rcode) {
	case RCODE_REFUSED:
		up->up_n.n_refused++;
		why = "answered REFUSED";
		break;
	case RCODE_SERVFAIL:
		up->up_n.n_servfail++;
		why = "answered SERVFAIL";
		break;
	case RCODE_NOTIMP:
		up->up_n.n_notimp++;
		why = "answered NOTIMP";
		break;
	case RCODE_FORMERR:
		up->up_n.n_formerr++;
		why = "answered FORMERR";
		break;
	default:
		answered(up, a, now);
		return 0;
	}
	health_failed(up, a, why, now);
	return 1;
}

/*
 * The first failure demotes; after that only a failed probe counts, so
 * that the many queries already out when it broke do not lengthen the
 * probe interval at once.
 */
void
health_failed(struct upstream *up, const struct att *a, const char *why,
    int64_t now)
{
	if (up->up_bad++ == 0) {
		up->up_demoted_at = now;
		up->up_probe_ms = PROBE_MIN_MS;
		up->up_probe_at = now + PROBE_MIN_MS;
		log_ratelimited(&up->up_warned, "%s: %s: demoted, other "
		    "upstreams go first", up->up_label, why);
		return;
	}
	if (a == NULL || !a->a_probe)
		return;
	up->up_probe_ms = up->up_probe_ms * 2 > PROBE_MAX_MS ? PROBE_MAX_MS :
	    up->up_probe_ms * 2;
	up->up_probe_at = now + up->up_probe_ms;
}

/*
 * An upstream that answered since the attempt was sent is alive: this
 * query was lost on the way, or is a slow lookup, and a second copy is
 * the remedy.  Demoting it would move every query to the others and
 * their cold connections at each lost packet.  Silence demotes; so do,
 * over a path not known to lose packets, answers only to queries sent
 * before this one: spread over connections of their own, those sent
 * after it would have been answered, and these were on their way back
 * when the path went dark.  Over a lossy path queries share a connection
 * and wait behind a lost segment, and that would demote at every loss.
 */
void
health_timed_out(struct upstream *up, const struct att *a, int lossy,
    int64_t now)
{
	int	 dark = up->up_lossy_at != 0 ? up->up_heard <= a->a_sent :
		    up->up_heard_sent < a->a_sent;

	up->up_n.n_timeouts++;
	if (lossy)
		up->up_lossy_at = now;
	if (dark)
		health_failed(up, a, "no answer within the attempt timeout",
		    now);
}

/*
 * A demoted upstream is probed every probe interval; one not heard from
 * yet, every PROBE_MIN_MS until it answers, so that a faster one than
 * those in use is found (and a dead one is found out) without waiting
 * for the others to fail.
 */
int
health_probe_due(const struct upstream *up, int64_t now)
{
	return (up->up_bad > 0 || up->up_srtt == 0) && now >= up->up_probe_at;
}

void
health_probed(struct upstream *up, int64_t now)
{
	up->up_probe_at = now + (up->up_bad > 0 ? up->up_probe_ms :
	    PROBE_MIN_MS);
}

void
health_reset(struct upstream *up)
{
	up->up_srtt = up->up_rttvar = 0;
	up->up_sampled = 0;
	up->up_last_rtt = -1;
	up->up_heard = 0;
	up->up_heard_sent = 0;
	up->up_path_rtt = 0;
	up->up_lossy_at = 0;
	up->up_bad = 0;
	up->up_probe_ms = 0;
	up->up_probe_at = 0;
}

static const char *
state(const struct upstream *up, int64_t now)
{
	if (up->up_fails > 0 && now < up->up_retry_at)
		return "unreachable";
	if (up->up_bad > 0)
		return "demoted";
	return up->up_srtt == 0 ? "untried" : "healthy";
}

void
health_status(const struct upstream *up, char *buf, size_t len)
{
	if (up == NULL)
		snprintf(buf, len, "no upstream reachable");
	else if (up->up_srtt == 0)
		snprintf(buf, len, "upstream %s", up->up_label);
	else
		snprintf(buf, len, "upstream %s %.0f ms", up->up_label,
		    up->up_srtt / 1000.0);
}

void
health_log(const struct upstream *up, int64_t now)
{
	const struct up_counts *n = &up->up_n;
	int	 i, open = 0;

	for (i = 0; i < up->up_nconns; i++)
		open += up->up_conns[i].c_state == CONN_READY;
	log_info("upstream %s state=%s srtt_ms=%.1f rttvar_ms=%.1f "
	    "path_ms=%.1f conns=%d answers=%llu timeouts=%llu refused=%llu servfail=%llu "
	    "notimp=%llu formerr=%llu garbage=%llu hedges=%llu "
	    "hedges_won=%llu",
	    up->up_label, state(up, now), up->up_srtt / 1000.0,
	    up->up_rttvar / 1000.0, up->up_path_rtt / 1000.0, open,
	    (unsigned long long)n->n_answers,
	    (unsigned long long)n->n_timeouts,
	    (unsigned long long)n->n_refused,
	    (unsigned long long)n->n_servfail,
	    (unsigned long long)n->n_notimp,
	    (unsigned long long)n->n_formerr,
	    (unsigned long long)n->n_garbage,
	    (unsigned long long)n->n_hedges,
	    (unsigned long long)n->n_hedges_won);
}

"""dnsfwd integration scenarios: upstreams that fail the way real ones do.

An upstream that stays connected and never answers, one that answers
REFUSED or SERVFAIL to everything, one that drops a single query, one
that recovers, and dnsfwd's own resets (issue 15).  Each scenario prints
the share of queries answered, the figure that matters; its windows are
wide enough for two busy cores.

  health_blackhole_upstream     a connected upstream that never answers
  health_rcode_upstream         REFUSED, then SERVFAIL, to everything
  health_probe_interval_doubles a refusing upstream's probes back off
  health_daemon_stopped_no_blame
                                dnsfwd itself stopped: the answer waits
  health_all_refuse             every upstream refuses: their answer
  health_dropped_query          one dropped query costs one attempt timeout
  health_dropped_query_two      the same across two upstreams
  health_upstream_recovers      a demoted upstream gets its traffic back
  health_keepalive_latest       a later edns-tcp-keepalive 0 closes when idle
  health_keepalive_raised       a later, longer edns-tcp-keepalive is kept
  health_own_resets_no_blame    route flaps resend a query, never fail it
  health_netchange_during_handshake
                                a route change drops a dial mid-handshake
  health_fastopen_syn_data_dropped
                                a path that drops SYN data: Fast Open off
"""
import itertools
import os
import re
import signal
import subprocess
import threading
import time

import dns.rcode

import fakeup
import scen

it = None                  # the integration module, set by register()
_reg = scen.Registry(__name__)
scenario, slow = _reg.scenario, _reg.slow


def register(mod):
    _reg.register(mod)


# ---------------------------------------------------------------- helpers

def stream(port, seconds, gap, prefix, timeout=4.0, at=None):
    """A query for a new name every `gap` s for `seconds`, each from its
    own thread; [(monotonic time sent, name, Reply)].  at: {offset s:
    fn}, each fn called on a thread of its own at that offset."""
    n = int(seconds / gap)
    out = [None] * n
    # Starting hundreds of threads takes seconds on a loaded machine:
    # the clock starts once all are up, or the first queries would go
    # out in a burst and an `at` function long after its offset.
    go = threading.Event()
    clock = {}

    def wait(off):
        go.wait()
        left = clock["t0"] + off - time.monotonic()
        if left > 0:
            time.sleep(left)

    def one(i):
        wait(i * gap)
        name = "%s%d.example." % (prefix, i)
        sent = time.monotonic()
        out[i] = (sent, name, it.ask_udp(port, name, timeout=timeout))

    def later(off, fn):
        wait(off)
        fn()
    ths = [threading.Thread(target=one, args=(i,), daemon=True)
           for i in range(n)]
    ths += [threading.Thread(target=later, args=(off, fn), daemon=True)
            for off, fn in sorted((at or {}).items())]
    for th in ths:
        th.start()
    clock["t0"] = time.monotonic() + 0.05
    go.set()
    for th in ths:
        th.join(seconds + timeout + 10)
    return [x for x in out if x is not None], clock["t0"]


def _share(results, t0, after):
    """(answered NOERROR with the right address, asked) of those of
    stream()'s results sent at or after `after` seconds from t0."""
    late = [r for sent, _, r in results if sent - t0 >= after]
    good = sum(1 for r in late if r.msg is not None and
               r.msg.rcode() == dns.rcode.NOERROR and
               r.addrs() == [it.GOOD_ADDR])
    return good, len(late)


def _since(fu, t0, prefix):
    """fakeup's records of queries read at or after t0 whose name starts
    with prefix."""
    with fu.lock:
        return [dict(q) for q in fu.queries
                if q["t"] >= t0 and q["qname"].startswith(prefix)]


def upstream_lines(d):
    """SIGUSR1's per-upstream lines, newest last, as dicts."""
    d.stats()
    out = {}
    for ln in d.grep("upstream u"):
        f = ln.split("upstream ", 1)[1].split()
        kv = dict(x.split("=", 1) for x in f[2:] if "=" in x)
        out[f[0]] = kv
    return out


def _expect_share(t, results, t0, after, want, deadline_s, what):
    good, n = _share(results, t0, after)
    t.note("%s: %d of %d answered after %.1f s" % (what, good, n, after))
    it.check(n > 0 and good >= want * n, "%s: %d of %d queries sent after "
             "%.1f s answered NOERROR, want %d%%" % (what, good, n, after,
                                                     want * 100))
    slowest = max(r.elapsed for _, _, r in results if r.msg is not None)
    it.check(slowest <= deadline_s + 0.7, "%s: a query waited %.2f s, past "
             "its %.1f s deadline" % (what, slowest, deadline_s))
    lost = ["%.2f" % (sent - t0) for sent, _, r in results
            if r.msg is None]
    it.check(not lost, "%s: no reply at all to queries sent at %s s" % (
        what, lost[:5]))


# ---------------------------------------------------------------- scenarios

@scenario
@slow
def health_blackhole_upstream(t):
    """Of two upstreams, the first accepts TLS and then answers nothing (silent, connected) and the second is healthy: with --timeout 1500, of a query every 50 ms for 4 s at least 95% of those sent after the first 2 s are answered NOERROR, none of them after 0.5 s (none waited out an attempt timeout on the first), none waits past its deadline, and SIGUSR1 shows the first demoted with timeouts counted."""
    hole, good = t.fakeup(), t.fakeup()
    hole.set(mode="silent")
    d = t.dnsfwd(*it.tls_up(hole), *it.tls_up(good, ca=False),
                 "--timeout", "1500")
    res, t0 = stream(d.port, 4.0, 0.05, "bh")
    _expect_share(t, res, t0, 2.0, 0.95, 1.5, "one upstream blackholed")
    # Demoted, it takes no query first: none waits out its attempt
    # timeout (750 ms, half the deadline, for one never heard from).
    slow = [(round(s - t0, 2), round(r.elapsed, 3)) for s, _, r in res
            if s - t0 >= 2.0 and r.elapsed > 0.5]
    it.check(not slow, "queries sent after 2 s waited on the silent "
             "upstream first (sent at, took): %s" % slow[:5])
    it.check(hole.nqueries() >= 1, "the blackholed upstream was never tried")
    ups = upstream_lines(d)
    u0 = ups.get("u0", {})
    it.check(u0.get("state") == "demoted" and
             int(u0.get("timeouts", 0)) >= 1, "SIGUSR1 for the silent "
             "upstream: %s, want state=demoted and timeouts counted" % ups)


@scenario
@slow
def health_rcode_upstream(t):
    """Of two upstreams, the first answers REFUSED (then, afresh, SERVFAIL) to everything and the second is healthy: of a query every 50 ms for 3 s at least 95% of those sent after the first 2 s are answered NOERROR, the first upstream's answers never reach a client, and SIGUSR1 counts them."""
    for rcode in ("REFUSED", "SERVFAIL"):
        bad, good = t.fakeup(), t.fakeup()
        bad.set(mode="rcode_all", rcode=rcode)
        d = t.dnsfwd(*it.tls_up(bad), *it.tls_up(good, ca=False),
                     "--timeout", "1500")
        res, t0 = stream(d.port, 3.0, 0.05, "rc%s" % rcode.lower())
        _expect_share(t, res, t0, 2.0, 0.95, 1.5, "one upstream %s" % rcode)
        # Never theirs: each is asked of the other upstream.
        theirs = [round(s - t0, 2) for s, _, r in res if r.msg is not None
                  and r.msg.rcode() == dns.rcode.from_text(rcode)]
        it.check(not theirs, "%s reached the client for queries sent at "
                 "%s s, with another upstream healthy" % (rcode, theirs[:5]))
        it.check(bad.nqueries() >= 1, "the %s upstream was never tried" %
                 rcode)
        ups = upstream_lines(d)
        it.check(int(ups.get("u0", {}).get(rcode.lower(), 0)) >= 1,
                 "SIGUSR1 does not count the %s answers: %s" % (rcode, ups))
        d.stop_and_check()


@scenario
@slow
def health_probe_interval_doubles(t):
    """An upstream that answers REFUSED to everything, beside a healthy one, under a query every 50 ms for 9 s: it gets a copy of a real query every probe interval, from 0.5 s doubling while the probes fail, so 3 to 6 probes after the first copies (a fixed 0.5 s would be 17), the n-th gap at least 0.8 x 0.5 x 2^n s; every client gets NOERROR."""
    bad, good = t.fakeup(), t.fakeup()
    bad.set(mode="rcode_all", rcode="REFUSED")
    d = t.dnsfwd(*it.tls_up(bad), *it.tls_up(good, ca=False),
                 "--timeout", "1500")
    res, t0 = stream(d.port, 9.0, 0.05, "pd")
    wrong = [(round(s - t0, 2), r.describe()) for s, _, r in res
             if r.msg is None or r.msg.rcode() != dns.rcode.NOERROR]
    it.check(not wrong, "%d of %d clients not answered NOERROR: %s" % (
        len(wrong), len(res), wrong[:4]))
    times = [q["t"] for q in bad.queries]
    gaps = [round(b - a, 2) for a, b in zip(times, times[1:])]
    # Until its first REFUSED comes back, an upstream not heard from gets
    # queries as they come: on a loaded machine a few, at once.
    probes = list(itertools.dropwhile(lambda g: g < 0.3, gaps))
    it.check(3 <= len(probes) <= 6, "the refusing upstream got %d probe "
             "copies in 9 s, want 3 to 6; gaps %s s" % (len(probes), gaps))
    # Each at least most of its interval, 0.5 s doubling: a probe is
    # due that long after the last one failed.  The first gap also holds
    # the wait for the first REFUSED, and a loaded machine lengthens any.
    it.check(all(g >= 0.8 * 0.5 * 2 ** i for i, g in enumerate(probes)),
             "gaps between the probes do not double: %s s" % gaps)
    d.stop_and_check()


def _attempt_s(kv):
    """The attempt timeout dnsfwd gives an upstream (health_attempt_ms),
    from its SIGUSR1 line, before the deadline's cap."""
    srtt, var = float(kv["srtt_ms"]), 4 * float(kv["rttvar_ms"])
    if srtt == 0:
        return 1.0              # no answer yet: ATTEMPT_INIT_MS
    return max(0.1, srtt + max(var, srtt / 2)) / 1000.0


def _stopped_once(t, d, ups, name, stop):
    """One query whose upstream SIGSTOPs dnsfwd as it reads it, answers
    50 ms later, and SIGCONTs it `stop` s later once the answer is
    written.  A dict: reply; copies, per upstream; charged, timeouts;
    hedged, hedges sent; rose, upstreams whose srtt rose, or None when
    the answer was itself too late to tell; conclusive, False when the
    stop came too late to hold back dnsfwd's attempt timer."""
    seen = {}
    before, hedges = upstream_lines(d), d.stats().get("hedges", 0)
    attempt = min(_attempt_s(before[u]) for u in ("u0", "u1"))

    def cont(fu, replies):
        # The answer must wait in dnsfwd's socket: a loaded machine can
        # hold fakeup's thread past the stop.
        scen.until(lambda: fu.stats()["replies"] > replies, stop + 5)
        seen["wrote"] = time.monotonic()
        left = seen["stopped"] + stop - time.monotonic()
        if left > 0:
            time.sleep(left)
        os.kill(d.proc.pid, signal.SIGCONT)

    def stop_for(i, fu):
        def on_query(rec):
            if "up" in seen:
                return          # a second copy: dnsfwd was not held back
            os.kill(d.proc.pid, signal.SIGSTOP)
            seen.update(up="u%d" % i, stopped=time.monotonic())
            seen["th"] = threading.Thread(target=cont, daemon=True,
                                          args=(fu, fu.stats()["replies"]))
            seen["th"].start()
        return on_query
    for i, fu in enumerate(ups):    # whichever dnsfwd picks stops it
        fu.rule(name, delay_ms=50, on_query=stop_for(i, fu))
    sent = time.monotonic()
    try:
        r = it.ask_udp(d.port, name, timeout=stop + 4)
    finally:
        if "th" in seen:
            seen["th"].join()
        os.kill(d.proc.pid, signal.SIGCONT)
    after = upstream_lines(d)
    out = {"reply": r, "copies": [fu.count(name) for fu in ups],
           "charged": sum(int(after[u]["timeouts"]) -
                          int(before[u]["timeouts"]) for u in ("u0", "u1")),
           "hedged": d.stats().get("hedges", 0) - hedges,
           # Stopped a margin before the attempt timer, or the copy is
           # dnsfwd's right answer to an upstream slow to read.
           "conclusive": "up" in seen and
           seen["stopped"] - sent < attempt - 0.1, "rose": None}
    if "up" not in seen:
        return out
    u = seen["up"]
    t.note("%s to %s: stopped %.0f ms and answer written %.0f ms after "
           "sending, attempt timeout %.0f ms, srtt %s -> %s ms" % (
               name, u, (seen["stopped"] - sent) * 1000,
               (seen.get("wrote", 0) - sent) * 1000, attempt * 1000,
               before[u]["srtt_ms"], after[u]["srtt_ms"]))
    # An answer written below the srtt must lower it; one written later
    # (a loaded machine) tells nothing either way.
    if seen.get("wrote", 1e9) - sent < float(
            before[u]["srtt_ms"]) / 1000 - 0.05:
        out["rose"] = float(after[u]["srtt_ms"]) > float(before[u]["srtt_ms"])
    return out


@scenario
@slow
def health_daemon_stopped_no_blame(t):
    """dnsfwd stopped (SIGSTOP, as a frozen container or a debugger would) just after it sent a query, its answer arriving 50 ms later, then continued: after its attempt timeout and after its deadline the waiting answer is delivered; no copy goes to the other upstream, neither is charged a timeout, and the round trip measured is the answer's 50 ms (its srtt falls), not the stop."""
    ups = [t.fakeup(), t.fakeup()]
    d = t.dnsfwd(*it.tls_up(ups[0]), *it.tls_up(ups[1], ca=False),
                 "--timeout", "2000")
    # Slow upstreams, for an attempt timeout of about 400 ms: the stop
    # must land before it even when fakeup is slow to read the query.
    for fu in ups:
        fu.set(delay_ms=250)
    for i in range(6):
        it.expect_a(it.ask_udp(d.port, "warm%d.example." % i, timeout=3),
                    it.GOOD_ADDR, "warm-up %d" % i)
    for fu in ups:
        fu.set(delay_ms=0)
    # Past the attempt timeout of whichever upstream dnsfwd picks.
    attempt = max(_attempt_s(kv) for kv in upstream_lines(d).values())
    srtt_told = 0
    for what, stop in (("attempt timeout", attempt + 0.3),
                       ("deadline", 2.5)):
        for n in range(3):
            name = "stopped-%s-%d.example." % (what.split()[0], n)
            o = _stopped_once(t, d, ups, name, stop)
            if o["conclusive"]:
                break
            t.note("%s: the stop came late, asked again" % name)
        it.check(o["conclusive"], "past the %s: three times fakeup stopped "
                 "dnsfwd too late to hold back its attempt timer" % what)
        r = o["reply"]
        it.expect_a(r, it.GOOD_ADDR, "stopped past the %s" % what)
        it.check(r.elapsed >= stop, "answered after %.2f s, before SIGCONT "
                 "at %.2f s: was dnsfwd stopped?" % (r.elapsed, stop))
        it.check(sorted(o["copies"]) == [0, 1], "the upstreams were asked "
                 "%s after a stop past the %s, want one copy" % (
                     o["copies"], what))
        it.check(o["charged"] == 0, "%d timeouts charged after a stop past "
                 "the %s" % (o["charged"], what))
        it.check(o["hedged"] == 0, "%d hedges sent after a stop past the "
                 "%s" % (o["hedged"], what))
        # The round trip is the answer's arrival, not when dnsfwd woke.
        it.check(o["rose"] is not True, "srtt rose after a stop past the "
                 "%s: the stop was measured as round trip" % what)
        srtt_told += o["rose"] is not None
    if srtt_told == 0:
        t.note("srtt not judged: fakeup wrote both answers too late")
    t.note("answered after the stops; no timeout charged")


@scenario
def health_all_refuse(t):
    """When every upstream answers REFUSED, the client gets REFUSED at once (what they said), not a SERVFAIL at the deadline; both upstreams were asked."""
    a, b = t.fakeup(), t.fakeup()
    for f in (a, b):
        f.set(mode="rcode_all", rcode="REFUSED")
    d = t.dnsfwd(*it.tls_up(a), *it.tls_up(b, ca=False), "--timeout", "3000")
    r = it.ask_udp(d.port, "nobody.example.", timeout=4)
    it.check(r.msg is not None and r.msg.rcode() == dns.rcode.REFUSED,
             "every upstream refusing: %s, want REFUSED" % r.describe())
    it.check(r.elapsed < 2.5, "REFUSED after %.2f s, want well before the "
             "3 s deadline" % r.elapsed)
    it.check(a.count("nobody.example.") >= 1 and
             b.count("nobody.example.") >= 1, "upstreams asked %d and %d "
             "times, want both" % (a.count("nobody.example."),
                                   b.count("nobody.example.")))


def _dropped(t, ups, df, name):
    d = t.dnsfwd(*[x for i, f in enumerate(ups)
                   for x in it.tls_up(f, ca=(i == 0))], "--timeout", "2000")
    it.expect_a(it.ask_udp(d.port, "warm.example."), it.GOOD_ADDR, "warm-up")
    plan = [(i * 0.4, it.make_query(name, qid=0x3000 + i)) for i in range(10)]
    res = it._staggered(d.port, plan, timeout=3)
    for (at, _), r in zip(plan, res):
        it.expect_a(r, it.GOOD_ADDR, "asked %.1f s in" % at)
    t.note("first asker answered after %.2f s; %d queries dropped" % (
        res[0].elapsed, len(df.dropped)))
    it.check(len(df.dropped) == 1, "%d queries dropped, want 1" %
             len(df.dropped))
    # An attempt timeout at half the deadline would answer after 1 s.
    it.check(res[0].elapsed <= 0.9, "the first asker waited %.2f s, want "
             "one attempt timeout (100 ms) and at most a handshake" %
             res[0].elapsed)
    return d


@scenario
def health_dropped_query(t):
    """One upstream drops the first query for a popular name and answers every later one: a client asking it every 0.4 s with --timeout 2000 gets every answer, the first after one attempt timeout (well before half the deadline), its second copy over a second connection."""
    fu = t.fakeup()
    df = fakeup.DropFirst(1, names=["popular.example."])
    fu.set(drop_first=df)
    _dropped(t, [fu], df, "popular.example.")
    conns = [q["conn"] for q in fu.records("popular.example.")]
    it.check(len(conns) == 2 and conns[0] != conns[1], "copies went over "
             "connections %s, want two different ones" % conns)


@scenario
def health_dropped_query_two(t):
    """Two upstreams, the first query for a popular name dropped whichever gets it: every asker answered, the first after one attempt timeout."""
    a, b = t.fakeup(), t.fakeup()
    df = fakeup.DropFirst(1, names=["popular2.example."])
    for f in (a, b):
        f.set(drop_first=df)
    _dropped(t, [a, b], df, "popular2.example.")


@scenario
@slow
def health_upstream_recovers(t):
    """The faster of two upstreams answers REFUSED for 2.5 s and is demoted, then recovers: probed with copies of real queries, it gets the traffic back (at least 80% of the queries of the last 2 s of 8) and 'answering again' is logged."""
    fast, slow_up = t.fakeup(), t.fakeup()
    slow_up.set(delay_ms=40)
    fast.set(mode="rcode_all", rcode="REFUSED")
    d = t.dnsfwd(*it.tls_up(fast), *it.tls_up(slow_up, ca=False),
                 "--timeout", "2000")
    res, t0 = stream(d.port, 8.0, 0.1, "rec",
                     at={2.5: lambda: fast.set(mode="normal")})
    _expect_share(t, res, t0, 0.0, 0.95, 2.0, "faster upstream refusing, "
                  "then back")
    late = t0 + 6.0
    n_fast = len(_since(fast, late, "rec"))
    n_slow = len(_since(slow_up, late, "rec"))
    t.note("last 2 s: %d queries to the recovered upstream, %d to the "
           "other" % (n_fast, n_slow))
    it.check(n_fast >= 0.8 * (n_fast + n_slow) and n_fast > 0, "after it "
             "recovered the faster upstream got %d of %d queries of the "
             "last 2 s" % (n_fast, n_fast + n_slow))
    it.check(d.grep("answering again"), "no 'answering again' logged: %s" %
             d.tail(5))


@scenario
def health_keepalive_latest(t):
    """An upstream that offers no keepalive at first and edns-tcp-keepalive TIMEOUT 0 (close when idle) in its second answer: dnsfwd closes the idle connection within a second instead of keeping it for --idle-timeout."""
    fu = t.fakeup()
    fu.set(keepalive=0, keepalive_on=2)
    d = t.dnsfwd(*it.tls_up(fu), "--timeout", "2000", "--idle-timeout", "30")
    it.expect_a(it.ask_udp(d.port, "ka1.example."), it.GOOD_ADDR, "first")
    it.expect_a(it.ask_udp(d.port, "ka2.example."), it.GOOD_ADDR, "second")
    it.check(scen.until(lambda: fu.stats()["closed"] >= 1, 1.5),
             "the connection stays open after a "
             "later answer asked for close when idle: %s" % fu.stats())


@scenario
@slow
def health_keepalive_raised(t):
    """A server that first keeps idle connections 1 s (edns-tcp-keepalive 10) and later says 4 s (40): the latest is kept, so the connection is still open 2 s after the second answer, and closed by dnsfwd about 3.5 s after it (the server's 4 s less dnsfwd's 0.5 s margin; at most 4.5 s here, for a loaded machine), long before --idle-timeout 30."""
    fu = t.fakeup()
    fu.set(keepalive=10)
    d = t.dnsfwd(*it.tls_up(fu), "--timeout", "2000", "--idle-timeout", "30")
    it.expect_a(it.ask_udp(d.port, "kr1.example."), it.GOOD_ADDR, "first")
    fu.set(keepalive=40)
    it.expect_a(it.ask_udp(d.port, "kr2.example."), it.GOOD_ADDR, "second")
    t0 = time.monotonic()
    it.check(fu.stats()["conns"] == 1, "the second query did not use the "
             "first connection: %s" % fu.stats())
    time.sleep(2.0)
    it.check(fu.stats()["closed"] == 0, "closed within 2 s of an answer "
             "that said 4 s: the earlier 1 s was kept")
    it.check(scen.until(lambda: fu.stats()["closed"] >= 1, 3),
             "still open %.1f s after an answer that said 4 s" %
             (time.monotonic() - t0))
    it.check(time.monotonic() - t0 <= 4.5, "closed %.2f s after the "
             "answer; want about 3.5 s" % (time.monotonic() - t0))


@scenario
@slow
def health_own_resets_no_blame(t):
    """A query waiting on a slow upstream (2.5 s) survives three changes of the route to it within its 8 s deadline (each replaces the connection and resends it): dnsfwd's own resets do not count against it, and it is answered."""
    svc = __import__("scen_service")

    def body():
        fu = t.fakeup()
        fu.rule("flap.example.", delay_ms=2500)
        d = t.dnsfwd(*it.tls_up(fu), "--timeout", "8000")
        it.expect_a(it.ask_udp(d.port, "warm.example."), it.GOOD_ADDR,
                    "warm-up")
        box = {}
        th = threading.Thread(target=lambda: box.update(
            r=it.ask_udp(d.port, "flap.example.", timeout=9)))
        th.start()
        for src in ("127.0.0.2", "127.0.0.1", "127.0.0.2"):
            time.sleep(0.7)
            svc.move_local_route(src)
        th.join(10)
        r = box.get("r")
        it.check(r is not None, "no result for the query")
        it.expect_a(r, it.GOOD_ADDR, "query through three route changes")
        sent = fu.count("flap.example.")
        t.note("the upstream saw %d copies; %d network changes logged" % (
            sent, len(d.grep("network changed"))))
        it.check(len(d.grep("network changed")) >= 3, "only %d network "
                 "changes noticed: %s" % (len(d.grep("network changed")),
                                          d.tail(6)))
    svc.in_netns(body)


@scenario
def health_netchange_during_handshake(t):
    """The route to the only upstream moves while dnsfwd's first connection is stuck in its TLS handshake (the server accepted but never answers the ClientHello): that dial is dropped at once (its socket closed, seen with ss) and a new one made, and the query is answered within 2 s of the change, not when the dial is judged slow (half the 8 s timeout)."""
    svc = __import__("scen_service")

    def established():
        out = subprocess.run(["ss", "-Htn", "state", "established",
                              "dst", "127.0.0.1:%d" % fu.port],
                             capture_output=True, text=True).stdout
        return [ln for ln in out.splitlines() if ln.strip()]

    def body():
        nonlocal fu
        fu = t.fakeup()
        fu.set(mode="stall", budget=1)
        d = t.dnsfwd(*it.tls_up(fu), "--timeout", "8000")
        box = {}
        th = threading.Thread(target=lambda: box.update(
            r=it.ask_udp(d.port, "hs.example.", timeout=9)))
        th.start()
        it.check(scen.until(lambda: fu.stats()["conns"] >= 1, 3),
                 "no dial within 3 s of the query: %s" % fu.stats())
        time.sleep(0.3)
        it.check(len(established()) == 1, "before the change: %s" %
                 established())
        t0 = time.monotonic()
        svc.move_local_route("127.0.0.2")
        th.join(10)
        took = time.monotonic() - t0
        r = box.get("r")
        it.check(r is not None, "no result for the query")
        it.expect_a(r, it.GOOD_ADDR, "query over the new connection")
        it.check(took <= 2.0, "answered %.2f s after the route change; want "
                 "within 2 s, not at the slow-dial judgement" % took)
        it.check(fu.stats()["handshakes"] == 1 and fu.stats()["conns"] == 2,
                 "want the stalled dial and one more, with one handshake: "
                 "%s" % fu.stats())
        it.check(scen.until(lambda: len(established()) == 1, 2),
                 "the stalled dial was not closed: %s" % established())
    fu = None
    svc.in_netns(body)


@scenario
def health_fastopen_syn_data_dropped(t):
    """A path that drops SYNs carrying data (an nftables rule on input in a namespace of its own, net.ipv4.tcp_fastopen=3): after the server handed out a cookie, the reconnect's SYN with the ClientHello is lost (the rule counts it, TcpExt TCPFastOpenActiveFail rises), the kernel sends the SYN again without data after its 1 s timer and the query is answered within 3 s; the kernel would go on sending data in every reconnect's SYN (the plain SYN got the cookie back), so dnsfwd turns Fast Open off for that upstream: the next two reconnects are plain, answered within 0.5 s, and no other SYN with data reaches the rule."""
    svc = __import__("scen_service")

    def nft(*args):
        subprocess.run(["nft", *args], check=True, capture_output=True)

    def dropped():
        out = subprocess.run(["nft", "list", "chain", "inet", "synd", "in"],
                             capture_output=True, text=True).stdout
        m = re.search(r"counter packets (\d+)", out)
        return int(m.group(1)) if m else -1

    def body():
        svc.sysctl("net/ipv4/tcp_fastopen", "3")
        fu = t.fakeup(fastopen=True)
        d = t.dnsfwd(*it.tls_up(fu), "--timeout", "4000")
        it.expect_a(it.ask_udp(d.port, "cookie.example."), it.GOOD_ADDR,
                    "the query that gets the cookie")
        nft("add", "table", "inet", "synd")
        # On input: a drop on output is an error the sender sees at once,
        # and Linux then sends a plain SYN straight away; a path's drop
        # is silent.
        nft("add", "chain", "inet", "synd", "in",
            "{ type filter hook input priority 0 ; }")
        nft("add", "rule", "inet", "synd", "in", "tcp", "dport",
            str(fu.port), "tcp", "flags", "&", "(syn|ack)", "==", "syn",
            "ip", "length", ">", "100", "counter", "drop")
        before = tfo_counters()
        # Under the kernel's 1 s SYN timer, with room for a handshake.
        for i, most in enumerate((3.0, 0.9, 0.9)):
            fu.close_all(graceful=True)
            time.sleep(0.1)
            r = it.ask_udp(d.port, "nosyndata%d.example." % i, timeout=5)
            it.expect_a(r, it.GOOD_ADDR, "query %d over the reconnect" % i)
            it.check(r.elapsed <= most, "query %d answered %.2f s after it "
                     "was asked, want within %.1f s" % (i, r.elapsed, most))
            t.note("query %d: %.2f s" % (i, r.elapsed))
        delta = {k: v - before.get(k, 0) for k, v in tfo_counters().items()}
        t.note("dropped SYNs with data: %d; %s" % (dropped(), delta))
        it.check(dropped() == 1, "%d SYNs with data reached the rule, want "
                 "1" % dropped())
        it.check(delta.get("TCPFastOpenActiveFail", 0) == 1, "the kernel "
                 "counted %d failed Fast Opens, want 1: %s" % (
                     delta.get("TCPFastOpenActiveFail", 0), delta))
        d.stop_and_check()
    svc.in_netns(body)


@scenario
def health_notify_status(t):
    """Under systemd (NOTIFY_SOCKET), STATUS= tells what the daemon is doing: the upstream in use and its round-trip time, the queries answered and the share from the cache, and the last error (an upstream refusing connections); never a query name, and nothing new while nothing changes."""
    svc = __import__("scen_service")
    fu, dead = t.fakeup(), t.fakeup()
    dead.refuse()
    ns, val = svc._notify_socket(t, False)
    try:
        env = dict(svc._NO_NOTIFY, NOTIFY_SOCKET=val)
        d = t.dnsfwd(*it.tls_up(dead), *it.tls_up(fu, ca=False),
                     "--timeout", "1500", env=env, wait_ready=False)
        svc._notes(ns, 10, until="READY=1")
        for i in range(3):
            it.expect_a(it.ask_udp(d.port, "secret-name%d.example." % i))
        it.expect_a(it.ask_udp(d.port, "secret-name0.example."))
        got = svc._notes(ns, 7)
        st = [ln for _, lines in got for ln in lines
              if ln.startswith("STATUS=")]
        it.check(st, "no STATUS= within 7 s: %s" % got)
        last = st[-1]
        t.note(last)
        want = ["u1 127.0.0.1:%d" % fu.port, "4 answered", "25% from the "
                "cache", "last error: u0 127.0.0.1:%d" % dead.port]
        it.check(all(w in last for w in want), "STATUS %r lacks one of %s" %
                 (last, want))
        it.check(not any("secret" in s for s in st), "a query name in the "
                 "status: %s" % st)
        again = svc._notes(ns, 5.5)
        it.check(not [ln for _, lines in again for ln in lines
                      if ln.startswith("STATUS=")], "STATUS= sent again with "
                 "nothing changed: %s" % again)
    finally:
        ns.close()


def tfo_counters():
    """TcpExt TCPFastOpen* counters of the calling thread's namespace."""
    with open("/proc/thread-self/net/netstat") as f:
        rows = [ln.split() for ln in f if ln.startswith("TcpExt:")]
    return {k: int(v) for k, v in zip(rows[0][1:], rows[1][1:])
            if k.startswith("TCPFastOpen")}


@scenario
def health_fastopen(t):
    """TCP Fast Open, in a namespace of its own with net.ipv4.tcp_fastopen=3: a reconnect to a server that handed out a cookie carries data in its SYN (TcpExt TCPFastOpenActive rises) and answers; a server without Fast Open still answers; --no-fastopen never sends data in a SYN."""
    svc = __import__("scen_service")

    def reconnect_twice(fu, *extra):
        d = t.dnsfwd(*it.tls_up(fu), "--timeout", "2000", *extra)
        before = tfo_counters()
        for i in range(3):
            it.expect_a(it.ask_udp(d.port, "tfo%d.example." % i), it.GOOD_ADDR,
                        "query %d" % i)
            fu.close_all(graceful=True)
            time.sleep(0.1)
        after = tfo_counters()
        d.stop_and_check()
        return {k: after.get(k, 0) - before.get(k, 0) for k in after}

    def body():
        svc.sysctl("net/ipv4/tcp_fastopen", "3")
        delta = reconnect_twice(t.fakeup(fastopen=True))
        t.note("Fast Open server: %s" % delta)
        it.check(delta.get("TCPFastOpenActive", 0) >= 1, "no connection "
                 "sent data in its SYN to a Fast Open server: %s" % delta)
        delta = reconnect_twice(t.fakeup())
        t.note("plain server: %s" % delta)
        delta = reconnect_twice(t.fakeup(fastopen=True), "--no-fastopen")
        it.check(delta.get("TCPFastOpenActive", 0) == 0, "--no-fastopen "
                 "sent data in a SYN: %s" % delta)
    svc.in_netns(body)

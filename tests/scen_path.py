"""dnsfwd integration scenarios: a real path, through the emulator.

dnsfwd and the client in namespace a, fake DoT upstreams in namespace b,
joined by bench/pathemu (tests/pathemu.py) with a 30 ms round trip per
path (issue 16, "Tests"):

  path_lost_segment_other_upstream  a blackholed connection holds back no
                                    answer on another
  path_hedge_after_attempt_timeout  a second copy after the attempt
                                    timeout, its answer delivered
  path_hedge_budget_slow_path       a path that turns slow costs no more
                                    second copies than the budget
  path_fastopen_saves_round_trip    a reconnect takes Fast Open and costs
                                    a round trip less
  path_slow_steady_outlier_waited   an answer 20 % late on a steady
                                    300 ms path is not an attempt timeout
  path_nagle_upstream_spread        queries close together go on
                                    connections of their own, so a server
                                    that leaves Nagle on holds no answer

Each scenario runs its body on a thread moved into namespace a, so the
dnsfwd it starts and the client sockets it opens live there; fakeup is
started from a thread in namespace b (its listening socket and every
thread it starts stay there) and binds that path's b address.  Each is
skipped, and counted, when a Link cannot be made (not root, no
/dev/net/tun, bench/pathemu not built).  The bounds leave room for two
busy cores: tens of milliseconds over the path's own figures, never as
much as what they rule out (TCP's retransmission, a deadline).
"""
import math
import statistics
import threading
import time

import dns.rcode

import fakeup
import pathemu
import scen
import scen_health
import scen_service

it = None                  # the integration module, set by register()
_reg = scen.Registry(__name__)
scenario, timed = _reg.scenario, _reg.timed


def register(mod):
    _reg.register(mod)


RTT_MS = 30                 # each path's round trip: 15 ms each way
ATTEMPT_MIN_MS = 100        # health.c: the attempt timeout's floor
HEDGE_EVERY, HEDGE_BURST = 20, 10   # mux.c: the hedge budget


# ---------------------------------------------------------------- helpers

def _on_path(t, paths, body, timeout=150):
    """Makes a Link of `paths` paths, each with a 30 ms round trip, runs
    body(link) in namespace a, and stops the daemons and fakeups it
    started while the link is still up; Skip when no Link can be made."""
    why = pathemu.unavailable()
    if why:
        raise it.Skip("no emulated path: %s" % why)
    link = pathemu.Link(paths=paths)
    errs = []
    try:
        for p in link.path:
            p.set(delay_ms=RTT_MS / 2)
        return link.in_ns("a", body, link, timeout=timeout)
    finally:
        for d in t.daemons:
            if d.proc is not None and not d.checked:
                try:
                    d.stop_and_check()
                except it.Fail as e:
                    errs.append(str(e))
        for fu in t.ups:
            fu.stop()
        link.close()
        if errs:
            raise it.Fail("; ".join(errs))


def _fakeup(t, link, path, **kw):
    """A fakeup in namespace b, listening on path's b address."""
    return link.in_ns("b", lambda: t.fakeup(host=path.b_addr, **kw))


def _up(fu, path, ca=True):
    return it.tls_up(fu, ca=ca, host=path.b_addr)


def _attempt_ms(u):
    """The attempt timeout health.c gives an upstream of line u: srtt +
    4 x rttvar, the variance term at least srtt / 2, at least 100 ms
    (None: a daemon without these lines, held to the floor)."""
    if not u:
        return ATTEMPT_MIN_MS
    srtt, rttvar = float(u["srtt_ms"]), float(u["rttvar_ms"])
    if srtt == 0:
        return 1000.0
    return max(ATTEMPT_MIN_MS, math.ceil(srtt + max(4 * rttvar, srtt / 2)))


def _ms(x):
    return x * 1000.0


def _good(r):
    return (r is not None and r.msg is not None and
            r.msg.rcode() == dns.rcode.NOERROR and r.addrs() == [it.GOOD_ADDR])


def _warm(d, prefix, n):
    """n queries one after another; their latencies in ms."""
    out = []
    for i in range(n):
        r = it.ask_udp(d.port, "%s%d.example." % (prefix, i), timeout=3)
        it.expect_a(r, it.GOOD_ADDR, "warm-up %d" % i)
        out.append(_ms(r.elapsed))
    return out


def _pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")


def _no_failures(res, what):
    bad = [(name, r.describe()) for _, name, r in res if not _good(r)]
    it.check(not bad, "%s: %d of %d queries not answered NOERROR: %s" % (
        what, len(bad), len(res), bad[:4]))


# ---------------------------------------------------------------- scenarios

@scenario
@timed
def path_lost_segment_other_upstream(t):
    """Two upstreams, each behind its own 30 ms path, a query every 10 ms: the path of the one in use blackholed for 400 ms, the answers through the other keep their latency (max within RTT + 170 ms, short of TCP's 200 ms retransmission and a round trip) and the queries caught on the blackholed one are answered within an attempt timeout + RTT + 100 ms via the other (second copies), not after TCP's retransmission, and together: the timeout that demotes it sends on every query waiting there."""
    hole_ms = 400

    def body(link):
        p0, p1 = link.path
        fus = [_fakeup(t, link, p0), _fakeup(t, link, p1)]
        d = t.dnsfwd(*_up(fus[0], p0), *_up(fus[1], p1, ca=False),
                     "--timeout", "3000")
        warm = _warm(d, "w", 12)
        ups = scen_health.upstream_lines(d)
        att = {k: _attempt_ms(v) for k, v in ups.items()}
        t.note("warm-up p50 %.1f ms; upstreams %s; attempt timeouts %s" % (
            statistics.median(warm), {k: (v["srtt_ms"], v["rttvar_ms"])
                                       for k, v in ups.items()}, att))
        before = d.stats()
        box = {}

        def blackhole():
            # The upstream in use: the one that saw the latest queries.
            now = time.monotonic()
            recent = []
            for fu in fus:
                with fu.lock:
                    recent.append(sum(1 for q in fu.queries
                                      if q["t"] >= now - 0.3))
            k = 0 if recent[0] >= recent[1] else 1
            box.update(k=k, recent=recent, start=time.monotonic())
            link.path[k].set(blackhole=1)
            time.sleep(hole_ms / 1000.0)
            link.path[k].set(blackhole=0)
            box["end"] = time.monotonic()

        # Every 10 ms: queries go elsewhere once u_k's connections look
        # stalled (within about 40 ms), so a slower stream leaves one or
        # two caught there, too few to tell one failover from several.
        res, t0 = scen_health.stream(d.port, 3.0, 0.01, "s", timeout=3.5,
                          at={1.0: blackhole})
        after = d.stats()
        it.check("end" in box, "the blackhole never ran")
        k = box["k"]
        held, other = fus[k], fus[1 - k]
        seen = {}
        with other.lock:
            for q in other.queries:
                seen.setdefault(q["qname"], q["t"])
        pre = [_ms(r.elapsed) for s, _, r in res
               if s < box["start"] - 0.1 and _good(r)]
        direct, caught, rescued = [], [], []
        for s, name, r in res:
            if not (box["start"] - RTT_MS / 1000.0 <= s <= box["end"]):
                continue
            # A first copy reaches the other upstream after one way
            # (15 ms); a second copy once u_k is demoted, after an
            # attempt timeout, or sent just before: counted as first
            # there, it is still within the bound for those.
            first_there = name in seen and seen[name] - s < 0.040
            ms = _ms(r.elapsed) if r.msg is not None else None
            (direct if first_there else caught).append((name, ms))
            # Not answered by u_k before the hole: sent on to the other.
            if not first_there and ms is not None and (
                    s >= box["start"] or ms > RTT_MS + 40):
                rescued.append(ms)
        hedges = after.get("hedges", 0) - before.get("hedges", 0)
        won = after.get("hedges_won", 0) - before.get("hedges_won", 0)
        dmax = max([x for _, x in direct if x is not None] or [0])
        cmax = max([x for _, x in caught if x is not None] or [0])
        att_k = att.get("u%d" % k, ATTEMPT_MIN_MS)
        bound_c = att_k + RTT_MS + 100
        rmin = min(rescued or [0])
        t.note("u%d blackholed %d ms (queries in the 0.3 s before: %s); "
               "before: p50 %.1f max %.1f ms over %d; during: %d answered "
               "via u%d first, max %.1f ms; %d caught on u%d, max %.1f ms "
               "(bound %.0f), %d of them sent on, the fastest in %.1f ms; "
               "hedges %d, won %d; path stats %s" % (
                   k, hole_ms, box["recent"], _pct(pre, 0.5),
                   max(pre or [0]), len(pre), len(direct), 1 - k, dmax,
                   len(caught), k, cmax, bound_c, len(rescued), rmin,
                   hedges, won, link.path[k].stats()))
        _no_failures(res, "blackhole of u%d" % k)
        it.check(caught, "no query was caught on the blackholed u%d" % k)
        it.check(cmax <= bound_c and cmax < hole_ms, "a query caught on "
                 "the blackholed u%d waited %.1f ms, want within its "
                 "attempt timeout + RTT + 100 ms (%.0f ms), before the "
                 "path came back (%d ms): %s" % (k, cmax, bound_c, hole_ms,
                                                 caught))
        # Each sent on at its own attempt timeout, none would be answered
        # sooner than that and a round trip; the timeout that demoted u_k
        # sent on together every query waiting there, the last ones sent
        # well within their own.
        it.check(rescued and rmin <= att_k + RTT_MS / 2, "of the %d "
                 "queries caught on u%d and answered by u%d, the fastest "
                 "took %.1f ms, want within %.0f ms (its own attempt "
                 "timeout and half a round trip): not sent on when u%d was "
                 "demoted" % (len(rescued), k, 1 - k, rmin,
                              att_k + RTT_MS / 2, k))
        it.check(len(direct) >= 5, "only %d queries went to u%d first "
                 "while u%d was blackholed" % (len(direct), 1 - k, k))
        # What a query held behind the blackhole would wait is TCP's
        # retransmission, 200 ms at the least, and a round trip; the rest
        # is slack for a loaded CI (two cores, three builds at once),
        # seen at 107 ms.
        it.check(dmax <= RTT_MS + 170, "a query answered by u%d, its first "
                 "copy sent there, waited %.1f ms while u%d was blackholed "
                 "(want <= %d ms): %s" % (1 - k, dmax, k, RTT_MS + 170,
                                          direct))
        it.check(hedges >= 1 and won >= 1, "hedges %d, hedges_won %d: "
                 "want second copies sent and winning" % (hedges, won))
        d.stop_and_check()
        t.note("the blackholed upstream saw %d of the stream's queries" %
               held.nqueries("s"))
    _on_path(t, 2, body)


@scenario
@timed
def path_hedge_after_attempt_timeout(t):
    """One upstream behind a 30 ms path drops the first query for a name: the client gets the answer after the attempt timeout (srtt + 4 x rttvar, the variance term at least srtt / 2, at least 100 ms) and within it + RTT + 80 ms, from a second copy over a second connection; hedges and hedges_won rise by 1."""
    def body(link):
        p = link.path[0]
        fu = _fakeup(t, link, p)
        df = fakeup.DropFirst(1, names=["prime.example.",
                                        "popular.example."])
        fu.set(drop_first=df)
        d = t.dnsfwd(*_up(fu, p), "--timeout", "3000")
        warm = _warm(d, "w", 10)
        # The first second copy has to dial the second connection (TCP
        # and TLS: two round trips more); it is kept warm after that.
        r = it.ask_udp(d.port, "prime.example.", timeout=3)
        it.expect_a(r, it.GOOD_ADDR, "first dropped name")
        prime_ms = _ms(r.elapsed)
        warm += _warm(d, "v", 6)
        u = scen_health.upstream_lines(d).get("u0", {})
        att = _attempt_ms(u)
        before = d.stats()
        r = it.ask_udp(d.port, "popular.example.", timeout=3)
        after = d.stats()
        it.expect_a(r, it.GOOD_ADDR, "dropped name")
        got = _ms(r.elapsed)
        hedges = after.get("hedges", 0) - before.get("hedges", 0)
        won = after.get("hedges_won", 0) - before.get("hedges_won", 0)
        conns = [q["conn"] for q in fu.records("popular.example.")]
        t.note("warm-up p50 %.1f ms max %.1f; srtt %s rttvar %s ms: "
               "attempt timeout %.0f ms; answer after %.1f ms (bound %.0f);"
               " the first drop, with a dial, %.1f ms; hedges +%d, won +%d;"
               " copies on connections %s" % (
                   statistics.median(warm), max(warm), u.get("srtt_ms"),
                   u.get("rttvar_ms"), att, got, att + RTT_MS + 80, prime_ms,
                   hedges, won, conns))
        it.check(len(df.dropped) == 2, "%d queries dropped, want 2" %
                 len(df.dropped))
        it.check(att - 5 <= got <= att + RTT_MS + 80, "the dropped name "
                 "answered after %.1f ms, want after its %.0f ms attempt "
                 "timeout and within a round trip (+80 ms) of it" % (
                     got, att))
        it.check(hedges == 1 and won == 1, "hedges +%d, hedges_won +%d, "
                 "want +1 each" % (hedges, won))
        it.check(len(conns) == 2 and conns[0] != conns[1], "copies went "
                 "over connections %s, want two different ones" % conns)
        d.stop_and_check()
    _on_path(t, 1, body)


@scenario
@timed
def path_nagle_upstream_spread(t):
    """Two upstreams that leave Nagle on (fakeup nagle=True), each behind a 30 ms path of its own, and a dnsfwd for each, sent a query every 6 ms at the same time: one with --connections 1, one with the default. The default puts a query on a connection of its own, so no answer waits at the server for the ACK of the one before: its median is at least 8 ms below the single connection's (about RTT/2 apart when idle), over 3 connections or more; SIGUSR1 gives its path_ms, TCP's round trip, as the path's (25-60 ms), not the answers'."""
    GAP = 0.006     # five in flight: the default's 8 seldom all busy

    def body(link):
        ds, fus = [], []
        for p, extra in zip(link.path, (["--connections", "1"], [])):
            fus.append(_fakeup(t, link, p, nagle=True))
            ds.append(t.dnsfwd(*_up(fus[-1], p), "--timeout", "3000",
                               *extra))
            _warm(ds[-1], "w", 5)

        def both(seconds, prefix):
            out = [None, None]

            def one(k):
                out[k] = scen_health.stream(ds[k].port, seconds, GAP, prefix)[0]
            ths = [threading.Thread(target=one, args=(k,)) for k in (0, 1)]
            for th in ths:
                th.start()
            for th in ths:
                th.join(seconds + 30)
            return out
        # The pool opens one connection at a time while queries share.
        both(1.5, "g")
        res = both(2.0, "s")
        p50, conns = [], []
        for k in (0, 1):
            _no_failures(res[k], "the stream to u%d" % k)
            lat = [_ms(r.elapsed) for _, _, r in res[k]]
            p50.append(_pct(lat, 0.5))
            conns.append(len({q["conn"] for _, name, _ in res[k]
                              for q in fus[k].records(name)}))
            t.note("%s: %d queries %d ms apart, p50 %.1f ms, p90 %.1f, max "
                   "%.1f, over %d connections" % (
                       ("--connections 1", "the default")[k], len(lat),
                       GAP * 1000, p50[k], _pct(lat, 0.9), max(lat),
                       conns[k]))
        u = scen_health.upstream_lines(ds[1]).get("u0", {})
        path = float(u.get("path_ms", 0))
        t.note("the default's upstream line: %s" % u)
        it.check(p50[1] <= p50[0] - 8, "p50 %.1f ms over connections of "
                 "their own, %.1f over one: want 8 ms or more below, the "
                 "server's Nagle wait" % (p50[1], p50[0]))
        it.check(conns[0] == 1 and conns[1] >= 3, "queries went over %d and "
                 "%d connections, want 1 and 3 or more" % tuple(conns))
        it.check(RTT_MS - 5 <= path <= 2 * RTT_MS, "path_ms %.1f, want the "
                 "path's %d ms round trip" % (path, RTT_MS))
        for d in ds:
            d.stop_and_check()
    _on_path(t, 2, body)


@scenario
@timed
def path_lossy_shares_one_connection(t):
    """An upstream behind a 30 ms path, a query every 6 ms: without loss they go over connections of their own (3 or more); once the path loses 5 % each way, attempts time out while TCP retransmits, and the queries of the last 3 s share the first connection: half or more of their first copies on one (spreading, about 1 in 8), the others on the spare or the next while the first is stalled; second copies go where they may, so a lost segment is found by the ones behind it within a round trip, not TCP's timer; every query is answered."""
    gap = 0.006

    def conns(fu, res):
        """The connection each query's first copy came over."""
        return [fu.records(name)[0]["conn"] for _, name, _ in res
                if fu.records(name)]

    def body(link):
        p = link.path[0]
        fu = _fakeup(t, link, p)
        d = t.dnsfwd(*_up(fu, p), "--timeout", "4000")
        _warm(d, "w", 5)
        clean, _ = scen_health.stream(d.port, 2.0, gap, "c")
        p.set(loss=0.05)
        lossy, t0 = scen_health.stream(d.port, 7.0, gap, "l", timeout=4.5)
        late = [x for x in lossy if x[0] > t0 + 4.0]
        first = conns(fu, clean)
        last = conns(fu, late)
        top = max(last.count(c) for c in set(last)) if last else 0
        u = scen_health.upstream_lines(d).get("u0", {})
        t.note("no loss: %d queries over %d connections; 5%% loss, last "
               "3 s: %d queries over %d connections, %d on the busiest; "
               "%s" % (len(clean), len(set(first)), len(last),
                       len(set(last)), top, u))
        _no_failures(clean + lossy, "the streams")
        it.check(len(set(first)) >= 3, "without loss, %d connections, want "
                 "3 or more" % len(set(first)))
        it.check(top >= 0.5 * len(last), "with loss, the last 3 s went "
                 "over %d connections, %d of %d on the busiest: want half "
                 "or more on one" % (len(set(last)), top, len(last)))
        d.stop_and_check()
    _on_path(t, 1, body)


def _hedge_counts(st, u):
    """(hedges, hedges_unpaid, timeouts) of a stats dict and an upstream
    line; 0 for what a daemon does not count."""
    return (st.get("hedges", 0), st.get("hedges_unpaid", 0),
            int(u.get("timeouts", 0)))


@scenario
@timed
def path_hedge_budget_slow_path(t):
    """A query every 15 ms through one path whose round trip jumps from 30 to 300 ms, a second connection up (a dropped query's copy dialled it): the jump's attempt timeouts ask for more second copies than the budget holds, and in the second after it no more go out than the 10 saved + 1 per 20 queries sent since (the rest counted unpaid); every query is answered, and the smoothed RTT catches up (>= 250 ms)."""
    gap = 0.015

    def body(link):
        p = link.path[0]
        fu = _fakeup(t, link, p)
        fu.set(drop_first=fakeup.DropFirst(1, names=["prime.example."]))
        d = t.dnsfwd(*_up(fu, p), "--timeout", "4000")
        # The dropped query's second copy dials the second connection,
        # kept while second copies are sent: at the jump, copies have a
        # connection to go on, and only the budget holds them back.
        it.expect_a(it.ask_udp(d.port, "prime.example.", timeout=3),
                    it.GOOD_ADDR, "dropped name")
        warm = _warm(d, "w", 25)     # saves the budget up to its 10
        mid = {}

        def slow_down():
            # The look is timed from the jump itself: under load the
            # SIGUSR1 before it can take most of a second, and a look at
            # a fixed offset then finds no attempt timed out yet.
            mid["at_jump"] = d.stats()
            mid["jump"] = time.monotonic()
            p.set(delay_ms=150)
            time.sleep(1.0)
            mid["stats"] = d.stats()
            # After: the hedges counted may be for queries sent until the
            # SIGUSR1 was handled, and those earned their share too.
            mid["look"] = time.monotonic()
        res, t0 = scen_health.stream(d.port, 8.0, gap, "b", timeout=4.5,
                          at={2.0: slow_down})
        u = scen_health.upstream_lines(d).get("u0", {})
        n = len(res)

        def delta(k):
            return mid["stats"].get(k, 0) - mid["at_jump"].get(k, 0)
        hedges, unpaid = delta("hedges"), delta("hedges_unpaid")
        # Each query of the stream is one first copy, each earning 1/20
        # of a second; the saved budget is at most 10.
        firsts = sum(1 for s, _, _ in res
                     if mid["jump"] - 0.1 <= s <= mid["look"])
        budget = HEDGE_BURST + firsts // HEDGE_EVERY + 1
        lat_fast = [_ms(r.elapsed) for s, _, r in res
                    if s < mid["jump"] and _good(r)]
        lat_slow = [_ms(r.elapsed) for s, _, r in res
                    if s > t0 + 5.0 and _good(r)]
        t.note("warm-up p50 %.1f ms; %d queries; at 30 ms p50 %.1f max "
               "%.1f, at 300 ms (last 3 s) p50 %.1f max %.1f; in the "
               "second after the jump hedges %d (budget %d for %d first "
               "copies), unpaid %d; at the end srtt %s rttvar %s ms, "
               "timeouts %s" % (
                   statistics.median(warm), n, _pct(lat_fast, 0.5),
                   max(lat_fast or [0]), _pct(lat_slow, 0.5),
                   max(lat_slow or [0]), hedges, budget, firsts, unpaid,
                   u.get("srtt_ms"), u.get("rttvar_ms"), u.get("timeouts")))
        _no_failures(res, "path turned slow")
        it.check(hedges >= 1, "no second copy at the jump (a second "
                 "connection was up): hedges +%d, unpaid +%d" % (
                     hedges, unpaid))
        it.check(hedges <= budget, "%d second copies in the second after "
                 "the jump, over the budget of %d (%d first copies)" % (
                     hedges, budget, firsts))
        it.check(unpaid >= 1, "no second copy held back in the second "
                 "after the jump (%d sent): the jump did not ask for more "
                 "than the budget, so it was not tested" % hedges)
        it.check(float(u.get("srtt_ms", 0)) >= 250, "srtt %s ms after 6 s "
                 "of a 300 ms path" % u.get("srtt_ms"))
        d.stop_and_check()
    _on_path(t, 1, body)


@scenario
@timed
def path_slow_steady_outlier_waited(t):
    """On a steady 300 ms path (the smoothed RTT caught up after 3 s of a query every 25 ms), an answer 60 ms (20 %) later than usual is waited for: no attempt timeout, no second copy, the upstream not demoted."""
    def body(link):
        p = link.path[0]
        p.set(delay_ms=150)
        fu = _fakeup(t, link, p)
        fu.rule("outlier.example.", delay_ms=60)
        d = t.dnsfwd(*_up(fu, p), "--timeout", "4000")
        res, _ = scen_health.stream(d.port, 3.0, 0.025, "st", timeout=4.5)
        _no_failures(res, "steady 300 ms path")
        time.sleep(0.5)
        u0 = scen_health.upstream_lines(d).get("u0", {})
        h0 = _hedge_counts(d.stats(), u0)
        r = it.ask_udp(d.port, "outlier.example.", timeout=4)
        it.expect_a(r, it.GOOD_ADDR, "the late answer")
        time.sleep(0.3)
        u1 = scen_health.upstream_lines(d).get("u0", {})
        h1 = _hedge_counts(d.stats(), u1)
        demoted = d.grep("no answer within the attempt timeout")
        t.note("before: srtt %s rttvar %s ms (attempt timeout %.0f ms); "
               "the answer 60 ms late after %.1f ms; hedges +%d, unpaid "
               "+%d, timeouts +%d; %d demotions logged" % (
                   u0.get("srtt_ms"), u0.get("rttvar_ms"), _attempt_ms(u0),
                   _ms(r.elapsed), h1[0] - h0[0], h1[1] - h0[1],
                   h1[2] - h0[2], len(demoted)))
        it.check(h1 == h0, "an answer 60 ms late on a 300 ms path was an "
                 "attempt timeout (srtt %s, rttvar %s ms: %.0f ms): hedges, "
                 "unpaid, timeouts %s -> %s" % (
                     u0.get("srtt_ms"), u0.get("rttvar_ms"),
                     _attempt_ms(u0), h0, h1))
        d.stop_and_check()
    _on_path(t, 1, body)


def _tfo_active():
    """TcpExt TCPFastOpenActive of the calling thread's namespace."""
    return scen_health.tfo_counters().get("TCPFastOpenActive", 0)


@scenario
@timed
def path_fastopen_saves_round_trip(t):
    """With net.ipv4.tcp_fastopen=3 on both sides of a 30 ms path and a Fast Open server, the first query after the server closed the connection goes over a reconnect that takes Fast Open (TCPFastOpenActive rises each time) and costs about one round trip less (the fastest of six at least 15 ms less) than with --no-fastopen, which never sends data in a SYN."""
    rounds = 6

    def reconnects(d, fu, tag):
        it.expect_a(it.ask_udp(d.port, "%s-first.example." % tag, timeout=3),
                    it.GOOD_ADDR, "%s: first query" % tag)
        before = _tfo_active()
        out = []
        for i in range(rounds):
            fu.close_all(graceful=True)
            time.sleep(0.3)        # the close reaches dnsfwd (one way)
            r = it.ask_udp(d.port, "%s%d.example." % (tag, i), timeout=3)
            it.expect_a(r, it.GOOD_ADDR, "%s: query %d after a reconnect"
                        % (tag, i))
            out.append(_ms(r.elapsed))
        return out, _tfo_active() - before

    def body(link):
        p = link.path[0]
        fastopen = ("net/ipv4/tcp_fastopen", "3")
        scen_service.sysctl(*fastopen)
        link.in_ns("b", scen_service.sysctl, *fastopen)
        fu = _fakeup(t, link, p, fastopen=True)
        d = t.dnsfwd(*_up(fu, p), "--timeout", "3000")
        fo, fo_active = reconnects(d, fu, "fo")
        d.stop_and_check()
        t.note("Fast Open: first query after a reconnect %s ms, median "
               "%.1f; TCPFastOpenActive +%d" % (
                   ["%.1f" % x for x in fo], statistics.median(fo),
                   fo_active))
        it.check(fo_active >= rounds - 1, "TCPFastOpenActive rose by %d "
                 "over %d reconnects to a Fast Open server" % (fo_active,
                                                              rounds))
        d = t.dnsfwd(*_up(fu, p), "--timeout", "3000", "--no-fastopen")
        plain, plain_active = reconnects(d, fu, "nofo")
        d.stop_and_check()
        # The fastest of each: load only adds (the fakeup's handshakes
        # starve when make check runs everything), never takes away the
        # round trip a reconnect costs, so the best shows the path's.
        gain = min(plain) - min(fo)
        t.note("--no-fastopen: %s ms, median %.1f; TCPFastOpenActive +%d; "
               "Fast Open saves %.1f ms at the fastest (RTT %d ms)" % (
                   ["%.1f" % x for x in plain], statistics.median(plain),
                   plain_active, gain, RTT_MS))
        it.check(plain_active == 0, "--no-fastopen sent data in %d SYNs" %
                 plain_active)
        it.check(gain >= RTT_MS / 2, "Fast Open saved %.1f ms at the fastest "
                 "(%.1f vs %.1f), want about one %d ms round trip" % (
                     gain, min(fo), min(plain), RTT_MS))
    _on_path(t, 1, body)

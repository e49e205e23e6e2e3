"""dnsfwd integration scenarios: what the DNS-over-TLS side gives away.

TLS session resumption and its counters, --no-resume, --prewarm, the
server's edns-tcp-keepalive timeout, tickets forgotten on a network
change, padding of upstream queries (RFC 7830/8467) that clients never
see, edns-tcp-keepalive towards clients (RFC 7828), no cleartext when
authentication fails (a recording proxy between dnsfwd and the
upstream), and no query names or client addresses in logs above debug.

integration.py calls register(module) with itself; the harness is used
through that module, `it`, and network-namespace helpers come from
scen_service.
"""

import re
import select
import socket
import struct
import subprocess
import threading
import time

import dns.rcode

import scen
import scen_service as svc

it = None
_reg = scen.Registry(__name__)
scenario, slow = _reg.scenario, _reg.slow


def register(mod):
    if svc.it is None:
        svc.it = mod        # its helpers, without registering its scenarios
    _reg.register(mod)


OPT_KEEPALIVE = 11
OPT_PADDING = 12
PAD_BLOCK = 128
OUR_IDLE = b"\x00\x64"         # 100 x 100 ms: dnsfwd's 10 s TCP client idle


def _opts(m):
    """[(code, data)] of the OPT of parsed message m ([] without OPT)."""
    if m is None or m.edns < 0:
        return []
    return [(int(o.otype), bytes(o.to_wire() or b"")) for o in m.options]


# ---------------------------------------------------------------- resumption

def _handshakes(t, fu, d, tag, n=3):
    """n queries, the upstream closing every connection between them."""
    it.expect_a(it.ask_udp(d.port, "%s0.example." % tag))
    for i in range(1, n):
        fu.close_all(graceful=True)
        time.sleep(0.15)
        it.expect_a(it.ask_udp(d.port, "%s%d.example." % (tag, i)))


@scenario
def priv_resume_counters(t):
    """The SIGUSR1 line counts full and resumed TLS handshakes (tls_full=, tls_resumed=) as the upstream saw them, and reconnects resume."""
    for tls_max in (None, "1.2"):
        fu = t.fakeup(tls_max=tls_max)
        d = t.dnsfwd(*it.tls_up(fu), "--timeout", "2000", "--connections",
                     "1")
        _handshakes(t, fu, d, "rc%s-" % (tls_max or "any"))
        st, ds = fu.stats(), d.stats()
        it.check(st["resumed"] >= 1, "TLS %s: no resumed handshake among "
                 "%d" % (tls_max or "any", st["handshakes"]))
        it.check(ds.get("tls_full") == st["handshakes"] - st["resumed"] and
                 ds.get("tls_resumed") == st["resumed"],
                 "TLS %s: dnsfwd counts tls_full=%s tls_resumed=%s, the "
                 "upstream saw %d handshakes, %d resumed" % (
                     tls_max or "any", ds.get("tls_full"),
                     ds.get("tls_resumed"), st["handshakes"], st["resumed"]))


@scenario
def priv_no_resume(t):
    """With --no-resume every reconnect is a full TLS handshake: the upstream resumes none, and tls_resumed stays 0."""
    for tls_max in (None, "1.2"):
        fu = t.fakeup(tls_max=tls_max)
        d = t.dnsfwd(*it.tls_up(fu), "--timeout", "2000", "--connections",
                     "1", "--no-resume")
        _handshakes(t, fu, d, "nr%s-" % (tls_max or "any"))
        st, ds = fu.stats(), d.stats()
        it.check(st["handshakes"] == 3 and st["resumed"] == 0,
                 "TLS %s, --no-resume: upstream saw %d handshakes, %d "
                 "resumed; want 3 and 0" % (tls_max or "any",
                                            st["handshakes"], st["resumed"]))
        it.check(ds.get("tls_full") == 3 and ds.get("tls_resumed") == 0,
                 "TLS %s, --no-resume: tls_full=%s tls_resumed=%s, want 3 "
                 "and 0" % (tls_max or "any", ds.get("tls_full"),
                            ds.get("tls_resumed")))


@scenario
@slow
def priv_netchange_forgets_tickets(t):
    """After a network change (the route to the upstream moves) the next handshake is a full one: the session ticket of the old network is not offered."""
    def body():
        fu = t.fakeup()
        d = t.dnsfwd(*it.tls_up(fu), "--timeout", "2000", "--connections",
                     "1")
        _handshakes(t, fu, d, "nct-", n=2)
        it.check(fu.stats()["resumed"] == 1, "precondition: the reconnect "
                 "did not resume (%s)" % fu.stats())
        svc.move_local_route()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and fu.stats()["closed"] < 2:
            time.sleep(0.02)
        it.check(fu.stats()["closed"] >= 2, "dnsfwd did not close its "
                 "connection on the network change: %s" % fu.stats())
        it.expect_a(it.ask_udp(d.port, "nct-after.example."))
        st, ds = fu.stats(), d.stats()
        it.check(st["handshakes"] == 3 and st["resumed"] == 1,
                 "after the change: upstream saw %d handshakes, %d resumed; "
                 "want 3 and still 1 (a full one)" % (st["handshakes"],
                                                      st["resumed"]))
        it.check(ds.get("tls_full") == 2 and ds.get("tls_resumed") == 1,
                 "tls_full=%s tls_resumed=%s, want 2 and 1" % (
                     ds.get("tls_full"), ds.get("tls_resumed")))

    svc.in_netns(body)


# ---------------------------------------------------------------- prewarm

def _keepalive_timer(port):
    """dnsfwd's TCP sockets to port: for each, the seconds left on the
    kernel's keepalive timer (ss -o shows timer:(keepalive,9.8sec,0)), or
    None where it does not run."""
    out = subprocess.run(["ss", "-tnoH", "state", "established", "dport",
                          "= :%d" % port], capture_output=True, text=True,
                         check=True).stdout
    left = []
    for line in out.splitlines():
        m = re.search(r"timer:\(keepalive,([0-9.]+)(ms|sec|min)", line)
        left.append(None if m is None else float(m.group(1)) *
                    {"ms": 0.001, "sec": 1, "min": 60}[m.group(2)])
    return left


@scenario
@slow
def priv_prewarm(t):
    """--prewarm opens one connection per upstream at start-up (not --connections of them) before any query, keeps it past --idle-timeout with the kernel probing it and reopens it at once when the server closes it; without --prewarm nothing is opened before a query and an idle connection closes."""
    fu1, fu2, fu3 = t.fakeup(), t.fakeup(), t.fakeup()
    d1 = t.dnsfwd(*it.tls_up(fu1), "--prewarm", "--connections", "2",
                  "--timeout", "2000")
    d2 = t.dnsfwd(*it.tls_up(fu2), "--connections", "2", "--idle-timeout",
                  "1", "--timeout", "2000")
    d3 = t.dnsfwd(*it.tls_up(fu3), "--prewarm", "--connections", "2",
                  "--idle-timeout", "1", "--timeout", "2000")
    it.check(scen.until(lambda: fu1.stats()["handshakes"] >= 1, 3),
             "--prewarm: no handshake within 3 s of start")
    time.sleep(0.5)
    it.check(fu1.stats()["conns"] == 1, "--prewarm --connections 2 opened "
             "%d connections, want 1: %s" % (fu1.stats()["conns"],
                                             fu1.stats()))
    it.check(fu1.nqueries() == 0, "queries before any client asked")
    it.check(fu2.stats()["conns"] == 0, "without --prewarm a connection "
             "was opened before any query: %s" % fu2.stats())
    it.expect_a(it.ask_udp(d1.port, "pw1.example."))
    it.check(fu1.stats()["conns"] == 1, "the query did not use the "
             "prewarmed connection: %s" % fu1.stats())
    ka = _keepalive_timer(fu1.port)
    it.check(len(ka) == 1 and ka[0] is not None and 0 < ka[0] <= 10,
             "the warm connection has no keepalive probe due within the "
             "idle timeout (10 s): %s" % ka)

    # Past --idle-timeout 1 the warm connection stays, the other goes.
    it.expect_a(it.ask_udp(d2.port, "pw2.example."))
    it.check(_keepalive_timer(fu2.port) == [None], "without --prewarm "
             "the kernel probes the connection: %s" %
             _keepalive_timer(fu2.port))
    it.check(scen.until(lambda: fu3.stats()["conns"] >= 1, 3),
             "--prewarm --idle-timeout 1: no connection at start")
    it.expect_a(it.ask_udp(d3.port, "pw3.example."))
    t_q = time.monotonic()
    s3 = fu3.stats()
    it.check(scen.until(lambda: fu2.stats()["closed"] >= 1, 3),
             "without --prewarm the idle connection was still open 3 s "
             "after its query (--idle-timeout 1)")
    time.sleep(max(0.0, t_q + 3.5 - time.monotonic()))
    it.check(fu3.stats()["closed"] == s3["closed"] and
             fu3.stats()["handshakes"] == s3["handshakes"],
             "--prewarm: the warm connection was closed or reopened within "
             "3.5 s of idling: before %s, after %s" % (s3, fu3.stats()))
    it.expect_a(it.ask_udp(d3.port, "pw3b.example."))
    it.check(fu3.stats()["conns"] == s3["conns"], "the query after the "
             "quiet spell did not use the warm connection: %s" % fu3.stats())

    # The server closes it: reopened at once, without a query.
    conns0 = fu3.stats()["conns"]
    fu3.close_all()
    t_close = time.monotonic()
    it.check(scen.until(lambda: fu3.stats()["conns"] > conns0, 2.0),
             "no new connection within 2 s of the server's close: %s" %
             fu3.stats())
    t.note("reopened %.2f s after the server's close" %
           (fu3.conn_times[-1] - t_close))
    it.check(scen.until(lambda: fu3.stats()["handshakes"] > s3["handshakes"],
                    2), "the reopened connection made no TLS handshake")
    it.check(fu3.nqueries() == 2, "the upstream saw %d queries, want 2" %
             fu3.nqueries())
    for d in (d1, d2, d3):
        it.check(d.proc.poll() is None, "a dnsfwd exited")


@scenario
@slow
def priv_prewarm_keeps_hedge_spare(t):
    """With --prewarm and one upstream, the second connection a second copy (hedge) went over stays open past --idle-timeout, beside the warm one, so that the next hedge pays no handshake: 3 s after a hedge (--idle-timeout 1) no connection has closed, and another hedge goes over the same two connections."""
    fu = t.fakeup()
    # Held long enough for the hedge's new connection to handshake on a
    # loaded machine before the first copy's answer makes it moot.
    fu.rule("slowhedge.example.", delay_ms=1000)
    # The first's answer is a round-trip sample (RFC 6298) that lifts the
    # attempt timeout to about 1.1 s: the second is held longer.
    fu.rule("slowhedge2.example.", delay_ms=3000)
    d = t.dnsfwd(*it.tls_up(fu), "--prewarm", "--idle-timeout", "1",
                 "--timeout", "6000")
    it.check(scen.until(lambda: fu.stats()["handshakes"] >= 1, 3),
             "--prewarm: no handshake within 3 s of start")
    for i in range(5):
        it.expect_a(it.ask_udp(d.port, "hw%d.example." % i), it.GOOD_ADDR,
                    "warm-up")
    before = d.stats()
    it.expect_a(it.ask_udp(d.port, "slowhedge.example.", timeout=7),
                it.GOOD_ADDR, "the query held 1 s")
    it.check(it._delta(before, d.stats(), "hedges") == 1 and
             fu.count("slowhedge.example.") == 2, "want one second copy: "
             "hedges +%d, the upstream saw %d copies" % (
                 it._delta(before, d.stats(), "hedges"),
                 fu.count("slowhedge.example.")))
    conns = sorted({q["conn"] for q in fu.records("slowhedge.example.")})
    it.check(len(conns) == 2, "both copies went over connection(s) %s" %
             conns)
    s = fu.stats()
    time.sleep(3.0)
    it.check(fu.stats()["closed"] == s["closed"], "a connection closed "
             "within 3 s of the hedge (--idle-timeout 1): before %s, after "
             "%s" % (s, fu.stats()))
    it.expect_a(it.ask_udp(d.port, "slowhedge2.example.", timeout=7),
                it.GOOD_ADDR, "the second query held 3 s")
    again = sorted({q["conn"] for q in fu.records("slowhedge2.example.")})
    it.check(again == conns and fu.stats()["handshakes"] == s["handshakes"],
             "the next hedge went over connections %s (before %s) with %d "
             "handshakes (before %d)" % (again, conns,
                                         fu.stats()["handshakes"],
                                         s["handshakes"]))


@scenario
@slow
def priv_prewarm_server_idle(t):
    """With --prewarm, a server that announces edns-tcp-keepalive 1.5 s still has its idle timeout kept: dnsfwd closes the connection at about 1 s and opens the next at once, before any query."""
    fu = t.fakeup()
    fu.set(answer_options=[(OPT_KEEPALIVE, b"\x00\x0f")])
    d = t.dnsfwd(*it.tls_up(fu), "--prewarm", "--idle-timeout", "10",
                 "--timeout", "2000")
    it.check(scen.until(lambda: fu.stats()["handshakes"] >= 1, 3),
             "--prewarm: no handshake within 3 s of start")
    it.expect_a(it.ask_udp(d.port, "pws.example."))
    t0 = time.monotonic()
    it.check(scen.until(lambda: fu.stats()["closed"] >= 1, 4), "the connection "
             "was still open 4 s after the answer (server said 1.5 s)")
    dt = time.monotonic() - t0
    it.check(dt <= 1.45, "closed %.2f s after the answer; want before the "
             "server's 1.5 s" % dt)
    it.check(scen.until(lambda: fu.stats()["conns"] >= 2, 1.0), "no connection "
             "opened within 1 s of the close: %s" % fu.stats())
    it.check(fu.nqueries() == 1, "the upstream saw %d queries, want 1" %
             fu.nqueries())
    it.check(d.proc.poll() is None, "dnsfwd exited")


@scenario
@slow
def priv_prewarm_recovers(t):
    """With --prewarm, a network change (the route to the upstream moves) replaces the warm connection at once, before any query (with a full handshake: the old network's ticket is forgotten), and an upstream that refuses connections is dialled again as its backoff ends, not only when a query comes."""
    def body():
        fu = t.fakeup()
        d = t.dnsfwd(*it.tls_up(fu), "--prewarm", "--connections", "1",
                     "--timeout", "2000")
        it.check(scen.until(lambda: fu.stats()["handshakes"] >= 1, 3),
                 "--prewarm: no handshake within 3 s of start")
        it.expect_a(it.ask_udp(d.port, "pwr1.example."))
        svc.move_local_route()
        it.check(scen.until(lambda: fu.stats()["handshakes"] >= 2, 2),
                 "no new connection within 2 s of the network change: %s"
                 % fu.stats())
        it.check(fu.stats()["resumed"] == 0, "the connection after the "
                 "change resumed the old network's session: %s" % fu.stats())
        fu.refuse()
        time.sleep(1.0)
        refused = fu.stats()["conns"]
        fu.unrefuse()
        t0 = time.monotonic()
        it.check(scen.until(lambda: fu.stats()["handshakes"] >= 3, 5),
                 "no connection within 5 s of the upstream accepting again, "
                 "without a query: %s" % fu.stats())
        it.check(fu.stats()["conns"] == refused + 1, "connections: %d "
                 "before accepting again, %d after; want one more" %
                 (refused, fu.stats()["conns"]))
        it.check(fu.nqueries() == 1, "the upstream saw %d queries, want 1" %
                 fu.nqueries())
        t.note("reconnected %.2f s after the upstream accepted again" %
               (time.monotonic() - t0))
        it.check(d.proc.poll() is None, "dnsfwd exited")

    svc.in_netns(body)


# ---------------------------------------------------------------- keepalive


@scenario
@slow
def priv_server_keepalive(t):
    """When the server's first answer announces edns-tcp-keepalive 1.5 s, dnsfwd (--idle-timeout 10) closes the idle connection itself at about 1 s, and a query after 2 s is answered."""
    fu = t.fakeup()
    fu.set(answer_options=[(OPT_KEEPALIVE, b"\x00\x0f")])
    ctl = t.fakeup()                    # no keepalive: stays open
    d = t.dnsfwd(*it.tls_up(fu), "--idle-timeout", "10", "--connections",
                 "1", "--timeout", "2000")
    dc = t.dnsfwd(*it.tls_up(ctl), "--idle-timeout", "10", "--connections",
                  "1", "--timeout", "2000")
    it.expect_a(it.ask_udp(d.port, "ka1.example."))
    t0 = time.monotonic()
    it.expect_a(it.ask_udp(dc.port, "ka-ctl.example."))
    it.check(scen.until(lambda: fu.stats()["closed"] >= 1, 4), "the connection "
             "was still open 4 s after the answer (server said 1.5 s)")
    dt = time.monotonic() - t0
    it.check(0.6 <= dt <= 1.45, "connection closed %.2f s after the "
             "answer; want about 1.0 (before the server's 1.5 s)" % dt)
    # fakeup announces a timeout but never closes by itself, so the close
    # is dnsfwd's.  (Which side ends in TIME_WAIT is a race: fakeup closes
    # at once on dnsfwd's close_notify, which precedes dnsfwd's FIN.)
    it.check(ctl.stats()["closed"] == 0, "without keepalive from the "
             "server the connection closed too: %s" % ctl.stats())
    while time.monotonic() < t0 + 2.0:
        time.sleep(0.05)
    r = it.ask_udp(d.port, "ka2.example.")
    it.expect_a(r, what="query 2 s after the first")
    it.check(fu.stats()["conns"] == 2, "fakeup saw %d connections, want 2"
             % fu.stats()["conns"])


def _ask(port, q, tcp, timeout=3.0):
    return it.ask_tcp(port, q, timeout) if tcp else \
        it.ask_udp(port, q, timeout)


@scenario
def priv_keepalive_client(t):
    """A TCP client's empty edns-tcp-keepalive gets ours (TIMEOUT 100, i.e. 10 s), from the cache too; keepalive over UDP, or with a TIMEOUT in a query, gets FORMERR and goes nowhere."""
    fu = t.fakeup()
    d = t.dnsfwd(*it.tls_up(fu), "--timeout", "2000")
    ka = [(OPT_KEEPALIVE, b"")]
    for i in range(2):                       # miss, then cache hit
        r = it.ask_tcp(d.port, it.make_query("kac.example.", options=ka))
        it.expect_a(r, what="TCP keepalive query %d" % i)
        got = [o for o in _opts(r.msg) if o[0] == OPT_KEEPALIVE]
        it.check(got == [(OPT_KEEPALIVE, OUR_IDLE)], "TCP answer %d "
                 "carries keepalive %s, want one with TIMEOUT 100" % (i, got))
    it.check(fu.count("kac.example.") == 1, "second query not from cache")
    bad = [("UDP keepalive", False, b""),
           ("UDP keepalive with TIMEOUT", False, OUR_IDLE),
           ("TCP keepalive with TIMEOUT", True, OUR_IDLE),
           ("TCP keepalive with 1 byte", True, b"\x01")]
    for i, (what, tcp, data) in enumerate(bad):
        name = "kabad%d.example." % i
        q = it.make_query(name, options=[(OPT_KEEPALIVE, data)])
        r = _ask(d.port, q, tcp)
        it.check(r.msg is not None and r.rcode() == dns.rcode.FORMERR and
                 not r.msg.answer, "%s: %s, want FORMERR" % (what,
                                                             r.describe()))
        it.check([o for o in _opts(r.msg) if o[0] == OPT_KEEPALIVE] == [] or
                 tcp, "%s: a keepalive option over UDP" % what)
        it.check(fu.count(name) == 0, "%s went upstream" % what)


# ---------------------------------------------------------------- padding

def _name_of_len(n, tag):
    """An absolute name whose text (without the final dot) is n characters:
    tag, then x, labels of 61."""
    chars = list((tag + "x" * n)[:n])
    for i in range(61, n - 1, 62):
        chars[i] = "."
    return "".join(chars) + "."


def _pad_problems(recs, what):
    out = []
    for rec in recs:
        opts = rec.get("options") or []
        pads = [dt for c, dt in opts if c == OPT_PADDING]
        kas = [dt for c, dt in opts if c == OPT_KEEPALIVE]
        name = rec["qname"] or "?"
        if rec["len"] % PAD_BLOCK:
            out.append("%s %d-char name: %d octets, not a multiple of %d" % (
                what, len(name) - 1, rec["len"], PAD_BLOCK))
        if len(pads) != 1 or pads[0].strip(b"\0"):
            out.append("%s %d-char name: padding options %s" % (
                what, len(name) - 1, [len(p) for p in pads]))
        if kas != [b""]:
            out.append("%s %d-char name: keepalive options %s, want one "
                       "empty" % (what, len(name) - 1, kas))
    return out


@scenario
def priv_padding_upstream(t):
    """Every upstream query carries an empty edns-tcp-keepalive and a Padding option making it a multiple of 128 octets, for names of 1 to 250 characters from UDP and TCP clients, with or without their OPT or ECS."""
    fu = t.fakeup()
    d = t.dnsfwd(*it.tls_up(fu), "--timeout", "3000")
    lengths = sorted(set(list(range(1, 251, 9)) +
                         [2, 3, 62, 63, 64, 126, 127, 128, 129, 249, 250]))
    combos = [("a", False, None), ("b", True, None), ("c", False, 1232),
              ("d", True, 1232)]
    jobs = []
    for letter, tcp, edns in combos:
        for n in lengths:
            jobs.append((_name_of_len(n, letter + str(n)), tcp, edns))
    rs = it.parallel(lambda j: _ask(d.port, it.make_query(j[0], edns=j[2]),
                                    j[1], timeout=5), jobs, workers=16)
    unanswered = [j[0][:20] for j, r in zip(jobs, rs)
                  if r.addrs() != [it.GOOD_ADDR]]
    it.check(not unanswered, "%d of %d not answered: %s" % (
        len(unanswered), len(jobs), unanswered[:4]))
    problems = []
    # A second copy, sent after an attempt timeout on a busy machine, is
    # padded as well, and counted.
    hedges = d.stats()["hedges"]
    extra = 0
    for (name, tcp, edns) in jobs:
        recs = fu.records(name)
        what = "%s%s" % ("TCP" if tcp else "UDP", "+OPT" if edns else "")
        if len(recs) not in (1, 2):
            problems.append("%s %s: upstream saw %d" % (what, name[:20],
                                                        len(recs)))
        extra += max(0, len(recs) - 1)
        problems += _pad_problems(recs, what)
    if extra > hedges:
        problems.append("%d second copies, but only %d sent after an "
                        "attempt timeout" % (extra, hedges))
    it.check(not problems, "%d problems, e.g. %s" % (len(problems),
                                                     problems[:5]))
    # With --keep-ecs the client's ECS goes upstream, padded all the same.
    d2 = t.dnsfwd(*it.tls_up(fu), "--timeout", "3000", "--keep-ecs")
    ecs = [(8, struct.pack("!HBB", 1, 24, 0) + bytes([198, 51, 100]))]
    problems = []
    for n in (5, 40, 100, 200):
        name = _name_of_len(n, "e%d" % n)
        it.expect_a(it.ask_udp(d2.port, it.make_query(name, options=ecs)))
        recs = fu.records(name)
        if not any(c == 8 for rec in recs for c, _ in rec["options"]):
            problems.append("%s: ECS not kept" % name[:20])
        problems += _pad_problems(recs, "UDP+ECS")
    it.check(not problems, "; ".join(problems[:5]))


@scenario
def priv_padding_hidden(t):
    """Clients never see padding: an upstream answer padded to 468 octets (with the server's keepalive) reaches them without Padding, without the server's keepalive, and without OPT when they sent none."""
    fu = t.fakeup()
    fu.set(answer_pad=468, answer_options=[(OPT_KEEPALIVE, b"\x01\x23")])
    d = t.dnsfwd(*it.tls_up(fu), "--timeout", "2000")
    cases = [("UDP", False, None, None), ("UDP+OPT", False, 1232, None),
             ("TCP", True, None, None), ("TCP+OPT", True, 1232, None),
             ("TCP+keepalive", True, 1232, [(OPT_KEEPALIVE, b"")])]
    problems = []
    for rnd in ("upstream", "cache"):
        for i, (what, tcp, edns, options) in enumerate(cases):
            q = it.make_query("hid%d.example." % i, edns=edns,
                              options=options)
            r = _ask(d.port, q, tcp)
            tag = "%s (%s)" % (what, rnd)
            if r.addrs() != [it.GOOD_ADDR]:
                problems.append("%s: %s" % (tag, r.describe()))
                continue
            opts = _opts(r.msg)
            if edns is None and r.msg.edns >= 0:
                problems.append("%s: an OPT (%s) for a client that sent "
                                "none" % (tag, opts))
            if any(c == OPT_PADDING for c, _ in opts):
                problems.append("%s: a Padding option" % tag)
            kas = [dt for c, dt in opts if c == OPT_KEEPALIVE]
            want = [OUR_IDLE] if options else []
            if kas != want:
                problems.append("%s: keepalive %s, want %s" % (tag, kas,
                                                               want))
    it.check(fu.nqueries("hid") == len(cases), "the second round was not "
             "from the cache (%d upstream queries)" % fu.nqueries("hid"))
    it.check(not problems, "; ".join(problems))


# ---------------------------------------------------------------- cleartext

class RecordingProxy:
    """A TCP relay on 127.0.0.1 to target_port that records the bytes of
    each connection both ways: conns = [{"c2s": bytes, "s2c": bytes}].
    It goes in t.ups, so t.cleanup stops it."""

    def __init__(self, t, target_port):
        self.target = ("127.0.0.1", target_port)
        self.lock = threading.Lock()
        self.recs = []
        self.threads = []
        self.stopping = False
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(16)
        self.port = self.ls.getsockname()[1]
        th = threading.Thread(target=self._accept, daemon=True)
        th.start()
        self.threads.append(th)
        t.ups.append(self)

    def _accept(self):
        while not self.stopping:
            r, _, _ = select.select([self.ls], [], [], 0.05)
            if not r:
                continue
            try:
                a, _ = self.ls.accept()
                b = socket.create_connection(self.target, timeout=3)
            except OSError:
                continue
            rec = {"c2s": bytearray(), "s2c": bytearray()}
            with self.lock:
                self.recs.append(rec)
            th = threading.Thread(target=self._relay, args=(a, b, rec),
                                  daemon=True)
            th.start()
            self.threads.append(th)

    def _relay(self, a, b, rec):
        live = {a: True, b: True}
        try:
            while not self.stopping and any(live.values()):
                r, _, _ = select.select([x for x in live if live[x]], [], [],
                                        0.05)
                for x in r:
                    y = b if x is a else a
                    try:
                        data = x.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        live[x] = False
                        try:
                            y.shutdown(socket.SHUT_WR)
                        except OSError:
                            pass
                        continue
                    with self.lock:
                        rec["c2s" if x is a else "s2c"] += data
                    try:
                        y.sendall(data)
                    except OSError:
                        live[x] = live[y] = False
        finally:
            a.close()
            b.close()

    def conns(self):
        with self.lock:
            return [{k: bytes(v) for k, v in r.items()} for r in self.recs]

    def stop(self):
        self.stopping = True
        for th in list(self.threads):
            th.join(2)
        self.ls.close()


def tls_records(data):
    """Parses data as a sequence of TLS records: ([(type, length)], None)
    or (records so far, what is wrong)."""
    recs, off = [], 0
    while off < len(data):
        if len(data) - off < 5:
            return recs, "a partial record header at octet %d" % off
        ct, major, minor = data[off], data[off + 1], data[off + 2]
        ln = struct.unpack("!H", data[off + 3:off + 5])[0]
        if ct not in (20, 21, 22, 23):
            return recs, "content type %d at octet %d" % (ct, off)
        if major != 3 or minor not in (1, 2, 3, 4):
            return recs, "version %d.%d at octet %d" % (major, minor, off)
        if ln == 0 or ln > 16384 + 2048:
            return recs, "record length %d at octet %d" % (ln, off)
        if off + 5 + ln > len(data):
            return recs, "a record cut short at octet %d" % off
        recs.append((ct, ln))
        off += 5 + ln
    return recs, None


SECRET = "secretname-xyz"


@scenario
def priv_no_cleartext(t):
    """When the upstream fails authentication (wrong name, untrusted CA, wrong pin), dnsfwd sends only TLS records and never the query name, the upstream gets no DNS message, and the client gets SERVFAIL."""
    cases = [("wrong name", "server", dict(name="other.test")),
             ("untrusted CA", "untrusted", {}),
             ("wrong pin", "server",
              dict(name=None, ca=False, pins=[it.read_pin("wrong-pin.txt")]))]
    wire = bytes([len(SECRET)]) + SECRET.encode()
    for what, cert, kw in cases:
        fu = t.fakeup(cert=cert)
        px = RecordingProxy(t, fu.port)
        d = t.dnsfwd(*it.tls_up(px, **kw), "--timeout", "1000",
                     "--connections", "1")
        name = "%s.%s.example." % (SECRET, what.replace(" ", "-"))
        it.expect_servfail(it.ask_udp(d.port, name), "%s: UDP" % what)
        it.expect_servfail(it.ask_tcp(d.port, "tcp." + name),
                           "%s: TCP" % what)
        conns = px.conns()
        it.check(conns, "%s: dnsfwd never connected through the proxy" %
                 what)
        for i, c in enumerate(conns):
            out = c["c2s"]
            recs, bad = tls_records(out)
            it.check(bad is None, "%s, connection %d: dnsfwd sent bytes "
                     "that are not TLS records: %s (%r)" % (
                         what, i, bad, out[:40]))
            it.check(recs and recs[0][0] == 22 and out[5] == 1,
                     "%s, connection %d: first record is not a ClientHello"
                     % (what, i))
            low = out.lower()
            it.check(SECRET.encode() not in low and wire not in low,
                     "%s, connection %d: the query name went over the wire "
                     "in clear" % (what, i))
        st = fu.stats()
        it.check(st["queries"] == 0, "%s: the upstream got %d DNS "
                 "messages" % (what, st["queries"]))
        it.check(st["handshakes"] == 0, "%s: the upstream completed %d TLS "
                 "handshakes; dnsfwd must abort before its Finished" % (
                     what, st["handshakes"]))


# ---------------------------------------------------------------- logs

def _raw_from(src, port, wire, tcp=False, wait=0.3):
    s = socket.socket(socket.AF_INET,
                      socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
    try:
        s.bind((src, 0))
        s.settimeout(2)
        s.connect(("127.0.0.1", port))
        if tcp:
            s.sendall(wire)
        else:
            s.send(wire)
        time.sleep(wait)
    except OSError:
        pass
    finally:
        s.close()


@scenario
def priv_logs_no_names(t):
    """At --log-level info, through good queries, protocol errors, malformed datagrams, cut TCP clients, upstream garbage, silence, overload and auth failures, the log names no query and no client address."""
    fu = t.fakeup()
    liar = t.fakeup(cert="untrusted")
    d = t.dnsfwd(*it.tls_up(fu), *it.tls_up(liar), "--timeout", "800",
                 "--connections", "1", "--max-inflight", "2",
                 "--log-level", "info")
    port = d.port
    C1, C2, C3 = "127.0.0.77", "127.0.0.78", "127.0.0.79"

    def q(tag, **kw):
        return it.make_query("%s-%s.example." % (SECRET, tag), **kw)

    for tcp in (False, True):                 # good ones (and auth fails)
        for i in range(3):
            svc.ask_from(C1, "127.0.0.1", port, q("ok%d%d" % (tcp, i)),
                         tcp=tcp, timeout=2)
    w = q("mal").to_wire()
    for junk in (w[:-3], w[:12], b"\x00" * 5, w[:2] + b"\x81\x80" + w[4:],
                 w + b"trailing-" + SECRET.encode()):
        _raw_from(C2, port, junk, wait=0.05)
    svc.ask_from(C1, "127.0.0.1", port, q("notimp"), timeout=1)
    nw = bytearray(q("notimp2").to_wire())
    nw[2] = (nw[2] & 0x87) | (2 << 3)
    _raw_from(C1, port, bytes(nw), wait=0.05)
    svc.ask_from(C1, "127.0.0.1", port,
                 q("ka", options=[(OPT_KEEPALIVE, b"\x00\x01")]), tcp=True)
    bv = q("badvers", edns=1232)
    bv.use_edns(1, 0, 1232)
    svc.ask_from(C1, "127.0.0.1", port, bv, timeout=1)
    cut = q("cut").to_wire()
    _raw_from(C3, port, struct.pack("!H", len(cut)) + cut[:9], tcp=True,
              wait=0.05)
    _raw_from(C3, port, struct.pack("!H", 60000) + cut, tcp=True, wait=0.05)
    fu.set(mode="garbage", budget=1)
    svc.ask_from(C1, "127.0.0.1", port, q("garbage"), timeout=2)
    fu.set(mode="wrong_qname", budget=1)
    svc.ask_from(C1, "127.0.0.1", port, q("wrongq"), timeout=2)
    fu.set(mode="silent")
    svc.ask_from(C1, "127.0.0.1", port, q("silent"), timeout=2)
    fu.set(mode="normal", delay_ms=400)
    it.parallel(lambda i: svc.ask_from(C1, "127.0.0.1", port,
                                       q("over%d" % i), timeout=2),
                range(16), workers=16)
    fu.set(delay_ms=0)
    fu.rule("%s-refused.example." % SECRET, rcode="REFUSED")
    svc.ask_from(C1, "127.0.0.1", port, q("refused"), timeout=2)
    s = socket.socket()
    s.bind((C3, 0))
    s.connect(("127.0.0.1", port))
    fu.set(delay_ms=300)
    s.sendall(struct.pack("!H", len(cut)) + cut)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()                                 # reset before the answer
    time.sleep(0.5)
    fu.set(delay_ms=0)
    svc.ask_from(C1, "127.0.0.1", port, q("last"), timeout=2)
    st = d.stats()
    it.check(st.get("answers", 0) >= 3 and st.get("servfails", 0) >= 1,
             "the traffic did not happen as planned: %s" % st)
    lines = d.lines()
    leaks = [ln for ln in lines
             if SECRET in ln.lower() or
             any(a in ln for a in (C1, C2, C3))]
    it.check(not leaks, "%d log lines at info name a query or a client, "
             "e.g. %s" % (len(leaks), leaks[:3]))
    debug = [ln for ln in lines if ln.startswith("debug")]
    it.check(not debug, "--log-level info still logs debug lines: %s" %
             debug[:2])
    warns = [ln for ln in lines if ln.startswith("warn")]
    it.check(len(warns) >= 2, "only %d warnings: the failures were not "
             "exercised (log: %s)" % (len(warns), d.tail(6)))

"""The PATH workload of make bench: every contender over an emulated path.

Called by bench/bench.py (run(B, ctx), B being bench.py's own module, so
that processes are started and stopped through its spawn/stop and its
table of live processes).  See bench/README.md, "PATH".

Two network namespaces joined by bench/pathemu (tests/pathemu.py): "a"
holds the contenders and the latency clients, "b" one unbound, the upstream,
serving DoT on 8853 and plain DNS on 8053 on every path's b address.  Each
contender has two paths of its own, one per upstream address (so one
contender's packets never wait behind another's in a path that keeps
order), and all contenders run at the same time, each with its own latency
client at RATE q/s of unique names: one run, the same moment of a shared
machine for all.  The floor is a client asking the upstream's plain UDP
port straight through a path of its own.

Every path: 15 ms each way, 0-5 ms jitter each way (0-10 ms added to the
30 ms round trip), order kept; the cases add loss or blackhole the first
upstream's path of every contender 20 s into the run.  The upstream logs
every query (log-queries); counting the lines with a contender's tag gives
its upstream queries per client query (second copies included).
"""

import contextlib
import json
import math
import os
import re
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))
import pathemu  # noqa: E402  (tests/pathemu.py)

QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")

RTT_MS = 30             # emulated round trip: 15 ms each way
DELAY_MS = 15
JITTER_MS = 5           # each way: 0-10 ms added to the round trip
RATE = 200              # q/s per contender
if QUICK:
    SECONDS, BLACKHOLE_AT, SILENCE, FQ_ROUNDS = 10, 4, 5, 1
else:
    SECONDS, BLACKHOLE_AT, SILENCE, FQ_ROUNDS = 60, 20, 30, 3
SECONDS = int(os.environ.get("BENCH_PATH_SECONDS", SECONDS))
WAIT_MS = 3000          # after the last query; later answers count as lost

UP_TLS, UP_UDP = 8853, 8053
LO = "127.0.0.1"
CONTENDER_CORE, LOAD_CORE = "0", "1"

# (key, label, upstream Nagle off, loss each way, blackhole the first upstream)
CASES = [
    ("noloss", "no loss, upstream Nagle on (stock)", False, 0.0, False),
    ("nodelay", "no loss, upstream TCP_NODELAY", True, 0.0, False),
    ("loss1", "1% loss each way", False, 0.01, False),
    ("loss3", "3% loss each way", False, 0.03, False),
    ("blackhole", "first upstream blackholed", False, 0.0, True),
]

# Contenders of the PATH cases; FIRST-QUERY adds dnsfwd variants.
FLOOR = "floor"
PATH_KEYS = [FLOOR, "dnsfwd", "stubby", "unbound", "dnsdist", "kresd"]
FQ_KEYS = [FLOOR, "dnsfwd", "dnsfwd-nofo", "dnsfwd-prewarm", "stubby", "unbound",
           "dnsdist", "kresd"]
LABELS = {FLOOR: "plain UDP to the upstream (floor)", "dnsfwd": "dnsfwd",
          "dnsfwd-nofo": "dnsfwd --no-fastopen", "dnsfwd-prewarm": "dnsfwd --prewarm",
          "stubby": "stubby", "unbound": "unbound (forwarder)", "dnsdist": "dnsdist",
          "kresd": "knot-resolver (kresd)"}
PEERS = ["stubby", "unbound", "dnsdist", "kresd"]
PORTS = {k: 5401 + i for i, k in enumerate(FQ_KEYS)}

B = None                # bench.py's module, set by run()


def log(msg):
    B.log("PATH: " + msg)


# --- contenders, each given both upstreams ---------------------------------

# bench.py's contenders, each given its two upstreams (B is bench.py,
# known once run() is called: hence the lambdas).
SETUP = {
    "dnsfwd": lambda c, d, p, u: B.setup_dnsfwd(c, d, p, ups=u),
    "dnsfwd-nofo": lambda c, d, p, u: B.setup_dnsfwd(c, d, p,
                                                     ["--no-fastopen"], u),
    "dnsfwd-prewarm": lambda c, d, p, u: B.setup_dnsfwd(c, d, p,
                                                        ["--prewarm"], u),
    "stubby": lambda c, d, p, u: B.setup_stubby(c, d, p, u),
    "unbound": lambda c, d, p, u: B.setup_unbound(c, d, p, u),
    "dnsdist": lambda c, d, p, u: B.setup_dnsdist(c, d, p, u),
    "kresd": lambda c, d, p, u: B.setup_kresd(c, d, p, u),
}


class Runner:
    """A contender in namespace a with its paths, or the floor (no process)."""

    def __init__(self, key, paths, extra=()):
        self.key, self.paths, self.extra = key, paths, list(extra)
        self.port = PORTS[key] if key != FLOOR else UP_UDP
        self.proc = None
        self.logfile = None

    def tag(self, prefix):
        """prefix and its key, as one DNS label of its queries' names."""
        return prefix + self.key.replace("-", "")

    def ups(self):
        return [p.b_addr for p in self.paths]

    def target(self):
        """Where its latency client sends: loopback, or the upstream."""
        return (self.paths[0].b_addr, UP_UDP) if self.key == FLOOR else (LO, self.port)

    def start(self, ctx, link):
        if self.key == FLOOR:
            return
        d = os.path.join(ctx["pathdir"], self.key)
        os.makedirs(d, exist_ok=True)
        self.logfile = os.path.join(d, "log")
        argv, cwd = SETUP[self.key](ctx, d, self.port, self.ups())
        self.proc = B.spawn(["ip", "netns", "exec", link.ns_a] + argv + self.extra,
                            CONTENDER_CORE, self.logfile, cwd)

    def ready(self, link, tag):
        if self.key == FLOOR:
            return
        err = link.in_ns("a", B.wait_answer, self.port, "ready-%s.bench." % tag, 25,
                         self.proc)
        if err is None and B.upstream_conns(self.pids()) == 0:
            err = "answered, but holds no connection to a DoT upstream"
        if err:
            self.stop()
            B.die("PATH %s: %s\n%s" % (LABELS[self.key], err, B.tail(self.logfile)))

    def pids(self):
        return B.descendants(self.proc.pid) if self.proc else []

    def stop(self):
        if self.proc is not None:
            B.stop(self.proc)
        self.proc = None

    def stats(self):
        return B.dnsfwd_stats(self, len(self.paths))


TCP_KEYS = ("RetransSegs", "TCPLossProbes", "TCPLossProbeRecovery", "TCPTimeouts",
            "TCPFastRetrans", "TCPSpuriousRTOs", "TCPSlowStartRetrans", "DelayedACKs",
            "TCPFastOpenActive", "TCPFastOpenPassive")


def tcp_counters(pid):
    """The Tcp and TcpExt counters of PID's namespace that tell how TCP
    recovered from loss, and how often it used Fast Open."""
    out = {}
    try:
        with open("/proc/%d/net/snmp" % pid) as f:
            a = f.read().splitlines()
        with open("/proc/%d/net/netstat" % pid) as f:
            a += f.read().splitlines()
    except OSError:
        return out
    for names, vals in zip(a[::2], a[1::2]):
        if names.split(":")[0] in ("Tcp", "TcpExt"):
            for k, v in zip(names.split()[1:], vals.split()[1:]):
                if k in TCP_KEYS:
                    out[k] = int(v)
    return out


def tfo_active(r):
    """Namespace a's TcpExtTCPFastOpenActive (connects that sent data in
    the SYN and had it accepted), read through r's process; None for the
    floor or when unreadable."""
    return tcp_counters(r.proc.pid).get("TCPFastOpenActive") if r.proc else None


def diff(a, b):
    return {k: b[k] - a.get(k, 0) for k in b}


# --- the upstream in namespace b --------------------------------------------

def start_upstream(ctx, link, nodelay, tag):
    """One unbound on every path's b address, logging every query."""
    d = os.path.join(ctx["pathdir"], "upstream-" + tag)
    os.makedirs(d)
    conf = os.path.join(d, "unbound.conf")
    qlog = os.path.join(d, "queries.log")
    ifaces = "".join("    interface: %s@%d\n    interface: %s@%d\n" % (
        p.b_addr, UP_TLS, p.b_addr, UP_UDP) for p in link.path)
    with open(conf, "w") as f:
        f.write(B.UNBOUND_SERVER.replace('logfile: ""', 'logfile: "%s"' % qlog) % dict(d=d)
                + ifaces + """    tls-port: %(tls)d
    tls-service-key: "%(key)s"
    tls-service-pem: "%(pem)s"
    do-ip6: no
    so-reuseport: no
    access-control: 198.18.0.0/15 allow
    module-config: "iterator"
    log-queries: yes
    incoming-num-tcp: 512
    tcp-idle-timeout: 300000
    num-queries-per-thread: 4096
    local-zone: "." refuse
    local-zone: "bench." redirect
    local-data: "bench. 300 IN A %(answer)s"
""" % dict(tls=UP_TLS, key=ctx["certs"] + "/server.key",
           pem=ctx["certs"] + "/server.pem", answer=B.ANSWER))
    env = dict(os.environ, LD_PRELOAD=B.NODELAY_SO) if nodelay else None
    logf = os.path.join(d, "log")
    p = B.spawn(["ip", "netns", "exec", link.ns_b, "unbound", "-d", "-c", conf],
                LOAD_CORE, logf, env=env)
    # Ready when it answers over UDP through path 0 (from namespace a).
    err = link.in_ns("a", udp_ready, link.path[0].b_addr, 15, p)
    if err:
        B.die("PATH upstream: %s\n%s%s" % (err, B.tail(logf), B.tail(qlog)))
    return p, qlog


def udp_ready(addr, within, proc):
    """None once the upstream answers over UDP at addr, else why not."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        if proc.poll() is not None:
            return "exited with status %s" % proc.returncode
        r = B.dns_query(UP_UDP, "up-ready.bench.", 0.5, addr)
        if r is not None and r[0] == 0:
            return None
        time.sleep(0.1)
    return "no answer within %d s" % within


def count_queries(qlog, tags):
    """Upstream queries per tag, from unbound's log-queries lines
    ("info: SOURCE NAME TYPE CLASS")."""
    counts = dict.fromkeys(tags, 0)
    pat = re.compile(r"info: \S+ \d+-([a-z0-9]+)\.bench\. ", re.I)
    with open(qlog, errors="replace") as f:
        for line in f:
            m = pat.search(line)
            if m:
                t = m.group(1).lower()
                if t in counts:
                    counts[t] += 1
    return counts


# --- latency clients ---------------------------------------------------------

def latency_argv(link, r, n, rate, tag, wait_ms, outfile=None):
    addr, port = r.target()
    argv = ["ip", "netns", "exec", link.ns_a, "taskset", "-c", LOAD_CORE, B.LATENCY,
            "-s", addr, "-p", str(port), "-r", str(rate), "-n", str(n), "-t", tag,
            "-w", str(wait_ms)]
    return argv + (["-o", outfile] if outfile else [])


def run_clients(jobs, timeout):
    """Runs the latency clients at once; returns their JSON by key."""
    procs = {k: subprocess.Popen(a, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True) for k, a in jobs.items()}
    out = {}
    end = time.monotonic() + timeout
    for k, p in procs.items():
        try:
            so, se = p.communicate(timeout=max(1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            B.die("PATH latency client %s did not finish" % k)
        if p.returncode != 0:
            B.die("PATH latency client %s: %s" % (k, se))
        out[k] = json.loads(so)
    return out


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


# --- the cases ---------------------------------------------------------------

def set_paths(link, loss):
    for p in link.path:
        p.set(delay_ms=DELAY_MS, jitter_ms=JITTER_MS, loss=loss, blackhole=0, order=1)
        p.clear()


@contextlib.contextmanager
def serving(ctx, link, runners, nodelay, tag):
    """The upstream and every runner started and answering, over clean
    paths; all stopped on leaving.  Yields (upstream process, query log)."""
    set_paths(link, 0.0)
    up, qlog = start_upstream(ctx, link, nodelay, tag)
    try:
        for r in runners:
            r.start(ctx, link)
        for r in runners:
            r.ready(link, r.tag(tag))
        yield up, qlog
    finally:
        for r in runners:
            r.stop()
        B.stop(up)


def run_case(ctx, link, runners, case):
    key, _, nodelay, loss, blackhole = case
    with serving(ctx, link, runners, nodelay, key) as (up, qlog):
        set_paths(link, loss)
        time.sleep(1.0)
        tags = {r.key: r.tag(key) for r in runners}
        rtt = {r.key: os.path.join(ctx["pathdir"], "rtt-%s-%s" % (key, r.key))
               for r in runners}
        jobs = {r.key: latency_argv(link, r, RATE * SECONDS, RATE, tags[r.key], WAIT_MS,
                                    rtt[r.key]) for r in runners}
        load0 = loadavg()
        # Namespace-wide TCP counters: a, the contenders' side (queries and
        # ACKs go up), b, the upstream's (answers come down).
        apid = next(r.proc.pid for r in runners if r.proc)
        tcp0 = (tcp_counters(apid), tcp_counters(up.pid))
        timer = blackhole_later(runners, key) if blackhole else None
        res = run_clients(jobs, SECONDS + WAIT_MS / 1000 + 60)
        if timer:
            timer.cancel()
        res["_tcp"] = {"a": diff(tcp0[0], tcp_counters(apid)),
                       "b": diff(tcp0[1], tcp_counters(up.pid))}
        time.sleep(0.5)             # the upstream's log lines are written
        counts = count_queries(qlog, tags.values())
        for r in runners:
            add_results(res[r.key], r, rtt[r.key], counts[tags[r.key]])
        res["_load"] = "%s / %s" % (load0, loadavg())
        res["_late_max_us"] = max(max(st["up_late_max_us"], st["down_late_max_us"])
                                  for st in (p.stats() for p in link.path))
    log_case(key, runners, res)
    return res


def blackhole_later(runners, key):
    """Blackholes the first path of every contender BLACKHOLE_AT s from now;
    the timer, to cancel."""
    def hole():
        for r in runners:
            if r.key != FLOOR:
                r.paths[0].set(blackhole=1)
        log("%s: first upstream of every contender blackholed" % key)
    timer = threading.Timer(BLACKHOLE_AT, hole)
    timer.start()
    return timer


def add_results(x, r, rttfile, upstream_queries):
    """Adds to x, r's latency client's JSON, what the case measured of r."""
    x["upstream_queries"] = upstream_queries
    x["up_per_query"] = upstream_queries / x["sent"] if x["sent"] else None
    x["stats"] = r.stats()
    x["paths"] = [p.stats() for p in r.paths]
    q = per_query(rttfile)
    x["q"] = quantiles(q)
    x["cdf"] = cdf_points(q, x["sent"])
    x["timeline"] = timeline(q)


def log_case(key, runners, res):
    for r in runners:
        x = res[r.key]
        st = x["stats"]
        q = x["q"]
        log("%-9s %-34s p50 %s p99 %s p99.9 %s max %s ms  servfail %d "
            "lost %d  up/q %.3f%s" % (
                key, LABELS[r.key], lat(q["p50"]), lat(q["p99"]), lat(q["p999"]),
                lat(q["max"]), x["servfail"], x["lost"],
                x["up_per_query"] or 0,
                "  hedges %d won %d unpaid %d" % (
                    st.get("hedges", -1), st.get("hedges_won", -1),
                    st.get("hedges_unpaid", -1)) if st else ""))
    log("%s: load average %s, pathemu late max %.1f ms" % (
        key, res["_load"], res["_late_max_us"] / 1e3))
    log("%s: TCP in namespace a %s; in b %s" % (key, res["_tcp"]["a"], res["_tcp"]["b"]))


def per_query(path):
    """[(ms or None, rcode or None)] per query sent, from the latency
    client's -o file; None when no answer came."""
    out = []
    with open(path) as f:
        for line in f:
            a, rc = line.split()
            out.append((None, None) if float(a) < 0 else (float(a) / 1e3, int(rc)))
    return out


def quantiles(q):
    """p50, p90, p99, p99.9 in ms over every query sent, a query without a
    right answer (lost, SERVFAIL or another error) counting as never
    answered (None: more than that share failed); max is the slowest right
    answer; failed counts the rest."""
    n = len(q)
    ok = sorted(t for t, rc in q if t is not None and rc == 0)
    out = {"failed": n - len(ok), "max": ok[-1] if ok else None}
    for p, key in ((50, "p50"), (90, "p90"), (99, "p99"), (99.9, "p999")):
        k = max(0, int(math.ceil(p / 100.0 * n)) - 1)
        out[key] = ok[k] if k < len(ok) else None
    return out


def timeline(q):
    """Per second of sending: [second, max ms, answers over 3 x RTT,
    SERVFAIL, lost], from per_query()'s list."""
    out = []
    for s in range(0, len(q), RATE):
        w = q[s:s + RATE]
        rtts = [t for t, _ in w if t is not None]
        out.append([s // RATE, round(max(rtts), 1) if rtts else None,
                    sum(1 for x in rtts if x > 3 * RTT_MS),
                    sum(1 for _, rc in w if rc == 2),
                    sum(1 for t, _ in w if t is None)])
    return out


def cdf_points(q, sent):
    """(latency ms, nines) points of the distribution of per_query()'s list:
    nines = -log10(1 - F), F counting lost queries as never answered, so a
    curve that does not reach the top lost queries.  A point every 0.02
    nines, and the slowest right answer."""
    v = sorted(t for t, rc in q if t is not None and rc == 0)
    if not v or not sent:
        return []
    ks = []
    y, top = 0.0, math.log10(sent)
    while y < top:
        k = max(0, int(math.ceil((1 - 10 ** -y) * sent)) - 1)
        if k >= len(v):
            break
        if not ks or ks[-1] != k:
            ks.append(k)
        y += 0.02
    if not ks or ks[-1] != len(v) - 1:
        ks.append(len(v) - 1)
    # v[k] is answered by a fraction (k + 1) / sent; all answered: log10(sent).
    return [(v[k], round(-math.log10(1 - (k + 1) / sent) if k + 1 < sent
                         else top, 4)) for k in ks]


# --- FIRST-QUERY over the path ----------------------------------------------

def first_query(ctx, link, runners):
    """Every FQ contender at once: RATE queries, SILENCE s, one query each."""
    out = {r.key: {"rounds": []} for r in runners}
    for r in runners:
        if r.key.startswith("dnsfwd"):
            r.extra = ["--idle-timeout", "2"] if QUICK else []
    with serving(ctx, link, runners, False, "fq"):
        for rnd in range(FQ_ROUNDS):
            jobs = {r.key: latency_argv(link, r, RATE, RATE, r.tag("st%d" % rnd), 1000)
                    for r in runners}
            steady = run_clients(jobs, 30)
            before = {r.key: r.stats() for r in runners}
            log("FIRST-QUERY round %d: %d s of silence" % (rnd + 1, SILENCE))
            time.sleep(SILENCE)
            load = loadavg()
            for r in runners:
                out[r.key]["rounds"].append(fq_first(link, r, rnd, before[r.key], load))
                out[r.key]["rounds"][-1]["steady_p50_us"] = steady[r.key]["p50_us"]
    for k, v in out.items():
        fq_summary(k, v)
    return out


def fq_first(link, r, rnd, before, load):
    """r's first query after the silence, as a round's record; before is
    r.stats() from before the silence."""
    conns = B.upstream_conns(r.pids())
    t0 = tfo_active(r)
    x = run_clients({r.key: latency_argv(link, r, 1, 1, r.tag("fq%d" % rnd), 3000)},
                    30)[r.key]
    t1 = tfo_active(r)
    rec = {"first_us": x["max_us"] if x["received"] and not x["bad"] else None,
           "conns_before": conns, "load": load,
           "tfo_active": None if t0 is None or t1 is None else t1 - t0}
    if r.key.startswith("dnsfwd"):
        a = r.stats()
        rec["tls_full"] = a.get("tls_full", 0) - before.get("tls_full", 0)
        rec["tls_resumed"] = a.get("tls_resumed", 0) - before.get("tls_resumed", 0)
    return rec


def fq_summary(k, v):
    """Medians over v's rounds; TFO connects and handshakes summed."""
    rs = v["rounds"]
    firsts = [x["first_us"] for x in rs]
    v["first_us"] = B.med(firsts) if None not in firsts else None
    v["steady_p50_us"] = B.med([x["steady_p50_us"] for x in rs])
    v["conns_before"] = min(x["conns_before"] for x in rs)
    v["tfo"] = sum(x["tfo_active"] or 0 for x in rs)
    if k.startswith("dnsfwd"):
        v["tls_full"] = sum(x["tls_full"] for x in rs)
        v["tls_resumed"] = sum(x["tls_resumed"] for x in rs)
    log("FIRST-QUERY %-34s steady p50 %6.1f ms  first %s ms (%s)  TFO %d" % (
        LABELS[k], (v["steady_p50_us"] or 0) / 1e3,
        "%.1f" % (v["first_us"] / 1e3) if v["first_us"] else "lost",
        ", ".join("%.1f" % ((x["first_us"] or 0) / 1e3) for x in rs), v["tfo"]))


# --- summary -----------------------------------------------------------------

def lat(v):
    """A latency in ms from quantiles(): None is a share of failures."""
    return "∞" if v is None else "%.1f" % v


def ms(us):
    return None if us is None else us / 1000.0


def targets(res, fq):
    """Issue 16's targets: (text, measured, ok)."""
    T = []
    rtt = RTT_MS
    d = {c: res[c]["dnsfwd"] for c in res}
    fl = {c: res[c][FLOOR] for c in res}

    def within(case, pct):
        for m, lab in (("p50", "p50"), ("p99", "p99")):
            a, b = d[case]["q"][m], fl[case]["q"][m]
            r = a / b if a is not None and b else None
            T.append(("%s: %s within %d%% of plain UDP" % (case_label(case), lab, pct),
                      "%s vs %s ms (%s)" % (lat(a), lat(b), B.fmt(
                          None if r is None else 100 * (r - 1), "%+.1f%%")),
                      r is not None and r <= 1 + pct / 100.0))
    within("nodelay", 5)
    within("noloss", 10)
    for case, a, b in (("loss1", 2.5, 3.5), ("loss3", 3.0, 4.5)):
        for m, lab, f in (("p99", "p99", a), ("p999", "p99.9", b)):
            v = d[case]["q"][m]
            T.append(("%s: %s ≤ %.1f x RTT (%.0f ms)" % (case_label(case), lab, f, f * rtt),
                      "%s ms = %s x" % (lat(v), B.fmt(None if v is None else v / rtt,
                                                      "%.2f", "∞")),
                      v is not None and v <= f * rtt))
    for case in ("loss1", "loss3"):
        for m, lab in (("p99", "p99"), ("p999", "p99.9")):
            inf = float("inf")
            vals = {p: res[case][p]["q"][m] for p in PEERS}
            bp = min(PEERS, key=lambda p: inf if vals[p] is None else vals[p])
            best, v = vals[bp], d[case]["q"][m]
            T.append(("%s: %s at least 15%% below the best peer's" % (case_label(case), lab),
                      "%s vs %s ms (%s)%s" % (lat(v), lat(best), bp, "" if v is None or
                                              not best else ": %+.0f%%" % (
                                                  100 * (v / best - 1))),
                      v is not None and (best is None or v <= 0.85 * best)))
    u = d["loss1"]["up_per_query"]
    T.append(("1% loss: upstream queries per client query ≤ 1.05", "%.3f" % u, u <= 1.05))
    bh = d["blackhole"]
    T.append(("one upstream blackholed: no SERVFAIL, no lost query",
              "%d SERVFAIL, %d lost" % (bh["servfail"], bh["lost"]),
              bh["servfail"] == 0 and bh["lost"] == 0))
    v = bh["q"]["p999"]
    T.append(("one upstream blackholed: p99.9 ≤ 3 x RTT (%d ms)" % (3 * rtt),
              "%s ms = %s x" % (lat(v), B.fmt(None if v is None else v / rtt, "%.2f", "∞")),
              v is not None and v <= 3 * rtt))
    if fq:
        for k, f, lab in (("dnsfwd", 2.2, "default (Fast Open)"),
                          ("dnsfwd-prewarm", 1.2, "--prewarm")):
            v = ms(fq[k]["first_us"])
            T.append(("FIRST-QUERY after %d s of silence, %s ≤ %.1f x RTT (%.0f ms)" % (
                SILENCE, lab, f, f * rtt),
                "lost" if v is None else "%.1f ms = %.2f x" % (v, v / rtt),
                v is not None and v <= f * rtt))
    return T


def case_label(key):
    if key == "blackhole":
        return "first upstream blackholed at %d s" % BLACKHOLE_AT
    return {c[0]: c[1] for c in CASES}[key]


def case_keys(res):
    """The cases of res in the order of CASES (path.json sorts its keys)."""
    return [c[0] for c in CASES if c[0] in res]


def tables(res, fq, quick):
    """The PATH section of RESULTS.md, as lines."""
    L = []
    load = "; ".join("%s %s" % (c, res[c]["_load"]) for c in case_keys(res))
    L.append("## PATH: two upstreams over an emulated %d ms path\n" % RTT_MS)
    if quick:
        L.append("**QUICK MODE: %d s per case, %d round of FIRST-QUERY after %d s of "
                 "silence; a check of the harness, not a measurement.**\n"
                 % (SECONDS, FQ_ROUNDS, SILENCE))
    L.append("Each contender has two upstreams, the same unbound on two addresses, each "
             "behind a path of its own (bench/pathemu: %d ms each way, 0-%d ms jitter each "
             "way with order kept); all contenders run at once, each with its own paths and "
             "its own bench/latency client sending unique names at %d q/s for %d s; an "
             "answer later than %d ms after the last query counts as lost. The floor asks "
             "the upstream's plain UDP port through a path of its own. Upstream queries "
             "per client query are counted in the upstream's log (log-queries). Load "
             "average (1, 5, 15 min) at the start / end of each case: %s. pathemu's worst "
             "lateness over every path and case: %.1f ms.\n" % (
                 DELAY_MS, JITTER_MS, RATE, SECONDS, WAIT_MS, load,
                 max(res[c]["_late_max_us"] for c in res) / 1e3))
    L.append("| case | contender | p50 | p90 | p99 | p99.9 | max | SERVFAIL | lost | "
             "upstream q / client q | dnsfwd hedges / won / unpaid |")
    L.append("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for c in case_keys(res):
        for k in PATH_KEYS:
            x = res[c][k]
            st = x.get("stats") or {}
            q = x["q"]
            L.append("| %s | %s | %s | %s | %s | %s | %s | %d | %d | %s | %s |" % (
                case_label(c), LABELS[k], lat(q["p50"]), lat(q["p90"]),
                lat(q["p99"]), lat(q["p999"]), lat(q["max"]), x["servfail"],
                x["lost"], B.fmt(x["up_per_query"], "%.3f"),
                "%d / %d / %d" % (st["hedges"], st["hedges_won"], st["hedges_unpaid"])
                if st else "–"))
    L.append("\nLatencies in ms, over every query sent: a query without a right answer "
             "(SERVFAIL, lost, any other error) counts as never answered, so ∞ means that "
             "more than that share of the queries failed; max is the slowest right answer. "
             "Lost: no answer at all. The floor's lost queries are what the path's loss "
             "costs plain UDP (a stub would ask again after its own timeout).\n")
    if all("_tcp" in res[c] for c in res):
        L.append("\nHow TCP recovered, per case, counted over each namespace (all "
                 "contenders together; a: the contenders' side, sending queries; b: the "
                 "upstream's, sending answers): segments retransmitted, of which by "
                 "tail-loss probe (TLP), by retransmission timeout (RTO), by fast "
                 "retransmit.\n")
        L.append("| case | a: retransmitted / TLP / RTO / fast | b: retransmitted / TLP / "
                 "RTO / fast |")
        L.append("|---|--:|--:|")
        for c in case_keys(res):
            t = res[c]["_tcp"]
            L.append("| %s | %s |" % (case_label(c), " | ".join(
                "%d / %d / %d / %d" % (t[s].get("RetransSegs", 0), t[s].get("TCPLossProbes", 0),
                                       t[s].get("TCPTimeouts", 0),
                                       t[s].get("TCPFastRetrans", 0)) for s in "ab")))
        L.append("")
    if fq:
        L.append("### FIRST-QUERY over the path: one query after %d s of silence\n" % SILENCE)
        L.append("All at once, %d round(s) of: %d queries at %d q/s (steady p50), %d s of "
                 "silence, one query each, in the order of the table. Median over the "
                 "rounds. dnsfwd closes idle connections after %s; --prewarm keeps one per "
                 "upstream open. TFO: connects in namespace a that carried data in the SYN "
                 "(TcpExtTCPFastOpenActive) while that contender's first query was out; both "
                 "namespaces have net.ipv4.tcp_fastopen=3 and Debian's unbound is built with "
                 "--enable-tfo-server (no option to set).\n" % (
                     FQ_ROUNDS, RATE, RATE, SILENCE, "2 s (quick mode)" if quick else "10 s"))
        L.append("| contender | steady p50 | first query | first / RTT | conns before | TFO "
                 "connects | TLS full / resumed |")
        L.append("|---|--:|--:|--:|--:|--:|--:|")
        for k in FQ_KEYS:
            v = fq[k]
            L.append("| %s | %s ms | %s ms | %s | %d | %s | %s |" % (
                LABELS[k], B.fmt(ms(v["steady_p50_us"]), "%.1f"),
                B.fmt(ms(v["first_us"]), "%.1f"),
                B.fmt(ms(v["first_us"]) / RTT_MS if v["first_us"] else None, "%.2fx"),
                v["conns_before"], v["tfo"] if k != FLOOR else "–",
                "%d / %d" % (v["tls_full"], v["tls_resumed"]) if "tls_full" in v else "–"))
        L.append("")
    L.append("### Targets of issue 16 (RTT %d ms)\n" % RTT_MS)
    L.append("| target | measured | |")
    L.append("|---|--:|---|")
    for t, m, ok in targets(res, fq):
        L.append("| %s | %s | %s |" % (t, m, B.mark(ok)))
    L.append("\n![latency distribution over the path](path.png)\n")
    return L


BEGIN = "<!-- make bench: PATH begins -->"
END = "<!-- make bench: PATH ends -->"


def replace_section(path, text):
    """Puts text between the PATH markers of path (appended if none)."""
    try:
        with open(path) as f:
            old = f.read()
    except OSError:
        old = ""
    block = BEGIN + "\n\n" + text.rstrip("\n") + "\n\n" + END
    a, b = old.find(BEGIN), old.find(END)
    if a >= 0 and b > a:
        new = old[:a] + block + old[b + len(END):]
    else:
        new = old.rstrip("\n") + "\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(new)


def section(path):
    """The PATH section of path with its markers, or ""."""
    try:
        with open(path) as f:
            old = f.read()
    except OSError:
        return ""
    a, b = old.find(BEGIN), old.find(END)
    return old[a:b + len(END)] if a >= 0 and b > a else ""


def write(res, fq, elapsed):
    data = {"quick": QUICK, "seconds": SECONDS, "blackhole_at_s": BLACKHOLE_AT, "rate": RATE, "rtt_ms": RTT_MS,
            "jitter_ms_each_way": JITTER_MS, "silence_s": SILENCE, "elapsed_s": elapsed,
            "cases": res, "first_query": fq}
    with open(os.path.join(HERE, "path.json"), "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    with open(os.path.join(HERE, "path.dat"), "w") as f:
        f.write("# latency ms, nines = -log10(1 - fraction answered); one block per "
                "case and contender, in the order of the header lines\n")
        for c in case_keys(res):
            for k in PATH_KEYS:
                f.write("# %s | %s\n" % (c, LABELS[k]))
        for c in case_keys(res):
            for k in PATH_KEYS:
                f.write("# %s %s\n" % (c, k))
                for x, y in res[c][k]["cdf"]:
                    f.write("%.3f %.4f\n" % (x, y))
                f.write("\n\n")
    plot(case_keys(res))
    text = "\n".join(tables(res, fq, QUICK))
    replace_section(os.path.join(HERE, "RESULTS.md"), text)
    if not QUICK:
        replace_section(os.path.join(HERE, "README.md"), text)
        replace_section(os.path.join(ROOT, "README.md"), "\n".join(headline(res, fq)))


def plot(cases):
    """path.png from path.dat: pathplot.gp, told the titles from here."""
    def array(name, items):
        return "array %s[%d] = [%s]" % (name, len(items), ", ".join(
            "'%s'" % s.replace("'", "''") for s in items))
    title = "%sTwo DoT upstreams, each over its own emulated %d ms path (0-%d ms " \
        "jitter), %d q/s of unique names" % ("QUICK MODE: " if QUICK else "", RTT_MS,
                                             2 * JITTER_MS, RATE)
    cmds = "; ".join([array("cases", [case_label(c) for c in cases]),
                      array("names", [LABELS[k] for k in PATH_KEYS]),
                      "title = '%s'" % title])
    subprocess.run(["gnuplot", "-e", cmds, os.path.join(HERE, "pathplot.gp")],
                   cwd=HERE, check=True)


def headline(res, fq):
    """The top-level README's PATH table: p50 / p99.9 per case."""
    cases = case_keys(res)
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    short = {"noloss": "no loss", "nodelay": "no loss, upstream TCP_NODELAY",
             "loss1": "1% loss", "loss3": "3% loss", "blackhole": "one upstream blackholed"}
    L = ["| PATH, last full run, %s: p50 / p99.9 ms (SERVFAIL + lost) | %s | first query "
         "after %d s |" % (date, " | ".join(short[c] for c in cases), SILENCE),
         "|---|" + "--:|" * (len(cases) + 1)]
    for k in PATH_KEYS:
        row = []
        for c in cases:
            x = res[c][k]
            bad = x["servfail"] + x["lost"]
            row.append("%s / %s%s" % (lat(x["q"]["p50"]), lat(x["q"]["p999"]),
                                          " (%d)" % bad if bad and k != FLOOR else ""))
        f = fq.get(k, {}).get("first_us") if fq else None
        L.append("| %s | %s | %s |" % (LABELS[k], " | ".join(row),
                                       B.fmt(ms(f), "%.1f ms")))
    if fq:
        for k in ("dnsfwd-nofo", "dnsfwd-prewarm"):
            L.append("| %s |%s %s |" % (LABELS[k], " |" * len(cases),
                                        B.fmt(ms(fq[k]["first_us"]), "%.1f ms")))
    return L


def run(bench, ctx):
    """The PATH workload: every case, then FIRST-QUERY; writes its results."""
    global B
    B = bench
    start = time.monotonic()
    why = pathemu.unavailable()
    if why:
        B.die("PATH: cannot emulate a path: %s" % why)
    ctx["pathdir"] = os.path.join(ctx["dir"], "path")
    os.makedirs(ctx["pathdir"])
    # One path for the floor, two for every other contender.
    npaths = 1 + 2 * (len(FQ_KEYS) - 1)
    with pathemu.Link(paths=npaths) as link:
        if not all(p.realtime for p in link.path):
            log("pathemu runs without SCHED_FIFO: expect more lateness")
        for ns in (link.ns_a, link.ns_b):
            subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w",
                            "net.ipv4.tcp_fastopen=3"], check=True, timeout=10)
        runners, i = {}, 1
        for k in FQ_KEYS:
            if k == FLOOR:
                runners[k] = Runner(k, [link.path[0]])
            else:
                runners[k] = Runner(k, link.path[i:i + 2])
                i += 2
        res = {}
        only = os.environ.get("BENCH_PATH_CASES")
        for case in CASES:
            if only and case[0] not in only.split(","):
                continue
            log("case %s: %s, %d s" % (case[0], case[1], SECONDS))
            keys = os.environ.get("BENCH_PATH_CONTENDERS", ",".join(PATH_KEYS)).split(",")
            res[case[0]] = run_case(ctx, link, [runners[k] for k in PATH_KEYS if k in keys],
                                    case)
        fq = None
        if os.environ.get("BENCH_PATH_FQ", "1") != "0":
            fq = first_query(ctx, link, [runners[k] for k in FQ_KEYS])
    elapsed = time.monotonic() - start
    if len(res) == len(CASES) and all(k in res[c] for c in res for k in PATH_KEYS):
        write(res, fq, elapsed)
    else:
        keep = os.environ.get("BENCH_PATH_JSON")
        if keep:
            with open(keep, "w") as f:
                json.dump({"cases": res, "first_query": fq}, f, indent=1)
        log("a subset ran: results in this log%s only" % (" and " + keep if keep else ""))
    log("done in %.0f s" % elapsed)


def rewrite():
    """Rewrites path.dat, path.png and the PATH sections from path.json."""
    global B, QUICK, SECONDS, SILENCE, FQ_ROUNDS, BLACKHOLE_AT
    import bench
    B = bench
    with open(os.path.join(HERE, "path.json")) as f:
        data = json.load(f)
    QUICK, SECONDS, SILENCE = data["quick"], data["seconds"], data["silence_s"]
    BLACKHOLE_AT = data.get("blackhole_at_s", BLACKHOLE_AT)
    FQ_ROUNDS = len(next(iter(data["first_query"].values()))["rounds"]) \
        if data["first_query"] else FQ_ROUNDS
    write(data["cases"], data["first_query"], data["elapsed_s"])


if __name__ == "__main__":
    if sys.argv[1:] == ["--rewrite"]:
        rewrite()
    else:
        sys.exit("usage: pathbench.py --rewrite (the workload runs from bench/bench.py)")

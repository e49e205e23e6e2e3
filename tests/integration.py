#!/usr/bin/python3
"""dnsfwd integration tests.

    /usr/bin/python3 tests/integration.py [--dnsfwd PATH] [-k SUBSTRING] [-j N]

PATH defaults to $DNSFWD or ./dnsfwd.  Every scenario is a function below
whose docstring is the claim it checks.  Each starts its own dnsfwd (with
--log-level debug, stderr to a file), its own upstreams (tests/fakeup.py,
or Debian's unbound via tests/unbound.py) on free loopback ports, and stops
everything by PID.  After a scenario, each dnsfwd still running gets SIGTERM
and must exit 0 within 2 s with "stopped" on its last log line, and no
dnsfwd log may contain AddressSanitizer, LeakSanitizer or "runtime error".

Prints "ok NAME" or "FAIL NAME: reason" per scenario, in order, then
"N passed, N failed"; exits 1 if any failed.  Logs of failed scenarios are
kept under the printed work directory.
"""

import argparse
import concurrent.futures
import itertools
import os
import re
import resource
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import dns.edns      # noqa: E402
import dns.flags     # noqa: E402
import dns.message   # noqa: E402
import dns.rcode     # noqa: E402
import dns.rdatatype  # noqa: E402

import fakeup        # noqa: E402
from checks import Fail, Skip, check, host_lock, TIMED_LOCK  # noqa: E402
from scen import until, slow, timed  # noqa: E402
from fakeup import FakeUpstream, GOOD_ADDR, BAD_ADDR  # noqa: E402
from unbound import Unbound, WWW_ADDR  # noqa: E402
import unbound as unbound_mod  # noqa: E402

SANITIZER = ("AddressSanitizer", "LeakSanitizer", "runtime error")
DNSFWD = None          # path, set in main()
RUNS = itertools.count()
PKI = None             # directory made by mkcerts.sh
ALL_PROCS = set()      # every Popen we started, killed by PID at exit
ALL_PROCS_LOCK = threading.Lock()


def pki(name):
    return os.path.join(PKI, name)


def read_pin(name="pin.txt"):
    with open(pki(name)) as f:
        return f.read().strip()


# ---------------------------------------------------------------- clients

class Reply:
    """What a client got for one query: msg (first reply with our ID and
    question, or None), every datagram/frame received (raw), elapsed s."""

    def __init__(self, query):
        self.query = query
        self.msg = None
        self.others = []     # replies that were not ours (wrong id/question)
        self.raw = []
        self.elapsed = None

    def rcode(self):
        return None if self.msg is None else self.msg.rcode()

    def addrs(self):
        out = []
        if self.msg is not None:
            for rrset in self.msg.answer:
                if rrset.rdtype == dns.rdatatype.A:
                    out += [r.address for r in rrset]
        return out

    def describe(self):
        if self.msg is None:
            return "no reply after %.2fs" % (self.elapsed or 0)
        return "%s %s after %.2fs" % (dns.rcode.to_text(self.msg.rcode()),
                                      self.addrs(), self.elapsed)


def make_query(name, rdtype="A", edns=None, qid=None, do=False, cd=False,
               rd=True, options=None):
    """A query; edns=None: no OPT (unless do or options: then 1232), else
    the advertised payload size; do, cd, rd: those bits; options: EDNS
    options as [(code, data bytes)]."""
    if (do or options) and edns is None:
        edns = 1232
    if edns is None:
        q = dns.message.make_query(name, rdtype, use_edns=False)
    else:
        q = dns.message.make_query(
            name, rdtype, use_edns=0, payload=edns, want_dnssec=do,
            options=[dns.edns.GenericOption(c, d)
                     for c, d in (options or ())])
    if qid is not None:
        q.id = qid
    if cd:
        q.flags |= dns.flags.CD
    if not rd:
        q.flags &= ~dns.flags.RD
    return q


def _is_ours(q, wire):
    try:
        m = dns.message.from_wire(wire)
    except Exception:
        return None
    if m.id != q.id or not (m.flags & dns.flags.QR):
        return None
    if len(m.question) != 1 or m.question[0] != q.question[0]:
        return None
    return m


def _family(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def ask_udp(port, q, timeout=3.0, host="127.0.0.1", linger=0.0):
    """Sends q over UDP; waits up to timeout for our reply, then linger
    more seconds collecting anything else that arrives."""
    if isinstance(q, str):
        q = make_query(q)
    r = Reply(q)
    s = socket.socket(_family(host), socket.SOCK_DGRAM)
    try:
        s.connect((host, port))
        t0 = time.monotonic()
        s.send(q.to_wire())
        deadline = t0 + timeout
        while True:
            now = time.monotonic()
            if now >= deadline:
                break
            s.settimeout(deadline - now)
            try:
                data = s.recv(65535)
            except (socket.timeout, ConnectionRefusedError):
                break
            r.raw.append(data)
            m = _is_ours(q, data)
            if m is not None and r.msg is None:
                r.msg = m
                r.elapsed = time.monotonic() - t0
                deadline = time.monotonic() + linger
            else:
                r.others.append(data)
        if r.elapsed is None:
            r.elapsed = time.monotonic() - t0
    finally:
        s.close()
    return r


def tcp_connect(port, host="127.0.0.1", timeout=3.0):
    s = socket.create_connection((host, port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def tcp_pipeline(port, qs, timeout):
    """Sends every query of qs at once on one TCP connection; returns the
    answer frames read within timeout (as many as there were queries)."""
    with tcp_connect(port) as s:
        s.sendall(b"".join(fakeup.frame(q.to_wire()) for q in qs))
        return tcp_read_frames(s, len(qs), timeout)


def tcp_read_frames(s, count, timeout):
    """Reads up to count length-framed messages within timeout."""
    out, buf = [], b""
    deadline = time.monotonic() + timeout
    while len(out) < count:
        now = time.monotonic()
        if now >= deadline:
            break
        s.settimeout(deadline - now)
        try:
            data = s.recv(65535)
        except socket.timeout:
            break
        except OSError:
            break
        if not data:
            break
        buf += data
        while len(buf) >= 2 and len(buf) >= 2 + struct.unpack("!H", buf[:2])[0]:
            n = struct.unpack("!H", buf[:2])[0]
            out.append(buf[2:2 + n])
            buf = buf[2 + n:]
    return out


def ask_tcp(port, q, timeout=3.0, host="127.0.0.1"):
    if isinstance(q, str):
        q = make_query(q)
    r = Reply(q)
    t0 = time.monotonic()
    with tcp_connect(port, host, timeout) as s:
        s.sendall(fakeup.frame(q.to_wire()))
        for data in tcp_read_frames(s, 1, timeout):
            r.raw.append(data)
            m = _is_ours(q, data)
            if m is not None and r.msg is None:
                r.msg = m
            else:
                r.others.append(data)
    r.elapsed = time.monotonic() - t0
    return r


def expect_a(r, addr=GOOD_ADDR, what="query"):
    """r must be NOERROR with exactly A addr."""
    check(r.msg is not None, "%s %s: %s" % (
        what, r.query.question[0].name, r.describe()))
    check(r.msg.rcode() == dns.rcode.NOERROR and r.addrs() == [addr],
          "%s %s: got %s, want NOERROR [%s]" % (
              what, r.query.question[0].name, r.describe(), addr))


def ask_answered(port, prefix, what, seconds=4.0):
    """Asks prefix0.example., prefix1.example., ... until one is answered
    NOERROR, as a stub asks again after a SERVFAIL, and expects the A of
    the last: for a query whose short --timeout a handshake on a loaded
    machine may exceed (the dial fails, the upstream backs off 250 ms and
    queries meanwhile get SERVFAIL at once, by design).  Returns the
    number of tries."""
    tries, end = [], time.monotonic() + seconds
    while True:
        r = ask_udp(port, "%s%d.example." % (prefix, len(tries)))
        tries.append(r.describe())
        if (r.msg is not None and r.msg.rcode() == dns.rcode.NOERROR) or \
                time.monotonic() >= end:
            break
        time.sleep(0.2)
    expect_a(r, GOOD_ADDR, "%s (tries: %s)" % (what, tries))
    return len(tries)


def expect_servfail(r, what="query"):
    check(r.msg is not None, "%s: %s, want SERVFAIL" % (what, r.describe()))
    check(r.msg.rcode() == dns.rcode.SERVFAIL,
          "%s: got %s, want SERVFAIL" % (what, r.describe()))


def no_bad(r, what="query"):
    """Nothing the client got may carry the bad upstream data."""
    for data in r.raw:
        try:
            m = dns.message.from_wire(data)
        except Exception:
            raise Fail("%s: client got an unparsable datagram %r" %
                       (what, data[:40]))
        for rrset in m.answer:
            for rd in rrset:
                check(getattr(rd, "address", None) != BAD_ADDR,
                      "%s: client got the bad upstream reply %s" % (what, m))
        check(len(m.question) == 1 and m.question[0] == r.query.question[0],
              "%s: client got a reply for another question: %s" %
              (what, m.question))
    check(len(r.raw) <= 1, "%s: client got %d replies" % (what, len(r.raw)))


def ede_codes(m):
    codes = []
    if m is None or m.edns < 0:
        return codes
    for opt in m.options:
        if opt.otype == 15:
            code = getattr(opt, "code", None)
            if code is None:
                code = struct.unpack("!H", opt.data[:2])[0]
            codes.append(int(code))
    return codes


def parallel(fn, items, workers=32):
    """fn over items in threads; returns results in order."""
    with concurrent.futures.ThreadPoolExecutor(workers) as ex:
        return list(ex.map(fn, items))


# ---------------------------------------------------------------- dnsfwd

def track(p):
    with ALL_PROCS_LOCK:
        ALL_PROCS.add(p)
    return p


def untrack(p):
    with ALL_PROCS_LOCK:
        ALL_PROCS.discard(p)


def kill_pid(p):
    if p.poll() is None:
        try:
            os.kill(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            p.wait(3)
        except subprocess.TimeoutExpired:
            pass


def udp_tcp_free_port(host):
    """A port free for both UDP and TCP on host (racy by nature: retried)."""
    fam = _family(host)
    for _ in range(50):
        t = socket.socket(fam, socket.SOCK_STREAM)
        u = socket.socket(fam, socket.SOCK_DGRAM)
        try:
            t.bind((host, 0))
            port = t.getsockname()[1]
            try:
                u.bind((host, port))
            except OSError:
                continue
            return port
        finally:
            t.close()
            u.close()
    raise Fail("no free port")


def fmt_addr(host, port):
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


class Dnsfwd:
    def __init__(self, t, idx):
        self.t = t
        self.log = os.path.join(t.dir, "dnsfwd%d.log" % idx)
        self.out = os.path.join(t.dir, "dnsfwd%d.out" % idx)
        self.proc = None
        self.port = None
        self.host = "127.0.0.1"
        self.argv = None
        self.checked = False

    def start(self, args, udp=True, tcp=True, host="127.0.0.1",
              wait_ready=True, env=None):
        """env: variables to set for dnsfwd, as for child_env."""
        self.host = host
        with open(self.log, "ab"):
            pass
        penv = child_env(env, self.log)
        last = ""
        for _attempt in range(3):
            self.port = udp_tcp_free_port(host)
            argv = [DNSFWD, "--log-level", "debug"]
            if udp:
                argv += ["--bind-udp", fmt_addr(host, self.port)]
            if tcp:
                argv += ["--bind-tcp", fmt_addr(host, self.port)]
            argv += list(args)
            self.argv = argv
            self.t.note("dnsfwd: " + " ".join(argv))
            start_at = len(self.text())
            with open(self.log, "ab") as lf, open(self.out, "ab") as of:
                self.proc = track(subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=of, stderr=lf,
                    env=penv))
            if not wait_ready:
                return self
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if re.search(r"\bready\b", self.text()[start_at:]):
                    return self
                if self.proc.poll() is not None:
                    break
                time.sleep(0.01)
            rc = self.proc.poll()
            last = " | ".join(self.text()[start_at:].splitlines()[-8:])
            if rc == 1 and re.search(r"(?i)bind|in use", last):
                continue            # lost a port race: try another port
            raise Fail("dnsfwd not ready (exit %r): %s" % (rc, last))
        raise Fail("dnsfwd could not bind: %s" % last)

    def text(self):
        try:
            with open(self.log, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def lines(self):
        return [ln for ln in self.text().splitlines() if ln.strip()]

    def tail(self, n=8):
        return " | ".join(self.lines()[-n:])

    def grep(self, sub):
        return [ln for ln in self.lines() if sub in ln]

    def stats(self):
        """SIGUSR1, then the key=value pairs of the new stats line."""
        before = len(self.grep("stats:"))
        os.kill(self.proc.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            got = self.grep("stats:")
            if len(got) > before:
                return {k: int(v) for k, v in
                        re.findall(r"(\w+)=(\d+)", got[-1])}
            time.sleep(0.01)
        raise Fail("no stats line after SIGUSR1: %s" % self.tail())

    def stop_and_check(self, sig=signal.SIGTERM):
        """Signals dnsfwd; it must exit 0 within 3 s (its drain takes 1 s
        at most, the rest is a loaded machine's and ASan's exit), last
        line 'stopped'."""
        self.checked = True
        p = self.proc
        if p.poll() is not None:
            raise Fail("dnsfwd had already exited with %s: %s" %
                       (p.returncode, self.tail()))
        t0 = time.monotonic()
        os.kill(p.pid, sig)
        try:
            rc = p.wait(3.0)
        except subprocess.TimeoutExpired:
            kill_pid(p)
            raise Fail("dnsfwd did not exit within 3 s of %s: %s" %
                       (signal.Signals(sig).name, self.tail()))
        finally:
            untrack(p)
        check(rc == 0, "dnsfwd exited %d after %s (%.2fs): %s" % (
            rc, signal.Signals(sig).name, time.monotonic() - t0, self.tail()))
        lines = self.lines()
        check(lines and "stopped" in lines[-1],
              "last log line lacks 'stopped': %r" %
              (lines[-1] if lines else ""))

    def sanitizer_check(self):
        txt = self.text()
        for s in SANITIZER:
            if s in txt:
                i = txt.index(s)
                raise Fail("%s in dnsfwd log: %s" % (
                    s, txt[max(0, i - 200):i + 600].replace("\n", " | ")))


def child_env(env, stderr_path):
    """os.environ changed by env: a value of None removes a variable, and
    "@stderr" stands for the device:inode of the file stderr goes to, as
    systemd sets JOURNAL_STREAM."""
    penv = dict(os.environ)
    for k, v in (env or {}).items():
        if v is None:
            penv.pop(k, None)
        elif v == "@stderr":
            st = os.stat(stderr_path)
            penv[k] = "%d:%d" % (st.st_dev, st.st_ino)
        else:
            penv[k] = v
    return penv


def run_dnsfwd(t, args, timeout=5.0, env=None):
    """Runs dnsfwd to completion (usage errors etc.): (rc, stdout, stderr).
    env as for child_env."""
    argv = [DNSFWD] + list(args)
    errpath = os.path.join(t.dir, "run%d.err" % next(RUNS))
    with open(errpath, "wb") as ef:
        p = track(subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=ef,
                                   env=child_env(env, errpath)))
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_pid(p)
        out, _ = p.communicate()
        raise Fail("dnsfwd %s did not exit within %.0fs" % (args, timeout))
    finally:
        untrack(p)
    with open(errpath, "rb") as ef:
        err = ef.read()
    out, err = out.decode(errors="replace"), err.decode(errors="replace")
    for s in SANITIZER:
        check(s not in err, "%s running %s: %s" % (s, args, err[:800]))
    return p.returncode, out, err


# ---------------------------------------------------------------- per test

class T:
    """One scenario's resources; cleanup() stops and checks them."""

    def __init__(self, name, workdir):
        self.name = name
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir, exist_ok=True)
        self.daemons = []
        self.ups = []
        self.unbounds = []
        self.notes = []

    def note(self, s):
        self.notes.append(s)

    def dnsfwd(self, *args, **kw):
        d = Dnsfwd(self, len(self.daemons))
        self.daemons.append(d)
        return d.start(args, **kw)

    def fakeup(self, cert="server", tls=True, **kw):
        if tls:
            fu = FakeUpstream(pki(cert + ".pem"), pki(cert + ".key"), **kw)
        else:
            fu = FakeUpstream(tls=False, **kw)
        self.ups.append(fu)
        return fu.start()

    def unbound(self):
        ub = Unbound(self.dir, pki("server.pem"), pki("server.key"))
        self.unbounds.append(ub)
        ub.start()
        track(ub.proc)
        return ub

    def cleanup(self, failed):
        errs = []
        for d in self.daemons:
            if d.proc is None:
                continue
            if not d.checked:
                try:
                    d.stop_and_check()
                except Fail as e:
                    errs.append(str(e))
            kill_pid(d.proc)
            untrack(d.proc)
            try:
                d.sanitizer_check()
            except Fail as e:
                errs.append(str(e))
        for fu in self.ups:
            fu.stop()
        for ub in self.unbounds:
            p = ub.proc
            ub.stop()
            if p is not None:
                untrack(p)
        return errs


def tls_up(fu, name="dns.test", pins=(), ca=True, host="127.0.0.1"):
    """--connect-tls arguments for fakeup/unbound at port."""
    port = fu.port
    a = fmt_addr(host, port) + ("#" + name if name else "")
    args = ["--connect-tls", a]
    for p in pins:
        args += ["--pin-sha256", p]
    if ca:
        args += ["--ca-file", pki("ca.pem")]
    return args


# ---------------------------------------------------------------- scenarios

SCENARIOS = []


def scenario(fn):
    SCENARIOS.append(fn)
    return fn


# How long a timed scenario waits for the other suites' timed lanes: a
# lane's scenarios take about a minute, two minutes under ASan.
TIMED_WAIT = 300


@scenario
def unbound_udp_tcp(t):
    """dnspython and kdig get answers from real unbound over DoT, via UDP and TCP."""
    ub = t.unbound()
    d = t.dnsfwd(*tls_up(ub), "--timeout", "2000", "--cache-size", "0")
    expect_a(ask_udp(d.port, "www.test."), WWW_ADDR, "udp")
    expect_a(ask_tcp(d.port, "www.test."), WWW_ADDR, "tcp")
    expect_a(ask_udp(d.port, make_query("a.test.", edns=1232)),
             "192.0.2.81", "udp+edns")
    r = ask_udp(d.port, "nx.test.")
    check(r.rcode() == dns.rcode.NXDOMAIN, "nx.test: %s" % r.describe())
    for mode in ("+notcp", "+tcp"):
        cmd = ["kdig", "@127.0.0.1", "-p", str(d.port), mode,
               "+timeout=3", "+retry=0", "b.test", "A"]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        check(p.returncode == 0 and "NOERROR" in p.stdout and
              "192.0.2.82" in p.stdout,
              "kdig %s: rc %d %s %s" % (mode, p.returncode, p.stdout[-400:],
                                        p.stderr[-200:]))
    st = d.stats()
    keys = {"queries", "answers", "servfails", "drops", "bad_replies",
            "reconnects", "overload", "inflight", "formerr", "notimp",
            "badvers", "tcp_aborts"}
    check(keys <= set(st), "stats line lacks %s: %s" % (keys - set(st), st))
    check(st["answers"] >= 6 and st["queries"] >= 6 and st["inflight"] == 0,
          "stats after 6 answered queries: %s" % st)


@scenario
def upstream_id_rewritten(t):
    """The upstream sees an ID other than the client's, unique among in-flight queries."""
    fu = t.fakeup()
    fu.set(delay_ms=300)
    d = t.dnsfwd(*tls_up(fu), "--timeout", "2000")
    client_id = 0x1234
    qs = [make_query("id%d.example." % i, qid=client_id) for i in range(30)]
    rs = parallel(lambda q: ask_udp(d.port, q), qs)
    for r in rs:
        expect_a(r)
    recs = [q for q in fu.queries if (q["qname"] or "").startswith("id")]
    check(len(recs) == 30, "fakeup saw %d of 30 queries" % len(recs))
    same = [q["qname"] for q in recs if q["id"] == client_id]
    check(not same, "upstream got the client's ID 0x1234 for %s" % same)
    check(fu.id_collisions == 0,
          "%d upstream IDs were reused while in flight on one connection"
          % fu.id_collisions)


@scenario
def same_client_id_200(t):
    """200 concurrent queries from 20 UDP sockets, all with one client ID, each get their own answer."""
    fu = t.fakeup()
    fu.set(delay_ms=20)
    d = t.dnsfwd(*tls_up(fu), "--timeout", "3000")
    qid = 0x4242
    socks = []
    try:
        for i in range(20):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            s.connect(("127.0.0.1", d.port))
            socks.append(s)
        want = {}
        for i, s in enumerate(socks):
            want[i] = set()
            for j in range(10):
                name = "s%d-q%d.example." % (i, j)
                want[i].add(name)
                s.send(make_query(name, qid=qid).to_wire())
        got = {i: [] for i in range(20)}
        bad = []
        deadline = time.monotonic() + 5
        for i, s in enumerate(socks):
            while len(got[i]) < 10:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                s.settimeout(left)
                try:
                    data = s.recv(65535)
                except socket.timeout:
                    break
                m = dns.message.from_wire(data)
                name = m.question[0].name.to_text() if m.question else None
                addrs = [r.address for rr in m.answer for r in rr
                         if rr.rdtype == dns.rdatatype.A]
                if (m.id != qid or name not in want[i] or
                        m.rcode() != dns.rcode.NOERROR or
                        addrs != [GOOD_ADDR]):
                    bad.append((i, m.id, name, dns.rcode.to_text(m.rcode())))
                got[i].append(name)
        check(not bad, "%d wrong replies, e.g. %s" % (len(bad), bad[:5]))
        missing = sum(len(want[i] - set(got[i])) for i in range(20))
        dup = sum(len(got[i]) - len(set(got[i])) for i in range(20))
        check(missing == 0 and dup == 0,
              "%d of 200 queries unanswered, %d duplicated (fakeup saw %d)" %
              (missing, dup, fu.nqueries("s")))
    finally:
        for s in socks:
            s.close()


@scenario
def pool_two_connections(t):
    """With --connections 2, 100 concurrent queries use at most 2 upstream connections."""
    fu = t.fakeup()
    fu.set(delay_ms=200)
    d = t.dnsfwd(*tls_up(fu), "--connections", "2", "--timeout", "3000")
    rs = parallel(lambda i: ask_udp(d.port, "p%d.example." % i), range(100),
                  workers=100)
    for r in rs:
        expect_a(r)
    st = fu.stats()
    check(st["conns"] <= 2, "fakeup saw %d connections (want <= 2)" %
          st["conns"])


@scenario
def pool_second_only_when_full(t):
    """A second upstream connection opens only when the first is full: with --connections 2 --max-inflight 8 and a 500 ms upstream, 8 queries at once use one connection, 16 at once two; with the default (256 in flight), 200 at once use one."""
    for extra, n, want in ((["--max-inflight", "8"], 8, 1),
                           (["--max-inflight", "8"], 16, 2), ([], 200, 1)):
        fu = t.fakeup()
        fu.set(delay_ms=500)
        d = t.dnsfwd(*tls_up(fu), "--connections", "2", "--timeout", "4000",
                     *extra)
        rs = parallel(lambda i: ask_udp(d.port, "w%d-%d.example." % (n, i)),
                      range(n), workers=n)
        for r in rs:
            expect_a(r)
        st = fu.stats()
        # A copy sent after an attempt timeout (answers slower than the
        # 1 s an upstream not heard from gets) goes on another connection.
        hedges = d.stats()["hedges"]
        check(st["conns"] == want + (hedges > 0 and want == 1), "%d queries "
              "at once with %s: %d upstream connections, want %d (%d copies "
              "sent after an attempt timeout)" % (
                  n, extra or "the defaults", st["conns"], want, hedges))
        d.stop_and_check()


@scenario
def queries_share_tls_records(t):
    """Queries that arrive together (40 pipelined in one TCP write) go upstream together in one TLS record, not one record each."""
    fu = t.fakeup()
    fu.set(delay_ms=100)
    d = t.dnsfwd(*tls_up(fu), "--connections", "1", "--timeout", "3000")
    expect_a(ask_udp(d.port, "warm.example."))
    qs = [make_query("rec%d.example." % i, qid=i) for i in range(40)]
    frames = tcp_pipeline(d.port, qs, 4)
    check(len(frames) == 40, "got %d of 40 answers" % len(frames))
    longest = max(len(q.to_wire()) for q in qs) + 2
    st = fu.stats()
    check(st["max_recv"] >= 20 * longest, "the largest TLS record held %d "
          "bytes, under twenty %d-byte queries, for 40 pipelined at once" %
          (st["max_recv"], longest))


@scenario
def reorder_replies(t):
    """Replies that come back in reverse order still reach the right clients."""
    fu = t.fakeup()
    fu.set(mode="reorder", n=10)
    d = t.dnsfwd(*tls_up(fu), "--connections", "1", "--timeout", "3000")
    qs = [make_query("ro%d.example." % i, qid=0x0101) for i in range(10)]
    rs = parallel(lambda q: ask_udp(d.port, q, linger=0.2), qs, workers=10)
    for r in rs:
        expect_a(r)
        no_bad(r)
    check(fu.stats()["conns"] == 1, "fakeup saw %d conns" % fu.conns)


def _bad_reply(t, mode):
    fu = t.fakeup()
    d = t.dnsfwd(*tls_up(fu), "--timeout", "800")
    ask_answered(d.port, "warm", "warm-up")
    before = d.stats()
    fu.set(mode=mode, budget=1)
    r = ask_udp(d.port, "victim.example.", timeout=2.5, linger=0.3)
    no_bad(r, "query answered with %s" % mode)
    check(r.msg is not None and (
        r.rcode() == dns.rcode.SERVFAIL or r.addrs() == [GOOD_ADDR]),
        "query under %s: %s (want SERVFAIL at the deadline or the right "
        "answer)" % (mode, r.describe()))
    time.sleep(0.1)
    after = d.stats()
    check(after.get("bad_replies", 0) > before.get("bad_replies", 0),
          "bad_replies did not rise: before %s after %s" % (before, after))
    fu.set(mode="normal")
    # The first may wait on a new connection's handshake.
    ask_answered(d.port, "after", "query after the bad reply")
    for i in range(2):
        expect_a(ask_udp(d.port, "again%d.example." % i), GOOD_ADDR,
                 "query after the bad reply")
    st = d.stats()
    check(st.get("inflight") == 0, "inflight not back to 0: %s" % st)
    return fu, d, r


@scenario
def bad_reply_wrong_id(t):
    """An upstream reply with an unknown ID is dropped and counted; dnsfwd keeps serving."""
    _bad_reply(t, "wrong_id")


@scenario
def bad_reply_wrong_question(t):
    """An upstream reply for another question is dropped and counted; dnsfwd keeps serving."""
    _bad_reply(t, "wrong_qname")


@scenario
def bad_reply_qr0(t):
    """An upstream 'reply' with QR=0 is dropped and counted; dnsfwd keeps serving."""
    _bad_reply(t, "qr0")


@scenario
def bad_reply_garbage(t):
    """Garbage from upstream closes that connection; the query is answered after reconnect or SERVFAILed."""
    fu, d, r = _bad_reply(t, "garbage")
    check(fu.stats()["closed"] >= 1,
          "dnsfwd kept the connection that sent garbage: %s" % fu.stats())
    if r.rcode() == dns.rcode.SERVFAIL:
        check(0.6 <= r.elapsed <= 1.4,
              "SERVFAIL after %.2fs, want about the 0.8s deadline" % r.elapsed)


@scenario
def duplicate_reply(t):
    """An upstream reply sent twice reaches the client once."""
    fu = t.fakeup()
    d = t.dnsfwd(*tls_up(fu), "--timeout", "1000")
    fu.set(mode="dup", budget=1)
    r = ask_udp(d.port, "twice.example.", linger=0.5)
    expect_a(r)
    no_bad(r)
    expect_a(ask_udp(d.port, "next.example."), GOOD_ADDR, "next query")


@scenario
def truncation_tc(t):
    """Big answer (2156 bytes): no-EDNS UDP gets TC=1 without answers in 512 bytes, EDNS 1232 and EDNS 4096 UDP get TC=1 within 1232 bytes, TCP gets it all."""
    ub = t.unbound()
    d = t.dnsfwd(*tls_up(ub), "--timeout", "2000")
    r = ask_udp(d.port, make_query("big.test.", "TXT"))
    check(r.msg is not None, "udp no-EDNS: %s" % r.describe())
    check(r.msg.flags & dns.flags.TC, "udp no-EDNS: TC not set (%d bytes)" %
          len(r.raw[0]))
    check(not r.msg.answer, "udp no-EDNS: TC reply has %d answer RRsets" %
          len(r.msg.answer))
    check(len(r.raw[0]) <= 512, "udp no-EDNS: %d bytes" % len(r.raw[0]))
    want = sorted(unbound_mod.big_txt_strings())

    def txts(m):
        return sorted(s.decode() for rr in m.answer for rd in rr
                      for s in rd.strings)
    r = ask_tcp(d.port, make_query("big.test.", "TXT"))
    check(r.msg is not None and txts(r.msg) == want,
          "tcp: %s" % r.describe())
    r = ask_udp(d.port, make_query("big.test.", "TXT", edns=1232))
    check(r.msg is not None, "udp EDNS 1232: %s" % r.describe())
    check(r.msg.flags & dns.flags.TC and len(r.raw[0]) <= 1232,
          "udp EDNS 1232, %d-byte answer: TC=%d, %d bytes" % (
              2156, bool(r.msg.flags & dns.flags.TC), len(r.raw[0])))
    r = ask_udp(d.port, make_query("big.test.", "TXT", edns=4096))
    check(r.msg is not None, "udp EDNS 4096: %s" % r.describe())
    check(r.msg.flags & dns.flags.TC and len(r.raw[0]) <= 1232 and
          not r.msg.answer,
          "udp EDNS 4096, %d-byte answer: TC=%d, %d bytes, %d strings "
          "(UDP answers stop at 1232 bytes)" % (
              2156, bool(r.msg.flags & dns.flags.TC), len(r.raw[0]),
              len(txts(r.msg))))


@scenario
def upstream_closes_after_n(t):
    """When the upstream closes after N queries without answering, they are re-sent and answered."""
    fu = t.fakeup()
    fu.set(mode="close_after", n=3, budget=1)
    d = t.dnsfwd(*tls_up(fu), "--connections", "1", "--timeout", "2000")
    rs = parallel(lambda i: ask_udp(d.port, "ca%d.example." % i), range(3))
    for r in rs:
        expect_a(r)
    st = fu.stats()
    check(st["conns"] >= 2 and st["queries"] >= 6,
          "expected a second connection with the re-sent queries: %s" % st)


@scenario
def upstream_closes_mid_reply(t):
    """When the upstream closes halfway through a reply, the query is re-sent and answered."""
    fu = t.fakeup()
    fu.set(mode="close_mid", budget=1)
    d = t.dnsfwd(*tls_up(fu), "--timeout", "2000")
    r = ask_udp(d.port, "half.example.")
    expect_a(r)
    check(fu.stats()["conns"] >= 2, "no reconnect: %s" % fu.stats())


@scenario
def upstream_refusing_servfail(t):
    """With the upstream refusing connections, clients get SERVFAIL well before --timeout, with EDE."""
    fu = t.fakeup()
    fu.refuse()
    d = t.dnsfwd(*tls_up(fu), "--timeout", "2000")
    for i in range(3):
        r = ask_udp(d.port, make_query("down%d.example." % i, edns=1232))
        expect_servfail(r, "query %d" % i)
        check(r.elapsed < 1.0, "query %d: SERVFAIL after %.2fs (want < 1s)"
              % (i, r.elapsed))
        codes = ede_codes(r.msg)
        check(set(codes) & {22, 23},
              "query %d: EDE codes %s, want 22 or 23" % (i, codes))
    r = ask_udp(d.port, make_query("down-noedns.example."))
    expect_servfail(r, "no-EDNS query")
    check(r.elapsed < 1.0, "no-EDNS: SERVFAIL after %.2fs" % r.elapsed)
    r = ask_tcp(d.port, make_query("down-tcp.example.", edns=1232))
    expect_servfail(r, "TCP query")
    check(r.elapsed < 1.0, "TCP: SERVFAIL after %.2fs" % r.elapsed)


@scenario
def upstream_comes_back(t):
    """After the upstream comes back, answers resume within a few seconds."""
    fu = t.fakeup()
    fu.refuse()
    d = t.dnsfwd(*tls_up(fu), "--timeout", "1000")
    t_end = time.monotonic() + 1.0
    while time.monotonic() < t_end:
        expect_servfail(ask_udp(d.port, "still-down.example."), "while down")
        time.sleep(0.2)
    fu.unrefuse()
    t0 = time.monotonic()
    last = None
    while time.monotonic() - t0 < 6.0:
        last = ask_udp(d.port, "back.example.")
        if last.addrs() == [GOOD_ADDR]:
            break
        time.sleep(0.1)
    expect_a(last, GOOD_ADDR, "%.1fs after the upstream came back" %
             (time.monotonic() - t0))


@scenario
def upstream_delay_timeout(t):
    """An upstream slower than --timeout gives SERVFAIL at about the deadline; the late reply is dropped."""
    fu = t.fakeup()
    d = t.dnsfwd(*tls_up(fu), "--timeout", "600")
    ask_answered(d.port, "warm", "warm-up")
    fu.set(delay_ms=1500)
    r = ask_udp(d.port, "slow.example.", timeout=3, linger=1.3)
    expect_servfail(r, "slow query")
    check(0.45 <= r.elapsed <= 1.1,
          "SERVFAIL after %.2fs, want about 0.6s" % r.elapsed)
    check(len(r.raw) == 1, "client got %d replies (late reply leaked?)" %
          len(r.raw))
    r = ask_tcp(d.port, "slow-tcp.example.", timeout=3)
    expect_servfail(r, "slow TCP query")
    check(0.45 <= r.elapsed <= 1.1,
          "TCP SERVFAIL after %.2fs, want about 0.6s" % r.elapsed)
    fu.set(delay_ms=0)
    # The connection replacing the silent one handshakes within 600 ms.
    n = ask_answered(d.port, "fast", "after the delay")
    if n > 1:
        t.note("answered at try %d" % n)
    time.sleep(1.0)            # the late replies have arrived by now
    st = d.stats()
    check(st.get("inflight") == 0, "inflight not back to 0: %s" % st)


@scenario
def handshake_stall(t):
    """An upstream that accepts but never finishes TLS gives SERVFAIL by the deadline, then recovery."""
    fu = t.fakeup()
    fu.set(mode="stall")
    d = t.dnsfwd(*tls_up(fu), "--timeout", "800")
    r = ask_udp(d.port, "stall.example.", timeout=3)
    expect_servfail(r, "during stall")
    check(r.elapsed <= 1.3, "SERVFAIL after %.2fs, want about 0.8s" %
          r.elapsed)
    check(fu.nqueries() == 0, "queries reached a stalled upstream")
    fu.set(mode="normal")
    fu.close_all(graceful=False)
    t0 = time.monotonic()
    last = None
    while time.monotonic() - t0 < 6.0:
        last = ask_udp(d.port, "unstalled.example.")
        if last.addrs() == [GOOD_ADDR]:
            break
        time.sleep(0.1)
    expect_a(last, GOOD_ADDR, "after the stall ended")


@scenario
def idle_closed_by_server(t):
    """After the upstream closes an idle connection, the next query is answered without delay: over a new connection, not after an attempt timeout on the closed one (no second copy sent or held back), within 1.5 s (a handshake on a loaded machine)."""
    fu = t.fakeup()
    d = t.dnsfwd(*tls_up(fu), "--timeout", "2000")
    expect_a(ask_udp(d.port, "first.example."))
    before = d.stats()
    times = []
    for i in range(4):
        fu.close_all(graceful=i < 3)
        time.sleep(0.15)
        r = ask_udp(d.port, "again%d.example." % i)
        how = "idle" if i < 3 else "abrupt"
        expect_a(r, GOOD_ADDR, "after %s close %d" % (how, i))
        check(r.elapsed < 1.5, "answer %d took %.2fs after the %s close" %
              (i, r.elapsed, how))
        times.append("%.3f" % r.elapsed)
    after = d.stats()
    late = [_delta(before, after, k) for k in ("hedges", "hedges_unpaid")]
    check(late == [0, 0], "second copies sent %d and held back %d: a query "
          "waited on a closed connection" % tuple(late))
    check(fu.stats()["conns"] == 5, "fakeup saw %d connections, want 5" %
          fu.stats()["conns"])
    t.note("answered after %s s" % ", ".join(times))


@scenario
def idle_timeout_closes(t):
    """--idle-timeout 1 closes an idle upstream connection; later queries still work."""
    fu = t.fakeup()
    d = t.dnsfwd(*tls_up(fu), "--idle-timeout", "1", "--timeout", "2000")
    expect_a(ask_udp(d.port, "one.example."))
    check(fu.stats()["closed"] == 0, "closed too early: %s" % fu.stats())
    deadline = time.monotonic() + 3.5
    while time.monotonic() < deadline and fu.stats()["live"] > 0:
        time.sleep(0.05)
    check(fu.stats()["live"] == 0,
          "upstream connection still open 3.5s after the last query, "
          "--idle-timeout 1: %s" % fu.stats())
    expect_a(ask_udp(d.port, "two.example."), GOOD_ADDR, "after idle close")


def _auth_fail(t, fu, args, reason):
    d = t.dnsfwd(*args, "--timeout", "1000")
    for i in range(2):
        r = ask_udp(d.port, "auth%d.example." % i, timeout=3)
        expect_servfail(r, "query %d" % i)
    time.sleep(0.1)
    check(fu.nqueries() == 0, "%d queries reached an upstream that failed "
          "authentication" % fu.nqueries())
    check(fu.stats()["conns"] >= 1, "dnsfwd never dialled the upstream")
    hits = d.grep(reason)
    check(hits, "log does not say %r: %s" % (reason, d.tail(6)))


@scenario
def tls_name_mismatch(t):
    """Connecting with #wrong.test sends no query, SERVFAILs, and logs 'name mismatch'."""
    fu = t.fakeup()
    _auth_fail(t, fu, tls_up(fu, name="wrong.test"), "name mismatch")


@scenario
def tls_untrusted_ca(t):
    """A certificate from an unknown CA sends no query, SERVFAILs, and logs 'untrusted'."""
    fu = t.fakeup(cert="untrusted")
    _auth_fail(t, fu, tls_up(fu), "untrusted")


@scenario
def tls_expired_cert(t):
    """An expired certificate sends no query, SERVFAILs, and logs 'expired'."""
    fu = t.fakeup(cert="expired")
    _auth_fail(t, fu, tls_up(fu), "expired")


@scenario
def tls_pin_mismatch(t):
    """A pin-only upstream whose key does not match sends no query, SERVFAILs, and logs 'pin mismatch'."""
    fu = t.fakeup()
    _auth_fail(t, fu, tls_up(fu, name=None, pins=[read_pin("wrong-pin.txt")],
                             ca=False), "pin mismatch")


@scenario
def tls_name_ok_pin_mismatch(t):
    """A valid name does not excuse a wrong pin: no query, SERVFAIL, 'pin mismatch'."""
    fu = t.fakeup()
    _auth_fail(t, fu, tls_up(fu, pins=[read_pin("wrong-pin.txt")]),
               "pin mismatch")


@scenario
def tls_pin_only(t):
    """A correct --pin-sha256 alone (no #NAME, no CA file) authenticates."""
    fu = t.fakeup()
    port = fu.port
    d = t.dnsfwd("--connect-tls=127.0.0.1:%d" % port,
                 "--pin-sha256=" + read_pin(), "--timeout=2000")
    expect_a(ask_udp(d.port, "pinned.example."))
    expect_a(ask_tcp(d.port, "pinned2.example."))


@scenario
def tls_pin_and_name(t):
    """A correct pin plus #dns.test works, and the SNI sent is dns.test."""
    fu = t.fakeup()
    d = t.dnsfwd(*tls_up(fu, pins=[read_pin("wrong-pin.txt"), read_pin()]),
                 "--timeout", "2000")
    expect_a(ask_udp(d.port, "both.example."))
    check(fu.snis and all(s == "dns.test" for s in fu.snis),
          "SNI seen by the upstream: %s" % fu.snis)


def _resume(t, tls_max):
    fu = t.fakeup(tls_max=tls_max)
    d = t.dnsfwd(*tls_up(fu), "--timeout", "2000")
    expect_a(ask_udp(d.port, "r1.example."))
    expect_a(ask_udp(d.port, "r2.example."))
    for i in range(2):
        fu.close_all(graceful=True)
        time.sleep(0.15)
        expect_a(ask_udp(d.port, "r%d.example." % (i + 3)))
    st = fu.stats()
    check(st["resumed"] >= 1, "no resumed TLS session in %d handshakes "
          "(versions %s)" % (st["handshakes"], sorted(set(fu.versions))))


@scenario
def tls_session_resumption(t):
    """After the upstream closes an idle connection, the reconnect resumes the TLS session."""
    _resume(t, None)


@scenario
def tls12_resumption(t):
    """Against a TLS 1.2-only upstream, queries work and reconnects resume the session."""
    _resume(t, "1.2")


@scenario
def tls_version_negotiated(t):
    """A build on mbedTLS 3 negotiates TLS 1.3 with an upstream that offers it; one on mbedTLS 2 negotiates TLS 1.2."""
    out = subprocess.run([DNSFWD, "--version"], capture_output=True,
                         text=True, timeout=5).stdout
    m = re.search(r"TLS (\d+)\.", out)
    check(m is not None, "--version names no mbedTLS version: %r" % out)
    want = "TLSv1.3" if int(m.group(1)) >= 3 else "TLSv1.2"
    fu = t.fakeup()
    d = t.dnsfwd(*tls_up(fu), "--timeout", "2000")
    expect_a(ask_udp(d.port, "ver.example."))
    check(set(fu.versions) == {want}, "built with %s, negotiated %s, want "
          "%s" % (out.strip(), sorted(set(fu.versions)), want))


def _fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


@scenario
def no_descriptor_leak(t):
    """After TCP clients come and go, upstreams close, fail and send garbage, and idle connections close, dnsfwd holds as many descriptors as at start."""
    fu = t.fakeup()
    d = t.dnsfwd(*tls_up(fu), "--timeout", "500", "--idle-timeout", "1")
    base = _fds(d.proc.pid)
    ask_answered(d.port, "warm", "warm-up")
    for i in range(20):
        expect_a(ask_tcp(d.port, "fd%d.example." % i))
    fu.close_all(graceful=False)
    ask_answered(d.port, "after-close", "after the upstream closed")
    fu.set(mode="garbage", budget=1)
    ask_udp(d.port, "garbage.example.", timeout=2)
    fu.refuse()
    ask_udp(d.port, "refused.example.", timeout=2)
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline and _fds(d.proc.pid) != base:
        time.sleep(0.1)
    check(_fds(d.proc.pid) == base, "dnsfwd holds %d descriptors, %d at "
          "start: %s" % (_fds(d.proc.pid), base,
                         sorted(os.readlink("/proc/%d/fd/%s" % (d.proc.pid, f))
                                for f in os.listdir("/proc/%d/fd" %
                                                    d.proc.pid))))


@scenario
def connect_tcp_plain(t):
    """--connect-tcp to a plain DNS-over-TCP upstream answers UDP and TCP clients."""
    fu = t.fakeup(tls=False)
    d = t.dnsfwd("--connect-tcp", "127.0.0.1:%d" % fu.port, "--timeout",
                 "2000")
    expect_a(ask_udp(d.port, "plain.example."))
    expect_a(ask_tcp(d.port, "plain-tcp.example."))
    r = ask_udp(d.port, "nx.plain.example.")
    check(r.rcode() == dns.rcode.NXDOMAIN, "nx: %s" % r.describe())


@scenario
def tcp_client_pipelined(t):
    """Ten queries pipelined on one client TCP connection are all answered, even out of order."""
    fu = t.fakeup()
    fu.set(mode="reorder", n=10)
    d = t.dnsfwd(*tls_up(fu), "--connections", "1", "--timeout", "3000")
    qs = [make_query("pipe%d.example." % i, qid=1000 + i) for i in range(10)]
    frames = tcp_pipeline(d.port, qs, 4)
    check(len(frames) == 10, "got %d of 10 replies (fakeup saw %d)" %
          (len(frames), fu.nqueries()))
    byid = {q.id: q for q in qs}
    seen = []
    for f in frames:
        m = dns.message.from_wire(f)
        q = byid.get(m.id)
        check(q is not None and m.question == q.question,
              "reply id %d for %s matches no query" % (m.id, m.question))
        check([r.address for rr in m.answer for r in rr] == [GOOD_ADDR],
              "bad answer %s" % m)
        seen.append(m.id)
    check(sorted(seen) == sorted(byid), "duplicate replies: %s" % seen)


@scenario
def tcp_client_past_pipeline_limit(t):
    """80 queries in one TCP write, past the 64-query pipeline limit, are all answered: the held-back ones go once answers free room."""
    fu = t.fakeup()
    fu.set(delay_ms=200)
    d = t.dnsfwd(*tls_up(fu), "--timeout", "3000")
    qs = [make_query("p%d.example." % i, qid=2000 + i) for i in range(80)]
    frames = tcp_pipeline(d.port, qs, 4)
    ids = sorted(dns.message.from_wire(f).id for f in frames)
    check(ids == sorted(q.id for q in qs), "got %d of 80 replies (fakeup "
          "saw %d)" % (len(frames), fu.nqueries()))


def _proc_tcp():
    """The sockets of /proc/net/tcp and tcp6: dicts with lport, rport,
    state (1 ESTABLISHED, 4 FIN_WAIT1, ...), tx and rx queue bytes, and
    inode (0 until accepted)."""
    out = []
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for ln in lines:
            f = ln.split()
            if len(f) < 10:
                continue
            tx, rx = f[4].split(":")
            out.append({"lport": int(f[1].rsplit(":", 1)[1], 16),
                        "rport": int(f[2].rsplit(":", 1)[1], 16),
                        "state": int(f[3], 16), "tx": int(tx, 16),
                        "rx": int(rx, 16), "inode": int(f[9])})
    return out


def _sock_inodes(pid):
    """Inodes of the sockets process pid holds open."""
    out = set()
    try:
        fds = os.listdir("/proc/%d/fd" % pid)
    except OSError:
        return out
    for fd in fds:
        try:
            link = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        m = re.match(r"socket:\[(\d+)\]", link)
        if m:
            out.add(int(m.group(1)))
    return out


def _server_ends(d, s):
    """dnsfwd's side of client TCP socket s in /proc/net/tcp (a list:
    empty once that connection is gone altogether)."""
    cport = s.getsockname()[1]
    return [e for e in _proc_tcp()
            if e["lport"] == d.port and e["rport"] == cport]


def _server_inode(d, s, timeout=3.0):
    """The inode of the socket dnsfwd accepted for client socket s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        mine = _sock_inodes(d.proc.pid)
        for e in _server_ends(d, s):
            if e["inode"] and e["inode"] in mine:
                return e["inode"]
        time.sleep(0.02)
    raise Fail("dnsfwd did not accept the client connection within %.0f s"
               % timeout)


def _wait_dropped(d, inode, timeout):
    """Waits until dnsfwd no longer holds socket inode: the time it was
    first seen gone, or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if inode not in _sock_inodes(d.proc.pid):
            return time.monotonic()
        time.sleep(0.05)
    return None


def _slow_reader(port):
    """A TCP client socket that takes little: 4 KB receive buffer and a
    536-byte MSS, so the kernels on both sides hold under 100 KB of
    answers for it and the rest must wait inside dnsfwd."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
    s.settimeout(3)
    s.connect(("127.0.0.1", port))
    return s


def _read_to_end(s, timeout):
    """Reads s until the peer's close shows: ("reset" or "eof", bytes
    read), or ("open", bytes) when it is still open at the timeout."""
    n = 0
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return "open", n
        s.settimeout(left)
        try:
            data = s.recv(65536)
        except socket.timeout:
            return "open", n
        except ConnectionResetError:
            return "reset", n
        except OSError as e:
            return "error %s" % e, n
        if not data:
            return "eof", n
        n += len(data)


@scenario
def tcp_client_not_reading(t):
    """A TCP client that asks for 1.2 MB of answers and reads none is cut off abortively once 256 KiB wait for it in dnsfwd: its socket leaves dnsfwd within 15 s (the upstream's pace decides when; the 10 s deadline lets a slow one's answers come rather than SERVFAILs) and the connection is gone from /proc/net/tcp (RST, not a FIN behind unsent data), the client reads what it had then ECONNRESET/EOF, tcp_aborts rises by 1, and serving goes on."""
    fu = t.fakeup()
    d = t.dnsfwd(*tls_up(fu), "--timeout", "10000", "--cache-size", "0")
    before = d.stats()
    s = _slow_reader(d.port)
    try:
        inode = _server_inode(d, s)
        qs = [make_query("huge.n%d.example." % i, "TXT") for i in range(60)]
        s.sendall(b"".join(fakeup.frame(q.to_wire()) for q in qs))
        gone = _wait_dropped(d, inode, 15)
        check(gone is not None, "dnsfwd still holds the socket of a client "
              "that read none of 60 20-KB answers (the upstream sent %d) "
              "15 s later" % fu.stats()["replies"])
        time.sleep(0.1)
        left = _server_ends(d, s)
        check(not left, "after dropping the client, its connection lingers "
              "in /proc/net/tcp (state %s, %s bytes unsent): closed with a "
              "FIN behind queued data, not aborted with a RST" % (
                  [e["state"] for e in left], [e["tx"] for e in left]))
        how, n = _read_to_end(s, 3)
        check(how in ("reset", "eof"), "the client that never read got %s "
              "after %d bytes, want ECONNRESET or EOF" % (how, n))
    finally:
        s.close()
    after = d.stats()
    check(_delta(before, after, "tcp_aborts") == 1, "tcp_aborts rose by %d "
          "for one client cut off: %s" % (
              _delta(before, after, "tcp_aborts"), after))
    expect_a(ask_tcp(d.port, "after-noread.example."), GOOD_ADDR,
             "after a client that did not read")


@scenario
@slow
def tcp_client_stalled_idle(t):
    """A TCP client that stops reading with under 256 KiB of answers waiting in dnsfwd is closed about 10 s (9-13 s) after its queries, for lack of write progress, though answers are still queued; dnsfwd keeps serving."""
    fu = t.fakeup()
    d = t.dnsfwd(*tls_up(fu), "--timeout", "3000", "--cache-size", "0")
    s = _slow_reader(d.port)
    try:
        inode = _server_inode(d, s)
        n = 10
        qs = [make_query("huge.i%d.example." % i, "TXT") for i in range(n)]
        t0 = time.monotonic()
        s.sendall(b"".join(fakeup.frame(q.to_wire()) for q in qs))
        deadline = time.monotonic() + 3
        while fu.stats()["replies"] < n and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        total = n * (2 + len(fakeup.make_answer(qs[0]).to_wire(
            max_size=65535)))
        kernel = sum(e["tx"] for e in _server_ends(d, s)) + sum(
            e["rx"] for e in _proc_tcp()
            if e["lport"] == s.getsockname()[1] and e["rport"] == d.port)
        t.note("answers %d bytes, %d in the kernels' buffers" %
               (total, kernel))
        check(fu.stats()["replies"] == n and kernel < total - 20000,
              "test setup: of %d answers (%d bytes) the upstream sent %d "
              "and the kernels hold %d bytes; want some left in dnsfwd" % (
                  n, total, fu.stats()["replies"], kernel))
        gone = _wait_dropped(d, inode, 14 - (time.monotonic() - t0))
        check(gone is not None, "a client that stopped reading with %d "
              "bytes of answers waiting in dnsfwd is still connected "
              "%.1f s after its queries" % (total - kernel,
                                             time.monotonic() - t0))
        check(9.0 <= gone - t0 <= 13.0, "the stalled client was dropped "
              "%.2f s after its queries, want about 10 s" % (gone - t0))
        how, got = _read_to_end(s, 3)
        check(how in ("reset", "eof"), "the stalled client got %s after %d "
              "bytes, want ECONNRESET or EOF" % (how, got))
    finally:
        s.close()
    expect_a(ask_tcp(d.port, "after-stall.example."), GOOD_ADDR,
             "after a stalled client")


@scenario
@slow
def tcp_client_query_while_stopped(t):
    """A TCP client's query sent while dnsfwd was stopped (SIGSTOP, as a frozen container) past the client's 10 s idle timeout is read and answered on that connection once dnsfwd continues, not closed as idle before it was read."""
    fu = t.fakeup()
    d = t.dnsfwd(*tls_up(fu))
    with tcp_connect(d.port) as s:
        s.sendall(fakeup.frame(make_query("before-stop.example.").to_wire()))
        check(len(tcp_read_frames(s, 1, 5)) == 1, "no answer before the stop")
        # Stopped asleep in epoll_wait, which then returns EINTR with
        # nothing read: its timers are due, the query not yet seen.
        time.sleep(0.5)
        os.kill(d.proc.pid, signal.SIGSTOP)
        try:
            s.sendall(fakeup.frame(make_query(
                "while-stopped.example.").to_wire()))
            time.sleep(11.5)
        finally:
            os.kill(d.proc.pid, signal.SIGCONT)
        got = tcp_read_frames(s, 1, 5)
        check(len(got) == 1, "no answer on the connection after the stop: "
              "it was closed (fakeup saw %d queries)" % fu.nqueries())
        m = dns.message.from_wire(got[0])
        check([r.address for rr in m.answer for r in rr] == [GOOD_ADDR],
              "bad answer %s" % m)


@scenario
def tcp_clients_not_reading_free_slots(t):
    """256 TCP clients (the most served at once) that each ask for 500 KB of cached answers and read none are all cut off, so a polite 257th client is still answered within 5 s."""
    _raise_nofile(4096)
    fu = t.fakeup()
    d = t.dnsfwd(*tls_up(fu), "--timeout", "2000")
    name = "mid.slots.example."
    r = ask_tcp(d.port, make_query(name, "TXT"))
    check(r.msg is not None and len(_txts(r.msg)) == 4, "warm-up: %s" %
          r.describe())
    before = d.stats()
    burst = b"".join(fakeup.frame(make_query(name, "TXT", qid=i).to_wire())
                     for i in range(600))
    socks = []
    try:
        t0 = time.monotonic()
        for i in range(256):
            s = _slow_reader(d.port)
            socks.append(s)
            s.settimeout(2)
            try:
                s.sendall(burst)
            except (socket.timeout, OSError):
                pass
        polite = tcp_connect(d.port, timeout=5)
        socks.append(polite)
        q = make_query("polite.example.")
        m = _tcp_ask_on(polite, q, 5)
        check(m is not None and _a_of(m) == [GOOD_ADDR], "a polite client "
              "after 256 that read nothing: %s %.1f s after they began "
              "(tcp_aborts %s)" % ("no answer" if m is None else _a_of(m),
                                   time.monotonic() - t0,
                                   d.stats().get("tcp_aborts")))
        # The polite client may have taken the slot of one of them (the
        # longest without progress) before all were cut off: the rest
        # are, while their sockets are still open.
        until(lambda: _delta(before, d.stats(), "tcp_aborts") >= 256, 10,
              step=0.2)
    finally:
        for s in socks:
            s.close()
    after = d.stats()
    check(_delta(before, after, "tcp_aborts") >= 256, "tcp_aborts rose by "
          "%d for 256 clients that read none of 500 KB: %s" % (
              _delta(before, after, "tcp_aborts"), after))


@scenario
def tcp_client_fragmented(t):
    """A query split over many small TCP writes (and one straddling two) is answered."""
    fu = t.fakeup()
    d = t.dnsfwd(*tls_up(fu), "--timeout", "2000")
    q1 = make_query("frag1.example.", qid=7)
    q2 = make_query("frag2.example.", qid=8)
    q3 = make_query("frag3.example.", qid=9)
    w1, w2, w3 = (fakeup.frame(q.to_wire()) for q in (q1, q2, q3))
    with tcp_connect(d.port) as s:
        for i in range(len(w1)):        # byte by byte
            s.sendall(w1[i:i + 1])
            time.sleep(0.005)
        f = tcp_read_frames(s, 1, 3)
        check(len(f) == 1 and _is_ours(q1, f[0]) is not None,
              "byte-by-byte query: %d replies" % len(f))
        stream = w2 + w3                # chunks that straddle the frames
        cut = len(w2) + 3
        for chunk in (stream[:1], stream[1:9], stream[9:cut], stream[cut:]):
            s.sendall(chunk)
            time.sleep(0.03)
        f = tcp_read_frames(s, 2, 3)
        ids = sorted(dns.message.from_wire(x).id for x in f)
        check(ids == [8, 9], "straddling queries: replies %s" % ids)


def _raw_udp(port, wire, timeout=1.0, host="127.0.0.1", linger=0.1):
    """Sends wire from a fresh UDP socket: every datagram received, for up
    to timeout, and linger more seconds once one has come."""
    out = []
    s = socket.socket(_family(host), socket.SOCK_DGRAM)
    try:
        s.connect((host, port))
        s.send(wire)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            s.settimeout(left)
            try:
                out.append(s.recv(65535))
            except (socket.timeout, ConnectionRefusedError):
                break
            deadline = min(deadline, time.monotonic() + linger)
    finally:
        s.close()
    return out


def _raw_tcp(port, wire, timeout=1.0, host="127.0.0.1"):
    """Sends wire framed on a new TCP connection: the frames that come
    back within timeout (at most one is waited for, then 0.2 s more)."""
    with tcp_connect(port, host) as s:
        s.sendall(fakeup.frame(wire))
        out = tcp_read_frames(s, 1, timeout)
        if out:
            out += tcp_read_frames(s, 1, 0.2)
    return out


def _with_opcode(q, opcode):
    w = bytearray(q.to_wire())
    w[2] = (w[2] & 0x87) | (opcode << 3)
    return bytes(w)


def _opt_rr(version=0, payload=1232, flags=0):
    """An OPT record without options (root owner)."""
    return b"\x00" + struct.pack("!HHBBHH", 41, payload, 0, version, flags, 0)


def _with_ar(wire, extra, add):
    """wire with the records `extra` appended and ARCOUNT raised by add."""
    w = bytearray(wire)
    struct.pack_into("!H", w, 10, struct.unpack("!H", w[10:12])[0] + add)
    return bytes(w) + extra


def _error_reply(replies, wire, rcode, what, opcode=0):
    """replies must be one message: wire's ID, QR=1, opcode, RCODE rcode
    (low four bits), and no answer records."""
    check(len(replies) == 1, "%s: %d replies, want one %s" % (
        what, len(replies), dns.rcode.to_text(rcode)))
    r = replies[0]
    check(len(r) >= 12, "%s: a %d-byte reply" % (what, len(r)))
    check(r[:2] == wire[:2], "%s: reply ID %s, want %s" % (
        what, r[:2].hex(), wire[:2].hex()))
    check(r[2] & 0x80, "%s: reply has QR=0" % what)
    check((r[2] >> 3) & 0x0f == opcode, "%s: reply opcode %d, want %d" % (
        what, (r[2] >> 3) & 0x0f, opcode))
    check(r[3] & 0x0f == rcode & 0x0f, "%s: RCODE %d, want %s" % (
        what, r[3] & 0x0f, dns.rcode.to_text(rcode)))
    check(struct.unpack("!HH", r[6:10]) == (0, 0), "%s: reply has answer "
          "or authority records" % what)
    return r


@scenario
def malformed_client_datagrams(t):
    """Input that is no DNS query header (under 12 bytes, or QR=1) gets no reply and counts as drops; a zero header with trailing bytes gets FORMERR; serving goes on."""
    fu = t.fakeup()
    d = t.dnsfwd(*tls_up(fu), "--timeout", "2000")
    expect_a(ask_udp(d.port, "before.example."))
    before = d.stats()
    resp = dns.message.make_response(make_query("qr1.example."))
    junk = bytearray(os.urandom(7) + b"\xff" * 40)
    junk[2] |= 0x80                   # QR=1: not a query
    bads = [b"\x12\x34\x01", os.urandom(11), resp.to_wire(), bytes(junk)]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("127.0.0.1", d.port))
        for b in bads:
            s.send(b)
        s.settimeout(0.5)
        try:
            got = s.recv(65535)
        except socket.timeout:
            got = None
        check(got is None, "a datagram that is no query got a reply: %r" %
              (got or b"")[:40])
    finally:
        s.close()
    after = d.stats()
    check(after.get("drops", 0) - before.get("drops", 0) >= len(bads),
          "drops rose by %d for %d datagrams that are no query: %s" % (
              after.get("drops", 0) - before.get("drops", 0), len(bads),
              after))
    zero = b"\x00" * 12 + b"\xff\xff\xff"
    _error_reply(_raw_udp(d.port, zero), zero, dns.rcode.FORMERR,
                 "zero header (QDCOUNT 0) with 3 trailing bytes")
    check(fu.nqueries() == 1, "a malformed datagram reached the upstream")
    expect_a(ask_udp(d.port, "after.example."), GOOD_ADDR, "after garbage")
    expect_a(ask_tcp(d.port, "after-tcp.example."), GOOD_ADDR, "after garbage")


@scenario
def opcode_notimp(t):
    """A query with opcode STATUS (2), UPDATE (5) or 15 gets NOTIMP with its ID and opcode, over UDP and (framed) TCP, counted as notimp; nothing goes upstream."""
    fu = t.fakeup()
    d = t.dnsfwd(*tls_up(fu), "--timeout", "2000")
    before = d.stats()
    for opcode in (2, 5, 15):
        for how in ("UDP", "TCP"):
            q = make_query("op%d.example." % opcode, qid=0x3000 + opcode)
            wire = _with_opcode(q, opcode)
            got = (_raw_udp if how == "UDP" else _raw_tcp)(d.port, wire)
            _error_reply(got, wire, dns.rcode.NOTIMP, "%s opcode %d" % (
                how, opcode), opcode=opcode)
    after = d.stats()
    check(_delta(before, after, "notimp") == 6, "notimp rose by %d for 6 "
          "NOTIMP answers: %s" % (_delta(before, after, "notimp"), after))
    time.sleep(0.05)
    check(fu.nqueries() == 0, "%d queries with other opcodes reached the "
          "upstream" % fu.nqueries())
    expect_a(ask_udp(d.port, "after-notimp.example."))


@scenario
def edns_badvers(t):
    """A query whose OPT has version 1 gets BADVERS (extended RCODE 16) in an OPT of version 0, with its ID, over UDP and TCP, counted as badvers; nothing goes upstream."""
    fu = t.fakeup()
    d = t.dnsfwd(*tls_up(fu), "--timeout", "2000")
    before = d.stats()
    for how in ("UDP", "TCP"):
        q = make_query("v1-%s.example." % how.lower(), qid=0x4100)
        wire = _with_ar(q.to_wire(), _opt_rr(version=1), 1)
        got = (_raw_udp if how == "UDP" else _raw_tcp)(d.port, wire)
        what = "%s query with EDNS version 1" % how
        check(len(got) == 1, "%s: %d replies, want BADVERS" % (what,
                                                                 len(got)))
        try:
            m = dns.message.from_wire(got[0])
        except Exception as e:
            raise Fail("%s: unparsable reply %r: %s" % (what, got[0][:40], e))
        check(m.id == q.id and m.flags & dns.flags.QR, "%s: reply ID %#x "
              "QR=%d" % (what, m.id, bool(m.flags & dns.flags.QR)))
        check(m.edns == 0, "%s: reply OPT version %d (-1: none), want 0" % (
            what, m.edns))
        check(m.rcode() == dns.rcode.BADVERS, "%s: RCODE %s, want BADVERS" %
              (what, dns.rcode.to_text(m.rcode())))
        check(not m.answer, "%s: reply has answers" % what)
    after = d.stats()
    check(_delta(before, after, "badvers") == 2, "badvers rose by %d for 2 "
          "BADVERS answers: %s" % (_delta(before, after, "badvers"), after))
    time.sleep(0.05)
    check(fu.nqueries() == 0, "%d EDNS version 1 queries reached the "
          "upstream" % fu.nqueries())


@scenario
def malformed_query_formerr(t):
    """A query with a good header (QR=0, opcode QUERY) but a bad body gets FORMERR with its ID, the question echoed or not, over UDP and TCP: two OPT records, QDCOUNT 0, QDCOUNT 2, a question cut short, trailing bytes; counted as formerr; nothing goes upstream."""
    fu = t.fakeup()
    d = t.dnsfwd(*tls_up(fu), "--timeout", "2000")
    base = make_query("fe.example.", qid=0x5151).to_wire()
    qsec = base[12:]
    two_q = bytearray(base + qsec)
    struct.pack_into("!H", two_q, 4, 2)
    no_q = bytearray(base[:12])
    struct.pack_into("!H", no_q, 4, 0)
    cases = [
        ("two OPT records", _with_ar(base, _opt_rr() + _opt_rr(), 2)),
        ("QDCOUNT 0", bytes(no_q)),
        ("QDCOUNT 2", bytes(two_q)),
        ("question cut short", base[:17]),
        ("3 trailing bytes", base + b"\x01\x02\x03"),
    ]
    before = d.stats()
    for what, wire in cases:
        for how in ("UDP", "TCP"):
            got = (_raw_udp if how == "UDP" else _raw_tcp)(d.port, wire)
            r = _error_reply(got, wire, dns.rcode.FORMERR, "%s, %s" % (
                how, what))
            qd = struct.unpack("!H", r[4:6])[0]
            if qd:
                check(qd == 1 and r[12:12 + len(qsec)] == qsec,
                      "%s, %s: FORMERR echoes QDCOUNT %d, not the query's "
                      "question" % (how, what, qd))
    after = d.stats()
    n = 2 * len(cases)
    check(_delta(before, after, "formerr") == n, "formerr rose by %d for "
          "%d FORMERR answers: %s" % (_delta(before, after, "formerr"), n,
                                      after))
    time.sleep(0.05)
    check(fu.nqueries() == 0, "%d malformed queries reached the upstream" %
          fu.nqueries())
    expect_a(ask_tcp(d.port, "after-formerr.example."))


USAGE_UP = ["--connect-tcp", "127.0.0.1:9"]


@scenario
def usage_errors(t):
    """Every usage error exits 2 with one stderr line naming the flag."""
    pin = read_pin()
    lu = ["--bind-udp", "127.0.0.1:5353"]
    cases = [
        (["--bogus"] + lu + USAGE_UP, "--bogus"),
        (["--bind-udp", "300.1.2.3:53"] + USAGE_UP, "--bind-udp"),
        (["--bind-udp", "localhost:53"] + USAGE_UP, "--bind-udp"),
        (["--bind-tcp", "[::1:53"] + USAGE_UP, "--bind-tcp"),
        (["--bind-udp", "127.0.0.1:70000"] + USAGE_UP, "--bind-udp"),
        (lu + ["--connect-tls", "1.2.3:853#dns.test"], "--connect-tls"),
        (lu + ["--connect-tcp", "127.0.0.1:x"], "--connect-tcp"),
        (lu + USAGE_UP + ["--connections", "abc"], "--connections"),
        (lu + USAGE_UP + ["--max-inflight", "12x"], "--max-inflight"),
        (lu + USAGE_UP + ["--timeout", "-5"], "--timeout"),
        (lu + USAGE_UP + ["--timeout=abc"], "--timeout"),
        (lu + USAGE_UP + ["--idle-timeout", "1e3"], "--idle-timeout"),
        (lu + USAGE_UP + ["--log-level", "loud"], "--log-level"),
        (lu + USAGE_UP + ["--timeout"], "--timeout"),
        (lu + USAGE_UP + ["--ca-file"], "--ca-file"),
        (USAGE_UP + ["--bind-udp"], "--bind-udp"),
        (USAGE_UP, "--bind"),
        (lu, "--connect"),
        (lu + ["--pin-sha256", pin] + USAGE_UP, "--pin-sha256"),
        (lu + ["--connect-tls", "127.0.0.1:853"], "--connect-tls"),
        (lu + ["--connect-tcp", "127.0.0.1#dns.test"], "--connect-tcp"),
        (lu + ["--connect-tls", "127.0.0.1#bad name"], "--connect-tls"),
        (lu + USAGE_UP + ["--cache-size", "-1"], "--cache-size"),
        (lu + USAGE_UP + ["--min-ttl", "x"], "--min-ttl"),
        (lu + USAGE_UP + ["--max-ttl", "0"], "--max-ttl"),
        (lu + USAGE_UP + ["--neg-max-ttl", ""], "--neg-max-ttl"),
        (lu + USAGE_UP + ["--serve-stale", "1.5"], "--serve-stale"),
        (lu + USAGE_UP + ["--min-ttl", "600", "--max-ttl", "60"],
         "--min-ttl"),
        (lu + USAGE_UP + ["--prefetch=yes"], "--prefetch"),
        (lu + USAGE_UP + ["stray"], "stray"),
    ]
    bad = []
    for args, flag in cases:
        rc, out, err = run_dnsfwd(t, args)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        if rc != 2 or len(lines) != 1 or flag not in lines[0]:
            bad.append("%s -> exit %s, stderr %r" % (" ".join(args), rc,
                                                     err[:200]))
    check(not bad, "%d of %d usage errors wrong: %s" % (
        len(bad), len(cases), "; ".join(bad)))


@scenario
def help_and_version(t):
    """--help and --version print to stdout and exit 0."""
    rc, out, err = run_dnsfwd(t, ["--help"])
    check(rc == 0 and "--connect-tls" in out and "--bind-udp" in out,
          "--help: exit %s, stdout %r, stderr %r" % (rc, out[:200], err[:200]))
    rc, out, err = run_dnsfwd(t, ["--version"])
    check(rc == 0 and re.search(r"\d+\.\d+", out),
          "--version: exit %s, stdout %r, stderr %r" % (rc, out[:200],
                                                        err[:200]))


@scenario
def bind_in_use(t):
    """Binding an address already in use (UDP or TCP) exits 1 with a message."""
    for kind, flag in ((socket.SOCK_DGRAM, "--bind-udp"),
                       (socket.SOCK_STREAM, "--bind-tcp")):
        s = socket.socket(socket.AF_INET, kind)
        try:
            s.bind(("127.0.0.1", 0))
            if kind == socket.SOCK_STREAM:
                s.listen(1)
            port = s.getsockname()[1]
            rc, out, err = run_dnsfwd(t, [flag, "127.0.0.1:%d" % port] +
                                      USAGE_UP)
            check(rc == 1 and err.strip(),
                  "%s on a busy port: exit %s, stderr %r" % (flag, rc,
                                                             err[:300]))
        finally:
            s.close()


@scenario
def missing_ca_file(t):
    """An unreadable --ca-file exits 2 (configuration: not retried under systemd) with a message."""
    rc, out, err = run_dnsfwd(t, ["--bind-udp", "127.0.0.1:%d" %
                                  udp_tcp_free_port("127.0.0.1"),
                                  "--connect-tls", "127.0.0.1:853#dns.test",
                                  "--ca-file", os.path.join(t.dir, "nope.pem")])
    check(rc == 2 and err.strip(), "exit %s, stderr %r" % (rc, err[:300]))


@scenario
def multiple_upstreams(t):
    """With one upstream refusing and one healthy, every query is answered."""
    dead = t.fakeup()
    dead.refuse()
    good = t.fakeup()
    d = t.dnsfwd(*tls_up(dead), *tls_up(good, ca=False), "--timeout", "1000")
    rs = []
    for i in range(10):
        rs.append(ask_udp(d.port, "multi%d.example." % i))
    rs += parallel(lambda i: ask_udp(d.port, "multi-par%d.example." % i),
                   range(20))
    bad = [r.describe() for r in rs if r.addrs() != [GOOD_ADDR]]
    check(not bad, "%d of %d not answered: %s" % (len(bad), len(rs), bad[:4]))


def _have_ipv6():
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.bind(("::1", 0))
        s.close()
        return True
    except OSError:
        return False


@scenario
def ipv6_listener(t):
    """An IPv6 listener [::1]:PORT answers over UDP and TCP."""
    if not _have_ipv6():
        raise Skip("::1 unavailable")
    fu = t.fakeup()
    d = t.dnsfwd(*tls_up(fu), "--timeout", "2000", host="::1")
    expect_a(ask_udp(d.port, "six.example.", host="::1"))
    expect_a(ask_tcp(d.port, "six-tcp.example.", host="::1"))


@scenario
def ipv6_upstream(t):
    """--connect-tls [::1]:PORT#dns.test reaches an upstream over IPv6."""
    if not _have_ipv6():
        raise Skip("::1 unavailable")
    fu = t.fakeup(host="::1")
    d = t.dnsfwd(*tls_up(fu, host="::1"), "--timeout", "2000")
    expect_a(ask_udp(d.port, "up6.example."))


@scenario
def max_inflight_queue(t):
    """With --max-inflight 5 on one connection, 10 queries are answered with never more than 5 in flight."""
    fu = t.fakeup()
    fu.set(delay_ms=200)
    d = t.dnsfwd(*tls_up(fu), "--connections", "1", "--max-inflight", "5",
                 "--timeout", "3000")
    rs = parallel(lambda i: ask_udp(d.port, "mi%d.example." % i, timeout=5),
                  range(10), workers=10)
    bad = [r.describe() for r in rs if r.addrs() != [GOOD_ADDR]]
    check(not bad, "%d of 10 not answered: %s" % (len(bad), bad[:4]))
    st = fu.stats()
    check(st["max_pending"] <= 5, "%d queries in flight on one connection "
          "with --max-inflight 5" % st["max_pending"])
    check(st["conns"] == 1, "%d connections with --connections 1" %
          st["conns"])


@scenario
def overload_servfail(t):
    """Beyond the pending table and wait queue (2 x 5 here), queries get a quick SERVFAIL counted as overload."""
    fu = t.fakeup()
    fu.set(delay_ms=600)
    d = t.dnsfwd(*tls_up(fu), "--connections", "1", "--max-inflight", "5",
                 "--timeout", "3000")
    before = d.stats()
    rs = parallel(lambda i: ask_udp(d.port, "ov%d.example." % i, timeout=5),
                  range(30), workers=30)
    ok = [r for r in rs if r.addrs() == [GOOD_ADDR]]
    sf = [r for r in rs if r.rcode() == dns.rcode.SERVFAIL]
    other = [r.describe() for r in rs if r not in ok and r not in sf]
    check(not other, "neither answer nor SERVFAIL: %s" % other[:4])
    check(len(ok) >= 10, "only %d answered; 5 in flight + 5 queued should "
          "be" % len(ok))
    check(sf, "all 30 answered: the wait queue is not bounded")
    slow = [r.elapsed for r in sf if r.elapsed > 0.5]
    check(not slow, "overload SERVFAILs took %s s" % slow[:4])
    after = d.stats()
    grew = after.get("overload", 0) - before.get("overload", 0)
    check(grew == len(sf), "overload rose by %d for %d SERVFAILs: %s" % (
        grew, len(sf), after))
    check(fu.stats()["max_pending"] <= 5, "%d in flight on one connection"
          % fu.stats()["max_pending"])
    st = d.stats()
    check(st.get("inflight") == 0, "inflight not back to 0: %s" % st)


@scenario
def pin_applies_to_preceding(t):
    """--pin-sha256 binds only the --connect-tls before it, not the others."""
    dead = t.fakeup()
    dead.refuse()
    good = t.fakeup()
    wrong = read_pin("wrong-pin.txt")
    d = t.dnsfwd(*tls_up(dead, pins=[wrong]), *tls_up(good, ca=False),
                 "--timeout", "1000")
    for i in range(4):
        expect_a(ask_udp(d.port, "pa%d.example." % i), GOOD_ADDR,
                 "pinned dead upstream first")
    check(not d.grep("pin mismatch"), "pin applied to the wrong upstream: "
          "%s" % d.grep("pin mismatch")[:2])
    # The pin follows the healthy upstream here and must be checked there.
    untrusted = t.fakeup(cert="untrusted")
    d2 = t.dnsfwd("--connect-tls", "127.0.0.1:%d#dns.test" % good.port,
                  "--connect-tls", "127.0.0.1:%d" % untrusted.port,
                  "--pin-sha256", wrong, "--ca-file", pki("ca.pem"),
                  "--timeout", "3000")
    for i in range(4):
        expect_a(ask_udp(d2.port, "pb%d.example." % i, timeout=4), GOOD_ADDR,
                 "name-checked upstream before a pinned one")
    d2.stop_and_check()


@scenario
def failover_on_auth_failure(t):
    """With one upstream failing authentication and one healthy, every query is answered."""
    bad = t.fakeup(cert="untrusted")
    good = t.fakeup()
    d = t.dnsfwd(*tls_up(bad), *tls_up(good, ca=False), "--timeout", "3000")
    rs = [ask_udp(d.port, "fa%d.example." % i, timeout=4) for i in range(6)]
    rs += parallel(lambda i: ask_udp(d.port, "fa-par%d.example." % i,
                                     timeout=4),
                   range(10))
    bad_rs = [r.describe() for r in rs if r.addrs() != [GOOD_ADDR]]
    check(not bad_rs, "%d of %d not answered: %s" % (len(bad_rs), len(rs),
                                                     bad_rs[:4]))
    check(bad.nqueries() == 0, "queries reached the untrusted upstream")


@scenario
def sigterm_with_work_pending(t):
    """SIGTERM with queries in flight, queued, on TCP clients and in a stalled handshake still exits 0 within 3 s (a drain of at most 1 s)."""
    slow = t.fakeup()
    slow.set(delay_ms=5000)
    stall = t.fakeup()
    stall.set(mode="stall")
    d = t.dnsfwd(*tls_up(slow), *tls_up(stall, ca=False), "--connections",
                 "1", "--max-inflight", "3", "--timeout", "8000")
    socks = []
    try:
        for i in range(8):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.connect(("127.0.0.1", d.port))
            s.send(make_query("term%d.example." % i).to_wire())
            socks.append(s)
        for i in range(2):
            c = tcp_connect(d.port)
            c.sendall(fakeup.frame(make_query("tterm%d.example." % i)
                                   .to_wire()) + b"\x00\x30\x12")
            socks.append(c)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and slow.nqueries() < 3:
            time.sleep(0.02)
        check(slow.nqueries() >= 1, "no query reached the upstream")
        d.stop_and_check()
    finally:
        for s in socks:
            s.close()


@scenario
def sigint_stops(t):
    """SIGINT stops dnsfwd with exit 0 and a final 'stopped' line."""
    fu = t.fakeup()
    d = t.dnsfwd(*tls_up(fu))
    expect_a(ask_udp(d.port, "int.example."))
    d.stop_and_check(signal.SIGINT)


# ---------------------------------------------------------------- logging

LEVEL_PRI = {"error": 3, "warn": 4, "info": 6, "debug": 7}


def _line_level(ln, journal):
    """The level a log line's prefix names, or None when the line lacks a
    prefix of the expected style (or carries both styles)."""
    if journal:
        m = re.match(r"<(\d)>", ln)
        if not m or re.match(r"<\d>(error|warn|info|debug): ", ln):
            return None
        return {v: k for k, v in LEVEL_PRI.items()}.get(int(m.group(1)))
    m = re.match(r"(error|warn|info|debug): ", ln)
    return m.group(1) if m else None


@scenario
def journal_priority_prefixes(t):
    """With stderr the journal stream JOURNAL_STREAM names, every line starts with its syslog priority (<4> warn, <6> info, <7> debug, <3> error); without it, or when it names another stream, with 'warn: ', 'info: ', ..."""
    for journal, js in ((True, "@stderr"), (False, None),
                        (False, "8:12345")):
        env = {"JOURNAL_STREAM": js}
        style = "with JOURNAL_STREAM=%s" % js
        dead = t.fakeup()
        dead.refuse()
        good = t.fakeup()
        d = t.dnsfwd(*tls_up(dead), *tls_up(good, ca=False), "--timeout",
                     "1000", env=env)
        for i in range(3):
            expect_a(ask_udp(d.port, "jr%d.example." % i))
        d.stats()
        d.stop_and_check()
        lines = d.text().splitlines()
        bad = [ln for ln in lines if _line_level(ln, journal) is None]
        check(lines and not bad, "%s: %d of %d stderr lines lack the "
              "prefix, e.g. %r" % (style, len(bad), len(lines), bad[:3]))
        # Which message has which level: info, debug and warning lines.
        want = [(" ready: ", "info"), ("listening on", "info"),
                ("stats:", "info"), ("stopped", "info"),
                ("connecting", "debug"),
                ("127.0.0.1:%d: " % dead.port, "warn")]
        for sub, level in want:
            got = [ln for ln in lines if sub in ln]
            check(got, "%s: no log line with %r: %s" % (style, sub,
                                                        d.tail()))
            wrong = [ln for ln in got if _line_level(ln, journal) != level]
            check(not wrong, "%s: %r lines should be %s (%s): %r" % (
                style, sub, level, "<%d>" % LEVEL_PRI[level] if journal
                else level + ": ", wrong[:2]))
        # An error at startup (exit 2) is prefixed too.
        rc, out, err = run_dnsfwd(t, [
            "--bind-udp", "127.0.0.1:%d" % udp_tcp_free_port("127.0.0.1"),
            "--connect-tls", "127.0.0.1:853#dns.test",
            "--ca-file", os.path.join(t.dir, "nope.pem")], env=env)
        elines = err.splitlines()
        check(rc == 2 and elines and all(
            _line_level(ln, journal) == "error" for ln in elines),
            "%s: unreadable CA file: exit %s, stderr %r, want every line "
            "at level error" % (style, rc, err[:300]))


# ---------------------------------------------------------------- client TCP

def _raise_nofile(n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < n:
        new = n if hard == resource.RLIM_INFINITY else min(n, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


def _tcp_ask_on(s, q, timeout):
    """Sends q on the open TCP socket s; our reply (dns.message) or None."""
    s.sendall(fakeup.frame(q.to_wire()))
    for data in tcp_read_frames(s, 1, timeout):
        m = _is_ours(q, data)
        if m is not None:
            return m
    return None


def _a_of(m):
    return [r.address for rr in m.answer for r in rr
            if rr.rdtype == dns.rdatatype.A]


@scenario
def tcp_client_limit(t):
    """dnsfwd serves at most 256 TCP clients at once; with all 256 open and idle, a 257th is answered at once in the slot of the client longest without progress (the first), which is closed, while the others are still served."""
    _raise_nofile(4096)
    fu = t.fakeup()
    d = t.dnsfwd(*tls_up(fu), "--timeout", "2000")
    socks = []
    try:
        deadline = time.monotonic() + 8     # well inside the 10 s idle limit
        for i in range(256):
            s = tcp_connect(d.port)
            socks.append(s)
            left = deadline - time.monotonic()
            m = _tcp_ask_on(s, make_query("lim%d.example." % i),
                            max(0.1, min(2.0, left)))
            check(m is not None and _a_of(m) == [GOOD_ADDR],
                  "TCP client %d of 256 got %s" % (
                      i + 1, "no answer" if m is None else _a_of(m)))
            if i == 0:
                first_at = time.monotonic()
        # The first has been idle over a second, long enough to give way.
        time.sleep(max(0, first_at + 1.2 - time.monotonic()))
        q = make_query("lim-extra.example.")
        extra = tcp_connect(d.port)
        socks.append(extra)
        t0 = time.monotonic()
        extra.sendall(fakeup.frame(q.to_wire()))
        f = tcp_read_frames(extra, 1, 3)
        m = _is_ours(q, f[0]) if f else None
        check(m is not None and _a_of(m) == [GOOD_ADDR],
              "257th TCP client with 256 idle ones not served within 3 s "
              "(%d frames): %s" % (len(f), d.tail(3)))
        t.note("257th answered in %.2f s" % (time.monotonic() - t0))
        how, n = _read_to_end(socks[0], 2)
        check(how in ("eof", "reset") and n == 0, "the client longest "
              "without progress, when a 257th came: %s after %d bytes, "
              "want closed" % (how, n))
        for i in (1, 255):
            m = _tcp_ask_on(socks[i], make_query("lim-again%d.example." % i),
                            2)
            check(m is not None and _a_of(m) == [GOOD_ADDR],
                  "TCP client %d of 256 no longer served after a 257th "
                  "took the first's slot" % (i + 1))
    finally:
        for s in socks:
            s.close()


@scenario
@slow
def tcp_client_idle(t):
    """A TCP client silent for 10 s is closed (EOF 9-12 s after its query); one sending a query every 3 s stays open past 12 s."""
    fu = t.fakeup()
    d = t.dnsfwd(*tls_up(fu), "--timeout", "2000")
    idle = tcp_connect(d.port)
    busy = tcp_connect(d.port)
    try:
        t0 = time.monotonic()
        m = _tcp_ask_on(idle, make_query("idle.example."), 2)
        last = t0                          # the idle client's last write
        check(m is not None and _a_of(m) == [GOOD_ADDR],
              "idle client: no answer to its one query")
        sent, eof_at = 0, None
        for _ in range(200):
            now = time.monotonic()
            if sent < 5 and now >= t0 + 3 * sent:
                m = _tcp_ask_on(busy, make_query("busy%d.example." % sent),
                                2)
                check(m is not None and _a_of(m) == [GOOD_ADDR],
                      "busy client: no answer at %.1f s" % (now - t0))
                sent += 1
                continue
            if eof_at is not None or now >= last + 12.5:
                if sent == 5 and now >= t0 + 12.5:
                    break
            nxt = t0 + 3 * sent if sent < 5 else t0 + 12.5
            if eof_at is None:
                nxt = min(nxt, last + 12.5)
                r, _, _ = select.select([idle], [], [], max(0, nxt - now))
                if r:
                    try:
                        data = idle.recv(65535)
                    except OSError:
                        data = b""
                    check(not data, "idle client got %d unexpected bytes"
                          % len(data))
                    eof_at = time.monotonic()
            else:
                time.sleep(max(0, nxt - now))
        check(eof_at is not None, "idle TCP client still open %.1f s after "
              "its last query" % (time.monotonic() - last))
        check(9.0 <= eof_at - last <= 12.0, "idle TCP client closed %.2f s "
              "after its last query, want 10" % (eof_at - last))
        check(sent == 5, "busy client sent %d of 5 queries" % sent)
        m = _tcp_ask_on(busy, make_query("busy-last.example."), 2)
        check(m is not None and _a_of(m) == [GOOD_ADDR],
              "busy client (a query every 3 s) not answered %.1f s after it "
              "connected" % (time.monotonic() - t0))
    finally:
        idle.close()
        busy.close()


# ---------------------------------------------------------------- upstreams

@scenario
def warnings_rate_limited(t):
    """With the only upstream refusing, 200 queries over 2 s all get SERVFAIL and at most 3 warnings are logged about it."""
    fu = t.fakeup()
    fu.refuse()
    d = t.dnsfwd(*tls_up(fu), "--timeout", "1000")
    label = "127.0.0.1:%d" % fu.port
    t0 = time.monotonic()
    bad = []
    for i in range(200):
        r = ask_udp(d.port, "rl%d.example." % i, timeout=2)
        if r.rcode() != dns.rcode.SERVFAIL:
            bad.append(r.describe())
        pause = t0 + (i + 1) * 0.0105 - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    check(not bad, "%d of 200 not SERVFAIL: %s" % (len(bad), bad[:3]))
    fails = [ln for ln in d.grep("closed:") if label in ln]
    check(len(fails) >= 4, "only %d failed dials of %s in %.1f s: too few to "
          "show the rate limit: %s" % (len(fails), label,
                                       time.monotonic() - t0, d.tail(4)))
    warns = [ln for ln in d.lines()
             if _line_level(ln, False) == "warn" and label in ln]
    check(1 <= len(warns) <= 3, "%d warnings about %s for %d failed dials "
          "in %.1f s (want 1 to 3): %s" % (len(warns), label, len(fails),
                                           time.monotonic() - t0, warns[:5]))


def _rtt_pair(t):
    """Two upstreams, the first answering 150 ms late, and a dnsfwd given
    both after 20 warm-up queries: (slow, fast, dnsfwd)."""
    slow, fast = t.fakeup(), t.fakeup()
    slow.set(delay_ms=150)
    d = t.dnsfwd(*tls_up(slow), *tls_up(fast, ca=False), "--timeout", "2000")
    for i in range(20):
        expect_a(ask_udp(d.port, "warm%d.example." % i), GOOD_ADDR, "warm-up")
    return slow, fast, d


@scenario
def rtt_prefers_faster(t):
    """Of two upstreams, the one without a 150 ms delay gets the first copy of at least 25 of 30 sequential queries after 20 warm-up ones.  A second copy to the other (a hedge, when a loaded machine holds an answer past the 100 ms attempt timeout) is allowed but not counted as a choice."""
    laggy, fast, d = _rtt_pair(t)
    for i in range(30):
        expect_a(ask_udp(d.port, "rtt%d.example." % i))
    first = {}     # name -> (time of its first copy, upstream)
    for fu, which in ((fast, "fast"), (laggy, "slow")):
        for i in range(30):
            for rec in fu.records("rtt%d.example." % i):
                name = rec["qname"]
                if name not in first or rec["t"] < first[name][0]:
                    first[name] = (rec["t"], which)
    n_fast = sum(1 for _, which in first.values() if which == "fast")
    copies = fast.nqueries("rtt") + laggy.nqueries("rtt")
    check(len(first) == 30, "the upstreams saw %d of the 30 names" %
          len(first))
    check(copies <= 30 + 3, "%d copies of 30 queries: more second copies "
          "than a loaded machine explains" % copies)
    check(n_fast >= 25, "the fast upstream got the first copy of %d of 30, "
          "the 150 ms one %d (warm-up: %d fast, %d slow)" % (
              n_fast, 30 - n_fast, fast.nqueries("warm"),
              laggy.nqueries("warm")))


@scenario
def rtt_explore_finds_recovery(t):
    """Two upstreams trade speeds: the one measured at 150 ms becomes fast and the fast one takes 60 ms (under the 100 ms attempt timeout, so no second copy re-measures the other).  dnsfwd prefers on its old measure until it re-measures the other with one real query (explore, every 2 s), then follows it while its answers come clearly sooner, and so sends at least 15 of the last 20 queries of 8 s to the now faster one (one explorer per 2 s alone would take about 16 s)."""
    a, b, d = _rtt_pair(t)
    check(b.nqueries("warm") >= 15, "warm-up: the fast upstream got %d of 20"
          % b.nqueries("warm"))
    a.set(delay_ms=0)
    b.set(delay_ms=60)
    names, end = [], time.monotonic() + 8
    while time.monotonic() < end:
        names.append("swap%d.example." % len(names))
        expect_a(ask_udp(d.port, names[-1]), GOOD_ADDR, "after the swap")
        time.sleep(0.05)
    last = names[-20:]
    on_a = sum(1 for n in last if a.count(n) > 0)
    check(on_a >= 15, "of the last 20 of %d queries, %d went to the upstream "
          "that became fast, %d to the one that became slow" % (
              len(names), on_a, sum(1 for n in last if b.count(n) > 0)))


@scenario
def silent_connection_replaced(t):
    """A connection that reads queries but never answers: the query goes again on a second connection after its attempt timeout (1 s for an upstream not heard from, or half of what is left of the 2 s deadline) and is answered there; the silent connection is replaced at the deadline ('silent' logged, closed) and the next query goes over the new one."""
    fu = t.fakeup()
    fu.set(mode="blackhole_first_conn")
    d = t.dnsfwd(*tls_up(fu), "--timeout", "2000")
    r = ask_udp(d.port, "hole.example.", timeout=4)
    expect_a(r, GOOD_ADDR, "query on the silent connection")
    # NOERROR at all means before the 2 s deadline (SERVFAIL then): past
    # it only by the client's own delays.  The attempt timeout is at
    # least 0.75 s while the first handshake takes under 0.5 s.
    check(0.7 <= r.elapsed <= 2.1, "answered after %.2f s, want after the "
          "attempt timeout and before the deadline" % r.elapsed)
    check(fu.nqueries("hole") == 2, "the upstream saw %d copies of the "
          "query, want 2" % fu.nqueries("hole"))
    check([q["conn"] for q in fu.queries if q["qname"] == "hole.example."]
          == [1, 2], "copies went over connections %s, want [1, 2]" % [
              q["conn"] for q in fu.queries if q["qname"] == "hole.example."])
    check(until(lambda: d.grep("silent"), 3), "log does not say the connection was silent: "
          "%s" % d.tail(4))
    r = ask_udp(d.port, "after-hole.example.", timeout=3)
    expect_a(r, GOOD_ADDR, "query after the silent connection")
    st = fu.stats()
    check(st["conns"] == 2, "fakeup saw %d connections, want 2: %s" % (
        st["conns"], st))
    on = [q["conn"] for q in fu.queries if q["qname"] == "after-hole.example."]
    check(on == [2], "next query went over connection(s) %s, want [2]" % on)
    check(until(lambda: fu.stats()["closed"] >= 1, 2), "the silent "
          "connection was not closed: %s" % fu.stats())


def _ede(m):
    """[(code, text)] of the EDE options of m."""
    out = []
    if m is None or m.edns < 0:
        return out
    for opt in m.options:
        if opt.otype != 15:
            continue
        code, text = getattr(opt, "code", None), getattr(opt, "text", None)
        if code is None:
            code = struct.unpack("!H", opt.data[:2])[0]
            text = opt.data[2:].decode("utf-8", "replace")
        out.append((int(code), text))
    return out


def _expect_ede(r, code, what):
    expect_servfail(r, what)
    e = _ede(r.msg)
    check(len(e) == 1 and e[0][0] == code and e[0][1] and e[0][1].strip(),
          "%s: EDE %s, want one option, code %d, with EXTRA-TEXT" % (
              what, e, code))


def _expect_no_opt(r, what):
    expect_servfail(r, what)
    arcount = struct.unpack("!H", r.raw[0][10:12])[0]
    check(r.msg.edns < 0 and arcount == 0,
          "%s: SERVFAIL without EDNS in the query has ARCOUNT %d" % (
              what, arcount))


@scenario
def servfail_ede_text(t):
    """SERVFAIL carries EDE 23 with text when the upstream refuses, EDE 22 when it is too slow, and no OPT when the query had none."""
    down = t.fakeup()
    down.refuse()
    d = t.dnsfwd(*tls_up(down), "--timeout", "500")
    _expect_ede(ask_udp(d.port, make_query("ede-down.example.", edns=1232)),
                23, "refusing upstream")
    _expect_ede(ask_tcp(d.port, make_query("ede-down-tcp.example.",
                                           edns=1232)),
                23, "refusing upstream, TCP")
    _expect_no_opt(ask_udp(d.port, make_query("ede-down-plain.example.")),
                   "refusing upstream")
    slow_up = t.fakeup()
    slow_up.set(delay_ms=1500)
    d2 = t.dnsfwd(*tls_up(slow_up), "--timeout", "500")
    _expect_ede(ask_udp(d2.port, make_query("ede-slow.example.", edns=1232),
                        timeout=3), 22, "upstream slower than --timeout")
    _expect_no_opt(ask_udp(d2.port, make_query("ede-slow-plain.example."),
                           timeout=3), "upstream slower than --timeout")
    check(slow_up.nqueries("ede-slow") >= 2,
          "the slow upstream saw %d queries" % slow_up.nqueries("ede-slow"))


def fixed_ports_lock():
    """Held by scenarios that use fixed ports (853, 53), so that suites
    run at once (tests/runall.py runs three) take turns."""
    return host_lock("dnsfwd-it-fixed-ports.lock", 20)


@scenario
def default_port_853(t):
    """--connect-tls 127.0.0.2#dns.test, without a port, dials port 853."""
    with fixed_ports_lock():
        _default_port_853(t)


def _default_port_853(t):
    try:
        fu = t.fakeup(host="127.0.0.2", port=853)
    except OSError as e:
        raise Skip("cannot listen on 127.0.0.2:853: %s" % e)
    d = t.dnsfwd("--connect-tls", "127.0.0.2#dns.test", "--ca-file",
                 pki("ca.pem"), "--timeout", "2000")
    expect_a(ask_udp(d.port, "p853.example."), GOOD_ADDR, "upstream on 853")
    check(fu.nqueries("p853") == 1, "fakeup on 127.0.0.2:853 saw %d queries"
          % fu.nqueries("p853"))
    d.stop_and_check()
    fu.stop()


@scenario
def default_port_53(t):
    """--bind-udp 127.0.0.3 and --bind-tcp 127.0.0.3, without a port, listen on port 53."""
    with fixed_ports_lock():
        _default_port_53(t)


def _default_port_53(t):
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        s = socket.socket(socket.AF_INET, kind)
        try:
            s.bind(("127.0.0.3", 53))
        except OSError as e:
            raise Skip("cannot bind 127.0.0.3:53: %s" % e)
        finally:
            s.close()
    fu = t.fakeup()
    d = t.dnsfwd("--bind-udp", "127.0.0.3", "--bind-tcp", "127.0.0.3",
                 *tls_up(fu), "--timeout", "2000", udp=False, tcp=False)
    expect_a(ask_udp(53, "p53.example.", host="127.0.0.3"), GOOD_ADDR,
             "UDP 127.0.0.3:53")
    expect_a(ask_tcp(53, "p53-tcp.example.", host="127.0.0.3"), GOOD_ADDR,
             "TCP 127.0.0.3:53")
    for kind in ("udp", "tcp"):
        check(d.grep("listening on %s 127.0.0.3:53" % kind),
              "log lacks 'listening on %s 127.0.0.3:53': %s" % (kind,
                                                               d.tail(4)))
    d.stop_and_check()


@scenario
def large_reply_over_tcp(t):
    """A 20,000-byte TXT answer reaches TCP clients intact; UDP with EDNS 4096 gets TC=1 and no records, within 1232 bytes."""
    fu = t.fakeup()
    d = t.dnsfwd(*tls_up(fu), "--timeout", "2000")
    want = sorted(fakeup.huge_txt_strings())

    def txts(m):
        return sorted(s.decode() for rr in m.answer for rd in rr
                      for s in rd.strings)
    for edns in (None, 1232):
        what = "TCP%s" % ("" if edns is None else " with EDNS %d" % edns)
        r = ask_tcp(d.port, make_query("huge.example.", "TXT", edns=edns))
        check(r.msg is not None, "%s: %s" % (what, r.describe()))
        got = txts(r.msg)
        check(r.msg.rcode() == dns.rcode.NOERROR and got == want and
              not (r.msg.flags & dns.flags.TC),
              "%s: %s TC=%d, %d of %d strings intact, %d bytes" % (
                  what, dns.rcode.to_text(r.msg.rcode()),
                  bool(r.msg.flags & dns.flags.TC),
                  len(set(got) & set(want)), len(want), len(r.raw[0])))
        check(len(r.raw[0]) >= 20000, "%s: %d bytes" % (what, len(r.raw[0])))
    r = ask_udp(d.port, make_query("huge.example.", "TXT", edns=4096))
    check(r.msg is not None, "UDP EDNS 4096: %s" % r.describe())
    check(r.msg.flags & dns.flags.TC and len(r.raw[0]) <= 1232,
          "UDP EDNS 4096: TC=%d, %d bytes" % (
              bool(r.msg.flags & dns.flags.TC), len(r.raw[0])))
    check(not r.msg.answer and not r.msg.authority and not r.msg.additional,
          "UDP EDNS 4096: TC reply has %d/%d/%d records" % (
              len(r.msg.answer), len(r.msg.authority),
              len(r.msg.additional)))
    expect_a(ask_tcp(d.port, "after-huge.example."), GOOD_ADDR,
             "TCP after the huge answer")


@scenario
def upstream_backoff_probe(t):
    """With the only upstream failing every dial, 3 s of queries make at most 6 dials, spaced by the 250/500/1000/2000 ms backoff (up to 25% less)."""
    fu = t.fakeup()
    fu.set(mode="reset")
    d = t.dnsfwd(*tls_up(fu), "--timeout", "1000")
    t0 = time.monotonic()
    bad, n = [], 0
    while time.monotonic() - t0 < 3.0 and n < 1000:
        r = ask_udp(d.port, "bo%d.example." % n, timeout=2)
        if r.rcode() != dns.rcode.SERVFAIL:
            bad.append(r.describe())
        n += 1
        time.sleep(0.01)
    time.sleep(0.05)
    with fu.lock:
        times = [x - t0 for x in fu.conn_times]
    check(not bad, "%d of %d not SERVFAIL: %s" % (len(bad), n, bad[:3]))
    desc = "dials at %s s for %d queries" % (
        ", ".join("%.2f" % x for x in times), n)
    check(len(times) <= 6, "%d %s" % (len(times), desc))
    check(len(times) >= 3, "no probing after the backoff: %s" % desc)
    for i in range(min(4, len(times) - 1)):
        b = 0.25 * 2 ** i
        gap = times[i + 1] - times[i]
        # A dial waits on the next query, which a loaded machine can
        # hold back: the lower bound is the one the backoff sets.
        check(0.75 * b - 0.03 <= gap <= b + 0.5,
              "dial %d came %.3f s after the one before, want %.3f-%.3f s "
              "(%s)" % (i + 2, gap, 0.75 * b, b, desc))


@scenario
def failover_slow_dial(t):
    """With --timeout 4000 and the first upstream stalling its TLS handshake, the first query is answered by the second upstream within 3.5 s: a dial slow past half the timeout yields (one that did not would end in SERVFAIL at 4 s)."""
    stall = t.fakeup()
    stall.set(mode="stall")
    good = t.fakeup()
    d = t.dnsfwd(*tls_up(stall), *tls_up(good, ca=False), "--timeout", "4000")
    r = ask_udp(d.port, "slowdial.example.", timeout=5)
    expect_a(r, GOOD_ADDR, "first query, first upstream stalling")
    check(r.elapsed < 3.5, "answered after %.2f s, want under 3.5 s (the "
          "stalled dial should yield at 2 s, half the timeout)" % r.elapsed)
    check(stall.stats()["conns"] >= 1, "dnsfwd never dialled the first "
          "(stalling) upstream, so no slow dial was tested: %s" % d.tail(4))
    check(good.count("slowdial.example.") == 1 and stall.nqueries() == 0,
          "the healthy upstream saw %d queries, the stalled one %d" % (
              good.count("slowdial.example."), stall.nqueries()))


# ---------------------------------------------------------------- RD bit

@scenario
def rd_always_set_upstream(t):
    """An RD=0 query goes upstream with RD=1 (a resolver that refuses RD=0 still answers it) and its answer, fresh or cached, over UDP or TCP, carries RD=0; an RD=1 query's carries RD=1."""
    fu = t.fakeup()
    fu.set(refuse_rd0=True)
    d = t.dnsfwd(*tls_up(fu), "--timeout", "2000")
    for how, name in (("UDP", "rd0.example."), ("TCP", "rd0-tcp.example.")):
        ask = ask_udp if how == "UDP" else ask_tcp
        for rnd, rd in (("first", False), ("cached", False),
                        ("cached", True)):
            what = "%s %s RD=%d query" % (rnd, how, rd)
            r = ask(d.port, make_query(name, rd=rd))
            expect_a(r, GOOD_ADDR, what)
            check(bool(r.msg.flags & dns.flags.RD) == rd, "%s: answer has "
                  "RD=%d" % (what, not rd))
        time.sleep(0.05)
        recs = fu.records(name)
        check(len(recs) == 1 and recs[0]["rd"], "upstream queries for %s "
              "(asked with RD=0 first): RD bits %s, want one with RD=1" % (
                  name, [q["rd"] for q in recs]))


@scenario
def rd0_leader_coalesced(t):
    """An RD=0 query leading a coalesced group does not hand REFUSED to the RD=1 queries that joined it: one upstream query, with RD=1; all seven get the A answer, each with its own ID and RD bit."""
    fu = t.fakeup()
    fu.set(refuse_rd0=True, delay_ms=400)
    d = t.dnsfwd(*tls_up(fu), "--timeout", "3000")
    name = "rdmix.example."
    qs = [make_query(name, qid=0x7000, rd=False)]
    qs += [make_query(name, qid=0x7001 + i, rd=(i != 2)) for i in range(6)]
    res = _blast_udp(d.port, qs, gap=0.1)
    bad = []
    for q, (raw, _) in zip(qs, res):
        rd = bool(q.flags & dns.flags.RD)
        if raw is None:
            bad.append("%#x RD=%d: no reply" % (q.id, rd))
            continue
        m = dns.message.from_wire(raw)
        if (m.id != q.id or m.rcode() != dns.rcode.NOERROR or
                _a_of(m) != [GOOD_ADDR] or
                bool(m.flags & dns.flags.RD) != rd):
            bad.append("%#x RD=%d: got %s %s RD=%d" % (
                q.id, rd, dns.rcode.to_text(m.rcode()), _a_of(m),
                bool(m.flags & dns.flags.RD)))
    check(not bad, "%d of %d wrong: %s" % (len(bad), len(qs), bad[:4]))
    time.sleep(0.1)
    recs = fu.records(name)
    check(len(recs) == 1 and recs[0]["rd"], "upstream queries for one "
          "coalesced group led by RD=0: RD bits %s, want one with RD=1" %
          [q["rd"] for q in recs])


# ---------------------------------------------------------------- deadlines

def _staggered(port, plan, timeout=5.0):
    """plan: [(seconds after now, query)]: each sent over UDP at its time
    in its own thread; the Replies in order."""
    t0 = time.monotonic()

    def one(item):
        at, q = item
        _until(t0, at)
        return ask_udp(port, q, timeout=timeout)
    return parallel(one, plan, workers=len(plan))


@scenario
def coalesced_own_deadline(t):
    """A query that joined an identical one in flight keeps its own deadline: --timeout 2000, an upstream not heard from yet (attempt timeout 1 s) answering in 2.25 s, the first asker gets SERVFAIL at 2 s and the one that joined at 0.75 s still gets the answer; the upstream saw one query and the copy sent after the attempt timeout."""
    fu = t.fakeup()
    fu.set(delay_ms=2250)
    d = t.dnsfwd(*tls_up(fu), "--timeout", "2000", "--prewarm")
    # Connected first, so that no handshake on a loaded machine eats
    # into the joiner's 0.5 s of slack (its deadline 2.75 s).  It joins
    # before the first's 1 s attempt timeout, after which an identical
    # query would start its own.
    check(until(lambda: fu.stats()["handshakes"] >= 1, 5),
          "--prewarm: no handshake within 5 s")
    name = "joinlate.example."
    ra, rb = _staggered(d.port, [(0, make_query(name, qid=0x0a0a)),
                                 (0.75, make_query(name, qid=0x0b0b))])
    expect_servfail(ra, "first query, its deadline passed at 2 s")
    # Its deadline moved to the joiner's would bring it the 2.25 s answer
    # (not SERVFAIL): the bound has only to stay clear of the joiner's
    # 2.75 s.
    check(1.7 <= ra.elapsed <= 2.4, "first query: SERVFAIL after %.2f s, "
          "want about 2 s, before the joiner's deadline" % ra.elapsed)
    expect_a(rb, GOOD_ADDR, "query that joined at 0.75 s (deadline 2.75 s), "
             "upstream answer at 2.25 s")
    check(rb.elapsed <= 2.0, "joined query answered %.2f s after it was "
          "asked, past its 2 s deadline" % rb.elapsed)
    hedges = d.stats()["hedges"]
    check(fu.count(name) == 1 + hedges and hedges <= 1, "the upstream saw %d "
          "queries for %s, want 1 (the joiner shares the first) and %d "
          "copy" % (fu.count(name), name, hedges))


@scenario
def coalesced_joiner_times_out(t):
    """A query that joined an identical one in flight fails at its own deadline, not its leader's: --timeout 1000, an upstream that never answers, the query asked 0.5 s after the first gets SERVFAIL about 1 s after it was asked."""
    fu = t.fakeup()
    d = t.dnsfwd(*tls_up(fu), "--timeout", "1000")
    expect_a(ask_udp(d.port, "warm.example."), GOOD_ADDR, "warm-up")
    fu.set(mode="silent")
    name = "joinfail.example."
    ra, rb = _staggered(d.port, [(0, make_query(name, qid=0x0c0c)),
                                 (0.5, make_query(name, qid=0x0d0d))])
    expect_servfail(ra, "first query")
    check(0.8 <= ra.elapsed <= 1.6, "first query: SERVFAIL after %.2f s, "
          "want about 1 s" % ra.elapsed)
    expect_servfail(rb, "query that joined at 0.5 s")
    check(0.8 <= rb.elapsed <= 1.6, "query that joined at 0.5 s: SERVFAIL "
          "%.2f s after it was asked, want about 1 s (its own deadline)" %
          rb.elapsed)


# ---------------------------------------------------------------- wildcard

@scenario
def wildcard_udp_reply_source(t):
    """With --bind-udp 0.0.0.0:PORT a UDP query to 127.0.0.2 or 127.0.0.3 is answered from that address (a client socket connected to it gets the answer; recvfrom names it), one to 127.0.0.1 from 127.0.0.1; TCP works too."""
    fu = t.fakeup()
    d = t.dnsfwd(*tls_up(fu), "--timeout", "2000", host="0.0.0.0")
    for addr in ("127.0.0.2", "127.0.0.3", "127.0.0.1"):
        tag = addr.replace(".", "-")
        expect_a(ask_udp(d.port, make_query("w%s.example." % tag), host=addr,
                         timeout=2),
                 GOOD_ADDR, "UDP to %s:%d from a connected socket" % (
                     addr, d.port))
        q = make_query("wf%s.example." % tag)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.bind(("127.0.0.1", 0))
            s.settimeout(2)
            s.sendto(q.to_wire(), (addr, d.port))
            try:
                data, src = s.recvfrom(65535)
            except socket.timeout:
                raise Fail("UDP to %s:%d from an unconnected socket: no "
                           "reply" % (addr, d.port))
        finally:
            s.close()
        check(_is_ours(q, data) is not None, "UDP to %s: not our answer" %
              addr)
        check(src == (addr, d.port), "UDP query to %s:%d answered from "
              "%s:%d" % (addr, d.port, src[0], src[1]))
    expect_a(ask_tcp(d.port, "wild-tcp.example.", host="127.0.0.2"),
             GOOD_ADDR, "TCP to 127.0.0.2")


@scenario
def wildcard_udp6_reply_source(t):
    """With --bind-udp [::]:PORT a UDP query to ::1 is answered from ::1 (connected client socket; recvfrom names it)."""
    if not _have_ipv6():
        raise Skip("::1 unavailable")
    fu = t.fakeup()
    d = t.dnsfwd(*tls_up(fu), "--timeout", "2000", host="::")
    expect_a(ask_udp(d.port, "w6.example.", host="::1", timeout=2),
             GOOD_ADDR, "UDP to [::1] from a connected socket")
    q = make_query("w6f.example.")
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        s.bind(("::1", 0))
        s.settimeout(2)
        s.sendto(q.to_wire(), ("::1", d.port))
        try:
            data, src = s.recvfrom(65535)
        except socket.timeout:
            raise Fail("UDP to [::1]:%d: no reply" % d.port)
    finally:
        s.close()
    check(_is_ours(q, data) is not None and src[:2] == ("::1", d.port),
          "UDP to [::1]:%d answered from %s" % (d.port, src[:2]))
    expect_a(ask_tcp(d.port, "w6-tcp.example.", host="::1"), GOOD_ADDR,
             "TCP to [::1]")


# ---------------------------------------------------------------- EDNS

ECS_V4_A = struct.pack("!HBB", 1, 24, 0) + bytes([192, 0, 2])
ECS_V4_B = struct.pack("!HBB", 1, 24, 0) + bytes([198, 51, 100])
CLIENT_OPTIONS = [(8, ECS_V4_A), (10, b"clientck"), (11, b""),
                  (12, b"\x00" * 24), (65001, b"private")]
UP_COOKIE = b"upstream" + b"S" * 16     # client cookie + server cookie


def _opt_of(m):
    """(version, payload, DO, [option codes]) of m's OPT, or None."""
    if m is None or m.edns < 0:
        return None
    return (m.edns, m.payload, bool(m.ednsflags & dns.flags.DO),
            [int(o.otype) for o in m.options])


def _client_opt_ok(r, q, what, allow=(15,)):
    """r's answer has an OPT only if q had one: then version 0, payload
    1232, q's DO bit, and no options but those in allow (EDE)."""
    check(r.msg is not None, "%s: %s" % (what, r.describe()))
    got = _opt_of(r.msg)
    if q.edns < 0:
        check(got is None and _arcount(r.raw[0]) == 0, "%s: the client sent "
              "no OPT but its answer has ARCOUNT %d, OPT %s" % (
                  what, _arcount(r.raw[0]), got))
        return
    want_do = bool(q.ednsflags & dns.flags.DO)
    check(got is not None, "%s: the client sent OPT, its answer has none" %
          what)
    check(got[:3] == (0, 1232, want_do), "%s: answer OPT version %d, "
          "payload %d, DO=%d; want 0, 1232, DO=%d" % (what, got[0], got[1],
                                                     got[2], want_do))
    extra = [c for c in got[3] if c not in allow]
    check(not extra, "%s: answer OPT carries options %s (upstream's or "
          "another client's)" % (what, extra))
    for o in r.msg.options:
        data = o.to_wire() or b""
        check(UP_COOKIE not in data, "%s: the upstream's cookie reached the "
              "client" % what)


@scenario
def edns_upstream_own_opt(t):
    """dnsfwd sends upstream its own OPT (version 0, payload 1232, the client's DO bit) with only its own options (an empty keepalive offer and zero padding), whatever the client sent: no OPT, payload 4096, DO=1, or ECS, cookie, keepalive, padding and option 65001 (UDP and TCP)."""
    fu = t.fakeup()
    d = t.dnsfwd(*tls_up(fu), "--timeout", "2000", "--cache-size", "0")
    cases = [
        ("noopt.example.", make_query("noopt.example."), ask_udp),
        ("p4096.example.", make_query("p4096.example.", edns=4096), ask_udp),
        ("do1.example.", make_query("do1.example.", do=True), ask_udp),
        # Keepalive is for TCP only (RFC 7828): not in the UDP case.
        ("opts.example.", make_query("opts.example.", edns=4096,
                                     options=[o for o in CLIENT_OPTIONS
                                              if o[0] != 11]), ask_udp),
        ("opts-do.example.", make_query("opts-do.example.", do=True,
                                        options=CLIENT_OPTIONS), ask_tcp),
    ]
    for name, q, ask in cases:
        what = "%s (client OPT %s)" % (name, _opt_of(q))
        expect_a(ask(d.port, q), GOOD_ADDR, what)
        time.sleep(0.03)
        recs = fu.records(name)
        check(len(recs) == 1, "%s: the upstream saw %d queries" % (
            what, len(recs)))
        rec = recs[0]
        want_do = bool(q.edns >= 0 and q.ednsflags & dns.flags.DO)
        check(rec.get("opt"), "%s: the upstream query has no OPT" % what)
        check((rec["version"], rec["payload"], rec["do"]) ==
              (0, 1232, want_do), "%s: upstream OPT version %s, payload %s, "
              "DO=%d; want 0, 1232, DO=%d" % (what, rec["version"],
                                             rec["payload"], rec["do"],
                                             want_do))
        check(_client_free(rec["options"]) == [],
              "%s: the upstream saw options %s" % (
                  what, [c for c, _ in rec["options"]]))


def _client_free(options):
    """The options of an upstream query less dnsfwd's own: an empty
    keepalive offer (11) and zero padding (12), in that order, last."""
    tail = options[-2:]
    if [c for c, _ in tail] == [11, 12] and tail[0][1] == b"" and \
            tail[1][1] == b"\0" * len(tail[1][1]):
        return options[:-2]
    return options


@scenario
def edns_upstream_options_stay_upstream(t):
    """Options in the upstream's OPT (a cookie, padding to 468 bytes, option 65002) never reach a client: it gets an OPT only when it sent one (version 0, payload 1232, its own DO bit, no options) for cached, TTL-0, too-big-to-cache (TCP) and upstream-SERVFAIL answers and for coalesced queries with their own cookies."""
    fu = t.fakeup()
    fu.set(answer_options=[(10, UP_COOKIE), (65002, b"x")], answer_pad=468)
    fu.rule("ttl0opt.example.", ttl=0)
    fu.rule("sfopt.example.", rcode="SERVFAIL")
    d = t.dnsfwd(*tls_up(fu), "--timeout", "3000")

    def clients(name, rdtype="A"):
        return [("no OPT", make_query(name, rdtype)),
                ("OPT DO=0 with a cookie",
                 make_query(name, rdtype, options=[(10, b"client-a")])),
                ("OPT DO=1", make_query(name, rdtype, do=True)),
                ("OPT DO=0", make_query(name, rdtype, edns=4096))]
    for name, rdtype, how, kind in (
            ("optcache.example.", "A", ask_udp, "cached"),
            ("ttl0opt.example.", "A", ask_udp, "TTL 0"),
            ("big.opt.example.", "TXT", ask_tcp, "too big to cache, TCP"),
            ("sfopt.example.", "A", ask_udp, "upstream SERVFAIL")):
        for rnd in ("first", "again"):
            for who, q in clients(name, rdtype):
                what = "%s, %s (%s), %s" % (name, kind, rnd, who)
                r = how(d.port, q)
                check(r.msg is not None, "%s: %s" % (what, r.describe()))
                if kind == "upstream SERVFAIL":
                    expect_servfail(r, what)
                elif rdtype == "A":
                    expect_a(r, GOOD_ADDR, what)
                else:
                    check(len(_txts(r.msg)) == 10, "%s: %s" % (
                        what, r.describe()))
                _client_opt_ok(r, q, what)
    fu.set(delay_ms=300)
    name = "coalopt.example."
    qs = [make_query(name, qid=0x6100),
          make_query(name, qid=0x6101, options=[(10, b"cookie-1")]),
          make_query(name, qid=0x6102, options=[(10, b"cookie-2")]),
          make_query(name, qid=0x6103, edns=4096),
          make_query(name, qid=0x6104),
          make_query(name, qid=0x6105, options=[(10, b"cookie-3"),
                                                (65001, b"p")])]
    res = _blast_udp(d.port, qs)
    for q, (raw, el) in zip(qs, res):
        what = "coalesced query %#x (OPT %s)" % (q.id, _opt_of(q))
        r = Reply(q)
        r.elapsed = el or 3.0
        if raw is not None:
            r.raw.append(raw)
            r.msg = _is_ours(q, raw)
        expect_a(r, GOOD_ADDR, what)
        _client_opt_ok(r, q, what)
        check(not any(c in raw for c in (b"cookie-1", b"cookie-2",
                                         b"cookie-3")),
              "%s: its answer carries a client cookie" % what)
    time.sleep(0.1)
    hedges = d.stats()["hedges"]
    check(fu.count(name) == 1 + hedges, "the upstream saw %d queries for "
          "%s, want 1 (coalesced) and %d copies sent after an attempt "
          "timeout" % (fu.count(name), name, hedges))


@scenario
def edns_ecs_stripped(t):
    """By default a client's ECS option goes nowhere: the upstream sees no option 8, and two clients with different subnets share one upstream query and cached answer."""
    fu = t.fakeup()
    fu.set(ecs_answer=True)
    d = t.dnsfwd(*tls_up(fu), "--timeout", "2000")
    name = "ecs.example."
    for i, ecs in enumerate((ECS_V4_A, ECS_V4_B)):
        what = "query with ECS %s" % ecs.hex()
        r = ask_udp(d.port, make_query(name, options=[(8, ecs)]))
        expect_a(r, GOOD_ADDR, what)
        time.sleep(0.05)
        recs = fu.records(name)
        check(len(recs) == 1, "%s: the upstream saw %d queries, want 1" % (
            what, len(recs)))
        check(all(c != 8 for c, _ in recs[0]["options"]), "the upstream saw "
              "the client's ECS option: %s" % recs[0]["options"])


@scenario
def edns_keep_ecs(t):
    """--keep-ecs forwards the client's ECS option verbatim and keys the cache and coalescing on it: two subnets make two upstream queries and get their own answers, a repeat of one is a cache hit, and in-flight queries share only with the same subnet."""
    fu = t.fakeup()
    fu.set(ecs_answer=True)
    d = t.dnsfwd(*tls_up(fu), "--timeout", "2000", "--keep-ecs")
    name = "keepecs.example."
    addr_a = fakeup.ecs_addr(ECS_V4_A[4:])
    addr_b = fakeup.ecs_addr(ECS_V4_B[4:])
    for n, ecs, addr, what in ((1, ECS_V4_A, addr_a, "subnet A"),
                               (2, ECS_V4_B, addr_b, "subnet B"),
                               (2, ECS_V4_A, addr_a, "subnet A again"),
                               (2, ECS_V4_B, addr_b, "subnet B again")):
        r = _ask_at(d, fu, make_query(name, options=[(8, ecs)]), n, what)
        expect_a(r, addr, what)
    r = _ask_at(d, fu, make_query(name), 3, "no ECS")
    expect_a(r, GOOD_ADDR, "no ECS")
    recs = fu.records(name)
    check([_client_free(q["options"]) for q in recs] ==
          [[(8, ECS_V4_A)], [(8, ECS_V4_B)], []],
          "upstream options %s, want the ECS options verbatim" %
          [q["options"] for q in recs])
    fu.set(delay_ms=300)
    name = "keepecs-par.example."
    qs = [make_query(name, qid=0x6200 + i,
                     options=[(8, ECS_V4_A if i % 2 else ECS_V4_B)])
          for i in range(6)]
    res = _blast_udp(d.port, qs)
    for i, (q, (raw, _)) in enumerate(zip(qs, res)):
        m = _is_ours(q, raw) if raw else None
        want = addr_a if i % 2 else addr_b
        check(m is not None and _a_of(m) == [want], "in-flight query %d: "
              "%s, want %s" % (i, _a_of(m) if m else "no answer", want))
    time.sleep(0.1)
    hedges = d.stats()["hedges"]
    check(fu.count(name) == 2 + hedges, "the upstream saw %d queries for 6 "
          "in flight with 2 subnets, want 2 and %d copies sent after an "
          "attempt timeout" % (fu.count(name), hedges))


# ---------------------------------------------------------------- UDP size

@scenario
def udp_answers_cap_1232(t):
    """No UDP answer exceeds 1232 bytes whatever the client advertises: with EDNS 4096 or 65535 an 880-byte answer comes whole and a 2100-byte one as TC=1 without records, fresh or cached; over TCP the 2100-byte one comes whole."""
    fu = t.fakeup()
    d = t.dnsfwd(*tls_up(fu), "--timeout", "2000")
    big = sorted(fakeup.big_txt_strings())
    mid = sorted(fakeup.mid_txt_strings())
    for payload in (4096, 65535):
        for rnd in ("first", "again"):
            for name, want in (("mid.cap.example.", mid),
                               ("big.cap.example.", big)):
                what = "UDP EDNS %d, %s, %s" % (payload, name, rnd)
                r = ask_udp(d.port, make_query(name, "TXT", edns=payload),
                            linger=0.1)
                check(r.msg is not None, "%s: %s" % (what, r.describe()))
                sizes = [len(x) for x in r.raw]
                check(max(sizes) <= 1232, "%s: datagrams of %s bytes, over "
                      "1232" % (what, sizes))
                tc = bool(r.msg.flags & dns.flags.TC)
                if want is mid:
                    check(not tc and _txts(r.msg) == mid, "%s: TC=%d, %d "
                          "of %d strings" % (what, tc, len(_txts(r.msg)),
                                             len(mid)))
                else:
                    check(tc and not r.msg.answer, "%s: TC=%d with %d "
                          "answer RRsets, want TC=1 and none" % (
                              what, tc, len(r.msg.answer)))
    r = ask_tcp(d.port, make_query("big.cap.example.", "TXT", edns=4096))
    check(r.msg is not None and _txts(r.msg) == big and
          not (r.msg.flags & dns.flags.TC), "TCP big.cap.example.: %s" %
          r.describe())


# ---------------------------------------------------------------- TLS I/O

@scenario
def tls_stress_pipelined(t):
    """Over one TLS connection to an upstream with 4 KB socket buffers, a 536-byte MSS and a 20 ms pause after each read (so dnsfwd's TLS writes and reads would block), 8 TCP clients pipelining 64 queries each (every 8th a 20 KB answer, the rest long names) get all 512 answers intact."""
    fu = t.fakeup(sock_buf=4096, mss=536)
    fu.set(read_pause_ms=20)
    # The deadline and the read timeout leave room for a loaded machine:
    # this upstream is slow by design, and its pace is what load slows.
    d = t.dnsfwd(*tls_up(fu), "--connections", "1", "--max-inflight", "400",
                 "--timeout", "8000", "--cache-size", "0")
    huge = sorted(fakeup.huge_txt_strings())
    long_tail = ".".join(c * 60 for c in "wxy") + ".example."

    def client(ci):
        qs = []
        for j in range(64):
            if j % 8 == 0:
                qs.append(make_query("huge.s%d-%d.example." % (ci, j), "TXT",
                                     qid=j))
            else:
                qs.append(make_query("s%d-%d.%s" % (ci, j, long_tail),
                                     qid=j))
        frames = tcp_pipeline(d.port, qs, 10)
        bad = []
        byid = {q.id: q for q in qs}
        for f in frames:
            m = dns.message.from_wire(f)
            q = byid.pop(m.id, None)
            if q is None or m.question != q.question:
                bad.append("stray id %d" % m.id)
            elif q.question[0].rdtype == dns.rdatatype.TXT:
                if _txts(m) != huge:
                    bad.append("%s: %d strings" % (q.question[0].name,
                                                   len(_txts(m))))
            elif _a_of(m) != [GOOD_ADDR]:
                bad.append("%s: %s %s" % (q.question[0].name.labels[0],
                                          dns.rcode.to_text(m.rcode()),
                                          _a_of(m)))
        return len(frames), bad, len(byid)
    t0 = time.monotonic()
    res = parallel(client, range(8), workers=8)
    el = time.monotonic() - t0
    got = sum(r[0] for r in res)
    bad = [b for r in res for b in r[1]]
    check(not bad, "%d wrong answers in %.1f s, e.g. %s; upstream saw %d "
          "queries, sent %d replies, errors %s" % (
              len(bad), el, bad[:3], fu.nqueries(), fu.stats()["replies"],
              fu.errors[:3]))
    check(got == 512 and sum(r[2] for r in res) == 0,
          "%d of 512 answers in %.1f s (upstream saw %d queries, sent %d)" %
          (got, el, fu.nqueries(), fu.stats()["replies"]))
    t.note("512 answers in %.2f s" % el)


@scenario
def tls_ticket_during_blocked_write(t):
    """TLS 1.3 session tickets that arrive while a write waits for the socket (the upstream, with 4 KB buffers and a 536-byte MSS, reads nothing for 300 ms before and after the handshake's last step, so dnsfwd's burst of 480 queries from 8 TCP clients is blocked when they come): reading them must not send the waiting record twice.  Every query is answered, and the upstream sees each exactly once."""
    fu = t.fakeup(sock_buf=4096, mss=536)
    fu.set(handshake_pause_ms=300)
    d = t.dnsfwd(*tls_up(fu), "--connections", "1", "--max-inflight", "500",
                 "--timeout", "5000", "--cache-size", "0")
    tail = ".".join(c * 60 for c in "wxy") + ".example."

    def client(ci):
        qs = [make_query("t%d-%d.%s" % (ci, i, tail), qid=i)
              for i in range(60)]
        frames = tcp_pipeline(d.port, qs, 8)
        good = 0
        for f in frames:
            m = dns.message.from_wire(f)
            if m.id < len(qs) and m.question == qs[m.id].question and \
                    _a_of(m) == [GOOD_ADDR]:
                good += 1
        return good
    good = sum(parallel(client, range(8), workers=8))
    seen = fu.nqueries()
    check(good == 480 and seen == 480, "%d of 480 answered, upstream saw %d "
          "queries (%s, TLS %s)" % (good, seen, fu.errors[:2], fu.versions))
    t.note("TLS %s" % fu.versions)


@scenario
@timed
def upstream_nagle_no_stall(t):
    """An upstream that leaves Nagle on (as unbound 1.17 does) holds an answer until its previous one is acknowledged, and a delayed ACK takes 40 ms.  Two queries at once, the second answered 5 ms after the first: the second answer is not held for our delayed ACK: it comes less than 30 ms after the first in at least 8 of 12 rounds, each after 10 sequential queries that put the connection in delayed-ACK mode (without quick ACKs about every other round stalls 40 ms; the gap between the two answers, not their latency, is what a busy core delays least)."""
    fu = t.fakeup(nagle=True)
    d = t.dnsfwd(*tls_up(fu), "--connections", "1", "--cache-size", "0")
    took = []
    for rnd in range(12):
        # Queries that follow answers closely put the connection in
        # delayed-ACK ("interactive") mode; a delayed ACK leaves it.
        for i in range(10):
            r = ask_udp(d.port, make_query("w%d-%d.nagle.example." % (rnd, i)))
            check(r.msg is not None, "warm-up query: %s" % r.describe())
        slow = "slow%d.nagle.example." % rnd
        fu.rule(slow, delay_ms=5)
        qs = [make_query("fast%d.nagle.example." % rnd, qid=2 * rnd),
              make_query(slow, qid=2 * rnd + 1)]
        (raw0, el0), (raw, el) = _blast_udp(d.port, qs)
        check(raw0 and raw and _a_of(dns.message.from_wire(raw)) ==
              [GOOD_ADDR], "round %d: no answer for %s" % (rnd, slow))
        took.append(el - el0)
    fast = sum(1 for x in took if x < 0.030)
    check(fast >= 8, "the delayed answer came %s ms after the other" % [
        round(x * 1000) for x in took])
    t.note("delayed answer came %s ms after the other" % [
        round(x * 1000, 1) for x in took])


# ---------------------------------------------------------------- cache

CACHE_KEYS = {"cache_hits", "cache_misses", "cache_entries",
              "cache_evictions", "stale", "prefetches"}


def _ttls(m):
    """TTLs of every answer and authority record of m (OPT aside)."""
    return [rr.ttl for sec in (m.answer, m.authority) for rr in sec]


def _qsection(wire):
    """The bytes of the one question of a DNS message."""
    i = 12
    while wire[i]:
        i += 1 + wire[i]
    return bytes(wire[12:i + 5])


def _arcount(wire):
    return struct.unpack("!H", wire[10:12])[0]


def _until(t0, at):
    """Sleeps until `at` seconds after t0."""
    pause = t0 + at - time.monotonic()
    if pause > 0:
        time.sleep(pause)


def _delta(before, after, key):
    return after.get(key, 0) - before.get(key, 0)


def _txts(m):
    return sorted(s.decode() for rr in m.answer for rd in rr
                  for s in getattr(rd, "strings", ()))


def _ask_at(d, fu, q, want_count, what, timeout=3.0):
    """Asks q over UDP; fakeup must then have seen want_count queries for
    its name (after 50 ms for a query that went upstream to arrive), not
    counting second copies (a loaded machine can hold an answer past the
    100 ms attempt timeout)."""
    if isinstance(q, str):
        q = make_query(q)
    before = d.stats()
    r = ask_udp(d.port, q, timeout=timeout)
    check(r.msg is not None, "%s: %s" % (what, r.describe()))
    name = q.question[0].name.to_text()
    time.sleep(0.05)
    hedges = _delta(before, d.stats(), "hedges")
    n = fu.count(name) - hedges
    check(n == want_count, "%s: the upstream has seen %d queries for %s "
          "(and %d second copies), want %d" % (what, n, name, hedges,
                                               want_count))
    return r


def _blast_udp(port, queries, timeout=3.0, gap=0.0):
    """Sends each query from its own UDP socket, all at once (the first
    gap seconds before the others), then waits for one datagram on each:
    [(wire or None, elapsed s)] in order."""
    socks, got = [], {}
    try:
        for _ in queries:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.connect(("127.0.0.1", port))
            socks.append(s)
        wires = [q.to_wire() for q in queries]
        t0 = time.monotonic()
        for i, (s, w) in enumerate(zip(socks, wires)):
            s.send(w)
            if i == 0 and gap:
                time.sleep(gap)
        deadline = t0 + timeout
        while len(got) < len(socks):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            want = [s for s in socks if s not in got]
            r, _, _ = select.select(want, [], [], left)
            for s in r:
                try:
                    data = s.recv(65535)
                except OSError:
                    data = None
                got[s] = (data, time.monotonic() - t0)
        return [got.get(s, (None, None)) for s in socks]
    finally:
        for s in socks:
            s.close()


def _case_variant(name, i):
    """name with 0x20 mixed case, pattern number i (0: as given)."""
    return "".join(c.upper() if c.isalpha() and (i >> (k % 6)) & 1 else c
                   for k, c in enumerate(name))


@scenario
def cache_repeat_no_upstream(t):
    """A repeated query (UDP, then TCP) is answered from the cache: no new upstream query; cache_hits and answers rise by 2, cache_misses not."""
    fu = t.fakeup()
    d = t.dnsfwd(*tls_up(fu), "--timeout", "2000")
    name = "rep.example."
    _ask_at(d, fu, name, 1, "first query")
    before = d.stats()
    check(CACHE_KEYS <= set(before), "stats line lacks %s: %s" % (
        CACHE_KEYS - set(before), before))
    r = _ask_at(d, fu, name, 1, "repeat over UDP")
    expect_a(r, GOOD_ADDR, "repeat over UDP")
    r = ask_tcp(d.port, name)
    expect_a(r, GOOD_ADDR, "repeat over TCP")
    time.sleep(0.05)
    check(fu.count(name) == 1, "repeat over TCP: the upstream has seen %d "
          "queries for %s, want 1" % (fu.count(name), name))
    after = d.stats()
    for key, want in (("cache_hits", 2), ("answers", 2), ("queries", 2),
                      ("cache_misses", 0)):
        check(_delta(before, after, key) == want, "%s rose by %d for two "
              "cache hits, want %d: before %s after %s" % (
                  key, _delta(before, after, key), want, before, after))
    check(after["cache_entries"] >= 1, "cache_entries %d after a stored "
          "answer" % after["cache_entries"])


@scenario
def cache_ttl_decreases(t):
    """A cached TTL-10 answer asked again 2.1 s later comes from the cache with its TTL 1 to 3 lower (2 expected)."""
    fu = t.fakeup()
    name = "ttl10.example."
    fu.rule(name, ttl=10)
    d = t.dnsfwd(*tls_up(fu), "--timeout", "2000")
    r = _ask_at(d, fu, name, 1, "first query")
    t0 = time.monotonic()
    expect_a(r, GOOD_ADDR, "first query")
    check(_ttls(r.msg) == [10], "first answer TTLs %s, want [10]" %
          _ttls(r.msg))
    _until(t0, 2.1)
    r = _ask_at(d, fu, name, 1, "query 2.1 s later")
    expect_a(r, GOOD_ADDR, "query 2.1 s later")
    got = _ttls(r.msg)
    check(got and all(7 <= x <= 9 for x in got), "TTLs %s 2.1 s after a "
          "TTL-10 answer, want 8 (7 to 9)" % got)


@scenario
def cache_expiry_refetch(t):
    """A TTL-1 answer is a hit at 0.3 s; once 1 s has passed the next query goes upstream and gets TTL 1 afresh."""
    fu = t.fakeup()
    name = "ttl1.example."
    fu.rule(name, ttl=1)
    d = t.dnsfwd(*tls_up(fu), "--timeout", "2000")
    r = _ask_at(d, fu, name, 1, "first query")
    t0 = time.monotonic()
    expect_a(r, GOOD_ADDR, "first query")
    _until(t0, 0.3)
    r = _ask_at(d, fu, name, 1, "query at 0.3 s")
    expect_a(r, GOOD_ADDR, "query at 0.3 s")
    _until(t0, 1.2)
    r = _ask_at(d, fu, name, 2, "query 1.2 s after a TTL-1 answer")
    expect_a(r, GOOD_ADDR, "query after expiry")
    check(_ttls(r.msg) == [1], "refetched answer TTLs %s, want [1]" %
          _ttls(r.msg))


@scenario
def cache_nxdomain_soa_minimum(t):
    """NXDOMAIN with SOA TTL 300 and MINIMUM 2 is cached (SOA kept, TTL <= 2) and asked upstream again after 2 s; NXDOMAIN without SOA is not cached."""
    fu = t.fakeup()
    name = "nxsoa.example."
    fu.rule(name, rcode="NXDOMAIN", soa=(300, 2))
    d = t.dnsfwd(*tls_up(fu), "--timeout", "2000")
    r = _ask_at(d, fu, name, 1, "first query")
    t0 = time.monotonic()
    check(r.rcode() == dns.rcode.NXDOMAIN, "first: %s" % r.describe())
    r = _ask_at(d, fu, name, 1, "repeat")
    check(r.rcode() == dns.rcode.NXDOMAIN, "repeat: %s" % r.describe())
    soas = [rr for rr in r.msg.authority if rr.rdtype == dns.rdatatype.SOA]
    check(len(soas) == 1 and soas[0].ttl <= 2, "cached NXDOMAIN authority "
          "%s, want the SOA with TTL <= 2 (min of TTL 300, MINIMUM 2)" %
          [rr.to_text() for rr in r.msg.authority])
    for i in range(2):
        r = _ask_at(d, fu, "nx.example.", i + 1,
                    "NXDOMAIN without SOA, query %d" % (i + 1))
        check(r.rcode() == dns.rcode.NXDOMAIN, "nx.example.: %s" %
              r.describe())
    _until(t0, 2.2)
    r = _ask_at(d, fu, name, 2, "query 2.2 s after NXDOMAIN/MINIMUM 2")
    check(r.rcode() == dns.rcode.NXDOMAIN, "after expiry: %s" % r.describe())


@scenario
def cache_nodata_neg_max_ttl(t):
    """NODATA with SOA TTL 1, MINIMUM 300 is cached for 1 s; NODATA without SOA is not cached; --neg-max-ttl 1 cuts an NXDOMAIN with SOA 300/300 to 1 s."""
    fu = t.fakeup()
    fu.rule("nodata.example.", rcode="NODATA", soa=(1, 300))
    fu.rule("nodata-nosoa.example.", rcode="NODATA")
    fu.rule("nxcap.example.", rcode="NXDOMAIN", soa=(300, 300))
    d = t.dnsfwd(*tls_up(fu), "--neg-max-ttl", "1", "--timeout", "2000")
    t0 = {}
    for name, rcode in (("nodata.example.", dns.rcode.NOERROR),
                        ("nxcap.example.", dns.rcode.NXDOMAIN),
                        ("nodata-nosoa.example.", dns.rcode.NOERROR)):
        r = _ask_at(d, fu, name, 1, "first query")
        t0[name] = time.monotonic()
        check(r.rcode() == rcode and not r.msg.answer,
              "%s: %s, want %s without records" % (
                  name, r.describe(), dns.rcode.to_text(rcode)))
    _ask_at(d, fu, "nodata.example.", 1, "NODATA with SOA, repeat")
    r = _ask_at(d, fu, "nxcap.example.", 1, "NXDOMAIN with SOA, repeat")
    check(r.msg.authority and all(x <= 1 for x in _ttls(r.msg)),
          "NXDOMAIN from the cache with --neg-max-ttl 1 shows TTLs %s" %
          _ttls(r.msg))
    _ask_at(d, fu, "nodata-nosoa.example.", 2, "NODATA without SOA, "
            "repeat")
    _until(t0["nodata.example."], 1.2)
    _ask_at(d, fu, "nodata.example.", 2, "NODATA with SOA TTL 1, 1.2 s "
            "later")
    _until(t0["nxcap.example."], 1.2)
    _ask_at(d, fu, "nxcap.example.", 2, "NXDOMAIN with SOA 300/300, "
            "--neg-max-ttl 1, 1.2 s later")


def _do_cd_apart(t, bit):
    fu = t.fakeup()
    fu.set(mark_bits=True)
    d = t.dnsfwd(*tls_up(fu), "--timeout", "2000")

    def q(name, on):
        if bit == "do":
            return make_query(name, edns=1232, do=on)
        return make_query(name, edns=1232, cd=on)

    def addr(on):
        return fakeup.marked_addr(on and bit == "do", on and bit == "cd")
    for name, order in (("%s-first0.example." % bit, (False, True)),
                        ("%s-first1.example." % bit, (True, False))):
        for rnd in ("first", "repeat"):
            for on in order:
                what = "%s %s=%d query for %s" % (rnd, bit.upper(), on, name)
                r = ask_udp(d.port, q(name, on))
                expect_a(r, addr(on), what)
        time.sleep(0.05)
        for on in (False, True):
            n = fu.count(name, **{bit: on})
            check(n == 1, "the upstream saw %d %s=%d queries for %s, want 1 "
                  "(two each were asked)" % (n, bit.upper(), on, name))
    return fu, d


@scenario
def cache_do_bits_apart(t):
    """DO=1 and DO=0 queries for one name are cached apart: one upstream query each, repeats are hits, neither gets the other's answer; a query without EDNS shares the DO=0 entry."""
    fu, d = _do_cd_apart(t, "do")
    r = _ask_at(d, fu, make_query("do-first0.example."), 2,
                "query without EDNS after DO=0 and DO=1")
    expect_a(r, fakeup.marked_addr(False, False), "query without EDNS")


@scenario
def cache_cd_bit_apart(t):
    """CD=1 and CD=0 queries for one name are cached apart: one upstream query each, repeats are hits, neither gets the other's answer."""
    _do_cd_apart(t, "cd")


@scenario
def cache_mixed_case(t):
    """A hit for WwW.ExAmPlE.cOm after www.example.com carries the client's exact question bytes, ID and RD bit (UDP and TCP)."""
    fu = t.fakeup()
    d = t.dnsfwd(*tls_up(fu), "--timeout", "2000")
    r = _ask_at(d, fu, make_query("www.example.com.", qid=0x1111), 1,
                "first query")
    expect_a(r, GOOD_ADDR, "first query")
    for qid, name, rd, tcp in ((0x2222, "WwW.ExAmPlE.cOm.", True, False),
                               (0x3333, "wWw.eXaMpLe.CoM.", False, False),
                               (0x4444, "WWW.EXAMPLE.com.", True, True)):
        q = make_query(name, qid=qid, rd=rd)
        what = "%s %s RD=%d" % ("TCP" if tcp else "UDP", name, rd)
        r = (ask_tcp if tcp else ask_udp)(d.port, q)
        expect_a(r, GOOD_ADDR, what)
        check(len(r.raw) == 1, "%s: %d replies" % (what, len(r.raw)))
        raw = r.raw[0]
        check(struct.unpack("!H", raw[:2])[0] == qid, "%s: reply ID %#x, "
              "want %#x" % (what, struct.unpack("!H", raw[:2])[0], qid))
        check(_qsection(raw) == _qsection(q.to_wire()), "%s: question bytes "
              "%r, want the client's %r" % (what, _qsection(raw),
                                             _qsection(q.to_wire())))
        check(bool(raw[2] & 0x01) == rd, "%s: reply RD=%d" % (
            what, raw[2] & 1))
    time.sleep(0.05)
    check(fu.count("www.example.com.") == 1, "the upstream saw %d queries "
          "for www.example.com in any case, want 1 (mixed case missed the "
          "cache)" % fu.count("www.example.com."))


@scenario
def cache_servfail_not_cached(t):
    """An upstream SERVFAIL is not cached: the next identical query goes upstream again (and gets the answer once there is one)."""
    fu = t.fakeup()
    name = "sf.example."
    fu.rule(name, rcode="SERVFAIL")
    d = t.dnsfwd(*tls_up(fu), "--timeout", "2000")
    for i in range(2):
        r = _ask_at(d, fu, name, i + 1, "SERVFAIL query %d" % (i + 1))
        expect_servfail(r, "query %d" % (i + 1))
    fu.rule(name, ttl=60)
    r = _ask_at(d, fu, name, 3, "query once the upstream answers")
    expect_a(r, GOOD_ADDR, "query once the upstream answers")


@scenario
def cache_uncacheable(t):
    """REFUSED, FORMERR, TC=1, TTL-0 and over-1232-byte upstream answers are not cached: each repeat goes upstream."""
    fu = t.fakeup()
    fu.rule("refused.example.", rcode="REFUSED")
    fu.rule("formerr.example.", rcode="FORMERR")
    fu.rule("tc.example.", tc=True)
    fu.rule("ttl0.example.", ttl=0)
    d = t.dnsfwd(*tls_up(fu), "--timeout", "2000")
    for name in ("refused.example.", "formerr.example.", "tc.example.",
                 "ttl0.example."):
        for i in range(2):
            _ask_at(d, fu, name, i + 1, "%s query %d" % (name, i + 1))
    for i in range(2):              # about 2100 bytes: TCP
        r = ask_tcp(d.port, make_query("big.example.", "TXT"))
        check(len(_txts(r.msg) if r.msg else []) == 10,
              "big.example. over TCP: %s" % r.describe())
        time.sleep(0.05)
        check(fu.count("big.example.") == i + 1, "big.example. query %d: "
              "the upstream has seen %d" % (i + 1, fu.count("big.example.")))
    st = d.stats()
    check(st.get("cache_hits") == 0, "cache hits for uncacheable answers: "
          "%s" % st)


@scenario
def cache_lru_eviction(t):
    """With --cache-size 2 a third name evicts the least recently used entry (counted in cache_evictions), not the one just used."""
    fu = t.fakeup()
    d = t.dnsfwd(*tls_up(fu), "--cache-size", "2", "--timeout", "2000")
    _ask_at(d, fu, "lru-a.example.", 1, "a")
    _ask_at(d, fu, "lru-b.example.", 1, "b")
    _ask_at(d, fu, "lru-a.example.", 1, "a again (hit)")
    before = d.stats()
    _ask_at(d, fu, "lru-c.example.", 1, "c (evicts b)")
    after = d.stats()
    check(_delta(before, after, "cache_evictions") == 1 and
          after.get("cache_entries") == 2, "storing a third name in a "
          "2-entry cache: before %s after %s" % (before, after))
    _ask_at(d, fu, "lru-a.example.", 1, "a, recently used, kept")
    _ask_at(d, fu, "lru-b.example.", 2, "b, least recently used, evicted")


@scenario
def cache_coalesce_50(t):
    """50 identical queries at once (own sockets and IDs, mixed 0x20 case) while the upstream takes 300 ms make one upstream query; all 50 get the answer with their own ID and question bytes."""
    fu = t.fakeup()
    fu.set(delay_ms=300)
    d = t.dnsfwd(*tls_up(fu), "--timeout", "3000")
    name = "coalesce.example."
    qs = [make_query(_case_variant(name, i), qid=0x5000 + i)
          for i in range(50)]
    res = _blast_udp(d.port, qs)
    bad = []
    for q, (raw, el) in zip(qs, res):
        if raw is None:
            bad.append("%#x: no reply" % q.id)
            continue
        m = dns.message.from_wire(raw)
        if (m.id != q.id or _qsection(raw) != _qsection(q.to_wire()) or
                m.rcode() != dns.rcode.NOERROR or _a_of(m) != [GOOD_ADDR]):
            bad.append("%#x %s: got id %#x %r %s %s" % (
                q.id, q.question[0].name, m.id, _qsection(raw)[:-4],
                dns.rcode.to_text(m.rcode()), _a_of(m)))
    check(not bad, "%d of 50 wrong: %s" % (len(bad), bad[:4]))
    time.sleep(0.1)
    check(fu.count(name) == 1, "the upstream saw %d queries for 50 "
          "identical ones in flight together, want 1 (cases sent: %s)" % (
              fu.count(name), sorted({q["qname"] for q in fu.queries})))


@scenario
def cache_size_zero(t):
    """With --cache-size 0, 5 repeats make 5 upstream queries and 10 identical queries at once make 10."""
    fu = t.fakeup()
    d = t.dnsfwd(*tls_up(fu), "--cache-size", "0", "--timeout", "3000")
    for i in range(5):
        r = _ask_at(d, fu, "nocache.example.", i + 1, "repeat %d" % i)
        expect_a(r, GOOD_ADDR, "repeat %d" % i)
    fu.set(delay_ms=300)
    qs = [make_query("nocache-par.example.", qid=0x6000 + i)
          for i in range(10)]
    res = _blast_udp(d.port, qs)
    missing = [hex(q.id) for q, (raw, _) in zip(qs, res) if raw is None]
    check(not missing, "no reply for %s" % missing)
    time.sleep(0.1)
    st = d.stats()
    check(fu.count("nocache-par.example.") == 10 + st["hedges"], "the "
          "upstream saw %d queries for 10 identical ones at once with "
          "--cache-size 0, want 10 and %d copies sent after an attempt "
          "timeout" % (fu.count("nocache-par.example."), st["hedges"]))
    check(st.get("cache_hits") == 0 and st.get("cache_entries") == 0,
          "--cache-size 0: %s" % st)


@scenario
def cache_serve_stale(t):
    """--serve-stale 60: with the upstream refusing after a TTL-1 answer expired, the old answer comes within 2 s with TTL 30 and EDE 3 (Stale Answer) for an EDNS client, no OPT for one without, and stale rises; with --serve-stale 1, 2.3 s after storing, SERVFAIL."""
    name = "stale.example."
    fu, fu1 = t.fakeup(), t.fakeup()
    for f in (fu, fu1):
        f.rule(name, ttl=1)
    d = t.dnsfwd(*tls_up(fu), "--serve-stale", "60", "--timeout", "2000")
    d1 = t.dnsfwd(*tls_up(fu1), "--serve-stale", "1", "--timeout", "2000")
    expect_a(ask_udp(d.port, name), GOOD_ADDR, "first query")
    t0 = time.monotonic()
    expect_a(ask_udp(d1.port, name), GOOD_ADDR, "first query, "
             "--serve-stale 1")
    t1 = time.monotonic()
    fu.refuse()
    fu1.refuse()
    before = d.stats()
    _until(t0, 1.2)
    r = ask_udp(d.port, make_query(name, edns=1232), timeout=4)
    expect_a(r, GOOD_ADDR, "expired, upstream refusing, --serve-stale 60")
    check(r.elapsed < 2.0, "stale answer after %.2f s, want under 2 s" %
          r.elapsed)
    check(_ttls(r.msg) and all(x == 30 for x in _ttls(r.msg)),
          "stale answer TTLs %s, want 30" % _ttls(r.msg))
    check(3 in [c for c, _ in _ede(r.msg)], "stale answer to an EDNS "
          "client: EDE %s, want code 3 (Stale Answer)" % _ede(r.msg))
    after = d.stats()
    check(_delta(before, after, "stale") == 1, "stale rose by %d for one "
          "stale answer: %s" % (_delta(before, after, "stale"), after))
    r = ask_udp(d.port, make_query(name), timeout=4)
    expect_a(r, GOOD_ADDR, "expired, upstream refusing, client without "
             "EDNS")
    check(r.msg.edns < 0 and _arcount(r.raw[0]) == 0, "stale answer to a "
          "client without EDNS has ARCOUNT %d" % _arcount(r.raw[0]))
    check(_ttls(r.msg) and all(x == 30 for x in _ttls(r.msg)),
          "stale answer (no EDNS) TTLs %s, want 30" % _ttls(r.msg))
    _until(t1, 2.3)
    r = ask_udp(d1.port, name, timeout=4)
    expect_servfail(r, "2.3 s after a TTL-1 answer, --serve-stale 1")


@scenario
def cache_serve_stale_on_servfail(t):
    """--serve-stale 60: when the refresh of an expired TTL-1 answer gets SERVFAIL from upstream, the client gets the stale answer (TTL 30) at once: no OPT for a client without EDNS, EDE 3 for one with it."""
    name = "stalesf.example."
    fu = t.fakeup()
    fu.rule(name, ttl=1)
    d = t.dnsfwd(*tls_up(fu), "--serve-stale", "60", "--timeout", "2000")
    expect_a(_ask_at(d, fu, name, 1, "first query"), GOOD_ADDR, "first")
    t0 = time.monotonic()
    fu.rule(name, rcode="SERVFAIL")
    _until(t0, 1.2)
    r = _ask_at(d, fu, name, 2, "expired, upstream answering SERVFAIL")
    expect_a(r, GOOD_ADDR, "expired, upstream SERVFAIL, --serve-stale 60")
    check(r.elapsed < 1.0, "stale answer after %.2f s, want it at once" %
          r.elapsed)
    check(_ttls(r.msg) and all(x == 30 for x in _ttls(r.msg)),
          "stale answer TTLs %s, want 30" % _ttls(r.msg))
    check(r.msg.edns < 0 and _arcount(r.raw[0]) == 0, "stale answer to a "
          "client without EDNS has ARCOUNT %d" % _arcount(r.raw[0]))
    r = _ask_at(d, fu, make_query(name, edns=1232), 3, "expired, upstream "
                "answering SERVFAIL, EDNS client")
    expect_a(r, GOOD_ADDR, "expired, upstream SERVFAIL, EDNS client")
    check(_ttls(r.msg) and all(x == 30 for x in _ttls(r.msg)),
          "stale answer (EDNS) TTLs %s, want 30" % _ttls(r.msg))
    check(3 in [c for c, _ in _ede(r.msg)], "stale answer to an EDNS "
          "client: EDE %s, want code 3 (Stale Answer)" % _ede(r.msg))


@scenario
@slow
def cache_serve_stale_slow_refresh(t):
    """--serve-stale 60, --timeout 4000: when the refresh of an expired TTL-1 answer takes 3 s, the stale answer (TTL 30, EDE 3) comes at about 1.8 s and the late reply still refreshes the cache."""
    fu = t.fakeup()
    name = "slowstale.example."
    fu.rule(name, ttl=1)
    d = t.dnsfwd(*tls_up(fu), "--serve-stale", "60", "--timeout", "4000")
    r = _ask_at(d, fu, name, 1, "first query")
    t0 = time.monotonic()
    expect_a(r, GOOD_ADDR, "first query")
    _until(t0, 1.2)
    fu.set(delay_ms=3000)
    replies = fu.stats()["replies"]
    before = d.stats()
    r = ask_udp(d.port, make_query(name, edns=1232), timeout=4)
    expect_a(r, GOOD_ADDR, "expired, refresh taking 3 s")
    check(1.6 <= r.elapsed <= 2.5, "stale answer after %.2f s, want about "
          "1.8 s" % r.elapsed)
    check(_ttls(r.msg) and all(x == 30 for x in _ttls(r.msg)),
          "stale answer TTLs %s, want 30" % _ttls(r.msg))
    check(3 in [c for c, _ in _ede(r.msg)], "stale answer: EDE %s, want "
          "code 3 (Stale Answer)" % _ede(r.msg))
    hedges = _delta(before, d.stats(), "hedges")
    check(fu.count(name) == 2 + hedges, "the upstream saw %d queries, want "
          "2 (the refresh) and %d copies sent after an attempt timeout" % (
              fu.count(name), hedges))
    check(_delta(before, d.stats(), "stale") == 1, "stale did not rise by 1")
    deadline = time.monotonic() + 2.5
    while fu.stats()["replies"] <= replies and time.monotonic() < deadline:
        time.sleep(0.02)
    check(fu.stats()["replies"] > replies, "the upstream never answered the "
          "refresh")
    fu.set(delay_ms=0)
    time.sleep(0.1)
    r = _ask_at(d, fu, name, 2 + hedges, "query after the late refresh "
                "arrived")
    expect_a(r, GOOD_ADDR, "query after the late refresh arrived")
    check(_ttls(r.msg) and all(x <= 1 for x in _ttls(r.msg)),
          "answer after the refresh has TTLs %s, want the fresh TTL 1" %
          _ttls(r.msg))


@scenario
def cache_stale_only_when_expired(t):
    """An answer waiting on a slow refresh of an expired entry is stale (TTL 30, EDE 3) only if the entry is still expired when it is given: when a query that did not share that refresh stored a fresh TTL-60 answer meanwhile, the waiting EDNS client gets the fresh one (TTL near 60, no EDE 3) counted as a hit, not as stale."""
    fu = t.fakeup()
    name = "staleorfresh.example."
    fu.rule(name, ttl=1)
    d = t.dnsfwd(*tls_up(fu), "--serve-stale", "60", "--timeout", "4000")
    r = _ask_at(d, fu, make_query(name, edns=1232), 1, "first query")
    t0 = time.monotonic()
    expect_a(r, GOOD_ADDR, "first query")
    _until(t0, 1.2)
    fu.set(delay_ms=3000)
    before = d.stats()
    qa = make_query(name, edns=1232, qid=0x0a11)
    box = {}
    th = threading.Thread(target=lambda: box.update(
        r=ask_udp(d.port, qa, timeout=5)))
    th.start()
    # The refresh, and its second copy after the attempt timeout: both
    # must meet the slow upstream, or the copy brings the fresh answer.
    deadline = time.monotonic() + 1
    while fu.count(name) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    fu.rule(name, ttl=60)
    fu.set(delay_ms=0)
    qb = make_query(name, qid=0x0b11)          # no OPT
    rb = ask_udp(d.port, qb, timeout=5)
    th.join(6)
    ra = box.get("r")
    check(ra is not None and ra.msg is not None, "EDNS client waiting on "
          "the slow refresh: %s" % (ra.describe() if ra else "no result"))
    expect_a(ra, GOOD_ADDR, "EDNS client waiting on the slow refresh")
    expect_a(rb, GOOD_ADDR, "client without EDNS asking 0.1 s later")
    after = d.stats()
    tb, ta = _ttls(rb.msg), _ttls(ra.msg)
    if tb and all(x > 30 for x in tb):
        # B went upstream on its own: the entry was fresh from then on.
        t.note("the second query stored a fresh answer (TTLs %s)" % tb)
        check(all(50 <= x <= 60 for x in ta), "the EDNS client got TTLs "
              "%s after a fresh TTL-60 answer was stored, want 50-60 (not "
              "the stale 30)" % ta)
        check(3 not in [c for c, _ in _ede(ra.msg)], "a fresh answer "
              "carries EDE 3 (Stale Answer): %s" % _ede(ra.msg))
        check(_delta(before, after, "stale") == 0, "stale rose by %d though "
              "the entry was fresh: %s" % (_delta(before, after, "stale"),
                                           after))
        check(_delta(before, after, "cache_hits") >= 1, "cache_hits did not "
              "rise for the answer from the fresh entry: before %s after %s"
              % (before, after))
    else:
        # B shared the slow refresh: the entry stayed expired for both.
        t.note("the second query shared the slow refresh (TTLs %s)" % tb)
        check(all(x == 30 for x in ta + tb), "both clients shared a slow "
              "refresh of an expired entry: TTLs %s and %s, want 30" % (
                  ta, tb))
        check(3 in [c for c, _ in _ede(ra.msg)], "stale answer to the EDNS "
              "client: EDE %s, want 3" % _ede(ra.msg))
        check(rb.msg.edns < 0, "stale answer to a client without EDNS has "
              "an OPT")


@scenario
@slow
def cache_prefetch(t):
    """--prefetch: a hit at 1 s sends nothing upstream; a hit at 9.2 s (last 10% of TTL 10) sends exactly one refresh; at 10.5 s the answer still comes from the cache."""
    fu = t.fakeup()
    name = "prefetch.example."
    fu.rule(name, ttl=10)
    d = t.dnsfwd(*tls_up(fu), "--prefetch", "--timeout", "2000")
    r = _ask_at(d, fu, name, 1, "first query")
    t0 = time.monotonic()
    expect_a(r, GOOD_ADDR, "first query")
    before = d.stats()
    _until(t0, 1.0)
    _ask_at(d, fu, name, 1, "hit at 1 s (first 90% of the TTL)")
    _until(t0, 9.2)
    r = ask_udp(d.port, name)
    expect_a(r, GOOD_ADDR, "hit at 9.2 s")
    check(all(x <= 1 for x in _ttls(r.msg)), "answer at 9.2 s has TTLs %s: "
          "not from the cache" % _ttls(r.msg))
    deadline = time.monotonic() + 1.0
    while fu.count(name) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)
    check(fu.count(name) == 2, "%d upstream queries after a hit in the last "
          "10%% of the TTL, want 2 (one refresh)" % fu.count(name))
    _until(t0, 10.5)
    r = _ask_at(d, fu, name, 2, "query at 10.5 s, after the refresh")
    expect_a(r, GOOD_ADDR, "query at 10.5 s")
    check(all(8 <= x <= 10 for x in _ttls(r.msg)), "answer at 10.5 s has "
          "TTLs %s, want the refreshed entry's 9" % _ttls(r.msg))
    after = d.stats()
    check(_delta(before, after, "prefetches") == 1, "prefetches rose by %d, "
          "want 1: %s" % (_delta(before, after, "prefetches"), after))


@scenario
@slow
def cache_prefetch_rd1(t):
    """--prefetch: the refresh started by an RD=0 hit in the last 10% of a TTL-5 answer goes upstream with RD=1 (an upstream refusing RD=0 answers it) and refreshes the entry: at 5.5 s it is still a hit."""
    fu = t.fakeup()
    fu.set(refuse_rd0=True)
    name = "prefetch-rd.example."
    fu.rule(name, ttl=5)
    d = t.dnsfwd(*tls_up(fu), "--prefetch", "--timeout", "2000")
    r = _ask_at(d, fu, name, 1, "first query")
    t0 = time.monotonic()
    expect_a(r, GOOD_ADDR, "first query")
    _until(t0, 4.72)
    r = ask_udp(d.port, make_query(name, rd=False))
    expect_a(r, GOOD_ADDR, "RD=0 hit at 4.7 s")
    check(not (r.msg.flags & dns.flags.RD), "RD=0 hit: answer has RD=1")
    deadline = time.monotonic() + 1.0
    while fu.count(name) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)
    recs = fu.records(name)
    check(len(recs) == 2, "%d upstream queries after a hit in the last 10%% "
          "of the TTL, want 2 (one refresh)" % len(recs))
    check(all(q["rd"] for q in recs), "upstream RD bits %s: the refresh "
          "started by an RD=0 hit went with RD=0" % [q["rd"] for q in recs])
    _until(t0, 5.5)
    r = _ask_at(d, fu, name, 2, "query at 5.5 s, after the refresh")
    expect_a(r, GOOD_ADDR, "query at 5.5 s")


@scenario
def cache_tc_on_hit(t):
    """An 880-byte cached answer gets TC=1 over UDP without EDNS and with EDNS 600, the whole of it over TCP and UDP EDNS 1232, all from the cache."""
    fu = t.fakeup()
    d = t.dnsfwd(*tls_up(fu), "--timeout", "2000")
    name = "mid.example."
    want = sorted(fakeup.mid_txt_strings())
    r = _ask_at(d, fu, make_query(name, "TXT", edns=1232), 1,
                "first query, UDP EDNS 1232")
    check(_txts(r.msg) == want and not (r.msg.flags & dns.flags.TC),
          "first query: %d strings, TC=%d" % (
              len(_txts(r.msg)), bool(r.msg.flags & dns.flags.TC)))
    before = d.stats()
    for edns, limit in ((None, 512), (600, 600)):
        what = "UDP %s hit" % ("without EDNS" if edns is None else
                               "EDNS %d" % edns)
        r = _ask_at(d, fu, make_query(name, "TXT", edns=edns), 1, what)
        check(r.msg.flags & dns.flags.TC and len(r.raw[0]) <= limit,
              "%s: TC=%d, %d bytes (limit %d)" % (
                  what, bool(r.msg.flags & dns.flags.TC), len(r.raw[0]),
                  limit))
        check(not r.msg.answer, "%s: TC reply carries %d answer RRsets" % (
            what, len(r.msg.answer)))
    for how in ("TCP", "UDP EDNS 1232"):
        if how == "TCP":
            r = ask_tcp(d.port, make_query(name, "TXT"))
        else:
            r = ask_udp(d.port, make_query(name, "TXT", edns=1232))
        check(r.msg is not None and _txts(r.msg) == want and
              not (r.msg.flags & dns.flags.TC), "%s hit: %s, %d of %d "
              "strings" % (how, r.describe(),
                           len(_txts(r.msg)) if r.msg else 0, len(want)))
    time.sleep(0.05)
    check(fu.count(name) == 1, "the upstream saw %d queries, want 1" %
          fu.count(name))
    after = d.stats()
    check(_delta(before, after, "cache_hits") == 4, "cache_hits rose by %d "
          "for 4 hits" % _delta(before, after, "cache_hits"))


@scenario
def cache_opt_only_if_asked(t):
    """A hit has no OPT for a client without EDNS and one OPT (version 0, payload 1232, the client's DO bit, none of the upstream's options) for a client with EDNS."""
    fu = t.fakeup()
    fu.set(answer_options=[(10, UP_COOKIE), (65002, b"x")], answer_pad=468)
    d = t.dnsfwd(*tls_up(fu), "--timeout", "2000")
    name = "opt.example."
    steps = [  # (edns, do, upstream queries after, what)
        (None, False, 1, "first query, no EDNS"),
        (1232, False, 1, "hit, EDNS DO=0"),
        (None, False, 1, "hit, no EDNS"),
        (1232, True, 2, "first DO=1 query"),
        (1232, True, 2, "hit, EDNS DO=1"),
        (None, False, 2, "hit, no EDNS, again"),
    ]
    for edns, do, n, what in steps:
        q = make_query(name, edns=edns, do=do)
        r = _ask_at(d, fu, q, n, what)
        expect_a(r, GOOD_ADDR, what)
        _client_opt_ok(r, q, what)
        raw = r.raw[0]
        if edns is None:
            check(_arcount(raw) == 0 and r.msg.edns < 0, "%s: ARCOUNT %d, "
                  "want no OPT" % (what, _arcount(raw)))
        else:
            check(r.msg.edns == 0 and _arcount(raw) == 1, "%s: EDNS %d, "
                  "ARCOUNT %d, want one OPT" % (what, r.msg.edns,
                                                _arcount(raw)))
            got = bool(r.msg.ednsflags & dns.flags.DO)
            check(got == do, "%s: OPT DO=%d, want %d" % (what, got, do))


@scenario
def cache_ttl_clamps(t):
    """--min-ttl 5 keeps a TTL-1 answer past 2 s (TTL 5 aged); --max-ttl 2 shows a TTL-300 answer, first and cached, with TTL <= 2 and refetches it after 2 s."""
    fu = t.fakeup()
    fu.rule("minttl.example.", ttl=1)
    fu.rule("maxttl.example.", ttl=300)
    dmin = t.dnsfwd(*tls_up(fu), "--min-ttl", "5", "--timeout", "2000")
    dmax = t.dnsfwd(*tls_up(fu), "--max-ttl", "2", "--timeout", "2000")
    r = _ask_at(dmin, fu, "minttl.example.", 1, "first, --min-ttl 5")
    tmin = time.monotonic()
    check(_ttls(r.msg) and all(x == 5 for x in _ttls(r.msg)),
          "--min-ttl 5: the first answer of a TTL-1 name shows TTLs %s, "
          "want 5 as its hits will" % _ttls(r.msg))
    r = _ask_at(dmax, fu, "maxttl.example.", 1, "first, --max-ttl 2")
    tmax = time.monotonic()
    check(_ttls(r.msg) and all(x <= 2 for x in _ttls(r.msg)),
          "--max-ttl 2: the first answer of a TTL-300 name shows TTLs %s"
          % _ttls(r.msg))
    r = _ask_at(dmax, fu, "maxttl.example.", 1, "hit, --max-ttl 2")
    expect_a(r, GOOD_ADDR, "hit, --max-ttl 2")
    check(all(x <= 2 for x in _ttls(r.msg)), "--max-ttl 2: cached TTL-300 "
          "answer shows TTLs %s" % _ttls(r.msg))
    _until(tmin, 2.1)
    r = _ask_at(dmin, fu, "minttl.example.", 1, "--min-ttl 5, TTL-1 "
                "answer 2.1 s later")
    expect_a(r, GOOD_ADDR, "--min-ttl 5 hit")
    check(all(2 <= x <= 3 for x in _ttls(r.msg)), "--min-ttl 5: TTLs %s "
          "2.1 s after storing, want 3 (5 aged by 2)" % _ttls(r.msg))
    _until(tmax, 2.2)
    _ask_at(dmax, fu, "maxttl.example.", 2, "--max-ttl 2, 2.2 s later")


# ---------------------------------------------------------------- runner

def run_one(fn, workdir):
    t = T(fn.__name__, workdir)
    status, reason = "ok", ""
    t0 = time.monotonic()
    try:
        if getattr(fn, "timed", False):
            with host_lock(TIMED_LOCK, TIMED_WAIT):
                fn(t)
        else:
            fn(t)
    except Skip as e:
        status, reason = "skip", str(e)
    except Fail as e:
        status, reason = "FAIL", str(e)
    except Exception as e:
        status, reason = "FAIL", "test error: %s" % "".join(
            traceback.format_exception_only(type(e), e)).strip()
        t.note(traceback.format_exc())
    try:
        errs = t.cleanup(failed=(status == "FAIL"))
    except Exception as e:
        errs = ["cleanup error: %r" % e]
    if errs and status != "FAIL":
        status, reason = "FAIL", "; ".join(errs)
    elif errs:
        reason += "; " + "; ".join(errs)
    with open(os.path.join(t.dir, "notes.txt"), "w") as f:
        f.write("\n".join(t.notes) + "\n%s %s\n" % (status, reason))
    return status, reason, time.monotonic() - t0, t


def main():
    global DNSFWD, PKI
    ap = argparse.ArgumentParser(description="dnsfwd integration tests")
    ap.add_argument("--dnsfwd", default=os.environ.get("DNSFWD", "./dnsfwd"))
    ap.add_argument("-k", dest="substr", default=None,
                    help="run only scenarios whose name contains this")
    ap.add_argument("-j", dest="jobs", type=int, default=4,
                    help="scenarios run at once (default 4)")
    ap.add_argument("-v", dest="verbose", action="store_true",
                    help="print log tails of failed scenarios")
    ap.add_argument("--keep", action="store_true",
                    help="keep the work directory even when all pass")
    a = ap.parse_args()
    DNSFWD = os.path.abspath(a.dnsfwd)
    if not os.access(DNSFWD, os.X_OK):
        print("FAIL setup: %s is not an executable" % DNSFWD)
        print("0 passed, 1 failed")
        return 1
    workdir = tempfile.mkdtemp(prefix="dnsfwd-it-")
    PKI = os.path.join(workdir, "pki")
    subprocess.run(["sh", os.path.join(HERE, "mkcerts.sh"), PKI], check=True)
    todo = [fn for fn in SCENARIOS if not a.substr or a.substr in fn.__name__]
    passed = failed = skipped = 0
    t0 = time.monotonic()
    try:
        with concurrent.futures.ThreadPoolExecutor(max(1, a.jobs)) as ex, \
                concurrent.futures.ThreadPoolExecutor(1) as lane:
            first = sorted(todo, key=lambda fn: not getattr(fn, "slow", 0))
            started = {fn: (lane if getattr(fn, "timed", False) else ex)
                       .submit(run_one, fn, workdir) for fn in first}
            futs = [started[fn] for fn in todo]
            for fn, fut in zip(todo, futs):
                try:
                    status, reason, dt, t = fut.result(timeout=300)
                except concurrent.futures.TimeoutError:
                    status, reason, dt, t = "FAIL", "hung for 300s", 300, None
                name = fn.__name__
                if status == "ok":
                    passed += 1
                    print("ok %s%s" % (name, " (%.1fs)" % dt if a.verbose
                                       else ""), flush=True)
                elif status == "skip":
                    skipped += 1
                    print("skip %s: %s" % (name, reason), flush=True)
                else:
                    failed += 1
                    print("FAIL %s: %s" % (name, reason), flush=True)
                    if a.verbose and t is not None:
                        for d in t.daemons:
                            print("    --- %s" % d.log)
                            for ln in d.lines()[-15:]:
                                print("    " + ln)
    finally:
        with ALL_PROCS_LOCK:
            left = list(ALL_PROCS)
        for p in left:
            kill_pid(p)
    print("# %.1fs, work directory %s" % (
        time.monotonic() - t0, workdir if (failed or a.keep) else "removed"))
    if not failed and not a.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    tail = ", %d skipped" % skipped if skipped else ""
    print("%d passed, %d failed%s" % (passed, failed, tail))
    return 1 if failed else 0


# Scenarios of the service and of the DNS-over-TLS side, in modules of their
# own that register into SCENARIOS through this module.
for _m in ("scen_service", "scen_privacy", "scen_limits", "scen_health",
           "scen_path"):
    __import__(_m).register(sys.modules[__name__])

if __name__ == "__main__":
    sys.exit(main())

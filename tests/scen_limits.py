"""dnsfwd integration scenarios: every documented limit, driven.

dnsfwd.8 LIMITS and the tunables of the modules, each pushed past its edge
by a scenario that watches what happens there and that service goes on:

  the pending table (upstreams x --connections x --max-inflight, and a
      wait queue as large): limit_pending_table_upstreams,
      limit_join_when_table_full
  client queries waiting (twice the table, identical ones sharing):
      limit_client_queries_shared
  64 pipelined queries per TCP client (reading stops, then resumes):
      limit_tcp_pipeline_reading_stops
  10 s without progress per TCP client, bytes that never finish a query
      not counting, and a full table giving up its stalest client:
      limit_tcp_dribblers_closed
  the cache's memory (--cache-size entries of at most 1304 bytes):
      limit_cache_memory
  file descriptors (RLIMIT_NOFILE): limit_fd_exhaustion_tcp,
      limit_fd_exhaustion_upstream
  1232-byte queries: limit_query_size
  8 upstreams, 8 pins each, 8 listeners of each kind, 32 --allow
      networks: limit_static_counts

Covered in integration.py already, and not repeated here: 256 TCP
clients (tcp_client_limit), the 64-query pipeline answering past it
(tcp_client_past_pipeline_limit), 256 KiB unread (tcp_client_not_reading,
tcp_clients_not_reading_free_slots), the per-connection queue
(max_inflight_queue) and the basic overload SERVFAIL (overload_servfail).

integration.py calls register(module) with itself; every scenario here
uses its harness (T, Dnsfwd, ask_udp, ...) through that module, `it`.
"""

import base64
import os
import resource
import select
import socket
import time

import dns.edns
import dns.message
import dns.rcode

import scen

it = None                  # the integration module, set by register()
_reg = scen.Registry(__name__)
scenario, slow = _reg.scenario, _reg.slow


def register(mod):
    _reg.register(mod)


# ---------------------------------------------------------------- helpers

def _cpu_s(pid):
    """User plus system CPU seconds of process pid so far."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After the comm field: state is field 3, utime 14 and stime 15.
    return (int(fields[11]) + int(fields[12])) / float(
        os.sysconf("SC_CLK_TCK"))


def _rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for ln in f:
            if ln.startswith("VmRSS:"):
                return int(ln.split()[1])
    return 0


def _kinds(res, qs):
    """Sorts _blast_udp results: (answered, overload SERVFAILs, other)."""
    ok, over, other = [], [], []
    for q, (raw, el) in zip(qs, res):
        name = q.question[0].name.to_text()
        if raw is None:
            other.append("%s: no reply" % name)
            continue
        m = it._is_ours(q, raw)
        if m is None:
            other.append("%s: a reply not its own" % name)
        elif m.rcode() == dns.rcode.NOERROR and it._a_of(m) == [it.GOOD_ADDR]:
            ok.append((name, el))
        elif m.rcode() == dns.rcode.SERVFAIL and (
                q.edns < 0 or "too many queries" in _ede_text(m)):
            over.append((name, el))
        else:
            other.append("%s: %s %s %s" % (name, dns.rcode.to_text(
                m.rcode()), it._a_of(m), _ede_text(m)))
    return ok, over, other


def _ede_text(m):
    for opt in (m.options if m.edns >= 0 else ()):
        if opt.otype == 15:
            return str(getattr(opt, "text", "") or "")
    return ""


def _wait_idle(d, timeout=8.0):
    """Waits for inflight=0 and pending=0; returns the last stats."""
    deadline = time.monotonic() + timeout
    st = d.stats()
    while time.monotonic() < deadline and (st.get("inflight") or
                                           st.get("pending")):
        time.sleep(0.1)
        st = d.stats()
    return st


def _resumes(d, tag, n=4):
    """After an overload: n fresh queries at once (no more than the table
    holds) are answered, and nothing is left in flight or waiting."""
    st = _wait_idle(d)
    it.check(st.get("inflight") == 0 and st.get("pending") == 0,
             "%s: inflight=%s pending=%s once the answers came back" % (
                 tag, st.get("inflight"), st.get("pending")))
    rs = it.parallel(lambda i: it.ask_udp(
        d.port, it.make_query("%s-after%d.example." % (tag, i), edns=1232),
        timeout=5), range(n), workers=n)
    bad = [r.describe() for r in rs if r.addrs() != [it.GOOD_ADDR]]
    it.check(not bad, "%s: after the overload, %d of %d new queries not "
             "answered: %s" % (tag, len(bad), n, bad[:3]))
    it.expect_a(it.ask_tcp(d.port, "%s-after-tcp.example." % tag),
                it.GOOD_ADDR, "%s: TCP after the overload" % tag)


def _pad_to(name, size, qid=0):
    """A query for name with an EDNS padding option making it size bytes."""
    base = it.make_query(name, edns=1232, qid=qid,
                         options=[(12, b"")]).to_wire(max_size=65535)
    q = it.make_query(name, edns=1232, qid=qid,
                      options=[(12, b"\0" * (size - len(base)))])
    w = q.to_wire(max_size=65535)
    assert len(w) == size, (len(w), size)
    return q, w


def _free_port():
    return it.udp_tcp_free_port("127.0.0.1")


def _flags(flag, ports):
    """flag 127.0.0.1:PORT for each port, as one argument list."""
    out = []
    for p in ports:
        out += [flag, "127.0.0.1:%d" % p]
    return out


def _random_pin():
    return base64.b64encode(os.urandom(32)).decode()


def _open_tcp_clients(port, n, timeout=3.0):
    """n TCP connections (the kernel's backlog completes those dnsfwd has
    not accepted), each having sent one query: [(socket, query)]."""
    out = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        q = it.make_query("fd%d.example." % i, qid=0x7000 + i)
        s.sendall(it.fakeup.frame(q.to_wire()))
        out.append((s, q))
    return out


def _answered(clients, timeout, want=None):
    """Indices of clients (socket, query) whose answer arrives within
    timeout (all read at once); once want have come, 0.3 s more for any
    beyond."""
    got, bufs = set(), {}
    deadline = time.monotonic() + timeout
    pending = {s: (i, q) for i, (s, q) in enumerate(clients)}
    while pending and time.monotonic() < deadline:
        if want is not None and len(got) >= want:
            deadline = min(deadline, time.monotonic() + 0.3)
            want = None
        r, _, _ = select.select(list(pending), [], [],
                                max(0, deadline - time.monotonic()))
        for s in r:
            i, q = pending[s]
            try:
                data = s.recv(65535)
            except OSError:
                data = b""
            if not data:
                del pending[s]
                continue
            buf = bufs.get(s, b"") + data
            bufs[s] = buf
            if len(buf) >= 2 and len(buf) >= 2 + int.from_bytes(buf[:2],
                                                                "big"):
                m = it._is_ours(q, buf[2:2 + int.from_bytes(buf[:2], "big")])
                if m is not None and it._a_of(m) == [it.GOOD_ADDR]:
                    got.add(i)
                del pending[s]
    return got


# ---------------------------------------------------------------- the table

@scenario
def limit_pending_table_upstreams(t):
    """The pending table is upstreams x --connections x --max-inflight plus a wait queue as large (2 x 1 x 4, twice: 16): of 30 distinct queries sent at once while the upstreams take 0.5 s, exactly 16 are answered and 14 get an overload SERVFAIL within 0.5 s, counted in overload; no connection has more than 4 in flight; service resumes."""
    fus = [t.fakeup(), t.fakeup()]
    for fu in fus:
        fu.set(delay_ms=500)
    d = t.dnsfwd(*it.tls_up(fus[0]), *it.tls_up(fus[1], ca=False),
                 "--connections", "1", "--max-inflight", "4",
                 "--timeout", "6000", "--cache-size", "0")
    before = d.stats()
    qs = [it.make_query("tbl%d.example." % i, edns=1232, qid=0x100 + i)
          for i in range(30)]
    res = it._blast_udp(d.port, qs, timeout=8)
    ok, over, other = _kinds(res, qs)
    t.note("answered by u0 %d, u1 %d" % (fus[0].nqueries("tbl"),
                                         fus[1].nqueries("tbl")))
    it.check(not other, "neither answer nor overload SERVFAIL: %s" % other[:4])
    it.check(len(ok) == 16 and len(over) == 14, "%d answered and %d "
             "overload SERVFAILs of 30 with a table of 2 x 1 x 4 in flight "
             "and as many waiting; want 16 and 14 (answered: %s)" % (
                 len(ok), len(over), sorted(n for n, _ in ok)[:20]))
    it.check(sorted(n for n, _ in ok) == sorted(
        "tbl%d.example." % i for i in range(16)),
        "not the first 16 sent were answered: %s" % sorted(n for n, _ in ok))
    late = [el for _, el in over if el > 0.5]
    it.check(not late, "overload SERVFAILs after %s s" % late[:4])
    after = d.stats()
    it.check(it._delta(before, after, "overload") == 14, "overload rose by "
             "%d for 14 refused queries: %s" % (
                 it._delta(before, after, "overload"), after))
    for k, fu in enumerate(fus):
        it.check(fu.stats()["max_pending"] <= 4, "u%d had %d queries in "
                 "flight on its one connection, over --max-inflight 4" % (
                     k, fu.stats()["max_pending"]))
    _resumes(d, "tbl")


@scenario
def limit_client_queries_shared(t):
    """Client queries waiting are capped at twice the pending table (1 x 1 x 4 doubled is 8 upstream queries, so 16 clients): 8 names asked by 3 clients each while the upstream takes 0.6 s make 8 upstream queries, the first 16 clients get the answer and the last 8 an immediate overload SERVFAIL; service resumes."""
    fu = t.fakeup()
    fu.set(delay_ms=600)
    d = t.dnsfwd(*it.tls_up(fu), "--connections", "1", "--max-inflight",
                 "4", "--timeout", "5000")
    it.expect_a(it.ask_udp(d.port, "warm.example."), it.GOOD_ADDR, "warm-up")
    before = d.stats()
    qs = [it.make_query("share%d.example." % (i % 8), edns=1232,
                        qid=0x200 + i) for i in range(24)]
    res = it._blast_udp(d.port, qs, timeout=6)
    ok, over, other = _kinds(res, qs)
    it.check(not other, "neither answer nor overload SERVFAIL: %s" % other[:4])
    okidx = sorted(i for i, (raw, el) in enumerate(res)
                   if it._is_ours(qs[i], raw or b"") is not None and
                   it._is_ours(qs[i], raw).rcode() == dns.rcode.NOERROR)
    it.check(okidx == list(range(16)), "answered: clients %s of 24; want "
             "the first 16 (8 names x 2), the last 8 refused" % okidx)
    late = [el for _, el in over if el > 0.5]
    it.check(not late, "overload SERVFAILs after %s s" % late[:4])
    time.sleep(0.1)
    it.check(fu.nqueries("share") == 8, "the upstream saw %d queries for 8 "
             "names, want 8: every name had its upstream query, only the "
             "clients were too many" % fu.nqueries("share"))
    after = d.stats()
    it.check(it._delta(before, after, "overload") == 8, "overload rose by "
             "%d for 8 refused clients: %s" % (
                 it._delta(before, after, "overload"), after))
    _resumes(d, "share")


@scenario
def limit_join_when_table_full(t):
    """With every upstream slot taken (1 x 1 x 2, doubled: 4), a new name gets an overload SERVFAIL at once while a query identical to one in flight still joins it and gets the answer; with --cache-size 0 nothing is shared, so the identical query is refused too."""
    for cache in ("64", "0"):
        fu = t.fakeup()
        fu.set(delay_ms=700)
        d = t.dnsfwd(*it.tls_up(fu), "--connections", "1", "--max-inflight",
                     "2", "--timeout", "5000", "--cache-size", cache)
        names = ["full%d.example." % i for i in range(4)]
        qs = [it.make_query(n, edns=1232, qid=0x300 + i)
              for i, n in enumerate(names)]
        qs.append(it.make_query("full-new.example.", edns=1232, qid=0x3f0))
        qs.append(it.make_query("FULL1.example.", edns=1232, qid=0x3f1))
        res = it._blast_udp(d.port, qs, timeout=6)
        ok, over, other = _kinds(res, qs)
        got = {n.lower(): el for n, el in ok}
        refused = sorted(n.lower() for n, _ in over)
        it.check(not other, "--cache-size %s: %s" % (cache, other[:4]))
        it.check(all(n in got for n in names), "--cache-size %s: the 4 "
                 "queries that filled the table: only %s answered" % (
                     cache, sorted(got)))
        if cache != "0":
            it.check(refused == ["full-new.example."] and
                     "full1.example." in got and len(ok) == 5,
                     "table full: a new name must be refused and a copy of "
                     "one in flight answered; refused %s, answered %d" % (
                         refused, len(ok)))
            it.check(fu.count("full1.example.") == 1, "the upstream saw "
                     "%d queries for full1, want 1" % fu.count(
                         "full1.example."))
        else:
            it.check(refused == ["full-new.example.", "full1.example."],
                     "--cache-size 0, table full: want the new name and "
                     "the copy refused, got %s" % refused)
        _resumes(d, "full" + cache)


# ---------------------------------------------------------------- TCP

@scenario
def limit_tcp_pipeline_reading_stops(t):
    """A TCP client pipelining 100 queries in one write has at most 64 taken at a time: while the upstream holds its answers 1.5 s exactly 64 reach it, the other 36 follow once answers go back, and all 100 are answered on that connection."""
    fu = t.fakeup()
    fu.set(delay_ms=1500)
    d = t.dnsfwd(*it.tls_up(fu), "--timeout", "6000", "--cache-size", "0")
    it.expect_a(it.ask_udp(d.port, "warm.example."), it.GOOD_ADDR, "warm-up")
    qs = [it.make_query("pipe%d.example." % i, qid=0x400 + i)
          for i in range(100)]
    with it.tcp_connect(d.port) as s:
        s.sendall(b"".join(it.fakeup.frame(q.to_wire()) for q in qs))
        time.sleep(0.9)
        held = fu.nqueries("pipe")
        it.check(held == 64, "%d of 100 pipelined queries reached the "
                 "upstream before any answer, want 64" % held)
        frames = it.tcp_read_frames(s, 100, 8)
    ids = sorted(dns.message.from_wire(f).id for f in frames)
    it.check(ids == sorted(q.id for q in qs), "got %d of 100 answers (the "
             "upstream saw %d)" % (len(frames), fu.nqueries("pipe")))
    bad = [m for m in map(dns.message.from_wire, frames)
           if it._a_of(m) != [it.GOOD_ADDR]]
    it.check(not bad, "%d answers not A %s" % (len(bad), it.GOOD_ADDR))


def _dribblers(port, n):
    """n TCP connections that have each sent a length prefix (200 bytes)
    and one byte of that message: never a whole query."""
    out = []
    for _ in range(n):
        s = it.tcp_connect(port)
        s.sendall(b"\x00\xc8\x00")
        out.append(s)
    return out


def _gone(s):
    """Reads what s has: True once it shows dnsfwd's close (EOF or
    ECONNRESET), False for nothing yet; data is a failure."""
    s.setblocking(False)
    try:
        data = s.recv(65535)
    except BlockingIOError:
        return False
    except OSError:
        return True
    it.check(not data, "a client that never sent a whole query got %d "
             "bytes" % len(data))
    return True


def _dribble(d, socks, t0, every=2.0, newcomer=1.5, until=14.5):
    """Sends one more byte on each of socks every `every` s and, newcomer
    s after t0, asks one query on a new connection, until every dribbler
    is closed and the newcomer answered or `until` s have passed.
    Returns ({socket: seconds after t0 it was seen closed}, (seconds to
    the newcomer's reply, whether it was the answer) or None, when the
    newcomer connected)."""
    closed, answered, new, new_at, buf = {}, None, None, None, b""
    q = it.make_query("after-dribblers.example.")
    sent_at = t0
    try:
        while time.monotonic() < t0 + until and (len(closed) < len(socks)
                                                 or answered is None):
            now = time.monotonic()
            if now - sent_at >= every:
                sent_at = now
                for s in socks:
                    if s not in closed and not _send_one(s):
                        closed[s] = now - t0
            if new is None and now - t0 >= newcomer:
                new_at = time.monotonic()
                new = it.tcp_connect(d.port)
                new.sendall(it.fakeup.frame(q.to_wire()))
            watch = [s for s in socks if s not in closed]
            if new is not None and answered is None:
                watch.append(new)
            r, _, _ = select.select(watch, [], [], 0.2)
            for s in r:
                if s is not new:
                    if _gone(s):
                        closed[s] = time.monotonic() - t0
                    continue
                try:
                    data = new.recv(65535)
                except OSError:
                    data = b""
                buf += data
                n = int.from_bytes(buf[:2], "big")
                if len(buf) >= 2 and len(buf) >= 2 + n:
                    m = it._is_ours(q, buf[2:2 + n])
                    answered = (time.monotonic() - new_at, m is not None
                                and it._a_of(m) == [it.GOOD_ADDR])
                elif not data:
                    answered = (time.monotonic() - new_at, False)
    finally:
        if new is not None:
            new.close()
    return closed, answered, new_at


def _send_one(s):
    """One more byte of the query that never ends; False when dnsfwd has
    closed the connection."""
    try:
        s.send(b"\x00")
    except OSError:
        return False
    return True


@scenario
@slow
def limit_tcp_dribblers_closed(t):
    """256 TCP clients (all the slots) that send a length prefix and then one byte every 2 s, never a whole query, make no progress: each is closed 10 s (TCP_CLIENT_IDLE) after it connected, however often bytes arrive, and a new client is answered within 4 s by taking the slot of the one longest without progress."""
    it._raise_nofile(4096)
    fu = t.fakeup()
    d = t.dnsfwd(*it.tls_up(fu), "--timeout", "2000")
    socks = []
    try:
        socks = _dribblers(d.port, 256)
        t0 = time.monotonic()
        closed, answered, new_at = _dribble(d, socks, t0)
        times = sorted(closed.values())
        t.note("dribblers closed: %d of %d, at %s s" % (
            len(times), len(socks), ["%.1f" % x for x in times[:3] +
                                     times[-3:]]))
        it.check(len(closed) == len(socks), "%d of 256 clients that only "
                 "ever sent bytes of an unfinished query are still open "
                 "%.1f s after they connected, want each closed 10 s after"
                 % (len(socks) - len(closed), time.monotonic() - t0))
        it.check(answered is not None and answered[1] and
                 answered[0] <= 4.0, "a new TCP client with 256 dribblers "
                 "holding every slot: %s, want its answer within 4 s" % (
                     "no answer in %.1f s" % (time.monotonic() - new_at)
                     if answered is None else "%s after %.1f s" % (
                         "answer" if answered[1] else "wrong reply or EOF",
                         answered[0])))
        early = [x for x in times if x < 8.5]
        it.check(len(early) <= 1, "%d dribblers closed within 8.5 s, want "
                 "only the one a new client displaced, the rest at 10 s: %s"
                 % (len(early), ["%.1f" % x for x in early[:5]]))
    finally:
        for s in socks:
            s.close()
    it.expect_a(it.ask_tcp(d.port, "after-dribble.example."), it.GOOD_ADDR,
                "TCP after the dribblers")


# ---------------------------------------------------------------- cache

@scenario
def limit_cache_memory(t):
    """--cache-size 1000 keeps at most 1000 answers: after 3000 distinct cacheable 880-byte answers VmRSS has grown by at most 1000 x 1304 bytes + 1 MiB over the warm daemon and no further after the first thousand, cache_entries is 1000 and cache_evictions counts the 2000 pushed out."""
    fu = t.fakeup()
    d = t.dnsfwd(*it.tls_up(fu), "--timeout", "4000", "--cache-size", "1000")
    pid = d.proc.pid
    # Warm: the TLS session, the pools, the answer path.
    for i in range(40):
        r = it.ask_udp(d.port, it.make_query("mid.warm%d.example." % i, "TXT",
                                             edns=1232))
        it.check(r.msg is not None and len(it._txts(r.msg)) == 4,
                 "warm-up: %s" % r.describe())
    base = _rss_kb(pid)
    before = d.stats()
    want_ev = before.get("cache_entries", 0) + 3000 - 1000
    rss = []
    for k in range(3):
        qs = [it.make_query("mid.c%d.example." % i, "TXT", edns=1232,
                            qid=i & 0xffff)
              for i in range(k * 1000, (k + 1) * 1000)]
        bad = _pump(d.port, qs)
        it.check(not bad, "thousand %d: %d of 1000 not answered with the "
                 "880-byte TXT: %s" % (k + 1, len(bad), bad[:3]))
        rss.append(_rss_kb(pid))
    after = d.stats()
    t.note("VmRSS warm %d kB, after 1000/2000/3000 answers %s kB" % (
        base, rss))
    allow = 1000 * 1304 // 1024 + 1024
    it.check(rss[2] - base <= allow, "VmRSS grew by %d kB for a 1000-entry "
             "cache (allowed %d kB): warm %d, after each thousand %s" % (
                 rss[2] - base, allow, base, rss))
    it.check(rss[2] - rss[0] <= 256, "VmRSS kept growing once the cache was "
             "full: %s kB after each thousand answers" % rss)
    it.check(after.get("cache_entries") == 1000, "cache_entries %s, want "
             "1000" % after.get("cache_entries"))
    it.check(it._delta(before, after, "cache_evictions") == want_ev,
             "cache_evictions rose by %d for 3000 answers in 1000 entries "
             "holding %d, want %d" % (it._delta(
                 before, after, "cache_evictions"),
                 before.get("cache_entries", 0), want_ev))
    hedges = it._delta(before, after, "hedges")
    it.check(fu.nqueries("mid.c") == 3000 + hedges, "the upstream saw %d "
             "queries for the 3000 distinct ones and %d copies sent after "
             "an attempt timeout" % (fu.nqueries("mid.c"), hedges))


def _pump(port, qs, window=48, timeout=20.0):
    """Sends qs over UDP from one socket, window at a time; the names of
    those that got no 4-string TXT answer."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.connect(("127.0.0.1", port))
    byid = {q.id: q for q in qs}
    todo = list(qs)
    out, done = set(), set()
    deadline = time.monotonic() + timeout
    try:
        while (todo or out) and time.monotonic() < deadline:
            while todo and len(out) < window:
                q = todo.pop(0)
                s.send(q.to_wire())
                out.add(q.id)
            r, _, _ = select.select([s], [], [], 0.5)
            if not r:
                continue
            data = s.recv(65535)
            m = dns.message.from_wire(data)
            q = byid.get(m.id)
            if q is not None and m.id in out and m.question == q.question \
                    and len(it._txts(m)) == 4:
                out.discard(m.id)
                done.add(m.id)
    finally:
        s.close()
    return [q.question[0].name.to_text() for q in qs if q.id not in done]


# ---------------------------------------------------------------- fds

def _emfile_setup(t, nofile=64):
    """dnsfwd with one upstream connection up, then RLIMIT_NOFILE nofile
    set on the running process (resource.prlimit: Dnsfwd.start runs the
    binary directly)."""
    it._raise_nofile(4096)
    fu = t.fakeup()
    d = t.dnsfwd(*it.tls_up(fu), "--timeout", "2000", "--connections", "1",
                 "--idle-timeout", "60")
    it.expect_a(it.ask_udp(d.port, "warm.example."), it.GOOD_ADDR, "warm-up")
    resource.prlimit(d.proc.pid, resource.RLIMIT_NOFILE, (nofile, nofile))
    return fu, d


def _fill_fds(d, n, tag):
    """Opens n TCP clients; waits until dnsfwd stops accepting them.
    Returns (clients, fd count)."""
    clients = _open_tcp_clients(d.port, n)
    pid = d.proc.pid
    last, stable = -1, 0
    for _ in range(100):             # up to 5 s for the count to settle
        now = it._fds(pid)
        stable = stable + 1 if now == last else 0
        if stable >= 6:
            break
        last = now
        time.sleep(0.05)
    return clients, it._fds(pid)


@scenario
@slow
def limit_fd_exhaustion_tcp(t):
    """With RLIMIT_NOFILE 64 and 100 TCP clients, dnsfwd accepts until it has no descriptor left and does not spin there (under 0.3 s of CPU over 2 s), keeps answering UDP, serves the clients it took, and takes the waiting ones as soon as others leave; at the end its descriptors are back to their count before."""
    fu, d = _emfile_setup(t)
    pid = d.proc.pid
    base = it._fds(pid)
    clients, nfd = _fill_fds(d, 100, "emfile")
    try:
        it.check(nfd == 64, "dnsfwd holds %d descriptors with 100 TCP "
                 "clients and RLIMIT_NOFILE 64, want 64" % nfd)
        taken = 64 - base
        first = _answered(clients, 3, want=taken)
        it.check(len(first) == taken and first == set(range(taken)),
                 "%d clients answered (%s...), want the %d dnsfwd could "
                 "accept" % (len(first), sorted(first)[:5], taken))
        c0 = _cpu_s(pid)
        t0 = time.monotonic()
        rs = []
        while time.monotonic() - t0 < 2.0:
            rs.append(it.ask_udp(d.port, "emfile-udp%d.example." % len(rs),
                                 timeout=2))
            time.sleep(0.25)
        cpu = _cpu_s(pid) - c0
        el = time.monotonic() - t0
        t.note("CPU %.3f s over %.2f s out of descriptors" % (cpu, el))
        it.check(cpu < 0.3, "dnsfwd used %.2f s of CPU in %.1f s out of "
                 "descriptors with clients waiting to be accepted: spinning"
                 % (cpu, el))
        bad = [r.describe() for r in rs if r.addrs() != [it.GOOD_ADDR]]
        it.check(rs and not bad, "UDP while out of descriptors: %d of %d "
                 "not answered: %s" % (len(bad), len(rs), bad[:3]))
        # 20 leave: 20 of the waiting are accepted and answered.
        for i in range(20):
            clients[i][0].close()
        waiting = clients[taken:]
        second = _answered(waiting, 4, want=20)
        it.check(len(second) == 20, "%d of the %d waiting clients answered "
                 "within 4 s after 20 others left, want 20" % (
                     len(second), len(waiting)))
    finally:
        for s, _ in clients:
            s.close()
    # Every client gone: a new one is served at once, descriptors recover.
    it.expect_a(it.ask_tcp(d.port, "emfile-after.example.", timeout=4),
                it.GOOD_ADDR, "TCP client after the others left")
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline and it._fds(pid) != base:
        time.sleep(0.1)
    it.check(it._fds(pid) == base, "dnsfwd holds %d descriptors, %d before "
             "the clients came" % (it._fds(pid), base))
    warns = d.grep("accept")
    it.check(1 <= len(warns) <= 4, "%d log lines about accept failing, "
             "want a rate-limited few: %s" % (len(warns), warns[:5]))


@scenario
@slow
def limit_fd_exhaustion_upstream(t):
    """Out of descriptors with its upstream connection gone, dnsfwd cannot dial: UDP queries get SERVFAIL within the deadline instead of hanging, the CPU stays idle, and once TCP clients leave the upstream is dialled and answers again."""
    fu, d = _emfile_setup(t)
    pid = d.proc.pid
    clients, nfd = _fill_fds(d, 100, "emfile-up")
    try:
        it.check(nfd == 64, "dnsfwd holds %d descriptors, want 64" % nfd)
        fu.close_all(graceful=True)
        # dnsfwd sees the close, and within its 1 s accept pause takes a
        # waiting client with the descriptor that freed.
        deadline = time.monotonic() + 4
        seen = []
        while time.monotonic() < deadline:
            seen.append(it._fds(pid))
            if seen[-1] == 64 and min(seen) < 64:
                break
            time.sleep(0.05)
        it.check(seen[-1] == 64 and min(seen) < 64, "after the upstream "
                 "left, descriptors went %s, want one freed then taken by a "
                 "waiting client" % sorted(set(seen)))
        c0 = _cpu_s(pid)
        t0 = time.monotonic()
        rs = it.parallel(lambda i: it.ask_udp(
            d.port, it.make_query("noup%d.example." % i, edns=1232),
            timeout=4), range(8), workers=8)
        for r in rs:
            it.expect_servfail(r, "UDP query with no descriptor to dial")
            it.check(r.elapsed <= 2.6, "SERVFAIL after %.2f s, past the 2 s "
                     "deadline" % r.elapsed)
        time.sleep(max(0, 2.0 - (time.monotonic() - t0)))
        cpu = _cpu_s(pid) - c0
        it.check(cpu < 0.3, "dnsfwd used %.2f s of CPU in %.1f s unable to "
                 "dial" % (cpu, time.monotonic() - t0))
    finally:
        for s, _ in clients:
            s.close()
    deadline = time.monotonic() + 8
    r = None
    while time.monotonic() < deadline:
        r = it.ask_udp(d.port, "up-again%d.example." % int(time.monotonic()
                                                          * 10), timeout=2)
        if r.addrs() == [it.GOOD_ADDR]:
            break
        time.sleep(0.3)
    it.check(r is not None and r.addrs() == [it.GOOD_ADDR], "the upstream "
             "not reached again within 8 s after descriptors came back: %s"
             % (r.describe() if r else "no try"))


# ---------------------------------------------------------------- sizes

@scenario
def limit_query_size(t):
    """A 1232-byte query is forwarded and answered over UDP and TCP; a 1233-byte one goes nowhere: dropped over UDP, and over TCP the connection is closed; each counts in drops, and serving goes on."""
    fu = t.fakeup()
    d = t.dnsfwd(*it.tls_up(fu), "--timeout", "2000")
    q, w = _pad_to("size1232.example.", 1232, qid=0x1232)
    got = it._raw_udp(d.port, w, timeout=3)
    m = it._is_ours(q, got[0]) if got else None
    it.check(m is not None and it._a_of(m) == [it.GOOD_ADDR],
             "1232-byte UDP query: %d replies, %s" % (
                 len(got), m and it._a_of(m)))
    q, w = _pad_to("size1232-tcp.example.", 1232, qid=0x1233)
    got = it._raw_tcp(d.port, w, timeout=3)
    m = it._is_ours(q, got[0]) if got else None
    it.check(m is not None and it._a_of(m) == [it.GOOD_ADDR],
             "1232-byte TCP query: %d replies, %s" % (
                 len(got), m and it._a_of(m)))
    before = d.stats()
    q, w = _pad_to("size1233.example.", 1233, qid=0x1234)
    got = it._raw_udp(d.port, w, timeout=1)
    it.check(not got, "a 1233-byte UDP query got %d replies" % len(got))
    q, w = _pad_to("size1233-tcp.example.", 1233, qid=0x1235)
    with it.tcp_connect(d.port) as s:
        s.sendall(it.fakeup.frame(w))
        how, n = it._read_to_end(s, 3)
    it.check(how in ("eof", "reset") and n == 0, "a 1233-byte TCP query: "
             "the connection is %s after %d bytes, want closed without an "
             "answer" % (how, n))
    after = d.stats()
    it.check(it._delta(before, after, "drops") == 2, "drops rose by %d for "
             "two 1233-byte queries" % it._delta(before, after, "drops"))
    it.check(fu.nqueries("size1233") == 0, "a 1233-byte query reached the "
             "upstream")
    it.expect_a(it.ask_udp(d.port, "size-after.example."), it.GOOD_ADDR,
                "after the oversized queries")


@scenario
def limit_static_counts(t):
    """8 upstreams with 8 pins each, 8 UDP and 8 TCP listeners and 32 --allow networks are accepted, and such a dnsfwd answers on its 8th listeners through its 8th upstream (the first 7 refusing), authenticated by that upstream's 8th pin; a 9th upstream, pin or listener or a 33rd network is a usage error naming its option."""
    fus = [t.fakeup() for _ in range(8)]
    for fu in fus[:7]:
        fu.refuse()
    good_pin = it.read_pin()
    ups = []
    for k, fu in enumerate(fus):
        ups += ["--connect-tls", "127.0.0.1:%d#dns.test" % fu.port]
        pins = [_random_pin() for _ in range(7)] + [good_pin]
        for p in pins:
            ups += ["--pin-sha256", p]
    ports = [_free_port() for _ in range(7)]
    listen = []
    for p in ports:
        listen += ["--bind-udp", "127.0.0.1:%d" % p,
                   "--bind-tcp", "127.0.0.1:%d" % p]
    allow = []
    for k in range(32):
        allow += ["--allow", "10.%d.0.0/16" % k]
    ca = ["--ca-file", it.pki("ca.pem")]
    lu = ["--bind-udp", "127.0.0.1:5353"]
    rc, out, err = it.run_dnsfwd(t, lu + ups + ca + allow + ["--check"])
    it.check(rc == 0, "--check with 8 upstreams of 8 pins and 32 networks: "
             "exit %d %s" % (rc, err.strip()[:300]))
    over = [
        (ups + ["--connect-tls", "127.0.0.1:853#dns.test"], "--connect-tls"),
        (ups + ["--pin-sha256", good_pin], "--pin-sha256"),
        (ups[:2] + allow + ["--allow", "10.99.0.0/16"], "--allow"),
        (ups[:2] + ["--bind-udp", "127.0.0.1:1"] +
         _flags("--bind-udp", range(2, 10)),
         "--bind-udp"),
        (ups[:2] + lu + ["--bind-tcp", "127.0.0.1:1"] +
         _flags("--bind-tcp", range(2, 10)),
         "--bind-tcp"),
    ]
    bad = []
    for args, flag in over:
        a = list(args) + ca + ["--check"]
        if "--bind-udp" not in a and "--bind-tcp" not in a:
            a = lu + a
        rc, out, err = it.run_dnsfwd(t, a)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        if rc != 2 or len(lines) != 1 or flag not in lines[0]:
            bad.append("one %s too many: exit %d, %r" % (flag, rc, err[:200]))
    it.check(not bad, "; ".join(bad))
    d = t.dnsfwd(*ups, *ca, *listen, *allow, "--timeout", "4000")
    last = ports[-1]
    it.expect_a(it.ask_udp(last, "eighth.example.", timeout=5), it.GOOD_ADDR,
                "UDP on the 8th listener")
    it.expect_a(it.ask_tcp(last, "eighth-tcp.example.", timeout=5),
                it.GOOD_ADDR, "TCP on the 8th listener")
    it.check(fus[7].nqueries("eighth") == 2, "the 8th upstream saw %d of "
             "the 2 queries" % fus[7].nqueries("eighth"))
    it.expect_a(it.ask_udp(d.port, "first-listener.example."), it.GOOD_ADDR,
                "UDP on the first listener")

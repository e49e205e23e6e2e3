#!/usr/bin/python3
"""dnsfwd fault-injection soak.

    /usr/bin/python3 tests/soak.py [--dnsfwd PATH] [--short] [--seed N]
                                   [--queries N] [--duration S] [--keep]

PATH defaults to $DNSFWD or ./dnsfwd; --short is the quick variant for
`make check` (4,000 queries, about 30 s), the default `make soak` sends
40,000 (about 90 s).

Runs two phases against one dnsfwd each, with TWO fake DNS-over-TLS
upstreams (tests/fakeup.py) that independently and at random (a seeded
RNG per upstream; the seed is printed) delay replies by 0-300 ms, reorder
them, close connections with queries held (FIN and RST), go away for a
while (refuse dials, or stop answering), stay connected and answer
nothing past a deadline (blackhole), answer REFUSED or NOTIMP to
everything for a while, send wrong IDs, wrong questions, QR=0
replies, duplicates and garbage frames, and stall handshakes:

  nocache  --cache-size 0: every query has a name of its own
           (nocache-SEQ.uSOCK.xSEED.soak. or ...tSOCK..., naming the
           client socket or TCP connection that asks it)
  cache    --cache-size 256 --prewarm: runs of 4 queries, going to 4
           different clients at once, share a name, each in its own
           letter case, and 1 in 5 repeats an earlier name (a hit, or a
           miss once evicted)

Each phase sends half the queries (default 40,000 in all; --short 4,000)
from 64 UDP sockets (8 queries outstanding each) and 16 TCP connections
(8 pipelined each), paced over --duration seconds (40, --short 12) with
a burst of 500 at once every 5 s pipelined on the TCP connections, more
than the pending table holds
(dnsfwd runs with --timeout 1500 --connections 2 --max-inflight 48
--idle-timeout 1); 7 in 8 carry an EDNS OPT, so a SERVFAIL tells why
(Extended DNS Error: overload, timeout, no upstream).  Every query has an
ID unique in its phase, so each reply is tied to its query, its socket
and, over TCP, its connection.  Afterwards, per phase, one check per
group of assertions:

  replies    every query got exactly one reply, or its loss is proved to
             be a full UDP socket buffer (no more unanswered UDP queries
             than the kernel's drop counters of dnsfwd's socket and the
             clients' sockets rose, /proc/net/udp) and stays under 0.5%;
             TCP loses none; no duplicate; every reply within --timeout
             plus 1.5 s (ASan 3 s)
  routing    every reply came to the socket (TCP: the connection) that
             asked, with the query's ID and its question byte for byte
             (letter case included); every answer is NOERROR with exactly
             A 192.0.2.1 (never fakeup's bad 198.51.100.66) or SERVFAIL,
             or the upstreams' own REFUSED or NOTIMP (no EDE of ours)
             when both said so at once
  stats      dnsfwd's SIGUSR1 counters agree with what clients saw:
             queries = sent - drops at dnsfwd's socket, answers +
             servfails = queries, clients saw at most that many of each
             and the difference is the proved UDP loss; overload
             SERVFAILs seen <= overload <= those + the unclassifiable;
             with the cache, hits + misses = queries, entries <= size,
             and evictions once more names than entries were asked
  drained    inflight=0 and pending=0 once traffic stops
  fds        /proc/PID/fd back to its count before any traffic
  rss        VmRSS <= idle + cache size x 1304 + the pending table's
             slots x 2 KiB (upstream query, flight, 2 client queries:
             fixed pools, touched as first used) + 1 MiB; under ASan
             dnsfwd runs with ASAN_OPTIONS quarantine_size_mb=8, and 8
             MiB + 4 MiB more are allowed; "idle" is VmRSS after a
             warm-up of 8 queries, before the soak
  alive      a plain query over UDP and over TCP is still answered (UDP
             retried while the upstreams' backoff, at most 30 s, runs out)
  exit       SIGTERM: exit 0 within 2 s, "stopped" last, no sanitizer
             report in the log
  faults     the faults really happened: bad_replies and reconnects rose,
             an upstream closed (FIN) and one reset (RST) a connection
             with queries held, and one went away for a while

Prints a summary table, one "ok NAME" / "FAIL NAME: why" line per check,
and "N passed, N failed"; exits 1 if any failed.  Every loop is bounded;
every process is stopped by PID (the integration harness's T and Dnsfwd).
"""

import argparse
import os
import random
import selectors
import shutil
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

import integration as it   # noqa: E402
import fakeup              # noqa: E402

GOOD = socket.inet_aton(fakeup.GOOD_ADDR)
BAD = socket.inet_aton(fakeup.BAD_ADDR)
TIMEOUT_MS = 1500
MAX_INFLIGHT = 48
CONNECTIONS = 2
CACHE_SIZE = 256
# Every BURST_EVERY s of a phase BURST more queries go at once, more than
# the pending table holds without the cache (2 x 2 x 2 x 48 = 384), all
# pipelined on the TCP connections (up to TCP_BURST_WINDOW each): UDP
# bursts that large would overflow dnsfwd's socket buffer instead.
BURST_EVERY, BURST, TCP_BURST_WINDOW = 5.0, 500, 48
UDP_SOCKS, UDP_WINDOW = 64, 8
TCP_CONNS, TCP_WINDOW = 16, 8
EDNS_OPT = struct.pack("!BHHIH", 0, 41, 1232, 0, 0)
OVERLOAD_TEXT = b"too many queries in flight"
ENTRY_BYTES = 1304
# A slot of the pending table, touched once used: the upstream query
# (~610 B), its flight (~400 B) and two client queries (~430 B each).
SLOT_BYTES = 2048
# ASan keeps freed memory (TLS sessions, mostly) in a quarantine: capped
# at this, and allowed for, under ASan (plus 4 MiB of its own).
ASAN_QUARANTINE_MB = 8


# ---------------------------------------------------------------- wire

def name_wire(name):
    labels = [lb for lb in name.rstrip(".").split(".") if lb]
    return b"".join(bytes([len(lb)]) + lb.encode() for lb in labels) + b"\0"


def skip_name(m, off):
    for _ in range(128):
        ln = m[off]
        if ln == 0:
            return off + 1
        if ln & 0xC0 == 0xC0:
            return off + 2
        if ln & 0xC0:
            raise ValueError("bad label")
        off += 1 + ln
    raise ValueError("name too long")


def parse_rrs(m, off, count):
    """[(type, rdata)] of count RRs from off, and the offset after."""
    out = []
    for _ in range(count):
        off = skip_name(m, off)
        rtype, _cls, _ttl, rdlen = struct.unpack_from("!HHIH", m, off)
        off += 10
        if off + rdlen > len(m):
            raise ValueError("rdata past the end")
        out.append((rtype, m[off:off + rdlen]))
        off += rdlen
    return out, off


def ede_of(opt_rdata):
    """(code, text) of the first EDE option in OPT rdata, or None."""
    off = 0
    while off + 4 <= len(opt_rdata):
        code, ln = struct.unpack_from("!HH", opt_rdata, off)
        data = opt_rdata[off + 4:off + 4 + ln]
        if code == 15 and len(data) >= 2:
            return struct.unpack("!H", data[:2])[0], bytes(data[2:])
        off += 4 + ln
    return None


# ---------------------------------------------------------------- faults

# What an upstream does next, every 0.15-0.4 s: drawn from a deck with
# this many cards of each, shuffled by the seeded RNG, so every fault
# comes up at least once per deck (about 9 s).
EVENTS = [
    (8, "normal"), (2, "reorder"), (1, "close_after"), (1, "rst_after"),
    (1, "close_mid"), (1, "wrong_id"), (1, "wrong_qname"), (1, "qr0"),
    (1, "garbage"), (1, "dup"), (1, "silent"), (1, "refuse"),
    (1, "close_all"), (1, "stall"), (1, "reset"), (1, "blackhole"),
    (1, "rcode_all"),
]


class Chaos:
    """Drives one FakeUpstream through random faults until stopped."""

    def __init__(self, fu, seed, label):
        self.fu, self.label = fu, label
        self.rng = random.Random(seed)
        fu.set(seed=seed + "/fakeup", jitter_ms=300)
        self.stop_evt = threading.Event()
        self.counts = {}
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.deck = []

    def start(self):
        self.thread.start()

    def _pick(self):
        if not self.deck:
            self.deck = [ev for w, ev in EVENTS for _ in range(w)]
            self.rng.shuffle(self.deck)
        return self.deck.pop()

    def _run(self):
        try:
            while not self.stop_evt.wait(self.rng.uniform(0.15, 0.4)):
                self._event(self._pick())
        except Exception as e:       # reported as a failed check
            self.error = repr(e)

    def _event(self, ev):
        fu, rng = self.fu, self.rng
        self.counts[ev] = self.counts.get(ev, 0) + 1
        if ev == "normal":
            fu.set(mode="normal", budget=None)
        elif ev == "reorder":
            fu.set(mode="reorder", n=rng.randint(2, 6),
                   budget=rng.randint(1, 3))
        elif ev in ("close_after", "rst_after"):
            # Held until it happened (or 4 s), so that it surely does.
            key = "rsts" if ev == "rst_after" else "fins"
            was = fu.stats()[key]
            fu.set(mode=ev, n=rng.randint(1, 12), budget=1)
            for _ in range(200):
                if fu.stats()[key] > was or self.stop_evt.wait(0.02):
                    break
        elif ev in ("close_mid", "garbage", "stall", "reset"):
            fu.set(mode=ev, budget=1)
        elif ev in ("wrong_id", "wrong_qname", "qr0", "dup"):
            fu.set(mode=ev, budget=rng.randint(1, 5))
        elif ev == "silent":
            fu.set(mode="silent", budget=None)
            self.stop_evt.wait(rng.uniform(0.2, 1.2))
            fu.set(mode="normal")
        elif ev == "blackhole":
            # Connected, answering nothing, for longer than a deadline.
            fu.set(mode="silent", budget=None)
            self.stop_evt.wait(rng.uniform(1.5, 3.0))
            fu.set(mode="normal")
        elif ev == "rcode_all":
            # Not SERVFAIL: passed on when both fail, it would look like
            # one of dnsfwd's own to a client without EDNS, and the
            # counts could not be squared (the scenarios cover it).
            fu.set(mode="rcode_all", budget=None,
                   rcode=rng.choice(("REFUSED", "NOTIMP")))
            self.stop_evt.wait(rng.uniform(0.5, 2.0))
            fu.set(mode="normal")
        elif ev == "refuse":
            fu.refuse()
            self.stop_evt.wait(rng.uniform(0.3, 2.0))
            fu.unrefuse()
        elif ev == "close_all":
            fu.close_all(graceful=rng.random() < 0.5, wait=False)

    def stop(self):
        self.stop_evt.set()
        self.thread.join(10)
        self.fu.set(mode="normal", budget=None, jitter_ms=0)
        self.fu.unrefuse()
        self.fu.close_all(graceful=True)   # free stalled handshakes


# ---------------------------------------------------------------- clients

class Client:
    """One UDP socket or TCP connection and its outstanding queries."""

    def __init__(self, idx, kind, port, window):
        self.idx, self.kind, self.window = idx, kind, window
        self.out = set()               # query indices awaiting a reply
        self.inbuf = b""
        self.sendbuf = b""
        self.closed = None
        if kind == "udp":
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 18)
            s.connect(("127.0.0.1", port))
        else:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        self.sock = s
        self.inode = os.fstat(s.fileno()).st_ino
        self.lport = s.getsockname()[1]


class Phase:
    """One dnsfwd, two chaotic upstreams, n queries; results for checks."""

    def __init__(self, name, n, cache, seed, workdir, duration):
        self.name, self.n, self.cache = name, n, cache
        self.nbursts = min(int(duration / BURST_EVERY), n // (4 * BURST))
        self.rate = (n - BURST * self.nbursts) / float(duration)
        self.seed = seed
        self.rng = random.Random("%d/%s" % (seed, name))
        self.t = it.T("soak-" + name, workdir)
        self.checks = []               # (name, ok, detail)
        self.asan = is_asan(it.DNSFWD)
        self.bad, self.badcount = {}, {}
        self.chaos = []

    # -- the plan: names, IDs, EDNS --
    def plan(self):
        rng, n = self.rng, self.n
        self.ids = rng.sample(range(65536), n)
        self.edns = [rng.random() < 0.875 for _ in range(n)]
        self.names = [None] * n        # filled when a client takes it
        self.qsec = [None] * n
        self.client = [None] * n
        self.t_sent = [0.0] * n
        self.nrep = [0] * n
        self.lat = [None] * n
        self.outcome = [None] * n      # first reply: "A", "SF-overload"...
        self.byid = {qid: i for i, qid in enumerate(self.ids)}
        if self.cache:
            # Runs of 4 consecutive queries (which go to different
            # clients) share a name; 1 in 5 repeats an earlier name.
            self.shared = []

    def name_for(self, i):
        if not self.cache:
            c = self.client[i]
            return "%s-%06d.%s%d.x%d.soak." % (
                self.name, i, c.kind[0], c.idx, self.seed % 100000)
        if self.shared and self.rng.random() < 0.2:
            # Half of them recent (hits), half from any time (evicted).
            pool = self.shared[-150:] if self.rng.random() < .5 else \
                self.shared
            base = self.rng.choice(pool)
        else:
            base = "shared-%d.x%d.soak." % (i // 4, self.seed % 100000)
            if not self.shared or self.shared[-1] != base:
                self.shared.append(base)
        return "".join(ch.upper() if ch.isalpha() and self.rng.random() < .5
                       else ch for ch in base)

    # -- running --
    def run(self):
        t = self.t
        self.fus = [t.fakeup(), t.fakeup()]
        args = []
        for k, fu in enumerate(self.fus):
            args += it.tls_up(fu, ca=(k == 0))
        args += ["--timeout", str(TIMEOUT_MS), "--connections",
                 str(CONNECTIONS), "--max-inflight", str(MAX_INFLIGHT),
                 "--idle-timeout", "1",
                 "--cache-size", str(CACHE_SIZE if self.cache else 0)]
        if self.cache:
            # Its warm connections, dialled again through every fault.
            args.append("--prewarm")
        env = None
        if self.asan:
            # A bounded quarantine, so that VmRSS has a bound to meet.
            env = {"ASAN_OPTIONS": ":".join(x for x in (
                os.environ.get("ASAN_OPTIONS"),
                "quarantine_size_mb=%d" % ASAN_QUARANTINE_MB) if x)}
        self.d = d = t.dnsfwd(*args, env=env)
        pid = d.proc.pid
        self.fds_idle = fd_count(pid)
        self.rss_start = rss_kb(pid)
        # Warm-up: each upstream answers a few (the second alone).
        for k in range(4):
            it.expect_a(it.ask_udp(d.port, "warm%d.%s.soak." % (k, self.name),
                                   timeout=3), fakeup.GOOD_ADDR, "warm-up")
        self.fus[0].refuse()
        for k in range(4):
            it.expect_a(it.ask_udp(d.port, "warm-b%d.%s.soak." %
                                   (k, self.name), timeout=3),
                        fakeup.GOOD_ADDR, "warm-up of the second upstream")
        self.fus[0].unrefuse()
        self.rss_idle = rss_kb(pid)
        self.before = d.stats()
        self.listen_drops0 = udp_drops_port(d.port)
        self.plan()
        self.chaos = [Chaos(fu, "%d/%s/u%d" % (self.seed, self.name, k),
                            "u%d" % k)
                      for k, fu in enumerate(self.fus)]
        for c in self.chaos:
            c.start()
        t0 = time.monotonic()
        try:
            self.drive(d.port)
        finally:
            for c in self.chaos:
                c.stop()
        self.traffic_s = time.monotonic() - t0
        self.rss_peak = rss_kb(pid)
        self.after_checks(t0)

    def drive(self, port):
        self.sel = sel = selectors.DefaultSelector()
        clients = [Client(k, "udp", port, UDP_WINDOW)
                   for k in range(UDP_SOCKS)]
        clients += [Client(k, "tcp", port, TCP_WINDOW)
                    for k in range(TCP_CONNS)]
        self.clients = clients
        for c in clients:
            sel.register(c.sock, selectors.EVENT_READ, c)
        self.late = 0
        self.tcp_closed = []
        wait_s = TIMEOUT_MS / 1000.0 + 4.0
        nxt = 0
        rr = 0
        bursts_done = 0
        tcps = [c for c in clients if c.kind == "tcp"]
        t0 = time.monotonic()
        hard = t0 + 60 + 2 * self.n / self.rate
        last_sweep = 0.0
        try:
            while time.monotonic() < hard:
                now = time.monotonic()
                # Fill every window, round robin so runs spread out.
                # Paced: the phase takes about its duration.
                el = now - t0
                upto = min(self.n, 1 + int(el * self.rate) + BURST * min(
                    self.nbursts, int(el / BURST_EVERY)))
                burst = min(self.nbursts, int(el / BURST_EVERY))
                if burst > bursts_done:
                    bursts_done = burst
                    for k in range(BURST):
                        c = tcps[k % len(tcps)]
                        if nxt < self.n and c.closed is None and \
                                len(c.out) < TCP_BURST_WINDOW:
                            self.send(c, nxt, now)
                            nxt += 1
                if nxt < upto:
                    for j in range(len(clients)):
                        c = clients[(rr + j) % len(clients)]
                        while (nxt < upto and len(c.out) < c.window and
                               c.closed is None):
                            self.send(c, nxt, now)
                            nxt += 1
                    rr = (rr + 7) % len(clients)
                for c in tcps:
                    if c.sendbuf:
                        self.tcp_flush(c)
                for key, _ in sel.select(0.01):
                    self.readable(key.data, time.monotonic())
                now = time.monotonic()
                if now - last_sweep > 0.1:
                    last_sweep = now
                    for c in clients:
                        for i in [i for i in c.out
                                  if now - self.t_sent[i] > wait_s]:
                            c.out.discard(i)   # given up on: maybe late
                if nxt >= self.n and not any(c.out for c in clients):
                    break
            # Stragglers: anything arriving in the next 0.5 s still counts.
            end = time.monotonic() + 0.5
            while time.monotonic() < end:
                for key, _ in sel.select(0.05):
                    self.readable(key.data, time.monotonic())
            self.sent = nxt
            self.udp_client_drops = sum(udp_drops_inode(c.inode)
                                        for c in clients if c.kind == "udp")
        finally:
            for c in clients:
                try:
                    sel.unregister(c.sock)
                except (KeyError, ValueError):
                    pass
                c.sock.close()
            sel.close()

    def send(self, c, i, now):
        self.client[i] = c
        name = self.name_for(i)
        self.names[i] = name
        qsec = name_wire(name) + b"\x00\x01\x00\x01"
        self.qsec[i] = qsec
        wire = struct.pack("!HHHHHH", self.ids[i], 0x0100, 1, 0, 0,
                           1 if self.edns[i] else 0) + qsec
        if self.edns[i]:
            wire += EDNS_OPT
        self.t_sent[i] = now
        c.out.add(i)
        if c.kind == "udp":
            try:
                c.sock.send(wire)
            except OSError as e:
                self.note_bad("udp send", "%s: %r" % (name, e))
        else:
            c.sendbuf += struct.pack("!H", len(wire)) + wire

    def tcp_flush(self, c):
        try:
            n = c.sock.send(c.sendbuf)
            c.sendbuf = c.sendbuf[n:]
        except BlockingIOError:
            pass
        except OSError as e:
            self.tcp_lost(c, "send: %r" % e)

    def tcp_lost(self, c, why):
        if c.closed is None:
            c.closed = why
            self.tcp_closed.append("tcp%d: %s with %d outstanding" % (
                c.idx, why, len(c.out)))
            c.out.clear()

    def readable(self, c, now):
        if c.kind == "udp":
            for _ in range(64):
                try:
                    data = c.sock.recv(65535)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as e:
                    self.note_bad("udp recv", repr(e))
                    return
                self.reply(c, data, now)
            return
        try:
            data = c.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            data = None
            self.tcp_lost(c, "recv: %r" % e)
        if not data:
            if data is not None:
                self.tcp_lost(c, "EOF from dnsfwd")
            try:
                self.sel.unregister(c.sock)
            except (KeyError, ValueError):
                pass
            return
        buf = c.inbuf + data
        off = 0
        while len(buf) - off >= 2:
            ln = struct.unpack_from("!H", buf, off)[0]
            if len(buf) - off - 2 < ln:
                break
            self.reply(c, buf[off + 2:off + 2 + ln], now)
            off += 2 + ln
        c.inbuf = buf[off:]

    def note_bad(self, kind, example):
        lst = self.bad.setdefault(kind, [])
        if len(lst) < 5:
            lst.append(example)
        self.badcount[kind] = self.badcount.get(kind, 0) + 1

    def reply(self, c, m, now):
        if len(m) < 12:
            self.note_bad("short reply", repr(m))
            return
        qid, flags, qd, an, ns, ar = struct.unpack_from("!HHHHHH", m, 0)
        i = self.byid.get(qid)
        if i is None or self.client[i] is None:
            self.note_bad("unknown ID", "id %d on %s%d" % (qid, c.kind, c.idx))
            return
        if self.client[i] is not c:
            o = self.client[i]
            self.note_bad("wrong client", "%s asked on %s%d, reply on %s%d" %
                          (self.names[i], o.kind, o.idx, c.kind, c.idx))
            return
        self.nrep[i] += 1
        if self.nrep[i] > 1:
            self.note_bad("duplicate", "%s (%s%d)" % (self.names[i], c.kind,
                                                     c.idx))
            return
        self.lat[i] = now - self.t_sent[i]
        if i in c.out:
            c.out.discard(i)
        else:
            self.late += 1
        qs = self.qsec[i]
        if qd != 1 or m[12:12 + len(qs)] != qs:
            self.note_bad("wrong question", "%s: got %r" % (
                self.names[i], m[12:12 + len(qs)]))
            self.outcome[i] = "bad"
            return
        if not (flags & 0x8000) or flags & 0x7800:
            self.note_bad("not a response", "%s flags %04x" % (
                self.names[i], flags))
            self.outcome[i] = "bad"
            return
        rcode = flags & 0xF
        try:
            rrs, end = parse_rrs(m, 12 + len(qs), an + ns + ar)
        except (ValueError, struct.error, IndexError) as e:
            self.note_bad("unparsable", "%s: %s" % (self.names[i], e))
            self.outcome[i] = "bad"
            return
        if end != len(m):
            self.note_bad("trailing bytes", self.names[i])
        answers = rrs[:an]
        opts = [rd for rt, rd in rrs[an + ns:] if rt == 41]
        if BAD in m:
            self.note_bad("bad upstream data", self.names[i])
            self.outcome[i] = "bad"
            return
        if bool(opts) != self.edns[i] or len(opts) > 1:
            self.note_bad("OPT", "%s: query OPT %s, answer %d OPT" % (
                self.names[i], self.edns[i], len(opts)))
        if rcode == 0:
            if [(rt, rd) for rt, rd in answers] != [(1, GOOD)]:
                self.note_bad("wrong answer", "%s: %r" % (self.names[i],
                                                         answers))
                self.outcome[i] = "bad"
                return
            self.outcome[i] = "A"
        elif rcode == 2:
            ede = ede_of(opts[0]) if opts else None
            if not self.edns[i]:
                why = "noedns"
            elif ede is None:
                why = "no-EDE"
            elif ede[0] == 0 and ede[1] == OVERLOAD_TEXT:
                why = "overload"
            elif ede[0] == 22:
                why = "timeout"
            elif ede[0] == 23:
                why = "unreachable"
            else:
                why = "EDE%d" % ede[0]
            self.outcome[i] = "SF-" + why
        elif rcode in (4, 5) and not opts or rcode in (4, 5) and \
                ede_of(opts[0]) is None:
            # Every upstream said so (both in rcode_all at once): theirs.
            self.outcome[i] = "RC-%d" % rcode
        else:
            self.note_bad("rcode", "%s: rcode %d" % (self.names[i], rcode))
            self.outcome[i] = "bad"

    # -- after the traffic --
    def check(self, name, ok, detail):
        self.checks.append(("%s/%s" % (self.name, name), bool(ok), detail))

    def after_checks(self, t0):
        d, pid = self.d, self.d.proc.pid
        # Drained: inflight and pending back to 0.
        st = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            st = d.stats()
            if st.get("inflight") == 0 and st.get("pending") == 0:
                break
            time.sleep(0.2)
        self.check("drained", st.get("inflight") == 0 and
                   st.get("pending") == 0,
                   "inflight=%s pending=%s 10 s after the traffic" % (
                       st.get("inflight"), st.get("pending")))
        # Descriptors back to idle (upstreams close after 1 s idle).  With
        # --prewarm each upstream keeps one, as at start, unless the chaos
        # left it in a backoff longer than the wait: then one fewer.
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and fd_count(pid) != self.fds_idle:
            time.sleep(0.1)
        fds = fd_count(pid)
        self.fds_end = fds
        self.check("fds", fds <= self.fds_idle if self.cache else
                   fds == self.fds_idle,
                   "%d descriptors, %d before any traffic: %s" % (
                       fds, self.fds_idle, fd_links(pid)))
        # Memory.
        self.rss_end = rss_kb(pid)
        slack = 1024 + (ASAN_QUARANTINE_MB * 1024 + 4096 if self.asan
                        else 0)
        pools = 2 * 2 * CONNECTIONS * MAX_INFLIGHT * SLOT_BYTES // 1024
        cache = CACHE_SIZE * ENTRY_BYTES // 1024 if self.cache else 0
        allow = self.rss_idle + cache + pools + slack
        self.rss_allow = allow
        self.check("rss", self.rss_end <= allow,
                   "VmRSS %d kB, idle %d kB, allowed %d kB (idle + cache "
                   "%d kB + pools %d kB + %d kB)" % (
                       self.rss_end, self.rss_idle, allow, cache, pools,
                       slack))
        after = d.stats()
        self.after = after
        self.listen_drops = udp_drops_port(d.port) - self.listen_drops0
        self.replies_check()
        self.routing_check()
        self.stats_check()
        self.faults_check()
        # Still answers, once the upstreams' backoff (at most 30 s, and
        # SERVFAIL meanwhile) lets it dial them again.
        t1 = time.monotonic()
        r = None
        for k in range(200):
            r = it.ask_udp(d.port, "final%d-%s.soak." % (k, self.name),
                           timeout=3)
            if r.addrs() == [fakeup.GOOD_ADDR] or \
                    time.monotonic() - t1 > 35:
                break
            time.sleep(0.25)
        self.alive_s = time.monotonic() - t1
        try:
            it.expect_a(r, fakeup.GOOD_ADDR, "udp, %.1f s after the soak" %
                        self.alive_s)
            it.expect_a(it.ask_tcp(d.port, "final-tcp-%s.soak." % self.name,
                                   timeout=3), fakeup.GOOD_ADDR, "tcp")
            self.check("alive", True, "")
        except it.Fail as e:
            self.check("alive", False, str(e))
        # Exit.
        try:
            d.stop_and_check()
            d.sanitizer_check()
            self.check("exit", True, "")
        except it.Fail as e:
            self.check("exit", False, str(e))

    def counts(self):
        out = {}
        for o in self.outcome[:self.sent]:
            o = o or "none"
            out[o] = out.get(o, 0) + 1
        return out

    def replies_check(self):
        n = self.sent
        none = [i for i in range(n) if self.nrep[i] == 0]
        none_udp = [i for i in none if self.client[i].kind == "udp"]
        none_tcp = [i for i in none if self.client[i].kind == "tcp"]
        dups = sum(1 for i in range(n) if self.nrep[i] > 1)
        lats = sorted(x for x in self.lat[:n] if x is not None)
        self.lats = lats
        limit = TIMEOUT_MS / 1000.0 + (3.0 if self.asan else 1.5)
        slow = [x for x in lats if x > limit]
        drops = self.udp_client_drops + self.listen_drops
        why = []
        if n != self.n:
            why.append("only %d of %d queries sent" % (n, self.n))
        if none_tcp:
            why.append("%d TCP queries unanswered (%s): %s" % (
                len(none_tcp), "; ".join(self.tcp_closed) or
                "connections open", [self.names[i] for i in none_tcp[:3]]))
        if len(none_udp) > drops:
            why.append("%d UDP queries unanswered, but the kernel dropped "
                       "only %d datagrams (dnsfwd's socket %d, clients' %d):"
                       " e.g. %s" % (len(none_udp), drops, self.listen_drops,
                                     self.udp_client_drops,
                                     [self.names[i] for i in none_udp[:3]]))
        if len(none_udp) > max(1, n // 200):
            why.append("%d UDP queries or replies lost to full socket "
                       "buffers, over 0.5%%" % len(none_udp))
        if dups:
            why.append("%d queries got more than one reply: %s" % (
                dups, self.bad.get("duplicate")))
        if slow:
            why.append("%d replies after more than %.1f s (max %.2f s)" % (
                len(slow), limit, slow[-1]))
        self.lost_udp = len(none_udp)
        self.check("replies", not why, "; ".join(why))

    def routing_check(self):
        kinds = ("unknown ID", "wrong client", "wrong question",
                 "not a response", "unparsable", "bad upstream data",
                 "wrong answer", "rcode", "OPT", "trailing bytes",
                 "short reply", "udp send", "udp recv")
        bc = self.badcount
        why = ["%d %s (e.g. %s)" % (bc[k], k, self.bad[k][:2])
               for k in kinds if bc.get(k)]
        self.check("routing", not why, "; ".join(why))

    def stats_check(self):
        b, a = self.before, self.after
        dl = {k: a.get(k, 0) - b.get(k, 0) for k in a}
        self.delta = dl
        cnt = self.counts()
        # The upstreams' own REFUSED or NOTIMP are answers to dnsfwd.
        seen_a = cnt.get("A", 0) + sum(v for k, v in cnt.items()
                                       if k and k.startswith("RC-"))
        seen_sf = sum(v for k, v in cnt.items() if k and k.startswith("SF-"))
        seen_over = cnt.get("SF-overload", 0)
        unclassified = cnt.get("SF-noedns", 0) + cnt.get("SF-no-EDE", 0)
        why = []
        if dl.get("queries") != self.sent - self.listen_drops:
            why.append("queries rose by %s for %d sent (%d dropped at "
                       "dnsfwd's socket)" % (dl.get("queries"), self.sent,
                                             self.listen_drops))
        if dl.get("answers", 0) + dl.get("servfails", 0) != dl.get("queries"):
            why.append("answers %d + servfails %d != queries %d" % (
                dl.get("answers", 0), dl.get("servfails", 0),
                dl.get("queries", 0)))
        miss_a = dl.get("answers", 0) - seen_a
        miss_sf = dl.get("servfails", 0) - seen_sf
        if miss_a < 0 or miss_sf < 0 or \
                miss_a + miss_sf != self.lost_udp - self.listen_drops:
            why.append("clients saw %d answers and %d SERVFAILs, dnsfwd "
                       "counted %d and %d; %d UDP replies lost (%d at "
                       "dnsfwd's socket)" % (
                           seen_a, seen_sf, dl.get("answers", 0),
                           dl.get("servfails", 0), self.lost_udp,
                           self.listen_drops))
        ov = dl.get("overload", 0)
        if not seen_over <= ov <= seen_over + unclassified + self.lost_udp:
            why.append("overload rose by %d; clients saw %d overload "
                       "SERVFAILs (+%d without EDE, %d lost)" % (
                           ov, seen_over, unclassified, self.lost_udp))
        if ov > dl.get("servfails", 0):
            why.append("overload %d > servfails %d" % (
                ov, dl.get("servfails", 0)))
        if self.cache:
            hm = dl.get("cache_hits", 0) + dl.get("cache_misses", 0)
            if hm != dl.get("queries"):
                why.append("cache_hits + cache_misses = %d, queries %s" % (
                    hm, dl.get("queries")))
            if a.get("cache_entries", 0) > CACHE_SIZE:
                why.append("cache_entries %d > --cache-size %d" % (
                    a.get("cache_entries", 0), CACHE_SIZE))
            if dl.get("cache_hits", 0) == 0:
                why.append("no cache hit")
            if len(set(x.lower() for x in self.names[:self.sent])) > \
                    CACHE_SIZE and dl.get("cache_evictions", 0) == 0:
                why.append("no eviction, with more names than entries")
        elif dl.get("cache_hits", 0) or a.get("cache_entries", 0):
            why.append("cache hits or entries with --cache-size 0: %s" % a)
        self.check("stats", not why, "; ".join(why))

    def faults_check(self):
        dl = self.delta
        why = [c.label + " chaos: " + c.error for c in self.chaos if c.error]
        if dl.get("bad_replies", 0) == 0:
            why.append("no bad reply counted")
        if dl.get("reconnects", 0) < 4:
            why.append("only %d reconnects" % dl.get("reconnects", 0))
        if not any(c.fu.stats()["rsts_held"] for c in self.chaos):
            why.append("no upstream reset a connection with queries held")
        if not self.cache and self.nbursts and not dl.get("overload"):
            why.append("no overload, though bursts went past the table")
        if not any(c.fu.stats()["fins_held"] for c in self.chaos):
            why.append("no upstream closed a connection with queries held")
        if not any(c.counts.get("refuse") or c.counts.get("silent")
                   for c in self.chaos):
            why.append("no upstream went away for a while")
        if not any(c.counts.get("blackhole") for c in self.chaos):
            why.append("no upstream blackholed past a deadline")
        if not any(c.counts.get("rcode_all") for c in self.chaos):
            why.append("no upstream refused or failed everything")
        self.check("faults", not why, "; ".join(why))

    def summary(self):
        cnt = self.counts()
        dl = self.delta
        lats = self.lats or [0]

        def pct(p):
            return lats[min(len(lats) - 1, int(p * len(lats)))]
        rows = [
            ("queries sent", "%d (%d UDP / %d TCP), %.1f s, %.0f q/s" % (
                self.sent, sum(1 for c in self.client[:self.sent]
                               if c.kind == "udp"),
                sum(1 for c in self.client[:self.sent] if c.kind == "tcp"),
                self.traffic_s, self.sent / max(self.traffic_s, 1e-6))),
            ("answers (A)", cnt.get("A", 0)),
            ("SERVFAIL", ", ".join("%s %d" % (k[3:], v) for k, v in
                                   sorted(cnt.items())
                                   if k and k.startswith("SF-")) or "0"),
            ("no reply", "%d (UDP drops: dnsfwd socket %d, clients %d)" % (
                sum(1 for x in self.nrep[:self.sent] if x == 0),
                self.listen_drops, self.udp_client_drops)),
            ("late (> client wait)", self.late),
            ("latency p50/p99/max", "%.3f / %.3f / %.3f s" % (
                pct(.5), pct(.99), lats[-1])),
            ("dnsfwd deltas", " ".join("%s=%d" % (k, dl.get(k, 0)) for k in (
                "queries", "answers", "servfails", "overload",
                "bad_replies", "reconnects", "cache_hits", "cache_misses",
                "cache_evictions"))),
            ("dnsfwd end", "inflight=%s pending=%s cache_entries=%s" % (
                self.after.get("inflight"), self.after.get("pending"),
                self.after.get("cache_entries"))),
            ("fds", "idle %d, end %d" % (self.fds_idle, self.fds_end)),
            ("answering again", "%.1f s after the quiet period" %
             getattr(self, "alive_s", -1)),
            ("VmRSS kB", "start %d, idle %d, after traffic %d, end %d, "
             "allowed %d" % (self.rss_start, self.rss_idle, self.rss_peak,
                             self.rss_end, self.rss_allow)),
        ]
        for c in self.chaos:
            st = c.fu.stats()
            rows.append(("faults " + c.label, " ".join(
                "%s=%d" % kv for kv in sorted(c.counts.items())) +
                " | conns=%d closed with queries held: FIN %d RST %d; "
                "dials reset %d; queries %d" % (
                    st["conns"], st["fins_held"], st["rsts_held"],
                    st["resets"], st["queries"])))
        print("== phase %s (%s)" % (self.name, "cache %d" % CACHE_SIZE
                                    if self.cache else "no cache"))
        for k, v in rows:
            print("  %-22s %s" % (k, v))


# ---------------------------------------------------------------- /proc

def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def fd_links(pid):
    out = []
    for f in os.listdir("/proc/%d/fd" % pid):
        try:
            out.append(os.readlink("/proc/%d/fd/%s" % (pid, f)))
        except OSError:
            pass
    return sorted(out)


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for ln in f:
            if ln.startswith("VmRSS:"):
                return int(ln.split()[1])
    return 0


def _udp_rows():
    rows = []
    for path in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(path) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for ln in lines:
            p = ln.split()
            if len(p) >= 13:
                rows.append((int(p[1].rsplit(":", 1)[1], 16), int(p[9]),
                             int(p[12])))
    return rows


def udp_drops_inode(inode):
    return sum(dr for _, ino, dr in _udp_rows() if ino == inode)


def udp_drops_port(port):
    return sum(dr for lp, _, dr in _udp_rows() if lp == port)


def is_asan(path):
    try:
        with open(path, "rb") as f:
            return b"__asan_init" in f.read()
    except OSError:
        return False


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description="dnsfwd fault-injection soak")
    ap.add_argument("--dnsfwd", default=os.environ.get("DNSFWD", "./dnsfwd"))
    ap.add_argument("--short", action="store_true",
                    help="4,000 queries instead of 40,000")
    ap.add_argument("--queries", type=int, default=None,
                    help="queries in all (two phases)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--duration", type=float, default=None,
                    help="seconds of traffic per phase (default 12 with "
                    "--short, else 40); queries are paced to fill it")
    ap.add_argument("--keep", action="store_true",
                    help="keep the work directory")
    a = ap.parse_args()
    n = a.queries or (4000 if a.short else 40000)
    if not 2 <= n <= 120000:
        ap.error("--queries: 2 to 120,000")
    duration = a.duration or (12.0 if a.short else 40.0)
    if not 0.5 <= duration <= 600:
        ap.error("--duration: 0.5 to 600 s")
    seed = a.seed if a.seed is not None else random.SystemRandom().randrange(
        1, 1 << 31)
    it.DNSFWD = os.path.abspath(a.dnsfwd)
    print("# soak: %s, %d queries, seed %d (replay: --seed %d%s)" % (
        it.DNSFWD, n, seed, seed, " --short" if a.short and not a.queries
        else " --queries %d" % n), flush=True)
    if not os.access(it.DNSFWD, os.X_OK):
        print("FAIL setup: %s is not an executable" % it.DNSFWD)
        print("0 passed, 1 failed")
        return 1
    it._raise_nofile(4096)
    workdir = tempfile.mkdtemp(prefix="dnsfwd-soak-")
    it.PKI = os.path.join(workdir, "pki")
    subprocess.run(["sh", os.path.join(HERE, "mkcerts.sh"), it.PKI],
                   check=True)
    checks = []
    t0 = time.monotonic()
    try:
        for k, (name, cache) in enumerate((("nocache", False),
                                           ("cache", True))):
            ph = Phase(name, n // 2 + (n % 2 if k == 0 else 0), cache,
                       seed, workdir, duration)
            err = None
            try:
                ph.run()
            except it.Fail as e:
                err = str(e)
            except Exception:
                err = "test error: %s" % traceback.format_exc()
            try:
                errs = ph.t.cleanup(failed=bool(err))
            except Exception as e:
                errs = ["cleanup error: %r" % e]
            if err or errs:
                ph.check("run", False, "; ".join(([err] if err else []) +
                                                 errs))
            if hasattr(ph, "delta"):
                try:
                    ph.summary()
                except Exception:
                    ph.check("summary", False, traceback.format_exc())
            checks += ph.checks
    finally:
        with it.ALL_PROCS_LOCK:
            left = list(it.ALL_PROCS)
        for p in left:
            it.kill_pid(p)
    passed = failed = 0
    for name, ok, detail in checks:
        if ok:
            passed += 1
            print("ok %s" % name)
        else:
            failed += 1
            print("FAIL %s: %s" % (name, detail))
    print("# %.1fs, seed %d, work directory %s" % (
        time.monotonic() - t0, seed,
        workdir if (failed or a.keep) else "removed"))
    if not failed and not a.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

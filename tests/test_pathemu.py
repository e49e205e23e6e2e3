#!/usr/bin/python3
"""Checks of the path emulator, bench/pathemu, through tests/pathemu.py.

    /usr/bin/python3 tests/test_pathemu.py [-k SUBSTRING]
    /usr/bin/python3 tests/test_pathemu.py --rate [--senders N] [--pps R]
        [--delay-ms D]

Run from the top of the tree after `make bench/pathemu`.  The client
sends ICMP echo requests from namespace a through the path; b's kernel
answers them, and the replies' arrival times are the kernel's, so what is
measured is the path, not the scheduling of a user-space echo server or
client.  The path's counters are read back too.  The tolerances are wide
because make check shares two busy cores:
- RTT: median within +-3 ms of what was asked (30 ms), and no probe early
  (pathemu's own count of how late it sent them is printed, not checked);
- loss: each direction's counted loss within 4.5 standard deviations of
  the binomial (p = 0.1, n = 2000: +-0.03), and the round trips the client
  gets back within 4.5 of theirs (0.81 +-0.04);
- jitter: no probe early, 95 % within the range asked (+5 ms) in one of
  three tries (a stall of pathemu under load holds many back), a spread
  at all, and, with order kept, not one probe overtaking another.
Every check is a function below whose docstring is the claim it checks.
Prints "ok NAME", "FAIL NAME: reason" or "skip NAME: reason" per check,
then "N passed, N failed" (and ", N skipped"); exits 1 if any failed.
Every check is skipped, and counted, when not root, without /dev/net/tun
or without bench/pathemu.  --rate instead floods one direction from N
sender processes (at R packets/s in all, or flat out) and prints what
passed, what the kernel dropped ahead of pathemu, and pathemu's CPU per
packet (not part of make check).
"""
import argparse
import math
import os
import random
import select
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import checks            # noqa: E402
import pathemu           # noqa: E402
from checks import Skip, check  # noqa: E402

PORT = 7007
PROBE = struct.Struct("!IQ")            # sequence number, send time (ns)
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)

# Sends 64-octet UDP datagrams to argv[1]:argv[2] for argv[3] seconds,
# at argv[4] a second in bursts of 100 (0: as fast as it can); prints how
# many the kernel took.
FLOOD = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((sys.argv[1], int(sys.argv[2])))
secs, pps, b = float(sys.argv[3]), float(sys.argv[4]), b"x" * 64
t0, n, bursts = time.monotonic(), 0, 0
while time.monotonic() < t0 + secs:
    if pps:
        time.sleep(max(0, t0 + bursts * 100 / pps - time.monotonic()))
    bursts += 1
    for _ in range(100):
        try:
            s.send(b)
            n += 1
        except OSError:
            pass
print(n, flush=True)
"""


def icmp_checksum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff)
    s += s >> 16
    return ~s & 0xffff


class Rig:
    """A link with two paths and an ICMP echo client in a.  Namespace b's
    kernel answers the echoes, and the client takes each reply's arrival
    time from the kernel (SO_TIMESTAMPNS): no user-space server and no
    wait for the client to be scheduled adds to what is measured, only
    pathemu (and the time between reading the clock and sending)."""

    def __init__(self, **kw):
        self.link = pathemu.Link(paths=2, **kw)
        self.ident = os.getpid() & 0xffff
        try:
            self.sock = self.link.socket("a", type=socket.SOCK_RAW,
                                         proto=socket.IPPROTO_ICMP)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
            self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            self.sock.setblocking(False)
        except BaseException:
            self.link.close()
            raise

    def reset(self):
        for p in self.link.path:
            p.set(delay_ms=0, jitter_ms=0, loss=0, blackhole=0, order=1)
        self.drain()
        for p in self.link.path:
            p.clear()

    def drain(self):
        while True:
            try:
                self.sock.recv(2048)
            except BlockingIOError:
                return

    def close(self):
        self.sock.close()
        self.link.close()

    def _send(self, seq, dst):
        payload = PROBE.pack(seq, time.clock_gettime_ns(time.CLOCK_REALTIME))
        hdr = struct.pack("!BBHHH", 8, 0, 0, self.ident, seq & 0xffff)
        hdr = struct.pack("!BBHHH", 8, 0, icmp_checksum(hdr + payload),
                          self.ident, seq & 0xffff)
        self.sock.sendto(hdr + payload, (dst, 0))

    def probe(self, count, interval, grace=0.5, path=0, at=None):
        """Sends count echo requests every interval seconds to path's b
        address; calls at[1]() just before probe at[0].  Returns
        [(seq, rtt_ms)] in arrival order."""
        dst = self.link.path[path].b_addr
        got, sent, t0 = [], 0, time.monotonic()
        end = None
        while True:
            now = time.monotonic()
            if sent < count and now >= t0 + sent * interval:
                if at and sent == at[0]:
                    at[1]()
                self._send(sent, dst)
                sent += 1
                if sent == count:
                    end = time.monotonic() + grace
                continue
            if end is not None and (now >= end or len(got) == count):
                return got
            due = t0 + sent * interval if sent < count else end
            select.select([self.sock], [], [], max(0, due - now))
            self._receive(got)

    def _receive(self, got):
        while True:
            try:
                d, anc, _, _ = self.sock.recvmsg(2048, 64)
            except BlockingIOError:
                return
            ihl = (d[0] & 15) * 4
            if len(d) != ihl + 8 + PROBE.size or d[ihl] != 0 or \
                    struct.unpack("!H", d[ihl + 4:ihl + 6])[0] != self.ident:
                continue
            seq, ts = PROBE.unpack(d[ihl + 8:])
            rx = next((struct.unpack("qq", data[:16]) for lvl, typ, data
                       in anc if typ == SO_TIMESTAMPNS), None)
            rx_ns = rx[0] * 10**9 + rx[1] if rx else \
                time.clock_gettime_ns(time.CLOCK_REALTIME)
            got.append((seq, (rx_ns - ts) / 1e6))


def binomial_ok(k, n, p, sigmas=4.5):
    sd = math.sqrt(n * p * (1 - p))
    return abs(k - n * p) <= sigmas * sd, "%d of %d, expected %.0f +- %.0f" % (
        k, n, n * p, sigmas * sd)


def test_rtt(rig):
    """15 ms each way measures a 30 ms round trip: median within 3 ms, no
    probe back in less than 30 ms, every probe back."""
    rig.link.path[0].set(delay_ms=15)
    got = rig.probe(count=200, interval=0.005)
    rtts = [r for _, r in got]
    check(len(got) == 200, "%d of 200 probes back" % len(got))
    med = statistics.median(rtts)
    check(abs(med - 30) <= 3, "median RTT %.2f ms" % med)
    check(min(rtts) >= 29.95, "a probe back in %.2f ms" % min(rtts))
    st = rig.link.path[0].stats()
    late = (st["up_late_avg_us"] + st["down_late_avg_us"]) / 2
    return "median %.2f ms, min %.2f, max %.2f; pathemu late by %.0f us " \
        "on average, %d at most" % (med, min(rtts), max(rtts), late,
                                    max(st["up_late_max_us"],
                                        st["down_late_max_us"]))


def test_asymmetric(rig):
    """Each direction has its own delay: up 25 ms and down 5 ms make a
    30 ms round trip, and the other path stays undelayed."""
    rig.link.path[0].set(up_delay_ms=25, down_delay_ms=5)
    med = statistics.median(r for _, r in rig.probe(50, 0.005))
    check(abs(med - 30) <= 3, "median RTT %.2f ms" % med)
    med1 = statistics.median(r for _, r in rig.probe(50, 0.005, path=1))
    check(med1 < 3, "path 1 median RTT %.2f ms" % med1)
    return "path 0 %.2f ms, path 1 %.2f ms" % (med, med1)


def test_loss(rig):
    """loss=0.1 loses 10 % each way: each direction's counted loss and the
    round trips the client gets back are within their binomial bounds."""
    n = 2000
    rig.link.path[0].set(loss=0.1)
    got = rig.probe(count=n, interval=0.0005, grace=1)
    st = rig.link.path[0].stats()
    check(st["up_in"] == n, "up_in %d, sent %d" % (st["up_in"], n))
    ok, why = binomial_ok(st["up_lost"], n, 0.1)
    check(ok, "up lost " + why)
    ok, why = binomial_ok(st["down_lost"], st["down_in"], 0.1)
    check(ok, "down lost " + why)
    ok, why = binomial_ok(len(got), n, 0.81)
    check(ok, "round trips " + why)
    check(st["down_out"] == len(got), "down_out %d, received %d" % (
        st["down_out"], len(got)))
    return "up %.3f, down %.3f, round trips %.3f" % (
        st["up_lost"] / n, st["down_lost"] / st["down_in"], len(got) / n)


def p95(xs):
    return sorted(xs)[int(len(xs) * 0.95)]


def reorders(got):
    return sum(1 for a, b in zip(got, got[1:]) if b[0] < a[0])


def jitter_probes(rig, order_ok, tries=3):
    """Probes the jittered path 0 up to `tries` times; every try must have
    every probe back, none early, and pass order_ok.  The p95 bound is a
    matter of scheduling too: one 40 ms stall of pathemu on a loaded
    machine holds back 20 probes, 5 % of them.  So it must hold in one
    try, and the tries stop there.  A jitter range that is wrong fails
    every try."""
    for i in range(tries):
        got = rig.probe(count=400, interval=0.002)
        rtts = [r for _, r in got]
        check(len(got) == 400, "%d of 400 probes back" % len(got))
        order_ok(got)
        check(min(rtts) >= 9.95, "a probe back in %.2f ms" % min(rtts))
        if p95(rtts) <= 35:
            return got
    check(False, "RTT %.2f-%.2f ms, p95 %.2f in the last of %d tries" % (
        min(rtts), max(rtts), p95(rtts), tries))


def test_jitter_ordered(rig):
    """5 ms + 0-10 ms jitter each way, order kept: round trips spread over
    10-30 ms (none early, 95 % by 35 ms), and not one probe overtakes
    another."""
    rig.link.path[0].set(delay_ms=5, jitter_ms=10, order=1)
    got = jitter_probes(rig, lambda got: check(
        reorders(got) == 0, "%d probes overtaken" % reorders(got)))
    rtts = [r for _, r in got]
    check(statistics.pstdev(rtts) >= 1.5, "RTT sd %.2f ms: no jitter" %
          statistics.pstdev(rtts))
    return "RTT %.2f-%.2f ms, sd %.2f" % (min(rtts), max(rtts),
                                          statistics.pstdev(rtts))


def test_jitter_unordered(rig):
    """The same jitter with order=0 does reorder probes 2 ms apart, and
    they still come back within 10-30 ms (none early, 95 % by 35 ms)."""
    rig.link.path[0].set(delay_ms=5, jitter_ms=10, order=0)
    got = jitter_probes(rig, lambda got: check(
        reorders(got) > 10, "only %d probes overtaken" % reorders(got)))
    return "%d overtaken" % reorders(got)


def test_blackhole(rig):
    """blackhole=1 passes nothing, and counts it; blackhole=0 passes again;
    down_blackhole=1 alone lets the probes reach b but no reply back."""
    p = rig.link.path[0]
    p.set(blackhole=1)
    got = rig.probe(50, 0.002, grace=0.3)
    st = p.stats()
    check(not got, "%d probes passed the blackhole" % len(got))
    check(st["up_blackholed"] == 50 and st["up_out"] == 0, str(st))
    p.set(blackhole=0)
    got = rig.probe(50, 0.002, grace=2)
    check(len(got) == 50, "%d of 50 back after blackhole=0" % len(got))
    p.clear()
    p.set(down_blackhole=1)
    got = rig.probe(50, 0.002, grace=0.3)
    st = p.stats()
    check(not got and st["up_out"] == 50 and st["down_blackholed"] == 50,
          "%d back, %s" % (len(got), st))


def test_second_path_blackholed(rig):
    """Blackholing path 1 leaves path 0 untouched (two upstreams, each
    behind its own path)."""
    rig.link.path[1].set(blackhole=1)
    check(len(rig.probe(20, 0.002, grace=2, path=0)) == 20, "path 0 lost")
    check(not rig.probe(20, 0.002, grace=0.2, path=1), "path 1 passed")


def test_change_while_running(rig):
    """A delay set while probes flow applies from the next packet: 5 ms
    each way, then 25 ms, within one stream (medians within 3 ms)."""
    p = rig.link.path[0]
    p.set(delay_ms=5)
    got = rig.probe(300, 0.004, at=(150, lambda: p.set(delay_ms=25)))
    check(len(got) == 300, "%d of 300 back" % len(got))
    before = statistics.median(r for s, r in got if s < 145)
    after = statistics.median(r for s, r in got if s >= 155)
    check(abs(before - 10) <= 3 and abs(after - 50) <= 3,
          "medians %.2f and %.2f ms" % (before, after))
    return "%.2f -> %.2f ms" % (before, after)


def test_tcp_full_size(rig):
    """A 2 MB TCP transfer over 10 ms each way and 1 % loss each way
    arrives intact: full-size packets pass, checksums hold."""
    rig.link.path[0].set(delay_ms=10, loss=0.01)
    lsn = rig.link.socket("b", type=socket.SOCK_STREAM)
    lsn.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsn.bind((rig.link.path[0].b_addr, PORT))
    lsn.listen(1)
    lsn.settimeout(10)
    data = os.urandom(2 << 20)
    box = {}

    def serve():
        try:
            c, _ = lsn.accept()
            c.settimeout(30)
            buf = bytearray()
            while len(buf) < len(data):
                chunk = c.recv(65536)
                if not chunk:
                    break
                buf += chunk
            box["got"] = bytes(buf)
            c.close()
        except OSError as e:
            box["err"] = e

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    cli = rig.link.socket("a", type=socket.SOCK_STREAM)
    cli.settimeout(30)
    t0 = time.monotonic()
    cli.connect((rig.link.path[0].b_addr, PORT))
    cli.sendall(data)
    cli.close()
    th.join(40)
    lsn.close()
    check(box.get("got") == data, "transfer: %s" % (
        box.get("err") or "%d of %d octets" % (len(box.get("got", b"")),
                                                len(data))))
    st = rig.link.path[0].stats()
    check(st["up_oversize"] == 0 and st["up_err"] == 0, str(st))
    return "%.1f s, %d packets up, %d lost" % (time.monotonic() - t0,
                                               st["up_in"], st["up_lost"])


BAD = [
    ("", "empty command"),
    (" \t\n", "empty command"),
    ("frobnicate", "unknown command"),
    ("set", "needs"),
    ("set delay_ms", "KEY=VALUE"),
    ("set =5", "KEY=VALUE"),
    ("set delay_ms=", "bad value"),
    ("set delay_ms=abc", "bad value"),
    ("set delay_ms=-1", "bad value"),
    ("set delay_ms=nan", "bad value"),
    ("set delay_ms=inf", "bad value"),
    ("set delay_ms=1e999", "bad value"),
    ("set delay_ms=60001", "bad value"),
    ("set loss=1.5", "bad value"),
    ("set blackhole=2", "bad value"),
    ("set order=0.5", "bad value"),
    ("set sideways_delay_ms=5", "unknown setting"),
    ("set up_=5", "unknown setting"),
    ("set up_delay_ms=10 bogus=1", "unknown setting"),
    ("stats now", "no arguments"),
    ("set delay_ms=5\x00", "not printable"),
    ("\xff\xfe", "not printable"),
    ("set " + "x" * 600, "longer than"),
]


def test_control_errors(rig):
    """Bad control input gets an error reply naming the problem and
    changes nothing (not even the valid half of a command); 300 random
    messages each get a reply; pathemu keeps running; a fifth control
    connection is refused, not queued forever."""
    p = rig.link.path[0]
    p.set(delay_ms=2.5, up_loss=0.25)
    before = p.get()
    for line, want in BAD:
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
            s.settimeout(5)
            s.connect(p.sock)
            s.send(line.encode("latin-1"))
            reply = s.recv(4096).decode()
        check(reply.startswith("error:") and want in reply,
              "%r -> %r" % (line, reply))
    check(p.get() == before, "settings changed: %s" % p.get())
    check(before["up_delay_ms"] == 2.5 and before["up_loss"] == 0.25 and
          before["down_loss"] == 0, str(before))
    conns = []
    try:
        for _ in range(4):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            s.settimeout(5)
            s.connect(p.sock)
            s.send(b"get")
            s.recv(4096)
            conns.append(s)
        extra = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        conns.append(extra)
        extra.settimeout(5)
        extra.connect(p.sock)
        reply = extra.recv(4096).decode()
        check("too many" in reply, "fifth connection: %r" % reply)
    finally:
        for s in conns:
            s.close()
    fuzz_control(p)
    check(p.proc.poll() is None, "pathemu exited")
    rig.reset()
    check(len(rig.probe(5, 0.002, grace=2)) == 5, "probes lost")


def fuzz_control(p, rounds=300):
    """Random messages, half of them near-commands: each gets a reply."""
    rnd = random.Random(16)
    words = ["set", "get", "stats", "clear", "up_", "down_", "delay_ms",
             "jitter_ms", "loss", "blackhole", "order", "=", " ", "\t", "\n",
             "1", "-", ".", "e9", "0x", "nan", "%s", "%n"]
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.settimeout(5)
        s.connect(p.sock)
        for i in range(rounds):
            if i % 2:
                msg = bytes(rnd.randrange(256) for _ in
                            range(rnd.randrange(1, 700)))
            else:
                msg = "".join(rnd.choice(words) for _ in
                              range(rnd.randrange(1, 40))).encode()
            s.send(msg)
            reply = s.recv(4096)
            check(reply.startswith(b"ok") or reply.startswith(b"error: ")
                  or reply.startswith(b"up_"), "%r -> %r" % (msg, reply))


def test_queue_full(_rig):
    """With 8 slots and 200 ms of delay, a burst of 50 gets 8 through and
    the other 42 are counted as full: the queue is bounded."""
    link = pathemu.Link(paths=1, queue=8)
    try:
        p = link.path[0]
        p.set(up_delay_ms=200)
        sink = link.socket("b")
        sink.bind((p.b_addr, PORT))
        src = link.socket("a")
        for i in range(50):
            src.sendto(b"%d" % i, (p.b_addr, PORT))
        time.sleep(0.5)
        st = p.stats()
        check(st["up_in"] == 50 and st["up_full"] == 42 and
              st["up_out"] == 8, str(st))
        sink.close()
        src.close()
    finally:
        link.close()


def test_stop(_rig):
    """pathemu exits 0 on SIGTERM, removes its socket and prints its
    counters; with its stdin closed (the harness gone) it exits too."""
    link = pathemu.Link(paths=2)
    try:
        p0, p1 = link.path
        check(p0.stop() == 0, "exit status %s" % p0.proc.returncode)
        check("up_in=" in p0.output(), "no counters: %r" % p0.output())
        check(not os.path.exists(p0.sock), "socket left behind")
        p1.proc.stdin.close()
        check(p1.proc.wait(5) == 0, "exit status %s" % p1.proc.returncode)
    finally:
        link.close()
    names = os.listdir("/run/netns") if os.path.isdir("/run/netns") else []
    check(link.ns_a not in names and link.ns_b not in names,
          "namespaces left behind")


TESTS = [test_rtt, test_asymmetric, test_loss, test_jitter_ordered,
         test_jitter_unordered, test_blackhole, test_second_path_blackholed,
         test_change_while_running, test_tcp_full_size, test_control_errors,
         test_queue_full, test_stop]


def rate(senders=2, pps=0, delay_ms=0, seconds=3.0):
    """Floods path 0 up from `senders` processes in a for `seconds`, into
    a socket in b that never reads, and prints what was sent, dropped on
    the TUN queue before pathemu read it, passed, and pathemu's CPU."""
    link = pathemu.Link(paths=1)
    try:
        p = link.path[0]
        p.set(delay_ms=delay_ms)
        sink = link.socket("b")
        sink.bind((p.b_addr, PORT))
        cpu0, drop0 = cputime(p.proc.pid), tun_drops(link)
        floods = [link.popen("a", [sys.executable, "-c", FLOOD, p.b_addr,
                                   str(PORT), str(seconds),
                                   str(pps / senders)],
                             stdout=subprocess.PIPE, text=True)
                  for _ in range(senders)]
        sent = sum(int(f.communicate(timeout=seconds + 30)[0])
                   for f in floods)
        time.sleep(0.2)
        cpu, st = cputime(p.proc.pid) - cpu0, p.stats()
        print("delay %g ms: %d senders sent %d in %.0f s (%.0f/s); dropped on the TUN "
              "queue %d, pathemu passed %d (%.0f/s) and found its queue "
              "full %d times; CPU %.2f s = %.2f us a packet (%.0f packets/s "
              "per core)" % (
                  delay_ms, senders, sent, seconds, sent / seconds,
                  tun_drops(link) - drop0, st["up_out"],
                  st["up_out"] / seconds, st["up_full"], cpu,
                  cpu / max(1, st["up_out"]) * 1e6,
                  st["up_out"] / cpu if cpu else 0))
        sink.close()
    finally:
        link.close()


def tun_drops(link):
    """Packets the kernel dropped on pe0's queue in a (pathemu too slow)."""
    out = link.run("a", ["cat", "/sys/class/net/pe0/statistics/tx_dropped"],
                   capture_output=True, text=True).stdout
    return int(out.strip() or 0)


def cputime(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-k", dest="substr", default=None)
    ap.add_argument("--rate", action="store_true")
    ap.add_argument("--senders", type=int, default=2)
    ap.add_argument("--pps", type=float, default=0,
                    help="with --rate: packets a second (0: flat out)")
    ap.add_argument("--delay-ms", type=float, default=0)
    a = ap.parse_args()
    why = pathemu.unavailable()
    if a.rate:
        if why:
            print("cannot measure: " + why)
            return 1
        rate(senders=a.senders, pps=a.pps, delay_ms=a.delay_ms)
        return 0
    rig = None
    try:
        if not why:
            try:
                rig = Rig()
            except Exception:
                print("FAIL setup: %s" % traceback.format_exc(), flush=True)
                print("0 passed, 1 failed")
                return 1

        def before():
            if why:
                raise Skip(why)
            rig.reset()
        # Timings: not while integration.py's timed scenarios run.
        with checks.host_lock(checks.TIMED_LOCK, 300):
            passed, failed, skipped = checks.run(TESTS, a.substr or "",
                                                 before=before, args=(rig,))
    except checks.Fail as e:
        print("FAIL lock: %s" % e)
        passed, failed, skipped = 0, 1, 0
    finally:
        if rig:
            rig.close()
    print("%d passed, %d failed%s" % (passed, failed, ", %d skipped" %
                                      skipped if skipped else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Two network namespaces joined by emulated paths (bench/pathemu).

    import pathemu
    with pathemu.Link(paths=2) as link:
        link.path[0].set(delay_ms=15, jitter_ms=5)   # both directions
        link.path[1].set("up_loss=0.01 down_loss=0.01")
        srv = link.popen("b", ["unbound", "-d", "-c", conf])
        sock = link.socket("a")                       # a UDP socket in a
        sock.sendto(b"...", (link.path[0].b_addr, 53))
        print(link.path[0].stats()["up_lost"])
        link.path[1].set(blackhole=1)

Side "a" is the client's namespace, side "b" the server's; "up" is a to b.
Path I is a TUN device peI in each namespace, with a point-to-point
address pair: Path.a_addr 198.18.I.1 in a and Path.b_addr 198.19.I.1 in b
(198.18.0.0/15 is for benchmarks, RFC 2544; IPv4 only, MTU 1500), so a
server that listens on several b addresses is reached through one path per
address, each with its own settings, and its answers go back the way they
came.  Each path is a pathemu process of its own.

Link(paths=1, queue=None, seed=None, nice=-10, realtime=True): queue is
pathemu's slots per direction (-q), seed makes loss and jitter repeatable;
pathemu runs under SCHED_FIFO 1 (Path.realtime says whether it could), else
at nice `nice`: on busy cores that takes its scheduling error from
milliseconds to tens of microseconds (bench/README.md).  Link.popen(side,
argv), run(side, argv), socket(side, ...) and in_ns(side, fn) put
processes, sockets and calls in a namespace; link.ns_a and ns_b are the
names for `ip netns exec`.  Path.set(line or KEY=VALUE...) takes pathemu's
keys (delay_ms, jitter_ms, loss, blackhole, order, each bare or with up_ or
down_), get() and stats() return dicts, clear() zeroes the counters;
PathemuError when pathemu refuses.

Everything is stopped by PID: pathemu by Path.stop() or close(), processes
started by popen() in close(); pathemu also exits when this process dies
(its stdin is a pipe from here).  The namespaces (pathemu-PID-N-a and -b)
are deleted by close(), which the context manager, a failed set-up and
atexit call, or, if this process was killed, by the next Link made on the
machine.  Needs root, /dev/net/tun, ip(8) and bench/pathemu built (`make
bench/pathemu`; $PATHEMU names another build); unavailable() says what is
missing.

A command line for a running path:
    python3 tests/pathemu.py SOCKET set up_delay_ms=15
"""
import atexit
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATHEMU = os.environ.get("PATHEMU", os.path.join(ROOT, "bench", "pathemu"))
PREFIX = "pathemu-"
CLONE_NEWNET = 0x40000000
MTU = 1500
TXQUEUELEN = 4096

_libc = ctypes.CDLL(None, use_errno=True)
_serial = 0
_serial_lock = threading.Lock()


class PathemuError(Exception):
    """A command pathemu refused, or a set-up step that failed."""


def unavailable(binary=PATHEMU):
    """Why a Link cannot be made here, or None."""
    if os.geteuid() != 0:
        return "not root"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun"
    if shutil.which("ip") is None:
        return "no ip(8)"
    if not os.access(binary, os.X_OK):
        return "%s not built (make bench/pathemu)" % binary
    return None


def ip(*args, ns=None):
    argv = ["ip"] + (["netns", "exec", ns, "ip"] if ns else []) + list(args)
    p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    if p.returncode != 0:
        raise PathemuError("%s: %s" % (" ".join(argv), p.stderr.strip()))


def _sweep():
    """Deletes the namespaces of earlier runs whose process is gone."""
    try:
        names = os.listdir("/run/netns")
    except OSError:
        return
    for name in names:
        m = re.match(re.escape(PREFIX) + r"(\d+)-\d+-[ab]$", name)
        if m and not os.path.exists("/proc/" + m.group(1)):
            subprocess.run(["ip", "netns", "del", name], timeout=10,
                           capture_output=True)


def control(sockpath, line, timeout=5.0):
    """Sends one command to the pathemu listening on sockpath, returns
    its reply; PathemuError when the reply is an error."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.settimeout(timeout)
        s.connect(sockpath)
        s.send(line.encode())
        reply = s.recv(4096).decode(errors="replace")
    if reply.startswith("error"):
        raise PathemuError(reply)
    return reply


def _pairs(reply):
    return dict(kv.split("=", 1) for kv in reply.split())


class Path:
    """One emulated path: a pathemu process and its TUN pair peI."""

    def __init__(self, link, index, queue=None, seed=None, nice=-10,
                 realtime=True):
        self.index = index
        self.ifname = "pe%d" % index
        self.a_addr = "198.18.%d.1" % index
        self.b_addr = "198.19.%d.1" % index
        self.sock = os.path.join(link.dir, "pe%d.sock" % index)
        self.proc = self.log = None
        link.path.append(self)      # so that link.close() stops it
        ip("tuntap", "add", "mode", "tun", "name", self.ifname, ns=link.ns_a)
        ip("tuntap", "add", "mode", "tun", "name", self.ifname, ns=link.ns_b)
        argv = [link.binary, "-e", "-a", "%s:%s" % (link.ns_a, self.ifname),
                "-b", "%s:%s" % (link.ns_b, self.ifname), "-c", self.sock]
        argv += ["-q", str(queue)] if queue else []
        argv += ["-s", str(seed + index)] if seed is not None else []
        self.log = open(self.sock + ".log", "w+")
        # stdin is a pipe only we hold: pathemu ends with this process.
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE,
                                     stdout=self.log, stderr=self.log)
        self._wait_ready()
        self._schedule(realtime, nice)
        for ns, here, there in ((link.ns_a, self.a_addr, self.b_addr),
                                (link.ns_b, self.b_addr, self.a_addr)):
            ip("addr", "add", here, "peer", there, "dev", self.ifname, ns=ns)
            # No IPv6 link-local address, so no router or neighbour
            # solicitations in the counters of an idle path.
            ip("link", "set", self.ifname, "addrgenmode", "none", ns=ns)
            # A queue as deep as pathemu's: a sender's burst waits while
            # pathemu is off the CPU instead of being dropped (500 is not
            # enough when the cores are shared).
            ip("link", "set", self.ifname, "mtu", str(MTU), "txqueuelen",
               str(TXQUEUELEN), "up", ns=ns)
        self.clear()

    def _schedule(self, realtime, nice):
        """Puts pathemu ahead of busy neighbours: it sleeps but for the
        packets, and each time the scheduler makes it wait adds to the
        delay.  SCHED_FIFO 1 where allowed (the kernel's RT throttling
        still leaves 5 % of each core to others), else nice."""
        self.realtime = False
        if realtime:
            try:
                os.sched_setscheduler(self.proc.pid, os.SCHED_FIFO,
                                      os.sched_param(1))
                self.realtime = True
                return
            except OSError:
                pass
        if nice:
            os.setpriority(os.PRIO_PROCESS, self.proc.pid, nice)

    def _wait_ready(self):
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                self.command("get")
                return
            except OSError:
                time.sleep(0.02)
        raise PathemuError("pathemu did not start: %s" % self.output())

    def output(self):
        self.log.seek(0)
        return self.log.read().strip()

    def command(self, line):
        return control(self.sock, line)

    def set(self, line=None, **kw):
        """set("up_delay_ms=15 loss=0.01") or set(up_delay_ms=15, ...)."""
        words = ([line] if line else []) + [
            "%s=%s" % (k, int(v) if isinstance(v, bool) else v)
            for k, v in kw.items()]
        self.command("set " + " ".join(words))

    def get(self):
        return {k: float(v) for k, v in _pairs(self.command("get")).items()}

    def stats(self):
        return {k: int(v) for k, v in _pairs(self.command("stats")).items()}

    def clear(self):
        self.command("clear")

    def stop(self):
        """Stops pathemu by its PID; returns its exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc.stdin.close()
        return self.proc.returncode


class Link:
    """Namespaces a and b joined by `paths` emulated paths (see above)."""

    def __init__(self, paths=1, binary=PATHEMU, queue=None, seed=None,
                 nice=-10, realtime=True):
        global _serial
        why = unavailable(binary)
        if why:
            raise PathemuError(why)
        with _serial_lock:
            _serial += 1
            serial = _serial
        base = "%s%d-%d-" % (PREFIX, os.getpid(), serial)
        self.ns_a, self.ns_b = base + "a", base + "b"
        self.binary = binary
        self.path = []
        self.procs = []
        self.dir = None
        self.closed = False
        atexit.register(self.close)
        _sweep()
        try:
            self.dir = tempfile.mkdtemp(prefix=base)
            for ns in (self.ns_a, self.ns_b):
                ip("netns", "add", ns)
                ip("link", "set", "lo", "up", ns=ns)
            for i in range(paths):
                Path(self, i, queue, seed, nice, realtime)
        except BaseException:
            self.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def ns(self, side):
        return {"a": self.ns_a, "b": self.ns_b}[side]

    def popen(self, side, argv, **kw):
        """Starts argv in namespace side; killed by PID in close()."""
        p = subprocess.Popen(["ip", "netns", "exec", self.ns(side)] +
                             list(argv), **kw)
        self.procs.append(p)
        return p

    def run(self, side, argv, timeout=30, **kw):
        """Runs argv in namespace side to completion (bounded)."""
        return subprocess.run(["ip", "netns", "exec", self.ns(side)] +
                              list(argv), timeout=timeout, **kw)

    def in_ns(self, side, fn, *args, timeout=30):
        """Calls fn(*args) on a thread moved into namespace side, and
        returns its value, or raises its exception: sockets, threads and
        processes it makes stay in that namespace.  PathemuError when it
        runs past `timeout` s."""
        box = {}

        def body():
            try:
                fd = os.open("/run/netns/" + self.ns(side), os.O_RDONLY)
                try:
                    if _libc.setns(fd, CLONE_NEWNET) != 0:
                        e = ctypes.get_errno()
                        raise OSError(e, "setns: " + os.strerror(e))
                finally:
                    os.close(fd)
                box["ret"] = fn(*args)
            except BaseException as e:      # handed to the caller
                box["exc"] = e

        th = threading.Thread(target=body, name="pathemu-ns", daemon=True)
        th.start()
        th.join(timeout)
        if th.is_alive():
            raise PathemuError("%r still running in %s after %d s" % (
                fn, self.ns(side), timeout))
        if "exc" in box:
            raise box["exc"]
        return box.get("ret")

    def socket(self, side, family=socket.AF_INET, type=socket.SOCK_DGRAM,
               proto=0):
        """A socket of namespace side, usable from any thread."""
        return self.in_ns(side, socket.socket, family, type, proto)

    def close(self):
        """Stops everything by PID and deletes the namespaces; idempotent."""
        if self.closed:
            return
        self.closed = True
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass
        for path in self.path:
            path.stop()
            if path.log:
                path.log.close()
        for ns in (self.ns_a, self.ns_b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True,
                           timeout=10)
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)


def main(argv):
    if len(argv) < 3:
        print("usage: pathemu.py SOCKET set|get|stats|clear [KEY=VALUE...]",
              file=sys.stderr)
        return 2
    try:
        print(control(argv[1], " ".join(argv[2:])))
    except (OSError, PathemuError) as e:
        print(e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

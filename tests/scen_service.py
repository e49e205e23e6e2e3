"""dnsfwd integration scenarios: dnsfwd as a service on a laptop.

sd_notify (READY, STOPPING, WATCHDOG), socket activation, --check,
--user, the loopback-only default and --allow, reaction to network
changes, TCP_USER_TIMEOUT on upstream sockets, and the unbound and
dnsmasq sidecar recipes of README.md.

integration.py calls register(module) with itself; every scenario here
uses its harness (T, Dnsfwd, ask_udp, ...) through that module, `it`.
Scenarios that change addresses or routes run their body on a thread of
their own in a fresh network namespace (see in_netns), so nothing of the
host's network is touched.
"""

import ctypes
import errno
import itertools
import os
import queue
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time

import dns.rcode

import scen

it = None                  # the integration module, set by register()
_reg = scen.Registry(__name__)
scenario, slow = _reg.scenario, _reg.slow

_NAMES = itertools.count()
CLONE_NEWNET = 0x40000000
SYS_PIDFD_GETFD = 438      # the same number on every Linux architecture
TCP_USER_TIMEOUT = 18


def register(mod):
    _reg.register(mod)


# ---------------------------------------------------------------- helpers

def _wait_ready(d, start_at=0, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if re.search(r"\bready\b", d.text()[start_at:]):
            return d
        if d.proc.poll() is not None:
            break
        time.sleep(0.01)
    raise it.Fail("dnsfwd not ready (exit %r): %s" % (d.proc.poll(),
                                                      d.tail()))


# Runs as a wrapper around dnsfwd: moves the descriptors named in argv[1]
# to 3, 4, ... and sets LISTEN_FDS, LISTEN_PID (argv[2]: "self" for its
# own pid, which exec keeps, "-" for none) and every variable named in
# argv[3] to its own pid; then execs argv[4:].
_EXEC_WRAP = r"""
import fcntl, os, sys
fds = [int(a) for a in sys.argv[1].split(",") if a]
high = [fcntl.fcntl(f, fcntl.F_DUPFD, 100) for f in fds]
for f in fds:
    os.close(f)
for i, h in enumerate(high):
    os.dup2(h, 3 + i)
    os.close(h)
if fds:
    os.environ["LISTEN_FDS"] = str(len(fds))
if sys.argv[2] == "self":
    os.environ["LISTEN_PID"] = str(os.getpid())
elif sys.argv[2] != "-":
    os.environ["LISTEN_PID"] = sys.argv[2]
for v in sys.argv[3].split(","):
    if v:
        os.environ[v] = str(os.getpid())
os.execv(sys.argv[4], sys.argv[4:])
"""


def _wrap(fds=(), listen_pid="-", self_pid_vars=()):
    return ["/usr/bin/python3", "-c", _EXEC_WRAP,
            ",".join(str(f) for f in fds), listen_pid,
            ",".join(self_pid_vars)]


def spawn(t, args, env=None, wrap=None, pass_fds=(), wait_ready=True,
          log_level="debug"):
    """Starts dnsfwd with exactly args (no --bind added), optionally
    through a wrapper; registered with t, so its cleanup stops it with
    SIGTERM and checks exit 0, 'stopped' and the sanitizers."""
    d = it.Dnsfwd(t, len(t.daemons))
    t.daemons.append(d)
    with open(d.log, "ab"):
        pass
    argv = list(wrap or []) + [it.DNSFWD, "--log-level", log_level] + \
        list(args)
    d.argv = argv
    t.note("dnsfwd: " + " ".join(argv))
    with open(d.log, "ab") as lf, open(d.out, "ab") as of:
        d.proc = it.track(subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=of, stderr=lf,
            env=it.child_env(env, d.log), pass_fds=tuple(pass_fds)))
    if wait_ready:
        _wait_ready(d)
    return d


def run(t, args, env=None, wrap=None, pass_fds=(), timeout=8.0):
    """Runs dnsfwd (through wrap, if given) to completion:
    (rc, stdout, stderr); sanitizer reports fail the scenario."""
    argv = list(wrap or []) + [it.DNSFWD] + list(args)
    errpath = os.path.join(t.dir, "run%d.err" % next(it.RUNS))
    t.note("run: " + " ".join(argv))
    with open(errpath, "wb") as ef:
        p = it.track(subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=ef, env=it.child_env(env, errpath),
            pass_fds=tuple(pass_fds)))
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        it.kill_pid(p)
        p.communicate()
        raise it.Fail("dnsfwd %s did not exit within %.0f s" %
                      (" ".join(args), timeout))
    finally:
        it.untrack(p)
    with open(errpath, "rb") as ef:
        err = ef.read().decode(errors="replace")
    out = out.decode(errors="replace")
    for s in it.SANITIZER:
        it.check(s not in err, "%s running %s: %s" % (s, args, err[:800]))
    return p.returncode, out, err


def ip(*args):
    """Runs ip(8) in the calling thread's network namespace."""
    p = subprocess.run(["ip"] + list(args), capture_output=True, text=True,
                       timeout=10)
    if p.returncode != 0:
        raise it.Fail("ip %s: %s" % (" ".join(args), p.stderr.strip()))


_libc = ctypes.CDLL(None, use_errno=True)


def in_netns(fn, *args, timeout=120):
    """Runs fn(*args) on a new thread moved into a fresh network namespace
    with lo up.  Sockets it opens, threads it starts (fakeup's) and
    processes it spawns (dnsfwd, ip) live in that namespace; the thread
    ends with fn, so no other scenario's thread is ever moved.  Returns
    fn's value or raises its exception; Skip when namespaces are denied."""
    box = {}

    def body():
        try:
            if _libc.unshare(CLONE_NEWNET) != 0:
                e = ctypes.get_errno()
                raise it.Skip("unshare(CLONE_NEWNET): %s" % os.strerror(e))
            ip("link", "set", "lo", "up")
            box["ret"] = fn(*args)
        except BaseException as e:      # handed to the caller's thread
            box["exc"] = e

    th = threading.Thread(target=body, name="netns", daemon=True)
    th.start()
    th.join(timeout)
    if th.is_alive():
        raise it.Fail("scenario body in the network namespace still "
                      "running after %d s" % timeout)
    if "exc" in box:
        raise box["exc"]
    return box.get("ret")


def proc_net(pid, proto):
    """Entries of /proc/PID/net/PROTO and PROTO6 (the namespace of pid):
    dicts with lport, rport, state, inode."""
    out = []
    for path in ("/proc/%d/net/%s" % (pid, proto),
                 "/proc/%d/net/%s6" % (pid, proto)):
        try:
            with open(path) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for ln in lines:
            f = ln.split()
            if len(f) < 10:
                continue
            out.append({"lport": int(f[1].rsplit(":", 1)[1], 16),
                        "rport": int(f[2].rsplit(":", 1)[1], 16),
                        "state": int(f[3], 16), "inode": int(f[9])})
    return out


def fd_inodes(pid):
    """{fd number: socket inode} of process pid."""
    out = {}
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            m = re.match(r"socket:\[(\d+)\]",
                         os.readlink("/proc/%d/fd/%s" % (pid, fd)))
        except OSError:
            continue
        if m:
            out[int(fd)] = int(m.group(1))
    return out


def listening_inodes(pid):
    """Inodes of the sockets pid holds that listen: TCP in LISTEN, and
    every UDP socket."""
    mine = set(fd_inodes(pid).values())
    tcp = {e["inode"] for e in proc_net(pid, "tcp")
           if e["state"] == 0x0A and e["inode"] in mine}
    udp = {e["inode"] for e in proc_net(pid, "udp") if e["inode"] in mine}
    return tcp | udp


def bind_pair(host="127.0.0.1", dual=False):
    """A UDP socket and a listening TCP socket on one free port:
    (udp, tcp, port).  dual: an IPv6 wildcard socket open to IPv4 too, as
    systemd binds ListenStream=53 by default."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        u = socket.socket(fam, socket.SOCK_DGRAM)
        s = socket.socket(fam, socket.SOCK_STREAM)
        if fam == socket.AF_INET6:
            for x in (u, s):
                x.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY,
                             0 if dual else 1)
        try:
            s.bind((host, 0))
            port = s.getsockname()[1]
            u.bind((host, port))
            s.listen(64)
            return u, s, port
        except OSError:
            u.close()
            s.close()
    raise it.Fail("no free port pair")


def ask_from(src, dst, port, q, tcp=False, timeout=1.5):
    """Query q from source address src to dst:port: the parsed reply
    (ours: ID and question), or None.  UDP waits timeout for it."""
    fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
    try:
        s.bind((src, 0))
        s.settimeout(timeout)
        s.connect((dst, port))
        if tcp:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(struct.pack("!H", len(q.to_wire())) + q.to_wire())
            frames = it.tcp_read_frames(s, 1, timeout)
        else:
            s.send(q.to_wire())
            frames = []
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                s.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    frames.append(s.recv(65535))
                except (socket.timeout, ConnectionRefusedError):
                    break
                if it._is_ours(q, frames[-1]) is not None:
                    break
        for data in frames:
            m = it._is_ours(q, data)
            if m is not None:
                return m
        return None
    finally:
        s.close()


def _rc(m):
    return "no reply" if m is None else dns.rcode.to_text(m.rcode())


def _a(m):
    return [r.address for rr in (m.answer if m else []) for r in rr
            if rr.rdtype == 1]


class Proc:
    """A helper process (unbound, dnsmasq) that t.cleanup stops by PID:
    it goes into t.ups, whose members cleanup calls stop() on."""

    def __init__(self, t, argv, log):
        self.log = log
        with open(log, "ab") as lf:
            self.p = it.track(subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=lf, stderr=lf))
        t.ups.append(self)

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(3)
            except subprocess.TimeoutExpired:
                it.kill_pid(self.p)
        it.untrack(self.p)

    def tail(self):
        try:
            with open(self.log, errors="replace") as f:
                return " | ".join(f.read().splitlines()[-6:])
        except OSError:
            return ""


def _start_front(t, argv_for):
    """Starts a front (unbound, dnsmasq) on a free port, argv_for(port)
    giving its command line; another port when it lost the race for one,
    as Dnsfwd does.  Returns (port, Proc) once it answers."""
    for _attempt in range(3):
        port = it.udp_tcp_free_port("127.0.0.1")
        p = Proc(t, argv_for(port), os.path.join(t.dir, "front.log"))
        try:
            _wait_answer(port, "warmup.example.", p)
            return port, p
        except it.Fail:
            if p.p.poll() is None or "in use" not in p.tail():
                raise
    raise it.Fail("the front lost the race for a port 3 times: %s" %
                  p.tail())


def _wait_answer(port, name, proc, timeout=10.0):
    """Polls until a UDP query to port gets a reply (the front is up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.p.poll() is not None:
            raise it.Fail("front exited %s: %s" % (proc.p.returncode,
                                                   proc.tail()))
        r = it.ask_udp(port, name, timeout=0.3)
        if r.msg is not None:
            return r
    raise it.Fail("front on port %d did not answer within %.0f s: %s" %
                  (port, timeout, proc.tail()))


# ---------------------------------------------------------------- sd_notify

def _notify_socket(t, abstract):
    """(socket, NOTIFY_SOCKET value): a datagram socket bound at a path in
    the scenario's directory, or at an abstract name ('@...')."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = "dnsfwd-it-%d-%d" % (os.getpid(), next(_NAMES))
        s.bind("\0" + name)
        return s, "@" + name
    path = os.path.join(t.dir, "notify%d.sock" % next(_NAMES))
    s.bind(path)
    return s, path


def _notes(s, timeout, until=None):
    """Datagrams received within timeout (or until one holds the
    assignment `until`): list of (monotonic time, [lines])."""
    out = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        r, _, _ = select.select([s], [], [], left)
        if not r:
            break
        data = s.recv(4096)
        lines = data.decode(errors="replace").split("\n")
        out.append((time.monotonic(), [ln for ln in lines if ln]))
        if until is not None and until in lines:
            break
    return out


_NO_NOTIFY = {"NOTIFY_SOCKET": None, "WATCHDOG_USEC": None,
              "WATCHDOG_PID": None, "LISTEN_FDS": None, "LISTEN_PID": None}


@scenario
def svc_notify_ready_stopping(t):
    """With NOTIFY_SOCKET (a path or an abstract '@' name), dnsfwd sends READY=1 once, when a query sent at that moment is answered, and STOPPING=1 on SIGTERM."""
    fu = t.fakeup()
    for abstract in (False, True):
        what = "abstract" if abstract else "path"
        ns, val = _notify_socket(t, abstract)
        try:
            env = dict(_NO_NOTIFY, NOTIFY_SOCKET=val)
            for _attempt in range(3):
                d = t.dnsfwd(*it.tls_up(fu), "--timeout", "2000", env=env,
                             wait_ready=False)
                got = _notes(ns, 10, until="READY=1")
                if got or d.proc.poll() != 1 or "bind" not in d.tail():
                    break
                d.checked = True        # lost a port race: another port
            it.check(got and "READY=1" in got[-1][1],
                     "%s: no READY=1 within 10 s (got %s; exit %r): %s" % (
                         what, got, d.proc.poll(), d.tail()))
            # The moment READY=1 is read: queries must be answered now.
            it.expect_a(it.ask_udp(d.port, "ready-udp-%s.example." % what),
                        what="%s: UDP query right after READY=1" % what)
            it.expect_a(it.ask_tcp(d.port, "ready-tcp-%s.example." % what),
                        what="%s: TCP query right after READY=1" % what)
            d.stop_and_check()
            got += _notes(ns, 2, until="STOPPING=1")
            states = [ln for _, lines in got for ln in lines]
            it.check("STOPPING=1" in states, "%s: no STOPPING=1 after "
                     "SIGTERM: %s" % (what, states))
            it.check(states.count("READY=1") == 1, "%s: READY=1 sent %d "
                     "times: %s" % (what, states.count("READY=1"), states))
            it.check(states.index("READY=1") < states.index("STOPPING=1"),
                     "%s: STOPPING=1 before READY=1: %s" % (what, states))
        finally:
            ns.close()


@scenario
@slow
def svc_notify_watchdog(t):
    """With WATCHDOG_USEC=400000, WATCHDOG=1 comes about every 0.2 s when WATCHDOG_PID is unset or dnsfwd's own pid, and never when it names another process."""
    fu = t.fakeup()
    cases = [("unset", {}, ()),
             ("own pid", {}, ("WATCHDOG_PID",)),
             ("other pid", {"WATCHDOG_PID": str(os.getpid())}, ())]
    socks, daemons = [], []
    try:
        for what, extra, selfvars in cases:
            ns, val = _notify_socket(t, False)
            socks.append(ns)
            env = dict(_NO_NOTIFY, NOTIFY_SOCKET=val, WATCHDOG_USEC="400000")
            env.update(extra)
            daemons.append(spawn(t, it.tls_up(fu) + [
                "--bind-udp", "127.0.0.1:%d" % it.udp_tcp_free_port(
                    "127.0.0.1")], env=env, wrap=_wrap(
                        self_pid_vars=selfvars) if selfvars else None))
        window = 2.0
        t0 = time.monotonic()
        pings = {i: [] for i in range(len(cases))}
        ready = {i: False for i in range(len(cases))}
        while time.monotonic() < t0 + window:
            r, _, _ = select.select(socks, [], [],
                                    max(0, t0 + window - time.monotonic()))
            now = time.monotonic()
            for s in r:
                i = socks.index(s)
                lines = s.recv(4096).decode(errors="replace").split("\n")
                ready[i] |= "READY=1" in lines
                if "WATCHDOG=1" in lines:
                    pings[i].append(now)
        for i, (what, _, _) in enumerate(cases):
            it.check(ready[i], "WATCHDOG_PID %s: no READY=1" % what)
            p = pings[i]
            if what == "other pid":
                it.check(not p, "WATCHDOG_PID of another process: %d "
                         "WATCHDOG=1 in %.1f s, want none" % (len(p), window))
                continue
            gaps = [b - a for a, b in zip(p, p[1:])]
            it.check(5 <= len(p) <= 16, "WATCHDOG_PID %s: %d WATCHDOG=1 in "
                     "%.1f s, want about %d (every 0.2 s)" % (
                         what, len(p), window, window / 0.2))
            it.check(max(gaps) < 0.6, "WATCHDOG_PID %s: a gap of %.2f s "
                     "between pings (WATCHDOG_USEC is 0.4 s)" % (
                         what, max(gaps)))
    finally:
        for s in socks:
            s.close()


# ---------------------------------------------------------------- sockets

def _activated(t, fu, order, extra=()):
    """dnsfwd given a UDP and a TCP socket bound here, at 3 and 4 in
    order ("udp,tcp" or "tcp,udp"), with LISTEN_PID its own: (d, port,
    {"udp": inode, "tcp": inode}).  Our copies are closed."""
    u, s, port = bind_pair()
    socks = {"udp": u, "tcp": s}
    inodes = {k: os.fstat(v.fileno()).st_ino for k, v in socks.items()}
    fds = [socks[k].fileno() for k in order.split(",")]
    try:
        d = spawn(t, it.tls_up(fu) + ["--timeout", "2000"] + list(extra),
                  env=_NO_NOTIFY, wrap=_wrap(fds, "self"), pass_fds=fds)
    finally:
        u.close()
        s.close()
    d.port = port
    return d, port, inodes


@scenario
def svc_socket_activation(t):
    """Sockets passed as LISTEN_FDS=2 (UDP then TCP, or TCP then UDP) with LISTEN_PID its own are answered on, and dnsfwd listens on nothing else."""
    fu = t.fakeup()
    for order in ("udp,tcp", "tcp,udp"):
        d, port, ino = _activated(t, fu, order)
        pid = d.proc.pid
        it.expect_a(it.ask_udp(port, "act-udp.example."),
                    what="%s: UDP on the passed socket" % order)
        it.expect_a(it.ask_tcp(port, "act-tcp.example."),
                    what="%s: TCP on the passed socket" % order)
        fds = fd_inodes(pid)
        want = {3 + i: ino[k] for i, k in enumerate(order.split(","))}
        it.check(all(fds.get(f) == n for f, n in want.items()),
                 "%s: descriptors 3 and 4 are %s, want the passed sockets "
                 "%s" % (order, {f: fds.get(f) for f in (3, 4)}, want))
        lis = listening_inodes(pid)
        it.check(lis == set(ino.values()), "%s: dnsfwd listens on sockets "
                 "%s, want exactly the passed %s" % (order, sorted(lis),
                                                    sorted(ino.values())))


@scenario
def svc_socket_activation_not_ours(t):
    """Sockets passed with LISTEN_PID of another process are not used: without --bind it is a usage error (exit 2), with --bind only the bound port answers."""
    fu = t.fakeup()
    u, s, port = bind_pair()
    fds = [u.fileno(), s.fileno()]
    try:
        rc, out, err = run(t, it.tls_up(fu), env=_NO_NOTIFY,
                           wrap=_wrap(fds, str(os.getpid())), pass_fds=fds)
        it.check(rc == 2 and "no listener" in err, "LISTEN_PID of another "
                 "process, no --bind: exit %s, stderr %r, want 2 and 'no "
                 "listener'" % (rc, err[-300:]))
        own = it.udp_tcp_free_port("127.0.0.1")
        d = spawn(t, it.tls_up(fu) + [
            "--bind-udp", "127.0.0.1:%d" % own, "--bind-tcp",
            "127.0.0.1:%d" % own, "--timeout", "2000"], env=_NO_NOTIFY,
            wrap=_wrap(fds, "1"), pass_fds=fds)
        it.expect_a(it.ask_udp(own, "bound.example."), what="--bind port")
        r = it.ask_udp(port, "passed.example.", timeout=1.0)
        it.check(r.msg is None, "the socket passed for another process was "
                 "answered on: %s" % r.describe())
        it.check(fu.nqueries("passed") == 0, "the query to the passed "
                 "socket went upstream")
    finally:
        u.close()
        s.close()


@scenario
def svc_no_listener(t):
    """With no --bind-* and no passed sockets, dnsfwd exits 2 saying 'no listener'."""
    for env in (_NO_NOTIFY, dict(_NO_NOTIFY, LISTEN_FDS="2",
                                 LISTEN_PID=str(os.getpid()))):
        rc, out, err = run(t, ["--connect-tls", "127.0.0.1:853#dns.test"],
                           env=env)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        it.check(rc == 2 and len(lines) == 1 and "no listener" in lines[0],
                 "env %s: exit %s, stderr %r, want 2 and one line 'no "
                 "listener'" % ({k: v for k, v in env.items() if v}, rc,
                                err[-300:]))


# ---------------------------------------------------------------- --check

@scenario
def svc_check(t):
    """--check exits 0 with one stdout line for a good configuration (with or without --bind), 2 for a configuration error (a usage error, an unreadable CA file, an unknown --user), and binds nothing."""
    up = ["--connect-tls", "127.0.0.1:853#dns.test"]
    ca = ["--ca-file", it.pki("ca.pem")]
    u, s, port = bind_pair()      # held by us all along
    try:
        binds = ["--bind-udp", "127.0.0.1:%d" % port,
                 "--bind-tcp", "127.0.0.1:%d" % port]
        good = [("with --bind (port held by another socket)", binds + up + ca),
                ("no --bind", up + ca),
                ("pin only, no CA file needed",
                 ["--connect-tls", "127.0.0.1:853", "--pin-sha256",
                  it.read_pin(), "--ca-file", "/nonexistent/ca.pem"]),
                ("--user root", up + ca + ["--user", "root"])]
        bad = [("missing CA file", up + ["--ca-file", "/nonexistent/ca.pem"],
                2),
               ("CA file is a directory", up + ["--ca-file", t.dir], 2),
               ("CA file is not PEM", up + ["--ca-file", "/etc/hostname"], 2),
               ("unknown --user", up + ca + ["--user", "no-such-user-dnsfwd"],
                2),
               ("no upstream", binds, 2),
               ("bad option", up + ca + ["--connections", "zero"], 2),
               ("bad --allow", up + ca + ["--allow", "10.0.0.0/33"], 2)]
        problems = []
        for what, args in good:
            rc, out, err = run(t, ["--check"] + args, env=_NO_NOTIFY)
            lines = [ln for ln in out.splitlines() if ln.strip()]
            if rc != 0 or len(lines) != 1:
                problems.append("%s: exit %s, stdout %r, stderr %r; want 0 "
                                "and one line" % (what, rc, out, err[-200:]))
        setpriv = shutil.which("setpriv")
        if setpriv and os.geteuid() == 0:
            # Unreadable for the user dnsfwd runs as (root reads anything).
            ro = os.path.join(t.dir, "ca-root-only.pem")
            shutil.copy(it.pki("ca.pem"), ro)
            os.chmod(ro, 0o600)
            bad.append(("CA file unreadable (as nobody)",
                        up + ["--ca-file", ro], 2))
        for what, args, want in bad:
            wrap = None
            if "as nobody" in what:
                wrap = [setpriv, "--reuid=nobody", "--regid=nogroup",
                        "--clear-groups"]
            rc, out, err = run(t, ["--check"] + args, env=_NO_NOTIFY,
                               wrap=wrap)
            if rc != want:
                problems.append("%s: exit %s, want %d (stderr %r)" % (
                    what, rc, want, err[-200:]))
        it.check(not problems, "; ".join(problems))
        for x in (u, s):
            it.check(x.getsockname()[1] == port,
                     "our socket on port %d is gone" % port)
    finally:
        u.close()
        s.close()


# ---------------------------------------------------------------- --user

def _status(pid):
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for ln in f:
            k, _, v = ln.partition(":")
            out[k] = v.split()
    return out


def _user_checks(t, d, what):
    st = _status(d.proc.pid)
    want = ["65534"] * 4
    it.check(st.get("Uid") == want and st.get("Gid") == want,
             "%s: /proc status Uid %s Gid %s, want nobody's (65534) in all "
             "four" % (what, st.get("Uid"), st.get("Gid")))
    it.check(st.get("Groups") == [], "%s: supplementary groups %s, want "
             "none" % (what, st.get("Groups")))
    for cap in ("CapEff", "CapPrm"):
        it.check(int(st.get(cap, ["1"])[0], 16) == 0, "%s: %s %s, want "
                 "none" % (what, cap, st.get(cap)))


@scenario
def svc_user_nobody(t):
    """As root with --user nobody, dnsfwd runs with nobody's uid and gid in all four slots, no groups and no capabilities, and still answers over UDP and TCP with a CA file only root can read."""
    if os.geteuid() != 0:
        raise it.Skip("not root")
    fu = t.fakeup()
    ca = os.path.join(t.dir, "ca-root-only.pem")
    shutil.copy(it.pki("ca.pem"), ca)
    os.chown(ca, 0, 0)
    os.chmod(ca, 0o600)
    d = t.dnsfwd(*it.tls_up(fu, ca=False), "--ca-file", ca, "--user",
                 "nobody", "--timeout", "2000")
    _user_checks(t, d, "--user nobody")
    it.expect_a(it.ask_udp(d.port, "user-udp.example."), what="UDP")
    it.expect_a(it.ask_tcp(d.port, "user-tcp.example."), what="TCP")
    it.check(fu.stats()["handshakes"] >= 1, "no TLS handshake seen")


@scenario
def svc_user_port53(t):
    """In a fresh network namespace, dnsfwd --user nobody binds 127.0.0.1:53 before dropping root and answers on it."""
    if os.geteuid() != 0:
        raise it.Skip("not root")

    def body():
        fu = t.fakeup()
        d = spawn(t, it.tls_up(fu) + [
            "--bind-udp", "127.0.0.1:53", "--bind-tcp", "127.0.0.1:53",
            "--user", "nobody", "--timeout", "2000"], env=_NO_NOTIFY)
        _user_checks(t, d, "--user nobody on port 53")
        it.expect_a(it.ask_udp(53, "p53-udp.example."), what="UDP on 53")
        it.expect_a(it.ask_tcp(53, "p53-tcp.example."), what="TCP on 53")

    in_netns(body)


@scenario
def svc_user_fails(t):
    """--user with an unknown name exits 2 (configuration), and --user root exits 1 when dnsfwd is not started as root (it cannot switch)."""
    port = it.udp_tcp_free_port("127.0.0.1")
    args = ["--bind-udp", "127.0.0.1:%d" % port,
            "--connect-tcp", "127.0.0.1:9"]
    rc, out, err = run(t, args + ["--user", "no-such-user-dnsfwd"],
                       env=_NO_NOTIFY)
    it.check(rc == 2, "unknown --user: exit %s, stderr %r, want 2" % (
        rc, err[-300:]))
    setpriv = shutil.which("setpriv")
    if setpriv is None or os.geteuid() != 0:
        raise it.Skip("setpriv or root missing: the non-root case was not "
                      "run")
    wrap = [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    rc, out, err = run(t, args + ["--user", "root"], env=_NO_NOTIFY,
                       wrap=wrap)
    it.check(rc == 1, "as nobody with --user root: exit %s, stderr %r, "
             "want 1" % (rc, err[-300:]))
    # Control: as nobody without --user it does start (so exit 1 above is
    # the switch failing, not something else).
    d = spawn(t, ["--bind-udp", "127.0.0.1:%d" % port, "--connect-tcp",
                  "127.0.0.1:9"], env=_NO_NOTIFY, wrap=wrap)
    it.check(_status(d.proc.pid)["Uid"][0] == "65534",
             "setpriv did not start dnsfwd as nobody")


# ---------------------------------------------------------------- --allow

def _denied(t, d, fu, src, dst, tag):
    """A client at src gets nothing over UDP and REFUSED over TCP, and the
    upstream sees neither query."""
    before = d.stats().get("refused", 0)
    qu = it.make_query("%s-udp.example." % tag)
    m = ask_from(src, dst, d.port, qu, timeout=1.0)
    it.check(m is None, "%s: UDP from %s got %s, want no reply at all" % (
        tag, src, _rc(m)))
    qt = it.make_query("%s-tcp.example." % tag)
    m = ask_from(src, dst, d.port, qt, tcp=True, timeout=2.0)
    it.check(m is not None and m.rcode() == dns.rcode.REFUSED and
             not m.answer, "%s: TCP from %s got %s, want REFUSED" % (
                 tag, src, _rc(m)))
    it.check(fu.nqueries(tag) == 0, "%s: %d queries from %s went upstream"
             % (tag, fu.nqueries(tag), src))
    after = d.stats().get("refused", 0)
    it.check(after - before == 2, "%s: refused rose by %d for one UDP and "
             "one TCP query, want 2" % (tag, after - before))


def _allowed(d, src, dst, tag):
    for tcp in (False, True):
        q = it.make_query("%s-%s.example." % (tag, "tcp" if tcp else "udp"))
        m = ask_from(src, dst, d.port, q, tcp=tcp, timeout=2.0)
        it.check(m is not None and _a(m) == [it.GOOD_ADDR], "%s: %s from %s "
                 "got %s, want the answer" % (tag, "TCP" if tcp else "UDP",
                                              src, _rc(m)))


@scenario
@slow
def svc_allow_ipv4(t):
    """Only loopback clients are answered by default (others: no UDP reply, TCP REFUSED, counted, nothing upstream); --allow admits a network or a host, host bits ignored; a non-loopback bind without --allow warns."""
    def body():
        ip("addr", "add", "10.77.0.1/32", "dev", "lo")
        fu = t.fakeup()
        up = it.tls_up(fu) + ["--timeout", "2000"]
        d = t.dnsfwd(*up, host="0.0.0.0")
        _allowed(d, "127.0.0.1", "127.0.0.1", "lo-default")
        _allowed(d, "127.0.0.9", "10.77.0.1", "lo9-default")
        _denied(t, d, fu, "10.77.0.1", "10.77.0.1", "deny-default")
        warn = [ln for ln in d.lines() if "--allow" in ln]
        it.check(warn and warn[0].startswith("warn"), "binding 0.0.0.0 "
                 "without --allow logged no warning naming --allow: %s" %
                 d.tail(6))
        for allow in (["10.77.0.0/24"], ["10.77.0.1"], ["10.77.0.200/24"],
                      ["192.0.2.0/24", "10.77.0.0/30"], ["0.0.0.0/0"]):
            args = up + [a for x in allow for a in ("--allow", x)]
            d2 = t.dnsfwd(*args, host="0.0.0.0")
            _allowed(d2, "10.77.0.1", "10.77.0.1",
                     "allow-" + "-".join(allow).replace("/", "_"))
            _allowed(d2, "127.0.0.1", "127.0.0.1", "allow-lo")
            it.check(not [ln for ln in d2.lines() if "--allow" in ln],
                     "--allow %s given, yet a warning: %s" % (allow,
                                                               d2.tail(6)))
        d3 = t.dnsfwd(*(up + ["--allow", "10.77.0.2", "--allow",
                              "10.77.0.128/25", "--allow", "10.77.1.0/24",
                              "--allow", "10.77.0.0/32", "--allow",
                              "fd00::/8"]), host="0.0.0.0")
        _denied(t, d3, fu, "10.77.0.1", "10.77.0.1", "deny-near")

    in_netns(body)


@scenario
@slow
def svc_allow_ipv6(t):
    """IPv6 clients outside loopback are refused unless --allow covers them; IPv4 clients of a dual-stack socket (passed by socket activation) are judged by their IPv4 address."""
    def body():
        if not it._have_ipv6():
            raise it.Skip("no IPv6")
        ip("addr", "add", "10.77.0.1/32", "dev", "lo")
        ip("-6", "addr", "add", "fd00::77/128", "dev", "lo", "nodad")
        fu = t.fakeup()
        up = it.tls_up(fu) + ["--timeout", "2000"]
        d = t.dnsfwd(*up, host="::")
        _allowed(d, "::1", "::1", "v6-lo")
        _denied(t, d, fu, "fd00::77", "fd00::77", "v6-deny")
        for allow in ("fd00::/8", "::/0", "fd00::77"):
            d2 = t.dnsfwd(*(up + ["--allow", allow]), host="::")
            _allowed(d2, "fd00::77", "fd00::77",
                     "v6-allow-" + allow.replace(":", "x").replace("/", "_"))
        d3 = t.dnsfwd(*(up + ["--allow", "fd00::78", "--allow", "fd01::/16",
                              "--allow", "10.77.0.0/24"]), host="::")
        _denied(t, d3, fu, "fd00::77", "fd00::77", "v6-deny-near")
        # A dual-stack [::] socket from socket activation.
        for allow, ok in (((), False), (("--allow", "10.77.0.0/24"), True)):
            u, s, port = bind_pair("::", dual=True)
            fds = [u.fileno(), s.fileno()]
            try:
                d4 = spawn(t, up + list(allow), env=_NO_NOTIFY,
                           wrap=_wrap(fds, "self"), pass_fds=fds)
            finally:
                u.close()
                s.close()
            d4.port = port
            tag = "mapped-%s" % ("allow" if ok else "deny")
            _allowed(d4, "127.0.0.1", "127.0.0.1", "lo-" + tag)
            if ok:
                _allowed(d4, "10.77.0.1", "10.77.0.1", tag)
            else:
                _denied(t, d4, fu, "10.77.0.1", "10.77.0.1", tag)

    in_netns(body)


def _denied_conn(src, dst, port, payload):
    """A TCP connection from src that sends payload at once."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((src, 0))
    s.settimeout(2)
    s.connect((dst, port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if payload:
        s.sendall(payload)
    return s


def _until_closed(s, timeout):
    """Reads s until dnsfwd closes it: (frames read, the time.monotonic()
    of the close or None if still open at the timeout)."""
    t0, buf, frames = time.monotonic(), b"", []
    while time.monotonic() - t0 < timeout:
        s.settimeout(max(0.01, timeout - (time.monotonic() - t0)))
        try:
            data = s.recv(65535)
        except socket.timeout:
            break
        except OSError:
            data = b""
        if not data:
            return frames, time.monotonic()
        buf += data
        while len(buf) >= 2 and len(buf) >= 2 + struct.unpack("!H",
                                                               buf[:2])[0]:
            n = struct.unpack("!H", buf[:2])[0]
            frames.append(buf[2:2 + n])
            buf = buf[2 + n:]
    return frames, None


@scenario
def svc_allow_denied_tcp_closed(t):
    """A TCP peer --allow denies holds no slot: two pipelined queries get one REFUSED and the connection closed within 1 s; a silent one, or one sending half a query, is closed within 4 s (not the 10 s idle limit); refused counts 1 and nothing goes upstream."""
    def body():
        ip("addr", "add", "10.77.0.1/32", "dev", "lo")
        fu = t.fakeup()
        d = t.dnsfwd(*it.tls_up(fu), "--timeout", "2000", host="0.0.0.0")
        before = d.stats().get("refused", 0)
        qs = [it.make_query("deny-pipe%d.example." % i) for i in range(2)]
        two = b"".join(it.fakeup.frame(q.to_wire()) for q in qs)
        t0 = time.monotonic()
        conns = [_denied_conn("10.77.0.1", "10.77.0.1", d.port, p)
                 for p in (two, b"", two[:7])]
        try:
            frames, el = _until_closed(conns[0], 3)
            el = el and el - t0
            t.note("denied, two queries: closed after %s s" % el)
            ms = [it._is_ours(qs[0], f) for f in frames]
            it.check(len(frames) == 1 and ms[0] is not None and
                     ms[0].rcode() == dns.rcode.REFUSED, "a denied peer's "
                     "two pipelined queries got %d replies (%s), want one "
                     "REFUSED for the first" % (len(frames),
                                                [_rc(m) for m in ms]))
            it.check(el is not None and el <= 1.0, "a denied peer still "
                     "connected %s after its REFUSED, want closed at once"
                     % ("%.1f s" % el if el else "3 s"))
            for s, what in ((conns[1], "silent"),
                            (conns[2], "half a query")):
                frames, el = _until_closed(s, 6)
                el = el and el - t0
                t.note("denied, %s: closed after %s s" % (what, el))
                it.check(not frames and el is not None and el <= 4.0,
                         "a denied peer sending %s: %d replies, %s, want "
                         "closed within 4 s" % (what, len(frames),
                                                "closed at %.1f s" % el
                                                if el else "open at 6 s"))
        finally:
            for s in conns:
                s.close()
        after = d.stats().get("refused", 0)
        it.check(after - before == 1, "refused rose by %d for one denied "
                 "peer's two queries, want 1" % (after - before))
        it.check(fu.nqueries("deny-pipe") == 0, "%d queries of a denied "
                 "peer went upstream" % fu.nqueries("deny-pipe"))
        _allowed(d, "127.0.0.1", "127.0.0.1", "after-denied")

    in_netns(body)


@scenario
def svc_allow_usage(t):
    """--allow with a bad network (prefix too long, not an address, empty or signed or spaced prefix) is a usage error: exit 2 with one line naming --allow."""
    port = it.udp_tcp_free_port("127.0.0.1")
    base = ["--bind-udp", "127.0.0.1:%d" % port, "--connect-tcp",
            "127.0.0.1:9"]
    bad = ["10.0.0.0/33", "nonsense", "fd00::/129", "10.0.0.0/", "/8",
           "10.0.0.0/-1", "10.0.0.0/8x", "10.0.0/8", "fd00:::/8", "",
           "[fd00::]/8", "10.0.0.0/ 8", "10.0.0.0/+8"]
    problems = []
    for a in bad:
        try:
            rc, out, err = run(t, base + ["--allow", a], env=_NO_NOTIFY,
                               timeout=2)
        except it.Fail:
            problems.append("--allow %r: accepted (dnsfwd started)" % a)
            continue
        lines = [ln for ln in err.splitlines() if ln.strip()]
        if rc != 2 or len(lines) != 1 or "--allow" not in lines[0]:
            problems.append("--allow %r: exit %s, stderr %r" % (a, rc,
                                                                err[:200]))
    it.check(not problems, "; ".join(problems))


# ---------------------------------------------------------------- netmon

def new_link(name):
    """Adds a link: a dummy one, or where the kernel has no dummy driver a
    veth pair (peer NAMEp) or a bridge."""
    last = None
    for kind in (["dummy"], ["veth", "peer", "name", name + "p"],
                 ["bridge"]):
        try:
            ip("link", "add", name, "type", *kind)
            return
        except it.Fail as e:
            last = e
    raise last


# netmon looks at most NETMON_MAX_DELAY_MS (1 s) after the first event of a
# burst, and 250 ms after the last; SETTLE is past either on busy cores.
SETTLE = 1.5
# The upstreams of the two-path scenarios, in the upstream's namespace.
PATHS_UP = "10.53.0.%d"


def local_route(src):
    """ip(8) arguments that make src the preferred source of the route to
    127.0.0.1: a change of the route to an upstream there that needs no
    second namespace."""
    return ("route", "replace", "local", "127.0.0.1", "dev", "lo", "proto",
            "kernel", "scope", "host", "src", src, "table", "local")


MOVE_LOCAL_ROUTE = local_route("127.0.0.2")


def move_local_route(src="127.0.0.2"):
    """Moves the path to 127.0.0.1 to source src, in the calling thread's
    namespace."""
    ip(*local_route(src))


def _apply(change):
    """Runs each ip(8) command of change; ("new_link", NAME) adds a link."""
    for cmd in change:
        if cmd[0] == "new_link":
            new_link(cmd[1])
        else:
            ip(*cmd)


def _netchange(t, change, tag):
    """A query stuck on a silent connection is answered at once on a new
    one when `change` (ip arguments, run once the upstream has read the
    query) changes the network."""
    fu = t.fakeup()
    fu.set(mode="blackhole_first_conn")
    d = t.dnsfwd(*it.tls_up(fu), "--timeout", "6000", "--connections", "1")
    name = "%s.example." % tag
    box = {}
    th = threading.Thread(target=lambda: box.update(
        r=it.ask_udp(d.port, name, timeout=8), done=time.monotonic()))
    th.start()
    # On the silent connection: a change during its handshake would
    # leave the query to the second connection alone.
    it.check(scen.until(lambda: fu.count(name) >= 1, 5), "the query did "
             "not reach the upstream within 5 s")
    t0 = time.monotonic()
    _apply(change)
    th.join(10)
    r = box.get("r")
    it.check(r is not None, "query thread did not finish")
    it.expect_a(r, what="query stuck on a silent connection across the "
                "change")
    it.check(box["done"] - t0 < 3.0, "answered %.2f s after the change; "
             "it should move the query to a new connection at once "
             "(deadline 6 s)" % (box["done"] - t0))
    st = fu.stats()
    on = sorted({q["conn"] for q in fu.records(name)})
    it.check(st["conns"] == 2 and on == [1, 2], "fakeup saw %d connections, "
             "the query on %s; want 2 and [1, 2]" % (st["conns"], on))


def _netchange_kept(t, change, tag):
    """`change` (as for _apply) moves no path to the upstream on
    127.0.0.1: the next query goes over the same connection, and dnsfwd
    neither dials nor shakes hands again."""
    fu = t.fakeup()
    d = t.dnsfwd(*it.tls_up(fu), "--timeout", "3000", "--connections", "1")
    it.expect_a(it.ask_udp(d.port, "%s-before.example." % tag))
    before = d.stats()
    _apply(change)
    time.sleep(SETTLE)
    after = "%s-after.example." % tag
    it.expect_a(it.ask_udp(d.port, after))
    st, ds = fu.stats(), d.stats()
    on = [q["conn"] for q in fu.records(after)]
    it.check(st["conns"] == 1 and st["closed"] == 0 and
             st["handshakes"] == 1 and on == [1], "the change cost the "
             "connection: fakeup %s, the query after it on connection %s"
             % (st, on))
    for k in ("reconnects", "tls_full", "tls_resumed"):
        it.check(ds[k] == before[k], "dnsfwd's %s went from %d to %d "
                 "across the change" % (k, before[k], ds[k]))


@scenario
@slow
def svc_netchange_address(t):
    """An address added to a link and one removed change no route to the upstream (127.0.0.1): dnsfwd keeps its connection and makes no new handshake."""
    in_netns(_netchange_kept, t,
             [("addr", "add", "10.66.0.1/32", "dev", "lo"),
              ("addr", "add", "10.66.0.2/32", "dev", "lo"),
              ("addr", "del", "10.66.0.1/32", "dev", "lo")], "netchange-addr")


@scenario
@slow
def svc_netchange_link(t):
    """A new link coming up with 172.17.0.1/16 (what `docker run` does) changes no route to the upstream: dnsfwd keeps its connection and makes no new handshake."""
    in_netns(_netchange_kept, t,
             [("new_link", "d0"),
              ("addr", "add", "172.17.0.1/16", "dev", "d0"),
              ("link", "set", "d0", "up")], "netchange-link")


@scenario
@slow
def svc_netchange_route(t):
    """A change of the route to the upstream alone (its preferred source), with no address change, makes dnsfwd drop its connections: the stuck query is answered within 3 s."""
    in_netns(_netchange, t, [MOVE_LOCAL_ROUTE], "netchange-route")


@scenario
@slow
def svc_netchange_unrelated(t):
    """Network events that change neither the addresses nor the route to the upstream (a route elsewhere, a link left down) keep the working connection."""
    def body():
        fu = t.fakeup()
        d = t.dnsfwd(*it.tls_up(fu), "--timeout", "2000", "--connections",
                     "1")
        it.expect_a(it.ask_udp(d.port, "before-event.example."))
        ip("route", "add", "10.99.0.0/16", "dev", "lo")
        ip("-6", "route", "add", "fd99::/64", "dev", "lo")
        new_link("d1")
        time.sleep(0.8)             # past the 250 ms debounce
        it.expect_a(it.ask_udp(d.port, "after-event.example."))
        st = fu.stats()
        it.check(st["conns"] == 1 and st["closed"] == 0, "unrelated events "
                 "cost the connection: fakeup %s" % st)
        on = [q["conn"] for q in fu.records("after-event.example.")]
        it.check(on == [1], "second query went over connection %s" % on)

    in_netns(body)


@scenario
@slow
def svc_netchange_max_delay(t):
    """A steady stream of events (an address added or removed every 100 ms for 4 s) does not postpone the check: a route change at its start moves a query stuck on a silent connection within 3 s, while the stream still runs."""
    def body():
        fu = t.fakeup()
        fu.set(mode="blackhole_first_conn")
        d = t.dnsfwd(*it.tls_up(fu), "--timeout", "9000", "--connections",
                     "1")
        new_link("d2")
        ip("link", "set", "d2", "up")
        box = {}
        th = threading.Thread(target=lambda: box.setdefault(
            "r", it.ask_udp(d.port, "maxdelay.example.", timeout=10)))
        th.start()
        it.check(scen.until(lambda: fu.count("maxdelay.example.") >= 1, 5),
                 "the query did not reach the upstream within 5 s")
        t0 = time.monotonic()
        move_local_route()
        answered = None
        for i in range(40):
            ip("addr", "del" if i % 2 else "add", "10.77.0.1/24", "dev", "d2")
            if answered is None and not th.is_alive():
                answered = time.monotonic() - t0
            time.sleep(max(0.0, t0 + (i + 1) * 0.1 - time.monotonic()))
        stream = time.monotonic() - t0
        th.join(10)
        r = box.get("r")
        it.check(r is not None, "query thread did not finish")
        it.expect_a(r, what="query stuck on a silent connection")
        it.check(answered is not None, "answered only after the stream of "
                 "events stopped (%.1f s after the route change, the stream "
                 "lasted %.1f s)" % (time.monotonic() - t0, stream))
        it.check(answered < 3.0, "answered %.2f s after the route change, "
                 "want within 3 s" % answered)
        t.note("answered %.2f s after the route change" % answered)
        it.check(fu.stats()["conns"] == 2, "fakeup saw %d connections, want "
                 "2" % fu.stats()["conns"])

    in_netns(body)


class _Netns:
    """A thread of its own in a fresh network namespace that runs what
    call() gives it: what it opens (fakeup's sockets and threads, ip's
    links) lives there.  close() ends the thread; the namespace, and the
    links in it, go when the last socket in it is closed."""

    def __init__(self):
        self._jobs = queue.Queue()
        self._up = threading.Event()
        self._err = None
        self.path = None
        self._th = threading.Thread(target=self._run, name="netns-peer",
                                    daemon=True)
        self._th.start()
        if not self._up.wait(10):
            raise it.Fail("namespace thread did not start")
        if self._err is not None:
            raise self._err

    def _run(self):
        try:
            if _libc.unshare(CLONE_NEWNET) != 0:
                e = ctypes.get_errno()
                raise it.Skip("unshare(CLONE_NEWNET): %s" % os.strerror(e))
            ip("link", "set", "lo", "up")
            self.path = "/proc/%d/task/%d/ns/net" % (
                os.getpid(), threading.get_native_id())
        except BaseException as e:      # handed to the constructor
            self._err = e
        self._up.set()
        while self._err is None:
            job = self._jobs.get()
            if job is None:
                return
            fn, args, kw, box, done = job
            try:
                box["ret"] = fn(*args, **kw)
            except BaseException as e:  # handed to call()
                box["exc"] = e
            done.set()

    def call(self, fn, *args, **kw):
        box, done = {}, threading.Event()
        self._jobs.put((fn, args, kw, box, done))
        if not done.wait(30):
            raise it.Fail("%s in the peer namespace took over 30 s" %
                          fn.__name__)
        if "exc" in box:
            raise box["exc"]
        return box.get("ret")

    def close(self):
        self._jobs.put(None)
        self._th.join(5)


def _two_paths(t, nups=1):
    """Joins the calling thread's namespace (dnsfwd's) to a new one (the
    upstream's) by two veth pairs, path A (vA 10.1.0.2/24, and 10.1.0.3 as
    a secondary address, to vAu 10.1.0.1) and path B (vB 10.2.0.2/24 to
    vBu 10.2.0.1), and starts fakeup there on nups addresses PATHS_UP % 53,
    54, ... (on its lo), routed here via A.  Returns (peer _Netns, fu)."""
    peer = _Netns()
    try:
        for p, net in (("A", 1), ("B", 2)):
            ip("link", "add", "v" + p, "type", "veth", "peer", "name",
               "v%su" % p, "netns", peer.path)
            ip("addr", "add", "10.%d.0.2/24" % net, "dev", "v" + p)
            ip("link", "set", "v" + p, "up")
            peer.call(ip, "addr", "add", "10.%d.0.1/24" % net, "dev",
                      "v%su" % p)
            peer.call(ip, "link", "set", "v%su" % p, "up")
        # Replies to path A's address may come back over path B: no
        # reverse-path filter, in either namespace.
        for dev in ("all", "vA", "vB"):
            sysctl("net/ipv4/conf/%s/rp_filter" % dev, "0")
        for dev in ("all", "vAu", "vBu"):
            peer.call(sysctl, "net/ipv4/conf/%s/rp_filter" % dev, "0")
        # Removing 10.1.0.2 then leaves path A working from 10.1.0.3.
        sysctl("net/ipv4/conf/vA/promote_secondaries", "1")
        ip("addr", "add", "10.1.0.3/24", "dev", "vA")
        for i in range(nups):
            peer.call(ip, "addr", "add", PATHS_UP % (53 + i) + "/32", "dev",
                      "lo")
        ip("route", "add", PATHS_UP % 0 + "/24", "via", "10.1.0.1", "dev",
           "vA")
        fu = peer.call(t.fakeup, host="0.0.0.0")
    except BaseException:
        peer.close()
        raise
    return peer, fu


def sysctl(name, value):
    """Sets /proc/sys/NAME in the calling thread's namespace."""
    with open("/proc/sys/" + name, "w") as f:
        f.write(value)


def _paths_up(fu, nups=1):
    args = []
    for i in range(nups):
        args += it.tls_up(fu, host=PATHS_UP % (53 + i))[:2]
    return args + ["--ca-file", it.pki("ca.pem")]


def _local_addrs(pid, rport):
    """The local IPv4 addresses of pid's established TCP connections to
    port rport (its namespace's /proc/net/tcp)."""
    out = set()
    with open("/proc/%d/net/tcp" % pid) as f:
        for ln in f.read().splitlines()[1:]:
            fl = ln.split()
            if len(fl) < 4 or int(fl[3], 16) != 1:
                continue
            la, rp = fl[1].split(":")[0], int(fl[2].split(":")[1], 16)
            if rp == rport:
                out.add(socket.inet_ntoa(struct.pack("<I", int(la, 16))))
    return out


@scenario
@slow
def svc_netchange_two_paths(t):
    """dnsfwd and its upstream in two namespaces joined by two veth paths: a docker-like veth (172.17.0.1/16) beside dnsfwd keeps the connection and the session ticket; moving the route to the upstream from path A to path B drops the connection within 2 s, and the next one is a full handshake from path B's address."""
    def body():
        peer, fu = _two_paths(t)
        try:
            _two_paths_body(t, fu)
        finally:
            peer.close()

    in_netns(body)


def _two_paths_body(t, fu):
    d = t.dnsfwd(*_paths_up(fu), "--timeout", "3000", "--connections", "1")
    # A new veth may take a moment to carry.
    it.ask_answered(d.port, "pa1-", "over path A", seconds=10)
    it.check(_local_addrs(d.proc.pid, fu.port) == {"10.1.0.2"}, "dnsfwd's "
             "connection is from %s, want 10.1.0.2 (path A)" %
             _local_addrs(d.proc.pid, fu.port))
    _apply([("link", "add", "vdock", "type", "veth", "peer", "name",
             "vdockp"), ("addr", "add", "172.17.0.1/16", "dev", "vdock"),
            ("link", "set", "vdock", "up"), ("link", "set", "vdockp", "up")])
    time.sleep(SETTLE)
    it.expect_a(it.ask_udp(d.port, "pa2.example."), what="after the veth")
    st = fu.stats()
    it.check(st["conns"] == 1 and st["closed"] == 0, "a docker-like veth "
             "cost the connection: fakeup %s" % st)
    # The ticket was kept: a reconnect after the server closes resumes.
    fu.close_all(graceful=True)
    time.sleep(0.15)
    it.expect_a(it.ask_udp(d.port, "pa3.example."), what="reconnect")
    st = fu.stats()
    it.check(st["handshakes"] == 2 and st["resumed"] == 1, "after the veth "
             "the reconnect did not resume: fakeup %s" % st)
    t0 = time.monotonic()
    ip("route", "replace", PATHS_UP % 0 + "/24", "via", "10.2.0.1", "dev",
       "vB")
    dropped = scen.until(lambda: "10.1.0.2" not in _local_addrs(
        d.proc.pid, fu.port), 3.0)
    dt = time.monotonic() - t0
    it.check(dropped and dt < 2.0, "the connection over path A was %s "
             "after the route moved to path B" %
             ("dropped %.2f s" % dt if dropped else "not dropped in 3 s"))
    it.expect_a(it.ask_udp(d.port, "pb1.example."), what="over path B")
    st, ds = fu.stats(), d.stats()
    it.check(st["conns"] == 3 and st["handshakes"] == 3 and
             st["resumed"] == 1, "after the move: fakeup %s; want a third "
             "connection with a full handshake" % st)
    it.check(ds["tls_full"] == 2 and ds["tls_resumed"] == 1, "dnsfwd counts "
             "tls_full=%d tls_resumed=%d, want 2 and 1" % (ds["tls_full"],
                                                          ds["tls_resumed"]))
    it.check(_local_addrs(d.proc.pid, fu.port) == {"10.2.0.2"}, "dnsfwd's "
             "connection is from %s, want 10.2.0.2 (path B)" %
             _local_addrs(d.proc.pid, fu.port))


def _nlshim(t):
    """tests/nlshim.c built into t's directory: an LD_PRELOAD library
    that swallows route lookups."""
    cc = shutil.which("cc")
    if cc is None:
        raise it.Skip("no C compiler for tests/nlshim.c")
    so = os.path.join(t.dir, "nlshim.so")
    p = subprocess.run([cc, "-shared", "-fPIC", "-o", so,
                        os.path.join(it.HERE, "nlshim.c"), "-ldl"],
                       capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise it.Fail("building nlshim.so: %s" % p.stderr[-400:])
    return so


def _ask_stream(d, tag, stop, lat):
    """Asks a new name every 50 ms until stop is set; each time taken (or
    None when unanswered) goes into lat."""
    for i in itertools.count():
        if stop.is_set():
            return
        r = it.ask_udp(d.port, "%s%d.example." % (tag, i), timeout=3.0)
        lat.append(r.elapsed if r.msg is not None else None)
        time.sleep(0.05)


@scenario
@slow
def svc_netchange_lost_route_replies(t):
    """Route lookups the kernel never answers (swallowed by tests/nlshim.c) neither stall the event loop nor count as a change: with 8 upstreams and an address event every 400 ms for 3 s, every query is answered within 1 s (not the 1.6 s of 8 blocking lookups) and no connection is replaced; a connection's local address going away is still seen (from the address dump) and the connection replaced within 2 s."""
    so = _nlshim(t)

    def body():
        peer, fu = _two_paths(t, nups=8)
        try:
            _lost_replies_body(t, fu, so)
        finally:
            peer.close()

    in_netns(body)


def _lost_replies_body(t, fu, so):
    env = {"LD_PRELOAD": so,
           # ASan wants to be first among the libraries; nlshim must be.
           "ASAN_OPTIONS": ":".join(filter(None, (
               os.environ.get("ASAN_OPTIONS"), "verify_asan_link_order=0")))}
    d = t.dnsfwd(*_paths_up(fu, 8), "--timeout", "3000", "--connections",
                 "1", env=env)
    it.ask_answered(d.port, "lr-first-", "over path A", seconds=10)
    for i in range(16):
        it.expect_a(it.ask_udp(d.port, "lr-warm%d.example." % i))
    new_link("d3")
    stop, lat = threading.Event(), []
    th = threading.Thread(target=_ask_stream, args=(d, "lr", stop, lat))
    th.start()
    try:
        for i in range(8):
            ip("addr", "del" if i % 2 else "add", "10.78.0.1/24", "dev",
               "d3")
            time.sleep(0.4)
        time.sleep(SETTLE)
    finally:
        stop.set()
        th.join(10)
    answered = [x for x in lat if x is not None]
    t.note("%d queries during the events, slowest %.3f s" % (
        len(lat), max(answered or [0])))
    it.check(max(answered or [0]) < 1.0, "a query took %.2f s while "
             "rtnetlink events were looked at: the event loop waited" %
             max(answered or [0]))
    it.check(len(lat) >= 10 and len(answered) == len(lat), "%d of %d "
             "queries answered during the events" % (len(answered), len(lat)))
    st = fu.stats()
    it.check(st["closed"] == 0, "events that moved nothing cost %d "
             "connections: fakeup %s" % (st["closed"], st))
    # Path A stays up from 10.1.0.3; the route lookups are still swallowed.
    # dnsfwd's FIN cannot leave from an address that is gone: look at
    # its side of the connections.
    ip("addr", "del", "10.1.0.2/24", "dev", "vA")
    it.check(scen.until(lambda: "10.1.0.2" not in _local_addrs(
        d.proc.pid, fu.port), 2.0), "a connection's local address went "
             "away and dnsfwd kept the connection")
    it.expect_a(it.ask_udp(d.port, "lr-after.example."),
                what="from 10.1.0.3")
    it.check(_local_addrs(d.proc.pid, fu.port) <= {"10.1.0.3"}, "dnsfwd's "
             "connections are from %s, want 10.1.0.3" %
             _local_addrs(d.proc.pid, fu.port))


# ---------------------------------------------------------------- TCP_USER_TIMEOUT

def _peer_sockopt(pid, fd, level, opt):
    """getsockopt on descriptor fd of process pid, through pidfd_getfd."""
    pidfd = os.pidfd_open(pid)
    try:
        n = _libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
        if n < 0:
            e = ctypes.get_errno()
            if e in (errno.ENOSYS, errno.EPERM):
                raise it.Skip("pidfd_getfd: %s" % os.strerror(e))
            raise it.Fail("pidfd_getfd(%d, %d): %s" % (pid, fd,
                                                       os.strerror(e)))
        s = socket.socket(fileno=n)
        try:
            return struct.unpack("I", s.getsockopt(level, opt, 4))[0]
        finally:
            s.detach()
            os.close(n)
    finally:
        os.close(pidfd)


@scenario
def svc_tcp_user_timeout(t):
    """dnsfwd's upstream TCP sockets carry TCP_USER_TIMEOUT equal to --timeout, and at least 1000 ms."""
    if not hasattr(os, "pidfd_open"):
        raise it.Skip("no os.pidfd_open")
    fu = t.fakeup()
    for timeout, want in (("3000", 3000), ("400", 1000)):
        d = t.dnsfwd(*it.tls_up(fu), "--timeout", timeout, "--connections",
                     "1")
        it.ask_answered(d.port, "ut%s-" % timeout, "--timeout " + timeout)
        pid = d.proc.pid
        ups = {e["inode"] for e in proc_net(pid, "tcp")
               if e["rport"] == fu.port and e["state"] == 1}
        fds = [f for f, n in fd_inodes(pid).items() if n in ups]
        it.check(len(fds) == 1, "--timeout %s: %d upstream sockets found" %
                 (timeout, len(fds)))
        got = _peer_sockopt(pid, fds[0], socket.IPPROTO_TCP,
                            TCP_USER_TIMEOUT)
        it.check(got == want, "--timeout %s: TCP_USER_TIMEOUT %d ms, want "
                 "%d" % (timeout, got, want))
        d.stop_and_check()


# ---------------------------------------------------------------- sidecars

UNBOUND_FRONT = """server:
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "%(dir)s"
    pidfile: "%(dir)s/front-unbound.pid"
    logfile: ""
    use-syslog: no
    verbosity: 1
    num-threads: 1
    interface: 127.0.0.1@%(port)d
    port: %(port)d
    do-ip6: no
    so-reuseport: no
    access-control: 127.0.0.0/8 allow
    module-config: "iterator"
    do-not-query-localhost: no
remote-control:
    control-enable: no
forward-zone:
    name: "."
    forward-addr: 127.0.0.1@%(dport)d
"""


@scenario
def svc_sidecar_unbound(t):
    """README's sidecar recipe: unbound forwarding '.' to dnsfwd on 127.0.0.1 (do-not-query-localhost: no) answers with what dnsfwd's DoT upstream said."""
    ub = "/usr/sbin/unbound"
    if not os.access(ub, os.X_OK):
        raise it.Skip("unbound not installed")
    fu = t.fakeup()
    d = t.dnsfwd(*it.tls_up(fu), "--timeout", "2000")
    conf = os.path.join(t.dir, "front-unbound.conf")

    def argv_for(port):
        with open(conf, "w") as f:
            f.write(UNBOUND_FRONT % {"dir": t.dir, "port": port,
                                     "dport": d.port})
        return [ub, "-d", "-c", conf]
    port, _ = _start_front(t, argv_for)
    r = it.ask_udp(port, "sidecar-unbound.example.")
    it.expect_a(r, what="query to unbound in front of dnsfwd")
    r = it.ask_tcp(port, "sidecar-unbound-tcp.example.")
    it.expect_a(r, what="TCP query to unbound in front of dnsfwd")
    it.check(fu.count("sidecar-unbound.example.") >= 1, "the query did not "
             "reach dnsfwd's upstream")
    it.check(d.stats()["queries"] >= 2, "dnsfwd counted no queries")


@scenario
def svc_sidecar_dnsmasq(t):
    """README's sidecar recipe: dnsmasq with no-resolv and server=127.0.0.1#PORT answers with what dnsfwd's DoT upstream said."""
    dm = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    if not os.access(dm, os.X_OK):
        raise it.Skip("dnsmasq not installed (package dnsmasq-base)")
    fu = t.fakeup()
    d = t.dnsfwd(*it.tls_up(fu), "--timeout", "2000")
    port, _ = _start_front(t, lambda port: [
        dm, "--keep-in-foreground", "--conf-file=/dev/null",
        "--port=%d" % port, "--no-resolv", "--no-hosts",
        "--server=127.0.0.1#%d" % d.port, "--listen-address=127.0.0.1",
        "--bind-interfaces", "--pid-file=", "--user=nobody",
        "--group=nogroup", "--log-facility=-"])
    it.expect_a(it.ask_udp(port, "sidecar-dnsmasq.example."),
                what="query to dnsmasq in front of dnsfwd")
    it.expect_a(it.ask_tcp(port, "sidecar-dnsmasq-tcp.example."),
                what="TCP query to dnsmasq in front of dnsfwd")
    it.check(fu.count("sidecar-dnsmasq.example.") >= 1, "the query did not "
             "reach dnsfwd's upstream")

#!/usr/bin/python3
"""Checks of the systemd units, the example /etc/default/dnsfwd, and
`make install` / `make uninstall`.

    /usr/bin/python3 tests/units.py [-k SUBSTRING]

Run from the top of the tree, after `make dnsfwd` (install builds it if it
is out of date).  Every check is a function below whose docstring is the
claim it checks.  The tree is installed into temporary DESTDIRs, never into
the system.  `systemd-analyze security` and `verify` read unit files
offline; the last check runs the installed dnsfwd, socket-activated by this
script, under a seccomp filter built from the unit's SystemCallFilter=,
SystemCallArchitectures= and RestrictAddressFamilies= (the rest of the
sandbox needs systemd as PID 1).

Prints "ok NAME", "FAIL NAME: reason" or "skip NAME: reason" per check,
then "N passed, N failed" (and ", N skipped"); exits 1 if any failed.
Checks that need systemd-analyze are skipped, and counted, without it.
"""

import argparse
import ctypes
import fcntl
import os
import platform
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import checks  # noqa: E402
from checks import Fail, Skip, check  # noqa: E402,F401

MAX_EXPOSURE = 1.2
UNITDIR = "usr/local/lib/systemd/system"
FILES = {                       # what `make install` puts, and its mode
    "usr/local/sbin/dnsfwd": 0o755,
    "usr/local/share/man/man8/dnsfwd.8": 0o644,
    UNITDIR + "/dnsfwd.service": 0o644,
    UNITDIR + "/dnsfwd.socket": 0o644,
    "etc/default/dnsfwd": 0o644,
}
ANALYZE = shutil.which("systemd-analyze")
WORK = None                     # temporary directory, set in main()
PROCS = []                      # every Popen we started, killed by PID


def need_analyze():
    if ANALYZE is None:
        raise Skip("systemd-analyze not installed")


def run(argv, **kw):
    return subprocess.run(argv, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=120,
                          **kw)


def make(target, destdir, *args):
    # Nothing from an outer make or the environment: PREFIX, DESTDIR and
    # UNITDIR are ?= variables, and MAKEFLAGS carries command-line ones.
    env = {k: v for k, v in os.environ.items() if k not in
           ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "PREFIX",
            "DESTDIR", "UNITDIR")}
    p = run(["make", "-s", "-C", TOP, target, "DESTDIR=" + destdir] +
            list(args), env=env)
    check(p.returncode == 0, "make %s: exit %d: %s" %
          (target, p.returncode, p.stdout.strip()[-500:]))
    return p.stdout


def fresh(name):
    d = os.path.join(WORK, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    return d


def tree(root):
    """{relative path: mode} of the files (not directories) under root."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for f in files + [d for d in dirs
                          if os.path.islink(os.path.join(dirpath, d))]:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = os.lstat(p).st_mode & 0o7777
    return out


def read(path, mode="r"):
    with open(path, mode) as f:
        return f.read()


_INSTALLED = None


def installed():
    """A pristine `make install DESTDIR=...` with the default PREFIX."""
    global _INSTALLED
    if _INSTALLED is None:
        _INSTALLED = fresh("installed")
        make("install", _INSTALLED)
    return _INSTALLED


def parse_unit(path):
    """[(section, key, value)] in order; comments dropped, continued lines
    joined, as systemd reads them."""
    out, section, cont = [], None, ""
    for line in read(path).splitlines():
        line = cont + line.strip()
        cont = ""
        if line.endswith("\\"):
            cont = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        check(sep == "=", "%s: not key=value: %r" % (path, line))
        out.append((section, key.strip(), value.strip()))
    return out


def values(unit, section, key):
    """Every value given for key, an empty assignment resetting the list."""
    vals = []
    for s, k, v in unit:
        if s == section and k == key:
            vals = [] if v == "" else vals + [v]
    return vals


def words(unit, section, key):
    return [w for v in values(unit, section, key) for w in v.split()]


def one(unit, section, key):
    v = values(unit, section, key)
    check(len(v) == 1, "[%s] %s= given %d times, want once: %r" %
          (section, key, len(v), v))
    return v[0]


# ----------------------------------------------------------------- install

def install_tree():
    """make install puts dnsfwd, dnsfwd.8, both units and /etc/default/dnsfwd, with modes 755/644, and nothing else."""
    root = installed()
    got = tree(root)
    check(set(got) == set(FILES), "installed %s, want %s" %
          (sorted(got), sorted(FILES)))
    for path, mode in FILES.items():
        check(got[path] == mode, "%s: mode %o, want %o" %
              (path, got[path], mode))
    for path, src in (("usr/local/sbin/dnsfwd", "dnsfwd"),
                      ("usr/local/share/man/man8/dnsfwd.8", "dnsfwd.8"),
                      (UNITDIR + "/dnsfwd.service", "dnsfwd.service"),
                      (UNITDIR + "/dnsfwd.socket", "dnsfwd.socket"),
                      ("etc/default/dnsfwd", "dnsfwd.default")):
        check(read(os.path.join(root, path), "rb") ==
              read(os.path.join(TOP, src), "rb"),
              "%s differs from %s" % (path, src))


def install_prefix():
    """With PREFIX=/usr the units go to /usr/lib/systemd/system and ExecStart= names /usr/sbin/dnsfwd; UNITDIR= moves the units."""
    root = fresh("prefix")
    make("install", root, "PREFIX=/usr")
    svc = os.path.join(root, "usr/lib/systemd/system/dnsfwd.service")
    check(os.path.exists(svc), "no usr/lib/systemd/system/dnsfwd.service")
    check(os.path.exists(os.path.join(root, "usr/sbin/dnsfwd")),
          "no usr/sbin/dnsfwd")
    text = read(svc)
    check("/usr/local" not in text, "/usr/local left in the unit")
    u = parse_unit(svc)
    check(one(u, "Service", "ExecStart").split()[0] == "/usr/sbin/dnsfwd",
          "ExecStart=%s" % one(u, "Service", "ExecStart"))
    root = fresh("unitdir")
    make("install", root, "PREFIX=/usr", "UNITDIR=/lib/systemd/system")
    check(os.path.exists(os.path.join(root, "lib/systemd/system/"
                                      "dnsfwd.socket")),
          "UNITDIR=/lib/systemd/system: no lib/systemd/system/dnsfwd.socket")


def install_keeps_default():
    """make install over a changed /etc/default/dnsfwd keeps it; make uninstall keeps it too, says so, and removes everything else."""
    root = fresh("keep")
    make("install", root)
    conf = os.path.join(root, "etc/default/dnsfwd")
    mine = "DNSFWD_OPTS=\"--connect-tls 192.0.2.53#dns.example\"\n"
    with open(conf, "w") as f:
        f.write(mine)
    make("install", root)
    check(read(conf) == mine, "install overwrote a changed "
          "/etc/default/dnsfwd")
    out = make("uninstall", root)
    check(read(conf) == mine, "uninstall removed a changed "
          "/etc/default/dnsfwd")
    check("kept" in out and "etc/default/dnsfwd" in out,
          "uninstall did not say it kept the file: %r" % out)
    left = tree(root)
    check(list(left) == ["etc/default/dnsfwd"], "left behind: %s" %
          sorted(left))


def uninstall_clean():
    """make uninstall after make install leaves nothing but directories."""
    root = fresh("uninstall")
    make("install", root)
    make("uninstall", root)
    left = tree(root)
    check(not left, "left behind: %s" % sorted(left))


# ------------------------------------------------------------------- units

def service_deps():
    """The service is Type=notify, NotifyAccess=main, requires and follows dnsfwd.socket, comes before nss-lookup.target and pulls it in, and names no network*.target at all."""
    u = parse_unit(os.path.join(installed(), UNITDIR, "dnsfwd.service"))
    check(one(u, "Service", "Type") == "notify", "Type= not notify")
    check(one(u, "Service", "NotifyAccess") == "main", "NotifyAccess=")
    for key in ("Requires", "After"):
        check("dnsfwd.socket" in words(u, "Unit", key),
              "dnsfwd.socket not in %s=" % key)
    for key in ("Wants", "Before"):
        check("nss-lookup.target" in words(u, "Unit", key),
              "nss-lookup.target not in %s=" % key)
    for s, k, v in u:
        check(not re.search(r"\bnetwork(-online|-pre)?\.target\b", v),
              "[%s] %s=%s: no network target wanted (connections open "
              "lazily; an ordering on it can make a boot cycle)" % (s, k, v))
    check(one(u, "Install", "Also") == "dnsfwd.socket", "Also=")
    check(one(u, "Unit", "Documentation") == "man:dnsfwd(8)",
          "Documentation=")


def service_exec():
    """ExecStart= runs dnsfwd with $DNSFWD_OPTS from EnvironmentFile=-/etc/default/dnsfwd and no ExecStartPre= (whose failure RestartPreventExitStatus= cannot stop); Restart=on-failure except after exit status 2, a usage error; a WatchdogSec=."""
    u = parse_unit(os.path.join(installed(), UNITDIR, "dnsfwd.service"))
    check(one(u, "Service", "EnvironmentFile") == "-/etc/default/dnsfwd",
          "EnvironmentFile=")
    check(not values(u, "Service", "ExecStartPre"),
          "ExecStartPre=%s: a failure there is retried whatever "
          "RestartPreventExitStatus= says" % values(u, "Service",
                                                    "ExecStartPre"))
    check(one(u, "Service", "ExecStart") ==
          "/usr/local/sbin/dnsfwd $DNSFWD_OPTS",
          "ExecStart=%s" % one(u, "Service", "ExecStart"))
    check(one(u, "Service", "Restart") == "on-failure", "Restart=")
    check(one(u, "Service", "RestartPreventExitStatus") == "2",
          "RestartPreventExitStatus=, want 2 (usage error, see dnsfwd(8))")
    m = re.fullmatch(r"(\d+)s?", one(u, "Service", "WatchdogSec"))
    check(m and 2 <= int(m.group(1)) <= 300, "WatchdogSec=")
    check(one(u, "Service", "DynamicUser") == "yes", "DynamicUser=")
    for key in ("CapabilityBoundingSet", "AmbientCapabilities"):
        check([v for s, k, v in u if s == "Service" and k == key][-1:] ==
              [""], "%s= not empty" % key)
    check(not words(u, "Service", "IPAddressDeny"),
          "IPAddressDeny=: upstreams may be anywhere")


def socket_addrs():
    """The socket unit listens on 127.0.0.1:53 and [::1]:53, UDP and TCP, IPv6 only on [::1], and is wanted by sockets.target."""
    u = parse_unit(os.path.join(installed(), UNITDIR, "dnsfwd.socket"))
    want = ["127.0.0.1:53", "[::1]:53"]
    for key in ("ListenDatagram", "ListenStream"):
        check(sorted(values(u, "Socket", key)) == sorted(want),
              "%s=%s, want %s" % (key, values(u, "Socket", key), want))
    check(one(u, "Socket", "BindIPv6Only") == "ipv6-only", "BindIPv6Only=")
    check(not values(u, "Socket", "ReusePort") or
          one(u, "Socket", "ReusePort") in ("no", "false"), "ReusePort=")
    check(one(u, "Install", "WantedBy") == "sockets.target", "WantedBy=")


def default_opts():
    """/etc/default/dnsfwd sets DNSFWD_OPTS to the four Quad9 and Cloudflare upstreams, and dnsfwd --check accepts them (as dnsfwd will when it starts)."""
    root = installed()
    conf = os.path.join(root, "etc/default/dnsfwd")
    p = run(["/bin/sh", "-c", '. "$1"; printf %s "$DNSFWD_OPTS"', "sh",
             conf])
    check(p.returncode == 0, "sh could not read it: %s" % p.stdout)
    opts = p.stdout.split()
    ups = [opts[i + 1] for i, o in enumerate(opts[:-1])
           if o == "--connect-tls"]
    want = ["9.9.9.9#dns.quad9.net", "149.112.112.112#dns.quad9.net",
            "1.1.1.1#cloudflare-dns.com", "1.0.0.1#cloudflare-dns.com"]
    check(ups == want, "upstreams %s, want %s" % (ups, want))
    check(not any(o.startswith("--bind") for o in opts),
          "--bind-* in DNSFWD_OPTS: the socket unit binds")
    p = run([os.path.join(root, "usr/local/sbin/dnsfwd"), "--check"] + opts)
    check(p.returncode == 0, "dnsfwd --check: exit %d: %s" %
          (p.returncode, p.stdout.strip()))
    check(len(p.stdout.strip().splitlines()) == 1,
          "dnsfwd --check printed %r, want one line" % p.stdout)


# --------------------------------------------------------- systemd-analyze

def security():
    """systemd-analyze security --offline=true rates the installed service at most 1.2."""
    need_analyze()
    svc = os.path.join(installed(), UNITDIR, "dnsfwd.service")
    p = run([ANALYZE, "security", "--offline=true", "--no-pager", svc])
    m = re.search(r"Overall exposure level for dnsfwd\.service: "
                  r"([0-9.]+)", p.stdout)
    check(m, "no overall exposure level in: %s" % p.stdout[-800:])
    level = float(m.group(1))
    worst = [line.strip() for line in p.stdout.splitlines()
             if line.startswith("✗")]
    check(level <= MAX_EXPOSURE, "exposure %.1f > %.1f; not met:\n  %s" %
          (level, MAX_EXPOSURE, "\n  ".join(worst)))


def verify():
    """systemd-analyze verify finds nothing to say about the installed units (its --root holding them beside the host's own units)."""
    need_analyze()
    # verify --root looks for every unit, sysinit.target included, under
    # the root, and the ExecStart= binary too; man(1) knows no root.
    root = fresh("verify")
    shutil.copytree(installed(), root, symlinks=True, dirs_exist_ok=True)
    for d in ("/usr/lib/systemd/system", "/lib/systemd/system"):
        if os.path.isdir(d) and os.path.exists(d + "/sysinit.target"):
            shutil.copytree(d, root + "/usr/lib/systemd/system",
                            symlinks=True, dirs_exist_ok=True)
            break
    env = dict(os.environ, MANPATH=root + "/usr/local/share/man",
               SYSTEMD_LOG_COLOR="0")
    p = run([ANALYZE, "verify", "--root=" + root,
             root + "/" + UNITDIR + "/dnsfwd.service",
             root + "/" + UNITDIR + "/dnsfwd.socket"], env=env)
    check(p.returncode == 0 and p.stdout.strip() == "",
          "exit %d: %s" % (p.returncode, p.stdout.strip()))


# ------------------------------------------------- the daemon in the filter

AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
AF = {"AF_UNIX": 1, "AF_INET": 2, "AF_INET6": 10, "AF_NETLINK": 16}
RET_ALLOW = 0x7FFF0000
RET_KILL_PROCESS = 0x80000000
LD_ABS, JEQ, JGE, RET = 0x20, 0x15, 0x35, 0x06
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2


def syscall_numbers():
    """{name: number} for this machine, from the C library's headers."""
    p = subprocess.run(["cc", "-E", "-dM", "-"], input="#include "
                       "<sys/syscall.h>\n", stdout=subprocess.PIPE,
                       stderr=subprocess.DEVNULL, text=True, timeout=60)
    defs = dict(re.findall(r"#define (__NR\w*) (.*)", p.stdout))
    out = {}
    for name in defs:
        if not name.startswith("__NR_"):
            continue
        v, seen = defs[name], 0
        while v in defs and seen < 5:       # __NR_x __NR3264_x
            v, seen = defs[v], seen + 1
        m = re.fullmatch(r"\(?\s*(\d+)\s*\)?", v.strip())
        if m:
            out[name[5:]] = int(m.group(1))
    return out


def filter_names(unit):
    """The syscall names the unit allows: @default (which systemd adds to
    an allow list) and the lists, groups expanded; ~lines take away."""
    allow = None
    names = set()

    def expand(w):
        if not w.startswith("@"):
            return {w}
        p = run([ANALYZE, "syscall-filter", "--no-pager", w])
        check(p.returncode == 0, "syscall-filter %s: %s" % (w, p.stdout))
        got = set()
        for line in p.stdout.splitlines()[1:]:
            line = line.strip()
            if line and not line.startswith("#"):
                got |= expand(line)
        return got
    for v in values(unit, "Service", "SystemCallFilter"):
        neg = v.startswith("~")
        if allow is None:
            allow = not neg
            if allow:
                names |= expand("@default")
        for w in v.lstrip("~").split():
            if neg:
                names -= expand(w)
            else:
                names |= expand(w)
    check(allow, "SystemCallFilter= is not an allow list")
    return names


def bpf_program(unit):
    """A classic BPF seccomp program equivalent to the unit's syscall
    filter and RestrictAddressFamilies=, killing the process on anything
    else (so that a miss is loud, where the unit would return EPERM)."""
    arch = AUDIT_ARCH.get(platform.machine())
    if arch is None:
        raise Skip("no audit arch known for %s" % platform.machine())
    nums = syscall_numbers()
    check("read" in nums and "socket" in nums,
          "cannot read syscall numbers from <sys/syscall.h>")
    check(one(unit, "Service", "SystemCallArchitectures") == "native",
          "SystemCallArchitectures= is not native")
    allowed = sorted({nums[n] for n in filter_names(unit) if n in nums})
    fams = words(unit, "Service", "RestrictAddressFamilies")
    check(fams and not fams[0].startswith("~") and
          all(f in AF for f in fams),
          "RestrictAddressFamilies=%s: want an allow list of %s" %
          (fams, sorted(AF)))
    ins = []

    def op(code, k, jt=0, jf=0):
        ins.append(struct.pack("=HBBI", code, jt, jf, k))
    op(LD_ABS, 4)                           # arch
    op(JEQ, arch, 1, 0)
    op(RET, RET_KILL_PROCESS)
    op(LD_ABS, 0)                           # nr
    if platform.machine() == "x86_64":      # x32 is another ABI
        op(JGE, 0x40000000, 0, 1)
        op(RET, RET_KILL_PROCESS)
    if nums["socket"] in allowed:
        allowed.remove(nums["socket"])
        op(JEQ, nums["socket"], 0, 2 * len(fams) + 2)
        op(LD_ABS, 16)                      # args[0], low half
        for f in fams:
            op(JEQ, AF[f], 0, 1)
            op(RET, RET_ALLOW)
        op(RET, RET_KILL_PROCESS)
    for n in allowed:
        op(JEQ, n, 0, 1)
        op(RET, RET_ALLOW)
    op(RET, RET_KILL_PROCESS)
    return b"".join(ins), {v: k for k, v in nums.items()}


def exec_filtered(argv):
    """Child side: --exec-filtered HEXPROG FD,FD,... PROGRAM ARGS...
    Moves FDs to 3, 4, ..., names itself in LISTEN_PID, loads the filter
    and becomes PROGRAM."""
    prog, fds, cmd = bytes.fromhex(argv[0]), argv[1], argv[2:]
    fds = [int(f) for f in fds.split(",") if f]
    high = [fcntl.fcntl(f, fcntl.F_DUPFD_CLOEXEC, 100) for f in fds]
    for f in fds:
        os.close(f)
    for i, f in enumerate(high):
        os.dup2(f, 3 + i)           # inheritable
        os.close(f)
    env = dict(os.environ)
    if fds:
        env["LISTEN_FDS"] = str(len(fds))
        env["LISTEN_PID"] = str(os.getpid())
    if "WATCHDOG_USEC" in env:
        env["WATCHDOG_PID"] = str(os.getpid())
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(prog)

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    fp = SockFprog(len(prog) // 8, ctypes.addressof(buf))
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 or \
       libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER,
                  ctypes.byref(fp), 0, 0) != 0:
        os.write(2, b"cannot load the seccomp filter\n")
        os._exit(97)
    os.execve(cmd[0], cmd, env)


def dns_query(name, qid):
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\0" + struct.pack(">HH", 1, 1)


def dns_ok(reply, qid):
    if len(reply) < 12:
        return "short reply"
    rid, flags, _, an = struct.unpack(">HHHH", reply[:8])
    if rid != qid or not flags & 0x8000:
        return "not our reply"
    if flags & 0xF:
        return "rcode %d" % (flags & 0xF)
    return None if an >= 1 else "no answer"


def ask(family, kind, addr, name, qid):
    s = socket.socket(family, kind)
    s.settimeout(3)
    try:
        q = dns_query(name, qid)
        if kind == socket.SOCK_DGRAM:
            s.sendto(q, addr)
            r = s.recv(4096)
        else:
            s.connect(addr)
            s.sendall(struct.pack(">H", len(q)) + q)
            r = b""
            while len(r) < 2 or len(r) < 2 + struct.unpack(">H", r[:2])[0]:
                b = s.recv(4096)
                if not b:
                    break
                r += b
            r = r[2:]
        return dns_ok(r, qid)
    except OSError as e:
        return str(e)
    finally:
        s.close()


def died(p, names, what):
    """Why the process p (a Popen that has ended) died, as best as can be
    said."""
    rc = p.returncode
    if rc != -signal.SIGSYS:
        return "%s: exit %s" % (what, rc)
    why = "%s: killed by the filter (SIGSYS)" % what
    try:   # the kernel logs the seccomp kill, with the syscall number
        log = subprocess.run(["dmesg"], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True,
                             timeout=10).stdout
        hits = re.findall(r"pid=%d .*? syscall=(\d+)" % p.pid, log)
        if hits:
            n = int(hits[-1])
            why += ": syscall %d (%s) is not allowed" % (n, names.get(n, "?"))
    except (OSError, subprocess.SubprocessError):
        pass
    return why


def sandbox_syscalls():
    """The installed dnsfwd, socket-activated on UDP and TCP, IPv4 and IPv6, under the unit's syscall and address-family filter: --check passes; it answers over TLS, notifies READY/WATCHDOG/STOPPING, logs stats on SIGUSR1 and exits 0 on SIGTERM."""
    need_analyze()
    import fakeup
    root = installed()
    unit = parse_unit(os.path.join(root, UNITDIR, "dnsfwd.service"))
    prog, names = bpf_program(unit)
    daemon = os.path.join(root, "usr/local/sbin/dnsfwd")
    pki = os.path.join(WORK, "pki")
    p = run(["sh", os.path.join(HERE, "mkcerts.sh"), pki])
    check(p.returncode == 0, "mkcerts.sh: %s" % p.stdout)
    up = fakeup.FakeUpstream(pki + "/server.pem", pki + "/server.key")
    up.start()
    socks, notify = [], None
    try:
        opts = ["--connect-tls", "127.0.0.1:%d#dns.test" % up.port,
                "--ca-file", pki + "/ca.pem", "--log-level", "debug"]
        launcher = [sys.executable, os.path.abspath(__file__),
                    "--exec-filtered", prog.hex()]
        # --check under the same filter (no longer an ExecStartPre=)
        c = subprocess.Popen(launcher + ["", daemon, "--check"] + opts,
                             stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
        PROCS.append(c)
        out = c.communicate(timeout=20)[0]
        check(c.returncode == 0, died(c, names, "dnsfwd --check") +
              ": " + out.strip()[-300:])
        # dnsfwd.socket
        fams = [socket.AF_INET]
        if socket.has_ipv6:
            try:
                socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).bind(
                    ("::1", 0))
                fams.append(socket.AF_INET6)
            except OSError:
                pass
        for fam in fams:
            host = "127.0.0.1" if fam == socket.AF_INET else "::1"
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                s = socket.socket(fam, kind)
                if fam == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                s.bind((host, 0))
                if kind == socket.SOCK_STREAM:
                    s.listen(64)
                socks.append(s)
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        npath = os.path.join(WORK, "notify")
        notify.bind(npath)
        env = dict(os.environ, NOTIFY_SOCKET=npath, WATCHDOG_USEC="400000")
        log = open(os.path.join(WORK, "dnsfwd.log"), "w+")
        d = subprocess.Popen(launcher + [",".join(str(s.fileno())
                                                  for s in socks), daemon] +
                             opts, stdout=log, stderr=subprocess.STDOUT,
                             env=env, pass_fds=[s.fileno() for s in socks])
        PROCS.append(d)
        msgs = []

        def await_msg(want, secs):
            end = time.monotonic() + secs
            while want not in msgs and time.monotonic() < end:
                gone = d.poll() is not None
                r, _, _ = select.select([notify], [], [], 0 if gone else 0.1)
                if r:
                    msgs.extend(notify.recv(4096).decode().split("\n"))
                elif gone:
                    break
            return want in msgs

        def why():
            d.poll()
            log.seek(0)
            tail = log.read().strip()[-600:]
            if d.returncode is not None:
                return died(d, names, "dnsfwd") + ": " + tail
            return "log: " + tail
        check(await_msg("READY=1", 5), "no READY=1; " + why())
        qid = 100
        for s in socks:
            qid += 1
            err = ask(s.family, s.type, s.getsockname()[:2],
                      "q%d.example" % qid, qid)
            check(err is None, "%s %s: %s; %s" % (
                "udp" if s.type == socket.SOCK_DGRAM else "tcp",
                s.getsockname()[:2], err, why()))
        check(await_msg("WATCHDOG=1", 2), "no WATCHDOG=1; " + why())
        d.send_signal(signal.SIGUSR1)
        end = time.monotonic() + 2
        while time.monotonic() < end:
            log.seek(0)
            if "stats:" in log.read():
                break
            time.sleep(0.05)
        log.seek(0)
        check("stats:" in log.read(), "no stats after SIGUSR1; " + why())
        d.send_signal(signal.SIGTERM)
        try:
            d.wait(3)
        except subprocess.TimeoutExpired:
            raise Fail("still running 3 s after SIGTERM")
        check(d.returncode == 0, why())
        check(await_msg("STOPPING=1", 0.5), "no STOPPING=1")
    finally:
        for s in socks:
            s.close()
        if notify is not None:
            notify.close()
        up.stop()


CHECKS = [install_tree, install_prefix, install_keeps_default,
          uninstall_clean, service_deps, service_exec, socket_addrs,
          default_opts, security, verify, sandbox_syscalls]


def main():
    global WORK
    if sys.argv[1:2] == ["--exec-filtered"]:
        exec_filtered(sys.argv[2:])
        return 97
    ap = argparse.ArgumentParser()
    ap.add_argument("-k", default="")
    args = ap.parse_args()
    WORK = tempfile.mkdtemp(prefix="dnsfwd-units.")
    passed = failed = skipped = 0
    try:
        passed, failed, skipped = checks.run(CHECKS, args.k)
    finally:
        for p in PROCS:
            if p.poll() is None:
                p.kill()
                p.wait()
        if failed:
            print("work directory kept:", WORK)
        else:
            shutil.rmtree(WORK, ignore_errors=True)
    print("%d passed, %d failed%s" % (passed, failed,
                                      ", %d skipped" % skipped if skipped
                                      else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/python3
"""The Debian package, installed with apt on Debian 12 and Debian 13
booted with systemd as PID 1, checked as a user would (issue 17).

    /usr/bin/python3 tests/boottest.py [--dist bookworm|trixie]... [--keep]

Run from the top of the tree, as root.  It

- makes (once, then from a cache) minimal Debian roots with mmdebstrap from
  the Debian mirror this host's apt uses: for each of bookworm and trixie a
  root to boot, holding what the checks use (systemd, systemd-resolved,
  unbound, kdig) and dnsfwd's run-time libraries, and a trixie root with
  dnsfwd's build dependencies and lintian.  The roots are kept as tarballs
  in $BOOT_TEST_CACHE (default /var/cache/dnsfwd-boot-test, which a fresh
  clone of the tree finds again), remade after 14 days when the mirror is
  reachable, and every run unpacks a fresh copy under build/boot/roots;
- builds the package twice for each release with `make deb`, the second
  time with a higher version (DEB_VERSION=) for the upgrade: on this host
  for bookworm, inside the trixie build root (systemd-nspawn) for trixie;
  `make deb` fails on any lintian error or warning;
- boots each root with systemd-nspawn --boot, its own network namespace
  (loopback only: nothing leaves it), and drives it with nsenter into the
  namespaces of its PID 1.  Inside, unbound serves DNS-over-TLS on
  127.0.0.1:853 with a test CA (tests/mkcerts.sh), and the checks below
  run in order; each prints "ok DIST: CLAIM", "FAIL DIST: CLAIM: why" or
  "skip DIST: CLAIM: why".

The machine must allow it: without root, systemd-nspawn, mmdebstrap or
namespaces, or when a root is not cached and the mirror cannot be reached,
the release is skipped, and counted.  Every container is powered off, and
killed if it does not stop, also on failure or interrupt (and, through
PR_SET_PDEATHSIG, when this script is killed).  Ends with
"N passed, N failed" (and ", N skipped"); exits 1 if any failed.  The
unpacked roots are removed after a run without failures, kept otherwise
(--keep keeps them always), with each container's journal and console in
build/boot/DIST.*.log.
"""

import argparse
import concurrent.futures
import glob
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
WORK = os.path.join(TOP, "build", "boot")
CACHE = os.environ.get("BOOT_TEST_CACHE", "/var/cache/dnsfwd-boot-test")
MAX_AGE = 14 * 86400            # remake a cached root after this (seconds)
SCHEMA = 1                      # bump to remake every cached root

# What each booted root holds besides the essential packages and apt:
# systemd and what the checks use, and dnsfwd's run-time dependencies
# (apt installs the .deb without a network, so they must be there).
TEST_PKGS = ["systemd", "dbus", "systemd-resolved", "libnss-resolve",
             "unbound", "knot-dnsutils", "iproute2", "ca-certificates",
             "libev4"]
DISTS = {
    # release: (run-time mbedTLS, is TLS 1.3 expected, where it is built)
    "bookworm": (["libmbedtls14"], False, "host"),
    "trixie": (["libmbedtls21"], True, "trixie-build"),
}
BUILD_PKGS = ["build-essential", "debhelper", "dpkg-dev", "libev-dev",
              "libmbedtls-dev", "lintian", "ca-certificates"]
# In the booted roots: the distribution's unbound.service would take
# 127.0.0.1:53 (our own unbound instances are started by the checks), and
# the apt timers would only try the network.
TEST_HOOKS = [
    'systemctl --root="$1" --quiet mask unbound.service '
    'unbound-resolvconf.service apt-daily.timer apt-daily-upgrade.timer',
    'echo dnsfwd-boottest >"$1/etc/hostname"',
    'printf "127.0.0.1 localhost dnsfwd-boottest\\n::1 localhost '
    'ip6-localhost ip6-loopback\\n" >"$1/etc/hosts"',
]

UPSTREAM_VERSION_SUFFIX = "+boottest1"      # the upgrade's version
WWW = "192.0.2.80"                          # www.test, in the upstream
VIA_RESOLVED = "192.0.2.85"                 # resolved.test
DEBDIR = "/srv/boottest-debs"               # the .debs, inside the roots
TESTDIR = "/etc/boottest"                   # CA, keys, unbound configs
CONF = "/etc/default/dnsfwd"
DOT_OPTS = ("--connect-tls 127.0.0.1:853#dns.test --ca-file %s/ca.pem"
            % TESTDIR)
RESOLVED_DROPIN = """[Resolve]
DNS=127.0.0.1
Domains=~.
DNSOverTLS=no
"""

UNBOUND_COMMON = """server:
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "%(dir)s"
    pidfile: ""
    use-syslog: no
    logfile: ""
    verbosity: 1
    num-threads: 1
    do-ip6: no
    access-control: 127.0.0.0/8 allow
    module-config: "iterator"
    local-zone: "test." static
"""
# The DNS-over-TLS upstream dnsfwd forwards to.
UNBOUND_DOT = UNBOUND_COMMON + """    interface: 127.0.0.1@853
    tls-port: 853
    tls-service-key: "%(dir)s/server.key"
    tls-service-pem: "%(dir)s/server.pem"
    local-data: "www.test. 300 IN A %(www)s"
    local-data: "resolved.test. 300 IN A %(resolved)s"
remote-control:
    control-enable: no
"""
# Another DNS server holding 127.0.0.1:53 while the package is installed.
UNBOUND_PORT53 = UNBOUND_COMMON + """    interface: 127.0.0.1@53
remote-control:
    control-enable: no
"""

PRINT = threading.Lock()


class Fail(Exception):
    pass


class Skip(Exception):
    pass


class Abort(Exception):
    """A failure after which the release's later checks cannot run."""


def check(cond, msg):
    if not cond:
        raise Fail(msg)


def say(*words):
    with PRINT:
        print(*words)
        sys.stdout.flush()


def tail(text, n=12):
    lines = (text or "").strip().splitlines()
    return "\n    " + "\n    ".join(lines[-n:]) if lines else " (no output)"


class Tally:
    def __init__(self):
        self.passed = self.failed = self.skipped = 0

    def add(self, what):
        with PRINT:
            setattr(self, what, getattr(self, what) + 1)


TALLY = Tally()


PROCS = []                      # long-running children, each its own group
CGROUPS = []                    # the containers' cgroups


def spawn(argv, **kw):
    """Popen in a process group of its own, stopped by stop_all()."""
    p = subprocess.Popen(argv, start_new_session=True, **kw)
    with PRINT:
        PROCS.append(p)
    return p


def stop_all():
    """On the way out: SIGTERM to every group still running (systemd-nspawn
    then powers its container off), SIGKILL to any left after 30 s."""
    live = [p for p in PROCS if p.poll() is None]
    for p in live:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    end = time.monotonic() + 30
    for p in live:
        try:
            p.wait(max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


def run(argv, timeout, **kw):
    return subprocess.run(argv, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True,
                          timeout=timeout, **kw)


def clean_env():
    """The environment without what an outer make passes down."""
    return {k: v for k, v in os.environ.items() if k not in
            ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "PREFIX",
             "DESTDIR", "UNITDIR", "DEB_OUT", "DEB_VERSION", "DEB_LINTIAN")}


# ----------------------------------------------------------- the machine

def machine_allows():
    """None, or why the boot test cannot run here."""
    if os.geteuid() != 0:
        return "not root"
    for tool in ("systemd-nspawn", "nsenter", "mmdebstrap", "setpriv",
                 "dpkg-buildpackage", "lintian"):
        if shutil.which(tool) is None:
            return "no %s (make check installs it)" % tool
    p = run(["unshare", "--mount", "--net", "--pid", "--fork", "true"], 20)
    if p.returncode != 0:
        return "cannot make namespaces: %s" % p.stdout.strip()
    if cgroup2_mount() is None:
        return "no cgroup v2 hierarchy mounted"
    return None


def apt_sources():
    """[(uri, suite)] of this host's apt sources, one-line and deb822."""
    out = []
    for path in ["/etc/apt/sources.list"] + sorted(
            glob.glob("/etc/apt/sources.list.d/*.list")):
        try:
            lines = open(path).read().splitlines()
        except OSError:
            continue
        for line in lines:
            line = re.sub(r"\[[^]]*\]", " ", line.split("#")[0]).split()
            if len(line) >= 3 and line[0] == "deb":
                out.append((line[1], line[2]))
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        try:
            text = open(path).read()
        except OSError:
            continue
        for para in re.split(r"\n\s*\n", text):
            f = {}
            for line in para.splitlines():
                if line.startswith("#") or ":" not in line:
                    continue
                k, v = line.split(":", 1)
                f[k.strip().lower()] = v.split()
            if "deb" in f.get("types", []) and f.get("enabled",
                                                      ["yes"]) != ["no"]:
                out += [(u, s) for u in f.get("uris", [])
                        for s in f.get("suites", [])]
    return out


def mirrors():
    """(Debian mirror, security mirror or None), as this host uses them."""
    codename = None
    for line in open("/etc/os-release"):
        if line.startswith("VERSION_CODENAME="):
            codename = line.split("=", 1)[1].strip().strip('"')
    srcs = apt_sources()
    main = [u for u, s in srcs if s == codename]
    sec = [u for u, s in srcs if s == "%s-security" % codename]
    main = main[0] if main else "http://deb.debian.org/debian"
    return main.rstrip("/"), sec[0].rstrip("/") if sec else None


def reachable(mirror, suite):
    url = "%s/dists/%s/InRelease" % (mirror, suite)
    try:
        req = urllib.request.Request(url, method="HEAD")
        with urllib.request.urlopen(req, timeout=15) as r:
            return r.status == 200
    except Exception:
        return False


# ---------------------------------------------------------- cached roots

def root_spec(name, main, sec):
    suite = name.split("-")[0]
    if name.endswith("-build"):
        variant, pkgs, hooks = "buildd", BUILD_PKGS, []
    else:
        variant, pkgs, hooks = "apt", TEST_PKGS + DISTS[suite][0], TEST_HOOKS
    srcs = ["deb %s %s main" % (main, suite),
            "deb %s %s-updates main" % (main, suite)]
    if sec:
        srcs.append("deb %s %s-security main" % (sec, suite))
    argv = (["mmdebstrap", "--variant=" + variant,
             "--include=" + ",".join(pkgs), "--format=tar"] +
            ["--customize-hook=" + h for h in hooks])
    key = hashlib.sha256(json.dumps([SCHEMA, argv, suite, srcs]).encode()
                         ).hexdigest()[:12]
    return suite, argv, srcs, os.path.join(CACHE, "%s-%s.tar" % (name, key))


def make_root(name, main, sec):
    """The cached tarball of root `name`, made if missing or old."""
    suite, argv, srcs, tar = root_spec(name, main, sec)
    fresh = os.path.exists(tar) and time.time() - os.path.getmtime(tar) < \
        MAX_AGE
    if fresh:
        return tar, None
    if not reachable(main, suite):
        if os.path.exists(tar):
            return tar, "mirror %s unreachable: using a root %d days old" % (
                main, (time.time() - os.path.getmtime(tar)) // 86400)
        raise Skip("no cached %s root and the mirror %s is unreachable"
                   % (name, main))
    os.makedirs(CACHE, exist_ok=True)
    log = os.path.join(WORK, "mmdebstrap-%s.log" % name)
    t0 = time.monotonic()
    with open(log, "w") as f:
        p = subprocess.run(argv + [suite, tar + ".new"] + srcs, stdout=f,
                           stderr=subprocess.STDOUT, timeout=900)
    if p.returncode != 0:
        if os.path.exists(tar + ".new"):
            os.unlink(tar + ".new")
        if os.path.exists(tar):
            return tar, "mmdebstrap failed (see %s): using the old root" % log
        raise Fail("mmdebstrap %s failed, see %s:%s" %
                   (name, log, tail(open(log).read())))
    os.replace(tar + ".new", tar)
    for old in glob.glob(os.path.join(CACHE, name + "-*.tar")):
        if old != tar:
            os.unlink(old)
    return tar, "made %s in %.0f s" % (os.path.basename(tar),
                                       time.monotonic() - t0)


def unpack(tar, dest):
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    p = run(["tar", "--numeric-owner", "-C", dest, "-xpf", tar], 300)
    if p.returncode != 0:
        raise Fail("unpacking %s: %s" % (tar, p.stdout.strip()[-500:]))


# ------------------------------------------------------------ containers

def cgroup2_mount():
    """Where the unified (v2) cgroup hierarchy is mounted, or None."""
    for line in open("/proc/self/mountinfo"):
        pre, _, post = line.partition(" - ")
        if post.split()[:1] == ["cgroup2"]:
            return pre.split()[4]
    return None


def make_cgroup(name):
    """A cgroup of its own for one container, below this process's own, so
    that the systemd inside manages that one only: systemd-nspawn without
    systemd on the host (--keep-unit) makes none and hands the container
    the cgroup it runs in, which both containers would share."""
    own = "/"
    for line in open("/proc/self/cgroup"):
        if line.startswith("0::"):
            own = line[3:].strip()
    path = os.path.join(cgroup2_mount() + own, name)
    os.mkdir(path)
    CGROUPS.append(path)
    return path


def remove_stale_cgroups():
    """The cgroups of containers of a boot test that was killed."""
    base = cgroup2_mount()
    for line in open("/proc/self/cgroup"):
        if line.startswith("0::"):
            base += line[3:].strip()
    for d in glob.glob(os.path.join(base, "dnsfwd-*-[0-9]*")):
        pid = d.rsplit("-", 1)[1]
        if not os.path.exists("/proc/" + pid):
            remove_cgroup(d)


def remove_cgroup(path):
    """Kills whatever is left in it, and removes it and its children."""
    if not os.path.isdir(path):
        return
    if os.path.exists(path + "/cgroup.kill"):
        with open(path + "/cgroup.kill", "w") as f:
            f.write("1")
    end = time.monotonic() + 10
    while True:
        try:
            for d, _, _ in sorted(os.walk(path), key=lambda w: -len(w[0])):
                os.rmdir(d)
            return
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.1)


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = open("/proc/%s/stat" % d).read()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(d))
    return out


class Container:
    """A root booted with systemd-nspawn, systemd as its PID 1, in its own
    network namespace; commands run in its namespaces through nsenter."""

    def __init__(self, name, root, log):
        self.name, self.root, self.logpath = name, root, log
        self.proc = None
        self.pid1 = None
        self.cgroup = None

    def boot(self):
        self.log = open(self.logpath, "wb")
        # --register=no --keep-unit: no machined and no scope, so no need
        # for systemd on the host.  setpriv: the container is powered off
        # if this script dies without its finally.  The container gets the
        # unified cgroup hierarchy (cgroup v2) that Debian 12 and 13 boot
        # with, whatever the host has: systemd 252 on a hybrid one fails
        # now and then to spawn into a cgroup it just made ("Failed at step
        # CGROUP"), and 257 calls cgroup v1 unsupported.
        env = dict(os.environ, SYSTEMD_NSPAWN_UNIFIED_HIERARCHY="1")
        self.cgroup = make_cgroup(self.name)
        self.proc = spawn(
            ["/bin/sh", "-c", 'echo $$ >"$0/cgroup.procs" && exec "$@"',
             self.cgroup, "setpriv", "--pdeathsig", "TERM", "--",
             "systemd-nspawn", "--quiet", "--boot", "--directory=" + self.root,
             "--machine=" + self.name, "--private-network",
             "--register=no", "--keep-unit", "--console=passive"],
            stdin=subprocess.DEVNULL, stdout=self.log,
            stderr=subprocess.STDOUT, env=env)
        end = time.monotonic() + 30
        while self.pid1 is None and time.monotonic() < end:
            if self.proc.poll() is not None:
                break
            for c in children(self.proc.pid):
                try:
                    if open("/proc/%d/comm" % c).read().strip() == "systemd":
                        self.pid1 = c
                except OSError:
                    pass
            time.sleep(0.1)
        if self.pid1 is None:
            raise Fail("systemd-nspawn did not start systemd; see %s" %
                       self.logpath)
        # Until PID 1 has its private socket up, systemctl cannot connect;
        # until it has made /run/systemd/system, systemctl says "offline"
        # (sd_booted() is false), which a loaded host makes last a while.
        end = time.monotonic() + 120
        while True:
            p = self.sh("systemctl is-system-running --wait", timeout=120)
            state = p.stdout.strip()
            if ("bus" not in state and state != "offline") or \
                    time.monotonic() > end:
                break
            time.sleep(0.2)
        check(state in ("running", "degraded"),
              "system state %r after boot" % state)
        if state == "degraded":
            failed = self.sh("systemctl --failed --no-legend").stdout
            raise Fail("degraded after boot:" + tail(failed))

    def sh(self, cmd, timeout=60):
        argv = ["nsenter", "--target", str(self.pid1), "--mount", "--uts",
                "--ipc", "--net", "--pid", "--cgroup", "--",
                "/usr/bin/env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                "LANG=C.UTF-8", "DEBIAN_FRONTEND=noninteractive",
                "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0", "/bin/sh", "-c", cmd]
        return run(argv, timeout)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            # SIGTERM makes systemd-nspawn power the container off.
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc is not None:
            self.log.close()
        if self.cgroup is not None:
            remove_cgroup(self.cgroup)
        # Left behind by systemd-nspawn without systemd on the host.
        shutil.rmtree("/run/systemd/nspawn/propagate/" + self.name,
                      ignore_errors=True)


# ---------------------------------------------------------------- builds

def export_tree(dest):
    """The files `make deb` would copy: those git knows (changed or not)."""
    shutil.rmtree(dest, ignore_errors=True)
    p = subprocess.run(["git", "-C", TOP, "ls-files", "-z", "-co",
                        "--exclude-standard"], stdout=subprocess.PIPE,
                       stderr=subprocess.DEVNULL, timeout=60)
    if p.returncode == 0:
        files = [f for f in p.stdout.decode().split("\0") if f]
    else:
        files = []
        for d, dirs, names in os.walk(TOP):
            rel = os.path.relpath(d, TOP)
            if rel == ".":
                dirs[:] = [x for x in dirs if x not in ("build", ".git")]
            files += [os.path.normpath(os.path.join(rel, n)) for n in names]
    for f in files:
        src = os.path.join(TOP, f)
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(dest, f)),
                        exist_ok=True)
            shutil.copy2(src, os.path.join(dest, f))


def deb_in(d):
    debs = glob.glob(os.path.join(d, "dnsfwd_*.deb"))
    check(len(debs) == 1, "want one dnsfwd_*.deb in %s, found %s" %
          (d, debs))
    return debs[0]


def changelog_version():
    first = open(os.path.join(TOP, "debian", "changelog")).readline()
    return re.match(r"\S+ \(([^)]+)\)", first).group(1)


def make_deb_args(which, out):
    """`make deb` arguments: v1 as the tree is, checked by lintian; v2 the
    same with a higher version, for the upgrade."""
    args = ["deb", "DEB_OUT=" + out]
    if which == "v2":
        args += ["DEB_VERSION=" + changelog_version() +
                 UPSTREAM_VERSION_SUFFIX, "DEB_LINTIAN=no"]
    return args


def build_host(which, out):
    """`make deb` on this host; returns the .deb."""
    log = out + ".log"
    with open(log, "w") as f:
        p = spawn(["make", "-s", "-C", TOP] + make_deb_args(which, out),
                  stdout=f, stderr=subprocess.STDOUT, env=clean_env())
        try:
            p.wait(600)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    check(p.returncode == 0, "make deb (%s) failed:%s" %
          (which, tail(open(log).read(), 25)))
    return deb_in(out)


def nspawn(argv, timeout, log):
    """Runs systemd-nspawn ARGV; on a timeout, stops it (SIGTERM, which it
    passes on to the container) before it kills it."""
    with open(log, "w") as f:
        p = spawn(["setpriv", "--pdeathsig", "TERM", "--",
                   "systemd-nspawn"] + argv, stdin=subprocess.DEVNULL,
                  stdout=f, stderr=subprocess.STDOUT)
        try:
            return p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.terminate()
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            raise


def build_in_root(which, root, out):
    """`make deb` inside the build root (its /src a copy of the tree),
    through systemd-nspawn; returns the .deb."""
    name = "dnsfwd-build-%s-%d" % (which, os.getpid())
    log = out + ".log"
    script = "cd /src && exec make -s %s" % " ".join(
        make_deb_args(which, "/out/" + which))
    try:
        rc = nspawn(["--quiet", "--directory=" + root, "--machine=" + name,
                     "--private-network", "--register=no", "--keep-unit",
                     "--as-pid2", "/bin/sh", "-c", script], 900, log)
    finally:
        shutil.rmtree("/run/systemd/nspawn/propagate/" + name,
                      ignore_errors=True)
    check(rc == 0, "make deb (%s) in the build root: exit %d:%s" %
          (which, rc, tail(open(log).read(), 25)))
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(root + "/out/" + which, out, symlinks=True)
    return deb_in(out)


class Builder:
    """Builds the two packages of one release, v2 in the background while
    the checks that need only v1 run."""

    def __init__(self, dist, tars, src):
        self.dist = dist
        self.out = os.path.join(WORK, dist)
        shutil.rmtree(self.out, ignore_errors=True)
        os.makedirs(self.out)
        self.where = DISTS[dist][2]
        self.root = None
        if self.where != "host":
            self.root = os.path.join(WORK, "roots", self.where)
            unpack(tars[self.where], self.root)
            shutil.copytree(src, self.root + "/src", symlinks=True)
            os.makedirs(self.root + "/out")
        self.v2 = None

    def build(self, which):
        out = os.path.join(self.out, which)
        if self.where == "host":
            return build_host(which, out)
        return build_in_root(which, self.root, out)

    def start_v2(self):
        self.v2 = concurrent.futures.Future()

        def bg():
            try:
                self.v2.set_result(self.build("v2"))
            except BaseException as e:
                self.v2.set_exception(e)
            finally:
                if self.root:
                    shutil.rmtree(self.root, ignore_errors=True)
        t = threading.Thread(target=bg, daemon=True)
        t.start()
        return t


# ---------------------------------------------------------------- checks

class Release:
    """The checks of one release, run in order in one booted container."""

    def __init__(self, dist, root, v1, v2):
        self.dist = dist
        self.tls13 = DISTS[dist][1]
        self.root = root
        self.v1 = v1
        self.v2 = v2                # a Future: built while v1 is checked
        self.c = Container("dnsfwd-%s-%d" % (dist, os.getpid()), root,
                           os.path.join(WORK, dist + ".console.log"))
        self.token = secrets.token_hex(5)
        self.edited = None          # /etc/default/dnsfwd as the user made it
        self.watchdog = None        # (time, WatchdogTimestampMonotonic, pid)

    # -- helpers

    def sh(self, cmd, timeout=60):
        return self.c.sh(cmd, timeout)

    def ok_sh(self, cmd, timeout=60):
        p = self.sh(cmd, timeout)
        check(p.returncode == 0, "%s: exit %d:%s" % (cmd, p.returncode,
                                                      tail(p.stdout)))
        return p.stdout

    def show(self, unit, prop):
        return self.ok_sh("systemctl show -p %s --value %s" %
                          (prop, unit)).strip()

    def dig(self, name, server="127.0.0.1", tcp=False, rtype="A"):
        """(rcode, [A addresses]) of kdig's answer, or (None, output)."""
        p = self.sh("kdig @%s %s +retry=0 +timeout=3 %s %s" %
                    (server, "+tcp" if tcp else "+notcp", name, rtype), 20)
        m = re.search(r"status: (\w+)", p.stdout)
        if not m:
            return None, p.stdout.strip()
        # Records of the answer section; the others start with ";;".
        return m.group(1), re.findall(r"^[^;\s]\S*\s+\d+\s+IN\s+A\s+(\S+)",
                                      p.stdout, re.M)

    def answers(self, server="127.0.0.1", tcp=False):
        rcode, got = self.dig("www.test", server, tcp)
        check(rcode == "NOERROR" and got == [WWW],
              "www.test @%s over %s: %s %s" % (server, "TCP" if tcp else
                                              "UDP", rcode, got))

    def main_pid(self):
        return int(self.show("dnsfwd.service", "MainPID"))

    def write_conf(self, text):
        with open(self.root + CONF, "w") as f:
            f.write(text)

    def read_conf(self):
        with open(self.root + CONF) as f:
            return f.read()

    def restart(self):
        self.ok_sh("systemctl restart dnsfwd.service")
        check(self.show("dnsfwd.service", "ActiveState") == "active",
              "dnsfwd.service not active after restart")

    def journal(self, args="-b"):
        self.sh("journalctl --sync")
        return self.ok_sh("journalctl --no-pager %s" % args)

    def wait_for(self, what, fn, timeout):
        end = time.monotonic() + timeout
        while True:
            v = fn()
            if v:
                return v
            check(time.monotonic() < end, "%s: not within %d s" %
                  (what, timeout))
            time.sleep(0.2)

    # -- the checks, in order; each docstring is its claim

    def c_boot(self):
        """the root boots with systemd as PID 1 (running, no failed unit)"""
        self.c.boot()

    def c_upstream(self):
        """unbound answers DNS-over-TLS on 127.0.0.1:853 with the test CA's certificate for dns.test"""
        self.ok_sh("systemd-run --quiet --unit=dot-upstream "
                   "/usr/sbin/unbound -d -c %s/dot.conf" % TESTDIR)

        def up():
            p = self.sh("kdig @127.0.0.1 -p 853 +tls-ca=%s/ca.pem "
                        "+tls-hostname=dns.test +retry=0 +timeout=2 "
                        "www.test A" % TESTDIR, 10)
            return WWW in p.stdout
        self.wait_for("unbound on 853", up, 20)

    def c_install_busy(self):
        """with another DNS server on 127.0.0.1:53, apt installs the package all the same, and the postinst says what to do"""
        self.ok_sh("systemd-run --quiet --unit=other-dns "
                   "/usr/sbin/unbound -d -c %s/port53.conf" % TESTDIR)
        self.wait_for("other DNS server on 127.0.0.1:53",
                      lambda: self.dig("www.test")[0] == "NXDOMAIN", 20)
        p = self.sh("cd %s/v1 && apt-get install -y ./%s" %
                    (DEBDIR, os.path.basename(self.v1)), 300)
        self.apt_out = p.stdout
        if p.returncode != 0:
            raise Abort("apt-get install: exit %d:%s" %
                        (p.returncode, tail(p.stdout, 30)))
        st = self.ok_sh("dpkg-query -W -f '${Status}' dnsfwd")
        check(st == "install ok installed", "dpkg status %r" % st)
        check(self.sh("systemctl --quiet is-failed dnsfwd.socket")
              .returncode == 0, "dnsfwd.socket did not fail: %s" %
              self.show("dnsfwd.socket", "ActiveState"))
        for want in ("could not listen on 127.0.0.1:53",
                     "ListenDatagram=127.0.0.2:53",
                     "systemctl edit dnsfwd.socket"):
            check(want in p.stdout, "apt's output lacks %r:%s" %
                  (want, tail(p.stdout, 25)))

    def c_journal_busy(self):
        """systemctl status dnsfwd.socket shows 'Address already in use' and the postinst's advice (a drop-in with another address)"""
        out = self.sh("systemctl status --no-pager -n 20 dnsfwd.socket"
                      ).stdout
        for want in ("Address already in use", "127.0.0.2:53",
                     "systemctl edit dnsfwd.socket"):
            check(want in out, "no %r in:%s" % (want, tail(out, 20)))

    def c_free_port(self):
        """once the other server stops, systemctl restart dnsfwd.socket brings the socket up"""
        self.ok_sh("systemctl stop other-dns.service")
        self.ok_sh("systemctl restart dnsfwd.socket")
        check(self.show("dnsfwd.socket", "ActiveState") == "active",
              "dnsfwd.socket not active")

    def c_files(self):
        """the package holds /usr/sbin/dnsfwd linked to the shared libev and mbedTLS, both units enabled, the man page, and /etc/default/dnsfwd as a conffile"""
        unitdir = ("/lib/systemd/system" if self.dist == "bookworm"
                   else "/usr/lib/systemd/system")
        files = self.ok_sh("dpkg -L dnsfwd").split()
        for f in ("/usr/sbin/dnsfwd", unitdir + "/dnsfwd.service",
                  unitdir + "/dnsfwd.socket",
                  "/usr/share/man/man8/dnsfwd.8.gz", CONF):
            check(f in files, "dpkg -L dnsfwd: no %s" % f)
        conff = self.ok_sh("dpkg-query -W -f '${Conffiles}' dnsfwd")
        check(CONF in conff, "not a conffile: %s" % conff)
        ldd = self.ok_sh("ldd /usr/sbin/dnsfwd")
        for lib in ("libev.so", "libmbedtls.so", "libmbedx509.so",
                    "libmbedcrypto.so"):
            check(lib in ldd, "not linked to %s:%s" % (lib, tail(ldd)))
        svc = self.ok_sh("systemctl cat dnsfwd.service")
        check("ExecStart=/usr/sbin/dnsfwd $DNSFWD_OPTS" in svc,
              "ExecStart= does not name /usr/sbin/dnsfwd")
        for u in ("dnsfwd.socket", "dnsfwd.service"):
            st = self.sh("systemctl is-enabled " + u).stdout.strip()
            check(st == "enabled", "%s is %s" % (u, st))

    def c_configure(self):
        """/etc/default/dnsfwd edited to forward to the local DNS-over-TLS upstream; systemctl restart dnsfwd.service succeeds"""
        self.edited = self.read_conf() + (
            '\n# The boot test\'s upstream.\nDNSFWD_OPTS="%s"\n' % DOT_OPTS)
        self.write_conf(self.edited)
        self.restart()

    def c_queries(self):
        """dnsfwd.socket is active and queries are answered on 127.0.0.1 and [::1], UDP and TCP"""
        check(self.show("dnsfwd.socket", "ActiveState") == "active",
              "dnsfwd.socket not active")
        for server in ("127.0.0.1", "::1"):
            for tcp in (False, True):
                self.answers(server, tcp)

    def c_sandbox(self):
        """the daemon runs as a dynamic user with no capabilities (CapEff 0), NoNewPrivs 1 and a seccomp filter (Seccomp 2)"""
        pid = self.main_pid()
        check(pid > 0, "no MainPID")
        st = dict(line.split(":", 1) for line in
                  self.ok_sh("cat /proc/%d/status" % pid).splitlines()
                  if ":" in line)
        st = {k: v.split() for k, v in st.items()}
        uids = {int(u) for u in st["Uid"]}
        check(len(uids) == 1 and 61184 <= min(uids) <= 65519,
              "uids %s, want one in the dynamic range 61184-65519" % uids)
        check(self.show("dnsfwd.service", "DynamicUser") == "yes",
              "DynamicUser= not yes")
        for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            check(int(st[cap][0], 16) == 0, "%s %s" % (cap, st[cap][0]))
        check(st["NoNewPrivs"] == ["1"], "NoNewPrivs %s" % st["NoNewPrivs"])
        check(st["Seccomp"] == ["2"], "Seccomp %s" % st["Seccomp"])

    def c_exposure(self):
        """systemd-analyze security dnsfwd.service rates it 1.2 or less"""
        out = self.ok_sh("systemd-analyze security --no-pager "
                         "dnsfwd.service")
        m = re.search(r"Overall exposure level for dnsfwd\.service: "
                      r"([0-9.]+)", out)
        check(m, "no exposure level in:%s" % tail(out))
        worst = [line.strip() for line in out.splitlines()
                 if line.startswith("✗")]
        check(float(m.group(1)) <= 1.2, "exposure %s:\n    %s" %
              (m.group(1), "\n    ".join(worst)))
        say("info %s: exposure %s" % (self.dist, m.group(1)))

    def export_journal(self):
        """The whole journal of this boot, every field of every entry."""
        self.sh("journalctl --sync")
        p = subprocess.run(
            ["nsenter", "--target", str(self.c.pid1), "--mount", "--pid",
             "--", "journalctl", "-b", "-o", "export", "--no-pager"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=60)
        check(p.returncode == 0 and len(p.stdout) > 1000,
              "could not read the journal")
        return p.stdout.lower()

    def c_no_names(self):
        """at the default log level the journal holds no query name (one asked over UDP and TCP, answered NXDOMAIN through dnsfwd; the same search finds a name logged on purpose)"""
        name = "nolog-%s.test" % self.token
        for tcp in (False, True):
            rcode, _ = self.dig(name, tcp=tcp)
            check(rcode == "NXDOMAIN", "%s: %s" % (name, rcode))
        check(name.encode() not in self.export_journal(),
              "%s is in the journal" % name)
        # The control: a name that is in the journal is found.
        control = "control-%s.test" % self.token
        self.ok_sh("logger -t boottest %s" % control)
        self.wait_for("the control name in the journal",
                      lambda: control.encode() in self.export_journal(), 10)

    def c_status_text(self):
        """systemctl status dnsfwd shows what the daemon does: the upstream in use, the queries answered, the share from the cache"""
        text = self.wait_for(
            "a STATUS= line with the queries answered",
            lambda: (lambda x: x if "answered" in x else "")(
                self.show("dnsfwd.service", "StatusText")), 12)
        check("upstream u0" in text and "from the cache" in text,
              "StatusText %r lacks the upstream or the cache share" % text)
        out = self.sh("systemctl status --no-pager dnsfwd.service").stdout
        check("Status: \"%s" % text[:20] in out,
              "no Status: line in:%s" % tail(out))

    def c_kill(self):
        """systemctl kill -s KILL dnsfwd: it is restarted and answers again"""
        old = self.main_pid()
        n = int(self.show("dnsfwd.service", "NRestarts"))
        self.ok_sh("systemctl kill -s KILL dnsfwd.service")

        def back():
            pid = self.main_pid()
            return (pid not in (0, old) and
                    self.show("dnsfwd.service", "ActiveState") == "active")
        self.wait_for("restarted", back, 15)
        check(int(self.show("dnsfwd.service", "NRestarts")) == n + 1,
              "NRestarts did not go up by one")
        self.answers()
        self.answers(tcp=True)

    def c_bad_option(self):
        """an unknown option in /etc/default/dnsfwd: the restart fails with exit status 2 and is not retried"""
        self.write_conf(self.edited + 'DNSFWD_OPTS="%s --cache-sise 100"\n'
                        % DOT_OPTS)
        p = self.sh("systemctl restart dnsfwd.service")
        check(p.returncode != 0, "systemctl restart succeeded")
        n = self.show("dnsfwd.service", "NRestarts")
        time.sleep(3)       # RestartSec= is 100 ms: retries would show
        for prop, want in (("ActiveState", "failed"), ("Result", "exit-code"),
                           ("ExecMainStatus", "2"), ("NRestarts", n)):
            got = self.show("dnsfwd.service", prop)
            check(got == want, "%s=%s, want %s" % (prop, got, want))

    def c_bad_status(self):
        """... dnsfwd's message is among the lines systemctl status dnsfwd shows"""
        out = self.sh("systemctl status --no-pager dnsfwd.service").stdout
        check("unknown option '--cache-sise'" in out,
              "not in systemctl status:%s" % tail(out, 20))

    def c_bad_socket(self):
        """... dnsfwd.socket does not fail"""
        st = self.show("dnsfwd.socket", "ActiveState")
        check(st == "active", "dnsfwd.socket is %s" % st)

    def c_fixed(self):
        """... fixing the file and systemctl restart dnsfwd brings it back"""
        self.write_conf(self.edited)
        self.restart()
        self.answers()
        self.answers("::1", tcp=True)
        pid = self.main_pid()
        self.watchdog = (time.monotonic(), int(self.show(
            "dnsfwd.service", "WatchdogTimestampMonotonic")), pid)

    def c_resolved(self):
        """the README's systemd-resolved recipe: getent hosts resolves a name only the upstream knows, through resolved and dnsfwd"""
        nss = self.ok_sh("grep '^hosts:' /etc/nsswitch.conf")
        check("resolve" in nss, "nss-resolve not in %s" % nss.strip())
        # resolved sends no unicast DNS ("Network is down") while no link
        # has a routable address: give the container the network a real
        # machine has, a link with an address and a default route (a veth
        # pair whose ends are both inside, so nothing gets out).
        self.ok_sh("ip link add veth0 type veth peer name veth1 && "
                   "ip link set veth1 up && "
                   "ip addr add 198.51.100.2/24 dev veth0 && "
                   "ip link set veth0 up && "
                   "ip route add default via 198.51.100.1 dev veth0")
        self.ok_sh("mkdir -p /etc/systemd/resolved.conf.d")
        with open(self.root + "/etc/systemd/resolved.conf.d/dnsfwd.conf",
                  "w") as f:
            f.write(RESOLVED_DROPIN)
        self.ok_sh("systemctl restart systemd-resolved.service")
        out = self.sh("getent hosts resolved.test", 30).stdout
        check(out.split()[:2] == [VIA_RESOLVED, "resolved.test"],
              "getent hosts resolved.test: %r" % out)
        # Undone, as a user would before removing the package.
        os.unlink(self.root + "/etc/systemd/resolved.conf.d/dnsfwd.conf")
        self.ok_sh("systemctl restart systemd-resolved.service")

    def c_watchdog(self):
        """the watchdog is armed (WatchdogUSec=30s) and dnsfwd pings it (the watchdog timestamp moves, same process)"""
        usec = self.show("dnsfwd.service", "WatchdogUSec")
        check(usec not in ("0", "infinity", ""), "WatchdogUSec=%s" % usec)
        check(self.watchdog, "not measured: the check before failed")
        t0, ts0, pid = self.watchdog
        left = t0 + 16 - time.monotonic()   # a ping every 15 s
        if left > 0:
            time.sleep(left)
        ts = int(self.show("dnsfwd.service", "WatchdogTimestampMonotonic"))
        check(self.main_pid() == pid, "dnsfwd restarted meanwhile")
        check(ts > ts0, "WatchdogTimestamp did not move in 16 s")
        say("info %s: WatchdogUSec=%s" % (self.dist, usec))

    def c_tls(self):
        """the upstream connection uses the newest TLS the release's mbedTLS offers, TLS 1.3 on trixie (mbedTLS 3.6), TLS 1.2 on bookworm (mbedTLS 2.28), as dnsfwd's debug log says (ready over TLSv1.x)"""
        self.write_conf(self.edited + 'DNSFWD_OPTS="%s --log-level debug"\n'
                        % DOT_OPTS)
        self.restart()
        self.answers()
        log = self.journal("-b -o cat _PID=%d" %
                           self.main_pid())
        vers = re.findall(r"ready over (\S+?)(?:,|$)", log, re.M)
        want = "TLSv1.3" if self.tls13 else "TLSv1.2"
        check(vers and set(vers) == {want}, "TLS versions seen: %s, want %s"
              % (vers, want))

    def c_upgrade(self):
        """upgrading to a newer build keeps the edited /etc/default/dnsfwd and restarts the service"""
        self.write_conf(self.edited)
        self.restart()
        self.answers()
        old = self.main_pid()
        v2 = self.v2.result(timeout=900)
        shutil.copy2(v2, self.root + DEBDIR + "/v2/")
        p = self.sh("cd %s/v2 && apt-get install -y ./%s" %
                    (DEBDIR, os.path.basename(v2)), 300)
        check(p.returncode == 0, "apt-get install: exit %d:%s" %
              (p.returncode, tail(p.stdout, 30)))
        ver = self.ok_sh("dpkg-query -W -f '${Version}' dnsfwd")
        check(ver.endswith(UPSTREAM_VERSION_SUFFIX), "version %s" % ver)
        check(self.read_conf() == self.edited, "/etc/default/dnsfwd changed")
        left = glob.glob(self.root + CONF + ".dpkg-*")
        check(not left, "left: %s" % left)
        new = self.main_pid()
        check(new not in (0, old), "MainPID %d -> %d: not restarted" %
              (old, new))
        self.answers()
        self.answers("::1", tcp=True)

    def c_remove(self):
        """apt-get remove stops it: no dnsfwd process, nothing on 127.0.0.1:53 or [::1]:53; the edited /etc/default/dnsfwd stays"""
        self.ok_sh("apt-get remove -y dnsfwd", 300)
        for u in ("dnsfwd.service", "dnsfwd.socket"):
            st = self.sh("systemctl is-active " + u).stdout.strip()
            check(st in ("inactive", "unknown"), "%s is %s" % (u, st))
        procs = self.sh("grep -lx dnsfwd /proc/[0-9]*/comm").stdout.strip()
        check(not procs, "dnsfwd still runs: %s" % procs)
        ss = self.ok_sh("ss -Hlnut")
        for addr in ("127.0.0.1:53 ", "[::1]:53 "):
            check(addr not in ss, "%s still bound:%s" % (addr, tail(ss)))
        check(not os.path.exists(self.root + "/usr/sbin/dnsfwd"),
              "/usr/sbin/dnsfwd left")
        check(self.read_conf() == self.edited,
              "/etc/default/dnsfwd removed or changed")
        st = self.ok_sh("dpkg-query -W -f '${Status}' dnsfwd")
        check(st == "deinstall ok config-files", "dpkg status %r" % st)

    def c_purge(self):
        """apt-get purge removes /etc/default/dnsfwd and leaves nothing of dnsfwd behind (no unit, no enablement link, no dpkg record)"""
        self.ok_sh("apt-get purge -y dnsfwd", 300)
        check(not os.path.exists(self.root + CONF), "%s left" % CONF)
        st = self.sh("dpkg-query -W -f '${Status}' dnsfwd 2>/dev/null"
                     ).stdout.strip()
        check(st in ("", "unknown ok not-installed"), "dpkg status %r" % st)
        left = self.sh("find /etc /lib/systemd /usr/lib/systemd "
                       "/var/lib/systemd -name '*dnsfwd*'").stdout.strip()
        check(not left, "left behind:%s" % tail(left))
        units = self.sh("systemctl list-unit-files --no-legend 'dnsfwd*'"
                        ).stdout.strip()
        check(not units, "unit files still known:%s" % tail(units))

    CHECKS = [c_boot, c_upstream, c_install_busy, c_journal_busy,
              c_free_port, c_files, c_configure, c_queries, c_sandbox,
              c_exposure, c_no_names, c_status_text, c_kill, c_bad_option,
              c_bad_status, c_bad_socket, c_fixed, c_resolved, c_watchdog,
              c_tls, c_upgrade, c_remove, c_purge]
    FATAL = {"c_boot", "c_upstream", "c_install_busy", "c_free_port",
             "c_configure"}

    def prepare(self, pki):
        for d in ("v1", "v2"):
            os.makedirs(self.root + DEBDIR + "/" + d)
        shutil.copy2(self.v1, self.root + DEBDIR + "/v1/")
        os.makedirs(self.root + TESTDIR)
        for f in ("ca.pem", "server.pem", "server.key"):
            shutil.copy2(os.path.join(pki, f), self.root + TESTDIR)
        vals = {"dir": TESTDIR, "www": WWW, "resolved": VIA_RESOLVED}
        for name, text in (("dot.conf", UNBOUND_DOT),
                           ("port53.conf", UNBOUND_PORT53)):
            with open(os.path.join(self.root + TESTDIR, name), "w") as f:
                f.write(text % vals)

    def run(self):
        try:
            for fn in self.CHECKS:
                claim = fn.__doc__
                try:
                    fn(self)
                    say("ok %s: %s" % (self.dist, claim))
                    TALLY.add("passed")
                except Skip as e:
                    say("skip %s: %s: %s" % (self.dist, claim, e))
                    TALLY.add("skipped")
                except (Fail, Abort, subprocess.TimeoutExpired) as e:
                    say("FAIL %s: %s: %s" % (self.dist, claim, e))
                    TALLY.add("failed")
                    if isinstance(e, Abort) or fn.__name__ in self.FATAL:
                        say("%s: later checks not run" % self.dist)
                        return
                except Exception:
                    say("FAIL %s: %s: %s" % (self.dist, claim,
                                             traceback.format_exc().strip()))
                    TALLY.add("failed")
                    return
        finally:
            if self.c.pid1 is not None and self.c.proc.poll() is None:
                try:
                    p = self.c.sh("journalctl -b --no-pager", 60)
                    with open(os.path.join(WORK, self.dist + ".journal.log"),
                              "w") as f:
                        f.write(p.stdout)
                except Exception:
                    pass
            self.c.stop()


# ------------------------------------------------------------------ main

def release(dist, tars, pki, src):
    """Builds for one release, then boots it and runs its checks."""
    t0 = time.monotonic()
    claim = "make deb builds the package (lintian: no error, no warning)"
    try:
        b = Builder(dist, tars, src)
        v1 = b.build("v1")
        say("ok %s: %s" % (dist, claim))
        TALLY.add("passed")
    except Exception as e:
        say("FAIL %s: %s: %s" % (dist, claim, e if isinstance(e, Fail) else
                                 traceback.format_exc().strip()))
        TALLY.add("failed")
        return
    say("info %s: built %s in %.0f s" % (dist, os.path.basename(v1),
                                         time.monotonic() - t0))
    builder = b.start_v2()
    try:
        root = os.path.join(WORK, "roots", dist)
        unpack(tars[dist + "-test"], root)
        r = Release(dist, root, v1, b.v2)
        r.prepare(pki)
    except Exception:
        say("FAIL %s: preparing the root: %s" % (
            dist, traceback.format_exc().strip()))
        TALLY.add("failed")
        builder.join()
        return
    r.run()
    builder.join()
    say("info %s: done in %.0f s" % (dist, time.monotonic() - t0))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dist", action="append", choices=sorted(DISTS))
    ap.add_argument("--keep", action="store_true",
                    help="keep the unpacked roots")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
    dists = args.dist or sorted(DISTS)
    t0 = time.monotonic()
    os.chdir(TOP)
    why = machine_allows()
    if why:
        say("skip boot test: %s" % why)
        print("0 passed, 0 failed, %d skipped" % len(dists))
        return 0
    os.makedirs(WORK, exist_ok=True)
    remove_stale_cgroups()
    main_mirror, sec_mirror = mirrors()
    names = set()
    for d in dists:
        names.add(d + "-test")
        if DISTS[d][2] != "host":
            names.add(DISTS[d][2])
    tars, skipped = {}, set()
    with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
        futs = {n: pool.submit(make_root, n, main_mirror, sec_mirror)
                for n in sorted(names)}
        for n, f in futs.items():
            try:
                tars[n], note = f.result()
                if note:
                    say("info: %s root: %s" % (n, note))
            except Skip as e:
                skipped.add(n.split("-")[0])
                say("info: %s" % e)
            except Fail as e:
                say("FAIL roots: %s" % e)
                TALLY.add("failed")
                skipped.add(n.split("-")[0])
    for d in dists:
        if d in skipped:
            say("skip %s: the boot test: roots unavailable" % d)
            TALLY.add("skipped")
    dists = [d for d in dists if d not in skipped]
    say("info: roots ready in %.0f s" % (time.monotonic() - t0))
    pki = os.path.join(WORK, "pki")
    p = run(["sh", os.path.join(HERE, "mkcerts.sh"), pki], 120)
    check(p.returncode == 0, "mkcerts.sh: %s" % p.stdout)
    src = os.path.join(WORK, "src")
    export_tree(src)
    # Daemon threads: if this script is stopped (SIGTERM, or ^C), it does
    # not wait for them; stop_all() stops the builds and powers the
    # containers off (and systemd-nspawn's parent-death signal, should this
    # script be killed outright).
    threads = [threading.Thread(target=release, args=(d, tars, pki, src),
                                daemon=True) for d in dists]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        stop_all()
        for cg in CGROUPS:
            try:
                remove_cgroup(cg)
            except OSError as e:
                say("could not remove cgroup %s: %s" % (cg, e))
    if not TALLY.failed and not args.keep:
        shutil.rmtree(os.path.join(WORK, "roots"), ignore_errors=True)
    elif os.path.isdir(os.path.join(WORK, "roots")):
        say("kept the roots in %s" % os.path.join(WORK, "roots"))
    say("info: boot test took %.0f s" % (time.monotonic() - t0))
    print("%d passed, %d failed%s" % (
        TALLY.passed, TALLY.failed,
        ", %d skipped" % TALLY.skipped if TALLY.skipped else ""))
    return 1 if TALLY.failed else 0


if __name__ == "__main__":
    sys.exit(main())

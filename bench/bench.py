#!/usr/bin/python3
"""make bench: dnsfwd beside its peers, on loopback, in a private netns.

Run by `make bench` once the Debian packages, dnsfwd and bench/echo,
bench/latency (and bench/nodelay.so) are in place; it re-executes itself
under `unshare -n`, so it needs root.  See bench/README.md.  BENCH_QUICK=1
gives a short run for checking the harness.

An unbound serving DNS-over-TLS (and plain UDP) for every name under
"bench." is the upstream of every contender; each contender runs on core 0,
the load generators and the upstream on core 1.  Writes bench/RESULTS.md,
bench/results.json, bench/results.dat and bench/results.png.  Then PATH,
the same contenders over emulated 30 ms paths (bench/pathbench.py, which
writes its own section of RESULTS.md and bench/path.*); BENCH_ONLY=path or
BENCH_ONLY=loopback runs one part.
"""

import datetime
import json
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DNSFWD = os.path.join(ROOT, "dnsfwd")
ECHO = os.path.join(HERE, "echo")
RELAY = os.path.join(HERE, "relay")
LATENCY = os.path.join(HERE, "latency")
MKCERTS = os.path.join(ROOT, "tests", "mkcerts.sh")
SYSTEM_CA = "/etc/ssl/certs/ca-certificates.crt"

NODELAY_SO = os.path.join(HERE, "nodelay.so")

QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")
# BENCH_ONLY=path runs the PATH workload alone (bench/pathbench.py),
# BENCH_ONLY=loopback everything but it; unset, both.
ONLY = os.environ.get("BENCH_ONLY", "")
# Preload bench/nodelay.so into the upstream: TCP_NODELAY on its DoT side.
UPSTREAM_NODELAY = os.environ.get("BENCH_UPSTREAM_NODELAY", "") not in ("", "0")

# Placement: the contender alone on core 0; dnsperf, the latency client,
# the upstream and this script on core 1.
CONTENDER_CORE = "0"
LOAD_CORE = "1"

# Ports (the namespace is private, so fixed ports cannot collide).
UP_TLS = 8853           # upstream unbound, DNS-over-TLS
UP_UDP = 8053           # upstream unbound, plain DNS (the direct reference)
LO = "127.0.0.1"
ANSWER = "192.0.2.1"    # what every name under bench. resolves to
TLS_NAME = "dns.test"

# Workload sizes.  Full: three runs per cell (median), about 14 minutes.
if QUICK:
    REPS, MISS_S, HIT_S, LAT_N, SILENCE = 1, 2, 2, 6000, 5
else:
    REPS, MISS_S, HIT_S, LAT_N, SILENCE = 3, 7, 5, 20000, 30
REPS = int(os.environ.get("BENCH_REPS", REPS))
LAT_RATE = 2000         # LATENCY: fixed query rate (q/s)
HIT_NAMES = 100         # HIT: names repeated
DNSPERF_Q = 200         # outstanding queries (dnsperf -q)
DNSPERF_C = 4           # client sockets (dnsperf -c)
DNSPERF_T = 2           # per-query timeout, s (dnsperf -t): later is lost
MISS_MAX_QPS = 250000   # sizes the MISS name file (names never repeat)

CLK_TCK = os.sysconf("SC_CLK_TCK")

PROCS = {}              # pid -> Popen, everything we started and not stopped


def log(msg):
    print("bench: " + msg, file=sys.stderr, flush=True)


def die(msg):
    raise SystemExit("bench: FAILED: " + msg)


# --- processes -------------------------------------------------------------

def spawn(argv, core, logfile, cwd=None, env=None):
    """Starts argv pinned to core (taskset execs, so the PID is argv's)."""
    out = open(logfile, "ab")
    p = subprocess.Popen(["taskset", "-c", core] + argv, stdin=subprocess.DEVNULL,
                         stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                         start_new_session=True, env=env)
    out.close()
    PROCS[p.pid] = p
    return p


def stop(p, grace=5.0):
    """SIGTERM, then SIGKILL after grace seconds; by PID only."""
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
    PROCS.pop(p.pid, None)


def stop_all():
    for p in list(PROCS.values()):
        stop(p, 2.0)


def descendants(pid):
    """pid and all its descendant processes (multi-process peers)."""
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/stat" % d) as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pids):
    """utime + stime of the processes (all their threads, live or gone)."""
    ticks = 0
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return ticks / CLK_TCK


def mem_kib(pids):
    """Sums of VmRSS, VmHWM, RssAnon (KiB) over the processes."""
    out = {"rss": 0, "hwm": 0, "anon": 0}
    keys = {"VmRSS:": "rss", "VmHWM:": "hwm", "RssAnon:": "anon"}
    for pid in pids:
        try:
            with open("/proc/%d/status" % pid) as f:
                for line in f:
                    k = line.split(":", 1)[0] + ":"
                    if k in keys:
                        out[keys[k]] += int(line.split()[1])
        except OSError:
            pass
    return out


def pss_kib(pid):
    """Proportional set size: shared pages (libc's text) divided among the
    processes that map them, so it tells what this one costs the machine."""
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def upstream_conns(pids):
    """ESTABLISHED TCP connections from these processes to the upstream's
    TLS port, read from the TCP table of their own network namespace (the
    PATH workload's contenders run in one of their own)."""
    if not pids:
        return 0
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir("/proc/%d/fd" % pid):
                try:
                    link = os.readlink("/proc/%d/fd/%s" % (pid, fd))
                except OSError:
                    continue
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        except OSError:
            pass
    n = 0
    try:
        with open("/proc/%d/net/tcp" % pids[0]) as f:
            next(f)
            for line in f:
                fl = line.split()
                if fl[3] == "01" and int(fl[2].split(":")[1], 16) == \
                        UP_TLS and fl[9] in inodes:
                    n += 1
    except OSError:
        pass
    return n


def core_busy():
    """Busy seconds of each core so far, from /proc/stat (all processes)."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            m = re.match(r"cpu(\d+) (.*)", line)
            if m:
                v = [int(x) for x in m.group(2).split()]
                # user nice system idle iowait irq softirq steal: interrupt
                # time may belong to our own packets, so it is left out.
                out[m.group(1)] = (v[0] + v[1] + v[2] + v[7]) / CLK_TCK
    return out


def ksoftirqd_cpu():
    """CPU seconds of ksoftirqd/0 and ksoftirqd/1, which carry our packets under load."""
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/comm" % d) as f:
                    comm = f.read().strip()
            except OSError:
                continue
            if comm.startswith("ksoftirqd/"):
                out[comm.split("/", 1)[1]] = cpu_seconds([int(d)])
    return out


def own_and_children_cpu():
    """CPU seconds of this script plus its waited-for children (the load generators)."""
    a = resource.getrusage(resource.RUSAGE_SELF)
    b = resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime, b.ru_utime + b.ru_stime


class Sampler(threading.Thread):
    """Samples upstream connections and RSS every 0.25 s while a load runs."""

    def __init__(self, pids):
        super().__init__(daemon=True)
        self.pids, self.conns, self.rss = pids, 0, 0
        self.done = threading.Event()

    def run(self):
        while not self.done.wait(0.25):
            self.sample()

    def sample(self):
        self.conns = max(self.conns, upstream_conns(self.pids))
        self.rss = max(self.rss, mem_kib(self.pids)["rss"])

    def finish(self):
        self.done.set()
        self.join()
        self.sample()


# --- DNS over UDP, just enough for readiness and validation ----------------

def dns_query(port, name, timeout=1.0, addr=LO):
    """Asks addr name A IN over UDP; returns (rcode, [addresses]) or None on timeout."""
    qid = random.getrandbits(16)
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\0" + struct.pack(">HH", 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.settimeout(timeout)
        s.sendto(q, (addr, port))
        end = time.monotonic() + timeout
        while True:
            s.settimeout(max(0.001, end - time.monotonic()))
            data = s.recv(4096)
            if len(data) >= 12 and struct.unpack(">H", data[:2])[0] == qid:
                break
    except (socket.timeout, ConnectionRefusedError):
        return None
    finally:
        s.close()
    rcode = data[3] & 0x0F
    ancount = struct.unpack(">H", data[6:8])[0]
    addrs = []
    try:
        off = 12
        while data[off] != 0:
            off += 1 + data[off]
        off += 5
        for _ in range(ancount):
            if data[off] & 0xC0 == 0xC0:
                off += 2
            else:
                while data[off] != 0:
                    off += 1 + data[off]
                off += 1
            rtype, _, _, rdlen = struct.unpack(">HHIH", data[off:off + 10])
            off += 10
            if rtype == 1 and rdlen == 4:
                addrs.append(socket.inet_ntoa(data[off:off + 4]))
            off += rdlen
    except (IndexError, struct.error):
        pass                    # a malformed answer: what was read so far
    return rcode, addrs


def wait_answer(port, name, within, proc=None):
    """Asks until the right answer comes back, for at most within seconds."""
    end = time.monotonic() + within
    last = None
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            return "exited with status %s" % proc.returncode
        last = dns_query(port, name, 0.5)
        if last is not None and last[0] == 0 and ANSWER in last[1]:
            return None
        time.sleep(0.05)
    return "no right answer within %.0f s (last: %r)" % (within, last)


# --- the upstream ----------------------------------------------------------

# Both unbounds here: in the foreground, in their own directory, one thread.
UNBOUND_SERVER = """server:
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "%(d)s"
    pidfile: ""
    logfile: ""
    use-syslog: no
    verbosity: 0
    num-threads: 1
"""


def start_upstream(ctx):
    """unbound, one thread, DoT on UP_TLS and plain DNS on UP_UDP, on core 1."""
    d = os.path.join(ctx["dir"], "upstream")
    os.makedirs(d)
    conf = os.path.join(d, "unbound.conf")
    with open(conf, "w") as f:
        f.write((UNBOUND_SERVER + """    interface: %(lo)s@%(tls)d
    interface: %(lo)s@%(udp)d
    tls-port: %(tls)d
    tls-service-key: "%(key)s"
    tls-service-pem: "%(pem)s"
    do-ip6: no
    so-reuseport: no
    access-control: 127.0.0.0/8 allow
    module-config: "iterator"
    # Room for every contender's connections, kept through the silence of
    # FIRST-QUERY: only the contenders' own idle policies close them.
    incoming-num-tcp: 512
    tcp-idle-timeout: 300000
    num-queries-per-thread: 4096
    # Every name under bench. is 192.0.2.1; anything else is refused, so
    # no contender's side traffic (priming, health checks) recurses.
    local-zone: "." refuse
    local-zone: "bench." redirect
    local-data: "bench. 300 IN A %(answer)s"
""") % dict(d=d, lo=LO, tls=UP_TLS, udp=UP_UDP, key=ctx["certs"] + "/server.key",
           pem=ctx["certs"] + "/server.pem", answer=ANSWER))
    env = None
    if UPSTREAM_NODELAY:
        env = dict(os.environ, LD_PRELOAD=NODELAY_SO)
    p = spawn(["unbound", "-d", "-c", conf], LOAD_CORE, os.path.join(d, "log"), env=env)
    err = wait_answer(UP_UDP, "up-ready.bench.", 10, p)
    if err:
        die("upstream unbound: %s\n%s" % (err, tail(os.path.join(d, "log"))))
    # The TLS side, checked against the test CA and the name.
    sc = ssl.create_default_context(cafile=ctx["certs"] + "/ca.pem")
    end = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection((LO, UP_TLS), 2) as raw:
                with sc.wrap_socket(raw, server_hostname=TLS_NAME) as t:
                    ctx["upstream_tls"] = "%s %s" % (t.version(), t.cipher()[0])
            break
        except OSError as e:
            if time.monotonic() > end:
                die("upstream unbound: no TLS on %d: %s" % (UP_TLS, e))
            time.sleep(0.1)
    return p


def tail(path, n=20):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


# --- contenders: one setup function each -----------------------------------
# Each returns (argv, cwd); the config it writes lives in its own directory.

def setup_echo(ctx, d, port):
    return [ECHO, LO, str(port)], None


def setup_relay(ctx, d, port):
    return [RELAY, LO, str(port), LO, str(UP_UDP)], None


def setup_dnsfwd(ctx, d, port, extra=(), ups=(LO,)):
    argv = [DNSFWD, "--bind-udp", "%s:%d" % (LO, port),
            "--ca-file", ctx["certs"] + "/ca.pem"]
    for a in ups:
        argv += ["--connect-tls", "%s:%d#%s" % (a, UP_TLS, ctx["tls_name"])]
    return argv + list(extra), None


# The peers below take `ups`, the upstream addresses (the PATH workload,
# bench/pathbench.py, gives each two); the loopback workloads use one.

def setup_stubby(ctx, d, port, ups=(LO,)):
    conf = os.path.join(d, "stubby.yml")
    with open(conf, "w") as f:
        f.write("""resolution_type: GETDNS_RESOLUTION_STUB
dns_transport_list:
  - GETDNS_TRANSPORT_TLS
tls_authentication: GETDNS_AUTHENTICATION_REQUIRED
tls_query_padding_blocksize: 128
edns_client_subnet_private: 1
round_robin_upstreams: 0
idle_timeout: 10000
timeout: 2000
tls_ca_file: "%(ca)s"
appdata_dir: "%(d)s"
listen_addresses:
  - %(lo)s@%(port)d
upstream_recursive_servers:
""" % dict(ca=ctx["certs"] + "/ca.pem", d=d, lo=LO, port=port))
        for a in ups:
            f.write("""  - address_data: %s
    tls_port: %d
    tls_auth_name: "%s"
""" % (a, UP_TLS, ctx["tls_name"]))
    return ["stubby", "-C", conf], d


def setup_unbound(ctx, d, port, ups=(LO,)):
    conf = os.path.join(d, "unbound.conf")
    with open(conf, "w") as f:
        f.write((UNBOUND_SERVER + """    interface: %(lo)s@%(port)d
    do-ip6: no
    so-reuseport: no
    access-control: 127.0.0.0/8 allow
    do-not-query-localhost: no
    module-config: "iterator"
    tls-cert-bundle: "%(ca)s"
    outgoing-num-tcp: 64
    max-reuse-tcp-queries: 1000000
forward-zone:
    name: "."
    forward-tls-upstream: yes
""") % dict(d=d, lo=LO, port=port, ca=ctx["certs"] + "/ca.pem"))
        for a in ups:
            f.write("    forward-addr: %s@%d#%s\n" % (a, UP_TLS,
                                                     ctx["tls_name"]))
    return ["unbound", "-d", "-c", conf], d


def setup_dnsdist(ctx, d, port, ups=(LO,)):
    conf = os.path.join(d, "dnsdist.conf")
    with open(conf, "w") as f:
        f.write("""setLocal('%s:%d')
setACL({'127.0.0.0/8'})
setSecurityPollSuffix('')
-- One core: one TCP worker (the default 10 cost a quarter more CPU here);
-- UDP queries reach a DoT backend through these workers.
setMaxTCPClientThreads(1)
""" % (LO, port))
        # maxInFlight: pipeline up to 100 queries per backend connection
        # (without it, one query per connection: 140 connections, half the
        # q/s here).
        for a in ups:
            f.write("""newServer({address='%s:%d', tls='openssl', subjectName='%s',
           caStore='%s', validateCertificates=true, maxInFlight=100,
           checkName='health.bench.'})
""" % (a, UP_TLS, ctx["tls_name"], ctx["certs"] + "/ca.pem"))
        f.write("getPool(''):setCache(newPacketCache(10000, {maxTTL=86400}))\n")
    return ["dnsdist", "--supervised", "--disable-syslog", "-C", conf], d


def setup_kresd(ctx, d, port, ups=(LO,)):
    run = os.path.join(d, "run")
    shutil.rmtree(run, ignore_errors=True)      # its cache outlives it
    os.makedirs(run)
    conf = os.path.join(d, "kresd.conf")
    with open(conf, "w") as f:
        f.write("""net.listen('%(lo)s', %(port)d, { kind = 'dns' })
-- Queries in flight on one upstream connection (default 100; beyond it
-- kresd answers SERVFAIL at once): above dnsperf's %(q)d outstanding.
net.tcp_pipeline(1024)
trust_anchors.remove('.')
modules.unload('priming')
modules.unload('detect_time_skew')
policy.add(policy.all(policy.TLS_FORWARD({
%(ups)s
})))
""" % dict(lo=LO, port=port, q=DNSPERF_Q, ups=",\n".join(
            "    {'%s@%d', hostname='%s', ca_file='%s'}" % (
                a, UP_TLS, ctx["tls_name"], ctx["certs"] + "/ca.pem")
            for a in ups)))
    return ["kresd", "-n", "-c", conf, run], run


class Contender:
    def __init__(self, key, label, port, setup, ref=False, uses_dot=True):
        self.key, self.label, self.port, self.setup = key, label, port, setup
        self.ref, self.uses_dot = ref, uses_dot
        self.proc = None

    def launch(self, ctx):
        """Starts it, pinned to the contender core."""
        d = os.path.join(ctx["dir"], self.key)
        os.makedirs(d, exist_ok=True)
        self.logfile = os.path.join(d, "log")
        if self.setup is None:                  # the upstream itself
            self.proc = ctx["upstream"]
            return
        argv, cwd = self.setup(ctx, d, self.port)
        self.proc = spawn(argv, CONTENDER_CORE, self.logfile, cwd)

    def start(self, ctx, tag):
        """Starts it and checks it answers through its DoT forwarding."""
        self.launch(ctx)
        if self.setup is None:
            return self
        err = wait_answer(self.port, "ready-%s.bench." % tag, 15, self.proc)
        if err is None and self.uses_dot and upstream_conns(self.pids()) == 0:
            err = "answered, but holds no connection to the DoT upstream"
        if err:
            self.stop()
            die("%s: %s\n%s" % (self.label, err, tail(self.logfile)))
        return self

    def pids(self):
        return descendants(self.proc.pid)

    def stop(self):
        if self.proc is not None and self.setup is not None:
            stop(self.proc)
        self.proc = None

    def stats(self):
        return dnsfwd_stats(self)


def dnsfwd_stats(c, nup=0):
    """The SIGUSR1 report of contender c (anything with key, proc and
    logfile; the PATH workload's runners too): the stats line's counters as
    a dict, and with nup > 0 its "upstreams", one dict per upstream line,
    once nup of them are written.  {} for a contender that is not a running
    dnsfwd, or when the report did not come."""
    if not c.key.startswith("dnsfwd") or c.proc is None:
        return {}
    with open(c.logfile, errors="replace") as f:
        before = len(f.read())
    c.proc.send_signal(signal.SIGUSR1)
    end = time.monotonic() + 3
    while time.monotonic() < end:
        with open(c.logfile, errors="replace") as f:
            new = f.read()[before:]
        m = re.search(r"stats: (.*)\n", new)
        ups = re.findall(r"upstream (.+?) state=(\S+) (.*)\n", new)
        if m and len(ups) >= nup:
            out = {k: int(v) for k, v in re.findall(r"(\w+)=(-?\d+)", m.group(1))}
            if nup:
                out["upstreams"] = [dict([("label", lab), ("state", st)] + [
                    (k, float(v)) for k, v in re.findall(r"(\w+)=(-?[\d.]+)", rest)])
                    for lab, st, rest in ups]
            return out
        time.sleep(0.02)
    return {}


CONTENDERS = [
    Contender("echo", "echo (ceiling)", 5390, setup_echo, ref=True, uses_dot=False),
    Contender("upstream", "upstream, plain UDP", UP_UDP, None, ref=True, uses_dot=False),
    Contender("relay", "UDP relay (forwarder floor)", 5391, setup_relay, ref=True,
              uses_dot=False),
    Contender("dnsfwd", "dnsfwd", 5301, setup_dnsfwd),
    Contender("dnsfwd-nc", "dnsfwd --cache-size 0", 5302,
              lambda ctx, d, p: setup_dnsfwd(ctx, d, p, ["--cache-size", "0"])),
    Contender("stubby", "stubby", 5303, setup_stubby),
    Contender("unbound", "unbound (forwarder)", 5304, setup_unbound),
    Contender("dnsdist", "dnsdist", 5305, setup_dnsdist),
    Contender("kresd", "knot-resolver (kresd)", 5306, setup_kresd),
]
PEERS = ["stubby", "unbound", "dnsdist", "kresd"]
BY_KEY = {c.key: c for c in CONTENDERS}


# --- load generators -------------------------------------------------------

def run_dnsperf(port, datafile, seconds, once):
    argv = ["taskset", "-c", LOAD_CORE, "dnsperf", "-s", LO, "-p", str(port),
            "-d", datafile, "-l", str(seconds), "-q", str(DNSPERF_Q),
            "-c", str(DNSPERF_C), "-t", str(DNSPERF_T),
            "-O", "suppress=timeout,unexpected"]
    if once:
        argv += ["-n", "1"]
    r = subprocess.run(argv, capture_output=True, text=True,
                       timeout=seconds + DNSPERF_T + 30)
    out = r.stdout

    def num(pattern):
        m = re.search(pattern, out)
        return float(m.group(1)) if m else None
    res = {"sent": num(r"Queries sent:\s+(\d+)"),
           "completed": num(r"Queries completed:\s+(\d+)"),
           "lost": num(r"Queries lost:\s+(\d+)"),
           "qps": num(r"Queries per second:\s+([\d.]+)"),
           "avg_us": num(r"Average Latency \(s\):\s+([\d.]+)"),
           "runtime": num(r"Run time \(s\):\s+([\d.]+)"),
           "answers": num(r"NOERROR (\d+)") or 0}
    if res["completed"] is None or res["qps"] is None or not res["runtime"]:
        die("dnsperf to port %d: unexpected output:\n%s%s" % (port, out, r.stderr))
    m = re.search(r"Response codes:\s+(.*)", out)
    res["rcodes"] = m.group(1).strip() if m else ""
    res["avg_us"] = (res["avg_us"] or 0) * 1e6
    # q/s counts right answers only: a SERVFAIL is not a forwarded answer.
    res["ok_qps"] = res["answers"] / res["runtime"]
    res["loss_pct"] = 100.0 * res["lost"] / res["sent"] if res["sent"] else 0.0
    res["err_pct"] = 100.0 * (res["completed"] - res["answers"]) / res["sent"] \
        if res["sent"] else 0.0
    if res["answers"] < 0.99 * res["completed"]:
        res["warning"] = "answers not all NOERROR: %s" % res["rcodes"]
    return res


def run_latency(port, n, rate, tag, wait_ms=1000):
    argv = ["taskset", "-c", LOAD_CORE, LATENCY, "-s", LO, "-p", str(port),
            "-r", str(rate), "-n", str(n), "-t", tag, "-w", str(wait_ms)]
    r = subprocess.run(argv, capture_output=True, text=True,
                       timeout=n / rate + wait_ms / 1000 + 30)
    if r.returncode != 0:
        die("latency client to port %d: %s" % (port, r.stderr))
    return json.loads(r.stdout)


# --- workloads -------------------------------------------------------------

def cell(ctx, workload, c, rep):
    """One contender, one workload, one run: fresh process, measured."""
    tag = "%s%d%s" % (workload[0].lower(), rep, c.key.replace("-", ""))
    c.start(ctx, tag)
    try:
        time.sleep(0.3)
        pids = c.pids()
        idle = mem_kib(pids)
        if workload == "HIT":
            for i in range(HIT_NAMES):
                dns_query(c.port, "h%d.bench." % i)
        up_pids = [ctx["upstream"].pid]
        cpu0, up0 = cpu_seconds(pids), cpu_seconds(up_pids)
        busy0, (self0, gen0), irq0 = core_busy(), own_and_children_cpu(), ksoftirqd_cpu()
        sampler = Sampler(pids)
        sampler.start()
        t0 = time.monotonic()
        if workload == "MISS":
            res = run_dnsperf(c.port, ctx["miss_file"], MISS_S, True)
        elif workload == "HIT":
            res = run_dnsperf(c.port, ctx["hit_file"], HIT_S, False)
        else:
            res = run_latency(c.port, LAT_N, LAT_RATE, tag)
            res["completed"] = res["received"]
            res["answers"] = res["received"] - res["bad"]
            res["loss_pct"] = 100.0 * res["lost"] / res["sent"]
            res["err_pct"] = 100.0 * res["bad"] / res["sent"]
        wall = time.monotonic() - t0
        sampler.finish()
        cpu1, up1 = cpu_seconds(pids), cpu_seconds(up_pids)
        busy1, (self1, gen1), irq1 = core_busy(), own_and_children_cpu(), ksoftirqd_cpu()
        mem = mem_kib(pids)
        # What else ran on our cores meanwhile (other users of the machine):
        # core 0 busy time beyond the contender's, core 1's beyond the
        # upstream's, the load generator's and this script's; ksoftirqd's
        # packet work counts as ours.
        def irq(core):
            return irq1.get(core, 0.0) - irq0.get(core, 0.0)
        ours0 = (cpu1 - cpu0 if c.setup is not None else 0.0) + irq(CONTENDER_CORE)
        ours1 = (up1 - up0) + (gen1 - gen0) + (self1 - self0) + irq(LOAD_CORE)
        res["other_core0_pct"] = max(0.0, 100.0 * (busy1[CONTENDER_CORE] -
                                                   busy0[CONTENDER_CORE] - ours0) / wall)
        res["other_core1_pct"] = max(0.0, 100.0 * (busy1[LOAD_CORE] - busy0[LOAD_CORE]
                                                   - ours1) / wall)
        res["loadgen_cpu_pct"] = 100.0 * (gen1 - gen0) / wall
        res.update({
            "cpu_s": cpu1 - cpu0,
            "cpu_per_100k": (cpu1 - cpu0) / res["answers"] * 1e5
            if res["answers"] else None,
            "cpu_pct": 100.0 * (cpu1 - cpu0) / wall,
            "upstream_cpu_pct": 100.0 * (up1 - up0) / wall,
            "wall_s": wall,
            "conns_max": sampler.conns if c.uses_dot else None,
            "conns_end": upstream_conns(pids) if c.uses_dot else None,
            "idle_rss_kib": idle["rss"], "idle_anon_kib": idle["anon"],
            "peak_rss_kib": mem["hwm"], "rss_kib": mem["rss"],
            "anon_kib": mem["anon"],
        })
        st = c.stats()
        if st:
            res["dnsfwd_stats"] = st
        return res
    finally:
        c.stop()


def run_workload(ctx, workload, results):
    for rep in range(REPS):
        for c in CONTENDERS:
            r = cell(ctx, workload, c, rep)
            results.setdefault(workload, {}).setdefault(c.key, []).append(r)
            if workload == "LATENCY":
                log("%s run %d %-22s avg %7.0f us  p99 %7.0f us  max %7.0f us  lost %d"
                    % (workload, rep + 1, c.label, r["avg_us"], r["p99_us"],
                       r["max_us"], r["lost"]))
            else:
                log("%s run %d %-22s %9.0f q/s  loss %5.2f%%  errors %5.2f%%  "
                    "%.3f CPU s/100k" % (workload, rep + 1, c.label, r["ok_qps"],
                                         r["loss_pct"], r["err_pct"],
                                         r["cpu_per_100k"] or 0))


def first_query(ctx):
    """One query after SILENCE s of quiet, each forwarder started at once.

    dnsfwd's idle timeout is 10 s, below the full run's 30 s silence; the
    quick run's 5 s silence gets --idle-timeout 2 so that the connection is
    closed there too."""
    idle = ["--idle-timeout", "2"] if QUICK else []
    # echo goes first after the silence: what waking the machine costs
    # shows in its row, not in the first forwarder's.
    fq = [Contender(c.key + "-fq", c.label, c.port + 10, c.setup, ref=True,
                    uses_dot=False) for c in CONTENDERS if c.key in ("echo", "relay")]
    fq += [Contender("dnsfwd-fq", "dnsfwd", 5311,
                    lambda ctx, d, p: setup_dnsfwd(ctx, d, p, idle)),
          Contender("dnsfwd-prewarm-fq", "dnsfwd --prewarm", 5312,
                    lambda ctx, d, p: setup_dnsfwd(ctx, d, p, idle + ["--prewarm"]))]
    fq += [Contender(c.key + "-fq", c.label, c.port + 10, c.setup)
           for c in CONTENDERS if c.key in PEERS]
    out = {c.key: {"label": c.label, "rounds": []} for c in fq}
    try:
        for c in fq:
            c.start(ctx, "fq" + c.key.replace("-", ""))
        for rnd in range(REPS):
            fq_round(fq, out, rnd)
    finally:
        for c in fq:
            c.stop()
    for k, v in out.items():
        fq_summary(v)
        log("FIRST-QUERY %-22s steady p50 %6.0f us  first %s us  (%s)" %
            (v["label"], v["steady_p50_us"], "%.0f" % v["first_us"]
             if v["first_us"] else "lost",
             ", ".join("%.0f/%.0f" % (r["first_us"] or 0, r["steady_p50_us"])
                       for r in v["rounds"])))
    return out


def fq_round(fq, out, rnd):
    """Steady latency for each, SILENCE s of quiet, one query each."""
    for c in fq:
        # Steady latency: 200 unique names at 200 q/s.
        r = run_latency(c.port, 200, 200, "st%d%s" % (rnd, c.key.replace("-", "")))
        out[c.key]["rounds"].append({
            "steady_p50_us": r["p50_us"], "steady_avg_us": r["avg_us"],
            "stats_before": c.stats()})
    log("FIRST-QUERY round %d: %d s of silence" % (rnd + 1, SILENCE))
    time.sleep(SILENCE)
    for c in fq:
        rec = out[c.key]["rounds"][-1]
        rec["conns_before"] = upstream_conns(c.pids())
        r = run_latency(c.port, 1, 1, "fq%d%s" % (rnd, c.key.replace("-", "")), 3000)
        rec["first_us"] = r["max_us"] if r["received"] else None
    for c in fq:
        if c.key.startswith("dnsfwd"):
            out[c.key]["rounds"][-1]["stats_after"] = c.stats()


def fq_summary(v):
    """Medians over the rounds; handshakes counted over all of them."""
    rounds = v["rounds"]
    firsts = [r["first_us"] for r in rounds]
    v["steady_p50_us"] = med([r["steady_p50_us"] for r in rounds])
    v["first_us"] = med(firsts) if None not in firsts else None
    v["ratio"] = med([r["first_us"] / r["steady_p50_us"] for r in rounds]) \
        if None not in firsts else None
    v["conns_before"] = min(r["conns_before"] for r in rounds)
    if rounds and "stats_after" in rounds[-1]:
        v["stats_before"] = rounds[0]["stats_before"]
        v["stats_after"] = rounds[-1]["stats_after"]


def check_authentication(ctx):
    """Every forwarder, told to expect a name the upstream's certificate
    does not carry, must not answer: proof that each one authenticates
    the upstream rather than merely encrypting."""
    bad = dict(ctx, tls_name="wrong.test")
    cs = [Contender(c.key + "-auth", c.label, c.port + 20, c.setup)
          for c in CONTENDERS if c.uses_dot and c.key != "dnsfwd-nc"]
    out = {}

    def ask(c):
        r = dns_query(c.port, "auth-%s.bench." % c.key.replace("-", ""), 3.0)
        out[c.key] = r

    try:
        for c in cs:
            c.launch(bad)
        time.sleep(1.0)
        threads = [threading.Thread(target=ask, args=(c,)) for c in cs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for c in cs:
            c.stop()
    summary = {}
    for c in cs:
        r = out.get(c.key)
        if r is not None and r[0] == 0 and ANSWER in r[1]:
            die("%s answered through an upstream whose certificate is not for "
                "the configured name: it does not authenticate" % c.label)
        summary[c.label] = "no answer" if r is None else \
            {2: "SERVFAIL", 5: "REFUSED"}.get(r[0], "rcode %d" % r[0])
    return summary


def dnsfwd_idle_memory(ctx):
    """dnsfwd with the system CA bundle and an upstream it never contacts."""
    d = os.path.join(ctx["dir"], "dnsfwd-sysca")
    os.makedirs(d)
    lf = os.path.join(d, "log")
    p = spawn([DNSFWD, "--bind-udp", "%s:5399" % LO, "--ca-file", SYSTEM_CA,
               "--connect-tls", "127.0.0.1:9#" + TLS_NAME], CONTENDER_CORE, lf)
    try:
        time.sleep(1.0)
        if p.poll() is not None:
            die("dnsfwd with the system CA bundle exited:\n" + tail(lf))
        m = mem_kib([p.pid])
        m["pss"] = pss_kib(p.pid)
        with open("/proc/%d/status" % p.pid) as f:
            m["status"] = {k: v.strip() for k, v in
                           (line.split(":", 1) for line in f)
                           if k.startswith(("Vm", "Rss"))}
        return m
    finally:
        stop(p)


# --- summary ---------------------------------------------------------------

def med(values):
    v = [x for x in values if x is not None]
    return statistics.median(v) if v else None


def summarize(results):
    """Medians per cell, and ratios computed within each run then medianed."""
    summ = {}
    for w, per in results.items():
        summ[w] = {}
        for key, runs in per.items():
            summ[w][key] = {m: med([r.get(m) for r in runs])
                            for m in runs[0] if isinstance(runs[0][m], (int, float))}

    def ratio(w, metric, a, b):
        vals = []
        for ra, rb in zip(results[w][a], results[w][b]):
            if ra.get(metric) and rb.get(metric):
                vals.append(ra[metric] / rb[metric])
        return med(vals)

    def ratio_best_peer(w, metric, a, best=min):
        vals = []
        for i, ra in enumerate(results[w][a]):
            peers = [results[w][p][i][metric] for p in PEERS
                     if results[w][p][i].get(metric)]
            if ra.get(metric) and peers:
                vals.append(ra[metric] / best(peers))
        return med(vals)

    ratios = {}
    for a in ("dnsfwd", "dnsfwd-nc"):
        ratios[a] = {
            "miss_cpu_vs_echo": ratio("MISS", "cpu_per_100k", a, "echo"),
            "miss_cpu_vs_best_peer": ratio_best_peer("MISS", "cpu_per_100k", a, min),
            "miss_qps_vs_best_peer": ratio_best_peer("MISS", "ok_qps", a, max),
            "hit_cpu_vs_echo": ratio("HIT", "cpu_per_100k", a, "echo"),
            "lat_avg_vs_echo": ratio("LATENCY", "avg_us", a, "echo"),
            "miss_cpu_vs_relay": ratio("MISS", "cpu_per_100k", a, "relay"),
            "lat_avg_vs_relay": ratio("LATENCY", "avg_us", a, "relay"),
            "relay_lat_avg_vs_echo": ratio("LATENCY", "avg_us", "relay", "echo"),
        }
        for p in PEERS:
            ratios[a]["miss_cpu_vs_" + p] = ratio("MISS", "cpu_per_100k", a, p)
            ratios[a]["miss_qps_vs_" + p] = ratio("MISS", "ok_qps", a, p)
    return summ, ratios


def versions():
    def cmd(argv):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"

    def deb(p):
        return cmd(["dpkg-query", "-W", "-f=${Version}", p])
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "dnsfwd": cmd([DNSFWD, "--version"]),
        "unbound": deb("unbound"), "stubby": deb("stubby") + " (getdns " + deb("libgetdns10") + ")",
        "dnsdist": deb("dnsdist"), "knot-resolver": deb("knot-resolver"),
        "dnsperf": deb("dnsperf"), "openssl": deb("openssl"),
    }


def fmt(v, spec="%.0f", none="–"):
    return none if v is None else spec % v


def mib(kib):
    return None if kib is None else kib / 1024.0


def mark(ok):
    return "–" if ok is None else ("PASS" if ok else "FAIL")


def write_results(ctx, results, fq, sysmem, elapsed):
    summ, ratios = summarize(results)
    v = versions()
    data = {"quick": QUICK, "upstream_nodelay": UPSTREAM_NODELAY, "versions": v,
            "results": results, "summary": summ,
            "ratios": ratios, "first_query": fq, "dnsfwd_idle_system_ca": sysmem,
            "upstream_tls": ctx.get("upstream_tls"), "elapsed_s": elapsed,
            "wrong_name_check": ctx.get("auth"),
            "params": {"reps": REPS, "miss_s": MISS_S, "hit_s": HIT_S,
                       "lat_n": LAT_N, "lat_rate": LAT_RATE, "silence_s": SILENCE,
                       "dnsperf_q": DNSPERF_Q, "dnsperf_c": DNSPERF_C,
                       "dnsperf_t": DNSPERF_T}}
    with open(os.path.join(HERE, "results.json"), "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    labels = {c.key: c.label for c in CONTENDERS}
    L = []
    L.append("# dnsfwd benchmark results\n")
    if QUICK:
        L.append("**QUICK MODE (BENCH_QUICK=1): short runs, %d run(s) per cell, "
                 "%d s of silence; a check of the harness, not a measurement.**\n"
                 % (REPS, SILENCE))
    L.append("Machine: %s, %d cores, Linux %s, %s. Versions: %s; unbound %s; "
             "stubby %s; dnsdist %s; knot-resolver %s; dnsperf %s; OpenSSL %s. "
             "Upstream TLS as seen by a Python client: %s.\n"
             % (v["cpu"], v["cores"], v["kernel"], v["date"], v["dnsfwd"], v["unbound"],
                v["stubby"], v["dnsdist"], v["knot-resolver"], v["dnsperf"], v["openssl"],
                ctx.get("upstream_tls")))
    L.append("Upstream: stock unbound%s.\n" % (
        " with bench/nodelay.so preloaded (TCP_NODELAY on its DoT connections: "
        "BENCH_UPSTREAM_NODELAY=1)" if UPSTREAM_NODELAY else
        ", which leaves Nagle's algorithm on for its DoT connections "
        "(see bench/README.md; BENCH_UPSTREAM_NODELAY=1 turns it off)"))
    L.append("Contender on core 0 alone; dnsperf or bench/latency, and the upstream "
             "(unbound, one thread, DoT), on core 1. Every forwarder talks DoT to the "
             "same upstream, name %s, test CA. Median of %d run(s) per cell, each on a "
             "freshly started contender; ratios are taken within a run, then medianed. "
             "dnsperf -q %d -c %d -t %d. Whole run: %.0f s.\n"
             % (TLS_NAME, REPS, DNSPERF_Q, DNSPERF_C, DNSPERF_T, elapsed))
    noisy = []
    for w, per in results.items():
        for key, runs in per.items():
            for i, r in enumerate(runs):
                if r["other_core0_pct"] > 5 or r["other_core1_pct"] > 5:
                    noisy.append("%s/%s run %d: %.0f%% / %.0f%%" % (
                        w, key, i + 1, r["other_core0_pct"], r["other_core1_pct"]))
    if noisy:
        L.append("**Not a quiet machine:** other processes used more than 5%% of core 0 "
                 "or core 1 during %d of %d cells (core 0 / core 1: %s%s). Numbers from "
                 "such cells are not comparable; rerun on an idle machine.\n"
                 % (len(noisy), sum(len(v) for per in results.values() for v in per.values()),
                    "; ".join(noisy[:6]), "; ..." if len(noisy) > 6 else ""))
    else:
        L.append("Quiet machine: no other process used more than 5% of either core "
                 "during any cell.\n")
    L.append("Answers/s and CPU per 100k count NOERROR answers only; lost = no "
             "answer within %d s; errors = other answers. Every forwarder was first "
             "checked to answer through its DoT connection, and to refuse an upstream "
             "whose certificate lacks the configured name (%s).\n"
             % (DNSPERF_T, "; ".join("%s: %s" % kv for kv in (ctx.get("auth") or {}).items())))

    def conns(s):
        return fmt(s.get("conns_max"))

    for w, title in (("MISS", "MISS: every name unique, maximum rate for %d s" % MISS_S),
                     ("HIT", "HIT: %d names repeated, maximum rate for %d s (after one "
                      "warming pass)" % (HIT_NAMES, HIT_S))):
        L.append("## %s\n" % title)
        L.append("| contender | answers/s | lost | errors | avg latency | CPU s / 100k "
                 "answers | vs ceiling | CPU | upstream CPU | upstream conns (max) "
                 "| idle RSS | peak RSS |")
        L.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
        echo = summ[w]["echo"]["cpu_per_100k"]
        for c in CONTENDERS:
            s = summ[w][c.key]
            L.append("| %s | %s | %s%% | %s%% | %s µs | %s | %s | %s%% | %s%% | %s | %s "
                     "| %s |" % (
                labels[c.key], fmt(s["ok_qps"]), fmt(s["loss_pct"], "%.2f"),
                fmt(s["err_pct"], "%.2f"),
                fmt(s["avg_us"]), fmt(s["cpu_per_100k"], "%.3f"),
                fmt(s["cpu_per_100k"] / echo if echo and s["cpu_per_100k"] else None,
                    "%.2fx"),
                fmt(s["cpu_pct"]), fmt(s["upstream_cpu_pct"]), conns(s),
                fmt(mib(s["idle_rss_kib"]), "%.1f MiB") if c.setup else "–",
                fmt(mib(s["peak_rss_kib"]), "%.1f MiB") if c.setup else "–"))
        L.append("")
    L.append("## LATENCY: unique names at %d q/s for %.0f s (bench/latency)\n"
             % (LAT_RATE, LAT_N / LAT_RATE))
    L.append("| contender | avg | p50 | p99 | p99.9 | max | ≥ 40 ms | lost | CPU s / 100k |")
    L.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    for c in CONTENDERS:
        s = summ["LATENCY"][c.key]
        L.append("| %s | %s µs | %s µs | %s µs | %s µs | %s µs | %s | %s | %s |" % (
            labels[c.key], fmt(s["avg_us"]), fmt(s["p50_us"]), fmt(s["p99_us"]),
            fmt(s["p999_us"]), fmt(s["max_us"]), fmt(s["over40ms"]), fmt(s["lost"]),
            fmt(s["cpu_per_100k"], "%.3f")))
    L.append("")
    L.append("## FIRST-QUERY: one query after %d s of silence\n" % SILENCE)
    L.append("%d round(s) of: 200 queries at 200 q/s (steady p50), the silence, one "
             "query. Medians over the rounds; first / steady is the median of each "
             "round's ratio; handshakes are counted over all rounds. Echo and the "
             "relay are asked first after each silence. dnsfwd closes idle "
             "connections after %s, but with --prewarm keeps one open; the peers "
             "keep their own defaults (see bench/README.md).\n"
             % (REPS, "2 s (quick mode)" if QUICK else "10 s"))
    L.append("| contender | steady p50 | first query | first / steady | "
             "conns before | TLS full / resumed during the test |")
    L.append("|---|--:|--:|--:|--:|--:|")
    for k, r in fq.items():
        hs = "–"
        if r.get("stats_after"):
            b, a = r["stats_before"], r["stats_after"]
            hs = "%d / %d" % (a["tls_full"] - b.get("tls_full", 0),
                              a["tls_resumed"] - b.get("tls_resumed", 0))
        L.append("| %s | %s µs | %s µs | %s | %s | %s |" % (
            r["label"], fmt(r["steady_p50_us"]), fmt(r["first_us"]),
            fmt(r["ratio"], "%.2fx"), r["conns_before"], hs))
    L.append("")
    dm, dn = summ["MISS"]["dnsfwd"], summ["MISS"]["dnsfwd-nc"]
    L.append("## dnsfwd memory\n")
    L.append("| state | VmRSS | RssAnon | VmHWM |")
    L.append("|---|--:|--:|--:|")
    L.append("| idle, system CA bundle, upstream never contacted | %.2f MiB | %.2f MiB | %.2f MiB |"
             % (mib(sysmem["rss"]), mib(sysmem["anon"]), mib(sysmem["hwm"])))
    pss_line = ("Idle with the system CA bundle, its proportional set size (PSS, shared "
                "pages divided among the processes mapping them) is %.2f MiB.\n"
                % mib(sysmem["pss"])) if sysmem.get("pss") else ""
    for s, lab in ((dm, "dnsfwd"), (dn, "dnsfwd --cache-size 0")):
        L.append("| %s, test CA, after its first query | %.2f MiB | %.2f MiB | – |"
                 % (lab, mib(s["idle_rss_kib"]), mib(s["idle_anon_kib"])))
        L.append("| %s, after MISS | %.2f MiB | %.2f MiB | %.2f MiB |"
                 % (lab, mib(s["rss_kib"]), mib(s["anon_kib"]), mib(s["peak_rss_kib"])))
    L.append("")
    if pss_line:
        L.append(pss_line)

    # Targets.
    rd = ratios["dnsfwd"]
    sl = summ["LATENCY"]
    peers_lat = [sl[p] for p in PEERS]
    fqd, fqp = fq.get("dnsfwd-fq", {}), fq.get("dnsfwd-prewarm-fq", {})
    res_ok = None
    if fqd.get("stats_after"):
        dres = fqd["stats_after"]["tls_resumed"] - fqd["stats_before"].get("tls_resumed", 0)
        dfull = fqd["stats_after"]["tls_full"] - fqd["stats_before"].get("tls_full", 0)
        res_ok = dres >= 1 and dfull == 0
        res_txt = "tls_resumed +%d, tls_full +%d" % (dres, dfull)
    else:
        res_txt = "no stats"
    cache_bytes = 1304 * 4096
    T = []

    def target(name, measured, ok):
        T.append("| %s | %s | %s |" % (name, measured, mark(ok)))

    def le(a, b):
        return None if a is None or b is None else a <= b

    target("MISS CPU per forwarded query ≤ 1.6x the ceiling's",
           fmt(rd["miss_cpu_vs_echo"], "%.2fx"), le(rd["miss_cpu_vs_echo"], 1.6))
    target("MISS CPU per query ≤ 1/3 of the best peer's",
           fmt(rd["miss_cpu_vs_best_peer"], "%.2fx"), le(rd["miss_cpu_vs_best_peer"], 1 / 3))
    target("MISS q/s ≥ the best peer's", fmt(rd["miss_qps_vs_best_peer"], "%.2fx"),
           None if rd["miss_qps_vs_best_peer"] is None else rd["miss_qps_vs_best_peer"] >= 1)
    target("HIT CPU within 5% of the ceiling", fmt(rd["hit_cpu_vs_echo"], "%.2fx"),
           le(rd["hit_cpu_vs_echo"], 1.05))
    target("LATENCY average ≤ 1.6x the ceiling's", fmt(rd["lat_avg_vs_echo"], "%.2fx"),
           le(rd["lat_avg_vs_echo"], 1.6))
    for m, lab in (("p50_us", "p50"), ("p99_us", "p99"), ("max_us", "max")):
        best = min(p[m] for p in peers_lat)
        target("LATENCY %s below every peer's" % lab,
               "%.0f µs vs best peer %.0f µs" % (sl["dnsfwd"][m], best), sl["dnsfwd"][m] < best)
    stalls = sum(r["over40ms"] for r in results["LATENCY"]["dnsfwd"])
    target("LATENCY: no 40 ms stalls", "%d queries ≥ 40 ms over %d run(s)" % (stalls, REPS),
           stalls == 0)
    if fqp.get("ratio"):
        rp = fqp["ratio"]
        target("FIRST-QUERY with --prewarm within 1.5x steady", "%.2fx" % rp, rp <= 1.5)
    else:
        target("FIRST-QUERY with --prewarm within 1.5x steady", "lost", False)
    target("FIRST-QUERY without --prewarm: a resumed handshake", res_txt, res_ok)
    target("idle RSS ≤ 2.5 MiB (system CA bundle)", "%.2f MiB" % mib(sysmem["rss"]),
           sysmem["rss"] <= 2.5 * 1024)
    target("anonymous memory ≤ 1 MiB (idle, system CA bundle)",
           "%.2f MiB" % mib(sysmem["anon"]), sysmem["anon"] <= 1024)
    target("peak RSS under MISS ≤ 4 MiB + 1304 B x 4096 (%.2f MiB)"
           % (4 + cache_bytes / 1048576.0), "%.2f MiB" % mib(dm["peak_rss_kib"]),
           dm["peak_rss_kib"] * 1024 <= 4 * 1048576 + cache_bytes)
    target("peak RSS under MISS, --cache-size 0, ≤ 4 MiB", "%.2f MiB" % mib(dn["peak_rss_kib"]),
           dn["peak_rss_kib"] * 1024 <= 4 * 1048576)
    L.append("## Targets (dnsfwd, default options)\n")
    L.append("| target | measured | |")
    L.append("|---|--:|---|")
    L.extend(T)
    L.append("")
    L.append("Against the UDP relay, which forwards over plain UDP from the same core "
             "and so pays what every forwarder here pays before doing anything of its "
             "own (two more crossings between the cores than echo): dnsfwd's MISS CPU "
             "%s the relay's, its LATENCY average %s the relay's; the relay's LATENCY "
             "average is itself %s echo's.\n" % (
                 fmt(rd["miss_cpu_vs_relay"], "%.2fx"), fmt(rd["lat_avg_vs_relay"], "%.2fx"),
                 fmt(rd["relay_lat_avg_vs_echo"], "%.2fx")))
    L.append("dnsfwd against each peer under MISS (within-run ratios, dnsfwd / peer): "
             + "; ".join("%s CPU %s, q/s %s" % (p, fmt(rd["miss_cpu_vs_" + p], "%.2fx"),
                                                 fmt(rd["miss_qps_vs_" + p], "%.2fx"))
                         for p in PEERS) + ".\n")
    warn = []
    for w, per in results.items():
        for key, runs in per.items():
            for r in runs:
                if r.get("warning"):
                    warn.append("%s %s: %s" % (w, labels[key], r["warning"]))
    if warn:
        L.append("Warnings: " + "; ".join(warn) + ".\n")
    L.append("![q/s and CPU per 100k queries](results.png)\n")
    L.append("Raw numbers of every run: results.json.")
    # The PATH section, written by bench/pathbench.py, is kept.
    import pathbench
    kept = pathbench.section(os.path.join(HERE, "RESULTS.md"))
    with open(os.path.join(HERE, "RESULTS.md"), "w") as f:
        f.write("\n".join(L) + "\n" + ("\n" + kept + "\n" if kept else ""))

    # The chart.
    with open(os.path.join(HERE, "results.dat"), "w") as f:
        f.write("# contender miss_qps hit_qps miss_cpu_per_100k hit_cpu_per_100k\n")
        for c in CONTENDERS:
            f.write('"%s" %.1f %.1f %.4f %.4f\n' % (
                c.label.replace(" (", "\\n("), summ["MISS"][c.key]["ok_qps"],
                summ["HIT"][c.key]["ok_qps"], summ["MISS"][c.key]["cpu_per_100k"] or 0,
                summ["HIT"][c.key]["cpu_per_100k"] or 0))
    subprocess.run(["gnuplot", "-e", "title='%s'" % ("QUICK MODE: " if QUICK else ""),
                    os.path.join(HERE, "plot.gp")], cwd=HERE, check=True)
    if not QUICK:
        update_readme(summ, v["date"])


README_BEGIN = "<!-- make bench: table begins -->"
README_END = "<!-- make bench: table ends -->"


def update_readme(summ, date):
    """The headline figures of a full run, between the README's markers."""
    L = [README_BEGIN, "",
         "| %s | MISS answers/s | MISS CPU s/100k | HIT CPU s/100k | LATENCY p50 "
         "| p99 | max | idle RSS |" % ("last full run, " + date),
         "|---|--:|--:|--:|--:|--:|--:|--:|"]
    for c in CONTENDERS:
        if c.key == "upstream":
            continue
        m, h, lat = summ["MISS"][c.key], summ["HIT"][c.key], summ["LATENCY"][c.key]
        L.append("| %s | %s | %s | %s | %s µs | %s µs | %s µs | %s |" % (
            c.label, fmt(m["ok_qps"]), fmt(m["cpu_per_100k"], "%.2f"),
            fmt(h["cpu_per_100k"], "%.2f"), fmt(lat["p50_us"]), fmt(lat["p99_us"]),
            fmt(lat["max_us"]),
            fmt(mib(m["idle_rss_kib"]), "%.1f MiB") if c.setup else "–"))
    L += ["", README_END]
    path = os.path.join(ROOT, "README.md")
    with open(path) as f:
        text = f.read()
    a, b = text.find(README_BEGIN), text.find(README_END)
    if a < 0 or b < a:
        log("README.md has no table markers; its table was not updated")
        return
    with open(path, "w") as f:
        f.write(text[:a] + "\n".join(L) + text[b + len(README_END):])


# --- main ------------------------------------------------------------------

def make_files(ctx):
    d = ctx["dir"]
    ctx["miss_file"] = os.path.join(d, "miss.txt")
    with open(ctx["miss_file"], "w") as f:
        f.write("".join("m%d.bench. A\n" % i for i in range(MISS_MAX_QPS * MISS_S)))
    ctx["hit_file"] = os.path.join(d, "hit.txt")
    with open(ctx["hit_file"], "w") as f:
        f.write("".join("h%d.bench. A\n" % i for i in range(HIT_NAMES)))


def main():
    if not os.environ.get("BENCH_NETNS"):
        # Not yet in our own network namespace: make one (loopback only).
        os.environ["BENCH_NETNS"] = "1"
        os.execvp("unshare", ["unshare", "-n", sys.executable] + sys.argv)
    if ONLY not in ("", "path", "loopback"):
        die("BENCH_ONLY is path or loopback")
    for f in (DNSFWD, ECHO, RELAY, LATENCY, NODELAY_SO):
        if not os.access(f, os.R_OK):
            die("%s missing: run `make bench`" % f)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    os.sched_setaffinity(0, {int(LOAD_CORE)})
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(1))
    start = time.monotonic()
    ctx = {"dir": tempfile.mkdtemp(prefix="dnsfwd-bench."), "tls_name": TLS_NAME}
    log("%s mode, %d run(s) per cell, upstream %s, work directory %s" % (
        "quick" if QUICK else "full", REPS,
        "with TCP_NODELAY" if UPSTREAM_NODELAY else "stock", ctx["dir"]))
    keep = False
    try:
        ctx["certs"] = os.path.join(ctx["dir"], "certs")
        subprocess.run(["sh", MKCERTS, ctx["certs"]], check=True)
        if ONLY != "path":
            loopback(ctx, start)
        if ONLY != "loopback":
            import pathbench
            pathbench.run(sys.modules[__name__], ctx)
        log("done in %.0f s" % (time.monotonic() - start))
    except BaseException:
        keep = True
        log("logs kept in %s" % ctx["dir"])
        raise
    finally:
        stop_all()
        if not keep:
            shutil.rmtree(ctx["dir"], ignore_errors=True)


def loopback(ctx, start):
    """The loopback workloads: MISS, HIT, LATENCY, FIRST-QUERY, memory."""
    make_files(ctx)
    ctx["upstream"] = start_upstream(ctx)
    log("upstream up: %s" % ctx["upstream_tls"])
    for c in CONTENDERS:
        c.start(ctx, "check" + c.key.replace("-", ""))
        c.stop()
    log("every contender answered through its DoT forwarding")
    ctx["auth"] = check_authentication(ctx)
    log("with a wrong upstream name: %s" % ", ".join(
        "%s %s" % kv for kv in ctx["auth"].items()))
    sysmem = dnsfwd_idle_memory(ctx)
    results = {}
    for w in ("MISS", "HIT", "LATENCY"):
        run_workload(ctx, w, results)
    fq = first_query(ctx)
    elapsed = time.monotonic() - start
    write_results(ctx, results, fq, sysmem, elapsed)
    stop(ctx.pop("upstream"))
    log("loopback done in %.0f s: bench/RESULTS.md, bench/results.png" % elapsed)


if __name__ == "__main__":
    main()

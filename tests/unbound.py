"""Debian's unbound as a real DNS-over-TLS upstream for the integration tests.

    ub = Unbound(workdir, certfile, keyfile).start()   # waits until it answers
    ... ub.port ...
    ub.stop()

It serves only the local zone "test." (no trust anchors, no remote control,
no recursion needed): www.test A 192.0.2.80, big.test TXT (about 2100 bytes,
for the truncation tests) and nx.test does not exist.
"""

import os
import signal
import socket
import ssl
import subprocess
import time

import dns.exception
import dns.message
import dns.query

UNBOUND = "/usr/sbin/unbound"
WWW_ADDR = "192.0.2.80"


def big_txt_strings():
    """TXT strings of big.test: 10 x 200 bytes."""
    return ["%02d" % i + chr(ord("k") + i) * 198 for i in range(10)]


def free_port(family=socket.AF_INET, host="127.0.0.1", kind=socket.SOCK_STREAM):
    s = socket.socket(family, kind)
    try:
        s.bind((host, 0))
        return s.getsockname()[1]
    finally:
        s.close()


class Unbound:
    def __init__(self, workdir, certfile, keyfile):
        self.dir = os.path.abspath(workdir)
        self.cert, self.key = certfile, keyfile
        self.port = None
        self.proc = None
        self.log = os.path.join(self.dir, "unbound.log")

    def _config(self):
        big = "\n".join(
            "    local-data: 'big.test. 300 IN TXT \"%s\"'" % s
            for s in big_txt_strings())
        return """server:
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "%(dir)s"
    pidfile: "%(dir)s/unbound.pid"
    logfile: ""
    use-syslog: no
    verbosity: 1
    num-threads: 1
    interface: 127.0.0.1@%(port)d
    port: %(port)d
    tls-port: %(port)d
    tls-service-key: "%(key)s"
    tls-service-pem: "%(cert)s"
    do-ip6: no
    do-udp: yes
    do-tcp: yes
    so-reuseport: no
    access-control: 127.0.0.0/8 allow
    module-config: "iterator"
    incoming-num-tcp: 64
    tcp-idle-timeout: 30000
    local-zone: "test." static
    local-data: "www.test. 300 IN A %(www)s"
    local-data: "a.test. 300 IN A 192.0.2.81"
    local-data: "b.test. 300 IN A 192.0.2.82"
%(big)s
remote-control:
    control-enable: no
""" % {"dir": self.dir, "port": self.port, "key": self.key,
       "cert": self.cert, "www": WWW_ADDR, "big": big}

    def start(self, ready_timeout=10.0):
        """Starts unbound on a free port; returns once a DoT query works."""
        last = None
        for _attempt in range(3):          # a port may be taken in between
            self.port = free_port()
            conf = os.path.join(self.dir, "unbound.conf")
            with open(conf, "w") as f:
                f.write(self._config())
            logf = open(self.log, "ab")
            self.proc = subprocess.Popen([UNBOUND, "-d", "-c", conf],
                                         stdin=subprocess.DEVNULL,
                                         stdout=logf, stderr=logf)
            logf.close()
            deadline = time.monotonic() + ready_timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    r = self.query("www.test.", timeout=0.5)
                    if r.answer:
                        return self
                except (OSError, ssl.SSLError, dns.exception.DNSException) as e:
                    last = e
                time.sleep(0.05)
            self.stop()
        raise RuntimeError("unbound did not start (%r); log: %s" %
                           (last, self.tail()))

    def query(self, name, rdtype="A", timeout=2.0):
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        q = dns.message.make_query(name, rdtype)
        return dns.query.tls(q, "127.0.0.1", port=self.port, timeout=timeout,
                             ssl_context=ctx)

    def tail(self, n=20):
        try:
            with open(self.log, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def stop(self):
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(3)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(3)

    def __enter__(self):
        return self.start()

    def __exit__(self, *a):
        self.stop()

#!/usr/bin/python3
"""Checks of tests/fakeup.py itself: the failure modes the upstream pool's
scenarios rely on (issue 15) do what its docstring says.

    /usr/bin/python3 tests/test_fakeup.py [-k SUBSTRING]

Each check is a function below whose docstring is the claim it checks; it
starts its own FakeUpstreams on loopback (TLS with a throwaway PKI from
tests/mkcerts.sh, or plain TCP) and drives them with a small client of
its own.  Prints "ok NAME" or "FAIL NAME: reason" per check, then
"N passed, N failed"; exits 1 if any failed.
"""

import argparse
import os
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import checks  # noqa: E402
import fakeup  # noqa: E402
from checks import check  # noqa: E402
from scen import until  # noqa: E402

PKI = None                      # set in main()
STARTED = []                    # every FakeUpstream, stopped at the end


def upstream(tls=True):
    if tls:
        fu = fakeup.FakeUpstream(PKI + "/server.pem", PKI + "/server.key")
    else:
        fu = fakeup.FakeUpstream(tls=False)
    STARTED.append(fu)
    return fu.start()


class Client:
    """One DNS-over-TLS (or -TCP) connection to a FakeUpstream."""

    def __init__(self, fu, tls=True):
        s = socket.create_connection(("127.0.0.1", fu.port), timeout=5)
        if tls:
            ctx = ssl.create_default_context(cafile=PKI + "/ca.pem")
            s = ctx.wrap_socket(s, server_hostname="dns.test")
        self.sock = s
        self.buf = b""
        self.qid = 0x100

    def send(self, name, qtype="A", edns=False, rd=True):
        """Sends a query; returns it (a dns.message)."""
        self.qid += 1
        q = dns.message.make_query(name, qtype, use_edns=0 if edns else None)
        q.id = self.qid
        if not rd:
            q.flags &= ~dns.flags.RD
        wire = q.to_wire()
        self.sock.sendall(struct.pack("!H", len(wire)) + wire)
        return q

    def recv(self, timeout=2.0):
        """The next reply, or None when none comes within timeout; raises
        EOFError when the upstream closed the connection."""
        end = time.monotonic() + timeout
        while True:
            if len(self.buf) >= 2:
                ln = struct.unpack("!H", self.buf[:2])[0]
                if len(self.buf) >= 2 + ln:
                    wire = self.buf[2:2 + ln]
                    self.buf = self.buf[2 + ln:]
                    return dns.message.from_wire(wire)
            left = end - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except (socket.timeout, ssl.SSLWantReadError):
                return None
            if not data:
                raise EOFError("upstream closed the connection")
            self.buf += data

    def ask(self, name, qtype="A", edns=False, timeout=2.0):
        """Sends a query and waits for its reply (None: no reply)."""
        q = self.send(name, qtype, edns)
        r = self.recv(timeout)
        check(r is None or r.id == q.id, "reply ID %s for query ID %d" % (
            None if r is None else r.id, q.id))
        return r

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def addrs(r):
    return [rd.address for rrs in r.answer for rd in rrs
            if rrs.rdtype == dns.rdatatype.A]


def keepalive_of(r):
    """The TIMEOUT data bytes of r's edns-tcp-keepalive option, or None."""
    if r.edns < 0:
        return None
    for o in r.options:
        if int(o.otype) == 11:
            return bytes(o.to_wire() or b"")
    return None


# ---- checks ----

def normal_answers():
    """A normal upstream answers A 192.0.2.1 over TLS and over TCP (the client here works)."""
    for tls in (True, False):
        fu = upstream(tls)
        c = Client(fu, tls)
        r = c.ask("plain.example.")
        check(r is not None and addrs(r) == [fakeup.GOOD_ADDR],
              "tls=%s: %s" % (tls, r))
        c.close()


def silent_is_a_blackhole():
    """silent (even with a budget of 1) completes TLS, reads every query, answers none and keeps the connection open; queries read while silent stay unanswered after set(mode="normal"), while a new one is answered on the same connection."""
    fu = upstream()
    fu.set(mode="silent", budget=1)
    c = Client(fu)
    check(until(lambda: fu.stats()["handshakes"] == 1, 2), "no handshake")
    sent = [c.send("hole%d.example." % i) for i in range(5)]
    r = c.recv(1.5)
    check(r is None, "silent answered: %s" % r)
    check(fu.nqueries("hole") == 5, "read %d of 5 queries" %
          fu.nqueries("hole"))
    st = fu.stats()
    check(st["replies"] == 0 and st["closed"] == 0 and st["live"] == 1,
          "want no replies, the connection live: %s" % st)
    check(fu.mode == "silent", "budget ended silent: mode %s" % fu.mode)
    # A second connection is held silent too.
    c2 = Client(fu)
    c2.send("hole-b.example.")
    check(c2.recv(0.5) is None, "silent answered on a second connection")
    fu.set(mode="normal")
    q = c.send("after.example.")
    r = c.recv(2)
    check(r is not None and r.id == q.id and
          addrs(r) == [fakeup.GOOD_ADDR], "after silent: %s" % r)
    r = c.recv(0.5)
    check(r is None, "a query read while silent was answered later: %s (of "
          "%s)" % (r and r.id, [x.id for x in sent]))
    check(fu.stats()["closed"] == 0, "a silent connection was closed")
    c.close()
    c2.close()


def rcode_all_each():
    """rcode_all answers every query with the given RCODE (REFUSED, SERVFAIL, NOTIMP, FORMERR, by name or number), echoing ID, question, RD and the OPT, with no records, whatever the name's rule says."""
    fu = upstream(tls=False)
    fu.rule("ruled.example.", rcode="NXDOMAIN")
    c = Client(fu, tls=False)
    for rc in ("REFUSED", "SERVFAIL", "NOTIMP", "FORMERR", 5, "servfail"):
        fu.set(mode="rcode_all", rcode=rc)
        want = dns.rcode.Rcode.make(rc)
        for name, edns in (("a.example.", False), ("b.example.", True),
                           ("ruled.example.", False)):
            q = c.send(name, "AAAA", edns=edns)
            r = c.recv(2)
            check(r is not None, "%s: no reply for %s" % (rc, name))
            check(r.rcode() == want, "%s: rcode %s for %s" % (
                rc, dns.rcode.to_text(r.rcode()), name))
            check(r.id == q.id and r.question == q.question,
                  "%s: ID or question not echoed for %s" % (rc, name))
            check(r.flags & dns.flags.QR and r.flags & dns.flags.RD,
                  "%s: flags %s" % (rc, dns.flags.to_text(r.flags)))
            check(not r.answer and not r.authority,
                  "%s: records in the reply for %s" % (rc, name))
            check((r.edns >= 0) == edns, "%s: OPT %s, query had %s" % (
                rc, r.edns >= 0, edns))
    c.close()


def rcode_all_budget():
    """rcode_all with budget=2 answers two queries with the RCODE, then the upstream is normal again."""
    fu = upstream(tls=False)
    fu.set(mode="rcode_all", rcode="REFUSED", budget=2)
    c = Client(fu, tls=False)
    got = []
    for i in range(4):
        r = c.ask("b%d.example." % i)
        check(r is not None, "no reply to query %d" % i)
        got.append(dns.rcode.to_text(r.rcode()))
    check(got == ["REFUSED", "REFUSED", "NOERROR", "NOERROR"], got)
    check(fu.mode == "normal", "mode %s" % fu.mode)
    c.close()


def drop_first_shared():
    """A DropFirst(2) set on two upstreams (one TLS, one TCP) drops the first two queries for a name across both, then both answer it; counts are per name, case-insensitive; dropped queries are recorded and leave their connection open."""
    a, b = upstream(), upstream(tls=False)
    df = fakeup.DropFirst(2)
    a.set(drop_first=df)
    b.set(drop_first=df)
    ca, cb = Client(a), Client(b, tls=False)
    check(ca.ask("pop.example.", timeout=0.4) is None,
          "first query for pop answered")
    check(cb.ask("POP.Example.", timeout=0.4) is None,
          "second query for pop (other upstream, other case) answered")
    r = ca.ask("pop.example.")
    check(r is not None and addrs(r) == [fakeup.GOOD_ADDR],
          "third query (through a) not answered: %s" % r)
    r = cb.ask("pop.example.", qtype="TXT")
    check(r is not None and r.rcode() == dns.rcode.NOERROR,
          "fourth query (through b) not answered: %s" % r)
    check(df.count("pop.example") == 2 and df.seen("POP.example.") == 4,
          "dropped %d, seen %d" % (df.count("pop.example"),
                                   df.seen("pop.example")))
    check([d["port"] for d in df.dropped] == [a.port, b.port],
          "dropped by %s, want a then b" % [d["port"] for d in df.dropped])
    check(len(a.dropped) == 1 and len(b.dropped) == 1 and
          a.stats()["dropped"] == 1, "a.dropped %s, b.dropped %s" % (
              a.dropped, b.dropped))
    check([q.get("dropped", False) for q in a.queries] == [True, False],
          "a's records: %s" % a.queries)
    # Another name has a count of its own.
    check(cb.ask("other.example.", timeout=0.4) is None,
          "first query for another name answered")
    check(a.stats()["closed"] == 0 and b.stats()["closed"] == 0,
          "a connection with a dropped query was closed")
    ca.close()
    cb.close()


def drop_first_names_and_modes():
    """DropFirst(1, names=[...]) drops only those names; queries read by a silent upstream are not counted; a dropped query spends no budget; drop_first=None stops dropping, drop_first=1 gives an upstream a count of its own."""
    a, b = upstream(tls=False), upstream(tls=False)
    df = fakeup.DropFirst(1, names=["only.example"])
    a.set(drop_first=df, mode="silent")
    b.set(drop_first=df, mode="rcode_all", rcode="SERVFAIL", budget=1)
    ca, cb = Client(a, tls=False), Client(b, tls=False)
    ca.send("only.example.")
    check(until(lambda: a.nqueries("only") == 1, 2), "a did not read it")
    check(df.seen("only.example") == 0, "a silent upstream's query counted")
    r = cb.ask("free.example.")
    check(r is not None and r.rcode() == dns.rcode.SERVFAIL,
          "a name not listed was dropped or not SERVFAIL: %s" % r)
    b.set(mode="rcode_all", budget=1)
    check(cb.ask("only.example.", timeout=0.4) is None,
          "first query for a listed name answered")
    r = cb.ask("only.example.")
    check(r is not None and r.rcode() == dns.rcode.SERVFAIL,
          "the drop spent the budget: %s" % r)
    b.set(drop_first=None)
    r = cb.ask("only.example.")
    check(r is not None, "drop_first=None still drops")
    b.set(drop_first=1)
    check(cb.ask("mine.example.", timeout=0.4) is None,
          "drop_first=1 did not drop")
    check(cb.ask("mine.example.") is not None, "drop_first=1 dropped twice")
    check(df.count("mine.example") == 0, "the shared DropFirst counted it")
    ca.close()
    cb.close()


def keepalive_on_kth_answer():
    """keepalive=0, keepalive_on=3 puts edns-tcp-keepalive TIMEOUT 0 in the third answer on each connection only (OPT added when the query had none); keepalive_on=None puts it in all, keepalive=None in none."""
    fu = upstream()
    fu.set(keepalive=0, keepalive_on=3)
    for conn in range(2):
        c = Client(fu)
        got = []
        for i in range(5):
            r = c.ask("k%d-%d.example." % (conn, i), edns=i % 2 == 1)
            check(r is not None and addrs(r) == [fakeup.GOOD_ADDR],
                  "no answer %d" % i)
            got.append(keepalive_of(r))
        check(got == [None, None, b"\0\0", None, None],
              "connection %d: keepalive in answers %s" % (conn, got))
        c.close()
    recs = [q for q in fu.queries if q.get("keepalive") is not None]
    check([(q["qname"], q["answer_no"]) for q in recs] ==
          [("k0-2.example.", 3), ("k1-2.example.", 3)],
          "records with keepalive: %s" % recs)
    fu.set(keepalive=600, keepalive_on=None)
    c = Client(fu)
    check([keepalive_of(c.ask("all%d.example." % i)) for i in range(2)] ==
          [b"\x02\x58"] * 2, "keepalive_on=None: not in every answer")
    fu.set(keepalive_on=[2, 4])
    check([keepalive_of(c.ask("set%d.example." % i)) for i in range(3)] ==
          [None, b"\x02\x58", None],
          "keepalive_on=[2, 4] on the 3rd-5th answers of a connection")
    fu.set(keepalive=None)
    check(keepalive_of(c.ask("none.example.")) is None,
          "keepalive=None still sends it")
    c.close()


def keepalive_by_name():
    """rule(name, options=[(11, ...)]) puts the option in that name's answers only, and a dropped query does not count as an answer for keepalive_on."""
    fu = upstream(tls=False)
    fu.rule("ka.example", options=[(11, b"\x00\x00")])
    c = Client(fu, tls=False)
    check(keepalive_of(c.ask("other.example.")) is None, "other name has it")
    r = c.ask("KA.example.")
    check(r is not None and keepalive_of(r) == b"\0\0" and
          addrs(r) == [fakeup.GOOD_ADDR], "ka.example: %s" % r)
    c.close()
    fu.set(drop_first=1, keepalive=0, keepalive_on=1)
    c = Client(fu, tls=False)
    check(c.ask("d.example.", timeout=0.4) is None, "not dropped")
    check(keepalive_of(c.ask("d.example.")) == b"\0\0",
          "the first answer after a drop lacks keepalive")
    c.close()


CHECKS = [normal_answers, silent_is_a_blackhole, rcode_all_each,
          rcode_all_budget, drop_first_shared, drop_first_names_and_modes,
          keepalive_on_kth_answer, keepalive_by_name]


def main():
    global PKI
    ap = argparse.ArgumentParser()
    ap.add_argument("-k", default="")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="dnsfwd-fakeup.")
    PKI = os.path.join(work, "pki")
    p = subprocess.run(["sh", os.path.join(HERE, "mkcerts.sh"), PKI],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True)
    if p.returncode != 0:
        print("mkcerts.sh failed: %s" % p.stdout)
        print("0 passed, 1 failed")
        return 1
    def stop_fakeups():
        for fu in STARTED:
            fu.stop()
            for e in fu.errors:
                print("  fakeup %d: %s" % (fu.port, e))
        STARTED.clear()
    try:
        passed, failed, _ = checks.run(CHECKS, args.k,
                                       after=stop_fakeups)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("test_fakeup: %d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

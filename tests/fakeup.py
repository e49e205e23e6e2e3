"""fakeup: a programmable fake DNS-over-TLS / DNS-over-TCP upstream for tests.

    fu = FakeUpstream(certfile, keyfile)      # or FakeUpstream(tls=False)
    fu.start(); port = fu.port
    fu.set(mode="reorder", n=10)              # behaviour, changeable any time
    fu.set(delay_ms=300)
    ... fu.queries, fu.conns, fu.resumed, fu.stats() ...
    fu.stop()

It listens on 127.0.0.1 (or host="::1"), reads 2-byte-length-framed queries (pipelined) and
answers them per the current behaviour.  One thread accepts; each connection
has one thread that owns its socket (reads, and writes replies whose time
has come), so no socket is used from two threads.

Answers in "normal" mode: names starting with "big." get a TXT RRset of
about 2100 bytes, names starting with "huge." one of about 20,300 bytes
(more than any UDP client accepts), names starting with "mid." one of
about 880 bytes (over 512, under 1232); names starting with "nx." get
NXDOMAIN (without SOA); qtype A gets A 192.0.2.1; anything else
NOERROR/NODATA.  Every record has TTL 60.  Replies echo the query's ID,
its CD bit, and the DO bit when the query had it (RFC 3225).

Per-name answers (fu.rule(name, ...), name matched case-insensitively)
override the above for that name: ttl=N for the answer records (A, or
TXT "fakeup"), rcode= any RCODE name ("NXDOMAIN", "SERVFAIL", "REFUSED",
"FORMERR", ...) or "NODATA", soa=(TTL, MINIMUM) for an SOA in the
authority section of an NXDOMAIN or NODATA answer, tc=True to set TC,
delay_ms=N to answer that name N ms later than the others,
options=[(code, bytes), ...] for an OPT with these options in its answers,
on_query=fn to call fn(record) as the query is read (before its answer).
With fu.set(mark_bits=True), A answers say which of the query's DO and
CD bits were set: 192.0.2.1 neither, .2 DO, .3 CD, .4 both (marked_addr).
Queries are recorded with their "do", "cd" and "rd" bits, whether they had
an OPT record ("opt"), its "version" (q.edns) and "payload", and its
options as a list of (code, data bytes) ("options"); fu.count(name, do=,
cd=, rd=) counts those for one exact name.

Resolver-like extras, set any time with fu.set(...):
  refuse_rd0=True     answer a query with RD=0 REFUSED (as a recursive
                      resolver that will not answer from its cache only)
  answer_options=[(code, bytes), ...]
                      put these options in an OPT of every answer, even
                      when the query had no OPT (an upstream whose options
                      must never reach a client); answer_pad=468 also pads
                      (option 12) the answer to a multiple of 468 bytes
  ecs_answer=True     an A answer for a query with an EDNS Client Subnet
                      (option 8, IPv4) gets ecs_addr(its address bytes),
                      10.x.y.z from the first three, and echoes the ECS
                      option with SCOPE = SOURCE PREFIX-LENGTH
  keepalive=T         put edns-tcp-keepalive (RFC 7828, option 11) with
                      TIMEOUT T (units of 100 ms; 0: close when idle) in
                      an OPT of answers, even when the query had no OPT
                      (not in the wrong replies of wrong_id, wrong_qname,
                      qr0 and garbage); None: stop
  keepalive_on=K      only in the K-th answer made on each connection
                      (counting from 1, in the order the queries were read;
                      every reply of any mode counts, dropped queries do
                      not), or in those whose numbers are in a collection
                      K; None (the default): in every answer.  A query
                      whose answer carried it is recorded with
                      "keepalive": T; every answered one with "answer_no"
  drop_first=DropFirst(n, names=None)
                      drop the first n queries for each name across every
                      upstream the same DropFirst is set on (see
                      DropFirst), answering later ones as the mode says;
                      an int n: a DropFirst of this upstream's own; None:
                      stop.  fu.dropped lists the records of the queries
                      this upstream dropped (each also has "dropped": True
                      in fu.queries)
FakeUpstream(sock_buf=N, mss=M) sets SO_RCVBUF and SO_SNDBUF (and
TCP_MAXSEG, which keeps the peer's kernel send buffer small too) on
accepted connections (through the listening socket), and
fu.set(read_pause_ms=N) makes each connection leave its socket unread
for N ms after every read, so that a peer's TLS reads and writes hit
would-block often.  fu.set(handshake_pause_ms=N) reads nothing for N ms
before the handshake's last step and N ms after it, so that a TLS 1.3
client's session tickets reach it while its first writes are blocked.
FakeUpstream(fastopen=True) takes TCP Fast Open (RFC 7413) on its
listening socket: with the server bit of net.ipv4.tcp_fastopen, a client
gets a cookie and may send data in its SYN on the next connection.
FakeUpstream(nagle=True) leaves Nagle's algorithm on for accepted
connections, as unbound 1.17 does: an answer written while the previous
one is unacknowledged waits for the client's ACK.

Modes (set(mode=...)); "budget" (set(budget=K)) makes a special mode apply
K times and then revert to "normal" (None: for ever):
  normal       answer as above (after delay_ms)
  silent       a blackhole: accept, complete TLS, read and record every
               query, answer none of them and never close the connection
               (only the peer, stop, close_all or refuse end it).  Budget
               does not apply: silent lasts until set(mode=...) changes
               it, and the queries it read stay unanswered after that.
               Replies already scheduled (delay_ms) still go out
  rcode_all    answer every query with the RCODE set(rcode=...) gives (a
               name, "REFUSED", "SERVFAIL", "NOTIMP", "FORMERR", ..., or a
               number), as a resolver would: the query's ID, question, RD
               and CD bits, an OPT when the query had one, no records;
               per-name rules do not apply (one budget unit per reply)
  blackhole_first_conn
               read queries on the first connection accepted (cid 1),
               never answer them; every other connection is "normal"
  reorder      hold replies on a connection until n are pending, then send
               them in reverse order (one budget unit per batch)
  close_after  on a connection's n-th query, close it, answering none of
               its queries (one unit per close); counted in fins
  rst_after    the same, but abortively: SO_LINGER 0 then close, so the
               peer sees a RST with its queries held (one unit per close);
               counted in rsts
  close_mid    answer with the first half of the frame, then close
  wrong_id     reply with the ID plus one and A 198.51.100.66
  wrong_qname  reply for "wrong.invalid." with A 198.51.100.66
  qr0          the right reply with A 198.51.100.66 but QR=0
  garbage      send a 7-byte frame of non-DNS bytes instead of the reply
  dup          send the correct reply twice
  stall        accept TCP but never do the TLS handshake (one unit per
               connection; holds the socket open until stop/close_all)
  reset        accept TCP and at once close it with a RST (one unit per
               connection): dials fail, yet each is counted in conns and
               its time in conn_times
  refuse       not a mode: use refuse()/unrefuse() to stop/start listening.
Wrong answers always carry 198.51.100.66 (BAD_ADDR) so tests can spot them.

fu.set(jitter_ms=J) delays each reply by delay_ms plus a random 0..J ms
(reordering replies on a connection), drawn from fu.rng, a random.Random
that fu.set(seed=S) reseeds, so a soak can be replayed from its seed.
fu.stats() counts the connections fakeup closed while queries on them
were unanswered, with a FIN (fins_held: close_after, close_mid,
close_all, refuse, ...) or a RST (rsts_held: rst_after).
"""

import heapq
import itertools
import random
import select
import socket
import ssl
import struct
import threading
import time

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

GOOD_ADDR = "192.0.2.1"
BAD_ADDR = "198.51.100.66"
MODES = {"normal", "silent", "reorder", "close_after", "close_mid",
         "wrong_id", "wrong_qname", "qr0", "garbage", "dup", "stall",
         "blackhole_first_conn", "reset", "rst_after", "rcode_all"}


def _absname(name):
    """name lower-cased and absolute, as queries are recorded."""
    name = name.lower()
    return name if name.endswith(".") else name + "."


class DropFirst:
    """Drops the first n queries for each name (the names given, or every
    name), counted across all the FakeUpstreams it is set on, and answers
    the later ones: an upstream path that loses a name's first query.

        df = DropFirst(1, names=["pop.example"])
        a.set(drop_first=df); b.set(drop_first=df)

    Names match case-insensitively; all types of a name share a count.
    A dropped query is read, recorded in fu.queries with "dropped": True,
    never answered, and its connection stays open.  Only queries the
    upstream's mode would answer count (not those read in "silent", say),
    and a dropped query spends none of the mode's budget.
    df.dropped lists the dropped queries' records, each with the "port"
    of the upstream that dropped it (fu.dropped: that upstream's own);
    df.count(name) is how many were dropped for a name, df.seen(name) how
    many were counted.
    """

    def __init__(self, n, names=None):
        self.n = n
        self.names = (None if names is None else
                      {_absname(x) for x in names})
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        """Counts start again: the next n queries for a name are dropped."""
        with self.lock:
            self._seen = {}         # lower-case name -> queries counted
            self.dropped = []

    def _take(self, fu, rec):
        """Counts a query (record rec) to fu; True if it is to be dropped.
        Called with fu.lock held; never takes it."""
        name = rec["qname"]
        if name is None or (self.names is not None and
                            name not in self.names):
            return False
        with self.lock:
            k = self._seen.get(name, 0)
            self._seen[name] = k + 1
            if k >= self.n:
                return False
            rec["dropped"] = True
            self.dropped.append(dict(rec, port=fu.port))
            return True

    def seen(self, name):
        with self.lock:
            return self._seen.get(_absname(name), 0)

    def count(self, name):
        name = _absname(name)
        with self.lock:
            return sum(1 for r in self.dropped if r["qname"] == name)


def big_txt_strings():
    """The TXT strings of a big.* answer: 10 x 200 bytes, about 2100 on the wire."""
    return ["%02d" % i + chr(ord("a") + i) * 198 for i in range(10)]


def huge_txt_strings():
    """The TXT strings of a huge.* answer: 80 RRs of one 240-byte string,
    about 20,300 bytes on the wire."""
    return ["%03d" % i + chr(ord("a") + i % 26) * 237 for i in range(80)]


def mid_txt_strings():
    """The TXT strings of a mid.* answer: 4 x 200 bytes, about 880 on the
    wire: more than 512, less than 1232."""
    return ["%02d" % i + chr(ord("p") + i) * 198 for i in range(4)]


def marked_addr(do, cd):
    """The A address of an answer with mark_bits on, for DO and CD bits."""
    return "192.0.2.%d" % (1 + (1 if do else 0) + (2 if cd else 0))


def ecs_addr(addr_bytes):
    """The A address an ecs_answer upstream gives for an ECS address
    (the option's ADDRESS bytes, cut to the source prefix)."""
    b = (bytes(addr_bytes) + b"\0\0\0")[:3]
    return "10.%d.%d.%d" % tuple(b)


def query_options(q):
    """[(code, data bytes)] of the OPT options of dns.message q."""
    out = []
    for o in (q.options if q.edns >= 0 else ()):
        data = o.to_wire()
        out.append((int(o.otype), bytes(data or b"")))
    return out


def _ecs_of(q):
    """(family, source prefix, address bytes) of q's ECS option, or None."""
    for code, data in query_options(q):
        if code == 8 and len(data) >= 4:
            fam, src = struct.unpack("!HB", data[:3])
            return fam, src, data[4:]
    return None


def _soa(qn, soa_ttl, minimum):
    zone = qn.parent() if len(qn.labels) > 2 else qn
    return dns.rrset.from_text(
        zone, soa_ttl, "IN", "SOA",
        "ns.invalid. hostmaster.invalid. 1 3600 600 86400 %d" % minimum)


def make_answer(q, bad=False, rule=None, mark=False, ecs=False,
                refuse_rd0=False):
    """The dns.message reply fakeup gives to query q (bad: BAD_ADDR; rule:
    the per-name answer; mark: A address by DO and CD bits; ecs: A address
    by the ECS option; refuse_rd0: REFUSED for RD=0)."""
    r = dns.message.make_response(q)
    if refuse_rd0 and not bad and not (q.flags & dns.flags.RD):
        r.set_rcode(dns.rcode.REFUSED)
        return r
    r.flags |= q.flags & dns.flags.CD
    if q.edns >= 0 and q.ednsflags & dns.flags.DO:
        r.use_edns(0, dns.flags.DO, r.payload)
    if not q.question:
        return r
    qn = q.question[0].name
    first = qn.labels[0].lower() if len(qn.labels) > 1 else b""
    qt = q.question[0].rdtype
    addr = GOOD_ADDR
    if mark:
        addr = marked_addr(q.edns >= 0 and q.ednsflags & dns.flags.DO,
                           q.flags & dns.flags.CD)
    ecs_opt = _ecs_of(q) if ecs else None
    if ecs_opt is not None and ecs_opt[0] == 1:
        addr = ecs_addr(ecs_opt[2])
        data = struct.pack("!HBB", 1, ecs_opt[1], ecs_opt[1]) + ecs_opt[2]
        r.use_edns(0, r.ednsflags, 1232,
                   options=[dns.edns.GenericOption(8, data)])
    if bad:
        r.answer.append(dns.rrset.from_text(qn, 60, "IN", "A", BAD_ADDR))
    elif rule is not None:
        rcode = rule.get("rcode")
        ttl = rule.get("ttl", 60)
        if rcode in (None, "NOERROR"):
            if qt == dns.rdatatype.A:
                r.answer.append(dns.rrset.from_text(qn, ttl, "IN", "A", addr))
            elif qt == dns.rdatatype.TXT:
                r.answer.append(dns.rrset.from_text(qn, ttl, "IN", "TXT",
                                                    '"fakeup"'))
        elif rcode != "NODATA":
            r.set_rcode(dns.rcode.from_text(rcode))
        if rule.get("soa") is not None and rcode in ("NXDOMAIN", "NODATA"):
            r.authority.append(_soa(qn, *rule["soa"]))
        if rule.get("tc"):
            r.flags |= dns.flags.TC
    elif first == b"big":
        r.answer.append(dns.rrset.from_text_list(
            qn, 60, "IN", "TXT", ['"%s"' % s for s in big_txt_strings()]))
    elif first == b"huge":
        r.answer.append(dns.rrset.from_text_list(
            qn, 60, "IN", "TXT", ['"%s"' % s for s in huge_txt_strings()]))
    elif first == b"mid":
        r.answer.append(dns.rrset.from_text_list(
            qn, 60, "IN", "TXT", ['"%s"' % s for s in mid_txt_strings()]))
    elif first == b"nx":
        r.set_rcode(dns.rcode.NXDOMAIN)
    elif qt == dns.rdatatype.A:
        r.answer.append(dns.rrset.from_text(qn, 60, "IN", "A", addr))
    return r


def frame(wire):
    return struct.pack("!H", len(wire)) + wire


class _Conn:
    """One accepted connection, served by its own thread."""

    def __init__(self, fu, sock, cid, stall):
        self.fu, self.sock, self.cid, self.stall = fu, sock, cid, stall
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.timers = []            # heap of (when, seq, bytes or None=close)
        self.seq = itertools.count()
        self.held = []              # reorder: frames waiting
        self.nq = 0
        self.pending_ids = set()    # IDs received and not yet replied to
        self.closing = False        # close once outbuf is flushed
        self.dead = False
        self.rst = False            # rst_after: close with SO_LINGER 0
        self.kill = False           # set by other threads: close now
        self.graceful = False
        self.read_at = 0.0          # read_pause_ms: no reading before this
        self.nans = 0               # answers made on this connection
        self.thread = threading.Thread(target=self.run, daemon=True)

    # -- helpers run on this connection's thread --
    def _would_answer(self, mode):
        """Whether a query read in mode gets a reply of any kind."""
        return not (mode in ("silent", "close_after", "rst_after") or
                    (mode == "blackhole_first_conn" and self.cid == 1))

    def schedule(self, delay_s, data, qid=None):
        heapq.heappush(self.timers,
                       (time.monotonic() + delay_s, next(self.seq), data, qid))

    def handle_query(self, wire):
        fu = self.fu
        self.nq += 1
        qid = struct.unpack("!H", wire[:2])[0] if len(wire) >= 2 else -1
        rec = {"conn": self.cid, "id": qid, "qname": None, "qtype": None,
               "t": time.monotonic(), "len": len(wire)}
        q = None
        try:
            q = dns.message.from_wire(wire)
            if q.question:
                rec["qname"] = q.question[0].name.to_text().lower()
                rec["qtype"] = q.question[0].rdtype
            rec["edns"] = q.edns
            rec["opt"] = q.edns >= 0
            rec["version"] = q.edns
            rec["payload"] = q.payload if q.edns >= 0 else None
            rec["options"] = query_options(q)
            rec["do"] = bool(q.edns >= 0 and q.ednsflags & dns.flags.DO)
            rec["cd"] = bool(q.flags & dns.flags.CD)
            rec["rd"] = bool(q.flags & dns.flags.RD)
        except Exception as e:  # record what we could not parse
            rec["error"] = repr(e)
        with fu.lock:
            if qid in self.pending_ids:
                fu.id_collisions += 1
            self.pending_ids.add(qid)
            fu.max_pending = max(fu.max_pending, len(self.pending_ids))
            fu.queries.append(rec)
            # Only a query the mode would answer is the drop's to take,
            # and a dropped one spends no budget.
            if (q is not None and fu.drop_first is not None and
                    self._would_answer(fu.mode) and
                    fu.drop_first._take(fu, rec)):
                fu.dropped.append(dict(rec))
                return
            mode = fu._take_mode(per_query=True, nq=self.nq)
            delay = fu.delay_ms / 1000.0
            if fu.jitter_ms:
                delay += fu.rng.uniform(0, fu.jitter_ms) / 1000.0
            n = fu.n
            rule = fu.rules.get(rec["qname"])
            on_query = None
            if rule is not None:
                delay += rule.get("delay_ms", 0) / 1000.0
                on_query = rule.get("on_query")
            mark = fu.mark_bits
            extra = dict(ecs=fu.ecs_answer, refuse_rd0=fu.refuse_rd0)
            aopts, apad = fu.answer_options, fu.answer_pad
            if rule is not None and mode != "rcode_all":
                aopts = aopts + rule.get("options", [])
            rcode_all = fu.rcode
            if q is not None and self._would_answer(mode):
                self.nans += 1
                if fu.keepalive is not None and (
                        fu.keepalive_on is None or
                        self.nans in fu.keepalive_on):
                    aopts = aopts + [(11, struct.pack("!H", fu.keepalive))]
                    rec["keepalive"] = fu.keepalive
                rec["answer_no"] = self.nans
        if on_query is not None:
            on_query(rec)
        if q is None:
            return
        if mode == "blackhole_first_conn":
            if self.cid == 1:
                return
            mode = "normal"
        if mode == "silent":
            return
        if mode in ("close_after", "rst_after"):
            if self.nq >= n:
                with fu.lock:
                    fu._spend()
                    if mode == "rst_after":
                        fu.rsts += 1
                    else:
                        fu.fins += 1
                self.rst = mode == "rst_after"
                self.dead = True     # drop everything, answer nothing
            return
        # Over TCP the query's EDNS payload size does not bound the reply.
        if mode == "rcode_all":
            ans = make_answer(q, rule={"rcode": rcode_all}, **extra)
            mode = "normal"
        else:
            ans = make_answer(q, rule=rule, mark=mark, **extra)
        if aopts or apad:
            do = ans.ednsflags & dns.flags.DO if ans.edns >= 0 else 0
            have = list(ans.options) if ans.edns >= 0 else []
            ans.use_edns(0, do, 1232, options=have + [
                dns.edns.GenericOption(c, d) for c, d in aopts],
                pad=apad or 0)
        good = frame(ans.to_wire(max_size=65535))
        if mode == "normal":
            self.schedule(delay, good, qid)
        elif mode == "dup":
            self.schedule(delay, good, qid)
            self.schedule(delay, good, qid)
        elif mode == "reorder":
            self.held.append((good, qid))
            if len(self.held) >= n:
                for i, (f, i_qid) in enumerate(reversed(self.held)):
                    self.schedule(delay + i * 0.001, f, i_qid)
                self.held = []
                with fu.lock:
                    fu._spend()
        elif mode == "close_mid":
            self.schedule(delay, good[:len(good) // 2], qid)
            self.schedule(delay, None)
        elif mode == "wrong_id":
            r = make_answer(q, bad=True)
            r.id = (q.id + 1) & 0xffff
            self.schedule(delay, frame(r.to_wire(max_size=65535)), qid)
        elif mode == "wrong_qname":
            r = make_answer(dns.message.make_query("wrong.invalid.", "A"),
                            bad=True)
            r.id = q.id
            self.schedule(delay, frame(r.to_wire(max_size=65535)), qid)
        elif mode == "qr0":
            r = make_answer(q, bad=True)
            r.flags &= ~dns.flags.QR
            self.schedule(delay, frame(r.to_wire(max_size=65535)), qid)
        elif mode == "garbage":
            self.schedule(delay, b"\x00\x07garbage", qid)

    def run(self):
        try:
            self._run()
        except Exception as e:
            with self.fu.lock:
                self.fu.errors.append("conn %d: %r" % (self.cid, e))
        finally:
            self._close()

    def _run(self):
        fu = self.fu
        sock = self.sock
        if self.stall:
            while not fu.stopping and not self.kill:
                time.sleep(0.02)
            return
        if fu.ctx is not None:
            sock.settimeout(5)
            try:
                sock = fu.ctx.wrap_socket(sock, server_side=True,
                                          do_handshake_on_connect=False)
                self.sock = sock
                if fu.handshake_pause_ms:
                    self._pause_in_handshake(sock, fu.handshake_pause_ms)
                sock.do_handshake()
                if fu.handshake_pause_ms:
                    self.read_at = (time.monotonic() +
                                    fu.handshake_pause_ms / 1000.0)
            except (ssl.SSLError, OSError) as e:
                with fu.lock:
                    fu.handshake_failures += 1
                    fu.errors.append("handshake %d: %r" % (self.cid, e))
                return
            with fu.lock:
                fu.handshakes += 1
                if sock.session_reused:
                    fu.resumed += 1
                fu.versions.append(sock.version())
        sock.setblocking(False)
        while not fu.stopping and not self.kill and not self.dead:
            now = time.monotonic()
            while self.timers and self.timers[0][0] <= now:
                _, _, data, qid = heapq.heappop(self.timers)
                if data is None:
                    self.closing = True
                else:
                    self.outbuf += data
                    with fu.lock:
                        self.pending_ids.discard(qid)
                        fu.replies += 1
            if self.closing and not self.outbuf:
                return
            timeout = 0.05
            if self.timers:
                timeout = max(0.0, min(timeout, self.timers[0][0] - now))
            may_read = now >= self.read_at
            if not may_read:
                timeout = max(0.0, min(timeout, self.read_at - now))
            readable = (may_read and fu.ctx is not None and
                        sock.pending() > 0)
            if not readable:
                r, w, _ = select.select([sock] if may_read else [],
                                        [sock] if self.outbuf else [],
                                        [], timeout)
                readable = bool(r)
                if w and self.outbuf:
                    self._write()
            if readable and not self.closing:
                if not self._read():
                    return
                if fu.read_pause_ms:
                    self.read_at = time.monotonic() + fu.read_pause_ms / 1e3
            elif self.outbuf:
                self._write()
        if self.kill and self.graceful:
            self._flush_and_shutdown()

    @staticmethod
    def _pause_in_handshake(sock, ms):
        """Sends the server's flight, then reads nothing for ms, and again
        for ms once the handshake is done.  A TLS 1.3 client is writing by
        then; the session tickets reach it between the pauses, while its
        writes are blocked on our full receive buffer."""
        sock.setblocking(False)
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            pass
        time.sleep(ms / 1000.0)
        sock.settimeout(5)

    def _read(self):
        """Reads what is there; returns False on EOF."""
        while True:
            try:
                data = self.sock.recv(65536)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError,
                    BlockingIOError):
                break
            except (ssl.SSLError, OSError):
                return False
            if not data:
                return False
            # Over TLS one recv returns at most one record's plaintext.
            with self.fu.lock:
                self.fu.max_recv = max(self.fu.max_recv, len(data))
            self.inbuf += data
        while len(self.inbuf) >= 2:
            ln = struct.unpack("!H", self.inbuf[:2])[0]
            if len(self.inbuf) < 2 + ln:
                break
            wire = bytes(self.inbuf[2:2 + ln])
            del self.inbuf[:2 + ln]
            self.handle_query(wire)
            if self.dead:
                return False
        return True

    def _write(self):
        try:
            n = self.sock.send(self.outbuf[:16384])
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError,
                BlockingIOError):
            return
        except (ssl.SSLError, OSError):
            self.dead = True
            return
        del self.outbuf[:n]

    def _flush_and_shutdown(self):
        try:
            self.sock.setblocking(True)
            self.sock.settimeout(0.3)
            if self.outbuf:
                self.sock.sendall(self.outbuf)
            if isinstance(self.sock, ssl.SSLSocket):
                self.sock.unwrap()
        except (ssl.SSLError, OSError, ValueError):
            pass

    def _close(self):
        with self.fu.lock:
            if self.pending_ids and not self.stall:
                if self.rst:
                    self.fu.rsts_held += 1
                else:
                    self.fu.fins_held += 1
        try:
            if self.rst:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                     struct.pack("ii", 1, 0))
            self.sock.close()
        except OSError:
            pass
        with self.fu.lock:
            self.fu.closed += 1
            self.fu.live.discard(self)


class FakeUpstream:
    def __init__(self, certfile=None, keyfile=None, tls=True, tls_max=None,
                 host="127.0.0.1", port=0, sock_buf=None, mss=None,
                 nagle=False, fastopen=False):
        self.host, self.port = host, port
        self.nagle = nagle      # leave Nagle on, as unbound 1.17 does
        self.fastopen = fastopen  # TCP Fast Open on the listening socket
        self.sock_buf, self.mss = sock_buf, mss
        self.ctx = None
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            if tls_max == "1.2":
                ctx.maximum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(certfile, keyfile)
            ctx.options &= ~ssl.OP_NO_TICKET     # tickets on (default anyway)
            ctx.num_tickets = 2
            ctx.sni_callback = self._sni
            self.ctx = ctx
        self.lock = threading.Lock()
        self.mode, self.n, self.delay_ms, self.budget = "normal", 1, 0, None
        self.rules = {}                 # lower-case qname -> rule dict
        self.mark_bits = False
        self.refuse_rd0 = False
        self.answer_options = []        # [(code, bytes)] added to answers
        self.answer_pad = 0
        self.ecs_answer = False
        self.rcode = None               # rcode_all: this RCODE's name
        self.drop_first = None          # a DropFirst, maybe shared
        self.keepalive = None           # edns-tcp-keepalive TIMEOUT
        self.keepalive_on = None        # on these answers (None: all)
        self.read_pause_ms = 0
        self.handshake_pause_ms = 0
        self.jitter_ms = 0
        self.rng = random.Random()
        self.reset_counters()
        self.live = set()
        self.stopping = False
        self._lsock = None              # owned by the accept thread
        self._want_listen, self._req, self._done = True, 0, 0
        self._thread = None

    def reset_counters(self):
        with self.lock:
            self.conns = 0            # TCP connections accepted
            self.conn_times = []      # time.monotonic() of each accept
            self.resets = 0           # connections reset in "reset" mode
            self.rsts = 0             # connections reset in "rst_after"
            self.fins = 0             # connections closed in "close_after"
            # Connections fakeup closed with queries unanswered: by a FIN
            # (close_after, close_mid, close_all, refuse, ...) or a RST.
            self.fins_held = 0
            self.rsts_held = 0
            self.handshakes = 0       # TLS handshakes completed
            self.handshake_failures = 0
            self.resumed = 0          # handshakes with session_reused
            self.closed = 0           # connections ended (either side)
            self.replies = 0          # frames written (incl. bad ones)
            self.queries = []         # dicts: conn, id, qname, qtype, t, ...
            self.dropped = []         # records of queries drop_first took
            self.id_collisions = 0    # ID reused while pending on one conn
            self.max_pending = 0      # most unanswered queries on one conn
            self.max_recv = 0         # largest single recv (a TLS record)
            self.versions = []
            self.snis = []
            self.errors = []

    # -- behaviour --
    def set(self, mode=None, n=None, delay_ms=None, budget="keep",
            mark_bits=None, refuse_rd0=None, answer_options=None,
            answer_pad=None, ecs_answer=None, read_pause_ms=None,
            jitter_ms=None, seed=None, handshake_pause_ms=None, rcode=None,
            drop_first="keep", keepalive="keep", keepalive_on="keep"):
        if rcode is not None:
            rcode = dns.rcode.to_text(dns.rcode.Rcode.make(rcode))
        if mode == "rcode_all":
            assert rcode is not None or self.rcode is not None, \
                "rcode_all needs rcode="
        if isinstance(drop_first, int) and not isinstance(drop_first, bool):
            drop_first = DropFirst(drop_first)
        if isinstance(keepalive_on, int):
            keepalive_on = frozenset([keepalive_on])
        elif keepalive_on not in (None, "keep"):
            keepalive_on = frozenset(keepalive_on)
        if keepalive not in (None, "keep"):
            assert 0 <= keepalive <= 0xffff, keepalive
        with self.lock:
            if rcode is not None:
                self.rcode = rcode
            if drop_first != "keep":
                self.drop_first = drop_first
            if keepalive != "keep":
                self.keepalive = keepalive
            if keepalive_on != "keep":
                self.keepalive_on = keepalive_on
            if handshake_pause_ms is not None:
                self.handshake_pause_ms = handshake_pause_ms
            if jitter_ms is not None:
                self.jitter_ms = jitter_ms
            if seed is not None:
                self.rng.seed(seed)
            if read_pause_ms is not None:
                self.read_pause_ms = read_pause_ms
            if mark_bits is not None:
                self.mark_bits = mark_bits
            if refuse_rd0 is not None:
                self.refuse_rd0 = refuse_rd0
            if answer_options is not None:
                self.answer_options = [(int(c), bytes(d))
                                       for c, d in answer_options]
            if answer_pad is not None:
                self.answer_pad = answer_pad
            if ecs_answer is not None:
                self.ecs_answer = ecs_answer
            if mode is not None:
                assert mode in MODES, mode
                self.mode = mode
            if n is not None:
                self.n = n
            if delay_ms is not None:
                self.delay_ms = delay_ms
            if budget != "keep":
                self.budget = budget

    def rule(self, name, ttl=None, rcode=None, soa=None, tc=False,
             delay_ms=0, options=(), on_query=None):
        """Answers for name (absolute or not, any case) from now on: TTL
        ttl (default 60), rcode an RCODE name or "NODATA", soa (TTL,
        MINIMUM) in the authority of an NXDOMAIN/NODATA answer, tc: TC,
        delay_ms: added to the answer's delay, options: [(code, bytes)]
        in an OPT of the answer, as answer_options; on_query: called with
        the query's record on the connection's thread as it is read,
        before its answer is scheduled (to act on the client just then)."""
        name = _absname(name)
        r = {"rcode": rcode, "soa": soa, "tc": tc, "delay_ms": delay_ms,
             "options": [(int(c), bytes(d)) for c, d in options],
             "on_query": on_query}
        if ttl is not None:
            r["ttl"] = ttl
        with self.lock:
            self.rules[name] = r

    def _take_mode(self, per_query, nq=0):
        """Current mode for a query (lock held); spends budget per query
        for the reply-shaping modes."""
        m = self.mode
        if per_query and m in ("close_mid", "wrong_id", "wrong_qname", "qr0",
                               "garbage", "dup", "rcode_all"):
            self._spend()
        return m

    def _spend(self):
        if self.budget is not None:
            self.budget -= 1
            if self.budget <= 0:
                self.mode, self.budget = "normal", None

    def _sni(self, sslobj, name, ctx):
        with self.lock:
            self.snis.append(name)

    # -- listening --
    def start(self):
        self._open()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()
        return self

    def _open(self):
        fam = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.sock_buf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.sock_buf)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.sock_buf)
        if self.mss:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, self.mss)
        if self.fastopen:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_FASTOPEN, 16)
        s.bind((self.host, self.port))
        s.listen(128)
        self.port = s.getsockname()[1]
        self._lsock = s

    def _hold(self):
        """Keeps the port while refusing: bound, not listening, so dials
        are refused and no other test's listener can take the port (a
        dnsfwd dialling it would reach that one instead)."""
        fam = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((self.host, self.port))
        except OSError as e:
            s.close()
            with self.lock:
                self.errors.append("hold: %r" % e)
            return
        self._held = s

    def _unhold(self):
        if getattr(self, "_held", None) is not None:
            self._held.close()
            self._held = None

    def _accept_loop(self):
        """Owns the listening socket: opens/closes it as asked, accepts."""
        cids = itertools.count(1)
        while not self.stopping:
            with self.lock:
                want, req = self._want_listen, self._req
            if want and self._lsock is None:
                self._unhold()
                try:
                    self._open()
                except OSError as e:
                    with self.lock:
                        self.errors.append("rebind: %r" % e)
            elif not want and self._lsock is not None:
                self._lsock.close()
                self._lsock = None
                self._hold()
            with self.lock:
                self._done = req
            if self._lsock is None:
                time.sleep(0.01)
                continue
            r, _, _ = select.select([self._lsock], [], [], 0.01)
            if not r:
                continue
            try:
                s, _ = self._lsock.accept()
            except OSError:
                continue
            if not self.nagle:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                self.conns += 1
                self.conn_times.append(time.monotonic())
                cid = next(cids)
                reset = self.mode == "reset"
                stall = self.mode == "stall"
                if stall or reset:
                    self._spend()
                if reset:
                    self.resets += 1
                    self.closed += 1
                else:
                    # Started before others can see it in live, whose
                    # close_all() and stop() join its thread.
                    c = _Conn(self, s, cid, stall)
                    c.thread.start()
                    self.live.add(c)
            if reset:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                             struct.pack("ii", 1, 0))
                s.close()
        if self._lsock is not None:
            self._lsock.close()
            self._lsock = None
        self._unhold()

    def _listen(self, want):
        with self.lock:
            self._want_listen = want
            self._req += 1
            req = self._req
        for _ in range(300):            # the accept loop acts within ~20 ms
            with self.lock:
                if self._done >= req:
                    return
            time.sleep(0.005)
        raise RuntimeError("fakeup accept loop did not answer")

    def refuse(self):
        """Stop listening and drop every connection: dials are refused."""
        self._listen(False)
        self.close_all(graceful=False)

    def unrefuse(self):
        """Listen again on the same port."""
        self._listen(True)

    def close_all(self, graceful=True, wait=True):
        """Close every live connection (graceful: TLS close_notify first)."""
        with self.lock:
            live = list(self.live)
        for c in live:
            c.graceful = graceful
            c.kill = True
        if wait:
            for c in live:
                c.thread.join(2)

    def stop(self):
        self.stopping = True
        if self._thread:
            self._thread.join(3)
        with self.lock:
            live = list(self.live)
        for c in live:
            c.thread.join(2)

    # -- reading results --
    def nqueries(self, qname_prefix=None):
        with self.lock:
            if qname_prefix is None:
                return len(self.queries)
            return sum(1 for q in self.queries
                       if (q["qname"] or "").startswith(qname_prefix))

    def count(self, name, do=None, cd=None, rd=None):
        """Queries seen for exactly name (any case), optionally only those
        with the DO (or CD, RD) bit as given."""
        return len(self.records(name, do=do, cd=cd, rd=rd))

    def records(self, name, do=None, cd=None, rd=None):
        """The records (dicts) of the queries seen for exactly name (any
        case), optionally only those with the DO (CD, RD) bit as given."""
        name = name.lower() if name.endswith(".") else name.lower() + "."
        with self.lock:
            return [dict(q) for q in self.queries if q["qname"] == name and
                    (do is None or q.get("do") == bool(do)) and
                    (cd is None or q.get("cd") == bool(cd)) and
                    (rd is None or q.get("rd") == bool(rd))]

    def stats(self):
        with self.lock:
            return {"conns": self.conns, "handshakes": self.handshakes,
                    "handshake_failures": self.handshake_failures,
                    "resets": self.resets, "rsts": self.rsts,
                    "fins": self.fins, "fins_held": self.fins_held,
                    "rsts_held": self.rsts_held,
                    "resumed": self.resumed, "closed": self.closed,
                    "queries": len(self.queries), "replies": self.replies,
                    "dropped": len(self.dropped),
                    "id_collisions": self.id_collisions,
                    "max_pending": self.max_pending,
                    "max_recv": self.max_recv,
                    "live": len(self.live)}

    def __enter__(self):
        return self.start()

    def __exit__(self, *a):
        self.stop()

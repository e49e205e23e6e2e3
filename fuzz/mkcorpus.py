#!/usr/bin/python3
"""Writes the seed corpora of the fuzz targets under fuzz/corpus/<target>/.

    /usr/bin/python3 fuzz/mkcorpus.py

Debian's python3 with dnspython (python3-dnspython).  Every seed is in
the input format its target reads (see the comment at the top of each
fuzz/fuzz_<target>.c) and carries real DNS messages made by dnspython:
queries with and without EDNS, DO and CD, ECS, cookies, padding,
keepalive, two OPTs, EDNS versions other than 0, odd opcodes; answers
with compression, CNAME chains, NXDOMAIN and NODATA with SOA, answers
near and over 1232 bytes, an OPT in the middle of the additional section,
upstream options; streams of several framed replies; command lines.
Output is deterministic (fixed IDs, no randomness), so running it again
changes nothing unless this file changed.  Existing files of the four
directories are replaced.
"""
import os
import shutil
import struct

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus")

# The names fuzz_cache.c and fuzz_upstream.c pick by number.
NAMES = ["example.com", "a.example", "www.example.org", "x", "nx.example",
         "cname.example", "big.example", "mid.example"]

COOKIE = bytes(range(1, 9))
OPT_COOKIE, OPT_KEEPALIVE, OPT_PADDING, OPT_NSID, OPT_EDE = 10, 11, 12, 3, 15


def u16(v):
    return struct.pack("!H", v)


def opt(code, data=b""):
    return dns.edns.GenericOption(code, data)


def ecs(addr, prefix):
    return dns.edns.ECSOption(addr, prefix)


def query(name, rdtype="A", qid=0x1234, edns=None, do=False, cd=False,
          rd=True, options=(), opcode=0, rdclass="IN"):
    if edns is None and not do and not options:
        q = dns.message.make_query(name, rdtype, rdclass, use_edns=False)
    else:
        q = dns.message.make_query(name, rdtype, rdclass, use_edns=0,
                                   payload=1232, want_dnssec=do,
                                   options=list(options))
    q.id = qid
    if not rd:
        q.flags &= ~dns.flags.RD
    if cd:
        q.flags |= dns.flags.CD
    q.set_opcode(opcode)
    return q.to_wire()


def raw_opt(payload=1232, ext_rcode=0, version=0, flags=0, rdata=b"",
            owner=b"\x00"):
    return owner + u16(41) + u16(payload) + bytes([ext_rcode, version]) + \
        u16(flags) + u16(len(rdata)) + rdata


def with_ar(wire, *records):
    """wire with records appended to the additional section."""
    ar = struct.unpack("!H", wire[10:12])[0] + len(records)
    return wire[:10] + u16(ar) + wire[12:] + b"".join(records)


def answer(name, rdtype="A", rrs=(), rcode=0, authority=(), additional=(),
           edns=None, options=(), tc=False, qid=0x1234, payload=1232):
    """A response to a query for name, with records given as
    (name, ttl, type, text) tuples, compressed by dnspython."""
    q = dns.message.make_query(name, rdtype)
    r = dns.message.make_response(q)
    r.id = qid
    r.flags |= dns.flags.RA
    if tc:
        r.flags |= dns.flags.TC
    r.set_rcode(rcode)
    for sec, recs in ((r.answer, rrs), (r.authority, authority),
                      (r.additional, additional)):
        for owner, ttl, t, text in recs:
            owner = absolute(owner)
            rs = dns.rrset.from_text(owner, ttl, "IN", t, *text) \
                if isinstance(text, list) else \
                dns.rrset.from_text(owner, ttl, "IN", t, text)
            sec.append(rs)
    if edns is not None:
        r.use_edns(0, payload=payload, options=list(options))
    else:
        r.use_edns(False)
    return r.to_wire(max_size=65535)


def absolute(name):
    return name if name.endswith(".") else name + "."


def soa(owner, ttl=3600, minimum=300):
    return (owner, ttl, "SOA", "ns.%s. hostmaster.%s. 1 7200 900 1209600 %d"
            % (owner, owner, minimum))


def txt_answer(name, total, ttl=60):
    """A TXT answer of about total bytes."""
    strings, size = [], 12 + len(name) + 6
    while size < total - 300:
        strings.append('"' + "x" * 250 + '"')
        size += 251 + 12
    rest = max(1, min(250, total - size - 12 - 2))
    strings.append('"' + "y" * rest + '"')
    return answer(name, "TXT", [(name, ttl, "TXT", " ".join(strings))])


# ---------------------------------------------------------------- messages

def client_queries():
    qs = {
        "plain": query("example.com"),
        "rd0": query("a.example", rd=False),
        "edns": query("example.com", edns=0),
        "edns-do": query("www.example.org", edns=0, do=True),
        "cd": query("example.com", cd=True, edns=0),
        "do-cd": query("example.com", edns=0, do=True, cd=True),
        "ecs4": query("x", edns=0, options=[ecs("192.0.2.0", 24)]),
        "ecs6": query("mid.example", "AAAA", edns=0,
                      options=[ecs("2001:db8::", 56)]),
        "cookie": query("example.com", edns=0,
                        options=[opt(OPT_COOKIE, COOKIE)]),
        "padding": query("example.com", edns=0,
                         options=[opt(OPT_PADDING, bytes(100))]),
        "keepalive": query("example.com", edns=0,
                           options=[opt(OPT_KEEPALIVE)]),
        "keepalive-timeout": query("example.com", edns=0,
                                   options=[opt(OPT_KEEPALIVE, u16(100))]),
        "nsid-unknown": query("a.example", "TXT", edns=0,
                              options=[opt(OPT_NSID), opt(65001, b"zz")]),
        "many-opts": query("cname.example", edns=0, do=True, options=[
            ecs("198.51.100.0", 22), opt(OPT_COOKIE, COOKIE + bytes(16)),
            opt(OPT_PADDING, bytes(7)), opt(OPT_KEEPALIVE)]),
        "opcode-iquery": query("example.com", opcode=1),
        "opcode-status": query("example.com", opcode=2),
        "opcode-notify": query("example.com", "SOA", opcode=4),
        "opcode-update": query("example.com", "SOA", opcode=5),
        "type-any": query("example.com", "ANY", edns=0),
        "class-ch": query("version.bind", "TXT", rdclass="CH"),
    }
    base = query("example.com")
    qs["two-opts"] = with_ar(base, raw_opt(), raw_opt(4096))
    qs["badvers"] = with_ar(base, raw_opt(version=1))
    qs["badvers-do"] = with_ar(base, raw_opt(version=2, flags=0x8000))
    qs["opt-not-root"] = with_ar(base, raw_opt(owner=b"\x01a\x00"))
    qs["opt-small-payload"] = with_ar(base, raw_opt(payload=100))
    qs["opt-cut-option"] = with_ar(base, raw_opt(
        rdata=u16(OPT_COOKIE) + u16(20) + COOKIE))
    qs["ecs-too-long"] = with_ar(base, raw_opt(
        rdata=u16(8) + u16(24) + bytes(24)))
    qs["ecs-twice"] = with_ar(base, raw_opt(
        rdata=(u16(8) + u16(7) + b"\x00\x01\x18\x00\xc0\x00\x02") * 2))
    qs["qr-set"] = bytes([0x12, 0x34, 0x81]) + base[3:]
    qs["qdcount0"] = base[:4] + u16(0) + base[6:12]
    qs["qdcount2"] = base[:4] + u16(2) + base[6:] + base[12:]
    qs["question-cut"] = base[:-3]
    qs["trailing"] = base + b"\x00\x00"
    qs["compressed-question"] = base[:12] + b"\xc0\x0c" + base[-4:]
    qs["label-64"] = base[:12] + b"\x40" + b"a" * 64 + b"\x00" + base[-4:]
    qs["name-255"] = base[:12] + (b"\x3f" + b"b" * 63) * 4 + b"\x00" + \
        base[-4:]
    qs["ancount1"] = base[:6] + u16(1) + base[8:] + \
        b"\xc0\x0c" + u16(1) + u16(1) + struct.pack("!I", 60) + u16(4) + \
        bytes(4)
    qs["ar-rr-compressed"] = with_ar(base, b"\xc0\x0c" + u16(16) + u16(1) +
                                     struct.pack("!I", 0) + u16(2) +
                                     b"\x01z")
    qs["header-only"] = base[:12]
    qs["over-1232"] = with_ar(base, raw_opt(
        rdata=u16(OPT_PADDING) + u16(1200) + bytes(1200)))
    qs["exact-1232"] = with_ar(base, raw_opt(
        rdata=u16(OPT_PADDING) + u16(1232 - len(base) - 15) +
        bytes(1232 - len(base) - 15)))
    return qs


def upstream_answers(name="example.com"):
    """Answers to a query for name (type A unless said)."""
    up_opts = [opt(OPT_COOKIE, COOKIE + bytes(8)), opt(OPT_NSID, b"up1"),
               opt(OPT_PADDING, bytes(24)),
               opt(OPT_EDE, u16(3) + b"stale")]
    ans = {
        "a": answer(name, "A", [(name, 300, "A", "192.0.2.1"),
                                (name, 300, "A", "192.0.2.2")]),
        "a-opt": answer(name, "A", [(name, 60, "A", "192.0.2.1")], edns=0,
                        options=up_opts),
        "a-keepalive": answer(name, "A", [(name, 60, "A", "192.0.2.1")],
                              edns=0, options=[opt(OPT_KEEPALIVE,
                                                   u16(50))]),
        "cname-chain": answer(name, "A", [
            (name, 300, "CNAME", "c1.%s." % name),
            ("c1." + name, 200, "CNAME", "c2.%s." % name),
            ("c2." + name, 100, "A", "192.0.2.7")]),
        "cname-nx": answer(name, "A", [(name, 300, "CNAME", "gone.%s." % name)],
                           rcode=dns.rcode.NXDOMAIN,
                           authority=[soa(name, 900, 60)]),
        "nxdomain-soa": answer(name, "A", rcode=dns.rcode.NXDOMAIN,
                               authority=[soa(name, 3600, 300)]),
        "nxdomain-nosoa": answer(name, "A", rcode=dns.rcode.NXDOMAIN),
        "nodata-soa": answer(name, "AAAA", authority=[soa(name, 86400, 5)]),
        "servfail": answer(name, "A", rcode=dns.rcode.SERVFAIL, edns=0,
                           options=[opt(OPT_EDE, u16(22))]),
        "refused": answer(name, "A", rcode=dns.rcode.REFUSED),
        "tc": answer(name, "A", tc=True),
        "ttl0": answer(name, "A", [(name, 0, "A", "192.0.2.1")]),
        "ttl-huge": answer(name, "A", [(name, 2 ** 31 + 5, "A",
                                        "192.0.2.1")]),
        "ns-glue": answer(name, "A", [(name, 120, "A", "192.0.2.3")],
                          authority=[(name, 3600, "NS", "ns1.%s." % name)],
                          additional=[("ns1." + name, 3600, "A",
                                       "192.0.2.53")], edns=0),
        "mx-compress": answer(name, "MX", [
            (name, 300, "MX", "10 mail.%s." % name),
            (name, 300, "MX", "20 mail2.%s." % name)]),
        "txt-1100": txt_answer(name, 1100),
        "txt-1232": txt_answer(name, 1232),
        "txt-1300": txt_answer(name, 1300),
        "txt-4000": txt_answer(name, 4000),
    }
    # An OPT that is not last: the additional section goes on after it.
    base = answer(name, "A", [(name, 60, "A", "192.0.2.1")])
    glue = b"\xc0\x0c" + u16(1) + u16(1) + struct.pack("!I", 60) + u16(4) + \
        bytes([192, 0, 2, 9])
    ans["opt-middle"] = with_ar(base, glue, raw_opt(rdata=u16(OPT_NSID) +
                                                    u16(0)), glue)
    ans["opt-ext-rcode"] = with_ar(base, raw_opt(ext_rcode=1))
    ans["two-opts"] = with_ar(base, raw_opt(), raw_opt())
    ans["opt-in-answer"] = base[:6] + u16(2) + base[8:] + raw_opt()
    ans["count-too-high"] = base[:6] + u16(5) + base[8:]
    ans["rdlen-past-end"] = base[:-6] + u16(200) + base[-4:]
    # A pointer forward, and one to itself.
    ans["ptr-forward"] = base[:-16] + b"\xc0\xff" + base[-14:]
    return ans


# ---------------------------------------------------------------- targets

def q_config(cache=True, size=3, stale=0, prefetch=False, keep_ecs=False,
             cap=8, timeout=50, min_ttl=0, ttls=0x67):
    b0 = (1 if cache else 0) | (2 if stale else 0) | (4 if prefetch else 0) \
        | (8 if keep_ecs else 0)
    return bytes([b0, ((size - 1) & 7) | ((cap - 1) << 3), stale & 0xff,
                  timeout, min_ttl, ttls])


def q_ask(msg, tcp=False):
    return bytes([0, 1 if tcp else 0]) + u16(len(msg)) + msg


def q_answer(msg, sel=0, recase=False):
    return bytes([1, sel, 1 if recase else 0]) + u16(len(msg)) + msg


def q_fail(status, sel=0):
    return bytes([2, sel, status])


def q_tick(ms=0, s=0):
    return bytes([3]) + u16(0x8000 | s if s else ms)


def q_wait(ms=0, s=0):
    return bytes([4]) + u16(0x8000 | s if s else ms)


def corpus_query():
    seeds = {}
    qs = client_queries()
    ans = upstream_answers()
    # Each client query alone, asked over UDP and TCP, answered plainly.
    a = ans["a"]
    for k, q in qs.items():
        seeds["q-" + k] = q_config() + q_ask(q) + q_answer(a) + q_tick(10)
        seeds["q-tcp-" + k] = q_config(keep_ecs=True) + q_ask(q, tcp=True) + \
            q_answer(ans["a-opt"], recase=True) + q_ask(q, tcp=True)
    # Each answer to an EDNS query and to a plain one, then a hit, a
    # stale hit and a refresh.
    for k, r in ans.items():
        seeds["a-" + k] = (q_config(stale=200, prefetch=True) +
                           q_ask(qs["edns"]) +
                           q_answer(r) + q_wait(s=1) + q_ask(qs["plain"]) +
                           q_tick(s=290) + q_ask(qs["edns"]) +
                           q_tick(s=20) + q_ask(qs["plain"]) +
                           q_fail(0) + q_tick(s=3))
        seeds["a-udp-" + k] = q_config(cache=False) + q_ask(qs["plain"]) + \
            q_answer(r) + q_ask(qs["edns"]) + q_answer(r)
    # Joiners, deadlines, failures, overload.
    p = qs["plain"]
    seeds["join-timeout"] = q_config(timeout=25) + q_ask(p) + q_wait(500) + \
        q_ask(p, tcp=True) + q_tick(600) + q_answer(a) + q_tick(s=2)
    seeds["fail-all"] = q_config(cap=1) + q_ask(p) + q_ask(qs["cd"]) + \
        q_fail(1) + q_ask(qs["do-cd"]) + q_fail(2) + q_fail(0)
    seeds["stale-on-servfail"] = q_config(stale=255) + q_ask(p) + \
        q_answer(a) + q_tick(s=400) + q_ask(p) + \
        q_answer(ans["servfail"]) + q_ask(p) + q_tick(1900)
    seeds["stale-slow-refresh"] = q_config(stale=255) + q_ask(p) + \
        q_answer(ans["ttl0"]) + q_ask(p) + q_answer(a) + q_tick(s=301) + \
        q_ask(qs["edns"]) + q_tick(1801) + q_answer(a) + q_tick(s=300)
    seeds["prefetch"] = q_config(prefetch=True, ttls=0x55) + q_ask(p) + \
        q_answer(a) + q_tick(s=280) + q_ask(p) + q_ask(p) + q_answer(a)
    seeds["evict"] = q_config(size=1) + b"".join(
        q_ask(query(n)) + q_answer(answer(n, "A", [(n, 60, "A",
                                                      "192.0.2.4")]))
        for n in NAMES) + q_ask(query(NAMES[0]))
    return seeds


def c_config(size=4, keep_ecs=False, min_ttl=0, max_idx=7, neg_idx=6,
             stale=3600):
    return bytes([((size - 1) & 7) | (8 if keep_ecs else 0), min_ttl,
                  max_idx, neg_idx]) + u16(stale)


def c_key(idx, rdtype=1, do=False, cd=False, ecs_len=None, upper=False):
    flags = (1 if do else 0) | (2 if cd else 0)
    tail = b""
    if ecs_len is not None:
        flags |= 4 | (ecs_len << 3)
        tail = bytes(range(0xc0, 0xc0 + ecs_len))
    return bytes([0, flags, idx | (8 if upper else 0), rdtype]) + tail


def c_store(msg):
    return bytes([1]) + u16(len(msg)) + msg


def c_lookup(flags=0):
    return bytes([2, flags])


def c_wait(ms=0, s=0):
    return bytes([3]) + u16(0x8000 | s if s else ms)


def corpus_cache():
    seeds = {}
    for i, n in enumerate(NAMES):
        for k, r in upstream_answers(n).items():
            if k in ("nodata-soa",):
                t = 28
            elif k == "mx-compress":
                t = 15
            elif k.startswith("txt"):
                t = 16
            else:
                t = 1
            if i not in (0, 5) and k not in ("a", "cname-chain",
                                             "nxdomain-soa", "txt-1232",
                                             "opt-middle", "a-opt"):
                continue
            seeds["%s-%s" % (n, k)] = (
                c_config(min_ttl=i * 3) + c_key(i, t) + c_store(r) +
                c_lookup(0x04) + c_wait(s=30) + c_lookup(0x0e) +
                c_key(i, t, upper=True) + c_lookup(0x31) + c_wait(s=400) +
                c_lookup(0x75) + c_key(i, t, do=True) + c_lookup() +
                c_wait(s=5000) + c_key(i, t) + c_lookup(0x01))
    a = upstream_answers(NAMES[1])["a"]
    seeds["ecs-apart"] = (c_config(keep_ecs=True) + c_key(1, ecs_len=3) +
                          c_store(a) + c_key(1, ecs_len=4) + c_lookup() +
                          c_key(1, ecs_len=3) + c_lookup(4) +
                          c_key(1, cd=True, ecs_len=3) + c_lookup())
    seeds["evict-lru"] = c_config(size=2) + b"".join(
        c_key(i) + c_store(upstream_answers(n)["a"]) + c_lookup()
        for i, n in enumerate(NAMES[:4])) + c_key(0) + c_lookup()
    return seeds


def u_send(idx, rdtype=1, qid=0x1234, deadline=50, pad=0, resend=False,
           upper=False):
    return bytes([0, idx | (8 if upper else 0), rdtype]) + u16(qid) + \
        bytes([deadline, pad, 1 if resend else 0])


def u_flush():
    return b"\x01"


def u_reply(conn=0, k=0, kind=0, msg=b""):
    return bytes([2, conn, k, kind]) + u16(len(msg)) + msg


def u_chunk(conn=0, size=65535):
    return bytes([3, conn]) + u16(size)


def u_time(ms=0, s=0):
    return bytes([4]) + u16(0x8000 | s if s else ms)


def corpus_upstream():
    seeds = {}
    ans = [upstream_answers(n) for n in NAMES]
    # Three queries, replies in order, then the stream in pieces.
    for i, split in enumerate((1, 2, 3, 7, 13, 100, 511, 65535)):
        s = bytes([1, 7])
        for j in range(3):
            s += u_send(j, pad=25)
        s += u_flush()
        # Small answers when the pieces are small, so a seed stays fast.
        kinds = ("a", "cname-chain", "mx-compress" if split < 100 else
                 "txt-1300")
        size = [0, 0]
        for j, k in enumerate(kinds):
            s += u_reply(j % 2, j // 2, 0, ans[j][k])
            size[j % 2] += 2 + len(ans[j][k])
        for c in (0, 1):
            s += u_chunk(c, split) * (size[c] // split + 1)
        s += u_time(s=3)
        seeds["split-%d" % split] = s
    # Replies out of order, a duplicate, a half match, a stranger.
    s = bytes([0, 7]) + u_send(0) + u_send(1) + u_send(2) + u_flush()
    s += u_reply(0, 2, 0, ans[2]["a"]) + u_reply(0, 0, 2, ans[0]["a"])
    s += u_reply(0, 0, 3, ans[0]["a"]) + u_reply(0, 0, 1, ans[0]["a"])
    s += u_reply(0, 0, 0, ans[0]["a"]) + u_reply(0, 1, 5, ans[1]["a"])
    s += u_reply(0, 1, 0, ans[1]["nxdomain-soa"])
    s += u_chunk(0, 40) * 20 + u_time(s=5)
    seeds["mixed"] = s
    # Garbage: QR=0 closes the connection; the queries go elsewhere.
    s = bytes([1, 3]) + u_send(0, resend=True) + u_send(3) + u_flush()
    s += u_reply(0, 0, 4, query("example.com")) + u_chunk(0)
    s += bytes([6]) + u_flush() + u_reply(1, 0, 0, ans[3]["a"])
    s += u_chunk(1) + u_time(s=2)
    seeds["garbage"] = s
    # Every upstream answer kind as the first reply (keepalive read).
    for k, r in ans[5].items():
        seeds["first-" + k] = bytes([0, 0]) + u_send(5, deadline=200) + \
            u_flush() + u_reply(0, 0, 0, r) + u_chunk(0) + u_time(s=10)
    # Closes, network change, suspend, timeouts, long queries.
    seeds["close"] = bytes([1, 1]) + u_send(0) + u_send(1) + u_send(2) + \
        u_flush() + bytes([5, 0]) + u_flush() + bytes([5, 3]) + \
        bytes([6]) + u_flush() + u_reply(0, 0, 0, ans[0]["a"]) + u_chunk(0)
    seeds["netchange"] = bytes([1, 2]) + u_send(4) + u_flush() + \
        bytes([7, 0]) + u_time(300) + bytes([6]) + u_send(4) + u_flush() + \
        bytes([7, 1]) + u_time(s=1)
    seeds["timeouts"] = bytes([0, 0]) + u_send(0, deadline=1) + \
        u_send(1, deadline=2) + u_flush() + u_time(30) + u_time(100) + \
        u_reply(0, 0, 0, ans[1]["a"]) + u_chunk(0)
    seeds["too-long"] = bytes([0, 7]) + u_send(6, pad=0xff) + \
        u_send(7, pad=120) + u_flush() + u_time(s=1)
    # A raw stream: a frame length larger than what follows, then more.
    s = bytes([0, 7]) + u_send(0) + u_flush()
    s += u_reply(0, 0, 4, b"\x81\x80" + bytes(10)) + \
        bytes([2, 0, 0, 4]) + u16(3) + b"\xff\xff\x00"
    s += u_chunk(0, 5) * 6 + u_time(s=1)
    seeds["raw-frames"] = s
    return seeds


def corpus_options():
    lines = [
        "--bind-udp 127.0.0.1:53 --bind-tcp 127.0.0.1:53 "
        "--connect-tls 9.9.9.9#dns.quad9.net "
        "--connect-tls 1.1.1.1#cloudflare-dns.com",
        "--bind-udp [::1]:5353 --connect-tls [2620:fe::fe]:853#dns.quad9.net "
        "--pin-sha256 " + "A" * 43 + "= --pin-sha256 " + "B" * 43 + "=",
        "--bind-tcp 127.0.0.53 --connect-tcp 127.0.0.1:5300 "
        "--cache-size 0 --timeout 10 --max-inflight 4096 --connections 16",
        "--bind-udp 0.0.0.0 --allow 10.0.0.0/8 --allow 192.168.1.7 "
        "--allow fd00::/8 --allow ::1/128 --connect-tcp 127.0.0.1",
        "--bind-udp 127.0.0.1:5353 --connect-tls 1.1.1.1 --pin-sha256 "
        "n9ceh2jBzQd7K8ah1ouPXqqLYbM7lOjwE7yGkuQEZak=",
        "--check --connect-tls 1.1.1.1#one.one.one.one --ca-file "
        "/etc/ssl/certs/ca-certificates.crt --user nobody",
        "--bind-udp 127.0.0.1 --connect-tcp 127.0.0.1 --min-ttl 30 "
        "--max-ttl 20",
        "--bind-udp 127.0.0.1 --connect-tcp 127.0.0.1 --min-ttl 604800 "
        "--max-ttl 604800 --neg-max-ttl 1 --serve-stale 86400 --prefetch "
        "--keep-ecs --no-resume --prewarm --idle-timeout 3600",
        "--bind-udp 127.0.0.1 --connect-tcp 127.0.0.1 --log-level debug "
        "--log-level=warn",
        "--help",
        "--version",
        "--he",
        "--bind-udp",
        "--bind-udp 127.0.0.1 --connect-tcp 127.0.0.1#name",
        "--bind-udp 127.0.0.1 --pin-sha256 AAAA --connect-tls 1.2.3.4",
        "--bind-udp 127.0.0.1 --connect-tls 1.2.3.4#bad!name",
        "--bind-udp 1.2.3.4:0 --connect-tcp 1.2.3.4:65536",
        "--bind-udp [::1 --connect-tcp [::1]x",
        "--bind-udp 127.0.0.1 --connect-tcp 127.0.0.1 extra",
        "-x --bind-udp 127.0.0.1",
        "--timeout=09 --cache-size=-1 --connections 0x10",
        "--allow 10.0.0.0/33 --allow 10.0.0.0/ --allow ::/129",
        "--bind-udp=127.0.0.1 --connect-tcp=127.0.0.1 --prefetch=yes",
        "--bind-udp 127.0.0.1 " + "--connect-tcp 127.0.0.1 " * 9,
        "--bind-udp 127.0.0.1 --connect-tls 1.1.1.1#" + "a" * 120,
        "--connect-tls 1.1.1.1#a.b --bind-udp 127.0.0.1 --allow " +
        "1.2.3.4 --allow " * 32 + "1.2.3.4",
        "--bind-udp 127.0.0.1 --connect-tcp 127.0.0.1 -- --help",
    ]
    seeds = {}
    for i, ln in enumerate(lines):
        seeds["cmd%02d" % i] = b"\x00".join(w.encode() for w in ln.split())
    return seeds


def main():
    targets = {"query": corpus_query, "cache": corpus_cache,
               "upstream": corpus_upstream, "options": corpus_options}
    total = 0
    for t, fn in targets.items():
        d = os.path.join(OUT, t)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        for name, data in sorted(fn().items()):
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
            total += len(data)
        print("%s: %d seeds" % (t, len(os.listdir(d))))
    print("%d bytes in all" % total)


if __name__ == "__main__":
    main()

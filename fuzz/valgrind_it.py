#!/usr/bin/python3
"""`make valgrind`: the integration suite once more, dnsfwd under memcheck.

    /usr/bin/python3 fuzz/valgrind_it.py [--quick] [-j N] [-v]

tests/integration.py is imported, not changed: its --dnsfwd becomes
fuzz/valgrind-dnsfwd (valgrind on ./dnsfwd-vg, an unsanitized build), and
each scenario's result is amended from the valgrind logs of the daemons
it ran: a scenario passes only when every one of its dnsfwd processes
that exited by itself reported "ERROR SUMMARY: 0 errors", lost nothing
definitely or indirectly, and, when it exited cleanly ("stopped"), left
no descriptor open that it did not inherit.  A process that was
SIGKILLed (the harness's last resort) writes no summary: that is noted,
not failed.  Suppressions, each with its reason: fuzz/valgrind.supp.

Under memcheck dnsfwd runs 20 to 50 times slower; a TLS handshake and
first query take about a second.  So:
  - VG_SKIP scenarios are reported as skipped, with the reason: they
    give dnsfwd a deadline (--timeout 1000 or less, or a bound on how
    soon something happens) that it cannot meet under memcheck even
    alone on the machine;
  - VG_ALONE scenarios pass under memcheck only with nothing running
    beside them: they run after the others, one at a time;
  - the rest run N at a time (-j, default 2, one per core).
--quick runs only the QUICK scenarios (about 90 s at -j 1).
The environment variables VG_SKIP and VG_ONLY (comma-separated names)
skip more, or run only those named.

Prints the harness's lines for each batch, then one closing
"N passed, N failed, N skipped" for all of them.
"""
import functools
import glob
import os
import re
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import integration  # noqa: E402

SHORT = "its deadline (--timeout 1000 or less) is shorter than a TLS " \
    "handshake and first query under memcheck"
VG_SKIP = {
    "bad_reply_garbage": SHORT,
    "bad_reply_qr0": SHORT,
    "bad_reply_wrong_id": SHORT,
    "bad_reply_wrong_question": SHORT,
    "duplicate_reply": SHORT,
    "upstream_delay_timeout": SHORT,
    "coalesced_joiner_times_out": SHORT,
    "no_descriptor_leak": SHORT,
    "multiple_upstreams": SHORT,
    "pin_applies_to_preceding": SHORT,
    "journal_priority_prefixes": SHORT,
    "svc_tcp_user_timeout": SHORT,
    "silent_connection_replaced": "wants the second copy's answer between "
    "the 250 ms attempt timeout and the 0.5 s deadline",
    "svc_netchange_max_delay": "wants the move acted on within about the "
    "1 s debounce maximum",
    "svc_netchange_lost_route_replies": "wants every query answered within "
    "1 s while netmon works",
    "health_blackhole_upstream": "wants 95% of a query every 50 ms "
    "answered within the 1.5 s deadline",
    "health_rcode_upstream": "wants 95% of a query every 50 ms answered "
    "within the 1.5 s deadline",
    "health_dropped_query": SHORT,
    "health_dropped_query_two": SHORT,
    "health_upstream_recovers": "wants 95% of a query every 100 ms "
    "answered within the 2 s deadline",
    "coalesced_own_deadline": "wants the joiner's answer 0.25 s before its "
    "deadline",
    "cache_stale_only_when_expired": "wants the refresh's second copy to "
    "meet the slow upstream within 1 s",
    "failover_slow_dial": "wants the answer within 1.5 s after a stalled "
    "dial",
    "overload_servfail": "wants each overload SERVFAIL within 0.5 s of 30 "
    "queries sent at once",
    "svc_notify_watchdog": "counts WATCHDOG=1 pings in 2 s, 0.2 s apart",
    "path_lost_segment_other_upstream": "wants answers within RTT + 70 ms, "
    "and the second copies' within about 230 ms, of a query every 20 ms",
    "path_hedge_after_attempt_timeout": "wants the second copy's answer "
    "within a round trip (+80 ms) of the 100 ms attempt timeout",
    "path_hedge_budget_slow_path": "wants a query every 25 ms for 8 s "
    "answered within the 4 s deadline, and the 30 ms path measured as such "
    "before the jump",
    "path_fastopen_saves_round_trip": "measures a 30 ms round trip saved on "
    "a reconnect whose handshake takes about a second under memcheck",
    "limit_fd_exhaustion_tcp": "counts the descriptors in /proc/PID/fd "
    "against RLIMIT_NOFILE, and valgrind keeps some of its own there",
    "limit_fd_exhaustion_upstream": "counts the descriptors in /proc/PID/fd "
    "against RLIMIT_NOFILE, and valgrind keeps some of its own there",
}

# Measured on an idle 2-core machine: these failed at least once with two
# scenarios at a time (mostly a first query, TLS handshake included, past
# a 2 s --timeout) and passed alone.
VG_ALONE = {
    "cache_cd_bit_apart", "cache_do_bits_apart", "cache_expiry_refetch",
    "cache_mixed_case", "cache_prefetch", "cache_prefetch_rd1",
    "cache_repeat_no_upstream", "cache_serve_stale_slow_refresh",
    "cache_servfail_not_cached", "cache_ttl_decreases",
    "edns_upstream_own_opt", "priv_prewarm", "priv_server_keepalive",
    "rd0_leader_coalesced", "rd_always_set_upstream", "rtt_prefers_faster",
    "svc_allow_ipv4", "svc_allow_usage", "tcp_client_limit",
    "tls_stress_pipelined", "udp_answers_cap_1232",
    "upstream_id_rewritten", "wildcard_udp6_reply_source",
    "wildcard_udp_reply_source",
}

# A minute and a half, one at a time, that reaches most of the daemon:
# both transports, TLS and plain upstreams, pipelining, closes, protocol
# errors, EDNS, the cache and serve-stale, the wait queue, and a stop
# with work pending.
QUICK = {
    "unbound_udp_tcp", "upstream_id_rewritten", "same_client_id_200",
    "pool_two_connections", "reorder_replies",
    "tcp_client_past_pipeline_limit",
    "truncation_tc", "upstream_closes_mid_reply", "upstream_comes_back",
    "tls_session_resumption", "tls_pin_mismatch", "connect_tcp_plain",
    "tcp_client_pipelined", "tcp_client_not_reading",
    "tcp_client_fragmented", "malformed_client_datagrams", "opcode_notimp",
    "edns_badvers", "malformed_query_formerr", "large_reply_over_tcp",
    "edns_keep_ecs", "edns_ecs_stripped", "cache_tc_on_hit",
    "cache_opt_only_if_asked", "cache_serve_stale_on_servfail",
    "cache_coalesce_50", "max_inflight_queue",
    "sigterm_with_work_pending", "help_and_version", "missing_ca_file",
}

TOTAL = re.compile(r"(\d+) passed, (\d+) failed(?:, (\d+) skipped)?")


def where(path):
    """(stderr file, its length when the process started) for the
    valgrind log path, as fuzz/valgrind-dnsfwd noted them."""
    with open(path[:-len(".vg")] + ".where") as f:
        err, start = f.read().split("\n")[:2]
    return err, int(start)


def clean_exit(path):
    """Whether the process of log path ended with "stopped" on stderr.
    Its lines run from where it started to where the next process to
    write to the same file (a retry after losing a port race) started."""
    try:
        err, start = where(path)
        end = None
        for other in glob.glob(os.path.join(os.path.dirname(path),
                                            "*.where")):
            o_err, o_start = where(other[:-len(".where")] + ".vg")
            if o_err == err and o_start > start and (end is None or
                                                     o_start < end):
                end = o_start
        with open(err, "rb") as f:
            f.seek(start)
            data = f.read() if end is None else f.read(end - start)
    except (OSError, ValueError):
        return False
    lines = data.decode(errors="replace").splitlines()
    return any("stopped" in ln for ln in lines[-3:])


def vg_problems(path):
    """What is wrong in one valgrind log: a list, or None when it has no
    summary (the process was SIGKILLed)."""
    with open(path, errors="replace") as f:
        txt = f.read()
    m = re.search(r"ERROR SUMMARY: (\d+) errors", txt)
    if m is None:
        return None
    bad = []
    if m.group(1) != "0":
        first = re.search(r"==\d+== (?!Memcheck|Copyright|Using|Command|"
                          r"Parent|$)(\S.*)", txt)
        bad.append("%s errors%s" % (m.group(1), ", first: " + first.group(1)
                                    if first else ""))
    for kind in ("definitely", "indirectly"):
        m = re.search(kind + r" lost: ([\d,]+) bytes", txt)
        if m and m.group(1) != "0":
            bad.append("%s lost %s bytes" % (kind, m.group(1)))
    # Each open descriptor is a paragraph: its number, then where it was
    # opened, or "<inherited from parent>".  Only a clean exit must have
    # closed them all: one on an error (fatalx) leaves them to the kernel.
    if clean_exit(path):
        for fd, body in re.findall(r"Open (?:file descriptor|AF_\w+ socket) "
                                   r"(\d+)[^\n]*\n((?:==\d+==    .*\n)*)",
                                   txt):
            if "<inherited from parent>" not in body:
                where = re.search(r"by 0x\w+: (\w+ \([^)]*\))", body)
                bad.append("descriptor %s left open%s" % (
                    fd, " (opened in %s)" % where.group(1) if where else ""))
    return bad


class LastTotal:
    """Passes writes on, keeping the last "N passed, N failed" line."""

    def __init__(self, out):
        self.out = out
        self.total = None

    def write(self, s):
        for ln in s.splitlines():
            if re.fullmatch(TOTAL.pattern, ln):
                self.total = ln
        return self.out.write(s)

    def flush(self):
        self.out.flush()


def batch(fns, jobs, verbose):
    """Runs the scenarios fns with integration.main; (passed, failed,
    skipped)."""
    if not fns:
        return 0, 0, 0
    integration.SCENARIOS[:] = fns
    sys.argv = [sys.argv[0], "--dnsfwd", os.path.join(HERE, "valgrind-dnsfwd"),
                "-j", str(jobs)] + (["-v"] if verbose else [])
    tee = LastTotal(sys.stdout)
    sys.stdout = tee
    try:
        rc = integration.main()
    finally:
        sys.stdout = tee.out
    m = TOTAL.fullmatch(tee.total or "")
    if m is None:
        return 0, 1, 0
    counts = [int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)]
    if rc != 0 and counts[1] == 0:
        counts[1] = 1
    return tuple(counts)


def main():
    args = sys.argv[1:]
    quick = "--quick" in args
    verbose = "-v" in args
    jobs = int(args[args.index("-j") + 1]) if "-j" in args else 2
    logdir = tempfile.mkdtemp(prefix="dnsfwd-vg-")
    # Scenarios that run dnsfwd as another user still log here.
    os.chmod(logdir, 0o1777)
    os.environ["VG_LOGDIR"] = logdir
    os.environ.setdefault("VG_DNSFWD", os.path.join(ROOT, "dnsfwd-vg"))
    if not os.access(os.environ["VG_DNSFWD"], os.X_OK):
        print("FAIL setup: %s is not an executable" % os.environ["VG_DNSFWD"])
        print("0 passed, 1 failed")
        return 1
    skip = dict(VG_SKIP)
    for n in filter(None, os.environ.get("VG_SKIP", "").split(",")):
        skip[n] = "named in VG_SKIP"
    only = set(filter(None, os.environ.get("VG_ONLY", "").split(",")))
    if quick:
        only = (only & QUICK) if only else QUICK

    together, alone = [], []
    for fn in list(integration.SCENARIOS):
        name = fn.__name__
        if only and name not in only:
            continue
        if name in skip:
            def skipped(t, why=skip[name]):
                raise integration.Skip("under valgrind: " + why)
            fn = functools.wraps(fn)(skipped)
        (alone if name in VG_ALONE else together).append(fn)

    run_one = integration.run_one
    nokill = []

    def vg_run_one(fn, workdir):
        status, reason, dt, t = run_one(fn, workdir)
        probs = []
        for path in sorted(glob.glob(os.path.join(
                logdir, "%s.*.vg" % fn.__name__))):
            p = vg_problems(path)
            if p is None:
                nokill.append(os.path.basename(path))
            else:
                probs += ["%s: %s" % (os.path.basename(path), x) for x in p]
        if probs and status != "skip":
            reason = "; ".join(([reason] if status == "FAIL" else []) +
                               ["valgrind " + x for x in probs])
            status = "FAIL"
        return status, reason, dt, t

    integration.run_one = vg_run_one
    total = [0, 0, 0]
    for fns, j in ((together, jobs), (alone, 1)):
        total = [a + b for a, b in zip(total, batch(fns, j, verbose))]
    if nokill:
        print("# no valgrind summary (SIGKILLed): %s" % " ".join(nokill))
    if total[1] == 0:
        shutil.rmtree(logdir, ignore_errors=True)
    else:
        print("# valgrind logs in %s" % logdir)
    print("%d passed, %d failed%s" % (total[0], total[1], ", %d skipped" %
                                      total[2] if total[2] else ""))
    return 1 if total[1] else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/python3
"""Runs every test of `make check` and prints one closing total.

usage: runall.py UNIT_TEST... -- DNSFWD_BINARY... [-- SCRIPT...
                 [-- LONG_SCRIPT...]]

Each unit test binary, each integration run (tests/integration.py
against one build of dnsfwd) and each test script (run with Debian's
python3) ends with a line `N passed, N failed`; this adds them up.  The
runs go two at a time, one per core.  A LONG_SCRIPT, one that takes
minutes (the boot test), starts first, so that the others run beside it
rather than after it; its output comes last.
"""
import itertools
import re
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

TOTAL = re.compile(r"(\d+) passed, (\d+) failed(?:, (\d+) skipped)?")


def run(name, argv):
    t0 = time.monotonic()
    try:
        p = subprocess.run(argv, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=600)
    except subprocess.TimeoutExpired as e:
        out = e.stdout or ""
        out = out.decode(errors="replace") if isinstance(out, bytes) else out
        return name, out + "\nkilled after 600 s\n", (0, 1, 0), \
            time.monotonic() - t0
    out = p.stdout
    m = None
    for m in TOTAL.finditer(out):
        pass
    passed, failed = (int(m.group(1)), int(m.group(2))) if m else (0, 1)
    skipped = int(m.group(3) or 0) if m else 0
    if p.returncode != 0 and failed == 0:
        failed = 1
    return name, out, (passed, failed, skipped), time.monotonic() - t0


def script_job(s):
    return (s, (["/usr/bin/python3"] if s.split()[0].endswith(".py")
                else []) + shlex.split(s))


def main():
    groups = [[]]
    for a in sys.argv[1:]:
        if a == "--":
            groups.append([])
        else:
            groups[-1].append(a)
    units, builds, scripts, long_scripts = (groups + [[], [], []])[:4]
    jobs = [(u, ["./" + u if "/" not in u else u]) for u in units]
    jobs += [("integration " + b,
              ["/usr/bin/python3", "tests/integration.py", "--dnsfwd",
               "./" + b]) for b in builds]
    jobs += [script_job(s) for s in scripts]
    total = [0, 0, 0]
    with ThreadPoolExecutor(max_workers=2) as pool:
        early = [pool.submit(run, *script_job(s)) for s in long_scripts]
        for name, out, counts, secs in itertools.chain(
                pool.map(lambda j: run(*j), jobs), (f.result() for f in early)):
            sys.stdout.write(out)
            print("== %s: %d passed, %d failed, %d skipped (%.1f s)" %
                  (name, *counts, secs))
            sys.stdout.flush()
            total = [a + b for a, b in zip(total, counts)]
    # Skips are counted and shown, never silent.
    print("%d passed, %d failed%s" % (total[0], total[1],
                                      ", %d skipped" % total[2]
                                      if total[2] else ""))
    return 1 if total[1] else 0


if __name__ == "__main__":
    sys.exit(main())

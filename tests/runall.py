#!/usr/bin/python3
"""Runs every test of `make check` and prints one closing total.

usage: runall.py UNIT_TEST... -- DNSFWD_BINARY...

Each unit test binary and each integration run (tests/integration.py
against one build of dnsfwd) ends with a line `N passed, N failed`; this
adds them up.  The integration runs go two at a time, one per core.
"""
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

TOTAL = re.compile(r"(\d+) passed, (\d+) failed")


def run(name, argv):
    t0 = time.monotonic()
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=600)
    out = p.stdout
    m = None
    for m in TOTAL.finditer(out):
        pass
    passed, failed = (int(m.group(1)), int(m.group(2))) if m else (0, 1)
    if p.returncode != 0 and failed == 0:
        failed = 1
    return name, out, passed, failed, time.monotonic() - t0


def main():
    args = sys.argv[1:]
    cut = args.index("--") if "--" in args else len(args)
    units, builds = args[:cut], args[cut + 1:]
    jobs = [(u, ["./" + u if "/" not in u else u]) for u in units]
    jobs += [("integration " + b,
              ["/usr/bin/python3", "tests/integration.py", "--dnsfwd",
               "./" + b]) for b in builds]
    passed = failed = 0
    with ThreadPoolExecutor(max_workers=2) as pool:
        for name, out, p, f, secs in pool.map(lambda j: run(*j), jobs):
            sys.stdout.write(out)
            print("== %s: %d passed, %d failed (%.1f s)" % (name, p, f, secs))
            passed += p
            failed += f
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""The loop of a test script's checks: each function in turn, one line
each ("ok NAME", "ok NAME: what it returned", "skip NAME: why", "FAIL
NAME: why"), a skip counted and printed, never silent; and the Fail and
Skip a check raises, through check(cond, msg) or itself.

    from checks import Fail, Skip, check
    passed, failed, skipped = checks.run(CHECKS, "-k substring",
                                         before=fn, after=fn, args=(x,))

host_lock(name, wait) is the flock that scripts run at once on one host
take turns with; TIMED_LOCK, for what measures milliseconds over an
emulated path (integration.py's timed scenarios, test_pathemu.py).
"""
import contextlib
import fcntl
import os
import sys
import tempfile
import time
import traceback


TIMED_LOCK = "dnsfwd-it-timed.lock"


class Fail(Exception):
    pass


class Skip(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Fail(msg)


@contextlib.contextmanager
def host_lock(name, wait):
    """An flock on a file in the temporary directory, shared by every
    suite run at once on this host; waits at most `wait` s."""
    path = os.path.join(tempfile.gettempdir(), name)
    with open(path, "a") as f:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise Fail("%s held for %d s by another run" % (
                        path, wait))
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
            # Waiters poll every 50 ms: a moment before this thread may
            # take it again lets them in, or a lane would keep it.
            time.sleep(0.1)


def run(fns, substr="", fail=Fail, skip=Skip, before=None, after=None,
        args=()):
    """Runs fn(*args) for the functions whose name holds substr; `before`
    runs ahead of each (a Skip or Fail it raises is that check's), `after`
    after each (to stop what it started).  Returns (passed, failed,
    skipped)."""
    passed = failed = skipped = 0
    for fn in fns:
        if substr not in fn.__name__:
            continue
        try:
            if before is not None:
                before()
            note = fn(*args)
            print("ok %s%s" % (fn.__name__, ": %s" % note if note else ""))
            passed += 1
        except skip as e:
            print("skip %s: %s" % (fn.__name__, e))
            skipped += 1
        except fail as e:
            print("FAIL %s: %s" % (fn.__name__, e))
            failed += 1
        except Exception:
            print("FAIL %s: %s" % (fn.__name__,
                                   traceback.format_exc().strip()))
            failed += 1
        finally:
            if after is not None:
                after()
        sys.stdout.flush()
    return passed, failed, skipped

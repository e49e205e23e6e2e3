"""The loop of a test script's checks: each function in turn, one line
each ("ok NAME", "ok NAME: what it returned", "skip NAME: why", "FAIL
NAME: why"), a skip counted and printed, never silent; and the Fail and
Skip a check raises, through check(cond, msg) or itself.

    from checks import Fail, Skip, check
    passed, failed, skipped = checks.run(CHECKS, "-k substring",
                                         before=fn, after=fn, args=(x,))
"""
import sys
import traceback


class Fail(Exception):
    pass


class Skip(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Fail(msg)


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

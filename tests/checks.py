"""The loop of a test script's checks: each function in turn, one line
each ("ok NAME", "skip NAME: why", "FAIL NAME: why"), a skip counted and
printed, never silent.

    passed, failed, skipped = checks.run(CHECKS, "-k substring",
                                         fail=Fail, skip=Skip, after=fn)
"""
import sys
import traceback


def run(fns, substr="", fail=(), skip=(), after=None):
    """Runs the functions whose name holds substr; `after` runs after each
    (to stop what it started).  Returns (passed, failed, skipped)."""
    passed = failed = skipped = 0
    for fn in fns:
        if substr not in fn.__name__:
            continue
        try:
            fn()
            print("ok", fn.__name__)
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

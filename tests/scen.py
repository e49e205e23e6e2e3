"""What a module of integration scenarios needs to join integration.py.

    it = None                       # integration.py, once registered
    _reg = scen.Registry(__name__)
    scenario, slow, timed = _reg.scenario, _reg.slow, _reg.timed

    def register(mod):
        _reg.register(mod)

integration.py imports each such module and calls its register() with
itself: the module's `it` is set, so its helpers can use integration.py's,
and its scenarios are added to the list, in order, slow and timed ones marked.
"""
import sys
import time


def until(pred, timeout, step=0.02):
    """pred() polled every `step` s for at most `timeout` s; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


class Registry:
    def __init__(self, module_name):
        self.module = sys.modules[module_name]
        self.fns = []

    def scenario(self, fn):
        self.fns.append(fn)
        return fn

    @staticmethod
    def slow(fn):
        fn.slow_here = True
        return fn

    @staticmethod
    def timed(fn):
        fn.timed_here = True
        return fn

    def register(self, it):
        if self.module.it is not None:
            return
        self.module.it = it
        for fn in self.fns:
            if getattr(fn, "slow_here", False):
                it.slow(fn)
            if getattr(fn, "timed_here", False):
                it.timed(fn)
            it.scenario(fn)

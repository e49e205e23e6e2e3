"""What a module of integration scenarios needs to join integration.py.

    it = None                       # integration.py, once registered
    _reg = scen.Registry(__name__)
    scenario, slow, timed = _reg.scenario, _reg.slow, _reg.timed

    def register(mod):
        _reg.register(mod)

integration.py imports each such module and calls its register() with
itself: the module's `it` is set, so its helpers can use integration.py's,
and its scenarios are added to the list, in order; slow() and timed()
mark them for the runner.
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


def slow(fn):
    """Marks a scenario that mostly waits (seconds): the runner starts it
    first, so it overlaps the others; results still print in order."""
    fn.slow = True
    return fn


def timed(fn):
    """Marks a scenario that measures milliseconds over an emulated path:
    such scenarios run one at a time on a lane of their own, and one at a
    time on the host across suites run at once (three, and a soak, in
    make check), since a dozen of them together starve the Python upstreams
    and path emulators they measure through."""
    fn.timed = True
    return fn


class Registry:
    def __init__(self, module_name):
        self.module = sys.modules[module_name]
        self.fns = []

    def scenario(self, fn):
        self.fns.append(fn)
        return fn

    slow = staticmethod(slow)
    timed = staticmethod(timed)

    def register(self, it):
        if self.module.it is not None:
            return
        self.module.it = it
        for fn in self.fns:
            it.scenario(fn)

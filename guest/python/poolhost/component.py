"""What the entry module `poolhost_build` generates for a component calls: registering its tasks,
running one when the host calls its export, and running the driver.

An exception a task or the driver raises is printed as Python prints it, from the user's code on,
and ends the task (or the run) with exit code 1, as it would end a Python process.
"""

import builtins
import gc
import linecache
import os
import sys
import traceback

from componentize_py_types import Err

from . import getpid, getppid
from .pool import TASK_MODULES, TASKS, Task
from .queues import Queue


def setup(module, tasks):
    """Registers `tasks`, ``{python name: (export, param types, result type)}``, for the pool;
    makes `os.getpid` and `os.getppid` (which WASI lacks) the worker's and the pool owner's;
    keeps `module`'s source for tracebacks, since the component has no files when it runs; and
    freezes the heap."""
    os.getpid = getpid
    os.getppid = getppid
    for name, signature in tasks.items():
        TASKS[name] = Task(*signature)
    TASK_MODULES.add(module.__name__)
    lines = linecache.getlines(module.__file__)
    # An entry without a modification time is one linecache does not check against the file.
    linecache.cache[module.__file__] = (sum(map(len, lines)), None, lines, module.__file__)
    # Every task starts from the heap as the build left it. Frozen, its objects are left out of
    # every garbage collection: a task's first collection would otherwise walk them all,
    # writing to (so copying) most of the snapshot's pages.
    gc.collect()
    gc.freeze()


def call(module, name, args):
    """Runs task `name` of `module` on `args` as its export received them: the name of a queue
    parameter becomes the `Queue`."""
    params = TASKS[name].params
    try:
        return getattr(module, name)(
            *(Queue(a) if t == "queue" else a for a, t in zip(args, params, strict=True))
        )
    except Exception as error:
        _print(error)
        sys.stdout.flush()
        os._exit(1)


def main_code(module):
    """The code of `module`, read now, at build time: the component has no files when it runs."""
    return module.__spec__.loader.get_code(module.__name__)


def run_main(module, code, call_main):
    """Runs the driver as ``python app.py`` would: `code`, the module's, as `__main__`; then its
    `main()` if `call_main`."""
    namespace = {"__name__": "__main__", "__file__": module.__file__, "__builtins__": builtins}
    try:
        exec(code, namespace)
        if call_main:
            namespace["main"]()
    except Exception as error:
        _print(error)
        raise Err(None) from None


def _print(error):
    """Prints `error`'s traceback from the frame below the caller's: the user's code."""
    traceback.print_exception(type(error), error, error.__traceback__.tb_next)
    sys.stderr.flush()

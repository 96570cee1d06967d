"""The driver's pool, shaped like `multiprocessing.Pool`: it runs this component's own task
functions on the pool's worker processes.

A task is named by the Python function itself; its arguments go to the host as WAVE, typed by the
function's annotations (as `poolhost_build` recorded them in `TASKS`), and its result comes back
the same way.
"""

import inspect
import sys
from dataclasses import dataclass

from componentize_py_types import Err
from wit_world.imports import pool as _wit

from . import wave
from .queues import Queue, nanos

__all__ = ["AsyncResult", "Pool", "Task", "TaskFailed"]


@dataclass(frozen=True)
class Task:
    """A function of this component that the pool can run: the name of its export, its parameters'
    types and its result's type (`None` for none), in the form `poolhost.wave` reads, plus
    ``"queue"`` for a `Queue` parameter (a string on the WIT side)."""

    export: str
    params: tuple
    result: object


TASKS = {}
"""This component's tasks by their Python name; filled by its generated entry module."""

TASK_MODULES = {"__main__"}
"""The modules a task function is defined in: the component's, and `__main__`, as the driver
runs it; filled by its generated entry module too."""


class TaskFailed(Exception):
    """A task ran and failed: `kind` says how, as `poolhost run --output json` names it (`trap`,
    `exit`, `timeout`, `memory-limit`, `out-of-fuel`, `worker-died`, `terminated`, `failed`),
    and `message` what happened."""

    def __init__(self, kind, message):
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


def _error(error):
    """The exception for the pool's `error` variant, as `multiprocessing` would raise it."""
    match error:
        case _wit.Error_NotRunning():
            return ValueError("Pool not running")
        case _wit.Error_StillRunning():
            return ValueError("Pool is still running")
        case _wit.Error_BadCall(message):
            return TypeError(message)
        case _wit.Error_Timeout():
            return TimeoutError("the task's result did not come in time")
        case _wit.Error_Failed(failure):
            return TaskFailed(failure.kind, failure.message)
        case _:  # not-driver
            return RuntimeError("only the driver has a pool, and this code runs as a task")


def _decode(task, text):
    return None if text is None else wave.decode(text, task.result)


def _task(func):
    """The task `func` is: one of this component's public top-level functions."""
    name = getattr(func, "__name__", None)
    task = TASKS.get(name)
    own = getattr(func, "__module__", None) in TASK_MODULES
    if task is None or func.__qualname__ != name or not own:
        raise TypeError(
            f"{func!r} is not a task of this component; its tasks are its public top-level "
            f"functions: {', '.join(TASKS) or 'none'}"
        )
    return task


def _args(task, func, args, kwds):
    """The arguments of ``func(*args, **kwds)`` in WAVE, as they stand between a call's
    parentheses; the parameters left out take their defaults."""
    bound = inspect.signature(func).bind(*args, **(kwds or {}))
    bound.apply_defaults()
    texts = []
    for (param, value), type in zip(bound.arguments.items(), task.params, strict=True):
        if type == "queue":
            value, type = value.name if isinstance(value, Queue) else value, "string"
        try:
            texts.append(wave.encode(value, type))
        except TypeError as error:
            raise TypeError(f"{func.__name__}(): argument {param!r}: {error}") from None
    return ", ".join(texts)


class AsyncResult:
    """The result of a task submitted with `Pool.apply_async`, to come."""

    def __init__(self, task, handle):
        self._task = task
        self._handle = handle

    def get(self, timeout=None):
        """Waits for the task, forever or at most `timeout` seconds, and returns its result.
        Raises TaskFailed if it failed, TimeoutError if it had not ended in time."""
        try:
            return _decode(self._task, self._handle.get(nanos(timeout)))
        except Err as error:
            raise _error(error.value) from None

    def wait(self, timeout=None):
        """Waits for the task to end, forever or at most `timeout` seconds."""
        self._handle.wait(nanos(timeout))

    def ready(self):
        """Whether the task has ended."""
        return self._handle.ready()

    def successful(self):
        """Whether the task ended with a result; ValueError while it has not ended."""
        ended_well = self._handle.successful()
        if ended_well is None:
            raise ValueError(f"{self!r} not ready")
        return ended_well


class Pool:
    """The pool of worker processes `poolhost run` started for this driver.

    There is one: its size is ``poolhost run -n`` (one worker per CPU by default), and `processes`
    is accepted for `multiprocessing`'s sake; a different number is noted on stderr. Every
    `Pool()` is the same pool.
    """

    def __init__(self, processes=None):
        if processes is not None and processes < 1:
            raise ValueError("Number of processes must be at least 1")
        workers = _wit.workers()
        if processes is not None and processes != workers:
            print(
                f"poolhost: Pool({processes}) has {workers} workers: "
                "`poolhost run -n` sets its size",
                file=sys.stderr,
            )

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.terminate()

    def apply_async(self, func, args=(), kwds=None):
        """Submits ``func(*args, **kwds)`` to the pool and returns at once. `func` is one of this
        component's tasks; a call that does not fit its signature raises TypeError here."""
        task = _task(func)
        text = _args(task, func, args, kwds)
        try:
            return AsyncResult(task, _wit.apply_async(task.export, text))
        except Err as error:
            raise _error(error.value) from None

    def apply(self, func, args=(), kwds=None):
        """Runs ``func(*args, **kwds)`` on the pool and returns its result (TaskFailed if it
        failed)."""
        task = _task(func)
        text = _args(task, func, args, kwds)
        try:
            return _decode(task, _wit.apply(task.export, text))
        except Err as error:
            raise _error(error.value) from None

    def map(self, func, iterable, chunksize=None):
        """Runs `func` on each item of `iterable` and returns the results in order; raises the
        first failure. The host sizes the chunks; `chunksize` is accepted and not used."""
        return self.starmap(func, ((item,) for item in iterable))

    def starmap(self, func, iterable):
        """Like `map`, each item being the tuple of a call's arguments."""
        task = _task(func)
        texts = [_args(task, func, args, None) for args in iterable]
        try:
            results = _wit.map(task.export, texts)
        except Err as error:
            raise _error(error.value) from None
        values = []
        for result in results:
            if isinstance(result, Err):
                raise _error(result.value)
            values.append(_decode(task, result.value))
        return values

    def close(self):
        """Takes no more tasks; those submitted still run."""
        _wit.close()

    def join(self):
        """Waits for every task to end; ValueError unless `close` or `terminate` came first."""
        try:
            _wit.join()
        except Err as error:
            raise _error(error.value) from None

    def terminate(self):
        """Stops now: running tasks are killed, waiting ones fail as terminated."""
        _wit.terminate()

"""Tasks to call one by one with `poolhost run tasks.wasm --invoke ...`, as the Python guest's
checks do:

    python3 -m poolhost_build tasks.py
    poolhost run tasks.wasm -n 2 --invoke 'add(1, 2)' 'fail("boom")' 'whoami()'
    poolhost run tasks.wasm -n 2 --invoke 'writer("q", ["a", "b"])' 'reader("q", 2)'
"""

import os
from typing import Optional

from poolhost import Queue


def noop():
    """Does nothing: for timing the pool itself."""


def add(a: int, b: int) -> int:
    return a + b


def fail(message: str):
    """Raises RuntimeError(message): the task fails, its traceback on stderr."""
    raise RuntimeError(message)


def whoami() -> tuple[int, int]:
    """The pid of the worker that ran it, and that of the pool's owner."""
    return os.getpid(), os.getppid()


def describe(values: list[float], label: Optional[str] = None, raw: bytes = b"") -> str:
    """A line about `values`, labelled if `label` is given, with the size of `raw`."""
    total = sum(values)
    return f"{label or 'values'}: {len(values)} summing to {total}, {len(raw)} raw bytes"


def writer(q: Queue, items: list[str]):
    """Puts each of `items` on queue `q`."""
    for item in items:
        q.put(item)


def reader(q: Queue, count: int) -> list[str]:
    """Takes `count` items from queue `q`, waiting for each at most 5 seconds."""
    return [q.get(timeout=5) for _ in range(count)]

"""poolhost for Python guests: what a task or a driver imports instead of `multiprocessing`.

- `getpid()`, `getppid()`: the worker's process id, and that of the process owning the pool.
- `Queue(name)` and `Manager().Queue()`: the pool's named queues, with `queue.Queue`'s methods
  and its `Empty` and `Full` exceptions.
- `Pool()`: for a driver, the pool its tasks run on, with `multiprocessing.Pool`'s methods.

Only a component built by ``python3 -m poolhost_build`` can import this package: it calls the host
through the bindings that build generates. In such a component, `os.getpid` and `os.getppid` are
these functions too.
"""

from wit_world.imports import process as _process

from .pool import AsyncResult, Pool, TaskFailed
from .queues import (
    Empty,
    Full,
    InvalidQueueName,
    ItemTooLarge,
    Manager,
    NotText,
    Queue,
    QueueClosed,
    QueueError,
    TooManyQueues,
)

__all__ = [
    "AsyncResult",
    "Empty",
    "Full",
    "InvalidQueueName",
    "ItemTooLarge",
    "Manager",
    "NotText",
    "Pool",
    "Queue",
    "QueueClosed",
    "QueueError",
    "TaskFailed",
    "TooManyQueues",
    "getpid",
    "getppid",
]


def getpid():
    """The process id of the worker running this task (of the host, in the driver)."""
    return _process.pid()


def getppid():
    """The process id of the process that owns the pool: the parent of every worker."""
    return _process.ppid()

"""The pool's named queues, shaped like the standard library's `queue.Queue`, and `Manager`,
which makes queues with fresh names as `multiprocessing.Manager().Queue()` does.

Items are `str` (sent as UTF-8) or `bytes`; `get` returns `str`, `get_bytes` the bytes as they
were put. The queues live in the host: every task of the pool that opens a name shares its queue.
"""

import os
import queue as _stdlib_queue

from componentize_py_types import Err
from wit_world.imports import queue as _wit

__all__ = [
    "Empty",
    "Full",
    "InvalidQueueName",
    "ItemTooLarge",
    "Manager",
    "Queue",
    "QueueClosed",
    "QueueError",
    "TooManyQueues",
]

Empty = _stdlib_queue.Empty
Full = _stdlib_queue.Full


class QueueError(Exception):
    """A queue operation the host refused for a reason other than an empty or full queue."""


class QueueClosed(QueueError):
    """The pool is shutting down: its queues take and give no more items."""


class ItemTooLarge(QueueError, ValueError):
    """The item is over the pool's per-item limit (1 MiB unless `poolhost run --max-item`)."""


class InvalidQueueName(QueueError, ValueError):
    """The queue name is empty or longer than 255 bytes."""


class TooManyQueues(QueueError):
    """The pool already has as many queues as it allows (1024)."""


class NotText(QueueError, UnicodeDecodeError):
    """`get` took an item that is not UTF-8 text: it is off the queue, in `item`."""

    def __init__(self, name, item, cause):
        UnicodeDecodeError.__init__(self, cause.encoding, cause.object, cause.start, cause.end,
                                    f"queue {name!r}: the item is not UTF-8 text (it is in "
                                    f"`.item`; `get_bytes` takes items as bytes)")
        self.item = item


_ERRORS = {
    _wit.Error.CLOSED: (QueueClosed, "the pool is shutting down"),
    _wit.Error.TOO_LARGE: (ItemTooLarge, "the item is over the pool's size limit for one item"),
    _wit.Error.INVALID_NAME: (InvalidQueueName, "a queue name has 1 to 255 bytes"),
    _wit.Error.TOO_MANY_QUEUES: (TooManyQueues, "the pool has as many queues as it allows"),
}


def nanos(timeout):
    """A timeout in seconds as the host takes it: `None` for none, else whole nanoseconds."""
    if timeout is None or timeout == float("inf"):
        return None
    if not timeout >= 0:
        raise ValueError("'timeout' must be a non-negative number")
    return min(int(timeout * 1e9), 2**64 - 1)


def _raise(error, name, waited=None):
    """Raises the exception for the host's `error` on queue `name`: `waited` (Empty for a get,
    Full for a put) when there was no item or no room, now or within the timeout."""
    if error in (_wit.Error.EMPTY, _wit.Error.FULL, _wit.Error.TIMEOUT):
        raise waited() from None
    kind, text = _ERRORS[error]
    raise kind(f"queue {name!r}: {text}") from None


class Queue:
    """The pool's queue called `name`, created unbounded when the pool has none by that name.

    A task function annotated ``q: Queue`` receives one: the driver passes a `Queue` (or its name)
    and the task gets a `Queue` of the same name. A queue's bound is the pool's
    (``poolhost run --queue NAME:MAXSIZE``).
    """

    def __init__(self, name):
        try:
            self._handle = _wit.Queue.open(name)
        except Err as error:
            _raise(error.value, name)
        self.name = name

    def __repr__(self):
        return f"Queue({self.name!r})"

    def put(self, item, block=True, timeout=None):
        """Puts `item` (`str`, sent as UTF-8, or bytes) at the back of the queue. While a bounded
        queue is full, waits for room: forever, or at most `timeout` seconds, then raises Full;
        with `block` false, raises Full at once."""
        if isinstance(item, str):
            item = item.encode()
        elif isinstance(item, (bytes, bytearray, memoryview)):
            item = bytes(item)
        else:
            raise TypeError(f"a queue item is str or bytes, not {type(item).__name__}")
        try:
            if block:
                self._handle.put(item, nanos(timeout))
            else:
                self._handle.try_put(item)
        except Err as error:
            _raise(error.value, self.name, Full)

    def put_nowait(self, item):
        """Puts `item` if there is room now, else raises Full."""
        self.put(item, block=False)

    def get_bytes(self, block=True, timeout=None):
        """Takes the item at the front of the queue, as bytes. While the queue is empty, waits
        for an item: forever, or at most `timeout` seconds, then raises Empty; with `block`
        false, raises Empty at once."""
        try:
            return self._handle.get(nanos(timeout)) if block else self._handle.try_get()
        except Err as error:
            _raise(error.value, self.name, Empty)

    def get(self, block=True, timeout=None):
        """Takes the item at the front of the queue, as `str` (UTF-8; use `get_bytes` for other
        items). Waits as `get_bytes` does."""
        item = self.get_bytes(block, timeout)
        try:
            return item.decode()
        except UnicodeDecodeError as error:
            raise NotText(self.name, item, error) from None

    def get_nowait(self):
        """Takes the item at the front of the queue if there is one, else raises Empty."""
        return self.get(block=False)

    def qsize(self):
        """How many items the queue holds now."""
        return self._handle.qsize()

    def empty(self):
        """Whether the queue holds no item now."""
        return self._handle.empty()


class Manager:
    """Makes queues with names of their own, as `multiprocessing.Manager()` does."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return None

    def Queue(self):  # noqa: N802, the name multiprocessing gives it
        """A new queue, unbounded, with a fresh random name (``Queue.name``)."""
        return Queue(f"manager-{os.urandom(8).hex()}")

"""The `queue` interface over in-memory lists: `MAXSIZE` bounds a queue, `CLOSED` closes them all,
and a wait that would block fails at once as a timeout would."""

from enum import Enum

from componentize_py_types import Err

QUEUES = {}
MAXSIZE = {}
MAX_ITEM = 16
CLOSED = False


def reset():
    global CLOSED
    QUEUES.clear()
    MAXSIZE.clear()
    CLOSED = False


class Error(Enum):
    EMPTY = 0
    FULL = 1
    TIMEOUT = 2
    CLOSED = 3
    TOO_LARGE = 4
    INVALID_NAME = 5
    TOO_MANY_QUEUES = 6


class Queue:
    def __init__(self, name):
        self._name = name

    @classmethod
    def open(cls, name):
        if not 0 < len(name.encode()) <= 255:
            raise Err(Error.INVALID_NAME)
        QUEUES.setdefault(name, [])
        return cls(name)

    def name(self):
        return self._name

    def _items(self):
        if CLOSED:
            raise Err(Error.CLOSED)
        return QUEUES[self._name]

    def put(self, item, timeout_ns):
        assert isinstance(item, bytes)
        items = self._items()
        if len(item) > MAX_ITEM:
            raise Err(Error.TOO_LARGE)
        if len(items) >= MAXSIZE.get(self._name, float("inf")):
            raise Err(Error.TIMEOUT)
        items.append(item)

    def try_put(self, item):
        try:
            self.put(item, 0)
        except Err as error:
            raise Err(Error.FULL if error.value == Error.TIMEOUT else error.value) from None

    def get(self, timeout_ns):
        items = self._items()
        if not items:
            raise Err(Error.TIMEOUT)
        return items.pop(0)

    def try_get(self):
        items = self._items()
        if not items:
            raise Err(Error.EMPTY)
        return items.pop(0)

    def qsize(self):
        return len(QUEUES[self._name])

    def empty(self):
        return not QUEUES[self._name]

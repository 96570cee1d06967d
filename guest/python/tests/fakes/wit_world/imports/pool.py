"""The `pool` interface, with tasks that `HANDLER(function, args)` runs at once: it returns the
result's WAVE (or None) or raises `Err(error)`. `CALLS` records what was submitted."""

from dataclasses import dataclass

from componentize_py_types import Err, Ok

CALLS = []
HANDLER = None
STATE = {"closed": False}


def reset(handler):
    global HANDLER
    HANDLER = handler
    CALLS.clear()
    STATE["closed"] = False


@dataclass
class Failure:
    kind: str
    message: str


@dataclass
class Error_NotRunning:
    pass


@dataclass
class Error_StillRunning:
    pass


@dataclass
class Error_BadCall:
    value: str


@dataclass
class Error_Timeout:
    pass


@dataclass
class Error_Failed:
    value: Failure


@dataclass
class Error_NotDriver:
    pass


def _run(function, args):
    if STATE["closed"]:
        raise Err(Error_NotRunning())
    CALLS.append((function, args))
    return HANDLER(function, args)


class AsyncResult:
    def __init__(self, function, args):
        try:
            self._outcome = Ok(_run(function, args))
        except Err as error:
            if isinstance(error.value, Error_NotRunning):
                raise
            self._outcome = error

    def get(self, timeout_ns):
        if isinstance(self._outcome, Err):
            raise self._outcome
        return self._outcome.value

    def wait(self, timeout_ns):
        return True

    def ready(self):
        return True

    def successful(self):
        return isinstance(self._outcome, Ok)


def apply_async(function, args):
    return AsyncResult(function, args)


def apply(function, args):
    return _run(function, args)


def map(function, args):
    results = []
    for text in args:
        try:
            results.append(Ok(_run(function, text)))
        except Err as error:
            results.append(error)
    return results


def close():
    STATE["closed"] = True


def join():
    if not STATE["closed"]:
        raise Err(Error_StillRunning())


def terminate():
    STATE["closed"] = True


def workers():
    return 2

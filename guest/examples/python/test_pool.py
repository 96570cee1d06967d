"""Test-only driver: the `poolhost.Pool` API on a real pool, one line per step, as
tests/all/languages.rs reads them."""

import time

from poolhost import Pool, Queue, TaskFailed


def square(x: int) -> int:
    return x * x


def fail(message: str):
    raise RuntimeError(message)


def nap(ms: int) -> int:
    time.sleep(ms / 1000)
    return ms


def echo(q: Queue) -> str:
    return q.get(timeout=5)


if __name__ == "__main__":
    pool = Pool()
    print("apply:", pool.apply(square, (7,)))
    print("map:", pool.map(square, range(5)))
    failed = pool.apply_async(fail, ("boom",))
    try:
        failed.get()
    except TaskFailed as error:
        # The traceback travels with the failure: its last line is the exception.
        print("failed:", error.kind, error.message.splitlines()[-1])
    print("successful:", failed.successful())
    slow = pool.apply_async(nap, (3000,))
    try:
        slow.get(timeout=0.2)
    except TimeoutError:
        print("timeout: ready", slow.ready())
    q = Queue("checks")
    q.put("é")
    print("queue:", pool.apply(echo, (q,)))
    try:
        pool.apply(square, ("seven",))
    except TypeError as error:
        print("bad call:", error)
    pool.terminate()
    pool.join()
    try:
        slow.get()
    except TaskFailed as error:
        print("terminated:", error.kind)

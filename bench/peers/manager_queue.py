"""The CPython peer of poolhost's queue benchmark: a writer and a reader task in a Pool(2) pass
N items through a Manager().Queue.

Timed like the poolhost side: from submitting both tasks until both are done, with the pool and
the manager already started. Prints {"python": version, "rates": [items per second, ...]}.
"""

import argparse
import json
import platform
import time
from multiprocessing import Manager, Pool


def writer(q, n):
    for i in range(n):
        q.put(b"item %010d\n" % i)


def reader(q, n):
    for _ in range(n):
        q.get()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, required=True)
    parser.add_argument("--runs", type=int, required=True)
    args = parser.parse_args()

    rates = []
    for _ in range(args.runs):
        with Manager() as manager, Pool(2) as pool:
            q = manager.Queue()
            start = time.perf_counter()
            w = pool.apply_async(writer, (q, args.items))
            r = pool.apply_async(reader, (q, args.items))
            w.get()
            r.get()
            elapsed = time.perf_counter() - start
            assert q.qsize() == 0
        rates.append(args.items / elapsed)
    print(json.dumps({"python": platform.python_version(), "rates": rates}))


if __name__ == "__main__":
    main()

"""The CPython peer of poolhost's Python row: N no-op tasks through Pool.apply_async with
maxtasksperchild=1, a fresh interpreter process per task, as each poolhost task gets a fresh
CPython instance.

Timed like the poolhost side: from the first submission to the return of join(), with the pool
already started. Prints one JSON object: {"python": version, "rates": [tasks per second, ...]}.
"""

import argparse
import json
import platform
import time
from multiprocessing import Pool


def noop():
    pass


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--tasks", type=int, required=True)
    parser.add_argument("--runs", type=int, required=True)
    args = parser.parse_args()

    rates = []
    for _ in range(args.runs):
        with Pool(args.workers, maxtasksperchild=1) as pool:
            start = time.perf_counter()
            results = [pool.apply_async(noop) for _ in range(args.tasks)]
            pool.close()
            pool.join()
            elapsed = time.perf_counter() - start
            assert all(r.successful() for r in results)
        rates.append(args.tasks / elapsed)
    print(json.dumps({"python": platform.python_version(), "rates": rates}))


if __name__ == "__main__":
    main()

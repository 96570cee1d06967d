"""The CPython peer of poolhost's first benchmark: N no-op tasks through Pool.apply_async, and
through Pool.map(chunksize=1), one task per item as poolhost's calls are.

Timed like the poolhost side: from the first submission to the return of join(), with the pool
already started. Prints one JSON object: {"python": version, "rates": [apply_async tasks per second, ...],
"map_rates": [map tasks per second, ...]}.
"""

import argparse
import json
import platform
import time
from multiprocessing import Pool


def noop():
    pass


def identity(x):
    return x


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--tasks", type=int, required=True)
    parser.add_argument("--runs", type=int, required=True)
    args = parser.parse_args()

    rates = []
    map_rates = []
    for _ in range(args.runs):
        with Pool(args.workers) as pool:
            start = time.perf_counter()
            results = [pool.apply_async(noop) for _ in range(args.tasks)]
            pool.close()
            pool.join()
            elapsed = time.perf_counter() - start
            assert all(r.successful() for r in results)
        rates.append(args.tasks / elapsed)
        with Pool(args.workers) as pool:
            start = time.perf_counter()
            results = pool.map(identity, range(args.tasks), chunksize=1)
            pool.close()
            pool.join()
            elapsed = time.perf_counter() - start
            assert len(results) == args.tasks
        map_rates.append(args.tasks / elapsed)
    print(json.dumps({"python": platform.python_version(), "rates": rates, "map_rates": map_rates}))


if __name__ == "__main__":
    main()

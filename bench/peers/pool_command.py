"""The CPython peer of `poolhost run --calls`: a whole command that starts a Pool, runs N no-op
tasks through Pool.apply_async or Pool.map(chunksize=1), and prints each result on a line of its
own, as poolhost's command line prints one per call. The bench times the whole command, the
interpreter's start-up included.
"""

import argparse
import sys
from multiprocessing import Pool


def noop(_=None):
    return None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--tasks", type=int, required=True)
    parser.add_argument("--how", choices=["apply_async", "map"], required=True)
    args = parser.parse_args()

    with Pool(args.workers) as pool:
        if args.how == "apply_async":
            pending = [pool.apply_async(noop) for _ in range(args.tasks)]
            results = [p.get() for p in pending]
        else:
            results = pool.map(noop, range(args.tasks), chunksize=1)
    out = sys.stdout
    for i, result in enumerate(results):
        out.write(f"noop() [{i}] -> {result!r}\n")


if __name__ == "__main__":
    main()

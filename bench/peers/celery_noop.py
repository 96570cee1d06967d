"""The Celery peer of poolhost's cluster rows: N no-op tasks through Celery with its Redis
transport and Redis result backend, on a prefork worker of W processes, all on the same Redis
server as poolhost's hosts.

Timed like the poolhost side: from the first submission to the last result, with the worker
already started and answering. Prints one JSON object: {"celery": version, "rates": [tasks per
second, ...]}.

Run with the bench's own virtual environment (`make bench` makes it: celery, redis, packaging).
"""

import argparse
import json
import os
import subprocess
import sys
import time

from celery import Celery

app = Celery("celery_noop")


@app.task
def noop():
    return None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis", required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--tasks", type=int, required=True)
    parser.add_argument("--runs", type=int, required=True)
    args = parser.parse_args()
    app.conf.broker_url = args.redis
    app.conf.result_backend = args.redis

    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=here)
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "celery_noop", "-b", args.redis,
         "--result-backend", args.redis, "worker", "--pool", "prefork",
         "--concurrency", str(args.workers), "--loglevel", "WARNING", "--without-gossip",
         "--without-mingle", "--without-heartbeat"],
        env=env, cwd=here, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not app.control.ping(timeout=0.5):
            if time.monotonic() > deadline or worker.poll() is not None:
                raise SystemExit("the Celery worker did not start")
        # One task through, so the first run does not pay for the worker's warm-up.
        noop.delay().get(timeout=30)
        rates = []
        for _ in range(args.runs):
            start = time.perf_counter()
            results = [noop.delay() for _ in range(args.tasks)]
            for result in results:
                result.get(timeout=300)
            rates.append(args.tasks / (time.perf_counter() - start))
        import celery
        print(json.dumps({"celery": celery.__version__, "rates": rates}))
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


if __name__ == "__main__":
    main()

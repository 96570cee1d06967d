"""The build command: ``python3 -m poolhost_build APP.py [-o APP.wasm]`` (or ``poolhost-build``)."""

import argparse
import sys
import time
from pathlib import Path

from . import BuildError, build, read_app


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="poolhost-build",
        description="Build a Python module into a poolhost component: its public top-level "
        'functions are the tasks; with `if __name__ == "__main__":` or a `main()` it is a driver.',
    )
    parser.add_argument("source", type=Path, help="the module, e.g. app.py")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        help="the component to write (default: APP.wasm in the current directory)",
    )
    args = parser.parse_args(argv)
    output = args.output or Path(args.source.stem + ".wasm")
    start = time.monotonic()
    try:
        app = read_app(args.source)
        if app.helpers:
            print(
                "poolhost-build: not tasks, as their parameters have no annotations: "
                + ", ".join(app.helpers),
                file=sys.stderr,
            )
        build(app, output)
    except BuildError as error:
        print(f"poolhost-build: {error}", file=sys.stderr)
        return 1
    tasks = f"{len(app.tasks)} task{'' if len(app.tasks) == 1 else 's'}"
    what = f"a driver with {tasks}" if app.driver else tasks
    print(
        f"poolhost-build: wrote {output} ({what}, {output.stat().st_size / 2**20:.1f} MiB) "
        f"in {time.monotonic() - start:.1f} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

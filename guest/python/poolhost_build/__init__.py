"""Builds a Python module into a poolhost component: ``python3 -m poolhost_build app.py``.

The module's public top-level functions become the component's exports (its tasks), typed by their
annotations; a module with ``if __name__ == "__main__":`` or a `main()` is a driver, whose main
runs the pool. This package runs on the build machine only; the component gets the `poolhost`
package, which its code imports, and nothing of this one.
"""

import importlib.util
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from . import render
from .tasks import BuildError, read_app

__all__ = ["BuildError", "build", "componentize_py", "read_app"]

HERE = Path(__file__).resolve().parent
WIT = HERE / "wit"
"""poolhost's WIT: pool.wit and the WASI packages it uses under deps/."""
RUNTIME = HERE.parent / "poolhost"
"""The `poolhost` package, copied into every component."""

INSTALL = "pip install componentize-py==0.25.1"


def componentize_py():
    """The command that runs componentize-py: this Python's module if it has it, else the
    `componentize-py` on PATH; BuildError saying how to install it if neither."""
    if importlib.util.find_spec("componentize_py"):
        return [sys.executable, "-c", "import componentize_py; componentize_py.script()"]
    found = shutil.which("componentize-py")
    if found:
        return [found]
    raise BuildError(
        f"componentize-py is not installed: `{INSTALL}` (it needs Python 3.10 or later)"
    )


def build(app, output):
    """Builds `app`, a module as `read_app` read it, into the component `output`. Raises
    BuildError; componentize-py's own errors, such as an exception the module raised as it was
    imported, reach stderr."""
    command = componentize_py()
    pool_wit = (WIT / "pool.wit").read_text(encoding="utf-8")
    package = re.search(r"^package\s+([^;\s]+)\s*;", pool_wit, re.MULTILINE)[1]
    with tempfile.TemporaryDirectory(prefix="poolhost-build-") as temp:
        temp = Path(temp)
        deps = temp / "wit" / "deps"
        deps.mkdir(parents=True)
        (temp / "wit" / "world.wit").write_text(render.world(app, package), encoding="utf-8")
        (deps / "poolhost.wit").write_text(pool_wit, encoding="utf-8")
        for dep in (WIT / "deps").glob("*.wit"):
            shutil.copyfile(dep, deps / dep.name)
        (temp / f"{render.ENTRY}.py").write_text(render.entry(app), encoding="utf-8")
        shutil.copytree(RUNTIME, temp / "poolhost", ignore=shutil.ignore_patterns("__pycache__"))
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        options = ["--quiet", "-d", str(temp / "wit"), "-w", render.WORLD]
        paths = ["-p", str(temp), "-p", str(app.path.resolve().parent)]
        done = subprocess.run(
            [*command, *options, "componentize", render.ENTRY, "-o", str(output), *paths],
            check=False,
        )
    if done.returncode != 0:
        raise BuildError(
            f"{app.path}: componentize-py failed (exit code {done.returncode}); its output is above"
        )

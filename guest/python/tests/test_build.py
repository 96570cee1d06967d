"""The build command, up to componentize-py: finding it, the files it is given, and the errors
that are one line."""

import contextlib
import io
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path
from unittest import mock

import support  # noqa: F401, puts poolhost_build on sys.path
import poolhost_build
from poolhost_build.__main__ import main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "python"


def run_main(*args):
    """Runs the command; returns its exit code and stderr."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = main([str(a) for a in args])
    return code, stderr.getvalue()


class FindingComponentizePy(unittest.TestCase):
    def test_this_pythons_module_comes_first(self):
        with mock.patch("importlib.util.find_spec", return_value=object()):
            self.assertEqual(poolhost_build.componentize_py()[0], sys.executable)

    def test_then_path(self):
        with (
            mock.patch("importlib.util.find_spec", return_value=None),
            mock.patch("shutil.which", return_value="/opt/bin/componentize-py"),
        ):
            self.assertEqual(poolhost_build.componentize_py(), ["/opt/bin/componentize-py"])

    def test_missing_is_one_line_saying_how_to_install_it(self):
        with (
            mock.patch("importlib.util.find_spec", return_value=None),
            mock.patch("shutil.which", return_value=None),
        ):
            code, stderr = run_main(EXAMPLES / "tasks.py", "-o", "/nonexistent/tasks.wasm")
        self.assertEqual(code, 1)
        self.assertEqual(
            stderr,
            "poolhost-build: componentize-py is not installed: "
            "`pip install componentize-py==0.25.1` (it needs Python 3.10 or later)\n",
        )


class Building(unittest.TestCase):
    def setUp(self):
        patch = mock.patch("poolhost_build.componentize_py", return_value=["componentize-py"])
        patch.start()
        self.addCleanup(patch.stop)
        self.output = Path(tempfile.mkdtemp()) / "out" / "seed_queue.wasm"

    def test_componentize_py_gets_the_world_the_entry_module_and_both_paths(self):
        seen = {}

        def run(command, check):
            temp = Path(command[command.index("-d") + 1]).parent
            seen["command"] = command
            seen["files"] = sorted(str(p.relative_to(temp)) for p in temp.rglob("*") if p.is_file())
            seen["world"] = (temp / "wit" / "world.wit").read_text()
            self.output.write_bytes(b"\0asm")
            return subprocess.CompletedProcess(command, 0)

        with mock.patch("subprocess.run", run):
            code, stderr = run_main(EXAMPLES / "seed_queue.py", "-o", self.output)
        self.assertEqual(code, 0, stderr)
        self.assertRegex(
            stderr,
            r"^poolhost-build: wrote .*seed_queue\.wasm \(a driver with 2 tasks, 0\.0 MiB\) in ",
        )
        command = seen["command"]
        self.assertEqual(command[command.index("-w") + 1], "app")
        self.assertEqual(command[command.index("componentize") + 1], "poolhost_entry")
        self.assertEqual(command[-1], str(EXAMPLES))
        self.assertIn("include poolhost:pool/driver@0.1.0;", seen["world"])
        for name in [
            "wit/deps/poolhost.wit",
            "wit/deps/cli.wit",
            "poolhost_entry.py",
            "poolhost/queues.py",
        ]:
            self.assertIn(name, seen["files"])
        self.assertFalse(any(name.startswith("poolhost_build") for name in seen["files"]))

    def test_a_failed_componentize_py_is_an_error(self):
        with mock.patch("subprocess.run", return_value=subprocess.CompletedProcess([], 1)):
            code, stderr = run_main(EXAMPLES / "tasks.py", "-o", self.output)
        self.assertEqual(code, 1)
        self.assertIn("componentize-py failed (exit code 1); its output is above", stderr)

    def test_annotation_errors_come_before_componentize_py_is_needed(self):
        source = Path(tempfile.mkdtemp()) / "bad.py"
        source.write_text("def f(x: dict) -> int:\n    return 1\n")
        with mock.patch("subprocess.run") as run:
            code, stderr = run_main(source)
        run.assert_not_called()
        self.assertEqual(code, 1)
        self.assertEqual(stderr.count("\n"), 1)
        self.assertIn("bad.py:1: f(): parameter `x`: unsupported annotation `dict`", stderr)

    def test_helpers_are_named(self):
        source = Path(tempfile.mkdtemp()) / "app.py"
        source.write_text("def task(n: int): ...\ndef helper(n): ...\n")
        with mock.patch("subprocess.run", return_value=subprocess.CompletedProcess([], 1)):
            _, stderr = run_main(source, "-o", self.output)
        self.assertIn("not tasks, as their parameters have no annotations: helper\n", stderr)


if __name__ == "__main__":
    unittest.main()

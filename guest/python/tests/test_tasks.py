"""What poolhost_build reads from a module: its tasks' WIT types, its driver, and its errors; and
the WIT world and entry module it writes for them."""

import ast
import tempfile
import textwrap
import unittest
from pathlib import Path

import support  # noqa: F401, puts poolhost_build on sys.path
from poolhost_build import render
from poolhost_build.tasks import BuildError, _Unsupported, annotation_type, read_app


def type_of(annotation):
    return annotation_type(ast.parse(annotation, mode="eval").body)


class Annotations(unittest.TestCase):
    def test_supported(self):
        cases = {
            "int": "s64",
            "float": "f64",
            "str": "string",
            "bool": "bool",
            "bytes": "bytes",
            "Queue": "queue",
            "poolhost.Queue": "queue",
            "list[int]": ("list", "s64"),
            "typing.List[str]": ("list", "string"),
            "tuple[int, str]": ("tuple", "s64", "string"),
            "Tuple[float]": ("tuple", "f64"),
            "Optional[int]": ("option", "s64"),
            "typing.Optional[bytes]": ("option", "bytes"),
            "int | None": ("option", "s64"),
            "None | str": ("option", "string"),
            "Union[None, float]": ("option", "f64"),
            "Optional[Optional[int]]": ("option", "s64"),
            "Optional[int] | None": ("option", "s64"),
            "'list[int]'": ("list", "s64"),
            "list[tuple[str, Optional[list[bool]]]]": (
                "list",
                ("tuple", "string", ("option", ("list", "bool"))),
            ),
        }
        for annotation, expected in cases.items():
            with self.subTest(annotation=annotation):
                self.assertEqual(type_of(annotation), expected)

    def test_unsupported(self):
        for annotation in [
            "dict[str, int]",
            "set[int]",
            "Any",
            "object",
            "int | str",
            "Union[int, str]",
            "tuple[int, ...]",
            "tuple[()]",
            "list",
            "list[int, str]",
            "None",
            "'not python'",
            "complex",
            "list[dict]",
        ]:
            with self.subTest(annotation=annotation), self.assertRaises(_Unsupported):
                type_of(annotation)

    def test_wit_spelling(self):
        self.assertEqual(
            render.wit_type(("list", ("tuple", "bytes", ("option", "queue"), "f64"))),
            "list<tuple<list<u8>, option<string>, f64>>",
        )


class Modules(unittest.TestCase):
    def read(self, source, name="app.py"):
        directory = tempfile.TemporaryDirectory()
        self.addCleanup(directory.cleanup)
        path = Path(directory.name) / name
        path.write_text(textwrap.dedent(source))
        return read_app(path)

    def fails(self, source, message, name="app.py"):
        with self.assertRaises(BuildError) as caught:
            self.read(source, name)
        self.assertRegex(str(caught.exception), message)
        self.assertNotIn("\n", str(caught.exception))

    def test_tasks_and_helpers(self):
        app = self.read("""
            from poolhost import Queue

            def add(a: int, b: int = 2) -> int: ...
            def writer(q: Queue, items: list[str]) -> None: ...
            def noop(): ...
            def helper(x, y): ...
            def _private(x): ...
            async def _later(): ...
            class Thing: ...
        """)
        self.assertEqual(
            [(t.name, t.export, t.params, t.result) for t in app.tasks],
            [
                ("add", "add", [("a", "s64"), ("b", "s64")], "s64"),
                ("writer", "writer", [("q", "queue"), ("items", ("list", "string"))], None),
                ("noop", "noop", [], None),
            ],
        )
        self.assertEqual(app.helpers, ["helper"])
        self.assertIsNone(app.driver)

    def test_drivers(self):
        block = 'def long_time_task(name: int): ...\nif __name__ == "__main__":\n    pass\n'
        self.assertEqual(self.read(block).driver, "block")
        self.assertEqual(self.read("if '__main__' == __name__:\n    pass\n").driver, "block")
        app = self.read("def main():\n    pass\ndef long_time_task(name: int): ...\n")
        self.assertEqual((app.driver, [t.name for t in app.tasks]), ("main", ["long_time_task"]))
        self.assertEqual(
            self.read("def main(): ...\nif __name__ == '__main__':\n    main()\n").driver, "block"
        )
        self.assertIsNone(self.read("def f(): ...\nif __name__ != '__main__':\n    pass\n").driver)

    def test_errors_name_the_function_parameter_and_annotation(self):
        self.fails(
            "def f(x: int, d: dict[str, int]): ...",
            r"app\.py:1: f\(\): parameter `d`: unsupported annotation `dict\[str, int\]`; "
            r"supported: int,",
        )
        self.fails(
            "\n\ndef f() -> set[int]: ...",
            r"app\.py:3: f\(\): return annotation: unsupported annotation `set\[int\]`",
        )
        self.fails("def f(x: int, y): ...", r"f\(\): parameter `y` has no annotation")
        self.fails(
            "def f(q: list[Queue]): ...",
            r"f\(\): parameter `q`: Queue is supported as a parameter's own type only",
        )
        self.fails(
            "def f() -> Queue: ...", r"f\(\): return annotation: a task cannot return a Queue"
        )
        self.fails("def f(*args: int): ...", r"f\(\): a task takes a fixed list of parameters")
        self.fails(
            "def f(a: int, *, b: int): ...", r"f\(\): a task takes a fixed list of parameters"
        )
        self.fails("async def fetch(): ...", r"fetch\(\): an async function cannot be a task")
        self.fails("def fetchURL(): ...", r"fetchURL\(\): a task's name is lower_snake_case")
        self.fails("def task_2(): ...", r"task_2\(\): a task's name is lower_snake_case")
        for name in ("read", "rand", "sleep", "time", "getpid"):
            self.fails(
                f"def {name}(): ...",
                rf"{name}\(\): `{name}` is also a C function in the Python runtime .* "
                rf"rename the task \(`{name}_task`",
            )
        self.fails(
            "def f(x_1: int): ...",
            r"f\(\): parameter `x_1`: a task's parameter names are lower_snake_case",
        )

    def test_module_errors(self):
        self.fails("import os\nX = 1\n", r"app\.py: nothing to build: no public top-level function")
        self.fails("def f(:\n", r"app\.py:1: syntax error")
        for line in ("from multiprocessing import Pool", "import os, multiprocessing.pool"):
            self.fails(
                f"def f(): ...\n{line}\n",
                r"app\.py:2: a component has no multiprocessing; import Pool, Manager and Queue "
                "from poolhost instead",
            )
        self.fails("def f(): ...", r"`my-app` is not a Python module name", name="my-app.py")
        for name in ("queue.py", "poolhost.py", "wit_world.py"):
            self.fails("def f(): ...", r"the component already has a module `", name=name)
        with self.assertRaisesRegex(BuildError, "cannot read it"):
            read_app("/nonexistent/app.py")


class Rendering(unittest.TestCase):
    def app(self, source):
        directory = tempfile.TemporaryDirectory()
        self.addCleanup(directory.cleanup)
        path = Path(directory.name) / "seed.py"
        path.write_text(source)
        return read_app(path)

    def test_world(self):
        app = self.app(
            "def long_time_task(name: int, list: bytes) -> Optional[str]: ...\n"
            "if __name__ == '__main__': pass\n"
        )
        self.assertEqual(
            render.world(app, "poolhost:pool@0.1.0"),
            "package poolhost:python-app;\n\n"
            "/// Built by poolhost_build from seed.py.\n"
            "world app {\n"
            "    include poolhost:pool/driver@0.1.0;\n"
            "    export %long-time-task: func(%name: s64, %list: list<u8>) -> option<string>;\n"
            "}\n",
        )
        self.assertIn(
            "include poolhost:pool/task@0.1.0;",
            render.world(self.app("def f(): ...\n"), "poolhost:pool@0.1.0"),
        )

    def test_entry_module_compiles_and_forwards_each_task(self):
        for source, driver in [
            ("def f(q: Queue) -> int: ...\ndef g(): ...\n", False),
            ("def f(x: int): ...\ndef main(): ...\n", True),
            ("if __name__ == '__main__':\n    print(1)\n", True),
        ]:
            with self.subTest(source=source):
                app = self.app(source)
                entry = render.entry(app)
                compile(entry, render.ENTRY + ".py", "exec")
                self.assertIn("import seed as app", entry)
                self.assertEqual("class Run(exports.Run):" in entry, driver)
                for task in app.tasks:
                    self.assertIn(f"    def {task.name}(self, *args):", entry)
                if app.tasks:
                    self.assertIn("'f': ('f', ", entry)
                else:
                    self.assertNotIn("WitWorld", entry)


if __name__ == "__main__":
    unittest.main()

"""Reading a Python module's tasks from its source, without importing it: its public top-level
functions, their annotations as WIT types, and whether it is a driver.

A public top-level function is a task when it annotates its parameters (a function without any is
one); one that annotates none of them is a helper, left out; one that annotates some is an error.
A `main()` is the driver's, never a task.

Types are in the form `poolhost.wave` reads (``"s64"``, ``("list", "string")``, ...), plus
``"queue"`` for a parameter annotated `Queue`, which is a WIT ``string``, the queue's name.
"""

import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from .render import ENTRY

SUPPORTED = "int, float, str, bool, bytes, Queue, list[T], tuple[A, B], Optional[T] (T | None)"

_SCALARS = {
    "int": "s64",
    "float": "f64",
    "str": "string",
    "bool": "bool",
    "bytes": "bytes",
    "Queue": "queue",
}

# A name that is a WIT identifier once its underscores are hyphens, and the same name again in
# componentize-py's bindings: lower-case words, each starting with a letter.
_WIT_NAME = re.compile(r"[a-z][a-z0-9]*(_[a-z][a-z0-9]*)*")

# The modules a component has besides Python's own: the module cannot have one of their names.
_TAKEN_MODULES = {
    "poolhost",
    ENTRY,
    "wit_world",
    "componentize_py_types",
    "componentize_py_runtime",
    "componentize_py_async_support",
    "poll_loop",
}

# The one-word names a task cannot have: see the file.
_RESERVED = frozenset(
    word
    for line in (Path(__file__).parent / "reserved.txt").read_text().splitlines()
    if not line.startswith("#")
    for word in line.split()
)


class BuildError(Exception):
    """Why a module cannot be built, in one line."""


@dataclass
class Task:
    """A function of the module that the pool can call."""

    name: str
    params: list  # [(name, type)]
    result: object  # a type, or None for no result

    @property
    def export(self):
        """Its name in WIT: the Python name in kebab-case."""
        return self.name.replace("_", "-")


@dataclass
class App:
    """A module to build: its tasks, and how it drives a pool, if it does."""

    path: Path
    tasks: list
    driver: str | None  # "block" (`if __name__ == "__main__":`), "main" (a `main()`), or None
    helpers: list  # the names of the public functions without annotations, which are not tasks

    @property
    def module(self):
        return self.path.stem


class _Unsupported(Exception):
    """An annotation that maps to no WIT type."""


def read_app(path):
    """The tasks and driver of the module at `path`; BuildError if it cannot be a component."""
    path = Path(path)
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeError) as error:
        raise BuildError(f"{path}: cannot read it: {error}") from None
    if not path.stem.isidentifier():
        raise BuildError(f"{path}: `{path.stem}` is not a Python module name; rename the file")
    if path.stem in _TAKEN_MODULES or path.stem in sys.stdlib_module_names:
        raise BuildError(
            f"{path}: the component already has a module `{path.stem}`, which would be imported "
            "instead of this one; rename the file"
        )
    try:
        tree = ast.parse(source, filename=str(path))
    except SyntaxError as error:
        raise BuildError(f"{path}:{error.lineno}: syntax error: {error.msg}") from None

    for node in ast.walk(tree):
        if _imports_multiprocessing(node):
            raise BuildError(
                f"{path}:{node.lineno}: a component has no multiprocessing; "
                "import Pool, Manager and Queue from poolhost instead"
            )
    functions = {}
    driver = None
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            functions[node.name] = node
        elif _is_main_block(node):
            driver = "block"
    if driver is None and "main" in functions:
        driver = "main"
    public = [
        node for name, node in functions.items() if not name.startswith("_") and name != "main"
    ]
    helpers = [node.name for node in public if _is_helper(node)]
    tasks = [_task(path, node) for node in public if node.name not in helpers]
    if not tasks and driver is None:
        raise BuildError(
            f"{path}: nothing to build: no public top-level function to call as a task, "
            'and no `main()` or `if __name__ == "__main__":`'
        )
    return App(path, tasks, driver, helpers)


def _imports_multiprocessing(node):
    match node:
        case ast.Import(names=names):
            return any(alias.name.split(".")[0] == "multiprocessing" for alias in names)
        case ast.ImportFrom(module=module, level=0):
            return module.split(".")[0] == "multiprocessing"
    return False


def _is_helper(node):
    """Whether function `node` has parameters and annotates none: then it is not a task."""
    args = node.args
    params = (
        args.posonlyargs + args.args + args.kwonlyargs + [a for a in (args.vararg, args.kwarg) if a]
    )
    return bool(params) and all(a.annotation is None for a in params)


def _is_main_block(node):
    """Whether `node` is ``if __name__ == "__main__":`` (either way round)."""
    match node:
        case ast.If(test=ast.Compare(left=left, ops=[ast.Eq()], comparators=[right])):
            sides = {ast.dump(left), ast.dump(right)}
            return sides == {
                ast.dump(ast.Name("__name__", ast.Load())),
                ast.dump(ast.Constant("__main__")),
            }
    return False


def _task(path, node):
    """The task function `node` is, or BuildError saying why it cannot be one."""

    def fail(problem):
        return BuildError(f"{path}:{node.lineno}: {node.name}(): {problem}")

    if isinstance(node, ast.AsyncFunctionDef):
        raise fail(
            "an async function cannot be a task; make it `def`, or name it `_" + node.name + "`"
        )
    if not _WIT_NAME.fullmatch(node.name):
        raise fail(
            "a task's name is lower_snake_case, each word starting with a letter "
            "(it becomes a WIT name)"
        )
    if node.name in _RESERVED:
        raise fail(
            f"`{node.name}` is also a C function in the Python runtime the component is built "
            f"on, and a component cannot export both; rename the task (`{node.name}_task`: a name "
            "of two words never clashes)"
        )
    args = node.args
    if args.vararg or args.kwarg or args.kwonlyargs:
        raise fail(
            "a task takes a fixed list of parameters: no *args, **kwargs or keyword-only ones"
        )

    params = []
    for arg in args.posonlyargs + args.args:
        if not _WIT_NAME.fullmatch(arg.arg):
            raise fail(
                f"parameter `{arg.arg}`: a task's parameter names are lower_snake_case, "
                "each word starting with a letter"
            )
        if arg.annotation is None:
            raise fail(
                f"parameter `{arg.arg}` has no annotation, and a task's parameters all need one"
            )
        params.append((arg.arg, _parameter_type(arg.annotation, fail, f"parameter `{arg.arg}`")))

    result = None
    returns = node.returns
    if returns is not None and not _is_none(returns):
        result = _checked(returns, fail, "return annotation")
        if _has_queue(result):
            raise fail("return annotation: a task cannot return a Queue; return its name, a str")
    return Task(node.name, params, result)


def _parameter_type(annotation, fail, what):
    type = _checked(annotation, fail, what)
    if type != "queue" and _has_queue(type):
        raise fail(
            f"{what}: Queue is supported as a parameter's own type only, "
            f"not inside `{ast.unparse(annotation)}`"
        )
    return type


def _checked(annotation, fail, what):
    try:
        return annotation_type(annotation)
    except _Unsupported:
        raise fail(
            f"{what}: unsupported annotation `{ast.unparse(annotation)}`; supported: {SUPPORTED}"
        ) from None


def _has_queue(type):
    return type == "queue" or (isinstance(type, tuple) and any(map(_has_queue, type[1:])))


def _is_none(node):
    return isinstance(node, ast.Constant) and node.value is None


def annotation_type(node):
    """The type an annotation's AST `node` stands for; _Unsupported if none."""
    match node:
        case ast.Constant(value=str(text)):
            try:
                return annotation_type(ast.parse(text, mode="eval").body)
            except SyntaxError:
                raise _Unsupported from None
        case ast.Name(id=name) | ast.Attribute(attr=name) if name in _SCALARS:
            return _SCALARS[name]
        case ast.BinOp(op=ast.BitOr()):
            return _union(_union_members(node))
        case ast.Subscript(value=ast.Name(id=generic) | ast.Attribute(attr=generic), slice=index):
            args = index.elts if isinstance(index, ast.Tuple) else [index]
            if generic in ("list", "List") and len(args) == 1:
                return ("list", annotation_type(args[0]))
            if generic in ("tuple", "Tuple") and args and not any(_is_ellipsis(a) for a in args):
                return ("tuple", *map(annotation_type, args))
            if generic == "Optional" and len(args) == 1:
                return _option(annotation_type(args[0]))
            if generic == "Union":
                return _union(args)
    raise _Unsupported


def _is_ellipsis(node):
    return isinstance(node, ast.Constant) and node.value is Ellipsis


def _union_members(node):
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _union_members(node.left) + _union_members(node.right)
    return [node]


def _union(members):
    """`T | None`, in any order, is ``option<T>``; no other union maps to WIT."""
    others = [m for m in members if not _is_none(m)]
    if len(others) == 1 and len(others) < len(members):
        return _option(annotation_type(others[0]))
    raise _Unsupported


def _option(type):
    """``option<T>``; an option of an option is the option, as `Optional[Optional[T]]` is."""
    return type if isinstance(type, tuple) and type[0] == "option" else ("option", type)

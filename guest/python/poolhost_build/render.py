"""The two files a component is built from besides the user's module: its WIT world, and the entry
module that componentize-py loads, which hands the host's calls to the module's functions.
"""

ENTRY = "poolhost_entry"
"""The entry module's name."""

WORLD = "app"
"""The world's name, in package ``poolhost:python-app``."""


def wit_type(type):
    """The WIT spelling of a type from `poolhost_build.tasks`."""
    match type:
        case ("list", item):
            return f"list<{wit_type(item)}>"
        case ("option", item):
            return f"option<{wit_type(item)}>"
        case ("tuple", *items):
            return f"tuple<{', '.join(map(wit_type, items))}>"
        case "bytes":
            return "list<u8>"
        case "queue":
            return "string"
    return type


def world(app, pool_package):
    """The WIT world of `app`: poolhost's ``task`` world, or ``driver`` for a driver, from
    `pool_package` (``poolhost:pool@0.1.0``), and an export for each task. Every name is written
    `%`-escaped, so a task may be called like a WIT keyword (`list`, `type`, ...)."""
    package, _, version = pool_package.partition("@")
    base = "driver" if app.driver else "task"
    lines = [
        "package poolhost:python-app;",
        "",
        f"/// Built by poolhost_build from {app.path.name}.",
        f"world {WORLD} {{",
        f"    include {package}/{base}{'@' + version if version else ''};",
    ]
    for task in app.tasks:
        params = ", ".join(f"%{name.replace('_', '-')}: {wit_type(t)}" for name, t in task.params)
        result = f" -> {wit_type(task.result)}" if task.result is not None else ""
        lines.append(f"    export %{task.export}: func({params}){result};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def entry(app):
    """The entry module of `app`'s component."""
    signatures = "".join(
        f"    {task.name!r}: {(task.export, tuple(t for _, t in task.params), task.result)!r},\n"
        for task in app.tasks
    )
    lines = [
        f'"""The entry module of the component poolhost_build built from {app.path.name}: it hands',
        "the host's calls to the module's functions. Generated; not to be edited.",
        '"""',
        "",
        "import sys",
        "",
        "# The build imports the module from its folder: leave no __pycache__ there.",
        "sys.dont_write_bytecode = True",
        "",
        "import wit_world",
        *(["from wit_world import exports"] if app.driver else []),
        "from poolhost import component",
        "",
        f"import {app.module} as app",
        "",
        f"component.setup(app, {{\n{signatures}}})",
    ]
    if app.driver:
        lines += ["MAIN = component.main_code(app)"]
    if app.tasks:
        lines += ["", "", "class WitWorld(wit_world.WitWorld):"]
        for task in app.tasks:
            lines += [
                f"    def {task.name}(self, *args):",
                f"        return component.call(app, {task.name!r}, args)",
                "",
            ]
        lines.pop()
    if app.driver:
        lines += [
            "",
            "",
            "class Run(exports.Run):",
            "    def run(self):",
            f"        component.run_main(app, MAIN, call_main={app.driver == 'main'})",
        ]
    return "\n".join(lines) + "\n"

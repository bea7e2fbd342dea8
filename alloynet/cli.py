"""`alloynet ...` commands. Each area registers its own Typer commands and sub-apps here; the library stays
importable without the CLI, and heavy imports (torch, boto3) happen inside the commands.

Commands are registered lazily. `main()` (the ``alloynet`` script and ``python -m alloynet.cli``) looks at
the first argument and registers only the area that provides that command, so ``alloynet infer ...`` never
imports the training, data or registry commands (nor runs the other plugins' ``register``). With no
arguments, an option first (``--help``) or a name nobody declares, it registers everything, so the help
lists every command and click's "No such command" error is unchanged.

Where a command comes from:

* the library's own areas: ``COMMANDS`` below, top-level command name -> module in alloynet/commands whose
  ``register(app)`` adds it;
* plugins: the ``alloynet.commands`` entry-point group (pyproject.toml: ``serving = "serving.cli:register"``,
  ``infra = "infra.cli:register"``, ``flows = "flows.cli:register"``); they import alloynet, alloynet never
  imports them, as the design's import rules require. A plugin declares the top-level names its ``register``
  adds in a module-level tuple of string literals ``COMMANDS`` in the entry point's module (e.g. ``COMMANDS =
  ("package", "infer")`` in serving/cli.py). It is read from the module's source, without running
  the module, so ``alloynet infer`` does not import flows/cli.py; a plugin without such a ``COMMANDS`` (or
  not a .py source) is registered for every command. tests/unit/commands/test_cli.py checks that both tables say what
  the modules register.

``app`` (``from alloynet.cli import app``, e.g. with Typer's CliRunner) is the full application: every
command registered, built on first use. An ``alloynet`` script installed before the script pointed at
``main`` calls ``app()``: it still works, registering everything (``pip install -e .`` again for the lazy path).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

import typer

from alloynet import settings

PLUGIN_GROUP = "alloynet.commands"

# Top-level command -> the module whose register(app) adds it (with the other commands of its area).
# In registration order, which `alloynet --help` follows (commands, then groups).
COMMANDS: dict[str, str] = {
    "physics": "alloynet.commands.physics_cli",
    "simulate": "alloynet.commands.data_cli",
    "ingest": "alloynet.commands.data_cli",
    "data": "alloynet.commands.data_cli",
    "import": "alloynet.commands.import_cli",
    "rig": "alloynet.commands.rig_cli",
    "train": "alloynet.commands.train_cli",
    "evaluate": "alloynet.commands.train_cli",
    "registry": "alloynet.commands.registry_cli",
    "study": "alloynet.commands.study_cli",
    "line": "alloynet.commands.line_cli",
    "label": "alloynet.commands.label_cli",
}


def _root() -> None:
    pass  # a callback keeps the root a command group when one command alone is registered (`alloynet import`)


def new_app() -> typer.Typer:
    """The root application, no command registered yet."""
    # Rich help and error panels on a terminal only: in a pipe, a file or CI, click's plain, unwrapped messages
    # (a panel is wrapped at the console's width and would break a long path in an error in two).
    return typer.Typer(
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode="rich" if sys.stdout.isatty() else None,
        callback=_root,
        help="alloynet: identify aluminium alloys from X-ray transmission captures.\n\n" + settings.HELP,
    )


def _plugins() -> list:
    from importlib.metadata import entry_points

    return sorted(entry_points(group=PLUGIN_GROUP), key=lambda e: e.name)


def plugin_commands(ep) -> tuple[str, ...] | None:
    """The top-level names plugin entry point ``ep`` declares: the literal ``COMMANDS = (...)`` at the top level of
    its module's source, read without running the module (only its parent package is imported, to find the
    file). None if there is none, or it is not a tuple or list of strings."""
    import ast
    import re
    from importlib.util import find_spec

    spec = find_spec(ep.module)
    if spec is None or not (spec.origin or "").endswith(".py"):
        return None
    with open(spec.origin, "rb") as f:
        source = f.read()
    found = re.search(rb"^COMMANDS\s*=", source, re.M)
    if not found:
        return None
    lines = source[found.start() :].splitlines()
    for n in range(1, min(len(lines), 50) + 1):  # the statement: the first run of lines that parses
        try:
            statement = ast.parse(b"\n".join(lines[:n])).body[0]
        except SyntaxError:
            continue
        try:
            names = ast.literal_eval(statement.value)
        except ValueError:
            return None
        ok = isinstance(names, (tuple, list)) and all(isinstance(x, str) for x in names)
        return tuple(names) if ok else None
    return None


def build_app(command: str | None = None) -> typer.Typer:
    """An application with the area that provides ``command`` registered; every command when ``command`` is None
    or nobody declares it."""
    app = new_app()
    if command in COMMANDS:
        importlib.import_module(COMMANDS[command]).register(app)
        return app
    plugins = _plugins()
    if command is not None:
        declared = [(ep, plugin_commands(ep)) for ep in plugins]
        if any(names and command in names for _, names in declared):
            for ep, names in declared:
                if names is None or command in names:
                    ep.load()(app)
            return app
    for module in dict.fromkeys(COMMANDS.values()):  # each module once, in the table's order
        importlib.import_module(module).register(app)
    for ep in plugins:
        ep.load()(app)
    return app


def command_of(args: Sequence[str]) -> str | None:
    """The top-level command ``args`` invokes: its first word, None when it starts with an option or is empty
    (the root has no options but --help)."""
    return args[0] if args and not args[0].startswith("-") else None


def main(args: Sequence[str] | None = None):
    """``alloynet`` as a program: registers only what ``args`` (default ``sys.argv[1:]``) invokes, then runs it."""
    argv = list(sys.argv[1:] if args is None else args)
    return build_app(command_of(argv))(args=argv)


def __getattr__(name: str):
    if name == "app":  # built on first use and kept: `from alloynet.cli import app` gets every command
        globals()["app"] = full = build_app(None)
        return full
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    main()

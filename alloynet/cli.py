"""`alloynet ...` commands. Each area registers its own Typer sub-app here; the library stays importable
without the CLI, and heavy imports (torch, boto3) happen inside the commands."""
from __future__ import annotations

import sys

import typer

from alloynet.commands import data_cli, import_cli, physics_cli, rig_cli

# Rich help and error panels on a terminal only: in a pipe, a file or CI, click's plain, unwrapped messages
# (a panel is wrapped at the console's width and would break a long path in an error in two).
app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  rich_markup_mode="rich" if sys.stdout.isatty() else None,
                  help="alloynet: identify aluminium alloys from X-ray transmission captures.")
app.add_typer(physics_cli.app, name="physics", help="Attenuation, transmission and the ideal-observer report.")
data_cli.register(app)
import_cli.register(app)
rig_cli.register(app)


def _register_commands() -> None:
    """The library's own command groups, then plugins from the ``alloynet.commands`` entry-point group.

    `serving` (package, infer) and `flows` (demo) register themselves as plugins: they import alloynet,
    and alloynet never imports them, as the design's import rules require."""
    from importlib.metadata import entry_points

    from alloynet.commands import registry_cli, study_cli, train_cli

    for m in (train_cli, registry_cli, study_cli):
        m.register(app)
    for ep in sorted(entry_points(group="alloynet.commands"), key=lambda e: e.name):
        ep.load()(app)


_register_commands()

if __name__ == "__main__":
    app()

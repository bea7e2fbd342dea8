"""`alloynet ...` commands. Each area registers its own Typer sub-app here; the library stays importable
without the CLI, and heavy imports (torch, boto3) happen inside the commands."""
from __future__ import annotations

import typer

from alloynet.commands import data_cli, physics_cli

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="alloynet: identify aluminium alloys from X-ray transmission captures.")
app.add_typer(physics_cli.app, name="physics", help="Attenuation, transmission and the ideal-observer report.")
data_cli.register(app)


def _register_optional() -> None:
    """Areas added by later work register here; each module exposes `register(app)`."""
    import importlib

    for mod in ("alloynet.commands.train_cli", "alloynet.commands.serve_cli", "alloynet.commands.registry_cli",
                "alloynet.commands.study_cli", "alloynet.commands.demo_cli"):
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name == mod:
                continue
            raise
        m.register(app)


_register_optional()

if __name__ == "__main__":
    app()

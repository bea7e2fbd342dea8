"""Every command's --help: each option has help text, and options that read a config are all -c/--config."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from alloynet.cli import app

runner = CliRunner()


def _commands(group, path: tuple[str, ...] = ()):
    """Every command under ``group`` (Typer ships its own click: groups are told by their ``commands``)."""
    yield path, group
    if isinstance(getattr(group, "commands", None), dict):
        for name, sub in sorted(group.commands.items()):
            yield from _commands(sub, (*path, name))


COMMANDS = [(" ".join(path), cmd) for path, cmd in _commands(typer.main.get_command(app)) if path]


def test_the_walk_sees_every_area():
    names = {name for name, _ in COMMANDS}
    assert {"simulate", "train", "study", "registry list", "serve start", "demo", "infer"} <= names


@pytest.mark.parametrize("name", [name for name, _ in COMMANDS])
def test_every_option_has_help(name):
    cmd = dict(COMMANDS)[name]
    missing = [
        p.opts[0] for p in cmd.params if p.param_type_name == "option" and not p.hidden and not (p.help or "").strip()
    ]
    assert not missing, f"`alloynet {name}`: options without help: {missing}"
    res = runner.invoke(app, [*name.split(), "--help"])
    assert res.exit_code == 0, res.output
    assert (cmd.help or cmd.short_help or "").strip(), f"`alloynet {name}` has no description"


@pytest.mark.parametrize(
    "name", [name for name, cmd in COMMANDS if any("--config" in getattr(p, "opts", ()) for p in cmd.params)]
)
def test_config_is_always_dash_c(name):
    cmd = dict(COMMANDS)[name]
    opt = next(p for p in cmd.params if "--config" in getattr(p, "opts", ()))
    assert "-c" in opt.opts, f"`alloynet {name}`: --config has no -c"


def test_root_help_names_the_home():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0 and "ALLOYNET_HOME" in res.output

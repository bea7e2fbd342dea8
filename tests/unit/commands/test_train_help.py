"""`alloynet train --help` states the built-in recipe's defaults: they must be the config's own."""

from __future__ import annotations

from typer.testing import CliRunner

from alloynet.cli import app
from alloynet.train.config import TrainConfig


def _option_help(text: str, option: str) -> str:
    return text.split(option, 1)[1].split(" --", 1)[0]


def test_train_help_states_the_configs_defaults():
    res = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "400", "TERM": "dumb"})
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    cfg = TrainConfig()
    for option, value in (
        ("--store", cfg.data.store),
        ("--model", cfg.model.name),
        ("--epochs", str(cfg.epochs)),
        ("--out", cfg.out_dir),
        ("--seed", str(cfg.seed)),
        ("--device", cfg.device),
    ):
        prefix = "built in " if option == "--store" else ""
        assert f"default: the config's, {prefix}{value}" in _option_help(text, option), option

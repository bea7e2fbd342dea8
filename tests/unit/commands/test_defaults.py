"""One home for every default; read commands create nothing and say where they looked; plain output off a terminal."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.table import Table
from typer.testing import CliRunner

from alloynet import settings
from alloynet.cli import app
from alloynet.console import CliConsole, plain_table

runner = CliRunner()


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(settings.REGISTRY_ENV, raising=False)
    monkeypatch.setenv(settings.HOME_ENV, str(tmp_path / "home"))
    return tmp_path / "home"


def test_every_location_comes_from_the_home(home, monkeypatch):
    assert settings.registry() == str(home / "registry")
    assert settings.data_dir() == str(home / "data") and settings.work_dir() == str(home / "runs")
    monkeypatch.setenv(settings.REGISTRY_ENV, "s3://models/registry")
    assert settings.registry() == "s3://models/registry" and settings.data_dir() == str(home / "data")
    monkeypatch.delenv(settings.HOME_ENV)
    assert settings.home() == Path("demo-data")


@pytest.mark.parametrize(
    "command",
    [
        ["registry", "list"],
        ["registry", "champion"],
        ["registry", "history"],
        ["registry", "verify"],
        ["registry", "clean"],
    ],
)
def test_read_commands_on_a_missing_registry_create_nothing_and_say_where(home, command):
    res = runner.invoke(app, command)
    assert res.exit_code == 1, res.output
    assert f"no registry at {(home / 'registry').resolve()}" in res.output
    assert not home.exists()


def test_line_log_on_a_missing_record_creates_nothing_and_says_where(home, monkeypatch):
    monkeypatch.delenv("ALLOYNET_LINE_RECORD", raising=False)
    res = runner.invoke(app, ["line", "log"])
    assert res.exit_code == 1 and f"no line record at {(home / 'data').resolve()}" in res.output
    assert not home.exists()
    (home / "data").mkdir(parents=True)
    res = runner.invoke(app, ["line", "log"])
    assert res.exit_code == 0 and f"0 record(s) in {home / 'data'}" in res.output


@pytest.mark.parametrize(
    "command",
    [
        ["data", "quarantine", "missing"],
        ["data", "history", "missing", "c1"],
        ["data", "manifest", "missing"],
        ["data", "relabel", "missing", "fix.csv"],
    ],
)
def test_data_commands_on_a_missing_store_create_nothing_and_say_where(home, command):
    res = runner.invoke(app, command)
    assert res.exit_code == 1, res.output
    assert f"at {(home.parent / 'missing').resolve()} (no such directory)" in res.output
    assert not (home.parent / "missing").exists()


def test_summary_of_a_missing_manifest_is_one_line(home):
    res = runner.invoke(app, ["data", "summary", "missing/manifest.csv"])
    assert res.exit_code == 1 and res.output.startswith("error: manifest missing/manifest.csv not found")
    assert len(res.output.splitlines()) == 1


def test_an_empty_registry_is_not_an_error(home):
    (home / "registry").mkdir(parents=True)
    res = runner.invoke(app, ["registry", "list"])
    assert res.exit_code == 0 and "no versions in" in res.output and str(home / "registry") in res.output
    res = runner.invoke(app, ["registry", "history"])
    assert res.exit_code == 0 and "no events in" in res.output


def test_publish_creates_the_default_registry_and_list_reads_it(home, tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights.bin").write_bytes(b"x")
    assert runner.invoke(app, ["registry", "publish", str(tmp_path / "model")]).exit_code == 0
    res = runner.invoke(app, ["registry", "list"])
    assert res.exit_code == 0 and "no versions" not in res.output
    assert (home / "registry").is_dir()


def test_tables_are_aligned_text_off_a_terminal():
    t = Table(title="3 captures")
    t.add_column("alloy")
    t.add_column("train", justify="right")
    t.add_row("[bold]Al1050[/]", "12")
    t.add_row("Al7075", "3")
    assert plain_table(t).splitlines() == ["3 captures", "alloy   train", "Al1050     12", "Al7075      3"]
    buf = io.StringIO()
    console = CliConsole(file=buf)
    assert not console.is_terminal and not console.show_progress
    console.print(t)
    assert buf.getvalue() == plain_table(t) + "\n"


def test_simulate_piped_has_no_box_drawing_or_progress_bar(tmp_path):
    res = runner.invoke(app, ["simulate", "--out", str(tmp_path / "ds"), "--n-max", "4", "--size", "32"])
    assert res.exit_code == 0, res.output
    assert not set(res.output) & set("━─│┃┏┓┗┛╇╈┡┩"), res.output
    assert "simulate " not in res.output  # the progress bar's label: no bar when piped
    header = next(line for line in res.output.splitlines() if line.startswith("alloy"))
    assert header.split()[0] == "alloy" and len(header.split()) > 1

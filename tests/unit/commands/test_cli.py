"""The CLI as a user runs it (Typer's runner, in-process)."""

import json

from typer.testing import CliRunner

from alloynet.cli import app
from alloynet.data.manifest import read_manifest

runner = CliRunner()


def test_simulate_writes_store_manifest_and_summary(tmp_path):
    out = tmp_path / "ds"
    res = runner.invoke(app, ["simulate", "--out", str(out), "--n-max", "5", "--size", "32", "--seed", "2"])
    assert res.exit_code == 0, res.output
    df = read_manifest(out / "manifest.csv")
    assert "Al1050" in res.output and f"{len(df)} captures" in res.output
    assert (out / "captures" / f"{df.capture_id[0]}.json").exists() and any((out / "calibration").iterdir())


def test_simulate_rejects_bad_config(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("n_max: 3\nthicknesses_mm: [-1]\n")
    res = runner.invoke(app, ["simulate", "--out", str(tmp_path / "x"), "--config", str(cfg)])
    assert res.exit_code != 0 and "thicknesses_mm" in str(res.exception)


def test_ingest_and_quarantine_commands(tmp_path):
    src = tmp_path / "rig"
    assert (
        runner.invoke(app, ["simulate", "--out", str(src), "--n-max", "3", "--size", "64", "--no-manifest"]).exit_code
        == 0
    )
    victim = sorted((src / "captures").glob("*.json"))[0]
    victim.write_text("{broken")
    res = runner.invoke(app, ["ingest", str(src), str(tmp_path / "data")])
    assert res.exit_code == 0, res.output
    assert "1 quarantined" in res.output and "not valid JSON" in res.output
    res = runner.invoke(app, ["data", "quarantine", str(tmp_path / "data")])
    assert victim.stem in res.output and "1 quarantined" in res.output
    assert len(read_manifest(tmp_path / "data" / "manifest.csv")) > 0


def test_users_add_alloys_by_config(tmp_path):
    from alloynet.physics.alloys import ALLOYS

    cfg = tmp_path / "alloys.yaml"
    cfg.write_text(
        "Al3003:\n  density_g_cm3: 2.73\n  nominal_wt_pct: {Mn: 1.2, Cu: 0.12}\n"
        "  ranges_wt_pct: {Mn: [1.0, 1.5], Cu: [0.05, 0.2], Fe: [0, 0.7]}\n"
    )
    res = runner.invoke(app, ["physics", "transmission", "Al3003", "2.0", "--alloys", str(cfg)])
    assert res.exit_code == 0 and float(res.output) > 0.6
    res = runner.invoke(
        app,
        [
            "physics",
            "separability",
            "--alloys",
            str(cfg),
            "--alloy",
            "Al3003",
            "--alloy",
            "Al1050",
            "--size",
            "32",
            "--plates",
            "20",
        ],
    )
    assert res.exit_code == 0 and "Al3003 vs Al1050" in res.output
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "n_max: 2\nclass_order: [Al3003, Al1050]\ncustom_alloys:\n  Al3003:\n"
        "    density_g_cm3: 2.73\n    nominal_wt_pct: {Mn: 1.2}\n    ranges_wt_pct: {Mn: [1.0, 1.5]}\n"
    )
    res = runner.invoke(app, ["simulate", "--out", str(tmp_path / "ds"), "--config", str(spec), "--size", "32"])
    assert res.exit_code == 0, res.output
    assert "Al3003" in (tmp_path / "ds" / "manifest.csv").read_text()
    assert "Al3003" not in ALLOYS  # the user's alloy lived in its own table: the standard one is untouched
    bad = tmp_path / "bad.yaml"
    bad.write_text("AlX:\n  nominal_wt_pct: {Mn: 1}\n")
    res = runner.invoke(app, ["physics", "transmission", "AlX", "1", "--alloys", str(bad)])
    assert res.exit_code != 0 and "alloy AlX: missing field 'density_g_cm3'" in str(res.exception)


def test_output_is_plain_and_unwrapped_when_not_a_terminal(tmp_path):
    """A pipe gets whole lines whatever the terminal width: an error naming a long path stays on one line."""
    import subprocess
    import sys
    from pathlib import Path

    deep = tmp_path / ("a-rather-long-directory-name-" * 4) / "registry"
    exe = str(Path(sys.executable).parent / "alloynet")
    env = {**__import__("os").environ, "COLUMNS": "40", "TERM": "xterm-256color"}
    res = subprocess.run([exe, "registry", "rollback", "-r", str(deep)], capture_output=True, text=True, env=env)
    assert res.returncode != 0
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if str(deep) in ln]
    assert lines, res.stdout + res.stderr  # the path appears whole on one line
    assert "\x1b[" not in res.stdout + res.stderr  # and no colour codes in a pipe


def test_log_lines_are_not_padded_when_not_a_terminal():
    """Rich pads log lines to the console width, which off a terminal is thousands of columns: ours do not."""
    import io

    from alloynet.console import CliConsole

    buf = io.StringIO()
    CliConsole(file=buf).log("simulating the shared test set", 3)
    line = buf.getvalue()
    assert line.endswith("simulating the shared test set 3\n") and len(line) < 60, repr(line[:200])


def test_each_command_comes_from_the_module_the_cli_names():
    """The lazy registry's tables say what each module's register() adds: alloynet.cli.COMMANDS for the
    library's areas, each plugin's COMMANDS for the plugins; together, every command of the full app."""
    import importlib

    import typer

    from alloynet import cli

    def names(register) -> set[str]:
        app = cli.new_app()
        register(app)
        return set(typer.main.get_command(app).commands)

    for module in set(cli.COMMANDS.values()):
        assert names(importlib.import_module(module).register) == {c for c, m in cli.COMMANDS.items() if m == module}
    plugins = cli._plugins()
    assert {ep.name for ep in plugins} >= {"serving", "infra", "flows"}
    declared = {ep.name: cli.plugin_commands(ep) for ep in plugins}
    assert declared["serving"] == ("package", "infer") and declared["infra"] == ("serve",)
    assert declared["flows"] == ("demo", "study-pool")
    for ep in plugins:
        assert names(ep.load()) == set(declared[ep.name])
    assert set(typer.main.get_command(cli.app).commands) == set(cli.COMMANDS).union(*declared.values())
    assert set(typer.main.get_command(cli.build_app("infer")).commands) == {"package", "infer"}
    assert set(typer.main.get_command(cli.build_app("serve")).commands) == {"serve"}


CLI_AS_MAIN = """import json, runpy, sys
try:
    runpy.run_module("alloynet.cli", run_name="__main__")  # what `python -m alloynet.cli ARGS` runs
except SystemExit as exc:
    code = exc.code
print("REPORT", json.dumps({"exit": code, "modules": sorted(sys.modules)}))
"""


def run_cli_as_main(*args: str) -> tuple[int, str, list[str]]:
    """``python -m alloynet.cli ARGS`` in a fresh interpreter from the checkout: exit code, output, sys.modules."""
    import subprocess
    import sys

    from tests.helpers import ROOT

    res = subprocess.run(
        [sys.executable, "-c", CLI_AS_MAIN, *args], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    *out, report = res.stdout.rstrip("\n").split("\n")
    assert report.startswith("REPORT "), res.stdout + res.stderr
    rep = json.loads(report[len("REPORT ") :])
    return rep["exit"], "\n".join(out) + res.stderr, rep["modules"]


def test_a_command_loads_only_its_own_group():
    """`alloynet infer` registers the serving plugin alone: no other command group's module is imported (nor
    what they import), so the inspection-line client starts fast. Behaviour only: timings are bench's."""
    heavy = ("prefect", "torch", "pandas", "boto3", "yaml", "scipy")
    code, out, mods = run_cli_as_main("infer", "--help")
    assert code in (0, None) and "Send captures to a model server" in out, out
    assert "serving.cli" in mods
    unrelated = [m for m in mods if m.startswith(("alloynet.commands", "flows.")) or m.split(".")[0] in heavy]
    assert not unrelated, unrelated
    code, out, mods = run_cli_as_main("simulate", "--help")
    assert code in (0, None) and "--n-max" in out, out
    assert [m for m in mods if m.startswith("alloynet.commands")] == ["alloynet.commands", "alloynet.commands.data_cli"]
    assert not [m for m in mods if m.split(".")[0] in ("serving", "flows", "prefect", "torch")]


def test_help_and_unknown_commands_see_every_command():
    code, out, _ = run_cli_as_main("--help")
    assert code in (0, None)
    for name in (
        "simulate",
        "ingest",
        "import",
        "train",
        "evaluate",
        "study",
        "demo",
        "study-pool",
        "infer",
        "physics",
        "data",
        "rig",
        "registry",
        "package",
        "serve",
    ):
        assert f"\n  {name} " in out, (name, out)
    code, out, _ = run_cli_as_main("nosuch")
    assert code == 2 and "No such command 'nosuch'" in out, out


def test_plugin_commands_are_read_from_the_source_without_running_it(tmp_path, monkeypatch):
    """A plugin declares its commands as a literal; anything else counts as undeclared (registered always)."""
    from types import SimpleNamespace

    from alloynet import cli

    sources = {
        "one": 'import sys\nCOMMANDS = ("a", "b-c")  # note\nsys.exit("never run")\n',
        "lines": 'COMMANDS = (\n    "a",\n    "b",\n)\nraise SystemExit("never run")\n',
        "computed": 'COMMANDS = tuple("ab")\n',
        "none": 'NAMES = ("a",)\n',
        "ints": "COMMANDS = (1, 2)\n",
    }
    for name, text in sources.items():
        (tmp_path / f"plugin_{name}.py").write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    got = {name: cli.plugin_commands(SimpleNamespace(module=f"plugin_{name}")) for name in sources}
    assert got == {"one": ("a", "b-c"), "lines": ("a", "b"), "computed": None, "none": None, "ints": None}

import json

from typer.testing import CliRunner

from alloynet.cli import app
from alloynet.physics.plan import Acquisition, exposure_doses
from alloynet.physics.simulator import RigConfig

SMALL = ["--draws", "40", "--pool", "2", "--size", "16", "--alloy", "Al5083", "--alloy", "Al6082"]


def test_exposure_doses_split_the_time_and_follow_the_tube_output():
    rig = RigConfig(kvp=[50.0], dose=1e4)
    assert exposure_doses(rig, Acquisition((50.0,), 2.0, 50.0, "Al"), 1.0) == [2e4]
    d40, d60 = exposure_doses(rig, Acquisition((40.0, 60.0), 2.0, 50.0, "Al"), 1.0)
    assert d40 < 1e4 < d60  # one second each; a W tube gives more photons at 60 kV than at 50, fewer at 40


def test_plan_ranks_candidates_and_writes_json_and_a_plot(tmp_path):
    out, png = tmp_path / "plan.json", tmp_path / "plan.png"
    res = CliRunner().invoke(
        app,
        [
            "physics",
            "plan",
            *SMALL,
            "--kvp-set",
            "50",
            "--kvp-set",
            "40,60",
            "--wedge-mm",
            "50",
            "--time-fraction",
            "1",
            "--time-fraction",
            "0.1",
            "--json",
            str(out),
            "--plot",
            str(png),
        ],
    )
    assert res.exit_code == 0, res.output
    assert res.output.startswith("prior: any thickness 1-5 mm; 16x16 px")
    rows = json.loads(out.read_text())["candidates"]
    assert len(rows) == 4 and png.stat().st_size > 0
    lower = [r["five_class"]["lower"] for r in rows]
    assert lower == sorted(lower, reverse=True)
    assert all(r["five_class"]["lower_se"] > 0 and r["hard_pairs"] for r in rows)
    # a tenth of the time cannot beat the full time at the same kVp by more than the errors allow
    full = next(r for r in rows if r["describe"].startswith("50 kV, 1 s"))
    tenth = next(r for r in rows if r["describe"].startswith("50 kV, 0.1 s"))
    assert tenth["five_class"]["lower"] <= full["five_class"]["lower"] + 3 * full["five_class"]["lower_se"]


def test_plan_rejects_a_bad_kvp_set():
    res = CliRunner().invoke(app, ["physics", "plan", *SMALL, "--kvp-set", "40;60"])
    assert res.exit_code != 0 and "separated by commas" in res.output

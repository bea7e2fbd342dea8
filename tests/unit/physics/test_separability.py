"""The ideal observer: honest about 5083 vs 6082, consistent with photon statistics."""

import pytest

from alloynet.physics import RigConfig
from alloynet.physics.separability import separability


@pytest.fixture(scope="module")
def report():
    return separability(RigConfig(), plates=80, mc_samples=800, seed=0)


def _pair(report, a, b):
    return next(p for p in report.pairs if {p.a, p.b} == {a, b})


def test_5083_vs_6082_nearly_inseparable_at_unknown_thickness(report):
    p = _pair(report, "Al5083", "Al6082")
    assert p.d_unknown < 1.0 and p.bayes_error_unknown > 0.3
    # ...while noise alone would separate exact nominal plates easily: the limit is the plates, not photons
    assert p.d_known_nominal > 10


def test_heavy_alloys_are_separable_and_1050_partly(report):
    assert _pair(report, "Al2017", "Al7075").d_unknown > 3
    assert _pair(report, "Al1050", "Al7075").bayes_error_unknown < 1e-3
    p = _pair(report, "Al1050", "Al5083")
    assert 0.05 < p.bayes_error_unknown < 0.4


def test_ceiling_is_between_chance_and_perfect(report):
    assert 0.7 < report.ceiling_accuracy < 0.95
    assert report.ceiling_recall["Al7075"] > 0.99 and report.ceiling_recall["Al5083"] < 0.85
    assert "Physics bracket" in report.markdown()
    # the upper edge reads the same draws as the lower one: below it only by chance
    assert report.ceiling_upper >= report.ceiling_accuracy - 3 * max(report.bracket_width_se, 1 / 800)
    assert 0 < report.ceiling_se < 0.05 and 0 < report.ceiling_upper_se < 0.05


def test_noise_limited_d_prime_scales_with_sqrt_dose():
    lo = separability(RigConfig(dose=1e3), alloys=("Al1050", "Al2017"), thicknesses_mm=(2.0,), plates=20, mc_samples=50)
    hi = separability(RigConfig(dose=1e4), alloys=("Al1050", "Al2017"), thicknesses_mm=(2.0,), plates=20, mc_samples=50)
    ratio = hi.pairs[0].d_known_nominal / lo.pairs[0].d_known_nominal
    assert ratio == pytest.approx(10**0.5, rel=0.1)


def test_the_cli_uses_the_demos_prior_by_default_and_says_so(tmp_path):
    import json

    from typer.testing import CliRunner

    from alloynet.cli import app

    runner = CliRunner()
    small = ["--plates", "12", "--mc-samples", "40", "--alloy", "Al1050", "--alloy", "Al7075"]
    out = tmp_path / "sep.json"
    res = runner.invoke(app, ["physics", "separability", *small, "--size", "32", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("prior: any thickness 1-5 mm; 32x32 px")
    assert json.loads(out.read_text())["prior"] == "any thickness 1-5 mm"
    res = runner.invoke(app, ["physics", "separability", *small, "--size", "32", "--thickness-range", "2", "3"])
    assert res.exit_code == 0 and res.output.startswith("prior: any thickness 2-3 mm")
    res = runner.invoke(
        app, ["physics", "separability", *small, "--size", "32", "--thickness", "1", "--thickness", "5"]
    )
    assert res.exit_code == 0 and "prior: thickness one of 1, 5 mm" in res.output, res.output
    res = runner.invoke(app, ["physics", "separability", *small, "--thickness", "1", "--thickness-range", "1", "5"])
    assert res.exit_code != 0 and "not both" in res.output
    res = runner.invoke(app, ["physics", "separability", *small, "--thickness-range", "5", "1"])
    assert res.exit_code != 0 and "thicknesses must be > 0 mm" in res.output
    res = runner.invoke(app, ["physics", "separability", "--help"])  # without --size: the demo's 64 px
    assert "[default: 64]" in res.output

import numpy as np
import pytest

from alloynet.physics.bracket import MixtureObserver, _laplace, bracket, full_row_profile, mixed_bracket, phrase_gap
from alloynet.physics.observer import ThicknessPrior
from alloynet.physics.profile import ProfileModel
from alloynet.physics.simulator import RigConfig

RIG = RigConfig(height=16, width=16)
PRIOR = ThicknessPrior(range_mm=(1.0, 3.0))


def test_laplace_is_exact_for_a_parabola_whatever_the_grid_step():
    # q(t) = (t - 2.013)^2 / 0.01^2: integral of exp(-q/2) over t is sqrt(2 pi) 0.01; a flat prior on [1, 3]
    # contributes 1/2
    prior = ThicknessPrior(range_mm=(1.0, 3.0), tolerance=1e-9)
    for step in (0.005, 0.04, 0.1):
        grid = np.arange(0.9, 3.1, step)
        q = ((grid - 2.013) / 0.01) ** 2
        ll, t = _laplace(q[None], grid, prior)
        assert t[0] == pytest.approx(2.013, abs=1e-9)
        assert ll[0] == pytest.approx(np.log(np.sqrt(2 * np.pi) * 0.01 / 2.0), abs=1e-6)


def test_full_row_profile_leaves_dead_and_saturated_pixels_out():
    images = np.full((1, 1, 4, 2), 501.0)
    images[0, 0, 0, 0] = 0  # dead
    images[0, 0, 1, 1] = 65535  # saturated
    cal = np.array([[[1.0, 1001.0]]])
    x = full_row_profile(images, cal, bins=2)
    assert x.shape == (1, 2)
    np.testing.assert_allclose(x, -np.log(0.5))


def test_full_row_profile_rejects_a_bad_shape():
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        full_row_profile(np.zeros((4, 4)), np.zeros((1, 1, 2)))


def test_mixture_observer_separates_a_heavy_from_a_light_alloy():
    # 32 px: 16 px rows are too few for a clean separation at 1e4 photons (about 0.9)
    model = ProfileModel(RigConfig(height=32, width=32), 8)
    obs = MixtureObserver(model, ["Al1050", "Al7075"], PRIOR, pool=8, seed=0)
    rng = np.random.default_rng(1)
    for k in range(2):
        x, _ = obs.draw(k, 40, rng)
        assert (obs.log_likelihoods(x).argmax(1) == k).mean() >= 0.85


def test_bracket_edges_are_ordered_within_their_errors_and_carry_errors():
    model = ProfileModel(RIG, 8)
    b = bracket(model, ["Al1050", "Al5083", "Al6082"], PRIOR, draws=90, pool=8, seed=0)
    assert 0 < b.lower.se < 0.1 and 0 < b.upper.se < 0.1 and b.width_se >= 0
    # both edges read the same draws: the upper edge may fall below the lower only by chance
    assert b.upper.accuracy >= b.lower.accuracy - 3 * max(b.width_se, 1 / 90)
    assert 1 / 3 - 0.1 < b.lower.accuracy <= 1
    assert [p["pair"] for p in b.hard_pairs] and b.hard_pairs[0]["confused"] >= b.hard_pairs[-1]["confused"]
    assert "lower edge" in b.markdown() and "upper edge" in b.markdown()


def test_the_upper_edge_with_the_composition_known_is_not_below_the_mixture():
    # pool=1: the oracle knows each plate's own composition; the lower observer knows one random composition
    model = ProfileModel(RIG, 8)
    b = bracket(model, ["Al5083", "Al6082"], PRIOR, draws=120, pool=1, seed=3)
    assert b.upper.accuracy >= b.lower.accuracy - 2 * b.width_se


def test_mixed_bracket_weighs_rigs_and_adds_errors_in_quadrature():
    rigs = [(RIG, 3.0), (RigConfig(height=16, width=16, wedge_mm=70.0), 1.0)]
    m = mixed_bracket(rigs, PRIOR, ["Al1050", "Al2017"], bins=8, draws=20, pool=2, seed=0)
    b0, b1 = m["brackets"]
    assert m["lower"] == pytest.approx(0.75 * b0.lower.accuracy + 0.25 * b1.lower.accuracy)
    assert m["lower_se"] == pytest.approx(np.hypot(0.75 * b0.lower.se, 0.25 * b1.lower.se))


@pytest.mark.parametrize(
    "acc,words",
    [
        (0.50, "0.100 below its lower edge"),
        (0.5999, "at its lower edge"),
        (0.599, "0.001 below its lower edge"),
        (0.65, "within the bracket"),
        (0.72, "0.020 above its upper edge (beyond its error)"),
        (0.705, "0.005 above its upper edge (within its error)"),
    ],
)
def test_phrase_gap(acc, words):
    assert phrase_gap(acc, 0.6, 0.7, 0.01) == words


def test_mixture_observer_needs_a_composition():
    with pytest.raises(ValueError, match="pool"):
        MixtureObserver(ProfileModel(RIG, 8), ["Al1050"], PRIOR, pool=0)

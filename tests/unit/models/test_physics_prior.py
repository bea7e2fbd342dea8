"""The physics fit inside the model (alloynet.models.physics_prior): the same likelihood as the numpy observer,
answers at the physics fit's accuracy before any training, trained and reloaded from a checkpoint, exported."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alloynet.data.transforms import Preprocess
from alloynet.export import ExportMeta, export_model, onnx_session
from alloynet.models import create_model
from alloynet.models.physics_prior import TAIL_GRID, PhysicsLikelihood, physics_spec, table_wedges
from alloynet.physics import ALLOY_NAMES
from alloynet.physics.alloys import sample_plate
from alloynet.physics.observer import PhysicsObserver, TailedPrior, ThicknessPrior
from alloynet.physics.profile import profile_model_for
from alloynet.physics.simulator import RigConfig, RigSimulator

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 32
GRID = ThicknessPrior(values_mm=(1.0, 2.0, 5.0))
STATS = {"thickness_mm": (3.0, 1.0), "a0": (0.3, 0.1), "mu_eff": (0.8, 0.2)}


def _rig(wedge: float = 50.0) -> RigConfig:
    return RigConfig(height=SIZE, width=SIZE, wedge_mm=wedge)


def test_in_graph_likelihood_is_the_observers():
    """Profiles drawn from the forward model: the module's log-likelihoods (float32, in the graph) equal the
    numpy observer's (float64) up to a constant per capture, and pick the same alloy."""
    prior = ThicknessPrior(range_mm=(1.0, 5.0))
    module = PhysicsLikelihood(5, [50.0, 70.0], 1, bins=16)
    module.fit({50.0: _rig(50.0), 70.0: _rig(70.0)}, prior, ALLOY_NAMES)
    obs = PhysicsObserver(profile_model_for(_rig(70.0), 16), ALLOY_NAMES, prior, plates=100, seed=0)
    rng = np.random.default_rng(3)
    x = np.concatenate([obs.draw(k, 30, rng)[0] for k in range(5)])
    a = torch.tensor(np.repeat(x, 2, axis=1), dtype=torch.float32)[:, None, None, :].expand(-1, 1, 8, -1)
    with torch.no_grad():
        ll = module.log_likelihoods(a, torch.full((len(x), 1), 71.0)).numpy()  # 71 mm: the 70 mm tables
    ref, _ = obs.log_likelihoods(x)
    centre = lambda v: v - v.max(1, keepdims=True)  # noqa: E731
    assert np.abs(centre(ll) - centre(ref)).max() < 0.02
    assert (ll.argmax(1) == ref.argmax(1)).all()
    with torch.no_grad():  # the 50 mm tables do not describe these captures: a worse fit everywhere
        other = module.log_likelihoods(a, torch.full((len(x), 1), 50.0)).numpy()
    assert (other.max(1) < ll.max(1) - 10).all()


def test_a_wedge_between_the_training_ones_gets_its_own_tables():
    assert table_wedges([50.0, 70.0]) == [50.0, 55.0, 60.0, 65.0, 70.0]
    assert table_wedges([70.0]) == [70.0] and table_wedges([48.0, 70.0]) == [48.0, 55.0, 60.0, 65.0, 70.0]
    prior = ThicknessPrior(range_mm=(1.0, 5.0))
    nearest = PhysicsLikelihood(5, [50.0, 70.0], 1, bins=16)
    nearest.fit({50.0: _rig(50.0), 70.0: _rig(70.0)}, prior, ALLOY_NAMES)
    tables = PhysicsLikelihood(5, table_wedges([50.0, 70.0]), 1, bins=16)
    tables.fit({w: _rig(w) for w in table_wedges([50.0, 70.0])}, prior, ALLOY_NAMES)
    obs = PhysicsObserver(profile_model_for(_rig(60.0), 16), ALLOY_NAMES, prior, plates=100, seed=0)
    rng = np.random.default_rng(4)
    x = np.concatenate([obs.draw(k, 30, rng)[0] for k in range(5)])
    y = np.repeat(np.arange(5), 30)
    a = torch.tensor(np.repeat(x, 2, axis=1), dtype=torch.float32)[:, None, None, :].expand(-1, 1, 8, -1)
    w = torch.full((len(x), 1), 60.0)
    with torch.no_grad():
        own, near = tables.log_likelihoods(a, w).numpy(), nearest.log_likelihoods(a, w).numpy()
    ref, _ = obs.log_likelihoods(x)
    assert (own.argmax(1) == ref.argmax(1)).mean() > 0.95  # the 60 mm forward model's answers
    recall = lambda ll: np.mean([(ll.argmax(1)[y == k] == k).mean() for k in range(5)])  # noqa: E731
    assert recall(own) > recall(near) + 0.15 and own.max(1).mean() > near.max(1).mean() + 10


def _captures(n_per: int, seed: int, thicknesses_mm=GRID.values_mm):
    sim, rng = RigSimulator(_rig()), np.random.default_rng(seed)
    images, labels = [], []
    for k, alloy in enumerate(ALLOY_NAMES):
        for i in range(n_per):
            plate = sample_plate(alloy, float(rng.choice(thicknesses_mm)), rng, f"{alloy}-{i}")
            images.append(sim.capture(plate, rng).image), labels.append(k)
    cal = torch.tensor([[[sim.rig.dark_offset_adu, sim.rig.flat_target_adu]]]).expand(len(images), 1, 2).contiguous()
    return torch.tensor(np.stack(images).astype(np.float32)), cal, torch.full((len(images), 1), 50.0), np.array(labels)


def _untrained_model(prior: ThicknessPrior = GRID, tail: bool = True) -> torch.nn.Module:
    torch.manual_seed(0)
    spec = physics_spec([50.0], 1, SIZE, bins=16, tail=tail)
    m = create_model(
        "profile_mlp",
        5,
        1,
        Preprocess([1000.0], [50000.0]),
        "relu",
        STATS,
        0.0,
        rig=_rig(),
        physics=spec,
        bins=16,
        hidden=[32],
    )
    m.physics.fit({50.0: _rig()}, prior, ALLOY_NAMES)
    with torch.no_grad():  # a head that says nothing: the answer is the physics fit's
        m.head.classifier.weight.zero_(), m.head.classifier.bias.zero_()
    return m.eval()


def test_before_training_the_model_answers_as_the_physics_fit():
    """Simulated captures of 1, 2 or 5 mm plates through the whole model (calibration, open beam, profile):
    with a silent head the heavy alloys are perfect and the five classes are far above chance, as the physics
    fit is; without the physics term the same model is at chance."""
    x, cal, w, y = _captures(12, seed=5)
    model = _untrained_model()
    with torch.no_grad():
        out = model(x, cal, w)
    pred = out["logits"].argmax(1).numpy()
    recall = [float((pred[y == k] == k).mean()) for k in range(5)]
    assert recall[1] == 1.0 and recall[4] == 1.0
    assert np.mean(recall) > 0.6
    model.physics.fitted.zero_()
    with torch.no_grad():
        assert float(model(x, cal, w)["logits"].abs().max()) == 0.0


def test_exported_graph_computes_the_physics_term(tmp_path):
    x, cal, w, _ = _captures(2, seed=8)
    model = _untrained_model()
    inputs = {"image": x.numpy(), "calibration": cal.numpy(), "wedge_mm": w.numpy()}
    meta = ExportMeta(class_names=list(ALLOY_NAMES), channels=1, height=SIZE, width=SIZE, arch="profile_mlp")
    bundle = export_model(model, meta, tmp_path, inputs, log=lambda *_: None)
    assert bundle.meta.parity["ok"]
    probs, flags = onnx_session(bundle.path("onnx")).run(["probabilities", "flags"], inputs)
    with torch.no_grad():
        out = model(x, cal, w)
    assert np.abs(probs - out["probabilities"].numpy()).max() < 1e-4 and probs.max(1).min() > 0.3  # not flat
    assert flags.shape == (len(x), 5) and (flags == out["flags"].numpy()).all()


def test_physics_term_stays_float32_under_autocast():
    """Mixed precision (bf16 autocast, as training on a GPU runs) must not reach the chi2: 3 digits of bf16
    against a whitened profile of ~1e3 would make the term noise."""
    x, cal, w, _ = _captures(2, seed=9)
    model = _untrained_model()
    with torch.no_grad():
        a = model.attenuation(x, cal)[0]
        ref = model.physics(a, w)[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model.physics(a, w)[0]
    assert mixed.dtype == torch.float32 and torch.allclose(mixed, ref, atol=1e-5)


# -- beyond the training range: the tail (alloynet.physics.observer.TailedPrior) and the out-of-range flag --

RANGE = ThicknessPrior(range_mm=(1.0, 5.0))


def test_a_plate_beyond_the_training_range_is_flagged():
    """Fitted on 1-5 mm: 6.5 mm plates are flagged out of range by the physics fit's posterior (the
    regression head of an unfitted Answer flags nothing), 2-4 mm plates are not; the flags keep their shape.
    (At 32 px and 16 bins 16 of these 20 are flagged; the 64 px benchmark flags 92 % of 5.5-7 mm plates.)"""
    model = _untrained_model(RANGE)
    assert model.physics.train_bounds.tolist() == pytest.approx(RANGE.bounds())
    x, cal, w, _ = _captures(4, seed=11, thicknesses_mm=(6.5,))
    xin, calin, win, _ = _captures(4, seed=12, thicknesses_mm=(2.0, 3.0, 4.0))
    with torch.no_grad():
        out, inside = model(x, cal, w), model(xin, calin, win)
    assert out["flags"].shape == (len(x), 5)
    assert out["flags"][:, 2].mean() >= 0.75
    assert inside["flags"][:, 2].sum() == 0
    model.physics.fitted.zero_()  # an unfitted term says nothing about the thickness
    with torch.no_grad():
        assert model(x, cal, w)["flags"][:, 2].sum() == 0


def test_the_tail_leaves_in_range_likelihoods_as_the_observers():
    """With the tail the module's log-likelihoods of in-range plates still equal the tail-free numpy observer's
    (up to a constant per capture) under every alloy whose best fit lies inside the range, pick the same alloy,
    and its grid holds the training range's grid point for point. An alloy that fits only at a thickness beyond
    the range is no longer all but excluded: it costs the tail's prior ratio (and its misfit) instead."""
    module = PhysicsLikelihood(5, [70.0], 1, bins=16, tail=physics_spec([70.0], 1, SIZE)["tail"])
    module.fit({70.0: _rig(70.0)}, RANGE, ALLOY_NAMES)
    obs = PhysicsObserver(profile_model_for(_rig(70.0), 16), ALLOY_NAMES, RANGE, plates=100, seed=0)
    inner = obs.likelihoods[0].grid
    assert np.allclose(module.grid_mm.numpy()[TAIL_GRID[0] : TAIL_GRID[0] + len(inner)], inner, rtol=1e-6)
    assert module.grid_mm.min() == pytest.approx(0.5) and module.grid_mm.max() == pytest.approx(7.5)
    rng = np.random.default_rng(4)
    x = np.concatenate([obs.draw(k, 30, rng)[0] for k in range(5)])
    a = torch.tensor(np.repeat(x, 2, axis=1), dtype=torch.float32)[:, None, None, :].expand(-1, 1, 8, -1)
    with torch.no_grad():
        ll = module.log_likelihoods(a, torch.full((len(x), 1), 70.0)).numpy()
    ref, t_best = obs.log_likelihoods(x)
    centre = lambda v: v - v.max(1, keepdims=True)  # noqa: E731
    lo, hi = RANGE.bounds()
    inside = (t_best > lo + 0.05) & (t_best < hi - 0.05)
    assert inside.mean() > 0.8
    assert np.abs(centre(ll) - centre(ref))[inside].max() < 0.02
    assert (ll.argmax(1) == ref.argmax(1)).all()
    assert (centre(ll) >= centre(ref) - 0.02).all()  # the tail only ever adds support


def test_the_tails_grid_is_fine_enough():
    """Beyond the range the grid is a little coarser than inside it (0.017 vs 0.011 mm here): 6.5 mm plates'
    log-likelihoods on it equal those on a grid four times finer under every alloy that fits them inside the
    extension (the in-range grid is off by up to 0.016 on the same test), and the tail holds its mass (the
    prior's cells sum to one). An alloy whose fit runs off the extension's end is truncated there, as any
    alloy past the grid's end was before (here at least 1 below the best alloy's)."""
    model = profile_model_for(_rig(70.0), 16)
    coarse = TailedPrior(RANGE)
    fine = TailedPrior(RANGE, tail_grid=tuple(4 * g for g in coarse.tail_grid))
    lk = PhysicsObserver(model, ALLOY_NAMES, coarse, plates=60, seed=0).likelihoods
    lk_fine = PhysicsObserver(model, ALLOY_NAMES, fine, plates=60, seed=0).likelihoods
    draws = PhysicsObserver(model, ALLOY_NAMES, ThicknessPrior(range_mm=(6.4, 6.6)), plates=60, seed=1)
    rng = np.random.default_rng(5)
    x = np.concatenate([draws.draw(k, 10, rng)[0] for k in range(5)])
    fits = [m.loglik(x) for m in lk]
    ll, t_best = np.stack([f[0] for f in fits], 1), np.stack([f[1] for f in fits], 1)
    ll_fine = np.stack([m.loglik(x)[0] for m in lk_fine], 1)
    inside = t_best < coarse.extension()[1] - 0.1
    assert np.isfinite(ll).all() and inside.mean() > 0.5
    assert np.abs(ll - ll_fine)[inside].max() < 0.05
    assert (ll - ll.max(1, keepdims=True))[~inside].max() < -1.0
    h = np.gradient(lk[0].grid)
    mass = np.exp(coarse.log_density(lk[0].grid, h / 2)) * h
    assert mass.sum() == pytest.approx(1.0, abs=0.01)
    lo, hi = RANGE.bounds()
    outside = (lk[0].grid < lo) | (lk[0].grid > hi)
    assert mass[outside].sum() == pytest.approx(coarse.tail_mass, abs=0.005)


def test_a_checkpoint_from_before_the_tail_still_loads(tmp_path):
    """A physics spec without ``tail`` and a state without the grid and bounds buffers (as saved before them):
    the model loads, answers as saved and never flags the thickness from the fit."""
    model = _untrained_model(RANGE, tail=False)
    state = {k: v for k, v in model.state_dict().items() if k not in ("physics.grid_mm", "physics.train_bounds")}
    fresh = create_model(
        "profile_mlp",
        5,
        1,
        Preprocess([1000.0], [50000.0]),
        "relu",
        STATS,
        0.0,
        rig=_rig(),
        physics=physics_spec([50.0], 1, SIZE, bins=16, tail=False),
        bins=16,
        hidden=[32],
    ).eval()
    fresh.load_state_dict(state)
    assert fresh.physics.train_bounds.tolist() == [0.0, float("inf")]
    x, cal, w, _ = _captures(2, seed=13, thicknesses_mm=(6.5,))
    with torch.no_grad():
        out, ref = fresh(x, cal, w), model(x, cal, w)
    assert torch.allclose(out["logits"], ref["logits"]) and out["flags"][:, 2].sum() == 0


def _fitted_two_wedges() -> PhysicsLikelihood:
    module = PhysicsLikelihood(5, [50.0, 70.0], 1, bins=16)
    module.fit({50.0: _rig(50.0), 70.0: _rig(70.0)}, ThicknessPrior(range_mm=(1.0, 5.0)), ALLOY_NAMES)
    return module


def _profiles(wedge: float, n_per: int, seed: int) -> torch.Tensor:
    prior = ThicknessPrior(range_mm=(1.0, 5.0))
    obs = PhysicsObserver(profile_model_for(_rig(wedge), 16), ALLOY_NAMES, prior, plates=100, seed=0)
    rng = np.random.default_rng(seed)
    x = np.concatenate([obs.draw(k, n_per, rng)[0] for k in range(5)])
    return torch.tensor(np.repeat(x, 2, axis=1), dtype=torch.float32)[:, None, None, :].expand(-1, 1, 8, -1)


def test_a_capture_without_levels_is_integrated_over_its_span():
    """Sent without levels, the profile is moved by an unknown delta in every bin; the joint is integrated over
    delta ~ N(0, span_sd^2) in closed form: it equals the joint of the moved profiles averaged over delta (a
    fine quadrature), and a capture with its levels keeps the joint it had, bit for bit."""
    module = _fitted_two_wedges()
    module.span_sd.fill_(0.004)
    a, wedge = _profiles(50.0, 2, seed=5), torch.full((10,), 50.0)
    missing = torch.tensor([1.0, 0.0] * 5)
    with torch.no_grad():
        plain = module.log_joint(a, wedge)
        closed = module.log_joint(a, wedge, missing)
        z = torch.linspace(-12.0, 12.0, 961)  # the posterior of delta may lie several prior sd out
        log_w = -0.5 * z**2 - torch.logsumexp(-0.5 * z**2, 0)
        moved = torch.stack([module.log_joint(a + 0.004 * float(v), wedge) for v in z])  # [Z, B, K, grid]
        numeric = torch.logsumexp(moved + log_w[:, None, None, None], 0)
    known = missing == 0
    assert torch.equal(closed[known], plain[known])
    on = missing > 0
    # where the likelihood is not negligible (within 30 of each capture's best), the two agree closely
    best = numeric[on].amax(dim=(1, 2), keepdim=True)
    near = numeric[on] > best - 30
    assert (closed[on] - numeric[on])[near].abs().max() < 0.02
    # and it matters: at a 0.4 % spread the joint moves by far more than that
    assert (closed[on] - plain[on])[near].abs().max() > 1.0


def test_a_capture_without_its_wedge_size_reads_it_from_its_profile():
    module = _fitted_two_wedges()
    a = torch.cat([_profiles(50.0, 6, seed=1), _profiles(70.0, 6, seed=2)])
    x = module.profile(a)
    told = torch.tensor([50.0] * 30 + [70.0] * 30)
    assert torch.equal(module.table_of(x, told), torch.tensor([0] * 30 + [1] * 30))
    assert torch.equal(module.table_of(x, torch.zeros(60)), torch.tensor([0] * 30 + [1] * 30))
    # a profile moved alike in every bin (an unknown span) has the same shape
    assert torch.equal(module.table_of(x + 0.05, torch.zeros(60)), module.table_of(x, torch.zeros(60)))


def test_a_wedge_less_capture_is_matched_to_the_training_wedges_only():
    prior = ThicknessPrior(range_mm=(1.0, 5.0))
    wedges = table_wedges([50.0, 70.0])
    module = PhysicsLikelihood(5, wedges, 1, bins=16)
    module.fit({w: _rig(w) for w in wedges}, prior, ALLOY_NAMES, shape_wedges=[50.0, 70.0])
    x = module.profile(torch.cat([_profiles(50.0, 4, seed=1), _profiles(60.0, 4, seed=2), _profiles(70.0, 4, 3)]))
    picked = module.table_of(x, torch.zeros(60))
    assert set(picked[:20].tolist()) == {0} and set(picked[40:].tolist()) == {4}
    assert set(picked[20:40].tolist()) <= {0, 4}  # a 60 mm capture sent without its size: one of the two
    assert torch.equal(module.table_of(x, torch.full((60,), 60.0)), torch.full((60,), 2))  # told: its own table

"""The second rig: an independent forward model at the same nominal settings, with its own physics.

What must hold: it is seeded; its captures are valid captures; its noise follows its own model (per-bin
Poisson x Swank through the PSF); its ideal-observer profile model agrees with its captures; with every
deviation switched off it reproduces the nominal physics exactly (two independent codes, one answer);
with the documented defaults it differs from the alloynet simulator by a few % of -ln T, no more, no less.
"""

import inspect

import numpy as np
import pytest

from alloynet.captures.image import decode_image, encode_image
from alloynet.captures.layout import read_capture
from alloynet.captures.stores import LocalStore
from alloynet.data.manifest import build_manifest
from alloynet.data.simulate import DatasetSpec, simulate_dataset
from alloynet.physics import RigConfig, RigSimulator, get_alloy, sample_plate
from alloynet.physics.materials import linear_attenuation
from alloynet.physics.measure import MAX_ADU, frame_level
from alloynet.physics.profile import ProfileModel
from alloynet.physics.rig import NOMINAL_FIELDS
from alloynet.physics.second_rig import SecondRig, SecondRigConfig, SecondRigProfileModel
from alloynet.physics.separability import separability

# Every departure from the nominal rig switched off: what is left is the shared physics.
NO_DEVIATIONS = dict(
    kvp_error_rel=0.0,
    anode_angle_error_deg=0.0,
    extra_filtration_mm_al=0.0,
    heel_depth_um=0.0,
    csi_excess_mm=0.0,
    k_escape_prob=0.0,
    glare_fraction=0.0,
    psf_sigma_px=0.0,
    gain_lowfreq_rel=0.0,
    gain_prnu=0.0,
    column_offset_adu=0.0,
    scatter_per_attenuation=0.0,
    swank_factor=1.0,
    dead_pixels=0,
    hot_pixels=0,
)


def _cfg(size=32, **kw) -> SecondRigConfig:
    return SecondRigConfig(height=size, width=size, **kw)


def _profile(image: np.ndarray, dark: float, flat: float, bins: int) -> np.ndarray:
    """What a user computes: -ln of the row mean of (S - dark)/(flat - dark), dead/hot pixels left out, binned."""
    good = (image > 0) & (image < MAX_ADU)
    t = np.where(good, (image.astype(float) - dark) / (flat - dark), 0.0).sum(0) / good.sum(0)
    edges = np.linspace(0, image.shape[-1], bins + 1).astype(int)
    return np.add.reduceat(-np.log(np.maximum(t, 1e-12)), edges[:-1]) / np.diff(edges)


def test_config_is_strict_and_takes_nominal_settings_from_a_rig():
    with pytest.raises(ValueError, match="scatter_fraction"):
        SecondRigConfig(scatter_fraction=0.02)  # the nominal simulator's knob, not this rig's
    rig = RigConfig(height=64, width=64, kvp=[40.0, 60.0], wedge_mm=70.0, dose=5e3)
    cfg = SecondRigConfig.from_nominal(rig, scatter_per_attenuation=0.01)
    assert all(getattr(cfg, f) == getattr(rig, f) for f in NOMINAL_FIELDS)
    assert cfg.scatter_per_attenuation == 0.01
    # every nominal field exists on RigConfig with the same default: one notebook entry drives both rigs
    assert {f: SecondRigConfig.model_fields[f].get_default(call_default_factory=True) for f in NOMINAL_FIELDS} == {
        f: RigConfig.model_fields[f].get_default(call_default_factory=True) for f in NOMINAL_FIELDS
    }
    with pytest.raises(ValueError, match=r"second_rig.height: nominal settings come from rig"):
        DatasetSpec(simulator="second_rig", second_rig={"height": 64})


def test_same_seed_same_bytes_and_interface_of_the_simulator():
    plate = sample_plate("Al6082", 2.0, np.random.default_rng(0), "p")
    sim = SecondRig(_cfg(kvp=[40.0, 50.0]))
    a = sim.capture(plate, np.random.default_rng(7))
    b = SecondRig(_cfg(kvp=[40.0, 50.0])).capture(plate, np.random.default_rng(7))  # a new instance: same detector
    c = sim.capture(plate, np.random.default_rng(8))
    assert a.image.dtype == np.uint16 and a.image.shape == (2, 32, 32)
    assert encode_image(a.image) == encode_image(b.image) and not np.array_equal(a.image, c.image)
    assert a.a0_by_kvp[0] > a.a0_by_kvp[1] > 0  # softer beam, more attenuation
    for f in (lambda s, r: s.dark_flat_frames(r, 1.01), lambda s, r: s.wedge_reference(r, 0.99)):
        x, y = f(sim, np.random.default_rng(3)), f(SecondRig(_cfg(kvp=[40.0, 50.0])), np.random.default_rng(3))
        assert np.array_equal(np.asarray(x), np.asarray(y))
    other = SecondRig(_cfg(detector_seed=1))
    assert not np.allclose(other.gain_map, SecondRig(_cfg()).gain_map)
    # the data-set writer can use either rig: same public methods and signatures
    for name in ("capture", "dark_flat_frames", "session_gain"):
        assert (
            inspect.signature(getattr(SecondRig, name)).parameters.keys()
            == inspect.signature(getattr(RigSimulator, name)).parameters.keys()
        )
    gains = [sim.session_gain(np.random.default_rng(s)) for s in range(200)]
    assert np.std(gains) == pytest.approx(sim.rig.output_drift_rel, rel=0.2)


def test_without_its_deviations_it_reproduces_the_nominal_physics():
    """Two independent codes (this rig's and the nominal ideal observer's) over the shared physical data."""
    rig = RigConfig(height=32, width=32, kvp=[40.0, 50.0], read_noise_adu=0.0)
    a = get_alloy("Al7075")
    ours = SecondRigProfileModel(SecondRigConfig.from_nominal(rig, **NO_DEVIATIONS), bins=16)
    theirs = ProfileModel(rig.model_copy(update={"gain_prnu": 0.0}), bins=16, detector=False)
    for t in (1.0, 5.0):
        np.testing.assert_allclose(
            ours.profile(a.nominal_fractions(), a.density_g_cm3, t),
            theirs.profile(a.nominal_fractions(), a.density_g_cm3, t),
            rtol=1e-6,
        )
        np.testing.assert_allclose(
            ours.noise_var(a.nominal_fractions(), a.density_g_cm3, t),
            theirs.noise_var(a.nominal_fractions(), a.density_g_cm3, t),
            rtol=1e-4,
        )


def test_flat_frame_level_and_noise_follow_its_own_model():
    sim = SecondRig(_cfg())
    rng = np.random.default_rng(0)
    flats = np.stack([sim.dark_flat_frames(rng)[1][0] for _ in range(60)]).astype(float)
    mean, var = sim.flat_moments()
    good = sim.good
    assert np.mean([frame_level(f[None])[0] for f in flats]) == pytest.approx(sim.expected_levels()[1][0], rel=2e-4)
    assert sim.expected_levels()[1][0] == pytest.approx(sim.rig.flat_target_adu, rel=0.01)
    assert np.abs(flats.mean(0)[good] / mean[0][good] - 1).max() < 5e-3
    measured = flats.var(0, ddof=1)[good]
    assert measured.mean() / var[0][good].mean() == pytest.approx(1.0, abs=0.03)
    # Swank: each absorbed photon is noisier than its energy alone says (variance x 1/I), not pure Poisson
    pure = SecondRig(_cfg(swank_factor=1.0))
    flats1 = np.stack([pure.dark_flat_frames(rng)[1][0] for _ in range(60)]).astype(float)
    ratio = measured.mean() / flats1.var(0, ddof=1)[good].mean()
    assert ratio == pytest.approx(1 / sim.rig.swank_factor, rel=0.06)


def test_heel_hardens_the_beam_on_the_anode_side_and_scatter_grows_with_attenuation():
    sim = SecondRig(_cfg(64))
    beam = sim._beams[0]
    per_row = beam.response @ beam.n_open
    mean_e = (beam.energies @ beam.n_open) / beam.n_open.sum(0)
    assert per_row[0] < 0.97 * per_row[32] < per_row[-1]  # anode side (row 0) dimmer ...
    assert mean_e[0] > mean_e[32] + 0.1 > mean_e[-1] + 0.2  # ... and harder: not a plain ramp
    a = get_alloy("Al6082")
    mu = linear_attenuation(a.nominal_fractions(), a.density_g_cm3, beam.energies)
    kev_plate, _ = sim.expected_kev(0, mu, 0.2)
    kev_open, _ = sim.expected_kev(0, None, 0.0)
    a_rows = -np.log(kev_plate[:, 1] / kev_open[:, 1])  # the plate's -ln T in the plate-only strip
    assert a_rows[0] < a_rows[-1]  # harder beam, less attenuation
    no_scatter = SecondRig(_cfg(64, scatter_per_attenuation=0.0))
    spr = sim.expected_kev(0, mu, 0.2)[0].mean(0) / no_scatter.expected_kev(0, mu, 0.2)[0].mean(0) - 1
    assert 0 < spr[4] < 0.02 and spr[32] > 2 * spr[4] and spr[-1] > 2 * spr[32]


def test_profile_model_agrees_with_captures_mean_and_variance():
    cfg = _cfg(texture_rel=0.0, inclusion_rate=0.0)
    sim, model = SecondRig(cfg), SecondRigProfileModel(cfg, bins=16)
    plate = sample_plate("Al2017", 2.0, np.random.default_rng(0), "p", exact=True)
    dark, flat = sim.expected_levels()
    profiles = np.stack(
        [
            _profile(sim.capture(plate, np.random.default_rng(100 + i)).image[0], dark[0], flat[0], 16)
            for i in range(300)
        ]
    )
    expected = model.profile(plate.fractions(), plate.density_g_cm3, 2.0)
    var = model.noise_var(plate.fractions(), plate.density_g_cm3, 2.0)
    se = profiles.std(0, ddof=1) / np.sqrt(len(profiles))
    # within 4 standard errors, plus the second-order (Jensen) bias of -ln of a noisy mean, <= var
    assert np.all(np.abs(profiles.mean(0) - expected) < 4 * se + var)
    ratio = profiles.var(0, ddof=1) / var
    assert np.all(np.abs(ratio - 1) < 0.2) and ratio.mean() == pytest.approx(1.0, abs=0.05)
    # the wedge reference (no plate) is the same model at zero plate thickness
    refs = np.stack(
        [_profile(sim.wedge_reference(np.random.default_rng(i))[0], dark[0], flat[0], 16) for i in range(40)]
    )
    ref_model = model.profile(plate.fractions(), plate.density_g_cm3, 0.0)
    assert np.all(np.abs(refs.mean(0) - ref_model) < 4 * refs.std(0, ddof=1) / np.sqrt(40) + ref_model * 1e-3)


def test_it_differs_from_the_alloynet_simulator_by_a_few_percent_of_minus_ln_t():
    """The documented band (docs/second_rig.md): same plate, same nominal settings, 64 px, 50 mm Al wedge."""
    rig = RigConfig(height=64, width=64)
    plate = sample_plate("Al6082", 2.0, np.random.default_rng(0), "p", exact=True)
    nominal = RigSimulator(rig)
    second = SecondRig(SecondRigConfig.from_nominal(rig))
    pn = np.mean(
        [
            _profile(
                nominal.capture(plate, np.random.default_rng(i)).image[0], rig.dark_offset_adu, rig.flat_target_adu, 32
            )
            for i in range(20)
        ],
        0,
    )
    caps = [second.capture(plate, np.random.default_rng(i)) for i in range(20)]
    p2 = np.mean([_profile(c.image[0], c.dark_adu[0], c.flat_adu[0], 32) for c in caps], 0)
    rel = p2 / pn - 1
    assert 0.01 < abs(rel[-4:].mean()) < 0.05  # thick end (last 8 columns): measured +2.3 %
    assert 0.01 < abs(rel[:2].mean()) < 0.06  # plate-only strip (the plate's own -ln T): measured -2.9 %
    assert np.abs(rel).max() < 0.08
    a5083 = get_alloy("Al5083")
    alloy_gap = (
        ProfileModel(rig).profile(a5083.nominal_fractions(), a5083.density_g_cm3, 2.0)
        / ProfileModel(rig).profile(get_alloy("Al6082").nominal_fractions(), get_alloy("Al6082").density_g_cm3, 2.0)
        - 1
    )
    assert np.abs(rel[-4:]).mean() > np.abs(alloy_gap[-4:]).mean()  # the rig gap exceeds the 5083/6082 gap


def test_separability_takes_the_second_rig_profile_model():
    cfg = _cfg(64)
    kw = dict(alloys=("Al1050", "Al7075"), thicknesses_mm=(2.0,), plates=10, mc_samples=50)
    ours = separability(cfg, profile_model=SecondRigProfileModel(cfg), **kw)
    theirs = separability(RigConfig(height=64, width=64), **kw)
    assert ours.rig["scatter_per_attenuation"] == cfg.scatter_per_attenuation
    assert ours.pairs[0].d_known_nominal > 10 and ours.pairs[0].d_known_nominal != theirs.pairs[0].d_known_nominal


def test_dataset_from_the_second_rig(tmp_path):
    spec = DatasetSpec(
        simulator="second_rig",
        n_max=6,
        imbalance_ratio=2,
        captures_per_plate=1,
        session_size=8,
        rig=RigConfig(height=64, width=64),
        second_rig={"output_drift_rel": 0.01},
    )
    store = LocalStore(tmp_path / "a")
    ids = simulate_dataset(spec, store)
    df = build_manifest(store, seed=0)
    assert len(df) == len(ids) and set(df.split) >= {"train", "test"}
    sessions = set()
    for cid in ids:
        cap = read_capture(store, cid)  # parses and validates (hash, shape, calibration)
        sc = cap.sidecar
        assert sc.source == f"second-rig seed={spec.seed}"
        assert sc.rig.anode_angle_deg == 12.0 and sc.rig.filtration_mm_al == 1.0  # nominal, as in a lab notebook
        sessions.add(sc.calibration.session)
        frames = {name: store.get(f"calibration/{sc.calibration.session}/{name}.png") for name in ("dark", "flat")}
        assert sc.calibration.flat_adu == frame_level(decode_image(frames["flat"]))
        assert sc.calibration.dark_adu == frame_level(decode_image(frames["dark"]))
    assert len(sessions) >= 2
    for s in sessions:
        for w in spec.wedges_mm:
            ref = decode_image(store.get(f"calibration/{s}/wedge-{w:g}mm.png"))
            assert ref.shape == (1, 64, 64) and ref.dtype == np.uint16
    # same seed, same bytes
    again = LocalStore(tmp_path / "b")
    simulate_dataset(spec, again)
    files = sorted(p.relative_to(store.root) for p in store.root.rglob("*") if p.is_file())
    assert all((store.root / f).read_bytes() == (again.root / f).read_bytes() for f in files)

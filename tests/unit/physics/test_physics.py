"""Physics: Beer-Lambert known answers, beam-hardening laws, the alloy table, the shortcut, the simulator."""

import numpy as np
import pytest
import xraydb

from alloynet.physics import (
    ALLOY_NAMES,
    RigConfig,
    RigSimulator,
    get_alloy,
    monochromatic,
    neg_log_transmission,
    neg_log_transmission_of,
    sample_plate,
)
from alloynet.physics.alloys import STANDARD_ALLOYS, Alloy, alloy_group, alloys_from_config, density_for, with_alloys
from alloynet.physics.measure import MAX_ADU, frame_level


def test_monochromatic_pure_al_matches_nist_beer_lambert():
    # NIST XCOM: Al at 30 keV, mu/rho (with coherent) = 1.128 cm^2/g; rho = 2.699 g/cm^3; t = 2 mm
    value = neg_log_transmission_of({"Al": 1.0}, 2.699, 2.0, 0.0, monochromatic(30.0))
    assert value == pytest.approx(1.128 * 2.699 * 0.2, rel=0.01)


def test_monochromatic_alloy_is_weight_fraction_mixture():
    a = get_alloy("Al7075")
    e = np.array([40000.0])
    fr = a.nominal_fractions()
    hand = sum(w * float(xraydb.mu_elam(el, e, kind="total")[0]) for el, w in fr.items()) * a.density_g_cm3 * 0.5
    got = neg_log_transmission("Al7075", 5.0, spectrum=monochromatic(40.0))
    assert got == pytest.approx(hand, rel=1e-9)
    # a single energy cannot harden: the wedge changes nothing
    assert neg_log_transmission("Al7075", 5.0, 50.0, spectrum=monochromatic(40.0)) == pytest.approx(got, rel=1e-9)


def test_monotonic_in_thickness_and_beam_hardening():
    ts = [0.5, 1, 2, 5, 10]
    vals = [neg_log_transmission("Al6082", t) for t in ts]
    assert all(b > a for a, b in zip(vals, vals[1:]))
    mu_eff = [v / t for v, t in zip(vals, ts)]  # falls with thickness: the beam hardens in the plate
    assert all(b < a for a, b in zip(mu_eff, mu_eff[1:]))
    wedges = [0, 10, 30, 50, 70]
    behind = [neg_log_transmission("Al6082", 2.0, w) for w in wedges]  # the wedge pre-hardens the beam
    assert all(b < a for a, b in zip(behind, behind[1:]))
    assert neg_log_transmission("Al6082", 2.0, kvp=40.0) > neg_log_transmission("Al6082", 2.0, kvp=60.0)


def test_pmma_wedge_hardens_less_than_al():
    assert neg_log_transmission("Al2017", 2.0, 50.0, wedge_material="PMMA") > neg_log_transmission("Al2017", 2.0, 50.0)


def test_alloy_ordering_follows_heavy_elements():
    v = {a: neg_log_transmission(a, 2.0) for a in ALLOY_NAMES}
    assert v["Al7075"] > v["Al2017"] > v["Al6082"] > v["Al1050"] > v["Al5083"]


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="unknown alloy 'Al9999'"):
        neg_log_transmission("Al9999", 1.0)
    with pytest.raises(ValueError, match="thickness_mm must be >= 0"):
        neg_log_transmission("Al1050", -1.0)
    with pytest.raises(ValueError, match="unknown wedge material"):
        neg_log_transmission("Al1050", 1.0, 10.0, wedge_material="lead")


def test_alloy_table_nominals_lie_inside_spec_and_user_alloys_validate():
    for a in STANDARD_ALLOYS.values():
        a.validate()
    assert tuple(STANDARD_ALLOYS) == ALLOY_NAMES
    assert STANDARD_ALLOYS["Al1050"].nominal_fractions()["Al"] == pytest.approx(0.995)
    with pytest.raises(ValueError, match="outside its range"):
        with_alloys([Alloy("Bad", 2.7, {"Cu": 9.0}, {"Cu": (0.0, 1.0)})])
    table = with_alloys([Alloy("Al3003", 2.73, {"Mn": 1.2, "Cu": 0.12}, {"Mn": (1.0, 1.5), "Cu": (0.05, 0.2)})])
    assert neg_log_transmission("Al3003", 1.0, alloy_table=table) > neg_log_transmission("Al1050", 1.0)
    assert alloy_group("Al3003", table) == "light"
    assert sample_plate("Al3003", 2.0, np.random.default_rng(0), "p", alloy_table=table).alloy == "Al3003"


def test_a_user_alloy_lives_in_its_own_table_and_never_in_the_standard_one():
    table = alloys_from_config(
        {"Al3003": {"density_g_cm3": 2.73, "nominal_wt_pct": {"Mn": 1.2}, "ranges_wt_pct": {"Mn": [1.0, 1.5]}}}
    )
    assert "Al3003" in table and "Al3003" not in STANDARD_ALLOYS and set(STANDARD_ALLOYS) < set(table)
    with pytest.raises(TypeError):
        STANDARD_ALLOYS["Al3003"] = table["Al3003"]  # type: ignore[index]
    with pytest.raises(ValueError, match="unknown alloy 'Al3003'"):
        get_alloy("Al3003")
    with pytest.raises(ValueError, match="alloy AlX: missing field 'density_g_cm3'"):
        alloys_from_config({"AlX": {"nominal_wt_pct": {"Mn": 1}}})


def test_plates_vary_inside_spec_and_tolerance():
    rng = np.random.default_rng(0)
    a = get_alloy("Al5083")
    plates = [sample_plate("Al5083", 2.0, rng, f"p{i}") for i in range(300)]
    for p in plates:
        for el, (lo, hi) in a.ranges_wt_pct.items():
            assert lo <= p.wt_pct[el] <= hi
        assert abs(p.thickness_mm / 2.0 - 1) <= 0.015 + 1e-12
    assert np.std([p.thickness_mm for p in plates]) > 0.005
    assert np.std([p.density_g_cm3 for p in plates]) > 0
    assert density_for(a, a.nominal_wt_pct) == pytest.approx(a.density_g_cm3)


def _best_threshold_accuracy(x0, x1):
    x = np.r_[x0, x1]
    y = np.r_[np.zeros(len(x0)), np.ones(len(x1))][np.argsort(x)]
    below0, below1 = np.cumsum(y == 0), np.cumsum(y == 1)
    acc = (below0 + (len(x1) - below1)) / len(x)
    return max(acc.max(), 1 - acc.min())


@pytest.mark.parametrize("t", [1.0, 5.0])
def test_attenuation_level_alone_is_no_shortcut_for_5083_vs_6082(t):
    rng = np.random.default_rng(1)

    def levels(alloy, exact):
        ps = [sample_plate(alloy, t, rng, "p", exact=exact) for _ in range(300)]
        return np.array([neg_log_transmission_of(p.fractions(), p.density_g_cm3, p.thickness_mm) for p in ps])

    # with exact nominal plates the level alone separates them perfectly: that is the shortcut...
    assert _best_threshold_accuracy(levels("Al5083", True), levels("Al6082", True)) == 1.0
    # ...which real plates (composition inside spec, thickness within tolerance) do not offer
    assert _best_threshold_accuracy(levels("Al5083", False), levels("Al6082", False)) < 0.85


def _quiet_rig(**kw):
    base = dict(
        height=64,
        width=64,
        psf_sigma_px=0.0,
        gain_prnu=0.0,
        heel=0.0,
        texture_rel=0.0,
        scatter_fraction=0.0,
        inclusion_rate=0.0,
        dead_pixels=0,
        hot_pixels=0,
    )
    base.update(kw)
    return RigConfig(**base)


def test_simulated_transmission_matches_physics_at_zero_wedge():
    rig = _quiet_rig()
    sim = RigSimulator(rig)
    plate = sample_plate("Al2017", 2.0, np.random.default_rng(3), "p")
    cap = sim.capture(plate, np.random.default_rng(4))
    t = (cap.image[0, :, 0].astype(float) - rig.dark_offset_adu) / (rig.flat_target_adu - rig.dark_offset_adu)
    assert -np.log(t.mean()) == pytest.approx(cap.a0_by_kvp[0], abs=0.01)


def test_compound_poisson_noise_variance():
    rig = _quiet_rig(read_noise_adu=3.0)
    sim = RigSimulator(rig)
    plate = sample_plate("Al1050", 1.0, np.random.default_rng(0), "p", exact=True)
    ch = sim.channels[0]
    from alloynet.physics.materials import linear_attenuation

    n = ch.n_behind_wedge * np.exp(-linear_attenuation(plate.fractions(), plate.density_g_cm3, ch.energies) * 0.1)
    v = n @ ch.energies**2  # keV^2: compound Poisson variance of the deposited energy
    predicted = ch.gain**2 * v + rig.read_noise_adu**2 + 1 / 12
    imgs = np.stack([sim.capture(plate, np.random.default_rng(s)).image[0].astype(float) for s in range(40)])
    measured = imgs.var(axis=0).mean(axis=0)  # per column, over repeats and rows
    np.testing.assert_allclose(measured[::8], predicted[::8], rtol=0.15)


def test_thick_wedge_end_is_photon_starved_and_16_bit():
    rig = RigConfig(height=64, width=64, wedge_mm=70.0)
    sim = RigSimulator(rig)
    cap = sim.capture(sample_plate("Al7075", 5.0, np.random.default_rng(0), "p"), np.random.default_rng(1))
    assert cap.image.dtype == np.uint16 and cap.image.shape == (1, 64, 64)
    ch = sim.channels[0]
    assert ch.n_behind_wedge[-1].sum() < 20  # a few photons per pixel behind 7 cm of Al (before the plate)
    thick = np.median(cap.image[0, :, -4:]) - rig.dark_offset_adu
    assert 0 <= thick < 30 * rig.read_noise_adu
    assert (cap.image == 0).sum() >= rig.dead_pixels and (cap.image == MAX_ADU).sum() >= rig.hot_pixels


def test_simulator_is_seeded_and_multi_kvp_adds_channels():
    sim = RigSimulator(RigConfig(height=32, width=32, kvp=[40.0, 50.0, 60.0]))
    plate = sample_plate("Al6082", 2.0, np.random.default_rng(0), "p")
    a = sim.capture(plate, np.random.default_rng(7))
    b = sim.capture(plate, np.random.default_rng(7))
    c = sim.capture(plate, np.random.default_rng(8))
    assert a.image.shape == (3, 32, 32)
    assert np.array_equal(a.image, b.image) and not np.array_equal(a.image, c.image)
    assert a.a0_by_kvp[0] > a.a0_by_kvp[1] > a.a0_by_kvp[2]  # softer beam, more attenuation


def test_dark_flat_frames():
    rig = RigConfig(height=32, width=32)
    sim = RigSimulator(rig)
    dark, flat = sim.dark_flat_frames(np.random.default_rng(0))
    assert frame_level(dark)[0] == pytest.approx(rig.dark_offset_adu, abs=1.0)
    assert frame_level(flat)[0] == pytest.approx(rig.flat_target_adu, rel=0.01)

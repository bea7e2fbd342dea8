"""Golden physics outputs (tests/expect/): any change to attenuation data, the spectrum, the simulator's
noise chain or the ideal observer shows up here and must be accepted deliberately."""

import numpy as np

from alloynet.physics import ALLOY_NAMES, RigConfig, RigSimulator, neg_log_transmission, sample_plate
from alloynet.physics.separability import separability
from tests.helpers.expect import assert_expected


def test_transmission_table():
    table = {
        a: {f"{t:g}mm/{w:g}mm": neg_log_transmission(a, t, w) for t in (1.0, 2.0, 5.0) for w in (0.0, 50.0, 70.0)}
        for a in ALLOY_NAMES
    }
    assert_expected("transmission_table", table, rtol=1e-6)


def test_seeded_capture_profile():
    sim = RigSimulator(RigConfig(height=32, width=32))
    plate = sample_plate("Al6082", 2.0, np.random.default_rng(11), "golden")
    cap = sim.capture(plate, np.random.default_rng(12))
    img = cap.image[0].astype(float)
    assert_expected(
        "capture_al6082_2mm",
        {
            "thickness_mm": plate.thickness_mm,
            "density": plate.density_g_cm3,
            "a0": cap.a0_by_kvp[0],
            "column_mean_adu": img.mean(axis=0).round(3).tolist(),
            "dead": int((img == 0).sum()),
            "hot": int((img == 65535).sum()),
        },
        rtol=1e-6,
        atol=1e-3,
    )


def test_ideal_observer_report():
    r = separability(RigConfig(height=64, width=64), plates=40, mc_samples=300, seed=3)
    assert_expected(
        "separability_64px",
        {
            "ceiling": r.ceiling_accuracy,
            "upper": r.ceiling_upper,
            "recall": r.ceiling_recall,
            "pairs": {f"{p.a}/{p.b}": [p.d_known_nominal, p.d_known, p.d_unknown] for p in r.pairs},
        },
        rtol=1e-5,
        atol=1e-6,
    )

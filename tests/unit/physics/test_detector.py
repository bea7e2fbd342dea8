"""The detector model of the rig fit: the observation, the detector from frames or from levels alone, and the
layering (physics draws nothing: the fit's plot lives in evaluate)."""

from __future__ import annotations

import numpy as np
import pytest

from alloynet.physics.detector import RigFitError, capture_profile, detector_from_levels, measure_detector


def test_capture_profile_is_minus_log_of_the_row_mean_transmission_per_bin():
    # columns 0-3 at T = 0.5, columns 4-7 at T = 0.25 (dark 1000, flat 41000); one dead pixel left out
    img = np.empty((1, 4, 8), np.uint16)
    img[..., :4], img[..., 4:] = 1000 + 20000, 1000 + 10000
    img[0, 0, 0] = 0
    got = capture_profile(img, [1000.0], [41000.0], bins=2)
    np.testing.assert_allclose(got, [np.log(2.0), np.log(4.0)], rtol=1e-12)


def test_detector_from_levels_keeps_the_rest_nominal_and_says_so():
    det = detector_from_levels(
        np.array([[1000.0], [1010.0]]), np.array([[50000.0], [50200.0]]), width=16, source="the sidecars"
    )
    assert det.values == {"dark_offset_adu": 1005.0, "flat_target_adu": 50100.0}
    assert det.jensen.shape == (1, 16) and not det.jensen.any() and det.quanta_open is None
    assert det.sessions == 2 and "nominal" in det.notes[0] and "the sidecars" in det.notes[0]
    with pytest.raises(RigFitError, match="not above its dark"):
        detector_from_levels(np.array([[1000.0]]), np.array([[1005.0]]), width=16, source="options")


def test_measure_detector_reads_levels_and_refuses_swapped_frames():
    rng = np.random.default_rng(0)
    darks = rng.normal(1000, 5, (3, 1, 32, 32)).round().astype(np.uint16)
    flats = rng.normal(40000, 200, (3, 1, 32, 32)).round().astype(np.uint16)
    det = measure_detector(darks, flats)
    assert det.values["dark_offset_adu"] == pytest.approx(1000, abs=1)
    assert det.values["flat_target_adu"] == pytest.approx(40000, abs=20)
    assert det.values["read_noise_adu"] == pytest.approx(5, rel=0.1)
    with pytest.raises(RigFitError, match="not brighter than its dark"):
        measure_detector(flats, darks)


def test_physics_imports_no_plotting():
    import ast
    from pathlib import Path

    import alloynet.physics

    for path in Path(alloynet.physics.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            )
            assert not any(n.split(".")[0] == "matplotlib" for n in names), path

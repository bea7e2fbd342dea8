"""The one measurement of a frame: levels, bins and the wedge profile, and its torch twin."""

import numpy as np
import pytest
import torch

from alloynet.data.transforms import binned_wedge_profile
from alloynet.physics.measure import (
    MAX_ADU,
    T_MIN,
    bin_columns,
    bin_edges,
    capture_levels,
    frame_level,
    interquartile_rows,
    wedge_profile,
)


def _captures(rng: np.random.Generator, n: int, c: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw frames with a wedge-like ramp, noise, a few dead and hot pixels; levels per capture and channel."""
    ramp = np.linspace(45000, 3000, w)[None, None, None, :]
    img = ramp * rng.uniform(0.8, 1.0, (n, c, 1, 1)) + rng.normal(0, 300, (n, c, h, w))
    img = np.clip(np.rint(img), 0, MAX_ADU).astype(np.uint16)
    img[:, :, 0, 3] = 0
    img[:, :, 2, 5] = MAX_ADU
    cal = np.stack([rng.uniform(900, 1100, (n, c)), rng.uniform(48000, 52000, (n, c))], axis=-1)
    return img, cal


def test_bin_edges_are_floor_of_b_width_over_bins():
    assert bin_edges(64, 32).tolist() == list(range(0, 65, 2))
    assert bin_edges(10, 4).tolist() == [0, 2, 5, 7, 10]
    assert bin_edges(8, 32).tolist() == list(range(9))  # never more bins than columns
    assert bin_columns(np.arange(10.0), 4).tolist() == [0.5, 3.0, 5.5, 8.0]
    assert bin_columns(np.arange(10.0), 4, average=False).tolist() == [1.0, 9.0, 11.0, 24.0]
    with pytest.raises(ValueError, match="width and bins must be >= 1"):
        bin_edges(0, 4)


def test_frame_level_leaves_out_dead_and_saturated_pixels():
    frame = np.array([[[0, 100, 300], [MAX_ADU, 200, 400]]], np.uint16)
    assert frame_level(frame) == [250.0]
    assert frame_level(frame, max_adu=400) == [200.0]  # a 12-bit-style ceiling is saturated too
    with pytest.raises(ValueError, match="channel 1 has no pixel between 0 and 65535"):
        frame_level(np.zeros((1, 2, 2), np.uint16))


def test_interquartile_rows_drop_the_outer_quarters():
    x = np.array([[1.0], [2.0], [3.0], [100.0]])  # 4 rows: one dropped at each end
    assert interquartile_rows(x).tolist() == [2.5]
    assert interquartile_rows(x[1:]).tolist() == [pytest.approx(105 / 3)]  # too few rows to trim: the mean


@pytest.mark.parametrize("width", [64, 100, 37])
def test_numpy_measurement_and_its_torch_twin_agree(width):
    img, cal = _captures(np.random.default_rng(width), 3, 2, 20, width)
    expected = wedge_profile(img, cal, bins=32)
    t = torch.from_numpy(
        (img.astype(np.float64) - cal[..., 0, None, None]) / (cal[..., 1] - cal[..., 0])[..., None, None]
    )
    twin = binned_wedge_profile(-torch.log(torch.clamp(t, min=T_MIN)), 32).flatten(1).numpy()
    assert expected.shape == (3, 2 * 32) and twin.shape == expected.shape
    np.testing.assert_allclose(twin, expected, rtol=0, atol=1e-12)


def test_torch_twin_in_float32_matches_to_float_precision():
    img, cal = _captures(np.random.default_rng(5), 2, 1, 16, 64)
    t = (torch.from_numpy(img).float() - torch.from_numpy(cal[..., 0]).float()[..., None, None]) / torch.from_numpy(
        cal[..., 1] - cal[..., 0]
    ).float()[..., None, None]
    twin = binned_wedge_profile(-torch.log(torch.clamp(t, min=T_MIN)), 32).flatten(1).numpy()
    np.testing.assert_allclose(twin, wedge_profile(img, cal, 32), atol=2e-5)


def test_the_profile_measures_minus_log_t_against_hand_computed_values():
    # a flat frame at half the open beam: T = 0.5 everywhere, -ln T = ln 2 in every bin
    img = np.full((1, 1, 8, 16), 1000 + 24500, np.uint16)
    cal = capture_levels([1000.0], [50000.0])[None]
    np.testing.assert_allclose(wedge_profile(img, cal, bins=4), np.log(2.0), rtol=1e-12)
    np.testing.assert_allclose(wedge_profile(img, cal, bins=4, statistic="mean_transmission"), np.log(2.0), rtol=1e-12)
    # the plate's rows only: an open-beam strip at the top (T = 1) is not part of the profile
    img[..., :2, :] = 50000
    np.testing.assert_allclose(wedge_profile(img, cal, bins=4, rows=slice(2, None)), np.log(2.0), rtol=1e-12)


def test_mean_transmission_leaves_out_bad_pixels_and_the_interquartile_mean_ignores_them():
    img = np.full((1, 1, 8, 4), 25500, np.uint16)
    img[0, 0, 0, 0], img[0, 0, 1, 0] = 0, MAX_ADU
    cal = capture_levels([1000.0], [50000.0])[None]
    for statistic in ("interquartile", "mean_transmission"):
        np.testing.assert_allclose(wedge_profile(img, cal, bins=4, statistic=statistic), np.log(2.0), rtol=1e-12)
    with pytest.raises(ValueError, match="unknown statistic 'median'"):
        wedge_profile(img, cal, statistic="median")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"expected captures \[N, C, H, W\]"):
        wedge_profile(img[0], cal)

"""What is read off a raw detector frame: its level (dark or flat) and the wedge profile, defined once.

Numpy only: the simulators, the forward models, the rig fit and the baselines all measure with these
functions, so a capture and its model are binned, floored and cleaned the same way. The torch twin that the
trained models run inside the exported graph is ``alloynet.data.transforms.binned_wedge_profile``; a test
checks that the two agree.

* A frame's *level* (``frame_level``): its mean per channel without dead (0) and saturated (``max_adu``)
  pixels, the value a session's dark and flat frames are reduced to.
* The *wedge profile* (``wedge_profile``): the capture corrected with its own levels, -ln T, summarised per
  column over the plate's rows, then averaged over each bin's columns; channels concatenated.
* Bins (``bin_edges``): column ``j`` belongs to bin ``b`` when ``floor(b W / bins) <= j < floor((b + 1) W /
  bins)``; integer arithmetic, so the forward models, the measurement and the graph agree for every width.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from alloynet import contract

MAX_ADU = int(contract.MAX_ADU)  # a 16-bit panel's largest reading: a pixel there is saturated or hot
T_MIN = 1e-4  # T below this (dead pixels, read noise at the wedge's thick end) is clamped: -ln T <= 9.2
# the mean transmission of a column is a mean over many pixels: it only needs a floor that keeps the log finite
T_FLOOR_MEAN = 1e-12
TRIM = 0.25  # the interquartile mean: a quarter of the rows dropped at each end

RowStatistic = Literal["interquartile", "mean_transmission"]


def good_pixels(image: np.ndarray, max_adu: float = MAX_ADU) -> np.ndarray:
    """True where a pixel is neither dead (0) nor saturated or hot (``max_adu``)."""
    return (image > 0) & (image < max_adu)


def frame_level(frame: np.ndarray, max_adu: float = MAX_ADU) -> list[float]:
    """Level per channel of a frame [C, H, W] (a dark or a flat level): its mean without dead and saturated pixels."""
    out = []
    for i, ch in enumerate(np.asarray(frame)):
        good = ch[good_pixels(ch, max_adu)]
        if good.size == 0:
            raise ValueError(f"channel {i + 1} has no pixel between 0 and {max_adu:g} (all dead or saturated)")
        out.append(float(good.mean()))
    return out


def bin_edges(width: int, bins: int) -> np.ndarray:
    """Column edges of ``min(bins, width)`` bins over ``width`` columns: ``floor(b * width / bins)``."""
    if width < 1 or bins < 1:
        raise ValueError(f"bin_edges: width and bins must be >= 1, got {width} and {bins}")
    n = min(bins, width)
    return (np.arange(n + 1) * width) // n


def bin_columns(per_column: np.ndarray, bins: int, average: bool = True) -> np.ndarray:
    """[..., W] -> [..., min(bins, W)]: the mean (or, ``average=False``, the sum) of each bin's columns."""
    edges = bin_edges(per_column.shape[-1], bins)
    out = np.add.reduceat(per_column, edges[:-1], axis=-1)
    return out / np.diff(edges) if average else out


def interquartile_rows(x: np.ndarray, trim: float = TRIM) -> np.ndarray:
    """[..., H, W] -> [..., W]: per column the mean of the rows after dropping the lowest and highest ``trim``
    fraction. Robust on purpose: a dead pixel, a hot one or an inclusion moves a plain mean by more than the
    alloys differ, while the interquartile mean keeps ~85 % of the mean's efficiency on Gaussian noise."""
    h = x.shape[-2]
    k = int(h * trim)
    if k == 0 or h - 2 * k < 1:
        return x.mean(axis=-2)
    return np.sort(x, axis=-2)[..., k : h - k, :].mean(axis=-2)


def neg_log_transmission(images: np.ndarray, calibration: np.ndarray, t_min: float = T_MIN) -> np.ndarray:
    """Raw captures [N, C, H, W] with their levels [N, C, 2] (dark, flat) -> -ln T, T floored at ``t_min``."""
    images = np.asarray(images, np.float64)
    cal = np.asarray(calibration, np.float64)
    dark, span = cal[..., 0][..., None, None], (cal[..., 1] - cal[..., 0])[..., None, None]
    return -np.log(np.maximum((images - dark) / span, t_min))


def wedge_profile(
    images: np.ndarray,
    calibration: np.ndarray,
    bins: int = 32,
    rows: slice = slice(None),
    statistic: RowStatistic = "interquartile",
    max_adu: float = MAX_ADU,
) -> np.ndarray:
    """Raw captures [N, C, H, W] with their levels [N, C, 2] -> binned profiles [N, C * bins], from the plate's
    ``rows`` (``alloynet.physics.simulator.plate_rows``: an open-beam strip is no part of the plate).

    ``statistic`` is how a column's rows are summarised:

    * ``"interquartile"`` (what the models and the baselines see): the interquartile mean of -ln T, T floored at
      ``T_MIN``;
    * ``"mean_transmission"`` (what the rig fit compares with its forward model, whose noise model is derived for
      it): -ln of the mean T over the column's good pixels (no dead or saturated ones), floored at ``T_FLOOR_MEAN``.
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"wedge_profile: expected captures [N, C, H, W], got shape {list(images.shape)}")
    raw = images[..., rows, :]
    if statistic == "interquartile":
        per_column = interquartile_rows(neg_log_transmission(raw, calibration))
    elif statistic == "mean_transmission":
        cal = np.asarray(calibration, np.float64)
        dark, span = cal[..., 0][..., None, None], (cal[..., 1] - cal[..., 0])[..., None, None]
        good = good_pixels(raw, max_adu)
        t = np.where(good, (raw.astype(np.float64) - dark) / span, 0.0).sum(-2) / np.maximum(good.sum(-2), 1)
        per_column = -np.log(np.maximum(t, T_FLOOR_MEAN))
    else:
        raise ValueError(
            f"wedge_profile: unknown statistic {statistic!r}; expected 'interquartile' or 'mean_transmission'"
        )
    return bin_columns(per_column, bins).reshape(len(raw), -1)


def capture_levels(dark_adu: Sequence[float], flat_adu: Sequence[float]) -> np.ndarray:
    """One capture's levels as the [C, 2] (dark, flat) array ``wedge_profile`` takes per capture."""
    return np.stack([np.asarray(dark_adu, np.float64), np.asarray(flat_adu, np.float64)], axis=-1)

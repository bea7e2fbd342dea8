"""The detector of a rig, measured: from each session's dark and flat frames (``measure_detector``) or, where a
lab's acquisition software gives only levels, from those (``detector_from_levels``); and the observation every
reference is reduced to (``capture_profile``).

From frames: dark level, read noise, fixed column offsets of the dark frame, flat level, the panel's flat-field
gain per column (flat/dark correction with *levels* leaves it in every -ln T), pixel gain non-uniformity, the
heel's row slope, and the effective number of quanta per pixel in the open beam (from the noise of block means of
the flats, which sets ``dose``). From levels: the dark and flat levels only; the rest stays nominal.

The observation is what a user computes: per column -ln of the mean over good rows of
(S - dark level) / (flat level - dark level), averaged over the columns of each bin.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from alloynet.physics.measure import capture_levels, good_pixels, wedge_profile


class RigFitError(ValueError):
    """The references cannot fit the rig (missing, inconsistent, or the fit is poor); the message says why."""


def capture_profile(
    image: np.ndarray, dark_adu: Sequence[float], flat_adu: Sequence[float], bins: int = 32
) -> np.ndarray:
    """Raw capture uint16 [C, H, W] with its dark and flat levels -> per channel, -ln of the mean over good rows
    of T per column, averaged over each bin's columns; channels concatenated [C * bins] (the wedge profile the
    rig fit's noise model is derived for: ``measure.wedge_profile``'s ``mean_transmission``)."""
    return wedge_profile(
        np.asarray(image)[None], capture_levels(dark_adu, flat_adu)[None], bins, statistic="mean_transmission"
    )[0]


@dataclass
class DetectorMeasurement:
    values: dict  # RigConfig fields (dose is set once the beam is known: see quanta_open)
    uncertainty: dict
    quanta_open: float | None  # effective quanta per pixel in the open beam, from the flats' noise
    quanta_open_sd: float | None
    jensen: np.ndarray  # [C, W]: -ln(row mean T) - row mean(-ln T) of the open beam (<= 0)
    sessions: int
    notes: list[str] = field(default_factory=list)


def measure_detector(darks: np.ndarray, flats: np.ndarray, block: int = 8) -> DetectorMeasurement:
    """Dark and flat frames of S sessions, uint16 [S, C, H, W] -> the panel's levels, patterns and noise."""
    darks, flats = np.asarray(darks), np.asarray(flats)
    if darks.ndim != 4 or darks.shape != flats.shape:
        raise RigFitError(
            f"dark and flat frames must be [sessions, C, H, W] of one shape, got {darks.shape} and {flats.shape}"
        )
    s_n, c_n, h, w = darks.shape
    good = good_pixels(darks).all((0, 1)) & good_pixels(flats).all((0, 1))  # [H, W]
    rows = np.maximum(good.sum(0), 1)
    d = np.array([[darks[s, c][good].mean() for c in range(c_n)] for s in range(s_n)])  # [S, C]
    f = np.array([[flats[s, c][good].mean() for c in range(c_n)] for s in range(s_n)])
    if np.any(f - d < 10):
        raise RigFitError("a flat frame is not brighter than its dark frame: check which frame is which")
    notes: list[str] = []
    dk = darks.astype(float)
    col = np.where(good, dk, 0.0).sum(2) / rows - d[..., None]  # [S, C, W]
    dark_columns = col.mean((0, 1))
    resid = np.where(good, dk - (col + d[..., None])[:, :, None, :], np.nan)
    read_var = float(np.nanvar(resid)) * h / max(h - 1, 1)
    read_noise = float(np.sqrt(max(read_var - 1 / 12, 0.0)))
    t = (flats.astype(float) - d[..., None, None]) / (f - d)[..., None, None]  # [S, C, H, W]
    neg_log = -np.log(np.maximum(t, 1e-6))
    log_pattern = (np.where(good, neg_log, 0.0).sum(2) / rows).mean(0)  # [C, W]
    user_pattern = (-np.log(np.maximum(np.where(good, t, 0.0).sum(2) / rows, 1e-6))).mean(0)
    row_profile = np.where(good, t, 0.0).sum((0, 1, 3)) / (good.sum(1) * s_n * c_n)  # [H]
    y = np.linspace(-1.0, 1.0, h)
    (slope, level), fit_cov = np.polyfit(y, row_profile, 1, cov=True)
    heel, heel_sd = float(slope / level), float(np.sqrt(fit_cov[0, 0]) / level)
    values = {
        "dark_offset_adu": float(d.mean()),
        "read_noise_adu": read_noise,
        "dark_column_adu": dark_columns.round(4).tolist(),
        "flat_target_adu": float(f.mean()),
        "column_gain": np.exp(-log_pattern.mean(0)).round(6).tolist(),
        "heel": heel,
    }
    unc = {
        "dark_offset_adu": float(d.std() / np.sqrt(d.size)) if d.size > 1 else read_noise / np.sqrt(good.sum()),
        "flat_target_adu": float(f.std() / np.sqrt(f.size)) if f.size > 1 else float("nan"),
        "heel": heel_sd,
    }
    quanta = quanta_sd = None
    if s_n >= 2:
        # fixed patterns out (the mean over sessions per pixel), then the noise of block means: a block much wider
        # than the PSF keeps the photon noise the light spread moves between pixels
        mean_t = t.mean(0)
        dev = np.where(good, t - mean_t, 0.0) * np.sqrt(s_n / (s_n - 1))  # unbiased per-session noise
        hb, wb = h // block, w // block
        cnt = good[: hb * block, : wb * block].reshape(hb, block, wb, block).sum((1, 3))
        sums = dev[..., : hb * block, : wb * block].reshape(s_n, c_n, hb, block, wb, block).sum((3, 5))
        ok = cnt >= block * block // 2
        per_block = (sums[..., ok] ** 2 / cnt[ok]).reshape(-1)  # var x n: per-pixel units
        span = float((f - d).mean())
        rel = float(per_block.mean()) - (read_noise**2 + 1 / 12) / span**2
        if rel > 0:
            quanta = 1.0 / rel
            quanta_sd = quanta * np.sqrt(2.0 / max(per_block.size - 1, 1))
            pixel_noise = float((np.where(good, dev, 0.0) ** 2).sum() / (good.sum() * s_n * c_n))
            smooth = ndimage.uniform_filter(mean_t.mean(0), 5, mode="reflect")
            fixed = float(np.var((mean_t.mean(0) / smooth - 1)[good])) - pixel_noise / (s_n * c_n)
            values["gain_prnu"] = float(np.sqrt(max(fixed, 0.0)))
        else:
            notes.append("the flats' noise is below read noise: no dose estimate; the nominal dose is kept")
    else:
        notes.append(
            "one session of flat frames: its noise and the panel's fixed pattern cannot be told apart, so "
            "the nominal dose and PRNU are kept (take dark/flat frames in two sessions or more)"
        )
    return DetectorMeasurement(values, unc, quanta, quanta_sd, user_pattern - log_pattern, s_n, notes)


def detector_from_levels(darks: np.ndarray, flats: np.ndarray, width: int, source: str) -> DetectorMeasurement:
    """The detector from levels alone [S, C] (what a lab's acquisition software reports): its dark and flat
    levels; the read noise, column pattern, gain non-uniformity, heel and dose stay the nominal rig's."""
    darks, flats = np.atleast_2d(np.asarray(darks, float)), np.atleast_2d(np.asarray(flats, float))
    if np.any(flats - darks < 10):
        raise RigFitError(f"{source}: a flat level is not above its dark level: check which is which")
    unc = {
        "dark_offset_adu": float(darks.std() / np.sqrt(darks.size)) if darks.size > 1 else float("nan"),
        "flat_target_adu": float(flats.std() / np.sqrt(flats.size)) if flats.size > 1 else float("nan"),
    }
    note = (
        f"no dark/flat frames: the detector's levels come from {source}; its read noise, column pattern, gain "
        "non-uniformity, heel and dose are the nominal rig's (image a dark and an open-beam frame in two "
        "sessions or more to measure them)"
    )
    return DetectorMeasurement(
        {"dark_offset_adu": float(darks.mean()), "flat_target_adu": float(flats.mean())},
        unc,
        None,
        None,
        np.zeros((darks.shape[1], width)),
        len(darks),
        [note],
    )

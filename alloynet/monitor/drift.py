"""Input drift of the line against the training data, from per-wedge profile statistics.

Each capture becomes a short vector: per channel, the mean attenuation -ln T (T = (S - dark) / (flat - dark),
the capture's own calibration levels) over the rows, averaged over ``bins`` equal segments along the wedge
axis, as a level and slopes (``profile_features``), plus the open-beam strip's bins where the rig images one.
That is the physics signal the models read, so the drifts that matter move it: a tube whose output has aged
since the flat was taken raises every bin by about the same amount (level; in the open-beam strip, where no
plate's thickness blurs it, most clearly), a detector gain map that changed reshapes it (shape), a
composition shift moves the hardening curve (slopes, for the plates of that alloy only).

The test: a two-sample Kolmogorov-Smirnov test per feature (``scipy.stats.ks_2samp``) of tonight's captures
against the reference (training captures), with a Bonferroni correction over the features: drift is declared
when any feature's p-value is below ``alpha / n_features``, so on an undrifted line the chance of a false
alarm on a given night is at most ``alpha`` (default 0.01: one in 100 nights), provided captures are
independent draws. Captures taken in one session share a flat, so they are not quite independent; the
measured false-alarm rate is what the issue's target asks for (bench/line_month.py).

Library choice: scipy (already a dependency) gives the exact test and its documented p-values. alibi-detect
0.13's ``KSDrift`` is this same per-feature KS with Bonferroni, but its wheel pins numpy<2, Pillow<11,
numba<0.60 and pulls transformers, opencv and scikit-image, under the Business Source License 1.1;
evidently 0.7 pulls a web stack (litestar, uvicorn, plotly, nltk, statsmodels); nannyml 0.13 pulls lightgbm,
FLAML, plotly, seaborn, gcsfs/s3fs and an analytics client. None adds a test we need over scipy's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

DEFAULT_BINS = 8
DEFAULT_ALPHA = 0.01


def _binned(att: np.ndarray, bins: int) -> np.ndarray:
    """[C, rows, W] attenuation -> [C, bins]: mean over the rows, then over equal segments of the wedge axis."""
    cols = att.mean(axis=1)
    edges = np.linspace(0, cols.shape[1], bins + 1).round().astype(int)
    return np.asarray([[c[a:b].mean() for a, b in zip(edges[:-1], edges[1:])] for c in cols])


def profile_features(
    image: np.ndarray, dark: Sequence[float], flat: Sequence[float], bins: int = DEFAULT_BINS, open_beam_rows: int = 0
) -> np.ndarray:
    """float64 [F]: per channel, the plate rows' profile as its level (first bin) and its slopes (bin j minus
    bin j-1: the wedge and hardening shape, which hardly depends on the plate's thickness), then, where the rig
    images an open-beam strip (``open_beam_rows``), the strip's binned attenuation (the plate is not in it, so
    it shows the tube and the detector alone). ``feature_names`` says which is which."""
    from alloynet.physics.simulator import plate_row_start

    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 2:
        img = img[None]
    start = plate_row_start(open_beam_rows)
    if img.ndim != 3 or img.shape[-1] < bins or img.shape[1] <= start:
        raise ValueError(f"image: expected [C, H, W] with W >= {bins} and H > {start}, got {list(img.shape)}")
    dark_a = np.asarray(dark, np.float64).reshape(-1, 1, 1)
    flat_a = np.asarray(flat, np.float64).reshape(-1, 1, 1)
    if dark_a.shape[0] != img.shape[0] or flat_a.shape[0] != img.shape[0]:
        raise ValueError(
            f"calibration: {dark_a.shape[0]} dark / {flat_a.shape[0]} flat level(s) for {img.shape[0]} channel(s)"
        )
    span = np.maximum(flat_a - dark_a, 1e-9)
    att = -np.log(np.clip((img - dark_a) / span, 1e-6, None))
    plate = _binned(att[:, start:], bins)
    parts = [np.concatenate([p[:1], np.diff(p)]) for p in plate]
    if open_beam_rows:
        parts += list(_binned(att[:, :open_beam_rows], bins))
    return np.concatenate(parts)


def feature_names(channels: int, bins: int = DEFAULT_BINS, open_beam_rows: int = 0) -> list[str]:
    """What each of ``profile_features``' values is: level, slope j (bin j - bin j-1), open j."""
    names = []
    for c in range(channels):
        names += [f"ch{c} level"] + [f"ch{c} slope {j}" for j in range(1, bins)]
    if open_beam_rows:
        for c in range(channels):
            names += [f"ch{c} open {j}" for j in range(bins)]
    return names


@dataclass
class DriftResult:
    detected: bool
    alpha: float
    threshold: float  # alpha / n_features (Bonferroni)
    n_reference: int
    n_current: int
    p_values: list[float] = field(default_factory=list)
    statistics: list[float] = field(default_factory=list)
    shift_sd: list[float] = field(default_factory=list)  # (current mean - reference mean) / reference sd
    drifted: list[int] = field(default_factory=list)  # features below the threshold
    names: list[str] = field(default_factory=list)
    pattern: str = "none"  # none | level | shape | too-few
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


MIN_CURRENT = 5  # fewer captures in a night than this: no test (the KS test would have no power)


def drift_test(
    reference: np.ndarray, current: np.ndarray, alpha: float = DEFAULT_ALPHA, names: Sequence[str] | None = None
) -> DriftResult:
    """Per-feature two-sample KS tests with a Bonferroni correction (see the module doc)."""
    from scipy.stats import ks_2samp

    ref, cur = np.atleast_2d(np.asarray(reference, float)), np.atleast_2d(np.asarray(current, float))
    if ref.shape[1] != cur.shape[1]:
        raise ValueError(f"reference has {ref.shape[1]} features, tonight's captures {cur.shape[1]}")
    f = ref.shape[1]
    res = DriftResult(False, alpha, alpha / f, len(ref), len(cur))
    if len(cur) < MIN_CURRENT or len(ref) < MIN_CURRENT:
        res.pattern, res.note = "too-few", f"{len(cur)} capture(s) tonight, {len(ref)} reference: no test"
        return res
    sd = ref.std(axis=0, ddof=1)
    sd = np.where(sd > 0, sd, 1e-12)
    shift = (cur.mean(axis=0) - ref.mean(axis=0)) / sd
    for j in range(f):
        t = ks_2samp(ref[:, j], cur[:, j])
        res.p_values.append(float(t.pvalue))
        res.statistics.append(float(t.statistic))
    res.shift_sd = [float(s) for s in shift]
    res.drifted = [j for j, p in enumerate(res.p_values) if p < res.threshold]
    res.detected = bool(res.drifted)
    res.names = list(names) if names is not None else [f"feature {j}" for j in range(f)]
    if res.detected:
        res.pattern = _pattern(shift, res.names, res.drifted)
    return res


def _pattern(shift: np.ndarray, names: Sequence[str], drifted: Sequence[int]) -> str:
    """How the profile moved. With an open-beam strip: every strip bin the same way by a similar amount is a
    level change (tube output, calibration levels), unevenly a detector change (shape). Without: the level
    alone is a level change; moved slopes are a shape change (a gain map, or the hardening curve of a
    composition shift: the statistics cannot tell these two apart)."""
    s = np.asarray(shift, float)
    open_ = [j for j, n in enumerate(names) if " open " in n]
    if open_ and any(j in open_ for j in drifted):
        o = s[open_]
        same_way = bool(np.all(o > 0) or np.all(o < 0))
        return "level" if same_way and np.std(o) <= 0.5 * abs(np.mean(o)) else "shape"
    return "shape" if any(" slope " in names[j] for j in drifted) else "level"


def capture_drift_scores(reference: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Per capture, how far its profile lies from the reference: the largest |z| over the features."""
    ref = np.atleast_2d(np.asarray(reference, float))
    cur = np.atleast_2d(np.asarray(current, float))
    if len(ref) < 2 or not len(cur):
        return np.zeros(len(cur))
    sd = ref.std(axis=0, ddof=1)
    sd = np.where(sd > 0, sd, 1e-12)
    return np.abs((cur - ref.mean(axis=0)) / sd).max(axis=1)


def rate_jump(
    k_now: int, n_now: int, k_before: int, n_before: int, alpha: float = 0.001, min_increase: float = 0.05
) -> tuple[bool, float]:
    """Whether tonight's rate (k_now / n_now) jumped above the earlier nights' (one-sided binomial test
    against the earlier rate, at least ``min_increase`` higher); returns (jumped, p-value)."""
    from scipy.stats import binomtest

    if n_now == 0 or n_before == 0:
        return False, 1.0
    base = (k_before + 0.5) / (n_before + 1.0)  # never exactly 0: a first flag after a clean week is a rate too
    p = float(binomtest(k_now, n_now, min(base, 1.0), alternative="greater").pvalue)
    return (p < alpha and k_now / n_now - k_before / n_before >= min_increase), p


def strip_offset(reference: np.ndarray, current: np.ndarray, channels: int, bins: int) -> np.ndarray:
    """[channels * bins]: how far the open-beam strip's binned attenuation moved, tonight's captures' mean
    minus the reference's (``profile_features`` with an open-beam strip: the strip's bins are its last
    ``channels * bins`` values). The strip holds no plate, so this is the tube and detector alone: a tube
    output change moves every bin alike, a gain-map change each bin by its own amount, and both move the plate
    rows' attenuation by the same amount per bin, as re-taking the flat would show."""
    ref, cur = np.atleast_2d(np.asarray(reference, float)), np.atleast_2d(np.asarray(current, float))
    k = channels * bins
    if ref.shape[1] != cur.shape[1] or ref.shape[1] < 2 * k:
        raise ValueError(
            f"strip offset: expected profile features with a {channels}x{bins} open-beam strip, got "
            f"{ref.shape[1]} reference and {cur.shape[1]} current features"
        )
    return cur[:, -k:].mean(axis=0) - ref[:, -k:].mean(axis=0)


def correct_by_strip(features: np.ndarray, offset: np.ndarray, channels: int, bins: int) -> np.ndarray:
    """``profile_features`` (with the strip) as if the flat had been re-taken: each plate bin less the strip's
    ``offset`` for that bin, in the level-and-slopes form (level less the first bin's offset, slope j less the
    difference of offsets j and j-1), and the strip less its offset."""
    f = np.array(features, float, ndmin=2)
    off = np.asarray(offset, float).reshape(channels, bins)
    for c in range(channels):
        f[:, c * bins : (c + 1) * bins] -= np.concatenate([off[c, :1], np.diff(off[c])])
    f[:, -channels * bins :] -= off.reshape(-1)
    return f if np.ndim(features) > 1 else f[0]

"""Composition shift within the standard, from the lab's verdicts: a supplier's plates of one alloy at the edge
of their ranges move the wedge profile a little, inside the spread of all plates (the input-drift test does not
see it), but consistently for that alloy. So the profiles of verified plates are compared with the training
plates *of the same alloy*: per alloy, each profile feature is regressed on log thickness over the training
plates; the mean residual r̄ of the alloy's n verified plates against the residuals' covariance Σ of its m
training plates gives the two-sample Hotelling T² = n m / (n + m) r̄ᵀ Σ⁻¹ r̄, whose scaled F distribution gives
its p-value on an unchanged line. An alloy alarms
when its p-value is below alpha / (number of alloys tested): at most ``alpha`` false alarms a night, when the
plates were verified at random (informative picks are chosen by their profiles and would bias the test).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats

DEFAULT_ALPHA = 0.01
# the profile's bins for this test: the hardening curve is smooth, so a few bins hold what a composition change
# moves, and each bin fewer is a dimension fewer for the few verified plates of one alloy to pin down
BINS = 4
MIN_PLATES = 3  # fewer verified plates of an alloy: not tested


@dataclass
class AlloyReference:
    coef: np.ndarray  # [2, d]: intercept and slope on log thickness
    precision: np.ndarray  # [d, d]: the inverse of the residuals' shrunk covariance
    n: int


def _design(log_t: np.ndarray) -> np.ndarray:
    return np.c_[np.ones(len(log_t)), log_t]


def fit_reference(
    features: np.ndarray, alloys: Sequence[str], thickness_mm: Sequence[float], min_plates: int = 10
) -> dict[str, AlloyReference]:
    """Per alloy with at least ``min_plates`` training plates: the thickness regression and residual precision."""
    x, y, lt = np.asarray(features, float), np.asarray(alloys), np.log(np.asarray(thickness_mm, float))
    x = x.reshape(len(y), -1)
    out = {}
    for a in sorted(set(y)):
        m = y == a
        if m.sum() < max(min_plates, 3 * x.shape[1]):  # the covariance needs several plates per feature
            continue
        design = _design(lt[m])
        coef, *_ = np.linalg.lstsq(design, x[m], rcond=None)
        res = x[m] - design @ coef
        cov = np.atleast_2d(np.cov(res, rowvar=False, ddof=2))
        cov += np.eye(len(cov)) * 1e-12 * max(float(np.trace(cov)), 1e-12)  # a constant feature stays invertible
        out[str(a)] = AlloyReference(coef, np.linalg.inv(cov), int(m.sum()))
    return out


@dataclass
class CompositionResult:
    alpha: float
    tested: dict[str, int] = field(default_factory=dict)  # alloy -> verified plates tested
    t2: dict[str, float] = field(default_factory=dict)
    p_values: dict[str, float] = field(default_factory=dict)
    shifted: list[str] = field(default_factory=list)  # alloys whose profiles moved, most significant first
    window: int = 0  # the nights whose verified plates were tested (0: as given)
    # "second": the confirmation of a suspicion (``confirm``), on plates the line called that alloy and the lab
    # verified, against the training plates the champion calls it
    stage: str = "first"

    @property
    def detected(self) -> bool:
        return bool(self.shifted)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "detected": self.detected}


def composition_test(
    reference: dict[str, AlloyReference],
    features: np.ndarray,
    alloys: Sequence[str],
    thickness_mm: Sequence[float],
    alpha: float = DEFAULT_ALPHA,
    min_plates: int = MIN_PLATES,
) -> CompositionResult:
    """Verified plates (their profile features, the lab's alloy, thickness) against the training reference."""
    x, y = np.asarray(features, float), np.asarray(alloys)
    lt = np.log(np.asarray(thickness_mm, float))
    res = CompositionResult(alpha)
    for a, ref in reference.items():
        m = y == a
        n = int(m.sum())
        if n < min_plates:
            continue
        r = (x[m] - _design(lt[m]) @ ref.coef).mean(axis=0)
        # two-sample Hotelling: the reference's own mean is an estimate from ref.n plates
        t2 = float(n * ref.n / (n + ref.n) * r @ ref.precision @ r)
        res.tested[a], res.t2[a] = n, t2
        # the covariance is estimated from ref.n - 2 residual degrees of freedom: Hotelling's F, not chi-squared
        d, dof = len(r), max(ref.n - 2, len(r) + 1)
        res.p_values[a] = float(stats.f.sf(t2 * (dof - d + 1) / (dof * d), d, dof - d + 1))
    if res.tested:
        cut = alpha / len(res.tested)
        res.shifted = sorted((a for a, p in res.p_values.items() if p < cut), key=lambda a: res.p_values[a])
    return res


WINDOWS = (1, 3, 7)  # nights: a shift shows in the last night's plates or builds up over the week


def composition_over_windows(
    reference: dict[str, AlloyReference],
    nights: Sequence[int],
    features: np.ndarray,
    alloys: Sequence[str],
    thickness_mm: Sequence[float],
    tonight: int,
    alpha: float = DEFAULT_ALPHA,
    windows: Sequence[int] = WINDOWS,
    min_plates: int = MIN_PLATES,
) -> CompositionResult:
    """The test on the verified plates of the last w nights for each w in ``windows`` (``nights``: each plate's
    night number), each at alpha / len(windows): a plate mix that changed a few nights ago is not diluted by the
    week before it, and a small shift still adds up over the week. Returns the window with the smallest p-value."""
    x, y = np.asarray(features, float).reshape(len(nights), -1), np.asarray(alloys)
    t, n = np.asarray(thickness_mm, float), np.asarray(nights)
    best: CompositionResult | None = None
    for w in windows:
        m = n > tonight - w
        r = composition_test(reference, x[m], y[m], t[m], alpha / len(windows), min_plates)
        r.alpha, r.window = alpha, w  # the night's level: the windows' share of it decided ``shifted``
        if best is None or (r.p_values and min(r.p_values.values()) < min(best.p_values.values() or [1.0])):
            best = r
    return best if best is not None else CompositionResult(alpha)


def plate_profile(features: np.ndarray, channels: int, bins: int, to_bins: int = BINS) -> np.ndarray:
    """The composition test's inputs from the drift features (``alloynet.monitor.drift.profile_features`` at
    ``bins``): per channel, the plate's profile at ``to_bins`` bins (a divisor of ``bins``; equal-width bins, so
    a coarser bin is the mean of the finer ones) as its level and slopes; the open-beam strip is left out."""
    if bins % to_bins:
        raise ValueError(f"composition test: {to_bins} bins must divide the drift features' {bins}")
    f = np.asarray(features, float)
    f = f.reshape(1, -1) if f.ndim == 1 else f
    parts = []
    for c in range(channels):
        prof = np.cumsum(f[:, c * bins : (c + 1) * bins], axis=1)  # level + slopes -> the bin values
        coarse = prof.reshape(len(f), to_bins, bins // to_bins).mean(axis=2)
        parts += [coarse[:, :1], np.diff(coarse, axis=1)]
    return np.concatenate(parts, axis=1)


# -- the second stage ---------------------------------------------------------------------------------------
# One night's random picks hold about one plate of each alloy, and the test above needs several of the shifted
# alloy's plates before its level is reached. So a suspicion (a p-value below ``SUSPECT_P``, far looser than the
# alarm's level) spends part of the next night's budget on plates the line *called* that alloy, drawn at random
# among those calls (``verify.propose(focus=...)``). Such plates are not a random sample of the alloy's plates:
# the line calls an alloy by the profile, so the called plates of an alloy are its plates whose profile lies in
# its own region. Their reference is selected by the same rule: the training plates of the alloy that the
# champion calls that alloy. A suspicion costs only verified plates; an alarm still needs the confirmation.
SUSPECT_P = 0.05
FOCUS_SHARE = 0.5  # of the night's budget, split among the suspected alloys


def fit_reference_called(
    features: np.ndarray,
    alloys: Sequence[str],
    thickness_mm: Sequence[float],
    called: Sequence[str],
    min_plates: int = 10,
) -> dict[str, AlloyReference]:
    """The reference of the second stage: per alloy, its training plates that the champion calls that alloy
    (``called``: the champion's call for each training plate)."""
    y, c = np.asarray(alloys), np.asarray(called)
    keep = y == c
    x = np.asarray(features, float).reshape(len(y), -1)
    return fit_reference(x[keep], y[keep], np.asarray(thickness_mm, float)[keep], min_plates)


def suspects(*results: CompositionResult, level: float = SUSPECT_P) -> list[str]:
    """Alloys with a p-value below ``level`` (Bonferroni over the alloys each result tested) in any of
    ``results``, most suspicious first: where the next night's second-stage plates go."""
    best: dict[str, float] = {}
    for r in results:
        for a, p in r.p_values.items():
            q = min(1.0, p * len(r.p_values))
            best[a] = min(best.get(a, 1.0), q)
    return sorted((a for a, q in best.items() if q < level), key=lambda a: best[a])


def focus_plan(suspected: Sequence[str], budget: int, share: float = FOCUS_SHARE, most: int = 2) -> dict[str, int]:
    """alloy -> second-stage plates for the next list: ``share`` of the budget, split among the ``most`` most
    suspicious alloys."""
    chosen = list(suspected)[:most]
    total = int(round(budget * share)) if chosen else 0
    return {a: total // len(chosen) + (i < total % len(chosen)) for i, a in enumerate(chosen)} if chosen else {}


# The confirmation's level. A suspicion on night d and the confirmation on the plates verified from night d + 1 on
# are tested on different plates, so on an unchanged line an alarm needs both: its chance a night is at most
# P(suspicion) x CONFIRM_ALPHA (a two-stage design), e.g. 0.2 x 0.05 = 0.01, the first stage's own level.
CONFIRM_ALPHA = 0.05


def confirm(
    reference_called: dict[str, AlloyReference],
    nights: Sequence[int],
    features: np.ndarray,
    alloys: Sequence[str],
    thickness_mm: Sequence[float],
    since: dict[str, int],
    alpha: float = CONFIRM_ALPHA,
    min_plates: int = MIN_PLATES,
) -> CompositionResult:
    """The second stage's test: per suspected alloy (``since``: alloy -> the first night of its focus picks), its
    called-and-verified plates from that night on (random and focus picks whose verdict is the line's call)
    against ``reference_called`` (``fit_reference_called``), Bonferroni over the suspected alloys at ``alpha``.
    Plates from before the suspicion are left out: they decided it."""
    x, y = np.asarray(features, float).reshape(len(nights), -1), np.asarray(alloys)
    t, n = np.asarray(thickness_mm, float), np.asarray(nights)
    out = CompositionResult(alpha, stage="second")
    suspected = [a for a in since if a in reference_called]
    for a in suspected:
        m = n >= since[a]
        r = composition_test({a: reference_called[a]}, x[m], y[m], t[m], alpha / len(suspected), min_plates)
        out.tested.update(r.tested), out.t2.update(r.t2), out.p_values.update(r.p_values)
        out.shifted += r.shifted
    out.shifted.sort(key=lambda a: out.p_values[a])
    return out

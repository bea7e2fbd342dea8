"""Correcting the forward model's mean profiles from a rig's own labelled captures.

The physics term (``alloynet.models.physics_prior``) and the physics fit read a capture against the forward
model's mean profile of each alloy at each thickness. Where the forward model describes the rig, that is the
ideal observer. A lab's rig is rarely described that well: a scatter model, a detector response or a spectrum
that differs from the simulator's moves -ln T by percents, ten times the alloys' differences. Measured on the
second rig (its own scatter, heel, PSF and gain-map code) with 1,235 labelled training captures, the physics fit
with the nominal tables scored 0.28 on the test split (ceiling 0.62), and a model trained with such a term spent
its first epochs turning it off.

The labelled training captures say how the rig differs from the model: each capture's profile minus the model's
mean profile of its alloy at its measured thickness. Per wedge, that residual is fitted by a low-degree polynomial
in thickness, once over every alloy (``shared``: what the rig does to every plate) and once per alloy (the
alloy's own: what the model gets wrong about that alloy on this rig, which includes a spectrum it does not
know). The corrected mean is the model's plus ``shared + shrink x (own - shared)``; the covariance stays the
model's. The polynomial is evaluated at the thickness clipped to the training range (beyond it, the range's
edge value), and wedge sizes between the fitted ones take the linear interpolation of their neighbours'.

Whether to correct, and how far toward each alloy's own, is decided on the validation captures: the option
with the lowest mean log-loss of the physics fit, kept only if its per-capture gain over the nominal tables is
at least ``Z_MIN`` (3) standard errors. On captures the forward model does describe (alloynet's own simulator) a
correction fits noise: its per-alloy means, whitened by a covariance that expects none of it, cost the physics
fit 0.02-0.03 on the test split (0.566 -> 0.536 at shrink 1) and the validation gain is nil (grid: -0.002 in
log-loss), so the nominal tables stay. On the second rig: validation log-loss 14.3 -> 0.87, test 0.28 -> 0.55.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from alloynet.physics.observer import by_nearest_wedge

DEGREE = 2  # polynomial in thickness per profile bin
SHRINK = (0.0, 0.25, 0.5, 0.75, 1.0)  # 0: the shared correction only; 1: each alloy's own
MIN_PER_ALLOY = 20  # training captures of an alloy on a wedge to fit its own correction
MIN_SHARED = 30  # training captures on a wedge to correct that wedge at all
MIN_VAL = 30  # validation captures to decide
# The chosen correction's validation gain over the nominal tables, in standard errors of the per-capture gain. The
# best of five options is kept, so 2 sd would let noise through too often: on the study's data (alloynet's own
# simulator, 90 validation captures) the best option gained 1.9 sd; on the second rig the gain is 10-11 sd.
Z_MIN = 3.0


@dataclass
class MeanCorrection:
    """Additive corrections of the forward model's mean profiles: per fitted wedge, per alloy, a polynomial in
    thickness (``coef[wedge]``: [K, degree + 1, D], highest power first, ``np.vander`` order)."""

    coef: dict[float, np.ndarray]
    bounds: tuple[float, float]  # thickness is clipped to the training range before evaluating

    def offsets(self, wedge_mm: float, grid_mm: np.ndarray) -> np.ndarray:
        """The correction [K, G, D] of the mean profiles on thickness grid ``grid_mm`` for ``wedge_mm``: the
        fitted wedge's own, the linear interpolation of the two fitted wedges around it, or the nearest's."""
        wedges = np.array(sorted(self.coef))
        t = np.clip(np.asarray(grid_mm, float), *self.bounds)

        def at(w: float) -> np.ndarray:
            c = self.coef[float(w)]
            v = np.vander(t, c.shape[1])  # [G, degree + 1]
            return np.einsum("gp,kpd->kgd", v, c)

        w = float(wedge_mm)
        if w <= wedges[0] or w >= wedges[-1] or w in self.coef:
            return at(wedges[np.abs(wedges - w).argmin()])
        hi = int(np.searchsorted(wedges, w))
        lo_w, hi_w = wedges[hi - 1], wedges[hi]
        f = (w - lo_w) / (hi_w - lo_w)
        return (1 - f) * at(lo_w) + f * at(hi_w)


@dataclass
class CorrectionChoice:
    """What ``choose_correction`` decided, and on what evidence."""

    correction: MeanCorrection | None
    shrink: float | None
    val_logloss: dict[str, float] = field(default_factory=dict)  # "nominal" and each shrink option
    gain_z: float = 0.0  # the chosen option's paired gain, in sd
    train_captures: int = 0
    val_captures: int = 0
    reason: str = ""
    decided: bool = False  # the validation comparison was made

    @property
    def chosen_logloss(self) -> float:
        """The held-out log-loss of what was chosen: the tables as they are, or the best correction option."""
        if self.correction is None or len(self.val_logloss) < 2:
            return float(self.val_logloss.get("nominal", np.inf))
        return min(v for k, v in self.val_logloss.items() if k != "nominal")

    def summary(self) -> dict:
        return {
            "corrected": self.correction is not None,
            "decided": self.decided,
            "shrink": self.shrink,
            "val_logloss": {k: round(v, 4) for k, v in self.val_logloss.items()},
            "gain_z": round(float(self.gain_z), 2),
            "train_captures": self.train_captures,
            "val_captures": self.val_captures,
            "reason": self.reason,
        }


Fits = dict[float, tuple[np.ndarray, list[np.ndarray | None]]]  # wedge -> (shared, per alloy or None)


def fit_residuals(
    observers: Mapping[float, object],
    profiles: np.ndarray,
    y: np.ndarray,
    thickness_mm: np.ndarray,
    wedges_mm: np.ndarray,
    degree: int = DEGREE,
    min_shared: int = MIN_SHARED,
    min_per_alloy: int = MIN_PER_ALLOY,
    own_degree: int | None = None,
) -> Fits:
    """Per wedge with at least ``min_shared`` captures: (shared [degree + 1, D], per alloy [degree + 1, D] or
    None where the alloy has fewer than ``min_per_alloy``), the polynomial fits of profile - model mean; each
    alloy's own of degree ``own_degree`` (at most ``degree``; default the same), its higher powers zero."""
    ok = np.isfinite(thickness_mm) & (y >= 0)
    profiles, y, thickness_mm, wedges_mm = profiles[ok], y[ok], thickness_mm[ok], wedges_mm[ok]
    out = {}
    for w, m in by_nearest_wedge(wedges_mm, list(observers)).items():
        if len(m) < min_shared:
            continue
        obs, x, c, t = observers[w], profiles[m], y[m], thickness_mm[m]
        deg = int(min(degree, len(np.unique(np.round(t, 4))) - 1))
        if deg < 0:
            continue
        model = np.empty_like(x)
        for k, lk in enumerate(obs.likelihoods):
            sel = c == k
            if sel.any():  # the model's mean at each capture's thickness, interpolated on its fine grid
                model[sel] = np.stack([np.interp(t[sel], lk.grid, lk.mean[:, d]) for d in range(x.shape[1])], 1)
        r, v = x - model, np.vander(t, deg + 1)
        shared = np.linalg.lstsq(v, r, rcond=None)[0]
        od = deg if own_degree is None else int(min(own_degree, deg))
        pad = np.zeros((deg - od, r.shape[1]))
        own = [
            np.concatenate([pad, np.linalg.lstsq(v[c == k][:, deg - od :], r[c == k], rcond=None)[0]])
            if (c == k).sum() >= min_per_alloy
            else None
            for k in range(len(obs.likelihoods))
        ]
        out[float(w)] = (shared, own)
    return out


def correction_at(fits: Fits, shrink: float, bounds: tuple[float, float]) -> MeanCorrection:
    coef = {}
    for w, (shared, own) in fits.items():
        coef[w] = np.stack([shared + shrink * ((o if o is not None else shared) - shared) for o in own])
    return MeanCorrection(coef, (float(bounds[0]), float(bounds[1])))


def apply_correction(observers: Mapping[float, object], correction: MeanCorrection | None) -> dict[float, object]:
    """Copies of ``observers`` (``PhysicsObserver`` per wedge) whose alloys' mean profiles carry the correction
    (covariances, grid and prior weights shared with the originals); the originals unchanged."""
    if correction is None:
        return dict(observers)
    out = {}
    for w, obs in observers.items():
        new = copy.copy(obs)
        off = correction.offsets(w, obs.likelihoods[0].grid)
        new.likelihoods = []
        for k, lk in enumerate(obs.likelihoods):
            c = copy.copy(lk)
            c.mean = lk.mean + off[k]
            new.likelihoods.append(c)
        out[w] = new
    return out


def _nll(observers: Mapping[float, object], profiles: np.ndarray, y: np.ndarray, wedges_mm: np.ndarray) -> np.ndarray:
    """Per capture, -log of the physics fit's posterior of its true alloy (flat prior over the alloys)."""
    from scipy.special import log_softmax

    out = np.empty(len(y))
    for w, idx in by_nearest_wedge(wedges_mm, list(observers)).items():
        ll, _ = observers[w].log_likelihoods(profiles[idx])
        out[idx] = -log_softmax(ll, axis=1)[np.arange(len(idx)), y[idx]]
    return out


def too_few(n_train: int, n_val: int) -> CorrectionChoice | None:
    """The choice when there are too few labelled captures to decide (nominal tables), else None."""
    if n_val >= MIN_VAL and n_train:
        return None
    why = f"{n_val} validation captures (need {MIN_VAL} to decide)" if n_val < MIN_VAL else "no training captures"
    return CorrectionChoice(None, None, train_captures=n_train, val_captures=n_val, reason=f"{why}: nominal tables")


def choose_correction(
    observers: Mapping[float, object],
    train: Mapping[str, np.ndarray],
    val: Mapping[str, np.ndarray],
    bounds: tuple[float, float],
    shrinks: Sequence[float] = SHRINK,
    degree: int = DEGREE,
    gate: bool = True,
) -> CorrectionChoice:
    """Fit the corrections on ``train`` and pick one, or none, on ``val`` (both {profiles, y, thickness_mm,
    wedge_mm}: labelled captures of the rig, e.g. ``alloynet.evaluate.baselines.dataset_arrays``). Without
    ``gate`` the best option is kept whatever its margin over the tables as they are (for a caller that has
    other evidence that the captures carry a correction)."""
    n_train, n_val = int(len(train["y"])), int(len(val["y"]))
    few = too_few(n_train, n_val)
    if few is not None:
        return few
    fits = fit_residuals(observers, train["profiles"], train["y"], train["thickness_mm"], train["wedge_mm"], degree)
    if not fits:
        return CorrectionChoice(
            None,
            None,
            train_captures=n_train,
            val_captures=n_val,
            reason=f"no wedge with {MIN_SHARED} labelled training captures: nominal tables",
        )
    val_y = np.asarray(val["y"], int)
    nominal = _nll(observers, val["profiles"], val_y, val["wedge_mm"])
    losses = {"nominal": float(nominal.mean())}
    best, best_nll = None, None
    for s in shrinks:
        nll = _nll(apply_correction(observers, correction_at(fits, s, bounds)), val["profiles"], val_y, val["wedge_mm"])
        losses[f"{s:g}"] = float(nll.mean())
        if best_nll is None or nll.mean() < best_nll.mean():
            best, best_nll = s, nll
    gain = nominal - best_nll
    z = float(gain.mean() / max(gain.std(ddof=1) / np.sqrt(len(gain)), 1e-12))
    if gate and z < Z_MIN:
        return CorrectionChoice(
            None,
            None,
            losses,
            z,
            n_train,
            n_val,
            f"the best correction (shrink {best:g}) gains {gain.mean():.3f} in validation log-loss, "
            f"{z:.1f} sd (need {Z_MIN:g}): nominal tables",
            decided=True,
        )
    return CorrectionChoice(
        correction_at(fits, best, bounds),
        best,
        losses,
        z,
        n_train,
        n_val,
        f"validation log-loss {losses['nominal']:.3f} -> {best_nll.mean():.3f} ({z:.1f} sd) with "
        f"shrink {best:g}: tables corrected from {n_train} training captures",
        decided=True,
    )


# Few labelled captures: the decision is cross-validated over the training and validation captures together
# (folds by plate), and the polynomial's degree is chosen with the shrinkage, so the correction is as rich as
# the captures can carry: a constant offset per profile bin from a handful of plates, each alloy's own
# thickness curve from hundreds. Below CV_BELOW validation captures the validation split alone is too small to
# decide (MIN_VAL) or too noisy to pick among fifteen options.
CV_BELOW = 150
CV_FOLDS = 5
DEGREES = (0, 1, 2)
CV_MIN_SHARED = 8  # captures on a wedge (per fold's fit) for a shared correction
CV_MIN_PER_ALLOY = 6  # captures of an alloy on a wedge for its own
# The best of fifteen options, scored on folds that share their fits' captures: a stricter bar than Z_MIN. On a
# rig the forward model describes (its own simulated profiles, 8 + 2 plates per alloy) the best option reached
# 3.1 sd on one draw of two; on the second rig the kept corrections gain 8-13 sd from 10-50 plates per alloy.
Z_MIN_CV = 4.0
# A handful of captures where the nominal tables are confidently wrong (log-loss 40 against chance's 1.6) gains
# tens of nats on almost every capture with a spread that keeps z under Z_MIN_CV (5 plates per alloy: 3.9 sd).
# The sign of the per-capture gain says it as well: kept also when so many captures gain that a coin would do so
# with probability under SIGN_P (one-sided binomial), after multiplying by the options tried.
SIGN_P = 1e-3


def _cv_thresholds(degree: int) -> tuple[int, int]:
    return max(CV_MIN_SHARED, 3 * (degree + 1)), max(CV_MIN_PER_ALLOY, 2 * (degree + 1))


def _folds(groups: np.ndarray, k: int, seed: int) -> np.ndarray:
    """A fold per capture, whole plates (``groups``) to one fold, plates dealt in a seeded order."""
    plates = np.unique(groups)
    order = np.random.default_rng(np.random.SeedSequence([seed, 0xC0F])).permutation(len(plates))
    fold_of = {p: i % k for i, p in zip(range(len(plates)), plates[order])}
    return np.array([fold_of[g] for g in groups])


def _option(degree: int, own_degree: int, shrink: float) -> str:
    own = f", own degree {own_degree}" if own_degree != degree and shrink > 0 else ""
    return f"degree {degree}{own} shrink {shrink:g}"


def _sign_p(gain: np.ndarray) -> float:
    """One-sided binomial p of at least this many captures gaining, were gain and loss equally likely."""
    from scipy.stats import binomtest

    moved = gain[gain != 0]
    return (
        float(binomtest(int((moved > 0).sum()), len(moved), 0.5, alternative="greater").pvalue) if len(moved) else 1.0
    )


def choose_correction_cv(
    observers: Mapping[float, object],
    train: Mapping[str, np.ndarray],
    val: Mapping[str, np.ndarray],
    bounds: tuple[float, float],
    train_groups: Sequence,
    val_groups: Sequence,
    seed: int = 0,
    shrinks: Sequence[float] = SHRINK,
    degrees: Sequence[int] = DEGREES,
    folds: int = CV_FOLDS,
    gate: bool = True,
) -> CorrectionChoice:
    """``choose_correction`` for few captures: every (degree, each alloy's own degree, shrink) option scored by
    its cross-validated log-loss over the training and validation captures together (``*_groups``: the plate of
    each capture; folds by plate), kept only at ``Z_MIN_CV`` sd of per-capture gain over the nominal tables (or
    when nearly every capture gains: ``SIGN_P``); the kept option is then fitted on the training captures alone
    (the validation ones still pick the epoch and calibrate the answers on tables that never saw them).
    ``gate=False``: as ``choose_correction``'s."""
    n_train, n_val = int(len(train["y"])), int(len(val["y"]))
    if not n_train:
        return CorrectionChoice(
            None, None, train_captures=0, val_captures=n_val, reason="no training captures: nominal tables"
        )
    pool = {
        k: np.concatenate([np.asarray(train[k]), np.asarray(val[k])])
        for k in ("profiles", "y", "thickness_mm", "wedge_mm")
    }
    pool["y"] = pool["y"].astype(int)
    groups = np.concatenate([np.asarray(train_groups, str), np.asarray(val_groups, str)])
    fold = _folds(groups, min(folds, len(np.unique(groups))), seed)
    nominal = _nll(observers, pool["profiles"], pool["y"], pool["wedge_mm"])
    # (shared degree, each alloy's own degree, shrink); with shrink 0 the own degree does not matter
    options = [(d, od, s) for d in degrees for od in range(d + 1) for s in shrinks if s > 0 or od == d]
    cv = {o: nominal.copy() for o in options}
    for f in np.unique(fold):
        fit_on, held = fold != f, np.nonzero(fold == f)[0]
        for d, od in sorted({(d, od) for d, od, _ in options}):
            fits = fit_residuals(
                observers,
                pool["profiles"][fit_on],
                pool["y"][fit_on],
                pool["thickness_mm"][fit_on],
                pool["wedge_mm"][fit_on],
                d,
                *_cv_thresholds(d),
                own_degree=od,
            )
            if not fits:
                continue
            for s in [s for dd, oo, s in options if (dd, oo) == (d, od)]:
                corrected = apply_correction(observers, correction_at(fits, s, bounds))
                cv[(d, od, s)][held] = _nll(corrected, pool["profiles"][held], pool["y"][held], pool["wedge_mm"][held])
    losses = {"nominal": float(nominal.mean()), **{_option(*o): float(v.mean()) for o, v in cv.items()}}
    (d, od, s), best = min(cv.items(), key=lambda kv: float(kv[1].mean()))
    gain = nominal - best
    z = float(gain.mean() / max(gain.std(ddof=1) / np.sqrt(len(gain)), 1e-12)) if len(gain) > 1 else 0.0
    n = f"{n_train} training + {n_val} validation captures, {len(np.unique(fold))}-fold by plate"
    sign_p = _sign_p(gain) * len(cv)
    # a handful of captures failing to reject the nominal tables says nothing of whether the forward model
    # describes the rig (what the trainer's describes_rig reads from ``decided``)
    enough = len(gain) >= MIN_VAL
    if gate and z < Z_MIN_CV and sign_p >= SIGN_P:
        return CorrectionChoice(
            None,
            None,
            losses,
            z,
            n_train,
            n_val,
            f"the best correction ({_option(d, od, s)}) gains {gain.mean():.3f} in "
            f"cross-validated log-loss ({n}), {z:.1f} sd (need {Z_MIN_CV:g}; sign test p "
            f"{min(sign_p, 1.0):.2g}, need {SIGN_P:g}): nominal tables",
            decided=enough,
        )
    fits = fit_residuals(
        observers,
        train["profiles"],
        np.asarray(train["y"], int),
        train["thickness_mm"],
        train["wedge_mm"],
        d,
        *_cv_thresholds(d),
        own_degree=od,
    )
    if not fits:
        return CorrectionChoice(
            None,
            None,
            losses,
            z,
            n_train,
            n_val,
            f"too few training captures on any wedge to fit the chosen correction (degree {d}): nominal tables",
            decided=True,
        )
    return CorrectionChoice(
        correction_at(fits, s, bounds),
        s,
        losses,
        z,
        n_train,
        n_val,
        f"cross-validated log-loss {losses['nominal']:.3f} -> {best.mean():.3f} ({z:.1f} sd, {n}) "
        f"with {_option(d, od, s)}: tables corrected from {n_train} training captures",
        decided=True,
    )

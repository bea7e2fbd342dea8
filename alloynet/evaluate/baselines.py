"""Two non-deep baselines that every evaluation reports beside the model.

* ``PhysicsFit``: for each alloy, fit the plate thickness to the measured wedge profile with the rig's
  forward model and pick the most likely alloy (the ideal observer's likelihood applied to real captures,
  ``alloynet.physics.observer``). It needs no training data and classifies any alloy in the table, a
  user-added one included; it is only as good as the forward model's match to the rig.
* ``GaussianProfile`` (QDA-like): per alloy and wedge, the mean profile as a smooth function of thickness and a
  residual covariance, fitted on the training captures; the thickness is marginalised the same way.

Both read the same observation the models see: the capture corrected with its own calibration, -ln T, the
interquartile row mean per column, averaged into ``bins`` bins (``alloynet.physics.measure.wedge_profile``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from alloynet.physics.measure import wedge_profile
from alloynet.physics.observer import PhysicsObserver, ThicknessMarginal, ThicknessPrior, by_nearest_wedge
from alloynet.physics.profile import profile_model_for

BINS = 32


def measured_profiles(
    images: np.ndarray, calibration: np.ndarray, bins: int = BINS, rows: slice = slice(None)
) -> np.ndarray:
    """Raw captures [N, C, H, W] with their calibration [N, C, 2] -> binned profiles [N, C * bins], from the
    plate's ``rows`` (``alloynet.physics.simulator.plate_rows``: an open-beam strip is no part of the plate):
    the models' own observation (``alloynet.physics.measure.wedge_profile``)."""
    return wedge_profile(images, calibration, bins, rows)


def dataset_arrays(ds, rows: slice = slice(None), indices: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """Profiles (of the plate's ``rows``), labels, thickness and wedge of every capture of a ``CaptureDataset``
    (or of the captures at ``indices``)."""
    plain = ds.unaugmented() if hasattr(ds, "unaugmented") else ds
    idx = list(range(len(plain))) if indices is None else [int(i) for i in indices]
    images, cals = zip(*[(x.numpy(), c.numpy()) for x, c, _, _ in (plain[i] for i in idx)])
    meta = plain.rows.iloc[idx]
    return {
        "profiles": measured_profiles(np.stack(images), np.stack(cals), rows=rows),
        "y": meta.label.to_numpy(int),
        "thickness_mm": meta.thickness_mm.to_numpy(float),
        "wedge_mm": meta.wedge_mm.to_numpy(float),
    }


def _softmax(ll: np.ndarray) -> np.ndarray:
    ll = ll - ll.max(1, keepdims=True)
    p = np.exp(ll)
    return p / p.sum(1, keepdims=True)


class PhysicsFit:
    """The forward-model classifier for captures from rigs with these settings (one per wedge size)."""

    def __init__(
        self,
        rigs: Mapping[float, object],
        prior: ThicknessPrior,
        alloys: Sequence[str],
        seed: int = 0,
        plates: int = 100,
    ):
        self.alloys = list(alloys)
        self.observers = {
            float(w): PhysicsObserver(profile_model_for(rig, BINS), self.alloys, prior, plates=plates, seed=seed)
            for w, rig in rigs.items()
        }

    def predict(self, profiles: np.ndarray, wedges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(class probabilities [N, K], thickness fitted under the most likely alloy [N])."""
        probs, thick = np.zeros((len(profiles), len(self.alloys))), np.zeros(len(profiles))
        for w, idx in by_nearest_wedge(wedges, list(self.observers)).items():
            ll, t = self.observers[w].log_likelihoods(profiles[idx])
            probs[idx] = _softmax(ll)
            thick[idx] = t[np.arange(len(idx)), ll.argmax(1)]
        return probs, thick


class GaussianProfile:
    """Per alloy and wedge: profile ~ N(poly(t), S), t marginalised over the data's thickness prior."""

    def __init__(
        self, num_classes: int, prior: ThicknessPrior, degree: int = 3, shrinkage: float = 0.2, grid: int = 300
    ):
        self.k, self.prior, self.degree, self.shrinkage, self.grid = num_classes, prior, degree, shrinkage, grid
        self.models: dict[tuple[int, float], ThicknessMarginal] = {}

    def fit(self, profiles: np.ndarray, y: np.ndarray, thickness_mm: np.ndarray, wedges: np.ndarray) -> GaussianProfile:
        for w in np.unique(wedges):
            for c in range(self.k):
                m = (y == c) & (wedges == w)
                if m.sum() < 3:
                    continue
                self.models[(c, float(w))] = self._fit_one(profiles[m], thickness_mm[m])
        if not self.models:
            raise ValueError("GaussianProfile: no alloy has 3 training captures on any wedge")
        return self

    def _fit_one(self, x: np.ndarray, t: np.ndarray) -> ThicknessMarginal:
        deg = int(min(self.degree, max(0, len(t) // 10), len(np.unique(t)) - 1))
        coef, *_ = np.linalg.lstsq(np.vander(t, deg + 1), x, rcond=None)
        resid = x - np.vander(t, deg + 1) @ coef
        cov = np.cov(resid, rowvar=False) if len(x) > 1 else np.eye(x.shape[1])
        cov = (1 - self.shrinkage) * cov + self.shrinkage * np.diag(np.diag(cov)) + 1e-10 * np.eye(x.shape[1])
        lo, hi = self.prior.bounds()
        grid = np.linspace(lo * 0.97, hi * 1.03, self.grid)
        return ThicknessMarginal(grid, np.vander(grid, deg + 1) @ coef, np.array([(lo + hi) / 2]), [cov], self.prior)

    def predict(self, profiles: np.ndarray, wedges: np.ndarray) -> np.ndarray:
        """Class probabilities [N, K] (a class with no model on a capture's wedge gets probability 0)."""
        ll = np.full((len(profiles), self.k), -np.inf)
        for w, idx in by_nearest_wedge(wedges, sorted({w for _, w in self.models})).items():
            for c in range(self.k):
                if (c, w) in self.models:
                    ll[idx, c] = self.models[(c, w)].loglik(profiles[idx])[0]
        return _softmax(ll)


def run_baselines(
    train: Mapping[str, np.ndarray] | None,
    test: Mapping[str, np.ndarray],
    rigs: Mapping[float, object],
    prior: ThicknessPrior,
    alloys: Sequence[str],
    seed: int = 0,
) -> dict[str, dict[str, np.ndarray]]:
    """Both baselines on ``test`` ({profiles, y, thickness_mm, wedge_mm}); the Gaussian one needs ``train``.
    Returns {name: {"probs": [N, K], "thickness_mm": [N] (physics fit only)}}, or {name: {"skipped": why}}
    for a baseline the data cannot support (the Gaussian one needs 3 training captures of an alloy)."""
    out: dict[str, dict[str, np.ndarray]] = {}
    probs, thick = PhysicsFit(rigs, prior, alloys, seed).predict(test["profiles"], test["wedge_mm"])
    out["physics_fit"] = {"probs": probs, "thickness_mm": thick}
    try:
        if train is None or not len(train["y"]):
            raise ValueError("no training split")
        g = GaussianProfile(len(alloys), prior).fit(
            train["profiles"], train["y"], train["thickness_mm"], train["wedge_mm"]
        )
        out["gaussian_profile"] = {"probs": g.predict(test["profiles"], test["wedge_mm"])}
    except ValueError as exc:
        out["gaussian_profile"] = {"skipped": str(exc)}
    return out

"""The ideal observer: how well could *any* classifier separate the alloys on this rig?

Observation: the wedge profile, -ln of the flat/dark-corrected signal averaged across the non-wedge axis
(rows), binned along the wedge axis (``alloynet.physics.profile``). For a plate that is uniform across rows
this profile carries (to first order) all the alloy information in the capture.

Plates vary inside their standard's composition ranges and within the rolling tolerance (drawn exactly as
the simulator draws them); detector noise and plate texture are Gaussian. Under this model:

* pairwise d' = sqrt(dmu' S^-1 dmu) and the two-class Bayes error Phi(-d'/2), with thickness known, and
  with thickness unknown (the second alloy's thickness chosen to look most like the first), at a few
  thicknesses spanning the data's prior;
* what physics allows for the multi-class decision, as a bracket (``alloynet.physics.bracket``): the
  balanced accuracy of the mixture observer (a classifier a line can run: the lower edge) and of the Bayes
  observer also told each alloy's candidate compositions (no observer of the profile does better: the upper
  edge), each with its Monte-Carlo standard error, on a balanced test set whose plates are drawn from the data's
  thickness prior (a list of nominal values, or any value in a range), the observers knowing only that prior;
  also the heavy (Cu/Zn-bearing) vs light decision. Model accuracy is judged against this bracket.
  ``ceiling_accuracy`` is the lower edge (what earlier reports called the ceiling, now from the better
  observer); ``ceiling_upper`` the upper edge.

Both edges hold for the profile model (Gaussian detector noise and texture on the row-mean profile);
``bench/bracket.py`` checks the lower edge against the simulator's own captures (docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from itertools import combinations

import numpy as np
from scipy import optimize, stats

from alloynet.physics.alloys import (
    ALLOY_NAMES,
    STANDARD_ALLOYS,
    AlloyTable,
    get_alloy,
    sample_plate,
)
from alloynet.physics.bracket import DEFAULT_POOL, bracket
from alloynet.physics.observer import ThicknessPrior, noise_cov
from alloynet.physics.profile import profile_model_for
from alloynet.physics.simulator import RigConfig


@dataclass
class PairSeparability:
    a: str
    b: str
    d_known_nominal: float  # thickness known, exact nominal plates: detector noise only
    d_known: float  # thickness known (nominal), plates vary within spec and tolerance
    d_unknown: float  # thickness unknown: b's thickness chosen to mimic a, plates vary
    bayes_error_known: float
    bayes_error_unknown: float


@dataclass
class SeparabilityReport:
    rig: dict
    thicknesses_mm: list[float]  # where the pairs are evaluated (the prior's values, or a spread of it)
    pairs: list[PairSeparability]
    ceiling_accuracy: float  # the bracket's lower edge: balanced accuracy of the mixture observer
    ceiling_recall: dict[str, float]  # its recall per alloy
    confusion: list[list[float]]  # its confusion, row-normalised, true x predicted
    alloys: list[str]
    prior: str = ""  # the thickness prior, in words
    group_accuracy: float | None = None  # heavy vs light (lower edge), balanced over the two groups
    notes: list[str] = field(default_factory=list)
    ceiling_se: float = float("nan")  # Monte-Carlo standard error of the lower edge
    ceiling_upper: float = float("nan")  # the bracket's upper edge (oracle observer)
    ceiling_upper_se: float = float("nan")
    group_accuracy_upper: float = float("nan")
    bracket_width: float = float("nan")  # upper - lower, read off the same draws
    bracket_width_se: float = float("nan")
    hard_pairs: list[dict] = field(default_factory=list)  # by the lower edge's confusion, hardest first

    def to_dict(self) -> dict:
        return asdict(self)

    def markdown(self) -> str:
        lines = [
            f"Ideal-observer separability: kVp {self.rig.get('kvp')}, wedge {self.rig.get('wedge_mm')} mm "
            f"{self.rig.get('wedge_material')}, dose {self.rig.get('dose', 0):.3g} photons/pixel, "
            f"{self.rig.get('height')}x{self.rig.get('width')} px, {self.prior}",
            "",
            "| pair | d' (t known, nominal plates) | d' (t known) | d' (t unknown) | Bayes error (t known) "
            "| Bayes error (t unknown) |",
            "|---|---|---|---|---|---|",
        ]
        for p in self.pairs:
            lines.append(
                f"| {p.a} vs {p.b} | {p.d_known_nominal:.2f} | {p.d_known:.2f} | {p.d_unknown:.2f} | "
                f"{p.bayes_error_known:.3f} | {p.bayes_error_unknown:.3f} |"
            )
        lines += [
            "",
            f"**Physics bracket (balanced accuracy, {self.prior}): {self.ceiling_accuracy:.3f} ± "
            f"{self.ceiling_se:.3f} (mixture observer) to {self.ceiling_upper:.3f} ± "
            f"{self.ceiling_upper_se:.3f} (oracle observer); width {self.bracket_width:.3f} ± "
            f"{self.bracket_width_se:.3f}**",
        ]
        if self.group_accuracy is not None:
            lines += [
                "",
                f"Heavy (Cu/Zn-bearing) vs light: {self.group_accuracy:.3f} to {self.group_accuracy_upper:.3f}",
            ]
        lines += ["", "| alloy | recall, lower edge |", "|---|---|"]
        lines += [f"| {a} | {r:.3f} |" for a, r in self.ceiling_recall.items()]
        lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines)


def _plate_stats(model, alloy: str, t: float, n: int, rng: np.random.Generator, alloy_table: AlloyTable):
    """Mean profile, plate-to-plate covariance (composition and rolling tolerance) and the detector +
    texture covariance of ``n`` plates of nominal thickness ``t``."""
    profiles = []
    for i in range(n):
        p = sample_plate(alloy, t, rng, f"io-{i}", alloy_table=alloy_table)
        profiles.append(model.profile(p.fractions(), p.density_g_cm3, p.thickness_mm))
    profiles = np.asarray(profiles)
    a = get_alloy(alloy, alloy_table)
    return profiles.mean(0), np.cov(profiles, rowvar=False), noise_cov(model, a.nominal_fractions(), a.density_g_cm3, t)


def _mahalanobis(delta: np.ndarray, cov: np.ndarray) -> float:
    return float(np.sqrt(max(delta @ np.linalg.solve(cov, delta), 0.0)))


def _pair(
    model, a: str, b: str, stats_: dict, thicknesses: Sequence[float], alloy_table: AlloyTable
) -> PairSeparability:
    dk_nom, dk, du = [], [], []
    for t in thicknesses:
        mu_a, cov_a, ncov = stats_[(a, t)]
        mu_b, cov_b, _ = stats_[(b, t)]
        na, nb = get_alloy(a, alloy_table), get_alloy(b, alloy_table)
        nominal_a = model.profile(na.nominal_fractions(), na.density_g_cm3, t)
        nominal_b = model.profile(nb.nominal_fractions(), nb.density_g_cm3, t)
        detector = np.diag(model.noise_var(na.nominal_fractions(), na.density_g_cm3, t))  # noise alone
        dk_nom.append(_mahalanobis(nominal_a - nominal_b, detector))
        cov = ncov + (cov_a + cov_b) / 2
        dk.append(_mahalanobis(mu_a - mu_b, cov))
        # Thickness unknown: shift b's (mean) plate thickness to look as much like a as possible.
        offset = mu_b - nominal_b  # mean effect of in-spec impurities at this thickness

        def distance(tb: float, mu_a=mu_a, nb=nb, offset=offset, cov=cov) -> float:
            return _mahalanobis(mu_a - (model.profile(nb.nominal_fractions(), nb.density_g_cm3, tb) + offset), cov)

        res = optimize.minimize_scalar(
            distance,
            bounds=(0.5 * t, 1.5 * t),
            method="bounded",
            options={"xatol": 1e-5},
        )
        du.append(float(res.fun))
    return PairSeparability(
        a,
        b,
        float(np.mean(dk_nom)),
        float(np.mean(dk)),
        float(np.mean(du)),
        float(np.mean([stats.norm.cdf(-d / 2) for d in dk])),
        float(np.mean([stats.norm.cdf(-d / 2) for d in du])),
    )


def separability(
    rig: RigConfig | None = None,
    alloys: Sequence[str] = ALLOY_NAMES,
    thicknesses_mm: Sequence[float] | None = None,
    plates: int = 200,
    mc_samples: int = 2000,
    bins: int = 32,
    seed: int = 0,
    profile_model=None,
    thickness_range_mm: Sequence[float] | None = None,
    alloy_table: AlloyTable = STANDARD_ALLOYS,
    pool: int = DEFAULT_POOL,
) -> SeparabilityReport:
    """Pairwise d' / Bayes error and the multi-class bracket for the given rig settings (seeded): ``mc_samples``
    test plates, ``pool`` compositions per alloy in the observers' mixtures.

    The thickness prior is a list of nominal values (``thicknesses_mm``, default 1, 2 and 5 mm) or any
    value in ``thickness_range_mm``; ``profile_model`` replaces the nominal rig's (e.g. the second rig's);
    ``alloy_table`` holds the alloys (the standard five unless a user adds others)."""
    rig = rig or RigConfig()
    rng = np.random.default_rng(seed)
    model = profile_model if profile_model is not None else profile_model_for(rig, bins)
    prior = ThicknessPrior.of(thicknesses_mm, thickness_range_mm)
    where = [float(t) for t in prior.representative()]
    stats_ = {(a, t): _plate_stats(model, a, t, plates, rng, alloy_table) for a in alloys for t in where}
    pairs = [_pair(model, a, b, stats_, where, alloy_table) for a, b in combinations(alloys, 2)]
    br = bracket(
        model, alloys, prior, draws=mc_samples, pool=pool, seed=seed, alloy_table=alloy_table, rig=rig.model_dump()
    )
    lo, up = br.lower, br.upper
    notes = [
        "Observation: the row-averaged wedge profile; plates vary inside their standard's composition ranges "
        "and within +-1.5 % thickness tolerance, exactly as the simulator draws them.",
        "Gaussian model of detector noise and texture; pairwise d' with the composition spread as a covariance, "
        "Bayes error Phi(-d'/2) for equal priors.",
    ] + br.notes
    return SeparabilityReport(
        rig.model_dump(),
        where,
        pairs,
        lo.accuracy,
        lo.recall,
        lo.confusion,
        list(alloys),
        prior.describe(),
        lo.heavy_light,
        notes,
        lo.se,
        up.accuracy,
        up.se,
        up.heavy_light,
        br.width,
        br.width_se,
        br.hard_pairs,
    )


def mixed_ceiling(
    rigs: Sequence[tuple[object, float]],
    thicknesses_mm: Sequence[float] | None = None,
    thickness_range_mm: Sequence[float] | None = None,
    **kw,
) -> dict:
    """The ceiling for a test set that mixes rig settings (e.g. two wedge sizes, which the observer sees in
    every capture): one report per rig, combined with the weights (their shares of the test captures).

    Returns ``accuracy`` (the bracket's lower edge) and ``accuracy_se``, ``upper`` and ``upper_se``, ``width``
    and ``width_se``, ``recall`` per alloy (lower edge), ``group_accuracy`` and ``group_accuracy_upper``,
    ``pairs`` (weighted d' and Bayes error per pair), ``hard_pairs`` (of the first rig), the ``markdown`` of
    every report, and the ``reports`` themselves. Errors combine in quadrature."""
    reports = [
        separability(rig, thicknesses_mm=thicknesses_mm, thickness_range_mm=thickness_range_mm, **kw) for rig, _ in rigs
    ]
    w = np.asarray([weight for _, weight in rigs], float)
    w = w / w.sum()

    def avg(values) -> float:
        return float(np.dot(w, list(values)))

    def err(values) -> float:
        return float(np.sqrt(np.dot(w**2, np.square(list(values)))))

    pairs = {
        f"{p.a} vs {p.b}": {
            "d_unknown": avg(r.pairs[i].d_unknown for r in reports),
            "d_known": avg(r.pairs[i].d_known for r in reports),
            "bayes_error_unknown": avg(r.pairs[i].bayes_error_unknown for r in reports),
        }
        for i, p in enumerate(reports[0].pairs)
    }
    return {
        "accuracy": avg(r.ceiling_accuracy for r in reports),
        "accuracy_se": err(r.ceiling_se for r in reports),
        "upper": avg(r.ceiling_upper for r in reports),
        "upper_se": err(r.ceiling_upper_se for r in reports),
        "width": avg(r.bracket_width for r in reports),
        "width_se": err(r.bracket_width_se for r in reports),
        "group_accuracy_upper": avg(r.group_accuracy_upper for r in reports),
        "hard_pairs": reports[0].hard_pairs,
        "recall": {a: avg(r.ceiling_recall[a] for r in reports) for a in reports[0].ceiling_recall},
        "group_accuracy": avg(r.group_accuracy for r in reports),
        "prior": reports[0].prior,
        "pairs": pairs,
        "markdown": "\n\n".join(r.markdown() for r in reports),
        "reports": reports,
    }


__all__ = ["PairSeparability", "SeparabilityReport", "ThicknessPrior", "mixed_ceiling", "separability"]

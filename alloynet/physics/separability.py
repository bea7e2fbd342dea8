"""The ideal observer: how well could *any* classifier separate the alloys on this rig?

Observation: the wedge profile, -ln of the flat/dark-corrected signal averaged across the non-wedge
axis (rows), binned along the wedge axis. For a plate that is uniform across rows this profile carries
(to first order) all the alloy information in the capture.

Noise per pixel on ln S (S = deposited energy), matching the simulator: compound Poisson v/m^2, plus
read noise and quantisation (sigma_r^2 + 1/12)/(g m)^2, plus the panel's gain non-uniformity; averaged
over H rows. Plate-to-plate variation (composition inside the standard's ranges, thickness within the
rolling tolerance, texture) enters as a covariance estimated from plates drawn exactly as the
simulator draws them. Under this Gaussian model:

* pairwise d' = sqrt(dmu' S^-1 dmu) and the two-class Bayes error Phi(-d'/2), with thickness known,
  and with thickness unknown (the second alloy's thickness chosen to look most like the first);
* the multi-class ceiling: Monte Carlo accuracy of the Bayes (maximum-likelihood) classifier on a
  balanced test set over the data set's nominal thicknesses. This is the number model accuracy is
  judged against.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from itertools import combinations
from typing import Sequence

import numpy as np
from scipy import optimize, stats

from alloynet.physics.alloys import get_alloy, sample_plate
from alloynet.physics.materials import linear_attenuation
from alloynet.physics.simulator import Channel, RigConfig


class ProfileModel:
    """Noise-free wedge profiles and their noise variance for one rig."""

    def __init__(self, rig: RigConfig, bins: int = 32):
        self.rig = rig
        self.bins = min(bins, rig.width)
        self._ch = [Channel(rig, kvp) for kvp in rig.kvp]
        self._edges = np.linspace(0, rig.width, self.bins + 1).astype(int)

    def _bin(self, per_column: np.ndarray, average: bool = True) -> np.ndarray:
        out = np.add.reduceat(per_column, self._edges[:-1], axis=-1)
        return out / np.diff(self._edges) if average else out

    def profile(self, fractions, density: float, thickness_mm: float) -> np.ndarray:
        """Binned -ln(S/S_open) per channel, concatenated: shape [C * bins]."""
        out = []
        for ch in self._ch:
            mu = linear_attenuation(fractions, density, ch.energies)
            m = (ch.n_behind_wedge * np.exp(-mu * thickness_mm / 10.0)[None, :]) @ ch.energies
            out.append(self._bin(-np.log(m / ch.mean_kev_open)))
        return np.concatenate(out)

    def noise_var(self, fractions, density: float, thickness_mm: float) -> np.ndarray:
        """Variance of the binned, row-averaged -ln profile from detector noise alone."""
        r = self.rig
        out = []
        for ch in self._ch:
            e = ch.energies
            n = ch.n_behind_wedge * np.exp(-linear_attenuation(fractions, density, e) * thickness_mm / 10.0)[None, :]
            m, v = n @ e, n @ (e * e)
            per_pixel = v / m**2 + (r.read_noise_adu**2 + 1 / 12) / (ch.gain * m) ** 2 + r.gain_prnu**2
            per_col = per_pixel / r.height
            k = np.diff(self._edges)
            out.append(self._bin(per_col, average=False) / k**2)
        return np.concatenate(out)


@dataclass
class PairSeparability:
    a: str
    b: str
    d_known_nominal: float     # thickness known, exact nominal plates: detector noise only
    d_known: float             # thickness known (nominal), plates vary within spec and tolerance
    d_unknown: float           # thickness unknown: b's thickness chosen to mimic a, plates vary
    bayes_error_known: float
    bayes_error_unknown: float


@dataclass
class SeparabilityReport:
    rig: dict
    thicknesses_mm: list[float]
    pairs: list[PairSeparability]
    ceiling_accuracy: float            # balanced multi-class accuracy of the ideal observer
    ceiling_recall: dict[str, float]
    confusion: list[list[float]]       # row-normalised, true x predicted
    alloys: list[str]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def markdown(self) -> str:
        lines = [
            f"Ideal-observer separability: kVp {self.rig['kvp']}, wedge {self.rig['wedge_mm']} mm "
            f"{self.rig['wedge_material']}, dose {self.rig['dose']:.3g} photons/pixel, "
            f"{self.rig['height']}x{self.rig['width']} px, thicknesses {self.thicknesses_mm} mm",
            "",
            "| pair | d' (t known, nominal plates) | d' (t known) | d' (t unknown) | Bayes error (t known) | Bayes error (t unknown) |",
            "|---|---|---|---|---|---|",
        ]
        for p in self.pairs:
            lines.append(f"| {p.a} vs {p.b} | {p.d_known_nominal:.2f} | {p.d_known:.2f} | {p.d_unknown:.2f} | "
                         f"{p.bayes_error_known:.3f} | {p.bayes_error_unknown:.3f} |")
        lines += ["", f"**Ceiling (ideal observer, balanced accuracy over these thicknesses): {self.ceiling_accuracy:.3f}**",
                  "", "| alloy | ideal recall |", "|---|---|"]
        lines += [f"| {a} | {r:.3f} |" for a, r in self.ceiling_recall.items()]
        lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines)


def _plate_stats(model: ProfileModel, alloy: str, t: float, n: int, rng: np.random.Generator):
    profiles = []
    for i in range(n):
        p = sample_plate(alloy, t, rng, f"io-{i}")
        profiles.append(model.profile(p.fractions(), p.density_g_cm3, p.thickness_mm))
    profiles = np.asarray(profiles)
    a = get_alloy(alloy)
    noise = model.noise_var(a.nominal_fractions(), a.density_g_cm3, t)
    texture = (model.rig.texture_rel * t / 10.0) ** 2 / max(1, model.rig.height // model.rig.texture_cell_px)
    return profiles.mean(0), np.cov(profiles, rowvar=False), noise, texture


def _mahalanobis(delta: np.ndarray, cov: np.ndarray) -> float:
    return float(np.sqrt(max(delta @ np.linalg.solve(cov, delta), 0.0)))


def separability(rig: RigConfig | None = None, alloys: Sequence[str] = ("Al1050", "Al2017", "Al5083", "Al6082", "Al7075"),
                 thicknesses_mm: Sequence[float] = (1.0, 2.0, 5.0), plates: int = 200, mc_samples: int = 2000,
                 bins: int = 32, seed: int = 0, profile_model=None) -> SeparabilityReport:
    """Pairwise d' / Bayes error and the multi-class ceiling for the given rig settings (seeded)."""
    rig = rig or RigConfig()
    rng = np.random.default_rng(seed)
    model = profile_model if profile_model is not None else ProfileModel(rig, bins)
    stats_ = {(a, t): _plate_stats(model, a, t, plates, rng) for a in alloys for t in thicknesses_mm}
    nominal = {(a, t): model.profile(get_alloy(a).nominal_fractions(), get_alloy(a).density_g_cm3, t)
               for a in alloys for t in thicknesses_mm}

    pairs = []
    for a, b in combinations(alloys, 2):
        dk_nom, dk, du = [], [], []
        for t in thicknesses_mm:
            mu_a, cov_a, noise_a, tex = stats_[(a, t)]
            mu_b, cov_b, _, _ = stats_[(b, t)]
            noise_cov = np.diag(noise_a)
            dk_nom.append(_mahalanobis(nominal[(a, t)] - nominal[(b, t)], noise_cov))
            cov = noise_cov + np.eye(len(noise_a)) * tex + (cov_a + cov_b) / 2
            dk.append(_mahalanobis(mu_a - mu_b, cov))
            # Thickness unknown: shift b's (mean) plate thickness to look as much like a as possible.
            bnom = get_alloy(b)
            offset = mu_b - nominal[(b, t)]  # mean effect of in-spec impurities at this thickness
            res = optimize.minimize_scalar(
                lambda tb: _mahalanobis(mu_a - (model.profile(bnom.nominal_fractions(), bnom.density_g_cm3, tb) + offset), cov),
                bounds=(0.5 * t, 1.5 * t), method="bounded", options={"xatol": 1e-5})
            du.append(float(res.fun))
        pairs.append(PairSeparability(
            a, b, float(np.mean(dk_nom)), float(np.mean(dk)), float(np.mean(du)),
            float(np.mean([stats.norm.cdf(-d / 2) for d in dk])),
            float(np.mean([stats.norm.cdf(-d / 2) for d in du]))))

    acc, recall, confusion = _ceiling(stats_, alloys, thicknesses_mm, mc_samples, rng)
    notes = [
        "Observation: row-averaged wedge profile; plates vary inside their standard's composition ranges "
        "and within +-1.5 % thickness tolerance, exactly as the simulator draws them.",
        "Gaussian model of plate variation and detector noise; Bayes error Phi(-d'/2) for equal priors.",
        "The ceiling assumes the thickness is one of the listed nominal values (unknown which); models are "
        "judged against it on a balanced test set.",
    ]
    return SeparabilityReport(rig.model_dump(), [float(t) for t in thicknesses_mm], pairs, acc, recall,
                              confusion, list(alloys), notes)


def _ceiling(stats_: dict, alloys: Sequence[str], thicknesses: Sequence[float], n: int,
             rng: np.random.Generator) -> tuple[float, dict[str, float], list[list[float]]]:
    """Monte Carlo accuracy of the maximum-likelihood classifier over mixtures of thickness components."""
    comps = []  # (class index, mean, cholesky, logdet)
    for ci, a in enumerate(alloys):
        for t in thicknesses:
            mu, cov, noise, tex = stats_[(a, t)]
            full = cov + np.diag(noise) + np.eye(len(noise)) * tex
            L = np.linalg.cholesky(full)
            comps.append((ci, mu, L, 2 * np.log(np.diag(L)).sum()))
    k = len(alloys)
    confusion = np.zeros((k, k))
    per_comp = max(1, n // len(thicknesses))
    for ci, mu, L, _ in comps:
        x = mu + rng.standard_normal((per_comp, len(mu))) @ L.T
        loglik = np.full((per_comp, k), -np.inf)
        for cj, mu_j, L_j, logdet in comps:
            z = np.linalg.solve(L_j, (x - mu_j).T)
            ll = -0.5 * (z * z).sum(0) - 0.5 * logdet
            loglik[:, cj] = np.logaddexp(loglik[:, cj], ll)
        pred = loglik.argmax(1)
        confusion[ci] += np.bincount(pred, minlength=k)
    confusion /= confusion.sum(1, keepdims=True)
    recall = {a: float(confusion[i, i]) for i, a in enumerate(alloys)}
    return float(np.mean(np.diag(confusion))), recall, confusion.round(4).tolist()


def mixed_ceiling(rigs: Sequence[tuple[RigConfig, float]], thicknesses_mm: Sequence[float], **kw) -> dict:
    """The ceiling for a test set that mixes rig settings (e.g. two wedge sizes, which the observer sees in
    every capture): one report per rig, combined with the weights (their shares of the test captures).

    Returns ``accuracy``, ``recall`` per alloy, ``pairs`` (weighted d' and Bayes error per pair), the
    ``markdown`` of every report, and the ``reports`` themselves."""
    reports = [separability(rig, thicknesses_mm=thicknesses_mm, **kw) for rig, _ in rigs]
    w = np.asarray([weight for _, weight in rigs], float)
    w = w / w.sum()

    def avg(values) -> float:
        return float(np.dot(w, list(values)))

    pairs = {f"{p.a} vs {p.b}": {"d_unknown": avg(r.pairs[i].d_unknown for r in reports),
                                 "d_known": avg(r.pairs[i].d_known for r in reports),
                                 "bayes_error_unknown": avg(r.pairs[i].bayes_error_unknown for r in reports)}
             for i, p in enumerate(reports[0].pairs)}
    return {"accuracy": avg(r.ceiling_accuracy for r in reports),
            "recall": {a: avg(r.ceiling_recall[a] for r in reports) for a in reports[0].ceiling_recall},
            "pairs": pairs, "markdown": "\n\n".join(r.markdown() for r in reports), "reports": reports}

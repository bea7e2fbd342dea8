"""What physics allows, as a bracket: an observer a line can build below, an observer told what no line is
told above, each with its Monte-Carlo standard error.

The model of an observation (the same one ``alloynet.physics.observer`` uses): the binned wedge profile of a
plate of alloy ``a`` is x = mu(c, t) + e, with c the plate's composition drawn inside ``a``'s standard ranges,
t its thickness drawn from the thickness prior (and the rolling tolerance), mu the forward model
(``alloynet.physics.profile``) and e Gaussian with covariance S_a(t): detector noise of the row *mean* over
the plate's good pixels, and plate texture.

* **Lower edge**: the accuracy of a classifier that uses only what a line has. Each alloy's likelihood is a
  mixture over ``pool`` compositions drawn once from its standard ranges, each component's thickness
  integrated out under the prior; it reads -ln of the row mean of T (``full_row_profile``), not the
  interquartile mean of -ln T the models read (which keeps ~85 % of the mean's efficiency and carries the
  Jensen bias of -ln at the wedge's thick end), against the forward model with the panel's blur in its noise
  (``detector_cov``) and the fixed pattern's mean taken as that statistic sees it (``MeanTransmissionModel``).
  The composition spread enters as the spread of the mixture, not as a Gaussian covariance around the mean
  composition. Any classifier's accuracy on data
  from the model is at most the Bayes accuracy, so this is a lower bound; it applies to real captures as they
  are (``MixtureObserver.log_likelihoods``), and ``bench/bracket.py`` checks on simulated captures that it
  reaches there what the Monte Carlo predicts.
* **Upper edge**: the Bayes accuracy of an observer that is also handed, for every alloy, a list of ``pool``
  candidate compositions, one of which (at a random place in its own alloy's list) is the plate's actual
  composition, the others independent draws from each alloy's ranges. The lists are independent of the label,
  so this observer cannot do worse than one without them; given the lists, p(x | alloy) is exactly the mean of
  the list's components, so its Bayes classifier is computed without approximation (but for the thickness
  integral, below). Its accuracy is therefore an upper bound, and it tightens as the lists grow: with ``pool``
  large the hint (one list entry is the truth) is worth little.

Both edges share the draws, the pool and every component, and differ only in that one mixture component of the
plate's own alloy is its actual composition: the width is estimated with far less noise than either edge.
The plates share one pool, so each plate's lists are independent draws only taken one plate at a time: the
upper edge is exact in expectation, and its standard error (binomial over plates) leaves out the pool's own
spread, which a larger ``pool`` shrinks.

Thickness integral: a component's chi2 in t (mu nearly linear in t over a grid step, S(t) smooth) is a
parabola, so log integral N(x; mu_c(t), S(t)) prior(t) dt is evaluated by the parabola through the grid's best
point and its neighbours (exact for a quadratic chi2, whatever the grid step), weighed by the prior's density
there, smoothed by the fit's own width.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import ndimage, special

from alloynet.physics.alloys import (
    ALLOY_NAMES,
    GROUPS,
    STANDARD_ALLOYS,
    AlloyTable,
    alloy_group,
    get_alloy,
    sample_plate,
)
from alloynet.physics.measure import bin_columns, bin_edges, wedge_profile
from alloynet.physics.observer import LOG_2PI, ThicknessPrior, _profiles, noise_cov
from alloynet.physics.profile import ProfileModel

GRID_STEP_MM = 0.04  # thickness grid of the integral: any step works for a parabolic chi2; this one keeps
#                       the parabola's three points within the range where mu(t) is linear to far below noise
COV_NODE_STEPS = 5  # grid steps between the thicknesses where the noise covariance is computed
DEFAULT_POOL = 256
DEFAULT_DRAWS = 2000


def full_row_profile(
    images: np.ndarray, calibration: np.ndarray, bins: int = 32, rows: slice = slice(None)
) -> np.ndarray:
    """Raw captures [N, C, H, W] with their levels [N, C, 2] -> binned profiles [N, C * bins]: per column -ln of
    the mean T over the good pixels (no dead or saturated ones) of the plate's ``rows``, every row's information
    kept. -ln of the mean, not the mean of -ln: the forward model gives -ln of the expected T, and where few
    photons pass (the wedge's thick end) the mean of -ln T lies above it by about half the pixel's relative
    variance (Jensen), up to a standard deviation of the profile there."""
    if np.ndim(images) != 4:
        raise ValueError(f"full_row_profile: expected captures [N, C, H, W], got shape {list(np.shape(images))}")
    return wedge_profile(images, calibration, bins, rows, statistic="mean_transmission")


@lru_cache(maxsize=32)
def _blur_and_bin(width: int, bins: int, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """(the panel's blur along the wedge axis as a matrix [W, W], bin averaging [bins, W]): as the simulator
    blurs (a Gaussian of ``sigma`` px, truncated at 3 sd, reflected at the edges)."""
    blur = ndimage.gaussian_filter1d(np.eye(width), sigma, axis=0, truncate=3.0, mode="reflect")
    edges = bin_edges(width, bins)
    average = np.zeros((len(edges) - 1, width))
    for b in range(len(edges) - 1):
        average[b, edges[b] : edges[b + 1]] = 1.0 / (edges[b + 1] - edges[b])
    return blur, average


@lru_cache(maxsize=16)
def _mean_transmission_offset(rig_json: str, bins: int) -> np.ndarray:
    """Per bin: -ln of the row mean of the panel's fixed gain pattern (PRNU x heel) minus the row mean of its -ln,
    over the plate's good pixels. The profile model carries the latter (the mean of -ln T); ``full_row_profile``
    reads -ln of the mean T, which carries the former."""
    from alloynet.physics.simulator import RigConfig, RigSimulator, plate_rows

    rig = RigConfig.model_validate_json(rig_json)
    det = RigSimulator(rig)
    good = np.ones(rig.height * rig.width, bool)
    good[np.concatenate([det.dead_idx, det.hot_idx])] = False
    rows = plate_rows(rig)
    good = good.reshape(rig.height, rig.width)[rows]
    gain = (det.prnu * det.heel_profile)[rows].astype(float)
    n = np.maximum(good.sum(0), 1)
    offset = -np.log((gain * good).sum(0) / n) - (-np.log(gain) * good).sum(0) / n
    return bin_columns(offset, bins)


class MeanTransmissionModel:
    """A nominal rig's profile model for ``full_row_profile``: the same noise, the mean shifted by the fixed
    pattern's ``_mean_transmission_offset`` on every channel."""

    def __init__(self, model: ProfileModel):
        self.inner, self.rig, self.bins = model, model.rig, model.bins
        self.offset = np.tile(_mean_transmission_offset(model.rig.model_dump_json(), model.bins), len(model.rig.kvp))

    def profiles(self, fractions, density: float, thicknesses_mm) -> np.ndarray:
        return self.inner.profiles(fractions, density, thicknesses_mm) + self.offset

    def profile(self, fractions, density: float, thickness_mm: float) -> np.ndarray:
        return self.profiles(fractions, density, [thickness_mm])[0]

    def noise_var(self, fractions, density: float, thickness_mm: float) -> np.ndarray:
        return self.inner.noise_var(fractions, density, thickness_mm)

    def texture_field_cov(self) -> np.ndarray:
        return self.inner.texture_field_cov()


def for_full_rows(model):
    """The model ``full_row_profile`` is read against: the nominal rig's shifted (``MeanTransmissionModel``), any
    other as it is."""
    return MeanTransmissionModel(model) if isinstance(model, ProfileModel) and model.detector else model


def detector_cov(model, fractions, density: float, thickness_mm: float) -> np.ndarray:
    """``noise_cov`` with the panel's blur in the detector noise: the blur spreads each pixel's noise over its
    neighbours, so a bin of two columns averages less independent noise than ``noise_var`` (which assumes none)
    says, and neighbouring bins share some (docs/benchmarks.md, "Physics bracket": what the simulator's captures
    show). Per-column variances are taken as even within a bin."""
    cov = noise_cov(model, fractions, density, thickness_mm)
    rig = getattr(model, "rig", None)
    sigma = float(getattr(rig, "psf_sigma_px", 0.0) or 0.0)
    if sigma <= 0 or not isinstance(model, (ProfileModel, MeanTransmissionModel)):
        return cov
    width = int(model.rig.width)
    var = model.noise_var(fractions, density, thickness_mm)
    blur, average = _blur_and_bin(width, model.bins, sigma)
    k = np.diff(bin_edges(width, model.bins))
    out = cov - np.diag(var)
    for c in range(len(var) // model.bins):
        sl = slice(c * model.bins, (c + 1) * model.bins)
        per_column = np.repeat(var[sl] * k, k)
        m = average @ blur
        out[sl, sl] += (m * per_column[None]) @ m.T
    return out


def _laplace(q: np.ndarray, grid: np.ndarray, prior) -> tuple[np.ndarray, np.ndarray]:
    """log integral exp(-q(t)/2) prior(t) dt over the last axis of q [..., G] (q tabulated on ``grid``, uniform),
    by the parabola through the best grid point and its neighbours; returns (log integral, t at the minimum)."""
    g = q.shape[-1]
    i = np.clip(q.argmin(-1), 1, g - 2)[..., None]
    cm, c0, cp = (np.take_along_axis(q, i + d, -1)[..., 0] for d in (-1, 0, 1))
    h = float(grid[1] - grid[0])
    a = np.maximum(0.5 * (cp + cm - 2 * c0), 1e-9)  # curvature, in grid steps
    b = 0.5 * (cp - cm)
    s = np.clip(-b / (2 * a), -1.0, 1.0)
    q_min = c0 + b * s + a * s * s
    t_min = grid[i[..., 0]] + s * h
    sd = h / np.sqrt(a)
    log_prior = prior.log_density(t_min.ravel(), sd.ravel()).reshape(t_min.shape)
    return -0.5 * q_min + np.log(h) + 0.5 * np.log(2 * np.pi / a) + log_prior, t_min


class _AlloyTerms:
    """One alloy's noise precision at every grid thickness, and its mixture components' whitened means."""

    def __init__(
        self,
        model,
        alloy: str,
        prior: ThicknessPrior,
        grid: np.ndarray,
        pool: int,
        rng: np.random.Generator,
        alloy_table: AlloyTable,
    ):
        self.model, self.alloy, self.grid = model, alloy, grid
        a = get_alloy(alloy, alloy_table)
        self.mean_fractions, self.mean_density = a.nominal_fractions(), a.density_g_cm3
        # the covariance at every grid point, linear between nodes a few steps apart: it changes by ~1 % per
        # node step (photon noise as exp(mu t)), so the interpolation is exact to far below that
        nodes = np.unique(np.r_[np.arange(0, len(grid), COV_NODE_STEPS), len(grid) - 1])
        at_nodes = np.stack(
            [detector_cov(model, self.mean_fractions, self.mean_density, float(grid[i])) for i in nodes]
        )
        j = np.clip(np.searchsorted(nodes, np.arange(len(grid)), side="right") - 1, 0, len(nodes) - 2)
        w = ((np.arange(len(grid)) - nodes[j]) / (nodes[j + 1] - nodes[j]))[:, None, None]
        covs = (1 - w) * at_nodes[j] + w * at_nodes[j + 1]
        self.chol = np.linalg.cholesky(covs + 1e-14 * np.eye(covs.shape[-1]))  # [G, D, D]: draws' noise
        self.precision = np.linalg.inv(covs)  # [G, D, D]
        self.logdet = np.linalg.slogdet(covs)[1]  # [G]
        self.precision_flat = self.precision.reshape(len(grid), -1).T  # [D*D, G]
        self.plates = [sample_plate(alloy, 2.0, rng, f"pool-{i}", alloy_table=alloy_table) for i in range(pool)]
        means = np.stack([_profiles(model, p.fractions(), p.density_g_cm3, grid) for p in self.plates])  # [P, G, D]
        self.qm, self.mqm = self.whiten(means)

    def whiten(self, means: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Means [..., G, D] -> (S(t)^-1 mean [..., G, D], mean' S(t)^-1 mean [..., G])."""
        qm = np.einsum("gij,...gj->...gi", self.precision, means)
        return qm, (qm * means).sum(-1)

    def window(self, t: float, half: int = 6) -> slice:
        """The grid points within ``half`` steps of thickness ``t``."""
        i = int(np.abs(self.grid - t).argmin())
        return slice(max(0, i - half), min(len(self.grid), i + half + 1))

    def own(self, x: np.ndarray, fractions, density: float, window: slice, means: np.ndarray | None, prior) -> float:
        """log integral N(x; mu_c(s), S(s)) prior(s) ds for one profile ``x`` and its own composition, from the
        composition's ``means`` on the grid points of ``window`` (around the plate's actual thickness: x was drawn
        there, so the minimum lies there); on the whole grid when the minimum falls on the window's edge."""
        g = len(self.grid)
        for lo, hi in ((window.start, window.stop), (0, g)):
            if (lo, hi) == (0, g) or means is None:
                means = _profiles(self.model, fractions, density, self.grid[lo:hi])  # [W, D]
            r = x[None] - means
            q = np.einsum("wd,wde,we->w", r, self.precision[lo:hi], r) + self.logdet[lo:hi]
            k = int(q.argmin())
            if 0 < k < hi - lo - 1 or (lo, hi) == (0, g):
                break
            means = None
        ll, _ = _laplace(q[None], self.grid[lo:hi], prior)
        return float(ll[0]) - 0.5 * len(x) * LOG_2PI

    def components(self, x: np.ndarray, qm: np.ndarray, mqm: np.ndarray, prior) -> tuple[np.ndarray, np.ndarray]:
        """log integral N(x; mean_p(t), S(t)) prior(t) dt for profiles x [N, D] and components given by their
        whitened means qm [P, G, D] -> ([N, P], the best-fitting thickness [N, P])."""
        xqx = (x[:, :, None] * x[:, None, :]).reshape(len(x), -1) @ self.precision_flat  # [N, G]
        cross = np.einsum("nd,pgd->npg", x, qm, optimize=True)  # [N, P, G]
        q = xqx[:, None] - 2 * cross + mqm[None] + self.logdet[None, None]
        ll, t = _laplace(q, self.grid, prior)
        return ll - 0.5 * x.shape[1] * LOG_2PI, t


class MixtureObserver:
    """The lower edge's classifier: per alloy, a mixture over ``pool`` sampled compositions, thickness
    integrated out; reads ``full_row_profile``. Usable on real captures as it is."""

    def __init__(
        self,
        model,
        alloys: Sequence[str],
        prior: ThicknessPrior,
        pool: int = DEFAULT_POOL,
        seed: int = 0,
        alloy_table: AlloyTable = STANDARD_ALLOYS,
        grid_step_mm: float = GRID_STEP_MM,
    ):
        if pool < 1:
            raise ValueError(f"MixtureObserver: pool must be >= 1 composition per alloy, got {pool}")
        rng = np.random.default_rng(seed)
        model = for_full_rows(model)
        self.model, self.alloys, self.prior, self.alloy_table = model, list(alloys), prior, alloy_table
        lo, hi = prior.bounds()
        lo, hi = lo * 0.97, hi * 1.03
        self.grid = np.linspace(lo, hi, max(8, int(np.ceil((hi - lo) / grid_step_mm)) + 1))
        self.terms = [_AlloyTerms(model, a, prior, self.grid, pool, rng, alloy_table) for a in self.alloys]
        self.group_of = np.array([GROUPS.index(alloy_group(a, alloy_table)) for a in self.alloys])

    def component_loglik(self, x: np.ndarray, chunk: int = 64) -> list[np.ndarray]:
        """Per alloy: log p(x | composition p) [N, P], thickness integrated out."""
        x = np.atleast_2d(np.asarray(x, float))
        out = []
        for term in self.terms:
            parts = [
                term.components(x[s : s + chunk], term.qm, term.mqm, self.prior)[0] for s in range(0, len(x), chunk)
            ]
            out.append(np.concatenate(parts) if parts else np.empty((0, len(term.plates))))
        return out

    def log_likelihoods(self, x: np.ndarray) -> np.ndarray:
        """log p(x | alloy) [N, K]: each alloy's mixture over its pool."""
        comps = self.component_loglik(x)
        return np.stack([special.logsumexp(c, axis=1) - np.log(c.shape[1]) for c in comps], 1)

    def draw(self, alloy_index: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` plates of one alloy as the model says they look: (profiles [n, D], log p(profile | the plate's own
        composition) [n]); compositions and thicknesses drawn as the simulator draws them, the noise with the
        covariance at the grid point nearest the plate's thickness (the one the likelihood uses there)."""
        term = self.terms[alloy_index]
        xs, own = [], []
        for i, t in enumerate(self.prior.sample(n, rng)):
            p = sample_plate(term.alloy, float(t), rng, f"draw-{i}", alloy_table=self.alloy_table)
            fr, rho = p.fractions(), p.density_g_cm3
            win = term.window(p.thickness_mm)
            means = _profiles(self.model, fr, rho, np.r_[p.thickness_mm, self.grid[win]])  # one call: its cost
            x = means[0] + term.chol[int(np.abs(self.grid - p.thickness_mm).argmin())] @ rng.standard_normal(
                means.shape[1]
            )
            xs.append(x)
            own.append(term.own(x, fr, rho, win, means[1:], self.prior))
        return np.asarray(xs), np.asarray(own)


@dataclass
class BracketEdge:
    accuracy: float  # balanced five-class accuracy (mean recall)
    se: float  # its Monte-Carlo standard error
    heavy_light: float  # heavy vs light, balanced over the two groups
    heavy_light_se: float
    recall: dict[str, float]
    confusion: list[list[float]]  # row-normalised, true x predicted


@dataclass
class Bracket:
    """Where the Bayes accuracy of the profile lies for one rig, alloy set and thickness prior."""

    lower: BracketEdge
    upper: BracketEdge
    width: float
    width_se: float  # paired: both edges are read off the same draws
    alloys: list[str]
    prior: str
    rig: dict
    draws_per_alloy: int
    pool: int
    hard_pairs: list[dict] = field(default_factory=list)  # by the lower edge's confusion, hardest first
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def markdown(self) -> str:
        r = self.rig
        kvp = "/".join(f"{k:g}" for k in r.get("kvp", [])) if isinstance(r.get("kvp"), list) else r.get("kvp")
        lines = [
            f"Physics bracket: kVp {kvp}, wedge {r.get('wedge_mm')} mm {r.get('wedge_material')}, dose "
            f"{r.get('dose', 0):.3g} photons/pixel, {r.get('height')}x{r.get('width')} px, {self.prior}",
            "",
            "| | five-class (balanced) | heavy vs light |" + "".join(f" {a} |" for a in self.alloys),
            "|---" * (3 + len(self.alloys)) + "|",
        ]
        for name, e in (("lower edge (mixture observer)", self.lower), ("upper edge (oracle lists)", self.upper)):
            lines.append(
                f"| {name} | {e.accuracy:.3f} ± {e.se:.3f} | {e.heavy_light:.3f} ± {e.heavy_light_se:.3f} |"
                + "".join(f" {e.recall[a]:.3f} |" for a in self.alloys)
            )
        lines += [
            "",
            f"**Bracket {self.lower.accuracy:.3f}-{self.upper.accuracy:.3f} (width {self.width:.3f} ± "
            f"{self.width_se:.3f})**; hardest pairs: "
            + ", ".join(f"{p['pair']} ({p['confused']:.2f})" for p in self.hard_pairs[:3]),
            "",
        ]
        lines += [f"- {n}" for n in self.notes]
        return "\n".join(lines)


def _balanced(hits: np.ndarray, n: np.ndarray) -> tuple[float, float]:
    """(mean recall, its standard error) from hits and counts per class."""
    p = hits / np.maximum(n, 1)
    return float(p.mean()), float(np.sqrt((p * (1 - p) / np.maximum(n, 1)).sum()) / len(p))


def _group_ll(ll: np.ndarray, group_of: np.ndarray) -> np.ndarray:
    return np.stack(
        [
            special.logsumexp(ll[:, group_of == g], axis=1) if (group_of == g).any() else np.full(len(ll), -np.inf)
            for g in range(len(GROUPS))
        ],
        1,
    )


def bracket(
    model,
    alloys: Sequence[str] = ALLOY_NAMES,
    prior: ThicknessPrior | None = None,
    draws: int = DEFAULT_DRAWS,
    pool: int = DEFAULT_POOL,
    seed: int = 0,
    alloy_table: AlloyTable = STANDARD_ALLOYS,
    rig: dict | None = None,
    observer: MixtureObserver | None = None,
) -> Bracket:
    """The bracket for the profile model ``model`` (seeded): ``draws`` plates spread evenly over the alloys,
    drawn from ``prior`` (default: any thickness 1-5 mm), each read by the lower and the upper observer."""
    prior = prior or ThicknessPrior(range_mm=(1.0, 5.0))
    obs = observer or MixtureObserver(model, alloys, prior, pool, seed, alloy_table)
    rng = np.random.default_rng(seed + 1)
    k, per = len(obs.alloys), max(1, draws // len(obs.alloys))
    pool_n = len(obs.terms[0].plates)
    conf = np.zeros((2, k, k))
    group_hits, group_n = np.zeros((2, len(GROUPS))), np.zeros(len(GROUPS))
    diff = []
    for ci in range(k):
        x, own_ll = obs.draw(ci, per, rng)
        comps = obs.component_loglik(x)
        lower = np.stack([special.logsumexp(c, axis=1) for c in comps], 1) - np.log(pool_n)
        # the oracle's list for the plate's own alloy: its actual composition in place of one pool member
        own_comps = comps[ci].copy()
        own_comps[np.arange(per), rng.integers(0, pool_n, per)] = own_ll
        upper = lower.copy()
        upper[:, ci] = special.logsumexp(own_comps, axis=1) - np.log(pool_n)
        g = obs.group_of[ci]
        group_n[g] += per
        right = []
        for e, ll in enumerate((lower, upper)):
            conf[e, ci] = np.bincount(ll.argmax(1), minlength=k)
            group_hits[e, g] += (_group_ll(ll, obs.group_of).argmax(1) == g).sum()
            right.append(ll.argmax(1) == ci)
        diff.append(right[1].astype(float) - right[0])
    n = conf[0].sum(1)
    edges = []
    for e in range(2):
        acc, se = _balanced(np.diag(conf[e]), n)
        present = group_n > 0
        hl, hl_se = _balanced(group_hits[e, present], group_n[present])
        rows = conf[e] / np.maximum(n[:, None], 1)
        edges.append(
            BracketEdge(
                acc, se, hl, hl_se, {a: float(rows[i, i]) for i, a in enumerate(obs.alloys)}, rows.round(4).tolist()
            )
        )
    # the width per class: mean of (upper right - lower right) on the same draws, and its paired error
    d = np.stack(diff)  # [K, per]
    width = float(d.mean(1).mean())
    width_se = float(np.sqrt((d.var(1, ddof=1) / per).sum()) / k) if per > 1 else float("nan")
    rows = conf[0] / np.maximum(n[:, None], 1)
    pairs: list[dict[str, Any]] = [
        {"pair": f"{obs.alloys[i]} vs {obs.alloys[j]}", "confused": float((rows[i, j] + rows[j, i]) / 2)}
        for i in range(k)
        for j in range(i + 1, k)
    ]
    pairs.sort(key=lambda p: -p["confused"])
    notes = [
        f"{per} plates per alloy drawn from the prior; each alloy's mixture has {pool_n} compositions; "
        "Monte-Carlo standard errors beside each figure (the width's is paired).",
        "Lower edge: a classifier a line can run (alloynet.physics.bracket.MixtureObserver on -ln of the "
        "row-mean transmission). Upper edge: the Bayes observer also handed each alloy's list of candidate "
        "compositions, the plate's own among its alloy's; no observer of the profile does better.",
        "Both edges are for the profile model's noise (Gaussian, the panel's blur included); bench/bracket.py "
        "checks the lower edge on the simulator's own captures.",
    ]
    return Bracket(
        edges[0],
        edges[1],
        width,
        width_se,
        list(obs.alloys),
        obs.prior.describe(),
        rig if rig is not None else _rig_dict(model),
        per,
        pool_n,
        pairs,
        notes,
    )


def mixed_bracket(
    rigs: Sequence[tuple[object, float]],
    prior: ThicknessPrior,
    alloys: Sequence[str] = ALLOY_NAMES,
    bins: int = 32,
    alloy_table: AlloyTable = STANDARD_ALLOYS,
    **kw,
) -> dict:
    """The bracket for a test set that mixes rig settings (e.g. two wedge sizes, which every capture shows):
    one bracket per rig, combined with the weights (their shares of the captures), errors in quadrature.

    Returns ``lower``, ``upper`` (five-class), their ``*_se``, ``lower_heavy_light``, ``upper_heavy_light`` (and
    ``*_se``), ``lower_recall``, ``upper_recall``, ``width``, ``width_se``, ``prior``, ``hard_pairs`` (of the
    first rig), the ``markdown`` of every bracket and the ``brackets`` themselves."""
    from alloynet.physics.profile import profile_model_for

    brackets = [
        bracket(
            profile_model_for(rig, bins),
            alloys,
            prior,
            alloy_table=alloy_table,
            rig=rig.model_dump() if hasattr(rig, "model_dump") else {},
            **kw,
        )
        for rig, _ in rigs
    ]
    w = np.asarray([weight for _, weight in rigs], float)
    w = w / w.sum()

    def avg(values) -> float:
        return float(np.dot(w, list(values)))

    def err(values) -> float:
        return float(np.sqrt(np.dot(w**2, np.square(list(values)))))

    out: dict = {
        "prior": prior.describe(),
        "hard_pairs": brackets[0].hard_pairs,
        "markdown": "\n\n".join(b.markdown() for b in brackets),
        "brackets": brackets,
        "width": avg(b.width for b in brackets),
        "width_se": err(b.width_se for b in brackets),
    }
    for edge in ("lower", "upper"):
        es = [getattr(b, edge) for b in brackets]
        out.update(
            {
                edge: avg(e.accuracy for e in es),
                f"{edge}_se": err(e.se for e in es),
                f"{edge}_heavy_light": avg(e.heavy_light for e in es),
                f"{edge}_heavy_light_se": err(e.heavy_light_se for e in es),
                f"{edge}_recall": {a: avg(e.recall[a] for e in es) for a in brackets[0].alloys},
            }
        )
    return out


def _rig_dict(model) -> dict:
    rig = getattr(model, "rig", None)
    return dict(rig.model_dump()) if rig is not None and hasattr(rig, "model_dump") else {}


def phrase_gap(accuracy: float, lower: float, upper: float, upper_se: float = 0.0) -> str:
    """Where an accuracy stands against the bracket, in words (to the three decimals every table prints, so an
    accuracy equal to an edge there is "at" it, never "0.000 below")."""
    if round(lower - accuracy, 3) == 0 and accuracy < lower:
        return "at its lower edge"
    if accuracy < lower:
        return f"{lower - accuracy:.3f} below its lower edge"
    if accuracy <= upper:
        return "within the bracket"
    beyond = "beyond" if accuracy - upper > 2 * upper_se else "within"
    return f"{accuracy - upper:.3f} above its upper edge ({beyond} its error)"


__all__ = ["Bracket", "BracketEdge", "MixtureObserver", "bracket", "full_row_profile", "mixed_bracket", "phrase_gap"]

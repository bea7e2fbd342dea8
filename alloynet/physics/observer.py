"""The physics observer: the likelihood of a measured wedge profile under each alloy, with the plate's
thickness marginalised over what is known about it (a thickness prior).

The same likelihood gives the ideal-observer ceiling (applied to profiles drawn from the model itself) and
the physics-fit classifier (applied to profiles measured from captures): for each alloy it fits the plate
thickness to the profile with the forward model and weighs the fit by the prior, so it needs no training
data and classifies any alloy in the table, a user-added one included.

Model, per alloy: profile x ~ N(mu(t), S(t)), where mu(t) is the forward model's profile of the alloy's mean
in-spec composition at thickness t, and S(t) = plate-to-plate variation at fixed t (composition inside the
standard's ranges) + detector noise + plate texture. The likelihood in t is narrow (a posterior sd of
0.02-0.05 mm: composition and thickness trade off), so p(x | alloy) = integral N(x; mu(t), S(t)) prior(t) dt
is evaluated as a sum over a fine thickness grid (~0.01 mm; chi2(t) whitened, one matrix product per
covariance node), each point weighed by the prior's mass in its cell; the best-fitting t is refined by the
parabola through the best point and its neighbours. The model's own in-graph fit
(``alloynet.models.physics_prior``) computes the same sum.

Why a fine, continuous treatment matters: a prior given as a coarse list of thicknesses (e.g. 33 values
from 1 to 5 mm) tells the observer that plates come only in those thicknesses, which real plates do not,
and so overstates the ceiling for plates of any thickness.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special

from alloynet.physics.alloys import STANDARD_ALLOYS, AlloyTable, Plate, get_alloy, sample_plate

LOG_2PI = float(np.log(2 * np.pi))
# Plates of any nominal thickness in this range (mm): what `alloynet simulate`, the demo and the separability
# report assume unless told otherwise
DEFAULT_THICKNESS_RANGE_MM = (1.0, 5.0)


@dataclass(frozen=True)
class ThicknessPrior:
    """What is known about a plate's thickness before looking: any value in a range (``range_mm``), or one
    of a list of nominal values (``values_mm``); either way within the rolling tolerance (``tolerance``,
    drawn as ``sample_plate`` draws it: sigma = tolerance / 2)."""

    range_mm: tuple[float, float] | None = None
    values_mm: tuple[float, ...] | None = None
    tolerance: float = 0.015

    def __post_init__(self) -> None:
        if (self.range_mm is None) == (self.values_mm is None):
            raise ValueError("ThicknessPrior: give exactly one of range_mm and values_mm")
        lo, hi = self.bounds_nominal
        if not 0 < lo <= hi:
            raise ValueError(f"ThicknessPrior: thicknesses must be > 0 mm, got {lo}..{hi}")

    @classmethod
    def of(
        cls, thicknesses_mm: Sequence[float] | None = None, thickness_range_mm: Sequence[float] | None = None
    ) -> ThicknessPrior:
        if thickness_range_mm is not None:
            return cls(range_mm=(float(thickness_range_mm[0]), float(thickness_range_mm[1])))
        return cls(values_mm=tuple(sorted(float(t) for t in (thicknesses_mm or (1.0, 2.0, 5.0)))))

    @property
    def continuous(self) -> bool:
        return self.range_mm is not None

    @property
    def bounds_nominal(self) -> tuple[float, float]:
        return (self.range_mm[0], self.range_mm[1]) if self.continuous else (min(self.values_mm), max(self.values_mm))

    def bounds(self) -> tuple[float, float]:
        """Where actual thicknesses can lie (nominal bounds widened by the tolerance)."""
        lo, hi = self.bounds_nominal
        return lo * (1 - self.tolerance), hi * (1 + self.tolerance)

    def representative(self, n: int = 5) -> list[float]:
        """A few thicknesses spanning the prior (for per-thickness summaries)."""
        return list(np.linspace(*self.range_mm, n)) if self.continuous else list(self.values_mm)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Nominal thicknesses of ``n`` plates drawn from the prior (the tolerance is applied by sample_plate)."""
        if self.continuous:
            return rng.uniform(*self.range_mm, n)
        return rng.choice(np.asarray(self.values_mm), n)

    def log_density(self, t: np.ndarray, width: np.ndarray) -> np.ndarray:
        """log of the prior density at ``t`` smoothed by a Gaussian of sd ``width`` (the fit's own spread)."""
        t, width = np.asarray(t, float), np.asarray(width, float)
        if self.continuous:
            lo, hi = self.range_mm
            s = np.sqrt(width**2 + (t * self.tolerance / 2) ** 2)
            mass = special.ndtr((hi - t) / s) - special.ndtr((lo - t) / s)
            return np.log(np.maximum(mass, 1e-300)) - np.log(hi - lo)
        out = np.full(t.shape, -np.inf)
        for v in self.values_mm:
            s2 = width**2 + (v * self.tolerance / 2) ** 2
            out = np.logaddexp(out, -0.5 * (t - v) ** 2 / s2 - 0.5 * np.log(2 * np.pi * s2))
        return out - np.log(len(self.values_mm))

    def describe(self) -> str:
        if self.continuous:
            return f"any thickness {self.range_mm[0]:g}-{self.range_mm[1]:g} mm"
        return "thickness one of " + ", ".join(f"{v:g}" for v in self.values_mm) + " mm"

    def grid(self, grid: int, nodes: int) -> tuple[np.ndarray, np.ndarray]:
        """(thickness grid [grid], covariance nodes [nodes]) a likelihood under this prior is summed over: the
        prior's bounds, widened by 3 % to let the fit move a little past them."""
        lo, hi = self.bounds()
        lo, hi = lo * 0.97, hi * 1.03
        return np.linspace(lo, hi, grid), np.linspace(lo, hi, nodes)


@dataclass(frozen=True)
class TailedPrior:
    """A training prior (``inner``) with a small mass (``tail_mass``) spread evenly over thicknesses beyond it,
    from ``span[0]`` x its lower nominal bound to ``span[1]`` x its upper one.

    The ideal observer's prior is the test data's own (a ceiling for that prior, so no tail). A model's prior
    is its training data's, and the line will show it plates outside that range: under the bare prior every
    alloy's likelihood of a 6 mm plate trained on 1-5 mm is the far tail of a Gaussian at the grid's edge
    (garbage, and the logits follow it), and nothing says where the plate is. With the tail the forward
    model fits such a plate as it fits any other, and the posterior mass beyond the training bounds says
    that it is out of range. Inside the range the tail only scales every alloy's likelihood by 1 - tail_mass.

    The grid (``grid``) keeps the inner prior's own grid and covariance nodes point for point and adds
    ``tail_grid`` points and ``tail_nodes`` nodes below and above it."""

    inner: ThicknessPrior
    tail_mass: float = 0.01
    span: tuple[float, float] = (0.5, 1.5)
    tail_grid: tuple[int, int] = (32, 128)
    tail_nodes: tuple[int, int] = (1, 4)

    def __post_init__(self) -> None:
        if not 0 < self.tail_mass < 1:
            raise ValueError(f"TailedPrior: tail_mass must lie in (0, 1), got {self.tail_mass}")
        if not 0 < self.span[0] < 1 < self.span[1]:
            raise ValueError(f"TailedPrior: span must be (below 1, above 1) x the inner bounds, got {self.span}")

    @property
    def continuous(self) -> bool:
        return self.inner.continuous

    def extension(self) -> tuple[float, float]:
        """The thicknesses the tail covers: (lowest, highest)."""
        lo, hi = self.inner.bounds_nominal
        return lo * self.span[0], hi * self.span[1]

    def bounds(self) -> tuple[float, float]:
        """The training prior's bounds (where its own mass lies): beyond them the plate is out of range."""
        return self.inner.bounds()

    def log_density(self, t: np.ndarray, width: np.ndarray) -> np.ndarray:
        t = np.asarray(t, float)
        (a, b), (lo, hi) = self.extension(), self.inner.bounds()
        beyond = ((t >= a) & (t < lo)) | ((t > hi) & (t <= b))
        length = max(lo - a, 0.0) + max(b - hi, 0.0)
        tail = np.where(beyond, np.log(self.tail_mass / length), -np.inf)
        return np.logaddexp(np.log1p(-self.tail_mass) + self.inner.log_density(t, width), tail)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return self.inner.sample(n, rng)

    def representative(self, n: int = 5) -> list[float]:
        return self.inner.representative(n)

    def describe(self) -> str:
        a, b = self.extension()
        return f"{self.inner.describe()}, {self.tail_mass:.0%} spread over {a:g}-{b:g} mm beyond it"

    def grid(self, grid: int, nodes: int) -> tuple[np.ndarray, np.ndarray]:
        tg, tn = self.inner.grid(grid, nodes)
        a, b = self.extension()
        (gb, ga), (nb, na) = self.tail_grid, self.tail_nodes
        below = np.linspace(a, tg[0], gb + 1)[:-1] if a < tg[0] else np.empty(0)
        above = np.linspace(tg[-1], b, ga + 1)[1:] if b > tg[-1] else np.empty(0)
        # extension nodes at the middles of equal parts of each extension (a node's covariance serves the
        # grid points nearest to it)
        nodes_below = a + (tg[0] - a) * (np.arange(nb) + 0.5) / nb if len(below) else np.empty(0)
        nodes_above = tg[-1] + (b - tg[-1]) * (np.arange(na) + 0.5) / na if len(above) else np.empty(0)
        return np.concatenate([below, tg, above]), np.concatenate([nodes_below, tn, nodes_above])


def _sample_compositions(alloy: str, n: int, rng: np.random.Generator, alloy_table: AlloyTable) -> list:
    return [sample_plate(alloy, 2.0, rng, f"obs-{i}", alloy_table=alloy_table) for i in range(n)]


def _profiles(model, fractions, density: float, thicknesses: np.ndarray) -> np.ndarray:
    if hasattr(model, "profiles"):
        return model.profiles(fractions, density, thicknesses)
    return np.stack([model.profile(fractions, density, float(t)) for t in thicknesses])


def noise_cov(model, fractions, density: float, thickness_mm: float) -> np.ndarray:
    """Covariance of the binned profile from detector noise and plate texture (a smooth field of extra
    thickness: its effect is the profile's derivative in t times the field, correlated along the wedge)."""
    cov = np.diag(model.noise_var(fractions, density, thickness_mm))
    rig = model.rig
    field = getattr(model, "texture_field_cov", None)
    if field is not None and getattr(rig, "texture_rel", 0) > 0:
        h = 1e-3 * thickness_mm
        g = (
            _profiles(model, fractions, density, np.array([thickness_mm + h]))[0]
            - _profiles(model, fractions, density, np.array([thickness_mm - h]))[0]
        ) / (2 * h)
        channels = len(g) // model.bins
        f = np.kron(np.ones((channels, channels)), field())
        cov = cov + (rig.texture_rel * thickness_mm) ** 2 * np.outer(g, g) * f
    return cov


class ThicknessMarginal:
    """log integral N(x; mean(t), S(t)) prior(t) dt for profiles x, with mean(t) tabulated on a thickness
    grid and S(t) given at a few nodes (each grid point uses its nearest node's). Subclasses say where mean
    and S come from: the forward model (``AlloyLikelihood``) or data (the Gaussian profile baseline)."""

    def __init__(
        self, grid: np.ndarray, mean: np.ndarray, nodes: np.ndarray, covs: Sequence[np.ndarray], prior: ThicknessPrior
    ):
        self.grid, self.mean, self.nodes, self.prior = (
            np.asarray(grid, float),
            np.asarray(mean, float),
            np.asarray(nodes, float),
            prior,
        )
        d = self.mean.shape[1]
        self.chol, self.logdet = [], []
        for cov in covs:
            lch = np.linalg.cholesky(np.asarray(cov) + 1e-12 * np.eye(d))
            self.chol.append(lch)
            self.logdet.append(2 * float(np.log(np.diag(lch)).sum()))
        self.node_of = self.node_index(self.grid)  # grid point -> node
        # What each grid point adds to the sum over t besides its chi2: -log det S(t) / 2 and the prior's mass in
        # its cell (the model's in-graph fit, alloynet.models.physics_prior, takes these same weights). A cell is
        # the span between the midpoints to its neighbours: the grid may be finer in one part than another
        # (a TailedPrior's extension).
        h = np.gradient(self.grid) if len(self.grid) > 1 else np.ones(1)
        self.log_weight = (
            -0.5 * np.asarray(self.logdet)[self.node_of]
            + prior.log_density(self.grid, np.full(len(self.grid), h / 2))
            + np.log(h)
        )

    def node_index(self, t: np.ndarray) -> np.ndarray:
        return np.abs(np.asarray(t)[:, None] - self.nodes[None]).argmin(1)

    def loglik(self, x: np.ndarray, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
        """(log p(x | alloy), best-fitting thickness in mm) for profiles x [N, D]."""
        x = np.atleast_2d(np.asarray(x, float))
        out_ll, out_t = np.empty(len(x)), np.empty(len(x))
        for s in range(0, len(x), chunk):
            out_ll[s : s + chunk], out_t[s : s + chunk] = self._loglik(x[s : s + chunk])
        return out_ll, out_t

    def _loglik(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n, g = len(x), len(self.grid)
        chi2 = np.empty((n, g))
        for k, lch in enumerate(self.chol):
            sel = np.nonzero(self.node_of == k)[0]
            if len(sel) == 0:
                continue
            xw = np.linalg.solve(lch, x.T).T  # [N, D]
            mw = np.linalg.solve(lch, self.mean[sel].T).T  # [g_k, D]
            chi2[:, sel] = (xw * xw).sum(1)[:, None] - 2 * xw @ mw.T + (mw * mw).sum(1)[None]
        i = np.clip(chi2.argmin(1), 1, g - 2)
        rows = np.arange(n)
        cm, c0, cp = chi2[rows, i - 1], chi2[rows, i], chi2[rows, i + 1]
        h = 0.5 * (self.grid[i + 1] - self.grid[i - 1])
        curv = np.maximum(cm - 2 * c0 + cp, 1e-12)  # h^2 d2chi2/dt2
        t_best = self.grid[i] + np.clip(0.5 * (cm - cp) / curv, -1.0, 1.0) * h
        # The integral over t as a sum over the grid (each point weighed by the prior's mass in its cell): the
        # integrand is at least a grid step wide, and a sum of Gaussians sampled that finely is exact to far
        # below what matters. A Laplace approximation around the best point would lose the mass of second
        # minima and of fits at a covariance node's edge, and classify measurably worse.
        ll = special.logsumexp(-0.5 * chi2 + self.log_weight[None], axis=1) - 0.5 * x.shape[1] * LOG_2PI
        return ll, t_best


class AlloyLikelihood(ThicknessMarginal):
    """log p(profile | alloy) for one alloy on one rig from the forward model, thickness marginalised."""

    def __init__(
        self,
        model,
        alloy: str,
        prior: ThicknessPrior,
        plates: int = 150,
        nodes: int = 9,
        grid: int = 400,
        rng: np.random.Generator | None = None,
        alloy_table: AlloyTable = STANDARD_ALLOYS,
    ):
        rng = rng or np.random.default_rng(0)
        self.model, self.alloy = model, alloy
        tgrid, tnodes = prior.grid(grid, nodes)
        nodes = len(tnodes)
        self.plates = _sample_compositions(alloy, plates, rng, alloy_table)
        wt = {
            el: float(np.mean([p.wt_pct.get(el, 0.0) for p in self.plates]))
            for el in set().union(*(p.wt_pct for p in self.plates))
        }
        self.mean_plate = Plate("obs-mean", alloy, 2.0, 2.0, wt, float(np.mean([p.density_g_cm3 for p in self.plates])))
        fr, rho = self.mean_plate.fractions(), self.mean_plate.density_g_cm3
        per_plate = np.stack([_profiles(model, p.fractions(), p.density_g_cm3, tnodes) for p in self.plates])
        self.cov_plate = [np.cov(per_plate[:, k], rowvar=False) for k in range(nodes)]  # composition, fixed t
        self.cov_noise = [noise_cov(model, fr, rho, float(t)) for t in tnodes]
        super().__init__(
            tgrid,
            _profiles(model, fr, rho, tgrid),
            tnodes,
            [cp + cn for cp, cn in zip(self.cov_plate, self.cov_noise)],
            prior,
        )


def by_nearest_wedge(wedges: np.ndarray, known: Sequence[float]) -> dict[float, np.ndarray]:
    """Indices of the captures of each wedge, a wedge not in ``known`` going to the nearest known one (which
    wedge's observer reads a capture)."""
    known = np.asarray(sorted(known), float)
    nearest = known[np.abs(np.asarray(wedges, float)[:, None] - known[None]).argmin(1)]
    return {float(w): np.nonzero(nearest == w)[0] for w in known if (nearest == w).any()}


class PhysicsObserver:
    """The likelihoods of several alloys on one rig: ``log_likelihoods`` [N, K] and a classifier."""

    def __init__(
        self,
        model,
        alloys: Sequence[str],
        prior: ThicknessPrior,
        plates: int = 150,
        seed: int = 0,
        alloy_table: AlloyTable = STANDARD_ALLOYS,
        **kw,
    ):
        rng = np.random.default_rng(seed)
        for a in alloys:
            get_alloy(a, alloy_table)
        self.model, self.alloys, self.prior, self.alloy_table = model, list(alloys), prior, alloy_table
        self.likelihoods = [
            AlloyLikelihood(model, a, prior, plates, rng=rng, alloy_table=alloy_table, **kw) for a in self.alloys
        ]

    def log_likelihoods(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(log p(x | alloy) [N, K], fitted thickness under each alloy [N, K])."""
        res = [lk.loglik(x) for lk in self.likelihoods]
        return np.stack([r[0] for r in res], 1), np.stack([r[1] for r in res], 1)

    def draw(self, alloy_index: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Profiles of ``n`` plates of one alloy drawn from the prior, as the model says they look (plate
        composition and thickness drawn as the simulator draws them, detector noise and texture Gaussian);
        returns (profiles [n, D], actual thicknesses [n])."""
        lk = self.likelihoods[alloy_index]
        nominal = self.prior.sample(n, rng)
        xs, ts = [], []
        for i, t in enumerate(nominal):
            p = sample_plate(lk.alloy, float(t), rng, f"draw-{i}", alloy_table=self.alloy_table)
            mean = _profiles(self.model, p.fractions(), p.density_g_cm3, np.array([p.thickness_mm]))[0]
            ln = np.linalg.cholesky(
                lk.cov_noise[int(lk.node_index(np.array([p.thickness_mm]))[0])] + 1e-14 * np.eye(len(mean))
            )
            xs.append(mean + ln @ rng.standard_normal(len(mean)))
            ts.append(p.thickness_mm)
        return np.asarray(xs), np.asarray(ts)

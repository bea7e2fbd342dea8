"""The physics fit inside the model: per alloy, the forward model's likelihood of the capture's wedge profile
with the plate thickness marginalised over the training data's thickness prior, added to the logits.

``alloynet.evaluate.baselines.PhysicsFit`` (numpy, ``alloynet.physics.observer``) classifies at the ideal observer's
ceiling where the forward model matches the rig, with no training data: 0.84 on 1/2/5 mm plates, where the
profile MLP alone reached 0.75 in the same budget, because resolving a few tenths of a percent of attenuation
at each thickness of a grid is a sharp function for an MLP to learn and a plain lookup for the forward model.
Here the same likelihood is evaluated in the graph (so Triton, TorchServe and ``alloynet infer`` answer with
it): the capture's binned profile (interquartile row mean of the plate's rows, as the baselines read it) is
compared with the forward model's mean profile of each alloy on a fine thickness grid (400 points, about
0.01 mm on 1-5 mm), each grid point whitened by the covariance at its nearest of 9 thickness nodes
(composition inside the standard, detector noise, plate texture), and
log p(x | alloy) = logsumexp_t [-chi2(t) / 2 - log det S(t) / 2 + log P(t)], P(t) the prior's mass in the grid
cell: the observer's own sum (its ``log_weight`` per grid point), in float32.

Beyond the training range: the prior is the training data's plus a small tail (``TAIL_MASS``, spread from 0.5x
its lowest to 1.5x its highest thickness; ``alloynet.physics.observer.TailedPrior``) on extra grid points and
nodes, the range's own grid kept point for point. Without it a plate thicker than any in training was fitted by
the far tail of the grid's last point under every alloy, and the model answered at chance (0.200 on 5.5-7 mm
plates trained on 1-5 mm). With it the forward model fits such a plate, and the fit's posterior mass of the
thickness beyond the training prior's bounds (``train_bounds``, summed over the alloys) flags the capture's
thickness out of range (``alloynet.models.answer``) where the regression head, saturating inside its range,
cannot. The price: an alloy that fits an in-range plate only at a thickness beyond the range is no longer all but
excluded; it costs the tail's prior ratio (about 70x for 1-5 mm with TAIL_MASS 1 %) and its misfit instead.

The model's logits are the trunk's plus ``weight`` times the fit's log posterior (clamped at -30): at the
start of training the model answers as the physics fit does, and training learns what the forward model
misses (a rig it does not describe, calibration offsets); ``weight`` is learnt too, so a rig the forward model
describes badly can turn the fit down. Buffers are sized by the spec (wedges, grid, nodes, profile size)
and filled once from the training data's rigs and prior (``fit``); the wedge of each capture picks the
nearest fitted wedge's tables.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from alloynet.data.transforms import wedge_profile

LOG_FLOOR = -30.0
GRID, NODES, BINS = 400, 9, 32
# The prior beyond the training range (alloynet.physics.observer.TailedPrior): 1 % of the mass spread evenly
# over 0.5x the lowest to 1.5x the highest training thickness (0.5-7.5 mm for 1-5 mm). A plate beyond the range
# misfits every alloy inside it by a chi2 of hundreds, so even a small tail wins it; an in-range plate that a
# wrong alloy fits just beyond the range (a chi2 a few worse) is what a large tail lets through. Measured on the
# `own` benchmark model with its tables refitted (docs/benchmarks.md): tail 0.1 % / 1 % / 3 % -> 5.5-7 mm plates
# 0.533 / 0.577 / 0.600 (flagged 86 / 92 / 96 %), 1/2/5 mm plates 0.547 / 0.540 / 0.523 (0.550 without), any
# thickness and the test split unchanged. Inside the range every alloy's likelihood drops by log(0.99), the
# posterior does not move. The grid: the training range's own 400 points and 9 nodes unchanged, plus 32 points and
# 1 node below it and 128 points and 4 nodes above (about 0.014 and 0.017 mm for 1-5 mm, where the likelihood in
# t is 0.02-0.05 mm wide; the nodes as far apart as the range's own).
TAIL_MASS, TAIL_SPAN, TAIL_GRID, TAIL_NODES = 0.01, (0.5, 1.5), (32, 128), (1, 4)
# Wedge sizes between the training ones get tables too, every WEDGE_STEP_MM: a capture's wedge picks the
# nearest table, and the forward model describes a 60 mm wedge as well as a 50 or 70 mm one, where the 50 or
# 70 mm tables misfit it everywhere (the robustness suite's unseen 60 mm wedge was at chance with them).
WEDGE_STEP_MM = 5.0
# Mean profiles per table, alloy and this many thicknesses across the grid: what a capture sent without its wedge
# size is matched to, by shape, to pick its table (``table_of``)
SHAPE_POINTS = 24
FAR_SHAPE = 1e6  # the shapes of a table no wedge-less capture is matched to


def table_wedges(training_wedges_mm: Sequence[float], step_mm: float = WEDGE_STEP_MM) -> list[float]:
    """The wedge sizes to tabulate for training data with these wedges: the training ones, and every multiple
    of ``step_mm`` between the smallest and the largest that is at least half a step from each of them."""
    train = sorted({float(w) for w in training_wedges_mm})
    if len(train) < 2:
        return train
    fill = np.arange(np.ceil(train[0] / step_mm) * step_mm, train[-1], step_mm)
    fill = [float(w) for w in fill if min(abs(w - t) for t in train) >= step_mm / 2]
    return sorted(train + fill)


def physics_spec(
    wedges_mm: Sequence[float], channels: int, width: int, bins: int = BINS, tail: bool = True
) -> dict[str, Any]:
    """The shapes a model's physics tables need (what a checkpoint records to rebuild the model). ``grid`` and
    ``nodes`` count the training range's points; ``tail`` (absent in checkpoints from before it) the extension's."""
    spec = {
        "wedges_mm": sorted(float(w) for w in wedges_mm),
        "bins": int(min(bins, width)),
        "channels": int(channels),
        "grid": GRID,
        "nodes": NODES,
    }
    if tail:
        spec["tail"] = {"mass": TAIL_MASS, "span": list(TAIL_SPAN), "grid": list(TAIL_GRID), "nodes": list(TAIL_NODES)}
    return spec


class PhysicsLikelihood(nn.Module):
    # Buffers older checkpoints lack, loaded as built: no grid, bounds 0-inf (never out of range), span_sd 0 (a
    # capture without levels not integrated); shapes from each table's reference profile (``_load_from_state_dict``)
    OPTIONAL_BUFFERS = ("grid_mm", "train_bounds", "span_sd", "shapes")

    def __init__(
        self,
        num_classes: int,
        wedges_mm: Sequence[float],
        channels: int,
        bins: int = BINS,
        grid: int = GRID,
        nodes: int = NODES,
        tail: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        if not wedges_mm:
            raise ValueError("physics prior: no wedge sizes to fit the forward model for")
        self.bins, self.channels = int(bins), int(channels)
        self.tail = dict(tail) if tail else None
        self.range_grid, self.range_nodes = int(grid), int(nodes)  # the training range's own points
        if self.tail:
            grid += sum(self.tail["grid"])
            nodes += sum(self.tail["nodes"])
        k, w, d = int(num_classes), len(wedges_mm), int(channels) * int(bins)
        self.register_buffer("wedges_mm", torch.tensor([float(v) for v in wedges_mm], dtype=torch.float32))
        self.register_buffer("reference", torch.zeros(w, d))  # subtracted before whitening
        self.register_buffer("whiten", torch.zeros(w, k, nodes, d, d))  # L^-1 per (wedge, alloy, node)
        self.register_buffer("mean_white", torch.zeros(w, k, grid, d))  # whitened mean profile per grid point
        self.register_buffer("node_of", torch.zeros(grid, dtype=torch.long))
        self.register_buffer("log_weight", torch.zeros(w, k, grid))  # -logdet/2 + log prior mass
        self.register_buffer("grid_mm", torch.zeros(grid))  # the thickness of each grid point
        self.register_buffer("train_bounds", torch.tensor([0.0, float("inf")]))  # the training prior's bounds
        # log sd of a session's flat-minus-dark span about the training captures' (``session_spread``): what a
        # capture sent without its levels is marginalised over; 0 (checkpoints from before it): not marginalised
        self.register_buffer("span_sd", torch.zeros(()))
        # each table's mean profiles (alloys x SHAPE_POINTS thicknesses), each channel's mean removed
        self.register_buffer("shapes", torch.zeros(w, k * SHAPE_POINTS, d))
        self.register_buffer("fitted", torch.zeros(()))
        self.weight = nn.Parameter(torch.ones(()))
        # What the span integral reads of the tables, derived from them once (after ``fit`` and after every load),
        # not per batch: u = L^-1 1 per node, u.u per node, u.(whitened mean) per grid point; never saved
        self.register_buffer("span_u", torch.zeros(w, k, nodes, d), persistent=False)
        self.register_buffer("span_uu", torch.zeros(w, k, nodes), persistent=False)
        self.register_buffer("span_um", torch.zeros(w, k, grid), persistent=False)
        self.register_load_state_dict_post_hook(lambda module, _keys: module.derive_span_tables())

    def full_prior(self, prior):
        """The training data's thickness prior with the spec's tail beyond it (``TailedPrior``), if it has one."""
        from alloynet.physics.observer import TailedPrior

        if not self.tail:
            return prior
        return TailedPrior(
            prior,
            float(self.tail["mass"]),
            tuple(self.tail["span"]),
            tuple(self.tail["grid"]),
            tuple(self.tail["nodes"]),
        )

    def observers(
        self, rigs: Mapping[float, object], prior, alloys: Sequence[str], seed: int = 0, plates: int = 100
    ) -> dict:
        """The forward model of each tabulated wedge's rig as observers (``{wedge_mm: PhysicsObserver}``) under
        ``prior`` (already ``full_prior``): what ``fit`` tabulates, and what a correction is chosen on."""
        from alloynet.physics.observer import PhysicsObserver
        from alloynet.physics.profile import profile_model_for

        wedges = [float(v) for v in self.wedges_mm.tolist()]
        missing = [w for w in wedges if w not in rigs]
        if missing:
            raise ValueError(f"physics prior: no rig settings for wedge(s) {missing} mm (have {sorted(rigs)})")
        return {
            w: PhysicsObserver(
                profile_model_for(rigs[w], self.bins),
                list(alloys),
                prior,
                plates=plates,
                seed=seed,
                grid=self.range_grid,
                nodes=self.range_nodes,
            )
            for w in wedges
        }

    def fit(
        self,
        rigs: Mapping[float, object],
        prior,
        alloys: Sequence[str],
        seed: int = 0,
        plates: int = 100,
        correct: Callable[[dict], dict] | None = None,
        shape_wedges: Sequence[float] | None = None,
    ) -> None:
        """Tabulate the forward model of each wedge's rig (``{wedge_mm: rig config}``, one per fitted wedge) for
        ``alloys`` under the training data's thickness ``prior`` (``alloynet.physics.observer.ThicknessPrior``),
        with the spec's tail beyond it (``TailedPrior``) if it has one. ``correct`` maps the observers
        (``{wedge_mm: PhysicsObserver}``) to the ones to tabulate: the rig's own captures correcting the
        forward model's mean profiles (``alloynet.physics.correction``). A capture sent without its wedge size is
        matched to the tables of ``shape_wedges`` only (the training data's wedges; default: every table): a
        wedge-less capture comes from the line's own wedges, and the tables between them are 5 mm apart, closer
        than the forward model may match a rig's profile shape (docs/benchmarks.md)."""
        prior = self.full_prior(prior)
        wedges = [float(v) for v in self.wedges_mm.tolist()]
        observers = self.observers(rigs, prior, alloys, seed, plates)
        if correct is not None:
            observers = correct(observers)
        ref, white, mean_white, log_weight, shapes = [], [], [], [], []
        for w in wedges:
            obs = observers[w]
            at = np.linspace(0, len(obs.likelihoods[0].grid) - 1, SHAPE_POINTS).round().astype(int)
            shape = np.concatenate([self._shape(lk.mean[at]) for lk in obs.likelihoods])
            if shape_wedges is not None and w not in {float(v) for v in shape_wedges}:
                shape = np.full_like(shape, FAR_SHAPE)  # never the nearest
            shapes.append(shape)
            if obs.likelihoods[0].mean.shape[1] != self.reference.shape[1]:
                raise ValueError(
                    f"physics prior: the forward model gives {obs.likelihoods[0].mean.shape[1]} profile "
                    f"values per capture, the model expects {self.reference.shape[1]}"
                )
            r = obs.likelihoods[0].mean[len(obs.likelihoods[0].grid) // 2]
            ref.append(r)
            inv = [np.stack([np.linalg.inv(c) for c in lk.chol]) for lk in obs.likelihoods]  # [nodes, D, D] each
            white.append(np.stack(inv))
            mean_white.append(
                np.stack([np.einsum("gde,ge->gd", i[lk.node_of], lk.mean - r) for i, lk in zip(inv, obs.likelihoods)])
            )
            log_weight.append(np.stack([lk.log_weight for lk in obs.likelihoods]))
        with torch.no_grad():
            self.reference.copy_(torch.as_tensor(np.stack(ref)))
            self.whiten.copy_(torch.as_tensor(np.stack(white)))
            self.mean_white.copy_(torch.as_tensor(np.stack(mean_white)))
            self.log_weight.copy_(torch.as_tensor(np.maximum(np.stack(log_weight), -1e4)))
            self.node_of.copy_(torch.as_tensor(obs.likelihoods[0].node_of))  # one grid for every alloy and wedge
            self.grid_mm.copy_(torch.as_tensor(obs.likelihoods[0].grid))
            self.train_bounds.copy_(torch.as_tensor(prior.bounds()))
            self.shapes.copy_(torch.as_tensor(np.stack(shapes)))
            self.fitted.fill_(1.0)
        self.derive_span_tables()

    @torch.no_grad()
    def derive_span_tables(self) -> None:
        u = self.whiten.sum(-1)
        self.span_u.copy_(u)
        self.span_uu.copy_((u * u).sum(-1))
        self.span_um.copy_(torch.einsum("wkgd,wkgd->wkg", u[:, :, self.node_of, :], self.mean_white))

    def _shape(self, profiles):
        """Profiles [..., C * bins] with each channel's mean removed (numpy or torch)."""
        x = profiles.reshape(*profiles.shape[:-1], self.channels, self.bins)
        return (x - x.mean(-1)[..., None]).reshape(profiles.shape)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if prefix + "shapes" not in state_dict and prefix + "reference" in state_dict:
            # a checkpoint from before the shapes: each table's reference profile stands for them
            ref = self._shape(state_dict[prefix + "reference"])
            state_dict[prefix + "shapes"] = ref[:, None, :].expand_as(self.shapes).clone()
        for name in self.OPTIONAL_BUFFERS:  # a checkpoint from before the tail: keep the buffers as built
            state_dict.setdefault(prefix + name, getattr(self, name).detach().clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def profile(self, a: torch.Tensor) -> torch.Tensor:
        """-ln T of the plate's rows [B, C, H, W] -> the binned profile [B, C * bins], binned as the baselines and
        the forward model bin it (integer column edges floor(i * W / bins))."""
        p = wedge_profile(a.float())  # [B, C, W]
        width = p.shape[-1]
        col = torch.arange(width, device=p.device)
        bin_of = torch.div((col + 1) * self.bins - 1, width, rounding_mode="floor")
        m = (bin_of[:, None] == torch.arange(self.bins, device=p.device)[None]).float()  # [W, bins]
        return (p @ (m / m.sum(0, keepdim=True))).flatten(1)

    def table_of(self, x: torch.Tensor, wedge_mm: torch.Tensor) -> torch.Tensor:
        """Each capture's table [B]: the nearest fitted wedge to its size, or, sent without one (``wedge_mm`` <= 0),
        the table with a mean profile of the capture's shape (``shapes``: each channel's mean removed, since a
        plate and the levels' span move the profile up, the wedge tilts it, and 20 mm of Al between a 50 and a
        70 mm wedge tilts it more than any plate; matched over alloys and thicknesses, since a thick plate of a
        Cu/Zn alloy hardens the beam and tilts it too)."""
        nearest = (wedge_mm.float().reshape(-1, 1) - self.wedges_mm[None]).abs().argmin(1)
        shape = self._shape(x)  # [B, D]
        dist = ((shape[:, None, None, :] - self.shapes[None]) ** 2).sum(-1).amin(-1)  # [B, tables]
        return torch.where(wedge_mm.float().reshape(-1) > 0, nearest, dist.argmin(1))

    def log_joint(
        self, a: torch.Tensor, wedge_mm: torch.Tensor, calibration_missing: torch.Tensor | None = None
    ) -> torch.Tensor:
        """log p(profile, thickness cell | alloy) [B, K, grid], up to a constant shared by the alloys.

        A capture sent without its levels (``calibration_missing`` [B] as 0/1) was converted with the training
        captures' typical ones, so its profile is moved by an unknown delta alike in every bin (-ln T gains the
        log of the ratio of its own span to theirs): the likelihood is integrated over delta ~ N(0, span_sd^2).
        Whitened, the profile moves along u = L^-1 1, so chi2(delta) = chi2 + 2 delta u.r + delta^2 u.u (r the
        whitened residual) and the integral is exact: chi2 -> chi2 - s^2 (u.r)^2 / (1 + s^2 u.u), plus
        log(1 + s^2 u.u) (s = span_sd; 0 where the levels came: the same joint as without the term)."""
        x = self.profile(a)
        wi = self.table_of(x, wedge_mm)
        xw = torch.einsum("bknde,be->bknd", self.whiten[wi], x - self.reference[wi])  # [B, K, nodes, D]
        diff = xw[:, :, self.node_of, :] - self.mean_white[wi]  # [B, K, grid, D]
        chi2 = (diff * diff).sum(-1)
        joint = -0.5 * chi2 + self.log_weight[wi]
        if calibration_missing is None:
            return joint
        ux = (self.span_u[wi] * xw).sum(-1)  # [B, K, nodes]
        ur = ux[:, :, self.node_of] - self.span_um[wi]  # u.r [B, K, grid]
        uu = self.span_uu[wi][:, :, self.node_of]
        s2 = ((self.span_sd * calibration_missing.float().reshape(-1)) ** 2)[:, None, None]
        return joint + 0.5 * s2 * ur * ur / (1.0 + s2 * uu) - 0.5 * torch.log1p(s2 * uu)

    def log_likelihoods(self, a: torch.Tensor, wedge_mm: torch.Tensor) -> torch.Tensor:
        """log p(profile | alloy) [B, K], up to a constant shared by the alloys."""
        return torch.logsumexp(self.log_joint(a, wedge_mm), dim=-1)

    def forward(
        self, a: torch.Tensor, wedge_mm: torch.Tensor, calibration_missing: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(The term added to the logits [B, K]: weight x the fit's log posterior; the posterior mass of the
        thickness beyond the training prior's bounds [B], over all alloys), both zero until fitted. Always in
        float32: under CUDA autocast the whitening products would run in bf16 (3 digits; chi2 needs 6)."""
        if torch.is_autocast_enabled(a.device.type):
            with torch.autocast(a.device.type, enabled=False):
                return self.forward(a.float(), wedge_mm.float(), calibration_missing)
        joint = self.log_joint(a, wedge_mm, calibration_missing)  # [B, K, grid]
        ll = torch.logsumexp(joint, dim=-1)
        lse = torch.logsumexp(ll, dim=1, keepdim=True)
        lp = torch.clamp(ll - lse, min=LOG_FLOOR)
        outside = ((self.grid_mm < self.train_bounds[0]) | (self.grid_mm > self.train_bounds[1])).float()
        mass = (torch.exp(joint - lse[:, :, None]) * outside).sum(dim=(1, 2))
        return self.weight * self.fitted * lp, self.fitted * mass


def build_physics(spec: Mapping[str, Any] | None, num_classes: int) -> PhysicsLikelihood | None:
    if not spec:
        return None
    return PhysicsLikelihood(
        num_classes, spec["wedges_mm"], spec["channels"], spec["bins"], spec["grid"], spec["nodes"], spec.get("tail")
    )

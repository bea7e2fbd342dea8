"""Simulated captures on demand, mixed into training so a model on a CPU can see as many captures as the
physics needs (a few thousand labelled captures leave a profile model several hundredths short of the
ceiling; tens of thousands reach it).

Each capture is a pure function of (seed, round, index): the same seed gives the same captures in any
process and any order. ``fresh=False`` simulates one pool (round 0) and keeps it in memory for every epoch;
``fresh=True`` draws a new round every epoch. Alloys cycle so every class is equally represented; plate
thickness comes from the data's own thickness prior, wedge sizes from the data's, and each simulated session
can drift (``session_drift``) with its flat frame recording it, as on a real rig. ``held_out=True`` gives
captures of a round no epoch draws (``HELD_OUT_ROUND``), taken as a rig's are (``alloynet.data.simulate``):
each session's dark and flat levels measured from its own frames rather than the rig's noise-free levels. The
model's answers are recalibrated on them, so they must look like the store's captures in every detail a
conformal threshold can feel (with noise-free levels, real captures were covered 0.01-0.02 less than these).

By default the rig is the data set's own nominal rig (read from its sidecars) simulated by alloynet's
simulator; ``rig`` overrides settings, ``simulator: second_rig`` uses the independently written second rig,
``rig_profile`` the simulator fitted to a lab's rig (the rig fit, ``alloynet rig fit``) with ``rig_variants``
rigs drawn inside the fit's uncertainty, one per simulated session in turn (pretraining for a real rig should
not trust the fitted rig further than the fit does).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch.utils.data import Dataset

from alloynet.data.rigs import nominal_rig
from alloynet.physics.alloys import sample_plate
from alloynet.physics.measure import frame_level
from alloynet.physics.observer import ThicknessPrior
from alloynet.physics.rig_profile import load_rig_profile, needs_alloynet_simulator
from alloynet.physics.second_rig import SecondRig, SecondRigConfig
from alloynet.physics.simulator import RigConfig, RigSimulator

HELD_OUT_ROUND = 2**31  # never an epoch number


class SyntheticConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    captures: int = Field(0, ge=0, description="simulated training captures (per epoch); 0 = none")
    fresh: bool = Field(False, description="new captures every epoch; otherwise one pool, kept in memory")
    simulator: Literal["alloynet", "second_rig"] = "alloynet"
    rig: dict[str, Any] = Field(default_factory=dict, description="RigConfig settings overriding the data's own")
    second_rig: dict[str, Any] = Field(default_factory=dict, description="the second rig's deviations")
    thickness_range_mm: tuple[float, float] | None = Field(None, description="default: the data's prior")
    thicknesses_mm: list[float] | None = None
    wedges_mm: list[float] | None = Field(None, description="default: the data's wedge sizes")
    session_drift: float = Field(0.0, ge=0, lt=0.5, description="tube output per session within +-this fraction")
    session_size: int = Field(64, ge=1)
    rig_profile: str | None = Field(
        None,
        description="a rig profile (alloynet rig fit): the alloynet "
        "simulator fitted to the lab's rig, applied to the data's nominal rig",
    )
    rig_variants: int = Field(
        16,
        ge=1,
        le=1000,
        description="with rig_profile: rigs drawn within the "
        "rig fit's uncertainty, one per simulated session in turn (1: the best fit only)",
    )
    rig_spread: float = Field(1.0, ge=0, le=10, description="the draws' spread, in units of the fitted uncertainty")

    @model_validator(mode="after")
    def _profile_fits_alloynet(self) -> SyntheticConfig:
        needs_alloynet_simulator(self.simulator, self.rig_profile)
        return self


class SyntheticCaptures(Dataset):
    """Items as ``CaptureDataset``'s: (raw image float32 [C, H, W], calibration [C, 2], wedge_mm [1], targets)."""

    def __init__(
        self,
        cfg: SyntheticConfig,
        rig: RigConfig,
        prior: ThicknessPrior,
        wedges_mm: Sequence[float],
        class_names: Sequence[str],
        seed: int = 0,
        log=None,
        held_out: bool = False,
    ):
        self.cfg, self.prior, self.seed, self.log, self.held_out = cfg, prior, seed, log, held_out
        self.class_names = list(class_names)
        self.wedges = [float(w) for w in (cfg.wedges_mm or wedges_mm)]
        self.rig = rig.model_copy(update=cfg.rig)
        self._sims: dict[float, Any] = {}
        self._levels: dict[tuple, tuple[list[float], list[float]]] = {}  # held-out: (wedge, round, session) levels
        self.round = -1
        self.set_epoch(0)

    def __len__(self) -> int:
        return self.cfg.captures

    def _sim(self, wedge: float, session: int):
        """The rig that takes the captures of ``session`` with this wedge (one of the profile's draws in turn)."""
        if wedge not in self._sims:
            rig = self.rig.model_copy(update={"wedge_mm": wedge})
            if self.cfg.simulator == "second_rig":
                self._sims[wedge] = [SecondRig(simulated_rig(self.cfg, rig))]
            elif self.cfg.rig_profile:
                profile = load_rig_profile(self.cfg.rig_profile)
                self._sims[wedge] = [
                    RigSimulator(r)
                    for r in profile.variants(rig, self.cfg.rig_variants, self.seed, self.cfg.rig_spread)
                ]
            else:
                self._sims[wedge] = [RigSimulator(rig)]
        sims = self._sims[wedge]
        return sims[session % len(sims)]

    def simulate(self, rnd: int, i: int) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
        """Capture ``i`` of round ``rnd``: (uint16 image, calibration [C, 2], targets)."""
        c = self.cfg
        k = len(self.class_names)
        alloy = i % k
        wedge = self.wedges[(i // k) % len(self.wedges)]
        session = i // c.session_size
        s_rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0x5E55, rnd, session]))
        sim = self._sim(wedge, session)
        gain = sim.session_gain(s_rng) * (1.0 + float(s_rng.uniform(-c.session_drift, c.session_drift)))
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0x5117, rnd, i]))
        plate = sample_plate(self.class_names[alloy], float(self.prior.sample(1, rng)[0]), rng, f"syn-{rnd}-{i}")
        if self.held_out:  # the session's dark and flat, measured from frames taken in its beam
            key = (wedge, rnd, session)
            if key not in self._levels:
                f_rng = np.random.default_rng(
                    np.random.SeedSequence([self.seed, 0xF1A7, rnd, session, int(wedge * 1000)])
                )
                dark, flat = sim.dark_flat_frames(f_rng, gain)
                self._levels[key] = (frame_level(dark), frame_level(flat))
            cap = sim.capture(plate, rng, *self._levels[key], gain_scale=gain)
        else:
            cap = sim.capture(plate, rng, gain_scale=gain)
        cal = np.stack([cap.dark_adu, cap.flat_adu], axis=-1).astype(np.float32)
        t = plate.thickness_mm
        return (
            cap.image,
            cal,
            {"alloy": alloy, "thickness_mm": t, "a0": cap.a0_by_kvp[0], "mu_eff": cap.a0_by_kvp[0] / (t / 10.0)},
        )

    def set_epoch(self, epoch: int) -> None:
        rnd = HELD_OUT_ROUND if self.held_out else epoch if self.cfg.fresh else 0
        if rnd == self.round:
            return
        t0 = time.perf_counter()
        items = [self.simulate(rnd, i) for i in range(len(self))]
        self.images = np.stack([x for x, _, _ in items]) if items else np.zeros((0,))
        self.calibration = torch.as_tensor(np.stack([c for _, c, _ in items]) if items else np.zeros((0, 1, 2)))
        self.wedge_mm = torch.tensor(
            [[self.wedges[(i // len(self.class_names)) % len(self.wedges)]] for i in range(len(self))],
            dtype=torch.float32,
        ).reshape(-1, 1)
        self.targets_ = {k: np.array([t[k] for _, _, t in items]) for k in ("alloy", "thickness_mm", "a0", "mu_eff")}
        self.round = rnd
        if self.log and len(self):
            source = f"rig profile {self.cfg.rig_profile}" if self.cfg.rig_profile else self.cfg.simulator
            kind = "held-out" if self.held_out else "training"
            self.log(
                f"simulated {len(self)} {kind} captures ({source}, {self.prior.describe()}, "
                f"wedges {self.wedges} mm) in {time.perf_counter() - t0:.0f} s"
            )

    def __getitem__(self, i: int):
        t = {
            k: torch.tensor(v[i], dtype=torch.int64 if k == "alloy" else torch.float32)
            for k, v in self.targets_.items()
        }
        return torch.from_numpy(self.images[i].astype(np.float32)), self.calibration[i], self.wedge_mm[i], t

    @property
    def labels(self) -> np.ndarray:
        return self.targets_["alloy"]

    @property
    def thickness_mm(self) -> np.ndarray:
        return self.targets_["thickness_mm"]


def simulated_rig(cfg: SyntheticConfig, rig: RigConfig):
    """The rig ``cfg``'s simulated captures describe, at its central settings, for a data set's nominal ``rig``:
    that rig with ``cfg.rig``'s overrides, as the second rig (``simulator: second_rig``) or as fitted by
    ``cfg.rig_profile`` (whose captures come from rigs drawn around it). The physics term's forward model."""
    rig = rig.model_copy(update=cfg.rig)
    if cfg.simulator == "second_rig":
        return SecondRigConfig.from_nominal(rig, **cfg.second_rig)
    if cfg.rig_profile:
        return load_rig_profile(cfg.rig_profile).apply(rig)
    return rig


def forward_rigs(
    cfg: SyntheticConfig, rigs: Mapping[float, tuple[RigConfig, int]], wedges_mm: Sequence[float]
) -> dict[float, Any]:
    """The physics term's forward model for each tabulated wedge size: ``simulated_rig`` of the data's rig at
    that wedge (``rig_settings``' rigs; a wedge between the training ones takes the nearest one's settings)."""
    out = {}
    for w in wedges_mm:
        nearest = rigs[min(rigs, key=lambda t: abs(t - w))][0]
        out[float(w)] = simulated_rig(cfg, nearest.model_copy(update={"wedge_mm": float(w)}))
    return out


def synthetic_for(
    cfg: SyntheticConfig,
    rigs: Mapping[float, tuple[RigConfig, int]],
    prior: ThicknessPrior,
    class_names: Sequence[str],
    seed: int,
    log=None,
    held_out: bool = False,
) -> SyntheticCaptures:
    """The synthetic source for a data set: its nominal rig (the most common wedge's settings; every wedge
    size it has) and its thickness prior, unless the config says otherwise."""
    base = nominal_rig(rigs)
    if cfg.thickness_range_mm or cfg.thicknesses_mm:
        prior = ThicknessPrior.of(cfg.thicknesses_mm, cfg.thickness_range_mm)
    return SyntheticCaptures(cfg, base, prior, sorted(rigs), class_names, seed, log, held_out)

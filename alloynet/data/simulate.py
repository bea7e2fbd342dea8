"""`alloynet simulate`: write a long-tailed simulated data set into a capture store.

The train/val pool follows the class counts of the imbalance shape (head to tail in ``class_order``); on top
of it each class gets the same number of extra plates so that the splitter's balanced test set (the long-tail
protocol) leaves exactly the requested class counts for training. Every random choice derives from ``seed`` through
per-plate and per-capture seed sequences: the same seed writes the same bytes, in any order.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator, model_validator

from alloynet.captures.format import make_sidecar
from alloynet.captures.image import encode_image
from alloynet.captures.layout import write_capture
from alloynet.captures.stores import ObjectStore
from alloynet.data import CLASS_NAMES
from alloynet.data.class_counts import Imbalance, class_counts
from alloynet.physics.alloys import AlloyTable, alloys_from_config, sample_plate
from alloynet.physics.measure import frame_level
from alloynet.physics.observer import DEFAULT_THICKNESS_RANGE_MM, ThicknessPrior
from alloynet.physics.rig import NOMINAL_FIELDS
from alloynet.physics.rig_profile import load_rig_profile, needs_alloynet_simulator
from alloynet.physics.second_rig import SecondRig, SecondRigConfig
from alloynet.physics.simulator import RigConfig, RigSimulator


def one_thickness_prior(spec: BaseModel) -> None:
    """A thickness prior is a list of values (``thicknesses_mm``) or a range (``thickness_range_mm``, the
    default), never both: a given list clears the default range. Shared by every config that carries one."""
    if spec.thicknesses_mm is not None:
        if "thickness_range_mm" in spec.model_fields_set and spec.thickness_range_mm is not None:
            raise ValueError("thicknesses_mm and thickness_range_mm: give one (a list of values, or a range)")
        spec.thickness_range_mm = None
    elif spec.thickness_range_mm is None:
        raise ValueError("thickness_range_mm: give a range (or thicknesses_mm, a list of values)")
    elif not 0 < spec.thickness_range_mm[0] <= spec.thickness_range_mm[1]:
        raise ValueError(f"thickness_range_mm: expected 0 < min <= max, got {list(spec.thickness_range_mm)}")


# "profile" is the wedge profile's word; specs and YAML that still call the class-count shape ``profile`` (a cached
# set's stored spec.json among them) load for one release, with a warning, so nobody's config breaks unannounced.
OLD_IMBALANCE_KEY = "profile"


def renamed_imbalance_key(data: Any, where: str = "DatasetSpec") -> Any:
    """``data`` (a spec's fields) with the old key ``profile`` moved to ``imbalance``, warning that it is renamed
    (naming ``where`` the fields come from); both given and different is an error naming both."""
    if not isinstance(data, dict) or OLD_IMBALANCE_KEY not in data:
        return data
    data = dict(data)
    old = data.pop(OLD_IMBALANCE_KEY)
    if "imbalance" in data and data["imbalance"] != old:
        raise ValueError(
            f"imbalance: {data['imbalance']!r} and profile: {old!r} disagree; profile is the old name of "
            "imbalance: give imbalance only"
        )
    data["imbalance"] = old
    warnings.warn(
        f"{where}: the field 'profile' is renamed 'imbalance' (the shape of the class counts); "
        "'profile' is still read in this release",
        FutureWarning,
        stacklevel=2,
    )
    return data


class DatasetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    custom_alloys: dict[str, dict] = Field(default_factory=dict, description="extra alloys, see alloys_from_config")
    n_max: int = Field(60, ge=1, description="plates of the head class in the train/val pool")
    imbalance_ratio: float = Field(100.0, ge=1)
    imbalance: Imbalance = Field("exponential", description="shape of the class counts, head to tail")
    class_order: list[str] = Field(default_factory=lambda: list(CLASS_NAMES), description="head to tail")
    thickness_range_mm: tuple[float, float] | None = Field(
        DEFAULT_THICKNESS_RANGE_MM,
        description="plates of any nominal thickness in this range (mm), as a line sees them",
    )
    thicknesses_mm: list[float] | None = Field(
        None, description="only these nominal thicknesses (mm), e.g. [1, 2, 5]; replaces the range"
    )
    session_drift: float = Field(
        0.0,
        ge=0,
        lt=0.5,
        description="tube output of each session drawn uniformly within +-this fraction (its flat frame records it)",
    )
    capture_drift: float = Field(
        0.0,
        ge=0,
        lt=0.5,
        description="tube output of each capture drawn uniformly "
        "within +-this fraction of its session's, after the flat was taken (not recorded "
        "in its session's levels; an open-beam region, rig.open_beam_rows, shows it)",
    )
    wedges_mm: list[float] = Field(default_factory=lambda: [50.0, 70.0])
    captures_per_plate: int = Field(2, ge=1)
    test_fraction: float = Field(0.15, ge=0, lt=1)
    session_size: int = Field(64, ge=1, description="captures per session (one dark and one flat)")
    seed: int = 0
    id_prefix: str | None = None
    start_time: datetime = datetime(2026, 1, 5, 8, 0, tzinfo=timezone.utc)
    rig: RigConfig = Field(default_factory=RigConfig)
    simulator: Literal["alloynet", "second_rig"] = Field("alloynet", description="which rig model writes the captures")
    second_rig: SecondRigConfig = Field(
        default_factory=SecondRigConfig, description="the second rig's own physics; its nominal settings come from rig"
    )
    rig_profile: str | None = Field(
        None,
        description="a rig profile (alloynet rig fit): the alloynet "
        "simulator fitted to a real rig; rig gives the size and wedge sizes",
    )
    rig_variants: int = Field(
        1,
        ge=1,
        le=1000,
        description="with rig_profile: rigs drawn within the rig fit's "
        "uncertainty, one per session in turn (1: the best fit only)",
    )
    rig_spread: float = Field(1.0, ge=0, le=10, description="the draws' spread, in units of the fitted uncertainty")

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, data: Any) -> Any:
        return renamed_imbalance_key(data)

    @field_serializer("second_rig")
    def _second_rig_own_fields(self, v: SecondRigConfig) -> dict:
        """Without the nominal settings (they come from rig): a dumped spec validates again."""
        return v.model_dump(exclude=set(NOMINAL_FIELDS))

    @model_validator(mode="after")
    def _one_thickness_prior(self) -> DatasetSpec:
        one_thickness_prior(self)
        return self

    @property
    def prior(self) -> ThicknessPrior:
        """The thickness prior the plates are drawn from (what the ideal observer is told)."""
        return ThicknessPrior.of(self.thicknesses_mm, self.thickness_range_mm)

    @model_validator(mode="after")
    def _profile_needs_our_simulator(self) -> DatasetSpec:
        needs_alloynet_simulator(self.simulator, self.rig_profile, self.rig.open_beam_rows)
        return self

    @model_validator(mode="after")
    def _nominal_from_rig(self) -> DatasetSpec:
        given = sorted(set(NOMINAL_FIELDS) & self.second_rig.model_fields_set)
        if given:
            raise ValueError(f"second_rig.{given[0]}: nominal settings come from rig; set rig.{given[0]} instead")
        return self

    @property
    def alloy_table(self) -> AlloyTable:
        """The standard alloys plus this spec's ``custom_alloys``."""
        return alloys_from_config(self.custom_alloys)

    @model_validator(mode="after")
    def _classes(self) -> DatasetSpec:
        try:
            table = self.alloy_table
        except ValueError as exc:
            raise ValueError(f"custom_alloys: {exc}") from None
        for a in self.class_order:
            if a not in table:
                raise ValueError(
                    f"class_order: unknown alloy {a!r}; expected one of {sorted(table)} (add others with custom_alloys)"
                )
        if len(set(self.class_order)) != len(self.class_order):
            raise ValueError("class_order: duplicate alloy")
        return self

    @field_validator("thicknesses_mm", "wedges_mm")
    @classmethod
    def _positive(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and (not v or any(x <= 0 for x in v)):
            raise ValueError("must be a non-empty list of values > 0 mm")
        return v

    def plates_per_class(self) -> dict[str, int]:
        counts = class_counts(self.n_max, len(self.class_order), self.imbalance_ratio, self.imbalance)
        extra = 0
        if self.test_fraction > 0:
            extra = max(1, int(round(self.test_fraction / (1 - self.test_fraction) * sum(counts) / len(counts))))
        return {a: n + extra for a, n in zip(self.class_order, counts)}


def _plan(spec: DatasetSpec) -> list[tuple[str, float]]:
    """(alloy, nominal thickness) per plate, thicknesses spread evenly within each class, order shuffled."""
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 0xA110]))
    plan = []
    for alloy, n in spec.plates_per_class().items():
        if spec.thickness_range_mm:
            lo, hi = spec.thickness_range_mm
            ts = rng.uniform(lo, hi, n).round(3)
        else:
            reps = int(np.ceil(n / len(spec.thicknesses_mm)))
            ts = rng.permutation(np.tile(spec.thicknesses_mm, reps)[:n])
        plan += [(alloy, float(t)) for t in ts]
    order = rng.permutation(len(plan))
    return [plan[i] for i in order]


def simulate_dataset(
    spec: DatasetSpec, store: ObjectStore, progress: Callable[[int, int], None] | None = None
) -> list[str]:
    """Simulate and write every capture of ``spec`` into ``store``; returns the capture ids."""
    prefix = spec.id_prefix or f"sim{spec.seed}"
    variants = _simulators(spec)
    sims = {w: v[0] for w, v in variants.items()}
    plan = _plan(spec)
    alloy_table = spec.alloy_table
    total = len(plan) * spec.captures_per_plate
    ids: list[str] = []
    session = None
    for p_idx, (alloy, t_nom) in enumerate(plan):
        plate_rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 1, p_idx]))
        plate = sample_plate(alloy, t_nom, plate_rng, f"{prefix}-p{p_idx:05d}", alloy_table=alloy_table)
        for k in range(spec.captures_per_plate):
            n = len(ids)
            wedge = spec.wedges_mm[(p_idx + k) % len(spec.wedges_mm)]
            s_idx = n // spec.session_size
            sim = variants[wedge][s_idx % spec.rig_variants]  # a session's captures share its rig draw
            if n % spec.session_size == 0:
                session = _new_session(spec, sim, store, prefix, s_idx)
                if spec.simulator == "second_rig":
                    _wedge_references(spec, sims, store, session, n // spec.session_size)
            rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 2, p_idx, k]))
            gain = session["gain"]
            if spec.capture_drift > 0:  # after the session's flat: its calibration does not record it
                drift_rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 5, p_idx, k]))
                gain *= 1.0 + float(drift_rng.uniform(-spec.capture_drift, spec.capture_drift))
            cap = sim.capture(plate, rng, session["dark_adu"], session["flat_adu"], gain)
            cid = f"{prefix}-{p_idx:05d}-{k}"
            data, fmt = encode_image(cap.image)
            truth = {
                "alloy": alloy,
                "nominal_thickness_mm": t_nom,
                "thickness_mm": round(plate.thickness_mm, 6),
                "composition_wt_pct": {el: round(v, 5) for el, v in plate.wt_pct.items()},
                "density_g_cm3": round(plate.density_g_cm3, 6),
                "a0": cap.a0_by_kvp[0],
                "a0_by_kvp": cap.a0_by_kvp,
                "mu_eff_per_cm": cap.a0_by_kvp[0] / (plate.thickness_mm / 10.0),
            }
            rig = sim.rig
            sc = make_sidecar(
                cid,
                cap.image,
                data,
                fmt,
                rig={**rig.nominal_settings(), "wedge_mm": wedge, "dose": rig.dose},
                calibration={
                    "session": session["id"],
                    "dark_adu": session["dark_adu"],
                    "flat_adu": session["flat_adu"],
                },
                acquired_at=spec.start_time + timedelta(seconds=30 * n),
                truth=truth,
                plate_id=plate.plate_id,
                source=_source(spec),
            )
            write_capture(store, sc, data)
            ids.append(cid)
            if progress:
                progress(len(ids), total)
    return ids


def _source(spec: DatasetSpec) -> str:
    if spec.simulator == "second_rig":
        return f"second-rig seed={spec.seed}"
    if spec.rig_profile:
        return f"alloynet-simulator seed={spec.seed} rig-profile={Path(spec.rig_profile).name[:80]}"
    return f"alloynet-simulator seed={spec.seed}"


def _simulators(spec: DatasetSpec) -> dict[float, list[RigSimulator | SecondRig]]:
    """Per wedge size, the rig(s) that take the captures: one, or ``rig_variants`` draws of a rig profile."""
    if spec.rig_profile:
        profile = load_rig_profile(spec.rig_profile)
        return {
            w: [
                RigSimulator(r)
                for r in profile.variants(
                    spec.rig.model_copy(update={"wedge_mm": w}), spec.rig_variants, spec.seed, spec.rig_spread
                )
            ]
            for w in spec.wedges_mm
        }
    return {w: [_simulator(spec, w)] * spec.rig_variants for w in spec.wedges_mm}


def _simulator(spec: DatasetSpec, wedge_mm: float) -> RigSimulator | SecondRig:
    rig = spec.rig.model_copy(update={"wedge_mm": wedge_mm})
    if spec.simulator == "second_rig":  # one set of nominal settings (rig) drives both rig models
        return SecondRig(SecondRigConfig.from_nominal(rig, **spec.second_rig.model_dump(exclude=set(NOMINAL_FIELDS))))
    return RigSimulator(rig)


def _wedge_references(spec: DatasetSpec, sims: dict, store: ObjectStore, session: dict, index: int) -> None:
    """The wedge alone (no plate), one frame per wedge, taken in the session's own beam (its output drift)."""
    for j, (wedge, sim) in enumerate(sims.items()):
        rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 4, index, j]))
        data, fmt = encode_image(sim.wedge_reference(rng, session["gain"]))
        store.put(f"calibration/{session['id']}/wedge-{wedge:g}mm.{fmt}", data, overwrite=True)


def _new_session(spec: DatasetSpec, sim: RigSimulator | SecondRig, store: ObjectStore, prefix: str, index: int) -> dict:
    """A session: the panel's gain drifts a little; a dark and a flat frame (its levels) are taken."""
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 3, index]))
    gain = sim.session_gain(rng)
    if spec.session_drift > 0:  # the tube's output from one session to the next (drawn from its own stream)
        drift_rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 4, index]))
        gain *= 1.0 + float(drift_rng.uniform(-spec.session_drift, spec.session_drift))
    dark, flat = sim.dark_flat_frames(rng, gain)
    sid = f"{prefix}-s{index:04d}"
    for name, frame in (("dark", dark), ("flat", flat)):
        data, fmt = encode_image(frame)
        store.put(f"calibration/{sid}/{name}.{fmt}", data, overwrite=True)
    return {"id": sid, "gain": gain, "dark_adu": frame_level(dark), "flat_adu": frame_level(flat)}

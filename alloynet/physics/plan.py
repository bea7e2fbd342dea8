"""Which exposures to take: the physics bracket (``alloynet.physics.bracket``) for candidate acquisitions of one
rig, ranked, so a lab can see what one or several kVp, more time per plate, or another wedge would buy.

An acquisition is a set of kVp settings (one exposure each), the time spent on a plate (split evenly between
its exposures), and the wedge (thickness at its thick end, material). The dose of an exposure follows from the
rig's reference: ``dose`` detected photons per pixel (open beam) at the rig's first kVp in ``reference_s``
seconds, scaled by the exposure's time and by the tube's output at its kVp relative to the reference kVp
(the detected-photon count of the tube spectrum, as the simulator computes it; the tube current is the rig's).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from itertools import product

import numpy as np

from alloynet.physics.alloys import ALLOY_NAMES, STANDARD_ALLOYS, AlloyTable
from alloynet.physics.bracket import Bracket, bracket
from alloynet.physics.observer import ThicknessPrior
from alloynet.physics.profile import ProfileModel
from alloynet.physics.simulator import Channel, RigConfig, beam_spectrum
from alloynet.physics.spectrum import detected_quanta

DEFAULT_KVP_SETS: tuple[tuple[float, ...], ...] = ((50.0,), (40.0,), (60.0,), (40.0, 60.0), (40.0, 50.0, 60.0))


@dataclass(frozen=True)
class Acquisition:
    kvp: tuple[float, ...]  # one exposure per kVp
    time_s: float  # on one plate, all exposures together
    wedge_mm: float
    wedge_material: str

    def describe(self) -> str:
        return (
            f"{'/'.join(f'{k:g}' for k in self.kvp)} kV, {self.time_s:g} s, wedge {self.wedge_mm:g} mm "
            f"{self.wedge_material}"
        )


class _ChannelDoses(ProfileModel):
    """The rig's profile model with a dose of its own for each channel (a RigConfig has one dose for all)."""

    def __init__(self, rig: RigConfig, doses: Sequence[float], bins: int):
        super().__init__(rig, bins)
        self._ch = [Channel(rig.model_copy(update={"dose": float(d)}), k) for d, k in zip(doses, rig.kvp, strict=True)]


def tube_output(rig: RigConfig, kvp: float) -> float:
    """Detected photons of the tube's spectrum at ``kvp`` (arbitrary scale, the same for every kVp of a rig)."""
    return float(detected_quanta(beam_spectrum(rig.model_copy(update={"kvp": [kvp]}), kvp), rig.csi_mm).sum())


def exposure_doses(rig: RigConfig, acq: Acquisition, reference_s: float) -> list[float]:
    """Detected photons per pixel (open beam) of each of ``acq``'s exposures."""
    if reference_s <= 0 or acq.time_s <= 0:
        raise ValueError(f"plan: exposure times must be > 0 s, got reference {reference_s} and {acq.time_s}")
    ref = tube_output(rig, rig.kvp[0])
    share = acq.time_s / len(acq.kvp) / reference_s
    return [rig.dose * share * tube_output(rig, k) / ref for k in acq.kvp]


def candidates(
    kvp_sets: Sequence[Sequence[float]], times_s: Sequence[float], wedges_mm: Sequence[float], materials: Sequence[str]
) -> list[Acquisition]:
    """Every combination of the given kVp sets, times per plate, wedge sizes and wedge materials."""
    return [
        Acquisition(tuple(float(v) for v in k), float(t), float(w), m)
        for k, t, w, m in product(kvp_sets, times_s, wedges_mm, materials)
    ]


@dataclass
class PlanRow:
    acquisition: Acquisition
    doses: list[float]
    bracket: Bracket
    seconds: float

    def to_dict(self) -> dict:
        b = self.bracket
        return {
            "acquisition": asdict(self.acquisition),
            "describe": self.acquisition.describe(),
            "dose_per_exposure": self.doses,
            "five_class": {
                "lower": b.lower.accuracy,
                "lower_se": b.lower.se,
                "upper": b.upper.accuracy,
                "upper_se": b.upper.se,
                "width": b.width,
                "width_se": b.width_se,
            },
            "heavy_light": {
                "lower": b.lower.heavy_light,
                "lower_se": b.lower.heavy_light_se,
                "upper": b.upper.heavy_light,
                "upper_se": b.upper.heavy_light_se,
            },
            "recall_lower": b.lower.recall,
            "hard_pairs": b.hard_pairs[:3],
            "seconds": self.seconds,
        }


def plan(
    base: RigConfig,
    acquisitions: Sequence[Acquisition],
    prior: ThicknessPrior | None = None,
    alloys: Sequence[str] = ALLOY_NAMES,
    reference_s: float = 1.0,
    draws: int = 500,
    pool: int = 32,
    bins: int = 32,
    seed: int = 0,
    alloy_table: AlloyTable = STANDARD_ALLOYS,
) -> list[PlanRow]:
    """The bracket of every acquisition on ``base`` (its panel, tube and calibration), ranked by the lower edge
    of the five-class accuracy, then heavy vs light. Every candidate draws with the same seed."""
    prior = prior or ThicknessPrior(range_mm=(1.0, 5.0))
    rows = []
    for acq in acquisitions:
        t0 = time.perf_counter()
        doses = exposure_doses(base, acq, reference_s)
        rig = base.model_copy(
            update={
                "kvp": list(acq.kvp),
                "wedge_mm": acq.wedge_mm,
                "wedge_material": acq.wedge_material,
                "dose": float(np.mean(doses)),
            }
        )
        rig = RigConfig.model_validate(rig.model_dump())  # the candidate's settings checked as any rig's
        model = _ChannelDoses(rig, doses, bins)
        br = bracket(
            model,
            alloys,
            prior,
            draws=draws,
            pool=pool,
            seed=seed,
            alloy_table=alloy_table,
            rig={**rig.model_dump(), "dose_per_exposure": doses},
        )
        rows.append(PlanRow(acq, doses, br, time.perf_counter() - t0))
    return sorted(rows, key=lambda r: (-r.bracket.lower.accuracy, -r.bracket.lower.heavy_light))


def table(rows: Sequence[PlanRow]) -> str:
    """The ranked candidates as a Markdown table."""
    lines = [
        "| rank | acquisition | photons/px per exposure | five-class bracket | heavy vs light | hardest pair |",
        "|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(rows, 1):
        b = r.bracket
        pair = b.hard_pairs[0] if b.hard_pairs else {"pair": "-", "confused": float("nan")}
        lines.append(
            f"| {i} | {r.acquisition.describe()} | {', '.join(f'{d:.3g}' for d in r.doses)} | "
            f"{b.lower.accuracy:.3f}-{b.upper.accuracy:.3f} ± {max(b.lower.se, b.upper.se):.3f} | "
            f"{b.lower.heavy_light:.3f} | {pair['pair']} ({pair['confused']:.2f}) |"
        )
    return "\n".join(lines)


__all__ = ["Acquisition", "DEFAULT_KVP_SETS", "PlanRow", "candidates", "exposure_doses", "plan", "table", "tube_output"]

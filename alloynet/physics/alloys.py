"""The alloy table: nominal composition, density and standard ranges; plates drawn inside them.

Pure data and numpy (no attenuation tables): the capture format validates alloy names against this table,
and a client decoding one capture must not load scipy or xraydb for that.

A real plate is not exactly nominal: its composition lies somewhere inside the standard's ranges and
its thickness inside the rolling tolerance. ``sample_plate`` draws both, so simulated data do not carry
the shortcut (exact nominal composition => exact attenuation level per alloy) that no real rig offers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

# Elemental densities (g/cm^3) for the rule-of-mixtures density model; only the ratios matter because
# the model is anchored to each alloy's published nominal density.
ELEMENT_DENSITY = {
    "Al": 2.699,
    "Cu": 8.96,
    "Mg": 1.738,
    "Mn": 7.21,
    "Si": 2.33,
    "Fe": 7.874,
    "Zn": 7.134,
    "Cr": 7.19,
    "Ti": 4.507,
    "Zr": 6.52,
    "Ni": 8.908,
    "C": 2.0,
    "H": 0.0899e-3,
    "O": 1.429e-3,
    "Cs": 1.93,
    "I": 4.93,
}


@dataclass(frozen=True)
class Alloy:
    """One alloy designation: nominal composition (wt%, Al is the balance), density and spec ranges.

    ``ranges`` gives (min, max) wt% for each alloying/impurity element as in EN 573-3; an element with
    only a maximum in the standard has min 0.
    """

    name: str
    density_g_cm3: float
    nominal_wt_pct: Mapping[str, float]
    ranges_wt_pct: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    def nominal_fractions(self) -> dict[str, float]:
        return _with_balance(self.nominal_wt_pct)

    def validate(self) -> None:
        for el, (lo, hi) in self.ranges_wt_pct.items():
            if not 0 <= lo <= hi:
                raise ValueError(f"alloy {self.name}: range for {el} must satisfy 0 <= min <= max, got {lo}..{hi}")
            nom = self.nominal_wt_pct.get(el, 0.0)
            if not lo - 1e-9 <= nom <= hi + 1e-9:
                raise ValueError(f"alloy {self.name}: nominal {el}={nom} wt% lies outside its range {lo}..{hi}")
        if sum(self.nominal_wt_pct.values()) >= 100:
            raise ValueError(f"alloy {self.name}: alloying elements sum to >= 100 wt%, no Al balance left")
        for el in set(self.nominal_wt_pct) | set(self.ranges_wt_pct):
            if el not in ELEMENT_DENSITY:
                raise ValueError(f"alloy {self.name}: unknown element {el!r}")


def _with_balance(wt_pct: Mapping[str, float]) -> dict[str, float]:
    """Weight fractions (sum 1) with aluminium as the balance."""
    fr = {el: v / 100.0 for el, v in wt_pct.items() if el != "Al" and v > 0}
    fr["Al"] = 1.0 - sum(fr.values())
    return fr


# An alloy table: name -> Alloy. Read-only, and passed to whatever needs alloys beyond the standard five
# (a data set spec's or an import's custom alloys, ``alloynet physics ... --alloys``): no global is ever changed.
AlloyTable = Mapping[str, Alloy]

# Ranges: EN 573-3 (EN AW-1050A, 2017A, 5083, 6082, 7075). Nominal values follow the project brief.
STANDARD_ALLOYS: AlloyTable = MappingProxyType(
    {
        a.name: a
        for a in [
            Alloy(
                "Al1050",
                2.705,
                {"Fe": 0.35, "Si": 0.15},
                {
                    "Si": (0, 0.25),
                    "Fe": (0, 0.40),
                    "Cu": (0, 0.05),
                    "Mn": (0, 0.05),
                    "Mg": (0, 0.05),
                    "Zn": (0, 0.07),
                    "Ti": (0, 0.05),
                },
            ),
            Alloy(
                "Al2017",
                2.79,
                {"Cu": 4.0, "Mn": 0.7, "Mg": 0.6, "Si": 0.5},
                {
                    "Si": (0.2, 0.8),
                    "Fe": (0, 0.7),
                    "Cu": (3.5, 4.5),
                    "Mn": (0.4, 1.0),
                    "Mg": (0.4, 1.0),
                    "Cr": (0, 0.10),
                    "Zn": (0, 0.25),
                    "Ti": (0, 0.15),
                },
            ),
            Alloy(
                "Al5083",
                2.66,
                {"Mg": 4.5, "Mn": 0.7, "Cr": 0.15},
                {
                    "Si": (0, 0.40),
                    "Fe": (0, 0.40),
                    "Cu": (0, 0.10),
                    "Mn": (0.40, 1.0),
                    "Mg": (4.0, 4.9),
                    "Cr": (0.05, 0.25),
                    "Zn": (0, 0.25),
                    "Ti": (0, 0.15),
                },
            ),
            Alloy(
                "Al6082",
                2.70,
                {"Si": 1.0, "Mg": 0.9, "Mn": 0.7},
                {
                    "Si": (0.7, 1.3),
                    "Fe": (0, 0.50),
                    "Cu": (0, 0.10),
                    "Mn": (0.40, 1.0),
                    "Mg": (0.6, 1.2),
                    "Cr": (0, 0.25),
                    "Zn": (0, 0.20),
                    "Ti": (0, 0.10),
                },
            ),
            Alloy(
                "Al7075",
                2.81,
                {"Zn": 5.6, "Mg": 2.5, "Cu": 1.6, "Cr": 0.23},
                {
                    "Si": (0, 0.40),
                    "Fe": (0, 0.50),
                    "Cu": (1.2, 2.0),
                    "Mn": (0, 0.30),
                    "Mg": (2.1, 2.9),
                    "Cr": (0.18, 0.28),
                    "Zn": (5.1, 6.1),
                    "Ti": (0, 0.20),
                },
            ),
        ]
    }
)
ALLOYS = STANDARD_ALLOYS  # the standard table, read-only

# The five standard alloys the models classify, in class-index order.
ALLOY_NAMES = tuple(STANDARD_ALLOYS)


def with_alloys(alloys: Iterable[Alloy], base: AlloyTable = STANDARD_ALLOYS) -> AlloyTable:
    """A new table: ``base`` plus ``alloys`` (an alloy of the same name replaces the base's), each checked to be
    physically sensible. ``base`` is left as it was."""
    table = dict(base)
    for alloy in alloys:
        alloy.validate()
        table[alloy.name] = alloy
    return MappingProxyType(table)


def alloys_from_config(cfg: Mapping[str, Mapping], base: AlloyTable = STANDARD_ALLOYS) -> AlloyTable:
    """``base`` plus the alloys given as ``{name: {density_g_cm3, nominal_wt_pct: {el: wt%}, ranges_wt_pct: {el:
    [min, max]}}}`` (the shape of an ``alloys:`` block in YAML), as a new table. Errors name the alloy and field."""
    out = []
    for name, spec in cfg.items():
        try:
            alloy = Alloy(
                name,
                float(spec["density_g_cm3"]),
                dict(spec.get("nominal_wt_pct", {})),
                {el: (float(lo), float(hi)) for el, (lo, hi) in spec.get("ranges_wt_pct", {}).items()},
            )
        except KeyError as exc:
            raise ValueError(f"alloy {name}: missing field {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise ValueError(f"alloy {name}: {exc}") from None
        out.append(alloy)
    return with_alloys(out, base)


def get_alloy(name: str, alloy_table: AlloyTable = STANDARD_ALLOYS) -> Alloy:
    try:
        return alloy_table[name]
    except KeyError:
        raise ValueError(f"unknown alloy {name!r}; expected one of {sorted(alloy_table)}") from None


def density_for(alloy: Alloy, wt_pct: Mapping[str, float]) -> float:
    """Density of an off-nominal composition: rule of mixtures on specific volume, anchored so the
    nominal composition gives the published density exactly."""

    def specific_volume(fr: Mapping[str, float]) -> float:
        return sum(w / ELEMENT_DENSITY[el] for el, w in fr.items())

    return alloy.density_g_cm3 * specific_volume(alloy.nominal_fractions()) / specific_volume(_with_balance(wt_pct))


@dataclass(frozen=True)
class Plate:
    """One physical plate: what the simulator draws and records as ground truth."""

    plate_id: str
    alloy: str
    nominal_thickness_mm: float
    thickness_mm: float
    wt_pct: Mapping[str, float]
    density_g_cm3: float

    def fractions(self) -> dict[str, float]:
        return _with_balance(self.wt_pct)


def sample_composition(alloy: Alloy, rng: np.random.Generator) -> dict[str, float]:
    """Draw wt% inside the standard's ranges: triangular on [min, max] peaking at the nominal value
    (mid-spec production is the most common; any value inside the spec can occur)."""
    out: dict[str, float] = {}
    for el, (lo, hi) in alloy.ranges_wt_pct.items():
        if hi <= lo:
            out[el] = lo
            continue
        mode = min(max(alloy.nominal_wt_pct.get(el, lo), lo), hi)
        out[el] = float(rng.triangular(lo, mode, hi))
    for el, v in alloy.nominal_wt_pct.items():  # elements with a nominal value but no stated range
        out.setdefault(el, float(v))
    return out


def sample_plate(
    alloy_name: str,
    nominal_thickness_mm: float,
    rng: np.random.Generator,
    plate_id: str,
    thickness_tolerance: float = 0.015,
    exact: bool = False,
    alloy_table: AlloyTable = STANDARD_ALLOYS,
) -> Plate:
    """Draw a plate: composition inside spec, thickness within the rolling tolerance (EN 485-4, about
    +-1.5 %; normal with sigma = tol/2, truncated at +-tol). ``exact=True`` gives the nominal plate,
    which exists for tests that demonstrate the shortcut; never use it to make training data."""
    if nominal_thickness_mm <= 0:
        raise ValueError(f"nominal_thickness_mm must be > 0, got {nominal_thickness_mm}")
    alloy = get_alloy(alloy_name, alloy_table)
    if exact:
        wt = dict(alloy.nominal_wt_pct)
        return Plate(plate_id, alloy_name, nominal_thickness_mm, nominal_thickness_mm, wt, alloy.density_g_cm3)
    wt = sample_composition(alloy, rng)
    dev = float(np.clip(rng.normal(0.0, thickness_tolerance / 2), -thickness_tolerance, thickness_tolerance))
    return Plate(
        plate_id, alloy_name, nominal_thickness_mm, nominal_thickness_mm * (1 + dev), wt, density_for(alloy, wt)
    )


# Alloys whose copper and zinc content a single 50 kV exposure sees clearly (Z 29/30 against Al's 13):
# industrial X-ray-transmission sorters separate these "heavy" alloys from 1xxx/5xxx/6xxx scrap.
HEAVY_CU_ZN_WT_PCT = 1.0
GROUPS = ("heavy", "light")


def alloy_group(name: str, alloy_table: AlloyTable = STANDARD_ALLOYS) -> str:
    """ "heavy" (Cu + Zn >= 1 wt% nominal, e.g. Al2017, Al7075) or "light" (Al1050, Al5083, Al6082): decided by
    composition, so an alloy a user adds by config lands in the right group."""
    wt = get_alloy(name, alloy_table).nominal_wt_pct
    return "heavy" if wt.get("Cu", 0.0) + wt.get("Zn", 0.0) >= HEAVY_CU_ZN_WT_PCT else "light"

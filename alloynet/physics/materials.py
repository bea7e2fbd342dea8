"""Attenuation: tabulated data (Elam et al., via ``xraydb.mu_elam``), mixed by weight fraction.

Nothing here calls ``xraydb.add_material`` or anything else that writes into user/package folders:
every material is an explicit list of element weight fractions and a density. The alloys themselves
(composition, density, spec ranges) live in ``alloynet.physics.alloys``.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

import numpy as np
import xraydb

# Wedge materials: pure Al by default; PMMA (C5H8O2) is the other common choice.
WEDGE_MATERIALS: dict[str, tuple[dict[str, float], float]] = {
    "Al": ({"Al": 1.0}, 2.699),
    "PMMA": ({"C": 0.59984, "H": 0.08054, "O": 0.31962}, 1.18),
}
# Detector scintillator: CsI (weight fractions from atomic masses 132.905 / 126.904).
CSI = ({"Cs": 0.51155, "I": 0.48845}, 4.51)


@lru_cache(maxsize=256)
def _element_mass_atten(element: str, energies_kev: tuple[float, ...]) -> np.ndarray:
    e_ev = np.asarray(energies_kev, dtype=float) * 1000.0
    return np.asarray(xraydb.mu_elam(element, e_ev, kind="total"), dtype=float)


def mass_attenuation(fractions: Mapping[str, float], energies_kev: np.ndarray) -> np.ndarray:
    """Mass attenuation coefficient mu/rho (cm^2/g) of a mixture given element weight fractions."""
    key = tuple(float(e) for e in np.atleast_1d(energies_kev))
    total = np.zeros(len(key))
    for el, w in fractions.items():
        if w > 0:
            total += w * _element_mass_atten(el, key)
    return total


def linear_attenuation(fractions: Mapping[str, float], density_g_cm3: float, energies_kev: np.ndarray) -> np.ndarray:
    """Linear attenuation coefficient mu (1/cm)."""
    return mass_attenuation(fractions, energies_kev) * density_g_cm3

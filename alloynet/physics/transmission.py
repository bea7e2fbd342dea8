"""Noise-free polychromatic transmission through wedge + plate, seen by an energy-integrating detector."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from alloynet.physics.alloys import STANDARD_ALLOYS, AlloyTable, get_alloy
from alloynet.physics.materials import WEDGE_MATERIALS, linear_attenuation
from alloynet.physics.spectrum import Spectrum, detector_weights, tube_spectrum


def wedge_attenuation(energies_kev: np.ndarray, material: str = "Al") -> np.ndarray:
    """Linear attenuation (1/cm) of the wedge material."""
    try:
        fr, rho = WEDGE_MATERIALS[material]
    except KeyError:
        raise ValueError(f"unknown wedge material {material!r}; expected one of {sorted(WEDGE_MATERIALS)}") from None
    return linear_attenuation(fr, rho, energies_kev)


def neg_log_transmission_of(
    fractions: Mapping[str, float],
    density_g_cm3: float,
    thickness_mm: float,
    wedge_mm: float | np.ndarray = 0.0,
    spectrum: Spectrum | None = None,
    wedge_material: str = "Al",
    csi_mm: float = 0.5,
) -> float | np.ndarray:
    """-ln T for an explicit material; vectorised over ``wedge_mm``.

    T = sum_E w(E) exp(-mu_w d_w - mu_p t) / sum_E w(E) exp(-mu_w d_w), with w = fluence x CsI
    efficiency x E: both signals are taken behind the same wedge, so wedge beam hardening lowers -ln T.
    """
    if thickness_mm < 0:
        raise ValueError(f"thickness_mm must be >= 0, got {thickness_mm}")
    spectrum = spectrum or tube_spectrum()
    e = spectrum.energies_kev
    w = detector_weights(spectrum, csi_mm)
    wedge_cm = np.atleast_1d(np.asarray(wedge_mm, dtype=float)) / 10.0
    if np.any(wedge_cm < 0):
        raise ValueError("wedge_mm must be >= 0")
    behind_wedge = w[None, :] * np.exp(-np.outer(wedge_cm, wedge_attenuation(e, wedge_material)))
    plate = np.exp(-linear_attenuation(fractions, density_g_cm3, e) * thickness_mm / 10.0)
    out = -np.log((behind_wedge * plate).sum(1) / behind_wedge.sum(1))
    return float(out[0]) if np.ndim(wedge_mm) == 0 else out


def neg_log_transmission(
    alloy: str,
    thickness_mm: float,
    wedge_mm: float = 0.0,
    kvp: float = 50.0,
    *,
    wedge_material: str = "Al",
    spectrum: Spectrum | None = None,
    alloy_table: AlloyTable = STANDARD_ALLOYS,
) -> float:
    """-ln(T) of a nominal plate of ``alloy`` behind ``wedge_mm`` of wedge, noise-free.

    T is the detected signal with the plate divided by the signal without it, both behind the same
    wedge. The detector integrates energy (fluence x CsI 0.5 mm absorption efficiency x E); the tube is
    tungsten, 12 deg anode, 1 mm Al inherent filtration at ``kvp``. ``alloy`` is one of Al1050, Al2017,
    Al5083, Al6082, Al7075 (or an alloy of ``alloy_table``); composition and density are nominal.

    >>> round(neg_log_transmission("Al1050", 1.0), 2) > 0
    True
    """
    a = get_alloy(alloy, alloy_table)
    spec = spectrum or tube_spectrum(kvp)
    return float(
        neg_log_transmission_of(
            a.nominal_fractions(), a.density_g_cm3, thickness_mm, float(wedge_mm), spec, wedge_material
        )
    )

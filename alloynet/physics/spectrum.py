"""Tube spectrum (SpekPy) and detector response (energy-integrating CsI).

A SpekPy spectrum costs about 0.5 s, so each rig setting is computed once per process and cached.
Only built-in SpekPy materials are used (``filter('Al', ...)``); ``make_matl`` and friends, which write
into user folders, are never called. Nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from alloynet.physics.materials import CSI, linear_attenuation


@dataclass(frozen=True)
class Spectrum:
    """Photon fluence per energy bin (arbitrary scale; only the shape matters downstream)."""

    energies_kev: np.ndarray
    fluence: np.ndarray

    def __post_init__(self) -> None:
        if self.energies_kev.shape != self.fluence.shape or self.energies_kev.ndim != 1:
            raise ValueError("Spectrum: energies_kev and fluence must be 1-D arrays of the same length")
        if np.any(self.energies_kev <= 0) or np.any(self.fluence < 0):
            raise ValueError("Spectrum: energies must be > 0 and fluence >= 0")


@lru_cache(maxsize=32)
def tube_spectrum(
    kvp: float = 50.0, anode_angle_deg: float = 12.0, filtration_mm_al: float = 1.0, dk_kev: float = 1.0
) -> Spectrum:
    """Tungsten-anode spectrum at the detector plane (SpekPy), cached per setting."""
    if not 10.0 <= kvp <= 150.0:
        raise ValueError(f"kvp must lie in 10..150 kV for a tungsten tube model, got {kvp}")
    import spekpy  # imported lazily: it takes ~0.3 s

    s = spekpy.Spek(kvp=float(kvp), th=float(anode_angle_deg), dk=float(dk_kev))
    if filtration_mm_al > 0:
        s.filter("Al", float(filtration_mm_al))
    k, phi = s.get_spectrum()
    keep = phi > 0
    return Spectrum(np.asarray(k[keep], dtype=float), np.asarray(phi[keep], dtype=float))


def monochromatic(energy_kev: float) -> Spectrum:
    """A single-line spectrum: with it, -ln T reduces to plain Beer-Lambert mu*t (used in tests)."""
    return Spectrum(np.array([float(energy_kev)]), np.array([1.0]))


def csi_efficiency(energies_kev: np.ndarray, thickness_mm: float = 0.5) -> np.ndarray:
    """Fraction of photons absorbed in a CsI scintillator of the given thickness."""
    fr, rho = CSI
    return 1.0 - np.exp(-linear_attenuation(fr, rho, energies_kev) * thickness_mm / 10.0)


def detector_weights(spectrum: Spectrum, csi_mm: float = 0.5) -> np.ndarray:
    """Energy-integrating detector: each energy weighted by fluence x absorption efficiency x E."""
    return spectrum.fluence * csi_efficiency(spectrum.energies_kev, csi_mm) * spectrum.energies_kev


def detected_quanta(spectrum: Spectrum, csi_mm: float = 0.5) -> np.ndarray:
    """Detected photons per energy bin (fluence x absorption efficiency), unnormalised."""
    return spectrum.fluence * csi_efficiency(spectrum.energies_kev, csi_mm)

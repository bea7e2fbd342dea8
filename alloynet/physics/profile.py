"""The wedge profile as the nominal rig produces it: noise-free mean and noise, for the ideal observer and the
physics-fit classifier.

Observation: per column, the mean over rows of -ln T (T = (S - dark level) / (flat level - dark level)),
then averaged over the columns of each bin; channels (kVp settings) concatenated. Dead and hot pixels are
left out (the robust profile estimator that models and baselines use ignores them).

The mean follows the simulator (``alloynet.physics.simulator``) exactly where it matters at the 1e-3 level:
the column-wise energy integral behind wedge and plate, the scatter (a wide blur of the column profile
mixed in), the detector blur along the wedge axis, the heel effect's mean over rows and the panel's fixed
gain pattern (PRNU, which flat levels do not correct: a fixed offset per column, the same in every capture).
Noise per pixel on ln S: compound Poisson v/m^2 plus read noise and quantisation (sigma_r^2 + 1/12)/(g m)^2,
averaged over the rows. Plate texture enters as a covariance (``texture_field_cov``): a smooth extra
thickness field, correlated along the wedge axis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache

import numpy as np
from scipy import ndimage

from alloynet.physics.materials import linear_attenuation
from alloynet.physics.measure import bin_columns, bin_edges
from alloynet.physics.simulator import Channel, RigConfig, RigSimulator, add_glare, plate_rows, scatter_quanta


class ProfileModel:
    """Noise-free binned wedge profiles and their noise variance for one (nominal) rig."""

    def __init__(self, rig: RigConfig, bins: int = 32, detector: bool = True):
        """``detector=False`` leaves out scatter, blur, heel and the fixed gain pattern (the bare physics)."""
        self.rig = rig
        self.bins = min(bins, rig.width)
        self.detector = detector
        self._ch = [Channel(rig, kvp) for kvp in rig.kvp]
        self._edges = bin_edges(rig.width, self.bins)
        self._pattern = _fixed_pattern(rig) if detector else np.zeros(rig.width)

    def _bin(self, per_column: np.ndarray, average: bool = True) -> np.ndarray:
        return bin_columns(per_column, self.bins, average)

    def _kev(self, ch: Channel, mu: np.ndarray, thickness_mm: np.ndarray) -> np.ndarray:
        """Expected keV per pixel [T, W] for plates of attenuation ``mu`` [E] and thicknesses [T]."""
        n = ch.n_behind_wedge[None] * np.exp(-np.outer(thickness_mm / 10.0, mu))[:, None, :]  # [T, W, E]
        m = n @ ch.energies
        if not self.detector:
            return m
        v = n @ (ch.energies**2)
        q, kpq = m * m / np.maximum(v, 1e-30), v / np.maximum(m, 1e-30)  # quanta and keV per quantum
        r = self.rig
        if r.scatter_per_attenuation > 0:
            q = (1 - r.scatter_fraction) * q + scatter_quanta(q, r, ch.quanta_open)
        elif r.scatter_fraction > 0:
            q = (1 - r.scatter_fraction) * q + r.scatter_fraction * ndimage.gaussian_filter1d(
                q, r.scatter_sigma_px, axis=-1, mode="nearest"
            )
        kev = q * kpq
        if r.psf_sigma_px > 0:
            kev = ndimage.gaussian_filter1d(kev, r.psf_sigma_px, axis=-1, truncate=3.0, mode="reflect")
        return add_glare(kev, r, (-1,))  # the separable tail keeps each column's sum across rows

    def profiles(self, fractions: Mapping[str, float], density: float, thicknesses_mm: Sequence[float]) -> np.ndarray:
        """Binned -ln T per channel, concatenated, for many thicknesses at once: [T, C * bins]."""
        t = np.atleast_1d(np.asarray(thicknesses_mm, float))
        out = []
        for ch in self._ch:
            kev = self._kev(ch, linear_attenuation(fractions, density, ch.energies), t)
            a = -np.log(kev / ch.mean_kev_open) + self._pattern
            if self.detector and self.rig.dark_column_adu is not None:
                # a column's dark offset is not in the dark level: it adds to the signal, most where that is least
                a = a - np.log1p(np.maximum(np.asarray(self.rig.dark_column_adu) / (ch.gain * kev), -0.99))
            out.append(self._bin(a))
        return np.concatenate(out, axis=-1)

    def profile(self, fractions: Mapping[str, float], density: float, thickness_mm: float) -> np.ndarray:
        """Binned -ln T per channel, concatenated: shape [C * bins]."""
        return self.profiles(fractions, density, [thickness_mm])[0]

    def noise_var(self, fractions: Mapping[str, float], density: float, thickness_mm: float) -> np.ndarray:
        """Variance of the binned, row-averaged -ln profile from detector noise alone."""
        r = self.rig
        out = []
        for ch in self._ch:
            e = ch.energies
            n = ch.n_behind_wedge * np.exp(-linear_attenuation(fractions, density, e) * thickness_mm / 10.0)[None, :]
            m, v = n @ e, n @ (e * e)
            per_pixel = v / m**2 + (r.read_noise_adu**2 + 1 / 12) / (ch.gain * m) ** 2
            per_col = per_pixel / _plate_height(r)
            k = np.diff(self._edges)
            out.append(self._bin(per_col, average=False) / k**2)
        return np.concatenate(out)

    def texture_field_cov(self) -> np.ndarray:
        """Covariance [bins, bins] of the binned row mean of the plate's unit texture field (see module doc)."""
        r = self.rig
        return _texture_field_cov(_plate_height(r), r.width, max(1, r.texture_cell_px), self.bins)


def _plate_height(rig: RigConfig) -> int:
    """Rows the profile averages over: the plate's, not an open-beam strip's."""
    return len(range(rig.height)[plate_rows(rig)])


@lru_cache(maxsize=16)
def _fixed_pattern_cached(rig_json: str) -> np.ndarray:
    rig = RigConfig.model_validate_json(rig_json)
    det = RigSimulator(rig)
    good = np.ones(rig.height * rig.width, bool)
    good[np.concatenate([det.dead_idx, det.hot_idx])] = False
    rows = plate_rows(rig)
    good = good.reshape(rig.height, rig.width)[rows]
    # the mean over the plate's rows of -ln(gain pattern x heel), good pixels only: what -ln T carries in every
    # capture
    pattern = -np.log(det.prnu * det.heel_profile)[rows]
    return (pattern * good).sum(0) / np.maximum(good.sum(0), 1)


def _fixed_pattern(rig: RigConfig) -> np.ndarray:
    return _fixed_pattern_cached(rig.model_dump_json())


@lru_cache(maxsize=16)
def _texture_field_cov(height: int, width: int, cell: int, bins: int, samples: int = 2000) -> np.ndarray:
    """Covariance of the binned row mean of the simulator's unit texture field (coarse normal cells, zoomed
    linearly): smooth along the wedge axis, so neighbouring bins are correlated. Estimated once (seeded)."""
    rng = np.random.default_rng(0x7E57)
    rows = []
    for _ in range(samples):
        coarse = rng.standard_normal((height // cell + 2, width // cell + 2))
        f = ndimage.zoom(coarse, cell, order=1, prefilter=False)[:height, :width].mean(0)
        rows.append(bin_columns(f, bins))
    return np.cov(np.asarray(rows), rowvar=False)


def profile_model_for(rig, bins: int = 32):
    """The profile model of a rig config: the nominal rig's or the second rig's (by config type)."""
    from alloynet.physics.second_rig import SecondRigConfig, SecondRigProfileModel

    if isinstance(rig, SecondRigConfig):
        return SecondRigProfileModel(rig, bins)
    return ProfileModel(rig, bins)

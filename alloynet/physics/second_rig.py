"""A second, independently written rig model: the same nominal settings, different (realistic) physics.

Why it exists: a model or a physics fit that only ever saw ``RigSimulator`` may have learned that rig's
particular scatter, heel, gain and noise, not the alloys. This module is a second instrument with the
same nominal settings (W tube, kVp, filtration, wedge, CsI, dose, panel levels) whose physics differs
from the nominal rig the way a real rig differs from its data sheet. It shares only the physical data
(``materials``: alloy table, attenuation; ``spectrum.tube_spectrum``: SpekPy) with the simulator; the
forward model, noise, scatter, heel, PSF, gain and defects are its own code. docs/second_rig.md lists
every difference, why it is realistic, and how much it moves -ln T.

Forward model, per kVp channel, per pixel (y = row, anode side at row 0; x = column, the wedge axis):

1. true spectrum: SpekPy at the *effective* tube voltage (ripple), the true anode angle and the inherent
   filtration plus the exit window; along y it is filtered by the extra tungsten path of the heel effect
   (rays leaving towards the anode cross more target: the beam is dimmer *and harder* there);
2. detected primary photons per energy bin ``n[E, y, x]``: dose x spectrum x CsI absorption (true,
   thicker CsI) x exp(-mu_wedge(E) w(x) - mu_plate(E) (t + dt(y, x)));
3. scatter: a source proportional to the primary and to the total attenuation along the ray (single
   scatter grows with the path length), spread by a 2-D exponential kernel (FFT convolution); its
   detected spectrum is the source-weighted mean of the primary spectra;
4. detection: Poisson per energy bin, each photon deposits r(E) (E less K-fluorescence escape above the
   Cs/I K-edges on average), and the light yield per photon fluctuates (Swank factor I: the variance per
   photon is r(E)^2 / I instead of r(E)^2);
5. light spread: PSF = Gaussian core + low-amplitude exponential glare tail (FFT convolution);
6. read-out: a smooth low-frequency gain field x PRNU, a dark frame with fixed column offsets, Gaussian
   read noise, 16-bit quantisation, dead and hot pixels.

Sessions: the tube output drifts between sessions (``session_gain``); each session takes its own dark
and flat frame, and a capture's levels (its sidecar's ``calibration``) are the LEVELS of those frames (mean,
ignoring dead/hot pixels), exactly as the data-set writer does for the nominal simulator.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
from pydantic import Field, field_validator
from scipy import fft as sfft
from scipy import ndimage, sparse

from alloynet.physics.alloys import Plate
from alloynet.physics.materials import CSI, WEDGE_MATERIALS, linear_attenuation
from alloynet.physics.measure import MAX_ADU, T_FLOOR_MEAN, bin_columns, bin_edges
from alloynet.physics.rig import NOMINAL_FIELDS, NominalPanel, wedge_columns_mm
from alloynet.physics.simulator import SimulatedCapture  # the shared result type, no simulator code
from alloynet.physics.spectrum import tube_spectrum

W_DENSITY = 19.3  # g/cm^3, tungsten target
CSI_K_EDGE_KEV = 33.17  # iodine K-edge (Cs at 35.98): above it a photon may lose a K x-ray
CSI_K_ALPHA_KEV = 29.8  # mean Cs/I K-alpha energy carried away when it escapes

__all__ = ["NOMINAL_FIELDS", "SecondRig", "SecondRigConfig", "SecondRigProfileModel"]  # NOMINAL_FIELDS: from rig.py


class SecondRigConfig(NominalPanel):
    """Nominal settings (``alloynet.physics.rig``, shared with ``RigConfig``) plus how this rig's true physics
    departs from them."""

    dk_kev: float = Field(1.0, gt=0, description="spectrum energy bin width")
    noise_bin_kev: float = Field(
        2.0,
        gt=0,
        description="energy bins in which detected photons are Poisson-sampled "
        "(exact mean and variance within each; dk_kev for one per spectrum bin)",
    )

    # -- spectrum: the beam is not the nominal one -------------------------------------------------------
    kvp_error_rel: float = Field(
        -0.015, ge=-0.2, le=0.2, description="effective tube voltage / set kVp - 1 (generator ripple, calibration)"
    )
    anode_angle_error_deg: float = Field(
        -1.0, ge=-5, le=5, description="true anode angle - nominal (target wear, mounting)"
    )
    extra_filtration_mm_al: float = Field(
        0.3, ge=0, description="exit window and housing, Al equivalent, on top of nominal"
    )
    # -- heel effect with beam hardening along the rows (anode side at row 0) ----------------------------
    heel_depth_um: float = Field(1.0, ge=0, description="mean depth of x-ray production below the target surface")
    heel_half_angle_deg: float = Field(1.5, ge=0, description="half the field angle along the anode-cathode axis")
    # -- detector ----------------------------------------------------------------------------------------
    csi_excess_mm: float = Field(0.05, ge=-0.4, description="true CsI thickness - nominal")
    swank_factor: float = Field(0.85, gt=0, le=1, description="I = M1^2/(M0 M2) of the light yield per absorbed photon")
    k_escape_prob: float = Field(0.10, ge=0, le=1, description="chance a photon above the K-edge loses its K x-ray")
    psf_sigma_px: float = Field(0.6, ge=0, description="Gaussian core of the light spread")
    glare_fraction: float = Field(0.02, ge=0, lt=1, description="share of the light in the exponential glare tail")
    glare_length_px: float = Field(6.0, gt=0, description="1/e length of the glare tail")
    gain_lowfreq_rel: float = Field(0.02, ge=0, description="rms of the smooth gain field (fixed per detector)")
    gain_lowfreq_scale: float = Field(0.3, gt=0, description="its correlation length, as a fraction of the field")
    gain_prnu: float = Field(0.01, ge=0, description="pixel-to-pixel gain non-uniformity (rms)")
    column_offset_adu: float = Field(0.5, ge=0, description="rms fixed-pattern column offset in the dark frame")
    dead_pixels: int = Field(8, ge=0)
    hot_pixels: int = Field(3, ge=0)
    # -- scatter -----------------------------------------------------------------------------------------
    scatter_per_attenuation: float = Field(
        0.005, ge=0, description="scatter-to-primary ratio per unit -ln T along the ray"
    )
    scatter_range: float = Field(
        0.15, gt=0, description="1/e length of the scatter kernel, as a fraction of the field width"
    )
    # -- sessions ----------------------------------------------------------------------------------------
    output_drift_rel: float = Field(0.003, ge=0, le=0.2, description="rms tube output change between sessions")

    @field_validator("open_beam_rows")
    @classmethod
    def _no_open_beam(cls, v: int) -> int:
        if v:
            raise ValueError("the second rig's model images no open-beam strip; use the alloynet simulator")
        return v

    @classmethod
    def from_nominal(cls, nominal: NominalPanel, **deviations: Any) -> SecondRigConfig:
        """This rig at another rig's nominal settings (e.g. a ``RigConfig``'s); ``deviations`` set the other
        fields."""
        return cls(**{**nominal.panel_settings(), **deviations})


class _Convolver:
    """2-D convolution with a symmetric kernel, edges mirrored, by FFT; with its exact adjoint (the noise
    model needs it to carry pixel variances through the blur).

    ``apply(x) = crop(k * pad(x))`` with ``pad = Py x Px^T`` (0/1 mirror matrices), so the adjoint is
    ``Py^T (k * embed(x)) Px``. ``kernel(dy, dx)`` is sampled on the padded grid's circular distances and
    normalised to sum 1."""

    def __init__(self, h: int, w: int, kernel, pad: int):
        while (
            sfft.next_fast_len(h + 2 * pad, real=True) != h + 2 * pad
            or sfft.next_fast_len(w + 2 * pad, real=True) != w + 2 * pad
        ):
            pad += 1  # a little more mirror margin costs less than an awkward FFT size
        self.h, self.w, self.p = h, w, pad
        hp, wp = h + 2 * pad, w + 2 * pad
        self.shape = (hp, wp)
        dy = np.minimum(np.arange(hp), hp - np.arange(hp))[:, None].astype(float)
        dx = np.minimum(np.arange(wp), wp - np.arange(wp))[None, :].astype(float)
        k = kernel(dy, dx)
        self.kernel = k / k.sum()
        self.kf = sfft.rfft2(self.kernel)
        self.iy = np.pad(np.arange(h), pad, mode="symmetric")  # padded row -> source row
        self.ix = np.pad(np.arange(w), pad, mode="symmetric")
        self.py, self.px = np.eye(h)[self.iy], np.eye(w)[self.ix]  # the same as 0/1 matrices [hp, h], [wp, w]

    def variance_through(self, var: np.ndarray, radius: int) -> np.ndarray:
        """Variance of each output pixel when the input pixels are independent with variance ``var``:
        sum_j A_ij^2 var_j with A the blur's matrix, the kernel cut at ``radius`` (its squared tail beyond is
        negligible). Exact at the edges, where a mirrored pixel enters twice (its weights add, then square)."""
        h, w, p = self.h, self.w, self.p
        radius = min(radius, p)
        my, mx = np.pad(np.arange(h), p, mode="symmetric"), np.pad(np.arange(w), p, mode="symmetric")
        yy, xx = np.mgrid[0:h, 0:w]
        rows, cols, vals = [], [], []
        for dy in range(-radius, radius + 1):
            for dx in range(-radius, radius + 1):
                rows.append((yy * w + xx).ravel())
                cols.append((my[yy + dy + p] * w + mx[xx + dx + p]).ravel())
                vals.append(np.full(h * w, self.kernel[dy % self.shape[0], dx % self.shape[1]]))
        a = sparse.coo_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(h * w, h * w)
        ).tocsr()  # duplicates (mirrored pixels) are summed
        return (a.multiply(a) @ var.ravel()).reshape(h, w)

    def apply(self, x: np.ndarray) -> np.ndarray:
        padded = x[..., self.iy[:, None], self.ix[None, :]]
        out = sfft.irfft2(sfft.rfft2(padded) * self.kf, s=self.shape)
        return out[..., self.p : self.p + self.h, self.p : self.p + self.w]

    def adjoint(self, x: np.ndarray) -> np.ndarray:
        z = np.zeros(x.shape[:-2] + self.shape)
        z[..., self.p : self.p + self.h, self.p : self.p + self.w] = x
        y = sfft.irfft2(sfft.rfft2(z) * self.kf, s=self.shape)  # symmetric kernel: its own transpose
        return self.py.T @ y @ self.px


class _Beam:
    """One kVp setting of this rig: true spectrum, heel, detector response; nothing plate-dependent."""

    def __init__(self, cfg: SecondRigConfig, kvp: float, wedge_mm: np.ndarray):
        kv = kvp * (1.0 + cfg.kvp_error_rel)
        theta = cfg.anode_angle_deg + cfg.anode_angle_error_deg
        spec = tube_spectrum(
            round(kv, 4), round(theta, 4), round(cfg.filtration_mm_al + cfg.extra_filtration_mm_al, 4), cfg.dk_kev
        )
        csi_fr, csi_rho = CSI
        csi_cm = (cfg.csi_mm + cfg.csi_excess_mm) / 10.0
        absorbed = 1.0 - np.exp(-linear_attenuation(csi_fr, csi_rho, spec.energies_kev) * csi_cm)
        # Bins holding < 1e-7 of the detected photons (soft lines the filtration removes) cost time, add nothing.
        keep = spec.fluence * absorbed > 1e-7 * (spec.fluence * absorbed).sum()
        e = spec.energies_kev[keep]
        absorbed = absorbed[keep]
        fluence = spec.fluence[keep]
        self.energies = e
        # Photon noise is drawn per energy bin of the noise grid (``noise_bin_kev`` wide, >= dk_kev): these
        # are the first spectrum bin of each group.
        self.groups = np.flatnonzero(
            np.diff(np.floor((e - e[0]) / max(cfg.noise_bin_kev, cfg.dk_kev) + 1e-9), prepend=-1) > 0
        )
        # mean energy deposited per absorbed photon: K-fluorescence escape above the edge carries some away
        self.response = e - cfg.k_escape_prob * CSI_K_ALPHA_KEV * (e > CSI_K_EDGE_KEV)
        # heel: extra W path d (1/sin(theta + a) - 1/sin(theta)) for a ray leaving at angle a towards the
        # cathode (a < 0 on the anode side, row 0); SpekPy already includes the central ray's path.
        a = np.deg2rad(np.linspace(-cfg.heel_half_angle_deg, cfg.heel_half_angle_deg, cfg.height))
        th = np.deg2rad(theta)
        extra_cm = cfg.heel_depth_um * 1e-4 * (1.0 / np.sin(th + a) - 1.0 / np.sin(th))
        heel = np.exp(-np.outer(linear_attenuation({"W": 1.0}, W_DENSITY, e), extra_cm))  # [E, H]
        n = fluence[:, None] * absorbed[:, None] * heel  # [E, H]
        self.n_open = cfg.dose * n / n.sum(0).mean()  # detected photons per pixel, open beam
        self.open_counts = self.n_open.sum(0)  # [H]
        self.kev_open = float((self.response @ self.n_open).mean())
        self.adu_per_kev = (cfg.flat_target_adu - cfg.dark_offset_adu) / self.kev_open
        member = (np.searchsorted(self.groups, np.arange(len(e)), side="right") - 1)[None, :] == np.arange(
            len(self.groups)
        )[:, None]  # [G, E]
        self.group_moments32 = np.concatenate([member * self.response**k for k in range(3)]).astype(np.float32)
        fr, rho = WEDGE_MATERIALS[cfg.wedge_material]
        self.wedge = np.exp(-np.outer(linear_attenuation(fr, rho, e), wedge_mm / 10.0))  # [E, W]
        self.wedge32 = self.wedge.astype(np.float32)
        self.center = fluence * absorbed  # the central ray, for a0


class SecondRig:
    """Captures from the second rig. Same public interface as ``RigSimulator`` (plus ``wedge_reference``)."""

    def __init__(self, rig: SecondRigConfig | None = None):
        self.rig = cfg = rig or SecondRigConfig()
        h, w = cfg.height, cfg.width
        self.wedge_mm = wedge_columns_mm(cfg)
        self._beams = [_Beam(cfg, k, self.wedge_mm) for k in cfg.kvp]
        # Fixed detector properties, from their own stream of the detector seed.
        det = np.random.default_rng(np.random.SeedSequence([cfg.detector_seed, 0x2D2]))
        ell = cfg.gain_lowfreq_scale * max(h, w)
        smooth = ndimage.gaussian_filter(det.standard_normal((h, w)), ell / np.sqrt(2), mode="wrap")
        smooth /= smooth.std() if smooth.std() > 0 else 1.0
        self.gain_map = (1.0 + cfg.gain_lowfreq_rel * smooth) * (1.0 + cfg.gain_prnu * det.standard_normal((h, w)))
        cols = det.standard_normal(w)
        self.dark_pattern = cfg.dark_offset_adu + cfg.column_offset_adu * (cols - cols.mean())[None, :] * np.ones(
            (h, 1)
        )
        bad = det.choice(h * w, size=min(cfg.dead_pixels + cfg.hot_pixels, h * w), replace=False)
        self.dead_idx, self.hot_idx = bad[: cfg.dead_pixels], bad[cfg.dead_pixels :]
        self.good = np.ones((h, w), bool)
        self.good.reshape(-1)[bad] = False
        lam = cfg.scatter_range * w
        self._scatter = _Convolver(
            h, w, lambda dy, dx: np.exp(-np.hypot(dy, dx) / lam), min(max(h, w), int(np.ceil(4 * lam)))
        )
        s, g, lg = cfg.psf_sigma_px, cfg.glare_fraction, cfg.glare_length_px

        def psf(dy, dx):
            r2 = dy**2 + dx**2
            core = np.exp(-r2 / (2 * s * s)) if s > 0 else (r2 == 0).astype(float)
            tail = np.exp(-np.sqrt(r2) / lg)
            return (1 - g) * core / core.sum() + g * tail / tail.sum()

        self._psf = _Convolver(h, w, psf, min(max(h, w), int(np.ceil(5 * max(lg, 3 * s, 1.0)))))
        self._levels: tuple[list[float], list[float]] | None = None

    # -- physics shared by captures and the profile model ------------------------------------------------
    def _primary(
        self, beam: _Beam, plate_mu: np.ndarray | None, t_cm: float, dt_cm: np.ndarray | None, scale: float
    ) -> np.ndarray:
        """Expected detected primary photons [E, H, W] (float32: this is the big array of a capture)."""
        a = np.exp(-plate_mu * t_cm) * scale if plate_mu is not None else np.full(len(beam.energies), scale)
        n = np.multiply((beam.n_open * a[:, None]).astype(np.float32)[:, :, None], beam.wedge32[:, None, :])
        if plate_mu is not None and dt_cm is not None:
            n *= np.exp(np.multiply.outer(-plate_mu.astype(np.float32), dt_cm.astype(np.float32)))
        return n

    def _scatter_of(self, beam: _Beam, counts: np.ndarray, weighted) -> tuple[np.ndarray, np.ndarray]:
        """Scatter photons per pixel [H, W] and their spectrum [E] (sums to 1), from the primary counts.

        The local source is the primary times its attenuation A = -ln(primary / open beam) along the ray
        (single scatter grows with the path length), so the thick end scatters more relative to primary.
        ``weighted(A)`` returns sum over pixels of n[E, y, x] A[y, x] (the source's spectrum)."""
        cfg = self.rig
        if cfg.scatter_per_attenuation <= 0:
            return np.zeros_like(counts), np.zeros(len(beam.energies))
        att = np.maximum(-np.log(np.maximum(counts, 1e-300) / beam.open_counts[:, None]), 0.0)
        field = np.maximum(self._scatter.apply(cfg.scatter_per_attenuation * att * counts), 0.0)
        spec = weighted(att)
        total = spec.sum()
        return field, (spec / total if total > 0 else spec)

    def expected_kev(
        self, beam_index: int, plate_mu: np.ndarray | None, t_cm: float, scale: float = 1.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Noise-free deposited energy [H, W] before light spread, and its variance (Poisson + Swank),
        for a uniform plate (linear attenuation ``plate_mu`` per energy, thickness ``t_cm``)."""
        beam = self._beams[beam_index]
        a = np.exp(-plate_mu * t_cm) if plate_mu is not None else np.ones(len(beam.energies))
        op = beam.n_open * (a * scale)[:, None]  # [E, H]
        r = beam.response
        counts = op.T @ beam.wedge  # [H, W]
        field, spec = self._scatter_of(beam, counts, lambda att: (op * (att @ beam.wedge.T).T).sum(1))
        kev = (op * r[:, None]).T @ beam.wedge + field * (spec @ r)
        var = ((op * (r * r)[:, None]).T @ beam.wedge + field * (spec @ (r * r))) / self.rig.swank_factor
        return kev, var

    def _expose(
        self,
        beam: _Beam,
        plate_mu: np.ndarray | None,
        t_cm: float,
        dt_cm: np.ndarray | None,
        gain_scale: float,
        rng: np.random.Generator,
    ) -> np.ndarray:
        """One noisy exposure of one channel, uint16 [H, W]."""
        n = self._primary(beam, plate_mu, t_cm, dt_cm, gain_scale)
        field, spec = self._scatter_of(beam, n.sum(0), lambda att: n.reshape(len(n), -1) @ att.ravel())
        return self._detect(beam, n + spec[:, None, None] * field[None], rng)

    def _detect(self, beam: _Beam, n: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Expected photons per energy bin [E, H, W] -> read-out frame.

        Photons are Poisson per bin of the noise grid; each deposits its bin's mean response, and the
        spread of deposits (energy within the bin, light yield: Swank) is added as Gaussian noise with the
        exact variance sum_bins N (<r^2>/I - <r>^2)."""
        g = len(beam.groups)
        moments = beam.group_moments32 @ n.reshape(len(n), -1)  # [3G, H*W]: sum n, n r, n r^2 per bin
        counts, s1, s2 = moments[:g], moments[g : 2 * g], moments[2 * g :]
        safe = np.maximum(counts, np.float32(1e-30))
        mean_r = s1 / safe
        spread = s2 / (safe * np.float32(self.rig.swank_factor)) - mean_r * mean_r
        photons = rng.poisson(counts).astype(np.float32)
        kev = np.einsum("gp,gp->p", photons, mean_r).astype(np.float64)
        kev += np.sqrt(np.maximum(np.einsum("gp,gp->p", photons, spread), 0.0)) * rng.standard_normal(kev.shape)
        kev = kev.reshape(n.shape[1:])
        return self._read_out(beam, self._psf.apply(kev), rng)

    def _read_out(self, beam: _Beam, kev: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        adu = self.dark_pattern + beam.adu_per_kev * self.gain_map * kev
        adu = adu + self.rig.read_noise_adu * rng.standard_normal(adu.shape)
        return self._quantise(adu)

    def _quantise(self, adu: np.ndarray) -> np.ndarray:
        img = np.clip(np.rint(adu), 0, MAX_ADU).astype(np.uint16)
        img.reshape(-1)[self.dead_idx] = 0
        img.reshape(-1)[self.hot_idx] = MAX_ADU
        return img

    def _texture(self, plate: Plate, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        """Extra plate thickness (cm): a smooth Gaussian random field (correlation set so the row mean has
        about height/texture_cell_px independent cells) plus intermetallic particles as Gaussian blobs."""
        cfg = self.rig
        h, w = cfg.height, cfg.width
        s = cfg.texture_cell_px / (2 * np.sqrt(np.pi))
        white = rng.standard_normal((h, w))
        field = ndimage.gaussian_filter(white, s, mode="wrap") * (2 * np.sqrt(np.pi) * s) if s > 0 else white
        dt = (plate.thickness_mm / 10.0) * cfg.texture_rel * field
        k = int(rng.poisson(cfg.inclusion_rate))
        yy, xx = np.mgrid[0:h, 0:w]
        for _ in range(k):
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            sig, depth = rng.uniform(0.7, 2.0), rng.uniform(0.005, 0.02)
            dt = dt + depth * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sig * sig))
        return dt, k

    def _a0(self, plate: Plate) -> list[float]:
        out = []
        for beam in self._beams:
            wgt = beam.center * beam.response
            mu = linear_attenuation(plate.fractions(), plate.density_g_cm3, beam.energies)
            out.append(float(-np.log((wgt * np.exp(-mu * plate.thickness_mm / 10.0)).sum() / wgt.sum())))
        return out

    # -- dark and flat levels ----------------------------------------------------------------------------
    def _open_kev(self, beam: _Beam, gain_scale: float, power: int = 1) -> np.ndarray:
        """Open-beam deposited energy per pixel [H, W] (power=2: its Poisson x Swank variance)."""
        per_row = (beam.response**power) @ beam.n_open * gain_scale
        return per_row[:, None] * np.ones((1, self.rig.width)) / (self.rig.swank_factor if power == 2 else 1.0)

    def expected_levels(self, gain_scale: float = 1.0) -> tuple[list[float], list[float]]:
        """Noise-free dark and flat LEVELS per channel (mean over good pixels)."""
        dark = float(self.dark_pattern[self.good].mean())
        mean, _ = self.flat_moments(gain_scale)
        return [dark] * len(self._beams), [float(m[self.good].mean()) for m in mean]

    def flat_moments(self, gain_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """Expected value and variance (ADU, [C, H, W]) of every pixel of an open-beam flat frame."""
        means, variances = [], []
        radius = max(2, int(np.ceil(4 * self.rig.psf_sigma_px)))
        for beam in self._beams:
            g = beam.adu_per_kev * self.gain_map
            means.append(self.dark_pattern + g * self._psf.apply(self._open_kev(beam, gain_scale)))
            blurred_var = self._psf.variance_through(self._open_kev(beam, gain_scale, 2), radius)
            variances.append(g * g * blurred_var + self.rig.read_noise_adu**2 + 1 / 12)
        return np.stack(means), np.stack(variances)

    # -- public API (as RigSimulator) --------------------------------------------------------------------
    def dark_flat_frames(self, rng: np.random.Generator, gain_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """A dark frame (no beam) and a flat frame (open beam: no wedge, no plate), uint16 [C, H, W]: a session's
        levels come from them."""
        cfg = self.rig
        darks, flats = [], []
        for beam in self._beams:
            noise = cfg.read_noise_adu * rng.standard_normal((cfg.height, cfg.width))
            darks.append(self._quantise(self.dark_pattern + noise))
            flats.append(self._detect(beam, beam.n_open[:, :, None] * np.ones((1, 1, cfg.width)) * gain_scale, rng))
        return np.stack(darks), np.stack(flats)

    def session_gain(self, rng: np.random.Generator) -> float:
        """Tube output of a session relative to nominal (drift: warm-up, filament ageing, mains)."""
        return float(1.0 + self.rig.output_drift_rel * rng.standard_normal())

    def capture(
        self,
        plate: Plate,
        rng: np.random.Generator,
        dark_adu: Sequence[float] | None = None,
        flat_adu: Sequence[float] | None = None,
        gain_scale: float = 1.0,
    ) -> SimulatedCapture:
        """One capture of ``plate`` behind the wedge. Its dark and flat levels default to the noise-free levels."""
        dt, k = self._texture(plate, rng)
        t_cm = plate.thickness_mm / 10.0
        image = np.stack(
            [
                self._expose(
                    b, linear_attenuation(plate.fractions(), plate.density_g_cm3, b.energies), t_cm, dt, gain_scale, rng
                )
                for b in self._beams
            ]
        )
        if dark_adu is None or flat_adu is None:
            if self._levels is None:
                self._levels = self.expected_levels(1.0)
            d, f = self._levels  # the flat's signal scales with the tube output, the dark does not
            dark_adu = d if dark_adu is None else dark_adu
            flat_adu = [dd + gain_scale * (ff - dd) for dd, ff in zip(d, f)] if flat_adu is None else flat_adu
        return SimulatedCapture(image, list(dark_adu), list(flat_adu), self._a0(plate), k)

    def wedge_reference(self, rng: np.random.Generator, gain_scale: float = 1.0) -> np.ndarray:
        """The wedge alone, no plate (a frame a lab can take each session), uint16 [C, H, W]."""
        return np.stack([self._expose(b, None, 0.0, None, gain_scale, rng) for b in self._beams])


class SecondRigProfileModel:
    """The ideal observer's view of the second rig (duck type of ``separability.ProfileModel``).

    Profile: per column, -ln of the row mean (good pixels) of (S - dark level) / (flat level - dark level),
    with S the rig's expected signal (its forward model without noise: heel, scatter, PSF, gain field and
    column offsets included, the levels being those of noise-free dark/flat frames); averaged over the
    columns of each bin; channels concatenated. ``noise_var``: the variance of that binned profile from
    photon, Swank, read and quantisation noise, carried exactly through the PSF (first order in the noise).
    """

    def __init__(self, cfg: SecondRigConfig | None = None, bins: int = 32):
        self.sim = SecondRig(cfg)
        self.rig = self.sim.rig
        self.bins = min(bins, self.rig.width)
        self._edges = bin_edges(self.rig.width, self.bins)
        self._dark, self._flat = self.sim.expected_levels()
        self._good_rows = self.sim.good.sum(0)  # [W]

    def _row_mean_t(self, i: int, fractions, density: float, thickness_mm: float):
        beam = self.sim._beams[i]
        mu = linear_attenuation(fractions, density, beam.energies)
        kev, var = self.sim.expected_kev(i, mu, thickness_mm / 10.0)
        span = self._flat[i] - self._dark[i]
        g = beam.adu_per_kev * self.sim.gain_map
        s = self.sim.dark_pattern + g * self.sim._psf.apply(kev)
        t = np.where(self.sim.good, (s - self._dark[i]) / span, 0.0).sum(0) / self._good_rows
        return t, var, g, span

    def _bin(self, per_column: np.ndarray) -> np.ndarray:
        return bin_columns(per_column, self.bins)

    def profile(self, fractions, density: float, thickness_mm: float) -> np.ndarray:
        """Binned -ln T per channel, concatenated: shape [C * bins]."""
        return np.concatenate(
            [
                self._bin(-np.log(np.maximum(self._row_mean_t(i, fractions, density, thickness_mm)[0], T_FLOOR_MEAN)))
                for i in range(len(self.sim._beams))
            ]
        )

    def profiles(self, fractions, density: float, thicknesses_mm) -> np.ndarray:
        """``profile`` for several thicknesses: [T, C * bins]."""
        return np.stack([self.profile(fractions, density, float(t)) for t in np.atleast_1d(thicknesses_mm)])

    def texture_field_cov(self, samples: int = 1000) -> np.ndarray:
        """Covariance [bins, bins] of the binned row mean of this rig's unit texture field (seeded estimate)."""
        return _texture_field_cov(self.rig.height, self.rig.width, self.rig.texture_cell_px, self.bins, samples)

    def noise_var(self, fractions, density: float, thickness_mm: float) -> np.ndarray:
        """Variance of each profile bin (detector noise; fixed patterns are part of the profile itself)."""
        r = self.rig
        out = []
        cols = np.arange(r.width)
        which = np.searchsorted(self._edges, cols, side="right") - 1  # bin of every column
        for i in range(len(self.sim._beams)):
            t, var_kev, g, span = self._row_mean_t(i, fractions, density, thickness_mm)
            # d profile_b / d S(y, x) for the pixels of bin b (first order)
            per_col = 1.0 / (np.diff(self._edges)[which] * self._good_rows * span * np.maximum(t, T_FLOOR_MEAN))
            u = np.zeros((self.bins, r.height, r.width))
            u[which, :, cols] = per_col[:, None]
            u *= self.sim.good[None]
            w = self.sim._psf.adjoint(g[None] * u)  # sensitivity to deposited keV
            out.append((var_kev[None] * w * w).sum((1, 2)) + (u * u).sum((1, 2)) * (r.read_noise_adu**2 + 1 / 12))
        return np.concatenate(out)


@lru_cache(maxsize=8)
def _texture_field_cov(h: int, w: int, cell: float, bins: int, samples: int) -> np.ndarray:
    """The texture field of ``SecondRig._texture`` (white noise, Gaussian-filtered), binned row mean."""
    rng = np.random.default_rng(0x7E57)
    s = cell / (2 * np.sqrt(np.pi))
    rows = []
    for _ in range(samples):
        white = rng.standard_normal((h, w))
        f = ndimage.gaussian_filter(white, s, mode="wrap") * (2 * np.sqrt(np.pi) * s) if s > 0 else white
        rows.append(bin_columns(f.mean(0), bins))
    return np.cov(np.asarray(rows), rowvar=False)

"""The rig simulator: a 2-D detector capture of a plate behind a linear wedge.

Geometry: the wedge ramps linearly along the image's x axis (columns, the *wedge axis*) from
``wedge_min_mm`` to ``wedge_mm``, after a plate-only strip of ``wedge_margin_px`` columns (as on real
wedge jigs; it also keeps detector blur from mixing wedge into the zero-wedge reading); the plate
covers the whole field. Rows (y) are the non-wedge axis,
along which the tube's heel effect also runs.

Why it is fast: behind a wedge the spectrum depends on the column only, so the energy integral is a
1-D problem (W columns x E bins). Per-pixel variations of the plate (texture, inclusions), the heel
effect and scatter are applied as perturbations of the column solution: a small extra thickness dt at a
pixel scales the signal by exp(-mu_eff(x) dt) with the column's energy-weighted mu_eff.

Noise: compound Poisson (each detected photon deposits its own energy). Its mean and variance are
matched exactly by a scaled Poisson: Q ~ Poisson(m^2/v) quanta of v/m keV each, where m = sum n_E E and
v = sum n_E E^2 for the column. Then detector blur (CsI light spread), per-pixel gain (PRNU), offset,
Gaussian read noise, 16-bit quantisation and dead/hot pixels. At the thick end of a 5-7 cm Al wedge only
a few photons arrive, so read noise and quantisation matter there, as on a real panel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import Field, model_validator
from scipy import ndimage

from alloynet.physics.alloys import Plate
from alloynet.physics.materials import linear_attenuation
from alloynet.physics.measure import MAX_ADU
from alloynet.physics.rig import NominalPanel, wedge_columns_mm
from alloynet.physics.spectrum import Spectrum, detected_quanta, tube_spectrum
from alloynet.physics.transmission import neg_log_transmission_of, wedge_attenuation


class RigConfig(NominalPanel):
    """The alloynet simulator's rig: the nominal settings (``alloynet.physics.rig``) plus this model's own
    detector and plate physics, and what the rig fit fits."""

    gain_prnu: float = 0.01
    gain_drift: float = 0.002
    dead_pixels: int = 6
    hot_pixels: int = 2
    psf_sigma_px: float = 0.7
    scatter_fraction: float = 0.02
    scatter_sigma_px: float = 20.0
    heel: float = 0.05
    dk_kev: float = Field(1.0, gt=0, description="spectrum energy bin width")
    # -- what the rig fit fits or measures (``alloynet rig fit``): the defaults are the nominal rig's own
    # physics and leave every output unchanged. A real tube, panel and room depart from the data sheet in
    # these ways; docs/rig_fit.md says how each is measured and why it is there.
    kvp_offset_rel: float = Field(
        0.0,
        ge=-0.2,
        le=0.2,
        description="effective tube voltage / set kVp - 1 "
        "(generator ripple, kV calibration; also absorbs the detector's energy response)",
    )
    extra_filtration_mm_al: float = Field(
        0.0, ge=0, le=10, description="Al-equivalent filtration on top of filtration_mm_al (exit window, housing, oil)"
    )
    scatter_per_attenuation: float = Field(
        0.0,
        ge=0,
        le=0.5,
        description="scatter source proportional to the "
        "primary times its attenuation -ln(q/q_open) (single scatter grows with "
        "the path), spread like scatter_fraction's by scatter_sigma_px",
    )
    glare_fraction: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="share of the light in a long exponential tail of the detector's PSF (veiling glare)",
    )
    glare_length_px: float = Field(6.0, gt=0, description="1/e length of the glare tail, along each axis")
    column_gain: list[float] | None = Field(
        None,
        description="the panel's flat-field gain per column "
        "(measured from flat frames, mean about 1): replaces the column "
        "means of the simulated PRNU x heel; one value per column",
    )
    dark_column_adu: list[float] | None = Field(
        None, description="fixed offset per column of the dark frame relative to its level (ADU); one value per column"
    )

    @model_validator(mode="after")
    def _per_column(self) -> RigConfig:
        for name in ("column_gain", "dark_column_adu"):
            v = getattr(self, name)
            if v is not None and len(v) != self.width:
                raise ValueError(
                    f"{name}: {len(v)} values for a rig {self.width} columns wide (measured on a "
                    f"panel of another width? fit the rig with captures of this size)"
                )
            if v is not None and not all(np.isfinite(v)):
                raise ValueError(f"{name}: every value must be a finite number")
        if self.column_gain is not None and not all(g > 0 for g in self.column_gain):
            raise ValueError("column_gain: every value must be > 0")
        return self


def beam_spectrum(rig: RigConfig, kvp: float) -> Spectrum:
    """The spectrum a channel is computed with: SpekPy at the set kVp and filtration, unless the rig fit
    says the tube runs at another effective voltage (``kvp_offset_rel``) or behind more filtration
    (``extra_filtration_mm_al``, applied as Beer-Lambert through Al: no new SpekPy run). The default rig
    computes exactly the set values."""
    if rig.kvp_offset_rel:
        spec = _tube_between_nodes(kvp * (1.0 + rig.kvp_offset_rel), rig)
    else:
        spec = tube_spectrum(kvp, rig.anode_angle_deg, rig.filtration_mm_al, rig.dk_kev)
    if rig.extra_filtration_mm_al:
        mu = wedge_attenuation(spec.energies_kev, "Al")
        spec = Spectrum(spec.energies_kev, spec.fluence * np.exp(-mu * rig.extra_filtration_mm_al / 10.0))
    return spec


KVP_NODE_KV = 0.25  # effective tube voltages between these nodes mix the two nodes' spectra


def _tube_between_nodes(kv: float, rig: RigConfig) -> Spectrum:
    """The spectrum at an effective voltage ``kv``: SpekPy at the two nearest nodes of a 0.25 kV grid, mixed
    linearly. A SpekPy run costs about a second; the rig fit's least-squares search visits a new voltage at
    every step, and the mix keeps it to a few cached runs while staying smooth in ``kv`` (a real generator's
    ripple is such a mix too). The simulator and the fit use the same mix, so a fitted value means the same."""
    lo = np.floor(kv / KVP_NODE_KV + 1e-9) * KVP_NODE_KV
    w = (kv - lo) / KVP_NODE_KV
    a = tube_spectrum(round(float(lo), 6), rig.anode_angle_deg, rig.filtration_mm_al, rig.dk_kev)
    if w < 1e-9:
        return a
    b = tube_spectrum(round(float(lo + KVP_NODE_KV), 6), rig.anode_angle_deg, rig.filtration_mm_al, rig.dk_kev)
    # on the lower node's energy grid (one bin longer where the upper node reaches further): same bin width,
    # so the upper node's fluence per bin interpolates onto it
    e = a.energies_kev
    if b.energies_kev[-1] > e[-1]:
        e = np.append(e, e[-1] + rig.dk_kev)
    phi = (1 - w) * np.interp(e, a.energies_kev, a.fluence, left=0.0, right=0.0) + w * np.interp(
        e, b.energies_kev, b.fluence, left=0.0, right=0.0
    )
    keep = phi > 0
    return Spectrum(e[keep], phi[keep])


def glare_kernel(length_px: float, size: int) -> np.ndarray:
    """The glare tail along one axis: exp(-|d| / length), normalised, cut where it holds < 1e-4 of its mass
    (or at the field size)."""
    r = int(min(size, np.ceil(length_px * np.log(1e4))))
    k = np.exp(-np.abs(np.arange(-r, r + 1)) / length_px)
    return k / k.sum()


def add_glare(kev: np.ndarray, rig: RigConfig, axes: tuple[int, ...]) -> np.ndarray:
    """(1 - g) x + g (tail * x): the tail is separable (the same exponential along each of ``axes``), edges
    mirrored, so it keeps the total light and, across rows, each column's sum."""
    g = rig.glare_fraction
    if g <= 0:
        return kev
    tail = kev
    for ax in axes:
        tail = ndimage.convolve1d(tail, glare_kernel(rig.glare_length_px, kev.shape[ax]), axis=ax, mode="reflect")
    return (1 - g) * kev + g * tail


def scatter_quanta(profile: np.ndarray, rig: RigConfig, q_open: float) -> np.ndarray:
    """Scatter quanta per pixel [..., W] from the primary column profile [..., W] (quanta): a fraction
    ``scatter_fraction`` of the primary, plus a source ``scatter_per_attenuation`` x A x primary (A = -ln(q /
    q_open), the attenuation along the ray: single scatter grows with the path length), both spread along the
    wedge axis by a Gaussian of ``scatter_sigma_px`` and evenly across rows (the scatter field is smooth).
    The primary keeps (1 - scatter_fraction) of itself."""
    blur = lambda x: ndimage.gaussian_filter1d(x, rig.scatter_sigma_px, axis=-1, mode="nearest")  # noqa: E731
    out = rig.scatter_fraction * blur(profile)
    if rig.scatter_per_attenuation > 0:
        att = np.maximum(-np.log(np.maximum(profile, 1e-30) / q_open), 0.0)
        out = out + rig.scatter_per_attenuation * blur(att * profile)
    return out


# rows on each side of an open-beam strip's edge that the detector's PSF blurs: read by neither side
OPEN_BEAM_GUARD_ROWS = 2


def plate_row_start(open_beam_rows: int) -> int:
    """The first row that images the plate: 0, or below an open-beam strip and its guard rows."""
    return open_beam_rows + OPEN_BEAM_GUARD_ROWS if open_beam_rows else 0


def plate_rows(rig: RigConfig) -> slice:
    """The rows that image the plate (all of them, unless the rig images an open-beam strip at the top; the
    second rig's model never does)."""
    return slice(plate_row_start(getattr(rig, "open_beam_rows", 0)), None)


@dataclass
class SimulatedCapture:
    image: np.ndarray  # uint16 [C, H, W]
    dark_adu: list[float]  # dark level per channel (from the session's dark frame)
    flat_adu: list[float]  # flat level per channel (from its open-beam flat frame)
    a0_by_kvp: list[float]  # -ln T of the plate at zero wedge, noise-free, per kVp
    inclusions: int


class Channel:
    """Everything about one kVp setting that does not depend on the plate (shared with the ideal observer,
    so both see exactly the same photons)."""

    def __init__(self, rig: RigConfig, kvp: float):
        self.spectrum = beam_spectrum(rig, kvp)
        e = self.spectrum.energies_kev
        n = detected_quanta(self.spectrum, rig.csi_mm)
        self.energies = e
        self.n_open = rig.dose * n / n.sum()  # detected photons per bin, open beam
        self.mean_kev_open = float((self.n_open * e).sum())  # keV per pixel, open beam
        self.gain = (rig.flat_target_adu - rig.dark_offset_adu) / self.mean_kev_open  # ADU per keV
        self.wedge_mm = wedge_columns_mm(rig)
        mu_w = wedge_attenuation(e, rig.wedge_material)
        self.n_behind_wedge = self.n_open[None, :] * np.exp(-np.outer(self.wedge_mm / 10.0, mu_w))  # [W, E]
        self.quanta_open = self.mean_kev_open**2 / float((self.n_open * e * e).sum())  # effective quanta, open beam


class RigSimulator:
    """Simulates captures for one rig (one detector: its fixed-pattern defects come from ``detector_seed``)."""

    def __init__(self, rig: RigConfig | None = None):
        self.rig = rig or RigConfig()
        self.channels = [Channel(self.rig, k) for k in self.rig.kvp]
        det = np.random.default_rng(self.rig.detector_seed)
        h, w = self.rig.height, self.rig.width
        self.prnu = (1.0 + self.rig.gain_prnu * det.standard_normal((h, w))).astype(np.float32)
        n_bad = self.rig.dead_pixels + self.rig.hot_pixels
        flat_idx = det.choice(h * w, size=n_bad, replace=False)
        self.dead_idx = flat_idx[: self.rig.dead_pixels]
        self.hot_idx = flat_idx[self.rig.dead_pixels :]
        y = np.linspace(-1.0, 1.0, h, dtype=np.float32)
        self.heel_profile = (1.0 + self.rig.heel * y)[:, None]  # anode side darker, along the non-wedge axis
        if self.rig.column_gain is not None:
            # the measured flat-field pattern replaces the simulated one's column means (its pixel-to-pixel
            # spread stays): -ln T then carries exactly the measured pattern, as on the measured panel
            own = np.exp(np.log(self.prnu * self.heel_profile).mean(0))
            self.prnu = (self.prnu * (np.asarray(self.rig.column_gain) / own)[None, :]).astype(np.float32)
        self.dark_columns = (
            np.zeros(w) if self.rig.dark_column_adu is None else np.asarray(self.rig.dark_column_adu, float)
        )[None, :]

    # -- plate-dependent parts ------------------------------------------------------------------------
    def _thickness_field(self, plate: Plate, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        """Extra thickness (cm) per pixel: smooth grain/texture field plus occasional dense inclusions."""
        r = self.rig
        h, w = r.height, r.width
        cell = max(1, r.texture_cell_px)
        coarse = rng.standard_normal((h // cell + 2, w // cell + 2)).astype(np.float32)
        field = ndimage.zoom(coarse, cell, order=1, prefilter=False)[:h, :w]
        dt_cm = (plate.thickness_mm / 10.0) * r.texture_rel * field
        k = int(rng.poisson(r.inclusion_rate))
        for _ in range(k):
            cy, cx = rng.integers(0, h), rng.integers(0, w)
            rad = float(rng.uniform(1.0, 3.0))
            y0, y1 = max(0, int(cy - rad - 1)), min(h, int(cy + rad + 2))
            x0, x1 = max(0, int(cx - rad - 1)), min(w, int(cx + rad + 2))
            yy, xx = np.ogrid[y0:y1, x0:x1]
            disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= rad**2
            # Fe/Mn-rich intermetallic: extra attenuation worth 5-20 % of a 1 mm plate
            dt_cm[y0:y1, x0:x1] += disk * np.float32(rng.uniform(0.005, 0.02))
        return dt_cm, k

    def _channel_image(
        self, ch: Channel, plate: Plate | None, dt_cm: np.ndarray, gain_scale: float, rng: np.random.Generator
    ) -> np.ndarray:
        r = self.rig
        e = ch.energies
        if plate is None:  # the wedge alone
            mu_p, t_mm = np.zeros_like(e), 0.0
        else:
            mu_p, t_mm = linear_attenuation(plate.fractions(), plate.density_g_cm3, e), plate.thickness_mm  # [E] 1/cm
        n = ch.n_behind_wedge * np.exp(-mu_p * t_mm / 10.0)[None, :]  # [W, E] photons
        m = n @ e  # keV per pixel
        v = n @ (e * e)
        mu_eff = (n @ (e * mu_p)) / np.maximum(m, 1e-30)  # energy-weighted
        quanta = (m * m / np.maximum(v, 1e-30)).astype(np.float32)  # effective quanta
        kev_per_quantum = (v / np.maximum(m, 1e-30)).astype(np.float32)
        expected = quanta[None, :] * np.exp(-mu_eff.astype(np.float32)[None, :] * dt_cm) * self.heel_profile
        if r.scatter_per_attenuation > 0:
            scatter = scatter_quanta(expected.mean(0), r, ch.quanta_open)
            expected = (1 - r.scatter_fraction) * expected + scatter[None, :]
        elif r.scatter_fraction > 0:
            # Scatter is smooth: a wide blur of the column profile, spread evenly along the plate.
            prof = ndimage.gaussian_filter1d(expected.mean(0), r.scatter_sigma_px, mode="nearest")
            expected = (1 - r.scatter_fraction) * expected + r.scatter_fraction * prof[None, :]
        kev = rng.poisson(expected).astype(np.float32) * kev_per_quantum[None, :]
        if r.open_beam_rows:  # beside the plate and the wedge: the open beam, as in a flat frame
            k = min(r.open_beam_rows, r.height - 1)
            kev[:k] = rng.poisson(ch.quanta_open * self.heel_profile[:k] * np.ones((1, r.width))) * (
                ch.mean_kev_open / ch.quanta_open
            )
        if r.psf_sigma_px > 0:
            kev = ndimage.gaussian_filter(kev, r.psf_sigma_px, truncate=3.0)
        kev = add_glare(kev, r, (0, 1))
        adu = r.dark_offset_adu + (ch.gain * gain_scale) * self.prnu * kev
        if r.dark_column_adu is not None:
            adu = adu + self.dark_columns
        adu += r.read_noise_adu * rng.standard_normal(adu.shape, dtype=np.float32)
        return self._quantise(adu)

    def _quantise(self, adu: np.ndarray) -> np.ndarray:
        img = np.clip(np.rint(adu), 0, MAX_ADU).astype(np.uint16)
        img.reshape(-1)[self.dead_idx] = 0
        img.reshape(-1)[self.hot_idx] = MAX_ADU
        return img

    # -- public API ----------------------------------------------------------------------------------
    def dark_flat_frames(self, rng: np.random.Generator, gain_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """A dark frame (no beam) and a flat frame (open beam: no wedge, no plate), uint16 [C, H, W]: a session's
        levels come from them."""
        r = self.rig
        darks, flats = [], []
        for ch in self.channels:
            dark = r.dark_offset_adu + r.read_noise_adu * rng.standard_normal((r.height, r.width))
            if r.dark_column_adu is not None:
                dark = dark + self.dark_columns
            darks.append(self._quantise(dark))
            q = ch.mean_kev_open**2 / float((ch.n_open * ch.energies**2).sum())
            kev = rng.poisson(q * self.heel_profile * np.ones((1, r.width))) * (ch.mean_kev_open / q)
            flat = r.dark_offset_adu + ch.gain * gain_scale * self.prnu * kev
            flat += r.read_noise_adu * rng.standard_normal(flat.shape)
            if r.dark_column_adu is not None:
                flat = flat + self.dark_columns
            flats.append(self._quantise(flat))
        return np.stack(darks), np.stack(flats)

    def session_gain(self, rng: np.random.Generator) -> float:
        """Detector gain drifts a little between sessions; each session takes its own flat/dark."""
        return float(1.0 + self.rig.gain_drift * rng.standard_normal())

    def capture(
        self,
        plate: Plate,
        rng: np.random.Generator,
        dark_adu: list[float] | None = None,
        flat_adu: list[float] | None = None,
        gain_scale: float = 1.0,
    ) -> SimulatedCapture:
        """One capture of ``plate``. Its dark and flat levels default to the rig's noise-free levels."""
        dt_cm, k = self._thickness_field(plate, rng)
        image = np.stack([self._channel_image(ch, plate, dt_cm, gain_scale, rng) for ch in self.channels])
        if dark_adu is None:
            dark_adu = [self.rig.dark_offset_adu] * len(self.channels)
        if flat_adu is None:
            flat_adu = [
                self.rig.dark_offset_adu + (self.rig.flat_target_adu - self.rig.dark_offset_adu) * gain_scale
                for _ in self.channels
            ]
        a0 = [
            float(
                neg_log_transmission_of(
                    plate.fractions(),
                    plate.density_g_cm3,
                    plate.thickness_mm,
                    0.0,
                    ch.spectrum,
                    self.rig.wedge_material,
                    self.rig.csi_mm,
                )
            )
            for ch in self.channels
        ]
        return SimulatedCapture(image, list(dark_adu), list(flat_adu), a0, k)

    def wedge_reference(self, rng: np.random.Generator, gain_scale: float = 1.0) -> np.ndarray:
        """The wedge alone, no plate (a frame a lab can take each session), uint16 [C, H, W]."""
        flat = np.zeros((self.rig.height, self.rig.width), np.float32)
        return np.stack([self._channel_image(ch, None, flat, gain_scale, rng) for ch in self.channels])

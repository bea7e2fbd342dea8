"""Calibrating the nominal simulator to one rig from reference captures a lab can make.

Two stages (docs/rig_calibration.md):

1. **The detector, measured** from each session's dark and flat frames (``measure_detector``): dark level,
   read noise, fixed column offsets of the dark frame, flat level, the panel's flat-field gain per column
   (flat/dark correction with *levels* leaves it in every -ln T), pixel gain non-uniformity, the heel's row
   slope, and the effective number of quanta per pixel in the open beam (from the noise of block means of the
   flats, which sets ``dose``).
2. **The beam, scatter and blur, fitted** (``fit_rig``) by least squares to the wedge profiles of the wedge
   alone and of plates of a known alloy at known thicknesses: effective tube voltage and extra filtration,
   scatter (a constant fraction and an attenuation-driven source, their width), the PSF and its glare tail
   (and the CsI thickness, on request). Each plate's areal density is a nuisance parameter with a prior
   (its thickness tolerance and the spread its alloy's composition range gives), so a plate whose iron
   content sits at the edge of its standard does not pull the beam.

The observation is what a user computes: per column -ln of the mean over good rows of
(S - dark level) / (flat level - dark level), averaged over the columns of each bin (``capture_profile``).
The fit compares it with ``ProfileModel`` (the nominal simulator's noise-free profile), corrected for the
difference between the mean of -ln and -ln of the mean that the panel's gain pattern makes (measured from
the flats). Residuals are weighted by the profile's standard error plus a floor for the model's own
precision; parameter uncertainties come from the Jacobian, inflated by the Birge ratio when the model does
not fit to within the noise. The fit is judged against one capture's noise (``misfit_rms``: the rms over
all bins and references of (model - measured mean) / single-capture sd) and on references held out of it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Optional, Sequence

import numpy as np
from scipy import ndimage, optimize

from alloynet.physics.alloys import get_alloy, sample_plate
from alloynet.physics.observer import noise_cov
from alloynet.physics.profile import ProfileModel
from alloynet.physics.rig_profile import FIT_PARAMETERS, Covariance, RigProfile
from alloynet.physics.simulator import UINT16_MAX, Channel, RigConfig
from alloynet.physics.transmission import neg_log_transmission_of

DEFAULT_FIT = ("kvp_offset_rel", "extra_filtration_mm_al", "scatter_fraction", "scatter_sigma_px",
               "scatter_per_attenuation", "psf_sigma_px", "glare_fraction", "glare_length_px")
DETECTOR_FIELDS = ("dark_offset_adu", "read_noise_adu", "dark_column_adu", "flat_target_adu", "column_gain",
                   "heel", "gain_prnu", "dose")
MODEL_FLOOR_ABS = 5e-4    # the profile model's own precision, in -ln T (about the size of what it neglects)
MODEL_FLOOR_REL = 5e-4
# Refusal thresholds (docs/rig_calibration.md). The fitted references' mean profiles may miss the model by up to
# 1.5 single-capture sd (rms over bins): the fit has to be good to well inside what one capture can see. A
# held-out capture may show chi2/dof up to 2 against its own noise (rms 1.41 sd per bin; 1 is pure noise):
# its sd comes from a handful of repeats, so this leaves room for that estimate's own scatter (the second rig,
# a different code base, gives 1.1-1.7 at 64 px with 6 captures per plate) and refuses a model that misses by
# a capture's noise or more.
MAX_MISFIT_RMS = 1.5
MAX_HOLDOUT_CHI2 = 2.0
T_FLOOR = 1e-12


class CalibrationError(ValueError):
    """The references cannot calibrate the rig (missing, inconsistent, or the fit is poor); the message says why."""


# ---- observations -----------------------------------------------------------------------------------------
def good_pixels(image: np.ndarray) -> np.ndarray:
    """Dead (0) and saturated/hot (65535) pixels left out."""
    return (image > 0) & (image < UINT16_MAX)


def _bin(per_column: np.ndarray, bins: int) -> np.ndarray:
    w = per_column.shape[-1]
    edges = np.linspace(0, w, min(bins, w) + 1).astype(int)
    return np.add.reduceat(per_column, edges[:-1], axis=-1) / np.diff(edges)


def capture_profile(image: np.ndarray, dark_adu: Sequence[float], flat_adu: Sequence[float], bins: int = 32
                    ) -> np.ndarray:
    """Raw capture uint16 [C, H, W] with its calibration levels -> per channel, -ln of the mean over good rows
    of T per column, averaged over each bin's columns; channels concatenated [C * bins]."""
    img = np.asarray(image, float)
    out = []
    for c in range(img.shape[0]):
        good = good_pixels(image[c])
        t = np.where(good, (img[c] - dark_adu[c]) / (flat_adu[c] - dark_adu[c]), 0.0).sum(0) / np.maximum(good.sum(0), 1)
        out.append(_bin(-np.log(np.maximum(t, T_FLOOR)), bins))
    return np.concatenate(out)


@dataclass
class Reference:
    """Repeated captures of one reference: the wedge alone (``kind="wedge"``) or one plate of a known alloy."""
    name: str
    kind: Literal["wedge", "plate"]
    wedge_mm: float
    profiles: np.ndarray                      # [n captures, C * bins]
    alloy: Optional[str] = None
    thickness_mm: float = 0.0                 # as measured (the sidecar's truth)
    nominal_thickness_mm: float = 0.0
    plate_id: str = ""
    capture_ids: list[str] = field(default_factory=list)

    @property
    def mean(self) -> np.ndarray:
        return self.profiles.mean(0)

    @property
    def group(self) -> tuple:
        """References whose single-capture noise is alike (pooled to estimate it)."""
        return self.kind, float(self.wedge_mm), round(float(self.nominal_thickness_mm), 3)


# ---- stage 1: the detector --------------------------------------------------------------------------------
@dataclass
class DetectorMeasurement:
    values: dict                  # RigConfig fields (dose is set once the beam is known: see quanta_open)
    uncertainty: dict
    quanta_open: Optional[float]  # effective quanta per pixel in the open beam, from the flats' noise
    quanta_open_sd: Optional[float]
    jensen: np.ndarray            # [C, W]: -ln(row mean T) - row mean(-ln T) of the open beam (<= 0)
    sessions: int
    notes: list[str] = field(default_factory=list)


def measure_detector(darks: np.ndarray, flats: np.ndarray, block: int = 8) -> DetectorMeasurement:
    """Dark and flat frames of S sessions, uint16 [S, C, H, W] -> the panel's levels, patterns and noise."""
    darks, flats = np.asarray(darks), np.asarray(flats)
    if darks.ndim != 4 or darks.shape != flats.shape:
        raise CalibrationError(f"dark and flat frames must be [sessions, C, H, W] of one shape, got {darks.shape} "
                               f"and {flats.shape}")
    s_n, c_n, h, w = darks.shape
    good = good_pixels(darks).all((0, 1)) & good_pixels(flats).all((0, 1))          # [H, W]
    rows = np.maximum(good.sum(0), 1)
    d = np.array([[darks[s, c][good].mean() for c in range(c_n)] for s in range(s_n)])   # [S, C]
    f = np.array([[flats[s, c][good].mean() for c in range(c_n)] for s in range(s_n)])
    if np.any(f - d < 10):
        raise CalibrationError("a flat frame is not brighter than its dark frame: check which frame is which")
    notes: list[str] = []
    dk = darks.astype(float)
    col = np.where(good, dk, 0.0).sum(2) / rows - d[..., None]                          # [S, C, W]
    dark_columns = col.mean((0, 1))
    resid = np.where(good, dk - (col + d[..., None])[:, :, None, :], np.nan)
    read_var = float(np.nanvar(resid)) * h / max(h - 1, 1)
    read_noise = float(np.sqrt(max(read_var - 1 / 12, 0.0)))
    t = (flats.astype(float) - d[..., None, None]) / (f - d)[..., None, None]           # [S, C, H, W]
    neg_log = -np.log(np.maximum(t, 1e-6))
    log_pattern = (np.where(good, neg_log, 0.0).sum(2) / rows).mean(0)                  # [C, W]
    user_pattern = (-np.log(np.maximum(np.where(good, t, 0.0).sum(2) / rows, 1e-6))).mean(0)
    row_profile = np.where(good, t, 0.0).sum((0, 1, 3)) / (good.sum(1) * s_n * c_n)     # [H]
    y = np.linspace(-1.0, 1.0, h)
    (slope, level), fit_cov = np.polyfit(y, row_profile, 1, cov=True)
    heel, heel_sd = float(slope / level), float(np.sqrt(fit_cov[0, 0]) / level)
    values = {"dark_offset_adu": float(d.mean()), "read_noise_adu": read_noise,
              "dark_column_adu": dark_columns.round(4).tolist(), "flat_target_adu": float(f.mean()),
              "column_gain": np.exp(-log_pattern.mean(0)).round(6).tolist(), "heel": heel}
    unc = {"dark_offset_adu": float(d.std() / np.sqrt(d.size)) if d.size > 1 else read_noise / np.sqrt(good.sum()),
           "flat_target_adu": float(f.std() / np.sqrt(f.size)) if f.size > 1 else float("nan"), "heel": heel_sd}
    quanta = quanta_sd = None
    if s_n >= 2:
        # fixed patterns out (the mean over sessions per pixel), then the noise of block means: a block much wider
        # than the PSF keeps the photon noise the light spread moves between pixels
        mean_t = t.mean(0)
        dev = np.where(good, t - mean_t, 0.0) * np.sqrt(s_n / (s_n - 1))                # unbiased per-session noise
        hb, wb = h // block, w // block
        cnt = good[:hb * block, :wb * block].reshape(hb, block, wb, block).sum((1, 3))
        sums = dev[..., :hb * block, :wb * block].reshape(s_n, c_n, hb, block, wb, block).sum((3, 5))
        ok = cnt >= block * block // 2
        per_block = (sums[..., ok] ** 2 / cnt[ok]).reshape(-1)                            # var x n: per-pixel units
        span = float((f - d).mean())
        rel = float(per_block.mean()) - (read_noise**2 + 1 / 12) / span**2
        if rel > 0:
            quanta = 1.0 / rel
            quanta_sd = quanta * np.sqrt(2.0 / max(per_block.size - 1, 1))
            pixel_noise = float((np.where(good, dev, 0.0) ** 2).sum() / (good.sum() * s_n * c_n))
            smooth = ndimage.uniform_filter(mean_t.mean(0), 5, mode="reflect")
            fixed = float(np.var((mean_t.mean(0) / smooth - 1)[good])) - pixel_noise / (s_n * c_n)
            values["gain_prnu"] = float(np.sqrt(max(fixed, 0.0)))
        else:
            notes.append("the flats' noise is below read noise: no dose estimate; the nominal dose is kept")
    else:
        notes.append("one session of flat frames: its noise and the panel's fixed pattern cannot be told apart, so "
                     "the nominal dose and PRNU are kept (take dark/flat frames in two sessions or more)")
    return DetectorMeasurement(values, unc, quanta, quanta_sd, user_pattern - log_pattern, s_n, notes)


# ---- stage 2: the beam, scatter and blur ------------------------------------------------------------------
def _composition_spread(alloy: str, thickness_mm: float, rig: RigConfig, n: int = 200) -> float:
    """Relative sd of a plate's -ln T (plate-only strip) over its alloy's composition range (seeded)."""
    spec = Channel(rig, rig.kvp[0]).spectrum
    rng = np.random.default_rng(0xC0)
    vals = [neg_log_transmission_of(p.fractions(), p.density_g_cm3, thickness_mm, 0.0, spec, rig.wedge_material,
                                    rig.csi_mm)
            for p in (sample_plate(alloy, thickness_mm, rng, "c", thickness_tolerance=0.0) for _ in range(n))]
    return float(np.std(vals) / np.mean(vals))


@dataclass
class Calibration:
    """The fitted rig and how well it fits."""
    rig: RigConfig
    names: list[str]
    values: dict
    uncertainty: dict
    covariance: np.ndarray
    misfit_rms: float              # rms of (model - mean) / single-capture sd, every reference and bin
    max_misfit: float
    chi2: float
    dof: int
    birge: float                   # sqrt(chi2 / dof): > 1 when the model cannot match to within the noise
    residuals: dict                # reference name -> {"z": [...], "rms": r, "max": m}
    plate_scales: dict             # reference name -> fitted areal density / stated
    at_bounds: list[str]
    detector: DetectorMeasurement
    bins: int
    predictions: dict = field(default_factory=dict)    # reference name -> model profile
    sigma: dict = field(default_factory=dict)          # reference name -> single-capture sd per bin
    holdout: Optional[dict] = None

    def profile(self, extra: Optional[dict] = None) -> RigProfile:
        calibrated = [k for k in DETECTOR_FIELDS if k in self.detector.values or k == "dose"] + list(self.names)
        unc = {**{k: v for k, v in self.detector.uncertainty.items() if np.isfinite(v)}, **self.uncertainty}
        fit = {"misfit_rms": self.misfit_rms, "max_misfit": self.max_misfit, "chi2": self.chi2, "dof": self.dof,
               "birge_ratio": self.birge, "bins": self.bins,
               "references": {k: {"rms": v["rms"], "max": v["max"]} for k, v in self.residuals.items()},
               "plate_scales": self.plate_scales, "at_bounds": self.at_bounds, "holdout": self.holdout,
               "detector_sessions": self.detector.sessions, "notes": self.detector.notes, **(extra or {})}
        return RigProfile(rig=self.rig, calibrated=calibrated, uncertainty=_round(unc),
                          covariance=Covariance(names=list(self.names), matrix=self.covariance.tolist()),
                          fit=_round(fit))


def _round(x):
    if isinstance(x, dict):
        return {k: _round(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_round(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(f"{float(x):.6g}")
    if isinstance(x, np.integer):
        return int(x)
    return x


def model_sd(rig: RigConfig, r: Reference, bins: int) -> np.ndarray:
    """Single-capture sd per bin from the (calibrated) rig's noise model: detector noise and plate texture."""
    a = get_alloy(r.alloy) if r.alloy else None
    pm = ProfileModel(rig.model_copy(update={"wedge_mm": r.wedge_mm}), bins)
    fr, rho = (a.nominal_fractions(), a.density_g_cm3) if a else ({"Al": 1.0}, 2.699)
    return np.sqrt(np.diag(noise_cov(pm, fr, rho, max(r.thickness_mm, 1e-3))))


class _Forward:
    """Model profiles of every reference for parameters theta and plate areal-density factors."""

    def __init__(self, base: RigConfig, refs: Sequence[Reference], names: Sequence[str], bins: int,
                 jensen: np.ndarray):
        self.base, self.refs, self.names, self.bins = base, list(refs), list(names), bins
        self.correction = np.concatenate([_bin(j, bins) for j in jensen])       # user profile - model profile
        self.wedges = sorted({r.wedge_mm for r in self.refs})

    def rig(self, theta: Sequence[float], wedge_mm: Optional[float] = None) -> RigConfig:
        upd = {k: float(v) for k, v in zip(self.names, theta)}
        if wedge_mm is not None:
            upd["wedge_mm"] = float(wedge_mm)
        return self.base.model_copy(update=upd)

    def __call__(self, theta: Sequence[float], scales: np.ndarray) -> list[np.ndarray]:
        out: list[Optional[np.ndarray]] = [None] * len(self.refs)
        for w in self.wedges:
            pm = ProfileModel(self.rig(theta, w), self.bins)
            idx = [i for i, r in enumerate(self.refs) if r.wedge_mm == w]
            for i in idx:
                if self.refs[i].kind == "wedge":
                    out[i] = pm.profiles({"Al": 1.0}, 2.699, [0.0])[0]
            by_alloy: dict[str, list[int]] = {}
            for i in idx:
                if self.refs[i].kind == "plate":
                    by_alloy.setdefault(self.refs[i].alloy, []).append(i)
            for alloy, members in by_alloy.items():
                a = get_alloy(alloy)
                ts = [self.refs[i].thickness_mm * scales[i] for i in members]
                for i, p in zip(members, pm.profiles(a.nominal_fractions(), a.density_g_cm3, ts)):
                    out[i] = p
        return [o + self.correction for o in out]


def _single_sd(refs: Sequence[Reference], fallback: Callable[[Reference], np.ndarray]) -> list[np.ndarray]:
    """Single-capture sd per bin: pooled over references of one group (kind, wedge, nominal thickness) from
    their repeated captures; the model's noise where a group has fewer than 4 degrees of freedom."""
    groups: dict[tuple, list[Reference]] = {}
    for r in refs:
        groups.setdefault(r.group, []).append(r)
    sd = {}
    for g, members in groups.items():
        dof = sum(len(r.profiles) - 1 for r in members)
        if dof >= 4:
            ss = sum(((r.profiles - r.mean) ** 2).sum(0) for r in members)
            sd[g] = np.sqrt(ss / dof)
        else:
            sd[g] = None
    return [sd[r.group] if sd[r.group] is not None else fallback(r) for r in refs]


def fit_rig(nominal: RigConfig, refs: Sequence[Reference], detector: DetectorMeasurement,
            params: Sequence[str] = DEFAULT_FIT, bins: int = 32, max_nfev: int = 80,
            log: Optional[Callable[[str], None]] = None) -> Calibration:
    """Fit ``params`` (RigConfig fields, see ``FIT_PARAMETERS``) of the nominal rig, with the detector as
    measured, to the references' profiles. Raises ``CalibrationError`` when the references cannot constrain
    the fit (no wedge-alone or plate references, unknown parameter); judging the fit is ``check_fit``'s job."""
    for k in params:
        if k not in FIT_PARAMETERS:
            raise CalibrationError(f"cannot fit {k!r}; fittable: {', '.join(FIT_PARAMETERS)}")
    refs = list(refs)
    if not refs:
        raise CalibrationError("no reference captures: need the wedge alone and/or plates of a known alloy")
    if not any(r.kind == "wedge" for r in refs):
        raise CalibrationError("no captures of the wedge alone (calibration/<session>/wedge-<mm>mm frames): the "
                               "beam cannot be told from the plates' composition without them")
    det = {k: v for k, v in detector.values.items() if k != "dose"}
    base = nominal.model_copy(update={**det})
    base = RigConfig.model_validate(base.model_dump())  # validate per-column lengths against the width
    names = list(params)
    start = np.array([FIT_PARAMETERS[k].start if FIT_PARAMETERS[k].start is not None else getattr(base, k)
                      for k in names], float)
    scale = np.array([FIT_PARAMETERS[k].scale for k in names])
    lo = (np.array([FIT_PARAMETERS[k].lo for k in names]) - start) / scale
    hi = (np.array([FIT_PARAMETERS[k].hi for k in names]) - start) / scale
    forward = _Forward(base, refs, names, bins, detector.jensen)

    sd = _single_sd(refs, lambda r: model_sd(base, r, bins))
    plates = [i for i, r in enumerate(refs) if r.kind == "plate"]
    prior_sd = {}
    for i in plates:
        key = (refs[i].alloy, refs[i].nominal_thickness_mm)
        if key not in prior_sd:
            prior_sd[key] = float(np.hypot(0.0075, _composition_spread(refs[i].alloy, max(refs[i].thickness_mm, 0.1),
                                                                        base)))
    p_sd = np.array([prior_sd[(refs[i].alloy, refs[i].nominal_thickness_mm)] for i in plates])
    means = [r.mean for r in refs]
    weights = [1.0 / np.sqrt(s**2 / len(r.profiles) + (MODEL_FLOOR_ABS + MODEL_FLOOR_REL * np.abs(m)) ** 2)
               for r, s, m in zip(refs, sd, means)]
    n_t = len(names)

    def unpack(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scales = np.ones(len(refs))
        scales[plates] = 1.0 + p_sd * u[n_t:]
        return start + scale * u[:n_t], scales

    def residuals_of(models: list[np.ndarray], u: np.ndarray) -> np.ndarray:
        data = [(m - mu) * wt for m, mu, wt in zip(models, means, weights)]
        return np.concatenate(data + [u[n_t:]])

    def fun(u: np.ndarray) -> np.ndarray:
        theta, scales = unpack(u)
        return residuals_of(forward(theta, scales), u)

    step = 0.02

    def jac(u: np.ndarray) -> np.ndarray:
        theta, scales = unpack(u)
        r0 = residuals_of(forward(theta, scales), u)
        j = np.zeros((len(r0), len(u)))
        for k in range(n_t):
            du = np.zeros(len(u))
            du[k] = step if u[k] + step <= hi[k] else -step
            j[:, k] = (fun(u + du) - r0) / du[k]
        if plates:  # each plate's profile depends on its own factor only: one evaluation gives every column
            du = np.zeros(len(u))
            du[n_t:] = step
            t2, s2 = unpack(u + du)
            r1 = residuals_of(forward(t2, s2), u + du)
            offsets = np.cumsum([0] + [len(m) for m in means])
            for n, i in enumerate(plates):
                sl = slice(offsets[i], offsets[i + 1])
                j[sl, n_t + n] = (r1[sl] - r0[sl]) / step
                j[offsets[-1] + n, n_t + n] = 1.0
        return j

    u0 = np.zeros(n_t + len(plates))
    lo_all = np.concatenate([lo, np.full(len(plates), -10.0)])
    hi_all = np.concatenate([hi, np.full(len(plates), 10.0)])
    sol = optimize.least_squares(fun, u0, jac=jac, bounds=(lo_all, hi_all), max_nfev=max_nfev, x_scale=1.0)
    theta, scales = unpack(sol.x)
    j = jac(sol.x)
    chi2 = float((sol.fun**2).sum())
    dof = max(len(sol.fun) - len(sol.x), 1)
    birge = float(np.sqrt(chi2 / dof))
    cov_u = np.linalg.pinv(j.T @ j) * max(1.0, birge**2)
    cov = cov_u[:n_t, :n_t] * np.outer(scale, scale)
    models = forward(theta, scales)
    residuals, preds, sigmas, zs = {}, {}, {}, []
    for r, m, s in zip(refs, models, sd):
        z = (m - r.mean) / s
        zs.append(z)
        residuals[r.name] = {"z": z.tolist(), "rms": float(np.sqrt((z**2).mean())), "max": float(np.abs(z).max())}
        preds[r.name], sigmas[r.name] = m, s
    allz = np.concatenate(zs)
    at_bounds = [k for k, u, a, b in zip(names, sol.x[:n_t], lo, hi) if min(u - a, b - u) < 1e-3]
    rig = forward.rig(theta)
    if detector.quanta_open is not None:
        per_dose = Channel(rig.model_copy(update={"dose": 1.0}), rig.kvp[0]).quanta_open
        rig = rig.model_copy(update={"dose": float(detector.quanta_open / per_dose)})
        detector.uncertainty["dose"] = float(detector.quanta_open_sd / per_dose)
    if log:
        log(f"fit: {sol.nfev} evaluations, chi2/dof {chi2 / dof:.2f}, misfit rms {np.sqrt((allz**2).mean()):.2f} "
            f"(single-capture sd)")
    return Calibration(rig=rig, names=names, values={k: float(v) for k, v in zip(names, theta)},
                       uncertainty={k: float(np.sqrt(cov[i, i])) for i, k in enumerate(names)}, covariance=cov,
                       misfit_rms=float(np.sqrt((allz**2).mean())), max_misfit=float(np.abs(allz).max()), chi2=chi2,
                       dof=dof, birge=birge, residuals=residuals,
                       plate_scales={refs[i].name: float(scales[i]) for i in plates}, at_bounds=at_bounds,
                       detector=detector, bins=bins, predictions=preds, sigma=sigmas)


def check_references(cal: Calibration, refs: Sequence[Reference]) -> dict:
    """How the calibrated rig predicts references it was not fitted to: per capture, chi2 per degree of freedom
    against the single-capture noise (a plate's areal density fitted first, one degree of freedom), and per
    reference the mean profile's residual in units of its standard error."""
    return predict_references(cal.rig, refs, cal.bins, cal.detector.jensen)


def predict_references(rig: RigConfig, refs: Sequence[Reference], bins: int = 32,
                       jensen: Optional[np.ndarray] = None) -> dict:
    """``check_references`` for any rig: e.g. the nominal, uncalibrated one (``jensen`` None: no measured
    flat-field correction), to see what the calibration gained."""
    if not refs:
        return {}
    jensen = np.zeros((rig.channels, rig.width)) if jensen is None else jensen
    forward = _Forward(rig, refs, [], bins, jensen)
    sds = _single_sd(refs, lambda r: model_sd(rig, r, bins))
    per_capture, per_ref = [], {}
    for i, (r, sd) in enumerate(zip(refs, sds)):

        def model(scale: float) -> np.ndarray:
            s = np.ones(len(refs))
            s[i] = scale
            return forward([], s)[i]

        scale = 1.0
        if r.kind == "plate":
            scale = float(optimize.minimize_scalar(lambda x: (((model(x) - r.mean) / sd) ** 2).sum(),
                                                   bounds=(0.9, 1.1), method="bounded", options={"xatol": 1e-5}).x)
        m = model(scale)
        dof = m.size - (1 if r.kind == "plate" else 0)
        chi = [float((((p - m) / sd) ** 2).sum() / dof) for p in r.profiles]
        per_capture += chi
        se = sd / np.sqrt(len(r.profiles))
        per_ref[r.name] = {"captures": len(r.profiles), "chi2_per_dof": float(np.mean(chi)),
                           "mean_z_rms": float(np.sqrt((((m - r.mean) / se) ** 2).mean())),
                           "misfit_rms": float(np.sqrt((((m - r.mean) / sd) ** 2).mean())), "plate_scale": scale}
    return {"references": per_ref, "captures": len(per_capture), "chi2_per_dof": float(np.mean(per_capture)),
            "chi2_per_dof_max": float(np.max(per_capture))}


def check_fit(cal: Calibration, max_misfit: float = MAX_MISFIT_RMS, max_holdout_chi2: float = MAX_HOLDOUT_CHI2) -> None:
    """Refuse a poor calibration with a message that says where it misses, and what to try."""
    problems = []
    if cal.misfit_rms > max_misfit:
        worst = sorted(cal.residuals.items(), key=lambda kv: -kv[1]["rms"])[:3]
        where = "; ".join(f"{k}: rms {v['rms']:.2f}, worst bin {int(np.argmax(np.abs(v['z'])))} "
                          f"({v['max']:.1f} sd)" for k, v in worst)
        problems.append(f"the fitted simulator misses the references by {cal.misfit_rms:.2f} single-capture sd (rms; "
                        f"the limit is {max_misfit:g}): {where}")
    if cal.holdout and cal.holdout.get("chi2_per_dof", 0) > max_holdout_chi2:
        problems.append(f"held-out references: chi2/dof {cal.holdout['chi2_per_dof']:.2f} per capture (limit "
                        f"{max_holdout_chi2:g})")
    if problems:
        hint = ("check the nominal settings (kVp, filtration, wedge size and its plate-only strip, the wedge "
                "material), that the reference alloy and thicknesses are right, and that each capture's dark/flat "
                "frames are its own session's; or fit more parameters (--fit)")
        if cal.at_bounds:
            hint = f"parameters at their limits: {', '.join(cal.at_bounds)}; " + hint
        raise CalibrationError("poor rig calibration: " + "; ".join(problems) + ". " + hint)


def plot_fit(cal: Calibration, refs: Sequence[Reference], path, holdout: Sequence[Reference] = ()) -> None:
    """Measured and fitted profiles of each reference group (top) and residuals in single-capture sd (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[tuple, list[Reference]] = {}
    for r in list(refs) + list(holdout):
        groups.setdefault((r.kind, r.wedge_mm, r.nominal_thickness_mm, r in holdout), []).append(r)
    keys = sorted(groups, key=lambda k: (k[1], k[0] != "wedge", k[2]))
    fig, axes = plt.subplots(2, len(keys), figsize=(3.2 * len(keys), 5.5), squeeze=False, sharex=True)
    forward = _Forward(cal.rig, list(holdout), [], cal.bins, cal.detector.jensen) if holdout else None
    held = forward([], np.array([(cal.holdout or {}).get("references", {}).get(r.name, {}).get("plate_scale", 1.0)
                                 for r in holdout])) if forward else []
    for col, key in enumerate(keys):
        top, bottom = axes[0, col], axes[1, col]
        for r in groups[key]:
            model = cal.predictions.get(r.name)
            if model is None:
                model = held[list(holdout).index(r)]
            sd = cal.sigma[r.name] if r.name in cal.sigma else model_sd(cal.rig, r, cal.bins)
            x = np.arange(len(r.mean))
            top.plot(x, r.mean, ".", ms=3, color="k")
            top.plot(x, model, "-", lw=1, color="C1")
            bottom.plot(x, (model - r.mean) / sd, "-", lw=0.8)
        kind, wedge, t, is_held = key
        top.set_title(("wedge alone" if kind == "wedge" else f"plate {t:g} mm") + f", {wedge:g} mm wedge"
                      + (" (held out)" if is_held else ""), fontsize=8)
        bottom.axhline(0, color="grey", lw=0.5)
        bottom.set_xlabel("profile bin")
    axes[0, 0].set_ylabel("-ln T (dots: measured, line: calibrated)")
    axes[1, 0].set_ylabel("(model - measured) / single-capture sd")
    fig.suptitle(f"rig calibration: misfit rms {cal.misfit_rms:.2f} sd, chi2/dof {cal.chi2 / cal.dof:.2f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

"""Fitting the nominal simulator to one rig from reference captures a lab can make (docs/rig_fit.md).

With the detector measured (``alloynet.physics.detector``), the beam, scatter and blur are fitted (``fit_rig``)
by least squares to the wedge profiles of the wedge alone and of plates of a known alloy at known thicknesses:
effective tube voltage and extra filtration, scatter (a constant fraction and an attenuation-driven source, their
width), the PSF and its glare tail (and the CsI thickness, on request). Each plate's areal density is a nuisance
parameter with a prior (its thickness tolerance and the spread its alloy's composition range gives), so a plate
whose iron content sits at the edge of its standard does not pull the beam.

A rig that takes several exposures per capture (one page per kVp) is fitted on every channel at once: each
channel's profile comes from its own spectrum, normalised by its own dark and flat levels, while what is
physically one thing is one parameter (the tube's voltage error as a fraction of the set kVp, the filtration,
scatter, blur, each plate's areal density). The dose comes from the flats' noise pooled over the channels
(``quanta_per_dose``).

The fit compares each reference's observation (``detector.capture_profile``) with ``ProfileModel`` (the nominal
simulator's noise-free profile), corrected for the difference between the mean of -ln and -ln of the mean that
the panel's gain pattern makes (measured from the flats). Residuals are weighted by the profile's standard error
plus a floor for the model's own precision; parameter uncertainties come from the Jacobian, inflated by the Birge
ratio when the model does not fit to within the noise. The fit is judged against one capture's noise
(``misfit_rms``: the rms over all bins and references of (model - measured mean) / single-capture sd) and on
references held out of it (``check_fit``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy import optimize

from alloynet.physics.alloys import get_alloy, sample_plate
from alloynet.physics.detector import DetectorMeasurement, RigFitError
from alloynet.physics.measure import bin_columns
from alloynet.physics.observer import noise_cov
from alloynet.physics.profile import ProfileModel
from alloynet.physics.rig_profile import FIT_PARAMETERS, Covariance, RigProfile
from alloynet.physics.simulator import Channel, RigConfig
from alloynet.physics.transmission import neg_log_transmission_of

DEFAULT_FIT = (
    "kvp_offset_rel",
    "extra_filtration_mm_al",
    "scatter_fraction",
    "scatter_sigma_px",
    "scatter_per_attenuation",
    "psf_sigma_px",
    "glare_fraction",
    "glare_length_px",
)
DETECTOR_FIELDS = (
    "dark_offset_adu",
    "read_noise_adu",
    "dark_column_adu",
    "flat_target_adu",
    "column_gain",
    "heel",
    "gain_prnu",
    "dose",
)
MODEL_FLOOR_ABS = 5e-4  # the profile model's own precision, in -ln T (about the size of what it neglects)
MODEL_FLOOR_REL = 5e-4
# Refusal thresholds (docs/rig_fit.md). The fitted references' mean profiles may miss the model by up to
# 1.5 single-capture sd (rms over bins): the fit has to be good to well inside what one capture can see. A
# held-out capture may show chi2/dof up to 2 against its own noise (rms 1.41 sd per bin; 1 is pure noise):
# its sd comes from a handful of repeats, so this leaves room for that estimate's own scatter (the second rig,
# a different code base, gives 1.1-1.7 at 64 px with 6 captures per plate) and refuses a model that misses by
# a capture's noise or more.
MAX_MISFIT_RMS = 1.5
MAX_HOLDOUT_CHI2 = 2.0
MIN_ALLOYS_WITHOUT_WEDGE = 3


@dataclass
class Reference:
    """Repeated captures of one reference: the wedge alone (``kind="wedge"``) or one plate of a known alloy."""

    name: str
    kind: Literal["wedge", "plate"]
    wedge_mm: float
    profiles: np.ndarray  # [n captures, C * bins]
    alloy: str | None = None
    thickness_mm: float = 0.0  # as measured (the sidecar's truth)
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


def _composition_spread(alloy: str, thickness_mm: float, rig: RigConfig, n: int = 200) -> float:
    """Relative sd of a plate's -ln T (plate-only strip) over its alloy's composition range (seeded): the widest
    over the rig's channels. One areal-density factor per plate serves every channel (the plate is the same in
    each exposure), so its prior has to leave room for the channel its composition moves most."""
    rng = np.random.default_rng(0xC0)
    plates = [sample_plate(alloy, thickness_mm, rng, "c", thickness_tolerance=0.0) for _ in range(n)]
    spreads = []
    for kvp in rig.kvp:
        spec = Channel(rig, kvp).spectrum
        vals = [
            neg_log_transmission_of(
                p.fractions(), p.density_g_cm3, thickness_mm, 0.0, spec, rig.wedge_material, rig.csi_mm
            )
            for p in plates
        ]
        spreads.append(float(np.std(vals) / np.mean(vals)))
    return max(spreads)


@dataclass
class RigFit:
    """The fitted rig and how well it fits."""

    rig: RigConfig
    names: list[str]
    values: dict
    uncertainty: dict
    covariance: np.ndarray
    misfit_rms: float  # rms of (model - mean) / single-capture sd, every reference and bin
    max_misfit: float
    chi2: float
    dof: int
    birge: float  # sqrt(chi2 / dof): > 1 when the model cannot match to within the noise
    residuals: dict  # reference name -> {"z": [...], "rms": r, "max": m}
    plate_scales: dict  # reference name -> fitted areal density / stated
    at_bounds: list[str]
    detector: DetectorMeasurement
    bins: int
    predictions: dict = field(default_factory=dict)  # reference name -> model profile
    sigma: dict = field(default_factory=dict)  # reference name -> single-capture sd per bin
    holdout: dict | None = None

    def profile(self, extra: dict | None = None) -> RigProfile:
        calibrated = [k for k in DETECTOR_FIELDS if k in self.detector.values or k == "dose"] + list(self.names)
        unc = {**{k: v for k, v in self.detector.uncertainty.items() if np.isfinite(v)}, **self.uncertainty}
        fit = {
            "misfit_rms": self.misfit_rms,
            "max_misfit": self.max_misfit,
            "chi2": self.chi2,
            "dof": self.dof,
            "birge_ratio": self.birge,
            "bins": self.bins,
            "references": {k: {"rms": v["rms"], "max": v["max"]} for k, v in self.residuals.items()},
            "plate_scales": self.plate_scales,
            "at_bounds": self.at_bounds,
            "holdout": self.holdout,
            "detector_sessions": self.detector.sessions,
            "notes": self.detector.notes,
            **(extra or {}),
        }
        return RigProfile(
            rig=self.rig,
            calibrated=calibrated,
            uncertainty=_round(unc),
            covariance=Covariance(names=list(self.names), matrix=self.covariance.tolist()),
            fit=_round(fit),
        )


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

    def __init__(self, base: RigConfig, refs: Sequence[Reference], names: Sequence[str], bins: int, jensen: np.ndarray):
        self.base, self.refs, self.names, self.bins = base, list(refs), list(names), bins
        self.correction = np.concatenate([bin_columns(j, bins) for j in jensen])  # user profile - model profile
        self.wedges = sorted({r.wedge_mm for r in self.refs})

    def rig(self, theta: Sequence[float], wedge_mm: float | None = None) -> RigConfig:
        upd = {k: float(v) for k, v in zip(self.names, theta, strict=True)}
        if wedge_mm is not None:
            upd["wedge_mm"] = float(wedge_mm)
        return self.base.model_copy(update=upd)

    def __call__(self, theta: Sequence[float], scales: np.ndarray) -> list[np.ndarray]:
        out: list[np.ndarray | None] = [None] * len(self.refs)
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
                for i, p in zip(members, pm.profiles(a.nominal_fractions(), a.density_g_cm3, ts), strict=True):
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


class _Problem:
    """The least-squares problem in scaled coordinates u: the first ``n_t`` are the rig parameters
    (start + scale * u), the rest each plate's areal-density factor (1 + prior sd * u) with its prior as a
    residual."""

    STEP = 0.02  # finite-difference step in u

    def __init__(
        self,
        forward: _Forward,
        refs: list[Reference],
        sd: list[np.ndarray],
        start: np.ndarray,
        scale: np.ndarray,
        hi: np.ndarray,
        plate_sd: np.ndarray,
    ):
        self.forward, self.refs, self.start, self.scale, self.hi = forward, refs, start, scale, hi
        self.plates = [i for i, r in enumerate(refs) if r.kind == "plate"]
        self.plate_sd, self.n_t = plate_sd, len(start)
        self.means = [r.mean for r in refs]
        self.weights = [
            1.0 / np.sqrt(s**2 / len(r.profiles) + (MODEL_FLOOR_ABS + MODEL_FLOOR_REL * np.abs(m)) ** 2)
            for r, s, m in zip(refs, sd, self.means, strict=True)
        ]

    def unpack(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scales = np.ones(len(self.refs))
        scales[self.plates] = 1.0 + self.plate_sd * u[self.n_t :]
        return self.start + self.scale * u[: self.n_t], scales

    def _residuals(self, models: list[np.ndarray], u: np.ndarray) -> np.ndarray:
        data = [(m - mu) * wt for m, mu, wt in zip(models, self.means, self.weights, strict=True)]
        return np.concatenate(data + [u[self.n_t :]])

    def fun(self, u: np.ndarray) -> np.ndarray:
        return self._residuals(self.forward(*self.unpack(u)), u)

    def jac(self, u: np.ndarray) -> np.ndarray:
        r0 = self.fun(u)
        j = np.zeros((len(r0), len(u)))
        for k in range(self.n_t):
            du = np.zeros(len(u))
            du[k] = self.STEP if u[k] + self.STEP <= self.hi[k] else -self.STEP
            j[:, k] = (self.fun(u + du) - r0) / du[k]
        if self.plates:  # each plate's profile depends on its own factor only: one evaluation gives every column
            du = np.zeros(len(u))
            du[self.n_t :] = self.STEP
            r1 = self.fun(u + du)
            offsets = np.cumsum([0] + [len(m) for m in self.means])
            for n, i in enumerate(self.plates):
                sl = slice(offsets[i], offsets[i + 1])
                j[sl, self.n_t + n] = (r1[sl] - r0[sl]) / self.STEP
                j[offsets[-1] + n, self.n_t + n] = 1.0
        return j


def _check_inputs(params: Sequence[str], refs: Sequence[Reference]) -> None:
    for k in params:
        if k not in FIT_PARAMETERS:
            raise RigFitError(f"cannot fit {k!r}; fittable: {', '.join(FIT_PARAMETERS)}")
    if not refs:
        raise RigFitError("no reference captures: need the wedge alone and/or plates of a known alloy")
    # One alloy's plates cannot tell a harder beam from a denser composition; plates of three alloys or more,
    # whose known compositions harden the beam differently, can (a lab's labelled plates: ``fit_rig_to_captures``).
    alloys = {r.alloy for r in refs if r.kind == "plate"}
    if not any(r.kind == "wedge" for r in refs) and len(alloys) < MIN_ALLOYS_WITHOUT_WEDGE:
        raise RigFitError(
            "no captures of the wedge alone (calibration/<session>/wedge-<mm>mm frames): the "
            f"beam cannot be told from the plates' composition without them (or plates of "
            f"{MIN_ALLOYS_WITHOUT_WEDGE} alloys or more; these are of {len(alloys)})"
        )


def _plate_prior_sd(refs: Sequence[Reference], base: RigConfig) -> np.ndarray:
    """Per plate reference, the relative sd of its areal density: thickness tolerance and composition range."""
    prior_sd: dict[tuple, float] = {}
    out = []
    for r in refs:
        if r.kind != "plate":
            continue
        key = (r.alloy, r.nominal_thickness_mm)
        if key not in prior_sd:
            prior_sd[key] = float(np.hypot(0.0075, _composition_spread(r.alloy, max(r.thickness_mm, 0.1), base)))
        out.append(prior_sd[key])
    return np.array(out)


def _residual_summary(
    refs: Sequence[Reference], models: list[np.ndarray], sd: list[np.ndarray]
) -> tuple[dict, dict, dict, np.ndarray]:
    """(per reference z/rms/max, model profiles, single-capture sd, every z)."""
    residuals, preds, sigmas, zs = {}, {}, {}, []
    for r, m, s in zip(refs, models, sd, strict=True):
        z = (m - r.mean) / s
        zs.append(z)
        residuals[r.name] = {"z": z.tolist(), "rms": float(np.sqrt((z**2).mean())), "max": float(np.abs(z).max())}
        preds[r.name], sigmas[r.name] = m, s
    return residuals, preds, sigmas, np.concatenate(zs)


def quanta_per_dose(rig: RigConfig) -> float:
    """Effective open-beam quanta per pixel per unit ``dose``, as the flats' noise measures it: that noise is
    pooled over the channels (``measure_detector``), i.e. the mean of each channel's relative variance
    1 / (dose * q_c), so a capture of several exposures measures the harmonic mean of the channels' q_c (each
    kVp has its own spectrum, hence its own quanta per detected photon)."""
    unit = rig.model_copy(update={"dose": 1.0})
    q = np.array([Channel(unit, kvp).quanta_open for kvp in rig.kvp])
    return float(q[0]) if len(q) == 1 else float(1.0 / np.mean(1.0 / q))


def _with_dose(rig: RigConfig, detector: DetectorMeasurement) -> RigConfig:
    """The dose that gives the quanta measured in the open beam, once the beam (hence quanta per unit dose) is
    known; the nominal dose where the flats could not measure it."""
    if detector.quanta_open is None:
        return rig
    per_dose = quanta_per_dose(rig)
    detector.uncertainty["dose"] = float(detector.quanta_open_sd / per_dose)
    return rig.model_copy(update={"dose": float(detector.quanta_open / per_dose)})


def fit_rig(
    nominal: RigConfig,
    refs: Sequence[Reference],
    detector: DetectorMeasurement,
    params: Sequence[str] = DEFAULT_FIT,
    bins: int = 32,
    max_nfev: int = 80,
    log: Callable[[str], None] | None = None,
) -> RigFit:
    """Fit ``params`` (RigConfig fields, see ``FIT_PARAMETERS``) of the nominal rig, with the detector as
    measured, to the references' profiles. Raises ``RigFitError`` when the references cannot constrain
    the fit (no wedge-alone or plate references, unknown parameter); judging the fit is ``check_fit``'s job."""
    refs = list(refs)
    _check_inputs(params, refs)
    base = nominal.model_copy(update={k: v for k, v in detector.values.items() if k != "dose"})
    base = RigConfig.model_validate(base.model_dump())  # validate per-column lengths against the width
    names = list(params)
    start = np.array(
        [FIT_PARAMETERS[k].start if FIT_PARAMETERS[k].start is not None else getattr(base, k) for k in names], float
    )
    scale = np.array([FIT_PARAMETERS[k].scale for k in names])
    lo = (np.array([FIT_PARAMETERS[k].lo for k in names]) - start) / scale
    hi = (np.array([FIT_PARAMETERS[k].hi for k in names]) - start) / scale
    forward = _Forward(base, refs, names, bins, detector.jensen)
    sd = _single_sd(refs, lambda r: model_sd(base, r, bins))
    problem = _Problem(forward, refs, sd, start, scale, hi, _plate_prior_sd(refs, base))
    n_p = len(problem.plates)
    sol = optimize.least_squares(
        problem.fun,
        np.zeros(len(names) + n_p),
        jac=problem.jac,
        bounds=(np.concatenate([lo, np.full(n_p, -10.0)]), np.concatenate([hi, np.full(n_p, 10.0)])),
        max_nfev=max_nfev,
        x_scale=1.0,
    )
    theta, scales = problem.unpack(sol.x)
    j = problem.jac(sol.x)
    chi2 = float((sol.fun**2).sum())
    dof = max(len(sol.fun) - len(sol.x), 1)
    birge = float(np.sqrt(chi2 / dof))
    cov = (np.linalg.pinv(j.T @ j) * max(1.0, birge**2))[: len(names), : len(names)] * np.outer(scale, scale)
    residuals, preds, sigmas, allz = _residual_summary(refs, forward(theta, scales), sd)
    u_fit = sol.x[: len(names)]
    at_bounds = [k for k, u, a, b in zip(names, u_fit, lo, hi, strict=True) if min(u - a, b - u) < 1e-3]
    rig = _with_dose(forward.rig(theta), detector)
    if log:
        log(
            f"fit: {sol.nfev} evaluations, chi2/dof {chi2 / dof:.2f}, misfit rms {np.sqrt((allz**2).mean()):.2f} "
            f"(single-capture sd)"
        )
    return RigFit(
        rig=rig,
        names=names,
        values={k: float(v) for k, v in zip(names, theta, strict=True)},
        uncertainty={k: float(np.sqrt(cov[i, i])) for i, k in enumerate(names)},
        covariance=cov,
        misfit_rms=float(np.sqrt((allz**2).mean())),
        max_misfit=float(np.abs(allz).max()),
        chi2=chi2,
        dof=dof,
        birge=birge,
        residuals=residuals,
        plate_scales={refs[i].name: float(scales[i]) for i in problem.plates},
        at_bounds=at_bounds,
        detector=detector,
        bins=bins,
        predictions=preds,
        sigma=sigmas,
    )


def held_out_profiles(cal: RigFit, holdout: Sequence[Reference]) -> list[np.ndarray]:
    """The calibrated model's profile of each held-out reference, at the areal density ``check_references``
    fitted to it."""
    if not holdout:
        return []
    forward = _Forward(cal.rig, list(holdout), [], cal.bins, cal.detector.jensen)
    fitted = (cal.holdout or {}).get("references", {})
    return forward([], np.array([fitted.get(r.name, {}).get("plate_scale", 1.0) for r in holdout]))


def check_references(cal: RigFit, refs: Sequence[Reference]) -> dict:
    """How the calibrated rig predicts references it was not fitted to: per capture, chi2 per degree of freedom
    against the single-capture noise (a plate's areal density fitted first, one degree of freedom), and per
    reference the mean profile's residual in units of its standard error."""
    return predict_references(cal.rig, refs, cal.bins, cal.detector.jensen)


def predict_references(
    rig: RigConfig, refs: Sequence[Reference], bins: int = 32, jensen: np.ndarray | None = None
) -> dict:
    """``check_references`` for any rig: e.g. the nominal, uncalibrated one (``jensen`` None: no measured
    flat-field correction), to see what the calibration gained."""
    if not refs:
        return {}
    jensen = np.zeros((rig.channels, rig.width)) if jensen is None else jensen
    forward = _Forward(rig, refs, [], bins, jensen)
    sds = _single_sd(refs, lambda r: model_sd(rig, r, bins))
    per_capture, per_ref = [], {}
    for i, (r, sd) in enumerate(zip(refs, sds, strict=True)):

        def model(scale: float, i: int = i) -> np.ndarray:
            s = np.ones(len(refs))
            s[i] = scale
            return forward([], s)[i]

        scale = 1.0
        if r.kind == "plate":

            def misfit(x: float, r: Reference = r, sd: np.ndarray = sd) -> float:
                return float((((model(x) - r.mean) / sd) ** 2).sum())

            scale = float(
                optimize.minimize_scalar(misfit, bounds=(0.9, 1.1), method="bounded", options={"xatol": 1e-5}).x
            )
        m = model(scale)
        dof = m.size - (1 if r.kind == "plate" else 0)
        chi = [float((((p - m) / sd) ** 2).sum() / dof) for p in r.profiles]
        per_capture += chi
        se = sd / np.sqrt(len(r.profiles))
        per_ref[r.name] = {
            "captures": len(r.profiles),
            "chi2_per_dof": float(np.mean(chi)),
            "mean_z_rms": float(np.sqrt((((m - r.mean) / se) ** 2).mean())),
            "misfit_rms": float(np.sqrt((((m - r.mean) / sd) ** 2).mean())),
            "plate_scale": scale,
        }
    return {
        "references": per_ref,
        "captures": len(per_capture),
        "chi2_per_dof": float(np.mean(per_capture)),
        "chi2_per_dof_max": float(np.max(per_capture)),
    }


def check_fit(cal: RigFit, max_misfit: float = MAX_MISFIT_RMS, max_holdout_chi2: float = MAX_HOLDOUT_CHI2) -> None:
    """Refuse a poor calibration with a message that says where it misses, and what to try."""
    problems = []
    if cal.misfit_rms > max_misfit:
        worst = sorted(cal.residuals.items(), key=lambda kv: -kv[1]["rms"])[:3]
        where = "; ".join(
            f"{k}: rms {v['rms']:.2f}, worst bin {int(np.argmax(np.abs(v['z'])))} ({v['max']:.1f} sd)" for k, v in worst
        )
        problems.append(
            f"the fitted simulator misses the references by {cal.misfit_rms:.2f} single-capture sd (rms; "
            f"the limit is {max_misfit:g}): {where}"
        )
    if cal.holdout and cal.holdout.get("chi2_per_dof", 0) > max_holdout_chi2:
        problems.append(
            f"held-out references: chi2/dof {cal.holdout['chi2_per_dof']:.2f} per capture (limit {max_holdout_chi2:g})"
        )
    if problems:
        hint = (
            "check the nominal settings (kVp, filtration, wedge size and its plate-only strip, the wedge "
            "material), that the reference alloy and thicknesses are right, and that each capture's dark/flat "
            "frames are its own session's; or fit more parameters (--fit)"
        )
        if cal.at_bounds:
            hint = f"parameters at their limits: {', '.join(cal.at_bounds)}; " + hint
        raise RigFitError("poor rig calibration: " + "; ".join(problems) + ". " + hint)

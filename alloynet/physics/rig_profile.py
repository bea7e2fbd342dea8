"""A rig profile: the nominal simulator fitted to one real rig (the rig fit: ``alloynet rig fit`` writes it).

YAML, read by ``alloynet simulate --rig-profile`` (``rig_profile:`` in a DatasetSpec), by the training's
simulated captures (``data.synthetic.rig_profile``, ``pretrain.synthetic.rig_profile``, ``alloynet train
--pretrain``) and by the ideal observer and the physics-fit classifier (``alloynet evaluate --rig-profile``)::

    format: alloynet-rig-profile/1
    rig: {...}                  # RigConfig: the lab's nominal settings plus every field the rig fit set
    calibrated: [names]         # the fields the rig fit set (fitted or measured); a stored key, kept
    uncertainty: {name: sd}     # 1-sigma of each such scalar
    covariance: {names: [...], matrix: [[...]]}   # of the fitted parameters (for randomised simulation)
    fit: {...}                  # how well it fits: misfit, residuals, the held-out check, the data used

A profile applies to a data set's own nominal rig (``apply``): image size and wedge size come from the
data, every field the rig fit set from the profile; a profile fitted at other nominal beam settings (kVp,
anode angle, filtration, wedge material) is refused, naming the setting.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from alloynet.physics.simulator import RigConfig

FORMAT = "alloynet-rig-profile/1"

# Settings a lab writes in its notebook: a profile must have been fitted at the same ones to apply.
BEAM_SETTINGS = ("kvp", "anode_angle_deg", "filtration_mm_al", "wedge_material", "wedge_min_mm", "wedge_margin_px")
# Settings that belong to each data set, never to the profile.
GEOMETRY = ("height", "width", "wedge_mm")


class Covariance(BaseModel):
    model_config = ConfigDict(extra="forbid")
    names: list[str]
    matrix: list[list[float]]


class RigProfile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["alloynet-rig-profile/1"] = FORMAT
    rig: RigConfig
    calibrated: list[str] = Field(default_factory=list)
    uncertainty: dict[str, float] = Field(default_factory=dict)
    covariance: Covariance | None = None
    fit: dict[str, Any] = Field(default_factory=dict)

    def apply(self, base: RigConfig, draw: RigConfig | None = None) -> RigConfig:
        """``base`` (a data set's nominal rig: its size and wedge) with every field of this profile the rig fit set
        (or of ``draw``, one of ``draw``'s rigs)."""
        for name in BEAM_SETTINGS:
            mine, theirs = getattr(self.rig, name), getattr(base, name)
            if mine != theirs:
                raise ValueError(
                    f"rig profile: fitted at {name}={mine!r}, but the data's rig has {name}="
                    f"{theirs!r}; fit the rig at these settings (alloynet rig fit)"
                )
        update = {k: getattr(draw or self.rig, k) for k in self.calibrated}
        for name in ("column_gain", "dark_column_adu"):
            if update.get(name) is not None and len(update[name]) != base.width:
                raise ValueError(
                    f"rig profile: {name} was measured on captures {len(update[name])} px wide; the "
                    f"data are {base.width} px wide (fit the rig with captures of this size)"
                )
        return RigConfig.model_validate({**base.model_dump(), **update})

    def draw(self, n: int, seed: int, scale: float = 1.0) -> list[RigConfig]:
        """``n`` rigs with the fitted parameters drawn from N(fit, scale^2 x covariance), kept inside each
        field's bounds; the first is the best fit itself. For training on the fitted simulator without
        trusting it further than the rig fit does."""
        rigs = [self.rig]
        if n <= 1 or self.covariance is None or scale <= 0:
            return rigs * max(n, 1)
        names = self.covariance.names
        mean = np.array([getattr(self.rig, k) for k in names], float)
        cov = np.asarray(self.covariance.matrix, float) * scale**2
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0x416]))
        lo, hi = zip(*(_bounds(k) for k in names))
        for _ in range(n - 1):
            x = np.clip(rng.multivariate_normal(mean, cov, method="eigh"), lo, hi)
            rigs.append(self.rig.model_copy(update={k: float(v) for k, v in zip(names, x)}))
        return rigs

    def variants(self, base: RigConfig, n: int, seed: int, scale: float = 1.0) -> list[RigConfig]:
        """``draw``'s rigs applied to ``base``: what a data set of ``base``'s size and wedge is simulated with."""
        return [self.apply(base, r) for r in self.draw(n, seed, scale)]

    def summary(self) -> list[str]:
        """One line per scalar the rig fit set: value +- uncertainty."""
        out = []
        for k in self.calibrated:
            v = getattr(self.rig, k)
            if isinstance(v, list):
                out.append(f"{k}: {len(v)} values, rms {float(np.std(v)):.4g}")
            else:
                sd = self.uncertainty.get(k)
                out.append(f"{k}: {v:.5g}" + (f" +- {sd:.2g}" if sd is not None else ""))
        return out


@dataclass(frozen=True)
class FitParameter:
    """A RigConfig field the rig fit can fit: where the search starts (None: the nominal value), its
    typical scale (the fit's step and units) and the physically sensible range."""

    start: float | None
    scale: float
    lo: float
    hi: float


FIT_PARAMETERS: dict[str, FitParameter] = {
    "kvp_offset_rel": FitParameter(0.0, 0.01, -0.15, 0.15),
    "extra_filtration_mm_al": FitParameter(0.1, 0.2, 0.0, 5.0),
    "scatter_fraction": FitParameter(None, 0.01, 0.0, 0.5),
    "scatter_sigma_px": FitParameter(None, 5.0, 0.5, 500.0),
    "scatter_per_attenuation": FitParameter(0.002, 0.005, 0.0, 0.5),
    "psf_sigma_px": FitParameter(None, 0.2, 0.05, 5.0),
    "glare_fraction": FitParameter(0.01, 0.01, 0.0, 0.5),
    "glare_length_px": FitParameter(None, 2.0, 0.5, 100.0),
    "csi_mm": FitParameter(None, 0.05, 0.05, 3.0),
}


def _bounds(name: str) -> tuple[float, float]:
    p = FIT_PARAMETERS.get(name)
    return (p.lo, p.hi) if p else (-np.inf, np.inf)


def needs_alloynet_simulator(simulator: str, rig_profile: str | None, open_beam_rows: int = 0) -> None:
    """A rig profile fits alloynet's simulator to a rig, and only it images an open-beam strip: refused with
    another simulator (a data set spec's and the training's simulated captures' rule)."""
    if open_beam_rows and simulator != "alloynet":
        raise ValueError(
            f"rig.open_beam_rows: only alloynet's simulator images an open-beam region; the {simulator} rig has none"
        )
    if rig_profile and simulator != "alloynet":
        raise ValueError(
            f"rig_profile: fits the alloynet simulator to a rig; it cannot be used with simulator: {simulator}"
        )


def dump_rig_profile(profile: RigProfile) -> str:
    text = "# alloynet rig profile: the simulator fitted to one rig (alloynet rig fit)\n"
    return text + yaml.safe_dump(profile.model_dump(mode="json"), sort_keys=False, width=120)


def save_rig_profile(profile: RigProfile, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(dump_rig_profile(profile))
    tmp.replace(path)
    return path


def load_rig_profile(path: str | Path) -> RigProfile:
    """Read a rig profile; errors name the file and the field."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: rig profile not found") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ValueError(f"{path}: not an alloynet rig profile (expected format: {FORMAT})")
    try:
        return RigProfile.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "profile"
        raise ValueError(f"{path}: {field}: {err['msg'].removeprefix('Value error, ')}") from None

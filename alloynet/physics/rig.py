"""The nominal rig, declared once: the settings a lab writes in its notebook.

Three things describe a rig and must agree field for field: a capture's sidecar (``captures.format.RigInfo``:
what the lab recorded), the alloynet simulator (``simulator.RigConfig``) and the second, independently written
rig model (``second_rig.SecondRigConfig``). Each is a subclass of one of the two models here, so a setting has
one name, one default and one set of limits, and a sidecar's settings become a simulator's without a field list.

* ``NominalRig``: beam and wedge (tube, filtration, wedge, open-beam strip): what every capture's sidecar
  records.
* ``NominalPanel``: a ``NominalRig`` plus what a rig model needs about the panel and the plates (size, dose,
  scintillator, levels, noise, fixed-pattern seed, plate texture); both rig models share it.

Pydantic and numpy only: the capture format imports this module, and a client that parses sidecars must not
load scipy, SpekPy or torch.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

MAX_CHANNELS = 8  # kVp settings per capture (image channels)

PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]


class NominalRig(BaseModel):
    """Beam and wedge settings as a lab gives them. Defaults: W tube at 50 kV / 300 uA, 12 deg anode, 1 mm Al,
    a 5 cm Al wedge."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    kvp: list[PositiveFloat] = Field(
        default_factory=lambda: [50.0], min_length=1, max_length=MAX_CHANNELS, description="one channel per kVp setting"
    )
    tube_current_ua: PositiveFloat = 300.0
    anode_angle_deg: float = Field(12.0, gt=0, lt=90)
    filtration_mm_al: NonNegativeFloat = 1.0
    wedge_mm: float = Field(50.0, gt=0, description="wedge thickness at its thick end")
    wedge_min_mm: NonNegativeFloat = 0.0
    wedge_material: Literal["Al", "PMMA"] = "Al"
    open_beam_rows: int = Field(
        0,
        ge=0,
        description="rows at the image's top edge beside the plate and the wedge "
        "(open beam): an in-image reference that shows the tube's output of each capture",
    )

    @property
    def channels(self) -> int:
        return len(self.kvp)

    def nominal_settings(self) -> dict[str, Any]:
        """This rig's ``NominalRig`` fields, e.g. to write them into a sidecar or to build a rig model from one."""
        return {name: getattr(self, name) for name in NominalRig.model_fields}


class NominalPanel(NominalRig):
    """A ``NominalRig`` with the panel and plate settings both rig models take."""

    height: int = Field(256, ge=8)
    width: int = Field(256, ge=8)
    wedge_margin_px: int = Field(4, ge=0, description="plate-only strip (no wedge) at the thin end, in columns")
    dose: float = Field(1e4, gt=0, description="detected photons per pixel, open beam")
    csi_mm: float = Field(0.5, gt=0, description="CsI scintillator thickness")
    dark_offset_adu: float = 1000.0
    flat_target_adu: float = 50000.0
    read_noise_adu: NonNegativeFloat = 4.0
    detector_seed: int = 20261121
    texture_rel: NonNegativeFloat = 0.003
    texture_cell_px: int = Field(16, ge=1)
    inclusion_rate: NonNegativeFloat = 0.3

    def panel_settings(self) -> dict[str, Any]:
        """This rig's ``NominalPanel`` fields: what another rig model at the same nominal settings takes."""
        return {name: getattr(self, name) for name in NOMINAL_FIELDS}


# The fields both rig models share (a second rig is built at another rig's nominal settings from these).
NOMINAL_FIELDS: tuple[str, ...] = tuple(NominalPanel.model_fields)


def wedge_columns_mm(rig: NominalPanel) -> np.ndarray:
    """Wedge thickness under each image column: a plate-only strip, then a linear ramp to ``wedge_mm``."""
    margin = min(rig.wedge_margin_px, rig.width - 2)
    ramp = np.linspace(rig.wedge_min_mm, rig.wedge_mm, rig.width - margin)
    return np.concatenate([np.zeros(margin), ramp])

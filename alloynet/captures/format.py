"""The capture format: a 16-bit image (PNG for one channel, TIFF for several) plus a JSON sidecar.

The image codec lives in ``alloynet.captures.image`` (no pydantic: a client that only decodes pixels
starts fast); this module is the sidecar schema and the checks of an image against its sidecar.

Real captures from a rig use the same format; ground truth (``truth``) may be missing (unlabelled).
Every problem raises ``CaptureError`` naming the file and the field, and what was expected.
"""
from __future__ import annotations

import json
from datetime import datetime
from typing import Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from alloynet.captures.image import CaptureError, decode_image, sha256
from alloynet.physics.alloys import ALLOYS

SCHEMA_VERSION = 1
ACCEPTED_SIZES = {(64, 64), (128, 128), (256, 256), (512, 512)}


class ImageInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    file: str
    format: Literal["png", "tiff"]
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    dtype: Literal["uint16"] = "uint16"
    shape: list[int] = Field(min_length=3, max_length=3, description="[channels, height, width]")


class RigInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    kvp: list[float]
    tube_current_ua: float = 300.0
    anode: str = "W"
    anode_angle_deg: float = 12.0
    filtration_mm_al: float = 1.0
    wedge_mm: float = Field(gt=0)
    wedge_min_mm: float = 0.0
    wedge_material: Literal["Al", "PMMA"] = "Al"
    wedge_axis: Literal["x"] = "x"
    detector: str = "CsI 0.5 mm, energy integrating"
    dose: Optional[float] = None


class Calibration(BaseModel):
    model_config = ConfigDict(extra="forbid")
    session: str
    dark_adu: list[float]
    flat_adu: list[float]


class Truth(BaseModel):
    """Ground truth; absent for unlabelled real captures."""

    model_config = ConfigDict(extra="forbid")
    alloy: str
    nominal_thickness_mm: float
    thickness_mm: Optional[float] = None
    composition_wt_pct: Optional[dict[str, float]] = None
    density_g_cm3: Optional[float] = None
    a0: Optional[float] = Field(None, description="-ln T of the plate at zero wedge, primary kVp")
    a0_by_kvp: Optional[list[float]] = None
    mu_eff_per_cm: Optional[float] = Field(None, description="a0 / thickness, 1/cm")

    @field_validator("alloy")
    @classmethod
    def _known_alloy(cls, v: str) -> str:
        if v not in ALLOYS:
            raise ValueError(f"unknown alloy {v!r}; expected one of {sorted(ALLOYS)}")
        return v

    @field_validator("nominal_thickness_mm", "thickness_mm")
    @classmethod
    def _positive(cls, v: Optional[float]) -> Optional[float]:
        if v is not None and not v > 0:
            raise ValueError(f"thickness must be > 0 mm, got {v}")
        return v


class Sidecar(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schema_version: int = SCHEMA_VERSION
    capture_id: str = Field(pattern=r"^[A-Za-z0-9._-]+$")
    plate_id: Optional[str] = None
    acquired_at: datetime
    image: ImageInfo
    rig: RigInfo
    calibration: Calibration
    truth: Optional[Truth] = None
    source: str = "rig"

    @field_validator("schema_version")
    @classmethod
    def _version(cls, v: int) -> int:
        if v != SCHEMA_VERSION:
            raise ValueError(f"unsupported schema_version {v}; this alloynet reads version {SCHEMA_VERSION}")
        return v


def parse_sidecar(data: bytes, where: str = "<sidecar>") -> Sidecar:
    if not data:
        raise CaptureError(where, "sidecar", "file is empty")
    try:
        raw = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CaptureError(where, "sidecar", f"not valid JSON ({exc})") from None
    try:
        return Sidecar.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "sidecar"
        raise CaptureError(where, field, err["msg"]) from None


def validate_capture(sidecar: Sidecar, image_bytes: bytes, where: str,
                     accepted_sizes: set[tuple[int, int]] | None = None) -> np.ndarray:
    """Check the image against its sidecar (hash, dtype, shape, calibration) and return the pixels."""
    image = decode_image(image_bytes, where)  # first, so a damaged file is reported as such
    actual = sha256(image_bytes)
    if actual != sidecar.image.sha256:
        raise CaptureError(where, "image.sha256", f"hash mismatch: sidecar says {sidecar.image.sha256[:12]}..., "
                                                  f"file has {actual[:12]}...")
    if list(image.shape) != sidecar.image.shape:
        raise CaptureError(where, "image.shape", f"sidecar says {sidecar.image.shape}, file is {list(image.shape)}")
    sizes = ACCEPTED_SIZES if accepted_sizes is None else accepted_sizes
    if sizes and tuple(image.shape[1:]) not in sizes:
        raise CaptureError(where, "image.shape", f"size {image.shape[1]}x{image.shape[2]} not accepted; "
                                                 f"expected one of {sorted(sizes)}")
    c = image.shape[0]
    if len(sidecar.rig.kvp) != c:
        raise CaptureError(where, "rig.kvp", f"{len(sidecar.rig.kvp)} kVp settings for {c} image channel(s)")
    cal = sidecar.calibration
    if len(cal.dark_adu) != c or len(cal.flat_adu) != c:
        raise CaptureError(where, "calibration", f"expected {c} dark/flat level(s), one per channel")
    if any(f <= d for f, d in zip(cal.flat_adu, cal.dark_adu)):
        raise CaptureError(where, "calibration.flat_adu", "flat level must exceed the dark level")
    return image


def make_sidecar(capture_id: str, image: np.ndarray, image_bytes: bytes, fmt: str, rig: dict,
                 calibration: dict, acquired_at: datetime, truth: dict | None = None, plate_id: str | None = None,
                 source: str = "rig") -> Sidecar:
    return Sidecar(
        capture_id=capture_id, plate_id=plate_id, acquired_at=acquired_at,
        image=ImageInfo(file=f"{capture_id}.{fmt}", format=fmt, sha256=sha256(image_bytes), shape=list(image.shape)),
        rig=RigInfo(**rig), calibration=Calibration(**calibration),
        truth=Truth(**truth) if truth else None, source=source)

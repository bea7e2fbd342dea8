"""The capture format: a 16-bit image (PNG for one channel, TIFF for several) plus a JSON sidecar.

Real captures from a rig use the same format; ground truth (``truth``) may be missing (unlabelled).
Every problem raises ``CaptureError`` naming the file and the field, and what was expected.
"""
from __future__ import annotations

import hashlib
import io
import json
from datetime import datetime
from typing import Literal, Optional

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from alloynet.physics.materials import ALLOYS

SCHEMA_VERSION = 1
ACCEPTED_SIZES = {(64, 64), (128, 128), (256, 256), (512, 512)}


class CaptureError(ValueError):
    """A capture failed validation; ``where`` names the file and ``field`` the offending field."""

    def __init__(self, where: str, field: str, message: str):
        self.where, self.field, self.message = where, field, message
        super().__init__(f"{where}: {field}: {message}")


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


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def encode_image(image: np.ndarray) -> tuple[bytes, str]:
    """uint16 [C, H, W] -> (bytes, format). One channel: 16-bit grayscale PNG; several: TIFF."""
    if image.dtype != np.uint16 or image.ndim != 3:
        raise ValueError(f"image must be uint16 [C, H, W], got {image.dtype} {image.shape}")
    if image.shape[0] == 1:
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(image[0])).save(buf, format="PNG", compress_level=1)
        return buf.getvalue(), "png"
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, image, photometric="minisblack")
    return buf.getvalue(), "tiff"


def decode_image(data: bytes, where: str = "<bytes>") -> np.ndarray:
    """Bytes of a 16-bit PNG or TIFF -> uint16 [C, H, W]; clear errors for anything else."""
    if not data:
        raise CaptureError(where, "image", "file is empty")
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                mode = im.mode
                arr = np.asarray(im)
        except Exception as exc:  # PIL raises several types for truncated/corrupt files
            raise CaptureError(where, "image", f"corrupt or truncated PNG ({str(exc).split(' <')[0]})") from None
        if mode not in ("I;16", "I;16B", "I;16L", "I") or arr.ndim != 2:
            raise CaptureError(where, "image", f"expected a 16-bit single-channel PNG, got mode {mode!r}")
        if arr.dtype != np.uint16:
            if arr.min() < 0 or arr.max() > 65535:
                raise CaptureError(where, "image", "pixel values outside the 16-bit range")
            arr = arr.astype(np.uint16)
        return arr[None]
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        import tifffile

        try:
            arr = tifffile.imread(io.BytesIO(data))
        except Exception as exc:
            raise CaptureError(where, "image", f"corrupt or truncated TIFF ({exc})") from None
        if arr.dtype != np.uint16:
            raise CaptureError(where, "image", f"expected uint16 pixels, got {arr.dtype}")
        return arr[None] if arr.ndim == 2 else arr
    raise CaptureError(where, "image", "not a PNG or TIFF file (bad magic bytes)")


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

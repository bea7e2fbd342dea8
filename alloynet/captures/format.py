"""The capture format: a 16-bit image (PNG for one channel, TIFF for several) plus a JSON sidecar.

The image codec lives in ``alloynet.captures.image`` (no pydantic: a client that only decodes pixels
starts fast); this module is the sidecar schema and the checks of an image against its sidecar.

Real captures from a rig use the same format; ground truth (``truth``) may be missing (unlabelled).
Every problem raises ``CaptureError`` naming the file and the field, and what was expected.

A sidecar comes from outside (a rig, a person, anyone who can write to the bucket), so it is parsed
defensively: its size, nesting depth and string lengths are bounded, every number must be finite, physical
quantities must be positive, and the image it describes is always ``<capture_id>.<format>`` beside it: a
sidecar can only ever name its own image, never a path elsewhere or another capture's file.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from alloynet.captures.image import CaptureError, decode_image, sha256
from alloynet.physics.rig import MAX_CHANNELS, NominalRig, NonNegativeFloat, PositiveFloat

SCHEMA_VERSION = 1
ACCEPTED_SIZES = {(64, 64), (128, 128), (256, 256), (512, 512)}

# Limits on what a sidecar may contain: a real one is ~1-2 KB, two levels deep, with short strings.
MAX_SIDECAR_BYTES = 64 * 1024
MAX_JSON_DEPTH = 8
MAX_STRING = 256
MAX_IMAGE_BYTES = 64 * 1024 * 1024
MAX_SIDE = 8192
CAPTURE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
ALLOY_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
IMAGE_EXTENSIONS = {"png": ".png", "tiff": ".tiff"}

_STRICT = ConfigDict(allow_inf_nan=False, str_max_length=MAX_STRING)


class ImageInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", **_STRICT)
    file: str = Field(description="always <capture_id>.<format>, beside the sidecar")
    format: Literal["png", "tiff"]
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    dtype: Literal["uint16"] = "uint16"
    shape: list[Annotated[int, Field(ge=1, le=MAX_SIDE)]] = Field(
        min_length=3, max_length=3, description="[channels, height, width]"
    )

    @field_validator("shape")
    @classmethod
    def _channels(cls, v: list[int]) -> list[int]:
        if v[0] > MAX_CHANNELS:
            raise ValueError(f"{v[0]} channels; at most {MAX_CHANNELS} are accepted")
        return v


class RigInfo(NominalRig):
    """The rig settings a capture records: the nominal rig (``alloynet.physics.rig``, the fields and limits the
    simulators share) plus what only a sidecar says. Fields a lab adds beyond these are kept."""

    model_config = ConfigDict(extra="allow", **_STRICT)
    # a capture must say which beam and which wedge took it: no defaults here
    kvp: list[PositiveFloat] = Field(min_length=1, max_length=MAX_CHANNELS, description="one channel per kVp setting")
    wedge_mm: PositiveFloat = Field(description="wedge thickness at its thick end")
    anode: str = "W"
    wedge_axis: Literal["x"] = "x"
    detector: str = "CsI 0.5 mm, energy integrating"
    dose: NonNegativeFloat | None = None


class Calibration(BaseModel):
    model_config = ConfigDict(extra="forbid", **_STRICT)
    session: str
    dark_adu: list[NonNegativeFloat] = Field(min_length=1, max_length=MAX_CHANNELS)
    flat_adu: list[PositiveFloat] = Field(min_length=1, max_length=MAX_CHANNELS)


class Truth(BaseModel):
    """Ground truth; absent for unlabelled real captures."""

    model_config = ConfigDict(extra="forbid", **_STRICT)
    alloy: str = Field(
        pattern=ALLOY_NAME_PATTERN,
        description="an alloy name: one of the standard five, or one a "
        "data set or an import added (a capture's validity never depends on which table a reader has)",
    )
    nominal_thickness_mm: float
    thickness_mm: float | None = None
    composition_wt_pct: dict[str, Annotated[float, Field(ge=0, le=100)]] | None = None
    density_g_cm3: PositiveFloat | None = None
    a0: NonNegativeFloat | None = Field(None, description="-ln T of the plate at zero wedge, primary kVp")
    a0_by_kvp: list[NonNegativeFloat] | None = Field(None, max_length=MAX_CHANNELS)
    mu_eff_per_cm: NonNegativeFloat | None = Field(None, description="a0 / thickness, 1/cm")

    @field_validator("nominal_thickness_mm", "thickness_mm")
    @classmethod
    def _positive(cls, v: float | None) -> float | None:
        if v is not None and not v > 0:
            raise ValueError(f"thickness must be > 0 mm, got {v}")
        return v


class Sidecar(BaseModel):
    model_config = ConfigDict(extra="forbid", **_STRICT)
    schema_version: int = SCHEMA_VERSION
    capture_id: str = Field(pattern=CAPTURE_ID_PATTERN)
    plate_id: str | None = None
    acquired_at: datetime
    image: ImageInfo
    rig: RigInfo
    calibration: Calibration
    truth: Truth | None = None
    source: str = "rig"

    @field_validator("schema_version")
    @classmethod
    def _version(cls, v: int) -> int:
        if v != SCHEMA_VERSION:
            raise ValueError(f"unsupported schema_version {v}; this alloynet reads version {SCHEMA_VERSION}")
        return v

    @model_validator(mode="after")
    def _own_image(self) -> Sidecar:
        # The image's name is derived from the capture id: a sidecar cannot point at a path outside its
        # folder or at another capture's image (which a later write would then replace).
        expected = image_file_name(self.capture_id, self.image.format)
        if self.image.file != expected:
            raise ValueError(f"image.file: must be {expected!r} (<capture_id>.<format>), got {self.image.file[:80]!r}")
        return self


def image_file_name(capture_id: str, fmt: str) -> str:
    return f"{capture_id}{IMAGE_EXTENSIONS[fmt]}"


def _check_json_limits(raw: Any, where: str) -> None:
    """Depth, string length and finiteness of every value, iteratively (no recursion to exhaust)."""
    stack: list[tuple[Any, str, int]] = [(raw, "", 1)]
    while stack:
        v, path, depth = stack.pop()
        field = path or "sidecar"
        if depth > MAX_JSON_DEPTH:
            raise CaptureError(where, field, f"nested more than {MAX_JSON_DEPTH} levels deep")
        if isinstance(v, dict):
            for k, item in v.items():
                if len(k) > MAX_STRING:
                    raise CaptureError(where, field, f"a key of {len(k)} characters; the limit is {MAX_STRING}")
                stack.append((item, f"{path}.{k}" if path else k, depth + 1))
        elif isinstance(v, list):
            stack.extend((item, f"{path}.{i}" if path else str(i), depth + 1) for i, item in enumerate(v))
        elif isinstance(v, str):
            if len(v) > MAX_STRING:
                raise CaptureError(where, field, f"a string of {len(v)} characters; the limit is {MAX_STRING}")
        elif isinstance(v, float) and not math.isfinite(v):
            raise CaptureError(where, field, f"{v} is not a finite number")


def parse_sidecar(data: bytes, where: str = "<sidecar>") -> Sidecar:
    if not data:
        raise CaptureError(where, "sidecar", "file is empty")
    if len(data) > MAX_SIDECAR_BYTES:
        raise CaptureError(where, "sidecar", f"{len(data)} bytes; a sidecar may have at most {MAX_SIDECAR_BYTES}")
    try:
        raw = json.loads(data)
    except RecursionError:
        raise CaptureError(where, "sidecar", f"nested more than {MAX_JSON_DEPTH} levels deep") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, or an integer with too many digits
        raise CaptureError(where, "sidecar", f"not valid JSON ({str(exc)[:200]})") from None
    if not isinstance(raw, dict):
        raise CaptureError(where, "sidecar", f"expected a JSON object, got {type(raw).__name__}")
    _check_json_limits(raw, where)
    try:
        return Sidecar.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "sidecar"
        msg = err["msg"].removeprefix("Value error, ")
        if not err["loc"] and ": " in msg:  # a whole-model check names its field as "field: message"
            field, msg = msg.split(": ", 1)
        raise CaptureError(where, field, msg[:300]) from None


def validate_capture(
    sidecar: Sidecar, image_bytes: bytes, where: str, accepted_sizes: set[tuple[int, int]] | None = None
) -> np.ndarray:
    """Check the image against its sidecar (hash, dtype, shape, calibration) and return the pixels."""
    if len(image_bytes) > MAX_IMAGE_BYTES:
        raise CaptureError(where, "image", f"{len(image_bytes)} bytes; an image may have at most {MAX_IMAGE_BYTES}")
    # first, so a damaged file is reported as such; its header is checked against the sidecar before decoding
    image = decode_image(image_bytes, where, expected_shape=sidecar.image.shape)
    actual = sha256(image_bytes)
    if actual != sidecar.image.sha256:
        raise CaptureError(
            where,
            "image.sha256",
            f"hash mismatch: sidecar says {sidecar.image.sha256[:12]}..., file has {actual[:12]}...",
        )
    if list(image.shape) != sidecar.image.shape:
        raise CaptureError(where, "image.shape", f"sidecar says {sidecar.image.shape}, file is {list(image.shape)}")
    sizes = ACCEPTED_SIZES if accepted_sizes is None else accepted_sizes
    if sizes and tuple(image.shape[1:]) not in sizes:
        raise CaptureError(
            where,
            "image.shape",
            f"size {image.shape[1]}x{image.shape[2]} not accepted; expected one of {sorted(sizes)}",
        )
    c = image.shape[0]
    if len(sidecar.rig.kvp) != c:
        raise CaptureError(where, "rig.kvp", f"{len(sidecar.rig.kvp)} kVp settings for {c} image channel(s)")
    cal = sidecar.calibration
    if len(cal.dark_adu) != c or len(cal.flat_adu) != c:
        raise CaptureError(where, "calibration", f"expected {c} dark/flat level(s), one per channel")
    if any(f <= d for f, d in zip(cal.flat_adu, cal.dark_adu)):
        raise CaptureError(where, "calibration.flat_adu", "flat level must exceed the dark level")
    return image


def make_sidecar(
    capture_id: str,
    image: np.ndarray,
    image_bytes: bytes,
    fmt: str,
    rig: dict,
    calibration: dict,
    acquired_at: datetime,
    truth: dict | None = None,
    plate_id: str | None = None,
    source: str = "rig",
) -> Sidecar:
    return Sidecar(
        capture_id=capture_id,
        plate_id=plate_id,
        acquired_at=acquired_at,
        image=ImageInfo.model_validate(
            {
                "file": image_file_name(capture_id, fmt),
                "format": fmt,
                "sha256": sha256(image_bytes),
                "shape": list(image.shape),
            }
        ),
        rig=RigInfo(**rig),
        calibration=Calibration(**calibration),
        truth=Truth(**truth) if truth else None,
        source=source,
    )

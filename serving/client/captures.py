"""A capture as the client sends it: read, labelled, decoded, with its calibration and wedge size, checked.

Kept light: decoding a capture loads the library's image codec only (no pydantic, scipy or torch), so a
process that only sends captures starts fast (tests/unit/test_layout.py holds this).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import numpy as np

from serving.client.errors import InvalidCaptureError

Capture = str | Path | bytes | np.ndarray
Calibration = Sequence[Sequence[float]] | np.ndarray


def read(capture: Capture) -> bytes | np.ndarray:
    """A capture file's bytes; bytes and arrays as they are."""
    if isinstance(capture, (str, Path)):
        return Path(capture).read_bytes()
    return capture


def label(capture: Capture, index: int) -> str:
    """How errors name a capture: its path, else its place in the batch and what it is."""
    if isinstance(capture, (str, Path)):
        return str(capture)
    if isinstance(capture, np.ndarray):
        return f"capture {index} (array {list(capture.shape)} {capture.dtype})"
    return f"capture {index} ({len(capture)} bytes)"


def context_of(
    capture: Capture, calibration: Calibration | None = None, wedge_mm: float | None = None
) -> tuple[np.ndarray | None, float | None]:
    """What to send beside ``capture``: its calibration ([[dark, flat], ...] per channel) and wedge size (mm),
    as given, else from the capture's sidecar beside it (``<stem>.json``, as alloynet stores captures), else
    None (the server then says calibration_missing)."""
    cal = None if calibration is None else np.asarray(calibration, dtype=np.float32).reshape(-1, 2)
    if (cal is None or wedge_mm is None) and isinstance(capture, (str, Path)):
        sidecar = Path(capture).with_suffix(".json")
        if sidecar.is_file():
            cal, wedge_mm = _from_sidecar(sidecar, cal, wedge_mm)
    return cal, wedge_mm


def _from_sidecar(
    sidecar: Path, cal: np.ndarray | None, wedge_mm: float | None
) -> tuple[np.ndarray | None, float | None]:
    """``cal`` and ``wedge_mm``, each read from ``sidecar`` where not given. Read without the sidecar schema
    (pydantic, the alloy table): the client needs only these two fields, takes them from partial sidecars too,
    and the servers check their values."""
    try:
        body = json.loads(sidecar.read_text())
        if cal is None:
            c = body["calibration"]
            cal = np.asarray(list(zip(c["dark_adu"], c["flat_adu"])), dtype=np.float32)
        if wedge_mm is None and "rig" in body:
            wedge_mm = float(body["rig"]["wedge_mm"])
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidCaptureError(
            f"sidecar: not readable for calibration and wedge_mm ({exc})", capture=str(sidecar)
        ) from None
    return cal, wedge_mm


def decode(capture: bytes | np.ndarray, shape: Sequence[int] | None = None) -> np.ndarray:
    """PNG/TIFF bytes -> uint16 [C, H, W] with the library's decoder (after checking the size its header
    declares against ``shape``, so a small file claiming a huge image is never decoded); arrays pass through."""
    if isinstance(capture, np.ndarray):
        return capture
    from alloynet.captures.image import CaptureError, decode_image
    from serving.capture_checks import CaptureInputError, check_header

    try:
        if shape is not None:
            check_header(bytes(capture), cast("tuple[int, int, int]", tuple(shape)))
        return decode_image(bytes(capture), where="capture")
    except CaptureInputError as exc:
        raise InvalidCaptureError(str(exc)) from None
    except CaptureError as exc:
        raise InvalidCaptureError(f"{exc.field}: {exc.message}") from None


def wedge(wedge_mm: float | None, capture: str | None) -> np.ndarray:
    """A capture's wedge size as sent: float32 [1] in mm (None: 0 = not known), checked as the servers check it."""
    from serving.capture_checks import CaptureInputError, check_wedge

    try:
        return check_wedge(wedge_mm)
    except CaptureInputError as exc:
        raise InvalidCaptureError(str(exc), capture=capture) from None


IMAGE_DTYPES = (np.uint16, np.float32)  # raw ADU; uint16 -> float32 is exact


def _channels_first(arr: np.ndarray, dims: Sequence[int]) -> np.ndarray:
    return arr[None] if arr.ndim == 2 and dims[0] == 1 else arr


def fits(arr: np.ndarray, dims: Sequence[int]) -> bool:
    """Whether ``arr`` has the model's per-capture shape ``dims`` ([C, H, W]; [H, W] for one channel)."""
    return list(_channels_first(arr, dims).shape) == list(dims)


def check_image(arr: np.ndarray, dims: Sequence[int]) -> np.ndarray:
    """A capture as the model takes it (float32 [C, H, W] = ``dims``), or InvalidCaptureError saying what was
    expected. A [H, W] array counts as one channel."""
    if arr.dtype not in IMAGE_DTYPES:
        raise InvalidCaptureError(f"image.dtype: expected uint16 or float32 raw ADU, got {arr.dtype}")
    arr = _channels_first(arr, dims)
    if arr.ndim == len(dims) + 1 and arr.shape[0] == 0:  # a batch of none, given where one capture goes
        raise InvalidCaptureError(
            f"image.shape: empty batch: expected one capture [C, H, W] = {list(dims)}, got {list(arr.shape)}"
        )
    if list(arr.shape) != list(dims):
        raise InvalidCaptureError(
            f"image.shape: expected [C, H, W] = {list(dims)} (or [H, W] for one channel), got {list(arr.shape)}"
        )
    return np.ascontiguousarray(arr, dtype=np.float32)


def check_calibration(cal: np.ndarray | None, channels: int) -> np.ndarray:
    """The calibration sent with a capture of ``channels`` channels: [C, 2] (zeros: not known)."""
    cal = np.zeros((channels, 2), np.float32) if cal is None else cal
    if cal.shape != (channels, 2):
        raise InvalidCaptureError(
            f"calibration: expected [C, 2] = {[channels, 2]} (dark, flat ADU per channel), got {list(cal.shape)}"
        )
    return cal

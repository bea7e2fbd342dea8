"""Server-side checks on one capture array, shared by the TorchServe handler and the Triton Python model.

Deliberately numpy-only (no alloynet import): the Triton Python backend runs it in its own environment,
and the packagers copy this file into the .mar and the model repository. Decoding PNG/TIFF bytes is the
library's job (``alloynet.captures.format.decode_image``); this only checks what a model may be fed.
"""
from __future__ import annotations

import io

import numpy as np

ACCEPTED_DTYPES = ("uint16", "float32")
MAX_ADU = 65535.0
NPY_MAGIC = b"\x93NUMPY"


class CaptureInputError(ValueError):
    """A request's capture cannot be fed to the model; ``field`` names what is wrong."""

    def __init__(self, field: str, message: str):
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")


def decode_npy(data: bytes) -> np.ndarray:
    """A raw array sent as .npy bytes (never unpickled)."""
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:  # numpy raises ValueError/EOFError/OSError for damaged headers or payloads
        raise CaptureInputError("image", f"corrupt .npy array ({exc})") from None


def check_capture(arr: np.ndarray, shape: tuple[int, int, int], max_adu: float = MAX_ADU) -> np.ndarray:
    """Raw detector image -> float32 [C, H, W], or ``CaptureInputError`` saying what is wrong.

    Accepts uint16 (as captured) or float32 (raw ADU already as floats); [H, W] for one channel.
    """
    if arr.size == 0:
        raise CaptureInputError("image", f"empty array (shape {list(arr.shape)})")
    if arr.dtype.name not in ACCEPTED_DTYPES:
        raise CaptureInputError("image.dtype", f"expected one of {list(ACCEPTED_DTYPES)}, got {arr.dtype.name}")
    if arr.ndim == 2 and shape[0] == 1:
        arr = arr[None]
    if tuple(arr.shape) != tuple(shape):
        raise CaptureInputError("image.shape", f"expected [C, H, W] = {list(shape)}, got {list(arr.shape)}")
    out = np.ascontiguousarray(arr, dtype=np.float32)
    if arr.dtype == np.float32:
        bad = ~np.isfinite(out)
        if bad.any():
            raise CaptureInputError("image", f"{int(bad.sum())} pixel(s) are NaN or infinite")
        if out.min() < 0 or out.max() > max_adu:
            raise CaptureInputError("image", f"pixel values must lie in the detector range [0, {max_adu:g}] ADU, "
                                             f"got [{out.min():g}, {out.max():g}]")
    return out


def check_calibration(cal, channels: int) -> np.ndarray:
    """A capture's calibration -> float32 [C, 2] (dark, flat ADU per channel); ``None`` means not sent and
    becomes zeros (the model then uses its training levels and raises the calibration_missing flag)."""
    if cal is None:
        return np.zeros((channels, 2), np.float32)
    arr = np.asarray(cal, dtype=np.float64)
    if arr.shape == (2,) and channels == 1:
        arr = arr[None]
    if arr.shape != (channels, 2):
        raise CaptureInputError("calibration", f"expected [C, 2] = {[channels, 2]} (dark, flat ADU per channel), "
                                               f"got {list(arr.shape)}")
    if not np.all(np.isfinite(arr)):
        raise CaptureInputError("calibration", "levels must be finite numbers")
    if np.any(arr < 0) or np.any(arr > MAX_ADU):
        raise CaptureInputError("calibration", f"levels must lie in [0, {MAX_ADU:g}] ADU")
    return arr.astype(np.float32)


def check_wedge(wedge) -> np.ndarray:
    """A capture's wedge size -> float32 [1] (mm at the thick end); ``None`` means not sent: zeros (the model
    assumes its training wedge and raises calibration_missing)."""
    if wedge is None:
        return np.zeros((1,), np.float32)
    arr = np.asarray(wedge, dtype=np.float64).reshape(-1)
    if arr.shape != (1,) or not np.isfinite(arr[0]) or not 0 <= arr[0] <= 1000:
        raise CaptureInputError("wedge_mm", f"expected one wedge thickness in mm (0-1000, 0 = unknown), got "
                                            f"{np.asarray(wedge).tolist()}")
    return arr.astype(np.float32)

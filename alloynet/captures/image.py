"""The pixels of a capture: 16-bit PNG (one channel) or TIFF (several), to and from uint16 [C, H, W].

Kept free of the sidecar schema (pydantic) and of the physics: the serving client and the model servers
decode captures with this module alone, and must start fast.
"""
from __future__ import annotations

import hashlib
import io

import numpy as np
from PIL import Image


class CaptureError(ValueError):
    """A capture failed validation; ``where`` names the file and ``field`` the offending field."""

    def __init__(self, where: str, field: str, message: str):
        self.where, self.field, self.message = where, field, message
        super().__init__(f"{where}: {field}: {message}")


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

"""What a server checks of a request before the model sees it: that it decodes, and its shape and dtype. The
values (non-finite pixels, the detector range, calibration and wedge size) are the exported graph's to check:
it names a bad capture by its status (``alloynet.contract.STATUSES``), the same on every server.

Deliberately numpy-only (no alloynet import): the packagers copy this file into the .mar. Decoding PNG/TIFF bytes
is the library's job (``alloynet.captures.image.decode_image``).
"""

from __future__ import annotations

import ast
import io
import struct
from collections.abc import Sequence

import numpy as np

ACCEPTED_DTYPES = ("uint16", "float32")
NPY_MAGIC = b"\x93NUMPY"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TIFF_MAGICS = (b"II*\x00", b"MM\x00*")
MAX_TIFF_PAGES = 256


class CaptureInputError(ValueError):
    """A request's capture cannot be fed to the model; ``field`` names what is wrong."""

    def __init__(self, field: str, message: str):
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")


def _tiff_shape(data: bytes) -> tuple[int, int, int]:
    """[C, H, W] of a classic TIFF from its IFD chain (one page per channel, as alloynet writes them, or one
    page of several samples), without touching the pixel data."""
    order = "<" if data[:2] == b"II" else ">"

    def u(fmt: str, at: int):
        if at < 0 or at + struct.calcsize(fmt) > len(data):
            raise CaptureInputError("image", "corrupt TIFF header (an offset points past the end of the data)")
        return struct.unpack_from(order + fmt, data, at)[0]

    offset, pages, dims, samples = u("I", 4), 0, None, 1
    seen = set()
    while offset:
        if offset in seen or pages >= MAX_TIFF_PAGES:
            raise CaptureInputError("image", f"TIFF with a looping or over-long page chain (> {MAX_TIFF_PAGES} pages)")
        seen.add(offset)
        n, tags = u("H", offset), {}
        for i in range(n):
            at = offset + 2 + 12 * i
            tag, typ = u("H", at), u("H", at + 2)
            if tag in (256, 257, 277):  # ImageWidth, ImageLength, SamplesPerPixel: SHORT or LONG
                tags[tag] = u("H", at + 8) if typ == 3 else u("I", at + 8)
        if 256 not in tags or 257 not in tags:
            raise CaptureInputError("image", "corrupt TIFF header (a page without width or height)")
        page = (tags[257], tags[256])
        if dims is not None and page != dims:
            raise CaptureInputError("image.shape", f"TIFF pages of different sizes ({list(dims)} and {list(page)})")
        dims, samples, pages = page, tags.get(277, 1), pages + 1
        offset = u("I", offset + 2 + 12 * n)
    if dims is None:
        raise CaptureInputError("image", "corrupt TIFF header (no pages)")
    return (pages * samples if pages > 1 else samples, *dims)


def header_shape(data: bytes):
    """The [C, H, W] a PNG/TIFF/.npy capture declares in its header, read without decoding its pixels (so a
    small file claiming 10000 x 10000 px costs nothing); None for anything else (the decoder says why)."""
    try:
        if data[:8] == PNG_MAGIC:
            if len(data) < 24 or data[12:16] != b"IHDR":
                raise CaptureInputError("image", "corrupt or truncated PNG (no IHDR header)")
            width, height = struct.unpack(">II", data[16:24])
            return (1, height, width)
        if data[:4] in TIFF_MAGICS:
            return _tiff_shape(data)
        if data[:6] == NPY_MAGIC:
            major = data[6]
            size_fmt, start = ("<H", 10) if major == 1 else ("<I", 12)
            header_len = struct.unpack_from(size_fmt, data, 8)[0]
            header = ast.literal_eval(data[start : start + header_len].decode("latin-1"))
            shape = tuple(int(d) for d in header["shape"])
            return (1, *shape) if len(shape) == 2 else shape
    except CaptureInputError:
        raise
    except Exception as exc:  # struct.error, SyntaxError, KeyError, ...: the header itself is damaged
        kind = {b"\x93": "corrupt .npy array", b"\x89": "corrupt or truncated PNG"}.get(data[:1], "corrupt TIFF")
        raise CaptureInputError("image", f"{kind} (unreadable header: {exc.__class__.__name__})") from None
    return None


def _empty(shape: Sequence[int]) -> str:
    """What an array with no values is called: a batch [B, C, H, W] of none, or an empty image."""
    return "empty batch" if len(shape) == 4 and shape[0] == 0 else "empty array"


def check_header(data: bytes, shape: tuple[int, int, int]) -> None:
    """Refuse, before decoding, a capture whose header declares another size than the model's [C, H, W]."""
    declared = header_shape(data)
    if declared is not None and 0 in declared:
        raise CaptureInputError("image", f"{_empty(declared)} (shape {list(declared)})")
    if declared is not None and tuple(declared) != tuple(shape):
        kind = "PNG" if data[:8] == PNG_MAGIC else ("TIFF" if data[:4] in TIFF_MAGICS else ".npy array")
        raise CaptureInputError(
            "image.shape",
            f"the {kind} declares [C, H, W] = {list(declared)} "
            f"({int(np.prod(declared, dtype=np.int64)):,} values); the model takes "
            f"{list(shape)}: refused before decoding",
        )


def decode_npy(data: bytes) -> np.ndarray:
    """A raw array sent as .npy bytes (never unpickled)."""
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:  # numpy raises ValueError/EOFError/OSError for damaged headers or payloads
        raise CaptureInputError("image", f"corrupt .npy array ({exc})") from None


def check_capture(arr: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Raw detector image -> float32 [C, H, W], or ``CaptureInputError`` for a size or dtype the model cannot
    take. Accepts uint16 (as captured) or float32 (raw ADU already as floats); [H, W] for one channel."""
    if arr.size == 0:
        raise CaptureInputError("image", f"{_empty(arr.shape)} (shape {list(arr.shape)})")
    if arr.dtype.name not in ACCEPTED_DTYPES:
        raise CaptureInputError("image.dtype", f"expected one of {list(ACCEPTED_DTYPES)}, got {arr.dtype.name}")
    if arr.ndim == 2 and shape[0] == 1:
        arr = arr[None]
    if tuple(arr.shape) != tuple(shape):
        raise CaptureInputError("image.shape", f"expected [C, H, W] = {list(shape)}, got {list(arr.shape)}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def check_calibration(cal, channels: int) -> np.ndarray:
    """A capture's calibration -> float32 [C, 2] (dark, flat ADU per channel); ``None`` means not sent and
    becomes zeros (the graph's status says so)."""
    if cal is None:
        return np.zeros((channels, 2), np.float32)
    try:
        arr = np.asarray(cal, dtype=np.float64)
    except (TypeError, ValueError):
        raise CaptureInputError(
            "calibration", f"expected numbers [[dark, flat], ...] per channel, got {cal!r}"
        ) from None
    if arr.shape == (2,) and channels == 1:
        arr = arr[None]
    if arr.shape != (channels, 2):
        raise CaptureInputError(
            "calibration", f"expected [C, 2] = {[channels, 2]} (dark, flat ADU per channel), got {list(arr.shape)}"
        )
    return arr.astype(np.float32)


def check_wedge(wedge) -> np.ndarray:
    """A capture's wedge size -> float32 [1] (mm at the thick end); ``None`` means not sent: zeros (the graph's
    status says so)."""
    if wedge is None:
        return np.zeros((1,), np.float32)
    try:
        arr = np.asarray(wedge, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        arr = np.zeros((0,))
    if arr.shape != (1,):
        raise CaptureInputError("wedge_mm", f"expected one wedge thickness in mm, got {wedge!r}")
    return arr.astype(np.float32)

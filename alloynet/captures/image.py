"""The pixels of a capture: 16-bit PNG (one channel) or TIFF (several), to and from uint16 [C, H, W].

Kept free of the sidecar schema (pydantic) and of the physics: the serving client and the model servers
decode captures with this module alone, and must start fast.

Decoding is bounded: the header is read first (PNG's IHDR, TIFF's tags, without touching pixel data) and an
image that declares more pixels or pages than the limits, or another shape than the caller expects (the
sidecar's), is refused before anything is allocated. A few hundred compressed bytes can declare gigabytes.
"""

from __future__ import annotations

import hashlib
import io
import struct
from collections.abc import Sequence

import numpy as np
from PIL import Image

MAX_PIXELS = 64 * 1024 * 1024  # per image, all channels: 128 MB of uint16 once decoded
MAX_PAGES = 16  # TIFF pages (one per channel); a capture has at most 8 channels
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TIFF_MAGIC = (b"II*\x00", b"MM\x00*")
_PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel


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


def image_shape(data: bytes, where: str = "<bytes>", limit: bool = True) -> tuple[int, ...]:
    """The shape the image declares, as ``decode_image`` would return it ([C, H, W] for a capture), read from
    its header alone; refuses (``CaptureError``) a TIFF of more than ``MAX_PAGES`` pages and, with ``limit``,
    an image of more than ``MAX_PIXELS`` pixels."""
    if not data:
        raise CaptureError(where, "image", "file is empty")
    if data[:8] == PNG_MAGIC:
        if len(data) < 33 or data[12:16] != b"IHDR":
            raise CaptureError(where, "image", "corrupt or truncated PNG (no IHDR header)")
        w, h, _depth, colour = struct.unpack(">IIBB", data[16:26])
        shape: tuple[int, ...] = (1, h, w) if _PNG_SAMPLES.get(colour, 1) == 1 else (h, w, _PNG_SAMPLES[colour])
    elif data[:4] in TIFF_MAGIC:
        shape = _tiff_shape(data, where)
    else:
        raise CaptureError(where, "image", "not a PNG or TIFF file (bad magic bytes)")
    if limit:
        _check_limit(shape, where)
    return shape


def _check_limit(shape: tuple[int, ...], where: str) -> None:
    n = int(np.prod(shape, dtype=np.int64))
    if n > MAX_PIXELS or min(shape) < 1:
        raise CaptureError(
            where, "image", f"image declares {'x'.join(map(str, shape))} = {n} pixels; at most {MAX_PIXELS} are decoded"
        )


def _tiff_shape(data: bytes, where: str) -> tuple[int, ...]:
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            shapes = []
            for i in range(MAX_PAGES + 1):  # never walks more IFDs than that, however many the file chains
                try:
                    page = tif.pages[i]
                except IndexError:
                    break
                shapes.append(tuple(int(x) for x in page.shape))
    except Exception as exc:  # tifffile raises several types for damaged headers
        raise CaptureError(where, "image", f"corrupt or truncated TIFF ({str(exc)[:200]})") from None
    if len(shapes) > MAX_PAGES:
        raise CaptureError(where, "image", f"TIFF declares more than {MAX_PAGES} pages")
    if not shapes:
        raise CaptureError(where, "image", "TIFF has no pages")
    if len(set(shapes)) > 1:
        raise CaptureError(where, "image", f"TIFF pages differ in shape: {sorted(set(shapes))[:3]}")
    page_shape = shapes[0]
    if len(shapes) == 1:
        return (1, *page_shape) if len(page_shape) == 2 else page_shape
    return (len(shapes), *page_shape)


def check_shape(declared: Sequence[int], expected: Sequence[int], where: str) -> None:
    """Refuse an image whose declared [C, H, W] is not the expected one (the sidecar's), naming both."""
    declared, expected = tuple(declared), tuple(expected)
    if declared == expected:
        return
    if len(declared) == 3 and len(expected) == 3 and declared[1:] != expected[1:]:
        raise CaptureError(
            where,
            "image.shape",
            f"image declares {declared[1]}x{declared[2]} px, sidecar says {expected[1]}x{expected[2]}",
        )
    if len(declared) == 3 and len(expected) == 3:
        raise CaptureError(where, "image.shape", f"image declares {declared[0]} channel(s), sidecar says {expected[0]}")
    raise CaptureError(where, "image.shape", f"image declares shape {list(declared)}, sidecar says {list(expected)}")


def decode_image(data: bytes, where: str = "<bytes>", expected_shape: Sequence[int] | None = None) -> np.ndarray:
    """Bytes of a 16-bit PNG or TIFF -> uint16 [C, H, W]; clear errors for anything else.

    The header is checked first (``image_shape``; and against ``expected_shape`` when given), so nothing
    larger than the limits, or than the caller expects, is ever decoded."""
    declared = image_shape(data, where, limit=False)
    if expected_shape is not None:  # first: "declares 12000x12000 px, sidecar says 64x64" says the most
        check_shape(declared, expected_shape, where)
    _check_limit(declared, where)
    if data[:8] == PNG_MAGIC:
        try:
            with Image.open(io.BytesIO(data)) as im:
                if tuple(im.size) != (declared[-1], declared[-2]) and len(declared) == 3 and declared[0] == 1:
                    raise ValueError(f"size {im.size} disagrees with the IHDR header")
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
    import tifffile

    try:  # page by page, exactly the pages whose shapes were checked
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            n = 1 if len(declared) == 3 and declared[0] == 1 else declared[0]
            pages = [tif.pages[i] for i in range(n)] if len(tif.pages[0].shape) == 2 else [tif.pages[0]]
            if any(p.dtype != np.uint16 for p in pages):
                raise CaptureError(where, "image", f"expected uint16 pixels, got {pages[0].dtype}")
            arrs = [p.asarray() for p in pages]
    except CaptureError:
        raise
    except Exception as exc:
        raise CaptureError(where, "image", f"corrupt or truncated TIFF ({exc})") from None
    arr = arrs[0] if len(arrs) == 1 else np.stack(arrs)
    return arr[None] if arr.ndim == 2 else arr

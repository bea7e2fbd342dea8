"""Pixels of a lab's files: decoding source images, their size from the header, and each file's dark and flat
(a CSV value, the nearest frame file, reference frames, or the levels given as settings)."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alloynet.captures.importing.settings import ImportSettings
from alloynet.physics import measure

FRAME_NAMES = ("dark", "flat")
_PNG = b"\x89PNG\r\n\x1a\n"
_TIFF = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_JPEG = b"\xff\xd8\xff"
JPEG_MESSAGE = "8-bit JPEG: lossy, not a detector image"

CalSource = tuple[float, ...] | Path  # levels per channel, or a frame file


class SourceImageError(ValueError):
    """A file that is not a usable detector image; ``problem`` is the kind (for grouping), the message the detail."""

    def __init__(self, problem: str, detail: str = "", fix: str = ""):
        self.problem, self.detail, self.fix = problem, detail, fix
        super().__init__(f"{problem}: {detail}" if detail else problem)


def _to_uint16(arr: np.ndarray, what: str) -> tuple[np.ndarray, int]:
    if arr.ndim != 2:
        raise SourceImageError("not single-channel grayscale", f"{what} has shape {list(arr.shape)}")
    if arr.dtype == np.uint16 or arr.dtype == np.dtype(">u2"):
        return arr.astype(np.uint16, copy=False), 16
    if arr.dtype == np.uint8:
        return arr.astype(np.uint16), 8
    if arr.dtype.kind in "iu" and arr.size and 0 <= arr.min() and arr.max() <= np.iinfo(np.uint16).max:
        return arr.astype(np.uint16), 16  # Pillow's 32-bit "I" mode for a 16-bit PNG
    raise SourceImageError("not 16-bit unsigned integer pixels", f"{what} has {arr.dtype} pixels")


def _check_header(data: bytes) -> None:
    """Refuse an image whose header declares more pixels or pages than a capture may have, before any pixel
    is decoded: a small compressed file can declare gigabytes."""
    from alloynet.captures.image import CaptureError, image_shape

    try:
        image_shape(data, "the image")
    except CaptureError as exc:
        raise SourceImageError("unreadable image", exc.message) from None


def read_source_image(data: bytes) -> tuple[np.ndarray, int]:
    """A lab's image file -> (uint16 [C, H, W], bits per pixel of the file: 8 or 16). A multi-page TIFF
    gives one channel per page. Raises ``SourceImageError`` saying what is wrong with the file."""
    if not data:
        raise SourceImageError("unreadable image", "file is empty")
    if data[:3] == _JPEG:
        raise SourceImageError(JPEG_MESSAGE, fix="export the detector's 16-bit TIFF or PNG")
    if data[:8] == _PNG or data[:4] in _TIFF:
        _check_header(data)
    if data[:8] == _PNG:
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                mode, arr = im.mode, np.asarray(im)
        except Exception as exc:  # Pillow raises several types for damaged files
            raise SourceImageError(
                "unreadable image", f"corrupt or truncated PNG ({str(exc).split(' <')[0]})"
            ) from None
        if mode not in ("I;16", "I;16L", "I;16B", "I", "L"):
            raise SourceImageError("not single-channel grayscale", f"PNG of mode {mode!r}; expected 16-bit grayscale")
        pixels, bits = _to_uint16(arr, "the PNG")
        return pixels[None], bits
    if data[:4] in _TIFF:
        import tifffile

        try:
            with tifffile.TiffFile(io.BytesIO(data)) as tif:
                pages = [p.asarray() for p in tif.pages]
        except Exception as exc:
            raise SourceImageError(
                "unreadable image", f"corrupt or truncated TIFF ({' '.join(str(exc).split())[:200]})"
            ) from None
        if not pages:
            raise SourceImageError("unreadable image", "TIFF without pages")
        converted = [_to_uint16(p, f"page {i + 1}") for i, p in enumerate(pages)]
        if len({c[0].shape for c in converted}) > 1:
            raise SourceImageError(
                "unreadable image", f"pages of different sizes {sorted({c[0].shape for c in converted})}"
            )
        return np.stack([c[0] for c in converted]), min(c[1] for c in converted)
    raise SourceImageError("unreadable image", "not a PNG or TIFF file (bad magic bytes)")


def probe_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file's header only: sizes are compared before any pixels are decoded."""
    with open(path, "rb") as f:
        head = f.read(8)
    if head[:3] == _JPEG:
        raise SourceImageError(JPEG_MESSAGE, fix="export the detector's 16-bit TIFF or PNG")
    try:
        if head[:4] in _TIFF:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                shape = tif.pages[0].shape
            return int(shape[0]), int(shape[1])
        if head == _PNG:
            from PIL import Image

            with Image.open(path) as im:
                return im.size[1], im.size[0]
    except Exception as exc:
        raise SourceImageError("unreadable image", f"corrupt header ({' '.join(str(exc).split())[:200]})") from None
    raise SourceImageError(
        "unreadable image", "file is empty" if not head else "not a PNG or TIFF file (bad magic bytes)"
    )


def frame_level(frame: np.ndarray, bits: int) -> list[float]:
    """Per channel: the mean without dead (0) and saturated pixels (``measure.frame_level`` at the file's bit
    depth), to the 3 decimals a sidecar records."""
    return [round(v, 3) for v in measure.frame_level(frame, (1 << bits) - 1)]


def session_id(identity: list) -> str:
    """A calibration session named by its content (the frames' hashes or the levels): the same dark and flat
    always give the same session, so a re-run writes nothing new."""
    return "imp-" + hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]


@dataclass
class Frame:
    sha256: str  # of the source file: the frame's identity in the session id
    pixels: np.ndarray  # uint16 [C, H, W]
    levels: list[float]
    bits: int


class LevelsMissing(ValueError):
    """A file has no dark and/or flat; ``names`` says which, for one grouped message."""

    def __init__(self, names: list[str]):
        self.names = names
        super().__init__(f"no {' and no '.join(names)} level or frame")


class FrameFinder:
    """Finds each file's dark and flat (CSV row, nearest frame file, reference frames, settings levels) and
    loads frames once."""

    def __init__(
        self,
        root: Path,
        frames: dict[Path, dict[str, list[Path]]],
        settings: ImportSettings,
        warn: Callable[[Path, str], None],
    ):
        self.root, self.frames, self.settings, self.warn = root, frames, settings, warn
        self._loaded: dict[Path, Frame | str] = {}

    def nearest(self, path: Path, name: str) -> Path | None:
        d = path.parent
        while True:
            found = self.frames.get(d, {}).get(name, [])
            if len(found) > 1:
                raise ValueError(
                    f"calibration: {len(found)} {name} frames in {d} ({', '.join(p.name for p in found)}); keep one"
                )
            if found or d == self.root or d == d.parent:
                return found[0] if found else None
            d = d.parent

    def load(self, path: Path) -> Frame:
        if path not in self._loaded:
            try:
                data = path.read_bytes()
                pixels, bits = read_source_image(data)
                if bits == 8 and not self.settings.allow_8bit:
                    raise ValueError("an 8-bit frame (--allow-8bit to accept 8-bit images)")
                self._loaded[path] = Frame(hashlib.sha256(data).hexdigest(), pixels, frame_level(pixels, bits), bits)
            except (OSError, ValueError) as exc:
                self._loaded[path] = f"calibration: frame {path} unusable: {getattr(exc, 'strerror', None) or exc}"
        frame = self._loaded[path]
        if isinstance(frame, str):
            raise ValueError(frame)
        return frame

    def resolve(
        self,
        path: Path,
        shape: tuple[int, ...],
        given: Mapping[str, CalSource | None],
        fallback: dict[str, Path] | None = None,
        fallback_first: bool = True,
    ) -> tuple[dict, dict[str, Frame]]:
        """(the sidecar's calibration, the frames used by name). ``given``: the CSV row's dark/flat;
        ``fallback``: frames that apply when no nearer one does (a reference session's), before the levels of
        the settings or (``fallback_first`` False) after them. Raises
        ``LevelsMissing`` naming every missing one, ``ValueError`` for a frame that does not fit."""
        sources: dict[str, CalSource] = {}
        missing = []
        for name in FRAME_NAMES:
            level = getattr(self.settings, f"{name}_level")
            later = [(fallback or {}).get(name), tuple(level) if level else None]
            if not fallback_first:
                later.reverse()
            src = given.get(name) or self.nearest(path, name) or later[0] or later[1]
            if src is None:
                missing.append(name)
            else:
                sources[name] = src
        if missing:
            raise LevelsMissing(missing)
        levels: dict[str, list[float]] = {}
        frames: dict[str, Frame] = {}
        identity: list[str | list[float]] = []
        for name, src in sources.items():
            if isinstance(src, Path):
                frame = self.load(src)
                if frame.pixels.shape != tuple(shape):
                    raise ValueError(
                        f"calibration: {name} frame {src} is {'x'.join(map(str, frame.pixels.shape))} "
                        f"(CxHxW), the image is {'x'.join(map(str, shape))}"
                    )
                frames[name], levels[name] = frame, frame.levels
                identity.append(frame.sha256)
            else:
                levels[name] = list(src)
                identity.append(levels[name])
        return {"session": session_id(identity), "dark_adu": levels["dark"], "flat_adu": levels["flat"]}, frames

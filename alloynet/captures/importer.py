"""`alloynet import`: turn the layouts labs actually have into captures + sidecars in a capture store.

Two layouts (paths relative to ROOT; image files are .tif, .tiff or .png, any case):

    ImageFolder   ROOT/[train|val|test/]CLASS/[any sub-folders/]*.tif
                  CLASS is an alloy: ``Al1050`` or ``1050`` (any case), or an alloy added by config.
    labels CSV    a CSV with columns ``file, alloy`` and optionally ``thickness_mm, plate_id, wedge_mm, kvp,
                  dark, flat``; ``file`` is relative to ROOT. Every other image under ROOT is reported.

Rig settings (``kvp``, ``wedge_mm``, ``dose``, ``pixel_size_mm``, any sidecar ``rig`` field) come from a YAML
file and/or options; CSV columns override them per file. A multi-page TIFF holds one page per kVp.

Calibration, for dark and for flat separately, first found wins:
  1. the CSV row's ``dark`` / ``flat``: a level (``1000`` or ``1000;980`` per channel) or a frame file
     relative to ROOT;
  2. a frame file ``dark.tif|tiff|png`` / ``flat.…`` in the image's own folder, else its parent, up to ROOT
     (the nearest folder wins: a session folder's frames beat the root's);
  3. the levels given as options or in the YAML (``dark_level``, ``flat_level``: one value per channel).
A frame's level is its mean per channel without dead (0) and saturated (65535) pixels, as the simulator
computes it; frames are stored beside the captures as ``calibration/<session>/dark.png|tiff``, the session
id derived from the frames' and levels' content.

Pixels are kept as they are (8-bit images too, not rescaled, so levels given in the file's units stay
valid); an 8-bit image is imported with a loud warning: its quantisation discards most of the signal.

Capture ids derive from the source path relative to ROOT and the file's sha256 (``imp-<path>-<hash>``), so a
re-run writes nothing new and reports the captures as already present, and a changed file becomes a new
capture beside the old one: nothing stored is ever overwritten (writes go through ``store_capture``).
A file already imported under other labels or settings is rejected as a conflict; the stored one is kept.

Every file that cannot be imported is reported with its path and the reason; nothing is dropped silently.
All images of one import must share one size: the most common one is taken, the others are rejected.
The split folder is recorded in the sidecar's ``source`` (``import train/Al1050/a.tif``) and returned in
``ImportResult.splits`` for the manifest (the sidecar schema has no split field).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Callable, Optional, Union

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from alloynet.captures.format import MAX_STRING, RigInfo, Sidecar, make_sidecar, parse_sidecar, validate_capture
from alloynet.captures.image import CaptureError, encode_image
from alloynet.captures.ingest import store_capture
from alloynet.captures.layout import CAPTURES, sidecar_key
from alloynet.captures.stores import LocalStore, ObjectExists, ObjectStore, object_path, writer_lock
from alloynet.physics.alloys import ALLOYS, alloys_from_config

IMAGE_SUFFIXES = (".tif", ".tiff", ".png")
SPLITS = ("train", "val", "test")
FRAME_NAMES = ("dark", "flat")
CSV_REQUIRED = ("file", "alloy")
CSV_OPTIONAL = ("thickness_mm", "plate_id", "wedge_mm", "kvp", "dark", "flat")
UNKNOWN_CLASS = "(unknown)"
EIGHT_BIT_WARNING = ("8-bit image: quantisation to 256 levels discards most of the attenuation signal; "
                     "import the detector's 16-bit output if you can (pixel values kept as they are)")


class ImportUsageError(ValueError):
    """A bad option, YAML or CSV header: nothing can be imported until it is fixed (exit code 2)."""


class ImportSettings(BaseModel):
    """What applies to every file unless its CSV row says otherwise: the ``--rig`` YAML, then options."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    rig: dict[str, Any] = Field(default_factory=dict, description="sidecar rig fields: kvp, wedge_mm, dose, ...")
    thickness_mm: Optional[float] = Field(None, gt=0, description="plate thickness (mm) of every file without its own")
    dark_level: Optional[list[Annotated[float, Field(ge=0)]]] = Field(None, min_length=1, description="ADU per channel")
    flat_level: Optional[list[Annotated[float, Field(gt=0)]]] = Field(None, min_length=1, description="ADU per channel")
    custom_alloys: dict[str, dict] = Field(default_factory=dict, description="extra alloys, see alloys_from_config")


def _validation_message(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    got = err.get("input")
    got = f", got {got!r}" if isinstance(got, (int, float, str)) and len(repr(got)) < 80 else ""
    return f"{loc}: {err['msg'].removeprefix('Value error, ')}{got}"


def load_settings(rig_yaml: Optional[Path] = None, **overrides: Any) -> ImportSettings:
    """The YAML (if any) with the options that were given on top. ``kvp``, ``wedge_mm``, ``dose``,
    ``pixel_size_mm`` (and any other sidecar rig field) go to ``rig``; ``thickness_mm``, ``dark_level``,
    ``flat_level`` and ``custom_alloys`` stay top-level. Errors name the file (or "options") and field."""
    raw: dict[str, Any] = {}
    if rig_yaml is not None:
        try:
            raw = yaml.safe_load(Path(rig_yaml).read_text()) or {}
        except OSError as exc:
            raise ImportUsageError(f"{rig_yaml}: cannot read ({exc.strerror or exc})") from None
        except yaml.YAMLError as exc:
            raise ImportUsageError(f"{rig_yaml}: not valid YAML ({' '.join(str(exc).split())})") from None
        if not isinstance(raw, dict):
            raise ImportUsageError(f"{rig_yaml}: expected a mapping (rig: {{kvp: [50], wedge_mm: 50}}, thickness_mm, "
                                   f"dark_level, flat_level, custom_alloys), got {type(raw).__name__}")
    top = {"thickness_mm", "dark_level", "flat_level", "custom_alloys"}
    given = {k: v for k, v in overrides.items() if v is not None}
    where = str(rig_yaml) if rig_yaml else "options"
    try:
        settings = ImportSettings.model_validate(raw)
        rig = {**settings.rig, **{k: v for k, v in given.items() if k not in top}}
        settings = ImportSettings.model_validate({**settings.model_dump(), "rig": rig,
                                                  **{k: v for k, v in given.items() if k in top}})
        # every rig field given must be valid already; kvp and wedge_mm may still come per file (CSV)
        RigInfo.model_validate({"kvp": [1.0], "wedge_mm": 1.0, **settings.rig})
    except ValidationError as exc:
        field = _validation_message(exc)
        if exc.title == "RigInfo":
            field = "rig." + field
        raise ImportUsageError(f"{where}: {field}") from None
    try:
        alloys_from_config(settings.custom_alloys)
    except ValueError as exc:
        raise ImportUsageError(f"{where}: custom_alloys: {exc}") from None
    return settings


# ---- reading source images -------------------------------------------------------------------------
_PNG = b"\x89PNG\r\n\x1a\n"
_TIFF = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _to_uint16(arr: np.ndarray, what: str) -> tuple[np.ndarray, int]:
    if arr.ndim != 2:
        raise ValueError(f"{what} has shape {list(arr.shape)}; expected single-channel grayscale")
    if arr.dtype == np.uint16 or arr.dtype == np.dtype(">u2"):
        return arr.astype(np.uint16, copy=False), 16
    if arr.dtype == np.uint8:
        return arr.astype(np.uint16), 8
    if arr.dtype.kind in "iu" and arr.size and 0 <= arr.min() and arr.max() <= 65535:
        return arr.astype(np.uint16), 16  # Pillow's 32-bit "I" mode for a 16-bit PNG
    raise ValueError(f"{what} has {arr.dtype} pixels; expected 16-bit unsigned integers")


def read_source_image(data: bytes) -> tuple[np.ndarray, int]:
    """A lab's image file -> (uint16 [C, H, W], bits per pixel of the file: 8 or 16). A multi-page TIFF
    gives one channel per page. Raises ``ValueError`` saying what is wrong with the file."""
    if not data:
        raise ValueError("file is empty")
    if data[:8] == _PNG:
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                mode, arr = im.mode, np.asarray(im)
        except Exception as exc:  # Pillow raises several types for damaged files
            raise ValueError(f"corrupt or truncated PNG ({str(exc).split(' <')[0]})") from None
        if mode not in ("I;16", "I;16L", "I;16B", "I", "L"):
            raise ValueError(f"PNG of mode {mode!r}; expected single-channel 16-bit grayscale")
        pixels, bits = _to_uint16(arr, "the PNG")
        return pixels[None], bits
    if data[:4] in _TIFF:
        import tifffile

        try:
            with tifffile.TiffFile(io.BytesIO(data)) as tif:
                pages = [p.asarray() for p in tif.pages]
        except Exception as exc:
            raise ValueError(f"corrupt or truncated TIFF ({' '.join(str(exc).split())[:200]})") from None
        if not pages:
            raise ValueError("TIFF without pages")
        converted = [_to_uint16(p, f"page {i + 1}") for i, p in enumerate(pages)]
        if len({c[0].shape for c in converted}) > 1:
            raise ValueError(f"pages of different sizes {sorted({c[0].shape for c in converted})}")
        return np.stack([c[0] for c in converted]), min(c[1] for c in converted)
    raise ValueError("not a PNG or TIFF file (bad magic bytes)")


def probe_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file's header only: sizes are compared before any pixels are decoded."""
    with open(path, "rb") as f:
        head = f.read(8)
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
        raise ValueError(f"corrupt header ({' '.join(str(exc).split())[:200]})") from None
    raise ValueError("file is empty" if not head else "not a PNG or TIFF file (bad magic bytes)")


def frame_level(frame: np.ndarray, bits: int) -> list[float]:
    """Per channel: the mean without dead (0) and saturated pixels, as ``RigSimulator.frame_level``."""
    top = (1 << bits) - 1
    out = []
    for i, ch in enumerate(frame):
        good = ch[(ch > 0) & (ch < top)]
        if good.size == 0:
            raise ValueError(f"channel {i + 1} has no pixel between 0 and {top} (all dead or saturated)")
        out.append(round(float(good.mean()), 3))
    return out


# ---- what to import --------------------------------------------------------------------------------
CalSource = Union[tuple[float, ...], Path]  # levels per channel, or a frame file


@dataclass
class SourceFile:
    path: Path
    rel: str                              # posix path relative to ROOT
    alloy: str
    split: Optional[str] = None
    thickness_mm: Optional[float] = None  # None: the settings' thickness
    plate_id: Optional[str] = None
    rig: dict = field(default_factory=dict)  # per-file rig fields (CSV columns)
    dark: Optional[CalSource] = None
    flat: Optional[CalSource] = None
    where: str = ""                       # "labels.csv line 4: " for messages about CSV values


@dataclass(frozen=True)
class Reject:
    path: str
    reason: str
    alloy: str = UNKNOWN_CLASS


@dataclass
class ImportResult:
    imported: dict[str, str] = field(default_factory=dict)   # capture id -> alloy
    present: dict[str, str] = field(default_factory=dict)    # already in the store, same labels and settings
    rejected: list[Reject] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)        # "path: message"
    splits: dict[str, str] = field(default_factory=dict)     # plate id -> split folder (train/val/test)
    sessions: list[str] = field(default_factory=list)        # calibration sessions whose frames were stored

    @property
    def usable(self) -> bool:
        """Something from the source is in the store now (the exit-code rule of `alloynet import`)."""
        return bool(self.imported or self.present)

    def per_class(self) -> list[tuple[str, int, int, int]]:
        """(alloy, imported, already present, rejected), alloys sorted, files of unknown class last."""
        rows: dict[str, list[int]] = {}
        for i, d in enumerate((self.imported, self.present)):
            for alloy in d.values():
                rows.setdefault(alloy, [0, 0, 0])[i] += 1
        for r in self.rejected:
            rows.setdefault(r.alloy, [0, 0, 0])[2] += 1
        order = sorted(rows, key=lambda a: (a == UNKNOWN_CLASS, a))
        return [(a, *rows[a]) for a in order]

    def summary(self) -> str:
        return f"{len(self.imported)} imported, {len(self.present)} already present, {len(self.rejected)} rejected"


def resolve_alloy(name: str) -> Optional[str]:
    """``Al1050``, ``al1050``, ``1050`` -> ``Al1050``; an alloy added by config too; else None."""
    key = re.sub(r"[\s_-]", "", name).lower()
    for alloy in ALLOYS:
        a = alloy.lower()
        if key == a or "al" + key == a:
            return alloy
    return None


def _unknown_alloy(name: str, what: str) -> str:
    return (f"unknown {what} {name!r}: expected an alloy such as Al1050 or 1050 (known: {', '.join(sorted(ALLOYS))}; "
            "add others with custom_alloys in the --rig YAML or --alloys)")


def _walk(root: Path, skip: set[Path]) -> tuple[list[Path], list[Path], dict[Path, dict[str, list[Path]]]]:
    """Images, other files, and the dark/flat frames of each folder, in a stable order."""
    images, others = [], []
    frames: dict[Path, dict[str, list[Path]]] = {}
    for dirpath, dirs, files in os.walk(root):
        d = Path(dirpath)
        dirs[:] = sorted(x for x in dirs if d / x not in skip)
        for name in sorted(files):
            p = d / name
            if p in skip:
                continue
            stem, suffix = os.path.splitext(name)
            if suffix.lower() not in IMAGE_SUFFIXES:
                others.append(p)
            elif stem.lower() in FRAME_NAMES:
                frames.setdefault(d, {}).setdefault(stem.lower(), []).append(p)
            else:
                images.append(p)
    return images, others, frames


def plan_image_folder(root: Path, images: list[Path], others: list[Path]) -> tuple[list[SourceFile], list[Reject]]:
    items, rejects = [], []
    for p in images:
        split, class_dir = _split_and_class(root, p)
        if class_dir is None:
            rejects.append(Reject(str(p), "not inside a class folder (expected ROOT/[train|val|test/]CLASS/FILE)"))
        elif resolve_alloy(class_dir) is None:
            rejects.append(Reject(str(p), _unknown_alloy(class_dir, "class folder")))
        else:
            items.append(SourceFile(p, p.relative_to(root).as_posix(), resolve_alloy(class_dir), split))
    for p in others:  # counted under the class of their folder, where there is one
        alloy = resolve_alloy(_split_and_class(root, p)[1] or "") or UNKNOWN_CLASS
        rejects.append(Reject(str(p), "not an image file (expected .tif, .tiff or .png)", alloy))
    return items, rejects


def _split_and_class(root: Path, p: Path) -> tuple[Optional[str], Optional[str]]:
    dirs = list(p.relative_to(root).parts[:-1])
    split = dirs.pop(0).lower() if dirs and dirs[0].lower() in SPLITS else None
    return split, dirs[0] if dirs else None


def _number(value: str, name: str, positive: bool = True) -> float:
    try:
        v = float(value)
    except ValueError:
        v = math.nan
    if not math.isfinite(v) or (v <= 0 if positive else v < 0):
        raise ValueError(f"{name}: expected a number {'> 0' if positive else '>= 0'}, got {value!r}")
    return v


def _inside(root: Path, rel: str, name: str) -> Path:
    p = Path(os.path.normpath(root / rel))
    if Path(rel).is_absolute() or not p.is_relative_to(root) or not p.resolve().is_relative_to(root.resolve()):
        raise ValueError(f"{name}: {rel!r} must be a path relative to {root} and inside it")
    return p


def _cal_source(value: str, root: Path, name: str) -> CalSource:
    """``1000`` or ``1000;980`` (a level per channel), else a frame file relative to ROOT."""
    parts = [v.strip() for v in value.split(";")]
    if all(re.fullmatch(r"[-+0-9.eE]+", v) for v in parts):
        return tuple(_number(v, name, positive=name == "flat") for v in parts)
    p = _inside(root, value, name)
    if not p.is_file():
        raise ValueError(f"{name}: frame file {value!r} not found under {root}")
    return p


def _csv_row(row: dict, root: Path) -> SourceFile:
    """One CSV row -> a SourceFile; ValueError names the column at fault."""
    if None in row:
        raise ValueError(f"{len(row[None])} more cell(s) than there are columns")
    get = {k: (row.get(k) or "").strip() for k in CSV_REQUIRED + CSV_OPTIONAL}
    if not get["file"]:
        raise ValueError("file: empty")
    path = _inside(root, get["file"], "file")
    alloy = resolve_alloy(get["alloy"])
    if alloy is None:
        raise ValueError("alloy: " + _unknown_alloy(get["alloy"], "alloy"))
    item = SourceFile(path, path.relative_to(root).as_posix(), alloy)
    if get["thickness_mm"]:
        item.thickness_mm = _number(get["thickness_mm"], "thickness_mm")
    if get["plate_id"]:
        if len(get["plate_id"]) > MAX_STRING:
            raise ValueError(f"plate_id: {len(get['plate_id'])} characters; at most {MAX_STRING}")
        item.plate_id = get["plate_id"]
    if get["wedge_mm"]:
        item.rig["wedge_mm"] = _number(get["wedge_mm"], "wedge_mm")
    if get["kvp"]:
        item.rig["kvp"] = [_number(v.strip(), "kvp") for v in get["kvp"].split(";")]
    for name in FRAME_NAMES:
        if get[name]:
            setattr(item, name, _cal_source(get[name], root, name))
    return item


def plan_labels_csv(csv_path: Path, root: Path, images: list[Path], others: list[Path]
                    ) -> tuple[list[SourceFile], list[Reject]]:
    """The CSV's rows, checked one by one; images under ROOT that it does not list are reported too."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            rows = list(_read_csv(f, csv_path))
    except OSError as exc:
        raise ImportUsageError(f"{csv_path}: cannot read ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ImportUsageError(f"{csv_path}: not a readable CSV ({exc})") from None
    items, rejects, first_line, frames, mentioned = [], [], {}, set(), set()
    for line, row in rows:
        where = f"{csv_path.name} line {line}: "
        try:
            item = _csv_row(row, root)
        except ValueError as exc:
            name = (row.get("file") or "").strip()
            p = Path(os.path.normpath(root / name)) if name else csv_path
            mentioned.add(p)  # reported here, not again as "not listed"
            alloy = resolve_alloy((row.get("alloy") or "").strip()) or UNKNOWN_CLASS
            rejects.append(Reject(str(p), where + str(exc), alloy))
            continue
        frames |= {s for s in (item.dark, item.flat) if isinstance(s, Path)}
        if item.path in first_line:
            rejects.append(Reject(str(item.path), f"{where}listed again (first on line {first_line[item.path]})",
                                  item.alloy))
        elif not item.path.is_file():
            rejects.append(Reject(str(item.path), f"{where}file not found (the CSV names a file that is not there)",
                                  item.alloy))
            first_line[item.path] = line
        else:
            item.where = where
            items.append(item)
            first_line[item.path] = line
    listed = set(first_line) | frames | mentioned
    rejects += [Reject(str(p), f"not listed in {csv_path.name}") for p in images if p not in listed]
    rejects += [Reject(str(p), "not an image file (expected .tif, .tiff or .png)") for p in others if p not in listed]
    return items, rejects


def _read_csv(f, csv_path: Path):
    reader = csv.DictReader(f)
    header = [c.strip() for c in (reader.fieldnames or [])]
    expected = f"expected columns {', '.join(CSV_REQUIRED)} and optionally {', '.join(CSV_OPTIONAL)}"
    if not header:
        raise ImportUsageError(f"{csv_path}: empty; {expected}")
    missing = [c for c in CSV_REQUIRED if c not in header]
    unknown = [c for c in header if c not in CSV_REQUIRED + CSV_OPTIONAL]
    dup = sorted({c for c in header if header.count(c) > 1})
    for what, cols in (("missing", missing), ("unknown", unknown), ("duplicate", dup)):
        if cols:
            raise ImportUsageError(f"{csv_path}: {what} column(s) {', '.join(map(repr, cols))}; {expected}")
    reader.fieldnames = header
    for row in reader:
        yield reader.line_num, row


# ---- calibration -------------------------------------------------------------------------------------
@dataclass
class _Frame:
    sha256: str            # of the source file: the frame's identity in the session id
    pixels: np.ndarray     # uint16 [C, H, W]
    levels: list[float]


class _Calibration:
    """Finds each file's dark and flat (CSV row, nearest frame file, settings levels) and loads frames once."""

    def __init__(self, root: Path, frames: dict[Path, dict[str, list[Path]]], settings: ImportSettings,
                 warn: Callable[[Path, str], None]):
        self.root, self.frames, self.settings, self.warn = root, frames, settings, warn
        self._loaded: dict[Path, Union[_Frame, str]] = {}

    def _nearest(self, item: SourceFile, name: str) -> Optional[Path]:
        d = item.path.parent
        while True:
            found = self.frames.get(d, {}).get(name, [])
            if len(found) > 1:
                raise ValueError(f"calibration: {len(found)} {name} frames in {d} "
                                 f"({', '.join(p.name for p in found)}); keep one")
            if found or d == self.root or d == d.parent:
                return found[0] if found else None
            d = d.parent

    def _load(self, path: Path) -> _Frame:
        if path not in self._loaded:
            try:
                data = path.read_bytes()
                pixels, bits = read_source_image(data)
                self._loaded[path] = _Frame(hashlib.sha256(data).hexdigest(), pixels, frame_level(pixels, bits))
                if bits == 8:
                    self.warn(path, EIGHT_BIT_WARNING)
            except (OSError, ValueError) as exc:
                self._loaded[path] = f"calibration: frame {path} unusable: {getattr(exc, 'strerror', None) or exc}"
        frame = self._loaded[path]
        if isinstance(frame, str):
            raise ValueError(frame)
        return frame

    def resolve(self, item: SourceFile, shape: tuple[int, ...]) -> tuple[dict, dict[str, _Frame]]:
        """(the sidecar's calibration, the frames used by name); ValueError says what is missing or wrong."""
        levels, frames, identity = {}, {}, []
        for name in FRAME_NAMES:
            src = getattr(item, name) or self._nearest(item, name)
            if src is None and getattr(self.settings, f"{name}_level"):
                src = tuple(getattr(self.settings, f"{name}_level"))
            if src is None:
                raise ValueError(f"missing calibration: no {name} frame ({name}.tif|tiff|png in the image's folder "
                                 f"or one above it) and no {name} level (--{name}-level, {name}_level in the --rig "
                                 f"YAML, or a {name} column in the CSV)")
            if isinstance(src, Path):
                frame = self._load(src)
                if frame.pixels.shape != tuple(shape):
                    raise ValueError(f"calibration: {name} frame {src} is {'x'.join(map(str, frame.pixels.shape))} "
                                     f"(CxHxW), the image is {'x'.join(map(str, shape))}")
                frames[name], levels[name] = frame, frame.levels
                identity.append(frame.sha256)
            else:
                levels[name] = list(src)
                identity.append(levels[name])
        session = "imp-" + hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]
        return {"session": session, "dark_adu": levels["dark"], "flat_adu": levels["flat"]}, frames


# ---- the import ------------------------------------------------------------------------------------
class _Rejected(Exception):
    pass


def capture_id_for(rel: str, content_sha256: str) -> str:
    """``imp-<path as a slug>-<hash of path and content>``: the same file always gets the same id, and two
    files (or two versions of one file) never share one."""
    stem = rel.rsplit(".", 1)[0]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._")[:80]
    digest = hashlib.sha256(f"{rel}\0{content_sha256}".encode()).hexdigest()[:16]
    return f"imp-{slug}-{digest}" if slug else f"imp-{digest}"


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def _differences(stored: Sidecar, new: Sidecar) -> list[str]:
    """Fields in which a stored capture differs from what this import would write (the acquisition time and
    the encoded image's hash aside: the id already pins the source file's content)."""
    a, b = (_flat(s.model_dump(mode="json", exclude={"acquired_at"})) for s in (stored, new))
    keys = sorted((set(a) | set(b)) - {"image.sha256"})
    return [f"{k}: stored {a.get(k)!r}, now {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]


@dataclass
class _Context:
    store: ObjectStore
    settings: ImportSettings
    calibration: _Calibration
    accepted_sizes: Optional[set]
    existing: set[str]
    result: ImportResult
    stored_sessions: set[str] = field(default_factory=set)


def _build(item: SourceFile, ctx: _Context) -> tuple[Sidecar, bytes, dict[str, _Frame]]:
    """Everything checked and encoded, nothing written yet; ``_Rejected`` says why a file cannot be imported."""
    try:
        data = item.path.read_bytes()
        stat = item.path.stat()
    except OSError as exc:
        raise _Rejected(f"unreadable: {exc.strerror or exc}") from None
    try:
        pixels, bits = read_source_image(data)
    except ValueError as exc:
        raise _Rejected(f"unreadable image: {exc}") from None
    if bits == 8:
        ctx.calibration.warn(item.path, EIGHT_BIT_WARNING)
    rig = {**ctx.settings.rig, **item.rig}
    for key, how in (("kvp", "--kvp"), ("wedge_mm", "--wedge-mm")):
        if key not in rig:
            raise _Rejected(f"{item.where}rig: {key} not given ({how}, {key} under rig: in the --rig YAML, "
                            f"or a {key} column in the CSV)")
    if pixels.shape[0] != len(rig["kvp"]):
        raise _Rejected(f"{item.where}{pixels.shape[0]} page(s) but {len(rig['kvp'])} kVp setting(s) "
                        f"{rig['kvp']}: a multi-page TIFF holds one page per kVp")
    thickness = item.thickness_mm or ctx.settings.thickness_mm
    if thickness is None:
        raise _Rejected(f"{item.where}no plate thickness (--thickness-mm, thickness_mm in the --rig YAML, or a "
                        "thickness_mm column in the CSV)")
    try:
        calibration, frames = ctx.calibration.resolve(item, pixels.shape)
    except ValueError as exc:
        raise _Rejected(f"{item.where}{exc}") from None
    cid = capture_id_for(item.rel, hashlib.sha256(data).hexdigest())
    img, fmt = encode_image(pixels)
    try:
        sc = make_sidecar(cid, pixels, img, fmt, rig=rig, calibration=calibration,
                          acquired_at=datetime.fromtimestamp(stat.st_mtime, timezone.utc),
                          truth={"alloy": item.alloy, "nominal_thickness_mm": thickness}, plate_id=item.plate_id,
                          source=f"import {item.rel}"[:MAX_STRING])
        validate_capture(sc, img, str(item.path), ctx.accepted_sizes)  # what ingest will check, checked now
    except ValidationError as exc:
        raise _Rejected(f"{item.where}{_validation_message(exc)}") from None
    except CaptureError as exc:
        raise _Rejected(f"{item.where}{exc.field}: {exc.message}") from None
    return sc, img, frames


def _store_frames(sc: Sidecar, frames: dict[str, _Frame], ctx: _Context) -> None:
    """The session's frames beside the captures, as simulated sessions keep theirs (content-addressed:
    a session id always names the same frames, so one already there is the same)."""
    session = sc.calibration.session
    if session in ctx.stored_sessions:
        return
    for name, frame in frames.items():
        data, fmt = encode_image(frame.pixels)
        try:
            ctx.store.put(f"calibration/{session}/{name}.{fmt}", data)
        except ObjectExists:
            pass
    ctx.stored_sessions.add(session)
    if frames:
        ctx.result.sessions.append(session)


def _import_one(item: SourceFile, ctx: _Context) -> None:
    res = ctx.result
    try:
        sc, img, frames = _build(item, ctx)
        key = sidecar_key(sc.capture_id)
        if key in ctx.existing:
            stored = parse_sidecar(ctx.store.get(key), object_path(ctx.store, key))
            diff = _differences(stored, sc)
            if diff:
                raise _Rejected(f"{item.where}already imported as {sc.capture_id} with other labels or settings "
                                f"({'; '.join(diff[:3])}); the stored capture is kept")
            outcome = "present"
        else:
            _store_frames(sc, frames, ctx)
            where = object_path(ctx.store, key)
            outcome = store_capture(ctx.store, sc, sc.model_dump_json(indent=1).encode(), img, where)
    except _Rejected as exc:
        res.rejected.append(Reject(str(item.path), str(exc), item.alloy))
        return
    except CaptureError as exc:  # a capture with this id appeared meanwhile (a writer that ignored the lock)
        res.rejected.append(Reject(str(item.path), f"{exc.field}: {exc.message}", item.alloy))
        return
    (res.imported if outcome == "new" else res.present)[sc.capture_id] = item.alloy
    if item.split:
        res.splits[sc.plate_id or sc.capture_id] = item.split


def _one_size(items: list[SourceFile], result: ImportResult) -> list[SourceFile]:
    """Header sizes; files that cannot be read are rejected, and so are sizes other than the most common."""
    sizes: dict[int, tuple[int, int]] = {}
    for i, item in enumerate(items):
        try:
            sizes[i] = probe_size(item.path)
        except (OSError, ValueError) as exc:
            result.rejected.append(Reject(str(item.path), f"unreadable image: {getattr(exc, 'strerror', None) or exc}",
                                          item.alloy))
    if not sizes:
        return []
    counts = Counter(sizes.values())
    common = max(counts, key=lambda s: (counts[s], s))
    for i, s in sizes.items():
        if s != common:
            result.rejected.append(Reject(str(items[i].path), f"mixed image sizes: this image is {s[0]}x{s[1]} (HxW), "
                                          f"{counts[common]} other image(s) of this import are {common[0]}x{common[1]}; "
                                          "import each size separately", items[i].alloy))
    return [items[i] for i, s in sizes.items() if s == common]


def run_import(source: Path, store: ObjectStore, settings: ImportSettings, labels: Optional[Path] = None,
               accepted_sizes: Optional[set] = None, wait: float = 0.0,
               progress: Optional[Callable[[int, int], None]] = None,
               on_warning: Optional[Callable[[str], None]] = None, ignore: tuple[Path, ...] = ()) -> ImportResult:
    """Import the ImageFolder tree at ``source`` (or the files a labels CSV lists, relative to ``source``)
    into ``store``, holding its writer lock. Raises ``ImportUsageError`` for a bad CSV or root, and the
    store's own errors (``StoreError``, ``WriterBusy``); every file-level problem is in ``result.rejected``.
    ``ignore``: files under ``source`` that are not source material (the rig YAML)."""
    root = Path(source).resolve()
    if not root.is_dir():
        raise ImportUsageError(f"{source}: not a directory (expected an ImageFolder root or the folder of the "
                               "files a labels CSV names)")
    result = ImportResult()

    def warn(path: Path, msg: str) -> None:
        result.warnings.append(f"{path}: {msg}")
        if on_warning:
            on_warning(result.warnings[-1])

    skip = {Path(p).resolve() for p in (*ignore, *([labels] if labels else []))}
    if isinstance(store, LocalStore):
        skip.add(store.root)  # a store inside the source tree is not source material
    images, others, frames = _walk(root, skip)
    if labels:
        items, rejects = plan_labels_csv(Path(labels).resolve(), root, images, others)
    else:
        items, rejects = plan_image_folder(root, images, others)
    result.rejected += rejects
    items = _one_size(items, result)
    with writer_lock(store, "import", wait):
        existing = {i.key for i in store.list(CAPTURES) if i.key.endswith(".json")}
        ctx = _Context(store, settings, _Calibration(root, frames, settings, warn), accepted_sizes, existing, result)
        for n, item in enumerate(items, 1):
            _import_one(item, ctx)
            if progress:
                progress(n, len(items))
    result.rejected.sort(key=lambda r: r.path)
    return result

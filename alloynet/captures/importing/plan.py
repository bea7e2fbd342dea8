"""What to import: the files of an ImageFolder tree or the rows of a labels CSV, each with its label and
per-file settings, and every other file under ROOT either skipped (not an image) or rejected with its reason."""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from alloynet.captures.format import MAX_STRING
from alloynet.captures.importing.frames import FRAME_NAMES, JPEG_MESSAGE, CalSource
from alloynet.captures.importing.settings import ImportUsageError
from alloynet.physics.alloys import STANDARD_ALLOYS, AlloyTable

IMAGE_SUFFIXES = (".tif", ".tiff", ".png")
# image files alloynet cannot take: rejected with what they are (documents and the like are only skipped)
FOREIGN_IMAGES = {
    ".jpg": JPEG_MESSAGE,
    ".jpeg": JPEG_MESSAGE,
    ".bmp": "BMP image: not a detector format",
    ".gif": "GIF image: 8-bit palette, not a detector image",
    ".webp": "WebP image: not a detector format",
    ".dcm": "DICOM file: not read by alloynet",
    ".raw": "headerless raw file: its size and byte order are unknown",
}
FOREIGN_FIX = "export the detector's 16-bit TIFF or PNG"
SPLITS = ("train", "val", "test")
REFERENCE_DIRS = ("reference", "references")
CSV_REQUIRED = ("file", "alloy")
CSV_OPTIONAL = ("thickness_mm", "plate_id", "wedge_mm", "kvp", "dark", "flat", "role")
ROLES = ("plate", "reference", "dark", "flat", "open", "wedge")
UNKNOWN_CLASS = "(unknown)"


@dataclass
class SourceFile:
    path: Path
    rel: str  # posix path relative to ROOT
    alloy: str
    split: str | None = None
    thickness_mm: float | None = None  # None: the settings' thickness
    plate_id: str | None = None
    rig: dict = field(default_factory=dict)  # per-file rig fields (CSV columns)
    dark: CalSource | None = None
    flat: CalSource | None = None
    where: str = ""  # "labels.csv line 4: " for messages about CSV values
    role: str = "plate"  # "reference": a plate of a known alloy at a known thickness
    fallback: dict = field(default_factory=dict)  # a reference session's dark/flat frames, where none is nearer


@dataclass(frozen=True)
class Reject:
    """A file that was not imported. ``problem`` names the kind (files with one problem are reported together),
    ``detail`` what is particular to this file, ``fix`` the option, column or file that fixes it."""

    path: str
    problem: str
    detail: str = ""
    fix: str = ""
    alloy: str = UNKNOWN_CLASS

    @property
    def reason(self) -> str:
        return f"{self.problem}: {self.detail}" if self.detail else self.problem


@dataclass
class Walk:
    images: list[Path] = field(default_factory=list)
    foreign: list[Path] = field(default_factory=list)  # image files of a format alloynet does not take
    others: list[Path] = field(default_factory=list)  # not images: skipped
    frames: dict[Path, dict[str, list[Path]]] = field(default_factory=dict)
    reference: Path | None = None  # ROOT/reference/, planned by references.py


def resolve_alloy(name: str, alloys: AlloyTable = STANDARD_ALLOYS) -> str | None:
    """``Al1050``, ``al1050``, ``1050`` -> ``Al1050``; an alloy of ``alloys`` (one added by config too); else None."""
    key = re.sub(r"[\s_-]", "", name).lower()
    for alloy in alloys:
        a = alloy.lower()
        if key == a or "al" + key == a:
            return alloy
    return None


def unknown_alloy(name: str, what: str, alloys: AlloyTable = STANDARD_ALLOYS) -> Reject:
    return Reject(
        "",
        f"unknown {what}",
        repr(name),
        f"name an alloy such as Al1050 or 1050 (known: "
        f"{', '.join(sorted(alloys))}); add others with custom_alloys in the --rig YAML or --alloys",
    )


def walk(root: Path, skip: set[Path]) -> Walk:
    """Images, foreign images, other files and the dark/flat frames of each folder, in a stable order; the
    reference folder at the top is set aside."""
    out = Walk()
    for dirpath, dirs, files in os.walk(root):
        d = Path(dirpath)
        if d == root:
            for x in dirs:
                if x.lower() in REFERENCE_DIRS and d / x not in skip:
                    out.reference = d / x
        dirs[:] = sorted(x for x in dirs if d / x not in skip and d / x != out.reference)
        for name in sorted(files):
            p = d / name
            if p in skip:
                continue
            stem, suffix = os.path.splitext(name)
            if suffix.lower() in FOREIGN_IMAGES:
                out.foreign.append(p)
            elif suffix.lower() not in IMAGE_SUFFIXES:
                out.others.append(p)
            elif stem.lower() in FRAME_NAMES:
                out.frames.setdefault(d, {}).setdefault(stem.lower(), []).append(p)
            else:
                out.images.append(p)
    return out


def foreign_rejects(paths: list[Path], alloy_of=lambda p: UNKNOWN_CLASS) -> list[Reject]:
    return [Reject(str(p), FOREIGN_IMAGES[p.suffix.lower()], fix=FOREIGN_FIX, alloy=alloy_of(p)) for p in paths]


def split_and_class(root: Path, p: Path) -> tuple[str | None, str | None]:
    dirs = list(p.relative_to(root).parts[:-1])
    split = dirs.pop(0).lower() if dirs and dirs[0].lower() in SPLITS else None
    return split, dirs[0] if dirs else None


def plan_image_folder(
    root: Path, found: Walk, alloys: AlloyTable = STANDARD_ALLOYS
) -> tuple[list[SourceFile], list[Reject]]:
    items, rejects = [], []
    for p in found.images:
        split, class_dir = split_and_class(root, p)
        if class_dir is None:
            rejects.append(
                Reject(
                    str(p),
                    "not inside a class folder",
                    fix="put it in ROOT/[train|val|test/]CLASS/, or list it in a labels CSV (--labels)",
                )
            )
        elif (alloy := resolve_alloy(class_dir, alloys)) is None:
            r = unknown_alloy(class_dir, "class folder", alloys)
            rejects.append(Reject(str(p), r.problem, r.detail, r.fix))
        else:
            items.append(SourceFile(p, p.relative_to(root).as_posix(), alloy, split))
    rejects += foreign_rejects(
        found.foreign, lambda p: resolve_alloy(split_and_class(root, p)[1] or "", alloys) or UNKNOWN_CLASS
    )
    return items, rejects


def number(value: str, name: str, positive: bool = True) -> float:
    try:
        v = float(value)
    except ValueError:
        v = math.nan
    if not math.isfinite(v) or (v <= 0 if positive else v < 0):
        raise ValueError(f"{name}: expected a number {'> 0' if positive else '>= 0'}, got {value!r}")
    return v


def inside(root: Path, rel: str, name: str) -> Path:
    p = Path(os.path.normpath(root / rel))
    if Path(rel).is_absolute() or not p.is_relative_to(root) or not p.resolve().is_relative_to(root.resolve()):
        raise ValueError(f"{name}: {rel!r} must be a path relative to {root} and inside it")
    return p


def _cal_source(value: str, root: Path, name: str) -> CalSource:
    """``1000`` or ``1000;980`` (a level per channel), else a frame file relative to ROOT."""
    parts = [v.strip() for v in value.split(";")]
    if all(re.fullmatch(r"[-+0-9.eE]+", v) for v in parts):
        return tuple(number(v, name, positive=name == "flat") for v in parts)
    p = inside(root, value, name)
    if not p.is_file():
        raise ValueError(f"{name}: frame file {value!r} not found under {root}")
    return p


def _csv_row(row: dict, root: Path, alloys: AlloyTable) -> SourceFile:
    """One CSV row -> a SourceFile (its ``role`` says what it is); ValueError names the column at fault."""
    if None in row:
        raise ValueError(f"{len(row[None])} more cell(s) than there are columns")
    get = {k: (row.get(k) or "").strip() for k in CSV_REQUIRED + CSV_OPTIONAL}
    if not get["file"]:
        raise ValueError("file: empty")
    role = get["role"].lower() or "plate"
    if role not in ROLES:
        raise ValueError(f"role: expected one of {', '.join(ROLES)}, got {get['role']!r}")
    path = inside(root, get["file"], "file")
    alloy = resolve_alloy(get["alloy"], alloys) if get["alloy"] else None
    if alloy is None and role in ("plate", "reference"):
        r = unknown_alloy(get["alloy"], "alloy", alloys)
        raise ValueError(f"alloy: {r.problem} {r.detail}; {r.fix}")
    item = SourceFile(path, path.relative_to(root).as_posix(), alloy or UNKNOWN_CLASS, role=role)
    if get["thickness_mm"]:
        item.thickness_mm = number(get["thickness_mm"], "thickness_mm")
    if get["plate_id"]:
        if len(get["plate_id"]) > MAX_STRING:
            raise ValueError(f"plate_id: {len(get['plate_id'])} characters; at most {MAX_STRING}")
        item.plate_id = get["plate_id"]
    if get["wedge_mm"]:
        item.rig["wedge_mm"] = number(get["wedge_mm"], "wedge_mm")
    if get["kvp"]:
        item.rig["kvp"] = [number(v.strip(), "kvp") for v in get["kvp"].split(";")]
    for name in FRAME_NAMES:
        if get[name]:
            setattr(item, name, _cal_source(get[name], root, name))
    if role == "reference" and item.plate_id is None and item.thickness_mm:
        item.plate_id = f"reference-{alloy}-{item.thickness_mm:g}mm"  # as a reference/<alloy>-<mm>mm/ folder names it
    return item


def _by_name(images: list[Path]) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for p in images:
        out.setdefault(p.name, []).append(p)
    return out


def plan_labels_csv(
    csv_path: Path, root: Path, found: Walk, alloys: AlloyTable = STANDARD_ALLOYS
) -> tuple[list[SourceFile], list[Reject]]:
    """The CSV's rows, checked one by one; images under ROOT that it does not list are reported too, with
    what else is wrong with them (a CSV path that names another folder, a foreign format)."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            rows = list(_read_csv(f, csv_path))
    except OSError as exc:
        raise ImportUsageError(f"{csv_path}: cannot read ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ImportUsageError(f"{csv_path}: not a readable CSV ({exc})") from None
    items: list[SourceFile] = []
    rejects: list[Reject] = []
    first_line: dict[Path, int] = {}
    frames: set[Path] = set()
    mentioned: set[Path] = set()
    elsewhere = _by_name(found.images)
    for line, row in rows:
        where = f"{csv_path.name} line {line}: "
        try:
            item = _csv_row(row, root, alloys)
        except ValueError as exc:
            name = (row.get("file") or "").strip()
            p = Path(os.path.normpath(root / name)) if name else csv_path
            mentioned.add(p)  # reported here, not again as "not listed"
            alloy = resolve_alloy((row.get("alloy") or "").strip(), alloys) or UNKNOWN_CLASS
            column = str(exc).split(":", 1)[0]
            rejects.append(
                Reject(
                    str(p),
                    f"bad value in {csv_path.name} column {column}",
                    where + str(exc),
                    f"correct the {column} column of {csv_path.name}",
                    alloy,
                )
            )
            continue
        frames |= {s for s in (item.dark, item.flat) if isinstance(s, Path)}
        if item.path in first_line:
            rejects.append(
                Reject(
                    str(item.path),
                    f"listed twice in {csv_path.name}",
                    f"{where}listed again (first on line {first_line[item.path]})",
                    "keep one row per file",
                    item.alloy,
                )
            )
        elif not item.path.is_file():
            there = [p for p in elsewhere.get(item.path.name, []) if p != item.path]
            hint = (
                (f"; {there[0].relative_to(root).as_posix()} has that name: the CSV's paths are relative to {root}")
                if there
                else ""
            )
            mentioned |= set(there[:1])
            rejects.append(
                Reject(
                    str(item.path),
                    f"file named in {csv_path.name} not found",
                    f"{where}file not found{hint}",
                    f"give paths relative to the CSV's folder ({root}) in column file",
                    item.alloy,
                )
            )
            first_line[item.path] = line
        else:
            item.where = where
            items.append(item)
            first_line[item.path] = line
    listed = set(first_line) | frames | mentioned
    rejects += [
        Reject(
            str(p),
            f"not listed in {csv_path.name}",
            _folder_hint(root, p, alloys),
            f"add a row for it to {csv_path.name}, or move it out of {root}",
        )
        for p in found.images
        if p not in listed
    ]
    rejects += foreign_rejects([p for p in found.foreign if p not in listed])
    return items, rejects


def _folder_hint(root: Path, p: Path, alloys: AlloyTable) -> str:
    """Whether its folder would have labelled it: an ImageFolder tree given a CSV that lists only part of it."""
    split, class_dir = split_and_class(root, p)
    if class_dir and resolve_alloy(class_dir, alloys):
        return f"in class folder {class_dir!r}: without --labels the folder is its label"
    return ""


def _read_csv(f, csv_path: Path) -> Iterator[tuple[int, dict]]:
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

"""The import itself: every planned file checked, encoded and stored (with its dark/flat frames), under the
store's writer lock; the reference frames stored where `alloynet rig fit` reads them."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from alloynet.captures.format import ACCEPTED_SIZES, MAX_STRING, Sidecar, make_sidecar, parse_sidecar, validate_capture
from alloynet.captures.image import CaptureError, encode_image
from alloynet.captures.importing.frames import (
    Frame,
    FrameFinder,
    LevelsMissing,
    SourceImageError,
    probe_size,
    read_source_image,
)
from alloynet.captures.importing.plan import (
    UNKNOWN_CLASS,
    Reject,
    SourceFile,
    Walk,
    plan_image_folder,
    plan_labels_csv,
    walk,
)
from alloynet.captures.importing.references import (
    ReferenceFrames,
    csv_reference_frames,
    merge,
    plan_reference_folder,
    session_count,
)
from alloynet.captures.importing.settings import (
    REQUIRED_RIG,
    SETTING_SOURCES,
    ImportSettings,
    ImportUsageError,
    defaulted_rig_fields,
    validation_message,
)
from alloynet.captures.ingest import store_capture
from alloynet.captures.layout import CAPTURES, sidecar_key
from alloynet.captures.stores import LocalStore, ObjectExists, ObjectStore, object_path, writer_lock

EIGHT_BIT = "8-bit image"
EIGHT_BIT_FIX = "export the detector's 16-bit output, or --allow-8bit to import it as 8-bit (recorded in the sidecar)"
EIGHT_BIT_WARNING = (
    "8-bit image (--allow-8bit): quantisation to 256 levels discards most of the attenuation "
    "signal; recorded as bit_depth 8 in the sidecar"
)
REFERENCE_SOURCE = "reference"  # a reference plate's sidecar source starts with it (rig fit reads those)


@dataclass
class ReferenceReport:
    sessions: list[str] = field(default_factory=list)  # sessions (dark/flat levels and frames) written or found present
    wedge_frames: Counter = field(default_factory=Counter)  # wedge size (mm) -> frames
    plates: Counter = field(default_factory=Counter)  # (alloy, thickness mm) -> captures
    levels_only: bool = False  # no dark/flat frames: each file's levels used


@dataclass
class ImportResult:
    imported: dict[str, str] = field(default_factory=dict)  # capture id -> alloy
    present: dict[str, str] = field(default_factory=dict)  # already in the store, same labels and settings
    rejected: list[Reject] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # files that are not images (deliberately left)
    warnings: list[str] = field(default_factory=list)  # "path: message"
    splits: dict[str, str] = field(default_factory=dict)  # plate id -> split folder (train/val/test)
    sessions: list[str] = field(default_factory=list)  # sessions (dark/flat levels) whose frames were stored
    defaults: dict[str, Any] = field(default_factory=dict)  # sidecar rig fields nobody gave: their defaults
    eight_bit: list[str] = field(default_factory=list)  # files imported as 8-bit (--allow-8bit)
    references: ReferenceReport = field(default_factory=ReferenceReport)

    @property
    def usable(self) -> bool:
        """Something from the source is in the store now (the manifest is refreshed then)."""
        return bool(self.imported or self.present)

    @property
    def complete(self) -> bool:
        """Every file was imported (or was there already) or deliberately skipped: the exit-code rule."""
        return not self.rejected and (self.usable or bool(self.references.sessions))

    def per_class(self) -> list[tuple[str, int, int, int]]:
        """(alloy, imported, already present, rejected), alloys sorted, files of unknown class last."""
        rows: dict[str, list[int]] = {}
        for i, d in enumerate((self.imported, self.present)):
            for alloy in d.values():
                rows.setdefault(alloy, [0, 0, 0])[i] += 1
        for r in self.rejected:
            rows.setdefault(r.alloy, [0, 0, 0])[2] += 1
        order = sorted(rows, key=lambda a: (a == UNKNOWN_CLASS, a))
        return [(a, rows[a][0], rows[a][1], rows[a][2]) for a in order]

    def summary(self) -> str:
        return f"{len(self.imported)} imported, {len(self.present)} already present, {len(self.rejected)} rejected"


class _Rejected(Exception):
    def __init__(self, problem: str, detail: str = "", fix: str = ""):
        self.problem, self.detail, self.fix = problem, detail, fix
        super().__init__(problem)


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
    finder: FrameFinder
    accepted_sizes: set | None
    existing: set[str]
    result: ImportResult
    stored_sessions: set[str] = field(default_factory=set)


def _settings_fix(missing: list[str]) -> str:
    """Where each missing setting can come from, one line each (the report indents them under "fix:")."""
    return "\n".join(f"{k}: {SETTING_SOURCES[k]}" for k in missing)


def _read(path: Path, ctx: _Context) -> tuple[bytes, np.ndarray, int]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _Rejected("unreadable file", str(exc.strerror or exc)) from None
    try:
        pixels, bits = read_source_image(data)
    except SourceImageError as exc:
        raise _Rejected(exc.problem, exc.detail, exc.fix) from None
    if bits == 8 and not ctx.settings.allow_8bit:
        raise _Rejected(EIGHT_BIT, fix=EIGHT_BIT_FIX)
    return data, pixels, bits


def _build(item: SourceFile, ctx: _Context) -> tuple[Sidecar, bytes, dict[str, Frame]]:
    """Everything checked and encoded, nothing written yet; ``_Rejected`` says why a file cannot be imported.
    Every missing setting of a file is named at once."""
    data, pixels, bits = _read(item.path, ctx)
    rig = {**ctx.settings.rig, **item.rig}
    missing = [k for k in REQUIRED_RIG if k not in rig]
    thickness = item.thickness_mm or ctx.settings.thickness_mm
    if thickness is None:
        missing.append("thickness_mm")
    calibration: dict = {}
    frames: dict[str, Frame] = {}
    try:
        # a reference plate was taken in its reference session; the lab's plates under the levels it gives
        calibration, frames = ctx.finder.resolve(
            item.path,
            pixels.shape,
            {"dark": item.dark, "flat": item.flat},
            item.fallback,
            fallback_first=item.role == "reference",
        )
    except LevelsMissing as exc:
        missing += exc.names
    except ValueError as exc:
        raise _Rejected("unusable calibration frame", f"{item.where}{exc}") from None
    if missing:
        raise _Rejected(
            "missing settings: " + ", ".join(missing),
            item.where.rstrip(": "),
            _settings_fix(missing),
        )
    if pixels.shape[0] != len(rig["kvp"]):
        raise _Rejected(
            "pages do not match the kVp settings",
            f"{item.where}{pixels.shape[0]} page(s) but {len(rig['kvp'])} kVp setting(s) {rig['kvp']}",
            "a multi-page TIFF holds one page per kVp: give one --kvp per page",
        )
    if bits == 8:
        rig["bit_depth"] = 8
        ctx.result.eight_bit.append(str(item.path))
    cid = capture_id_for(item.rel, hashlib.sha256(data).hexdigest())
    img, fmt = encode_image(pixels)
    source = f"{REFERENCE_SOURCE} {item.rel}" if item.role == "reference" else f"import {item.rel}"
    try:
        sc = make_sidecar(
            cid,
            pixels,
            img,
            fmt,
            rig=rig,
            calibration=calibration,
            acquired_at=datetime.fromtimestamp(item.path.stat().st_mtime, timezone.utc),
            truth={"alloy": item.alloy, "nominal_thickness_mm": thickness},
            plate_id=item.plate_id,
            source=source[:MAX_STRING],
        )
        validate_capture(sc, img, str(item.path), ctx.accepted_sizes)  # what ingest will check, checked now
    except ValidationError as exc:
        raise _Rejected("invalid setting", f"{item.where}{validation_message(exc)}") from None
    except CaptureError as exc:
        raise _Rejected(f"invalid capture ({exc.field})", f"{item.where}{exc.message}") from None
    return sc, img, frames


def _put_once(store: ObjectStore, key: str, data: bytes) -> None:
    """Calibration objects are content-addressed (the session id derives from the frames or levels): one
    already there is the same."""
    try:
        store.put(key, data)
    except ObjectExists:
        pass


def _store_session(session: dict, frames: dict[str, Frame], ctx: _Context) -> None:
    """The session's frames (and levels, which reference frames need where there are no frames) beside the
    captures, as simulated sessions keep theirs."""
    sid = session["session"]
    if sid in ctx.stored_sessions:
        return
    for name, frame in frames.items():
        data, fmt = encode_image(frame.pixels)
        _put_once(ctx.store, f"calibration/{sid}/{name}.{fmt}", data)
    ctx.stored_sessions.add(sid)
    if frames:
        ctx.result.sessions.append(sid)


def _import_one(item: SourceFile, ctx: _Context) -> None:
    res = ctx.result
    try:
        sc, img, frames = _build(item, ctx)
        key = sidecar_key(sc.capture_id)
        if key in ctx.existing:
            stored = parse_sidecar(ctx.store.get(key), object_path(ctx.store, key))
            diff = _differences(stored, sc)
            if diff:
                raise _Rejected(
                    "already imported with other labels or settings",
                    f"{item.where}as {sc.capture_id} ({'; '.join(diff[:3])}); the stored capture is kept",
                    "import under another name, or give the settings it was imported with",
                )
            outcome = "present"
        else:
            _store_session(sc.calibration.model_dump(), frames, ctx)
            where = object_path(ctx.store, key)
            outcome = store_capture(ctx.store, sc, sc.model_dump_json(indent=1).encode(), img, where)
    except _Rejected as exc:
        res.rejected.append(Reject(str(item.path), exc.problem, exc.detail, exc.fix, item.alloy))
        return
    except CaptureError as exc:  # a capture with this id appeared meanwhile (a writer that ignored the lock)
        res.rejected.append(Reject(str(item.path), f"conflict ({exc.field})", exc.message, alloy=item.alloy))
        return
    (res.imported if outcome == "new" else res.present)[sc.capture_id] = item.alloy
    if item.role == "reference":
        res.references.plates[(item.alloy, item.thickness_mm)] += 1
    if item.split:
        res.splits[sc.plate_id or sc.capture_id] = item.split


def _levels_json(calibration: dict) -> bytes:
    return json.dumps({"dark_adu": calibration["dark_adu"], "flat_adu": calibration["flat_adu"]}).encode()


def _reference_sessions(frames: ReferenceFrames, bad: set[Path], ctx: _Context) -> list[tuple[dict, dict]]:
    """(calibration, dark/flat frame paths) per session of the reference dark/flat frames, each stored with its
    levels; frames that cannot be used are rejected (their problem named once for all of them)."""
    n, problem = session_count(frames)
    usable = [p for p in frames.darks + frames.flats if p not in bad]
    if problem:
        ctx.result.rejected += [
            Reject(str(p), "unpaired reference frames", problem, "one dark and one flat per session") for p in usable
        ]
        return []
    sessions = []
    for i in range(n):
        given = {
            name: (ps[i] if len(ps) > 1 else ps[0])
            for name, ps in (("dark", frames.darks), ("flat", frames.flats))
            if ps
        }
        if any(p in bad for p in given.values()):
            continue
        first = next(iter(given.values()))
        try:
            shape = ctx.finder.load(first).pixels.shape
            calibration, loaded = ctx.finder.resolve(first, shape, given)
        except LevelsMissing as exc:
            ctx.result.rejected += [
                Reject(
                    str(p),
                    "missing settings: " + ", ".join(exc.names),
                    frames.where.get(p, "").rstrip(": "),
                    _settings_fix(exc.names),
                )
                for p in given.values()
            ]
            continue
        except ValueError as exc:
            ctx.result.rejected += [Reject(str(p), "unusable calibration frame", str(exc)) for p in given.values()]
            continue
        _store_session(calibration, loaded, ctx)
        _put_once(ctx.store, f"calibration/{calibration['session']}/levels.json", _levels_json(calibration))
        sessions.append((calibration, given))
    return sessions


def _store_wedge(path: Path, wedge_mm: float, session: tuple[dict, dict] | None, given: dict, ctx: _Context) -> None:
    data, pixels, bits = _read(path, ctx)
    if session is None:  # no reference dark/flat frames: the frame's own, as a plate's are found
        try:
            calibration, loaded = ctx.finder.resolve(path, pixels.shape, given)
        except LevelsMissing as exc:
            raise _Rejected(
                "missing settings: " + ", ".join(exc.names),
                "",
                _settings_fix(exc.names),
            ) from None
        except ValueError as exc:
            raise _Rejected("unusable calibration frame", str(exc)) from None
        _store_session(calibration, loaded, ctx)
        ctx.result.references.levels_only = ctx.result.references.levels_only or not loaded
    else:
        calibration = session[0]
        dark = ctx.finder.load(next(iter(session[1].values())))
        if dark.pixels.shape != pixels.shape:
            raise _Rejected(
                "unusable calibration frame",
                f"the wedge-alone frame is {'x'.join(map(str, pixels.shape))}"
                f" (CxHxW), its session's frames {'x'.join(map(str, dark.pixels.shape))}",
            )
    sid = calibration["session"]
    img, fmt = encode_image(pixels)
    digest = hashlib.sha256(data).hexdigest()[:12]
    _put_once(ctx.store, f"calibration/{sid}/levels.json", _levels_json(calibration))
    _put_once(ctx.store, f"calibration/{sid}/wedge-{wedge_mm:g}mm-{digest}.{fmt}", img)
    if sid not in ctx.result.references.sessions:
        ctx.result.references.sessions.append(sid)
    ctx.result.references.wedge_frames[wedge_mm] += 1


def store_references(frames: ReferenceFrames, plates: list[SourceFile], bad: set[Path], ctx: _Context) -> None:
    """The reference frames where `alloynet rig fit` reads them (calibration/<session>/dark, flat,
    wedge-<mm>mm-<hash> and levels.json), and each plate given a session's frames to fall back on: the k-th
    capture of a plate the k-th session's (modulo their number)."""
    sessions = _reference_sessions(frames, bad, ctx)
    refs = ctx.result.references
    refs.sessions += [c["session"] for c, _ in sessions if c["session"] not in refs.sessions]
    for wedge_mm, paths in frames.wedges.items():
        for j, path in enumerate(p for p in paths if p not in bad):
            try:
                _store_wedge(
                    path, wedge_mm, sessions[j % len(sessions)] if sessions else None, frames.given.get(path, {}), ctx
                )
            except _Rejected as exc:
                detail = (frames.where.get(path, "") + exc.detail).rstrip(": ")
                ctx.result.rejected.append(Reject(str(path), exc.problem, detail, exc.fix))
    if sessions:
        per_plate: Counter = Counter()
        for item in plates:
            k = per_plate[item.plate_id or item.rel]
            per_plate[item.plate_id or item.rel] += 1
            item.fallback = sessions[k % len(sessions)][1]


def _one_size(
    items: list[SourceFile], frames: list[Path], accepted: set, result: ImportResult
) -> tuple[list[SourceFile], tuple[int, int] | None]:
    """Header sizes; files that cannot be read are rejected, and so are sizes other than the most common and
    a common size that is not accepted (one problem, naming --accept-size)."""
    sizes: dict[int, tuple[int, int]] = {}
    paths = [i.path for i in items] + frames
    alloys = [i.alloy for i in items] + [UNKNOWN_CLASS] * len(frames)
    for i, path in enumerate(paths):
        try:
            sizes[i] = probe_size(path)
        except SourceImageError as exc:
            result.rejected.append(Reject(str(path), exc.problem, exc.detail, exc.fix, alloys[i]))
        except OSError as exc:
            result.rejected.append(Reject(str(path), "unreadable file", str(exc.strerror or exc), alloy=alloys[i]))
    if not sizes:
        return [], None
    counts = Counter(sizes[i] for i in sizes if i < len(items)) or Counter(sizes.values())
    common = max(counts, key=lambda s: (counts[s], s))
    for i, s in sizes.items():
        if s != common:
            result.rejected.append(
                Reject(
                    str(paths[i]),
                    "image size differs from the rest of the import",
                    f"{s[0]}x{s[1]} (HxW); {counts[common]} image(s) are {common[0]}x{common[1]}",
                    f"import each size separately (--accept-size {s[0]}x{s[1]} for its run)",
                    alloys[i],
                )
            )
    if accepted and common not in accepted:
        for i, s in sizes.items():
            if s == common:
                result.rejected.append(
                    Reject(
                        str(paths[i]),
                        f"image size {common[0]}x{common[1]} not accepted",
                        f"accepted: {', '.join(f'{h}x{w}' for h, w in sorted(accepted))}",
                        f"--accept-size {common[0]}x{common[1]}",
                        alloys[i],
                    )
                )
        return [], common
    return [items[i] for i, s in sizes.items() if i < len(items) and s == common], common


def _unlisted_sizes(result: ImportResult, common: tuple[int, int] | None) -> None:
    """Images a labels CSV does not list are probed too: a size that would have been refused (not the import's,
    or, where nothing was listed, not the most common) is said beside "not listed", so the listing does not
    hide it."""
    sizes: dict[int, tuple[int, int]] = {}
    for n, r in enumerate(result.rejected):
        if r.problem.startswith("not listed in "):
            try:
                sizes[n] = probe_size(Path(r.path))
            except (OSError, SourceImageError):
                continue
    if common is None and sizes:
        counts = Counter(sizes.values())
        common = max(counts, key=lambda s: (counts[s], s))
    for n, (h, w) in sizes.items():
        if common is not None and (h, w) != common:
            r = result.rejected[n]
            also = f"also {h}x{w} (HxW), not the import's {common[0]}x{common[1]}"
            result.rejected[n] = replace(r, detail=f"{r.detail}; {also}" if r.detail else also)


def _plan(
    root: Path, found: Walk, labels: Path | None, settings: ImportSettings, result: ImportResult
) -> tuple[list[SourceFile], ReferenceFrames]:
    alloys = settings.alloy_table()
    if labels:
        items, rejects = plan_labels_csv(labels, root, found, alloys)
        csv_frames, items, more = csv_reference_frames(items, settings.rig.get("wedge_mm"))
        rejects += more
    else:
        (items, rejects), csv_frames = plan_image_folder(root, found, alloys), ReferenceFrames()
    result.rejected += rejects
    result.skipped += [str(p) for p in found.others]
    frames = csv_frames
    if found.reference is not None:
        listed = {i.path for i in items} | set(csv_frames.paths)
        folder_frames, plates, more, skipped = plan_reference_folder(root, found.reference, listed, alloys)
        frames = merge(csv_frames, folder_frames)
        items += plates
        result.rejected += more
        result.skipped += [str(p) for p in skipped]
    return items, frames


def run_import(
    source: Path,
    store: ObjectStore,
    settings: ImportSettings,
    labels: Path | None = None,
    accepted_sizes: set | None = None,
    wait: float = 0.0,
    progress: Callable[[int, int], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
    ignore: tuple[Path, ...] = (),
) -> ImportResult:
    """Import the ImageFolder tree at ``source`` (or the files a labels CSV lists, relative to ``source``), and
    the reference captures under ``source/reference/``, into ``store``, holding its writer lock. Raises
    ``ImportUsageError`` for a bad CSV or root, and the store's own errors (``StoreError``, ``WriterBusy``);
    every file-level problem is in ``result.rejected``. ``ignore``: files under ``source`` that are not source
    material (the rig YAML)."""
    root = Path(source).resolve()
    if not root.is_dir():
        raise ImportUsageError(
            f"{source}: not a directory (expected an ImageFolder root or the folder of the files a labels CSV names)"
        )
    result = ImportResult()

    def warn(path: Path, msg: str) -> None:
        result.warnings.append(f"{path}: {msg}")
        if on_warning:
            on_warning(result.warnings[-1])

    skip = {Path(p).resolve() for p in (*ignore, *([labels] if labels else []))}
    if isinstance(store, LocalStore):
        skip.add(store.root)  # a store inside the source tree is not source material
    found = walk(root, skip)
    items, frames = _plan(root, found, Path(labels).resolve() if labels else None, settings, result)
    accepted = ACCEPTED_SIZES if accepted_sizes is None else accepted_sizes
    items, common = _one_size(items, frames.paths, accepted, result)
    _unlisted_sizes(result, common)
    given = set(settings.rig) | {k for i in items for k in i.rig}
    result.defaults = defaulted_rig_fields(given)
    with writer_lock(store, "import", wait):
        existing = {i.key for i in store.list(CAPTURES) if i.key.endswith(".json")}
        ctx = _Context(
            store, settings, FrameFinder(root, found.frames, settings, warn), accepted_sizes, existing, result
        )
        bad = {Path(r.path) for r in result.rejected}
        # reference plates take their reference session's frames where none is nearer; so do other plates
        store_references(frames, sorted(items, key=lambda i: i.role != "reference"), bad, ctx)
        for n, item in enumerate(items, 1):
            _import_one(item, ctx)
            if progress:
                progress(n, len(items))
    for path in result.eight_bit:
        warn(Path(path), EIGHT_BIT_WARNING)
    result.rejected.sort(key=lambda r: r.path)
    return result

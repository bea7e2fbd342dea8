"""Where captures live inside a store, and reading/writing/quarantining whole captures.

    captures/<id>.png|tiff      the raw detector image (its name derives from the id, never from input)
    captures/<id>.json          its sidecar, written last: a capture exists once its sidecar does
    calibration/<session>/dark.png, flat.png (second rig: also wedge-<wedge_mm>mm.png, the wedge alone)
    quarantine/<id>/...         bad captures as received, plus reason.json (written last)

The quarantine is a state, not a grave: there is one entry per source object (a sidecar, or an orphan
image), updated when the same object fails again and removed when it is ingested after all (the image was
re-uploaded, the sidecar fixed). ``reason.json`` says why, since when and how many attempts failed.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from alloynet.captures.format import CAPTURE_ID_PATTERN, Sidecar, image_file_name, parse_sidecar, validate_capture
from alloynet.captures.image import CaptureError
from alloynet.captures.stores import ObjectMissing, ObjectStore, object_path

CAPTURES = "captures/"
QUARANTINE = "quarantine/"


def sidecar_key(capture_id: str) -> str:
    return f"{CAPTURES}{capture_id}.json"


def image_key(sidecar: Sidecar) -> str:
    """Derived from the capture id and format only, so a capture can only ever address its own image."""
    return f"{CAPTURES}{image_file_name(sidecar.capture_id, sidecar.image.format)}"


@dataclass
class Capture:
    sidecar: Sidecar
    image: np.ndarray  # uint16 [C, H, W]

    @property
    def capture_id(self) -> str:
        return self.sidecar.capture_id


def write_capture(store: ObjectStore, sidecar: Sidecar, image_bytes: bytes, *, overwrite: bool = False) -> None:
    """Image first, sidecar last, so a reader never finds a sidecar whose image is still missing."""
    store.put(image_key(sidecar), image_bytes, overwrite=overwrite)
    store.put(sidecar_key(sidecar.capture_id), sidecar.model_dump_json(indent=1).encode(), overwrite=overwrite)


def read_capture(store: ObjectStore, capture_id: str, accepted_sizes=None) -> Capture:
    where = object_path(store, sidecar_key(capture_id))
    try:
        sc = parse_sidecar(store.get(sidecar_key(capture_id)), where)
    except ObjectMissing:
        raise CaptureError(where, "sidecar", "missing") from None
    img_where = object_path(store, image_key(sc))
    try:
        data = store.get(image_key(sc))
    except ObjectMissing:
        raise CaptureError(img_where, "image", "image file missing for this sidecar") from None
    return Capture(sc, validate_capture(sc, data, img_where, accepted_sizes))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _folder_name(name: str, source: str) -> str:
    """A quarantine folder for ``name``; names that are not valid capture ids get a hashed stand-in."""
    if re.fullmatch(CAPTURE_ID_PATTERN, name):
        return name
    return "_invalid-" + hashlib.sha256(source.encode()).hexdigest()[:16]


class Quarantine:
    """The quarantine of one store, indexed by source location (read once, then kept up to date)."""

    def __init__(self, store: ObjectStore):
        self.store = store
        self._entries: dict[str, dict] = {}
        self._stray: list[str] = []  # files of folders without reason.json (a crash mid-add/-release)
        keys = [i.key for i in store.list(QUARANTINE)]
        folders = {k[: -len("reason.json")] for k in keys if k.endswith("/reason.json")}
        self._folders = set(folders)  # every folder in use, even one hidden by a same-source duplicate
        for folder in sorted(folders):
            try:
                entry = json.loads(self.store.get(folder + "reason.json"))
            except (ObjectMissing, ValueError):
                continue
            entry["folder"] = folder
            self._entries[entry.get("source", folder)] = entry
        self._stray = [k for k in keys if "/".join(k.split("/")[:2]) + "/" not in folders]

    def entries(self) -> list[dict]:
        return sorted(self._entries.values(), key=lambda e: e["folder"])

    def get(self, source: str) -> dict | None:
        return self._entries.get(source)

    def from_source(self, source_uri: str) -> list[dict]:
        """Entries whose object came from the store at ``source_uri``."""
        base = source_uri.rstrip("/") + "/"
        # entries record their source's URI; older ones only the object's location (a prefix match, which
        # would also take in a source nested under this one, so the recorded URI wins where there is one)
        return [
            e
            for e in self.entries()
            if e.get("source_uri", source_uri) == source_uri and str(e.get("source", "")).startswith(base)
        ]

    def sweep(self) -> list[str]:
        """Remove files left by a crash in the middle of adding or releasing an entry."""
        for key in self._stray:
            self.store.delete(key)
        swept, self._stray = self._stray, []
        return swept

    def add(self, name: str, files: dict[str, bytes], error: CaptureError | str, source: str, **extra) -> str:
        """Record why ``source`` failed, with its files as received; a second failure of the same source
        updates its entry (new reason, new files, one more attempt) instead of adding another."""
        old = self._entries.get(source)
        if old is not None:
            folder = old["folder"]
        else:
            base = QUARANTINE + _folder_name(name, source)
            folder = next(
                f for f in (base + (f".{n}" if n else "") + "/" for n in range(10_000)) if f not in self._folders
            )
            self._folders.add(folder)
        for info in list(self.store.list(folder)):  # what an earlier attempt (or a crash) left there
            if info.key != folder + "reason.json" and info.key[len(folder) :] not in files:
                self.store.delete(info.key)
        for fname, data in files.items():
            self.store.put(folder + fname, data, overwrite=True)
        now = _now()
        entry = {
            "reason": str(error),
            "field": getattr(error, "field", None),
            "source": source,
            "quarantined_at": old.get("quarantined_at", now) if old else now,
            "updated_at": now,
            "attempts": int(old.get("attempts", 1)) + 1 if old else 1,
            **extra,
        }
        self.store.put(folder + "reason.json", json.dumps(entry, indent=1).encode(), overwrite=True)  # last
        self._entries[source] = {**entry, "folder": folder}
        return folder

    def release(self, source: str) -> str | None:
        """The problem is gone: remove the entry (reason.json first, so it vanishes at once)."""
        entry = self._entries.pop(source, None)
        if entry is None:
            return None
        folder = entry["folder"]
        self.store.delete(folder + "reason.json")
        for info in list(self.store.list(folder)):
            self.store.delete(info.key)
        self._folders.discard(folder)
        return folder


def quarantine(store: ObjectStore, name: str, files: dict[str, bytes], error: CaptureError | str, source: str) -> str:
    """Keep a bad capture exactly as received, with a machine- and human-readable reason (see Quarantine)."""
    return Quarantine(store).add(name, files, error, source)


def list_quarantine(store: ObjectStore) -> list[dict]:
    """Current quarantine entries: folder, reason, field, source, quarantined_at, updated_at, attempts."""
    return Quarantine(store).entries()

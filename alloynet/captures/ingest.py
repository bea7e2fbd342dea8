"""Incremental, verified ingest from a capture store (S3 or local) into the local data store.

* Only sidecars newer than the watermark are listed. The watermark is (modified time, versions seen at
  that time) where a version is key + ETag: S3 timestamps have one-second resolution, so objects sharing
  a timestamp are neither skipped nor repeated, and a re-upload within the same second is still seen.
* Every capture is downloaded, checked against its sidecar (hash, dtype, size, fields) and written
  atomically; bad ones go to quarantine with a reason, never silently dropped.
* Idempotent: a capture already present with the same hash is a duplicate and changes nothing; one
  with the same id but different bytes is quarantined as a conflict, never overwriting what is stored.
* The watermark advances after each capture, so a crash loses nothing and the next run resumes.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field

from alloynet.captures.format import CaptureError, parse_sidecar, validate_capture
from alloynet.captures.layout import CAPTURES, image_key, quarantine, sidecar_key
from alloynet.captures.stores import ObjectInfo, ObjectMissing, ObjectStore, object_path

log = logging.getLogger(__name__)


@dataclass
class IngestResult:
    new: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    quarantined: dict[str, str] = field(default_factory=dict)   # source key -> reason
    vanished: list[str] = field(default_factory=list)           # deleted between list and get
    watermark: float = 0.0

    def summary(self) -> str:
        return (f"{len(self.new)} new, {len(self.duplicates)} duplicate, {len(self.quarantined)} quarantined, "
                f"{len(self.vanished)} vanished")


def _state_key(source: ObjectStore) -> str:
    return f"state/ingest-{hashlib.sha256(source.uri.encode()).hexdigest()[:16]}.json"


def load_watermark(dest: ObjectStore, source: ObjectStore) -> tuple[float, set[str]]:
    try:
        st = json.loads(dest.get(_state_key(source)))
        return float(st["modified"]), set(st["keys"])
    except ObjectMissing:
        return 0.0, set()


def _save_watermark(dest: ObjectStore, source: ObjectStore, modified: float, keys: set[str]) -> None:
    body = {"source": source.uri, "modified": modified, "keys": sorted(keys)}
    dest.put(_state_key(source), json.dumps(body).encode(), overwrite=True)


def _version(o: ObjectInfo) -> str:
    return f"{o.key}@{o.etag or o.size}"


def pending(source: ObjectStore, dest: ObjectStore, prefix: str = CAPTURES) -> list[ObjectInfo]:
    """Sidecars in ``source`` newer than the watermark, oldest first."""
    wm, seen = load_watermark(dest, source)
    todo = [o for o in source.list(prefix) if o.key.endswith(".json")
            and (o.modified > wm or (o.modified == wm and _version(o) not in seen))]
    return sorted(todo, key=lambda o: (o.modified, o.key))


def ingest(source: ObjectStore, dest: ObjectStore, prefix: str = CAPTURES, accepted_sizes=None,
           limit: int | None = None) -> IngestResult:
    result = IngestResult()
    wm, seen = load_watermark(dest, source)
    for info in pending(source, dest, prefix)[:limit]:
        _ingest_one(source, dest, info, result, accepted_sizes)
        if info.modified > wm:
            wm, seen = info.modified, set()
        seen.add(_version(info))
        _save_watermark(dest, source, wm, seen)
    result.watermark = wm
    log.info("ingest from %s: %s", source.uri, result.summary())
    return result


def _ingest_one(source: ObjectStore, dest: ObjectStore, info: ObjectInfo, result: IngestResult,
                accepted_sizes) -> None:
    where = object_path(source, info.key)
    name = info.key.rsplit("/", 1)[-1][: -len(".json")]
    try:
        sc_bytes = source.get(info.key)
    except ObjectMissing:
        log.warning("%s vanished between list and get; skipped", where)
        result.vanished.append(info.key)
        return
    files = {info.key.rsplit("/", 1)[-1]: sc_bytes}
    try:
        sc = parse_sidecar(sc_bytes, where)
        img_key = image_key(sc)
        try:
            img = source.get(img_key)
        except ObjectMissing:
            raise CaptureError(object_path(source, img_key), "image", "image file missing for this sidecar") from None
        files[sc.image.file] = img
        validate_capture(sc, img, object_path(source, img_key), accepted_sizes)
        if sc.capture_id != name:
            raise CaptureError(where, "capture_id", f"sidecar says {sc.capture_id!r} but the file is named {name!r}")
        if dest.exists(sidecar_key(sc.capture_id)):
            stored = parse_sidecar(dest.get(sidecar_key(sc.capture_id)))
            if stored.image.sha256 == sc.image.sha256:
                result.duplicates.append(sc.capture_id)
                return
            raise CaptureError(where, "capture_id", f"a different capture {sc.capture_id!r} is already stored "
                                                    "(conflicting upload); the stored one is kept")
        dest.put(image_key(sc), img, overwrite=True)  # an orphan image from a crashed run may be there
        dest.put(sidecar_key(sc.capture_id), sc_bytes)
        result.new.append(sc.capture_id)
    except CaptureError as err:
        folder = quarantine(dest, name, files, err, where)
        log.warning("quarantined %s -> %s: %s", where, folder, err)
        result.quarantined[info.key] = str(err)

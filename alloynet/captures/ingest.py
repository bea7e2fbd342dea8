"""Incremental, verified ingest from a capture store (S3 or local) into the local data store.

* Only sidecars newer than the watermark are listed. The watermark is (modified time, versions seen at
  that time) where a version is key + ETag: S3 timestamps have one-second resolution, so objects sharing
  a timestamp are neither skipped nor repeated, and a re-upload within the same second is still seen.
* Every capture is downloaded, checked against its sidecar (hash, dtype, size, fields, limits) and written
  atomically; bad ones go to quarantine with a reason, never silently dropped. Whatever goes wrong with one
  capture (a malformed sidecar, a path in it, a parser giving up) quarantines that capture and ingest moves
  on; only a failure of the stores themselves (``StoreError``, a full disk) stops the run, and then the
  watermark has not moved past the capture being worked on.
* A capture can only write its own files: both keys derive from ``capture_id`` (which must match the
  sidecar's file name), and nothing stored is overwritten. A capture already present with the same hash and
  labels is a duplicate and changes nothing; one with the same id but different bytes is quarantined as a
  conflict.
* The quarantine is a state: an entry is retried when its image changes at the source (re-uploaded after
  being missing or damaged), when its sidecar is re-uploaded (the watermark sees that), or on request
  (``retry_quarantined``); it leaves the quarantine once it ingests. An image with no sidecar after a grace
  period is reported as an orphan (a quarantine entry too, released when its sidecar arrives).
* A stored capture's labels change only by a recorded relabel (``alloynet.captures.labels``): a sidecar that
  arrives with other labels for the same image is quarantined as a label conflict showing both values. An
  image replaced at the source under a stored capture's name (sidecar unchanged) is noticed by its version
  (ETag or size and time) and hash, and quarantined as an image conflict; the stored capture is kept.
* One writer per destination (``writer_lock``): a second ingest waits or stops with a clear message.
  Under the lock, temp files a killed writer left behind are removed.
* The watermark advances after each capture, so a crash loses nothing and the next run resumes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

from alloynet.captures.format import (
    CAPTURE_ID_PATTERN,
    IMAGE_EXTENSIONS,
    MAX_IMAGE_BYTES,
    MAX_SIDECAR_BYTES,
    parse_sidecar,
    validate_capture,
)
from alloynet.captures.image import CaptureError, sha256
from alloynet.captures.labels import LabelConflict, label_conflict
from alloynet.captures.layout import CAPTURES, QUARANTINE, Quarantine, image_key, sidecar_key
from alloynet.captures.rig_profiles import copy_new_rig_profiles
from alloynet.captures.stores import (
    TEMP_PREFIX,
    LocalStore,
    ObjectExists,
    ObjectInfo,
    ObjectMissing,
    ObjectRefused,
    ObjectStore,
    StoreError,
    object_path,
    writer_lock,
)

log = logging.getLogger(__name__)

ORPHAN_GRACE_S = 3600.0  # an image may precede its sidecar (images are uploaded first) by this much
_ID_RE = re.compile(CAPTURE_ID_PATTERN)
_IMAGE_SUFFIXES = tuple(IMAGE_EXTENSIONS.values()) + (".tif",)


@dataclass
class IngestResult:
    new: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    quarantined: dict[str, str] = field(default_factory=dict)  # source key -> reason
    vanished: list[str] = field(default_factory=list)  # deleted between list and get
    watermark: float = 0.0
    released: list[str] = field(default_factory=list)  # quarantine folders whose problem is gone
    retried: list[str] = field(default_factory=list)  # quarantined source keys tried again
    orphans: list[str] = field(default_factory=list)  # source images with no sidecar past the grace period
    cleaned: list[str] = field(default_factory=list)  # temp files of killed writers, removed
    image_conflicts: list[str] = field(default_factory=list)  # stored captures' images changed at the source
    image_versions: dict[str, str] = field(default_factory=dict, repr=False)  # source image -> version ingested
    rig_profiles: list[str] = field(default_factory=list)  # rig profiles (rig fit) copied from the source
    rig_profile_conflicts: list[str] = field(default_factory=list)  # held here with other bytes: left as they are

    def summary(self) -> str:
        s = (
            f"{len(self.new)} new, {len(self.duplicates)} duplicate, {len(self.quarantined)} quarantined, "
            f"{len(self.vanished)} vanished"
        )
        extra = [
            f"{len(v)} {k}"
            for k, v in (
                ("released from quarantine", self.released),
                ("orphan image(s)", self.orphans),
                ("image(s) changed at the source", self.image_conflicts),
                ("rig profile file(s) copied", self.rig_profiles),
                ("rig profile file(s) differing from the stored ones (kept)", self.rig_profile_conflicts),
            )
            if v
        ]
        return s + ("; " + ", ".join(extra) if extra else "")


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


def _image_version(o: ObjectInfo | None) -> str | None:
    """What a quarantine entry remembers of its image: any re-upload (even of the same bytes) changes it."""
    return f"{o.etag or o.size}@{o.modified:.6f}" if o is not None else None


def _pending(listing: dict[str, ObjectInfo], wm: float, seen: set[str]) -> list[ObjectInfo]:
    todo = [
        o
        for o in listing.values()
        if o.key.endswith(".json") and (o.modified > wm or (o.modified == wm and _version(o) not in seen))
    ]
    return sorted(todo, key=lambda o: (o.modified, o.key))


def pending(source: ObjectStore, dest: ObjectStore, prefix: str = CAPTURES) -> list[ObjectInfo]:
    """Sidecars in ``source`` newer than the watermark, oldest first."""
    wm, seen = load_watermark(dest, source)
    return _pending({o.key: o for o in source.list(prefix)}, wm, seen)


def ingest(
    source: ObjectStore,
    dest: ObjectStore,
    prefix: str = CAPTURES,
    accepted_sizes=None,
    limit: int | None = None,
    *,
    retry_quarantined: bool = False,
    orphan_grace_s: float = ORPHAN_GRACE_S,
    wait: float = 0.0,
    lock: bool = True,
) -> IngestResult:
    """Pull what is new since the watermark (and quarantined captures whose image changed since).

    ``retry_quarantined`` tries every quarantined capture of this source again, changed or not.
    ``wait``: seconds to wait for another writer of ``dest`` before raising ``WriterBusy``; ``lock=False``
    is for a caller that already holds ``writer_lock(dest)``. ``limit`` stops after that many new sidecars
    (as if the run had died there: retries and the orphan report are skipped)."""
    with writer_lock(dest, "ingest", wait) if lock else nullcontext():
        return _run(
            source,
            dest,
            prefix,
            accepted_sizes,
            limit,
            pull_new=True,
            force_retry=retry_quarantined,
            orphan_grace_s=orphan_grace_s,
        )


def retry_quarantined(
    source: ObjectStore,
    dest: ObjectStore,
    prefix: str = CAPTURES,
    accepted_sizes=None,
    *,
    wait: float = 0.0,
    lock: bool = True,
) -> IngestResult:
    """Try every quarantined capture of ``source`` again (nothing new is pulled, the watermark stays)."""
    with writer_lock(dest, "quarantine retry", wait) if lock else nullcontext():
        return _run(source, dest, prefix, accepted_sizes, None, pull_new=False, force_retry=True, orphan_grace_s=None)


def clean_leftovers(dest: ObjectStore) -> list[str]:
    """Temp files of killed writers in the places ingest writes; call only while holding the writer lock
    (then no temp file there can belong to a live writer, whatever its age)."""
    if not isinstance(dest, LocalStore):
        return []  # S3 writes are single PUTs: nothing half-written is ever visible
    removed: list[str] = []
    for pfx in (CAPTURES, QUARANTINE, "state/"):
        removed += dest.clean_temp(pfx, older_than=0)
    for p in dest.root.glob(TEMP_PREFIX + "*"):  # manifest temp files live at the top
        if p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p.name)
    return removed


def _run(
    source: ObjectStore,
    dest: ObjectStore,
    prefix: str,
    accepted_sizes,
    limit: int | None,
    *,
    pull_new: bool,
    force_retry: bool,
    orphan_grace_s: float | None,
) -> IngestResult:
    result = IngestResult()
    result.cleaned = clean_leftovers(dest)
    if result.cleaned:
        log.info("removed %d temp file(s) left by a killed writer", len(result.cleaned))
    q = Quarantine(dest)
    q.sweep()
    wm, seen = load_watermark(dest, source)
    listing = {o.key: o for o in source.list(prefix)}
    done: set[str] = set()
    todo = _pending(listing, wm, seen) if pull_new else []
    truncated = limit is not None and len(todo) > limit
    for info in todo[:limit]:
        _ingest_one(source, dest, info, result, accepted_sizes, q, listing, prefix)
        done.add(info.key)
        if info.modified > wm:
            wm, seen = info.modified, set()
        seen.add(_version(info))
        _save_watermark(dest, source, wm, seen)
    result.watermark = wm
    if not truncated:
        _retry(source, dest, result, accepted_sizes, q, listing, prefix, done, force_retry)
        if orphan_grace_s is not None:
            _report_orphans(source, result, q, listing, prefix, orphan_grace_s)
        if pull_new:
            _check_images(source, dest, result, q, listing, prefix)
            result.rig_profiles, result.rig_profile_conflicts = copy_new_rig_profiles(source, dest)
    elif result.image_versions:
        versions = load_image_versions(dest, source)
        _save_image_versions(dest, source, {**versions, **result.image_versions})
    log.info("ingest from %s: %s", source.uri, result.summary())
    return result


def _retry(source, dest, result, accepted_sizes, q: Quarantine, listing, prefix, done, force: bool) -> None:
    base = source.uri.rstrip("/") + "/"
    for entry in q.from_source(source.uri):
        key = entry["source"][len(base) :]
        if entry.get("kind") == "orphan" or not key.endswith(".json") or key in done:
            continue
        info = listing.get(key)
        if info is None:
            continue  # the sidecar is gone from the source: the entry stays, with the copy kept
        img = entry.get("image_key")
        changed = img is not None and _image_version(listing.get(img)) != entry.get("image_version")
        if force or changed:
            result.retried.append(key)
            _ingest_one(source, dest, info, result, accepted_sizes, q, listing, prefix)
            done.add(key)


def _report_orphans(source, result, q: Quarantine, listing, prefix, grace: float) -> None:
    now = time.time()
    orphans = {}
    for key, info in listing.items():
        if key.lower().endswith(_IMAGE_SUFFIXES):
            sidecar = key.rsplit(".", 1)[0] + ".json"
            if sidecar not in listing and now - info.modified >= grace:
                orphans[key] = info
    for key, info in sorted(orphans.items()):
        where = object_path(source, key)
        result.orphans.append(key)
        entry = q.get(where)
        if entry is not None and entry.get("image_version") == _image_version(info):
            continue  # already reported as it is
        name = key[len(prefix) :].rsplit(".", 1)[0]
        files = {}
        if info.size <= MAX_IMAGE_BYTES:
            try:
                files = {key.rsplit("/", 1)[-1]: source.get(key)}
            except ObjectMissing:
                continue
            except ObjectRefused:
                files = {}
        err = CaptureError(where, "sidecar", f"orphan image: no sidecar {name}.json after {grace:.0f} s")
        q.add(
            name,
            files,
            err,
            where,
            kind="orphan",
            source_uri=source.uri,
            image_key=key,
            image_version=_image_version(info),
        )
        log.warning("%r", str(err))  # %r: a name from outside cannot drive the terminal or fake a log line
    base = source.uri.rstrip("/") + "/"
    for entry in q.from_source(source.uri):  # no longer orphans: the sidecar came, or the image went
        if entry.get("kind") == "orphan" and entry["source"][len(base) :] not in orphans:
            result.released.append(q.release(entry["source"]))


def _images_state_key(source: ObjectStore) -> str:
    return _state_key(source).removesuffix(".json") + "-images.json"


def load_image_versions(dest: ObjectStore, source: ObjectStore) -> dict[str, str]:
    """Source image key -> the version (ETag or size, and time) of the image its stored capture came from."""
    try:
        return dict(json.loads(dest.get(_images_state_key(source)))["images"])
    except ObjectMissing:
        return {}


def _save_image_versions(dest: ObjectStore, source: ObjectStore, versions: dict[str, str]) -> None:
    body = {"source": source.uri, "images": dict(sorted(versions.items()))}
    dest.put(_images_state_key(source), json.dumps(body).encode(), overwrite=True)


def _check_images(
    source: ObjectStore,
    dest: ObjectStore,
    result: IngestResult,
    q: Quarantine,
    listing: dict[str, ObjectInfo],
    prefix: str,
) -> None:
    """A stored capture's image replaced at the source under the same name (its sidecar unchanged) is
    quarantined as a conflict; the stored capture is kept. Only images whose version differs from the one
    recorded at ingest (or that have none recorded: stores ingested before this check) are downloaded and
    compared by hash. An image put back as it was leaves the quarantine."""
    versions = {**load_image_versions(dest, source), **result.image_versions}
    stored = {o.key for o in dest.list(CAPTURES) if o.key.endswith(".json")}
    for key, info in sorted(listing.items()):
        name = key[len(prefix) :]
        cid, _, ext = name.rpartition(".")
        if f".{ext.lower()}" not in _IMAGE_SUFFIXES or not _ID_RE.match(cid) or "/" in name:
            continue
        if f"{prefix}{cid}.json" not in listing or sidecar_key(cid) not in stored:
            continue  # not (yet) a stored capture: ingest or the orphan report deals with it
        if f"{prefix}{cid}.json" in result.quarantined:
            continue  # its sidecar came with it and is quarantined already, naming the conflict
        version = f"{info.etag or info.size}@{info.modified:.6f}"  # _image_version of a listed object
        if versions.get(key) == version:
            continue
        where = object_path(source, key)
        entry = q.get(where)
        if entry is not None and entry.get("image_version") == version:
            result.image_conflicts.append(key)
            continue  # reported already, as it is now
        try:
            kept = parse_sidecar(dest.get(sidecar_key(cid)), object_path(dest, sidecar_key(cid)))
        except (ObjectMissing, CaptureError):
            continue
        if kept.image.file != name:
            continue  # another format's file under the same id: not this capture's image
        try:
            data = source.get(key) if info.size <= MAX_IMAGE_BYTES else None
        except (ObjectMissing, ObjectRefused):
            continue
        now = sha256(data) if data is not None else f"({info.size} bytes, not read)"
        if now == kept.image.sha256:
            versions[key] = version
            if entry is not None and entry.get("kind") == "image-conflict":
                result.released.append(q.release(where) or where)
            continue
        err = CaptureError(
            where,
            "image",
            f"image changed at the source under the same name: the stored capture "
            f"{cid!r} has sha256 {kept.image.sha256[:12]}..., the source now "
            f"{now[:12]}...; the stored capture is kept",
        )
        q.add(
            cid,
            {name: data} if data is not None else {},
            err,
            where,
            kind="image-conflict",
            source_uri=source.uri,
            capture_id=cid,
            image_key=key,
            image_version=version,
        )
        log.warning("%r", str(err))
        result.quarantined[key] = str(err)
        result.image_conflicts.append(key)
    _save_image_versions(dest, source, versions)


def _ingest_one(
    source: ObjectStore,
    dest: ObjectStore,
    info: ObjectInfo,
    result: IngestResult,
    accepted_sizes,
    q: Quarantine,
    listing: dict[str, ObjectInfo],
    prefix: str = CAPTURES,
) -> None:
    where = object_path(source, info.key)
    name = info.key[len(prefix) : -len(".json")]
    valid_name = bool(_ID_RE.match(name))
    files: dict[str, bytes] = {}
    img_key: str | None = None
    img_missing = False
    try:
        if not valid_name:
            raise CaptureError(
                where,
                "sidecar",
                "file name is not <capture_id>.json directly under "
                f"{prefix} (capture ids: letters, digits, '.', '_', '-')",
            )
        if info.size > MAX_SIDECAR_BYTES:
            raise CaptureError(where, "sidecar", f"{info.size} bytes; a sidecar may have at most {MAX_SIDECAR_BYTES}")
        try:
            sc_bytes = source.get(info.key)
        except ObjectMissing as exc:  # deleted since the listing, a dangling link, unreadable
            log.warning("%r vanished between list and get (%r); skipped", where, str(exc))
            result.vanished.append(info.key)
            return
        except ObjectRefused as exc:  # nothing outside the source is read, so nothing of it is kept
            raise CaptureError(where, "sidecar", str(exc)) from None
        files[f"{name}.json"] = sc_bytes
        sc = parse_sidecar(sc_bytes, where)
        if sc.capture_id != name:
            raise CaptureError(where, "capture_id", f"sidecar says {sc.capture_id!r} but the file is named {name!r}")
        img_key = image_key(sc)
        img_where = object_path(source, img_key)
        img_info = listing.get(img_key)
        if img_info is not None and img_info.size > MAX_IMAGE_BYTES:
            raise CaptureError(
                img_where, "image", f"{img_info.size} bytes; an image may have at most {MAX_IMAGE_BYTES}"
            )
        try:
            img = source.get(img_key)
        except ObjectMissing:
            img_missing = True
            raise CaptureError(img_where, "image", "image file missing for this sidecar") from None
        except ObjectRefused as exc:
            raise CaptureError(img_where, "image", str(exc)) from None
        files[img_key.rsplit("/", 1)[-1]] = img
        validate_capture(sc, img, img_where, accepted_sizes)
    except StoreError:
        raise  # the store failed, not the capture: stop here, the watermark has not passed this capture
    except Exception as exc:  # anything else is this capture's problem: quarantine it and move on
        err = (
            exc
            if isinstance(exc, CaptureError)
            else CaptureError(where, "sidecar", f"could not be read: {type(exc).__name__}: {str(exc)[:200]}")
        )
        image_version = None if img_missing or img_key is None else _image_version(listing.get(img_key))
        _quarantine(source, info, name if valid_name else "", files, err, q, result, img_key, image_version)
        return
    # Writing is outside the net above: a full disk or a dead destination stops the run (it is not the
    # capture's fault); only a conflict with a stored capture quarantines the newcomer.
    try:
        outcome = store_capture(dest, sc, sc_bytes, img, where)
    except CaptureError as err:
        kind = {"kind": "label-conflict", "capture_id": sc.capture_id} if isinstance(err, LabelConflict) else {}
        _quarantine(source, info, name, files, err, q, result, img_key, _image_version(listing.get(img_key)), **kind)
        return
    (result.new if outcome == "new" else result.duplicates).append(sc.capture_id)
    version = _image_version(listing.get(img_key))
    if version is not None:
        result.image_versions[img_key] = version
    released = q.release(where)
    if released:
        log.info("%r left the quarantine (%s)", where, released)
        result.released.append(released)


def _quarantine(
    source: ObjectStore,
    info: ObjectInfo,
    name: str,
    files: dict[str, bytes],
    err: CaptureError,
    q: Quarantine,
    result: IngestResult,
    img_key: str | None,
    image_version: str | None,
    **kind: str,
) -> None:
    where = object_path(source, info.key)
    extra: dict[str, str | None] = {"kind": "capture", "source_uri": source.uri, **kind}
    if img_key is not None:  # remembered so that a change of the image at the source triggers a retry
        extra.update(image_key=img_key, image_version=image_version)
    folder = q.add(name, files, err, where, **extra)
    log.warning("quarantined %r -> %s: %r", where, folder, str(err))
    result.quarantined[info.key] = str(err)


def store_capture(dest: ObjectStore, sc, sc_bytes: bytes, img: bytes, where: str) -> str:
    """Write one verified capture, image first and sidecar last; never replace a stored capture.

    Returns "new" or "duplicate" (the same image, with the same labels, is stored under this id already); a
    different capture stored under the id raises ``CaptureError``, the same image with other labels
    ``LabelConflict`` (labels change only by a recorded relabel, ``alloynet.captures.labels``). Call it while
    holding ``writer_lock(dest)``: an image without a sidecar is then taken for the leftover of a killed run.
    Ingest and import both write here."""
    skey, ikey = sidecar_key(sc.capture_id), image_key(sc)
    for _ in range(2):
        try:
            stored = parse_sidecar(dest.get(skey), object_path(dest, skey))
        except ObjectMissing:
            stored = None
        if stored is not None:
            if stored.image.sha256 == sc.image.sha256:
                conflict = label_conflict(dest, stored, sc, where)
                if conflict is not None:
                    raise conflict
                return "duplicate"
            raise CaptureError(
                where,
                "capture_id",
                f"a different capture {sc.capture_id!r} is already stored (conflicting upload); the stored one is kept",
            )
        try:
            dest.put(ikey, img)
        except ObjectExists:
            # No sidecar claims it, so it is not a stored capture but the leftover of a killed run (the
            # writer lock rules out a live one): keep it if identical, else replace it.
            if sha256(dest.get(ikey)) != sha256(img):
                dest.put(ikey, img, overwrite=True)
        try:
            dest.put(skey, sc_bytes)
            return "new"
        except ObjectExists:
            continue  # a writer that ignored the lock stored it meanwhile: judge against what is there
    raise CaptureError(where, "capture_id", f"{sc.capture_id!r} keeps changing in the destination")

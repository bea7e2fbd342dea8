"""The model store: immutable versions with verified artifacts, and a champion pointer.

Layout inside an object store (a local directory by default, an S3 prefix in production)::

    <model>/versions/v0007/files/<path>     the artifacts (checkpoint, exports, .mar, Triton repository, report)
    <model>/versions/v0007/version.json     metadata, written last: a version exists once this file does
    <model>/champion.json                   the pointer: current champion + the stack of previous ones
    <model>/events/<time>-<action>.json     append-only audit log (promote, rollback, discard)

Versions are never modified after publication; every artifact's sha256 is recorded and checked before a
version is promoted, rolled back to or fetched for serving. A publication that was killed half-way leaves
an *unfinished* version (files, no version.json): it is never listed as a version, ``unfinished()`` shows
it and ``discard``/``clean`` remove it. ``fetch`` stages and verifies everything before anything appears
in the destination, so a failed fetch leaves nothing behind. The pointer is one object replaced in a single
write (``os.replace`` locally, one PUT on S3), so readers see the old champion or the new one, never a mix.
Moving it is a true compare-and-set (``ObjectStore.put_if``: an exclusive lock locally, a conditional PUT,
If-Match, on S3): of two writers that read the same pointer exactly one wins and the other is refused, so
no promotion that reported success is ever overwritten unseen.
The audit event of a move travels inside the pointer that the move writes (``ChampionPointer.event``), so
the commit and its event are one write. The events/ file is a copy, written after the commit and again by
the next move or by any reader that finds it missing (a writer killed in between): generation, events and
``history`` always agree. Retracting the first champion writes a pointer with no version (no champion).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from alloynet.captures.stores import (
    TEMP_PREFIX,
    LocalStore,
    ObjectChanged,
    ObjectExists,
    ObjectMissing,
    ObjectStore,
    open_store,
)

log = logging.getLogger(__name__)

DEFAULT_MODEL = "alloynet"
_VERSION_RE = re.compile(r"^v(\d{4,})$")
STALE_S = 3600.0  # a temp file or an unfinished version untouched this long belongs to a dead writer


class RegistryError(RuntimeError):
    """A registry operation was refused (unknown version, nothing to roll back to, stale pointer...)."""


class ArtifactIntegrityError(RegistryError):
    """A stored artifact is missing or does not match the sha256 recorded at publication."""

    def __init__(self, version: str, problems: dict[str, str]):
        self.version, self.problems = version, problems
        detail = "; ".join(f"{k}: {v}" for k, v in sorted(problems.items()))
        super().__init__(f"version {version} failed verification: {detail}")


class Artifact(BaseModel):
    sha256: str
    size: int


class ModelVersion(BaseModel):
    """Everything needed to reproduce, audit and serve one published model."""

    model: str
    version: str
    created_at: datetime
    metrics: dict[str, Any] = Field(default_factory=dict)
    config: dict[str, Any] = Field(default_factory=dict)
    manifest_hash: str | None = None
    parent: str | None = Field(None, description="the champion when this version was published")
    artifacts: dict[str, Artifact] = Field(default_factory=dict)
    info: dict[str, Any] = Field(default_factory=dict, description="free-form: run id, decision, git sha")


class ChampionPointer(BaseModel):
    model: str
    version: str = Field(description="the champion; empty once the first champion was retracted")
    previous: list[str] = Field(default_factory=list, description="earlier champions, most recent first")
    generation: int = 0
    updated_at: datetime
    reason: str = ""
    event: dict[str, Any] | None = Field(
        default=None, description="the audit event of the move that wrote this generation (committed with it)"
    )


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _collect(files: Mapping[str, Path | str] | Path | str) -> dict[str, Path]:
    """A directory (every file under it, by relative path) or an explicit {relative path: file} mapping."""
    if isinstance(files, (str, Path)):
        root = Path(files)
        if not root.is_dir():
            raise RegistryError(f"{root} is not a directory")
        out = {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}
    else:
        out = {str(k): Path(v) for k, v in files.items()}
    for rel, p in out.items():
        if rel.startswith("/") or ".." in rel.split("/") or not rel:
            raise RegistryError(f"artifact name {rel!r} must be a relative path without '..'")
        if not p.is_file():
            raise RegistryError(f"artifact {rel!r}: {p} is not a file")
    if not out:
        raise RegistryError("refusing to publish a version without artifacts")
    return out


class ModelRegistry:
    """One model's versions and champion pointer inside an object store."""

    def __init__(self, store: ObjectStore | str | Path, model: str = DEFAULT_MODEL):
        self.store = open_store(store) if isinstance(store, (str, Path)) else store
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", model):
            raise ValueError(f"model name {model!r}: letters, digits, '_', '.', '-' only")
        self.model = model

    # ---- keys -------------------------------------------------------------------------------------
    def _vkey(self, version: str, rest: str = "") -> str:
        if not _VERSION_RE.match(version):
            raise RegistryError(f"{version!r} is not a version id (expected e.g. v0003)")
        return f"{self.model}/versions/{version}/{rest}"

    @property
    def _pointer_key(self) -> str:
        return f"{self.model}/champion.json"

    @property
    def uri(self) -> str:
        return f"{self.store.uri.rstrip('/')}/{self.model}"

    # ---- reading ----------------------------------------------------------------------------------
    def versions(self) -> list[ModelVersion]:
        """Published versions, oldest first (a version whose publication did not finish is not listed)."""
        out = []
        for info in self.store.list(f"{self.model}/versions/"):
            parts = info.key.split("/")
            if len(parts) == 4 and parts[3] == "version.json":
                out.append(self.get(parts[2]))
        return sorted(out, key=lambda v: int(v.version[1:]))

    def get(self, version: str) -> ModelVersion:
        try:
            raw = self.store.get(self._vkey(version, "version.json"))
        except ObjectMissing:
            raise RegistryError(f"{self.uri}: no published version {version}") from None
        return ModelVersion.model_validate_json(raw)

    def pointer(self) -> ChampionPointer | None:
        """The champion pointer; None when there is no champion (never was, or the first one was retracted)."""
        p = self._read_pointer()[0]
        return p if p is not None and p.version else None

    def _read_pointer(self) -> tuple[ChampionPointer | None, str | None]:
        """The pointer as stored (also one without a version) and its version token for ``put_if``."""
        try:
            raw, token = self.store.get_versioned(self._pointer_key)
        except ObjectMissing:
            return None, None
        return ChampionPointer.model_validate_json(raw), token

    def champion(self) -> ModelVersion | None:
        p = self.pointer()
        return self.get(p.version) if p else None

    def unfinished(self, older_than: float = 0.0) -> dict[str, float]:
        """Versions whose publication never finished (files but no version.json), with the seconds since
        their last write; only those idle for at least ``older_than`` seconds."""
        last: dict[str, float] = {}
        done: set[str] = set()
        for info in self.store.list(f"{self.model}/versions/"):
            parts = info.key.split("/")
            if len(parts) < 4 or not _VERSION_RE.match(parts[2]):
                continue
            if len(parts) == 4 and parts[3] == "version.json":
                done.add(parts[2])
            last[parts[2]] = max(last.get(parts[2], 0.0), info.modified)
        now = time.time()
        return {v: now - t for v, t in sorted(last.items()) if v not in done and now - t >= older_than}

    def events(self) -> list[dict]:
        """The audit log, oldest first; the last move's event comes from the pointer if its copy in events/
        was never written (the writer was killed between the two)."""
        keys = sorted(i.key for i in self.store.list(f"{self.model}/events/"))
        p = self._read_pointer()[0]
        if p is not None and p.event is not None and self._event_key(p.event) not in keys:
            keys = sorted(keys + [self._event_key(p.event)])
            committed = {self._event_key(p.event): p.event}
        else:
            committed = {}
        out = []
        for k in keys:
            try:
                out.append(committed[k] if k in committed else json.loads(self.store.get(k)))
            except ObjectMissing:  # the writer of the copy finished meanwhile: read it next time
                continue
        return out

    # ---- publishing -------------------------------------------------------------------------------
    def _claim_version(self) -> str:
        """Reserve the next version number with a create-if-absent write."""
        taken = set()
        for info in self.store.list(f"{self.model}/versions/"):
            m = _VERSION_RE.match(info.key.split("/")[2]) if info.key.count("/") >= 3 else None
            if m:
                taken.add(int(m.group(1)))
        n = max(taken, default=0) + 1
        for _ in range(100):
            version = f"v{n:04d}"
            try:
                self.store.put(
                    self._vkey(version, "claim.json"), json.dumps({"claimed_at": _now().isoformat()}).encode()
                )
                return version
            except ObjectExists:
                n += 1
        raise RegistryError("could not claim a version number")

    def publish(
        self,
        files: Mapping[str, Path | str] | Path | str,
        *,
        metrics: Mapping[str, Any] | None = None,
        config: Mapping[str, Any] | None = None,
        manifest_hash: str | None = None,
        info: Mapping[str, Any] | None = None,
    ) -> ModelVersion:
        """Upload artifacts and their hashes as a new immutable version; the champion is not touched.

        If an upload fails, what this call wrote is removed again and nothing else is affected."""
        files = _collect(files)
        self._clean_temp(STALE_S)
        champion = self.pointer()
        version = self._claim_version()
        written: list[str] = []
        try:
            artifacts = {}
            for rel, path in files.items():
                data = path.read_bytes()
                key = self._vkey(version, f"files/{rel}")
                self.store.put(key, data)
                written.append(key)
                artifacts[rel] = Artifact(sha256=sha256_bytes(data), size=len(data))
            mv = ModelVersion(
                model=self.model,
                version=version,
                created_at=_now(),
                metrics=dict(metrics or {}),
                config=dict(config or {}),
                manifest_hash=manifest_hash,
                parent=champion.version if champion else None,
                artifacts=artifacts,
                info=dict(info or {}),
            )
            self.store.put(self._vkey(version, "version.json"), mv.model_dump_json(indent=1).encode())
        except BaseException:
            for key in written:
                self.store.delete(key)
            self.store.delete(self._vkey(version, "claim.json"))
            raise
        log.info("published %s %s (%d artifacts)", self.model, version, len(artifacts))
        return mv

    def discard(self, version: str, reason: str, *, force: bool = False, busy_s: float = 600.0) -> None:
        """Delete a version that never served: refused for the champion and for rollback targets.

        Also removes an unfinished (half-published) version; one written to in the last ``busy_s`` seconds
        may still be publishing, and is refused unless ``force``. A version that is not there at all (already
        discarded) is left alone: no error, no audit event."""
        p = self.pointer()
        if p and (version == p.version or version in p.previous):
            raise RegistryError(f"{version} is the champion or a rollback target; refusing to discard it")
        mv = None
        try:
            mv = self.get(version)
        except RegistryError:
            idle = self.unfinished().get(version)
            if idle is None:  # nothing there (discarded already): discarding is idempotent
                log.info("%s %s: nothing to discard", self.model, version)
                return
            if idle < busy_s and not force:
                raise RegistryError(
                    f"{version} is unfinished but was written to {idle:.0f} s ago: it may still be "
                    "publishing; discard it with force once that publisher is dead"
                ) from None
        # version.json first: from then on the version is invisible, even if deleting the files is interrupted
        self.store.delete(self._vkey(version, "version.json"))
        for info in list(self.store.list(self._vkey(version))):
            self.store.delete(info.key)
        self._event("discard", version, reason)
        log.info("discarded %s %s: %s", self.model, version, reason)
        if mv is None:
            log.info("(%s had not finished publishing)", version)

    def clean(self, older_than: float = STALE_S) -> dict[str, list[str]]:
        """Remove what killed writers left: temp files (local store) and unfinished versions, both only
        when idle for ``older_than`` seconds so that a live publisher is never disturbed."""
        temp = self._clean_temp(older_than)
        discarded = []
        for version in self.unfinished(older_than):
            self.discard(version, f"unfinished publication, idle for more than {older_than:.0f} s", force=True)
            discarded.append(version)
        return {"temp_files": temp, "discarded": discarded}

    def _clean_temp(self, older_than: float) -> list[str]:
        if isinstance(self.store, LocalStore):
            return self.store.clean_temp(f"{self.model}/", older_than)
        return []

    # ---- integrity --------------------------------------------------------------------------------
    def verify(self, version: str) -> ModelVersion:
        """Check every artifact against the hash recorded at publication; raise on any mismatch."""
        mv = self.get(version)
        problems = {}
        for rel, art in mv.artifacts.items():
            try:
                data = self.store.get(self._vkey(version, f"files/{rel}"))
            except ObjectMissing:
                problems[rel] = "missing"
                continue
            if len(data) != art.size or sha256_bytes(data) != art.sha256:
                problems[rel] = f"sha256 {sha256_bytes(data)[:12]}... != recorded {art.sha256[:12]}..."
        if problems:
            raise ArtifactIntegrityError(version, problems)
        return mv

    def fetch(self, version: str, dest: str | Path, only: Iterable[str] | None = None) -> Path:
        """Download (verified) artifacts of a version into ``dest``; returns ``dest``.

        All or nothing: every file is downloaded and verified into a staging folder beside ``dest`` first,
        and only then moved into place, so a failed verification leaves ``dest`` as it was."""
        mv = self.get(version)
        dest = Path(dest)
        wanted = set(only) if only is not None else None
        selected = {
            rel: art
            for rel, art in mv.artifacts.items()
            if wanted is None or any(rel == w or rel.startswith(w.rstrip("/") + "/") for w in wanted)
        }
        dest.parent.mkdir(parents=True, exist_ok=True)
        _clean_stale_stages(dest.parent)
        stage = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}fetch-{dest.name}-", dir=dest.parent))
        umask = os.umask(0)
        os.umask(umask)
        stage.chmod(0o777 & ~umask)  # as a plain mkdir would make it (mkdtemp's 0700 would stick to dest)
        try:
            problems = {}
            for rel, art in selected.items():
                try:
                    data = self.store.get(self._vkey(version, f"files/{rel}"))
                except ObjectMissing:
                    problems[rel] = "missing"
                    continue
                if sha256_bytes(data) != art.sha256:
                    problems[rel] = "sha256 mismatch"
                    continue
                (stage / rel).parent.mkdir(parents=True, exist_ok=True)
                (stage / rel).write_bytes(data)
            if problems:
                raise ArtifactIntegrityError(version, problems)
            if not selected:
                return dest
            try:
                os.rename(stage, dest)  # dest did not exist: it appears whole, at once
            except OSError:  # dest exists: replace file by file, all of them verified already
                for rel in selected:
                    (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                    os.replace(stage / rel, dest / rel)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        return dest

    def artifact_path(self, version: str, rel: str) -> Path | None:
        """The on-disk path of an artifact when the store is a local directory (None for S3)."""
        if isinstance(self.store, LocalStore):
            return self.store.path(self._vkey(version, f"files/{rel}"))
        return None

    # ---- the champion pointer ---------------------------------------------------------------------
    def _event_key(self, event: Mapping[str, Any]) -> str:
        """Derived from the event alone, so writing its copy again (a reconciliation) is idempotent."""
        stamp = datetime.fromisoformat(event["at"]).strftime("%Y%m%dT%H%M%S%fZ")
        gen = f"g{int(event['generation']):08d}-" if event.get("generation") is not None else ""
        return f"{self.model}/events/{stamp}-{gen}{event['action']}-{event['version'] or 'none'}.json"

    def _move(
        self,
        action: str,
        version: str,
        reason: str,
        expected_generation: int | None,
        build: Callable[[ChampionPointer | None], ChampionPointer],
    ) -> ChampionPointer | None:
        """Compare-and-set the pointer from the one read now to ``build(current)`` (a ChampionPointer, whose
        version may be empty: no champion), with the move's audit event inside it."""
        current, token = self._read_pointer()
        current_gen = current.generation if current else 0
        if expected_generation is not None and current_gen != expected_generation:
            raise RegistryError(
                f"champion pointer moved meanwhile (generation {current_gen}, expected "
                f"{expected_generation}); re-read and retry"
            )
        if current is not None and current.event is not None:
            self._copy_event(current.event)  # the previous move's copy, if its writer died before making it
        live = current if current is not None and current.version else None
        new: ChampionPointer = build(live)
        new.generation = current_gen + 1
        new.event = {
            "action": action,
            "model": self.model,
            "version": version,
            "reason": reason,
            "at": new.updated_at.isoformat(),
            "replaced": live.version if live else None,
            "generation": new.generation,
        }
        try:
            self.store.put_if(self._pointer_key, new.model_dump_json(indent=1).encode(), token)
        except ObjectChanged:
            raise RegistryError(
                f"champion pointer moved meanwhile (another writer changed generation {current_gen}); re-read and retry"
            ) from None
        self._event(
            action,
            version,
            reason,
            **{k: v for k, v in new.event.items() if k not in ("action", "model", "version", "reason")},
        )
        return new if new.version else None

    def _copy_event(self, event: Mapping[str, Any]) -> None:
        try:
            self.store.put(self._event_key(event), json.dumps(event, indent=1).encode())
        except ObjectExists:
            pass

    def _event(self, action: str, version: str, reason: str, **extra: Any) -> None:
        """Append to the audit log. A pointer move passes its committed event's ``at`` and ``generation``
        (the copy's key derives from them); other events (discard) are stamped now."""
        at = extra.pop("at", None) or _now().isoformat()
        body = {"action": action, "model": self.model, "version": version, "reason": reason, "at": at, **extra}
        if body.get("generation") is not None:
            self._copy_event(body)
            return
        stamp = datetime.fromisoformat(at).strftime("%Y%m%dT%H%M%S%fZ")
        for n in range(100):
            try:
                self.store.put(
                    f"{self.model}/events/{stamp}-{n:02d}-{action}-{version}.json", json.dumps(body, indent=1).encode()
                )
                return
            except ObjectExists:
                continue

    def promote(self, version: str, reason: str, expected_generation: int | None = None) -> ChampionPointer:
        """Make ``version`` the champion (after verifying its artifacts); the old one becomes a rollback target.

        Compare-and-set against the pointer read here (or ``expected_generation``): if another writer moved
        it meanwhile, ``RegistryError`` and nothing changes."""
        self.verify(version)
        raw, _ = self._read_pointer()
        current = raw if raw is not None and raw.version else None
        if current and current.version == version:
            return current

        def build(live: ChampionPointer | None) -> ChampionPointer:
            previous = ([live.version] + live.previous) if live else []
            return ChampionPointer(
                model=self.model, version=version, previous=previous, updated_at=_now(), reason=reason
            )

        if expected_generation is None or (expected_generation == 0 and current is None):
            # 0 means "I saw no champion": also true of a pointer whose first champion was retracted
            expected_generation = raw.generation if raw else 0
        new = self._move("promote", version, reason, expected_generation, build)
        assert new is not None
        log.info(
            "champion of %s is now %s (was %s): %s", self.model, version, current.version if current else "none", reason
        )
        return new

    def rollback(self, reason: str = "manual rollback", to: str | None = None) -> ChampionPointer:
        """Restore the previous champion (or an earlier one named by ``to``), after verifying it."""
        raw, _ = self._read_pointer()
        current = raw if raw is not None and raw.version else None
        if current is None or not current.previous:
            raise RegistryError(f"{self.uri}: no previous champion to roll back to")
        target = to or current.previous[0]
        if target not in current.previous:
            raise RegistryError(
                f"{target} was never champion before {current.version}; rollback targets: {', '.join(current.previous)}"
            )
        self.verify(target)
        rest = current.previous[current.previous.index(target) + 1 :]
        new = self._move(
            "rollback",
            target,
            reason,
            current.generation,
            lambda live: ChampionPointer(
                model=self.model, version=target, previous=rest, updated_at=_now(), reason=reason
            ),
        )
        assert new is not None
        log.info("rolled %s back from %s to %s: %s", self.model, current.version, target, reason)
        return new

    def retract(self, version: str, reason: str) -> ChampionPointer | None:
        """Undo a promotion of ``version`` that has not been superseded: the champion before it comes back
        (for a first champion: no champion again). A no-op if the pointer has moved on since."""
        raw, _ = self._read_pointer()
        current = raw if raw is not None and raw.version else None
        if current is None or current.version != version:
            return current
        if current.previous:
            return self.rollback(reason, to=current.previous[0])
        return self._move(
            "retract",
            version,
            reason,
            current.generation,
            lambda live: ChampionPointer(model=self.model, version="", updated_at=_now(), reason=reason),
        )


def _clean_stale_stages(parent: Path, older_than: float = STALE_S) -> None:
    """Staging folders of fetches that were killed (a finished or failed fetch removes its own)."""
    cutoff = time.time() - older_than
    for p in parent.glob(f"{TEMP_PREFIX}fetch-*"):
        try:
            if p.is_dir() and p.stat().st_mtime <= cutoff:
                shutil.rmtree(p, ignore_errors=True)
        except FileNotFoundError:
            pass


def open_registry(uri: str | Path, model: str = DEFAULT_MODEL) -> ModelRegistry:
    """``s3://bucket/prefix`` or a directory (created if needed)."""
    return ModelRegistry(open_store(uri), model)

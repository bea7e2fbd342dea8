"""Nightly scoring of the line's captures with the champion's exported graph (in-process ONNX Runtime).

The line's captures are the ones that arrived unlabelled (the lab may have labelled some since, through
`alloynet label import`). Where the line's record already holds an answer for a capture (by capture id or
image hash), that answer is the one the line acted on and is kept; the others are answered here, in batches,
by the same graph the servers run, and recorded with source "nightly".
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from alloynet.captures.format import Sidecar, parse_sidecar
from alloynet.captures.image import CaptureError
from alloynet.captures.labels import history
from alloynet.captures.layout import CAPTURES, read_capture
from alloynet.captures.stores import ObjectMissing, ObjectStore
from alloynet.monitor.drift import profile_features

Runner = Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]


@dataclass
class LineCapture:
    sidecar: Sidecar
    image: np.ndarray

    @property
    def capture_id(self) -> str:
        return self.sidecar.capture_id

    def features(self, bins: int) -> np.ndarray:
        c = self.sidecar.calibration
        return profile_features(self.image, c.dark_adu, c.flat_adu, bins, open_beam_rows(self.sidecar))


def open_beam_rows(sc: Sidecar) -> int:
    return int(getattr(sc.rig, "open_beam_rows", 0) or 0)


def _sidecars(store: ObjectStore) -> Iterable[tuple[str, Sidecar]]:
    for info in store.list(CAPTURES):
        if not info.key.endswith(".json"):
            continue
        try:
            yield info.key, parse_sidecar(store.get(info.key), info.key)
        except (CaptureError, ObjectMissing):
            continue  # ingest quarantines bad captures; a vanished one is not tonight's business


def _own_size(sc: Sidecar) -> set[tuple[int, int]]:
    """Ingest already checked the size against what the store accepts; here the image need only match its
    sidecar."""
    return {(sc.image.shape[1], sc.image.shape[2])}


def arrived_unlabelled(store: ObjectStore, sc: Sidecar) -> bool:
    """Whether the capture came without labels (the line's), even if the lab has labelled it since."""
    if sc.truth is None:
        return True
    revs = history(store, sc.capture_id)
    return bool(revs) and revs[0]["changes"].get("alloy", [None])[0] is None


def line_captures(store: ObjectStore, since: datetime, until: datetime) -> list[LineCapture]:
    """The line's captures acquired in [since, until), oldest first; unreadable ones are left out."""
    out = []
    for _key, sc in _sidecars(store):
        at = sc.acquired_at if sc.acquired_at.tzinfo else sc.acquired_at.replace(tzinfo=timezone.utc)
        if since <= at < until and arrived_unlabelled(store, sc):
            try:
                out.append(LineCapture(sc, read_capture(store, sc.capture_id, _own_size(sc)).image))
            except CaptureError:
                continue
    return sorted(out, key=lambda c: (c.sidecar.acquired_at, c.capture_id))


def reference_captures(store: ObjectStore, before: datetime, limit: int = 2000, seed: int = 0) -> Iterator[LineCapture]:
    """The training data, one capture at a time: labelled captures acquired before ``before`` that did not come
    from the line unlabelled; at most ``limit``, a seeded sample; unreadable ones are left out."""
    keys = {}
    for _key, sc in _sidecars(store):
        at = sc.acquired_at if sc.acquired_at.tzinfo else sc.acquired_at.replace(tzinfo=timezone.utc)
        if sc.truth is not None and at < before and not arrived_unlabelled(store, sc):
            keys[sc.capture_id] = sc
    ids = sorted(keys)
    if len(ids) > limit:
        rng = np.random.default_rng(seed)
        ids = sorted(rng.choice(ids, size=limit, replace=False).tolist())
    for cid in ids:
        try:
            cap = read_capture(store, cid, _own_size(keys[cid]))
        except CaptureError:
            continue
        yield LineCapture(cap.sidecar, cap.image)


def score(
    captures: Sequence[LineCapture],
    runner: Runner,
    class_names: Sequence[str],
    class_groups: Sequence[str] | None = None,
    batch: int = 64,
    model_version: str = "",
) -> list[dict]:
    """Records (source "nightly") for ``captures``, answered by ``runner`` in batches."""
    from alloynet import contract

    now = datetime.now(timezone.utc).isoformat()
    out = []
    for start in range(0, len(captures), batch):
        chunk = captures[start : start + batch]
        inputs = {
            contract.INPUT_NAME: np.stack([c.image.astype(np.float32) for c in chunk]),
            contract.CALIBRATION_NAME: np.stack(
                [
                    np.asarray(list(zip(c.sidecar.calibration.dark_adu, c.sidecar.calibration.flat_adu)), np.float32)
                    for c in chunk
                ]
            ),
            contract.WEDGE_NAME: np.asarray([[c.sidecar.rig.wedge_mm] for c in chunk], np.float32),
        }
        outputs: Mapping[str, Any] = runner(inputs)
        for i, c in enumerate(chunk):
            at = c.sidecar.acquired_at
            at = at if at.tzinfo else at.replace(tzinfo=timezone.utc)
            # filed under the capture's own time, as if the line had asked: its day's partition holds it
            r: dict[str, Any] = {
                "v": 1,
                "at": at.isoformat(),
                "scored_at": now,
                "source": "nightly",
                "capture_id": c.capture_id,
                "image_sha256": c.sidecar.image.sha256,
                "server": "onnxruntime",
                "model": "alloynet",
                "model_version": model_version,
                "latency_ms": None,
                "batch": len(chunk),
            }
            refused = contract.refusal(outputs, i)
            if refused:
                r.update(status="refused", error=f"{refused['status']}: {refused['message']}")
            else:
                p = contract.prediction(outputs, i, class_names, class_groups)
                r.update({k: p[k] for k in contract.ANSWER_FIELDS})
            out.append(r)
    return out


def onnx_runner(bundle_dir: str | Path) -> tuple[Runner, dict[str, Any]]:
    """The champion's exported graph as a runner, and its export meta (class names, groups, coverage). Finds
    ``model.onnx`` and ``export.json`` anywhere under ``bundle_dir`` (a fetched release holds them inside its
    packages)."""
    from alloynet.contract import META_FILE, OUTPUT_NAMES
    from alloynet.export.onnx_export import onnx_session

    root = Path(bundle_dir)
    onnx_files = sorted(root.rglob("model.onnx"))
    metas = sorted(root.rglob(META_FILE))
    if not onnx_files or not metas:
        raise FileNotFoundError(f"{root}: no exported graph (model.onnx and {META_FILE}) under it")
    meta = json.loads(metas[0].read_text())
    session = onnx_session(onnx_files[0])

    def run(inputs: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        return dict(zip(OUTPUT_NAMES, session.run(list(OUTPUT_NAMES), dict(inputs))))

    return run, meta


def champion_graph(registry: str, dest: str | Path) -> tuple[Runner, dict[str, Any], str, dict[str, Any]] | None:
    """The champion's exported graph, fetched from the model store into ``dest``: (runner, export meta,
    version, its held-out test figures); None when there is no champion yet. A release without a graph is
    exported from its checkpoint, on the data it was trained on."""
    from alloynet.registry import open_registry

    reg = open_registry(registry)
    pointer = reg.pointer()
    if pointer is None:
        return None
    version = reg.get(pointer.version)
    out = Path(dest) / pointer.version
    if not out.exists():
        reg.fetch(pointer.version, out)
    try:
        runner, meta = onnx_runner(out)
    except FileNotFoundError:
        ckpts = sorted(out.rglob("*.pt"))
        if not ckpts:
            raise FileNotFoundError(
                f"champion {pointer.version}: neither a graph nor a checkpoint in its release"
            ) from None
        from alloynet.export.bundle import export_checkpoint

        export_checkpoint(ckpts[0], out / "monitor-export")
        runner, meta = onnx_runner(out / "monitor-export")
    keys = ("accuracy", "balanced_accuracy", "coverage", "set_coverage")
    test = {k: v for k, v in (version.metrics or {}).items() if k in keys and isinstance(v, (int, float))}
    return runner, meta, pointer.version, test

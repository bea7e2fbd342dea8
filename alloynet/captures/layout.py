"""Where captures live inside a store, and reading/writing/quarantining whole captures.

    captures/<id>.png|tiff      the raw detector image
    captures/<id>.json          its sidecar, written last: a capture exists once its sidecar does
    calibration/<session>/dark.png, flat.png (second rig: also wedge-<wedge_mm>mm.png, the wedge alone)
    quarantine/<id>/...         bad captures as received, plus reason.json
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from alloynet.captures.format import CaptureError, Sidecar, parse_sidecar, validate_capture
from alloynet.captures.stores import ObjectExists, ObjectMissing, ObjectStore, object_path

CAPTURES = "captures/"
QUARANTINE = "quarantine/"


def sidecar_key(capture_id: str) -> str:
    return f"{CAPTURES}{capture_id}.json"


def image_key(sidecar: Sidecar) -> str:
    return f"{CAPTURES}{sidecar.image.file}"


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


def quarantine(store: ObjectStore, name: str, files: dict[str, bytes], error: CaptureError | str,
               source: str) -> str:
    """Keep a bad capture exactly as received, with a machine- and human-readable reason.

    Never overwrites: a second quarantine of the same name gets a numbered folder."""
    reason = {
        "reason": str(error),
        "field": getattr(error, "field", None),
        "source": source,
        "quarantined_at": datetime.now(timezone.utc).isoformat(),
    }
    for n in range(1000):
        folder = f"{QUARANTINE}{name}" + (f".{n}" if n else "") + "/"
        try:
            store.put(folder + "reason.json", json.dumps(reason, indent=1).encode())
        except ObjectExists:
            continue
        for fname, data in files.items():
            store.put(folder + fname, data)
        return folder
    raise RuntimeError(f"too many quarantined copies of {name}")


def list_quarantine(store: ObjectStore) -> list[dict]:
    out = []
    for info in store.list(QUARANTINE):
        if info.key.endswith("/reason.json"):
            out.append({"folder": info.key[: -len("reason.json")], **json.loads(store.get(info.key))})
    return sorted(out, key=lambda r: r["folder"])

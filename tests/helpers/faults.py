"""Fault injection for ingest tests: poison sidecars, aliased images, decompression bombs, a store that loses
objects between list and get, and a snapshot of what a store holds (to prove nothing stored was lost, changed
or duplicated).
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import zlib
from collections.abc import Callable

from alloynet.captures.stores import ObjectStore

# name -> (expected field (prefix), text expected in the reason)
POISON = {
    "poison-escape": ("image.file", "must be 'poison-escape.png'"),
    "poison-alias": ("image.file", "must be 'poison-alias.png'"),
    "poison-deep": ("sidecar", "nested more than"),
    "poison-deep-extra": ("rig.extra", "nested more than"),
    "poison-huge": ("sidecar", "a sidecar may have at most"),
    "poison-long": ("plate_id", "a string of 1000 characters"),
    "poison-inf": ("truth.thickness_mm", "not a finite number"),
    "poison-nan": ("truth.a0", "not a finite number"),
    "poison-bigint": ("sidecar", "not valid JSON"),
    "poison-list": ("sidecar", "expected a JSON object"),
    "poison-utf8": ("sidecar", "not valid JSON"),
    "poison-empty": ("sidecar", "file is empty"),
    "poison-name": ("capture_id", "but the file is named 'poison-name'"),
    "poison-kvp": ("rig.kvp.0", "greater than 0"),
}
# keys that are not <capture_id>.json directly under captures/
POISON_KEYS = {
    "captures/sub/poison-nested.json": ("sidecar", "file name is not <capture_id>.json"),
    "captures/.poison-dot.json": ("sidecar", "file name is not <capture_id>.json"),
}


def poison_sidecars(template: bytes, victim_image: str) -> dict[str, bytes]:
    """Source key -> bytes of every poison sidecar, built from a good sidecar (``template``).
    ``victim_image`` is the file name of a stored capture's image that the alias sidecar points at."""
    good = json.loads(template)

    def variant(name: str, change: Callable[[dict], None]) -> bytes:
        sc = json.loads(json.dumps(good))
        sc["capture_id"] = name
        sc["image"]["file"] = f"{name}.png"
        change(sc)
        return json.dumps(sc, allow_nan=True).encode()

    def setp(path: str, value) -> Callable[[dict], None]:
        def change(sc):
            *head, last = path.split(".")
            d = sc
            for h in head:
                d = d[h]
            d[last] = value

        return change

    deep = {}
    d = deep
    for _ in range(12):
        d["x"] = {}
        d = d["x"]
    out = {
        "poison-escape": variant("poison-escape", setp("image.file", "../escape.png")),
        "poison-alias": variant("poison-alias", setp("image.file", victim_image)),
        "poison-deep": b"[" * 30_000 + b"]" * 30_000,  # under the size limit, far over the depth limit
        "poison-deep-extra": variant("poison-deep-extra", setp("rig.extra", deep)),
        "poison-huge": variant("poison-huge", setp("plate_id", "x" * 30_000_000)),
        "poison-long": variant("poison-long", setp("plate_id", "y" * 1000)),
        "poison-inf": variant("poison-inf", setp("truth.thickness_mm", float("inf"))),
        "poison-nan": variant("poison-nan", setp("truth.a0", float("nan"))),
        "poison-bigint": b'{"capture_id": "poison-bigint", "n": ' + b"9" * 5000 + b"}",
        "poison-list": b"[1, 2, 3]",
        "poison-utf8": b"\xff\xfe{\x00}",
        "poison-empty": b"",
        "poison-name": variant(
            "poison-name",
            lambda sc: (setp("capture_id", "someone-else")(sc), setp("image.file", "someone-else.png")(sc)),
        ),
        "poison-kvp": variant("poison-kvp", setp("rig.kvp", [-50.0])),
    }
    assert set(out) == set(POISON)
    keyed = {f"captures/{name}.json": data for name, data in out.items()}
    keyed.update({k: variant("poison-nested", lambda sc: None) for k in POISON_KEYS})
    return keyed


def snapshot(store: ObjectStore, prefix: str = "captures/") -> dict[str, str]:
    """key -> sha256 of every object under ``prefix``."""
    return {o.key: hashlib.sha256(store.get(o.key)).hexdigest() for o in store.list(prefix)}


class LosingStore:
    """Wraps a store; after each ``list`` the keys in ``lose`` are deleted (as if removed between list and get)."""

    def __init__(self, inner: ObjectStore, lose: set[str]):
        self.inner, self.lose, self.uri = inner, set(lose), inner.uri

    def list(self, prefix: str = ""):
        items = list(self.inner.list(prefix))
        for key in self.lose:
            self.inner.delete(key)
        self.lose = set()
        return iter(items)

    def __getattr__(self, name):
        return getattr(self.inner, name)


# ---- decompression bombs: images whose header declares far more pixels than their bytes suggest ----
def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb(side: int) -> bytes:
    """A real 16-bit grayscale PNG of side x side zeros: a few hundred KB that decode to side x side x 2 bytes."""
    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + 2 * side)  # filter byte + pixels
    idat = b"".join(comp.compress(row * 256) for _ in range(side // 256)) + comp.compress(row * (side % 256))
    idat += comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 16, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def tiff_declaring(side: int) -> bytes:
    """A small deflate TIFF whose width and length tags are rewritten to ``side``."""
    import numpy as np
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, np.zeros((32, 32), np.uint16), compression="zlib")
    data = bytearray(buf.getvalue())
    assert data[:2] == b"II"
    ifd = struct.unpack_from("<I", data, 4)[0]
    for i in range(struct.unpack_from("<H", data, ifd)[0]):
        entry = ifd + 2 + 12 * i
        tag, typ = struct.unpack_from("<HH", data, entry)
        if tag in (256, 257):
            struct.pack_into("<H" if typ == 3 else "<I", data, entry + 8, side)
    return bytes(data)

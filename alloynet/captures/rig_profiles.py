"""Rig profiles kept in a capture store, beside the captures they describe.

    rig-profiles/<UTC stamp>.yaml       a rig profile (alloynet.physics.rig_profile), never overwritten
    rig-profiles/<UTC stamp>-fit.png    the plot of its fit to the references

``alloynet rig fit STORE`` adds one; the newest (stamps sort by time) is the rig's current fit,
which ``alloynet train --store STORE`` starts the physics term's forward model from (``data.rig_profile:
auto``), so a lab that imaged its references needs no setting to use them. Earlier profiles stay: a
rig fit is a measurement, and the runs trained from it keep a copy of the one they used.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path

from alloynet.captures.stores import ObjectStore
from alloynet.physics.rig_profile import RigProfile, dump_rig_profile, load_rig_profile

RIG_PROFILES = "rig-profiles/"
_NAME = re.compile(r"^\d{8}T\d{6}Z(?:-\d+)?\.yaml$")


def add_rig_profile(
    store: ObjectStore, profile: RigProfile, plot_png: bytes | None = None, now: datetime | None = None
) -> str:
    """Store ``profile`` (and its fit plot) under a new name; returns the profile's key. Nothing is
    overwritten: a second rig fit in the same second takes the next free suffix."""
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    name, n = stamp, 1
    while store.exists(f"{RIG_PROFILES}{name}.yaml"):
        n += 1
        name = f"{stamp}-{n}"
    if plot_png is not None:
        store.put(f"{RIG_PROFILES}{name}-fit.png", plot_png)
    key = f"{RIG_PROFILES}{name}.yaml"
    store.put(key, dump_rig_profile(profile).encode())  # last: a profile exists once its YAML does
    return key


def newest_rig_profile(store: ObjectStore) -> str | None:
    """The key of the store's newest rig profile, or None when ``alloynet rig fit`` added none."""
    keys = [o.key for o in store.list(RIG_PROFILES) if _NAME.match(o.key[len(RIG_PROFILES) :])]
    return max(keys, key=_order) if keys else None


def _order(key: str) -> tuple[str, int]:
    stem = key[len(RIG_PROFILES) : -len(".yaml")]
    stamp, _, n = stem.partition("-")
    return stamp, int(n or 1)


def copy_rig_profile(store: ObjectStore, key: str, dest: Path) -> Path:
    """Copy the profile ``key`` out of the store to ``dest`` (a run keeps the one it used), checked on the way:
    a store's profile that does not parse is refused with its key, not trained from."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".tmp-{dest.name}")
    tmp.write_bytes(store.get(key))
    try:
        load_rig_profile(tmp)
    except ValueError as exc:
        tmp.unlink(missing_ok=True)
        raise ValueError(f"{key} in the capture store: {str(exc).split(': ', 1)[-1]}") from None
    tmp.replace(dest)
    return dest


def copy_new_rig_profiles(source: ObjectStore, dest: ObjectStore) -> tuple[list[str], list[str]]:
    """Ingest's share: the rig profiles (and fit plots) ``source`` has and ``dest`` lacks are copied, so a lab
    that fits its rig on the upload store trains from that fit. Returns (copied, conflicts): a
    key ``dest`` already holds with other bytes is never overwritten, only reported."""
    copied: list[str] = []
    conflicts: list[str] = []
    keys = [o.key for o in source.list(RIG_PROFILES)]
    names = {k[len(RIG_PROFILES) :] for k in keys}
    # the plot first, the YAML last: a profile exists in ``dest`` once its YAML does
    for key in sorted(keys, key=lambda k: k.endswith(".yaml")):
        name = key[len(RIG_PROFILES) :]
        stem = name.removesuffix(".yaml").removesuffix("-fit.png")
        if not _NAME.match(f"{stem}.yaml") or f"{stem}.yaml" not in names:
            continue
        data = source.get(key)
        if dest.exists(key):
            if dest.get(key) != data:
                conflicts.append(key)
            continue
        dest.put(key, data)
        copied.append(key)
    return copied, conflicts

"""The data-set manifest: one row per capture, with labels and a leak-free split.

Splits (the long-tail protocol): the test set is balanced across classes (the same number of plates per
alloy, spread over thicknesses); the rest is split train/val per alloy, spread over thickness strata (the
nominal values, or quantile bins when thicknesses are continuous: see ``thickness_strata``).
Splitting is by *plate*: all captures of a physical plate land in one split. Once a manifest exists, its
assignments are frozen: rebuilding with ``previous=`` keeps every known plate where it was and sends new
plates to train/val only, so the held-out test set never changes under a nightly retrain.

``label`` is the index in ``CLASS_NAMES`` (the five standard alloys the models classify), or -1 for an
unlabelled capture or a user-added alloy, which the simulator and physics support but models skip.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from alloynet.captures.format import parse_sidecar
from alloynet.captures.image import CaptureError
from alloynet.captures.ingest import ORPHAN_GRACE_S, ingest
from alloynet.captures.layout import CAPTURES
from alloynet.captures.stores import LocalStore, ObjectStore, open_store, writer_lock
from alloynet.data import CLASS_NAMES

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.csv"  # beside the captures of a local data directory

COLUMNS = [
    "capture_id",
    "plate_id",
    "image_file",
    "sha256",
    "alloy",
    "label",
    "nominal_thickness_mm",
    "thickness_mm",
    "a0",
    "mu_eff_per_cm",
    "wedge_mm",
    "wedge_material",
    "kvp",
    "channels",
    "height",
    "width",
    "dark_adu",
    "flat_adu",
    "acquired_at",
    "labelled",
    "split",
]


def _row(sc) -> dict:
    t = sc.truth
    return {
        "capture_id": sc.capture_id,
        "plate_id": sc.plate_id or sc.capture_id,
        "image_file": sc.image.file,
        "sha256": sc.image.sha256,
        "alloy": t.alloy if t else "",
        "label": CLASS_NAMES.index(t.alloy) if t and t.alloy in CLASS_NAMES else -1,
        "nominal_thickness_mm": t.nominal_thickness_mm if t else np.nan,
        "thickness_mm": (t.thickness_mm or t.nominal_thickness_mm) if t else np.nan,
        "a0": t.a0 if t and t.a0 is not None else np.nan,
        "mu_eff_per_cm": t.mu_eff_per_cm if t and t.mu_eff_per_cm is not None else np.nan,
        "wedge_mm": sc.rig.wedge_mm,
        "wedge_material": sc.rig.wedge_material,
        "kvp": ";".join(f"{k:g}" for k in sc.rig.kvp),
        "channels": sc.image.shape[0],
        "height": sc.image.shape[1],
        "width": sc.image.shape[2],
        "dark_adu": ";".join(f"{v:.3f}" for v in sc.calibration.dark_adu),
        "flat_adu": ";".join(f"{v:.3f}" for v in sc.calibration.flat_adu),
        "acquired_at": sc.acquired_at.isoformat(),
        "labelled": t is not None,
    }


def scan_store(store: ObjectStore) -> pd.DataFrame:
    """Read every sidecar in the store (captures are validated on ingest; sidecars are re-parsed here)."""
    rows = []
    for info in store.list(CAPTURES):
        if info.key.endswith(".json"):
            try:
                rows.append(_row(parse_sidecar(store.get(info.key), f"{store.uri}/{info.key}")))
            except CaptureError as err:
                raise CaptureError(
                    err.where, err.field, err.message + " (run ingest to quarantine bad captures)"
                ) from None
    df = pd.DataFrame(rows, columns=COLUMNS[:-1])
    return df.sort_values("capture_id", kind="stable").reset_index(drop=True)


def assign_splits(
    df: pd.DataFrame,
    seed: int = 0,
    test_fraction: float = 0.15,
    val_fraction: float = 0.15,
    previous: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Add the ``split`` column (train/val/test, or unlabelled) by plate, as described in the module doc."""
    df = df.copy()
    if df.empty:
        df["split"] = pd.Series(dtype=str)
        return df
    plates = df[df.labelled].groupby("plate_id").agg(alloy=("alloy", "first"), t=("nominal_thickness_mm", "first"))
    plates["t"] = thickness_strata(plates["t"])
    split: dict[str, str] = {}
    if previous is not None and len(previous):
        split.update(previous.drop_duplicates("plate_id").set_index("plate_id")["split"].to_dict())
    new = plates[~plates.index.isin(list(split))]
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5B1]))
    if previous is None or not len(previous):
        split.update(_balanced_test(new, rng, test_fraction))
        new = new[~new.index.isin(list(split))]
    val_share = val_fraction / (1 - test_fraction)
    for _, group in new.groupby("alloy", sort=True):
        ids = _interleaved(group, rng)  # the val plates of each class spread over its thickness strata
        n_val = int(round(val_share * len(ids)))
        for i, pid in enumerate(ids):
            split[pid] = "val" if i < n_val else "train"
    _ensure_val_per_class(plates, split)
    df["split"] = [split.get(p, "unlabelled") if lab else "unlabelled" for p, lab in zip(df.plate_id, df.labelled)]
    return df


THICKNESS_STRATA = 4  # quantile bins of a continuous thickness distribution
MAX_NOMINAL_VALUES = 6  # up to this many distinct nominal thicknesses are strata of their own


def thickness_strata(t: pd.Series) -> pd.Series:
    """The stratum of each plate's nominal thickness: the value itself when the data set uses a few nominal
    values (1, 2, 5 mm), else one of ``THICKNESS_STRATA`` quantile bins. Continuous thicknesses made every
    alloy x value stratum a singleton, and a singleton's val share rounds to nothing (val got 1.2 %)."""
    if t.nunique() <= MAX_NOMINAL_VALUES:
        return t.astype(float)
    edges = np.quantile(t.to_numpy(float), np.linspace(0, 1, THICKNESS_STRATA + 1)[1:-1])
    return pd.Series(np.searchsorted(edges, t.to_numpy(float), side="right").astype(float), index=t.index)


def _balanced_test(plates: pd.DataFrame, rng: np.random.Generator, test_fraction: float) -> dict[str, str]:
    if plates.empty or test_fraction <= 0:
        return {}
    per_class = plates.groupby("alloy").size()
    m = min(int(round(test_fraction * len(plates) / len(per_class))), int(per_class.min()) - 1)
    out = {}
    for _alloy, group in plates.groupby("alloy", sort=True):
        out.update({pid: "test" for pid in _interleaved(group, rng)[: max(m, 0)]})
    return out


def _interleaved(group: pd.DataFrame, rng: np.random.Generator) -> list[str]:
    """One class's plates, shuffled within each thickness stratum and dealt out stratum by stratum: any
    prefix of this order covers the thicknesses evenly."""
    strata = [list(rng.permutation(g.index.to_numpy())) for _, g in group.groupby("t", sort=True)]
    return [s[i] for i in range(max(map(len, strata))) for s in strata if i < len(s)]


def _ensure_val_per_class(plates: pd.DataFrame, split: dict[str, str]) -> None:
    """Early stopping on balanced accuracy needs every class in val: move one train plate if possible."""
    for _alloy, group in plates.groupby("alloy", sort=True):
        s = [split.get(p) for p in group.index]
        if "val" not in s and s.count("train") >= 2:
            split[next(p for p in group.index if split.get(p) == "train")] = "val"


def build_manifest(
    store: ObjectStore,
    seed: int = 0,
    previous: pd.DataFrame | None = None,
    test_fraction: float = 0.15,
    val_fraction: float = 0.15,
) -> pd.DataFrame:
    return assign_splits(scan_store(store), seed, test_fraction, val_fraction, previous)[COLUMNS]


def manifest_path(data_dir: str | os.PathLike | LocalStore) -> Path:
    """Where a local data directory keeps its manifest."""
    root = data_dir.root if isinstance(data_dir, LocalStore) else Path(data_dir)
    return root / MANIFEST_FILE


def open_dataset(
    store: ObjectStore | str | os.PathLike, manifest: pd.DataFrame | str | os.PathLike | None = None, seed: int = 0
) -> tuple[ObjectStore, pd.DataFrame]:
    """A capture store and its manifest: the one given, else the store's own manifest file (local stores),
    else one built now by scanning the store."""
    st = open_store(store) if isinstance(store, (str, os.PathLike)) else store
    if isinstance(manifest, pd.DataFrame):
        return st, manifest
    if manifest is None and isinstance(st, LocalStore) and manifest_path(st).exists():
        manifest = manifest_path(st)
    return st, read_manifest(manifest) if manifest is not None else build_manifest(st, seed=seed)


@dataclass(frozen=True)
class DataSet:
    """One local data directory as the pipeline's steps see it: where it is and the hash of the manifest
    that a run started from. Steps take this value instead of re-deriving paths; ``manifest()`` refuses
    to hand out a manifest that changed under the run (e.g. a concurrent ingest)."""

    data_dir: str
    manifest_hash: str

    @property
    def path(self) -> Path:
        return manifest_path(self.data_dir)

    @property
    def store(self) -> LocalStore:
        return LocalStore(self.data_dir)

    def manifest(self) -> pd.DataFrame:
        df = read_manifest(self.path)
        if manifest_hash(df) != self.manifest_hash:
            raise RuntimeError(
                f"{self.path} changed during this run (hash {manifest_hash(df)[:12]}, the run "
                f"started from {self.manifest_hash[:12]}); re-run to use the new captures"
            )
        return df

    @classmethod
    def current(cls, data_dir: str | os.PathLike) -> DataSet:
        """The data directory with the manifest it has now."""
        return cls(str(Path(data_dir).resolve()), manifest_hash(read_manifest(manifest_path(data_dir))))


def refresh_manifest(
    store: LocalStore,
    seed: int = 0,
    path: str | Path | None = None,
    *,
    wait: float = 0.0,
    lock: bool = True,
    splits: dict[str, str] | None = None,
) -> tuple[pd.DataFrame, bool]:
    """Rebuild the manifest of a local store with every known plate's split frozen; returns (manifest,
    whether it changed). The file is written only when it changed, so a run with nothing new leaves it
    untouched (bytes and mtime), and a store without captures gets no manifest file at all.

    Holds the store's writer lock (waiting up to ``wait`` s, else ``WriterBusy``) so an ingest never adds
    captures half-way through; ``lock=False`` is for a caller that holds it already.

    ``splits`` (plate id -> train/val/test) are assignments a user made (`alloynet import`'s split folders):
    they are frozen like the manifest's own, for plates the manifest does not have yet; a plate already in
    it keeps its split. As with any frozen manifest, plates with neither go to train/val, never to test."""
    with writer_lock(store, "manifest refresh", wait) if lock else nullcontext():
        path = Path(path) if path else manifest_path(store)
        previous = read_manifest(path) if path.exists() else None
        frozen = previous
        if splits:
            known = set(previous.plate_id) if previous is not None else set()
            given = pd.DataFrame(
                [(p, s) for p, s in sorted(splits.items()) if p not in known], columns=["plate_id", "split"]
            )
            frozen = given if previous is None else pd.concat([previous[["plate_id", "split"]], given])
        df = build_manifest(store, seed=seed, previous=frozen)
        changed = (not df.empty) if previous is None else manifest_hash(previous) != manifest_hash(df)
        if changed:
            write_manifest(df, path)
        return df, changed


def ingest_and_refresh(
    source: ObjectStore,
    dest: LocalStore,
    seed: int = 0,
    path: str | Path | None = None,
    *,
    accepted_sizes=None,
    wait: float = 0.0,
    retry_quarantined: bool = False,
    orphan_grace_s: float | None = None,
):
    """Ingest from ``source`` and refresh the manifest of ``dest`` under one writer lock: what the CLI
    and the pipeline's ingest step call. Returns (IngestResult, manifest, manifest changed).

    A failed ingest (the store went away, the disk filled) raises before the manifest is touched: the
    captures stored so far are safe and the next run picks up after them, and their splits are then
    assigned together with the rest, exactly as in a run that never failed. Freezing a half-finished
    batch's splits instead could leave the first manifest with a test set drawn from a handful of plates."""
    grace = ORPHAN_GRACE_S if orphan_grace_s is None else orphan_grace_s
    with writer_lock(dest, "ingest", wait):
        res = ingest(
            source,
            dest,
            accepted_sizes=accepted_sizes,
            retry_quarantined=retry_quarantined,
            orphan_grace_s=grace,
            lock=False,
        )
        df, changed = refresh_manifest(dest, seed, path, lock=False)
    return res, df, changed


def write_manifest(df: pd.DataFrame, path: str | Path) -> None:
    """Atomic: a unique temp file beside it (two writers never share one), fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + path.name + "-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            df.to_csv(f, index=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_manifest(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"manifest {path} not found (run `alloynet simulate` or `alloynet data manifest`)")
    df = pd.read_csv(
        path,
        dtype={"capture_id": str, "plate_id": str, "kvp": str, "dark_adu": str, "flat_adu": str, "alloy": str},
        keep_default_na=False,
        na_values={"a0": [""], "mu_eff_per_cm": [""]},
    )
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"manifest {path}: missing column(s) {missing}")
    df["labelled"] = df["labelled"].astype(str).str.lower().isin(["true", "1"])
    return df


def dark_flat_levels(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Each row's dark and flat levels as float arrays [N, C] (the manifest stores them ';'-joined)."""

    def parse(col: pd.Series) -> np.ndarray:
        return np.array([[float(v) for v in str(s).split(";")] for s in col], dtype=float).reshape(len(col), -1)

    return parse(df.dark_adu), parse(df.flat_adu)


def manifest_hash(df: pd.DataFrame) -> str:
    """Stable identity of the data a model was trained on: ids, image hashes, labels and splits (a relabel
    changes the data: the manifest is rewritten and a run started before it notices)."""
    buf = io.StringIO()
    cols = ["capture_id", "sha256", "split", "alloy", "plate_id", "nominal_thickness_mm", "thickness_mm"]
    df.sort_values("capture_id")[cols].to_csv(buf, index=False)
    return hashlib.sha256(buf.getvalue().encode()).hexdigest()


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Captures per alloy and split (the table `alloynet simulate` prints)."""
    t = df.pivot_table(index="alloy", columns="split", values="capture_id", aggfunc="count", fill_value=0)
    t["plates"] = df.groupby("alloy").plate_id.nunique()
    return t

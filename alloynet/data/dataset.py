"""The torch Dataset over a capture store + manifest.

Items are ``(image, calibration, wedge_mm, targets)``: ``image`` is float32 [C, H, W] holding the RAW
detector ADU (models do their own preprocessing, so training and every exported graph see the same input);
``calibration`` is float32 [C, 2], the capture's own (dark, flat) levels from its sidecar; ``wedge_mm`` is
float32 [1], its wedge size (the sidecar's rig.wedge_mm); ``targets`` holds
``alloy`` (int64 class index), ``thickness_mm``, ``a0`` and ``mu_eff`` (float32).
Augmentation is deterministic: item i in epoch e always gets the same random draw for a given seed,
whatever the number of DataLoader workers.
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from alloynet.captures.image import CaptureError, decode_image, sha256
from alloynet.captures.layout import CAPTURES
from alloynet.captures.stores import ObjectStore
from alloynet.data.manifest import dark_flat_levels
from alloynet.data.transforms import TrainAugment


def load_image(store: ObjectStore, image_file: str, expected_sha256: str | None = None) -> np.ndarray:
    """The pixels of a stored capture; with ``expected_sha256`` (the manifest's), bytes that changed since
    the manifest was built are refused, so a model never trains on an image its manifest does not describe."""
    key = CAPTURES + image_file
    data = store.get(key)
    if expected_sha256 is not None and sha256(data) != expected_sha256:
        raise CaptureError(
            f"{store.uri}/{key}",
            "image.sha256",
            f"stored image has sha256 {sha256(data)[:12]}..., the manifest says {expected_sha256[:12]}...",
        )
    return decode_image(data, f"{store.uri}/{key}")


class CaptureDataset(Dataset):
    def __init__(
        self,
        store: ObjectStore,
        manifest: pd.DataFrame,
        split: str | None = "train",
        transform: TrainAugment | None = None,
        seed: int = 0,
        cache: bool = True,
    ):
        rows = manifest if split is None else manifest[manifest.split == split]
        # label -1: unlabelled, or a user-added alloy outside the classifier's CLASS_NAMES
        rows = rows[rows.label >= 0]
        self.rows = rows.sort_values("capture_id", kind="stable").reset_index(drop=True)
        if split is not None and self.rows.empty:
            raise ValueError(f"manifest has no captures in split {split!r}")
        dark, flat = dark_flat_levels(self.rows)
        self.calibration = torch.as_tensor(np.stack([dark, flat], axis=-1), dtype=torch.float32)  # [N, C, 2]
        wedge_mm = self.rows.wedge_mm.to_numpy(float, copy=True)
        self.wedge_mm = torch.as_tensor(wedge_mm, dtype=torch.float32)[:, None]  # [N, 1]
        self.store, self.transform, self.seed = store, transform, seed
        self.epoch = 0
        self._cache: dict[int, np.ndarray] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.rows)

    def unaugmented(self) -> CaptureDataset:
        """The same captures without augmentation (sharing the decoded-image cache)."""
        plain = copy.copy(self)
        plain.transform = None
        return plain

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _pixels(self, i: int) -> np.ndarray:
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        img = load_image(
            self.store, self.rows.image_file[i], self.rows.sha256[i] if "sha256" in self.rows.columns else None
        )
        if self._cache is not None:
            self._cache[i] = img
        return img

    def targets(self, i: int) -> dict[str, torch.Tensor]:
        r = self.rows.iloc[i]
        return {
            "alloy": torch.tensor(int(r.label), dtype=torch.int64),
            "thickness_mm": torch.tensor(float(r.thickness_mm), dtype=torch.float32),
            "a0": torch.tensor(float(r.a0), dtype=torch.float32),
            "mu_eff": torch.tensor(float(r.mu_eff_per_cm), dtype=torch.float32),
        }

    def __getitem__(self, i: int):
        x = torch.from_numpy(self._pixels(i).astype(np.float32))
        if self.transform is not None:
            g = torch.Generator().manual_seed(((self.seed * 1_000_003 + self.epoch) * 1_000_033 + i) & 0x7FFFFFFFFFFF)
            x = self.transform(x, g)
        return x, self.calibration[i], self.wedge_mm[i], self.targets(i)

    @property
    def labels(self) -> np.ndarray:
        return self.rows.label.to_numpy()

"""A tiny model trained by alloynet (1 epoch, 64x64, profile_cnn) and its export bundle, for serving tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.helpers.dummy import DummyCaptureStore

SIZE = 64


def train_tiny_checkpoint(root: Path, seed: int = 0) -> Path:
    """Simulate a small store and train one epoch through the real ``alloynet.train`` API."""
    from alloynet.train import TrainConfig, train

    with DummyCaptureStore(
        n_max=6, size=SIZE, seed=seed, imbalance_ratio=2.0, captures_per_plate=1, root=root / "store"
    ):
        cfg = TrainConfig.model_validate(
            {
                "seed": seed,
                "epochs": 1,
                "out_dir": str(root / "run"),
                "device": "cpu",
                "progress": False,
                "data": {"store": str(root / "store"), "batch_size": 8, "augment": False, "norm_images": 8},
                "model": {"name": "profile_cnn", "dropout": 0.0},
            }
        )
        return Path(train(cfg).checkpoint)


def capture_inputs(n: int = 6, seed: int = 1, size: int = SIZE) -> dict[str, np.ndarray]:
    """Simulated captures as graph inputs: {"image": uint16 [n, 1, size, size] (one per alloy, cycling; plates
    1-5 mm), "calibration": float32 [n, 1, 2], each capture's own levels (its session's tube output drifts),
    "wedge_mm": float32 [n, 1]}."""
    from alloynet.physics import ALLOY_NAMES, RigConfig, RigSimulator, sample_plate

    rng = np.random.default_rng(seed)
    sim = RigSimulator(RigConfig(height=size, width=size))
    images, cals = [], []
    for i in range(n):
        gain = float(rng.uniform(0.97, 1.03))
        cap = sim.capture(
            sample_plate(ALLOY_NAMES[i % 5], float(rng.uniform(1, 5)), rng, f"p{i}"), rng, gain_scale=gain
        )
        images.append(cap.image)
        cals.append(np.stack([cap.dark_adu, cap.flat_adu], axis=-1))
    return {
        "image": np.stack(images),
        "calibration": np.stack(cals).astype(np.float32),
        "wedge_mm": np.full((n, 1), sim.rig.wedge_mm, np.float32),
    }


def capture_images(n: int = 6, seed: int = 1, size: int = SIZE) -> np.ndarray:
    """Simulated raw captures uint16 [n, 1, size, size] (see ``capture_inputs``)."""
    return capture_inputs(n, seed, size)["image"]

"""Checkpoints: plain dicts of tensors and primitives, loaded with ``torch.load(weights_only=True)``.

Keys: ``format``, ``model`` (state dict), ``model_spec`` (what ``create_model`` needs: name,
num_classes, in_channels, activation, dropout, kwargs, preprocess config, target_stats), ``optimizer``,
``scheduler``, ``loss`` (state of learnt loss parameters), ``early_stop``, ``epoch`` (epochs completed),
``config`` (the resolved run config), ``class_names``, ``manifest_hash``, ``image_size`` [H, W] of the
training captures, ``channels``, ``arch`` (the model name), ``class_counts`` (training captures per class),
``metrics`` (validation metrics of that epoch), ``history`` (per-epoch log) and ``best``.

Writes are atomic (temp file + rename): a run killed while saving leaves the previous checkpoint intact.

Public: ``save_checkpoint(state, path)``, ``load_checkpoint(path, map_location="cpu") -> dict``,
``build_model(model_spec) -> AlloyNet`` and ``load_model(path, device="cpu") -> (model, meta)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from alloynet.models.architectures import create_model
from alloynet.models.heads import AlloyNet

FORMAT = "alloynet-checkpoint/1"


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    torch.save({"format": FORMAT, **state}, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path}: not an alloynet checkpoint (expected format {FORMAT!r})")
    return ckpt


def build_model(spec: dict[str, Any]) -> AlloyNet:
    """An untrained model exactly as described by a checkpoint's ``model_spec``."""
    stats = {k: tuple(v) for k, v in spec["target_stats"].items()}
    return create_model(
        spec["name"],
        spec["num_classes"],
        spec["in_channels"],
        spec["preprocess"],
        activation=spec["activation"],
        target_stats=stats,
        dropout=spec.get("dropout", 0.0),
        class_names=spec.get("class_names"),
        coverage=spec.get("coverage", 0.95),
        rig=spec.get("rig"),
        physics=spec.get("physics"),
        **spec.get("kwargs", {}),
    )


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[AlloyNet, dict[str, Any]]:
    """Rebuild the trained model (eval mode) from a checkpoint; ``meta`` carries everything else but the
    training state: class_names, manifest_hash, image_size [H, W], channels, arch, config, model_spec, epoch,
    metrics (validation, of that epoch), history, best, class_counts, physics_correction (what the physics term's
    tables were fitted from: ``alloynet.physics.correction``; None in checkpoints from before it)."""
    ckpt = load_checkpoint(path, map_location="cpu")
    model = build_model(ckpt["model_spec"])
    model.load_state_dict(ckpt["model"])
    model.to(device).eval()
    keys = (
        "class_names",
        "manifest_hash",
        "image_size",
        "channels",
        "arch",
        "config",
        "model_spec",
        "epoch",
        "metrics",
        "history",
        "best",
        "class_counts",
        "physics_correction",
    )
    meta = {k: ckpt.get(k) for k in keys}
    meta["path"] = str(path)
    return model, meta


# What a fine-tuning run keeps of its own rather than taking from the checkpoint it starts from: statistics of
# its own data (preprocessing's fallback calibration, regression target scales), the rig's wedge and the
# honest-answer statistics (fitted again after training).
OWN_STATE = ("preprocess.", "wedge.", "answer.", "target_mean", "target_std")
# Modules whose buffers are the run's own (the physics fit's tables, built from its own rigs and prior) while
# their parameters (the physics term's weight) are learned and carried over.
OWN_BUFFERS = ("physics.",)


def load_weights(model: torch.nn.Module, path: str | Path) -> list[str]:
    """Start ``model`` from a checkpoint's learned weights (fine-tuning); returns the names loaded.

    The checkpoint must be of the same architecture and input shape: any learned tensor missing or of another
    shape is an error naming it, not a silent partial start."""
    ckpt = load_checkpoint(path, map_location="cpu")
    theirs, mine = ckpt["model"], model.state_dict()
    learned = {k for k, _ in model.named_parameters()}
    wanted = [k for k in mine if not k.startswith(OWN_STATE) and (k in learned or not k.startswith(OWN_BUFFERS))]
    missing = [k for k in wanted if k not in theirs]
    if missing:
        raise ValueError(
            f"{path}: cannot start from this checkpoint ({ckpt.get('arch')}, "
            f"{ckpt.get('channels')} channel(s), {ckpt.get('image_size')} px): it has no {missing[:3]}"
        )
    shaped = [
        f"{k} {tuple(theirs[k].shape)} vs {tuple(mine[k].shape)}" for k in wanted if theirs[k].shape != mine[k].shape
    ]
    if shaped:
        raise ValueError(
            f"{path}: cannot start from this checkpoint: other shapes ({'; '.join(shaped[:3])}); "
            "it must be the same architecture trained on captures of the same size and channels"
        )
    with torch.no_grad():
        for k in wanted:
            mine[k].copy_(theirs[k].to(mine[k].device, mine[k].dtype))
    return wanted

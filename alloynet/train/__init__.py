"""Training: one typed config per run, the loop, optimisers/schedules, early stopping and checkpoints.

Library API (what the CLI and the Prefect tasks call)::

    from alloynet.train import TrainConfig, load_config, train
    cfg = load_config("configs/demo.yaml", {"data.store": "demo-data", "out_dir": "runs/demo"})
    result = train(cfg, resume=False)            # -> TrainResult
    result.checkpoint        # Path to best.pt (the model to evaluate / export / promote)
    result.last_checkpoint   # Path to last.pt (full state; ``train(cfg, resume=True)`` continues from it)
    result.metrics           # validation metrics of the best epoch (balanced_accuracy, accuracy, macro_f1, ...)
    result.config_path       # the resolved config (YAML) written next to the checkpoints

* ``train(config: TrainConfig, resume: bool = False, on_epoch_end=None) -> TrainResult``
* ``load_config(path=None, overrides: dict[str, Any] | None = None) -> TrainConfig`` (dotted override keys)
* ``resolve(config) -> TrainConfig`` fills per-architecture defaults (``alloynet.models.ARCH_DEFAULTS``)
* ``alloynet.models.checkpoint.load_model(path, device="cpu") -> (model, meta)``

Under ``torchrun --nproc_per_node N -m alloynet.cli train ...`` the same code runs DDP (NCCL on GPUs,
gloo on CPU); rank 0 writes checkpoints.
"""

from alloynet.train.config import (
    DataConfig,
    EarlyStopConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    ScheduleConfig,
    TrainConfig,
    load_config,
    parse_override,
    resolve,
    save_config,
)
from alloynet.train.trainer import TrainResult, train

__all__ = [
    "DataConfig",
    "EarlyStopConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "ScheduleConfig",
    "TrainConfig",
    "TrainResult",
    "load_config",
    "parse_override",
    "resolve",
    "save_config",
    "train",
]

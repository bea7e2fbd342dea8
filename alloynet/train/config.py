"""One typed config per run (pydantic, loadable from YAML): data, model, loss, optimiser, schedule.

Fields left ``None`` are filled by ``resolve``: the optimiser, activation, lr and weight decay from the
architecture's defaults (``alloynet.models.ARCH_DEFAULTS``, the design table), the manifest from
``<store>/manifest.csv``. The resolved config is what is written next to the checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from alloynet.data.synthetic import SyntheticConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Strict):
    store: str = Field("demo-data", description="capture store: a directory or s3://bucket/prefix")
    manifest: str | None = Field(None, description="manifest CSV; default <store>/manifest.csv")
    batch_size: int = Field(64, ge=1)
    eval_batch_size: int | None = Field(None, ge=1)
    num_workers: int = Field(0, ge=0)
    augment: bool = Field(
        False,
        description="row flips, rotation, extra noise, erasing: off, because rotation "
        "and erasing bend the row-averaged profile the physics is read from",
    )
    augment_kwargs: dict[str, Any] = Field(default_factory=dict, description="TrainAugment options, e.g. p_erase: 0")
    sampler: Literal["none", "class_balanced", "sqrt"] = Field(
        "none", description="re-sampling as an alternative to re-weighting: uniform over classes, or n^0.5"
    )
    equalize: bool = Field(False, description="per-image histogram equalisation inside Preprocess")
    norm_images: int = Field(2048, ge=1, description="training captures used to fit the input statistics")
    cache: bool = Field(True, description="keep decoded images in memory")
    synthetic: SyntheticConfig = Field(
        default_factory=SyntheticConfig, description="simulated captures mixed into training (alloynet.data.synthetic)"
    )
    rig_profile: str = Field(
        "auto",
        description="the rig profile the physics term's forward model starts from: auto = the newest one "
        "`alloynet rig fit` added to the store (rig-profiles/), else the sidecars' nominal rig; a rig "
        "profile YAML; or none (the nominal rig). data.synthetic.rig_profile, when set, is used instead",
    )
    rig_fit: Literal["auto", "always", "never"] = Field(
        "auto",
        description="where data.rig_profile is auto and the store has none: fit the rig to the store's labelled "
        "training captures (plates of known alloys at their measured thicknesses; alloynet rig fit's fit "
        "without reference captures) and start the physics term from it, or from the nominal rig where the "
        "captures say that fits better. auto = fitted to the captures that are a lab's (their sidecars carry "
        "no simulator truth: no a0), always = to every labelled training capture, never",
    )
    synthetic_only: bool = Field(
        False,
        description="train on the simulated captures alone; the store's training "
        "captures still give the rig, thickness prior and preprocessing, its val split "
        "still picks the epoch (pretraining)",
    )


class ModelConfig(_Strict):
    name: str = Field("profile_mlp", description="the recommended model unless told otherwise")
    activation: str | None = None
    dropout: float = Field(0.1, ge=0, lt=1)
    pretrained: str | None = Field(None, description="local torchvision state dict (never downloaded)")
    init_from: str | None = Field(
        None,
        description="an alloynet checkpoint whose learned weights start this "
        "run (fine-tuning); preprocessing, wedge and answer statistics come from this "
        "run's data",
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="architecture options, e.g. bins, widths")
    physics: bool = Field(
        True,
        description="add the forward model's likelihood of each alloy (thickness "
        "marginalised over the data's prior) to the logits, learnt weight: "
        "alloynet.models.physics_prior",
    )
    physics_correction: bool = Field(
        True,
        description="correct the forward model's mean profiles from the store's "
        "labelled training captures when the validation captures say it fits the rig "
        "better: alloynet.physics.correction",
    )


class LossConfig(_Strict):
    name: str = Field("balanced_softmax", description="cross-entropy on balanced data; long tails corrected")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="e.g. gamma, beta, tau, label_smoothing")
    task_weights: dict[str, float] = Field(default_factory=dict, description="alloy, thickness_mm, a0, mu_eff")
    weighting: Literal["fixed", "uncertainty"] = "fixed"
    regression: Literal["smooth_l1", "mse"] = "smooth_l1"


class OptimConfig(_Strict):
    name: Literal["adam", "adamw", "sgd", "rmsprop"] | None = None
    lr: float | None = Field(None, gt=0)
    weight_decay: float | None = Field(None, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    clip_grad_norm: float | None = Field(1.0, gt=0, description="None disables clipping")


class ScheduleConfig(_Strict):
    name: Literal["none", "step", "exponential", "cosine", "cyclic", "plateau"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0, description="linear warm-up from warmup_start_factor * lr")
    warmup_start_factor: float = Field(0.1, gt=0, le=1)
    step_size: float = Field(10.0, gt=0, description="step: epochs between decays; cyclic: half-cycle epochs")
    gamma: float = Field(0.1, gt=0, le=1, description="step/plateau decay factor; exponential: per epoch")
    min_lr_factor: float = Field(0.01, ge=0, le=1, description="cosine floor and cyclic low, as a fraction of lr")
    patience: int = Field(3, ge=0, description="plateau: epochs without improvement before a decay")


class EarlyStopConfig(_Strict):
    metric: str = Field("balanced_accuracy", description="a validation metric key")
    mode: Literal["max", "min"] = "max"
    patience: int | None = Field(15, ge=1, description="None disables early stopping")
    min_delta: float = 0.0


class AnswerConfig(_Strict):
    coverage: float = Field(0.95, gt=0, lt=1, description="target coverage of the conformal prediction sets")
    fit_images: int = Field(4000, ge=10, description="training captures used for the feature statistics")
    simulated: int = Field(
        2000,
        ge=0,
        description="when training mixes in simulated captures (data.synthetic), "
        "or the validation captures find the forward model describing the rig (the physics "
        "term's correction weighed and not needed): this many held-out simulated captures of "
        "the rig join the calibration set, if the real calibration captures agree with them "
        "(alloynet.models.answer.recalibration_set)",
    )
    crossfit_below: int = Field(
        40,
        ge=0,
        description="with fewer real calibration captures than this and no "
        "held-out simulated ones joining them, the training captures join the calibration "
        "set with cross-fitted scores, each scored by a model trained as this one without "
        "its plate's fold (crossfit_folds). A 95 % conformal threshold on fewer than ~40 "
        "scores is the largest of them or none (a lab's 50 plates per alloy leave ~15: "
        "every set all five alloys); with 55 of a second rig's captures beside 525 "
        "cross-fitted ones the sets covered 0.88 of fresh captures, so only below this. "
        "0: never",
    )
    crossfit_folds: int = Field(5, ge=2, le=20, description="folds of the cross-fitted calibration scores")
    drift_tolerance: float = Field(
        0.01,
        gt=0,
        lt=1,
        description="drift_in_session is raised when a capture's "
        "open-beam strip departs from the training captures' by more than this fraction "
        "(rigs that image one: rig.open_beam_rows)",
    )


PRETRAIN_CAPTURES = 4000


class PretrainConfig(_Strict):
    """Sim-to-real: first train on simulated captures (``synthetic``: best with ``rig_profile``, the simulator
    calibrated to the lab's rig, its parameters drawn within the calibration's uncertainty), then fine-tune on
    the store's real captures from those weights at ``lr_factor`` times the learning rate."""

    synthetic: SyntheticConfig = Field(
        default_factory=lambda: SyntheticConfig(captures=PRETRAIN_CAPTURES),
        description=f"the simulated pretraining captures (one pool, kept in memory; "
        f"{PRETRAIN_CAPTURES} unless captures is given)",
    )
    epochs: int = Field(30, ge=1, description="pretraining epochs (the real val split picks the best)")
    lr_factor: float = Field(0.3, gt=0, le=1, description="fine-tuning learning rate = this x optim.lr")
    finetune_epochs: int | None = Field(None, ge=1, description="default: epochs")

    @field_validator("synthetic", mode="before")
    @classmethod
    def _default_captures(cls, v: Any) -> Any:
        """``--set pretrain.synthetic.rig_profile=rig.yaml`` alone pretrains on the default number of captures."""
        return {"captures": PRETRAIN_CAPTURES, **v} if isinstance(v, dict) else v


class TrainConfig(_Strict):
    seed: int = 0
    epochs: int = Field(60, ge=1)
    out_dir: str = "runs/default"
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    amp: bool = Field(True, description="mixed precision (bf16 autocast) on CUDA; ignored on CPU")
    channels_last: bool = Field(True, description="channels_last memory format on CUDA for 2-D trunks")
    compile: bool = False
    deterministic: bool = Field(False, description="deterministic kernels on GPU (CPU is always deterministic)")
    progress: bool = True
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    early_stop: EarlyStopConfig = Field(default_factory=EarlyStopConfig)
    answer: AnswerConfig = Field(default_factory=AnswerConfig)
    pretrain: PretrainConfig | None = Field(
        None,
        description="pretrain on simulated captures, then fine-tune "
        "on the store's (skipped when model.init_from is given)",
    )


def resolve(config: TrainConfig) -> TrainConfig:
    """Fill every ``None`` that has a documented default (architecture table, manifest path)."""
    from alloynet.models import arch_defaults

    d = arch_defaults(config.model.name)
    cfg = config.model_copy(deep=True)
    cfg.model.activation = cfg.model.activation or d["activation"]
    cfg.optim.name = cfg.optim.name or d["optimizer"]
    cfg.optim.lr = cfg.optim.lr if cfg.optim.lr is not None else d["lr"]
    cfg.optim.weight_decay = cfg.optim.weight_decay if cfg.optim.weight_decay is not None else d["weight_decay"]
    if cfg.data.manifest is None and not cfg.data.store.startswith("s3://"):
        cfg.data.manifest = str(Path(cfg.data.store) / "manifest.csv")
    cfg.data.eval_batch_size = cfg.data.eval_batch_size or cfg.data.batch_size
    return cfg


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    node = raw
    *parents, leaf = key.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """A config from YAML (or the defaults), with ``{"model.name": "resnet18", ...}`` overrides applied."""
    raw = (yaml.safe_load(Path(path).read_text()) or {}) if path else {}
    for key, value in (overrides or {}).items():
        _set_dotted(raw, key, value)
    return TrainConfig.model_validate(raw)


def parse_override(item: str) -> tuple[str, Any]:
    """``key.sub=value`` with the value parsed as YAML (numbers, bools, lists, null)."""
    if "=" not in item:
        raise ValueError(f"override {item!r}: expected key=value")
    key, value = item.split("=", 1)
    return key.strip(), yaml.safe_load(value)


def save_config(config: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))

"""The study's config: a grid of architectures x losses x imbalance ratios x seeds, one rig, shared test sets.

Loaded from YAML (``configs/study.yaml`` is the CPU protocol, ``configs/study-gpu.yaml`` the GPU one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from alloynet.data.simulate import one_thickness_prior
from alloynet.physics.simulator import RigConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LossSpec(_Strict):
    name: str
    kwargs: dict[str, Any] = Field(default_factory=dict)
    label: str | None = Field(None, description="name in tables; default: name")

    @model_validator(mode="after")
    def _builds(self) -> LossSpec:
        """Build the loss once on made-up class counts, so a wrong name or keyword fails when the study is
        loaded (before any cell is submitted), not on a worker after its retries."""
        import inspect

        from alloynet import losses

        if self.name not in losses.list_losses():
            raise ValueError(f"loss {self.name!r} is not registered; expected one of {losses.list_losses()}")
        try:
            losses.create_loss(self.name, [16, 8, 4, 2, 1], **self.kwargs)
        except (TypeError, ValueError) as e:
            takes = [k for k in inspect.signature(losses._LOSSES[self.name]).parameters if k != "counts"]
            raise ValueError(f"loss {self.name!r} with kwargs {self.kwargs}: {e} (it takes {takes})") from None
        return self

    @property
    def tag(self) -> str:
        return self.label or self.name


class Cell(_Strict):
    """One run of the grid (architecture x loss x imbalance ratio x seed): the unit ``run_cell`` computes,
    in the serial study and on a work pool's workers alike."""

    arch: str
    loss: LossSpec
    rho: float
    seed: int

    @property
    def id(self) -> str:
        return f"{self.arch}-{self.loss.tag}-rho{self.rho:g}-s{self.seed}"


class StudyData(_Strict):
    class_order: list[str] = Field(
        default_factory=lambda: ["Al6082", "Al1050", "Al2017", "Al7075", "Al5083"],
        description="head to tail; default puts 5083 in the tail behind its look-alike 6082, the hardest case",
    )
    n_max: int = Field(60, ge=2, description="head-class plates in each training pool")
    test_plates_per_class: int = Field(12, ge=1, description="the shared balanced test set")
    thickness_range_mm: tuple[float, float] | None = Field(
        (1.0, 5.0), description="plates of any nominal thickness in this range (mm), as a line sees them"
    )
    thicknesses_mm: list[float] | None = Field(None, description="only these thicknesses (mm); replaces the range")
    wedges_mm: list[float] = Field(default_factory=lambda: [50.0, 70.0])
    captures_per_plate: int = Field(2, ge=1)
    rig: RigConfig = Field(default_factory=lambda: RigConfig(height=64, width=64))

    @model_validator(mode="after")
    def _one_thickness_prior(self) -> StudyData:
        one_thickness_prior(self)
        return self

    def thickness_fields(self) -> dict[str, Any]:
        """The DatasetSpec fields of the thickness prior (the list of values, or the range)."""
        if self.thicknesses_mm is not None:
            return {"thicknesses_mm": self.thicknesses_mm}
        return {"thickness_range_mm": self.thickness_range_mm}


class OODSet(_Strict):
    """A held-out condition the models never trained on: a case of the robustness suite by name
    (``alloynet.evaluate.robustness.CASES``: drift, second rig, ...) and/or explicit changes (a thickness
    prior, wedges, rig fields over the study rig)."""

    name: str | None = Field(None, description="name in tables; default: the case's name")
    case: str | None = Field(None, description="a robustness case, e.g. drift_3pct, second_rig")
    thicknesses_mm: list[float] | None = None
    thickness_range_mm: tuple[float, float] | None = None
    wedges_mm: list[float] | None = None
    rig: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _named(self) -> OODSet:
        if self.case is not None:
            from alloynet.evaluate.robustness import case_named

            case_named(self.case)  # an unknown case fails here, naming the known ones
        if not (self.name or self.case):
            raise ValueError("ood: every set needs a name (or a robustness case)")
        if self.thicknesses_mm is not None and self.thickness_range_mm is not None:
            raise ValueError(f"ood {self.name or self.case}: give thicknesses_mm or thickness_range_mm, not both")
        self.name = self.name or self.case
        return self


class StudyConfig(_Strict):
    name: str = "cpu"
    out_dir: str = "docs/study"
    work_dir: str = "runs/study"
    architectures: list[str] = Field(default_factory=lambda: ["profile_cnn", "fnn", "resnet18"])
    losses: list[LossSpec] = Field(default_factory=lambda: [LossSpec(name="ce")])
    imbalance_ratios: list[float] = Field(default_factory=lambda: [1.0, 10.0, 100.0])
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    data: StudyData = Field(default_factory=StudyData)
    train: dict[str, Any] = Field(default_factory=dict, description="TrainConfig fields applied to every run")
    per_arch: dict[str, dict[str, Any]] = Field(default_factory=dict, description="TrainConfig overrides per arch")
    ood: list[OODSet] = Field(default_factory=list)
    ceiling_plates: int = Field(200, ge=10)
    baselines: bool = Field(True, description="the physics fit and the Gaussian profile classifier beside every row")

    def runs(self) -> list[tuple[str, LossSpec, float, int]]:
        return [
            (a, loss, r, s)
            for r in self.imbalance_ratios
            for a in self.architectures
            for loss in self.losses
            for s in self.seeds
        ]

    def cells(self) -> list[Cell]:
        """The grid in table order (the order of ``runs``)."""
        return [Cell(arch=a, loss=loss, rho=r, seed=s) for a, loss, r, s in self.runs()]


def load_study(path: str | Path) -> StudyConfig:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"study config {p} not found")
    return StudyConfig.model_validate(yaml.safe_load(p.read_text()) or {})

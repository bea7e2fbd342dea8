"""The graph every export format shares: raw capture in, probabilities / thickness / absorption out.

The contract model returns a dict of logits and physical regression outputs; exported graphs need plain
tensors with stable names, so ``ServingGraph`` wraps the model once and TorchScript, ONNX, TensorRT,
TorchServe and Triton all see the same outputs, named and shaped as ``alloynet.contract`` declares. Softmax runs inside the graph so every server
returns the same probabilities without re-implementing anything.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from alloynet.contract import INPUT_DTYPE, META_FILE, VERSION


class ServingGraph(nn.Module):
    """Contract model: (image [B, C, H, W], calibration [B, C, 2], wedge_mm [B, 1]) -> the contract's outputs:
    probabilities [B, K], thickness_mm [B], absorption [B, 2] = (a0, mu_eff), prediction_set [B, K],
    group_probabilities [B, G], flags [B, F]."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, calibration: torch.Tensor, wedge_mm: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.model(image, calibration, wedge_mm)
        absorption = torch.stack([out["a0"].float(), out["mu_eff"].float()], dim=-1)
        return (out["probabilities"].float(), out["thickness_mm"].float(), absorption, out["prediction_set"].float(),
                out["group_probabilities"].float(), out["flags"].float())


class ExportMeta(BaseModel):
    """What a server needs to know about an exported model; written as ``export.json`` beside it."""

    model_config = ConfigDict(extra="allow")
    class_names: list[str] = Field(min_length=2)
    channels: int = Field(ge=1)
    height: int = Field(ge=8)
    width: int = Field(ge=8)
    arch: str = "unknown"
    contract_version: int = VERSION  # the input/output names and shapes are alloynet.contract's
    input_dtype: str = INPUT_DTYPE
    max_adu: float = 65535.0
    opset: Optional[int] = None
    files: dict[str, str] = Field(default_factory=dict, description="format -> file name in the bundle")
    sha256: dict[str, str] = Field(default_factory=dict)
    parity: Optional[dict] = None
    source: Optional[str] = None

    @field_validator("class_names")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"class names must be unique, got {v}")
        return v

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / META_FILE
        path.write_text(json.dumps(self.model_dump(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory_or_file: str | Path) -> "ExportMeta":
        p = Path(directory_or_file)
        return cls.model_validate_json((p / META_FILE if p.is_dir() else p).read_text())


def example_inputs(meta: ExportMeta, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Plausible (image, calibration, wedge_mm) for tracing: raw ADU in the flat-field range, levels dark 1000 /
    flat 50000 ADU and a 50 mm wedge, with every second item's calibration and wedge left out (zeros), so
    both branches are traced. Parity is checked on real test captures."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand((batch, *meta.input_shape), generator=g) * 40000.0 + 2000.0
    calibration = torch.tensor([1000.0, 50000.0]).repeat(batch, meta.channels, 1)
    calibration[1::2] = 0.0
    wedge = torch.full((batch, 1), 50.0)
    wedge[1::2] = 0.0
    return image, calibration, wedge

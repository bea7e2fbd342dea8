"""The graph every export format shares: raw capture in, the contract's outputs and each item's status out.

The model returns a dict of logits and physical regression outputs; exported graphs need plain tensors with
stable names, so ``ServingGraph`` wraps the model once and TorchScript, ONNX, TensorRT, TorchServe and Triton
all see the same outputs, named and shaped as ``alloynet.contract`` declares. The value checks of a capture run
inside the graph too (``capture_status``), so every server and runner names a bad capture with the same status
and none needs checks of its own beyond shapes and dtypes.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from alloynet.contract import GROUP_NAMES, INPUT_DTYPE, MAX_ADU, MAX_WEDGE_MM, META_FILE, STATUS_CODES, VERSION


def capture_status(
    image: torch.Tensor, calibration: torch.Tensor, wedge_mm: torch.Tensor, max_adu: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(status code [B], the value that decided it [B]) as floats, by the contract's table: the first check that
    applies, in the table's order, decides (a later check overrides an earlier one below)."""
    b = image.shape[0]
    finite = torch.isfinite(image)
    img = torch.where(finite, image, torch.zeros_like(image)).reshape(b, -1)
    img_bad = (~finite).reshape(b, -1).sum(dim=1).float()
    lo, hi = img.amin(dim=1), img.amax(dim=1)
    cal_finite = torch.isfinite(calibration)
    cal = torch.where(cal_finite, calibration, torch.zeros_like(calibration))
    cal_bad = (~cal_finite).reshape(b, -1).sum(dim=1).float()
    cal_lo, cal_hi = cal.reshape(b, -1).amin(dim=1), cal.reshape(b, -1).amax(dim=1)
    cal_missing = (cal == 0).reshape(b, -1).all(dim=1)
    span = (cal[..., 1] - cal[..., 0]).amin(dim=1)
    w = wedge_mm.reshape(b)
    checks = [  # lowest priority first
        ("wedge_missing", w == 0, torch.zeros_like(w)),
        ("calibration_missing", cal_missing, torch.zeros_like(w)),
        ("wedge_out_of_range", ~torch.isfinite(w) | (w < 0) | (w > MAX_WEDGE_MM), w),
        ("flat_not_above_dark", (span <= 0) & ~cal_missing, span),
        ("calibration_out_of_range", (cal_lo < 0) | (cal_hi > max_adu), torch.where(cal_lo < 0, cal_lo, cal_hi)),
        ("calibration_not_finite", cal_bad > 0, cal_bad),
        ("image_out_of_range", (lo < 0) | (hi > max_adu), torch.where(lo < 0, lo, hi)),
        ("image_not_finite", img_bad > 0, img_bad),
    ]
    code, value = torch.zeros_like(w), torch.zeros_like(w)
    for name, hit, v in checks:
        code = torch.where(hit, torch.full_like(code, float(STATUS_CODES[name])), code)
        value = torch.where(hit, v.float(), value)
    return code, value


class ServingGraph(nn.Module):
    """Contract model: (image [B, C, H, W], calibration [B, C, 2], wedge_mm [B, 1]) -> the contract's outputs:
    probabilities [B, K], thickness_mm [B], absorption [B, 2] = (a0, mu_eff), prediction_set [B, K],
    group_probabilities [B, G], flags [B, F], status [B], status_value [B].

    A refused item is fed to the model as a mid-range image without calibration or wedge (so nothing it sent
    can turn the batch's arithmetic into NaN) and answered with every class equally likely and in its set."""

    max_adu: torch.Tensor

    def __init__(self, model: nn.Module, max_adu: float = MAX_ADU):
        super().__init__()
        self.model = model
        self.register_buffer("max_adu", torch.tensor(float(max_adu)))

    def forward(
        self, image: torch.Tensor, calibration: torch.Tensor, wedge_mm: torch.Tensor
    ) -> tuple[
        torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor
    ]:
        status, value = capture_status(image, calibration, wedge_mm, self.max_adu)
        refused = status >= float(STATUS_CODES["image_not_finite"])
        image = torch.where(refused[:, None, None, None], 0.5 * self.max_adu, image)
        calibration = torch.where(refused[:, None, None], torch.zeros_like(calibration), calibration)
        wedge_mm = torch.where(refused[:, None], torch.zeros_like(wedge_mm), wedge_mm)
        out = self.model(image, calibration, wedge_mm)
        probs, pset = out["probabilities"].float(), out["prediction_set"].float()
        groups = out["group_probabilities"].float()
        uniform = torch.full_like(probs, 1.0 / probs.shape[-1])
        probs = torch.where(refused[:, None], uniform, probs)
        pset = torch.where(refused[:, None], torch.ones_like(pset), pset)
        group_matrix = getattr(getattr(self.model, "answer", None), "group_matrix", None)
        if group_matrix is not None:  # the groups stay the sums of their alloys'
            groups = torch.where(refused[:, None], (uniform[:, :, None] * group_matrix[None]).sum(dim=1), groups)
        absorption = torch.stack([out["a0"].float(), out["mu_eff"].float()], dim=-1)
        return (probs, out["thickness_mm"].float(), absorption, pset, groups, out["flags"].float(), status, value)


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
    max_adu: float = MAX_ADU
    class_groups: list[str] = Field(default_factory=list, description="each class's group, in GROUP_NAMES")
    coverage: float | None = Field(default=None, description="the prediction sets' target coverage")
    opset: int | None = None
    files: dict[str, str] = Field(default_factory=dict, description="format -> file name in the bundle")
    sha256: dict[str, str] = Field(default_factory=dict)
    parity: dict | None = None
    source: str | None = None

    @field_validator("class_names")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"class names must be unique, got {v}")
        return v

    @field_validator("class_groups")
    @classmethod
    def _known_groups(cls, v: list[str]) -> list[str]:
        unknown = sorted(set(v) - set(GROUP_NAMES))
        if unknown:
            raise ValueError(f"class_groups: unknown group(s) {unknown}; expected names from {list(GROUP_NAMES)}")
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
    def load(cls, directory_or_file: str | Path) -> ExportMeta:
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
